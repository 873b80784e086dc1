//! Why `tollgate login` or `tollgate token` failed, as one line for stderr and an exit code a helper script can
//! rely on.

/// Why a command failed; each kind has its exit code, so a helper script can tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Signing in (again) is needed: no credentials, a refresh token refused, a sign-in denied or expired. Exit 1.
    #[error("{0}: run `tollgate login`")]
    LoginNeeded(String),
    /// Bad arguments or settings, or a local file that cannot be read or written. Exit 2.
    #[error("{0}")]
    Usage(String),
    /// The identity provider or the proxy could not be reached, or answered with an error: try again. Exit 3.
    #[error("{0}")]
    Provider(String),
}

impl LoginError {
    /// 1 sign in again, 2 usage, 3 try again later.
    pub fn exit_code(&self) -> u8 {
        match self {
            LoginError::LoginNeeded(_) => 1,
            LoginError::Usage(_) => 2,
            LoginError::Provider(_) => 3,
        }
    }
}
