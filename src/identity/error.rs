//! Why a request could not be identified: one enum for every credential kind, whose `method` labels
//! `tollgate_auth_failures_total`.

use super::jwt::JwtError;

/// Why a request could not be identified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("proxy authentication required")]
    Missing,
    #[error("malformed Proxy-Authorization: {0}")]
    Malformed(&'static str),
    #[error("unsupported Proxy-Authorization scheme: use Basic")]
    UnsupportedScheme,
    #[error("invalid user name or password")]
    Rejected,
    /// A gateway API key that is not `USER:PASSWORD`.
    #[error("malformed API key: {0}")]
    MalformedKey(&'static str),
    #[error("too many failed authentication attempts from this address")]
    Throttled { retry_after_secs: u64 },
    /// A bearer token that does not verify; the reason names the failed check, never the token.
    #[error("invalid bearer token: {0}")]
    InvalidToken(JwtError),
}

impl AuthError {
    /// The `method` label of `tollgate_auth_failures_total` for this failure.
    pub fn method(&self) -> &'static str {
        match self {
            AuthError::Missing => "none",
            AuthError::InvalidToken(_) => "jwt",
            _ => "basic",
        }
    }
}
