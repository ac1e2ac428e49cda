//! `conduit`: the native server and its key-management commands.
//!
//! ```text
//! conduit serve [--config FILE] [--listen ADDR] [--database PATH] [--workers N]
//! conduit keys create --name NAME [--allowed-model M]... [--config FILE | --database PATH]
//! conduit keys list [--config FILE | --database PATH]
//! conduit keys revoke ID [--config FILE | --database PATH]
//! ```
//!
//! The config is the TOML file given by `--config`, else the text of the
//! environment variable `CONDUIT_CONFIG`. The admin API's master key comes
//! from `CONDUIT_MASTER_KEY`.

mod http;
mod store;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use conduit::keys::{generate_secret, hash_secret, random_id, VirtualKey};
use conduit::limits::LocalLimiter;
use conduit::ports::KeyStore;
use conduit::Ports;
use conduit::{Config, Gateway};
use serde_json::{json, Value};

use crate::http::ClientLimits;
use crate::store::SqliteStore;
use conduit_native::{HyperUpstream, SystemClock, TokioSpawner};

const USAGE: &str = "\
usage:
  conduit serve [--config FILE] [--listen ADDR] [--database PATH] [--workers N]
  conduit keys create --name NAME [--allowed-model MODEL]... [--config FILE | --database PATH]
  conduit keys list [--config FILE | --database PATH]
  conduit keys revoke ID [--config FILE | --database PATH]

Without --config the TOML config is read from the environment variable CONDUIT_CONFIG.
CONDUIT_MASTER_KEY enables the admin API (/admin/...).";

const DEFAULT_LISTEN: &str = "127.0.0.1:5000";
const DEFAULT_DATABASE: &str = "conduit.db";

/// Parsed command-line options.
#[derive(Default)]
struct Options {
    positional: Vec<String>,
    config: Option<PathBuf>,
    listen: Option<String>,
    database: Option<PathBuf>,
    workers: Option<String>,
    name: Option<String>,
    allowed_models: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag {
            "--config" | "-c" => o.config = Some(PathBuf::from(value(flag)?)),
            "--listen" => o.listen = Some(value(flag)?),
            "--database" => o.database = Some(PathBuf::from(value(flag)?)),
            "--workers" => o.workers = Some(value(flag)?),
            "--name" => o.name = Some(value(flag)?),
            "--allowed-model" => o.allowed_models.push(value(flag)?),
            f if f.starts_with('-') => return Err(format!("unknown option {f}")),
            _ => o.positional.push(arg.clone()),
        }
    }
    Ok(o)
}

/// The config text and a name for it in error messages.
fn config_source(o: &Options) -> Result<(String, String), String> {
    match &o.config {
        Some(path) => std::fs::read_to_string(path)
            .map(|t| (t, path.display().to_string()))
            .map_err(|e| format!("cannot read the config file {}: {e}", path.display())),
        None => std::env::var("CONDUIT_CONFIG")
            .map(|t| (t, "CONDUIT_CONFIG".to_owned()))
            .map_err(|_| "no config: pass --config FILE or set CONDUIT_CONFIG".to_owned()),
    }
}

/// A `[server]` setting, checked to be a string.
fn server_setting(
    server: Option<&toml::Table>,
    key: &str,
    source: &str,
) -> Result<Option<String>, String> {
    match server.and_then(|s| s.get(key)) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!(
            "config error in {source}: `server.{key}`: must be a string"
        )),
    }
}

/// A `[server]` setting, checked to be a whole number from 1 to `max`.
fn server_number(
    server: Option<&toml::Table>,
    key: &str,
    max: u64,
    source: &str,
) -> Result<Option<u64>, String> {
    match server.and_then(|s| s.get(key)) {
        None => Ok(None),
        Some(toml::Value::Integer(n)) if (1..=max as i64).contains(n) => Ok(Some(*n as u64)),
        Some(_) => Err(format!(
            "config error in {source}: `server.{key}`: must be an integer from 1 to {max}"
        )),
    }
}

/// `[server]` `header_read_timeout_ms`, `body_read_timeout_ms`, `max_header_bytes`.
fn client_limits(server: Option<&toml::Table>, source: &str) -> Result<ClientLimits, String> {
    let mut limits = ClientLimits::default();
    if let Some(ms) = server_number(server, "header_read_timeout_ms", 3_600_000, source)? {
        limits.header_read_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = server_number(server, "body_read_timeout_ms", 3_600_000, source)? {
        limits.body_read_timeout = Duration::from_millis(ms);
    }
    if let Some(n) = server_number(server, "max_header_bytes", 16 * 1024 * 1024, source)? {
        limits.max_header_bytes = n as usize;
    }
    Ok(limits)
}

fn database_for_keys(o: &Options) -> Result<PathBuf, String> {
    if let Some(db) = &o.database {
        return Ok(db.clone());
    }
    if o.config.is_none() && std::env::var_os("CONDUIT_CONFIG").is_none() {
        return Ok(PathBuf::from(DEFAULT_DATABASE));
    }
    let (text, source) = config_source(o)?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("config error in {source}: {}", e.message()))?;
    let server = match table.get("server") {
        Some(toml::Value::Table(t)) => Some(t),
        _ => None,
    };
    Ok(server_setting(server, "database", &source)?
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATABASE)))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => parse_args(&args[1..]).and_then(serve),
        Some("keys") => parse_args(&args[1..]).and_then(keys),
        Some("--version" | "-V") => {
            println!("conduit {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Some("--help" | "-h" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("conduit: {message}");
            ExitCode::from(2)
        }
    }
}

fn serve(o: Options) -> Result<(), String> {
    if let Some(extra) = o.positional.first() {
        return Err(format!("unexpected argument {extra}"));
    }
    let (text, source) = config_source(&o)?;
    let config =
        Config::parse(&text, &source, &|var| std::env::var(var).ok()).map_err(|e| e.to_string())?;
    let listen = match o.listen.clone() {
        Some(l) => l,
        None => server_setting(config.server.as_ref(), "listen", &source)?
            .unwrap_or_else(|| DEFAULT_LISTEN.into()),
    };
    let database = match o.database.clone() {
        Some(d) => d,
        None => server_setting(config.server.as_ref(), "database", &source)?
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATABASE)),
    };
    let workers = match o.workers.clone() {
        Some(w) => Some(w),
        None => match config.server.as_ref().and_then(|s| s.get("workers")) {
            None => None,
            Some(toml::Value::Integer(n)) => Some(n.to_string()),
            Some(_) => {
                return Err(format!(
                    "config error in {source}: `server.workers`: must be an integer"
                ))
            }
        },
    };
    let workers = match workers {
        None => None,
        Some(w) => match w.parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Some(n),
            _ => {
                return Err(format!(
                    "`workers` must be an integer from 1 to 1024, not {w}"
                ))
            }
        },
    };
    let client_limits = client_limits(config.server.as_ref(), &source)?;
    let master_key = std::env::var("CONDUIT_MASTER_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    if master_key.is_none() {
        eprintln!("conduit: CONDUIT_MASTER_KEY is not set: the admin API is disabled");
    }

    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    let runtime = builder
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let store = SqliteStore::open(&database)
        .map_err(|e| format!("cannot open the database {}: {e}", database.display()))?;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let clock = Arc::new(SystemClock);
        let ports = Ports {
            keys: store.clone(),
            usage: store.clone(),
            upstream: Arc::new(HyperUpstream::new()),
            clock: clock.clone(),
            limiter: Arc::new(LocalLimiter::new(clock, Some(store.clone()))),
            spawner: Arc::new(TokioSpawner),
        };
        let gateway = Arc::new(Gateway::new(config, ports, master_key.as_deref()));
        eprintln!(
            "conduit: {} model aliases, database {}",
            gateway.config().models.len(),
            database.display()
        );
        println!("conduit listening on http://{local}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        http::run(listener, gateway, client_limits).await;
        Ok::<(), String>(())
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    store.close();
    result
}

fn keys(o: Options) -> Result<(), String> {
    let database = database_for_keys(&o)?;
    let store = SqliteStore::open(&database)
        .map_err(|e| format!("cannot open the database {}: {e}", database.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let result = runtime.block_on(keys_command(&o, store.as_ref(), &database));
    store.close();
    result
}

async fn keys_command(o: &Options, store: &SqliteStore, database: &Path) -> Result<(), String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let print = |v: &Value| println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    match o.positional.first().map(String::as_str) {
        Some("create") => {
            let name = o.name.clone().ok_or("keys create needs --name NAME")?;
            let body = json!({"name": name, "allowed_models": o.allowed_models});
            let key = VirtualKey::from_create_body(&body, random_id("key_"), now)
                .map_err(|e| e.message())?;
            let secret = generate_secret().map_err(|e| e.message())?;
            store
                .insert(&key, &hash_secret(&secret))
                .await
                .map_err(|e| e.to_string())?;
            let mut view = key.to_json();
            if let Some(obj) = view.as_object_mut() {
                obj.insert("key".into(), Value::String(secret));
            }
            print(&view);
            eprintln!(
                "conduit: key created in {} (the secret is shown only once)",
                database.display()
            );
            Ok(())
        }
        Some("list") => {
            let keys = store.list().await.map_err(|e| e.to_string())?;
            print(
                &json!({"object": "list", "data": keys.iter().map(VirtualKey::to_json).collect::<Vec<_>>()}),
            );
            Ok(())
        }
        Some("revoke") => {
            let id = o.positional.get(1).ok_or("keys revoke needs the key id")?;
            if store.delete(id).await.map_err(|e| e.to_string())? {
                print(&json!({"id": id, "object": "virtual_key", "deleted": true}));
                Ok(())
            } else {
                Err(format!("no virtual key with id {id}"))
            }
        }
        _ => Err(USAGE.to_owned()),
    }
}
