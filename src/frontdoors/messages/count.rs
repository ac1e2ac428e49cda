//! `POST /v1/messages/count_tokens`: the prompt's token count for a model
//! alias, from the provider where it counts (Anthropic's own
//! `count_tokens`), else the core's estimate (the one admission uses, on the
//! request's chat form), marked by the header `x-conduit-token-count: estimate`.
//!
//! It authenticates the key and checks the model like an inference request,
//! asks the alias's first deployment, and is neither admitted against the
//! key's limits nor recorded as usage: counting costs no tokens.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{json, Map, Value};

use crate::gateway::{json_response, Gateway, Response};
use crate::metering::limits::estimate_prompt_tokens;
use crate::providers::{Call, Endpoint};
use crate::wire::error::GatewayError;

/// Bytes read from the provider's count answer, at most.
const MAX_COUNT_BODY: usize = 64 * 1024;

impl Gateway {
    /// Serves `count_tokens` (errors in the Messages API's shape, by the caller).
    pub(crate) async fn count_tokens(
        &self,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response, GatewayError> {
        let key = self.authenticate_and_verify(headers).await?;
        if body.len() > self.max_body_bytes() {
            return Err(GatewayError::PayloadTooLarge {
                limit: self.max_body_bytes(),
            });
        }
        let request: Map<String, Value> = match serde_json::from_slice(&body) {
            Ok(Value::Object(o)) => o,
            _ => {
                return Err(GatewayError::invalid(
                    "The request body must be a JSON object.",
                    None,
                ))
            }
        };
        let alias = match request.get("model") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            _ => {
                return Err(GatewayError::invalid(
                    "model: Field required (a non-empty string)",
                    Some("model"),
                ))
            }
        };
        if !key.allows_model(&alias) {
            return Err(GatewayError::ModelNotAllowed { model: alias });
        }
        let route =
            self.config()
                .models
                .get(&alias)
                .ok_or_else(|| GatewayError::ModelNotFound {
                    model: alias.clone(),
                })?;
        let deployment = route
            .deployments
            .first()
            .ok_or_else(|| GatewayError::Internal("a model with no deployment".into()))?;
        let call = Call {
            endpoint: Endpoint::Messages,
            model: &deployment.model,
            stream: false,
            now_secs: self.now_secs(),
            request_id: "",
            drop_unsupported_params: deployment.drop_unsupported_params,
        };
        let mut response = match deployment.provider.count_tokens_request(&call, &request) {
            Some(upstream) => {
                let mut upstream = upstream?;
                crate::observe::trace::TraceContext::from_headers(headers)
                    .add_to(upstream.headers_mut());
                let tokens = self.provider_count(&call, deployment, upstream).await?;
                json_response(StatusCode::OK, &json!({ "input_tokens": tokens }))
            }
            None => {
                let chat = super::request::prompt_to_chat(&request)?;
                let tokens = estimate_prompt_tokens(&chat);
                let mut r = json_response(StatusCode::OK, &json!({ "input_tokens": tokens }));
                r.headers_mut().insert(
                    "x-conduit-token-count",
                    HeaderValue::from_static("estimate"),
                );
                r
            }
        };
        self.add_limit_status(&key, response.headers_mut()).await;
        Ok(response)
    }

    async fn provider_count(
        &self,
        _call: &Call<'_>,
        deployment: &crate::config::Deployment,
        request: http::Request<Bytes>,
    ) -> Result<u64, GatewayError> {
        let timeout = Duration::from_millis(self.config().gateway.upstream_timeout_ms);
        let deadline_us = self.now_micros() + timeout.as_micros() as u64;
        let answer = self
            .within(timeout, self.upstream().send(request))
            .await?
            .map_err(|e| GatewayError::Upstream(format!("cannot reach the provider: {e}")))?;
        let (parts, body) = answer.into_parts();
        let bytes = self
            .read_body(body, deadline_us, MAX_COUNT_BODY, None)
            .await?;
        if !parts.status.is_success() {
            return Err(deployment
                .provider
                .map_error(parts.status, &parts.headers, &bytes));
        }
        serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("input_tokens").and_then(Value::as_u64))
            .ok_or_else(|| {
                GatewayError::Upstream("the provider's token count is not readable".into())
            })
    }
}
