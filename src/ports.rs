//! The ports: the only ways the core reaches the world.
//!
//! Each platform adapter implements these small traits over its own
//! services (SQLite and tokio on the server; KV, Durable Objects and `fetch`
//! on Workers; DynamoDB on Lambda). [`crate::memory`] has in-memory versions
//! for tests. Declared through [`port!`](crate::port) so that futures are
//! `Send` on native targets and need not be on `wasm32`.

use std::time::Duration;

use bytes::Bytes;

use crate::compat::{BoxFuture, BoxStream, MaybeSendSync};
use crate::keys::VirtualKey;
use crate::metering::limits::{LimitStatus, Rejection, Reservation};
use crate::metering::summary::{HourRow, SummaryQuery};
use crate::metering::usage::{UsageQuery, UsageRecord};
use crate::port;
use crate::wire::error::GatewayError;

/// A failure of a store (keys, usage, limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<StoreError> for GatewayError {
    fn from(e: StoreError) -> Self {
        GatewayError::Store(e.0)
    }
}

port! {
    /// Where virtual keys live, indexed by id and by the SHA-256 of the secret.
    pub trait KeyStore: MaybeSendSync {
        /// The key whose secret hashes to `hash` (lower-case hex SHA-256).
        async fn find_by_hash(&self, hash: &str) -> Result<Option<VirtualKey>, StoreError>;
        async fn get(&self, id: &str) -> Result<Option<VirtualKey>, StoreError>;
        /// All keys, oldest first.
        async fn list(&self) -> Result<Vec<VirtualKey>, StoreError>;
        /// Stores a new key with the hash of its secret.
        async fn insert(&self, key: &VirtualKey, hash: &str) -> Result<(), StoreError>;
        /// Replaces the record of an existing key; `false` if there is none.
        async fn update(&self, key: &VirtualKey) -> Result<bool, StoreError>;
        /// Replaces the hash of an existing key (rotation); `false` if there is none.
        async fn set_hash(&self, id: &str, hash: &str) -> Result<bool, StoreError>;
        /// Removes a key; `false` if there was none.
        async fn delete(&self, id: &str) -> Result<bool, StoreError>;
    }
}

port! {
    /// Where usage records go, and how they are read back.
    pub trait UsageStore: MaybeSendSync {
        /// Writes a record. Runs off the response path: the gateway hands
        /// the future to the request's [`Spawner`] unless it completes at once.
        async fn record(&self, record: UsageRecord);
        /// One page of the records matching `query`: newest first (by
        /// `created_at_ms`, then `request_id`, both descending), strictly
        /// before `query.before`, at most `query.limit`.
        async fn query(&self, query: &UsageQuery) -> Result<Vec<UsageRecord>, StoreError>;
        /// The hourly counters (kept as records are written, never by
        /// scanning the records) matching `query`, in any order.
        async fn hours(&self, query: &SummaryQuery) -> Result<Vec<HourRow>, StoreError>;
        /// When each key last made a request (Unix ms), in the order of `key_ids`.
        async fn last_used(&self, key_ids: &[String]) -> Result<Vec<Option<u64>>, StoreError>;
    }
}

/// A response body as the upstream sends it.
pub type ByteStream = BoxStream<'static, Result<Bytes, UpstreamError>>;

/// The provider could not be reached, or the connection broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamError(pub String);

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

port! {
    /// An HTTP client for the providers. Returns as soon as the response
    /// head is in; the body streams. Dropping the body cancels the request.
    pub trait Upstream: MaybeSendSync {
        async fn send(&self, request: http::Request<Bytes>) -> Result<http::Response<ByteStream>, UpstreamError>;
    }
}

/// Runs work that must finish after the response is gone (settlement, usage
/// writes): `tokio::spawn` on the server, `ctx.wait_until` on Workers.
pub trait Spawner: MaybeSendSync {
    fn spawn(&self, task: BoxFuture<'static, ()>);
}

/// Time, from the platform.
pub trait Clock: MaybeSendSync {
    /// Microseconds since the Unix epoch.
    fn now_micros(&self) -> u64;
    /// A future that completes after `duration`.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}

/// What a request asks of its key's limits, known before the upstream call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Demand {
    /// SHA-256 of the secret the key was presented with (a limiter that is
    /// authoritative for the key's state checks it against the current one).
    pub key_hash: String,
    pub model: String,
    /// Estimated tokens: the prompt (approximated) plus the completion allowance.
    pub tokens: u64,
    /// Estimated cost in nano-USD (0 when the key has no budget).
    pub cost_nanos: u64,
    /// How long the reservation may stay unsettled before it is charged as is.
    pub ttl_secs: u64,
}

/// A granted admission: what the limiter reserved, to settle later.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Admission {
    /// The reservation, when the key has limits or a budget.
    pub reservation: Option<Reservation>,
    /// The key's remaining capacity after admission, for `x-ratelimit-*`.
    pub status: LimitStatus,
    /// The key's record as the limiter holds it, where the limiter is the
    /// authority and the key store may lag (a Durable Object, a strongly
    /// consistent read): the gateway re-checks the request against it.
    pub key: Option<VirtualKey>,
}

/// What settles a reservation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settlement {
    pub tokens: u64,
    pub cost_nanos: u64,
}

port! {
    /// Admission control: rate limits and budgets per key, with the
    /// semantics of [`crate::metering::limits`]. `admit` must be atomic per key.
    pub trait Limiter: MaybeSendSync {
        /// Admits (reserving what the request may use) or refuses with a
        /// 429/402 and the key's status (for the rate-limit headers).
        async fn admit(&self, key: &VirtualKey, demand: &Demand) -> Result<Admission, Rejection>;
        /// Replaces the reservation's estimates with actual use. Runs off
        /// the response path, like [`UsageStore::record`].
        async fn settle(&self, key: &VirtualKey, admission: &Admission, settlement: Settlement);
        /// The key's current use of its limits and budget.
        async fn status(&self, key: &VirtualKey) -> Result<LimitStatus, StoreError>;
        /// For requests without admission (`/v1/models`): may this key, as
        /// presented, still be used? Platforms whose key store is itself
        /// authoritative need not check anything.
        /// Returns the authoritative record where the limiter has one.
        async fn verify(&self, _key: &VirtualKey, _key_hash: &str) -> Result<Option<VirtualKey>, GatewayError> {
            Ok(None)
        }
        /// Whether the gateway may trust this limiter's record of a key (the
        /// `key` of an [`Admission`], or [`verify`](Self::verify)'s answer)
        /// for `[gateway] revocation_delay_ms`, and meanwhile admit a key
        /// without limits or budget without asking: edge platforms, where
        /// asking is a round trip to one place. `false` (the default): asked
        /// on every request.
        fn trust_for_revocation_delay(&self) -> bool {
            false
        }
    }
}

/// The limiter of a gateway without limits: admits everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoLimits;

port! {
    impl Limiter for NoLimits {
        async fn admit(&self, _key: &VirtualKey, _demand: &Demand) -> Result<Admission, Rejection> {
            Ok(Admission::default())
        }
        async fn settle(&self, _key: &VirtualKey, _admission: &Admission, _settlement: Settlement) {}
        async fn status(&self, _key: &VirtualKey) -> Result<LimitStatus, StoreError> {
            Ok(LimitStatus::default())
        }
    }
}
