//! The core's ports on Workers: KV for keys, the key's Durable Object for
//! admission, settlement and usage, `fetch` upstream, `Date.now()` and
//! `ctx.wait_until`.
//!
//! Usage records go to the key's Durable Object in batches, per isolate
//! and key ([`ObjectUsageStore`]): the request that opens a batch owns its
//! flush, in its own `ctx.wait_until`. Settlements of requests the Durable
//! Object admitted go one call each. (A request must never await a call
//! another request started: workerd cancels such requests as hung, because
//! the Rust futures of all requests share one executor; see the README.)
//!
//! **Leases** ([`conduit::metering::limits::lease`]): the isolate holds a
//! lease per hot key and admits from it without a call. Settlements of
//! leased requests go into the lease or into the isolate's carry, which a
//! later call of some request takes along (an `/admit`), or which the
//! settling request itself delivers in its own `wait_until` once due. The
//! book of leases is plain memory, locked only between awaits: no
//! request ever awaits a future another request started.
//!
//! **Round trips** are counted by kind ([`Trip`]); with the var
//! `CONDUIT_COUNT_TRIPS = "1"` the Worker logs them after each request
//! (`bench/worker.sh` reads the line).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use conduit::compat::BoxFuture;
use conduit::keys::VirtualKey;
use conduit::metering::limits::lease::{book_of, Carry, Lease, LeaseBook, LeaseTerms};
use conduit::metering::limits::{LimitStatus, Refusal, Rejection};
use conduit::metering::summary::{HourRow, SummaryQuery};
use conduit::metering::usage::{UsageQuery, UsageRecord};
use conduit::metering::usage_batch::{BatchRule, Pushed, UsageBatches};
use conduit::port;
use conduit::ports::{
    Admission, ByteStream, Clock, Demand, KeyStore, Limiter, Settlement, Spawner, StoreError,
    Upstream, UpstreamError, UsageStore,
};
use conduit::GatewayError;
use futures_util::StreamExt;
use serde_json::{json, Value};
use wasm_bindgen::JsCast;
use worker::{Context, Env, Fetch, Headers, Method, Request, RequestInit};

/// The KV namespace binding that holds the keys.
pub const KEYS_BINDING: &str = "KEYS";
/// The Durable Object namespace binding of [`crate::KeyObject`].
pub const OBJECT_BINDING: &str = "KEY_OBJECT";

fn store_err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// Kinds of store round trip, as counted.
#[derive(Debug, Clone, Copy)]
pub enum Trip {
    /// A KV read (a key by hash, by id, a listing page).
    Kv,
    /// A Durable Object call before the upstream call (admission, verification).
    Admit,
    /// A Durable Object call carrying settlements.
    Settle,
    /// A Durable Object call carrying usage records.
    Usage,
    /// Any other Durable Object call (admin, status, queries).
    Other,
}

static TRIPS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

fn count(kind: Trip) {
    TRIPS[kind as usize].fetch_add(1, Ordering::Relaxed);
}

/// This isolate's round trips so far, by kind.
pub fn trips_json() -> Value {
    let n = |k: Trip| TRIPS[k as usize].load(Ordering::Relaxed);
    json!({
        "kv_read": n(Trip::Kv),
        "admit": n(Trip::Admit),
        "settle": n(Trip::Settle),
        "usage": n(Trip::Usage),
        "other": n(Trip::Other),
    })
}

fn kind_of(path: &str) -> Trip {
    match path {
        "/admit" | "/verify" => Trip::Admit,
        "/settle" => Trip::Settle,
        "/usage" => Trip::Usage,
        _ => Trip::Other,
    }
}

/// A JSON call to a key's Durable Object.
async fn call_object(
    env: &Env,
    key_id: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> worker::Result<Value> {
    let stub = env
        .durable_object(OBJECT_BINDING)?
        .id_from_name(key_id)?
        .get_stub()?;
    let mut init = RequestInit::new();
    init.with_method(method);
    if let Some(b) = body {
        let headers = Headers::new();
        headers.set("content-type", "application/json")?;
        init.with_headers(headers);
        init.with_body(Some(wasm_bindgen::JsValue::from_str(&b.to_string())));
    }
    count(kind_of(path));
    let req = Request::new_with_init(&format!("https://key-object{path}"), &init)?;
    let mut resp = stub.fetch_with_request(req).await?;
    if resp.status_code() >= 400 {
        return Err(worker::Error::RustError(format!(
            "key object answered {}",
            resp.status_code()
        )));
    }
    resp.json().await
}

/// Keys in KV: `key:{id}` → `{record, hash}`, `hash:{sha256}` → id. Every
/// write also goes to the key's Durable Object, the authority on whether
/// a presented key may be used.
pub struct KvKeyStore {
    pub env: Env,
}

impl KvKeyStore {
    fn kv(&self) -> Result<worker::kv::KvStore, StoreError> {
        self.env.kv(KEYS_BINDING).map_err(store_err)
    }

    async fn entry(&self, id: &str) -> Result<Option<(VirtualKey, String)>, StoreError> {
        count(Trip::Kv);
        let v: Option<Value> = self
            .kv()?
            .get(&format!("key:{id}"))
            .json()
            .await
            .map_err(store_err)?;
        Ok(v.and_then(|v| {
            let key = VirtualKey::from_storage_json(v.get("record")?)?;
            Some((key, v.get("hash")?.as_str()?.to_owned()))
        }))
    }

    async fn write(&self, key: &VirtualKey, hash: &str) -> Result<(), StoreError> {
        let record = key.to_storage_json();
        let entry = json!({ "record": record, "hash": hash });
        // The authority first: when the object refuses (it threw), KV is not
        // touched and the admin write is a 503 that changed nothing.
        call_object(&self.env, &key.id, Method::Put, "/key", Some(&entry))
            .await
            .map_err(store_err)?;
        self.kv()?
            .put(&format!("key:{}", key.id), entry.to_string())
            .map_err(store_err)?
            .execute()
            .await
            .map_err(store_err)?;
        self.kv()?
            .put(&format!("hash:{hash}"), key.id.clone())
            .map_err(store_err)?
            .execute()
            .await
            .map_err(store_err)?;
        Ok(())
    }
}

port! {
    impl KeyStore for KvKeyStore {
        async fn find_by_hash(&self, hash: &str) -> Result<Option<VirtualKey>, StoreError> {
            count(Trip::Kv);
            let Some(id) = self.kv()?.get(&format!("hash:{hash}")).text().await.map_err(store_err)? else {
                return Ok(None);
            };
            // A stale pointer (the key was rotated) does not match the entry's hash.
            Ok(self.entry(&id).await?.filter(|(_, h)| h == hash).map(|(k, _)| k))
        }

        async fn get(&self, id: &str) -> Result<Option<VirtualKey>, StoreError> {
            Ok(self.entry(id).await?.map(|(k, _)| k))
        }

        async fn list(&self) -> Result<Vec<VirtualKey>, StoreError> {
            let mut keys = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut list = self.kv()?.list().prefix("key:".into());
                if let Some(c) = cursor.take() {
                    list = list.cursor(c);
                }
                let page = list.execute().await.map_err(store_err)?;
                for k in &page.keys {
                    if let Some((key, _)) = self.entry(k.name.trim_start_matches("key:")).await? {
                        keys.push(key);
                    }
                }
                match page.cursor {
                    Some(c) if !page.list_complete => cursor = Some(c),
                    _ => break,
                }
            }
            keys.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            Ok(keys)
        }

        async fn insert(&self, key: &VirtualKey, hash: &str) -> Result<(), StoreError> {
            self.write(key, hash).await
        }

        async fn update(&self, key: &VirtualKey) -> Result<bool, StoreError> {
            let Some((_, hash)) = self.entry(&key.id).await? else { return Ok(false) };
            self.write(key, &hash).await?;
            Ok(true)
        }

        async fn set_hash(&self, id: &str, hash: &str) -> Result<bool, StoreError> {
            let Some((key, old)) = self.entry(id).await? else { return Ok(false) };
            self.write(&key, hash).await?;
            self.kv()?.delete(&format!("hash:{old}")).await.map_err(store_err)?;
            Ok(true)
        }

        async fn delete(&self, id: &str) -> Result<bool, StoreError> {
            let Some((_, hash)) = self.entry(id).await? else { return Ok(false) };
            // Revoke at the authority first: from here on the key is refused.
            call_object(&self.env, id, Method::Delete, "/key", None).await.map_err(store_err)?;
            let kv = self.kv()?;
            kv.delete(&format!("key:{id}")).await.map_err(store_err)?;
            kv.delete(&format!("hash:{hash}")).await.map_err(store_err)?;
            Ok(true)
        }
    }
}

/// Admission in the key's Durable Object.
pub struct ObjectLimiter {
    pub env: Env,
    /// Whether the isolate leases its hot keys' capacity (`revocation_delay_ms > 0`).
    pub leasing: bool,
    /// The isolate's leases and carries, by key id.
    pub books: std::sync::Mutex<std::collections::HashMap<String, LeaseBook>>,
}

impl ObjectLimiter {
    pub fn new(env: Env, leasing: bool) -> ObjectLimiter {
        ObjectLimiter {
            env,
            leasing,
            books: std::sync::Mutex::default(),
        }
    }

    fn books(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, LeaseBook>> {
        self.books.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives an undelivered carry back to the key's book.
    fn keep(&self, key_id: &str, carry: Carry) {
        if !carry.is_empty() {
            book_of(&mut self.books(), key_id).carry.absorb(carry);
        }
    }
}

fn now_ms() -> u64 {
    worker::Date::now().as_millis()
}

fn unavailable(e: impl std::fmt::Display) -> Rejection {
    Rejection {
        error: GatewayError::Store(format!("key object: {e}")),
        status: LimitStatus::default(),
    }
}

#[allow(clippy::result_large_err)] // the shape of the Limiter port; a cold path
fn parse_answer(answer: Value, key: &VirtualKey) -> Result<Admission, Rejection> {
    if let Some(msg) = answer.get("unauthorized").and_then(Value::as_str) {
        return Err(Rejection {
            error: GatewayError::InvalidApiKey(msg.to_owned()),
            status: LimitStatus::default(),
        });
    }
    let status = |v: &Value| -> LimitStatus {
        v.get("status")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .unwrap_or_default()
    };
    if let Some(r) = answer.get("rejection") {
        let refusal = r
            .get("refusal")
            .and_then(Refusal::from_json)
            .ok_or_else(|| unavailable("bad refusal"))?;
        return Err(Rejection {
            error: refusal.to_error(key.budget.as_ref()),
            status: status(r),
        });
    }
    // The object's record is authoritative: it goes back to the gateway.
    let fresh = answer.get("key").and_then(VirtualKey::from_storage_json);
    match answer.get("admission") {
        Some(a) => Ok(Admission {
            reservation: a
                .get("reservation")
                .and_then(|r| serde_json::from_value(r.clone()).ok()),
            status: status(a),
            key: fresh,
        }),
        None => Ok(Admission {
            key: fresh,
            ..Admission::default()
        }),
    }
}

port! {
    impl Limiter for ObjectLimiter {
        async fn admit(&self, key: &VirtualKey, demand: &Demand) -> Result<Admission, Rejection> {
            let mut body = json!({
                "hash": demand.key_hash,
                "fallback": key.to_storage_json(),
                "demand": { "tokens": demand.tokens, "cost_nanos": demand.cost_nanos, "ttl_secs": demand.ttl_secs },
            });
            if !self.leasing || (key.limits.is_empty() && key.budget.is_none()) {
                let answer = call_object(&self.env, &key.id, Method::Post, "/admit", Some(&body)).await.map_err(unavailable)?;
                return parse_answer(answer, key);
            }
            // The isolate's lease first; else the object, with the carry.
            let now = now_ms();
            let carry = {
                let mut books = self.books();
                let book = book_of(&mut books, &key.id);
                if let Some((reservation, status)) = book.admit(now, &demand.key_hash, demand.tokens, demand.cost_nanos) {
                    return Ok(Admission { reservation: Some(reservation), status, key: None });
                }
                book.close(now, true);
                body["rate"] = json!(book.rate.per_sec(now));
                book.take_carry()
            };
            body["carry"] = json!(carry);
            let answer = match call_object(&self.env, &key.id, Method::Post, "/admit", Some(&body)).await {
                Ok(answer) => answer,
                Err(e) => {
                    self.keep(&key.id, carry);
                    return Err(unavailable(e));
                }
            };
            let terms: Option<LeaseTerms> = answer.get("lease").and_then(|t| serde_json::from_value(t.clone()).ok());
            let mut admission = parse_answer(answer, key)?;
            if let (Some(terms), Some(granted)) = (terms, admission.reservation) {
                let mut lease = Lease::new(&granted, &terms, &demand.key_hash, admission.status.clone());
                admission.reservation = lease.spend(now_ms().min(terms.expires_at_ms.saturating_sub(1)), &demand.key_hash, demand.tokens, demand.cost_nanos);
                let mut books = self.books();
                let book = book_of(&mut books, &key.id);
                // Another request of this isolate got one meanwhile.
                book.close(now_ms(), true);
                book.lease = Some(lease);
            }
            Ok(admission)
        }

        async fn settle(&self, key: &VirtualKey, admission: &Admission, settlement: Settlement) {
            let Some(reservation) = admission.reservation else { return };
            if reservation.leased {
                // Into the lease, or carried; this request delivers the carry
                // (its own settlement in it) when due or once the lease is over.
                let now = now_ms();
                let carry = {
                    let mut books = self.books();
                    let book = book_of(&mut books, &key.id);
                    book.settle_leased(now, &reservation, settlement.tokens, settlement.cost_nanos, key.budget.is_some())
                };
                if let Some(carry) = carry {
                    let body = json!({ "carry": carry });
                    if let Err(e) = call_object(&self.env, &key.id, Method::Post, "/settle", Some(&body)).await {
                        worker::console_error!("conduit: settlement for key {} failed: {e}", key.id);
                        self.keep(&key.id, carry);
                    }
                }
                return;
            }
            let body = json!({ "reservation": reservation, "tokens": settlement.tokens, "cost_nanos": settlement.cost_nanos });
            if let Err(e) = call_object(&self.env, &key.id, Method::Post, "/settle", Some(&body)).await {
                worker::console_error!("conduit: settlement for key {} failed: {e}", key.id);
            }
        }

        async fn status(&self, key: &VirtualKey) -> Result<LimitStatus, StoreError> {
            let v = call_object(&self.env, &key.id, Method::Get, "/status", None).await.map_err(store_err)?;
            serde_json::from_value(v).map_err(store_err)
        }

        async fn verify(&self, key: &VirtualKey, key_hash: &str) -> Result<Option<VirtualKey>, GatewayError> {
            let body = json!({ "hash": key_hash, "fallback": key.to_storage_json() });
            let answer = call_object(&self.env, &key.id, Method::Post, "/verify", Some(&body))
                .await
                .map_err(|e| GatewayError::Store(format!("key object: {e}")))?;
            parse_answer(answer, key).map(|a| a.key).map_err(|r| r.error)
        }

        fn trust_for_revocation_delay(&self) -> bool {
            true
        }
    }
}

/// A timer as a promise. Not `worker::Delay`: that keeps the waker of its
/// first poll, and the meter's first poll of a usage task is a no-op one
/// (`run_or_spawn`), so the task would never wake and workerd would cancel
/// the request as hung. A `JsFuture` wakes whoever polled it last.
fn sleep_ms(ms: u64) -> wasm_bindgen_futures::JsFuture {
    let promise = js_sys::Promise::new(&mut |resolve, _reject| {
        let global = js_sys::global();
        let set_timeout =
            js_sys::Reflect::get(&global, &wasm_bindgen::JsValue::from_str("setTimeout"))
                .ok()
                .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
        let started = set_timeout.is_some_and(|f| {
            f.call2(
                &global,
                &resolve,
                &wasm_bindgen::JsValue::from_f64(ms as f64),
            )
            .is_ok()
        });
        if !started {
            // No timer: flush at once rather than never.
            let _ = resolve.call0(&wasm_bindgen::JsValue::NULL);
        }
    });
    wasm_bindgen_futures::JsFuture::from(promise)
}

/// Usage records in the key's Durable Object, batched per isolate and key
/// by the core's rule ([`conduit::metering::usage_batch`]): the request
/// whose record opens a batch waits (in its own `ctx.wait_until`, which
/// keeps the isolate alive) until the batch is due and posts it in one
/// call; the request whose record fills it posts it at once; every other
/// request only adds its record. No request awaits another's call.
pub struct ObjectUsageStore {
    pub env: Env,
    pub keys: Arc<KvKeyStore>,
    /// The isolate's open batches, locked only between awaits.
    pub batches: std::sync::Mutex<UsageBatches<UsageRecord>>,
}

impl ObjectUsageStore {
    pub fn new(env: Env, keys: Arc<KvKeyStore>) -> ObjectUsageStore {
        ObjectUsageStore {
            env,
            keys,
            batches: std::sync::Mutex::new(UsageBatches::new(BatchRule::DEFAULT)),
        }
    }

    fn batches(&self) -> std::sync::MutexGuard<'_, UsageBatches<UsageRecord>> {
        self.batches.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Posts one key's batch (a JSON array) to its object; one retry after a
    /// short pause, then the loss is logged with every request id.
    async fn post(&self, key_id: &str, records: Vec<UsageRecord>) {
        let body = Value::Array(records.iter().map(UsageRecord::to_json).collect());
        let mut outcome = call_object(&self.env, key_id, Method::Post, "/usage", Some(&body)).await;
        if outcome.is_err() {
            let _ = sleep_ms(100).await;
            outcome = call_object(&self.env, key_id, Method::Post, "/usage", Some(&body)).await;
        }
        if let Err(e) = outcome {
            let ids: Vec<&str> = records.iter().map(|r| r.request_id.as_str()).collect();
            worker::console_error!("conduit: usage records {} not stored: {e}", ids.join(","));
        }
    }
}

port! {
    impl UsageStore for ObjectUsageStore {
        async fn record(&self, record: UsageRecord) {
            let key_id = record.key_id.clone();
            let pushed = self.batches().push(&key_id, now_ms(), record);
            match pushed {
                Pushed::Added => {}
                Pushed::Full(records) => self.post(&key_id, records).await,
                Pushed::Opened { batch, flush_at_ms } => {
                    let wait = flush_at_ms.saturating_sub(now_ms());
                    if wait > 0 {
                        let _ = sleep_ms(wait).await;
                    }
                    // The timer has run out: the batch is due (Date.now() may lag it).
                    let due = self.batches().take_due(&key_id, batch, now_ms().max(flush_at_ms));
                    if let Some(records) = due {
                        self.post(&key_id, records).await;
                    }
                }
            }
        }

        async fn query(&self, query: &UsageQuery) -> Result<Vec<UsageRecord>, StoreError> {
            // Each key's object answers its own newest page; merged, the
            // newest `limit` of them are the page over all keys.
            let ids = self.key_ids(&query.key_id).await?;
            let body = serde_json::to_value(query).map_err(store_err)?;
            let answers = futures_util::future::join_all(ids.iter().map(|id| {
                call_object(&self.env, id, Method::Post, "/usage/query", Some(&body))
            }))
            .await;
            let mut out = Vec::new();
            for v in answers {
                let v = v.map_err(store_err)?;
                if let Some(data) = v.get("data").and_then(Value::as_array) {
                    out.extend(data.iter().filter_map(UsageRecord::from_json));
                }
            }
            Ok(query.page(out))
        }

        async fn hours(&self, query: &SummaryQuery) -> Result<Vec<HourRow>, StoreError> {
            let ids = self.key_ids(&query.key_id).await?;
            let answers = futures_util::future::join_all(ids.iter().map(|id| {
                let body = serde_json::to_value(SummaryQuery { key_id: Some(id.clone()), ..query.clone() });
                async move {
                    call_object(&self.env, id, Method::Post, "/usage/hours", Some(&body.map_err(store_err)?))
                        .await
                        .map_err(store_err)
                }
            }))
            .await;
            let mut out = Vec::new();
            for v in answers {
                if let Some(data) = v?.get("data").and_then(Value::as_array) {
                    out.extend(data.iter().filter_map(|r| serde_json::from_value::<HourRow>(r.clone()).ok()));
                }
            }
            Ok(out)
        }

        async fn last_used(&self, key_ids: &[String]) -> Result<Vec<Option<u64>>, StoreError> {
            let answers = futures_util::future::join_all(
                key_ids.iter().map(|id| call_object(&self.env, id, Method::Get, "/usage/last", None)),
            )
            .await;
            answers
                .into_iter()
                .map(|v| Ok(v.map_err(store_err)?.get("last_used_ms").and_then(Value::as_u64)))
                .collect()
        }
    }
}

impl ObjectUsageStore {
    /// The key asked for, or every key in KV (the objects of deleted keys
    /// keep their records but are no longer listed).
    async fn key_ids(&self, key_id: &Option<String>) -> Result<Vec<String>, StoreError> {
        Ok(match key_id {
            Some(id) => vec![id.clone()],
            None => self.keys.list().await?.into_iter().map(|k| k.id).collect(),
        })
    }
}

/// Outgoing `fetch`, streamed; dropping the body before its end aborts
/// the request.
pub struct FetchUpstream;

/// A JavaScript `ReadableStream` of bytes (a request's or a `fetch`
/// answer's body) as a Rust stream. Not wasm-streams' `IntoStream` (what
/// workers-rs uses): that releases the reader's lock when it is done, and
/// releasing a lock makes the runtime build a `TypeError` (its stack trace
/// included) for the reader's `closed` promise, twice per request here;
/// a profile of the Worker under load put 6.7 % of the isolate's time in
/// `releaseLock`. A stream read to its end is simply let go; one dropped
/// before its end is cancelled, and its `fetch` aborted.
pub struct JsByteStream {
    reader: Option<web_sys::ReadableStreamDefaultReader>,
    pending: Option<wasm_bindgen_futures::JsFuture>,
    /// Aborted only when the stream is dropped before its end.
    abort: Option<worker::AbortController>,
}

impl JsByteStream {
    pub fn new(stream: &web_sys::ReadableStream, abort: Option<worker::AbortController>) -> Self {
        JsByteStream {
            reader: Some(stream.get_reader().unchecked_into()),
            pending: None,
            abort,
        }
    }

    /// The stream is over: nothing to cancel or abort when it is dropped.
    fn finish(&mut self) {
        self.reader = None;
        self.pending = None;
        self.abort = None;
    }
}

impl futures_util::Stream for JsByteStream {
    type Item = Result<Bytes, String>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        let Some(reader) = &this.reader else {
            return Poll::Ready(None);
        };
        let read = this
            .pending
            .get_or_insert_with(|| wasm_bindgen_futures::JsFuture::from(reader.read()));
        let result = match std::future::Future::poll(std::pin::Pin::new(read), cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result,
        };
        this.pending = None;
        match result {
            Ok(chunk) => {
                let field = |name: &str| {
                    js_sys::Reflect::get(&chunk, &wasm_bindgen::JsValue::from_str(name))
                        .unwrap_or(wasm_bindgen::JsValue::UNDEFINED)
                };
                if field("done").as_bool().unwrap_or(true) {
                    this.finish();
                    return Poll::Ready(None);
                }
                let bytes = js_sys::Uint8Array::new(&field("value")).to_vec();
                Poll::Ready(Some(Ok(Bytes::from(bytes))))
            }
            Err(e) => {
                this.finish();
                Poll::Ready(Some(Err(e
                    .as_string()
                    .or_else(|| {
                        e.dyn_ref::<js_sys::Error>()
                            .map(|e| String::from(e.message()))
                    })
                    .unwrap_or_else(|| "the stream failed".into()))))
            }
        }
    }
}

impl Drop for JsByteStream {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            // A cancellation that fails has nothing left to tell.
            let ignore = wasm_bindgen::closure::Closure::once(|_: wasm_bindgen::JsValue| {});
            let _ = reader.cancel().catch(&ignore);
            ignore.forget();
        }
        if let Some(controller) = self.abort.take() {
            controller.abort();
        }
    }
}

fn method_of(m: &http::Method) -> Method {
    match *m {
        http::Method::GET => Method::Get,
        http::Method::PUT => Method::Put,
        http::Method::DELETE => Method::Delete,
        http::Method::PATCH => Method::Patch,
        _ => Method::Post,
    }
}

port! {
    impl Upstream for FetchUpstream {
        async fn send(&self, request: http::Request<Bytes>) -> Result<http::Response<ByteStream>, UpstreamError> {
            let err = |e: worker::Error| UpstreamError(e.to_string());
            let (parts, body) = request.into_parts();
            let headers = Headers::from(&parts.headers);
            let mut init = RequestInit::new();
            init.with_method(method_of(&parts.method)).with_headers(headers);
            if !body.is_empty() {
                init.with_body(Some(js_sys::Uint8Array::from(&body[..]).into()));
            }
            let req = Request::new_with_init(&parts.uri.to_string(), &init).map_err(err)?;
            let controller = worker::AbortController::default();
            let resp = Fetch::Request(req).send_with_signal(&controller.signal()).await.map_err(err)?;
            let mut builder = http::Response::builder().status(resp.status_code());
            for (k, v) in resp.headers().entries() {
                builder = builder.header(k, v);
            }
            let body: ByteStream = match resp.body() {
                worker::ResponseBody::Stream(stream) => {
                    Box::pin(JsByteStream::new(stream, Some(controller)).map(|chunk| chunk.map_err(UpstreamError)))
                }
                worker::ResponseBody::Body(bytes) => {
                    let bytes = Bytes::from(bytes.clone());
                    Box::pin(futures_util::stream::once(async move { Ok(bytes) }))
                }
                _ => Box::pin(futures_util::stream::empty()),
            };
            builder.body(body).map_err(|e| UpstreamError(e.to_string()))
        }
    }
}

/// `Date.now()` (which moves on I/O, as Workers do) and `setTimeout`.
pub struct WorkerClock;

impl Clock for WorkerClock {
    fn now_micros(&self) -> u64 {
        worker::Date::now().as_millis() * 1000
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(worker::Delay::from(duration))
    }
}

/// `ctx.wait_until`: work after the response keeps the invocation alive.
pub struct ContextSpawner(pub Arc<Context>);

impl Spawner for ContextSpawner {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self.0.wait_until(task);
    }
}
