//! From a verified token's claims to what its principal is, the same for `auth.jwt` and `auth.oidc`: the user claim
//! names it, its groups map to teams (exact names, or globs such as `eng-*`), and its region comes from a claim, the
//! domain of its e-mail address or a group — the first that names one.

use std::collections::BTreeMap;
use std::sync::Arc;

use globset::{Glob, GlobMatcher};
use serde_json::Value;

use super::jwt::Claims;
use crate::config::file;

/// How claims become a principal.
#[derive(Debug, Default)]
pub struct ClaimMapping {
    teams: GroupMap,
    region: RegionRule,
}

/// Group name → value, by exact name first, then by the globs in key order.
#[derive(Debug, Default)]
struct GroupMap {
    exact: BTreeMap<String, Arc<str>>,
    patterns: Vec<(GlobMatcher, Arc<str>)>,
}

#[derive(Debug, Default)]
struct RegionRule {
    claim: Option<String>,
    email_domains: BTreeMap<String, Arc<str>>,
    groups: GroupMap,
}

/// A mapping key that does not compile: the section (`teams` or `region`) and the problem, naming the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingError {
    pub section: &'static str,
    pub message: String,
}

impl ClaimMapping {
    /// `auth.group_teams` for `auth.jwt`: exact group names, no region.
    pub fn exact(group_teams: &BTreeMap<String, String>) -> ClaimMapping {
        let exact = group_teams.iter().map(|(group, team)| (group.clone(), Arc::from(team.as_str()))).collect();
        ClaimMapping { teams: GroupMap { exact, patterns: Vec::new() }, region: RegionRule::default() }
    }

    /// `auth.oidc.teams` and `auth.oidc.region`.
    pub fn compile(oidc: &file::Oidc) -> Result<ClaimMapping, MappingError> {
        let teams = GroupMap::compile(&oidc.teams, "teams")?;
        let region = match &oidc.region {
            Some(region) => {
                if region.claim.as_ref().is_some_and(|c| c.is_empty()) {
                    return Err(MappingError { section: "region", message: "claim: must not be empty".into() });
                }
                for (key, value) in region.email_domains.iter().chain(&region.groups) {
                    if key.is_empty() || value.is_empty() {
                        return Err(MappingError {
                            section: "region",
                            message: format!("{key:?}: {value:?}: neither side may be empty"),
                        });
                    }
                }
                RegionRule {
                    claim: region.claim.clone(),
                    email_domains: region
                        .email_domains
                        .iter()
                        .map(|(domain, region)| (domain.to_ascii_lowercase(), Arc::from(region.as_str())))
                        .collect(),
                    groups: GroupMap::compile(&region.groups, "region")?,
                }
            }
            None => RegionRule::default(),
        };
        Ok(ClaimMapping { teams, region })
    }

    /// The teams of `claims`: those its groups map to, in the order of its groups, each once.
    pub fn teams(&self, claims: &Claims) -> Vec<Arc<str>> {
        let mut teams: Vec<Arc<str>> = Vec::new();
        for group in &claims.groups {
            for team in self.teams.lookup(group) {
                if !teams.contains(&team) {
                    teams.push(team);
                }
            }
        }
        teams
    }

    /// The region of `claims`: the claim, else the e-mail domain, else the first group that maps to one.
    pub fn region(&self, claims: &Claims) -> Option<Arc<str>> {
        let rule = &self.region;
        let from_claim = rule.claim.as_ref().and_then(|name| match claims.payload.get(name) {
            Some(Value::String(region)) if !region.is_empty() && !region.chars().any(char::is_control) => {
                Some(Arc::from(region.as_str()))
            }
            _ => None,
        });
        let email = claims.payload.get("email").and_then(Value::as_str).unwrap_or(&claims.user);
        let from_email = || {
            let (_, domain) = email.rsplit_once('@')?;
            rule.email_domains.get(&domain.to_ascii_lowercase()).cloned()
        };
        let from_group = || claims.groups.iter().find_map(|group| rule.groups.lookup(group).next());
        from_claim.or_else(from_email).or_else(from_group)
    }
}

impl GroupMap {
    fn compile(map: &BTreeMap<String, String>, section: &'static str) -> Result<GroupMap, MappingError> {
        let mut compiled = GroupMap::default();
        for (group, value) in map {
            if group.is_empty() || value.is_empty() {
                return Err(MappingError {
                    section,
                    message: format!("{group:?}: {value:?}: neither side may be empty"),
                });
            }
            let value = Arc::from(value.as_str());
            if group.contains(['*', '?', '[', '{']) {
                let glob = Glob::new(group).map_err(|error| MappingError {
                    section,
                    message: format!("{group:?}: invalid group pattern: {}", error.kind()),
                })?;
                compiled.patterns.push((glob.compile_matcher(), value));
            } else {
                compiled.exact.insert(group.clone(), value);
            }
        }
        Ok(compiled)
    }

    /// What `group` maps to: its exact entry, then every glob that matches it.
    fn lookup<'a>(&'a self, group: &'a str) -> impl Iterator<Item = Arc<str>> + 'a {
        let exact = self.exact.get(group).cloned();
        let patterns =
            self.patterns.iter().filter(move |(glob, _)| glob.is_match(group)).map(|(_, value)| value.clone());
        exact.into_iter().chain(patterns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::{Duration, UNIX_EPOCH};

    fn oidc(extra: Value) -> file::Oidc {
        let mut value = json!({"issuer": "https://idp.test", "audience": "tollgate"});
        for (key, v) in extra.as_object().expect("an object") {
            value[key] = v.clone();
        }
        serde_json::from_value(value).expect("a valid auth.oidc")
    }

    fn claims(user: &str, groups: &[&str], payload: Value) -> Claims {
        Claims {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            expires: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            payload: payload.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn groups_map_to_teams_by_exact_name_and_pattern_in_group_order() {
        let mapping = ClaimMapping::compile(&oidc(
            json!({"teams": {"grp-backend": "backend", "eng-*": "engineering", "eng-data": "data"}}),
        ))
        .unwrap();
        let claims = claims("jane", &["eng-data", "other", "grp-backend"], json!({}));
        let teams: Vec<String> = mapping.teams(&claims).iter().map(|t| t.to_string()).collect();
        assert_eq!(teams, ["data", "engineering", "backend"]);
        assert_eq!(mapping.region(&claims), None);
    }

    #[test]
    fn the_region_comes_from_the_claim_then_the_email_domain_then_a_group() {
        let mapping = ClaimMapping::compile(&oidc(json!({"region": {
            "claim": "region", "email_domains": {"EU.corp.example": "eu"}, "groups": {"region-us": "us", "geo-*": "apac"}}})))
        .unwrap();
        let region = |user: &str, groups: &[&str], payload: Value| {
            mapping.region(&claims(user, groups, payload)).map(|r| r.to_string())
        };
        assert_eq!(region("a@eu.corp.example", &["region-us"], json!({"region": "ch"})).as_deref(), Some("ch"));
        assert_eq!(region("a@eu.corp.example", &["region-us"], json!({"region": 7})).as_deref(), Some("eu"));
        assert_eq!(region("a", &[], json!({"email": "b@Eu.Corp.Example"})).as_deref(), Some("eu"));
        assert_eq!(region("a@corp.example", &["x", "region-us"], json!({})).as_deref(), Some("us"));
        assert_eq!(region("a@corp.example", &["geo-sg"], json!({})).as_deref(), Some("apac"));
        assert_eq!(region("a@corp.example", &["x"], json!({})), None);
    }

    #[test]
    fn bad_patterns_name_their_key() {
        let error = ClaimMapping::compile(&oidc(json!({"teams": {"eng-[": "engineering"}}))).unwrap_err();
        assert_eq!(error.section, "teams");
        assert!(error.message.starts_with("\"eng-[\": invalid group pattern"), "{}", error.message);
        let error = ClaimMapping::compile(&oidc(json!({"region": {"groups": {"r-*": ""}}}))).unwrap_err();
        assert_eq!(error.section, "region");
    }
}
