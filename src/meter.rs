//! Metering: exactly one usage record, and one settlement, per
//! authenticated request.
//!
//! A [`Meter`] is created once the key is known and travels with the
//! request, into the response stream if there is one. [`Meter::finish`]
//! prices the usage, settles the admission and writes the record. If the
//! request is dropped first (the client went away), `Drop` does it with
//! status 499 and, when the provider has not reported usage yet, the
//! estimate: the prompt estimate plus the larger of the completion allowance
//! and the chunks already relayed. A request is never recorded as free
//! because the client left, and never counted twice.

use std::sync::Arc;
use std::task::{Context, Waker};

use crate::compat::BoxFuture;
use crate::keys::VirtualKey;
use crate::limits::headers;
use crate::ports::{Admission, Clock, Limiter, Settlement, Spawner, UsageStore};
use crate::pricing::Price;
use crate::usage::{TokenUsage, UsageRecord};

pub(crate) struct Meter {
    usage_store: Arc<dyn UsageStore>,
    limiter: Arc<dyn Limiter>,
    clock: Arc<dyn Clock>,
    spawner: Arc<dyn Spawner>,
    key: Arc<VirtualKey>,
    started_us: u64,
    pub record: UsageRecord,
    pub admission: Option<Admission>,
    /// The price of the deployment that served (or is serving) the request.
    pub price: Option<Price>,
    /// Chunks with content relayed so far (about one token each).
    pub seen_completion: u64,
    /// Whether the provider reported usage.
    pub usage_reported: bool,
    finished: bool,
}

impl Meter {
    pub fn new(
        usage_store: Arc<dyn UsageStore>,
        limiter: Arc<dyn Limiter>,
        clock: Arc<dyn Clock>,
        spawner: Arc<dyn Spawner>,
        key: Arc<VirtualKey>,
        record: UsageRecord,
        started_us: u64,
    ) -> Self {
        Meter {
            usage_store,
            limiter,
            clock,
            spawner,
            key,
            started_us,
            record,
            admission: None,
            price: None,
            seen_completion: 0,
            usage_reported: false,
            finished: false,
        }
    }

    /// Adds time spent waiting on the provider.
    pub fn add_upstream(&mut self, us: u64) {
        self.record.upstream_latency_us += us;
    }

    pub fn now(&self) -> u64 {
        self.clock.now_micros()
    }

    /// Gateway time so far: elapsed minus upstream waits.
    pub fn overhead_us(&self) -> u64 {
        self.now()
            .saturating_sub(self.started_us)
            .saturating_sub(self.record.upstream_latency_us)
    }

    /// The `x-ratelimit-*` headers for the key's status at admission.
    pub fn limit_headers(&self) -> Vec<(&'static str, String)> {
        self.admission
            .as_ref()
            .map(|a| headers(&a.status))
            .unwrap_or_default()
    }

    /// Records usage the provider reported.
    pub fn report(&mut self, usage: TokenUsage) {
        self.record.usage = usage;
        self.usage_reported = true;
    }

    /// Prices the usage, settles the admission and writes the record (once).
    pub fn finish(&mut self, status: u16) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.record.status = status;
        self.record.latency_us = self.now().saturating_sub(self.started_us);
        // Refused or failed before the provider answered: nothing was used.
        let billable = self.usage_reported || status == 499;
        self.record.cost_nanos = match (billable, self.price) {
            (false, _) => Some(0),
            (true, Some(p)) => Some(p.cost_nanos(&self.record.usage)),
            (true, None) => None,
        };
        let u = &self.record.usage;
        let settlement = Settlement {
            tokens: u.prompt_tokens + u.completion_tokens,
            cost_nanos: self.record.cost_nanos.unwrap_or(0),
        };
        let admission = self.admission.clone().filter(|a| a.reservation.is_some());
        let (limiter, store, key, record) = (
            self.limiter.clone(),
            self.usage_store.clone(),
            self.key.clone(),
            self.record.clone(),
        );
        run_or_spawn(
            self.spawner.as_ref(),
            Box::pin(async move {
                if let Some(admission) = admission {
                    limiter.settle(&key, &admission, settlement).await;
                }
                store.record(record).await;
            }),
        );
    }
}

/// Runs `task` right here if it completes without waiting (the server's
/// in-memory limiter and queued SQLite writes do), else hands it to the
/// spawner: no task is spawned on the hot path when none is needed.
fn run_or_spawn(spawner: &dyn Spawner, mut task: BoxFuture<'static, ()>) {
    let mut cx = Context::from_waker(Waker::noop());
    if task.as_mut().poll(&mut cx).is_pending() {
        spawner.spawn(task);
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if !self.usage_reported && self.admission.is_some() {
            // The client went away before the provider said what it used:
            // bill what was seen, and the estimate for the rest.
            let prompt = self.record.estimated_prompt_tokens;
            let completion = self
                .record
                .estimated_completion_tokens
                .max(self.seen_completion);
            self.record.usage = TokenUsage {
                prompt_tokens: prompt,
                completion_tokens: completion,
                total_tokens: prompt + completion,
                ..TokenUsage::default()
            };
            self.usage_reported = true;
        }
        self.finish(499);
    }
}
