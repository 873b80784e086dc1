//! TLS interception of `api.anthropic.com`: tollgate answers the allowed CONNECT itself with a leaf from its own CA,
//! serves the requests inside (HTTP/1.1 and h2), forwards them to the Messages API stub byte-exact, relays the
//! answers unmodified and unbuffered, meters their usage exactly, and refuses what policy, paths, size and DLP forbid
//! with Anthropic-shaped errors that never reach the upstream. A host that is not intercepted is still spliced.
//!
//! Real parts only: the gateway on 127.0.0.1:0, the hyper Messages stub, curl, a rustls client, raw sockets and the
//! Python `anthropic` SDK.

use crate::common;

use std::os::unix::fs::PermissionsExt;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::gateway::assert_api_error;
use common::intercept::{
    assert_billed, assert_usd, audit_until, connect, expected_cost, get, handshake, intercepted, messages_post,
    only_intercepted, post, read_more, request, requests_sample, send, trusting, Intercepting, Parts, API_HOST, PRICES,
};
use common::messages::{
    self, anthropic_client, chunks, merged_usage, sse_events, usage_json, usage_of, MessagesStub, Seen, STREAM_EVENTS,
};
use common::pki::Pki;
use common::tls::{request_until_closed, TlsOrigin};
use common::{basic, connect_request, curl, hash, logs, Echo, TestGateway};

/// The model with no scenario: the stub answers normally. It is priced by the `claude-sonnet-4*` row.
const MODEL: &str = messages::MODEL;

const MINTED: &str = "tollgate_intercept_leaves_total{source=\"minted\"}";
const CACHED: &str = "tollgate_intercept_leaves_total{source=\"cached\"}";

fn only_request(stub: &MessagesStub) -> Seen {
    let requests = stub.requests();
    assert_eq!(requests.len(), 1, "one request reached the stub: {requests:#?}");
    requests.into_iter().next().expect("one request")
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(name, _)| name.as_str()).collect()
}

// ---- 1. The CA, TLS inside the tunnel, h2 and HTTP/1.1 ----

/// The first start creates the interception CA (the key readable by its owner only); a client trusting only that
/// CA completes TLS for api.anthropic.com inside the tunnel, a client trusting another CA does not; a restart loads
/// the same CA instead of making a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_start_creates_the_ca_that_clients_trust() {
    let stub = MessagesStub::start().await;
    let ca_dir = tempfile::tempdir().expect("CA dir");
    let (ca_pem, ca_key) = (ca_dir.path().join("ca.pem"), ca_dir.path().join("ca.key"));
    assert!(!ca_pem.exists() && !ca_key.exists());
    let config = common::intercept::config(&stub, ca_dir.path(), &Parts::default());
    let mut gateway = TestGateway::start(&config).await;

    assert!(std::fs::read_to_string(&ca_pem).expect("ca.pem created").contains("BEGIN CERTIFICATE"));
    let mode = std::fs::metadata(&ca_key).expect("ca.key created").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the CA key is private: {mode:o}");

    let tcp = connect(gateway.proxy, API_HOST, None).await;
    let mut tls = handshake(tcp, API_HOST, trusting(&ca_pem, &[b"http/1.1"])).await.expect("the minted leaf verifies");
    let mut buf = Vec::new();
    let models = send(&mut tls, &get("/v1/models", &["Connection: close"]), &mut buf).await;
    assert_eq!(models.status, 200, "{models:?}");
    assert_eq!(models.json()["data"][0]["id"], messages::MODELS[0], "the stub's answer: {models:?}");
    assert_eq!(gateway.metric(MINTED).await, 1.0);

    // Trusting another CA only: the leaf does not verify.
    let pki = Pki::new();
    let tcp = connect(gateway.proxy, API_HOST, None).await;
    let error = handshake(tcp, API_HOST, trusting(&pki.ca.pem, &[])).await.expect_err("an untrusted leaf");
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
    assert_eq!((gateway.metric(MINTED).await, gateway.metric(CACHED).await), (1.0, 1.0), "one leaf, then cached");

    let created = std::fs::read(&ca_pem).expect("ca.pem");
    gateway.shutdown().await;
    let restarted = TestGateway::start(&config).await;
    assert_eq!(std::fs::read(&ca_pem).expect("ca.pem"), created, "a restart keeps the CA");
    let tcp = connect(restarted.proxy, API_HOST, None).await;
    handshake(tcp, API_HOST, trusting(&ca_pem, &[])).await.expect("the same CA still verifies");
}

/// curl's arguments for `POST https://api.anthropic.com/v1/messages` with `body` through the gateway, trusting only
/// the interception CA, printing `\n<status> <HTTP version>` after the body.
fn curl_messages(setup: &Intercepting, body: &str) -> Vec<String> {
    let mut args: Vec<String> = vec!["--proxy".into(), format!("http://{}", setup.gateway.proxy), "--cacert".into()];
    args.push(setup.ca_pem().to_str().expect("path").to_owned());
    for header in ["x-api-key: sk-ant-client", "anthropic-version: 2023-06-01", "content-type: application/json"] {
        args.extend(["-H".to_owned(), header.to_owned()]);
    }
    args.extend([
        "--data-binary".to_owned(),
        body.to_owned(),
        "-w".to_owned(),
        "\n%{http_code} %{http_version}".to_owned(),
    ]);
    args.push("https://api.anthropic.com/v1/messages".to_owned());
    args
}

/// curl through the proxy, trusting the CA file only, negotiates h2 inside the tunnel and gets the stub's JSON
/// message; the stub receives the request (over HTTP/1.1) with its body intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_speaks_h2_inside_the_tunnel() {
    let setup = Intercepting::start(Parts::default()).await;
    let body = messages::request_body(MODEL, false);
    let args = curl_messages(&setup, &body);
    let (code, stdout, stderr) = curl(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(code, 0, "{stderr}");
    let (json_text, status) = stdout.rsplit_once('\n').expect("the -w line");
    assert_eq!(status, "200 2", "HTTP/2 inside the tunnel: {stdout}");
    let message: Value = serde_json::from_str(json_text).expect("the stub's JSON");
    assert_eq!(message["content"][0]["text"], messages::JSON_TEXT);
    assert_eq!(usage_of(&message["usage"]), messages::JSON_USAGE);

    let seen = only_request(&setup.stub);
    assert_eq!((seen.method.as_str(), seen.path_and_query.as_str()), ("POST", "/v1/messages"));
    assert_eq!(seen.body, body.as_bytes());
    assert_eq!(seen.header_str("anthropic-version").as_deref(), Some("2023-06-01"));
    let records = setup.gateway.audit().await;
    let record = only_intercepted(&records);
    assert_eq!((record["host"].as_str(), record["port"].as_u64()), (Some(API_HOST), Some(443)), "{record:#}");
    assert_eq!((record["status"].as_u64(), record["upstream"].as_str()), (Some(200), Some("stub")), "{record:#}");
}

/// An h2 client that keeps its tunnel open without a request in flight is closed after `server.keepalive_timeout`
/// (a GOAWAY, then the end of the connection), as an idle HTTP/1.1 client is; its request was answered first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2_tunnel_is_closed_after_the_keepalive_timeout() {
    let setup = Intercepting::start(Parts { extra: "server: {keepalive_timeout: 300ms}\n", ..Parts::default() }).await;
    let tcp = connect(setup.gateway.proxy, API_HOST, None).await;
    let tls = handshake(tcp, API_HOST, trusting(&setup.ca_pem(), &[b"h2"])).await.expect("TLS inside the tunnel");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let io = hyper_util::rt::TokioIo::new(tls);
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.expect("h2 handshake");
    let connection = tokio::spawn(connection);

    let request = hyper::Request::get(format!("https://{API_HOST}/api/claude_code/settings"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("a request");
    let response = sender.send_request(request).await.expect("an answer over h2");
    assert_eq!(response.status(), 200);

    let closed = tokio::time::timeout(std::time::Duration::from_secs(20), connection).await;
    let ended = closed.expect("the idle connection is closed within 20s").expect("the connection task");
    assert!(ended.is_ok(), "closed cleanly (GOAWAY): {ended:?}");
    let records = setup.gateway.audit().await;
    assert_eq!(only_intercepted(&records)["status"], 200, "{records:#?}");
}

/// A rustls client that offers only http/1.1 gets it, and sends two requests on one tunnel (keep-alive): each is
/// answered, each gets its own audit record, and the CONNECT gets one when the tunnel closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rustls_client_sends_two_http1_requests_on_one_tunnel() {
    let mut setup = Intercepting::start(Parts::default()).await;
    let mut tls = setup.tunnel().await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut buf = Vec::new();

    let first = send(&mut tls, &messages_post(&messages::request_body(MODEL, false), &[]), &mut buf).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(usage_of(&first.json()["usage"]), messages::JSON_USAGE);
    let second = send(&mut tls, &get("/api/claude_code/settings", &[]), &mut buf).await;
    assert_eq!((second.status, second.body.as_str()), (200, "{}"), "{second:?}");
    assert!(buf.is_empty(), "nothing after the two responses: {buf:?}");
    drop(tls);

    let records = setup.gateway.shutdown_and_audit().await;
    let paths: Vec<_> = intercepted(&records).iter().map(|r| r["path"].as_str().unwrap_or("-").to_owned()).collect();
    assert_eq!(paths, ["/v1/messages", "/api/claude_code/settings"], "{records:#?}");
    let connects: Vec<_> = records.iter().filter(|r| r["kind"] == "connect").collect();
    assert_eq!(connects.len(), 1, "{records:#?}");
    assert_eq!((connects[0]["host"].as_str(), connects[0]["status"].as_u64()), (Some(API_HOST), Some(200)));
    assert_eq!(setup.stub.requests().len(), 2);
}

// ---- 2. Byte-exact pass-through ----

/// The end-to-end request headers (anthropic-version, anthropic-beta, x-claude-code-session-id, user-agent, the
/// client's x-api-key when the upstream has no api_key) and the body arrive at the stub byte-identical; hop-by-hop
/// headers, the ones `Connection` names, Proxy-Authorization and x-tollgate-* never arrive; Host names the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_and_body_arrive_byte_exact_and_hop_by_hop_headers_never() {
    let setup = Intercepting::start(Parts::default()).await;
    // Spacing, key order, escapes and non-ASCII a re-serialisation would change.
    let body = r#"{ "model" : "claude-sonnet-4-5",
  "max_tokens":64,"messages":[{"role":"user","content":"caf\u00e9 — naïve \/ \"quoted\""}], "metadata":{"user_id":"user_0f3a"} }"#;
    let end_to_end: &[(&str, &str)] = &[
        ("User-Agent", "claude-cli/2.1.332 (external, cli)"),
        ("x-api-key", "sk-ant-api03-client-key-AbC_123"),
        ("anthropic-version", "2023-06-01"),
        (
            "anthropic-beta",
            "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14",
        ),
        ("X-Claude-Code-Session-Id", "0b7e1b1c-5c2f-4f3e-9d7a-2f1c8e2b9a11"),
        ("x-stainless-retry-count", "0"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("content-length", &body.len().to_string()),
    ];
    let hop_by_hop = [
        "Connection: keep-alive, X-Hop-Secret".to_owned(),
        "X-Hop-Secret: named-by-connection".to_owned(),
        "Keep-Alive: timeout=5".to_owned(),
        "Proxy-Connection: keep-alive".to_owned(),
        format!("Proxy-Authorization: {}", basic("alice", "proxy-password")),
        "TE: trailers".to_owned(),
        "x-tollgate-user: mallory".to_owned(),
    ];
    let mut lines = vec![format!("Host: {API_HOST}")];
    lines.extend(end_to_end.iter().map(|(name, value)| format!("{name}: {value}")));
    lines.extend(hop_by_hop);
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let mut raw = request("POST", "/v1/messages?beta=true", &lines, b"");
    raw.extend_from_slice(body.as_bytes());

    let mut tls = setup.tunnel().await;
    let mut buf = Vec::new();
    let response = send(&mut tls, &raw, &mut buf).await;
    assert_eq!(response.status, 200, "{response:?}");

    let seen = only_request(&setup.stub);
    assert_eq!(seen.path_and_query, "/v1/messages?beta=true");
    assert_eq!(seen.body, body.as_bytes(), "the body byte for byte");
    assert_eq!(seen.header_str("host"), Some(setup.stub.authority()), "Host names the upstream");
    let normalised = |headers: Vec<(String, Vec<u8>)>| {
        let mut headers: Vec<(String, Vec<u8>)> =
            headers.into_iter().map(|(name, value)| (name.to_ascii_lowercase(), value)).collect();
        headers.sort();
        headers
    };
    let arrived =
        normalised(seen.headers.iter().filter(|(name, _)| !name.eq_ignore_ascii_case("host")).cloned().collect());
    let sent =
        normalised(end_to_end.iter().map(|(name, value)| (name.to_string(), value.as_bytes().to_vec())).collect());
    let show = |headers: &[(String, Vec<u8>)]| -> Vec<String> {
        headers.iter().map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v))).collect()
    };
    assert_eq!(show(&arrived), show(&sent), "exactly the end-to-end headers, values byte for byte");
}

/// With an `api_key` on the upstream, the stub gets that key as `x-api-key` and neither of the client's credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_api_key_replaces_the_clients_credentials() {
    let setup = Intercepting::start(Parts { api_key: Some("sk-ant-upstream-key"), ..Parts::default() }).await;
    let body = messages::request_body(MODEL, false);
    let response =
        setup.send(&messages_post(&body, &["Authorization: Bearer sk-ant-oauth", "Connection: close"])).await;
    assert_eq!(response.status, 200, "{response:?}");

    let seen = only_request(&setup.stub);
    let keys: Vec<_> = seen.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("x-api-key")).collect();
    assert_eq!(keys.len(), 1, "{seen:#?}");
    assert_eq!(keys[0].1, b"sk-ant-upstream-key");
    assert_eq!(seen.header("authorization"), None, "{seen:#?}");
    assert_eq!(seen.body, body.as_bytes());
}

/// Upstream errors reach the client unmodified: the 429 (with `retry-after: 7`) and the 529 are, status, headers
/// and body bytes, what the stub answers a client directly; they are not tollgate's refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_pass_through_unmodified() {
    let setup = Intercepting::start(Parts::default()).await;
    let mut tls = setup.tunnel().await;
    let mut buf = Vec::new();
    for (model, status) in [(messages::RATE_LIMITED, 429), (messages::OVERLOADED, 529)] {
        let direct =
            common::exchange(setup.stub.address, &messages::messages_request(API_HOST, model, false, &[])).await;
        let through = send(&mut tls, &messages_post(&messages::request_body(model, false), &[]), &mut buf).await;
        assert_eq!((direct.status, through.status), (status, status), "{through:?}");
        let (direct_id, through_id) = (direct.header("request-id").unwrap(), through.header("request-id").unwrap());
        assert_ne!(direct_id, through_id, "the stub answered both");
        assert_eq!(through.body, direct.body.replace(&direct_id, &through_id), "the error body byte for byte");
        for name in ["content-type", "content-length", "retry-after"] {
            assert_eq!(through.header(name), direct.header(name), "{name}: {through:?}");
        }
        assert_eq!(through.header("x-tollgate-rule"), None, "not a tollgate refusal: {through:?}");
        if status == 429 {
            assert_eq!(through.header("retry-after").as_deref(), Some(messages::RETRY_AFTER), "{through:?}");
        }
    }
    assert_eq!(buf, b"", "nothing more on the tunnel");

    let records = setup.gateway.audit().await;
    let statuses: Vec<_> =
        intercepted(&records).iter().map(|r| (r["status"].as_u64(), r["decision"].clone())).collect();
    assert_eq!(statuses, [(Some(429), json!("allow")), (Some(529), json!("allow"))], "{records:#?}");
    assert!(intercepted(&records).iter().all(|r| r.get("usage").is_none()), "no usage billed: {records:#?}");
}

// ---- 3. Streaming ----

/// An SSE stream is relayed as it comes: the client holds `message_start` while the stub still holds the rest of the
/// stream (so nothing is buffered); after `release()` every event arrives intact, one per chunk, and the whole body
/// equals what the stub sends a client directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_relayed_event_by_event_without_buffering() {
    let setup = Intercepting::start(Parts::default()).await;
    let mut tls = setup.tunnel().await;
    tls.write_all(&messages_post(&messages::request_body(messages::HOLD, true), &["Connection: close"]))
        .await
        .expect("send");
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(end) = common::find(&buf, b"\r\n\r\n") {
            if !chunks(&buf[end + 4..]).chunks.is_empty() {
                break end + 4;
            }
        }
        assert!(read_more(&mut tls, &mut buf).await, "the stream ended early: {:?}", String::from_utf8_lossy(&buf));
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/event-stream"), "{head}");
    let early = chunks(&buf[head_end..]).chunks;
    let early_events = sse_events(std::str::from_utf8(&early.concat()).expect("UTF-8"));
    assert_eq!(names(&early_events), ["message_start"], "only message_start before release()");

    setup.stub.release();
    while read_more(&mut tls, &mut buf).await {}
    let body = chunks(&buf[head_end..]);
    assert!(body.complete.is_some(), "the chunked body ends cleanly: {:?}", String::from_utf8_lossy(&buf));
    let mut events = Vec::new();
    for chunk in &body.chunks {
        let text = std::str::from_utf8(chunk).expect("UTF-8 events");
        let one = sse_events(text);
        assert!(one.len() == 1 && text.ends_with("\n\n"), "one whole event per chunk: {text:?}");
        events.extend(one);
    }
    assert_eq!(names(&events), STREAM_EVENTS);
    assert_eq!(merged_usage(&events), messages::STREAM_USAGE);

    // The same stream straight from the stub (its gate stays open): byte for byte the same events.
    let direct =
        common::exchange(setup.stub.address, &messages::messages_request(API_HOST, messages::HOLD, true, &[])).await;
    let direct_body: Vec<u8> = chunks(direct.body.as_bytes()).chunks.concat();
    assert_eq!(String::from_utf8(body.chunks.concat()).unwrap(), String::from_utf8(direct_body).unwrap());
}

/// Over h2 (curl) a stream is relayed as it comes too: curl prints `message_start` while the stub still holds the
/// rest; after `release()` the whole stream follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_h2_gets_message_start_before_the_rest_is_released() {
    let setup = Intercepting::start(Parts::default()).await;
    let mut child = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--no-buffer", "--max-time", "20"])
        .args(curl_messages(&setup, &messages::request_body(messages::HOLD, true)))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl is installed");
    let mut stdout = child.stdout.take().expect("curl's stdout");
    let mut out = Vec::new();
    assert!(messages::read_until(&mut stdout, &mut out, b"event: message_start").await, "message_start arrives");
    assert!(common::find(&out, b"event: ping").is_none(), "only message_start before release()");

    setup.stub.release();
    let waited = tokio::time::timeout(std::time::Duration::from_secs(20), stdout.read_to_end(&mut out)).await;
    waited.expect("curl ends within 20s").expect("read curl's output");
    assert!(child.wait().await.expect("curl exits").success());
    let text = String::from_utf8(out).expect("UTF-8");
    let (stream, status) = text.rsplit_once('\n').expect("the -w line");
    assert_eq!(status, "200 2", "HTTP/2 inside the tunnel");
    let events = sse_events(stream);
    assert_eq!(names(&events), STREAM_EVENTS);
    assert_eq!(merged_usage(&events), messages::STREAM_USAGE);
}

// ---- 4. Metering ----

/// A JSON message is billed for its `usage` exactly: the audit record's usage and cost, and the token and cost
/// counters (team "-": the anonymous principal has none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_message_is_billed_exactly() {
    let setup = Intercepting::start(Parts::default()).await;
    let response = setup.send(&messages_post(&messages::request_body(MODEL, false), &["Connection: close"])).await;
    assert_eq!(response.status, 200, "{response:?}");

    let records = setup.gateway.audit().await;
    let record = only_intercepted(&records);
    assert_eq!((record["model"].as_str(), record["error"].as_str()), (Some(MODEL), None), "{record:#}");
    assert_billed(&setup.gateway, record, MODEL, "-", messages::JSON_USAGE).await;
}

/// A whole (sized, non-streamed) message is read and settled before its head is answered: head and body reach the
/// client in one TLS record, written after the request's audit record, not as a head followed by the body once
/// the record is written. The client is a rustls connection over a blocking socket, reading one record at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_message_leaves_in_one_tls_record_after_its_audit_record() {
    use std::io::{Read, Write};
    let setup = Intercepting::start(Parts::default()).await;
    let tunnel = connect(setup.gateway.proxy, API_HOST, None).await.into_std().expect("a std socket");
    let config = trusting(&setup.ca_pem(), &[b"http/1.1"]);
    let request = messages_post(&messages::request_body(MODEL, false), &["Connection: close"]);
    let audit_path = setup.gateway.audit_path();
    let (records, plain, audited) = tokio::task::spawn_blocking(move || {
        let mut socket = tunnel;
        socket.set_nonblocking(false).expect("blocking");
        let name = rustls::pki_types::ServerName::try_from(API_HOST).expect("a name");
        let mut tls = rustls::ClientConnection::new(config, name).expect("a client");
        while tls.is_handshaking() {
            tls.complete_io(&mut socket).expect("the handshake");
        }
        tls.writer().write_all(&request).expect("the request");
        while tls.wants_write() {
            tls.write_tls(&mut socket).expect("sent");
        }
        // One TLS record at a time: its 5-byte header, then its body; count those that carry response bytes.
        let (mut records, mut plain, mut audited) = (0, Vec::new(), None);
        loop {
            let mut record = vec![0u8; 5];
            socket.read_exact(&mut record).expect("a record header");
            let length = u16::from_be_bytes([record[3], record[4]]) as usize;
            record.resize(5 + length, 0);
            socket.read_exact(&mut record[5..]).expect("a record body");
            tls.read_tls(&mut record.as_slice()).expect("fed");
            tls.process_new_packets().expect("a valid record");
            let before = plain.len();
            match tls.reader().read_to_end(&mut plain) {
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) => panic!("reading the response: {error}"),
            }
            if plain.len() > before {
                records += 1;
                // The record is in the audit file by the time the first response byte arrives.
                audited.get_or_insert_with(|| std::fs::read_to_string(&audit_path).unwrap_or_default());
            }
            let text = String::from_utf8_lossy(&plain);
            let whole = text.split_once("\r\n\r\n").is_some_and(|(head, body)| {
                let length = head.lines().find_map(|line| {
                    line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>())
                });
                matches!(length, Some(Ok(length)) if body.len() >= length)
            });
            if whole {
                break (records, plain, audited.unwrap_or_default());
            }
        }
    })
    .await
    .expect("the client");
    let text = String::from_utf8_lossy(&plain);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(records, 1, "head and body in one TLS record: {text}");
    let line = audited.lines().find(|line| line.contains("\"kind\":\"intercepted\"") && line.contains("/v1/messages"));
    let record: Value =
        serde_json::from_str(line.expect("the audit record was written before the response")).expect("JSON");
    assert_eq!((record["status"].as_u64(), record["model"].as_str()), (Some(200), Some(MODEL)), "{record:#}");
    assert_billed(&setup.gateway, &record, MODEL, "-", messages::JSON_USAGE).await;
}

/// One-hour cache writes and web searches are priced apart: the stub's message writes 1,000 of its 1,531 cache
/// tokens for an hour and made 3 web searches. With no `cache_write_1h` or `web_search` in the `stub-*` row, the
/// hour costs 2 × input and a search $10 per 1,000; the audit record carries both counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hour_cache_writes_and_web_searches_are_billed_apart() {
    let setup = Intercepting::start(Parts::default()).await;
    let model = messages::SERVER_TOOLS;
    let response = setup.send(&messages_post(&messages::request_body(model, false), &["Connection: close"])).await;
    assert_eq!(response.status, 200, "{response:?}");

    let records = setup.gateway.audit().await;
    let record = only_intercepted(&records);
    let usage = &record["usage"];
    assert_eq!(usage_of(usage), messages::JSON_USAGE, "{record:#}");
    assert_eq!(usage["cache_creation_1h_input_tokens"], messages::ONE_HOUR_CACHE_WRITES, "{record:#}");
    assert_eq!(usage["web_search_requests"], messages::WEB_SEARCHES, "{record:#}");
    let row = PRICES.iter().find(|p| p.model == "stub-*").expect("the stub's row");
    let extra_micro_usd =
        messages::ONE_HOUR_CACHE_WRITES * (2 * row.input - row.cache_write) + messages::WEB_SEARCHES * 10_000;
    let expected = expected_cost(model, messages::JSON_USAGE) + extra_micro_usd as f64 / 1e6;
    assert_usd(record["cost_usd"].as_f64().expect("a cost"), expected, "cost_usd");
}

/// A stream is billed for its usage merged field by field (`message_start`, then `message_delta`'s last non-null
/// values), not summed and not only the last event's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_billed_for_its_usage_merged_field_by_field() {
    let setup = Intercepting::start(Parts::default()).await;
    let response = setup.send(&messages_post(&messages::request_body(MODEL, true), &["Connection: close"])).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(merged_usage(&sse_events(&response.body)), messages::STREAM_USAGE);

    let records = setup.gateway.audit().await;
    let record = only_intercepted(&records);
    assert_eq!(record["error"], Value::Null, "{record:#}");
    assert_billed(&setup.gateway, record, MODEL, "-", messages::STREAM_USAGE).await;
}

/// A stream the upstream cuts (a reset before `message_stop`) reaches the client as a cut body, not a clean end,
/// and is billed for the usage seen up to the cut; the record says it was cut and billed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_by_the_upstream_is_billed_for_what_was_seen() {
    let setup = Intercepting::start(Parts::default()).await;
    let mut tls = setup.tunnel().await;
    tls.write_all(&messages_post(&messages::request_body(messages::CUT, true), &["Connection: close"]))
        .await
        .expect("send");
    let mut buf = Vec::new();
    while read_more(&mut tls, &mut buf).await {}
    let head_end = common::find(&buf, b"\r\n\r\n").expect("a response head") + 4;
    assert!(buf.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&buf));
    let body = chunks(&buf[head_end..]);
    assert_eq!(body.complete, None, "the client must see the cut: {:?}", String::from_utf8_lossy(&buf));
    let events = sse_events(std::str::from_utf8(&body.chunks.concat()).unwrap());
    assert_eq!(merged_usage(&events), messages::CUT_USAGE, "the client saw up to the message_delta");

    let records = setup.gateway.audit().await;
    let record = only_intercepted(&records);
    let error = record["error"].as_str().unwrap_or_else(|| panic!("an error: {record:#}"));
    assert!(error.contains("cut by the upstream") && error.contains("billed"), "{record:#}");
    assert_billed(&setup.gateway, record, messages::CUT, "-", messages::CUT_USAGE).await;
}

/// An `event: error` after a 200 ends the stream; it is billed for `message_start`'s usage and the record names the
/// upstream's error type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_after_200_is_billed_for_message_start() {
    let setup = Intercepting::start(Parts::default()).await;
    let body = messages::request_body(messages::ERROR_AFTER_200, true);
    let response = setup.send(&messages_post(&body, &["Connection: close"])).await;
    assert_eq!(response.status, 200, "{response:?}");
    let events = sse_events(&response.body);
    assert_eq!(names(&events), ["message_start", "error"]);
    assert_eq!(events[1].1["error"]["type"], "overloaded_error");

    let records = setup.gateway.audit().await;
    let record = only_intercepted(&records);
    let error = record["error"].as_str().unwrap_or_else(|| panic!("an error: {record:#}"));
    assert!(error.contains("overloaded_error"), "{record:#}");
    assert_billed(&setup.gateway, record, messages::ERROR_AFTER_200, "-", messages::ERROR_AFTER_200_USAGE).await;
}

/// A client that goes away after `message_start` cancels the upstream request (the stub sees its response dropped),
/// and the request is billed for `message_start`'s usage, with a record that says the client cut it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_upstream_and_is_billed_for_what_was_seen() {
    let setup = Intercepting::start(Parts::default()).await;
    let mut tls = setup.tunnel().await;
    tls.write_all(&messages_post(&messages::request_body(messages::SLOW_CANCEL, true), &[])).await.expect("send");
    let mut buf = Vec::new();
    assert!(messages::read_until(&mut tls, &mut buf, b"message_start").await, "message_start arrives");
    drop(tls);

    assert!(setup.stub.wait_cancelled().await, "the cancellation reached the upstream");
    let records = audit_until(&setup.gateway, |r| r["kind"] == "intercepted").await;
    let record = only_intercepted(&records);
    let error = record["error"].as_str().unwrap_or_else(|| panic!("an error: {record:#}"));
    assert!(error.contains("cut by the client") && error.contains("billed"), "{record:#}");
    assert_billed(&setup.gateway, record, messages::SLOW_CANCEL, "-", messages::STREAM_START_USAGE).await;
}

// ---- 5. Model policy ----

const PASSWORD: &str = "s3cret-pass";

/// User alice in team backend, which may use `claude-sonnet-*` only.
fn backend_team() -> String {
    format!(
        "auth:\n  anonymous: deny\n  users:\n    - {{name: alice, password_hash: \"{}\", teams: [backend]}}\n\
         teams:\n  backend: {{models: [\"claude-sonnet-*\"]}}\n",
        hash(PASSWORD)
    )
}

/// A model outside the team's `models` globs is refused inside the tunnel: 403 `permission_error` naming the model
/// and the rule, `x-tollgate-rule`, nothing sent upstream, a deny in the audit record; an allowed model passes and
/// is billed to the team.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_the_team_may_not_use_is_refused_inside_the_tunnel() {
    let auth = backend_team();
    let setup = Intercepting::start(Parts { auth: "", extra: &auth, ..Parts::default() }).await;
    let credentials = basic("alice", PASSWORD);
    let mut tls = setup.tunnel_as(Some(&credentials)).await;
    let mut buf = Vec::new();

    let denied = send(&mut tls, &messages_post(&messages::request_body("claude-opus-4-1", false), &[]), &mut buf).await;
    let message = assert_api_error(&denied, 403, "permission_error", Some("teams.backend.models"));
    assert!(message.contains("\"claude-opus-4-1\"") && message.contains("teams.backend.models"), "{message}");
    assert!(setup.stub.requests().is_empty(), "nothing reached the stub");

    let allowed = send(&mut tls, &messages_post(&messages::request_body(MODEL, false), &[]), &mut buf).await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(only_request(&setup.stub).json()["model"], MODEL);

    let records = setup.gateway.audit().await;
    let found = intercepted(&records);
    assert_eq!(found.len(), 2, "{records:#?}");
    let (deny, allow) = (found[0], found[1]);
    assert_eq!((deny["decision"].as_str(), deny["rule"].as_str()), (Some("deny"), Some("teams.backend.models")));
    assert_eq!(
        (deny["user"].as_str(), deny["team"].as_str(), deny["status"].as_u64()),
        (Some("alice"), Some("backend"), Some(403))
    );
    assert_eq!((allow["decision"].as_str(), allow["status"].as_u64()), (Some("allow"), Some(200)), "{allow:#}");
    assert_billed(&setup.gateway, allow, MODEL, "backend", messages::JSON_USAGE).await;
    assert_eq!(setup.metric(&requests_sample("deny", "model_denied")).await, 1.0);
}

/// A CONNECT to an intercepted host that policy denies the user is still opened, so that the refusal reaches the
/// developer: each request inside gets 403 `permission_error` naming the team's deny rule (Claude Code shows it
/// and does not retry), and nothing reaches the stub. Only identity is checked on the CONNECT: without
/// credentials it is still a 407.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_refusal_is_answered_inside_the_tunnel() {
    let auth = format!(
        "auth:\n  anonymous: deny\n  users:\n    - {{name: alice, password_hash: \"{}\", teams: [backend]}}\n\
         teams:\n  backend: {{deny: [\"{API_HOST}\"]}}\n",
        hash(PASSWORD)
    );
    let mut setup = Intercepting::start(Parts { auth: "", extra: &auth, ..Parts::default() }).await;
    let mut tls = setup.tunnel_as(Some(&basic("alice", PASSWORD))).await;
    let mut buf = Vec::new();
    for request in [messages_post(&messages::request_body(MODEL, false), &[]), get("/api/claude_code/settings", &[])] {
        let refused = send(&mut tls, &request, &mut buf).await;
        let message = assert_api_error(&refused, 403, "permission_error", Some("teams.backend.deny[0]"));
        assert!(message.contains(API_HOST) && message.contains("teams.backend.deny[0]"), "{message}");
    }
    assert!(setup.stub.requests().is_empty(), "nothing reached the stub");
    let unauthenticated =
        common::exchange(setup.gateway.proxy, connect_request(&format!("{API_HOST}:443"), &[]).as_bytes()).await;
    assert_eq!(unauthenticated.status, 407, "{unauthenticated:?}");

    drop(tls);
    let records = setup.gateway.shutdown_and_audit().await;
    let inside: Vec<_> = intercepted(&records).iter().map(|r| (r["decision"].clone(), r["status"].clone())).collect();
    assert_eq!(inside, [(json!("deny"), json!(403)), (json!("deny"), json!(403))], "{records:#?}");
    let connects: Vec<_> = records.iter().filter(|r| r["kind"] == "connect").map(|r| r["status"].clone()).collect();
    assert_eq!(connects, [json!(407), json!(200)], "{records:#?}");
}

/// Rate limits count the requests inside an intercepted tunnel, not the tunnel: with `user.rpm: 1` the first
/// request passes, the next gets 429 `rate_limit_error` with `retry-after` inside the tunnel, and a new tunnel still
/// opens (a refused CONNECT would be retried by Claude Code for minutes) and answers its request the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_is_answered_inside_the_tunnel() {
    let setup = Intercepting::start(Parts { extra: "limits: {user: {rpm: 1}}\n", ..Parts::default() }).await;
    let settings = get("/api/claude_code/settings", &[]);
    let mut tls = setup.tunnel().await;
    let mut buf = Vec::new();
    assert_eq!(send(&mut tls, &settings, &mut buf).await.status, 200, "the first request");
    let limited = send(&mut tls, &settings, &mut buf).await;
    assert_api_error(&limited, 429, "rate_limit_error", Some("limits.user"));
    assert!(limited.header("retry-after").is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s >= 1)), "{limited:?}");

    let mut second = setup.tunnel().await;
    let mut second_buf = Vec::new();
    assert_api_error(
        &send(&mut second, &settings, &mut second_buf).await,
        429,
        "rate_limit_error",
        Some("limits.user"),
    );
    assert_eq!(setup.stub.requests().len(), 1, "only the first request reached the stub");
}

/// A message batch names a model per request, and each must be allowed: a batch with one model outside the team's
/// globs is refused with 403 naming that model, a batch of allowed models reaches the stub and costs nothing (its
/// requests are billed when the batch runs, not here), and a batch whose models cannot be read is refused as naming
/// none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_model_of_a_message_batch_must_be_allowed() {
    let auth = backend_team();
    let setup = Intercepting::start(Parts { auth: "", extra: &auth, ..Parts::default() }).await;
    let mut tls = setup.tunnel_as(Some(&basic("alice", PASSWORD))).await;
    let mut buf = Vec::new();
    let batch = |models: &[&str]| {
        let requests: Vec<Value> = models
            .iter()
            .enumerate()
            .map(|(i, model)| {
                json!({"custom_id": format!("r{i}"), "params": {"model": model, "max_tokens": 8,
                                     "messages": [{"role": "user", "content": "hi"}]}})
            })
            .collect();
        post("/v1/messages/batches", &json!({ "requests": requests }).to_string(), &[])
    };

    let denied = send(&mut tls, &batch(&[MODEL, "claude-opus-4-1"]), &mut buf).await;
    let message = assert_api_error(&denied, 403, "permission_error", Some("teams.backend.models"));
    assert!(message.contains("\"claude-opus-4-1\""), "{message}");
    let unreadable =
        r#"{"requests":[{"custom_id":"r0","params":{"model":"claude-sonnet-4-5","model":"claude-opus-4-1"}}]}"#;
    let missing = send(&mut tls, &post("/v1/messages/batches", unreadable, &[]), &mut buf).await;
    assert_api_error(&missing, 400, "invalid_request_error", Some("teams.backend.models"));
    assert!(setup.stub.requests().is_empty(), "nothing reached the stub");

    let allowed = send(&mut tls, &batch(&[MODEL, "claude-sonnet-4-0"]), &mut buf).await;
    assert_eq!((allowed.status, allowed.json()["type"].as_str()), (200, Some("message_batch")), "{allowed:?}");
    assert_eq!(only_request(&setup.stub).path_and_query, "/v1/messages/batches");
    let records = setup.gateway.audit().await;
    let found = intercepted(&records);
    assert_eq!(found.len(), 3, "{records:#?}");
    let served = found[2];
    assert_eq!((served["decision"].as_str(), served["status"].as_u64()), (Some("allow"), Some(200)), "{served:#}");
    assert!(served["usage"].is_null() && served["error"].is_null(), "free, and no error: {served:#}");
}

/// The Python SDK, configured only by HTTPS_PROXY (with credentials) and SSL_CERT_FILE (the interception CA), goes
/// through the tunnel: an allowed model's message and stream carry the stub's usage, a denied model fails with
/// the 403 `permission_error` the SDK reports, and each request is audited for alice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_is_intercepted_metered_and_refused() {
    let auth = backend_team();
    let setup = Intercepting::start(Parts { auth: "", extra: &auth, ..Parts::default() }).await;
    let proxy = format!("http://alice:{PASSWORD}@{}", setup.gateway.proxy);
    let ca = setup.ca_pem();
    let env = [("HTTPS_PROXY", proxy.as_str()), ("SSL_CERT_FILE", ca.to_str().expect("path"))];

    let created = anthropic_client("create", MODEL, &env).await;
    assert_eq!(created["ok"], true, "{created}");
    assert_eq!(usage_of(&created["usage"]), messages::JSON_USAGE, "{created}");
    let streamed = anthropic_client("stream", MODEL, &env).await;
    assert_eq!(streamed["ok"], true, "{streamed}");
    assert_eq!(usage_of(&streamed["usage"]), messages::STREAM_USAGE, "{streamed}");
    let denied = anthropic_client("create", "claude-opus-4-1", &env).await;
    assert_eq!(denied["ok"], false, "{denied}");
    assert_eq!(
        (denied["error"]["status"].as_u64(), denied["error"]["type"].as_str()),
        (Some(403), Some("permission_error")),
        "{denied}"
    );
    assert!(denied["error"]["message"].as_str().unwrap_or("").contains("teams.backend.models"), "{denied}");

    assert_eq!(setup.stub.requests().len(), 2, "the denied request never reached the stub");
    let records = setup.gateway.audit().await;
    let found = intercepted(&records);
    let seen: Vec<_> = found.iter().map(|r| (r["user"].as_str(), r["status"].as_u64(), r["usage"].clone())).collect();
    assert_eq!(
        seen,
        [
            (Some("alice"), Some(200), usage_json(messages::JSON_USAGE)),
            (Some("alice"), Some(200), usage_json(messages::STREAM_USAGE)),
            (Some("alice"), Some(403), Value::Null),
        ],
        "{records:#?}"
    );
}

// ---- 6. DLP ----

/// Every built-in detector and a custom one, with a realistic sample of what each catches; the second string is the
/// secret part that must never be repeated.
const SAMPLES: &[(&str, &str, &str)] = &[
    (
        "private_key",
        "deploy with this key:\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\nQyNTUxOQAAACDx7pJ0fQ2bq1m8Xr4aZk3Vt9Yc6Hn2Lw5Ue7Ps1Gd0qAAAAJg7vN2iO7zd\n-----END OPENSSH PRIVATE KEY-----\n",
        "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ",
    ),
    ("aws_access_key", "why does boto fail? aws_access_key_id = AKIAZ7VQ3MBX5LRT2KPN", "AKIAZ7VQ3MBX5LRT2KPN"),
    ("github_token", "git push fails with GITHUB_TOKEN=ghp_8Xq2LmZ4vN7pR1sT9wY3bC6dF0gH5jK2aE4u", "ghp_8Xq2LmZ4vN7pR1sT9wY3bC6dF0gH5jK2aE4u"),
    ("credit_card", "refund the order paid with card 4111111111111111, exp 12/29", "4111111111111111"),
    ("ssn", "customer record: name Jane Roe, SSN 536-22-8491, DOB 1984-03-02", "536-22-8491"),
    ("project-falcon", "summarise the FALCON-2741 design doc", "FALCON-2741"),
];

const DLP_ALL: &str = "dlp:\n  action: ACTION\n  detectors: [private_key, aws_access_key, github_token, credit_card, ssn]\n  custom: [{name: project-falcon, regex: \"FALCON-[0-9]{4}\"}]\n";

fn message_with(text: &str) -> String {
    json!({"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": text}]}).to_string()
}

/// With `action: block`, each detector refuses its sample: 403 `permission_error` naming the detector (rule
/// `dlp.<name>`), nothing sent upstream, and the matched text appears nowhere (response, audit file, logs). A
/// 16-digit number that fails the Luhn check passes. `tollgate_dlp_blocks_total` counts the block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_dlp_detector_blocks_its_sample_without_repeating_it() {
    let logs = logs();
    let dlp = DLP_ALL.replace("ACTION", "block");
    let setup = Intercepting::start(Parts { extra: &dlp, ..Parts::default() }).await;

    for (detector, text, secret) in SAMPLES {
        let response = setup.send(&messages_post(&message_with(text), &["Connection: close"])).await;
        let rule = format!("dlp.{detector}");
        let message = assert_api_error(&response, 403, "permission_error", Some(&rule));
        assert!(message.contains(&format!("{detector} detector")), "{detector}: {message}");
        assert!(!response.head.contains(secret) && !response.body.contains(secret), "{detector}: {response:?}");
    }
    assert!(setup.stub.requests().is_empty(), "no blocked request reached the stub");

    let near_miss = message_with("the order id is 4111111111111112, please look it up");
    let response = setup.send(&messages_post(&near_miss, &["Connection: close"])).await;
    assert_eq!(response.status, 200, "a non-Luhn number is not a card: {response:?}");
    assert_eq!(only_request(&setup.stub).body, near_miss.as_bytes());

    let records = setup.gateway.audit().await;
    let found = intercepted(&records);
    assert_eq!(found.len(), SAMPLES.len() + 1, "{records:#?}");
    for ((detector, _, _), record) in SAMPLES.iter().zip(&found) {
        assert_eq!((record["decision"].as_str(), record["status"].as_u64()), (Some("deny"), Some(403)), "{record:#}");
        assert_eq!(record["rule"].as_str(), Some(format!("dlp.{detector}").as_str()), "{record:#}");
        assert_eq!(record["dlp"], json!([detector]), "{record:#}");
    }
    assert_eq!(found[SAMPLES.len()].get("dlp"), None, "the near miss matched nothing");
    let audit_text = std::fs::read_to_string(setup.gateway.audit_path()).expect("audit file");
    let log_text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(log_text.contains("dlp_blocked") || log_text.contains("DLP"), "the logs saw the blocks: {log_text}");
    for (detector, _, secret) in SAMPLES {
        assert!(!audit_text.contains(secret), "{detector}'s match is in the audit file");
        assert!(!log_text.contains(secret), "{detector}'s match is in the logs");
    }
    assert_eq!(setup.metric("tollgate_dlp_blocks_total{detector=\"credit_card\"}").await, 1.0);
    assert_eq!(setup.metric(&requests_sample("deny", "dlp_blocked")).await, SAMPLES.len() as f64);
}

/// JSON-escape `text` as a hostile client would: every letter and digit as `\uXXXX`, every `/` as `\/`; the JSON
/// means the same text, so the model reads the secret.
fn escaped_message(text: &str) -> String {
    let mut escaped = String::new();
    for c in text.chars() {
        match c {
            c if c.is_ascii_alphanumeric() => escaped.push_str(&format!("\\u{:04x}", c as u32)),
            '/' => escaped.push_str("\\/"),
            '\n' => escaped.push_str("\\n"),
            '"' => escaped.push_str("\\\""),
            c => escaped.push(c),
        }
    }
    format!(r#"{{"model":"{MODEL}","max_tokens":64,"messages":[{{"role":"user","content":"{escaped}"}}]}}"#)
}

/// DLP reads what the model reads: each sample spelled with JSON escapes (every letter and digit a `\uXXXX`) is
/// blocked by its detector as plainly spelled, and reaches nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlp_reads_the_json_decoded_text() {
    let dlp = DLP_ALL.replace("ACTION", "block");
    let setup = Intercepting::start(Parts { extra: &dlp, ..Parts::default() }).await;
    for (detector, text, secret) in SAMPLES {
        let body = escaped_message(text);
        assert!(!body.contains(secret), "{detector}: the raw body must not hold the secret as written");
        let decoded: Value = serde_json::from_str(&body).expect("valid JSON");
        assert_eq!(decoded["messages"][0]["content"], *text, "{detector}: the JSON means the sample");
        let response = setup.send(&messages_post(&body, &["Connection: close"])).await;
        assert_api_error(&response, 403, "permission_error", Some(&format!("dlp.{detector}")));
    }
    assert!(setup.stub.requests().is_empty(), "no escaped secret reached the stub");
}

/// DLP reads every body, not only the metered paths': a secret in a telemetry batch is blocked like one in a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlp_blocks_a_secret_on_a_path_that_is_not_metered() {
    let dlp = DLP_ALL.replace("ACTION", "block");
    let setup = Intercepting::start(Parts { extra: &dlp, ..Parts::default() }).await;
    let body =
        json!({"events": [{"event_name": "tool_use", "cwd": "/srv", "env": "AWS_ACCESS_KEY_ID=AKIAZ7VQ3MBX5LRT2KPN"}]});
    let response = setup.send(&post("/api/event_logging/batch", &body.to_string(), &["Connection: close"])).await;
    assert_api_error(&response, 403, "permission_error", Some("dlp.aws_access_key"));
    assert!(setup.stub.requests().is_empty(), "nothing reached the stub");
}

/// With `action: log`, a request with matches is forwarded byte-exact and its record lists the detectors that
/// matched (by name, in config order, not the text); matches are counted, blocks are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlp_log_forwards_and_records_the_detectors() {
    let dlp = DLP_ALL.replace("ACTION", "log");
    let setup = Intercepting::start(Parts { extra: &dlp, ..Parts::default() }).await;
    let body = message_with("FALCON-2741 invoice: charge 4111111111111111 again");
    let response = setup.send(&messages_post(&body, &["Connection: close"])).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(only_request(&setup.stub).body, body.as_bytes());

    let records = setup.gateway.audit().await;
    let record = only_intercepted(&records);
    assert_eq!(record["decision"], "allow", "{record:#}");
    assert_eq!(record["dlp"], json!(["credit_card", "project-falcon"]), "{record:#}");
    let audit_text = std::fs::read_to_string(setup.gateway.audit_path()).expect("audit file");
    assert!(!audit_text.contains("4111111111111111") && !audit_text.contains("FALCON-2741"), "{audit_text}");
    assert_eq!(setup.metric("tollgate_dlp_matches_total{detector=\"credit_card\"}").await, 1.0);
    assert_eq!(setup.metric("tollgate_dlp_blocks_total{detector=\"credit_card\"}").await, 0.0);
}

// ---- 7. Paths, size, host ----

/// With the default path rules, Claude Code's settings and policy_limits calls reach the upstream; a path outside
/// `intercept.paths.allow` is refused with 403 naming that rule, and never sent upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_paths_pass_by_default_and_others_are_refused() {
    let setup = Intercepting::start(Parts::default()).await;
    let mut tls = setup.tunnel().await;
    let mut buf = Vec::new();
    for path in ["/api/claude_code/settings", "/api/claude_code/policy_limits"] {
        let response = send(&mut tls, &get(path, &[]), &mut buf).await;
        assert_eq!((response.status, response.body.as_str()), (200, "{}"), "{path}: {response:?}");
    }
    let refused = send(&mut tls, &get("/internal/admin", &[]), &mut buf).await;
    let message = assert_api_error(&refused, 403, "permission_error", Some("intercept.paths.allow"));
    assert!(message.contains("/internal/admin") && message.contains("intercept.paths.allow"), "{message}");

    let paths: Vec<_> = setup.stub.requests().into_iter().map(|seen| seen.path_and_query).collect();
    assert_eq!(paths, ["/api/claude_code/settings", "/api/claude_code/policy_limits"]);
    assert_eq!(setup.metric(&requests_sample("deny", "path_denied")).await, 1.0);
}

/// A `paths.deny` glob wins over the allow list: 403 with rule `intercept.paths.deny[0]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_glob_wins_over_the_allow_list() {
    let paths = ["paths: {allow: [\"/v1/*\", \"/api/*\"], deny: [\"/api/event_logging/*\"]}"];
    let setup = Intercepting::start(Parts { intercept: &paths, ..Parts::default() }).await;
    let refused = setup.send(&get("/api/event_logging/batch", &["Connection: close"])).await;
    assert_api_error(&refused, 403, "permission_error", Some("intercept.paths.deny[0]"));
    let allowed = setup.send(&get("/api/claude_code/settings", &["Connection: close"])).await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    let paths: Vec<_> = setup.stub.requests().into_iter().map(|seen| seen.path_and_query).collect();
    assert_eq!(paths, ["/api/claude_code/settings"]);
}

/// A body over `max_body` is refused with 413 `request_too_large`, whether its Content-Length says so or a chunked
/// body grows past it; a body under the limit passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_body_is_refused_with_413() {
    let setup = Intercepting::start(Parts { intercept: &["max_body: 1KiB"], ..Parts::default() }).await;
    let big = message_with(&"a".repeat(1100));
    let declared = setup.send(&messages_post(&big, &["Connection: close"])).await;
    let message = assert_api_error(&declared, 413, "request_too_large", None);
    assert!(message.contains("intercept.max_body"), "{message}");

    let chunked_body = format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len());
    let headers = [
        "Host: api.anthropic.com",
        "content-type: application/json",
        "Transfer-Encoding: chunked",
        "Connection: close",
    ];
    let mut raw = request("POST", "/v1/messages", &headers, b"");
    raw.extend_from_slice(chunked_body.as_bytes());
    let chunked = setup.send(&raw).await;
    assert_api_error(&chunked, 413, "request_too_large", None);
    assert!(setup.stub.requests().is_empty(), "nothing reached the stub");

    let small = message_with(&"a".repeat(900));
    assert!(small.len() <= 1024);
    let passed = setup.send(&messages_post(&small, &["Connection: close"])).await;
    assert_eq!(passed.status, 200, "{passed:?}");
    // Counted by reason, whatever decision label tollgate gives an oversized body.
    let too_large = setup.metric(&requests_sample("error", "request_too_large")).await
        + setup.metric(&requests_sample("deny", "request_too_large")).await;
    assert_eq!(too_large, 2.0);
}

/// A concurrency cap counts requests in flight, not the tunnels a client keeps open for them: with
/// `user.concurrent: 1`, two open tunnels each carry a request in turn; while a stream in one is held by the stub,
/// a request in the other is refused with 429 naming `limits.user` (and never reaches the stub); once the stream
/// has ended the slot is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_cap_counts_requests_in_flight_not_open_tunnels() {
    let setup = Intercepting::start(Parts { extra: "limits: {user: {concurrent: 1}}\n", ..Parts::default() }).await;
    let (mut first, mut second) = (setup.tunnel().await, setup.tunnel().await);
    let (mut first_buf, mut second_buf) = (Vec::new(), Vec::new());
    let settings = get("/api/claude_code/settings", &[]);
    assert_eq!(send(&mut first, &settings, &mut first_buf).await.status, 200, "a request in the first tunnel");
    assert_eq!(send(&mut second, &settings, &mut second_buf).await.status, 200, "a request in the second tunnel");

    let held = messages_post(&messages::request_body(messages::HOLD, true), &["Connection: close"]);
    first.write_all(&held).await.expect("send the held stream");
    assert!(messages::read_until(&mut first, &mut first_buf, b"event: message_start").await, "the stream starts");
    let refused = send(&mut second, &settings, &mut second_buf).await;
    let message = assert_api_error(&refused, 429, "rate_limit_error", Some("limits.user"));
    assert!(message.contains("at most 1"), "{message}");

    setup.stub.release();
    while read_more(&mut first, &mut first_buf).await {}
    assert!(common::find(&first_buf, b"event: message_stop").is_some(), "the held stream ended");
    let after = send(&mut second, &settings, &mut second_buf).await;
    assert_eq!(after.status, 200, "the slot is free once the stream has ended: {after:?}");
    let paths: Vec<_> = setup.stub.requests().into_iter().map(|seen| seen.path_and_query).collect();
    let expected =
        ["/api/claude_code/settings", "/api/claude_code/settings", "/v1/messages", "/api/claude_code/settings"];
    assert_eq!(paths, expected, "the refused request never reached the stub");
}

/// Inside the tunnel for api.anthropic.com, a request naming another host is refused with 421 and not forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_another_host_inside_the_tunnel_is_misdirected() {
    let setup = Intercepting::start(Parts::default()).await;
    let raw = request("GET", "/api/claude_code/settings", &["Host: other.example", "Connection: close"], b"");
    let response = setup.send(&raw).await;
    let message = assert_api_error(&response, 421, "invalid_request_error", None);
    assert!(message.contains("other.example"), "{message}");
    assert!(setup.stub.requests().is_empty(), "nothing reached the stub");
    let records = setup.gateway.audit().await;
    assert_eq!(only_intercepted(&records)["status"], 421);
}

/// A malformed request inside the tunnel (a bare LF and a space in the header name) gets a 400 from the HTTP
/// layer, never reaches the stub, and is counted in `tollgate_client_errors_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_inside_the_tunnel_is_refused_and_counted() {
    let setup = Intercepting::start(Parts::default()).await;
    let sample = "tollgate_client_errors_total{listener=\"proxy\",reason=\"http_error\"}";
    assert_eq!(setup.metric(sample).await, 0.0);
    let mut tls = setup.tunnel().await;
    let mut buf = Vec::new();
    let response =
        send(&mut tls, b"POST /v1/messages HTTP/1.1\nHost: api.anthropic.com\r\nBad Header: x\r\n\r\n", &mut buf).await;
    assert_eq!(response.status, 400, "{response:?}");
    assert!(setup.stub.requests().is_empty(), "nothing reached the stub");
    drop(tls);
    // The connection's end is counted once the tunnel closes; the CONNECT's record follows it.
    audit_until(&setup.gateway, |record| record["kind"] == "connect").await;
    assert_eq!(setup.metric(sample).await, 1.0);
}

// ---- 8. Hosts that are not intercepted ----

/// A CONNECT to an allowed host that is not intercepted is spliced: the client's TLS handshake is with the origin
/// itself (it sees the origin's certificate, verified against the origin's CA, not tollgate's), no leaf is
/// minted, and a non-TLS stream passes byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_is_not_intercepted_is_spliced_untouched() {
    let pki = Pki::new();
    let origin = TlsOrigin::start(&pki.server, None).await;
    let echo = Echo::start().await;
    let parts = Parts { allow: &["localhost", "127.0.0.1"], allow_private: &["127.0.0.0/8"], ..Parts::default() };
    let mut setup = Intercepting::start(parts).await;

    let tcp = connect(setup.gateway.proxy, &format!("localhost:{}", origin.address.port()), None).await;
    let mut tls = handshake(tcp, "localhost", pki.client_config(None)).await.expect("the origin's own handshake");
    let presented = tls.get_ref().1.peer_certificates().expect("a certificate")[0].clone();
    assert_eq!(presented, pki.server.der, "the origin's certificate, not a minted one");
    let response =
        request_until_closed(&mut tls, b"GET /spliced HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("an answer");
    assert_eq!((response.status, response.body.as_str()), (200, "tls origin saw /spliced"));
    assert!(origin.next_connection().await.handshake.is_ok());

    let mut raw = connect(setup.gateway.proxy, &echo.address.to_string(), None).await;
    let bytes: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    raw.write_all(&bytes).await.expect("write");
    let mut back = vec![0u8; bytes.len()];
    raw.read_exact(&mut back).await.expect("echoed");
    assert_eq!(back, bytes);
    drop(raw);
    drop(tls);

    assert_eq!(setup.metric(MINTED).await, 0.0, "no leaf was minted");
    let records = setup.gateway.shutdown_and_audit().await;
    assert!(intercepted(&records).is_empty(), "{records:#?}");
    let mut tunnels: Vec<_> = records.iter().map(|r| (r["kind"].clone(), r["host"].clone())).collect();
    tunnels.sort_by_key(|tunnel| tunnel.1.to_string());
    assert_eq!(tunnels, [(json!("connect"), json!("127.0.0.1")), (json!("connect"), json!("localhost"))]);
    let echo_record = records.iter().find(|r| r["host"] == "127.0.0.1").expect("the echo tunnel's record");
    assert_eq!(echo_record["upstream"], echo.address.to_string(), "{echo_record:#}");
    assert_eq!(echo_record["bytes_up"].as_u64(), Some(bytes.len() as u64), "{echo_record:#}");
    assert_eq!(*echo.received.lock().unwrap(), bytes);
}
