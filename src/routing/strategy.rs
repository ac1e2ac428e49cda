//! The strategies: which of the candidate deployments serves the next attempt.
//!
//! Candidates are a bit set over the alias's deployments (config order),
//! already filtered to the available ones not yet tried in this round, so a
//! strategy only ranks them. Every strategy is a single pass over at most
//! 64 deployments, without allocating.

use std::sync::atomic::Ordering::Relaxed;

use super::backoff::Rng;
use super::health::RouteState;
use super::policy::Strategy;
use crate::config::Deployment;
use crate::metering::usage::TokenUsage;

/// Least-latency sends one request in this many to the deployment measured
/// longest ago, so that one that was slow and recovered is seen again.
pub const EXPLORE_EVERY: u64 = 10;

/// The chosen deployment, and for least-busy the in-flight count it was
/// chosen at (claimed with a compare-and-swap, so that concurrent requests
/// spread exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub index: usize,
    pub in_flight_seen: Option<u32>,
}

fn members(candidates: u64) -> impl Iterator<Item = usize> {
    let mut bits = candidates;
    std::iter::from_fn(move || {
        if bits == 0 {
            return None;
        }
        let i = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        Some(i)
    })
}

/// The first candidate at or after `start`, cyclically over `n`.
fn rotate_from(candidates: u64, start: usize, n: usize) -> usize {
    let after = candidates & (u64::MAX << start);
    let bits = if after != 0 { after } else { candidates };
    (bits.trailing_zeros() as usize).min(n - 1)
}

/// Picks one of `candidates` (not empty). `estimate` is this request's
/// token estimate (least-cost); `explore` asks least-latency to explore.
pub fn pick(
    strategy: Strategy,
    deployments: &[Deployment],
    state: &RouteState,
    candidates: u64,
    rng: &Rng,
    estimate: &TokenUsage,
    explore: bool,
) -> Pick {
    debug_assert!(candidates != 0);
    let n = deployments.len();
    let plain = |index| Pick {
        index,
        in_flight_seen: None,
    };
    match strategy {
        Strategy::Ordered => plain(candidates.trailing_zeros() as usize),
        Strategy::RoundRobin => {
            let start = (state.turn.fetch_add(1, Relaxed) % n as u64) as usize;
            plain(rotate_from(candidates, start, n))
        }
        Strategy::Weighted => {
            let total: u64 = members(candidates)
                .map(|i| u64::from(deployments[i].weight))
                .sum();
            let mut r = rng.below(total.max(1));
            for i in members(candidates) {
                let w = u64::from(deployments[i].weight);
                if r < w {
                    return plain(i);
                }
                r -= w;
            }
            plain(candidates.trailing_zeros() as usize)
        }
        Strategy::LeastCost => {
            let cost = |i: usize| {
                deployments[i]
                    .price
                    .map_or(u64::MAX, |p| p.cost_nanos(estimate))
            };
            // Ties go to the first in config order.
            plain(
                members(candidates)
                    .min_by_key(|&i| (cost(i), i))
                    .unwrap_or(0),
            )
        }
        Strategy::LeastLatency => {
            let health = &state.deployments;
            // Warm-up: every deployment is measured once first.
            if let Some(i) = members(candidates).find(|&i| health[i].latency_us() == 0) {
                return plain(i);
            }
            let fastest = members(candidates)
                .min_by_key(|&i| (health[i].latency_us(), i))
                .unwrap_or(0);
            if explore && candidates.count_ones() > 1 {
                let stalest = members(candidates)
                    .filter(|&i| i != fastest)
                    .min_by_key(|&i| (health[i].measured_at_us(), i))
                    .unwrap_or(fastest);
                return plain(stalest);
            }
            plain(fastest)
        }
        Strategy::LeastBusy => {
            let health = &state.deployments;
            // Ties are broken in turn, so that sequential requests (and
            // Lambda, where a container has only its own request) spread too.
            let start = (state.turn.fetch_add(1, Relaxed) % n as u64) as usize;
            let mut best: Option<(u32, usize)> = None;
            for k in 0..n {
                let i = (start + k) % n;
                if candidates & (1 << i) == 0 {
                    continue;
                }
                let busy = health[i].in_flight();
                if best.is_none_or(|(b, _)| busy < b) {
                    best = Some((busy, i));
                }
            }
            let (busy, index) = best.unwrap_or((0, 0));
            Pick {
                index,
                in_flight_seen: Some(busy),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::testing::deployments;

    fn run(strategy: Strategy, state: &RouteState, ds: &[Deployment], candidates: u64) -> usize {
        pick(
            strategy,
            ds,
            state,
            candidates,
            &Rng::new(1),
            &TokenUsage::default(),
            false,
        )
        .index
    }

    #[test]
    fn ordered_takes_the_first_candidate() {
        let ds = deployments(3);
        let s = RouteState::new(3, 0);
        assert_eq!(run(Strategy::Ordered, &s, &ds, 0b111), 0);
        assert_eq!(run(Strategy::Ordered, &s, &ds, 0b110), 1);
    }

    #[test]
    fn round_robin_is_exact_and_skips_non_candidates() {
        let ds = deployments(3);
        let s = RouteState::new(3, 5);
        let mut counts = [0; 3];
        for _ in 0..30 {
            counts[run(Strategy::RoundRobin, &s, &ds, 0b111)] += 1;
        }
        assert_eq!(counts, [10, 10, 10]);
        for _ in 0..6 {
            assert_ne!(run(Strategy::RoundRobin, &s, &ds, 0b101), 1);
        }
    }

    #[test]
    fn weighted_follows_the_weights() {
        let mut ds = deployments(2);
        ds[0].weight = 3;
        let s = RouteState::new(2, 0);
        let rng = Rng::new(99);
        let mut counts = [0u32; 2];
        for _ in 0..40_000 {
            let p = pick(
                Strategy::Weighted,
                &ds,
                &s,
                0b11,
                &rng,
                &TokenUsage::default(),
                false,
            );
            counts[p.index] += 1;
        }
        assert!((29_400..30_600).contains(&counts[0]), "{counts:?}");
        // a single candidate is always it
        assert_eq!(run(Strategy::Weighted, &s, &ds, 0b10), 1);
    }

    #[test]
    fn least_cost_takes_the_cheapest_priced() {
        use crate::metering::pricing::Price;
        let mut ds = deployments(3);
        let price = |input, output| {
            Some(Price {
                input,
                cached_input: None,
                cache_write: None,
                output,
            })
        };
        ds[0].price = price(5_000, 15_000);
        ds[1].price = price(500, 1_500);
        ds[2].price = None;
        let s = RouteState::new(3, 0);
        let estimate = TokenUsage {
            prompt_tokens: 1_000,
            completion_tokens: 100,
            total_tokens: 1_100,
            ..TokenUsage::default()
        };
        let cheapest = |c| {
            pick(
                Strategy::LeastCost,
                &ds,
                &s,
                c,
                &Rng::new(1),
                &estimate,
                false,
            )
            .index
        };
        assert_eq!(cheapest(0b111), 1);
        assert_eq!(cheapest(0b101), 0, "unpriced last");
    }

    #[test]
    fn least_latency_warms_up_prefers_fastest_and_explores() {
        let ds = deployments(3);
        let s = RouteState::new(3, 0);
        assert_eq!(run(Strategy::LeastLatency, &s, &ds, 0b111), 0);
        s.deployments[0].record_success(5_000, 1);
        assert_eq!(run(Strategy::LeastLatency, &s, &ds, 0b111), 1);
        s.deployments[1].record_success(1_000, 2);
        s.deployments[2].record_success(9_000, 3);
        assert_eq!(run(Strategy::LeastLatency, &s, &ds, 0b111), 1);
        let explore = pick(
            Strategy::LeastLatency,
            &ds,
            &s,
            0b111,
            &Rng::new(1),
            &TokenUsage::default(),
            true,
        );
        assert_eq!(explore.index, 0, "the one measured longest ago");
    }

    #[test]
    fn least_busy_takes_the_idlest_and_rotates_ties() {
        let ds = deployments(3);
        let s = std::sync::Arc::new(RouteState::new(3, 0));
        let mut seen = [0; 3];
        for _ in 0..3 {
            seen[run(Strategy::LeastBusy, &s, &ds, 0b111)] += 1;
        }
        assert_eq!(seen, [1, 1, 1], "ties in turn");
        let _a = crate::routing::health::InFlight::claim(&s, 0, None);
        let _b = crate::routing::health::InFlight::claim(&s, 2, None);
        for _ in 0..3 {
            assert_eq!(run(Strategy::LeastBusy, &s, &ds, 0b111), 1);
        }
    }
}
