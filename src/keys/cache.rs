//! A small TTL cache of virtual keys by hash, in front of the key store.
//!
//! Every request looks its key up; the store may be a network hop away (KV,
//! DynamoDB). The cache keeps a found key for `gateway.key_cache_ttl_ms`.
//! Admin changes made through this gateway clear it at once; changes made
//! elsewhere (another process, another isolate) are seen within the TTL.
//! Unknown keys are not cached, so a flood of bad keys cannot fill it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::keys::VirtualKey;

/// Entries kept at most; past that the cache starts over.
const MAX_ENTRIES: usize = 10_000;

#[derive(Default)]
pub struct KeyCache {
    ttl_us: u64,
    entries: Mutex<HashMap<String, (Arc<VirtualKey>, u64)>>,
}

impl KeyCache {
    pub fn new(ttl_ms: u64) -> Self {
        KeyCache {
            ttl_us: ttl_ms.saturating_mul(1000),
            entries: Mutex::default(),
        }
    }

    /// The cached key for `hash`, if still fresh at `now_us`.
    pub fn get(&self, hash: &str, now_us: u64) -> Option<Arc<VirtualKey>> {
        if self.ttl_us == 0 {
            return None;
        }
        let entries = self.entries.lock().ok()?;
        entries
            .get(hash)
            .filter(|(_, expires)| *expires > now_us)
            .map(|(k, _)| k.clone())
    }

    pub fn put(&self, hash: &str, key: Arc<VirtualKey>, now_us: u64) {
        if self.ttl_us == 0 {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
            entries.insert(hash.to_owned(), (key, now_us + self.ttl_us));
        }
    }

    /// Forgets everything (after any admin change).
    pub fn clear(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
    }
}
