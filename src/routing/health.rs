//! What this instance knows about each deployment: consecutive failures,
//! cooldown, a provider's `Retry-After`, latency, requests in flight.
//!
//! Plain atomics, so that every request on every thread reads and updates
//! them without a lock (on wasm32 they compile to ordinary loads and
//! stores). Updates that read then write (the latency average) may lose a
//! sample under a race; nothing here needs more than that.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use super::policy::RoutePolicy;

/// Weight of a new sample in the latency moving average, in percent: high
/// enough that a deployment that slows down or recovers shows it within a
/// few requests.
const LATENCY_ALPHA_PERCENT: u64 = 50;

/// One deployment's health on this instance. Times are Unix µs.
#[derive(Debug, Default)]
pub struct DeploymentHealth {
    consecutive_failures: AtomicU32,
    /// Skipped (unless every deployment is) until then; 0: not cooling.
    cooling_until_us: AtomicU64,
    /// The provider asked not to be called before then (`Retry-After`).
    retry_after_until_us: AtomicU64,
    /// Moving average of upstream latency; 0: never measured.
    latency_us: AtomicU64,
    /// When `latency_us` last got a sample.
    measured_at_us: AtomicU64,
    in_flight: AtomicU32,
    successes: AtomicU64,
    failures: AtomicU64,
}

impl DeploymentHealth {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    pub fn latency_us(&self) -> u64 {
        self.latency_us.load(Relaxed)
    }

    pub fn measured_at_us(&self) -> u64 {
        self.measured_at_us.load(Relaxed)
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Relaxed)
    }

    pub fn cooling_until_us(&self) -> u64 {
        self.cooling_until_us.load(Relaxed)
    }

    pub fn retry_after_until_us(&self) -> u64 {
        self.retry_after_until_us.load(Relaxed)
    }

    /// Neither cooling down nor waiting out a `Retry-After`.
    pub fn available(&self, now_us: u64) -> bool {
        self.cooling_until_us() <= now_us && self.retry_after_until_us() <= now_us
    }

    /// When it may be tried if every deployment is unavailable: a cooldown
    /// may be cut short (now), a `Retry-After` may not.
    pub fn ready_at(&self, now_us: u64) -> u64 {
        self.retry_after_until_us().max(now_us)
    }

    /// A success: failures forgotten, cooldown over, latency sampled.
    pub fn record_success(&self, latency_us: u64, now_us: u64) {
        self.successes.fetch_add(1, Relaxed);
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
        if self.cooling_until_us.load(Relaxed) != 0 {
            self.cooling_until_us.store(0, Relaxed);
        }
        let sample = latency_us.max(1);
        let old = self.latency_us.load(Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (sample * LATENCY_ALPHA_PERCENT + old * (100 - LATENCY_ALPHA_PERCENT)) / 100
        };
        self.latency_us.store(new.max(1), Relaxed);
        self.measured_at_us.store(now_us, Relaxed);
    }

    /// A failure that is the deployment's (5xx, 408, 429, timeout, broken
    /// connection). The counter is not reset by a cooldown: after it, one
    /// more failure cools the deployment down again, one success brings it back.
    pub fn record_failure(&self, policy: &RoutePolicy, now_us: u64) {
        self.failures.fetch_add(1, Relaxed);
        let n = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if policy.cooldown_after_failures > 0 && n >= policy.cooldown_after_failures {
            self.cooling_until_us
                .store(now_us + policy.cooldown_ms * 1000, Relaxed);
        }
    }

    /// The provider's `Retry-After`: not before `until_us`.
    pub fn block_until(&self, until_us: u64) {
        self.retry_after_until_us.fetch_max(until_us, Relaxed);
    }

    pub fn totals(&self) -> (u64, u64) {
        (self.successes.load(Relaxed), self.failures.load(Relaxed))
    }
}

/// The state of one alias: its deployments' health and its counters.
#[derive(Debug)]
pub struct RouteState {
    pub deployments: Box<[DeploymentHealth]>,
    /// Round-robin position (also breaks least-busy ties), started at a
    /// random offset so that instances do not all begin with the same one.
    pub(crate) turn: AtomicU64,
    /// Requests routed, for least-latency's exploration.
    pub(crate) requests: AtomicU64,
}

impl RouteState {
    pub fn new(deployments: usize, start: u64) -> RouteState {
        RouteState {
            deployments: (0..deployments)
                .map(|_| DeploymentHealth::default())
                .collect(),
            turn: AtomicU64::new(start),
            requests: AtomicU64::new(0),
        }
    }
}

/// A request in flight on a deployment; counted until dropped (for a
/// stream: until the relay ends).
#[derive(Debug)]
pub struct InFlight {
    route: Arc<RouteState>,
    index: usize,
}

impl InFlight {
    /// Counts one more request on `index`, if `expected` are in flight
    /// (least-busy's claim); `None` when another request came first.
    pub(crate) fn claim(
        route: &Arc<RouteState>,
        index: usize,
        expected: Option<u32>,
    ) -> Option<Self> {
        let counter = &route.deployments[index].in_flight;
        match expected {
            Some(n) => counter.compare_exchange(n, n + 1, Relaxed, Relaxed).ok()?,
            None => counter.fetch_add(1, Relaxed),
        };
        Some(InFlight {
            route: route.clone(),
            index,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.route.deployments[self.index]
            .in_flight
            .fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::policy::RoutePolicy;

    #[test]
    fn cooldown_after_consecutive_failures_and_back_on_success() {
        let mut p = RoutePolicy::default_for(2, 1000);
        p.cooldown_after_failures = 2;
        p.cooldown_ms = 10;
        let h = DeploymentHealth::default();
        h.record_failure(&p, 1_000);
        assert!(h.available(1_000));
        h.record_failure(&p, 2_000);
        assert!(!h.available(2_000));
        assert_eq!(h.cooling_until_us(), 12_000);
        assert!(h.available(12_000), "the cooldown ends");
        h.record_failure(&p, 13_000);
        assert!(
            !h.available(13_000),
            "one more failure after it cools again"
        );
        h.record_success(500, 14_000);
        assert!(h.available(14_000));
        assert_eq!(h.consecutive_failures(), 0);
    }

    #[test]
    fn no_cooldown_by_default_and_retry_after_blocks() {
        let p = RoutePolicy::default_for(1, 1000);
        let h = DeploymentHealth::default();
        for t in 0..10 {
            h.record_failure(&p, t);
        }
        assert!(h.available(10));
        h.block_until(5_000);
        assert!(!h.available(4_999));
        assert_eq!(h.ready_at(1_000), 5_000);
        h.block_until(3_000);
        assert_eq!(h.retry_after_until_us(), 5_000, "never shortened");
    }

    #[test]
    fn latency_moving_average() {
        let h = DeploymentHealth::default();
        h.record_success(1_000, 1);
        assert_eq!(h.latency_us(), 1_000);
        h.record_success(3_000, 2);
        assert_eq!(h.latency_us(), 2_000);
        assert_eq!(h.measured_at_us(), 2);
    }

    #[test]
    fn in_flight_guard() {
        let r = Arc::new(RouteState::new(2, 0));
        let a = InFlight::claim(&r, 1, None).unwrap();
        assert_eq!(r.deployments[1].in_flight(), 1);
        assert!(InFlight::claim(&r, 1, Some(0)).is_none());
        let b = InFlight::claim(&r, 1, Some(1)).unwrap();
        assert_eq!(r.deployments[1].in_flight(), 2);
        drop((a, b));
        assert_eq!(r.deployments[1].in_flight(), 0);
    }
}
