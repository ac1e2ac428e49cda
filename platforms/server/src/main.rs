//! `conduit`: the native server and the operator's commands (see [`cli`]).
//!
//! `serve` builds the core's [`Gateway`] on the configured store and serves
//! it over hyper. `keys` and `usage` run the very admin API the server
//! exposes, in process, on the same store: one implementation of every
//! rule (validation, rotation, totals), whichever way an operator comes in.
//! `check` parses the config as `serve` would and reports what it would
//! serve, without starting anything.

mod check;
mod cli;
mod connection;
mod http;
mod metrics;
mod postgres;
mod settings;
mod shards;
mod store;
mod stores;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use conduit::ports::Clock;
use conduit::{Config, Gateway, Ports, ResponseBody};
use serde_json::{json, Map, Value};

use crate::cli::{Cli, Command, KeyFields, KeysCommand, StoreArgs, UsageArgs};
use conduit_native::{HyperUpstream, SystemClock, TokioSpawner};

/// With the `mimalloc` feature, mimalloc rather than glibc's malloc
/// (`malloc`/`free` are a sixth of a chat request's instructions; see the
/// feature's note in Cargo.toml for what it gains and costs).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => return check::run(&args),
        Command::Keys(command) => keys(command),
        Command::Usage(args) => usage(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("conduit: {message}");
            ExitCode::from(1)
        }
    }
}

/// The config text and a name for it in error messages: `--config FILE`,
/// else the text of `CONDUIT_CONFIG`, else (`required` false) nothing.
pub(crate) fn config_source(
    file: Option<&std::path::Path>,
    required: bool,
) -> Result<Option<(String, String)>, String> {
    match file {
        Some(path) => std::fs::read_to_string(path)
            .map(|t| Some((t, path.display().to_string())))
            .map_err(|e| format!("cannot read the config file {}: {e}", path.display())),
        None => match std::env::var("CONDUIT_CONFIG") {
            Ok(t) => Ok(Some((t, "CONDUIT_CONFIG".to_owned()))),
            Err(_) if required => {
                Err("no config: pass --config FILE or set CONDUIT_CONFIG".to_owned())
            }
            Err(_) => Ok(None),
        },
    }
}

fn serve(args: cli::ServeArgs) -> Result<(), String> {
    let (text, source) = config_source(args.store.config.as_deref(), true)?.unwrap_or_default();
    let config =
        Config::parse(&text, &source, &|var| std::env::var(var).ok()).map_err(|e| e.to_string())?;
    let mut server = settings::read(config.server.as_ref(), &source, &args.store)?;
    if let Some(listen) = args.listen {
        server.listen = listen;
    }
    if let Some(n) = args.workers {
        server.workers = Some(usize::from(n));
    }
    if let Some(kind) = args
        .runtime
        .as_deref()
        .and_then(settings::RuntimeKind::parse)
    {
        server.runtime = kind;
    }
    let master_key = std::env::var("CONDUIT_MASTER_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    if master_key.is_none() {
        eprintln!("conduit: CONDUIT_MASTER_KEY is not set: the admin API is disabled");
    }

    let workers = server.workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    // Per core: this thread's runtime is the first of `workers` shards (and
    // runs the store's background tasks), each with its own upstream pool;
    // `shards::run` starts the others. Shared: one shard, `workers` threads.
    let (mut builder, upstream, shard_count) = match server.runtime {
        settings::RuntimeKind::PerCore => (
            tokio::runtime::Builder::new_current_thread(),
            HyperUpstream::per_thread(),
            workers,
        ),
        settings::RuntimeKind::Shared => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers);
            (builder, HyperUpstream::new(), 1)
        }
    };
    let runtime = builder
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let result = runtime.block_on(async {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let store = stores::open(&server.store, clock.clone()).await?;
        let listener = http::listen(&server.listen, &server.connections).await?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let ports = Ports {
            keys: store.keys.clone(),
            usage: store.usage.clone(),
            upstream: Arc::new(upstream),
            clock,
            limiter: store.limiter.clone(),
            spawner: Arc::new(TokioSpawner),
        };
        let metrics = Arc::new(metrics::Metrics::new(
            &config,
            master_key.as_deref(),
            server.metrics_token.as_deref(),
        ));
        metrics::install(metrics.clone());
        let gateway =
            Arc::new(Gateway::new(config, ports, master_key.as_deref()).with_observer(metrics));
        eprintln!(
            "conduit: {} model aliases, {}",
            gateway.config().models.len(),
            store.description
        );
        println!("conduit listening on http://{local}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let serving = http::Serving {
            limits: server.client_limits,
            connections: server.connections,
            settle_before_end: store.settle_before_end(),
        };
        shards::run(listener, gateway, serving, shard_count).await;
        store.close();
        Ok::<(), String>(())
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Runs admin API calls in process, on the store the config names.
struct AdminSession {
    runtime: tokio::runtime::Runtime,
    gateway: Gateway,
    store: stores::OpenStore,
    master: String,
}

impl AdminSession {
    fn open(args: &StoreArgs) -> Result<AdminSession, String> {
        // Only `[server]` matters here: no provider is called, so no secret is needed.
        let (server_table, source) = match config_source(args.config.as_deref(), false)? {
            Some((text, source)) => {
                let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                    format!("config error in {source}: {}", e.message())
                })?;
                let server = match table.get("server") {
                    Some(toml::Value::Table(t)) => Some(t.clone()),
                    _ => None,
                };
                (server, source)
            }
            None => (None, "defaults".to_owned()),
        };
        let settings = settings::read(server_table.as_ref(), &source, args)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let store = runtime.block_on(stores::open(&settings.store, clock.clone()))?;
        let config = Config::parse("", "defaults", &|_| None).map_err(|e| e.to_string())?;
        let master = conduit::keys::generate_secret().map_err(|e| e.message())?;
        let ports = Ports {
            keys: store.keys.clone(),
            usage: store.usage.clone(),
            upstream: Arc::new(HyperUpstream::new()),
            clock,
            limiter: store.limiter.clone(),
            spawner: Arc::new(TokioSpawner),
        };
        let gateway = Gateway::new(config, ports, Some(&master));
        Ok(AdminSession {
            runtime,
            gateway,
            store,
            master,
        })
    }

    /// One admin API call; the JSON answer, or its error message.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let request = ::http::Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {}", self.master))
            .body(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default()))
            .map_err(|e| e.to_string())?;
        let response = self.runtime.block_on(self.gateway.handle(request));
        let status = response.status();
        let bytes = match response.into_body() {
            ResponseBody::Full(b) => b,
            ResponseBody::Stream(_) => return Err("unexpected stream".into()),
        };
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            Ok(value)
        } else {
            Err(value["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("HTTP {status}")))
        }
    }

    fn close(self) {
        self.store.close();
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

fn print_json(v: &Value) {
    out(&format!(
        "{}\n",
        serde_json::to_string_pretty(v).unwrap_or_default()
    ));
}

/// The admin API body fields the flags set.
fn key_body(fields: &KeyFields, body: &mut Map<String, Value>) -> Result<(), String> {
    if !fields.allowed_models.is_empty() {
        body.insert("allowed_models".into(), json!(fields.allowed_models));
    }
    if fields.rpm.is_some() || fields.rpd.is_some() || fields.tpm.is_some() {
        body.insert(
            "limits".into(),
            json!({"rpm": fields.rpm, "rpd": fields.rpd, "tpm": fields.tpm}),
        );
    }
    match (fields.budget_usd, &fields.budget_period) {
        (Some(usd), period) => {
            body.insert(
                "budget".into(),
                json!({"max_usd": usd, "period": period.as_deref().unwrap_or("total")}),
            );
        }
        (None, Some(_)) => return Err("--budget-period needs --budget-usd".into()),
        (None, None) => {}
    }
    if let Some(t) = &fields.expires_at {
        let v = t
            .parse::<u64>()
            .map(Value::from)
            .unwrap_or_else(|_| json!(t));
        body.insert("expires_at".into(), v);
    }
    if !fields.metadata.is_empty() {
        let mut m = Map::new();
        for entry in &fields.metadata {
            let (k, v) = entry
                .split_once('=')
                .ok_or_else(|| format!("--metadata takes KEY=VALUE, not {entry}"))?;
            m.insert(k.to_owned(), Value::String(v.to_owned()));
        }
        body.insert("metadata".into(), Value::Object(m));
    }
    Ok(())
}

fn keys(command: KeysCommand) -> Result<(), String> {
    let store_args = match &command {
        KeysCommand::Create(a) => &a.store,
        KeysCommand::List(a) => &a.store,
        KeysCommand::Show(a) | KeysCommand::Rotate(a) | KeysCommand::Revoke(a) => &a.store,
        KeysCommand::Update(a) => &a.store,
    };
    let session = AdminSession::open(store_args)?;
    let id_path = |id: &str| format!("/admin/keys/{}", percent_encode(id));
    let result = match &command {
        KeysCommand::Create(a) => {
            let mut body = Map::new();
            body.insert("name".into(), json!(a.name));
            key_body(&a.fields, &mut body)?;
            session
                .call("POST", "/admin/keys", Some(Value::Object(body)))
                .map(|v| {
                    print_json(&v);
                    eprintln!(
                        "conduit: key created in {} (the secret is shown only once)",
                        session.store.description
                    );
                })
        }
        KeysCommand::List(_) => session.call("GET", "/admin/keys", None).map(|v| {
            let data = v.get("data").cloned().unwrap_or(json!([]));
            print_json(&json!({"object": "list", "data": data}));
        }),
        KeysCommand::Show(a) => session
            .call("GET", &id_path(&a.id), None)
            .map(|v| print_json(&v)),
        KeysCommand::Update(a) => {
            let mut body = Map::new();
            if let Some(n) = &a.name {
                body.insert("name".into(), json!(n));
            }
            if a.enable || a.disable {
                body.insert("enabled".into(), json!(a.enable));
            }
            if a.clear_limits {
                body.insert("limits".into(), Value::Null);
            }
            if a.clear_budget {
                body.insert("budget".into(), Value::Null);
            }
            key_body(&a.fields, &mut body)?;
            if body.is_empty() {
                return Err("keys update: nothing to change (see --help)".into());
            }
            session
                .call("PATCH", &id_path(&a.id), Some(Value::Object(body)))
                .map(|v| print_json(&v))
        }
        KeysCommand::Rotate(a) => session
            .call("POST", &format!("{}/rotate", id_path(&a.id)), None)
            .map(|v| print_json(&v)),
        KeysCommand::Revoke(a) => session
            .call("DELETE", &id_path(&a.id), None)
            .map(|v| print_json(&v)),
    };
    session.close();
    result
}

fn usage(args: UsageArgs) -> Result<(), String> {
    let session = AdminSession::open(&args.store)?;
    // The admin summary (kept as records are written): day buckets, the last
    // 30 days unless --since says otherwise.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let since = args
        .since
        .clone()
        .unwrap_or_else(|| (now.saturating_sub(30 * 86_400)).to_string());
    let mut query = vec![
        "bucket=day".to_owned(),
        format!("since={}", percent_encode(&since)),
    ];
    for (k, v) in [("key_id", &args.key), ("until", &args.until)] {
        if let Some(v) = v {
            query.push(format!("{k}={}", percent_encode(v)));
        }
    }
    let path = format!("/admin/usage/summary?{}", query.join("&"));
    let result = session.call("GET", &path, None).map(|v| {
        if args.json {
            print_json(&v);
        } else {
            out(&usage_table(&v));
        }
    });
    session.close();
    result
}

/// `GET /admin/usage/summary` as a table: the top keys, the top models, the total.
fn usage_table(summary: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "usage from {} to {}",
        summary["since"].as_str().unwrap_or(""),
        summary["until"].as_str().unwrap_or("")
    );
    let line = |out: &mut String, group: &str, name: &str, t: &Value| {
        let n = |k: &str| t[k].as_u64().unwrap_or(0);
        let _ = writeln!(
            out,
            "{group:<6} {name:<32} {:>9} {:>7} {:>8} {:>12} {:>12} {:>14.6}",
            n("requests"),
            n("errors"),
            n("refused"),
            n("prompt_tokens"),
            n("completion_tokens"),
            t["cost_usd"].as_f64().unwrap_or(0.0)
        );
    };
    let _ = writeln!(
        out,
        "{:<6} {:<32} {:>9} {:>7} {:>8} {:>12} {:>12} {:>14}",
        "", "", "REQUESTS", "ERRORS", "REFUSED", "PROMPT", "COMPLETION", "COST (USD)"
    );
    for (group, field, id) in [
        ("key", "top_keys", "key_id"),
        ("model", "top_models", "model"),
    ] {
        for row in summary[field].as_array().into_iter().flatten() {
            line(&mut out, group, row[id].as_str().unwrap_or(""), row);
        }
    }
    line(&mut out, "total", "", &summary["totals"]);
    out
}

/// Escapes what a path segment or query value cannot hold.
fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
