//! What each team may use besides destinations (those are in `policy`): its models, budget and region.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::file;

/// A team's models, budget and region (enforced on metered requests).
#[derive(Debug, Clone, Default)]
pub struct TeamSettings {
    pub models: Vec<String>,
    /// `models` compiled; empty = any model.
    pub model_globs: globset::GlobSet,
    pub budget: Option<BudgetLimits>,
    pub region: Option<String>,
}

/// Spend budgets in USD.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BudgetLimits {
    pub daily_usd: Option<f64>,
    pub monthly_usd: Option<f64>,
    pub user_daily_usd: Option<f64>,
}

/// Compiles `teams.*.models`, `budget` and `region`; an error is a key path and a message.
pub(super) fn compile(
    teams: &BTreeMap<String, file::Team>,
) -> Result<BTreeMap<Arc<str>, TeamSettings>, (String, String)> {
    let mut compiled = BTreeMap::new();
    for (name, team) in teams {
        let mut model_globs = globset::GlobSetBuilder::new();
        for (index, model) in team.models.iter().enumerate() {
            match globset::Glob::new(model) {
                Ok(glob) => model_globs.add(glob),
                Err(error) => {
                    return Err((format!("teams.{name}.models[{index}]"), format!("invalid glob {model:?}: {error}")))
                }
            };
        }
        let model_globs = model_globs.build().map_err(|error| (format!("teams.{name}.models"), error.to_string()))?;
        let budget = match &team.budget {
            Some(budget) => {
                for (field, value) in [
                    ("daily_usd", budget.daily_usd),
                    ("monthly_usd", budget.monthly_usd),
                    ("user_daily_usd", budget.user_daily_usd),
                ] {
                    if value.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                        return Err((
                            format!("teams.{name}.budget.{field}"),
                            "must be a non-negative amount".to_owned(),
                        ));
                    }
                }
                Some(BudgetLimits {
                    daily_usd: budget.daily_usd,
                    monthly_usd: budget.monthly_usd,
                    user_daily_usd: budget.user_daily_usd,
                })
            }
            None => None,
        };
        if team.region.as_ref().is_some_and(|r| r.is_empty()) {
            return Err((format!("teams.{name}.region"), "must not be empty".to_owned()));
        }
        let settings = TeamSettings { models: team.models.clone(), model_globs, budget, region: team.region.clone() };
        compiled.insert(Arc::from(name.as_str()), settings);
    }
    Ok(compiled)
}
