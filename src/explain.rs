//! `tollgate explain`: what tollgate would do with a request, and why — from the same decision code the
//! proxy runs (`Policy::decide`, `upstream::resolve_checked`, `Limits::plan`), never a copy of it.

use std::fmt::Write;
use std::sync::Arc;
use std::time::SystemTime;

use crate::actions::rules::Verdict;
use crate::actions::tools::{Action, Kind};
use crate::config::Config;
use crate::identity::{AuthMethod, Principal};
use crate::limits::Scope;
use crate::policy::Decision;
use crate::proxy::forward;
use crate::target::Target;
use crate::upstream;

/// What a bearer token proves, for `tollgate explain --token`.
#[derive(Debug, Clone)]
pub struct TokenAnswer {
    /// The principal the token names: user, teams and region, as a request carrying it would be identified.
    pub principal: Principal,
    /// How it was verified and what it maps to, to print.
    pub report: String,
}

/// Verifies `token` at `at` exactly as a request's `Proxy-Authorization: Bearer` or `Authorization: Bearer` is
/// (`auth.oidc` fetches the identity provider's keys first), and says who it names — or, as the error, why a
/// request carrying it is refused.
pub async fn explain_token(config: &Config, token: &str, at: SystemTime) -> Result<TokenAnswer, String> {
    let token = token.trim();
    let token = token.strip_prefix("Bearer ").or_else(|| token.strip_prefix("bearer ")).unwrap_or(token).trim();
    if !config.identity.accepts_bearer() {
        return Err("the token is refused: neither auth.oidc nor auth.jwt is configured".to_owned());
    }
    let principal =
        config.identity.bearer_principal(token, at).await.map_err(|error| {
            format!("the token is refused (a client gets 407, or 401 on a gateway listener): {error}")
        })?;
    let source = match (principal.method, config.identity.oidc()) {
        (AuthMethod::Oidc, Some(provider)) => format!("auth.oidc, issuer {}", provider.issuer()),
        _ => "auth.jwt".to_owned(),
    };
    let teams: Vec<&str> = principal.teams.iter().map(|t| &**t).collect();
    let teams = if teams.is_empty() { "none (no group maps to a team)".to_owned() } else { teams.join(", ") };
    let region = match &principal.region {
        Some(region) => format!("{region} (from the token)"),
        None => {
            let from_team = principal.teams.iter().find_map(|t| config.teams.get(t).and_then(|s| s.region.as_deref()));
            from_team.map_or("none".to_owned(), |region| format!("{region} (from its team)"))
        }
    };
    let mut report = String::new();
    let _ = writeln!(report, "token:     valid ({source})");
    let _ = writeln!(report, "user:      {}", principal.name);
    let _ = writeln!(report, "teams:     {teams}");
    let _ = writeln!(report, "region:    {region}");
    if let Some(expires) = principal.expires {
        let _ = writeln!(report, "expires:   {}", humantime::format_rfc3339_seconds(expires));
    }
    Ok(TokenAnswer { principal, report })
}

/// The question.
#[derive(Debug, Clone)]
pub struct Question {
    pub user: String,
    /// Teams to assume; empty = the configured user's teams.
    pub teams: Vec<String>,
    pub method: String,
    pub model: Option<String>,
    /// `host:port`, or an `http(s)://` URL.
    pub target: String,
    /// Also resolve the name and run the private-address guard on every address.
    pub resolve: bool,
    pub at: SystemTime,
}

/// The answer: the decision, and a report to print.
#[derive(Debug, Clone)]
pub struct Answer {
    pub decision: Decision,
    pub report: String,
}

/// Explains one request against `config`.
pub async fn explain(config: &Config, question: &Question) -> Result<Answer, String> {
    let target = parse_target(&question.target)?;
    let principal = principal(config, question);
    let mut report = principal_line(&principal);
    if !config.identity.knows(&principal.name) {
        let _ = writeln!(
            report,
            "note:      {} is neither in auth.users nor auth.anonymous: a Basic client would get 407 (a client \
             certificate or a JWT may still name it)",
            principal.name
        );
    }
    let _ = writeln!(report, "request:   {} {}", question.method, target);
    let mut decision = config.policy.decide(&target, &principal.teams, question.at);
    if question.resolve && matches!(decision, Decision::Allow { .. }) {
        let dialer = upstream::Dialer { config, own_addresses: &[], teams: &principal.teams };
        match dialer.resolve_checked(&target).await {
            Ok(addresses) => {
                let list: Vec<String> = addresses.iter().map(|a| a.ip().to_string()).collect();
                let _ = writeln!(report, "addresses: {} (all pass the private-address guard)", list.join(", "));
            }
            Err(error) => {
                let _ = writeln!(report, "addresses: {error}");
                if let crate::request::error::Error::Denied { rule, reason, .. } = error {
                    decision = Decision::Deny { rule, reason };
                }
            }
        }
    }
    for team in principal.teams.iter() {
        if let Some(hours) = config.policy.team(team).and_then(|t| t.hours.as_ref()) {
            let inside = if hours.contains(question.at) { "inside" } else { "outside" };
            let _ = writeln!(report, "hours:     teams.{team}.hours {} ({inside} at the given time)", hours.describe());
        }
    }
    let plan = config.limits.plan(&principal);
    for bucket in &plan.buckets {
        let _ = writeln!(
            report,
            "limit:     {} {} requests/minute ({})",
            scope_name(bucket.scope),
            bucket.rate.per_minute,
            bucket.key
        );
    }
    for slot in &plan.slots {
        let _ = writeln!(report, "limit:     {} {} concurrent ({})", scope_name(slot.scope), slot.max, slot.key);
    }
    if plan.is_empty() {
        let _ = writeln!(report, "limit:     none");
    }
    if config.llm.intercepts(&target) {
        let _ = writeln!(
            report,
            "intercept: yes — the CONNECT is opened for any identified user; each request inside is decided as \
             above, limited, metered and audited, and a refusal is answered inside the tunnel"
        );
    }
    for team in principal.teams.iter() {
        if let Some(settings) = config.teams.get(team).filter(|s| !s.models.is_empty()) {
            let verdict = match question.model.as_deref() {
                Some(model) if settings.model_globs.is_match(model) => format!(" — {model}: allowed"),
                Some(model) => format!(" — {model}: not allowed by this team"),
                None => String::new(),
            };
            let _ = writeln!(report, "models:    teams.{team}.models {}{verdict}", settings.models.join(", "));
        }
    }
    for budget in config.llm.budgets.applying(&principal) {
        let whose = budget.team.as_deref().map(|t| format!(" (team {t})")).unwrap_or_default();
        let _ = writeln!(
            report,
            "budget:    {} ${:.2}{whose} — enforced on metered requests",
            budget.scope.rule(),
            budget.limit_micro_usd as f64 / 1e6
        );
    }
    let (verdict, rule) = match &decision {
        Decision::Allow { rule } => ("allow", rule),
        Decision::Deny { rule, .. } => ("deny", rule),
    };
    let _ = writeln!(report, "decision:  {verdict} (rule {rule})");
    Ok(Answer { decision, report })
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::User => "user",
        Scope::Team => "team",
        Scope::TeamMember => "team member",
        Scope::Org => "org",
    }
}

/// The answer to `explain --action`: the decision, and a report to print.
#[derive(Debug, Clone)]
pub struct ActionAnswer {
    pub decision: crate::actions::rules::Decision,
    pub report: String,
}

/// Explains one agent action (`file:write:/repos/x`, `bash:run:curl http://x`, `tool:NAME`) for the question's
/// principal, with the decision code the gateway runs on each tool call.
pub fn explain_action(config: &Config, question: &Question, action: &str) -> Result<ActionAnswer, String> {
    let principal = principal(config, question);
    let action = parse_action(action)?;
    let decision = config.actions.policy.decide(&action, &principal.teams);
    let mut report = principal_line(&principal);
    let _ = writeln!(report, "action:    {}", action.canonical());
    let verdict = match (decision.verdict, decision.would_deny, &decision.alert) {
        (Verdict::Deny, _, _) => "deny",
        (Verdict::Allow, true, _) => "allow (would deny: the policy is in observe mode)",
        (Verdict::Allow, false, Some(_)) => "allow, alerting",
        (Verdict::Allow, false, None) => "allow",
    };
    let _ = writeln!(report, "decision:  {verdict}");
    let _ = writeln!(report, "rule:      {}", decision.rule);
    if let Some(alert) = &decision.alert {
        let _ = writeln!(report, "alert:     {alert}");
    }
    Ok(ActionAnswer { decision, report })
}

/// Explains what the question's principal's Claude Code receives from `GET /api/claude_code/settings` and
/// `/api/claude_code/policy_limits` inside an intercepted tunnel: the JSON, its checksum, and the action rules and
/// model globs that generated nothing.
pub fn explain_settings(config: &Config, question: &Question) -> String {
    use crate::api::settings::body_for;
    use crate::config::settings::Kind;

    let principal = principal(config, question);
    let mut report = principal_line(&principal);
    let Some(managed) = &config.managed_settings else {
        let _ = writeln!(
            report,
            "settings:  none (no managed_settings section): the calls go to api.anthropic.com unchanged"
        );
        return report;
    };
    for (kind, label) in [(Kind::Settings, "settings"), (Kind::PolicyLimits, "policy limits")] {
        match body_for(config, &principal.teams, kind) {
            Some((body, checksum)) => {
                let value: serde_json::Value = serde_json::from_str(&body).expect("tollgate's own JSON");
                let shown = if kind == Kind::Settings { &value["settings"] } else { &value };
                let pretty = serde_json::to_string_pretty(shown).expect("JSON");
                let _ = writeln!(report, "{label}: {checksum}\n{pretty}");
            }
            None => {
                let _ = writeln!(
                    report,
                    "{label}: none configured for this user: the call goes to api.anthropic.com unchanged"
                );
            }
        }
    }
    let concerned: Vec<_> = managed
        .untranslated
        .iter()
        .filter(|u| u.team.as_ref().is_none_or(|team| principal.teams.contains(team)))
        .collect();
    if !concerned.is_empty() {
        let _ = writeln!(report, "not translated (the gateway still enforces these on the wire):");
        for untranslated in concerned {
            let _ = writeln!(report, "  {}: {}", untranslated.source, untranslated.why);
        }
    }
    report
}

/// `FAMILY:VERB[:TARGET]` or `tool:NAME` as an action.
fn parse_action(text: &str) -> Result<Action, String> {
    let mut parts = text.splitn(3, ':');
    let (family, verb) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let target = parts.next().filter(|target| !target.is_empty()).map(str::to_owned);
    if family == "tool" && !verb.is_empty() {
        return Ok(Action { kind: Kind::Tool, tool: verb.to_owned(), target });
    }
    let name = format!("{family}:{verb}");
    let kind = Kind::named(&name).ok_or_else(|| {
        let known: Vec<&str> = Kind::NAMED.iter().map(|(name, _)| *name).collect();
        format!("unknown action {name:?}: one of {}, or tool:NAME", known.join(", "))
    })?;
    Ok(Action { kind, tool: String::new(), target })
}

/// The report's first line: who is asked about, and in which teams.
fn principal_line(principal: &Principal) -> String {
    let teams: Vec<&str> = principal.teams.iter().map(|t| &**t).collect();
    let teams = if teams.is_empty() { "none".to_owned() } else { teams.join(", ") };
    format!("principal: {} (teams: {teams})\n", principal.name)
}

/// The principal as the proxy would see it: the configured user's teams unless teams are given.
fn principal(config: &Config, question: &Question) -> Principal {
    let assumed = Principal::named(&question.user, &[], AuthMethod::Basic);
    let teams: Arc<[Arc<str>]> = if question.teams.is_empty() {
        config.identity.teams_of(&question.user).unwrap_or_else(|| Arc::new([]))
    } else {
        question.teams.iter().map(|t| Arc::from(t.as_str())).collect()
    };
    Principal { teams, ..assumed }
}

/// `host:port` or an absolute URL.
fn parse_target(text: &str) -> Result<Target, String> {
    if text.contains("://") {
        return forward::parse_absolute(text).map(|uri| uri.target).map_err(|e| e.to_string());
    }
    Target::parse_with_default(text, Some(443)).map_err(|e| e.to_string())
}
