//! `tollgate explain`, the real binary: exit 0 on allow and 1 on deny with the deciding rule printed, team hours
//! evaluated `--at` a given time, 2 for a config or usage error — and, for a table of users and destinations,
//! the same decision and rule as the running gateway gives on the same config file at the same time.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::binary::{explain, Explained};
use common::*;
use tollgate::app::Options;

const PASSWORD: &str = "correct horse";

fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash(PASSWORD))
}

impl Explained {
    /// The rule on the `decision:` line.
    fn rule(&self) -> &str {
        let line = self.stdout.lines().find(|l| l.starts_with("decision:")).unwrap_or_else(|| panic!("{self:?}"));
        line.split("(rule ").nth(1).and_then(|r| r.strip_suffix(')')).unwrap_or_else(|| panic!("{self:?}"))
    }
}

/// Users, teams and a policy over the given loopback ports:
/// `open` (policy.allow[0]), `shared` (policy.allow[1], denied by blue), `team_only` (red's allow),
/// `banned` (policy.deny[0], although red allows it), `contested` (red allows, blue denies); `policy.ports` is
/// 443, so a port no rule names is refused by `policy.ports`. Team night has hours 22:00–06:00 New York time.
fn policy_config(dir: &Path, open: u16, shared: u16, team_only: u16, banned: u16, contested: u16) -> PathBuf {
    let user = |name: &str, teams: &str| {
        format!("    - {{name: {name}, password_hash: \"{}\", teams: [{teams}]}}\n", password_hash())
    };
    let port = |p: u16| format!("\"127.0.0.1:{p}\"");
    let text = format!(
        "listeners: [{{name: proxy, bind: \"127.0.0.1:0\"}}]\nadmin: {{bind: \"127.0.0.1:0\"}}\naudit: {{file: {{path: \"{audit}\"}}}}\nauth:\n  anonymous: deny\n  users:\n{users}teams:\n  red:\n    allow: [{team_only}, {banned}, {contested}]\n    limits: {{rpm: 600, user_concurrent: 8}}\n  blue:\n    deny: [{shared}, {contested}]\n  night:\n    allow: [{team_only}]\n    hours: {{from: \"22:00\", to: \"06:00\", tz: America/New_York}}\npolicy:\n  default: deny\n  ports: [443]\n  allow_private: [\"127.0.0.0/8\"]\n  allow: [{open}, {shared}]\n  deny: [{banned}]\nlimits: {{user: {{rpm: 120}}, org: {{concurrent: 500}}}}\n",
        audit = dir.join("audit.jsonl").display(),
        users = [
            user("alice", "red"),
            user("bob", "blue"),
            user("carol", "red, blue"),
            user("dave", ""),
            user("nina", "night"),
            user("mixed", "night, red"),
        ]
        .concat(),
        open = port(open),
        shared = port(shared),
        team_only = port(team_only),
        banned = port(banned),
        contested = port(contested),
    );
    let path = dir.join("tollgate.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

#[tokio::test]
async fn allow_exits_0_and_prints_the_rule_the_hours_and_the_limits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = policy_config(dir.path(), 8001, 8002, 8003, 8004, 8005);
    let at = ["--at", "2026-12-01T04:00:00Z"]; // 23:00 in New York: inside night's hours
    let out = explain(&config, &[&at[..], &["--user", "alice", "127.0.0.1:8001"]].concat()).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.rule(), "policy.allow[0]", "{out:?}");
    assert!(out.stdout.contains("decision:  allow (rule policy.allow[0])"), "{out:?}");
    assert!(out.stdout.contains("principal: alice (teams: red)"), "{out:?}");
    for limit in [
        "user 120 requests/minute (rate:user:alice)",
        "team 600 requests/minute (rate:team:red)",
        "team member 8 concurrent (conc:team:red:user:alice)",
        "org 500 concurrent (conc:org)",
    ] {
        assert!(out.stdout.contains(&format!("limit:     {limit}")), "{limit}: {out:?}");
    }
    // A team's allow, and a URL as the target.
    let out =
        explain(&config, &[&at[..], &["--user", "alice", "--method", "GET", "http://127.0.0.1:8003/v1/x"]].concat())
            .await;
    assert_eq!((out.code, out.rule()), (0, "teams.red.allow[0]"), "{out:?}");
    assert!(out.stdout.contains("request:   GET 127.0.0.1:8003"), "{out:?}");
    let out = explain(&config, &[&at[..], &["--user", "nina", "127.0.0.1:8003"]].concat()).await;
    assert_eq!((out.code, out.rule()), (0, "teams.night.allow[0]"), "{out:?}");
    assert!(
        out.stdout.contains("hours:     teams.night.hours 22:00-06:00 America/New_York (inside at the given time)"),
        "{out:?}"
    );
}

#[tokio::test]
async fn deny_exits_1_and_names_the_rule() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = policy_config(dir.path(), 8001, 8002, 8003, 8004, 8005);
    for (user, target, rule) in [
        ("alice", "127.0.0.1:8004", "policy.deny[0]"),
        ("bob", "127.0.0.1:8002", "teams.blue.deny[0]"),
        ("carol", "127.0.0.1:8005", "teams.blue.deny[1]"),
        // red's allow names the port; bob is not in red, so the port is checked against policy.ports.
        ("bob", "127.0.0.1:8003", "policy.ports"),
        ("dave", "127.0.0.1:9999", "policy.ports"),
        ("dave", "127.0.0.1:443", "policy.default"),
        ("dave", "10.1.2.3:443", "policy.private_destinations"),
    ] {
        let out = explain(&config, &["--user", user, target]).await;
        assert_eq!((out.code, out.rule()), (1, rule), "{user} → {target}: {out:?}");
        assert!(out.stdout.contains(&format!("decision:  deny (rule {rule})")), "{out:?}");
    }
}

#[tokio::test]
async fn at_evaluates_team_hours_at_the_given_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = policy_config(dir.path(), 8001, 8002, 8003, 8004, 8005);
    // 12:00 in New York: outside night's 22:00–06:00, even for a globally allowed destination.
    let noon = ["--at", "2026-12-01T17:00:00Z"];
    let out = explain(&config, &[&noon[..], &["--user", "nina", "127.0.0.1:8001"]].concat()).await;
    assert_eq!((out.code, out.rule()), (1, "teams.night.hours"), "{out:?}");
    assert!(out.stdout.contains("(outside at the given time)"), "{out:?}");
    // Another team without hours keeps mixed inside.
    let out = explain(&config, &[&noon[..], &["--user", "mixed", "127.0.0.1:8001"]].concat()).await;
    assert_eq!((out.code, out.rule()), (0, "policy.allow[0]"), "{out:?}");
    // Offsets other than Z: 05:59 and 06:00 in New York, written as New York time.
    let out = explain(&config, &["--at", "2026-12-01T05:59:00-05:00", "--user", "nina", "127.0.0.1:8001"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = explain(&config, &["--at", "2026-12-01T06:00:00-05:00", "--user", "nina", "127.0.0.1:8001"]).await;
    assert_eq!((out.code, out.rule()), (1, "teams.night.hours"), "{out:?}");
    // --team replaces the configured teams.
    let out = explain(&config, &[&noon[..], &["--user", "nina", "--team", "red", "127.0.0.1:8003"]].concat()).await;
    assert_eq!((out.code, out.rule()), (0, "teams.red.allow[0]"), "{out:?}");
    assert!(out.stdout.contains("principal: nina (teams: red)"), "{out:?}");
}

#[tokio::test]
async fn config_and_usage_errors_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("bad.yaml");
    std::fs::write(&config, "listeners: [{name: proxy, bind: \"127.0.0.1:0\"}]\npolicy:\n  default: sometimes\n")
        .expect("write config");
    let out = explain(&config, &["--user", "alice", "example.com"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    let place = format!("{}:3:12: policy.default:", config.display());
    assert!(out.stderr.contains(&place), "{place}: {out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");

    let good = policy_config(dir.path(), 8001, 8002, 8003, 8004, 8005);
    let out = explain(&good, &["--user", "alice", "--at", "yesterday", "127.0.0.1:8001"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--at"), "{out:?}");
    let out = explain(&good, &["--user", "alice", "not a target"]).await;
    assert_eq!(out.code, 2, "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_agrees_with_the_running_gateway() {
    let open = Origin::start().await;
    let shared = Origin::start().await;
    let team_only = Origin::start().await;
    let banned = Origin::start().await;
    let contested = Origin::start().await;
    let unlisted = Origin::start().await;
    let origins = [&open, &shared, &team_only, &banned, &contested, &unlisted];
    let dir = tempfile::tempdir().expect("temp dir");
    let path = policy_config(
        dir.path(),
        open.address.port(),
        shared.address.port(),
        team_only.address.port(),
        banned.address.port(),
        contested.address.port(),
    );
    let users = ["alice", "bob", "carol", "dave", "nina", "mixed"];
    let audit_path = dir.path().join("audit.jsonl");
    let mut cases = 0;
    let mut allowed = 0;
    // Inside night's hours, then outside: the gateway's clock and `--at` stand at the same instant.
    for time in ["2026-12-01T04:00:00Z", "2026-12-01T17:00:00Z"] {
        let clock = TestClock::at(time);
        let options = Options { clock: clock.clone(), watch_interval: None };
        // The config names its audit file (in `dir`); the harness's own temp dir stays unused.
        let mut running = TestGateway::start_file(&path, tempfile::tempdir().expect("temp dir"), options).await;
        for user in users {
            for origin in origins {
                let url = origin.url("/agree");
                let context = format!("{user} → {url} at {time}");
                let said = explain(&path, &["--user", user, "--method", "GET", "--at", time, &url]).await;
                let done = get_as(running.proxy, &url, &basic(user, PASSWORD)).await;
                match said.code {
                    0 => {
                        assert_eq!(
                            done.status,
                            200,
                            "{context}: explain allows ({}), the gateway: {done:?}",
                            said.rule()
                        );
                        allowed += 1;
                    }
                    1 => {
                        assert_eq!(
                            done.status,
                            403,
                            "{context}: explain denies ({}), the gateway: {done:?}",
                            said.rule()
                        );
                        assert_eq!(done.header("x-tollgate-rule").as_deref(), Some(said.rule()), "{context}");
                    }
                    _ => panic!("{context}: {said:?}"),
                }
                // The rule is in the request's audit record too (allow or deny).
                running.shared().auditor.flush().await;
                let audit = std::fs::read_to_string(&audit_path).expect("audit file");
                let record: serde_json::Value =
                    serde_json::from_str(audit.lines().last().expect("a record")).expect("JSON record");
                assert_eq!(record["rule"].as_str(), Some(said.rule()), "{context}: {record}");
                assert_eq!(record["user"].as_str(), Some(user), "{context}: {record}");
                cases += 1;
            }
        }
        running.shutdown().await;
    }
    assert_eq!(cases, 2 * users.len() * origins.len());
    // The table holds both answers in quantity, and the hours changed some.
    assert!(allowed >= 12 && cases - allowed >= 12, "{allowed} of {cases} allowed");
}
