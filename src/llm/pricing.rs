//! Cost of a response: the `pricing` table (USD per million tokens by model glob, first match wins) applied
//! to its usage, in integer micro-dollars (the unit of spend counters).

use super::usage::Usage;
use crate::config::file;

/// The compiled `pricing` table.
#[derive(Debug, Default)]
pub struct Pricing {}

impl Pricing {
    /// Compiles the rows; an error names the row index and what is wrong.
    pub fn compile(_rows: &[file::Price]) -> Result<Pricing, (usize, String)> {
        Ok(Pricing {})
    }

    /// The table used when the config has none.
    pub fn builtin() -> Pricing {
        Pricing {}
    }

    /// The cost of `usage` for `model` in micro-dollars; 0 when no row matches.
    pub fn cost_micro_usd(&self, _model: &str, _usage: &Usage) -> i64 {
        0
    }

    /// A floor estimate before the response is known: `input_tokens` at the model's input price.
    pub fn estimate_micro_usd(&self, _model: &str, _input_tokens: u64) -> i64 {
        0
    }
}
