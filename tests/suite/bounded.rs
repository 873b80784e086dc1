//! Bounded everything: what an unauthenticated or hostile client can make tollgate hold is capped, and the cap shows
//! in the `tollgate_*` metrics. Password checks run on a bounded pool (one check for concurrent requests with one
//! credential, 503 beyond the pool, the failed-attempt limit counted before a check); request bodies tollgate reads
//! whole share a bounded buffer and a read timeout; partial heads are closed by the header timeout on every
//! listener, the admin one capped too; a log pipe nobody reads drops lines instead of growing memory.
//!
//! Each test runs the real binary as a child process and reads its peak resident memory (`VmHWM`) before and after
//! the flood: every flood is bounded in count and time, and the growth it may cause has a generous but real bound,
//! well below what the flood would cost without the cap.

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::binary::{Stderr, Tollgate};
use common::gateway::upstreams_yaml;
use common::messages::{self, MessagesStub, MODEL};
use common::{basic, hash, read_response, Origin, Response, LOOPBACK_POLICY};

const PASSWORD: &str = "correct horse battery";

/// One proxy listener.
const PROXY: &str = "listeners: [{name: proxy, bind: \"127.0.0.1:0\"}]\n";
/// A proxy listener and a gateway listener.
const PROXY_AND_GATEWAY: &str =
    "listeners:\n  - {name: proxy, bind: \"127.0.0.1:0\"}\n  - {name: gateway, bind: \"127.0.0.1:0\", mode: gateway}\n";

/// Writes `tollgate.yaml` in `dir`: `listeners`, an admin listener (with `admin`'s extra keys), the audit file and
/// the state in `dir`, then `rest`.
fn write_config(dir: &Path, listeners: &str, admin: &str, rest: &str) -> PathBuf {
    let path = dir.join("tollgate.yaml");
    let text = format!(
        "{listeners}admin: {{bind: \"127.0.0.1:0\"{admin}}}\naudit: {{file: {{path: \"{}\"}}}}\nstate: {{path: \"{}\"}}\n{rest}",
        dir.join("audit.jsonl").display(),
        dir.join("state").display()
    );
    std::fs::write(&path, text).expect("write the config");
    path
}

/// alice with `PASSWORD`, no anonymous access, loopback destinations allowed, and `extra` under `auth`.
fn alice_config(extra: &str) -> String {
    format!(
        "auth:\n  anonymous: deny\n{extra}  users:\n    - {{name: alice, password_hash: \"{}\"}}\n{LOOPBACK_POLICY}",
        hash(PASSWORD)
    )
}

/// An absolute-form GET for `url` with Basic credentials, closing the connection after.
fn get_as(url: &str, user: &str, password: &str) -> Vec<u8> {
    format!(
        "GET {url} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {}\r\nConnection: close\r\n\r\n",
        basic(user, password)
    )
    .into_bytes()
}

/// Sends each request (which asks for `Connection: close`) on its own connection, all at once: every connection is
/// opened and sent all of its request but the last byte first, then the last bytes go out back to back, so the
/// gateway sees the requests together. Returns the responses in order (status 0 for a connection closed without
/// one) once the gateway has closed every connection, so their records and metrics are in place.
async fn burst(address: SocketAddr, requests: Vec<Vec<u8>>) -> Vec<Response> {
    let mut opened = Vec::with_capacity(requests.len());
    for request in requests {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        stream.write_all(&request[..request.len() - 1]).await.expect("write the request");
        opened.push((stream, request[request.len() - 1]));
    }
    let tasks: Vec<_> = opened
        .into_iter()
        .map(|(mut stream, last)| {
            tokio::spawn(async move {
                stream.write_all(&[last]).await.expect("write the last byte");
                let response = read_response(&mut stream).await;
                assert!(common::closed_by_peer(&mut stream).await, "the gateway closes after {response:?}");
                response
            })
        })
        .collect();
    let mut responses = Vec::with_capacity(tasks.len());
    for task in tasks {
        responses.push(task.await.expect("a client task"));
    }
    responses
}

/// How many of `responses` have `status`.
fn count(responses: &[Response], status: u16) -> usize {
    responses.iter().filter(|response| response.status == status).count()
}

/// Asserts the growth of the peak resident memory from `before` (KiB) is below `bound_mib`, and says what it was.
fn assert_rss_growth(tollgate: &Tollgate, before: u64, bound_mib: u64, context: &str) {
    let after = tollgate.peak_rss_kib();
    let growth = after.saturating_sub(before);
    eprintln!("{context}: VmHWM {before} KiB -> {after} KiB (+{} KiB; bound {bound_mib} MiB)", growth);
    assert!(
        growth < bound_mib * 1024,
        "{context}: peak RSS grew by {growth} KiB ({before} -> {after}), bound {bound_mib} MiB"
    );
}

/// `tollgate_requests_total` of one decision, kind, listener and reason.
fn requests_sample(decision: &str, kind: &str, listener: &str, reason: &str) -> String {
    format!("tollgate_requests_total{{decision=\"{decision}\",kind=\"{kind}\",listener=\"{listener}\",reason=\"{reason}\"}}")
}

const CHECKS_RUN: &str = "tollgate_password_checks_total{result=\"run\"}";
const CHECKS_REFUSED: &str = "tollgate_password_checks_total{result=\"refused\"}";

// ---- Password verification ----

/// 32 connections opened at once with one valid Basic password are all served, and share one argon2 check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sign_ins_with_one_password_share_one_check() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let tollgate = Tollgate::start(&write_config(dir.path(), PROXY, "", &alice_config("")), Stderr::Drained).await;
    let request = get_as(&origin.url("/together"), "alice", PASSWORD);
    let responses = burst(tollgate.listener("proxy"), vec![request; 32]).await;
    assert_eq!(count(&responses, 200), 32, "{responses:?}");
    assert_eq!(origin.request_heads().len(), 32);
    let metrics = tollgate.metrics().await;
    assert_eq!(common::metric_value(&metrics, CHECKS_RUN), 1.0, "one argon2 check for the 32:\n{metrics}");
    assert_eq!(common::metric_value(&metrics, CHECKS_REFUSED), 0.0, "{metrics}");
}

/// A burst of 300 connections with distinct wrong passwords overruns the verifier pool (a few workers and a bounded
/// queue): those beyond it get 503 at once instead of queueing, each counted as refused, while every check that
/// ran is a 407; memory stays bounded (300 argon2id checks at 19 MiB each would not), and afterwards the right
/// password is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_wrong_passwords_beyond_the_verifier_pool_is_refused_with_503() {
    const GUESSES: usize = 300;
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let tollgate = Tollgate::start(&write_config(dir.path(), PROXY, "", &alice_config("")), Stderr::Drained).await;
    let proxy = tollgate.listener("proxy");
    // One check before measuring: the first argon2 run's memory is part of the baseline.
    let warm = burst(proxy, vec![get_as(&origin.url("/warm"), "alice", PASSWORD)]).await;
    assert_eq!(warm[0].status, 200, "{warm:?}");
    let before = tollgate.peak_rss_kib();

    let guesses = (0..GUESSES).map(|n| get_as(&origin.url("/guess"), "alice", &format!("guess-{n}"))).collect();
    let responses = burst(proxy, guesses).await;
    let (refused, busy) = (count(&responses, 407), count(&responses, 503));
    assert_eq!(
        refused + busy,
        GUESSES,
        "only 407 and 503: {:?}",
        responses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(busy > 0, "the burst overran the pool: {refused} checked, none refused");
    let over = responses.iter().find(|r| r.status == 503).expect("a 503");
    assert_eq!(over.json()["error"]["type"], "auth_busy", "{over:?}");
    assert_rss_growth(&tollgate, before, 128, "300 wrong passwords at once");

    let metrics = tollgate.metrics().await;
    assert_eq!(common::metric_value(&metrics, CHECKS_REFUSED), busy as f64, "{metrics}");
    assert_eq!(
        common::metric_value(&metrics, CHECKS_RUN),
        (refused + 1) as f64,
        "the warm-up and each 407:\n{metrics}"
    );
    assert_eq!(common::metric_value(&metrics, &requests_sample("error", "http", "proxy", "auth_busy")), busy as f64);
    let after = burst(proxy, vec![get_as(&origin.url("/after"), "alice", PASSWORD)]).await;
    assert_eq!(after[0].status, 200, "the right password after the burst: {after:?}");
    assert_eq!(origin.request_heads().len(), 2, "no guess reached the origin");
}

/// `auth.failed_auth_limit.per_minute: 3` counts an attempt before it is checked: 12 concurrent wrong guesses from
/// one address let exactly 3 checks run (407); the other 9 are refused at once with 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failed_auth_limit_counts_an_attempt_before_checking_it() {
    let origin = Origin::start().await;
    let minute = || SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs() / 60;
    // The limit counts per wall-clock minute: a run that straddles a minute boundary is repeated once.
    for attempt in 0..2 {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = alice_config("  failed_auth_limit: {per_minute: 3}\n");
        let tollgate = Tollgate::start(&write_config(dir.path(), PROXY, "", &config), Stderr::Drained).await;
        let started = minute();
        let guesses = (0..12).map(|n| get_as(&origin.url("/guess"), "alice", &format!("guess-{n}"))).collect();
        let responses = burst(tollgate.listener("proxy"), guesses).await;
        if minute() != started && attempt == 0 {
            continue;
        }
        let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
        assert_eq!((count(&responses, 407), count(&responses, 429)), (3, 9), "{statuses:?}");
        let throttled = responses.iter().find(|r| r.status == 429).expect("a 429");
        assert_eq!(throttled.json()["error"]["type"], "auth_throttled", "{throttled:?}");
        assert_eq!(tollgate.metric(CHECKS_RUN).await, 3.0, "at most per_minute checks ran");
        assert_eq!(origin.request_heads().len(), 0);
        return;
    }
}

// ---- Request bodies tollgate reads whole ----

/// A gateway listener routed to `stub`, anonymous callers, and `server` settings.
fn gateway_config(stub: &MessagesStub, server: &str) -> String {
    format!(
        "auth: {{anonymous: dev}}\npolicy: {{default: deny}}\n{}routing:\n  - {{when: {{listener: gateway}}, to: stub}}\nserver: {{{server}}}\n",
        upstreams_yaml(&[("stub", stub, "sk-upstream")])
    )
}

/// The head of `POST /v1/messages` declaring a body of `length` bytes.
fn upload_head(length: usize) -> String {
    format!(
        "POST /v1/messages HTTP/1.1\r\nHost: tollgate.test\r\nanthropic-version: 2023-06-01\r\n\
         content-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    )
}

/// A Messages request body of exactly `length` bytes (padded with spaces after the JSON).
fn padded_body(length: usize) -> Vec<u8> {
    let mut body = messages::request_body(MODEL, false).into_bytes();
    assert!(body.len() <= length);
    body.resize(length, b' ');
    body
}

/// An upload sent in two parts: `first` at once, `rest` once `go` turns true. Sends `(index, answer)` on `answers`
/// when the answer (one response, or whatever came before the connection closed) has been read (bounded: 30 s).
async fn upload_in_two_parts(
    address: SocketAddr,
    index: usize,
    first: Vec<u8>,
    rest: Vec<u8>,
    mut go: tokio::sync::watch::Receiver<bool>,
    answers: tokio::sync::mpsc::Sender<(usize, String)>,
) {
    let (mut read, mut write) = TcpStream::connect(address).await.expect("connect").into_split();
    let writer = tokio::spawn(async move {
        // A refused upload is closed while it is being sent: its writes may fail, its answer is still read.
        let _ = write.write_all(&first).await;
        if go.wait_for(|go| *go).await.is_ok() {
            let _ = write.write_all(&rest).await;
        }
        write
    });
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = common::find(&bytes, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()))
                .unwrap_or(0);
            if bytes.len() >= end + 4 + length {
                break;
            }
        }
        match tokio::time::timeout(Duration::from_secs(30), read.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => bytes.extend_from_slice(&chunk[..n]),
            Ok(_) => break,
            Err(_) => panic!("upload {index}: no answer within 30s: {:?}", String::from_utf8_lossy(&bytes)),
        }
    }
    let _ = answers.send((index, String::from_utf8_lossy(&bytes).into_owned())).await;
    // Keep the write half open until the answer is read.
    drop(writer.await);
}

/// Waits (bounded: 30 s) for the next answer of `upload_in_two_parts`.
async fn next_answer(answers: &mut tokio::sync::mpsc::Receiver<(usize, String)>) -> (usize, String) {
    tokio::time::timeout(Duration::from_secs(30), answers.recv())
        .await
        .expect("an answer within 30s")
        .expect("an upload still running")
}

/// With `server.max_buffered_body_bytes: 4MiB`, 16 concurrent uploads that each declare 3 MiB and send 2 MiB of it:
/// one holds its share, the other 15 are refused at once with 503 (`buffers_full`) instead of being read; a small
/// request still fits beside the held one, and the held upload, once complete, is served. Memory grows by far less
/// than the 32 MiB the stalled uploads would hold if they were all read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_request_bodies_share_a_bounded_buffer() {
    const UPLOADS: usize = 16;
    const DECLARED: usize = 3 << 20;
    const SENT: usize = 2 << 20;
    let stub = MessagesStub::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = gateway_config(&stub, "max_buffered_body_bytes: 4MiB");
    let tollgate = Tollgate::start(&write_config(dir.path(), PROXY_AND_GATEWAY, "", &config), Stderr::Drained).await;
    let gateway = tollgate.listener("gateway");
    let body = messages::request_body(MODEL, false);
    let mut small = upload_head(body.len()).replace("\r\n\r\n", "\r\nconnection: close\r\n\r\n").into_bytes();
    small.extend_from_slice(body.as_bytes());
    assert_eq!(burst(gateway, vec![small.clone()]).await[0].status, 200, "warm-up");
    let before = tollgate.peak_rss_kib();

    let body = padded_body(DECLARED);
    let (go, going) = tokio::sync::watch::channel(false);
    let (answers, mut answered) = tokio::sync::mpsc::channel(UPLOADS);
    for index in 0..UPLOADS {
        let mut first = upload_head(DECLARED).into_bytes();
        first.extend_from_slice(&body[..SENT]);
        let rest = body[SENT..].to_vec();
        tokio::spawn(upload_in_two_parts(gateway, index, first, rest, going.clone(), answers.clone()));
    }
    let mut refused = Vec::new();
    while refused.len() < UPLOADS - 1 {
        let (index, answer) = next_answer(&mut answered).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "upload {index}: {answer}");
        assert!(answer.contains("max_buffered_body_bytes"), "upload {index}: {answer}");
        refused.push(index);
    }
    assert_eq!(burst(gateway, vec![small.clone()]).await[0].status, 200, "a small request fits beside the held upload");
    assert_rss_growth(&tollgate, before, 24, "16 stalled uploads of 3 MiB");

    go.send_replace(true);
    let (index, answer) = next_answer(&mut answered).await;
    assert!(!refused.contains(&index), "{index}");
    assert!(answer.starts_with("HTTP/1.1 200"), "the held upload, complete: {answer}");
    let seen = stub.requests();
    assert_eq!(seen.len(), 3, "the warm-up, the small request and the held upload");
    assert_eq!(seen[2].body.len(), DECLARED);
    let full = requests_sample("error", "gateway", "gateway", "buffers_full");
    assert_eq!(tollgate.metric(&full).await, (UPLOADS - 1) as f64);
}

/// With `server.body_read_timeout: 1s`, uploads that send their head and part of their body, then stall, get 408
/// (`body_timeout`); the buffer they held is free again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_408() {
    const UPLOADS: usize = 8;
    let stub = MessagesStub::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = gateway_config(&stub, "body_read_timeout: 1s, max_buffered_body_bytes: 1MiB");
    let tollgate = Tollgate::start(&write_config(dir.path(), PROXY_AND_GATEWAY, "", &config), Stderr::Drained).await;
    let gateway = tollgate.listener("gateway");
    let (_go, going) = tokio::sync::watch::channel(false);
    let (answers, mut answered) = tokio::sync::mpsc::channel(UPLOADS);
    let body = padded_body(100 << 10);
    for index in 0..UPLOADS {
        let mut first = upload_head(body.len()).into_bytes();
        first.extend_from_slice(&body[..body.len() / 2]);
        tokio::spawn(upload_in_two_parts(gateway, index, first, Vec::new(), going.clone(), answers.clone()));
    }
    for _ in 0..UPLOADS {
        let (index, answer) = next_answer(&mut answered).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "upload {index}: {answer}");
        assert!(answer.contains("server.body_read_timeout"), "upload {index}: {answer}");
    }
    assert!(stub.requests().is_empty(), "no stalled upload reached the stub");
    // 8 × 100 KiB were held at once: had they not been released, 8 more would not fit in 1 MiB.
    let mut whole = upload_head(body.len()).replace("\r\n\r\n", "\r\nconnection: close\r\n\r\n").into_bytes();
    whole.extend_from_slice(&body);
    let responses = burst(gateway, vec![whole; 8]).await;
    assert_eq!(count(&responses, 200), 8, "{responses:?}");
    let timeouts = requests_sample("error", "gateway", "gateway", "body_timeout");
    assert_eq!(tollgate.metric(&timeouts).await, UPLOADS as f64);
}

// ---- Unauthenticated floods ----

/// Opens `connections` connections to `address`, each sending `partial` (a head that never ends), and waits
/// (bounded: 30 s each, concurrently) until the peer closes each; returns what each received before the close.
async fn slowloris(address: SocketAddr, connections: usize, partial: &'static [u8]) -> Vec<Vec<u8>> {
    let mut opened = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        stream.write_all(partial).await.expect("write a partial head");
        opened.push(stream);
    }
    let tasks: Vec<_> = opened
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let mut received = Vec::new();
                let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut received)).await;
                assert!(read.is_ok(), "a partial head was still held after 30s");
                received
            })
        })
        .collect();
    let mut received = Vec::with_capacity(tasks.len());
    for task in tasks {
        received.push(task.await.expect("a slowloris task"));
    }
    received
}

/// With `server.header_read_timeout: 1s` (and the default 60 s keep-alive timeout), 256 connections holding a
/// partial head on the proxy listener and 256 on a gateway listener are all closed by the header timeout (the
/// proxy answers 408 first), counted, and cost little memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_heads_are_closed_by_the_header_timeout_on_every_listener() {
    const CONNECTIONS: usize = 256;
    let stub = MessagesStub::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = gateway_config(&stub, "header_read_timeout: 1s");
    let tollgate = Tollgate::start(&write_config(dir.path(), PROXY_AND_GATEWAY, "", &config), Stderr::Drained).await;
    let before = tollgate.peak_rss_kib();

    let (proxy, gateway) = (tollgate.listener("proxy"), tollgate.listener("gateway"));
    let (at_proxy, at_gateway) = tokio::join!(
        slowloris(proxy, CONNECTIONS, b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\nX-Slow: "),
        slowloris(gateway, CONNECTIONS, b"POST /v1/messages HTTP/1.1\r\nHost: tollgate.test\r\nX-Slow: "),
    );
    for received in &at_proxy {
        assert!(received.starts_with(b"HTTP/1.1 408"), "{:?}", String::from_utf8_lossy(received));
    }
    assert_eq!(at_gateway.len(), CONNECTIONS);
    assert_rss_growth(&tollgate, before, 32, "512 partial heads");

    let metrics = tollgate.metrics().await;
    let timeouts = "tollgate_client_errors_total{listener=\"proxy\",reason=\"header_timeout\"}";
    assert_eq!(common::metric_value(&metrics, timeouts), CONNECTIONS as f64, "{metrics}");
    let timeouts = "tollgate_client_errors_total{listener=\"gateway\",reason=\"header_timeout\"}";
    assert_eq!(common::metric_value(&metrics, timeouts), CONNECTIONS as f64, "{metrics}");
    for listener in ["proxy", "gateway"] {
        let active = format!("tollgate_connections_active{{listener=\"{listener}\"}}");
        assert_eq!(common::metric_value(&metrics, &active), 0.0, "{metrics}");
    }
    assert!(stub.requests().is_empty());
}

/// The admin listener with `server.max_admin_connections: 4`: while 4 connections hold partial heads, 100 more
/// are closed at once without an answer, even to a complete `GET /healthz`; the 4 are closed by the header
/// timeout, and then `/metrics` answers and counts the 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_caps_its_connections_and_closes_slow_heads() {
    const HELD: usize = 4;
    const BEYOND: usize = 100;
    let dir = tempfile::tempdir().expect("temp dir");
    let rest = format!("auth: {{anonymous: dev}}\n{LOOPBACK_POLICY}server: {{max_admin_connections: {HELD}, header_read_timeout: 1s}}\n");
    let tollgate = Tollgate::start(&write_config(dir.path(), PROXY, "", &rest), Stderr::Drained).await;
    let before = tollgate.peak_rss_kib();
    let admin = tollgate.admin;

    let mut held = Vec::new();
    for _ in 0..HELD {
        let mut stream = TcpStream::connect(admin).await.expect("connect");
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nX-Slow: ").await.expect("write");
        held.push(stream);
    }
    for n in 0..BEYOND {
        let mut stream = TcpStream::connect(admin).await.expect("connect");
        // Closed at accept: the write may already fail.
        let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").await;
        let mut received = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut received)).await;
        assert!(read.is_ok(), "connection {n} beyond the cap was not closed");
        assert!(
            received.is_empty(),
            "connection {n} beyond the cap was answered: {:?}",
            String::from_utf8_lossy(&received)
        );
    }
    for (n, mut stream) in held.into_iter().enumerate() {
        let mut received = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut received)).await;
        assert!(read.is_ok(), "slow head {n} was not closed by the header timeout");
    }
    let metrics = tollgate.metrics().await;
    let refused = "tollgate_client_errors_total{listener=\"admin\",reason=\"connection_limit\"}";
    assert_eq!(common::metric_value(&metrics, refused), BEYOND as f64, "{metrics}");
    assert_rss_growth(&tollgate, before, 16, "the admin flood");
}

// ---- The log writer ----

/// With stderr connected to a pipe the test stops reading once the listeners are up, 16,000 refused requests with
/// 6 KB paths (about 100 MB of log lines) fill the pipe: the writer's buffer stops at its bound (4 MiB), further
/// lines are dropped and counted in `tollgate_log_lines_dropped_total`, requests are still answered, and memory
/// grows by far less than the lines would take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_pipe_nobody_reads_drops_lines_instead_of_growing_memory() {
    const CONNECTIONS: usize = 16;
    const PER_CONNECTION: usize = 1000;
    let dir = tempfile::tempdir().expect("temp dir");
    let rest = "auth: {anonymous: dev}\npolicy: {default: deny}\n";
    let tollgate = Tollgate::start(&write_config(dir.path(), PROXY, "", rest), Stderr::Unread).await;
    let proxy = tollgate.listener("proxy");
    let before = tollgate.peak_rss_kib();

    let path = "a".repeat(6000);
    let request = format!("GET http://denied.example/{path} HTTP/1.1\r\nHost: denied.example\r\n\r\n");
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let request = request.clone();
            tokio::spawn(async move {
                let stream = TcpStream::connect(proxy).await.expect("connect");
                let (mut read, mut write) = stream.into_split();
                let writer = tokio::spawn(async move {
                    for _ in 0..PER_CONNECTION {
                        write.write_all(request.as_bytes()).await.expect("write a request");
                    }
                    write
                });
                let mut buf = Vec::new();
                let mut answered = 0;
                while answered < PER_CONNECTION {
                    let mut chunk = [0u8; 65536];
                    let n = tokio::time::timeout(Duration::from_secs(30), read.read(&mut chunk))
                        .await
                        .expect("answers keep coming")
                        .expect("read");
                    assert!(n > 0, "the proxy closed after {answered} answers");
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = common::find(&buf, b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        assert!(head.starts_with("http/1.1 403"), "{head}");
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse().ok()))
                            .expect("a content-length");
                        if buf.len() < end + 4 + length {
                            break;
                        }
                        buf.drain(..end + 4 + length);
                        answered += 1;
                    }
                }
                // Closing our side, and waiting for the proxy to close its own, puts the last record in place.
                drop(writer.await);
                assert_eq!(read.read(&mut [0u8; 1]).await.expect("read the end"), 0, "the proxy closes after us");
                answered
            })
        })
        .collect();
    for client in clients {
        assert_eq!(client.await.expect("a client"), PER_CONNECTION);
    }
    assert_rss_growth(&tollgate, before, 48, "100 MB of log lines into a full pipe");
    let dropped = tollgate.metric("tollgate_log_lines_dropped_total").await;
    eprintln!("log lines dropped: {dropped}");
    assert!(dropped > 0.0, "lines were dropped: {dropped}");
    let denied = tollgate.metric(&requests_sample("deny", "http", "proxy", "default")).await;
    assert_eq!(denied, (CONNECTIONS * PER_CONNECTION) as f64, "every request was answered and counted");
}
