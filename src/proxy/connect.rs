//! CONNECT tunnels: once allowed and dialled, bytes are spliced both ways until both sides close, the tunnel
//! idles out, or shutdown cuts it.
//!
//! An idle tunnel holds no buffer: each direction waits for readiness with nothing allocated and takes a buffer
//! only while bytes flow, so thousands of idle tunnels cost little more than their sockets.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
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
pub async fn splice(
    client: &TcpStream,
    upstream: &TcpStream,
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
            write_all(upstream, &pending).await?;
            up.fetch_add(pending.len() as u64, Ordering::Relaxed);
        }
        drop(pending);
        tokio::try_join!(
            pump(client, upstream, &up, &activity, started),
            pump(upstream, client, &down, &activity, started)
        )
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
    let end = tokio::select! {
        result = end => if result.is_ok() { TunnelEnd::Closed } else { TunnelEnd::Error },
        () = idle => TunnelEnd::Idle,
        () = cut.cancelled() => TunnelEnd::Cut,
    };
    TunnelStats { bytes_up: up.load(Ordering::Relaxed), bytes_down: down.load(Ordering::Relaxed), end }
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
