//! Wires the parts together and owns the life of a running tollgate: binds the listeners, starts the audit
//! writer, the limiter, the admin endpoints and the file watcher, and shuts down (stop accepting, let open work
//! finish within the grace period, then cut what is left). Nothing in the request path imports it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::audit::Auditor;
use crate::config::{file, Config};
use crate::intercept::ca::Minter;
use crate::limits::{memory::Memory, redis::Redis, Backend, Clock, Limiter, SystemClock};
use crate::metrics::Metrics;
use crate::shared::Shared;
use crate::{admin, listener, reload};

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

/// Why tollgate could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// (`error`, not `source`: the message says it, and a report of the error's chain would say it twice.)
    #[error("cannot bind listener {name} on {address}: {error}")]
    Bind { name: String, address: SocketAddr, error: std::io::Error },
    #[error("cannot open audit file: {0}")]
    Audit(std::io::Error),
    #[error("cannot start the state backend: {0}")]
    State(String),
    #[error("cannot open the interception CA: {0}")]
    Intercept(String),
}

/// A started tollgate: its bound addresses and the handle to stop it.
pub struct Running {
    pub shared: Arc<Shared>,
    /// Each proxy listener's name and bound address (port 0 resolved).
    pub listeners: Vec<(Arc<str>, SocketAddr)>,
    pub admin: Option<SocketAddr>,
    tracker: TaskTracker,
}

/// What shutdown did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Tunnels still open when the grace period ended, closed by force.
    pub tunnels_cut: usize,
    /// Audit records still queued when the last flush gave up (a stalled or failing sink).
    pub audit_unwritten: u64,
}

/// After the grace period, how long cut work (tunnels, bodies still relaying) may take to end.
const CUT_WAIT: Duration = Duration::from_secs(5);
/// The least time the last audit flush gets, when the grace period has run out.
const LAST_FLUSH: Duration = Duration::from_secs(1);

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
            let options = crate::limits::redis::RedisOptions::default();
            let redis = Redis::open(url, options, Some(&state.redis_trust))
                .map_err(|error| StartError::State(error.to_string()))?;
            Ok(Arc::new(redis))
        }
    }
}

/// Binds everything and starts serving.
pub async fn start_with(config: Config, options: Options) -> Result<Running, StartError> {
    let mut bound = Vec::new();
    for listener in &config.listeners {
        let socket = TcpListener::bind(listener.bind).await.map_err(|error| StartError::Bind {
            name: listener.name.to_string(),
            address: listener.bind,
            error,
        })?;
        bound.push((listener.name.clone(), socket));
    }
    let admin_socket = match &config.admin {
        Some(admin) => Some(TcpListener::bind(admin.bind).await.map_err(|error| StartError::Bind {
            name: "admin".into(),
            address: admin.bind,
            error,
        })?),
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let auditor = Auditor::start(&config.audit, &metrics).map_err(StartError::Audit)?;
    let listeners: Vec<(Arc<str>, SocketAddr)> = bound
        .iter()
        .map(|(name, socket)| (name.clone(), socket.local_addr().expect("bound socket has an address")))
        .collect();
    let admin_address = admin_socket.as_ref().map(|s| s.local_addr().expect("bound socket has an address"));
    let own_addresses: Arc<[SocketAddr]> = listeners.iter().map(|(_, a)| *a).chain(admin_address).collect();
    let idle_timeout = config.upstream.idle_timeout;
    let limiter = Limiter::new(state_backend(&config.state)?);
    let minter = match &config.llm.intercept {
        Some(intercept) => Some(Arc::new(Minter::open(intercept).map_err(StartError::Intercept)?)),
        None => None,
    };
    let shared = Arc::new(Shared::new(config, metrics, auditor, limiter, minter, own_addresses, options.clock));
    // The provisioned users, read before the first request so a deprovisioned one is refused from the start.
    if let Err(error) = shared.scim.load().await {
        let provisioning = shared.config.load().admin.as_ref().is_some_and(|admin| admin.scim.is_some());
        match shared.limiter.backend().shared_server() {
            // A shared server that is down now is polled until it answers (`scim::watch`).
            Some(_) if provisioning => tracing::warn!(%error, "cannot read the SCIM directory yet; retrying"),
            Some(_) => {}
            None => return Err(StartError::State(error.0)),
        }
    }
    shared.scim.attach(&shared.config.load());
    // What each user's clients should run now, from the config in force (a reload changes it): the fleet
    // inventory compares it with what was delivered.
    let snapshot = shared.config.clone();
    shared.fleet.set_current(Arc::new(move |_user: &str, teams: &[String], kind| {
        let teams: Vec<Arc<str>> = teams.iter().map(|team| Arc::from(team.as_str())).collect();
        crate::api::settings::body_for(&snapshot.load(), &teams, kind).map(|(_, checksum)| checksum)
    }));
    let tracker = TaskTracker::new();
    for (name, socket) in bound {
        tracker.spawn(listener::accept_loop(shared.clone(), socket, name, tracker.clone()));
    }
    if let Some(socket) = admin_socket {
        tokio::spawn(admin::serve(shared.clone(), socket));
    }
    if let Some(events) = shared.alerts.take_receiver() {
        tokio::spawn(crate::alerts::engine::run(shared.clone(), events));
    }
    tokio::spawn(prune_pool(shared.clone(), idle_timeout));
    tokio::spawn(crate::scim::sync::watch(shared.clone()));
    tokio::spawn(crate::fleet::flush_every(shared.fleet.clone(), shared.shutdown.stop_accepting.clone()));
    if let Some(interval) = options.watch_interval {
        tokio::spawn(reload::watch_files(shared.clone(), interval));
    }
    Ok(Running { shared, listeners, admin: admin_address, tracker })
}

/// Drops expired idle upstream connections now and then.
async fn prune_pool(shared: Arc<Shared>, idle_timeout: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(30).min(idle_timeout));
    loop {
        tokio::select! {
            _ = tick.tick() => shared.pool.prune(shared.config.load().upstream.idle_timeout),
            () = shared.shutdown.stop_accepting.cancelled() => return,
        }
    }
}

impl Running {
    /// The bound address of the listener called `name`.
    pub fn address(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|(n, _)| &**n == name).map(|(_, a)| *a)
    }

    /// Stops accepting and waits up to `server.shutdown_grace` for open work; then cuts what is left (tunnels, and
    /// responses still waiting for their audit records) and gives it `CUT_WAIT`. Last, the audit writer writes
    /// and syncs what is queued, until the grace period ends (or for `LAST_FLUSH`, when it already has): a stalled
    /// sink cannot hold the exit, and the report says how many records it kept.
    pub async fn shutdown(self) -> ShutdownReport {
        let grace = self.shared.config.load().server.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        self.shared.shutdown.stop_accepting.cancel();
        self.tracker.close();
        if tokio::time::timeout_at(deadline, self.tracker.wait()).await.is_err() {
            self.shared.shutdown.cut_tunnels.cancel();
            self.shared.auditor.abandon();
            // Cut tunnels and held responses end at once; requests still relaying a body get a last short bound.
            let _ = tokio::time::timeout(CUT_WAIT, self.tracker.wait()).await;
        }
        // The fleet's last sightings (bounded by the state backend's own timeout).
        let _ = self.shared.fleet.flush().await;
        let flush_deadline = deadline.max(tokio::time::Instant::now() + LAST_FLUSH);
        let audit_unwritten = self.shared.auditor.close(flush_deadline).await;
        self.shared.limiter.backend().close();
        ShutdownReport { tunnels_cut: self.shared.tunnels_cut(), audit_unwritten }
    }
}
