//! `teams.*.budget` and `budgets` compiled into the micro-dollar budgets that `limits::budget` enforces.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::file;
use super::teams::TeamSettings;
use crate::limits::budget::{Budgets, TeamBudget, MAX_BUDGET_USD};

/// Compiles `teams.*.budget` and `budgets` (USD) into micro-dollars. Errors name the key and say what is
/// wrong: `("budgets.org_monthly_usd", "must be a non-negative number of USD")`.
pub fn compile(teams: &BTreeMap<Arc<str>, TeamSettings>, org: &file::Budgets) -> Result<Budgets, (String, String)> {
    let mut budgets = Budgets {
        org_daily: micro_usd("budgets.org_daily_usd", org.org_daily_usd)?,
        org_monthly: micro_usd("budgets.org_monthly_usd", org.org_monthly_usd)?,
        teams: HashMap::new(),
    };
    for (name, settings) in teams {
        let Some(limits) = &settings.budget else { continue };
        let team = TeamBudget {
            daily: micro_usd(&format!("teams.{name}.budget.daily_usd"), limits.daily_usd)?,
            monthly: micro_usd(&format!("teams.{name}.budget.monthly_usd"), limits.monthly_usd)?,
            user_daily: micro_usd(&format!("teams.{name}.budget.user_daily_usd"), limits.user_daily_usd)?,
        };
        if team.daily.is_some() || team.monthly.is_some() || team.user_daily.is_some() {
            budgets.teams.insert(name.clone(), team);
        }
    }
    Ok(budgets)
}

/// `usd` in micro-dollars; `path` names the key in the error.
fn micro_usd(path: &str, usd: Option<f64>) -> Result<Option<i64>, (String, String)> {
    let Some(usd) = usd else { return Ok(None) };
    if !(usd.is_finite() && usd >= 0.0) {
        return Err((path.to_owned(), "must be a non-negative number of USD".to_owned()));
    }
    if usd > MAX_BUDGET_USD {
        return Err((path.to_owned(), format!("must be at most {MAX_BUDGET_USD} USD")));
    }
    // In range: at most 9e15, exact in both f64 and i64.
    Ok(Some((usd * 1e6).round() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::teams::BudgetLimits;

    const USD: i64 = 1_000_000;

    #[test]
    fn compile_converts_usd_to_micro_dollars_and_skips_teams_without_budgets() {
        let mut teams = BTreeMap::new();
        let limits = BudgetLimits { daily_usd: Some(200.0), monthly_usd: Some(4000.5), user_daily_usd: Some(0.1) };
        let settings = |budget| TeamSettings { budget, ..TeamSettings::default() };
        teams.insert(Arc::from("core"), settings(Some(limits)));
        teams.insert(Arc::from("free"), settings(None));
        teams.insert(Arc::from("blank"), settings(Some(BudgetLimits::default())));
        let org = file::Budgets { org_daily_usd: None, org_monthly_usd: Some(500_000.0) };
        let compiled = compile(&teams, &org).expect("compiles");
        assert_eq!(compiled.org_daily, None);
        assert_eq!(compiled.org_monthly, Some(500_000 * USD));
        assert_eq!(compiled.teams.len(), 1, "{compiled:?}");
        let core = compiled.teams["core"];
        assert_eq!((core.daily, core.monthly, core.user_daily), (Some(200 * USD), Some(4_000_500_000), Some(100_000)));
        assert!(!compiled.is_empty());

        let none =
            compile(&teams.into_iter().filter(|(name, _)| &**name != "core").collect(), &file::Budgets::default());
        assert!(none.expect("compiles").is_empty());
        assert!(Budgets::default().is_empty());
    }

    #[test]
    fn compile_names_the_key_of_a_bad_amount() {
        let teams = BTreeMap::new();
        for (org, path) in [
            (file::Budgets { org_daily_usd: Some(-1.0), org_monthly_usd: None }, "budgets.org_daily_usd"),
            (file::Budgets { org_daily_usd: None, org_monthly_usd: Some(f64::NAN) }, "budgets.org_monthly_usd"),
            (file::Budgets { org_daily_usd: Some(f64::INFINITY), org_monthly_usd: None }, "budgets.org_daily_usd"),
        ] {
            let (key, message) = compile(&teams, &org).expect_err("refused");
            assert_eq!((key.as_str(), message.as_str()), (path, "must be a non-negative number of USD"));
        }
        let huge = file::Budgets { org_daily_usd: None, org_monthly_usd: Some(1e12) };
        let (key, message) = compile(&teams, &huge).expect_err("refused");
        assert_eq!(key, "budgets.org_monthly_usd");
        assert!(message.contains("at most"), "{message}");

        let mut teams = BTreeMap::new();
        let limits = BudgetLimits { user_daily_usd: Some(-0.5), ..BudgetLimits::default() };
        teams.insert(Arc::from("core"), TeamSettings { budget: Some(limits), ..TeamSettings::default() });
        let (key, _) = compile(&teams, &file::Budgets::default()).expect_err("refused");
        assert_eq!(key, "teams.core.budget.user_daily_usd");
    }
}
