//! Metering: what a key may spend and what each request cost.
//!
//! - [`limits`]: the admission state machine (rate limits, budgets,
//!   reservations and their settlement), pure code that every platform runs;
//! - [`pricing`]: prices and cost in integer nano-USD;
//! - [`usage`]: what one request consumed, as recorded;
//! - [`usage_batch`]: the rule batching usage records per key before a
//!   remote store (count and age, `now` passed in);
//! - [`meter`]: exactly one usage record and one settlement per request;
//! - [`summary`]: the hourly counters behind `GET /admin/usage/summary`.

pub mod limits;
pub(crate) mod meter;
pub mod pricing;
pub mod summary;
pub mod usage;
pub mod usage_batch;
