//! The report: the first table (targets against direct), the tollgate-only table, the interception table and the
//! notes, collected during the run and printed at its end. `docs/BENCHMARKS.md` quotes these tables.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::interception::Side;
use crate::options::{Metric, Options, Scenario, Target};

/// A table cell: a number, or a word saying why there is none.
pub enum Cell {
    Value(f64),
    Note(String),
}

impl Cell {
    fn value(&self) -> Option<f64> {
        match self {
            Cell::Value(value) => Some(*value),
            Cell::Note(_) => None,
        }
    }

    fn text(&self, decimals: usize) -> String {
        match self {
            Cell::Value(value) => format!("{value:.decimals$}"),
            Cell::Note(note) => note.clone(),
        }
    }
}

/// One row of the second table: a tollgate feature against a tollgate baseline, measured in one run.
struct FeatureRow {
    label: String,
    baseline: Cell,
    measured: Cell,
    decimals: usize,
    target: String,
}

/// What a row of the interception table is held to.
pub enum Goal {
    None,
    /// tollgate's value at least this many times mitmproxy's (req/s).
    TimesMitmproxy(f64),
    /// tollgate's value below this (µs).
    Below(f64),
}

/// One row of the interception table: tollgate, the stub direct (plain, TLS) and mitmproxy, in one run.
struct InterceptionRow {
    label: String,
    /// In `Side::ALL` order.
    cells: [Cell; Side::ALL.len()],
    decimals: usize,
    goal: Goal,
}

/// One row of the gateway table: a value per side, the sides named in the row.
struct GatewayRow {
    label: String,
    sides: Vec<String>,
    cells: Vec<Cell>,
    decimals: usize,
}

/// Everything the run measured, and the notes the cells point to.
#[derive(Default)]
pub struct Report {
    targets: BTreeMap<(Metric, Target), Cell>,
    notes: Vec<String>,
    features: Vec<FeatureRow>,
    interception: Vec<InterceptionRow>,
    gateway: Vec<GatewayRow>,
}

impl Report {
    /// A value of the first table.
    pub fn set(&mut self, metric: Metric, target: Target, value: f64) {
        self.targets.insert((metric, target), Cell::Value(value));
    }

    /// Cells of the first table that say `short` instead of a value.
    pub fn note(&mut self, metrics: &[Metric], target: Target, short: &str) {
        for metric in metrics {
            self.targets.insert((*metric, target), Cell::Note(short.to_string()));
        }
    }

    /// Cells of the first table that failed: `failed [N]`, with `message` as note N.
    pub fn fail(&mut self, metrics: &[Metric], target: Target, message: String) {
        self.notes.push(message);
        let short = format!("failed [{}]", self.notes.len());
        self.note(metrics, target, &short);
    }

    /// Adds a note; its number.
    pub fn footnote(&mut self, message: String) -> usize {
        self.notes.push(message);
        self.notes.len()
    }

    /// A feature row; `None` for the baseline means there is none ("n/a"), for the measured value "failed".
    pub fn feature(
        &mut self,
        label: String,
        baseline: Option<f64>,
        measured: Option<f64>,
        decimals: usize,
        target: &str,
    ) {
        let baseline = baseline.map_or_else(|| Cell::Note("n/a".into()), Cell::Value);
        let measured = measured.map_or_else(|| Cell::Note("failed".into()), Cell::Value);
        self.features.push(FeatureRow { label, baseline, measured, decimals, target: target.to_string() });
    }

    /// A feature scenario that could not run: one row saying why (`short`), the details in a note.
    pub fn feature_skipped(&mut self, label: String, short: &str, message: Option<String>) {
        let short = match message {
            Some(message) => format!("{short} [{}]", self.footnote(message)),
            None => short.to_string(),
        };
        self.features.push(FeatureRow {
            label,
            baseline: Cell::Note(short.clone()),
            measured: Cell::Note(short),
            decimals: 0,
            target: String::new(),
        });
    }

    /// A row of the interception table.
    pub fn interception(&mut self, label: String, cells: [Cell; Side::ALL.len()], decimals: usize, goal: Goal) {
        self.interception.push(InterceptionRow { label, cells, decimals, goal });
    }

    /// An interception scenario that could not run: one row saying so, the details in a note.
    pub fn interception_failed(&mut self, label: String, message: String) {
        let short = format!("failed [{}]", self.footnote(message));
        self.interception(label, Side::ALL.map(|_| Cell::Note(short.clone())), 0, Goal::None);
    }

    /// A row of the gateway table: one cell per side in `sides`.
    pub fn gateway(&mut self, sides: &[&str], label: String, cells: Vec<Cell>, decimals: usize) {
        let sides = sides.iter().map(|side| (*side).to_string()).collect();
        self.gateway.push(GatewayRow { label, sides, cells, decimals });
    }

    /// The gateway table: the sides of its first row as columns, and each side over direct's (or tollgate's) value.
    fn gateway_table(&self) -> String {
        let Some(first) = self.gateway.first() else { return String::new() };
        let mut table = format!("| scenario | {} |\n|---|", first.sides.join(" | "));
        table.push_str(&"---:|".repeat(first.sides.len()));
        table.push('\n');
        for row in &self.gateway {
            let cells: Vec<String> = row.cells.iter().map(|cell| cell.text(row.decimals)).collect();
            let _ = writeln!(table, "| {} | {} |", row.label, cells.join(" | "));
        }
        table
    }

    /// Prints the results section: the tables the run filled, the notes, and how to read them.
    pub fn print(&self, options: &Options) {
        println!("\n## results (median of {} rounds)", options.rounds);
        let compares_targets = options.scenarios.iter().any(|scenario| Scenario::COMPARING_TARGETS.contains(scenario));
        if compares_targets {
            print!("\n{}", self.target_table(options));
        }
        if options.scenarios.contains(&Scenario::KeepAlive) {
            println!("\n### a. keep-alive GET latency\n");
            print!("{}", self.latency_table());
        }
        if !self.features.is_empty() {
            println!(
                "\n### tollgate only: TLS listener, limits, Redis state, reload (baseline and measured in one run)\n"
            );
            print!("{}", self.feature_table());
        }
        if !self.interception.is_empty() {
            println!("\n### interception: tollgate, the stub direct (plain and TLS) and mitmproxy (same run)\n");
            print!("{}", self.interception_table());
        }
        if !self.gateway.is_empty() {
            println!("\n### gateway listener: tollgate, the stub direct, an earlier tollgate and LiteLLM (same run)\n");
            print!("{}", self.gateway_table());
        }
        if !self.notes.is_empty() {
            println!("\n### notes\n");
            for (index, note) in self.notes.iter().enumerate() {
                println!("{}. {note}", index + 1);
            }
        }
        if compares_targets {
            println!(
                "\nratios are target/direct: for req/s, conn/s and MiB/s higher is better, for latency lower is better. \
                 b for direct is connect + GET + close without a proxy; d has no direct value. \
                 d is the growth of the summed VmRSS of the proxy's process tree divided by the tunnels opened."
            );
        }
        if !self.interception.is_empty() {
            println!(
                "\nin the interception table every cell is the median of rounds that run direct, direct TLS, tollgate \
                 (without and with an actions policy that holds tool calls) and mitmproxy in turn; \"added\" is the side's value minus direct's. Direct is the client speaking the \
                 same HTTP/1.1 to the plain stub, direct TLS the same over TLS; both have client and stub on core 0 \
                 with no proxy: the harness's ceiling. The intercepted tunnels are kept alive (one full TLS handshake \
                 each)."
            );
        }
        if !self.features.is_empty() {
            println!(
                "\nin the tollgate-only table the ratio is measured/baseline, each the median of rounds that alternate \
                 baseline and measured; for latency lower is better. Every TLS connection is a full handshake (no \
                 resumption)."
            );
        }
    }

    fn value(&self, metric: Metric, target: Target) -> Option<f64> {
        self.targets.get(&(metric, target)).and_then(Cell::value)
    }

    fn cell(&self, metric: Metric, target: Target) -> String {
        match self.targets.get(&(metric, target)) {
            Some(cell) => cell.text(metric.decimals()),
            None => "not run".into(),
        }
    }

    fn target_table(&self, options: &Options) -> String {
        let mut table = String::new();
        table.push_str(
            "| scenario | direct | tollgate | squid | tinyproxy | tollgate/direct | squid/direct | tinyproxy/direct |\n",
        );
        table.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for metric in Metric::ALL {
            let _ = write!(table, "| {} |", metric.label(options));
            for target in Target::ALL {
                let _ = write!(table, " {} |", self.cell(metric, target));
            }
            for target in [Target::Tollgate, Target::Squid, Target::Tinyproxy] {
                let ratio = match (self.value(metric, target), self.value(metric, Target::Direct)) {
                    (Some(value), Some(direct)) if direct > 0.0 => format!("{:.2}x", value / direct),
                    _ => "n/a".into(),
                };
                let _ = write!(table, " {ratio} |");
            }
            table.push('\n');
        }
        table
    }

    fn latency_table(&self) -> String {
        let mut table = String::from("| target | req/s | p50 (µs) | p99 (µs) |\n|---|---:|---:|---:|\n");
        for target in Target::ALL {
            let _ = writeln!(
                table,
                "| {} | {} | {} | {} |",
                target.name(),
                self.cell(Metric::KeepAliveRate, target),
                self.cell(Metric::KeepAliveP50, target),
                self.cell(Metric::KeepAliveP99, target)
            );
        }
        table
    }

    fn feature_table(&self) -> String {
        let mut table = String::from(
            "| scenario (tollgate only) | baseline | measured | measured/baseline | target |\n|---|---:|---:|---:|---|\n",
        );
        for row in &self.features {
            let ratio = match (&row.baseline, &row.measured) {
                (Cell::Value(baseline), Cell::Value(measured)) if *baseline > 0.0 => {
                    format!("{:.2}x", measured / baseline)
                }
                _ => "n/a".into(),
            };
            let _ = writeln!(
                table,
                "| {} | {} | {} | {ratio} | {} |",
                row.label,
                row.baseline.text(row.decimals),
                row.measured.text(row.decimals),
                row.target
            );
        }
        table
    }

    fn interception_table(&self) -> String {
        let mut table = String::from("| scenario |");
        for side in Side::ALL {
            let _ = write!(table, " {} |", side.name());
        }
        table.push_str(" tollgate/mitmproxy | target | met? |\n|---|---:|---:|---:|---:|---:|---:|---|---|\n");
        for row in &self.interception {
            let _ = write!(table, "| {} |", row.label);
            for cell in &row.cells {
                let _ = write!(table, " {} |", cell.text(row.decimals));
            }
            let mitmproxy_column = Side::ALL.iter().position(|side| *side == Side::Mitmproxy).unwrap_or(0);
            let (tollgate, mitmproxy) = (row.cells[0].value(), row.cells[mitmproxy_column].value());
            let ratio = match (tollgate, mitmproxy) {
                (Some(tollgate), Some(mitmproxy)) if mitmproxy > 0.0 => Some(tollgate / mitmproxy),
                _ => None,
            };
            let ratio_text = ratio.map_or_else(|| "n/a".into(), |ratio| format!("{ratio:.2}x"));
            let (target, met) = match row.goal {
                Goal::None => (String::new(), ""),
                Goal::TimesMitmproxy(times) => (
                    format!("≥ {times:.0}× mitmproxy"),
                    ratio.map_or("n/a", |ratio| if ratio >= times { "✓" } else { "✗" }),
                ),
                Goal::Below(limit) => {
                    (format!("< {limit:.0} µs"), tollgate.map_or("n/a", |value| if value < limit { "✓" } else { "✗" }))
                }
            };
            let _ = writeln!(table, " {ratio_text} | {target} | {met} |");
        }
        table
    }
}
