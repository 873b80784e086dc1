//! The one task that evaluates alert rules: it takes events off the queue in order, reads the rules of the
//! config snapshot in force, keeps the state rules need (daily spend per scope in the state backend, failed
//! sign-ins per address in memory), claims each alert once (cooldowns), and starts its delivery.
//!
//! Claims: an alert is raised only by whoever claims its key first. A budget threshold (per budget period) and a
//! spend anomaly (per day) are claimed with a counter in the state backend, so the claim is shared by replicas and
//! survives a restart; a cooldown is claimed with `SET tollgate:alerts:… NX PX <cooldown>` in Redis when replicas
//! share it, in a map of this process with the embedded backend. A replica that loses a claim counts the alert
//! `suppressed`; so does a rule still in its cooldown for the same key.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::deliver::{self, Alert};
use super::event::{ActionEvent, Event, RequestEvent};
use super::rules::{Alerts, Kind, Rule, Scope};
use crate::audit::{self, AlertDelivery, AlertRecord, Wait};
use crate::config::Config;
use crate::identity::{AuthMethod, Principal};
use crate::limits::budget::BudgetScope;
use crate::limits::{millis, SpendKey};
use crate::shared::Shared;

/// Local claims and failure windows kept before the maps are pruned.
const MAX_TRACKED: usize = 100_000;
/// Days of daily spend kept per scope for `spend_anomaly`: the trailing seven and today.
const HISTORY_DAYS: u64 = 7;
const DAY_MS: u64 = 86_400_000;
/// At most this many deliveries run at once; past it the engine waits for one to end.
const MAX_DELIVERIES: usize = 64;

/// Runs the engine until shutdown stops accepting; events still queued then are evaluated first.
pub async fn run(shared: Arc<Shared>, mut events: mpsc::Receiver<Event>) {
    let mut engine = Engine::new(shared.clone());
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = shared.shutdown.stop_accepting.cancelled() => None,
        };
        let Some(event) = event else { break };
        engine.handle(event).await;
    }
    events.close();
    while let Ok(event) = events.try_recv() {
        engine.handle(event).await;
    }
    while engine.deliveries.join_next().await.is_some() {}
}

/// What a rule raised, before it is claimed and delivered.
struct Raised {
    scope: &'static str,
    key: String,
    message: String,
    value: Option<f64>,
    threshold: Option<f64>,
    request: Option<String>,
    user: Option<Arc<str>>,
    team: Option<Arc<str>>,
}

/// The outcome of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// This replica raises the alert.
    Won,
    /// Known here to be claimed already (by this replica, or one that won before).
    Held,
    /// Another replica claimed it first.
    Lost,
}

struct Engine {
    shared: Arc<Shared>,
    /// Claimed keys (won or lost) and until when.
    claims: HashMap<String, SystemTime>,
    /// Failed sign-ins per client address, oldest first.
    failures: HashMap<IpAddr, VecDeque<SystemTime>>,
    /// The trailing 7-day spend per scope key, by the day it trails (`spend_anomaly`): read once a day.
    trailing: HashMap<String, (String, i64)>,
    deliveries: JoinSet<()>,
    prefix: u32,
    sequence: u64,
}

impl Engine {
    fn new(shared: Arc<Shared>) -> Engine {
        Engine {
            shared,
            claims: HashMap::new(),
            failures: HashMap::new(),
            trailing: HashMap::new(),
            deliveries: JoinSet::new(),
            prefix: rand::random(),
            sequence: 0,
        }
    }

    async fn handle(&mut self, event: Event) {
        while self.deliveries.try_join_next().is_some() {}
        if let Event::Flush(done) = event {
            while self.deliveries.join_next().await.is_some() {}
            let _ = done.send(());
            return;
        }
        let config = self.shared.config.load_full();
        let Some(alerts) = config.alerts.clone() else { return };
        match event {
            Event::Request(request) => self.request(&config, &alerts, &request).await,
            Event::Action(action) => self.action(&config, &alerts, &action).await,
            Event::AuthFailure { client, at } => self.auth_failure(&config, &alerts, client, at).await,
            Event::Flush(_) => {}
        }
    }

    async fn request(&mut self, config: &Arc<Config>, alerts: &Arc<Alerts>, request: &RequestEvent) {
        if request.cost_micro_usd > 0 {
            self.budgets(config, alerts, request).await;
            self.anomalies(config, alerts, request).await;
        }
        for (index, rule) in alerts.rules.iter().enumerate() {
            let raised = match &rule.kind {
                Kind::AfterHours { window, teams } => {
                    let member = teams.as_ref().is_none_or(|named| request.teams.iter().any(|t| named.contains(t)));
                    match (&request.hours_rule, window, &request.model) {
                        _ if !member => None,
                        (Some(hours_rule), _, _) => Some(format!(
                            "{} was refused outside working hours ({hours_rule})",
                            who(request.user.as_deref(), &request.teams)
                        )),
                        (None, Some(window), Some(model)) if !window.contains(request.at) => Some(format!(
                            "{} used {model} outside working hours ({})",
                            who(request.user.as_deref(), &request.teams),
                            window.describe()
                        )),
                        _ => None,
                    }
                }
                Kind::Dlp if !request.dlp_blocked.is_empty() => {
                    let detectors: Vec<&str> = request.dlp_blocked.iter().map(|d| &**d).collect();
                    Some(format!(
                        "a request of {} was blocked by DLP ({})",
                        who(request.user.as_deref(), &request.teams),
                        detectors.join(", ")
                    ))
                }
                _ => None,
            };
            let Some(message) = raised else { continue };
            let Some((scope, key)) = scope_key(rule, request.user.as_deref(), &request.teams) else { continue };
            let raised = Raised {
                scope,
                key,
                message,
                value: None,
                threshold: None,
                request: Some(request.id.clone()),
                user: request.user.clone(),
                team: request.teams.first().cloned(),
            };
            self.cooled(config, alerts, index, raised, request.at).await;
        }
    }

    /// `budget` rules: the spend of every budget that applies to the request's principal, against each threshold.
    async fn budgets(&mut self, config: &Arc<Config>, alerts: &Arc<Alerts>, request: &RequestEvent) {
        if !alerts.rules.iter().any(|rule| matches!(rule.kind, Kind::Budget { .. })) {
            return;
        }
        let Some(user) = &request.user else { return };
        let principal = Principal {
            name: user.clone(),
            teams: request.teams.clone(),
            method: AuthMethod::Basic,
            expires: None,
            credential: 0,
            region: None,
        };
        let budgets = &config.llm.budgets;
        let applying = budgets.applying(&principal);
        if applying.is_empty() {
            return;
        }
        let keys = budgets.keys(&principal, &applying, request.at);
        let values = match self.shared.limiter.backend().spend(&keys, millis(request.at)).await {
            Ok(values) => values,
            Err(error) => {
                tracing::warn!(%error, "budget alerts: the spend could not be read");
                return;
            }
        };
        for (index, rule) in alerts.rules.iter().enumerate() {
            let Kind::Budget { thresholds } = &rule.kind else { continue };
            for ((budget, key), spent) in applying.iter().zip(&keys).zip(&values) {
                let (scope, who, scope_key) = match budget.scope {
                    BudgetScope::UserDaily => (Scope::User, format!("user {user}"), user.to_string()),
                    BudgetScope::TeamDaily | BudgetScope::TeamMonthly => {
                        let team = budget.team.as_deref().unwrap_or_default();
                        (Scope::Team, format!("team {team}"), team.to_owned())
                    }
                    BudgetScope::OrgDaily | BudgetScope::OrgMonthly => {
                        (Scope::Org, "the organisation".to_owned(), "org".to_owned())
                    }
                };
                if rule.scope.is_some_and(|wanted| wanted != scope) {
                    continue;
                }
                let limit = budget.limit_micro_usd;
                let used = if limit <= 0 { 1.0 } else { *spent as f64 / limit as f64 };
                let period = if matches!(budget.scope, BudgetScope::TeamMonthly | BudgetScope::OrgMonthly) {
                    "monthly"
                } else {
                    "daily"
                };
                let mut raised = false;
                // The highest threshold crossed is alerted; those below it are claimed with it, so a budget that
                // jumps from 40 % to 90 % sends one alert, not two.
                for threshold in thresholds.iter().rev().filter(|threshold| used >= **threshold) {
                    let claim_key = format!("alerts:budget:{}:{}:{threshold}", rule.name, key.key);
                    match (self.claim_period(claim_key, key.period_end_ms, request.at).await, raised) {
                        (Claim::Won, false) => {
                            raised = true;
                            let message = format!(
                                "{who} has spent {:.0}% of its {period} budget (${:.2} of ${:.2})",
                                used * 100.0,
                                *spent as f64 / 1e6,
                                limit as f64 / 1e6
                            );
                            let alert = Raised {
                                scope: scope.label(),
                                key: scope_key.clone(),
                                message,
                                value: Some(used),
                                threshold: Some(*threshold),
                                request: Some(request.id.clone()),
                                user: request.user.clone(),
                                team: budget.team.clone(),
                            };
                            self.raise(config, alerts, index, alert).await;
                        }
                        (Claim::Won, true) => {}
                        (Claim::Lost, false) => {
                            self.suppress(alerts, rule, "claimed by another replica", &scope_key);
                            break;
                        }
                        (Claim::Held | Claim::Lost, _) => break,
                    }
                }
            }
        }
    }

    /// `spend_anomaly` rules: today's spend per scope key, kept in the state backend, against the trailing week.
    async fn anomalies(&mut self, config: &Arc<Config>, alerts: &Arc<Alerts>, request: &RequestEvent) {
        let mut scope_keys: Vec<String> = Vec::new();
        for rule in &alerts.rules {
            if !matches!(rule.kind, Kind::SpendAnomaly { .. }) {
                continue;
            }
            for key in spend_scope_keys(rule.scope, request.user.as_deref(), &request.teams) {
                if !scope_keys.contains(&key) {
                    scope_keys.push(key);
                }
            }
        }
        if scope_keys.is_empty() {
            return;
        }
        let now_ms = millis(request.at);
        let today_start = now_ms - now_ms % DAY_MS;
        let today = day_name(today_start);
        let today_keys: Vec<SpendKey> = scope_keys.iter().map(|key| daily_key(key, today_start)).collect();
        let backend = self.shared.limiter.backend().clone();
        let spent_today = match backend.add_spend(&today_keys, request.cost_micro_usd, now_ms).await {
            Ok(values) => values,
            Err(error) => {
                tracing::warn!(%error, "spend_anomaly alerts: today's spend could not be counted");
                return;
            }
        };
        let mut trailing = Vec::with_capacity(scope_keys.len());
        for key in &scope_keys {
            match self.trailing.get(key) {
                Some((day, sum)) if *day == today => trailing.push(*sum),
                _ => {
                    let days: Vec<SpendKey> =
                        (1..=HISTORY_DAYS).map(|back| daily_key(key, today_start - back * DAY_MS)).collect();
                    let sum = match backend.spend(&days, now_ms).await {
                        Ok(values) => values.iter().map(|value| (*value).max(0)).sum(),
                        Err(error) => {
                            tracing::warn!(%error, "spend_anomaly alerts: the trailing spend could not be read");
                            return;
                        }
                    };
                    if self.trailing.len() >= MAX_TRACKED {
                        self.trailing.clear();
                    }
                    self.trailing.insert(key.clone(), (today.clone(), sum));
                    trailing.push(sum);
                }
            }
        }
        for (index, rule) in alerts.rules.iter().enumerate() {
            let Kind::SpendAnomaly { factor, min_micro_usd } = rule.kind else { continue };
            for key in spend_scope_keys(rule.scope, request.user.as_deref(), &request.teams) {
                let at = scope_keys.iter().position(|known| *known == key).expect("every scope key was counted");
                let (today_spend, average) = (spent_today[at], trailing[at] as f64 / HISTORY_DAYS as f64);
                let threshold = factor * average;
                if today_spend < min_micro_usd || (today_spend as f64) <= threshold {
                    continue;
                }
                let claim_key = format!("alerts:anomaly:{}:{key}:{today}", rule.name);
                let (scope, name) = key.split_once(':').unwrap_or(("org", "org"));
                match self.claim_period(claim_key, today_start + DAY_MS, request.at).await {
                    Claim::Won => {}
                    Claim::Held => continue,
                    Claim::Lost => {
                        self.suppress(alerts, rule, "claimed by another replica", name);
                        continue;
                    }
                }
                let who = match scope {
                    "user" => format!("user {name}"),
                    "team" => format!("team {name}"),
                    _ => "the organisation".to_owned(),
                };
                let message = format!(
                    "{who} has spent ${:.2} today, {} the trailing 7-day daily average of ${:.2}",
                    today_spend as f64 / 1e6,
                    if average > 0.0 { format!("{:.1}x", today_spend as f64 / average) } else { "above".to_owned() },
                    average / 1e6
                );
                let alert = Raised {
                    scope: match scope {
                        "user" => "user",
                        "team" => "team",
                        _ => "org",
                    },
                    key: name.to_owned(),
                    message,
                    value: Some(today_spend as f64 / 1e6),
                    threshold: Some(threshold / 1e6),
                    request: Some(request.id.clone()),
                    user: request.user.clone(),
                    team: request.teams.first().cloned(),
                };
                self.raise(config, alerts, index, alert).await;
            }
        }
    }

    async fn action(&mut self, config: &Arc<Config>, alerts: &Arc<Alerts>, event: &ActionEvent) {
        for (index, rule) in alerts.rules.iter().enumerate() {
            let Kind::Action { matches } = &rule.kind else { continue };
            if matches.as_ref().is_some_and(|policy| policy.decide(&event.action, &[]).alert.is_none()) {
                continue;
            }
            let Some((scope, key)) = scope_key(rule, event.user.as_deref(), &event.teams) else { continue };
            let target = event.action.target.as_deref().unwrap_or("-");
            let verdict = match event.verdict {
                "deny" => "denied",
                "would_deny" => "would be denied",
                _ => "alerted",
            };
            let by = event.rule.as_deref().map(|rule| format!(" by {rule}")).unwrap_or_default();
            let message = format!(
                "the agent of {}: {} {target} ({verdict}{by})",
                who(event.user.as_deref(), &event.teams),
                event.action.name()
            );
            let raised = Raised {
                scope,
                key,
                message,
                value: None,
                threshold: None,
                request: Some(event.id.clone()),
                user: event.user.clone(),
                team: event.teams.first().cloned(),
            };
            self.cooled(config, alerts, index, raised, event.at).await;
        }
    }

    async fn auth_failure(&mut self, config: &Arc<Config>, alerts: &Arc<Alerts>, client: IpAddr, at: SystemTime) {
        // The longest window and the largest count of the rules: older failures, and more than that many, can
        // never make a rule fire, so a client's history is kept within both (a flood holds no more).
        let bounds = alerts.rules.iter().filter_map(|rule| match rule.kind {
            Kind::AuthFailures { count, window } => Some((window, count as usize)),
            _ => None,
        });
        let Some((longest, most)) = bounds
            .reduce(|(window, count), (other_window, other_count)| (window.max(other_window), count.max(other_count)))
        else {
            return;
        };
        if self.failures.len() >= MAX_TRACKED && !self.failures.contains_key(&client) {
            self.failures.retain(|_, times| times.back().is_some_and(|last| *last + longest > at));
            if self.failures.len() >= MAX_TRACKED {
                self.failures.clear();
            }
        }
        let times = self.failures.entry(client).or_default();
        remember_failure(times, at, longest, most);
        let firing: Vec<(usize, usize, u32, Duration)> = alerts
            .rules
            .iter()
            .enumerate()
            .filter_map(|(index, rule)| match rule.kind {
                Kind::AuthFailures { count, window } => {
                    let recent = times.iter().filter(|time| **time + window > at).count();
                    (recent >= count as usize).then_some((index, recent, count, window))
                }
                _ => None,
            })
            .collect();
        for (index, recent, count, window) in firing {
            let raised = Raised {
                scope: "client",
                key: client.to_string(),
                message: format!(
                    "{recent} failed sign-ins from {client} within {}",
                    humantime::format_duration(window)
                ),
                value: Some(recent as f64),
                threshold: Some(f64::from(count)),
                request: None,
                user: None,
                team: None,
            };
            self.cooled(config, alerts, index, raised, at).await;
        }
    }

    /// Raises `raised` unless rule `index` alerted for the same key within its cooldown (here or on a replica).
    async fn cooled(
        &mut self,
        config: &Arc<Config>,
        alerts: &Arc<Alerts>,
        index: usize,
        raised: Raised,
        at: SystemTime,
    ) {
        let rule = &alerts.rules[index];
        let claim_key = format!("alerts:cooldown:{}:{}:{}", rule.name, raised.scope, raised.key);
        match self.claim(claim_key, rule.cooldown, at).await {
            Claim::Won => self.raise(config, alerts, index, raised).await,
            Claim::Held => self.suppress(alerts, rule, "within the cooldown", &raised.key),
            Claim::Lost => self.suppress(alerts, rule, "claimed by another replica", &raised.key),
        }
    }

    /// Claims `key` until its period ends (`period_end_ms`): a counter in the state backend, so the claim is shared
    /// by replicas (Redis) and survives a restart (the embedded store's ledger); whoever takes it to 1 won.
    async fn claim_period(&mut self, key: String, period_end_ms: u64, now: SystemTime) -> Claim {
        if self.claims.get(&key).is_some_and(|until| *until > now) {
            return Claim::Held;
        }
        self.prune_claims(now);
        let counter = [SpendKey { key: key.clone(), period_end_ms }];
        let claim = match self.shared.limiter.backend().add_spend(&counter, 1, millis(now)).await {
            Ok(values) if values.first() == Some(&1) => Claim::Won,
            Ok(_) => Claim::Lost,
            Err(error) => {
                tracing::warn!(%error, "an alert could not be claimed in the state backend; raising it here");
                Claim::Won
            }
        };
        let until = std::time::UNIX_EPOCH + Duration::from_millis(period_end_ms);
        self.claims.insert(key, until);
        claim
    }

    fn prune_claims(&mut self, now: SystemTime) {
        if self.claims.len() >= MAX_TRACKED {
            self.claims.retain(|_, until| *until > now);
            if self.claims.len() >= MAX_TRACKED {
                self.claims.clear();
            }
        }
    }

    /// Claims `key` for `ttl` (a cooldown): `SET NX PX` in Redis when the replicas share it, else here.
    async fn claim(&mut self, key: String, ttl: Duration, now: SystemTime) -> Claim {
        if self.claims.get(&key).is_some_and(|until| *until > now) {
            return Claim::Held;
        }
        self.prune_claims(now);
        let claim = match self.shared.limiter.backend().shared_server() {
            None => Claim::Won,
            Some(server) => {
                let mut pipeline = redis::pipe();
                let milliseconds = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
                pipeline.cmd("SET").arg(crate::limits::redis::key(&key)).arg(1).arg("NX").arg("PX").arg(milliseconds);
                match server.pipeline(&pipeline).await {
                    Ok(redis::Value::Array(answers)) if matches!(answers.first(), Some(redis::Value::Nil)) => {
                        Claim::Lost
                    }
                    Ok(_) => Claim::Won,
                    Err(error) => {
                        // An alert twice is better than none: without the shared state, each replica raises it.
                        tracing::warn!(%error, "an alert could not be claimed in the state backend; raising it here");
                        Claim::Won
                    }
                }
            }
        };
        self.claims.insert(key, now + ttl);
        claim
    }

    fn suppress(&self, alerts: &Alerts, rule: &Rule, why: &str, key: &str) {
        tracing::debug!(rule = %rule.name, key, why, "alert suppressed");
        for sink in &rule.sinks {
            self.shared.metrics.alert_counter(&rule.name, &alerts.sinks[*sink].name, "suppressed").inc();
        }
    }

    /// Delivers a claimed alert to each of the rule's sinks, then writes its audit record.
    async fn raise(&mut self, config: &Arc<Config>, alerts: &Arc<Alerts>, index: usize, raised: Raised) {
        let rule = &alerts.rules[index];
        let id = format!("{:08x}a{:07x}", self.prefix, self.sequence & 0xfff_ffff);
        self.sequence += 1;
        let ts = audit::timestamp(SystemTime::now());
        tracing::warn!(rule = %rule.name, kind = rule.kind.label(), key = %raised.key, message = %raised.message, "alert");
        let alert = Alert {
            id,
            ts,
            rule: rule.name.clone(),
            kind: rule.kind.label(),
            scope: raised.scope,
            key: raised.key,
            message: clean(&raised.message),
            value: raised.value,
            threshold: raised.threshold,
            user: raised.user,
            team: raised.team,
            request: raised.request,
        };
        let (shared, config, alerts) = (self.shared.clone(), config.clone(), alerts.clone());
        // Bounded: waiting here holds events in the queue (and then drops new ones, counted), never a request.
        while self.deliveries.len() >= MAX_DELIVERIES {
            let _ = self.deliveries.join_next().await;
        }
        self.deliveries.spawn(async move {
            let rule = &alerts.rules[index];
            let mut deliveries = Vec::with_capacity(rule.sinks.len());
            for sink in rule.sinks.iter().map(|sink| &alerts.sinks[*sink]) {
                let result = deliver::send(&config, sink, &alert).await;
                let label = if result.is_ok() { "sent" } else { "failed" };
                shared.metrics.alert_counter(&rule.name, &sink.name, label).inc();
                if let Err(error) = &result {
                    tracing::warn!(rule = %rule.name, sink = %sink.name, %error, "an alert could not be delivered");
                }
                deliveries.push(AlertDelivery { sink: sink.name.clone(), result: label, error: result.err() });
            }
            let record = AlertRecord {
                ts: alert.ts,
                id: alert.id,
                kind: "alert",
                rule: alert.rule,
                rule_kind: alert.kind,
                scope: alert.scope,
                key: alert.key,
                message: alert.message,
                value: alert.value,
                threshold: alert.threshold,
                request: alert.request,
                sinks: deliveries,
            };
            let _ = shared.auditor.record(record, Wait::Never).await;
        });
    }
}

/// Adds a failed sign-in at `at` to a client's history, keeping only what a rule could still count: the
/// failures within `longest` (the longest window), and at most `most` of them (the largest count).
fn remember_failure(times: &mut VecDeque<SystemTime>, at: SystemTime, longest: Duration, most: usize) {
    times.push_back(at);
    while times.front().is_some_and(|first| *first + longest <= at) || times.len() > most {
        times.pop_front();
    }
}

/// The most of a message an alert carries: a target an agent wrote (a path, a command) can be long.
const MAX_MESSAGE_CHARS: usize = 1000;

/// `message` on one line (control characters, from a model-written path or command, become spaces: a mail subject
/// or a chat line cannot be split or forged), at most `MAX_MESSAGE_CHARS`.
fn clean(message: &str) -> String {
    let mut cleaned: String =
        message.chars().take(MAX_MESSAGE_CHARS).map(|c| if c.is_control() { ' ' } else { c }).collect();
    if message.chars().nth(MAX_MESSAGE_CHARS).is_some() {
        cleaned.push('…');
    }
    cleaned
}

/// `user alice (team backend)`, `an unidentified client`.
fn who(user: Option<&str>, teams: &[Arc<str>]) -> String {
    match (user, teams.first()) {
        (Some(user), Some(team)) => format!("user {user} (team {team})"),
        (Some(user), None) => format!("user {user}"),
        (None, _) => "an unidentified client".to_owned(),
    }
}

/// The scope and key a rule's alert is kept per: the user, the first team, or the organisation.
fn scope_key(rule: &Rule, user: Option<&str>, teams: &[Arc<str>]) -> Option<(&'static str, String)> {
    match rule.scope.unwrap_or(Scope::User) {
        Scope::User => Some(("user", user?.to_owned())),
        Scope::Team => Some(("team", teams.first()?.to_string())),
        Scope::Org => Some(("org", "org".to_owned())),
    }
}

/// The daily spend counters a `spend_anomaly` rule of `scope` reads: `user:NAME`, each `team:NAME`, or `org`.
fn spend_scope_keys(scope: Option<Scope>, user: Option<&str>, teams: &[Arc<str>]) -> Vec<String> {
    match scope.unwrap_or(Scope::User) {
        Scope::User => user.map(|user| format!("user:{user}")).into_iter().collect(),
        Scope::Team => teams.iter().map(|team| format!("team:{team}")).collect(),
        Scope::Org => vec!["org".to_owned()],
    }
}

/// The counter of one day's spend of `scope_key`, kept a week past the day so that it counts in the trailing
/// average of the seven days after it.
fn daily_key(scope_key: &str, day_start_ms: u64) -> SpendKey {
    SpendKey {
        key: format!("alerts:spend:{scope_key}:day:{}", day_name(day_start_ms)),
        period_end_ms: day_start_ms + (HISTORY_DAYS + 1) * DAY_MS,
    }
}

/// `YYYY-MM-DD` (UTC) of an instant in milliseconds.
fn day_name(ms: u64) -> String {
    let at = DateTime::<Utc>::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX)).unwrap_or_default();
    at.format("%Y-%m-%d").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_2026_11_28: u64 = 1_795_824_000_000;

    #[test]
    fn a_clients_failed_sign_ins_are_kept_within_the_largest_count_and_the_longest_window() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut times = VecDeque::new();
        for second in 0..10_000 {
            remember_failure(&mut times, start + Duration::from_millis(second), Duration::from_secs(60), 5);
        }
        assert_eq!(times.len(), 5, "a flood from one client keeps the newest `most` failures only");
        assert_eq!(times.back(), Some(&(start + Duration::from_millis(9_999))));
        remember_failure(&mut times, start + Duration::from_secs(100), Duration::from_secs(60), 5);
        assert_eq!(times.len(), 1, "failures older than the longest window are forgotten");
    }

    #[test]
    fn a_daily_spend_counter_names_its_day_and_lasts_the_week_after() {
        assert_eq!(day_name(DAY_2026_11_28), "2026-11-28");
        assert_eq!(day_name(DAY_2026_11_28 + DAY_MS - 1), "2026-11-28");
        let key = daily_key("user:alice", DAY_2026_11_28);
        assert_eq!(key.key, "alerts:spend:user:alice:day:2026-11-28");
        // Still read seven days later, as the oldest day of that day's trailing week; gone the day after.
        assert!(!key.has_ended(DAY_2026_11_28 + 7 * DAY_MS + DAY_MS - 1));
        assert!(key.has_ended(DAY_2026_11_28 + 8 * DAY_MS));
    }

    #[test]
    fn scope_keys_follow_the_rule_scope() {
        let teams: Vec<Arc<str>> = vec!["backend".into(), "ops".into()];
        assert_eq!(spend_scope_keys(Some(Scope::User), Some("alice"), &teams), ["user:alice"]);
        assert_eq!(spend_scope_keys(Some(Scope::Team), Some("alice"), &teams), ["team:backend", "team:ops"]);
        assert_eq!(spend_scope_keys(Some(Scope::Org), None, &teams), ["org"]);
        assert!(spend_scope_keys(None, None, &teams).is_empty(), "no user, nothing to count per user");
        assert_eq!(who(Some("alice"), &teams), "user alice (team backend)");
        assert_eq!(who(None, &[]), "an unidentified client");
    }

    #[test]
    fn a_message_is_one_bounded_line() {
        assert_eq!(clean("file:read /r/a\r\nBcc: x@evil.example\u{7}"), "file:read /r/a  Bcc: x@evil.example ");
        let long = "x".repeat(MAX_MESSAGE_CHARS + 5);
        assert_eq!(clean(&long).chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(clean(&long).ends_with('…'));
        assert_eq!(clean("héllo"), "héllo");
    }
}
