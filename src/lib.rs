//! # Conduit
//!
//! An OpenAI-compatible LLM API gateway, as a platform-agnostic core.
//!
//! Applications keep their OpenAI SDK, point `base_url` at Conduit and send
//! a virtual key (`condt_…`). For every request the [`Gateway`] authenticates
//! the key, admits the request under its limits, routes the model alias to
//! a provider deployment, translates the request and the answer (streams
//! included), meters the usage and answers every failure in OpenAI's error
//! envelope. [`gateway`] tells the pipeline stage by stage.
//!
//! The core speaks `http` types and reaches the world only through the
//! [`ports`]: key store, usage store, upstream HTTP client, clock and
//! limiter. Platform adapters (`platforms/…`) implement them; the core
//! itself builds for `wasm32-unknown-unknown` as well as native targets,
//! with no runtime, no threads and no system clock.

// `Arc` everywhere: native targets share the gateway across threads; on
// wasm32 the same types are single-threaded and the `Arc` costs nothing.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

#[doc(hidden)]
pub use async_trait as __async_trait;

pub mod admin;
mod attempt;
pub mod compat;
pub mod config;
pub mod frontdoors;
pub mod gateway;
pub mod images;
pub mod keys;
pub mod memory;
pub mod metering;
pub mod observe;
pub mod ports;
pub mod providers;
pub mod routing;
mod stream;
pub mod ui;
pub mod wire;

pub use config::{Config, ConfigError};
pub use gateway::{Gateway, Ports, Response, ResponseBody};
pub use keys::VirtualKey;
pub use metering::usage::{TokenUsage, UsageRecord};
pub use wire::error::GatewayError;

/// A `HashMap` with foldhash (seeded per process) in place of SipHash, for
/// the maps a request looks up: their keys are names from the config and
/// ids or hashes the gateway made, not text a client chooses freely, so
/// SipHash's resistance to crafted collisions buys nothing there, and it
/// costs a few hundred instructions a lookup (callgrind). Build one with
/// `FastMap::default()`.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
