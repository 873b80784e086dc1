//! The `actions` policy: patterns written as `ACTION[:TARGET]` compiled once, then `decide` per tool call — no I/O.
//!
//! An action is decided against the global policy and the policies of the principal's teams, in this order:
//! 1. deny lists: each of the principal's teams (in the principal's order), then `actions.deny`;
//! 2. `blocked_file_patterns` of any of those teams (file actions);
//! 3. `readonly` of any of those teams: `file:write` is denied, and so is `bash:run` unless every simple command
//!    of the line is named by an allow pattern (a team's or the global list) and none redirects into a file;
//! 4. allow lists: the teams', then `actions.allow` (for `bash:run`, every simple command must be named, by any
//!    allow pattern);
//! 5. `actions.default`.
//!
//! The first deny of a policy in `enforce` mode decides. A deny of a policy in `observe` mode (a team without a
//! mode follows the global one) is remembered and the checks go on: if nothing enforced denies, the action is
//! allowed with `would_deny` and that rule. `alert` patterns (the teams', then the global list) mark an allowed
//! action. Deny, alert and blocked-file patterns ignore ASCII case in targets (macOS and Windows file systems do, and
//! so does command lookup there); allow patterns match case exactly. What cannot be read for sure — a shell command
//! that cannot be parsed or whose program is computed, a path that climbs above its unknown start, a URL that does
//! not parse — matches every deny and alert pattern of its action that names a target, and no allow pattern.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use globset::{GlobBuilder, GlobMatcher};

use super::paths::{self, Anchor, NormalPath};
use super::shell::{self, SimpleCommand, Unreadable};
use super::tools::{Action, Kind};

/// What happens to an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

/// Whether a policy's denials are carried out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// A deny is a deny.
    #[default]
    Enforce,
    /// A deny is recorded (`would_deny`) and the action allowed.
    Observe,
}

/// The decision on one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The alert pattern that marks this allowed action (`actions.alert[0] file:read:**/.env`).
    pub alert: Option<Arc<str>>,
    /// A policy in `observe` mode denies this action; `verdict` is `Allow` and `rule` names that deny.
    pub would_deny: bool,
    /// Where the decision came from: a key path and its pattern (`actions.deny[0] file:read:/etc/passwd`,
    /// `teams.interns.blocked_file_patterns[1] **/*.pem`), `teams.NAME.readonly` or `actions.default`.
    pub rule: Arc<str>,
}

/// A pattern that does not compile, with its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// `actions.deny[2]`, `teams.interns.blocked_file_patterns[0]`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for RuleError {}

/// One compiled pattern and the name decisions give it.
#[derive(Debug, Clone)]
pub struct Rule {
    pattern: Pattern,
    name: Arc<str>,
}

/// A policy's deny, allow and alert patterns.
#[derive(Debug, Clone, Default)]
pub struct Lists {
    deny: Vec<Rule>,
    allow: Vec<Rule>,
    alert: Vec<Rule>,
}

impl Lists {
    /// Compiles the lists found under `prefix` (`actions`, `teams.NAME.actions`).
    pub fn compile(prefix: &str, deny: &[String], allow: &[String], alert: &[String]) -> Result<Lists, RuleError> {
        let list = |name: &str, patterns: &[String], side: Side| {
            let compile =
                |(index, text): (usize, &String)| Rule::compile(&format!("{prefix}.{name}[{index}]"), text, side);
            patterns.iter().enumerate().map(compile).collect::<Result<Vec<_>, _>>()
        };
        Ok(Lists {
            deny: list("deny", deny, Side::Deny)?,
            allow: list("allow", allow, Side::Allow)?,
            alert: list("alert", alert, Side::Deny)?,
        })
    }

    fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.allow.is_empty() && self.alert.is_empty()
    }
}

/// The global policy (`actions`).
#[derive(Debug, Clone)]
pub struct GlobalActions {
    pub mode: Mode,
    /// What an action no list decides gets.
    pub default: Verdict,
    pub lists: Lists,
}

impl Default for GlobalActions {
    /// Enforce, allow by default, no lists.
    fn default() -> Self {
        GlobalActions { mode: Mode::Enforce, default: Verdict::Allow, lists: Lists::default() }
    }
}

/// A team's policy (`teams.NAME.actions`, `readonly`, `blocked_file_patterns`).
#[derive(Debug, Clone, Default)]
pub struct TeamActions {
    /// `None`: the global mode.
    pub mode: Option<Mode>,
    pub lists: Lists,
    pub readonly: bool,
    /// File globs denied to any file action; compile them with `TeamActions::blocked_files`.
    pub blocked_files: Vec<Rule>,
}

impl TeamActions {
    /// Compiles `teams.NAME.blocked_file_patterns`: file globs (`**/*.pem`) under `key`.
    pub fn blocked_files(key: &str, globs: &[String]) -> Result<Vec<Rule>, RuleError> {
        let compile = |(index, glob): (usize, &String)| {
            let key = format!("{key}[{index}]");
            let target = file_glob(glob, Side::Deny).map_err(|message| RuleError { key: key.clone(), message })?;
            let pattern = Pattern { action: ActionMatch::File, target: Some(target) };
            Ok(Rule { pattern, name: format!("{key} {glob}").into() })
        };
        globs.iter().enumerate().map(compile).collect()
    }
}

/// The compiled `actions` policy with every team's.
#[derive(Debug, Clone)]
pub struct ActionPolicy {
    global: GlobalActions,
    default_rule: Arc<str>,
    teams: BTreeMap<Arc<str>, Team>,
}

#[derive(Debug, Clone)]
struct Team {
    actions: TeamActions,
    readonly_rule: Arc<str>,
}

impl Default for ActionPolicy {
    /// No rules: every action allowed.
    fn default() -> Self {
        ActionPolicy::new(GlobalActions::default(), BTreeMap::new())
    }
}

impl ActionPolicy {
    /// The policy of `global` and `teams` (by team name).
    pub fn new(global: GlobalActions, teams: BTreeMap<Arc<str>, TeamActions>) -> Self {
        let teams = teams
            .into_iter()
            .map(|(name, actions)| {
                let readonly_rule = format!("teams.{name}.readonly").into();
                (name, Team { actions, readonly_rule })
            })
            .collect();
        ActionPolicy { global, default_rule: "actions.default".into(), teams }
    }

    /// No rule can deny or mark any action: the default allows, and no list, `readonly` or blocked file is set.
    pub fn allows_everything(&self) -> bool {
        self.global.default == Verdict::Allow
            && self.global.lists.is_empty()
            && self.teams.values().all(|team| {
                team.actions.lists.is_empty() && !team.actions.readonly && team.actions.blocked_files.is_empty()
            })
    }

    /// Some action of a principal in `teams` may be denied (not only observed): an enforced global default deny or
    /// deny list, or a team of the principal with an enforced deny list, `readonly` or blocked files. When false,
    /// the gateway need not hold a response's tool calls until they are decided.
    pub fn may_deny(&self, teams: &[Arc<str>]) -> bool {
        let global = self.global.mode == Mode::Enforce
            && (self.global.default == Verdict::Deny || !self.global.lists.deny.is_empty());
        global
            || teams.iter().filter_map(|name| self.teams.get(&**name)).any(|team| {
                let enforced = team.actions.mode.unwrap_or(self.global.mode) == Mode::Enforce;
                let rules = !team.actions.lists.deny.is_empty()
                    || team.actions.readonly
                    || !team.actions.blocked_files.is_empty();
                enforced && rules
            })
    }

    /// Decides `action` for a principal in `teams` (the first is its team; the rules of all apply).
    pub fn decide(&self, action: &Action, teams: &[Arc<str>]) -> Decision {
        let subject = Lazy { action, subject: OnceCell::new() };
        let teams = || teams.iter().filter_map(|name| self.teams.get(&**name));
        let mode = |team: &Team| team.actions.mode.unwrap_or(self.global.mode);
        // The first deny of a policy in observe mode.
        let mut observed = None;

        for team in teams() {
            if let Some(rule) = first_match(&team.actions.lists.deny, &subject) {
                if let Some(decision) = deny(rule, mode(team), &mut observed) {
                    return decision;
                }
            }
        }
        if let Some(rule) = first_match(&self.global.lists.deny, &subject) {
            if let Some(decision) = deny(rule, self.global.mode, &mut observed) {
                return decision;
            }
        }
        if matches!(action.kind, Kind::FileRead | Kind::FileWrite) {
            for team in teams() {
                if let Some(rule) = first_match(&team.actions.blocked_files, &subject) {
                    if let Some(decision) = deny(rule, mode(team), &mut observed) {
                        return decision;
                    }
                }
            }
        }
        let readonly =
            matches!(action.kind, Kind::FileWrite | Kind::BashRun) && teams().any(|team| team.actions.readonly);
        if readonly && !self.readonly_allows(&subject, teams) {
            for team in teams().filter(|team| team.actions.readonly) {
                if let Some(decision) = deny(&team.readonly_rule, mode(team), &mut observed) {
                    return decision;
                }
            }
        }

        let allowed = self.allowed_by(&subject, teams).or(match self.global.default {
            Verdict::Allow => Some(&self.default_rule),
            Verdict::Deny => None,
        });
        if allowed.is_none() {
            if let Some(decision) = deny(&self.default_rule, self.global.mode, &mut observed) {
                return decision;
            }
        }
        let rule = observed.or(allowed).unwrap_or(&self.default_rule);
        let alert = teams()
            .map(|team| &team.actions.lists.alert)
            .chain([&self.global.lists.alert])
            .find_map(|list| first_match(list, &subject))
            .cloned();
        Decision { verdict: Verdict::Allow, alert, would_deny: observed.is_some(), rule: rule.clone() }
    }

    /// `readonly` lets a command line run when every simple command is named by an allow pattern and none writes a
    /// file; it never lets a file be written.
    fn readonly_allows<'a, Teams>(&'a self, subject: &Lazy<'_>, teams: impl Fn() -> Teams) -> bool
    where
        Teams: Iterator<Item = &'a Team>,
    {
        match (subject.action.kind, subject.get()) {
            (Kind::BashRun, Subject::Commands(Ok(commands))) => {
                commands.iter().all(|command| !command.writes_file) && self.allowed_by(subject, teams).is_some()
            }
            _ => false,
        }
    }

    /// The allow rule that allows the action: the teams' lists, then the global one. A command line needs each of
    /// its simple commands named by an allow pattern (any); the rule naming the first is returned.
    fn allowed_by<'a, Teams>(&'a self, subject: &Lazy<'_>, teams: impl Fn() -> Teams) -> Option<&'a Arc<str>>
    where
        Teams: Iterator<Item = &'a Team>,
    {
        let rules = || teams().flat_map(|team| &team.actions.lists.allow).chain(&self.global.lists.allow);
        let action = subject.action;
        if action.kind != Kind::BashRun {
            return rules().find(|rule| rule.pattern.matches(subject, Side::Allow)).map(|rule| &rule.name);
        }
        // `Some(command)`: a pattern naming it; `None` (a line that cannot be read): a pattern naming no target.
        let covering = |command: Option<&str>| {
            rules().find(|rule| {
                rule.pattern.action.matches(action)
                    && match command {
                        Some(command) => rule.pattern.matches_command(command),
                        None => rule.pattern.target.is_none(),
                    }
            })
        };
        match subject.get() {
            Subject::Commands(Ok(commands)) if !commands.is_empty() => {
                let mut named = None;
                for command in commands {
                    let rule = covering(Some(&command.text))?;
                    named.get_or_insert(&rule.name);
                }
                named
            }
            Subject::Commands(Ok(_)) => covering(Some("")).map(|rule| &rule.name),
            _ => covering(None).map(|rule| &rule.name),
        }
    }
}

/// A deny by `rule`: the decision in `enforce` mode; in `observe` mode, remembered (the first) and `None`.
fn deny<'a>(rule: &'a Arc<str>, mode: Mode, observed: &mut Option<&'a Arc<str>>) -> Option<Decision> {
    match mode {
        Mode::Enforce => Some(Decision { verdict: Verdict::Deny, alert: None, would_deny: false, rule: rule.clone() }),
        Mode::Observe => {
            observed.get_or_insert(rule);
            None
        }
    }
}

/// The first rule of `rules` that matches the action (deny-side reading).
fn first_match<'a>(rules: &'a [Rule], subject: &Lazy<'_>) -> Option<&'a Arc<str>> {
    rules.iter().find(|rule| rule.pattern.matches(subject, Side::Deny)).map(|rule| &rule.name)
}

/// How broadly a pattern reads its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Deny, alert and blocked-file patterns: ASCII case ignored; what cannot be read matches.
    Deny,
    /// Allow patterns: case exact; what cannot be read does not match.
    Allow,
}

impl Rule {
    /// Compiles `text`, found at `key`; the rule is named `KEY TEXT`.
    fn compile(key: &str, text: &str, side: Side) -> Result<Rule, RuleError> {
        let pattern = Pattern::parse(text, side).map_err(|message| RuleError { key: key.to_owned(), message })?;
        Ok(Rule { pattern, name: format!("{key} {text}").into() })
    }
}

/// `ACTION[:TARGET]`, compiled.
#[derive(Debug, Clone)]
struct Pattern {
    action: ActionMatch,
    /// `None`: any target, or none.
    target: Option<Target>,
}

#[derive(Debug, Clone)]
enum ActionMatch {
    /// `*`
    Any,
    /// `file:read`, `bash:run`, …
    Kind(Kind),
    /// `file:*`
    File,
    /// `tool:NAME`: a call to the tool of that name (a glob), whatever its action.
    Tool(GlobMatcher),
}

#[derive(Debug, Clone)]
enum Target {
    /// A path glob: `*` stays within a name, `**` crosses `/`.
    File(GlobMatcher),
    /// A simple-command glob: `*` matches anything. `bare` is the pattern without a final ` *`, so that `curl *`
    /// also matches `curl` alone.
    Shell { glob: GlobMatcher, bare: Option<GlobMatcher> },
    /// A pattern without `/`: the URL's host.
    Host(GlobMatcher),
    /// A pattern with `/`: the whole URL (scheme and host lower-case, default port and user information dropped).
    Url(GlobMatcher),
    /// An MCP `SERVER/TOOL`, a subagent type: `*` matches anything.
    Text(GlobMatcher),
}

const ACTIONS: &str = "one of file:read, file:write, file:*, bash:run, web:fetch, mcp:call, agent:spawn, tool:NAME, *";

impl Pattern {
    fn parse(text: &str, side: Side) -> Result<Pattern, String> {
        if text == "*" {
            return Ok(Pattern { action: ActionMatch::Any, target: None });
        }
        let unknown = |action: &str| format!("unknown action {action:?} ({ACTIONS})");
        let Some((family, rest)) = text.split_once(':') else { return Err(unknown(text)) };
        let (verb, target) = match rest.split_once(':') {
            Some((verb, target)) => (verb, Some(target)),
            None => (rest, None),
        };
        let action = match (family, verb) {
            ("*", _) => return Err("\"*\" matches every action and takes no target".to_owned()),
            ("file", "read") => ActionMatch::Kind(Kind::FileRead),
            ("file", "write") => ActionMatch::Kind(Kind::FileWrite),
            ("file", "*") => ActionMatch::File,
            ("bash", "run" | "*") => ActionMatch::Kind(Kind::BashRun),
            ("web", "fetch" | "*") => ActionMatch::Kind(Kind::WebFetch),
            ("mcp", "call" | "*") => ActionMatch::Kind(Kind::McpCall),
            ("agent", "spawn" | "*") => ActionMatch::Kind(Kind::AgentSpawn),
            ("tool", "") => return Err("tool:NAME needs a tool name".to_owned()),
            ("tool", name) => ActionMatch::Tool(glob(name, Glob::text(Side::Allow))?),
            (family, verb) => return Err(unknown(&format!("{family}:{verb}"))),
        };
        let Some(target) = target else { return Ok(Pattern { action, target: None }) };
        if target.is_empty() {
            return Err(format!("empty target: write {family}:{verb} to match any target"));
        }
        let target = match (&action, family) {
            (ActionMatch::Tool(_), _) => {
                return Err(format!(
                    "tool:{verb} takes no target: name targets by action (bash:run:…, file:read:…, web:fetch:…)"
                ))
            }
            (_, "file") => file_glob(target, side)?,
            (_, "bash") => shell_glob(target, side)?,
            (_, "web") if target.contains('/') => Target::Url(glob(&url_pattern(target), Glob::text(side))?),
            (_, "web") => {
                let host = target.trim_end_matches('.').to_ascii_lowercase();
                Target::Host(glob(&host, Glob::text(Side::Deny))?)
            }
            _ => Target::Text(glob(target, Glob::text(side))?),
        };
        Ok(Pattern { action, target: Some(target) })
    }

    /// Whether the pattern matches the action, read for `side`.
    fn matches(&self, subject: &Lazy<'_>, side: Side) -> bool {
        if !self.action.matches(subject.action) {
            return false;
        }
        let Some(target) = &self.target else { return true };
        match (target, subject.get()) {
            (_, Subject::Missing) => false,
            (Target::File(glob), Subject::Path(path)) => match (path.anchor, side) {
                (Anchor::Escapes, side) => side == Side::Deny,
                (_, Side::Deny) => path.readings().any(|reading| glob.is_match(reading)),
                (_, Side::Allow) => path.readings().all(|reading| glob.is_match(reading)),
            },
            (Target::Shell { .. }, Subject::Commands(Err(_))) => side == Side::Deny,
            (Target::Shell { .. }, Subject::Commands(Ok(commands))) if commands.is_empty() => self.matches_command(""),
            (Target::Shell { .. }, Subject::Commands(Ok(commands))) => match side {
                Side::Deny => commands.iter().any(|command| self.matches_command(&command.text)),
                Side::Allow => commands.iter().all(|command| self.matches_command(&command.text)),
            },
            (Target::Host(_) | Target::Url(_), Subject::BadUrl) => side == Side::Deny,
            (Target::Host(glob), Subject::Url { host, .. }) => glob.is_match(host),
            (Target::Url(glob), Subject::Url { url, .. }) => glob.is_match(url),
            (Target::Host(glob) | Target::Url(glob) | Target::Text(glob), Subject::Text(text)) => glob.is_match(text),
            _ => false,
        }
    }

    /// Whether a shell pattern matches one simple command.
    fn matches_command(&self, command: &str) -> bool {
        match &self.target {
            Some(Target::Shell { glob, bare }) => {
                glob.is_match(command) || bare.as_ref().is_some_and(|bare| bare.is_match(command))
            }
            Some(_) => false,
            None => true,
        }
    }
}

impl ActionMatch {
    fn matches(&self, action: &Action) -> bool {
        match self {
            ActionMatch::Any => true,
            ActionMatch::Kind(kind) => action.kind == *kind,
            ActionMatch::File => matches!(action.kind, Kind::FileRead | Kind::FileWrite),
            ActionMatch::Tool(name) => name.is_match(&action.tool),
        }
    }
}

/// Glob settings.
struct Glob {
    literal_separator: bool,
    backslash_escape: bool,
    case_insensitive: bool,
}

impl Glob {
    /// `*` matches anything; `\` escapes.
    fn text(side: Side) -> Glob {
        Glob { literal_separator: false, backslash_escape: true, case_insensitive: side == Side::Deny }
    }
}

fn glob(text: &str, settings: Glob) -> Result<GlobMatcher, String> {
    GlobBuilder::new(text)
        .literal_separator(settings.literal_separator)
        .backslash_escape(settings.backslash_escape)
        .case_insensitive(settings.case_insensitive)
        .build()
        .map(|glob| glob.compile_matcher())
        .map_err(|error| format!("invalid glob {text:?}: {}", error.kind()))
}

/// A file glob: `\` is a separator (as in paths), the drive letter upper-case. It must start at a root or with
/// `**`: tool paths are absolute, so `*.key`, `secrets/*` or `~/.ssh/*` would never match one.
fn file_glob(text: &str, side: Side) -> Result<Target, String> {
    let mut pattern = text.replace('\\', "/");
    let bytes = pattern.as_bytes();
    let drive = bytes.len() >= 3 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' && bytes[2] == b'/';
    if drive {
        pattern[..1].make_ascii_uppercase();
    } else if !(pattern.starts_with(['/', '{', '[']) || pattern.starts_with("**")) {
        let below = pattern.strip_prefix("~/").unwrap_or(&pattern);
        return Err(format!(
            "file pattern {text:?} is relative, and tool paths are absolute: write \"/…\" or \"**/{below}\""
        ));
    }
    let settings = Glob { literal_separator: true, backslash_escape: false, case_insensitive: side == Side::Deny };
    Ok(Target::File(glob(&pattern, settings)?))
}

/// A simple-command glob: whitespace runs are one space; the program is named without its directory.
fn shell_glob(text: &str, side: Side) -> Result<Target, String> {
    let pattern = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let program = pattern.split(' ').next().unwrap_or_default();
    if program.starts_with(['/', '.', '~']) && program.contains('/') {
        let name = program.rsplit('/').next().unwrap_or_default();
        return Err(format!(
            "bash:run patterns name the program without its directory ({program:?} runs as {name:?}): write {:?}",
            pattern.replacen(program, name, 1)
        ));
    }
    let bare = match pattern.strip_suffix(" *") {
        Some(bare) => Some(glob(bare, Glob::text(side))?),
        None => None,
    };
    Ok(Target::Shell { glob: glob(&pattern, Glob::text(side))?, bare })
}

/// A URL pattern that ends at its host (`https://docs.example.com`) matches the whole site.
fn url_pattern(text: &str) -> String {
    match text.split_once("://") {
        Some((_, rest)) if !rest.contains('/') => format!("{text}/*"),
        _ => text.to_owned(),
    }
}

/// An action's target, read once per decision and only when a pattern needs it.
struct Lazy<'a> {
    action: &'a Action,
    subject: OnceCell<Subject<'a>>,
}

enum Subject<'a> {
    /// The action names no target.
    Missing,
    Path(NormalPath),
    Commands(Result<Vec<SimpleCommand>, Unreadable>),
    /// A URL, read as a browser reads it.
    Url {
        host: String,
        url: String,
    },
    /// Looks like a URL (`scheme://`) but has no host or does not parse.
    BadUrl,
    /// A search query, an MCP `SERVER/TOOL`, a subagent type.
    Text(&'a str),
}

impl<'a> Lazy<'a> {
    fn get(&self) -> &Subject<'a> {
        self.subject.get_or_init(|| {
            let Some(target) = self.action.target.as_deref() else { return Subject::Missing };
            match self.action.kind {
                Kind::FileRead | Kind::FileWrite => Subject::Path(paths::normalise_path(target)),
                Kind::BashRun => Subject::Commands(shell::split(target)),
                Kind::WebFetch if target.contains("://") => read_url(target),
                Kind::WebFetch | Kind::McpCall | Kind::AgentSpawn | Kind::Tool => Subject::Text(target),
            }
        })
    }
}

fn read_url(target: &str) -> Subject<'static> {
    let Ok(mut url) = url::Url::parse(target.trim()) else { return Subject::BadUrl };
    let host = match url.host_str() {
        Some(host) if !host.is_empty() => {
            host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase()
        }
        _ => return Subject::BadUrl,
    };
    // `https://user@evil.example/` goes to evil.example; the user information and fragment are not part of where.
    if url.set_username("").is_err() || url.set_password(None).is_err() {
        return Subject::BadUrl;
    }
    url.set_fragment(None);
    Subject::Url { host, url: url.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(patterns: &[&str]) -> Vec<String> {
        patterns.iter().map(|p| p.to_string()).collect()
    }

    fn lists(prefix: &str, deny: &[&str], allow: &[&str], alert: &[&str]) -> Lists {
        Lists::compile(prefix, &strings(deny), &strings(allow), &strings(alert)).expect("patterns compile")
    }

    /// A global policy in enforce mode with `default: allow` and these deny and allow lists.
    fn global(deny: &[&str], allow: &[&str]) -> ActionPolicy {
        let global = GlobalActions { lists: lists("actions", deny, allow, &[]), ..GlobalActions::default() };
        ActionPolicy::new(global, BTreeMap::new())
    }

    fn action(kind: Kind, target: &str) -> Action {
        let tool = match kind {
            Kind::FileRead => "Read",
            Kind::FileWrite => "Write",
            Kind::BashRun => "Bash",
            Kind::WebFetch => "WebFetch",
            Kind::McpCall => "mcp__jira__create_issue",
            Kind::AgentSpawn => "Task",
            Kind::Tool => "Frobnicate",
        };
        Action { kind, tool: tool.to_owned(), target: Some(target.to_owned()) }
    }

    fn read(path: &str) -> Action {
        action(Kind::FileRead, path)
    }

    fn write(path: &str) -> Action {
        action(Kind::FileWrite, path)
    }

    fn bash(command: &str) -> Action {
        action(Kind::BashRun, command)
    }

    fn fetch(url: &str) -> Action {
        action(Kind::WebFetch, url)
    }

    /// The rule that denies `action` under `policy` (no teams), or `None` when it is allowed.
    fn denied_by(policy: &ActionPolicy, action: &Action) -> Option<String> {
        let decision = policy.decide(action, &[]);
        (decision.verdict == Verdict::Deny).then(|| decision.rule.to_string())
    }

    fn error(pattern: &str) -> String {
        Lists::compile("actions", &strings(&[pattern]), &[], &[]).expect_err(pattern).to_string()
    }

    #[test]
    fn the_documented_patterns_match_what_they_say() {
        let patterns = [
            "file:read:/etc/passwd",
            "file:*:**/secrets/**",
            "file:write:/repos/trading/main/**",
            "bash:run:curl http://*",
            "bash:run:wget *",
            "mcp:call:jira/*",
            "web:fetch:*.internal.example.com",
            "tool:Frobnicate",
        ];
        let policy = global(&patterns, &[]);
        let rule = |index: usize| format!("actions.deny[{index}] {}", patterns[index]);
        let cases = [
            (read("/etc/passwd"), Some(0)),
            (write("/etc/passwd"), None),
            (read("/etc/passwd.d/x"), None),
            (read("/home/a/proj/secrets/key.txt"), Some(1)),
            (write("/secrets/a/b"), Some(1)),
            (read("/home/a/proj/secretsx/key"), None),
            (write("/repos/trading/main/src/lib.rs"), Some(2)),
            (read("/repos/trading/main/src/lib.rs"), None),
            (write("/repos/trading/mainline/x"), None),
            (bash("curl http://example.com/x"), Some(3)),
            (bash("curl https://example.com/x"), None),
            (bash("wget"), Some(4)),
            (bash("wget -q https://x"), Some(4)),
            (bash("wgetx"), None),
            (action(Kind::McpCall, "jira/create_issue"), Some(5)),
            (action(Kind::McpCall, "github/create_issue"), None),
            (fetch("https://wiki.internal.example.com/page"), Some(6)),
            (fetch("https://a.b.internal.example.com:8443/"), Some(6)),
            (fetch("https://internal.example.com/"), None),
            (fetch("https://internal.example.com.evil.example/"), None),
            (action(Kind::Tool, ""), Some(7)),
            (Action { kind: Kind::Tool, tool: "Frobnicator".into(), target: None }, None),
        ];
        for (action, want) in cases {
            assert_eq!(denied_by(&policy, &action), want.map(rule), "{action}");
        }
        let any_read = global(&["file:read"], &[]);
        assert!(denied_by(&any_read, &read("/anything")).is_some());
        assert!(denied_by(&any_read, &Action { kind: Kind::FileRead, tool: "Grep".into(), target: None }).is_some());
        assert!(denied_by(&any_read, &write("/anything")).is_none());
        let everything = global(&["*"], &[]);
        assert!(denied_by(&everything, &action(Kind::AgentSpawn, "general-purpose")).is_some());
    }

    #[test]
    fn bad_patterns_say_what_is_wrong() {
        let actions = "one of file:read, file:write, file:*, bash:run, web:fetch, mcp:call, agent:spawn, tool:NAME, *";
        assert_eq!(error("file:delete"), format!("actions.deny[0]: unknown action \"file:delete\" ({actions})"));
        assert_eq!(error("file:delete:/x"), format!("actions.deny[0]: unknown action \"file:delete\" ({actions})"));
        assert_eq!(error("Read"), format!("actions.deny[0]: unknown action \"Read\" ({actions})"));
        assert_eq!(error("*:/etc/*"), "actions.deny[0]: \"*\" matches every action and takes no target");
        assert_eq!(error("tool:"), "actions.deny[0]: tool:NAME needs a tool name");
        assert_eq!(
            error("tool:Bash:ls"),
            "actions.deny[0]: tool:Bash takes no target: name targets by action (bash:run:…, file:read:…, web:fetch:…)"
        );
        assert_eq!(error("file:read:"), "actions.deny[0]: empty target: write file:read to match any target");
        assert_eq!(
            error("file:read:/etc/[abc"),
            "actions.deny[0]: invalid glob \"/etc/[abc\": unclosed character class; missing ']'"
        );
        assert_eq!(
            error("file:read:.env"),
            "actions.deny[0]: file pattern \".env\" is relative, and tool paths are absolute: write \"/…\" or \"**/.env\""
        );
        assert_eq!(
            error("file:*:*.pem"),
            "actions.deny[0]: file pattern \"*.pem\" is relative, and tool paths are absolute: write \"/…\" or \
             \"**/*.pem\""
        );
        assert_eq!(
            error("file:*:~/.ssh/*"),
            "actions.deny[0]: file pattern \"~/.ssh/*\" is relative, and tool paths are absolute: write \"/…\" or \
             \"**/.ssh/*\""
        );
        assert_eq!(
            error("bash:run:/usr/bin/curl *"),
            "actions.deny[0]: bash:run patterns name the program without its directory (\"/usr/bin/curl\" runs as \
             \"curl\"): write \"curl *\""
        );
    }

    #[test]
    fn paths_are_normalised_before_matching() {
        let policy = global(&["file:read:/etc/passwd", "file:*:**/.env"], &[]);
        for path in [
            "/etc//passwd",
            "/etc/./passwd",
            "/tmp/../etc/passwd",
            "/../etc/passwd",
            "/etc/passwd.",
            "/etc/passwd ",
            "/etc/passwd::$DATA",
            "\\etc\\passwd",
            "/ETC/Passwd",
            "/r/.ENV",
            "C:\\r\\.env.",
        ] {
            assert!(denied_by(&policy, &read(path)).is_some(), "{path}");
        }
        for path in ["/etc/passwd-", "/etc/passwd/..x", "/r/.envrc"] {
            assert!(denied_by(&policy, &read(path)).is_none(), "{path}");
        }
        // A relative path that climbs above its start could be /etc/passwd: it matches every file deny rule.
        assert_eq!(
            denied_by(&policy, &read("../../../etc/passwd")).as_deref(),
            Some("actions.deny[0] file:read:/etc/passwd")
        );
        assert!(denied_by(&policy, &read("~/../../etc/shadow")).is_some());
        // One that stays below it is matched as written.
        assert!(denied_by(&policy, &read("src/.env")).is_some());
        assert!(denied_by(&policy, &read("src/main.rs")).is_none());
    }

    #[test]
    fn allows_need_every_reading_and_an_anchor() {
        let policy = ActionPolicy::new(
            GlobalActions {
                default: Verdict::Deny,
                lists: lists("actions", &[], &["file:write:/repos/x/**"], &[]),
                ..GlobalActions::default()
            },
            BTreeMap::new(),
        );
        assert!(denied_by(&policy, &write("/repos/x/src/a.rs")).is_none());
        assert!(denied_by(&policy, &write("/repos/x/../y/a.rs")).is_some());
        // On Linux `x\y` is a file in /repos, not in /repos/x.
        assert!(denied_by(&policy, &write("/repos/x\\y")).is_some());
        // `x.` is a directory beside x on Linux.
        assert!(denied_by(&policy, &write("/repos/x./y")).is_some());
        assert!(denied_by(&policy, &write("/REPOS/x/a")).is_some());
        assert!(denied_by(&policy, &write("x/a")).is_some());
        assert!(denied_by(&policy, &write("/repos/x/../../repos/x/a")).is_none());
    }

    #[test]
    fn shell_commands_are_matched_simple_command_by_simple_command() {
        let policy = global(&["bash:run:curl http://*", "bash:run:wget *"], &[]);
        let curl = Some("actions.deny[0] bash:run:curl http://*".to_owned());
        let wget = Some("actions.deny[1] bash:run:wget *".to_owned());
        let cases = [
            ("curl http://x", &curl),
            ("ls && curl http://x", &curl),
            ("ls;curl http://x", &curl),
            ("echo $(curl http://x)", &curl),
            ("echo `wget y`", &wget),
            ("(cd /; curl http://x)", &curl),
            ("\"curl\" 'http://x'", &curl),
            ("\"cu\"\"rl\" http://x", &curl),
            ("c\\url http://x", &curl),
            ("/usr/bin/curl http://x", &curl),
            ("sudo -u x curl http://x", &curl),
            ("env A=1 curl http://x", &curl),
            ("bash -c 'curl http://x'", &curl),
            ("CURL http://X", &curl),
            ("cat <<EOF\n$(wget y)\nEOF", &wget),
            ("bash <<'EOF'\ncurl http://x\nEOF", &curl),
            // Fail closed: what cannot be read matches every bash:run deny rule.
            ("$c http://x", &curl),
            ("$(echo curl) http://x", &curl),
            ("echo 'unterminated", &curl),
            ("bash -c \"$x\"", &curl),
            ("ls -la", &None),
            ("echo curl http://x", &None),
            ("curl https://x", &None),
            ("cat <<'EOF'\ncurl http://x\nEOF", &None),
        ];
        for (command, want) in cases {
            assert_eq!(&denied_by(&policy, &bash(command)), want, "{command}");
        }
    }

    #[test]
    fn web_rules_read_hosts_and_urls() {
        let policy =
            global(&["web:fetch:evil.example", "web:fetch:https://docs.example.com", "web:fetch:*secret*"], &[]);
        for url in [
            "https://evil.example/",
            "HTTPS://EVIL.EXAMPLE:443/a?b",
            "http://user:pass@evil.example./x",
            "https://docs.example.com",
            "https://docs.example.com/a/b",
            "https://user@docs.example.com/a",
            "https://Docs.Example.com/a#frag",
            "not-a-url://",
            "https://",
            "file:///etc/passwd",
            "a secret recipe",
        ] {
            assert!(denied_by(&policy, &fetch(url)).is_some(), "{url}");
        }
        for url in ["https://evil.example.org/", "https://docs.example.community/", "https://example.com/", "rust docs"]
        {
            assert!(denied_by(&policy, &fetch(url)).is_none(), "{url}");
        }
    }

    #[test]
    fn the_order_is_deny_blocked_readonly_allow_default() {
        let team = |deny: &[&str], allow: &[&str], readonly, blocked: &[&str]| TeamActions {
            mode: None,
            lists: lists("teams.interns.actions", deny, allow, &[]),
            readonly,
            blocked_files: TeamActions::blocked_files("teams.interns.blocked_file_patterns", &strings(blocked))
                .unwrap(),
        };
        let policy = |global_lists: Lists, default, team: TeamActions| {
            ActionPolicy::new(
                GlobalActions { mode: Mode::Enforce, default, lists: global_lists },
                BTreeMap::from([(Arc::from("interns"), team)]),
            )
        };
        let interns = [Arc::from("interns")];
        let decide = |policy: &ActionPolicy, action: &Action| {
            let decision = policy.decide(action, &interns);
            (decision.verdict, decision.rule.to_string())
        };
        use Verdict::*;

        // The team's deny list comes before the global one; an allow never undoes a deny.
        let both = policy(
            lists("actions", &["mcp:call:*"], &["mcp:call:jira/*"], &[]),
            Allow,
            team(&["mcp:call:jira/*"], &["mcp:call:*"], false, &[]),
        );
        let jira = action(Kind::McpCall, "jira/create_issue");
        assert_eq!(decide(&both, &jira), (Deny, "teams.interns.actions.deny[0] mcp:call:jira/*".into()));
        assert_eq!(decide(&both, &action(Kind::McpCall, "github/x")), (Deny, "actions.deny[0] mcp:call:*".into()));
        // Without the team, only the global rules apply.
        assert_eq!(both.decide(&jira, &[]).rule.as_ref(), "actions.deny[0] mcp:call:*");
        // An unknown team has no rules.
        assert_eq!(both.decide(&jira, &[Arc::from("nobody")]).rule.as_ref(), "actions.deny[0] mcp:call:*");

        // Blocked files, for reads and writes.
        let blocked = policy(Lists::default(), Allow, team(&[], &["file:read:**"], false, &["**/*.pem", "**/*.key"]));
        assert_eq!(
            decide(&blocked, &read("/srv/tls/server.key")),
            (Deny, "teams.interns.blocked_file_patterns[1] **/*.key".into())
        );
        assert_eq!(
            decide(&blocked, &write("/srv/a.PEM")),
            (Deny, "teams.interns.blocked_file_patterns[0] **/*.pem".into())
        );
        assert_eq!(decide(&blocked, &read("/srv/a.rs")), (Allow, "teams.interns.actions.allow[0] file:read:**".into()));
        assert_eq!(decide(&blocked, &bash("cat /srv/a.pem")).0, Allow);

        // Readonly: no file writes whatever allows them; commands only when every one is allowed and none writes.
        let readonly = policy(
            lists("actions", &[], &["bash:run:git status", "file:write:/repos/**"], &[]),
            Allow,
            team(&[], &["bash:run:ls *", "bash:run:cat *"], true, &[]),
        );
        assert_eq!(decide(&readonly, &write("/repos/a")), (Deny, "teams.interns.readonly".into()));
        assert_eq!(decide(&readonly, &read("/repos/a")), (Allow, "actions.default".into()));
        assert_eq!(
            decide(&readonly, &bash("ls -la && cat a | git status")),
            (Allow, "teams.interns.actions.allow[0] bash:run:ls *".into())
        );
        assert_eq!(decide(&readonly, &bash("ls")), (Allow, "teams.interns.actions.allow[0] bash:run:ls *".into()));
        assert_eq!(decide(&readonly, &bash("ls && rm -rf /")), (Deny, "teams.interns.readonly".into()));
        assert_eq!(decide(&readonly, &bash("cat a > b")), (Deny, "teams.interns.readonly".into()));
        assert_eq!(decide(&readonly, &bash("$x")), (Deny, "teams.interns.readonly".into()));
        assert_eq!(decide(&readonly, &action(Kind::McpCall, "jira/x")), (Allow, "actions.default".into()));
        // The same principal without the team is not read-only.
        assert_eq!(readonly.decide(&write("/repos/a"), &[]).verdict, Allow);

        // With default: deny the allow lists are exhaustive; a command line needs all of its commands allowed.
        let exhaustive =
            policy(lists("actions", &[], &["bash:run:cargo *"], &[]), Deny, team(&[], &["bash:run:git *"], false, &[]));
        assert_eq!(
            decide(&exhaustive, &bash("git pull && cargo test")),
            (Allow, "teams.interns.actions.allow[0] bash:run:git *".into())
        );
        assert_eq!(decide(&exhaustive, &bash("cargo test; make")), (Deny, "actions.default".into()));
        assert_eq!(decide(&exhaustive, &read("/a")), (Deny, "actions.default".into()));
        assert_eq!(decide(&exhaustive, &bash("$x")), (Deny, "actions.default".into()));
        let untargeted = policy(lists("actions", &[], &["bash:run"], &[]), Deny, team(&[], &[], false, &[]));
        assert_eq!(decide(&untargeted, &bash("$x && anything")), (Allow, "actions.allow[0] bash:run".into()));
    }

    #[test]
    fn observe_mode_allows_and_says_what_would_have_denied() {
        let global_lists = lists("actions", &["bash:run:curl *"], &[], &["bash:run:kubectl *", "file:read:**/.env"]);
        let team = TeamActions {
            mode: Some(Mode::Observe),
            lists: lists("teams.interns.actions", &["mcp:call:*"], &[], &[]),
            ..TeamActions::default()
        };
        let policy = ActionPolicy::new(
            GlobalActions { mode: Mode::Enforce, default: Verdict::Allow, lists: global_lists },
            BTreeMap::from([(Arc::from("interns"), team)]),
        );
        let interns = [Arc::from("interns")];
        let observed = policy.decide(&action(Kind::McpCall, "jira/x"), &interns);
        assert_eq!(
            observed,
            Decision {
                verdict: Verdict::Allow,
                alert: None,
                would_deny: true,
                rule: "teams.interns.actions.deny[0] mcp:call:*".into()
            }
        );
        // An enforced global deny still denies a principal whose team only observes.
        assert_eq!(policy.decide(&bash("curl x"), &interns).verdict, Verdict::Deny);
        // Alerts mark allowed actions.
        let alerted = policy.decide(&bash("kubectl get pods"), &interns);
        assert_eq!(
            (alerted.verdict, alerted.alert.as_deref()),
            (Verdict::Allow, Some("actions.alert[0] bash:run:kubectl *"))
        );
        assert_eq!(policy.decide(&read("/app/.env"), &[]).alert.as_deref(), Some("actions.alert[1] file:read:**/.env"));
        assert_eq!(policy.decide(&read("/app/.env.example"), &[]).alert, None);

        // A global observe policy with default: deny allows everything and says so.
        let watching = ActionPolicy::new(
            GlobalActions {
                mode: Mode::Observe,
                default: Verdict::Deny,
                lists: lists("actions", &["file:read:/etc/*"], &["bash:run:ls *"], &[]),
            },
            BTreeMap::new(),
        );
        let decide = |action: &Action| {
            let decision = watching.decide(action, &[]);
            (decision.verdict, decision.would_deny, decision.rule.to_string())
        };
        assert_eq!(decide(&read("/etc/hosts")), (Verdict::Allow, true, "actions.deny[0] file:read:/etc/*".into()));
        assert_eq!(decide(&bash("rm -rf /")), (Verdict::Allow, true, "actions.default".into()));
        assert_eq!(decide(&bash("ls")), (Verdict::Allow, false, "actions.allow[0] bash:run:ls *".into()));
    }

    #[test]
    fn an_empty_policy_allows_everything() {
        let policy = ActionPolicy::default();
        assert!(policy.allows_everything());
        assert_eq!(policy.decide(&bash("$x"), &[]).rule.as_ref(), "actions.default");
        assert!(!global(&["tool:X"], &[]).allows_everything());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const PATTERNS: [&str; 14] = [
            "*",
            "file:read",
            "file:*:**/secrets/**",
            "file:read:/etc/*",
            "file:write:/repos/**",
            "bash:run",
            "bash:run:curl *",
            "bash:run:ls *",
            "bash:run:*http*",
            "web:fetch:*.example.com",
            "web:fetch:https://a.example.com/*",
            "mcp:call:jira/*",
            "tool:Frob*",
            "agent:spawn:general-*",
        ];

        fn arbitrary_action() -> impl Strategy<Value = Action> {
            let targets = prop::sample::select(vec![
                (Kind::FileRead, "/etc/passwd"),
                (Kind::FileRead, "/home/a/secrets/k"),
                (Kind::FileRead, "../../x"),
                (Kind::FileWrite, "/repos/a/b"),
                (Kind::FileWrite, "/repos/a/secrets/c"),
                (Kind::FileWrite, "/repos\\a."),
                (Kind::BashRun, "ls -la"),
                (Kind::BashRun, "ls && curl http://x"),
                (Kind::BashRun, "curl"),
                (Kind::BashRun, "$x"),
                (Kind::BashRun, ""),
                (Kind::WebFetch, "https://a.example.com/x"),
                (Kind::WebFetch, "https://b.example.com/"),
                (Kind::WebFetch, "http://"),
                (Kind::McpCall, "jira/create"),
                (Kind::AgentSpawn, "general-purpose"),
                (Kind::Tool, ""),
            ]);
            (targets, any::<bool>()).prop_map(|((kind, target), has_target)| {
                let target = (has_target || !target.is_empty()).then(|| target.to_owned());
                Action { kind, target, ..action(kind, "") }
            })
        }

        fn subset() -> impl Strategy<Value = Vec<&'static str>> {
            prop::sample::subsequence(PATTERNS.to_vec(), 0..=4)
        }

        proptest! {
            /// Whatever the allow lists, the default and the team, an action a deny list denies stays denied.
            #[test]
            fn an_allow_never_wins_over_a_deny(
                global_deny in subset(), global_allow in subset(), team_deny in subset(), team_allow in subset(),
                readonly in any::<bool>(), default_deny in any::<bool>(), action in arbitrary_action(),
            ) {
                let build = |global_allow: &[&str], team_allow: &[&str], default| {
                    let team = TeamActions {
                        lists: lists("teams.t.actions", &team_deny, team_allow, &[]),
                        readonly,
                        ..TeamActions::default()
                    };
                    ActionPolicy::new(
                        GlobalActions { mode: Mode::Enforce, default, lists: lists("actions", &global_deny, global_allow, &[]) },
                        BTreeMap::from([(Arc::from("t"), team)]),
                    )
                };
                let teams = [Arc::from("t")];
                let default = if default_deny { Verdict::Deny } else { Verdict::Allow };
                let without_allows = build(&[], &[], Verdict::Allow).decide(&action, &teams);
                let with_allows = build(&global_allow, &team_allow, default).decide(&action, &teams);
                if without_allows.verdict == Verdict::Deny && without_allows.rule.contains(".deny[") {
                    prop_assert_eq!(with_allows.verdict, Verdict::Deny);
                    prop_assert_eq!(with_allows.rule, without_allows.rule);
                }
            }
        }
    }
}
