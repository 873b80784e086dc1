//! The one place where a failure becomes a status code, a JSON body, headers and a metric reason.
//!
//! Forward-proxy errors are `{"error":{"type":…,"message":…,"rule":…}}` with `x-tollgate-request-id` and, on a
//! deny, `x-tollgate-rule` (DESIGN.md's error contract).

use std::io;
use std::sync::Arc;

use crate::identity::{AuthError, Directory};
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
        }
    }

    /// The rule that denied, if this is a deny.
    pub fn rule(&self) -> Option<Arc<str>> {
        match self {
            ProxyError::Denied { rule, .. } => Some(rule.clone()),
            ProxyError::RateLimited { scope, .. } | ProxyError::ConcurrencyLimited { scope, .. } => {
                Some(format!("limits.{}", scope.label()).into())
            }
            _ => None,
        }
    }

    /// `allow`/`deny`/`error` for metrics and audit: a policy or identity refusal is a deny.
    pub fn decision(&self) -> &'static str {
        match self {
            ProxyError::Denied { .. }
            | ProxyError::Auth(_)
            | ProxyError::RateLimited { .. }
            | ProxyError::ConcurrencyLimited { .. } => "deny",
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

/// Reason phrases for the statuses tollgate itself sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        414 => "URI Too Long",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}
