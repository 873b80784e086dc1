//! Test harness: the real gateway on 127.0.0.1:0, real origin servers, raw-socket and curl clients.
//!
//! Nothing here sleeps to synchronise: tests wait on sockets, channels and the audit flush.

pub mod binary;
pub mod gateway;
/// The OpenID Connect identity provider, shared with later login tests.
#[path = "../../support/idp.rs"]
pub mod idp;
pub mod intercept;
pub mod ledger;
pub mod messages;
pub mod pki;
pub mod redis;
#[path = "../../support/siem.rs"]
pub mod siem;
pub mod tls;

/// In-test servers that receive alerts: a webhook receiver and an SMTP server with STARTTLS.
#[path = "../../support/smtp.rs"]
pub mod smtp;
#[path = "../../support/webhook.rs"]
pub mod webhook;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use tollgate::app::{self, Running};
use tollgate::config::Config;

/// A running gateway with its temp dir (audit file lives there).
pub struct TestGateway {
    pub running: Option<Running>,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
}

/// The policy most tests use: default deny, loopback origins allowed explicitly.
pub const LOOPBACK_POLICY: &str = "policy:\n  default: deny\n  allow: [\"127.0.0.1\", \"localhost\"]\n  allow_private: [\"127.0.0.0/8\", \"::1/128\"]\n";

impl TestGateway {
    /// Starts a gateway from YAML that holds everything but `listeners`, `admin` and `audit`, which are added:
    /// one proxy listener and the admin listener on 127.0.0.1:0, the audit file in a temp dir.
    pub async fn start(yaml: &str) -> Self {
        Self::try_start(yaml).await.unwrap_or_else(|e| panic!("config should load: {e}"))
    }

    pub async fn try_start(yaml: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let audit = dir.path().join("audit.jsonl");
        let text = format!(
            "listeners: [{{name: proxy, bind: \"127.0.0.1:0\"}}]\nadmin: {{bind: \"127.0.0.1:0\"}}\naudit: {{file: {{path: \"{}\"}}}}\n{yaml}",
            audit.display()
        );
        let mut config = Config::from_text(&text, Path::new("test.yaml"), &|name| std::env::var(name).ok())
            .map_err(|e| e.to_string())?;
        isolate_state(&mut config, dir.path());
        let running = app::start(config).await.map_err(|e| e.to_string())?;
        let proxy = running.address("proxy").expect("proxy listener");
        let admin = running.admin.expect("admin listener");
        Ok(Self { running: Some(running), proxy, admin, dir })
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    /// Every audit record written so far (waits for the writer to flush).
    pub async fn audit(&self) -> Vec<serde_json::Value> {
        self.running.as_ref().expect("running").shared.auditor.flush().await;
        let text = std::fs::read_to_string(self.audit_path()).unwrap_or_default();
        text.lines().map(|line| serde_json::from_str(line).expect("audit lines are JSON")).collect()
    }

    /// The Prometheus text from `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = exchange(self.admin, b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").await;
        response.body
    }

    /// The value of one sample, e.g. `tollgate_requests_total{decision="deny",kind="connect",listener="proxy",reason="private_address"}`;
    /// 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics().await, sample)
    }

    pub async fn shutdown(&mut self) -> app::ShutdownReport {
        self.running.take().expect("running").shutdown().await
    }

    /// Shuts down (waiting for open connections and tunnels to end) and returns every audit record. For tunnels:
    /// their record is written after both halves closed, a moment no client can observe.
    pub async fn shutdown_and_audit(&mut self) -> Vec<serde_json::Value> {
        self.shutdown().await;
        let text = std::fs::read_to_string(self.audit_path()).unwrap_or_default();
        text.lines().map(|line| serde_json::from_str(line).expect("audit lines are JSON")).collect()
    }
}

/// The default `state.path` (relative to the working directory: the repository, under `cargo test`).
pub const DEFAULT_STATE_PATH: &str = "var/state";

/// A gateway started here keeps its embedded store (the spend ledger) in its own temp dir, `DIR/state`, not
/// in the repository's `var/state`, unless the test names a `state.path` of its own.
pub fn isolate_state(config: &mut Config, dir: &Path) {
    if config.state.path == Path::new(DEFAULT_STATE_PATH) {
        config.state.path = dir.join("state");
    }
}

/// Finds `sample` (name with labels, as printed) in Prometheus text.
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
        .map(|value| value.trim().parse().expect("metric value"))
        .unwrap_or(0.0)
}

/// A parsed HTTP response.
#[derive(Debug, Clone, Default)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// Sends `request` on a new connection and reads one response (head + Content-Length body, or until close).
pub async fn exchange(address: SocketAddr, request: &[u8]) -> Response {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(request).await.expect("write request");
    read_response(&mut stream).await
}

/// Reads one response from `stream`: the head, then the body by Content-Length (or to EOF when absent,
/// unless the status has no body).
pub async fn read_response(stream: &mut TcpStream) -> Response {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk))
            .await
            .expect("response within 20s")
            .expect("read");
        if n == 0 {
            return Response { status: 0, head: String::from_utf8_lossy(&buf).into_owned(), body: String::new() };
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut response = Response { status, head, body: String::new() };
    let mut body = buf[head_end..].to_vec();
    if status == 200 && response.head.starts_with("HTTP/1.1 200 Connection") {
        response.body = String::from_utf8_lossy(&body).into_owned();
        return response;
    }
    match response.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        Some(length) => {
            while body.len() < length {
                let mut chunk = vec![0u8; length - body.len()];
                let n = stream.read(&mut chunk).await.expect("read body");
                assert!(n > 0, "connection closed mid-body");
                body.extend_from_slice(&chunk[..n]);
            }
        }
        None if status == 204 || status == 304 || (100..200).contains(&status) => {}
        None => {
            let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut body)).await;
        }
    }
    response.body = String::from_utf8_lossy(&body).into_owned();
    response
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads until EOF (bounded): true when the peer closed the connection.
pub async fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let mut sink = Vec::new();
    matches!(tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut sink)).await, Ok(Ok(_)))
}

/// Accepts on 127.0.0.1:0 and serves each connection with `serve` on its own task; returns the address and the
/// count of connections accepted.
async fn serve_counting<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a test server");
    let address = listener.local_addr().expect("test server address");
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream));
        }
    });
    (address, connections)
}

/// Echoes every byte back, recording it, until the client closes; then closes too.
async fn echo(mut stream: TcpStream, received: Arc<Mutex<Vec<u8>>>) {
    let mut chunk = [0u8; 16384];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                let _ = stream.shutdown().await;
                return;
            }
            Ok(n) => {
                received.lock().unwrap().extend_from_slice(&chunk[..n]);
                if stream.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// An origin server on 127.0.0.1:0 that records every connection and every request head it receives (with its
/// body, by Content-Length or chunked), and answers each request with `200` and a body naming the path (keep-alive).
pub struct Origin {
    pub address: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl Origin {
    pub async fn start() -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let r = requests.clone();
        let (address, connections) = serve_counting(move |stream| serve_origin(stream, r.clone())).await;
        Self { address, connections, requests }
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn request_heads(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }
}

/// Reads until `buf` holds a request head and takes it out; `None` when the peer closes first.
pub async fn next_head<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn serve_origin(mut stream: TcpStream, requests: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    loop {
        let Some(head) = next_head(&mut stream, &mut buf).await else { return };
        let chunked = head.lines().any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
        let mut length: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
            .unwrap_or(0);
        if chunked {
            length = loop {
                if let Some(end) = chunked_body_length(&buf) {
                    break end;
                }
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
        }
        while buf.len() < length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body_received = String::from_utf8_lossy(&buf[..length]).into_owned();
        buf.drain(..length);
        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
        requests.lock().unwrap().push(format!("{head}{body_received}"));
        let body = format!("origin saw {path}");
        let response = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-origin: yes\r\n\r\n{body}", body.len());
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The length of the complete chunked body (chunks, last chunk, trailers) at the start of `buf`, if it is all there.
fn chunked_body_length(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = at + find(&buf[at..], b"\r\n")?;
        let size_text = String::from_utf8_lossy(&buf[at..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            loop {
                let trailer_end = at + find(&buf[at..], b"\r\n")?;
                let empty = trailer_end == at;
                at = trailer_end + 2;
                if empty {
                    return Some(at);
                }
            }
        }
        if buf.len() < at + size + 2 {
            return None;
        }
        at += size + 2;
    }
}

/// A TCP server that echoes whatever it receives (the far end of CONNECT tunnels), counting connections.
pub struct Echo {
    pub address: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub received: Arc<Mutex<Vec<u8>>>,
}

impl Echo {
    pub async fn start() -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let r = received.clone();
        let (address, connections) = serve_counting(move |stream| echo(stream, r.clone())).await;
        Self { address, connections, received }
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A listener that must never be connected to: `assert_untouched` checks its accept queue is empty.
pub struct Tripwire {
    listener: std::net::TcpListener,
    pub address: SocketAddr,
}

impl Tripwire {
    pub fn new() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tripwire");
        listener.set_nonblocking(true).expect("nonblocking");
        let address = listener.local_addr().expect("tripwire address");
        Self { listener, address }
    }

    /// A connection the gateway made before answering would already be in the accept queue.
    pub fn assert_untouched(&self) {
        match self.listener.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok((_, peer)) => panic!("tripwire {} was connected to from {peer}", self.address),
            Err(e) => panic!("tripwire accept failed: {e}"),
        }
    }
}

/// Runs curl with `args`; returns (exit code, stdout, stderr).
pub async fn curl(args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(args)
        .output()
        .await
        .expect("curl is installed (scripts/test installs it)");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `Proxy-Authorization: Basic` value for user:password.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

/// An argon2id hash for `password` (the same code `tollgate passwd` runs).
pub fn hash(password: &str) -> String {
    tollgate::identity::hash_password(password).expect("hash")
}

/// Sends `request` on a new connection, reads one response, and waits until the gateway closes the connection
/// (the request should ask for `Connection: close`, or be one the gateway closes after). Once the gateway has
/// closed, the request's metrics and audit record are in place, so tests can read them without waiting.
/// One absolute-form `GET url` with `Proxy-Authorization: credentials` on a new connection, waiting until the
/// gateway closed it (so its audit record and metrics are in place).
pub async fn get_as(proxy: SocketAddr, url: &str, credentials: &str) -> Response {
    let host = url.split("://").nth(1).and_then(|rest| rest.split('/').next()).unwrap_or("");
    let request = format!(
        "GET {url} HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: {credentials}\r\nConnection: close\r\n\r\n"
    );
    exchange_until_closed(proxy, request.as_bytes()).await
}

pub async fn exchange_until_closed(address: SocketAddr, request: &[u8]) -> Response {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(request).await.expect("write request");
    let response = read_response(&mut stream).await;
    assert!(closed_by_peer(&mut stream).await, "the gateway should close the connection after {response:?}");
    response
}

/// An origin on 127.0.0.1:0 for exactly one connection: it records the raw bytes it receives until `until`
/// has arrived (or the peer closes), then answers `200 ok` with `Connection: close`.
pub struct Capture {
    pub address: SocketAddr,
    received: tokio::sync::oneshot::Receiver<Vec<u8>>,
}

impl Capture {
    pub async fn start(until: &'static [u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind capture");
        let address = listener.local_addr().expect("capture address");
        let (done, received) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let mut buf = Vec::new();
            while find(&buf, until).is_none() {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
            let _ = done.send(buf);
        });
        Self { address, received }
    }

    /// Everything the origin received (waits for its one connection to be served).
    pub async fn received(self) -> String {
        let bytes = tokio::time::timeout(Duration::from_secs(20), self.received)
            .await
            .expect("capture origin served within 20s")
            .expect("capture origin was connected to");
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Asserts that `response` is tollgate's own error: `status`, the JSON body's `error.type` and `error.rule`, the
/// `x-tollgate-rule` header (present exactly when a rule is named) and an `x-tollgate-request-id`.
pub fn assert_refused(response: &Response, status: u16, error_type: &str, rule: Option<&str>, context: &str) {
    assert_eq!(response.status, status, "{context}: {response:?}");
    let body = response.json();
    assert_eq!(body["error"]["type"], error_type, "{context}: {response:?}");
    assert_eq!(body["error"]["rule"].as_str(), rule, "{context}: {response:?}");
    assert_eq!(response.header("x-tollgate-rule").as_deref(), rule, "{context}: {response:?}");
    assert!(response.header("x-tollgate-request-id").is_some_and(|id| !id.is_empty()), "{context}: {response:?}");
}

/// Like `exchange`, but hands back the connection for more requests or tunnel bytes.
pub async fn exchange_keep(address: SocketAddr, request: &[u8]) -> (TcpStream, Response) {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(request).await.expect("write request");
    let response = read_response(&mut stream).await;
    (stream, response)
}

/// Reads exactly `len` bytes (bounded wait).
pub async fn read_exact_bytes(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    tokio::time::timeout(Duration::from_secs(20), stream.read_exact(&mut buf))
        .await
        .expect("bytes within 20s")
        .expect("read bytes");
    buf
}

/// A `CONNECT` request for `authority` with extra header lines (each `Name: value`).
pub fn connect_request(authority: &str, headers: &[&str]) -> String {
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request
}

/// An origin on 127.0.0.1:0 that, for every connection, reads once (the request head) and answers `answer`
/// verbatim, then closes: for upstreams that misbehave.
pub async fn scripted_origin(answer: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind scripted origin");
    let address = listener.local_addr().expect("scripted origin address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head).await;
            let _ = stream.write_all(answer).await;
        }
    });
    address
}

impl TestGateway {
    /// Starts a gateway from YAML that holds its own `listeners` (and everything else but `admin` and `audit`,
    /// which are added as in `start`). `proxy` is the listener called `proxy`, or else the first one; `listener`
    /// finds the others by name.
    pub async fn start_full(yaml: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let audit = dir.path().join("audit.jsonl");
        let text =
            format!("admin: {{bind: \"127.0.0.1:0\"}}\naudit: {{file: {{path: \"{}\"}}}}\n{yaml}", audit.display());
        let mut config = Config::from_text(&text, Path::new("test.yaml"), &|name| std::env::var(name).ok())
            .unwrap_or_else(|e| panic!("config should load: {e}"));
        isolate_state(&mut config, dir.path());
        let running = app::start(config).await.unwrap_or_else(|e| panic!("gateway should start: {e}"));
        let proxy =
            running.address("proxy").or_else(|| running.listeners.first().map(|(_, a)| *a)).expect("a listener");
        let admin = running.admin.expect("admin listener");
        Self { running: Some(running), proxy, admin, dir }
    }

    /// The bound address of the listener called `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.running.as_ref().expect("running").address(name).unwrap_or_else(|| panic!("no listener {name}"))
    }

    /// Shuts down (every connection task has ended, so every counter is final) and returns the Prometheus text.
    pub async fn shutdown_and_metrics(&mut self) -> String {
        let shared = self.running.as_ref().expect("running").shared.clone();
        self.shutdown().await;
        shared.metrics.render()
    }
}

/// A clock the test sets and advances: limits and team hours read it (`app::Options::clock`).
#[derive(Debug)]
pub struct TestClock(Mutex<std::time::SystemTime>);

impl TestClock {
    /// A clock standing at `rfc3339` (e.g. `2026-12-01T12:00:00Z`).
    pub fn at(rfc3339: &str) -> Arc<Self> {
        Arc::new(Self(Mutex::new(at(rfc3339))))
    }

    pub fn set(&self, to: std::time::SystemTime) {
        *self.0.lock().unwrap() = to;
    }

    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }

    pub fn time(&self) -> std::time::SystemTime {
        *self.0.lock().unwrap()
    }
}

impl tollgate::limits::Clock for TestClock {
    fn now(&self) -> std::time::SystemTime {
        self.time()
    }
}

/// An RFC 3339 time.
pub fn at(rfc3339: &str) -> std::time::SystemTime {
    humantime::parse_rfc3339(rfc3339).unwrap_or_else(|e| panic!("{rfc3339:?} is RFC 3339: {e}"))
}

impl TestGateway {
    /// Like `start`, with the gateway's clock set by the test.
    pub async fn start_with_clock(yaml: &str, clock: Arc<TestClock>) -> Self {
        let options = app::Options { clock, ..app::Options::default() };
        Self::start_with_options(yaml, options).await
    }

    /// Like `start`, with `app::Options`.
    pub async fn start_with_options(yaml: &str, options: app::Options) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let audit = dir.path().join("audit.jsonl");
        let text = format!(
            "listeners: [{{name: proxy, bind: \"127.0.0.1:0\"}}]\nadmin: {{bind: \"127.0.0.1:0\"}}\naudit: {{file: {{path: \"{}\"}}}}\n{yaml}",
            audit.display()
        );
        let mut config = Config::from_text(&text, Path::new("test.yaml"), &|name| std::env::var(name).ok())
            .unwrap_or_else(|e| panic!("config should load: {e}"));
        isolate_state(&mut config, dir.path());
        let running = app::start_with(config, options).await.unwrap_or_else(|e| panic!("gateway should start: {e}"));
        let proxy = running.address("proxy").expect("proxy listener");
        let admin = running.admin.expect("admin listener");
        Self { running: Some(running), proxy, admin, dir }
    }

    /// Starts from a config file (`Config::load`, as `tollgate run` does) that names its own listeners (one called
    /// `proxy`), `admin` and `audit` (the audit file should be `audit.jsonl` in `dir`, for `audit()`); `dir` is
    /// kept for the life of the gateway.
    pub async fn start_file(path: &Path, dir: tempfile::TempDir, options: app::Options) -> Self {
        let mut config = Config::load(path).unwrap_or_else(|e| panic!("config should load: {e}"));
        isolate_state(&mut config, dir.path());
        let running = app::start_with(config, options).await.unwrap_or_else(|e| panic!("gateway should start: {e}"));
        let proxy = running.address("proxy").expect("proxy listener");
        let admin = running.admin.expect("admin listener");
        Self { running: Some(running), proxy, admin, dir }
    }

    /// The running gateway's shared state.
    pub fn shared(&self) -> &Arc<tollgate::shared::Shared> {
        &self.running.as_ref().expect("running").shared
    }
}

/// The Python interpreter with the `anthropic` SDK that `scripts/test` installs (a venv in `target/test-python`), from
/// `TOLLGATE_TEST_PYTHON`. Panics when it is not set: the client tests must run, never skip.
pub fn python() -> PathBuf {
    let python = std::env::var_os("TOLLGATE_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "TOLLGATE_TEST_PYTHON is not set: run the tests with scripts/test, which installs the Python anthropic SDK \
             and sets it (or export TOLLGATE_TEST_PYTHON=target/test-python/bin/python after one run of scripts/test)"
        )
    });
    assert!(
        python.exists(),
        "TOLLGATE_TEST_PYTHON={} does not exist: run scripts/test to install it",
        python.display()
    );
    python
}

/// An admin-listener request with an optional `Authorization` value (e.g. `Bearer TOKEN`).
pub async fn admin(gateway: &TestGateway, method: &str, path: &str, authorization: Option<&str>) -> Response {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n");
    if let Some(value) = authorization {
        request.push_str(&format!("Authorization: {value}\r\n"));
    }
    request.push_str("\r\n");
    exchange(gateway.admin, request.as_bytes()).await
}

/// Every log line the gateways of this test binary write, at every level (a global subscriber, installed once).
pub fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        buffer
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
