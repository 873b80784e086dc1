//! Absolute-form requests (`http://`, and `https://` where tollgate makes the TLS connection): admitted
//! (`request::admit`), rewritten to origin-form, sent on a pooled upstream connection, and the response relayed
//! back as it arrives. A request to a host in `intercept.hosts` is a model-API request: it goes to `api`, with
//! the same phases and metering as inside an intercepted tunnel, never through a plain forward.
//!
//! `Host` comes from the target (never the client's), hop-by-hop headers and `Proxy-Authorization` stay behind,
//! and redirects are the client's business: nothing is followed here. Under `audit.on_failure: block` the
//! response's end (the whole of a response that arrived with its head, else its body's last byte) is held for the
//! connection to send once the request's record is written.

use std::io::Write;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::answers;
use crate::config::Config;
use crate::http1::body::{self, Framing, RelayError};
use crate::http1::head::{read_head, HeadError, HeadLimits, RequestHead, ResponseHead};
use crate::request::admit::{admit, Credentials, Destination};
use crate::request::door::{Door, Peer};
use crate::request::error::Error;
use crate::request::finish::{Exchange, Held};
use crate::shared::Shared;
use crate::stream::Stream;
use crate::target::Target;
use crate::upstream::pool::{Connection, PoolKey};
use crate::upstream::{self, Dialer, Route};

/// What an absolute-form request came to.
// Returned once per request and matched at once: boxing the exchange would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum Relayed {
    /// Refused or relayed: to be recorded; the connection then serves its next request, or closes.
    Done { exchange: Exchange, keep_alive: bool },
    /// A request to a model host: `api` serves it (and records it) on this connection, which then closes.
    ModelRequest(RequestHead),
}

/// Serves one absolute-form request.
pub async fn forward(
    shared: &Shared,
    config: &Config,
    client: &mut Stream,
    buf: &mut BytesMut,
    head: RequestHead,
    peer: &Peer,
) -> Relayed {
    let mut exchange = Exchange::new(shared.next_request_id(), Door::Forward);
    exchange.method = head.method().to_owned();
    let relayed = async {
        let uri = parse_absolute(head.target())?;
        exchange.target = Some(uri.target.clone());
        exchange.set_path(uri.path);
        if crate::devpage::addressed(config, &uri.target) {
            // The developer page: identified like every request, answered here, never forwarded.
            let page = crate::devpage::serve(shared, config, &head, uri.path, peer, client, &mut exchange).await?;
            let bytes_down = page.answer.len() as u64;
            let held = Held::Answer(page.answer);
            return Ok(Some(Forwarded {
                status: page.status,
                bytes_down,
                keep_alive: page.keep_alive,
                held,
                ..Default::default()
            }));
        }
        if config.llm.intercepts(&uri.target) {
            return Ok(None);
        }
        let credentials = Credentials::Proxy {
            certificate: peer.certificate.as_ref(),
            proxy_authorization: head.header("proxy-authorization"),
        };
        let destination = Destination::Named(&uri.target);
        let admission = admit(shared, config, credentials, destination, peer.address.ip(), &mut exchange).await?;
        let teams = exchange.principal.as_ref().map(|p| p.teams.clone()).unwrap_or_else(|| std::sync::Arc::new([]));
        let dialer = Dialer { config, own_addresses: &shared.own_addresses, teams: &teams };
        let forwarded = relay(shared, &dialer, client, buf, &head, &uri).await;
        // Before the next request on this connection is read (a pipelined one may already be buffered).
        admission.slots.release().await;
        forwarded.map(Some)
    }
    .await;
    match relayed {
        Ok(None) => Relayed::ModelRequest(head),
        Ok(Some(forwarded)) => {
            exchange.status = forwarded.status;
            exchange.bytes_up = forwarded.bytes_up;
            exchange.bytes_down = forwarded.bytes_down;
            exchange.upstream = forwarded.upstream.map(|a| a.to_string());
            exchange.error = forwarded.error;
            exchange.held = forwarded.held;
            Relayed::Done { exchange, keep_alive: forwarded.keep_alive }
        }
        Err(error) => {
            // An unread request body would be taken for the next request: close instead.
            let close =
                !head.keep_alive() || head.framing != body::Framing::Empty || matches!(error, Error::ClientClosed(_));
            answers::refuse(&mut exchange, &error, close);
            Relayed::Done { exchange, keep_alive: !close }
        }
    }
}

/// An absolute-form request target, split.
#[derive(Debug)]
pub struct AbsoluteUri<'a> {
    pub target: Target,
    /// `https://`: tollgate opens TLS to the origin with the upstream trust.
    pub tls: bool,
    /// The `Host` value to send: the authority without a default port.
    pub host_header: String,
    /// Origin-form path and query (`/` when empty).
    pub path: &'a str,
}

/// Parses `http://authority/path?query` or `https://…`; other forms are a 400 naming what to do instead.
pub fn parse_absolute(uri: &str) -> Result<AbsoluteUri<'_>, Error> {
    let bad = |message: &str| Error::BadRequest(message.to_owned());
    if uri.starts_with('/') {
        return Err(bad("tollgate is a proxy: send an absolute-form request (GET http://host/path) or CONNECT"));
    }
    let scheme_end = uri.find("://").ok_or_else(|| bad("request target is not an absolute http:// URI"))?;
    let (tls, default_port) = match &uri[..scheme_end] {
        scheme if scheme.eq_ignore_ascii_case("http") => (false, 80),
        scheme if scheme.eq_ignore_ascii_case("https") => (true, 443),
        _ => return Err(bad("only http:// and https:// are forwarded")),
    };
    let rest = &uri[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let target =
        Target::parse_with_default(authority, Some(default_port)).map_err(|e| Error::BadRequest(e.to_string()))?;
    let path = rest[authority_end..].split('#').next().unwrap_or("");
    let host_header = if target.port == default_port { target.host.to_string() } else { target.to_string() };
    Ok(AbsoluteUri { target, tls, host_header, path: if path.is_empty() { "/" } else { path } })
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
    /// Under `audit.on_failure: block`, the response's end, sent once its record is written.
    pub held: Held,
}

/// Sends one allowed request upstream and relays the response.
async fn relay(
    shared: &Shared,
    dialer: &Dialer<'_>,
    client: &mut Stream,
    client_buf: &mut BytesMut,
    head: &RequestHead,
    uri: &AbsoluteUri<'_>,
) -> Result<Forwarded, Error> {
    if head.expects_continue() && head.framing != Framing::Empty {
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.map_err(client_gone)?;
    }
    let config = dialer.config;
    let key = PoolKey { target: uri.target.clone(), tls: uri.tls };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut connection = connect(shared, dialer, &key).await?;
        let request_head = rewrite_head(head, uri, connection.route, config);
        match send(&mut connection, client, client_buf, head, request_head, config, &uri.target).await {
            // A 407 to an absolute-form request is the parent refusing tollgate, not the client: relayed, it
            // would ask the client for credentials it cannot fix. Same answer as a refused CONNECT.
            Ok((response, _)) if connection.route == Route::Parent && !uri.tls && response.status == 407 => {
                let parent = config.upstream.parent_proxy.as_ref().map(|p| p.display.clone()).unwrap_or_default();
                let reason = String::from_utf8_lossy(response.reason()).into_owned();
                return Err(Error::ParentRefused { parent, answer: format!("407 {reason}") });
            }
            Ok(response) => return respond(shared, client, connection, head, response, key).await,
            // A pooled connection the upstream closed meanwhile: safe to retry when nothing of the body was sent.
            Err(Failure::Stale(_)) if attempt == 1 && head.framing == Framing::Empty => continue,
            Err(Failure::Stale(error) | Failure::Fatal(error)) => return Err(error),
        }
    }
}

enum Failure {
    /// Failed before any response byte on a reused connection.
    Stale(Error),
    Fatal(Error),
}

/// A pooled connection, or a new one: direct or through the parent proxy, with TLS for `https://`.
async fn connect(shared: &Shared, dialer: &Dialer<'_>, key: &PoolKey) -> Result<Connection, Error> {
    let config = dialer.config;
    if let Some(connection) = shared.pool.checkout(key, &config.policy, dialer.teams, config.upstream.idle_timeout) {
        return Ok(connection);
    }
    let (stream, peer, route) = if key.tls {
        match dialer.open_tunnel(&key.target).await? {
            (Stream::Tcp(tcp), peer, route) => (upstream::tls_connect(config, &key.target, tcp).await?, peer, route),
            _ => {
                return Err(Error::BadRequest(
                    "https:// requests through an https:// parent proxy are not supported: use CONNECT".to_owned(),
                ))
            }
        }
    } else {
        dialer.open_forward(&key.target).await?
    };
    Ok(Connection { stream, buf: BytesMut::new(), peer, route, reused: false })
}

/// The head sent upstream: origin-form (absolute-form to a parent proxy, with its credentials), `Host` from
/// the target, end-to-end headers only.
fn rewrite_head(head: &RequestHead, uri: &AbsoluteUri<'_>, route: Route, config: &Config) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + uri.path.len());
    let parent = config.upstream.parent_proxy.as_ref().filter(|_| route == Route::Parent && !uri.tls);
    match parent {
        Some(_) => {
            let _ = write!(out, "{} http://{}{} HTTP/1.1\r\n", head.method(), uri.host_header, uri.path);
        }
        None => {
            let _ = write!(out, "{} {} HTTP/1.1\r\n", head.method(), uri.path);
        }
    }
    let _ = write!(out, "Host: {}\r\n", uri.host_header);
    head.write_forwarded_headers(&mut out);
    if let Some(authorization) = parent.and_then(|p| p.authorization.as_ref()) {
        let _ = write!(out, "Proxy-Authorization: {authorization}\r\n");
    }
    if !head.keep_alive() {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Writes the request and its body, then reads the final response head (1xx are relayed to the client).
async fn send(
    connection: &mut Connection,
    client: &mut Stream,
    client_buf: &mut BytesMut,
    head: &RequestHead,
    mut request_head: Vec<u8>,
    config: &Config,
    target: &Target,
) -> Result<(ResponseHead, u64), Failure> {
    let reused = connection.reused;
    let early = |source: std::io::Error| {
        let error = upstream_io(target, source);
        if reused {
            Failure::Stale(error)
        } else {
            Failure::Fatal(error)
        }
    };
    // A small body already read travels in the same write as the head.
    let rest = body::append_if_complete(head.framing, client_buf, &mut request_head);
    connection.stream.write_all(&request_head).await.map_err(early)?;
    let body_bytes = body::relay(rest, client_buf, client, &mut connection.stream).await.map_err(|e| match e {
        RelayError::Write(source) => early(source),
        other => Failure::Fatal(Error::BadRequest(format!("request body: {other}"))),
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
                return Err(Failure::Fatal(Error::UpstreamTimeout { target: target.to_string() }))
            }
            Err(HeadError::Io(source)) => return Err(early(source)),
            Err(other) => {
                return Err(Failure::Fatal(Error::UpstreamProtocol {
                    target: target.to_string(),
                    problem: other.to_string(),
                }))
            }
        };
        let raw = connection.buf.split_to(length).freeze();
        let response = ResponseHead::parse(raw.clone()).map_err(|problem| {
            Failure::Fatal(Error::UpstreamProtocol { target: target.to_string(), problem: problem.to_owned() })
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
    shared: &Shared,
    client: &mut Stream,
    mut connection: Connection,
    head: &RequestHead,
    (response, bytes_up): (ResponseHead, u64),
    key: PoolKey,
) -> Result<Forwarded, Error> {
    let target = &key.target;
    let framing = response
        .framing(head.method())
        .map_err(|problem| Error::UpstreamProtocol { target: target.to_string(), problem: problem.to_owned() })?;
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
        held: Held::Nothing,
    };
    // A small body already read travels in the same write as the head.
    let rest = body::append_if_complete(framing, &mut connection.buf, &mut out);
    forwarded.bytes_down = out.len() as u64;
    // No response completes before its record is written (audit.on_failure: block): its end is held back.
    let hold = shared.auditor.holds_responses();
    let relayed = if hold && rest == Framing::Empty {
        // The whole response is here: it goes out once its record is written.
        forwarded.held = Held::Answer(out);
        Ok((0, None))
    } else {
        if let Err(error) = client.write_all(&out).await {
            forwarded.keep_alive = false;
            forwarded.error = Some(format!("client closed: {error}"));
            return Ok(forwarded);
        }
        body::relay_holding_end(rest, &mut connection.buf, &mut connection.stream, client, hold).await
    };
    match relayed {
        Ok((relayed, last_byte)) => {
            forwarded.bytes_down += relayed;
            if let Some(byte) = last_byte {
                forwarded.held = Held::LastByte(byte);
            }
            // Not when the request said `Connection: close` upstream: the origin may close it at any moment.
            if head.keep_alive() && response.keep_alive() && framing != Framing::UntilClose {
                connection.reused = false;
                shared.pool.checkin(key, connection);
            }
        }
        Err(error) => {
            forwarded.keep_alive = false;
            forwarded.error = Some(format!("response body: {error}"));
        }
    }
    Ok(forwarded)
}

/// A failed upstream read or write. A TLS error there is a TLS failure: with TLS 1.3 the client's handshake ends
/// before the server has checked the client certificate, so its refusal (an alert) arrives on the first read.
fn upstream_io(target: &Target, source: std::io::Error) -> Error {
    match source.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(tls) => Error::UpstreamTls { target: target.to_string(), reason: tls.to_string() },
        None => Error::UpstreamIo { target: target.to_string(), source },
    }
}

fn client_gone(source: std::io::Error) -> Error {
    Error::ClientClosed(source)
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
        let uri = parse_absolute("https://example.com/x").unwrap();
        assert_eq!((uri.tls, uri.target.port, uri.host_header.as_str()), (true, 443, "example.com"));
        for bad in ["/path", "http://user@a.com/", "http://a.com:0/", "ftp://a.com/", "http:///x"] {
            assert!(parse_absolute(bad).is_err(), "{bad}");
        }
    }
}
