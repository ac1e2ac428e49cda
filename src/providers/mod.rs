//! Providers: one module per upstream API, behind one small trait.
//!
//! A [`Provider`] turns an OpenAI-shaped request into its own HTTP request,
//! and its answers (whole, streamed or failed) back into OpenAI's shapes.
//! The core never looks at a provider's wire format itself.
//!
//! | kind                | module                 | wire format                      |
//! |---------------------|------------------------|----------------------------------|
//! | `openai`            | [`openai`]             | OpenAI                           |
//! | `openai-compatible` | [`openai`]             | OpenAI (answers normalised)      |
//! | `azure`             | [`azure`]              | OpenAI on Azure deployment URLs  |

pub mod azure;
pub mod openai;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

use crate::compat::{MaybeSend, MaybeSendSync};
use crate::config::RawProvider;
use crate::error::GatewayError;

/// The OpenAI endpoints the gateway serves through providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Endpoint {
    /// The path below `/v1`.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat/completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
        }
    }

    /// The public route, as usage records name it.
    pub fn route(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
        }
    }

    /// The `object` of a stream chunk on this endpoint.
    pub fn chunk_object(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completion.chunk",
            _ => "text_completion",
        }
    }

    /// The field the request must carry besides `model`.
    pub fn required_field(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "messages",
            Endpoint::Completions => "prompt",
            Endpoint::Embeddings => "input",
        }
    }
}

/// The configured provider kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAi,
    OpenAiCompatible,
    Azure,
}

impl ProviderKind {
    /// For error messages.
    pub const NAMES: &'static str = "openai, azure, openai-compatible";

    pub fn parse(s: &str) -> Option<ProviderKind> {
        match s {
            "openai" => Some(ProviderKind::OpenAi),
            "openai-compatible" => Some(ProviderKind::OpenAiCompatible),
            "azure" => Some(ProviderKind::Azure),
            _ => None,
        }
    }

    /// The provider family whose built-in prices apply; `None` for hosts
    /// of many vendors' models (looked up by model name alone).
    pub fn price_family(self) -> Option<&'static str> {
        match self {
            ProviderKind::OpenAi | ProviderKind::Azure => Some("openai"),
            ProviderKind::OpenAiCompatible => None,
        }
    }

    /// Whether `api_key_env` must be given.
    pub fn requires_api_key(self) -> bool {
        !matches!(self, ProviderKind::OpenAiCompatible)
    }
}

/// A request as the provider gets it: the client's OpenAI body, which the
/// provider may rewrite in place.
pub struct ProviderRequest<'a> {
    pub endpoint: Endpoint,
    /// The provider's model name (the deployment's `model`).
    pub model: &'a str,
    pub body: &'a mut Map<String, Value>,
    pub stream: bool,
}

/// What a stream decoder hands back to the core.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// An OpenAI chunk object. A `usage` field on it is taken by the core
    /// for metering (and shown to the client only if it asked).
    Chunk(Map<String, Value>),
    /// The provider said the stream is complete.
    Done,
    /// The provider reported a failure inside the stream.
    Error(GatewayError),
}

/// Turns a provider's streamed body into OpenAI chunks. Fed any split of
/// the bytes, it must produce the same events.
pub trait StreamDecoder: MaybeSend {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>);
    /// The body ended.
    fn finish(&mut self, out: &mut Vec<StreamEvent>);
}

/// One upstream API. Small on purpose: build, translate, decode, map errors.
pub trait Provider: MaybeSendSync {
    /// The HTTP request to send upstream.
    fn build_request(
        &self,
        request: ProviderRequest<'_>,
    ) -> Result<http::Request<Bytes>, GatewayError>;
    /// A whole 2xx body, as an OpenAI response object.
    fn translate_response(
        &self,
        endpoint: Endpoint,
        body: &[u8],
    ) -> Result<Map<String, Value>, GatewayError>;
    /// A decoder for a 2xx streamed body.
    fn stream_decoder(&self, endpoint: Endpoint) -> Box<dyn StreamDecoder>;
    /// A non-2xx answer, in Conduit's error terms.
    fn map_error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> GatewayError;
}

/// Builds the provider of a validated `[providers.NAME]` table. Errors name
/// the field (below the table) and what is wrong.
pub fn build(
    kind: ProviderKind,
    raw: &RawProvider,
    api_key: Option<String>,
) -> Result<Arc<dyn Provider>, (&'static str, String)> {
    if raw.api_version.is_some() && kind != ProviderKind::Azure {
        return Err(("api_version", "only used by kind `azure`".into()));
    }
    let base_url = match (&raw.base_url, kind) {
        (Some(u), _) => u.trim_end_matches('/').to_owned(),
        (None, ProviderKind::OpenAi) => "https://api.openai.com/v1".to_owned(),
        (None, _) => return Err(("base_url", "required for this kind".into())),
    };
    if !(base_url.starts_with("http://") || base_url.starts_with("https://"))
        || base_url.parse::<http::Uri>().is_err()
    {
        return Err(("base_url", format!("`{base_url}` is not an http(s) URL")));
    }
    Ok(match kind {
        ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => {
            Arc::new(openai::OpenAi::new(base_url, api_key))
        }
        ProviderKind::Azure => {
            let version = raw.api_version.clone().ok_or((
                "api_version",
                "required for kind `azure` (e.g. \"2024-10-21\")".to_owned(),
            ))?;
            Arc::new(azure::Azure::new(
                base_url,
                api_key.unwrap_or_default(),
                version,
            ))
        }
    })
}

/// A JSON POST with the given headers.
pub(crate) fn json_post(
    url: &str,
    headers: &[(&'static str, &str)],
    body: Vec<u8>,
) -> Result<http::Request<Bytes>, GatewayError> {
    let mut b = http::Request::post(url).header(http::header::CONTENT_TYPE, "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Bytes::from(body))
        .map_err(|e| GatewayError::Internal(format!("cannot build the upstream request: {e}")))
}
