//! The tool calls a request replays. A Messages request carries the whole conversation: each assistant turn
//! repeats its `tool_use` blocks, and the user turn after it holds one `tool_result` per call. Read here, without
//! copying the results' contents: which calls were made, with what input, and how each ended — so that a request
//! carrying the result of a denied call can be refused before it leaves, and the outcomes recorded.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// How a call ended, as its `tool_result` tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The client ran it (no `is_error`).
    Ran,
    /// It ran and failed, or the tool was unavailable (`is_error: true`).
    Failed,
    /// The user refused it when asked (Claude Code's rejection text, `is_error: true`).
    Refused,
}

impl Outcome {
    /// `ran`, `failed` or `refused`: the audit record's `outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ran => "ran",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
        }
    }
}

/// A call the conversation shows with its result.
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed {
    pub id: String,
    pub name: String,
    /// The call's input as replayed (an object; anything else reads as `null`).
    pub input: Value,
    pub outcome: Outcome,
    /// Its result is in the last message: new since the previous request.
    pub latest: bool,
}

/// The requests that carry a conversation, and so may carry tool results to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversation {
    /// `POST /v1/messages`: its response carries the next tool calls.
    Message,
    /// `POST /v1/messages/count_tokens`: the same conversation, counted.
    CountTokens,
    /// `POST /v1/messages/batches`: each request's `params` is a message's body.
    Batch,
}

impl Conversation {
    /// The conversation a request to `path` (canonical, any case) carries, if any.
    pub fn of(path: &str) -> Option<Conversation> {
        [
            ("/v1/messages", Conversation::Message),
            ("/v1/messages/count_tokens", Conversation::CountTokens),
            ("/v1/messages/batches", Conversation::Batch),
        ]
        .into_iter()
        .find(|(known, _)| path.eq_ignore_ascii_case(known))
        .map(|(_, conversation)| conversation)
    }
}

/// What Claude Code's `tool_result` says when the user refused a call.
const REFUSALS: [&str; 2] = ["doesn't want to proceed with this tool use", "tool use was rejected"];

/// Which results to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Results {
    /// Every result in the conversation (to check each against the policy).
    All,
    /// Only those in the last message, new since the previous request (to record their outcomes): the inputs
    /// of earlier calls are not parsed.
    Latest,
}

/// The calls of `body` that have a result, in the order of their results. `None` when the body is not a
/// Messages request (not JSON, no `messages` array of the expected shape).
pub fn replayed(body: &[u8], results: Results) -> Option<Vec<Replayed>> {
    if results == Results::Latest && !may_hold(body, &TOOL_RESULT) {
        // Recording only, and no result can be in it: not worth a parse.
        return Some(Vec::new());
    }
    let request: Request<'_> = serde_json::from_slice(body).ok()?;
    Some(joined(&request.messages, results))
}

/// The calls with results of every request of a message batch (none of them `latest`: a batch is not a
/// conversation going on). `None` when the body is not a batch.
pub fn replayed_in_batch(body: &[u8]) -> Option<Vec<Replayed>> {
    #[derive(Deserialize)]
    struct Batch<'a> {
        #[serde(borrow)]
        requests: Vec<BatchRequest<'a>>,
    }
    #[derive(Deserialize)]
    struct BatchRequest<'a> {
        #[serde(borrow)]
        params: Request<'a>,
    }
    let batch: Batch<'_> = serde_json::from_slice(body).ok()?;
    let calls = batch.requests.iter().flat_map(|request| joined(&request.params.messages, Results::All));
    Some(calls.map(|call| Replayed { latest: false, ..call }).collect())
}

/// The results of `messages` joined to their calls. A result joins every call its `tool_use_id` names: a
/// conversation that gives two calls one id cannot hide the first behind the second.
fn joined(messages: &[Message<'_>], results: Results) -> Vec<Replayed> {
    let last = messages.len().checked_sub(1);
    let mut calls: HashMap<&str, Vec<(&str, &RawValue)>> = HashMap::new();
    let mut replayed = Vec::new();
    for (position, message) in messages.iter().enumerate() {
        let Content::Blocks(blocks) = &message.content else { continue };
        let latest = Some(position) == last;
        for block in blocks {
            match block.kind.as_deref() {
                Some("tool_use") => {
                    if let (Some(id), Some(name), Some(input)) = (&block.id, &block.name, block.input) {
                        calls.entry(id.as_ref()).or_default().push((name.as_ref(), input));
                    }
                }
                Some("tool_result") if latest || results == Results::All => {
                    let Some(id) = &block.tool_use_id else { continue };
                    let Some(named) = calls.get(id.as_ref()) else { continue };
                    let outcome = match block.is_error {
                        Some(true) if refused(block.content) => Outcome::Refused,
                        Some(true) => Outcome::Failed,
                        _ => Outcome::Ran,
                    };
                    for (name, input) in named {
                        let input = serde_json::from_str::<Value>(input.get()).ok().filter(Value::is_object);
                        replayed.push(Replayed {
                            id: id.clone().into_owned(),
                            name: (*name).to_owned(),
                            input: input.unwrap_or(Value::Null),
                            outcome,
                            latest,
                        });
                    }
                }
                _ => {}
            }
        }
    }
    replayed
}

/// Whether JSON text `body` may hold the string `word` (ASCII): false only when neither `word` nor a `\u` escape
/// (which could spell it) occurs, so a false is certain.
pub fn may_hold(body: &[u8], word: &Finder<'_>) -> bool {
    word.find(body).is_some() || ESCAPE.find(body).is_some()
}

/// The finders `may_hold` is given, built once: building one costs more than a search of a small body.
pub static TOOL_USE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"tool_use"));
pub static TOOL_RESULT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"tool_result"));
/// A JSON `\u` escape: any word may hide behind one.
static ESCAPE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\\u"));

/// The result's content says the user refused the call.
fn refused(content: Option<&RawValue>) -> bool {
    let Some(content) = content else { return false };
    // The raw JSON text: the phrases hold no characters JSON escapes.
    let text = content.get();
    REFUSALS.iter().any(|phrase| text.contains(phrase))
}

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    messages: Vec<Message<'a>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    content: Content<'a>,
}

/// A message's `content`: blocks, or text (which holds no call). Not `untagged`: a borrowed `RawValue` cannot be
/// read from serde's buffered content.
enum Content<'a> {
    Blocks(Vec<Block<'a>>),
    Text,
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = Content<'a>;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a string or an array of content blocks")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Content::Text)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut blocks = Vec::new();
                while let Some(block) = seq.next_element()? {
                    blocks.push(block);
                }
                Ok(Content::Blocks(blocks))
            }
        }
        deserializer.deserialize_any(Visitor(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_use_id: Option<Cow<'a, str>>,
    is_error: Option<bool>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conversation() -> Value {
        json!({"model": "m", "messages": [
            {"role": "user", "content": "fix the build"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Reading."},
                {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "/r/Cargo.toml"}},
                {"type": "tool_use", "id": "toolu_2", "name": "Bash", "input": {"command": "cargo build"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "     1\t[package]"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": true, "content": "Exit code 101\nerror"}]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_3", "name": "Edit", "input": {"file_path": "/r/src/main.rs"}},
                {"type": "tool_use", "id": "toolu_4", "name": "Write", "input": {"file_path": "/r/x"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_3", "is_error": true, "content": [{"type": "text",
                  "text": "The user doesn't want to proceed with this tool use. The tool use was rejected."}]},
                {"type": "tool_result", "tool_use_id": "toolu_4", "content": [{"type": "text", "text": "ok"}]},
                {"type": "tool_result", "tool_use_id": "toolu_unknown", "content": "?"},
                {"type": "text", "text": "go on"}]}
        ]})
    }

    #[test]
    fn results_are_joined_to_their_calls_with_outcomes_and_the_latest_marked() {
        let calls = replayed(conversation().to_string().as_bytes(), Results::All).expect("a Messages request");
        let summary: Vec<_> = calls.iter().map(|c| (c.id.as_str(), c.name.as_str(), c.outcome, c.latest)).collect();
        assert_eq!(
            summary,
            [
                ("toolu_1", "Read", Outcome::Ran, false),
                ("toolu_2", "Bash", Outcome::Failed, false),
                ("toolu_3", "Edit", Outcome::Refused, true),
                ("toolu_4", "Write", Outcome::Ran, true),
            ]
        );
        assert_eq!(calls[1].input, json!({"command": "cargo build"}));
    }

    #[test]
    fn only_the_latest_results_are_read_when_asked() {
        let calls = replayed(conversation().to_string().as_bytes(), Results::Latest).expect("a Messages request");
        let ids: Vec<_> = calls.iter().map(|call| (call.id.as_str(), call.latest)).collect();
        assert_eq!(ids, [("toolu_3", true), ("toolu_4", true)]);
    }

    #[test]
    fn a_result_joins_every_call_that_shares_its_id() {
        let body = json!({"messages": [
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_x", "name": "Read", "input": {"file_path": "/etc/passwd"}},
                {"type": "tool_use", "id": "toolu_x", "name": "Read", "input": {"file_path": "/tmp/ok"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "root:x"}]}]});
        let calls = replayed(body.to_string().as_bytes(), Results::All).expect("a Messages request");
        let paths: Vec<_> = calls.iter().map(|call| call.input["file_path"].as_str()).collect();
        assert_eq!(paths, [Some("/etc/passwd"), Some("/tmp/ok")]);
    }

    #[test]
    fn only_text_without_the_word_or_an_escape_is_certain_not_to_hold_it() {
        assert!(may_hold(br#"{"type":"tool_result"}"#, &TOOL_RESULT));
        assert!(may_hold(br#"{"type":"tool_\u0072esult"}"#, &TOOL_RESULT));
        assert!(!may_hold(br#"{"type":"text","text":"hi"}"#, &TOOL_RESULT));
        let escaped =
            br#"{"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"a","name":"Read","input":{}}]},
            {"role":"user","content":[{"type":"tool_\u0072esult","tool_use_id":"a","content":"x"}]}]}"#;
        assert_eq!(replayed(escaped, Results::Latest).map(|calls| calls.len()), Some(1));
    }

    #[test]
    fn a_batch_is_read_request_by_request() {
        let batch = json!({"requests": [
            {"custom_id": "a", "params": conversation()},
            {"custom_id": "b", "params": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}]});
        let calls = replayed_in_batch(batch.to_string().as_bytes()).expect("a batch");
        assert_eq!(calls.len(), 4);
        assert!(calls.iter().all(|call| !call.latest));
        assert_eq!(replayed_in_batch(conversation().to_string().as_bytes()), None);
    }

    #[test]
    fn the_paths_that_carry_a_conversation() {
        assert_eq!(Conversation::of("/v1/messages"), Some(Conversation::Message));
        assert_eq!(Conversation::of("/V1/Messages/count_tokens"), Some(Conversation::CountTokens));
        assert_eq!(Conversation::of("/v1/messages/batches"), Some(Conversation::Batch));
        assert_eq!(Conversation::of("/v1/models"), None);
    }

    #[test]
    fn bodies_that_are_not_messages_requests_read_as_none() {
        assert_eq!(replayed(b"not json", Results::All), None);
        assert_eq!(replayed(br#"{"messages": 3}"#, Results::All), None);
        assert_eq!(replayed(br#"{"model": "m", "messages": []}"#, Results::All), Some(vec![]));
    }

    #[test]
    fn escaped_strings_are_read_decoded() {
        let body = r#"{"messages": [
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t\u0031", "name": "B\u0061sh",
              "input": {"command": "cat /etc/p\u0061sswd"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "x"}]}]}"#;
        let calls = replayed(body.as_bytes(), Results::All).expect("a Messages request");
        assert_eq!(calls.len(), 1, "the escaped id joins the result to its call");
        assert_eq!((calls[0].name.as_str(), &calls[0].input), ("Bash", &json!({"command": "cat /etc/passwd"})));
    }
}
