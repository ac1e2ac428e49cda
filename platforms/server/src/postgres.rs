//! The core's stores on PostgreSQL, for several servers sharing one state.
//!
//! | table | row | columns |
//! |-------|-----|---------|
//! | `conduit_keys` | a key | `id`, `key_hash` (SHA-256 of the secret, unique), `record` (the key's JSON), `limit_state` (the core's [`KeyLimitState`] as JSON), `created_at` |
//! | `conduit_usage` | a request | `request_id`, `key_id`, `created_at_ms`, `model`, `status`, `refused`, `trace_id` (W3C, indexed), `record` (the admin API's JSON) |
//! | `conduit_usage_hourly` | an hour, key and model alias | the summary's counters, added to as each record is written (never computed by scanning records) |
//! | `conduit_schema_migrations` | an applied migration | `version`, `applied_at` |
//!
//! **Admission** runs the core's [`KeyLimitState`] — the arithmetic the
//! single server, the Durable Object and DynamoDB run — inside a transaction
//! that holds the key's row lock (`SELECT … FOR UPDATE`). A row lock rather
//! than an optimistic version check: admissions of one hot key then queue in
//! the database instead of failing and retrying in the gateway (the retry
//! storm the DynamoDB path suffers under contention), other keys are not
//! touched, and the result is exactly that of serialised admissions, so with
//! `rpm = N` exactly N are admitted whatever the number of servers. Keys
//! without limits or budget take no lock: one indexed read, so revocation,
//! rotation and PATCH through any server apply at every server on the next
//! request.
//!
//! Migrations are versioned and applied at start-up under an advisory lock,
//! so servers starting together do not race.

use std::time::Duration;

use conduit::keys::{check_presented, VirtualKey};
use conduit::metering::limits::{Ask, KeyLimitState, LimitStatus, Rejection};
use conduit::metering::summary::{Counters, HourRow, SummaryQuery};
use conduit::metering::usage::{StatusFilter, UsageQuery, UsageRecord};
use conduit::port;
use conduit::ports::{Admission, Demand, KeyStore, Limiter, Settlement, StoreError, UsageStore};
use conduit::GatewayError;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::Value;
use tokio_postgres::NoTls;

/// Versioned schema changes, applied in order, each once.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
    "CREATE TABLE conduit_keys (
         id          TEXT PRIMARY KEY,
         key_hash    TEXT NOT NULL UNIQUE,
         record      TEXT NOT NULL,
         limit_state TEXT NOT NULL DEFAULT '',
         created_at  BIGINT NOT NULL
     );
     CREATE TABLE conduit_usage (
         request_id    TEXT PRIMARY KEY,
         key_id        TEXT NOT NULL,
         created_at_ms BIGINT NOT NULL,
         record        TEXT NOT NULL
     );
     CREATE INDEX conduit_usage_by_key_time ON conduit_usage (key_id, created_at_ms);
     CREATE INDEX conduit_usage_by_time ON conduit_usage (created_at_ms);",
    ),
    (
        2,
        // Paged usage (newest first, filters) and the summary's counters.
        "ALTER TABLE conduit_usage
             ADD COLUMN model   TEXT    NOT NULL DEFAULT '',
             ADD COLUMN status  INTEGER NOT NULL DEFAULT 0,
             ADD COLUMN refused BOOLEAN NOT NULL DEFAULT false;
         CREATE INDEX conduit_usage_page ON conduit_usage (created_at_ms DESC, request_id DESC);
         CREATE INDEX conduit_usage_page_by_key ON conduit_usage (key_id, created_at_ms DESC, request_id DESC);
         CREATE TABLE conduit_usage_hourly (
             hour              BIGINT NOT NULL,
             key_id            TEXT   NOT NULL,
             model             TEXT   NOT NULL,
             requests          BIGINT NOT NULL DEFAULT 0,
             errors            BIGINT NOT NULL DEFAULT 0,
             rate_limited      BIGINT NOT NULL DEFAULT 0,
             budget_refused    BIGINT NOT NULL DEFAULT 0,
             prompt_tokens     BIGINT NOT NULL DEFAULT 0,
             completion_tokens BIGINT NOT NULL DEFAULT 0,
             total_tokens      BIGINT NOT NULL DEFAULT 0,
             cached_tokens     BIGINT NOT NULL DEFAULT 0,
             cost_nanos        BIGINT NOT NULL DEFAULT 0,
             unpriced          BIGINT NOT NULL DEFAULT 0,
             PRIMARY KEY (hour, key_id, model)
         );",
    ),
    (
        3,
        // The W3C trace id of each request, to find a trace's records.
        "ALTER TABLE conduit_usage ADD COLUMN trace_id TEXT;
         CREATE INDEX conduit_usage_by_trace ON conduit_usage (trace_id) WHERE trace_id IS NOT NULL;",
    ),
];

/// An arbitrary constant naming the migration lock among advisory locks.
const MIGRATION_LOCK: i64 = 0x0063_6f6e_6475_6974;

/// Longest wait for a new connection before 503 (a server that is down
/// refuses at once; this bounds one that does not answer).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a free pooled connection: admissions of one hot key
/// queue on its row lock, so a burst may wait its turn rather than fail.
const POOL_WAIT: Duration = Duration::from_secs(15);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("postgres: {e}"))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Keys, admission state and usage on PostgreSQL, through a connection pool.
pub struct PgStore {
    pool: Pool,
}

/// A key row, as read.
struct KeyRow {
    key: Option<VirtualKey>,
    hash: String,
    limits: KeyLimitState,
}

fn parse_key(record: &str) -> Option<VirtualKey> {
    serde_json::from_str::<Value>(record)
        .ok()
        .as_ref()
        .and_then(VirtualKey::from_storage_json)
}

fn key_row(row: &tokio_postgres::Row) -> KeyRow {
    let state: String = row.get(2);
    KeyRow {
        key: parse_key(row.get::<_, &str>(1)),
        hash: row.get(0),
        limits: serde_json::from_str(&state).unwrap_or_default(),
    }
}

impl PgStore {
    /// Connects (a pool of `pool_size`) and brings the schema up to date.
    pub async fn connect(url: &str, pool_size: usize) -> Result<PgStore, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(err)?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("conduit");
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(err)?;
        let store = PgStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(err)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(err)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS conduit_schema_migrations (
                 version    INTEGER PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(err)?;
        let applied: i32 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM conduit_schema_migrations",
                &[],
            )
            .await
            .map_err(err)?
            .get(0);
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > applied) {
            tx.batch_execute(sql).await.map_err(err)?;
            tx.execute(
                "INSERT INTO conduit_schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await
            .map_err(err)?;
        }
        tx.commit().await.map_err(err)
    }

    async fn read_key(&self, id: &str) -> Result<Option<KeyRow>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT key_hash, record, limit_state FROM conduit_keys WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(err)?;
        Ok(row.as_ref().map(key_row))
    }

    /// The authoritative check of a presented key against its row ([`check_presented`]).
    #[allow(clippy::result_large_err)] // the core's error type, on a cold path
    fn check(row: Option<&KeyRow>, hash: &str) -> Result<VirtualKey, GatewayError> {
        check_presented(row.map(|r| (&r.key, r.hash.as_str())), hash, now_secs())
    }

    /// Runs `step` on the key's limit state under its row lock and writes
    /// the state back; `None` when the key is gone.
    async fn with_locked_state<T>(
        &self,
        id: &str,
        step: impl FnOnce(&mut KeyRow) -> T,
    ) -> Result<Option<T>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(err)?;
        let Some(row) = tx
            .query_opt(
                "SELECT key_hash, record, limit_state FROM conduit_keys WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(err)?
        else {
            return Ok(None);
        };
        let mut row = key_row(&row);
        let out = step(&mut row);
        let state = serde_json::to_string(&row.limits).map_err(err)?;
        tx.execute(
            "UPDATE conduit_keys SET limit_state = $2 WHERE id = $1",
            &[&id, &state],
        )
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(Some(out))
    }
}

fn unavailable(e: impl std::fmt::Display) -> Rejection {
    Rejection {
        error: GatewayError::Store(e.to_string()),
        status: LimitStatus::default(),
    }
}

port! {
    impl Limiter for PgStore {
        async fn admit(&self, key: &VirtualKey, demand: &Demand) -> Result<Admission, Rejection> {
            // Keys without limits or budget: the authoritative read, no lock.
            if key.limits.is_empty() && key.budget.is_none() {
                let row = self.read_key(&key.id).await.map_err(unavailable)?;
                let current = Self::check(row.as_ref(), &demand.key_hash)
                    .map_err(|error| Rejection { error, status: LimitStatus::default() })?;
                if current.limits.is_empty() && current.budget.is_none() {
                    return Ok(Admission { key: Some(current), ..Admission::default() });
                }
                // Limits were set through another server since: admit under the lock.
            }
            let outcome = self
                .with_locked_state(&key.id, |row| {
                    let current = match Self::check(Some(row), &demand.key_hash) {
                        Ok(k) => k,
                        Err(e) => return (Err(e), LimitStatus::default()),
                    };
                    if current.limits.is_empty() && current.budget.is_none() {
                        return (Ok((None, current)), LimitStatus::default());
                    }
                    let now = now_secs();
                    let ask = Ask {
                        now_secs: now,
                        limits: &current.limits,
                        budget: current.budget.as_ref(),
                        tokens: demand.tokens,
                        cost_nanos: demand.cost_nanos,
                        ttl_secs: demand.ttl_secs,
                    };
                    let result = row.limits.admit(&ask);
                    let status = row.limits.status(now, &current.limits, current.budget.as_ref());
                    match result {
                        Ok(reservation) => (Ok((Some(reservation), current)), status),
                        Err(refusal) => (Err(refusal.to_error(current.budget.as_ref())), status),
                    }
                })
                .await
                .map_err(unavailable)?;
            match outcome {
                None => Err(Rejection {
                    error: GatewayError::InvalidApiKey("This API key has been revoked.".into()),
                    status: LimitStatus::default(),
                }),
                Some((Ok((reservation, current)), status)) => Ok(Admission { reservation, status, key: Some(current) }),
                Some((Err(error), status)) => Err(Rejection { error, status }),
            }
        }

        async fn settle(&self, key: &VirtualKey, admission: &Admission, settlement: Settlement) {
            let Some(reservation) = admission.reservation else { return };
            let result = self
                .with_locked_state(&key.id, |row| {
                    let budget = row.key.as_ref().and_then(|k| k.budget.clone());
                    row.limits.settle(now_secs(), budget.as_ref(), reservation.id, settlement.tokens, settlement.cost_nanos);
                })
                .await;
            if let Err(e) = result {
                // The reservation stays and is charged at its estimate when it expires.
                eprintln!("conduit: settlement for key {} failed: {e}", key.id);
                crate::metrics::store_write_failed(1);
            }
        }

        async fn status(&self, key: &VirtualKey) -> Result<LimitStatus, StoreError> {
            let Some(mut row) = self.read_key(&key.id).await? else { return Ok(LimitStatus::default()) };
            let current = row.key.clone().unwrap_or_else(|| key.clone());
            Ok(row.limits.status(now_secs(), &current.limits, current.budget.as_ref()))
        }

        async fn verify(&self, key: &VirtualKey, key_hash: &str) -> Result<Option<VirtualKey>, GatewayError> {
            let row = self.read_key(&key.id).await?;
            Self::check(row.as_ref(), key_hash).map(Some)
        }
    }
}

port! {
    impl KeyStore for PgStore {
        async fn find_by_hash(&self, hash: &str) -> Result<Option<VirtualKey>, StoreError> {
            let client = self.client().await?;
            let row = client
                .query_opt("SELECT record FROM conduit_keys WHERE key_hash = $1", &[&hash])
                .await
                .map_err(err)?;
            Ok(row.and_then(|r| parse_key(r.get::<_, &str>(0))))
        }

        async fn get(&self, id: &str) -> Result<Option<VirtualKey>, StoreError> {
            Ok(self.read_key(id).await?.and_then(|r| r.key))
        }

        async fn list(&self) -> Result<Vec<VirtualKey>, StoreError> {
            let client = self.client().await?;
            let rows = client
                .query("SELECT record FROM conduit_keys ORDER BY created_at, id", &[])
                .await
                .map_err(err)?;
            Ok(rows.iter().filter_map(|r| parse_key(r.get::<_, &str>(0))).collect())
        }

        async fn insert(&self, key: &VirtualKey, hash: &str) -> Result<(), StoreError> {
            let client = self.client().await?;
            client
                .execute(
                    "INSERT INTO conduit_keys (id, key_hash, record, created_at) VALUES ($1, $2, $3, $4)",
                    &[&key.id, &hash, &key.to_storage_json().to_string(), &(key.created_at as i64)],
                )
                .await
                .map_err(err)?;
            Ok(())
        }

        async fn update(&self, key: &VirtualKey) -> Result<bool, StoreError> {
            let client = self.client().await?;
            let n = client
                .execute(
                    "UPDATE conduit_keys SET record = $2 WHERE id = $1",
                    &[&key.id, &key.to_storage_json().to_string()],
                )
                .await
                .map_err(err)?;
            Ok(n > 0)
        }

        async fn set_hash(&self, id: &str, hash: &str) -> Result<bool, StoreError> {
            let client = self.client().await?;
            let n = client
                .execute("UPDATE conduit_keys SET key_hash = $2 WHERE id = $1", &[&id, &hash])
                .await
                .map_err(err)?;
            Ok(n > 0)
        }

        async fn delete(&self, id: &str) -> Result<bool, StoreError> {
            let client = self.client().await?;
            let n = client
                .execute("DELETE FROM conduit_keys WHERE id = $1", &[&id])
                .await
                .map_err(err)?;
            Ok(n > 0)
        }
    }
}

/// A counter as PostgreSQL's BIGINT (saturating: counters never wrap).
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

port! {
    impl UsageStore for PgStore {
        async fn record(&self, record: UsageRecord) {
            let write = async {
                let mut client = self.client().await?;
                let tx = client.transaction().await.map_err(err)?;
                let inserted = tx
                    .execute(
                        "INSERT INTO conduit_usage (request_id, key_id, created_at_ms, model, status, refused, record, trace_id)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (request_id) DO NOTHING",
                        &[&record.request_id, &record.key_id, &big(record.created_at_ms), &record.model,
                          &i32::from(record.status), &record.refused_by.is_some(), &record.to_json().to_string(),
                          &record.trace_id],
                    )
                    .await
                    .map_err(err)?;
                if inserted == 1 {
                    // The summary's counters, in the same transaction: counted once.
                    let row = HourRow::of(&record);
                    let c = &row.counters;
                    tx.execute(
                        "INSERT INTO conduit_usage_hourly AS h (hour, key_id, model, requests, errors, rate_limited,
                             budget_refused, prompt_tokens, completion_tokens, total_tokens, cached_tokens, cost_nanos, unpriced)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                         ON CONFLICT (hour, key_id, model) DO UPDATE SET
                             requests = h.requests + EXCLUDED.requests, errors = h.errors + EXCLUDED.errors,
                             rate_limited = h.rate_limited + EXCLUDED.rate_limited,
                             budget_refused = h.budget_refused + EXCLUDED.budget_refused,
                             prompt_tokens = h.prompt_tokens + EXCLUDED.prompt_tokens,
                             completion_tokens = h.completion_tokens + EXCLUDED.completion_tokens,
                             total_tokens = h.total_tokens + EXCLUDED.total_tokens,
                             cached_tokens = h.cached_tokens + EXCLUDED.cached_tokens,
                             cost_nanos = h.cost_nanos + EXCLUDED.cost_nanos, unpriced = h.unpriced + EXCLUDED.unpriced",
                        &[&big(row.hour), &row.key_id, &row.model, &big(c.requests), &big(c.errors), &big(c.rate_limited),
                          &big(c.budget_refused), &big(c.prompt_tokens), &big(c.completion_tokens), &big(c.total_tokens),
                          &big(c.cached_tokens), &big(c.cost_nanos), &big(c.unpriced)],
                    )
                    .await
                    .map_err(err)?;
                }
                tx.commit().await.map_err(err)
            };
            if let Err(e) = write.await {
                eprintln!("conduit: could not write the usage record of {}: {e}", record.request_id);
                crate::metrics::store_write_failed(1);
            }
        }

        async fn query(&self, query: &UsageQuery) -> Result<Vec<UsageRecord>, StoreError> {
            let (status_kind, status_code): (Option<&str>, Option<i32>) = match query.status {
                None => (None, None),
                Some(StatusFilter::Ok) => (Some("ok"), None),
                Some(StatusFilter::Error) => (Some("error"), None),
                Some(StatusFilter::Refused) => (Some("refused"), None),
                Some(StatusFilter::Code(c)) => (Some("code"), Some(i32::from(c))),
            };
            let (before_ms, before_id) = match &query.before {
                Some((ms, id)) => (Some(big(*ms)), Some(id.clone())),
                None => (None, None),
            };
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT record FROM conduit_usage
                     WHERE ($1::TEXT IS NULL OR key_id = $1) AND ($2::BIGINT IS NULL OR created_at_ms >= $2)
                       AND ($3::BIGINT IS NULL OR created_at_ms < $3)
                       AND ($4::BIGINT IS NULL OR (created_at_ms, request_id) < ($4, $5::TEXT))
                       AND ($6::TEXT IS NULL OR model = $6)
                       AND ($7::TEXT IS NULL
                            OR ($7 = 'ok' AND status < 400)
                            OR ($7 = 'error' AND status >= 400 AND NOT refused)
                            OR ($7 = 'refused' AND refused)
                            OR ($7 = 'code' AND status = $8::INTEGER))
                     ORDER BY created_at_ms DESC, request_id DESC LIMIT $9",
                    &[&query.key_id, &query.since_ms.map(big), &query.until_ms.map(big), &before_ms, &before_id,
                      &query.model, &status_kind, &status_code, &big(query.limit as u64)],
                )
                .await
                .map_err(err)?;
            Ok(rows
                .iter()
                .filter_map(|r| serde_json::from_str::<Value>(r.get::<_, &str>(0)).ok())
                .filter_map(|v| UsageRecord::from_json(&v))
                .collect())
        }

        async fn hours(&self, query: &SummaryQuery) -> Result<Vec<HourRow>, StoreError> {
            // Hour rows whatever the bucket: the core folds them into days.
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT hour, key_id, model, requests, errors, rate_limited, budget_refused, prompt_tokens,
                            completion_tokens, total_tokens, cached_tokens, cost_nanos, unpriced
                     FROM conduit_usage_hourly
                     WHERE hour >= $1 AND hour < $2 AND ($3::TEXT IS NULL OR key_id = $3) AND ($4::TEXT IS NULL OR model = $4)",
                    &[&big(query.since), &big(query.until), &query.key_id, &query.model],
                )
                .await
                .map_err(err)?;
            Ok(rows
                .iter()
                .map(|r| {
                    let n = |i: usize| r.get::<_, i64>(i).max(0) as u64;
                    HourRow {
                        hour: n(0),
                        key_id: r.get(1),
                        model: r.get(2),
                        counters: Counters {
                            requests: n(3),
                            errors: n(4),
                            rate_limited: n(5),
                            budget_refused: n(6),
                            prompt_tokens: n(7),
                            completion_tokens: n(8),
                            total_tokens: n(9),
                            cached_tokens: n(10),
                            cost_nanos: n(11),
                            unpriced: n(12),
                        },
                    }
                })
                .collect())
        }

        async fn last_used(&self, key_ids: &[String]) -> Result<Vec<Option<u64>>, StoreError> {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT key_id, MAX(created_at_ms) FROM conduit_usage WHERE key_id = ANY($1) GROUP BY key_id",
                    &[&key_ids],
                )
                .await
                .map_err(err)?;
            let last: std::collections::HashMap<String, i64> =
                rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            Ok(key_ids.iter().map(|id| last.get(id).map(|ms| (*ms).max(0) as u64)).collect())
        }
    }
}
