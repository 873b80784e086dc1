//! The audit sink under stress, as an operator would meet it: the real `tollgate` binary as a child process, its
//! audit file a FIFO that nobody reads (a disk or pipe that stalls), a SIGKILL in the middle of a load, a torn
//! line; and `tollgate audit verify` on what is left.
//!
//! Nothing here waits by sleeping: the tests wait on sockets, on the child's log lines, on `/readyz` (the state an
//! operator watches) and on the child's exit, each within `PATIENCE`.

use crate::common;

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::*;

/// How long any single step may take before the test gives up (a bound, never a synchronisation).
pub(super) const PATIENCE: Duration = Duration::from_secs(30);

/// `server.shutdown_grace` of the gateways here.
const GRACE: Duration = Duration::from_secs(1);

/// Concurrent clients while the sink stalls: more than `audit.queue` (16), so that the queue fills too.
const CLIENTS: usize = 32;

/// A path long enough that a few dozen records fill a pipe's 64 KiB.
fn long_path(client: usize, number: usize, length: usize) -> String {
    let prefix = format!("/r/{client}/{number}/");
    format!("{prefix}{}", "x".repeat(length.saturating_sub(prefix.len())))
}

// ---- the child gateway ------------------------------------------------------------------------------------

/// A `tollgate run` child with JSON logs on stderr, read line by line on a thread.
pub(super) struct Gateway {
    child: Child,
    pub(super) proxy: SocketAddr,
    pub(super) admin: SocketAddr,
    lines: mpsc::Receiver<String>,
    pub(super) seen: Vec<String>,
}

impl Gateway {
    /// Writes `config` (YAML) to `dir/tollgate.yaml` and starts `tollgate run` on it; returns once it listens.
    pub(super) fn start(dir: &Path, config: &str) -> Gateway {
        let path = dir.join("tollgate.yaml");
        std::fs::write(&path, config).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["--log-format", "json", "run", "-c"])
            .arg(&path)
            .env_remove("TOLLGATE_CONFIG")
            // Not the per-request line: thousands of requests go through these gateways.
            .env("TOLLGATE_LOG", "info,tollgate::request=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tollgate run");
        let stderr = child.stderr.take().expect("stderr");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        let mut gateway = Gateway {
            child,
            proxy: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            lines,
            seen: Vec::new(),
        };
        let listening = gateway.wait_for_log(|message| message == "listening");
        gateway.proxy = listening["address"].as_str().expect("address").parse().expect("IP:PORT");
        let admin = gateway.wait_for_log(|message| message.starts_with("admin endpoints"));
        gateway.admin = admin["address"].as_str().expect("address").parse().expect("IP:PORT");
        gateway
    }

    /// Waits for the next log line whose message satisfies `wanted`.
    pub(super) fn wait_for_log(&mut self, wanted: impl Fn(&str) -> bool) -> serde_json::Value {
        loop {
            match self.lines.recv_timeout(PATIENCE) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    let value = serde_json::from_str::<serde_json::Value>(&line).unwrap_or_default();
                    if value["message"].as_str().is_some_and(&wanted) {
                        return value;
                    }
                }
                Err(error) => panic!("no such log line ({error}); stderr so far:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// The most memory the process has held (`VmHWM`), in KiB.
    fn peak_memory_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read /proc/PID/status");
        let line = status.lines().find(|line| line.starts_with("VmHWM:")).expect("VmHWM in /proc/PID/status");
        line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("VmHWM in kB")
    }

    pub(super) fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.pid()]).status().expect("run kill");
        assert!(status.success(), "kill {signal} {}", self.pid());
    }

    /// Waits (at most `PATIENCE`) for the child to exit; returns its status and every log line it wrote.
    pub(super) fn wait(mut self) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            // The child's stderr closes when it exits: its lines are the clock here.
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break self.child.wait().expect("wait"),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("tollgate did not exit within {PATIENCE:?}; stderr:\n{}", self.seen.join("\n"));
                }
            }
        };
        let mut seen = std::mem::take(&mut self.seen);
        seen.extend(self.lines.try_iter());
        (status, seen)
    }

    async fn readyz(&self) -> Response {
        exchange(self.admin, b"GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").await
    }

    pub(super) async fn metric(&self, sample: &str) -> f64 {
        let response = exchange(self.admin, b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").await;
        metric_value(&response.body, sample)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // A failed test must not leave a gateway behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The config of a gateway with its audit file at `audit`.
fn config(dir: &Path, audit: &Path, on_failure: &str) -> String {
    format!(
        "listeners: [{{name: proxy, bind: \"127.0.0.1:0\"}}]\n\
         admin: {{bind: \"127.0.0.1:0\"}}\n\
         auth: {{anonymous: tester}}\n\
         policy: {{default: deny, allow: [\"127.0.0.1\"], allow_private: [\"127.0.0.0/8\"]}}\n\
         audit: {{file: {{path: \"{}\"}}, on_failure: {on_failure}, queue: 16}}\n\
         server: {{shutdown_grace: {}ms}}\n\
         state: {{path: \"{}\"}}\n",
        audit.display(),
        GRACE.as_millis(),
        dir.join("state").display()
    )
}

// ---- a FIFO nobody reads ----------------------------------------------------------------------------------

/// A FIFO as the audit file: `reader` is open for reading but not read until the test says so.
struct Fifo {
    path: PathBuf,
    /// A write end held while the gateway starts, so that opening `reader` does not block; dropped once the
    /// gateway has its own, so that `reader` sees the end of the file when the gateway exits.
    keeper: Option<File>,
    reader: Option<File>,
}

impl Fifo {
    fn make(dir: &Path) -> Fifo {
        let path = dir.join("audit.jsonl");
        let status = Command::new("mkfifo").arg(&path).status().expect("mkfifo (coreutils) runs");
        assert!(status.success(), "mkfifo {}", path.display());
        // Linux opens a FIFO for reading and writing without waiting for a peer.
        let keeper = OpenOptions::new().read(true).write(true).open(&path).expect("open the FIFO");
        let reader = File::open(&path).expect("open the FIFO for reading");
        Fifo { path, keeper: Some(keeper), reader: Some(reader) }
    }

    /// The gateway has opened the FIFO: from now on only it writes.
    fn gateway_opened(&mut self) {
        self.keeper = None;
    }

    /// Reads everything the gateway writes, on a thread, until it exits.
    fn drain(&mut self) -> std::thread::JoinHandle<Vec<u8>> {
        let mut reader = self.reader.take().expect("drained once");
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            reader.read_to_end(&mut bytes).expect("read the FIFO");
            bytes
        })
    }
}

// ---- clients ----------------------------------------------------------------------------------------------

/// What a client got for one request.
#[derive(Debug, Clone)]
pub(super) struct Answer {
    pub(super) path: String,
    pub(super) status: u16,
    /// The whole response arrived (its body as long as its `Content-Length`, or its chunked end).
    pub(super) complete: bool,
    pub(super) body: String,
}

/// One request with `Connection: close`, read until the gateway closes: a held response waits as long as it is held.
pub(super) async fn request(proxy: SocketAddr, url: &str, path: &str) -> Answer {
    let mut bytes = Vec::new();
    // Refused (the gateway has exited): no answer at all.
    if let Ok(mut stream) = TcpStream::connect(proxy).await {
        let head = format!("GET {url}{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        if stream.write_all(head.as_bytes()).await.is_ok() {
            let _ = stream.read_to_end(&mut bytes).await;
        }
    }
    let (status, complete, body) = parse(&bytes);
    Answer { path: path.to_owned(), status, complete, body }
}

/// Status, completeness and body of one response by `Content-Length` (0 when no head arrived).
fn parse(bytes: &[u8]) -> (u16, bool, String) {
    let Some(end) = find(bytes, b"\r\n\r\n") else { return (0, false, String::new()) };
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok());
    let body = &bytes[end + 4..];
    (status, length == Some(body.len()), String::from_utf8_lossy(body).into_owned())
}

/// `CLIENTS` clients sending requests one after another until `stop`; each returns what it got.
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<Vec<Answer>>>,
}

impl Load {
    fn start(proxy: SocketAddr, url: String, path_length: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..CLIENTS)
            .map(|client| {
                let (stop, url) = (stop.clone(), url.clone());
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    // Bounded: a sink that never stalls ends the test here, not in an endless loop.
                    for number in 0..2_000 {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        answers.push(request(proxy, &url, &long_path(client, number, path_length)).await);
                    }
                    answers
                })
            })
            .collect();
        Load { stop, clients }
    }

    /// No client sends another request; those waiting for an answer go on waiting.
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Stops sending; returns every answer once each client's last request has ended.
    async fn finish(self) -> Vec<Answer> {
        self.stop();
        let mut answers = Vec::new();
        for client in self.clients {
            let got = tokio::time::timeout(PATIENCE, client).await.expect("every client ends").expect("client task");
            answers.extend(got);
        }
        answers
    }
}

/// Asks `/readyz` until it says the sink stalled (a write blocked on the full pipe for `STALL_AFTER`), within
/// `PATIENCE`. (A 503 for a full queue may come first and pass: records can outrun the writer for a moment.)
async fn until_stalled(gateway: &Gateway) -> Response {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ready = gateway.readyz().await;
        if ready.body.contains(" is stalled: a write has not returned for ") {
            return ready;
        }
        assert!(matches!(ready.status, 200 | 503), "{ready:?}");
        assert!(Instant::now() < deadline, "/readyz still answers {ready:?} after {PATIENCE:?}");
    }
}

/// The records of audit text, by `path`.
fn recorded_paths(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|record| record["path"].as_str().map(str::to_owned))
        .collect()
}

// ---- a stalled sink ---------------------------------------------------------------------------------------

/// With `on_failure: block`, a FIFO nobody reads fills, and the writer blocks in write(2); once it has for 2 s the
/// sink is stalled: new requests get 503 naming the sink and `/readyz` says why, responses already relayed are
/// held (none completes without its record), memory stays bounded, and once the FIFO is read again everything
/// completes, the held responses' records are in it, and the gateway is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sink_under_block_refuses_requests_holds_responses_and_recovers_when_drained() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut fifo = Fifo::make(dir.path());
    let gateway = Gateway::start(dir.path(), &config(dir.path(), &fifo.path, "block"));
    fifo.gateway_opened();
    let url = format!("http://{}", origin.address);

    let load = Load::start(gateway.proxy, url.clone(), 1_000);
    let not_ready = until_stalled(&gateway).await;
    load.stop();
    assert_eq!(not_ready.status, 503, "{not_ready:?}");
    assert!(not_ready.body.starts_with("not ready: audit sink file ("), "{not_ready:?}");
    assert!(not_ready.body.contains(&fifo.path.display().to_string()), "{not_ready:?}");
    assert!(not_ready.body.contains("requests are refused until it drains (audit.on_failure: block)"), "{not_ready:?}");
    assert_eq!(gateway.metric("tollgate_audit_sink_healthy{sink=\"file\"}").await, 0.0);

    // A new request is refused, naming the sink, and its refusal is not held for its own record.
    let refused = request(gateway.proxy, &url, "/after-the-stall").await;
    assert_eq!(refused.status, 503, "{refused:?}");
    let error: serde_json::Value = serde_json::from_str(&refused.body).expect("a JSON error");
    assert_eq!(error["error"]["type"], "audit_unavailable", "{refused:?}");
    assert_eq!(
        error["error"]["message"],
        "the audit log (file) cannot be written; requests are refused (audit.on_failure: block)",
        "{refused:?}"
    );
    assert!(gateway.metric("tollgate_audit_records_total{result=\"dropped\",sink=\"file\"}").await >= 1.0);
    let peak_kib = gateway.peak_memory_kib();
    assert!(peak_kib < 256 * 1024, "VmHWM {peak_kib} KiB with a stalled sink");

    // Reading the FIFO again: the held responses complete, their records written first.
    let drained = fifo.drain();
    let answers = load.finish().await;
    let held_then_completed = answers.iter().filter(|answer| answer.status == 200).count();
    for answer in &answers {
        assert!(
            (answer.status == 200 && answer.complete) || answer.status == 503,
            "every request completes or is refused once the sink drains: {answer:?}"
        );
    }
    let deadline = Instant::now() + PATIENCE;
    while gateway.readyz().await.status != 200 {
        assert!(Instant::now() < deadline, "/readyz is not 200 again within {PATIENCE:?}");
    }
    let after = request(gateway.proxy, &url, "/after-the-drain").await;
    assert_eq!((after.status, after.complete), (200, true), "{after:?}");

    gateway.signal("-TERM");
    let (status, logs) = gateway.wait();
    assert_eq!(status.code(), Some(0), "{}", logs.join("\n"));
    let text = String::from_utf8(drained.join().expect("drain thread")).expect("records are UTF-8");
    assert_eq!(tollgate::audit::verify_chain(&text), Ok(text.lines().count()), "the FIFO's records chain");
    let recorded = recorded_paths(&text);
    for answer in answers.iter().filter(|answer| answer.status == 200) {
        assert!(recorded.contains(&answer.path), "{} got a response but has no record", answer.path);
    }
    assert!(recorded.contains("/after-the-drain"));
    assert!(held_then_completed > 0, "some responses went through before the stall");
}

/// SIGTERM while the sink is stalled: the gateway cuts the held responses, gives the last flush what is left of
/// the grace period, exits 1 saying how many records it could not write, and every client that got a complete
/// response finds its record in what the FIFO held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stalled_sink_exits_within_the_grace_period_and_says_what_was_lost() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut fifo = Fifo::make(dir.path());
    let gateway = Gateway::start(dir.path(), &config(dir.path(), &fifo.path, "block"));
    fifo.gateway_opened();
    let url = format!("http://{}", origin.address);

    let load = Load::start(gateway.proxy, url.clone(), 1_000);
    until_stalled(&gateway).await;
    load.stop();
    let refused = request(gateway.proxy, &url, "/after-the-stall").await;
    assert_eq!(refused.status, 503, "{refused:?}");

    gateway.signal("-TERM");
    let (status, logs) = gateway.wait();
    let logs = logs.join("\n");
    assert_eq!(status.code(), Some(1), "records were lost: exit 1\n{logs}");
    assert!(logs.contains("audit records were not written: the sink did not take them"), "{logs}");

    // The clients whose responses were held saw their connections end without a complete response.
    let answers = load.finish().await;
    let held = answers.iter().filter(|answer| !answer.complete && answer.status != 503).count();
    assert!(held > 0, "some responses were held for their records: {answers:?}");
    let text = String::from_utf8(fifo.drain().join().expect("drain thread")).expect("records are UTF-8");
    let recorded = recorded_paths(&text);
    for answer in answers.iter().filter(|answer| answer.complete && answer.status == 200) {
        assert!(recorded.contains(&answer.path), "{} got a complete response but has no record", answer.path);
    }
}

/// With `on_failure: continue`, a stalled sink never holds a request: they keep succeeding, the records that do
/// not fit the queue are dropped and counted, and memory does not grow with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sink_under_continue_drops_and_counts_records_in_bounded_memory() {
    const REQUESTS: usize = 6_000;
    const PATH: usize = 6_000;
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut fifo = Fifo::make(dir.path());
    let gateway = Gateway::start(dir.path(), &config(dir.path(), &fifo.path, "continue"));
    fifo.gateway_opened();
    let url = format!("http://{}", origin.address);

    // Warm up, then measure how much the records of REQUESTS requests (about 36 MB) add.
    for number in 0..64 {
        assert_eq!(request(gateway.proxy, &url, &long_path(0, number, PATH)).await.status, 200);
    }
    let before_kib = gateway.peak_memory_kib();
    let next = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|client| {
            let (next, url, proxy) = (next.clone(), url.clone(), gateway.proxy);
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(proxy).await.expect("connect");
                let mut buf = Vec::new();
                loop {
                    let number = next.fetch_add(1, Ordering::SeqCst);
                    if number >= REQUESTS {
                        break;
                    }
                    let path = long_path(client + 1, number, PATH);
                    let head = format!("GET {url}{path} HTTP/1.1\r\nHost: x\r\n\r\n");
                    stream.write_all(head.as_bytes()).await.expect("write");
                    let response = read_kept_alive(&mut stream, &mut buf).await;
                    assert_eq!((response.status, response.complete), (200, true), "{}", response.body);
                }
            })
        })
        .collect();
    for client in clients {
        tokio::time::timeout(PATIENCE, client).await.expect("the requests end").expect("client task");
    }
    let dropped = gateway.metric("tollgate_audit_records_total{result=\"dropped\",sink=\"file\"}").await;
    assert!(dropped >= 1_000.0, "the records that did not fit were dropped and counted: {dropped}");
    let grown_kib = gateway.peak_memory_kib().saturating_sub(before_kib);
    assert!(grown_kib < 16 * 1024, "VmHWM grew by {grown_kib} KiB while about 36 MB of records were made");

    let ready = gateway.readyz().await;
    assert_eq!(ready.status, 200, "{ready:?}");
    assert!(ready.body.starts_with("ready, but audit sink file ("), "{ready:?}");
    assert!(ready.body.contains("records that do not fit the queue are dropped (audit.on_failure: continue)"));

    gateway.signal("-TERM");
    let (status, logs) = gateway.wait();
    assert_eq!(status.code(), Some(1), "queued records were lost: exit 1\n{}", logs.join("\n"));
    drop(fifo);
}

/// One response on a kept-alive connection, by `Content-Length` or chunked.
pub(super) async fn read_kept_alive(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Answer {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            let length: Option<usize> =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok());
            let body_end = match length {
                Some(length) => (buf.len() >= end + 4 + length).then_some(end + 4 + length),
                None => chunked_end(&buf[end + 4..]).map(|at| end + 4 + at),
            };
            if let Some(body_end) = body_end {
                let body = String::from_utf8_lossy(&buf[end + 4..body_end]).into_owned();
                buf.drain(..body_end);
                return Answer { path: String::new(), status, complete: true, body };
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                return Answer { path: String::new(), status: 0, complete: false, body: String::new() };
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Where a chunked body (no trailers) that starts `bytes` ends, once all of it is there.
fn chunked_end(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = at + find(&bytes[at..], b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&bytes[at..line_end]).ok()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            return (bytes.len() >= at + 2).then_some(at + 2);
        }
        at += size + 2;
        if bytes.len() < at {
            return None;
        }
    }
}

// ---- SIGKILL, a torn line, and the chain across the repair ------------------------------------------------

/// An origin whose answers take every shape the forward proxy relays: a body in the same read as the head, a
/// long one by `Content-Length` in pieces, and a chunked one, by the first letter of the path.
pub(super) async fn shaped_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
    let address = listener.local_addr().expect("origin address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(head) = next_head(&mut stream, &mut buf).await {
                    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                    let written = match path.as_bytes().get(1) {
                        Some(b'l') => {
                            let body = vec![b'l'; 200 * 1024];
                            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                            let mut result = stream.write_all(head.as_bytes()).await;
                            for piece in body.chunks(32 * 1024) {
                                result = result.and(stream.write_all(piece).await);
                            }
                            result
                        }
                        Some(b'c') => {
                            let mut result =
                                stream.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await;
                            for _ in 0..3 {
                                result = result.and(stream.write_all(b"400\r\n").await);
                                result = result.and(stream.write_all(&[b'c'; 0x400]).await);
                                result = result.and(stream.write_all(b"\r\n").await);
                            }
                            result.and(stream.write_all(b"0\r\n\r\n").await)
                        }
                        _ => stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nshort").await,
                    };
                    if written.is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

/// Four kept-alive clients send GETs (short, long and chunked bodies) through `gateway`, which is killed with
/// SIGKILL once `kill_after` responses have come back whole; returns the paths of every response that did.
pub(super) async fn kill_under_load(gateway: Gateway, origin: SocketAddr, kill_after: usize) -> Vec<String> {
    let completed = Arc::new(Mutex::new(Vec::new()));
    let (enough, killed) = (Arc::new(tokio::sync::Notify::new()), Arc::new(AtomicBool::new(false)));
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let (completed, enough, killed, proxy) = (completed.clone(), enough.clone(), killed.clone(), gateway.proxy);
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(proxy).await.expect("connect");
                let mut buf = Vec::new();
                for number in 0..5_000 {
                    let path = format!("/{}/{client}/{number}", ["short", "long", "chunked"][number % 3]);
                    let head = format!("GET http://{origin}{path} HTTP/1.1\r\nHost: {origin}\r\n\r\n");
                    if stream.write_all(head.as_bytes()).await.is_err() {
                        break;
                    }
                    let answer = read_kept_alive(&mut stream, &mut buf).await;
                    if !answer.complete {
                        assert!(killed.load(Ordering::SeqCst), "{path}: {answer:?} before the kill");
                        break;
                    }
                    assert_eq!(answer.status, 200, "{path}: {answer:?}");
                    let mut completed = completed.lock().unwrap();
                    completed.push(path);
                    if completed.len() == kill_after {
                        enough.notify_one();
                    }
                }
            })
        })
        .collect();
    tokio::time::timeout(PATIENCE, enough.notified()).await.expect("enough responses");
    killed.store(true, Ordering::SeqCst);
    gateway.signal("-KILL");
    let (status, _) = gateway.wait();
    assert_eq!(status.code(), None, "killed by a signal");
    for client in clients {
        tokio::time::timeout(PATIENCE, client).await.expect("clients end").expect("client task");
    }
    let mut paths = Vec::new();
    std::mem::swap(&mut paths, &mut completed.lock().unwrap());
    paths
}

/// A gateway killed with SIGKILL in the middle of a load: every response a client got whole had its record
/// written first. On restart a torn last line (one is written on purpose, in case the kill tore none) is set
/// aside and counted, the chain continues from the last complete record, and `tollgate audit verify` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_every_completed_response_has_its_record_and_a_torn_line_is_repaired() {
    const KILL_AFTER: usize = 300;
    const FRAGMENT: &str = "{\"ts\":\"2026-12-01T12:00:00.000Z\",\"id\":\"torn";
    let origin = shaped_origin().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let audit = dir.path().join("audit.jsonl");
    let gateway = Gateway::start(dir.path(), &config(dir.path(), &audit, "block"));

    let completed = kill_under_load(gateway, origin, KILL_AFTER).await;

    let before = std::fs::read_to_string(&audit).expect("read the audit file");
    let recorded = recorded_paths(&before);
    assert!(completed.len() >= KILL_AFTER);
    for path in &completed {
        assert!(recorded.contains(path), "{path} came back whole but has no record");
    }
    OpenOptions::new().append(true).open(&audit).expect("open").write_all(FRAGMENT.as_bytes()).expect("tear");

    // Restarted on the same file: the torn end is set aside, said and counted.
    let gateway = Gateway::start(dir.path(), &config(dir.path(), &audit, "block"));
    let repaired = gateway.seen.iter().find(|line| line.contains("the audit file ended in a torn line"));
    let repaired: serde_json::Value = serde_json::from_str(repaired.expect("the repair is logged")).expect("JSON");
    assert_eq!(repaired["kept_in"], format!("{}.torn", audit.display()), "{repaired}");
    assert_eq!(gateway.metric("tollgate_audit_torn_lines_total{sink=\"file\"}").await, 1.0);
    let kept = std::fs::read_to_string(format!("{}.torn", audit.display())).expect("the torn line is kept");
    assert!(kept.ends_with(&format!("{FRAGMENT}\n")), "{kept:?}");

    let after = request(gateway.proxy, &format!("http://{origin}"), "/short/after-the-restart").await;
    assert_eq!((after.status, after.complete), (200, true), "{after:?}");
    gateway.signal("-TERM");
    let (status, logs) = gateway.wait();
    assert_eq!(status.code(), Some(0), "{}", logs.join("\n"));

    let text = std::fs::read_to_string(&audit).expect("read the audit file");
    assert!(text.ends_with('\n') && !text.contains(FRAGMENT), "the fragment was cut from the file");
    let output =
        Command::new(env!("CARGO_BIN_EXE_tollgate")).args(["audit", "verify"]).arg(&audit).output().expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert_eq!(stdout.trim(), format!("{}: ok, {} records", audit.display(), text.lines().count()));
    assert!(recorded_paths(&text).contains("/short/after-the-restart"), "the chain continued after the repair");
}

/// `tollgate audit verify` on a file with a torn line in the middle (a copy made before tollgate repaired it)
/// names the line, checks every record after it, and still finds an edit there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_names_a_torn_line_in_the_middle_and_checks_the_rest() {
    let origin = Origin::start().await;
    let mut gateway = TestGateway::start(&format!("auth: {{anonymous: dev}}\n{LOOPBACK_POLICY}")).await;
    for path in ["/one", "/two", "/three", "/four"] {
        let answer = request(gateway.proxy, &format!("http://{}", origin.address), path).await;
        assert_eq!((answer.status, answer.complete), (200, true), "{answer:?}");
    }
    let records = gateway.shutdown_and_audit().await;
    assert_eq!(records.len(), 4);
    let original = std::fs::read_to_string(gateway.audit_path()).expect("read audit");
    let lines: Vec<&str> = original.lines().collect();

    let dir = tempfile::tempdir().expect("temp dir");
    let torn = dir.path().join("torn.jsonl");
    let fragment = &lines[2][..lines[2].len() / 2];
    std::fs::write(&torn, format!("{}\n{}\n{fragment}\n{}\n{}\n", lines[0], lines[1], lines[2], lines[3]))
        .expect("write");
    let output =
        Command::new(env!("CARGO_BIN_EXE_tollgate")).args(["audit", "verify"]).arg(&torn).output().expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            format!("{}: ok, 4 records", torn.display()),
            format!(
                "{}: 1 torn line skipped (not a complete record: a write cut short): line 3; the records around it chain",
                torn.display()
            ),
        ]
    );

    // The records after the torn line are checked too: an edit of the last one is found.
    let edited = dir.path().join("edited.jsonl");
    let last = lines[3].replacen("\"path\":\"/four\"", "\"path\":\"/five\"", 1);
    assert_ne!(last, lines[3]);
    std::fs::write(&edited, format!("{}\n{}\n{fragment}\n{}\n{last}\n", lines[0], lines[1], lines[2])).expect("write");
    let output =
        Command::new(env!("CARGO_BIN_EXE_tollgate")).args(["audit", "verify"]).arg(&edited).output().expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert_eq!(
        stdout.trim(),
        format!("{}: broken at line 5: hash does not match the record (the record was edited)", edited.display())
    );
}
