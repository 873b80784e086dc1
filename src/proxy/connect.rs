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
    let head_keep_alive = opened.is_err() && head.keep_alive();
    // The head shares the connection's read buffer: released here, an open tunnel holds neither.
    drop(head);
    let (mut upstream, upstream_address, slots) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(tls)) => return Tunnelled::Intercept(Box::new(Interception { exchange, tls })),
        Err(error) => {
            // Bytes pipelined after a refused CONNECT were meant for the tunnel: they are dropped with the
            // connection. With nothing pipelined, a 407 may be answered on this connection.
            let keep_alive = buf.is_empty() && error.status(Shape::Proxy) == 407 && head_keep_alive;
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

/// Size of the buffer a direction of a plain tunnel takes while bytes flow, until it moves to a pipe.
const COPY_BUFFER: usize = 128 * 1024;

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

/// Bytes a direction of a plain tunnel carries through its buffer before it moves to a pipe (`splice(2)`): a
/// pipe costs four system calls to make and close, paid back within a few hundred KiB. A short tunnel (a CONNECT
/// with one small request) never takes one.
const SPLICE_AFTER: u64 = 512 * 1024;

/// Copies one direction until EOF, then half-closes the other side: through a buffer at first, then, once the
/// direction has carried `SPLICE_AFTER` bytes, through a pipe without copying the bytes into the process.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    bytes: &AtomicU64,
    activity: &AtomicU64,
    started: Instant,
) -> io::Result<()> {
    let flow = Flow { bytes, activity, started };
    match copy(from, to, &flow, Some(SPLICE_AFTER)).await? {
        Copied::Ended => return Ok(()),
        Copied::Carried => {}
    }
    #[cfg(target_os = "linux")]
    if let Some(pipe) = pipe::Pipe::open() {
        return pipe.pump(from, to, |n| flow.carried(n)).await;
    }
    // No pipe to be had (descriptors or the pipe allowance exhausted): the buffer carries on.
    copy(from, to, &flow, None).await.map(|_| ())
}

/// Where one direction of a tunnel counts what it carried.
struct Flow<'a> {
    bytes: &'a AtomicU64,
    activity: &'a AtomicU64,
    started: Instant,
}

impl Flow<'_> {
    /// `n` bytes reached the other side.
    fn carried(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.activity.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// How a buffered copy stopped.
enum Copied {
    /// EOF from `from`: `to` was half-closed.
    Ended,
    /// The direction carried the bytes it was given.
    Carried,
}

/// Copies from `from` to `to` through a buffer taken only while bytes flow, until EOF or, with `limit`, until the
/// direction has carried that many bytes (counted over the whole tunnel).
async fn copy(from: &TcpStream, to: &TcpStream, flow: &Flow<'_>, limit: Option<u64>) -> io::Result<Copied> {
    loop {
        from.readable().await?;
        let mut buf = BytesMut::with_capacity(COPY_BUFFER);
        loop {
            match from.try_read_buf(&mut buf) {
                Ok(0) => {
                    let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
                    return Ok(Copied::Ended);
                }
                Ok(n) => {
                    write_all(to, &buf).await?;
                    buf.clear();
                    flow.carried(n);
                    if limit.is_some_and(|limit| flow.bytes.load(Ordering::Relaxed) >= limit) {
                        return Ok(Copied::Carried);
                    }
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

/// A tunnel direction's pipe: bytes go from one socket into it and from it into the other with `splice(2)`, the
/// kernel moving page references instead of copying through the process.
#[cfg(target_os = "linux")]
mod pipe {
    use std::io;
    use std::os::fd::OwnedFd;

    use rustix::pipe::{fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags};
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    /// The pipe's capacity asked for: as much as a splice moves at once.
    const PIPE_SIZE: usize = 1024 * 1024;
    /// Below this a pipe is not worth it (pipes made past the user's pipe allowance get two pages): stay buffered.
    const MIN_PIPE_SIZE: usize = 64 * 1024;

    pub(super) struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
        capacity: usize,
    }

    impl Pipe {
        /// A non-blocking pipe of `PIPE_SIZE` (or what the system allows, if at least `MIN_PIPE_SIZE`).
        pub(super) fn open() -> Option<Pipe> {
            let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).ok()?;
            let capacity = fcntl_setpipe_size(&write, PIPE_SIZE).or_else(|_| fcntl_getpipe_size(&write)).ok()?;
            (capacity >= MIN_PIPE_SIZE).then_some(Pipe { read, write, capacity })
        }

        /// Moves bytes from `from` through the pipe to `to` until EOF, then half-closes `to`; `carried` counts
        /// each batch once it reached `to`. The pipe is empty whenever `from` is read, so a read that would block
        /// says `from` has nothing, never that the pipe is full.
        pub(super) async fn pump(self, from: &TcpStream, to: &TcpStream, carried: impl Fn(usize)) -> io::Result<()> {
            let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
            loop {
                let filled = loop {
                    let read = from.try_io(Interest::READABLE, || {
                        splice(from, None, &self.write, None, self.capacity, flags).map_err(io::Error::from)
                    });
                    match read {
                        Ok(n) => break n,
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => from.readable().await?,
                        Err(error) => return Err(error),
                    }
                };
                if filled == 0 {
                    let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
                    return Ok(());
                }
                let mut left = filled;
                while left > 0 {
                    let written = to.try_io(Interest::WRITABLE, || {
                        splice(&self.read, None, to, None, left, flags).map_err(io::Error::from)
                    });
                    match written {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => left -= n,
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
                        Err(error) => return Err(error),
                    }
                }
                carried(filled);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Two connected sockets on loopback: (the end handed to the tunnel, the end the test speaks on).
    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dialed = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (accepted, dialed)
    }

    /// Sends `length` bytes of a counting pattern on `to`, then half-closes it.
    async fn send(mut to: tokio::net::tcp::OwnedWriteHalf, length: usize) {
        let pattern: Vec<u8> = (0..length).map(|i| (i % 253) as u8).collect();
        to.write_all(&pattern).await.unwrap();
        to.shutdown().await.unwrap();
    }

    /// Reads to EOF and checks the counting pattern; the count.
    async fn receive(from: tokio::net::tcp::OwnedReadHalf) -> usize {
        receive_after(from, b"").await
    }

    /// Reads to EOF, checks that `first` comes first and the counting pattern after it; the pattern's count.
    async fn receive_after(mut from: tokio::net::tcp::OwnedReadHalf, first: &[u8]) -> usize {
        let mut received = Vec::new();
        from.read_to_end(&mut received).await.unwrap();
        assert!(received.starts_with(first), "the pending bytes come first");
        let pattern = &received[first.len()..];
        assert!(pattern.iter().enumerate().all(|(i, byte)| *byte == (i % 253) as u8), "bytes differ");
        pattern.len()
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_pipe_moves_every_byte_and_passes_on_the_half_close() {
        let (from, client) = socket_pair().await;
        let (to, server) = socket_pair().await;
        let pipe = pipe::Pipe::open().expect("a pipe");
        let (bytes, activity) = (AtomicU64::new(0), AtomicU64::new(0));
        let flow = Flow { bytes: &bytes, activity: &activity, started: Instant::now() };
        let (_client_read, client_write) = client.into_split();
        let (server_read, _server_write) = server.into_split();
        let length = 5 * 1024 * 1024 + 3;
        let ((), received, moved) =
            tokio::join!(send(client_write, length), receive(server_read), pipe.pump(&from, &to, |n| flow.carried(n)));
        moved.expect("the pipe moved the bytes");
        assert_eq!(received, length, "the half-close came after the last byte");
        assert_eq!(bytes.load(Ordering::Relaxed), length as u64);
    }

    #[tokio::test]
    async fn a_plain_tunnel_carries_both_ways_past_the_switch_and_counts() {
        let (client_end, client) = socket_pair().await;
        let (upstream_end, upstream) = socket_pair().await;
        let (mut client_end, mut upstream_end) = (Stream::Tcp(client_end), Stream::Tcp(upstream_end));
        let (client_read, client_write) = client.into_split();
        let (upstream_read, upstream_write) = upstream.into_split();
        let (up, down) = (3 * SPLICE_AFTER as usize + 11, 2 * SPLICE_AFTER as usize + 5);
        let limits = Limits { idle: Duration::from_secs(60), deadline: None };
        let cut = CancellationToken::new();
        let (stats, (), (), from_client, from_upstream) = tokio::join!(
            splice(&mut client_end, &mut upstream_end, BytesMut::from(&b"hello"[..]), limits, &cut),
            send(client_write, up),
            send(upstream_write, down),
            receive_after(upstream_read, b"hello"),
            receive_after(client_read, b"")
        );
        assert_eq!((from_client, from_upstream), (up, down));
        assert_eq!((stats.bytes_up, stats.bytes_down, stats.end), (up as u64 + 5, down as u64, TunnelEnd::Closed));
    }
}
