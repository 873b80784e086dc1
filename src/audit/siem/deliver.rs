//! One sink's delivery: a thread with its own small runtime reads the spool in order, sends a batch, and
//! acknowledges in the spool what the SIEM accepted; a failure is retried with capped exponential backoff and
//! jitter, the batch unchanged, so records arrive in order, at least once.
//!
//! Splunk HEC and NDJSON go over one kept-alive HTTP/1.1 connection (hyper); an answer saying the batch holds an
//! invalid record splits it until that record alone is refused, which is then dropped and counted (a poison
//! record must not hold up the rest). Syslog writes RFC 5424 messages with octet-counting framing over TCP or
//! TLS; it has no acknowledgement, so a batch counts as delivered once written to a connection the receiver has
//! not closed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flate2::{Compress, Compression};
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rand::Rng;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::event::{self, gzip, Event, Shape};
use super::spool::{Lines, Spool};
use crate::config::file::SiemKind;
use crate::config::siem::{Pseudonymize, SiemSink};
use crate::metrics::SiemMetrics;
use crate::stream::Stream;

/// The first wait after a failure; it doubles up to the sink's `retry_max`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// After shutdown began, how long the batch in flight may still take to be answered.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(2);
/// The most of an HTTP answer read (HEC answers are a few dozen bytes).
const ANSWER_BYTES: usize = 64 * 1024;

/// The nice value of a delivery thread: the lowest priority. On a busy core the request path runs first and the
/// spool takes up the lag; delivery catches up as soon as the core has time (`docs/audit.md`, "What it costs").
const DELIVERY_NICE: i32 = 19;

/// Lowers the calling thread's priority to `DELIVERY_NICE` (on Linux a nice value is per thread, and
/// `setpriority(PRIO_PROCESS, 0)` sets the caller's); logged if refused.
fn yield_to_requests() {
    if let Err(error) = rustix::process::setpriority_process(None, DELIVERY_NICE) {
        tracing::warn!(%error, "a SIEM delivery thread keeps the default priority");
    }
}

/// Starts the delivery thread of `sink`; the receiver turns true when it has ended.
pub(super) fn spawn(
    sink: SiemSink,
    spool: Arc<Spool>,
    pseudonymize: Option<Pseudonymize>,
    metrics: SiemMetrics,
    stop: CancellationToken,
) -> std::io::Result<watch::Receiver<bool>> {
    let (finished, receiver) = watch::channel(false);
    std::thread::Builder::new().name(format!("tollgate-siem-{}", sink.name)).spawn(move || {
        yield_to_requests();
        let held = spool.clone();
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => {
                let host = event::host_name();
                let shape = match sink.kind {
                    SiemKind::SplunkHec => Shape::hec(sink.index.as_deref(), &host),
                    SiemKind::Https => Shape::Ndjson,
                    SiemKind::Syslog => Shape::syslog(&host, std::process::id()),
                };
                let delivery = Delivery {
                    shape,
                    transport: Transport::Disconnected,
                    sink,
                    spool,
                    pseudonymize,
                    metrics,
                    stop,
                    buffers: Buffers::default(),
                };
                runtime.block_on(delivery.run());
            }
            Err(error) => tracing::error!(sink = %sink.name, %error, "the SIEM delivery could not start"),
        }
        held.release();
        let _ = finished.send(true);
    })?;
    Ok(receiver)
}

struct Delivery {
    sink: SiemSink,
    spool: Arc<Spool>,
    pseudonymize: Option<Pseudonymize>,
    metrics: SiemMetrics,
    stop: CancellationToken,
    transport: Transport,
    shape: Shape,
    buffers: Buffers,
}

/// What a delivery keeps between batches, so that a batch allocates nothing large (fresh large buffers cost a page
/// fault per page): a piece of the HTTP body or of the syslog frames, the gzip, and the deflate state.
#[derive(Default)]
struct Buffers {
    plain: Vec<u8>,
    compressed: Vec<u8>,
    /// Made at the first gzip batch, reset for each.
    deflate: Option<Compress>,
}

/// The connection to the SIEM, kept between batches.
enum Transport {
    Disconnected,
    Http(SendRequest<Full<Bytes>>),
    Stream(Box<Stream>),
}

/// What the SIEM said to one HTTP request.
enum Answer {
    Accepted,
    /// The batch holds a record the SIEM refuses whatever the retries.
    Invalid(String),
    /// Try again later: unreachable, busy, timed out, token refused.
    Retry(String),
}

impl Delivery {
    async fn run(mut self) {
        let mut backoff = Backoff::new(self.sink.retry_max);
        let mut lines = Lines::default();
        let mut kept_events = Vec::new();
        let mut first_seen: Option<Instant> = None;
        let mut failing = false;
        let spool = self.spool.clone();
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            // Registered before the read, so an append in between is not missed.
            spool.wake_at(0, 0);
            let arrived = spool.arrived().notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let chunk = match self.spool.read(&self.sink.batch, &mut lines) {
                Ok(Some(chunk)) => chunk,
                Ok(None) => {
                    first_seen = None;
                    tokio::select! {
                        () = arrived => continue,
                        () = self.stop.cancelled() => return,
                    }
                }
                Err(error) => {
                    self.metrics.errors.inc();
                    tracing::error!(sink = %self.sink.name, %error, "the SIEM spool cannot be read; retrying");
                    if !self.pause(backoff.next()).await {
                        return;
                    }
                    continue;
                }
            };
            // A partial batch waits up to batch.wait for more records, or until a full batch waits (checked on each
            // append without reading the spool again); a batch being retried does not wait.
            let full = chunk.more || chunk.records >= self.sink.batch.records;
            if !full && !failing {
                let until = *first_seen.get_or_insert_with(Instant::now) + self.sink.batch.wait;
                if Instant::now() < until {
                    // Woken only once a full batch waits.
                    let full_at = spool.lines() + (self.sink.batch.records - chunk.records) as u64;
                    spool.wake_at(full_at, self.sink.batch.bytes);
                    loop {
                        let arrived = spool.arrived().notified();
                        tokio::pin!(arrived);
                        arrived.as_mut().enable();
                        if spool.lines() >= full_at || spool.undelivered() >= self.sink.batch.bytes {
                            break;
                        }
                        tokio::select! {
                            () = arrived => {}
                            () = tokio::time::sleep_until(until) => break,
                            () = self.stop.cancelled() => return,
                        }
                    }
                    continue;
                }
            }
            first_seen = None;
            // Dropped while read (the thread runs at the lowest priority and may wait long between the two): they
            // were counted as dropped, so they are not sent; the next read starts at the new oldest.
            if !spool.sending(&chunk) {
                continue;
            }
            let mut events = event::recycle(std::mem::take(&mut kept_events));
            event::parse_into(lines.pieces(), self.pseudonymize.as_ref(), &mut events);
            let resolved = match self.sink.kind {
                SiemKind::Syslog => self.deliver_syslog(&events).await,
                SiemKind::SplunkHec | SiemKind::Https => self.deliver_http(&events).await,
            };
            kept_events = event::recycle(events);
            // Acknowledged; what a drop took meanwhile and the SIEM did not is counted as dropped.
            if let Err(error) = self.spool.sent(resolved as u64, &lines) {
                tracing::error!(sink = %self.sink.name, %error, "the SIEM spool's delivered position cannot be saved");
            }
            lines.clear();
            if resolved < (chunk.end - chunk.start) as usize {
                failing = true;
                if !self.pause(backoff.next()).await {
                    return;
                }
            } else {
                if std::mem::take(&mut failing) {
                    tracing::info!(sink = %self.sink.name, "the SIEM takes records again");
                }
                backoff.reset();
            }
        }
    }

    /// Waits `delay`; false when shutdown came first.
    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.stop.cancelled() => false,
        }
    }

    /// Sends `events` over HTTP, splitting a batch the SIEM calls invalid; returns the bytes of the leading
    /// events accepted or dropped.
    async fn deliver_http(&mut self, events: &[Event<'_>]) -> usize {
        let mut resolved = 0;
        let mut pending = vec![events];
        while let Some(part) = pending.pop() {
            match self.post(part).await {
                Answer::Accepted => {
                    self.metrics.sent.inc_by(part.len() as u64);
                    resolved += part.iter().map(|event| event.length).sum::<usize>();
                }
                Answer::Invalid(reason) if part.len() > 1 => {
                    self.metrics.errors.inc();
                    tracing::warn!(sink = %self.sink.name, records = part.len(), %reason,
                        "the SIEM refused a batch as invalid: splitting it to find the record");
                    let (first, second) = part.split_at(part.len() / 2);
                    pending.push(second);
                    pending.push(first);
                }
                Answer::Invalid(reason) => {
                    self.metrics.errors.inc();
                    self.metrics.dropped.inc();
                    tracing::error!(sink = %self.sink.name, id = %part[0].id, %reason,
                        "the SIEM refused an audit record as invalid: it is dropped (the audit file keeps it)");
                    resolved += part[0].length;
                }
                Answer::Retry(reason) => {
                    self.metrics.errors.inc();
                    tracing::warn!(sink = %self.sink.name, url = %self.sink.endpoint.display, %reason,
                        "SIEM delivery failed; retrying with backoff");
                    return resolved;
                }
            }
        }
        resolved
    }

    async fn post(&mut self, events: &[Event<'_>]) -> Answer {
        let Buffers { plain, compressed, deflate } = &mut self.buffers;
        let content_type = match self.sink.kind {
            SiemKind::SplunkHec => "application/json",
            _ => "application/x-ndjson",
        };
        // The body is copied out of the kept buffers: at its (compressed) size, which is small.
        let body = if self.sink.gzip {
            let deflate = deflate.get_or_insert_with(|| Compress::new_gzip(Compression::fast(), 15));
            if let Err(error) = gzip(deflate, &mut self.shape, events, plain, compressed) {
                return Answer::Retry(format!("gzip: {error}"));
            }
            Bytes::copy_from_slice(compressed)
        } else {
            plain.clear();
            for event in events {
                self.shape.append(event, plain);
            }
            Bytes::copy_from_slice(plain)
        };
        let endpoint = &self.sink.endpoint;
        let mut request = Request::post(&endpoint.path)
            .header(header::HOST, host_header(&endpoint.host, endpoint.port))
            .header(header::CONTENT_TYPE, content_type)
            .header(header::USER_AGENT, concat!("tollgate/", env!("CARGO_PKG_VERSION")));
        if self.sink.gzip {
            request = request.header(header::CONTENT_ENCODING, "gzip");
        }
        if let Some(token) = &self.sink.token {
            let scheme = if self.sink.kind == SiemKind::SplunkHec { "Splunk" } else { "Bearer" };
            request = request.header(header::AUTHORIZATION, format!("{scheme} {token}"));
        }
        let request = match request.body(Full::new(body)) {
            Ok(request) => request,
            Err(error) => return Answer::Retry(format!("request: {error}")),
        };
        let (timeout, stop) = (self.sink.timeout, self.stop.clone());
        let answer = tokio::select! {
            answer = tokio::time::timeout(timeout, self.exchange(request)) => {
                answer.unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
            }
            () = after_shutdown(&stop) => Err("shutting down: no answer in time".to_owned()),
        };
        match answer {
            Ok((status, body)) => classify(self.sink.kind, status, &body),
            Err(error) => {
                self.transport = Transport::Disconnected;
                Answer::Retry(error)
            }
        }
    }

    /// One request on the kept connection (opened first when there is none).
    async fn exchange(&mut self, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String> {
        let sender = match &mut self.transport {
            Transport::Http(sender) if !sender.is_closed() => sender,
            _ => {
                let stream = connect(&self.sink).await?;
                let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|error| format!("HTTP handshake: {error}"))?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                self.transport = Transport::Http(sender);
                let Transport::Http(sender) = &mut self.transport else { unreachable!("set just above") };
                sender
            }
        };
        sender.ready().await.map_err(|error| format!("connection: {error}"))?;
        let response = sender.send_request(request).await.map_err(|error| format!("request: {error}"))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, ANSWER_BYTES)
            .collect()
            .await
            .map_err(|error| format!("reading the answer: {error}"))?
            .to_bytes();
        if parts.headers.get(header::CONNECTION).is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close")) {
            self.transport = Transport::Disconnected;
        }
        Ok((parts.status, body))
    }

    /// Writes `events` as framed syslog messages; returns their bytes in the spool when written, 0 when not.
    async fn deliver_syslog(&mut self, events: &[Event<'_>]) -> usize {
        let (timeout, stop) = (self.sink.timeout, self.stop.clone());
        let written = tokio::select! {
            written = tokio::time::timeout(timeout, self.write_frames(events)) => {
                written.unwrap_or_else(|_| Err(format!("not written within {timeout:?}")))
            }
            () = after_shutdown(&stop) => Err("shutting down: not written in time".to_owned()),
        };
        match written {
            Ok(()) => {
                self.metrics.sent.inc_by(events.len() as u64);
                events.iter().map(|event| event.length).sum()
            }
            Err(reason) => {
                self.transport = Transport::Disconnected;
                self.metrics.errors.inc();
                tracing::warn!(sink = %self.sink.name, url = %self.sink.endpoint.display, %reason,
                    "SIEM delivery failed; retrying with backoff");
                0
            }
        }
    }

    /// Formats and writes the frames of `events`, a piece (32 KiB) at a time.
    async fn write_frames(&mut self, events: &[Event<'_>]) -> Result<(), String> {
        // A connection the receiver closed (it says nothing otherwise) would swallow the first write.
        if let Transport::Stream(stream) = &mut self.transport {
            let mut probe = [0u8; 256];
            let closed = tokio::select! {
                biased;
                read = stream.read(&mut probe) => !matches!(read, Ok(read) if read > 0),
                () = std::future::ready(()) => false,
            };
            if closed {
                self.transport = Transport::Disconnected;
            }
        }
        let stream = match &mut self.transport {
            Transport::Stream(stream) => stream,
            _ => {
                self.transport = Transport::Stream(Box::new(connect(&self.sink).await?));
                let Transport::Stream(stream) = &mut self.transport else { unreachable!("set just above") };
                stream
            }
        };
        let frames = &mut self.buffers.plain;
        let mut events = events.iter().peekable();
        while events.peek().is_some() {
            self.shape.piece(&mut events, frames);
            stream.write_all(frames).await.map_err(|error| format!("write: {error}"))?;
        }
        stream.flush().await.map_err(|error| format!("write: {error}"))
    }
}

/// Ends `STOP_GRACE` after shutdown began: how long a batch in flight may still take its answer.
async fn after_shutdown(stop: &CancellationToken) {
    stop.cancelled().await;
    tokio::time::sleep(STOP_GRACE).await;
}

/// What an HTTP answer means for the batch. Splunk HEC says why in a JSON body (`{"text":…,"code":N}`): only
/// codes about the events themselves (5 no data, 6 invalid data format, 12 and 13 a missing or blank event) make
/// the batch invalid; others (7 incorrect index, …) are configuration, retried until fixed.
fn classify(kind: SiemKind, status: StatusCode, body: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]).trim().to_owned();
    let reason = format!("{status}: {text}");
    match status.as_u16() {
        200..=299 => Answer::Accepted,
        400 if kind == SiemKind::SplunkHec => {
            let code =
                serde_json::from_slice::<serde_json::Value>(body).ok().and_then(|answer| answer["code"].as_u64());
            match code {
                None | Some(5 | 6 | 12 | 13) => Answer::Invalid(reason),
                Some(_) => Answer::Retry(reason),
            }
        }
        400 | 413 | 422 => Answer::Invalid(reason),
        401 | 403 => Answer::Retry(format!("the token was refused: {reason}")),
        _ => Answer::Retry(reason),
    }
}

/// `Host` for `host:port` (IPv6 in brackets).
fn host_header(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Opens a connection to the sink's endpoint, with TLS under the upstream trust when the URL says so.
async fn connect(sink: &SiemSink) -> Result<Stream, String> {
    let endpoint = &sink.endpoint;
    let addresses = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|error| format!("resolving {}: {error}", endpoint.host))?;
    let mut last = format!("{} resolves to no address", endpoint.host);
    let mut tcp = None;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                tcp = Some(stream);
                break;
            }
            Err(error) => last = format!("connecting to {address}: {error}"),
        }
    }
    let tcp = tcp.ok_or(last)?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &sink.tls else { return Ok(Stream::Tcp(tcp)) };
    let name = ServerName::try_from(endpoint.host.clone()).map_err(|error| format!("server name: {error}"))?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|error| format!("TLS with {}: {error}", endpoint.host))?;
    Ok(Stream::TlsClient(Box::new(stream)))
}

/// Capped exponential backoff with jitter (each wait between half and all of the current step).
struct Backoff {
    step: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Self { step: FIRST_BACKOFF, max }
    }

    fn next(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        step.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }

    fn reset(&mut self) {
        self.step = FIRST_BACKOFF;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified() {
        let hec = SiemKind::SplunkHec;
        assert!(matches!(classify(hec, StatusCode::OK, b"{\"text\":\"Success\",\"code\":0}"), Answer::Accepted));
        let invalid = br#"{"text":"Invalid data format","code":6,"invalid-event-number":3}"#;
        assert!(matches!(classify(hec, StatusCode::BAD_REQUEST, invalid), Answer::Invalid(_)));
        let index = br#"{"text":"Incorrect index","code":7,"invalid-event-number":1}"#;
        assert!(matches!(classify(hec, StatusCode::BAD_REQUEST, index), Answer::Retry(_)), "configuration is retried");
        assert!(matches!(classify(hec, StatusCode::FORBIDDEN, b""), Answer::Retry(_)));
        assert!(matches!(classify(hec, StatusCode::SERVICE_UNAVAILABLE, b""), Answer::Retry(_)));
        assert!(matches!(classify(SiemKind::Https, StatusCode::PAYLOAD_TOO_LARGE, b""), Answer::Invalid(_)));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(500));
        let waits: Vec<Duration> = (0..6).map(|_| backoff.next()).collect();
        assert!(waits[0] >= Duration::from_millis(50) && waits[0] <= FIRST_BACKOFF);
        assert!(waits[5] >= Duration::from_millis(250) && waits[5] <= Duration::from_millis(500));
        backoff.reset();
        assert!(backoff.next() <= FIRST_BACKOFF);
    }
}
