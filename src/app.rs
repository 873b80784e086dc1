//! Wires the parts together: binds the listeners, starts the audit writer, the limiter and the admin endpoints,
//! and owns reload (a whole new snapshot or none; tunnels the new policy denies are closed) and shutdown (stop
//! accepting, let open work finish within the grace period, then cut what is left).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::Auditor;
use crate::config::{file, Config, ConfigError};
use crate::identity::Principal;
use crate::intercept::ca::{CaOrigin, Minter};
use crate::limits::{memory::Memory, redis::Redis, Backend, Clock, Limiter, SystemClock};
use crate::llm::client::{model_client, ModelClient};
use crate::metrics::Metrics;
use crate::policy::Decision;
use crate::proxy::upstream::Pool;
use crate::target::Target;
use crate::{admin, listener};

/// Idle upstream connections kept per destination.
const POOL_PER_TARGET: usize = 64;

/// State shared by every connection of one running gateway.
#[derive(Debug)]
pub struct Gateway {
    /// The current config snapshot; each request loads it once.
    pub config: Arc<ArcSwap<Config>>,
    pub metrics: Arc<Metrics>,
    pub auditor: Auditor,
    pub pool: Arc<Pool>,
    /// Where tollgate itself listens: never a destination.
    pub own_addresses: Arc<[SocketAddr]>,
    /// The pooled client toward model APIs (intercepted and gateway requests).
    pub models: ModelClient,
    /// Mints interception leaves; present while the config has an `intercept` section.
    pub minter: ArcSwapOption<Minter>,
    pub shutdown: Shutdown,
    /// Open client connections across listeners (`server.max_connections`).
    pub connection_slots: Arc<Semaphore>,
    pub limiter: Limiter,
    pub clock: Arc<dyn Clock>,
    /// Config version: 1 at start, +1 for each successful reload.
    pub version: AtomicU64,
    tunnels: Mutex<HashMap<u64, OpenTunnel>>,
    /// The files the running config came from, as they were when it was last (re)loaded or refused: the file
    /// watcher reloads only when they differ, so a change already reloaded through the endpoint or SIGHUP is not
    /// reloaded (or refused and counted) a second time.
    watched: Mutex<Watched>,
    /// One reload at a time (endpoint, SIGHUP and watcher), so versions and snapshots are stored in order.
    reloading: Mutex<()>,
    request_prefix: u32,
    request_counter: AtomicU64,
    tunnels_cut: AtomicUsize,
}

/// The watched files and their modification stamps.
#[derive(Debug, Default)]
struct Watched {
    files: Vec<PathBuf>,
    stamps: Vec<Option<(SystemTime, u64)>>,
}

/// Each file's modification time and length (`None` when it cannot be read).
fn stamp(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files.iter().map(|f| std::fs::metadata(f).ok().and_then(|m| Some((m.modified().ok()?, m.len())))).collect()
}

/// A tunnel that a reload may have to close.
#[derive(Debug)]
struct OpenTunnel {
    principal: Principal,
    target: Target,
    revoke: CancellationToken,
}

/// A registered tunnel; unregisters when dropped.
#[derive(Debug)]
pub struct TunnelRegistration<'a> {
    gateway: &'a Gateway,
    id: u64,
    /// Cancelled at the end of the shutdown grace period, or when a reload denies the tunnel.
    pub cut: CancellationToken,
}

impl Drop for TunnelRegistration<'_> {
    fn drop(&mut self) {
        self.gateway.tunnels.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    pub version: u64,
    pub sha256: String,
    /// Open tunnels the new policy denies, now closed.
    pub tunnels_revoked: usize,
    /// Changes that only take effect after a restart (listener addresses, the state backend).
    pub needs_restart: Vec<String>,
}

/// The two stages of shutdown.
#[derive(Debug, Default)]
pub struct Shutdown {
    /// Stop accepting; close idle keep-alive connections.
    pub stop_accepting: CancellationToken,
    /// The grace period is over: cut open tunnels.
    pub cut_tunnels: CancellationToken,
}

impl Gateway {
    /// A unique request id: a per-process prefix and a counter, 16 hex digits.
    pub fn next_request_id(&self) -> String {
        let n = self.request_counter.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}{:08x}", self.request_prefix, n as u32)
    }

    pub fn note_cut_tunnel(&self) {
        self.tunnels_cut.fetch_add(1, Ordering::Relaxed);
    }

    /// Registers an open tunnel so a reload can close it when the new policy denies it.
    pub fn register_tunnel(&self, principal: Principal, target: Target) -> TunnelRegistration<'_> {
        let id = self.request_counter.fetch_add(1, Ordering::Relaxed);
        let cut = self.shutdown.cut_tunnels.child_token();
        let entry = OpenTunnel { principal, target, revoke: cut.clone() };
        self.tunnels.lock().unwrap_or_else(|p| p.into_inner()).insert(id, entry);
        TunnelRegistration { gateway: self, id, cut }
    }

    /// Builds a whole new snapshot from the config file; on any error the current one stays. New requests use
    /// the new snapshot at once; open tunnels whose principal or destination it denies are closed.
    pub fn reload(&self) -> Result<ReloadReport, ConfigError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.config.load_full();
        // Stamped before reading: a write that lands after the read still differs, and is reloaded.
        let before = stamp(&current.source.files);
        let loaded = match Config::load(&current.source.path) {
            Ok(config) => config,
            Err(error) => {
                self.note_watched(current.source.files.clone(), before);
                self.metrics.config_reload(false);
                tracing::error!(error = %error, "config reload refused; the running config stays");
                return Err(error);
            }
        };
        let minter = match &loaded.llm.intercept {
            Some(intercept) => match open_minter(intercept) {
                Ok(minter) => Some(Arc::new(minter)),
                Err(message) => {
                    self.note_watched(current.source.files.clone(), before);
                    self.metrics.config_reload(false);
                    let error = ConfigError {
                        file: current.source.path.display().to_string(),
                        mark: None,
                        path: "intercept.ca".to_owned(),
                        message,
                    };
                    tracing::error!(error = %error, "config reload refused; the running config stays");
                    return Err(error);
                }
            },
            None => None,
        };
        let needs_restart = restart_only_changes(&current, &loaded);
        for change in &needs_restart {
            tracing::warn!(change = %change, "config change needs a restart to take effect");
        }
        let sha256 = loaded.source.sha256.clone();
        let stamps = if loaded.source.files == current.source.files { before } else { stamp(&loaded.source.files) };
        self.note_watched(loaded.source.files.clone(), stamps);
        let loaded = Arc::new(loaded);
        self.config.store(loaded.clone());
        self.minter.store(minter);
        let version = self.version.fetch_add(1, Ordering::Relaxed) + 1;
        self.metrics.config_reload(true);
        let tunnels_revoked = self.revoke_denied_tunnels(&loaded);
        tracing::info!(version, sha256 = %sha256, tunnels_revoked, "config reloaded");
        Ok(ReloadReport { version, sha256, tunnels_revoked, needs_restart })
    }

    fn note_watched(&self, files: Vec<PathBuf>, stamps: Vec<Option<(SystemTime, u64)>>) {
        *self.watched.lock().unwrap_or_else(|p| p.into_inner()) = Watched { files, stamps };
    }

    /// The watched files' stamps now, when they differ from the last reload's (or refusal's).
    fn watched_files_changed(&self) -> Option<Vec<Option<(SystemTime, u64)>>> {
        let watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        let now = stamp(&watched.files);
        (now != watched.stamps).then_some(now)
    }

    fn revoke_denied_tunnels(&self, config: &Config) -> usize {
        let now = self.clock.now();
        let tunnels = self.tunnels.lock().unwrap_or_else(|p| p.into_inner());
        let mut revoked = 0;
        for tunnel in tunnels.values() {
            let still_allowed = config.identity.refresh(&tunnel.principal).is_some_and(|principal| {
                matches!(config.policy.decide(&tunnel.target, &principal.teams, now), Decision::Allow { .. })
            });
            if !still_allowed {
                tunnel.revoke.cancel();
                revoked += 1;
            }
        }
        revoked
    }
}

/// What a reload cannot change in a running process.
fn restart_only_changes(current: &Config, loaded: &Config) -> Vec<String> {
    let mut changes = Vec::new();
    for listener in &loaded.listeners {
        match current.listeners.iter().find(|l| l.name == listener.name) {
            Some(old) if old.bind == listener.bind => {}
            Some(old) => {
                changes.push(format!("listener {} moves from {} to {}", listener.name, old.bind, listener.bind))
            }
            None => changes.push(format!("new listener {} on {}", listener.name, listener.bind)),
        }
    }
    for old in &current.listeners {
        if !loaded.listeners.iter().any(|l| l.name == old.name) {
            changes.push(format!("listener {} is removed", old.name));
        }
    }
    if current.admin.as_ref().map(|a| a.bind) != loaded.admin.as_ref().map(|a| a.bind) {
        changes.push("admin.bind changed".to_owned());
    }
    if current.state.backend != loaded.state.backend
        || current.state.redis_url != loaded.state.redis_url
        || current.state.path != loaded.state.path
    {
        changes.push("state backend changed".to_owned());
    }
    if current.audit.file.as_ref().map(|f| &f.path) != loaded.audit.file.as_ref().map(|f| &f.path) {
        changes.push("audit.file.path changed".to_owned());
    }
    if current.audit.file.as_ref().map(|f| f.chain) != loaded.audit.file.as_ref().map(|f| f.chain) {
        changes.push("audit.file.chain changed".to_owned());
    }
    // The connection semaphore is sized once, at start.
    if current.server.max_connections != loaded.server.max_connections {
        changes.push("server.max_connections changed".to_owned());
    }
    changes
}

/// Options a test (or an embedding program) may set.
#[derive(Debug, Clone)]
pub struct Options {
    /// The clock for limits and hours.
    pub clock: Arc<dyn Clock>,
    /// How often the config file and the files it names are checked for changes; `None`: not watched
    /// (reload by `SIGHUP` or `POST /admin/reload` only).
    pub watch_interval: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Self { clock: Arc::new(SystemClock), watch_interval: Some(Duration::from_secs(1)) }
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind listener {name} on {address}: {source}")]
    Bind { name: String, address: SocketAddr, source: std::io::Error },
    #[error("cannot open audit file: {0}")]
    Audit(std::io::Error),
    #[error("cannot start the state backend: {0}")]
    State(String),
    #[error("cannot open the interception CA: {0}")]
    Intercept(String),
}

/// Loads (or on first start creates) the interception CA, and says where it is and how clients trust it.
fn open_minter(intercept: &crate::config::llm::Intercept) -> Result<Minter, String> {
    let (minter, origin) =
        Minter::load_or_create(&intercept.ca_cert, &intercept.ca_key, intercept.leaf_validity, intercept.leaf_cache)?;
    let path = std::fs::canonicalize(minter.ca_cert_path()).unwrap_or_else(|_| minter.ca_cert_path().to_owned());
    let verb = if origin == CaOrigin::Created { "created" } else { "loaded" };
    tracing::info!(
        ca = %path.display(),
        "interception CA {verb}; clients must trust it: export NODE_EXTRA_CA_CERTS={} (or SSL_CERT_FILE for curl and Python)",
        path.display()
    );
    Ok(minter)
}

/// A started gateway: its bound addresses and the handle to stop it.
pub struct Running {
    pub gateway: Arc<Gateway>,
    /// Each proxy listener's name and bound address (port 0 resolved).
    pub listeners: Vec<(Arc<str>, SocketAddr)>,
    pub admin: Option<SocketAddr>,
    tracker: TaskTracker,
    audit_task: Option<tokio::task::JoinHandle<()>>,
}

/// What shutdown did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Tunnels still open when the grace period ended, closed by force.
    pub tunnels_cut: usize,
}

/// Binds everything and starts serving, with the system clock.
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_with(config, Options::default()).await
}

/// The state backend the config names. The embedded one opens (creating it if need be) its store at
/// `state.path`, where spend survives a restart.
fn state_backend(state: &crate::config::State) -> Result<Arc<dyn Backend>, StartError> {
    match state.backend {
        file::StateBackend::Embedded => {
            // Every message from `open` names the path.
            let memory = Memory::open(&state.path).map_err(|error| StartError::State(error.0))?;
            Ok(Arc::new(memory))
        }
        file::StateBackend::Redis => {
            let url = state.redis_url.as_deref().expect("the config requires redis_url with backend: redis");
            let redis = Redis::connect(url).map_err(|error| StartError::State(error.to_string()))?;
            Ok(Arc::new(redis))
        }
    }
}

/// Binds everything and starts serving.
pub async fn start_with(config: Config, options: Options) -> Result<Running, StartError> {
    let mut bound = Vec::new();
    for listener in &config.listeners {
        let socket = TcpListener::bind(listener.bind).await.map_err(|source| StartError::Bind {
            name: listener.name.to_string(),
            address: listener.bind,
            source,
        })?;
        bound.push((listener.name.clone(), socket));
    }
    let admin_socket = match &config.admin {
        Some(admin) => Some(TcpListener::bind(admin.bind).await.map_err(|source| StartError::Bind {
            name: "admin".into(),
            address: admin.bind,
            source,
        })?),
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let (auditor, audit_task) = Auditor::start(&config.audit, metrics.clone()).map_err(StartError::Audit)?;
    let listeners: Vec<(Arc<str>, SocketAddr)> = bound
        .iter()
        .map(|(name, socket)| (name.clone(), socket.local_addr().expect("bound socket has an address")))
        .collect();
    let admin_address = admin_socket.as_ref().map(|s| s.local_addr().expect("bound socket has an address"));
    let own_addresses: Arc<[SocketAddr]> = listeners.iter().map(|(_, a)| *a).chain(admin_address).collect();
    let idle_timeout = config.upstream.idle_timeout;
    let watched = Watched { stamps: stamp(&config.source.files), files: config.source.files.clone() };
    let limiter = Limiter::new(state_backend(&config.state)?);
    let max_connections = config.server.max_connections;
    let minter = match &config.llm.intercept {
        Some(intercept) => Some(Arc::new(open_minter(intercept).map_err(StartError::Intercept)?)),
        None => None,
    };
    let config = Arc::new(ArcSwap::from_pointee(config));
    let models = model_client(config.clone(), own_addresses.clone());
    let gateway = Arc::new(Gateway {
        limiter,
        clock: options.clock,
        version: AtomicU64::new(1),
        tunnels: Mutex::default(),
        watched: Mutex::new(watched),
        reloading: Mutex::default(),
        connection_slots: Arc::new(Semaphore::new(max_connections)),
        config,
        models,
        minter: ArcSwapOption::new(minter),
        metrics,
        auditor,
        pool: Pool::new(POOL_PER_TARGET),
        own_addresses,
        shutdown: Shutdown::default(),
        request_prefix: rand::random(),
        request_counter: AtomicU64::new(0),
        tunnels_cut: AtomicUsize::new(0),
    });
    let tracker = TaskTracker::new();
    for (name, socket) in bound {
        tracker.spawn(listener::accept_loop(gateway.clone(), socket, name, tracker.clone()));
    }
    if let Some(socket) = admin_socket {
        tokio::spawn(admin::serve(gateway.clone(), socket));
    }
    tokio::spawn(prune_pool(gateway.clone(), idle_timeout));
    if let Some(interval) = options.watch_interval {
        tokio::spawn(watch_files(gateway.clone(), interval));
    }
    Ok(Running { gateway, listeners, admin: admin_address, tracker, audit_task })
}

/// Drops expired idle upstream connections now and then.
async fn prune_pool(gateway: Arc<Gateway>, idle_timeout: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(30).min(idle_timeout));
    loop {
        tokio::select! {
            _ = tick.tick() => gateway.pool.prune(gateway.config.load().upstream.idle_timeout),
            () = gateway.shutdown.stop_accepting.cancelled() => return,
        }
    }
}

/// Reloads when the config file or a file it names (users, keys, certificates) changes; polled (every second by
/// default), which works on every filesystem and in containers with mounted ConfigMaps. A change is reloaded once
/// the files stood still for one poll: a file still being written (truncated, half there) is never read.
async fn watch_files(gateway: Arc<Gateway>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    let mut settling = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = gateway.shutdown.stop_accepting.cancelled() => return,
        }
        match gateway.watched_files_changed() {
            None => settling = None,
            Some(now) if settling.as_ref() == Some(&now) => {
                settling = None;
                // The outcome is logged and counted by reload itself, which also records the new stamps.
                let _ = gateway.reload();
            }
            Some(now) => settling = Some(now),
        }
    }
}

impl Running {
    /// The bound address of the listener called `name`.
    pub fn address(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|(n, _)| &**n == name).map(|(_, a)| *a)
    }

    /// Stops accepting, waits up to `server.shutdown_grace` for open work, cuts the rest, flushes the audit log.
    pub async fn shutdown(self) -> ShutdownReport {
        let grace = self.gateway.config.load().server.shutdown_grace;
        self.gateway.shutdown.stop_accepting.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_err() {
            self.gateway.shutdown.cut_tunnels.cancel();
            // Cut tunnels end at once; requests still relaying a body get a last short bound.
            let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
        }
        self.gateway.auditor.flush().await;
        let report = ShutdownReport { tunnels_cut: self.gateway.tunnels_cut.load(Ordering::Relaxed) };
        drop(self.audit_task);
        report
    }
}
