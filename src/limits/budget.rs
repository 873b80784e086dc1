//! Spend budgets: per user per day, per team per day and month, for the organisation per day and month.
//! Checked before a metered request (an estimate is reserved) and settled with the metered cost after,
//! in the state backend's spend counters (micro-dollars per key and period, UTC days and months).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Backend, StateError};
use crate::identity::Principal;

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

/// Which budget refused; the `rule` named in the response (`budget.team_daily`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetRefusal {
    /// `user_daily`, `team_daily`, `team_monthly`, `org_daily` or `org_monthly`.
    pub scope: &'static str,
    /// The team, for team scopes.
    pub team: Option<Arc<str>>,
    pub limit_micro_usd: i64,
    pub spent_micro_usd: i64,
    /// Until the period resets.
    pub retry_after: Duration,
}

/// An estimate held against every budget of a request until it is settled.
#[derive(Debug)]
pub struct Reservation {}

impl Budgets {
    /// Compiles the teams' and the organisation's budgets.
    pub fn compile(
        _teams: &std::collections::BTreeMap<Arc<str>, crate::config::TeamSettings>,
        _org: &crate::config::file::Budgets,
    ) -> Result<Budgets, (String, String)> {
        Ok(Budgets::default())
    }

    /// Whether any budget is configured (no budget: no state round trip).
    pub fn is_empty(&self) -> bool {
        true
    }

    /// Reserves `estimate_micro_usd` against every budget that applies to `principal` at `now`, or refuses
    /// when one of them is already spent.
    pub async fn reserve(
        &self,
        _backend: &Arc<dyn Backend>,
        _principal: &Principal,
        _estimate_micro_usd: i64,
        _now: SystemTime,
    ) -> Result<Result<Reservation, BudgetRefusal>, StateError> {
        Ok(Ok(Reservation {}))
    }
}

impl Reservation {
    /// Replaces the estimate with the metered cost. Returns each team's used ratio of its tightest budget
    /// (for `tollgate_budget_used_ratio{team}`).
    pub async fn settle(self, _cost_micro_usd: i64, _now: SystemTime) -> Result<Vec<(Arc<str>, f64)>, StateError> {
        Ok(Vec::new())
    }
}
