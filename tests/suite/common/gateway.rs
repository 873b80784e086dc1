//! Helpers for tests of `mode: gateway` listeners and of budgets: a gateway started from YAML with its own
//! listeners and an `app::Options` (an injected clock), users with argon2 hashes, origin-form Messages API
//! requests on raw sockets, and checks of tollgate's Anthropic-shaped errors and of what reached the stub.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use tollgate::app;
use tollgate::config::Config;

use super::messages::{self, MessagesStub, Seen, Usage};
use super::{exchange_until_closed, isolate_state, Response, TestGateway};

/// The Messages API version header every request here sends.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// One listener called `gateway` in gateway mode on 127.0.0.1:0.
pub const GATEWAY_LISTENER: &str = "listeners: [{name: gateway, bind: \"127.0.0.1:0\", mode: gateway}]\n";

/// A user of `auth.users`.
pub struct User {
    pub name: &'static str,
    pub password: &'static str,
    pub teams: &'static [&'static str],
}

impl User {
    /// `x-api-key: NAME:PASSWORD`, the per-user key of the gateway.
    pub fn api_key(&self) -> String {
        format!("x-api-key: {}:{}", self.name, self.password)
    }
}

/// The `auth.users` list (indented for the `auth:` block), each password hashed with argon2id.
pub fn users_yaml(users: &[&User]) -> String {
    let mut yaml = String::from("  users:\n");
    for user in users {
        yaml.push_str(&format!(
            "    - {{name: {}, password_hash: \"{}\", teams: [{}]}}\n",
            user.name,
            super::hash(user.password),
            user.teams.join(", ")
        ));
    }
    yaml
}

/// `upstreams:` naming each stub by its plain `http://` URL, with the API key tollgate must inject.
pub fn upstreams_yaml(stubs: &[(&str, &MessagesStub, &str)]) -> String {
    let mut yaml = String::from("upstreams:\n");
    for (name, stub, api_key) in stubs {
        yaml.push_str(&format!("  {name}: {{url: \"{}\", api_key: \"{api_key}\"}}\n", stub.url()));
    }
    yaml
}

/// Like `TestGateway::start_full` (the YAML names its own listeners; `admin` and `audit` are added), with
/// `options` (e.g. the test's clock). A `state.path` the YAML names is kept, so two gateways can share one.
pub async fn start_full_with(yaml: &str, options: app::Options) -> TestGateway {
    let dir = tempfile::tempdir().expect("temp dir");
    let audit = dir.path().join("audit.jsonl");
    let text = format!("admin: {{bind: \"127.0.0.1:0\"}}\naudit: {{file: {{path: \"{}\"}}}}\n{yaml}", audit.display());
    let mut config = Config::from_text(&text, Path::new("test.yaml"), &|name| std::env::var(name).ok())
        .unwrap_or_else(|e| panic!("config should load: {e}\n{text}"));
    isolate_state(&mut config, dir.path());
    let running = app::start_with(config, options).await.unwrap_or_else(|e| panic!("gateway should start: {e}"));
    let proxy = running.listeners.first().map(|(_, address)| *address).expect("a listener");
    let admin = running.admin.expect("admin listener");
    TestGateway { running: Some(running), proxy, admin, dir }
}

/// A gateway whose only listener is `gateway` (mode: gateway), from the rest of the config.
pub async fn start_gateway(yaml: &str, options: app::Options) -> TestGateway {
    start_full_with(&format!("{GATEWAY_LISTENER}{yaml}"), options).await
}

/// Options with the test's clock and no config-file watching.
pub fn with_clock(clock: std::sync::Arc<super::TestClock>) -> app::Options {
    app::Options { clock, watch_interval: None }
}

/// An origin-form request with `Host: tollgate`, the given header lines (`Name: value`), a `Content-Length` when
/// there is a body (or the method is POST) and `Connection: close`.
pub fn request(method: &str, path: &str, headers: &[&str], body: &str) -> Vec<u8> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: tollgate.test\r\n");
    for header in headers {
        text.push_str(header);
        text.push_str("\r\n");
    }
    if !body.is_empty() || method == "POST" {
        text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    text.push_str("Connection: close\r\n\r\n");
    text.push_str(body);
    text.into_bytes()
}

/// `POST /v1/messages` for `model` (streamed when `stream`), authenticated by the header line `credential`.
pub fn messages_call(credential: &str, model: &str, stream: bool) -> Vec<u8> {
    let version = format!("anthropic-version: {ANTHROPIC_VERSION}");
    request(
        "POST",
        "/v1/messages",
        &[credential, &version, "content-type: application/json"],
        &messages::request_body(model, stream),
    )
}

/// Sends `request` to `address` and reads the response; returns once the gateway has closed the connection,
/// so the request's audit record and metrics are in place.
pub async fn send(address: SocketAddr, request: &[u8]) -> Response {
    exchange_until_closed(address, request).await
}

/// Asserts `response` is tollgate's Anthropic-shaped error: `status`, `{"type":"error","error":{"type":T,
/// "message":"tollgate: …"},"request_id":ID}` with ID the `x-tollgate-request-id` header, and `x-tollgate-rule`
/// exactly `rule`. Returns the message.
pub fn assert_api_error(response: &Response, status: u16, error_type: &str, rule: Option<&str>) -> String {
    assert_eq!(response.status, status, "{response:?}");
    let body = response.json();
    assert_eq!(body["type"], "error", "{response:?}");
    assert_eq!(body["error"]["type"], error_type, "{response:?}");
    let message = body["error"]["message"].as_str().unwrap_or_else(|| panic!("an error message: {response:?}"));
    assert!(message.starts_with("tollgate: "), "{response:?}");
    let id = response.header("x-tollgate-request-id").unwrap_or_else(|| panic!("a request id: {response:?}"));
    assert!(!id.is_empty(), "{response:?}");
    assert_eq!(body["request_id"].as_str(), Some(id.as_str()), "{response:?}");
    assert_eq!(response.header("x-tollgate-rule").as_deref(), rule, "{response:?}");
    assert!(response.header("content-type").is_some_and(|t| t.starts_with("application/json")), "{response:?}");
    message.to_owned()
}

/// The audit records of kind `gateway`, in order.
pub fn gateway_records(audit: &[Value]) -> Vec<&Value> {
    audit.iter().filter(|record| record["kind"] == "gateway").collect()
}

/// The only `gateway` record.
pub fn only_gateway_record(audit: &[Value]) -> &Value {
    let records = gateway_records(audit);
    assert_eq!(records.len(), 1, "one gateway record: {audit:#?}");
    records[0]
}

/// Asserts that `secret` appears in no header value and not in the body of what the stub received.
pub fn assert_not_forwarded(seen: &Seen, secret: &str) {
    for (name, value) in &seen.headers {
        let value = String::from_utf8_lossy(value);
        assert!(!value.contains(secret), "header {name}: {value:?} carries the client's credential {secret:?}");
    }
    assert!(!String::from_utf8_lossy(&seen.body).contains(secret), "the body carries {secret:?}");
}

/// The headers the stub saw that the client did not send: returns them (names in lower case) after checking
/// that every sent header other than `Host`, the credentials and `Connection` arrived with its value
/// byte-identical and its name in lower case (the model path sends names as h2 does: docs/requests.md).
pub fn headers_added(sent: &[&str], seen: &Seen) -> Vec<(String, String)> {
    let skipped = ["host", "x-api-key", "authorization", "connection"];
    for (name, _) in &seen.headers {
        assert_eq!(
            *name,
            name.to_ascii_lowercase(),
            "header names reach the upstream in lower case: {:?}",
            seen.headers
        );
    }
    let mut remaining: Vec<(String, Vec<u8>)> = seen.headers.clone();
    for line in sent {
        let (name, value) = line.split_once(':').expect("Name: value");
        let value = value.trim();
        if skipped.contains(&name.to_ascii_lowercase().as_str()) {
            continue;
        }
        let at = remaining
            .iter()
            .position(|(n, v)| n.eq_ignore_ascii_case(name) && v == value.as_bytes())
            .unwrap_or_else(|| panic!("{name}: {value} did not reach the stub byte-identical: {:?}", seen.headers));
        remaining.remove(at);
    }
    remaining.into_iter().map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned())).collect()
}

/// A usage as the audit record writes it.
pub fn audit_usage(record: &Value) -> Usage {
    assert!(record["usage"].is_object(), "the record has a usage: {record}");
    messages::usage_of(&record["usage"])
}

/// `pricing` rows with a different price for each kind of token (USD per million), so that the cost of a usage
/// is exact in micro-dollars and a field priced as another shows: input 10, output 20, cache writes 5, cache
/// reads 1.
pub const PRICING: &str = "pricing:\n  - {model: \"*\", input: 10, output: 20, cache_write: 5, cache_read: 1}\n";

/// The cost of `usage` under `PRICING`, in micro-dollars.
pub fn cost_micro_usd(usage: Usage) -> i64 {
    let (input, output, cache_creation, cache_read) = usage;
    (input * 10 + output * 20 + cache_creation * 5 + cache_read) as i64
}

/// `hours` o'clock UTC today (by the real clock): spend stores drop periods that ended by the real clock (the
/// embedded ledger when it is reopened, Redis by key expiry), so a test that keeps spend uses today's date.
pub fn today_at(hours: u64) -> SystemTime {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    UNIX_EPOCH + Duration::from_secs(now - now % 86_400 + hours * 3_600)
}

/// The sum of every sample in Prometheus `text` whose name and labels start with `prefix` (e.g. every reason of
/// one decision).
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum()
}
