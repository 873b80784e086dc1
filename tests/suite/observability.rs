//! Metrics and audit records say exactly what happened: counts per decision and reason, one hash-chained audit
//! record per request with the right fields and no secrets, and upstream failures named as such.

use crate::common;

use common::*;

const PASSWORD: &str = "correct horse battery staple";

fn requests_total(text: &str) -> f64 {
    let samples = text.lines().filter(|l| l.starts_with("tollgate_requests_total{"));
    samples.map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_audit_match_a_fixed_sequence() {
    let origin = Origin::start().await;
    let gateway = TestGateway::start(&format!(
        "auth:\n  anonymous: deny\n  users: [{{name: alice, password_hash: \"{}\", teams: [red, blue]}}]\nteams: {{red: {{}}, blue: {{}}}}\n{LOOPBACK_POLICY}",
        hash(PASSWORD)
    ))
    .await;
    let credentials = basic("alice", PASSWORD);
    let token = credentials.strip_prefix("Basic ").unwrap().to_owned();

    let allowed = format!(
        "GET {} HTTP/1.1\r\nProxy-Authorization: {credentials}\r\nConnection: close\r\n\r\n",
        origin.url("/allowed?x=1")
    );
    let allowed = exchange_until_closed(gateway.proxy, allowed.as_bytes()).await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    let header = format!("Proxy-Authorization: {credentials}");
    let denied = exchange_until_closed(gateway.proxy, connect_request("10.0.0.1:443", &[&header]).as_bytes()).await;
    assert_refused(&denied, 403, "private_address", Some("policy.private_destinations"), "CONNECT 10.0.0.1");
    let challenged = format!("GET {} HTTP/1.1\r\nConnection: close\r\n\r\n", origin.url("/anonymous"));
    let challenged = exchange_until_closed(gateway.proxy, challenged.as_bytes()).await;
    assert_eq!(challenged.status, 407, "{challenged:?}");

    let metrics = gateway.metrics().await;
    let sample = |labels: &str| metric_value(&metrics, &format!("tollgate_requests_total{{{labels}}}"));
    assert_eq!(sample("decision=\"allow\",kind=\"http\",listener=\"proxy\",reason=\"ok\""), 1.0, "{metrics}");
    assert_eq!(sample("decision=\"deny\",kind=\"connect\",listener=\"proxy\",reason=\"private_address\""), 1.0);
    assert_eq!(sample("decision=\"deny\",kind=\"http\",listener=\"proxy\",reason=\"proxy_auth_required\""), 1.0);
    assert_eq!(requests_total(&metrics), 3.0, "no other request was counted:\n{metrics}");
    assert_eq!(metric_value(&metrics, "tollgate_auth_failures_total{method=\"none\"}"), 1.0);
    assert_eq!(metric_value(&metrics, "tollgate_auth_failures_total{method=\"basic\"}"), 0.0);
    assert_eq!(metric_value(&metrics, "tollgate_request_duration_seconds_count{kind=\"http\"}"), 2.0);
    assert_eq!(metric_value(&metrics, "tollgate_request_duration_seconds_count{kind=\"connect\"}"), 1.0);
    assert_eq!(metric_value(&metrics, "tollgate_connections_active{listener=\"proxy\"}"), 0.0);
    assert_eq!(metric_value(&metrics, "tollgate_tunnels_active"), 0.0);
    assert!(metric_value(&metrics, "tollgate_bytes_total{direction=\"up\"}") > 0.0);
    assert!(
        metric_value(&metrics, "tollgate_bytes_total{direction=\"down\"}") >= "origin saw /allowed?x=1".len() as f64
    );
    assert!(!metrics.contains("alice"), "metric labels never carry user names:\n{metrics}");

    let audit = gateway.audit().await;
    assert_eq!(audit.len(), 3, "{audit:#?}");
    // Upstream answers pass unmodified; tollgate's own carry the id that is in the audit record.
    let ids: Vec<Option<String>> =
        [&allowed, &denied, &challenged].iter().map(|r| r.header("x-tollgate-request-id")).collect();
    assert!(ids[0].is_none() && ids[1].is_some() && ids[2].is_some(), "{ids:?}");
    let expected = [
        ("http", "GET", "alice", "allow", "policy.allow[0]", 200, Some("/allowed")),
        ("connect", "CONNECT", "alice", "deny", "policy.private_destinations", 403, None),
        ("http", "GET", "", "deny", "", 407, Some("/anonymous")),
    ];
    for ((record, id), (kind, method, user, decision, rule, status, path)) in audit.iter().zip(&ids).zip(expected) {
        assert_eq!(record["id"].as_str().unwrap().len(), 16, "{record}");
        if let Some(id) = id {
            assert_eq!(record["id"], *id, "{record}");
        }
        assert_eq!(record["kind"], kind, "{record}");
        assert_eq!(record["method"], method, "{record}");
        assert_eq!(record["decision"], decision, "{record}");
        assert_eq!(record["status"], status, "{record}");
        assert_eq!(record["listener"], "proxy", "{record}");
        assert_eq!(record["path"].as_str(), path, "{record}");
        if user.is_empty() {
            assert!(record["user"].is_null() && record["team"].is_null(), "{record}");
        } else {
            assert_eq!(record["user"], user, "{record}");
            assert_eq!(record["team"], "red", "{record}");
        }
        if rule.is_empty() {
            assert!(record["rule"].is_null(), "{record}");
        } else {
            assert_eq!(record["rule"], rule, "{record}");
        }
        assert!(record["client"].as_str().unwrap().starts_with("127.0.0.1:"), "{record}");
        let ts = record["ts"].as_str().unwrap();
        assert!(ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "RFC 3339 with ms: {ts}");
        assert_eq!(record["hash"].as_str().unwrap().len(), 64, "{record}");
    }
    assert_eq!(audit[0]["host"], "127.0.0.1");
    assert_eq!(audit[0]["port"], origin.address.port());
    assert_eq!(audit[0]["upstream"], origin.address.to_string());
    assert_eq!(audit[1]["host"], "10.0.0.1");
    assert_eq!(audit[1]["port"], 443);
    assert!(audit[1]["upstream"].is_null());
    assert_eq!(audit[0]["prev"], "0".repeat(64));
    assert_eq!(audit[1]["prev"], audit[0]["hash"]);
    assert_eq!(audit[2]["prev"], audit[1]["hash"]);

    let text = std::fs::read_to_string(gateway.audit_path()).unwrap();
    assert_eq!(tollgate::audit::verify_chain(&text).expect("the chain verifies"), 3);
    for secret in [PASSWORD, token.as_str(), "correct horse", "Proxy-Authorization", "proxy-authorization"] {
        assert!(!text.contains(secret), "{secret:?} is in the audit file:\n{text}");
    }
    // And the chain notices an edit.
    let edited = text.replacen("\"status\":403", "\"status\":200", 1);
    assert!(tollgate::audit::verify_chain(&edited).is_err());
    // The writer counts a batch once it is written: the lines can be on disk a moment before the counter moves.
    let written = "tollgate_audit_records_total{result=\"ok\",sink=\"file\"}";
    let counted = async {
        loop {
            let value = metric_value(&gateway.metrics().await, written);
            if value >= 3.0 {
                return value;
            }
            tokio::task::yield_now().await;
        }
    };
    let counted = tokio::time::timeout(std::time::Duration::from_secs(20), counted).await;
    assert_eq!(counted.ok(), Some(3.0), "three records counted as written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_are_502_and_counted() {
    // A port nothing listens on: bound, then released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let gateway = TestGateway::start(
        "auth: {anonymous: dev}\npolicy:\n  default: deny\n  allow: [\"127.0.0.1\", nonexistent.invalid]\n  allow_private: [127.0.0.0/8]\n",
    )
    .await;

    let connect = exchange_until_closed(gateway.proxy, connect_request(&closed.to_string(), &[]).as_bytes()).await;
    assert_refused(&connect, 502, "connect_error", None, "CONNECT to a closed port");
    let get = format!("GET http://{closed}/ HTTP/1.1\r\nConnection: close\r\n\r\n");
    let get = exchange_until_closed(gateway.proxy, get.as_bytes()).await;
    assert_refused(&get, 502, "connect_error", None, "GET from a closed port");

    let dns = exchange_until_closed(gateway.proxy, connect_request("nonexistent.invalid:443", &[]).as_bytes()).await;
    assert_refused(&dns, 502, "dns_error", None, "CONNECT to an unknown name");
    let get = "GET http://nonexistent.invalid/ HTTP/1.1\r\nConnection: close\r\n\r\n";
    let get = exchange_until_closed(gateway.proxy, get.as_bytes()).await;
    assert_refused(&get, 502, "dns_error", None, "GET from an unknown name");

    let metrics = gateway.metrics().await;
    assert_eq!(metric_value(&metrics, "tollgate_upstream_errors_total{kind=\"connect\"}"), 2.0, "{metrics}");
    assert_eq!(metric_value(&metrics, "tollgate_upstream_errors_total{kind=\"dns\"}"), 2.0, "{metrics}");
    let sample =
        "tollgate_requests_total{decision=\"error\",kind=\"connect\",listener=\"proxy\",reason=\"connect_error\"}";
    assert_eq!(metric_value(&metrics, sample), 1.0);
    let sample = "tollgate_requests_total{decision=\"error\",kind=\"http\",listener=\"proxy\",reason=\"dns_error\"}";
    assert_eq!(metric_value(&metrics, sample), 1.0);
    let audit = gateway.audit().await;
    assert_eq!(audit.len(), 4);
    for record in &audit {
        assert_eq!(record["decision"], "error", "{record}");
        assert_eq!(record["status"], 502, "{record}");
        assert!(record["upstream"].is_null(), "{record}");
        assert!(record["error"].as_str().is_some_and(|e| !e.is_empty()), "{record}");
    }
    // An unknown name is never an allow: the rule that allowed the name is kept, the outcome is an error.
    assert_eq!(audit[2]["rule"], "policy.allow[1]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_hangs_up_or_speaks_garbage_is_a_502() {
    let hangs_up = scripted_origin(b"").await;
    let garbage = scripted_origin(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await;
    let gateway = TestGateway::start(&format!("auth: {{anonymous: dev}}\n{LOOPBACK_POLICY}")).await;
    for (address, error_type) in [(hangs_up, "upstream_closed"), (garbage, "upstream_protocol")] {
        let request = format!("GET http://{address}/ HTTP/1.1\r\nConnection: close\r\n\r\n");
        let response = exchange_until_closed(gateway.proxy, request.as_bytes()).await;
        assert_refused(&response, 502, error_type, None, error_type);
    }
    assert_eq!(gateway.metric("tollgate_upstream_errors_total{kind=\"protocol\"}").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_counted_by_reason_and_audited() {
    let gateway = TestGateway::start(&format!(
        "auth: {{anonymous: dev}}\n{LOOPBACK_POLICY}server: {{header_read_timeout: 300ms}}\n"
    ))
    .await;
    let response = exchange_until_closed(gateway.proxy, b"GET http://127.0.0.1:9/ HTTP/1.1\nHost: x\n\n").await;
    assert_eq!(response.status, 400);
    let response = exchange_until_closed(gateway.proxy, b"GET http://127.0.0.1:9/ HTTP/1.1\r\n").await;
    assert_eq!(response.status, 408);
    let metrics = gateway.metrics().await;
    for reason in ["bad_request", "header_timeout"] {
        let client = format!("tollgate_client_errors_total{{listener=\"proxy\",reason=\"{reason}\"}}");
        assert_eq!(metric_value(&metrics, &client), 1.0, "{reason}\n{metrics}");
        let request = format!(
            "tollgate_requests_total{{decision=\"error\",kind=\"http\",listener=\"proxy\",reason=\"{reason}\"}}"
        );
        assert_eq!(metric_value(&metrics, &request), 1.0, "{reason}\n{metrics}");
    }
    let audit = gateway.audit().await;
    let statuses: Vec<_> = audit.iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [400, 408]);
}
