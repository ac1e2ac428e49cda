//! One configuration with a deployment of every provider kind, and the
//! gateway built over the in-memory ports of `conduit::memory`.

use std::sync::{Arc, OnceLock};

use conduit::config::Deployment;
use conduit::providers::{Call, Endpoint, Provider};
use conduit::Config;

/// Every provider kind, each behind an alias of its own name; embeddings
/// models where the kind picks its request shape by model name.
pub const CONFIG: &str = r#"
[providers.openai]
kind = "openai"
base_url = "http://openai.test/v1"
api_key_env = "UPSTREAM_KEY"

[providers.azure]
kind = "azure"
base_url = "http://azure.test"
api_key_env = "UPSTREAM_KEY"
api_version = "2024-10-21"

[providers.anthropic]
kind = "anthropic"
base_url = "http://anthropic.test"
api_key_env = "UPSTREAM_KEY"

[providers.gemini]
kind = "gemini"
base_url = "http://gemini.test"
api_key_env = "UPSTREAM_KEY"

[providers.bedrock]
kind = "bedrock"
region = "us-east-1"
base_url = "http://bedrock.test"
access_key_id_env = "AWS_ACCESS_KEY_ID"
secret_access_key_env = "AWS_SECRET_ACCESS_KEY"

[providers.cohere]
kind = "cohere"
base_url = "http://cohere.test"
api_key_env = "UPSTREAM_KEY"

[providers.compatible]
kind = "openai-compatible"
base_url = "http://compatible.test/v1"

[models.openai]
deployments = [{ provider = "openai", model = "gpt-4o" }]
[models.azure]
deployments = [{ provider = "azure", model = "gpt-4o" }]
[models.anthropic]
deployments = [{ provider = "anthropic", model = "claude-sonnet-4-5" }]
[models.gemini]
deployments = [{ provider = "gemini", model = "gemini-2.0-flash" }]
[models.bedrock]
deployments = [{ provider = "bedrock", model = "anthropic.claude-3-5-sonnet-20240620-v1:0", price = { input = 3.0, output = 15.0 } }]
[models.bedrock-titan]
deployments = [{ provider = "bedrock", model = "amazon.titan-embed-text-v2:0", price = { input = 0.02 } }]
[models.bedrock-cohere]
deployments = [{ provider = "bedrock", model = "cohere.embed-english-v3", price = { input = 0.1 } }]
[models.cohere]
deployments = [{ provider = "cohere", model = "command-a-03-2025" }]
[models.cohere-embed]
deployments = [{ provider = "cohere", model = "embed-v4.0", price = { input = 0.12 } }]
[models.compatible]
deployments = [{ provider = "compatible", model = "llama", price = { input = 0.5, output = 0.5 } }]
[models.fallback]
deployments = [{ provider = "openai", model = "broken" }, { provider = "anthropic", model = "claude-sonnet-4-5" }]

[gateway]
max_body_bytes = 1048576
upstream_timeout_ms = 1000
"#;

/// The secrets the configuration names.
pub fn secret(var: &str) -> Option<String> {
    Some(format!("secret-for-{var}"))
}

/// The parsed configuration, once per process.
pub fn config() -> &'static Config {
    static CONFIG_ONCE: OnceLock<Config> = OnceLock::new();
    CONFIG_ONCE.get_or_init(|| match Config::parse(CONFIG, "fuzz", &secret) {
        Ok(c) => c,
        Err(e) => panic!("the fuzz configuration is invalid: {e}"),
    })
}

/// The first deployment of `alias`.
pub fn deployment(alias: &str) -> &'static Deployment {
    match config().models.get(alias) {
        Some(route) => &route.deployments[0],
        None => panic!("no alias {alias} in the fuzz configuration"),
    }
}

/// The provider behind `alias`.
pub fn provider(alias: &str) -> &'static Arc<dyn Provider> {
    &deployment(alias).provider
}

/// The alias to use for `endpoint` on the provider named `kind`: kinds that
/// pick the embeddings request by model name get an embeddings model.
pub fn alias_for(kind: &'static str, endpoint: Endpoint) -> &'static str {
    match (kind, endpoint) {
        ("bedrock", Endpoint::Embeddings) => "bedrock-titan",
        ("cohere", Endpoint::Embeddings) => "cohere-embed",
        _ => kind,
    }
}

/// A [`Call`] to `alias`'s deployment.
pub fn call(alias: &str, endpoint: Endpoint, stream: bool) -> Call<'static> {
    Call {
        endpoint,
        model: &deployment(alias).model,
        stream,
        now_secs: 1_780_000_000,
        request_id: "req_fuzz",
        drop_unsupported_params: false,
    }
}

pub const ENDPOINTS: [Endpoint; 3] = [
    Endpoint::ChatCompletions,
    Endpoint::Completions,
    Endpoint::Embeddings,
];
