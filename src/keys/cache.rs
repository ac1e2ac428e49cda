//! A small TTL cache of virtual keys by hash, in front of the key store,
//! and the record of when the key's authority last vouched for each key.
//!
//! Every request looks its key up; the store may be a network hop away (KV,
//! DynamoDB). The cache keeps a found key for `gateway.key_cache_ttl_ms`.
//! Admin changes made through this gateway clear it at once; changes made
//! elsewhere (another process, another isolate) are seen within the TTL.
//! Unknown keys are not cached, so a flood of bad keys cannot fill it.
//!
//! **Trust.** Where the limiter is the authority on a key (the Durable
//! Object, DynamoDB's consistent read), its answer (the key's current
//! record) is kept as *trusted* for `gateway.revocation_delay_ms`. Within
//! that time a request of a key without limits or budget goes upstream
//! without any store round trip: the key store is not asked, nor the
//! limiter. So a revocation, rotation or PATCH made elsewhere takes effect
//! here within `revocation_delay_ms` (0: every request asks the authority).
//! A key store lookup never extends trust: on Workers KV may lag the
//! authority by a minute.

use std::sync::{Arc, Mutex};

use crate::keys::VirtualKey;
use crate::FastMap;

/// Entries kept at most; past that the cache starts over.
const MAX_ENTRIES: usize = 10_000;

type Entries = Mutex<FastMap<String, (Arc<VirtualKey>, u64)>>;

#[derive(Default)]
pub struct KeyCache {
    ttl_us: u64,
    trust_us: u64,
    entries: Entries,
    trusted: Entries,
}

fn lookup(entries: &Entries, hash: &str, now_us: u64) -> Option<Arc<VirtualKey>> {
    let entries = entries.lock().ok()?;
    entries
        .get(hash)
        .filter(|(_, expires)| *expires > now_us)
        .map(|(k, _)| k.clone())
}

fn store(entries: &Entries, hash: &str, key: Arc<VirtualKey>, until_us: u64) {
    if let Ok(mut entries) = entries.lock() {
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(hash.to_owned(), (key, until_us));
    }
}

impl KeyCache {
    pub fn new(ttl_ms: u64) -> Self {
        Self::with_trust(ttl_ms, 0)
    }

    /// A cache that also trusts the authority's word for `revocation_delay_ms`.
    pub fn with_trust(ttl_ms: u64, revocation_delay_ms: u64) -> Self {
        KeyCache {
            ttl_us: ttl_ms.saturating_mul(1000),
            trust_us: revocation_delay_ms.saturating_mul(1000),
            entries: Mutex::default(),
            trusted: Mutex::default(),
        }
    }

    /// The cached key for `hash`, if still fresh at `now_us` (a trusted
    /// record first: it is the authority's).
    pub fn get(&self, hash: &str, now_us: u64) -> Option<Arc<VirtualKey>> {
        if let Some(k) = self.trusted(hash, now_us) {
            return Some(k);
        }
        if self.ttl_us == 0 {
            return None;
        }
        lookup(&self.entries, hash, now_us)
    }

    pub fn put(&self, hash: &str, key: Arc<VirtualKey>, now_us: u64) {
        if self.ttl_us == 0 {
            return;
        }
        store(&self.entries, hash, key, now_us + self.ttl_us);
    }

    /// The authority's record of the key presented as `hash`, if it
    /// vouched for it less than `revocation_delay_ms` ago.
    pub fn trusted(&self, hash: &str, now_us: u64) -> Option<Arc<VirtualKey>> {
        if self.trust_us == 0 {
            return None;
        }
        lookup(&self.trusted, hash, now_us)
    }

    /// The authority vouched for `key` (its current record) at `now_us`.
    pub fn vouch(&self, hash: &str, key: Arc<VirtualKey>, now_us: u64) {
        if self.trust_us == 0 {
            return;
        }
        store(&self.trusted, hash, key.clone(), now_us + self.trust_us);
        // The record stays cached past the trust: when the trust runs out, the
        // next request asks the authority (which re-checks the presented
        // secret) without looking the key up by hash first.
        if self.ttl_us > 0 {
            store(
                &self.entries,
                hash,
                key,
                now_us + self.trust_us + self.ttl_us,
            );
        }
    }

    /// Forgets everything (after any admin change).
    pub fn clear(&self) {
        for entries in [&self.entries, &self.trusted] {
            if let Ok(mut entries) = entries.lock() {
                entries.clear();
            }
        }
    }
}
