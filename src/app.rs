//! Wires the parts together: binds the listeners, starts the audit writer and the admin endpoints, and owns
//! shutdown (stop accepting, let open work finish within the grace period, then cut what is left).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::Auditor;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::upstream::Pool;
use crate::{admin, listener};

/// Idle upstream connections kept per destination.
const POOL_PER_TARGET: usize = 64;

/// State shared by every connection of one running gateway.
#[derive(Debug)]
pub struct Gateway {
    /// The current config snapshot; each request loads it once.
    pub config: ArcSwap<Config>,
    pub metrics: Arc<Metrics>,
    pub auditor: Auditor,
    pub pool: Arc<Pool>,
    /// Where tollgate itself listens: never a destination.
    pub own_addresses: Vec<SocketAddr>,
    pub shutdown: Shutdown,
    /// Open client connections across listeners (`server.max_connections`).
    pub connection_slots: Arc<Semaphore>,
    request_prefix: u32,
    request_counter: AtomicU64,
    tunnels_cut: AtomicUsize,
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
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind listener {name} on {address}: {source}")]
    Bind { name: String, address: SocketAddr, source: std::io::Error },
    #[error("cannot open audit file: {0}")]
    Audit(std::io::Error),
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

/// Binds everything and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
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
    let own_addresses = listeners.iter().map(|(_, a)| *a).chain(admin_address).collect();
    let idle_timeout = config.upstream.idle_timeout;
    let gateway = Arc::new(Gateway {
        connection_slots: Arc::new(Semaphore::new(config.server.max_connections)),
        config: ArcSwap::from_pointee(config),
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
