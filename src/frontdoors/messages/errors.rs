//! Errors on the Messages API: Anthropic's shape
//! `{"type": "error", "error": {"type", "message"}}` and its status table.
//!
//! | Conduit error | status | `error.type` |
//! |---|---|---|
//! | invalid request (body, parameters) | 400 | `invalid_request_error` |
//! | missing, unknown, disabled or expired key | 401 | `authentication_error` |
//! | budget of the key | 402 | `billing_error` |
//! | model not allowed for the key, unpriced model for a key with a budget | 403 | `permission_error` |
//! | unknown model alias, unknown route | 404 | `not_found_error` |
//! | wrong method | 405 | `invalid_request_error` |
//! | body over `max_body_bytes` | 413 | `request_too_large` |
//! | rate limit of the key (`retry-after` set) | 429 | `rate_limit_error` |
//! | provider 4xx | the provider's | the provider's when it is an Anthropic type, else by status |
//! | provider overloaded (Anthropic 529, any `overloaded_error`) | 529 | `overloaded_error` |
//! | provider 5xx, unreachable, unreadable answer | 502 | `api_error` |
//! | provider timeout | 504 | `api_error` |
//! | store unavailable | 503 | `api_error` |
//! | internal error | 500 | `api_error` |

use http::StatusCode;
use serde_json::{json, Value};

use crate::wire::error::GatewayError;

/// Anthropic's error types (a provider's own `type` is kept when it is one).
const TYPES: [&str; 9] = [
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
];

fn type_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}

/// The status and body of `e` on the Messages API.
pub fn error_body(e: &GatewayError) -> (StatusCode, Value) {
    use GatewayError::*;
    let (status, kind): (StatusCode, &str) = match e {
        BudgetExceeded(_) => (StatusCode::PAYMENT_REQUIRED, "billing_error"),
        Provider { status, kind, .. } => {
            if kind == "overloaded_error" {
                (overloaded(), "overloaded_error")
            } else if TYPES.contains(&kind.as_str()) {
                (*status, kind.as_str())
            } else {
                (*status, type_for_status(*status))
            }
        }
        other => {
            let status = other.status();
            (status, type_for_status(status))
        }
    };
    (
        status,
        json!({"type": "error", "error": {"type": kind, "message": e.message()}}),
    )
}

/// Anthropic's 529.
fn overloaded() -> StatusCode {
    StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
}
