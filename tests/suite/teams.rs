//! Teams: who may go where. Global deny beats a team's allow, a team's deny beats global allow, and a member of
//! several teams is denied by any of their denies and allowed by any of their allows. Team hours, read from an
//! injected clock: inside → the request goes on, outside every one of the principal's teams' windows → 403
//! `teams.NAME.hours`, in the team's own time zone, with overnight windows and weekdays.
//!
//! Every request is a real Basic-authenticated request to a real origin on loopback, told apart by port.

use crate::common;

use std::sync::{Arc, OnceLock};

use common::*;

const PASSWORD: &str = "correct horse";

/// One argon2id hash for every user of this file (hashing is the slow part).
fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash(PASSWORD))
}

/// `auth.users` lines for (name, teams).
fn users(list: &[(&str, &[&str])]) -> String {
    let mut text = String::from("auth:\n  anonymous: deny\n  users:\n");
    for (name, teams) in list {
        text.push_str(&format!(
            "    - {{name: {name}, password_hash: \"{}\", teams: [{}]}}\n",
            password_hash(),
            teams.join(", ")
        ));
    }
    text
}

/// Sends one absolute-form GET as `user` on a new connection and waits until the gateway closed it (so its audit
/// record and metrics are in place).
async fn get(gateway: &TestGateway, user: &str, origin: &Origin) -> Response {
    get_as(gateway.proxy, &origin.url("/team-test"), &basic(user, PASSWORD)).await
}

/// What the gateway must answer: 200 from the origin, or 403 naming the rule.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Allow(&'static str),
    Deny(&'static str, &'static str),
}

fn check(response: &Response, expect: Expect, context: &str) {
    match expect {
        Expect::Allow(_) => {
            assert_eq!(response.status, 200, "{context}: {response:?}");
            assert_eq!(response.header("x-origin").as_deref(), Some("yes"), "{context}: from the origin: {response:?}");
        }
        Expect::Deny(kind, rule) => assert_refused(response, 403, kind, Some(rule), context),
    }
}

/// The audit record of each request matches what the client saw: decision and rule.
fn check_audit(audit: &[serde_json::Value], cases: &[(String, Expect)]) {
    assert_eq!(audit.len(), cases.len(), "one record per request: {audit:#?}");
    for (record, (context, expect)) in audit.iter().zip(cases) {
        match expect {
            Expect::Allow(rule) => {
                assert_eq!(record["decision"], "allow", "{context}: {record}");
                assert_eq!(record["status"], 200, "{context}: {record}");
                assert_eq!(record["rule"], *rule, "{context}: {record}");
            }
            Expect::Deny(_, rule) => {
                assert_eq!(record["decision"], "deny", "{context}: {record}");
                assert_eq!(record["status"], 403, "{context}: {record}");
                assert_eq!(record["rule"], *rule, "{context}: {record}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_allow_and_deny_follow_the_precedence_order() {
    // open: policy.allow[0]. shared: policy.allow[1], denied by blue. team_only: allowed by red only.
    // banned: policy.deny[0] although red allows it. contested: red allows, blue denies.
    let open = Origin::start().await;
    let shared = Origin::start().await;
    let team_only = Origin::start().await;
    let banned = Origin::start().await;
    let contested = Origin::start().await;
    let at = |origin: &Origin| format!("\"127.0.0.1:{}\"", origin.address.port());
    let yaml = format!(
        "{users}teams:\n  red: {{allow: [{team_only}, {banned}, {contested}]}}\n  blue: {{deny: [{shared}, {contested}]}}\n  green: {{}}\npolicy:\n  default: deny\n  allow_private: [\"127.0.0.0/8\"]\n  allow: [{open}, {shared}]\n  deny: [{banned}]\n",
        users = users(&[
            ("alice", &["red"]),
            ("bob", &["blue"]),
            ("carol", &["red", "blue"]),
            ("carlos", &["blue", "red"]),
            ("dave", &[]),
            ("gwen", &["green"]),
        ]),
        team_only = at(&team_only),
        banned = at(&banned),
        contested = at(&contested),
        shared = at(&shared),
        open = at(&open),
    );
    let mut gateway = TestGateway::start(&yaml).await;

    use Expect::{Allow, Deny};
    let global_allow = Allow("policy.allow[0]");
    let shared_allow = Allow("policy.allow[1]");
    let red_allow = Allow("teams.red.allow[0]");
    let red_contested = Allow("teams.red.allow[2]");
    let blue_deny_shared = Deny("deny_rule", "teams.blue.deny[0]");
    let blue_deny_contested = Deny("deny_rule", "teams.blue.deny[1]");
    let global_deny = Deny("deny_rule", "policy.deny[0]");
    let default = Deny("default", "policy.default");
    let table: Vec<(&str, &Origin, &str, Expect)> = vec![
        // Global allow: every principal, whatever its teams (a team without rules changes nothing).
        ("alice", &open, "open", global_allow),
        ("bob", &open, "open", global_allow),
        ("dave", &open, "open", global_allow),
        ("gwen", &open, "open", global_allow),
        // A team's deny beats global allow; for a member of two teams, any team's deny denies.
        ("alice", &shared, "shared", shared_allow),
        ("bob", &shared, "shared", blue_deny_shared),
        ("carol", &shared, "shared", blue_deny_shared),
        ("carlos", &shared, "shared", blue_deny_shared),
        ("dave", &shared, "shared", shared_allow),
        // A team's allow adds to global allow for its members only; any team's allow allows.
        ("alice", &team_only, "team_only", red_allow),
        ("bob", &team_only, "team_only", default),
        ("carol", &team_only, "team_only", red_allow),
        ("carlos", &team_only, "team_only", red_allow),
        ("dave", &team_only, "team_only", default),
        ("gwen", &team_only, "team_only", default),
        // Global deny beats a team's allow.
        ("alice", &banned, "banned", global_deny),
        ("carol", &banned, "banned", global_deny),
        ("dave", &banned, "banned", global_deny),
        // One team allows, the other denies: the deny wins, in whichever order the user lists the teams.
        ("alice", &contested, "contested", red_contested),
        ("bob", &contested, "contested", blue_deny_contested),
        ("carol", &contested, "contested", blue_deny_contested),
        ("carlos", &contested, "contested", blue_deny_contested),
    ];
    let mut cases = Vec::new();
    for (user, origin, name, expect) in &table {
        let context = format!("{user} → {name}");
        let response = get(&gateway, user, origin).await;
        check(&response, *expect, &context);
        cases.push((context, *expect));
    }

    // Nothing denied ever reached its origin; every allowed request did.
    for (origin, name) in [(&open, "open"), (&shared, "shared"), (&team_only, "team_only"), (&banned, "banned")] {
        let allowed = table.iter().filter(|(_, _, n, e)| *n == name && matches!(e, Allow(_))).count();
        assert_eq!(origin.request_heads().len(), allowed, "requests that reached {name}");
    }
    assert_eq!(contested.request_heads().len(), 1, "only alice reached the contested origin");
    check_audit(&gateway.audit().await, &cases);
    let metrics = gateway.shutdown_and_metrics().await;
    let denied_by_rule = cases.iter().filter(|(_, e)| matches!(e, Deny("deny_rule", _))).count();
    assert_eq!(
        metric_value(
            &metrics,
            "tollgate_requests_total{decision=\"deny\",kind=\"http\",listener=\"proxy\",reason=\"deny_rule\"}"
        ),
        denied_by_rule as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_rules_apply_to_connect_tunnels_too() {
    let open = Echo::start().await;
    let team_only = Echo::start().await;
    let yaml = format!(
        "{users}teams:\n  red: {{allow: [\"127.0.0.1:{team}\"]}}\n  blue: {{deny: [\"127.0.0.1:{open}\"]}}\npolicy:\n  default: deny\n  allow_private: [\"127.0.0.0/8\"]\n  allow: [\"127.0.0.1:{open}\"]\n",
        users = users(&[("alice", &["red"]), ("bob", &["blue"])]),
        team = team_only.address.port(),
        open = open.address.port(),
    );
    let gateway = TestGateway::start(&yaml).await;
    let connect = |user: &str, echo: &Echo| {
        let credentials = format!("Proxy-Authorization: {}", basic(user, PASSWORD));
        connect_request(&format!("127.0.0.1:{}", echo.address.port()), &[&credentials])
    };
    for (user, echo, expect) in [
        ("alice", &open, None),
        ("alice", &team_only, None),
        ("bob", &open, Some(("deny_rule", "teams.blue.deny[0]"))),
        ("bob", &team_only, Some(("default", "policy.default"))),
    ] {
        let context = format!("CONNECT {user} → {}", echo.address);
        let (mut stream, response) = exchange_keep(gateway.proxy, connect(user, echo).as_bytes()).await;
        match expect {
            None => {
                assert_eq!(response.status, 200, "{context}: {response:?}");
                tokio::io::AsyncWriteExt::write_all(&mut stream, b"ping").await.expect("write into the tunnel");
                assert_eq!(read_exact_bytes(&mut stream, 4).await, b"ping", "{context}");
            }
            Some((kind, rule)) => assert_refused(&response, 403, kind, Some(rule), &context),
        }
    }
    assert_eq!(open.connection_count(), 1, "bob never reached the open echo");
    assert_eq!(team_only.connection_count(), 1, "bob never reached the team echo");
}

/// Teams with working hours, in different time zones. December: Berlin is UTC+1, Tokyo UTC+9, New York UTC-5.
fn hours_config(open: &Origin, banned: &Origin) -> String {
    format!(
        "{users}teams:\n  berlin: {{hours: {{from: \"09:00\", to: \"17:00\", tz: Europe/Berlin}}}}\n  tokyo: {{hours: {{from: \"09:00\", to: \"17:00\", tz: Asia/Tokyo}}}}\n  night: {{hours: {{from: \"22:00\", to: \"06:00\", tz: America/New_York, days: [fri]}}}}\n  anytime: {{}}\npolicy:\n  default: deny\n  allow_private: [\"127.0.0.0/8\"]\n  allow: [\"127.0.0.1:{open}\"]\n  deny: [\"127.0.0.1:{banned}\"]\n",
        users = users(&[
            ("bea", &["berlin"]),
            ("taro", &["tokyo"]),
            ("duo", &["berlin", "tokyo"]),
            ("oud", &["tokyo", "berlin"]),
            ("flex", &["berlin", "anytime"]),
            ("owl", &["night"]),
            ("nomad", &[]),
        ]),
        open = open.address.port(),
        banned = banned.address.port(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hours_are_enforced_in_each_teams_time_zone() {
    let open = Origin::start().await;
    let banned = Origin::start().await;
    let clock = TestClock::at("2026-12-01T12:00:00Z");
    let mut gateway = TestGateway::start_with_clock(&hours_config(&open, &banned), clock.clone()).await;

    use Expect::{Allow, Deny};
    let ok = Allow("policy.allow[0]");
    let berlin = Deny("hours", "teams.berlin.hours");
    let tokyo = Deny("hours", "teams.tokyo.hours");
    let night = Deny("hours", "teams.night.hours");
    let table: Vec<(&str, &str, Expect)> = vec![
        // 08:59:59 in Berlin (outside), 16:59:59 in Tokyo (inside).
        ("2026-12-01T07:59:59Z", "bea", berlin),
        ("2026-12-01T07:59:59Z", "taro", ok),
        ("2026-12-01T07:59:59Z", "duo", ok),
        ("2026-12-01T07:59:59Z", "oud", ok),
        // 09:00 in Berlin (inside: `from` is inclusive), 17:00 in Tokyo (outside: `to` is exclusive).
        ("2026-12-01T08:00:00Z", "bea", ok),
        ("2026-12-01T08:00:00Z", "taro", tokyo),
        ("2026-12-01T08:00:00Z", "duo", ok),
        // 16:59 and 17:00 in Berlin.
        ("2026-12-01T15:59:59Z", "bea", ok),
        ("2026-12-01T16:00:00Z", "bea", berlin),
        // 19:00 in Berlin, 03:00 in Tokyo: outside every team's hours → denied, naming the first team's hours.
        ("2026-12-01T18:00:00Z", "duo", berlin),
        ("2026-12-01T18:00:00Z", "oud", tokyo),
        // A team without hours is always inside: a member of it and of an outside team may go.
        ("2026-12-01T18:00:00Z", "flex", ok),
        // No teams, no hours.
        ("2026-12-01T18:00:00Z", "nomad", ok),
        // Summer time: 09:00 in Berlin is 07:00 UTC in July.
        ("2026-07-01T06:59:59Z", "bea", berlin),
        ("2026-07-01T07:00:00Z", "bea", ok),
        // Overnight on Fridays in New York: Thursday 23:00 no, Friday 23:00 yes, Saturday 05:59 yes (Friday's
        // window), Saturday 06:00 no, Saturday 23:00 no.
        ("2026-11-27T04:00:00Z", "owl", night),
        ("2026-11-28T04:00:00Z", "owl", ok),
        ("2026-11-28T10:59:00Z", "owl", ok),
        ("2026-11-28T11:00:00Z", "owl", night),
        ("2026-11-29T04:00:00Z", "owl", night),
    ];
    let mut cases = Vec::new();
    for (time, user, expect) in &table {
        clock.set(at(time));
        let context = format!("{user} at {time}");
        check(&get(&gateway, user, &open).await, *expect, &context);
        cases.push((context, *expect));
    }

    // Hours come after the deny lists: outside hours, a globally denied destination names policy.deny.
    clock.set(at("2026-12-01T18:00:00Z"));
    let global_deny = Deny("deny_rule", "policy.deny[0]");
    check(&get(&gateway, "bea", &banned).await, global_deny, "bea → banned outside hours");
    cases.push(("bea → banned outside hours".to_owned(), global_deny));

    let allowed = table.iter().filter(|(_, _, e)| matches!(e, Allow(_))).count();
    assert_eq!(open.request_heads().len(), allowed, "only requests inside hours reached the origin");
    assert_eq!(banned.request_heads().len(), 0);
    check_audit(&gateway.audit().await, &cases);
    let metrics = gateway.shutdown_and_metrics().await;
    let outside = table.len() - allowed;
    assert_eq!(
        metric_value(
            &metrics,
            "tollgate_requests_total{decision=\"deny\",kind=\"http\",listener=\"proxy\",reason=\"hours\"}"
        ),
        outside as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hours_are_checked_per_request_on_a_keep_alive_connection() {
    let open = Origin::start().await;
    let banned = Origin::start().await;
    let clock = TestClock::at("2026-12-01T08:30:00Z"); // 09:30 in Berlin
    let gateway = TestGateway::start_with_clock(&hours_config(&open, &banned), Arc::clone(&clock)).await;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nProxy-Authorization: {}\r\n\r\n",
        open.url("/kept"),
        open.address,
        basic("bea", PASSWORD)
    );
    let (mut stream, response) = exchange_keep(gateway.proxy, request.as_bytes()).await;
    assert_eq!(response.status, 200, "{response:?}");
    // The working day ends while the connection stays open: the next request on it is refused, and the
    // connection stays usable.
    clock.set(at("2026-12-01T16:00:00Z"));
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await.expect("second request");
    let response = read_response(&mut stream).await;
    assert_refused(&response, 403, "hours", Some("teams.berlin.hours"), "after hours on a kept connection");
    clock.set(at("2026-12-02T08:00:00Z"));
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await.expect("third request");
    assert_eq!(read_response(&mut stream).await.status, 200, "the next morning");
    assert_eq!(open.connection_count(), 1, "one pooled upstream connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_file_member_of_an_undefined_team_is_refused() {
    // A misspelt team must not silently drop its member's team rules (a team deny would no longer apply).
    let dir = tempfile::tempdir().expect("temp dir");
    let users = dir.path().join("users.yaml");
    std::fs::write(
        &users,
        format!(
            "- {{name: alice, password_hash: \"{h}\", teams: [red]}}\n- {{name: bob, password_hash: \"{h}\", teams: [red, contractor]}}\n",
            h = password_hash()
        ),
    )
    .expect("write users file");
    let yaml = format!(
        "auth:\n  users_file: \"{}\"\nteams:\n  red: {{}}\n  contractors: {{deny: [\"github.com\"]}}\n{LOOPBACK_POLICY}",
        users.display()
    );
    let error = TestGateway::try_start(&yaml).await.err().expect("the config is refused");
    let place = format!("{}:2:", users.display());
    assert!(error.starts_with(&place), "{error:?} should point into the users file at {place}");
    assert!(error.contains("\"contractor\" is not defined under teams"), "{error}");
}
