//! Budgets end to end through a gateway listener: real requests to the Messages stub are metered and priced
//! (`PRICING`: one JSON message costs exactly `cost_micro_usd(JSON_USAGE)`), their cost is settled against the
//! budgets that apply, and once a budget is spent the next request is refused with the Anthropic `billing_error`
//! (429, `retry-after` until the UTC period resets, `x-should-retry: false`) before anything reaches the stub. The
//! clock is injected; spend survives a restart of the embedded store and is shared by two replicas through a real
//! `redis-server`.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use common::gateway::*;
use common::messages::{self, usage_of, MessagesStub, JSON_USAGE, MODEL};
use common::redis::RedisServer;
use common::{Response, TestClock, TestGateway};

const ALICE: User = User { name: "alice", password: "alice-password", teams: &["backend"] };
const ANN: User = User { name: "ann", password: "ann-password", teams: &["backend"] };
const BOB: User = User { name: "bob", password: "bob-password", teams: &["frontend"] };

/// The budget every test sets, in USD: above two requests' cost and below three (`COST` is $0.014034), so the
/// third request starts while the budget is not yet spent and takes it past its limit.
const BUDGET_USD: f64 = 0.03;

/// Two hours before a UTC midnight (and two days and two hours before the first of a month).
const EVENING: &str = "2026-11-28T22:00:00Z";

/// What one JSON message costs under `PRICING`, in micro-dollars.
fn cost() -> i64 {
    cost_micro_usd(JSON_USAGE)
}

/// Users alice and ann (backend) and bob (frontend), `teams` and `budgets` as given, every gateway request routed
/// to `stub`, priced by `PRICING`, and `state` when given.
fn config(stub: &MessagesStub, teams: &str, extra: &str) -> String {
    format!(
        "auth:\n  anonymous: deny\n{}teams:\n{teams}policy: {{default: deny}}\n{}routing:\n  - {{when: {{listener: gateway}}, to: stub}}\n{PRICING}{extra}",
        users_yaml(&[&ALICE, &ANN, &BOB]),
        upstreams_yaml(&[("stub", stub, "sk-upstream")]),
    )
}

fn clock_at(time: SystemTime) -> Arc<TestClock> {
    let clock = TestClock::at(EVENING);
    clock.set(time);
    clock
}

/// One JSON message as `user`.
async fn call(gateway: &TestGateway, user: &User) -> Response {
    send(gateway.listener("gateway"), &messages_call(&user.api_key(), MODEL, false)).await
}

/// One JSON message as `user` that must be served, with its exact usage.
async fn spend_once(gateway: &TestGateway, user: &User) {
    let response = call(gateway, user).await;
    assert_eq!(response.status, 200, "{} should be served: {response:?}", user.name);
    assert_eq!(usage_of(&response.json()["usage"]), JSON_USAGE);
}

/// Asserts a budget refusal: 429 `billing_error` naming `rule`, `retry-after: retry_after`, `x-should-retry: false`.
/// Returns the message.
fn assert_budget_refusal(response: &Response, rule: &str, retry_after: u64) -> String {
    let message = assert_api_error(response, 429, "billing_error", Some(rule));
    assert!(message.contains(rule), "the message names the budget: {message}");
    assert!(message.contains(&format!("${BUDGET_USD:.2}")), "the message gives the limit: {message}");
    assert_eq!(response.header("retry-after"), Some(retry_after.to_string()), "{response:?}");
    assert_eq!(response.header("x-should-retry").as_deref(), Some("false"), "{response:?}");
    message
}

/// The audit record of a refused request: denied by `rule` with 429, before any upstream.
fn assert_refused_record(record: &Value, user: &str, rule: &str) {
    assert_eq!(record["kind"], "gateway", "{record}");
    assert_eq!(record["user"], user, "{record}");
    assert_eq!((record["decision"].as_str(), record["rule"].as_str()), (Some("deny"), Some(rule)), "{record}");
    assert_eq!(record["status"], 429, "{record}");
    assert!(record["upstream"].is_null(), "a refused request goes nowhere: {record}");
    assert!(record.get("usage").is_none() && record.get("cost_usd").is_none(), "{record}");
}

fn budget_spent_count(metrics: &str) -> f64 {
    common::metric_value(
        metrics,
        "tollgate_requests_total{decision=\"deny\",kind=\"gateway\",listener=\"gateway\",reason=\"budget_spent\"}",
    )
}

/// A team's daily budget: requests are admitted while it is not spent (the third starts below the limit and ends
/// above it), each priced exactly; the fourth is refused with `budget.team_daily` and `retry-after` = the seconds
/// to the next UTC midnight by the injected clock, without reaching the stub; the used ratio is exported; at
/// midnight, exactly when `retry-after` said, the next request is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_team_daily_budget_refuses_until_utc_midnight() {
    let stub = MessagesStub::start().await;
    let clock = TestClock::at(EVENING);
    let teams = format!("  backend: {{budget: {{daily_usd: {BUDGET_USD}}}}}\n  frontend: {{}}\n");
    let gateway = start_gateway(&config(&stub, &teams, ""), with_clock(clock.clone())).await;

    for _ in 0..3 {
        spend_once(&gateway, &ALICE).await;
    }
    let records = gateway.audit().await;
    let served = gateway_records(&records);
    assert_eq!(served.len(), 3, "{records:#?}");
    for record in served {
        assert_eq!(audit_usage(record), JSON_USAGE, "{record}");
        let cost_usd = record["cost_usd"].as_f64().unwrap_or_else(|| panic!("a cost: {record}"));
        assert!((cost_usd - cost() as f64 / 1e6).abs() < 1e-12, "{cost_usd} for {JSON_USAGE:?}: {record}");
    }
    let ratio = gateway.metric("tollgate_budget_used_ratio{team=\"backend\"}").await;
    assert!(ratio >= 1.0, "three requests spent the budget: {ratio}");
    assert!((ratio - 3.0 * cost() as f64 / (BUDGET_USD * 1e6)).abs() < 1e-9, "spend over budget: {ratio}");

    // Spent: refused for alice and for ann, her team-mate, until midnight (two hours away).
    let response = call(&gateway, &ALICE).await;
    let message = assert_budget_refusal(&response, "budget.team_daily", 7200);
    assert!(message.contains("backend"), "the message names the team: {message}");
    let response = call(&gateway, &ANN).await;
    assert_budget_refusal(&response, "budget.team_daily", 7200);
    assert_eq!(stub.requests().len(), 3, "refused requests never reach the stub");
    // Another team has no budget.
    spend_once(&gateway, &BOB).await;

    let records = gateway.audit().await;
    let records = gateway_records(&records);
    assert_eq!(records.len(), 6, "{records:#?}");
    assert_refused_record(records[3], "alice", "budget.team_daily");
    assert_refused_record(records[4], "ann", "budget.team_daily");
    assert_eq!(budget_spent_count(&gateway.metrics().await), 2.0);

    // One second before midnight it is still spent; at midnight a new day starts.
    clock.advance(Duration::from_secs(7199));
    assert_budget_refusal(&call(&gateway, &ALICE).await, "budget.team_daily", 1);
    clock.advance(Duration::from_secs(1));
    spend_once(&gateway, &ALICE).await;
    assert_eq!(stub.requests().len(), 5);
}

/// A team's monthly budget is not reset by a new UTC day: refused with `budget.team_monthly` and `retry-after` =
/// the seconds to the first of the next month, on the evening it was spent and again the next morning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_monthly_budget_is_not_reset_by_a_new_day() {
    let stub = MessagesStub::start().await;
    let clock = TestClock::at(EVENING);
    let teams = format!("  backend: {{budget: {{monthly_usd: {BUDGET_USD}}}}}\n  frontend: {{}}\n");
    let gateway = start_gateway(&config(&stub, &teams, ""), with_clock(clock.clone())).await;

    for _ in 0..3 {
        spend_once(&gateway, &ALICE).await;
    }
    // 2026-11-28T22:00Z to 2026-12-01T00:00Z: two days and two hours.
    let message = assert_budget_refusal(&call(&gateway, &ALICE).await, "budget.team_monthly", 50 * 3600);
    assert!(message.contains("monthly"), "{message}");

    // The next day, 01:00: still spent, 47 hours before the month ends.
    clock.advance(Duration::from_secs(3 * 3600));
    assert_budget_refusal(&call(&gateway, &ANN).await, "budget.team_monthly", 47 * 3600);
    assert_eq!(stub.requests().len(), 3, "refused requests never reach the stub");

    // On the first of the month it is served again.
    clock.set(common::at("2026-12-01T00:00:00Z"));
    spend_once(&gateway, &ALICE).await;
    let records = gateway.audit().await;
    let records = gateway_records(&records);
    assert_eq!(records.len(), 6, "{records:#?}");
    assert_refused_record(records[4], "ann", "budget.team_monthly");
}

/// `user_daily_usd` limits each user of the team on their own: alice's spent budget refuses her with
/// `budget.user_daily`, while ann of the same team is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_user_daily_budget_refuses_that_user_only() {
    let stub = MessagesStub::start().await;
    let clock = TestClock::at(EVENING);
    let teams = format!("  backend: {{budget: {{user_daily_usd: {BUDGET_USD}}}}}\n  frontend: {{}}\n");
    let gateway = start_gateway(&config(&stub, &teams, ""), with_clock(clock)).await;

    for _ in 0..3 {
        spend_once(&gateway, &ALICE).await;
    }
    let message = assert_budget_refusal(&call(&gateway, &ALICE).await, "budget.user_daily", 7200);
    assert!(message.contains("your daily budget"), "{message}");
    spend_once(&gateway, &ANN).await;
    assert_eq!(stub.requests().len(), 4);

    let records = gateway.audit().await;
    let records = gateway_records(&records);
    assert_refused_record(records[3], "alice", "budget.user_daily");
    assert_eq!(records[4]["user"], "ann");
    assert_eq!(records[4]["status"], 200);
}

/// The organisation's daily budget (`budgets.org_daily_usd`) counts every team: spent by alice (backend), it
/// refuses bob (frontend) with `budget.org_daily`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_org_daily_budget_refuses_every_team() {
    let stub = MessagesStub::start().await;
    let clock = TestClock::at(EVENING);
    let teams = "  backend: {}\n  frontend: {}\n";
    let org = format!("budgets: {{org_daily_usd: {BUDGET_USD}}}\n");
    let gateway = start_gateway(&config(&stub, teams, &org), with_clock(clock)).await;

    for _ in 0..3 {
        spend_once(&gateway, &ALICE).await;
    }
    let message = assert_budget_refusal(&call(&gateway, &BOB).await, "budget.org_daily", 7200);
    assert!(message.contains("organisation"), "{message}");
    assert_budget_refusal(&call(&gateway, &ALICE).await, "budget.org_daily", 7200);
    assert_eq!(stub.requests().len(), 3);

    let records = gateway.audit().await;
    let records = gateway_records(&records);
    assert_refused_record(records[3], "bob", "budget.org_daily");
    assert_eq!(budget_spent_count(&gateway.metrics().await), 2.0);
}

/// With the embedded state backend, spend is kept under `state.path`: a new gateway on the same path, after the
/// first one shut down, still finds the team's daily budget spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_survives_a_restart_with_the_embedded_store() {
    let stub = MessagesStub::start().await;
    let state = tempfile::tempdir().expect("state dir");
    // Today by the real clock: the ledger drops periods the real clock has ended when it is reopened.
    let clock = clock_at(today_at(22));
    let teams = format!("  backend: {{budget: {{daily_usd: {BUDGET_USD}}}}}\n  frontend: {{}}\n");
    let yaml = config(&stub, &teams, &format!("state: {{backend: embedded, path: \"{}\"}}\n", state.path().display()));

    let mut first = start_gateway(&yaml, with_clock(clock.clone())).await;
    for _ in 0..3 {
        spend_once(&first, &ALICE).await;
    }
    assert_budget_refusal(&call(&first, &ALICE).await, "budget.team_daily", 7200);
    first.shutdown().await;
    assert!(state.path().join("spend.jsonl").is_file(), "the ledger is under state.path");

    let second = start_gateway(&yaml, with_clock(clock.clone())).await;
    assert_budget_refusal(&call(&second, &ANN).await, "budget.team_daily", 7200);
    assert_eq!(stub.requests().len(), 3, "the restarted gateway refused without reaching the stub");
    let records = second.audit().await;
    assert_refused_record(only_gateway_record(&records), "ann", "budget.team_daily");

    // The restarted gateway settles new spend on the same day's counter: at midnight it starts again.
    clock.advance(Duration::from_secs(7200));
    spend_once(&second, &ANN).await;
}

/// Two replicas with `state.backend: redis` share one real `redis-server`: spend settled by either counts for both,
/// so once their requests together spent the team's daily budget, both refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_spend_through_redis() {
    let redis = RedisServer::start().await;
    let stub = MessagesStub::start().await;
    // Today by the real clock: Redis expires a spend key a day after its period ends, by its own clock.
    let clock = clock_at(today_at(22));
    let teams = format!("  backend: {{budget: {{daily_usd: {BUDGET_USD}}}}}\n  frontend: {{}}\n");
    let state = format!("state: {{backend: redis, redis_url: \"{}\", on_error: deny}}\n", redis.url());
    let yaml = config(&stub, &teams, &state);
    let first = start_gateway(&yaml, with_clock(clock.clone())).await;
    let second = start_gateway(&yaml, with_clock(clock.clone())).await;

    spend_once(&first, &ALICE).await;
    spend_once(&second, &ANN).await;
    spend_once(&first, &ALICE).await;
    // Three requests, two on one replica and one on the other: together they spent the budget.
    assert_budget_refusal(&call(&second, &ALICE).await, "budget.team_daily", 7200);
    assert_budget_refusal(&call(&first, &ANN).await, "budget.team_daily", 7200);
    assert_eq!(stub.requests().len(), 3, "refused requests never reach the stub");

    let first_records = first.audit().await;
    let second_records = second.audit().await;
    assert_refused_record(gateway_records(&second_records)[1], "alice", "budget.team_daily");
    assert_refused_record(gateway_records(&first_records)[2], "ann", "budget.team_daily");
    // The replica that settled last saw the whole team's spend, not only its own.
    let ratio = first.metric("tollgate_budget_used_ratio{team=\"backend\"}").await;
    assert!((ratio - 3.0 * cost() as f64 / (BUDGET_USD * 1e6)).abs() < 1e-9, "shared spend over budget: {ratio}");
}

/// An upstream that answers compressed although tollgate asked it for `accept-encoding: identity` (the stub's
/// `stub-gzip`): the body reaches the client unchanged, tollgate reads no usage from it, and the reservation (the
/// request's worst case: bytes / 4 at the input price plus `max_tokens` at the output price) stays charged, so
/// budgets fail closed; the audit record says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_without_readable_usage_keeps_its_estimate_charged() {
    let stub = MessagesStub::start().await;
    let teams = format!("  backend: {{budget: {{daily_usd: {BUDGET_USD}}}}}\n  frontend: {{}}\n");
    let gateway = start_gateway(&config(&stub, &teams, ""), with_clock(TestClock::at(EVENING))).await;

    let body = messages::request_body(messages::GZIP, false);
    let version = format!("anthropic-version: {ANTHROPIC_VERSION}");
    let headers =
        [ALICE.api_key(), version, "content-type: application/json".into(), "accept-encoding: gzip, br".into()];
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let response = send(gateway.listener("gateway"), &request("POST", "/v1/messages", &headers, &body)).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("content-encoding").as_deref(), Some("gzip"), "relayed as the stub sent it");
    let compressed = messages::gzip(b"");
    assert!(response.body.len() > compressed.len(), "a compressed body: {response:?}");
    let seen = stub.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].header_str("accept-encoding").as_deref(), Some("identity"), "{:?}", seen[0]);

    let audit = gateway.audit().await;
    let record = only_gateway_record(&audit);
    assert_eq!((record["status"].as_u64(), record["decision"].as_str()), (Some(200), Some("allow")), "{record}");
    assert!(record.get("usage").is_none() && record.get("cost_usd").is_none(), "{record}");
    let error = record["error"].as_str().unwrap_or_else(|| panic!("an error: {record}"));
    assert!(error.contains("the estimate stays charged"), "{record}");
    // `PRICING` charges input at $10 and output at $20 per million tokens: 10 and 20 micro-dollars a token; the
    // request asks for at most 64 output tokens.
    let estimate_micro_usd = (body.len() / 4) as f64 * 10.0 + 64.0 * 20.0;
    let ratio = gateway.metric("tollgate_budget_used_ratio{team=\"backend\"}").await;
    assert!((ratio - estimate_micro_usd / (BUDGET_USD * 1e6)).abs() < 1e-9, "{ratio} for {estimate_micro_usd} µ$");
}
