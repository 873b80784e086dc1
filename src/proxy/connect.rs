//! CONNECT tunnels: admitted (`request::admit`), dialled to a checked address, then spliced both ways until both
//! sides close, the tunnel idles out, its credential expires, a reload revokes it, or shutdown cuts it. A CONNECT
//! to an intercepted host is only identified here and handed to `intercept`, which checks each request inside.
//!
//! An idle plain tunnel holds no buffer: each direction waits for readiness with nothing allocated and takes a buffer
//! only while bytes flow, so thousands of idle tunnels cost little more than their sockets.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::answers::{self, ESTABLISHED};
use super::sni;
use crate::config::Config;
use crate::http1::head::RequestHead;
use crate::intercept::{self, Interception};
use crate::request::admit::{admit, identify, Credentials, Destination};
use crate::request::door::{Door, Peer};
use crate::request::error::{Error, Shape};
use crate::request::finish::Exchange;
use crate::shared::Shared;
use crate::stream::Stream;
use crate::target::{Host, Target};
use crate::upstream::Dialer;

/// What a CONNECT came to.
// Returned once per request and matched at once: boxing the exchange would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum Tunnelled {
    /// Refused, or spliced to its end: to be recorded; a refused CONNECT may leave the connection open (407).
    Done { exchange: Exchange, keep_alive: bool },
    /// An identified CONNECT to an intercepted host, with its leaf: `intercept::serve_tunnel` takes over.
    Intercept(Box<Interception>),
}

/// Serves one CONNECT: refused, intercepted, or spliced until the tunnel ends.
pub async fn tunnel(
    shared: &Shared,
    config: &Config,
    client: &mut Stream,
    buf: &mut BytesMut,
    head: RequestHead,
    peer: &Peer,
) -> Tunnelled {
    let mut exchange = Exchange::new(shared.next_request_id(), Door::Connect);
    exchange.method = "CONNECT".to_owned();
    let credentials = Credentials::Proxy {
        certificate: peer.certificate.as_ref(),
        proxy_authorization: head.header("proxy-authorization"),
    };
    let opened = async {
        let target = Target::parse_authority(head.target()).map_err(|e| Error::BadRequest(e.to_string()))?;
        let target = &*exchange.target.insert(target);
        if crate::devpage::addressed(config, target) {
            let principal = identify(shared, config, credentials, peer.address.ip(), shared.clock.now()).await?;
            exchange.principal = Some(principal);
            return Err(crate::devpage::over_connect(config));
        }
        if config.llm.intercepts(target) {
            // Only identity is checked here. Policy, hours, limits and the audit log are checked for each
            // request inside, where a refusal is an answer the client shows its user: a refused CONNECT shows
            // only "couldn't connect through your proxy" and is retried for minutes.
            let now = shared.clock.now();
            let principal = identify(shared, config, credentials, peer.address.ip(), now).await?;
            exchange.principal = Some(principal);
            // Minted before the 200: a failure is still a clean answer to the CONNECT.
            return Ok(Err(intercept::server_config(shared, target).await?));
        }
        let target = target.clone();
        let admission =
            admit(shared, config, credentials, Destination::Named(&target), peer.address.ip(), &mut exchange).await?;
        let teams = exchange.principal.as_ref().map(|p| p.teams.clone()).unwrap_or_else(|| std::sync::Arc::new([]));
        let dialer = Dialer { config, own_addresses: &shared.own_addresses, teams: &teams };
        let (stream, address, _route) = dialer.open_tunnel(&target).await?;
        Ok::<_, Error>(Ok((stream, address, admission.slots)))
    }
    .await;
    let (mut upstream, upstream_address, slots) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(tls)) => return Tunnelled::Intercept(Box::new(Interception { exchange, tls })),
        Err(error) => {
            // Bytes pipelined after a refused CONNECT were meant for the tunnel: they are dropped with the
            // connection. With nothing pipelined, a 407 may be answered on this connection.
            let keep_alive = buf.is_empty() && error.status(Shape::Proxy) == 407 && head.keep_alive();
            answers::refuse(&mut exchange, &error, !keep_alive);
            return Tunnelled::Done { exchange, keep_alive };
        }
    };
    exchange.upstream = Some(upstream_address.to_string());
    exchange.status = 200;
    // Registered before the 200: a reload from then on (e.g. while waiting for the ClientHello) closes it.
    let principal = exchange.principal.clone().expect("admitted tunnels have a principal");
    let target = exchange.target.clone().expect("admitted tunnels have a target");
    let expires = principal.expires;
    let registration = shared.register_tunnel(principal, target.clone());
    if client.write_all(ESTABLISHED).await.is_err() || client.flush().await.is_err() {
        exchange.error = Some("client closed before the tunnel opened".to_owned());
        slots.release().await;
        return Tunnelled::Done { exchange, keep_alive: false };
    }
    if let Err(error) = check_client_hello(client, buf, &target, config).await {
        slots.release().await;
        exchange.fail(&error);
        return Tunnelled::Done { exchange, keep_alive: false };
    }
    shared.metrics.tunnels_active.inc();
    let pending = std::mem::take(buf);
    let limits = Limits { idle: config.upstream.idle_timeout, deadline: deadline(expires, shared.clock.now()) };
    let stats = splice(client, &mut upstream, pending, limits, &registration.cut).await;
    shared.metrics.tunnels_active.dec();
    let revoked = registration.revoked();
    drop(registration);
    // Before the record and the close: a client that saw the tunnel end finds its concurrency slots free.
    slots.release().await;
    exchange.bytes_up = stats.bytes_up;
    exchange.bytes_down = stats.bytes_down;
    exchange.error = stats.end.label().map(str::to_owned);
    match stats.end {
        TunnelEnd::Cut if revoked => exchange.fail(&Error::Revoked),
        TunnelEnd::Cut => shared.note_cut_tunnel(),
        TunnelEnd::Expired => exchange.fail(&Error::Auth(crate::identity::AuthError::Expired)),
        _ => {}
    }
    Tunnelled::Done { exchange, keep_alive: false }
}

/// When a credential that expires at `expires` (by the clock that says `now`) ends a tunnel.
fn deadline(expires: Option<SystemTime>, now: SystemTime) -> Option<Instant> {
    expires.map(|expires| Instant::now() + expires.duration_since(now).unwrap_or_default())
}

/// Checks the ClientHello a pass-through tunnel opens with: with `policy.require_sni_match`, its SNI must name the
/// CONNECT host; with interception on, it must not name an intercepted host (a CONNECT to an address or another
/// name of a model host would otherwise carry its requests past the model-API checks). Port 443 only, unless the
/// SNI must match: elsewhere a server may speak first.
async fn check_client_hello(
    client: &mut Stream,
    buf: &mut BytesMut,
    target: &Target,
    config: &Config,
) -> Result<(), Error> {
    let must_match = config.policy.requires_sni_match();
    let guards_interception = config.llm.intercept.is_some() && target.port == 443;
    if !must_match && !guards_interception {
        return Ok(());
    }
    let hello = read_client_hello(client, buf, config.server.header_read_timeout).await;
    let name = match hello {
        Ok(Some(name)) => name,
        Ok(None) if must_match => return Err(Error::SniMismatch("TLS ClientHello without SNI".to_owned())),
        Err(problem) if must_match => return Err(Error::SniMismatch(problem)),
        Ok(None) | Err(_) => return Ok(()),
    };
    if must_match {
        let matches = matches!(&target.host, Host::Name(host) if **host == *name);
        if !matches {
            return Err(Error::SniMismatch(format!("TLS SNI {name:?} does not match CONNECT host {}", target.host)));
        }
    }
    let named = Target::parse_authority(&format!("{name}:{}", target.port));
    if guards_interception && named.is_ok_and(|named| config.llm.intercepts(&named)) {
        return Err(Error::Denied {
            target: format!("{target} (TLS SNI {name})"),
            rule: "intercept.hosts".into(),
            reason: crate::policy::DenyReason::DenyRule,
        });
    }
    Ok(())
}

/// Reads the tunnel's first bytes into `buf` (they are still forwarded) until the ClientHello is complete; its
/// SNI, or `None` without one. An error says why there is no ClientHello.
async fn read_client_hello(client: &mut Stream, buf: &mut BytesMut, wait: Duration) -> Result<Option<String>, String> {
    let deadline = Instant::now() + wait;
    loop {
        match sni::parse(buf) {
            sni::ClientHello::Sni(name) => return Ok(Some(name.to_owned())),
            sni::ClientHello::NoSni => return Ok(None),
            sni::ClientHello::NotTls => return Err("the tunnel did not start with a TLS ClientHello".to_owned()),
            sni::ClientHello::Incomplete if buf.len() >= sni::MAX_CLIENT_HELLO => {
                return Err("TLS ClientHello too large".to_owned())
            }
            sni::ClientHello::Incomplete => {}
        }
        match tokio::time::timeout_at(deadline, client.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Err("the client closed the tunnel before a TLS ClientHello".to_owned()),
            Err(_) => return Err("no TLS ClientHello in time".to_owned()),
        }
    }
}

/// What may end a tunnel besides its two sides.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// No bytes either way for this long.
    pub idle: Duration,
    /// The principal's credential expires.
    pub deadline: Option<Instant>,
}

/// Size of the buffer a direction takes while bytes flow.
const SPLICE_BUFFER: usize = 128 * 1024;

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// Both sides closed their halves.
    Closed,
    /// No bytes in either direction for the idle timeout.
    Idle,
    /// Shutdown's grace period ran out, or a reload revoked it.
    Cut,
    /// The principal's credential expired.
    Expired,
    /// A socket failed (reset, broken pipe).
    Error,
}

impl TunnelEnd {
    pub fn label(self) -> Option<&'static str> {
        match self {
            TunnelEnd::Closed => None,
            TunnelEnd::Idle => Some("idle timeout"),
            TunnelEnd::Cut => Some("cut at shutdown"),
            TunnelEnd::Expired => Some("the credential expired"),
            TunnelEnd::Error => Some("connection reset"),
        }
    }
}

/// What a tunnel carried.
#[derive(Debug, Clone, Copy)]
pub struct TunnelStats {
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub end: TunnelEnd,
}

/// Splices `client` and `upstream` after writing `pending` (bytes the client sent after its CONNECT head).
/// Two plain sockets take the readiness path that holds no buffer while idle; TLS on either side takes the
/// stream path.
pub async fn splice(
    client: &mut Stream,
    upstream: &mut Stream,
    pending: BytesMut,
    limits: Limits,
    cut: &CancellationToken,
) -> TunnelStats {
    let idle_timeout = limits.idle;
    let started = Instant::now();
    let activity = AtomicU64::new(0);
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let end = async {
        if !pending.is_empty() {
            upstream.write_all(&pending).await?;
            upstream.flush().await?;
            up.fetch_add(pending.len() as u64, Ordering::Relaxed);
        }
        drop(pending);
        match (&mut *client, &mut *upstream) {
            (Stream::Tcp(client), Stream::Tcp(upstream)) => tokio::try_join!(
                pump(client, upstream, &up, &activity, started),
                pump(upstream, client, &down, &activity, started)
            )
            .map(|_| ()),
            (client, upstream) => {
                let (client_read, client_write) = tokio::io::split(client);
                let (upstream_read, upstream_write) = tokio::io::split(upstream);
                tokio::try_join!(
                    pump_stream(client_read, upstream_write, &up, &activity, started),
                    pump_stream(upstream_read, client_write, &down, &activity, started)
                )
                .map(|_| ())
            }
        }
    };
    let idle = async {
        loop {
            let last = started + Duration::from_millis(activity.load(Ordering::Relaxed));
            if last.elapsed() >= idle_timeout {
                return;
            }
            tokio::time::sleep_until(last + idle_timeout).await;
        }
    };
    // A cut comes first: a tunnel cut before it started forwards nothing (not even the bytes already read).
    let expired = async {
        match limits.deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    let end = tokio::select! {
        biased;
        () = cut.cancelled() => TunnelEnd::Cut,
        () = expired => TunnelEnd::Expired,
        result = end => if result.is_ok() { TunnelEnd::Closed } else { TunnelEnd::Error },
        () = idle => TunnelEnd::Idle,
    };
    TunnelStats { bytes_up: up.load(Ordering::Relaxed), bytes_down: down.load(Ordering::Relaxed), end }
}

/// Buffer of one direction of a TLS tunnel (a TLS record is at most 16 KiB).
const STREAM_BUFFER: usize = 16 * 1024;

/// Copies one direction of a tunnel with TLS on a side, until EOF; then closes the other side's write half.
async fn pump_stream<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut from: R,
    mut to: W,
    bytes: &AtomicU64,
    activity: &AtomicU64,
    started: Instant,
) -> io::Result<()> {
    let mut buf = vec![0u8; STREAM_BUFFER];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        activity.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Copies one direction until EOF, then half-closes the other side.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    bytes: &AtomicU64,
    activity: &AtomicU64,
    started: Instant,
) -> io::Result<()> {
    loop {
        from.readable().await?;
        let mut buf = BytesMut::with_capacity(SPLICE_BUFFER);
        loop {
            match from.try_read_buf(&mut buf) {
                Ok(0) => {
                    let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
                    return Ok(());
                }
                Ok(n) => {
                    write_all(to, &buf).await?;
                    buf.clear();
                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                    activity.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => return Err(error),
            }
        }
    }
}

async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
            Err(error) => return Err(error),
        }
    }
    Ok(())
}
