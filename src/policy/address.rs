//! The private-address guard: which resolved addresses are not the public internet.
//!
//! Applied to every address a destination resolves to (and to IP literals), so that an allowed name pointing at
//! 10.0.0.1 or at the cloud metadata service is still refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Names the private class of `ip`, or `None` for a public address. `ip` must be canonical (no IPv4-mapped).
pub fn private_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => private_class_v4(v4),
        IpAddr::V6(v6) => private_class_v6(v6),
    }
}

fn private_class_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(match () {
        _ if ip.is_unspecified() || a == 0 => "unspecified",
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_private() => "private",
        _ if ip.is_link_local() => "link_local",
        _ if a == 100 && (64..128).contains(&b) => "cgnat",
        _ if ip.is_broadcast() => "broadcast",
        _ if ip.is_multicast() => "multicast",
        _ if a >= 240 => "reserved",
        _ if a == 192 && b == 0 && ip.octets()[2] == 0 => "reserved",
        _ if a == 198 && (b == 18 || b == 19) => "reserved",
        _ => return None,
    })
}

fn private_class_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    Some(match segments {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        [0xfe80..=0xfebf, ..] => "link_local",
        [0xfec0..=0xfeff, ..] => "site_local",
        [0xfc00..=0xfdff, ..] => "unique_local",
        [0xff00..=0xffff, ..] => "multicast",
        [0x64, 0xff9b, ..] => "nat64",
        [0x2002, ..] => "6to4",
        [0x2001, 0, ..] => "teredo",
        [0x2001, 0xdb8, ..] => "documentation",
        [0, 0, 0, 0, 0, 0, _, _] => "ipv4_compatible",
        [0x100, 0, 0, 0, ..] => "discard",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(text: &str) -> Option<&'static str> {
        private_class(text.parse::<IpAddr>().unwrap().to_canonical())
    }

    #[test]
    fn every_private_range_is_named() {
        let cases = [
            ("127.0.0.1", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link_local"),
            ("100.64.0.1", "cgnat"),
            ("100.100.100.200", "cgnat"),
            ("255.255.255.255", "broadcast"),
            ("224.0.0.1", "multicast"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("::ffff:169.254.169.254", "link_local"),
            ("fc00::1", "unique_local"),
            ("fd00:ec2::254", "unique_local"),
            ("fe80::1", "link_local"),
            ("64:ff9b::a9fe:a9fe", "nat64"),
            ("2002:a9fe:a9fe::1", "6to4"),
            ("2001:0:4136:e378::1", "teredo"),
        ];
        for (ip, expected) in cases {
            assert_eq!(class(ip), Some(expected), "{ip}");
        }
        for public in ["1.1.1.1", "160.79.104.10", "2607:6bc0::10", "100.128.0.1"] {
            assert_eq!(class(public), None, "{public}");
        }
    }
}
