//! The runs' load: workers that send one kind of request after another (keep-alive GETs through the forward proxy,
//! CONNECT + GET + close, intercepted Messages API requests streamed or not, or one-off probes that expect given
//! statuses), paced, until told to stop, a deadline or a shared count; each outcome counted by what went wrong.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

use crate::client::{closed_by_peer, Connection, Framing, Head};
use crate::parameters::{IO_TIMEOUT, SMALL_BODY_LENGTH, SMALL_READ_BUFFER};
use crate::route::Route;
use crate::servers::SSE_EVENTS;

/// Largest response body the runs read whole.
const MAX_BODY: usize = 1 << 20;

/// Distinct failure reasons a tally keeps apart (the rest are counted together).
const MAX_REASONS: usize = 32;

/// Outcomes of one kind of request.
#[derive(Default)]
pub struct Tally {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Requests sent again on a new connection because tollgate had closed the kept-alive one just before (what
    /// any HTTP client does for a request that never reached the server); not failures.
    pub stale: AtomicU64,
    /// Each failure's reason and count.
    reasons: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    /// One failure.
    pub fn fail(&self, reason: impl Into<String>) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut reasons) = self.reasons.lock() {
            let reason = reason.into();
            let key =
                if reasons.len() < MAX_REASONS || reasons.contains_key(&reason) { reason } else { "other".into() };
            *reasons.entry(key).or_default() += 1;
        }
    }

    /// `(ok, failed)` so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }

    /// Each failure reason so far and its count.
    pub fn reasons(&self) -> BTreeMap<String, u64> {
        self.reasons.lock().map(|reasons| reasons.clone()).unwrap_or_default()
    }

    /// The counts and the reasons on one line.
    pub fn describe(&self) -> String {
        let (ok, failed) = self.counts();
        let mut text = format!("{ok} ok, {failed} failed");
        let stale = self.stale.load(Ordering::Relaxed);
        if stale > 0 {
            text.push_str(&format!(" ({stale} sent again after tollgate closed an idle kept-alive connection)"));
        }
        if let Ok(reasons) = self.reasons.lock() {
            if !reasons.is_empty() {
                let listed: Vec<String> = reasons.iter().map(|(reason, count)| format!("{count}× {reason}")).collect();
                text.push_str(&format!(": {}", listed.join("; ")));
            }
        }
        text
    }
}

/// The statuses a probe accepts, and what its error responses must look like.
#[derive(Clone)]
pub struct Expect {
    /// Accepted statuses.
    pub statuses: Vec<u16>,
    /// Error responses (status ≥ 400) are intercepted/gateway ones: an Anthropic error JSON
    /// (`{"type":"error","error":{"type":…,"message":…}}`); else the forward proxy's `{"error":{"type":…,"message":…}}`.
    pub anthropic: bool,
}

/// What a worker sends.
#[derive(Clone)]
pub enum Kind {
    /// Absolute-form `GET /` to the origin on a kept-alive connection.
    Forward,
    /// CONNECT to the origin, `GET /` inside, close.
    Connect,
    /// `POST /v1/messages` streamed (SSE), on a kept-alive intercepted tunnel; all events must arrive.
    Sse,
    /// `POST /v1/messages`, not streamed, on a kept-alive intercepted tunnel.
    Messages,
    /// `request` on a new connection each time (through the route's tunnel when the route names a destination);
    /// the status must be one `Expect` accepts, and an error response must follow the error contract.
    Probe { request: Arc<Vec<u8>>, expect: Expect },
}

/// One group of workers.
pub struct Stream {
    pub name: &'static str,
    pub kind: Kind,
    pub route: Route,
    pub workers: usize,
    /// Pause after each request, per worker.
    pub pause: Duration,
}

/// Running workers: stop them with `finish`.
pub struct Load {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
    pub tallies: Vec<(&'static str, Arc<Tally>)>,
}

impl Load {
    /// `(ok, failed)` over every stream so far.
    pub fn counts(&self) -> (u64, u64) {
        self.tallies.iter().fold((0, 0), |(ok, failed), (_, tally)| {
            let (more_ok, more_failed) = tally.counts();
            (ok + more_ok, failed + more_failed)
        })
    }

    /// Each stream's tally on one line.
    pub fn describe(&self) -> Vec<String> {
        self.tallies.iter().map(|(name, tally)| format!("{name}: {}", tally.describe())).collect()
    }

    /// Tells the workers to stop and waits for them (each ends within one request's timeout).
    pub async fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.handles.drain(..) {
            if timeout(IO_TIMEOUT + Duration::from_secs(5), handle).await.is_err() {
                eprintln!("soak: a worker did not stop in time");
            }
        }
    }
}

/// Starts every stream's workers; they run until `finish`, for at most `length`, and at most `max_requests`
/// requests all together.
pub fn start(streams: Vec<Stream>, length: Duration, max_requests: u64) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let budget = Arc::new(AtomicU64::new(max_requests));
    let deadline = Instant::now() + length;
    let mut handles = Vec::new();
    let mut tallies = Vec::new();
    for stream in streams {
        let tally = Arc::new(Tally::default());
        for _ in 0..stream.workers {
            let worker = Worker { kind: stream.kind.clone(), route: stream.route.clone(), connection: None };
            let (stop, budget, tally) = (stop.clone(), budget.clone(), tally.clone());
            handles.push(tokio::spawn(worker.run(stop, budget, deadline, stream.pause, tally)));
        }
        tallies.push((stream.name, tally));
    }
    Load { stop, handles, tallies }
}

/// One worker's state: its kept-alive connection.
struct Worker {
    kind: Kind,
    route: Route,
    connection: Option<Connection>,
}

impl Worker {
    async fn run(
        mut self,
        stop: Arc<AtomicBool>,
        budget: Arc<AtomicU64>,
        deadline: Instant,
        pause: Duration,
        tally: Arc<Tally>,
    ) {
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && take(&budget) {
            match timeout(IO_TIMEOUT, self.once(&tally)).await {
                Ok(Ok(())) => {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(reason)) => {
                    tally.fail(reason);
                    self.connection = None;
                }
                Err(_) => {
                    tally.fail(format!("no answer within {IO_TIMEOUT:?}"));
                    self.connection = None;
                }
            }
            if !pause.is_zero() {
                sleep(pause).await;
            }
        }
    }

    /// One request; `Err` names what went wrong.
    async fn once(&mut self, tally: &Tally) -> Result<(), String> {
        match &self.kind {
            Kind::Forward => {
                let request = self.route.keep_alive_get();
                let (head, body) = self.kept_alive(&request, tally).await?;
                expect_ok(&head, body.len() == SMALL_BODY_LENGTH)
            }
            Kind::Connect => {
                let mut connection = self.route.tunnel(SMALL_READ_BUFFER).await.map_err(|error| describe(&error))?;
                connection.send(&self.route.origin_form_get("/")).await.map_err(|error| describe(&error))?;
                let (head, body) = read_response(&mut connection).await.map_err(|error| describe(&error))?;
                expect_ok(&head, body.len() == SMALL_BODY_LENGTH)
            }
            Kind::Messages => {
                let request = self.route.messages_request(false);
                let (head, body) = self.kept_alive(&request, tally).await?;
                expect_ok(
                    &head,
                    serde_json::from_slice::<Value>(&body).is_ok_and(|message| message["usage"].is_object()),
                )
            }
            Kind::Sse => {
                if self.connection.is_none() {
                    self.connection =
                        Some(self.route.tunnel(SMALL_READ_BUFFER).await.map_err(|error| describe(&error))?);
                }
                let connection = self.connection.as_mut().expect("connection just opened");
                let streamed = read_stream(connection, &self.route.messages_request(true)).await;
                match streamed {
                    Ok(streamed)
                        if streamed.head.status == 200 && streamed.stopped && streamed.events == SSE_EVENTS =>
                    {
                        if !streamed.head.persistent() {
                            self.connection = None;
                        }
                        Ok(())
                    }
                    Ok(streamed) if streamed.head.status != 200 => Err(format!("status {}", streamed.head.status)),
                    Ok(streamed) => Err(format!("stream ended after {} of {SSE_EVENTS} events", streamed.events)),
                    Err(error) => Err(describe(&error)),
                }
            }
            Kind::Probe { request, expect } => {
                let mut connection = if self.route.authority.is_some() {
                    self.route.tunnel(SMALL_READ_BUFFER).await
                } else {
                    self.route.open(SMALL_READ_BUFFER).await
                }
                .map_err(|error| describe(&error))?;
                connection.send(request).await.map_err(|error| describe(&error))?;
                let (head, body) = read_response(&mut connection).await.map_err(|error| describe(&error))?;
                check_expected(&head, &body, expect)
            }
        }
    }

    /// `request` on the kept-alive connection (opened, or through a tunnel, when there is none); sent again once on a
    /// new connection when tollgate had closed the old one before it read anything.
    async fn kept_alive(&mut self, request: &[u8], tally: &Tally) -> Result<(Head, Vec<u8>), String> {
        for attempt in 0..2 {
            let reused = self.connection.is_some();
            if self.connection.is_none() {
                let opened = if self.route.authority.is_some() {
                    self.route.tunnel(SMALL_READ_BUFFER).await
                } else {
                    self.route.open(SMALL_READ_BUFFER).await
                };
                self.connection = Some(opened.map_err(|error| describe(&error))?);
            }
            let connection = self.connection.as_mut().expect("connection just opened");
            let read_before = connection.read_bytes;
            let outcome = async {
                connection.send(request).await?;
                read_response(connection).await
            }
            .await;
            match outcome {
                Ok((head, body)) => {
                    if !head.persistent() {
                        self.connection = None;
                    }
                    return Ok((head, body));
                }
                // Not one byte of the answer came on a reused connection: tollgate had closed it (idle) as the
                // request went out.
                Err(error)
                    if reused && attempt == 0 && closed_by_peer(&error) && connection.read_bytes == read_before =>
                {
                    tally.stale.fetch_add(1, Ordering::Relaxed);
                    self.connection = None;
                }
                Err(error) => return Err(describe(&error)),
            }
        }
        Err("the connection closed twice in a row".into())
    }
}

/// Takes one request from the shared count.
fn take(budget: &AtomicU64) -> bool {
    budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1)).is_ok()
}

/// An io error as a failure reason (its kind and message).
pub fn describe(error: &io::Error) -> String {
    format!("{:?}: {error}", error.kind())
}

fn expect_ok(head: &Head, body_ok: bool) -> Result<(), String> {
    match (head.status, body_ok) {
        (200, true) => Ok(()),
        (200, false) => Err("status 200 with an unexpected body".into()),
        (status, _) => Err(format!("status {status}")),
    }
}

/// The status is one `expect` accepts; an error response carries `x-tollgate-request-id` and the error contract's
/// JSON body.
pub fn check_expected(head: &Head, body: &[u8], expect: &Expect) -> Result<(), String> {
    if !expect.statuses.contains(&head.status) {
        return Err(format!("status {} (expected {:?})", head.status, expect.statuses));
    }
    if head.status < 400 {
        return Ok(());
    }
    if !head.tollgate_request_id {
        return Err(format!("status {} without x-tollgate-request-id", head.status));
    }
    let json: Value = serde_json::from_slice(body).map_err(|_| {
        format!("status {} with a body that is not JSON: {:?}", head.status, String::from_utf8_lossy(body))
    })?;
    let error = &json["error"];
    let shaped = error["type"].is_string()
        && error["message"].as_str().is_some_and(|message| !message.is_empty())
        && (!expect.anthropic || json["type"] == "error");
    if shaped {
        Ok(())
    } else {
        Err(format!("status {} with a body outside the error contract: {json}", head.status))
    }
}

/// Reads one response (passing over 1xx), its body whole (at most `MAX_BODY` bytes).
pub async fn read_response(connection: &mut Connection) -> io::Result<(Head, Vec<u8>)> {
    let mut head = connection.head().await?;
    for _ in 0..5 {
        if !(100..200).contains(&head.status) || head.status == 101 {
            break;
        }
        head = connection.head().await?;
    }
    let mut framing = if head.status == 204 || head.status == 304 { Framing::Done } else { Framing::of(&head) };
    let mut body = Vec::new();
    while let Some(piece) = connection.piece(&mut framing).await? {
        body.extend_from_slice(&piece);
        if body.len() > MAX_BODY {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "response body too large"));
        }
    }
    Ok((head, body))
}

/// A streamed response as the client saw it.
pub struct Streamed {
    pub head: Head,
    /// SSE events read (each ends with a blank line).
    pub events: usize,
    /// The last event was `message_stop`.
    pub stopped: bool,
    /// The response's body ended cleanly (its last chunk, or the end of a body without framing).
    pub ended: bool,
}

/// Sends `request` (a streamed `POST /v1/messages`) and reads the events as they come, until the body ends or the
/// connection does (a cut stream is `Ok` with `ended: false` once its head was read).
pub async fn read_stream(connection: &mut Connection, request: &[u8]) -> io::Result<Streamed> {
    connection.send(request).await?;
    let head = connection.head().await?;
    let mut framing = Framing::of(&head);
    let mut streamed = Streamed { head, events: 0, stopped: false, ended: false };
    if streamed.head.status != 200 {
        // Read the error body so the connection can be used again.
        while let Some(_piece) = connection.piece(&mut framing).await? {}
        streamed.ended = true;
        return Ok(streamed);
    }
    let mut pending: Vec<u8> = Vec::new();
    for _ in 0..100_000 {
        match connection.piece(&mut framing).await {
            Ok(Some(piece)) => {
                pending.extend_from_slice(&piece);
                while let Some(end) = pending.windows(2).position(|pair| pair == b"\n\n") {
                    let event: Vec<u8> = pending.drain(..end + 2).collect();
                    streamed.events += 1;
                    streamed.stopped =
                        String::from_utf8_lossy(&event).lines().any(|line| line == "event: message_stop");
                }
            }
            Ok(None) => {
                streamed.ended = true;
                return Ok(streamed);
            }
            Err(_) => return Ok(streamed),
        }
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "too many pieces"))
}
