//! Prices and cost: what a request costs, in integer nano-USD.
//!
//! Prices are USD per million tokens, as providers publish them, and are
//! held as integer nano-USD per million tokens (`0.0375 $/M` is exactly
//! `37_500_000`). A request's cost is computed once, with one rounding:
//!
//! ```text
//! cost = ceil( ( (prompt − cached − cache_write) × input
//!              + cached × cached_input            (input when no cached price)
//!              + cache_write × cache_write_price  (input when none)
//!              + completion × output ) / 1_000_000 )   nano-USD
//! ```
//!
//! `prompt` counts every prompt token once (OpenAI's convention: cached
//! tokens are a subset of it), so cached tokens are billed at the cached
//! rate and never also at the input rate. Reasoning tokens are part of
//! `completion`. A streamed and a buffered request with the same usage
//! therefore cost exactly the same.
//!
//! The built-in table is `data/prices.toml` (each price with its source and
//! date); a deployment's `price = { … }` in the config overrides it.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;

use crate::metering::usage::TokenUsage;

/// USD → nano-USD.
const NANOS: f64 = 1e9;

/// A model's price, nano-USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub cached_input: Option<u64>,
    pub cache_write: Option<u64>,
    pub output: u64,
}

/// A price as written (USD per million tokens), in the config or the table.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UsdPrice {
    pub input: f64,
    #[serde(default)]
    pub output: Option<f64>,
    #[serde(default)]
    pub cached_input: Option<f64>,
    #[serde(default)]
    pub cache_write: Option<f64>,
}

fn nanos(usd_per_m: f64) -> Option<u64> {
    (usd_per_m.is_finite() && usd_per_m >= 0.0).then(|| (usd_per_m * NANOS).round() as u64)
}

impl UsdPrice {
    /// The integer form; `None` when a number is negative or not finite.
    pub fn to_price(&self) -> Option<Price> {
        let optional = |v: Option<f64>| match v {
            None => Some(None),
            Some(x) => nanos(x).map(Some),
        };
        Some(Price {
            input: nanos(self.input)?,
            output: nanos(self.output.unwrap_or(0.0))?,
            cached_input: optional(self.cached_input)?,
            cache_write: optional(self.cache_write)?,
        })
    }
}

impl Price {
    /// The cost of `usage`, nano-USD (see the module docs for the formula).
    pub fn cost_nanos(&self, usage: &TokenUsage) -> u64 {
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        let written = usage.cache_write_tokens.min(usage.prompt_tokens - cached);
        let fresh = usage.prompt_tokens - cached - written;
        let total: u128 = fresh as u128 * self.input as u128
            + cached as u128 * self.cached_input.unwrap_or(self.input) as u128
            + written as u128 * self.cache_write.unwrap_or(self.input) as u128
            + usage.completion_tokens as u128 * self.output as u128;
        u64::try_from(total.div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }
}

/// Nano-USD as USD, for display.
pub fn usd(nanos: u64) -> f64 {
    nanos as f64 / NANOS
}

#[derive(Deserialize)]
struct Table {
    price: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    provider: String,
    model: String,
    #[serde(default)]
    aliases: Vec<String>,
    input: f64,
    #[serde(default)]
    output: Option<f64>,
    #[serde(default)]
    cached_input: Option<f64>,
    #[serde(default)]
    cache_write: Option<f64>,
}

/// The built-in table: (provider family, model) → price.
fn table() -> &'static HashMap<(String, String), Price> {
    static TABLE: OnceLock<HashMap<(String, String), Price>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut map = HashMap::new();
        // The file is checked by a unit test; a bad entry is skipped, not fatal.
        if let Ok(t) = toml::from_str::<Table>(include_str!("../../data/prices.toml")) {
            for e in t.price {
                let usd = UsdPrice {
                    input: e.input,
                    output: e.output,
                    cached_input: e.cached_input,
                    cache_write: e.cache_write,
                };
                if let Some(p) = usd.to_price() {
                    for name in std::iter::once(&e.model).chain(&e.aliases) {
                        map.entry((e.provider.clone(), name.clone())).or_insert(p);
                    }
                }
            }
        }
        map
    })
}

/// The built-in price of `model` at a provider `family` (`openai`,
/// `anthropic`, …); `None` family looks the model up under any provider
/// (for `openai-compatible` hosts serving open models).
pub fn builtin(family: Option<&str>, model: &str) -> Option<Price> {
    let t = table();
    match family {
        Some(f) => t.get(&(f.to_owned(), model.to_owned())).copied(),
        None => t.iter().find(|((_, m), _)| m == model).map(|(_, p)| *p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(prompt: u64, cached: u64, completion: u64) -> TokenUsage {
        TokenUsage {
            prompt_tokens: prompt,
            cached_tokens: cached,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            ..Default::default()
        }
    }

    #[test]
    fn formula_counts_cached_once() {
        let p = UsdPrice {
            input: 2.5,
            output: Some(10.0),
            cached_input: Some(1.25),
            cache_write: None,
        }
        .to_price()
        .unwrap();
        assert_eq!(p.input, 2_500_000_000);
        // 1000 prompt (400 cached) + 100 completion:
        // 600 × 2.5 + 400 × 1.25 + 100 × 10 = 1500 + 500 + 1000 = 3000 $/M·tok → 3000 nano-USD... ×1000
        assert_eq!(p.cost_nanos(&usage(1000, 400, 100)), 3_000_000);
        assert_eq!(p.cost_nanos(&usage(0, 0, 0)), 0);
        // One token at 0.0375 $/M is 37.5 nano-USD: rounded up once.
        let tiny = UsdPrice {
            input: 0.0375,
            output: None,
            cached_input: None,
            cache_write: None,
        }
        .to_price()
        .unwrap();
        assert_eq!(tiny.cost_nanos(&usage(1, 0, 0)), 38);
        assert_eq!(tiny.cost_nanos(&usage(2, 0, 0)), 75);
    }

    #[test]
    fn bad_prices_are_refused() {
        assert!(UsdPrice {
            input: -1.0,
            output: None,
            cached_input: None,
            cache_write: None
        }
        .to_price()
        .is_none());
        assert!(UsdPrice {
            input: 1.0,
            output: Some(f64::NAN),
            cached_input: None,
            cache_write: None
        }
        .to_price()
        .is_none());
    }

    #[test]
    fn builtin_table_parses_and_knows_common_models() {
        let t: Table = toml::from_str(include_str!("../../data/prices.toml"))
            .expect("data/prices.toml parses");
        assert!(t.price.len() > 20);
        for e in &t.price {
            let usd = UsdPrice {
                input: e.input,
                output: e.output,
                cached_input: e.cached_input,
                cache_write: e.cache_write,
            };
            assert!(usd.to_price().is_some(), "{}", e.model);
        }
        assert!(builtin(Some("openai"), "gpt-4o").is_some());
        assert!(builtin(Some("openai"), "text-embedding-3-small").is_some());
        assert!(builtin(Some("openai"), "no-such-model").is_none());
    }
}
