//! The gateway's configuration: one TOML document, the same on every platform.
//!
//! ```toml
//! [server]                  # read by the native server only; ignored here
//! [providers.openai]        # the table key is the provider's name
//! kind = "openai"           # openai | azure | openai-compatible
//! base_url = "https://api.openai.com/v1"
//! api_key_env = "OPENAI_API_KEY"
//! [models."my-gpt4"]        # the alias clients send
//! deployments = [{ provider = "openai", model = "gpt-4o" }]
//! [gateway]                 # optional
//! max_body_bytes = 10485760
//! max_response_bytes = 33554432
//! upstream_timeout_ms = 600000
//! ```
//!
//! Provider secrets never live in the file: `api_key_env` names the
//! environment variable (or Worker secret) that holds them, looked up through
//! the function the adapter passes to [`Config::parse`]. Every error names its
//! source, the key and what is wrong.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

use crate::metering::pricing::{self, Price, UsdPrice};
use crate::observe::RequestLog;
use crate::providers::{self, Provider, ProviderKind};
use crate::routing::{RoutePolicy, Strategy};

/// Deployments an alias may have (the router keeps them in a 64-bit set).
const MAX_DEPLOYMENTS: usize = 64;

/// A configuration error: where, which key, what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// Where the document came from (`conduit.toml`, `CONDUIT_CONFIG`).
    pub source: String,
    /// The offending key, dotted (`models.my-gpt4.deployments[0].provider`).
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "config error in {}: {}", self.source, self.message)
        } else {
            write!(
                f,
                "config error in {}: `{}`: {}",
                self.source, self.key, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: Option<toml::Table>,
    #[serde(default)]
    providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    models: BTreeMap<String, RawModel>,
    #[serde(default)]
    gateway: Option<RawGateway>,
}

/// A provider table as written; validated into a [`Provider`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub kind: String,
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    /// Azure OpenAI's `api-version` query parameter.
    pub api_version: Option<String>,
    /// Bedrock: the AWS region (and the default endpoint).
    pub region: Option<String>,
    /// Bedrock: environment variables holding the AWS credentials.
    pub access_key_id_env: Option<String>,
    pub secret_access_key_env: Option<String>,
    pub session_token_env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    deployments: Vec<RawDeployment>,
    // Routing (see [`RoutePolicy`]); every key optional.
    strategy: Option<String>,
    retries: Option<u32>,
    retry_backoff_ms: Option<u64>,
    retry_backoff_max_ms: Option<u64>,
    timeout_ms: Option<u64>,
    stream_first_event_timeout_ms: Option<u64>,
    cooldown_after_failures: Option<u32>,
    cooldown_ms: Option<u64>,
    #[serde(default)]
    fallbacks: Vec<String>,
    #[serde(default)]
    context_window_fallbacks: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeployment {
    provider: String,
    model: String,
    /// Overrides the built-in price (USD per million tokens).
    price: Option<UsdPrice>,
    /// Drop request parameters the provider cannot honour instead of answering 400.
    #[serde(default)]
    drop_unsupported_params: bool,
    /// Share of the `weighted` strategy.
    weight: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    max_body_bytes: Option<usize>,
    upstream_timeout_ms: Option<u64>,
    key_cache_ttl_ms: Option<u64>,
    revocation_delay_ms: Option<u64>,
    default_max_tokens: Option<u64>,
    image_max_bytes: Option<usize>,
    image_fetch_allow_private: Option<bool>,
    max_response_bytes: Option<usize>,
    request_log: Option<String>,
}

/// Gateway-wide settings (`[gateway]`).
#[derive(Debug, Clone, PartialEq)]
pub struct GatewaySettings {
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
    /// No answer (headers, or the next stream event) in this time: 504.
    pub upstream_timeout_ms: u64,
    /// How long a key looked up by its hash is trusted without asking the
    /// store again. Changes made through the admin API of the same process
    /// take effect at once whatever this is.
    pub key_cache_ttl_ms: u64,
    /// How long the key's authority's word on a key (Durable Object,
    /// DynamoDB consistent read) is trusted: within it, a key without limits
    /// or budget makes no store round trip before the upstream call, so a
    /// revocation, rotation or PATCH made elsewhere takes effect within
    /// this time. `0`: the authority is asked on every request.
    pub revocation_delay_ms: u64,
    /// Completion tokens assumed for a chat request without `max_tokens` /
    /// `max_completion_tokens`, when estimating tokens and cost for admission.
    pub default_max_tokens: u64,
    /// Largest image Conduit fetches for a provider that needs the bytes.
    pub image_max_bytes: usize,
    /// Whether such fetches may go to loopback, private or link-local addresses.
    pub image_fetch_allow_private: bool,
    /// Largest whole (non-streamed) answer read from a provider; a larger one
    /// is a 502. Streams are bounded per event instead ([`crate::wire::sse::MAX_EVENT_BYTES`]).
    pub max_response_bytes: usize,
    /// Which requests the Worker and Lambda write a JSON log line for.
    pub request_log: RequestLog,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            max_body_bytes: 10 * 1024 * 1024,
            upstream_timeout_ms: 600_000,
            key_cache_ttl_ms: 1_000,
            revocation_delay_ms: 2_000,
            default_max_tokens: 4_096,
            image_max_bytes: 20 * 1024 * 1024,
            image_fetch_allow_private: false,
            max_response_bytes: 32 * 1024 * 1024,
            request_log: RequestLog::All,
        }
    }
}

/// One place a model alias can be served: a provider and its model name.
#[derive(Clone)]
pub struct Deployment {
    /// The configured provider's name (the table key).
    pub provider_name: Arc<str>,
    pub provider: Arc<dyn Provider>,
    /// The model name the provider knows (for Azure, the deployment name).
    pub model: String,
    /// Its price: the config's override, else the built-in table; `None` if unknown.
    pub price: Option<Price>,
    /// Drop parameters the provider cannot honour instead of answering 400.
    pub drop_unsupported_params: bool,
    /// Share of the `weighted` strategy (default 1).
    pub weight: u32,
}

impl fmt::Debug for Deployment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deployment")
            .field("provider", &self.provider_name)
            .field("model", &self.model)
            .field("price", &self.price)
            .finish()
    }
}

/// A model alias clients may send, and where it goes.
#[derive(Debug, Clone)]
pub struct ModelRoute {
    pub alias: String,
    /// Where it may be served, chosen attempt by attempt by the policy.
    pub deployments: Vec<Deployment>,
    /// Strategy, retries, timeouts, cooldown, fallbacks.
    pub policy: RoutePolicy,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub models: BTreeMap<String, ModelRoute>,
    pub gateway: GatewaySettings,
    /// The `[server]` table, untouched, for the native server.
    pub server: Option<toml::Table>,
    /// Each provider's kind as written (`openai`, `azure`, …), by name.
    pub provider_kinds: BTreeMap<String, String>,
}

/// A validated provider: its name, its implementation and its kind.
type BuiltProvider = (Arc<str>, Arc<dyn Provider>, ProviderKind);

impl Config {
    /// Parses and validates a TOML document. `source` names it in errors;
    /// `secret` resolves the environment variables named by `api_key_env`.
    pub fn parse(
        text: &str,
        source: &str,
        secret: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let err = |key: String, message: String| ConfigError {
            source: source.to_owned(),
            key,
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            err(
                String::new(),
                match line {
                    Some(l) => format!("line {l}: {}", e.message()),
                    None => e.message().to_owned(),
                },
            )
        })?;

        let mut built: BTreeMap<String, BuiltProvider> = BTreeMap::new();
        for (name, p) in &raw.providers {
            let key = |field: &str| format!("providers.{name}.{field}");
            let kind = ProviderKind::parse(&p.kind).ok_or_else(|| {
                err(
                    key("kind"),
                    format!(
                        "unknown provider kind `{}` (expected one of: {})",
                        p.kind,
                        ProviderKind::NAMES
                    ),
                )
            })?;
            let provider = providers::build(kind, p, secret)
                .map_err(|(field, message)| err(key(field), message))?;
            built.insert(name.clone(), (Arc::from(name.as_str()), provider, kind));
        }

        let upstream_timeout_ms = raw
            .gateway
            .as_ref()
            .and_then(|g| g.upstream_timeout_ms)
            .unwrap_or(GatewaySettings::default().upstream_timeout_ms);
        let aliases: Vec<String> = raw.models.keys().cloned().collect();
        let mut models = BTreeMap::new();
        for (alias, m) in raw.models {
            if m.deployments.is_empty() {
                return Err(err(
                    format!("models.{alias}.deployments"),
                    "needs at least one deployment".into(),
                ));
            }
            if m.deployments.len() > MAX_DEPLOYMENTS {
                return Err(err(
                    format!("models.{alias}.deployments"),
                    format!("at most {MAX_DEPLOYMENTS} deployments per alias"),
                ));
            }
            let policy = route_policy(
                &alias,
                &m,
                m.deployments.len(),
                upstream_timeout_ms,
                &aliases,
            )
            .map_err(|(key, message)| err(key, message))?;
            let mut deployments = Vec::with_capacity(m.deployments.len());
            for (i, d) in m.deployments.into_iter().enumerate() {
                let (provider_name, provider, kind) =
                    built.get(&d.provider).cloned().ok_or_else(|| {
                        err(
                            format!("models.{alias}.deployments[{i}].provider"),
                            format!(
                                "unknown provider `{}` (no [providers.{}] table)",
                                d.provider, d.provider
                            ),
                        )
                    })?;
                if d.model.trim().is_empty() {
                    return Err(err(
                        format!("models.{alias}.deployments[{i}].model"),
                        "must not be empty".into(),
                    ));
                }
                let price = match &d.price {
                    Some(p) => Some(p.to_price().ok_or_else(|| {
                        err(
                            format!("models.{alias}.deployments[{i}].price"),
                            "prices must be non-negative numbers (USD per million tokens)".into(),
                        )
                    })?),
                    None => pricing::builtin(kind.price_family(), &d.model),
                };
                if d.weight == Some(0) {
                    return Err(err(
                        format!("models.{alias}.deployments[{i}].weight"),
                        "must be at least 1".into(),
                    ));
                }
                deployments.push(Deployment {
                    provider_name,
                    provider,
                    model: d.model,
                    price,
                    drop_unsupported_params: d.drop_unsupported_params,
                    weight: d.weight.unwrap_or(1),
                });
            }
            models.insert(
                alias.clone(),
                ModelRoute {
                    alias,
                    deployments,
                    policy,
                },
            );
        }

        let mut gateway = GatewaySettings::default();
        if let Some(g) = raw.gateway {
            if let Some(v) = g.max_body_bytes {
                if v == 0 {
                    return Err(err(
                        "gateway.max_body_bytes".into(),
                        "must be greater than 0".into(),
                    ));
                }
                gateway.max_body_bytes = v;
            }
            if let Some(v) = g.upstream_timeout_ms {
                if v == 0 {
                    return Err(err(
                        "gateway.upstream_timeout_ms".into(),
                        "must be greater than 0".into(),
                    ));
                }
                gateway.upstream_timeout_ms = v;
            }
            if let Some(v) = g.key_cache_ttl_ms {
                gateway.key_cache_ttl_ms = v;
            }
            if let Some(v) = g.revocation_delay_ms {
                gateway.revocation_delay_ms = v;
            }
            if let Some(v) = g.default_max_tokens {
                gateway.default_max_tokens = v;
            }
            if let Some(v) = g.image_max_bytes {
                gateway.image_max_bytes = v;
            }
            if let Some(v) = g.image_fetch_allow_private {
                gateway.image_fetch_allow_private = v;
            }
            if let Some(v) = g.max_response_bytes {
                if v == 0 {
                    return Err(err(
                        "gateway.max_response_bytes".into(),
                        "must be greater than 0".into(),
                    ));
                }
                gateway.max_response_bytes = v;
            }
            if let Some(v) = g.request_log {
                gateway.request_log = RequestLog::parse(&v).ok_or_else(|| {
                    err(
                        "gateway.request_log".into(),
                        format!("unknown value `{v}` (all, failures or off)"),
                    )
                })?;
            }
        }
        Ok(Config {
            models,
            gateway,
            server: raw.server,
            provider_kinds: raw
                .providers
                .iter()
                .map(|(name, p)| (name.clone(), p.kind.clone()))
                .collect(),
        })
    }
}

/// Validates an alias's routing keys; errors name the key.
fn route_policy(
    alias: &str,
    m: &RawModel,
    deployments: usize,
    upstream_timeout_ms: u64,
    aliases: &[String],
) -> Result<RoutePolicy, (String, String)> {
    let key = |k: &str| format!("models.{alias}.{k}");
    let positive = |k: &str, v: Option<u64>| match v {
        Some(0) => Err((key(k), "must be greater than 0".to_owned())),
        _ => Ok(v),
    };
    let mut p = RoutePolicy::default_for(deployments, upstream_timeout_ms);
    if let Some(s) = &m.strategy {
        p.strategy = Strategy::parse(s).ok_or_else(|| {
            (
                key("strategy"),
                format!(
                    "unknown strategy `{s}` (expected one of: {})",
                    Strategy::NAMES
                ),
            )
        })?;
    }
    p.retries = m.retries.unwrap_or(p.retries);
    p.retry_backoff_ms = m.retry_backoff_ms.unwrap_or(p.retry_backoff_ms);
    p.retry_backoff_max_ms =
        positive("retry_backoff_max_ms", m.retry_backoff_max_ms)?.unwrap_or(p.retry_backoff_max_ms);
    p.timeout_ms = positive("timeout_ms", m.timeout_ms)?.unwrap_or(p.timeout_ms);
    p.stream_first_event_timeout_ms = positive(
        "stream_first_event_timeout_ms",
        m.stream_first_event_timeout_ms,
    )?;
    p.cooldown_after_failures = m
        .cooldown_after_failures
        .unwrap_or(p.cooldown_after_failures);
    p.cooldown_ms = m.cooldown_ms.unwrap_or(p.cooldown_ms);
    for (field, list) in [
        ("fallbacks", &m.fallbacks),
        ("context_window_fallbacks", &m.context_window_fallbacks),
    ] {
        for (i, name) in list.iter().enumerate() {
            if name == alias {
                return Err((
                    format!("{}[{i}]", key(field)),
                    "an alias cannot fall back to itself".into(),
                ));
            }
            if !aliases.contains(name) {
                return Err((
                    format!("{}[{i}]", key(field)),
                    format!("unknown alias `{name}` (no [models.\"{name}\"] table)"),
                ));
            }
        }
    }
    p.fallbacks = m.fallbacks.clone();
    p.context_window_fallbacks = m.context_window_fallbacks.clone();
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(var: &str) -> Option<String> {
        (var == "OPENAI_API_KEY").then(|| "sk-test".to_owned())
    }

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:5000"
database = "conduit.db"

[providers.openai]
kind = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"

[providers.local]
kind = "openai-compatible"
base_url = "http://127.0.0.1:11434/v1"

[models."my-gpt4"]
deployments = [{ provider = "openai", model = "gpt-4o" }]

[gateway]
max_body_bytes = 1000
upstream_timeout_ms = 5000
"#;

    #[test]
    fn parses_the_documented_shape() {
        let c = Config::parse(GOOD, "test", &env).unwrap();
        assert_eq!(c.gateway.max_body_bytes, 1000);
        assert_eq!(c.gateway.upstream_timeout_ms, 5000);
        let r = &c.models["my-gpt4"];
        assert_eq!(&*r.deployments[0].provider_name, "openai");
        assert_eq!(r.deployments[0].model, "gpt-4o");
        assert_eq!(c.server.unwrap()["listen"].as_str(), Some("127.0.0.1:5000"));
    }

    #[test]
    fn routing_keys_default_and_validate() {
        let c = Config::parse(GOOD, "test", &env).unwrap();
        let p = &c.models["my-gpt4"].policy;
        assert_eq!(p.strategy, Strategy::Ordered);
        assert_eq!((p.retries, p.retry_backoff_ms, p.timeout_ms), (0, 0, 5000));
        assert_eq!(p.cooldown_after_failures, 0);
        assert_eq!(c.models["my-gpt4"].deployments[0].weight, 1);

        let routed = GOOD.replace(
            "[models.\"my-gpt4\"]\n",
            "[models.\"my-gpt4\"]\nstrategy = \"least-cost\"\nretries = 4\nretry_backoff_ms = 100\n\
             timeout_ms = 9000\nstream_first_event_timeout_ms = 700\ncooldown_after_failures = 2\n\
             cooldown_ms = 50\nfallbacks = [\"backup\"]\ncontext_window_fallbacks = [\"backup\"]\n",
        ) + "[models.backup]\ndeployments = [{ provider = \"local\", model = \"x\", weight = 5 }]\n";
        let c = Config::parse(&routed, "test", &env).unwrap();
        let p = &c.models["my-gpt4"].policy;
        assert_eq!(p.strategy, Strategy::LeastCost);
        assert_eq!(
            (p.retries, p.retry_backoff_ms, p.timeout_ms),
            (4, 100, 9000)
        );
        assert_eq!(p.stream_first_event_timeout_ms, Some(700));
        assert_eq!((p.cooldown_after_failures, p.cooldown_ms), (2, 50));
        assert_eq!(p.fallbacks, ["backup"]);
        assert_eq!(c.models["backup"].deployments[0].weight, 5);
        assert_eq!(c.models["backup"].policy.retries, 0);

        let bad = |from: &str, to: &str| {
            Config::parse(&routed.replace(from, to), "test", &env).unwrap_err()
        };
        let e = bad("least-cost", "fastest");
        assert_eq!(e.key, "models.my-gpt4.strategy");
        assert!(e.message.contains("round-robin"), "{e}");
        assert_eq!(
            bad("fallbacks = [\"backup\"]", "fallbacks = [\"nope\"]").key,
            "models.my-gpt4.fallbacks[0]"
        );
        assert_eq!(
            bad(
                "context_window_fallbacks = [\"backup\"]",
                "context_window_fallbacks = [\"my-gpt4\"]"
            )
            .key,
            "models.my-gpt4.context_window_fallbacks[0]"
        );
        assert_eq!(
            bad("timeout_ms = 9000", "timeout_ms = 0").key,
            "models.my-gpt4.timeout_ms"
        );
        assert_eq!(
            bad("weight = 5", "weight = 0").key,
            "models.backup.deployments[0].weight"
        );
    }

    #[test]
    fn errors_name_source_key_and_problem() {
        let e = Config::parse(
            &GOOD.replace("provider = \"openai\"", "provider = \"nope\""),
            "conduit.toml",
            &env,
        )
        .unwrap_err();
        assert_eq!(e.key, "models.my-gpt4.deployments[0].provider");
        assert!(e.to_string().contains("conduit.toml"), "{e}");

        let e = Config::parse(GOOD, "x", &|_| None).unwrap_err();
        assert_eq!(e.key, "providers.openai.api_key_env");
        assert!(e.message.contains("OPENAI_API_KEY"));

        let e = Config::parse(
            &GOOD.replace("kind = \"openai\"", "kind = \"foo\""),
            "x",
            &env,
        )
        .unwrap_err();
        assert_eq!(e.key, "providers.openai.kind");

        let e =
            Config::parse("[providers.a]\nkind = \"openai\"\nbogus = 1\n", "x", &env).unwrap_err();
        assert!(
            e.message.contains("bogus") && e.message.contains("line"),
            "{e}"
        );

        let e = Config::parse(
            "[providers.a]\nkind = \"azure\"\napi_key_env=\"OPENAI_API_KEY\"\n",
            "x",
            &env,
        )
        .unwrap_err();
        assert!(e.key.starts_with("providers.a."), "{e}");

        let e = Config::parse(
            &GOOD.replace("[gateway]\n", "[gateway]\nrequest_log = \"errors\"\n"),
            "x",
            &env,
        )
        .unwrap_err();
        assert_eq!(e.key, "gateway.request_log");
        assert!(e.message.contains("failures"), "{e}");
    }

    #[test]
    fn request_log_is_read() {
        assert_eq!(
            Config::parse(GOOD, "x", &env).unwrap().gateway.request_log,
            RequestLog::All
        );
        for which in RequestLog::ALL {
            let line = format!("[gateway]\nrequest_log = \"{}\"\n", which.as_str());
            let text = GOOD.replace("[gateway]\n", &line);
            let c = Config::parse(&text, "x", &env).unwrap();
            assert_eq!(c.gateway.request_log, which);
        }
    }
}
