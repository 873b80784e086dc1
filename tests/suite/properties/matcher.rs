//! The destination matcher (`policy::RuleSet`): hash maps by name, by suffix and by masked network, and glob regexes
//! bucketed by suffix, must pick the rule a naive reading picks — every rule in written order, names compared label
//! by label with a wildcard matcher, networks by `ipnet` containment, ports narrowing.

use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;
use tollgate::policy::RuleSet;
use tollgate::target::{normalise_host, Host, Target};

use super::{config, corpus};

const LABELS: [&str; 8] = ["a", "b", "api", "api-x", "x-api", "c_d", "com", "io"];

fn label() -> impl Strategy<Value = String> {
    prop::sample::select(LABELS.to_vec()).prop_map(str::to_owned)
}

/// A label with wildcards in it: `api-*`, `*-api`, `a*b*`.
fn wild_label() -> impl Strategy<Value = String> {
    prop_oneof![
        label(),
        (label(), prop::sample::select(vec!["*", "*x", "x*", "a*i", "*-*", "*_*"]))
            .prop_map(|(label, wild)| format!("{label}{wild}")),
        (prop::sample::select(vec!["*", "*-", "a*"]), label()).prop_map(|(wild, label)| format!("{wild}{label}")),
    ]
}

fn port() -> impl Strategy<Value = Option<u16>> {
    prop::option::weighted(0.3, prop::sample::select(vec![80u16, 443, 8443]))
}

fn with_port(host: String, port: Option<u16>) -> String {
    match port {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

const V4: [&str; 6] = ["10.0.0.0", "10.1.2.3", "192.168.1.1", "127.0.0.1", "0.0.0.0", "255.255.255.255"];
const V6: [&str; 6] = ["::ffff:10.0.0.0", "fd00::1", "::1", "2001:db8::", "::", "::ffff:192.168.1.1"];

fn pattern() -> impl Strategy<Value = String> {
    let names = || prop::collection::vec(label(), 1..4);
    prop_oneof![
        3 => (names(), any::<bool>(), port()).prop_map(|(labels, upper, port)| {
            let name = labels.join(".");
            with_port(if upper { name.to_ascii_uppercase() } else { name }, port)
        }),
        3 => (names(), port()).prop_map(|(labels, port)| with_port(format!("*.{}", labels.join(".")), port)),
        3 => (prop::collection::vec(wild_label(), 1..4), any::<bool>(), port()).prop_map(|(labels, leading, port)| {
            let body = labels.join(".");
            with_port(if leading { format!("*.{body}") } else { body }, port)
        }),
        2 => (prop::sample::select(V4.to_vec()), 0u8..=32, any::<bool>(), port()).prop_map(|(ip, prefix, cidr, port)| {
            if cidr { format!("{ip}/{prefix}") } else { with_port(ip.to_owned(), port) }
        }),
        2 => (prop::sample::select(V6.to_vec()), 0u8..=128, any::<bool>(), port()).prop_map(|(ip, prefix, cidr, port)| {
            if cidr { format!("{ip}/{prefix}") } else { with_port(format!("[{ip}]"), port) }
        }),
    ]
}

fn target() -> impl Strategy<Value = String> {
    let port = prop::sample::select(vec![80u16, 443, 8443, 22]);
    prop_oneof![
        3 => (prop::collection::vec(label(), 1..5), any::<bool>(), any::<bool>(), port.clone()).prop_map(
            |(labels, upper, dot, port)| {
                let name = format!("{}{}", labels.join("."), if dot { "." } else { "" });
                format!("{}:{port}", if upper { name.to_ascii_uppercase() } else { name })
            }
        ),
        2 => (prop::sample::select(V4.to_vec()), any::<u8>(), port.clone())
            .prop_map(|(ip, last, port)| format!("{}.{last}:{port}", ip.rsplit_once('.').map_or(ip, |(a, _)| a))),
        1 => (any::<u32>(), port.clone()).prop_map(|(ip, port)| format!("{}:{port}", std::net::Ipv4Addr::from(ip))),
        2 => (prop::sample::select(V6.to_vec()), any::<u16>(), port)
            .prop_map(|(ip, last, port)| {
                let ip: std::net::Ipv6Addr = ip.parse().expect("an IPv6 address");
                let mut segments = ip.segments();
                segments[7] = last;
                format!("[{}]:{port}", std::net::Ipv6Addr::from(segments))
            }),
    ]
}

/// `*` matches any run of characters within one label.
fn wildcard(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| wildcard(rest, &text[skip..])),
        Some((first, rest)) => text.first() == Some(first) && wildcard(rest, &text[1..]),
    }
}

/// Whether one pattern, read naively, covers `target`; `None` when the reference cannot read it either.
fn naive_match(pattern: &str, target: &Target) -> bool {
    if pattern.contains('/') {
        let net: IpNet = pattern.parse().expect("a generated CIDR");
        let net = match net {
            IpNet::V6(v6) if v6.prefix_len() >= 96 && v6.addr().to_ipv4_mapped().is_some() => {
                let v4 = v6.addr().to_ipv4_mapped().expect("mapped");
                IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).expect("prefix")
            }
            net => net,
        };
        return matches!(target.host, Host::Ip(ip) if net.contains(&ip));
    }
    let (host, port) = match pattern.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') && (!host.contains(':') || host.ends_with(']')) => {
            (host, Some(port.parse::<u16>().expect("a generated port")))
        }
        _ => (pattern, None),
    };
    if port.is_some_and(|port| port != target.port) {
        return false;
    }
    let Host::Name(name) = &target.host else {
        return !host.contains('*') && normalise_host(host).is_ok_and(|h| h == target.host);
    };
    let host = host.to_ascii_lowercase();
    let names: Vec<&str> = name.split('.').collect();
    let (leading, body) = match host.strip_prefix("*.") {
        Some(body) => (true, body),
        None => (false, host.as_str()),
    };
    let wanted: Vec<&str> = body.split('.').collect();
    if names.len() < wanted.len() + usize::from(leading) || (!leading && names.len() != wanted.len()) {
        return false;
    }
    let tail = &names[names.len() - wanted.len()..];
    wanted.iter().zip(tail).all(|(w, n)| wildcard(w.as_bytes(), n.as_bytes()))
}

fn check(patterns: &[String], target_text: &str) -> Result<(), TestCaseError> {
    let Ok(set) = RuleSet::compile("policy.allow", patterns) else {
        // Only patterns the reference cannot read either are refused: `*` alone, `*.` with nothing after.
        return Ok(());
    };
    let Ok(target) = Target::parse_authority(target_text) else { return Ok(()) };
    let want = patterns.iter().position(|pattern| naive_match(pattern, &target)).map(|i| format!("policy.allow[{i}]"));
    let got = set.first_match(&target).map(|rule| rule.name.to_string());
    prop_assert_eq!(got, want, "{:?} against {:?}", target, patterns);
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    /// The compiled lookup picks the first rule the naive reading matches, or none.
    #[test]
    fn the_first_matching_rule_wins_as_a_naive_scan_says(
        patterns in prop::collection::vec(pattern(), 1..10),
        targets in prop::collection::vec(target(), 1..8),
    ) {
        for target in &targets {
            check(&patterns, target)?;
        }
    }
}

/// The hand-picked rule sets: first line the patterns (separated by spaces), each following line a target.
#[test]
fn corpus_replays() {
    for (name, bytes) in corpus("patterns") {
        let text = String::from_utf8(bytes).expect("UTF-8");
        let mut lines = text.lines().filter(|line| !line.starts_with('#'));
        let patterns: Vec<String> = lines.next().expect("patterns").split_whitespace().map(str::to_owned).collect();
        for target in lines {
            check(&patterns, target).unwrap_or_else(|e| panic!("{name}: {target}: {e}"));
        }
    }
}
