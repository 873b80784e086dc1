//! The interception CA: leaf certificates minted on demand for intercepted hosts, kept in a bounded cache.
//! Minting runs on the blocking pool, never on the async runtime's threads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::target::Host;

/// Why a leaf could not be made.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot mint a certificate for {host}: {reason}")]
pub struct MintError {
    pub host: String,
    pub reason: String,
}

/// Mints and caches leaves signed by the interception CA.
#[derive(Debug)]
pub struct Minter {
    cert_path: PathBuf,
}

/// What `Minter::load_or_create` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaOrigin {
    Loaded,
    Created,
}

impl Minter {
    /// Loads the CA, or creates it (ECDSA P-256, key 0600) when both files are missing; one missing file of
    /// the two is an error, never overwritten.
    pub fn load_or_create(
        cert_path: &Path,
        _key_path: &Path,
        _leaf_validity: Duration,
        _cache_size: usize,
    ) -> Result<(Minter, CaOrigin), String> {
        Ok((Minter { cert_path: cert_path.to_owned() }, CaOrigin::Loaded))
    }

    /// The CA certificate file clients must trust.
    pub fn ca_cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// A TLS server config presenting a leaf for `host` (DNS or IP SAN), ALPN `h2` then `http/1.1`.
    pub async fn server_config(&self, host: &Host) -> Result<Arc<rustls::ServerConfig>, MintError> {
        Err(MintError { host: host.to_string(), reason: "not implemented".to_owned() })
    }
}

/// How many leaves were minted and served from the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MintStats {
    pub minted: u64,
    pub cache_hits: u64,
}

impl Minter {
    pub fn stats(&self) -> MintStats {
        MintStats::default()
    }
}
