//! The overview's history: the request counters (`Metrics::request_totals`) sampled once a minute by a task of the
//! admin listener into a ring of at most a day of samples. The request path pays nothing for it: it only
//! increments the Prometheus counters it always did.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::metrics::RequestTotals;
use crate::shared::Shared;

/// Minutes of history kept: a day.
pub const MINUTES: usize = 24 * 60;

/// The samples, oldest first: the counters' totals at the start of each minute (UNIX minutes).
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<(u64, RequestTotals)>>,
}

/// What happened in one minute (or a part of the current one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Minute {
    /// The minute's start, in seconds since the epoch.
    pub at: u64,
    pub requests: u64,
    pub tunnels: u64,
    pub denials: u64,
    pub errors: u64,
}

impl History {
    /// Records the totals at the start of UNIX minute `minute`; the oldest sample goes past `MINUTES` + 1 (the
    /// extra one is the start of the oldest minute shown).
    pub fn record(&self, minute: u64, totals: RequestTotals) {
        let mut samples = self.samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if samples.back().is_some_and(|(last, _)| *last >= minute) {
            return;
        }
        samples.push_back((minute, totals));
        while samples.len() > MINUTES + 1 {
            samples.pop_front();
        }
    }

    /// The last `count` minutes, oldest first, ending with the current one counted up to `live` (the totals now).
    /// A minute the sampler missed (the process was busy) is folded into the sample after it.
    pub fn minutes(&self, live: RequestTotals, count: usize) -> Vec<Minute> {
        let samples = self.samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut minutes: Vec<Minute> = samples
            .iter()
            .zip(samples.iter().skip(1).map(|(_, totals)| *totals).chain(std::iter::once(live)))
            .map(|((minute, start), end)| Minute {
                at: minute * 60,
                requests: end.requests.saturating_sub(start.requests),
                tunnels: end.tunnels.saturating_sub(start.tunnels),
                denials: end.denials.saturating_sub(start.denials),
                errors: end.errors.saturating_sub(start.errors),
            })
            .collect();
        let skip = minutes.len().saturating_sub(count);
        minutes.drain(..skip);
        minutes
    }
}

/// The UNIX minute `at` falls in.
pub fn minute_of(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() / 60
}

/// Samples the counters now and at the start of every minute until shutdown.
pub async fn sample(history: Arc<History>, shared: Arc<Shared>) {
    loop {
        let now = SystemTime::now();
        history.record(minute_of(now), shared.metrics.request_totals());
        let into_minute = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() % 60_000;
        let until_next = Duration::from_millis(60_000 - into_minute as u64);
        tokio::select! {
            () = tokio::time::sleep(until_next) => {}
            () = shared.shutdown.cut_tunnels.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(requests: u64, tunnels: u64, denials: u64, errors: u64) -> RequestTotals {
        RequestTotals { requests, tunnels, denials, errors }
    }

    #[test]
    fn minutes_are_the_differences_between_samples_and_the_live_totals() {
        let history = History::default();
        history.record(100, totals(0, 0, 0, 0));
        history.record(101, totals(5, 1, 2, 0));
        history.record(101, totals(50, 50, 50, 50)); // the same minute again: kept as first sampled
        history.record(103, totals(9, 1, 3, 1));
        let minutes = history.minutes(totals(12, 4, 3, 2), 10);
        assert_eq!(
            minutes,
            vec![
                Minute { at: 6000, requests: 5, tunnels: 1, denials: 2, errors: 0 },
                Minute { at: 6060, requests: 4, tunnels: 0, denials: 1, errors: 1 },
                Minute { at: 6180, requests: 3, tunnels: 3, denials: 0, errors: 1 },
            ]
        );
        assert_eq!(history.minutes(totals(12, 4, 3, 2), 1), minutes[2..].to_vec());
        assert!(History::default().minutes(totals(1, 1, 1, 1), 10).is_empty());
    }

    #[test]
    fn the_ring_keeps_a_day() {
        let history = History::default();
        for minute in 0..(MINUTES as u64 * 2) {
            history.record(minute, totals(minute, 0, 0, 0));
        }
        let minutes = history.minutes(totals(MINUTES as u64 * 2, 0, 0, 0), usize::MAX);
        assert_eq!(minutes.len(), MINUTES + 1);
        assert!(minutes.iter().all(|minute| minute.requests == 1), "{:?}", &minutes[..3]);
        assert_eq!(minutes[0].at, (MINUTES as u64 - 1) * 60);
    }
}
