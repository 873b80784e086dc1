//! Cost of a response: the `pricing` table (USD per million tokens by model glob, first match wins) applied
//! to its usage, in integer micro-dollars (the unit of spend counters).

use globset::{Glob, GlobMatcher};

use super::usage::Usage;
use crate::config::file;

/// The compiled `pricing` table. `Pricing::default()` is an empty table, under which everything costs 0;
/// [`Pricing::builtin`] is the table for a configuration without a `pricing` section.
#[derive(Debug, Default)]
pub struct Pricing {
    rows: Vec<PriceRow>,
    compiled: Vec<CompiledRow>,
    /// The row each model seen so far matched: a request costs one lookup, not a scan of the globs.
    memo: std::sync::RwLock<std::collections::HashMap<Box<str>, Option<usize>>>,
}

/// Models remembered before the memo starts over (a client can name any model).
const MEMO_MODELS: usize = 4096;

/// One row as configured, with the cache prices filled in; USD per million tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceRow {
    /// The model glob.
    pub model: String,
    pub input: f64,
    pub output: f64,
    /// Cache writes (the 5-minute price).
    pub cache_write: f64,
    pub cache_write_1h: f64,
    pub cache_read: f64,
    /// USD per 1,000 server-side web searches.
    pub web_search: f64,
}

/// A row ready for matching: prices in pico-dollars per token (USD per million tokens × 10⁶), so that a cost is
/// an exact integer sum, rounded once.
#[derive(Debug)]
struct CompiledRow {
    matcher: GlobMatcher,
    input: u64,
    output: u64,
    cache_write: u64,
    cache_write_1h: u64,
    cache_read: u64,
    /// Pico-dollars per search.
    web_search: u64,
}

/// Pico-dollars in a micro-dollar.
const PICO_PER_MICRO: u128 = 1_000_000;

impl Pricing {
    /// Compiles the rows; an error names the row index and what is wrong.
    pub fn compile(rows: &[file::Price]) -> Result<Pricing, (usize, String)> {
        let mut pricing = Pricing::default();
        for (index, row) in rows.iter().enumerate() {
            let (row, compiled) = compile_row(row).map_err(|message| (index, message))?;
            pricing.rows.push(row);
            pricing.compiled.push(compiled);
        }
        Ok(pricing)
    }

    /// The table used when the configuration has no `pricing` section: list prices of llm-wire.md B6 (newest
    /// listed), one-hour cache writes at 2 × input as listed, and a last `*` row at Opus 5 prices so that an
    /// unknown model is not free. Not expressed: Haiku 5.5's 5× price for prompts over 100K tokens, batch,
    /// regional and fast-mode multipliers.
    pub fn builtin() -> Pricing {
        const TABLE: &[(&str, f64, f64, f64, f64)] = &[
            // model glob, input, output, cache write (5m), cache read
            ("claude-opus-5-5*", 4.0, 20.0, 5.0, 0.20),
            ("claude-sonnet-5-5*", 2.0, 10.0, 2.50, 0.10),
            ("claude-haiku-5-5*", 0.10, 0.50, 0.125, 0.01),
            ("claude-fable-5-1*", 10.0, 50.0, 12.50, 0.25),
            ("claude-fable-5*", 10.0, 50.0, 12.50, 1.00),
            ("claude-mythos-5*", 10.0, 50.0, 12.50, 1.00),
            ("claude-opus-5*", 5.0, 25.0, 6.25, 0.50),
            ("claude-opus-4-8*", 5.0, 25.0, 6.25, 0.50),
            ("claude-opus-4-7*", 5.0, 25.0, 6.25, 0.50),
            ("claude-opus-4-6*", 5.0, 25.0, 6.25, 0.50),
            ("claude-opus-4-5*", 5.0, 25.0, 6.25, 0.50),
            ("claude-opus-4*", 15.0, 75.0, 18.75, 1.50),
            ("claude-sonnet-5*", 2.0, 10.0, 2.50, 0.20),
            ("claude-sonnet-4*", 3.0, 15.0, 3.75, 0.30),
            ("claude-haiku-4-5*", 1.0, 5.0, 1.25, 0.10),
            ("claude-3-5-haiku*", 0.80, 4.0, 1.0, 0.08),
            ("*", 5.0, 25.0, 6.25, 0.50),
        ];
        let rows: Vec<file::Price> = TABLE
            .iter()
            .map(|&(model, input, output, cache_write, cache_read)| file::Price {
                model: model.to_owned(),
                input,
                output,
                cache_write: Some(cache_write),
                cache_write_1h: None,
                cache_read: Some(cache_read),
                web_search: None,
            })
            .collect();
        // Invariant: the table above is valid; `builtin_table_compiles` checks it.
        Self::compile(&rows).expect("the built-in pricing table compiles")
    }

    /// The rows in order, cache prices filled in.
    pub fn rows(&self) -> &[PriceRow] {
        &self.rows
    }

    /// The index of the row that prices `model` (the first whose glob matches), for `tollgate explain`.
    pub fn matching_row(&self, model: &str) -> Option<usize> {
        if let Some(index) = self.memo.read().unwrap_or_else(|p| p.into_inner()).get(model) {
            return *index;
        }
        let index = self.compiled.iter().position(|row| row.matcher.is_match(model));
        let mut memo = self.memo.write().unwrap_or_else(|p| p.into_inner());
        if memo.len() >= MEMO_MODELS {
            memo.clear();
        }
        memo.insert(model.into(), index);
        index
    }

    /// The cost of `usage` for `model` in micro-dollars; 0 when no row matches.
    pub fn cost_micro_usd(&self, model: &str, usage: &Usage) -> i64 {
        let Some(row) = self.row_for(model) else { return 0 };
        let one_hour = usage.cache_creation_1h_input_tokens.min(usage.cache_creation_input_tokens);
        let picodollars = [
            (usage.input_tokens, row.input),
            (usage.output_tokens, row.output),
            (usage.cache_creation_input_tokens - one_hour, row.cache_write),
            (one_hour, row.cache_write_1h),
            (usage.cache_read_input_tokens, row.cache_read),
            (usage.web_search_requests, row.web_search),
        ]
        .into_iter()
        .fold(0u128, |sum, (tokens, price)| sum.saturating_add(u128::from(tokens).saturating_mul(u128::from(price))));
        to_micro_usd(picodollars)
    }

    /// The most a request may cost before its response is known: `input_tokens` at the model's input price plus
    /// `max_output_tokens` at its output price.
    pub fn estimate_micro_usd(&self, model: &str, input_tokens: u64, max_output_tokens: u64) -> i64 {
        let Some(row) = self.row_for(model) else { return 0 };
        let input = u128::from(input_tokens).saturating_mul(u128::from(row.input));
        let output = u128::from(max_output_tokens).saturating_mul(u128::from(row.output));
        to_micro_usd(input.saturating_add(output))
    }

    fn row_for(&self, model: &str) -> Option<&CompiledRow> {
        self.matching_row(model).map(|index| &self.compiled[index])
    }
}

fn compile_row(row: &file::Price) -> Result<(PriceRow, CompiledRow), String> {
    let matcher =
        Glob::new(&row.model).map_err(|error| format!("invalid glob {:?}: {error}", row.model))?.compile_matcher();
    let input = checked_price("input", row.input, PER_MILLION_TOKENS)?;
    let output = checked_price("output", row.output, PER_MILLION_TOKENS)?;
    let cache_write = checked_price("cache_write", row.cache_write.unwrap_or(input * 1.25), PER_MILLION_TOKENS)?;
    let cache_write_1h =
        checked_price("cache_write_1h", row.cache_write_1h.unwrap_or(input * 2.0), PER_MILLION_TOKENS)?;
    let cache_read = checked_price("cache_read", row.cache_read.unwrap_or(input * 0.1), PER_MILLION_TOKENS)?;
    let web_search = checked_price("web_search", row.web_search.unwrap_or(10.0), "per 1,000 searches")?;
    let compiled = CompiledRow {
        matcher,
        input: picodollars_per_token(input),
        output: picodollars_per_token(output),
        cache_write: picodollars_per_token(cache_write),
        cache_write_1h: picodollars_per_token(cache_write_1h),
        cache_read: picodollars_per_token(cache_read),
        // USD per thousand searches is milli-dollars per search: × 10⁹ gives pico-dollars (saturating as above).
        web_search: (web_search * 1e9).round() as u64,
    };
    let row = PriceRow { model: row.model.clone(), input, output, cache_write, cache_write_1h, cache_read, web_search };
    Ok((row, compiled))
}

/// Per million tokens, the unit of every price but `web_search`.
const PER_MILLION_TOKENS: &str = "per million tokens";

fn checked_price(field: &str, usd: f64, per: &str) -> Result<f64, String> {
    if usd.is_finite() && usd >= 0.0 {
        Ok(usd)
    } else {
        Err(format!("{field}: must be a non-negative number of USD {per}"))
    }
}

/// USD per million tokens is micro-dollars per token; × 10⁶ gives pico-dollars per token (rounded, saturating).
fn picodollars_per_token(usd_per_million_tokens: f64) -> u64 {
    // `as` saturates: a price beyond u64 pico-dollars per token (1.8 × 10¹³ USD per million) becomes u64::MAX.
    (usd_per_million_tokens * 1e6).round() as u64
}

/// Rounds pico-dollars to the nearest micro-dollar, saturating at `i64::MAX`.
fn to_micro_usd(picodollars: u128) -> i64 {
    let micro = picodollars.saturating_add(PICO_PER_MICRO / 2) / PICO_PER_MICRO;
    i64::try_from(micro).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(model: &str, input: f64, output: f64, cache_write: Option<f64>, cache_read: Option<f64>) -> file::Price {
        file::Price {
            model: model.to_owned(),
            input,
            output,
            cache_write,
            cache_write_1h: None,
            cache_read,
            web_search: None,
        }
    }

    fn design_example() -> Pricing {
        Pricing::compile(&[
            price("claude-sonnet-4*", 3.0, 15.0, Some(3.75), Some(0.30)),
            price("*", 5.0, 25.0, Some(6.25), Some(0.50)),
        ])
        .expect("the example compiles")
    }

    #[test]
    fn cost_is_tokens_times_price_in_micro_dollars() {
        let pricing = design_example();
        let cost = pricing.cost_micro_usd("claude-sonnet-4-5-20250929", &Usage::tokens(1000, 2000, 3000, 4000));
        assert_eq!(cost, 3000 + 30000 + 11250 + 1200);
        assert_eq!(pricing.cost_micro_usd("claude-opus-5", &Usage::tokens(1_000_000, 0, 0, 0)), 5_000_000);
        assert_eq!(pricing.cost_micro_usd("claude-opus-5", &Usage::tokens(0, 0, 0, 0)), 0);
    }

    #[test]
    fn the_first_matching_row_wins() {
        let pricing = Pricing::compile(&[
            price("claude-sonnet-4-5*", 1.0, 1.0, None, None),
            price("claude-sonnet-4*", 3.0, 15.0, None, None),
            price("claude-sonnet-4-5-x", 100.0, 100.0, None, None),
        ])
        .expect("compiles");
        assert_eq!(pricing.matching_row("claude-sonnet-4-5-x"), Some(0));
        assert_eq!(pricing.matching_row("claude-sonnet-4-20250514"), Some(1));
        assert_eq!(pricing.matching_row("claude-opus-5"), None);
        assert_eq!(pricing.estimate_micro_usd("claude-sonnet-4-5-x", 1000, 0), 1000);
        assert_eq!(pricing.estimate_micro_usd("claude-sonnet-4", 1000, 0), 3000);
        assert_eq!(pricing.estimate_micro_usd("claude-sonnet-4", 1000, 2000), 3000 + 30_000, "max_tokens at $15/M");
    }

    #[test]
    fn no_matching_row_costs_nothing() {
        let pricing = Pricing::compile(&[price("claude-*", 3.0, 15.0, None, None)]).expect("compiles");
        assert_eq!(pricing.cost_micro_usd("gpt-9", &Usage::tokens(1000, 1000, 1000, 1000)), 0);
        assert_eq!(pricing.estimate_micro_usd("gpt-9", 1000, 1000), 0);
        assert_eq!(Pricing::default().cost_micro_usd("claude-opus-5", &Usage::tokens(1, 1, 1, 1)), 0);
    }

    #[test]
    fn cache_prices_default_to_a_share_of_input() {
        let pricing = Pricing::compile(&[price("*", 3.0, 15.0, None, None)]).expect("compiles");
        let row = &pricing.rows()[0];
        assert_eq!((row.cache_write, row.cache_read), (3.75, 3.0 * 0.1));
        assert_eq!(pricing.cost_micro_usd("m", &Usage::tokens(0, 0, 1000, 0)), 3750);
        assert_eq!(pricing.cost_micro_usd("m", &Usage::tokens(0, 0, 0, 1000)), 300);
        let explicit = Pricing::compile(&[price("*", 3.0, 15.0, Some(0.0), Some(1.0))]).expect("compiles");
        assert_eq!(explicit.cost_micro_usd("m", &Usage::tokens(0, 0, 1000, 1000)), 1000);
    }

    #[test]
    fn one_hour_cache_writes_are_priced_apart_at_twice_the_input_by_default() {
        let pricing = Pricing::compile(&[price("*", 3.0, 15.0, None, None)]).expect("compiles");
        assert_eq!(pricing.rows()[0].cache_write_1h, 6.0);
        // 1,000 cache writes, 400 of them for an hour: 600 × 3.75 + 400 × 6.
        let split = Usage { cache_creation_1h_input_tokens: 400, ..Usage::tokens(0, 0, 1000, 0) };
        assert_eq!(pricing.cost_micro_usd("m", &split), 2250 + 2400);
        // A split larger than the total (a malformed usage) is capped by it.
        let over = Usage { cache_creation_1h_input_tokens: 5000, ..Usage::tokens(0, 0, 1000, 0) };
        assert_eq!(pricing.cost_micro_usd("m", &over), 6000);
        let explicit = file::Price { cache_write_1h: Some(10.0), ..price("*", 3.0, 15.0, None, None) };
        let pricing = Pricing::compile(&[explicit]).expect("compiles");
        assert_eq!(pricing.cost_micro_usd("m", &split), 2250 + 4000);
        let bad = file::Price { cache_write_1h: Some(-1.0), ..price("*", 3.0, 15.0, None, None) };
        assert!(Pricing::compile(&[bad]).expect_err("refused").1.starts_with("cache_write_1h: must be"));
    }

    #[test]
    fn web_searches_cost_ten_dollars_a_thousand_by_default() {
        let searches = Usage { web_search_requests: 3, ..Usage::tokens(0, 0, 0, 0) };
        let pricing = Pricing::compile(&[price("*", 3.0, 15.0, None, None)]).expect("compiles");
        assert_eq!(pricing.cost_micro_usd("m", &searches), 30_000);
        let explicit = file::Price { web_search: Some(25.0), ..price("*", 3.0, 15.0, None, None) };
        assert_eq!(Pricing::compile(&[explicit]).expect("compiles").cost_micro_usd("m", &searches), 75_000);
        let bad = file::Price { web_search: Some(f64::NAN), ..price("*", 3.0, 15.0, None, None) };
        assert!(Pricing::compile(&[bad]).expect_err("refused").1.starts_with("web_search: must be"));
    }

    #[test]
    fn costs_round_to_the_nearest_micro_dollar() {
        let pricing = Pricing::compile(&[price("*", 0.3, 0.5, Some(0.25), Some(0.03))]).expect("compiles");
        assert_eq!(pricing.cost_micro_usd("m", &Usage::tokens(1, 0, 0, 0)), 0); // 0.3
        assert_eq!(pricing.cost_micro_usd("m", &Usage::tokens(0, 1, 0, 0)), 1); // 0.5 rounds up
        assert_eq!(pricing.cost_micro_usd("m", &Usage::tokens(5, 1, 2, 0)), 3); // 1.5 + 0.5 + 0.5 = 2.5 → 3
                                                                                // 0.99
        assert_eq!(pricing.cost_micro_usd("m", &Usage::tokens(0, 0, 0, 33)), 1);
    }

    #[test]
    fn huge_counts_saturate_instead_of_overflowing() {
        let pricing = Pricing::compile(&[price("*", 1e12, 1e12, None, None)]).expect("compiles");
        assert_eq!(pricing.cost_micro_usd("m", &Usage::tokens(u64::MAX, u64::MAX, u64::MAX, u64::MAX)), i64::MAX);
        assert_eq!(pricing.estimate_micro_usd("m", u64::MAX, u64::MAX), i64::MAX);
    }

    #[test]
    fn bad_rows_are_refused_with_their_index() {
        let good = price("*", 1.0, 1.0, None, None);
        let cases = [
            (price("*", -1.0, 1.0, None, None), "input: must be a non-negative number of USD per million tokens"),
            (price("*", 1.0, f64::NAN, None, None), "output: must be a non-negative number of USD per million tokens"),
            (price("*", 1.0, 1.0, Some(f64::INFINITY), None), "cache_write: must be"),
            (price("*", 1.0, 1.0, None, Some(-0.1)), "cache_read: must be"),
            (price("*", f64::INFINITY, 1.0, None, None), "input: must be"),
        ];
        for (bad, expected) in cases {
            let error = Pricing::compile(&[price("a", 1.0, 1.0, None, None), bad]).expect_err("refused");
            assert_eq!(error.0, 1);
            assert!(error.1.starts_with(expected), "{}", error.1);
        }
        let (index, message) = Pricing::compile(&[good, price("claude-[", 1.0, 1.0, None, None)]).expect_err("refused");
        assert_eq!(index, 1);
        assert!(message.starts_with("invalid glob \"claude-[\": "), "{message}");
    }

    #[test]
    fn builtin_table_compiles() {
        let pricing = Pricing::builtin();
        assert_eq!(pricing.rows().last().map(|row| row.model.as_str()), Some("*"));
    }

    #[test]
    fn builtin_prices_follow_the_newest_list_prices() {
        let pricing = Pricing::builtin();
        let million_each = |model: &str| {
            [
                Usage::tokens(1_000_000, 0, 0, 0),
                Usage::tokens(0, 1_000_000, 0, 0),
                Usage::tokens(0, 0, 1_000_000, 0),
                Usage::tokens(0, 0, 0, 1_000_000),
            ]
            .map(|usage| pricing.cost_micro_usd(model, &usage))
        };
        let cases: [(&str, [i64; 4]); 12] = [
            ("claude-opus-5-5", [4_000_000, 20_000_000, 5_000_000, 200_000]),
            ("claude-opus-5", [5_000_000, 25_000_000, 6_250_000, 500_000]),
            ("claude-opus-4-7", [5_000_000, 25_000_000, 6_250_000, 500_000]),
            ("claude-opus-4-1-20250805", [15_000_000, 75_000_000, 18_750_000, 1_500_000]),
            ("claude-sonnet-5-5", [2_000_000, 10_000_000, 2_500_000, 100_000]),
            ("claude-sonnet-5", [2_000_000, 10_000_000, 2_500_000, 200_000]),
            ("claude-sonnet-4-5-20250929", [3_000_000, 15_000_000, 3_750_000, 300_000]),
            ("claude-haiku-5-5", [100_000, 500_000, 125_000, 10_000]),
            ("claude-haiku-4-5-20251001", [1_000_000, 5_000_000, 1_250_000, 100_000]),
            ("claude-3-5-haiku-20241022", [800_000, 4_000_000, 1_000_000, 80_000]),
            ("claude-fable-5-1", [10_000_000, 50_000_000, 12_500_000, 250_000]),
            ("some-future-model", [5_000_000, 25_000_000, 6_250_000, 500_000]),
        ];
        for (model, expected) in cases {
            assert_eq!(million_each(model), expected, "{model}");
        }
        assert_eq!(pricing.matching_row("claude-mythos-5"), Some(5));
    }
}
