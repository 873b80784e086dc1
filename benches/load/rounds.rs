//! Comparisons run in rounds: each side in turn (or a baseline and a variant alternately), so that a change in the
//! machine's load hits all alike; a side's rounds are collected in a `Series`.

use tokio::time::sleep;

use crate::parameters::ROUND_PAUSE;
use crate::scenarios::{mean_us, percentile_us, RateRound};

/// The rounds of one side of a comparison.
#[derive(Default)]
pub struct Series {
    pub rate: Vec<f64>,
    pub p50: Vec<f64>,
    pub p99: Vec<f64>,
    pub max: Vec<f64>,
    /// Scenario sse: per round, the mean and the p99 of the events' delays (µs).
    pub event_mean: Vec<f64>,
    pub event_p99: Vec<f64>,
    /// Per round, the proxy's CPU per operation (µs) and its share of the round waiting for its core.
    pub cpu: Vec<f64>,
    pub waiting: Vec<f64>,
    pub late: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

pub fn median_of(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| median(v.to_vec()))
}

impl Series {
    pub fn add(&mut self, mut r: RateRound) {
        let mut events = std::mem::take(&mut r.stats.event_delays_ns);
        if !events.is_empty() {
            events.sort_unstable();
            self.event_mean.push(mean_us(&events));
            self.event_p99.push(percentile_us(&events, 0.99));
        }
        self.late += r.stats.late;
        self.cpu.extend(r.cpu_us);
        self.waiting.extend(r.waiting);
        if r.stats.ok > 0 {
            self.rate.push(r.rate);
            self.p50.push(r.p50_us);
            self.p99.push(r.p99_us);
            self.max.push(r.max_us);
        }
        self.errors += r.stats.errors;
        if r.stats.last_error.is_some() {
            self.last_error = r.stats.last_error;
        }
    }
}

/// Runs `rounds` rounds of every side in turn (`run(i)` runs side `i`), so that a change in the machine's load
/// hits all alike; prints every round (`what` starts the lines) and each side's rounds.
pub async fn interleaved<F, Fut>(rounds: usize, what: &str, names: &[&str], unit: &str, mut run: F) -> Vec<Series>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = RateRound>,
{
    let mut out: Vec<Series> = names.iter().map(|_| Series::default()).collect();
    for r in 1..=rounds {
        for (i, name) in names.iter().enumerate() {
            let round = run(i).await;
            println!("- {what} round {r}/{rounds}, {name}: {}", round.describe(unit));
            out[i].add(round);
            sleep(ROUND_PAUSE).await;
        }
    }
    for (name, s) in names.iter().zip(&out) {
        println!(
            "  - {what} rounds, {name}: {unit} [{}], p50 µs [{}], p99 µs [{}], max µs [{}]",
            format_rounds(&s.rate, 0),
            format_rounds(&s.p50, 0),
            format_rounds(&s.p99, 0),
            format_rounds(&s.max, 0)
        );
        if !s.event_mean.is_empty() {
            println!(
                "  - {what} rounds, {name}: event delay mean µs [{}], p99 µs [{}]",
                format_rounds(&s.event_mean, 0),
                format_rounds(&s.event_p99, 0)
            );
        }
        if !s.cpu.is_empty() {
            println!(
                "  - {what} rounds, {name}: proxy CPU µs per operation [{}], waiting for its core % [{}]",
                format_rounds(&s.cpu, 1),
                format_rounds(&s.waiting.iter().map(|w| w * 100.0).collect::<Vec<_>>(), 0)
            );
        }
    }
    out
}

/// Runs `rounds` rounds of the baseline (`false`) and of the variant (`true`) alternately, so that a change in
/// the machine's load hits both alike; prints every round. `names`: baseline, variant.
pub async fn paired<F, Fut>(rounds: usize, what: &str, names: [&str; 2], unit: &str, mut run: F) -> [Series; 2]
where
    F: FnMut(bool) -> Fut,
    Fut: std::future::Future<Output = RateRound>,
{
    let what = format!("`tollgate` {what}");
    let mut sides = interleaved(rounds, &what, &names, unit, |i| run(i == 1)).await.into_iter();
    let out = [sides.next().unwrap_or_default(), sides.next().unwrap_or_default()];
    if out[0].rate.len() == rounds && out[1].rate.len() == rounds {
        // Each pair ran back to back: its ratio is the least disturbed by a change in the machine's load.
        let ratios: Vec<f64> = out[1].rate.iter().zip(&out[0].rate).map(|(v, b)| v / b).collect();
        println!("  - {what}: {unit} measured/baseline per round [{}]", format_rounds(&ratios, 2));
    }
    out
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

pub fn format_rounds(v: &[f64], decimals: usize) -> String {
    v.iter().map(|x| format!("{x:.decimals$}")).collect::<Vec<_>>().join(", ")
}
