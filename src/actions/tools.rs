//! The tool table: a tool call (name and JSON input) becomes an `Action` — what it does (`file:read`,
//! `bash:run`, …) and on what (a path, a command, a URL, an MCP server and tool). Claude Code's tools are built
//! in; `actions.tools` adds names for other agents.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// What kind of thing a tool call does; the first two parts of an action name (`file:read`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    FileRead,
    FileWrite,
    BashRun,
    WebFetch,
    McpCall,
    AgentSpawn,
    /// Any other tool: `tool:NAME`.
    Tool,
}

impl Kind {
    /// The kinds a config may name (`actions.tools` values), with their names.
    pub const NAMED: [(&'static str, Kind); 6] = [
        ("file:read", Kind::FileRead),
        ("file:write", Kind::FileWrite),
        ("bash:run", Kind::BashRun),
        ("web:fetch", Kind::WebFetch),
        ("mcp:call", Kind::McpCall),
        ("agent:spawn", Kind::AgentSpawn),
    ];

    /// The kind named `name` (`file:read`, …); `tool` kinds are not named this way.
    pub fn named(name: &str) -> Option<Kind> {
        Kind::NAMED.iter().find(|(known, _)| *known == name).map(|(_, kind)| *kind)
    }

    /// `file`, `bash`, `web`, `mcp`, `agent` or `tool`.
    pub fn family(self) -> &'static str {
        match self {
            Kind::FileRead | Kind::FileWrite => "file",
            Kind::BashRun => "bash",
            Kind::WebFetch => "web",
            Kind::McpCall => "mcp",
            Kind::AgentSpawn => "agent",
            Kind::Tool => "tool",
        }
    }

    /// `read`, `write`, `run`, `fetch`, `call`, `spawn`; for `Kind::Tool` the tool's name is the verb.
    pub fn verb(self) -> Option<&'static str> {
        match self {
            Kind::FileRead => Some("read"),
            Kind::FileWrite => Some("write"),
            Kind::BashRun => Some("run"),
            Kind::WebFetch => Some("fetch"),
            Kind::McpCall => Some("call"),
            Kind::AgentSpawn => Some("spawn"),
            Kind::Tool => None,
        }
    }
}

/// One tool call as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub kind: Kind,
    /// The tool's name as the model wrote it (`Read`, `mcp__jira__create_issue`).
    pub tool: String,
    /// What it acts on, as the input gave it: a file path, a command, a URL or search query, `SERVER/TOOL` for
    /// MCP, a subagent type; `None` when the input names nothing (or is not a JSON object).
    pub target: Option<String>,
}

impl Action {
    /// The action's name: `file:read`, …, `tool:NAME` (the metric label and the audit `action` field).
    pub fn name(&self) -> String {
        match self.kind.verb() {
            Some(verb) => format!("{}:{verb}", self.kind.family()),
            None => format!("tool:{}", self.tool),
        }
    }
}

impl Action {
    /// The target as records and messages show it: a file path normalised (`/repo/src/../a` reads `/repo/a`),
    /// any other target as given.
    pub fn canonical_target(&self) -> Option<String> {
        let target = self.target.as_deref()?;
        Some(match self.kind {
            Kind::FileRead | Kind::FileWrite => super::paths::normalise_path(target).path,
            _ => target.to_owned(),
        })
    }

    /// The same action with its target in canonical form.
    pub fn canonical(&self) -> Action {
        Action { target: self.canonical_target(), ..self.clone() }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Some(target) => write!(formatter, "{}:{target}", self.name()),
            None => formatter.write_str(&self.name()),
        }
    }
}

/// Tool names mapped to kinds: Claude Code's built in, `actions.tools` added (and able to override).
#[derive(Debug, Clone, Default)]
pub struct Tools {
    extra: BTreeMap<String, Kind>,
}

/// Claude Code's tools and the input field that names their target (seen on the wire and in its
/// `sdk-tools.d.ts`). Glob and Grep read files below `path`.
const BUILT_IN: [(&str, Kind, &[&str]); 13] = [
    ("Read", Kind::FileRead, &["file_path"]),
    ("Glob", Kind::FileRead, &["path"]),
    ("Grep", Kind::FileRead, &["path"]),
    ("Write", Kind::FileWrite, &["file_path"]),
    ("Edit", Kind::FileWrite, &["file_path"]),
    ("MultiEdit", Kind::FileWrite, &["file_path"]),
    ("NotebookEdit", Kind::FileWrite, &["notebook_path", "file_path"]),
    ("Bash", Kind::BashRun, &["command"]),
    ("WebFetch", Kind::WebFetch, &["url"]),
    ("WebSearch", Kind::WebFetch, &["query"]),
    ("Task", Kind::AgentSpawn, &["subagent_type", "description"]),
    ("Agent", Kind::AgentSpawn, &["subagent_type", "description"]),
    ("NotebookRead", Kind::FileRead, &["notebook_path", "file_path"]),
];

/// The input fields tried, in order, for the target of a kind added by `actions.tools`.
fn target_fields(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::FileRead | Kind::FileWrite => &["file_path", "path", "notebook_path", "filename"],
        Kind::BashRun => &["command", "cmd"],
        Kind::WebFetch => &["url", "query"],
        Kind::AgentSpawn => &["subagent_type", "description"],
        Kind::McpCall | Kind::Tool => &[],
    }
}

impl Tools {
    /// The built-in table plus `extra` (tool name → kind), which wins over a built-in name.
    pub fn new(extra: BTreeMap<String, Kind>) -> Self {
        Self { extra }
    }

    /// The action of a call to `tool` with `input`.
    pub fn action(&self, tool: &str, input: &Value) -> Action {
        let (kind, fields) = match self.extra.get(tool) {
            Some(kind) => (*kind, target_fields(*kind)),
            None => match BUILT_IN.iter().find(|(name, _, _)| *name == tool) {
                Some((_, kind, fields)) => (*kind, *fields),
                None => match mcp_parts(tool) {
                    Some((server, name)) => {
                        let target = Some(format!("{server}/{name}"));
                        return Action { kind: Kind::McpCall, tool: tool.to_owned(), target };
                    }
                    None => (Kind::Tool, &[][..]),
                },
            },
        };
        let target = fields.iter().find_map(|field| input.get(field).and_then(text));
        let target = match (kind, target) {
            (Kind::McpCall, None) => mcp_parts(tool).map(|(server, name)| format!("{server}/{name}")),
            (_, target) => target,
        };
        Action { kind, tool: tool.to_owned(), target }
    }
}

/// A string field's text; numbers and other shapes name no target.
fn text(value: &Value) -> Option<String> {
    value.as_str().map(str::to_owned)
}

/// `mcp__SERVER__TOOL` → (SERVER, TOOL). A server name may itself hold `_`; the tool is after the last `__`.
fn mcp_parts(tool: &str) -> Option<(&str, &str)> {
    let rest = tool.strip_prefix("mcp__")?;
    let (server, name) = rest.rsplit_once("__")?;
    (!server.is_empty() && !name.is_empty()).then_some((server, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn action(tool: &str, input: Value) -> Action {
        Tools::default().action(tool, &input)
    }

    #[test]
    fn claude_code_tools_map_to_their_actions_and_targets() {
        let read = action("Read", json!({"file_path": "/etc/passwd", "limit": 10}));
        assert_eq!((read.name(), read.target.as_deref()), ("file:read".into(), Some("/etc/passwd")));
        let write = action("Edit", json!({"file_path": "/r/a.rs", "old_string": "x", "new_string": "y"}));
        assert_eq!(write.to_string(), "file:write:/r/a.rs");
        assert_eq!(action("Bash", json!({"command": "ls -la", "description": "list"})).to_string(), "bash:run:ls -la");
        assert_eq!(
            action("WebFetch", json!({"url": "https://x.example/a"})).to_string(),
            "web:fetch:https://x.example/a"
        );
        assert_eq!(action("WebSearch", json!({"query": "rust"})).to_string(), "web:fetch:rust");
        assert_eq!(
            action("Task", json!({"subagent_type": "general-purpose"})).to_string(),
            "agent:spawn:general-purpose"
        );
        assert_eq!(action("Grep", json!({"pattern": "x"})).to_string(), "file:read");
    }

    #[test]
    fn mcp_tools_name_their_server_and_tool() {
        assert_eq!(action("mcp__jira__create_issue", json!({})).to_string(), "mcp:call:jira/create_issue");
        assert_eq!(action("mcp__my_server__do__it", json!({})).to_string(), "mcp:call:my_server__do/it");
        assert_eq!(action("mcp__", json!({})).to_string(), "tool:mcp__");
    }

    #[test]
    fn unknown_tools_are_tool_actions_and_config_can_name_them() {
        assert_eq!(action("Frobnicate", json!({"x": 1})).to_string(), "tool:Frobnicate");
        let tools =
            Tools::new(BTreeMap::from([("shell".to_owned(), Kind::BashRun), ("Read".to_owned(), Kind::FileWrite)]));
        assert_eq!(tools.action("shell", &json!({"cmd": "rm -rf /"})).to_string(), "bash:run:rm -rf /");
        assert_eq!(tools.action("Read", &json!({"file_path": "/a"})).to_string(), "file:write:/a");
    }

    #[test]
    fn inputs_of_the_wrong_shape_name_no_target() {
        assert_eq!(action("Read", json!({"file_path": 7})).target, None);
        assert_eq!(action("Bash", json!("ls")).target, None);
    }
}
