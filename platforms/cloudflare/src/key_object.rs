//! `KeyObject`: one Durable Object per virtual key (SQLite-backed).
//!
//! It is the authority for its key: the current record and secret hash
//! (written by the admin API, so a revocation or rotation takes effect at
//! once although KV is eventually consistent), the admission state (the
//! core's [`KeyLimitState`], so the semantics are the server's, exactly),
//! and the key's usage records. Every step below runs on the object's
//! synchronous SQLite API without awaiting in between, so each request's
//! admission is atomic.
//!
//! | request            | body / answer                                                   |
//! |--------------------|-----------------------------------------------------------------|
//! | `PUT /key`         | `{record, hash}`: the key as the admin API last wrote it        |
//! | `DELETE /key`      | the key is revoked                                              |
//! | `POST /admit`      | `{hash, fallback, demand, rate?, carry?}` → `{admission, lease?}`, `{rejection}` or `{unauthorized}` |
//! | `POST /verify`     | `{hash, fallback}` → `{ok}` or `{unauthorized}`                 |
//! | `POST /settle`     | `{reservation, tokens, cost_nanos}`, or `{carry}`               |
//!
//! **Leases** ([`conduit::metering::limits::lease`]): an `/admit` that
//! gives the isolate's observed `rate` may be answered with a lease (the
//! reservation of several requests, its terms); the isolate spends it
//! locally. A `carry` (returned leases, settled leased requests) is taken
//! back first, on `/admit` or `/settle`.
//! | `GET /status`      | the key's [`LimitStatus`]                                       |
//! | `POST /usage`      | `[records]` (or one record): each stored once (by request id) and added to its hour's counters, in one transaction |
//! | `POST /usage/query`| a [`UsageQuery`] → `{data: [records]}`: one page, newest first  |
//! | `POST /usage/hours`| a [`SummaryQuery`] → `{data: [hour rows]}`                       |
//! | `GET /usage/last`  | `{last_used_ms}`: when the key last made a request              |

use std::cell::RefCell;
use std::collections::HashMap;

use conduit::keys::VirtualKey;
use conduit::metering::limits::lease::{lease_terms, Carry};
use conduit::metering::limits::{Ask, KeyLimitState, LimitStatus, Reservation};
use conduit::metering::summary::{Counters, HourRow, SummaryQuery};
use conduit::metering::usage::{StatusFilter, UsageQuery, UsageRecord};
use serde::Deserialize;
use serde_json::{json, Value};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use worker::{
    durable_object, DurableObject, Env, Method, Request, Response, Result, SqlStorage, State,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS usage (request_id TEXT PRIMARY KEY, created_at_ms INTEGER NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS usage_by_time ON usage (created_at_ms);
CREATE INDEX IF NOT EXISTS usage_page ON usage (created_at_ms, request_id);
CREATE TABLE IF NOT EXISTS usage_hourly (hour INTEGER NOT NULL, model TEXT NOT NULL, counters TEXT NOT NULL, PRIMARY KEY (hour, model));
";

/// What the object remembers about its key, loaded once per activation.
#[derive(Default)]
struct Loaded {
    record: Option<VirtualKey>,
    hash: Option<String>,
    revoked: bool,
    limits: KeyLimitState,
}

#[durable_object]
pub struct KeyObject {
    state: State,
    loaded: RefCell<Option<Loaded>>,
}

#[derive(Deserialize)]
struct DemandIn {
    tokens: u64,
    cost_nanos: u64,
    ttl_secs: u64,
}

#[derive(Deserialize)]
struct AdmitIn {
    hash: String,
    fallback: Value,
    demand: Option<DemandIn>,
    /// The isolate's observed rate for this key (it may take a lease).
    #[serde(default)]
    rate: Option<u64>,
    /// What the isolate carries back.
    #[serde(default)]
    carry: Option<Carry>,
}

#[derive(Deserialize)]
struct SettleIn {
    reservation: Reservation,
    tokens: u64,
    cost_nanos: u64,
}

#[derive(Deserialize)]
struct Row {
    v: String,
}

#[derive(Deserialize)]
struct UsageRow {
    record: String,
}

#[derive(Deserialize)]
struct HourlyRow {
    hour: i64,
    model: String,
    counters: String,
}

#[derive(Deserialize)]
struct LastRow {
    last: Option<i64>,
}

fn now_secs() -> u64 {
    worker::Date::now().as_millis() / 1000
}

fn now_ms() -> u64 {
    worker::Date::now().as_millis()
}

impl KeyObject {
    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    fn meta(&self, k: &str) -> Result<Option<String>> {
        let rows: Vec<Row> = self
            .sql()
            .exec("SELECT v FROM meta WHERE k = ?", vec![k.into()])?
            .to_array()?;
        Ok(rows.into_iter().next().map(|r| r.v))
    }

    fn set_meta(&self, k: &str, v: &str) -> Result<()> {
        self.sql().exec(
            "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            vec![k.into(), v.into()],
        )?;
        Ok(())
    }

    /// Runs `f` on the loaded state (loading it on first use).
    fn with<T>(&self, f: impl FnOnce(&mut Loaded) -> T) -> Result<T> {
        let mut slot = self.loaded.borrow_mut();
        if slot.is_none() {
            self.sql().exec(SCHEMA, None)?;
            let record = self
                .meta("record")?
                .and_then(|s| serde_json::from_str::<Value>(&s).ok())
                .and_then(|v| VirtualKey::from_storage_json(&v));
            let limits = self
                .meta("limits")?
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or_default();
            *slot = Some(Loaded {
                record,
                hash: self.meta("hash")?,
                revoked: self.meta("revoked")?.is_some_and(|v| v == "1"),
                limits,
            });
        }
        match slot.as_mut() {
            Some(loaded) => Ok(f(loaded)),
            None => Err(worker::Error::RustError("state not loaded".into())),
        }
    }

    /// The outcome of a storage write. One that failed leaves memory ahead
    /// of storage: memory is forgotten, and the next request reloads what
    /// storage holds (the object answers the error, the Worker a 503).
    fn persisted(&self, written: Result<()>) -> Result<()> {
        if written.is_err() {
            self.loaded.replace(None);
        }
        written
    }

    fn save_limits(&self, state: &KeyLimitState) -> Result<()> {
        self.set_meta("limits", &serde_json::to_string(state)?)
    }

    /// The authoritative check of a presented key: revoked, rotated,
    /// disabled or expired keys are refused here whatever KV still says.
    fn check(loaded: &mut Loaded, hash: &str, fallback: &Value) -> std::result::Result<(), String> {
        if loaded.revoked {
            return Err("This API key has been revoked.".into());
        }
        if loaded.record.is_none() {
            // First sight of a key whose admin write did not reach us: adopt KV's view.
            loaded.record = VirtualKey::from_storage_json(fallback);
            loaded.hash = Some(hash.to_owned());
        }
        if loaded.hash.as_deref().is_some_and(|h| h != hash) {
            return Err("Incorrect API key provided.".into());
        }
        match &loaded.record {
            Some(k) => k.check_usable(now_secs()).map_err(|e| e.message()),
            None => Err("Incorrect API key provided.".into()),
        }
    }

    fn status_of(loaded: &mut Loaded, now: u64) -> LimitStatus {
        match &loaded.record {
            Some(k) => loaded.limits.status(now, &k.limits, k.budget.as_ref()),
            None => LimitStatus::default(),
        }
    }

    fn admit(&self, input: AdmitIn) -> Result<Value> {
        let now_ms = now_ms();
        let now = now_ms / 1_000;
        let (answer, dirty) = self.with(|loaded| {
            let carried = match &input.carry {
                Some(carry) if !carry.is_empty() => {
                    let budget = loaded.record.as_ref().and_then(|k| k.budget.clone());
                    loaded.limits.take_back(now, budget.as_ref(), carry);
                    true
                }
                _ => false,
            };
            let (answer, dirty) = Self::decide(loaded, &input, now_ms);
            (answer, dirty || carried)
        })?;
        if dirty {
            // Not saved, not admitted: the error answers 503 and memory goes back to
            // what storage holds, so no reservation outlives the refused request.
            let state = self.with(|l| l.limits.clone())?;
            self.persisted(self.save_limits(&state))?;
        }
        Ok(answer)
    }

    /// The answer to an `/admit` or `/verify`, and whether the state changed.
    fn decide(loaded: &mut Loaded, input: &AdmitIn, now_ms: u64) -> (Value, bool) {
        let now = now_ms / 1_000;
        if let Err(msg) = Self::check(loaded, &input.hash, &input.fallback) {
            return (json!({ "unauthorized": msg }), false);
        }
        let Some(key) = loaded.record.clone() else {
            return (
                json!({ "unauthorized": "Incorrect API key provided." }),
                false,
            );
        };
        // The authoritative record goes back with every answer.
        let record = key.to_storage_json();
        let Some(demand) = &input.demand else {
            return (json!({ "ok": true, "key": record }), false);
        };
        if key.limits.is_empty() && key.budget.is_none() {
            return (
                json!({ "admission": { "reservation": null, "status": LimitStatus::default() }, "key": record }),
                false,
            );
        }
        let ask = Ask {
            now_secs: now,
            limits: &key.limits,
            budget: key.budget.as_ref(),
            tokens: demand.tokens,
            cost_nanos: demand.cost_nanos,
            ttl_secs: demand.ttl_secs,
        };
        // A lease when the rule allows one (the key well below its limits).
        if let Some(rate) = input.rate {
            let before = loaded.limits.status(now, &key.limits, key.budget.as_ref());
            let terms = lease_terms(
                now_ms,
                now,
                &key.limits,
                key.budget.as_ref(),
                &before,
                demand.tokens,
                demand.cost_nanos,
                rate,
            );
            if let Some(terms) = terms {
                if let Ok(r) = loaded.limits.grant_lease(&ask, &terms) {
                    let status = loaded.limits.status(now, &key.limits, key.budget.as_ref());
                    return (
                        json!({ "admission": { "reservation": r, "status": status }, "lease": terms, "key": record }),
                        true,
                    );
                }
            }
        }
        let result = loaded.limits.admit(&ask);
        let status = loaded.limits.status(now, &key.limits, key.budget.as_ref());
        match result {
            Ok(r) => (
                json!({ "admission": { "reservation": r, "status": status }, "key": record }),
                true,
            ),
            Err(refusal) => (
                json!({ "rejection": { "refusal": refusal, "status": status } }),
                true,
            ),
        }
    }
}

impl KeyObject {
    /// Settles reservations, then saves the state once.
    fn settle(&self, items: &[SettleIn]) -> Result<()> {
        let now = now_secs();
        let state = self.with(|l| {
            let budget = l.record.as_ref().and_then(|k| k.budget.clone());
            for input in items {
                l.limits.settle(
                    now,
                    budget.as_ref(),
                    input.reservation.id,
                    input.tokens,
                    input.cost_nanos,
                );
            }
            l.limits.clone()
        })?;
        self.persisted(self.save_limits(&state))
    }

    /// Takes back what an isolate carried (returned leases, settled
    /// leased requests), then saves the state once.
    fn take_back(&self, carry: &Carry) -> Result<()> {
        let now = now_secs();
        let state = self.with(|l| {
            let budget = l.record.as_ref().and_then(|k| k.budget.clone());
            l.limits.take_back(now, budget.as_ref(), carry);
            l.limits.clone()
        })?;
        self.persisted(self.save_limits(&state))
    }

    /// Stores usage records (each once, by request id) and adds the new
    /// ones to their hours' counters, all in one storage transaction (one
    /// counter write per hour and model, however many records); returns
    /// how many of `records` were usage records (the others are skipped).
    fn insert_usage(&self, records: &[Value]) -> Result<usize> {
        self.with(|_| ())?;
        let parsed: Vec<(UsageRecord, String)> = records
            .iter()
            .filter_map(|v| Some((UsageRecord::from_json(v)?, v.to_string())))
            .collect();
        let valid = parsed.len();
        if valid == 0 {
            return Ok(0);
        }
        let sql = self.sql();
        self.transaction(move || write_usage(&sql, &parsed))?;
        Ok(valid)
    }

    /// Runs `write` in `storage.transactionSync`: all of it is committed, or
    /// (it failed) none of it.
    fn transaction(&self, write: impl FnOnce() -> Result<()> + 'static) -> Result<()> {
        let storage = self.state.storage();
        let storage: JsValue = AsRef::<JsValue>::as_ref(storage.as_raw()).clone();
        let run = js_sys::Reflect::get(&storage, &JsValue::from_str("transactionSync"))?
            .dyn_into::<js_sys::Function>()
            .map_err(|_| worker::Error::RustError("no transactionSync".into()))?;
        let body = Closure::once(move || -> std::result::Result<JsValue, JsValue> {
            write()
                .map(|()| JsValue::UNDEFINED)
                .map_err(|e| JsValue::from_str(&e.to_string()))
        });
        run.call1(&storage, body.as_ref())
            .map(|_| ())
            .map_err(worker::Error::from)
    }

    /// One page of this key's records, newest first.
    fn page(&self, q: &UsageQuery) -> Result<Vec<Value>> {
        let (kind, code) = match q.status {
            None => ("", 0i64),
            Some(StatusFilter::Ok) => ("ok", 0),
            Some(StatusFilter::Error) => ("error", 0),
            Some(StatusFilter::Refused) => ("refused", 0),
            Some(StatusFilter::Code(c)) => ("code", i64::from(c)),
        };
        let (before_ms, before_id) = match &q.before {
            Some((ms, id)) => (*ms as i64, id.clone()),
            None => (9_007_199_254_740_991, String::new()),
        };
        let rows: Vec<UsageRow> = self
            .sql()
            .exec(
                "SELECT record FROM usage
                 WHERE created_at_ms >= ? AND created_at_ms < ?
                   AND (created_at_ms < ? OR (created_at_ms = ? AND request_id < ?))
                   AND (? = '' OR json_extract(record, '$.model') = ?)
                   AND (? = ''
                        OR (? = 'ok' AND json_extract(record, '$.status') < 400)
                        OR (? = 'error' AND json_extract(record, '$.status') >= 400 AND json_extract(record, '$.refused_by') IS NULL)
                        OR (? = 'refused' AND json_extract(record, '$.refused_by') IS NOT NULL)
                        OR (? = 'code' AND json_extract(record, '$.status') = ?))
                 ORDER BY created_at_ms DESC, request_id DESC LIMIT ?",
                vec![
                    (q.since_ms.unwrap_or(0) as i64).into(),
                    (q.until_ms.map_or(9_007_199_254_740_991, |u| u as i64)).into(),
                    before_ms.into(),
                    before_ms.into(),
                    if q.before.is_some() { before_id.into() } else { "\u{10ffff}".into() },
                    q.model.clone().unwrap_or_default().into(),
                    q.model.clone().unwrap_or_default().into(),
                    kind.into(),
                    kind.into(),
                    kind.into(),
                    kind.into(),
                    kind.into(),
                    code.into(),
                    (q.limit as i64).into(),
                ],
            )?
            .to_array()?;
        Ok(rows
            .into_iter()
            .filter_map(|r| serde_json::from_str(&r.record).ok())
            .collect())
    }
}

/// A batch's writes: each record once (by request id), then one read and
/// one write of each hour's counters for the records that were new (the
/// object is single-threaded: nothing interleaves).
fn write_usage(sql: &SqlStorage, records: &[(UsageRecord, String)]) -> Result<()> {
    let mut hours: HashMap<(u64, String), Counters> = HashMap::new();
    for (parsed, text) in records {
        let inserted = sql
            .exec(
                "INSERT OR IGNORE INTO usage (request_id, created_at_ms, record) VALUES (?, ?, ?)",
                vec![
                    parsed.request_id.clone().into(),
                    (parsed.created_at_ms as i64).into(),
                    text.clone().into(),
                ],
            )?
            .rows_written();
        if inserted > 0 {
            let row = HourRow::of(parsed);
            hours
                .entry((row.hour, row.model))
                .or_default()
                .add(&row.counters);
        }
    }
    for ((hour, model), added) in hours {
        let current: Vec<HourlyRow> = sql
            .exec(
                "SELECT hour, model, counters FROM usage_hourly WHERE hour = ? AND model = ?",
                vec![(hour as i64).into(), model.clone().into()],
            )?
            .to_array()?;
        let mut counters: Counters = current
            .first()
            .and_then(|c| serde_json::from_str(&c.counters).ok())
            .unwrap_or_default();
        counters.add(&added);
        sql.exec(
            "INSERT INTO usage_hourly (hour, model, counters) VALUES (?, ?, ?)
             ON CONFLICT (hour, model) DO UPDATE SET counters = excluded.counters",
            vec![
                (hour as i64).into(),
                model.into(),
                serde_json::to_string(&counters)?.into(),
            ],
        )?;
    }
    Ok(())
}

impl DurableObject for KeyObject {
    fn new(state: State, _env: Env) -> Self {
        KeyObject {
            state,
            loaded: RefCell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let path = req.path();
        match (req.method(), path.as_str()) {
            (Method::Put, "/key") => {
                let body: Value = req.json().await?;
                let record = body.get("record").cloned().unwrap_or(Value::Null);
                let hash = body.get("hash").and_then(Value::as_str).map(str::to_owned);
                // Storage first, memory after: a write that throws (say, a record over
                // the object's SQLite row limit) refuses the admin write and leaves the
                // key as it was, in storage and in memory alike.
                self.with(|_| ())?;
                self.persisted((|| {
                    self.set_meta("record", &record.to_string())?;
                    if let Some(h) = &hash {
                        self.set_meta("hash", h)?;
                    }
                    self.set_meta("revoked", "0")
                })())?;
                self.with(|l| {
                    l.record = VirtualKey::from_storage_json(&record);
                    l.hash = hash.clone();
                    l.revoked = false;
                })?;
                Response::from_json(&json!({ "ok": true }))
            }
            (Method::Delete, "/key") => {
                self.with(|_| ())?;
                self.persisted(self.set_meta("revoked", "1"))?;
                self.with(|l| l.revoked = true)?;
                Response::from_json(&json!({ "ok": true }))
            }
            (Method::Post, "/admit") | (Method::Post, "/verify") => {
                let input: AdmitIn = req.json().await?;
                Response::from_json(&self.admit(input)?)
            }
            (Method::Post, "/settle") => {
                let body: Value = req.json().await?;
                match body.get("carry") {
                    Some(carry) => {
                        let carry: Carry = serde_json::from_value(carry.clone())?;
                        self.take_back(&carry)?;
                    }
                    None => self.settle(&[serde_json::from_value::<SettleIn>(body)?])?,
                }
                Response::from_json(&json!({ "ok": true }))
            }
            (Method::Get, "/status") => {
                let now = now_secs();
                let status = self.with(|l| Self::status_of(l, now))?;
                Response::from_json(&status)
            }
            (Method::Post, "/usage") => {
                // A batch (an array), or one record (an isolate of an older version).
                let body: Value = req.json().await?;
                let stored = match &body {
                    Value::Array(records) => self.insert_usage(records)?,
                    record => self.insert_usage(std::slice::from_ref(record))?,
                };
                if stored == 0 {
                    return Response::error("not a usage record", 400);
                }
                Response::from_json(&json!({ "ok": true, "records": stored }))
            }
            (Method::Post, "/usage/query") => {
                let q: UsageQuery = req.json().await?;
                self.with(|_| ())?;
                Response::from_json(&json!({ "data": self.page(&q)? }))
            }
            (Method::Post, "/usage/hours") => {
                let q: SummaryQuery = req.json().await?;
                self.with(|_| ())?;
                let rows: Vec<HourlyRow> = self
                    .sql()
                    .exec(
                        "SELECT hour, model, counters FROM usage_hourly WHERE hour >= ? AND hour < ?",
                        vec![(q.since as i64).into(), (q.until as i64).into()],
                    )?
                    .to_array()?;
                let data: Vec<HourRow> = rows
                    .into_iter()
                    .map(|r| HourRow {
                        hour: r.hour.max(0) as u64,
                        key_id: q.key_id.clone().unwrap_or_default(),
                        model: r.model,
                        counters: serde_json::from_str(&r.counters).unwrap_or_default(),
                    })
                    .filter(|r| q.model.as_ref().is_none_or(|m| *m == r.model))
                    .collect();
                Response::from_json(&json!({ "data": data }))
            }
            (Method::Get, "/usage/last") => {
                self.with(|_| ())?;
                let rows: Vec<LastRow> = self
                    .sql()
                    .exec("SELECT MAX(created_at_ms) AS last FROM usage", None)?
                    .to_array()?;
                let last = rows.into_iter().next().and_then(|r| r.last);
                Response::from_json(&json!({ "last_used_ms": last }))
            }
            _ => Response::error("not found", 404),
        }
    }
}
