//! Usage records batched per key before they go to the store: the rule,
//! pure and clock-free (the caller passes `now`), that an adapter whose
//! store is one round trip away (the Worker's Durable Object per key) runs
//! to carry many records in one call.
//!
//! Ownership, so that no request ever waits on work another request
//! started (workerd cancels such requests as hung):
//!
//! - the record that finds no open batch for its key **opens** one and its
//!   request **owns the flush**: it waits (in its own `ctx.wait_until`)
//!   until [`Pushed::Opened::flush_at_ms`], then takes the batch with
//!   [`UsageBatches::take_due`] and posts it;
//! - a later record is **added** and its request has nothing more to do;
//! - the record that makes the batch **full** ([`BatchRule::max_records`])
//!   takes it at once ([`Pushed::Full`]) and its request posts it; the
//!   owner, waking later, finds its batch gone and posts nothing;
//! - a batch whose owner never came back (its flush is overdue by
//!   [`BatchRule::overdue_ms`]) is taken, with the new record, by the next
//!   request that pushes one ([`Pushed::Full`]): a lost owner delays
//!   records, it does not lose them while the isolate lives.
//!
//! A record is thus stored at most `max_age_ms` (plus the call) after its
//! request finished, and at worst on the next record of its key.

use crate::FastMap;

/// When a batch is flushed: at `max_records` records or `max_age_ms` after
/// its first record, whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchRule {
    pub max_records: usize,
    pub max_age_ms: u64,
    /// How late past its flush time a batch is taken by the next pusher.
    pub overdue_ms: u64,
}

impl BatchRule {
    /// 32 records or 200 ms: at 100 requests a second of one key in one
    /// isolate, about one call per 20 records.
    pub const DEFAULT: BatchRule = BatchRule {
        max_records: 32,
        max_age_ms: 200,
        overdue_ms: 2_000,
    };
}

impl Default for BatchRule {
    fn default() -> Self {
        BatchRule::DEFAULT
    }
}

/// What became of a pushed record, and what its request must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed<T> {
    /// It opened batch `batch`: the request waits until `flush_at_ms`, then
    /// calls [`UsageBatches::take_due`] and posts what it gets.
    Opened { batch: u64, flush_at_ms: u64 },
    /// It joined an open batch whose owner flushes it: nothing to do.
    Added,
    /// The batch is full (or its owner overdue): the request posts these now.
    Full(Vec<T>),
}

#[derive(Debug)]
struct Batch<T> {
    id: u64,
    opened_at_ms: u64,
    items: Vec<T>,
}

/// The open batches of one isolate (or container), by key id.
#[derive(Debug)]
pub struct UsageBatches<T> {
    rule: BatchRule,
    open: FastMap<String, Batch<T>>,
    next_id: u64,
}

impl<T> Default for UsageBatches<T> {
    fn default() -> Self {
        UsageBatches::new(BatchRule::DEFAULT)
    }
}

impl<T> UsageBatches<T> {
    pub fn new(rule: BatchRule) -> UsageBatches<T> {
        UsageBatches {
            rule: BatchRule {
                max_records: rule.max_records.max(1),
                ..rule
            },
            open: FastMap::default(),
            next_id: 1,
        }
    }

    pub fn rule(&self) -> BatchRule {
        self.rule
    }

    /// Adds `item` to `key`'s batch at `now_ms`.
    pub fn push(&mut self, key: &str, now_ms: u64, item: T) -> Pushed<T> {
        let rule = self.rule;
        if let Some(batch) = self.open.get_mut(key) {
            let overdue = now_ms
                >= batch
                    .opened_at_ms
                    .saturating_add(rule.max_age_ms)
                    .saturating_add(rule.overdue_ms);
            batch.items.push(item);
            if batch.items.len() >= rule.max_records || overdue {
                let items = self.open.remove(key).map(|b| b.items).unwrap_or_default();
                return Pushed::Full(items);
            }
            return Pushed::Added;
        }
        if rule.max_records <= 1 {
            return Pushed::Full(vec![item]);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.open.insert(
            key.to_owned(),
            Batch {
                id,
                opened_at_ms: now_ms,
                items: vec![item],
            },
        );
        Pushed::Opened {
            batch: id,
            flush_at_ms: now_ms.saturating_add(rule.max_age_ms),
        }
    }

    /// The owner's flush: batch `batch` of `key` if it is still open (not
    /// taken as full meanwhile), whatever the time. `now_ms` only decides
    /// whether it is due: before its flush time, nothing is taken.
    pub fn take_due(&mut self, key: &str, batch: u64, now_ms: u64) -> Option<Vec<T>> {
        let open = self.open.get(key)?;
        if open.id != batch || now_ms < open.opened_at_ms.saturating_add(self.rule.max_age_ms) {
            return None;
        }
        self.open.remove(key).map(|b| b.items)
    }

    /// Records waiting in open batches (all keys).
    pub fn pending(&self) -> usize {
        self.open.values().map(|b| b.items.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(max_records: usize) -> BatchRule {
        BatchRule {
            max_records,
            max_age_ms: 200,
            overdue_ms: 2_000,
        }
    }

    #[test]
    fn the_first_record_opens_a_batch_and_its_owner_flushes_it_when_due() {
        let mut b = UsageBatches::new(rule(32));
        let Pushed::Opened { batch, flush_at_ms } = b.push("k", 1_000, 1) else {
            panic!("the first record opens the batch")
        };
        assert_eq!(flush_at_ms, 1_200);
        assert_eq!(b.push("k", 1_050, 2), Pushed::Added);
        assert_eq!(b.push("k", 1_199, 3), Pushed::Added);
        // Not before its time (a timer that fired early).
        assert_eq!(b.take_due("k", batch, 1_199), None);
        assert_eq!(b.take_due("k", batch, 1_200), Some(vec![1, 2, 3]));
        assert_eq!(b.pending(), 0);
        // Taken once.
        assert_eq!(b.take_due("k", batch, 1_300), None);
    }

    #[test]
    fn the_record_that_fills_a_batch_takes_it_and_the_owner_finds_nothing() {
        let mut b = UsageBatches::new(rule(3));
        let Pushed::Opened { batch, .. } = b.push("k", 0, 1) else {
            panic!()
        };
        assert_eq!(b.push("k", 1, 2), Pushed::Added);
        assert_eq!(b.push("k", 2, 3), Pushed::Full(vec![1, 2, 3]));
        // The next record opens a new batch, with a new owner.
        let Pushed::Opened { batch: next, .. } = b.push("k", 3, 4) else {
            panic!()
        };
        assert_ne!(next, batch);
        assert_eq!(
            b.take_due("k", batch, 10_000),
            None,
            "the old owner takes nothing"
        );
        assert_eq!(b.take_due("k", next, 10_000), Some(vec![4]));
    }

    #[test]
    fn keys_are_batched_apart() {
        let mut b = UsageBatches::new(rule(2));
        let Pushed::Opened { batch: a, .. } = b.push("a", 0, 1) else {
            panic!()
        };
        let Pushed::Opened { batch: c, .. } = b.push("c", 0, 10) else {
            panic!()
        };
        assert_eq!(b.push("c", 1, 11), Pushed::Full(vec![10, 11]));
        assert_eq!(b.pending(), 1);
        assert_eq!(b.take_due("c", c, 500), None);
        assert_eq!(b.take_due("a", a, 500), Some(vec![1]));
    }

    #[test]
    fn an_overdue_batch_is_taken_by_the_next_pusher() {
        let mut b = UsageBatches::new(rule(32));
        let Pushed::Opened { batch, .. } = b.push("k", 0, 1) else {
            panic!()
        };
        // The owner never came back; late but not overdue: joined.
        assert_eq!(b.push("k", 2_199, 2), Pushed::Added);
        assert_eq!(b.push("k", 2_200, 3), Pushed::Full(vec![1, 2, 3]));
        assert_eq!(b.take_due("k", batch, 5_000), None);
    }

    #[test]
    fn a_rule_of_one_record_posts_every_record_at_once() {
        let mut b = UsageBatches::new(rule(0));
        assert_eq!(b.rule().max_records, 1);
        assert_eq!(b.push("k", 0, 1), Pushed::Full(vec![1]));
        assert_eq!(b.push("k", 0, 2), Pushed::Full(vec![2]));
        assert_eq!(b.pending(), 0);
    }

    #[test]
    fn every_record_leaves_exactly_once_under_any_interleaving() {
        // A simulated isolate: owners wake at their flush time; records
        // arrive at irregular times; every record is flushed exactly once.
        let mut b = UsageBatches::new(rule(5));
        let mut owners: Vec<(u64, u64)> = Vec::new(); // (flush_at, batch)
        let mut flushed: Vec<u32> = Vec::new();
        let mut now = 0u64;
        for i in 0..1_000u32 {
            now += u64::from(i * 7919 % 97);
            owners.retain(|&(at, batch)| {
                if at <= now {
                    flushed.extend(b.take_due("k", batch, now).unwrap_or_default());
                    false
                } else {
                    true
                }
            });
            match b.push("k", now, i) {
                Pushed::Opened { batch, flush_at_ms } => owners.push((flush_at_ms, batch)),
                Pushed::Added => {}
                Pushed::Full(items) => {
                    assert!(items.len() <= 5);
                    flushed.extend(items);
                }
            }
        }
        for (at, batch) in owners {
            flushed.extend(b.take_due("k", batch, at).unwrap_or_default());
        }
        flushed.sort_unstable();
        assert_eq!(flushed, (0..1_000).collect::<Vec<_>>());
        assert_eq!(b.pending(), 0);
    }
}
