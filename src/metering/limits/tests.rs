//! Unit tests of the state machine and its answers.

use super::*;
use crate::keys::{Budget, BudgetPeriod, Limits};
use crate::wire::error::GatewayError;
use serde_json::{Map, Value};

/// A small deterministic generator (an LCG) for the randomized tests here
/// and in `lease_tests.rs`: a failing seed replays exactly.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self, m: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % m
    }
}

#[test]
fn an_absurd_allowance_is_refused_not_wrapped() {
    let body = |v: Value| v.as_object().cloned().unwrap_or_default();
    for (field, v) in [
        ("max_tokens", serde_json::json!(u64::MAX)),
        ("max_tokens", serde_json::json!(18446744073709551000u64)),
        (
            "max_completion_tokens",
            serde_json::json!(MAX_COMPLETION_TOKENS + 1),
        ),
        ("max_tokens", serde_json::json!(-1)),
        ("max_tokens", serde_json::json!(1.5)),
        ("max_tokens", serde_json::json!("100")),
        ("n", serde_json::json!(0)),
        ("n", serde_json::json!(MAX_CHOICES + 1)),
    ] {
        let b = body(serde_json::json!({ field: v }));
        match completion_allowance(&b, 16) {
            Err(GatewayError::InvalidRequest { param, .. }) => {
                assert_eq!(param.as_deref(), Some(field))
            }
            other => panic!("{field}={v}: {other:?}"),
        }
    }
    let b = body(serde_json::json!({"max_tokens": MAX_COMPLETION_TOKENS, "n": MAX_CHOICES}));
    assert_eq!(
        completion_allowance(&b, 16).unwrap(),
        MAX_COMPLETION_TOKENS * MAX_CHOICES
    );
    let b = body(serde_json::json!({"max_tokens": null, "max_completion_tokens": 7}));
    assert_eq!(completion_allowance(&b, 16).unwrap(), 7);
    assert_eq!(completion_allowance(&Map::new(), 16).unwrap(), 16);
}

#[test]
fn huge_asks_saturate_and_are_refused_by_a_small_tpm() {
    let l = limits(None, None, Some(1000));
    let mut s = KeyLimitState::default();
    assert!(s.admit(&ask(1_000, &l, None, u64::MAX, 0)).is_err());
    assert!(s.admit(&ask(1_000, &l, None, 999, 0)).is_ok());
    assert!(s.admit(&ask(1_000, &l, None, u64::MAX - 10, 0)).is_err());
    let b = Budget {
        max_nanos: 1_000,
        period: BudgetPeriod::Total,
    };
    let mut s = KeyLimitState::default();
    assert!(s
        .admit(&ask(
            1_000,
            &limits(None, None, None),
            Some(&b),
            0,
            u64::MAX
        ))
        .is_err());
}

fn limits(rpm: Option<u64>, rpd: Option<u64>, tpm: Option<u64>) -> Limits {
    Limits { rpm, rpd, tpm }
}

fn ask<'a>(now: u64, l: &'a Limits, b: Option<&'a Budget>, tokens: u64, cost: u64) -> Ask<'a> {
    Ask {
        now_secs: now,
        limits: l,
        budget: b,
        tokens,
        cost_nanos: cost,
        ttl_secs: 600,
    }
}

/// `admit_with_status` (rolled and summed once) leaves the state and tells
/// the status that `admit` then `status` do, refusals, expiries, settlements,
/// new days and periods and saturated counts included.
#[test]
fn admit_with_status_is_admit_then_status() {
    let mut rng = Rng(7);
    for round in 0..40 {
        let pick = |rng: &mut Rng, v: &[Option<u64>]| v[rng.next(v.len() as u64) as usize];
        let l = limits(
            pick(&mut rng, &[None, Some(3), Some(50), Some(u64::MAX)]),
            pick(&mut rng, &[None, Some(10), Some(400)]),
            pick(&mut rng, &[None, Some(500), Some(100_000), Some(u64::MAX)]),
        );
        let b = Budget {
            max_nanos: 1 + rng.next(5_000),
            period: [BudgetPeriod::Daily, BudgetPeriod::Total][rng.next(2) as usize],
        };
        let budget = (round % 3 != 0).then_some(&b);
        let (mut one, mut two) = (KeyLimitState::default(), KeyLimitState::default());
        let mut now = 86_400 * 30 - 200;
        let mut admitted = Vec::new();
        for _ in 0..300 {
            now += rng.next(4) * rng.next(30);
            let tokens = match rng.next(10) {
                0 => u64::MAX - rng.next(3),
                _ => rng.next(200),
            };
            let mut a = ask(now, &l, budget, tokens, rng.next(60));
            a.ttl_secs = 1 + rng.next(90);
            let (r1, s1) = one.admit_with_status(&a);
            let r2 = two.admit(&a);
            let s2 = two.status(now, &l, budget);
            assert_eq!((&r1, &s1), (&r2, &s2), "round {round} at {now}");
            assert_eq!(one, two, "round {round} at {now}");
            if let Ok(r) = r1 {
                admitted.push(r);
            }
            if rng.next(3) == 0 && !admitted.is_empty() {
                let r = admitted.swap_remove(rng.next(admitted.len() as u64) as usize);
                let (t, c) = (rng.next(300), rng.next(80));
                one.settle(now, budget, r.id, t, c);
                two.settle(now, budget, r.id, t, c);
            }
        }
    }
}

#[test]
fn rpm_exact_in_a_burst_and_truthful_retry_after() {
    let l = limits(Some(5), None, None);
    let mut s = KeyLimitState::default();
    let t0 = 1_000_000;
    for _ in 0..5 {
        assert!(s.admit(&ask(t0, &l, None, 0, 0)).is_ok());
    }
    let Err(Refusal::Rate {
        limit,
        retry_after_secs,
        ..
    }) = s.admit(&ask(t0 + 10, &l, None, 0, 0))
    else {
        panic!()
    };
    assert_eq!((limit, retry_after_secs), ("rpm", 50));
    assert!(s.admit(&ask(t0 + 59, &l, None, 0, 0)).is_err());
    assert!(
        s.admit(&ask(t0 + 60, &l, None, 0, 0)).is_ok(),
        "free exactly when Retry-After said"
    );
}

#[test]
fn rpm_window_slides() {
    let l = limits(Some(2), None, None);
    let mut s = KeyLimitState::default();
    assert!(s.admit(&ask(100, &l, None, 0, 0)).is_ok());
    assert!(s.admit(&ask(130, &l, None, 0, 0)).is_ok());
    let Err(Refusal::Rate {
        retry_after_secs, ..
    }) = s.admit(&ask(140, &l, None, 0, 0))
    else {
        panic!()
    };
    assert_eq!(retry_after_secs, 20);
    assert!(s.admit(&ask(160, &l, None, 0, 0)).is_ok());
    assert!(s.admit(&ask(161, &l, None, 0, 0)).is_err());
}

#[test]
fn rpd_is_the_utc_day() {
    let l = limits(None, Some(2), None);
    let mut s = KeyLimitState::default();
    let noon = 20_000 * 86_400 + 43_200;
    assert!(s.admit(&ask(noon, &l, None, 0, 0)).is_ok());
    assert!(s.admit(&ask(noon + 1, &l, None, 0, 0)).is_ok());
    let Err(Refusal::Rate {
        limit,
        retry_after_secs,
        ..
    }) = s.admit(&ask(noon + 2, &l, None, 0, 0))
    else {
        panic!()
    };
    assert_eq!((limit, retry_after_secs), ("rpd", 43_198));
    assert!(s.admit(&ask(noon + 43_200, &l, None, 0, 0)).is_ok());
}

#[test]
fn tpm_reserves_then_settles_to_actual() {
    let l = limits(None, None, Some(1000));
    let mut s = KeyLimitState::default();
    let r = s.admit(&ask(50, &l, None, 600, 0)).unwrap();
    assert!(
        s.admit(&ask(50, &l, None, 600, 0)).is_err(),
        "estimate is held"
    );
    s.settle(51, None, r.id, 100, 0);
    assert!(
        s.admit(&ask(52, &l, None, 600, 0)).is_ok(),
        "settled to actual"
    );
    let Err(Refusal::Rate { limit, .. }) = s.admit(&ask(52, &l, None, 5000, 0)) else {
        panic!()
    };
    assert_eq!(limit, "tpm");
}

#[test]
fn budget_counts_spent_reserved_and_own_estimate() {
    let l = Limits::default();
    let b = Budget {
        max_nanos: 1000,
        period: BudgetPeriod::Daily,
    };
    let mut s = KeyLimitState::default();
    let day = 20_000 * 86_400;
    let r1 = s.admit(&ask(day, &l, Some(&b), 0, 400)).unwrap();
    let r2 = s.admit(&ask(day, &l, Some(&b), 0, 400)).unwrap();
    assert!(matches!(
        s.admit(&ask(day, &l, Some(&b), 0, 400)),
        Err(Refusal::Budget { .. })
    ));
    s.settle(day + 1, Some(&b), r1.id, 0, 100);
    s.settle(day + 1, Some(&b), r2.id, 0, 100);
    assert_eq!(s.spent_nanos, 200);
    assert!(s.admit(&ask(day + 2, &l, Some(&b), 0, 800)).is_ok());
    // A new UTC day starts over.
    assert!(s.admit(&ask(day + 86_400, &l, Some(&b), 0, 1000)).is_ok());
    assert_eq!(s.spent_nanos, 0);
}

#[test]
fn unsettled_reservations_expire_and_are_charged() {
    let l = Limits::default();
    let b = Budget {
        max_nanos: 1000,
        period: BudgetPeriod::Total,
    };
    let mut s = KeyLimitState::default();
    let r = s
        .admit(&Ask {
            ttl_secs: 10,
            ..ask(100, &l, Some(&b), 0, 300)
        })
        .unwrap();
    let st = s.status(111, &l, Some(&b));
    assert_eq!((st.spent_nanos, st.reserved_nanos), (300, 0));
    s.settle(112, Some(&b), r.id, 0, 50);
    assert_eq!(s.spent_nanos, 300, "a late settle does not count twice");
}

#[test]
fn refusal_round_trips_through_json() {
    for r in [
        Refusal::Rate {
            limit: "tpm",
            max: 5,
            retry_after_secs: 7,
        },
        Refusal::Budget {
            max_nanos: 1,
            spent_nanos: 2,
            reserved_nanos: 3,
            asked_nanos: 4,
        },
    ] {
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(Refusal::from_json(&v), Some(r));
    }
}

#[test]
fn periods() {
    // 2026-11-24 is a Tuesday.
    let t = crate::wire::time::parse_timestamp("2026-11-24T15:00:00Z").unwrap();
    let f = crate::wire::time::format_rfc3339;
    assert_eq!(
        f(period_start(BudgetPeriod::Daily, t)),
        "2026-11-24T00:00:00Z"
    );
    assert_eq!(
        f(period_start(BudgetPeriod::Weekly, t)),
        "2026-11-23T00:00:00Z"
    );
    assert_eq!(
        f(period_start(BudgetPeriod::Monthly, t)),
        "2026-11-01T00:00:00Z"
    );
    assert_eq!(period_start(BudgetPeriod::Total, t), 0);
}

mod counter_layout {
    //! [`counters`]: the same decisions as the state machine, and exactness
    //! when admissions race on the store.

    use std::collections::HashMap;

    use super::super::counters::{settlement_writes, Condition, CounterWrite, KeyCounters, Update};
    use super::*;

    /// A store item: the conditional update DynamoDB would run.
    #[derive(Default)]
    struct Item(HashMap<String, i64>);

    impl Item {
        fn read(&self) -> KeyCounters {
            KeyCounters::read(self.0.iter().map(|(n, v)| (n.as_str(), *v as u64)))
        }

        fn write(&mut self, w: &CounterWrite) -> bool {
            let ok = w.conditions.iter().all(|c| match c {
                Condition::Absent(a) => !self.0.contains_key(a),
                Condition::Equals(a, v) => self.0.get(a) == Some(&(*v as i64)),
                Condition::AtMost(a, v) => self.0.get(a).is_none_or(|x| *x <= *v as i64),
                Condition::Exists(a) => self.0.contains_key(a),
            });
            if ok {
                for u in &w.updates {
                    match u {
                        Update::Set(a, v) => {
                            self.0.insert(a.clone(), *v as i64);
                        }
                        Update::Add(a, d) => *self.0.entry(a.clone()).or_insert(0) += d,
                        Update::Remove(a) => {
                            self.0.remove(a);
                        }
                    }
                }
            }
            ok
        }
    }

    #[test]
    fn same_decisions_as_the_state_machine() {
        let l = limits(Some(7), Some(400), Some(5_000));
        let b = Budget {
            max_nanos: 200_000,
            period: BudgetPeriod::Daily,
        };
        let mut state = KeyLimitState::default();
        let mut item = Item::default();
        let mut rng = Rng(42);
        let mut next = |m: u64| rng.next(m);
        let mut now = 20_000 * 86_400 - 300;
        let (mut admitted, mut refused) = (0, 0);
        for _ in 0..2_000 {
            now += next(4);
            let tokens = next(900);
            let cost = next(2_000);
            let a = ask(now, &l, Some(&b), tokens, cost);
            let expected = state.admit(&a);
            let (got, status) = item.read().admit(&a);
            let mut s2 = state.clone();
            assert_eq!(
                status.requests,
                s2.status(now, &l, Some(&b)).requests,
                "at {now}"
            );
            match (expected, got) {
                (Ok(r), Ok((r2, w))) => {
                    admitted += 1;
                    assert!(item.write(&w), "an uncontended write succeeds");
                    assert_eq!(
                        (r.sec, r.tokens, r.cost_nanos),
                        (r2.sec, r2.tokens, r2.cost_nanos)
                    );
                    // Most settle at once, to less than the estimate; some never do.
                    if next(5) != 0 {
                        let (used, spent) = (tokens / 2, cost / 3);
                        state.settle(now, Some(&b), r.id, used, spent);
                        for w in settlement_writes(&r2, Some(&b), used, spent) {
                            item.write(&w);
                        }
                    }
                }
                (Err(e), Err(g)) => {
                    refused += 1;
                    assert_eq!(e, g, "at {now}");
                }
                (e, g) => panic!("at {now}: state machine {e:?}, counters {g:?}"),
            }
        }
        assert!(admitted > 200 && refused > 200, "{admitted} {refused}");
    }

    #[test]
    fn racing_admissions_admit_exactly_the_limit() {
        let l = limits(Some(100), None, None);
        let mut item = Item::default();
        let mut admitted = 0;
        let mut attempts = 0;
        // 8 admitters read the same state, then write one after another;
        // a failed write is re-read and retried, as the adapter does.
        for round in 0..400u64 {
            let now = 1_000 + round / 50;
            let snapshot = item.read();
            let plans: Vec<_> = (0..8)
                .map(|_| snapshot.admit(&ask(now, &l, None, 10, 0)).0)
                .collect();
            for plan in plans {
                let mut plan = plan;
                loop {
                    attempts += 1;
                    match plan {
                        Ok((_, w)) if item.write(&w) => {
                            admitted += 1;
                            break;
                        }
                        Ok(_) => plan = item.read().admit(&ask(now, &l, None, 10, 0)).0,
                        Err(_) => break,
                    }
                }
            }
        }
        assert_eq!(admitted, 100, "exactly rpm within the window");
        assert!(attempts < 3_400, "few retries: {attempts}");
    }

    /// Several holders lease from one item, as the Lambda containers do:
    /// grants, local spends, settlements and returns carried on the next
    /// admission, killed holders; never more than `rpm` in a window, and
    /// the budget's committed spend never past its maximum.
    #[test]
    fn leases_on_the_counters_are_exact() {
        use super::super::lease::LeaseBook;
        let l = limits(Some(500), None, Some(400_000));
        let b = Budget {
            max_nanos: 3_000_000,
            period: BudgetPeriod::Total,
        };
        let mut item = Item::default();
        let mut books = vec![LeaseBook::default(); 5];
        let mut pending: Vec<(usize, Reservation, u64, u64)> = Vec::new();
        let mut per_sec: std::collections::BTreeMap<u64, u64> = Default::default();
        let (mut leased, mut writes) = (0u64, 0u64);
        let mut rng = Rng(99);
        let mut next = |m: u64| rng.next(m);
        let mut now_ms: u64 = 1_700_000_000_000;
        for _ in 0..30_000 {
            now_ms += next(8);
            let h = next(5) as usize;
            match next(100) {
                0..=69 => {
                    let (tokens, cost) = (1 + next(100), 1 + next(1_000));
                    let book = &mut books[h];
                    let mut got = book.admit(now_ms, "h", tokens, cost).map(|(r, _)| r);
                    if got.is_some() {
                        leased += 1;
                    } else {
                        book.close(now_ms, true);
                        let carry = book.take_carry();
                        let rate = book.rate.per_sec(now_ms);
                        let a = ask(now_ms / 1_000, &l, Some(&b), tokens, cost);
                        // A holder retries a failed write at once (the
                        // others raced it); its carry goes with the admission.
                        for _ in 0..5 {
                            let (decided, _) =
                                item.read().admit_leasing(&a, now_ms, rate, "h", &carry);
                            let Ok(d) = decided else { break };
                            writes += 1;
                            let ok = match &d.merged {
                                Some(w) => item.write(w),
                                None => {
                                    for w in &d.carry {
                                        item.write(w);
                                    }
                                    item.write(&d.admission)
                                }
                            };
                            if ok {
                                book.lease = d.lease;
                                got = Some(d.reservation);
                                break;
                            }
                        }
                    }
                    if let Some(r) = got {
                        *per_sec.entry(now_ms / 1_000).or_default() += 1;
                        pending.push((h, r, tokens, cost));
                    }
                }
                70..=93 if !pending.is_empty() => {
                    let (h, r, tokens, cost) =
                        pending.swap_remove(next(pending.len() as u64) as usize);
                    let (used, spent) = (tokens - next(tokens + 1), cost - next(cost + 1));
                    if r.leased {
                        books[h].settle(now_ms, &r, used, spent, true);
                    } else {
                        for w in settlement_writes(&r, Some(&b), used, spent) {
                            item.write(&w);
                        }
                    }
                }
                94..=98 => {
                    let book = &mut books[h];
                    book.close(now_ms, false);
                    if book.carry.due(now_ms) {
                        let carry = book.take_carry();
                        for w in super::super::counters::carry_writes(&carry, Some(b.period)) {
                            item.write(&w);
                        }
                    }
                }
                _ => {
                    books[h] = LeaseBook::default();
                    pending.retain(|p| p.0 != h);
                }
            }
            let now = now_ms / 1_000;
            let window: u64 = per_sec
                .range(now.saturating_sub(59)..=now)
                .map(|(_, n)| n)
                .sum();
            assert!(window <= 500, "{window} in the minute to {now}");
            let st = item.read().status(now, &l, Some(&b));
            assert!(st.spent_nanos + st.reserved_nanos <= b.max_nanos, "{st:?}");
            if let Some(c) = item.0.get("bc") {
                assert!(*c >= 0 && (*c as u64) <= b.max_nanos, "committed {c}");
            }
        }
        let total: u64 = per_sec.values().sum();
        assert!(leased * 2 > total, "{leased} of {total} from leases");
        // Near the limit (most of each minute here) admissions go one by one.
        assert!(
            writes * 2 < total,
            "{writes} item writes for {total} admissions"
        );
    }

    /// Admission in one round trip, as the Lambda containers make it:
    /// each holder decides on the item as its own last write returned it
    /// (`ALL_NEW`), however stale, and writes at once; a failed condition
    /// hands it the item as it is (`ALL_OLD`) to decide again; a refusal
    /// is only made on the item as it is. Many holders, random clocks
    /// within a second's boundary, leases, carries and killed holders:
    /// never more than `rpm` in any window, the budget never passed, and
    /// most admissions cost one write.
    #[test]
    fn one_call_admissions_on_remembered_items_are_exact() {
        use super::super::lease::LeaseBook;
        let l = limits(Some(1_500), None, Some(600_000));
        let b = Budget {
            max_nanos: 6_000_000,
            period: BudgetPeriod::Total,
        };
        for seed in [5u64, 17, 2024] {
            let mut item = Item::default();
            let holders = 8;
            let mut books = vec![LeaseBook::default(); holders];
            let mut seen: Vec<Option<KeyCounters>> = vec![None; holders];
            let mut pending: Vec<(usize, Reservation, u64, u64)> = Vec::new();
            let mut per_sec: std::collections::BTreeMap<u64, u64> = Default::default();
            // Round trips of the admissions made at the item that admitted.
            let (mut trips, mut item_admissions) = (0u64, 0u64);
            let mut rng = Rng(seed);
            let mut next = |m: u64| rng.next(m);
            let mut now_ms: u64 = 1_700_000_000_000;
            for _ in 0..20_000 {
                now_ms += next(40);
                let h = next(holders as u64) as usize;
                // Each holder's clock: up to 30 ms ahead or behind
                // (second-boundary races).
                let clock = now_ms + next(60) - 30;
                match next(100) {
                    0..=69 => {
                        let (tokens, cost) = (1 + next(100), 1 + next(1_000));
                        let book = &mut books[h];
                        let mut got = book.admit(clock, "h", tokens, cost).map(|(r, _)| r);
                        if got.is_none() {
                            let (mut writes, mut reads) = (0u64, 0u64);
                            book.close(clock, true);
                            let mut carry = book.take_carry();
                            let rate = book.rate.per_sec(clock);
                            let a = ask(clock / 1_000, &l, Some(&b), tokens, cost);
                            let (mut view, mut fresh) = match seen[h].take() {
                                Some(v) => (v, false),
                                None => {
                                    reads += 1;
                                    (item.read(), true)
                                }
                            };
                            for _ in 0..10 {
                                let (decided, _) = view.admit_leasing(&a, clock, rate, "h", &carry);
                                let d = match decided {
                                    Ok(d) => d,
                                    Err(_) if !fresh => {
                                        reads += 1;
                                        view = item.read();
                                        fresh = true;
                                        continue;
                                    }
                                    Err(_) => break,
                                };
                                let w = match &d.merged {
                                    Some(w) => w.clone(),
                                    None => {
                                        for w in &d.carry {
                                            item.write(w);
                                        }
                                        carry = Default::default();
                                        d.admission.clone()
                                    }
                                };
                                writes += 1;
                                // ALL_NEW on success, ALL_OLD on failure.
                                let ok = item.write(&w);
                                view = item.read();
                                fresh = true;
                                if ok {
                                    carry = Default::default();
                                    book.lease = d.lease;
                                    got = Some(d.reservation);
                                    break;
                                }
                            }
                            if got.is_some() {
                                item_admissions += 1;
                                trips += writes + reads;
                            }
                            seen[h] = Some(view);
                            if !carry.is_empty() {
                                book.carry.absorb(carry);
                            }
                        }
                        if let Some(r) = got {
                            assert!(r.sec >= clock / 1_000, "counted no earlier than admitted");
                            *per_sec.entry(clock / 1_000).or_default() += 1;
                            pending.push((h, r, tokens, cost));
                        }
                    }
                    70..=93 if !pending.is_empty() => {
                        let (h, r, tokens, cost) =
                            pending.swap_remove(next(pending.len() as u64) as usize);
                        let (used, spent) = (tokens - next(tokens + 1), cost - next(cost + 1));
                        if r.leased {
                            if let Some(c) = books[h].settle_leased(clock, &r, used, spent, true) {
                                for w in super::super::counters::carry_writes(&c, Some(b.period)) {
                                    item.write(&w);
                                }
                            }
                        } else {
                            for w in settlement_writes(&r, Some(&b), used, spent) {
                                item.write(&w);
                            }
                        }
                    }
                    94..=98 => {}
                    _ => {
                        books[h] = LeaseBook::default();
                        seen[h] = None;
                        pending.retain(|p| p.0 != h);
                    }
                }
                // By admission second (the holders' clocks, up to 30 ms
                // off): the windows ending in this second and the last.
                let now = (now_ms + 30) / 1_000;
                for end in [now - 1, now] {
                    let window: u64 = per_sec
                        .range(end.saturating_sub(59)..=end)
                        .map(|(_, n)| n)
                        .sum();
                    assert!(window <= 1_500, "{window} in the minute to {end}");
                }
                if let Some(c) = item.0.get("bc") {
                    assert!(*c >= 0 && (*c as u64) <= b.max_nanos, "committed {c}");
                }
            }
            let total: u64 = per_sec.values().sum();
            assert!(total > 6_000, "{total} admitted");
            // Seconds that left the window are removed as admissions go.
            assert!(item.0.len() <= 2 * 61 + 8, "{} attributes", item.0.len());
            // Most admissions at the item are one write, without a read.
            assert!(
                trips < item_admissions * 3 / 2,
                "{trips} round trips for {item_admissions} admissions at the item"
            );
        }
    }

    /// An item written in the layout before (`ws{i}`, `wr{i}`, `wt{i}`, i =
    /// second mod 60): its seconds still count in the window, and their
    /// attributes go once they have left it.
    #[test]
    fn the_layout_before_counts_and_is_removed() {
        let l = limits(Some(10), None, None);
        let mut item = Item::default();
        for (k, v) in [("whi", 1_000), ("ws40", 1_000), ("wr40", 7), ("wt40", 70)] {
            item.0.insert(k.into(), v);
        }
        for _ in 0..3 {
            let (r, _) = item.read().admit(&ask(1_010, &l, None, 1, 0));
            assert!(item.write(&r.unwrap().1));
        }
        let (refused, status) = item.read().admit(&ask(1_010, &l, None, 1, 0));
        assert!(refused.is_err(), "7 before + 3 now = rpm");
        assert_eq!(status.requests.map(|r| r.1), Some(0));
        let (r, _) = item.read().admit(&ask(1_060, &l, None, 1, 0));
        assert!(item.write(&r.unwrap().1), "the old second left the window");
        assert!(!item.0.contains_key("wr40") && !item.0.contains_key("ws40"));
        assert_eq!(item.0.get("mr1010"), Some(&3));
    }

    /// At a second's boundary: one admitter reads in the new second while
    /// another (a clock a little behind) still adds to the old one; the new
    /// second's write must not pass on a stale count.
    #[test]
    fn a_new_second_does_not_overtake_the_old_seconds_adds() {
        let l = limits(Some(5), None, Some(1_000));
        let mut item = Item::default();
        for _ in 0..4 {
            let (r, _) = item.read().admit(&ask(1_000, &l, None, 10, 0));
            assert!(item.write(&r.unwrap().1));
        }
        let late = item.read().admit(&ask(1_001, &l, None, 10, 0)).0.unwrap().1;
        let old = item.read().admit(&ask(1_000, &l, None, 10, 0)).0.unwrap().1;
        assert!(item.write(&old), "the fifth, in the old second");
        assert!(!item.write(&late), "the stale new-second write fails");
        assert!(
            item.read().admit(&ask(1_001, &l, None, 10, 0)).0.is_err(),
            "re-read: refused"
        );
    }

    #[test]
    fn budget_is_never_exceeded_under_races() {
        let l = limits(None, None, None);
        let b = Budget {
            max_nanos: 10_000,
            period: BudgetPeriod::Total,
        };
        let mut item = Item::default();
        let mut admitted = 0;
        for _ in 0..50 {
            let snapshot = item.read();
            for _ in 0..4 {
                if let (Ok((_, w)), _) = snapshot.admit(&ask(5_000, &l, Some(&b), 0, 700)) {
                    if item.write(&w) {
                        admitted += 1;
                    }
                }
            }
        }
        assert_eq!(admitted, 14, "10,000 / 700");
        let st = item.read().status(5_000, &l, Some(&b));
        assert_eq!((st.spent_nanos, st.reserved_nanos), (0, 9_800));
    }
}

/// The local limiter with a saved spend that cannot always be read.
mod unreadable_spend {
    use std::sync::Arc;

    use super::super::local::{LocalLimiter, SpendStore};
    use crate::compat::BoxFuture;
    use crate::keys::VirtualKey;
    use crate::ports::{Demand, Limiter, StoreError};

    /// Runs a future that completes without waiting (the local limiter's do).
    fn ready<T>(f: impl std::future::Future<Output = T>) -> T {
        let mut f = std::pin::pin!(f);
        match f
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the local limiter waited"),
        }
    }

    /// The fault matrix's store case: a saved spend that cannot be read
    /// refuses the key's admission with 503, rather than starting it from
    /// zero (which would let it spend its budget again, and then overwrite
    /// the saved spend with the smaller figure).
    #[test]
    fn an_unreadable_saved_spend_refuses_admission_until_it_reads() {
        use std::sync::atomic::{AtomicBool, Ordering};
        struct Flaky(AtomicBool);
        impl SpendStore for Flaky {
            fn load(&self, _: &str) -> Result<Option<(u64, u64)>, StoreError> {
                if self.0.load(Ordering::SeqCst) {
                    Ok(Some((0, 900_000)))
                } else {
                    Err(StoreError("sqlite: disk I/O error".into()))
                }
            }
            fn save(&self, _: &str, _: u64, _: u64, _: u64, _: bool) -> BoxFuture<'static, ()> {
                Box::pin(async {})
            }
        }
        let store = Arc::new(Flaky(AtomicBool::new(false)));
        let clock = Arc::new(crate::memory::ManualClock::new(1_000_000));
        let limiter = LocalLimiter::new(clock, Some(store.clone()));
        let key = VirtualKey::from_create_body(
            &serde_json::json!({"name": "k", "budget": {"max_usd": 0.001, "period": "total"}}),
            "key_1".into(),
            1,
        )
        .unwrap();
        let demand = Demand {
            key_hash: String::new(),
            model: "m".into(),
            tokens: 10,
            cost_nanos: 200_000,
            ttl_secs: 60,
        };
        let refused = ready(limiter.admit(&key, &demand)).unwrap_err();
        assert_eq!(refused.error.status().as_u16(), 503);
        assert!(ready(limiter.status(&key)).is_err());
        // Readable again: the saved 900,000 of 1,000,000 nano-USD count, so this
        // 200,000 demand is over the budget.
        store.0.store(true, Ordering::SeqCst);
        let refused = ready(limiter.admit(&key, &demand)).unwrap_err();
        assert_eq!(refused.error.status().as_u16(), 402);
        assert_eq!(ready(limiter.status(&key)).unwrap().spent_nanos, 900_000);
    }
}

/// The local limiter's spend writes: admission waits until its reservation
/// is covered by a durable mark; settlement waits only when it passed the
/// mark (the high-water mark itself: `local.rs`'s tests).
mod spend_write_through {
    use std::future::Future;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};

    use super::super::local::{LocalLimiter, SpendStore};
    use crate::compat::BoxFuture;
    use crate::keys::VirtualKey;
    use crate::ports::{Demand, Limiter, Settlement, StoreError};

    /// A store that records each write as it is handed over, and whose
    /// durable writes complete only once `commit` is set.
    #[derive(Default)]
    struct Recording {
        writes: Mutex<Vec<(u64, u64, bool)>>,
        commit: Arc<AtomicBool>,
    }

    impl SpendStore for Recording {
        fn load(&self, _: &str) -> Result<Option<(u64, u64)>, StoreError> {
            Ok(None)
        }
        fn save(
            &self,
            _: &str,
            _: u64,
            spent: u64,
            reserved: u64,
            durable: bool,
        ) -> BoxFuture<'static, ()> {
            self.writes.lock().unwrap().push((spent, reserved, durable));
            let commit = self.commit.clone();
            Box::pin(std::future::poll_fn(move |_| {
                if !durable || commit.load(Ordering::SeqCst) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }))
        }
    }

    fn poll<F: Future + ?Sized>(f: &mut std::pin::Pin<&mut F>) -> Poll<F::Output> {
        f.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }

    fn done<T>(f: impl Future<Output = T>) -> T {
        match poll(&mut std::pin::pin!(f)) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("waited"),
        }
    }

    fn setup() -> (Arc<Recording>, LocalLimiter, VirtualKey, Demand) {
        let store = Arc::new(Recording::default());
        let clock = Arc::new(crate::memory::ManualClock::new(1_000_000));
        let limiter = LocalLimiter::new(clock, Some(store.clone()));
        let key = VirtualKey::from_create_body(
            &serde_json::json!({"name": "k", "budget": {"max_usd": 0.01, "period": "total"}}),
            "key_1".into(),
            1,
        )
        .unwrap();
        let demand = Demand {
            key_hash: String::new(),
            model: "m".into(),
            tokens: 10,
            cost_nanos: 200_000,
            ttl_secs: 60,
        };
        (store, limiter, key, demand)
    }

    #[test]
    fn admission_waits_until_its_reservation_is_durable() {
        let (store, limiter, key, demand) = setup();
        let admit = limiter.admit(&key, &demand);
        let mut admit = std::pin::pin!(admit);
        assert!(poll(&mut admit).is_pending(), "admitted before durable");
        // Handed over at the first poll: the reservation and the headroom
        // (1 % of the 0.01 USD budget) above it.
        assert_eq!(*store.writes.lock().unwrap(), [(0, 300_000, true)]);
        store.commit.store(true, Ordering::SeqCst);
        match poll(&mut admit) {
            Poll::Ready(Ok(a)) => assert!(a.reservation.is_some()),
            _ => panic!("not admitted once durable"),
        }
    }

    /// An admission dropped while it waits (the client left) releases its
    /// reservation: the request never went upstream.
    #[test]
    fn an_admission_dropped_while_waiting_releases_its_reservation() {
        let (store, limiter, key, demand) = setup();
        {
            let admit = limiter.admit(&key, &demand);
            let mut admit = std::pin::pin!(admit);
            assert!(poll(&mut admit).is_pending());
        }
        let status = done(limiter.status(&key)).unwrap();
        assert_eq!((status.spent_nanos, status.reserved_nanos), (0, 0));
        // The mark still covers the key: nothing more is written.
        assert_eq!(*store.writes.lock().unwrap(), [(0, 300_000, true)]);
    }

    #[test]
    fn settlement_waits_only_when_it_passes_the_mark() {
        let (store, limiter, key, demand) = setup();
        store.commit.store(true, Ordering::SeqCst);
        let first = done(limiter.admit(&key, &demand)).unwrap();
        let second = done(limiter.admit(&key, &demand)).unwrap();
        store.commit.store(false, Ordering::SeqCst);
        // Cheaper than its estimate: the admission's durable state covers it.
        let cheap = limiter.settle(
            &key,
            &first,
            Settlement {
                tokens: 5,
                cost_nanos: 150_000,
            },
        );
        let mut cheap = std::pin::pin!(cheap);
        assert!(poll(&mut cheap).is_ready(), "waited for a lower spend");
        // Dearer than its estimate, past the mark (150,000 + 400,000 over
        // 500,000): waits until a new mark is durable.
        let dear = limiter.settle(
            &key,
            &second,
            Settlement {
                tokens: 50,
                cost_nanos: 400_000,
            },
        );
        let mut dear = std::pin::pin!(dear);
        assert!(
            poll(&mut dear).is_pending(),
            "a raised spend not waited for"
        );
        store.commit.store(true, Ordering::SeqCst);
        assert!(poll(&mut dear).is_ready());
        // The marks handed over, in order: 300,000 (the first admission and
        // its headroom), 500,000 (the second), 650,000 (the dear settlement);
        // the cheap settlement, within a mark, wrote nothing.
        assert_eq!(
            *store.writes.lock().unwrap(),
            [
                (0, 300_000, true),
                (0, 500_000, true),
                (550_000, 100_000, true),
            ]
        );
    }
}
