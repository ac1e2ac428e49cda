//! [`Limiter`] on the key item: admission as one conditional counter write
//! decided on the item as last seen, without a read (the layout and the
//! proof are in [`conduit::metering::limits::counters`]),
//! settlement without a read, and the container's leases of hot keys
//! ([`conduit::metering::limits::lease`]): spent locally, granted and
//! returned with the admission writes, their settlements carried along.

use super::*;

/// Attempts at a conditional write before giving up with 503.
const MAX_ATTEMPTS: u32 = 200;

fn unavailable(e: impl std::fmt::Display) -> Rejection {
    Rejection {
        error: GatewayError::Store(e.to_string()),
        status: LimitStatus::default(),
    }
}

impl Dynamo {
    fn books(&self) -> std::sync::MutexGuard<'_, HashMap<String, LeaseBook>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admission at the key item, in one round trip where it can: decided
    /// on the item as this container last saw it (the previous admission's
    /// `UpdateItem` returned it), and written as one conditional
    /// `UpdateItem` that also requires the key's record and hash to be
    /// still what was seen, and returns the item after it for the next
    /// admission. A failed condition returns the item as it is (`ALL_OLD`;
    /// read where the store does not return it) and the admission is
    /// decided again on it. A refusal, a key check that fails, or a key
    /// without limits (whose record the gateway then trusts) is only ever
    /// decided on a consistent read. Where the container leases (`rate` is
    /// its observed rate for the key), the write may grant a lease and
    /// carries `carry` along (emptied once delivered).
    async fn admit_at_item(
        &self,
        key: &VirtualKey,
        demand: &Demand,
        rate: u64,
        carry: &mut Carry,
    ) -> Result<Admission, Rejection> {
        let (mut item, mut fresh) = match self.remembered(&key.id) {
            Some(seen) => (Some(seen), false),
            None => (self.key_item(&key.id).await.map_err(unavailable)?, true),
        };
        for attempt in 0..MAX_ATTEMPTS {
            let checked = Self::check(&item, &demand.key_hash);
            let limited = checked
                .as_ref()
                .is_ok_and(|k| !k.limits.is_empty() || k.budget.is_some());
            if !fresh && !limited {
                item = self.key_item(&key.id).await.map_err(unavailable)?;
                fresh = true;
                continue;
            }
            let current = checked.map_err(|error| Rejection {
                error,
                status: LimitStatus::default(),
            })?;
            let Some(seen) = item.take() else { break };
            if !limited {
                return Ok(Admission {
                    key: Some(current),
                    ..Admission::default()
                });
            }
            let now = now_ms();
            let ask = Ask {
                now_secs: now / 1_000,
                limits: &current.limits,
                budget: current.budget.as_ref(),
                tokens: demand.tokens,
                cost_nanos: demand.cost_nanos,
                ttl_secs: demand.ttl_secs,
            };
            let decided = if self.leasing {
                seen.counters
                    .admit_leasing(&ask, now, rate, &demand.key_hash, carry)
            } else {
                let (decided, status) = seen.counters.admit(&ask);
                (
                    decided.map(|(reservation, admission)| ItemAdmission {
                        reservation,
                        lease: None,
                        merged: Some(admission.clone()),
                        carry: Vec::new(),
                        admission,
                    }),
                    status,
                )
            };
            let (d, status) = match decided {
                (Err(_), _) if !fresh => {
                    // Refused on a remembered item: only a fresh one may refuse.
                    item = self.key_item(&key.id).await.map_err(unavailable)?;
                    fresh = true;
                    continue;
                }
                (Err(refusal), status) => {
                    return Err(Rejection {
                        error: refusal.to_error(current.budget.as_ref()),
                        status,
                    })
                }
                (Ok(d), status) => (d, status),
            };
            let write = match &d.merged {
                Some(w) => w,
                None => {
                    for w in &d.carry {
                        self.trips.add(Trip::CarryWrite);
                        // A failed condition: that second or period moved on.
                        self.write_counters(&key.id, w).await.map_err(unavailable)?;
                    }
                    *carry = Carry::default();
                    &d.admission
                }
            };
            self.trips.add(Trip::AdmitWrite);
            match self
                .admit_write(&key.id, write, &seen)
                .await
                .map_err(unavailable)?
            {
                Guarded::Written(after) => {
                    self.remember(&key.id, after.as_ref());
                    *carry = Carry::default();
                    if let Some(lease) = d.lease {
                        let mut books = self.books();
                        let book = book_of(&mut books, &key.id);
                        // Another request of this container got one meanwhile.
                        book.close(now, true);
                        book.lease = Some(lease);
                    }
                    return Ok(Admission {
                        reservation: Some(d.reservation),
                        status,
                        key: Some(current),
                    });
                }
                Guarded::Moved(Some(now_item)) => {
                    self.remember(&key.id, Some(&now_item));
                    item = Some(now_item);
                }
                Guarded::Moved(None) => {
                    item = self.key_item(&key.id).await.map_err(unavailable)?;
                }
            }
            fresh = true;
            Self::backoff(attempt).await;
        }
        Err(unavailable(
            "admission could not be written: too much contention on this key",
        ))
    }

    /// Settles a reservation admitted at the item.
    async fn settle_at_item(
        &self,
        key: &VirtualKey,
        reservation: &Reservation,
        settlement: Settlement,
    ) {
        // The key's budget as admitted (a PATCH since then applies to later requests).
        let writes = settlement_writes(
            reservation,
            key.budget.as_ref(),
            settlement.tokens,
            settlement.cost_nanos,
        );
        // One write when both parts still apply (almost always); else part by part.
        if let Some(w) = merge_writes(&writes).filter(|_| writes.len() > 1) {
            self.trips.add(Trip::SettleWrite);
            match self.write_counters(&key.id, &w).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    return eprintln!("conduit: settlement for key {} failed: {}", key.id, e);
                }
            }
        }
        for write in writes {
            self.trips.add(Trip::SettleWrite);
            // A failed condition: the slot or period moved on, nothing to correct there.
            if let Err(e) = self.write_counters(&key.id, &write).await {
                eprintln!("conduit: settlement for key {} failed: {}", key.id, e);
            }
        }
    }

    /// Delivers a container's carry: one write when the parts can be one
    /// (and all still apply), else part by part. Given back to the book if
    /// the store fails.
    async fn deliver(&self, key: &VirtualKey, carry: Carry) {
        let writes = carry_writes(&carry, key.budget.as_ref().map(|b| b.period));
        if let Some(w) = merge_writes(&writes).filter(|_| writes.len() > 1) {
            self.trips.add(Trip::CarryWrite);
            match self.write_counters(&key.id, &w).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    eprintln!("conduit: settlement for key {} failed: {}", key.id, e);
                    book_of(&mut self.books(), &key.id).carry.absorb(carry);
                    return;
                }
            }
        }
        for w in &writes {
            self.trips.add(Trip::CarryWrite);
            // A failed condition: the slot, day or period moved on.
            if let Err(e) = self.write_counters(&key.id, w).await {
                eprintln!("conduit: settlement for key {} failed: {}", key.id, e);
            }
        }
    }
}

port! {
    impl Limiter for Dynamo {
        async fn admit(&self, key: &VirtualKey, demand: &Demand) -> Result<Admission, Rejection> {
            if !self.leasing || (key.limits.is_empty() && key.budget.is_none()) {
                return self.admit_at_item(key, demand, 0, &mut Carry::default()).await;
            }
            // The container's lease first; else the item, with the carry.
            let now = now_ms();
            let (mut carry, rate) = {
                let mut books = self.books();
                let book = book_of(&mut books, &key.id);
                if let Some((reservation, status)) = book.admit(now, &demand.key_hash, demand.tokens, demand.cost_nanos) {
                    return Ok(Admission { reservation: Some(reservation), status, key: None });
                }
                book.close(now, true);
                (book.take_carry(), book.rate.per_sec(now))
            };
            let result = self.admit_at_item(key, demand, rate, &mut carry).await;
            if !carry.is_empty() {
                // Not delivered: it goes with the next call.
                book_of(&mut self.books(), &key.id).carry.absorb(carry);
            }
            result
        }

        async fn settle(&self, key: &VirtualKey, admission: &Admission, settlement: Settlement) {
            let Some(reservation) = admission.reservation else { return };
            if !reservation.leased {
                return self.settle_at_item(key, &reservation, settlement).await;
            }
            // Into the lease, or carried: delivered when due, or once the
            // lease is over (before the invocation ends).
            let now = now_ms();
            let carry = {
                let mut books = self.books();
                let book = book_of(&mut books, &key.id);
                book.settle_leased(now, &reservation, settlement.tokens, settlement.cost_nanos, key.budget.is_some())
            };
            if let Some(carry) = carry {
                self.deliver(key, carry).await;
            }
        }

        async fn status(&self, key: &VirtualKey) -> Result<LimitStatus, StoreError> {
            let Some(item) = self.key_item(&key.id).await? else { return Ok(LimitStatus::default()) };
            let current = item.key.clone().unwrap_or_else(|| key.clone());
            Ok(item.counters.status(now_secs(), &current.limits, current.budget.as_ref()))
        }

        async fn verify(&self, key: &VirtualKey, key_hash: &str) -> Result<Option<VirtualKey>, GatewayError> {
            let item = self.key_item(&key.id).await?;
            Self::check(&item, key_hash).map(Some)
        }

        fn trust_for_revocation_delay(&self) -> bool {
            self.edge
        }
    }
}
