//! The one place where a failure becomes a status code, a body, headers and a metric reason, in either wire shape:
//! the forward proxy's `{"error":{"type":…,"message":…,"rule":…}}`, or the Anthropic error JSON that Claude Code
//! shows its user verbatim (`{"type":"error","error":{"type":…,"message":…},"request_id":…}`; an agent-action
//! refusal adds `error.details.error_code`).
//!
//! Every tollgate-made answer carries `x-tollgate-request-id` and, on a deny, `x-tollgate-rule` (DESIGN.md's
//! error contract).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::identity::AuthError;
use crate::limits::budget::BudgetRefusal;
use crate::limits::{Refusal, Scope, StateError};
use crate::policy::DenyReason;

/// The realm of the Basic challenge sent with 407.
pub const REALM: &str = "tollgate";

/// Everything that can end a request (or tunnel) before or instead of the upstream's answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadRequest(String),
    #[error("request head not received within {0:?}")]
    HeadTimeout(Duration),
    #[error("request body not received within {0:?} (server.body_read_timeout)")]
    BodyTimeout(Duration),
    #[error("request target longer than {0} bytes")]
    UriTooLong(usize),
    #[error("request head larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("{0}")]
    Auth(AuthError),
    #[error("{target} is denied by {rule}{}", detail(.reason))]
    Denied { target: String, rule: Arc<str>, reason: DenyReason },
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("resolving {host} timed out")]
    ResolveTimeout { host: String },
    #[error("cannot connect to {target}: {source}")]
    Connect { target: String, source: io::Error },
    #[error("connecting to {target} timed out")]
    ConnectTimeout { target: String },
    #[error("upstream {target} sent an invalid response: {problem}")]
    UpstreamProtocol { target: String, problem: String },
    #[error("TLS to upstream {target} failed: {reason}")]
    UpstreamTls { target: String, reason: String },
    #[error("parent proxy {parent} refused: {answer}")]
    ParentRefused { parent: String, answer: String },
    #[error("upstream {target} did not answer in time")]
    UpstreamTimeout { target: String },
    #[error("upstream {target} closed the connection: {source}")]
    UpstreamIo { target: String, source: io::Error },
    #[error("rate limit of {per_minute} requests per minute for this {} reached; retry in {retry_after_secs}s", .scope.label())]
    RateLimited { scope: Scope, per_minute: u32, retry_after_secs: u64 },
    #[error("at most {max} open tunnels and requests for this {}; close one and retry", .scope.label())]
    ConcurrencyLimited { scope: Scope, max: u32 },
    #[error("{0}; requests are refused (state.on_error: deny)")]
    StateUnavailable(StateError),
    #[error("too many open connections (server.max_connections is {0})")]
    ConnectionLimit(usize),
    #[error("tollgate is holding {0} bytes of request bodies (server.max_buffered_body_bytes); retry shortly")]
    BuffersFull(u64),
    #[error("client connection failed: {0}")]
    ClientClosed(io::Error),
    #[error("the audit log ({sink}) cannot be written; requests are refused (audit.on_failure: block)")]
    AuditUnavailable { sink: &'static str },
    #[error("path {path} is not allowed through tollgate ({rule})")]
    PathDenied { path: String, rule: Arc<str> },
    #[error("model {model:?} is not allowed for your team{} ({rule}); use one of: {allowed}", team_phrase(.team))]
    ModelDenied { model: String, team: Option<Arc<str>>, rule: Arc<str>, allowed: String },
    #[error("the request names no model, and your team may only use: {allowed} ({rule})")]
    ModelMissing { rule: Arc<str>, allowed: String },
    #[error("request blocked by tollgate DLP: it contains data matching the {detector} detector ({rule}); remove it and retry")]
    DlpBlocked { detector: Arc<str>, rule: Arc<str> },
    #[error("{}", budget_message(.0))]
    BudgetSpent(BudgetRefusal),
    #[error("the agent action {action} is denied ({rule}); ask your administrator if you need it")]
    ActionDenied { action: String, rule: Arc<str> },
    #[error(
        "this conversation carries the result of {action}, which is denied ({rule}): tollgate will not send it to \
             the model; rewind the conversation to before that call (/rewind) or start a new one (/clear)"
    )]
    ActionResultDenied { action: String, rule: Arc<str> },
    #[error("the model's response could not be checked for agent actions: {0}")]
    ResponseUnchecked(String),
    #[error("request body larger than {0} bytes (intercept.max_body)")]
    BodyTooLarge(u64),
    #[error("a request body with Content-Encoding {0} cannot be checked (model, DLP, budget); send it uncompressed")]
    CompressedBody(String),
    #[error("this connection is for {tunnel}; a request for {host} must open its own tunnel")]
    Misdirected { host: String, tunnel: String },
    #[error("no upstream serves this request: add a routing rule for listener {listener}")]
    NoRoute { listener: Arc<str> },
    #[error("cannot intercept {host}: {reason}")]
    Intercept { host: String, reason: String },
    #[error("{0}")]
    SniMismatch(String),
    #[error("closed: a reload or deprovisioning revoked this tunnel")]
    Revoked,
}

/// The wire shape of a tollgate-made answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The forward proxy's JSON; missing or bad credentials are a 407 with a Basic challenge.
    Proxy,
    /// The Anthropic error JSON (intercepted tunnels, gateway listeners); missing or bad credentials are a 401.
    Api,
    /// The Anthropic error JSON of a model-API request sent to the proxy in absolute form: its credentials are the
    /// proxy's, so their failure is a 407 with a Basic challenge.
    ProxiedApi,
}

/// One tollgate-made answer, before it is written as HTTP/1.1 bytes or an `http::Response`.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

fn team_phrase(team: &Option<Arc<str>>) -> String {
    team.as_ref().map(|t| format!(" ({t})")).unwrap_or_default()
}

fn budget_message(refusal: &BudgetRefusal) -> String {
    let whose = match (refusal.scope, &refusal.team) {
        ("user_daily", _) => "your".to_owned(),
        (_, Some(team)) => format!("team {team}'s"),
        (_, None) => "the organisation's".to_owned(),
    };
    let period = if refusal.scope.ends_with("monthly") { "monthly" } else { "daily" };
    let left = (refusal.limit_micro_usd - refusal.spent_micro_usd).max(0) as f64 / 1e6;
    let request = match refusal.request_micro_usd {
        Some(worst) if refusal.spent_micro_usd < refusal.limit_micro_usd => format!(
            "this request could cost up to ${:.2} (its input and max_tokens), more than the ${left:.2} left of ",
            worst as f64 / 1e6
        ),
        _ => String::new(),
    };
    let state = if request.is_empty() { " is spent" } else { "" };
    format!(
        "{request}{whose} {period} budget of ${:.2}{state} (${:.2} used, budget.{}); it resets in {}",
        refusal.limit_micro_usd as f64 / 1e6,
        refusal.spent_micro_usd as f64 / 1e6,
        refusal.scope,
        humantime::format_duration(refusal.retry_after)
    )
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Rate { scope, per_minute, retry_after_secs } => {
                Error::RateLimited { scope, per_minute, retry_after_secs }
            }
            Refusal::Concurrency { scope, max } => Error::ConcurrencyLimited { scope, max },
        }
    }
}

fn detail(reason: &DenyReason) -> String {
    match reason {
        DenyReason::PrivateAddress(class) => format!(" (the address is {class})"),
        DenyReason::Port => " (port not allowed)".to_owned(),
        DenyReason::SelfConnection => " (that is tollgate itself)".to_owned(),
        DenyReason::Hours => " (outside the team's hours)".to_owned(),
        DenyReason::DenyRule | DenyReason::Default => String::new(),
    }
}

impl Error {
    /// A copy of a connect failure (they carry `io::Error`, which does not clone), for the model client, whose
    /// connector's error is only lent back; anything else becomes an upstream protocol error.
    pub fn duplicate(&self) -> Error {
        let io = |source: &io::Error| io::Error::new(source.kind(), source.to_string());
        match self {
            Error::Denied { target, rule, reason } => {
                Error::Denied { target: target.clone(), rule: rule.clone(), reason: *reason }
            }
            Error::Resolve { host, source } => Error::Resolve { host: host.clone(), source: io(source) },
            Error::ResolveTimeout { host } => Error::ResolveTimeout { host: host.clone() },
            Error::Connect { target, source } => Error::Connect { target: target.clone(), source: io(source) },
            Error::ConnectTimeout { target } => Error::ConnectTimeout { target: target.clone() },
            Error::UpstreamTls { target, reason } => {
                Error::UpstreamTls { target: target.clone(), reason: reason.clone() }
            }
            Error::ParentRefused { parent, answer } => {
                Error::ParentRefused { parent: parent.clone(), answer: answer.clone() }
            }
            Error::UpstreamTimeout { target } => Error::UpstreamTimeout { target: target.clone() },
            Error::UpstreamIo { target, source } => Error::UpstreamIo { target: target.clone(), source: io(source) },
            other => Error::UpstreamProtocol { target: String::new(), problem: other.to_string() },
        }
    }

    /// The HTTP status in `shape`.
    pub fn status(&self, shape: Shape) -> u16 {
        match self {
            Error::BadRequest(_) | Error::ClientClosed(_) => 400,
            Error::HeadTimeout(_) | Error::BodyTimeout(_) => 408,
            Error::UriTooLong(_) => 414,
            Error::HeadTooLarge(_) => 431,
            Error::Auth(AuthError::Throttled { .. }) => 429,
            Error::Auth(AuthError::Busy) => 503,
            Error::Auth(_) if shape == Shape::Api => 401,
            Error::Auth(_) => 407,
            Error::Denied { .. } | Error::SniMismatch(_) | Error::Revoked => 403,
            Error::Resolve { .. }
            | Error::Connect { .. }
            | Error::UpstreamProtocol { .. }
            | Error::UpstreamIo { .. }
            | Error::UpstreamTls { .. }
            | Error::ParentRefused { .. } => 502,
            Error::ResolveTimeout { .. } | Error::ConnectTimeout { .. } | Error::UpstreamTimeout { .. } => 504,
            Error::AuditUnavailable { .. }
            | Error::ConnectionLimit(_)
            | Error::StateUnavailable(_)
            | Error::BuffersFull(_) => 503,
            Error::RateLimited { .. } | Error::ConcurrencyLimited { .. } => 429,
            Error::PathDenied { .. }
            | Error::ModelDenied { .. }
            | Error::DlpBlocked { .. }
            | Error::ActionDenied { .. }
            | Error::ActionResultDenied { .. } => 403,
            Error::ResponseUnchecked(_) => 502,
            Error::ModelMissing { .. } => 400,
            Error::BudgetSpent(_) => 429,
            Error::BodyTooLarge(_) => 413,
            Error::CompressedBody(_) => 415,
            Error::Misdirected { .. } => 421,
            Error::NoRoute { .. } | Error::Intercept { .. } => 502,
        }
    }

    /// The `reason` label of metrics and the forward proxy's `error.type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad_request",
            Error::ClientClosed(_) => "client_closed",
            Error::HeadTimeout(_) => "header_timeout",
            Error::BodyTimeout(_) => "body_timeout",
            Error::UriTooLong(_) => "uri_too_long",
            Error::HeadTooLarge(_) => "headers_too_large",
            Error::Auth(AuthError::Throttled { .. }) => "auth_throttled",
            Error::Auth(AuthError::Busy) => "auth_busy",
            Error::Auth(_) => "proxy_auth_required",
            Error::Denied { reason, .. } => reason.label(),
            Error::Resolve { .. } => "dns_error",
            Error::ResolveTimeout { .. } => "dns_timeout",
            Error::Connect { .. } => "connect_error",
            Error::ConnectTimeout { .. } => "connect_timeout",
            Error::UpstreamProtocol { .. } => "upstream_protocol",
            Error::UpstreamTimeout { .. } => "upstream_timeout",
            Error::UpstreamIo { .. } => "upstream_closed",
            Error::UpstreamTls { .. } => "upstream_tls",
            Error::ParentRefused { .. } => "parent_proxy_refused",
            Error::AuditUnavailable { .. } => "audit_unavailable",
            Error::ConnectionLimit(_) => "connection_limit",
            Error::BuffersFull(_) => "buffers_full",
            Error::RateLimited { .. } => "rate_limited",
            Error::ConcurrencyLimited { .. } => "concurrency_limited",
            Error::StateUnavailable(_) => "state_unavailable",
            Error::PathDenied { .. } => "path_denied",
            Error::ModelDenied { .. } | Error::ModelMissing { .. } => "model_denied",
            Error::DlpBlocked { .. } => "dlp_blocked",
            Error::ActionDenied { .. } | Error::ActionResultDenied { .. } => "action_denied",
            Error::ResponseUnchecked(_) => "response_unchecked",
            Error::BudgetSpent(_) => "budget_spent",
            Error::BodyTooLarge(_) => "request_too_large",
            Error::CompressedBody(_) => "compressed_body",
            Error::Misdirected { .. } => "misdirected",
            Error::NoRoute { .. } => "no_route",
            Error::Intercept { .. } => "intercept_failed",
            Error::SniMismatch(_) => "sni_mismatch",
            Error::Revoked => "revoked",
        }
    }

    /// The rule that denied, if this is a deny.
    pub fn rule(&self) -> Option<Arc<str>> {
        match self {
            Error::Denied { rule, .. } => Some(rule.clone()),
            Error::RateLimited { scope, .. } | Error::ConcurrencyLimited { scope, .. } => {
                Some(format!("limits.{}", scope.label()).into())
            }
            Error::PathDenied { rule, .. }
            | Error::ModelDenied { rule, .. }
            | Error::ModelMissing { rule, .. }
            | Error::DlpBlocked { rule, .. }
            | Error::ActionDenied { rule, .. }
            | Error::ActionResultDenied { rule, .. } => Some(rule.clone()),
            Error::BudgetSpent(refusal) => Some(format!("budget.{}", refusal.scope).into()),
            Error::SniMismatch(_) => Some("policy.require_sni_match".into()),
            _ => None,
        }
    }

    /// `allow`/`deny`/`error` for metrics and audit: a policy or identity refusal is a deny.
    pub fn decision(&self) -> &'static str {
        match self {
            Error::Auth(AuthError::Busy) => "error",
            Error::Denied { .. }
            | Error::Auth(_)
            | Error::RateLimited { .. }
            | Error::ConcurrencyLimited { .. }
            | Error::PathDenied { .. }
            | Error::ModelDenied { .. }
            | Error::ModelMissing { .. }
            | Error::DlpBlocked { .. }
            | Error::ActionDenied { .. }
            | Error::ActionResultDenied { .. }
            | Error::BudgetSpent(_)
            | Error::SniMismatch(_)
            | Error::Revoked => "deny",
            _ => "error",
        }
    }

    /// The kind label of `tollgate_upstream_errors_total`, for upstream failures.
    pub fn upstream_kind(&self) -> Option<&'static str> {
        match self {
            Error::Resolve { .. } | Error::ResolveTimeout { .. } => Some("dns"),
            Error::Connect { .. } => Some("connect"),
            Error::ConnectTimeout { .. } | Error::UpstreamTimeout { .. } => Some("timeout"),
            Error::UpstreamProtocol { .. } | Error::UpstreamIo { .. } => Some("protocol"),
            Error::UpstreamTls { .. } => Some("tls"),
            Error::ParentRefused { .. } => Some("parent_proxy"),
            _ => None,
        }
    }

    /// `retry-after` seconds, when waiting helps (or, for a spent budget, when it resets).
    fn retry_after(&self) -> Option<u64> {
        match self {
            Error::Auth(AuthError::Throttled { retry_after_secs }) | Error::RateLimited { retry_after_secs, .. } => {
                Some(*retry_after_secs)
            }
            Error::ConcurrencyLimited { .. } | Error::Auth(AuthError::Busy) | Error::BuffersFull(_) => Some(1),
            Error::BudgetSpent(refusal) => Some(refusal.retry_after.as_secs().max(1)),
            _ => None,
        }
    }

    /// The answer in `shape`: status, headers and body.
    pub fn answer(&self, shape: Shape, request_id: &str) -> Answer {
        let status = self.status(shape);
        let rule = self.rule();
        let body = match shape {
            Shape::Proxy => serde_json::json!({
                "error": { "type": self.kind(), "message": self.to_string(), "rule": rule.as_deref() }
            }),
            Shape::Api | Shape::ProxiedApi => serde_json::json!({
                "type": "error",
                "error": self.api_error(shape),
                "request_id": request_id,
            }),
        }
        .to_string();
        let mut headers = vec![("content-type", "application/json".to_owned())];
        headers.push(("x-tollgate-request-id", request_id.to_owned()));
        if let Some(rule) = rule {
            headers.push(("x-tollgate-rule", rule.to_string()));
        }
        if let Some(seconds) = self.retry_after() {
            headers.push(("retry-after", seconds.to_string()));
        }
        if status == 407 {
            headers.push(("proxy-authenticate", format!("Basic realm=\"{REALM}\"")));
        }
        if matches!(self, Error::BudgetSpent(_)) && shape != Shape::Proxy {
            headers.push(("x-should-retry", "false".to_owned()));
        }
        Answer { status, headers, body }
    }

    /// The complete HTTP/1.1 answer in `shape`, with `connection: close` when `close` is set.
    pub fn response(&self, shape: Shape, request_id: &str, close: bool) -> Vec<u8> {
        let answer = self.answer(shape, request_id);
        let mut head = format!("HTTP/1.1 {} {}\r\n", answer.status, reason_phrase(answer.status));
        for (name, value) in &answer.headers {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str(&format!("content-length: {}\r\n", answer.body.len()));
        if close {
            head.push_str("connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut response = head.into_bytes();
        response.extend_from_slice(answer.body.as_bytes());
        response
    }

    /// The answer in `shape` as an `http::Response`, for the requests served through hyper.
    pub fn http_response(&self, shape: Shape, request_id: &str) -> http::Response<bytes::Bytes> {
        let answer = self.answer(shape, request_id);
        let mut response = http::Response::new(bytes::Bytes::from(answer.body));
        *response.status_mut() =
            http::StatusCode::from_u16(answer.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        for (name, value) in answer.headers {
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        response
    }

    /// The error as an SSE `event: error` in the Anthropic shape, ending a stream already answered with 200.
    pub fn sse_event(&self) -> String {
        let data = serde_json::json!({"type": "error", "error": self.api_error(Shape::Api)});
        format!("event: error\ndata: {data}\n\n")
    }

    /// The `error` object of the Anthropic shape: `type`, `message` and, for a refusal that must not be sent
    /// again, `details.error_code`.
    fn api_error(&self, shape: Shape) -> serde_json::Value {
        let mut error = serde_json::json!({"type": self.anthropic_type(), "message": self.api_message(shape)});
        if let Some(code) = self.error_code() {
            error["details"] = serde_json::json!({ "error_code": code });
        }
        error
    }

    /// `error.details.error_code` of an agent-action or DLP refusal: `dlp_request_denied`, the code of an
    /// organisation's refusal that the same request will meet again. Claude Code shows such an error as it is, where any other
    /// 401 or 403 reads "Failed to authenticate"; it does not send a refused stream again without streaming (the
    /// model would be asked, and billed, twice); and an interactive session suggests /rewind or /clear.
    fn error_code(&self) -> Option<&'static str> {
        match self {
            Error::ActionDenied { .. } | Error::ActionResultDenied { .. } | Error::DlpBlocked { .. } => {
                Some("dlp_request_denied")
            }
            _ => None,
        }
    }

    /// The `error.type` of the Anthropic error shape.
    fn anthropic_type(&self) -> &'static str {
        match self {
            Error::Auth(AuthError::Throttled { .. }) | Error::RateLimited { .. } => "rate_limit_error",
            Error::ConcurrencyLimited { .. } => "rate_limit_error",
            Error::Auth(AuthError::Busy) | Error::BuffersFull(_) => "overloaded_error",
            Error::Auth(_) => "authentication_error",
            Error::BudgetSpent(_) => "billing_error",
            Error::BodyTooLarge(_) => "request_too_large",
            _ => match self.status(Shape::Api) {
                400 | 408 | 414 | 415 | 421 | 431 => "invalid_request_error",
                403 => "permission_error",
                504 => "timeout_error",
                _ => "api_error",
            },
        }
    }

    /// The message a developer reads: what happened, the rule, and what to do. Missing credentials are named by
    /// the door: a request sent through the proxy (`ProxiedApi`) proves itself to the proxy.
    fn api_message(&self, shape: Shape) -> String {
        match self {
            Error::Auth(AuthError::Missing | AuthError::UnsupportedScheme) if shape == Shape::ProxiedApi => {
                "tollgate: proxy authentication required: send Proxy-Authorization: Basic <base64 of USER:PASSWORD> (or Bearer <jwt> with auth.jwt)"
                    .to_owned()
            }
            Error::Auth(AuthError::Missing) => {
                "tollgate: authentication required: send Authorization: Bearer <token> or x-api-key: USER:PASSWORD".to_owned()
            }
            Error::Auth(AuthError::Rejected) => "tollgate: invalid credentials".to_owned(),
            Error::Auth(AuthError::UnsupportedScheme) => {
                "tollgate: unsupported Authorization scheme: send Authorization: Bearer <jwt> (with auth.jwt) or x-api-key"
                    .to_owned()
            }
            other => format!("tollgate: {other}"),
        }
    }
}

/// Reason phrases for the statuses tollgate itself sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action_denied() -> Error {
        Error::ActionDenied {
            action: "bash:run:curl http://x".to_owned(),
            rule: "actions.deny[0] bash:run:curl *".into(),
        }
    }

    fn result_denied() -> Error {
        Error::ActionResultDenied {
            action: "file:read:/repo/secrets/token".to_owned(),
            rule: "actions.deny[1] file:read:**/secrets/**".into(),
        }
    }

    /// The `data` of an SSE `event: error`, parsed.
    fn event_data(event: &str) -> serde_json::Value {
        let data = event.strip_prefix("event: error\ndata: ").and_then(|rest| rest.strip_suffix("\n\n"));
        serde_json::from_str(data.unwrap_or_else(|| panic!("one SSE error event: {event:?}"))).expect("JSON data")
    }

    /// A tool call refused in a stream ends it with a permission_error that carries the code of a refusal the
    /// same request meets again, so a client does not resend it without streaming.
    #[test]
    fn a_refused_call_ends_a_stream_with_an_error_the_client_does_not_resend() {
        let data = event_data(&action_denied().sse_event());
        assert_eq!(
            data,
            serde_json::json!({"type": "error", "error": {
                "type": "permission_error",
                "message": "tollgate: the agent action bash:run:curl http://x is denied (actions.deny[0] bash:run:curl *); ask your administrator if you need it",
                "details": {"error_code": "dlp_request_denied"},
            }})
        );
    }

    /// Both action refusals answered whole are 403 permission_error with the rule, the request id and the code.
    #[test]
    fn refused_actions_answered_whole_carry_the_error_code() {
        for (error, rule) in [
            (action_denied(), "actions.deny[0] bash:run:curl *"),
            (result_denied(), "actions.deny[1] file:read:**/secrets/**"),
        ] {
            let answer = error.answer(Shape::Api, "5f1c2a90");
            assert_eq!(answer.status, 403);
            assert!(answer.headers.contains(&("x-tollgate-rule", rule.to_owned())), "{answer:?}");
            let body: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON body");
            assert_eq!(body["type"], "error");
            assert_eq!(body["request_id"], "5f1c2a90");
            assert_eq!(body["error"]["type"], "permission_error");
            assert_eq!(body["error"]["details"], serde_json::json!({"error_code": "dlp_request_denied"}));
            assert_eq!(body["error"]["message"], format!("tollgate: {error}"));
        }
    }

    /// Other refusals keep the plain shape: a model, path or DLP deny is no agent action.
    #[test]
    fn other_refusals_have_no_error_code() {
        let denied = Error::PathDenied { path: "/v1/files".to_owned(), rule: "intercept.paths.deny[0]".into() };
        let body: serde_json::Value = serde_json::from_str(&denied.answer(Shape::Api, "1").body).expect("JSON");
        assert_eq!(body["error"].as_object().map(|error| error.len()), Some(2), "{body}");
        assert!(event_data(&denied.sse_event())["error"].get("details").is_none());
    }
}
