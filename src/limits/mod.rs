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

pub mod backend;
pub mod budget;
pub mod gcra;
pub mod memory;
pub mod redis;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use backend::{
    micros, millis, Admission, Backend, BoxFuture, Bucket, Local, Plan, Scope, SharedServer, Slot, SpendBacklog,
    SpendKey, StateError, Verdict,
};
pub use gcra::Rate;

use crate::identity::Principal;

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
    /// Plans already built, by principal name (with the teams they were built for): a request of a known
    /// principal costs a lookup, not a set of formatted keys. Per snapshot, so a reload starts afresh.
    plans: std::sync::RwLock<HashMap<Arc<str>, Arc<Plan>, foldhash::fast::RandomState>>,
}

/// Plans kept per snapshot before the cache starts over (principals are far fewer in practice).
const PLAN_CACHE: usize = 100_000;

impl Limits {
    pub fn new(org: ScopeLimits, user: ScopeLimits, teams: HashMap<Arc<str>, TeamLimits>) -> Self {
        Self { org, user, teams, plans: Default::default() }
    }

    /// A rate where the whole minute's allowance may arrive at once.
    pub fn rate(per_minute: u32) -> Rate {
        Rate { per_minute, burst: per_minute }
    }

    /// What applies to `principal`: its own limits, each of its teams' (a member of several teams is held to
    /// all of them: the strictest wins), and the organisation's.
    pub fn plan(&self, principal: &Principal) -> Arc<Plan> {
        let cached = self.plans.read().unwrap_or_else(|p| p.into_inner()).get(&principal.name).cloned();
        if let Some(plan) = cached.filter(|plan| *plan.teams() == principal.teams) {
            return plan;
        }
        let plan = Arc::new(self.build_plan(principal));
        let mut plans = self.plans.write().unwrap_or_else(|p| p.into_inner());
        if plans.len() >= PLAN_CACHE {
            plans.clear();
        }
        plans.insert(principal.name.clone(), plan.clone());
        plan
    }

    fn build_plan(&self, principal: &Principal) -> Plan {
        let mut plan = Plan::for_teams(principal.teams.clone());
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

/// The slots a request holds (those of its plan); given back when dropped.
#[derive(Debug)]
pub struct Admitted {
    backend: Arc<dyn Backend>,
    held: Option<Arc<Plan>>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let Some(plan) = self.held.take() else { return };
        if let Some(memory) = self.backend.local() {
            memory.leave_now(&plan.slots);
            return;
        }
        // Queued for the backend's writer (batched with other requests' admissions), or, when the queue is full,
        // given back from a spawned task.
        let Err(plan) = self.backend.release_later(plan) else { return };
        let backend = self.backend.clone();
        let release = async move {
            if let Err(error) = backend.leave(&plan.slots).await {
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
        Self { backend: Arc::new(memory::Memory::default()), held: None }
    }

    /// Gives the slots back now, before the request or tunnel is recorded and its connection goes on or closes:
    /// a client that saw it end must find the slots free. The embedded backend gives them back at once; a shared
    /// one queues the release ahead of anything this replica admits next (so the client's next request here finds
    /// them free) and sends it with the next batch, off the request path; with its queue full, it gives them
    /// back inline. (Dropping does the same, from a spawned task when the queue is full.)
    pub async fn release(mut self) {
        let Some(plan) = self.held.take() else { return };
        if let Some(memory) = self.backend.local() {
            memory.leave_now(&plan.slots);
            return;
        }
        let Err(plan) = self.backend.release_later(plan) else { return };
        if let Err(error) = self.backend.leave(&plan.slots).await {
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
    pub async fn admit(&self, plan: Arc<Plan>, now: SystemTime) -> Result<Result<Admitted, Refusal>, StateError> {
        if plan.is_empty() {
            return Ok(Ok(Admitted { backend: self.backend.clone(), held: None }));
        }
        // The embedded backend answers at once: no future, no allocation.
        if let Some(memory) = self.backend.local() {
            let full = memory.enter_now(&plan.slots);
            return Ok(self.decide(plan, full, |buckets| memory.acquire_now(buckets, micros(now))));
        }
        // One atomic round trip over every slot and bucket (shared with other requests' admissions).
        let verdict = self.backend.admit(&plan, micros(now)).await?;
        Ok(match verdict {
            Verdict::Admit => {
                let held = (!plan.slots.is_empty()).then(|| plan.clone());
                Ok(Admitted { backend: self.backend.clone(), held })
            }
            Verdict::Full { slot } => {
                let slot = plan.slots.get(slot).ok_or_else(|| StateError(format!("no slot {slot}")))?;
                Err(Refusal::Concurrency { scope: slot.scope, max: slot.max })
            }
            Verdict::Limited { bucket, retry_after_us } => {
                let bucket = plan.buckets.get(bucket).ok_or_else(|| StateError(format!("no bucket {bucket}")))?;
                Err(rate_refusal(bucket, retry_after_us))
            }
        })
    }

    /// The outcome once the slots are entered (`full`: the index of a full one) and the buckets asked.
    fn decide(
        &self,
        plan: Arc<Plan>,
        full: Option<usize>,
        acquire: impl FnOnce(&[Bucket]) -> Admission,
    ) -> Result<Admitted, Refusal> {
        if let Some(full) = full {
            let slot = &plan.slots[full];
            return Err(Refusal::Concurrency { scope: slot.scope, max: slot.max });
        }
        let admitted = Admitted { backend: self.backend.clone(), held: (!plan.slots.is_empty()).then(|| plan.clone()) };
        if plan.buckets.is_empty() {
            return Ok(admitted);
        }
        match acquire(&plan.buckets) {
            Admission::Admit => Ok(admitted),
            Admission::Limited { bucket, retry_after_us } => {
                drop(admitted);
                Err(rate_refusal(&plan.buckets[bucket], retry_after_us))
            }
        }
    }
}

/// The refusal of an empty bucket, with `Retry-After` in whole seconds (at least one).
fn rate_refusal(bucket: &Bucket, retry_after_us: u64) -> Refusal {
    let retry_after_secs = Duration::from_micros(retry_after_us).as_secs_f64().ceil().max(1.0) as u64;
    Refusal::Rate { scope: bucket.scope, per_minute: bucket.rate.per_minute, retry_after_secs }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AuthMethod;

    fn principal(teams: &[&str]) -> Principal {
        Principal::named("alice", teams, AuthMethod::Basic)
    }

    fn limits() -> Limits {
        let user = ScopeLimits { rate: Some(Limits::rate(60)), concurrent: Some(4) };
        let member = ScopeLimits { rate: Some(Limits::rate(10)), concurrent: None };
        let teams = HashMap::from([(Arc::from("core"), TeamLimits { team: ScopeLimits::default(), member })]);
        Limits::new(ScopeLimits::default(), user, teams)
    }

    #[test]
    fn a_known_principal_gets_its_cached_plan() {
        let limits = limits();
        let first = limits.plan(&principal(&["core"]));
        let second = limits.plan(&principal(&["core"]));
        assert!(Arc::ptr_eq(&first, &second), "the second request reuses the plan");
        let keys: Vec<&str> = first.buckets.iter().map(|b| b.key.as_str()).collect();
        assert_eq!(keys, ["rate:user:alice", "rate:team:core:user:alice"]);
        assert_eq!(first.slots.iter().map(|s| s.key.as_str()).collect::<Vec<_>>(), ["conc:user:alice"]);
    }

    #[test]
    fn a_principal_whose_teams_changed_gets_a_new_plan() {
        let limits = limits();
        let with_team = limits.plan(&principal(&["core"]));
        let without = limits.plan(&principal(&[]));
        assert!(!Arc::ptr_eq(&with_team, &without));
        assert_eq!(without.buckets.len(), 1, "only the user's own rate applies: {without:?}");
    }

    #[tokio::test]
    async fn the_embedded_fast_path_admits_refuses_and_gives_slots_back() {
        let limits = limits();
        let limiter = Limiter::new(Arc::new(memory::Memory::default()));
        let plan = limits.plan(&principal(&[]));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(limiter.admit(plan.clone(), now).await.expect("state").expect("admitted"));
        }
        let refused = limiter.admit(plan.clone(), now).await.expect("state").expect_err("a fifth is over the cap");
        assert_eq!(refused, Refusal::Concurrency { scope: Scope::User, max: 4 });
        held.pop().expect("held").release().await;
        assert!(limiter.admit(plan, now).await.expect("state").is_ok(), "a slot given back is free again");
    }
}
