//! The in-process servers, on the harness's thread: the origin (`GET /`, `GET /bulk`) and the Messages API stub
//! (`POST /v1/messages`, JSON or SSE), raw HTTP/1.1 with keep-alive, plain or TLS.
//!
//! They stay raw (httparse, one read buffer, answers built once) because they must not be what limits a proxy
//! measured at tens of thousands of requests per second; the stub's message and events are the Messages API's
//! shapes shared with the integration tests (`support::messages`).

use std::io;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::{sleep, timeout};

use crate::parameters::{
    BULK_LENGTH, BULK_READ_BUFFER, IO_TIMEOUT, MAX_REQUEST_BODY, MODEL, SMALL_BODY_LENGTH, SMALL_READ_BUFFER,
    SSE_DELTAS, SSE_GAP,
};
use crate::support::messages;

/// The `id` of the stub's messages.
const STUB_MESSAGE_ID: &str = "msg_bench";

/// What an in-process server answers.
#[derive(Clone, Copy)]
pub enum Served {
    /// The origin of scenarios a-d and tls, limits, redis, reload: `GET /` and `GET /bulk`.
    Origin,
    /// The Messages API stub of scenarios intercept and sse: `POST /v1/messages`.
    Stub,
}

/// Accepts until the runtime shuts down (end of the run); with `tls`, every connection is a TLS server first.
pub async fn serve(listener: TcpListener, served: Served, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let _ = match tls {
                        None => serve_connection(tcp, served).await,
                        Some(acceptor) => match timeout(IO_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => serve_connection(tls, served).await,
                            _ => Ok(()),
                        },
                    };
                });
            }
            // EMFILE and friends: back off instead of spinning.
            Err(_) => sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The comma-separated header `value` holds `token` (any case).
pub fn header_has_token(value: &[u8], token: &str) -> bool {
    String::from_utf8_lossy(value).split(',').any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// The stub's non-streamed answer: a Messages API message with its `usage`.
pub fn stub_message() -> &'static str {
    static MESSAGE: OnceLock<String> = OnceLock::new();
    MESSAGE.get_or_init(|| {
        let usage = messages::usage_json((8, 12, 0, 0));
        messages::message(STUB_MESSAGE_ID, MODEL, "Hello! How can I help you today?", usage).to_string()
    })
}

/// Events of one streamed response: message_start, content_block_start, ping, `SSE_DELTAS` content_block_delta,
/// content_block_stop, message_delta (with the usage), message_stop.
pub const SSE_EVENTS: usize = SSE_DELTAS + 6;

/// The harness's clock for SSE stamps: nanoseconds since its first use (stub and client share the process).
pub fn stamp_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// What a request asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resource {
    /// The origin's 100-byte body (any path but `/bulk`).
    Small,
    /// The origin's 1 GiB body.
    Bulk,
    /// `POST /v1/messages`.
    Messages,
}

/// A request head as the servers read it.
struct IncomingRequest {
    resource: Resource,
    /// The connection closes after the answer.
    close: bool,
    /// `Content-Length` (0 without).
    body_length: u64,
    chunked: bool,
}

impl IncomingRequest {
    fn parse(request: &httparse::Request) -> IncomingRequest {
        let path = request.path.unwrap_or("/");
        // Accept absolute-form too (RFC 9112 3.2.2), in case a proxy forwards it unchanged.
        let path = path
            .strip_prefix("http://")
            .or_else(|| path.strip_prefix("https://"))
            .map(|rest| rest.find('/').map_or("/", |slash| &rest[slash..]))
            .unwrap_or(path);
        let http_1_0 = request.version == Some(0);
        let mut close = http_1_0;
        let mut body_length = 0;
        let mut chunked = false;
        for header in request.headers.iter() {
            if header.name.eq_ignore_ascii_case("connection") {
                if header_has_token(header.value, "close") {
                    close = true;
                } else if http_1_0 && header_has_token(header.value, "keep-alive") {
                    // We never answer HTTP/1.0 keep-alive; keep it simple and close.
                    close = true;
                }
            } else if header.name.eq_ignore_ascii_case("content-length") {
                body_length =
                    std::str::from_utf8(header.value).ok().and_then(|length| length.trim().parse().ok()).unwrap_or(0);
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = header_has_token(header.value, "chunked");
            }
        }
        let resource = if path == "/bulk" || path.starts_with("/bulk?") {
            Resource::Bulk
        } else if request.method == Some("POST") && (path == "/v1/messages" || path.starts_with("/v1/messages?")) {
            Resource::Messages
        } else {
            Resource::Small
        };
        IncomingRequest { resource, close, body_length, chunked }
    }
}

/// A server-side connection (plain TCP or TLS) with its read buffer: `buffer[start..end]` is read but not yet
/// consumed.
struct ServerConnection<S> {
    stream: S,
    buffer: Vec<u8>,
    start: usize,
    end: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ServerConnection<S> {
    /// Writes and flushes (TLS buffers records until flushed; for TCP the flush is free).
    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// The next request and its body (at most `MAX_REQUEST_BODY` bytes, `Content-Length` only); `None` when
    /// the client closed between requests or sent one this server refuses (answered, then closed).
    async fn request(&mut self) -> io::Result<Option<(IncomingRequest, Vec<u8>)>> {
        let (head_length, request) = loop {
            if self.end > self.start {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut request = httparse::Request::new(&mut headers);
                match request.parse(&self.buffer[self.start..self.end]) {
                    Ok(httparse::Status::Complete(length)) => break (length, IncomingRequest::parse(&request)),
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => {
                        self.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                            .await?;
                        return Ok(None);
                    }
                }
            }
            if self.start > 0 {
                self.buffer.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buffer.len() {
                self.send(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await?;
                return Ok(None);
            }
            let read = self.stream.read(&mut self.buffer[self.end..]).await?;
            if read == 0 {
                return Ok(None);
            }
            self.end += read;
        };
        self.start += head_length;
        if request.chunked || request.body_length > MAX_REQUEST_BODY {
            self.send(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await?;
            return Ok(None);
        }
        let want = request.body_length as usize;
        let mut body = Vec::with_capacity(want);
        let buffered = (self.end - self.start).min(want);
        body.extend_from_slice(&self.buffer[self.start..self.start + buffered]);
        self.start += buffered;
        while body.len() < want {
            // Everything buffered is consumed: read the rest from the start of the buffer.
            let read = self.stream.read(&mut self.buffer).await?;
            if read == 0 {
                return Ok(None);
            }
            let used = read.min(want - body.len());
            body.extend_from_slice(&self.buffer[..used]);
            self.start = used;
            self.end = read;
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(Some((request, body)))
    }
}

/// Serves one connection until the client closes or asks to.
async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(stream: S, served: Served) -> io::Result<()> {
    let mut connection = ServerConnection { stream, buffer: vec![0u8; SMALL_READ_BUFFER], start: 0, end: 0 };
    let small_keep_alive = small_response(false);
    let small_close = small_response(true);
    while let Some((request, body)) = connection.request().await? {
        match (served, request.resource) {
            (Served::Origin, Resource::Bulk) => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {BULK_LENGTH}\r\n{}\r\n",
                    if request.close { "Connection: close\r\n" } else { "" }
                );
                connection.stream.write_all(head.as_bytes()).await?;
                let chunk = vec![b'b'; BULK_READ_BUFFER];
                let mut left = BULK_LENGTH;
                while left > 0 {
                    let length = (chunk.len() as u64).min(left) as usize;
                    connection.stream.write_all(&chunk[..length]).await?;
                    left -= length as u64;
                }
                connection.stream.flush().await?;
            }
            (Served::Origin, _) => {
                connection.send(if request.close { &small_close } else { &small_keep_alive }).await?
            }
            (Served::Stub, Resource::Messages) if wants_stream(&body) => stub_stream(&mut connection).await?,
            (Served::Stub, Resource::Messages) => connection.send(&stub_message_response(request.close)).await?,
            (Served::Stub, _) => {
                connection.send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await?;
                return Ok(());
            }
        }
        if request.close {
            let _ = connection.stream.shutdown().await;
            return Ok(());
        }
    }
    Ok(())
}

/// The origin's answer to anything but `/bulk`: 200 with `SMALL_BODY_LENGTH` bytes.
fn small_response(close: bool) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {SMALL_BODY_LENGTH}\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    response.extend(std::iter::repeat_n(b'x', SMALL_BODY_LENGTH));
    response
}

/// The request body asks for a streamed response (`"stream": true`).
fn wants_stream(body: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"\"stream\":true";
    let compact: Vec<u8> = body.iter().copied().filter(|byte| !byte.is_ascii_whitespace()).collect();
    compact.windows(NEEDLE.len()).any(|window| window == NEEDLE)
}

fn stub_message_response(close: bool) -> Vec<u8> {
    let message = stub_message();
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nrequest-id: req_bench\r\nContent-Length: {}\r\n{}\r\n{message}",
        message.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes()
}

/// The events of the stub's streamed response, each `event:` and `data:` lines and the blank line, in order.
fn stub_events() -> &'static [String] {
    static EVENTS: OnceLock<Vec<String>> = OnceLock::new();
    EVENTS.get_or_init(|| {
        let deltas: Vec<String> = (0..SSE_DELTAS).map(|index| format!("word{index} ")).collect();
        let deltas: Vec<&str> = deltas.iter().map(String::as_str).collect();
        let start_usage = json!({"input_tokens": 8, "output_tokens": 1});
        messages::stream(STUB_MESSAGE_ID, MODEL, start_usage, &deltas, json!({"output_tokens": SSE_DELTAS}))
    })
}

/// The streamed answer: the head, then each event as one chunk, written and flushed on its own, `SSE_GAP` apart.
/// Each event carries its send time as an SSE `id:` line (`stamp_ns`), which SSE readers pass over.
async fn stub_stream<S: AsyncRead + AsyncWrite + Unpin>(connection: &mut ServerConnection<S>) -> io::Result<()> {
    connection
        .send(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nrequest-id: req_bench\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
        )
        .await?;
    for (index, event) in stub_events().iter().enumerate() {
        if index > 0 {
            sleep(SSE_GAP).await;
        }
        let payload = format!("id: {}\n{event}", stamp_ns());
        connection.send(format!("{:x}\r\n{payload}\r\n", payload.len()).as_bytes()).await?;
    }
    connection.send(b"0\r\n\r\n").await
}
