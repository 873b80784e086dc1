//! Alerts end to end: real requests through a gateway listener to the Messages stub (metered and priced by
//! `PRICING`, so one JSON message costs exactly `cost_micro_usd(JSON_USAGE)`), the alert rules of `alerts:`, and
//! the sinks they go to — a webhook receiver (an HTTP server in the test) and an SMTP server in the test that
//! requires STARTTLS with the test CA. Asserted on what the sinks received, the `kind: "alert"` audit records and
//! `tollgate_alerts_total{rule,sink,result}`. The clock is injected; `Alerts::flush` waits until the engine has
//! evaluated every event and ended every delivery, so "no second alert" is checked without sleeping.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use common::gateway::*;
use common::messages::{self, MessagesStub, JSON_USAGE, MODEL};
use common::pki::Pki;
use common::redis::RedisServer;
use common::smtp::SmtpServer;
use common::webhook::WebhookReceiver;
use common::{Response, TestClock, TestGateway};

const ALICE: User = User { name: "alice", password: "alice-password", teams: &["backend"] };
const BOB: User = User { name: "bob", password: "bob-password", teams: &["night"] };

/// How long a sink may take to receive an alert before the test fails.
const WITHIN: Duration = Duration::from_secs(20);

/// What one JSON message costs under `PRICING`, in micro-dollars.
fn cost() -> i64 {
    cost_micro_usd(JSON_USAGE)
}

/// Users alice (backend) and bob (night), `teams`, every gateway request routed to `stub`, priced by `PRICING`,
/// and `extra` (the `alerts` section, `state`, `dlp`…).
fn config(stub: &MessagesStub, teams: &str, extra: &str) -> String {
    format!(
        "auth:\n  anonymous: deny\n{}teams:\n{teams}policy: {{default: deny}}\n{}routing:\n  - {{when: {{listener: gateway}}, to: stub}}\n{PRICING}{extra}",
        users_yaml(&[&ALICE, &BOB]),
        upstreams_yaml(&[("stub", stub, "sk-upstream")]),
    )
}

/// Both teams without settings of their own.
const PLAIN_TEAMS: &str = "  backend: {}\n  night: {}\n";

fn clock_at_hour(hour: u64) -> Arc<TestClock> {
    let clock = TestClock::at("2026-01-01T00:00:00Z");
    clock.set(today_at(hour));
    clock
}

/// One JSON message as `user`.
async fn call(gateway: &TestGateway, user: &User) -> Response {
    send(gateway.listener("gateway"), &messages_call(&user.api_key(), MODEL, false)).await
}

async fn served(gateway: &TestGateway, user: &User) {
    let response = call(gateway, user).await;
    assert_eq!(response.status, 200, "{} should be served: {response:?}", user.name);
}

/// A JSON Messages request body for `MODEL` whose one user message says `prompt`.
fn body_saying(prompt: &str) -> String {
    json!({"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": prompt}]}).to_string()
}

/// Waits until the alert engine has evaluated everything sent so far and finished its deliveries; then every
/// audit record.
async fn settled(gateway: &TestGateway) -> Vec<Value> {
    gateway.shared().alerts.flush().await;
    gateway.audit().await
}

fn alerts_of(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|record| record["kind"] == "alert").collect()
}

/// `tollgate_alerts_total` for one rule, sink and result.
async fn alerts_metric(gateway: &TestGateway, rule: &str, sink: &str, result: &str) -> f64 {
    gateway.metric(&format!("tollgate_alerts_total{{result=\"{result}\",rule=\"{rule}\",sink=\"{sink}\"}}")).await
}

/// A webhook sink called `hook` posting to `receiver` in `format`, and `rules` (YAML list items, indented 4).
fn alerts_yaml(receiver: &WebhookReceiver, format: &str, rules: &str) -> String {
    format!(
        "alerts:\n  sinks:\n    hook: {{webhook: \"{}\", format: {format}}}\n  rules:\n{rules}",
        receiver.url("hooks/tollgate")
    )
}

/// A `budget` rule at 50 % and 80 % of the team's daily budget fires once at each: after the fifth and the eighth
/// request (of ten requests' worth of budget), never again for the same period; every counter of the rule is
/// exported at 0 from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_thresholds_fire_once_each() {
    let stub = MessagesStub::start().await;
    let receiver = WebhookReceiver::start(200).await;
    let budget_usd = 10.0 * cost() as f64 / 1e6;
    let teams = format!("  backend: {{budget: {{daily_usd: {budget_usd}}}}}\n  night: {{}}\n");
    let rules =
        "    - {name: finance-budget, kind: budget, scope: team, thresholds: [0.8, 0.5], to: [hook], cooldown: 1m}\n";
    let yaml = config(&stub, &teams, &alerts_yaml(&receiver, "json", rules));
    let gateway = start_gateway(&yaml, with_clock(clock_at_hour(12))).await;
    for result in ["sent", "failed", "suppressed"] {
        let sample = format!("tollgate_alerts_total{{result=\"{result}\",rule=\"finance-budget\",sink=\"hook\"}} 0");
        assert!(gateway.metrics().await.contains(&sample), "registered at start: {sample}");
    }

    for _ in 0..4 {
        served(&gateway, &ALICE).await;
    }
    assert!(alerts_of(&settled(&gateway).await).is_empty(), "40 % crosses no threshold");
    served(&gateway, &ALICE).await;
    let first = receiver.next(WITHIN).await;
    assert_eq!((first.method.as_str(), first.path.as_str()), ("POST", "/hooks/tollgate"));
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    assert_eq!(first.body["rule"], "finance-budget", "{:#}", first.body);
    assert_eq!(first.body["kind"], "budget");
    assert_eq!((first.body["scope"].as_str(), first.body["key"].as_str()), (Some("team"), Some("backend")));
    assert_eq!(first.body["threshold"], 0.5);
    assert_eq!(first.body["value"], 0.5);
    let message = first.body["message"].as_str().expect("a message");
    assert!(message.contains("team backend has spent 50% of its daily budget"), "{message}");
    for _ in 0..3 {
        served(&gateway, &ALICE).await;
    }
    let second = receiver.next(WITHIN).await;
    assert_eq!(second.body["threshold"], 0.8, "{:#}", second.body);
    served(&gateway, &ALICE).await;

    let records = settled(&gateway).await;
    assert!(receiver.drain().await.is_empty(), "90 % raises nothing new");
    let alerts = alerts_of(&records);
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    for (alert, threshold) in alerts.iter().zip([0.5, 0.8]) {
        assert_eq!(alert["rule"], "finance-budget");
        assert_eq!(alert["rule_kind"], "budget");
        assert_eq!((alert["scope"].as_str(), alert["key"].as_str()), (Some("team"), Some("backend")));
        assert_eq!(alert["threshold"], threshold);
        assert_eq!(alert["sinks"], json!([{"sink": "hook", "result": "sent"}]), "{alert}");
        assert!(alert["request"].is_string(), "{alert}");
    }
    assert_eq!(alerts_metric(&gateway, "finance-budget", "hook", "sent").await, 2.0);
    assert_eq!(alerts_metric(&gateway, "finance-budget", "hook", "suppressed").await, 0.0);
}

/// `spend_anomaly` compares today's spend with the trailing 7-day daily average, kept per user in the state
/// backend: with one request's spend three days ago (an average of a seventh of it), today's first request stays
/// under `min_usd` and the second passes both the minimum and twice the average.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_anomaly_compares_today_with_the_trailing_week() {
    let stub = MessagesStub::start().await;
    let receiver = WebhookReceiver::start(200).await;
    let min_usd = 1.5 * cost() as f64 / 1e6;
    let rules = format!(
        "    - {{name: unusual-spending, kind: spend_anomaly, scope: user, factor: 2.0, min_usd: {min_usd}, to: [hook]}}\n"
    );
    let yaml = config(&stub, PLAIN_TEAMS, &alerts_yaml(&receiver, "json", &rules));
    let clock = clock_at_hour(12);
    let gateway = start_gateway(&yaml, with_clock(clock.clone())).await;
    clock.set(today_at(12) - Duration::from_secs(3 * 86_400));
    served(&gateway, &ALICE).await;
    assert!(alerts_of(&settled(&gateway).await).is_empty(), "below min_usd on its own day");
    clock.set(today_at(12));
    served(&gateway, &ALICE).await;
    assert!(alerts_of(&settled(&gateway).await).is_empty(), "today's first request is below min_usd");
    served(&gateway, &ALICE).await;
    let hook = receiver.next(WITHIN).await;
    assert_eq!(hook.body["kind"], "spend_anomaly", "{:#}", hook.body);
    assert_eq!((hook.body["scope"].as_str(), hook.body["key"].as_str()), (Some("user"), Some("alice")));
    let today = 2.0 * cost() as f64 / 1e6;
    assert!((hook.body["value"].as_f64().expect("value") - today).abs() < 1e-9, "{:#}", hook.body);
    let threshold = 2.0 * cost() as f64 / 7.0 / 1e6;
    assert!((hook.body["threshold"].as_f64().expect("threshold") - threshold).abs() < 1e-9, "{:#}", hook.body);
    let message = hook.body["message"].as_str().expect("message");
    assert!(message.contains("user alice has spent $0.03 today, 14.0x the trailing 7-day daily average"), "{message}");
    served(&gateway, &ALICE).await;
    let records = settled(&gateway).await;
    assert_eq!(alerts_of(&records).len(), 1, "once a day per user");
    assert_eq!(alerts_metric(&gateway, "unusual-spending", "hook", "sent").await, 1.0);
}

/// `after_hours`: a request team hours refuse is alerted as an attempt; model use outside an alert-only window (the
/// rule's own `hours`, for the teams it names) is served and alerted; use inside the window is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_hours_alerts_refused_attempts_and_use_outside_an_alert_window() {
    let stub = MessagesStub::start().await;
    let receiver = WebhookReceiver::start(200).await;
    let teams = "  backend: {}\n  night: {hours: {from: \"08:00\", to: \"18:00\", tz: UTC}}\n";
    let rules = "    - {name: after-hours, kind: after_hours, to: [hook]}\n    - {name: late-backend, kind: after_hours, teams: [backend], hours: {from: \"08:00\", to: \"18:00\", tz: Europe/Berlin}, to: [hook]}\n";
    let yaml = config(&stub, teams, &alerts_yaml(&receiver, "json", rules));
    let clock = clock_at_hour(12);
    let gateway = start_gateway(&yaml, with_clock(clock.clone())).await;
    served(&gateway, &ALICE).await;
    served(&gateway, &BOB).await;
    assert!(alerts_of(&settled(&gateway).await).is_empty(), "noon is inside both windows");

    clock.set(today_at(20));
    served(&gateway, &ALICE).await;
    let refused = call(&gateway, &BOB).await;
    assert_api_error(&refused, 403, "permission_error", Some("teams.night.hours"));
    let records = settled(&gateway).await;
    let alerts = alerts_of(&records);
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    let late = alerts.iter().find(|a| a["rule"] == "late-backend").expect("alice's use is alerted");
    assert_eq!((late["scope"].as_str(), late["key"].as_str()), (Some("user"), Some("alice")));
    let message = late["message"].as_str().expect("message");
    assert!(
        message.contains(&format!(
            "user alice (team backend) used {MODEL} outside working hours (08:00-18:00 Europe/Berlin)"
        )),
        "{message}"
    );
    let attempt = alerts.iter().find(|a| a["rule"] == "after-hours").expect("bob's attempt is alerted");
    assert_eq!(attempt["key"], "bob");
    let message = attempt["message"].as_str().expect("message");
    assert!(
        message.contains("user bob (team night) was refused outside working hours (teams.night.hours)"),
        "{message}"
    );
    assert_eq!(receiver.drain().await.len(), 2);
    assert_eq!(alerts_metric(&gateway, "after-hours", "hook", "sent").await, 1.0);
    assert_eq!(alerts_metric(&gateway, "late-backend", "hook", "sent").await, 1.0);
}

/// An `action` rule with `match` alerts the agent's access to a sensitive file that the actions policy denies, and
/// neither an action the policy marks `alert` outside the match nor an ordinary one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensitive_file_access_is_alerted() {
    let stub = MessagesStub::start().await;
    let receiver = WebhookReceiver::start(200).await;
    let rules = "    - {name: sensitive-file-access, kind: action, match: [\"file:*:**/secrets/**\"], to: [hook]}\n";
    let extra = format!(
        "actions:\n  deny: [\"file:*:**/secrets/**\"]\n  alert: [\"file:read:**/.env\"]\n{}",
        alerts_yaml(&receiver, "json", rules)
    );
    let yaml = config(&stub, PLAIN_TEAMS, &extra);
    let gateway = start_gateway(&yaml, with_clock(clock_at_hour(12))).await;
    let blocks = json!([
        {"type": "tool_use", "id": "toolu_01", "name": "Read", "input": {"file_path": "/repo/src/main.rs"}},
        {"type": "tool_use", "id": "toolu_02", "name": "Read", "input": {"file_path": "/repo/.env"}},
        {"type": "tool_use", "id": "toolu_03", "name": "Read", "input": {"file_path": "/repo/secrets/db.yaml"}},
    ]);
    let body = json!({"model": messages::TOOLS, "max_tokens": 1024, "stream": false,
                      "messages": [{"role": "user", "content": "go on"}], "stub_blocks": blocks})
    .to_string();
    let version = format!("anthropic-version: {ANTHROPIC_VERSION}");
    let headers = [ALICE.api_key(), version, "content-type: application/json".to_owned()];
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let response = send(gateway.listener("gateway"), &request("POST", "/v1/messages", &headers, &body)).await;
    assert_eq!(response.status, 403, "the denied read refuses the message: {response:?}");
    let hook = receiver.next(WITHIN).await;
    assert_eq!(hook.body["kind"], "action", "{:#}", hook.body);
    let message = hook.body["message"].as_str().expect("message");
    assert!(
        message.contains(
            "the agent of user alice (team backend): file:read /repo/secrets/db.yaml (denied by actions.deny[0]"
        ),
        "{message}"
    );
    let records = settled(&gateway).await;
    assert!(receiver.drain().await.is_empty(), "the .env read is alerted by the policy, not matched by the rule");
    let alerts = alerts_of(&records);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let action = records.iter().find(|r| r["kind"] == "action" && r["tool_use_id"] == "toolu_03").expect("recorded");
    assert_eq!(alerts[0]["request"], action["id"], "the alert names the action record");
}

/// A `dlp` rule alerts a blocked request, to a Slack-compatible webhook (`{"text": …}`); within the cooldown a
/// second block for the same user is suppressed and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlp_block_is_alerted_in_slack_format_and_the_cooldown_suppresses_the_next() {
    let stub = MessagesStub::start().await;
    let receiver = WebhookReceiver::start(200).await;
    let rules = "    - {name: dlp-blocks, kind: dlp, to: [hook], cooldown: 1h}\n";
    let extra =
        format!("dlp: {{action: block, detectors: [aws_access_key]}}\n{}", alerts_yaml(&receiver, "slack", rules));
    let yaml = config(&stub, PLAIN_TEAMS, &extra);
    let gateway = start_gateway(&yaml, with_clock(clock_at_hour(12))).await;
    let body = body_saying("deploy with AKIAIOSFODNN7EXAMPLE please");
    let version = format!("anthropic-version: {ANTHROPIC_VERSION}");
    let headers = [ALICE.api_key(), version, "content-type: application/json".to_owned()];
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let blocked = send(gateway.listener("gateway"), &request("POST", "/v1/messages", &headers, &body)).await;
    assert_api_error(&blocked, 403, "permission_error", Some("dlp.aws_access_key"));
    let hook = receiver.next(WITHIN).await;
    let text = hook.body["text"].as_str().unwrap_or_else(|| panic!("a Slack text: {:#}", hook.body));
    assert_eq!(hook.body.as_object().map(|o| o.len()), Some(1), "only text: {:#}", hook.body);
    assert_eq!(
        text,
        "[tollgate] dlp-blocks: a request of user alice (team backend) was blocked by DLP (aws_access_key)"
    );
    assert!(!text.contains("AKIA"), "never the matched text");

    let again = send(gateway.listener("gateway"), &request("POST", "/v1/messages", &headers, &body)).await;
    assert_eq!(again.status, 403);
    let records = settled(&gateway).await;
    assert!(receiver.drain().await.is_empty(), "suppressed within the cooldown");
    assert_eq!(alerts_of(&records).len(), 1);
    assert_eq!(alerts_metric(&gateway, "dlp-blocks", "hook", "sent").await, 1.0);
    assert_eq!(alerts_metric(&gateway, "dlp-blocks", "hook", "suppressed").await, 1.0);
}

/// `auth_failures`: the third failed sign-in from one address within the window raises an alert keyed by the
/// address; a request without credentials (the first leg of a challenge) is not a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_failed_sign_ins_is_alerted_per_client_address() {
    let stub = MessagesStub::start().await;
    let receiver = WebhookReceiver::start(200).await;
    let rules = "    - {name: sign-in-burst, kind: auth_failures, count: 3, window: 1m, to: [hook]}\n";
    let yaml = config(&stub, PLAIN_TEAMS, &alerts_yaml(&receiver, "json", rules));
    let gateway = start_gateway(&yaml, with_clock(clock_at_hour(12))).await;
    let wrong = "x-api-key: alice:not-her-password";
    let anonymous = send(gateway.listener("gateway"), &request("GET", "/v1/models", &[], "")).await;
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    for _ in 0..2 {
        let refused = send(gateway.listener("gateway"), &messages_call(wrong, MODEL, false)).await;
        assert_eq!(refused.status, 401, "{refused:?}");
    }
    assert!(alerts_of(&settled(&gateway).await).is_empty(), "two failures are not a burst of three");
    let refused = send(gateway.listener("gateway"), &messages_call(wrong, MODEL, false)).await;
    assert_eq!(refused.status, 401);
    let hook = receiver.next(WITHIN).await;
    assert_eq!(hook.body["kind"], "auth_failures", "{:#}", hook.body);
    assert_eq!((hook.body["scope"].as_str(), hook.body["key"].as_str()), (Some("client"), Some("127.0.0.1")));
    assert_eq!((hook.body["value"].as_f64(), hook.body["threshold"].as_f64()), (Some(3.0), Some(3.0)));
    let records = settled(&gateway).await;
    let alerts = alerts_of(&records);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["message"], "3 failed sign-ins from 127.0.0.1 within 1m");
}

/// Wrong admin tokens at the console's sign-in and a wrong SCIM token are failed sign-ins too: the third from one
/// address raises the same `auth_failures` alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_console_and_scim_tokens_are_failed_sign_ins() {
    let stub = MessagesStub::start().await;
    let receiver = WebhookReceiver::start(200).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tollgate.yaml");
    let header = format!(
        "listeners:\n  - {{name: proxy, bind: \"127.0.0.1:0\"}}\n  - {{name: gateway, bind: \"127.0.0.1:0\", mode: gateway}}\n\
         admin: {{bind: \"127.0.0.1:0\", token: \"console-admin-token-alerts\", \
         scim: {{token: \"scim-token-of-the-alerts-test-0123456789\"}}}}\n\
         audit: {{file: {{path: \"{}\"}}}}\n",
        dir.path().join("audit.jsonl").display()
    );
    let rules = "    - {name: sign-in-burst, kind: auth_failures, count: 3, window: 1m, to: [hook]}\n";
    let text = format!("{header}{}", config(&stub, PLAIN_TEAMS, &alerts_yaml(&receiver, "json", rules)));
    std::fs::write(&path, text).expect("write config");
    let gateway = TestGateway::start_file(&path, dir, with_clock(clock_at_hour(12))).await;
    let sign_in = request("POST", "/ui/login", &["content-type: application/x-www-form-urlencoded"], "token=guess");
    for _ in 0..2 {
        assert_eq!(common::exchange(gateway.admin, &sign_in).await.status, 401);
    }
    assert!(alerts_of(&settled(&gateway).await).is_empty(), "two failures are not a burst of three");
    let scim = request("GET", "/scim/v2/Users", &["authorization: Bearer not-the-scim-token"], "");
    assert_eq!(common::exchange(gateway.admin, &scim).await.status, 401);
    let hook = receiver.next(WITHIN).await;
    assert_eq!(hook.body["kind"], "auth_failures", "{:#}", hook.body);
    assert_eq!((hook.body["scope"].as_str(), hook.body["key"].as_str()), (Some("client"), Some("127.0.0.1")));
}

/// An email sink: the alert arrives at the SMTP server in the test over STARTTLS (the server refuses mail before
/// it), from the configured sender to every recipient, with the rule and message in the subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_alert_arrives_over_starttls() {
    let pki = Pki::new();
    let tls = common::tls::server_config(pki.server.chain(), pki.server.private_key(), None).expect("server config");
    let smtp = SmtpServer::start(Arc::new(tls)).await;
    let stub = MessagesStub::start().await;
    let extra = format!(
        "upstream: {{trust: {{system_roots: false, extra_ca: [\"{}\"]}}}}\ndlp: {{action: block, detectors: [aws_access_key]}}\nalerts:\n  sinks:\n    secops: {{email: [secops@corp.example, ciso@corp.example], smtp: \"{}\", from: tollgate@corp.example}}\n  rules:\n    - {{name: dlp-blocks, kind: dlp, to: [secops]}}\n",
        pki.ca.pem.display(),
        smtp.url()
    );
    let yaml = config(&stub, PLAIN_TEAMS, &extra);
    let gateway = start_gateway(&yaml, with_clock(clock_at_hour(12))).await;
    let body = body_saying("AKIAIOSFODNN7EXAMPLE");
    let version = format!("anthropic-version: {ANTHROPIC_VERSION}");
    let headers = [ALICE.api_key(), version, "content-type: application/json".to_owned()];
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let blocked = send(gateway.listener("gateway"), &request("POST", "/v1/messages", &headers, &body)).await;
    assert_eq!(blocked.status, 403);
    let mail = smtp.next(WITHIN).await;
    assert!(mail.tls, "mail is only taken after STARTTLS");
    assert_eq!(mail.from, "tollgate@corp.example");
    assert_eq!(mail.to, ["secops@corp.example", "ciso@corp.example"]);
    assert_eq!(
        mail.header("Subject").as_deref(),
        Some("[tollgate] dlp-blocks: a request of user alice (team backend) was blocked by DLP (aws_access_key)")
    );
    assert!(mail.data.contains("rule: dlp-blocks"), "{}", mail.data);
    let records = settled(&gateway).await;
    assert_eq!(alerts_of(&records)[0]["sinks"], json!([{"sink": "secops", "result": "sent"}]));
    assert_eq!(alerts_metric(&gateway, "dlp-blocks", "secops", "sent").await, 1.0);
}

/// A webhook that answers 500 is retried, then counted `failed`; the audit record says so and quotes the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_is_counted_failed_and_recorded() {
    let stub = MessagesStub::start().await;
    let receiver = WebhookReceiver::start(500).await;
    let rules = "    - {name: dlp-blocks, kind: dlp, to: [hook]}\n";
    let extra =
        format!("dlp: {{action: block, detectors: [aws_access_key]}}\n{}", alerts_yaml(&receiver, "json", rules));
    let yaml = config(&stub, PLAIN_TEAMS, &extra);
    let gateway = start_gateway(&yaml, with_clock(clock_at_hour(12))).await;
    let body = body_saying("AKIAIOSFODNN7EXAMPLE");
    let version = format!("anthropic-version: {ANTHROPIC_VERSION}");
    let headers = [ALICE.api_key(), version, "content-type: application/json".to_owned()];
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let blocked = send(gateway.listener("gateway"), &request("POST", "/v1/messages", &headers, &body)).await;
    assert_eq!(blocked.status, 403);
    let records = settled(&gateway).await;
    assert_eq!(receiver.drain().await.len(), 3, "one attempt and two retries");
    let alerts = alerts_of(&records);
    assert_eq!(alerts.len(), 1, "{records:#?}");
    let delivery = &alerts[0]["sinks"][0];
    assert_eq!((delivery["sink"].as_str(), delivery["result"].as_str()), (Some("hook"), Some("failed")), "{delivery}");
    let error = delivery["error"].as_str().expect("an error");
    assert!(error.contains("500"), "{error}");
    assert_eq!(alerts_metric(&gateway, "dlp-blocks", "hook", "failed").await, 1.0);
    assert_eq!(alerts_metric(&gateway, "dlp-blocks", "hook", "sent").await, 0.0);
}

/// Two replicas sharing one real `redis-server` raise a budget alert once, not twice: whichever claims it first in
/// Redis sends it, the other counts it `suppressed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_fire_a_budget_alert_once() {
    let redis = RedisServer::start().await;
    let stub = MessagesStub::start().await;
    let receiver = WebhookReceiver::start(200).await;
    let budget_usd = 4.0 * cost() as f64 / 1e6;
    let teams = format!("  backend: {{budget: {{daily_usd: {budget_usd}}}}}\n  night: {{}}\n");
    let rules = "    - {name: finance-budget, kind: budget, scope: team, thresholds: [0.5], to: [hook]}\n";
    let state = format!("state: {{backend: redis, redis_url: \"{}\", on_error: deny}}\n", redis.url());
    let yaml = config(&stub, &teams, &format!("{state}{}", alerts_yaml(&receiver, "json", rules)));
    let first = start_gateway(&yaml, with_clock(clock_at_hour(12))).await;
    let second = start_gateway(&yaml, with_clock(clock_at_hour(12))).await;
    served(&first, &ALICE).await;
    // 50 %: the second replica sees it now, the first on its next request; whichever claims it first sends it.
    served(&second, &ALICE).await;
    served(&first, &ALICE).await;
    settled(&first).await;
    served(&second, &ALICE).await;
    let first_records = settled(&first).await;
    let second_records = settled(&second).await;
    let hooks = receiver.drain().await;
    assert_eq!(hooks.len(), 1, "one alert for both replicas: {hooks:#?}");
    assert_eq!(hooks[0].body["threshold"], 0.5);
    assert_eq!(alerts_of(&first_records).len() + alerts_of(&second_records).len(), 1);
    let sent = alerts_metric(&first, "finance-budget", "hook", "sent").await
        + alerts_metric(&second, "finance-budget", "hook", "sent").await;
    let suppressed = alerts_metric(&first, "finance-budget", "hook", "suppressed").await
        + alerts_metric(&second, "finance-budget", "hook", "suppressed").await;
    assert_eq!((sent, suppressed), (1.0, 1.0));
}

/// A budget threshold is claimed in the state backend, not only in memory: after a restart of a gateway with the
/// embedded store, the next request above 50 % raises nothing, and 80 % still fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_threshold_stays_claimed_across_a_restart() {
    let stub = MessagesStub::start().await;
    let receiver = WebhookReceiver::start(200).await;
    let state = tempfile::tempdir().expect("state dir");
    let budget_usd = 10.0 * cost() as f64 / 1e6;
    let teams = format!("  backend: {{budget: {{daily_usd: {budget_usd}}}}}\n  night: {{}}\n");
    let rules = "    - {name: finance-budget, kind: budget, scope: team, thresholds: [0.5, 0.8], to: [hook]}\n";
    let extra = format!("state: {{path: \"{}\"}}\n{}", state.path().display(), alerts_yaml(&receiver, "json", rules));
    let yaml = config(&stub, &teams, &extra);
    let mut gateway = start_gateway(&yaml, with_clock(clock_at_hour(12))).await;
    for _ in 0..5 {
        served(&gateway, &ALICE).await;
    }
    assert_eq!(receiver.next(WITHIN).await.body["threshold"], 0.5);
    settled(&gateway).await;
    gateway.shutdown().await;

    let restarted = start_gateway(&yaml, with_clock(clock_at_hour(12))).await;
    served(&restarted, &ALICE).await;
    settled(&restarted).await;
    assert!(receiver.drain().await.is_empty(), "60 %: the 50 % alert was sent before the restart");
    assert_eq!(alerts_metric(&restarted, "finance-budget", "hook", "suppressed").await, 1.0, "claimed before");
    for _ in 0..2 {
        served(&restarted, &ALICE).await;
    }
    assert_eq!(receiver.next(WITHIN).await.body["threshold"], 0.8);
}

/// Rules come from the config snapshot: a gateway started without alerts sends none; after a reload that adds a
/// rule, its counters are exported at 0 and the next DLP block is alerted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_brings_new_rules() {
    let stub = MessagesStub::start().await;
    let receiver = WebhookReceiver::start(200).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tollgate.yaml");
    let header = format!(
        "listeners:\n  - {{name: proxy, bind: \"127.0.0.1:0\"}}\n  - {{name: gateway, bind: \"127.0.0.1:0\", mode: gateway}}\nadmin: {{bind: \"127.0.0.1:0\"}}\naudit: {{file: {{path: \"{}\"}}}}\ndlp: {{action: block, detectors: [aws_access_key]}}\n",
        dir.path().join("audit.jsonl").display()
    );
    std::fs::write(&path, format!("{header}{}", config(&stub, PLAIN_TEAMS, ""))).expect("write config");
    let gateway = TestGateway::start_file(&path, dir, with_clock(clock_at_hour(12))).await;
    let version = format!("anthropic-version: {ANTHROPIC_VERSION}");
    let headers = [ALICE.api_key(), version, "content-type: application/json".to_owned()];
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let blocked = request("POST", "/v1/messages", &headers, &body_saying("AKIAIOSFODNN7EXAMPLE"));
    assert_eq!(send(gateway.listener("gateway"), &blocked).await.status, 403);
    assert!(alerts_of(&settled(&gateway).await).is_empty());
    assert!(!gateway.metrics().await.contains("tollgate_alerts_total"), "no rule, no series");

    let rules = "    - {name: dlp-blocks, kind: dlp, to: [hook]}\n";
    let text = format!("{header}{}", config(&stub, PLAIN_TEAMS, &alerts_yaml(&receiver, "json", rules)));
    std::fs::write(&path, text).expect("rewrite config");
    tollgate::reload::reload(gateway.shared()).expect("the new config loads");
    assert_eq!(alerts_metric(&gateway, "dlp-blocks", "hook", "sent").await, 0.0);
    assert!(gateway
        .metrics()
        .await
        .contains("tollgate_alerts_total{result=\"sent\",rule=\"dlp-blocks\",sink=\"hook\"} 0"));
    assert_eq!(send(gateway.listener("gateway"), &blocked).await.status, 403);
    assert_eq!(receiver.next(WITHIN).await.body["rule"], "dlp-blocks");
    settled(&gateway).await;
    assert_eq!(alerts_metric(&gateway, "dlp-blocks", "hook", "sent").await, 1.0);
}

/// An `https://` webhook is reached with the upstream trust settings: trusted through `upstream.trust.extra_ca` it
/// receives the alert; trusted by nothing configured (system roots only) the delivery fails on TLS and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_uses_the_upstream_trust() {
    let pki = Pki::new();
    let tls = common::tls::server_config(pki.server.chain(), pki.server.private_key(), None).expect("server config");
    let receiver = WebhookReceiver::start_tls(200, Arc::new(tls)).await;
    let stub = MessagesStub::start().await;
    let alerts = format!(
        "dlp: {{action: block, detectors: [aws_access_key]}}\nalerts:\n  sinks:\n    hook: {{webhook: \"{}\"}}\n  rules:\n    - {{name: dlp-blocks, kind: dlp, to: [hook]}}\n",
        receiver.https_url("hooks/tollgate")
    );
    let version = format!("anthropic-version: {ANTHROPIC_VERSION}");
    let headers = [ALICE.api_key(), version, "content-type: application/json".to_owned()];
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let blocked = request("POST", "/v1/messages", &headers, &body_saying("AKIAIOSFODNN7EXAMPLE"));

    let trusted = format!("upstream: {{trust: {{system_roots: false, extra_ca: [\"{}\"]}}}}\n", pki.ca.pem.display());
    let gateway =
        start_gateway(&config(&stub, PLAIN_TEAMS, &format!("{trusted}{alerts}")), with_clock(clock_at_hour(12))).await;
    assert_eq!(send(gateway.listener("gateway"), &blocked).await.status, 403);
    let hook = receiver.next(WITHIN).await;
    assert_eq!(hook.body["rule"], "dlp-blocks", "{:#}", hook.body);
    assert_eq!(alerts_of(&settled(&gateway).await)[0]["sinks"][0]["result"], "sent");

    let untrusted = start_gateway(&config(&stub, PLAIN_TEAMS, &alerts), with_clock(clock_at_hour(12))).await;
    assert_eq!(send(untrusted.listener("gateway"), &blocked).await.status, 403);
    let records = settled(&untrusted).await;
    let delivery = &alerts_of(&records)[0]["sinks"][0];
    assert_eq!(delivery["result"], "failed", "{delivery}");
    assert!(delivery["error"].as_str().is_some_and(|e| e.contains("TLS")), "{delivery}");
    assert!(receiver.drain().await.is_empty(), "nothing reached the receiver without trust");
    assert_eq!(alerts_metric(&untrusted, "dlp-blocks", "hook", "failed").await, 1.0);
}

/// The same budget rule on requests metered inside an intercepted tunnel (CONNECT to `api.anthropic.com`, TLS with
/// the interception CA): the organisation's daily budget at 50 % is alerted after the second request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_alert_from_intercepted_requests() {
    use common::intercept::{expected_cost, messages_post, Intercepting, Parts};

    let receiver = WebhookReceiver::start(200).await;
    let budget_usd = 4.0 * expected_cost(MODEL, JSON_USAGE);
    let rules = "    - {name: org-budget, kind: budget, scope: org, thresholds: [0.5], to: [hook]}\n";
    let extra = format!("budgets: {{org_daily_usd: {budget_usd}}}\n{}", alerts_yaml(&receiver, "json", rules));
    let setup = Intercepting::start(Parts { extra: &extra, ..Parts::default() }).await;
    let call = messages_post(&messages::request_body(MODEL, false), &["Connection: close"]);
    let response = setup.send(&call).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert!(alerts_of(&settled(&setup.gateway).await).is_empty(), "25 %");
    assert_eq!(setup.send(&call).await.status, 200);
    let hook = receiver.next(WITHIN).await;
    assert_eq!((hook.body["scope"].as_str(), hook.body["key"].as_str()), (Some("org"), Some("org")), "{:#}", hook.body);
    assert_eq!(hook.body["threshold"], 0.5);
    let message = hook.body["message"].as_str().expect("message");
    assert!(message.starts_with("the organisation has spent 50% of its daily budget"), "{message}");
    let records = settled(&setup.gateway).await;
    let alert = alerts_of(&records)[0];
    let last = records.iter().rev().find(|r| r["kind"] == "intercepted").expect("the intercepted request");
    assert_eq!(alert["request"], last["id"], "the alert names the request that crossed the threshold");
}

/// Cooldowns are shared through Redis too (`SET NX PX`): a DLP block alerted by one replica is suppressed on the
/// other within the cooldown, and counted there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cooldown_is_shared_by_replicas_through_redis() {
    let redis = RedisServer::start().await;
    let stub = MessagesStub::start().await;
    let receiver = WebhookReceiver::start(200).await;
    let rules = "    - {name: dlp-blocks, kind: dlp, to: [hook], cooldown: 1h}\n";
    let state = format!("state: {{backend: redis, redis_url: \"{}\", on_error: deny}}\n", redis.url());
    let extra = format!(
        "{state}dlp: {{action: block, detectors: [aws_access_key]}}\n{}",
        alerts_yaml(&receiver, "json", rules)
    );
    let yaml = config(&stub, PLAIN_TEAMS, &extra);
    let first = start_gateway(&yaml, with_clock(clock_at_hour(12))).await;
    let second = start_gateway(&yaml, with_clock(clock_at_hour(12))).await;
    let version = format!("anthropic-version: {ANTHROPIC_VERSION}");
    let headers = [ALICE.api_key(), version, "content-type: application/json".to_owned()];
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let blocked = request("POST", "/v1/messages", &headers, &body_saying("AKIAIOSFODNN7EXAMPLE"));
    assert_eq!(send(first.listener("gateway"), &blocked).await.status, 403);
    receiver.next(WITHIN).await;
    settled(&first).await;
    assert_eq!(send(second.listener("gateway"), &blocked).await.status, 403);
    let records = settled(&second).await;
    assert!(alerts_of(&records).is_empty(), "the other replica alerted it: {records:#?}");
    assert!(receiver.drain().await.is_empty());
    assert_eq!(alerts_metric(&first, "dlp-blocks", "hook", "sent").await, 1.0);
    assert_eq!(alerts_metric(&second, "dlp-blocks", "hook", "suppressed").await, 1.0);
    assert_eq!(alerts_metric(&second, "dlp-blocks", "hook", "sent").await, 0.0);
}
