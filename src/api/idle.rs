//! Idle and slow connections of model-API requests (intercepted tunnels, gateway listeners): a connection with no
//! request in flight for `server.keepalive_timeout` is closed, and so is an HTTP/1.1 connection whose request head
//! has begun (or, on a new connection, not begun) but not arrived within `server.header_read_timeout`.
//!
//! hyper has one timer for both on HTTP/1.1 (its header-read timeout also runs while a keep-alive connection waits
//! for its next request), and neither on h2, whose client may hold a connection open without a request for as long
//! as it likes. So the bytes read are watched here (`Watched`): the first after a request ended starts the head's
//! clock, and a request being served stops it. An h2 connection (its preface) has no head clock: its idle time is
//! bounded by the keep-alive timeout alone.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// `head_since_ms` when no request head is awaited.
const NO_HEAD: u64 = u64::MAX;

/// The start of the h2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// The requests in flight on one connection, when the last one ended, and since when a request head is awaited.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `opened` at which the connection last became idle.
    idle_since_ms: AtomicU64,
    /// Milliseconds after `opened` at which a request head began to arrive (0: the connection opened and is
    /// waiting for its first), or `NO_HEAD`.
    head_since_ms: AtomicU64,
    /// The connection speaks h2: no head clock.
    h2: AtomicBool,
}

/// One request in flight, until its response body has been sent (or dropped).
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(0),
            h2: AtomicBool::new(false),
        })
    }

    /// Marks a request in flight until the returned guard is dropped; its head has arrived.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since_ms.store(NO_HEAD, Ordering::Release);
        Busy(self.clone())
    }

    /// `io`, its reads watched for the head clock.
    pub fn watch<I>(self: &Arc<Self>, io: I) -> Watched<I> {
        Watched { inner: io, activity: self.clone(), first: Vec::new() }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(NO_HEAD - 1)
    }

    /// How long the connection has had no request in flight; `None` while one is.
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.opened.elapsed().saturating_sub(since))
    }

    /// How long a request head has been awaited; `None` when none is (or on h2).
    fn head_waiting_for(&self) -> Option<Duration> {
        let since = self.head_since_ms.load(Ordering::Acquire);
        if since == NO_HEAD || self.h2.load(Ordering::Acquire) {
            return None;
        }
        Some(self.opened.elapsed().saturating_sub(Duration::from_millis(since)))
    }

    /// Completes once the connection has been idle for `timeout`.
    pub async fn expired(&self, timeout: Duration) {
        loop {
            let wait = match self.idle_for() {
                Some(idle) if idle >= timeout => return,
                Some(idle) => timeout - idle,
                None => timeout,
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Completes once a request head has been awaited for `timeout`: begun and not complete, or, on a new
    /// connection, not begun.
    pub async fn head_overdue(&self, timeout: Duration) {
        loop {
            let wait = match self.head_waiting_for() {
                Some(waiting) if waiting >= timeout => return,
                Some(waiting) => timeout - waiting,
                None => timeout,
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Bytes arrived: with no request in flight, they begin a head (unless one has begun already).
    fn read(&self, bytes: &[u8], first: &mut Vec<u8>) {
        if first.len() < H2_PREFACE.len() {
            let wanted = H2_PREFACE.len() - first.len();
            first.extend_from_slice(&bytes[..bytes.len().min(wanted)]);
            if first.len() == H2_PREFACE.len() && first == H2_PREFACE {
                self.h2.store(true, Ordering::Release);
            }
        }
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let now = self.now_ms();
            let _ = self.head_since_ms.compare_exchange(NO_HEAD, now, Ordering::AcqRel, Ordering::Acquire);
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        let now_ms = u64::try_from(activity.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.idle_since_ms.fetch_max(now_ms, Ordering::AcqRel);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's I/O whose reads start the head clock of its `Activity`.
#[derive(Debug)]
pub struct Watched<I> {
    inner: I,
    activity: Arc<Activity>,
    /// The connection's first bytes, up to the length of the h2 preface.
    first: Vec<u8>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                this.activity.read(read, &mut this.first);
            }
        }
        poll
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_expires_only_after_its_last_request_and_the_timeout() {
        let activity = Activity::new();
        let timeout = Duration::from_secs(60);
        let busy = activity.begin();
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(activity.idle_for(), None, "a request in flight is never idle");
        drop(busy);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(activity.idle_for().is_some_and(|idle| idle < timeout));
        let started = Instant::now();
        activity.expired(timeout).await;
        assert_eq!(started.elapsed(), Duration::from_secs(1), "expires a timeout after the last request ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_is_awaited_from_the_open_then_from_its_first_byte_after_a_request() {
        let activity = Activity::new();
        let timeout = Duration::from_secs(10);
        let mut first = Vec::new();
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(activity.head_waiting_for(), Some(Duration::from_secs(4)), "the first head: since the open");
        activity.read(b"GET / HTTP/1.1\r\n", &mut first);
        assert_eq!(activity.head_waiting_for(), Some(Duration::from_secs(4)), "a byte does not restart the clock");
        let busy = activity.begin();
        assert_eq!(activity.head_waiting_for(), None, "served: no head awaited");
        activity.read(b"a body", &mut first);
        tokio::time::advance(Duration::from_secs(60)).await;
        drop(busy);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(activity.head_waiting_for(), None, "idle between requests: the keep-alive timeout's business");
        activity.read(b"GET /next HTTP/1.1\r\n", &mut first);
        let started = Instant::now();
        activity.head_overdue(timeout).await;
        assert_eq!(started.elapsed(), timeout, "overdue a timeout after the next head began");
    }

    #[tokio::test(start_paused = true)]
    async fn an_h2_connection_has_no_head_clock() {
        let activity = Activity::new();
        let mut first = Vec::new();
        activity.read(b"PRI * HTTP", &mut first);
        activity.read(b"/2.0\r\n\r\nSM\r\n\r\n", &mut first);
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(activity.head_waiting_for(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_requests_expires_a_timeout_after_it_opened() {
        let activity = Activity::new();
        let started = Instant::now();
        activity.expired(Duration::from_secs(5)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
