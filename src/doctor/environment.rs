//! What Claude Code would run with: the process environment, overridden by the `env` blocks of its settings files
//! (user `~/.claude/settings.json`, then the managed settings file, which wins over everything).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The managed settings file Claude Code reads on this operating system.
pub fn default_managed_settings() -> PathBuf {
    if cfg!(target_os = "macos") {
        PathBuf::from("/Library/Application Support/ClaudeCode/managed-settings.json")
    } else {
        PathBuf::from("/etc/claude-code/managed-settings.json")
    }
}

/// One variable and where its value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub value: String,
    /// `the environment`, or the settings file whose `env` block set it.
    pub source: String,
}

/// A settings file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub path: PathBuf,
    pub problem: String,
}

/// The variables Claude Code would see.
#[derive(Debug, Default)]
pub struct Environment {
    values: BTreeMap<String, Setting>,
    /// The settings files read (present and valid).
    pub read: Vec<PathBuf>,
    /// Settings files present but unusable: Claude Code would report them too.
    pub unreadable: Vec<Unreadable>,
}

impl Environment {
    /// `process` (the environment), then the `env` blocks of `~/.claude/settings.json` under `home` and of
    /// `managed`, each overriding what came before.
    pub fn read(process: impl IntoIterator<Item = (String, String)>, home: Option<&Path>, managed: &Path) -> Self {
        let mut environment = Environment::default();
        for (name, value) in process {
            environment.values.insert(name, Setting { value, source: "the environment".to_owned() });
        }
        let user = home.map(|home| home.join(".claude").join("settings.json"));
        for path in user.iter().map(PathBuf::as_path).chain([managed]) {
            environment.apply(path);
        }
        environment
    }

    /// The value of `name`, if set (an empty value counts as unset, as Claude Code reads it).
    pub fn get(&self, name: &str) -> Option<&Setting> {
        self.values.get(name).filter(|setting| !setting.value.is_empty())
    }

    /// The first of `names` that is set, with its name.
    pub fn first<'a>(&self, names: &[&'a str]) -> Option<(&'a str, &Setting)> {
        names.iter().find_map(|name| self.get(name).map(|setting| (*name, setting)))
    }

    fn apply(&mut self, path: &Path) {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return,
            Err(error) => {
                self.unreadable.push(Unreadable { path: path.to_owned(), problem: error.to_string() });
                return;
            }
        };
        let parsed: serde_json::Value = match serde_json::from_str(&text) {
            Ok(parsed) => parsed,
            Err(error) => {
                self.unreadable.push(Unreadable { path: path.to_owned(), problem: format!("not JSON: {error}") });
                return;
            }
        };
        self.read.push(path.to_owned());
        let Some(env) = parsed.get("env") else { return };
        let Some(env) = env.as_object() else {
            let problem = "`env` is not an object of names to strings".to_owned();
            self.unreadable.push(Unreadable { path: path.to_owned(), problem });
            return;
        };
        for (name, value) in env {
            let value = match value {
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            let source = format!("{} (env)", path.display());
            self.values.insert(name.clone(), Setting { value, source });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_env_blocks_override_the_environment_and_managed_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".claude")).unwrap();
        std::fs::write(
            dir.path().join(".claude/settings.json"),
            r#"{"env": {"HTTPS_PROXY": "http://user-file:1", "NO_PROXY": "x"}}"#,
        )
        .unwrap();
        let managed = dir.path().join("managed.json");
        std::fs::write(&managed, r#"{"env": {"HTTPS_PROXY": "http://managed:2"}}"#).unwrap();
        let process = [("HTTPS_PROXY".to_owned(), "http://shell:3".to_owned()), ("A".to_owned(), "b".to_owned())];
        let environment = Environment::read(process, Some(dir.path()), &managed);
        assert_eq!(environment.get("HTTPS_PROXY").unwrap().value, "http://managed:2");
        assert!(environment.get("HTTPS_PROXY").unwrap().source.contains("managed.json"));
        assert_eq!(environment.get("NO_PROXY").unwrap().value, "x");
        assert_eq!(environment.get("A").unwrap().source, "the environment");
        assert!(environment.unreadable.is_empty());
    }

    #[test]
    fn a_broken_settings_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let managed = dir.path().join("managed.json");
        std::fs::write(&managed, "{not json").unwrap();
        let environment = Environment::read([], None, &managed);
        assert_eq!(environment.unreadable.len(), 1);
        assert!(environment.unreadable[0].problem.starts_with("not JSON"));
    }
}
