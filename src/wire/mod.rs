//! What travels on the wire whatever the dialect: server-sent events, the
//! one error type and its HTTP table, RFC 3339 time, and random bytes for
//! identifiers.

pub mod error;
pub mod random;
pub mod sse;
pub mod time;
