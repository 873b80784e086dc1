//! What a crash and a shutdown leave behind for metered requests in flight: after kill -9 and a restart the
//! embedded ledger's spend is what the audit records billed (the reservations of the requests the crash cut are
//! not kept), a stream cut when shutdown's grace period ends is audited as cut by the shutdown, not by the
//! client, and the upstream connections tollgate keeps open between requests are counted.

use crate::common;

use std::path::Path;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use common::binary::{Stderr, Tollgate};
use common::gateway::{cost_micro_usd, messages_call, send, users_yaml, User, PRICING};
use common::intercept::{messages_post, only_intercepted, Intercepting, Parts};
use common::messages::{self, MessagesStub, JSON_USAGE, MODEL, STREAM_START_USAGE};
use common::{exchange, Origin, Response};

const ALICE: User = User { name: "alice", password: "alice-password", teams: &["backend"] };
const ADMIN_TOKEN: &str = "admin-token-for-the-endurance-tests";

/// A gateway listener routed to `stub`, priced by `PRICING`, an org budget far above what the test spends (so every
/// request reserves and settles), the embedded ledger and the audit file (`on_failure: block`: a response a client
/// got whole had its record written) in `dir`.
fn write_config(dir: &Path, stub: &MessagesStub) -> std::path::PathBuf {
    let path = dir.join("tollgate.yaml");
    let text = format!(
        "listeners: [{{name: gateway, bind: \"127.0.0.1:0\", mode: gateway}}]\n\
         admin: {{bind: \"127.0.0.1:0\", token: \"{ADMIN_TOKEN}\"}}\n\
         auth:\n  anonymous: deny\n{}\
         teams:\n  backend: {{}}\n\
         policy: {{default: deny}}\n\
         upstreams:\n  stub: {{url: \"{}\"}}\n\
         routing:\n  - {{when: {{listener: gateway}}, to: stub}}\n\
         {PRICING}\
         budgets: {{org_daily_usd: 1000}}\n\
         state: {{path: \"{}\"}}\n\
         audit: {{file: {{path: \"{}\"}}, on_failure: block}}\n",
        users_yaml(&[&ALICE]),
        stub.url(),
        dir.join("state").display(),
        dir.join("audit.jsonl").display(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// The org's daily spend by `GET /admin/budgets`, in micro-dollars.
async fn org_daily_spend(gateway: &Tollgate) -> i64 {
    let request = format!(
        "GET /admin/budgets HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n"
    );
    let response: Response = exchange(gateway.admin, request.as_bytes()).await;
    assert_eq!(response.status, 200, "{response:?}");
    let budgets = response.json();
    let org = budgets["budgets"]
        .as_array()
        .and_then(|all| all.iter().find(|budget| budget["scope"] == "org_daily"))
        .unwrap_or_else(|| panic!("an org_daily budget: {budgets:#}"));
    (org["spent_usd"].as_f64().expect("spent_usd") * 1e6).round() as i64
}

/// The whole records of the audit file (a line torn by the kill is left out) and what they billed, in
/// micro-dollars.
fn billed(audit: &Path) -> (Vec<Value>, i64) {
    let text = std::fs::read_to_string(audit).expect("read the audit file");
    let records: Vec<Value> = text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect();
    let cost = records.iter().filter_map(|record| record["cost_usd"].as_f64()).map(|usd| (usd * 1e6).round() as i64);
    let total = cost.sum();
    (records, total)
}

/// kill -9 with three streams in flight (each past `message_start`, its worst case reserved, its usage partly sent
/// by the upstream, never settled), after three requests billed in full: once restarted on the same state, the
/// org's spend is exactly what the audit records billed. The streams the crash cut have no record and count
/// nothing (billed spend only: a crash can under-count the requests in flight, by at most their cost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_kill_9_starts_from_the_spend_the_audit_records_billed() {
    const COMPLETE: usize = 3;
    const IN_FLIGHT: usize = 3;
    let stub = MessagesStub::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), &stub);
    let gateway = Tollgate::start(&config, Stderr::Drained).await;
    let listener = gateway.listener("gateway");

    for _ in 0..COMPLETE {
        let response = send(listener, &messages_call(&ALICE.api_key(), MODEL, false)).await;
        assert_eq!(response.status, 200, "{response:?}");
    }
    let mut streams = Vec::new();
    for _ in 0..IN_FLIGHT {
        let mut stream = TcpStream::connect(listener).await.expect("connect to the gateway listener");
        stream.write_all(&messages_call(&ALICE.api_key(), messages::HOLD, true)).await.expect("send");
        let mut buf = Vec::new();
        assert!(messages::read_until(&mut stream, &mut buf, b"event: message_start").await, "the stream starts");
        streams.push(stream);
    }
    let held = org_daily_spend(&gateway).await;
    let complete_cost = COMPLETE as i64 * cost_micro_usd(JSON_USAGE);
    assert!(held > complete_cost, "the streams in flight hold their reservations: {held} µ$");

    gateway.kill().await;
    drop(streams);
    let restarted = Tollgate::start(&config, Stderr::Drained).await;
    let (records, billed_micro_usd) = billed(&dir.path().join("audit.jsonl"));
    let metered = records.iter().filter(|record| record["kind"] == "gateway" && record["cost_usd"].is_number());
    assert_eq!(metered.count(), COMPLETE, "only the complete requests have records: {records:#?}");
    assert_eq!(billed_micro_usd, complete_cost);
    assert_eq!(org_daily_spend(&restarted).await, billed_micro_usd, "the ledger starts from the billed spend");
    // What the crash cut is not counted; a request after the restart is billed on top.
    let response = send(restarted.listener("gateway"), &messages_call(&ALICE.api_key(), MODEL, false)).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(org_daily_spend(&restarted).await, complete_cost + cost_micro_usd(JSON_USAGE));
    restarted.stop().await;
}

/// A stream still open when `server.shutdown_grace` ends is cut by the shutdown: its record says so (not "cut by
/// the client") and it is billed for the usage seen (`message_start`'s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_when_the_grace_period_ends_is_audited_as_cut_by_the_shutdown() {
    let mut setup = Intercepting::start(Parts { extra: "server: {shutdown_grace: 1s}\n", ..Parts::default() }).await;
    let mut tls = setup.tunnel().await;
    tls.write_all(&messages_post(&messages::request_body(messages::HOLD, true), &[])).await.expect("send");
    let mut buf = Vec::new();
    assert!(messages::read_until(&mut tls, &mut buf, b"message_start").await, "message_start arrives");

    let records = setup.gateway.shutdown_and_audit().await;
    let record = only_intercepted(&records);
    let error = record["error"].as_str().unwrap_or_else(|| panic!("an error: {record:#}"));
    assert_eq!(error, "stream cut at shutdown (server.shutdown_grace ended); billed for the usage seen", "{record:#}");
    assert_eq!(messages::usage_of(&record["usage"]), STREAM_START_USAGE, "{record:#}");
}

/// `tollgate_upstream_pooled_connections` counts the upstream connections tollgate keeps open between requests,
/// which are what its open descriptors hold beyond the listeners once no client is connected: the forward proxy's
/// idle connection to the origin (reused by the next GET, so still one), and the model client's connection to the
/// Messages API upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_upstream_connections_are_counted() {
    let forward = "tollgate_upstream_pooled_connections{pool=\"forward\"}";
    let model = "tollgate_upstream_pooled_connections{pool=\"model\"}";
    let parts = Parts { allow: &["127.0.0.1"], allow_private: &["127.0.0.0/8"], ..Parts::default() };
    let setup = Intercepting::start(parts).await;
    let origin = Origin::start().await;
    assert_eq!((setup.metric(forward).await, setup.metric(model).await), (0.0, 0.0));

    // Kept alive toward the client, so the request does not say `Connection: close` upstream either.
    let get = |path: &str| format!("GET {} HTTP/1.1\r\nHost: {}\r\n\r\n", origin.url(path), origin.address);
    let (mut client, first) = common::exchange_keep(setup.gateway.proxy, get("/first").as_bytes()).await;
    assert_eq!(first.status, 200, "{first:?}");
    client.write_all(get("/second").as_bytes()).await.expect("send the second GET");
    let second = common::read_response(&mut client).await;
    assert_eq!(second.status, 200, "{second:?}");
    drop(client);
    assert_eq!(origin.connection_count(), 1, "the second GET reused the pooled connection");
    assert_eq!(setup.metric(forward).await, 1.0);

    let response = setup.send(&messages_post(&messages::request_body(MODEL, false), &["Connection: close"])).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(setup.stub.connection_count(), 1);
    assert_eq!((setup.metric(forward).await, setup.metric(model).await), (1.0, 1.0));
}
