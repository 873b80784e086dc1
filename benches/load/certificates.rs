//! The harness's TLS material: a server CA and a leaf for `localhost`, a clients CA and an mTLS client leaf, made
//! with the certificate making the integration tests use (`support::pki`), and the rustls client configs
//! (`support::tls`; TLS 1.3 only, resumption off, so every connection is a full handshake).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::DnType;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::support::pki::{client_params, server_params, Authority};
use crate::support::tls::client_config;

/// The mTLS client certificate's CN: the principal (`auth.mtls.identity: cn`).
const MTLS_USER: &str = "bench-client";

/// TLS material for the TLS listeners and the stub, written to a directory, and the two client configs.
pub struct Pki {
    /// The server leaf (`localhost`, 127.0.0.1) followed by its CA, PEM: what the TLS listener and the stub serve.
    pub server_chain: PathBuf,
    pub server_key: PathBuf,
    /// The CA of the client certificates, PEM.
    pub clients_ca: PathBuf,
    /// Trusts the server CA; no client certificate.
    pub client: Arc<rustls::ClientConfig>,
    /// Trusts the server CA; presents the client certificate (CN `MTLS_USER`).
    pub mtls_client: Arc<rustls::ClientConfig>,
}

/// Makes the material in `dir`: the server and clients CAs, the server leaf and its chain, the client leaf.
pub fn make_pki(dir: &Path) -> Result<Pki, String> {
    let server_ca = Authority::new(dir, "server-ca", "tollgate-load server CA");
    let clients_ca = Authority::new(dir, "clients-ca", "tollgate-load clients CA");
    let server = server_ca.issue(dir, "server", server_params(&["localhost", "127.0.0.1"]));
    let client = clients_ca.issue(dir, "client", client_params(&[(DnType::CommonName, MTLS_USER)], Vec::new()));
    let read = |path: &Path| fs::read_to_string(path).map_err(|error| format!("read {}: {error}", path.display()));
    let server_chain = dir.join("server-chain.pem");
    let chain = format!("{}{}", read(&server.pem)?, read(&server_ca.pem)?);
    fs::write(&server_chain, chain).map_err(|error| format!("write {}: {error}", server_chain.display()))?;
    Ok(Pki {
        client: harness_client(vec![server_ca.der()], None)?,
        mtls_client: harness_client(vec![server_ca.der()], Some((client.chain(), client.private_key())))?,
        server_chain,
        server_key: server.key,
        clients_ca: clients_ca.pem,
    })
}

/// A client config that trusts the CA certificates in `ca` (PEM, e.g. the one a proxy made to intercept with), with
/// no client certificate.
pub fn tls_client(ca: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    harness_client(tollgate::tls::load_certs(ca)?, None)
}

/// The harness's client: TLS 1.3 only, resumption off, ALPN `http/1.1`.
fn harness_client(
    roots: Vec<CertificateDer<'static>>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut config = client_config(roots, identity, &[&rustls::version::TLS13])?;
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
