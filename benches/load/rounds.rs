//! Comparisons run in rounds: each side in turn (or a baseline and a variant alternately), so that a change in the
//! machine's load hits all alike; a side's rounds are collected in a `Series`.

use std::future::Future;

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

impl Series {
    fn add(&mut self, mut round: RateRound) {
        let mut delays = std::mem::take(&mut round.stats.event_delays_ns);
        if !delays.is_empty() {
            delays.sort_unstable();
            self.event_mean.push(mean_us(&delays));
            self.event_p99.push(percentile_us(&delays, 0.99));
        }
        self.late += round.stats.late;
        self.cpu.extend(round.cpu_us);
        self.waiting.extend(round.waiting);
        if round.stats.successes > 0 {
            self.rate.push(round.rate);
            self.p50.push(round.p50_us);
            self.p99.push(round.p99_us);
            self.max.push(round.max_us);
        }
        self.errors += round.stats.errors;
        if round.stats.last_error.is_some() {
            self.last_error = round.stats.last_error;
        }
    }
}

/// Runs `rounds` rounds of every side in turn (`run(side)` runs side number `side`), so that a change in the
/// machine's load hits all alike; prints every round (`what` starts the lines) and each side's rounds.
pub async fn interleaved<F, Round>(rounds: usize, what: &str, names: &[&str], unit: &str, mut run: F) -> Vec<Series>
where
    F: FnMut(usize) -> Round,
    Round: Future<Output = RateRound>,
{
    let mut series: Vec<Series> = names.iter().map(|_| Series::default()).collect();
    for number in 1..=rounds {
        for (side, name) in names.iter().enumerate() {
            let round = run(side).await;
            println!("- {what} round {number}/{rounds}, {name}: {}", round.describe(unit));
            series[side].add(round);
            sleep(ROUND_PAUSE).await;
        }
    }
    for (name, side) in names.iter().zip(&series) {
        println!(
            "  - {what} rounds, {name}: {unit} [{}], p50 µs [{}], p99 µs [{}], max µs [{}]",
            format_rounds(&side.rate, 0),
            format_rounds(&side.p50, 0),
            format_rounds(&side.p99, 0),
            format_rounds(&side.max, 0)
        );
        if !side.event_mean.is_empty() {
            println!(
                "  - {what} rounds, {name}: event delay mean µs [{}], p99 µs [{}]",
                format_rounds(&side.event_mean, 0),
                format_rounds(&side.event_p99, 0)
            );
        }
        if !side.cpu.is_empty() {
            println!(
                "  - {what} rounds, {name}: proxy CPU µs per operation [{}], waiting for its core % [{}]",
                format_rounds(&side.cpu, 1),
                format_rounds(&side.waiting.iter().map(|waiting| waiting * 100.0).collect::<Vec<_>>(), 0)
            );
        }
    }
    series
}

/// Runs `rounds` rounds of the baseline (`false`) and of the variant (`true`) alternately, so that a change in
/// the machine's load hits both alike; prints every round. `names`: baseline, variant.
pub async fn paired<F, Round>(rounds: usize, what: &str, names: [&str; 2], unit: &str, mut run: F) -> [Series; 2]
where
    F: FnMut(bool) -> Round,
    Round: Future<Output = RateRound>,
{
    let what = format!("`tollgate` {what}");
    let mut sides = interleaved(rounds, &what, &names, unit, |side| run(side == 1)).await.into_iter();
    let series = [sides.next().unwrap_or_default(), sides.next().unwrap_or_default()];
    if series[0].rate.len() == rounds && series[1].rate.len() == rounds {
        // Each pair ran back to back: its ratio is the least disturbed by a change in the machine's load.
        let ratios: Vec<f64> =
            series[1].rate.iter().zip(&series[0].rate).map(|(variant, baseline)| variant / baseline).collect();
        println!("  - {what}: {unit} measured/baseline per round [{}]", format_rounds(&ratios, 2));
    }
    series
}

/// The median (the upper one of an even count); NaN when empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    if values.is_empty() {
        f64::NAN
    } else {
        values[values.len() / 2]
    }
}

/// The median, `None` when empty.
pub fn median_of(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| median(values.to_vec()))
}

/// Each round's value, comma-separated.
pub fn format_rounds(values: &[f64], decimals: usize) -> String {
    values.iter().map(|value| format!("{value:.decimals$}")).collect::<Vec<_>>().join(", ")
}
