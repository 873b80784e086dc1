//! SIEM receivers on 127.0.0.1, for the SIEM delivery tests and the load harness: a Splunk HTTP Event Collector
//! (token, gzip and event shape checked, as Splunk does), a generic NDJSON endpoint, and a syslog receiver over TCP
//! or TLS that reads octet-counted frames (RFC 6587 / RFC 5425) and RFC 5424 headers. Each keeps the records it
//! accepted, in arrival order, and lets a caller wait for a count.
//!
//! Shared by the integration tests (`tests/suite/common/`) and the load harness (`benches/load/`).

use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What an HTTP receiver speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// Splunk HEC: `POST /services/collector/event`, `Authorization: Splunk TOKEN`, concatenated event objects.
    Hec { token: String },
    /// NDJSON records at `POST /ingest`, with `Authorization: Bearer TOKEN` when a token is given.
    Ndjson { token: Option<String> },
}

/// One HTTP request the receiver answered.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub status: u16,
    pub gzip: bool,
    /// Records in the request (accepted or not).
    pub records: usize,
    /// The body as sent (decompressed).
    pub body: Vec<u8>,
}

/// What a receiver has seen so far.
#[derive(Debug, Default)]
struct Seen {
    /// Accepted records: the HEC `event` objects, NDJSON lines or syslog messages' JSON, in arrival order.
    records: Vec<Value>,
    /// The HEC envelopes (`time`, `sourcetype`, …) of the accepted events.
    envelopes: Vec<Value>,
    deliveries: Vec<Delivery>,
    /// Parsed syslog messages.
    messages: Vec<SyslogMessage>,
}

/// What a receiver keeps of what it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retain {
    /// Every record and request, parsed and checked (tests).
    Records,
    /// A count only, from the framing (the load harness: little work on its core, no memory growth).
    Count,
}

/// Records that make the receiver refuse a batch as invalid (HEC code 6), like an event Splunk cannot index.
pub type Poison = Arc<dyn Fn(&Value) -> bool + Send + Sync>;

/// An HTTP SIEM endpoint (HEC or NDJSON), plain or TLS.
pub struct HttpReceiver {
    pub address: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    count: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpReceiver {
    /// Listens on `address` (port 0 for any) and answers as `shape` says; with `tls`, over TLS.
    pub async fn start(
        address: SocketAddr,
        shape: Shape,
        tls: Option<Arc<rustls::ServerConfig>>,
        poison: Option<Poison>,
        retain: Retain,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (counter, count) = watch::channel(0usize);
        let counter = Arc::new(counter);
        let state = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (shape, state, counter, poison, tls) =
                    (shape.clone(), state.clone(), counter.clone(), poison.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (shape, state, counter, poison) =
                            (shape.clone(), state.clone(), counter.clone(), poison.clone());
                        async move {
                            let answered = answer(request, &shape, &state, &counter, poison, retain).await;
                            Ok::<_, std::convert::Infallible>(answered)
                        }
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(tls) => {
                            let Ok(stream) = tokio_rustls::TlsAcceptor::from(tls).accept(stream).await else { return };
                            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        Ok(Self { address, seen, count, task })
    }

    /// Waits until at least `records` records were accepted, within `patience`; the records.
    pub async fn wait_for(&self, records: usize, patience: Duration) -> Result<Vec<Value>, String> {
        wait_for_count(&self.count, records, patience).await.map_err(|have| format!("{have} of {records} records"))?;
        Ok(self.records())
    }

    /// Records accepted so far.
    pub fn count(&self) -> usize {
        *self.count.borrow()
    }

    /// The accepted records so far.
    pub fn records(&self) -> Vec<Value> {
        self.seen.lock().unwrap().records.clone()
    }

    /// The HEC envelopes of the accepted events.
    pub fn envelopes(&self) -> Vec<Value> {
        self.seen.lock().unwrap().envelopes.clone()
    }

    /// Every request answered.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.seen.lock().unwrap().deliveries.clone()
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    request: Request<Incoming>,
    shape: &Shape,
    seen: &Mutex<Seen>,
    counter: &watch::Sender<usize>,
    poison: Option<Poison>,
    retain: Retain,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, text: &str, code: u32| {
        let body = serde_json::json!({"text": text, "code": code}).to_string();
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("valid response")
    };
    let (path, expected) = match shape {
        Shape::Hec { token } => ("/services/collector/event", Some(format!("Splunk {token}"))),
        Shape::Ndjson { token } => ("/ingest", token.as_ref().map(|token| format!("Bearer {token}"))),
    };
    if request.method() != hyper::Method::POST || request.uri().path() != path {
        return reply(StatusCode::NOT_FOUND, "Not found", 404);
    }
    let authorization = request.headers().get("authorization").and_then(|value| value.to_str().ok());
    if let Some(expected) = &expected {
        match authorization {
            None => return reply(StatusCode::UNAUTHORIZED, "Token is required", 2),
            Some(value) if value != expected => return reply(StatusCode::FORBIDDEN, "Invalid token", 4),
            Some(_) => {}
        }
    }
    let gzip = request.headers().get("content-encoding").is_some_and(|value| value == "gzip");
    let Ok(body) = request.into_body().collect().await else {
        return reply(StatusCode::BAD_REQUEST, "Unreadable body", 6);
    };
    let mut body = body.to_bytes().to_vec();
    if gzip {
        let mut plain = Vec::new();
        if flate2::read::GzDecoder::new(body.as_slice()).read_to_end(&mut plain).is_err() {
            return reply(StatusCode::BAD_REQUEST, "Invalid data format", 6);
        }
        body = plain;
    }
    if retain == Retain::Count {
        // One event or record per line, as tollgate sends them.
        let records = memchr_count(&body);
        counter.send_modify(|count| *count += records);
        return reply(StatusCode::OK, "Success", 0);
    }
    // Parse the whole batch first: one bad event refuses it all, as HEC does.
    let mut records = Vec::new();
    let mut envelopes = Vec::new();
    let mut valid = true;
    match shape {
        Shape::Hec { .. } => {
            for item in serde_json::Deserializer::from_slice(&body).into_iter::<Value>() {
                let Ok(envelope) = item else {
                    valid = false;
                    break;
                };
                let shaped = envelope["time"].is_number()
                    && envelope["sourcetype"] == "tollgate:audit"
                    && envelope["event"]["id"].is_string();
                valid &= shaped;
                records.push(envelope["event"].clone());
                envelopes.push(envelope);
            }
        }
        Shape::Ndjson { .. } => {
            for line in body.split(|byte| *byte == b'\n').filter(|line| !line.is_empty()) {
                match serde_json::from_slice::<Value>(line) {
                    Ok(record) if record["id"].is_string() => records.push(record),
                    _ => valid = false,
                }
            }
        }
    }
    valid &= !records.is_empty();
    if let Some(poison) = &poison {
        valid &= !records.iter().any(|record| poison(record));
    }
    let status = if valid { StatusCode::OK } else { StatusCode::BAD_REQUEST };
    let mut seen = seen.lock().unwrap();
    seen.deliveries.push(Delivery { status: status.as_u16(), gzip, records: records.len(), body });
    if !valid {
        return reply(status, "Invalid data format", 6);
    }
    seen.records.extend(records);
    seen.envelopes.extend(envelopes);
    counter.send_replace(seen.records.len());
    reply(StatusCode::OK, "Success", 0)
}

fn memchr_count(body: &[u8]) -> usize {
    body.iter().filter(|byte| **byte == b'\n').count()
}

/// One RFC 5424 message, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct SyslogMessage {
    pub priority: u8,
    pub version: u8,
    pub timestamp: String,
    pub host: String,
    pub app: String,
    pub process: String,
    pub message_id: String,
    /// The SD-ID of the (one) structured data element and its `id` parameter, unescaped.
    pub sd_id: String,
    pub id: String,
    pub record: Value,
}

/// A syslog receiver: octet-counted RFC 5424 messages over TCP, or TLS with `tls`.
pub struct SyslogReceiver {
    pub address: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    count: watch::Receiver<usize>,
    /// Frames that did not parse, with why.
    errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SyslogReceiver {
    pub async fn start(
        address: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        retain: Retain,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (counter, count) = watch::channel(0usize);
        let counter = Arc::new(counter);
        let (state, failures) = (seen.clone(), errors.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (state, counter, failures, tls) = (state.clone(), counter.clone(), failures.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(tls) => {
                            let Ok(stream) = tokio_rustls::TlsAcceptor::from(tls).accept(stream).await else { return };
                            read_frames(stream, &state, &counter, &failures, retain).await;
                        }
                        None => read_frames(stream, &state, &counter, &failures, retain).await,
                    }
                });
            }
        });
        Ok(Self { address, seen, count, errors, task })
    }

    /// Waits until at least `messages` messages arrived, within `patience`; the messages.
    pub async fn wait_for(&self, messages: usize, patience: Duration) -> Result<Vec<SyslogMessage>, String> {
        wait_for_count(&self.count, messages, patience).await.map_err(|have| {
            format!("{have} of {messages} messages; frame errors: {:?}", self.errors.lock().unwrap())
        })?;
        Ok(self.messages())
    }

    /// Messages received so far.
    pub fn count(&self) -> usize {
        *self.count.borrow()
    }

    pub fn messages(&self) -> Vec<SyslogMessage> {
        self.seen.lock().unwrap().messages.clone()
    }

    /// Frames that did not parse.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }
}

impl Drop for SyslogReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_frames<S: AsyncRead + Unpin>(
    stream: S,
    seen: &Mutex<Seen>,
    counter: &watch::Sender<usize>,
    errors: &Mutex<Vec<String>>,
    retain: Retain,
) {
    let mut reader = BufReader::new(stream);
    loop {
        // MSG-LEN SP SYSLOG-MSG (RFC 6587 3.4.1)
        let mut length = Vec::new();
        match reader.read_until(b' ', &mut length).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let Some(length) = std::str::from_utf8(&length[..length.len() - 1]).ok().and_then(|n| n.parse::<usize>().ok())
        else {
            errors.lock().unwrap().push(format!("bad frame length {:?}", String::from_utf8_lossy(&length)));
            return;
        };
        let mut frame = vec![0u8; length];
        if reader.read_exact(&mut frame).await.is_err() {
            return;
        }
        if retain == Retain::Count {
            counter.send_modify(|count| *count += 1);
            continue;
        }
        match parse_syslog(&frame) {
            Ok(message) => {
                let mut seen = seen.lock().unwrap();
                seen.records.push(message.record.clone());
                seen.messages.push(message);
                counter.send_replace(seen.messages.len());
            }
            Err(error) => errors.lock().unwrap().push(error),
        }
    }
}

/// Parses `<PRI>VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP [SD-ID id="…"] SP MSG`.
pub fn parse_syslog(frame: &[u8]) -> Result<SyslogMessage, String> {
    let text = std::str::from_utf8(frame).map_err(|_| "not UTF-8".to_owned())?;
    let rest = text.strip_prefix('<').ok_or("no PRI")?;
    let (priority, rest) = rest.split_once('>').ok_or("unterminated PRI")?;
    let priority: u8 = priority.parse().map_err(|_| format!("bad PRI {priority:?}"))?;
    let mut fields = rest.splitn(7, ' ');
    let mut next = |name: &str| fields.next().map(str::to_owned).ok_or(format!("no {name}"));
    let version: u8 = next("VERSION")?.parse().map_err(|_| "bad VERSION".to_owned())?;
    let (timestamp, host, app, process, message_id) =
        (next("TIMESTAMP")?, next("HOSTNAME")?, next("APP-NAME")?, next("PROCID")?, next("MSGID")?);
    let structured = next("STRUCTURED-DATA")?;
    for (name, value, most) in
        [("HOSTNAME", &host, 255), ("APP-NAME", &app, 48), ("PROCID", &process, 128), ("MSGID", &message_id, 32)]
    {
        if value.is_empty() || value.len() > most || !value.bytes().all(|byte| (33..=126).contains(&byte)) {
            return Err(format!("bad {name} {value:?}"));
        }
    }
    // [SD-ID SP id="VALUE"] with \" \\ \] escapes in VALUE, then SP MSG.
    let element = structured.strip_prefix('[').ok_or("no structured data element")?;
    let (sd_id, params) = element.split_once(' ').ok_or("no SD-PARAM")?;
    let value = params.strip_prefix("id=\"").ok_or("no id parameter")?;
    let mut id = String::new();
    let mut characters = value.char_indices();
    let mut end = None;
    while let Some((at, character)) = characters.next() {
        match character {
            '\\' => id.push(characters.next().ok_or("dangling escape")?.1),
            '"' => {
                end = Some(at);
                break;
            }
            other => id.push(other),
        }
    }
    let end = end.ok_or("unterminated PARAM-VALUE")?;
    let after = value[end + 1..].strip_prefix("] ").ok_or("structured data not closed before MSG")?;
    let record = serde_json::from_str(after).map_err(|error| format!("MSG is not JSON: {error}"))?;
    Ok(SyslogMessage {
        priority,
        version,
        timestamp,
        host,
        app,
        process,
        message_id,
        sd_id: sd_id.to_owned(),
        id,
        record,
    })
}

/// Waits until the count reaches `wanted`; `Err(count)` after `patience`.
async fn wait_for_count(count: &watch::Receiver<usize>, wanted: usize, patience: Duration) -> Result<(), usize> {
    let mut waiting = count.clone();
    let reached =
        tokio::time::timeout(patience, waiting.wait_for(|have| *have >= wanted)).await.is_ok_and(|r| r.is_ok());
    if reached {
        Ok(())
    } else {
        Err(*count.borrow())
    }
}

/// A free loopback port: bound and released, for a receiver that starts later (a SIEM that is down meanwhile).
pub fn free_port() -> SocketAddr {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    socket.local_addr().expect("bound address")
}
