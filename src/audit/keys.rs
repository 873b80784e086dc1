//! The audit keys: the chain key (HMAC-SHA256, `audit.file.key`), the checkpoint signing key (Ed25519,
//! `audit.checkpoints.signing_key`) and its public key, and `tollgate audit keygen`, which makes all three.
//!
//! The chain key is 32 random bytes written as 64 hex digits; the signing key is PKCS#8 in PEM (`PRIVATE KEY`, as
//! `openssl genpkey -algorithm ed25519` writes it too); the public key is its 32 bytes as 64 hex digits.

use std::io::Write;
use std::path::{Path, PathBuf};

use ring::rand::SecureRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};

/// The chain key's file name in `tollgate audit keygen --dir`.
pub const CHAIN_KEY: &str = "audit.key";
/// The signing key's file name.
pub const SIGNING_KEY: &str = "audit-sign.key";
/// The public key's file name.
pub const PUBLIC_KEY: &str = "audit-sign.pub";

/// Bytes of a chain key made by keygen, and the fewest a key file may hold.
const CHAIN_KEY_BYTES: usize = 32;

/// A key that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct KeyError {
    pub path: PathBuf,
    pub problem: String,
}

fn key_error(path: &Path, problem: impl Into<String>) -> KeyError {
    KeyError { path: path.to_owned(), problem: problem.into() }
}

/// Reads the chain key: at least 32 bytes written as hex digits.
pub fn load_chain_key(path: &Path) -> Result<ring::hmac::Key, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|error| key_error(path, error.to_string()))?;
    let bytes = hex::decode(text.trim()).map_err(|_| {
        key_error(path, "not a chain key: write at least 32 random bytes as hex digits (tollgate audit keygen)")
    })?;
    if bytes.len() < CHAIN_KEY_BYTES {
        return Err(key_error(
            path,
            format!("a chain key needs at least {CHAIN_KEY_BYTES} bytes; it has {}", bytes.len()),
        ));
    }
    Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes))
}

/// Reads the Ed25519 signing key (PKCS#8 PEM).
pub fn load_signing_key(path: &Path) -> Result<Ed25519KeyPair, KeyError> {
    let pem = std::fs::read(path).map_err(|error| key_error(path, error.to_string()))?;
    let not_a_key = || key_error(path, "not an Ed25519 private key in PKCS#8 PEM (tollgate audit keygen)");
    let key = rustls_pemfile::private_key(&mut pem.as_slice()).ok().flatten().ok_or_else(not_a_key)?;
    let rustls_pki_types::PrivateKeyDer::Pkcs8(pkcs8) = key else { return Err(not_a_key()) };
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8.secret_pkcs8_der()).map_err(|_| not_a_key())
}

/// Reads an Ed25519 public key: 32 bytes as hex digits.
pub fn load_public_key(path: &Path) -> Result<Vec<u8>, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|error| key_error(path, error.to_string()))?;
    match hex::decode(text.trim()) {
        Ok(bytes) if bytes.len() == 32 => Ok(bytes),
        _ => {
            Err(key_error(path, "not an Ed25519 public key: 64 hex digits (audit-sign.pub from tollgate audit keygen)"))
        }
    }
}

/// What keygen wrote.
#[derive(Debug)]
pub struct Generated {
    pub chain_key: PathBuf,
    pub signing_key: PathBuf,
    pub public_key: PathBuf,
}

/// Makes a chain key, a signing key and its public key in `dir` (created when missing); the secrets with mode
/// 0600. Refuses to overwrite any of them (nothing is written then).
pub fn keygen(dir: &Path) -> Result<Generated, KeyError> {
    std::fs::create_dir_all(dir).map_err(|error| key_error(dir, error.to_string()))?;
    let generated = Generated {
        chain_key: dir.join(CHAIN_KEY),
        signing_key: dir.join(SIGNING_KEY),
        public_key: dir.join(PUBLIC_KEY),
    };
    for path in [&generated.chain_key, &generated.signing_key, &generated.public_key] {
        if path.exists() {
            return Err(key_error(path, "already exists: it is not overwritten (a new key cannot verify old files)"));
        }
    }
    let random = ring::rand::SystemRandom::new();
    let mut chain = [0u8; CHAIN_KEY_BYTES];
    random.fill(&mut chain).map_err(|_| key_error(dir, "no random bytes from the system"))?;
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&random).map_err(|_| key_error(dir, "cannot make an Ed25519 key"))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| key_error(dir, "cannot read the new key"))?;
    write_new(&generated.chain_key, format!("{}\n", hex::encode(chain)).as_bytes(), 0o600)?;
    write_new(&generated.signing_key, pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes(), 0o600)?;
    write_new(&generated.public_key, format!("{}\n", hex::encode(pair.public_key().as_ref())).as_bytes(), 0o644)?;
    Ok(generated)
}

/// PEM with 64-character lines.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

/// Writes a new file (never an existing one) with `mode`, synced.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    write().map_err(|error| key_error(path, error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keygen_writes_keys_that_load_with_private_modes_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let generated = keygen(dir.path()).unwrap();
        load_chain_key(&generated.chain_key).unwrap();
        let pair = load_signing_key(&generated.signing_key).unwrap();
        assert_eq!(load_public_key(&generated.public_key).unwrap(), pair.public_key().as_ref());
        for secret in [&generated.chain_key, &generated.signing_key] {
            assert_eq!(std::fs::metadata(secret).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let before = std::fs::read(&generated.chain_key).unwrap();
        let error = keygen(dir.path()).unwrap_err();
        assert!(error.to_string().contains("already exists"), "{error}");
        assert_eq!(std::fs::read(&generated.chain_key).unwrap(), before);
    }

    #[test]
    fn a_short_or_malformed_key_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short.key");
        std::fs::write(&path, "abcd\n").unwrap();
        let error = load_chain_key(&path).unwrap_err().to_string();
        assert!(error.contains("at least 32 bytes; it has 2"), "{error}");
        std::fs::write(&path, "not hex").unwrap();
        assert!(load_chain_key(&path).unwrap_err().to_string().contains("hex digits"));
        assert!(load_signing_key(&path).unwrap_err().to_string().contains("PKCS#8"));
    }
}
