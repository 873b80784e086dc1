//! Idle connections: an intercepted tunnel or gateway connection with no request in flight for
//! `server.keepalive_timeout` is closed. hyper bounds an idle HTTP/1.1 connection itself (its header-read
//! timeout), but not an h2 one, whose client may hold it open without a request for as long as it likes.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// The requests in flight on one connection, and when the last one ended.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `opened` at which the connection last became idle.
    idle_since_ms: AtomicU64,
}

/// One request in flight, until its response body has been sent (or dropped).
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity { opened: Instant::now(), in_flight: AtomicUsize::new(0), idle_since_ms: AtomicU64::new(0) })
    }

    /// Marks a request in flight until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// How long the connection has had no request in flight; `None` while one is.
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.opened.elapsed().saturating_sub(since))
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
}

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        let now_ms = u64::try_from(activity.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.idle_since_ms.fetch_max(now_ms, Ordering::AcqRel);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
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
    async fn a_connection_without_requests_expires_a_timeout_after_it_opened() {
        let activity = Activity::new();
        let started = Instant::now();
        activity.expired(Duration::from_secs(5)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
