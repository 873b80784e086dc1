//! Basic proxy credentials and argon2id password hashes.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
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

/// The memory of one argon2 check (its blocks: 19 MiB with the default parameters), kept from one check to the next.
/// Allocated afresh for each check, that memory is not given back in practice: each check's large aligned
/// allocation fragments the allocator's arenas, and a burst of a few hundred sign-ins leaves the process holding
/// hundreds of MiB, many times what the checks running at once need.
#[derive(Debug, Default)]
pub struct Scratch(Vec<Block>);

/// Verifies on the blocking pool (argon2 takes milliseconds and must not stall the async runtime), in the memory of
/// `scratch`, which is handed back for the next check.
pub async fn verify_blocking(hash: std::sync::Arc<str>, password: String, mut scratch: Scratch) -> (bool, Scratch) {
    tokio::task::spawn_blocking(move || {
        let verified = verify(&hash, password.as_bytes(), &mut scratch.0);
        (verified, scratch)
    })
    .await
    .unwrap_or_default()
}

/// Whether `password` matches the PHC string `hash` (argon2id, or argon2i/argon2d, with the parameters the hash
/// names), computed in `memory`, which grows when the parameters need more blocks than it has.
fn verify(hash: &str, password: &[u8], memory: &mut Vec<Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else { return false };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else { return false };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else { return false };
    let Ok(version) = parsed.version.map(Version::try_from).transpose() else { return false };
    let Ok(params) = Params::try_from(&parsed) else { return false };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else { return false };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let mut computed = vec![0u8; expected.len()];
    let argon2 = Argon2::new(algorithm, version.unwrap_or_default(), params);
    argon2.hash_password_into_with_memory(password, salt, &mut computed, &mut memory[..blocks]).is_ok()
        && bool::from(subtle::ConstantTimeEq::ct_eq(computed.as_slice(), expected.as_bytes()))
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

    #[test]
    fn verification_reuses_its_memory_and_agrees_with_the_argon2_verifier() {
        use argon2::PasswordVerifier;
        let hash = hash_password("s3cret").unwrap();
        let mut memory = Vec::new();
        assert!(verify(&hash, b"s3cret", &mut memory));
        let (blocks, address) = (memory.len(), memory.as_ptr());
        assert_eq!(blocks, Params::DEFAULT_M_COST as usize, "one block per KiB of m_cost");
        for wrong in ["s3cre", "s3cret ", "", "S3CRET"] {
            assert!(!verify(&hash, wrong.as_bytes(), &mut memory), "{wrong:?}");
            let parsed = PasswordHash::new(&hash).unwrap();
            assert!(Argon2::default().verify_password(wrong.as_bytes(), &parsed).is_err());
        }
        assert_eq!((memory.len(), memory.as_ptr()), (blocks, address), "the same memory, not a new allocation");
        assert!(!verify(DUMMY_HASH, b"s3cret", &mut memory));
        // Other parameters and variants verify as the hash says.
        let salt = SaltString::generate(&mut OsRng);
        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x10, Params::new(64, 3, 1, Some(20)).unwrap());
        let other = argon2i.hash_password(b"pw", &salt).unwrap().to_string();
        assert!(verify(&other, b"pw", &mut memory) && !verify(&other, b"pW", &mut memory), "{other}");
        for broken in ["", "$argon2id$v=19$m=8,t=1,p=1", "not a hash", "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$"] {
            assert!(!verify(broken, b"pw", &mut memory), "{broken:?}");
        }
    }
}
