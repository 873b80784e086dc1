//! Hosts and authorities (`target`): every spelling of a host normalises to what the WHATWG URL host parser
//! (the `url` crate) makes of it — the same IPv4 address from decimal, octal, hex and shortened forms, the same
//! IPv6 address (IPv4-mapped ones as IPv4), the same lowercase punycode name — or is refused; a normalised host or
//! target reads back as itself.

use std::net::{IpAddr, Ipv6Addr};

use proptest::prelude::*;
use tollgate::target::{normalise_host, Host, Target};

use super::{config, corpus};

/// One part of a legacy IPv4 address: decimal, octal or hex, with leading zeros and either case of `0x`.
fn ipv4_part() -> impl Strategy<Value = String> {
    let value = prop_oneof![4 => 0u64..=255, 1 => 0u64..=0xff_ffff, 1 => 0u64..=0x1_0000_0000, 1 => any::<u64>()];
    (value, 0u8..3, 0usize..3, any::<bool>()).prop_map(|(value, radix, zeros, upper)| {
        let zeros = "0".repeat(zeros);
        match radix {
            0 => format!("{value}"),
            1 => format!("0{zeros}{value:o}"),
            _ => {
                let prefix = if upper { "0X" } else { "0x" };
                if upper {
                    format!("{prefix}{zeros}{value:X}")
                } else {
                    format!("{prefix}{zeros}{value:x}")
                }
            }
        }
    })
}

fn ipv4_form() -> impl Strategy<Value = String> {
    (prop::collection::vec(ipv4_part(), 1..=5), prop::sample::select(vec!["", ".", ".."]))
        .prop_map(|(parts, dot)| format!("{}{dot}", parts.join(".")))
}

fn ipv6_form() -> impl Strategy<Value = String> {
    (any::<[u16; 8]>(), 0u8..4, any::<bool>()).prop_map(|(segments, form, upper)| {
        let mapped = Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, segments[6], segments[7]);
        let address = Ipv6Addr::from(segments);
        let text = match form {
            0 => address.to_string(),
            1 => segments.iter().map(|s| format!("{s:04x}")).collect::<Vec<_>>().join(":"),
            2 => mapped.to_string(),
            _ => format!("::ffff:{}", std::net::Ipv4Addr::from(u32::from(segments[6]) << 16 | u32::from(segments[7]))),
        };
        format!("[{}]", if upper { text.to_ascii_uppercase() } else { text })
    })
}

fn name_form() -> impl Strategy<Value = String> {
    let label = prop_oneof![
        8 => "[a-zA-Z0-9_-]{1,12}",
        1 => prop::sample::select(vec![
            "bücher", "ＡＰＩ", "аnthropic", "xn--bcher-kva", "ß", "ﬃ", "Ⅸ", "ı", "𝐚", "a\u{200d}b", "١٢٣", "0x", "0X1g",
            "08", "0x7f", "1e3", "",
        ])
        .prop_map(str::to_owned),
    ];
    (prop::collection::vec(label, 1..5), prop::sample::select(vec!["", ".", ".."]))
        .prop_map(|(labels, dot)| format!("{}{dot}", labels.join(".")))
}

fn any_host() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => ipv4_form(),
        2 => ipv6_form(),
        3 => name_form(),
        1 => "[ -~]{0,20}",
        1 => prop::sample::select(vec![
            "", "[", "[]", "[::1", "::1]", "[::1]x", "[[::1]]", "[fe80::1%eth0]", "[::ffff:1.2.3.4.5]", "a@b", "a b",
            "a%2eb", "a\\b", "a/b", "a:b", "*.a", "-a.b", "a-.b", "１２７.０.０.１", "127.0.0.1\u{3002}", "a\u{3002}b",
        ])
        .prop_map(str::to_owned),
    ]
}

/// Our normalisation against the URL standard's host parser.
fn check_host(text: &str) -> Result<(), TestCaseError> {
    let ours = normalise_host(text);
    let reference = url::Host::parse(text);
    match (&ours, &reference) {
        (Ok(Host::Ip(IpAddr::V4(ip))), Ok(url::Host::Ipv4(want))) => prop_assert_eq!(ip, want, "{:?}", text),
        (Ok(Host::Ip(ip)), Ok(url::Host::Ipv6(want))) => {
            prop_assert_eq!(*ip, IpAddr::V6(*want).to_canonical(), "{:?}", text)
        }
        (Ok(Host::Name(name)), Ok(url::Host::Domain(want))) => {
            prop_assert!(want.strip_suffix('.').unwrap_or(want) == &**name, "{:?}: {} vs {}", text, name, want)
        }
        // Refusing what the standard accepts is allowed (tollgate is stricter: no percent-decoding, no empty
        // labels, only DNS-name characters), but never reading an IP address as a name, or the reverse.
        (Err(_), Ok(url::Host::Domain(_) | url::Host::Ipv6(_))) | (Err(_), Err(_)) => {}
        (Err(_), Ok(url::Host::Ipv4(want))) => {
            // Only a spelling longer than any address needs may be refused.
            // The standard percent-decodes a host first (`%31` is `1`); tollgate refuses any `%` in a host.
            prop_assert!(
                text.len() > 253 || text.split('.').any(|part| part.len() > 14) || text.contains('%'),
                "{:?} refused, the standard reads {}",
                text,
                want
            )
        }
        (Ok(host), _) => {
            return Err(TestCaseError::fail(format!("{text:?}: tollgate reads {host:?}, the standard {reference:?}")))
        }
    }
    if let Ok(host) = ours {
        prop_assert_eq!(normalise_host(&host.to_string()), Ok(host.clone()), "{:?} is not idempotent", text);
        for port in [1u16, 443, 65535] {
            let target = Target { host: host.clone(), port };
            prop_assert_eq!(Target::parse_authority(&target.to_string()), Ok(target));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    /// Each spelling normalises as the URL standard reads it, or is refused.
    #[test]
    fn hosts_normalise_as_the_url_standard_reads_them(text in any_host()) {
        check_host(&text)?;
    }

    /// An authority is a host and a port 1-65535, nothing else: what parses prints back as itself.
    #[test]
    fn authorities_read_back_as_themselves(host in any_host(), port in "[0-9]{0,6}|-1|https|", at in "(@x)?", colon in ":?") {
        let authority = format!("{host}{colon}{port}{at}");
        // A colon or `@` of the host's own would move where the port starts: only hosts without them.
        let plain = !host.contains('@') && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')));
        if let (true, Ok(target)) = (plain, Target::parse_authority(&authority)) {
            prop_assert!(at.is_empty() && colon == ":");
            prop_assert!(target.port >= 1);
            prop_assert_eq!(Target::parse_authority(&target.to_string()), Ok(target.clone()));
            prop_assert_eq!(port.parse::<u16>().ok(), Some(target.port));
            prop_assert_eq!(Ok(target.host), normalise_host(&host));
        }
    }
}

/// The hand-picked hosts, through the same checks.
#[test]
fn corpus_replays() {
    for (name, bytes) in corpus("hosts") {
        let text = String::from_utf8(bytes).expect("UTF-8");
        check_host(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
