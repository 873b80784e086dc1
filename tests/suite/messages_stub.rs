//! The Messages API stub and the Python SDK client, without the gateway: each scenario behaves as documented in
//! `tests/common/messages.rs` (raw sockets, curl, rustls), and the real `anthropic` SDK talks to the stub directly,
//! through an HTTPS proxy named by `HTTPS_PROXY`, and trusts exactly the CA in `SSL_CERT_FILE`.

use crate::common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::messages::{
    self, anthropic_client, chunks, merged_usage, messages_request, read_to_end, read_until, sse_events, usage_of, End,
    MessagesStub, Seen, STREAM_EVENTS,
};
use common::pki::Pki;
use common::tls::parse_response;
use common::{exchange, next_head, Response};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(name, _)| name.as_str()).collect()
}

fn text(events: &[(String, Value)]) -> String {
    events.iter().filter_map(|(_, data)| data["delta"]["text"].as_str()).collect()
}

/// Sends `request` and reads until the stub closes or resets the connection: the raw bytes and how it ended.
async fn raw_exchange(address: SocketAddr, request: &[u8]) -> (Vec<u8>, End) {
    let mut stream = TcpStream::connect(address).await.expect("connect to the stub");
    stream.write_all(request).await.expect("send the request");
    let mut received = Vec::new();
    let end = read_to_end(&mut stream, &mut received).await;
    (received, end)
}

/// The events of a chunked SSE response, asserting each chunk holds exactly one whole event.
fn events_one_per_chunk(response: &Response) -> (Vec<(String, Value)>, bool) {
    let split = chunks(response.body.as_bytes());
    let mut events = Vec::new();
    for chunk in &split.chunks {
        let text = std::str::from_utf8(chunk).expect("UTF-8 events");
        let one = sse_events(text);
        assert_eq!(one.len(), 1, "each chunk should hold one whole event: {text:?} in {response:?}");
        assert!(text.ends_with("\n\n"), "an event ends its chunk: {text:?}");
        events.extend(one);
    }
    (events, split.complete.is_some())
}

fn only_request(stub: &MessagesStub) -> Seen {
    let requests = stub.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    requests.into_iter().next().expect("one request")
}

#[tokio::test]
async fn json_message_and_every_request_recorded_byte_exact_with_header_case() {
    let stub = MessagesStub::start().await;
    let body = messages::request_body("claude-opus-4-1", false);
    // The first request has a chunked body, the second a Content-Length one, on the same connection: the stub must
    // find each head after the other's body.
    let first = format!(
        "POST /v1/messages?beta=true HTTP/1.1\r\nHost: api.anthropic.com\r\nX-Api-Key: sk-ant-one\r\n\
         anthropic-version: 2023-06-01\r\nX-Claude-Code-Session-Id: 5e55-10n\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        5,
        &body[..5],
        body.len() - 5,
        &body[5..]
    );
    let (mut stream, response) = common::exchange_keep(stub.address, first.as_bytes()).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("content-type").as_deref(), Some("application/json"));
    assert!(response.header("request-id").is_some_and(|id| id.starts_with("req_stub_")), "{response:?}");
    let message = response.json();
    assert_eq!(message["type"], "message");
    assert_eq!(message["id"], messages::MESSAGE_ID);
    assert_eq!(message["model"], "claude-opus-4-1", "the model is echoed");
    assert_eq!(message["content"][0]["text"], messages::JSON_TEXT);
    assert_eq!(message["stop_reason"], "end_turn");
    assert_eq!(usage_of(&message["usage"]), messages::JSON_USAGE);

    let second = messages_request("api.anthropic.com", messages::MODEL, false, &["ANTHROPIC-BETA: oauth-2025-04-20"]);
    stream.write_all(&second).await.expect("second request");
    let response = common::read_response(&mut stream).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json()["model"], messages::MODEL);

    let requests = stub.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    let (one, two) = (&requests[0], &requests[1]);
    assert_eq!((one.method.as_str(), one.path_and_query.as_str()), ("POST", "/v1/messages?beta=true"));
    assert_eq!(one.body, body.as_bytes(), "the body is recorded de-chunked and byte-exact");
    assert_eq!(one.header_name("x-claude-code-session-id"), Some("X-Claude-Code-Session-Id"), "{one:?}");
    assert_eq!(one.header_str("x-claude-code-session-id").as_deref(), Some("5e55-10n"));
    assert_eq!(one.header_name("x-api-key"), Some("X-Api-Key"));
    assert_eq!(one.header_str("X-API-KEY").as_deref(), Some("sk-ant-one"));
    let order: Vec<&str> = one.headers.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(order, ["Host", "X-Api-Key", "anthropic-version", "X-Claude-Code-Session-Id", "Transfer-Encoding"]);
    assert_eq!(two.header_name("anthropic-beta"), Some("ANTHROPIC-BETA"), "{two:?}");
    assert_eq!(two.header_str("x-api-key").as_deref(), Some("sk-ant-test"));
    assert_eq!(two.body, messages::request_body(messages::MODEL, false).as_bytes());
    assert_eq!((one.connection, two.connection), (1, 1), "one keep-alive connection");
    assert_eq!(stub.connection_count(), 1);
}

#[tokio::test]
async fn a_stream_is_sent_one_event_per_chunk_and_merges_field_by_field() {
    let stub = MessagesStub::start().await;
    let (received, end) = raw_exchange(stub.address, &messages_request("stub", "claude-haiku-4-5", true, &[])).await;
    assert_eq!(end, End::Closed);
    let response = parse_response(&received);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("content-type").as_deref(), Some("text/event-stream; charset=utf-8"));
    assert_eq!(response.header("transfer-encoding").as_deref(), Some("chunked"));
    assert!(response.header("request-id").is_some());
    let (events, complete) = events_one_per_chunk(&response);
    assert!(complete, "the body ends with the last chunk: {response:?}");
    assert_eq!(names(&events), STREAM_EVENTS);
    assert_eq!(events[0].1["message"]["model"], "claude-haiku-4-5");
    assert_eq!(usage_of(&events[0].1["message"]["usage"]), messages::STREAM_START_USAGE);
    assert_eq!(text(&events), messages::STREAM_TEXT);
    assert_eq!(merged_usage(&events), messages::STREAM_USAGE);
    // Summing the events, or taking only message_delta's usage, gives other numbers: the constant tells them apart.
    assert_ne!(usage_of(&events[7].1["usage"]), messages::STREAM_USAGE);
    assert_eq!(only_request(&stub).json()["stream"], true);
}

#[tokio::test]
async fn error_after_200_sends_message_start_then_an_error_event_and_ends() {
    let stub = MessagesStub::start().await;
    let (received, end) =
        raw_exchange(stub.address, &messages_request("stub", messages::ERROR_AFTER_200, true, &[])).await;
    assert_eq!(end, End::Closed);
    let response = parse_response(&received);
    assert_eq!(response.status, 200, "{response:?}");
    let (events, complete) = events_one_per_chunk(&response);
    assert!(complete, "{response:?}");
    assert_eq!(names(&events), ["message_start", "error"]);
    assert_eq!(events[1].1["type"], "error");
    assert_eq!(events[1].1["error"]["type"], "overloaded_error");
    assert_eq!(merged_usage(&events), messages::ERROR_AFTER_200_USAGE);
}

#[tokio::test]
async fn cut_resets_the_connection_after_message_delta_without_message_stop() {
    let stub = MessagesStub::start().await;
    // Even when the request does not ask for a stream: the scenario is a stream.
    let (received, end) = raw_exchange(stub.address, &messages_request("stub", messages::CUT, false, &[])).await;
    assert_eq!(end, End::Failed(std::io::ErrorKind::ConnectionReset), "a reset, not a FIN");
    let response = parse_response(&received);
    assert_eq!(response.status, 200, "{response:?}");
    let (events, complete) = events_one_per_chunk(&response);
    assert!(!complete, "no terminating chunk: {response:?}");
    assert_eq!(names(&events), ["message_start", "content_block_start", "content_block_delta", "message_delta"]);
    assert_eq!(merged_usage(&events), messages::CUT_USAGE);

    // curl sees a failed transfer (56: failure receiving data), having printed the events it got.
    let url = format!("{}/v1/messages", stub.url());
    let body = messages::request_body(messages::CUT, true);
    let (code, stdout, stderr) = common::curl(&["-N", "-H", "content-type: application/json", "-d", &body, &url]).await;
    assert_eq!(code, 56, "{stderr}");
    assert!(stdout.contains("event: message_delta") && !stdout.contains("message_stop"), "{stdout}");
}

#[tokio::test]
async fn rate_limited_and_overloaded_answer_anthropic_errors() {
    let stub = MessagesStub::start().await;
    for stream in [false, true] {
        let response = exchange(stub.address, &messages_request("stub", messages::RATE_LIMITED, stream, &[])).await;
        assert_eq!(response.status, 429, "{response:?}");
        assert_eq!(response.header("retry-after").as_deref(), Some(messages::RETRY_AFTER));
        let body = response.json();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "rate_limit_error");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(body["request_id"].as_str(), response.header("request-id").as_deref());

        let response = exchange(stub.address, &messages_request("stub", messages::OVERLOADED, stream, &[])).await;
        assert_eq!(response.status, 529, "{response:?}");
        let body = response.json();
        assert_eq!((body["type"].as_str(), body["error"]["type"].as_str()), (Some("error"), Some("overloaded_error")));
    }
}

#[tokio::test]
async fn hold_delivers_message_start_before_release_and_the_rest_after() {
    let stub = MessagesStub::start().await;
    let mut stream = TcpStream::connect(stub.address).await.expect("connect");
    stream.write_all(&messages_request("stub", messages::HOLD, true, &[])).await.expect("request");
    let mut received = Vec::new();
    assert!(read_until(&mut stream, &mut received, b"event: message_start").await, "message_start before release()");
    assert!(read_until(&mut stream, &mut received, b"\n\n").await);
    let so_far = String::from_utf8_lossy(&received).into_owned();
    assert!(
        !so_far.contains("ping") && !so_far.contains("message_stop"),
        "only message_start before release(): {so_far}"
    );

    stub.release();
    assert_eq!(read_to_end(&mut stream, &mut received).await, End::Closed);
    let response = parse_response(&received);
    let (events, complete) = events_one_per_chunk(&response);
    assert!(complete);
    assert_eq!(names(&events), STREAM_EVENTS);
    assert_eq!(merged_usage(&events), messages::STREAM_USAGE);
    assert!(!stub.cancelled(), "a hold stream is not watched for cancellation");
}

#[tokio::test]
async fn slow_cancel_reports_a_client_that_went_away() {
    let stub = MessagesStub::start().await;
    let mut stream = TcpStream::connect(stub.address).await.expect("connect");
    stream.write_all(&messages_request("stub", messages::SLOW_CANCEL, true, &[])).await.expect("request");
    let mut received = Vec::new();
    assert!(read_until(&mut stream, &mut received, b"event: message_start").await);
    assert!(!stub.cancelled(), "not before the client goes away");
    drop(stream);
    assert!(stub.wait_cancelled().await, "the stub saw its response body dropped");
}

#[tokio::test]
async fn slow_cancel_released_while_the_client_reads_is_not_cancelled() {
    let stub = MessagesStub::start().await;
    let mut stream = TcpStream::connect(stub.address).await.expect("connect");
    stream.write_all(&messages_request("stub", messages::SLOW_CANCEL, true, &[])).await.expect("request");
    let mut received = Vec::new();
    assert!(read_until(&mut stream, &mut received, b"event: message_start").await);
    stub.release();
    assert_eq!(read_to_end(&mut stream, &mut received).await, End::Closed);
    let (events, complete) = events_one_per_chunk(&parse_response(&received));
    assert!(complete);
    assert_eq!(names(&events), STREAM_EVENTS);
    assert!(!stub.cancelled(), "the body ended: nothing was cancelled");
}

#[tokio::test]
async fn count_tokens_models_settings_and_everything_else() {
    let stub = MessagesStub::start().await;
    let base = stub.url();
    let body = messages::request_body(messages::MODEL, false);
    let (code, out, err) = common::curl(&[
        "-H",
        "content-type: application/json",
        "-d",
        &body,
        &format!("{base}/v1/messages/count_tokens?beta=true"),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).expect("JSON")["input_tokens"], messages::COUNT_TOKENS);

    let (code, out, err) = common::curl(&[&format!("{base}/v1/models")]).await;
    assert_eq!(code, 0, "{err}");
    let models: Value = serde_json::from_str(&out).expect("JSON");
    let ids: Vec<&str> = models["data"].as_array().expect("data").iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, messages::MODELS);

    for path in ["/api/claude_code/settings", "/api/claude_code/policy_limits"] {
        let (code, out, err) = common::curl(&["--fail", &format!("{base}{path}")]).await;
        assert_eq!((code, out.as_str()), (0, "{}"), "{path}: {err}");
    }

    for (method, path) in [("GET", "/v1/messages"), ("POST", "/v1/complete"), ("GET", "/api/eval/x")] {
        let (code, out, err) = common::curl(&["-X", method, "-w", "\n%{http_code}", &format!("{base}{path}")]).await;
        assert_eq!(code, 0, "{err}");
        let (body, status) = out.rsplit_once('\n').expect("status line");
        assert_eq!(status, "404", "{method} {path}");
        let body: Value = serde_json::from_str(body).expect("JSON error");
        assert_eq!((body["type"].as_str(), body["error"]["type"].as_str()), (Some("error"), Some("not_found_error")));
    }

    let response = exchange(
        stub.address,
        b"POST /v1/messages HTTP/1.1\r\nHost: stub\r\ncontent-length: 5\r\nConnection: close\r\n\r\n{nope",
    )
    .await;
    assert_eq!(response.status, 400, "{response:?}");
    assert_eq!(response.json()["error"]["type"], "invalid_request_error");
    assert_eq!(stub.requests().len(), 8, "every request is recorded, answered or not");
}

#[tokio::test]
async fn the_tls_stub_serves_curl_streams_and_cuts() {
    let pki = Pki::new();
    let stub = MessagesStub::start_tls(pki.server.chain(), pki.server.private_key()).await;
    assert!(stub.url().starts_with("https://127.0.0.1:"));
    let ca = pki.ca.pem.to_str().expect("path");
    let body = messages::request_body(messages::MODEL, true);
    let url = format!("{}/v1/messages", stub.url());
    let (code, out, err) =
        common::curl(&["--cacert", ca, "-H", "content-type: application/json", "-d", &body, &url]).await;
    assert_eq!(code, 0, "{err}");
    let events = sse_events(&out);
    assert_eq!(names(&events), STREAM_EVENTS);
    assert_eq!(merged_usage(&events), messages::STREAM_USAGE);

    // A cut over TLS: no close_notify, the TCP connection reset.
    let mut tls = common::tls::connect(stub.address, "localhost", pki.client_config(None)).await.expect("TLS");
    tls.write_all(&messages_request("localhost", messages::CUT, true, &[])).await.expect("request");
    let mut received = Vec::new();
    let end = read_to_end(&mut tls, &mut received).await;
    assert!(matches!(end, End::Failed(_)), "{end:?}");
    let (events, complete) = events_one_per_chunk(&parse_response(&received));
    assert!(!complete);
    assert_eq!(merged_usage(&events), messages::CUT_USAGE);
    assert_eq!(stub.requests().len(), 2);
}

// ---- The Python anthropic SDK ----

fn usage_field(result: &Value, at: &str) -> messages::Usage {
    let usage = result.pointer(at).unwrap_or_else(|| panic!("no {at} in {result}"));
    usage_of(usage)
}

#[tokio::test]
async fn the_python_sdk_creates_streams_and_counts_against_the_stub() {
    let stub = MessagesStub::start().await;
    let base = stub.url();
    let env = [("ANTHROPIC_BASE_URL", base.as_str())];

    let created = anthropic_client("create", messages::MODEL, &env).await;
    assert_eq!(created["ok"], true, "{created}");
    assert_eq!(created["model"], messages::MODEL);
    assert_eq!(created["text"], messages::JSON_TEXT);
    assert!(created["request_id"].as_str().is_some_and(|id| id.starts_with("req_stub_")), "{created}");
    assert_eq!(usage_field(&created, "/usage"), messages::JSON_USAGE);

    let streamed = anthropic_client("stream", "claude-haiku-4-5", &env).await;
    assert_eq!(streamed["ok"], true, "{streamed}");
    assert_eq!(streamed["model"], "claude-haiku-4-5");
    assert_eq!(streamed["text"], messages::STREAM_TEXT);
    assert_eq!(streamed["stop_reason"], "end_turn");
    assert_eq!(usage_field(&streamed, "/usage"), messages::STREAM_USAGE, "the SDK merges field by field: {streamed}");
    let events: Vec<&str> = streamed["events"].as_array().expect("events").iter().filter_map(Value::as_str).collect();
    assert!(events.starts_with(&["message_start"]) && events.ends_with(&["message_stop"]), "{events:?}");

    let counted = anthropic_client("count", messages::MODEL, &env).await;
    assert_eq!(counted["ok"], true, "{counted}");
    assert_eq!(counted["input_tokens"], messages::COUNT_TOKENS);

    let requests = stub.requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path_and_query.as_str()).collect();
    assert_eq!(paths, ["/v1/messages", "/v1/messages", "/v1/messages/count_tokens"]);
    for request in &requests {
        // anthropic 2.x sends ANTHROPIC_API_KEY as a bearer token, not as x-api-key.
        assert_eq!(request.header_str("authorization").as_deref(), Some("Bearer sk-ant-test"), "{request:?}");
        assert_eq!(request.header("x-api-key"), None, "{request:?}");
        assert!(request.header("anthropic-version").is_some(), "{request:?}");
    }
    assert_eq!(requests[1].json()["stream"], true);
    assert_eq!(requests[0].json().get("stream"), None);

    // The key as Claude Code sends it.
    let env = [("ANTHROPIC_BASE_URL", base.as_str()), ("TOLLGATE_CLIENT_AUTH", "x-api-key")];
    let counted = anthropic_client("count", messages::MODEL, &env).await;
    assert_eq!(counted["input_tokens"], messages::COUNT_TOKENS, "{counted}");
    let request = stub.requests().pop().expect("the count request");
    assert_eq!(request.header_str("x-api-key").as_deref(), Some("sk-ant-test"), "{request:?}");
    assert_eq!(request.header("authorization"), None, "{request:?}");
}

#[tokio::test]
async fn the_python_sdk_reports_each_failure_as_one_json_line() {
    let stub = MessagesStub::start().await;
    let base = stub.url();
    let env = [("ANTHROPIC_BASE_URL", base.as_str())];

    let limited = anthropic_client("create", messages::RATE_LIMITED, &env).await;
    assert_eq!(limited["ok"], false, "{limited}");
    assert_eq!(limited["error"]["kind"], "status");
    assert_eq!(limited["error"]["status"], 429);
    assert_eq!(limited["error"]["type"], "rate_limit_error");
    assert_eq!(limited["error"]["retry_after"], messages::RETRY_AFTER);

    let overloaded = anthropic_client("stream", messages::OVERLOADED, &env).await;
    assert_eq!(
        (overloaded["error"]["status"].as_u64(), overloaded["error"]["type"].as_str()),
        (Some(529), Some("overloaded_error")),
        "{overloaded}"
    );

    let after_200 = anthropic_client("stream", messages::ERROR_AFTER_200, &env).await;
    assert_eq!(after_200["ok"], false, "{after_200}");
    assert_eq!(after_200["error"]["status"], 200, "the SDK raises the error event with the 200's status");
    assert_eq!(after_200["error"]["type"], "overloaded_error");
    assert_eq!(usage_field(&after_200, "/partial/usage"), messages::ERROR_AFTER_200_USAGE);

    let cut = anthropic_client("stream", messages::CUT, &env).await;
    assert_eq!(cut["ok"], false, "{cut}");
    assert_eq!(cut["error"]["kind"], "connection", "{cut}");
    assert_eq!(usage_field(&cut, "/partial/usage"), messages::CUT_USAGE);
    let events = cut["partial"]["events"].as_array().expect("events");
    assert!(!events.iter().any(|e| e == "message_stop"), "{cut}");
    // One request each: the client does not retry (TOLLGATE_CLIENT_MAX_RETRIES defaults to 0).
    assert_eq!(stub.requests().len(), 4);
}

#[tokio::test]
async fn the_python_sdk_trusts_exactly_the_ca_in_ssl_cert_file() {
    let pki = Pki::new();
    let stub = MessagesStub::start_tls(pki.server.chain(), pki.server.private_key()).await;
    let base = stub.url();
    let ca = pki.ca.pem.to_str().expect("path");
    let trusted =
        anthropic_client("stream", messages::MODEL, &[("ANTHROPIC_BASE_URL", &base), ("SSL_CERT_FILE", ca)]).await;
    assert_eq!(trusted["ok"], true, "{trusted}");
    assert_eq!(usage_field(&trusted, "/usage"), messages::STREAM_USAGE);

    // Another CA in SSL_CERT_FILE: the handshake fails, so the file really is what the SDK trusts.
    let rogue = pki.rogue_ca.pem.to_str().expect("path");
    let refused =
        anthropic_client("create", messages::MODEL, &[("ANTHROPIC_BASE_URL", &base), ("SSL_CERT_FILE", rogue)]).await;
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["error"]["kind"], "connection", "{refused}");
    assert_eq!(stub.requests().len(), 1, "no request got through the refused handshake");
}

/// A minimal CONNECT proxy on 127.0.0.1:0 that records each CONNECT line and tunnels every connection to `to`,
/// whatever it names.
async fn connect_proxy(to: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let address = listener.local_addr().expect("proxy address");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let Some(head) = next_head(&mut client, &mut buf).await else { return };
                record.lock().unwrap().push(head.lines().next().unwrap_or("").to_owned());
                let Ok(mut upstream) = TcpStream::connect(to).await else { return };
                if client.write_all(common::tls::ESTABLISHED).await.is_err() || upstream.write_all(&buf).await.is_err()
                {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (address, seen)
}

#[tokio::test]
async fn the_python_sdk_goes_through_https_proxy_to_api_anthropic_com() {
    // A CA and a leaf for api.anthropic.com, as an intercepting gateway would present.
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "stub interception CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf = rcgen::CertificateParams::new(vec!["api.anthropic.com".to_owned()])
        .expect("leaf params")
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf");
    let ca_pem = dir.path().join("ca.pem");
    std::fs::write(&ca_pem, ca.pem()).expect("write CA");
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let stub = MessagesStub::start_tls(vec![leaf.der().clone()], key).await;
    let (proxy, connects) = connect_proxy(stub.address).await;

    let proxy_url = format!("http://{proxy}");
    let env = [("HTTPS_PROXY", proxy_url.as_str()), ("SSL_CERT_FILE", ca_pem.to_str().expect("path"))];
    let streamed = anthropic_client("stream", messages::MODEL, &env).await;
    assert_eq!(streamed["ok"], true, "{streamed}");
    assert_eq!(usage_field(&streamed, "/usage"), messages::STREAM_USAGE);
    let created = anthropic_client("create", messages::MODEL, &env).await;
    assert_eq!(usage_field(&created, "/usage"), messages::JSON_USAGE, "{created}");

    let connects = connects.lock().unwrap().clone();
    assert_eq!(connects, ["CONNECT api.anthropic.com:443 HTTP/1.1"; 2], "the SDK used HTTPS_PROXY");
    let requests = stub.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].header_str("host").as_deref(), Some("api.anthropic.com"));
    assert_eq!(requests[0].path_and_query, "/v1/messages");
}
