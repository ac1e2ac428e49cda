//! `conduit check`: parses the config exactly as `serve` would and says what
//! it would serve (aliases, deployments, prices, the store), and what is
//! wrong: a config error, a `[server]` error, a secret missing from the
//! environment. Exit code 0 when `serve` would start, 1 when not, 2 for a
//! usage error (clap's). Never prints a secret's value.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::process::ExitCode;

use conduit::Config;
use serde_json::{json, Value};

use crate::cli::{CheckArgs, StoreArgs};
use crate::settings::{self, StoreSettings};

/// USD per million tokens, from the integer nano-USD form.
fn per_million(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

pub fn run(args: &CheckArgs) -> ExitCode {
    match report(args) {
        Ok((report, ok)) => {
            if args.json {
                crate::out(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                ));
            } else {
                crate::out(&text(&report));
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(message) => {
            eprintln!("conduit: {message}");
            ExitCode::from(1)
        }
    }
}

/// The report, and whether `serve` would start with it.
fn report(args: &CheckArgs) -> Result<(Value, bool), String> {
    let (text, source) = crate::config_source(args.config.as_deref(), true)?.unwrap_or_default();
    // Every secret the config names is looked up; a missing one is reported
    // (not fatal to the report) and given a placeholder so parsing goes on.
    let missing: RefCell<BTreeSet<String>> = RefCell::default();
    let config = Config::parse(&text, &source, &|var| match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            missing.borrow_mut().insert(var.to_owned());
            Some("unset".into())
        }
    })
    .map_err(|e| e.to_string())?;
    let missing = missing.into_inner();
    let server = settings::read(config.server.as_ref(), &source, &StoreArgs::default())?;

    let kinds: toml::Table = text.parse().unwrap_or_default();
    let kind_of = |provider: &str| {
        kinds
            .get("providers")
            .and_then(|p| p.get(provider))
            .and_then(|p| p.get("kind"))
            .and_then(toml::Value::as_str)
            .unwrap_or("?")
            .to_owned()
    };
    let aliases: Vec<Value> = config
        .models
        .values()
        .map(|route| {
            json!({
                "alias": route.alias,
                "deployments": route.deployments.iter().map(|d| json!({
                    "provider": &*d.provider_name,
                    "kind": kind_of(&d.provider_name),
                    "model": d.model,
                    "price_per_million": d.price.map(|p| json!({
                        "input": per_million(p.input),
                        "output": per_million(p.output),
                        "cached_input": p.cached_input.map(per_million),
                    })),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let store = match &server.store {
        StoreSettings::Sqlite { database } => {
            json!({"kind": "sqlite", "database": database.display().to_string()})
        }
        StoreSettings::Postgres { url_env, .. } => {
            json!({"kind": "postgres", "url_env": url_env, "url_set": std::env::var(url_env).is_ok_and(|v| !v.is_empty())})
        }
        StoreSettings::Dynamodb {
            keys_table,
            usage_table,
            ..
        } => json!({"kind": "dynamodb", "keys_table": keys_table, "usage_table": usage_table}),
    };
    let mut problems: Vec<String> = missing
        .iter()
        .map(|v| format!("the environment variable {v} (a provider secret) is not set"))
        .collect();
    if let StoreSettings::Postgres { url_env, .. } = &server.store {
        if !std::env::var(url_env).is_ok_and(|v| !v.is_empty()) {
            problems.push(format!(
                "the environment variable {url_env} (the PostgreSQL URL) is not set"
            ));
        }
    }
    if std::env::var("CONDUIT_MASTER_KEY").map_or(true, |v| v.is_empty()) {
        // Not fatal: the gateway serves, only the admin API and the UI are off.
        problems.push(
            "note: CONDUIT_MASTER_KEY is not set: the admin API and the web UI will be disabled"
                .into(),
        );
    }
    let ok = problems.iter().all(|p| p.starts_with("note:"));
    Ok((
        json!({
            "source": source,
            "ok": ok,
            "listen": server.listen,
            "store": store,
            "aliases": aliases,
            "problems": problems,
        }),
        ok,
    ))
}

fn text(report: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "config {}: {}",
        report["source"].as_str().unwrap_or(""),
        if report["ok"] == true { "ok" } else { "NOT OK" }
    );
    let _ = writeln!(out, "listen {}", report["listen"].as_str().unwrap_or(""));
    let _ = writeln!(out, "store  {}", report["store"]);
    let aliases = report["aliases"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "{} model aliases:", aliases.len());
    for a in &aliases {
        let _ = writeln!(out, "  {}", a["alias"].as_str().unwrap_or(""));
        for d in a["deployments"].as_array().into_iter().flatten() {
            let price = match d["price_per_million"].as_object() {
                Some(p) => format!("${} in / ${} out per 1M tokens", p["input"], p["output"]),
                None => "price unknown (keys with a budget cannot use it)".into(),
            };
            let _ = writeln!(
                out,
                "    -> {} ({}) {}: {price}",
                d["provider"].as_str().unwrap_or(""),
                d["kind"].as_str().unwrap_or(""),
                d["model"].as_str().unwrap_or("")
            );
        }
    }
    for p in report["problems"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "{}", p.as_str().unwrap_or(""));
    }
    out
}
