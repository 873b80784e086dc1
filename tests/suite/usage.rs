//! `tollgate usage` (the real binary) and `GET /admin/usage` (a real gateway) over a hash-chained audit file of
//! several users, teams, models and days, with tunnels, denies and responses that carry no usage, records before
//! the window and a torn line that is not JSON: the exact table, CSV and JSON, the filters, relative windows, the
//! bearer token, and the errors for a missing audit section or file and for bad arguments.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use common::ledger::Ledger;
use common::messages::{request_body, MessagesStub, JSON_USAGE, MODEL};
use common::{admin, exchange, exchange_until_closed, hash, Response, TestGateway};
use tollgate::audit::Record;
use tollgate::llm::usage::Usage;

const TOKEN: &str = "usage-admin-token";
const DAY: Duration = Duration::from_secs(86_400);

// ---- the ledger --------------------------------------------------------------------------------------------

fn ts(at: SystemTime) -> String {
    tollgate::audit::timestamp(at)
}

fn at(rfc3339: &str) -> SystemTime {
    humantime::parse_rfc3339(rfc3339).expect("RFC 3339")
}

/// An allowed model request whose response was metered (`usage` and `cost_usd`, in micro-dollars as pricing
/// computes them). `team` `None` is a principal without a team.
fn metered(
    when: SystemTime,
    kind: &'static str,
    user: &str,
    team: Option<&str>,
    model: &str,
    tokens: [u64; 4],
    cost_micro_usd: u64,
) -> Record {
    Record {
        ts: ts(when),
        id: format!("req-{user}-{}", when.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis()),
        kind,
        listener: Arc::from(if kind == "gateway" { "gateway" } else { "proxy" }),
        client: "10.1.2.3:50000".to_owned(),
        user: Some(Arc::from(user)),
        team: team.map(Arc::from),
        method: "POST".to_owned(),
        host: "api.anthropic.com".to_owned(),
        port: 443,
        path: Some("/v1/messages".to_owned()),
        decision: "allow",
        status: 200,
        bytes_up: 2_000,
        bytes_down: 9_000,
        duration_ms: 1_200,
        upstream: Some("api.anthropic.com".to_owned()),
        model: Some(model.to_owned()),
        usage: Some(Usage {
            input_tokens: tokens[0],
            output_tokens: tokens[1],
            cache_creation_input_tokens: tokens[2],
            cache_read_input_tokens: tokens[3],
            cache_creation_1h_input_tokens: 0,
            web_search_requests: 0,
        }),
        cost_usd: Some(cost_micro_usd as f64 / 1e6),
        ..Record::default()
    }
}

/// A record without usage: a tunnel, or a request refused or answered without metering.
fn unmetered(
    when: SystemTime,
    kind: &'static str,
    user: &str,
    team: &str,
    decision: &'static str,
    status: u16,
    rule: Option<&str>,
) -> Record {
    Record {
        ts: ts(when),
        id: format!("req-{user}-unmetered"),
        kind,
        listener: Arc::from("proxy"),
        client: "10.1.2.3:50001".to_owned(),
        user: Some(Arc::from(user)),
        team: Some(Arc::from(team)),
        method: if kind == "connect" { "CONNECT" } else { "POST" }.to_owned(),
        host: "api.anthropic.com".to_owned(),
        port: 443,
        path: (kind != "connect").then(|| "/v1/messages".to_owned()),
        decision,
        rule: rule.map(Arc::from),
        status,
        model: (kind != "connect").then(|| "claude-opus-4-5".to_owned()),
        error: rule.map(|r| format!("denied by {r}")),
        ..Record::default()
    }
}

/// May 2026: seven metered requests in the window from 2026-05-01 (alice has two models), tunnels and denies
/// that carry no usage, one request before the window, and a line torn mid-record (line 6).
fn may_ledger() -> Ledger {
    let mut ledger = Ledger::new();
    ledger
        .record(metered(
            at("2026-04-28T09:00:00Z"),
            "intercepted",
            "alice",
            Some("red"),
            "claude-opus-4-5",
            [90_000, 9_000, 0, 0],
            900_000,
        ))
        .record(unmetered(at("2026-05-02T09:15:00Z"), "connect", "alice", "red", "allow", 200, None))
        .record(metered(
            at("2026-05-02T09:15:01.123Z"),
            "intercepted",
            "alice",
            Some("red"),
            "claude-sonnet-4-5",
            [1_200, 340, 0, 5_000],
            12_345,
        ))
        .record(metered(
            at("2026-05-03T14:00:00Z"),
            "gateway",
            "alice",
            Some("red"),
            "claude-haiku-4-5",
            [800, 120, 0, 0],
            1_400,
        ))
        .record(metered(
            at("2026-05-03T15:30:00Z"),
            "gateway",
            "carol",
            Some("red"),
            "claude-sonnet-4-5",
            [5_000, 2_000, 1_000, 0],
            51_750,
        ))
        .raw(r#"{"ts":"2026-05-03T15:31:00.000Z","id":"req-torn","kind":"intercep"#)
        .record(metered(
            at("2026-05-04T08:00:00Z"),
            "intercepted",
            "bob",
            Some("blue"),
            "claude-opus-4-5",
            [3_000, 1_500, 0, 20_000],
            62_500,
        ))
        .record(unmetered(
            at("2026-05-04T08:05:00Z"),
            "intercepted",
            "bob",
            "blue",
            "deny",
            429,
            Some("budget.team.blue.daily"),
        ))
        .record(unmetered(
            at("2026-05-04T08:06:00Z"),
            "intercepted",
            "bob",
            "blue",
            "deny",
            403,
            Some("dlp.aws_access_key"),
        ))
        .record(unmetered(at("2026-05-05T10:00:00Z"), "gateway", "dave", "blue", "allow", 529, None))
        .record(metered(
            at("2026-05-06T11:00:00Z"),
            "gateway",
            "dave",
            Some("blue"),
            "claude-sonnet-4-5",
            [900, 0, 0, 0],
            2_700,
        ))
        .record(metered(
            at("2026-05-07T12:00:00Z"),
            "http",
            "developer",
            None,
            "claude-sonnet-4-5",
            [100, 50, 0, 0],
            1_050,
        ))
        .record(metered(
            at("2026-05-08T16:45:00Z"),
            "intercepted",
            "alice",
            Some("red"),
            "claude-sonnet-4-5",
            [400, 60, 0, 5_200],
            3_000,
        ));
    ledger
}

// ---- the command -------------------------------------------------------------------------------------------

fn tollgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env_remove("TOLLGATE_CONFIG")
        .env_remove("TOLLGATE_LOG")
        .output()
        .expect("run tollgate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A config whose `audit.file.path` is `audit` (or with no audit section for `None`).
fn config_file(dir: &Path, audit: Option<&Path>) -> PathBuf {
    let mut yaml = String::from("listeners: [{name: proxy, bind: \"127.0.0.1:0\"}]\npolicy: {default: deny}\n");
    if let Some(audit) = audit {
        yaml.push_str(&format!("audit: {{file: {{path: \"{}\", chain: true}}}}\n", audit.display()));
    }
    let path = dir.join("tollgate.yaml");
    std::fs::write(&path, yaml).expect("write the config");
    path
}

/// `tollgate usage -c CONFIG ARGS…`; asserts exit 0 and returns stdout and stderr.
fn usage(config: &Path, args: &[&str]) -> (String, String) {
    let mut all = vec!["usage", "-c", config.to_str().expect("a UTF-8 path")];
    all.extend_from_slice(args);
    let output = tollgate(&all);
    assert_eq!(output.status.code(), Some(0), "tollgate {all:?}: {output:?}");
    (text(&output.stdout), text(&output.stderr))
}

const MAY_TABLE: &str = "\
usage since 2026-05-01T00:00:00.000Z
TEAM   USER       REQUESTS  INPUT  OUTPUT  CACHE_WRITE  CACHE_READ  COST_USD
blue   bob               1   3000    1500            0       20000    0.0625
red    carol             1   5000    2000         1000           0    0.0518
red    alice             3   2400     520            0       10200    0.0167
blue   dave              1    900       0            0           0    0.0027
-      developer         1    100      50            0           0    0.0011
total                    7  11400    4070         1000       30200    0.1347
";

const MAY_CSV: &str = "\
team,user,model,requests,input_tokens,output_tokens,cache_creation_input_tokens,cache_read_input_tokens,cost_usd
blue,bob,claude-opus-4-5,1,3000,1500,0,20000,0.0625
red,carol,claude-sonnet-4-5,1,5000,2000,1000,0,0.0518
red,alice,claude-sonnet-4-5,2,1600,400,0,10200,0.0153
blue,dave,claude-sonnet-4-5,1,900,0,0,0,0.0027
red,alice,claude-haiku-4-5,1,800,120,0,0,0.0014
-,developer,claude-sonnet-4-5,1,100,50,0,0,0.0011
total,,,7,11400,4070,1000,30200,0.1347
";

const MAY_JSON: &str = r#"{
  "since": "2026-05-01T00:00:00.000Z",
  "team": null,
  "user": null,
  "rows": [
    {
      "team": "blue",
      "user": "bob",
      "model": "claude-opus-4-5",
      "requests": 1,
      "input_tokens": 3000,
      "output_tokens": 1500,
      "cache_creation_input_tokens": 0,
      "cache_read_input_tokens": 20000,
      "cost_usd": 0.0625
    },
    {
      "team": "red",
      "user": "carol",
      "model": "claude-sonnet-4-5",
      "requests": 1,
      "input_tokens": 5000,
      "output_tokens": 2000,
      "cache_creation_input_tokens": 1000,
      "cache_read_input_tokens": 0,
      "cost_usd": 0.05175
    },
    {
      "team": "red",
      "user": "alice",
      "model": "claude-sonnet-4-5",
      "requests": 2,
      "input_tokens": 1600,
      "output_tokens": 400,
      "cache_creation_input_tokens": 0,
      "cache_read_input_tokens": 10200,
      "cost_usd": 0.015345
    },
    {
      "team": "blue",
      "user": "dave",
      "model": "claude-sonnet-4-5",
      "requests": 1,
      "input_tokens": 900,
      "output_tokens": 0,
      "cache_creation_input_tokens": 0,
      "cache_read_input_tokens": 0,
      "cost_usd": 0.0027
    },
    {
      "team": "red",
      "user": "alice",
      "model": "claude-haiku-4-5",
      "requests": 1,
      "input_tokens": 800,
      "output_tokens": 120,
      "cache_creation_input_tokens": 0,
      "cache_read_input_tokens": 0,
      "cost_usd": 0.0014
    },
    {
      "team": "-",
      "user": "developer",
      "model": "claude-sonnet-4-5",
      "requests": 1,
      "input_tokens": 100,
      "output_tokens": 50,
      "cache_creation_input_tokens": 0,
      "cache_read_input_tokens": 0,
      "cost_usd": 0.00105
    }
  ],
  "total": {
    "requests": 7,
    "input_tokens": 11400,
    "output_tokens": 4070,
    "cache_creation_input_tokens": 1000,
    "cache_read_input_tokens": 30200,
    "cost_usd": 0.134745
  },
  "invalid_lines": 1
}
"#;

#[test]
fn usage_prints_the_ledger_as_table_csv_and_json() {
    let dir = tempfile::tempdir().expect("temp dir");
    let audit = dir.path().join("audit.jsonl");
    may_ledger().write(&audit);
    let config = config_file(dir.path(), Some(&audit));
    let torn =
        format!("tollgate: {}: 1 line is not a JSON audit record and skipped (the first: line 6)\n", audit.display());

    let since = ["--since", "2026-05-01T00:00:00Z"];
    let (stdout, stderr) = usage(&config, &since);
    assert_eq!(stdout, MAY_TABLE);
    assert_eq!(stderr, torn);
    assert_eq!(usage(&config, &[&since[..], &["--format", "table"]].concat()).0, MAY_TABLE);

    let (stdout, stderr) = usage(&config, &[&since[..], &["--format", "csv"]].concat());
    assert_eq!(stdout, MAY_CSV);
    assert_eq!(stderr, torn);

    let (stdout, stderr) = usage(&config, &[&since[..], &["--format", "json"]].concat());
    assert_eq!(stdout, MAY_JSON);
    assert_eq!(stderr, torn);
    // The JSON agrees with the CSV, row for row, and its numbers are numbers.
    let json: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(json["rows"].as_array().expect("rows").len(), MAY_CSV.lines().count() - 2);
    assert!(json["total"]["cost_usd"].is_f64() && json["total"]["requests"].is_u64());

    // The same instant with an offset; and a window that starts after alice's first two requests.
    assert_eq!(usage(&config, &["--since", "2026-05-01T02:00:00+02:00"]).0, MAY_TABLE);
    let (stdout, _) = usage(&config, &["--since", "2026-05-03T15:00:00Z", "--format", "csv"]);
    assert!(stdout.contains("\nred,alice,claude-sonnet-4-5,1,400,60,0,5200,0.0030\n"), "{stdout}");
    assert!(!stdout.contains("claude-haiku-4-5"), "{stdout}");

    // A window before every record adds the April request.
    let (stdout, _) = usage(&config, &["--since", "2026-04-01T00:00:00Z", "--format", "csv"]);
    assert!(stdout.starts_with(&MAY_CSV[..MAY_CSV.find('\n').unwrap()]), "{stdout}");
    assert!(stdout.contains("\nred,alice,claude-opus-4-5,1,90000,9000,0,0,0.9000\n"), "{stdout}");
    assert!(stdout.ends_with("\ntotal,,,8,101400,13070,1000,30200,1.0347\n"), "{stdout}");
}

#[test]
fn usage_filters_by_team_and_user() {
    let dir = tempfile::tempdir().expect("temp dir");
    let audit = dir.path().join("audit.jsonl");
    may_ledger().write(&audit);
    let config = config_file(dir.path(), Some(&audit));
    let since = ["--since", "2026-05-01T00:00:00Z"];

    let (stdout, _) = usage(&config, &[&since[..], &["--team", "red", "--user", "alice"]].concat());
    assert_eq!(
        stdout,
        "usage since 2026-05-01T00:00:00.000Z, team red, user alice\n\
         TEAM   USER   REQUESTS  INPUT  OUTPUT  CACHE_WRITE  CACHE_READ  COST_USD\n\
         red    alice         3   2400     520            0       10200    0.0167\n\
         total                3   2400     520            0       10200    0.0167\n"
    );

    let (stdout, _) = usage(&config, &[&since[..], &["--team", "blue", "--format", "csv"]].concat());
    assert_eq!(
        stdout,
        "team,user,model,requests,input_tokens,output_tokens,cache_creation_input_tokens,cache_read_input_tokens,cost_usd\n\
         blue,bob,claude-opus-4-5,1,3000,1500,0,20000,0.0625\n\
         blue,dave,claude-sonnet-4-5,1,900,0,0,0,0.0027\n\
         total,,,2,3900,1500,0,20000,0.0652\n"
    );

    let (stdout, _) = usage(&config, &[&since[..], &["--user", "alice", "--format", "json"]].concat());
    let json: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!((json["team"].clone(), json["user"].clone()), (Value::Null, Value::from("alice")));
    let models: Vec<&str> = json["rows"].as_array().unwrap().iter().map(|r| r["model"].as_str().unwrap()).collect();
    assert_eq!(models, ["claude-sonnet-4-5", "claude-haiku-4-5"]);
    assert_eq!(json["total"]["requests"], 3);

    // Nobody by that name: an empty table with its total.
    let (stdout, _) = usage(&config, &[&since[..], &["--user", "mallory"]].concat());
    assert_eq!(stdout.lines().last(), Some("total               0      0       0            0           0    0.0000"));
}

#[test]
fn usage_counts_back_from_now() {
    let dir = tempfile::tempdir().expect("temp dir");
    let audit = dir.path().join("audit.jsonl");
    let now = SystemTime::now();
    let mut ledger = Ledger::new();
    ledger
        .record(metered(now - DAY * 40, "gateway", "carol", Some("red"), "claude-opus-4-5", [4, 0, 0, 0], 400))
        .record(metered(now - DAY * 2, "gateway", "bob", Some("blue"), "claude-opus-4-5", [2, 0, 0, 0], 200))
        .record(unmetered(now - DAY, "connect", "bob", "blue", "allow", 200, None))
        .record(metered(
            now - Duration::from_secs(3_600),
            "gateway",
            "alice",
            Some("red"),
            "claude-opus-4-5",
            [1, 0, 0, 0],
            100,
        ));
    ledger.write(&audit);
    let config = config_file(dir.path(), Some(&audit));
    let users = |args: &[&str]| -> (Vec<String>, Value) {
        let (stdout, stderr) = usage(&config, &[args, &["--format", "json"]].concat());
        assert_eq!(stderr, "", "every line is a record");
        let json: Value = serde_json::from_str(&stdout).expect("JSON");
        let users = json["rows"].as_array().unwrap().iter().map(|r| r["user"].as_str().unwrap().to_owned()).collect();
        (users, json)
    };

    // The default window is 30 days before now.
    let (names, json) = users(&[]);
    assert_eq!(names, ["bob", "alice"]);
    let since = humantime::parse_rfc3339(json["since"].as_str().unwrap()).expect("since is RFC 3339");
    let expected = now - DAY * 30;
    let skew = since.duration_since(expected).unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_secs(60), "since {since:?}, expected about {expected:?}");

    assert_eq!(users(&["--since", "12h"]).0, ["alice"]);
    assert_eq!(users(&["--since", "3d"]).0, ["bob", "alice"]);
    assert_eq!(users(&["--since", "60d"]).0, ["carol", "bob", "alice"]);
    assert_eq!(users(&["--since", "60d"]).1["total"]["input_tokens"], 7);
}

#[test]
fn usage_errors_name_what_is_missing() {
    let dir = tempfile::tempdir().expect("temp dir");

    // No audit section: a config problem (2).
    let config = config_file(dir.path(), None);
    let output = tollgate(&["usage", "-c", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert_eq!(
        text(&output.stderr),
        format!(
            "tollgate: {}: audit.file is not configured: usage is summed from the audit log at audit.file.path\n",
            config.display()
        )
    );
    assert!(output.stdout.is_empty(), "{output:?}");

    // A config that does not load: 2, with the config error.
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "listeners: []\npolicy: {default: deny}\nnot_a_key: 1\n").unwrap();
    let output = tollgate(&["usage", "-c", broken.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(text(&output.stderr).contains("not_a_key"), "{output:?}");

    // The audit file does not exist: a runtime failure (1) naming it.
    let missing = dir.path().join("var").join("audit.jsonl");
    let config = config_file(dir.path(), Some(&missing));
    let output = tollgate(&["usage", "-c", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(stderr.starts_with(&format!("tollgate: {}: ", missing.display())), "{stderr}");
    assert!(stderr.contains("No such file or directory"), "{stderr}");
    assert!(output.stdout.is_empty(), "{output:?}");

    // Bad arguments are clap's usage errors (2), before anything is read.
    let output = tollgate(&["usage", "-c", config.to_str().unwrap(), "--format", "xml"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("invalid value 'xml' for '--format <FORMAT>'"), "{stderr}");
    assert!(stderr.contains("[possible values: table, csv, json]"), "{stderr}");
    let output = tollgate(&["usage", "-c", config.to_str().unwrap(), "--since", "yesterday"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("\"yesterday\" is neither a duration (30d, 12h) nor an RFC 3339 time"), "{stderr}");
}

// ---- the admin endpoint ------------------------------------------------------------------------------------

const PASSWORD: &str = "alice-gateway-key";

/// A proxy listener, a gateway listener routed to `stub`, alice of team red, the admin token, `pricing` that
/// makes a usage's cost exact (input 10, output 20, cache writes 5, cache reads 1 USD per million), and the
/// chained audit file `DIR/audit.jsonl`.
fn gateway_config(dir: &Path, stub: &MessagesStub) -> PathBuf {
    let yaml = format!(
        "listeners:\n  - {{name: proxy, bind: \"127.0.0.1:0\"}}\n  - {{name: gateway, bind: \"127.0.0.1:0\", mode: gateway}}\n\
         admin: {{bind: \"127.0.0.1:0\", token: \"{TOKEN}\"}}\n\
         auth:\n  anonymous: deny\n  users:\n    - {{name: alice, password_hash: \"{hash}\", teams: [red]}}\n\
         teams: {{red: {{}}}}\npolicy: {{default: deny}}\n\
         upstreams:\n  stub: {{url: \"{url}\", api_key: \"sk-upstream\"}}\n\
         routing:\n  - {{when: {{listener: gateway}}, to: stub}}\n\
         pricing:\n  - {{model: \"*\", input: 10, output: 20, cache_write: 5, cache_read: 1}}\n\
         audit: {{file: {{path: \"{audit}\", chain: true}}}}\n",
        hash = hash(PASSWORD),
        url = stub.url(),
        audit = dir.join("audit.jsonl").display(),
    );
    let path = dir.join("tollgate.yaml");
    std::fs::write(&path, yaml).expect("write the config");
    path
}

async fn admin_get(gateway: &TestGateway, path_and_query: &str, authorization: Option<&str>) -> Response {
    admin(gateway, "GET", path_and_query, authorization).await
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// One metered message through the gateway listener as alice; returns once the gateway closed the connection.
async fn message_as_alice(gateway: &TestGateway) {
    let body = request_body(MODEL, false);
    let request = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: tollgate.test\r\nx-api-key: alice:{PASSWORD}\r\nanthropic-version: 2023-06-01\r\n\
         content-type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let response =
        exchange_until_closed(gateway.running.as_ref().unwrap().address("gateway").unwrap(), request.as_bytes()).await;
    assert_eq!(response.status, 200, "{response:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_usage_serves_the_report_behind_the_token() {
    let stub = MessagesStub::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = gateway_config(dir.path(), &stub);
    // Earlier history in the file the gateway appends to (its chain continues from the last hash).
    let now = SystemTime::now();
    let mut ledger = Ledger::new();
    ledger
        .record(metered(now - DAY * 40, "gateway", "alice", Some("red"), MODEL, [99_000, 0, 0, 0], 990_000))
        .record(metered(
            now - DAY * 10,
            "intercepted",
            "carol",
            Some("red"),
            "claude-opus-4-5",
            [2_000, 400, 0, 0],
            20_000,
        ))
        .record(metered(now - DAY * 3, "intercepted", "bob", Some("blue"), "claude-haiku-4-5", [500, 100, 0, 0], 1_500))
        .record(unmetered(now - DAY * 3, "intercepted", "bob", "blue", "deny", 429, Some("budget.team.blue.daily")))
        .raw("<<< not json >>>")
        .record(metered(now - DAY, "gateway", "alice", Some("red"), MODEL, [1_000, 200, 0, 0], 14_000));
    ledger.write(&dir.path().join("audit.jsonl"));
    let mut gateway =
        TestGateway::start_file(&config, dir, tollgate::app::Options { watch_interval: None, ..Default::default() })
            .await;

    // A live request, metered by the gateway itself: JSON_USAGE priced at 10/20/5/1.
    message_as_alice(&gateway).await;
    assert_eq!(JSON_USAGE, (313, 47, 1531, 2309));

    // Without the token, or with a wrong one: 401 and no figures.
    for authorization in [None, Some("Bearer wrong".to_owned()), Some(format!("Basic {TOKEN}"))] {
        let response = admin_get(&gateway, "/admin/usage", authorization.as_deref()).await;
        assert_eq!(response.status, 401, "{authorization:?}: {response:?}");
        assert!(!response.body.contains("alice"), "{response:?}");
    }

    // The default: JSON over the last 30 days (not the 40-day-old record), including the live request, which is
    // in the file before the report is read.
    let response = admin_get(&gateway, "/admin/usage", Some(&bearer())).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("content-type").as_deref(), Some("application/json"));
    assert_eq!(response.header("x-tollgate-invalid-lines").as_deref(), Some("1"));
    let json = response.json();
    assert_eq!(
        json["rows"],
        serde_json::json!([
            {"team": "red", "user": "alice", "model": MODEL, "requests": 2, "input_tokens": 1313, "output_tokens": 247,
             "cache_creation_input_tokens": 1531, "cache_read_input_tokens": 2309, "cost_usd": 0.028034},
            {"team": "red", "user": "carol", "model": "claude-opus-4-5", "requests": 1, "input_tokens": 2000,
             "output_tokens": 400, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "cost_usd": 0.02},
            {"team": "blue", "user": "bob", "model": "claude-haiku-4-5", "requests": 1, "input_tokens": 500,
             "output_tokens": 100, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "cost_usd": 0.0015},
        ]),
        "{json:#}"
    );
    assert_eq!(
        json["total"],
        serde_json::json!({"requests": 4, "input_tokens": 3813, "output_tokens": 747, "cache_creation_input_tokens": 1531,
                           "cache_read_input_tokens": 2309, "cost_usd": 0.049534})
    );
    assert_eq!(json["invalid_lines"], 1);
    let since = humantime::parse_rfc3339(json["since"].as_str().unwrap()).expect("since is RFC 3339");
    assert!(since > now - DAY * 30 - Duration::from_secs(60) && since < SystemTime::now() - DAY * 29, "{json}");

    // The same as a table and as CSV, from a fixed instant (percent-encoded, as a form would send it).
    let start = ts(now - DAY * 35);
    let encoded = start.replace(':', "%3A");
    let response = admin_get(&gateway, &format!("/admin/usage?since={encoded}&format=table"), Some(&bearer())).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("content-type").as_deref(), Some("text/plain; charset=utf-8"));
    assert_eq!(
        response.body,
        format!(
            "usage since {start}\n\
             TEAM   USER   REQUESTS  INPUT  OUTPUT  CACHE_WRITE  CACHE_READ  COST_USD\n\
             red    alice         2   1313     247         1531        2309    0.0280\n\
             red    carol         1   2000     400            0           0    0.0200\n\
             blue   bob           1    500     100            0           0    0.0015\n\
             total                4   3813     747         1531        2309    0.0495\n"
        )
    );
    let response =
        admin_get(&gateway, &format!("/admin/usage?team=red&user=&since={encoded}&format=csv"), Some(&bearer())).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("content-type").as_deref(), Some("text/csv; charset=utf-8"));
    assert_eq!(
        response.body,
        format!(
            "team,user,model,requests,input_tokens,output_tokens,cache_creation_input_tokens,cache_read_input_tokens,cost_usd\n\
             red,alice,{MODEL},2,1313,247,1531,2309,0.0280\n\
             red,carol,claude-opus-4-5,1,2000,400,0,0,0.0200\n\
             total,,,3,3313,647,1531,2309,0.0480\n"
        )
    );
    let response = admin_get(&gateway, "/admin/usage?user=bob&since=60d", Some(&bearer())).await;
    assert_eq!(response.json()["total"]["requests"], 1, "{response:?}");
    let response = admin_get(&gateway, "/admin/usage?user=alice&since=60d", Some(&bearer())).await;
    assert_eq!(response.json()["total"]["input_tokens"], 100_313, "{response:?}");

    // What the endpoint cannot read is a 400 naming it.
    for (query, message) in [
        ("since=yesterday", "since: \"yesterday\" is neither a duration"),
        ("format=xml", "format: invalid format \"xml\""),
        ("teams=red", "unknown parameter \"teams\""),
    ] {
        let response = admin_get(&gateway, &format!("/admin/usage?{query}"), Some(&bearer())).await;
        assert_eq!(response.status, 400, "{query}: {response:?}");
        let error = response.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(error.starts_with(message), "{query}: {error}");
    }
    // Only GET.
    let response = exchange(
        gateway.admin,
        format!("POST /admin/usage HTTP/1.1\r\nHost: admin\r\nAuthorization: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", bearer()).as_bytes(),
    )
    .await;
    assert_eq!(response.status, 404, "{response:?}");

    // The file gone: a 500 naming it.
    let audit = gateway.audit_path();
    std::fs::remove_file(&audit).expect("remove the audit file");
    let response = admin_get(&gateway, "/admin/usage", Some(&bearer())).await;
    assert_eq!(response.status, 500, "{response:?}");
    let error = response.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.starts_with(&format!("{}: ", audit.display())), "{error}");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_usage_is_off_without_an_admin_token() {
    let mut gateway = TestGateway::start(common::LOOPBACK_POLICY).await;
    for authorization in [None, Some(bearer())] {
        let response = admin_get(&gateway, "/admin/usage", authorization.as_deref()).await;
        assert_eq!(response.status, 403, "{authorization:?}: {response:?}");
        assert!(response.json()["error"].as_str().unwrap_or_default().contains("admin.token"), "{response:?}");
    }
    gateway.shutdown().await;
}
