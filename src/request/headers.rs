//! The headers that describe one hop and never travel on, for every door: the forward proxy relaying raw
//! HTTP/1.1 heads and the requests served through hyper (intercepted tunnels, gateway listeners) alike.

use http::header::{HeaderMap, HeaderName};

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the proxy ones): never forwarded, either way.
///
/// `Transfer-Encoding` is hop-by-hop too, but where bodies are relayed verbatim (the forward proxy) their coding
/// travels with them; hyper frames the bodies it relays itself, so `strip` removes it there.
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
];

/// Headers that delimit a body: never dropped because `Connection` names them (a relayed body without its
/// `Transfer-Encoding` would be read as a smuggled request).
pub const FRAMING: [&str; 2] = ["content-length", "transfer-encoding"];

/// tollgate's own headers (`x-tollgate-request-id`, `x-tollgate-rule`, …): a client cannot send them on.
const INTERNAL_PREFIX: &[u8] = b"x-tollgate-";

/// Whether `name` is hop-by-hop.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|hop| name.eq_ignore_ascii_case(hop.as_bytes()))
}

/// Whether `name` is one of tollgate's own.
pub fn is_internal(name: &[u8]) -> bool {
    name.len() >= INTERNAL_PREFIX.len() && name[..INTERNAL_PREFIX.len()].eq_ignore_ascii_case(INTERNAL_PREFIX)
}

/// Whether `name` delimits a body.
pub fn is_framing(name: &[u8]) -> bool {
    FRAMING.iter().any(|framing| name.eq_ignore_ascii_case(framing.as_bytes()))
}

/// The header names listed in `Connection` (and `Proxy-Connection`) values, except framing headers.
pub fn named_by_connection<'a>(values: impl Iterator<Item = &'a [u8]>) -> impl Iterator<Item = &'a [u8]> {
    values
        .flat_map(|value| value.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty() && !is_framing(t))
}

/// Removes from a message hyper relays: hop-by-hop headers, the headers `Connection` names, tollgate's own, and
/// `Transfer-Encoding` (hyper frames the body itself).
pub fn strip(headers: &mut HeaderMap) {
    // One pass over the names (lowercase in a `HeaderMap`) finds the usual message with nothing to remove, before
    // any lookup by name.
    let doomed = |name: &HeaderName| {
        let name = name.as_str().as_bytes();
        is_internal(name) || name == b"transfer-encoding" || HOP_BY_HOP.iter().any(|hop| name == hop.as_bytes())
    };
    if !headers.keys().any(doomed) {
        return;
    }
    let connection = headers.get_all(http::header::CONNECTION).iter().chain(headers.get_all("proxy-connection"));
    let named: Vec<HeaderName> =
        named_by_connection(connection.map(|v| v.as_bytes())).filter_map(|n| HeaderName::from_bytes(n).ok()).collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(http::header::TRANSFER_ENCODING);
    if headers.keys().any(|name| is_internal(name.as_str().as_bytes())) {
        let internal: Vec<HeaderName> =
            headers.keys().filter(|name| is_internal(name.as_str().as_bytes())).cloned().collect();
        for name in internal {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_named_and_internal_headers_are_stripped_but_not_framing() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "close, x-secret, content-length"),
            ("x-secret", "1"),
            ("keep-alive", "5"),
            ("proxy-authorization", "Basic abc"),
            ("x-tollgate-rule", "forged"),
            ("transfer-encoding", "chunked"),
            ("content-length", "5"),
            ("anthropic-version", "2023-06-01"),
        ] {
            headers.append(HeaderName::from_static(name), value.parse().unwrap());
        }
        strip(&mut headers);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-length", "anthropic-version"]);
    }

    /// The first pass over the names finds each kind alone: every hop-by-hop header, `Transfer-Encoding`, and a
    /// header of tollgate's own, with what `Proxy-Connection` names.
    #[test]
    fn each_kind_alone_is_stripped_and_a_message_without_any_is_left_as_it_was() {
        let alone = HOP_BY_HOP.iter().copied().chain(["transfer-encoding", "x-tollgate-user"]);
        for doomed in alone {
            let mut headers = HeaderMap::new();
            headers.append(HeaderName::from_static(doomed), "x-secret".parse().unwrap());
            headers.append(HeaderName::from_static("x-secret"), "1".parse().unwrap());
            headers.append(HeaderName::from_static("content-type"), "application/json".parse().unwrap());
            strip(&mut headers);
            let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
            left.sort_unstable();
            let named = matches!(doomed, "connection" | "proxy-connection");
            let expected: &[&str] = if named { &["content-type"] } else { &["content-type", "x-secret"] };
            assert_eq!(left, expected, "{doomed}");
        }
        let mut headers = HeaderMap::new();
        headers.append(HeaderName::from_static("content-type"), "application/json".parse().unwrap());
        headers.append(HeaderName::from_static("x-tollgate"), "not ours: no dash".parse().unwrap());
        let before = headers.clone();
        strip(&mut headers);
        assert_eq!(headers, before);
    }
}
