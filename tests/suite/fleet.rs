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
