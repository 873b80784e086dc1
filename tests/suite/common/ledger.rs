//! An audit file written as the gateway's file sink writes it: each record serialised on one line and hash-chained
//! (`prev`, then `hash` over the line up to it), with raw lines (a torn write) where a test wants them.

use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// A chained audit file being written, in memory until `write`.
pub struct Ledger {
    text: String,
    prev: String,
}

impl Ledger {
    /// An empty file: the first record's `prev` is 64 zeros.
    pub fn new() -> Self {
        Self { text: String::new(), prev: "0".repeat(64) }
    }

    /// Appends `record` (which serialises as a JSON object) with its `prev` and `hash`.
    pub fn record(&mut self, record: impl Serialize) -> &mut Self {
        let mut line = serde_json::to_string(&record).expect("a record serialises");
        assert!(line.ends_with('}'), "a record is a JSON object: {line}");
        line.pop();
        line.push_str(&format!(",\"prev\":\"{}\"}}", self.prev));
        let hash = hex::encode(Sha256::digest(line.as_bytes()));
        line.pop();
        line.push_str(&format!(",\"hash\":\"{hash}\"}}\n"));
        self.text.push_str(&line);
        self.prev = hash;
        self
    }

    /// A line as it is, e.g. a torn one.
    pub fn raw(&mut self, line: &str) -> &mut Self {
        self.text.push_str(line);
        self.text.push('\n');
        self
    }

    /// A last line cut short, without its newline, as a crash mid-write leaves it.
    pub fn torn(&mut self, line: &str) -> &mut Self {
        self.text.push_str(line);
        self
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, &self.text).expect("write the audit file");
    }
}
