//! The harness's TLS material: a server CA and a leaf for `localhost`, a clients CA and an mTLS client leaf, and
//! the rustls client configs (TLS 1.3 only, resumption off, so every connection is a full handshake).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// Makes the material in `dir` with `tollgate::certs` (ECDSA P-256).
pub fn make_pki(dir: &Path) -> Result<Pki, String> {
    use tollgate::certs::{Ca, Leaf};
    let certificate_error = |error: tollgate::certs::CertError| error.to_string();
    let server_ca = Ca::generate("tollgate-load server CA").map_err(certificate_error)?;
    let clients_ca = Ca::generate("tollgate-load clients CA").map_err(certificate_error)?;
    let server_leaf = Leaf::server(&["localhost".to_string()], &[std::net::IpAddr::from([127, 0, 0, 1])]);
    let (server_cert, server_key) =
        server_ca.issue(&server_leaf.map_err(certificate_error)?).map_err(certificate_error)?;
    let client_leaf = Leaf::client(MTLS_USER, None).map_err(certificate_error)?;
    let (client_cert, client_key) = clients_ca.issue(&client_leaf).map_err(certificate_error)?;
    let file = |name: &str, text: &str| -> Result<PathBuf, String> {
        let path = dir.join(name);
        fs::write(&path, text).map_err(|error| format!("write {}: {error}", path.display()))?;
        Ok(path)
    };
    let server_chain =
        file("server.pem", &format!("{}\n{}\n", server_cert.trim_end(), server_ca.cert_pem().trim_end()))?;
    let server_key = file("server.key", &server_key)?;
    let server_ca = file("server-ca.pem", server_ca.cert_pem())?;
    let clients_ca = file("clients-ca.pem", clients_ca.cert_pem())?;
    let client_cert = file("client.pem", &client_cert)?;
    let client_key = file("client.key", &client_key)?;
    Ok(Pki {
        client: harness_client(&server_ca, None)?,
        mtls_client: harness_client(&server_ca, Some((&client_cert, &client_key)))?,
        server_chain,
        server_key,
        clients_ca,
    })
}

/// A client config that trusts the CA certificates in `ca` (PEM, e.g. the one a proxy made to intercept with), with
/// no client certificate.
pub fn tls_client(ca: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    harness_client(ca, None)
}

/// The harness's client: TLS 1.3 only, resumption off, ALPN `http/1.1`; trusts `ca`, presents `client` (certificate,
/// key) when given.
fn harness_client(ca: &Path, client: Option<(&Path, &Path)>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in tollgate::tls::load_certs(ca)? {
        roots.add(certificate).map_err(|error| format!("{}: {error}", ca.display()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(tollgate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(tollgate::tls::load_certs(cert)?, tollgate::tls::load_key(key)?)
            .map_err(|error| error.to_string())?,
        None => builder.with_no_client_auth(),
    };
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
