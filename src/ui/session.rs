//! The web UI's sign-in: a stateless session cookie.
//!
//! The operator pastes the master key once (`POST /admin/session`); the
//! answer sets `conduit_session=<expiry>.<mac>` where `mac` is the
//! HMAC-SHA256 of the expiry under a key derived from the master key, so
//! any instance on any platform can check it without shared state, and
//! changing the master key ends every session. The cookie is `HttpOnly;
//! SameSite=Strict; Path=/`, `Secure` whenever the request came over
//! HTTPS, and lasts [`SESSION_SECS`].
//!
//! A request authenticated by the cookie that changes state (any method but
//! GET/HEAD) must also carry `X-Conduit-CSRF: 1`: a cross-site form cannot
//! set a custom header, and no CORS preflight is ever granted.
//!
//! Wrong master keys are slowed down: after `n` failures (within the last
//! [`FAILURE_MEMORY_SECS`], counted per process or isolate) every sign-in
//! attempt waits `min(250 ms × 2^(n-1), 8 s)` before it is checked.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::gateway::{json_response, Gateway, Response};
use crate::providers::bedrock::sigv4::{hex, hmac_sha256};
use crate::wire::error::GatewayError;

/// The cookie's name.
pub const COOKIE: &str = "conduit_session";
/// The header state-changing cookie-authenticated requests carry.
pub const CSRF_HEADER: &str = "x-conduit-csrf";
/// How long a session lasts.
pub const SESSION_SECS: u64 = 12 * 3_600;
/// Failures older than this are forgotten.
const FAILURE_MEMORY_SECS: u64 = 15 * 60;
const MAX_DELAY_MS: u64 = 8_000;

/// Recent failed sign-ins: (count, time of the last one in Unix seconds).
static FAILURES: Mutex<(u32, u64)> = Mutex::new((0, 0));

/// The MAC key: HMAC of a fixed label under the master key's SHA-256.
fn mac_key(master_hash: &[u8; 32]) -> [u8; 32] {
    hmac_sha256(master_hash, b"conduit ui session v1")
}

fn mac(master_hash: &[u8; 32], expiry: u64) -> String {
    hex(&hmac_sha256(
        &mac_key(master_hash),
        expiry.to_string().as_bytes(),
    ))
}

/// The cookie value for a session ending at `expiry` (Unix seconds).
pub fn cookie_value(master_hash: &[u8; 32], expiry: u64) -> String {
    format!("{expiry}.{}", mac(master_hash, expiry))
}

/// Is `value` a session cookie, unexpired at `now`, for this master key?
pub fn check_cookie(master_hash: &[u8; 32], value: &str, now: u64) -> bool {
    let Some((expiry, given)) = value.split_once('.') else {
        return false;
    };
    let Ok(expiry) = expiry.parse::<u64>() else {
        return false;
    };
    if expiry <= now || expiry > now + SESSION_SECS {
        return false;
    }
    let expected = mac(master_hash, expiry);
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

/// The session cookie among the request's cookies.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// Checks a request for the admin API: `Authorization: Bearer <master
/// key>` exactly as before, else a valid session cookie (with the CSRF
/// header when the method changes state). `Some` holds the refusal.
pub fn refusal(gw: &Gateway, parts: &http::request::Parts) -> Option<Response> {
    let refuse = || Some(gw.error_response(&GatewayError::AdminUnauthorized));
    let Some(expected) = gw.master_key_hash() else {
        return refuse();
    };
    if parts.headers.contains_key(http::header::AUTHORIZATION) {
        return if bearer_matches(expected, &parts.headers) {
            None
        } else {
            refuse()
        };
    }
    match session_cookie(&parts.headers) {
        Some(v) if check_cookie(expected, v, gw.now_secs()) => {
            let safe = parts.method == Method::GET || parts.method == Method::HEAD;
            if safe || parts.headers.get(CSRF_HEADER).is_some_and(|v| v == "1") {
                None
            } else {
                Some(json_response(
                    StatusCode::FORBIDDEN,
                    &json!({"error": {
                        "message": format!("A request signed in by the session cookie must send `{CSRF_HEADER}: 1` to change anything."),
                        "type": "invalid_request_error", "param": null, "code": "csrf_header_missing"}}),
                ))
            }
        }
        _ => refuse(),
    }
}

/// Constant-time check of `Authorization: Bearer <master key>`.
pub fn bearer_matches(expected: &[u8; 32], headers: &HeaderMap) -> bool {
    let Some(given) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
    else {
        return false;
    };
    let given: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
    given.ct_eq(expected).into()
}

/// Did the request come over HTTPS (directly, or as a proxy in front says)?
fn is_https(parts: &http::request::Parts) -> bool {
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    parts.uri.scheme_str() == Some("https")
        || header("x-forwarded-proto").starts_with("https")
        || header("cf-visitor").contains("\"https\"")
}

fn set_cookie(response: &mut Response, value: &str, max_age: u64, secure: bool) {
    let cookie = format!(
        "{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(http::header::SET_COOKIE, v);
    }
    response.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
}

/// The delay before the next sign-in attempt is checked, in ms.
fn penalty_ms(now: u64) -> u64 {
    let Ok(mut f) = FAILURES.lock() else { return 0 };
    if f.0 > 0 && now.saturating_sub(f.1) > FAILURE_MEMORY_SECS {
        *f = (0, 0);
    }
    match f.0 {
        0 => 0,
        n => (250u64 << (n - 1).min(10)).min(MAX_DELAY_MS),
    }
}

fn note_attempt(ok: bool, now: u64) {
    if let Ok(mut f) = FAILURES.lock() {
        *f = if ok {
            (0, 0)
        } else {
            (f.0.saturating_add(1), now)
        };
    }
}

/// `GET|POST|DELETE /admin/session`.
pub async fn handle(
    gw: &Gateway,
    method: &Method,
    parts: &http::request::Parts,
    body: Bytes,
) -> Result<Response, GatewayError> {
    let now = gw.now_secs();
    let secure = is_https(parts);
    let enabled = gw.master_key_hash().is_some();
    match *method {
        Method::GET => {
            let signed_in = gw.master_key_hash().is_some_and(|h| {
                session_cookie(&parts.headers).is_some_and(|v| check_cookie(h, v, now))
                    || bearer_matches(h, &parts.headers)
            });
            let mut r = json_response(
                StatusCode::OK,
                &json!({"object": "session", "admin_enabled": enabled, "signed_in": signed_in}),
            );
            r.headers_mut().insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            );
            Ok(r)
        }
        Method::DELETE => {
            let mut r = json_response(
                StatusCode::OK,
                &json!({"object": "session", "signed_in": false}),
            );
            set_cookie(&mut r, "", 0, secure);
            Ok(r)
        }
        _ => {
            let Some(expected) = gw.master_key_hash() else {
                return Err(GatewayError::AdminUnauthorized);
            };
            let input: Value = serde_json::from_slice(&body).map_err(|_| {
                GatewayError::invalid("Send {\"master_key\": \"…\"} as JSON.", Some("master_key"))
            })?;
            let given = input
                .get("master_key")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    GatewayError::invalid("`master_key` must be a string.", Some("master_key"))
                })?;
            let delay = penalty_ms(now);
            if delay > 0 {
                gw.ports().clock.sleep(Duration::from_millis(delay)).await;
            }
            let hash: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
            let ok: bool = hash.ct_eq(expected).into();
            note_attempt(ok, now);
            if !ok {
                return Err(GatewayError::AdminUnauthorized);
            }
            let expiry = now + SESSION_SECS;
            let mut r = json_response(
                StatusCode::OK,
                &json!({"object": "session", "signed_in": true, "expires_at": crate::wire::time::format_rfc3339(expiry)}),
            );
            set_cookie(
                &mut r,
                &cookie_value(expected, expiry),
                SESSION_SECS,
                secure,
            );
            Ok(r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_checks() {
        let h: [u8; 32] = Sha256::digest(b"master").into();
        let other: [u8; 32] = Sha256::digest(b"rotated").into();
        let v = cookie_value(&h, 2_000);
        assert!(check_cookie(&h, &v, 1_000));
        assert!(!check_cookie(&h, &v, 2_000), "expired");
        assert!(!check_cookie(&other, &v, 1_000), "another master key");
        assert!(!check_cookie(&h, &v.replace("2000.", "2001."), 1_000));
        assert!(!check_cookie(&h, "garbage", 1_000));
        assert!(!check_cookie(
            &h,
            &cookie_value(&h, 1_000 + SESSION_SECS + 5),
            1_000
        ));
    }

    #[test]
    fn finds_the_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert("cookie", "a=b; conduit_session=1.ab; c=d".parse().unwrap());
        assert_eq!(session_cookie(&headers), Some("1.ab"));
    }

    #[test]
    fn penalties_grow_and_reset() {
        note_attempt(true, 0);
        assert_eq!(penalty_ms(10), 0);
        note_attempt(false, 10);
        note_attempt(false, 10);
        assert_eq!(penalty_ms(11), 500);
        assert_eq!(penalty_ms(10 + FAILURE_MEMORY_SECS + 1), 0);
        note_attempt(true, 0);
    }
}
