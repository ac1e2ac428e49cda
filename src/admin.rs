//! The admin API: virtual keys and usage, the same on every platform.
//!
//! Every route needs `Authorization: Bearer <CONDUIT_MASTER_KEY>`, compared
//! in constant time (SHA-256 of both sides, then a constant-time equality,
//! so neither content nor length leaks). Without a configured master key
//! the admin API answers 401 to everything.
//!
//! | method and path                    | answer                                   |
//! |------------------------------------|------------------------------------------|
//! | `POST /admin/keys`                 | 201, the record plus `key` (shown once)  |
//! | `GET /admin/keys`                  | `{"data": [records]}`                    |
//! | `GET /admin/keys/{id}`             | the record                               |
//! | `PATCH /admin/keys/{id}`           | the updated record (partial update)      |
//! | `DELETE /admin/keys/{id}`          | `{"id", "object", "deleted": true}`      |
//! | `POST /admin/keys/{id}/rotate`     | `{"id", "key"}`; the old secret is dead  |
//! | `GET /admin/usage?key_id=&since=&until=` | `{"data": [usage], "totals": {…}}` |
//! | `GET /admin/routes`                | every alias's routing policy and its deployments' health on this instance |

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::GatewayError;
use crate::gateway::{json_response, percent_decode, Gateway, Response};
use crate::keys::{generate_secret, hash_secret, random_id, VirtualKey};
use crate::limits::LimitStatus;
use crate::pricing::usd;
use crate::time::{format_rfc3339, parse_timestamp};
use crate::usage::{totals, UsageQuery};

/// An admin route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRoute {
    CreateKey,
    ListKeys,
    GetKey(String),
    UpdateKey(String),
    DeleteKey(String),
    RotateKey(String),
    Usage,
    Routes,
}

/// Matches `/admin/…` paths; `Ok(None)` when the path is not an admin one.
pub fn route(method: &Method, path: &str) -> Result<Option<AdminRoute>, GatewayError> {
    let Some(rest) = path.strip_prefix("/admin/") else {
        return Ok(None);
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let m = method.clone();
    let r = match (segments.as_slice(), m) {
        (["keys"], Method::POST) => AdminRoute::CreateKey,
        (["keys"], Method::GET) => AdminRoute::ListKeys,
        (["keys"], _) => return Err(GatewayError::MethodNotAllowed),
        (["keys", id], Method::GET) if !id.is_empty() => AdminRoute::GetKey(percent_decode(id)),
        (["keys", id], Method::PATCH) if !id.is_empty() => {
            AdminRoute::UpdateKey(percent_decode(id))
        }
        (["keys", id], Method::DELETE) if !id.is_empty() => {
            AdminRoute::DeleteKey(percent_decode(id))
        }
        (["keys", id], _) if !id.is_empty() => return Err(GatewayError::MethodNotAllowed),
        (["keys", id, "rotate"], Method::POST) if !id.is_empty() => {
            AdminRoute::RotateKey(percent_decode(id))
        }
        (["keys", id, "rotate"], _) if !id.is_empty() => {
            return Err(GatewayError::MethodNotAllowed)
        }
        (["usage"], Method::GET) => AdminRoute::Usage,
        (["usage"], _) => return Err(GatewayError::MethodNotAllowed),
        (["routes"], Method::GET) => AdminRoute::Routes,
        (["routes"], _) => return Err(GatewayError::MethodNotAllowed),
        _ => return Ok(None),
    };
    Ok(Some(r))
}

/// Constant-time check of the master key.
fn authorized(expected: Option<&[u8; 32]>, headers: &http::HeaderMap) -> bool {
    let Some(expected) = expected else {
        return false;
    };
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

fn parse_body(body: &Bytes) -> Result<Value, GatewayError> {
    if body.is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_slice(body).map_err(|e| {
        GatewayError::invalid(
            format!("We could not parse the JSON body of your request: {e}"),
            None,
        )
    })
}

fn no_key(id: &str) -> GatewayError {
    GatewayError::NotFound(format!("No virtual key with id `{id}`."))
}

/// Serves an admin route.
pub(crate) async fn handle(
    gw: &Gateway,
    route: AdminRoute,
    parts: &http::request::Parts,
    body: Bytes,
) -> Result<Response, GatewayError> {
    if !authorized(gw.master_key_hash(), &parts.headers) {
        return Err(GatewayError::AdminUnauthorized);
    }
    let keys = &gw.ports().keys;
    let now = gw.now_secs();
    match route {
        AdminRoute::CreateKey => {
            let input = parse_body(&body)?;
            let key = VirtualKey::from_create_body(&input, random_id("key_"), now)?;
            let secret = generate_secret()?;
            keys.insert(&key, &hash_secret(&secret)).await?;
            let mut view = key.to_json();
            if let Some(o) = view.as_object_mut() {
                o.insert("key".into(), Value::String(secret));
            }
            Ok(json_response(StatusCode::CREATED, &view))
        }
        AdminRoute::ListKeys => {
            let data: Vec<Value> = keys.list().await?.iter().map(VirtualKey::to_json).collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({"object": "list", "data": data}),
            ))
        }
        AdminRoute::GetKey(id) => {
            let key = keys.get(&id).await?.ok_or_else(|| no_key(&id))?;
            let status = gw.ports().limiter.status(&key).await?;
            let mut view = key.to_json();
            if let Some(o) = view.as_object_mut() {
                o.insert("spend".into(), spend_view(&key, &status));
                o.insert(
                    "rate_limits".into(),
                    json!({
                        "requests": status.requests.map(|(limit, remaining, reset)| json!({"limit": limit, "remaining": remaining, "reset_seconds": reset})),
                        "tokens": status.tokens.map(|(limit, remaining, reset)| json!({"limit": limit, "remaining": remaining, "reset_seconds": reset})),
                    }),
                );
            }
            Ok(json_response(StatusCode::OK, &view))
        }
        AdminRoute::UpdateKey(id) => {
            let input = parse_body(&body)?;
            let patch = input.as_object().ok_or_else(|| {
                GatewayError::invalid("The request body must be a JSON object.", None)
            })?;
            let mut key = keys.get(&id).await?.ok_or_else(|| no_key(&id))?;
            key.apply_patch(patch, now)?;
            if !keys.update(&key).await? {
                return Err(no_key(&id));
            }
            gw.key_cache().clear();
            Ok(json_response(StatusCode::OK, &key.to_json()))
        }
        AdminRoute::DeleteKey(id) => {
            if !keys.delete(&id).await? {
                return Err(no_key(&id));
            }
            gw.key_cache().clear();
            Ok(json_response(
                StatusCode::OK,
                &json!({"id": id, "object": "virtual_key", "deleted": true}),
            ))
        }
        AdminRoute::RotateKey(id) => {
            let secret = generate_secret()?;
            if !keys.set_hash(&id, &hash_secret(&secret)).await? {
                return Err(no_key(&id));
            }
            gw.key_cache().clear();
            Ok(json_response(
                StatusCode::OK,
                &json!({"id": id, "key": secret}),
            ))
        }
        AdminRoute::Usage => {
            let query = usage_query(parts.uri.query().unwrap_or(""))?;
            let records = gw.ports().usage.query(&query).await?;
            let data: Vec<Value> = records.iter().map(|r| r.to_json()).collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({"object": "list", "data": data, "totals": totals(&records)}),
            ))
        }
        AdminRoute::Routes => Ok(json_response(
            StatusCode::OK,
            &gw.router().to_json(gw.config(), gw.now_micros()),
        )),
    }
}

/// Spend in the current budget period, in USD (and exact nano-USD).
fn spend_view(key: &VirtualKey, status: &LimitStatus) -> Value {
    let Some(budget) = &key.budget else {
        return Value::Null;
    };
    let used = status.spent_nanos + status.reserved_nanos;
    json!({
        "period": budget.period,
        "period_start": status.period_start.map(format_rfc3339),
        "spent_usd": usd(status.spent_nanos),
        "spent_nano_usd": status.spent_nanos,
        "reserved_usd": usd(status.reserved_nanos),
        "max_usd": usd(budget.max_nanos),
        "remaining_usd": usd(budget.max_nanos.saturating_sub(used)),
        "remaining_nano_usd": budget.max_nanos.saturating_sub(used),
    })
}

fn usage_query(query: &str) -> Result<UsageQuery, GatewayError> {
    let mut q = UsageQuery::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(&v.replace('+', " "));
        let time = |name: &str| {
            parse_timestamp(&v)
                .map(|s| s.saturating_mul(1000))
                .ok_or_else(|| {
                    GatewayError::invalid(
                        format!("`{name}` must be an RFC 3339 timestamp or Unix seconds."),
                        Some(name),
                    )
                })
        };
        match k {
            "key_id" if !v.is_empty() => q.key_id = Some(v.clone()),
            "since" if !v.is_empty() => q.since_ms = Some(time("since")?),
            "until" if !v.is_empty() => q.until_ms = Some(time("until")?),
            _ => {}
        }
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(&Method::POST, "/admin/keys").unwrap(),
            Some(AdminRoute::CreateKey)
        );
        assert_eq!(
            route(&Method::POST, "/admin/keys/k1/rotate").unwrap(),
            Some(AdminRoute::RotateKey("k1".into()))
        );
        assert_eq!(
            route(&Method::PUT, "/admin/keys/k1"),
            Err(GatewayError::MethodNotAllowed)
        );
        assert_eq!(route(&Method::GET, "/admin/nothing").unwrap(), None);
        assert_eq!(route(&Method::GET, "/v1/models").unwrap(), None);
    }

    #[test]
    fn master_key_check() {
        let expected: [u8; 32] = Sha256::digest(b"master").into();
        let mut h = http::HeaderMap::new();
        assert!(!authorized(Some(&expected), &h));
        h.insert("authorization", "Bearer master".parse().unwrap());
        assert!(authorized(Some(&expected), &h));
        assert!(!authorized(None, &h));
        h.insert("authorization", "Bearer mastery".parse().unwrap());
        assert!(!authorized(Some(&expected), &h));
    }

    #[test]
    fn usage_query_parsing() {
        let q =
            usage_query("key_id=key_1&since=2026-01-01T00%3A00%3A00Z&until=1800000000").unwrap();
        assert_eq!(q.key_id.as_deref(), Some("key_1"));
        assert_eq!(q.since_ms, Some(1_767_225_600_000));
        assert_eq!(q.until_ms, Some(1_800_000_000_000));
        assert!(usage_query("since=never").is_err());
    }
}
