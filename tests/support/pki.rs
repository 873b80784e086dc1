//! Certificate making for tests and benches, with rcgen (ECDSA P-256): a certificate authority that writes its
//! certificate as PEM and issues leaves (each written as `NAME.pem` and `NAME.key`), and the parameters of a server
//! leaf and of a client leaf.
//!
//! Shared by the integration tests (`tests/suite/common/pki.rs`, which builds every certificate the TLS tests use
//! on it) and the load harness (`benches/load/certificates.rs`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate authority that signs leaves (and CRLs).
pub struct Authority {
    /// The CA certificate and its key, to sign more than leaves with (a CRL).
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
    /// The CA certificate, PEM.
    pub pem: PathBuf,
}

impl Authority {
    /// A self-signed CA called `name`, its certificate written to `dir/FILE.pem`.
    pub fn new(dir: &Path, file: &str, name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&[(DnType::CommonName, name), (DnType::OrganizationName, "tollgate tests")]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        let pem = dir.join(format!("{file}.pem"));
        std::fs::write(&pem, cert.pem()).expect("write CA");
        Self { cert, key, pem }
    }

    /// The CA certificate, DER: a root to trust.
    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// Signs `params` (a fresh key) and writes `NAME.pem` / `NAME.key` into `dir`.
    pub fn issue(&self, dir: &Path, file: &str, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign leaf");
        let (pem, key_path) = (dir.join(format!("{file}.pem")), dir.join(format!("{file}.key")));
        std::fs::write(&pem, cert.pem()).expect("write leaf");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        Leaf { der: cert.der().clone(), key_der: key.serialize_der(), pem, key: key_path }
    }
}

/// An issued certificate with its key.
pub struct Leaf {
    /// Certificate, DER.
    pub der: CertificateDer<'static>,
    key_der: Vec<u8>,
    /// Certificate, PEM.
    pub pem: PathBuf,
    /// Private key, PEM (PKCS#8).
    pub key: PathBuf,
}

impl Leaf {
    /// The chain to present: the leaf alone.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.der.clone()]
    }

    /// The private key, DER (PKCS#8).
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

/// A distinguished name of `parts`, in order.
fn dn(parts: &[(DnType, &str)]) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    for (kind, value) in parts {
        name.push(kind.clone(), *value);
    }
    name
}

/// `text` as an IA5 string (a SAN e-mail, URI or DNS name).
pub fn ia5(text: &str) -> rcgen::Ia5String {
    text.try_into().expect("IA5 string")
}

/// A client leaf: clientAuth usage, the given subject and SANs.
pub fn client_params(subject: &[(DnType, &str)], sans: Vec<SanType>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(subject);
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// A server leaf for `names` (DNS names; `127.0.0.1` becomes an IP SAN).
pub fn server_params(names: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&[(DnType::CommonName, names[0])]);
    params.subject_alt_names = names
        .iter()
        .map(|name| match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(ia5(name)),
        })
        .collect();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params
}
