//! `actions` and each team's `readonly`, `blocked_file_patterns` and `actions`, compiled into the policy agent
//! actions are decided by (`actions::rules`) and the tool table that turns tool calls into actions
//! (`actions::tools`).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::file;
use crate::actions::rules::{self, ActionPolicy, GlobalActions, Lists, Mode, RuleError, TeamActions};
use crate::actions::tools::{Kind, Tools};

/// The compiled agent-action settings.
#[derive(Debug, Clone, Default)]
pub struct Actions {
    pub policy: ActionPolicy,
    /// Claude Code's tools and those `actions.tools` names.
    pub tools: Tools,
    /// The largest `tool_use` block held back while it is decided, in bytes.
    pub max_block_bytes: u64,
}

/// The bounds of `actions.max_block_bytes`: a tool call larger than a kibibyte is common; one of a gibibyte held
/// in memory is not.
const MAX_BLOCK_BYTES_MIN: u64 = 1 << 10;
const MAX_BLOCK_BYTES_MAX: u64 = 1 << 30;

/// Compiles `actions` and the teams' action settings; an error is a key path and a message.
pub(super) fn compile(
    actions: &file::Actions,
    teams: &BTreeMap<String, file::Team>,
) -> Result<Actions, (String, String)> {
    let located = |error: RuleError| (error.key, error.message);
    let global = GlobalActions {
        mode: mode(actions.mode),
        default: match actions.default {
            file::Verdict::Allow => rules::Verdict::Allow,
            file::Verdict::Deny => rules::Verdict::Deny,
        },
        lists: Lists::compile("actions", &actions.deny, &actions.allow, &actions.alert).map_err(located)?,
    };
    let mut compiled = BTreeMap::new();
    for (name, team) in teams {
        let own = team.actions.as_ref();
        let empty = file::TeamActions::default();
        let lists = own.unwrap_or(&empty);
        let team_actions = TeamActions {
            mode: own.and_then(|actions| actions.mode).map(mode),
            lists: Lists::compile(&format!("teams.{name}.actions"), &lists.deny, &lists.allow, &lists.alert)
                .map_err(located)?,
            readonly: team.readonly,
            blocked_files: TeamActions::blocked_files(
                &format!("teams.{name}.blocked_file_patterns"),
                &team.blocked_file_patterns,
            )
            .map_err(located)?,
        };
        compiled.insert(Arc::from(name.as_str()), team_actions);
    }

    let mut tools = BTreeMap::new();
    for (tool, action) in &actions.tools {
        let Some(kind) = Kind::named(action) else {
            let known: Vec<&str> = Kind::NAMED.iter().map(|(name, _)| *name).collect();
            return Err((
                format!("actions.tools.{tool}"),
                format!("unknown action {action:?} (one of {})", known.join(", ")),
            ));
        };
        tools.insert(tool.clone(), kind);
    }

    let max_block_bytes = actions.max_block_bytes.0;
    if !(MAX_BLOCK_BYTES_MIN..=MAX_BLOCK_BYTES_MAX).contains(&max_block_bytes) {
        return Err((
            "actions.max_block_bytes".to_owned(),
            format!("must be between {MAX_BLOCK_BYTES_MIN} and {MAX_BLOCK_BYTES_MAX} bytes"),
        ));
    }
    Ok(Actions { policy: ActionPolicy::new(global, compiled), tools: Tools::new(tools), max_block_bytes })
}

fn mode(mode: file::ActionMode) -> Mode {
    match mode {
        file::ActionMode::Enforce => Mode::Enforce,
        file::ActionMode::Observe => Mode::Observe,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::super::Config;
    use crate::actions::rules::Verdict;

    fn load(text: &str) -> Result<Config, String> {
        let text = format!("listeners: [{{name: p, bind: '127.0.0.1:0'}}]\npolicy: {{default: deny}}\n{text}");
        Config::from_text(&text, Path::new("t.yaml"), &|_| None).map_err(|e| e.to_string())
    }

    #[test]
    fn the_documented_config_compiles_into_the_policy_and_the_tool_table() {
        let config = load(
            "actions:
  mode: enforce
  default: allow
  deny: [\"file:read:/etc/passwd\", \"file:*:**/secrets/**\", \"bash:run:curl http://*\"]
  allow: []
  alert: [\"file:read:**/.env\", \"bash:run:kubectl *\"]
  tools: {shell: bash:run, apply_patch: file:write}
  max_block_bytes: 4MiB
teams:
  interns:
    readonly: true
    blocked_file_patterns: [\"**/*.pem\", \"**/*.key\"]
    actions: {mode: observe, deny: [\"mcp:call:*\"], allow: [\"bash:run:ls *\"], alert: [\"web:fetch\"]}
",
        )
        .unwrap();
        let actions = &config.actions;
        assert_eq!(actions.max_block_bytes, 4 << 20);
        let shell = actions.tools.action("shell", &json!({"command": "curl http://x"}));
        let decision = actions.policy.decide(&shell, &[]);
        assert_eq!(
            (decision.verdict, decision.rule.as_ref()),
            (Verdict::Deny, "actions.deny[2] bash:run:curl http://*")
        );
        let patch = actions.tools.action("apply_patch", &json!({"path": "/r/a.rs"}));
        let interns = [std::sync::Arc::from("interns")];
        let decision = actions.policy.decide(&patch, &interns);
        assert_eq!((decision.verdict, decision.rule.as_ref()), (Verdict::Allow, "teams.interns.readonly"));
        assert!(decision.would_deny);
        let key = actions.tools.action("Read", &json!({"file_path": "/srv/tls.key"}));
        assert_eq!(
            actions.policy.decide(&key, &interns).rule.as_ref(),
            "teams.interns.blocked_file_patterns[1] **/*.key"
        );
    }

    #[test]
    fn no_actions_section_allows_everything() {
        let config = load("").unwrap();
        assert!(config.actions.policy.allows_everything());
        assert_eq!(config.actions.max_block_bytes, 4 << 20);
    }

    #[test]
    fn mistakes_are_named_by_their_key() {
        let error = |text: &str| load(text).unwrap_err();
        assert_eq!(
            error("actions:\n  deny: [ok, \"file:read:/a\"]\n"),
            "t.yaml:4:10: actions.deny[0]: unknown action \"ok\" (one of file:read, file:write, file:*, bash:run, \
             web:fetch, mcp:call, agent:spawn, tool:NAME, *)"
        );
        assert_eq!(
            error("actions:\n  tools: {shell: bash:exec}\n"),
            "t.yaml:4:18: actions.tools.shell: unknown action \"bash:exec\" (one of file:read, file:write, bash:run, \
             web:fetch, mcp:call, agent:spawn)"
        );
        assert_eq!(
            error("actions:\n  max_block_bytes: 12\n"),
            "t.yaml:4:20: actions.max_block_bytes: must be between 1024 and 1073741824 bytes"
        );
        assert_eq!(
            error("teams:\n  t:\n    blocked_file_patterns: [\"**/*.pem\", \"*.key\"]\n"),
            "t.yaml:5:41: teams.t.blocked_file_patterns[1]: file pattern \"*.key\" is relative, and tool paths are \
             absolute: write \"/…\" or \"**/*.key\""
        );
        assert_eq!(
            error("teams:\n  t:\n    actions: {default: deny}\n"),
            "t.yaml:5:15: teams.t.actions.default: unknown key `default`: allowed keys are mode, deny, allow, alert"
        );
        assert_eq!(
            error("actions:\n  mode: audit\n"),
            "t.yaml:4:9: actions.mode: expected one of enforce | observe, found \"audit\""
        );
    }
}
