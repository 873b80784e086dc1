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
    /// The credential's lifetime is over (a JWT's `exp`, a client certificate's `notAfter`).
    #[error("the credential has expired; sign in again")]
    Expired,
    /// A reload removed the user or changed its password.
    #[error("the credential is no longer valid (the configuration changed); sign in again")]
    Revoked,
    /// SCIM deactivated or deleted the user, or (with `admin.scim.require_provisioned`) never provisioned it.
    #[error("the user is not provisioned or was deprovisioned; ask your administrator")]
    Deprovisioned,
    /// Every password verifier is busy and the wait queue is full.
    #[error("too many sign-ins at once; retry in a moment")]
    Busy,
    #[error("too many failed authentication attempts from this address")]
    Throttled { retry_after_secs: u64 },
    /// A bearer token that does not verify; the reason names the failed check, never the token.
    #[error("invalid bearer token: {0}")]
    InvalidToken(JwtError),
    /// The same, for a token `auth.oidc` checked (its failures are counted apart).
    #[error("invalid bearer token: {0}")]
    InvalidOidcToken(JwtError),
}

impl AuthError {
    /// The `method` label of `tollgate_auth_failures_total` for this failure.
    pub fn method(&self) -> &'static str {
        match self {
            AuthError::Missing => "none",
            AuthError::InvalidToken(_) => "jwt",
            AuthError::InvalidOidcToken(_) => "oidc",
            AuthError::Expired | AuthError::Revoked => "expired",
            AuthError::Deprovisioned => "deprovisioned",
            AuthError::Busy => "busy",
            _ => "basic",
        }
    }
}
