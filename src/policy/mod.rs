//! Where a request may go: compiled once per config, then only matched. No I/O here.
//!
//! The order is the contract: `policy.deny` → the private-address guard → `policy.allow` → `policy.default`;
//! `policy.ports` limits ports unless the allowing rule names its own. Names are decided by `decide` before any
//! DNS lookup; every address a name resolves to then goes through `check_address` before it is dialled.

mod address;
mod matcher;

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

pub use address::private_class;
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
}

/// A policy error: the key path of the offending entry and what is wrong with it.
#[derive(Debug)]
pub struct PolicyError {
    pub path: String,
    pub message: String,
}

impl Policy {
    /// Compiles the `policy` section.
    pub fn compile(policy: &file::Policy) -> Result<Self, PolicyError> {
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
        })
    }

    /// Decides on the target as named, before DNS. An IP literal is checked completely here; for a name,
    /// an `Allow` still needs `check_address` on every resolved address.
    pub fn decide(&self, target: &Target) -> Decision {
        if let Some(rule) = self.deny.first_match(target) {
            return Decision::Deny { rule: rule.name.clone(), reason: DenyReason::DenyRule };
        }
        if let Host::Ip(ip) = target.host {
            if let Some(denied) = self.private_guard(ip, target.port) {
                return denied;
            }
        }
        let allowed_by = self.allow.first_match(target);
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

    /// Checks one resolved address of an allowed name: deny CIDRs, then the private-address guard.
    pub fn check_address(&self, ip: IpAddr, port: u16) -> Result<(), Decision> {
        let ip = ip.to_canonical();
        if let Some(rule) = self.deny.first_network_match(ip, port) {
            return Err(Decision::Deny { rule: rule.name.clone(), reason: DenyReason::DenyRule });
        }
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

    /// Number of allow and deny rules, for `tollgate check`'s summary.
    pub fn rule_count(&self) -> usize {
        self.allow.len() + self.deny.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Policy {
        let node = crate::config::yaml::parse(yaml).unwrap();
        let file: file::Policy = crate::config::yaml::deserialize(&node, &|_| None).unwrap();
        Policy::compile(&file).unwrap()
    }

    fn decide(policy: &Policy, authority: &str) -> Decision {
        policy.decide(&Target::parse_authority(authority).unwrap())
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
        assert!(p.check_address("127.0.0.2".parse().unwrap(), 1).is_ok());
        assert!(p.check_address("10.0.0.1".parse().unwrap(), 1).is_err());
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
        assert!(p.check_address("203.0.113.9".parse().unwrap(), 443).is_err());
        assert!(p.check_address("198.51.100.1".parse().unwrap(), 443).is_ok());
    }
}
