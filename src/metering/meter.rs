//! Metering: exactly one usage record, and one settlement, per
//! authenticated request.
//!
//! A [`Meter`] is created once the key is known and travels with the
//! request, into the response stream if there is one. [`Meter::finish`]
//! prices the usage, settles the admission, writes the record and reports
//! the request to the gateway's [`Observer`] (metrics, log lines). If the
//! request is dropped first (the client went away), `Drop` does it with
//! status 499 and, when the provider has not reported usage yet, the
//! estimate: the prompt estimate plus the larger of the completion allowance
//! and the chunks already relayed. A stream that fails after content reached
//! the client is billed the same way ([`Meter::charge_estimate`]): the client
//! got tokens and the provider bills for them. A request is never recorded
//! as free because the client left or the stream broke, and never counted twice.

use std::sync::Arc;
use std::task::{Context, Waker};

use http::HeaderMap;

use crate::compat::BoxFuture;
use crate::keys::VirtualKey;
use crate::metering::limits::add_rate_limit_headers;
use crate::metering::pricing::Price;
use crate::metering::usage::{TokenUsage, UsageRecord};
use crate::observe::{Observer, RequestEvent, RequestFacts};
use crate::ports::{Admission, Clock, Limiter, Settlement, Spawner, UsageStore};

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
    /// What the observer learns beside the record.
    pub facts: RequestFacts,
    observer: Option<Arc<dyn Observer>>,
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
            facts: RequestFacts::default(),
            observer: None,
            finished: false,
        }
    }

    /// Reports the request's outcome to `observer` when it finishes.
    pub fn observed_by(&mut self, observer: Arc<dyn Observer>) {
        self.observer = Some(observer);
    }

    /// A stream's first event is in: the time to first event, from arrival.
    pub fn first_event(&mut self) {
        self.facts.first_event_us = Some(self.now().saturating_sub(self.started_us));
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

    /// Adds the `x-ratelimit-*` headers for the key's status at admission.
    pub fn add_limit_headers(&self, headers: &mut HeaderMap) {
        if let Some(a) = &self.admission {
            add_rate_limit_headers(headers, &a.status);
        }
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
            // Saturating: the counts are the provider's (fuzz/regressions).
            tokens: u.prompt_tokens.saturating_add(u.completion_tokens),
            cost_nanos: self.record.cost_nanos.unwrap_or(0),
        };
        if let Some(observer) = &self.observer {
            observer.finished(&RequestEvent::of_record(&self.record, &self.facts));
        }
        let admission = self.admission.clone().filter(|a| a.reservation.is_some());
        // The record goes to the store moved, not copied (eight strings per
        // request). What an answer still reads after this stays: the time
        // upstream (`x-conduit-overhead-ms`), the attempts and, for an error
        // answer built after it, the deployment tried last.
        let record = std::mem::take(&mut self.record);
        self.record.status = record.status;
        self.record.upstream_latency_us = record.upstream_latency_us;
        self.record.attempts = record.attempts;
        if !(200..300).contains(&status) {
            self.record.provider.clone_from(&record.provider);
            self.record
                .provider_model
                .clone_from(&record.provider_model);
        }
        let (limiter, store, key) = (
            self.limiter.clone(),
            self.usage_store.clone(),
            self.key.clone(),
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

impl Meter {
    /// Unless the provider reported usage, bills the estimate: the prompt
    /// estimate plus the larger of the completion allowance and the chunks
    /// already relayed. For requests whose answer reached the client in part
    /// (a disconnect, a stream that broke after content).
    pub fn charge_estimate(&mut self) {
        if self.usage_reported || self.admission.is_none() {
            return;
        }
        let prompt = self.record.estimated_prompt_tokens;
        let completion = self
            .record
            .estimated_completion_tokens
            .max(self.seen_completion);
        self.record.usage = TokenUsage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt.saturating_add(completion),
            ..TokenUsage::default()
        };
        self.usage_reported = true;
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // The client went away before the provider said what it used:
        // bill what was seen, and the estimate for the rest.
        self.charge_estimate();
        self.finish(499);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{ManualClock, MemoryUsageStore, QueueSpawner};
    use crate::metering::limits::LocalLimiter;

    /// Found by fuzzing (`gateway_upstream`, fuzz/regressions): a provider
    /// reporting counts whose sum passes 2^64 overflowed the settlement.
    #[test]
    fn huge_reported_usage_saturates() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let store = Arc::new(MemoryUsageStore::default());
        let key = VirtualKey::from_create_body(
            &serde_json::json!({"name": "k", "limits": {"tpm": 100}}),
            "key_1".into(),
            1,
        )
        .unwrap();
        let record = UsageRecord {
            request_id: "req_1".into(),
            key_id: key.id.clone(),
            model: "m".into(),
            provider: None,
            provider_model: None,
            endpoint: "/v1/chat/completions".into(),
            status: 0,
            streamed: false,
            usage: TokenUsage::default(),
            estimated_prompt_tokens: 1,
            estimated_completion_tokens: 1,
            cost_nanos: None,
            refused_by: None,
            latency_us: 0,
            upstream_latency_us: 0,
            created_at_ms: 1,
            attempts: 0,
            failed_attempts: Vec::new(),
            served_alias: None,
            trace_id: None,
            traceparent: None,
        };
        let mut meter = Meter::new(
            store.clone(),
            Arc::new(LocalLimiter::new(clock.clone(), None)),
            clock,
            Arc::new(QueueSpawner::default()),
            Arc::new(key),
            record,
            1_000_000,
        );
        meter.price = Some(Price {
            input: 1_000,
            output: 2_000,
            cached_input: None,
            cache_write: None,
        });
        let max = u64::MAX;
        meter.report(TokenUsage {
            prompt_tokens: max,
            completion_tokens: max,
            total_tokens: max,
            ..TokenUsage::default()
        });
        meter.finish(200);
        let records = store.all();
        assert_eq!(records.len(), 1);
        let expected = (u128::from(max) * 3_000).div_ceil(1_000_000) as u64;
        assert_eq!(records[0].cost_nanos, Some(expected));
    }
}
