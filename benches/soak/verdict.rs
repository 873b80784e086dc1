//! A run's verdict: the checks it made, each passed or failed with its numbers, and notes that are numbers only.

/// The checks of one run.
pub struct Verdict {
    pub name: &'static str,
    /// `(passed, what was checked and measured)`.
    pub checks: Vec<(bool, String)>,
    /// Measurements that are reported, not judged.
    pub notes: Vec<String>,
}

impl Verdict {
    /// A verdict with no checks yet.
    pub fn new(name: &'static str) -> Verdict {
        Verdict { name, checks: Vec::new(), notes: Vec::new() }
    }

    /// Records one check.
    pub fn check(&mut self, passed: bool, what: impl Into<String>) {
        self.checks.push((passed, what.into()));
    }

    /// Records a number that is reported, not judged.
    pub fn note(&mut self, what: impl Into<String>) {
        self.notes.push(what.into());
    }

    /// Every check passed (and there was at least one).
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|(passed, _)| *passed)
    }

    /// Prints the checks and notes, and the verdict.
    pub fn print(&self) {
        println!("\n### {}: {}\n", self.name, if self.passed() { "PASS" } else { "FAIL" });
        for (passed, what) in &self.checks {
            println!("- [{}] {what}", if *passed { "pass" } else { "FAIL" });
        }
        for note in &self.notes {
            println!("- note: {note}");
        }
        println!();
    }
}
