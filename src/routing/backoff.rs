//! Retry backoff (exponential, full jitter) and the router's random numbers.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The wait before retry number `retry` (1 for the first retry): uniform in
/// `[0, min(max, base · 2^(retry-1))]` ms ("full jitter", so that clients
/// failing together do not retry together), in µs.
pub fn full_jitter_us(base_ms: u64, max_ms: u64, retry: u32, random: u64) -> u64 {
    if base_ms == 0 || retry == 0 {
        return 0;
    }
    let cap_ms = base_ms
        .checked_shl(retry.saturating_sub(1).min(40))
        .unwrap_or(u64::MAX)
        .min(max_ms);
    let cap_us = cap_ms.saturating_mul(1000);
    random % (cap_us + 1)
}

/// SplitMix64 over one atomic word: random enough for picking deployments
/// and jittering waits, shared by every request without a lock, and the
/// same on native and wasm32. Seeded once from the OS (getrandom); a
/// library generator would need per-thread state or a lock to be shared.
#[derive(Debug)]
pub struct Rng(AtomicU64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(AtomicU64::new(seed))
    }

    /// Seeded from the platform's randomness (a counter-free fixed seed if
    /// the platform has none: routing still works, only less random).
    pub fn from_os() -> Rng {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        Rng::new(u64::from_le_bytes(b))
    }

    pub fn next_u64(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), without modulo bias worth speaking of
    /// (Lemire's multiply-shift).
    pub fn below(&self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_caps() {
        assert_eq!(full_jitter_us(0, 5000, 3, 12345), 0);
        assert_eq!(full_jitter_us(200, 5000, 0, 12345), 0);
        // the cap doubles per retry, up to the max
        assert_eq!(full_jitter_us(200, 5000, 1, u64::MAX), u64::MAX % 200_001);
        for retry in 1..60 {
            let cap = (200u64 << (retry - 1).min(40)).min(5000) * 1000;
            for r in [0, 1, 999, u64::MAX / 3, u64::MAX] {
                assert!(full_jitter_us(200, 5000, retry, r) <= cap);
            }
        }
        assert_eq!(full_jitter_us(200, 5000, 2, 400_000), 400_000);
        assert_eq!(full_jitter_us(200, 5000, 2, 400_001), 0);
    }

    #[test]
    fn rng_is_uniform_enough() {
        let rng = Rng::new(7);
        let mut counts = [0u32; 4];
        for _ in 0..40_000 {
            counts[rng.below(4) as usize] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
        let jitter: u64 = (0..10_000)
            .map(|_| full_jitter_us(100, 5000, 1, rng.next_u64()))
            .sum::<u64>()
            / 10_000;
        assert!((47_000..53_000).contains(&jitter), "mean {jitter} µs");
    }
}
