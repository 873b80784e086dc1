//! `admin.scim` compiled: the SCIM token, how provisioned groups map to teams, and whether tokens and certificates
//! must name a provisioned user. The provisioning itself is `crate::scim`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::file;

/// `admin.scim` compiled.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The bearer token the identity provider presents.
    pub token: String,
    /// Group display names (lower-cased) → team names.
    pub groups: BTreeMap<String, Arc<str>>,
    /// The configured team names (lower-cased → as written): a group of the same name joins it.
    pub teams: HashMap<String, Arc<str>>,
    pub require_provisioned: bool,
}

impl Settings {
    /// Compiles `admin.scim`; the error is the key path and the problem.
    pub fn compile(scim: &file::Scim, teams: &BTreeMap<String, file::Team>) -> Result<Settings, (String, String)> {
        if scim.token.len() < 32 {
            return Err(("admin.scim.token".into(), "must be at least 32 characters (a random secret)".into()));
        }
        let mut groups = BTreeMap::new();
        for (group, team) in &scim.groups {
            if !teams.contains_key(team) {
                return Err((
                    format!("admin.scim.groups.{group}"),
                    format!("team {team:?} is not defined under teams"),
                ));
            }
            groups.insert(group.to_lowercase(), Arc::from(team.as_str()));
        }
        Ok(Settings {
            token: scim.token.clone(),
            groups,
            teams: teams.keys().map(|team| (team.to_lowercase(), Arc::from(team.as_str()))).collect(),
            require_provisioned: scim.require_provisioned,
        })
    }

    /// The team a group of `display_name` joins: the mapped one, else the team of the same name (any case).
    pub fn team_of(&self, display_name: &str) -> Option<Arc<str>> {
        let lower = display_name.to_lowercase();
        self.groups.get(&lower).or_else(|| self.teams.get(&lower)).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_join_the_mapped_team_or_the_team_of_their_name() {
        let teams: BTreeMap<String, file::Team> =
            serde_json::from_value(serde_json::json!({"eu-devs": {}, "Platform": {}})).unwrap();
        let scim = file::Scim {
            token: "t".repeat(32),
            groups: [("Engineering-EU".to_owned(), "eu-devs".to_owned())].into(),
            require_provisioned: false,
        };
        let settings = Settings::compile(&scim, &teams).unwrap();
        assert_eq!(settings.team_of("engineering-eu").as_deref(), Some("eu-devs"));
        assert_eq!(settings.team_of("platform").as_deref(), Some("Platform"));
        assert_eq!(settings.team_of("Sales"), None);
        let short = file::Scim { token: "short".into(), groups: BTreeMap::new(), require_provisioned: false };
        assert_eq!(Settings::compile(&short, &teams).unwrap_err().0, "admin.scim.token");
        let unknown = file::Scim { groups: [("G".to_owned(), "nope".to_owned())].into(), ..scim };
        assert_eq!(Settings::compile(&unknown, &teams).unwrap_err().0, "admin.scim.groups.G");
    }
}
