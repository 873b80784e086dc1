//! The harness's TLS material: a server CA and leaf for `localhost`, a clients CA and an mTLS client leaf, and the
//! rustls client configs (TLS 1.3, resumption off).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::tollgate_only::MTLS_USER;

/// TLS material for scenario tls, written to `dir`, and the two client configs.
pub struct Pki {
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_ca: PathBuf,
    /// Trusts the server CA; no client certificate.
    pub client: Arc<rustls::ClientConfig>,
    /// Trusts the server CA; presents the client certificate.
    pub mtls_client: Arc<rustls::ClientConfig>,
}

/// A TLS 1.3 client config that trusts `ca`, with `client` (certificate, key) for mTLS. Resumption is off:
/// every connection is a full handshake.
pub fn tls_client(ca: &Path, client: Option<(&Path, &Path)>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in tollgate::tls::load_certs(ca)? {
        roots.add(cert).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(tollgate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(tollgate::tls::load_certs(cert)?, tollgate::tls::load_key(key)?)
            .map_err(|e| e.to_string())?,
        None => builder.with_no_client_auth(),
    };
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A server CA and leaf (`localhost`, 127.0.0.1), a clients CA and a client leaf (CN `MTLS_USER`); all ECDSA
/// P-256, made with `tollgate::certs`.
pub fn make_pki(dir: &Path) -> Result<Pki, String> {
    use tollgate::certs::{Ca, Leaf};
    let err = |e: tollgate::certs::CertError| e.to_string();
    let server_ca = Ca::generate("tollgate-load server CA").map_err(err)?;
    let clients_ca = Ca::generate("tollgate-load clients CA").map_err(err)?;
    let server_leaf = Leaf::server(&["localhost".to_string()], &[std::net::IpAddr::from([127, 0, 0, 1])]);
    let (cert, key) = server_ca.issue(&server_leaf.map_err(err)?).map_err(err)?;
    let (client_cert, client_key) = clients_ca.issue(&Leaf::client(MTLS_USER, None).map_err(err)?).map_err(err)?;
    let file = |name: &str, text: &str| -> Result<PathBuf, String> {
        let p = dir.join(name);
        fs::write(&p, text).map_err(|e| format!("write {}: {e}", p.display()))?;
        Ok(p)
    };
    let server_cert = file("server.pem", &format!("{}\n{}\n", cert.trim_end(), server_ca.cert_pem().trim_end()))?;
    let server_key = file("server.key", &key)?;
    let server_ca = file("server-ca.pem", server_ca.cert_pem())?;
    let client_ca = file("clients-ca.pem", clients_ca.cert_pem())?;
    let client_cert = file("client.pem", &client_cert)?;
    let client_key = file("client.key", &client_key)?;
    Ok(Pki {
        client: tls_client(&server_ca, None)?,
        mtls_client: tls_client(&server_ca, Some((&client_cert, &client_key)))?,
        server_cert,
        server_key,
        client_ca,
    })
}
