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
//! | `anthropic`         | [`anthropic`]          | Messages API                     |
//! | `gemini`            | [`gemini`]             | Google AI Studio generateContent |
//! | `bedrock`           | [`bedrock`]            | Bedrock Converse, SigV4, eventstream |
//! | `cohere`            | [`cohere`]             | Cohere v2 chat and embed         |

pub mod anthropic;
pub mod azure;
pub mod bedrock;
pub mod cohere;
pub mod gemini;
pub mod legacy;
pub mod openai;
#[cfg(test)]
pub(crate) mod testing;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

use crate::compat::{MaybeSend, MaybeSendSync};
use crate::config::RawProvider;
use crate::wire::error::GatewayError;

/// The endpoints the gateway serves through providers: OpenAI's chat,
/// legacy completions and embeddings, and the front doors
/// ([`crate::frontdoors`]): OpenAI's Responses API and Anthropic's Messages API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Messages,
}

impl Endpoint {
    /// The path below `/v1`.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat/completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
            Endpoint::Messages => "messages",
        }
    }

    /// The public route, as usage records name it.
    pub fn route(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Responses => "/v1/responses",
            Endpoint::Messages => "/v1/messages",
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
            Endpoint::ChatCompletions | Endpoint::Messages => "messages",
            Endpoint::Completions => "prompt",
            Endpoint::Embeddings | Endpoint::Responses => "input",
        }
    }
}

/// The configured provider kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAi,
    OpenAiCompatible,
    Azure,
    Anthropic,
    Gemini,
    Bedrock,
    Cohere,
}

impl ProviderKind {
    /// For error messages.
    pub const NAMES: &'static str =
        "openai, azure, openai-compatible, anthropic, gemini, bedrock, cohere";

    pub fn parse(s: &str) -> Option<ProviderKind> {
        match s {
            "openai" => Some(ProviderKind::OpenAi),
            "openai-compatible" => Some(ProviderKind::OpenAiCompatible),
            "azure" => Some(ProviderKind::Azure),
            "anthropic" => Some(ProviderKind::Anthropic),
            "gemini" => Some(ProviderKind::Gemini),
            "bedrock" => Some(ProviderKind::Bedrock),
            "cohere" => Some(ProviderKind::Cohere),
            _ => None,
        }
    }

    /// The provider family whose built-in prices apply; `None` for hosts
    /// of many vendors' models (looked up by model name alone).
    pub fn price_family(self) -> Option<&'static str> {
        match self {
            ProviderKind::OpenAi | ProviderKind::Azure => Some("openai"),
            ProviderKind::Anthropic => Some("anthropic"),
            ProviderKind::Gemini => Some("google"),
            ProviderKind::Cohere => Some("cohere"),
            ProviderKind::OpenAiCompatible | ProviderKind::Bedrock => None,
        }
    }

    /// The public endpoint used when `base_url` is not given.
    fn default_base_url(self, raw: &RawProvider) -> Option<String> {
        match self {
            ProviderKind::OpenAi => Some("https://api.openai.com/v1".into()),
            ProviderKind::Anthropic => Some("https://api.anthropic.com".into()),
            ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com".into()),
            ProviderKind::Cohere => Some("https://api.cohere.com".into()),
            ProviderKind::Bedrock => raw
                .region
                .as_ref()
                .map(|r| format!("https://bedrock-runtime.{r}.amazonaws.com")),
            ProviderKind::OpenAiCompatible | ProviderKind::Azure => None,
        }
    }
}

/// What one upstream call is about.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub endpoint: Endpoint,
    /// The provider's model name (the deployment's `model`).
    pub model: &'a str,
    pub stream: bool,
    /// Unix seconds, from the platform clock (request signing, `created`).
    pub now_secs: u64,
    /// Conduit's request id, for the ids of objects a provider does not name.
    pub request_id: &'a str,
    /// Drop parameters the provider cannot honour instead of refusing them
    /// (the deployment's `drop_unsupported_params`).
    pub drop_unsupported_params: bool,
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
    /// An event in the client's own API, from a provider that speaks it
    /// (front-door pass-through): relayed as it is.
    Native(NativeEvent),
}

/// One passed-through event, and what the core meters from it.
#[derive(Debug, Clone, PartialEq)]
pub struct NativeEvent {
    /// The SSE `event:` name (the payload's `type`).
    pub event: String,
    /// The SSE `data:` payload, as the provider sent it.
    pub data: String,
    /// The usage so far, when this event reports it (the last one wins).
    pub usage: Option<crate::metering::usage::TokenUsage>,
    /// The event carries generated content (what a disconnect bills).
    pub content: bool,
    /// The event ends a complete answer.
    pub finish: bool,
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
    /// The HTTP request to send upstream, from the client's OpenAI body
    /// (which the provider may rewrite in place).
    fn build_request(
        &self,
        call: &Call<'_>,
        body: &mut Map<String, Value>,
    ) -> Result<http::Request<Bytes>, GatewayError>;
    /// The HTTP request to send upstream, built from the client's raw
    /// values without a tree, for a provider that speaks the client's
    /// dialect ([`openai::splice_body`]); `None` (the default): the core
    /// builds the tree and calls [`build_request`](Self::build_request).
    fn splice_request(
        &self,
        call: &Call<'_>,
        body: &crate::frontdoors::chat::RawRequest<'_>,
    ) -> Option<Result<http::Request<Bytes>, GatewayError>> {
        let _ = (call, body);
        None
    }
    /// Whether the provider speaks the client's (OpenAI's) dialect, as the
    /// `openai`, `openai-compatible` and `azure` kinds do: its answers are
    /// OpenAI's, so the defaults of [`translate_response`](Self::translate_response),
    /// [`pass_through`](Self::pass_through), [`stream_decoder`](Self::stream_decoder)
    /// and [`streams_openai_chunks`](Self::streams_openai_chunks) serve it, and the core keeps
    /// a request's raw values for its [`splice_request`](Self::splice_request)
    /// (for an alias none of whose deployments speak it, the body goes
    /// straight to the tree). `false` by default.
    fn speaks_openai(&self) -> bool {
        false
    }
    /// A whole 2xx body, as an OpenAI response object. The default reads an
    /// answer that is already OpenAI's (`openai::translate_openai`); every
    /// other dialect translates its own.
    fn translate_response(
        &self,
        call: &Call<'_>,
        body: &[u8],
    ) -> Result<Map<String, Value>, GatewayError> {
        openai::translate_openai(call.endpoint, body)
    }
    /// A whole 2xx body that is already the client's OpenAI answer but for
    /// `model`, passed through with `model` = `alias` and its usage read,
    /// without a `serde_json` tree ([`openai::passthrough`]); `None` (a
    /// provider that is not [`speaks_openai`](Self::speaks_openai), or an
    /// answer the translation would change): the core calls
    /// [`translate_response`](Self::translate_response).
    fn pass_through(
        &self,
        call: &Call<'_>,
        body: &[u8],
        base64_embeddings: bool,
    ) -> Option<openai::passthrough::PassedThrough> {
        if !self.speaks_openai() {
            return None;
        }
        openai::passthrough::pass_through(call.endpoint, body, base64_embeddings)
    }
    /// Whether a 2xx stream of `call` is OpenAI SSE chunks in the client's
    /// dialect: the relay then passes each chunk through with `model`
    /// spliced and `usage` cut out, without a tree
    /// ([`openai::passthrough::pass_through_chunk`]), and decodes only the
    /// chunks the normalisation would change.
    /// By default: chat and completions streams of a provider that
    /// [`speaks_openai`](Self::speaks_openai).
    fn streams_openai_chunks(&self, call: &Call<'_>) -> bool {
        self.speaks_openai()
            && matches!(
                call.endpoint,
                Endpoint::ChatCompletions | Endpoint::Completions
            )
    }
    /// A decoder for a 2xx streamed body. The default decodes OpenAI's SSE
    /// chunks (`openai::openai_stream`); every other dialect decodes its own.
    fn stream_decoder(&self, call: &Call<'_>) -> Box<dyn StreamDecoder> {
        openai::openai_stream(call)
    }
    /// A non-2xx answer, in Conduit's error terms.
    fn map_error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> GatewayError;
    /// Whether `image_url` parts with http(s) URLs must be fetched and
    /// inlined as `data:` URLs before [`build_request`](Self::build_request).
    fn needs_image_bytes(&self) -> bool {
        false
    }
    /// Whether this provider speaks the client API of `call.endpoint` (a
    /// front door) itself: such calls reach it untranslated, and its answers
    /// (whole, or [`StreamEvent::Native`]) go back untranslated.
    fn speaks(&self, call: &Call<'_>) -> bool {
        let _ = call;
        false
    }
    /// `GET` of a stored Responses API response (`GET /v1/responses/{id}`),
    /// where the provider keeps them; `None`: it does not.
    fn stored_response_request(
        &self,
        id: &str,
    ) -> Option<Result<http::Request<Bytes>, GatewayError>> {
        let _ = id;
        None
    }
    /// The provider's own token count for a Messages API body
    /// (`/v1/messages/count_tokens`), where it has one; `None`: the core estimates.
    fn count_tokens_request(
        &self,
        call: &Call<'_>,
        body: &Map<String, Value>,
    ) -> Option<Result<http::Request<Bytes>, GatewayError>> {
        let _ = (call, body);
        None
    }
}

/// An OpenAI `chat.completion.chunk`, for the stream decoders of providers
/// whose events are not OpenAI's (the core sets `model` to the alias).
pub(crate) fn chat_chunk(
    id: impl Into<Value>,
    created: u64,
    model: impl Into<Value>,
    choices: Vec<Value>,
) -> Map<String, Value> {
    let mut c = Map::new();
    c.insert("id".into(), id.into());
    c.insert("object".into(), "chat.completion.chunk".into());
    c.insert("created".into(), created.into());
    c.insert("model".into(), model.into());
    c.insert("choices".into(), Value::Array(choices));
    c
}

/// One choice of a chunk: `{index, delta, logprobs: null, finish_reason}`.
pub(crate) fn chunk_choice(index: u64, delta: impl Into<Value>, finish: Option<&str>) -> Value {
    serde_json::json!({"index": index, "delta": delta.into(), "logprobs": null, "finish_reason": finish})
}

/// OpenAI's `stop` (a string or a list of strings) as a list, or `None`
/// when absent or empty; a 400 naming `stop` otherwise.
pub(crate) fn stop_sequences(stop: Option<&Value>) -> Result<Option<Value>, GatewayError> {
    match stop {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(Value::Array(vec![Value::String(s.clone())]))),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            Ok((!items.is_empty()).then(|| Value::Array(items.clone())))
        }
        Some(_) => Err(GatewayError::invalid(
            "`stop` must be a string or an array of strings.",
            Some("stop"),
        )),
    }
}

/// The secret named by `field` (an `*_env` setting): its value, or an error
/// naming the field and the variable.
pub(crate) fn required_secret(
    var: Option<&String>,
    field: &'static str,
    secret: &dyn Fn(&str) -> Option<String>,
) -> Result<String, (&'static str, String)> {
    let var = var.ok_or((
        field,
        "required: name the environment variable that holds the secret".to_owned(),
    ))?;
    if var.trim().is_empty() {
        return Err((field, "must name an environment variable".into()));
    }
    secret(var).filter(|v| !v.is_empty()).ok_or_else(|| {
        (
            field,
            format!("the environment variable `{var}` is not set"),
        )
    })
}

/// Builds the provider of a `[providers.NAME]` table. Errors name the field
/// (below the table) and what is wrong.
pub fn build(
    kind: ProviderKind,
    raw: &RawProvider,
    secret: &dyn Fn(&str) -> Option<String>,
) -> Result<Arc<dyn Provider>, (&'static str, String)> {
    if raw.api_version.is_some() && kind != ProviderKind::Azure {
        return Err(("api_version", "only used by kind `azure`".into()));
    }
    if kind != ProviderKind::Bedrock {
        for (field, set) in [
            ("region", raw.region.is_some()),
            ("access_key_id_env", raw.access_key_id_env.is_some()),
            ("secret_access_key_env", raw.secret_access_key_env.is_some()),
            ("session_token_env", raw.session_token_env.is_some()),
        ] {
            if set {
                return Err((field, "only used by kind `bedrock`".into()));
            }
        }
    } else if raw.api_key_env.is_some() {
        return Err(("api_key_env", "kind `bedrock` signs with AWS credentials: use access_key_id_env, secret_access_key_env, session_token_env".into()));
    }
    let base_url = match raw.base_url.clone().or_else(|| kind.default_base_url(raw)) {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None if kind == ProviderKind::Bedrock => {
            return Err((
                "region",
                "required for kind `bedrock` (e.g. \"us-east-1\")".into(),
            ))
        }
        None => return Err(("base_url", "required for this kind".into())),
    };
    if !(base_url.starts_with("http://") || base_url.starts_with("https://"))
        || base_url.parse::<http::Uri>().is_err()
    {
        return Err(("base_url", format!("`{base_url}` is not an http(s) URL")));
    }
    let api_key = match (&raw.api_key_env, kind) {
        (None, ProviderKind::OpenAiCompatible | ProviderKind::Bedrock) => None,
        (var, _) => Some(required_secret(var.as_ref(), "api_key_env", secret)?),
    };
    let provider: Arc<dyn Provider> = match kind {
        ProviderKind::OpenAi => {
            Arc::new(openai::OpenAi::new(base_url, api_key).with_responses_api())
        }
        ProviderKind::OpenAiCompatible => Arc::new(openai::OpenAi::new(base_url, api_key)),
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
        ProviderKind::Anthropic => Arc::new(anthropic::Anthropic::new(
            base_url,
            api_key.unwrap_or_default(),
        )),
        ProviderKind::Gemini => {
            Arc::new(gemini::Gemini::new(base_url, api_key.unwrap_or_default()))
        }
        ProviderKind::Cohere => {
            Arc::new(cohere::Cohere::new(base_url, api_key.unwrap_or_default()))
        }
        ProviderKind::Bedrock => Arc::new(bedrock::Bedrock::from_config(raw, base_url, secret)?),
    };
    Ok(crate::frontdoors::behind_front_doors(provider))
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
