//! Destination patterns compiled for matching: exact names, `*.suffix` globs, inner globs, IPs and CIDRs.
//!
//! A pattern list compiles once into hash maps keyed by name, by domain suffix and by masked network, so a lookup
//! costs a handful of hash probes however many rules there are. When several rules match, the one written first
//! wins, as the policy semantics say.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use regex::RegexSet;

use crate::target::{normalise_host, parse_port, Host, Target, TargetError};

/// The maps a lookup probes on every request: keyed by names and networks from the configuration (a request
/// only looks up, never inserts), so a fast hash rather than SipHash.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One rule of a list, as named in responses, logs and audit records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Where the rule was written, e.g. `policy.allow[2]`.
    pub name: Arc<str>,
    /// The port the rule names, if any.
    pub port: Option<u16>,
}

/// A compiled list of destination patterns.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    exact: Map<Box<str>, Vec<usize>>,
    suffixes: Map<Box<str>, Vec<usize>>,
    /// Inner globs, bucketed by the literal domain after their last wildcard label, so a name is only
    /// matched against the globs that could fit it.
    globs: Map<Box<str>, (RegexSet, Vec<usize>)>,
    networks: Networks,
}

/// Why a pattern does not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError(pub String);

impl RuleSet {
    /// Compiles `patterns`; `list` names the list for rule names (`policy.allow`).
    pub fn compile(list: &str, patterns: &[String]) -> Result<Self, (usize, PatternError)> {
        let mut set = RuleSet::default();
        let mut glob_sources: HashMap<Box<str>, Vec<(String, usize)>> = HashMap::new();
        for (index, text) in patterns.iter().enumerate() {
            let pattern = Pattern::parse(text).map_err(|e| (index, e))?;
            let rule_index = set.rules.len();
            set.rules.push(Rule { name: format!("{list}[{index}]").into(), port: pattern.port() });
            match pattern {
                Pattern::Exact(name, _) => set.exact.entry(name).or_default().push(rule_index),
                Pattern::Suffix(suffix, _) => set.suffixes.entry(suffix).or_default().push(rule_index),
                Pattern::Glob { regex, suffix, .. } => {
                    glob_sources.entry(suffix).or_default().push((regex, rule_index))
                }
                Pattern::Network(net, _) => set.networks.insert(net, rule_index),
            }
        }
        for (suffix, sources) in glob_sources {
            let regexes = RegexSet::new(sources.iter().map(|(source, _)| source))
                .map_err(|e| (sources[0].1, PatternError(e.to_string())))?;
            set.globs.insert(suffix, (regexes, sources.into_iter().map(|(_, index)| index).collect()));
        }
        Ok(set)
    }

    /// The first rule matching the target's host and port.
    pub fn first_match(&self, target: &Target) -> Option<&Rule> {
        let mut best: Option<usize> = None;
        let mut consider = |indices: &[usize]| {
            for &index in indices {
                if best.is_some_and(|b| b <= index) {
                    break;
                }
                if self.rules[index].port.is_none_or(|port| port == target.port) {
                    best = Some(index);
                    break;
                }
            }
        };
        match &target.host {
            Host::Name(name) => {
                if let Some(indices) = self.exact.get(name) {
                    consider(indices);
                }
                let mut rest: &str = name;
                loop {
                    if let Some((regexes, indices)) = self.globs.get(rest) {
                        for matched in regexes.matches(name).iter() {
                            consider(&indices[matched..=matched]);
                        }
                    }
                    let Some(dot) = rest.find('.') else { break };
                    rest = &rest[dot + 1..];
                    if let Some(indices) = self.suffixes.get(rest) {
                        consider(indices);
                    }
                }
                if let Some((regexes, indices)) = self.globs.get("") {
                    for matched in regexes.matches(name).iter() {
                        consider(&indices[matched..=matched]);
                    }
                }
            }
            Host::Ip(ip) => self.networks.each_match(*ip, &mut consider),
        }
        best.map(|index| &self.rules[index])
    }

    /// The first CIDR or IP rule containing `ip` (for resolved addresses), any port.
    pub fn first_network_match(&self, ip: IpAddr, port: u16) -> Option<&Rule> {
        self.first_match(&Target { host: Host::Ip(ip), port })
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// CIDRs grouped by prefix length, each group a hash map of the masked network address.
#[derive(Debug, Default)]
struct Networks {
    by_prefix: Vec<(u8, bool, Map<IpAddr, Vec<usize>>)>,
}

impl Networks {
    fn insert(&mut self, net: IpNet, rule_index: usize) {
        let is_v4 = matches!(net, IpNet::V4(_));
        let prefix = net.prefix_len();
        let position = self.by_prefix.iter().position(|(p, v4, _)| *p == prefix && *v4 == is_v4);
        let group = match position {
            Some(i) => &mut self.by_prefix[i].2,
            None => {
                self.by_prefix.push((prefix, is_v4, Map::default()));
                &mut self.by_prefix.last_mut().expect("just pushed").2
            }
        };
        group.entry(net.network()).or_default().push(rule_index);
    }

    fn each_match(&self, ip: IpAddr, consider: &mut impl FnMut(&[usize])) {
        for (prefix, is_v4, group) in &self.by_prefix {
            if *is_v4 != ip.is_ipv4() {
                continue;
            }
            let Ok(net) = IpNet::new(ip, *prefix) else { continue };
            if let Some(indices) = group.get(&net.network()) {
                consider(indices);
            }
        }
    }
}

/// One destination pattern.
enum Pattern {
    Exact(Box<str>, Option<u16>),
    Suffix(Box<str>, Option<u16>),
    /// A regex over the whole name, and the literal domain after the last wildcard label ("" if none).
    Glob {
        regex: String,
        suffix: Box<str>,
        port: Option<u16>,
    },
    Network(IpNet, Option<u16>),
}

impl Pattern {
    fn port(&self) -> Option<u16> {
        match self {
            Pattern::Exact(_, port)
            | Pattern::Suffix(_, port)
            | Pattern::Glob { port, .. }
            | Pattern::Network(_, port) => *port,
        }
    }

    fn parse(text: &str) -> Result<Self, PatternError> {
        let text = text.trim();
        let error = |what: &str| PatternError(format!("invalid destination {text:?}: {what}"));
        if text.contains('/') {
            let net: IpNet = text.parse().map_err(|_| error("not a CIDR (write 10.0.0.0/8 or fc00::/7)"))?;
            return Ok(Pattern::Network(canonical_net(net), None));
        }
        let (host, port) = split_pattern_port(text).ok_or_else(|| error("write HOST, HOST:PORT or a CIDR"))?;
        let port = port.map(|p| parse_port(p).map_err(|e| error(&e.to_string()))).transpose()?;
        if !host.contains('*') {
            return match normalise_host(host).map_err(|e| error(&e.to_string()))? {
                Host::Name(name) => Ok(Pattern::Exact(name, port)),
                Host::Ip(ip) => Ok(Pattern::Network(IpNet::from(ip), port)),
            };
        }
        if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.contains('*') {
                return glob(host, port).ok_or_else(|| error("invalid glob"));
            }
            return match normalise_host(suffix) {
                Ok(Host::Name(name)) => Ok(Pattern::Suffix(name, port)),
                Ok(Host::Ip(_)) => Err(error("a glob cannot cover IP addresses: write a CIDR")),
                Err(TargetError::EmptyHost) => Err(error("a glob needs a domain after \"*.\"")),
                Err(e) => Err(error(&e.to_string())),
            };
        }
        if host == "*" {
            return Err(error("\"*\" matches everything: use policy.default: allow instead"));
        }
        glob(host, port).ok_or_else(|| error("invalid glob"))
    }
}

/// `api-*.example.com`: `*` matches within one label; a leading `*.` matches one or more labels.
fn glob(host: &str, port: Option<u16>) -> Option<Pattern> {
    let lower = host.to_ascii_lowercase();
    let lower = lower.strip_suffix('.').unwrap_or(&lower);
    if lower.is_empty() || !lower.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*')) {
        return None;
    }
    let mut source = String::from("^");
    let body = match lower.strip_prefix("*.") {
        Some(rest) => {
            source.push_str(r"(?:[a-z0-9_-]+\.)+");
            rest
        }
        None => lower,
    };
    if body.split('.').any(|label| label.is_empty() || label == "*") {
        return None;
    }
    for c in body.chars() {
        match c {
            '*' => source.push_str("[a-z0-9_-]*"),
            '.' => source.push_str(r"\."),
            c => source.push(c),
        }
    }
    source.push('$');
    let last_wild_label = body.rsplit('.').position(|label| label.contains('*'))?;
    let labels: Vec<&str> = body.split('.').collect();
    let suffix = labels[labels.len() - last_wild_label..].join(".");
    Some(Pattern::Glob { regex: source, suffix: suffix.into(), port })
}

fn split_pattern_port(text: &str) -> Option<(&str, Option<&str>)> {
    if text.starts_with('[') {
        let end = text.find(']')?;
        let (host, rest) = text.split_at(end + 1);
        return match rest {
            "" => Some((host, None)),
            _ => rest.strip_prefix(':').map(|port| (host, Some(port))),
        };
    }
    match text.split_once(':') {
        None => Some((text, None)),
        Some((host, port)) if !port.contains(':') => Some((host, Some(port))),
        Some(_) => None,
    }
}

fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
            Some(v4) if v6.prefix_len() >= 96 => {
                IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).expect("prefix fits").trunc()
            }
            _ => IpNet::V6(v6.trunc()),
        },
        IpNet::V4(v4) => IpNet::V4(v4.trunc()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(patterns: &[&str]) -> RuleSet {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        RuleSet::compile("test", &patterns).unwrap()
    }

    fn matched(set: &RuleSet, authority: &str) -> Option<String> {
        set.first_match(&Target::parse_authority(authority).unwrap()).map(|r| r.name.to_string())
    }

    #[test]
    fn suffix_globs_match_subdomains_only() {
        let rules = set(&["*.x.com"]);
        assert_eq!(matched(&rules, "a.x.com:443").as_deref(), Some("test[0]"));
        assert_eq!(matched(&rules, "a.b.x.com:443").as_deref(), Some("test[0]"));
        for miss in ["x.com:443", "evilx.com:443", "x.com.evil.net:443", "a.x.com.evil.net:443"] {
            assert_eq!(matched(&rules, miss), None, "{miss}");
        }
    }

    #[test]
    fn names_are_normalised_on_both_sides() {
        let rules = set(&["API.Anthropic.COM."]);
        assert_eq!(matched(&rules, "api.anthropic.com:443").as_deref(), Some("test[0]"));
        let rules = set(&["api.anthropic.com"]);
        assert_eq!(matched(&rules, "API.Anthropic.COM.:443").as_deref(), Some("test[0]"));
    }

    #[test]
    fn first_written_rule_wins_and_ports_narrow() {
        let rules = set(&["a.example.com:8443", "*.example.com", "a.example.com"]);
        assert_eq!(matched(&rules, "a.example.com:8443").as_deref(), Some("test[0]"));
        assert_eq!(matched(&rules, "a.example.com:443").as_deref(), Some("test[1]"));
        let rules = set(&["api-*.example.com"]);
        assert_eq!(matched(&rules, "api-eu.example.com:443").as_deref(), Some("test[0]"));
        assert_eq!(matched(&rules, "api-eu.x.example.com:443"), None);
    }

    #[test]
    fn networks_match_ip_literals() {
        let rules = set(&["10.0.0.0/8", "203.0.113.7", "fc00::/7", "::ffff:192.168.0.0/112"]);
        assert_eq!(matched(&rules, "10.9.8.7:1").as_deref(), Some("test[0]"));
        assert_eq!(matched(&rules, "203.0.113.7:1").as_deref(), Some("test[1]"));
        assert_eq!(matched(&rules, "203.0.113.8:1"), None);
        assert_eq!(matched(&rules, "[fd00::1]:1").as_deref(), Some("test[2]"));
        assert_eq!(matched(&rules, "192.168.4.4:1").as_deref(), Some("test[3]"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["*", "*.", "a.*.com:443x", "10.0.0.0/33", "exa[mple.com", "a.com:0", "*.*.com"] {
            let list = vec![bad.to_string()];
            assert!(RuleSet::compile("test", &list).is_err(), "{bad}");
        }
    }
}
