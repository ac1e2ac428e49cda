//! Random bytes for identifiers (request ids, trace and span ids), drawn from
//! the OS a block at a time.
//!
//! Every request needs about 36 random bytes (a request id, a trace id and a
//! span id). Asking the OS for them one id at a time cost two `getrandom`
//! system calls per request on the native server; a block of 1 KiB per
//! thread serves about 28 requests per call. The bytes are the OS's own, only
//! drawn ahead of use; identifiers are not secrets (a virtual key's secret is
//! drawn straight from the OS by `keys::generate_secret`, never from here).
//! Should the OS refuse randomness, a counter keeps identifiers distinct
//! rather than fail the request.

use std::cell::RefCell;

const BLOCK: usize = 1024;

struct Pool {
    bytes: [u8; BLOCK],
    /// How many of `bytes` are used up (`BLOCK` when the pool is empty).
    used: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { bytes: [0; BLOCK], used: BLOCK }) };
}

/// Fills `out` with random bytes (from the OS, drawn ahead; see the module doc).
pub fn fill(out: &mut [u8]) {
    if out.len() > BLOCK / 4 {
        return fill_from_os(out);
    }
    POOL.with(|pool| {
        let Ok(mut pool) = pool.try_borrow_mut() else {
            return fill_from_os(out);
        };
        if BLOCK - pool.used < out.len() {
            let mut fresh = [0u8; BLOCK];
            fill_from_os(&mut fresh);
            pool.bytes = fresh;
            pool.used = 0;
        }
        let start = pool.used;
        out.copy_from_slice(&pool.bytes[start..start + out.len()]);
        // Bytes handed out are not kept: nothing drawn twice, nothing left to read.
        pool.bytes[start..start + out.len()].fill(0);
        pool.used += out.len();
    })
}

fn fill_from_os(out: &mut [u8]) {
    if getrandom::fill(out).is_err() {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes();
        for (i, b) in out.iter_mut().enumerate() {
            *b = n[i % 8] ^ (i as u8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn draws_are_distinct_across_refills() {
        let mut seen = HashSet::new();
        for _ in 0..(BLOCK / 12) * 5 {
            let mut id = [0u8; 12];
            fill(&mut id);
            assert!(seen.insert(id), "an id drawn twice");
        }
    }

    #[test]
    fn odd_sizes_and_large_requests_are_filled() {
        let mut big = [0u8; BLOCK];
        fill(&mut big);
        assert!(big.iter().any(|&b| b != 0));
        for n in [1usize, 7, 24, 255, 256] {
            let mut v = vec![0u8; n];
            fill(&mut v);
            if n >= 8 {
                assert!(v.iter().any(|&b| b != 0), "{n} bytes all zero");
            }
        }
    }
}
