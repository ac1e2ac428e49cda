//! Virtual keys: the credential an application sends instead of a provider key.
//!
//! A key is `condt_` followed by 32 random bytes in URL-safe base64 without
//! padding. Conduit stores only its SHA-256 (hex); the secret itself is shown
//! once, when it is created or rotated. The [`VirtualKey`] record carries the
//! permissions (enabled, expiry, allowed models) and the limits and budget
//! that admission enforces. [`cache`] keeps found keys in front of the store.

pub mod cache;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::wire::error::GatewayError;
use crate::wire::time::{format_rfc3339, parse_timestamp};

/// The prefix every virtual key starts with.
pub const KEY_PREFIX: &str = "condt_";

/// Nano-USD per USD: money is an integer of nano-dollars everywhere inside.
pub const NANOS_PER_USD: f64 = 1e9;

/// Per-key rate limits; `None` means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Requests per UTC day.
    pub rpd: Option<u64>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
}

impl Limits {
    /// True when no limit is set.
    pub fn is_empty(&self) -> bool {
        self.rpm.is_none() && self.rpd.is_none() && self.tpm.is_none()
    }
}

/// When a budget starts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    Daily,
    Weekly,
    Monthly,
    Total,
}

/// A spending cap in nano-USD per period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub max_nanos: u64,
    pub period: BudgetPeriod,
}

/// A virtual key's record, as stored (beside its hash) and as shown by the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualKey {
    pub id: String,
    pub name: String,
    pub enabled: bool,
    /// Unix seconds after which the key no longer works.
    pub expires_at: Option<u64>,
    /// Exact aliases or `prefix*` patterns; empty means every alias.
    pub allowed_models: Vec<String>,
    pub metadata: Map<String, Value>,
    pub limits: Limits,
    pub budget: Option<Budget>,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds.
    pub updated_at: u64,
}

impl VirtualKey {
    /// May this key use `alias`?
    pub fn allows_model(&self, alias: &str) -> bool {
        self.allowed_models.is_empty()
            || self
                .allowed_models
                .iter()
                .any(|p| match p.strip_suffix('*') {
                    Some(prefix) => alias.starts_with(prefix),
                    None => p == alias,
                })
    }

    /// Checks `enabled` and `expires_at` at `now_secs`.
    pub fn check_usable(&self, now_secs: u64) -> Result<(), GatewayError> {
        if !self.enabled {
            return Err(GatewayError::InvalidApiKey(
                "This API key is disabled.".into(),
            ));
        }
        if self.expires_at.is_some_and(|t| now_secs >= t) {
            return Err(GatewayError::InvalidApiKey(
                "This API key has expired.".into(),
            ));
        }
        Ok(())
    }

    /// The admin API's JSON view. Never contains the secret nor its hash.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), self.id.clone().into());
        m.insert("object".into(), "virtual_key".into());
        m.insert("name".into(), self.name.clone().into());
        m.insert("enabled".into(), self.enabled.into());
        m.insert(
            "expires_at".into(),
            self.expires_at.map(format_rfc3339).into(),
        );
        m.insert("allowed_models".into(), self.allowed_models.clone().into());
        m.insert("metadata".into(), Value::Object(self.metadata.clone()));
        m.insert(
            "limits".into(),
            serde_json::to_value(&self.limits).unwrap_or(Value::Null),
        );
        m.insert(
            "budget".into(),
            match &self.budget {
                Some(b) => serde_json::json!({
                    "max_usd": b.max_nanos as f64 / NANOS_PER_USD,
                    "period": b.period,
                }),
                None => Value::Null,
            },
        );
        m.insert("created_at".into(), format_rfc3339(self.created_at).into());
        m.insert("updated_at".into(), format_rfc3339(self.updated_at).into());
        Value::Object(m)
    }

    /// The storage form: every field, times as Unix seconds, money as nano-USD.
    pub fn to_storage_json(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "enabled": self.enabled,
            "expires_at": self.expires_at,
            "allowed_models": self.allowed_models,
            "metadata": self.metadata,
            "limits": self.limits,
            "budget": self.budget.as_ref().map(|b| serde_json::json!({"max_nanos": b.max_nanos, "period": b.period})),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }

    /// Reads [`to_storage_json`](Self::to_storage_json)'s form back.
    pub fn from_storage_json(v: &Value) -> Option<VirtualKey> {
        let budget = match v.get("budget") {
            Some(Value::Object(b)) => Some(Budget {
                max_nanos: b.get("max_nanos")?.as_u64()?,
                period: serde_json::from_value(b.get("period")?.clone()).ok()?,
            }),
            _ => None,
        };
        Some(VirtualKey {
            id: v.get("id")?.as_str()?.to_owned(),
            name: v.get("name")?.as_str()?.to_owned(),
            enabled: v.get("enabled")?.as_bool()?,
            expires_at: v.get("expires_at").and_then(Value::as_u64),
            allowed_models: serde_json::from_value(v.get("allowed_models")?.clone()).ok()?,
            metadata: v.get("metadata")?.as_object()?.clone(),
            limits: serde_json::from_value(v.get("limits")?.clone()).ok()?,
            budget,
            created_at: v.get("created_at")?.as_u64()?,
            updated_at: v.get("updated_at")?.as_u64()?,
        })
    }

    /// Builds a new record from an admin `POST /admin/keys` body.
    pub fn from_create_body(
        body: &Value,
        id: String,
        now_secs: u64,
    ) -> Result<VirtualKey, GatewayError> {
        let obj = body.as_object().ok_or_else(|| {
            GatewayError::invalid("The request body must be a JSON object.", None)
        })?;
        let name = match obj.get("name") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            _ => {
                return Err(GatewayError::invalid(
                    "`name` is required and must be a non-empty string.",
                    Some("name"),
                ))
            }
        };
        let mut key = VirtualKey {
            id,
            name,
            enabled: true,
            expires_at: None,
            allowed_models: Vec::new(),
            metadata: Map::new(),
            limits: Limits::default(),
            budget: None,
            created_at: now_secs,
            updated_at: now_secs,
        };
        key.apply_patch(obj, now_secs)?;
        Ok(key)
    }

    /// Applies a partial update (`PATCH /admin/keys/{id}`): fields present
    /// are replaced, `null` clears an optional field, unknown fields are refused.
    pub fn apply_patch(
        &mut self,
        patch: &Map<String, Value>,
        now_secs: u64,
    ) -> Result<(), GatewayError> {
        for (field, value) in patch {
            match field.as_str() {
                "name" => match value {
                    Value::String(s) if !s.trim().is_empty() => self.name = s.clone(),
                    _ => return Err(GatewayError::invalid("`name` must be a non-empty string.", Some("name"))),
                },
                "enabled" => {
                    self.enabled = value
                        .as_bool()
                        .ok_or_else(|| GatewayError::invalid("`enabled` must be a boolean.", Some("enabled")))?
                }
                "expires_at" => {
                    self.expires_at = match value {
                        Value::Null => None,
                        Value::Number(n) => Some(n.as_u64().ok_or_else(|| bad_time("expires_at"))?),
                        Value::String(s) => Some(parse_timestamp(s).ok_or_else(|| bad_time("expires_at"))?),
                        _ => return Err(bad_time("expires_at")),
                    }
                }
                "allowed_models" => {
                    self.allowed_models = match value {
                        Value::Null => Vec::new(),
                        Value::Array(items) => items
                            .iter()
                            .map(|i| i.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
                            .collect::<Option<Vec<_>>>()
                            .ok_or_else(|| {
                                GatewayError::invalid(
                                    "`allowed_models` must be an array of non-empty strings.",
                                    Some("allowed_models"),
                                )
                            })?,
                        _ => {
                            return Err(GatewayError::invalid(
                                "`allowed_models` must be an array of strings.",
                                Some("allowed_models"),
                            ))
                        }
                    }
                }
                "metadata" => {
                    self.metadata = match value {
                        Value::Null => Map::new(),
                        Value::Object(m) => m.clone(),
                        _ => return Err(GatewayError::invalid("`metadata` must be a JSON object.", Some("metadata"))),
                    }
                }
                "limits" => {
                    self.limits = match value {
                        Value::Null => Limits::default(),
                        v => serde_json::from_value(v.clone()).map_err(|e| {
                            GatewayError::invalid(
                                format!("`limits` must be {{rpm, rpd, tpm}} with non-negative integers or null: {e}"),
                                Some("limits"),
                            )
                        })?,
                    }
                }
                "budget" => self.budget = parse_budget(value)?,
                "id" | "object" | "created_at" | "updated_at" | "key" => {
                    return Err(GatewayError::invalid(format!("`{field}` cannot be set."), Some(field)))
                }
                other => return Err(GatewayError::invalid(format!("Unknown field `{other}`."), Some(other))),
            }
        }
        self.updated_at = now_secs;
        Ok(())
    }
}

fn bad_time(field: &str) -> GatewayError {
    GatewayError::invalid(
        format!("`{field}` must be an RFC 3339 timestamp, Unix seconds, or null."),
        Some(field),
    )
}

fn parse_budget(value: &Value) -> Result<Option<Budget>, GatewayError> {
    let bad = || {
        GatewayError::invalid(
            "`budget` must be null or {\"max_usd\": non-negative number, \"period\": \"daily\"|\"weekly\"|\"monthly\"|\"total\"}.",
            Some("budget"),
        )
    };
    let obj = match value {
        Value::Null => return Ok(None),
        Value::Object(o) => o,
        _ => return Err(bad()),
    };
    if obj.keys().any(|k| k != "max_usd" && k != "period") {
        return Err(bad());
    }
    let usd = obj
        .get("max_usd")
        .and_then(Value::as_f64)
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(bad)?;
    let period = match obj.get("period") {
        None => BudgetPeriod::Monthly,
        Some(p) => serde_json::from_value(p.clone()).map_err(|_| bad())?,
    };
    Ok(Some(Budget {
        max_nanos: (usd * NANOS_PER_USD).round() as u64,
        period,
    }))
}

/// A fresh secret: `condt_` + 32 random bytes, URL-safe base64, no padding.
pub fn generate_secret() -> Result<String, GatewayError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| GatewayError::Internal(format!("no randomness: {e}")))?;
    Ok(format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// A random identifier `prefix` + 24 hex digits (96 bits).
pub fn random_id(prefix: &str) -> String {
    let mut bytes = [0u8; 12];
    crate::wire::random::fill(&mut bytes);
    let mut s = String::with_capacity(prefix.len() + 24);
    s.push_str(prefix);
    for b in bytes {
        s.push(char::from(HEX[(b >> 4) as usize]));
        s.push(char::from(HEX[(b & 15) as usize]));
    }
    s
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// SHA-256 of a secret, lower-case hex: the only form a key is stored in.
pub fn hash_secret(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push(char::from(HEX[(b >> 4) as usize]));
        s.push(char::from(HEX[(b & 15) as usize]));
    }
    s
}

/// Pulls the virtual key out of `Authorization: Bearer`, `X-API-Key` or `api-key`.
pub fn extract_secret(headers: &http::HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(v[7..].trim());
        }
    }
    ["x-api-key", "api-key"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// The authoritative check of a presented secret against the stored key
/// record (`None`: the key is gone) and its stored hash, as a shared store
/// (DynamoDB, PostgreSQL) does it on every admission: gone → revoked,
/// another hash → rotated away, then disabled or expired.
#[allow(clippy::result_large_err)] // the core's error type, on a cold path
pub fn check_presented(
    stored: Option<(&Option<VirtualKey>, &str)>,
    presented_hash: &str,
    now_secs: u64,
) -> Result<VirtualKey, GatewayError> {
    let Some((key, stored_hash)) = stored else {
        return Err(GatewayError::InvalidApiKey(
            "This API key has been revoked.".into(),
        ));
    };
    if stored_hash != presented_hash {
        return Err(GatewayError::InvalidApiKey(
            "Incorrect API key provided.".into(),
        ));
    }
    let key = key
        .clone()
        .ok_or_else(|| GatewayError::InvalidApiKey("Incorrect API key provided.".into()))?;
    key.check_usable(now_secs)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> VirtualKey {
        VirtualKey::from_create_body(&json!({"name": "t"}), "key_1".into(), 100).unwrap()
    }

    #[test]
    fn secret_format() {
        let s = generate_secret().unwrap();
        assert!(s.starts_with("condt_"));
        assert_eq!(s.len(), 6 + 43);
        assert!(!s.contains('=') && !s.contains('+') && !s.contains('/'));
        assert_ne!(s, generate_secret().unwrap());
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn model_patterns() {
        let mut k = key();
        assert!(k.allows_model("anything"));
        k.allowed_models = vec!["gpt-4o".into(), "claude-*".into()];
        assert!(k.allows_model("gpt-4o"));
        assert!(!k.allows_model("gpt-4o-mini"));
        assert!(k.allows_model("claude-3"));
        assert!(!k.allows_model("xclaude-3"));
    }

    #[test]
    fn usability() {
        let mut k = key();
        assert!(k.check_usable(1000).is_ok());
        k.expires_at = Some(1000);
        assert!(k.check_usable(1000).is_err());
        k.expires_at = None;
        k.enabled = false;
        assert!(k.check_usable(0).is_err());
    }

    #[test]
    fn create_and_patch() {
        let body = json!({"name": "n", "expires_at": "2030-01-01T00:00:00Z", "allowed_models": ["a*"],
            "metadata": {"team": "x"}, "limits": {"rpm": 5}, "budget": {"max_usd": 1.5, "period": "daily"}});
        let mut k = VirtualKey::from_create_body(&body, "key_2".into(), 7).unwrap();
        assert_eq!(k.limits.rpm, Some(5));
        assert_eq!(k.budget.as_ref().unwrap().max_nanos, 1_500_000_000);
        let view = k.to_json();
        assert_eq!(view["budget"]["max_usd"], 1.5);
        assert_eq!(view["expires_at"], "2030-01-01T00:00:00Z");
        assert_eq!(
            VirtualKey::from_storage_json(&k.to_storage_json()).unwrap(),
            k
        );
        k.apply_patch(
            json!({"budget": null, "enabled": false})
                .as_object()
                .unwrap(),
            9,
        )
        .unwrap();
        assert!(k.budget.is_none() && !k.enabled && k.updated_at == 9);
        assert!(k
            .apply_patch(json!({"nope": 1}).as_object().unwrap(), 9)
            .is_err());
        assert!(k
            .apply_patch(json!({"limits": {"rpm": -1}}).as_object().unwrap(), 9)
            .is_err());
        assert!(VirtualKey::from_create_body(&json!({}), "k".into(), 0).is_err());
    }

    #[test]
    fn header_extraction() {
        let mut h = http::HeaderMap::new();
        assert_eq!(extract_secret(&h), None);
        h.insert("api-key", "condt_a".parse().unwrap());
        assert_eq!(extract_secret(&h), Some("condt_a"));
        h.insert("authorization", "Bearer condt_b".parse().unwrap());
        assert_eq!(extract_secret(&h), Some("condt_b"));
    }
}
