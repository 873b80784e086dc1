//! Basic proxy credentials and argon2id password hashes.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;

use super::error::AuthError;

/// A decoded `Proxy-Authorization: Basic …` value.
pub struct BasicCredentials {
    pub user: String,
    pub password: String,
}

/// Longest `Proxy-Authorization` value accepted.
const MAX_HEADER: usize = 4096;

/// A valid argon2id hash of a random password, verified against when the user does not exist.
pub const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2Vg6sT8A0Qv7U8m8b6Xk8m2n6n1b1xC9k0wq9ZC1l2Q";

impl BasicCredentials {
    /// Parses `Basic base64(user:password)`; the scheme is case-insensitive.
    pub fn parse(header: &[u8]) -> Result<Self, AuthError> {
        if header.len() > MAX_HEADER {
            return Err(AuthError::Malformed("too long"));
        }
        let text = std::str::from_utf8(header).map_err(|_| AuthError::Malformed("not UTF-8"))?.trim();
        let (scheme, token) = text.split_once(' ').ok_or(AuthError::Malformed("no scheme"))?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(AuthError::UnsupportedScheme);
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token.trim())
            .map_err(|_| AuthError::Malformed("bad base64"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| AuthError::Malformed("credentials are not UTF-8"))?;
        let (user, password) =
            decoded.split_once(':').ok_or(AuthError::Malformed("no ':' between user and password"))?;
        if user.is_empty() {
            return Err(AuthError::Malformed("empty user name"));
        }
        Ok(Self { user: user.to_owned(), password: password.to_owned() })
    }
}

/// Checks that `hash` is an argon2id PHC string.
pub fn check_hash(hash: &str) -> Result<(), String> {
    let parsed =
        PasswordHash::new(hash).map_err(|_| "not a PHC hash string (make one with `tollgate passwd`)".to_owned())?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(format!("algorithm {} is not argon2id (make one with `tollgate passwd`)", parsed.algorithm));
    }
    Ok(())
}

/// Verifies on the blocking pool: argon2 takes milliseconds and must not stall the async runtime.
pub async fn verify_blocking(hash: std::sync::Arc<str>, password: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
    })
    .await
    .unwrap_or(false)
}

/// Hashes a password with argon2id and a random salt (`tollgate passwd`).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(text: &str) -> Vec<u8> {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(text)).into_bytes()
    }

    #[test]
    fn malformed_credentials_are_refused_without_panic() {
        assert!(BasicCredentials::parse(b"Basic !!!").is_err());
        assert!(BasicCredentials::parse(&encode("nocolon")).is_err());
        assert!(BasicCredentials::parse(&encode(":pw")).is_err());
        assert!(BasicCredentials::parse(b"Basic \xff\xfe").is_err());
        assert!(BasicCredentials::parse(&vec![b'a'; 70_000]).is_err());
        assert_eq!(BasicCredentials::parse(b"Bearer x").err(), Some(AuthError::UnsupportedScheme));
        let ok = BasicCredentials::parse(&encode("*)(uid=*:p@ss:w")).unwrap();
        assert_eq!((ok.user.as_str(), ok.password.as_str()), ("*)(uid=*", "p@ss:w"));
    }

    #[test]
    fn hashes_round_trip_and_dummy_is_valid() {
        let hash = hash_password("s3cret").unwrap();
        check_hash(&hash).unwrap();
        check_hash(DUMMY_HASH).unwrap();
        assert!(check_hash("$2b$10$abc").is_err());
    }
}
