//! The one error type of the gateway and its single mapping to HTTP.
//!
//! Every failure a client can see is a [`GatewayError`]. [`GatewayError::status`]
//! and [`GatewayError::kind`] are *the* table from variant to HTTP status and
//! OpenAI `type`/`code`; [`GatewayError::to_json`] renders OpenAI's envelope
//! `{"error":{"message","type","param","code"}}`, which is also what a stream
//! carries in its final `error` event.

use http::StatusCode;
use serde_json::{json, Value};

/// Everything that can go wrong while serving a request.
#[derive(Debug, Clone, PartialEq)]
pub enum GatewayError {
    /// Malformed JSON, a missing or mistyped field, an unsupported parameter.
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    /// No key, an unknown, disabled or expired key.
    InvalidApiKey(String),
    /// Admin API called without the right master key.
    AdminUnauthorized,
    /// The key may not use this model alias.
    ModelNotAllowed { model: String },
    /// The key has a budget and a deployment of this alias has no price.
    PriceUnknown {
        model: String,
        provider_model: String,
    },
    /// No such model alias in the config.
    ModelNotFound { model: String },
    /// No such route or admin object.
    NotFound(String),
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// Request body over `gateway.max_body_bytes`.
    PayloadTooLarge { limit: usize },
    /// The client did not send its whole request body in time.
    RequestTimeout,
    /// A rate limit of the key refused the request.
    RateLimited {
        message: String,
        /// Which limit: `rpm`, `rpd` or `tpm`.
        limit: &'static str,
        retry_after_secs: u64,
    },
    /// The key's budget would be exceeded.
    BudgetExceeded(String),
    /// The provider answered with its own 4xx (or 429); kept as it said.
    Provider {
        status: StatusCode,
        message: String,
        kind: String,
        code: Option<String>,
        param: Option<String>,
        retry_after: Option<String>,
    },
    /// The provider failed (5xx), was unreachable, or sent something unreadable.
    Upstream(String),
    /// The provider did not answer within `gateway.upstream_timeout_ms`.
    UpstreamTimeout,
    /// The alias's `timeout_ms` ran out: no deployment answered in time.
    DeadlineExceeded {
        model: String,
        timeout_ms: u64,
        attempts: u32,
        /// The attempts made: `provider/model (status code)`, in order.
        detail: String,
    },
    /// A store (keys, usage) failed.
    Store(String),
    /// The server holds `[server] max_connections` connections already.
    Overloaded { max_connections: usize },
    /// A bug or an impossible state; never caused by input.
    Internal(String),
}

impl GatewayError {
    /// Shorthand for a 400 that names the offending parameter.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        GatewayError::InvalidRequest {
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }

    /// The table: HTTP status, OpenAI `type`, OpenAI `code`.
    #[rustfmt::skip]
    pub fn kind(&self) -> (StatusCode, &str, Option<&str>) {
        use GatewayError::*;
        match self {
            InvalidRequest { .. } => (StatusCode::BAD_REQUEST, "invalid_request_error", Some("invalid_request")),
            InvalidApiKey(_) => (StatusCode::UNAUTHORIZED, "invalid_request_error", Some("invalid_api_key")),
            AdminUnauthorized => (StatusCode::UNAUTHORIZED, "invalid_request_error", Some("invalid_master_key")),
            ModelNotAllowed { .. } => (StatusCode::FORBIDDEN, "invalid_request_error", Some("model_not_allowed")),
            PriceUnknown { .. } => (StatusCode::FORBIDDEN, "invalid_request_error", Some("model_price_unknown")),
            ModelNotFound { .. } => (StatusCode::NOT_FOUND, "invalid_request_error", Some("model_not_found")),
            NotFound(_) => (StatusCode::NOT_FOUND, "invalid_request_error", Some("not_found")),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", Some("method_not_allowed")),
            PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", Some("request_too_large")),
            RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "invalid_request_error", Some("request_timeout")),
            RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", Some("rate_limit_exceeded")),
            BudgetExceeded(_) => (StatusCode::PAYMENT_REQUIRED, "insufficient_quota", Some("budget_exceeded")),
            Provider { status, kind, code, .. } => (*status, kind.as_str(), code.as_deref()),
            Upstream(_) => (StatusCode::BAD_GATEWAY, "api_error", Some("upstream_error")),
            UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "api_error", Some("upstream_timeout")),
            DeadlineExceeded { .. } => (StatusCode::GATEWAY_TIMEOUT, "api_error", Some("upstream_timeout")),
            Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "api_error", Some("store_unavailable")),
            Overloaded { .. } => (StatusCode::SERVICE_UNAVAILABLE, "api_error", Some("server_overloaded")),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "api_error", Some("internal_error")),
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        self.kind().0
    }

    /// The human-readable message (never contains a secret or a prompt).
    pub fn message(&self) -> String {
        use GatewayError::*;
        match self {
            InvalidRequest { message, .. } => message.clone(),
            InvalidApiKey(m) => m.clone(),
            AdminUnauthorized => "Invalid or missing master key for the admin API.".into(),
            ModelNotAllowed { model } => {
                format!("This API key is not allowed to use the model `{model}`.")
            }
            PriceUnknown { model, provider_model } => format!(
                "The model `{model}` (deployment `{provider_model}`) has no known price, so a key with a budget cannot use it. Set `price` on the deployment in the config."
            ),
            ModelNotFound { model } => {
                format!("The model `{model}` does not exist or you do not have access to it.")
            }
            NotFound(m) => m.clone(),
            MethodNotAllowed => "Method not allowed for this endpoint.".into(),
            PayloadTooLarge { limit } => {
                format!("Request body too large: the limit is {limit} bytes.")
            }
            RequestTimeout => "The request body did not arrive in time.".into(),
            RateLimited { message, .. } => message.clone(),
            BudgetExceeded(m) => m.clone(),
            Provider { message, .. } => message.clone(),
            Upstream(m) => format!("Upstream provider error: {m}"),
            UpstreamTimeout => "The upstream provider did not answer in time.".into(),
            DeadlineExceeded { model, timeout_ms, attempts, detail } => format!(
                "No deployment of `{model}` answered within its timeout ({timeout_ms} ms); {attempts} attempt(s): {}.",
                if detail.is_empty() { "none finished" } else { detail }
            ),
            Store(m) => format!("Storage unavailable: {m}"),
            Overloaded { max_connections } => format!(
                "The server is at its limit of {max_connections} open connections; retry shortly."
            ),
            Internal(m) => format!("Internal error: {m}"),
        }
    }

    /// The `param` field of the envelope.
    pub fn param(&self) -> Option<&str> {
        match self {
            GatewayError::InvalidRequest { param, .. } => param.as_deref(),
            GatewayError::Provider { param, .. } => param.as_deref(),
            GatewayError::RateLimited { limit, .. } => Some(limit),
            GatewayError::ModelNotAllowed { .. } | GatewayError::ModelNotFound { .. } => {
                Some("model")
            }
            _ => None,
        }
    }

    /// The `Retry-After` value to send, if any.
    pub fn retry_after(&self) -> Option<String> {
        match self {
            GatewayError::RateLimited {
                retry_after_secs, ..
            } => Some(retry_after_secs.to_string()),
            GatewayError::Provider { retry_after, .. } => retry_after.clone(),
            GatewayError::Overloaded { .. } => Some("1".to_owned()),
            _ => None,
        }
    }

    /// Whether another deployment may be tried after this failure.
    pub fn is_retryable(&self) -> bool {
        match self {
            GatewayError::Upstream(_) | GatewayError::UpstreamTimeout => true,
            GatewayError::Provider { status, .. } => {
                *status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
            }
            _ => false,
        }
    }

    /// OpenAI's error envelope.
    pub fn to_json(&self) -> Value {
        let (_, kind, code) = self.kind();
        json!({
            "error": {
                "message": self.message(),
                "type": kind,
                "param": self.param(),
                "code": code,
            }
        })
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message(), self.status())
    }
}

impl std::error::Error for GatewayError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_all_four_keys() {
        let v = GatewayError::UpstreamTimeout.to_json();
        let e = v["error"].as_object().unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!(e["type"], "api_error");
        assert_eq!(e["code"], "upstream_timeout");
        assert!(e["param"].is_null());
    }

    #[test]
    fn table_statuses() {
        assert_eq!(GatewayError::invalid("x", None).status(), 400);
        assert_eq!(GatewayError::InvalidApiKey("x".into()).status(), 401);
        assert_eq!(
            GatewayError::ModelNotAllowed { model: "m".into() }.status(),
            403
        );
        assert_eq!(
            GatewayError::ModelNotFound { model: "m".into() }.status(),
            404
        );
        assert_eq!(GatewayError::MethodNotAllowed.status(), 405);
        assert_eq!(GatewayError::PayloadTooLarge { limit: 1 }.status(), 413);
        assert_eq!(GatewayError::Upstream("x".into()).status(), 502);
        assert_eq!(GatewayError::UpstreamTimeout.status(), 504);
        assert_eq!(GatewayError::BudgetExceeded("x".into()).status(), 402);
    }
}
