//! What travels on the wire whatever the dialect: server-sent events, the
//! one error type and its HTTP table, and RFC 3339 time.

pub mod error;
pub mod sse;
pub mod time;
