//! What a state backend is: the keys it holds (rate buckets, concurrency slots, spend counters) and the atomic
//! operations every backend offers, so the request path never knows which backend it has.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::gcra::Rate;

/// The buckets and slots that apply to one principal (built by `Limits::plan`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub buckets: Vec<Bucket>,
    pub slots: Vec<Slot>,
    /// The teams the plan was built for.
    teams: Arc<[Arc<str>]>,
}

impl Plan {
    /// A plan of these buckets and slots (tests, and backends that admit single-purpose operations).
    pub fn of(buckets: Vec<Bucket>, slots: Vec<Slot>) -> Plan {
        Plan { buckets, slots, teams: Arc::from([]) }
    }

    /// An empty plan for a principal of these teams, to which `Limits::plan` adds what applies.
    pub fn for_teams(teams: Arc<[Arc<str>]>) -> Plan {
        Plan { teams, ..Plan::default() }
    }

    /// The teams the plan was built for: a cached plan is used again only for the same teams.
    pub fn teams(&self) -> &Arc<[Arc<str>]> {
        &self.teams
    }
}

/// A boxed future, so `Backend` stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which limit a bucket or slot belongs to; the `scope` label of `tollgate_rate_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    User,
    Team,
    TeamMember,
    Org,
}

impl Scope {
    pub fn label(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Team => "team",
            Scope::TeamMember => "team_member",
            Scope::Org => "org",
        }
    }
}

/// One rate-limited key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    pub key: String,
    pub scope: Scope,
    pub rate: Rate,
}

/// One concurrency-capped key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub key: String,
    pub scope: Scope,
    pub max: u32,
}

/// The backend's answer for a set of buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admit,
    /// `bucket` (an index into the request's buckets) is empty for `retry_after_us`.
    Limited {
        bucket: usize,
        retry_after_us: u64,
    },
}

/// The answer to one whole admission: every slot and bucket of a plan at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted: a slot taken in every capped key and a request from every bucket.
    Admit,
    /// `slot` (an index into the plan's slots) is full; nothing was taken.
    Full { slot: usize },
    /// `bucket` (an index into the plan's buckets) is empty for `retry_after_us`; nothing was taken.
    Limited { bucket: usize, retry_after_us: u64 },
}

/// The shared state could not be reached.
#[derive(Debug, Clone, thiserror::Error)]
#[error("state backend unavailable: {0}")]
pub struct StateError(pub String);

/// Spend changes a shared backend could not make yet (`tollgate_state_spend_pending`) and those it dropped
/// because too many waited (`tollgate_state_spend_dropped_total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpendBacklog {
    pub pending: u64,
    pub dropped: u64,
}

/// One spend counter: a key and the end of its period (ms since the epoch, UTC); past it the counter is gone.
///
/// A key names one period (e.g. `spend:team:core:day:2026-11-28`): a backend may keep a counter a while past
/// its end (Redis a day, for replicas' clocks), so a key must not be reused for a later period.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SpendKey {
    pub key: String,
    pub period_end_ms: u64,
}

impl SpendKey {
    /// Whether the period has ended at `now_ms`: the counter then reads 0 and takes no more spend.
    pub fn has_ended(&self, now_ms: u64) -> bool {
        now_ms >= self.period_end_ms
    }
}

/// Where limit state lives. Every method is atomic over the keys it is given.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Admits one request against every bucket, or none: a refusal takes nothing from the others.
    fn acquire<'a>(&'a self, buckets: &'a [Bucket], now_us: u64) -> BoxFuture<'a, Result<Admission, StateError>>;
    /// Takes a slot in every one of `slots`, or none; returns the index of a full one.
    fn enter<'a>(&'a self, slots: &'a [Slot]) -> BoxFuture<'a, Result<Option<usize>, StateError>>;
    /// Gives slots back.
    fn leave<'a>(&'a self, slots: &'a [Slot]) -> BoxFuture<'a, Result<(), StateError>>;
    /// Admits one request of `plan` at `now_us`: its slots first (a request refused for concurrency must not
    /// use up its rate), then its buckets; all or nothing. The default takes one `enter` and one `acquire`, and
    /// gives the slots back when the rate refuses; a shared backend does it in one atomic round trip.
    fn admit<'a>(&'a self, plan: &'a Arc<Plan>, now_us: u64) -> BoxFuture<'a, Result<Verdict, StateError>> {
        Box::pin(async move {
            if !plan.slots.is_empty() {
                if let Some(slot) = self.enter(&plan.slots).await? {
                    return Ok(Verdict::Full { slot });
                }
            }
            let admission = match self.acquire(&plan.buckets, now_us).await {
                Ok(admission) => admission,
                Err(error) => {
                    if !plan.slots.is_empty() {
                        let _ = self.leave(&plan.slots).await;
                    }
                    return Err(error);
                }
            };
            match admission {
                Admission::Admit => Ok(Verdict::Admit),
                Admission::Limited { bucket, retry_after_us } => {
                    if !plan.slots.is_empty() {
                        self.leave(&plan.slots).await?;
                    }
                    Ok(Verdict::Limited { bucket, retry_after_us })
                }
            }
        })
    }
    /// Queues the release of `plan`'s slots off the request path; `Err(plan)` when it cannot be queued (no queue,
    /// or the queue is full), and the caller gives them back itself with `leave`.
    fn release_later(&self, plan: Arc<Plan>) -> Result<(), Arc<Plan>> {
        Err(plan)
    }
    /// Adds `delta_micro_usd` (may be negative: a reservation settled lower) to every key, atomically; returns
    /// the new values. A key whose period has ended at `now_ms` takes nothing and answers 0.
    fn add_spend<'a>(
        &'a self,
        keys: &'a [SpendKey],
        delta_micro_usd: i64,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Vec<i64>, StateError>>;
    /// `add_spend` of `spent_micro_usd + held_micro_usd`, atomically, where the held part only reserves: a budget
    /// reservation's worst case taken (positive) or given back (negative), or replaced at settle by its cost
    /// (`spent` the cost, `held` minus the estimate). Both count in the values; a backend that persists spend
    /// persists only the spent part, so a crash forgets the reservations of the requests it cut. The default adds
    /// both alike: a reservation taken with `add_spend`, a settlement or an estimate given back with `settle_spend`
    /// (which a shared backend does not lose), and only reads when they sum to 0.
    fn add_spend_held<'a>(
        &'a self,
        keys: &'a [SpendKey],
        spent_micro_usd: i64,
        held_micro_usd: i64,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Vec<i64>, StateError>> {
        match spent_micro_usd.saturating_add(held_micro_usd) {
            0 => self.spend(keys, now_ms),
            delta if spent_micro_usd == 0 && held_micro_usd > 0 => self.add_spend(keys, delta, now_ms),
            delta => self.settle_spend(keys, delta, now_ms),
        }
    }
    /// `add_spend` for a change that must not be lost: a settlement, or an estimate given back. A shared backend
    /// that cannot make it now keeps it and makes it once its server answers again, once however often it is sent
    /// (`Err` still means the values are unknown now). The default is `add_spend`.
    fn settle_spend<'a>(
        &'a self,
        keys: &'a [SpendKey],
        delta_micro_usd: i64,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Vec<i64>, StateError>> {
        self.add_spend(keys, delta_micro_usd, now_ms)
    }
    /// Settles waiting to be made again, and those dropped (for the metrics); none for a backend in this process.
    fn spend_backlog(&self) -> SpendBacklog {
        SpendBacklog::default()
    }
    /// The current values (0 for missing or expired keys).
    fn spend<'a>(&'a self, keys: &'a [SpendKey], now_ms: u64) -> BoxFuture<'a, Result<Vec<i64>, StateError>>;
    /// `embedded` or `redis`, for logs.
    fn name(&self) -> &'static str;
    /// The in-process backend, answered synchronously on the request path (no future, no allocation).
    fn local(&self) -> Option<&dyn Local> {
        None
    }
    /// The server the replicas share, for state kept beside the limits (the fleet inventory); `None` for a backend
    /// in this process.
    fn shared_server(&self) -> Option<&dyn SharedServer> {
        None
    }
    /// Ends what this process keeps on disk, at shutdown once requests are done: the embedded backend closes its
    /// spend ledger and lets another process (or this one, started again) take its directory.
    fn close(&self) {}
}

/// A Redis (or Valkey) server the replicas share: state kept beside the limits runs its own scripts and reads there,
/// over the backend's connection and within its timeout.
pub trait SharedServer: Send + Sync {
    /// Runs `script` over `keys` with `args`.
    fn eval<'a>(
        &'a self,
        script: &'a redis::Script,
        keys: &'a [String],
        args: &'a [String],
    ) -> BoxFuture<'a, Result<redis::Value, StateError>>;
    /// Sends `pipeline` in one round trip; its answers, one per command.
    fn pipeline<'a>(&'a self, pipeline: &'a redis::Pipeline) -> BoxFuture<'a, Result<redis::Value, StateError>>;
}

/// A backend in this process: admits and gives back synchronously, without a future.
pub trait Local {
    /// `Backend::acquire`, at once.
    fn acquire_now(&self, buckets: &[Bucket], now_us: u64) -> Admission;
    /// `Backend::enter`, at once.
    fn enter_now(&self, slots: &[Slot]) -> Option<usize>;
    /// `Backend::leave`, at once.
    fn leave_now(&self, slots: &[Slot]);
}

/// Microseconds since the epoch.
pub fn micros(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Milliseconds since the epoch (spend periods).
pub fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
