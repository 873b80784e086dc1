//! The report: the first table (targets against direct), the tollgate-only table, the interception table and the
//! notes, collected during the run and printed at its end.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::interception::Side;
use crate::options::{Metric, Options, Target};

pub enum Cell {
    Value(f64),
    Note(String),
}

/// One row of the second table: a tollgate feature against a tollgate baseline, measured in one run.
pub struct FeatureRow {
    pub label: String,
    pub base: Cell,
    pub value: Cell,
    pub decimals: usize,
    pub target: String,
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
pub struct InterceptionRow {
    pub label: String,
    /// In `Side::ALL` order.
    pub cells: [Cell; 4],
    pub decimals: usize,
    pub goal: Goal,
}

#[derive(Default)]
pub struct Report {
    pub cells: BTreeMap<(Metric, Target), Cell>,
    pub notes: Vec<String>,
    pub features: Vec<FeatureRow>,
    pub api: Vec<InterceptionRow>,
}

impl Report {
    pub fn set(&mut self, m: Metric, k: Target, v: f64) {
        self.cells.insert((m, k), Cell::Value(v));
    }

    pub fn note(&mut self, metrics: &[Metric], k: Target, short: &str) {
        for m in metrics {
            self.cells.insert((*m, k), Cell::Note(short.to_string()));
        }
    }

    pub fn fail(&mut self, metrics: &[Metric], k: Target, msg: String) {
        self.notes.push(msg);
        let short = format!("failed [{}]", self.notes.len());
        self.note(metrics, k, &short);
    }

    pub fn footnote(&mut self, msg: String) -> usize {
        self.notes.push(msg);
        self.notes.len()
    }

    pub fn value(&self, m: Metric, k: Target) -> Option<f64> {
        match self.cells.get(&(m, k)) {
            Some(Cell::Value(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn cell(&self, m: Metric, k: Target) -> String {
        match self.cells.get(&(m, k)) {
            Some(Cell::Value(v)) => format!("{v:.*}", m.decimals()),
            Some(Cell::Note(n)) => n.clone(),
            None => "not run".into(),
        }
    }

    pub fn table(&self, options: &Options) -> String {
        let mut s = String::new();
        s.push_str("| scenario | direct | tollgate | squid | tinyproxy | tollgate/direct | squid/direct | tinyproxy/direct |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for m in Metric::ALL {
            let _ = write!(s, "| {} |", m.label(options));
            for k in Target::ALL {
                let _ = write!(s, " {} |", self.cell(m, k));
            }
            for k in [Target::Tollgate, Target::Squid, Target::Tinyproxy] {
                let r = match (self.value(m, k), self.value(m, Target::Direct)) {
                    (Some(v), Some(d)) if d > 0.0 => format!("{:.2}x", v / d),
                    _ => "n/a".into(),
                };
                let _ = write!(s, " {r} |");
            }
            s.push('\n');
        }
        s
    }

    /// A feature row; `None` for the baseline means there is none ("n/a"), for the value "failed".
    pub fn feature(&mut self, label: String, base: Option<f64>, value: Option<f64>, decimals: usize, target: &str) {
        let base = base.map_or_else(|| Cell::Note("n/a".into()), Cell::Value);
        let value = value.map_or_else(|| Cell::Note("failed".into()), Cell::Value);
        self.features.push(FeatureRow { label, base, value, decimals, target: target.to_string() });
    }

    /// A feature scenario that could not run: one row saying why (`short`), the details in a note.
    pub fn feature_skipped(&mut self, label: String, short: &str, msg: Option<String>) {
        let short = match msg {
            Some(m) => format!("{short} [{}]", self.footnote(m)),
            None => short.to_string(),
        };
        self.features.push(FeatureRow {
            label,
            base: Cell::Note(short.clone()),
            value: Cell::Note(short),
            decimals: 0,
            target: String::new(),
        });
    }

    pub fn feature_table(&self) -> String {
        let mut s = String::from(
            "| scenario (tollgate only) | baseline | measured | measured/baseline | target |\n|---|---:|---:|---:|---|\n",
        );
        let cell = |c: &Cell, decimals: usize| match c {
            Cell::Value(v) => format!("{v:.decimals$}"),
            Cell::Note(n) => n.clone(),
        };
        for r in &self.features {
            let ratio = match (&r.base, &r.value) {
                (Cell::Value(b), Cell::Value(v)) if *b > 0.0 => format!("{:.2}x", v / b),
                _ => "n/a".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {ratio} | {} |",
                r.label,
                cell(&r.base, r.decimals),
                cell(&r.value, r.decimals),
                r.target
            );
        }
        s
    }

    pub fn api(&mut self, label: String, cells: [Cell; 4], decimals: usize, goal: Goal) {
        self.api.push(InterceptionRow { label, cells, decimals, goal });
    }

    /// An interception scenario that could not run: one row saying so, the details in a note.
    pub fn interception_failed(&mut self, label: String, msg: String) {
        let short = format!("failed [{}]", self.footnote(msg));
        self.api(label, Side::ALL.map(|_| Cell::Note(short.clone())), 0, Goal::None);
    }

    pub fn interception_table(&self) -> String {
        let mut s = String::from("| scenario |");
        for side in Side::ALL {
            let _ = write!(s, " {} |", side.name());
        }
        s.push_str(" tollgate/mitmproxy | target | met? |\n|---|---:|---:|---:|---:|---:|---|---|\n");
        let val = |c: &Cell| match c {
            Cell::Value(v) => Some(*v),
            Cell::Note(_) => None,
        };
        for r in &self.api {
            let _ = write!(s, "| {} |", r.label);
            for c in &r.cells {
                match c {
                    Cell::Value(v) => {
                        let _ = write!(s, " {v:.*} |", r.decimals);
                    }
                    Cell::Note(n) => {
                        let _ = write!(s, " {n} |");
                    }
                }
            }
            let (tollgate, mitmproxy) = (val(&r.cells[0]), val(&r.cells[3]));
            let ratio = match (tollgate, mitmproxy) {
                (Some(t), Some(m)) if m > 0.0 => Some(t / m),
                _ => None,
            };
            let ratio_text = ratio.map_or_else(|| "n/a".into(), |x| format!("{x:.2}x"));
            let (target, met) = match r.goal {
                Goal::None => (String::new(), ""),
                Goal::TimesMitmproxy(x) => {
                    (format!("≥ {x:.0}× mitmproxy"), ratio.map_or("n/a", |v| if v >= x { "✓" } else { "✗" }))
                }
                Goal::Below(x) => (format!("< {x:.0} µs"), tollgate.map_or("n/a", |v| if v < x { "✓" } else { "✗" })),
            };
            let _ = writeln!(s, " {ratio_text} | {target} | {met} |");
        }
        s
    }

    pub fn latency_table(&self) -> String {
        let mut s = String::from("| target | req/s | p50 (µs) | p99 (µs) |\n|---|---:|---:|---:|\n");
        for k in Target::ALL {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                k.name(),
                self.cell(Metric::KeepAliveRate, k),
                self.cell(Metric::KeepAliveP50, k),
                self.cell(Metric::KeepAliveP99, k)
            );
        }
        s
    }
}
