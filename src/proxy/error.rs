//! The one place where a failure becomes a status code, a JSON body, headers and a metric reason.
//!
//! Forward-proxy errors are `{"error":{"type":…,"message":…,"rule":…}}` with `x-tollgate-request-id` and, on a
//! deny, `x-tollgate-rule` (DESIGN.md's error contract).

use std::io;
use std::sync::Arc;

use crate::identity::{AuthError, Directory};
use crate::intercept::ca::MintError;
use crate::limits::budget::BudgetRefusal;
use crate::limits::{Refusal, Scope, StateError};
use crate::policy::DenyReason;

/// Everything that can end a request before or instead of the upstream's answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadRequest(String),
    #[error("request head not received within {0:?}")]
    HeadTimeout(std::time::Duration),
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
    #[error("client connection failed: {0}")]
    ClientClosed(io::Error),
    #[error("the audit log cannot be written; requests are refused (audit.on_failure: block)")]
    AuditUnavailable,
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
    #[error("request body larger than {0} bytes (intercept.max_body)")]
    BodyTooLarge(u64),
    #[error("a request body with Content-Encoding {0} cannot be checked (model, DLP, budget); send it uncompressed")]
    CompressedBody(String),
    #[error("this connection is for {tunnel}; a request for {host} must open its own tunnel")]
    Misdirected { host: String, tunnel: String },
    #[error("no upstream serves this request: add a routing rule for listener {listener}")]
    NoRoute { listener: Arc<str> },
    #[error("cannot intercept {0}")]
    Intercept(MintError),
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
    format!(
        "{whose} {period} budget of ${:.2} is spent (${:.2} used, budget.{}); it resets in {}",
        refusal.limit_micro_usd as f64 / 1e6,
        refusal.spent_micro_usd as f64 / 1e6,
        refusal.scope,
        humantime::format_duration(refusal.retry_after)
    )
}

impl From<Refusal> for ProxyError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Rate { scope, per_minute, retry_after_secs } => {
                ProxyError::RateLimited { scope, per_minute, retry_after_secs }
            }
            Refusal::Concurrency { scope, max } => ProxyError::ConcurrencyLimited { scope, max },
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

impl ProxyError {
    /// A copy of a connect failure (they carry `io::Error`, which does not clone), for the model client, whose
    /// connector's error is only lent back; anything else becomes an upstream protocol error.
    pub fn duplicate(&self) -> ProxyError {
        let io = |source: &io::Error| io::Error::new(source.kind(), source.to_string());
        match self {
            ProxyError::Denied { target, rule, reason } => {
                ProxyError::Denied { target: target.clone(), rule: rule.clone(), reason: *reason }
            }
            ProxyError::Resolve { host, source } => ProxyError::Resolve { host: host.clone(), source: io(source) },
            ProxyError::ResolveTimeout { host } => ProxyError::ResolveTimeout { host: host.clone() },
            ProxyError::Connect { target, source } => {
                ProxyError::Connect { target: target.clone(), source: io(source) }
            }
            ProxyError::ConnectTimeout { target } => ProxyError::ConnectTimeout { target: target.clone() },
            ProxyError::UpstreamTls { target, reason } => {
                ProxyError::UpstreamTls { target: target.clone(), reason: reason.clone() }
            }
            ProxyError::ParentRefused { parent, answer } => {
                ProxyError::ParentRefused { parent: parent.clone(), answer: answer.clone() }
            }
            ProxyError::UpstreamTimeout { target } => ProxyError::UpstreamTimeout { target: target.clone() },
            ProxyError::UpstreamIo { target, source } => {
                ProxyError::UpstreamIo { target: target.clone(), source: io(source) }
            }
            other => ProxyError::UpstreamProtocol { target: String::new(), problem: other.to_string() },
        }
    }

    /// HTTP status of the response.
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::BadRequest(_) | ProxyError::ClientClosed(_) => 400,
            ProxyError::HeadTimeout(_) => 408,
            ProxyError::UriTooLong(_) => 414,
            ProxyError::HeadTooLarge(_) => 431,
            ProxyError::Auth(AuthError::Throttled { .. }) => 429,
            ProxyError::Auth(_) => 407,
            ProxyError::Denied { .. } => 403,
            ProxyError::Resolve { .. }
            | ProxyError::Connect { .. }
            | ProxyError::UpstreamProtocol { .. }
            | ProxyError::UpstreamIo { .. }
            | ProxyError::UpstreamTls { .. }
            | ProxyError::ParentRefused { .. } => 502,
            ProxyError::ResolveTimeout { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::UpstreamTimeout { .. } => 504,
            ProxyError::AuditUnavailable | ProxyError::ConnectionLimit(_) | ProxyError::StateUnavailable(_) => 503,
            ProxyError::RateLimited { .. } | ProxyError::ConcurrencyLimited { .. } => 429,
            ProxyError::PathDenied { .. } | ProxyError::ModelDenied { .. } | ProxyError::DlpBlocked { .. } => 403,
            ProxyError::ModelMissing { .. } => 400,
            ProxyError::BudgetSpent(_) => 429,
            ProxyError::BodyTooLarge(_) => 413,
            ProxyError::CompressedBody(_) => 415,
            ProxyError::Misdirected { .. } => 421,
            ProxyError::NoRoute { .. } | ProxyError::Intercept(_) => 502,
        }
    }

    /// `error.type` in the body and the `reason` label of metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::ClientClosed(_) => "client_closed",
            ProxyError::HeadTimeout(_) => "header_timeout",
            ProxyError::UriTooLong(_) => "uri_too_long",
            ProxyError::HeadTooLarge(_) => "headers_too_large",
            ProxyError::Auth(AuthError::Throttled { .. }) => "auth_throttled",
            ProxyError::Auth(_) => "proxy_auth_required",
            ProxyError::Denied { reason, .. } => reason.label(),
            ProxyError::Resolve { .. } => "dns_error",
            ProxyError::ResolveTimeout { .. } => "dns_timeout",
            ProxyError::Connect { .. } => "connect_error",
            ProxyError::ConnectTimeout { .. } => "connect_timeout",
            ProxyError::UpstreamProtocol { .. } => "upstream_protocol",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::UpstreamIo { .. } => "upstream_closed",
            ProxyError::UpstreamTls { .. } => "upstream_tls",
            ProxyError::ParentRefused { .. } => "parent_proxy_refused",
            ProxyError::AuditUnavailable => "audit_unavailable",
            ProxyError::ConnectionLimit(_) => "connection_limit",
            ProxyError::RateLimited { .. } => "rate_limited",
            ProxyError::ConcurrencyLimited { .. } => "concurrency_limited",
            ProxyError::StateUnavailable(_) => "state_unavailable",
            ProxyError::PathDenied { .. } => "path_denied",
            ProxyError::ModelDenied { .. } | ProxyError::ModelMissing { .. } => "model_denied",
            ProxyError::DlpBlocked { .. } => "dlp_blocked",
            ProxyError::BudgetSpent(_) => "budget_spent",
            ProxyError::BodyTooLarge(_) => "request_too_large",
            ProxyError::CompressedBody(_) => "compressed_body",
            ProxyError::Misdirected { .. } => "misdirected",
            ProxyError::NoRoute { .. } => "no_route",
            ProxyError::Intercept(_) => "intercept_failed",
        }
    }

    /// The rule that denied, if this is a deny.
    pub fn rule(&self) -> Option<Arc<str>> {
        match self {
            ProxyError::Denied { rule, .. } => Some(rule.clone()),
            ProxyError::RateLimited { scope, .. } | ProxyError::ConcurrencyLimited { scope, .. } => {
                Some(format!("limits.{}", scope.label()).into())
            }
            ProxyError::PathDenied { rule, .. }
            | ProxyError::ModelDenied { rule, .. }
            | ProxyError::ModelMissing { rule, .. }
            | ProxyError::DlpBlocked { rule, .. } => Some(rule.clone()),
            ProxyError::BudgetSpent(refusal) => Some(format!("budget.{}", refusal.scope).into()),
            _ => None,
        }
    }

    /// `allow`/`deny`/`error` for metrics and audit: a policy or identity refusal is a deny.
    pub fn decision(&self) -> &'static str {
        match self {
            ProxyError::Denied { .. }
            | ProxyError::Auth(_)
            | ProxyError::RateLimited { .. }
            | ProxyError::ConcurrencyLimited { .. }
            | ProxyError::PathDenied { .. }
            | ProxyError::ModelDenied { .. }
            | ProxyError::ModelMissing { .. }
            | ProxyError::DlpBlocked { .. }
            | ProxyError::BudgetSpent(_) => "deny",
            _ => "error",
        }
    }

    /// The kind label of `tollgate_upstream_errors_total`, for upstream failures.
    pub fn upstream_kind(&self) -> Option<&'static str> {
        match self {
            ProxyError::Resolve { .. } | ProxyError::ResolveTimeout { .. } => Some("dns"),
            ProxyError::Connect { .. } => Some("connect"),
            ProxyError::ConnectTimeout { .. } | ProxyError::UpstreamTimeout { .. } => Some("timeout"),
            ProxyError::UpstreamProtocol { .. } | ProxyError::UpstreamIo { .. } => Some("protocol"),
            ProxyError::UpstreamTls { .. } => Some("tls"),
            ProxyError::ParentRefused { .. } => Some("parent_proxy"),
            _ => None,
        }
    }

    /// The complete HTTP/1.1 response, with `Connection: close` when `close` is set.
    pub fn response(&self, request_id: &str, close: bool) -> Vec<u8> {
        let rule = self.rule();
        let body = serde_json::json!({
            "error": { "type": self.kind(), "message": self.to_string(), "rule": rule.as_deref() }
        })
        .to_string();
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-tollgate-request-id: {}\r\n",
            self.status(),
            reason_phrase(self.status()),
            body.len(),
            request_id
        );
        if let Some(rule) = &rule {
            head.push_str(&format!("x-tollgate-rule: {rule}\r\n"));
        }
        match self {
            ProxyError::Auth(AuthError::Throttled { retry_after_secs })
            | ProxyError::RateLimited { retry_after_secs, .. } => {
                head.push_str(&format!("retry-after: {retry_after_secs}\r\n"));
            }
            ProxyError::ConcurrencyLimited { .. } => head.push_str("retry-after: 1\r\n"),
            ProxyError::Auth(_) => {
                head.push_str(&format!("proxy-authenticate: Basic realm=\"{}\"\r\n", Directory::REALM));
            }
            _ => {}
        }
        if close {
            head.push_str("connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut response = head.into_bytes();
        response.extend_from_slice(body.as_bytes());
        response
    }
}

/// The `error.type` of the Anthropic error shape, for answers inside intercepted tunnels and on gateway
/// listeners (what Claude Code shows its user verbatim).
fn anthropic_type(error: &ProxyError) -> &'static str {
    match error {
        ProxyError::Auth(AuthError::Throttled { .. }) | ProxyError::RateLimited { .. } => "rate_limit_error",
        ProxyError::ConcurrencyLimited { .. } => "rate_limit_error",
        ProxyError::Auth(_) => "authentication_error",
        ProxyError::BudgetSpent(_) => "billing_error",
        ProxyError::BodyTooLarge(_) => "request_too_large",
        _ => match error.status() {
            400 | 408 | 414 | 415 | 421 | 431 => "invalid_request_error",
            403 => "permission_error",
            504 => "timeout_error",
            _ => "api_error",
        },
    }
}

impl ProxyError {
    /// The status inside an intercepted tunnel or on a gateway listener: identity failures are 401 there.
    pub fn api_status(&self) -> u16 {
        match self {
            ProxyError::Auth(AuthError::Throttled { .. }) => 429,
            ProxyError::Auth(_) => 401,
            _ => self.status(),
        }
    }

    /// The answer in the Anthropic error shape: `{"type":"error","error":{"type":…,"message":…},"request_id":…}`
    /// with `x-tollgate-request-id`, `x-tollgate-rule` on a deny, `retry-after` on 429, and
    /// `x-should-retry: false` when retrying cannot help (a spent budget).
    pub fn api_response(&self, request_id: &str) -> http::Response<bytes::Bytes> {
        let body = serde_json::json!({
            "type": "error",
            "error": { "type": anthropic_type(self), "message": self.api_message() },
            "request_id": request_id,
        })
        .to_string();
        let mut response = http::Response::new(bytes::Bytes::from(body));
        *response.status_mut() =
            http::StatusCode::from_u16(self.api_status()).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        if let Ok(id) = http::HeaderValue::from_str(request_id) {
            headers.insert("x-tollgate-request-id", id);
        }
        if let Some(rule) = self.rule().and_then(|r| http::HeaderValue::from_str(&r).ok()) {
            headers.insert("x-tollgate-rule", rule);
        }
        let retry_after = match self {
            ProxyError::Auth(AuthError::Throttled { retry_after_secs })
            | ProxyError::RateLimited { retry_after_secs, .. } => Some(*retry_after_secs),
            ProxyError::ConcurrencyLimited { .. } => Some(1),
            ProxyError::BudgetSpent(refusal) => Some(refusal.retry_after.as_secs().max(1)),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
        }
        if matches!(self, ProxyError::BudgetSpent(_)) {
            headers.insert("x-should-retry", http::HeaderValue::from_static("false"));
        }
        response
    }

    /// The message a developer reads: what happened, the rule, and what to do.
    fn api_message(&self) -> String {
        match self {
            ProxyError::Auth(AuthError::Missing) => {
                "tollgate: authentication required: send Authorization: Bearer <token> or x-api-key: USER:PASSWORD".to_owned()
            }
            ProxyError::Auth(AuthError::Rejected) => "tollgate: invalid credentials".to_owned(),
            ProxyError::Auth(AuthError::UnsupportedScheme) => {
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
        403 => "Forbidden",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}
