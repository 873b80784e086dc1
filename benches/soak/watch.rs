//! Samples of tollgate's footprint while a run goes on: its RSS (`/proc/PID/status`), its open descriptors (the
//! entries of `/proc/PID/fd`) and, from `/metrics`, its open client connections and tunnels and the upstream
//! connections its pools keep between requests; and their trend.

use std::fs;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio::time::sleep;

use crate::gateway::{metric_sum, metrics};
use crate::processes::tree_rss_kib;
use crate::verdict::Verdict;

/// At most this many samples are kept (one every few seconds for 10 hours).
const MAX_SAMPLES: usize = 20_000;

/// One reading.
#[derive(Clone, Copy)]
pub struct Sample {
    /// Seconds since the watch started.
    pub at: f64,
    pub rss_kib: u64,
    pub descriptors: u64,
    /// `tollgate_connections_active` summed over listeners (when /metrics answered).
    pub connections: Option<f64>,
    /// `tollgate_tunnels_active`.
    pub tunnels: Option<f64>,
    /// `tollgate_upstream_pooled_connections` summed over pools: one descriptor each.
    pub pooled: Option<f64>,
}

impl Sample {
    /// The sample on one line.
    pub fn describe(&self) -> String {
        let gauge = |value: Option<f64>| value.map_or("?".into(), |value| format!("{value:.0}"));
        format!(
            "t={:.0}s RSS {:.1} MiB, {} descriptors ({} of them pooled upstream connections), {} connections, {} \
             tunnels",
            self.at,
            self.rss_kib as f64 / 1024.0,
            self.descriptors,
            gauge(self.pooled),
            gauge(self.connections),
            gauge(self.tunnels)
        )
    }

    /// Descriptors besides the pooled upstream connections (all of them when /metrics did not answer).
    pub fn unpooled_descriptors(&self) -> u64 {
        self.descriptors.saturating_sub(self.pooled.unwrap_or(0.0) as u64)
    }

    /// Whether this reading, taken once the load stopped, is back at `baseline`: no more client connections or
    /// tunnels open, and every descriptor beyond the baseline's (and `slack`) a pooled upstream connection,
    /// which `upstream.idle_timeout` closes later.
    pub fn back_to(&self, baseline: &Sample, slack: u64) -> bool {
        self.unpooled_descriptors() <= baseline.unpooled_descriptors() + slack
            && self.connections.unwrap_or(f64::MAX) <= baseline.connections.unwrap_or(0.0)
            && self.tunnels.unwrap_or(f64::MAX) <= baseline.tunnels.unwrap_or(0.0)
    }
}

/// Open descriptors of `pid`.
pub fn descriptors(pid: u32) -> u64 {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |entries| entries.count() as u64)
}

/// One reading of `pid` (and of its /metrics on `admin`), `at` seconds into the watch.
pub async fn sample(pid: u32, admin: SocketAddr, at: f64) -> Sample {
    let gauges = metrics(admin).await.ok();
    let gauge = |name: &str| gauges.as_deref().map(|text| metric_sum(text, name));
    Sample {
        at,
        rss_kib: tree_rss_kib(pid).map_or(0, |(kib, _)| kib),
        descriptors: descriptors(pid),
        connections: gauge("tollgate_connections_active"),
        tunnels: gauge("tollgate_tunnels_active"),
        pooled: gauge("tollgate_upstream_pooled_connections"),
    }
}

/// A sampler running in the background.
pub struct Watch {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<Sample>>,
}

impl Watch {
    /// Samples `pid` every `every` (printing each sample when `print`) until `finish`.
    pub fn start(pid: u32, admin: SocketAddr, every: Duration, print: bool) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let handle = tokio::spawn(async move {
            let started = Instant::now();
            let mut samples = Vec::new();
            while !stopping.load(Ordering::Relaxed) && samples.len() < MAX_SAMPLES {
                let reading = sample(pid, admin, started.elapsed().as_secs_f64()).await;
                if print {
                    println!("- {}", reading.describe());
                }
                samples.push(reading);
                let next = started + every.mul_f64(samples.len() as f64);
                while !stopping.load(Ordering::Relaxed) && Instant::now() < next {
                    sleep((next - Instant::now()).min(Duration::from_millis(200))).await;
                }
            }
            samples
        });
        Watch { stop, handle }
    }

    /// Stops sampling; the samples taken.
    pub async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.unwrap_or_default()
    }
}

/// How one quantity moved over a run: first, last and largest reading, and its least-squares slope per minute
/// over the samples after the warm-up.
pub struct Trend {
    pub first: f64,
    /// The median of the first three readings after the warm-up: the level the run is judged against.
    pub settled: f64,
    pub last: f64,
    /// The median of the last three readings.
    pub end: f64,
    pub max: f64,
    pub slope_per_minute: f64,
    /// Minutes from the end of the warm-up to the last reading.
    pub minutes: f64,
}

impl Trend {
    /// The trend of `value` over `samples`, skipping those before `warm_up` seconds (at least the first one).
    pub fn of(samples: &[Sample], warm_up: f64, value: impl Fn(&Sample) -> f64) -> Option<Trend> {
        let first = samples.first()?;
        let start = samples.iter().position(|sample| sample.at >= warm_up).unwrap_or(samples.len());
        let settled: Vec<&Sample> = samples[start.min(samples.len().saturating_sub(2))..].iter().collect();
        let points: Vec<(f64, f64)> = settled.iter().map(|sample| (sample.at / 60.0, value(sample))).collect();
        let median3 = |values: Vec<f64>| {
            let mut values = values;
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        let head: Vec<f64> = points.iter().take(3).map(|(_, value)| *value).collect();
        let tail: Vec<f64> = points.iter().rev().take(3).map(|(_, value)| *value).collect();
        Some(Trend {
            first: value(first),
            settled: median3(head),
            last: points.last().map_or(0.0, |(_, value)| *value),
            end: median3(tail),
            max: samples.iter().map(&value).fold(f64::MIN, f64::max),
            slope_per_minute: slope(&points),
            minutes: points.last().map_or(0.0, |(at, _)| *at) - points.first().map_or(0.0, |(at, _)| *at),
        })
    }

    /// Growth from the settled level to the end: measured, and as the slope projects it over the settled span.
    pub fn growth(&self) -> (f64, f64) {
        (self.end - self.settled, self.slope_per_minute * self.minutes)
    }
}

/// The least-squares slope of `points` (0 with fewer than two).
fn slope(points: &[(f64, f64)]) -> f64 {
    let count = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mean_x = points.iter().map(|(x, _)| x).sum::<f64>() / count;
    let mean_y = points.iter().map(|(_, y)| y).sum::<f64>() / count;
    let numerator: f64 = points.iter().map(|(x, y)| (x - mean_x) * (y - mean_y)).sum();
    let denominator: f64 = points.iter().map(|(x, _)| (x - mean_x).powi(2)).sum();
    if denominator == 0.0 {
        0.0
    } else {
        numerator / denominator
    }
}

/// Judges RSS and descriptors flat over `samples` (after `warm_up` seconds): from the settled level to the end,
/// neither the measured growth nor the slope's projection may pass `rss_slack` (the larger of that many MiB and
/// 10 % of the settled RSS) or `descriptor_slack` (the larger of that and 10 %).
pub fn judge_flat(verdict: &mut Verdict, samples: &[Sample], warm_up: f64, rss_slack_mib: f64, descriptor_slack: f64) {
    let Some(rss) = Trend::of(samples, warm_up, |sample| sample.rss_kib as f64 / 1024.0) else {
        verdict.check(false, "no samples of RSS");
        return;
    };
    let Some(descriptors) = Trend::of(samples, warm_up, |sample| sample.descriptors as f64) else {
        verdict.check(false, "no samples of descriptors");
        return;
    };
    let rss_bound = rss_slack_mib.max(rss.settled * 0.10);
    let (measured, projected) = rss.growth();
    verdict.check(
        measured <= rss_bound && projected <= rss_bound,
        format!(
            "RSS flat: first {:.1} MiB, settled {:.1} MiB (after {warm_up:.0} s), last {:.1} MiB, max {:.1} MiB; \
             growth {measured:+.1} MiB, slope {:+.3} MiB/min ({projected:+.1} MiB over {:.1} min); bound {rss_bound:.1} MiB",
            rss.first, rss.settled, rss.last, rss.max, rss.slope_per_minute, rss.minutes
        ),
    );
    let descriptor_bound = descriptor_slack.max(descriptors.settled * 0.10);
    let (measured, projected) = descriptors.growth();
    verdict.check(
        measured <= descriptor_bound && projected <= descriptor_bound,
        format!(
            "descriptors flat: first {:.0}, settled {:.0}, last {:.0}, max {:.0}; growth {measured:+.0}, slope \
             {:+.2}/min ({projected:+.1} over {:.1} min); bound {descriptor_bound:.0}",
            descriptors.first,
            descriptors.settled,
            descriptors.last,
            descriptors.max,
            descriptors.slope_per_minute,
            descriptors.minutes
        ),
    );
}

/// After a run's load stopped: waits (up to `limit`) for the reading to be `back_to(baseline, slack)`; the reading
/// it ended with.
pub async fn settle_to(pid: u32, admin: SocketAddr, baseline: &Sample, slack: u64, limit: Duration) -> Sample {
    let started = Instant::now();
    loop {
        let reading = sample(pid, admin, baseline.at + started.elapsed().as_secs_f64()).await;
        if reading.back_to(baseline, slack) || started.elapsed() >= limit {
            return reading;
        }
        sleep(Duration::from_millis(500)).await;
    }
}
