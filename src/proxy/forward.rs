//! Absolute-form `http://` requests: rewritten to origin-form, sent on a pooled upstream connection, and the
//! response relayed back as it arrives.
//!
//! `Host` comes from the target (never the client's), hop-by-hop headers and `Proxy-Authorization` stay behind,
//! and redirects are the client's business: nothing is followed here.

use std::io::Write;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::body::{self, Framing, RelayError};
use super::error::ProxyError;
use super::head::{read_head, HeadError, HeadLimits, RequestHead, ResponseHead};
use super::upstream::{self, Connection};
use crate::app::Gateway;
use crate::config::Config;
use crate::target::Target;

/// An absolute-form request target, split.
#[derive(Debug)]
pub struct AbsoluteUri<'a> {
    pub target: Target,
    /// The `Host` value to send: the authority without a default port.
    pub host_header: String,
    /// Origin-form path and query (`/` when empty).
    pub path: &'a str,
}

/// Parses `http://authority/path?query`; other forms are a 400 naming what to do instead.
pub fn parse_absolute(uri: &str) -> Result<AbsoluteUri<'_>, ProxyError> {
    let bad = |message: &str| ProxyError::BadRequest(message.to_owned());
    if uri.starts_with('/') {
        return Err(bad("tollgate is a proxy: send an absolute-form request (GET http://host/path) or CONNECT"));
    }
    let scheme_end = uri.find("://").ok_or_else(|| bad("request target is not an absolute http:// URI"))?;
    if !uri[..scheme_end].eq_ignore_ascii_case("http") {
        return Err(bad("only http:// is forwarded; use CONNECT for https://"));
    }
    let rest = &uri[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let target = Target::parse_with_default(authority, Some(80)).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    let path = rest[authority_end..].split('#').next().unwrap_or("");
    let host_header = if target.port == 80 { target.host.to_string() } else { target.to_string() };
    Ok(AbsoluteUri { target, host_header, path: if path.is_empty() { "/" } else { path } })
}

/// What an exchange did, for the audit record and the connection loop.
#[derive(Debug, Default)]
pub struct Forwarded {
    pub status: u16,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub upstream: Option<std::net::SocketAddr>,
    /// The client connection may serve another request.
    pub keep_alive: bool,
    /// A failure after the response started: the connection is closed, the audit record says why.
    pub error: Option<String>,
}

/// Sends one allowed request upstream and relays the response.
pub async fn exchange(
    gateway: &Gateway,
    config: &Config,
    client: &mut TcpStream,
    client_buf: &mut BytesMut,
    head: &RequestHead,
    uri: &AbsoluteUri<'_>,
) -> Result<Forwarded, ProxyError> {
    let request_head = rewrite_head(head, uri);
    if head.expects_continue() && head.framing != Framing::Empty {
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.map_err(client_gone)?;
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut connection = connect(gateway, config, &uri.target).await?;
        match send(&mut connection, client, client_buf, head, &request_head, config, &uri.target).await {
            Ok(response) => return respond(gateway, client, connection, head, response, &uri.target).await,
            // A pooled connection the upstream closed meanwhile: safe to retry when nothing of the body was sent.
            Err(Failure::Stale(_)) if attempt == 1 && head.framing == Framing::Empty => continue,
            Err(Failure::Stale(error) | Failure::Fatal(error)) => return Err(error),
        }
    }
}

enum Failure {
    /// Failed before any response byte on a reused connection.
    Stale(ProxyError),
    Fatal(ProxyError),
}

async fn connect(gateway: &Gateway, config: &Config, target: &Target) -> Result<Connection, ProxyError> {
    if let Some(connection) = gateway.pool.checkout(target, &config.policy, config.upstream.idle_timeout) {
        return Ok(connection);
    }
    let addresses =
        upstream::resolve_checked(target, &config.policy, &gateway.own_addresses, config.upstream.dns_timeout).await?;
    let stream = upstream::dial(target, &addresses, config.upstream.connect_timeout).await?;
    let peer = stream.peer_addr().unwrap_or(addresses[0]);
    Ok(Connection { stream, buf: BytesMut::new(), peer, reused: false })
}

/// The head sent upstream: origin-form, `Host` from the target, end-to-end headers only.
fn rewrite_head(head: &RequestHead, uri: &AbsoluteUri<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + uri.path.len());
    let _ = write!(out, "{} {} HTTP/1.1\r\nHost: {}\r\n", head.method(), uri.path, uri.host_header);
    head.write_forwarded_headers(&mut out);
    if !head.keep_alive() {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Writes the request and its body, then reads the final response head (1xx are relayed to the client).
async fn send(
    connection: &mut Connection,
    client: &mut TcpStream,
    client_buf: &mut BytesMut,
    head: &RequestHead,
    request_head: &[u8],
    config: &Config,
    target: &Target,
) -> Result<(ResponseHead, u64), Failure> {
    let reused = connection.reused;
    let early = |source: std::io::Error| {
        let error = ProxyError::UpstreamIo { target: target.to_string(), source };
        if reused {
            Failure::Stale(error)
        } else {
            Failure::Fatal(error)
        }
    };
    connection.stream.write_all(request_head).await.map_err(early)?;
    let body_bytes =
        body::relay(head.framing, client_buf, client, &mut connection.stream).await.map_err(|e| match e {
            RelayError::Write(source) => early(source),
            other => Failure::Fatal(ProxyError::BadRequest(format!("request body: {other}"))),
        })?;
    let limits = HeadLimits {
        max_head: config.server.max_header_bytes,
        max_uri: config.server.max_header_bytes,
        timeout: config.upstream.idle_timeout,
    };
    loop {
        let length = match read_head(&mut connection.stream, &mut connection.buf, limits).await {
            Ok(length) => length,
            Err(HeadError::Closed) => {
                return Err(early(std::io::ErrorKind::UnexpectedEof.into()));
            }
            Err(HeadError::Timeout) => {
                return Err(Failure::Fatal(ProxyError::UpstreamTimeout { target: target.to_string() }))
            }
            Err(HeadError::Io(source)) => return Err(early(source)),
            Err(other) => {
                return Err(Failure::Fatal(ProxyError::UpstreamProtocol {
                    target: target.to_string(),
                    problem: other.to_string(),
                }))
            }
        };
        let raw = connection.buf.split_to(length).freeze();
        let response = ResponseHead::parse(raw.clone()).map_err(|problem| {
            Failure::Fatal(ProxyError::UpstreamProtocol { target: target.to_string(), problem: problem.to_owned() })
        })?;
        if (100..200).contains(&response.status) && response.status != 101 {
            // Interim responses (100 Continue was already answered here; 103 Early Hints) pass through.
            if response.status != 100 {
                client.write_all(&raw).await.map_err(|e| Failure::Fatal(client_gone(e)))?;
            }
            continue;
        }
        return Ok((response, request_head.len() as u64 + body_bytes));
    }
}

/// Writes the response head and relays the body; returns the upstream connection to the pool when it is clean.
async fn respond(
    gateway: &Gateway,
    client: &mut TcpStream,
    mut connection: Connection,
    head: &RequestHead,
    (response, bytes_up): (ResponseHead, u64),
    target: &Target,
) -> Result<Forwarded, ProxyError> {
    let framing = response
        .framing(head.method())
        .map_err(|problem| ProxyError::UpstreamProtocol { target: target.to_string(), problem: problem.to_owned() })?;
    let keep_alive = head.keep_alive() && framing != Framing::UntilClose;
    let mut out = Vec::with_capacity(512);
    let _ = write!(out, "HTTP/1.1 {} ", response.status);
    out.extend_from_slice(response.reason());
    out.extend_from_slice(b"\r\n");
    response.write_forwarded_headers(&mut out);
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let mut forwarded = Forwarded {
        status: response.status,
        bytes_up,
        bytes_down: out.len() as u64,
        upstream: Some(connection.peer),
        keep_alive,
        error: None,
    };
    if let Err(error) = client.write_all(&out).await {
        forwarded.keep_alive = false;
        forwarded.error = Some(format!("client closed: {error}"));
        return Ok(forwarded);
    }
    match body::relay(framing, &mut connection.buf, &mut connection.stream, client).await {
        Ok(relayed) => {
            forwarded.bytes_down += relayed;
            // Not when the request said `Connection: close` upstream: the origin may close it at any moment.
            if head.keep_alive() && response.keep_alive() && framing != Framing::UntilClose {
                connection.reused = false;
                gateway.pool.checkin(target.clone(), connection);
            }
        }
        Err(error) => {
            forwarded.keep_alive = false;
            forwarded.error = Some(format!("response body: {error}"));
        }
    }
    Ok(forwarded)
}

fn client_gone(source: std::io::Error) -> ProxyError {
    ProxyError::ClientClosed(source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_uris_split_and_refuse_other_forms() {
        let uri = parse_absolute("http://Example.COM:8080/a?b#frag").unwrap();
        assert_eq!(
            (uri.target.to_string().as_str(), uri.host_header.as_str(), uri.path),
            ("example.com:8080", "example.com:8080", "/a?b")
        );
        let uri = parse_absolute("HTTP://example.com").unwrap();
        assert_eq!((uri.host_header.as_str(), uri.path), ("example.com", "/"));
        for bad in ["/path", "https://a.com/", "http://user@a.com/", "http://a.com:0/", "ftp://a.com/", "http:///x"] {
            assert!(parse_absolute(bad).is_err(), "{bad}");
        }
    }
}
