//! Azure OpenAI: OpenAI's wire format on per-deployment URLs.
//!
//! `{base_url}/openai/deployments/{deployment}/{path}?api-version={v}` with the
//! key in an `api-key` header. The deployment's `model` in the config is the
//! Azure deployment name. Azure's extra fields (`content_filter_results`,
//! `prompt_filter_results`) pass through; its first stream chunk with
//! `choices: []` (fixture T4) is dropped by the core like any empty chunk.
//!
//! Responses API calls pass through to `{base_url}/openai/responses?api-version={v}`
//! with the deployment name as `model` (Azure's Responses API is per
//! resource, not per deployment; it needs an `api_version` that has it,
//! e.g. `2025-04-01-preview`).

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

use super::openai::{map_openai_error, prepare_body, splice_body, spliceable};
use super::{json_post, Call, Endpoint, Provider};
use crate::wire::error::GatewayError;

/// The `azure` kind.
pub struct Azure {
    base_url: String,
    api_key: String,
    api_version: String,
}

impl Azure {
    pub fn new(base_url: String, api_key: String, api_version: String) -> Self {
        Azure {
            base_url,
            api_key,
            api_version,
        }
    }
}

/// Percent-encodes a path segment (deployment names are usually plain).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Azure {
    /// The URL of `call` on the deployment's endpoint.
    fn deployment_url(&self, call: &Call<'_>) -> String {
        format!(
            "{}/openai/deployments/{}/{}?api-version={}",
            self.base_url,
            segment(call.model),
            call.endpoint.path(),
            segment(&self.api_version)
        )
    }
}

impl Provider for Azure {
    fn build_request(
        &self,
        call: &Call<'_>,
        body: &mut Map<String, Value>,
    ) -> Result<http::Request<Bytes>, GatewayError> {
        let url = match call.endpoint {
            Endpoint::Messages => return Err(crate::frontdoors::not_spoken(call.endpoint)),
            Endpoint::Responses => format!(
                "{}/openai/responses?api-version={}",
                self.base_url,
                segment(&self.api_version)
            ),
            _ => self.deployment_url(call),
        };
        let body = prepare_body(
            body,
            call.model,
            call.stream && call.endpoint != Endpoint::Responses,
        )?;
        json_post(&url, &[("api-key", &self.api_key)], body)
    }

    fn splice_request(
        &self,
        call: &Call<'_>,
        body: &crate::frontdoors::chat::RawRequest<'_>,
    ) -> Option<Result<http::Request<Bytes>, GatewayError>> {
        if !spliceable(call.endpoint) {
            return None;
        }
        let url = self.deployment_url(call);
        let body = splice_body(body, call.model, call.stream);
        Some(json_post(&url, &[("api-key", &self.api_key)], body))
    }

    // Answers and streams are OpenAI's: the trait's defaults read them
    // (translate_response, pass_through, stream_decoder, streams_openai_chunks).
    fn speaks_openai(&self) -> bool {
        true
    }

    fn speaks(&self, call: &Call<'_>) -> bool {
        call.endpoint == Endpoint::Responses
    }

    fn stored_response_request(
        &self,
        id: &str,
    ) -> Option<Result<http::Request<Bytes>, GatewayError>> {
        let url = format!(
            "{}/openai/responses/{}?api-version={}",
            self.base_url,
            segment(id),
            segment(&self.api_version)
        );
        Some(crate::frontdoors::get(&url, &[("api-key", &self.api_key)]))
    }

    fn map_error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> GatewayError {
        map_openai_error(status, headers, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deployment_url_and_key_header() {
        let p = Azure::new(
            "https://r.openai.azure.com".into(),
            "k".into(),
            "2024-10-21".into(),
        );
        let mut body = json!({"model": "alias", "input": "x"})
            .as_object()
            .unwrap()
            .clone();
        let call = Call {
            endpoint: crate::providers::Endpoint::Embeddings,
            model: "emb deploy",
            stream: false,
            now_secs: 0,
            request_id: "req_1",
            drop_unsupported_params: false,
        };
        let req = p.build_request(&call, &mut body).unwrap();
        assert_eq!(
            req.uri(),
            "https://r.openai.azure.com/openai/deployments/emb%20deploy/embeddings?api-version=2024-10-21"
        );
        assert_eq!(req.headers()["api-key"], "k");
        assert!(req.headers().get("authorization").is_none());
    }
}
