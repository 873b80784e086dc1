//! The JSON the console's pages read that no other endpoint served: `GET /admin/overview` (the request counters now
//! and per minute, from `history`), `GET /admin/budgets` (each configured budget with its spend, what is left and
//! when it runs out at today's rate) and `GET /admin/denials` (the latest denials and DLP blocks, from a bounded read
//! of the audit file's tail). All are bounded, and usable by scripts with the bearer token.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::history::{History, Minute, MINUTES};
use crate::config::Config;
use crate::identity::{AuthMethod, Principal};
use crate::limits::backend::millis;
use crate::limits::budget::{Budget, BudgetScope};
use crate::metrics::RequestTotals;
use crate::report::Filter;
use crate::shared::Shared;

/// Minutes `/admin/overview` returns when not told: three hours.
pub const DEFAULT_MINUTES: usize = 180;

/// The most rows `/admin/denials` returns, and its default.
pub const DENIALS_LIMIT: usize = 1000;
pub const DEFAULT_DENIALS: usize = 100;

/// How much of the audit file's end `/admin/denials` reads.
pub const DENIALS_TAIL_BYTES: u64 = 8 * 1024 * 1024;

/// Users whose daily budget `/admin/budgets` lists (those who spent the most today).
pub const BUDGET_USERS_LIMIT: usize = 50;

/// `/admin/overview`: totals since start, the last minute and hour, and the last `minutes` minutes.
#[derive(Debug, Serialize)]
pub struct Overview {
    pub now: String,
    pub config_version: u64,
    pub tunnels_active: i64,
    /// Since the process started.
    pub totals: RequestTotals,
    pub last_minute: Minute,
    pub last_hour: Minute,
    /// Oldest first; the last one is the current minute so far.
    pub minutes: Vec<Minute>,
}

/// The overview at `now` from `history` and the live counters.
pub fn overview(shared: &Shared, history: &History, minutes: usize, now: SystemTime) -> Overview {
    let live = shared.metrics.request_totals();
    let series = history.minutes(live, MINUTES);
    let sum = |minutes: &[Minute]| {
        minutes.iter().fold(Minute::default(), |sum, minute| Minute {
            at: if sum.at == 0 { minute.at } else { sum.at },
            requests: sum.requests + minute.requests,
            tunnels: sum.tunnels + minute.tunnels,
            denials: sum.denials + minute.denials,
            errors: sum.errors + minute.errors,
        })
    };
    let last_minute = series.last().copied().unwrap_or_default();
    let last_hour = sum(&series[series.len().saturating_sub(60)..]);
    Overview {
        now: crate::audit::timestamp(now),
        config_version: shared.version.load(Ordering::Relaxed),
        tunnels_active: shared.metrics.tunnels_active.get(),
        totals: live,
        last_minute,
        last_hour,
        minutes: series[series.len().saturating_sub(minutes.clamp(1, MINUTES))..].to_vec(),
    }
}

/// Reads `minutes` (1 to a day's worth) from `/admin/overview`'s query.
pub fn minutes_query(pairs: Vec<(String, String)>) -> Result<usize, String> {
    let mut minutes = DEFAULT_MINUTES;
    for (_, value) in pairs {
        minutes = value
            .parse::<usize>()
            .ok()
            .filter(|minutes| (1..=MINUTES).contains(minutes))
            .ok_or_else(|| format!("minutes: {value:?} is not a number from 1 to {MINUTES}"))?;
    }
    Ok(minutes)
}

// ---- budgets ---------------------------------------------------------------------------------------------------

/// One budget's standing.
#[derive(Debug, Serialize)]
pub struct Standing {
    /// `user_daily`, `team_daily`, `team_monthly`, `org_daily` or `org_monthly`.
    pub scope: &'static str,
    pub team: Option<Arc<str>>,
    pub user: Option<String>,
    pub limit_usd: f64,
    /// Spent (and held by requests in flight) in the current period, from the state backend.
    pub spent_usd: f64,
    pub left_usd: f64,
    pub used_ratio: f64,
    pub period_ends_at: String,
    /// Spent today (UTC), and the hourly rate that makes: the audit log's metered cost when `audit.file` is set,
    /// else the counter's (a daily budget's spend, or a monthly one's average since the month began).
    pub today_usd: f64,
    pub rate_usd_per_hour: f64,
    /// `spent`, `runs_out` (before the period ends, at `runs_out_at`) or `lasts` (the period ends first).
    pub outlook: &'static str,
    pub runs_out_at: Option<String>,
}

/// Today's metered spend from the audit log, by team, by user (with the user's team) and in all.
#[derive(Debug, Default)]
pub struct Today {
    pub known: bool,
    pub teams: HashMap<String, u64>,
    pub users: Vec<(String, String, u64)>,
    pub total: u64,
}

impl Today {
    /// Sums a usage report of today.
    pub fn of(report: &crate::usage::Report) -> Today {
        let mut today = Today { known: true, ..Today::default() };
        for (team, user, totals) in report.rows_by_user() {
            *today.teams.entry(team.to_owned()).or_default() += totals.cost_micro_usd;
            today.users.push((team.to_owned(), user.to_owned(), totals.cost_micro_usd));
            today.total += totals.cost_micro_usd;
        }
        today
    }
}

/// The start of the UTC day `now` falls in.
pub fn start_of_day(now: SystemTime) -> SystemTime {
    let day = DateTime::<Utc>::from(now).date_naive();
    at_midnight(day)
}

fn at_midnight(day: NaiveDate) -> SystemTime {
    let start = day.and_hms_opt(0, 0, 0).map(|start| start.and_utc().timestamp_millis()).unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(start).unwrap_or(0))
}

/// Every configured budget (teams by name, then the organisation's, then the daily budgets of the users who spent
/// the most today) with its spend read from the state backend at `now`.
pub async fn budgets(
    shared: &Shared,
    config: &Config,
    today: &Today,
    now: SystemTime,
) -> Result<Vec<Standing>, crate::limits::backend::StateError> {
    let budgets = &config.llm.budgets;
    let mut listed: Vec<(Budget, Option<String>)> = Vec::new();
    let mut teams: Vec<_> = budgets.teams.iter().collect();
    teams.sort_by(|a, b| a.0.cmp(b.0));
    for (team, budget) in &teams {
        for (scope, limit) in [(BudgetScope::TeamDaily, budget.daily), (BudgetScope::TeamMonthly, budget.monthly)] {
            if let Some(limit) = limit {
                listed.push((Budget { scope, team: Some((*team).clone()), limit_micro_usd: limit }, None));
            }
        }
    }
    for (scope, limit) in [(BudgetScope::OrgDaily, budgets.org_daily), (BudgetScope::OrgMonthly, budgets.org_monthly)] {
        if let Some(limit) = limit {
            listed.push((Budget { scope, team: None, limit_micro_usd: limit }, None));
        }
    }
    let mut users: Vec<&(String, String, u64)> = today.users.iter().filter(|(_, user, _)| user != "-").collect();
    users.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.1.cmp(&b.1)));
    for (team, user, _) in users.into_iter().take(BUDGET_USERS_LIMIT) {
        let principal = Principal::named(user, &[team.as_str()], AuthMethod::Basic);
        let applying = budgets.applying(&principal);
        if let Some(budget) = applying.into_iter().find(|budget| budget.scope == BudgetScope::UserDaily) {
            listed.push((budget, Some(user.clone())));
        }
    }
    let keys: Vec<_> = listed
        .iter()
        .map(|(budget, user)| {
            let principal = Principal::named(user.as_deref().unwrap_or("-"), &[], AuthMethod::Basic);
            budgets.keys(&principal, std::slice::from_ref(budget), now).remove(0)
        })
        .collect();
    let spent = shared.limiter.backend().spend(&keys, millis(now)).await?;
    let day_start = start_of_day(now);
    let hours_today = now.duration_since(day_start).unwrap_or_default().as_secs_f64().max(60.0) / 3600.0;
    let today_date = DateTime::<Utc>::from(now).date_naive();
    let month_start = NaiveDate::from_ymd_opt(today_date.year(), today_date.month(), 1).map_or(day_start, at_midnight);
    let hours_month = now.duration_since(month_start).unwrap_or_default().as_secs_f64().max(60.0) / 3600.0;
    let mut standings = Vec::new();
    for (((budget, user), key), spent) in listed.into_iter().zip(&keys).zip(spent) {
        let daily = matches!(budget.scope, BudgetScope::UserDaily | BudgetScope::TeamDaily | BudgetScope::OrgDaily);
        let today_micro = if today.known {
            match (&budget.scope, &budget.team, &user) {
                (BudgetScope::UserDaily, _, Some(user)) => {
                    today.users.iter().filter(|(_, name, _)| name == user).map(|(_, _, cost)| *cost).sum()
                }
                (_, Some(team), _) => today.teams.get(&**team).copied().unwrap_or(0),
                _ => today.total,
            }
        } else if daily {
            u64::try_from(spent).unwrap_or(0)
        } else {
            // No audit log: the month's average day.
            (spent.max(0) as f64 / hours_month * hours_today) as u64
        };
        let rate = today_micro as f64 / 1e6 / hours_today;
        let left = budget.limit_micro_usd.saturating_sub(spent);
        let ends = SystemTime::UNIX_EPOCH + Duration::from_millis(key.period_end_ms.min(u64::MAX / 2));
        let (outlook, runs_out_at) = if left <= 0 {
            ("spent", Some(now))
        } else if rate > 0.0 {
            let at = now + Duration::from_secs_f64((left as f64 / 1e6 / rate * 3600.0).min(1e10));
            if at < ends {
                ("runs_out", Some(at))
            } else {
                ("lasts", None)
            }
        } else {
            ("lasts", None)
        };
        standings.push(Standing {
            scope: budget.scope.label(),
            team: budget.team,
            user,
            limit_usd: budget.limit_micro_usd as f64 / 1e6,
            spent_usd: spent as f64 / 1e6,
            left_usd: left.max(0) as f64 / 1e6,
            used_ratio: if budget.limit_micro_usd <= 0 {
                1.0
            } else {
                spent.max(0) as f64 / budget.limit_micro_usd as f64
            },
            period_ends_at: crate::audit::timestamp(ends),
            today_usd: today_micro as f64 / 1e6,
            rate_usd_per_hour: rate,
            outlook,
            runs_out_at: runs_out_at.map(crate::audit::timestamp),
        });
    }
    Ok(standings)
}

/// The usage filter for today (UTC).
pub fn today_filter(now: SystemTime) -> Filter {
    Filter { team: None, user: None, since: start_of_day(now) }
}

// ---- denials ---------------------------------------------------------------------------------------------------

/// A denied request or action, or a request a DLP detector matched, as the audit log has it.
#[derive(Debug, Deserialize, Serialize)]
pub struct Denial {
    pub ts: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub decision: Option<String>,
    #[serde(default)]
    pub rule: Option<String>,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub dlp: Vec<String>,
    /// For an agent action: what it was and its target.
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

/// The latest denials in the tail of the audit file, newest first, with counts by rule and by DLP detector over
/// every denial read.
#[derive(Debug, Serialize)]
pub struct Denials {
    /// Where the read started: the audit file's tail (`DENIALS_TAIL_BYTES`) holds records since then.
    pub since: Option<String>,
    pub bytes_read: u64,
    pub rows: Vec<Denial>,
    pub denials_not_shown: u64,
    pub by_rule: BTreeMap<String, u64>,
    pub by_detector: BTreeMap<String, u64>,
}

/// Reads the last `tail_bytes` of the audit file at `path` (its first, cut line skipped) for the records that were
/// denied or that a DLP detector matched; keeps the newest `limit`.
pub fn denials(path: &Path, limit: usize, tail_bytes: u64) -> std::io::Result<Denials> {
    let mut file = std::fs::File::open(path)?;
    let length = file.metadata()?.len();
    let start = length.saturating_sub(tail_bytes);
    file.seek(SeekFrom::Start(start))?;
    let mut reader = std::io::BufReader::new(file.take(length - start));
    if start > 0 {
        let mut cut = Vec::new();
        reader.read_until(b'\n', &mut cut)?;
    }
    let mut found = Denials {
        since: None,
        bytes_read: length - start,
        rows: Vec::new(),
        denials_not_shown: 0,
        by_rule: BTreeMap::new(),
        by_detector: BTreeMap::new(),
    };
    let mut rows = std::collections::VecDeque::new();
    crate::report::each_line(reader, |line| {
        // Cheap filters first: most records are allowed and matched nothing.
        if !(memchr::memmem::find(line, b"\"deny\"").is_some() || memchr::memmem::find(line, b"\"dlp\"").is_some()) {
            if found.since.is_none() {
                found.since = ts_of(line);
            }
            return;
        }
        let Ok(denial) = serde_json::from_slice::<Denial>(line) else { return };
        if found.since.is_none() {
            found.since = Some(denial.ts.clone());
        }
        if denial.decision.as_deref() != Some("deny") && denial.dlp.is_empty() {
            return;
        }
        *found.by_rule.entry(denial.rule.clone().unwrap_or_else(|| "-".to_owned())).or_default() += 1;
        for detector in &denial.dlp {
            *found.by_detector.entry(detector.clone()).or_default() += 1;
        }
        rows.push_back(denial);
        if rows.len() > limit {
            rows.pop_front();
            found.denials_not_shown += 1;
        }
    })?;
    found.rows = rows.into_iter().rev().collect();
    Ok(found)
}

/// The `ts` of a record line.
fn ts_of(line: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Stamp {
        ts: String,
    }
    serde_json::from_slice::<Stamp>(line).ok().map(|stamp| stamp.ts)
}

/// Reads `limit` (1 to `DENIALS_LIMIT`) from `/admin/denials`'s query.
pub fn limit_query(pairs: Vec<(String, String)>) -> Result<usize, String> {
    let mut limit = DEFAULT_DENIALS;
    for (_, value) in pairs {
        limit = value
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=DENIALS_LIMIT).contains(limit))
            .ok_or_else(|| format!("limit: {value:?} is not a number from 1 to {DENIALS_LIMIT}"))?;
    }
    Ok(limit)
}

/// The JSON of a state backend failure.
pub fn state_error(error: &crate::limits::backend::StateError) -> serde_json::Value {
    json!({"error": error.to_string()})
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn denials_come_from_the_tail_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut file = std::fs::File::create(&path).unwrap();
        for index in 0..50 {
            let record = json!({"ts": format!("2026-05-04T09:00:{index:02}.000Z"), "id": format!("r{index}"),
                "kind": "http", "decision": "allow", "rule": null, "dlp": []});
            writeln!(file, "{record}").unwrap();
        }
        for (index, (rule, dlp)) in
            [("policy.deny[0]", vec![]), ("dlp.private_key", vec!["private_key"]), ("policy.deny[0]", vec![])]
                .into_iter()
                .enumerate()
        {
            let record = json!({"ts": format!("2026-05-04T10:00:{index:02}.000Z"), "id": format!("d{index}"),
                "kind": "intercepted", "decision": "deny", "rule": rule, "status": 403, "dlp": dlp, "user": "alice"});
            writeln!(file, "{record}").unwrap();
        }
        writeln!(file, "{}", json!({"ts": "2026-05-04T11:00:00.000Z", "decision": "allow", "dlp": ["ssn"]})).unwrap();
        writeln!(file, "not json \"deny\"").unwrap();
        drop(file);

        let found = denials(&path, 2, DENIALS_TAIL_BYTES).unwrap();
        assert_eq!(found.since.as_deref(), Some("2026-05-04T09:00:00.000Z"));
        let ids: Vec<_> = found.rows.iter().map(|row| row.id.as_deref().unwrap_or("-")).collect();
        assert_eq!(ids, ["-", "d2"]);
        assert_eq!(found.denials_not_shown, 2);
        assert_eq!(found.by_rule.get("policy.deny[0]"), Some(&2));
        assert_eq!(found.by_detector.get("private_key"), Some(&1));
        assert_eq!(found.by_detector.get("ssn"), Some(&1));

        // A short tail: the cut first line is skipped, and only what the tail holds is counted.
        let tail = denials(&path, 10, 400).unwrap();
        assert!(tail.bytes_read <= 400);
        assert!(tail.rows.len() < 5, "{:?}", tail.rows);
        assert!(tail.since.as_deref() > Some("2026-05-04T09:00:00.000Z"));
    }

    #[test]
    fn queries_are_bounded() {
        let pair = |value: &str| vec![("limit".to_owned(), value.to_owned())];
        assert_eq!(limit_query(vec![]), Ok(DEFAULT_DENIALS));
        assert_eq!(limit_query(pair("5")), Ok(5));
        assert!(limit_query(pair("0")).is_err());
        assert!(limit_query(pair("1001")).unwrap_err().contains("1 to 1000"));
        assert_eq!(minutes_query(vec![]), Ok(DEFAULT_MINUTES));
        assert!(minutes_query(vec![("minutes".to_owned(), "1441".to_owned())]).is_err());
    }

    #[test]
    fn a_day_starts_at_utc_midnight() {
        let now = humantime::parse_rfc3339("2026-05-31T12:34:56Z").unwrap();
        assert_eq!(start_of_day(now), humantime::parse_rfc3339("2026-05-31T00:00:00Z").unwrap());
    }
}
