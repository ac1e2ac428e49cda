//! In-memory implementations of the ports, for tests and examples.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::compat::BoxFuture;
use crate::keys::VirtualKey;
use crate::metering::summary::{merge_into, HourRow, SummaryQuery};
use crate::metering::usage::{UsageQuery, UsageRecord};
use crate::port;
use crate::ports::{
    ByteStream, Clock, KeyStore, Spawner, StoreError, Upstream, UpstreamError, UsageStore,
};

fn poisoned<T>(_: T) -> StoreError {
    StoreError("in-memory store lock poisoned".into())
}

/// id → (record, hash), plus the ids in insertion order.
type KeyTable = (HashMap<String, (VirtualKey, String)>, Vec<String>);

/// Keys in a map.
#[derive(Default)]
pub struct MemoryKeyStore {
    keys: Mutex<KeyTable>,
}

port! {
    impl KeyStore for MemoryKeyStore {
        async fn find_by_hash(&self, hash: &str) -> Result<Option<VirtualKey>, StoreError> {
            let g = self.keys.lock().map_err(poisoned)?;
            Ok(g.0.values().find(|(_, h)| h == hash).map(|(k, _)| k.clone()))
        }
        async fn get(&self, id: &str) -> Result<Option<VirtualKey>, StoreError> {
            let g = self.keys.lock().map_err(poisoned)?;
            Ok(g.0.get(id).map(|(k, _)| k.clone()))
        }
        async fn list(&self) -> Result<Vec<VirtualKey>, StoreError> {
            let g = self.keys.lock().map_err(poisoned)?;
            Ok(g.1.iter().filter_map(|id| g.0.get(id)).map(|(k, _)| k.clone()).collect())
        }
        async fn insert(&self, key: &VirtualKey, hash: &str) -> Result<(), StoreError> {
            let mut g = self.keys.lock().map_err(poisoned)?;
            g.1.push(key.id.clone());
            g.0.insert(key.id.clone(), (key.clone(), hash.to_owned()));
            Ok(())
        }
        async fn update(&self, key: &VirtualKey) -> Result<bool, StoreError> {
            let mut g = self.keys.lock().map_err(poisoned)?;
            Ok(match g.0.get_mut(&key.id) {
                Some(entry) => {
                    entry.0 = key.clone();
                    true
                }
                None => false,
            })
        }
        async fn set_hash(&self, id: &str, hash: &str) -> Result<bool, StoreError> {
            let mut g = self.keys.lock().map_err(poisoned)?;
            Ok(match g.0.get_mut(id) {
                Some(entry) => {
                    entry.1 = hash.to_owned();
                    true
                }
                None => false,
            })
        }
        async fn delete(&self, id: &str) -> Result<bool, StoreError> {
            let mut g = self.keys.lock().map_err(poisoned)?;
            g.1.retain(|k| k != id);
            Ok(g.0.remove(id).is_some())
        }
    }
}

/// Usage records in a vector.
#[derive(Default)]
pub struct MemoryUsageStore {
    records: Mutex<Vec<UsageRecord>>,
}

impl MemoryUsageStore {
    /// Everything recorded so far.
    pub fn all(&self) -> Vec<UsageRecord> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

port! {
    impl UsageStore for MemoryUsageStore {
        async fn record(&self, record: UsageRecord) {
            if let Ok(mut r) = self.records.lock() {
                r.push(record);
            }
        }
        async fn query(&self, query: &UsageQuery) -> Result<Vec<UsageRecord>, StoreError> {
            let r = self.records.lock().map_err(poisoned)?;
            Ok(query.page(r.iter().filter(|x| query.matches(x)).cloned().collect()))
        }
        async fn hours(&self, query: &SummaryQuery) -> Result<Vec<HourRow>, StoreError> {
            let r = self.records.lock().map_err(poisoned)?;
            let mut rows = Vec::new();
            for rec in r.iter() {
                merge_into(&mut rows, HourRow::of(rec));
            }
            rows.retain(|row| query.matches(row));
            Ok(rows)
        }
        async fn last_used(&self, key_ids: &[String]) -> Result<Vec<Option<u64>>, StoreError> {
            let r = self.records.lock().map_err(poisoned)?;
            Ok(key_ids
                .iter()
                .map(|id| r.iter().filter(|x| x.key_id == *id).map(|x| x.created_at_ms).max())
                .collect())
        }
    }
}

/// A spawner for tests: keeps the tasks that did not finish at once, for
/// the test to drive with [`QueueSpawner::run_all`].
#[derive(Default)]
pub struct QueueSpawner {
    tasks: Mutex<Vec<BoxFuture<'static, ()>>>,
}

impl QueueSpawner {
    /// Polls every queued task until it completes (tasks here must make
    /// progress without outside wake-ups); returns how many are left.
    pub fn run_all(&self) -> usize {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut left = Vec::new();
        for mut t in tasks {
            if (0..1000).all(|_| t.as_mut().poll(&mut cx).is_pending()) {
                left.push(t);
            }
        }
        let n = left.len();
        if let Ok(mut t) = self.tasks.lock() {
            t.extend(left);
        }
        n
    }
}

impl Spawner for QueueSpawner {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        if let Ok(mut t) = self.tasks.lock() {
            t.push(task);
        }
    }
}

/// A clock that moves only when told to. `sleep` completes at once when
/// `instant_sleep` is set (to exercise timeouts) and never otherwise.
#[derive(Default)]
pub struct ManualClock {
    now_us: AtomicU64,
    pub instant_sleep: std::sync::atomic::AtomicBool,
}

impl ManualClock {
    pub fn new(now_us: u64) -> Self {
        let c = Self::default();
        c.now_us.store(now_us, Ordering::SeqCst);
        c
    }
    pub fn advance(&self, d: Duration) {
        self.now_us
            .fetch_add(d.as_micros() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> u64 {
        self.now_us.load(Ordering::SeqCst)
    }
    fn sleep(&self, _duration: Duration) -> BoxFuture<'static, ()> {
        if self.instant_sleep.load(Ordering::SeqCst) {
            Box::pin(std::future::ready(()))
        } else {
            Box::pin(std::future::pending())
        }
    }
}

type Responder = dyn Fn(&http::Request<Bytes>) -> Result<http::Response<Vec<Bytes>>, UpstreamError>
    + Send
    + Sync;

/// An upstream that answers from a function and remembers the requests.
pub struct ScriptedUpstream {
    responder: Box<Responder>,
    pub requests: Mutex<Vec<http::Request<Bytes>>>,
}

impl ScriptedUpstream {
    /// `responder` returns the status, headers and the body as a list of pieces.
    pub fn new(
        responder: impl Fn(&http::Request<Bytes>) -> Result<http::Response<Vec<Bytes>>, UpstreamError>
            + Send
            + Sync
            + 'static,
    ) -> Arc<Self> {
        Arc::new(ScriptedUpstream {
            responder: Box::new(responder),
            requests: Mutex::default(),
        })
    }
}

port! {
    impl Upstream for ScriptedUpstream {
        async fn send(&self, request: http::Request<Bytes>) -> Result<http::Response<ByteStream>, UpstreamError> {
            let response = (self.responder)(&request)?;
            if let Ok(mut r) = self.requests.lock() {
                r.push(request);
            }
            let (parts, pieces) = response.into_parts();
            let body: ByteStream = Box::pin(futures_util::stream::iter(pieces.into_iter().map(Ok)));
            Ok(http::Response::from_parts(parts, body))
        }
    }
}
