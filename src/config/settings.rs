//! `managed_settings`, compiled: the organisation's Claude Code settings and policy limits, the teams' overlays,
//! and the parts generated from `teams.*.models` and the `actions` deny patterns. `Managed::settings_for` and
//! `Managed::policy_limits_for` merge them for one principal; `api::settings` serves the result.
//!
//! Merge rules (docs/managed-settings.md): the organisation's object first, then each of the user's teams in name
//! order, then the generated parts. Objects merge key by key; lists are united (duplicates dropped), except
//! `availableModels`, an allow-list, which is intersected; `permissions.defaultMode` takes the strictest mode;
//! `permissions.disableBypassPermissionsMode`, `forceRemoteSettingsRefresh` and `allowManagedPermissionRulesOnly`
//! are set when any source sets them; any other value is replaced by the later source.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::file;

/// The two answers managed settings make: Claude Code's settings, or its policy limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Settings,
    PolicyLimits,
}

impl Kind {
    /// The name in logs: `settings` or `policy_limits`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Settings => "settings",
            Kind::PolicyLimits => "policy_limits",
        }
    }
}

/// Claude Code's permission modes, from the least to the most strict.
const MODES: [&str; 5] = ["bypassPermissions", "acceptEdits", "default", "dontAsk", "plan"];

/// The compiled `managed_settings`.
#[derive(Debug, Clone, Default)]
pub struct Managed {
    settings: Map<String, Value>,
    teams: BTreeMap<Arc<str>, Map<String, Value>>,
    /// `generate.available_models`: each team's plain model names (`None`: the team names no models).
    team_models: BTreeMap<Arc<str>, Vec<String>>,
    generate_models: bool,
    /// `generate.deny_from_actions`: rules for everyone, and for the members of each team.
    generated_deny: Vec<String>,
    team_generated_deny: BTreeMap<Arc<str>, Vec<String>>,
    /// What had no faithful Claude Code form, for `explain --settings`.
    pub untranslated: Vec<Untranslated>,
    policy_limits: Option<PolicyLimits>,
}

/// An `actions` pattern or a team's model glob that generated nothing, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untranslated {
    /// The key and the pattern: `actions.deny[2] bash:run:curl http://*`.
    pub source: String,
    /// The team whose members it concerns; `None` = everyone.
    pub team: Option<Arc<str>>,
    pub why: String,
}

#[derive(Debug, Clone, Default)]
struct PolicyLimits {
    base: Map<String, Value>,
    teams: BTreeMap<Arc<str>, Map<String, Value>>,
}

/// Compiles `managed_settings` against the teams and actions it draws from; an error is a key path and a message.
pub(super) fn compile(parsed: &file::File) -> Result<Option<Managed>, (String, String)> {
    let Some(managed) = &parsed.managed_settings else { return Ok(None) };
    check_settings("managed_settings.settings", &managed.settings.0)?;
    let mut teams = BTreeMap::new();
    for (name, overlay) in &managed.teams {
        let key = format!("managed_settings.teams.{name}");
        if !parsed.teams.contains_key(name) {
            return Err((key, format!("team {name:?} is not defined under teams")));
        }
        check_settings(&key, &overlay.0)?;
        teams.insert(Arc::from(name.as_str()), overlay.0.clone());
    }
    let mut compiled = Managed {
        settings: managed.settings.0.clone(),
        teams,
        generate_models: managed.generate.available_models,
        ..Managed::default()
    };
    if managed.generate.available_models {
        for (name, team) in parsed.teams.iter().filter(|(_, team)| !team.models.is_empty()) {
            let (plain, globs): (Vec<&String>, Vec<&String>) = team.models.iter().partition(|m| !is_glob(m));
            for glob in globs {
                compiled.untranslated.push(Untranslated {
                    source: format!("teams.{name}.models {glob}"),
                    team: Some(Arc::from(name.as_str())),
                    why: "a glob: availableModels lists names, so it is left out (the gateway still enforces it)"
                        .to_owned(),
                });
            }
            compiled.team_models.insert(Arc::from(name.as_str()), plain.into_iter().cloned().collect());
        }
    }
    if managed.generate.deny_from_actions {
        generate_deny(parsed, &mut compiled);
    }
    if let Some(limits) = &managed.policy_limits {
        compiled.policy_limits = Some(compile_policy_limits(parsed, limits)?);
    }
    Ok(Some(compiled))
}

impl Managed {
    /// The settings a member of `teams` receives, or `None` when nothing applies (the call then goes upstream).
    pub fn settings_for(&self, teams: &[Arc<str>]) -> Option<Value> {
        let mut settings = self.settings.clone();
        for team in teams_in_order(teams) {
            if let Some(overlay) = self.teams.get(team) {
                merge(&mut settings, overlay, "");
            }
        }
        let mut generated = Map::new();
        if self.generate_models {
            // The gateway allows a model that any of the user's restricting teams allows: the union of their names.
            let mut names: Vec<Value> = Vec::new();
            let mut restricted = false;
            for team in teams_in_order(teams) {
                if let Some(models) = self.team_models.get(team) {
                    restricted = true;
                    names.extend(models.iter().map(|m| Value::String(m.clone())));
                }
            }
            if restricted {
                dedup(&mut names);
                generated.insert("availableModels".to_owned(), Value::Array(names));
            }
        }
        let mut deny: Vec<Value> = self.generated_deny.iter().cloned().map(Value::String).collect();
        for team in teams_in_order(teams) {
            deny.extend(self.team_generated_deny.get(team).into_iter().flatten().cloned().map(Value::String));
        }
        if !deny.is_empty() {
            let mut permissions = Map::new();
            permissions.insert("deny".to_owned(), Value::Array(deny));
            generated.insert("permissions".to_owned(), Value::Object(permissions));
        }
        merge(&mut settings, &generated, "");
        (!settings.is_empty()).then_some(Value::Object(settings))
    }

    /// The policy-limits body a member of `teams` receives, or `None` when none is configured.
    pub fn policy_limits_for(&self, teams: &[Arc<str>]) -> Option<Value> {
        let limits = self.policy_limits.as_ref()?;
        let mut body = limits.base.clone();
        for team in teams_in_order(teams) {
            if let Some(overlay) = limits.teams.get(team) {
                merge_limits(&mut body, overlay);
            }
        }
        body.entry("restrictions").or_insert_with(|| Value::Object(Map::new()));
        Some(Value::Object(body))
    }
}

/// The principal's teams in name order, without repeats: the merge does not depend on how they were listed.
fn teams_in_order(teams: &[Arc<str>]) -> Vec<&str> {
    let mut ordered: Vec<&str> = teams.iter().map(|t| &**t).collect();
    ordered.sort_unstable();
    ordered.dedup();
    ordered
}

/// Merges `overlay` into `into` by the rules in the module's documentation; `path` is the dotted key so far.
fn merge(into: &mut Map<String, Value>, overlay: &Map<String, Value>, path: &str) {
    for (key, value) in overlay {
        let key_path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
        let Some(existing) = into.get_mut(key) else {
            into.insert(key.clone(), value.clone());
            continue;
        };
        match (key_path.as_str(), existing, value) {
            ("availableModels", Value::Array(kept), Value::Array(allowed)) => kept.retain(|m| allowed.contains(m)),
            ("permissions.defaultMode", existing, Value::String(mode)) => {
                let rank = |mode: &str| MODES.iter().position(|m| *m == mode);
                if rank(mode) > existing.as_str().and_then(rank) {
                    *existing = value.clone();
                }
            }
            (
                "forceRemoteSettingsRefresh"
                | "allowManagedPermissionRulesOnly"
                | "permissions.disableBypassPermissionsMode",
                existing,
                _,
            ) => {
                if matches!(existing, Value::Bool(false) | Value::Null) {
                    *existing = value.clone();
                }
            }
            (_, Value::Object(kept), Value::Object(more)) => merge(kept, more, &key_path),
            (_, Value::Array(kept), Value::Array(more)) => {
                kept.extend(more.iter().cloned());
                dedup(kept);
            }
            (_, existing, _) => *existing = value.clone(),
        }
    }
}

/// Policy limits: a restriction is allowed only when every source allows it; taints are united; the highest
/// minimum version wins; a team's notice replaces the organisation's.
fn merge_limits(into: &mut Map<String, Value>, overlay: &Map<String, Value>) {
    for (key, value) in overlay {
        match (key.as_str(), into.get_mut(key)) {
            (_, None) => {
                into.insert(key.clone(), value.clone());
            }
            ("restrictions", Some(Value::Object(kept))) => {
                for (name, restriction) in value.as_object().into_iter().flatten() {
                    let allowed = |r: &Value| r["allowed"].as_bool().unwrap_or(true);
                    let both = kept.get(name).is_none_or(allowed) && allowed(restriction);
                    kept.insert(name.clone(), serde_json::json!({"allowed": both}));
                }
            }
            ("compliance_taints", Some(Value::Array(kept))) => {
                kept.extend(value.as_array().into_iter().flatten().cloned());
                dedup(kept);
            }
            ("upcoming_minimum_version", Some(existing)) => {
                let version = |v: &Value| version(v["claude_code"].as_str().unwrap_or(""));
                if version(value) > version(existing) {
                    *existing = value.clone();
                }
            }
            (_, Some(existing)) => *existing = value.clone(),
        }
    }
}

/// `x.y.z` as numbers, for comparison (checked when compiled).
fn version(text: &str) -> Vec<u64> {
    text.split('.').map(|part| part.parse().unwrap_or(0)).collect()
}

fn dedup(items: &mut Vec<Value>) {
    let mut seen: Vec<Value> = Vec::with_capacity(items.len());
    items.retain(|item| {
        if seen.contains(item) {
            false
        } else {
            seen.push(item.clone());
            true
        }
    });
}

fn is_glob(text: &str) -> bool {
    text.contains(['*', '?', '[', ']', '{', '}'])
}

/// Checks the keys whose type Claude Code depends on; the others are passed through as written.
fn check_settings(key: &str, settings: &Map<String, Value>) -> Result<(), (String, String)> {
    let at = |name: &str| format!("{key}.{name}");
    for (name, value) in settings {
        match name.as_str() {
            "permissions" => {
                let Value::Object(permissions) = value else {
                    return Err((at(name), "expected a map (allow, deny, ask, defaultMode, …)".to_owned()));
                };
                for (field, value) in permissions {
                    let key = at(&format!("permissions.{field}"));
                    match field.as_str() {
                        "allow" | "deny" | "ask" | "additionalDirectories" => string_list(&key, value, true)?,
                        "defaultMode" if !value.as_str().is_some_and(|mode| MODES.contains(&mode)) => {
                            return Err((key, format!("expected one of {}", MODES.join(" | "))));
                        }
                        "disableBypassPermissionsMode" if value.as_str() != Some("disable") => {
                            return Err((key, "the only value is \"disable\"".to_owned()));
                        }
                        _ => {}
                    }
                }
            }
            "env" => {
                let Value::Object(variables) = value else {
                    return Err((at(name), "expected a map of variable names to strings".to_owned()));
                };
                for (variable, value) in variables {
                    if !value.is_string() {
                        return Err((
                            at(&format!("env.{variable}")),
                            "expected a string: quote it (\"1\", \"true\")".to_owned(),
                        ));
                    }
                }
            }
            "model" if value.as_str().is_none_or(str::is_empty) => {
                return Err((at(name), "expected a model name".to_owned()));
            }
            "availableModels" | "companyAnnouncements" => string_list(&at(name), value, true)?,
            "forceRemoteSettingsRefresh" | "allowManagedPermissionRulesOnly" if !value.is_boolean() => {
                return Err((at(name), "expected true or false".to_owned()));
            }
            "hooks" => {
                let Value::Object(events) = value else {
                    return Err((at(name), "expected a map of hook events (PreToolUse, …) to lists".to_owned()));
                };
                for (event, matchers) in events {
                    let Value::Array(matchers) = matchers else {
                        return Err((at(&format!("hooks.{event}")), "expected a list of matchers".to_owned()));
                    };
                    for (index, matcher) in matchers.iter().enumerate() {
                        if !matcher.get("hooks").is_some_and(Value::is_array) {
                            return Err((
                                at(&format!("hooks.{event}[{index}]")),
                                "expected {matcher: …, hooks: [{type: command, command: …}]}".to_owned(),
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// A list of strings (non-empty ones when `non_empty`).
fn string_list(key: &str, value: &Value, non_empty: bool) -> Result<(), (String, String)> {
    let Value::Array(items) = value else { return Err((key.to_owned(), "expected a list of strings".to_owned())) };
    for (index, item) in items.iter().enumerate() {
        match item.as_str() {
            Some("") if non_empty => return Err((format!("{key}[{index}]"), "must not be empty".to_owned())),
            Some(_) => {}
            None => return Err((format!("{key}[{index}]"), "expected a string".to_owned())),
        }
    }
    Ok(())
}

fn compile_policy_limits(parsed: &file::File, limits: &file::PolicyLimits) -> Result<PolicyLimits, (String, String)> {
    let base = limits_object(
        "managed_settings.policy_limits",
        &limits.restrictions,
        limits.compliance_taints.as_deref(),
        limits.monitoring_notice.as_ref(),
        limits.upcoming_minimum_version.as_ref(),
    )?;
    let mut teams = BTreeMap::new();
    for (name, overlay) in &limits.teams {
        let key = format!("managed_settings.policy_limits.teams.{name}");
        if !parsed.teams.contains_key(name) {
            return Err((key, format!("team {name:?} is not defined under teams")));
        }
        let object = limits_object(
            &key,
            &overlay.restrictions,
            overlay.compliance_taints.as_deref(),
            overlay.monitoring_notice.as_ref(),
            overlay.upcoming_minimum_version.as_ref(),
        )?;
        teams.insert(Arc::from(name.as_str()), object);
    }
    Ok(PolicyLimits { base, teams })
}

/// One source of policy limits as the JSON the client reads, checked.
fn limits_object(
    key: &str,
    restrictions: &BTreeMap<String, file::Restriction>,
    taints: Option<&[String]>,
    notice: Option<&file::MonitoringNotice>,
    minimum: Option<&file::MinimumVersion>,
) -> Result<Map<String, Value>, (String, String)> {
    let mut object = Map::new();
    let mut restricted = Map::new();
    for (name, restriction) in restrictions {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err((
                format!("{key}.restrictions.{name}"),
                "a restriction key is lower-case words joined by _ (allow_product_feedback)".to_owned(),
            ));
        }
        restricted.insert(name.clone(), serde_json::json!({"allowed": restriction.allowed}));
    }
    if !restricted.is_empty() {
        object.insert("restrictions".to_owned(), Value::Object(restricted));
    }
    if let Some(taints) = taints {
        if let Some(index) = taints.iter().position(String::is_empty) {
            return Err((format!("{key}.compliance_taints[{index}]"), "must not be empty".to_owned()));
        }
        object.insert("compliance_taints".to_owned(), taints.iter().cloned().map(Value::String).collect());
    }
    if let Some(notice) = notice {
        if notice.text.trim().is_empty() {
            return Err((format!("{key}.monitoring_notice.text"), "must not be empty".to_owned()));
        }
        if !notice.url.starts_with("https://") || notice.url.len() <= "https://".len() {
            return Err((format!("{key}.monitoring_notice.url"), "expected an https:// URL".to_owned()));
        }
        object.insert("monitoring_notice".to_owned(), serde_json::json!({"text": notice.text, "url": notice.url}));
    }
    if let Some(minimum) = minimum {
        let parts: Vec<&str> = minimum.claude_code.split('.').collect();
        if parts.len() != 3 || !parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
            return Err((
                format!("{key}.upcoming_minimum_version.claude_code"),
                format!("expected a version x.y.z, found {:?}", minimum.claude_code),
            ));
        }
        if chrono::NaiveDate::parse_from_str(&minimum.date, "%Y-%m-%d").is_err() || minimum.date.len() != 10 {
            return Err((
                format!("{key}.upcoming_minimum_version.date"),
                format!("expected a date YYYY-MM-DD, found {:?}", minimum.date),
            ));
        }
        object.insert(
            "upcoming_minimum_version".to_owned(),
            serde_json::json!({"claude_code": minimum.claude_code, "date": minimum.date}),
        );
    }
    Ok(object)
}

/// Translates the enforced deny patterns of `actions` and the teams (and teams' `blocked_file_patterns`) into
/// Claude Code permission rules, recording what has no faithful form.
fn generate_deny(parsed: &file::File, managed: &mut Managed) {
    let global_enforced = parsed.actions.mode == file::ActionMode::Enforce;
    let mut readonly = Vec::new();
    let mut translate = |key: String, pattern: &str, team: Option<&str>, enforced: bool, out: &mut Vec<String>| {
        let source = format!("{key} {pattern}");
        let team_name = team.map(Arc::from);
        if !enforced {
            let why =
                "observe mode: the gateway records it without denying, so the client is not told to deny".to_owned();
            managed.untranslated.push(Untranslated { source, team: team_name, why });
            return;
        }
        match permission_rules(pattern) {
            Ok(rules) => {
                for rule in rules {
                    if !out.contains(&rule) {
                        out.push(rule);
                    }
                }
            }
            Err(why) => managed.untranslated.push(Untranslated { source, team: team_name, why }),
        }
    };
    let mut global = Vec::new();
    for (index, pattern) in parsed.actions.deny.iter().enumerate() {
        translate(format!("actions.deny[{index}]"), pattern, None, global_enforced, &mut global);
    }
    let mut teams = BTreeMap::new();
    for (name, team) in &parsed.teams {
        let mut rules = Vec::new();
        let actions = team.actions.as_ref();
        let enforced = actions.and_then(|a| a.mode).unwrap_or(parsed.actions.mode) == file::ActionMode::Enforce;
        for (index, pattern) in actions.map(|a| a.deny.as_slice()).unwrap_or_default().iter().enumerate() {
            translate(format!("teams.{name}.actions.deny[{index}]"), pattern, Some(name), enforced, &mut rules);
        }
        for (index, glob) in team.blocked_file_patterns.iter().enumerate() {
            let key = format!("teams.{name}.blocked_file_patterns[{index}]");
            translate(key, &format!("file:*:{glob}"), Some(name), enforced, &mut rules);
        }
        if team.readonly {
            readonly.push(Untranslated {
                source: format!("teams.{name}.readonly"),
                team: Some(Arc::from(name.as_str())),
                why: "its commands allowed by allow patterns have no Claude Code form; the gateway enforces it"
                    .to_owned(),
            });
        }
        if !rules.is_empty() {
            teams.insert(Arc::from(name.as_str()), rules);
        }
    }
    managed.untranslated.extend(readonly);
    managed.generated_deny = global;
    managed.team_generated_deny = teams;
}

/// Claude Code permission rules that deny exactly what an `ACTION[:TARGET]` deny pattern denies, or why there
/// are none. File globs become absolute gitignore-style paths (`//etc/passwd`: Claude Code reads `/etc/passwd`
/// in a rule as relative to the settings file).
pub fn permission_rules(pattern: &str) -> Result<Vec<String>, String> {
    let mut parts = pattern.splitn(3, ':');
    let (family, verb) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let target = parts.next().filter(|t| !t.is_empty() && *t != "*" && *t != "**");
    let file_rules = |tools: &[&str]| -> Result<Vec<String>, String> {
        match target {
            None => Ok(tools.iter().map(|t| (*t).to_owned()).collect()),
            Some(glob) if glob.contains(['{', '}']) => {
                Err("alternatives {a,b} have no form in Claude Code's path rules".to_owned())
            }
            Some(glob) if glob.starts_with('/') || glob.starts_with("**") => {
                let absolute = if glob.starts_with('/') { format!("/{glob}") } else { format!("//{glob}") };
                Ok(tools.iter().map(|t| format!("{t}({absolute})")).collect())
            }
            Some(_) => Err("a relative path has no fixed meaning on the developer's machine".to_owned()),
        }
    };
    match (family, verb) {
        ("*", "") => Err("denying every action has no single Claude Code rule".to_owned()),
        ("file", "read") => file_rules(&["Read"]),
        ("file", "write") => file_rules(&["Edit", "Write"]),
        ("file", "*") => file_rules(&["Read", "Edit", "Write"]),
        ("bash", "run") => match target {
            None => Ok(vec!["Bash".to_owned()]),
            Some(command) => match command.strip_suffix(" *") {
                Some(prefix) if !prefix.is_empty() && !is_glob(prefix) && !prefix.contains(['(', ')']) => {
                    Ok(vec![format!("Bash({prefix}:*)")])
                }
                _ if !is_glob(command) && !command.contains(['(', ')']) => Ok(vec![format!("Bash({command})")]),
                _ => Err("Claude Code's Bash rules match a command or a prefix followed by anything, not a glob \
                          elsewhere"
                    .to_owned()),
            },
        },
        ("web", "fetch") => match target {
            None => Ok(vec!["WebFetch".to_owned(), "WebSearch".to_owned()]),
            Some(host) if !host.contains('/') && !is_glob(host) && !host.is_empty() => {
                Ok(vec![format!("WebFetch(domain:{})", host.trim_end_matches('.').to_ascii_lowercase())])
            }
            Some(_) => Err("Claude Code's WebFetch rules name one domain, not a URL or a glob".to_owned()),
        },
        ("mcp", "call") => match target {
            None => Err("Claude Code has no rule for every MCP server".to_owned()),
            Some(target) => {
                let (server, tool) = target.split_once('/').unwrap_or((target, "*"));
                if server.is_empty() || is_glob(server) {
                    return Err("Claude Code's MCP rules name a server, not a glob".to_owned());
                }
                match tool {
                    "*" | "" => Ok(vec![format!("mcp__{server}")]),
                    tool if !is_glob(tool) => Ok(vec![format!("mcp__{server}__{tool}")]),
                    _ => Err("Claude Code's MCP rules name a tool or the whole server, not a glob".to_owned()),
                }
            }
        },
        ("tool", name) if !name.is_empty() && !is_glob(name) && target.is_none() => Ok(vec![name.to_owned()]),
        ("tool", _) => Err("only a plain tool name has a Claude Code form".to_owned()),
        ("agent", "spawn") => Err("subagents have no deny rule that matches the gateway's".to_owned()),
        _ => Err("no Claude Code form".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::super::Config;
    use super::*;

    fn load(text: &str) -> Result<Config, String> {
        let text = format!("listeners: [{{name: p, bind: '127.0.0.1:0'}}]\npolicy: {{default: deny}}\n{text}");
        Config::from_text(&text, Path::new("t.yaml"), &|_| None).map_err(|e| e.to_string())
    }

    fn teams(names: &[&str]) -> Vec<Arc<str>> {
        names.iter().map(|n| Arc::from(*n)).collect()
    }

    #[test]
    fn action_patterns_translate_where_a_faithful_rule_exists() {
        let rules = |p: &str| permission_rules(p);
        assert_eq!(rules("file:read:/etc/passwd").unwrap(), ["Read(//etc/passwd)"]);
        assert_eq!(rules("file:write:**/*.pem").unwrap(), ["Edit(//**/*.pem)", "Write(//**/*.pem)"]);
        assert_eq!(rules("bash:run:curl *").unwrap(), ["Bash(curl:*)"]);
        assert_eq!(rules("bash:run:git push").unwrap(), ["Bash(git push)"]);
        assert_eq!(rules("bash:run").unwrap(), ["Bash"]);
        assert_eq!(rules("web:fetch:Evil.Example").unwrap(), ["WebFetch(domain:evil.example)"]);
        assert_eq!(rules("mcp:call:jira/*").unwrap(), ["mcp__jira"]);
        assert_eq!(rules("mcp:call:jira/create").unwrap(), ["mcp__jira__create"]);
        assert_eq!(rules("tool:NotebookEdit").unwrap(), ["NotebookEdit"]);
        for untranslatable in
            ["bash:run:curl http://*", "web:fetch:*.example", "mcp:call:*", "*", "file:read:/a/{b,c}", "agent:spawn"]
        {
            assert!(rules(untranslatable).is_err(), "{untranslatable}");
        }
    }

    #[test]
    fn teams_overlay_the_organisation_by_the_merge_rules() {
        let config = load(
            "teams:
  interns: {models: [claude-haiku-4-5, \"claude-sonnet-4*\"]}
  contractors: {models: [claude-opus-4-1]}
managed_settings:
  settings:
    permissions: {deny: [WebFetch], allow: [\"Bash(ls:*)\"], defaultMode: acceptEdits}
    availableModels: [claude-haiku-4-5, claude-opus-4-1, claude-sonnet-4-5]
    env: {A: org, B: org}
  teams:
    interns: {permissions: {deny: [Bash, WebFetch], defaultMode: plan}, env: {A: interns}}
    contractors:
      permissions: {deny: [Edit], defaultMode: default, disableBypassPermissionsMode: disable}
      availableModels: [claude-opus-4-1, claude-sonnet-4-5]
      env: {B: contractors}
  generate: {available_models: true}
",
        )
        .unwrap();
        let managed = config.managed_settings.as_ref().unwrap();
        let both = managed.settings_for(&teams(&["interns", "contractors"])).unwrap();
        assert_eq!(
            both,
            json!({
                "permissions": {"deny": ["WebFetch", "Edit", "Bash"], "allow": ["Bash(ls:*)"], "defaultMode": "plan",
                    "disableBypassPermissionsMode": "disable"},
                // org ∩ contractors ∩ generated (interns' and contractors' plain names)
                "availableModels": ["claude-opus-4-1"],
                "env": {"A": "interns", "B": "contractors"},
            })
        );
        assert_eq!(managed.settings_for(&teams(&["contractors", "interns"])), Some(both), "order does not matter");
        let nobody = managed.settings_for(&[]).unwrap();
        assert_eq!(nobody["permissions"]["defaultMode"], "acceptEdits");
        assert_eq!(nobody["availableModels"], json!(["claude-haiku-4-5", "claude-opus-4-1", "claude-sonnet-4-5"]));
        assert_eq!(managed.untranslated[0].source, "teams.interns.models claude-sonnet-4*");
    }

    #[test]
    fn nothing_configured_for_a_user_is_none() {
        let config = load("teams: {a: {}}\nmanaged_settings:\n  teams: {a: {model: claude-opus-4-1}}\n").unwrap();
        let managed = config.managed_settings.as_ref().unwrap();
        assert_eq!(managed.settings_for(&[]), None);
        assert_eq!(managed.policy_limits_for(&[]), None);
        assert_eq!(managed.settings_for(&teams(&["a"])), Some(json!({"model": "claude-opus-4-1"})));
        assert!(load("").unwrap().managed_settings.is_none());
    }

    #[test]
    fn policy_limits_take_the_strictest_of_the_sources() {
        let config = load(
            "teams: {a: {}, b: {}}
managed_settings:
  policy_limits:
    restrictions: {allow_product_feedback: {allowed: false}, allow_web_fetch: {allowed: true}}
    compliance_taints: [zdr]
    upcoming_minimum_version: {claude_code: 2.1.10, date: 2026-12-01}
    teams:
      a: {restrictions: {allow_web_fetch: {allowed: false}}, upcoming_minimum_version: {claude_code: 2.1.9, date: 2026-11-01}}
      b: {restrictions: {allow_product_feedback: {allowed: true}}, compliance_taints: [hipaa], upcoming_minimum_version: {claude_code: 2.2.0, date: 2027-01-01}}
",
        )
        .unwrap();
        let managed = config.managed_settings.as_ref().unwrap();
        assert_eq!(
            managed.policy_limits_for(&teams(&["a", "b"])).unwrap(),
            json!({
                "restrictions": {"allow_product_feedback": {"allowed": false}, "allow_web_fetch": {"allowed": false}},
                "compliance_taints": ["zdr", "hipaa"],
                "upcoming_minimum_version": {"claude_code": "2.2.0", "date": "2027-01-01"},
            })
        );
        assert_eq!(
            managed.policy_limits_for(&teams(&["a"])).unwrap()["upcoming_minimum_version"]["claude_code"],
            "2.1.10"
        );
    }

    #[test]
    fn generated_deny_rules_follow_the_enforced_actions() {
        let config = load(
            "actions:
  deny: [\"file:read:/etc/passwd\", \"bash:run:curl *\", \"bash:run:curl http://*\"]
teams:
  interns: {blocked_file_patterns: [\"**/*.pem\"], actions: {deny: [\"mcp:call:jira/*\"]}}
  watched: {actions: {mode: observe, deny: [\"web:fetch\"]}}
managed_settings:
  settings: {permissions: {deny: [WebSearch]}}
  generate: {deny_from_actions: true}
",
        )
        .unwrap();
        let managed = config.managed_settings.as_ref().unwrap();
        assert_eq!(
            managed.settings_for(&teams(&["interns", "watched"])).unwrap()["permissions"]["deny"],
            json!([
                "WebSearch",
                "Read(//etc/passwd)",
                "Bash(curl:*)",
                "mcp__jira",
                "Read(//**/*.pem)",
                "Edit(//**/*.pem)",
                "Write(//**/*.pem)"
            ])
        );
        let sources: Vec<&str> = managed.untranslated.iter().map(|u| u.source.as_str()).collect();
        assert_eq!(sources, ["actions.deny[2] bash:run:curl http://*", "teams.watched.actions.deny[0] web:fetch"]);
    }

    #[test]
    fn mistakes_are_named_by_their_key() {
        let error = |text: &str| load(text).unwrap_err();
        assert_eq!(
            error("managed_settings:\n  settings: {permissions: {deny: [Bash, 3]}}\n"),
            "t.yaml:4:41: managed_settings.settings.permissions.deny[1]: expected a string"
        );
        assert_eq!(
            error("managed_settings:\n  settings: {permissions: {defaultMode: yolo}}\n"),
            "t.yaml:4:41: managed_settings.settings.permissions.defaultMode: expected one of bypassPermissions | \
             acceptEdits | default | dontAsk | plan"
        );
        assert_eq!(
            error("managed_settings:\n  settings: {env: {DEBUG: 1}}\n"),
            "t.yaml:4:27: managed_settings.settings.env.DEBUG: expected a string: quote it (\"1\", \"true\")"
        );
        assert_eq!(
            error("managed_settings:\n  settings: {cleanupPeriodDays: 9007199254740993}\n"),
            "t.yaml:4:33: managed_settings.settings.cleanupPeriodDays: 9007199254740993 is beyond 2^53 - 1, which \
             JavaScript cannot hold exactly: quote it to send a string"
        );
        assert_eq!(
            error("managed_settings:\n  settings: {x: inf}\n"),
            "t.yaml:4:17: managed_settings.settings.x: inf is not a finite number: quote it to send a string"
        );
        assert_eq!(
            error("managed_settings:\n  settings: {a: {__proto__: 1}}\n"),
            "t.yaml:4:18: managed_settings.settings.a.__proto__: the key __proto__ cannot be sent: JavaScript drops it"
        );
        assert_eq!(
            error("managed_settings:\n  teams: {nobody: {}}\n"),
            "t.yaml:4:19: managed_settings.teams.nobody: team \"nobody\" is not defined under teams"
        );
        assert_eq!(
            error("managed_settings:\n  generate: {models: true}\n"),
            "t.yaml:4:14: managed_settings.generate.models: unknown key `models`: allowed keys are available_models, \
             deny_from_actions"
        );
        assert_eq!(
            error("managed_settings:\n  policy_limits: {restrictions: {allow_web_fetch: {allowed: no}}}\n"),
            "t.yaml:4:61: managed_settings.policy_limits.restrictions.allow_web_fetch.allowed: expected true or \
             false, found \"no\""
        );
        assert_eq!(
            error("managed_settings:\n  policy_limits: {monitoring_notice: {text: hi, url: \"http://x\"}}\n"),
            "t.yaml:4:54: managed_settings.policy_limits.monitoring_notice.url: expected an https:// URL"
        );
    }
}
