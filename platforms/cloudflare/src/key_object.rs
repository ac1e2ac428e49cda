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
//! | `POST /admit`      | `{hash, fallback, demand}` → `{admission}`, `{rejection}` or `{unauthorized}` |
//! | `POST /verify`     | `{hash, fallback}` → `{ok}` or `{unauthorized}`                 |
//! | `POST /settle`     | `{reservation, tokens, cost_nanos}`                              |
//! | `GET /status`      | the key's [`LimitStatus`]                                       |
//! | `POST /usage`      | a usage record                                                  |
//! | `GET /usage?since=&until=` | `{data: [records]}` (Unix ms)                          |

use std::cell::RefCell;

use conduit::keys::VirtualKey;
use conduit::limits::{Ask, KeyLimitState, LimitStatus, Reservation};
use serde::Deserialize;
use serde_json::{json, Value};
use worker::{
    durable_object, DurableObject, Env, Method, Request, Response, Result, SqlStorage, State,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS usage (request_id TEXT PRIMARY KEY, created_at_ms INTEGER NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS usage_by_time ON usage (created_at_ms);
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

fn now_secs() -> u64 {
    worker::Date::now().as_millis() / 1000
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
        let now = now_secs();
        let (answer, dirty) = self.with(|loaded| {
            if let Err(msg) = Self::check(loaded, &input.hash, &input.fallback) {
                return (json!({ "unauthorized": msg }), false);
            }
            let Some(key) = loaded.record.clone() else {
                return (json!({ "unauthorized": "Incorrect API key provided." }), false);
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
            let result = loaded.limits.admit(&ask);
            let status = loaded.limits.status(now, &key.limits, key.budget.as_ref());
            match result {
                Ok(r) => (json!({ "admission": { "reservation": r, "status": status }, "key": record }), true),
                Err(refusal) => (json!({ "rejection": { "refusal": refusal, "status": status } }), true),
            }
        })?;
        if dirty {
            self.with(|l| l.limits.clone())
                .and_then(|s| self.save_limits(&s))?;
        }
        Ok(answer)
    }
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
                self.with(|l| {
                    l.record = VirtualKey::from_storage_json(&record);
                    l.hash = hash.clone();
                    l.revoked = false;
                })?;
                self.set_meta("record", &record.to_string())?;
                if let Some(h) = &hash {
                    self.set_meta("hash", h)?;
                }
                self.set_meta("revoked", "0")?;
                Response::from_json(&json!({ "ok": true }))
            }
            (Method::Delete, "/key") => {
                self.with(|l| l.revoked = true)?;
                self.set_meta("revoked", "1")?;
                Response::from_json(&json!({ "ok": true }))
            }
            (Method::Post, "/admit") | (Method::Post, "/verify") => {
                let input: AdmitIn = req.json().await?;
                Response::from_json(&self.admit(input)?)
            }
            (Method::Post, "/settle") => {
                let input: SettleIn = req.json().await?;
                let now = now_secs();
                let state = self.with(|l| {
                    let budget = l.record.as_ref().and_then(|k| k.budget.clone());
                    l.limits.settle(
                        now,
                        budget.as_ref(),
                        input.reservation.id,
                        input.tokens,
                        input.cost_nanos,
                    );
                    l.limits.clone()
                })?;
                self.save_limits(&state)?;
                Response::from_json(&json!({ "ok": true }))
            }
            (Method::Get, "/status") => {
                let now = now_secs();
                let status = self.with(|l| Self::status_of(l, now))?;
                Response::from_json(&status)
            }
            (Method::Post, "/usage") => {
                let record: Value = req.json().await?;
                self.with(|_| ())?;
                let id = record
                    .get("request_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let at = record
                    .get("created_at_ms")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                self.sql().exec(
                    "INSERT OR REPLACE INTO usage (request_id, created_at_ms, record) VALUES (?, ?, ?)",
                    vec![id.into(), at.into(), record.to_string().into()],
                )?;
                Response::from_json(&json!({ "ok": true }))
            }
            (Method::Get, "/usage") => {
                self.with(|_| ())?;
                let url = req.url()?;
                let param = |name: &str| {
                    url.query_pairs()
                        .find(|(k, _)| k == name)
                        .and_then(|(_, v)| v.parse::<i64>().ok())
                };
                let since = param("since").unwrap_or(0);
                let until = param("until").unwrap_or(9_007_199_254_740_991);
                let rows: Vec<UsageRow> = self
                    .sql()
                    .exec(
                        "SELECT record FROM usage WHERE created_at_ms >= ? AND created_at_ms < ? ORDER BY created_at_ms",
                        vec![since.into(), until.into()],
                    )?
                    .to_array()?;
                let data: Vec<Value> = rows
                    .into_iter()
                    .filter_map(|r| serde_json::from_str(&r.record).ok())
                    .collect();
                Response::from_json(&json!({ "data": data }))
            }
            _ => Response::error("not found", 404),
        }
    }
}
