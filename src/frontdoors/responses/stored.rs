//! `GET /v1/responses/{id}`: a response the provider stored (`store: true`,
//! the default on OpenAI), fetched from the provider that keeps it.
//!
//! The request names no model, so the provider is the first deployment,
//! among the aliases the key may use (in alias order), whose provider stores
//! Responses (OpenAI, Azure). Its answer is passed through as it is; no usage
//! is recorded (retrieval generates nothing). With no such deployment: 404.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};

use crate::gateway::{Gateway, Response, ResponseBody};
use crate::wire::error::GatewayError;

/// Bytes read from a stored response, at most.
const MAX_STORED_BODY: usize = 64 * 1024 * 1024;

impl Gateway {
    pub(crate) async fn stored_response(
        &self,
        headers: &HeaderMap,
        id: &str,
    ) -> Result<Response, GatewayError> {
        let key = self.authenticate_and_verify(headers).await?;
        let found = self
            .config()
            .models
            .values()
            .filter(|r| key.allows_model(&r.alias))
            .flat_map(|r| r.deployments.iter())
            .find_map(|d| d.provider.stored_response_request(id).map(|req| (d, req)));
        let Some((deployment, request)) = found else {
            return Err(GatewayError::NotFound(format!(
                "No response `{id}`: none of the models this key may use keeps stored responses (OpenAI and Azure deployments do)."
            )));
        };
        let mut request = request?;
        crate::observe::trace::TraceContext::from_headers(headers).add_to(request.headers_mut());
        let timeout = Duration::from_millis(self.config().gateway.upstream_timeout_ms);
        let deadline_us = self.now_micros() + timeout.as_micros() as u64;
        let answer = self
            .within(timeout, self.upstream().send(request))
            .await?
            .map_err(|e| GatewayError::Upstream(format!("cannot reach the provider: {e}")))?;
        let (parts, body) = answer.into_parts();
        let bytes = self
            .read_body(body, deadline_us, MAX_STORED_BODY, None)
            .await?;
        if !parts.status.is_success() {
            return Err(deployment
                .provider
                .map_error(parts.status, &parts.headers, &bytes));
        }
        let mut response = http::Response::new(ResponseBody::Full(bytes));
        *response.status_mut() = StatusCode::OK;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.add_limit_status(&key, response.headers_mut()).await;
        Ok(response)
    }
}
