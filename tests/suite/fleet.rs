//! Telemetry egress and the fleet inventory. With `intercept.telemetry: drop`, Claude Code's telemetry calls inside
//! an intercepted tunnel are answered by the gateway and never reach the upstream (counted, recorded); with the
//! default `pass` they are forwarded. The fleet inventory records, per user, the clients (from `User-Agent`),
//! sessions and delivered settings of identified model requests, through an intercepted tunnel and a gateway
//! listener, shared by two `tollgate run` processes through a real `redis-server`, bounded in size, and shown by
//! `GET /admin/fleet` (admin token) and `tollgate fleet`.

use crate::common;

use serde_json::Value;

use common::intercept::{self, Intercepting, Parts};
use common::metric_value;

/// The telemetry calls of Claude Code, each with its `endpoint` label.
fn telemetry_calls() -> Vec<(&'static str, Vec<u8>)> {
    let batch = r#"{"events":[{"event_type":"ClaudeCodeInternalEvent","event_data":{}},{"event_type":"GrowthbookExperimentEvent","event_data":{}},{"event_type":"ClaudeCodeInternalEvent","event_data":{}}]}"#;
    vec![
        ("event_logging", intercept::post("/api/event_logging/v2/batch", batch, &[])),
        ("event_logging", intercept::post("/api/event_logging/batch", r#"{"events":[]}"#, &[])),
        ("metrics", intercept::post("/api/claude_code/metrics", r#"{"resource_attributes":{},"metrics":[]}"#, &[])),
        ("metrics_enabled", intercept::get("/api/claude_code/organizations/metrics_enabled", &[])),
        ("feature_flags", intercept::post("/api/eval/sdk-zAZezfDKGoZuXXKe", r#"{"attributes":{}}"#, &[])),
    ]
}

#[tokio::test]
async fn dropped_telemetry_is_answered_in_the_tunnel_and_never_forwarded() {
    let setup = Intercepting::start(Parts { intercept: &["telemetry: drop"], ..Parts::default() }).await;
    let mut tls = setup.tunnel().await;
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    for (endpoint, request) in telemetry_calls() {
        let response = intercept::send(&mut tls, &request, &mut buf).await;
        assert_eq!(response.status, 200, "{endpoint}: {response:?}");
        assert_eq!(response.header("content-type").as_deref(), Some("application/json"), "{endpoint}");
        answers.push(response.json());
    }
    assert_eq!(answers[0], serde_json::json!({"accepted_count": 3, "rejected_count": 0}));
    assert_eq!(answers[1], serde_json::json!({"accepted_count": 0, "rejected_count": 0}));
    assert_eq!(answers[2], serde_json::json!({}));
    assert_eq!(answers[3], serde_json::json!({"metrics_logging_enabled": false}));
    assert_eq!(answers[4]["features"], serde_json::json!({}));
    assert!(setup.stub.requests().is_empty(), "nothing reached the upstream: {:?}", setup.stub.requests());

    // The same tunnel still carries model requests to the upstream.
    let body = common::messages::request_body("claude-sonnet-4-5", false);
    let response = intercept::send(&mut tls, &intercept::messages_post(&body, &[]), &mut buf).await;
    assert_eq!(response.status, 200, "{response:?}");
    let seen: Vec<String> = setup.stub.requests().iter().map(|seen| seen.path_and_query.clone()).collect();
    assert_eq!(seen, ["/v1/messages"]);

    let metrics = setup.gateway.metrics().await;
    let dropped = |endpoint: &str| {
        metric_value(&metrics, &format!("tollgate_telemetry_dropped_total{{endpoint=\"{endpoint}\"}}"))
    };
    assert_eq!(
        (dropped("event_logging"), dropped("metrics"), dropped("metrics_enabled"), dropped("feature_flags")),
        (2.0, 1.0, 1.0, 1.0),
        "{metrics}"
    );
    assert_eq!(metric_value(&metrics, &intercept::requests_sample("deny", "telemetry_dropped")), 5.0, "{metrics}");

    let records = setup.gateway.audit().await;
    let dropped: Vec<&Value> =
        intercept::intercepted(&records).into_iter().filter(|r| r["rule"] == "intercept.telemetry").collect();
    assert_eq!(dropped.len(), 5, "{records:#?}");
    for record in dropped {
        assert_eq!(record["decision"], "deny", "{record:#}");
        assert_eq!(record["status"], 200, "{record:#}");
        assert_eq!(record["upstream"], Value::Null, "{record:#}");
        assert_eq!(record["user"], "dev", "{record:#}");
        assert_eq!(record["host"], intercept::API_HOST, "{record:#}");
    }
}

/// A dropped telemetry call runs the phases every request runs before it is answered: past the user's rate limit
/// it is refused (429) like any other request, not answered.
#[tokio::test]
async fn dropped_telemetry_runs_the_shared_phases_first() {
    let setup = Intercepting::start(Parts {
        intercept: &["telemetry: drop"],
        extra: "limits: {user: {rpm: 1}}\n",
        ..Parts::default()
    })
    .await;
    let mut tls = setup.tunnel().await;
    let mut buf = Vec::new();
    let calls = telemetry_calls();
    let first = intercept::send(&mut tls, &calls[2].1, &mut buf).await;
    assert_eq!(first.status, 200, "{first:?}");
    let second = intercept::send(&mut tls, &calls[2].1, &mut buf).await;
    assert_eq!(second.status, 429, "{second:?}");
    let metrics = setup.gateway.metrics().await;
    assert_eq!(metric_value(&metrics, "tollgate_telemetry_dropped_total{endpoint=\"metrics\"}"), 1.0, "{metrics}");
    assert!(setup.stub.requests().is_empty(), "{:?}", setup.stub.requests());
}

#[tokio::test]
async fn telemetry_passes_by_default() {
    let setup = Intercepting::start(Parts::default()).await;
    let mut tls = setup.tunnel().await;
    let mut buf = Vec::new();
    let calls = telemetry_calls();
    let response = intercept::send(&mut tls, &calls[0].1, &mut buf).await;
    // The stub serves only the Messages API: its own 404 shows the call reached it.
    assert_eq!(response.status, 404, "{response:?}");
    let seen: Vec<String> = setup.stub.requests().iter().map(|seen| seen.path_and_query.clone()).collect();
    assert_eq!(seen, ["/api/event_logging/v2/batch"]);
    let metrics = setup.gateway.metrics().await;
    assert!(!metrics.contains("tollgate_telemetry_dropped_total{"), "{metrics}");
}

// ---- the fleet inventory -------------------------------------------------------------------------------------

const TOKEN: &str = "fleet-admin-token";

/// alice (team core), bob and carol, with their passwords.
const USERS: [(&str, &str, &str); 3] =
    [("alice", "alice-pass", "core"), ("bob", "bob-pass", ""), ("carol", "carol-pass", "")];

fn password(user: &str) -> &'static str {
    USERS.iter().find(|(name, _, _)| *name == user).map(|(_, password, _)| *password).expect("a known user")
}

/// A proxy listener intercepting api.anthropic.com and a gateway listener, both routed to `stub`; the admin token;
/// the audit file and the interception CA in `dir`; `state` as the last section.
fn fleet_config(
    dir: &std::path::Path,
    name: &str,
    stub: &common::messages::MessagesStub,
    state: &str,
) -> std::path::PathBuf {
    let mut users = String::from("auth:\n  users:\n");
    for (user, password, team) in USERS {
        users.push_str(&format!(
            "    - {{name: {user}, password_hash: \"{}\", teams: [{team}]}}\n",
            common::hash(password)
        ));
    }
    let yaml = format!(
        "listeners:\n  - {{name: proxy, bind: \"127.0.0.1:0\"}}\n  - {{name: gateway, bind: \"127.0.0.1:0\", mode: gateway}}\n\
         admin: {{bind: \"127.0.0.1:0\", token: \"{TOKEN}\"}}\n\
         audit: {{file: {{path: \"{audit}\"}}}}\n\
         {users}teams:\n  core: {{}}\n\
         policy: {{default: deny, allow: [\"{host}\"]}}\n\
         upstreams: {{stub: {{url: \"{stub}\"}}}}\n\
         routing:\n  - {{when: {{host: {host}}}, to: stub}}\n  - {{when: {{listener: gateway}}, to: stub}}\n\
         intercept: {{ca: {{cert: \"{ca}\", key: \"{key}\"}}, hosts: [\"{host}\"]}}\n\
         pricing:\n  - {{model: \"*\", input: 5, output: 25, cache_write: 6, cache_read: 1}}\n{state}",
        audit = dir.join(format!("{name}-audit.jsonl")).display(),
        host = intercept::API_HOST,
        stub = stub.url(),
        ca = dir.join("ca.pem").display(),
        key = dir.join("ca.key").display(),
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("write the config");
    path
}

/// One Messages request of `user` inside a tunnel through `proxy`, from `user_agent` in `session`.
async fn through_tunnel(
    proxy: std::net::SocketAddr,
    ca: &std::path::Path,
    user: &str,
    user_agent: &str,
    session: &str,
) {
    let credentials = common::basic(user, password(user));
    let tcp = intercept::connect(proxy, intercept::API_HOST, Some(&credentials)).await;
    let mut tls = intercept::handshake(tcp, intercept::API_HOST, intercept::trusting(ca, &[b"http/1.1"]))
        .await
        .expect("TLS inside the tunnel");
    let agent = format!("User-Agent: {user_agent}");
    let session = format!("X-Claude-Code-Session-Id: {session}");
    let body = common::messages::request_body("claude-sonnet-4-5", false);
    let response =
        intercept::send(&mut tls, &intercept::messages_post(&body, &[&agent, &session]), &mut Vec::new()).await;
    assert_eq!(response.status, 200, "{user} through the tunnel: {response:?}");
}

/// One Messages request of `user` on the gateway listener, from `user_agent` in `session`.
async fn through_gateway(gateway: std::net::SocketAddr, user: &str, user_agent: &str, session: &str) {
    let key = format!("x-api-key: {user}:{}", password(user));
    let agent = format!("User-Agent: {user_agent}");
    let session = format!("X-Claude-Code-Session-Id: {session}");
    let headers = [key.as_str(), "anthropic-version: 2023-06-01", "content-type: application/json", &agent, &session];
    let body = common::messages::request_body("claude-sonnet-4-5", false);
    let response =
        common::gateway::send(gateway, &common::gateway::request("POST", "/v1/messages", &headers, &body)).await;
    assert_eq!(response.status, 200, "{user} on the gateway listener: {response:?}");
}

async fn admin_fleet(admin: std::net::SocketAddr, query: &str, authorization: Option<&str>) -> common::Response {
    let mut request = format!("GET /admin/fleet{query} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n");
    if let Some(value) = authorization {
        request.push_str(&format!("Authorization: {value}\r\n"));
    }
    request.push_str("\r\n");
    common::exchange(admin, request.as_bytes()).await
}

/// `/admin/fleet` as JSON, with the token.
async fn fleet_json(admin: std::net::SocketAddr, query: &str) -> Value {
    let response = admin_fleet(admin, query, Some(&format!("Bearer {TOKEN}"))).await;
    assert_eq!(response.status, 200, "{response:?}");
    response.json()
}

/// The listed user called `name`.
fn user<'a>(fleet: &'a Value, name: &str) -> &'a Value {
    fleet["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["user"] == name)
        .unwrap_or_else(|| panic!("no {name}: {fleet:#}"))
}

fn names(fleet: &Value) -> Vec<String> {
    fleet["users"].as_array().expect("users").iter().map(|u| u["user"].as_str().expect("a name").to_owned()).collect()
}

/// (client, version) of a listed user, most recently seen first.
fn clients(user: &Value) -> Vec<(String, String)> {
    let clients = user["clients"].as_array().expect("clients");
    clients
        .iter()
        .map(|c| (c["client"].as_str().unwrap().to_owned(), c["version"].as_str().unwrap().to_owned()))
        .collect()
}

fn pair(client: &str, version: &str) -> (String, String) {
    (client.to_owned(), version.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_records_users_clients_and_sessions_through_a_tunnel_and_a_gateway_listener() {
    let stub = common::messages::MessagesStub::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = fleet_config(dir.path(), "tollgate", &stub, "");
    let ca = dir.path().join("ca.pem");
    let options = tollgate::app::Options { watch_interval: None, ..tollgate::app::Options::default() };
    let gateway = common::TestGateway::start_file(&path, tempfile::tempdir().expect("state dir"), options).await;

    through_tunnel(gateway.proxy, &ca, "alice", "claude-cli/2.1.332 (external, cli)", "session-a1").await;
    through_tunnel(gateway.proxy, &ca, "alice", "claude-cli/2.1.332 (external, cli)", "session-a1").await;
    through_tunnel(gateway.proxy, &ca, "alice", "claude-cli/2.1.400 (external, cli)", "session-a2").await;
    through_gateway(gateway.listener("gateway"), "bob", "claude-cli/2.0.1 (external, sdk-cli)", "session-b1").await;

    // The token is required.
    assert_eq!(admin_fleet(gateway.admin, "", None).await.status, 401);
    assert_eq!(admin_fleet(gateway.admin, "", Some("Bearer wrong")).await.status, 401);
    assert_eq!(admin_fleet(gateway.admin, "?stale=maybe", Some(&format!("Bearer {TOKEN}"))).await.status, 400);

    let fleet = fleet_json(gateway.admin, "").await;
    assert_eq!(names(&fleet).len(), 2, "{fleet:#}");
    let alice = user(&fleet, "alice");
    assert_eq!(alice["teams"], serde_json::json!(["core"]));
    assert_eq!(alice["sessions"], 2, "two distinct sessions: {alice:#}");
    let mut seen = clients(alice);
    seen.sort();
    assert_eq!(seen, [pair("claude-cli", "2.1.332"), pair("claude-cli", "2.1.400")]);
    assert!(alice["first_seen"].as_str().is_some() && alice["last_seen"].as_str().is_some(), "{alice:#}");
    assert_eq!(alice["settings"], Value::Null);
    assert_eq!(alice["current"], Value::Null, "no managed settings: {alice:#}");
    let bob = user(&fleet, "bob");
    assert_eq!(clients(bob), [pair("claude-cli", "2.0.1")]);
    assert_eq!(bob["sessions"], 1);
    assert_eq!(fleet["managed_settings"], false);

    let table = admin_fleet(gateway.admin, "?format=table", Some(&format!("Bearer {TOKEN}"))).await;
    assert_eq!(table.header("content-type").as_deref(), Some("text/plain; charset=utf-8"));
    let rows: Vec<&str> = table.body.lines().collect();
    assert!(rows[1].starts_with("USER") && rows[1].contains("CURRENT"), "{}", table.body);
    assert_eq!(rows.len(), 5, "a title, a header and one row per user and client: {}", table.body);

    let metrics = gateway.metrics().await;
    let clients_sample = |version: &str| format!("tollgate_clients{{client=\"claude-cli\",version=\"{version}\"}}");
    assert_eq!(metric_value(&metrics, &clients_sample("2.1.332")), 1.0, "{metrics}");
    assert_eq!(metric_value(&metrics, &clients_sample("2.1.400")), 1.0, "{metrics}");
    assert_eq!(metric_value(&metrics, &clients_sample("2.0.1")), 1.0, "{metrics}");
    assert!(
        !metrics.contains("tollgate_managed_settings_current_ratio "),
        "absent without managed settings:\n{metrics}"
    );

    // Managed settings for team core: alice was delivered an old checksum, bob is not managed.
    let fleet_state = gateway.shared().fleet.clone();
    fleet_state.set_current(std::sync::Arc::new(
        |_user: &str, teams: &[String], kind: tollgate::config::settings::Kind| {
            (kind == tollgate::config::settings::Kind::Settings && teams.iter().any(|t| t == "core"))
                .then(|| "sha256:v2".to_owned())
        },
    ));
    fleet_state.delivered("alice", tollgate::config::settings::Kind::Settings, "sha256:v1");
    let stale = fleet_json(gateway.admin, "?stale=true").await;
    assert_eq!(names(&stale), ["alice"], "{stale:#}");
    assert_eq!(user(&stale, "alice")["settings"]["checksum"], "sha256:v1");
    assert_eq!(user(&stale, "alice")["current"], false);
    let ratio = "tollgate_managed_settings_current_ratio";
    assert_eq!(metric_value(&gateway.metrics().await, ratio), 0.0);

    fleet_state.delivered("alice", tollgate::config::settings::Kind::Settings, "sha256:v2");
    assert_eq!(names(&fleet_json(gateway.admin, "?stale=true").await), Vec::<String>::new());
    assert_eq!(user(&fleet_json(gateway.admin, "").await, "alice")["current"], true);
    assert_eq!(metric_value(&gateway.metrics().await, ratio), 1.0);

    // `tollgate fleet` asks the running gateway.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["fleet", "-c"])
        .arg(&path)
        .args(["--admin", &gateway.admin.to_string(), "--format", "csv"])
        .env_remove("TOLLGATE_CONFIG")
        .output()
        .await
        .expect("run tollgate fleet");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.starts_with("user,teams,client,version,"), "{stdout}");
    assert_eq!(stdout.lines().count(), 4, "a header and one row per user and client: {stdout}");
    assert!(
        stdout.lines().any(|line| line.starts_with("alice,core,claude-cli,2.1.400,") && line.ends_with(",yes")),
        "{stdout}"
    );
    assert!(stdout.lines().any(|line| line.starts_with("bob,,claude-cli,2.0.1,") && line.ends_with(",-")), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_bounded_fleet_through_redis() {
    use common::binary::{Stderr, Tollgate};
    let mut redis = common::redis::RedisServer::start().await;
    let stub = common::messages::MessagesStub::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let state = format!("state: {{backend: redis, redis_url: \"{}\", fleet_max_users: 2}}\n", redis.url());
    let first_config = fleet_config(dir.path(), "replica-a", &stub, &state);
    let second_config = fleet_config(dir.path(), "replica-b", &stub, &state);
    // The first start creates the interception CA both replicas share.
    let first = Tollgate::start(&first_config, Stderr::Drained).await;
    let second = Tollgate::start(&second_config, Stderr::Drained).await;
    let ca = dir.path().join("ca.pem");

    through_tunnel(first.listener("proxy"), &ca, "alice", "claude-cli/2.1.332 (external, cli)", "session-a1").await;
    through_tunnel(second.listener("proxy"), &ca, "bob", "claude-cli/2.1.400 (external, cli)", "session-b1").await;
    through_tunnel(second.listener("proxy"), &ca, "alice", "claude-cli/2.1.400 (external, cli)", "session-a1").await;

    // Reading on a replica writes its own pending sightings first: the second's, then the first's.
    let from_second = fleet_json(second.admin, "").await;
    let fleet = fleet_json(first.admin, "").await;
    assert_eq!(fleet["users"], fleet_json(second.admin, "").await["users"], "both replicas read one inventory");
    assert_eq!(names(&from_second).len(), 2, "{from_second:#}");
    let alice = user(&fleet, "alice");
    let mut seen = clients(alice);
    seen.sort();
    assert_eq!(seen, [pair("claude-cli", "2.1.332"), pair("claude-cli", "2.1.400")], "{alice:#}");
    assert_eq!(alice["sessions"], 1, "one session seen on both replicas: {alice:#}");
    assert_eq!(clients(user(&fleet, "bob")), [pair("claude-cli", "2.1.400")]);

    // A third user: the store keeps two, the least recently seen goes.
    let kept_before = {
        let mut users: Vec<(String, String)> = fleet["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| (u["last_seen"].as_str().unwrap().to_owned(), u["user"].as_str().unwrap().to_owned()))
            .collect();
        users.sort();
        users.pop().expect("two users").1
    };
    through_gateway(first.listener("gateway"), "carol", "claude-cli/2.1.500 (external, sdk-cli)", "session-c1").await;
    let bounded = fleet_json(first.admin, "").await;
    let mut kept = names(&bounded);
    kept.sort();
    let mut expected = vec!["carol".to_owned(), kept_before];
    expected.sort();
    assert_eq!(kept, expected, "{bounded:#}");
    assert_eq!(bounded["max_users"], 2);

    // `tollgate fleet` on either replica's config shows the same.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["fleet", "-c"])
        .arg(&second_config)
        .args(["--admin", &second.admin.to_string(), "--format", "json"])
        .env_remove("TOLLGATE_CONFIG")
        .output()
        .await
        .expect("run tollgate fleet");
    assert!(output.status.success(), "{output:?}");
    let printed: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(printed["users"], bounded["users"]);

    // Without Redis, requests are still served (no limits apply here) and the inventory cannot be read: 503.
    redis.stop().await;
    through_tunnel(first.listener("proxy"), &ca, "alice", "claude-cli/2.1.332 (external, cli)", "session-a3").await;
    let unreadable = admin_fleet(first.admin, "", Some(&format!("Bearer {TOKEN}"))).await;
    assert_eq!(unreadable.status, 503, "{unreadable:?}");
    assert!(unreadable.json()["error"].as_str().is_some_and(|e| e.contains("redis")), "{unreadable:?}");
}
