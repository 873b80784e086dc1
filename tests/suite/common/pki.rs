//! Test certificates, made with rcgen (ECDSA P-256): a CA, a server leaf for `localhost`/`127.0.0.1`, client
//! leaves naming their principal by SAN e-mail, SAN URI or CN (team in the OU), and the bad kinds a TLS listener
//! must refuse: expired, not yet valid, revoked (by a CRL the CA signs), wrong usage, and one from an untrusted CA.
//!
//! Every certificate and key is written as PEM into the bundle's temp dir: `NAME.pem` and `NAME.key`.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, KeyIdMethod, RevocationReason, RevokedCertParams,
    SanType, SerialNumber,
};

use super::tls::client_config;

/// Certificate making, shared with the load harness.
#[path = "../../support/pki.rs"]
mod shared;

use shared::ia5;
pub use shared::{client_params, server_params, Authority, Leaf};

/// The principal names the good client certificates carry.
pub const EMAIL: &str = "alice@corp.example";
pub const EMAIL_TEAM: &str = "backend";
pub const URI: &str = "spiffe://corp.example/ns/ci/sa/builder";
pub const URI_TEAM: &str = "platform";
pub const CN: &str = "build-bot";
pub const CN_TEAM: &str = "ops";

/// Every certificate the TLS tests use, in one temp dir.
pub struct Pki {
    /// Holds the files: they are removed when the bundle is dropped.
    _dir: tempfile::TempDir,
    /// Signs the server leaf, the client leaves and the CRL.
    pub ca: Authority,
    /// A CA no config trusts.
    pub rogue_ca: Authority,
    /// `localhost` and `127.0.0.1`, serverAuth.
    pub server: Leaf,
    /// Valid only for `other.test` (signed by `ca`).
    pub other_host: Leaf,
    /// `localhost` and `127.0.0.1` again, signed by `rogue_ca`: the certificate a rotation moves to.
    pub rotated_server: Leaf,
    /// SAN e-mail `EMAIL`, CN `alice`, OU `EMAIL_TEAM`.
    pub client_email: Leaf,
    /// SAN URI `URI`, CN `builder`, OU `URI_TEAM`.
    pub client_uri: Leaf,
    /// CN `CN`, OU `CN_TEAM`, no SAN.
    pub client_cn: Leaf,
    /// Not valid after 2001.
    pub expired: Leaf,
    /// Not valid before 2090.
    pub not_yet_valid: Leaf,
    /// Listed in `crl`.
    pub revoked: Leaf,
    /// serverAuth only: not a client certificate.
    pub wrong_usage: Leaf,
    /// Signed by `rogue_ca`.
    pub untrusted: Leaf,
    /// `ca`'s CRL revoking `revoked`, PEM.
    pub crl: PathBuf,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("pki temp dir");
        let d = dir.path();
        let ca = Authority::new(d, "ca", "tollgate test CA");
        let rogue_ca = Authority::new(d, "rogue-ca", "rogue CA");
        let server = ca.issue(d, "server", server_params(&["localhost", "127.0.0.1"]));
        let other_host = ca.issue(d, "other-host", server_params(&["other.test"]));
        let rotated_server = rogue_ca.issue(d, "rotated-server", server_params(&["localhost", "127.0.0.1"]));
        let email = |cn: &str| -> Vec<SanType> { vec![SanType::Rfc822Name(ia5(&format!("{cn}@corp.example")))] };
        let client_email = ca.issue(
            d,
            "client-email",
            client_params(
                &[(DnType::CommonName, "alice"), (DnType::OrganizationalUnitName, EMAIL_TEAM)],
                email("alice"),
            ),
        );
        let client_uri = ca.issue(
            d,
            "client-uri",
            client_params(
                &[(DnType::CommonName, "builder"), (DnType::OrganizationalUnitName, URI_TEAM)],
                vec![SanType::URI(ia5(URI))],
            ),
        );
        let client_cn = ca.issue(
            d,
            "client-cn",
            client_params(&[(DnType::CommonName, CN), (DnType::OrganizationalUnitName, CN_TEAM)], Vec::new()),
        );
        let mut params = client_params(&[(DnType::CommonName, "expired")], email("expired"));
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        let expired = ca.issue(d, "expired", params);
        let mut params = client_params(&[(DnType::CommonName, "future")], email("future"));
        params.not_before = rcgen::date_time_ymd(2090, 1, 1);
        params.not_after = rcgen::date_time_ymd(2091, 1, 1);
        let not_yet_valid = ca.issue(d, "not-yet-valid", params);
        let revoked_serial = SerialNumber::from_slice(&[0x0b, 0xad, 0xc0, 0xde]);
        let mut params = client_params(&[(DnType::CommonName, "revoked")], email("revoked"));
        params.serial_number = Some(revoked_serial.clone());
        let revoked = ca.issue(d, "revoked", params);
        let mut params = client_params(&[(DnType::CommonName, "server-only")], email("server-only"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let wrong_usage = ca.issue(d, "wrong-usage", params);
        let untrusted =
            rogue_ca.issue(d, "untrusted", client_params(&[(DnType::CommonName, "mallory")], email("mallory")));
        let crl = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2090, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: revoked_serial,
                revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&ca.cert, &ca.key)
        .expect("sign CRL");
        let crl_path = d.join("clients.crl");
        std::fs::write(&crl_path, crl.pem().expect("CRL PEM")).expect("write CRL");
        Self {
            _dir: dir,
            ca,
            rogue_ca,
            server,
            other_host,
            rotated_server,
            client_email,
            client_uri,
            client_cn,
            expired,
            not_yet_valid,
            revoked,
            wrong_usage,
            untrusted,
            crl: crl_path,
        }
    }

    /// A rustls client config that trusts `ca`, presenting `client` when given.
    pub fn client_config(&self, client: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
        let identity = client.map(|leaf| (leaf.chain(), leaf.private_key()));
        Arc::new(client_config(vec![self.ca.der()], identity, rustls::DEFAULT_VERSIONS).expect("client config"))
    }
}
