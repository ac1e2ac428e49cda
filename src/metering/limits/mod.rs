//! Admission arithmetic: rate limits and budgets of one key, as a pure state
//! machine that every platform runs the same way.
//!
//! A platform only has to make [`KeyLimitState::admit`] and
//! [`KeyLimitState::settle`] atomic per key (a mutex on the server, the
//! single-threaded Durable Object on Workers, a conditional write on the
//! state's version in DynamoDB); the rules live here, once.
//!
//! ## Windows
//! - **Per minute** (`rpm`, `tpm`): a sliding window of 60 one-second
//!   buckets. A request is admitted when the requests (tokens) admitted in
//!   the current second and the 59 before it, plus its own, stay within the
//!   limit. So a key with `rpm = N` gets exactly N requests in any such
//!   window, bursts included. `Retry-After` is the number of seconds until
//!   enough of the oldest buckets leave the window for the request to fit.
//! - **Per day** (`rpd`): the UTC calendar day. `Retry-After` runs to the
//!   next UTC midnight.
//! - **Budget**: `daily`, `weekly` (Monday 00:00 UTC) and `monthly` (the 1st,
//!   00:00 UTC) periods, or `total` (never resets). A request is refused when
//!   spent + reserved + its own estimated cost would exceed `max_usd`.
//!
//! ## Reservations
//! Admission reserves one request, the estimated tokens (counted in the
//! bucket of the admission second) and the estimated cost. Settlement
//! replaces the estimates with the actual usage. A reservation that is never
//! settled (the process died mid-request) expires after `ttl` and is then
//! charged at its estimate: usage is never lost, and never counted twice.
//!
//! ## Files
//! - `state.rs`: [`KeyLimitState`], the per-key state machine (windows,
//!   day, budget, reservations);
//! - `counters.rs`: the same rules over separate counters updated under
//!   conditions (DynamoDB), so that a hot key's admissions do not collide;
//! - `answer.rs`: refusals as the client sees them (errors, headers);
//! - `lease.rs`: leases, slices of a key's capacity that an isolate or a
//!   container spends locally (the edge platforms' hot keys), and the
//!   carrying of their settlements back to the key's authority;
//! - `estimate.rs`: what a request may use, estimated before the call;
//! - `local.rs`: the single-process [`LocalLimiter`] (the native server).

mod answer;
pub mod counters;
mod estimate;
pub mod lease;
mod local;
mod state;
#[cfg(test)]
mod tests;

pub use answer::*;
pub use estimate::*;
pub use local::*;
pub use state::*;
