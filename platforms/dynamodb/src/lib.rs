//! The core's stores on DynamoDB, shared by the Lambda function and the
//! native server (`[server] store = "dynamodb"`).
//!
//! Two tables (names from `CONDUIT_KEYS_TABLE` and `CONDUIT_USAGE_TABLE`):
//!
//! | table | item | attributes |
//! |-------|------|------------|
//! | keys  | `pk = key#{id}` | `record` (the key's JSON), `hash` (SHA-256 of the secret), the admission counters (below) |
//! | keys  | `pk = hash#{sha256}` | `id`: the lookup from a presented secret |
//! | usage | `pk = {key id}`, `sk = {unix ms, 13 digits}#{request id}` | `record` (JSON), `expires_at` (TTL) |
//! | usage | `pk = hours#{key id}`, `sk = {hour start, unix s, 13 digits}#{model alias}` | the hour's counters ([`Counters`] fields, added with `ADD` as records are written), `expires_at` |
//!
//! The key item also holds `last_used_ms`, raised at most hourly per
//! container as usage records are written (`last_used` reads the newest
//! record, and this once the records have expired).
//!
//! **Admission** is one `UpdateItem` of the key item, decided with the
//! core's [`KeyCounters`], i.e. [`conduit::metering::limits::KeyLimitState`]'s
//! rules, the very arithmetic the server and the Durable Object run. The
//! admission state is kept in the key item as separate numbers (the layout
//! and the proof are in [`conduit::metering::limits::counters`]: `whi`,
//! `mr{s}`/`mt{s}` for the requests and tokens of each second `s` of the
//! minute window, `dn`/`dr` for the day, `bp`/`bc`/`bs` for the budget),
//! and the write `ADD`s to them under conditions that keep the decision
//! true at write time. The decision is made on the item as the container
//! last saw it (the previous admission's write returned it, `ALL_NEW`),
//! without a read: the write is also conditioned on the key's `record` and
//! `hash` being what was seen, so a deleted, disabled or rotated key is
//! refused at once whatever the container remembers; a failed condition
//! returns the item as it is (`ALL_OLD`; read where the store does not)
//! and the admission is decided again; a refusal is only ever made on a
//! consistent read. Concurrent admissions of one hot key from many
//! containers do not collide (they all `ADD` to the same second's counter
//! under one bound): a condition fails only when the limit is in reach or
//! the key changed. With `rpm = N`, exactly N are admitted, whatever the
//! number of concurrent Lambda instances. Settlement is one
//! unconditional-in-effect `ADD` of the difference between estimate and
//! actual (conditioned only on the second and period still being there),
//! without a read.
//!
//! **Usage**: a record and its hour's counters are one `TransactWriteItems`
//! (all or nothing; a record already written cancels it), or two writes
//! on a store without transactions (dynalite).
//!
//! **Store round trips** are counted per kind ([`Trips`]); with
//! `CONDUIT_COUNT_TRIPS=1` the Lambda adapter logs them after each request
//! (`bench/lambda.sh` reads them).

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_dynamodb::Client;
use conduit::keys::{check_presented, VirtualKey};
use conduit::metering::limits::counters::{
    carry_writes, merge_writes, settlement_writes, Condition, CounterWrite, ItemAdmission,
    KeyCounters, Update,
};
use conduit::metering::limits::lease::{book_of, Carry, LeaseBook};
use conduit::metering::limits::{Ask, LimitStatus, Rejection, Reservation};
use conduit::metering::summary::{Counters, HourRow, SummaryQuery};
use conduit::metering::usage::{UsageQuery, UsageRecord};
use conduit::port;
use conduit::ports::{Admission, Demand, KeyStore, Limiter, Settlement, StoreError, UsageStore};
use conduit::GatewayError;
use serde_json::Value;

mod limiter;

type Item = HashMap<String, AttributeValue>;

/// Table names and the usage retention.
#[derive(Clone, Debug)]
pub struct Tables {
    pub keys: String,
    pub usage: String,
    /// Usage records expire (DynamoDB TTL) after this many days; 0 keeps them.
    pub usage_ttl_days: u64,
}

impl Tables {
    pub fn from_env() -> Tables {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        Tables {
            keys: var("CONDUIT_KEYS_TABLE", "conduit-keys"),
            usage: var("CONDUIT_USAGE_TABLE", "conduit-usage"),
            usage_ttl_days: var("CONDUIT_USAGE_TTL_DAYS", "90").parse().unwrap_or(90),
        }
    }
}

fn err(e: impl std::error::Error) -> StoreError {
    StoreError(format!("dynamodb: {}", DisplayErrorContext(e)))
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn get_s<'a>(item: &'a Item, k: &str) -> Option<&'a str> {
    item.get(k).and_then(|v| v.as_s().ok()).map(String::as_str)
}

fn now_secs() -> u64 {
    now_ms() / 1_000
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// DynamoDB calls are retried by the SDK, with the policy set here rather
/// than left to the SDK's defaults: the standard mode (throttling errors,
/// 5xx and transient transport errors are retried, with exponential backoff
/// and full jitter), 4 attempts, backoff from 50 ms up to 1 s. A call still
/// failing after that is a [`StoreError`], which the request answers with
/// 503 `store_unavailable`.
pub const RETRY_MAX_ATTEMPTS: u32 = 4;

/// A DynamoDB client on `config` (the AWS environment's) with Conduit's retry policy.
pub fn client(config: aws_sdk_dynamodb::config::Builder) -> Client {
    use aws_sdk_dynamodb::config::retry::RetryConfig;
    let retry = RetryConfig::standard()
        .with_max_attempts(RETRY_MAX_ATTEMPTS)
        .with_initial_backoff(Duration::from_millis(50))
        .with_max_backoff(Duration::from_secs(1));
    Client::from_conf(config.retry_config(retry).build())
}

/// Everything on DynamoDB: keys, admission state, usage.
pub struct Dynamo {
    pub client: Client,
    pub tables: Tables,
    /// Store round trips made, by kind.
    pub trips: Trips,
    /// Whether the gateway may trust the consistent read's record of a key
    /// for `revocation_delay_ms` (the Lambda function: yes; the native
    /// server on a shared store keeps asking on every request).
    pub edge: bool,
    /// Whether this container leases capacity of its hot keys
    /// ([`conduit::metering::limits::lease`]): the Lambda function with
    /// `revocation_delay_ms > 0`.
    pub leasing: bool,
    /// The container's leases and carried settlements, by key id.
    leases: std::sync::Mutex<HashMap<String, LeaseBook>>,
    /// Key items as last seen (read or returned by an admission's write),
    /// by key id: the next admission of the key decides on it and writes
    /// at once, without a read ([`Dynamo::admit_write`]).
    seen: std::sync::Mutex<HashMap<String, KeyItem>>,
    /// Set once the store turned out to have no `TransactWriteItems`
    /// (dynalite): usage is then written in two round trips.
    no_transactions: std::sync::atomic::AtomicBool,
    /// When this container last raised each key item's `last_used_ms`.
    touched: std::sync::Mutex<HashMap<String, u64>>,
}

/// A key item's `last_used_ms` is raised at most this often per container
/// (`last_used` reads the newest usage record; the item's value serves
/// once the records have expired).
const TOUCH_EVERY_MS: u64 = 3_600_000;

/// Key items remembered per container before the memory is cleared.
const MAX_SEEN: usize = 10_000;

impl Dynamo {
    pub fn new(client: Client, tables: Tables) -> Dynamo {
        Dynamo {
            client,
            tables,
            trips: Trips::default(),
            edge: false,
            leasing: false,
            leases: std::sync::Mutex::default(),
            seen: std::sync::Mutex::default(),
            no_transactions: std::sync::atomic::AtomicBool::new(false),
            touched: std::sync::Mutex::default(),
        }
    }
}

/// Kinds of store round trip, as counted in [`Trips`].
#[derive(Debug, Clone, Copy)]
pub enum Trip {
    /// The consistent read of a key item (admission, verification, lookups).
    KeyRead,
    /// A lookup of a presented secret's hash.
    HashRead,
    /// The conditional write of an admission.
    AdmitWrite,
    /// A settlement's write.
    SettleWrite,
    /// A usage record's writes: the record and its hour's counters, in
    /// one transaction (two writes where the store has no transactions).
    UsageWrite,
    /// The delivery of a container's carried settlements and returned
    /// leases, when no admission write took them along.
    CarryWrite,
    /// The raise of a key item's `last_used_ms` (at most hourly per container).
    KeyTouch,
}

/// Round trips to DynamoDB since start, by kind (for `bench/lambda.sh`).
#[derive(Debug, Default)]
pub struct Trips([std::sync::atomic::AtomicU64; 7]);

impl Trips {
    pub fn add(&self, kind: Trip) {
        self.0[kind as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// `{kind: count}` as JSON.
    pub fn to_json(&self) -> Value {
        let n = |k: Trip| self.0[k as usize].load(std::sync::atomic::Ordering::Relaxed);
        serde_json::json!({
            "key_read": n(Trip::KeyRead),
            "hash_read": n(Trip::HashRead),
            "admit_write": n(Trip::AdmitWrite),
            "settle_write": n(Trip::SettleWrite),
            "usage_write": n(Trip::UsageWrite),
            "carry_write": n(Trip::CarryWrite),
            "key_touch": n(Trip::KeyTouch),
        })
    }
}

/// A key item, as read (or as an admission's `UpdateItem` returned it).
#[derive(Clone)]
struct KeyItem {
    key: Option<VirtualKey>,
    /// The stored `record` as is: an admission is conditioned on it (and
    /// on `hash`), so that one decided on a remembered item is written only
    /// if the key is still what it was.
    record: String,
    hash: String,
    counters: KeyCounters,
}

impl KeyItem {
    fn parse(item: &Item) -> KeyItem {
        let record = get_s(item, "record").unwrap_or_default().to_owned();
        KeyItem {
            key: serde_json::from_str::<Value>(&record)
                .ok()
                .and_then(|v| VirtualKey::from_storage_json(&v)),
            record,
            hash: get_s(item, "hash").unwrap_or_default().to_owned(),
            counters: KeyCounters::read(
                item.iter()
                    .filter_map(|(name, v)| Some((name.as_str(), v.as_n().ok()?.parse().ok()?))),
            ),
        }
    }
}

/// What a guarded admission write ([`Dynamo::admit_write`]) found.
enum Guarded {
    /// Written; the item after it (`ALL_NEW`).
    Written(Option<KeyItem>),
    /// A condition failed; the item as it was (`ALL_OLD`), where the store
    /// returns it (DynamoDB does; dynalite does not: then it is read).
    Moved(Option<KeyItem>),
}

impl Dynamo {
    /// Creates the tables if they are missing (local runs; in AWS the
    /// template creates them and the function has no right to).
    pub async fn create_tables(&self) -> Result<(), StoreError> {
        for (name, sort) in [(&self.tables.keys, false), (&self.tables.usage, true)] {
            if self
                .client
                .describe_table()
                .table_name(name)
                .send()
                .await
                .is_ok()
            {
                continue;
            }
            let mut create = self
                .client
                .create_table()
                .table_name(name)
                .billing_mode(BillingMode::PayPerRequest)
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name("pk")
                        .key_type(KeyType::Hash)
                        .build()
                        .map_err(err)?,
                )
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name("pk")
                        .attribute_type(ScalarAttributeType::S)
                        .build()
                        .map_err(err)?,
                );
            if sort {
                create = create
                    .key_schema(
                        KeySchemaElement::builder()
                            .attribute_name("sk")
                            .key_type(KeyType::Range)
                            .build()
                            .map_err(err)?,
                    )
                    .attribute_definitions(
                        AttributeDefinition::builder()
                            .attribute_name("sk")
                            .attribute_type(ScalarAttributeType::S)
                            .build()
                            .map_err(err)?,
                    );
            }
            if let Err(e) = create.send().await {
                // Another instance may have created it meanwhile.
                if e.code() != Some("ResourceInUseException") {
                    return Err(err(e));
                }
            }
            for _ in 0..100 {
                let ready = self
                    .client
                    .describe_table()
                    .table_name(name)
                    .send()
                    .await
                    .ok()
                    .and_then(|d| d.table().and_then(|t| t.table_status().cloned()))
                    .is_some_and(|s| s.as_str() == "ACTIVE");
                if ready {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if sort {
                let ttl = TimeToLiveSpecification::builder()
                    .attribute_name("expires_at")
                    .enabled(true)
                    .build()
                    .map_err(err)?;
                if let Err(e) = self
                    .client
                    .update_time_to_live()
                    .table_name(name)
                    .time_to_live_specification(ttl)
                    .send()
                    .await
                {
                    // dynalite does not implement TTL; real DynamoDB and moto do.
                    if e.code() != Some("UnknownOperationException") {
                        return Err(err(e));
                    }
                }
            }
        }
        Ok(())
    }

    async fn key_item(&self, id: &str) -> Result<Option<KeyItem>, StoreError> {
        self.trips.add(Trip::KeyRead);
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.keys)
            .key("pk", s(format!("key#{id}")))
            .consistent_read(true)
            .send()
            .await
            .map_err(err)?;
        let item = out.item.as_ref().map(KeyItem::parse);
        self.remember(id, item.as_ref());
        Ok(item)
    }

    /// Keeps (or forgets) the item as last seen, for the next admission.
    fn remember(&self, id: &str, item: Option<&KeyItem>) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match item {
            Some(i) => {
                if seen.len() >= MAX_SEEN && !seen.contains_key(id) {
                    seen.clear();
                }
                seen.insert(id.to_owned(), i.clone());
            }
            None => {
                seen.remove(id);
            }
        }
    }

    /// The item as this container last saw it.
    fn remembered(&self, id: &str) -> Option<KeyItem> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(id).cloned()
    }

    /// Runs one [`CounterWrite`] on the key item; `Ok(false)` when a
    /// condition no longer holds (or the key is gone).
    async fn write_counters(&self, id: &str, w: &CounterWrite) -> Result<bool, StoreError> {
        let result = self.counter_update(id, w, None).send().await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(false),
            Err(e) => Err(err(e)),
        }
    }

    /// An admission's write, decided on `seen` (read, or remembered from
    /// an earlier write): one `UpdateItem`, on the further condition that
    /// the key's `record` and `hash` are still `seen`'s (so the key check
    /// made on `seen` holds at write time), returning the item after it
    /// (`ALL_NEW`: the next admission decides on it without a read) or,
    /// when a condition failed, before it (`ALL_OLD`, to decide again
    /// without a read).
    async fn admit_write(
        &self,
        id: &str,
        w: &CounterWrite,
        seen: &KeyItem,
    ) -> Result<Guarded, StoreError> {
        use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
        use aws_sdk_dynamodb::types::{ReturnValue, ReturnValuesOnConditionCheckFailure};
        let result = self
            .counter_update(id, w, Some(seen))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => Ok(Guarded::Written(
                out.attributes.as_ref().map(KeyItem::parse),
            )),
            Err(e) => match e.into_service_error() {
                UpdateItemError::ConditionalCheckFailedException(c) => {
                    Ok(Guarded::Moved(c.item().map(KeyItem::parse)))
                }
                e => Err(err(e)),
            },
        }
    }

    /// The `UpdateItem` of a [`CounterWrite`] (guarded by `seen`'s record
    /// and hash, when given).
    fn counter_update(
        &self,
        id: &str,
        w: &CounterWrite,
        seen: Option<&KeyItem>,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.tables.keys)
            .key("pk", s(format!("key#{id}")));
        // Placeholders for every name (some could be DynamoDB reserved words).
        let mut owned: Vec<String> = Vec::new();
        let mut index = |attr: &str| -> String {
            let i = owned.iter().position(|n| n == attr).unwrap_or_else(|| {
                owned.push(attr.to_owned());
                owned.len() - 1
            });
            format!("#n{i}")
        };
        let mut values: Vec<AttributeValue> = Vec::new();
        let mut value = |v: String| -> String {
            values.push(AttributeValue::N(v));
            format!(":v{}", values.len() - 1)
        };
        let mut conditions = vec!["attribute_exists(pk)".to_owned()];
        for c in &w.conditions {
            conditions.push(match c {
                Condition::Absent(a) => format!("attribute_not_exists({})", index(a)),
                Condition::Equals(a, v) => format!("{} = {}", index(a), value(v.to_string())),
                Condition::Exists(a) => format!("attribute_exists({})", index(a)),
                Condition::AtMost(a, v) => {
                    let n = index(a);
                    format!(
                        "(attribute_not_exists({n}) OR {n} <= {})",
                        value(v.to_string())
                    )
                }
            });
        }
        let (mut sets, mut adds, mut removes) = (Vec::new(), Vec::new(), Vec::new());
        for u in &w.updates {
            match u {
                Update::Set(a, v) => sets.push(format!("{} = {}", index(a), value(v.to_string()))),
                Update::Add(a, d) => adds.push(format!("{} {}", index(a), value(d.to_string()))),
                Update::Remove(a) => removes.push(index(a)),
            }
        }
        let mut expression = String::new();
        if !sets.is_empty() {
            expression = format!("SET {}", sets.join(", "));
        }
        if !adds.is_empty() {
            expression.push_str(&format!(" ADD {}", adds.join(", ")));
        }
        if !removes.is_empty() {
            expression.push_str(&format!(" REMOVE {}", removes.join(", ")));
        }
        for (i, n) in owned.into_iter().enumerate() {
            update = update.expression_attribute_names(format!("#n{i}"), n);
        }
        for (i, v) in values.into_iter().enumerate() {
            update = update.expression_attribute_values(format!(":v{i}"), v);
        }
        if let Some(seen) = seen {
            conditions.push("#record = :record AND #hash = :hash".to_owned());
            update = update
                .expression_attribute_names("#record", "record")
                .expression_attribute_names("#hash", "hash")
                .expression_attribute_values(":record", s(seen.record.clone()))
                .expression_attribute_values(":hash", s(seen.hash.clone()));
        }
        update
            .update_expression(expression.trim())
            .condition_expression(conditions.join(" AND "))
    }

    /// The authoritative check of a presented key ([`check_presented`]).
    #[allow(clippy::result_large_err)] // the core's error type, on a cold path
    fn check(item: &Option<KeyItem>, hash: &str) -> Result<VirtualKey, GatewayError> {
        check_presented(
            item.as_ref().map(|i| (&i.key, i.hash.as_str())),
            hash,
            now_secs(),
        )
    }

    async fn backoff(attempt: u32) {
        // A failed condition means the state moved (a new second, or the
        // limit in reach): re-read at once; wait only if it keeps moving.
        if attempt < 3 {
            return;
        }
        let jitter = u64::from(std::process::id() % 7 + attempt % 5);
        tokio::time::sleep(Duration::from_millis(u64::from(attempt.min(20)) + jitter)).await;
    }
}

port! {
    impl KeyStore for Dynamo {
        async fn find_by_hash(&self, hash: &str) -> Result<Option<VirtualKey>, StoreError> {
            self.trips.add(Trip::HashRead);
            let out = self
                .client
                .get_item()
                .table_name(&self.tables.keys)
                .key("pk", s(format!("hash#{hash}")))
                .send()
                .await
                .map_err(err)?;
            let Some(id) = out.item.as_ref().and_then(|i| get_s(i, "id")).map(str::to_owned) else { return Ok(None) };
            Ok(self.key_item(&id).await?.filter(|i| i.hash == hash).and_then(|i| i.key))
        }

        async fn get(&self, id: &str) -> Result<Option<VirtualKey>, StoreError> {
            Ok(self.key_item(id).await?.and_then(|i| i.key))
        }

        async fn list(&self) -> Result<Vec<VirtualKey>, StoreError> {
            let mut keys = Vec::new();
            let mut start: Option<Item> = None;
            loop {
                let out = self
                    .client
                    .scan()
                    .table_name(&self.tables.keys)
                    .filter_expression("begins_with(pk, :p)")
                    .expression_attribute_values(":p", s("key#"))
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await
                    .map_err(err)?;
                for item in out.items() {
                    if let Some(k) = get_s(item, "record")
                        .and_then(|r| serde_json::from_str::<Value>(r).ok())
                        .and_then(|v| VirtualKey::from_storage_json(&v))
                    {
                        keys.push(k);
                    }
                }
                match out.last_evaluated_key {
                    Some(k) if !k.is_empty() => start = Some(k),
                    _ => break,
                }
            }
            keys.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            Ok(keys)
        }

        async fn insert(&self, key: &VirtualKey, hash: &str) -> Result<(), StoreError> {
            self.client
                .put_item()
                .table_name(&self.tables.keys)
                .item("pk", s(format!("key#{}", key.id)))
                .item("record", s(key.to_storage_json().to_string()))
                .item("hash", s(hash))
                .item("version", AttributeValue::N("0".into()))
                .condition_expression("attribute_not_exists(pk)")
                .send()
                .await
                .map_err(err)?;
            self.client
                .put_item()
                .table_name(&self.tables.keys)
                .item("pk", s(format!("hash#{hash}")))
                .item("id", s(key.id.clone()))
                .send()
                .await
                .map_err(err)?;
            Ok(())
        }

        async fn update(&self, key: &VirtualKey) -> Result<bool, StoreError> {
            let result = self
                .client
                .update_item()
                .table_name(&self.tables.keys)
                .key("pk", s(format!("key#{}", key.id)))
                .update_expression("SET #r = :r")
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_names("#r", "record")
                .expression_attribute_values(":r", s(key.to_storage_json().to_string()))
                .send()
                .await;
            match result {
                Ok(_) => Ok(true),
                Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(false),
                Err(e) => Err(err(e)),
            }
        }

        async fn set_hash(&self, id: &str, hash: &str) -> Result<bool, StoreError> {
            let Some(item) = self.key_item(id).await? else { return Ok(false) };
            // The key item is the authority: once its hash changes, the old secret is refused.
            let result = self
                .client
                .update_item()
                .table_name(&self.tables.keys)
                .key("pk", s(format!("key#{id}")))
                .update_expression("SET #h = :h")
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_names("#h", "hash")
                .expression_attribute_values(":h", s(hash))
                .send()
                .await;
            match result {
                Ok(_) => {}
                Err(e) if e.code() == Some("ConditionalCheckFailedException") => return Ok(false),
                Err(e) => return Err(err(e)),
            }
            self.client
                .put_item()
                .table_name(&self.tables.keys)
                .item("pk", s(format!("hash#{hash}")))
                .item("id", s(id))
                .send()
                .await
                .map_err(err)?;
            self.delete_key_item(format!("hash#{}", item.hash)).await?;
            Ok(true)
        }

        async fn delete(&self, id: &str) -> Result<bool, StoreError> {
            let Some(item) = self.key_item(id).await? else { return Ok(false) };
            self.delete_key_item(format!("key#{id}")).await?;
            self.delete_key_item(format!("hash#{}", item.hash)).await?;
            Ok(true)
        }
    }
}

fn sort_key(ms: u64, request_id: &str) -> String {
    format!("{ms:013}#{request_id}")
}

impl Dynamo {
    /// Deletes one item of the keys table (a key's record, or its hash lookup).
    async fn delete_key_item(&self, pk: String) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.tables.keys)
            .key("pk", s(pk))
            .send()
            .await
            .map(|_| ())
            .map_err(err)
    }

    /// The usage record's item and the `ADD` of it to its hour's counters
    /// (every field, atomic in DynamoDB): the two writes of
    /// [`UsageStore::record`], as one transaction's items.
    fn usage_writes(
        &self,
        record: &UsageRecord,
    ) -> Result<
        (
            aws_sdk_dynamodb::types::Put,
            aws_sdk_dynamodb::types::Update,
        ),
        StoreError,
    > {
        let expires = (self.tables.usage_ttl_days > 0)
            .then(|| record.created_at_ms / 1000 + self.tables.usage_ttl_days * 86_400);
        let mut put = aws_sdk_dynamodb::types::Put::builder()
            .table_name(&self.tables.usage)
            .item("pk", s(record.key_id.clone()))
            .item("sk", s(sort_key(record.created_at_ms, &record.request_id)))
            .item("record", s(record.to_json().to_string()))
            // Written once: a retried write must not count the request twice.
            .condition_expression("attribute_not_exists(pk)");
        if let Some(e) = expires {
            put = put.item("expires_at", AttributeValue::N(e.to_string()));
        }
        let row = HourRow::of(record);
        let mut update = aws_sdk_dynamodb::types::Update::builder()
            .table_name(&self.tables.usage)
            .key("pk", s(format!("hours#{}", row.key_id)))
            .key("sk", s(format!("{:013}#{}", row.hour, row.model)));
        let mut adds = Vec::new();
        for (i, (name, value)) in row.counters.fields().into_iter().enumerate() {
            adds.push(format!("#f{i} :v{i}"));
            update = update
                .expression_attribute_names(format!("#f{i}"), name)
                .expression_attribute_values(
                    format!(":v{i}"),
                    AttributeValue::N(value.to_string()),
                );
        }
        let mut expression = format!("ADD {} SET #h = :h, #m = :m", adds.join(", "));
        update = update
            .expression_attribute_names("#h", "hour")
            .expression_attribute_names("#m", "model")
            .expression_attribute_values(":h", AttributeValue::N(row.hour.to_string()))
            .expression_attribute_values(":m", s(row.model.clone()));
        if let Some(e) = expires {
            expression.push_str(", #e = :e");
            update = update
                .expression_attribute_names("#e", "expires_at")
                .expression_attribute_values(":e", AttributeValue::N(e.to_string()));
        }
        Ok((
            put.build().map_err(err)?,
            update.update_expression(expression).build().map_err(err)?,
        ))
    }

    /// The record and its hour's counters in one round trip: one
    /// `TransactWriteItems`, all or nothing (a record already written
    /// cancels it, so nothing is counted twice). `false` where the store
    /// has no transactions (dynalite) or the transaction failed: then the
    /// two writes follow.
    async fn record_in_one(
        &self,
        put: aws_sdk_dynamodb::types::Put,
        update: aws_sdk_dynamodb::types::Update,
        request_id: &str,
    ) -> bool {
        use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
        use aws_sdk_dynamodb::types::TransactWriteItem;
        self.trips.add(Trip::UsageWrite);
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put).build())
            .transact_items(TransactWriteItem::builder().update(update).build())
            .send()
            .await;
        match result {
            Ok(_) => true,
            Err(e) if e.code() == Some("UnknownOperationException") => {
                self.no_transactions
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                false
            }
            Err(e) => {
                let written = matches!(e.as_service_error(), Some(TransactWriteItemsError::TransactionCanceledException(c))
                    if c.cancellation_reasons().first().and_then(|r| r.code()) == Some("ConditionalCheckFailed"));
                if !written {
                    // Tried again as two writes: the record's own condition
                    // keeps a transaction that did go through from counting twice.
                    eprintln!(
                        "conduit: usage record {request_id}: transaction failed, written in two: {}",
                        DisplayErrorContext(e)
                    );
                }
                written
            }
        }
    }

    /// Without transactions: the record, then (if it was new) its hour's
    /// counters: two round trips.
    async fn record_in_two(
        &self,
        put: aws_sdk_dynamodb::types::Put,
        update: aws_sdk_dynamodb::types::Update,
        request_id: &str,
    ) {
        self.trips.add(Trip::UsageWrite);
        let result = self
            .client
            .put_item()
            .table_name(put.table_name)
            .set_item(Some(put.item))
            .set_condition_expression(put.condition_expression)
            .send()
            .await;
        match result {
            Ok(_) => {}
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => return,
            Err(e) => {
                eprintln!(
                    "conduit: usage record {request_id} not stored: {}",
                    DisplayErrorContext(e)
                );
                return;
            }
        }
        self.trips.add(Trip::UsageWrite);
        let result = self
            .client
            .update_item()
            .table_name(update.table_name)
            .set_key(Some(update.key))
            .update_expression(update.update_expression)
            .set_expression_attribute_names(update.expression_attribute_names)
            .set_expression_attribute_values(update.expression_attribute_values)
            .send()
            .await;
        if let Err(e) = result {
            eprintln!(
                "conduit: usage counters for {request_id} not stored: {}",
                DisplayErrorContext(e)
            );
        }
    }

    /// Whether this container should raise the key's `last_used_ms` now.
    fn touch_due(&self, key_id: &str, ms: u64) -> bool {
        let mut touched = self.touched.lock().unwrap_or_else(|e| e.into_inner());
        if touched
            .get(key_id)
            .is_some_and(|t| ms.saturating_sub(*t) < TOUCH_EVERY_MS)
        {
            return false;
        }
        if touched.len() >= MAX_SEEN {
            touched.clear();
        }
        touched.insert(key_id.to_owned(), ms);
        true
    }

    /// Raises the key item's `last_used_ms` (never lowers it; a deleted key stays deleted).
    async fn touch_key(&self, key_id: &str, ms: u64) {
        let result = self
            .client
            .update_item()
            .table_name(&self.tables.keys)
            .key("pk", s(format!("key#{key_id}")))
            .update_expression("SET #u = :u")
            .condition_expression("attribute_exists(pk) AND (attribute_not_exists(#u) OR #u < :u)")
            .expression_attribute_names("#u", "last_used_ms")
            .expression_attribute_values(":u", AttributeValue::N(ms.to_string()))
            .send()
            .await;
        if let Err(e) = result {
            if e.code() != Some("ConditionalCheckFailedException") {
                eprintln!(
                    "conduit: last use of key {key_id} not stored: {}",
                    DisplayErrorContext(e)
                );
            }
        }
    }

    /// The key asked for, or every key.
    async fn key_ids(&self, key_id: &Option<String>) -> Result<Vec<String>, StoreError> {
        Ok(match key_id {
            Some(id) => vec![id.clone()],
            None => self.list().await?.into_iter().map(|k| k.id).collect(),
        })
    }

    /// One key's newest records matching `query`, at most `query.limit`.
    async fn key_page(
        &self,
        key_id: &str,
        query: &UsageQuery,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        let from = sort_key(query.since_ms.unwrap_or(0), "");
        let mut to = sort_key(query.until_ms.unwrap_or(9_999_999_999_999), "");
        if let Some((ms, id)) = &query.before {
            to = to.min(sort_key(*ms, id));
        }
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let r = self
                .client
                .query()
                .table_name(&self.tables.usage)
                .key_condition_expression("pk = :k AND sk BETWEEN :a AND :b")
                .expression_attribute_values(":k", s(key_id))
                .expression_attribute_values(":a", s(from.clone()))
                .expression_attribute_values(":b", s(to.clone()))
                .scan_index_forward(false)
                .limit(query.limit.clamp(1, 1000) as i32)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(err)?;
            out.extend(
                r.items()
                    .iter()
                    .filter_map(|i| get_s(i, "record"))
                    .filter_map(|r| serde_json::from_str::<Value>(r).ok())
                    .filter_map(|v| UsageRecord::from_json(&v))
                    .filter(|r| query.matches(r)),
            );
            match r.last_evaluated_key {
                Some(k) if !k.is_empty() && out.len() < query.limit => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn key_hours(
        &self,
        key_id: &str,
        query: &SummaryQuery,
    ) -> Result<Vec<HourRow>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let r = self
                .client
                .query()
                .table_name(&self.tables.usage)
                .key_condition_expression("pk = :k AND sk BETWEEN :a AND :b")
                .expression_attribute_values(":k", s(format!("hours#{key_id}")))
                .expression_attribute_values(":a", s(format!("{:013}#", query.since)))
                .expression_attribute_values(":b", s(format!("{:013}#", query.until)))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(err)?;
            for item in r.items() {
                let n = |k: &str| {
                    item.get(k)
                        .and_then(|v| v.as_n().ok())
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                let row = HourRow {
                    hour: n("hour"),
                    key_id: key_id.to_owned(),
                    model: get_s(item, "model").unwrap_or_default().to_owned(),
                    counters: Counters::from_fields(
                        Counters::default()
                            .fields()
                            .map(|(name, _)| (name, n(name))),
                    ),
                };
                if query.matches(&row) {
                    out.push(row);
                }
            }
            match r.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }
}

port! {
    impl UsageStore for Dynamo {
        async fn record(&self, record: UsageRecord) {
            let (put, update) = match self.usage_writes(&record) {
                Ok(w) => w,
                Err(e) => return eprintln!("conduit: usage record {} not stored: {e}", record.request_id),
            };
            let one = !self.no_transactions.load(std::sync::atomic::Ordering::Relaxed)
                && self.record_in_one(put.clone(), update.clone(), &record.request_id).await;
            if !one {
                self.record_in_two(put, update, &record.request_id).await;
            }
            // `last_used` reads the newest record; the key item keeps a
            // coarser last use for keys whose records have expired.
            if self.touch_due(&record.key_id, record.created_at_ms) {
                self.trips.add(Trip::KeyTouch);
                self.touch_key(&record.key_id, record.created_at_ms).await;
            }
        }

        async fn query(&self, query: &UsageQuery) -> Result<Vec<UsageRecord>, StoreError> {
            // Per key, newest first; merged, the newest `limit` over all keys.
            let ids = self.key_ids(&query.key_id).await?;
            let pages = futures_util::future::join_all(ids.iter().map(|id| self.key_page(id, query))).await;
            let mut out = Vec::new();
            for page in pages {
                out.extend(page?);
            }
            Ok(query.page(out))
        }

        async fn hours(&self, query: &SummaryQuery) -> Result<Vec<HourRow>, StoreError> {
            let ids = self.key_ids(&query.key_id).await?;
            let rows = futures_util::future::join_all(ids.iter().map(|id| self.key_hours(id, query))).await;
            let mut out = Vec::new();
            for r in rows {
                out.extend(r?);
            }
            Ok(out)
        }

        async fn last_used(&self, key_ids: &[String]) -> Result<Vec<Option<u64>>, StoreError> {
            // The newest record's time (exact), or the key item's coarser
            // `last_used_ms` when it is later (records expire).
            let each = futures_util::future::join_all(key_ids.iter().map(|id| async move {
                let (item, newest) = futures_util::future::join(
                    self.client
                        .get_item()
                        .table_name(&self.tables.keys)
                        .key("pk", s(format!("key#{id}")))
                        .projection_expression("last_used_ms")
                        .send(),
                    self.client
                        .query()
                        .table_name(&self.tables.usage)
                        .key_condition_expression("pk = :k")
                        .expression_attribute_values(":k", s(id.clone()))
                        .scan_index_forward(false)
                        .limit(1)
                        .projection_expression("sk")
                        .send(),
                )
                .await;
                let touched: Option<u64> = item
                    .map_err(err)?
                    .item
                    .and_then(|i| i.get("last_used_ms").and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok()));
                let newest: Option<u64> = newest
                    .map_err(err)?
                    .items()
                    .first()
                    .and_then(|i| get_s(i, "sk"))
                    .and_then(|sk| sk.get(..13))
                    .and_then(|ms| ms.parse().ok());
                Ok::<_, StoreError>(touched.max(newest))
            }))
            .await;
            each.into_iter().collect()
        }
    }
}
