//! Request heads (`http1::head`): any bytes are parsed or refused, never a panic; generated valid heads parse to
//! what was put in, however they arrive split; and every smuggling shape is refused wherever it sits in the head
//! and however its names are cased.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tollgate::http1::body::Framing;
use tollgate::http1::head::{read_head, HeadError, HeadLimits, RequestHead, ResponseHead};

use super::{block_on, config, corpus, cuts, Pieces};

const LIMITS: HeadLimits = HeadLimits { max_head: 64 * 1024, max_uri: 8192, timeout: Duration::from_secs(5) };

/// Headers the generator sets itself, so random headers do not change framing, host or authentication.
const RESERVED: [&str; 5] = ["host", "content-length", "transfer-encoding", "proxy-authorization", "expect"];

/// Headers a proxy never forwards.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// A valid request head and what it says.
#[derive(Debug, Clone)]
struct Generated {
    method: String,
    target: String,
    minor_version: u8,
    headers: Vec<(String, String)>,
    framing: Framing,
}

impl Generated {
    fn text(&self) -> String {
        let mut text = format!("{} {} HTTP/1.{}\r\n", self.method, self.target, self.minor_version);
        for (name, value) in &self.headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("\r\n");
        text
    }
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z][A-Za-z0-9-]{0,15}",
        prop::sample::select(vec![
            "Connection",
            "Keep-Alive",
            "TE",
            "Trailer",
            "Upgrade",
            "Proxy-Connection",
            "X-Tollgate-User",
            "Accept",
            "X-Secret",
            "Cookie",
        ])
        .prop_map(str::to_owned),
    ]
    .prop_filter("reserved", |name| !RESERVED.iter().any(|r| name.eq_ignore_ascii_case(r)))
}

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "([!-~]([ -~]{0,28}[!-~])?)?",
        prop::sample::select(vec!["close", "keep-alive", "X-Secret, keep-alive", "Accept", "upgrade"])
            .prop_map(str::to_owned),
    ]
}

fn generated_head() -> impl Strategy<Value = Generated> {
    let method = prop_oneof![
        prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]).prop_map(str::to_owned),
        "[A-Z]{1,10}",
    ];
    let target = "http://[a-z0-9.-]{1,20}(:[0-9]{1,5})?(/[A-Za-z0-9._~%!$&'()*+,;=:@-]{0,8}){0,4}(\\?[a-z=&]{0,10})?";
    (
        method,
        target,
        0u8..=1,
        prop::collection::vec((header_name(), header_value()), 0..12),
        prop::option::of("[a-z0-9.-]{1,20}"),
        0u8..3,
        0u64..1_000_000,
        any::<prop::sample::Index>(),
    )
        .prop_map(|(method, target, minor_version, mut headers, host, framing, length, at)| {
            let mut insert = |name: &str, value: String| {
                let at = at.index(headers.len() + 1);
                headers.insert(at, (name.to_owned(), value));
            };
            if let Some(host) = host {
                insert("Host", host);
            }
            let framing = match framing {
                1 if minor_version == 1 => {
                    insert("Transfer-Encoding", "chunked".to_owned());
                    Framing::Chunked
                }
                2 => {
                    insert("Content-Length", length.to_string());
                    if length == 0 {
                        Framing::Empty
                    } else {
                        Framing::Length(length)
                    }
                }
                _ => Framing::Empty,
            };
            Generated { method, target, minor_version, headers, framing }
        })
}

/// What a proxy must do with one head: parsing it never panics, and what it parses to is self-consistent.
fn check_any_head(bytes: &[u8], splits: &[usize]) -> Result<(), TestCaseError> {
    let parsed = RequestHead::parse(Bytes::copy_from_slice(bytes), LIMITS.max_uri);
    // Read from the network however split, the same bytes give the same verdict on where the head ends.
    let whole = block_on(read_head(&mut Pieces::new(bytes, &[]), &mut BytesMut::new(), LIMITS));
    let split = block_on(read_head(&mut Pieces::new(bytes, &cuts(bytes.len(), splits)), &mut BytesMut::new(), LIMITS));
    prop_assert_eq!(format!("{whole:?}"), format!("{split:?}"));
    if let Ok(head) = &parsed {
        // Bare LF passes httparse; the reader refuses it, so only a head `read_head` accepts reaches `parse`.
        let mut out = Vec::new();
        head.write_forwarded_headers(&mut out);
        check_forwarded(head, &out)?;
    }
    Ok(())
}

/// Forwarded headers are a subset of the head's, carry no hop-by-hop header, and forwarding them again changes
/// nothing.
fn check_forwarded(head: &RequestHead, out: &[u8]) -> Result<(), TestCaseError> {
    let again = format!("GET http://a/ HTTP/1.1\r\n{}\r\n", String::from_utf8_lossy(out));
    let reparsed = RequestHead::parse(Bytes::from(again.clone()), LIMITS.max_uri);
    let Ok(reparsed) = reparsed else {
        // The only way forwarded headers fail to parse again is a framing conflict they already had: the head
        // was accepted, so that cannot be.
        return Err(TestCaseError::fail(format!("forwarded headers do not parse again: {again:?}")));
    };
    let mut twice = Vec::new();
    reparsed.write_forwarded_headers(&mut twice);
    prop_assert_eq!(String::from_utf8_lossy(&twice), String::from_utf8_lossy(out));
    for line in out.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.windows(2).position(|w| w == b": ").expect("name: value");
        let (name, value) = (&line[..colon], &line[colon + 2..]);
        let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
        prop_assert!(!HOP_BY_HOP.contains(&lower.as_str()), "{} forwarded", lower);
        prop_assert!(!lower.starts_with("x-tollgate-"), "{} forwarded", lower);
        prop_assert!(lower != "host" && lower != "expect", "{} forwarded", lower);
        prop_assert!(contains(head.raw(), name) && contains(head.raw(), value), "{:?} not in the head", line);
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|window| window == needle)
}

/// The shapes that let a proxy and an origin disagree on where a request ends, or on its host.
fn smuggling_shape() -> impl Strategy<Value = (Vec<String>, bool)> {
    let length = || (0u64..100).prop_map(|n| n.to_string());
    prop_oneof![
        (length(), length())
            .prop_filter("differ", |(a, b)| a != b)
            .prop_map(|(a, b)| (vec![format!("Content-Length: {a}"), format!("Content-Length: {b}")], false)),
        length().prop_map(|a| (vec![format!("Content-Length: {a}"), "Transfer-Encoding: chunked".to_owned()], false)),
        prop::sample::select(vec!["+5", "-5", "0x5", "5,6", "5, 5", "5 6", "", "1e3", "99999999999999999999", "٣"])
            .prop_map(|v| (vec![format!("Content-Length: {v}")], false)),
        prop::sample::select(vec!["xchunked", "chunked, gzip", "gzip", "identity", "chunked;q=1", "gzip, chunked"])
            .prop_map(|v| (vec![format!("Transfer-Encoding: {v}")], false)),
        Just((vec!["Transfer-Encoding: chunked".to_owned(), "Transfer-Encoding: chunked".to_owned()], false)),
        Just((vec!["Transfer-Encoding: chunked".to_owned()], true)),
        Just((vec!["X-Folded: a".to_owned(), " b".to_owned()], false)),
        Just((vec!["X-Folded: a".to_owned(), "\tb".to_owned()], false)),
        Just((vec!["Host: a".to_owned(), "Host: b".to_owned()], false)),
        Just((vec!["Host: a".to_owned(), "Host: a".to_owned()], false)),
        Just((vec!["Proxy-Authorization: Basic eA==".to_owned(), "Proxy-Authorization: Basic eQ==".to_owned()], false)),
        Just((vec!["Host : a".to_owned()], false)),
        Just((vec!["Content-Length : 5".to_owned()], false)),
        Just((vec!["X-Nul: a\0b".to_owned()], false)),
        Just((vec!["X-Cr: a\rb".to_owned()], false)),
        Just((vec![": empty-name".to_owned()], false)),
    ]
}

/// Letters of `text` before its `:` in random case.
fn recase(text: &str, mask: u64) -> String {
    let colon = text.find(':').unwrap_or(text.len());
    text.char_indices()
        .map(|(i, c)| {
            if i < colon && mask >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else if i < colon {
                c.to_ascii_lowercase()
            } else {
                c
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(config(256))]

    /// Arbitrary bytes, and valid heads with bytes flipped, inserted or removed: parsed or refused, never a panic,
    /// and read to the same end however they arrive.
    #[test]
    fn any_bytes_are_parsed_or_refused(
        head in generated_head(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..6),
        noise in prop::collection::vec(any::<u8>(), 0..200),
        use_noise in any::<bool>(),
        splits in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let bytes = if use_noise {
            noise
        } else {
            let mut bytes = head.text().into_bytes();
            for (at, byte, kind) in edits {
                let at = at.index(bytes.len());
                match kind {
                    0 => bytes[at] = byte,
                    1 => { bytes.remove(at); }
                    _ => bytes.insert(at, *b"\r\n: \t\0,;".get(usize::from(byte) % 8).unwrap_or(&byte)),
                }
            }
            bytes
        };
        check_any_head(&bytes, &splits)?;
    }

    /// A valid head parses to what was put in: method, target, version, each header's first value, framing,
    /// keep-alive; read whole however it arrives, with the bytes after it left for the body.
    #[test]
    fn valid_heads_parse_to_what_was_put_in(
        head in generated_head(),
        after in prop::collection::vec(any::<u8>(), 0..40),
        splits in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let text = head.text();
        let parsed = RequestHead::parse(Bytes::from(text.clone()), LIMITS.max_uri);
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(error) => return Err(TestCaseError::fail(format!("{error}: {text:?}"))),
        };
        prop_assert_eq!(parsed.method(), head.method.as_str());
        prop_assert_eq!(parsed.target(), head.target.as_str());
        prop_assert_eq!(parsed.minor_version, head.minor_version);
        prop_assert_eq!(parsed.framing, head.framing);
        for (name, _) in &head.headers {
            let first = head.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_bytes());
            let lower = name.to_ascii_lowercase();
            prop_assert_eq!(parsed.header(&lower), first, "{}", name);
        }
        let tokens = |names: &[&str]| -> Vec<String> {
            head.headers
                .iter()
                .filter(|(n, _)| names.iter().any(|wanted| n.eq_ignore_ascii_case(wanted)))
                .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>())
                .collect()
        };
        let tokens = tokens(&["connection", "proxy-connection"]);
        let keep_alive = !tokens.iter().any(|t| t == "close")
            && (head.minor_version == 1 || tokens.iter().any(|t| t == "keep-alive"));
        prop_assert_eq!(parsed.keep_alive(), keep_alive);

        let mut stream = text.clone().into_bytes();
        stream.extend_from_slice(&after);
        let mut buf = BytesMut::new();
        let length = block_on(read_head(&mut Pieces::new(&stream, &cuts(stream.len(), &splits)), &mut buf, LIMITS));
        prop_assert_eq!(length.ok(), Some(text.len()));
        prop_assert_eq!(&buf[..text.len()], text.as_bytes());
        // The reader may stop reading as soon as the head is whole: what it read past it is the start of `after`.
        prop_assert!(after.starts_with(&buf[text.len()..]));

        let mut out = Vec::new();
        parsed.write_forwarded_headers(&mut out);
        check_forwarded(&parsed, &out)?;
    }

    /// Each smuggling shape is refused as malformed wherever it sits among valid headers and however its
    /// names are cased.
    #[test]
    fn smuggling_shapes_are_refused_wherever_they_sit(
        head in generated_head(),
        (shape, http10) in smuggling_shape(),
        at in any::<prop::sample::Index>(),
        mask in any::<u64>(),
    ) {
        let mut head = head;
        head.headers.retain(|(name, _)| !name.eq_ignore_ascii_case("host"));
        head.headers.retain(|(name, _)| !name.eq_ignore_ascii_case("content-length"));
        head.headers.retain(|(name, _)| !name.eq_ignore_ascii_case("transfer-encoding"));
        if http10 {
            head.minor_version = 0;
        }
        let mut lines: Vec<String> = head.headers.iter().map(|(n, v)| format!("{n}: {v}")).collect();
        let at = at.index(lines.len() + 1);
        for (offset, line) in shape.iter().enumerate() {
            lines.insert(at + offset, recase(line, mask));
        }
        let text = format!(
            "{} {} HTTP/1.{}\r\n{}\r\n\r\n",
            head.method, head.target, head.minor_version, lines.join("\r\n")
        );
        let parsed = RequestHead::parse(Bytes::from(text.clone()), LIMITS.max_uri);
        prop_assert!(matches!(parsed, Err(HeadError::Malformed(_))), "{:?}: {:?}", text, parsed.map(|h| h.framing));
    }

    /// A head with a bare LF anywhere is refused by the reader, before any parser sees it.
    #[test]
    fn bare_line_feeds_are_refused_by_the_reader(
        head in generated_head(),
        at in any::<prop::sample::Index>(),
        splits in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let text = head.text();
        let crlfs: Vec<usize> = text.match_indices("\r\n").map(|(i, _)| i).collect();
        let cr = crlfs[at.index(crlfs.len())];
        let mut bytes = text.into_bytes();
        bytes.remove(cr);
        let result = block_on(read_head(&mut Pieces::new(&bytes, &cuts(bytes.len(), &splits)), &mut BytesMut::new(), LIMITS));
        prop_assert!(matches!(result, Err(HeadError::Malformed(_))), "{:?}", result);
    }
}

/// A response head from its status and headers.
fn response(status: u16, headers: &[(String, String)]) -> String {
    let mut text = format!("HTTP/1.1 {status} Reason\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text
}

/// How a response body is delimited, by RFC 9112 §6.3 read naively; `None` when the head is refused.
fn naive_response_framing(status: u16, method: &str, headers: &[(String, String)]) -> Option<Framing> {
    if method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304 {
        return Some(Framing::Empty);
    }
    let values = |wanted: &str| -> Vec<&str> {
        headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(wanted)).map(|(_, v)| v.trim()).collect()
    };
    if let Some(last) = values("transfer-encoding").last() {
        let chunked = last.rsplit(',').next().is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        return Some(if chunked { Framing::Chunked } else { Framing::UntilClose });
    }
    let lengths = values("content-length");
    let Some(first) = lengths.first() else { return Some(Framing::UntilClose) };
    let valid = |v: &str| !v.is_empty() && v.len() <= 19 && v.bytes().all(|b| b.is_ascii_digit());
    if !lengths.iter().all(|v| valid(v)) {
        return None;
    }
    let numbers: Vec<u64> = lengths.iter().map(|v| v.parse().expect("digits")).collect();
    if numbers.iter().any(|&n| n != numbers[0]) {
        return None;
    }
    let _ = first;
    Some(if numbers[0] == 0 { Framing::Empty } else { Framing::Length(numbers[0]) })
}

fn response_header() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        2 => (header_name(), header_value()),
        1 => prop::sample::select(vec!["Content-Length", "content-length", "CONTENT-LENGTH"]).prop_flat_map(|name| {
            prop::sample::select(vec!["0", "5", "05", "6", "+5", "5,5", "", "18446744073709551615", "99999999999999999999"])
                .prop_map(move |value| (name.to_owned(), value.to_owned()))
        }),
        1 => prop::sample::select(vec!["Transfer-Encoding", "transfer-encoding"]).prop_flat_map(|name| {
            prop::sample::select(vec!["chunked", "gzip, chunked", "chunked, gzip", "identity", "Chunked", "gzip,chunked"])
                .prop_map(move |value| (name.to_owned(), value.to_owned()))
        }),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    /// A response's framing is what RFC 9112 §6.3 says for its status, method and headers; with a
    /// Transfer-Encoding, no Content-Length is forwarded; any bytes parse or are refused without a panic.
    #[test]
    fn response_heads_frame_as_the_rfc_says(
        status in prop_oneof![100u16..600, prop::sample::select(vec![101u16, 204, 304, 200])],
        headers in prop::collection::vec(response_header(), 0..6),
        method in prop::sample::select(vec!["GET", "HEAD", "POST"]),
        noise in prop::collection::vec(any::<u8>(), 0..120),
    ) {
        let text = response(status, &headers);
        let head = match ResponseHead::parse(Bytes::from(text.clone())) {
            Ok(head) => head,
            Err(error) => return Err(TestCaseError::fail(format!("{error}: {text:?}"))),
        };
        prop_assert_eq!(head.status, status);
        prop_assert_eq!(head.framing(method).ok(), naive_response_framing(status, method, &headers), "{:?}", text);
        let mut out = Vec::new();
        head.write_forwarded_headers(&mut out);
        let out = String::from_utf8_lossy(&out).to_ascii_lowercase();
        if headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding")) {
            prop_assert!(!out.contains("content-length:"), "{:?}", out);
        }
        let mut garbage = b"HTTP/1.1 200 OK\r\n".to_vec();
        garbage.extend(noise);
        if let Ok(head) = ResponseHead::parse(Bytes::from(garbage)) {
            let _ = (head.framing("GET"), head.keep_alive(), head.reason());
        }
    }
}

/// The hand-picked hostile heads: each is refused (files named `refused-*`) or parsed, by the same checks.
#[test]
fn corpus_replays() {
    for (name, bytes) in corpus("heads") {
        check_any_head(&bytes, &[1, 7, 20]).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name.starts_with("refused-") {
            let read = block_on(read_head(&mut Pieces::new(&bytes, &[]), &mut BytesMut::new(), LIMITS));
            let parsed =
                read.and_then(|length| RequestHead::parse(Bytes::copy_from_slice(&bytes[..length]), LIMITS.max_uri));
            assert!(parsed.is_err(), "{name}: accepted");
        }
    }
}
