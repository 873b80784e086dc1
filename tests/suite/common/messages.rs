//! A stub of the Anthropic Messages API: a real HTTP/1.1 server (hyper) on 127.0.0.1:0, plain or TLS, that records
//! every request it receives (header names as they were sent, body byte-exact) and answers the way the API does:
//! JSON messages, SSE streams written and flushed one event at a time, Anthropic-shaped errors. The model name picks a
//! misbehaving scenario (`stub-cut`, `stub-hold`, …); `release()` opens the gate the holding scenarios wait on.
//!
//! Also here: the client side tests need for this API (request bytes, an SSE parser, the reference usage merge, a
//! chunked-body splitter) and a runner for the Python `anthropic` SDK client in `tests/clients/anthropic_client.py`.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};

use super::find;
use super::tls::server_config;

/// The API's wire shapes, shared with the load harness.
#[path = "../../support/messages.rs"]
mod shared;

pub use shared::{usage_json, Usage};

/// The usage of every non-streamed message.
pub const JSON_USAGE: Usage = (313, 47, 1531, 2309);
/// The usage in `message_start` of every stream (`output_tokens` 1, as the API sends it).
pub const STREAM_START_USAGE: Usage = (17, 1, 1237, 4711);
/// A complete stream's usage merged field by field: `message_delta` raises `input_tokens` from 17 to 29 and sets
/// `output_tokens` to 83, sends `cache_creation_input_tokens: null` and leaves out `cache_read_input_tokens`, so
/// both keep their `message_start` values. Summing events instead would give other numbers.
pub const STREAM_USAGE: Usage = (29, 83, 1237, 4711);
/// What the client of a `stub-cut` stream saw before the connection was reset: `message_start`, then a
/// `message_delta` with `output_tokens: 37`.
pub const CUT_USAGE: Usage = (17, 37, 1237, 4711);
/// What the client of a `stub-error-after-200` stream saw: only `message_start`.
pub const ERROR_AFTER_200_USAGE: Usage = STREAM_START_USAGE;
/// `POST /v1/messages/count_tokens` answers `{"input_tokens": 42}`.
pub const COUNT_TOKENS: u64 = 42;
/// The text of every non-streamed message.
pub const JSON_TEXT: &str = "hello";
/// The text deltas of a complete stream, each its own event.
pub const TEXT_DELTAS: &[&str] = &["Hel", "lo from ", "the stub"];
/// The deltas' concatenation.
pub const STREAM_TEXT: &str = "Hello from the stub";
/// The `id` of every message.
pub const MESSAGE_ID: &str = "msg_stub";
/// `retry-after` on the `stub-429` answer.
pub const RETRY_AFTER: &str = "7";
/// The ids of `GET /v1/models`.
/// Every event of a complete stream, in order.
pub const STREAM_EVENTS: &[&str] = &[
    "message_start",
    "content_block_start",
    "ping",
    "content_block_delta",
    "content_block_delta",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
];

pub const MODELS: &[&str] = &["claude-sonnet-4-5", "claude-haiku-4-5"];
/// A model with no scenario: the normal answer.
pub const MODEL: &str = "claude-sonnet-4-5";

// Scenarios, chosen by the request's `model`, whatever its `stream` says.

/// 200 SSE: `message_start`, then `event: error` (`overloaded_error`), then the body ends cleanly.
pub const ERROR_AFTER_200: &str = "stub-error-after-200";
/// 200 SSE: `message_start`, `content_block_start`, one delta, `message_delta` (output 37), then the TCP connection is
/// reset (SO_LINGER 0, no terminating chunk, no TLS close_notify): no `message_stop`.
pub const CUT: &str = "stub-cut";
/// 429 `rate_limit_error` with `retry-after: 7`.
pub const RATE_LIMITED: &str = "stub-429";
/// 529 `overloaded_error`.
pub const OVERLOADED: &str = "stub-529";
/// 200 SSE: `message_start` is written and flushed, then the stub waits for `release()` before the rest of a
/// complete stream (usage `STREAM_USAGE`).
pub const HOLD: &str = "stub-hold";
/// Like `HOLD`; when the response body is dropped before its end because the client went away, `cancelled()` turns
/// true.
pub const SLOW_CANCEL: &str = "stub-slow-cancel";
/// 200 JSON message (usage `JSON_USAGE`) compressed, `content-encoding: gzip`, whatever the request's
/// `accept-encoding` says: an upstream that ignores it.
pub const GZIP: &str = "stub-gzip";
/// 200 JSON message with usage `JSON_USAGE`, of whose cache writes `ONE_HOUR_CACHE_WRITES` are for an hour
/// (`cache_creation.ephemeral_1h_input_tokens`), and `WEB_SEARCHES` server-side web searches.
pub const SERVER_TOOLS: &str = "stub-server-tools";
pub const ONE_HOUR_CACHE_WRITES: u64 = 1000;
/// 200 with the content blocks the request's `stub_blocks` lists (see `tool_blocks`): a JSON message, or with
/// `stream: true` an SSE stream whose tool inputs are sent as `input_json_delta` pieces split where each block's
/// `pieces` says. Usage `STREAM_USAGE` (streamed) or `JSON_USAGE`.
pub const TOOLS: &str = "stub-tools";
pub const WEB_SEARCHES: u64 = 3;

/// Header lines in order: names exactly as sent, values as bytes.
pub type Headers = Vec<(String, Vec<u8>)>;

/// One request as the stub received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    /// In order, names exactly as sent (case preserved), values as bytes.
    pub headers: Headers,
    /// The body, byte-exact (de-chunked).
    pub body: Bytes,
    /// Which connection it came on (1 for the stub's first connection, then 2, …).
    pub connection: usize,
}

impl Seen {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    /// The first value of header `name` as text (lossy).
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The name of header `name` as it was sent (its case).
    pub fn header_name(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(n, _)| n.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("request body is not JSON ({e}): {:?}", self.body))
    }
}

/// A running stub. It serves until the test's runtime ends.
pub struct MessagesStub {
    pub address: SocketAddr,
    /// True for `start_tls`.
    pub tls: bool,
    state: Arc<State>,
}

impl MessagesStub {
    /// Plain HTTP on 127.0.0.1:0.
    pub async fn start() -> Self {
        Self::listen(None).await
    }

    /// TLS on 127.0.0.1:0 with `cert_chain` and `key` (e.g. `pki.server.chain()`, `pki.server.private_key()`: valid for
    /// `localhost` and `127.0.0.1`); ALPN offers `http/1.1` only.
    pub async fn start_tls(cert_chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        let mut config = server_config(cert_chain, key, None).expect("stub config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self::listen(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn listen(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the Messages stub");
        let address = listener.local_addr().expect("stub address");
        let state = Arc::new(State {
            requests: Mutex::new(Vec::new()),
            gate: watch::Sender::new(false),
            cancelled: watch::Sender::new(false),
            connections: AtomicUsize::new(0),
            next_request: AtomicU64::new(1),
        });
        let is_tls = tls.is_some();
        let accepting = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let number = accepting.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let (state, tls) = (accepting.clone(), tls.clone());
                tokio::spawn(async move {
                    // Each event goes out as it is flushed: without Nagle's delay, which would also leave the last
                    // events unsent when `stub-cut` resets the connection (a reset discards what is still queued).
                    let _ = stream.set_nodelay(true);
                    // A second handle on the socket, so that `stub-cut` can set SO_LINGER 0 (a reset, not a FIN) on a
                    // socket hyper (and TLS) own.
                    let Ok(socket) = duplicate(&stream) else { return };
                    match tls {
                        None => serve(stream, socket, number, state).await,
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve(stream, socket, number, state).await;
                            }
                        }
                    }
                });
            }
        });
        Self { address, tls: is_tls, state }
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.address)
    }

    /// `127.0.0.1:PORT`.
    pub fn authority(&self) -> String {
        self.address.to_string()
    }

    /// Every request received so far, in order. A request is recorded (body included) before it is answered, so
    /// once a client has any part of the answer, its request is here.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Connections accepted so far (TLS ones count before their handshake).
    pub fn connection_count(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Opens the gate `stub-hold` and `stub-slow-cancel` streams wait on after `message_start`; it stays open.
    pub fn release(&self) {
        self.state.gate.send_replace(true);
    }

    /// True once a `stub-slow-cancel` response body was dropped before its end (the client went away).
    pub fn cancelled(&self) -> bool {
        *self.state.cancelled.borrow()
    }

    /// Waits up to 20 s for `cancelled()` to turn true; returns it.
    pub async fn wait_cancelled(&self) -> bool {
        let mut cancelled = self.state.cancelled.subscribe();
        let waited = tokio::time::timeout(Duration::from_secs(20), cancelled.wait_for(|cancelled| *cancelled)).await;
        matches!(waited, Ok(Ok(_)))
    }
}

struct State {
    requests: Mutex<Vec<Seen>>,
    gate: watch::Sender<bool>,
    cancelled: watch::Sender<bool>,
    connections: AtomicUsize,
    next_request: AtomicU64,
}

fn duplicate(stream: &TcpStream) -> io::Result<socket2::Socket> {
    use std::os::fd::AsFd;
    Ok(socket2::Socket::from(stream.as_fd().try_clone_to_owned()?))
}

/// Serves one connection with hyper until it ends, or until a `stub-cut` stream aborts it.
async fn serve<S>(io: S, socket: socket2::Socket, number: usize, state: Arc<State>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = Arc::new(Connection {
        number,
        received: Mutex::new(Received { bytes: Vec::new(), next: Some(0) }),
        written: Mutex::new(Vec::new()),
        flushed: watch::Sender::new(0),
        socket: Mutex::new(Some(socket)),
        abort: Notify::new(),
    });
    let recorder = Recorder { inner: io, connection: connection.clone() };
    let for_service = connection.clone();
    let service = hyper::service::service_fn(move |request| answer(request, state.clone(), for_service.clone()));
    let http = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(recorder), service);
    tokio::select! {
        _ = http => {}
        _ = connection.abort.notified() => {}
    }
    // Close our duplicate too, or the socket would stay open.
    connection.socket.lock().unwrap().take();
}

/// What one connection carried, seen from between hyper and the socket (inside TLS).
struct Connection {
    number: usize,
    received: Mutex<Received>,
    /// Every byte hyper wrote, and how many of them were flushed.
    written: Mutex<Vec<u8>>,
    flushed: watch::Sender<usize>,
    socket: Mutex<Option<socket2::Socket>>,
    abort: Notify,
}

impl Connection {
    /// Waits until `event` has been flushed to the socket, searching from `from` (moved past it).
    async fn flushed(&self, event: &[u8], from: &mut usize) {
        let mut flushed = self.flushed.subscribe();
        loop {
            let length = *flushed.borrow_and_update();
            {
                let written = self.written.lock().unwrap();
                if let Some(at) = written.get(*from..length).and_then(|w| find(w, event)) {
                    *from += at + event.len();
                    return;
                }
            }
            if flushed.changed().await.is_err() {
                return;
            }
        }
    }

    /// Resets the TCP connection: SO_LINGER 0, then the connection task drops the socket.
    fn reset(&self) {
        if let Some(socket) = self.socket.lock().unwrap().as_ref() {
            let _ = socket.set_linger(Some(Duration::ZERO));
        }
        self.abort.notify_one();
    }
}

/// The raw request bytes of a connection, for header names as sent: hyper lowercases them.
struct Received {
    bytes: Vec<u8>,
    /// Where the next request head starts; `None` once the framing was lost (hyper's names are used from then on).
    next: Option<usize>,
}

impl Received {
    /// The head hyper just handed over, with its names as sent, and how its body is framed.
    fn take_head(&mut self) -> Option<(Headers, Framing)> {
        let start = self.next?;
        let mut storage = [httparse::EMPTY_HEADER; 128];
        let mut request = httparse::Request::new(&mut storage);
        let Ok(httparse::Status::Complete(length)) = request.parse(&self.bytes[start..]) else {
            self.next = None;
            return None;
        };
        let headers: Headers = request.headers.iter().map(|h| (h.name.to_owned(), h.value.to_vec())).collect();
        let chunked = headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case("transfer-encoding")
                && String::from_utf8_lossy(v)
                    .rsplit(',')
                    .next()
                    .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
        });
        let framing = if chunked {
            Framing::Chunked
        } else {
            let length = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse().ok())
                .unwrap_or(0);
            Framing::Length(length)
        };
        self.next = Some(start + length);
        Some((headers, framing))
    }

    /// Steps over the body of the request whose head was taken last (hyper has read all of it).
    fn skip_body(&mut self, framing: Framing) {
        let Some(start) = self.next else { return };
        let length = match framing {
            Framing::Length(length) => Some(length),
            Framing::Chunked => chunks(&self.bytes[start..]).complete,
        };
        self.next = length.map(|length| start + length).filter(|end| *end <= self.bytes.len());
    }
}

#[derive(Clone, Copy)]
enum Framing {
    Length(usize),
    Chunked,
}

/// The connection's I/O, recording what is read and written.
struct Recorder<S> {
    inner: S,
    connection: Arc<Connection>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorder<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            this.connection.received.lock().unwrap().bytes.extend_from_slice(&buf.filled()[before..]);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorder<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            this.connection.written.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        poll
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = poll {
            let length = this.connection.written.lock().unwrap().len();
            this.connection.flushed.send_replace(length);
        }
        poll
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

type StubBody = Either<Full<Bytes>, EventBody>;

/// Records the request, then answers it.
async fn answer(
    request: Request<Incoming>,
    state: Arc<State>,
    connection: Arc<Connection>,
) -> Result<Response<StubBody>, Infallible> {
    let (parts, body) = request.into_parts();
    let head = connection.received.lock().unwrap().take_head();
    let body = body.collect().await.map(|collected| collected.to_bytes()).unwrap_or_default();
    let headers = match head {
        Some((headers, framing)) => {
            connection.received.lock().unwrap().skip_body(framing);
            headers
        }
        None => parts.headers.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect(),
    };
    let path_and_query = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    state.requests.lock().unwrap().push(Seen {
        method: parts.method.as_str().to_owned(),
        path_and_query,
        headers,
        body: body.clone(),
        connection: connection.number,
    });
    let request_id = format!("req_stub_{:04}", state.next_request.fetch_add(1, Ordering::SeqCst));
    let response = match (&parts.method, parts.uri.path()) {
        (&Method::POST, "/v1/messages") => messages(&body, &request_id, &state, &connection),
        (&Method::POST, "/v1/messages/count_tokens") => {
            json_response(StatusCode::OK, &request_id, json!({"input_tokens": COUNT_TOKENS}))
        }
        (&Method::GET, "/v1/models") => json_response(StatusCode::OK, &request_id, models()),
        (&Method::POST, "/v1/messages/batches") => json_response(
            StatusCode::OK,
            &request_id,
            json!({"id": "msgbatch_stub", "type": "message_batch", "processing_status": "in_progress"}),
        ),
        (&Method::GET, "/api/claude_code/settings" | "/api/claude_code/policy_limits") => {
            json_response(StatusCode::OK, &request_id, json!({}))
        }
        (method, path) => error_response(
            StatusCode::NOT_FOUND,
            &request_id,
            "not_found_error",
            &format!("{method} {path} is not served by the Messages stub"),
        ),
    };
    Ok(response)
}

/// `POST /v1/messages`: the scenario named by `model`, else a JSON message or a complete stream.
fn messages(body: &[u8], request_id: &str, state: &Arc<State>, connection: &Arc<Connection>) -> Response<StubBody> {
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                request_id,
                "invalid_request_error",
                &format!("body is not JSON: {e}"),
            )
        }
    };
    let Some(model) = parsed["model"].as_str().map(str::to_owned) else {
        return error_response(StatusCode::BAD_REQUEST, request_id, "invalid_request_error", "model: Field required");
    };
    let stream = parsed["stream"].as_bool().unwrap_or(false);
    let steps = match model.as_str() {
        RATE_LIMITED => {
            let mut response = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                request_id,
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit (stub)",
            );
            response.headers_mut().insert("retry-after", RETRY_AFTER.parse().expect("header value"));
            return response;
        }
        OVERLOADED => {
            let status = StatusCode::from_u16(529).expect("529 is a status");
            return error_response(status, request_id, "overloaded_error", "Overloaded");
        }
        ERROR_AFTER_200 => vec![
            Step::Event(event("message_start", &message_start(&model))),
            Step::Event(event("error", &error_body("overloaded_error", "Overloaded", None))),
        ],
        CUT => vec![
            Step::Event(event("message_start", &message_start(&model))),
            Step::Event(event("content_block_start", &shared::content_block_start())),
            Step::Event(event("content_block_delta", &shared::text_delta(TEXT_DELTAS[0]))),
            Step::Event(event("message_delta", &shared::message_delta(None, json!({"output_tokens": CUT_USAGE.1})))),
            Step::Reset,
        ],
        HOLD | SLOW_CANCEL => {
            let mut events = complete_stream(&model).into_iter().map(Step::Event);
            let start = events.next().expect("message_start");
            [start, Step::Gate].into_iter().chain(events).collect()
        }
        TOOLS if stream => tool_stream(&model, &parsed["stub_blocks"]).into_iter().map(Step::Event).collect(),
        TOOLS => {
            let mut message = json_message(&model);
            message["content"] = json!(blocks_of(&parsed["stub_blocks"]));
            message["stop_reason"] = json!("tool_use");
            return json_response(StatusCode::OK, request_id, message);
        }
        _ if stream => complete_stream(&model).into_iter().map(Step::Event).collect(),
        GZIP => {
            let mut response = json_response(StatusCode::OK, request_id, json!(null));
            response.headers_mut().insert("content-encoding", "gzip".parse().expect("header value"));
            *response.body_mut() =
                Either::Left(Full::new(Bytes::from(gzip(json_message(&model).to_string().as_bytes()))));
            return response;
        }
        SERVER_TOOLS => {
            let mut message = json_message(&model);
            let five_minutes = JSON_USAGE.2 - ONE_HOUR_CACHE_WRITES;
            message["usage"]["cache_creation"] = json!({"ephemeral_5m_input_tokens": five_minutes,
                                                        "ephemeral_1h_input_tokens": ONE_HOUR_CACHE_WRITES});
            message["usage"]["server_tool_use"] = json!({"web_search_requests": WEB_SEARCHES, "web_fetch_requests": 1});
            return json_response(StatusCode::OK, request_id, message);
        }
        _ => return json_response(StatusCode::OK, request_id, json_message(&model)),
    };
    let (sender, receiver) = mpsc::channel(1);
    let watch_cancel = (model == SLOW_CANCEL).then(|| state.clone());
    // Earlier answers on this connection are written already: search for this one's events after them.
    let from = connection.written.lock().unwrap().len();
    tokio::spawn(produce(steps, sender, state.clone(), connection.clone(), from));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream; charset=utf-8")
        .header("cache-control", "no-cache")
        .header("request-id", request_id)
        .body(Either::Right(EventBody { events: receiver, ended: false, watch_cancel }))
        .expect("SSE response")
}

enum Step {
    /// One SSE event: its own body frame, flushed to the socket before the next step.
    Event(Bytes),
    /// Wait for `release()`.
    Gate,
    /// Reset the connection, without ending the body.
    Reset,
}

/// Hands the events to the body one by one; dropping `sender` at the end ends the body (the terminating chunk).
async fn produce(
    steps: Vec<Step>,
    sender: mpsc::Sender<Bytes>,
    state: Arc<State>,
    connection: Arc<Connection>,
    mut from: usize,
) {
    for step in steps {
        match step {
            Step::Event(bytes) => {
                if sender.send(bytes.clone()).await.is_err() {
                    return;
                }
                tokio::select! {
                    _ = connection.flushed(&bytes, &mut from) => {}
                    _ = sender.closed() => return,
                }
            }
            Step::Gate => {
                let mut gate = state.gate.subscribe();
                tokio::select! {
                    _ = gate.wait_for(|open| *open) => {}
                    _ = sender.closed() => return,
                }
            }
            Step::Reset => {
                connection.reset();
                // Keep the body open until hyper drops it with the connection: ending it would write the last chunk.
                sender.closed().await;
                return;
            }
        }
    }
}

/// A streamed response body fed one event at a time.
struct EventBody {
    events: mpsc::Receiver<Bytes>,
    ended: bool,
    /// For `stub-slow-cancel`: where to say that the body was dropped before its end.
    watch_cancel: Option<Arc<State>>,
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        match this.events.poll_recv(cx) {
            Poll::Ready(Some(event)) => Poll::Ready(Some(Ok(Frame::data(event)))),
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for EventBody {
    fn drop(&mut self) {
        if let (false, Some(state)) = (self.ended, &self.watch_cancel) {
            state.cancelled.send_replace(true);
        }
    }
}

fn json_response(status: StatusCode, request_id: &str, body: Value) -> Response<StubBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("request-id", request_id)
        .body(Either::Left(Full::new(Bytes::from(body.to_string()))))
        .expect("JSON response")
}

/// `bytes` gzip-compressed.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("compress in memory");
    encoder.finish().expect("compress in memory")
}

/// An Anthropic error: `{"type":"error","error":{"type":…,"message":…},"request_id":…}`.
fn error_response(status: StatusCode, request_id: &str, error_type: &str, message: &str) -> Response<StubBody> {
    json_response(status, request_id, error_body(error_type, message, Some(request_id)))
}

fn error_body(error_type: &str, message: &str, request_id: Option<&str>) -> Value {
    let mut body = json!({"type": "error", "error": {"type": error_type, "message": message}});
    if let Some(id) = request_id {
        body["request_id"] = json!(id);
    }
    body
}

/// One SSE event, as one body frame.
fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(shared::event(name, data))
}

fn message_start(model: &str) -> Value {
    shared::message_start(MESSAGE_ID, model, usage_json(STREAM_START_USAGE))
}

/// Every event of a complete stream: its `message_delta` raises `input_tokens`, sets `output_tokens`, sends
/// `cache_creation_input_tokens: null` and leaves out `cache_read_input_tokens` (see `STREAM_USAGE`).
fn complete_stream(model: &str) -> Vec<Bytes> {
    let end_usage = json!({"input_tokens": STREAM_USAGE.0, "cache_creation_input_tokens": null,
                           "output_tokens": STREAM_USAGE.1});
    let events = shared::stream(MESSAGE_ID, model, usage_json(STREAM_START_USAGE), TEXT_DELTAS, end_usage);
    events.into_iter().map(Bytes::from).collect()
}

/// The blocks of a `stub-tools` answer as a whole message: `pieces` and `raw_input` dropped.
fn blocks_of(blocks: &Value) -> Vec<Value> {
    let blocks = blocks.as_array().cloned().unwrap_or_default();
    blocks
        .into_iter()
        .map(|mut block| {
            if let Some(object) = block.as_object_mut() {
                object.remove("pieces");
                if let Some(raw) = object.remove("raw_input") {
                    let raw = raw.as_str().unwrap_or_default();
                    object.insert("input".into(), serde_json::from_str(raw).unwrap_or(Value::Null));
                }
            }
            block
        })
        .collect()
}

/// The events of a `stub-tools` stream: each block of `blocks` (`{"type": "text", "text": …}` or
/// `{"type": "tool_use", "id": …, "name": …, "input": {…}, "pieces": [byte offsets], "raw_input": "…"}`) as
/// `content_block_start`, its deltas and `content_block_stop`; a tool input's JSON text (`raw_input`, else the
/// compact `input`) split at the `pieces` offsets into `input_json_delta` events.
fn tool_stream(model: &str, blocks: &Value) -> Vec<Bytes> {
    let mut events = vec![event("message_start", &message_start(model))];
    for (index, block) in blocks.as_array().cloned().unwrap_or_default().iter().enumerate() {
        if block["type"] == "tool_use" {
            let start = json!({"type": "content_block_start", "index": index, "content_block":
                {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}});
            events.push(event("content_block_start", &start));
            let text = block["raw_input"].as_str().map(str::to_owned).unwrap_or_else(|| block["input"].to_string());
            let mut from = 0;
            let offsets = block["pieces"].as_array().cloned().unwrap_or_default();
            let ends = offsets.iter().filter_map(Value::as_u64).map(|end| end as usize).chain([text.len()]);
            for end in ends {
                let end = end.clamp(from, text.len());
                let delta = json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": &text[from..end]}});
                events.push(event("content_block_delta", &delta));
                from = end;
            }
        } else {
            let start = json!({"type": "content_block_start", "index": index,
                "content_block": {"type": "text", "text": ""}});
            events.push(event("content_block_start", &start));
            let delta = json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "text_delta", "text": block["text"]}});
            events.push(event("content_block_delta", &delta));
        }
        events.push(event("content_block_stop", &json!({"type": "content_block_stop", "index": index})));
    }
    let end_usage = json!({"input_tokens": STREAM_USAGE.0, "output_tokens": STREAM_USAGE.1});
    events.push(event("message_delta", &shared::message_delta(Some("tool_use"), end_usage)));
    events.push(event("message_stop", &json!({"type": "message_stop"})));
    events
}

fn json_message(model: &str) -> Value {
    shared::message(MESSAGE_ID, model, JSON_TEXT, usage_json(JSON_USAGE))
}

fn models() -> Value {
    let data: Vec<Value> = MODELS
        .iter()
        .map(|id| json!({"type": "model", "id": id, "display_name": id, "created_at": "2025-09-29T00:00:00Z"}))
        .collect();
    json!({"data": data, "has_more": false, "first_id": MODELS[0], "last_id": MODELS[MODELS.len() - 1]})
}

// ---- The client side ----

/// A Messages request body: `model`, `max_tokens` 64, one user message, and `stream` when true.
pub fn request_body(model: &str, stream: bool) -> String {
    shared::request_body(model, 64, "Say hello", stream)
}

/// A complete `POST /v1/messages?beta=true` request (origin-form) for `host`, with `x-api-key`, `anthropic-version`,
/// extra header lines (`Name: value`) and `Connection: close`.
pub fn messages_request(host: &str, model: &str, stream: bool, headers: &[&str]) -> Vec<u8> {
    let body = request_body(model, stream);
    let mut request = format!(
        "POST /v1/messages?beta=true HTTP/1.1\r\nHost: {host}\r\nx-api-key: sk-ant-test\r\n\
         anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\ncontent-length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.push_str(&body);
    request.into_bytes()
}

/// The events of an SSE text, in order: `(event name, data as JSON)`; a partial last event is left out.
pub fn sse_events(text: &str) -> Vec<(String, Value)> {
    let text = text.replace("\r\n", "\n");
    let complete = match text.rfind("\n\n") {
        Some(end) => &text[..end],
        None => return Vec::new(),
    };
    complete
        .split("\n\n")
        .filter_map(|block| {
            let mut name = String::from("message");
            let mut data = String::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    name = value.trim().to_owned();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim_start());
                }
            }
            (!data.is_empty()).then(|| (name, serde_json::from_str(&data).unwrap_or(Value::String(data))))
        })
        .collect()
}

/// The reference merge of a stream's usage: `message_start`'s usage, then each `message_delta`'s, field by field,
/// the last non-null value winning.
pub fn merged_usage(events: &[(String, Value)]) -> Usage {
    let mut merged: [u64; 4] = [0; 4];
    let fields = ["input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"];
    for (_, data) in events {
        let usage = match data["type"].as_str() {
            Some("message_start") => &data["message"]["usage"],
            Some("message_delta") => &data["usage"],
            _ => continue,
        };
        for (slot, field) in merged.iter_mut().zip(fields) {
            if let Some(value) = usage[field].as_u64() {
                *slot = value;
            }
        }
    }
    (merged[0], merged[1], merged[2], merged[3])
}

/// A usage read from a JSON object with the API's field names (absent fields are 0).
pub fn usage_of(value: &Value) -> Usage {
    let field = |name: &str| value[name].as_u64().unwrap_or(0);
    (
        field("input_tokens"),
        field("output_tokens"),
        field("cache_creation_input_tokens"),
        field("cache_read_input_tokens"),
    )
}

/// A chunked body split into its chunks' data.
#[derive(Debug, Default)]
pub struct Chunks {
    pub chunks: Vec<Bytes>,
    /// The length of the whole chunked body (last chunk and trailers included) when it is complete.
    pub complete: Option<usize>,
}

/// Splits the chunked body at the start of `bytes`, as far as it goes.
pub fn chunks(bytes: &[u8]) -> Chunks {
    let mut result = Chunks::default();
    let mut at = 0;
    loop {
        let Some(line_end) = find(&bytes[at..], b"\r\n").map(|end| at + end) else { return result };
        let size_text = String::from_utf8_lossy(&bytes[at..line_end]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16) else {
            return result;
        };
        at = line_end + 2;
        if size == 0 {
            loop {
                let Some(end) = find(&bytes[at..], b"\r\n").map(|end| at + end) else { return result };
                let empty = end == at;
                at = end + 2;
                if empty {
                    result.complete = Some(at);
                    return result;
                }
            }
        }
        if bytes.len() < at + size + 2 {
            return result;
        }
        result.chunks.push(Bytes::copy_from_slice(&bytes[at..at + size]));
        at += size + 2;
    }
}

/// Reads from `stream` into `buf` until `buf` holds `needle` (true), or the stream ends or fails (false). Panics
/// after 20 s without either.
pub async fn read_until<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>, needle: &[u8]) -> bool {
    loop {
        if find(buf, needle).is_some() {
            return true;
        }
        let mut chunk = [0u8; 16384];
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk)).await.unwrap_or_else(|_| {
            panic!(
                "{:?} or the end within 20s; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(buf)
            )
        });
        match read {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// How a read to the end of a stream ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The peer closed (FIN, or TLS close_notify).
    Closed,
    /// The read failed, e.g. `ConnectionReset`, or a TLS stream cut without close_notify (`UnexpectedEof`).
    Failed(io::ErrorKind),
}

/// Reads everything until the peer closes or the read fails (bounded: 20 s).
pub async fn read_to_end<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> End {
    loop {
        let mut chunk = [0u8; 16384];
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("the end of the stream within 20s; got {:?}", String::from_utf8_lossy(buf)));
        match read {
            Ok(0) => return End::Closed,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return End::Failed(e.kind()),
        }
    }
}

/// `tests/clients/anthropic_client.py`.
pub fn anthropic_client_script() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/anthropic_client.py"))
}

/// Environment variables a client reads for proxies, trust and the API; `anthropic_client` clears them all, so that
/// only what a test sets counts (the machine may set `SSL_CERT_FILE` or `NO_PROXY`).
pub const CLIENT_ENVIRONMENT: &[&str] = &[
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_PROFILE",
    "ANTHROPIC_CONFIG_DIR",
    "TOLLGATE_CLIENT_AUTH",
    "TOLLGATE_CLIENT_MAX_RETRIES",
    "TOLLGATE_CLIENT_TIMEOUT",
    "TOLLGATE_CLIENT_BODY",
    "TOLLGATE_CLIENT_PROXY_CERT",
    "TOLLGATE_CLIENT_PROXY_KEY",
];

/// Runs the Python `anthropic` SDK client once: `mode` is `create`, `stream` or `count`, `model` the model it asks for,
/// `env` what it should see (e.g. `ANTHROPIC_BASE_URL`, `HTTPS_PROXY`, `SSL_CERT_FILE`). `ANTHROPIC_API_KEY` defaults
/// to `sk-ant-test`, which the SDK sends as `Authorization: Bearer`, or as `X-Api-Key` with
/// `TOLLGATE_CLIENT_AUTH=x-api-key`. Returns the JSON line it printed: `{"ok": true, "usage": {…}, …}` or
/// `{"ok": false, "error": {…}}`. Panics when it exits non-zero (an unexpected exception) or prints no JSON; bounded
/// at 60 s.
pub async fn anthropic_client(mode: &str, model: &str, env: &[(&str, &str)]) -> Value {
    let mut command = tokio::process::Command::new(super::python());
    command.arg(anthropic_client_script()).args([mode, model]).kill_on_drop(true);
    for name in CLIENT_ENVIRONMENT {
        command.env_remove(name);
    }
    command.env("ANTHROPIC_API_KEY", "sk-ant-test");
    command.envs(env.iter().copied());
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("the Python client ended within 60s")
        .expect("run the Python client");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the Python client failed ({}): {stdout}{stderr}", output.status);
    let line = stdout.lines().rev().find(|line| line.starts_with('{')).unwrap_or_else(|| {
        panic!("the Python client printed no JSON line: {stdout}{stderr}");
    });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("the Python client printed bad JSON ({e}): {line}"))
}
