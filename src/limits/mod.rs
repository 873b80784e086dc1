//! Rate limits (GCRA) and concurrency caps per user, team, team member and organisation, kept in a state
//! backend: `memory` for one process, `redis` for replicas that must share one limit.
//!
//! Per request (not per connection): `plan` lists the buckets and slots that apply to the principal, the
//! backend admits or refuses all of them at once, and the returned `Admitted` gives the slots back when the
//! request or tunnel ends. The request path never knows which backend it has.
//!
//! The same backends keep spend counters (integer micro-dollars per key and period) for budgets: `add_spend`
//! and `spend`. The embedded backend also writes them to a ledger under `state.path`, so a restart keeps
//! today's spend; rate and concurrency state is memory only.

pub mod budget;
pub mod gcra;
pub mod memory;
pub mod redis;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use gcra::Rate;

use crate::identity::Principal;

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

/// The shared state could not be reached.
#[derive(Debug, Clone, thiserror::Error)]
#[error("state backend unavailable: {0}")]
pub struct StateError(pub String);

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
    /// Adds `delta_micro_usd` (may be negative: a reservation settled lower) to every key, atomically; returns
    /// the new values. A key whose period has ended at `now_ms` takes nothing and answers 0.
    fn add_spend<'a>(
        &'a self,
        keys: &'a [SpendKey],
        delta_micro_usd: i64,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Vec<i64>, StateError>>;
    /// The current values (0 for missing or expired keys).
    fn spend<'a>(&'a self, keys: &'a [SpendKey], now_ms: u64) -> BoxFuture<'a, Result<Vec<i64>, StateError>>;
    /// `embedded` or `redis`, for logs.
    fn name(&self) -> &'static str;
}

/// Where the time comes from: the system clock, or a test's.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> SystemTime;
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Microseconds since the epoch.
pub fn micros(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Milliseconds since the epoch (spend periods).
pub fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A rate and a cap for one scope, compiled.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScopeLimits {
    pub rate: Option<Rate>,
    pub concurrent: Option<u32>,
}

/// A team's limits, compiled.
#[derive(Debug, Clone, Copy, Default)]
pub struct TeamLimits {
    pub team: ScopeLimits,
    pub member: ScopeLimits,
}

/// Every limit of one config.
#[derive(Debug, Default)]
pub struct Limits {
    pub org: ScopeLimits,
    pub user: ScopeLimits,
    pub teams: HashMap<Arc<str>, TeamLimits>,
}

/// The buckets and slots that apply to one principal.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub buckets: Vec<Bucket>,
    pub slots: Vec<Slot>,
}

impl Limits {
    /// A rate where the whole minute's allowance may arrive at once.
    pub fn rate(per_minute: u32) -> Rate {
        Rate { per_minute, burst: per_minute }
    }

    /// What applies to `principal`: its own limits, each of its teams' (a member of several teams is held to
    /// all of them: the strictest wins), and the organisation's.
    pub fn plan(&self, principal: &Principal) -> Plan {
        let mut plan = Plan::default();
        let user = &principal.name;
        plan.add(|| format!("user:{user}"), Scope::User, self.user);
        for team in principal.teams.iter() {
            if let Some(limits) = self.teams.get(team) {
                plan.add(|| format!("team:{team}"), Scope::Team, limits.team);
                plan.add(|| format!("team:{team}:user:{user}"), Scope::TeamMember, limits.member);
            }
        }
        plan.add(|| "org".to_owned(), Scope::Org, self.org);
        plan
    }
}

impl Plan {
    /// Adds the scope's bucket and slot; the key is only built when a limit applies (the common case with no
    /// limits costs no allocation).
    fn add(&mut self, key: impl Fn() -> String, scope: Scope, limits: ScopeLimits) {
        if let Some(rate) = limits.rate {
            self.buckets.push(Bucket { key: format!("rate:{}", key()), scope, rate });
        }
        if let Some(max) = limits.concurrent {
            self.slots.push(Slot { key: format!("conc:{}", key()), scope, max });
        }
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty() && self.slots.is_empty()
    }
}

/// Why a request is held back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Rate { scope: Scope, per_minute: u32, retry_after_secs: u64 },
    Concurrency { scope: Scope, max: u32 },
}

impl Refusal {
    /// The scope whose limit refused.
    pub fn scope(&self) -> Scope {
        match self {
            Refusal::Rate { scope, .. } | Refusal::Concurrency { scope, .. } => *scope,
        }
    }
}

/// Admits requests against the current config's limits over one backend.
#[derive(Debug, Clone)]
pub struct Limiter {
    backend: Arc<dyn Backend>,
}

/// The slots a request holds; given back when dropped.
#[derive(Debug)]
pub struct Admitted {
    backend: Arc<dyn Backend>,
    slots: Vec<Slot>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.slots.is_empty() {
            return;
        }
        let backend = self.backend.clone();
        let slots = std::mem::take(&mut self.slots);
        let release = async move {
            if let Err(error) = backend.leave(&slots).await {
                tracing::warn!(%error, "concurrency slots could not be given back");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(release);
            }
            Err(_) => tracing::warn!("concurrency slots dropped outside the runtime"),
        }
    }
}

impl Admitted {
    /// Holds nothing (no limits apply, or they could not be checked and `state.on_error` allows).
    pub fn none() -> Self {
        Self { backend: Arc::new(memory::Memory::default()), slots: Vec::new() }
    }

    /// Gives the slots back now, before the request or tunnel is recorded and its connection goes on or closes:
    /// a client that saw it end must find the slots free. (Dropping instead gives them back from a spawned task,
    /// a moment later: only for paths that end early.)
    pub async fn release(mut self) {
        let slots = std::mem::take(&mut self.slots);
        if slots.is_empty() {
            return;
        }
        if let Err(error) = self.backend.leave(&slots).await {
            tracing::warn!(%error, "concurrency slots could not be given back");
        }
    }
}

impl Limiter {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self { backend }
    }

    /// The state backend (spend counters for budgets live there too).
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Admits one request of `plan` at `now`, or says which limit refuses it.
    pub async fn admit(&self, plan: Plan, now: SystemTime) -> Result<Result<Admitted, Refusal>, StateError> {
        let mut admitted = Admitted { backend: self.backend.clone(), slots: Vec::new() };
        if plan.is_empty() {
            return Ok(Ok(admitted));
        }
        // Slots first: a request refused for concurrency must not use up its rate (clients retry refusals, and
        // would be rate limited once a slot is free); slots taken by a request the rate refuses are given back.
        if !plan.slots.is_empty() {
            if let Some(full) = self.backend.enter(&plan.slots).await? {
                let slot = &plan.slots[full];
                return Ok(Err(Refusal::Concurrency { scope: slot.scope, max: slot.max }));
            }
            admitted.slots = plan.slots;
        }
        if !plan.buckets.is_empty() {
            let admission = match self.backend.acquire(&plan.buckets, micros(now)).await {
                Ok(admission) => admission,
                Err(error) => {
                    admitted.release().await;
                    return Err(error);
                }
            };
            if let Admission::Limited { bucket, retry_after_us } = admission {
                admitted.release().await;
                let bucket = &plan.buckets[bucket];
                let retry_after_secs = Duration::from_micros(retry_after_us).as_secs_f64().ceil().max(1.0) as u64;
                return Ok(Err(Refusal::Rate {
                    scope: bucket.scope,
                    per_minute: bucket.rate.per_minute,
                    retry_after_secs,
                }));
            }
        }
        Ok(Ok(admitted))
    }
}
