//! What a request wants to reach: a normalised host and a port.
//!
//! Hosts are normalised once, here, for requests and for policy patterns alike: lowercase, trailing dot removed,
//! IDNA to punycode, IP literals canonical (`::ffff:10.0.0.1` is `10.0.0.1`), and the legacy numeric IPv4 forms
//! (`2130706433`, `0177.0.0.1`, `0x7f.1`) read as the address they mean, so raw text never reaches the resolver.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A destination host after normalisation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name: lowercase ASCII (punycode), no trailing dot.
    Name(Box<str>),
    /// An IP literal in canonical form (IPv4-mapped IPv6 is IPv4).
    Ip(IpAddr),
}

/// A host and port, as named by CONNECT or an absolute-form URI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: Host,
    pub port: u16,
}

/// Why a host or authority is not acceptable (a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("empty host")]
    EmptyHost,
    #[error("invalid host {0:?}")]
    InvalidHost(String),
    #[error("invalid port {0:?}: must be 1-65535")]
    InvalidPort(String),
    #[error("missing port in {0:?}")]
    MissingPort(String),
    #[error("user information is not allowed in {0:?}")]
    UserInfo(String),
}

impl Target {
    /// Parses a CONNECT authority: `host:port`, `[v6]:port`; the port is required.
    pub fn parse_authority(authority: &str) -> Result<Self, TargetError> {
        Self::parse_with_default(authority, None)
    }

    /// Parses the authority of an absolute-form URI; `default_port` applies when none is written.
    pub fn parse_with_default(authority: &str, default_port: Option<u16>) -> Result<Self, TargetError> {
        if authority.contains('@') {
            return Err(TargetError::UserInfo(authority.to_owned()));
        }
        let (host_text, port_text) = split_host_port(authority)?;
        let port = match port_text {
            Some(text) => parse_port(text)?,
            None => default_port.ok_or_else(|| TargetError::MissingPort(authority.to_owned()))?,
        };
        Ok(Self { host: normalise_host(host_text)?, port })
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Splits `host[:port]` / `[v6][:port]`; rejects stray colons and brackets.
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), TargetError> {
    let invalid = || TargetError::InvalidHost(authority.to_owned());
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']').ok_or_else(invalid)?;
        let host = &authority[..end + 2];
        return match &rest[end + 1..] {
            "" => Ok((host, None)),
            tail => tail.strip_prefix(':').map(|port| (host, Some(port))).ok_or_else(invalid),
        };
    }
    match authority.split_once(':') {
        None => Ok((authority, None)),
        Some((host, port)) if !port.contains(':') => Ok((host, Some(port))),
        Some(_) => Err(invalid()),
    }
}

/// A port is 1-65535 written in ASCII digits only (`:007` is 7; `:0`, `:-1`, `:https` are errors).
pub fn parse_port(text: &str) -> Result<u16, TargetError> {
    let invalid = || TargetError::InvalidPort(text.to_owned());
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(invalid()),
        Ok(port) => Ok(port),
    }
}

/// Normalises a host as written in a request or a rule.
pub fn normalise_host(text: &str) -> Result<Host, TargetError> {
    let invalid = || TargetError::InvalidHost(text.to_owned());
    if text.is_empty() {
        return Err(TargetError::EmptyHost);
    }
    if let Some(inner) = text.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or_else(invalid)?;
        let ip: Ipv6Addr = inner.parse().map_err(|_| invalid())?;
        return Ok(Host::Ip(ip.to_canonical()));
    }
    if text.len() > 253 + 1 {
        return Err(invalid());
    }
    let mut name =
        if text.is_ascii() { text.to_ascii_lowercase() } else { idna::domain_to_ascii(text).map_err(|_| invalid())? };
    if name.ends_with('.') {
        name.pop();
    }
    if name.is_empty() {
        return Err(invalid());
    }
    if ends_in_number(&name) {
        return parse_ipv4_legacy(&name).map(|ip| Host::Ip(IpAddr::V4(ip))).ok_or_else(invalid);
    }
    if !is_valid_name(&name) {
        return Err(invalid());
    }
    // The lowercased copy becomes the name itself (without a copy when its capacity is its length, as
    // `to_ascii_lowercase` makes it).
    Ok(Host::Name(name.into_boxed_str()))
}

/// DNS-name syntax after IDNA: labels of 1-63 letters, digits, `-` or `_`, not starting or ending with `-`.
fn is_valid_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
}

/// The WHATWG URL rule: a host whose last label is a number is an IPv4 address (or invalid).
fn ends_in_number(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    parse_ipv4_number(last).is_some()
}

/// One part of a legacy IPv4 address: decimal, octal (leading 0) or hex (`0x`).
fn parse_ipv4_number(part: &str) -> Option<u64> {
    if part.is_empty() {
        return None;
    }
    let (digits, radix) = if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
        (hex, 16)
    } else if part.len() > 1 && part.starts_with('0') {
        (&part[1..], 8)
    } else {
        (part, 10)
    };
    if !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // Leading zeros say nothing about the value; a part longer than 12 digits is still a number (the host is an
    // address, or invalid), only too large for any address.
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some(0);
    }
    if digits.len() > 12 {
        return Some(u64::MAX);
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Parses `a`, `a.b`, `a.b.c` and `a.b.c.d` in any of the legacy radixes, as browsers do.
fn parse_ipv4_legacy(name: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let numbers: Vec<u64> = parts.iter().map(|p| parse_ipv4_number(p)).collect::<Option<_>>()?;
    let (last, leading) = numbers.split_last()?;
    if leading.iter().any(|&n| n > 255) {
        return None;
    }
    let remaining_bits = 8 * (5 - numbers.len() as u32);
    if *last >= 1u64 << remaining_bits {
        return None;
    }
    let mut value = *last;
    for (i, &n) in leading.iter().enumerate() {
        value += n << (8 * (3 - i as u32));
    }
    Some(Ipv4Addr::from(u32::try_from(value).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(text: &str) -> Result<String, TargetError> {
        normalise_host(text).map(|h| h.to_string())
    }

    #[test]
    fn names_are_lowercased_and_lose_the_trailing_dot() {
        assert_eq!(host("API.Anthropic.COM.").unwrap(), "api.anthropic.com");
        assert_eq!(host("bücher.example").unwrap(), "xn--bcher-kva.example");
        assert!(host("exa mple.com").is_err());
        assert!(host("a..b").is_err());
        assert!(host("host%2ecom").is_err());
        assert!(host("*.example.com").is_err());
    }

    #[test]
    fn legacy_ipv4_forms_mean_the_address() {
        for text in ["2130706433", "0177.0.0.1", "0x7f.1", "127.1", "0x7f000001", "127.0.0.1."] {
            assert_eq!(host(text).unwrap(), "127.0.0.1", "{text}");
        }
        assert!(host("256.0.0.1").is_err());
        assert!(host("1.2.3.4.5").is_err());
        assert!(host("08.1.1.1").is_err());
        assert_eq!(host("１２７.０.０.１").unwrap(), "127.0.0.1");
        // Numbers however long, and only digits of their radix: never a name for the resolver to read.
        assert_eq!(host("0x0000000000000007f000001").unwrap(), "127.0.0.1");
        assert_eq!(host("0000000000000000177.1").unwrap(), "127.0.0.1");
        assert!(host("0x0010000000000").is_err());
        assert!(host("1.0x+1").is_err());
    }

    #[test]
    fn ipv6_literals_are_canonical() {
        assert_eq!(host("[::ffff:127.0.0.1]").unwrap(), "127.0.0.1");
        assert_eq!(host("[0:0::1]").unwrap(), "[::1]");
        assert!(host("[fe80::1%eth0]").is_err());
        assert!(host("[[x]]").is_err());
    }

    #[test]
    fn authorities_need_a_valid_port() {
        assert_eq!(Target::parse_authority("Example.com:007").unwrap().to_string(), "example.com:7");
        for bad in ["a.com:0", "a.com:65536", "a.com:-1", "a.com:https", "a.com:", "a.com", ":443"] {
            assert!(Target::parse_authority(bad).is_err(), "{bad}");
        }
        for bad in ["api.anthropic.com:443@evil.com", "a.com:443:80", "[[x]]:443", "[::1]x:443"] {
            assert!(Target::parse_authority(bad).is_err(), "{bad}");
        }
        assert_eq!(Target::parse_authority("[::1]:443").unwrap().to_string(), "[::1]:443");
        assert_eq!(Target::parse_with_default("a.com", Some(80)).unwrap().port, 80);
    }
}
