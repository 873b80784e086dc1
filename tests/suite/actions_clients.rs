//! Agent-action refusals as real clients see them: the Python `anthropic` SDK through an intercepted tunnel and
//! through a gateway listener (a denied streamed call is the permission error it raises, an allowed one the
//! `tool_use` block with its whole input), curl over h2 inside the tunnel (the error event, then a clean end of
//! the stream), and `tollgate explain --action` (the real binary: exit 0, 1 or 2, and the rule).

use crate::common;

use serde_json::{json, Value};

use common::binary::explain;
use common::gateway::{start_gateway, upstreams_yaml, users_yaml, User};
use common::intercept::{audit_until, Intercepting, Parts, API_HOST};
use common::messages::{anthropic_client, usage_of, MessagesStub, JSON_USAGE, STREAM_USAGE, TOOLS};
use common::{curl, hash};

use crate::actions_enforce::{assert_ends_with_denial, block_start, stub_bytes, tool, tools_request};

const DENY_PASSWD: &str = "actions:\n  deny: [\"file:read:/etc/passwd\"]\n";
const PASSWD_RULE: &str = "actions.deny[0] file:read:/etc/passwd";

/// The stub's blocks for the SDK: a text, then a `Read` of `path` whose input comes in three pieces.
fn read_blocks(id: &str, path: &str) -> String {
    json!({"stub_blocks": [{"type": "text", "text": "Let me look."},
                           tool(id, "Read", json!({"file_path": path}), &[4, 17])]})
    .to_string()
}

/// The SDK with `env`, and the stub's blocks as its `extra_body`: a denied stream is the `permission_error` the
/// SDK raises (status 200: it came inside the stream) naming the action and the rule, after the text it delivered
/// and no `tool_use` block; an allowed stream ends with the `tool_use` block and its whole input; a denied whole
/// message is the SDK's 403 `permission_error`.
async fn sdk_is_refused_and_allowed(env: &[(&str, &str)]) {
    let denied = read_blocks("toolu_91", "/etc/passwd");
    fn with<'a>(env: &[(&'a str, &'a str)], body: &'a str) -> Vec<(&'a str, &'a str)> {
        [env, &[("TOLLGATE_CLIENT_BODY", body)]].concat()
    }
    let result = anthropic_client("stream", TOOLS, &with(env, &denied)).await;
    assert_eq!((result["ok"].as_bool(), result["error"]["kind"].as_str()), (Some(false), Some("status")), "{result}");
    assert_eq!(
        (result["error"]["status"].as_u64(), result["error"]["type"].as_str()),
        (Some(200), Some("permission_error"))
    );
    let message = result["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("file:read:/etc/passwd") && message.contains(PASSWD_RULE), "{result}");
    assert_eq!(result["partial"]["text"], "Let me look.", "{result}");
    assert_eq!(result["partial"]["blocks"], json!(["text"]), "no tool_use block reached the SDK: {result}");
    let events = result["partial"]["events"].as_array().expect("events");
    assert!(!events.iter().any(|event| event == "message_stop"), "{result}");

    let allowed = read_blocks("toolu_92", "/etc/hosts");
    let result = anthropic_client("stream", TOOLS, &with(env, &allowed)).await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["stop_reason"], "tool_use", "{result}");
    assert_eq!(
        result["tool_uses"],
        json!([{"id": "toolu_92", "name": "Read", "input": {"file_path": "/etc/hosts"}}]),
        "{result}"
    );
    assert_eq!(usage_of(&result["usage"]), STREAM_USAGE, "{result}");

    let denied = read_blocks("toolu_93", "/etc/passwd");
    let result = anthropic_client("create", TOOLS, &with(env, &denied)).await;
    assert_eq!(
        (result["error"]["status"].as_u64(), result["error"]["type"].as_str()),
        (Some(403), Some("permission_error"))
    );
    assert!(result["error"]["message"].as_str().unwrap_or_default().contains(PASSWD_RULE), "{result}");
}

/// The `(tool_use_id, decision)` of every action record, in order; each was recorded on `listener`.
fn decisions<'a>(records: &'a [Value], listener: &str) -> Vec<(&'a str, &'a str)> {
    let actions = records.iter().filter(|r| r["kind"] == "action");
    actions
        .map(|r| {
            assert_eq!(r["listener"], listener, "{r:#}");
            (r["tool_use_id"].as_str().unwrap_or("-"), r["decision"].as_str().unwrap_or("-"))
        })
        .collect()
}

const EXPECTED: [(&str, &str); 3] = [("toolu_91", "deny"), ("toolu_92", "allow"), ("toolu_93", "deny")];

/// The SDK configured only by `HTTPS_PROXY` and `SSL_CERT_FILE`, through an intercepted tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_through_a_tunnel_raises_the_denial_and_gets_allowed_calls_whole() {
    let setup = Intercepting::start(Parts { extra: DENY_PASSWD, ..Parts::default() }).await;
    let proxy = format!("http://{}", setup.gateway.proxy);
    let ca = setup.ca_pem();
    sdk_is_refused_and_allowed(&[("HTTPS_PROXY", proxy.as_str()), ("SSL_CERT_FILE", ca.to_str().expect("path"))]).await;
    let records = audit_until(&setup.gateway, |r| r["tool_use_id"] == "toolu_93").await;
    assert_eq!(decisions(&records, "proxy"), EXPECTED);
    let billed: Vec<_> = records.iter().filter(|r| r["kind"] == "intercepted").map(|r| usage_of(&r["usage"])).collect();
    assert_eq!(billed, [STREAM_USAGE, STREAM_USAGE, JSON_USAGE], "every answer billed: {records:#?}");
}

const CAROL: User = User { name: "carol", password: "carol-pass", teams: &["backend"] };

/// The SDK with `ANTHROPIC_BASE_URL` at a gateway listener and `USER:PASSWORD` as its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_through_a_gateway_listener_raises_the_denial_and_gets_allowed_calls_whole() {
    let stub = MessagesStub::start().await;
    let yaml = format!(
        "auth:\n  anonymous: deny\n{}teams: {{backend: {{}}}}\npolicy: {{default: deny}}\n{}\
         routing:\n  - {{when: {{listener: gateway}}, to: stub}}\n{DENY_PASSWD}",
        users_yaml(&[&CAROL]),
        upstreams_yaml(&[("stub", &stub, "sk-upstream")]),
    );
    let gateway = start_gateway(&yaml, Default::default()).await;
    let base_url = format!("http://{}", gateway.listener("gateway"));
    let key = format!("{}:{}", CAROL.name, CAROL.password);
    sdk_is_refused_and_allowed(&[("ANTHROPIC_BASE_URL", base_url.as_str()), ("ANTHROPIC_API_KEY", key.as_str())]).await;
    let records = audit_until(&gateway, |r| r["tool_use_id"] == "toolu_93").await;
    assert_eq!(decisions(&records, "gateway"), EXPECTED);
    assert!(records.iter().filter(|r| r["kind"] == "action").all(|r| r["user"] == "carol" && r["team"] == "backend"));
    let metric = "tollgate_actions_total{action=\"file:read\",decision=\"deny\",team=\"backend\"}";
    assert_eq!(gateway.metric(metric).await, 2.0);
}

/// curl over h2 inside the tunnel: a denied streamed call is the error event after the stub's bytes before it, and
/// the stream then ends cleanly (curl exits 0, the h2 stream was not reset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_h2_gets_the_error_event_and_a_clean_end() {
    let setup = Intercepting::start(Parts { extra: DENY_PASSWD, ..Parts::default() }).await;
    let blocks = json!([{"type": "text", "text": "Let me look."},
                        tool("toolu_10", "Read", json!({"file_path": "/etc/passwd"}), &[4, 17]),
                        {"type": "text", "text": "Done."}]);
    let body = tools_request(&blocks, true);
    let sent = stub_bytes(&setup.stub, &body).await;
    let proxy = format!("http://{}", setup.gateway.proxy);
    let ca = setup.ca_pem();
    let url = format!("https://{API_HOST}/v1/messages");
    let (code, stdout, stderr) = curl(&[
        "--http2",
        "--proxy",
        &proxy,
        "--cacert",
        ca.to_str().expect("path"),
        "-H",
        "x-api-key: sk-ant-client",
        "-H",
        "anthropic-version: 2023-06-01",
        "-H",
        "content-type: application/json",
        "--data-binary",
        &body,
        "-w",
        "\n%{http_code} %{http_version}",
        &url,
    ])
    .await;
    assert_eq!(code, 0, "the stream ended cleanly: {stderr}");
    let (streamed, status) = stdout.rsplit_once('\n').expect("the -w line");
    assert_eq!(status, "200 2", "HTTP/2 inside the tunnel: {stdout}");
    assert_ends_with_denial(streamed, &sent[..block_start(&sent, "toolu_10")], "file:read:/etc/passwd", PASSWD_RULE);
    let records = audit_until(&setup.gateway, |r| r["kind"] == "intercepted").await;
    let request = records.iter().find(|r| r["kind"] == "intercepted").expect("the request's record");
    assert_eq!((request["rule"].as_str(), usage_of(&request["usage"])), (Some(PASSWD_RULE), STREAM_USAGE));
}

// ---- 11. tollgate explain --action ----

/// `tollgate explain --action`: a denied action exits 1 and prints the rule (a global deny, a team's `readonly`); an
/// allowed one exits 0 (with its alert pattern when one matches); an action name that does not exist exits 2 and
/// says which names do.
#[tokio::test]
async fn explain_action_exits_by_the_decision_and_prints_the_rule() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("tollgate.yaml");
    let user = |name: &str, teams: &str| {
        format!("    - {{name: {name}, password_hash: \"{}\", teams: [{teams}]}}\n", hash("pw"))
    };
    let text = format!(
        "listeners: [{{name: proxy, bind: \"127.0.0.1:0\"}}]\nauth:\n  anonymous: deny\n  users:\n{}{}\
         teams:\n  interns: {{readonly: true}}\npolicy: {{default: deny}}\n\
         actions:\n  deny: [\"file:read:/etc/passwd\"]\n  alert: [\"bash:run:kubectl *\"]\n",
        user("bob", ""),
        user("ivy", "interns"),
    );
    std::fs::write(&config, text).expect("write the config");

    let out = explain(&config, &["--action", "file:read:/etc/passwd", "--user", "bob"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("decision:  deny"), "{out:?}");
    assert!(out.stdout.contains(&format!("rule:      {PASSWD_RULE}")), "{out:?}");
    assert!(out.stdout.contains("principal: bob (teams: none)"), "{out:?}");

    let out = explain(&config, &["--action", "file:read:/tmp/../etc//passwd", "--user", "bob"]).await;
    assert_eq!(out.code, 1, "a path is normalised as on the wire: {out:?}");

    let out = explain(&config, &["--action", "file:write:/repo/a.rs", "--user", "ivy"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("rule:      teams.interns.readonly"), "{out:?}");

    let out = explain(&config, &["--action", "file:write:/repo/a.rs", "--user", "bob"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("decision:  allow\n") && out.stdout.contains("rule:      actions.default"), "{out:?}");

    let out = explain(&config, &["--action", "bash:run:kubectl get pods", "--user", "bob"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("decision:  allow, alerting"), "{out:?}");
    assert!(out.stdout.contains("alert:     actions.alert[0] bash:run:kubectl *"), "{out:?}");

    let out = explain(&config, &["--action", "file:delete:/etc/passwd", "--user", "bob"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("unknown action \"file:delete\""), "{out:?}");
    assert!(
        out.stderr.contains("file:read") && out.stderr.contains("tool:NAME"),
        "names the actions there are: {out:?}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
}
