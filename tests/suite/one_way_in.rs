//! One way in: whichever door a model-API request takes, it gets the same checks. An absolute-form request to an
//! intercepted host is checked and metered as the same request inside an intercepted tunnel; team deny rules (names
//! and CIDRs) hold for routed upstreams; budgets reserve a request's worst case; every spelling of a path is one
//! canonical path, and the spellings servers disagree on are refused; a tunnel serves only its own host; queries
//! reach neither the audit record nor the log; an identity ends when its credential does.
//!
//! Written as a hostile client would: real TLS tunnels (HTTP/1.1 and hyper h2), raw sockets, the Messages stub as the
//! origin, an injected clock, and the real binary for its log lines.

use crate::common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use common::binary::{Stderr, Tollgate};
use common::gateway::{assert_api_error, start_full_with, users_yaml, with_clock, User};
use common::intercept::{
    connect, expected_cost, handshake, read_more, request, send, tokens_sample, trusting, Intercepting, Parts, API_HOST,
};
use common::messages::{self, usage_of, MessagesStub, Seen, JSON_USAGE};
use common::{basic, exchange_until_closed, metric_value, Origin, Response, TestClock, TestGateway};

/// Priced by the `claude-sonnet-4*` row of `common::intercept::PRICES` (input $3, output $15 per million tokens).
const MODEL: &str = messages::MODEL;
/// A model team backend may not use.
const DENIED_MODEL: &str = "claude-opus-4-1";

const ALICE: User = User { name: "alice", password: "alice:pass word", teams: &["backend"] };

/// Team backend may use `claude-sonnet-*` only.
const BACKEND: &str = "teams:\n  backend: {models: [\"claude-sonnet-*\"]}\n";

/// A proxy listener (first, so `TestGateway::proxy` is its address) and a gateway listener.
const LISTENERS: &str =
    "listeners:\n  - {name: proxy, bind: \"127.0.0.1:0\"}\n  - {name: gateway, bind: \"127.0.0.1:0\", mode: gateway}\n";

/// `common::intercept::config` (interception of api.anthropic.com routed to the stub, priced by `PRICES`), with
/// every gateway-listener request routed to the stub too.
fn doors_config(stub: &MessagesStub, ca_dir: &std::path::Path, parts: &Parts<'_>) -> String {
    common::intercept::config(stub, ca_dir, parts).replacen(
        "routing:\n",
        "routing:\n  - {when: {listener: gateway}, to: stub}\n",
        1,
    )
}

/// The stub, and a gateway with a proxy listener intercepting api.anthropic.com and a gateway listener, both
/// routed to the stub.
async fn start(parts: Parts<'_>, options: tollgate::app::Options) -> Intercepting {
    let stub = MessagesStub::start().await;
    let ca_dir = tempfile::tempdir().expect("CA dir");
    let yaml = format!("{LISTENERS}{}", doors_config(&stub, ca_dir.path(), &parts));
    let gateway = start_full_with(&yaml, options).await;
    Intercepting { stub, gateway, ca_dir }
}

/// `auth` with `users` and no anonymous access.
fn users_auth(users: &[&User]) -> String {
    format!("auth:\n  anonymous: deny\n{}", users_yaml(users))
}

/// A Messages request body for `model` with `max_tokens`.
fn message(model: &str, max_tokens: u64) -> String {
    json!({"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "Say hello"}]})
        .to_string()
}

/// The header lines every Messages request here carries (what an SDK sends), `Host` first.
const SDK_HEADERS: [&str; 4] = [
    "Host: api.anthropic.com",
    "x-api-key: sk-ant-client",
    "anthropic-version: 2023-06-01",
    "content-type: application/json",
];

/// `POST url` in absolute form, as sent to the proxy, with `SDK_HEADERS` and extra header lines.
fn absolute_post(url: &str, body: &str, extra: &[&str]) -> Vec<u8> {
    let mut headers: Vec<&str> = SDK_HEADERS.to_vec();
    headers.extend_from_slice(extra);
    request("POST", url, &headers, body.as_bytes())
}

/// `Proxy-Authorization` for alice.
fn alice_credentials() -> String {
    format!("Proxy-Authorization: {}", basic(ALICE.name, ALICE.password))
}

/// The header lines of a request as the stub saw them, names lowercased, sorted.
fn normalised(seen: &Seen) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = seen
        .headers
        .iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), String::from_utf8_lossy(value).into_owned()))
        .collect();
    headers.sort();
    headers
}

/// The audit records of `kind`.
fn records_of<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|record| record["kind"] == kind).collect()
}

/// The fields a model-API record shares whatever the door: who, what, the decision and the metering.
fn metering(record: &Value) -> Value {
    let fields = ["user", "team", "method", "path", "decision", "rule", "status", "upstream", "model", "usage"];
    fields.iter().map(|field| (field.to_string(), record[field].clone())).collect::<serde_json::Map<_, _>>().into()
}

// ---- 2. No door around the model-API checks ----

/// An absolute-form request to an intercepted host, `https://` and `http://` alike, runs the model-API phases, never a
/// plain forward: without credentials a 407 with the Basic challenge, a model the team may not use and a DLP match
/// refused in the Anthropic shape before the stub, and an allowed request (spelled `/v1//messages`) sent to the
/// routed stub exactly as the same request inside an intercepted tunnel (canonical path, no `Proxy-Authorization`,
/// same headers and body), metered and audited the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_model_request_gets_every_check_of_an_intercepted_one() {
    let auth = users_auth(&[&ALICE]);
    let extra = format!("{BACKEND}dlp: {{action: block, detectors: [aws_access_key]}}\n");
    let setup = start(Parts { auth: &auth, extra: &extra, ..Parts::default() }, Default::default()).await;
    let proxy = setup.gateway.proxy;
    let credentials = alice_credentials();
    let leaked = json!({"model": MODEL, "max_tokens": 64,
                        "messages": [{"role": "user", "content": "why does boto fail? AKIAZ7VQ3MBX5LRT2KPN"}]})
    .to_string();

    for scheme in ["https", "http"] {
        let url = |path: &str| format!("{scheme}://{API_HOST}{path}");
        let before = setup.stub.requests().len();
        let anonymous =
            exchange_until_closed(proxy, &absolute_post(&url("/v1/messages"), &message(MODEL, 64), &[])).await;
        let text = assert_api_error(&anonymous, 407, "authentication_error", None);
        assert!(text.contains("Proxy-Authorization"), "a proxy client is told what the proxy wants: {text}");
        assert_eq!(
            anonymous.header("proxy-authenticate").as_deref(),
            Some("Basic realm=\"tollgate\""),
            "{scheme}: {anonymous:?}"
        );
        let denied = exchange_until_closed(
            proxy,
            &absolute_post(&url("/v1/messages"), &message(DENIED_MODEL, 64), &[&credentials]),
        )
        .await;
        let text = assert_api_error(&denied, 403, "permission_error", Some("teams.backend.models"));
        assert!(text.contains(DENIED_MODEL), "{scheme}: {text}");
        let blocked =
            exchange_until_closed(proxy, &absolute_post(&url("/v1/messages"), &leaked, &[&credentials])).await;
        let text = assert_api_error(&blocked, 403, "permission_error", Some("dlp.aws_access_key"));
        assert!(!text.contains("AKIAZ7VQ3MBX5LRT2KPN"), "{text}");
        assert_eq!(setup.stub.requests().len(), before, "{scheme}: no refused request reached the stub");

        let served = exchange_until_closed(
            proxy,
            &absolute_post(&url("/v1//messages?beta=true"), &message(MODEL, 64), &[&credentials]),
        )
        .await;
        assert_eq!(served.status, 200, "{scheme}: {served:?}");
        assert_eq!(usage_of(&served.json()["usage"]), JSON_USAGE, "{scheme}: {served:?}");
        assert_eq!(setup.stub.requests().len(), before + 1, "{scheme}");
    }

    // The same request inside an intercepted tunnel.
    let mut tls = setup.tunnel_as(Some(&basic(ALICE.name, ALICE.password))).await;
    let mut buf = Vec::new();
    let inside = send(
        &mut tls,
        &request("POST", "/v1//messages?beta=true", &SDK_HEADERS, message(MODEL, 64).as_bytes()),
        &mut buf,
    )
    .await;
    assert_eq!(inside.status, 200, "{inside:?}");

    let seen = setup.stub.requests();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    for forwarded in &seen[..2] {
        assert_eq!(forwarded.path_and_query, "/v1/messages?beta=true", "the canonical path: {forwarded:?}");
        assert_eq!(forwarded.header("proxy-authorization"), None, "{forwarded:?}");
        assert_eq!(normalised(forwarded), normalised(&seen[2]), "the headers the intercepted request sends");
        assert_eq!(forwarded.body, seen[2].body);
    }
    assert_eq!(seen[2].path_and_query, "/v1/messages?beta=true");

    let records = setup.gateway.audit().await;
    let absolute = records_of(&records, "http");
    assert_eq!(absolute.len(), 8, "four requests per scheme: {records:#?}");
    let statuses: Vec<_> = absolute.iter().map(|r| r["status"].as_u64().unwrap_or(0)).collect();
    assert_eq!(statuses, [407, 403, 403, 200, 407, 403, 403, 200], "{records:#?}");
    let intercepted = records_of(&records, "intercepted");
    assert_eq!(intercepted.len(), 1, "{records:#?}");
    for served in [absolute[3], absolute[7]] {
        assert_eq!(metering(served), metering(intercepted[0]), "metered alike: {served:#}");
        let cost = served["cost_usd"].as_f64().unwrap_or_else(|| panic!("a cost: {served:#}"));
        common::intercept::assert_usd(cost, expected_cost(MODEL, JSON_USAGE), "cost_usd");
    }
    assert_eq!(metering(intercepted[0])["path"], "/v1/messages");
    assert_eq!(metering(intercepted[0])["usage"], messages::usage_json(JSON_USAGE));
    let metrics = setup.gateway.metrics().await;
    let input = metric_value(&metrics, &tokens_sample(MODEL, "backend", "input"));
    assert_eq!(input, 3.0 * JSON_USAGE.0 as f64, "three metered requests:\n{metrics}");
    let dlp_blocks = metric_value(&metrics, "tollgate_dlp_blocks_total{detector=\"aws_access_key\"}");
    assert_eq!(dlp_blocks, 2.0, "{metrics}");
}

/// Team deny rules hold for routed upstreams, by name and by the CIDRs of the addresses the upstream resolves to:
/// with the stub configured as `http://localhost:PORT`, a team denying `localhost` and a team denying `127.0.0.0/8`
/// are refused (403 naming their rule) inside an intercepted tunnel, on a gateway listener and in absolute form,
/// while a team without deny rules is served at each door.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_deny_rules_hold_for_routed_upstreams_by_name_and_by_address() {
    const NINA: User = User { name: "nina", password: "nina-password", teams: &["named"] };
    const RHEA: User = User { name: "rhea", password: "rhea-password", teams: &["ranged"] };
    const OTTO: User = User { name: "otto", password: "otto-password", teams: &["open"] };
    let stub = MessagesStub::start().await;
    let ca_dir = tempfile::tempdir().expect("CA dir");
    let auth = users_auth(&[&NINA, &RHEA, &OTTO]);
    let teams = "teams:\n  named: {deny: [\"localhost\"]}\n  ranged: {deny: [\"127.0.0.0/8\"]}\n  open: {}\n";
    let parts = Parts { auth: &auth, extra: teams, ..Parts::default() };
    let by_name = format!("http://localhost:{}", stub.address.port());
    let yaml = format!("{LISTENERS}{}", doors_config(&stub, ca_dir.path(), &parts).replace(&stub.url(), &by_name));
    let gateway = start_full_with(&yaml, Default::default()).await;
    let setup = Intercepting { stub, gateway, ca_dir };

    for (user, rule) in [(&NINA, Some("teams.named.deny[0]")), (&RHEA, Some("teams.ranged.deny[0]")), (&OTTO, None)] {
        let proxy_credentials = basic(user.name, user.password);
        let mut tls = setup.tunnel_as(Some(&proxy_credentials)).await;
        let mut buf = Vec::new();
        let body = message(MODEL, 64);
        let inside = send(&mut tls, &request("POST", "/v1/messages", &SDK_HEADERS, body.as_bytes()), &mut buf).await;
        let key = format!("x-api-key: {}:{}", user.name, user.password);
        let version = "anthropic-version: 2023-06-01";
        let at_gateway = exchange_until_closed(
            setup.gateway.listener("gateway"),
            &request(
                "POST",
                "/v1/messages",
                &["Host: tollgate.test", &key, version, "Connection: close"],
                body.as_bytes(),
            ),
        )
        .await;
        let header = format!("Proxy-Authorization: {proxy_credentials}");
        let absolute = exchange_until_closed(
            setup.gateway.proxy,
            &absolute_post(&format!("https://{API_HOST}/v1/messages"), &body, &[&header]),
        )
        .await;
        for (door, response) in [("intercepted", &inside), ("gateway", &at_gateway), ("absolute-form", &absolute)] {
            match rule {
                Some(rule) => {
                    let text = assert_api_error(response, 403, "permission_error", Some(rule));
                    assert!(text.contains(rule) && text.contains("localhost"), "{door}, {}: {text}", user.name);
                }
                None => assert_eq!(response.status, 200, "{door}, {}: {response:?}", user.name),
            }
        }
    }
    assert_eq!(setup.stub.requests().len(), 3, "only otto's three requests reached the stub");
    let records = setup.gateway.audit().await;
    let denied: Vec<_> = records.iter().filter(|r| r["decision"] == "deny").map(|r| r["rule"].clone()).collect();
    let expected: Vec<Value> = ["teams.named.deny[0]", "teams.ranged.deny[0]"]
        .iter()
        .flat_map(|rule| std::iter::repeat_n(json!(rule), 3))
        .collect();
    assert_eq!(denied, expected, "{records:#?}");
}

/// Budgets reserve a request's worst case (its input estimate plus `max_tokens` at the output price) against what
/// is left, at every door. With a daily budget of $5: `max_tokens` 400,000 ($6 at $15 per million) is refused up
/// front; 333,000 ($4.995) fits an unspent budget and is served; once that request has spent $0.010077, the same
/// 333,000 no longer fits what is left and is refused, in a tunnel and in absolute form; 64 still fits. Each refusal
/// is a 429 `billing_error` with `x-should-retry: false`, and never reaches the stub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_reserves_the_worst_case_of_each_request() {
    let clock = TestClock::at("2026-12-01T12:00:00Z");
    let auth = users_auth(&[&ALICE]);
    let teams = "teams:\n  backend: {budget: {daily_usd: 5}}\n";
    let setup = start(Parts { auth: &auth, extra: teams, ..Parts::default() }, with_clock(clock)).await;
    let credentials = alice_credentials();
    let absolute = |max_tokens: u64| {
        absolute_post(&format!("https://{API_HOST}/v1/messages"), &message(MODEL, max_tokens), &[&credentials])
    };
    let mut tls = setup.tunnel_as(Some(&basic(ALICE.name, ALICE.password))).await;
    let mut buf = Vec::new();
    let inside = |max_tokens: u64| request("POST", "/v1/messages", &SDK_HEADERS, message(MODEL, max_tokens).as_bytes());
    let assert_refused = |response: &Response, left: &str| {
        let text = assert_api_error(response, 429, "billing_error", Some("budget.team_daily"));
        assert!(text.contains("could cost up to") && text.contains(&format!("more than the ${left} left")), "{text}");
        assert_eq!(response.header("x-should-retry").as_deref(), Some("false"), "{response:?}");
        assert!(response.header("retry-after").is_some(), "{response:?}");
    };

    assert_refused(&send(&mut tls, &inside(400_000), &mut buf).await, "5.00");
    assert!(setup.stub.requests().is_empty(), "refused up front");
    let fits = exchange_until_closed(setup.gateway.proxy, &absolute(333_000)).await;
    assert_eq!(fits.status, 200, "$4.995 fits an unspent $5: {fits:?}");
    assert_refused(&send(&mut tls, &inside(333_000), &mut buf).await, "4.99");
    assert_refused(&exchange_until_closed(setup.gateway.proxy, &absolute(333_000)).await, "4.99");
    assert_eq!(setup.stub.requests().len(), 1, "refused up front");
    let small = send(&mut tls, &inside(64), &mut buf).await;
    assert_eq!(small.status, 200, "{small:?}");
    assert_eq!(setup.stub.requests().len(), 2);

    let records = setup.gateway.audit().await;
    let outcomes: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] != "connect")
        .map(|r| (r["kind"].as_str().unwrap_or("").to_owned(), r["status"].as_u64().unwrap_or(0), r["rule"].clone()))
        .collect();
    let budget = json!("budget.team_daily");
    let expected = [
        ("intercepted".to_owned(), 429, budget.clone()),
        ("http".to_owned(), 200, json!("policy.allow[0]")),
        ("intercepted".to_owned(), 429, budget.clone()),
        ("http".to_owned(), 429, budget),
        ("intercepted".to_owned(), 200, json!("policy.allow[0]")),
    ];
    assert_eq!(outcomes, expected, "{records:#?}");
}

// ---- 3. Canonical requests ----

/// Spellings of `/v1/messages` that servers agree on.
const SPELLINGS: &[&str] =
    &["/v1/messages", "/v1//messages", "/v1/./messages", "/v1/x/../messages", "/v1/messages/", "/%76%31/messages"];

/// Spellings servers disagree on (an encoded separator, a backslash, a NUL, a climb above the root): 400.
const REFUSED: &[&str] = &[
    "/v1%2Fmessages",
    "/v1%2fmessages",
    "/v1\\messages",
    "/v1/%5C/messages",
    "/v1/messages%00",
    "/v1/../../v1/messages",
];

/// Spellings of the path `intercept.paths.deny[0]` names.
const DENIED_SPELLINGS: &[&str] = &[
    "/v1/messages/count_tokens",
    "/v1//messages/count_tokens",
    "/v1/messages/./count_tokens",
    "/v1/messages/x/../count_tokens",
    "/v1/messages/count_tokens/",
    "/%76%31/messages/%63ount_tokens",
];

/// The gateway of the path tests: alice in team backend (`claude-sonnet-*` only), `/v1/messages/count_tokens` denied.
async fn paths_setup() -> Intercepting {
    let auth = users_auth(&[&ALICE]);
    let intercept = ["paths: {allow: [\"/v1/*\", \"/api/*\"], deny: [\"/v1/messages/count_tokens\"]}"];
    start(Parts { auth: &auth, intercept: &intercept, extra: BACKEND, ..Parts::default() }, Default::default()).await
}

/// Anything a client connection can be.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A client of one door, keeping its connection open between requests.
enum Client {
    /// HTTP/1.1 on a tunnel or a gateway connection; `headers` go with every request (`Host`, credentials).
    Http1 { stream: Box<dyn Io>, buf: Vec<u8>, headers: Vec<String> },
    /// h2 inside a tunnel.
    H2(SendRequest<Full<Bytes>>),
}

impl Client {
    /// HTTP/1.1 inside a tunnel opened as alice.
    async fn http1_tunnel(setup: &Intercepting) -> Client {
        let tls = setup.tunnel_as(Some(&basic(ALICE.name, ALICE.password))).await;
        let headers = vec![format!("Host: {API_HOST}"), "x-api-key: sk-ant-client".to_owned()];
        Client::Http1 { stream: Box::new(tls), buf: Vec::new(), headers }
    }

    /// h2 inside a tunnel opened as alice.
    async fn h2_tunnel(setup: &Intercepting) -> Client {
        Client::H2(h2_tunnel(setup, &basic(ALICE.name, ALICE.password)).await)
    }

    /// HTTP/1.1 on the gateway listener, alice's key on every request.
    async fn gateway(setup: &Intercepting) -> Client {
        let tcp = TcpStream::connect(setup.gateway.listener("gateway")).await.expect("connect to the gateway");
        let headers = vec!["Host: tollgate.test".to_owned(), format!("x-api-key: {}:{}", ALICE.name, ALICE.password)];
        Client::Http1 { stream: Box::new(tcp), buf: Vec::new(), headers }
    }

    /// Sends a JSON request and reads its response.
    async fn send(&mut self, method: &str, path: &str, body: &str) -> Response {
        match self {
            Client::Http1 { stream, buf, headers } => {
                let mut lines: Vec<&str> = headers.iter().map(String::as_str).collect();
                lines.extend(["anthropic-version: 2023-06-01", "content-type: application/json"]);
                send(stream, &request(method, path, &lines, body.as_bytes()), buf).await
            }
            Client::H2(sender) => {
                let headers = [
                    ("x-api-key", "sk-ant-client"),
                    ("anthropic-version", "2023-06-01"),
                    ("content-type", "application/json"),
                ];
                h2_send(sender, method, &format!("https://{API_HOST}{path}"), &headers, body).await
            }
        }
    }
}

/// An h2 connection inside a tunnel opened with `Proxy-Authorization: credentials`.
async fn h2_tunnel(setup: &Intercepting, credentials: &str) -> SendRequest<Full<Bytes>> {
    let tcp = connect(setup.gateway.proxy, API_HOST, Some(credentials)).await;
    let tls = handshake(tcp, API_HOST, trusting(&setup.ca_pem(), &[b"h2"])).await.expect("TLS inside the tunnel");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "h2 by ALPN");
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.expect("h2 handshake");
    tokio::spawn(connection);
    sender
}

/// One h2 request; the response with its headers written as an HTTP/1.1-style head, so `Response::header` reads them.
async fn h2_send(
    sender: &mut SendRequest<Full<Bytes>>,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let mut builder = hyper::Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(Bytes::from(body.to_owned()))).expect("a request");
    let response = tokio::time::timeout(Duration::from_secs(20), sender.send_request(request))
        .await
        .expect("an h2 answer within 20s")
        .expect("an h2 answer");
    let status = response.status().as_u16();
    let mut head = format!("HTTP/2 {status}\r\n");
    for (name, value) in response.headers() {
        head.push_str(&format!("{name}: {}\r\n", String::from_utf8_lossy(value.as_bytes())));
    }
    let body = response.into_body().collect().await.expect("the response body").to_bytes();
    Response { status, head, body: String::from_utf8(body.to_vec()).expect("a UTF-8 body") }
}

/// Every spelling of `/v1/messages` is model-checked (a model team backend may not use: 403) and metered like it,
/// and reaches the stub as `/v1/messages`; the spellings servers disagree on are 400 and reach nothing; no
/// spelling of a denied path dodges its rule. Records of `kind` say `/v1/messages`, with the model and the usage.
async fn every_spelling_is_one_path(setup: &Intercepting, mut client: Client, kind: &str) {
    for path in SPELLINGS {
        let denied = client.send("POST", path, &message(DENIED_MODEL, 64)).await;
        assert_api_error(&denied, 403, "permission_error", Some("teams.backend.models"));
        let served = client.send("POST", path, &message(MODEL, 64)).await;
        assert_eq!(served.status, 200, "{kind} {path}: {served:?}");
        assert_eq!(usage_of(&served.json()["usage"]), JSON_USAGE, "{kind} {path}");
        let seen = setup.stub.requests();
        assert_eq!(seen.last().map(|s| s.path_and_query.as_str()), Some("/v1/messages"), "{kind} {path}");
    }
    for path in REFUSED {
        let refused = client.send("POST", path, &message(MODEL, 64)).await;
        assert_api_error(&refused, 400, "invalid_request_error", None);
    }
    for path in DENIED_SPELLINGS {
        let refused = client.send("POST", path, &message(MODEL, 64)).await;
        assert_api_error(&refused, 403, "permission_error", Some("intercept.paths.deny[0]"));
    }
    assert_eq!(setup.stub.requests().len(), SPELLINGS.len(), "{kind}: only the served requests reached the stub");

    let records = setup.gateway.audit().await;
    let found = records_of(&records, kind);
    assert_eq!(found.len(), 2 * SPELLINGS.len() + REFUSED.len() + DENIED_SPELLINGS.len(), "{records:#?}");
    for pair in found[..2 * SPELLINGS.len()].chunks(2) {
        let (denied, served) = (pair[0], pair[1]);
        assert_eq!((denied["path"].as_str(), denied["status"].as_u64()), (Some("/v1/messages"), Some(403)), "{denied}");
        assert_eq!(denied["rule"], "teams.backend.models", "{denied}");
        assert_eq!(
            (served["path"].as_str(), served["model"].as_str()),
            (Some("/v1/messages"), Some(MODEL)),
            "{served}"
        );
        assert_eq!(served["usage"], messages::usage_json(JSON_USAGE), "{served}");
    }
    for denied in &found[2 * SPELLINGS.len() + REFUSED.len()..] {
        assert_eq!(denied["rule"], "intercept.paths.deny[0]", "{denied}");
        let error = denied["error"].as_str().unwrap_or_else(|| panic!("an error: {denied}"));
        assert!(error.contains("path /v1/messages/count_tokens "), "the canonical path decided: {denied}");
    }
    let input = setup.gateway.metric(&tokens_sample(MODEL, "backend", "input")).await;
    assert_eq!(input, (SPELLINGS.len() as u64 * JSON_USAGE.0) as f64, "each spelling metered once");
}

/// `every_spelling_is_one_path` over HTTP/1.1 on one keep-alive tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_is_one_path_inside_an_http1_tunnel() {
    let setup = paths_setup().await;
    let client = Client::http1_tunnel(&setup).await;
    every_spelling_is_one_path(&setup, client, "intercepted").await;
}

/// `every_spelling_is_one_path` over h2 inside a tunnel (hyper's client sends each spelling as `:path`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_is_one_path_inside_an_h2_tunnel() {
    let setup = paths_setup().await;
    let client = Client::h2_tunnel(&setup).await;
    every_spelling_is_one_path(&setup, client, "intercepted").await;
}

/// `every_spelling_is_one_path` on one keep-alive gateway connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_is_one_path_on_a_gateway_listener() {
    let setup = paths_setup().await;
    let client = Client::gateway(&setup).await;
    every_spelling_is_one_path(&setup, client, "gateway").await;
}

/// Inside the tunnel for api.anthropic.com, a request that names another host anywhere is 421 and reaches nothing:
/// over HTTP/1.1 a `Host` of another name or port, or an absolute-form target for another host under the right
/// `Host`; over h2 a `host` header naming another host under the right `:authority`, or another `:authority`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_naming_another_host_inside_a_tunnel_is_misdirected() {
    let setup = paths_setup().await;
    let body = message(MODEL, 64);
    let mut tls = setup.tunnel_as(Some(&basic(ALICE.name, ALICE.password))).await;
    let mut buf = Vec::new();
    let version = "anthropic-version: 2023-06-01";
    for (target, host) in [
        ("/v1/messages", "Host: other.example"),
        ("/v1/messages", "Host: api.anthropic.com:8443"),
        ("/v1/messages", "Host: api.anthropic.com.evil.example"),
        ("https://other.example/v1/messages", "Host: api.anthropic.com"),
    ] {
        let response = send(&mut tls, &request("POST", target, &[host, version], body.as_bytes()), &mut buf).await;
        assert_api_error(&response, 421, "invalid_request_error", None);
    }
    let mut h2 = h2_tunnel(&setup, &basic(ALICE.name, ALICE.password)).await;
    let right = format!("https://{API_HOST}/v1/messages");
    for (uri, host) in [(right.as_str(), Some("other.example")), ("https://other.example/v1/messages", None)] {
        let mut headers = vec![("anthropic-version", "2023-06-01")];
        headers.extend(host.map(|host| ("host", host)));
        let response = h2_send(&mut h2, "POST", uri, &headers, &body).await;
        let text = assert_api_error(&response, 421, "invalid_request_error", None);
        assert!(text.contains("other.example"), "{text}");
    }
    // The same connections still serve requests for their own host.
    let served = h2_send(&mut h2, "POST", &right, &[("anthropic-version", "2023-06-01")], &body).await;
    assert_eq!(served.status, 200, "{served:?}");
    assert_eq!(setup.stub.requests().len(), 1, "no misdirected request reached the stub");
    let records = setup.gateway.audit().await;
    let statuses: Vec<_> = records_of(&records, "intercepted").iter().map(|r| r["status"].as_u64()).collect();
    assert_eq!(statuses, [Some(421); 6].into_iter().chain([Some(200)]).collect::<Vec<_>>(), "{records:#?}");
    let misdirected =
        "tollgate_requests_total{decision=\"error\",kind=\"intercepted\",listener=\"proxy\",reason=\"misdirected\"}";
    assert_eq!(setup.gateway.metric(misdirected).await, 6.0);
}

/// A CONNECT inside an intercepted tunnel would open a tunnel inside the tunnel and carry bytes past every check:
/// it is refused with 400 and reaches nothing, and the connection goes on serving requests for its host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_inside_a_tunnel_is_refused() {
    let setup = paths_setup().await;
    let mut tls = setup.tunnel_as(Some(&basic(ALICE.name, ALICE.password))).await;
    let mut buf = Vec::new();
    let connect = format!("CONNECT {API_HOST}:443 HTTP/1.1\r\nHost: {API_HOST}:443\r\n\r\n");
    let response = send(&mut tls, connect.as_bytes(), &mut buf).await;
    let text = assert_api_error(&response, 400, "invalid_request_error", None);
    assert!(text.contains("CONNECT is not served here"), "{text}");
    assert!(setup.stub.requests().is_empty(), "nothing reached the stub");
    let records = setup.gateway.audit().await;
    let refused: Vec<_> = records_of(&records, "intercepted").iter().map(|r| r["method"].clone()).collect();
    assert_eq!(refused, [Value::from("CONNECT")], "{records:#?}");
}

/// Query strings reach the upstream and nothing else: through every door of the real binary (a gateway listener,
/// an intercepted tunnel, an absolute-form request to the model host, a plain absolute-form request, refusals of a
/// denied and of a malformed path), no secret-looking query value appears in the audit file or the log, which
/// name the paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_strings_reach_neither_the_audit_record_nor_the_log() {
    let stub = MessagesStub::start().await;
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let parts = Parts { allow: &["127.0.0.1"], allow_private: &["127.0.0.0/8"], ..Parts::default() };
    let audit = dir.path().join("audit.jsonl");
    let config = format!(
        "{LISTENERS}admin: {{bind: \"127.0.0.1:0\"}}\naudit: {{file: {{path: \"{}\"}}}}\nstate: {{path: \"{}\"}}\n{}",
        audit.display(),
        dir.path().join("state").display(),
        doors_config(&stub, dir.path(), &parts)
    );
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(&path, config).expect("write the config");
    let tollgate = Tollgate::start(&path, Stderr::Drained).await;

    let body = message(MODEL, 64);
    let gateway = tollgate.listener("gateway");
    let version = "anthropic-version: 2023-06-01";
    let on_gateway =
        |target: &str| request("POST", target, &["Host: tollgate.test", version, "Connection: close"], body.as_bytes());
    let served = exchange_until_closed(gateway, &on_gateway("/v1/messages?beta=true&key=SECRET-GATEWAY")).await;
    assert_eq!(served.status, 200, "{served:?}");
    let malformed = exchange_until_closed(gateway, &on_gateway("/v1%2Fmessages?key=SECRET-MALFORMED")).await;
    assert_eq!(malformed.status, 400, "{malformed:?}");

    let tcp = connect(tollgate.listener("proxy"), API_HOST, None).await;
    let ca = dir.path().join("ca.pem");
    let mut tls = handshake(tcp, API_HOST, trusting(&ca, &[b"http/1.1"])).await.expect("TLS inside the tunnel");
    let mut buf = Vec::new();
    let inside =
        send(&mut tls, &request("POST", "/v1/messages?token=SECRET-TUNNEL", &SDK_HEADERS, body.as_bytes()), &mut buf)
            .await;
    assert_eq!(inside.status, 200, "{inside:?}");
    let denied =
        send(&mut tls, &request("GET", "/internal/admin?token=SECRET-DENIED", &SDK_HEADERS, b""), &mut buf).await;
    assert_eq!(denied.status, 403, "{denied:?}");
    tls.shutdown().await.expect("close the tunnel");
    drop(tls);

    let proxy = tollgate.listener("proxy");
    let absolute = exchange_until_closed(
        proxy,
        &absolute_post(&format!("https://{API_HOST}/v1/messages?token=SECRET-ABSOLUTE"), &body, &[]),
    )
    .await;
    assert_eq!(absolute.status, 200, "{absolute:?}");
    let url = origin.url("/plain/path?token=SECRET-FORWARD");
    let plain =
        exchange_until_closed(proxy, format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await;
    assert_eq!(plain.status, 200, "{plain:?}");

    let queries: Vec<String> = stub.requests().iter().map(|seen| seen.path_and_query.clone()).collect();
    assert_eq!(
        queries,
        [
            "/v1/messages?beta=true&key=SECRET-GATEWAY",
            "/v1/messages?token=SECRET-TUNNEL",
            "/v1/messages?token=SECRET-ABSOLUTE"
        ],
        "the queries go upstream"
    );
    assert!(
        origin.request_heads()[0].starts_with("GET /plain/path?token=SECRET-FORWARD "),
        "{:?}",
        origin.request_heads()
    );

    let log = tollgate.stop().await;
    let audit = std::fs::read_to_string(&audit).expect("the audit file");
    for (place, text) in [("log", &log), ("audit file", &audit)] {
        for path in ["/v1/messages", "/internal/admin", "/plain/path", "/v1%2Fmessages"] {
            assert!(text.contains(path), "the {place} names {path}:\n{text}");
        }
        assert!(!text.contains("SECRET-"), "a query value reached the {place}:\n{text}");
    }
}

// ---- 4. Identity ends when its credential does ----

const ISSUER: &str = "https://idp.test";
const JWT_SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

/// `auth` verifying HS256 tokens with no leeway, group `grp-backend` mapped to team backend.
fn jwt_auth() -> String {
    format!(
        "auth:\n  anonymous: deny\n  jwt: {{issuer: \"{ISSUER}\", audience: tollgate, hs256_secret: \"{JWT_SECRET}\", \
         user_claim: email, groups_claim: groups, leeway: 0s}}\n  group_teams: {{grp-backend: backend}}\n"
    )
}

/// An HS256 token for `email` in group `grp-backend` that expires at `expires`.
fn token(email: &str, expires: SystemTime) -> String {
    let exp = expires.duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    let claims = json!({"iss": ISSUER, "aud": "tollgate", "exp": exp, "iat": exp - 3600, "email": email,
                        "groups": ["grp-backend"]});
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(JWT_SECRET.as_bytes())).expect("sign")
}

/// A JWT principal ends at its `exp` by the gateway's clock, on connections opened before: a keep-alive
/// forward-proxy connection (407 with the challenge), an intercepted tunnel (401 `authentication_error`) and a
/// gateway keep-alive connection (401) each serve requests until the clock reaches `exp`, and refuse the next one
/// from that instant, without reaching the origin or the stub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_principal_is_refused_from_its_exp_on_open_connections() {
    let clock = TestClock::at("2030-06-01T12:00:00Z");
    let origin = Origin::start().await;
    let auth = jwt_auth();
    let parts = Parts {
        auth: &auth,
        allow: &["127.0.0.1"],
        allow_private: &["127.0.0.0/8"],
        extra: "teams: {backend: {}}\n",
        ..Parts::default()
    };
    let setup = start(parts, with_clock(clock.clone())).await;
    let expires = clock.time() + Duration::from_secs(600);
    let token = token("jay@corp.example", expires);

    let mut forward = TcpStream::connect(setup.gateway.proxy).await.expect("connect");
    let get = format!("GET {} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Bearer {token}\r\n\r\n", origin.url("/kept"));
    let mut tunnel = setup.tunnel_as(Some(&format!("Bearer {token}"))).await;
    let (mut tunnel_buf, mut gateway_buf) = (Vec::new(), Vec::new());
    let inside = request("POST", "/v1/messages", &SDK_HEADERS, message(MODEL, 64).as_bytes());
    let mut gateway = TcpStream::connect(setup.gateway.listener("gateway")).await.expect("connect");
    let bearer = format!("Authorization: Bearer {token}");
    let at_gateway = request(
        "POST",
        "/v1/messages",
        &["Host: tollgate.test", &bearer, "anthropic-version: 2023-06-01"],
        message(MODEL, 64).as_bytes(),
    );

    for step in [Duration::ZERO, Duration::from_secs(599)] {
        clock.advance(step);
        forward.write_all(get.as_bytes()).await.expect("write");
        assert_eq!(common::read_response(&mut forward).await.status, 200, "{step:?} before exp");
        assert_eq!(send(&mut tunnel, &inside, &mut tunnel_buf).await.status, 200, "{step:?} before exp");
        assert_eq!(send(&mut gateway, &at_gateway, &mut gateway_buf).await.status, 200, "{step:?} before exp");
    }
    clock.advance(Duration::from_secs(1));
    assert_eq!(clock.time(), expires);
    forward.write_all(get.as_bytes()).await.expect("write");
    let refused = common::read_response(&mut forward).await;
    common::assert_refused(&refused, 407, "proxy_auth_required", None, "an expired token on a kept connection");
    assert!(refused.header("proxy-authenticate").is_some(), "{refused:?}");
    assert!(refused.json()["error"]["message"].as_str().unwrap_or("").contains("expired"), "{refused:?}");
    let refused = send(&mut tunnel, &inside, &mut tunnel_buf).await;
    let text = assert_api_error(&refused, 401, "authentication_error", None);
    assert!(text.contains("expired"), "{text}");
    let refused = send(&mut gateway, &at_gateway, &mut gateway_buf).await;
    let text = assert_api_error(&refused, 401, "authentication_error", None);
    assert!(text.contains("expired"), "{text}");

    assert_eq!(origin.request_heads().len(), 2, "the refused request did not reach the origin");
    assert_eq!(setup.stub.requests().len(), 4, "the refused requests did not reach the stub");
}

/// A pass-through tunnel opened with a JWT is cut when the token expires: the cut is set at open, from the
/// gateway's clock (here in 2030, far from the real time), two seconds ahead. The tunnel carries bytes until then;
/// its record is a deny saying the credential expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spliced_tunnel_opened_with_a_jwt_is_cut_when_the_token_expires() {
    let clock = TestClock::at("2030-06-01T12:00:00Z");
    let echo = common::Echo::start().await;
    let yaml = format!("{}teams: {{backend: {{}}}}\n{}", jwt_auth(), common::LOOPBACK_POLICY);
    let mut gateway = TestGateway::start_with_clock(&yaml, clock.clone()).await;
    let token = token("jay@corp.example", clock.time() + Duration::from_secs(2));
    let header = format!("Proxy-Authorization: Bearer {token}");
    let (mut tunnel, response) =
        common::exchange_keep(gateway.proxy, common::connect_request(&echo.address.to_string(), &[&header]).as_bytes())
            .await;
    assert_eq!(response.status, 200, "{response:?}");
    tunnel.write_all(b"ping").await.expect("write into the tunnel");
    assert_eq!(common::read_exact_bytes(&mut tunnel, 4).await, b"ping");
    assert!(common::closed_by_peer(&mut tunnel).await, "the tunnel is cut when the token expires");

    let records = gateway.shutdown_and_audit().await;
    assert_eq!(records.len(), 1, "{records:#?}");
    let record = &records[0];
    assert_eq!((record["kind"].as_str(), record["user"].as_str()), (Some("connect"), Some("jay@corp.example")));
    assert_eq!((record["decision"].as_str(), record["status"].as_u64()), (Some("deny"), Some(200)), "{record:#}");
    assert!(record["error"].as_str().is_some_and(|e| e.contains("expired")), "{record:#}");
    assert_eq!((record["bytes_up"].as_u64(), record["bytes_down"].as_u64()), (Some(4), Some(4)), "{record:#}");
}

/// The `auth` section of the reload test: alice with the hash `alice`, bob (unless `with_bob` is false) and carol,
/// all in team backend. The hashes are made once: a reload that keeps a user's hash keeps the user's sessions.
fn reload_auth(alice: &str, with_bob: bool, hashes: &Hashes) -> String {
    let mut text = format!(
        "auth:\n  anonymous: deny\n  users:\n    - {{name: alice, password_hash: \"{alice}\", teams: [backend]}}\n"
    );
    if with_bob {
        text.push_str(&format!("    - {{name: bob, password_hash: \"{}\", teams: [backend]}}\n", hashes.bob));
    }
    text.push_str(&format!("    - {{name: carol, password_hash: \"{}\", teams: [backend]}}\n", hashes.carol));
    text
}

/// argon2id hashes of the reload test's passwords.
struct Hashes {
    alice: String,
    alice_new: String,
    bob: String,
    carol: String,
}

/// The connections one user holds open across the reload.
struct Open {
    user: &'static str,
    tunnel: tokio_rustls::client::TlsStream<TcpStream>,
    tunnel_buf: Vec<u8>,
    forward: TcpStream,
    gateway: TcpStream,
    gateway_buf: Vec<u8>,
    /// An absolute-form GET for the origin, with the user's Basic credentials.
    get: String,
    /// A Messages request for the gateway listener, with the user's key.
    api_call: Vec<u8>,
}

/// A Basic user a reload removes (bob), or whose password it changes (alice), is refused on the next request of
/// connections opened before: an intercepted tunnel is closed (or, had its request got in first, answered 401) and
/// its request reaches nothing; a keep-alive forward-proxy connection gets 407; a keep-alive gateway connection
/// 401. Carol, whom the reload leaves alone, is served on all of hers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_a_reload_removes_or_repasswords_is_refused_on_open_connections() {
    const TOKEN: &str = "admin-token-for-tests";
    let hashes = Hashes {
        alice: common::hash("alice-password"),
        alice_new: common::hash("alice-new-password"),
        bob: common::hash("bob-password"),
        carol: common::hash("carol-password"),
    };
    let stub = MessagesStub::start().await;
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().to_owned();
    let file = root.join("tollgate.yaml");
    let write = |auth: &str| {
        let parts = Parts {
            auth,
            allow: &["127.0.0.1"],
            allow_private: &["127.0.0.0/8"],
            extra: "teams: {backend: {}}\n",
            ..Parts::default()
        };
        let text = format!(
            "{LISTENERS}admin: {{bind: \"127.0.0.1:0\", token: \"{TOKEN}\"}}\naudit: {{file: {{path: \"{}\"}}}}\n\
             state: {{path: \"{}\"}}\n{}",
            root.join("audit.jsonl").display(),
            root.join("state").display(),
            doors_config(&stub, &root, &parts)
        );
        std::fs::write(&file, text).expect("write the config file");
    };
    write(&reload_auth(&hashes.alice, true, &hashes));
    let options = tollgate::app::Options { watch_interval: None, ..Default::default() };
    let gateway = TestGateway::start_file(&file, dir, options).await;
    let ca = root.join("ca.pem");

    let inside = request("POST", "/v1/messages", &SDK_HEADERS, message(MODEL, 64).as_bytes());
    let mut open = Vec::new();
    for (user, password) in [("alice", "alice-password"), ("bob", "bob-password"), ("carol", "carol-password")] {
        let tcp = connect(gateway.proxy, API_HOST, Some(&basic(user, password))).await;
        let tunnel = handshake(tcp, API_HOST, trusting(&ca, &[b"http/1.1"])).await.expect("TLS inside the tunnel");
        let key = format!("x-api-key: {user}:{password}");
        let mut connections = Open {
            user,
            tunnel,
            tunnel_buf: Vec::new(),
            forward: TcpStream::connect(gateway.proxy).await.expect("connect"),
            gateway: TcpStream::connect(gateway.listener("gateway")).await.expect("connect"),
            gateway_buf: Vec::new(),
            get: format!(
                "GET {} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {}\r\n\r\n",
                origin.url(&format!("/{user}")),
                basic(user, password)
            ),
            api_call: request(
                "POST",
                "/v1/messages",
                &["Host: tollgate.test", &key, "anthropic-version: 2023-06-01"],
                message(MODEL, 64).as_bytes(),
            ),
        };
        assert_eq!(send(&mut connections.tunnel, &inside, &mut connections.tunnel_buf).await.status, 200, "{user}");
        connections.forward.write_all(connections.get.as_bytes()).await.expect("write");
        assert_eq!(common::read_response(&mut connections.forward).await.status, 200, "{user}");
        let answer = send(&mut connections.gateway, &connections.api_call, &mut connections.gateway_buf).await;
        assert_eq!(answer.status, 200, "{user}: {answer:?}");
        open.push(connections);
    }
    assert_eq!(stub.requests().len(), 6);

    write(&reload_auth(&hashes.alice_new, false, &hashes));
    let reloaded = common::admin(&gateway, "POST", "/admin/reload", Some(&format!("Bearer {TOKEN}"))).await;
    assert_eq!(reloaded.status, 200, "{reloaded:?}");
    assert_eq!(reloaded.json()["tunnels_revoked"], 2, "alice's and bob's tunnels: {reloaded:?}");

    for connections in &mut open {
        let user = connections.user;
        connections.forward.write_all(connections.get.as_bytes()).await.expect("write");
        let forwarded = common::read_response(&mut connections.forward).await;
        let at_gateway = send(&mut connections.gateway, &connections.api_call, &mut connections.gateway_buf).await;
        if user == "carol" {
            assert_eq!(forwarded.status, 200, "{forwarded:?}");
            assert_eq!(at_gateway.status, 200, "{at_gateway:?}");
            let inside = send(&mut connections.tunnel, &inside, &mut connections.tunnel_buf).await;
            assert_eq!(inside.status, 200, "{inside:?}");
            continue;
        }
        common::assert_refused(&forwarded, 407, "proxy_auth_required", None, user);
        assert_api_error(&at_gateway, 401, "authentication_error", None);
        let _ = connections.tunnel.write_all(&inside).await;
        let _ = connections.tunnel.flush().await;
        while read_more(&mut connections.tunnel, &mut connections.tunnel_buf).await {}
        let answer = String::from_utf8_lossy(&connections.tunnel_buf);
        assert!(
            answer.is_empty() || (answer.starts_with("HTTP/1.1 401") && answer.contains("authentication_error")),
            "{user}'s tunnel: closed, or a 401: {answer}"
        );
    }
    assert_eq!(stub.requests().len(), 8, "only carol's requests after the reload reached the stub");
    assert_eq!(origin.request_heads().len(), 4, "only carol's request after the reload reached the origin");
    let fresh = common::get_as(gateway.proxy, &origin.url("/fresh"), &basic("alice", "alice-new-password")).await;
    assert_eq!(fresh.status, 200, "alice's new password works: {fresh:?}");
}
