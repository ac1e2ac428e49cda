//! `[server]`: the native server's own settings, read from the config's
//! `[server]` table (the core ignores it) and overridden by the command line.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:5000"
//! workers = 2                               # threads serving requests (default: one per core)
//! runtime = "per-core"                      # per-core (default) | shared: see [`RuntimeKind`]
//! store = "sqlite"                          # sqlite (default) | postgres | dynamodb
//! database = "conduit.db"                   # sqlite: the file
//! postgres_url_env = "CONDUIT_POSTGRES_URL" # postgres: the variable holding the URL
//! postgres_pool_size = 16
//! dynamodb_keys_table = "conduit-keys"
//! dynamodb_usage_table = "conduit-usage"
//! dynamodb_create_tables = false            # or CONDUIT_CREATE_TABLES=1
//! header_read_timeout_ms = 10000
//! body_read_timeout_ms = 60000
//! max_header_bytes = 65536
//! metrics_token_env = "CONDUIT_METRICS_TOKEN" # GET /metrics: this token (or the master key)
//! keep_alive_timeout_ms = 30000
//! max_connections = 4096
//! http2 = true                              # h2c (prior knowledge) beside HTTP/1.1
//! reuse_address = true                      # SO_REUSEADDR on the listener
//! ```

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{StoreArgs, StoreKind};
use crate::http::{ClientLimits, ConnectionLimits};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:5000";
pub const DEFAULT_DATABASE: &str = "conduit.db";

/// Where the server keeps its state.
#[derive(Debug, Clone)]
pub enum StoreSettings {
    Sqlite {
        database: PathBuf,
    },
    Postgres {
        /// The variable that holds the URL (the URL itself never sits in the file).
        url_env: String,
        pool_size: usize,
    },
    Dynamodb {
        keys_table: String,
        usage_table: String,
        create_tables: bool,
    },
}

/// How the threads that serve requests are organised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// One single-threaded tokio runtime per worker, each with its own
    /// connections, timers and upstream pool: a request and the upstream
    /// connection it reads from stay on one thread, with no cross-thread
    /// wake-ups (as nginx's worker processes).
    PerCore,
    /// One multi-threaded tokio runtime whose workers steal each other's
    /// tasks: evens out a few very uneven connections.
    Shared,
}

impl RuntimeKind {
    pub fn parse(s: &str) -> Option<RuntimeKind> {
        match s {
            "per-core" => Some(RuntimeKind::PerCore),
            "shared" => Some(RuntimeKind::Shared),
            _ => None,
        }
    }
}

/// Everything `[server]` says, checked.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: String,
    pub workers: Option<usize>,
    pub runtime: RuntimeKind,
    pub store: StoreSettings,
    pub client_limits: ClientLimits,
    /// A token for `GET /metrics` besides the master key.
    pub metrics_token: Option<String>,
    pub connections: ConnectionLimits,
}

/// Reads `[server]` from `table` (`source` names it in errors), with the
/// command line's store options on top.
pub fn read(
    table: Option<&toml::Table>,
    source: &str,
    args: &StoreArgs,
) -> Result<ServerSettings, String> {
    let text = |key: &str| -> Result<Option<String>, String> {
        match table.and_then(|s| s.get(key)) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!(
                "config error in {source}: `server.{key}`: must be a string"
            )),
        }
    };
    let number = |key: &str, max: u64| -> Result<Option<u64>, String> {
        match table.and_then(|s| s.get(key)) {
            None => Ok(None),
            Some(toml::Value::Integer(n)) if (1..=max as i64).contains(n) => Ok(Some(*n as u64)),
            Some(_) => Err(format!(
                "config error in {source}: `server.{key}`: must be an integer from 1 to {max}"
            )),
        }
    };
    let flag = |key: &str| -> Result<Option<bool>, String> {
        match table.and_then(|s| s.get(key)) {
            None => Ok(None),
            Some(toml::Value::Boolean(b)) => Ok(Some(*b)),
            Some(_) => Err(format!(
                "config error in {source}: `server.{key}`: must be true or false"
            )),
        }
    };

    let kind = match (args.store, text("store")?) {
        (Some(kind), _) => kind,
        (None, Some(s)) => StoreKind::parse(&s).ok_or_else(|| {
            format!("config error in {source}: `server.store`: must be sqlite, postgres or dynamodb, not `{s}`")
        })?,
        (None, None) => StoreKind::Sqlite,
    };
    let store = match kind {
        StoreKind::Sqlite => StoreSettings::Sqlite {
            database: match &args.database {
                Some(d) => d.clone(),
                None => PathBuf::from(text("database")?.unwrap_or_else(|| DEFAULT_DATABASE.into())),
            },
        },
        StoreKind::Postgres => StoreSettings::Postgres {
            url_env: text("postgres_url_env")?.unwrap_or_else(|| "CONDUIT_POSTGRES_URL".into()),
            pool_size: number("postgres_pool_size", 1024)?.unwrap_or(16) as usize,
        },
        StoreKind::Dynamodb => StoreSettings::Dynamodb {
            keys_table: text("dynamodb_keys_table")?.unwrap_or_else(|| "conduit-keys".into()),
            usage_table: text("dynamodb_usage_table")?.unwrap_or_else(|| "conduit-usage".into()),
            create_tables: flag("dynamodb_create_tables")?.unwrap_or(false)
                || std::env::var("CONDUIT_CREATE_TABLES").is_ok_and(|v| v == "1"),
        },
    };

    let mut client_limits = ClientLimits::default();
    if let Some(ms) = number("header_read_timeout_ms", 3_600_000)? {
        client_limits.header_read_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = number("body_read_timeout_ms", 3_600_000)? {
        client_limits.body_read_timeout = Duration::from_millis(ms);
    }
    if let Some(n) = number("max_header_bytes", 16 * 1024 * 1024)? {
        client_limits.max_header_bytes = n as usize;
    }
    // `GET /metrics`: the token itself, or (kept out of the file) the variable holding it.
    let metrics_token = match (text("metrics_token")?, text("metrics_token_env")?) {
        (Some(t), _) => Some(t),
        (None, Some(var)) => std::env::var(&var).ok(),
        (None, None) => None,
    }
    .filter(|t| !t.is_empty());
    let mut connections = ConnectionLimits::default();
    if let Some(ms) = number("keep_alive_timeout_ms", 3_600_000)? {
        connections.keep_alive_timeout = Duration::from_millis(ms);
    }
    if let Some(n) = number("max_connections", 1_000_000)? {
        connections.max_connections = n as usize;
    }
    if let Some(b) = flag("http2")? {
        connections.http2 = b;
    }
    if let Some(b) = flag("reuse_address")? {
        connections.reuse_address = b;
    }
    let runtime = match text("runtime")? {
        None => RuntimeKind::PerCore,
        Some(s) => RuntimeKind::parse(&s).ok_or_else(|| {
            format!(
                "config error in {source}: `server.runtime`: must be per-core or shared, not `{s}`"
            )
        })?,
    };
    Ok(ServerSettings {
        metrics_token,
        runtime,
        listen: text("listen")?.unwrap_or_else(|| DEFAULT_LISTEN.into()),
        workers: number("workers", 1024)?.map(|n| n as usize),
        store,
        client_limits,
        connections,
    })
}
