//! The admin API: virtual keys and usage, the same on every platform.
//!
//! Every route needs `Authorization: Bearer <CONDUIT_MASTER_KEY>`, compared
//! in constant time (SHA-256 of both sides, then a constant-time equality,
//! so neither content nor length leaks), or the web UI's session cookie
//! ([`crate::ui::session`]; with `X-Conduit-CSRF: 1` on anything but GET).
//! Without a configured master key the admin API answers 401 to everything.
//!
//! | method and path                    | answer                                   |
//! |------------------------------------|------------------------------------------|
//! | `POST /admin/keys`                 | 201, the record plus `key` (shown once)  |
//! | `GET /admin/keys`                  | `{"data": [records]}`                    |
//! | `GET /admin/keys/{id}`             | the record                               |
//! | `PATCH /admin/keys/{id}`           | the updated record (partial update)      |
//! | `DELETE /admin/keys/{id}`          | `{"id", "object", "deleted": true}`      |
//! | `POST /admin/keys/{id}/rotate`     | `{"id", "key"}`; the old secret is dead  |
//! | `GET /admin/usage?key_id=&model=&status=&since=&until=&limit=&cursor=` | one page, newest first: `{"data", "totals" (of the page), "has_more", "next_cursor"}` |
//! | `GET /admin/usage/summary?since=&until=&bucket=hour\|day&key_id=&model=` | buckets, totals, top keys and models (from hourly counters) |
//! | `GET /admin/models`                | aliases, deployments, provider kinds, prices, routing (no secret) |
//! | `GET\|POST\|DELETE /admin/session` | the web UI's sign-in ([`crate::ui::session`]) |
//! | `GET /admin/routes`                | every alias's routing policy and its deployments' health on this instance |

use crate::gateway::{json_response, percent_decode, Gateway, Response};
use crate::keys::{generate_secret, hash_secret, random_id, VirtualKey};
use crate::metering::limits::LimitStatus;
use crate::metering::pricing::usd;
use crate::metering::summary::{summarize, Bucket, SummaryQuery, HOUR, MAX_BUCKETS};
use crate::metering::usage::{
    decode_cursor, encode_cursor, totals, StatusFilter, UsageQuery, DEFAULT_PAGE, MAX_PAGE,
};
use crate::ui::session;
use crate::wire::error::GatewayError;
use crate::wire::time::{format_rfc3339, parse_timestamp};
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};

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
    UsageSummary,
    Models,
    /// The web UI's session: GET (status), POST (sign in), DELETE (sign out).
    Session(Method),
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
        (["usage", "summary"], Method::GET) => AdminRoute::UsageSummary,
        (["usage", "summary"], _) => return Err(GatewayError::MethodNotAllowed),
        (["models"], Method::GET) => AdminRoute::Models,
        (["models"], _) => return Err(GatewayError::MethodNotAllowed),
        (["session"], m @ (Method::GET | Method::POST | Method::DELETE)) => AdminRoute::Session(m),
        (["session"], _) => return Err(GatewayError::MethodNotAllowed),
        _ => return Ok(None),
    };
    Ok(Some(r))
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
    if let AdminRoute::Session(method) = &route {
        return session::handle(gw, method, parts, body).await;
    }
    if let Some(refusal) = session::refusal(gw, parts) {
        return Ok(refusal);
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
            let list = keys.list().await?;
            let ids: Vec<String> = list.iter().map(|k| k.id.clone()).collect();
            let last_used = gw.ports().usage.last_used(&ids).await?;
            let data: Vec<Value> = list
                .iter()
                .zip(last_used)
                .map(|(k, used)| with_last_used(k.to_json(), used))
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({"object": "list", "data": data}),
            ))
        }
        AdminRoute::GetKey(id) => {
            let key = keys.get(&id).await?.ok_or_else(|| no_key(&id))?;
            let status = gw.ports().limiter.status(&key).await?;
            let used = gw
                .ports()
                .usage
                .last_used(std::slice::from_ref(&key.id))
                .await?;
            let mut view = with_last_used(key.to_json(), used.first().copied().flatten());
            if let Some(o) = view.as_object_mut() {
                o.insert("spend".into(), spend_view(&key, &status));
                o.insert(
                    "rate_limits".into(),
                    {
                        let view = |v: Option<(u64, u64, u64)>| {
                            v.map(|(limit, remaining, reset)| json!({"limit": limit, "remaining": remaining, "reset_seconds": reset}))
                        };
                        // `requests` is the binding request limit (rpm, else rpd), as in
                        // `x-ratelimit-*`; `rpm`, `rpd` and `tpm` each on their own.
                        json!({
                            "requests": view(status.requests),
                            "tokens": view(status.tokens),
                            "rpm": view(key.limits.rpm.and(status.requests)),
                            "rpd": view(status.daily_requests),
                            "tpm": view(status.tokens),
                        })
                    },
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
            // One more than asked tells whether another page follows.
            let asked = query.limit;
            let mut records = gw
                .ports()
                .usage
                .query(&UsageQuery {
                    limit: asked + 1,
                    ..query
                })
                .await?;
            let has_more = records.len() > asked;
            records.truncate(asked);
            let next_cursor = if has_more {
                records.last().map(encode_cursor)
            } else {
                None
            };
            let data: Vec<Value> = records.iter().map(|r| r.to_json()).collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({"object": "list", "data": data, "totals": totals(&records),
                        "has_more": has_more, "next_cursor": next_cursor}),
            ))
        }
        AdminRoute::Routes => Ok(json_response(
            StatusCode::OK,
            &gw.router().to_json(gw.config(), gw.now_micros()),
        )),
        AdminRoute::UsageSummary => {
            let (q, bucket) = summary_query(parts.uri.query().unwrap_or(""), now)?;
            let rows = gw.ports().usage.hours(&q).await?;
            let names: std::collections::HashMap<String, String> = keys
                .list()
                .await?
                .into_iter()
                .map(|k| (k.id, k.name))
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &summarize(&q, bucket, &rows, &|id| names.get(id).cloned()),
            ))
        }
        AdminRoute::Models => Ok(json_response(StatusCode::OK, &models_view(gw))),
        AdminRoute::Session(_) => Err(GatewayError::Internal("session route".into())),
    }
}

/// A key's view with `last_used_at` (RFC 3339, or null when never used).
fn with_last_used(mut view: Value, used_ms: Option<u64>) -> Value {
    if let Some(o) = view.as_object_mut() {
        o.insert(
            "last_used_at".into(),
            used_ms.map(|ms| format_rfc3339(ms / 1000)).into(),
        );
    }
    view
}

/// USD per million tokens, from nano-USD per million.
fn per_million(nanos: u64) -> f64 {
    usd(nanos)
}

/// `GET /admin/models`: every alias with its deployments in the order they
/// are tried. Provider names, kinds, model names and prices only: never a
/// base URL, secret or environment variable.
fn models_view(gw: &Gateway) -> Value {
    let config = gw.config();
    let data: Vec<Value> = config
        .models
        .values()
        .map(|route| {
            let deployments: Vec<Value> = route
                .deployments
                .iter()
                .map(|d| {
                    json!({
                        "provider": &*d.provider_name,
                        "provider_kind": config.provider_kinds.get(&*d.provider_name),
                        "model": d.model,
                        "price_per_million_tokens": d.price.map(|p| json!({
                            "input_usd": per_million(p.input),
                            "output_usd": per_million(p.output),
                            "cached_input_usd": p.cached_input.map(per_million),
                            "cache_write_usd": p.cache_write.map(per_million),
                        })),
                        "drop_unsupported_params": d.drop_unsupported_params,
                        "weight": d.weight,
                    })
                })
                .collect();
            let p = &route.policy;
            json!({
                "id": route.alias,
                "object": "model_route",
                "deployments": deployments,
                // The configured policy; live health is `GET /admin/routes`.
                "routing": {
                    "strategy": p.strategy.name(),
                    "retries": p.retries,
                    "retry_backoff_ms": p.retry_backoff_ms,
                    "retry_backoff_max_ms": p.retry_backoff_max_ms,
                    "timeout_ms": p.timeout_ms,
                    "stream_first_event_timeout_ms": p.stream_first_event_timeout_ms,
                    "cooldown_after_failures": p.cooldown_after_failures,
                    "cooldown_ms": p.cooldown_ms,
                    "fallbacks": p.fallbacks,
                    "context_window_fallbacks": p.context_window_fallbacks,
                },
            })
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "gateway": {
            "upstream_timeout_ms": config.gateway.upstream_timeout_ms,
            "max_body_bytes": config.gateway.max_body_bytes,
            "default_max_tokens": config.gateway.default_max_tokens,
        },
    })
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
            "model" if !v.is_empty() => q.model = Some(v.clone()),
            "status" if !v.is_empty() => {
                q.status = Some(StatusFilter::parse(&v).ok_or_else(|| {
                    GatewayError::invalid(
                        "`status` must be ok, error, refused or an HTTP status code.",
                        Some("status"),
                    )
                })?)
            }
            "since" if !v.is_empty() => q.since_ms = Some(time("since")?),
            "until" if !v.is_empty() => q.until_ms = Some(time("until")?),
            "limit" if !v.is_empty() => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        GatewayError::invalid(
                            format!("`limit` must be an integer from 1 to {MAX_PAGE} (default {DEFAULT_PAGE})."),
                            Some("limit"),
                        )
                    })?
            }
            "cursor" if !v.is_empty() => {
                q.before = Some(decode_cursor(&v).ok_or_else(|| {
                    GatewayError::invalid(
                        "`cursor` is not one this API gave out (use `next_cursor`).",
                        Some("cursor"),
                    )
                })?)
            }
            _ => {}
        }
    }
    Ok(q)
}

/// `since` (default: 24 hours before `until`), `until` (default: now),
/// both rounded to the bucket (`since` down, `until` up); `bucket` (`hour`
/// by default, `day`: UTC days); `key_id`, `model`.
fn summary_query(query: &str, now: u64) -> Result<(SummaryQuery, Bucket), GatewayError> {
    let mut since = None;
    let mut until = None;
    let mut bucket = Bucket::Hour;
    let mut key_id = None;
    let mut model = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(&v.replace('+', " "));
        let time = |name: &str| {
            parse_timestamp(&v).ok_or_else(|| {
                GatewayError::invalid(
                    format!("`{name}` must be an RFC 3339 timestamp or Unix seconds."),
                    Some(name),
                )
            })
        };
        match k {
            "since" if !v.is_empty() => since = Some(time("since")?),
            "until" if !v.is_empty() => until = Some(time("until")?),
            "key_id" if !v.is_empty() => key_id = Some(v.clone()),
            "model" if !v.is_empty() => model = Some(v.clone()),
            "bucket" => {
                bucket = match v.as_str() {
                    "hour" => Bucket::Hour,
                    "day" => Bucket::Day,
                    _ => {
                        return Err(GatewayError::invalid(
                            "`bucket` must be `hour` or `day`.",
                            Some("bucket"),
                        ))
                    }
                }
            }
            _ => {}
        }
    }
    let width = bucket.secs();
    let until = until.unwrap_or(now).div_ceil(width) * width;
    let since = since.unwrap_or(until.saturating_sub(24 * HOUR)) / width * width;
    if since >= until {
        return Err(GatewayError::invalid(
            "`since` must be before `until`.",
            Some("since"),
        ));
    }
    if (until - since).div_ceil(bucket.secs()) > MAX_BUCKETS {
        return Err(GatewayError::invalid(
            format!("At most {MAX_BUCKETS} buckets: shorten the range or use `bucket=day`."),
            Some("bucket"),
        ));
    }
    Ok((
        SummaryQuery {
            since,
            until,
            key_id,
            model,
            bucket,
        },
        bucket,
    ))
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
        let expected: [u8; 32] = {
            use sha2::Digest;
            sha2::Sha256::digest(b"master").into()
        };
        let mut h = http::HeaderMap::new();
        assert!(!session::bearer_matches(&expected, &h));
        h.insert("authorization", "Bearer master".parse().unwrap());
        assert!(session::bearer_matches(&expected, &h));
        h.insert("authorization", "Bearer mastery".parse().unwrap());
        assert!(!session::bearer_matches(&expected, &h));
    }

    #[test]
    fn summary_query_parsing() {
        let (q, b) = summary_query("bucket=day&since=1767225600&until=1767312000", 0).unwrap();
        assert_eq!(
            (q.since, q.until, b),
            (1_767_225_600, 1_767_312_000, Bucket::Day)
        );
        let (q, b) = summary_query("", 1_767_225_601).unwrap();
        assert_eq!(
            (q.since, q.until, b),
            (1_767_142_800, 1_767_229_200, Bucket::Hour)
        );
        assert!(summary_query("bucket=week", 0).is_err());
        assert!(summary_query("since=7200&until=3600", 0).is_err());
        assert!(summary_query("since=0&until=1767225600", 0).is_err());
    }

    #[test]
    fn usage_query_parsing() {
        let q =
            usage_query("key_id=key_1&since=2026-01-01T00%3A00%3A00Z&until=1800000000").unwrap();
        assert_eq!(q.key_id.as_deref(), Some("key_1"));
        assert_eq!(q.since_ms, Some(1_767_225_600_000));
        assert_eq!(q.until_ms, Some(1_800_000_000_000));
        assert!(usage_query("since=never").is_err());
        assert!(usage_query("limit=0").is_err());
        assert!(usage_query("limit=1001").is_err());
        assert!(usage_query("cursor=@@").is_err());
        let q = usage_query("status=refused&model=m&limit=5").unwrap();
        assert_eq!(
            (q.status, q.model.as_deref(), q.limit),
            (Some(StatusFilter::Refused), Some("m"), 5)
        );
    }
}
