//! rustls configs for tests and benches, with tollgate's crypto provider: a server config serving a certificate
//! chain (optionally demanding a client certificate from a CA), and a client config trusting given roots
//! (optionally presenting a certificate).
//!
//! Shared by the integration tests (`tests/suite/common/tls.rs`) and the load harness (`benches/load/`), which
//! also trusts CAs that other processes wrote: so a bad certificate is an error, not a panic.

use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::SupportedProtocolVersion;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Serves `chain` with `key` (TLS 1.2 and 1.3); with `client_ca`, a client certificate signed by it is required.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: Option<CertificateDer<'static>>,
) -> Result<rustls::ServerConfig, String> {
    let builder = rustls::ServerConfig::builder_with_provider(tollgate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("protocol versions: {error}"))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca).map_err(|error| format!("client CA: {error}"))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), tollgate::tls::provider())
                .build()
                .map_err(|error| format!("client verifier: {error}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder.with_single_cert(chain, key).map_err(|error| format!("server certificate: {error}"))
}

/// A client offering `versions` that trusts `roots`, presenting `identity` (chain, key) when given.
pub fn client_config(
    roots: Vec<CertificateDer<'static>>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    versions: &[&'static SupportedProtocolVersion],
) -> Result<rustls::ClientConfig, String> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root).map_err(|error| format!("root certificate: {error}"))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(tollgate::tls::provider())
        .with_protocol_versions(versions)
        .map_err(|error| format!("protocol versions: {error}"))?
        .with_root_certificates(store);
    match identity {
        Some((chain, key)) => {
            builder.with_client_auth_cert(chain, key).map_err(|error| format!("client certificate: {error}"))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}
