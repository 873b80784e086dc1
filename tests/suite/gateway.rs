//! `mode: gateway` listeners end to end: real clients (raw sockets, curl, the Python `anthropic` SDK) send
//! origin-form Messages API requests to tollgate, which identifies them (a per-user key `USER:PASSWORD` as
//! `x-api-key` or as a bearer, an HS256 JWT), replaces their credential with the upstream's API key and routes them to the Messages
//! stub (by listener, or by the team's region), streaming the answers back unchanged and metering their usage.

use crate::common;

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use common::gateway::*;
use common::messages::{
    self, anthropic_client, merged_usage, sse_events, usage_of, MessagesStub, COUNT_TOKENS, JSON_TEXT, JSON_USAGE,
    MODEL, MODELS, STREAM_EVENTS, STREAM_TEXT, STREAM_USAGE,
};
use common::pki::Pki;
use common::{curl, metric_value, TestGateway};

/// A password with the characters that break naive parsing (a ':' among them).
const ALICE: User = User { name: "alice", password: "al1ce:pass word", teams: &["backend"] };
const BOB: User = User { name: "bob", password: "b0b-secret-key", teams: &["frontend"] };
const EVE: User = User { name: "eve", password: "eve-in-the-eu", teams: &["eu-team"] };
/// The key tollgate sends upstream in place of the client's credential.
const UPSTREAM_KEY: &str = "sk-upstream";

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "tollgate";
const JWT_SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

/// Users alice (backend) and bob (frontend), no anonymous access, every gateway request routed to `stub`.
fn config(stub: &MessagesStub, extra: &str) -> String {
    format!(
        "auth:\n  anonymous: deny\n{}{extra}teams: {{backend: {{}}, frontend: {{}}}}\npolicy: {{default: deny}}\n{}\
         routing:\n  - {{when: {{listener: gateway}}, to: stub}}\n",
        users_yaml(&[&ALICE, &BOB]),
        upstreams_yaml(&[("stub", stub, UPSTREAM_KEY)]),
    )
}

async fn start(stub: &MessagesStub, extra: &str) -> TestGateway {
    start_gateway(&config(stub, extra), Default::default()).await
}

fn jwt_config() -> String {
    format!(
        "  jwt: {{issuer: \"{ISSUER}\", audience: {AUDIENCE}, hs256_secret: \"{JWT_SECRET}\", user_claim: email, groups_claim: groups}}\n  group_teams: {{grp-backend: backend}}\n"
    )
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

/// An HS256 token for `email` in groups `grp-unmapped` and `grp-backend`, signed with `secret`.
fn jwt(email: &str, secret: &str) -> String {
    let claims = json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600, "iat": now(), "email": email,
                        "groups": ["grp-unmapped", "grp-backend"]});
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).expect("sign")
}

/// Checks what the stub received for one allowed request: the upstream key, no client credential, and no
/// `secret` anywhere.
fn assert_upstream_credentials(seen: &messages::Seen, secret: &str) {
    assert_eq!(seen.header_str("x-api-key").as_deref(), Some(UPSTREAM_KEY), "{seen:?}");
    assert_eq!(seen.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("x-api-key")).count(), 1, "{seen:?}");
    assert!(seen.header("authorization").is_none(), "the client's Authorization was forwarded: {seen:?}");
    assert_not_forwarded(seen, secret);
}

/// Checks the audit record of an allowed, metered JSON message.
fn assert_metered_record(record: &Value, user: &str, team: &str, usage: messages::Usage) {
    assert_eq!(record["kind"], "gateway", "{record}");
    assert_eq!(record["listener"], "gateway", "{record}");
    assert_eq!(record["decision"], "allow", "{record}");
    assert_eq!(record["status"], 200, "{record}");
    assert_eq!(record["user"], user, "{record}");
    assert_eq!(record["team"], team, "{record}");
    assert_eq!(record["method"], "POST", "{record}");
    assert_eq!(record["path"], "/v1/messages", "{record}");
    assert_eq!(record["upstream"], "stub", "{record}");
    assert_eq!(record["model"], MODEL, "{record}");
    assert_eq!(audit_usage(record), usage, "{record}");
}

/// `x-api-key: USER:PASSWORD` identifies the user; the stub receives the upstream's key and nothing of the client's
/// credential, and the audit record names the user, the upstream, the model and the exact usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_user_key_is_replaced_by_the_upstream_key() {
    let stub = MessagesStub::start().await;
    let gateway = start(&stub, "").await;

    let response = send(gateway.listener("gateway"), &messages_call(&ALICE.api_key(), MODEL, false)).await;
    assert_eq!(response.status, 200, "{response:?}");
    let message = response.json();
    assert_eq!(message["content"][0]["text"], JSON_TEXT, "{response:?}");
    assert_eq!(usage_of(&message["usage"]), JSON_USAGE);

    let requests = stub.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_upstream_credentials(&requests[0], ALICE.password);
    assert_eq!(requests[0].path_and_query, "/v1/messages");

    let audit = gateway.audit().await;
    assert_metered_record(only_gateway_record(&audit), "alice", "backend", JSON_USAGE);
}

/// The Python SDK sends `ANTHROPIC_API_KEY` as `Authorization: Bearer KEY`: `USER:PASSWORD` there identifies the
/// user, and neither the header nor the password reaches the stub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_bearer_key_is_replaced_by_the_upstream_key() {
    let stub = MessagesStub::start().await;
    let gateway = start(&stub, "").await;
    let base_url = format!("http://{}", gateway.listener("gateway"));

    let key = format!("{}:{}", BOB.name, BOB.password);
    let result =
        anthropic_client("create", MODEL, &[("ANTHROPIC_BASE_URL", &base_url), ("ANTHROPIC_API_KEY", &key)]).await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["status"], 200, "{result}");
    assert_eq!(result["text"], JSON_TEXT, "{result}");
    assert_eq!(usage_of(&result["usage"]), JSON_USAGE, "{result}");

    let requests = stub.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_upstream_credentials(&requests[0], BOB.password);
    // The SDK's own headers pass.
    assert_eq!(requests[0].header_str("x-stainless-lang").as_deref(), Some("python"), "{:?}", requests[0]);
    assert!(requests[0].header("anthropic-version").is_some(), "{:?}", requests[0]);

    let audit = gateway.audit().await;
    assert_metered_record(only_gateway_record(&audit), "bob", "frontend", JSON_USAGE);
}

/// With `auth.jwt`, an HS256 token in `Authorization: Bearer` names the user (the e-mail claim) and the team (its
/// groups through `group_teams`); the token is not forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hs256_jwt_identifies_the_user_and_team() {
    let stub = MessagesStub::start().await;
    let gateway = start(&stub, &jwt_config()).await;
    let token = jwt("carol@corp.example", JWT_SECRET);

    let credential = format!("Authorization: Bearer {token}");
    let response = send(gateway.listener("gateway"), &messages_call(&credential, MODEL, false)).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(usage_of(&response.json()["usage"]), JSON_USAGE);

    let requests = stub.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_upstream_credentials(&requests[0], &token);

    let audit = gateway.audit().await;
    assert_metered_record(only_gateway_record(&audit), "carol@corp.example", "backend", JSON_USAGE);
}

/// Wrong credentials of each kind get 401 `authentication_error` in the Anthropic shape, never reach the stub, are
/// counted in `tollgate_auth_failures_total` by method and audited as denials. A key must name its user: a user's
/// real password alone is refused too (finding its user would cost an argon2id check per configured user), with
/// a message that says how to write the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_refused_with_401_and_reach_nothing() {
    let stub = MessagesStub::start().await;
    let gateway = start(&stub, &jwt_config()).await;
    let address = gateway.listener("gateway");

    let wrong_jwt =
        format!("Authorization: Bearer {}", jwt("carol@corp.example", "another-secret-of-at-least-32-bytes"));
    let cases = [
        ("x-api-key: alice:not-her-password".to_owned(), "a wrong password for a known user"),
        ("x-api-key: nobody:not-anyones-password".to_owned(), "a user name no one has"),
        ("x-api-key: not-anyones-password".to_owned(), "a key without a user name"),
        ("Authorization: Bearer not-anyones-password".to_owned(), "a bearer without a user name"),
        (format!("x-api-key: {}", BOB.password), "bob's real password without his user name"),
        (wrong_jwt, "a JWT signed with another secret"),
    ];
    for (credential, context) in &cases {
        let response = send(address, &messages_call(credential, MODEL, false)).await;
        let message = assert_api_error(&response, 401, "authentication_error", None);
        let malformed = context.contains("without");
        assert_eq!(message.contains("USER:PASSWORD"), malformed, "{context}: {message}");
    }
    assert!(stub.requests().is_empty(), "refused requests reached the stub: {:?}", stub.requests());
    assert_eq!(stub.connection_count(), 0, "tollgate connected to the stub");

    let metrics = gateway.metrics().await;
    assert_eq!(metric_value(&metrics, "tollgate_auth_failures_total{method=\"basic\"}"), 5.0, "{metrics}");
    assert_eq!(metric_value(&metrics, "tollgate_auth_failures_total{method=\"jwt\"}"), 1.0, "{metrics}");
    let denied = "tollgate_requests_total{decision=\"deny\",kind=\"gateway\",listener=\"gateway\",";
    assert_eq!(metric_sum(&metrics, denied), 6.0, "{metrics}");

    let audit = gateway.audit().await;
    let records = gateway_records(&audit);
    assert_eq!(records.len(), 6, "{audit:#?}");
    for record in records {
        assert_eq!((record["decision"].as_str(), record["status"].as_u64()), (Some("deny"), Some(401)), "{record}");
        assert!(record["user"].is_null(), "{record}");
        assert!(record["upstream"].is_null(), "{record}");
        let text = record.to_string();
        for secret in ["not-her-password", "not-anyones-password", BOB.password] {
            assert!(!text.contains(secret), "{record}");
        }
    }
}

/// Without credentials and with `anonymous: deny`, a request is refused with 401 and never forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credentials_with_anonymous_deny_is_401() {
    let stub = MessagesStub::start().await;
    let gateway = start(&stub, "").await;

    let body = messages::request_body(MODEL, false);
    let anonymous = request("POST", "/v1/messages", &["anthropic-version: 2023-06-01"], &body);
    let response = send(gateway.listener("gateway"), &anonymous).await;
    let message = assert_api_error(&response, 401, "authentication_error", None);
    assert!(message.contains("x-api-key"), "the message says how to authenticate: {message}");
    let response = send(gateway.listener("gateway"), &request("GET", "/v1/models", &[], "")).await;
    assert_api_error(&response, 401, "authentication_error", None);

    assert!(stub.requests().is_empty(), "{:?}", stub.requests());
    assert_eq!(gateway.metric("tollgate_auth_failures_total{method=\"none\"}").await, 2.0);
    let audit = gateway.audit().await;
    let statuses: Vec<_> = gateway_records(&audit).iter().map(|r| r["status"].as_u64()).collect();
    assert_eq!(statuses, [Some(401), Some(401)], "{audit:#?}");
}

/// A JSON message: every header the client sent reaches the stub with its value byte-identical and its name in lower
/// case, except Host and the credential; only Host and the upstream key are added, the body is byte-identical (query kept), and the
/// stub's answer comes back unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_message_passes_byte_identical_but_for_host_credentials_and_name_case() {
    let stub = MessagesStub::start().await;
    let gateway = start(&stub, "").await;

    // Key order, spacing and escapes a re-serialising proxy would change.
    let body = format!(
        "{{\"max_tokens\":64 , \"model\": \"{MODEL}\",\"messages\":[{{\"role\":\"user\",\"content\":\"caf\\u00e9 \u{1F600}\"}}]}}"
    );
    let api_key = ALICE.api_key();
    let sent = [
        api_key.as_str(),
        "Anthropic-Version: 2023-06-01",
        "anthropic-beta: interleaved-thinking-2025-05-14,context-1m-2025-08-07",
        "X-Claude-Code-Session-Id: 5e55-10n-Ab",
        "x-stainless-retry-count: 0",
        "Content-Type: application/json",
        "User-Agent: claude-cli/2.1.0 (external, cli)",
    ];
    let response = send(gateway.listener("gateway"), &request("POST", "/v1/messages?beta=true", &sent, &body)).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert!(response.header("request-id").is_some_and(|id| id.starts_with("req_stub_")), "{response:?}");
    assert_eq!(response.header("content-type").as_deref(), Some("application/json"), "{response:?}");
    let message = response.json();
    assert_eq!((message["id"].as_str(), message["model"].as_str()), (Some(messages::MESSAGE_ID), Some(MODEL)));

    let requests = stub.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let seen = &requests[0];
    assert_eq!((seen.method.as_str(), seen.path_and_query.as_str()), ("POST", "/v1/messages?beta=true"));
    assert_eq!(seen.body.as_ref(), body.as_bytes(), "the body arrives byte-identical");
    let mut added = headers_added(&sent, seen);
    added.sort();
    let mut expected = vec![
        ("content-length".to_owned(), body.len().to_string()),
        ("host".to_owned(), stub.authority()),
        ("x-api-key".to_owned(), UPSTREAM_KEY.to_owned()),
    ];
    expected.sort();
    assert_eq!(added, expected, "only Host and the upstream key differ (Content-Length is the client's)");
    assert_not_forwarded(seen, ALICE.password);

    let audit = gateway.audit().await;
    let record = only_gateway_record(&audit);
    assert_eq!(record["path"], "/v1/messages", "the audit path has no query: {record}");
    assert_eq!(record["bytes_up"], body.len(), "{record}");
    assert_eq!(record["bytes_down"], response.body.len(), "{record}");
}

/// `stream: true`: every SSE event is relayed, each in its own chunk as the stub flushed it, and the usage merged
/// from the stream is metered exactly; the SDK's stream reads the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_relayed_event_by_event_with_exact_usage() {
    let stub = MessagesStub::start().await;
    let gateway = start(&stub, "").await;
    let address = gateway.listener("gateway");

    let response = send(address, &messages_call(&ALICE.api_key(), MODEL, true)).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("content-type").as_deref(), Some("text/event-stream; charset=utf-8"));
    let split = messages::chunks(response.body.as_bytes());
    assert!(split.complete.is_some(), "a complete chunked body: {response:?}");
    let mut events = Vec::new();
    for chunk in &split.chunks {
        let text = std::str::from_utf8(chunk).expect("UTF-8 events");
        let one = sse_events(text);
        assert_eq!(one.len(), 1, "one whole event per chunk, as the stub flushed them: {text:?}");
        events.extend(one);
    }
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, STREAM_EVENTS);
    let text: String = events.iter().filter_map(|(_, data)| data["delta"]["text"].as_str()).collect();
    assert_eq!(text, STREAM_TEXT);
    assert_eq!(merged_usage(&events), STREAM_USAGE);

    let base_url = format!("http://{address}");
    let result = anthropic_client(
        "stream",
        MODEL,
        &[("ANTHROPIC_BASE_URL", &base_url), ("ANTHROPIC_API_KEY", &format!("alice:{}", ALICE.password))],
    )
    .await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["text"], STREAM_TEXT, "{result}");
    assert_eq!(usage_of(&result["usage"]), STREAM_USAGE, "{result}");

    assert_eq!(stub.requests().len(), 2);
    for seen in stub.requests() {
        assert_upstream_credentials(&seen, ALICE.password);
        assert_eq!(seen.json()["stream"], true);
    }
    let audit = gateway.audit().await;
    let records = gateway_records(&audit);
    assert_eq!(records.len(), 2, "{audit:#?}");
    for record in records {
        assert_metered_record(record, "alice", "backend", STREAM_USAGE);
        assert!(record["error"].is_null(), "a complete stream: {record}");
    }
    assert_eq!(
        gateway.metric("tollgate_tokens_total{model=\"claude-sonnet-4-5\",team=\"backend\",type=\"output\"}").await,
        2.0 * STREAM_USAGE.1 as f64
    );
}

/// `POST /v1/messages/count_tokens` is forwarded and answered (`{"input_tokens": 42}`), but not billed: its record
/// has the model and no usage or cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_tokens_is_forwarded_and_not_billed() {
    let stub = MessagesStub::start().await;
    let gateway = start(&stub, "").await;

    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Say hello"}]}).to_string();
    let headers =
        [ALICE.api_key(), "anthropic-version: 2023-06-01".to_owned(), "content-type: application/json".to_owned()];
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let response =
        send(gateway.listener("gateway"), &request("POST", "/v1/messages/count_tokens", &headers, &body)).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json(), json!({"input_tokens": COUNT_TOKENS}));

    let requests = stub.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path_and_query, "/v1/messages/count_tokens");
    assert_eq!(requests[0].body.as_ref(), body.as_bytes());
    assert_upstream_credentials(&requests[0], ALICE.password);

    let audit = gateway.audit().await;
    let record = only_gateway_record(&audit);
    assert_eq!((record["status"].as_u64(), record["path"].as_str()), (Some(200), Some("/v1/messages/count_tokens")));
    assert_eq!(record["upstream"], "stub", "{record}");
    assert_eq!(record["model"], MODEL, "{record}");
    assert!(record.get("usage").is_none(), "count_tokens is not billed: {record}");
    assert!(record.get("cost_usd").is_none(), "count_tokens is not billed: {record}");
}

/// `GET /v1/models` is forwarded with the upstream key and its list comes back unchanged; nothing is metered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_models_list_is_forwarded() {
    let stub = MessagesStub::start().await;
    let gateway = start(&stub, "").await;

    let api_key = ALICE.api_key();
    let response = send(
        gateway.listener("gateway"),
        &request("GET", "/v1/models?limit=20", &[&api_key, "anthropic-version: 2023-06-01"], ""),
    )
    .await;
    assert_eq!(response.status, 200, "{response:?}");
    let ids: Vec<String> = response.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, MODELS);

    let requests = stub.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!((requests[0].method.as_str(), requests[0].path_and_query.as_str()), ("GET", "/v1/models?limit=20"));
    assert_upstream_credentials(&requests[0], ALICE.password);

    let audit = gateway.audit().await;
    let record = only_gateway_record(&audit);
    assert_eq!((record["method"].as_str(), record["status"].as_u64()), (Some("GET"), Some(200)), "{record}");
    assert_eq!(record["upstream"], "stub", "{record}");
    assert!(record.get("usage").is_none() && record.get("model").is_none(), "{record}");
}

/// Routing by region: the route `{when: {region: eu}}` listed before the listener's sends a user of a team with
/// `region: eu` to `stub-eu` (with its own key), and everyone else to `stub`; the audit record says the region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_region_routes_to_its_regional_upstream() {
    let stub = MessagesStub::start().await;
    let stub_eu = MessagesStub::start().await;
    let yaml = format!(
        "auth:\n  anonymous: deny\n{}teams: {{backend: {{}}, eu-team: {{region: eu}}}}\npolicy: {{default: deny}}\n{}\
         routing:\n  - {{when: {{region: eu}}, to: stub-eu}}\n  - {{when: {{listener: gateway}}, to: stub}}\n",
        users_yaml(&[&ALICE, &EVE]),
        upstreams_yaml(&[("stub", &stub, UPSTREAM_KEY), ("stub-eu", &stub_eu, "sk-upstream-eu")]),
    );
    let gateway = start_gateway(&yaml, Default::default()).await;
    let address = gateway.listener("gateway");

    let response = send(address, &messages_call(&EVE.api_key(), MODEL, false)).await;
    assert_eq!(response.status, 200, "{response:?}");
    let response = send(address, &messages_call(&ALICE.api_key(), MODEL, false)).await;
    assert_eq!(response.status, 200, "{response:?}");

    let (eu, default) = (stub_eu.requests(), stub.requests());
    assert_eq!((eu.len(), default.len()), (1, 1), "eu: {eu:?}\ndefault: {default:?}");
    assert_eq!(eu[0].header_str("x-api-key").as_deref(), Some("sk-upstream-eu"));
    assert_eq!(eu[0].header_str("host"), Some(stub_eu.authority()));
    assert_not_forwarded(&eu[0], EVE.password);
    assert_eq!(default[0].header_str("x-api-key").as_deref(), Some(UPSTREAM_KEY));
    assert_not_forwarded(&default[0], ALICE.password);

    let audit = gateway.audit().await;
    let records = gateway_records(&audit);
    assert_eq!(records.len(), 2, "{audit:#?}");
    let eve = records.iter().find(|r| r["user"] == "eve").expect("eve's record");
    assert_eq!((eve["upstream"].as_str(), eve["region"].as_str()), (Some("stub-eu"), Some("eu")), "{eve}");
    assert_eq!(eve["team"], "eu-team");
    let alice = records.iter().find(|r| r["user"] == "alice").expect("alice's record");
    assert_eq!(alice["upstream"], "stub", "{alice}");
    assert!(alice["region"].is_null(), "alice's team has no region: {alice}");
}

/// A gateway listener behind TLS (the test PKI's `localhost` certificate), routed to a new stub.
async fn start_tls_gateway() -> (Pki, MessagesStub, TestGateway) {
    let pki = Pki::new();
    let stub = MessagesStub::start().await;
    let listener = format!(
        "listeners: [{{name: gateway, bind: \"127.0.0.1:0\", mode: gateway, tls: {{cert: \"{}\", key: \"{}\"}}}}]\n",
        pki.server.pem.display(),
        pki.server.key.display()
    );
    let gateway = start_full_with(&format!("{listener}{}", config(&stub, "")), Default::default()).await;
    (pki, stub, gateway)
}

/// A gateway listener behind TLS serves curl (verifying the listener's certificate) and forwards with the
/// upstream key; curl refuses the listener without the CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_gateway_serves_curl() {
    let (pki, stub, gateway) = start_tls_gateway().await;
    let port = gateway.listener("gateway").port();
    let url = format!("https://localhost:{port}/v1/messages");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let key = ALICE.api_key();
    let body = messages::request_body(MODEL, false);
    let ca = pki.ca.pem.display().to_string();
    let request = [
        "--resolve",
        &resolve,
        "-H",
        &key,
        "-H",
        "anthropic-version: 2023-06-01",
        "-H",
        "content-type: application/json",
        "--data-binary",
        &body,
        "-w",
        "\n%{http_version}",
        &url,
    ];

    let (code, _, stderr) = curl(&request).await;
    assert_ne!(code, 0, "curl must not trust the listener without the CA: {stderr}");

    let verified: Vec<&str> = ["--http1.1", "--cacert", &ca].into_iter().chain(request).collect();
    let (code, stdout, stderr) = curl(&verified).await;
    assert_eq!(code, 0, "{stderr}");
    let (json, version) = stdout.rsplit_once('\n').expect("the body, then the version");
    assert_eq!(version, "1.1");
    let message: Value = serde_json::from_str(json).expect("JSON message");
    assert_eq!(usage_of(&message["usage"]), JSON_USAGE);

    let requests = stub.requests();
    assert_eq!(requests.len(), 1, "only the verified curl reached the stub: {requests:?}");
    assert_upstream_credentials(&requests[0], ALICE.password);
    let audit = gateway.audit().await;
    assert_metered_record(only_gateway_record(&audit), "alice", "backend", JSON_USAGE);
}

/// A gateway listener behind TLS negotiates h2 with curl (`--http2`: ALPN `h2`) and serves the request over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_gateway_negotiates_h2_with_curl() {
    let (pki, stub, gateway) = start_tls_gateway().await;
    let port = gateway.listener("gateway").port();
    let url = format!("https://localhost:{port}/v1/messages");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let key = ALICE.api_key();
    let body = messages::request_body(MODEL, true);
    let ca = pki.ca.pem.display().to_string();
    let (code, stdout, stderr) = curl(&[
        "--http2",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "-H",
        &key,
        "-H",
        "anthropic-version: 2023-06-01",
        "-H",
        "content-type: application/json",
        "--data-binary",
        &body,
        "-w",
        "\n%{http_version}",
        &url,
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    let (events, version) = stdout.rsplit_once('\n').expect("the body, then the version");
    assert_eq!(version, "2", "curl --http2 should negotiate h2 with a TLS gateway listener (ALPN)");
    let events = sse_events(events);
    assert_eq!(events.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), STREAM_EVENTS);
    assert_eq!(merged_usage(&events), STREAM_USAGE);

    let requests = stub.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_upstream_credentials(&requests[0], ALICE.password);
    let audit = gateway.audit().await;
    assert_metered_record(only_gateway_record(&audit), "alice", "backend", STREAM_USAGE);
}

/// A plain gateway listener also speaks h2 with prior knowledge (curl `--http2-prior-knowledge`): the request is
/// served, streamed and metered the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_gateway_serves_h2_with_prior_knowledge() {
    let stub = MessagesStub::start().await;
    let gateway = start(&stub, "").await;
    let url = format!("http://{}/v1/messages", gateway.listener("gateway"));
    let key = ALICE.api_key();
    let body = messages::request_body(MODEL, true);
    let (code, stdout, stderr) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        &key,
        "-H",
        "anthropic-version: 2023-06-01",
        "-H",
        "content-type: application/json",
        "--data-binary",
        &body,
        "-w",
        "\n%{http_version}",
        &url,
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    let (events, version) = stdout.rsplit_once('\n').expect("the body, then the version");
    assert_eq!(version, "2");
    let events = sse_events(events);
    assert_eq!(events.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), STREAM_EVENTS);

    let requests = stub.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_upstream_credentials(&requests[0], ALICE.password);
    assert_eq!(requests[0].body.as_ref(), body.as_bytes());
    let audit = gateway.audit().await;
    assert_metered_record(only_gateway_record(&audit), "alice", "backend", STREAM_USAGE);
}

/// An `https://` upstream is verified with the upstream trust of the TLS issue: with its CA in
/// `upstream.trust.extra_ca` the request goes through; without it, the gateway answers 502 naming the
/// certificate problem, and nothing reaches the upstream.
#[tokio::test]
async fn an_https_upstream_is_verified_with_the_configured_trust() {
    let pki = Pki::new();
    let stub = MessagesStub::start_tls(pki.server.chain(), pki.server.private_key()).await;
    assert!(stub.url().starts_with("https://127.0.0.1:"), "{}", stub.url());
    let trusted = format!("upstream: {{trust: {{system_roots: false, extra_ca: [\"{}\"]}}}}\n", pki.ca.pem.display());
    let gateway = start(&stub, &trusted).await;
    let response = send(gateway.listener("gateway"), &messages_call(&ALICE.api_key(), MODEL, false)).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(usage_of(&response.json()["usage"]), JSON_USAGE);
    assert_eq!(stub.requests().len(), 1);

    let untrusted =
        format!("upstream: {{trust: {{system_roots: false, extra_ca: [\"{}\"]}}}}\n", pki.rogue_ca.pem.display());
    let gateway = start(&stub, &untrusted).await;
    let response = send(gateway.listener("gateway"), &messages_call(&ALICE.api_key(), MODEL, false)).await;
    let message = assert_api_error(&response, 502, "api_error", None);
    assert!(message.contains("TLS to upstream 127.0.0.1"), "{message}");
    assert_eq!(stub.requests().len(), 1, "the untrusted upstream got nothing");
    let record = only_gateway_record(&gateway.audit().await).clone();
    assert_eq!(record["status"], 502, "{record}");
    assert_eq!(record["decision"], "error", "{record}");
}

/// A compressed request body cannot be checked (model, DLP, budget): a gzip body is refused with 415
/// `invalid_request_error` naming the encoding, and never reaches the stub; `content-encoding: identity` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_request_body_is_refused_with_415() {
    let stub = MessagesStub::start().await;
    let gateway = start(&stub, "").await;
    let address = gateway.listener("gateway");

    let compressed = messages::gzip(messages::request_body(MODEL, false).as_bytes());
    let mut raw = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: tollgate.test\r\n{}\r\nanthropic-version: {ANTHROPIC_VERSION}\r\n\
         content-type: application/json\r\ncontent-encoding: gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        ALICE.api_key(),
        compressed.len()
    )
    .into_bytes();
    raw.extend_from_slice(&compressed);
    let refused = send(address, &raw).await;
    let message = assert_api_error(&refused, 415, "invalid_request_error", None);
    assert!(message.contains("Content-Encoding gzip") && message.contains("uncompressed"), "{message}");
    assert!(stub.requests().is_empty(), "{:?}", stub.requests());

    let (key, version) = (ALICE.api_key(), format!("anthropic-version: {ANTHROPIC_VERSION}"));
    let headers = [key.as_str(), &version, "content-type: application/json", "content-encoding: identity"];
    let plain = send(address, &request("POST", "/v1/messages", &headers, &messages::request_body(MODEL, false))).await;
    assert_eq!(plain.status, 200, "{plain:?}");
    let sample =
        "tollgate_requests_total{decision=\"error\",kind=\"gateway\",listener=\"gateway\",reason=\"compressed_body\"}";
    assert_eq!(gateway.metric(sample).await, 1.0);
}

/// A gateway-only deployment sets the request rules with `intercept: {hosts: []}`: its path rules and body limit
/// apply to gateway requests, and no interception CA is opened or created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_only_config_sets_paths_and_max_body_without_a_ca() {
    let stub = MessagesStub::start().await;
    let ca_dir = tempfile::tempdir().expect("temp dir");
    let (ca_pem, ca_key) = (ca_dir.path().join("ca.pem"), ca_dir.path().join("ca.key"));
    let intercept = format!(
        "intercept:\n  ca: {{cert: \"{}\", key: \"{}\"}}\n  hosts: []\n  max_body: 1KiB\n  paths: {{deny: [\"/v1/models\"]}}\n",
        ca_pem.display(),
        ca_key.display()
    );
    let gateway = start(&stub, &intercept).await;
    let address = gateway.listener("gateway");

    let models = send(address, &request("GET", "/v1/models", &[&ALICE.api_key()], "")).await;
    assert_api_error(&models, 403, "permission_error", Some("intercept.paths.deny[0]"));
    let big = messages::request_body(&"a".repeat(1100), false);
    let version = format!("anthropic-version: {ANTHROPIC_VERSION}");
    let too_large = send(address, &request("POST", "/v1/messages", &[&ALICE.api_key(), &version], &big)).await;
    assert_api_error(&too_large, 413, "request_too_large", None);
    let small = send(address, &messages_call(&ALICE.api_key(), MODEL, false)).await;
    assert_eq!(small.status, 200, "{small:?}");
    assert_eq!(stub.requests().len(), 1, "only the allowed request reached the stub");
    assert!(!ca_pem.exists() && !ca_key.exists(), "no CA without hosts to intercept");
}
