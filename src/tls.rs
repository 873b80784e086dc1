//! TLS material, built once per config snapshot: the listeners' server configs (with mTLS client verification
//! and CRLs), the one client config every upstream TLS connection shares, and the identity a verified client
//! certificate carries.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
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

/// Reads the PEM CRLs of a listener's `crl` file and checks each as rustls will at a client's handshake, so a CRL it
/// cannot use is a config error rather than every client refused: a version 2 CRL with extensions and a nextUpdate,
/// issued by a certificate of `client_ca` that may sign CRLs, and signed with that certificate's key. Errors name
/// the file and what is wrong with it.
fn load_crls(
    path: &Path,
    client_ca: &Path,
    ca_certs: &[CertificateDer<'_>],
) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let mut crls = Vec::new();
    let mut others = Vec::new();
    for item in rustls_pemfile::read_all(&mut pem.as_slice()) {
        match item.map_err(|e| format!("{shown}: invalid PEM: {e}"))? {
            rustls_pemfile::Item::Crl(crl) => crls.push(crl),
            rustls_pemfile::Item::X509Certificate(_) => others.push("CERTIFICATE"),
            rustls_pemfile::Item::Csr(_) => others.push("CERTIFICATE REQUEST"),
            _ => others.push("PRIVATE KEY"),
        }
    }
    if crls.is_empty() {
        // An empty list would switch revocation checking off without a word.
        return Err(if pem.first() == Some(&0x30) {
            format!("{shown}: not PEM (DER?): write it as PEM with `openssl crl -inform DER -in {shown} -out CRL.pem`")
        } else if others.is_empty() {
            format!("{shown}: holds no PEM CRL (-----BEGIN X509 CRL-----)")
        } else {
            others.dedup();
            format!("{shown}: holds no PEM CRL (-----BEGIN X509 CRL-----), only {}", others.join(", "))
        });
    }
    let count = crls.len();
    for (index, crl) in crls.iter().enumerate() {
        check_crl(crl, client_ca, ca_certs).map_err(|what| match count {
            1 => format!("{shown}: {what}"),
            _ => format!("{shown}: CRL {} of {count}: {what}", index + 1),
        })?;
    }
    Ok(crls)
}

/// What rustls would refuse in one CRL, or find only at a handshake (see [`load_crls`]).
fn check_crl(crl: &[u8], client_ca: &Path, ca_certs: &[CertificateDer<'_>]) -> Result<(), String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    use x509_parser::revocation_list::CertificateRevocationList;
    use x509_parser::x509::X509Version;

    const MAKE_ONE: &str = "make one with `openssl ca -gencrl` and a crlnumber file (docs/tls.md)";
    let (_, parsed) = CertificateRevocationList::from_der(crl).map_err(|e| format!("not an X.509 CRL: {e}"))?;
    if parsed.version() != Some(X509Version::V2) {
        return Err(format!("a version 1 CRL: rustls reads version 2 CRLs only, with a CRL number; {MAKE_ONE}"));
    }
    if parsed.extensions().is_empty() {
        return Err(format!("a CRL without extensions: rustls needs a CRL number; {MAKE_ONE}"));
    }
    if parsed.next_update().is_none() {
        return Err("no nextUpdate: rustls needs one (`openssl ca -gencrl -crldays N`)".to_owned());
    }
    let issuer = ca_certs
        .iter()
        .filter_map(|der| X509Certificate::from_der(der).ok().map(|(_, cert)| cert))
        .find(|ca| ca.subject().as_raw() == parsed.issuer().as_raw())
        .ok_or_else(|| {
            format!(
                "issued by \"{}\", which is not a certificate in client_ca {}: the CRL of another CA",
                parsed.issuer(),
                client_ca.display()
            )
        })?;
    let named = || format!("\"{}\" (client_ca {})", issuer.subject(), client_ca.display());
    if issuer.key_usage().ok().flatten().is_some_and(|usage| !usage.value.crl_sign()) {
        return Err(format!("{} may not sign CRLs: its keyUsage lacks cRLSign", named()));
    }
    // The signature, checked with the algorithms rustls checks it with.
    let signature_algorithm = &parsed.signature_algorithm.algorithm;
    let algorithms: Vec<_> = provider()
        .signature_verification_algorithms
        .all
        .iter()
        .filter(|algorithm| {
            x509_parser::der_parser::der::parse_der_oid(algorithm.signature_alg_id().as_ref())
                .is_ok_and(|(_, oid)| oid.as_oid().is_ok_and(|oid| oid == signature_algorithm))
        })
        .collect();
    if algorithms.is_empty() {
        return Err(format!("signed with {signature_algorithm}, an algorithm rustls does not verify"));
    }
    let key = &issuer.public_key().subject_public_key.data;
    let signed = parsed.tbs_cert_list.as_ref();
    let signature = &parsed.signature_value.data;
    if !algorithms.iter().any(|algorithm| algorithm.verify_signature(key, signed, signature).is_ok()) {
        return Err(format!(
            "its signature does not verify with the key of {}: another key signed it (a CA made anew under the same \
             name?)",
            named()
        ));
    }
    Ok(())
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

/// Why a TLS listener's server config cannot be built: the key of its `tls:` map whose file is at fault, and what is
/// wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ListenerTlsError {
    /// `cert`, `key`, `client_auth`, `client_ca` or `crl`.
    pub key: &'static str,
    /// What is wrong, naming the file.
    pub message: String,
}

/// The server config of a TLS listener. Untrusted, expired, revoked or wrong-usage client certificates
/// fail in the handshake.
pub fn server_config(files: &ListenerFiles<'_>) -> Result<Arc<ServerConfig>, ListenerTlsError> {
    let error = |key: &'static str| move |message: String| ListenerTlsError { key, message };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| error("cert")(e.to_string()))?;
    let builder = match (files.client_auth, files.client_ca) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (_, None) => return Err(error("client_auth")("client_auth needs client_ca".to_owned())),
        (mode, Some(ca)) => {
            let ca_certs = load_certs(ca).map_err(error("client_ca"))?;
            let mut roots = RootCertStore::empty();
            for cert in &ca_certs {
                roots
                    .add(cert.clone())
                    .map_err(|e| error("client_ca")(format!("{}: not a usable CA certificate: {e}", ca.display())))?;
            }
            let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            if let Some(crl) = files.crl {
                verifier = verifier.with_crls(load_crls(crl, ca, &ca_certs).map_err(error("crl"))?);
            }
            if mode == ClientAuth::Optional {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier.build().map_err(|e| match (e, files.crl) {
                (VerifierBuilderError::InvalidCrl(e), Some(crl)) => {
                    error("crl")(format!("{}: rustls cannot use it: {e:?}", crl.display()))
                }
                (e, _) => error("client_ca")(format!("{}: {e}", ca.display())),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(load_certs(files.cert).map_err(error("cert"))?, load_key(files.key).map_err(error("key"))?)
        .map_err(|e| {
            error("cert")(format!(
                "{} and {} do not form a usable certificate: {e}",
                files.cert.display(),
                files.key.display()
            ))
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
