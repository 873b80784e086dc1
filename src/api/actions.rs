//! The agent actions of one model request. Its response's tool calls are read as they stream (`actions::stream`),
//! each decided by the `actions` policy, counted and recorded the moment its input is complete; under a policy
//! that can deny, the response is held at each call until it is decided. Its own conversation's replayed calls
//! are read before it leaves: their outcomes are recorded, and a request carrying the result of a denied call is
//! refused, so a denied file's contents never reach the model.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::HeaderMap;
use serde_json::Value;

use crate::actions::history::{self, Conversation, Outcome, Results};
use crate::actions::rules::{Decision, Verdict};
use crate::actions::stream::{Call, Calls, Next, Unread};
use crate::actions::tools::{Action, Kind};
use crate::alerts::{ActionEvent, Event, Wants};
use crate::audit::{self, ActionRecord, OutcomeRecord};
use crate::config::Config;
use crate::request::door::Peer;
use crate::request::error::Error;
use crate::request::finish::Exchange;
use crate::shared::Shared;

/// Who made a request, and where: what every action record of it carries.
pub struct Context {
    shared: Arc<Shared>,
    config: Arc<Config>,
    peer: Arc<Peer>,
    request: Arc<str>,
    user: Option<Arc<str>>,
    teams: Arc<[Arc<str>]>,
    session: Option<Arc<str>>,
    model: Option<Arc<str>>,
    /// The policy can deny an action of these teams: calls are held until decided.
    hold: bool,
    /// Records written so far: the next record's number within the request.
    records: AtomicU32,
}

impl Context {
    /// The context of `exchange`, an identified request.
    pub fn new(shared: &Arc<Shared>, config: &Arc<Config>, peer: &Arc<Peer>, exchange: &Exchange) -> Self {
        let teams = exchange.teams();
        let hold = config.actions.policy.may_deny(&teams);
        Self {
            shared: shared.clone(),
            config: config.clone(),
            peer: peer.clone(),
            request: exchange.id.as_str().into(),
            user: exchange.principal.as_ref().map(|principal| principal.name.clone()),
            teams,
            session: exchange.session.clone(),
            model: exchange.model.as_deref().map(Arc::from),
            hold,
            records: AtomicU32::new(0),
        }
    }

    /// True when calls are held until decided (and a response over the bound cannot be let through unread).
    pub fn holds(&self) -> bool {
        self.hold
    }

    fn team(&self) -> Option<Arc<str>> {
        self.teams.first().cloned()
    }

    fn next_id(&self) -> String {
        let number = self.records.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{}.{number}", self.request)
    }

    /// The action of a call, as the input names it (the rules read paths and commands themselves).
    fn action(&self, name: &str, input: &Value) -> Action {
        self.config.actions.tools.action(name, input)
    }

    /// Decides one call of the response, counts and records it; a denied call under a holding policy ends the
    /// response with `denied`'s error event.
    fn decide_call(&self, call: Call, denied: &mut Option<Error>) -> Next {
        let input = call.input.clone().unwrap_or(Value::Null);
        let action = self.action(&call.name, &input);
        let mut decision = self.config.actions.policy.decide(&action, &self.teams);
        let error = call.unread.map(|unread| match unread {
            Unread::TooLarge => "its input passed actions.max_block_bytes and was not read",
            Unread::Malformed => "its input could not be read (not a JSON object, or the stream ended inside it)",
        });
        if call.unread.is_some() && self.hold && decision.verdict == Verdict::Allow {
            // What a call does cannot be known without its input: under a policy that can deny, it is denied.
            let rule = match call.unread {
                Some(Unread::TooLarge) => "actions.max_block_bytes",
                _ => "actions (unreadable tool input)",
            };
            decision = Decision { verdict: Verdict::Deny, alert: None, would_deny: false, rule: rule.into() };
        }
        let label = label(&decision);
        let team = self.team();
        self.shared.metrics.action(team.as_deref().unwrap_or("-"), &metric_action(&action), label);
        let record = ActionRecord {
            ts: audit::timestamp(SystemTime::now()),
            id: self.next_id(),
            kind: "action",
            listener: self.peer.listener.clone(),
            client: self.peer.address.to_string(),
            user: self.user.clone(),
            team,
            session: self.session.clone(),
            request: self.request.clone(),
            model: self.model.clone(),
            action: action.name(),
            tool: action.tool.clone(),
            target: action.canonical_target(),
            tool_use_id: call.id,
            decision: if decision.verdict == Verdict::Deny { "deny" } else { "allow" },
            rule: Some(decision.alert.clone().unwrap_or_else(|| decision.rule.clone())),
            alert: decision.alert.is_some(),
            would_deny: decision.would_deny,
            error: error.map(str::to_owned),
        };
        if self.shared.alerts.wants(Wants::ACTION) && (record.alert || record.would_deny || record.decision == "deny") {
            let verdict = match (record.decision, record.would_deny) {
                ("deny", _) => "deny",
                (_, true) => "would_deny",
                _ => "alert",
            };
            self.shared.alerts.send(Event::Action(Box::new(ActionEvent {
                id: record.id.clone(),
                at: self.shared.clock.now(),
                user: self.user.clone(),
                teams: self.teams.clone(),
                action: action.clone(),
                verdict,
                rule: record.rule.clone(),
            })));
        }
        self.shared.auditor.record_now(record);
        match (decision.verdict, self.hold) {
            (Verdict::Deny, true) => {
                let action = shown(&action);
                let error = Error::ActionDenied { action, rule: decision.rule };
                let event = Bytes::from(error.sse_event());
                denied.get_or_insert(error);
                Next::End(event)
            }
            _ => Next::Release,
        }
    }

    /// Decides the calls of a whole (non-streamed) response: the first denied one, if any, refuses it.
    pub fn decide_message(&self, body: &[u8]) -> Result<(), Error> {
        let calls = message_calls(body);
        let mut denied = None;
        for call in calls {
            let _ = self.decide_call(call, &mut denied);
        }
        denied.map_or(Ok(()), Err)
    }

    /// The request's own conversation, before it leaves: a result of a call the policy denies (it ran, or failed
    /// after running) refuses the request; for a Messages request, the outcome of each call whose result is new
    /// is recorded.
    pub fn check_replayed(&self, body: &[u8], conversation: Conversation) -> Result<(), Error> {
        if !self.hold && conversation != Conversation::Message {
            // Nothing to refuse, and outcomes are recorded from Messages requests only.
            return Ok(());
        }
        let replayed = match conversation {
            Conversation::Batch => history::replayed_in_batch(body),
            // Only a policy that may deny needs every result; recording needs the new ones.
            Conversation::Message | Conversation::CountTokens => {
                history::replayed(body, if self.hold { Results::All } else { Results::Latest })
            }
        };
        let Some(replayed) = replayed else {
            if self.hold {
                return Err(Error::BadRequest(
                    "the request's messages could not be read for the agent-action checks".to_owned(),
                ));
            }
            return Ok(());
        };
        let mut refusal = None;
        for call in replayed {
            let action = self.action(&call.name, &call.input);
            if call.latest && conversation == Conversation::Message {
                let record = OutcomeRecord {
                    ts: audit::timestamp(SystemTime::now()),
                    id: self.next_id(),
                    kind: "action_outcome",
                    user: self.user.clone(),
                    team: self.team(),
                    session: self.session.clone(),
                    request: self.request.clone(),
                    tool_use_id: call.id.clone(),
                    action: action.name(),
                    tool: action.tool.clone(),
                    target: action.canonical_target(),
                    outcome: call.outcome.as_str(),
                };
                self.shared.auditor.record_now(record);
            }
            if !self.hold || call.outcome == Outcome::Refused || refusal.is_some() {
                continue;
            }
            let decision = self.config.actions.policy.decide(&action, &self.teams);
            if decision.verdict == Verdict::Deny {
                refusal = Some(Error::ActionResultDenied { action: shown(&action), rule: decision.rule });
            }
        }
        refusal.map_or(Ok(()), Err)
    }
}

/// The calls of a whole message; a body that is not one (an error, a truncated body) has none.
fn message_calls(body: &[u8]) -> Vec<Call> {
    crate::actions::stream::calls_of_message(body).unwrap_or_default()
}

/// The metric's decision label.
fn label(decision: &Decision) -> &'static str {
    match decision.verdict {
        Verdict::Deny => "deny",
        Verdict::Allow if decision.would_deny => "would_deny",
        Verdict::Allow if decision.alert.is_some() => "alert",
        Verdict::Allow => "allow",
    }
}

/// The action as a refusal names it: `file:read:/etc/passwd`, the target normalised and cut at 200 characters.
fn shown(action: &Action) -> String {
    let text = action.canonical().to_string();
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The metric's action label: tools outside the table are one value, `tool:*`, so that a model cannot grow the
/// label set (their names are in the audit records).
fn metric_action(action: &Action) -> String {
    match action.kind {
        Kind::Tool => "tool:*".to_owned(),
        _ => action.name(),
    }
}

/// The tool calls of a response, read as it passes.
pub struct ResponseCalls {
    reader: Reader,
    context: Context,
    denied: Option<Error>,
}

enum Reader {
    /// An SSE response: held until decided when the policy can deny, else watched.
    Stream(Box<Calls>),
    /// A whole JSON message, watched: a copy up to `MAX_JSON_BODY` is read when it ends. (Under a policy that can
    /// deny, a JSON message is read whole before it is answered, by `Context::decide_message`.)
    Json { copy: Vec<u8>, over: bool },
}

impl ResponseCalls {
    /// Reads the calls of a response of this `content-type`.
    pub fn new(context: Context, content_type: Option<&str>) -> Self {
        let limit = usize::try_from(context.config.actions.max_block_bytes).unwrap_or(usize::MAX);
        let reader = if content_type.is_some_and(crate::llm::usage::is_event_stream) {
            Reader::Stream(Box::new(if context.hold { Calls::hold(limit) } else { Calls::watch(limit) }))
        } else {
            Reader::Json { copy: Vec::new(), over: false }
        };
        Self { reader, context, denied: None }
    }

    /// True when the bytes go through `feed`'s answer (held), not as they came.
    pub fn holds(&self) -> bool {
        matches!(self.reader, Reader::Stream(_)) && self.context.hold
    }

    /// The next chunk from the upstream; returns what the client may have now (nothing when watching).
    pub fn feed(&mut self, chunk: &[u8]) -> Bytes {
        let Self { reader, context, denied } = self;
        match reader {
            Reader::Stream(calls) => calls.feed(chunk, &mut |call| context.decide_call(call, denied)),
            Reader::Json { copy, over } => {
                if !*over && copy.len() + chunk.len() <= crate::llm::usage::MAX_JSON_BODY {
                    copy.extend_from_slice(chunk);
                } else {
                    *over = true;
                    *copy = Vec::new();
                }
                Bytes::new()
            }
        }
    }

    /// The upstream's body ended: what is still held (or the error that replaces it).
    pub fn finish(&mut self) -> Bytes {
        let Self { reader, context, denied } = self;
        match reader {
            Reader::Stream(calls) => calls.finish(&mut |call| context.decide_call(call, denied)),
            Reader::Json { copy, .. } => {
                // Watching only: a message that cannot hold a tool call is not parsed a second time.
                let calls = if history::may_hold(copy, &history::TOOL_USE) { message_calls(copy) } else { Vec::new() };
                for call in calls {
                    let _ = context.decide_call(call, denied);
                }
                *copy = Vec::new();
                Bytes::new()
            }
        }
    }

    /// A denied call ended what the client sees.
    pub fn ended(&self) -> bool {
        match &self.reader {
            Reader::Stream(calls) => calls.ended(),
            Reader::Json { .. } => false,
        }
    }

    /// The denial that ended the response, once.
    pub fn take_denied(&mut self) -> Option<Error> {
        self.denied.take()
    }
}

/// The session a request names (`X-Claude-Code-Session-Id`), when it is a sane token: at most 128 visible
/// ASCII characters.
pub fn session(headers: &HeaderMap) -> Option<Arc<str>> {
    let value = headers.get("x-claude-code-session-id")?.to_str().ok()?.trim();
    let sane = !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic());
    sane.then(|| Arc::from(value))
}

/// The client's first User-Agent product token (`claude-cli/2.1.332`), at most 64 characters.
pub fn user_agent(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(http::header::USER_AGENT)?.to_str().ok()?;
    let token = value.split_whitespace().next()?;
    let token: String = token.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_user_agents_are_read_only_when_sane() {
        let mut headers = HeaderMap::new();
        headers.insert("x-claude-code-session-id", "5e55-10n".parse().expect("a header value"));
        headers.insert("user-agent", "claude-cli/2.1.332 (external, cli)".parse().expect("a header value"));
        assert_eq!(session(&headers).as_deref(), Some("5e55-10n"));
        assert_eq!(user_agent(&headers).as_deref(), Some("claude-cli/2.1.332"));
        headers.insert("x-claude-code-session-id", "a b".parse().expect("a header value"));
        assert_eq!(session(&headers), None);
        headers.insert("x-claude-code-session-id", "x".repeat(129).parse().expect("a header value"));
        assert_eq!(session(&headers), None);
    }
}
