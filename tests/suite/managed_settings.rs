//! Claude Code's managed settings and policy limits served inside intercepted tunnels: 200 with the body and its
//! checksum (computed as the client computes it: checked against node's `JSON.stringify`), `ETag` and a
//! `request-id`, 304 to a matching `If-None-Match`, team overlays by the merge rules, generated `availableModels`
//! and deny rules, pass-through to the upstream where nothing is configured, never 204 or 404, and a reload
//! changing what is served.
//!
//! Real parts only: the gateway on 127.0.0.1:0, the Messages stub as upstream (it answers `{}` on these paths),
//! raw requests over TLS through the tunnel, node for the client's checksum, and the admin reload endpoint.

use crate::common;

use std::process::Stdio;
use std::sync::OnceLock;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use common::intercept::{get, intercepted, send, Intercepting, Parts};
use common::messages::MessagesStub;
use common::{admin, basic, hash, Response, TestGateway};
use tollgate::app::Options;

const SETTINGS: &str = "/api/claude_code/settings";
const POLICY_LIMITS: &str = "/api/claude_code/policy_limits";
const PASSWORD: &str = "correct horse";
const TOKEN: &str = "admin-token-for-settings-tests";

fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash(PASSWORD))
}

/// `auth` with alice (interns), bob (interns and contractors) and carol (no team), and those teams.
fn auth_with_teams(teams: &str) -> String {
    let mut auth = String::from("auth:\n  anonymous: deny\n  users:\n");
    for (user, teams) in [("alice", "[interns]"), ("bob", "[interns, contractors]"), ("carol", "[]")] {
        auth.push_str(&format!("    - {{name: {user}, password_hash: \"{}\", teams: {teams}}}\n", password_hash()));
    }
    format!("{auth}teams:\n{teams}")
}

/// The checksum the client computes, by the client's own algorithm run in node: keys sorted recursively into a
/// new object (`Object.keys(o).sort()`), then `JSON.stringify`, then SHA-256.
async fn node_checksum(json_text: &str) -> String {
    const SCRIPT: &str = r#"
const crypto = require("crypto");
function sorted(e) {
  if (Array.isArray(e)) return e.map(sorted);
  if (e !== null && typeof e === "object") { const n = {}; for (const k of Object.keys(e).sort()) n[k] = sorted(e[k]); return n; }
  return e;
}
let input = "";
process.stdin.on("data", (c) => (input += c));
process.stdin.on("end", () => {
  const text = JSON.stringify(sorted(JSON.parse(input)));
  process.stdout.write("sha256:" + crypto.createHash("sha256").update(text).digest("hex") + "\n" + text);
});
"#;
    let mut child = tokio::process::Command::new("node")
        .args(["-e", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node is installed");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(json_text.as_bytes()).await.expect("write to node");
    drop(stdin);
    let output = child.wait_with_output().await.expect("node runs");
    assert!(output.status.success(), "node: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).expect("UTF-8");
    stdout.split_once('\n').expect("checksum line").0.to_owned()
}

/// A GET for `path` on a new tunnel as `user` (None: the anonymous principal), with extra header lines.
async fn fetch(setup: &Intercepting, user: Option<&str>, path: &str, extra: &[&str]) -> Response {
    let credentials = user.map(|user| basic(user, PASSWORD));
    let mut tls = setup.tunnel_as(credentials.as_deref()).await;
    let mut headers = vec!["Connection: close", "User-Agent: claude-code/2.1.332", "Cache-Control: no-cache"];
    headers.extend_from_slice(extra);
    let mut buf = Vec::new();
    send(&mut tls, &get(path, &headers), &mut buf).await
}

/// Asserts a 200 from tollgate: the body's three keys, `ETag: "checksum"`, a `request-id` the client accepts, and
/// the checksum node computes over the settings. Returns the settings and the checksum.
async fn assert_served(response: &Response) -> (Value, String) {
    assert_eq!(response.status, 200, "{response:?}");
    let body = response.json();
    let checksum = body["checksum"].as_str().unwrap_or_else(|| panic!("a checksum: {body:#}")).to_owned();
    assert_eq!(body["uuid"], checksum, "uuid is the checksum, as Anthropic's service answers");
    assert!(body["settings"].is_object(), "{body:#}");
    assert_eq!(response.header("etag"), Some(format!("\"{checksum}\"")), "{response:?}");
    assert_request_id(response);
    let settings_text = serde_json::to_string(&body["settings"]).expect("JSON");
    assert_eq!(node_checksum(&settings_text).await, checksum, "the client's checksum of {settings_text}");
    (body["settings"].clone(), checksum)
}

fn assert_request_id(response: &Response) {
    let id = response.header("request-id").unwrap_or_else(|| panic!("a request-id: {response:?}"));
    let rest = id.strip_prefix("req_").unwrap_or_else(|| panic!("req_…: {id}"));
    assert!(
        (1..=36).contains(&rest.len()) && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
        "^req_[A-Za-z0-9_-]{{1,36}}$: {id}"
    );
}

/// The first start of an intercepting gateway with `extra` config, and the users of `auth_with_teams`.
async fn start(teams: &str, extra: &str) -> Intercepting {
    let auth = auth_with_teams(teams);
    Intercepting::start(Parts { auth: &auth, extra, ..Parts::default() }).await
}

/// The organisation's settings come back with 200, then 304 to the client's `If-None-Match` (with the ETag); the
/// upstream sees neither call; both are recorded as intercepted requests answered by tollgate, without the
/// settings in the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_are_served_then_confirmed_with_304() {
    let extra = "managed_settings:
  settings:
    permissions: {disableBypassPermissionsMode: disable, deny: [WebFetch, \"Bash(curl:*)\"]}
    companyAnnouncements: [\"Policy-announcement-7f3a\"]
    cleanupPeriodDays: 30
";
    let setup = start("  interns: {}\n  contractors: {}\n", extra).await;
    let first = fetch(&setup, Some("carol"), SETTINGS, &[]).await;
    let (settings, checksum) = assert_served(&first).await;
    assert_eq!(
        settings,
        json!({
            "permissions": {"disableBypassPermissionsMode": "disable", "deny": ["WebFetch", "Bash(curl:*)"]},
            "companyAnnouncements": ["Policy-announcement-7f3a"],
            "cleanupPeriodDays": 30,
        })
    );
    let if_none_match = format!("If-None-Match: \"{checksum}\"");
    let second = fetch(&setup, Some("carol"), SETTINGS, &[&if_none_match]).await;
    assert_eq!(second.status, 304, "{second:?}");
    assert_eq!(second.body, "", "a 304 has no body");
    assert_eq!(second.header("etag"), Some(format!("\"{checksum}\"")));
    assert_request_id(&second);
    // A stale copy gets the new body.
    let stale = fetch(&setup, Some("carol"), SETTINGS, &["If-None-Match: \"sha256:00\""]).await;
    assert_eq!(assert_served(&stale).await.1, checksum);

    assert!(setup.stub.requests().is_empty(), "answered by tollgate: {:#?}", setup.stub.requests());
    let records = setup.gateway.audit().await;
    let answered: Vec<(u64, &str, &str)> = intercepted(&records)
        .iter()
        .map(|r| {
            (r["status"].as_u64().unwrap_or(0), r["path"].as_str().unwrap_or(""), r["upstream"].as_str().unwrap_or(""))
        })
        .collect();
    let by_tollgate = "tollgate:managed_settings/settings";
    assert_eq!(answered, [(200, SETTINGS, by_tollgate), (304, SETTINGS, by_tollgate), (200, SETTINGS, by_tollgate)]);
    assert!(intercepted(&records).iter().all(|r| r["user"] == "carol"), "{records:#?}");
    let audit_text = std::fs::read_to_string(setup.gateway.audit_path()).expect("audit file");
    assert!(!audit_text.contains("Policy-announcement-7f3a"), "no settings content in the audit trail");
}

/// Served settings with unicode, control characters, numbers JavaScript writes its own way and nested keys in
/// every order: the checksum tollgate serves is the one node computes, and tollgate's canonical text is exactly
/// node's `JSON.stringify` of the sorted copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checksum_is_the_one_node_computes() {
    let extra = "managed_settings:
  settings:
    zeta: {b: 1, a: [3, {y: 2, x: 1}], \"10\": ten, \"9\": nine, \"01\": zero-one}
    text: \"tab\\t nl\\n cr\\r bs\\b ff\\f ctl\\x01\\x1f del\\x7f quote\\\" backslash\\\\ é ü 日本 😀 \\u2028\\u2029\"
    \"\u{ff5e}\": wide
    \"\u{1f600}\": astral
    numbers: [0, -0.0, 1.0, 1.5, -2, 0.1, 1e21, 1e20, 1e-7, 0.000001, 123456789.125, 9007199254740991, 2.5e+300]
    Upper: {Z: true, a: false, _: null}
";
    let setup = start("  interns: {}\n  contractors: {}\n", extra).await;
    let response = fetch(&setup, Some("carol"), SETTINGS, &[]).await;
    let (settings, checksum) = assert_served(&response).await;
    assert_eq!(settings["numbers"][6], json!(1e21));
    let text = serde_json::to_string(&settings).expect("JSON");
    assert_eq!(node_checksum(&text).await, checksum);
    assert_eq!(tollgate::api::checksum::checksum(&settings), checksum);

    // The canonical text itself, over values a config cannot hold (lone surrogates excepted: Rust strings have none).
    for value in [
        json!({}),
        json!([]),
        json!({"b": {"d": 1, "c": [true, null, "x"]}, "a": -1.25e-9, "4294967295": 1, "4294967294": 2, "0": 3}),
        json!({"s": "\u{0}\u{8}\u{b}\u{1b}\"\\/</script>\u{2028}", "n": [1e300, -1e-300, 5e-324, 0.30000000000000004]}),
    ] {
        let text = serde_json::to_string(&value).expect("JSON");
        assert_eq!(node_checksum(&text).await, tollgate::api::checksum::checksum(&value), "{text}");
    }

    // Thousands of doubles from random bit patterns (every exponent, subnormals included) and strings of random
    // code points, keyed by random strings: one checksum over all of them.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let numbers: Vec<Value> =
        (0..4000).map(|_| f64::from_bits(next())).filter(|f| f.is_finite()).map(|f| json!(f)).collect();
    let mut object = serde_json::Map::new();
    for _ in 0..500 {
        let mut random_text = |longest: u64| -> String {
            let length = next() % longest;
            (0..length).filter_map(|_| char::from_u32((next() % 0x11_0000) as u32)).collect()
        };
        let key = random_text(6);
        let value = random_text(12);
        object.insert(key, Value::String(value));
    }
    let value = json!({"numbers": numbers, "strings": object});
    let text = serde_json::to_string(&value).expect("JSON");
    assert_eq!(node_checksum(&text).await, tollgate::api::checksum::checksum(&value));
}

/// Team overlays: a member of one team and of two get the organisation's settings merged with their teams' by the
/// documented rules (deny lists united, the strictest mode, availableModels intersected, `env` by team name
/// order); a user in no team gets the organisation's alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_overlays_merge_by_the_rules() {
    let extra = "managed_settings:
  settings:
    permissions: {deny: [WebFetch], defaultMode: acceptEdits}
    availableModels: [claude-haiku-4-5, claude-sonnet-4-5, claude-opus-4-1]
    env: {SHARED: org}
  teams:
    interns:
      permissions: {deny: [Bash], defaultMode: plan}
      availableModels: [claude-haiku-4-5, claude-sonnet-4-5]
      env: {SHARED: interns, INTERN: \"1\"}
    contractors:
      permissions: {deny: [Edit, WebFetch], defaultMode: default}
      availableModels: [claude-sonnet-4-5, claude-opus-4-1]
      env: {SHARED: contractors}
";
    let setup = start("  interns: {}\n  contractors: {}\n", extra).await;
    let (carol, _) = assert_served(&fetch(&setup, Some("carol"), SETTINGS, &[]).await).await;
    assert_eq!(
        carol,
        json!({
            "permissions": {"deny": ["WebFetch"], "defaultMode": "acceptEdits"},
            "availableModels": ["claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-4-1"],
            "env": {"SHARED": "org"},
        })
    );
    let (alice, alice_checksum) = assert_served(&fetch(&setup, Some("alice"), SETTINGS, &[]).await).await;
    assert_eq!(
        alice,
        json!({
            "permissions": {"deny": ["WebFetch", "Bash"], "defaultMode": "plan"},
            "availableModels": ["claude-haiku-4-5", "claude-sonnet-4-5"],
            "env": {"SHARED": "interns", "INTERN": "1"},
        })
    );
    let (bob, bob_checksum) = assert_served(&fetch(&setup, Some("bob"), SETTINGS, &[]).await).await;
    assert_eq!(
        bob,
        json!({
            // contractors, then interns (name order); plan is stricter than default.
            "permissions": {"deny": ["WebFetch", "Edit", "Bash"], "defaultMode": "plan"},
            "availableModels": ["claude-sonnet-4-5"],
            "env": {"SHARED": "interns", "INTERN": "1"},
        })
    );
    assert_ne!(alice_checksum, bob_checksum);
    // Alice's copy is not Bob's: his If-None-Match with her checksum gets his body.
    let crossed = fetch(&setup, Some("bob"), SETTINGS, &[&format!("If-None-Match: \"{alice_checksum}\"")]).await;
    assert_eq!(assert_served(&crossed).await.1, bob_checksum);
}

/// `availableModels` from the teams' plain model names (globs left out) and `permissions.deny` from the enforced
/// action deny patterns that have a faithful Claude Code rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_models_and_deny_rules_are_served() {
    let teams = "  interns: {models: [claude-haiku-4-5, \"claude-sonnet-4*\"], blocked_file_patterns: [\"**/*.pem\"], \
                 actions: {deny: [\"mcp:call:jira/*\"]}}\n  contractors: {models: [claude-opus-4-1]}\n";
    let extra = "actions:
  deny: [\"file:read:/etc/passwd\", \"bash:run:curl *\", \"web:fetch:pastebin.com\", \"bash:run:curl http://*\"]
managed_settings:
  settings: {permissions: {deny: [WebSearch]}}
  generate: {available_models: true, deny_from_actions: true}
";
    let setup = start(teams, extra).await;
    let (bob, _) = assert_served(&fetch(&setup, Some("bob"), SETTINGS, &[]).await).await;
    assert_eq!(bob["availableModels"], json!(["claude-opus-4-1", "claude-haiku-4-5"]), "{bob:#}");
    assert_eq!(
        bob["permissions"]["deny"],
        json!([
            "WebSearch",
            "Read(//etc/passwd)",
            "Bash(curl:*)",
            "WebFetch(domain:pastebin.com)",
            "mcp__jira",
            "Read(//**/*.pem)",
            "Edit(//**/*.pem)",
            "Write(//**/*.pem)"
        ])
    );
    let (carol, _) = assert_served(&fetch(&setup, Some("carol"), SETTINGS, &[]).await).await;
    assert_eq!(
        carol,
        json!({"permissions": {"deny": ["WebSearch", "Read(//etc/passwd)", "Bash(curl:*)", "WebFetch(domain:pastebin.com)"]}}),
        "no team: no availableModels, the global rules only"
    );
}

/// Policy limits: the organisation's restrictions with a team's overlay (a restriction allowed only when every
/// source allows it), 200 then 304; the checksum is the client's over the raw body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_limits_are_served_then_confirmed_with_304() {
    let extra = "managed_settings:
  policy_limits:
    restrictions: {allow_product_feedback: {allowed: false}, allow_web_fetch: {allowed: true}}
    monitoring_notice: {text: \"Usage is monitored\", url: \"https://corp.example/policy\"}
    teams:
      interns: {restrictions: {allow_web_fetch: {allowed: false}}, compliance_taints: [zdr]}
";
    let setup = start("  interns: {}\n  contractors: {}\n", extra).await;
    let response =
        fetch(&setup, Some("alice"), POLICY_LIMITS, &["anthropic-client-capabilities: computer_use_apps_v1"]).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(
        response.json(),
        json!({
            "restrictions": {"allow_product_feedback": {"allowed": false}, "allow_web_fetch": {"allowed": false}},
            "monitoring_notice": {"text": "Usage is monitored", "url": "https://corp.example/policy"},
            "compliance_taints": ["zdr"],
        })
    );
    let checksum = node_checksum(&response.body).await;
    assert_eq!(response.header("etag"), Some(format!("\"{checksum}\"")));
    assert_request_id(&response);
    let again = fetch(&setup, Some("alice"), POLICY_LIMITS, &[&format!("If-None-Match: \"{checksum}\"")]).await;
    assert_eq!(again.status, 304, "{again:?}");
    let carol = fetch(&setup, Some("carol"), POLICY_LIMITS, &[]).await;
    assert_eq!(carol.json()["restrictions"]["allow_web_fetch"], json!({"allowed": true}));
    assert!(setup.stub.requests().is_empty());
}

/// Where the config says nothing for the user the calls reach the upstream unchanged (the stub answers `{}`):
/// without `managed_settings`, for a user no overlay covers, for policy limits not configured, and for a method
/// other than GET. No answer is ever 204 or 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfigured_calls_go_to_the_upstream_and_nothing_is_204_or_404() {
    let unconfigured = start("  interns: {}\n  contractors: {}\n", "").await;
    for path in [SETTINGS, POLICY_LIMITS] {
        let response = fetch(&unconfigured, Some("alice"), path, &["If-None-Match: \"sha256:00\""]).await;
        assert_eq!((response.status, response.body.as_str()), (200, "{}"), "the stub's answer: {response:?}");
    }
    let seen: Vec<(String, String)> =
        unconfigured.stub.requests().into_iter().map(|s| (s.method, s.path_and_query)).collect();
    assert_eq!(seen, [("GET".to_owned(), SETTINGS.to_owned()), ("GET".to_owned(), POLICY_LIMITS.to_owned())]);

    let extra = "managed_settings:\n  teams:\n    interns: {permissions: {deny: [Bash]}}\n";
    let setup = start("  interns: {}\n  contractors: {}\n", extra).await;
    let mut statuses = Vec::new();
    for user in ["alice", "bob", "carol"] {
        for path in [SETTINGS, POLICY_LIMITS] {
            for extra in [&[][..], &["If-None-Match: \"sha256:00\""][..], &["If-None-Match: *"][..]] {
                statuses.push(fetch(&setup, Some(user), path, extra).await.status);
            }
        }
    }
    assert!(statuses.iter().all(|s| *s == 200 || *s == 304), "only 200 and 304: {statuses:?}");
    let mut tls = setup.tunnel_as(Some(&basic("alice", PASSWORD))).await;
    let mut buf = Vec::new();
    let post = common::intercept::request(
        "POST",
        SETTINGS,
        &["Host: api.anthropic.com", "Connection: close", "content-type: application/json"],
        b"{}",
    );
    let posted = send(&mut tls, &post, &mut buf).await;
    assert!(posted.body.contains("is not served by the Messages stub"), "the stub's answer to a POST: {posted:?}");
    let forwarded: Vec<(String, String)> =
        setup.stub.requests().into_iter().map(|s| (s.method, s.path_and_query)).collect();
    // Carol's settings (no overlay covers her) x3, everyone's policy limits x9, and the POST.
    assert_eq!(forwarded.iter().filter(|(m, p)| m == "GET" && p == SETTINGS).count(), 3, "{forwarded:?}");
    assert_eq!(forwarded.iter().filter(|(m, p)| m == "GET" && p == POLICY_LIMITS).count(), 9, "{forwarded:?}");
    assert_eq!(forwarded.iter().filter(|(m, _)| m == "POST").count(), 1, "{forwarded:?}");
}

/// A reload that changes the settings changes the checksum served: the client's copy gets 200 with the new body
/// instead of 304. The fleet inventory shows alice current after her fetch, stale after the reload, current again
/// after her next fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_checksum_served() {
    let stub = MessagesStub::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_dir = tempfile::tempdir().expect("CA dir");
    let (path, audit) = (dir.path().join("tollgate.yaml"), dir.path().join("audit.jsonl"));
    let ca_path = ca_dir.path().to_owned();
    let write = |stub: &MessagesStub, deny: &str| {
        let auth = auth_with_teams("  interns: {}\n  contractors: {}\n");
        let managed = format!("managed_settings:\n  settings: {{permissions: {{deny: [{deny}]}}}}\n");
        let parts = Parts { auth: &auth, extra: &managed, ..Parts::default() };
        let text = format!(
            "listeners: [{{name: proxy, bind: \"127.0.0.1:0\"}}]\nadmin: {{bind: \"127.0.0.1:0\", token: {TOKEN}}}\n\
             audit: {{file: {{path: \"{}\"}}}}\n{}",
            audit.display(),
            common::intercept::config(stub, &ca_path, &parts)
        );
        std::fs::write(&path, text).expect("write the config");
    };
    write(&stub, "Bash");
    let options = Options { watch_interval: None, ..Options::default() };
    let gateway = TestGateway::start_file(&path, dir, options).await;
    let setup = Intercepting { stub, gateway, ca_dir };

    let (before, checksum) = assert_served(&fetch(&setup, Some("alice"), SETTINGS, &[]).await).await;
    assert_eq!(before, json!({"permissions": {"deny": ["Bash"]}}));
    // The fleet inventory keeps what alice's client was given, and knows it is the current policy.
    let token = format!("Bearer {TOKEN}");
    let fleet = admin(&setup.gateway, "GET", "/admin/fleet", Some(&token)).await.json();
    let alice = |fleet: &Value| {
        fleet["users"].as_array().and_then(|users| users.iter().find(|u| u["user"] == "alice").cloned())
    };
    let listed = alice(&fleet).unwrap_or_else(|| panic!("alice is listed: {fleet:#}"));
    assert_eq!((listed["settings"]["checksum"].as_str(), &listed["current"]), (Some(checksum.as_str()), &json!(true)));
    write(&setup.stub, "Bash, WebFetch");
    let reload = admin(&setup.gateway, "POST", "/admin/reload", Some(&token)).await;
    assert_eq!(reload.status, 200, "{reload:?}");
    // Until her client polls again, alice runs a policy that is no longer the current one.
    let stale = admin(&setup.gateway, "GET", "/admin/fleet?stale=true", Some(&token)).await.json();
    assert_eq!(alice(&stale).map(|u| u["current"].clone()), Some(json!(false)), "{stale:#}");
    let response = fetch(&setup, Some("alice"), SETTINGS, &[&format!("If-None-Match: \"{checksum}\"")]).await;
    let (after, new_checksum) = assert_served(&response).await;
    assert_eq!(after, json!({"permissions": {"deny": ["Bash", "WebFetch"]}}));
    assert_ne!(new_checksum, checksum);
    let stale = admin(&setup.gateway, "GET", "/admin/fleet?stale=true", Some(&token)).await.json();
    assert_eq!(alice(&stale), None, "current again: {stale:#}");
}

/// `tollgate explain --settings` (the real binary) prints the checksum the gateway serves for the same user and
/// config, the policy limits, and the rules that generated nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_prints_what_the_gateway_serves() {
    let stub = MessagesStub::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_dir = tempfile::tempdir().expect("CA dir");
    let path = dir.path().join("tollgate.yaml");
    let auth = auth_with_teams("  interns: {models: [claude-haiku-4-5, \"claude-sonnet-4*\"]}\n  contractors: {}\n");
    let extra = "actions: {deny: [\"bash:run:curl http://*\", \"bash:run:rm *\"]}
managed_settings:
  settings: {permissions: {deny: [WebFetch]}}
  generate: {available_models: true, deny_from_actions: true}
  policy_limits: {restrictions: {allow_product_feedback: {allowed: false}}}
";
    let parts = Parts { auth: &auth, extra, ..Parts::default() };
    let text = format!(
        "listeners: [{{name: proxy, bind: \"127.0.0.1:0\"}}]\nadmin: {{bind: \"127.0.0.1:0\"}}\n\
         audit: {{file: {{path: \"{}\"}}}}\n{}",
        dir.path().join("audit.jsonl").display(),
        common::intercept::config(&stub, ca_dir.path(), &parts)
    );
    std::fs::write(&path, text).expect("write the config");
    let gateway = TestGateway::start_file(&path, dir, Options { watch_interval: None, ..Options::default() }).await;
    let config_path = gateway.dir.path().join("tollgate.yaml");
    let setup = Intercepting { stub, gateway, ca_dir };
    let (settings, checksum) = assert_served(&fetch(&setup, Some("alice"), SETTINGS, &[]).await).await;
    assert_eq!(settings["permissions"]["deny"], json!(["WebFetch", "Bash(rm:*)"]));
    let limits = fetch(&setup, Some("alice"), POLICY_LIMITS, &[]).await;
    let limits_etag = limits.header("etag").expect("an ETag");

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["explain", "--settings", "--user", "alice", "-c"])
        .arg(&config_path)
        .env_remove("TOLLGATE_CONFIG")
        .env("TOLLGATE_LOG", "warn")
        .output()
        .await
        .expect("run tollgate explain");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.starts_with("principal: alice (teams: interns)\n"), "{stdout}");
    assert!(stdout.contains(&format!("settings: {checksum}\n")), "{stdout}");
    assert!(stdout.contains(&format!("policy limits: {}\n", limits_etag.trim_matches('"'))), "{stdout}");
    assert!(stdout.contains("\"claude-haiku-4-5\""), "{stdout}");
    assert!(stdout.contains("  teams.interns.models claude-sonnet-4*: a glob"), "{stdout}");
    assert!(stdout.contains("  actions.deny[0] bash:run:curl http://*: "), "{stdout}");
}
