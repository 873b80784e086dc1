//! `alerts` compiled: the sinks (webhook, email) and the rules, checked once per load so that the engine only
//! matches. Errors name the key: `alerts.rules[1].to[0]: unknown sink "secop": define it under alerts.sinks`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;

use super::event::Wants;
use crate::actions::rules::{ActionPolicy, GlobalActions, Lists};
use crate::config::file::{self, AlertFormat};
use crate::policy::Hours;

/// How long a rule stays quiet for one scope key after it alerted, unless it says otherwise.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(3600);
/// `budget` thresholds when none are given.
const DEFAULT_THRESHOLDS: [f64; 3] = [0.5, 0.8, 0.95];
/// `spend_anomaly` defaults: twice the trailing average, and at least $10 today.
const DEFAULT_FACTOR: f64 = 2.0;
const DEFAULT_MIN_USD: f64 = 10.0;
/// `auth_failures` defaults: 20 failed sign-ins from one address within a minute.
const DEFAULT_FAILURES: u32 = 20;
const DEFAULT_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// The compiled `alerts` section.
#[derive(Debug)]
pub struct Alerts {
    pub sinks: Vec<Sink>,
    pub rules: Vec<Rule>,
    /// Which events the request path sends (`Wants` bits): the rules' kinds.
    pub wants: u8,
}

/// One named sink.
#[derive(Debug)]
pub struct Sink {
    pub name: Arc<str>,
    pub target: Target,
}

/// Where a sink delivers.
#[derive(Debug)]
pub enum Target {
    Webhook { url: http::Uri, format: AlertFormat },
    Email(Box<Email>),
}

/// An email sink: SMTP with STARTTLS (`smtp://`) or TLS from the start (`smtps://`), never in the clear.
#[derive(Debug)]
pub struct Email {
    pub to: Vec<Mailbox>,
    pub from: Mailbox,
    pub host: String,
    pub port: u16,
    /// `smtps://`: TLS from the first byte; `smtp://`: STARTTLS, required.
    pub implicit_tls: bool,
    pub credentials: Option<(String, String)>,
    /// The upstream trust settings: the system roots, and the PEM bytes of each `upstream.trust.extra_ca`.
    pub system_roots: bool,
    pub extra_ca: Vec<Vec<u8>>,
}

/// Whose alert it is, and so the key a cooldown is kept per.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    User,
    Team,
    Org,
}

impl Scope {
    /// `user`, `team` or `org`.
    pub fn label(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Team => "team",
            Scope::Org => "org",
        }
    }
}

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub name: Arc<str>,
    /// `None` for `budget` (every budget that applies) and `auth_failures` (the client address).
    pub scope: Option<Scope>,
    /// Indexes into `Alerts::sinks`.
    pub sinks: Vec<usize>,
    pub cooldown: Duration,
    pub kind: Kind,
}

/// What a rule watches, with its own settings.
#[derive(Debug)]
pub enum Kind {
    /// Fractions of a budget, ascending; each alerted once per budget period and key.
    Budget { thresholds: Vec<f64> },
    /// Today's spend above `factor` times the trailing 7-day daily average, and at least `min_micro_usd`.
    SpendAnomaly { factor: f64, min_micro_usd: i64 },
    /// Requests refused by team hours, and model use outside `window` (an alert-only window), for `teams`.
    AfterHours { window: Option<Hours>, teams: Option<Vec<Arc<str>>> },
    /// Agent actions a policy marks `alert` or denies (or would deny), matching `matches` when given.
    Action { matches: Option<ActionPolicy> },
    /// Requests a DLP detector blocked.
    Dlp,
    /// `count` failed sign-ins from one client address within `window`.
    AuthFailures { count: u32, window: Duration },
}

impl Kind {
    /// The kind's name in config, alerts and audit records.
    pub fn label(&self) -> &'static str {
        match self {
            Kind::Budget { .. } => "budget",
            Kind::SpendAnomaly { .. } => "spend_anomaly",
            Kind::AfterHours { .. } => "after_hours",
            Kind::Action { .. } => "action",
            Kind::Dlp => "dlp",
            Kind::AuthFailures { .. } => "auth_failures",
        }
    }

    fn wants(&self) -> u8 {
        match self {
            Kind::Budget { .. } | Kind::SpendAnomaly { .. } => Wants::METERED,
            Kind::AfterHours { window: None, .. } => Wants::HOURS_DENIED,
            Kind::AfterHours { window: Some(_), .. } => Wants::HOURS_DENIED | Wants::MODEL_USE,
            Kind::Action { .. } => Wants::ACTION,
            Kind::Dlp => Wants::DLP,
            Kind::AuthFailures { .. } => Wants::AUTH_FAILURE,
        }
    }
}

const KINDS: &str = "budget, spend_anomaly, after_hours, action, dlp or auth_failures";

/// Compiles `alerts`; `teams` are the defined teams (an `after_hours` rule may name some). An error is a key
/// path and a message.
pub fn compile(
    alerts: &file::Alerts,
    teams: &BTreeMap<String, file::Team>,
    trust: &file::Trust,
) -> Result<Alerts, (String, String)> {
    let mut sinks = Vec::with_capacity(alerts.sinks.len());
    for (name, sink) in &alerts.sinks {
        let key = format!("alerts.sinks.{name}");
        sinks.push(Sink { name: name.as_str().into(), target: compile_sink(&key, sink, trust)? });
    }
    let mut rules: Vec<Rule> = Vec::with_capacity(alerts.rules.len());
    for (index, rule) in alerts.rules.iter().enumerate() {
        let key = format!("alerts.rules[{index}]");
        if rule.name.is_empty() {
            return Err((format!("{key}.name"), "a rule needs a name".to_owned()));
        }
        if rules.iter().any(|known| *known.name == *rule.name) {
            return Err((format!("{key}.name"), format!("rule {:?} is defined twice", rule.name)));
        }
        rules.push(compile_rule(&key, rule, &sinks, teams)?);
    }
    let wants = rules.iter().fold(0, |wants, rule| wants | rule.kind.wants());
    Ok(Alerts { sinks, rules, wants })
}

fn compile_sink(key: &str, sink: &file::AlertSink, trust: &file::Trust) -> Result<Target, (String, String)> {
    let error = |field: &str, message: String| (format!("{key}.{field}"), message);
    match (&sink.webhook, &sink.email) {
        (Some(_), Some(_)) => Err(error("email", "a sink is either a webhook or email, not both".to_owned())),
        (None, None) => Err((key.to_owned(), "a sink needs webhook: URL or email: [ADDRESS…]".to_owned())),
        (Some(url), None) => {
            for (field, set) in [
                ("smtp", sink.smtp.is_some()),
                ("from", sink.from.is_some()),
                ("username", sink.username.is_some()),
                ("password_file", sink.password_file.is_some()),
            ] {
                if set {
                    return Err(error(field, "applies to email sinks only".to_owned()));
                }
            }
            let invalid = || error("webhook", format!("invalid URL {url:?}: write https://host[:port]/path"));
            let uri: http::Uri = url.parse().map_err(|_| invalid())?;
            match (uri.scheme_str(), uri.host()) {
                (Some("https"), Some(host)) if !host.is_empty() => {}
                // Alerts name users and teams: in the clear only to this machine (a local relay, a test).
                (Some("http"), Some(host)) if is_loopback(host) => {}
                (Some("http"), Some(_)) => {
                    let message = "http:// would send alerts in the clear: use https:// (http:// is accepted for \
                                   loopback addresses only)";
                    return Err(error("webhook", message.to_owned()));
                }
                _ => return Err(invalid()),
            }
            Ok(Target::Webhook { url: uri, format: sink.format.unwrap_or_default() })
        }
        (None, Some(recipients)) => {
            if sink.format.is_some() {
                return Err(error("format", "applies to webhook sinks only".to_owned()));
            }
            if recipients.is_empty() {
                return Err(error("email", "name at least one recipient".to_owned()));
            }
            let mailbox = |field: String, text: &str| {
                text.parse::<Mailbox>().map_err(|_| (field, format!("invalid email address {text:?}")))
            };
            let mut to = Vec::with_capacity(recipients.len());
            for (index, recipient) in recipients.iter().enumerate() {
                to.push(mailbox(format!("{key}.email[{index}]"), recipient)?);
            }
            let from = sink.from.as_deref().ok_or_else(|| error("from", "an email sink needs from: ADDRESS".into()))?;
            let from = mailbox(format!("{key}.from"), from)?;
            let smtp = sink
                .smtp
                .as_deref()
                .ok_or_else(|| error("smtp", "an email sink needs smtp: smtp://host:587 or smtps://host:465".into()))?;
            let (host, port, implicit_tls) = parse_smtp(smtp).map_err(|message| error("smtp", message))?;
            let credentials = match (&sink.username, &sink.password_file) {
                (None, None) => None,
                (Some(username), Some(path)) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| error("password_file", format!("cannot read {path}: {e}")))?;
                    let password = text.lines().next().unwrap_or_default().to_owned();
                    Some((username.clone(), password))
                }
                (Some(_), None) => return Err(error("password_file", "username needs password_file".to_owned())),
                (None, Some(_)) => return Err(error("username", "password_file needs username".to_owned())),
            };
            let mut extra_ca = Vec::with_capacity(trust.extra_ca.len());
            for path in &trust.extra_ca {
                // The upstream section reports a file it cannot read; here it was readable a moment ago.
                extra_ca.push(std::fs::read(path).map_err(|e| error("smtp", format!("cannot read {path}: {e}")))?);
            }
            Ok(Target::Email(Box::new(Email {
                to,
                from,
                host,
                port,
                implicit_tls,
                credentials,
                system_roots: trust.system_roots,
                extra_ca,
            })))
        }
    }
}

/// `localhost`, `127.0.0.1`, `[::1]` and the like.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `smtp://host[:port]` (587) or `smtps://host[:port]` (465): host, port and whether TLS starts at once.
fn parse_smtp(text: &str) -> Result<(String, u16, bool), String> {
    let invalid = || format!("invalid SMTP URL {text:?}: write smtp://host:587 (STARTTLS) or smtps://host:465");
    let url = url::Url::parse(text).map_err(|_| invalid())?;
    let implicit_tls = match url.scheme() {
        "smtp" => false,
        "smtps" => true,
        _ => return Err(invalid()),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{text:?}: give the user name as username and the password in password_file"));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() {
        return Err(invalid());
    }
    let host = match url.host() {
        Some(url::Host::Domain(name)) => name.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(invalid()),
    };
    let port = url.port().unwrap_or(if implicit_tls { 465 } else { 587 });
    Ok((host, port, implicit_tls))
}

fn compile_rule(
    key: &str,
    rule: &file::AlertRule,
    sinks: &[Sink],
    teams: &BTreeMap<String, file::Team>,
) -> Result<Rule, (String, String)> {
    let error = |field: &str, message: String| (format!("{key}.{field}"), message);
    let kind_name = rule.kind.as_str();
    // A field of another kind is a mistake the user should hear about, not a setting silently ignored.
    let fields: [(&str, bool, &[&str]); 8] = [
        ("thresholds", rule.thresholds.is_some(), &["budget"]),
        ("factor", rule.factor.is_some(), &["spend_anomaly"]),
        ("min_usd", rule.min_usd.is_some(), &["spend_anomaly"]),
        ("hours", rule.hours.is_some(), &["after_hours"]),
        ("teams", rule.teams.is_some(), &["after_hours"]),
        ("match", rule.matches.is_some(), &["action"]),
        ("count", rule.count.is_some(), &["auth_failures"]),
        ("window", rule.window.is_some(), &["auth_failures"]),
    ];
    if !["budget", "spend_anomaly", "after_hours", "action", "dlp", "auth_failures"].contains(&kind_name) {
        return Err(error("kind", format!("unknown kind {kind_name:?}: use {KINDS}")));
    }
    for (field, set, kinds) in fields {
        if set && !kinds.contains(&kind_name) {
            return Err(error(field, format!("applies to kind {} only", kinds.join(", "))));
        }
    }
    let kind = match kind_name {
        "budget" => {
            let mut thresholds = rule.thresholds.clone().unwrap_or_else(|| DEFAULT_THRESHOLDS.to_vec());
            if thresholds.is_empty() {
                return Err(error("thresholds", "name at least one threshold, e.g. [0.5, 0.8, 0.95]".to_owned()));
            }
            for (index, threshold) in thresholds.iter().enumerate() {
                if !(*threshold > 0.0 && *threshold <= 1.0) {
                    let message = format!(
                        "{threshold} is outside (0, 1]: a threshold is a fraction of the budget (0.8 for 80 %)"
                    );
                    return Err(error(&format!("thresholds[{index}]"), message));
                }
            }
            thresholds.sort_by(f64::total_cmp);
            thresholds.dedup();
            Kind::Budget { thresholds }
        }
        "spend_anomaly" => {
            let factor = rule.factor.unwrap_or(DEFAULT_FACTOR);
            if !(factor.is_finite() && factor >= 1.0) {
                return Err(error("factor", format!("{factor} must be a number of at least 1")));
            }
            let min_usd = rule.min_usd.unwrap_or(DEFAULT_MIN_USD);
            if !(min_usd.is_finite() && min_usd >= 0.0) {
                return Err(error("min_usd", "must be a non-negative number of USD".to_owned()));
            }
            Kind::SpendAnomaly { factor, min_micro_usd: (min_usd * 1e6).round() as i64 }
        }
        "after_hours" => {
            let window = match &rule.hours {
                Some(hours) => {
                    Some(Hours::compile(hours).map_err(|(field, message)| error(&format!("hours.{field}"), message))?)
                }
                None => None,
            };
            let mut named = Vec::new();
            for (index, team) in rule.teams.iter().flatten().enumerate() {
                if !teams.contains_key(team) {
                    return Err(error(&format!("teams[{index}]"), format!("team {team:?} is not defined under teams")));
                }
                named.push(Arc::from(team.as_str()));
            }
            Kind::AfterHours { window, teams: rule.teams.as_ref().map(|_| named) }
        }
        "action" => {
            let matches = match &rule.matches {
                Some(patterns) => {
                    let lists = Lists::compile(key, &[], &[], patterns).map_err(|e| {
                        // Lists names the list `alert`; here it is the rule's `match`.
                        (e.key.replacen(&format!("{key}.alert["), &format!("{key}.match["), 1), e.message)
                    })?;
                    let global = GlobalActions { lists, ..GlobalActions::default() };
                    Some(ActionPolicy::new(global, BTreeMap::new()))
                }
                None => None,
            };
            Kind::Action { matches }
        }
        "dlp" => Kind::Dlp,
        _ => {
            let count = rule.count.unwrap_or(DEFAULT_FAILURES);
            if count < 2 {
                return Err(error("count", "must be at least 2 (a burst)".to_owned()));
            }
            let window = rule.window.map_or(DEFAULT_FAILURE_WINDOW, |window| window.0);
            if window.is_zero() {
                return Err(error("window", "must be greater than zero".to_owned()));
            }
            Kind::AuthFailures { count, window }
        }
    };
    let scope = match (rule.scope.as_deref(), &kind) {
        (Some(_), Kind::AuthFailures { .. }) => {
            return Err(error("scope", "auth_failures alerts are kept per client address; remove scope".to_owned()))
        }
        (None, Kind::AuthFailures { .. } | Kind::Budget { .. }) => None,
        (None, _) => Some(Scope::User),
        (Some("user"), _) => Some(Scope::User),
        (Some("team"), _) => Some(Scope::Team),
        (Some("org"), _) => Some(Scope::Org),
        (Some(other), _) => return Err(error("scope", format!("unknown scope {other:?}: use user, team or org"))),
    };
    if rule.to.is_empty() {
        return Err(error("to", "name at least one sink from alerts.sinks".to_owned()));
    }
    let mut targets = Vec::with_capacity(rule.to.len());
    for (index, name) in rule.to.iter().enumerate() {
        let sink = sinks.iter().position(|sink| *sink.name == **name).ok_or_else(|| {
            error(&format!("to[{index}]"), format!("unknown sink {name:?}: define it under alerts.sinks"))
        })?;
        if !targets.contains(&sink) {
            targets.push(sink);
        }
    }
    let cooldown = rule.cooldown.map_or(DEFAULT_COOLDOWN, |cooldown| cooldown.0);
    if cooldown.is_zero() {
        return Err(error("cooldown", "must be greater than zero".to_owned()));
    }
    Ok(Rule { name: rule.name.as_str().into(), scope, sinks: targets, cooldown, kind })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Alerts, (String, String)> {
        let text = format!("listeners: [{{name: proxy, bind: \"127.0.0.1:0\"}}]\npolicy: {{default: deny}}\n{yaml}");
        let root = crate::config::yaml::parse(&text).expect("the YAML parses");
        let file: file::File = crate::config::yaml::deserialize(&root, &|_| None).expect("the YAML deserializes");
        let alerts = file.alerts.as_ref().expect("an alerts section");
        compile(alerts, &file.teams, &file.upstream.trust)
    }

    const HOOK: &str = "alerts:\n  sinks:\n    hook: {webhook: \"https://hooks.corp.example/x\"}\n  rules:\n";

    #[test]
    fn defaults_fill_what_a_rule_leaves_out() {
        let alerts = parse(&format!(
            "{HOOK}    - {{name: budget, kind: budget, to: [hook]}}\n    - {{name: spend, kind: spend_anomaly, to: [hook, hook]}}\n    - {{name: burst, kind: auth_failures, to: [hook]}}\n"
        ))
        .expect("compiles");
        let [budget, spend, burst] = &alerts.rules[..] else { panic!("three rules: {alerts:?}") };
        assert!(matches!(&budget.kind, Kind::Budget { thresholds } if thresholds == &[0.5, 0.8, 0.95]));
        assert_eq!(budget.scope, None, "every budget that applies");
        assert_eq!(budget.cooldown, DEFAULT_COOLDOWN);
        assert!(
            matches!(spend.kind, Kind::SpendAnomaly { factor, min_micro_usd } if factor == 2.0 && min_micro_usd == 10_000_000)
        );
        assert_eq!(spend.scope, Some(Scope::User));
        assert_eq!(spend.sinks, [0], "a sink named twice is sent to once");
        assert!(matches!(burst.kind, Kind::AuthFailures { count: 20, window } if window == Duration::from_secs(60)));
        assert_eq!(alerts.wants, super::Wants::METERED | super::Wants::AUTH_FAILURE);
    }

    #[test]
    fn thresholds_are_sorted_and_checked() {
        let alerts = parse(&format!("{HOOK}    - {{name: b, kind: budget, thresholds: [0.95, 0.5, 1], to: [hook]}}\n"))
            .expect("compiles");
        assert!(matches!(&alerts.rules[0].kind, Kind::Budget { thresholds } if thresholds == &[0.5, 0.95, 1.0]));
        for bad in ["0", "-0.5", "1.01"] {
            let (key, message) =
                parse(&format!("{HOOK}    - {{name: b, kind: budget, thresholds: [{bad}], to: [hook]}}\n"))
                    .expect_err("refused");
            assert_eq!(key, "alerts.rules[0].thresholds[0]", "{bad}");
            assert!(message.contains("outside (0, 1]"), "{message}");
        }
    }

    #[test]
    fn sinks_are_webhooks_or_email_over_tls() {
        let refused =
            |sink: &str| parse(&format!("alerts:\n  sinks:\n    s: {sink}\n  rules: []\n")).expect_err("refused").1;
        assert!(refused("{webhook: \"ftp://x/\"}").contains("invalid URL"));
        assert!(refused("{webhook: \"http://hooks.corp.example/x\"}").contains("in the clear"));
        for local in ["http://127.0.0.1:9/x", "http://localhost/x", "http://[::1]:80/"] {
            assert!(parse(&format!("alerts:\n  sinks:\n    s: {{webhook: \"{local}\"}}\n")).is_ok(), "{local}");
        }
        assert!(refused("{webhook: \"https://x/\", email: [a@b.example]}").contains("not both"));
        assert!(refused("{}").contains("webhook: URL or email"));
        assert!(refused("{email: [a@b.example], smtp: \"smtp://m\"}").contains("from: ADDRESS"));
        assert!(refused("{email: [not an address], smtp: \"smtp://m\", from: t@b.example}").contains("invalid email"));
        assert!(refused("{email: [a@b.example], smtp: \"http://m\", from: t@b.example}").contains("invalid SMTP URL"));
        assert!(refused("{email: [a@b.example], smtp: \"smtp://u:p@m\", from: t@b.example}").contains("password_file"));
        assert!(refused("{webhook: \"https://x/\", smtp: \"smtp://m\"}").contains("email sinks only"));
        assert_eq!(parse_smtp("smtp://mail.corp.example"), Ok(("mail.corp.example".to_owned(), 587, false)));
        assert_eq!(parse_smtp("smtps://mail.corp.example"), Ok(("mail.corp.example".to_owned(), 465, true)));
        assert_eq!(parse_smtp("smtp://10.0.0.5:2525/"), Ok(("10.0.0.5".to_owned(), 2525, false)));
    }

    #[test]
    fn rule_mistakes_name_their_key() {
        for (rule, key, says) in [
            ("{name: a, kind: dlp, to: []}", "alerts.rules[0].to", "at least one sink"),
            ("{name: a, kind: dlp, to: [nope]}", "alerts.rules[0].to[0]", "unknown sink \"nope\""),
            ("{name: a, kind: dlp, scope: region, to: [hook]}", "alerts.rules[0].scope", "unknown scope"),
            ("{name: a, kind: auth_failures, scope: user, to: [hook]}", "alerts.rules[0].scope", "client address"),
            ("{name: a, kind: auth_failures, count: 1, to: [hook]}", "alerts.rules[0].count", "at least 2"),
            ("{name: a, kind: spend_anomaly, factor: 0.5, to: [hook]}", "alerts.rules[0].factor", "at least 1"),
            ("{name: a, kind: dlp, cooldown: 0s, to: [hook]}", "alerts.rules[0].cooldown", "greater than zero"),
            ("{name: a, kind: after_hours, teams: [ghosts], to: [hook]}", "alerts.rules[0].teams[0]", "not defined"),
            ("{name: a, kind: action, match: [\"file:read:/etc/[x\"], to: [hook]}", "alerts.rules[0].match[0]", "glob"),
            ("{name: a, kind: dlp, count: 3, to: [hook]}", "alerts.rules[0].count", "auth_failures only"),
        ] {
            let (found, message) = parse(&format!("{HOOK}    - {rule}\n")).expect_err(rule);
            assert_eq!(found, key, "{rule}: {message}");
            assert!(message.contains(says), "{rule}: {message}");
        }
        let (key, message) = parse(&format!(
            "{HOOK}    - {{name: a, kind: dlp, to: [hook]}}\n    - {{name: a, kind: dlp, to: [hook]}}\n"
        ))
        .expect_err("a name twice");
        assert_eq!((key.as_str(), message.as_str()), ("alerts.rules[1].name", "rule \"a\" is defined twice"));
    }
}
