//! Agent actions under a policy that can deny, through the real gateway: a denied call ends a stream with an SSE
//! `permission_error` after the bytes before it (byte-exact), a whole message is refused with 403, the upstream is
//! read to its end and billed; hostile inputs (split at every byte, escaped, over `actions.max_block_bytes`,
//! commands that hide their program) are decided as the rules say; a request carrying the result of a denied call
//! never reaches the stub; observe mode, alerts, and team `readonly`/`blocked_file_patterns`.

use crate::common;

use serde_json::{json, Value};

use common::gateway::assert_api_error;
use common::intercept::{assert_billed, audit_until, messages_post, post, send, Intercepting, Parts};
use common::messages::{self, sse_events, MessagesStub, JSON_USAGE, STREAM_USAGE};

/// A `stub-tools` request whose response carries `blocks` after a one-message conversation.
pub fn tools_request(blocks: &Value, stream: bool) -> String {
    json!({"model": messages::TOOLS, "max_tokens": 1024, "stream": stream,
           "messages": [{"role": "user", "content": "go on"}], "stub_blocks": blocks})
    .to_string()
}

/// A `tool_use` block of `tool` with `input`, its input JSON text split at `pieces`.
pub fn tool(id: &str, tool: &str, input: Value, pieces: &[usize]) -> Value {
    json!({"type": "tool_use", "id": id, "name": tool, "input": input, "pieces": pieces})
}

fn text(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

/// The bytes the stub answers `body` with, asked directly (a stream de-chunked): what a client must get when every
/// call is allowed.
pub async fn stub_bytes(stub: &MessagesStub, body: &str) -> String {
    let direct = common::exchange(stub.address, &messages_post(body, &["Connection: close"])).await;
    assert_eq!(direct.status, 200, "{direct:?}");
    match direct.header("transfer-encoding") {
        Some(_) => String::from_utf8(messages::chunks(direct.body.as_bytes()).chunks.concat()).expect("UTF-8"),
        None => direct.body,
    }
}

/// Where the `content_block_start` event of the `tool_use` block `id` begins in an SSE text.
pub fn block_start(sse: &str, id: &str) -> usize {
    let mut at = 0;
    for event in sse.split_inclusive("\n\n") {
        if let Some((name, data)) = sse_events(event).first() {
            if name == "content_block_start" && data["content_block"]["id"] == id {
                return at;
            }
        }
        at += event.len();
    }
    panic!("no tool_use block {id} in {sse}")
}

/// Asserts `body` is `before` followed by exactly one `event: error` of type `permission_error` whose message names
/// `action` and `rule`, and nothing after it; returns the message.
pub fn assert_ends_with_denial(body: &str, before: &str, action: &str, rule: &str) -> String {
    assert!(
        body.starts_with(before),
        "the bytes before the denied call, as the stub sent them:\n{body}\n---\n{before}"
    );
    let rest = &body[before.len()..];
    let events = sse_events(rest);
    assert_eq!(events.len(), 1, "one event after them: {rest:?}");
    assert!(rest.starts_with("event: error\ndata: ") && rest.ends_with("\n\n"), "{rest:?}");
    let (name, data) = &events[0];
    assert_eq!((name.as_str(), data["type"].as_str()), ("error", Some("error")), "{rest}");
    assert_eq!(data["error"]["type"], "permission_error", "{rest}");
    let message = data["error"]["message"].as_str().unwrap_or_default().to_owned();
    let named = format!("the agent action {action} is denied ({rule})");
    assert!(message.starts_with("tollgate: ") && message.contains(&named), "{message:?} names {named:?}");
    message
}

/// The `action` record of the call `id` (waiting for it).
pub async fn action_record(setup: &Intercepting, id: &str) -> Value {
    let wanted = |record: &Value| record["kind"] == "action" && record["tool_use_id"] == id;
    let records = audit_until(&setup.gateway, wanted).await;
    records.into_iter().find(wanted).expect("found")
}

/// `tollgate_actions_total` for one action, decision and team.
pub fn actions_sample(action: &str, decision: &str, team: &str) -> String {
    format!("tollgate_actions_total{{action=\"{action}\",decision=\"{decision}\",team=\"{team}\"}}")
}

const DENY_PASSWD: &str = "actions:\n  deny: [\"file:read:/etc/passwd\"]\n";
const PASSWD_RULE: &str = "actions.deny[0] file:read:/etc/passwd";

// ---- 1. A streamed response ----

/// A denied call in a stream: the client gets every byte before its block as the stub sent them, then one
/// `permission_error` event naming the action and the rule, and nothing after (no `message_delta`, no
/// `message_stop`). The upstream is read to its end: the request is billed for the stub's whole usage. The action
/// record says deny with the rule; the request record names the rule and the denial; the metric counts one deny.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_call_ends_the_stream_after_the_bytes_before_it_and_the_whole_usage_is_billed() {
    let setup = Intercepting::start(Parts { extra: DENY_PASSWD, ..Parts::default() }).await;
    let blocks = json!([
        text("Let me look."),
        tool("toolu_1", "Read", json!({"file_path": "/etc/passwd"}), &[4, 17]),
        text("Done.")
    ]);
    let body = tools_request(&blocks, true);
    let sent = stub_bytes(&setup.stub, &body).await;
    // On a keep-alive tunnel: the ended stream is a complete chunked body, and the next request is served.
    let mut tls = setup.tunnel().await;
    let mut buf = Vec::new();
    let response = send(&mut tls, &messages_post(&body, &[]), &mut buf).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("content-length"), None, "{response:?}");
    let next = send(&mut tls, &messages_post(&messages::request_body(messages::MODEL, false), &[]), &mut buf).await;
    assert_eq!((next.status, next.json()["content"][0]["text"].as_str()), (200, Some(messages::JSON_TEXT)));
    let before = &sent[..block_start(&sent, "toolu_1")];
    assert!(before.contains("Let me look.") && !sent[before.len()..].starts_with("event: error"));
    assert_ends_with_denial(&response.body, before, "file:read:/etc/passwd", PASSWD_RULE);
    assert!(!response.body.contains("message_stop") && !response.body.contains("Done."), "{}", response.body);

    let record = action_record(&setup, "toolu_1").await;
    assert_eq!((record["decision"].as_str(), record["rule"].as_str()), (Some("deny"), Some(PASSWD_RULE)), "{record:#}");
    assert_eq!((record["action"].as_str(), record["target"].as_str()), (Some("file:read"), Some("/etc/passwd")));
    let records = setup.gateway.audit().await;
    let request = records.iter().find(|r| r["kind"] == "intercepted" && r["model"] == messages::TOOLS).expect("found");
    assert_eq!(record["request"], request["id"], "{request:#}");
    assert_eq!((request["status"].as_u64(), request["rule"].as_str()), (Some(200), Some(PASSWD_RULE)), "{request:#}");
    let error = request["error"].as_str().unwrap_or_default();
    assert!(error.contains("file:read:/etc/passwd") && error.contains(PASSWD_RULE), "{request:#}");
    assert_billed(&setup.gateway, request, messages::TOOLS, "-", STREAM_USAGE).await;
    assert_eq!(setup.metric(&actions_sample("file:read", "deny", "-")).await, 1.0);
    assert_eq!(setup.metric(&actions_sample("file:read", "allow", "-")).await, 0.0);
    let requests =
        "tollgate_requests_total{decision=\"deny\",kind=\"intercepted\",listener=\"proxy\",reason=\"action_denied\"}";
    assert_eq!(setup.metric(requests).await, 1.0, "the request was forwarded; its response ended by the denial");
}

/// A `Read` block whose input is exactly the JSON text `raw`, split in two at `split`.
fn raw_read(id: &str, raw: &str, split: usize) -> Value {
    json!({"type": "tool_use", "id": id, "name": "Read", "raw_input": raw, "pieces": [split]})
}

/// The input of a call split into two `input_json_delta` pieces at every byte position (inside JSON escapes too,
/// and with `..` and `//` in the path): a denied call is denied at every split, with the bytes before it intact; an
/// allowed one is released byte-exact at every split, the whole stream the same bytes as the stub's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_split_at_every_byte_of_its_input_is_decided_the_same() {
    let setup = Intercepting::start(Parts { extra: DENY_PASSWD, ..Parts::default() }).await;
    let denied = r#"{"file_path":"\/tmp\/..\/etc\/\/pa\u0073swd","limit":10}"#;
    let allowed = r#"{"file_path":"\/etc\/h\u006fsts","limit":10}"#;
    let before = {
        let body = tools_request(&json!([text("Reading."), raw_read("toolu_d", denied, 0)]), true);
        let sent = stub_bytes(&setup.stub, &body).await;
        sent[..block_start(&sent, "toolu_d")].to_owned()
    };
    for split in 0..=denied.len() {
        let id = format!("toolu_d{split}");
        let body = tools_request(&json!([text("Reading."), raw_read(&id, denied, split), text("Done.")]), true);
        let response = setup.send(&messages_post(&body, &["Connection: close"])).await;
        assert_eq!(response.status, 200, "split at {split}: {response:?}");
        assert_ends_with_denial(&response.body, &before, "file:read:/etc/passwd", PASSWD_RULE);
        let record = action_record(&setup, &id).await;
        assert_eq!((record["decision"].as_str(), record["target"].as_str()), (Some("deny"), Some("/etc/passwd")));
    }
    for split in 0..=allowed.len() {
        let id = format!("toolu_a{split}");
        let body = tools_request(&json!([text("Reading."), raw_read(&id, allowed, split), text("Done.")]), true);
        let sent = stub_bytes(&setup.stub, &body).await;
        let response = setup.send(&messages_post(&body, &["Connection: close"])).await;
        assert_eq!(response.status, 200, "split at {split}: {response:?}");
        assert_eq!(response.body, sent, "split at {split}: the stub's bytes, byte-exact");
        let record = action_record(&setup, &id).await;
        assert_eq!((record["decision"].as_str(), record["target"].as_str()), (Some("allow"), Some("/etc/hosts")));
    }
    let count = |decision: &'static str| actions_sample("file:read", decision, "-");
    assert_eq!(setup.metric(&count("deny")).await, (denied.len() + 1) as f64);
    assert_eq!(setup.metric(&count("allow")).await, (allowed.len() + 1) as f64);
}

/// Inputs a client would read differently from a careless reader: with a key given twice the last one counts (as in
/// JavaScript's `JSON.parse`), so `/etc/passwd` is what the call reads and it is denied. An input that is not a JSON
/// object, or is cut before it ends, cannot be read: under a policy that can deny it is denied, streamed or whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_and_unreadable_inputs_are_denied() {
    let setup = Intercepting::start(Parts { extra: DENY_PASSWD, ..Parts::default() }).await;
    let unreadable = "actions (unreadable tool input)";
    let cases = [
        (r#"{"file_path":"/etc/hosts","file_path":"/etc/passwd"}"#, "file:read:/etc/passwd", PASSWD_RULE),
        (r#""/etc/hosts""#, "file:read", unreadable),
        (r#"["/etc/hosts"]"#, "file:read", unreadable),
        (r#"{"file_path":"/etc/hosts""#, "file:read", unreadable),
    ];
    for (number, (raw, action, rule)) in cases.into_iter().enumerate() {
        let id = format!("toolu_h{number}");
        let body = tools_request(&json!([text("Reading."), raw_read(&id, raw, 5)]), true);
        let sent = stub_bytes(&setup.stub, &body).await;
        let response = setup.send(&messages_post(&body, &["Connection: close"])).await;
        assert_ends_with_denial(&response.body, &sent[..block_start(&sent, &id)], action, rule);
        let record = action_record(&setup, &id).await;
        assert_eq!((record["decision"].as_str(), record["rule"].as_str()), (Some("deny"), Some(rule)), "{raw}");
        assert_eq!(record["error"].is_string(), rule == unreadable, "{record:#}");

        let id = format!("toolu_w{number}");
        let body = tools_request(&json!([text("Reading."), raw_read(&id, raw, 5)]), false);
        let response = setup.send(&messages_post(&body, &["Connection: close"])).await;
        assert_api_error(&response, 403, "permission_error", Some(rule));
    }
}

/// The Messages path as clients write it — with Claude Code's `?beta=true`, or in a form that names the same path
/// (`//`, `.`, a trailing `/`, percent-escaped letters) — is read all the same: the call is denied in each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_form_of_the_messages_path_is_read() {
    let setup = Intercepting::start(Parts { extra: DENY_PASSWD, ..Parts::default() }).await;
    let paths = ["/v1/messages?beta=true", "/v1//messages/", "/v1/./messages", "/v1/%6d%65ssages", "/x/../v1/messages"];
    for (number, path) in paths.into_iter().enumerate() {
        let id = format!("toolu_p{number}");
        let blocks = json!([text("Reading."), tool(&id, "Read", json!({"file_path": "/etc/passwd"}), &[7])]);
        let body = tools_request(&blocks, true);
        let sent = stub_bytes(&setup.stub, &body).await;
        let response = setup.send(&post(path, &body, &["Connection: close"])).await;
        assert_eq!(response.status, 200, "{path}: {response:?}");
        assert_ends_with_denial(&response.body, &sent[..block_start(&sent, &id)], "file:read:/etc/passwd", PASSWD_RULE);
    }
}

// ---- 2. A whole message ----

/// A whole (non-streamed) message with a denied call is refused with 403 `permission_error` (Anthropic shape,
/// `x-tollgate-rule`), and the request is billed for the usage the stub's message carried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_message_with_a_denied_call_is_refused_with_403_and_billed() {
    let setup = Intercepting::start(Parts { extra: DENY_PASSWD, ..Parts::default() }).await;
    let blocks = json!([text("Reading."), tool("toolu_21", "Read", json!({"file_path": "/etc/passwd"}), &[])]);
    let response = setup.send(&messages_post(&tools_request(&blocks, false), &["Connection: close"])).await;
    let message = assert_api_error(&response, 403, "permission_error", Some(PASSWD_RULE));
    assert!(message.contains("the agent action file:read:/etc/passwd is denied"), "{message}");
    assert_eq!(setup.stub.requests().len(), 1, "the request reached the stub; its answer was refused");

    let records = setup.gateway.audit().await;
    let request = records.iter().find(|r| r["kind"] == "intercepted").expect("the request's record");
    assert_eq!(
        (request["status"].as_u64(), request["decision"].as_str(), request["rule"].as_str()),
        (Some(403), Some("deny"), Some(PASSWD_RULE)),
        "{request:#}"
    );
    assert_billed(&setup.gateway, request, messages::TOOLS, "-", JSON_USAGE).await;
    let record = action_record(&setup, "toolu_21").await;
    assert_eq!((record["decision"].as_str(), record["rule"].as_str()), (Some("deny"), Some(PASSWD_RULE)));
    assert_eq!(record["request"], request["id"]);
}

/// Under the same policy, a whole message whose calls are allowed comes through byte-exact, with the stub's
/// length, billed for its usage like any message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_message_whose_calls_are_allowed_comes_through_byte_exact_and_billed() {
    let setup = Intercepting::start(Parts { extra: DENY_PASSWD, ..Parts::default() }).await;
    let blocks = json!([text("Reading."), tool("toolu_22", "Read", json!({"file_path": "/etc/hosts"}), &[])]);
    let body = tools_request(&blocks, false);
    let sent = stub_bytes(&setup.stub, &body).await;
    let response = setup.send(&messages_post(&body, &["Connection: close"])).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body, sent, "the stub's message, byte-exact");
    assert_eq!(response.header("content-length"), Some(sent.len().to_string()));
    assert_eq!(action_record(&setup, "toolu_22").await["decision"], "allow");
    let records = setup.gateway.audit().await;
    let request = records.iter().find(|r| r["kind"] == "intercepted").expect("the request's record");
    assert!(request["error"].is_null(), "{request:#}");
    assert_billed(&setup.gateway, request, messages::TOOLS, "-", JSON_USAGE).await;
}

// ---- 3. Several calls ----

const DENY_CURL: &str = "actions:\n  deny: [\"bash:run:curl *\"]\n";
const CURL_RULE: &str = "actions.deny[0] bash:run:curl *";

/// Calls interleaved with text, the second denied: the text and the first call go out, the error comes where the
/// second begins. The first two are recorded (allow, deny); the third, after the denial, never reaches the client
/// and is not read, so it has no record. A whole message is read whole: all three are recorded, and it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_of_several_calls_denied_releases_the_first_and_ends_at_the_second() {
    let setup = Intercepting::start(Parts { extra: DENY_CURL, ..Parts::default() }).await;
    let blocks = |n: u32| {
        json!([
            text("First I read."),
            tool(&format!("toolu_{n}1"), "Read", json!({"file_path": "/repo/a.rs"}), &[5]),
            text("Then I fetch."),
            tool(&format!("toolu_{n}2"), "Bash", json!({"command": "curl http://x"}), &[2, 9]),
            text("Then I write."),
            tool(&format!("toolu_{n}3"), "Write", json!({"file_path": "/repo/c.rs", "content": "x"}), &[]),
        ])
    };
    let body = tools_request(&blocks(3), true);
    let sent = stub_bytes(&setup.stub, &body).await;
    let response = setup.send(&messages_post(&body, &["Connection: close"])).await;
    assert_eq!(response.status, 200, "{response:?}");
    let before = &sent[..block_start(&sent, "toolu_32")];
    assert!(before.contains("toolu_31") && before.contains("Then I fetch."), "{before}");
    assert_ends_with_denial(&response.body, before, "bash:run:curl http://x", CURL_RULE);
    let records = audit_until(&setup.gateway, |r| r["kind"] == "intercepted").await;
    let decisions: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] == "action")
        .map(|r| (r["tool_use_id"].as_str(), r["decision"].as_str()))
        .collect();
    assert_eq!(decisions, [(Some("toolu_31"), Some("allow")), (Some("toolu_32"), Some("deny"))], "{records:#?}");

    let response = setup.send(&messages_post(&tools_request(&blocks(4), false), &["Connection: close"])).await;
    assert_api_error(&response, 403, "permission_error", Some(CURL_RULE));
    let records = audit_until(&setup.gateway, |r| r["kind"] == "intercepted" && r["status"] == 403).await;
    let decisions: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] == "action" && r["tool_use_id"].as_str().is_some_and(|id| id.starts_with("toolu_4")))
        .map(|r| (r["tool_use_id"].as_str(), r["decision"].as_str()))
        .collect();
    assert_eq!(
        decisions,
        [(Some("toolu_41"), Some("allow")), (Some("toolu_42"), Some("deny")), (Some("toolu_43"), Some("allow"))]
    );
}

// ---- 4. Past actions.max_block_bytes ----

/// A `Write` of 20 KiB against `actions.max_block_bytes: 4KiB`, its input in 1 KB pieces (the held events pass the
/// bound) or in one piece (one event passes it).
fn big_write(id: &str, one_piece: bool) -> Value {
    let input = json!({"file_path": "/repo/big.txt", "content": "x".repeat(20 * 1024)});
    let length = input.to_string().len();
    let pieces: Vec<usize> = if one_piece { vec![] } else { (1000..length).step_by(1000).collect() };
    tool(id, "Write", input, &pieces)
}

/// Under a policy that can deny, a call whose input passes `actions.max_block_bytes` cannot be read, so it is
/// denied with that rule; the bytes before it went out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_max_block_bytes_is_denied_under_a_policy_that_can_deny() {
    let extra = "actions:\n  deny: [\"file:read:/etc/passwd\"]\n  max_block_bytes: 4KiB\n";
    let setup = Intercepting::start(Parts { extra, ..Parts::default() }).await;
    for (id, one_piece) in [("toolu_4a", false), ("toolu_4b", true)] {
        let body = tools_request(&json!([text("Writing."), big_write(id, one_piece), text("Done.")]), true);
        let sent = stub_bytes(&setup.stub, &body).await;
        let response = setup.send(&messages_post(&body, &["Connection: close"])).await;
        assert_eq!(response.status, 200, "{response:?}");
        assert_ends_with_denial(
            &response.body,
            &sent[..block_start(&sent, id)],
            "file:write",
            "actions.max_block_bytes",
        );
        let record = action_record(&setup, id).await;
        assert_eq!(
            (record["decision"].as_str(), record["rule"].as_str(), record["tool"].as_str()),
            (Some("deny"), Some("actions.max_block_bytes"), Some("Write")),
            "{record:#}"
        );
        assert!(record["error"].as_str().is_some_and(|e| e.contains("max_block_bytes")), "{record:#}");
    }
    assert_eq!(setup.metric(&actions_sample("file:write", "deny", "-")).await, 2.0);
}

/// Without a policy that can deny (none, or only `alert`), nothing is held: the same call passes byte-exact and its
/// record carries an `error` saying its input was not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_max_block_bytes_passes_byte_exact_and_is_recorded_with_an_error_without_one() {
    for extra in
        ["actions:\n  max_block_bytes: 4KiB\n", "actions:\n  alert: [\"file:write:**\"]\n  max_block_bytes: 4KiB\n"]
    {
        let setup = Intercepting::start(Parts { extra, ..Parts::default() }).await;
        for (id, one_piece) in [("toolu_4c", false), ("toolu_4d", true)] {
            let body = tools_request(&json!([text("Writing."), big_write(id, one_piece), text("Done.")]), true);
            let sent = stub_bytes(&setup.stub, &body).await;
            let response = setup.send(&messages_post(&body, &["Connection: close"])).await;
            assert_eq!(response.status, 200, "{extra}: {response:?}");
            assert_eq!(response.body, sent, "{extra}: byte-exact");
            let record = action_record(&setup, id).await;
            assert_eq!((record["decision"].as_str(), record["tool"].as_str()), (Some("allow"), Some("Write")));
            assert!(record["error"].as_str().is_some_and(|e| e.contains("max_block_bytes")), "{extra}: {record:#}");
        }
    }
}

// ---- 7. Before the data leaves ----

/// A request whose conversation ends with `results` (a user turn of `tool_result` blocks) after `calls` (an
/// assistant turn of `tool_use` blocks), after `earlier` turns.
fn conversation(earlier: &[Value], calls: Value, results: Value) -> String {
    let mut turns = vec![json!({"role": "user", "content": "look at the system"})];
    turns.extend_from_slice(earlier);
    turns.push(json!({"role": "assistant", "content": calls}));
    turns.push(json!({"role": "user", "content": results}));
    json!({"model": messages::TOOLS, "max_tokens": 1024, "messages": turns, "stub_blocks": [text("Noted.")]})
        .to_string()
}

fn read_call(id: &str, path: &str) -> Value {
    json!({"type": "tool_use", "id": id, "name": "Read", "input": {"file_path": path}})
}

fn result(id: &str, is_error: bool, content: &str) -> Value {
    json!({"type": "tool_result", "tool_use_id": id, "is_error": is_error, "content": content})
}

/// What Claude Code sends back when the user refuses a call.
const REFUSED: &str =
    "The user doesn't want to proceed with this tool use. The tool use was rejected (eg. if it was a \
                       file edit, the new_string was NOT written to the file). STOP what you are doing and wait for \
                       the user to tell you how to proceed.";

/// A request carrying the result of a call the policy denies — it ran, it failed, or it is in an earlier turn — is
/// refused with 403 `permission_error` naming the action and the rule and telling the developer to /rewind or
/// /clear, and nothing reaches the stub. The outcomes of the latest results are still recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_carrying_the_result_of_a_denied_call_is_refused_before_it_leaves() {
    let setup = Intercepting::start(Parts { extra: DENY_PASSWD, ..Parts::default() }).await;
    let ran = conversation(
        &[],
        json!([read_call("toolu_71", "/etc/passwd")]),
        json!([result("toolu_71", false, "root:x:0:0")]),
    );
    let failed =
        conversation(&[], json!([read_call("toolu_72", "/etc/passwd")]), json!([result("toolu_72", true, "EACCES")]));
    let earlier = [
        json!({"role": "assistant", "content": [read_call("toolu_73", "/etc/passwd")]}),
        json!({"role": "user", "content": [result("toolu_73", false, "root:x:0:0")]}),
    ];
    let later = conversation(
        &earlier,
        json!([read_call("toolu_74", "/etc/hosts")]),
        json!([result("toolu_74", false, "127.0.0.1")]),
    );
    for (body, latest, outcome) in
        [(ran, "toolu_71", "ran"), (failed, "toolu_72", "failed"), (later, "toolu_74", "ran")]
    {
        let response = setup.send(&messages_post(&body, &["Connection: close"])).await;
        let message = assert_api_error(&response, 403, "permission_error", Some(PASSWD_RULE));
        for named in ["the result of file:read:/etc/passwd", PASSWD_RULE, "/rewind", "/clear"] {
            assert!(message.contains(named), "{message:?} names {named:?}");
        }
        let wanted = |r: &Value| r["kind"] == "action_outcome" && r["tool_use_id"] == latest;
        let records = audit_until(&setup.gateway, wanted).await;
        let record = records.iter().find(|r| wanted(r)).expect("found");
        assert_eq!(record["outcome"], outcome, "{record:#}");
        let request = records.iter().rfind(|r| r["kind"] == "intercepted").expect("the request's record");
        assert_eq!(record["request"], request["id"], "{records:#?}");
        assert_eq!(
            (request["status"].as_u64(), request["decision"].as_str(), request["rule"].as_str()),
            (Some(403), Some("deny"), Some(PASSWD_RULE)),
            "{request:#}"
        );
        assert!(request["usage"].is_null(), "nothing was generated: {request:#}");
    }
    assert!(setup.stub.requests().is_empty(), "nothing reached the stub: {:?}", setup.stub.requests());
    let records = setup.gateway.audit().await;
    let outcomes: Vec<_> =
        records.iter().filter(|r| r["kind"] == "action_outcome").map(|r| &r["tool_use_id"]).collect();
    assert_eq!(outcomes, ["toolu_71", "toolu_72", "toolu_74"], "only the latest results are recorded");
}

/// A call the user refused carries no data: the request carrying its result goes on, and the outcome `refused` is
/// recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_carrying_a_refused_denied_call_goes_on() {
    let setup = Intercepting::start(Parts { extra: DENY_PASSWD, ..Parts::default() }).await;
    let body =
        conversation(&[], json!([read_call("toolu_75", "/etc/passwd")]), json!([result("toolu_75", true, REFUSED)]));
    let response = setup.send(&messages_post(&body, &["Connection: close"])).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json()["content"][0]["text"], "Noted.");
    assert_eq!(setup.stub.requests().len(), 1);
    assert_eq!(setup.stub.requests()[0].body, body.as_bytes(), "the request as sent");
    let wanted = |r: &Value| r["kind"] == "action_outcome" && r["tool_use_id"] == "toolu_75";
    let records = audit_until(&setup.gateway, wanted).await;
    let record = records.iter().find(|r| wanted(r)).expect("found");
    assert_eq!((record["outcome"].as_str(), record["target"].as_str()), (Some("refused"), Some("/etc/passwd")));
}

/// The same conversation sent to be counted, or inside a message batch, carries the denied file's contents too:
/// refused alike before it leaves (no outcome is recorded from them: the Messages request records it). Without a
/// policy that can deny, both pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_tokens_and_batches_carrying_a_denied_result_are_refused_before_they_leave() {
    let setup = Intercepting::start(Parts { extra: DENY_PASSWD, ..Parts::default() }).await;
    let body = conversation(
        &[],
        json!([read_call("toolu_81", "/etc/passwd")]),
        json!([result("toolu_81", false, "root:x:0:0")]),
    );
    let counted = setup.send(&post("/v1/messages/count_tokens", &body, &["Connection: close"])).await;
    let message = assert_api_error(&counted, 403, "permission_error", Some(PASSWD_RULE));
    assert!(message.contains("the result of file:read:/etc/passwd"), "{message:?}");
    let params: Value = serde_json::from_str(&body).expect("JSON");
    let batch = json!({"requests": [
        {"custom_id": "clean", "params": {"model": messages::MODEL, "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}]}},
        {"custom_id": "leak", "params": params}]});
    let batched = setup.send(&post("/v1/messages/batches", &batch.to_string(), &["Connection: close"])).await;
    assert_api_error(&batched, 403, "permission_error", Some(PASSWD_RULE));
    assert!(setup.stub.requests().is_empty(), "nothing reached the stub: {:?}", setup.stub.requests());
    let records = audit_until(&setup.gateway, |r| r["path"] == "/v1/messages/batches").await;
    assert!(records.iter().all(|r| r["kind"] != "action_outcome"), "{records:#?}");

    let open = Intercepting::start(Parts::default()).await;
    let counted = open.send(&post("/v1/messages/count_tokens", &body, &["Connection: close"])).await;
    assert_eq!(counted.status, 200, "{counted:?}");
    let batched = open.send(&post("/v1/messages/batches", &batch.to_string(), &["Connection: close"])).await;
    assert_eq!(batched.status, 200, "{batched:?}");
}

/// A compressed response cannot be read for its tool calls: under a policy that can deny it is refused (502
/// naming why), never passed unread. (Without one it passes as it came: `budgets_e2e.rs` covers that.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_response_is_refused_under_a_policy_that_can_deny() {
    let setup = Intercepting::start(Parts { extra: DENY_PASSWD, ..Parts::default() }).await;
    let body = messages::request_body(messages::GZIP, false);
    let response = setup.send(&messages_post(&body, &["Connection: close"])).await;
    let message = assert_api_error(&response, 502, "api_error", None);
    assert!(message.contains("could not be checked for agent actions") && message.contains("gzip"), "{message:?}");
    let records = audit_until(&setup.gateway, |r| r["kind"] == "intercepted").await;
    let request = records.iter().find(|r| r["kind"] == "intercepted").expect("the request's record");
    assert_eq!(request["status"], 502, "{request:#}");
}

/// Agent actions do not hang off metering: with `intercept.meter_paths` naming none of the Messages paths, a denied
/// call still ends its stream, and a count_tokens request carrying a denied result is still refused before it
/// leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meter_paths_do_not_decide_which_requests_are_checked() {
    let setup = Intercepting::start(Parts {
        extra: DENY_PASSWD,
        intercept: &["meter_paths: [\"/v1/other\"]"],
        ..Parts::default()
    })
    .await;
    let blocks = json!([text("Let me look."), tool("toolu_91", "Read", json!({"file_path": "/etc/passwd"}), &[3])]);
    let body = tools_request(&blocks, true);
    let sent = stub_bytes(&setup.stub, &body).await;
    let response = setup.send(&messages_post(&body, &["Connection: close"])).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_ends_with_denial(
        &response.body,
        &sent[..block_start(&sent, "toolu_91")],
        "file:read:/etc/passwd",
        PASSWD_RULE,
    );

    let counted = conversation(
        &[],
        json!([read_call("toolu_92", "/etc/passwd")]),
        json!([result("toolu_92", false, "root:x:0:0")]),
    );
    let refused = setup.send(&post("/v1/messages/count_tokens", &counted, &["Connection: close"])).await;
    assert_api_error(&refused, 403, "permission_error", Some(PASSWD_RULE));
    assert_eq!(setup.stub.requests().len(), 2, "the stream's request and stub_bytes' own; not the count");
}
