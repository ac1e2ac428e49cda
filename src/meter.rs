//! Metering: exactly one usage record per authenticated request.
//!
//! A [`Meter`] is created once the key is known and travels with the
//! request, into the response stream if there is one. [`Meter::finish`]
//! writes the record and settles the admission; if the request is dropped
//! first (the client went away), `Drop` does it with status 499 and the
//! usage seen so far, so nothing goes unrecorded and nothing twice.

use std::sync::Arc;

use crate::ports::{Admission, Clock, Limiter, UsageStore};
use crate::usage::{TokenUsage, UsageRecord};

pub(crate) struct Meter {
    usage_store: Arc<dyn UsageStore>,
    limiter: Arc<dyn Limiter>,
    clock: Arc<dyn Clock>,
    started_us: u64,
    pub record: UsageRecord,
    pub admission: Option<Admission>,
    finished: bool,
}

impl Meter {
    pub fn new(
        usage_store: Arc<dyn UsageStore>,
        limiter: Arc<dyn Limiter>,
        clock: Arc<dyn Clock>,
        record: UsageRecord,
        started_us: u64,
    ) -> Self {
        Meter {
            usage_store,
            limiter,
            clock,
            started_us,
            record,
            admission: None,
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

    /// Writes the record (once) and settles the admission.
    pub fn finish(&mut self, status: u16, usage: TokenUsage) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.record.status = status;
        self.record.usage = usage;
        self.record.latency_us = self.now().saturating_sub(self.started_us);
        if let Some(admission) = &self.admission {
            self.limiter
                .settle(&self.record.key_id, admission, &self.record);
        }
        self.usage_store.record(self.record.clone());
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        let seen = self.record.usage;
        self.finish(499, seen);
    }
}
