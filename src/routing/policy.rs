//! An alias's routing policy: the `[models.ALIAS]` keys beside `deployments`.
//!
//! Every key is optional and the defaults are the behaviour of an alias
//! without them: deployments tried in order, each once, no backoff, no
//! cooldown, the request bounded by `[gateway] upstream_timeout_ms`.

use std::fmt;

/// How the next deployment is chosen among the available ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The first available deployment in config order.
    Ordered,
    /// Random, in proportion to each deployment's `weight`.
    Weighted,
    /// In turn, exactly (one counter per alias and instance).
    RoundRobin,
    /// The lowest moving average of upstream latency, exploring now and then.
    LeastLatency,
    /// The lowest estimated cost of this request from the prices.
    LeastCost,
    /// The fewest requests in flight on this instance.
    LeastBusy,
}

impl Strategy {
    /// The names the config accepts, for error messages.
    pub const NAMES: &'static str =
        "ordered, weighted, round-robin, least-latency, least-cost, least-busy";

    pub fn parse(s: &str) -> Option<Strategy> {
        Some(match s {
            "ordered" => Strategy::Ordered,
            "weighted" => Strategy::Weighted,
            "round-robin" => Strategy::RoundRobin,
            "least-latency" => Strategy::LeastLatency,
            "least-cost" => Strategy::LeastCost,
            "least-busy" => Strategy::LeastBusy,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Ordered => "ordered",
            Strategy::Weighted => "weighted",
            Strategy::RoundRobin => "round-robin",
            Strategy::LeastLatency => "least-latency",
            Strategy::LeastCost => "least-cost",
            Strategy::LeastBusy => "least-busy",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The validated routing keys of one alias.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutePolicy {
    pub strategy: Strategy,
    /// Attempts after the first, across deployments (default: one attempt
    /// per deployment, i.e. `deployments - 1`).
    pub retries: u32,
    /// Base of the exponential backoff before each retry (full jitter).
    pub retry_backoff_ms: u64,
    /// Cap of one backoff wait.
    pub retry_backoff_max_ms: u64,
    /// The whole request, every attempt and wait included.
    pub timeout_ms: u64,
    /// A stream whose first event takes longer counts as failed.
    pub stream_first_event_timeout_ms: Option<u64>,
    /// Consecutive failures that cool a deployment down (0: never).
    pub cooldown_after_failures: u32,
    pub cooldown_ms: u64,
    /// Aliases tried in order once this one's attempts are spent.
    pub fallbacks: Vec<String>,
    /// Aliases tried instead when the provider says the prompt is too long.
    pub context_window_fallbacks: Vec<String>,
}

/// Default cap of one backoff wait.
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 5_000;
/// Default cooldown, once `cooldown_after_failures` is set.
pub const DEFAULT_COOLDOWN_MS: u64 = 30_000;

impl RoutePolicy {
    /// Today's behaviour for an alias with `deployments` deployments.
    pub fn default_for(deployments: usize, upstream_timeout_ms: u64) -> RoutePolicy {
        RoutePolicy {
            strategy: Strategy::Ordered,
            retries: deployments.saturating_sub(1) as u32,
            retry_backoff_ms: 0,
            retry_backoff_max_ms: DEFAULT_BACKOFF_MAX_MS,
            timeout_ms: upstream_timeout_ms,
            stream_first_event_timeout_ms: None,
            cooldown_after_failures: 0,
            cooldown_ms: DEFAULT_COOLDOWN_MS,
            fallbacks: Vec::new(),
            context_window_fallbacks: Vec::new(),
        }
    }
}
