//! The serde mirror of `tollgate.yaml`: exactly the keys a user may write, nothing compiled yet.
//!
//! Unknown keys are rejected everywhere (`deny_unknown_fields`); `mod.rs` turns this into a validated `Config`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::units::{ByteSize, Duration};
use crate::tls::{CertIdentity, ClientAuth};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// The sockets that accept proxy clients.
    pub listeners: Vec<Listener>,
    /// Metrics, health and admin endpoints; omitted = no admin listener.
    pub admin: Option<Admin>,
    /// Who a request comes from.
    #[serde(default)]
    pub auth: Auth,
    /// Where requests may go.
    pub policy: Policy,
    /// How tollgate connects to destinations.
    #[serde(default)]
    pub upstream: Upstream,
    /// The audit trail.
    #[serde(default)]
    pub audit: Audit,
    /// Limits on client connections and shutdown behaviour.
    #[serde(default)]
    pub server: Server,
    /// Teams by name: their own destinations, limits and hours.
    #[serde(default)]
    pub teams: BTreeMap<String, Team>,
    /// Rate and concurrency limits per user and for the whole organisation.
    #[serde(default)]
    pub limits: Limits,
    /// Where limit counters and spend live: in this process or shared through Redis.
    #[serde(default)]
    pub state: State,
    /// Model APIs that intercepted and gateway requests are sent to, by name.
    #[serde(default)]
    pub upstreams: BTreeMap<String, NamedUpstream>,
    /// Which upstream serves a request: first match wins.
    #[serde(default)]
    pub routing: Vec<Route>,
    /// TLS interception of chosen hosts after an allowed CONNECT.
    pub intercept: Option<Intercept>,
    /// Secret and personal-data detectors run on metered request bodies.
    pub dlp: Option<Dlp>,
    /// USD per million tokens by model glob; first match wins.
    #[serde(default)]
    pub pricing: Vec<Price>,
    /// Organisation-wide spend budgets.
    #[serde(default)]
    pub budgets: Budgets,
    /// What coding agents may do: rules for the tool calls (`tool_use` blocks) in model responses.
    #[serde(default)]
    pub actions: Actions,
    /// Claude Code's server-managed settings and policy limits, served inside intercepted tunnels
    /// (docs/managed-settings.md); omitted = those calls go to Anthropic unchanged.
    pub managed_settings: Option<ManagedSettings>,
    /// Alerts: where they go (`sinks`) and the rules that raise them (docs/alerts.md); omitted = none.
    pub alerts: Option<Alerts>,
    /// The developer page: a reserved host name tollgate answers itself through the proxy
    /// (docs/developer-page.md); omitted = served at `tollgate.internal`.
    #[serde(default)]
    pub developer_page: DeveloperPage,
}

/// `developer_page`: who tollgate thinks a client is, its limits and denials, and the interception CA, at a
/// reserved host name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeveloperPage {
    /// Whether the page is served (default true); `false` forwards the host like any other.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The reserved host name (default `tollgate.internal`): requests to it never leave tollgate.
    #[serde(default = "developer_page_host")]
    pub host: String,
}

impl Default for DeveloperPage {
    fn default() -> Self {
        Self { enabled: true, host: developer_page_host() }
    }
}

fn developer_page_host() -> String {
    "tollgate.internal".to_owned()
}

/// `alerts`: named sinks and the rules that send to them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alerts {
    /// Sinks by name: a webhook (`webhook: URL`, `format: json | slack`) or email (`email: [ADDRESS…]`, `smtp`, `from`).
    #[serde(default)]
    pub sinks: BTreeMap<String, AlertSink>,
    /// The rules, each sending to one or more sinks.
    #[serde(default)]
    pub rules: Vec<AlertRule>,
}

/// One alert sink: exactly one of `webhook` or `email`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSink {
    /// `https://…` (or `http://…`): each alert is POSTed as JSON.
    pub webhook: Option<String>,
    /// For a webhook: `json` (the alert object, the default) or `slack` (`{"text": "…"}`).
    pub format: Option<AlertFormat>,
    /// Recipients of an email sink.
    pub email: Option<Vec<String>>,
    /// `smtp://host[:587]` (STARTTLS, required) or `smtps://host[:465]` (TLS from the first byte).
    pub smtp: Option<String>,
    /// The sender address of an email sink.
    pub from: Option<String>,
    /// SMTP user name (with `password_file`).
    pub username: Option<String>,
    /// A file holding the SMTP password (its first line).
    pub password_file: Option<String>,
}

/// How a webhook alert is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertFormat {
    /// The alert object as JSON.
    #[default]
    Json,
    /// `{"text": "…"}`, as Slack (and Mattermost, Rocket.Chat, Teams workflows) incoming webhooks take it.
    Slack,
}

/// One alert rule; which fields apply depends on `kind`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// The rule's name: the `rule` of the alert, its audit record and its metric.
    pub name: String,
    /// `budget`, `spend_anomaly`, `after_hours`, `action`, `dlp` or `auth_failures`.
    pub kind: String,
    /// Whose alert it is: `user`, `team` or `org` (`auth_failures`: always the client address).
    pub scope: Option<String>,
    /// The sinks the alert goes to, by name.
    #[serde(default)]
    pub to: Vec<String>,
    /// After an alert, the same rule and scope key stay quiet this long (default 1h; every replica together).
    pub cooldown: Option<Duration>,
    /// `budget`: fractions of a budget, each alerted once per budget period (default 0.5, 0.8, 0.95).
    pub thresholds: Option<Vec<f64>>,
    /// `spend_anomaly`: today's spend above this times the trailing 7-day daily average (default 2.0).
    pub factor: Option<f64>,
    /// `spend_anomaly`: no alert below this spend today, in USD (default 10).
    pub min_usd: Option<f64>,
    /// `after_hours`: an alert-only window (model use outside it is alerted, not refused).
    pub hours: Option<Hours>,
    /// `after_hours`: only members of these teams (default: everyone).
    pub teams: Option<Vec<String>>,
    /// `action`: only actions matching one of these patterns (`file:*:**/secrets/**`; default: every alerted or
    /// denied action).
    #[serde(rename = "match")]
    pub matches: Option<Vec<String>>,
    /// `auth_failures`: this many failed sign-ins from one client address…
    pub count: Option<u32>,
    /// `auth_failures`: …within this window (default 1m).
    pub window: Option<Duration>,
}

/// `managed_settings`: what `GET /api/claude_code/settings` and `/api/claude_code/policy_limits` answer.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagedSettings {
    /// Claude Code settings (`settings.json` keys) for everyone; the keys that matter are checked, the rest passed
    /// through.
    #[serde(default)]
    pub settings: SettingsObject,
    /// Settings for the members of a team, merged over `settings` (deep merge; see docs for the rules).
    #[serde(default)]
    pub teams: BTreeMap<String, SettingsObject>,
    /// Parts generated from the rest of the config.
    #[serde(default)]
    pub generate: GenerateSettings,
    /// The answer to `/api/claude_code/policy_limits`; omitted = that call goes to Anthropic unchanged.
    pub policy_limits: Option<PolicyLimits>,
}

/// A JSON object written in YAML: numbers must be finite and integers within ±(2^53 − 1) (JavaScript reads
/// them), and no key may be `__proto__`.
#[derive(Debug, Default, Clone)]
pub struct SettingsObject(pub serde_json::Map<String, serde_json::Value>);

impl<'de> Deserialize<'de> for SettingsObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match deserializer.deserialize_map(JsonVisitor)? {
            serde_json::Value::Object(map) => Ok(SettingsObject(map)),
            _ => Err(serde::de::Error::custom("expected a map")),
        }
    }
}

/// Builds a `serde_json::Value` from any self-describing input, refusing what JavaScript would not read back
/// unchanged.
struct JsonVisitor;

/// `Number.MAX_SAFE_INTEGER`: larger integers lose precision in JavaScript.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

impl<'de> serde::de::Visitor<'de> for JsonVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<Self::Value, E> {
        Ok(value.into())
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Self::Value, E> {
        if value > MAX_SAFE_INTEGER {
            return Err(E::custom(format!(
                "{value} is beyond 2^53 - 1, which JavaScript cannot hold exactly: quote it to send a string"
            )));
        }
        Ok(value.into())
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Self::Value, E> {
        if value.unsigned_abs() > MAX_SAFE_INTEGER {
            return Err(E::custom(format!(
                "{value} is beyond -(2^53 - 1), which JavaScript cannot hold exactly: quote it to send a string"
            )));
        }
        Ok(value.into())
    }

    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Self::Value, E> {
        if !value.is_finite() {
            return Err(E::custom(format!("{value} is not a finite number: quote it to send a string")));
        }
        // -0 is written `0` by JSON.stringify: keep the value the client will hold.
        let value = if value == 0.0 { 0.0 } else { value };
        Ok(serde_json::Number::from_f64(value).map_or(serde_json::Value::Null, serde_json::Value::Number))
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(value.into())
    }

    fn visit_string<E: serde::de::Error>(self, value: String) -> Result<Self::Value, E> {
        Ok(value.into())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(JsonSeed)? {
            items.push(item);
        }
        Ok(serde_json::Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let value = map.next_value_seed(JsonSeed)?;
            if object.insert(key.clone(), value).is_some() {
                return Err(serde::de::Error::custom(format!("key {key:?} is written twice")));
            }
        }
        Ok(serde_json::Value::Object(object))
    }
}

struct JsonSeed;

impl<'de> serde::de::DeserializeSeed<'de> for JsonSeed {
    type Value = serde_json::Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

/// A key of a settings object: a string, never `__proto__` (the client's sorted copy would drop it).
struct KeySeed;

impl<'de> serde::de::DeserializeSeed<'de> for KeySeed {
    type Value = String;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        let key = String::deserialize(deserializer)?;
        if key == "__proto__" {
            return Err(serde::de::Error::custom("the key __proto__ cannot be sent: JavaScript drops it"));
        }
        Ok(key)
    }
}

/// Generated parts of the managed settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateSettings {
    /// `availableModels` from the user's teams' `models` (the plain names; globs are left out).
    #[serde(default)]
    pub available_models: bool,
    /// `permissions.deny` rules translated from the enforced `actions` deny patterns (and teams'
    /// `blocked_file_patterns`) that have a faithful Claude Code permission rule.
    #[serde(default)]
    pub deny_from_actions: bool,
}

/// `managed_settings.policy_limits`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyLimits {
    /// Feature restrictions by key (`allow_product_feedback: {allowed: false}`); a key not listed is allowed.
    #[serde(default)]
    pub restrictions: BTreeMap<String, Restriction>,
    /// Compliance taints the client is told of (`zdr`).
    pub compliance_taints: Option<Vec<String>>,
    /// A notice that usage is monitored, shown by the client.
    pub monitoring_notice: Option<MonitoringNotice>,
    /// The lowest Claude Code version accepted from a date on.
    pub upcoming_minimum_version: Option<MinimumVersion>,
    /// Per-team overlays: a restriction is allowed only when every source allows it.
    #[serde(default)]
    pub teams: BTreeMap<String, PolicyLimitsOverlay>,
}

/// A team's policy limits, merged over `policy_limits`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyLimitsOverlay {
    /// Feature restrictions by key.
    #[serde(default)]
    pub restrictions: BTreeMap<String, Restriction>,
    /// Compliance taints, added to the organisation's.
    pub compliance_taints: Option<Vec<String>>,
    /// Replaces the organisation's notice.
    pub monitoring_notice: Option<MonitoringNotice>,
    /// The highest minimum version wins.
    pub upcoming_minimum_version: Option<MinimumVersion>,
}

/// One restriction.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restriction {
    /// Whether the feature may be used.
    pub allowed: bool,
}

/// `monitoring_notice`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitoringNotice {
    /// The notice's text.
    pub text: String,
    /// An `https://` link to the policy.
    pub url: String,
}

/// `upcoming_minimum_version`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinimumVersion {
    /// `x.y.z`.
    pub claude_code: String,
    /// `YYYY-MM-DD`.
    pub date: String,
}

/// Agent-action rules (docs/policy.md, "Agent actions").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actions {
    /// `enforce` (the default): a deny is carried out; `observe`: it is recorded as `would_deny` and the action
    /// allowed.
    #[serde(default)]
    pub mode: ActionMode,
    /// What an action that no list decides gets: `allow` (the default) or `deny` (the allow lists are exhaustive).
    #[serde(default = "verdict_allow")]
    pub default: Verdict,
    /// `ACTION[:TARGET]` patterns denied (`file:read:/etc/passwd`, `bash:run:curl *`), before any allow.
    #[serde(default)]
    pub deny: Vec<String>,
    /// `ACTION[:TARGET]` patterns allowed, after the deny lists.
    #[serde(default)]
    pub allow: Vec<String>,
    /// `ACTION[:TARGET]` patterns that mark an allowed action as alerting.
    #[serde(default)]
    pub alert: Vec<String>,
    /// Further tool names and their actions (`shell: bash:run`), for agents other than Claude Code; a name here
    /// replaces a built-in one.
    #[serde(default)]
    pub tools: BTreeMap<String, String>,
    /// The largest `tool_use` block held back while it is decided.
    #[serde(default = "four_mib")]
    pub max_block_bytes: ByteSize,
}

impl Default for Actions {
    fn default() -> Self {
        Self {
            mode: ActionMode::default(),
            default: Verdict::Allow,
            deny: Vec::new(),
            allow: Vec::new(),
            alert: Vec::new(),
            tools: BTreeMap::new(),
            max_block_bytes: four_mib(),
        }
    }
}

/// A team's own agent-action rules, checked before the global ones.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamActions {
    /// `enforce` or `observe`; omitted = `actions.mode`.
    pub mode: Option<ActionMode>,
    /// Patterns denied to the team's members.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Patterns allowed to the team's members (after every deny list).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Patterns that mark an allowed action of a member as alerting.
    #[serde(default)]
    pub alert: Vec<String>,
}

/// Whether action denials are carried out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionMode {
    #[default]
    Enforce,
    Observe,
}

fn verdict_allow() -> Verdict {
    Verdict::Allow
}

fn four_mib() -> ByteSize {
    ByteSize(4 << 20)
}

/// One model API endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedUpstream {
    /// `https://host[:port][/base]` (or `http://` for a local endpoint).
    pub url: String,
    /// Sent as `x-api-key`, replacing the client's credential. Omitted: an intercepted request keeps the
    /// client's own key; a gateway-listener request goes without one (its credential was for tollgate).
    pub api_key: Option<String>,
}

/// One routing rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Every given condition must hold; none given = always.
    #[serde(default)]
    pub when: RouteWhen,
    /// The name of an entry under `upstreams`.
    pub to: String,
}

/// Conditions of a routing rule.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteWhen {
    /// The listener's name.
    pub listener: Option<String>,
    /// The region of one of the principal's teams.
    pub region: Option<String>,
    /// One of the principal's teams.
    pub team: Option<String>,
    /// The intercepted host (exact name).
    pub host: Option<String>,
}

/// TLS interception.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intercept {
    /// The CA that signs minted leaves; created on first start when both files are missing.
    #[serde(default = "intercept_ca")]
    pub ca: CertPair,
    /// Host globs whose tunnels are intercepted. `[]`: none, for a gateway-only deployment that sets the request
    /// rules below (no CA is opened then).
    pub hosts: Vec<String>,
    /// Paths whose `POST`s are metered and checked against the team's models and budgets.
    #[serde(default = "default_meter_paths")]
    pub meter_paths: Vec<String>,
    /// Path globs allowed and denied inside intercepted tunnels.
    #[serde(default)]
    pub paths: InterceptPaths,
    /// Largest request body (413 beyond).
    #[serde(default = "thirty_two_mib")]
    pub max_body: ByteSize,
    /// How long a minted leaf is valid.
    #[serde(default = "one_day")]
    pub leaf_validity: Duration,
    /// How many minted leaves are kept.
    #[serde(default = "leaf_cache")]
    pub leaf_cache: usize,
    /// Claude Code's telemetry calls inside intercepted tunnels (event logging, metrics, feature-flag
    /// evaluation): `pass` (forwarded like any other call, the default) or `drop` (answered by tollgate, never
    /// forwarded).
    #[serde(default)]
    pub telemetry: Telemetry,
}

/// What happens to telemetry calls inside intercepted tunnels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Telemetry {
    /// Forwarded like any other call.
    #[default]
    Pass,
    /// Answered by tollgate with what the client accepts, never forwarded.
    Drop,
}

/// Path rules inside intercepted tunnels.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterceptPaths {
    /// Globs (`*` matches any characters, `/` included); omitted = the Messages API and Claude Code's own.
    #[serde(default = "default_paths")]
    pub allow: Vec<String>,
    /// Globs denied even when allowed.
    #[serde(default)]
    pub deny: Vec<String>,
}

impl Default for InterceptPaths {
    fn default() -> Self {
        Self { allow: default_paths(), deny: Vec::new() }
    }
}

fn intercept_ca() -> CertPair {
    CertPair { cert: "certs/tollgate-ca.pem".to_owned(), key: "certs/tollgate-ca.key".to_owned() }
}

/// `intercept.meter_paths` when not set (also without an `intercept` section).
pub fn default_meter_paths() -> Vec<String> {
    ["/v1/messages", "/v1/messages/count_tokens", "/v1/messages/batches"].map(str::to_owned).to_vec()
}

fn default_paths() -> Vec<String> {
    vec!["/v1/*".to_owned(), "/api/*".to_owned()]
}

fn thirty_two_mib() -> ByteSize {
    ByteSize(32 << 20)
}

fn one_day() -> Duration {
    Duration::from_secs(86_400)
}

fn leaf_cache() -> usize {
    1_000
}

/// Data-loss prevention.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dlp {
    /// `block` (403 naming the detector) or `log` (audit only).
    #[serde(default)]
    pub action: DlpAction,
    /// Built-in detectors: `private_key`, `aws_access_key`, `github_token`, `credit_card`, `ssn`.
    #[serde(default)]
    pub detectors: Vec<String>,
    /// Named regular expressions.
    #[serde(default)]
    pub custom: Vec<CustomDetector>,
}

/// What a DLP match does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DlpAction {
    #[default]
    Block,
    Log,
}

/// A named regular expression.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomDetector {
    pub name: String,
    pub regex: String,
}

/// One pricing row, USD per million tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Model glob (`claude-sonnet-4*`, `*`).
    pub model: String,
    pub input: f64,
    pub output: f64,
    /// Cache writes (five-minute lifetime); omitted = 1.25 × input.
    pub cache_write: Option<f64>,
    /// One-hour cache writes; omitted = 2 × input.
    pub cache_write_1h: Option<f64>,
    /// Server-side web searches, USD per 1,000; omitted = 10.
    pub web_search: Option<f64>,
    /// Cache reads; omitted = 0.1 × input.
    pub cache_read: Option<f64>,
}

/// Organisation-wide budgets in USD.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budgets {
    pub org_daily_usd: Option<f64>,
    pub org_monthly_usd: Option<f64>,
}

/// One team.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Team {
    /// Destinations this team may reach besides `policy.allow`.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Destinations this team may not reach.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Model globs the team may use (enforced on intercepted and gateway requests).
    #[serde(default)]
    pub models: Vec<String>,
    /// The team's rate and concurrency limits.
    pub limits: Option<TeamLimits>,
    /// Spend budgets (enforced on metered requests).
    pub budget: Option<Budget>,
    /// Region for routing (`routing[].when.region`).
    pub region: Option<String>,
    /// When the team may use the gateway.
    pub hours: Option<Hours>,
    /// Members' agents may not write files, nor run commands that no `allow` pattern names.
    #[serde(default)]
    pub readonly: bool,
    /// File globs (`**/*.pem`) members' agents may neither read nor write.
    #[serde(default)]
    pub blocked_file_patterns: Vec<String>,
    /// The team's own agent-action rules, checked before the global ones.
    pub actions: Option<TeamActions>,
}

/// A team's limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamLimits {
    /// Requests per minute for the whole team.
    pub rpm: Option<u32>,
    /// Requests per minute for each member.
    pub user_rpm: Option<u32>,
    /// Open tunnels and in-flight requests per member.
    pub user_concurrent: Option<u32>,
    /// Open tunnels and in-flight requests for the whole team.
    pub concurrent: Option<u32>,
}

/// Spend budgets in USD.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub daily_usd: Option<f64>,
    pub monthly_usd: Option<f64>,
    pub user_daily_usd: Option<f64>,
}

/// A daily time window.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hours {
    /// `HH:MM`, inclusive.
    pub from: String,
    /// `HH:MM`, exclusive; before `from` means the window runs past midnight.
    pub to: String,
    /// IANA time zone name, e.g. `Europe/Berlin`.
    pub tz: String,
    /// Days the window applies (`mon` … `sun`); omitted = every day.
    pub days: Option<Vec<String>>,
}

/// Limits per user and for the organisation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// For the whole organisation (all replicas together with the Redis backend).
    pub org: Option<ScopeLimits>,
    /// For each principal.
    pub user: Option<ScopeLimits>,
}

/// A rate and a concurrency cap.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeLimits {
    /// Requests per minute (also the burst).
    pub rpm: Option<u32>,
    /// Open tunnels and in-flight requests.
    pub concurrent: Option<u32>,
}

/// The state backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// `embedded` (one process) or `redis` (replicas share limits).
    #[serde(default)]
    pub backend: StateBackend,
    /// Directory of the embedded store.
    #[serde(default = "state_path")]
    pub path: String,
    /// `redis://host:port[/db]` for `backend: redis`.
    pub redis_url: Option<String>,
    /// When the shared state cannot be reached: `deny` (503, the default) or `allow`.
    #[serde(default = "verdict_deny")]
    pub on_error: Verdict,
    /// Users the fleet inventory keeps (the least recently seen go first); read at start.
    #[serde(default = "fleet_max_users")]
    pub fleet_max_users: usize,
}

impl Default for State {
    fn default() -> Self {
        Self {
            backend: StateBackend::default(),
            path: state_path(),
            redis_url: None,
            on_error: Verdict::Deny,
            fleet_max_users: fleet_max_users(),
        }
    }
}

/// `state.fleet_max_users` when not set.
fn fleet_max_users() -> usize {
    50_000
}

fn state_path() -> String {
    "var/state".to_owned()
}

/// Which state backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    #[default]
    Embedded,
    Redis,
}

/// One listening socket.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Named in metrics, logs and audit records.
    pub name: String,
    /// `ADDRESS:PORT` to bind.
    pub bind: String,
    /// Serve the proxy behind TLS (an `https://` proxy URL), optionally with client certificates.
    pub tls: Option<ListenerTls>,
    /// `proxy` (CONNECT and absolute-form, the default) or `gateway` (origin-form model API requests).
    #[serde(default)]
    pub mode: ListenerMode,
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    #[default]
    Proxy,
    Gateway,
}

/// TLS on a listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// PEM certificate chain, leaf first. Re-read on reload.
    pub cert: String,
    /// PEM private key.
    pub key: String,
    /// PEM CA certificates that sign client certificates.
    pub client_ca: Option<String>,
    /// `none` (the default), `optional` or `required`.
    #[serde(default = "client_auth_none")]
    pub client_auth: ClientAuth,
    /// PEM certificate revocation list(s) for client certificates.
    pub crl: Option<String>,
}

fn client_auth_none() -> ClientAuth {
    ClientAuth::None
}

/// The admin listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// `ADDRESS:PORT` to bind.
    pub bind: String,
    /// Bearer token for `/admin/*` endpoints (metrics and health need none).
    pub token: Option<String>,
    /// SCIM 2.0 provisioning at `/scim/v2` (its own bearer token).
    pub scim: Option<Scim>,
    /// The web console at `/ui`: its sign-in besides the admin token.
    pub console: Option<Console>,
}

/// `admin.console`: how people sign in to the web console.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Console {
    /// Sign-in with the `auth.oidc` identity provider (authorization code grant with PKCE).
    pub oidc: Option<ConsoleOidc>,
}

/// `admin.console.oidc`: the console's client at the `auth.oidc` identity provider, and who may sign in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleOidc {
    /// The console's client ID at the identity provider: the `aud` its ID tokens carry.
    pub client_id: String,
    /// The client secret, for a provider that registers the console as a confidential client (sent in the token
    /// request's form); none for a public client, which PKCE protects.
    pub client_secret: Option<String>,
    /// Where the provider sends the browser back: `https://ADMIN-HOST/ui/login/callback`, registered at the provider.
    pub redirect_uri: String,
    /// Groups (as the `auth.oidc` groups claim lists them) whose members may sign in; at least one.
    pub groups: Vec<String>,
}

/// SCIM 2.0 provisioning of users and groups from the identity provider (`admin.scim`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scim {
    /// The bearer token the identity provider sends (its "secret token"); at least 32 characters.
    pub token: String,
    /// SCIM group display names mapped to team names; a group not named here joins the team of the same name,
    /// if there is one.
    #[serde(default)]
    pub groups: BTreeMap<String, String>,
    /// Refuse tokens and client certificates of users that are not provisioned and active.
    #[serde(default)]
    pub require_provisioned: bool,
}

/// Proxy authentication.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// `deny`, or the principal name given to requests without credentials.
    #[serde(default = "deny")]
    pub anonymous: String,
    /// Basic proxy-auth users.
    #[serde(default)]
    pub users: Vec<User>,
    /// A YAML file holding a list of users of the same shape.
    pub users_file: Option<String>,
    /// Failed authentication attempts allowed per client IP.
    pub failed_auth_limit: Option<FailedAuthLimit>,
    /// How a verified client certificate names the principal.
    #[serde(default)]
    pub mtls: Mtls,
    /// Bearer JWTs from the company's identity provider.
    pub jwt: Option<Jwt>,
    /// JWT group → team.
    #[serde(default)]
    pub group_teams: BTreeMap<String, String>,
    /// Tokens from the organisation's OpenID Connect identity provider, its keys found by discovery.
    pub oidc: Option<Oidc>,
    /// Short-lived client certificates for `auth.oidc` users: `POST /enroll` on a TLS listener.
    pub enroll: Option<Enroll>,
}

/// Certificate enrollment: a user with a valid `auth.oidc` token sends a CSR to `POST /enroll` on `listener` and
/// gets a client certificate from `client_ca`, valid for `validity`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enroll {
    /// The TLS proxy listener that serves `POST /enroll`; its `client_ca` must hold this `client_ca`'s certificate.
    pub listener: String,
    /// The CA that signs the certificates (PEM certificate and PKCS#8 key), e.g. from `tollgate ca init --client`.
    pub client_ca: CertPair,
    /// How long an issued certificate is valid: from 5m to 7d (default 12h).
    #[serde(default = "twelve_hours")]
    pub validity: Duration,
}

fn twelve_hours() -> Duration {
    Duration::from_secs(12 * 3_600)
}

/// OpenID Connect verification: discovery at `{issuer}/.well-known/openid-configuration`, keys from its
/// `jwks_uri` (fetched with the `upstream.trust` roots), refreshed on schedule and when a token names an unknown key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Oidc {
    /// The issuer URL (`https://…`), exactly as tokens carry it in `iss` and discovery names it.
    pub issuer: String,
    /// Required `aud` (one of, when the token has several): the client or application ID the tokens are for.
    pub audience: String,
    /// The claim that names the user: `email`, `preferred_username`, `upn`, `sub` (the default).
    #[serde(default = "sub_claim")]
    pub user_claim: String,
    /// The claim listing the user's groups.
    #[serde(default = "groups_claim")]
    pub groups_claim: String,
    /// Group → team: an exact group name, or a glob (`eng-*`) matching group names. A user is in every team one of
    /// their groups maps to; unknown groups are ignored.
    #[serde(default)]
    pub teams: BTreeMap<String, String>,
    /// Where the user's region comes from (for `routing` `when: {region}` and the audit record); the first source
    /// that names one wins, and a team's `region` applies when none does.
    pub region: Option<OidcRegion>,
    /// How often the signing keys are fetched again (also at once, at most every 30 s, for an unknown `kid`).
    #[serde(default = "one_hour")]
    pub refresh: Duration,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "sixty_seconds")]
    pub leeway: Duration,
    /// The client ID of the public client `tollgate login` signs in with (device authorization grant); read by
    /// `tollgate login --config`, not by the gateway.
    pub device_client_id: Option<String>,
}

/// The sources of a token's region, tried in this order.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcRegion {
    /// A claim whose string value is the region.
    pub claim: Option<String>,
    /// The domain of the user's e-mail (the `email` claim, else the user claim) → region.
    #[serde(default)]
    pub email_domains: BTreeMap<String, String>,
    /// A group (exact name or glob, e.g. `region-eu`) → region.
    #[serde(default)]
    pub groups: BTreeMap<String, String>,
}

fn one_hour() -> Duration {
    Duration::from_secs(3_600)
}

/// JWT verification.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jwt {
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud` (one of, when the token has several).
    pub audience: String,
    /// A JWKS file with the IdP's public keys (RS256, ES256); re-read on reload.
    pub jwks_file: Option<String>,
    /// A shared secret for HS256 instead of a JWKS.
    pub hs256_secret: Option<String>,
    /// The claim that names the user.
    #[serde(default = "sub_claim")]
    pub user_claim: String,
    /// The claim listing the user's groups.
    #[serde(default = "groups_claim")]
    pub groups_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "sixty_seconds")]
    pub leeway: Duration,
}

fn sub_claim() -> String {
    "sub".to_owned()
}

fn groups_claim() -> String {
    "groups".to_owned()
}

/// Client-certificate identity.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mtls {
    /// `san_email` (the default), `san_uri` or `cn`.
    #[serde(default)]
    pub identity: CertIdentity,
    /// `ou`: the certificate's first organizational unit is the principal's team.
    pub team_from: Option<TeamFrom>,
}

/// Where a certificate's team comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeamFrom {
    Ou,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            anonymous: deny(),
            users: Vec::new(),
            users_file: None,
            failed_auth_limit: None,
            mtls: Mtls::default(),
            jwt: None,
            group_teams: BTreeMap::new(),
            oidc: None,
            enroll: None,
        }
    }
}

fn deny() -> String {
    "deny".to_owned()
}

/// One Basic-auth user.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// The principal name (often an e-mail address).
    pub name: String,
    /// An argon2id PHC string from `tollgate passwd`.
    pub password_hash: String,
    /// Teams the user belongs to.
    #[serde(default)]
    pub teams: Vec<String>,
}

/// Failed-auth throttling per client IP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailedAuthLimit {
    /// Failures allowed per minute before further attempts get 429.
    pub per_minute: u32,
}

/// `allow` or `deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

/// Destination policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// What happens when no rule matches.
    pub default: Verdict,
    /// The private-address guard on resolved addresses: `deny` (the default) or `allow`.
    #[serde(default = "verdict_deny")]
    pub private_destinations: Verdict,
    /// CIDRs exempt from the private-address guard.
    #[serde(default)]
    pub allow_private: Vec<String>,
    /// Destination ports allowed unless a rule names its own port; omitted = any port.
    pub ports: Option<Vec<u16>>,
    /// `HOST[:PORT]` globs or CIDRs that are always denied.
    #[serde(default)]
    pub deny: Vec<String>,
    /// `HOST[:PORT]` globs or CIDRs that are allowed.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Pass-through tunnels must open with a TLS ClientHello whose SNI is the CONNECT host.
    #[serde(default)]
    pub require_sni_match: bool,
}

fn verdict_deny() -> Verdict {
    Verdict::Deny
}

/// Connections to destinations.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Bound on one TCP connect.
    #[serde(default = "ten_seconds")]
    pub connect_timeout: Duration,
    /// Bound on one DNS resolution.
    #[serde(default = "five_seconds")]
    pub dns_timeout: Duration,
    /// A tunnel or pooled connection with no traffic for this long is closed.
    #[serde(default = "five_minutes")]
    pub idle_timeout: Duration,
    /// Which CAs upstream TLS certificates must chain to.
    #[serde(default)]
    pub trust: Trust,
    /// A client certificate presented to upstreams that ask for one.
    pub client_cert: Option<CertPair>,
    /// `http://[user:pass@]host:port` or `https://…`: send everything through this proxy.
    pub parent_proxy: Option<String>,
    /// Destinations reached directly even with a parent proxy (host globs, CIDRs).
    #[serde(default)]
    pub parent_proxy_bypass: Vec<String>,
}

impl Default for Upstream {
    fn default() -> Self {
        Self {
            connect_timeout: ten_seconds(),
            dns_timeout: five_seconds(),
            idle_timeout: five_minutes(),
            trust: Trust::default(),
            client_cert: None,
            parent_proxy: None,
            parent_proxy_bypass: Vec::new(),
        }
    }
}

/// Upstream TLS trust.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trust {
    /// Trust the operating system's roots.
    #[serde(default = "yes")]
    pub system_roots: bool,
    /// PEM files of further CAs (a corporate root, a private endpoint's CA).
    #[serde(default)]
    pub extra_ca: Vec<String>,
}

impl Default for Trust {
    fn default() -> Self {
        Self { system_roots: true, extra_ca: Vec::new() }
    }
}

/// A certificate and its key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    /// PEM certificate chain.
    pub cert: String,
    /// PEM private key.
    pub key: String,
}

fn five_seconds() -> Duration {
    Duration::from_secs(5)
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

fn five_minutes() -> Duration {
    Duration::from_secs(300)
}

/// The audit trail.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    /// JSON-lines file sink.
    pub file: Option<AuditFile>,
    /// `block`: no response completes before its record is written, and requests are refused while records
    /// cannot be written; `continue`: serve anyway, dropping (and counting) the records that do not fit the queue.
    #[serde(default)]
    pub on_failure: AuditFailure,
    /// Records that may wait to be written at most (queued, or being written); a full queue makes the sink
    /// unhealthy.
    #[serde(default = "audit_queue")]
    pub queue: usize,
    /// Signed checkpoints of the chain, written at an interval, at rotation and at shutdown.
    pub checkpoints: Option<AuditCheckpoints>,
    /// SIEM sinks: each gets every record the file gets, through its own on-disk spool.
    #[serde(default)]
    pub siem: Vec<SiemSink>,
    /// Fields replaced by a keyed hash in the SIEM copies (the file keeps the real values).
    pub pseudonymize: Option<Pseudonymize>,
}

/// One SIEM sink: where records are delivered, and the spool they wait in.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiemSink {
    /// `splunk_hec`, `https` (NDJSON) or `syslog` (RFC 5424).
    #[serde(rename = "type")]
    pub kind: SiemKind,
    /// The sink's name in metrics and logs; its type by default (`-2`, `-3`… when repeated).
    pub name: Option<String>,
    /// `https://host:8088` (Splunk HEC), `https://host/path` (NDJSON), `tls://host:6514` or `tcp://host:514`
    /// (syslog).
    pub url: String,
    /// The HEC token (`Authorization: Splunk TOKEN`), or a bearer token for `https`.
    pub token: Option<String>,
    /// The Splunk index the events go to; the token's default index when omitted.
    pub index: Option<String>,
    /// The on-disk spool records wait in until the SIEM has them.
    pub spool: SiemSpool,
    /// How many records one delivery carries at most, and how long a partial batch waits for more.
    #[serde(default)]
    pub batch: SiemBatch,
    /// Compress HTTP bodies (`Content-Encoding: gzip`).
    #[serde(default = "yes")]
    pub gzip: bool,
    /// The longest wait between two delivery attempts (the backoff doubles from 100ms up to it, with jitter).
    #[serde(default = "thirty_seconds")]
    pub retry_max: Duration,
    /// One delivery (connect, send, answer) must finish within this time.
    #[serde(default = "ten_seconds")]
    pub timeout: Duration,
}

/// The kinds of SIEM sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiemKind {
    SplunkHec,
    Https,
    Syslog,
}

impl SiemKind {
    /// The name in config and, by default, in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SiemKind::SplunkHec => "splunk_hec",
            SiemKind::Https => "https",
            SiemKind::Syslog => "syslog",
        }
    }
}

/// A SIEM sink's spool.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiemSpool {
    /// The sink's own directory (created when missing); two sinks cannot share one.
    pub dir: String,
    /// Undelivered bytes the spool holds at most.
    #[serde(default = "ten_gib")]
    pub max: ByteSize,
    /// `block`: the audit writer waits for room (the audit sink is unhealthy meanwhile); `drop_oldest`: the oldest
    /// undelivered records make room, counted and logged.
    #[serde(default)]
    pub on_full: SpoolFull,
}

/// What a full spool does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpoolFull {
    #[default]
    Block,
    DropOldest,
}

/// A SIEM delivery's batch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiemBatch {
    /// Records per delivery at most.
    #[serde(default = "five_hundred")]
    pub records: usize,
    /// Bytes of records per delivery at most (before compression; one longer record goes alone).
    #[serde(default = "one_mib")]
    pub bytes: ByteSize,
    /// How long a partial batch waits for more records.
    #[serde(default = "one_second")]
    pub wait: Duration,
}

impl Default for SiemBatch {
    fn default() -> Self {
        Self { records: five_hundred(), bytes: one_mib(), wait: one_second() }
    }
}

/// Pseudonymised fields of the SIEM copies.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pseudonymize {
    /// Which fields: `user`, `client`, `team`, `session`.
    pub fields: Vec<PseudonymField>,
    /// A file holding the HMAC key (at least 16 bytes; the same key gives the same pseudonyms everywhere).
    pub key: String,
}

/// A record field that can be pseudonymised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PseudonymField {
    User,
    Client,
    Team,
    Session,
}

impl PseudonymField {
    /// The record field's name.
    pub fn as_str(self) -> &'static str {
        match self {
            PseudonymField::User => "user",
            PseudonymField::Client => "client",
            PseudonymField::Team => "team",
            PseudonymField::Session => "session",
        }
    }
}

fn ten_gib() -> ByteSize {
    ByteSize(10 << 30)
}

fn one_mib() -> ByteSize {
    ByteSize(1 << 20)
}

fn five_hundred() -> usize {
    500
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

/// The JSON-lines audit file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFile {
    /// Appended to; created with its directory when missing.
    pub path: String,
    /// Hash-chain the records (`prev`, `hash`).
    #[serde(default = "yes")]
    pub chain: bool,
    /// When written records are synced to the disk (fdatasync): a duration, at most that long after a write (1s by
    /// default), or `batch`, after each batch is written and before the responses waiting for it complete.
    #[serde(default)]
    pub sync: AuditSync,
    /// A key file (from `tollgate audit keygen`): the chain is HMAC-SHA256 with it instead of SHA-256.
    pub key: Option<String>,
    /// When the file is closed and a new one begun: by size, at each UTC midnight, or both.
    pub rotate: Option<AuditRotate>,
    /// Rotated files older than this are deleted (`90d`, `7y`); never the active file.
    pub retention: Option<Retention>,
}

/// When the audit file is rotated.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRotate {
    /// Once the file holds this much (checked after each batch).
    pub size: Option<ByteSize>,
    /// At the first write after each UTC midnight (and at midnight when records were written that day).
    #[serde(default)]
    pub daily: bool,
}

/// How long rotated audit files are kept: a duration, or years (`7y`, 365 days each) or weeks (`2w`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Retention(pub std::time::Duration);

impl TryFrom<String> for Retention {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let invalid = || format!("invalid retention \"{text}\": write a duration greater than zero (90d, 2w, 7y)");
        let scaled = |suffix: char, days: u64| {
            let number: u64 = text.strip_suffix(suffix)?.parse().ok()?;
            number.checked_mul(days * 86_400).map(std::time::Duration::from_secs)
        };
        let retention = match scaled('y', 365).or_else(|| scaled('w', 7)) {
            Some(retention) => retention,
            None => text.parse::<Duration>().map_err(|_| invalid())?.0,
        };
        if retention.is_zero() {
            return Err(invalid());
        }
        Ok(Retention(retention))
    }
}

/// Signed checkpoints of the audit chain.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditCheckpoints {
    /// How often a checkpoint is written while records are (also at rotation and at shutdown).
    #[serde(default = "one_minute")]
    pub every: Duration,
    /// The Ed25519 signing key (PKCS#8, from `tollgate audit keygen`).
    pub signing_key: String,
}

fn one_minute() -> Duration {
    Duration::from_secs(60)
}

fn yes() -> bool {
    true
}

fn audit_queue() -> usize {
    4096
}

impl Default for Audit {
    fn default() -> Self {
        Self {
            file: None,
            on_failure: AuditFailure::default(),
            queue: audit_queue(),
            siem: Vec::new(),
            pseudonymize: None,
            checkpoints: None,
        }
    }
}

/// What to do when an audit record cannot be written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditFailure {
    #[default]
    Block,
    Continue,
}

/// When the audit file is synced to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum AuditSync {
    /// After each batch of records is written.
    Batch,
    /// At most this long after a write.
    Every(std::time::Duration),
}

impl Default for AuditSync {
    /// Every second: a crash of tollgate loses no acknowledged record either way (they are written before their
    /// responses complete), and a power cut the last second at most; `batch` makes each response wait for an fsync.
    fn default() -> Self {
        AuditSync::Every(std::time::Duration::from_secs(1))
    }
}

impl TryFrom<String> for AuditSync {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if text == "batch" {
            return Ok(AuditSync::Batch);
        }
        match text.parse::<Duration>() {
            Ok(Duration(every)) if !every.is_zero() => Ok(AuditSync::Every(every)),
            _ => Err(format!("invalid sync \"{text}\": write batch, or a duration greater than zero (100ms, 1s)")),
        }
    }
}

/// Limits on what clients may send and how long they may take.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// The whole request head must arrive within this time (slowloris).
    #[serde(default = "ten_seconds")]
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no new request for this long is closed.
    #[serde(default = "sixty_seconds")]
    pub keepalive_timeout: Duration,
    /// Largest request head (431 beyond).
    #[serde(default = "sixty_four_kib")]
    pub max_header_bytes: ByteSize,
    /// Longest request target (414 beyond).
    #[serde(default = "eight_kib")]
    pub max_uri_bytes: ByteSize,
    /// A TLS listener's handshake must finish within this time.
    #[serde(default = "ten_seconds")]
    pub tls_handshake_timeout: Duration,
    /// Open client connections across all listeners (503 beyond).
    #[serde(default = "ten_thousand")]
    pub max_connections: usize,
    /// On SIGTERM, how long open tunnels and requests may take to finish.
    #[serde(default = "thirty_seconds")]
    pub shutdown_grace: Duration,
    /// A request body tollgate reads whole (model-API requests, for their checks) must arrive within this time
    /// (408 beyond).
    #[serde(default = "sixty_seconds")]
    pub body_read_timeout: Duration,
    /// The request-body bytes all requests together may hold in memory while they are checked (503 beyond).
    #[serde(default = "two_hundred_fifty_six_mib")]
    pub max_buffered_body_bytes: ByteSize,
    /// Open connections to the admin listener (further ones are closed at once).
    #[serde(default = "sixty_four")]
    pub max_admin_connections: usize,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            header_read_timeout: ten_seconds(),
            keepalive_timeout: sixty_seconds(),
            tls_handshake_timeout: ten_seconds(),
            max_header_bytes: sixty_four_kib(),
            max_uri_bytes: eight_kib(),
            max_connections: ten_thousand(),
            shutdown_grace: thirty_seconds(),
            body_read_timeout: sixty_seconds(),
            max_buffered_body_bytes: two_hundred_fifty_six_mib(),
            max_admin_connections: sixty_four(),
        }
    }
}

fn sixty_seconds() -> Duration {
    Duration::from_secs(60)
}

fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}

fn two_hundred_fifty_six_mib() -> ByteSize {
    ByteSize(256 << 20)
}

fn sixty_four() -> usize {
    64
}

fn sixty_four_kib() -> ByteSize {
    ByteSize(64 * 1024)
}

fn eight_kib() -> ByteSize {
    ByteSize(8 * 1024)
}

fn ten_thousand() -> usize {
    10_000
}
