//! The state every connection of one running tollgate holds: the config snapshot, metrics, the auditor, the
//! limiter, the upstream pools, the interception minter, the open tunnels and the shutdown signals.
//!
//! Built once by `app::start`; a reload (`reload`) swaps the snapshot inside it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::alerts::Alerts;
use crate::audit::Auditor;
use crate::config::Config;
use crate::fleet::{self, Fleet};
use crate::identity::{Principal, Verifiers};
use crate::intercept::ca::Minter;
use crate::limits::{Clock, Limiter};
use crate::metrics::Metrics;
use crate::target::Target;
use crate::upstream::models::{model_client, ModelClient};
use crate::upstream::pool::Pool;

/// Idle upstream connections of the forward proxy kept per destination, and in all.
const POOL_PER_TARGET: usize = 64;
const POOL_TOTAL: usize = 4096;

/// State shared by every connection of one running tollgate.
#[derive(Debug)]
pub struct Shared {
    /// The current config snapshot; each request loads it once.
    pub config: Arc<ArcSwap<Config>>,
    pub metrics: Arc<Metrics>,
    pub auditor: Auditor,
    /// Idle keep-alive connections of forwarded (absolute-form) requests.
    pub pool: Arc<Pool>,
    /// Where tollgate itself listens: never a destination.
    pub own_addresses: Arc<[SocketAddr]>,
    /// The pooled client toward model APIs (intercepted, gateway and absolute-form model requests).
    pub models: ModelClient,
    /// Mints interception leaves; present while the config has an `intercept` section.
    pub minter: ArcSwapOption<Minter>,
    pub shutdown: Shutdown,
    /// Open client connections across listeners (`server.max_connections`).
    pub connection_slots: Arc<Semaphore>,
    /// Bytes of request bodies held at once while they are checked (`server.max_buffered_body_bytes`).
    pub body_buffers: Arc<Semaphore>,
    pub limiter: Limiter,
    /// The queue to the alert engine, and which events the current rules want.
    pub alerts: Alerts,
    /// The inventory of clients seen, kept beside the limits in the state backend.
    pub fleet: Arc<Fleet>,
    /// Users and groups provisioned over SCIM (`admin.scim`), kept in the state backend.
    pub scim: Arc<crate::scim::Provisioning>,
    /// The bounded pool of password checks (argon2id), shared by every snapshot.
    pub verifiers: Arc<Verifiers>,
    /// Each user's latest refusals, for the developer page.
    pub denials: crate::devpage::denials::Denials,
    pub clock: Arc<dyn Clock>,
    /// Config version: 1 at start, +1 for each successful reload.
    pub version: AtomicU64,
    /// The files the running config came from, as they were when it was last (re)loaded or refused.
    pub watched: Mutex<Watched>,
    /// One reload at a time (endpoint, SIGHUP and watcher), so versions and snapshots are stored in order.
    pub reloading: Mutex<()>,
    /// Reads of the audit log for the report endpoints (`/admin/usage`, `/admin/sessions`) under way at once, at
    /// most `REPORTS_AT_ONCE`: each may read a long-retained series; more are answered 503. A permit goes with the
    /// read itself, so a client that leaves does not free it early.
    pub report_reads: Arc<Semaphore>,
    tunnels: Mutex<HashMap<u64, OpenTunnel>>,
    /// Client connections a client certificate identifies, with the user it names: deprovisioning closes them.
    identified: Mutex<HashMap<u64, (Arc<str>, CancellationToken)>>,
    request_prefix: u32,
    request_counter: AtomicU64,
    tunnels_cut: AtomicUsize,
}

/// Reads of the audit log for reports under way at once (`Shared::report_reads`).
pub const REPORTS_AT_ONCE: usize = 4;

/// The watched files and their modification stamps: the file watcher reloads only when they differ, so a change
/// already reloaded through the endpoint or SIGHUP is not reloaded (or refused and counted) a second time.
#[derive(Debug, Default)]
pub struct Watched {
    pub files: Vec<PathBuf>,
    pub stamps: Vec<Option<(SystemTime, u64)>>,
}

impl Watched {
    /// The files as they are now.
    pub fn of(files: Vec<PathBuf>) -> Watched {
        Watched { stamps: stamp(&files), files }
    }
}

/// Each file's modification time and length (`None` when it cannot be read).
pub fn stamp(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files.iter().map(|f| std::fs::metadata(f).ok().and_then(|m| Some((m.modified().ok()?, m.len())))).collect()
}

/// A tunnel that a reload may have to close.
#[derive(Debug)]
pub struct OpenTunnel {
    pub principal: Principal,
    pub target: Target,
    pub revoke: CancellationToken,
}

/// A registered tunnel; unregisters when dropped.
#[derive(Debug)]
pub struct TunnelRegistration<'a> {
    shared: &'a Shared,
    id: u64,
    /// Cancelled at the end of the shutdown grace period, or when a reload denies the tunnel.
    pub cut: CancellationToken,
}

impl TunnelRegistration<'_> {
    /// Whether a reload (not shutdown) closed the tunnel.
    pub fn revoked(&self) -> bool {
        self.cut.is_cancelled() && !self.shared.shutdown.cut_tunnels.is_cancelled()
    }
}

impl Drop for TunnelRegistration<'_> {
    fn drop(&mut self) {
        self.shared.tunnels.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

/// A client connection deprovisioning can close: filed under the user its client certificate names, or else the
/// user its latest request was identified as (a token or password in a header); unfiled when dropped.
pub struct IdentifiedConnection {
    shared: Arc<Shared>,
    id: u64,
    /// The user it is filed under, if any.
    user: Mutex<Option<Arc<str>>>,
    /// Cancelled when that user is deprovisioned, and when shutdown stops accepting (a child of
    /// `stop_accepting`): the connection closes once no request is in flight. One token to wait on, not two.
    pub closing: CancellationToken,
}

impl IdentifiedConnection {
    /// A connection of `shared`, filed under `certificate_user` when its client certificate names one.
    pub fn new(shared: &Arc<Shared>, certificate_user: Option<Arc<str>>) -> Arc<Self> {
        let connection = Arc::new(Self {
            shared: shared.clone(),
            id: shared.request_counter.fetch_add(1, Ordering::Relaxed),
            user: Mutex::new(None),
            closing: shared.shutdown.stop_accepting.child_token(),
        });
        if let Some(user) = certificate_user {
            connection.identify(&user);
        }
        connection
    }

    /// Files the connection under `user`, the user its latest request was identified as (one lock of its own when
    /// the user has not changed).
    pub fn identify(&self, user: &Arc<str>) {
        let mut current = self.user.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_deref() == Some(&**user) {
            return;
        }
        *current = Some(user.clone());
        let mut filed = self.shared.identified.lock().unwrap_or_else(|p| p.into_inner());
        filed.insert(self.id, (user.clone(), self.closing.clone()));
    }
}

impl Drop for IdentifiedConnection {
    fn drop(&mut self) {
        if self.user.get_mut().unwrap_or_else(|p| p.into_inner()).is_some() {
            self.shared.identified.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
        }
    }
}

impl std::fmt::Debug for IdentifiedConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentifiedConnection").field("id", &self.id).field("user", &self.user).finish_non_exhaustive()
    }
}

/// The two stages of shutdown.
#[derive(Debug, Default)]
pub struct Shutdown {
    /// Stop accepting; close idle keep-alive connections.
    pub stop_accepting: CancellationToken,
    /// The grace period is over: cut open tunnels.
    pub cut_tunnels: CancellationToken,
}

impl Shared {
    /// The shared state of a tollgate starting with `config`: the pools, the model client and the bounded
    /// semaphores are sized from it (`server.max_connections`, `server.max_buffered_body_bytes`).
    pub fn new(
        config: Config,
        metrics: Arc<Metrics>,
        auditor: Auditor,
        limiter: Limiter,
        minter: Option<Arc<Minter>>,
        own_addresses: Arc<[SocketAddr]>,
        clock: Arc<dyn Clock>,
    ) -> Shared {
        let watched = Watched::of(config.source.files.clone());
        let connection_slots = Arc::new(Semaphore::new(config.server.max_connections));
        let body_buffers = Arc::new(Semaphore::new(config.server.max_buffered_body_bytes as usize));
        let bounds = fleet::Bounds::new(config.state.fleet_max_users);
        let fleet = Arc::new(Fleet::new(limiter.backend().clone(), bounds, clock.clone()));
        let alerts = Alerts::new(config.alerts.as_deref(), &metrics);
        let scim = Arc::new(crate::scim::Provisioning::new(limiter.backend(), &config.state.path));
        let config = Arc::new(ArcSwap::from_pointee(config));
        Shared {
            fleet,
            models: model_client(config.clone(), own_addresses.clone()),
            config,
            metrics,
            auditor,
            pool: Pool::new(POOL_PER_TARGET, POOL_TOTAL),
            own_addresses,
            minter: ArcSwapOption::new(minter),
            shutdown: Shutdown::default(),
            connection_slots,
            body_buffers,
            limiter,
            alerts,
            scim,
            verifiers: Arc::new(Verifiers::default()),
            denials: crate::devpage::denials::Denials::default(),
            clock,
            version: AtomicU64::new(1),
            watched: Mutex::new(watched),
            reloading: Mutex::default(),
            report_reads: Arc::new(Semaphore::new(REPORTS_AT_ONCE)),
            tunnels: Mutex::default(),
            identified: Mutex::default(),
            request_prefix: rand::random(),
            request_counter: AtomicU64::new(0),
            tunnels_cut: AtomicUsize::new(0),
        }
    }

    /// A unique request id: a per-process prefix and a counter, 16 hex digits.
    pub fn next_request_id(&self) -> String {
        let n = self.request_counter.fetch_add(1, Ordering::Relaxed);
        // Sixteen hex digits, written without the formatting machinery (once per request).
        let both = (u64::from(self.request_prefix) << 32) | u64::from(n as u32);
        (0..16).rev().map(|digit| char::from_digit(((both >> (digit * 4)) & 0xf) as u32, 16).unwrap_or('0')).collect()
    }

    /// Counts a tunnel that shutdown cut at the end of its grace period.
    pub fn note_cut_tunnel(&self) {
        self.tunnels_cut.fetch_add(1, Ordering::Relaxed);
    }

    /// Tunnels cut at shutdown so far.
    pub fn tunnels_cut(&self) -> usize {
        self.tunnels_cut.load(Ordering::Relaxed)
    }

    /// Registers an open tunnel so a reload can close it when the new policy denies it.
    pub fn register_tunnel(&self, principal: Principal, target: Target) -> TunnelRegistration<'_> {
        let id = self.request_counter.fetch_add(1, Ordering::Relaxed);
        let cut = self.shutdown.cut_tunnels.child_token();
        let entry = OpenTunnel { principal, target, revoke: cut.clone() };
        self.tunnels.lock().unwrap_or_else(|p| p.into_inner()).insert(id, entry);
        TunnelRegistration { shared: self, id, cut }
    }

    /// Asks the identified connections of the users `close` picks to close once idle; returns how many.
    pub fn close_identified(&self, mut close: impl FnMut(&str) -> bool) -> usize {
        let connections = self.identified.lock().unwrap_or_else(|p| p.into_inner());
        let mut closed = 0;
        for (user, closing) in connections.values() {
            if close(user) {
                closing.cancel();
                closed += 1;
            }
        }
        closed
    }

    /// Closes the open tunnels `keep` refuses; returns how many.
    pub fn revoke_tunnels(&self, mut keep: impl FnMut(&OpenTunnel) -> bool) -> usize {
        let tunnels = self.tunnels.lock().unwrap_or_else(|p| p.into_inner());
        let mut revoked = 0;
        for tunnel in tunnels.values() {
            if !keep(tunnel) {
                tunnel.revoke.cancel();
                revoked += 1;
            }
        }
        revoked
    }
}
