//! Spend budgets: per user per day, per team per day and month, for the organisation per day and month.
//! Checked before a metered request (its worst case is reserved) and settled with the metered cost after,
//! in the state backend's spend counters (micro-dollars per key and period, UTC days and months).
//!
//! A reservation is one atomic `add_spend_held` of the request's worst case (its input estimate plus `max_tokens`
//! at the output price) over every key that applies, held apart from spend: it counts against the budget like
//! spend, but the embedded ledger persists only settled spend, so a crash forgets the reservations of the
//! requests it cut (their cost is not counted: see docs/metering.md); a budget refuses when that would take it past its limit, and the
//! reservation is then taken back from every key. So a budget is never overrun by a request's output, and
//! concurrent requests can never together be admitted past it: each sees the others' reservations. (The input
//! estimate, bytes / 4, can fall short of the real input tokens, so the settled spend may pass a limit by that
//! much.) While a refused reservation is being taken back it counts for a moment, so a request racing it at a
//! budget near its limit may be refused too (conservative; it retries).
//!
//! Keys name their period (`spend:team:core:day:2026-11-28`, `spend:org:month:2026-11`); a period ends at the
//! next UTC midnight or first of the month, when its counter reads 0 again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Datelike, NaiveDate, Utc};

use super::backend::{millis, Backend, SpendKey, StateError};
use crate::identity::Principal;

/// The largest budget accepted, in USD: its micro-dollars stay exact through Redis's Lua numbers (2^53).
pub const MAX_BUDGET_USD: f64 = 9_000_000_000.0;

/// Budgets in micro-dollars, compiled from `teams.*.budget` and `budgets`.
#[derive(Debug, Clone, Default)]
pub struct Budgets {
    pub org_daily: Option<i64>,
    pub org_monthly: Option<i64>,
    pub teams: HashMap<Arc<str>, TeamBudget>,
}

/// One team's budgets in micro-dollars.
#[derive(Debug, Clone, Copy, Default)]
pub struct TeamBudget {
    pub daily: Option<i64>,
    pub monthly: Option<i64>,
    pub user_daily: Option<i64>,
}

/// Which kind of budget; checked (and reported when several are spent) in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BudgetScope {
    /// What one user may spend in a UTC day: the smallest `user_daily_usd` of the user's teams.
    UserDaily,
    TeamDaily,
    TeamMonthly,
    OrgDaily,
    OrgMonthly,
}

impl BudgetScope {
    /// `user_daily`, `team_daily`, `team_monthly`, `org_daily` or `org_monthly`.
    pub fn label(self) -> &'static str {
        match self {
            BudgetScope::UserDaily => "user_daily",
            BudgetScope::TeamDaily => "team_daily",
            BudgetScope::TeamMonthly => "team_monthly",
            BudgetScope::OrgDaily => "org_daily",
            BudgetScope::OrgMonthly => "org_monthly",
        }
    }

    /// The rule named in a refusal: `budget.team_daily`, ….
    pub fn rule(self) -> &'static str {
        match self {
            BudgetScope::UserDaily => "budget.user_daily",
            BudgetScope::TeamDaily => "budget.team_daily",
            BudgetScope::TeamMonthly => "budget.team_monthly",
            BudgetScope::OrgDaily => "budget.org_daily",
            BudgetScope::OrgMonthly => "budget.org_monthly",
        }
    }

    fn is_daily(self) -> bool {
        matches!(self, BudgetScope::UserDaily | BudgetScope::TeamDaily | BudgetScope::OrgDaily)
    }
}

/// One budget that applies to a principal (`tollgate explain` lists them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub scope: BudgetScope,
    /// The team, for team scopes; for `user_daily`, the team whose `user_daily_usd` is the smallest.
    pub team: Option<Arc<str>>,
    pub limit_micro_usd: i64,
}

/// Which budget refused; the `rule` named in the response (`budget.team_daily`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetRefusal {
    /// `user_daily`, `team_daily`, `team_monthly`, `org_daily` or `org_monthly`.
    pub scope: &'static str,
    /// The team, for team scopes; for `user_daily`, the team whose `user_daily_usd` applies.
    pub team: Option<Arc<str>>,
    pub limit_micro_usd: i64,
    /// Spent (and held by other requests' reservations) before this request.
    pub spent_micro_usd: i64,
    /// The worst case of the refused request, when the budget was not spent yet but could not hold it.
    pub request_micro_usd: Option<i64>,
    /// Until the period resets.
    pub retry_after: Duration,
}

impl BudgetRefusal {
    /// `budget.` + the scope: the rule named in the response and the audit record.
    pub fn rule(&self) -> String {
        format!("budget.{}", self.scope)
    }
}

/// An estimate held against every budget of a request until it is settled.
///
/// Settle it with the metered cost, also when the request failed or was cut (then with what was metered, maybe
/// 0). Dropped unsettled (a panic, a cancelled task), it gives the estimate back from a spawned task, as
/// `Admitted` gives its slots back: the request's cost is then unknown, and keeping the estimate would charge a
/// whole day's or month's budget for nothing that was metered.
#[derive(Debug)]
pub struct Reservation {
    /// `None` when no budget applies: settling then costs no round trip.
    backend: Option<Arc<dyn Backend>>,
    /// One key per budget, parallel to `budgets`; empty once settled (nothing left to give back on drop).
    keys: Vec<SpendKey>,
    budgets: Vec<Budget>,
    estimate_micro_usd: i64,
    /// When it was reserved, by the caller's clock and by the monotonic one: a drop gives the estimate back
    /// at the caller's time plus what has elapsed since, so an injected clock stays consistent.
    reserved_at: SystemTime,
    reserved: Instant,
}

impl Budgets {
    /// Whether any budget is configured (no budget: no state round trip).
    pub fn is_empty(&self) -> bool {
        self.org_daily.is_none()
            && self.org_monthly.is_none()
            && self
                .teams
                .values()
                .all(|team| team.daily.is_none() && team.monthly.is_none() && team.user_daily.is_none())
    }

    /// The budgets that apply to `principal`, in the order they are checked: its `user_daily` (the smallest of
    /// its teams'), each of its teams' daily, then each team's monthly, the organisation's daily and monthly.
    pub fn applying(&self, principal: &Principal) -> Vec<Budget> {
        let mut applying = Vec::new();
        let teams: Vec<(&Arc<str>, &TeamBudget)> = principal
            .teams
            .iter()
            .enumerate()
            // A team listed twice counts once: the same key twice in one `add_spend` would be charged twice.
            .filter(|(index, team)| !principal.teams[..*index].contains(team))
            .filter_map(|(_, team)| self.teams.get(team).map(|budget| (team, budget)))
            .collect();
        let user_daily = teams
            .iter()
            .filter_map(|(team, budget)| budget.user_daily.map(|limit| (limit, *team)))
            .min_by_key(|(limit, _)| *limit);
        if let Some((limit, team)) = user_daily {
            applying.push(Budget { scope: BudgetScope::UserDaily, team: Some(team.clone()), limit_micro_usd: limit });
        }
        for (team, budget) in &teams {
            if let Some(limit) = budget.daily {
                let team = Some((*team).clone());
                applying.push(Budget { scope: BudgetScope::TeamDaily, team, limit_micro_usd: limit });
            }
        }
        for (team, budget) in &teams {
            if let Some(limit) = budget.monthly {
                let team = Some((*team).clone());
                applying.push(Budget { scope: BudgetScope::TeamMonthly, team, limit_micro_usd: limit });
            }
        }
        for (scope, limit) in [(BudgetScope::OrgDaily, self.org_daily), (BudgetScope::OrgMonthly, self.org_monthly)] {
            if let Some(limit) = limit {
                applying.push(Budget { scope, team: None, limit_micro_usd: limit });
            }
        }
        applying
    }

    /// The spend counter of each budget in `applying(principal)` at `now`.
    pub fn keys(&self, principal: &Principal, budgets: &[Budget], now: SystemTime) -> Vec<SpendKey> {
        let periods = Periods::at(now);
        budgets.iter().map(|budget| periods.key(budget, &principal.name)).collect()
    }

    /// Reserves `estimate_micro_usd` (the request's worst case; a negative estimate counts as 0) against every
    /// budget that applies to `principal` at `now`, or refuses when one of them cannot hold it: the first such one
    /// in the order of `applying`, with the time until its period ends. A refusal takes nothing from any budget.
    ///
    /// `Err` when the backend cannot be reached (the caller applies `state.on_error`). When no budget applies
    /// there is no round trip.
    pub async fn reserve(
        &self,
        backend: &Arc<dyn Backend>,
        principal: &Principal,
        estimate_micro_usd: i64,
        now: SystemTime,
    ) -> Result<Result<Reservation, BudgetRefusal>, StateError> {
        let budgets = self.applying(principal);
        if budgets.is_empty() {
            return Ok(Ok(Reservation::none()));
        }
        let estimate = estimate_micro_usd.max(0);
        let keys = self.keys(principal, &budgets, now);
        let now_ms = millis(now);
        let values = backend.add_spend_held(&keys, 0, estimate, now_ms).await?;
        // A budget refuses when this request's worst case, on top of what others hold and have spent, would take it
        // past its limit (a spent budget refuses even a request that costs nothing).
        let spent = budgets.iter().zip(&keys).zip(&values).find(|((budget, _), value)| {
            **value > budget.limit_micro_usd || value.saturating_sub(estimate) >= budget.limit_micro_usd
        });
        if let Some(((budget, key), value)) = spent {
            if estimate != 0 {
                if let Err(error) = backend.add_spend_held(&keys, 0, -estimate, now_ms).await {
                    // Still a refusal: the budget is spent whatever happens to the estimate, which stays
                    // charged until its periods end.
                    tracing::warn!(%error, "a refused budget reservation could not be taken back");
                }
            }
            let until_end = Duration::from_millis(key.period_end_ms.saturating_sub(now_ms));
            let spent_before = value.saturating_sub(estimate);
            return Ok(Err(BudgetRefusal {
                scope: budget.scope.label(),
                team: budget.team.clone(),
                limit_micro_usd: budget.limit_micro_usd,
                spent_micro_usd: spent_before,
                request_micro_usd: (spent_before < budget.limit_micro_usd).then_some(estimate),
                retry_after: Duration::from_secs(until_end.as_secs_f64().ceil().max(1.0) as u64),
            }));
        }
        Ok(Ok(Reservation {
            backend: Some(backend.clone()),
            keys,
            budgets,
            estimate_micro_usd: estimate,
            reserved_at: now,
            reserved: Instant::now(),
        }))
    }
}

impl Reservation {
    /// Holds nothing (no budget applies, or they could not be checked and `state.on_error` allows).
    pub fn none() -> Self {
        Reservation {
            backend: None,
            keys: Vec::new(),
            budgets: Vec::new(),
            estimate_micro_usd: 0,
            reserved_at: SystemTime::UNIX_EPOCH,
            reserved: Instant::now(),
        }
    }

    /// The budgets held (empty for `none`).
    pub fn budgets(&self) -> &[Budget] {
        &self.budgets
    }

    /// What was reserved, in micro-dollars.
    pub fn estimate_micro_usd(&self) -> i64 {
        self.estimate_micro_usd
    }

    /// Replaces the estimate with the metered cost (a negative cost counts as 0): adds `cost - estimate` to the
    /// same counters, in one atomic `add_spend_held` (the estimate given back as held, the cost as spent); a period
    /// that has ended by `now` takes nothing (a request that ran past midnight is charged to neither day beyond its
    /// estimate). Returns each team's used ratio of its
    /// tightest budget, the largest of spent / limit over its daily and monthly budgets (for
    /// `tollgate_budget_used_ratio{team}`); a zero budget counts as fully used.
    ///
    /// On `Err` the values are unknown now. The embedded backend does not fail; Redis keeps the change and makes it
    /// once its server answers again (`Backend::settle_spend`), so the estimate is replaced by the cost then.
    pub async fn settle(mut self, cost_micro_usd: i64, now: SystemTime) -> Result<Vec<(Arc<str>, f64)>, StateError> {
        // Taking the keys disarms the drop, whatever happens below.
        let keys = std::mem::take(&mut self.keys);
        let Some(backend) = self.backend.take() else { return Ok(Vec::new()) };
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // The estimate held is replaced by the cost spent, in one atomic change (a backend whose change is 0
        // only reads).
        let (spent, held) = (cost_micro_usd.max(0), -self.estimate_micro_usd);
        let values = backend.add_spend_held(&keys, spent, held, millis(now)).await?;
        let mut ratios: Vec<(Arc<str>, f64)> = Vec::new();
        for (budget, value) in self.budgets.iter().zip(values) {
            let (BudgetScope::TeamDaily | BudgetScope::TeamMonthly, Some(team)) = (budget.scope, &budget.team) else {
                continue;
            };
            let ratio = used_ratio(value, budget.limit_micro_usd);
            match ratios.iter_mut().find(|(known, _)| known == team) {
                Some((_, tightest)) => *tightest = tightest.max(ratio),
                None => ratios.push((team.clone(), ratio)),
            }
        }
        Ok(ratios)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.keys.is_empty() || self.estimate_micro_usd == 0 {
            return;
        }
        let Some(backend) = self.backend.take() else { return };
        let keys = std::mem::take(&mut self.keys);
        let estimate = self.estimate_micro_usd;
        let now_ms = millis(self.reserved_at + self.reserved.elapsed());
        let give_back = async move {
            if let Err(error) = backend.add_spend_held(&keys, 0, -estimate, now_ms).await {
                tracing::warn!(%error, "an unsettled budget reservation could not be given back");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(give_back);
            }
            Err(_) => tracing::warn!("an unsettled budget reservation was dropped outside the runtime"),
        }
    }
}

/// Spent / limit, for the metric; a zero budget is fully used.
fn used_ratio(spent: i64, limit: i64) -> f64 {
    if limit <= 0 {
        return 1.0;
    }
    spent.max(0) as f64 / limit as f64
}

/// The UTC day and month that contain one instant, and when each ends.
struct Periods {
    /// `YYYY-MM-DD`.
    day: String,
    day_end_ms: u64,
    /// `YYYY-MM`.
    month: String,
    month_end_ms: u64,
}

impl Periods {
    fn at(now: SystemTime) -> Periods {
        let today = DateTime::<Utc>::from(now).date_naive();
        let (year, month) = (today.year(), today.month());
        let next_month = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
        Periods {
            day: format!("{year:04}-{month:02}-{:02}", today.day()),
            day_end_ms: start_ms(today.succ_opt()),
            month: format!("{year:04}-{month:02}"),
            month_end_ms: start_ms(NaiveDate::from_ymd_opt(next_month.0, next_month.1, 1)),
        }
    }

    fn key(&self, budget: &Budget, user: &str) -> SpendKey {
        let team = budget.team.as_deref().unwrap_or_default();
        let key = match budget.scope {
            BudgetScope::UserDaily => format!("spend:user:{user}:day:{}", self.day),
            BudgetScope::TeamDaily => format!("spend:team:{team}:day:{}", self.day),
            BudgetScope::TeamMonthly => format!("spend:team:{team}:month:{}", self.month),
            BudgetScope::OrgDaily => format!("spend:org:day:{}", self.day),
            BudgetScope::OrgMonthly => format!("spend:org:month:{}", self.month),
        };
        let period_end_ms = if budget.scope.is_daily() { self.day_end_ms } else { self.month_end_ms };
        SpendKey { key, period_end_ms }
    }
}

/// Milliseconds since the epoch at the start (UTC midnight) of `date`; chrono's last date never ends.
fn start_ms(date: Option<NaiveDate>) -> u64 {
    date.and_then(|date| date.and_hms_opt(0, 0, 0))
        .map_or(u64::MAX, |start| u64::try_from(start.and_utc().timestamp_millis()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AuthMethod;
    use crate::limits::memory::Memory;
    use crate::limits::BoxFuture;
    use crate::limits::{Admission, Bucket, Slot};

    const USD: i64 = 1_000_000;

    /// `2026-11-28T23:00:00Z` and the like.
    fn at(rfc3339: &str) -> SystemTime {
        DateTime::parse_from_rfc3339(rfc3339).expect("a valid time").with_timezone(&Utc).into()
    }

    fn ms(rfc3339: &str) -> u64 {
        millis(at(rfc3339))
    }

    fn principal(name: &str, teams: &[&str]) -> Principal {
        Principal::named(name, teams, AuthMethod::Basic)
    }

    fn team(daily: Option<i64>, monthly: Option<i64>, user_daily: Option<i64>) -> TeamBudget {
        TeamBudget { daily, monthly, user_daily }
    }

    fn budgets(teams: &[(&str, TeamBudget)], org_daily: Option<i64>, org_monthly: Option<i64>) -> Budgets {
        let teams = teams.iter().map(|(name, budget)| (Arc::from(*name), *budget)).collect();
        Budgets { org_daily, org_monthly, teams }
    }

    fn memory() -> Arc<dyn Backend> {
        Arc::new(Memory::default())
    }

    async fn reserve(
        budgets: &Budgets,
        backend: &Arc<dyn Backend>,
        who: &Principal,
        estimate: i64,
        now: SystemTime,
    ) -> Result<Reservation, BudgetRefusal> {
        budgets.reserve(backend, who, estimate, now).await.expect("the backend answers")
    }

    async fn spent(backend: &Arc<dyn Backend>, budgets: &Budgets, who: &Principal, now: SystemTime) -> Vec<i64> {
        let keys = budgets.keys(who, &budgets.applying(who), now);
        backend.spend(&keys, millis(now)).await.expect("the backend answers")
    }

    /// A backend that must not be called.
    #[derive(Debug)]
    struct Untouched;

    impl Backend for Untouched {
        fn acquire<'a>(&'a self, _: &'a [Bucket], _: u64) -> BoxFuture<'a, Result<Admission, StateError>> {
            panic!("acquire called")
        }
        fn enter<'a>(&'a self, _: &'a [Slot]) -> BoxFuture<'a, Result<Option<usize>, StateError>> {
            panic!("enter called")
        }
        fn leave<'a>(&'a self, _: &'a [Slot]) -> BoxFuture<'a, Result<(), StateError>> {
            panic!("leave called")
        }
        fn add_spend<'a>(&'a self, _: &'a [SpendKey], _: i64, _: u64) -> BoxFuture<'a, Result<Vec<i64>, StateError>> {
            panic!("add_spend called")
        }
        fn spend<'a>(&'a self, _: &'a [SpendKey], _: u64) -> BoxFuture<'a, Result<Vec<i64>, StateError>> {
            panic!("spend called")
        }
        fn name(&self) -> &'static str {
            "untouched"
        }
    }

    #[test]
    fn keys_name_the_utc_day_and_month_and_end_with_them() {
        let budgets = budgets(
            &[
                ("core", team(Some(1), Some(2), Some(30))),
                ("web", team(Some(3), None, Some(10))),
                ("other", team(Some(9), None, None)),
            ],
            Some(4),
            Some(5),
        );
        // A team listed twice and a team without a budget.
        let who = principal("ana", &["core", "web", "core", "nobudget"]);
        let applying = budgets.applying(&who);
        let scopes: Vec<(&str, Option<&str>, i64)> =
            applying.iter().map(|b| (b.scope.label(), b.team.as_deref(), b.limit_micro_usd)).collect();
        assert_eq!(
            scopes,
            vec![
                ("user_daily", Some("web"), 10),
                ("team_daily", Some("core"), 1),
                ("team_daily", Some("web"), 3),
                ("team_monthly", Some("core"), 2),
                ("org_daily", None, 4),
                ("org_monthly", None, 5),
            ]
        );
        let keys = budgets.keys(&who, &applying, at("2026-12-31T23:59:59.999Z"));
        let (day_end, year_end) = (ms("2027-01-01T00:00:00Z"), ms("2027-01-01T00:00:00Z"));
        let expected = [
            ("spend:user:ana:day:2026-12-31", day_end),
            ("spend:team:core:day:2026-12-31", day_end),
            ("spend:team:web:day:2026-12-31", day_end),
            ("spend:team:core:month:2026-12", year_end),
            ("spend:org:day:2026-12-31", day_end),
            ("spend:org:month:2026-12", year_end),
        ];
        let expected: Vec<SpendKey> =
            expected.iter().map(|(key, end)| SpendKey { key: (*key).to_owned(), period_end_ms: *end }).collect();
        assert_eq!(keys, expected);

        let keys = budgets.keys(&who, &applying, at("2028-02-28T00:00:00Z"));
        assert_eq!(keys[0].key, "spend:user:ana:day:2028-02-28");
        assert_eq!(keys[0].period_end_ms, ms("2028-02-29T00:00:00Z"));
        assert_eq!(keys[3].key, "spend:team:core:month:2028-02");
        assert_eq!(keys[3].period_end_ms, ms("2028-03-01T00:00:00Z"));
    }

    #[tokio::test]
    async fn a_spent_budget_refuses_with_its_scope_limit_spend_and_reset() {
        let backend = memory();
        let budgets = budgets(&[("core", team(Some(10 * USD), Some(100 * USD), None))], None, None);
        let who = principal("ana", &["core"]);
        let now = at("2026-11-28T23:00:00Z");

        let first = reserve(&budgets, &backend, &who, 4 * USD, now).await.expect("under budget");
        first.settle(4 * USD, now).await.expect("settles");
        let second = reserve(&budgets, &backend, &who, 4 * USD, now).await.expect("4 of 10 spent");
        assert_eq!(spent(&backend, &budgets, &who, now).await, vec![8 * USD, 8 * USD], "the estimate is held");
        second.settle(6 * USD, now).await.expect("settles");
        assert_eq!(spent(&backend, &budgets, &who, now).await, vec![10 * USD, 10 * USD]);

        // Spent exactly to the limit: refused, and the refusal holds nothing.
        let refusal = reserve(&budgets, &backend, &who, USD, now).await.expect_err("spent");
        let expected = BudgetRefusal {
            scope: "team_daily",
            team: Some(Arc::from("core")),
            limit_micro_usd: 10 * USD,
            spent_micro_usd: 10 * USD,
            request_micro_usd: None,
            retry_after: Duration::from_secs(3600),
        };
        assert_eq!(refusal, expected);
        assert_eq!(refusal.rule(), "budget.team_daily");
        assert_eq!(spent(&backend, &budgets, &who, now).await, vec![10 * USD, 10 * USD]);
        // A zero estimate is refused the same way.
        assert!(reserve(&budgets, &backend, &who, 0, now).await.is_err());

        // The next UTC day: the daily budget is new, the monthly one is not.
        let tomorrow = at("2026-11-29T00:00:00Z");
        assert_eq!(spent(&backend, &budgets, &who, tomorrow).await, vec![0, 10 * USD]);
        let reservation = reserve(&budgets, &backend, &who, USD, tomorrow).await.expect("a new day");
        reservation.settle(90 * USD, tomorrow).await.expect("settles");
        let next_day = at("2026-11-30T00:00:00.5Z");
        let refusal = reserve(&budgets, &backend, &who, USD, next_day).await.expect_err("the month is spent");
        assert_eq!(refusal.scope, "team_monthly");
        assert_eq!(refusal.spent_micro_usd, 100 * USD);
        assert_eq!(refusal.retry_after, Duration::from_secs(86_400), "23:59:59.5 rounds up");
        // A new month.
        reserve(&budgets, &backend, &who, USD, at("2026-12-01T00:00:00Z")).await.expect("a new month");
    }

    #[tokio::test]
    async fn a_request_whose_worst_case_would_pass_the_limit_is_refused_up_front() {
        let backend = memory();
        let budgets = budgets(&[("core", team(Some(5 * USD), None, None))], None, None);
        let who = principal("ana", &["core"]);
        let now = at("2026-11-28T12:00:00Z");
        reserve(&budgets, &backend, &who, 3 * USD, now).await.expect("3 of 5").settle(3 * USD, now).await.unwrap();
        // $2 are left: a request that could cost $2.01 is refused before it runs, and holds nothing.
        let refusal = reserve(&budgets, &backend, &who, 2 * USD + 10_000, now).await.expect_err("could overrun");
        assert_eq!(refusal.request_micro_usd, Some(2 * USD + 10_000));
        assert_eq!(refusal.spent_micro_usd, 3 * USD);
        assert_eq!(spent(&backend, &budgets, &who, now).await, vec![3 * USD]);
        // One that fits exactly is admitted; while it runs, its worst case is held against the next.
        let held = reserve(&budgets, &backend, &who, 2 * USD, now).await.expect("fits exactly");
        assert!(reserve(&budgets, &backend, &who, 1, now).await.is_err(), "the worst case is held");
        held.settle(USD, now).await.unwrap();
        reserve(&budgets, &backend, &who, USD, now).await.expect("the dollar the answer did not use");
    }

    #[tokio::test]
    async fn a_monthly_refusal_waits_for_the_first_of_the_next_month() {
        let backend = memory();
        let budgets = budgets(&[], None, Some(5 * USD));
        let who = principal("ana", &[]);
        let now = at("2026-11-28T23:00:00Z");
        reserve(&budgets, &backend, &who, 5 * USD, now)
            .await
            .expect("nothing spent")
            .settle(5 * USD, now)
            .await
            .unwrap();
        let refusal = reserve(&budgets, &backend, &who, 0, now).await.expect_err("spent");
        assert_eq!((refusal.scope, refusal.team.clone()), ("org_monthly", None));
        assert_eq!(refusal.retry_after, Duration::from_secs(49 * 3600));
        // The last millisecond of a period still waits a whole second.
        let refusal = reserve(&budgets, &backend, &who, 0, at("2026-11-30T23:59:59.999Z")).await.expect_err("spent");
        assert_eq!(refusal.retry_after, Duration::from_secs(1));
    }

    #[tokio::test]
    async fn the_first_spent_budget_in_order_refuses_and_nothing_is_left_behind() {
        let backend = memory();
        let budgets = budgets(
            &[("core", team(Some(10 * USD), None, Some(3 * USD))), ("web", team(Some(2 * USD), None, Some(5 * USD)))],
            Some(100 * USD),
            None,
        );
        let now = at("2026-11-28T12:00:00Z");
        let ana = principal("ana", &["core", "web"]);
        let ben = principal("ben", &["web"]);
        // ben's spend counts against web and the org.
        reserve(&budgets, &backend, &ben, USD, now).await.unwrap().settle(2 * USD, now).await.unwrap();
        // web is spent: ana, in web too, is refused for it.
        let refusal = reserve(&budgets, &backend, &ana, USD, now).await.expect_err("web is spent");
        assert_eq!((refusal.scope, refusal.team.as_deref()), ("team_daily", Some("web")));
        assert_eq!((refusal.limit_micro_usd, refusal.spent_micro_usd), (2 * USD, 2 * USD));
        // ana's user_daily (the smaller, core's 3), core and org are as they were.
        assert_eq!(spent(&backend, &budgets, &ana, now).await, vec![0, 0, 2 * USD, 2 * USD]);

        // With the user spent as well, user_daily comes first.
        let core_only = principal("ana", &["core"]);
        reserve(&budgets, &backend, &core_only, 0, now).await.unwrap().settle(3 * USD, now).await.unwrap();
        let refusal = reserve(&budgets, &backend, &ana, USD, now).await.expect_err("ana is spent");
        assert_eq!((refusal.scope, refusal.team.as_deref()), ("user_daily", Some("core")));
        assert_eq!((refusal.limit_micro_usd, refusal.spent_micro_usd), (3 * USD, 3 * USD));
        assert_eq!(spent(&backend, &budgets, &ana, now).await, vec![3 * USD, 3 * USD, 2 * USD, 5 * USD]);
    }

    #[tokio::test]
    async fn settling_replaces_the_estimate_exactly() {
        let backend = memory();
        let core = team(Some(1_000 * USD), Some(10_000 * USD), Some(500 * USD));
        let budgets = budgets(&[("core", core)], Some(1_000 * USD), None);
        let who = principal("ana", &["core"]);
        let now = at("2026-11-28T12:00:00Z");
        let mut total = 0;
        for (estimate, cost) in [(5 * USD, 1_234_567), (USD, 3 * USD), (0, 17), (2 * USD, 2 * USD), (USD, 0), (USD, -5)]
        {
            let reservation = reserve(&budgets, &backend, &who, estimate, now).await.expect("under budget");
            reservation.settle(cost, now).await.expect("settles");
            total += cost.max(0);
        }
        assert_eq!(spent(&backend, &budgets, &who, now).await, vec![total; 4]);
    }

    #[tokio::test]
    async fn settling_reports_each_teams_tightest_ratio() {
        let backend = memory();
        let budgets = budgets(
            &[
                ("core", team(Some(10 * USD), Some(100 * USD), None)),
                ("web", team(None, Some(8 * USD), None)),
                ("user_only", team(None, None, Some(USD))),
                ("zero", team(Some(0), None, None)),
            ],
            Some(USD),
            None,
        );
        let now = at("2026-11-28T12:00:00Z");
        let who = principal("ana", &["core", "web", "user_only"]);
        let reservation = reserve(&budgets, &backend, &who, USD, now).await.expect("under budget");
        let ratios = reservation.settle(2 * USD, now).await.expect("settles");
        // core: max(2/10, 2/100); web: 2/8; no ratio for a team with only a user budget, nor for the org.
        assert_eq!(ratios, vec![(Arc::from("core"), 0.2), (Arc::from("web"), 0.25)]);

        // A zero budget refuses everything and is fully used.
        let zero = principal("ben", &["zero"]);
        let refusal = reserve(&budgets, &backend, &zero, 0, now).await.expect_err("a zero budget");
        assert_eq!(refusal.limit_micro_usd, 0);
        assert_eq!(used_ratio(0, 0), 1.0);
    }

    #[tokio::test]
    async fn no_budget_means_no_round_trip() {
        let backend: Arc<dyn Backend> = Arc::new(Untouched);
        let now = at("2026-11-28T12:00:00Z");
        let empty = Budgets::default();
        let reservation = reserve(&empty, &backend, &principal("ana", &["core"]), USD, now).await.expect("no budget");
        assert!(reservation.budgets().is_empty());
        assert_eq!(reservation.settle(5 * USD, now).await.expect("settles"), vec![]);
        // Budgets exist, but none for this principal's teams.
        let other = budgets(&[("web", team(Some(USD), None, None))], None, None);
        let reservation = reserve(&other, &backend, &principal("ana", &["core"]), USD, now).await.expect("none apply");
        drop(reservation);
        Reservation::none().settle(1, now).await.expect("settles");
    }

    #[tokio::test]
    async fn a_dropped_reservation_gives_its_estimate_back() {
        let backend = memory();
        let budgets = budgets(&[("core", team(Some(10 * USD), None, None))], None, None);
        let who = principal("ana", &["core"]);
        let now = at("2026-11-28T12:00:00Z");
        let reservation = reserve(&budgets, &backend, &who, 4 * USD, now).await.expect("under budget");
        assert_eq!(spent(&backend, &budgets, &who, now).await, vec![4 * USD]);
        drop(reservation);
        // The memory backend gives it back as soon as the spawned task runs.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(spent(&backend, &budgets, &who, now).await, vec![0]);
    }

    #[tokio::test]
    async fn a_restart_after_a_crash_keeps_settled_spend_only() {
        let (dir, after_crash) = (tempfile::tempdir().expect("temp dir"), tempfile::tempdir().expect("temp dir"));
        let budgets = budgets(&[("core", team(Some(10 * USD), None, None))], Some(50 * USD), None);
        let who = principal("ana", &["core"]);
        let now = SystemTime::now();
        let backend: Arc<dyn Backend> = Arc::new(Memory::open(dir.path()).expect("opens"));
        let settled = reserve(&budgets, &backend, &who, 3 * USD, now).await.expect("under budget");
        let _in_flight = reserve(&budgets, &backend, &who, 4 * USD, now).await.expect("under budget");
        settled.settle(USD, now).await.expect("settles");
        assert_eq!(spent(&backend, &budgets, &who, now).await, vec![5 * USD; 2], "the reservation is held");
        // The process dies with the request in flight, neither settled nor dropped: its disk is what it left.
        let ledger = crate::limits::memory::LEDGER_FILE;
        std::fs::copy(dir.path().join(ledger), after_crash.path().join(ledger)).expect("the ledger as left");
        let backend: Arc<dyn Backend> = Arc::new(Memory::open(after_crash.path()).expect("reopens"));
        assert_eq!(spent(&backend, &budgets, &who, now).await, vec![USD; 2], "settled spend only");
    }

    #[tokio::test]
    async fn a_restart_keeps_todays_spend() {
        let dir = tempfile::tempdir().expect("temp dir");
        let budgets = budgets(&[("core", team(Some(10 * USD), Some(20 * USD), Some(7 * USD)))], None, Some(50 * USD));
        let who = principal("ana", &["core"]);
        // The ledger drops periods that ended by the real clock when it is opened.
        let now = SystemTime::now();
        {
            let backend: Arc<dyn Backend> = Arc::new(Memory::open(dir.path()).expect("opens"));
            let reservation = reserve(&budgets, &backend, &who, 2 * USD, now).await.expect("under budget");
            reservation.settle(7 * USD, now).await.expect("settles");
        }
        let backend: Arc<dyn Backend> = Arc::new(Memory::open(dir.path()).expect("reopens"));
        assert_eq!(spent(&backend, &budgets, &who, now).await, vec![7 * USD; 4]);
        let refusal = reserve(&budgets, &backend, &who, USD, now).await.expect_err("ana's day is spent");
        assert_eq!((refusal.scope, refusal.spent_micro_usd), ("user_daily", 7 * USD));
    }
}
