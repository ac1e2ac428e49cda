//! The command line: what an operator types, parsed by clap.
//!
//! ```text
//! conduit serve  [--config FILE] [--listen ADDR] [--database PATH] [--workers N] [--runtime per-core|shared] [--store KIND]
//! conduit check  --config FILE
//! conduit keys   create|list|show|update|rotate|revoke …
//! conduit usage  [--key ID] [--since T] [--until T] [--json]
//! ```
//!
//! Every subcommand answers `--help` and `--version`. Options an operator
//! sets per deployment are also read from `CONDUIT_*` variables (flag wins).
//! Without `--config` the TOML config is the text of `CONDUIT_CONFIG`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "conduit",
    version,
    about = "Conduit: an OpenAI-compatible LLM API gateway (native server and operator commands).",
    after_help = "The config is the TOML file given by --config (or CONDUIT_CONFIG_FILE), else the TOML text of CONDUIT_CONFIG.\nCONDUIT_MASTER_KEY enables the admin API (/admin/...) and the web UI.",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the gateway over HTTP until SIGTERM/SIGINT.
    Serve(ServeArgs),
    /// Validate a config and say what it would serve, without starting.
    Check(CheckArgs),
    /// Manage virtual keys in the configured store.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Usage totals (and records with --json) from the configured store.
    Usage(UsageArgs),
}

/// Where the config and the store are: shared by every subcommand that opens the store.
#[derive(Args, Debug, Clone, Default)]
pub struct StoreArgs {
    /// The TOML config file (else the TOML text of CONDUIT_CONFIG).
    #[arg(long, short = 'c', env = "CONDUIT_CONFIG_FILE", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where state is kept: overrides `[server] store`.
    #[arg(long, env = "CONDUIT_STORE", value_enum, value_name = "KIND")]
    pub store: Option<StoreKind>,
    /// The SQLite file: overrides `[server] database` (and implies --store sqlite when nothing else says).
    #[arg(long, env = "CONDUIT_DATABASE", value_name = "PATH")]
    pub database: Option<PathBuf>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
    Dynamodb,
}

impl StoreKind {
    pub fn parse(s: &str) -> Option<StoreKind> {
        match s {
            "sqlite" => Some(StoreKind::Sqlite),
            "postgres" | "postgresql" => Some(StoreKind::Postgres),
            "dynamodb" => Some(StoreKind::Dynamodb),
            _ => None,
        }
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The address to listen on: overrides `[server] listen` (default 127.0.0.1:5000).
    #[arg(long, env = "CONDUIT_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Threads serving requests: overrides `[server] workers` (default: one per core).
    #[arg(long, env = "CONDUIT_WORKERS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// `per-core` (a single-threaded runtime per worker) or `shared` (one
    /// work-stealing runtime): overrides `[server] runtime` (default per-core).
    #[arg(long, env = "CONDUIT_RUNTIME", value_name = "KIND", value_parser = ["per-core", "shared"])]
    pub runtime: Option<String>,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The TOML config file to check (else the TOML text of CONDUIT_CONFIG).
    #[arg(long, short = 'c', env = "CONDUIT_CONFIG_FILE", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key; its secret is printed once.
    Create(KeyCreateArgs),
    /// List every key (never a secret).
    List(KeyListArgs),
    /// Show one key.
    Show(KeyIdArgs),
    /// Change a key: only the fields given change.
    Update(KeyUpdateArgs),
    /// Give a key a new secret (printed once); the old one stops working.
    Rotate(KeyIdArgs),
    /// Delete a key: its secret stops working at once.
    Revoke(KeyIdArgs),
}

/// A key's settings, as flags; each maps to a field of the admin API's key body.
#[derive(Args, Debug, Default)]
pub struct KeyFields {
    /// An alias (or `prefix*`) the key may use; repeat for more. None: every alias.
    #[arg(long = "allowed-model", value_name = "MODEL")]
    pub allowed_models: Vec<String>,
    /// Requests per minute.
    #[arg(long, value_name = "N")]
    pub rpm: Option<u64>,
    /// Requests per UTC day.
    #[arg(long, value_name = "N")]
    pub rpd: Option<u64>,
    /// Tokens per minute.
    #[arg(long, value_name = "N")]
    pub tpm: Option<u64>,
    /// Budget in USD for each period.
    #[arg(long = "budget-usd", value_name = "USD")]
    pub budget_usd: Option<f64>,
    /// The budget's period.
    #[arg(long = "budget-period", value_name = "PERIOD", value_parser = ["daily", "weekly", "monthly", "total"])]
    pub budget_period: Option<String>,
    /// Expiry: RFC 3339 or Unix seconds.
    #[arg(long = "expires-at", value_name = "TIME")]
    pub expires_at: Option<String>,
    /// Metadata entry KEY=VALUE; repeat for more.
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
}

#[derive(Args, Debug)]
pub struct KeyCreateArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The key's name.
    #[arg(long, value_name = "NAME")]
    pub name: String,
    #[command(flatten)]
    pub fields: KeyFields,
}

#[derive(Args, Debug)]
pub struct KeyListArgs {
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args, Debug)]
pub struct KeyIdArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The key's id (`key_…`).
    pub id: String,
}

#[derive(Args, Debug)]
pub struct KeyUpdateArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The key's id (`key_…`).
    pub id: String,
    /// A new name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Enable the key.
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    /// Disable the key (requests get 401 until enabled again).
    #[arg(long)]
    pub disable: bool,
    /// Remove every limit.
    #[arg(long = "clear-limits")]
    pub clear_limits: bool,
    /// Remove the budget.
    #[arg(long = "clear-budget")]
    pub clear_budget: bool,
    #[command(flatten)]
    pub fields: KeyFields,
}

#[derive(Args, Debug)]
pub struct UsageArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only this key's usage.
    #[arg(long = "key", value_name = "ID")]
    pub key: Option<String>,
    /// From this time (RFC 3339 or Unix seconds).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Until this time (RFC 3339 or Unix seconds).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Print the admin API's JSON (records and totals) instead of a table.
    #[arg(long)]
    pub json: bool,
}
