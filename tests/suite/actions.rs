//! Agent actions read from the wire: the Messages stub's `stub-tools` scenario answers with the `tool_use` blocks a
//! request asks for (streamed with the input split into `input_json_delta` pieces, or whole), through an
//! intercepted tunnel and a gateway listener. Asserted on the bytes the client gets, the `action` and
//! `action_outcome` audit records, `tollgate_actions_total`, and the refusals under an `actions` policy.

use crate::common;

use serde_json::{json, Value};

use common::intercept::{audit_until, messages_post, Intercepting, Parts};
use common::messages::{self, sse_events, STREAM_USAGE};

const SESSION: &str = "5e55-a7c1-0n";

/// A `stub-tools` request whose response carries `blocks`, with a conversation `history` before its last turn.
fn tools_request(blocks: &Value, history: &[Value], stream: bool) -> String {
    let mut messages_list = history.to_vec();
    messages_list.push(json!({"role": "user", "content": "go on"}));
    json!({"model": messages::TOOLS, "max_tokens": 1024, "stream": stream, "messages": messages_list,
           "stub_blocks": blocks})
    .to_string()
}

fn read_block(id: &str, path: &str, pieces: &[usize]) -> Value {
    json!({"type": "tool_use", "id": id, "name": "Read", "input": {"file_path": path}, "pieces": pieces})
}

fn bash_block(id: &str, command: &str) -> Value {
    json!({"type": "tool_use", "id": id, "name": "Bash", "input": {"command": command, "description": "run"},
           "pieces": [3, 11]})
}

fn session_headers() -> [&'static str; 3] {
    ["X-Claude-Code-Session-Id: 5e55-a7c1-0n", "User-Agent: claude-cli/2.1.332 (external, cli)", "Connection: close"]
}

fn actions_of(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|record| record["kind"] == "action").collect()
}

fn outcomes_of(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|record| record["kind"] == "action_outcome").collect()
}

/// Without an `actions` policy every call is recorded and nothing is held: the client gets the stub's stream
/// byte-exact; one `action` record per call names the action, tool, target, `tool_use_id`, session, model and the
/// id of the request that carried it; the request record carries the session and the client's product token; the
/// metric counts by team, action and decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_of_a_stream_is_recorded_and_the_stream_passes_byte_exact() {
    let setup = Intercepting::start(Parts::default()).await;
    let blocks = json!([
        {"type": "text", "text": "Let me look."},
        read_block("toolu_01", "/repo/src/../Cargo.toml", &[4, 17]),
        bash_block("toolu_02", "cargo build && curl http://x"),
        {"type": "tool_use", "id": "toolu_03", "name": "mcp__jira__create_issue", "input": {"summary": "s"}},
        {"type": "tool_use", "id": "toolu_04", "name": "Frobnicate", "input": {}},
    ]);
    let body = tools_request(&blocks, &[], true);
    let direct = common::exchange(setup.stub.address, &messages_post(&body, &["Connection: close"])).await;
    let response = setup.send(&messages_post(&body, &session_headers())).await;
    assert_eq!(response.status, 200, "{response:?}");
    let stub_sent = String::from_utf8(messages::chunks(direct.body.as_bytes()).chunks.concat()).expect("UTF-8");
    assert_eq!(response.body, stub_sent, "the client gets the stub's bytes");
    let events = sse_events(&response.body);
    assert_eq!(events.last().map(|(name, _)| name.as_str()), Some("message_stop"));

    let records = audit_until(&setup.gateway, |record| record["kind"] == "intercepted").await;
    let request = records.iter().find(|r| r["kind"] == "intercepted").expect("the request's record");
    assert_eq!(
        (request["session"].as_str(), request["user_agent"].as_str()),
        (Some(SESSION), Some("claude-cli/2.1.332"))
    );
    let actions = actions_of(&records);
    let summary: Vec<_> = actions
        .iter()
        .map(|a| (a["action"].as_str(), a["tool"].as_str(), a["target"].as_str(), a["tool_use_id"].as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (Some("file:read"), Some("Read"), Some("/repo/Cargo.toml"), Some("toolu_01")),
            (Some("bash:run"), Some("Bash"), Some("cargo build && curl http://x"), Some("toolu_02")),
            (Some("mcp:call"), Some("mcp__jira__create_issue"), Some("jira/create_issue"), Some("toolu_03")),
            (Some("tool:Frobnicate"), Some("Frobnicate"), None, Some("toolu_04")),
        ]
    );
    for action in &actions {
        assert_eq!(action["request"], request["id"], "{action:#}");
        assert_eq!(action["session"], SESSION, "{action:#}");
        assert_eq!(action["model"], messages::TOOLS, "{action:#}");
        assert_eq!((action["decision"].as_str(), action["user"].as_str()), (Some("allow"), Some("dev")), "{action:#}");
        assert!(action.get("alert").is_none() && action.get("would_deny").is_none(), "{action:#}");
    }
    assert_eq!(request["usage"]["output_tokens"], STREAM_USAGE.1, "{request:#}");
    let sample = |action: &str| format!("tollgate_actions_total{{action=\"{action}\",decision=\"allow\",team=\"-\"}}");
    assert_eq!(setup.metric(&sample("file:read")).await, 1.0);
    assert_eq!(setup.metric(&sample("tool:*")).await, 1.0);
}

/// A whole (non-streamed) message's calls are recorded from its `content`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_calls_of_a_whole_message_are_recorded() {
    let setup = Intercepting::start(Parts::default()).await;
    let blocks = json!([read_block("toolu_11", "/etc/hosts", &[]), bash_block("toolu_12", "ls")]);
    let response = setup.send(&messages_post(&tools_request(&blocks, &[], false), &session_headers())).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json()["content"][0]["input"]["file_path"], "/etc/hosts");
    let records = audit_until(&setup.gateway, |record| record["kind"] == "intercepted").await;
    let targets: Vec<_> = actions_of(&records).iter().map(|a| a["target"].as_str().map(str::to_owned)).collect();
    assert_eq!(targets, [Some("/etc/hosts".to_owned()), Some("ls".to_owned())]);
}

/// The next request's `tool_result` blocks give each call's outcome: ran, failed, or refused by the user. Only the
/// results new in its last message are recorded, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_are_recorded_from_the_next_requests_results() {
    let setup = Intercepting::start(Parts::default()).await;
    let history = [
        json!({"role": "user", "content": "fix it"}),
        json!({"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_21", "name": "Read", "input": {"file_path": "/r/a.rs"}}]}),
        json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_21", "content": "1\tfn"}]}),
        json!({"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_22", "name": "Bash", "input": {"command": "cargo test"}},
            {"type": "tool_use", "id": "toolu_23", "name": "Write", "input": {"file_path": "/r/b.rs", "content": "x"}},
            {"type": "tool_use", "id": "toolu_24", "name": "Edit", "input": {"file_path": "/r/c.rs"}}]}),
    ];
    let mut history = history.to_vec();
    history.push(json!({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_22", "is_error": true, "content": "Exit code 101"},
        {"type": "tool_result", "tool_use_id": "toolu_23", "content": "File created successfully at: /r/b.rs"},
        {"type": "tool_result", "tool_use_id": "toolu_24", "is_error": true, "content":
            "The user doesn't want to proceed with this tool use. The tool use was rejected."}]}));
    // The last turn is the results themselves (no "go on" after them): drop the one `tools_request` adds.
    let mut body: Value = serde_json::from_str(&tools_request(&json!([]), &history, false)).expect("JSON");
    body["messages"].as_array_mut().expect("messages").pop();
    let response = setup.send(&messages_post(&body.to_string(), &session_headers())).await;
    assert_eq!(response.status, 200, "{response:?}");
    let records = audit_until(&setup.gateway, |record| record["kind"] == "intercepted").await;
    let outcomes: Vec<_> = outcomes_of(&records)
        .iter()
        .map(|o| (o["tool_use_id"].as_str(), o["action"].as_str(), o["target"].as_str(), o["outcome"].as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            (Some("toolu_22"), Some("bash:run"), Some("cargo test"), Some("failed")),
            (Some("toolu_23"), Some("file:write"), Some("/r/b.rs"), Some("ran")),
            (Some("toolu_24"), Some("file:write"), Some("/r/c.rs"), Some("refused")),
        ]
    );
    let request = records.iter().find(|r| r["kind"] == "intercepted").expect("the request's record");
    assert!(outcomes_of(&records).iter().all(|o| o["request"] == request["id"] && o["session"] == SESSION));
    let audit_text = std::fs::read_to_string(setup.gateway.audit_path()).expect("audit file");
    assert!(!audit_text.contains("Exit code 101") && !audit_text.contains("1\\tfn"), "no tool output: {audit_text}");
}
