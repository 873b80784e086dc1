//! Where a request may go: compiled once per config, then only matched. No I/O here.
//!
//! The order is the contract: `policy.deny` → the private-address guard → `policy.allow` → `policy.default`;
//! `policy.ports` limits ports unless the allowing rule names its own. Names are decided by `decide` before any
//! DNS lookup; every address a name resolves to then goes through `check_address` before it is dialled.

mod address;
mod hours;
mod matcher;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;

pub use address::private_class;
pub use hours::Hours;
pub use matcher::{PatternError, Rule, RuleSet};

use crate::config::file;
use crate::target::{Host, Target};

/// The outcome of a policy check, naming the rule that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow { rule: Arc<str> },
    Deny { rule: Arc<str>, reason: DenyReason },
}

/// Why a destination is refused; the `reason` label of metrics and the `error.type` of responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// A deny rule matched.
    DenyRule,
    /// The (resolved) address is private: loopback, RFC 1918, link-local…
    PrivateAddress(&'static str),
    /// The port is outside `policy.ports`.
    Port,
    /// No rule matched and the default is deny.
    Default,
    /// The destination is one of tollgate's own listeners (a loop).
    SelfConnection,
    /// Outside every one of the principal's teams' hours.
    Hours,
}

impl DenyReason {
    /// The metric label for this reason.
    pub fn label(self) -> &'static str {
        match self {
            DenyReason::DenyRule => "deny_rule",
            DenyReason::PrivateAddress(_) => "private_address",
            DenyReason::Port => "port",
            DenyReason::Default => "default",
            DenyReason::SelfConnection => "self_connection",
            DenyReason::Hours => "hours",
        }
    }
}

/// The compiled destination policy.
#[derive(Debug)]
pub struct Policy {
    default_allows: bool,
    deny: RuleSet,
    allow: RuleSet,
    ports: Option<Vec<u16>>,
    private_guard: bool,
    allow_private: RuleSet,
    default_rule: Arc<str>,
    ports_rule: Arc<str>,
    private_rule: Arc<str>,
    require_sni_match: bool,
    teams: HashMap<Arc<str>, TeamPolicy, foldhash::fast::RandomState>,
}

/// One team's destinations and hours.
#[derive(Debug)]
pub struct TeamPolicy {
    allow: RuleSet,
    deny: RuleSet,
    pub hours: Option<Hours>,
    hours_rule: Arc<str>,
}

/// A policy error: the key path of the offending entry and what is wrong with it.
#[derive(Debug)]
pub struct PolicyError {
    pub path: String,
    pub message: String,
}

impl Policy {
    /// Compiles the `policy` section and the teams' `allow`, `deny` and `hours`.
    pub fn compile(policy: &file::Policy, teams: &BTreeMap<String, file::Team>) -> Result<Self, PolicyError> {
        let list = |name: &str, patterns: &[String]| {
            let path = format!("policy.{name}");
            RuleSet::compile(&path, patterns)
                .map_err(|(index, PatternError(message))| PolicyError { path: format!("{path}[{index}]"), message })
        };
        for (index, cidr) in policy.allow_private.iter().enumerate() {
            if cidr.parse::<IpNet>().is_err() && cidr.parse::<IpAddr>().is_err() {
                return Err(PolicyError {
                    path: format!("policy.allow_private[{index}]"),
                    message: format!("invalid CIDR {cidr:?}: write 10.20.0.0/16 or an IP address"),
                });
            }
        }
        if let Some(index) = policy.ports.as_ref().and_then(|ports| ports.iter().position(|&p| p == 0)) {
            return Err(PolicyError { path: format!("policy.ports[{index}]"), message: "port 0 is not a port".into() });
        }
        Ok(Self {
            default_allows: policy.default == file::Verdict::Allow,
            deny: list("deny", &policy.deny)?,
            allow: list("allow", &policy.allow)?,
            ports: policy.ports.clone(),
            private_guard: policy.private_destinations == file::Verdict::Deny,
            allow_private: list("allow_private", &policy.allow_private)?,
            default_rule: "policy.default".into(),
            ports_rule: "policy.ports".into(),
            private_rule: "policy.private_destinations".into(),
            require_sni_match: policy.require_sni_match,
            teams: compile_teams(teams)?,
        })
    }

    /// Decides on the target as named, before DNS, for a principal in `teams` at `now`. An IP literal is
    /// checked completely here; for a name, an `Allow` still needs `check_address` on every resolved address.
    ///
    /// A principal in several teams: any team's deny denies, any team's allow allows, and it is inside its
    /// hours when any of its teams is (a team without hours always is).
    pub fn decide(&self, target: &Target, teams: &[Arc<str>], now: SystemTime) -> Decision {
        if let Some(rule) = self.deny.first_match(target) {
            return Decision::Deny { rule: rule.name.clone(), reason: DenyReason::DenyRule };
        }
        // The principal's configured teams, looked up lazily: no allocation per request.
        let principal_teams = teams;
        let teams = || principal_teams.iter().filter_map(|name| self.teams.get(name));
        if let Some(rule) = teams().find_map(|team| team.deny.first_match(target)) {
            return Decision::Deny { rule: rule.name.clone(), reason: DenyReason::DenyRule };
        }
        if let Err(denied) = self.check_hours(principal_teams, now) {
            return denied;
        }
        if let Host::Ip(ip) = target.host {
            if let Some(denied) = self.private_guard(ip, target.port) {
                return denied;
            }
        }
        let allowed_by =
            self.allow.first_match(target).or_else(|| teams().find_map(|team| team.allow.first_match(target)));
        let port_named = allowed_by.is_some_and(|rule| rule.port.is_some());
        if !port_named && self.ports.as_ref().is_some_and(|ports| !ports.contains(&target.port)) {
            return Decision::Deny { rule: self.ports_rule.clone(), reason: DenyReason::Port };
        }
        match allowed_by {
            Some(rule) => Decision::Allow { rule: rule.name.clone() },
            None if self.default_allows => Decision::Allow { rule: self.default_rule.clone() },
            None => Decision::Deny { rule: self.default_rule.clone(), reason: DenyReason::Default },
        }
    }

    /// The teams' hours alone (gateway listeners, where the destination is the operator's upstream): inside
    /// when any of the principal's teams is, or when none of them has hours.
    pub fn check_hours(&self, teams: &[Arc<str>], now: SystemTime) -> Result<(), Decision> {
        let teams = || teams.iter().filter_map(|name| self.teams.get(name));
        if let Some(first) = teams().next() {
            if teams().all(|team| team.hours.as_ref().is_some_and(|hours| !hours.contains(now))) {
                return Err(Decision::Deny { rule: first.hours_rule.clone(), reason: DenyReason::Hours });
            }
        }
        Ok(())
    }

    /// Decides on an upstream the operator configured (`upstreams`: gateway listeners, routed model requests) for a
    /// principal in `teams` at `now`: the global and the teams' deny rules and the teams' hours apply; the allow
    /// lists, `policy.default` and the private-address guard do not, since the operator chose the upstream (as
    /// for the parent proxy).
    pub fn check_upstream(&self, target: &Target, teams: &[Arc<str>], now: SystemTime) -> Result<(), Decision> {
        let team_denies = teams.iter().filter_map(|name| self.teams.get(name)).map(|team| &team.deny);
        for deny in std::iter::once(&self.deny).chain(team_denies) {
            if let Some(rule) = deny.first_match(target) {
                return Err(Decision::Deny { rule: rule.name.clone(), reason: DenyReason::DenyRule });
            }
        }
        self.check_hours(teams, now)
    }

    /// Checks one resolved address of a configured upstream: the global and the teams' deny CIDRs only.
    pub fn check_upstream_address(&self, ip: IpAddr, port: u16, teams: &[Arc<str>]) -> Result<(), Decision> {
        let ip = ip.to_canonical();
        let team_denies = teams.iter().filter_map(|name| self.teams.get(name)).map(|team| &team.deny);
        for deny in std::iter::once(&self.deny).chain(team_denies) {
            if let Some(rule) = deny.first_network_match(ip, port) {
                return Err(Decision::Deny { rule: rule.name.clone(), reason: DenyReason::DenyRule });
            }
        }
        Ok(())
    }

    /// Checks one resolved address of an allowed name for a principal in `teams`: the global and the teams'
    /// deny CIDRs, then the private-address guard.
    pub fn check_address(&self, ip: IpAddr, port: u16, teams: &[Arc<str>]) -> Result<(), Decision> {
        self.check_upstream_address(ip, port, teams)?;
        let ip = ip.to_canonical();
        match self.private_guard(ip, port) {
            Some(denied) => Err(denied),
            None => Ok(()),
        }
    }

    fn private_guard(&self, ip: IpAddr, port: u16) -> Option<Decision> {
        if !self.private_guard {
            return None;
        }
        let class = private_class(ip)?;
        if self.allow_private.first_network_match(ip, port).is_some() {
            return None;
        }
        Some(Decision::Deny { rule: self.private_rule.clone(), reason: DenyReason::PrivateAddress(class) })
    }

    /// Whether pass-through tunnels must open with a ClientHello naming the CONNECT host.
    pub fn requires_sni_match(&self) -> bool {
        self.require_sni_match
    }

    /// Number of allow and deny rules (teams' included), for `tollgate check`'s summary.
    pub fn rule_count(&self) -> usize {
        self.allow.len() + self.deny.len() + self.teams.values().map(|t| t.allow.len() + t.deny.len()).sum::<usize>()
    }

    /// A team's compiled policy, for `tollgate explain`.
    pub fn team(&self, name: &str) -> Option<&TeamPolicy> {
        self.teams.get(name)
    }
}

fn compile_teams(
    teams: &BTreeMap<String, file::Team>,
) -> Result<HashMap<Arc<str>, TeamPolicy, foldhash::fast::RandomState>, PolicyError> {
    let mut compiled = HashMap::with_capacity_and_hasher(teams.len(), Default::default());
    for (name, team) in teams {
        let list = |key: &str, patterns: &[String]| {
            let path = format!("teams.{name}.{key}");
            RuleSet::compile(&path, patterns)
                .map_err(|(index, PatternError(message))| PolicyError { path: format!("{path}[{index}]"), message })
        };
        let hours = match &team.hours {
            Some(hours) => Some(
                Hours::compile(hours)
                    .map_err(|(key, message)| PolicyError { path: format!("teams.{name}.hours.{key}"), message })?,
            ),
            None => None,
        };
        let policy = TeamPolicy {
            allow: list("allow", &team.allow)?,
            deny: list("deny", &team.deny)?,
            hours,
            hours_rule: format!("teams.{name}.hours").into(),
        };
        compiled.insert(Arc::from(name.as_str()), policy);
    }
    Ok(compiled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Policy {
        let node = crate::config::yaml::parse(yaml).unwrap();
        let file: file::Policy = crate::config::yaml::deserialize(&node, &|_| None).unwrap();
        Policy::compile(&file, &BTreeMap::new()).unwrap()
    }

    fn decide(policy: &Policy, authority: &str) -> Decision {
        policy.decide(&Target::parse_authority(authority).unwrap(), &[], SystemTime::now())
    }

    fn rule(decision: &Decision) -> &str {
        match decision {
            Decision::Allow { rule } | Decision::Deny { rule, .. } => rule,
        }
    }

    #[test]
    fn deny_beats_allow_and_default_decides_the_rest() {
        let p = policy("default: deny\nallow: ['*.example.com']\ndeny: ['bad.example.com']\n");
        assert_eq!(rule(&decide(&p, "bad.example.com:443")), "policy.deny[0]");
        assert_eq!(decide(&p, "ok.example.com:443"), Decision::Allow { rule: "policy.allow[0]".into() });
        assert_eq!(rule(&decide(&p, "example.org:443")), "policy.default");
    }

    #[test]
    fn private_literals_are_denied_unless_allowed_private() {
        let p = policy("default: allow\n");
        for target in ["127.0.0.1:22", "[::1]:443", "0.0.0.0:80", "[::ffff:127.0.0.1]:443", "169.254.169.254:80"] {
            assert!(
                matches!(decide(&p, target), Decision::Deny { reason: DenyReason::PrivateAddress(_), .. }),
                "{target}"
            );
        }
        let p = policy("default: allow\nallow_private: ['127.0.0.0/8']\n");
        assert!(matches!(decide(&p, "127.0.0.1:22"), Decision::Allow { .. }));
        assert!(p.check_address("127.0.0.2".parse().unwrap(), 1, &[]).is_ok());
        assert!(p.check_address("10.0.0.1".parse().unwrap(), 1, &[]).is_err());
    }

    #[test]
    fn ports_limit_unless_the_rule_names_one() {
        let p = policy("default: deny\nports: [443]\nallow: ['a.com', 'b.com:8443']\n");
        assert!(matches!(decide(&p, "a.com:443"), Decision::Allow { .. }));
        assert_eq!(rule(&decide(&p, "a.com:22")), "policy.ports");
        assert!(matches!(decide(&p, "b.com:8443"), Decision::Allow { .. }));
    }

    #[test]
    fn deny_cidrs_apply_to_resolved_addresses() {
        let p = policy("default: allow\ndeny: ['203.0.113.0/24']\n");
        assert!(p.check_address("203.0.113.9".parse().unwrap(), 443, &[]).is_err());
        assert!(p.check_address("198.51.100.1".parse().unwrap(), 443, &[]).is_ok());
    }
}
