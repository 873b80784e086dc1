//! TLS material, built once per config snapshot: the listeners' server configs (with mTLS client verification
//! and CRLs), the one client config every upstream TLS connection shares, and the identity a verified client
//! certificate carries.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// The crypto provider tollgate uses everywhere (never a process-wide default).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.2 and 1.3 only.
const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: invalid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("{}: invalid PEM: {e}", path.display()))?
        .ok_or_else(|| format!("{} holds no private key", path.display()))
}

fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    rustls_pemfile::crls(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: invalid CRL: {e}", path.display()))
}

fn roots_from(paths: &[PathBuf], mut roots: RootCertStore) -> Result<RootCertStore, String> {
    for path in paths {
        for cert in load_certs(path)? {
            roots.add(cert).map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
        }
    }
    Ok(roots)
}

/// Whether a TLS listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    None,
    Optional,
    Required,
}

/// Where a listener's TLS material lives.
#[derive(Debug, Clone)]
pub struct ListenerFiles<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub client_ca: Option<&'a Path>,
    pub client_auth: ClientAuth,
    pub crl: Option<&'a Path>,
}

/// The server config of a TLS listener. Untrusted, expired, revoked or wrong-usage client certificates
/// fail in the handshake.
pub fn server_config(files: &ListenerFiles<'_>) -> Result<Arc<ServerConfig>, String> {
    let builder =
        ServerConfig::builder_with_provider(provider()).with_protocol_versions(VERSIONS).map_err(|e| e.to_string())?;
    let builder = match (files.client_auth, files.client_ca) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (_, None) => return Err("client_auth needs client_ca".to_owned()),
        (mode, Some(ca)) => {
            let roots = Arc::new(roots_from(&[ca.to_owned()], RootCertStore::empty())?);
            let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
            if let Some(crl) = files.crl {
                verifier = verifier.with_crls(load_crls(crl)?);
            }
            if mode == ClientAuth::Optional {
                verifier = verifier.allow_unauthenticated();
            }
            builder.with_client_cert_verifier(verifier.build().map_err(|e| e.to_string())?)
        }
    };
    let mut config = builder.with_single_cert(load_certs(files.cert)?, load_key(files.key)?).map_err(|e| {
        format!("{} and {} do not form a usable certificate: {e}", files.cert.display(), files.key.display())
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Trust and identity toward upstreams.
#[derive(Debug, Clone, Default)]
pub struct UpstreamFiles {
    pub system_roots: bool,
    pub extra_ca: Vec<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// The one client config shared by every upstream TLS connection: system roots plus `extra_ca`, and the
/// client certificate when configured. Verification is never switched off.
pub fn client_config(files: &UpstreamFiles) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    if files.system_roots {
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
    }
    let roots = roots_from(&files.extra_ca, roots)?;
    if roots.is_empty() {
        return Err("no trusted roots: enable system_roots or name extra_ca files".to_owned());
    }
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build().map_err(|e| e.to_string())?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?
        .with_webpki_verifier(verifier);
    let config = match &files.client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| format!("{} and {} do not form a usable certificate: {e}", cert.display(), key.display()))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Which part of a client certificate names the principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertIdentity {
    #[default]
    SanEmail,
    SanUri,
    Cn,
}

/// The principal name (and team, from the first OU) of a verified client certificate.
/// What a client certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateIdentity {
    /// From the SAN e-mail, SAN URI or CN, as `auth.mtls.identity` says.
    pub name: String,
    /// The subject's first OU.
    pub organizational_unit: Option<String>,
    /// The end of its validity.
    pub not_after: std::time::SystemTime,
}

/// The identity of a verified client certificate; `None` when it lacks the configured field.
pub fn certificate_identity(cert: &CertificateDer<'_>, identity: CertIdentity) -> Option<CertificateIdentity> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let name = match identity {
        CertIdentity::Cn => parsed.subject().iter_common_name().next()?.as_str().ok()?.to_owned(),
        CertIdentity::SanEmail | CertIdentity::SanUri => {
            let san = parsed.subject_alternative_name().ok()??;
            san.value.general_names.iter().find_map(|general| match (identity, general) {
                (CertIdentity::SanEmail, GeneralName::RFC822Name(email)) => Some(email.to_string()),
                (CertIdentity::SanUri, GeneralName::URI(uri)) => Some(uri.to_string()),
                _ => None,
            })?
        }
    };
    let organizational_unit =
        parsed.subject().iter_organizational_unit().next().and_then(|ou| ou.as_str().ok()).map(str::to_owned);
    let seconds = u64::try_from(parsed.validity().not_after.timestamp()).unwrap_or(0);
    let not_after = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
    Some(CertificateIdentity { name, organizational_unit, not_after })
}
