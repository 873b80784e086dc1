//! HTTP/1.1 message heads: read with limits, parsed strictly, and the hop-by-hop rules for forwarding.
//!
//! Stricter than most servers on purpose: a proxy that reads a head differently from the origin behind it is a
//! request-smuggling hole. Bare LF, obs-fold, conflicting or signed `Content-Length`, `Content-Length` with
//! `Transfer-Encoding`, and any transfer coding but a lone `chunked` are refused with 400.

use std::ops::Range;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::body::Framing;
use crate::request::headers;

/// Most headers accepted in one head (431 beyond).
const MAX_HEADERS: usize = 100;

/// Limits on one request head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_head: usize,
    pub max_uri: usize,
    pub timeout: Duration,
}

/// Why a head could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("connection closed")]
    Closed,
    #[error("request head not received in time")]
    Timeout,
    #[error("request head too large")]
    TooLarge,
    #[error("request target too long")]
    UriTooLong,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads until `buf` holds a complete head; returns its length. Bytes after it stay in `buf`.
pub async fn read_head<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    limits: HeadLimits,
) -> Result<usize, HeadError> {
    let deadline = tokio::time::Instant::now() + limits.timeout;
    let mut scanned = 0;
    loop {
        if let Some(end) = scan(buf, &mut scanned, limits)? {
            return Ok(end);
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096.min(limits.max_head + 1 - buf.len()).max(1024));
        }
        let read = tokio::time::timeout_at(deadline, io.read_buf(buf)).await.map_err(|_| HeadError::Timeout)??;
        if read == 0 {
            return Err(if buf.is_empty() {
                HeadError::Closed
            } else {
                HeadError::Malformed("connection closed mid-head")
            });
        }
    }
}

/// Looks at the bytes not yet scanned: bare LF is an error, CRLFCRLF ends the head.
fn scan(buf: &[u8], scanned: &mut usize, limits: HeadLimits) -> Result<Option<usize>, HeadError> {
    let start = *scanned;
    for offset in memchr::memchr_iter(b'\n', &buf[start..]) {
        let at = start + offset;
        if at == 0 || buf[at - 1] != b'\r' {
            return Err(HeadError::Malformed("bare LF line ending"));
        }
        if at >= 3 && &buf[at - 3..at] == b"\r\n\r" {
            // The limit holds however the head arrived: in one read, the terminator comes with the excess.
            if at + 1 > limits.max_head {
                return Err(HeadError::TooLarge);
            }
            return Ok(Some(at + 1));
        }
    }
    *scanned = buf.len();
    let first_line_done = memchr::memchr(b'\n', buf).is_some();
    if !first_line_done && buf.len() > limits.max_uri + 32 {
        return Err(HeadError::UriTooLong);
    }
    if buf.len() > limits.max_head {
        return Err(HeadError::TooLarge);
    }
    Ok(None)
}

/// One header as byte ranges into the head.
#[derive(Debug, Clone)]
struct HeaderRange {
    name: Range<usize>,
    value: Range<usize>,
}

/// A parsed request head, referring into its own bytes.
#[derive(Debug, Clone)]
pub struct RequestHead {
    raw: Bytes,
    method: Range<usize>,
    target: Range<usize>,
    pub minor_version: u8,
    headers: Vec<HeaderRange>,
    pub framing: Framing,
}

/// A parsed response head.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    raw: Bytes,
    pub status: u16,
    reason: Range<usize>,
    pub minor_version: u8,
    headers: Vec<HeaderRange>,
}

fn offset(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    start..start + part.len()
}

fn collect_headers(raw: &[u8], headers: &[httparse::Header<'_>]) -> Vec<HeaderRange> {
    headers.iter().map(|h| HeaderRange { name: offset(raw, h.name.as_bytes()), value: offset(raw, h.value) }).collect()
}

impl RequestHead {
    /// Parses and validates a complete request head.
    pub fn parse(raw: Bytes, max_uri: usize) -> Result<Self, HeadError> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut slots);
        match request.parse(&raw) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(HeadError::Malformed("incomplete head")),
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(httparse::Error::HeaderName) => return Err(HeadError::Malformed("invalid header name")),
            Err(httparse::Error::HeaderValue) => return Err(HeadError::Malformed("invalid header value")),
            Err(httparse::Error::Version) => return Err(HeadError::Malformed("unsupported HTTP version")),
            Err(httparse::Error::Token) => return Err(HeadError::Malformed("invalid method")),
            Err(_) => return Err(HeadError::Malformed("invalid request line")),
        }
        let (Some(method), Some(target), Some(minor_version)) = (request.method, request.path, request.version) else {
            return Err(HeadError::Malformed("incomplete request line"));
        };
        if target.len() > max_uri {
            return Err(HeadError::UriTooLong);
        }
        let method = offset(&raw, method.as_bytes());
        let target = offset(&raw, target.as_bytes());
        let headers = collect_headers(&raw, request.headers);
        let mut head = Self { raw, method, target, minor_version, headers, framing: Framing::Empty };
        head.framing = head.request_framing()?;
        if head.all("host").count() > 1 {
            return Err(HeadError::Malformed("more than one Host header"));
        }
        if head.all("proxy-authorization").count() > 1 {
            return Err(HeadError::Malformed("more than one Proxy-Authorization header"));
        }
        Ok(head)
    }

    pub fn method(&self) -> &str {
        std::str::from_utf8(&self.raw[self.method.clone()]).unwrap_or("")
    }

    /// The head as it was read, for code that takes over the connection and reads it again.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    pub fn target(&self) -> &str {
        std::str::from_utf8(&self.raw[self.target.clone()]).unwrap_or("")
    }

    /// The first value of the named header (case-insensitive).
    pub fn header<'a>(&'a self, name: &'a str) -> Option<&'a [u8]> {
        self.all(name).next()
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        all_values(&self.raw, &self.headers, name)
    }

    /// Whether the client wants the connection kept open after this request.
    pub fn keep_alive(&self) -> bool {
        keep_alive(&self.raw, &self.headers, self.minor_version, &["connection", "proxy-connection"])
    }

    /// Whether the client sent `Expect: 100-continue`.
    pub fn expects_continue(&self) -> bool {
        self.header("expect").is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"))
    }

    /// Writes the headers that may travel on: no hop-by-hop header, none named in `Connection`, no `Host`
    /// (the caller writes it from the target) and no `Expect` (answered here).
    pub fn write_forwarded_headers(&self, out: &mut Vec<u8>) {
        write_end_to_end(&self.raw, &self.headers, &["host", "expect"], out);
    }

    fn request_framing(&self) -> Result<Framing, HeadError> {
        let lengths: Vec<&[u8]> = self.all("content-length").collect();
        let codings: Vec<&[u8]> = self.all("transfer-encoding").collect();
        if !codings.is_empty() {
            if !lengths.is_empty() {
                return Err(HeadError::Malformed("both Content-Length and Transfer-Encoding"));
            }
            if self.minor_version == 0 {
                return Err(HeadError::Malformed("Transfer-Encoding in an HTTP/1.0 request"));
            }
            if codings.len() != 1 || !codings[0].trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(HeadError::Malformed("unsupported Transfer-Encoding (only chunked)"));
            }
            return Ok(Framing::Chunked);
        }
        match content_length(&lengths)? {
            Some(0) | None => Ok(Framing::Empty),
            Some(n) => Ok(Framing::Length(n)),
        }
    }
}

impl ResponseHead {
    /// Parses an upstream's response head (read by the same strict `read_head`: bare LF is refused as a 502).
    pub fn parse(raw: Bytes) -> Result<Self, &'static str> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut slots);
        match response.parse(&raw) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err("incomplete head"),
            Err(_) => return Err("unparsable status line or header"),
        }
        let (Some(status), Some(minor_version)) = (response.code, response.version) else {
            return Err("incomplete status line");
        };
        let reason = offset(&raw, response.reason.unwrap_or("").as_bytes());
        let headers = collect_headers(&raw, response.headers);
        Ok(Self { raw, status, reason, minor_version, headers })
    }

    pub fn reason(&self) -> &[u8] {
        &self.raw[self.reason.clone()]
    }

    /// How the body is delimited, given the request method.
    pub fn framing(&self, request_method: &str) -> Result<Framing, &'static str> {
        if request_method == "HEAD" || (100..200).contains(&self.status) || self.status == 204 || self.status == 304 {
            return Ok(Framing::Empty);
        }
        let codings: Vec<&[u8]> = all_values(&self.raw, &self.headers, "transfer-encoding").collect();
        if let Some(last) = codings.last() {
            let is_chunked =
                last.rsplit(|&b| b == b',').next().is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            return Ok(if is_chunked { Framing::Chunked } else { Framing::UntilClose });
        }
        let lengths: Vec<&[u8]> = all_values(&self.raw, &self.headers, "content-length").collect();
        match content_length(&lengths).map_err(|_| "invalid Content-Length")? {
            Some(0) => Ok(Framing::Empty),
            Some(n) => Ok(Framing::Length(n)),
            None => Ok(Framing::UntilClose),
        }
    }

    /// Whether the upstream connection may be reused after this response.
    pub fn keep_alive(&self) -> bool {
        keep_alive(&self.raw, &self.headers, self.minor_version, &["connection"])
    }

    /// Writes the end-to-end headers of the response. With `Transfer-Encoding`, `Content-Length` stays behind
    /// (RFC 9112 §6.3): the body is framed by its coding, and a client must not see two framings.
    pub fn write_forwarded_headers(&self, out: &mut Vec<u8>) {
        let coded = all_values(&self.raw, &self.headers, "transfer-encoding").next().is_some();
        write_end_to_end(&self.raw, &self.headers, if coded { &["content-length"] } else { &[] }, out);
    }
}

fn all_values<'a>(raw: &'a [u8], headers: &'a [HeaderRange], name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |h| raw[h.name.clone()].eq_ignore_ascii_case(name.as_bytes()))
        .map(move |h| &raw[h.value.clone()])
}

/// `Content-Length` values must be plain digits and all equal.
fn content_length(values: &[&[u8]]) -> Result<Option<u64>, HeadError> {
    let mut length = None;
    for value in values {
        let value = value.trim_ascii();
        if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
            return Err(HeadError::Malformed("invalid Content-Length"));
        }
        let n: u64 = std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(HeadError::Malformed("invalid Content-Length"))?;
        if length.is_some_and(|l| l != n) {
            return Err(HeadError::Malformed("conflicting Content-Length headers"));
        }
        length = Some(n);
    }
    Ok(length)
}

fn keep_alive(raw: &[u8], headers: &[HeaderRange], minor_version: u8, names: &[&str]) -> bool {
    let mut close = false;
    let mut keep = false;
    for name in names {
        for value in all_values(raw, headers, name) {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    !close && (minor_version == 1 || keep)
}

/// Copies every header except hop-by-hop ones, those the `Connection` header names, `x-tollgate-*`, and `extra`.
/// `Transfer-Encoding` stays: bodies are relayed verbatim, so their coding travels with them.
fn write_end_to_end(raw: &[u8], ranges: &[HeaderRange], extra: &[&str], out: &mut Vec<u8>) {
    // Framing headers are never dropped by request: the body is relayed as framed, and a missing
    // Transfer-Encoding would turn the body into a smuggled request.
    let named_by_connection: Vec<&[u8]> = headers::named_by_connection(
        all_values(raw, ranges, "connection").chain(all_values(raw, ranges, "proxy-connection")),
    )
    .collect();
    for header in ranges {
        let name = &raw[header.name.clone()];
        let drop = headers::is_hop_by_hop(name)
            || extra.iter().any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
            || named_by_connection.iter().any(|n| name.eq_ignore_ascii_case(n))
            || headers::is_internal(name);
        if !drop {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(&raw[header.value.clone()]);
            out.extend_from_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RequestHead, HeadError> {
        RequestHead::parse(Bytes::copy_from_slice(text.as_bytes()), 8192)
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let bad = [
            "POST http://a/ HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST http://a/ HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST http://a/ HTTP/1.1\r\nContent-Length: 5,6\r\n\r\n",
            "POST http://a/ HTTP/1.1\r\nContent-Length: 0x5\r\n\r\n",
            "POST http://a/ HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST http://a/ HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "POST http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST http://a/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET http://a/ HTTP/2.0\r\n\r\n",
        ];
        for text in bad {
            assert!(matches!(parse(text), Err(HeadError::Malformed(_))), "{text:?}");
        }
    }

    #[test]
    fn bare_lf_is_refused_while_scanning() {
        let limits = HeadLimits { max_head: 1024, max_uri: 256, timeout: Duration::from_secs(1) };
        let mut scanned = 0;
        assert!(matches!(
            scan(b"GET http://a/ HTTP/1.1\nHost: a\n\n", &mut scanned, limits),
            Err(HeadError::Malformed(_))
        ));
        let mut scanned = 0;
        assert_eq!(scan(b"GET / HTTP/1.1\r\n\r\nrest", &mut scanned, limits).unwrap(), Some(18));
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_dropped() {
        let head = parse(
            "GET http://a/ HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nProxy-Authorization: Basic eA==\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Tollgate-User: me\r\nAccept: */*\r\n\r\n",
        )
        .unwrap();
        let mut out = Vec::new();
        head.write_forwarded_headers(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "Accept: */*\r\n");
        assert!(head.keep_alive());
    }

    #[test]
    fn framing_follows_the_headers() {
        assert_eq!(parse("POST http://a/ HTTP/1.1\r\nContent-Length: 5\r\n\r\n").unwrap().framing, Framing::Length(5));
        assert_eq!(
            parse("POST http://a/ HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap().framing,
            Framing::Chunked
        );
        assert_eq!(parse("GET http://a/ HTTP/1.1\r\n\r\n").unwrap().framing, Framing::Empty);
    }
}
