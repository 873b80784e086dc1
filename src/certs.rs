//! Certificate tooling: ECDSA P-256 CAs and leaf certificates for the TLS listener and mTLS clients.
//!
//! Outside the request flow: `tollgate ca init` and `tollgate cert server|client` call [`init_ca`], [`server_cert`]
//! and [`client_cert`], which write PEM files (keys 0600, never overwritten without `force`). [`Ca::issue`] is the
//! one signing path, so interception mints its short-lived leaves from the same [`Ca`].

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

/// How long `server_cert` leaves are valid.
pub const SERVER_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// How long `client_cert` leaves are valid.
pub const CLIENT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 60 * 60);
/// How long a CA made by `Ca::generate` is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// The SAN URI of a client certificate is this followed by the user name.
pub const SPIFFE_USER_PREFIX: &str = "spiffe://tollgate/user/";

/// Leaves start this long in the past, so a client whose clock runs a little behind still accepts them.
const BACKDATE: Duration = Duration::from_secs(60 * 60);
/// Upper bound of a common name (RFC 5280 `ub-common-name`); user and team names are held to it too.
const MAX_NAME: usize = 64;

/// What went wrong making, loading or writing a certificate, naming the file or input at fault.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// An output file exists and `force` was not given.
    #[error("{} already exists: pass --force to overwrite it", path.display())]
    Exists {
        /// The file that exists.
        path: PathBuf,
    },
    /// Reading, creating or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A CA certificate or key file does not hold what it should.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Generating a key or signing a certificate failed.
    #[error("generating the {what}: {source}")]
    Generate {
        /// What was being made ("CA certificate", "leaf key", …).
        what: &'static str,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// A name, user or team given on the command line cannot go into a certificate (a usage error).
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// Which input ("--name", "--user", "--team").
        what: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The system clock is outside what a certificate can encode.
    #[error("the system clock is unusable for certificate validity: {0}")]
    Clock(String),
}

/// Which CA `init_ca` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaKind {
    /// `tollgate-ca.pem`/`.key`: signs the TLS listener's certificate and intercepted leaves (one CA for clients
    /// to trust).
    Tollgate,
    /// `clients-ca.pem`/`.key`: signs mTLS client certificates.
    Clients,
}

impl CaKind {
    /// The file stem in the certificate directory.
    pub fn file_stem(self) -> &'static str {
        match self {
            CaKind::Tollgate => "tollgate-ca",
            CaKind::Clients => "clients-ca",
        }
    }

    fn common_name(self) -> &'static str {
        match self {
            CaKind::Tollgate => "tollgate CA",
            CaKind::Clients => "tollgate clients CA",
        }
    }
}

/// A certificate authority: its certificate and key, ready to sign leaves.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
    /// The CA certificate as rcgen needs it to sign: subject name and key identifier taken from the real
    /// certificate, so a leaf's issuer and authority key identifier match it byte for byte.
    issuer: rcgen::Certificate,
    key: KeyPair,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("Ca").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

impl Ca {
    /// Makes a new self-signed CA with an ECDSA P-256 key, valid for [`CA_VALIDITY`], that may sign leaves only.
    pub fn generate(common_name: &str) -> Result<Ca, CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|source| CertError::Generate { what: "CA key", source })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.distinguished_name.push(DnType::OrganizationName, "tollgate");
        // Path length 0: this CA signs leaves, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.custom_extensions =
            vec![key_usage(&[KeyUsageBit::DigitalSignature, KeyUsageBit::KeyCertSign, KeyUsageBit::CrlSign])];
        params.serial_number = Some(random_serial());
        set_validity(&mut params, CA_VALIDITY)?;
        let cert = params.self_signed(&key).map_err(|source| CertError::Generate { what: "CA certificate", source })?;
        // Go through the same parsing as a loaded CA, so both sign identically.
        let generated = Path::new("(generated CA)");
        Ca::from_pem(&cert.pem(), &key.serialize_pem(), generated, generated)
    }

    /// Loads a CA from a PEM certificate (the first one in the file) and its PKCS#8 PEM key; checks that the
    /// certificate is a CA and that the key is its key.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Ca, CertError> {
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        Ca::from_pem(&cert_pem, &key_pem, cert_path, key_path)
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Signs a new leaf with a fresh ECDSA P-256 key and a random serial; returns `(cert_pem, key_pem)`. The
    /// certificate PEM holds the leaf only: append [`Ca::cert_pem`] for a full chain.
    pub fn issue(&self, leaf: &Leaf) -> Result<(String, String), CertError> {
        let (cert, key) = self.sign(leaf)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// [`Ca::issue`] in DER, as rustls takes it: `(leaf certificate, PKCS#8 key)`, no PEM round trip.
    pub fn issue_der(&self, leaf: &Leaf) -> Result<(CertificateDer<'static>, PrivatePkcs8KeyDer<'static>), CertError> {
        let (cert, key) = self.sign(leaf)?;
        Ok((cert.der().clone(), PrivatePkcs8KeyDer::from(key.serialize_der())))
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Signs a leaf for a key held elsewhere (the public half of a verified CSR, `tollgate login --cert`), with the
    /// same extensions and a random serial as [`Ca::issue`]; `subject_public_key_info` is that key's DER
    /// SubjectPublicKeyInfo (for the key identifier). Returns the certificate PEM (the leaf only).
    pub fn issue_for_key(
        &self,
        leaf: &Leaf,
        public_key: &impl rcgen::PublicKeyData,
        subject_public_key_info: &[u8],
    ) -> Result<String, CertError> {
        let params = leaf_params(leaf, subject_public_key_info)?;
        let cert = params
            .signed_by(public_key, &self.issuer, &self.key)
            .map_err(|source| CertError::Generate { what: "leaf certificate", source })?;
        Ok(cert.pem())
    }

    fn sign(&self, leaf: &Leaf) -> Result<(rcgen::Certificate, KeyPair), CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|source| CertError::Generate { what: "leaf key", source })?;
        let params = leaf_params(leaf, &key.public_key_der())?;
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(|source| CertError::Generate { what: "leaf certificate", source })?;
        Ok((cert, key))
    }

    /// Writes the certificate (0644) and the key (0600); refuses to replace either unless `force`.
    pub fn write(&self, cert_path: &Path, key_path: &Path, force: bool) -> Result<(), CertError> {
        refuse_existing(&[cert_path, key_path], force)?;
        write_file(key_path, &self.key_pem, KEY_MODE, force)?;
        write_file(cert_path, &self.cert_pem, CERT_MODE, force)
    }

    fn from_pem(cert_pem: &str, key_pem: &str, cert_path: &Path, key_path: &Path) -> Result<Ca, CertError> {
        let invalid = |path: &Path, reason: String| CertError::Invalid { path: path.to_owned(), reason };
        let der = first_certificate(cert_pem).ok_or_else(|| invalid(cert_path, "no PEM CERTIFICATE in it".into()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)
            .map_err(|error| invalid(cert_path, format!("not an X.509 certificate: {error}")))?;
        let params = CertificateParams::from_ca_cert_der(&der)
            .map_err(|error| invalid(cert_path, format!("unusable as a CA: {error}")))?;
        if !matches!(params.is_ca, IsCa::Ca(_)) {
            return Err(invalid(cert_path, "not a CA certificate (basicConstraints CA:TRUE is missing)".into()));
        }
        let key = KeyPair::from_pem(key_pem).map_err(|error| {
            let hint = "\"BEGIN PRIVATE KEY\"; convert with `openssl pkcs8 -topk8 -nocrypt`";
            invalid(key_path, format!("not a PKCS#8 PEM private key ({hint}): {error}"))
        })?;
        if key.public_key_der() != parsed.public_key().raw {
            return Err(invalid(key_path, format!("this key does not belong to {}", cert_path.display())));
        }
        // rcgen signs with a `Certificate`; this one is a throwaway self-signature over the parsed CA parameters,
        // of which only the subject name and the key identifier are used.
        let issuer = params.self_signed(&key).map_err(|source| CertError::Generate { what: "CA issuer", source })?;
        Ok(Ca { cert_pem: cert_pem.to_owned(), cert_der: der, key_pem: key_pem.to_owned(), issuer, key })
    }
}

/// What a leaf certificate names and what it is for; [`Leaf::server`] and [`Leaf::client`] check their input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// Subject CN.
    pub common_name: String,
    /// Subject OU (tollgate's team for client certificates).
    pub organizational_unit: Option<String>,
    /// Subject alternative names.
    pub subject_alt_names: Vec<San>,
    /// The extended key usage.
    pub usage: Usage,
    /// Time from now until the certificate expires.
    pub validity: Duration,
}

/// A subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    /// dNSName.
    Dns(String),
    /// iPAddress.
    Ip(IpAddr),
    /// rfc822Name (an email address).
    Email(String),
    /// uniformResourceIdentifier.
    Uri(String),
}

impl San {
    fn to_rcgen(&self) -> Result<SanType, rcgen::Error> {
        Ok(match self {
            San::Dns(name) => SanType::DnsName(name.as_str().try_into()?),
            San::Ip(ip) => SanType::IpAddress(*ip),
            San::Email(email) => SanType::Rfc822Name(email.as_str().try_into()?),
            San::Uri(uri) => SanType::URI(uri.as_str().try_into()?),
        })
    }
}

/// The extended key usage of a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// serverAuth: a TLS server (the listener, an intercepted host).
    Server,
    /// clientAuth: an mTLS client.
    Client,
}

impl Leaf {
    /// A server leaf for these DNS names and IP addresses (CN = the first name, else the first address), valid
    /// for [`SERVER_VALIDITY`]. Names are lowercased; `*.example.com` is allowed.
    pub fn server(names: &[String], ips: &[IpAddr]) -> Result<Leaf, CertError> {
        let names = names.iter().map(|name| dns_name(name)).collect::<Result<Vec<_>, _>>()?;
        let common_name = match (names.first(), ips.first()) {
            (Some(name), _) => name.clone(),
            (None, Some(ip)) => ip.to_string(),
            (None, None) => {
                return Err(CertError::InvalidName {
                    what: "--name",
                    value: String::new(),
                    reason: "a server certificate needs at least one name or IP address",
                })
            }
        };
        let mut subject_alt_names: Vec<San> = names.into_iter().map(San::Dns).collect();
        subject_alt_names.extend(ips.iter().copied().map(San::Ip));
        Ok(Leaf {
            common_name,
            organizational_unit: None,
            subject_alt_names,
            usage: Usage::Server,
            validity: SERVER_VALIDITY,
        })
    }

    /// A client leaf for `user` (CN; SAN email when it holds an '@'; SAN URI `spiffe://tollgate/user/<user>`) in
    /// `team` (OU), valid for [`CLIENT_VALIDITY`], so `auth.mtls.identity` `san_email`, `san_uri` and `cn` all work.
    pub fn client(user: &str, team: Option<&str>) -> Result<Leaf, CertError> {
        check_user(user)?;
        if let Some(team) = team {
            check_team(team)?;
        }
        let mut subject_alt_names = Vec::new();
        if user.contains('@') {
            subject_alt_names.push(San::Email(user.to_owned()));
        }
        subject_alt_names.push(San::Uri(format!("{SPIFFE_USER_PREFIX}{user}")));
        Ok(Leaf {
            common_name: user.to_owned(),
            organizational_unit: team.map(str::to_owned),
            subject_alt_names,
            usage: Usage::Client,
            validity: CLIENT_VALIDITY,
        })
    }
}

/// The files a command wrote, and what to configure next.
#[derive(Debug)]
pub struct Written {
    /// Files written, in order.
    pub files: Vec<PathBuf>,
    /// Things done that were not asked for, e.g. a CA created because it was missing.
    pub notes: Vec<String>,
    next_steps: String,
}

impl Written {
    /// What to configure next: listener YAML and client settings, with the paths just written.
    pub fn next_steps(&self) -> &str {
        &self.next_steps
    }
}

impl fmt::Display for Written {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for file in &self.files {
            writeln!(f, "wrote {}", file.display())?;
        }
        for note in &self.notes {
            writeln!(f, "{note}")?;
        }
        writeln!(f)?;
        f.write_str(&self.next_steps)
    }
}

/// Creates a CA in `dir` (created when missing): `tollgate-ca.pem`/`.key` or `clients-ca.pem`/`.key`.
pub fn init_ca(dir: &Path, kind: CaKind, force: bool) -> Result<Written, CertError> {
    let (cert_path, key_path) = ca_paths(dir, kind);
    refuse_existing(&[&cert_path, &key_path], force)?;
    let replaced = exists(&cert_path);
    create_dir(dir)?;
    let ca = Ca::generate(kind.common_name())?;
    ca.write(&cert_path, &key_path, force)?;
    let mut notes = Vec::new();
    if replaced {
        notes.push(format!(
            "replaced the previous CA: certificates it signed no longer verify; reissue them ({})",
            match kind {
                CaKind::Tollgate => "`tollgate cert server --force`",
                CaKind::Clients => "`tollgate cert client --force`",
            }
        ));
    }
    let shown = shown_dir(dir);
    let next_steps = match kind {
        CaKind::Tollgate => tollgate_ca_steps(&shown),
        CaKind::Clients => clients_ca_steps(&shown),
    };
    Ok(Written { files: vec![key_path, cert_path], notes, next_steps })
}

/// Writes `server.pem` (leaf, then the CA certificate) and `server.key` in `dir`, signed by `tollgate-ca` there
/// (created when missing, and noted). The CA is never replaced: `force` applies to the server files only.
pub fn server_cert(dir: &Path, names: &[String], ips: &[IpAddr], force: bool) -> Result<Written, CertError> {
    let leaf = Leaf::server(names, ips)?;
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server.key");
    refuse_existing(&[&cert_path, &key_path], force)?;
    let mut written = Written { files: Vec::new(), notes: Vec::new(), next_steps: String::new() };
    let ca = load_or_create_ca(dir, CaKind::Tollgate, &mut written)?;
    issue_to(&ca, &leaf, &cert_path, &key_path, force, &mut written)?;
    let host = match (leaf.subject_alt_names.first(), ips.first()) {
        (Some(San::Dns(name)), _) => name.replace('*', "proxy"),
        (_, Some(IpAddr::V6(ip))) => format!("[{ip}]"),
        _ => leaf.common_name.clone(),
    };
    written.next_steps = server_steps(&shown_dir(dir), &host);
    Ok(written)
}

/// Writes `<user>.pem` (leaf, then the CA certificate) and `<user>.key` in `dir` (the user name made safe as a
/// file name), signed by `clients-ca` there (created when missing, and noted).
pub fn client_cert(dir: &Path, user: &str, team: Option<&str>, force: bool) -> Result<Written, CertError> {
    let leaf = Leaf::client(user, team)?;
    let stem = client_file_stem(user)?;
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    refuse_existing(&[&cert_path, &key_path], force)?;
    let mut written = Written { files: Vec::new(), notes: Vec::new(), next_steps: String::new() };
    let ca = load_or_create_ca(dir, CaKind::Clients, &mut written)?;
    issue_to(&ca, &leaf, &cert_path, &key_path, force, &mut written)?;
    written.next_steps = client_steps(&shown_dir(dir), user, &stem);
    Ok(written)
}

// ---- helpers ----

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;

fn ca_paths(dir: &Path, kind: CaKind) -> (PathBuf, PathBuf) {
    let stem = kind.file_stem();
    (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")))
}

/// Loads the CA of `kind` from `dir`, or creates it there when neither of its files exists.
fn load_or_create_ca(dir: &Path, kind: CaKind, written: &mut Written) -> Result<Ca, CertError> {
    let (cert_path, key_path) = ca_paths(dir, kind);
    if exists(&cert_path) || exists(&key_path) {
        // One file without the other is an error (reading the missing one names it), not a reason to replace.
        return Ca::load(&cert_path, &key_path);
    }
    create_dir(dir)?;
    let ca = Ca::generate(kind.common_name())?;
    ca.write(&cert_path, &key_path, false)?;
    written.notes.push(format!(
        "created the CA {} (it was missing; `tollgate ca init{}` makes it explicitly)",
        cert_path.display(),
        if kind == CaKind::Clients { " --client" } else { "" }
    ));
    written.files.extend([key_path, cert_path]);
    Ok(ca)
}

fn issue_to(
    ca: &Ca,
    leaf: &Leaf,
    cert_path: &Path,
    key_path: &Path,
    force: bool,
    written: &mut Written,
) -> Result<(), CertError> {
    let (cert_pem, key_pem) = ca.issue(leaf)?;
    write_file(key_path, &key_pem, KEY_MODE, force)?;
    write_file(cert_path, &format!("{cert_pem}{}", ca.cert_pem()), CERT_MODE, force)?;
    written.files.extend([key_path.to_owned(), cert_path.to_owned()]);
    Ok(())
}

/// Checks every output before anything is written, so a refused run leaves no half-made set behind.
fn refuse_existing(paths: &[&Path], force: bool) -> Result<(), CertError> {
    if force {
        return Ok(());
    }
    match paths.iter().find(|path| exists(path)) {
        Some(path) => Err(CertError::Exists { path: path.to_path_buf() }),
        None => Ok(()),
    }
}

fn exists(path: &Path) -> bool {
    // symlink_metadata: a dangling symlink still occupies the name.
    path.symlink_metadata().is_ok()
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io { path: dir.to_owned(), source })
}

/// Creates `path` with `mode` and writes `contents`. With `force` an existing file is removed first: opening it
/// for truncation would keep its old mode, and a key must not stay world-readable.
fn write_file(path: &Path, contents: &str, mode: u32, force: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io { path: path.to_owned(), source };
    if force {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io(error)),
        }
    }
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|error| {
        if error.kind() == std::io::ErrorKind::AlreadyExists {
            CertError::Exists { path: path.to_owned() }
        } else {
            io(error)
        }
    })?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io { path: path.to_owned(), source })
}

fn first_certificate(pem: &str) -> Option<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes()).next().and_then(Result::ok)
}

/// A bit of RFC 5280's KeyUsage named bit list.
/// The parameters of a leaf certificate for the key whose SubjectPublicKeyInfo is `subject_public_key_info`.
fn leaf_params(leaf: &Leaf, subject_public_key_info: &[u8]) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    // An empty common name means none: a DNS name longer than a CN may be (64) goes in the SAN only.
    if !leaf.common_name.is_empty() {
        params.distinguished_name.push(DnType::CommonName, leaf.common_name.as_str());
    }
    if let Some(unit) = &leaf.organizational_unit {
        params.distinguished_name.push(DnType::OrganizationalUnitName, unit.as_str());
    }
    // An empty subject obliges a critical SAN (RFC 5280 §4.2.1.6), which rcgen 0.13 cannot mark: name the issuing
    // organisation instead, as the CA's subject does.
    if leaf.common_name.is_empty() && leaf.organizational_unit.is_none() {
        params.distinguished_name.push(DnType::OrganizationName, "tollgate");
    }
    params.subject_alt_names = leaf
        .subject_alt_names
        .iter()
        .map(San::to_rcgen)
        .collect::<Result<_, _>>()
        .map_err(|source| CertError::Generate { what: "subject alternative names", source })?;
    // Not rcgen's `IsCa::ExplicitNoCa`: it encodes `cA FALSE`, a DEFAULT value DER forbids writing, which strict
    // parsers (Python's cryptography) refuse. `NoCa` writes neither basicConstraints nor the subject key
    // identifier, so both come here, in DER.
    params.is_ca = IsCa::NoCa;
    params.custom_extensions = vec![
        key_usage(&[KeyUsageBit::DigitalSignature]),
        end_entity_basic_constraints(),
        subject_key_identifier(subject_public_key_info),
    ];
    params.extended_key_usages = vec![match leaf.usage {
        Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    set_validity(&mut params, leaf.validity)?;
    Ok(params)
}

#[derive(Debug, Clone, Copy)]
enum KeyUsageBit {
    DigitalSignature = 0,
    KeyCertSign = 5,
    CrlSign = 6,
}

/// keyUsage (RFC 5280 §4.2.1.3), critical. Written here rather than by rcgen 0.13, which encodes all nine named bits
/// (`03 03 07 80 00` for digitalSignature alone): DER ends a named bit list at its last set bit (X.690 §11.2.2), so
/// that is `03 02 07 80`.
fn key_usage(bits: &[KeyUsageBit]) -> CustomExtension {
    // Named bit n is bit 15 - n of this big-endian pair of octets.
    let flags = bits.iter().fold(0u16, |flags, &bit| flags | (0x8000 >> bit as u16));
    let used_bits = 16 - flags.trailing_zeros() as usize;
    let octets = used_bits.div_ceil(8);
    let unused_bits = octets * 8 - used_bits;
    // BIT STRING: tag, length (the unused-bits octet and the bits), unused-bits count, bits.
    let mut value = vec![0x03, 1 + octets as u8, unused_bits as u8];
    value.extend_from_slice(&flags.to_be_bytes()[..octets]);
    let mut extension = CustomExtension::from_oid_content(&[2, 5, 29, 15], value);
    extension.set_criticality(true);
    extension
}

/// basicConstraints of a leaf, critical: an empty SEQUENCE, which is `cA FALSE` in DER (the default is left out).
/// Kept rather than dropped, so no verifier can take a leaf for a CA; it is what OpenSSL and Go write for `CA:FALSE`
/// and what public leaf certificates carry, so every TLS stack reads it.
fn end_entity_basic_constraints() -> CustomExtension {
    let mut extension = CustomExtension::from_oid_content(&[2, 5, 29, 19], vec![0x30, 0x00]);
    extension.set_criticality(true);
    extension
}

/// subjectKeyIdentifier (RFC 5280 §4.2.1.2: SHOULD be in leaves), non-critical: an OCTET STRING of the first 20
/// bytes of the SHA-256 of the key's SubjectPublicKeyInfo, as rcgen derives it for CAs.
fn subject_key_identifier(subject_public_key_info: &[u8]) -> CustomExtension {
    let digest = Sha256::digest(subject_public_key_info);
    let mut value = vec![0x04, 20];
    value.extend_from_slice(&digest[..20]);
    CustomExtension::from_oid_content(&[2, 5, 29, 14], value)
}

/// 16 random bytes, positive and without a leading zero byte so the DER length is fixed.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// Sets `not_before` to [`BACKDATE`] ago and `not_after` to `lifetime` from now.
fn set_validity(params: &mut CertificateParams, lifetime: Duration) -> Result<(), CertError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|error| CertError::Clock(error.to_string()))?;
    let at = |seconds: u64| {
        i64::try_from(seconds)
            .ok()
            .and_then(|seconds| x509_parser::time::ASN1Time::from_timestamp(seconds).ok())
            .map(|time| time.to_datetime())
            .ok_or_else(|| CertError::Clock(format!("{seconds} seconds after 1970 is out of range")))
    };
    let now = now.as_secs();
    params.not_before = at(now.saturating_sub(BACKDATE.as_secs()))?;
    params.not_after = at(now.saturating_add(lifetime.as_secs()))?;
    Ok(())
}

/// A DNS name for a server certificate: ASCII labels of letters, digits and '-', an optional leading `*.`.
fn dns_name(name: &str) -> Result<String, CertError> {
    let invalid = |reason| CertError::InvalidName { what: "--name", value: name.to_owned(), reason };
    if name.parse::<IpAddr>().is_ok() {
        return Err(invalid("this is an IP address: pass it with --ip"));
    }
    let lower = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let rest = lower.strip_prefix("*.").unwrap_or(&lower);
    if rest.is_empty() || lower.len() > 253 {
        return Err(invalid("a DNS name needs 1 to 253 characters"));
    }
    for label in rest.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(invalid("every label needs 1 to 63 characters"));
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(invalid("use letters, digits, '-' and '.' (write IDNs in punycode; '*' only as '*.' first)"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("a label cannot start or end with '-'"));
        }
    }
    Ok(lower)
}

/// User names go into the CN, an rfc822Name and a URI path, so they are held to URI-safe ASCII.
fn check_user(user: &str) -> Result<(), CertError> {
    let invalid = |reason| CertError::InvalidName { what: "--user", value: user.to_owned(), reason };
    if user.is_empty() || user.len() > MAX_NAME {
        return Err(invalid("a user name needs 1 to 64 characters"));
    }
    if !user.bytes().all(|b| b.is_ascii_alphanumeric() || b"._@+-~".contains(&b)) {
        return Err(invalid("use letters, digits and . _ @ + - ~"));
    }
    if user.contains('@') && (user.starts_with('@') || user.ends_with('@') || user.matches('@').count() > 1) {
        return Err(invalid("an email address needs one '@' between a local part and a domain"));
    }
    Ok(())
}

fn check_team(team: &str) -> Result<(), CertError> {
    let invalid = |reason| CertError::InvalidName { what: "--team", value: team.to_owned(), reason };
    if team.is_empty() || team.len() > MAX_NAME {
        return Err(invalid("a team name needs 1 to 64 bytes"));
    }
    if team.chars().any(char::is_control) {
        return Err(invalid("a team name cannot hold control characters"));
    }
    Ok(())
}

/// The file stem of a client's certificate: the user name (already URI-safe ASCII) with a leading '.' replaced,
/// refused when it would overwrite a CA or the server files.
fn client_file_stem(user: &str) -> Result<String, CertError> {
    let stem = match user.strip_prefix('.') {
        Some(rest) => format!("_{rest}"),
        None => user.to_owned(),
    };
    if [CaKind::Tollgate.file_stem(), CaKind::Clients.file_stem(), "server"].contains(&stem.as_str()) {
        return Err(CertError::InvalidName {
            what: "--user",
            value: user.to_owned(),
            reason: "its files would replace a CA's or the server's",
        });
    }
    Ok(stem)
}

/// The directory as the next-steps text shows it: absolute, so the lines work from any working directory.
fn shown_dir(dir: &Path) -> String {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned()).display().to_string()
}

fn tollgate_ca_steps(dir: &str) -> String {
    format!(
        "The tollgate CA is {dir}/tollgate-ca.pem (its key {dir}/tollgate-ca.key stays secret).\n\
         It signs the TLS listener's certificate (`tollgate cert server --name NAME`) and intercepted leaves,\n\
         so clients trust this one certificate:\n\
         \x20 export NODE_EXTRA_CA_CERTS={dir}/tollgate-ca.pem          # Claude Code and other Node clients\n\
         \x20 # SSL_CERT_FILE replaces an OpenSSL client's default roots: point it at a bundle of the system roots\n\
         \x20 # plus this CA, e.g. cat /etc/ssl/certs/ca-certificates.crt {dir}/tollgate-ca.pem > tollgate-bundle.pem\n\
         \x20 curl --proxy-cacert {dir}/tollgate-ca.pem -x https://PROXY:3129 https://api.anthropic.com/\n"
    )
}

fn clients_ca_steps(dir: &str) -> String {
    format!(
        "The clients CA is {dir}/clients-ca.pem (its key {dir}/clients-ca.key stays secret).\n\
         It signs mTLS client certificates (`tollgate cert client --user U [--team T]`).\n\
         Require them on a TLS listener:\n\
         \x20 listeners:\n\
         \x20   - {{name: proxy-tls, bind: 0.0.0.0:3129, tls: {{cert: {dir}/server.pem, key: {dir}/server.key, \
         client_ca: {dir}/clients-ca.pem, client_auth: required}}}}\n"
    )
}

fn server_steps(dir: &str, host: &str) -> String {
    format!(
        "Serve TLS with it (tollgate.yaml):\n\
         \x20 listeners:\n\
         \x20   - {{name: proxy-tls, bind: 0.0.0.0:3129, tls: {{cert: {dir}/server.pem, key: {dir}/server.key}}}}\n\
         Clients trust {dir}/tollgate-ca.pem:\n\
         \x20 curl --proxy-cacert {dir}/tollgate-ca.pem -x https://{host}:3129 https://api.anthropic.com/\n\
         \x20 export HTTPS_PROXY=https://{host}:3129 NODE_EXTRA_CA_CERTS={dir}/tollgate-ca.pem   # Claude Code\n"
    )
}

fn client_steps(dir: &str, user: &str, stem: &str) -> String {
    // The principal is the whole SAN value, so `san_uri` would name `spiffe://tollgate/user/<user>`: suggest the
    // identity whose value is the bare user name.
    let identity = if user.contains('@') { "san_email" } else { "cn" };
    format!(
        "Listener side (tollgate.yaml): trust the clients CA and map the certificate to a user and team:\n\
         \x20 tls: {{cert: {dir}/server.pem, key: {dir}/server.key, client_ca: {dir}/clients-ca.pem, \
         client_auth: required}}\n\
         \x20 auth: {{mtls: {{identity: {identity}, team_from: ou}}}}   # san_email | san_uri | cn\n\
         Client side ({user}):\n\
         \x20 curl --proxy-cert {dir}/{stem}.pem --proxy-key {dir}/{stem}.key --proxy-cacert {dir}/tollgate-ca.pem \
         -x https://PROXY:3129 https://api.anthropic.com/\n\
         \x20 export CLAUDE_CODE_CLIENT_CERT={dir}/{stem}.pem CLAUDE_CODE_CLIENT_KEY={dir}/{stem}.key\n"
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::server::WebPkiClientVerifier;
    use rustls::RootCertStore;
    use rustls_pki_types::{ServerName, UnixTime};
    use x509_parser::prelude::{FromDer, X509Certificate};

    use super::*;

    fn der(pem: &str) -> CertificateDer<'static> {
        first_certificate(pem).expect("a PEM certificate")
    }

    fn roots(ca: &Ca) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(der(ca.cert_pem())).expect("the CA is a usable root");
        Arc::new(roots)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Verifies `leaf_pem` as a TLS server certificate for `name` with `ca` as the only root.
    fn verify_server(ca: &Ca, leaf_pem: &str, name: &str) -> Result<(), rustls::Error> {
        let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca), provider()).build().expect("verifier");
        let name = ServerName::try_from(name.to_owned()).expect("server name");
        verifier.verify_server_cert(&der(leaf_pem), &[], &name, &[], UnixTime::now()).map(|_| ())
    }

    fn verify_client(ca: &Ca, leaf_pem: &str) -> Result<(), rustls::Error> {
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca), provider()).build().expect("verifier");
        verifier.verify_client_cert(&der(leaf_pem), &[], UnixTime::now()).map(|_| ())
    }

    fn serial(pem: &str) -> Vec<u8> {
        let der = der(pem);
        let (_, cert) = X509Certificate::from_der(&der).expect("parses");
        cert.raw_serial().to_vec()
    }

    #[test]
    fn a_server_leaf_verifies_for_its_names_only() {
        let ca = Ca::generate("test CA").expect("CA");
        let leaf = Leaf::server(&["Proxy.Test".into(), "*.corp.test".into()], &["127.0.0.1".parse().expect("ip")])
            .expect("leaf");
        let (cert_pem, _) = ca.issue(&leaf).expect("issued");
        verify_server(&ca, &cert_pem, "proxy.test").expect("DNS name");
        verify_server(&ca, &cert_pem, "a.corp.test").expect("wildcard");
        verify_server(&ca, &cert_pem, "127.0.0.1").expect("IP address");
        assert!(verify_server(&ca, &cert_pem, "other.test").is_err());
        assert!(verify_server(&ca, &cert_pem, "corp.test").is_err(), "a wildcard never covers the apex");
        assert!(verify_client(&ca, &cert_pem).is_err(), "a serverAuth leaf is no client certificate");

        let leaf_der = der(&cert_pem);
        let ca_der = der(ca.cert_pem());
        let (_, cert) = X509Certificate::from_der(&leaf_der).expect("parses");
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).expect("parses");
        assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
        assert_eq!(cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()), Some("proxy.test"));
        let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        let expected = (SERVER_VALIDITY + BACKDATE).as_secs() as i64;
        assert!((expected - 5..=expected + 5).contains(&lifetime), "{lifetime}");
    }

    /// Where `der` differs from DER, as RustCrypto's x509-cert sees it: the certificate, and each extension through
    /// its typed value, decoded and encoded again must give back the same bytes, since DER has one encoding per value
    /// (x509-cert reads some non-DER, such as a DEFAULT value written out, but never writes it).
    fn der_differences(der: &[u8]) -> Vec<String> {
        use x509_cert::der::oid::AssociatedOid;
        use x509_cert::der::{Decode, Encode};
        use x509_cert::ext::pkix::{
            AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAltName, SubjectKeyIdentifier,
        };

        fn reencoded<'a, T: Decode<'a> + Encode>(bytes: &'a [u8]) -> Result<Vec<u8>, String> {
            let value = T::from_der(bytes).map_err(|error| error.to_string())?;
            value.to_der().map_err(|error| error.to_string())
        }

        let mut differences = Vec::new();
        let cert = match x509_cert::Certificate::from_der(der) {
            Ok(cert) => cert,
            Err(error) => return vec![format!("certificate: {error}")],
        };
        match cert.to_der() {
            Ok(again) if again == der => {}
            Ok(_) => differences.push("certificate: re-encodes differently".to_owned()),
            Err(error) => differences.push(format!("certificate: {error}")),
        }
        for extension in cert.tbs_certificate().extensions().map(Vec::as_slice).unwrap_or_default() {
            let (oid, value) = (extension.extn_id, extension.extn_value.as_bytes());
            let again = if oid == BasicConstraints::OID {
                reencoded::<BasicConstraints>(value)
            } else if oid == KeyUsage::OID {
                reencoded::<KeyUsage>(value)
            } else if oid == ExtendedKeyUsage::OID {
                reencoded::<ExtendedKeyUsage>(value)
            } else if oid == SubjectAltName::OID {
                reencoded::<SubjectAltName>(value)
            } else if oid == AuthorityKeyIdentifier::OID {
                reencoded::<AuthorityKeyIdentifier>(value)
            } else if oid == SubjectKeyIdentifier::OID {
                reencoded::<SubjectKeyIdentifier>(value)
            } else {
                Err("an extension tollgate does not write".to_owned())
            };
            match again {
                Ok(again) if again == value => {}
                Ok(again) => {
                    differences.push(format!("{oid}: {} re-encodes as {}", hex::encode(value), hex::encode(again)))
                }
                Err(error) => differences.push(format!("{oid}: {error}")),
            }
        }
        differences
    }

    /// The value of extension `oid` (dotted) in `pem`'s certificate, with its criticality.
    fn extension(pem: &str, oid: &str) -> Option<(bool, Vec<u8>)> {
        let der = der(pem);
        let (_, cert) = X509Certificate::from_der(&der).expect("parses");
        let found = cert.extensions().iter().find(|extension| extension.oid.to_id_string() == oid)?;
        Some((found.critical, found.value.to_vec()))
    }

    #[test]
    fn every_kind_of_certificate_is_der() {
        let ca = Ca::generate("test CA").expect("CA");
        let long_name = format!("{}.example.test", "a".repeat(63));
        let leaves = [
            Leaf::server(&["proxy.test".into(), "*.proxy.test".into()], &["127.0.0.1".parse().expect("ip")]),
            Leaf::server(&[], &["::1".parse().expect("ip")]),
            Leaf::client("alice@corp.example", Some("backend")),
            Leaf::client("bob", None),
            // An interception leaf for a name too long for a CN.
            Ok(Leaf {
                common_name: String::new(),
                organizational_unit: None,
                subject_alt_names: vec![San::Dns(long_name)],
                usage: Usage::Server,
                validity: SERVER_VALIDITY,
            }),
        ];
        assert_eq!(der_differences(ca.cert_der()), Vec::<String>::new(), "the CA");
        for leaf in leaves {
            let leaf = leaf.expect("leaf");
            let (cert, _) = ca.issue_der(&leaf).expect("issued");
            assert_eq!(der_differences(&cert), Vec::<String>::new(), "{leaf:?}");
        }
    }

    #[test]
    fn the_der_check_refuses_what_rcgen_writes_for_explicit_no_ca() {
        // rcgen 0.13's `ExplicitNoCa` and key usages, as tollgate's leaves were made before.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::new(vec!["proxy.test".to_owned()]).expect("params");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).expect("signed");
        let differences = der_differences(cert.der());
        assert!(differences.iter().any(|d| d == "2.5.29.19: 3003010100 re-encodes as 3000"), "{differences:?}");
        assert!(differences.iter().any(|d| d == "2.5.29.15: 0303078000 re-encodes as 03020780"), "{differences:?}");
    }

    #[test]
    fn leaves_and_cas_carry_their_constraints_and_usages_in_der() {
        let ca = Ca::generate("test CA").expect("CA");
        // cA TRUE, pathLenConstraint 0; digitalSignature, keyCertSign, cRLSign: bits 0, 5 and 6, one unused.
        assert_eq!(
            extension(ca.cert_pem(), "2.5.29.19"),
            Some((true, vec![0x30, 0x06, 0x01, 0x01, 0xff, 0x02, 0x01, 0x00]))
        );
        assert_eq!(extension(ca.cert_pem(), "2.5.29.15"), Some((true, vec![0x03, 0x02, 0x01, 0x86])));
        let (leaf, _) = ca.issue(&Leaf::server(&["proxy.test".into()], &[]).expect("leaf")).expect("issued");
        // cA FALSE is the DEFAULT, so an empty SEQUENCE; digitalSignature alone: bit 0, seven unused.
        assert_eq!(extension(&leaf, "2.5.29.19"), Some((true, vec![0x30, 0x00])));
        assert_eq!(extension(&leaf, "2.5.29.15"), Some((true, vec![0x03, 0x02, 0x07, 0x80])));
        let (critical, identifier) = extension(&leaf, "2.5.29.14").expect("a subject key identifier");
        assert!(!critical);
        assert_eq!(identifier.len(), 22, "an OCTET STRING of 20 bytes");

        let leaf_der = der(&leaf);
        let (_, cert) = X509Certificate::from_der(&leaf_der).expect("parses");
        assert!(!cert.is_ca());
        let (_, ca_cert) = X509Certificate::from_der(ca.cert_der()).expect("parses");
        assert!(ca_cert.is_ca());
    }

    #[test]
    fn serials_are_random() {
        let ca = Ca::generate("test CA").expect("CA");
        let leaf = Leaf::server(&["proxy.test".into()], &[]).expect("leaf");
        let first = serial(&ca.issue(&leaf).expect("issued").0);
        let second = serial(&ca.issue(&leaf).expect("issued").0);
        assert_eq!(first.len(), 16);
        assert_ne!(first, second);
        assert_ne!(first, serial(ca.cert_pem()));
    }

    #[test]
    fn a_client_leaf_verifies_as_a_client_only() {
        let ca = Ca::generate("clients").expect("CA");
        let (cert_pem, key_pem) = ca.issue(&Leaf::client("bob", Some("ops")).expect("leaf")).expect("issued");
        verify_client(&ca, &cert_pem).expect("client certificate");
        assert!(verify_server(&ca, &cert_pem, "bob").is_err());
        assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let leaf = Leaf::client("bob", None).expect("leaf");
        assert_eq!(leaf.subject_alt_names, vec![San::Uri("spiffe://tollgate/user/bob".into())], "no email without '@'");
    }

    #[test]
    fn a_loaded_ca_signs_like_the_generated_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert_path, key_path) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        let ca = Ca::generate("test CA").expect("CA");
        ca.write(&cert_path, &key_path, false).expect("written");
        let mode = |path: &Path| std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&key_path), 0o600);

        let loaded = Ca::load(&cert_path, &key_path).expect("loads");
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        let (cert_pem, _) = loaded.issue(&Leaf::server(&["proxy.test".into()], &[]).expect("leaf")).expect("issued");
        verify_server(&ca, &cert_pem, "proxy.test").expect("verifies against the CA as written");
    }

    #[test]
    fn load_refuses_a_foreign_key_and_a_leaf() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = |name: &str| dir.path().join(name);
        let (ca, other) = (Ca::generate("a").expect("CA"), Ca::generate("b").expect("CA"));
        ca.write(&path("a.pem"), &path("a.key"), false).expect("written");
        other.write(&path("b.pem"), &path("b.key"), false).expect("written");
        match Ca::load(&path("a.pem"), &path("b.key")) {
            Err(CertError::Invalid { path: at, reason }) => {
                assert_eq!(at, path("b.key"));
                assert!(reason.contains("does not belong"), "{reason}");
            }
            other => panic!("expected Invalid, got {other:?}"),
        }

        let (leaf_pem, leaf_key) = ca.issue(&Leaf::server(&["x.test".into()], &[]).expect("leaf")).expect("issued");
        std::fs::write(path("leaf.pem"), leaf_pem).expect("write");
        std::fs::write(path("leaf.key"), leaf_key).expect("write");
        let error = Ca::load(&path("leaf.pem"), &path("leaf.key")).expect_err("a leaf is no CA");
        assert!(error.to_string().contains("not a CA"), "{error}");

        let error = Ca::load(&path("missing.pem"), &path("a.key")).expect_err("missing file");
        assert!(matches!(&error, CertError::Io { path: at, .. } if at == &path("missing.pem")), "{error}");
    }

    #[test]
    fn write_refuses_existing_files_and_force_resets_the_key_mode() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert_path, key_path) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        std::fs::write(&key_path, "old").expect("write");
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let ca = Ca::generate("test CA").expect("CA");
        let error = ca.write(&cert_path, &key_path, false).expect_err("exists");
        assert!(matches!(&error, CertError::Exists { path } if path == &key_path));
        assert!(error.to_string().contains("--force"), "{error}");
        assert!(!cert_path.exists(), "nothing is written when one output exists");

        ca.write(&cert_path, &key_path, true).expect("forced");
        let mode = std::fs::metadata(&key_path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(std::fs::read_to_string(&key_path).expect("read").contains("PRIVATE KEY"));
    }

    #[test]
    fn names_users_and_teams_are_checked() {
        assert_eq!(dns_name("Proxy.Example.COM.").expect("ok"), "proxy.example.com");
        assert_eq!(dns_name("*.corp.test").expect("ok"), "*.corp.test");
        for bad in
            ["", ".", "a..b", "-a.test", "a b", "a.*.test", "*", "ex_ample.test", "bücher.test", "10.0.0.1", "::1"]
        {
            assert!(matches!(dns_name(bad), Err(CertError::InvalidName { .. })), "{bad:?}");
        }
        assert!(Leaf::server(&[], &[]).is_err());
        assert_eq!(Leaf::server(&[], &["::1".parse().expect("ip")]).expect("ok").common_name, "::1");

        for good in ["alice@corp.example", "bob", "svc.build-01", "a+b@x.test"] {
            check_user(good).expect(good);
        }
        for bad in ["", "a b", "a/b", "a:b", "@x", "x@", "a@b@c", "ü", &"x".repeat(65)] {
            assert!(matches!(check_user(bad), Err(CertError::InvalidName { what: "--user", .. })), "{bad:?}");
        }
        check_team("Platform Team").expect("spaces are fine in an OU");
        assert!(check_team("").is_err());
        assert!(check_team("a\nb").is_err());

        assert_eq!(client_file_stem(".hidden").expect("ok"), "_hidden");
        for reserved in ["server", "tollgate-ca", "clients-ca"] {
            assert!(client_file_stem(reserved).is_err(), "{reserved}");
        }
    }

    #[test]
    fn a_ca_can_be_shared_across_tasks() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<Ca>();
    }
}
