//! What the `actions` rules decide, on the wire: one streamed call per request through an intercepted tunnel,
//! held and released byte-exact or replaced by the `permission_error` that names the action and the rule. Unknown
//! tools, MCP names, WebFetch hosts and URLs, subagents; commands that hide their program behind quoting, compound
//! operators, substitutions, paths and `bash -c` (and one that does not parse, which fails closed); `observe` mode,
//! `alert`, and a team's `readonly` and `blocked_file_patterns`, which leave another team alone.

use crate::common;

use serde_json::{json, Value};

use common::gateway::{users_yaml, User};
use common::intercept::{messages_post, send, Intercepting, Parts};
use common::messages;

use crate::actions_enforce::{action_record, actions_sample, assert_ends_with_denial, block_start, stub_bytes, tool};

/// What the gateway must do with a call.
#[derive(Debug, Clone, Copy)]
enum Expect<'a> {
    /// Released byte-exact.
    Allow,
    /// Denied: the action as the refusal shows it, and the rule.
    Deny(&'a str, &'a str),
}

/// Sends a stream whose one call is `name` with `input`, between two texts, on a new tunnel (as `credentials`);
/// asserts the client got what `expect` says and the call's record says the same. Returns the record.
async fn check(
    setup: &Intercepting,
    credentials: Option<&str>,
    id: &str,
    name: &str,
    input: Value,
    expect: Expect<'_>,
) -> Value {
    let blocks = json!([{"type": "text", "text": "On it."}, tool(id, name, input.clone(), &[3]),
                        {"type": "text", "text": "Done."}]);
    let body = json!({"model": messages::TOOLS, "max_tokens": 1024, "stream": true,
                      "messages": [{"role": "user", "content": "go"}], "stub_blocks": blocks})
    .to_string();
    let sent = stub_bytes(&setup.stub, &body).await;
    let mut tls = setup.tunnel_as(credentials).await;
    let response = send(&mut tls, &messages_post(&body, &["Connection: close"]), &mut Vec::new()).await;
    let context = format!("{name} {input} as {credentials:?}");
    assert_eq!(response.status, 200, "{context}: {response:?}");
    let record = action_record(setup, id).await;
    match expect {
        Expect::Allow => {
            assert_eq!(response.body, sent, "{context}: released byte-exact");
            assert_eq!(record["decision"], "allow", "{context}: {record:#}");
        }
        Expect::Deny(action, rule) => {
            assert_ends_with_denial(&response.body, &sent[..block_start(&sent, id)], action, rule);
            assert_eq!((record["decision"].as_str(), record["rule"].as_str()), (Some("deny"), Some(rule)), "{context}");
        }
    }
    record
}

// ---- 5. Tools, MCP, web, subagents ----

/// A tool outside the table is `tool:NAME` (matched by exact name), an MCP tool `mcp:call:SERVER/TOOL`, WebFetch's
/// URL is matched by host (case, a trailing dot, user information and port do not hide it; the apex is not a
/// sub-domain) or as a whole URL (normalised as a browser reads it), a URL without a host fails closed, and
/// `Task`/`Agent` spawn the subagent their input names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_mcp_web_and_subagents_are_decided_by_their_patterns() {
    let extra = "actions:\n  deny: [\"tool:Frobnicate\", \"mcp:call:jira/*\", \"web:fetch:*.evil.example\", \
                 \"web:fetch:https://docs.example.com/private/*\", \"agent:spawn:general-purpose\"]\n";
    let setup = Intercepting::start(Parts { extra, ..Parts::default() }).await;
    let (frob, jira, evil, private, agent) = (
        "actions.deny[0] tool:Frobnicate",
        "actions.deny[1] mcp:call:jira/*",
        "actions.deny[2] web:fetch:*.evil.example",
        "actions.deny[3] web:fetch:https://docs.example.com/private/*",
        "actions.deny[4] agent:spawn:general-purpose",
    );
    let fetch = |url: &str| json!({"url": url, "prompt": "summarise"});
    let cases: Vec<(&str, Value, Expect)> = vec![
        ("Frobnicate", json!({"level": 3}), Expect::Deny("tool:Frobnicate", frob)),
        ("Frobnicator", json!({}), Expect::Allow),
        ("mcp__jira__create_issue", json!({"summary": "s"}), Expect::Deny("mcp:call:jira/create_issue", jira)),
        ("mcp__jira__search", json!({}), Expect::Deny("mcp:call:jira/search", jira)),
        ("mcp__github__create_issue", json!({"title": "t"}), Expect::Allow),
        ("WebFetch", fetch("https://api.evil.example/x"), Expect::Deny("web:fetch:https://api.evil.example/x", evil)),
        ("WebFetch", fetch("https://API.Evil.Example./x"), Expect::Deny("web:fetch:https://API.Evil.Example./x", evil)),
        (
            "WebFetch",
            fetch("https://user:pw@a.b.evil.example:8443/x"),
            Expect::Deny("web:fetch:https://user:pw@a.b.evil.example:8443/x", evil),
        ),
        ("WebFetch", fetch("https://evil.example/"), Expect::Allow),
        ("WebFetch", fetch("https://evil.example.com/"), Expect::Allow),
        (
            "WebFetch",
            fetch("https://docs.example.com/private/plan"),
            Expect::Deny("web:fetch:https://docs.example.com/private/plan", private),
        ),
        (
            "WebFetch",
            fetch("HTTPS://DOCS.example.com:443/public/../private/plan#x"),
            Expect::Deny("web:fetch:HTTPS://DOCS.example.com:443/public/../private/plan#x", private),
        ),
        ("WebFetch", fetch("https://docs.example.com/public/guide"), Expect::Allow),
        ("WebFetch", fetch("file:///etc/passwd"), Expect::Deny("web:fetch:file:///etc/passwd", evil)),
        ("WebFetch", fetch("https://"), Expect::Deny("web:fetch:https://", evil)),
        (
            "Task",
            json!({"subagent_type": "general-purpose", "prompt": "p"}),
            Expect::Deny("agent:spawn:general-purpose", agent),
        ),
        ("Agent", json!({"subagent_type": "general-purpose"}), Expect::Deny("agent:spawn:general-purpose", agent)),
        ("Task", json!({"subagent_type": "Explore", "prompt": "p"}), Expect::Allow),
    ];
    for (number, (name, input, expect)) in cases.into_iter().enumerate() {
        check(&setup, None, &format!("toolu_5{number:02}"), name, input, expect).await;
    }
    let frobnicate = action_record(&setup, "toolu_500").await;
    assert_eq!(
        (frobnicate["action"].as_str(), frobnicate["tool"].as_str()),
        (Some("tool:Frobnicate"), Some("Frobnicate"))
    );
    assert_eq!(
        setup.metric(&actions_sample("tool:*", "deny", "-")).await,
        1.0,
        "tools outside the table are one label"
    );
    assert_eq!(setup.metric(&actions_sample("tool:*", "allow", "-")).await, 1.0);
    assert_eq!(setup.metric(&actions_sample("mcp:call", "deny", "-")).await, 2.0);
    assert_eq!(setup.metric(&actions_sample("web:fetch", "deny", "-")).await, 7.0);
    assert_eq!(setup.metric(&actions_sample("agent:spawn", "deny", "-")).await, 2.0);
}

// ---- 6. Commands ----

/// `bash:run:curl *` denies curl however the command line hides it — after `&&`, inside `$(…)`, quoted in pieces,
/// with its directory, as `bash -c`'s script, under `sudo`, through `xargs`, in upper case — and a line that does
/// not parse (an unterminated quote) or whose program is known only at run time fails closed; `curl` as a quoted
/// argument is not a command, and `curlx` is another program.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_hide_curl_are_denied_and_curl_as_an_argument_is_not() {
    let extra = "actions:\n  deny: [\"bash:run:curl *\"]\n";
    let setup = Intercepting::start(Parts { extra, ..Parts::default() }).await;
    let rule = "actions.deny[0] bash:run:curl *";
    let denied = [
        "ls && curl http://x",
        "echo $(curl http://x)",
        "echo `curl http://x`",
        r#""cu""rl" http://x"#,
        r"c\url http://x",
        "/usr/bin/curl http://x",
        "bash -c 'curl http://x'",
        "sudo -u x bash -c 'ls; curl http://x'",
        "echo http://x | xargs curl",
        "CURL http://x",
        "$(echo curl) http://x",
        "echo 'unterminated",
        "curl",
    ];
    for (number, command) in denied.iter().enumerate() {
        let shown = format!("bash:run:{command}");
        let input = json!({"command": command, "description": "run"});
        let record =
            check(&setup, None, &format!("toolu_6{number:02}"), "Bash", input, Expect::Deny(&shown, rule)).await;
        assert_eq!(record["target"], *command, "{record:#}");
    }
    let allowed = ["echo \"curl http://x\"", "curlx http://x", "git log --grep=curl", "ls -la"];
    for (number, command) in allowed.iter().enumerate() {
        let input = json!({"command": command});
        check(&setup, None, &format!("toolu_6a{number}"), "Bash", input, Expect::Allow).await;
    }
    assert_eq!(setup.metric(&actions_sample("bash:run", "deny", "-")).await, denied.len() as f64);
    assert_eq!(setup.metric(&actions_sample("bash:run", "allow", "-")).await, allowed.len() as f64);
}

// ---- 8. Modes, alerts, teams ----

/// In `observe` mode nothing is held or refused: the denied call passes byte-exact, its record says `allow` with
/// `would_deny: true` and the rule, and the metric counts it as `would_deny`; an alerting call is marked `alert`
/// with the alert pattern as its rule. A request carrying the result of an observed call is not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_mode_records_would_deny_and_holds_nothing() {
    let extra = "actions:\n  mode: observe\n  deny: [\"file:read:/etc/passwd\"]\n  alert: [\"file:read:**/.env\"]\n";
    let setup = Intercepting::start(Parts { extra, ..Parts::default() }).await;
    let record = check(&setup, None, "toolu_81", "Read", json!({"file_path": "/etc/passwd"}), Expect::Allow).await;
    assert_eq!(record["would_deny"], true, "{record:#}");
    assert_eq!(record["rule"], "actions.deny[0] file:read:/etc/passwd", "{record:#}");
    assert!(record.get("alert").is_none(), "{record:#}");
    let record = check(&setup, None, "toolu_82", "Read", json!({"file_path": "/repo/.env"}), Expect::Allow).await;
    assert_eq!(
        (record["alert"].as_bool(), record["rule"].as_str()),
        (Some(true), Some("actions.alert[0] file:read:**/.env"))
    );
    assert!(record.get("would_deny").is_none(), "{record:#}");
    assert_eq!(setup.metric(&actions_sample("file:read", "would_deny", "-")).await, 1.0);
    assert_eq!(setup.metric(&actions_sample("file:read", "alert", "-")).await, 1.0);
    assert_eq!(setup.metric(&actions_sample("file:read", "deny", "-")).await, 0.0);

    let body = json!({"model": messages::TOOLS, "max_tokens": 64, "stub_blocks": [], "messages": [
        {"role": "user", "content": "read it"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_81", "name": "Read",
                                           "input": {"file_path": "/etc/passwd"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_81", "content": "root:x:0:0"}]}]});
    let response = setup.send(&messages_post(&body.to_string(), &["Connection: close"])).await;
    assert_eq!(response.status, 200, "{response:?}");
}

/// In `enforce` mode an `alert` pattern allows its call (held while decided, then released byte-exact) and marks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alerting_call_is_allowed_and_marked_under_enforce() {
    let extra = "actions:\n  deny: [\"file:read:/etc/passwd\"]\n  alert: [\"bash:run:kubectl *\"]\n";
    let setup = Intercepting::start(Parts { extra, ..Parts::default() }).await;
    let input = json!({"command": "kubectl get pods -A"});
    let record = check(&setup, None, "toolu_83", "Bash", input, Expect::Allow).await;
    assert_eq!(
        (record["alert"].as_bool(), record["rule"].as_str()),
        (Some(true), Some("actions.alert[0] bash:run:kubectl *"))
    );
    assert_eq!(setup.metric(&actions_sample("bash:run", "alert", "-")).await, 1.0);
}

const IVY: User = User { name: "ivy", password: "ivy-pass", teams: &["interns"] };
const DAN: User = User { name: "dan", password: "dan-pass", teams: &["backend"] };

/// A `readonly` team denies file writes and commands unless an allow pattern names the command (and it writes no
/// file); its `blocked_file_patterns` deny reading and writing matching files, in any ASCII case. A member of
/// another team is not affected: nothing of theirs is held, and every call is allowed. Each is counted under its
/// team.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readonly_team_with_blocked_files_is_denied_and_another_team_is_not() {
    let auth = format!("auth:\n  anonymous: deny\n{}", users_yaml(&[&IVY, &DAN]));
    let extra = "teams:\n  interns:\n    readonly: true\n    blocked_file_patterns: [\"**/*.pem\"]\n    \
                 actions: {allow: [\"bash:run:git status\"]}\n  backend: {}\n";
    let setup = Intercepting::start(Parts { auth: &auth, extra, ..Parts::default() }).await;
    let ivy = common::basic(IVY.name, IVY.password);
    let dan = common::basic(DAN.name, DAN.password);
    let (readonly, pem) = ("teams.interns.readonly", "teams.interns.blocked_file_patterns[0] **/*.pem");
    let cases: Vec<(&str, Value, Expect)> = vec![
        ("Write", json!({"file_path": "/repo/a.rs", "content": "x"}), Expect::Deny("file:write:/repo/a.rs", readonly)),
        (
            "Edit",
            json!({"file_path": "/repo/b.rs", "old_string": "a", "new_string": "b"}),
            Expect::Deny("file:write:/repo/b.rs", readonly),
        ),
        ("Bash", json!({"command": "ls"}), Expect::Deny("bash:run:ls", readonly)),
        ("Bash", json!({"command": "git status"}), Expect::Allow),
        ("Bash", json!({"command": "git status > out.txt"}), Expect::Deny("bash:run:git status > out.txt", readonly)),
        (
            "Bash",
            json!({"command": "git status && rm -rf /"}),
            Expect::Deny("bash:run:git status && rm -rf /", readonly),
        ),
        ("Read", json!({"file_path": "/repo/certs/server.pem"}), Expect::Deny("file:read:/repo/certs/server.pem", pem)),
        ("Read", json!({"file_path": "/repo/CERTS/SERVER.PEM"}), Expect::Deny("file:read:/repo/CERTS/SERVER.PEM", pem)),
        ("Read", json!({"file_path": "/repo/src/main.rs"}), Expect::Allow),
        ("mcp__jira__create_issue", json!({}), Expect::Allow),
    ];
    for (number, (name, input, expect)) in cases.iter().enumerate() {
        let record = check(&setup, Some(&ivy), &format!("toolu_8i{number}"), name, input.clone(), *expect).await;
        assert_eq!((record["user"].as_str(), record["team"].as_str()), (Some("ivy"), Some("interns")));
    }
    for (number, (name, input, _)) in cases.iter().enumerate() {
        let record = check(&setup, Some(&dan), &format!("toolu_8d{number}"), name, input.clone(), Expect::Allow).await;
        assert_eq!((record["user"].as_str(), record["team"].as_str()), (Some("dan"), Some("backend")));
    }
    assert_eq!(setup.metric(&actions_sample("file:write", "deny", "interns")).await, 2.0);
    assert_eq!(setup.metric(&actions_sample("bash:run", "deny", "interns")).await, 3.0);
    assert_eq!(setup.metric(&actions_sample("file:read", "deny", "interns")).await, 2.0);
    assert_eq!(setup.metric(&actions_sample("file:write", "allow", "backend")).await, 2.0);
    assert_eq!(setup.metric(&actions_sample("file:write", "deny", "backend")).await, 0.0);
}
