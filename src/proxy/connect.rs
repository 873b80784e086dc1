//! CONNECT tunnels: once allowed and dialled, bytes are spliced both ways until both sides close, the tunnel
//! idles out, or shutdown cuts it.
//!
//! An idle plain tunnel holds no buffer: each direction waits for readiness with nothing allocated and takes a buffer
//! only while bytes flow, so thousands of idle tunnels cost little more than their sockets.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::stream::Stream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The answer to an allowed CONNECT.
pub const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection Established\r\n\r\n";

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
    /// A socket failed (reset, broken pipe).
    Error,
}

impl TunnelEnd {
    pub fn label(self) -> Option<&'static str> {
        match self {
            TunnelEnd::Closed => None,
            TunnelEnd::Idle => Some("idle timeout"),
            TunnelEnd::Cut => Some("cut at shutdown"),
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
    idle_timeout: Duration,
    cut: &CancellationToken,
) -> TunnelStats {
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
    let end = tokio::select! {
        biased;
        () = cut.cancelled() => TunnelEnd::Cut,
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
