//! The interception CA: leaf certificates minted on demand for intercepted hosts, kept in a bounded cache.
//! Minting runs on the blocking pool, never on the async runtime's threads.
//!
//! A leaf lives in the cache until a quarter of its validity remains, then the next request for its host mints a
//! new one. Requests for a host being minted wait for that mint instead of starting their own.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::ServerConfig;
use rustls_pki_types::PrivateKeyDer;
use tokio::sync::OnceCell;

use crate::certs::{Ca, Leaf, San, Usage};
use crate::target::Host;

/// The common name of a CA that `load_or_create` makes.
pub const CA_COMMON_NAME: &str = "tollgate interception CA";

/// TLS 1.2 and 1.3, as on tollgate's listeners.
const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// RFC 5280's upper bound of a common name; a longer host goes in the SAN only.
const MAX_COMMON_NAME: usize = 64;

/// Why a leaf could not be made.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot mint a certificate for {host}: {reason}")]
pub struct MintError {
    pub host: String,
    pub reason: String,
}

/// Mints and caches leaves signed by the interception CA.
pub struct Minter {
    cert_path: PathBuf,
    ca: Arc<Ca>,
    provider: Arc<CryptoProvider>,
    leaf_validity: Duration,
    /// A cached leaf is replaced once this much of its validity has passed (three quarters).
    renew_after: Duration,
    cache_size: usize,
    cache: Mutex<Cache>,
    minted: AtomicU64,
    cache_hits: AtomicU64,
    clock: Clock,
}

/// A leaf's TLS config, and whether the call that got it minted it (else it came from the cache).
#[derive(Debug, Clone)]
pub struct ServedLeaf {
    pub config: Arc<rustls::ServerConfig>,
    pub minted: bool,
}

/// What `Minter::load_or_create` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaOrigin {
    Loaded,
    Created,
}

/// Counters since start, for the gateway's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MintStats {
    /// Leaves signed.
    pub minted: u64,
    /// `server_config` calls answered without signing: from the cache, or by waiting for another call's mint.
    pub cache_hits: u64,
}

impl Minter {
    /// Loads the CA, or creates it (ECDSA P-256, key 0600) when both files are missing; one missing file of
    /// the two is an error, never overwritten.
    pub fn load_or_create(
        cert_path: &Path,
        key_path: &Path,
        leaf_validity: Duration,
        cache_size: usize,
    ) -> Result<(Minter, CaOrigin), String> {
        let (ca, origin) = match (exists(cert_path), exists(key_path)) {
            (true, true) => {
                let ca = Ca::load(cert_path, key_path).map_err(|error| format!("interception CA: {error}"))?;
                (ca, CaOrigin::Loaded)
            }
            (false, false) => (create_ca(cert_path, key_path)?, CaOrigin::Created),
            (cert_exists, _) => {
                let (missing, present) = if cert_exists { (key_path, cert_path) } else { (cert_path, key_path) };
                return Err(format!(
                    "interception CA: {} is missing but {} exists; restore the missing file, or remove both to have \
                     a new CA created (clients must then trust the new one)",
                    missing.display(),
                    present.display()
                ));
            }
        };
        let minter = Minter {
            cert_path: cert_path.to_owned(),
            ca: Arc::new(ca),
            provider: crate::tls::provider(),
            leaf_validity,
            renew_after: leaf_validity - leaf_validity / 4,
            cache_size: cache_size.max(1),
            cache: Mutex::new(Cache::default()),
            minted: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            clock: Clock::default(),
        };
        Ok((minter, origin))
    }

    /// The CA certificate file clients must trust.
    pub fn ca_cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The CA certificate clients must trust, PEM, as this minter signs with it.
    pub fn ca_cert_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// A TLS server config presenting a leaf for `host` (DNS or IP SAN), ALPN `h2` then `http/1.1`.
    pub async fn server_config(&self, host: &Host) -> Result<Arc<rustls::ServerConfig>, MintError> {
        self.leaf(host).await.map(|served| served.config)
    }

    /// `server_config`, saying whether this call minted the leaf (for the leaves metric; counting the stats
    /// before and after would misattribute concurrent mints).
    pub async fn leaf(&self, host: &Host) -> Result<ServedLeaf, MintError> {
        let now = self.clock.now();
        let cell = self.slot(host, now);
        let mut minted_here = false;
        let minted = cell
            .get_or_try_init(|| {
                minted_here = true;
                self.mint(host, now)
            })
            .await?;
        if !minted_here {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(ServedLeaf { config: Arc::clone(&minted.config), minted: minted_here })
    }

    /// Leaves signed and cache hits so far.
    pub fn stats(&self) -> MintStats {
        MintStats { minted: self.minted.load(Ordering::Relaxed), cache_hits: self.cache_hits.load(Ordering::Relaxed) }
    }

    /// Moves this minter's clock forward, so tests reach a leaf's renewal time without sleeping.
    #[cfg(test)]
    pub(crate) fn advance_clock(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// The cache cell of `host`: the cached one while its leaf is fresh (or still being minted), else a new empty
    /// one in its place. Making room evicts the least recently used host.
    fn slot(&self, host: &Host, now: Instant) -> Arc<OnceCell<Minted>> {
        // Never held across an await: minting happens outside, on the cell.
        let mut cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.tick += 1;
        let tick = cache.tick;
        if let Some(slot) = cache.slots.get_mut(host) {
            let fresh = slot.cell.get().is_none_or(|minted| now < minted.renew_at);
            if fresh {
                slot.last_used = tick;
                return Arc::clone(&slot.cell);
            }
        } else if cache.slots.len() >= self.cache_size {
            cache.evict_least_recently_used();
        }
        let cell = Arc::new(OnceCell::new());
        cache.slots.insert(host.clone(), Slot { cell: Arc::clone(&cell), last_used: tick });
        cell
    }

    /// Signs a leaf for `host` on the blocking pool and builds its server config there too.
    async fn mint(&self, host: &Host, now: Instant) -> Result<Minted, MintError> {
        let error = |reason: String| MintError { host: host.to_string(), reason };
        let leaf = leaf_for(host, self.leaf_validity);
        let ca = Arc::clone(&self.ca);
        let provider = Arc::clone(&self.provider);
        let config = tokio::task::spawn_blocking(move || mint_leaf(&ca, &leaf, provider))
            .await
            .map_err(|join| error(format!("the minting task failed: {join}")))?
            .map_err(error)?;
        self.minted.fetch_add(1, Ordering::Relaxed);
        Ok(Minted { config, renew_at: now + self.renew_after })
    }
}

impl Minter {
    /// Loads (or on first start creates) the CA of `intercept`, and logs where it is and how clients trust it.
    pub fn open(intercept: &crate::config::llm::Intercept) -> Result<Minter, String> {
        let (minter, origin) = Minter::load_or_create(
            &intercept.ca_cert,
            &intercept.ca_key,
            intercept.leaf_validity,
            intercept.leaf_cache,
        )?;
        let path = std::fs::canonicalize(minter.ca_cert_path()).unwrap_or_else(|_| minter.ca_cert_path().to_owned());
        let verb = if origin == CaOrigin::Created { "created" } else { "loaded" };
        tracing::info!(
            ca = %path.display(),
            "interception CA {verb}; clients must trust it: export NODE_EXTRA_CA_CERTS={} (or SSL_CERT_FILE for curl and Python)",
            path.display()
        );
        Ok(minter)
    }
}

impl fmt::Debug for Minter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minter")
            .field("cert_path", &self.cert_path)
            .field("leaf_validity", &self.leaf_validity)
            .field("cache_size", &self.cache_size)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

// ---- helpers ----

/// The leaves by host, and a counter that orders their last use.
#[derive(Default)]
struct Cache {
    slots: HashMap<Host, Slot>,
    tick: u64,
}

impl Cache {
    /// A linear scan, paid only when a new host arrives at a full cache, next to a mint that costs far more.
    fn evict_least_recently_used(&mut self) {
        let oldest = self.slots.iter().min_by_key(|(_, slot)| slot.last_used).map(|(host, _)| host.clone());
        if let Some(host) = oldest {
            self.slots.remove(&host);
        }
    }
}

struct Slot {
    /// Empty while the leaf is being minted (or after a failed mint, which the next request retries).
    cell: Arc<OnceCell<Minted>>,
    last_used: u64,
}

struct Minted {
    config: Arc<ServerConfig>,
    /// When less than a quarter of the leaf's validity remains.
    renew_at: Instant,
}

/// Monotonic time, which tests can move forward.
#[derive(Default)]
struct Clock {
    ahead_nanos: AtomicU64,
}

impl Clock {
    fn now(&self) -> Instant {
        Instant::now() + Duration::from_nanos(self.ahead_nanos.load(Ordering::Relaxed))
    }

    #[cfg(test)]
    fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.ahead_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// A serverAuth leaf naming `host` in the SAN and (when it fits) the CN. Not `Leaf::server`: a host has already been
/// normalised by `crate::target`, which also admits `_` in names.
fn leaf_for(host: &Host, validity: Duration) -> Leaf {
    let (common_name, san) = match host {
        Host::Name(name) => (name.to_string(), San::Dns(name.to_string())),
        Host::Ip(ip) => (ip.to_string(), San::Ip(*ip)),
    };
    Leaf {
        common_name: if common_name.len() <= MAX_COMMON_NAME { common_name } else { String::new() },
        organizational_unit: None,
        subject_alt_names: vec![san],
        usage: Usage::Server,
        validity,
    }
}

/// Key generation, signing and the server config: CPU work for the blocking pool.
fn mint_leaf(ca: &Ca, leaf: &Leaf, provider: Arc<CryptoProvider>) -> Result<Arc<ServerConfig>, String> {
    let (cert, key) = ca.issue_der(leaf).map_err(|error| error.to_string())?;
    let chain = vec![cert, ca.cert_der().clone()];
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(|error| error.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, PrivateKeyDer::Pkcs8(key))
        .map_err(|error| format!("the minted leaf is unusable: {error}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Creates a new CA and its files (parent directories too); `Ca::write` refuses to replace a file that appeared
/// meanwhile.
fn create_ca(cert_path: &Path, key_path: &Path) -> Result<Ca, String> {
    for path in [cert_path, key_path] {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|error| format!("interception CA: cannot create {}: {error}", dir.display()))?;
        }
    }
    let ca = Ca::generate(CA_COMMON_NAME).map_err(|error| format!("interception CA: {error}"))?;
    ca.write(cert_path, key_path, false).map_err(|error| format!("interception CA: {error}"))?;
    Ok(ca)
}

/// Whether anything occupies `path`; a dangling symlink does, so it is reported rather than replaced.
fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::os::unix::fs::PermissionsExt;

    use rustls::{ClientConfig, RootCertStore};
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    use tokio_rustls::{TlsAcceptor, TlsConnector};
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    use x509_parser::public_key::PublicKey;

    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    /// A minter with a new CA in a temporary directory (kept alive beside it).
    fn minter(leaf_validity: Duration, cache_size: usize) -> (tempfile::TempDir, Minter) {
        let dir = tempfile::tempdir().expect("temp dir");
        let (minter, origin) =
            Minter::load_or_create(&dir.path().join("ca.pem"), &dir.path().join("ca.key"), leaf_validity, cache_size)
                .expect("CA created");
        assert_eq!(origin, CaOrigin::Created);
        (dir, minter)
    }

    fn name(text: &str) -> Host {
        Host::Name(text.into())
    }

    fn client(trusted: &CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        client_with_versions(trusted, alpn, VERSIONS)
    }

    fn client_with_versions(
        trusted: &CertificateDer<'static>,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(trusted.clone()).expect("usable root");
        let mut config = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        Arc::new(config)
    }

    /// What the client saw after a complete handshake.
    struct Handshake {
        alpn: Option<Vec<u8>>,
        version: Option<rustls::ProtocolVersion>,
        chain: Vec<CertificateDer<'static>>,
    }

    /// A real handshake over an in-memory pipe; the error is the client's, else the server's.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        server_name: &str,
    ) -> Result<Handshake, std::io::Error> {
        let server_name = ServerName::try_from(server_name.to_owned()).expect("server name");
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let (accepted, connected) = tokio::join!(
            TlsAcceptor::from(server).accept(server_io),
            TlsConnector::from(client).connect(server_name, client_io)
        );
        let stream = connected?;
        accepted?;
        let (_, connection) = stream.get_ref();
        Ok(Handshake {
            alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
            version: connection.protocol_version(),
            chain: connection.peer_certificates().expect("server certificates").to_vec(),
        })
    }

    fn serial(der: &CertificateDer<'_>) -> Vec<u8> {
        let (_, cert) = X509Certificate::from_der(der).expect("parses");
        cert.raw_serial().to_vec()
    }

    fn unix_now() -> i64 {
        UnixTime::now().as_secs() as i64
    }

    #[tokio::test]
    async fn a_name_gets_a_well_formed_leaf_and_h2() {
        let (_dir, minter) = minter(DAY, 16);
        let config = minter.server_config(&name("api.anthropic.com")).await.expect("minted");
        let seen = handshake(config, client(minter.ca.cert_der(), &[b"h2", b"http/1.1"]), "api.anthropic.com")
            .await
            .expect("handshake");
        assert_eq!(seen.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(seen.version, Some(rustls::ProtocolVersion::TLSv1_3));
        assert_eq!(seen.chain.len(), 2, "leaf, then the CA");
        assert_eq!(&seen.chain[1], minter.ca.cert_der());

        let (_, leaf) = X509Certificate::from_der(&seen.chain[0]).expect("parses");
        let (_, ca) = X509Certificate::from_der(minter.ca.cert_der()).expect("parses");
        assert_eq!(leaf.issuer().as_raw(), ca.subject().as_raw());
        assert_eq!(ca.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()), Some(CA_COMMON_NAME));
        assert_eq!(leaf.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()), Some("api.anthropic.com"));
        let san = leaf.subject_alternative_name().expect("valid").expect("present");
        assert_eq!(san.value.general_names, vec![GeneralName::DNSName("api.anthropic.com")]);
        let usage = leaf.extended_key_usage().expect("valid").expect("present");
        assert!(usage.value.server_auth && !usage.value.client_auth);
        assert!(!leaf.is_ca());
        assert!(leaf.raw_serial().len() >= 8, "at least 64 random bits");
        match leaf.public_key().parsed().expect("key") {
            PublicKey::EC(point) => assert_eq!(point.data().len(), 65, "an uncompressed P-256 point"),
            other => panic!("expected an EC key, got {other:?}"),
        }
        let now = unix_now();
        let not_before = leaf.validity().not_before.timestamp();
        let not_after = leaf.validity().not_after.timestamp();
        assert!((now - 3600 - 5..=now - 3600 + 1).contains(&not_before), "backdated an hour: {not_before} vs {now}");
        let expected = now + DAY.as_secs() as i64;
        assert!((expected - 5..=expected + 1).contains(&not_after), "{not_after} vs {expected}");
    }

    #[tokio::test]
    async fn an_ip_host_gets_an_ip_san() {
        let (_dir, minter) = minter(DAY, 16);
        for text in ["10.1.2.3", "2001:db8::7"] {
            let ip: IpAddr = text.parse().expect("ip");
            let config = minter.server_config(&Host::Ip(ip)).await.expect("minted");
            let seen =
                handshake(config, client(minter.ca.cert_der(), &[b"h2"]), text).await.expect("handshake with an IP");
            let (_, leaf) = X509Certificate::from_der(&seen.chain[0]).expect("parses");
            let san = leaf.subject_alternative_name().expect("valid").expect("present");
            let octets = match ip {
                IpAddr::V4(ip) => ip.octets().to_vec(),
                IpAddr::V6(ip) => ip.octets().to_vec(),
            };
            assert_eq!(san.value.general_names, vec![GeneralName::IPAddress(&octets)]);
            assert_eq!(leaf.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()), Some(text));
        }
    }

    #[tokio::test]
    async fn alpn_follows_the_client_offer_and_tls12_works() {
        let (_dir, minter) = minter(DAY, 16);
        let config = minter.server_config(&name("api.test")).await.expect("minted");
        let ca = minter.ca.cert_der();
        let seen = handshake(Arc::clone(&config), client(ca, &[b"http/1.1"]), "api.test").await.expect("handshake");
        assert_eq!(seen.alpn.as_deref(), Some(&b"http/1.1"[..]));
        let seen = handshake(Arc::clone(&config), client(ca, &[]), "api.test").await.expect("no ALPN offered");
        assert_eq!(seen.alpn, None);
        let tls12 = client_with_versions(ca, &[b"h2", b"http/1.1"], &[&rustls::version::TLS12]);
        let seen = handshake(config, tls12, "api.test").await.expect("TLS 1.2 handshake");
        assert_eq!(seen.version, Some(rustls::ProtocolVersion::TLSv1_2));
        assert_eq!(seen.alpn.as_deref(), Some(&b"h2"[..]));
    }

    #[tokio::test]
    async fn a_client_trusting_another_ca_or_asking_another_name_fails() {
        let (_dir, minter) = minter(DAY, 16);
        let config = minter.server_config(&name("api.test")).await.expect("minted");
        let other = Ca::generate("someone else").expect("CA");
        let error = handshake(Arc::clone(&config), client(other.cert_der(), &[b"h2"]), "api.test")
            .await
            .err()
            .expect("an untrusted issuer fails");
        assert!(error.to_string().contains("UnknownIssuer"), "{error}");
        let error = handshake(config, client(minter.ca.cert_der(), &[b"h2"]), "other.test")
            .await
            .err()
            .expect("a leaf for another host fails");
        assert!(error.to_string().contains("not valid for name"), "{error}");
    }

    #[tokio::test]
    async fn long_and_underscored_names_still_verify() {
        let (_dir, minter) = minter(DAY, 16);
        let long = format!("{}.example.test", "a".repeat(63));
        for host in [long.as_str(), "my_service.corp.test"] {
            let config = minter.server_config(&name(host)).await.expect("minted");
            let seen = handshake(config, client(minter.ca.cert_der(), &[b"h2"]), host).await.expect(host);
            let (_, leaf) = X509Certificate::from_der(&seen.chain[0]).expect("parses");
            let common_name = leaf.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok());
            assert_eq!(common_name, (host.len() <= MAX_COMMON_NAME).then_some(host), "{host}");
            // Never an empty subject: that would oblige a critical SAN (RFC 5280 §4.2.1.6).
            assert_ne!(leaf.subject().iter().count(), 0, "{host}");
        }
    }

    #[tokio::test]
    async fn every_leaf_has_its_own_serial() {
        let (_dir, minter) = minter(DAY, 16);
        let mut serials = Vec::new();
        for host in ["a.test", "b.test"] {
            let config = minter.server_config(&name(host)).await.expect("minted");
            let seen = handshake(config, client(minter.ca.cert_der(), &[]), host).await.expect("handshake");
            serials.push(serial(&seen.chain[0]));
        }
        assert_ne!(serials[0], serials[1]);
        assert_ne!(serials[0], serial(minter.ca.cert_der()));
    }

    #[tokio::test]
    async fn the_cache_reuses_leaves_and_evicts_the_least_recently_used() {
        const SIZE: usize = 8;
        let (_dir, minter) = minter(DAY, SIZE);
        let keep = name("kept.test");
        let first = minter.server_config(&keep).await.expect("minted");
        let served = minter.leaf(&keep).await.expect("cached");
        assert!(!served.minted, "a cached leaf is reported as such");
        let again = served.config;
        assert!(Arc::ptr_eq(&first, &again), "a repeated host gets the same config");
        assert_eq!(minter.stats(), MintStats { minted: 1, cache_hits: 1 });

        for i in 0..SIZE + 5 {
            minter.server_config(&name(&format!("host{i}.test"))).await.expect("minted");
            // Used after every new host, so never the least recently used.
            minter.server_config(&keep).await.expect("cached");
            let cached = minter.cache.lock().expect("lock").slots.len();
            assert!(cached <= SIZE, "{cached} entries after {} hosts", i + 2);
        }
        assert_eq!(minter.cache.lock().expect("lock").slots.len(), SIZE);
        let kept = minter.server_config(&keep).await.expect("cached");
        assert!(Arc::ptr_eq(&first, &kept), "the most used host survived eviction");
        assert_eq!(minter.stats().minted, 1 + SIZE as u64 + 5);

        let minted = minter.stats().minted;
        minter.server_config(&name("host0.test")).await.expect("minted again");
        assert_eq!(minter.stats().minted, minted + 1, "the least recently used host was evicted");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_for_one_host_mint_once() {
        let (_dir, minter) = minter(DAY, 16);
        let minter = Arc::new(minter);
        let host = name("busy.test");
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (minter, host) = (Arc::clone(&minter), host.clone());
                tokio::spawn(async move { minter.leaf(&host).await })
            })
            .collect();
        let mut served = Vec::new();
        for task in tasks {
            served.push(task.await.expect("task").expect("minted"));
        }
        assert!(served.iter().all(|leaf| Arc::ptr_eq(&leaf.config, &served[0].config)));
        assert_eq!(served.iter().filter(|leaf| leaf.minted).count(), 1, "exactly one call reports the mint");
        assert_eq!(minter.stats(), MintStats { minted: 1, cache_hits: 19 });
    }

    #[tokio::test]
    async fn a_leaf_is_reminted_when_a_quarter_of_its_validity_remains() {
        let (_dir, minter) = minter(Duration::from_secs(4), 16);
        let host = name("short.test");
        let first = minter.server_config(&host).await.expect("minted");
        minter.advance_clock(Duration::from_millis(2900));
        let same = minter.server_config(&host).await.expect("cached");
        assert!(Arc::ptr_eq(&first, &same), "more than a quarter left: kept");
        minter.advance_clock(Duration::from_millis(200));
        let renewed = minter.server_config(&host).await.expect("minted again");
        assert!(!Arc::ptr_eq(&first, &renewed), "less than a quarter left: re-minted");
        assert_eq!(minter.stats(), MintStats { minted: 2, cache_hits: 1 });
        let cached = minter.server_config(&host).await.expect("cached");
        assert!(Arc::ptr_eq(&renewed, &cached), "the new leaf replaced the old one in the cache");
        assert_eq!(minter.cache.lock().expect("lock").slots.len(), 1);
    }

    #[tokio::test]
    async fn load_or_create_creates_then_loads() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cert_path = dir.path().join("certs/ca/tollgate-ca.pem");
        let key_path = dir.path().join("keys/tollgate-ca.key");
        let (created, origin) = Minter::load_or_create(&cert_path, &key_path, DAY, 16).expect("created");
        assert_eq!(origin, CaOrigin::Created);
        assert_eq!(created.ca_cert_path(), cert_path);
        let mode = |path: &Path| std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&key_path), 0o600);
        let pem = std::fs::read_to_string(&cert_path).expect("cert written");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));

        let (loaded, origin) = Minter::load_or_create(&cert_path, &key_path, DAY, 16).expect("loaded");
        assert_eq!(origin, CaOrigin::Loaded);
        assert_eq!(loaded.ca.cert_pem(), pem);
        assert_eq!(std::fs::read_to_string(&cert_path).expect("cert"), pem, "the file is untouched");

        // A leaf from the reloaded CA verifies against the certificate file clients were given.
        let on_disk = crate::tls::load_certs(&cert_path).expect("cert file").remove(0);
        let config = loaded.server_config(&name("api.test")).await.expect("minted");
        handshake(config, client(&on_disk, &[b"h2"]), "api.test").await.expect("trusted through the file");
    }

    #[test]
    fn load_or_create_refuses_a_lone_file_and_names_bad_ones() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert_path, key_path) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        Minter::load_or_create(&cert_path, &key_path, DAY, 16).expect("created");
        let key = std::fs::read(&key_path).expect("key");
        let cert = std::fs::read(&cert_path).expect("cert");

        std::fs::remove_file(&key_path).expect("remove key");
        let error = Minter::load_or_create(&cert_path, &key_path, DAY, 16).expect_err("key missing");
        assert!(error.contains(&format!("{} is missing", key_path.display())), "{error}");
        assert!(!key_path.exists(), "no new key is made");
        assert_eq!(std::fs::read(&cert_path).expect("cert"), cert, "the certificate is untouched");

        std::fs::write(&key_path, &key).expect("restore key");
        std::fs::remove_file(&cert_path).expect("remove cert");
        let error = Minter::load_or_create(&cert_path, &key_path, DAY, 16).expect_err("cert missing");
        assert!(error.contains(&format!("{} is missing", cert_path.display())), "{error}");
        assert!(!cert_path.exists(), "no new certificate is made");
        assert_eq!(std::fs::read(&key_path).expect("key"), key, "the key is untouched");

        std::fs::write(&cert_path, "not a certificate").expect("write");
        let error = Minter::load_or_create(&cert_path, &key_path, DAY, 16).expect_err("garbage");
        assert!(error.contains(&cert_path.display().to_string()) && error.contains("no PEM CERTIFICATE"), "{error}");
    }
}
