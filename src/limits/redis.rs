//! The shared backend: limit state in Redis (or Valkey), so N replicas enforce one limit between them.
//!
//! Admissions, releases and spend changes go through one writer task per backend. A request puts its operation
//! on a bounded queue; the writer takes everything waiting (up to `MAX_BATCH` operations) and sends it as one
//! Lua script (`redis_batch.lua`, sent as `EVALSHA`, sent whole with `EVAL` when the server has forgotten it),
//! so concurrent requests share one round trip and Redis runs their operations whole, in queue order, one batch
//! at a time: an admission takes a slot in every capped key and a request from every rate bucket, or nothing,
//! exactly as `gcra::step` and the embedded backend would (the script is the same arithmetic in integer
//! microseconds). Inside a batch every key is read and written once, however many requests touch it, and each
//! plan's keys and limits are sent once: an admission is its plan's number and its time, a run of releases of one
//! plan a count. Up to `MAX_IN_FLIGHT` batches are out on the connection at once (one today); Redis runs them in
//! the order sent.
//!
//! A batch smaller than `GATHER_BELOW` first lets the runtime run what is ready, a yield or two (`gather`), so
//! requests whose bytes have arrived share its call.
//!
//! Credits: for a plan whose every limit is large (at least `2 × CREDIT_SHARE`), a replica takes rate tokens and
//! concurrency slots from Redis in blocks (`c` in the script: all of the plan's keys at once, and only while each
//! limit stays at most half used) and admits from them locally, without a call; a request that ends puts its slot
//! back into the credit. A credit is used for at most `CREDIT_TTL` after it was asked for; then the writer gives
//! its unused tokens (each bucket's TAT goes back) and spare slots back. Redis counts what is lent as taken, so
//! the replicas together never admit more than a limit; a request may count up to `CREDIT_TTL` early, and one may
//! be refused while another replica holds up to a block unused (see docs/scaling.md, "Credits").
//!
//! A settlement of spend (`settle_spend`) whose batch fails — Redis down, or no answer in time — is kept and sent
//! again with later batches (and by the idle heartbeat) until Redis has it; the settlements first sent with one
//! batch carry that batch's marker key, which the script sets with `NX`, so one that Redis ran but whose answer
//! was lost counts once. Too many waiting (`MAX_PENDING_SETTLES`) are dropped and counted
//! (`tollgate_state_spend_dropped_total`); `tollgate_state_spend_pending` shows those waiting.
//!
//! A release is queued and not waited for (the queue is FIFO, so this replica's next admission sees it); when
//! the queue is full it is given back inline. A batch that fails keeps its releases and sends them again with
//! the next one. An admission whose waiter gave up (its timeout) but which the script admitted gives its
//! slots back the same way.
//!
//! Concurrency slots are leases: a slot hash (`tollgate:slots:user:ann`) holds one field per replica, its count,
//! and the lease hash (`tollgate:leases`) holds each replica's lease expiry by the server's clock. Each batch
//! refreshes this replica's lease (and the writer sends an empty batch every `HEARTBEAT` when idle), and an
//! admission counts only the fields of replicas whose lease has not expired, deleting the others': the slots
//! of a replica that died are free again `lease` after its last heartbeat.
//!
//! One multiplexed connection per backend (`ConnectionManager`, reconnected after it breaks), or a Redis
//! Cluster connection when `redis_url` names several nodes or uses `redis+cluster://`; in a cluster every key
//! carries the hash tag `{tollgate}`, so one admission's keys (user, team and the organisation's) are in one
//! slot. `rediss://` is verified with the upstream trust settings. Every operation is bounded by a timeout,
//! so a dead or unreachable Redis is a quick `StateError`, never a request that hangs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisFuture, Script, ServerErrorKind, TlsCertificates, Value};
use tokio::sync::{mpsc, oneshot, OnceCell};

use super::backend::{
    Admission, Backend, BoxFuture, Bucket, SharedServer, Slot, SpendBacklog, SpendKey, StateError, Verdict,
};
use super::Plan;
use crate::tls::UpstreamFiles;

/// What every key starts with.
pub const KEY_PREFIX: &str = "tollgate:";

/// What every key starts with in a Redis Cluster: the hash tag keeps all of them in one slot.
pub const CLUSTER_KEY_PREFIX: &str = "tollgate:{tollgate}:";

/// Added to a rate key's lifetime beyond its TAT, so clocks a little apart between replicas lose nothing.
const RATE_TTL_MARGIN_MS: u64 = 1_000;

/// Added to a spend key's lifetime beyond its period's end: replicas' clocks a little apart, and a request
/// settled just after the period ended, still find it.
const SPEND_TTL_MARGIN_MS: u64 = 24 * 60 * 60 * 1000;

/// The most operations one batch carries.
const MAX_BATCH: usize = 256;

/// The most batches out on the connection at once (Redis runs them in the order sent). One: with Redis on the
/// proxy's machine a second batch in flight made batches smaller (4.5 requests instead of 6.1) and cost more CPU
/// per request than it saved in waiting (docs/BENCHMARKS.md, "Redis state"); across a network more may pay.
const MAX_IN_FLIGHT: usize = 1;

/// A batch of fewer operations than this waits for up to `GATHER_YIELDS` yields of the runtime for more (`gather`):
/// with Redis on the proxy's core, two yields below 32 took a batch from 6 to 14 requests and cut a request's CPU
/// (tollgate and redis-server) by about an eighth (docs/BENCHMARKS.md, "Redis state").
const GATHER_BELOW: usize = 32;
const GATHER_YIELDS: usize = 2;

/// How long Redis keeps the marker of a batch's settles, so one sent again after a lost answer counts once.
const MARKER_TTL: Duration = Duration::from_secs(600);

/// Settles kept to be sent again after failed batches; beyond, they are dropped and counted.
const MAX_PENDING_SETTLES: u64 = 100_000;

/// How often an idle writer refreshes its lease; a busy one refreshes it with its batches.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Releases kept for the next batch after a failed one; beyond, they are dropped (the lease still frees them
/// once this replica's lease expires, or its slot hash's TTL).
const MAX_RETRIED_RELEASES: usize = 100_000;

/// The most admissions one credit carries: a block of rate tokens and concurrency slots a replica takes from Redis
/// and admits from locally.
const CREDIT_BLOCK: u32 = 128;

/// A limit is lent in blocks of at most this share of it (a slot's maximum, a bucket's burst): a limit under
/// `2 × CREDIT_SHARE` is never lent, every admission against it goes to Redis.
const CREDIT_SHARE: u32 = 64;

/// How long a credit may be used after it was asked for; then what is left of it goes back to Redis.
const CREDIT_TTL: Duration = Duration::from_millis(100);

/// The batch script.
const BATCH_LUA: &str = include_str!("redis_batch.lua");

static BATCH: LazyLock<Script> = LazyLock::new(|| Script::new(BATCH_LUA));

/// How the Redis backend talks to its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisOptions {
    /// The longest any one operation may take, queueing and connecting included; past it the operation is a
    /// `StateError`.
    pub timeout: Duration,
    /// How long a slot hash lives after this replica's last change to it: a backstop for slots no lease covers.
    pub slot_ttl: Duration,
    /// How long a replica's slots count after its last heartbeat: the slots of a replica that died are free
    /// again within this. Longer than `HEARTBEAT` plus `timeout`, so a slow round trip loses no lease.
    pub lease: Duration,
    /// Operations that may wait for the writer; an admission beyond is a `StateError` (`state.on_error` decides),
    /// a release beyond is given back inline.
    pub queue: usize,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(1),
            slot_ttl: Duration::from_secs(3600),
            lease: Duration::from_secs(5),
            queue: 16_384,
        }
    }
}

/// Limit state shared through one Redis (or Valkey) server or cluster.
pub struct Redis {
    inner: Arc<Inner>,
    /// The writer's queue, started by the first operation (inside the runtime); closed when this is dropped.
    queue: OnceLock<mpsc::Sender<Op>>,
}

/// What the backend and its writer share.
struct Inner {
    target: Target,
    options: RedisOptions,
    /// The URL with any password masked, for logs and errors.
    shown: String,
    /// `KEY_PREFIX`, or `CLUSTER_KEY_PREFIX` in a cluster.
    prefix: &'static str,
    /// This replica's id in slot hashes and the lease hash: the process id and 64 random bits, new at each
    /// start, so a restarted replica never inherits the slots of its previous life.
    replica: String,
    /// Settles sent and not yet known to be in Redis (`tollgate_state_spend_pending`).
    spend_pending: AtomicU64,
    /// Settles dropped because `MAX_PENDING_SETTLES` waited already (`tollgate_state_spend_dropped_total`).
    spend_dropped: AtomicU64,
    /// The credits this replica holds, by plan (its address; the credit keeps the plan alive).
    credits: Mutex<HashMap<usize, Credit, foldhash::fast::RandomState>>,
}

/// Rate tokens and concurrency slots of one plan that Redis has counted as taken by this replica and that it
/// admits from locally (`CREDIT_BLOCK`, `CREDIT_SHARE`, `CREDIT_TTL`).
struct Credit {
    plan: Arc<Plan>,
    /// The most tokens and spare slots asked for at once.
    block: u32,
    /// Admissions left: one request from every bucket each (0 when the plan has no bucket).
    tokens: u32,
    /// Slots held in every capped key and not in use (0 when the plan has no slot).
    slots: u32,
    /// Until when it may be used: `CREDIT_TTL` after its first part was asked for.
    until: Instant,
    /// A request for more is out.
    asking: bool,
    /// The last request was refused (the limit is more than half used) or failed: none before this.
    quiet_until: Instant,
}

/// What a plan's credit says about one admission.
struct Taken {
    /// Admitted from the credit.
    admitted: bool,
    /// More to ask for: (tokens, slots).
    ask: Option<(u32, u32)>,
}

/// The block of a plan's credit: the smallest of `CREDIT_BLOCK` and each limit's `1 / CREDIT_SHARE`; under 2, the
/// plan is not lent (0).
fn credit_block(plan: &Plan) -> u32 {
    let slots = plan.slots.iter().map(|slot| slot.max / CREDIT_SHARE);
    let buckets = plan.buckets.iter().map(|bucket| bucket.rate.burst / CREDIT_SHARE);
    let block = slots.chain(buckets).fold(CREDIT_BLOCK, u32::min);
    if block >= 2 && !plan.is_empty() {
        block
    } else {
        0
    }
}

/// One server, or a cluster.
enum Target {
    Single {
        client: redis::Client,
        /// Created on first use, inside the runtime; reconnects by itself after the connection breaks.
        manager: OnceLock<ConnectionManager>,
    },
    Cluster {
        /// Boxed: a cluster client is far larger than one server's.
        client: Box<ClusterClient>,
        /// Connected by the first operation that finds it missing; it then follows the cluster by itself.
        connection: OnceCell<ClusterConnection>,
    },
}

/// A connection to either kind of target.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

/// One operation for the writer.
enum Op {
    /// An admission of a plan's slots and buckets at `now_us`.
    Admit { plan: Arc<Plan>, now_us: u64, reply: oneshot::Sender<Result<Verdict, StateError>> },
    /// Gives a plan's slots back; `done`, when someone waits for it.
    Release { plan: Arc<Plan>, done: Option<oneshot::Sender<Result<(), StateError>>> },
    /// Asks for a credit of `tokens` and `slots` of a plan at `now_us`, asked at `asked` (see `Credit`).
    Credit { plan: Arc<Plan>, tokens: u32, slots: u32, now_us: u64, asked: Instant },
    /// Adds `delta` to each counter (key, expiry in ms since the epoch); answers the new values. A `settle` that
    /// fails is kept and sent again until Redis has it (counted once: see `Group`).
    AddSpend {
        keys: Vec<(String, u64)>,
        delta: i64,
        settle: bool,
        reply: oneshot::Sender<Result<Vec<i64>, StateError>>,
    },
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cluster = matches!(self.inner.target, Target::Cluster { .. });
        f.debug_struct("Redis")
            .field("url", &self.inner.shown)
            .field("cluster", &cluster)
            .field("options", &self.inner.options)
            .finish()
    }
}

impl Redis {
    /// A backend for `url` (`redis://[user:password@]host[:port][/db]`, `rediss://…` verified with the system
    /// roots, or a cluster: see `open`) with the default options. Checks the URL only: the connection is made by
    /// the first operation, and an unreachable server is that operation's `StateError`.
    pub fn connect(url: &str) -> Result<Redis, StateError> {
        Self::connect_with(url, RedisOptions::default())
    }

    /// A backend for `url` with `options`.
    pub fn connect_with(url: &str, options: RedisOptions) -> Result<Redis, StateError> {
        Self::open(url, options, None)
    }

    /// A backend for `url` with `options`; `rediss://` verifies the server (and presents a client certificate)
    /// as `trust` says — the upstream trust settings — or with the system roots when `trust` is `None`.
    ///
    /// A cluster is `redis+cluster://[user:password@]host:port,host:port[/]` (`rediss+cluster://` with TLS), or
    /// several URLs separated by commas; the nodes named are where discovery starts.
    pub fn open(url: &str, options: RedisOptions, trust: Option<&UpstreamFiles>) -> Result<Redis, StateError> {
        let shown = mask_password(url);
        let unusable = |error: &dyn std::fmt::Display| StateError(format!("redis URL {shown} is not usable: {error}"));
        let certificates = match trust {
            Some(trust) if url.starts_with("rediss") => Some(certificates(trust).map_err(|e| unusable(&e))?),
            _ => None,
        };
        let (target, prefix) = match cluster_nodes(url).map_err(|e| unusable(&e))? {
            Some(nodes) => {
                let mut builder = ClusterClientBuilder::new(nodes)
                    .retries(0)
                    .connection_timeout(options.timeout)
                    .response_timeout(options.timeout);
                if let Some(certificates) = certificates {
                    builder = builder.certs(certificates);
                }
                let client = builder.build().map_err(|e| unusable(&e))?;
                (Target::Cluster { client: Box::new(client), connection: OnceCell::new() }, CLUSTER_KEY_PREFIX)
            }
            None => {
                let client = match certificates {
                    Some(certificates) => redis::Client::build_with_tls(url, certificates),
                    None => redis::Client::open(url),
                }
                .map_err(|e| unusable(&e))?;
                (Target::Single { client, manager: OnceLock::new() }, KEY_PREFIX)
            }
        };
        let replica = format!("{}-{:016x}", std::process::id(), rand::random::<u64>());
        let inner = Inner {
            target,
            options,
            shown,
            prefix,
            replica,
            spend_pending: AtomicU64::new(0),
            spend_dropped: AtomicU64::new(0),
            credits: Mutex::new(HashMap::default()),
        };
        Ok(Redis { inner: Arc::new(inner), queue: OnceLock::new() })
    }

    /// The URL, password masked.
    pub fn url(&self) -> &str {
        &self.inner.shown
    }

    /// Whether this backend talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.target, Target::Cluster { .. })
    }

    /// This replica's id in slot hashes and the lease hash.
    pub fn replica(&self) -> &str {
        &self.inner.replica
    }

    /// The full name of a key: the prefix (with the cluster's hash tag in a cluster) and `name`.
    pub fn key(&self, name: &str) -> String {
        self.inner.key(name)
    }

    /// The hash that holds the slots of `slot` (`tollgate:slots:user:ann`), one field per replica.
    pub fn slot_key(&self, slot: &Slot) -> String {
        self.inner.slot_key(&slot.key)
    }

    /// One round trip (`PING`), e.g. to report an unreachable server at start-up.
    pub async fn ping(&self) -> Result<(), StateError> {
        let inner = &self.inner;
        inner
            .bounded(async {
                let mut connection = inner.connection().await?;
                redis::cmd("PING").query_async::<String>(&mut connection).await
            })
            .await
            .map(drop)
    }

    /// The writer's queue, started on first use.
    fn queue(&self) -> &mpsc::Sender<Op> {
        self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(self.inner.options.queue.max(1));
            tokio::spawn(write(self.inner.clone(), receiver));
            sender
        })
    }

    /// Puts `op` on the queue; a full queue is a `StateError` naming it.
    fn enqueue(&self, op: Op) -> Result<(), StateError> {
        self.queue().try_send(op).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => StateError(format!(
                "redis at {}: {} operations are already waiting for the server",
                self.inner.shown, self.inner.options.queue
            )),
            mpsc::error::TrySendError::Closed(_) => {
                StateError(format!("redis at {}: the writer has stopped", self.inner.shown))
            }
        })
    }

    /// Waits for a queued operation's answer, within the timeout.
    async fn answer<T>(&self, answer: oneshot::Receiver<Result<T, StateError>>) -> Result<T, StateError> {
        match tokio::time::timeout(self.inner.options.timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StateError(format!("redis at {}: the writer has stopped", self.inner.shown))),
            Err(_) => Err(self.inner.late()),
        }
    }

    /// Adds `delta` to the live `keys` through the writer; a `settle` is kept and sent again when its batch fails
    /// (or counted as dropped when not even the queue takes it).
    async fn change_spend(
        &self,
        keys: &[SpendKey],
        delta: i64,
        now_ms: u64,
        settle: bool,
    ) -> Result<Vec<i64>, StateError> {
        let live = live(keys, now_ms);
        if live.is_empty() {
            return Ok(vec![0; keys.len()]);
        }
        let spend =
            live.iter().map(|(_, spend)| (spend.key.clone(), spend.period_end_ms.saturating_add(SPEND_TTL_MARGIN_MS)));
        let (reply, answer) = oneshot::channel();
        if let Err(error) = self.enqueue(Op::AddSpend { keys: spend.collect(), delta, settle, reply }) {
            if settle {
                self.inner.spend_dropped.fetch_add(1, Relaxed);
                tracing::warn!(%error, "a spend change could not be queued and is dropped");
            }
            return Err(error);
        }
        let got = self.answer(answer).await?;
        spread(keys.len(), &live, got)
    }

    /// Admits one request of `plan` at `now_us` in Redis, through the writer.
    async fn admit_remote(&self, plan: &Arc<Plan>, now_us: u64) -> Result<Verdict, StateError> {
        let (reply, answer) = oneshot::channel();
        self.enqueue(Op::Admit { plan: plan.clone(), now_us, reply })?;
        self.answer(answer).await
    }

    /// Gives `plan`'s slots back and waits until Redis has them.
    async fn release_now(&self, plan: Arc<Plan>) -> Result<(), StateError> {
        let (done, answer) = oneshot::channel();
        self.enqueue(Op::Release { plan, done: Some(done) })?;
        self.answer(answer).await
    }
}

impl Inner {
    fn key(&self, name: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + name.len());
        key.push_str(self.prefix);
        key.push_str(name);
        key
    }

    /// `conc:user:ann` becomes `…slots:user:ann`: a hash, under a name no string of an older version uses.
    fn slot_key(&self, name: &str) -> String {
        let rest = name.strip_prefix("conc:").unwrap_or(name);
        let mut key = String::with_capacity(self.prefix.len() + 6 + rest.len());
        key.push_str(self.prefix);
        key.push_str("slots:");
        key.push_str(rest);
        key
    }

    fn credits(&self) -> MutexGuard<'_, HashMap<usize, Credit, foldhash::fast::RandomState>> {
        self.credits.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admits one request of `plan` from its credit when the credit has what it takes, and says whether to ask
    /// for more (the credit is low, expired or missing, and no request for more is out).
    fn take_credit(&self, plan: &Arc<Plan>, block: u32) -> Taken {
        let now = Instant::now();
        let mut credits = self.credits();
        let credit = credits.entry(Arc::as_ptr(plan) as usize).or_insert_with(|| Credit {
            plan: plan.clone(),
            block,
            tokens: 0,
            slots: 0,
            until: now,
            asking: false,
            quiet_until: now,
        });
        let (rated, capped) = (!plan.buckets.is_empty(), !plan.slots.is_empty());
        let live = credit.until > now;
        let admitted = live && (!rated || credit.tokens > 0) && (!capped || credit.slots > 0);
        if admitted {
            credit.tokens -= u32::from(rated);
            credit.slots -= u32::from(capped);
        }
        let (tokens, slots) = if live { (credit.tokens, credit.slots) } else { (0, 0) };
        let low = (rated && tokens < credit.block / 2) || (capped && slots < credit.block / 2);
        let ask = (low && !credit.asking && credit.quiet_until <= now).then(|| {
            credit.asking = true;
            let want = |has: bool, held: u32| if has { credit.block.saturating_sub(held) } else { 0 };
            (want(rated, tokens), want(capped, slots))
        });
        Taken { admitted, ask }
    }

    /// Keeps a released slot of `plan` in its credit (the next admission here takes it without asking Redis); false
    /// when the plan has no live credit or it holds two blocks of spare slots already (more is asked for below half
    /// a block: between the two, the requests this replica has in flight come and go without a call).
    fn keep_slot(&self, plan: &Arc<Plan>) -> bool {
        let mut credits = self.credits();
        match credits.get_mut(&(Arc::as_ptr(plan) as usize)) {
            Some(credit) if credit.until > Instant::now() && credit.slots < 2 * credit.block => {
                credit.slots += 1;
                true
            }
            _ => false,
        }
    }

    /// Adds a granted credit (or notes a refused or failed request); an expired credit it finds goes to `returns`.
    fn granted(&self, op: (&Arc<Plan>, u32, u32, Instant), granted: bool, returns: &mut Vec<Return>) {
        let (plan, tokens, slots, asked) = op;
        let now = Instant::now();
        let mut credits = self.credits();
        let Some(credit) = credits.get_mut(&(Arc::as_ptr(plan) as usize)) else {
            // Swept while the request was out (it cannot be: an asking credit is kept); give it back.
            if granted {
                returns.push(Return { plan: plan.clone(), tokens, slots });
            }
            return;
        };
        credit.asking = false;
        if !granted {
            credit.quiet_until = now + CREDIT_TTL;
            return;
        }
        if credit.until <= now {
            if credit.tokens > 0 || credit.slots > 0 {
                returns.push(Return { plan: plan.clone(), tokens: credit.tokens, slots: credit.slots });
            }
            credit.tokens = 0;
            credit.slots = 0;
            credit.until = asked + CREDIT_TTL;
        }
        credit.tokens += tokens;
        credit.slots += slots;
    }

    /// Takes every credit that has expired (all of them when `all`) out, its unused tokens and slots into `returns`.
    fn sweep(&self, all: bool, returns: &mut Vec<Return>) {
        let now = Instant::now();
        self.credits().retain(|_, credit| {
            let expired = all || credit.until <= now;
            if expired && (credit.tokens > 0 || credit.slots > 0) {
                returns.push(Return { plan: credit.plan.clone(), tokens: credit.tokens, slots: credit.slots });
                credit.tokens = 0;
                credit.slots = 0;
            }
            !all && (!expired || credit.asking || credit.quiet_until > now)
        });
    }

    fn late(&self) -> StateError {
        StateError(format!("redis at {} did not answer within {:?}", self.shown, self.options.timeout))
    }

    async fn connection(&self) -> redis::RedisResult<Connection> {
        match &self.target {
            Target::Single { client, manager } => {
                if let Some(manager) = manager.get() {
                    return Ok(Connection::Single(manager.clone()));
                }
                // No retries inside one attempt: while Redis is down each operation fails at once (the next one
                // tries to connect again) rather than waiting out a backoff that would hold requests up.
                let config = ConnectionManagerConfig::new()
                    .set_number_of_retries(0)
                    .set_connection_timeout(Some(self.options.timeout))
                    .set_response_timeout(Some(self.options.timeout));
                let made = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
                // Two first operations racing each make one; the loser's is dropped unused.
                Ok(Connection::Single(manager.get_or_init(|| made).clone()))
            }
            Target::Cluster { client, connection } => {
                let connection = connection.get_or_try_init(|| client.get_async_connection()).await?;
                Ok(Connection::Cluster(connection.clone()))
            }
        }
    }

    async fn bounded<T>(
        &self,
        operation: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StateError> {
        match tokio::time::timeout(self.options.timeout, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(StateError(format!("redis at {}: {error}", self.shown))),
            Err(_) => Err(self.late()),
        }
    }

    /// Runs the batch script (`EVALSHA`, then `EVAL` with its source if the server does not know it).
    async fn run_batch(&self, keys: &[String], args: &[Arg<'_>]) -> Result<Value, StateError> {
        self.bounded(async {
            let mut connection = self.connection().await?;
            let command = script_command("EVALSHA", BATCH.get_hash(), keys, args);
            match command.query_async::<Value>(&mut connection).await {
                Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    script_command("EVAL", BATCH_LUA, keys, args).query_async(&mut connection).await
                }
                other => other,
            }
        })
        .await
    }

    /// The marker of the settles first sent with batch `marker`.
    fn marker_key(&self, marker: u64) -> String {
        format!("{}settled:{}:{marker}", self.prefix, self.replica)
    }

    /// Sends `batch` as one script call: the releases and settles kept from failed batches first, then its
    /// operations in queue order. The script's flat answer.
    async fn send(&self, batch: &Batch) -> Result<Vec<i64>, StateError> {
        let millis = |duration: Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1);
        let lease_ms = if batch.lease { millis(self.options.lease) } else { 0 };
        let base = batch
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Admit { now_us, .. } | Op::Credit { now_us, .. } => Some(*now_us),
                _ => None,
            })
            .min()
            .unwrap_or(0);
        let mut encoder = Encoder { inner: self, keys: Vec::new(), args: Vec::new(), plans: Vec::new(), open: None };
        encoder.args.extend([
            Arg::Text(&self.replica),
            Arg::Number(lease_ms),
            Arg::Number(RATE_TTL_MARGIN_MS),
            Arg::Number(millis(self.options.slot_ttl)),
            Arg::Number(millis(MARKER_TTL)),
            Arg::Number(base),
        ]);
        for plan in &batch.releases {
            encoder.release(plan);
        }
        for given in &batch.returns {
            encoder.give_back(given);
        }
        for group in &batch.groups {
            encoder.marker(self.marker_key(group.marker));
            for spend in &group.spends {
                encoder.spend(&spend.keys, spend.delta, true);
            }
        }
        let mut marked = false;
        for op in &batch.ops {
            match op {
                Op::Admit { plan, now_us, .. } => encoder.admit(plan, now_us - base),
                Op::Release { plan, .. } => encoder.release(plan),
                Op::Credit { plan, tokens, slots, now_us, .. } => encoder.credit(plan, *tokens, *slots, now_us - base),
                Op::AddSpend { keys, delta, settle, .. } => {
                    if let (true, false, Some(marker)) = (*settle, marked, batch.marker) {
                        encoder.marker(self.marker_key(marker));
                        marked = true;
                    }
                    encoder.spend(keys, *delta, *settle);
                }
            }
        }
        let Encoder { mut keys, args, .. } = encoder;
        keys.push(self.key("leases"));
        let answer = self.run_batch(&keys, &args).await?;
        Vec::<i64>::from_redis_value(answer)
            .map_err(|error| StateError(format!("redis at {}: unexpected answer to a batch: {error}", self.shown)))
    }
}

/// Writes a batch's keys and arguments: each plan's keys and limits once (`p`), then its admissions and releases
/// by number, consecutive ones of the same plan as one operation.
struct Encoder<'a> {
    inner: &'a Inner,
    keys: Vec<String>,
    args: Vec<Arg<'a>>,
    /// The plans defined so far, by address; a plan's number is its index + 1.
    plans: Vec<usize>,
    /// The last operation when it is an admission or release (`true`: admission), its plan's number and where its
    /// count is, so the next one of the same kind and plan only adds to it.
    open: Option<(bool, usize, usize)>,
}

impl<'a> Encoder<'a> {
    /// The plan's number in this batch, defining it first if needed.
    fn plan(&mut self, plan: &'a Plan) -> usize {
        let address = std::ptr::from_ref(plan) as usize;
        if let Some(index) = self.plans.iter().position(|known| *known == address) {
            return index + 1;
        }
        self.open = None;
        self.args.extend([Arg::Text("p"), Arg::Count(plan.slots.len()), Arg::Count(plan.buckets.len())]);
        for slot in &plan.slots {
            self.keys.push(self.inner.slot_key(&slot.key));
            self.args.push(Arg::Number(u64::from(slot.max)));
        }
        for bucket in &plan.buckets {
            self.keys.push(self.inner.key(&bucket.key));
            self.args.extend([Arg::Number(bucket.rate.interval_us()), Arg::Number(bucket.rate.tolerance_us())]);
        }
        self.plans.push(address);
        self.plans.len()
    }

    /// Adds one to the open operation's count when it is `admission` of `number`; true if it did.
    fn extend_open(&mut self, admission: bool, number: usize) -> bool {
        match self.open {
            Some((kind, open, at)) if kind == admission && open == number => {
                if let Some(Arg::Count(count)) = self.args.get_mut(at) {
                    *count += 1;
                }
                true
            }
            _ => false,
        }
    }

    fn admit(&mut self, plan: &'a Plan, offset_us: u64) {
        let number = self.plan(plan);
        if !self.extend_open(true, number) {
            self.args.extend([Arg::Text("a"), Arg::Count(number), Arg::Count(1)]);
            self.open = Some((true, number, self.args.len() - 1));
        }
        self.args.push(Arg::Number(offset_us));
    }

    fn release(&mut self, plan: &'a Plan) {
        if plan.slots.is_empty() {
            return;
        }
        let number = self.plan(plan);
        if !self.extend_open(false, number) {
            self.args.extend([Arg::Text("r"), Arg::Count(number), Arg::Count(1)]);
            self.open = Some((false, number, self.args.len() - 1));
        }
    }

    /// Asks for a credit of `tokens` and `slots` of `plan` (`c`).
    fn credit(&mut self, plan: &'a Plan, tokens: u32, slots: u32, offset_us: u64) {
        let number = self.plan(plan);
        self.open = None;
        self.args.extend([
            Arg::Text("c"),
            Arg::Count(number),
            Arg::Count(tokens as usize),
            Arg::Count(slots as usize),
            Arg::Number(offset_us),
        ]);
    }

    /// Gives an expired credit's unused tokens (`u`) and spare slots (`r`) back.
    fn give_back(&mut self, given: &'a Return) {
        let number = self.plan(&given.plan);
        self.open = None;
        if given.tokens > 0 && !given.plan.buckets.is_empty() {
            self.args.extend([Arg::Text("u"), Arg::Count(number), Arg::Count(given.tokens as usize)]);
        }
        if given.slots > 0 && !given.plan.slots.is_empty() {
            self.args.extend([Arg::Text("r"), Arg::Count(number), Arg::Count(given.slots as usize)]);
        }
    }

    fn marker(&mut self, key: String) {
        self.open = None;
        self.keys.push(key);
        self.args.push(Arg::Text("m"));
    }

    fn spend(&mut self, spend: &'a [(String, u64)], delta: i64, marked: bool) {
        self.open = None;
        self.args.extend([
            Arg::Text("s"),
            Arg::Count(spend.len()),
            Arg::Signed(delta),
            Arg::Count(usize::from(marked)),
        ]);
        for (name, expires_ms) in spend {
            self.keys.push(self.inner.key(name));
            self.args.push(Arg::Number(*expires_ms));
        }
    }
}

/// One argument of a script call.
enum Arg<'a> {
    Text(&'a str),
    Number(u64),
    Signed(i64),
    Count(usize),
}

/// `verb` (`EVALSHA` or `EVAL`) `script` with `keys` and `args`.
fn script_command(verb: &str, script: &str, keys: &[String], args: &[Arg<'_>]) -> Cmd {
    let mut command = redis::cmd(verb);
    command.arg(script).arg(keys.len());
    for key in keys {
        command.arg(key);
    }
    for arg in args {
        match arg {
            Arg::Text(text) => command.arg(*text),
            Arg::Number(number) => command.arg(*number),
            Arg::Signed(number) => command.arg(*number),
            Arg::Count(count) => command.arg(*count),
        };
    }
    command
}

/// A spend change that must not be lost (a settle), kept to be sent again.
struct Spend {
    keys: Vec<(String, u64)>,
    delta: i64,
}

/// The settles first sent with one batch, under that batch's marker: however often they are sent again, Redis
/// adds them once.
struct Group {
    marker: u64,
    spends: Vec<Spend>,
}

/// One script call: what it carries, and what becomes of it when it fails.
struct Batch {
    ops: Vec<Op>,
    /// Releases of failed batches, sent first.
    releases: Vec<Arc<Plan>>,
    /// What expired credits give back, sent first.
    returns: Vec<Return>,
    /// Settles of failed batches, sent again under their markers.
    groups: Vec<Group>,
    /// The marker of this batch's own settles, when it has any.
    marker: Option<u64>,
    /// Whether the call refreshes this replica's lease.
    lease: bool,
}

/// What an expired credit gives back: its unused tokens (each bucket's TAT goes back by as many intervals) and its
/// spare slots.
struct Return {
    plan: Arc<Plan>,
    tokens: u32,
    slots: u32,
}

/// What the writer keeps between batches.
struct Writer {
    inner: Arc<Inner>,
    /// Releases to send again.
    retried: Vec<Arc<Plan>>,
    /// What expired credits give back, for the next batch.
    returns: Vec<Return>,
    /// Settles to send again, oldest first.
    pending: std::collections::VecDeque<Group>,
    lease_written: Option<Instant>,
    next_marker: u64,
}

impl Writer {
    /// Whether anything failed waits to be sent again.
    fn has_backlog(&self) -> bool {
        !self.retried.is_empty() || !self.pending.is_empty() || !self.returns.is_empty()
    }

    /// A batch of `ops` with what waits to be sent again (settles up to `MAX_BATCH` of them).
    fn batch(&mut self, ops: Vec<Op>) -> Batch {
        let lease = self.lease_written.is_none_or(|at| at.elapsed() >= HEARTBEAT / 4);
        if lease {
            self.lease_written = Some(Instant::now());
        }
        let mut groups = Vec::new();
        let mut carried = 0;
        while let Some(group) = self.pending.front() {
            if carried > 0 && carried + group.spends.len() > MAX_BATCH {
                break;
            }
            carried += group.spends.len();
            groups.extend(self.pending.pop_front());
        }
        let settles = ops.iter().any(|op| matches!(op, Op::AddSpend { settle: true, .. }));
        let marker = settles.then(|| {
            self.next_marker += 1;
            self.next_marker
        });
        let (releases, returns) = (std::mem::take(&mut self.retried), std::mem::take(&mut self.returns));
        Batch { ops, releases, returns, groups, marker, lease }
    }

    /// Answers each operation of a batch that came back, or keeps what must not be lost of one that failed.
    fn finish(&mut self, batch: Batch, result: Result<Vec<i64>, StateError>) {
        let Batch { ops, releases, returns, groups, marker, .. } = batch;
        match result {
            Ok(values) => {
                let resent: usize = groups.iter().flat_map(|group| &group.spends).map(|spend| spend.keys.len()).sum();
                let settles = ops.iter().filter(|op| matches!(op, Op::AddSpend { settle: true, .. })).count();
                let done = groups.iter().map(|group| group.spends.len()).sum::<usize>() + settles;
                self.inner.spend_pending.fetch_sub(done as u64, Relaxed);
                let values = values.get(resent..).unwrap_or_default();
                answer(&self.inner, ops.into_iter(), values, &mut self.retried, &mut self.returns);
            }
            Err(error) => {
                // The next batch writes the lease again.
                self.lease_written = None;
                for plan in releases {
                    retry(&mut self.retried, plan);
                }
                // Spare slots go back with a later batch; unused tokens are given up (they refill with time).
                for given in returns {
                    for _ in 0..given.slots {
                        retry(&mut self.retried, given.plan.clone());
                    }
                }
                for group in groups.into_iter().rev() {
                    self.pending.push_front(group);
                }
                let mut own = Vec::new();
                for op in ops {
                    match op {
                        Op::Admit { reply, .. } => drop(reply.send(Err(error.clone()))),
                        Op::Release { plan, done } => {
                            retry(&mut self.retried, plan);
                            if let Some(done) = done {
                                let _ = done.send(Err(error.clone()));
                            }
                        }
                        Op::AddSpend { keys, delta, reply, settle } => {
                            if settle {
                                own.push(Spend { keys, delta });
                            }
                            let _ = reply.send(Err(error.clone()));
                        }
                        Op::Credit { plan, tokens, slots, asked, .. } => {
                            self.inner.granted((&plan, tokens, slots, asked), false, &mut self.returns);
                        }
                    }
                }
                if let (Some(marker), false) = (marker, own.is_empty()) {
                    self.keep(Group { marker, spends: own });
                }
            }
        }
    }

    /// Keeps a failed batch's settles to send again, unless too many wait already: those are dropped and counted.
    fn keep(&mut self, group: Group) {
        let count = group.spends.len() as u64;
        if self.inner.spend_pending.load(Relaxed) > MAX_PENDING_SETTLES {
            self.inner.spend_pending.fetch_sub(count, Relaxed);
            self.inner.spend_dropped.fetch_add(count, Relaxed);
            tracing::warn!(count, "spend changes could not be made and are dropped: too many wait for redis");
            return;
        }
        self.pending.push_back(group);
    }
}

/// The writer: takes what waits on the queue and sends it as one batch, with up to `MAX_IN_FLIGHT` batches out on
/// the connection at once (Redis runs them in the order sent); answers each operation; refreshes the lease when
/// idle, and sends again what failed. Ends when the backend is dropped and the last batch came back.
async fn write(inner: Arc<Inner>, mut queue: mpsc::Receiver<Op>) {
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = tokio::time::interval(CREDIT_TTL / 2);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut writer = Writer {
        inner: inner.clone(),
        retried: Vec::new(),
        returns: Vec::new(),
        pending: std::collections::VecDeque::new(),
        lease_written: None,
        next_marker: 0,
    };
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    loop {
        let mut ops = Vec::new();
        tokio::select! {
            biased;
            Some((batch, result)) = in_flight.next(), if !in_flight.is_empty() => {
                writer.finish(batch, result);
                if !open && in_flight.is_empty() {
                    break;
                }
                continue;
            }
            received = queue.recv_many(&mut ops, MAX_BATCH), if open && in_flight.len() < MAX_IN_FLIGHT => {
                if received == 0 {
                    // The backend is gone: what its credits hold goes back with one last batch.
                    open = false;
                    inner.sweep(true, &mut writer.returns);
                    if writer.returns.is_empty() {
                        if in_flight.is_empty() {
                            break;
                        }
                        continue;
                    }
                }
                gather(&mut queue, &mut ops).await;
            }
            // Only while there are credits (a new one is asked for through the queue, which wakes the loop).
            _ = sweep.tick(), if in_flight.is_empty() && !inner.credits().is_empty() => {
                inner.sweep(false, &mut writer.returns);
                if writer.returns.is_empty() {
                    continue;
                }
            }
            _ = heartbeat.tick(), if in_flight.is_empty() => {
                let fresh = writer.lease_written.is_some_and(|at| at.elapsed() < HEARTBEAT);
                if fresh && !writer.has_backlog() {
                    continue;
                }
            }
        }
        // A settle counts as pending from when its first call goes out until a call carrying it succeeds.
        let settles = ops.iter().filter(|op| matches!(op, Op::AddSpend { settle: true, .. })).count();
        inner.spend_pending.fetch_add(settles as u64, Relaxed);
        let batch = writer.batch(ops);
        in_flight.push(fly(inner.clone(), batch));
    }
}

/// Lets the runtime run what is ready (`GATHER_YIELDS` yields at most) while fewer than `GATHER_BELOW` operations
/// wait, taking what queued meanwhile: requests whose bytes have arrived get to queue their admissions and share
/// the call instead of each paying for the next one.
async fn gather(queue: &mut mpsc::Receiver<Op>, ops: &mut Vec<Op>) {
    for _ in 0..GATHER_YIELDS {
        if ops.len() >= GATHER_BELOW {
            return;
        }
        tokio::task::yield_now().await;
        while ops.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
    }
}

/// One batch's call.
async fn fly(inner: Arc<Inner>, batch: Batch) -> (Batch, Result<Vec<i64>, StateError>) {
    let result = inner.send(&batch).await;
    (batch, result)
}

/// Keeps a release for the next batch, unless too many wait already.
fn retry(retried: &mut Vec<Arc<Plan>>, plan: Arc<Plan>) {
    if retried.len() < MAX_RETRIED_RELEASES {
        retried.push(plan);
    } else {
        tracing::warn!("concurrency slots could not be given back (their lease frees them)");
    }
}

/// Hands each operation its part of the batch's answer.
fn answer(
    inner: &Inner,
    ops: impl Iterator<Item = Op>,
    values: &[i64],
    retried: &mut Vec<Arc<Plan>>,
    returns: &mut Vec<Return>,
) {
    let mut values = values.iter().copied();
    let short = || StateError(format!("redis at {}: a batch answered too few values", inner.shown));
    for op in ops {
        match op {
            Op::Admit { plan, reply, .. } => {
                let numbers = match values.next() {
                    Some(0) => Some((0, 0, 0)),
                    Some(1) => values.next().map(|index| (1, index, 0)),
                    Some(2) => values.next().zip(values.next()).map(|(index, retry_after)| (2, index, retry_after)),
                    Some(other) => Some((other, 0, 0)),
                    None => None,
                };
                let Some((kind, index, retry_after)) = numbers else {
                    let _ = reply.send(Err(short()));
                    continue;
                };
                let verdict = verdict(&plan, kind, index, retry_after)
                    .map_err(|what| StateError(format!("redis at {}: {what}", inner.shown)));
                let admitted = matches!(verdict, Ok(Verdict::Admit)) && !plan.slots.is_empty();
                if reply.send(verdict).is_err() && admitted {
                    // Its request gave up waiting: the slots it was given go back with the next batch.
                    retry(retried, plan);
                }
            }
            Op::Release { done, .. } => {
                if let Some(done) = done {
                    let _ = done.send(Ok(()));
                }
            }
            Op::AddSpend { keys, reply, .. } => {
                let got: Vec<i64> = values.by_ref().take(keys.len()).collect();
                let _ = reply.send(if got.len() == keys.len() { Ok(got) } else { Err(short()) });
            }
            Op::Credit { plan, tokens, slots, asked, .. } => {
                inner.granted((&plan, tokens, slots, asked), values.next() == Some(1), returns);
            }
        }
    }
}

/// The verdict of one admission's three numbers.
fn verdict(plan: &Plan, kind: i64, index: i64, retry_after_us: i64) -> Result<Verdict, String> {
    let within = |len: usize| usize::try_from(index).ok().filter(|index| *index < len);
    match kind {
        0 => Ok(Verdict::Admit),
        1 => within(plan.slots.len())
            .map(|slot| Verdict::Full { slot })
            .ok_or_else(|| format!("script answered slot {index} for {} slots", plan.slots.len())),
        2 => within(plan.buckets.len())
            .map(|bucket| Verdict::Limited { bucket, retry_after_us: u64::try_from(retry_after_us).unwrap_or(0) })
            .ok_or_else(|| format!("script answered bucket {index} for {} buckets", plan.buckets.len())),
        other => Err(format!("script answered an unknown verdict {other}")),
    }
}

impl SharedServer for Redis {
    fn eval<'a>(
        &'a self,
        script: &'a Script,
        keys: &'a [String],
        args: &'a [String],
    ) -> BoxFuture<'a, Result<redis::Value, StateError>> {
        Box::pin(async move {
            let inner = &self.inner;
            inner
                .bounded(async {
                    let mut connection = inner.connection().await?;
                    let mut invocation = script.prepare_invoke();
                    for name in keys {
                        invocation.key(name);
                    }
                    for arg in args {
                        invocation.arg(arg);
                    }
                    invocation.invoke_async(&mut connection).await
                })
                .await
        })
    }

    fn pipeline<'a>(&'a self, pipeline: &'a redis::Pipeline) -> BoxFuture<'a, Result<redis::Value, StateError>> {
        Box::pin(async move {
            let inner = &self.inner;
            inner
                .bounded(async {
                    let mut connection = inner.connection().await?;
                    pipeline.query_async(&mut connection).await
                })
                .await
        })
    }
}

/// `tollgate:` + the key.
pub fn key(name: &str) -> String {
    format!("{KEY_PREFIX}{name}")
}

fn mask_password(url: &str) -> String {
    if url.contains(',') && url.matches("://").count() > 1 {
        return url.split(',').map(mask_password).collect::<Vec<_>>().join(",");
    }
    let Some(scheme_end) = url.find("://").map(|at| at + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..].find('/').map_or(url.len(), |at| scheme_end + at);
    match url[scheme_end..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &url[scheme_end..scheme_end + at];
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let masked = if userinfo.contains(':') { format!("{user}:***") } else { "***".to_owned() };
            format!("{}{masked}{}", &url[..scheme_end], &url[scheme_end + at..])
        }
        None => url.to_owned(),
    }
}

/// The node URLs of a cluster URL (`redis+cluster://a:1,b:2`, or `redis://a:1,redis://b:2`), `None` for one
/// server.
fn cluster_nodes(url: &str) -> Result<Option<Vec<String>>, String> {
    let (scheme, rest) = url.split_once("://").ok_or("not a URL: write redis://host:port")?;
    let plain = match scheme {
        "redis+cluster" => "redis",
        "rediss+cluster" => "rediss",
        _ if url.contains(',') => {
            let nodes: Vec<String> = url.split(',').map(|node| node.trim().to_owned()).collect();
            if let Some(odd) = nodes.iter().find(|node| !node.starts_with("redis://") && !node.starts_with("rediss://"))
            {
                return Err(format!("cluster node {:?} is not a redis:// or rediss:// URL", mask_password(odd)));
            }
            return Ok(Some(nodes));
        }
        _ => return Ok(None),
    };
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(authority, path)| (authority, path));
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .filter(|host| !host.is_empty())
        .map(|host| format!("{plain}://{userinfo}{host}/{path}"))
        .collect();
    if nodes.is_empty() {
        return Err("a cluster URL names no node: write redis+cluster://host:port,host:port".to_owned());
    }
    Ok(Some(nodes))
}

/// The certificates of `rediss://` from the upstream trust settings: the system roots (unless turned off) and
/// each `extra_ca` file, and the upstream client certificate when one is configured.
fn certificates(trust: &UpstreamFiles) -> Result<TlsCertificates, String> {
    use base64::Engine as _;
    let mut bundle = String::new();
    let mut pem = |der: &[u8]| {
        bundle.push_str("-----BEGIN CERTIFICATE-----\n");
        let encoded = base64::engine::general_purpose::STANDARD.encode(der);
        for line in encoded.as_bytes().chunks(64) {
            bundle.push_str(std::str::from_utf8(line).unwrap_or_default());
            bundle.push('\n');
        }
        bundle.push_str("-----END CERTIFICATE-----\n");
    };
    if trust.system_roots {
        for certificate in rustls_native_certs::load_native_certs().certs {
            pem(&certificate);
        }
    }
    for path in &trust.extra_ca {
        for certificate in crate::tls::load_certs(path)? {
            pem(&certificate);
        }
    }
    if bundle.is_empty() {
        return Err("no trusted roots for rediss://: enable upstream.trust.system_roots or name extra_ca files".into());
    }
    let client_tls = match &trust.client_cert {
        Some((cert, key)) => {
            let read = |path: &std::path::Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
            Some(redis::ClientTlsConfig { client_cert: read(cert)?, client_key: read(key)? })
        }
        None => None,
    };
    Ok(TlsCertificates { client_tls, root_cert: Some(bundle.into_bytes()) })
}

/// The keys whose period has not ended at `now_ms`, with their index among `keys`.
fn live(keys: &[SpendKey], now_ms: u64) -> Vec<(usize, &SpendKey)> {
    keys.iter().enumerate().filter(|(_, key)| !key.has_ended(now_ms)).collect()
}

/// Puts `got` (one value per live key) in its place among `len` values; ended keys stay 0.
fn spread(len: usize, live: &[(usize, &SpendKey)], got: Vec<i64>) -> Result<Vec<i64>, StateError> {
    if got.len() != live.len() {
        return Err(StateError(format!("redis answered {} spend values for {} keys", got.len(), live.len())));
    }
    let mut values = vec![0; len];
    for ((index, _), value) in live.iter().zip(got) {
        values[*index] = value;
    }
    Ok(values)
}

/// A plan of only `buckets` or only `slots`, for the single-purpose operations.
fn plan_of(buckets: &[Bucket], slots: &[Slot]) -> Arc<Plan> {
    Arc::new(Plan::of(buckets.to_vec(), slots.to_vec()))
}

impl Backend for Redis {
    fn acquire<'a>(&'a self, buckets: &'a [Bucket], now_us: u64) -> BoxFuture<'a, Result<Admission, StateError>> {
        Box::pin(async move {
            if buckets.is_empty() {
                return Ok(Admission::Admit);
            }
            Ok(match self.admit_remote(&plan_of(buckets, &[]), now_us).await? {
                Verdict::Limited { bucket, retry_after_us } => Admission::Limited { bucket, retry_after_us },
                Verdict::Admit | Verdict::Full { .. } => Admission::Admit,
            })
        })
    }

    fn enter<'a>(&'a self, slots: &'a [Slot]) -> BoxFuture<'a, Result<Option<usize>, StateError>> {
        Box::pin(async move {
            if slots.is_empty() {
                return Ok(None);
            }
            Ok(match self.admit_remote(&plan_of(&[], slots), 0).await? {
                Verdict::Full { slot } => Some(slot),
                Verdict::Admit | Verdict::Limited { .. } => None,
            })
        })
    }

    fn leave<'a>(&'a self, slots: &'a [Slot]) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            if slots.is_empty() {
                return Ok(());
            }
            self.release_now(plan_of(&[], slots)).await
        })
    }

    fn admit<'a>(&'a self, plan: &'a Arc<Plan>, now_us: u64) -> BoxFuture<'a, Result<Verdict, StateError>> {
        let block = credit_block(plan);
        if block == 0 {
            return Box::pin(self.admit_remote(plan, now_us));
        }
        let taken = self.inner.take_credit(plan, block);
        if let Some((tokens, slots)) = taken.ask {
            let op = Op::Credit { plan: plan.clone(), tokens, slots, now_us, asked: Instant::now() };
            if let Err(error) = self.queue().try_send(op) {
                let (mpsc::error::TrySendError::Full(op) | mpsc::error::TrySendError::Closed(op)) = error;
                if let Op::Credit { plan, tokens, slots, asked, .. } = op {
                    self.inner.granted((&plan, tokens, slots, asked), false, &mut Vec::new());
                }
            }
        }
        if taken.admitted {
            return Box::pin(std::future::ready(Ok(Verdict::Admit)));
        }
        Box::pin(self.admit_remote(plan, now_us))
    }

    fn release_later(&self, plan: Arc<Plan>) -> Result<(), Arc<Plan>> {
        if plan.slots.is_empty() || self.inner.keep_slot(&plan) {
            return Ok(());
        }
        match self.queue().try_send(Op::Release { plan, done: None }) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(Op::Release { plan, .. }))
            | Err(mpsc::error::TrySendError::Closed(Op::Release { plan, .. })) => Err(plan),
            Err(_) => Ok(()),
        }
    }

    fn add_spend<'a>(
        &'a self,
        keys: &'a [SpendKey],
        delta_micro_usd: i64,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Vec<i64>, StateError>> {
        Box::pin(self.change_spend(keys, delta_micro_usd, now_ms, false))
    }

    fn settle_spend<'a>(
        &'a self,
        keys: &'a [SpendKey],
        delta_micro_usd: i64,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Vec<i64>, StateError>> {
        Box::pin(self.change_spend(keys, delta_micro_usd, now_ms, true))
    }

    fn spend_backlog(&self) -> SpendBacklog {
        SpendBacklog {
            pending: self.inner.spend_pending.load(Relaxed),
            dropped: self.inner.spend_dropped.load(Relaxed),
        }
    }

    fn spend<'a>(&'a self, keys: &'a [SpendKey], now_ms: u64) -> BoxFuture<'a, Result<Vec<i64>, StateError>> {
        Box::pin(async move {
            let live = live(keys, now_ms);
            if live.is_empty() {
                return Ok(vec![0; keys.len()]);
            }
            let names: Vec<String> = live.iter().map(|(_, spend)| self.inner.key(&spend.key)).collect();
            let inner = &self.inner;
            let got: Vec<Option<i64>> = inner
                .bounded(async {
                    let mut connection = inner.connection().await?;
                    redis::cmd("MGET").arg(&names).query_async(&mut connection).await
                })
                .await?;
            spread(keys.len(), &live, got.into_iter().map(|value| value.unwrap_or(0)).collect())
        })
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    fn shared_server(&self) -> Option<&dyn SharedServer> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(mask_password("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
        assert_eq!(mask_password("redis://:s3cret@redis:6379"), "redis://:***@redis:6379");
        assert_eq!(mask_password("redis://app:s3cret@redis:6379/2"), "redis://app:***@redis:6379/2");
        assert_eq!(mask_password("redis://token@redis"), "redis://***@redis");
        assert_eq!(mask_password("redis://a:b@c@redis/1"), "redis://a:***@redis/1");
        assert_eq!(mask_password("redis://:pw@a:1,redis://:pw@b:2"), "redis://:***@a:1,redis://:***@b:2");
    }

    #[test]
    fn a_bad_url_is_refused_without_its_password() {
        let error = Redis::connect("http://user:s3cret@example").expect_err("not a redis URL");
        assert!(!error.0.contains("s3cret"), "{error}");
        assert!(error.0.contains("user:***"), "{error}");
    }

    #[test]
    fn cluster_urls_name_their_nodes() {
        assert_eq!(cluster_nodes("redis://127.0.0.1:6379/"), Ok(None));
        assert_eq!(
            cluster_nodes("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001"),
            Ok(Some(vec!["redis://:pw@10.0.0.1:7000/".to_owned(), "redis://:pw@10.0.0.2:7001/".to_owned()]))
        );
        assert_eq!(cluster_nodes("rediss+cluster://a:7000/"), Ok(Some(vec!["rediss://a:7000/".to_owned()])));
        assert_eq!(
            cluster_nodes("redis://a:7000, redis://b:7001"),
            Ok(Some(vec!["redis://a:7000".to_owned(), "redis://b:7001".to_owned()]))
        );
        assert!(cluster_nodes("redis://a:7000,b:7001").is_err());
        assert!(cluster_nodes("redis+cluster:///").is_err());
        let backend = Redis::connect("redis+cluster://127.0.0.1:1,127.0.0.1:2").expect("a cluster URL");
        assert!(backend.is_cluster());
        assert_eq!(backend.key("rate:org"), "tollgate:{tollgate}:rate:org");
    }

    #[test]
    fn verdicts_are_checked() {
        let plan = plan_of(&[], &[Slot { key: "conc:org".into(), scope: super::super::Scope::Org, max: 1 }]);
        assert_eq!(verdict(&plan, 0, 0, 0), Ok(Verdict::Admit));
        assert_eq!(verdict(&plan, 1, 0, 0), Ok(Verdict::Full { slot: 0 }));
        assert!(verdict(&plan, 1, 1, 0).is_err());
        assert!(verdict(&plan, 2, 0, 5).is_err(), "no bucket 0");
        assert!(verdict(&plan, 7, 0, 0).is_err());
    }

    #[test]
    fn a_batch_sends_each_plan_once_and_runs_of_one_plan_as_counts() {
        let backend = Redis::connect("redis://127.0.0.1:1/").expect("valid URL");
        let scope = super::super::Scope::User;
        let rate = super::super::Rate { per_minute: 60, burst: 2 };
        let ann = Plan::of(
            vec![Bucket { key: "rate:user:ann".into(), scope, rate }],
            vec![Slot { key: "conc:user:ann".into(), scope, max: 3 }],
        );
        let bob = Plan::of(Vec::new(), vec![Slot { key: "conc:user:bob".into(), scope, max: 1 }]);
        let mut encoder =
            Encoder { inner: &backend.inner, keys: Vec::new(), args: Vec::new(), plans: Vec::new(), open: None };
        encoder.admit(&ann, 0);
        encoder.admit(&ann, 5);
        encoder.release(&bob);
        encoder.release(&bob);
        encoder.admit(&ann, 7);
        let text: Vec<String> = encoder
            .args
            .iter()
            .map(|arg| match arg {
                Arg::Text(text) => (*text).to_owned(),
                Arg::Number(number) => number.to_string(),
                Arg::Signed(number) => number.to_string(),
                Arg::Count(count) => count.to_string(),
            })
            .collect();
        let expected = "p 1 1 3 1000000 2000000 a 1 2 0 5 p 1 0 1 r 2 2 a 1 1 7";
        assert_eq!(text.join(" "), expected);
        assert_eq!(encoder.keys, ["tollgate:slots:user:ann", "tollgate:rate:user:ann", "tollgate:slots:user:bob"]);
    }

    #[test]
    fn only_plans_of_large_limits_are_lent_in_blocks() {
        let scope = super::super::Scope::Org;
        let rate = |burst| Bucket { key: "rate:org".into(), scope, rate: super::super::Rate { per_minute: 60, burst } };
        let cap = |max| Slot { key: "conc:org".into(), scope, max };
        assert_eq!(credit_block(&Plan::of(vec![rate(10_000_000)], vec![cap(100_000)])), CREDIT_BLOCK);
        assert_eq!(credit_block(&Plan::of(vec![rate(4096)], Vec::new())), 64);
        assert_eq!(credit_block(&Plan::of(vec![rate(10_000_000)], vec![cap(512)])), 8);
        assert_eq!(credit_block(&Plan::of(vec![rate(127)], vec![cap(100_000)])), 0, "a burst under 128 is exact");
        assert_eq!(credit_block(&Plan::of(Vec::new(), vec![cap(100)])), 0, "a cap under 128 is exact");
        assert_eq!(credit_block(&Plan::of(Vec::new(), Vec::new())), 0);
    }

    #[test]
    fn ended_spend_keys_read_zero_in_place() {
        let keys = [
            SpendKey { key: "spend:a".into(), period_end_ms: 100 },
            SpendKey { key: "spend:b".into(), period_end_ms: 200 },
        ];
        let live = live(&keys, 150);
        assert_eq!(live.len(), 1);
        assert_eq!(spread(2, &live, vec![7]).ok(), Some(vec![0, 7]));
        assert!(spread(2, &live, vec![7, 8]).is_err());
    }

    #[test]
    fn keys_are_prefixed() {
        assert_eq!(key("rate:org"), "tollgate:rate:org");
        let backend = Redis::connect("redis://127.0.0.1:1/").expect("valid URL");
        let slot = Slot { key: "conc:user:ann".into(), scope: super::super::Scope::User, max: 1 };
        assert_eq!(backend.slot_key(&slot), "tollgate:slots:user:ann");
    }

    #[test]
    fn connecting_is_lazy() {
        // Nothing listens on port 1; the URL is valid, so construction succeeds without a runtime.
        let backend = Redis::connect("redis://127.0.0.1:1/").expect("valid URL");
        assert_eq!(backend.name(), "redis");
        assert!(format!("{backend:?}").contains("127.0.0.1:1"));
    }
}
