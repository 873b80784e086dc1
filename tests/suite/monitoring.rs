//! Monitoring as code stays true to tollgate: the Prometheus rules in `deploy/prometheus/` pass `promtool check
//! rules` and their own unit tests (`promtool test rules`), every alert is labelled, annotated and tested firing
//! and not firing, the Grafana dashboard's queries are PromQL, and every metric the rules and the dashboard name
//! is one a running gateway exports on `/metrics`, with the features that export it turned on.
//!
//! `promtool` comes with the Debian package `prometheus`, which `scripts/test` and `.ci/run` install; `$PROMTOOL`
//! names another binary.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::gateway::{messages_call, request, send, upstreams_yaml, users_yaml, User, ANTHROPIC_VERSION, PRICING};
use common::intercept::{self, API_HOST};
use common::messages::{self, MessagesStub, MODEL, TOOLS};
use common::pki::Pki;
use common::redis::RedisServer;
use common::{admin, basic, connect_request, exchange_until_closed, get_as, Origin, TestGateway};
use tokio::io::AsyncWriteExt;
use yaml_rust2::{Yaml, YamlLoader};

/// The alerting and recording rules.
const RULES: &str = "deploy/prometheus/tollgate-rules.yml";
/// The rules' unit tests, one file per group.
const RULE_TESTS: &str = "deploy/prometheus/tests";
/// The Grafana dashboard.
const DASHBOARD: &str = "deploy/grafana/tollgate.json";

const ALICE: User = User { name: "alice", password: "alice-password", teams: &["red"] };
const BOB: User = User { name: "bob", password: "bob-password", teams: &["blue"] };

/// The admin token of the monitored gateway (for `POST /admin/reload`).
const ADMIN_TOKEN: &str = "monitoring-admin-token";

/// An AWS access key id in a prompt: the DLP detector `aws_access_key` blocks it.
const LEAKED_KEY: &str = "AKIAZ7VQ3MBX5LRT2KPN";

/// The gateway whose `/metrics` the dashboard and the rules are checked against: every feature whose metrics they
/// name is on. A forward-proxy listener `proxy`, a TLS listener `proxy-tls` (handshake failures) and a `gateway`
/// listener routed to the Messages stub; interception of `api.anthropic.com` toward the stub, its CA created in
/// `dir` (interception certificates); users alice (team red, with a daily budget: tokens, cost and the budget ratio)
/// and bob (team blue, one request per minute: rate limits); DLP blocking AWS keys; the state in Redis (state
/// errors once it is stopped); the admin token (reloads); the audit file in `dir`.
fn monitored_config(dir: &Path, stub: &MessagesStub, redis: &RedisServer, pki: &Pki) -> String {
    format!(
        "listeners:\n  - {{name: proxy, bind: \"127.0.0.1:0\"}}\n  \
         - {{name: gateway, bind: \"127.0.0.1:0\", mode: gateway}}\n  \
         - {{name: proxy-tls, bind: \"127.0.0.1:0\", tls: {{cert: \"{tls_cert}\", key: \"{tls_key}\"}}}}\n\
         admin: {{bind: \"127.0.0.1:0\", token: \"{ADMIN_TOKEN}\"}}\n\
         audit:\n  file: {{path: \"{audit}\"}}\n  \
         siem: [{{type: syslog, url: \"tcp://127.0.0.1:9\", spool: {{dir: \"{spool}\"}}}}]\n\
         auth:\n  anonymous: deny\n{users}\
         teams:\n  red: {{budget: {{daily_usd: 100}}}}\n  blue: {{limits: {{user_rpm: 1}}}}\n\
         policy:\n  default: deny\n  allow: [\"127.0.0.1\", \"{API_HOST}\"]\n  allow_private: [\"127.0.0.0/8\"]\n\
         {upstreams}routing:\n  - {{when: {{listener: gateway}}, to: stub}}\n  \
         - {{when: {{host: {API_HOST}}}, to: stub}}\n\
         intercept:\n  ca: {{cert: \"{ca_cert}\", key: \"{ca_key}\"}}\n  hosts: [\"{API_HOST}\"]\n\
         {PRICING}\
         dlp: {{action: block, detectors: [aws_access_key]}}\n\
         state: {{backend: redis, redis_url: \"{redis_url}\", on_error: deny}}\n\
         alerts:\n  sinks: {{ops: {{webhook: \"http://127.0.0.1:9/tollgate\"}}}}\n  \
         rules: [{{name: dlp-blocks, kind: dlp, to: [ops]}}]\n",
        tls_cert = pki.server.pem.display(),
        tls_key = pki.server.key.display(),
        audit = dir.join("audit.jsonl").display(),
        spool = dir.join("spool").display(),
        users = users_yaml(&[&ALICE, &BOB]),
        upstreams = upstreams_yaml(&[("stub", stub, "sk-upstream")]),
        ca_cert = dir.join("ca.pem").display(),
        ca_key = dir.join("ca.key").display(),
        redis_url = redis.url(),
    )
}

/// The rules load in promtool and every unit test in `RULE_TESTS` passes.
#[test]
fn the_rules_pass_promtool_check_and_their_unit_tests() {
    let check = promtool(&["check", "rules", &repository_file(RULES)]);
    assert!(check.0, "promtool check rules {RULES} failed:\n{}", check.1);
    let tests = rule_test_files();
    let mut arguments = vec!["test".to_owned(), "rules".to_owned()];
    arguments.extend(tests.iter().map(|path| path.display().to_string()));
    let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
    let (passed, output) = promtool(&arguments);
    assert!(passed, "promtool test rules failed:\n{output}");
    assert_eq!(output.matches("SUCCESS").count(), tests.len(), "every test file passed:\n{output}");
}

/// Each alert has a `for`, a severity of critical, warning or info, a summary and a description, and among the
/// unit tests a case where it fires and one where it does not; recording rules are named `level:metric:operation`,
/// so they never look like a metric tollgate exports.
#[test]
fn every_alert_is_labelled_annotated_and_tested_firing_and_not_firing() {
    let rules = load_yaml(repository_file(RULES));
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules of a group") {
            if let Some(record) = rule["record"].as_str() {
                assert!(record.starts_with("tollgate:") && record.matches(':').count() == 2, "recording rule {record}");
                continue;
            }
            let name = rule["alert"].as_str().expect("a rule is an alert or a recording rule");
            assert!(alerts.insert(name.to_owned()), "alert {name} is defined twice");
            assert!(rule["for"].as_str().is_some(), "alert {name} has no for:");
            let severity = rule["labels"]["severity"].as_str();
            assert!(
                matches!(severity, Some("critical" | "warning" | "info")),
                "alert {name}: severity {severity:?}, not critical, warning or info"
            );
            for annotation in ["summary", "description"] {
                let text = rule["annotations"][annotation].as_str().unwrap_or_default();
                assert!(!text.trim().is_empty(), "alert {name} has no {annotation}");
            }
        }
    }
    assert!(alerts.len() >= 15, "the rules define their alerts: {alerts:?}");

    let (mut firing, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for path in rule_test_files() {
        let tests = load_yaml(&path);
        for test in tests["tests"].as_vec().unwrap_or_else(|| panic!("{}: tests", path.display())) {
            for case in test["alert_rule_test"].as_vec().map(Vec::as_slice).unwrap_or_default() {
                let name = case["alertname"].as_str().expect("alertname").to_owned();
                let expected = case["exp_alerts"].as_vec().map_or(0, Vec::len);
                if expected == 0 {
                    quiet.insert(name);
                } else {
                    firing.insert(name);
                }
            }
        }
    }
    let untested = |cases: &BTreeSet<String>| alerts.difference(cases).cloned().collect::<Vec<_>>();
    assert_eq!(untested(&firing), Vec::<String>::new(), "alerts without a unit test where they fire");
    assert_eq!(untested(&quiet), Vec::<String>::new(), "alerts without a unit test where they do not fire");
    let unknown: Vec<_> = firing.union(&quiet).filter(|name| !alerts.contains(*name)).collect();
    assert!(unknown.is_empty(), "unit tests of alerts the rules do not define: {unknown:?}");
}

/// The dashboard is a Grafana model of schema 39 whose data source is the `DS_PROMETHEUS` input, and every
/// panel's queries parse as PromQL (checked by promtool, with Grafana's variables filled in).
#[test]
fn the_dashboard_uses_its_data_source_input_and_its_queries_are_promql() {
    let dashboard = load_dashboard();
    assert_eq!(dashboard["schemaVersion"], 39);
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS", "{}", dashboard["__inputs"]);
    assert_eq!(dashboard["__inputs"][0]["pluginId"], "prometheus");
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 30, "the dashboard's panels have their queries: {}", queries.len());
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            continue;
        }
        let title = &panel["title"];
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "panel {title}");
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("panel {title} has no targets"));
        assert!(!targets.is_empty(), "panel {title} has no queries");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "panel {title}");
        }
    }

    // Each query as a recording rule: promtool parses the expression.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (index, query) in queries.iter().enumerate() {
        let expression = grafana_variables_filled(query);
        let quoted = serde_json::to_string(&expression).expect("a string");
        rules.push_str(&format!("      - record: dashboard:query_{index}:check\n        expr: {quoted}\n"));
    }
    let path = dir.path().join("dashboard-queries.yml");
    std::fs::write(&path, rules).expect("write the queries");
    let (passed, output) = promtool(&["check", "rules", &path.display().to_string()]);
    assert!(passed, "a dashboard query is not PromQL:\n{output}");
}

/// Every metric the rules and the dashboard name is a `# TYPE` family on the live `/metrics` of a gateway with
/// the features of `monitored_config`, after an allowed request, a denied one, a refused login, an unreachable
/// upstream, a malformed request, a metered model call, a DLP block, a model call with a tool call, an intercepted
/// model call, a failed TLS handshake, a rate limit, a reload, a torn audit line found at start and a stopped Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_rules_and_the_dashboard_name_is_exported() {
    let mut names = rule_metric_names();
    let dashboard_names = dashboard_metric_names();
    assert!(dashboard_names.contains("tollgate_request_duration_seconds_bucket"), "{dashboard_names:?}");
    names.extend(dashboard_names);

    let stub = MessagesStub::start().await;
    let mut redis = RedisServer::start().await;
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    // A write cut short by a crash: set aside at start and counted (tollgate_audit_torn_lines_total).
    std::fs::write(dir.path().join("audit.jsonl"), "{\"ts\":\"2026-12-05T09:").expect("a torn audit file");
    let config = dir.path().join("tollgate.yaml");
    let pki = Pki::new();
    std::fs::write(&config, monitored_config(dir.path(), &stub, &redis, &pki)).expect("write the config");
    let ca_pem = dir.path().join("ca.pem");
    let options = tollgate::app::Options { watch_interval: None, ..tollgate::app::Options::default() };
    let gateway = TestGateway::start_file(&config, dir, options).await;
    // Exported at 0 before any reload: the first refused one is an increase (TollgateConfigReloadFailed).
    let fresh = gateway.metrics().await;
    let refused_reloads = "tollgate_config_reloads_total{result=\"error\"} 0";
    assert!(fresh.lines().any(|line| line == refused_reloads), "{refused_reloads} from the start:\n{fresh}");

    let alice = basic(ALICE.name, ALICE.password);
    let bob = basic(BOB.name, BOB.password);
    let allowed = get_as(gateway.proxy, &origin.url("/allowed"), &alice).await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    let credentials = format!("Proxy-Authorization: {alice}");
    let private = connect_request("10.0.0.1:443", &[&credentials]);
    let denied = exchange_until_closed(gateway.proxy, private.as_bytes()).await;
    assert_eq!(denied.status, 403, "{denied:?}");
    let anonymous = format!("GET {} HTTP/1.1\r\nConnection: close\r\n\r\n", origin.url("/anonymous"));
    let anonymous = exchange_until_closed(gateway.proxy, anonymous.as_bytes()).await;
    assert_eq!(anonymous.status, 407, "{anonymous:?}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let unreachable = get_as(gateway.proxy, &format!("http://{closed}/"), &alice).await;
    assert_eq!(unreachable.status, 502, "{unreachable:?}");
    let malformed = exchange_until_closed(gateway.proxy, b"GET http://127.0.0.1:9/ HTTP/1.1\nHost: x\n\n").await;
    assert_eq!(malformed.status, 400, "{malformed:?}");

    let model_gateway = gateway.listener("gateway");
    let metered = send(model_gateway, &messages_call(&ALICE.api_key(), MODEL, false)).await;
    assert_eq!(metered.status, 200, "{metered:?}");
    let leaked = serde_json::json!({"model": MODEL, "max_tokens": 64,
        "messages": [{"role": "user", "content": format!("why does boto fail? {LEAKED_KEY}")}]})
    .to_string();
    let version = format!("anthropic-version: {ANTHROPIC_VERSION}");
    let headers = [ALICE.api_key(), version, "content-type: application/json".to_owned()];
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let blocked = send(model_gateway, &request("POST", "/v1/messages", &headers, &leaked)).await;
    assert_eq!(blocked.status, 403, "{blocked:?}");
    let read = serde_json::json!({"type": "tool_use", "id": "toolu_01", "name": "Read",
        "input": {"file_path": "/repo/Cargo.toml"}});
    let tool_call = serde_json::json!({"model": TOOLS, "max_tokens": 64,
        "messages": [{"role": "user", "content": "read the manifest"}], "stub_blocks": [read]})
    .to_string();
    let acted = send(model_gateway, &request("POST", "/v1/messages", &headers, &tool_call)).await;
    assert_eq!(acted.status, 200, "{acted:?}");
    let tunnel = intercept::connect(gateway.proxy, API_HOST, Some(&alice)).await;
    let mut tunnel = intercept::handshake(tunnel, API_HOST, intercept::trusting(&ca_pem, &[b"http/1.1"]))
        .await
        .expect("TLS inside the tunnel with the interception CA");
    let body = messages::request_body(MODEL, false);
    let intercepted =
        intercept::send(&mut tunnel, &intercept::messages_post(&body, &["Connection: close"]), &mut Vec::new()).await;
    assert_eq!(intercepted.status, 200, "{intercepted:?}");
    // Plain HTTP to the TLS listener: a failed handshake, counted once the gateway has closed the connection.
    let mut not_tls = tokio::net::TcpStream::connect(gateway.listener("proxy-tls")).await.expect("connect");
    not_tls.write_all(b"GET / HTTP/1.1\r\nHost: tollgate\r\n\r\n").await.expect("write");
    assert!(common::closed_by_peer(&mut not_tls).await, "the TLS listener closes a connection that is not TLS");

    let first = get_as(gateway.proxy, &origin.url("/bob"), &bob).await;
    assert_eq!(first.status, 200, "{first:?}");
    let limited = get_as(gateway.proxy, &origin.url("/bob-again"), &bob).await;
    assert_eq!(limited.status, 429, "{limited:?}");
    let reloaded = admin(&gateway, "POST", "/admin/reload", Some(&format!("Bearer {ADMIN_TOKEN}"))).await;
    assert_eq!(reloaded.status, 200, "{reloaded:?}");
    redis.stop().await;
    let unavailable = get_as(gateway.proxy, &origin.url("/bob-without-redis"), &bob).await;
    assert_eq!(unavailable.status, 503, "{unavailable:?}");

    // The failed handshake is counted just after its connection closes: wait for the count.
    let handshake_failures = "tollgate_tls_handshake_failures_total{listener=\"proxy-tls\"";
    let metrics = async {
        loop {
            let metrics = gateway.metrics().await;
            if metrics.lines().any(|line| line.starts_with(handshake_failures)) {
                return metrics;
            }
            tokio::task::yield_now().await;
        }
    };
    let metrics = tokio::time::timeout(std::time::Duration::from_secs(20), metrics)
        .await
        .unwrap_or_else(|_| panic!("{handshake_failures}…}} within 20s"));
    let families = metric_families(&metrics);
    let missing: Vec<&String> = names.iter().filter(|name| !exported(name, &families)).collect();
    assert!(
        missing.is_empty(),
        "the rules or the dashboard name metrics that /metrics does not export: {missing:?}\n(exported: {:?})",
        families.keys().collect::<Vec<_>>()
    );
}

/// The path of `relative` in the repository.
fn repository_file(relative: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative).display().to_string()
}

/// The rule test files, sorted.
fn rule_test_files() -> Vec<PathBuf> {
    let dir = repository_file(RULE_TESTS);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no rule tests in {dir}");
    files
}

/// Runs promtool with `arguments`; returns whether it succeeded and what it printed.
fn promtool(arguments: &[&str]) -> (bool, String) {
    let binary = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".to_owned());
    let output = Command::new(&binary).args(arguments).output().unwrap_or_else(|e| {
        panic!(
            "{binary} cannot be run ({e}): install the Debian package prometheus (scripts/test and .ci/run do), or set \
             PROMTOOL to a promtool binary"
        )
    });
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn load_yaml(path: impl AsRef<Path>) -> Yaml {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut documents = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(documents.len(), 1, "{}: one YAML document", path.display());
    documents.remove(0)
}

fn load_dashboard() -> serde_json::Value {
    let path = repository_file(DASHBOARD);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every panel's `expr`, the panels inside rows included.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    fn panel_queries(panels: &[serde_json::Value], queries: &mut Vec<String>) {
        for panel in panels {
            for target in panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let expr = target["expr"].as_str().unwrap_or_else(|| panic!("a target without expr: {target}"));
                queries.push(expr.to_owned());
            }
            panel_queries(panel["panels"].as_array().map(Vec::as_slice).unwrap_or_default(), queries);
        }
    }
    let mut queries = Vec::new();
    panel_queries(dashboard["panels"].as_array().expect("panels"), &mut queries);
    queries
}

/// Every query variable's query, `label_values(METRIC{…}, label)`.
fn dashboard_variable_queries(dashboard: &serde_json::Value) -> Vec<String> {
    let variables = dashboard["templating"]["list"].as_array().map(Vec::as_slice).unwrap_or_default();
    variables
        .iter()
        .filter_map(|variable| variable["query"]["query"].as_str().or(variable["query"].as_str()))
        .map(str::to_owned)
        .collect()
}

/// A dashboard query with Grafana's variables replaced: intervals by durations, selections by `.*`.
fn grafana_variables_filled(query: &str) -> String {
    let intervals = query.replace("$__rate_interval", "5m").replace("$__range", "1h").replace("$__interval", "1m");
    regex::Regex::new(r"\$[a-z_]+").expect("a regex").replace_all(&intervals, ".*").into_owned()
}

/// The `tollgate_…` names in `text` (an expression), with the `_bucket`, `_sum` and `_count` of histograms kept as
/// written: `exported` resolves them.
fn metric_names(text: &str) -> BTreeSet<String> {
    let name = regex::Regex::new(r"\btollgate_[a-z0-9_]+").expect("a regex");
    name.find_iter(text).map(|found| found.as_str().to_owned()).collect()
}

/// The metrics the rules' expressions name (not the recording rules' own `tollgate:…` names).
fn rule_metric_names() -> BTreeSet<String> {
    let rules = load_yaml(repository_file(RULES));
    let mut names = BTreeSet::new();
    for group in rules["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            names.extend(metric_names(rule["expr"].as_str().expect("expr")));
        }
    }
    assert!(names.len() >= 10, "the rules name tollgate's metrics: {names:?}");
    names
}

/// The metrics the dashboard's panels and variables name.
fn dashboard_metric_names() -> BTreeSet<String> {
    let dashboard = load_dashboard();
    let queries = dashboard_queries(&dashboard).into_iter().chain(dashboard_variable_queries(&dashboard));
    queries.flat_map(|query| metric_names(&query)).collect()
}

/// Families in Prometheus text by name, with their type (`# TYPE name type`).
fn metric_families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.trim().to_owned()))
        .collect()
}

/// Whether `name` is an exported family, or the `_bucket`, `_sum` or `_count` series of an exported histogram (or
/// summary).
fn exported(name: &str, families: &BTreeMap<String, String>) -> bool {
    let of_histogram = |suffix: &str| {
        let family = name.strip_suffix(suffix).and_then(|base| families.get(base));
        matches!(family.map(String::as_str), Some("histogram" | "summary"))
    };
    families.contains_key(name) || ["_bucket", "_sum", "_count"].into_iter().any(of_histogram)
}
