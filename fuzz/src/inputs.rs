//! The client's and the operator's own inputs: the virtual key in the
//! request headers, admin bodies that create or change a key, and the
//! configuration document.

use conduit::keys::{extract_secret, hash_secret, VirtualKey};
use conduit::Config;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::decoders::check_error;

const NOW: u64 = 1_780_000_000;

/// Header lines `name: value` (those `http` accepts).
pub fn headers_of(data: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let value = &line[colon + 1..];
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    headers
}

/// Key extraction: a secret found is non-empty, trimmed and taken from one
/// of the headers sent. The same bytes as an admin body: a key created or
/// patched from it survives the storage round trip, and a refusal is a
/// client error in OpenAI's envelope.
pub fn check_keys(data: &[u8]) {
    let headers = headers_of(data);
    if let Some(secret) = extract_secret(&headers) {
        assert!(!secret.is_empty(), "an empty secret");
        assert_eq!(secret, secret.trim(), "an untrimmed secret");
        assert!(
            headers.values().any(|v| v
                .as_bytes()
                .windows(secret.len())
                .any(|w| w == secret.as_bytes())),
            "a secret that is in no header"
        );
        assert_eq!(hash_secret(secret).len(), 64);
    }
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let _ = VirtualKey::from_storage_json(&body);
    match VirtualKey::from_create_body(&body, "key_fuzz".into(), NOW) {
        Ok(key) => check_key(&key),
        Err(e) => {
            check_error(&e);
            assert_eq!(e.status(), 400, "{e:?}");
        }
    }
    if let (Some(patch), Ok(mut key)) = (
        body.as_object(),
        VirtualKey::from_create_body(&serde_json::json!({"name": "base"}), "key_base".into(), NOW),
    ) {
        match key.apply_patch(patch, NOW + 1) {
            Ok(()) => check_key(&key),
            Err(e) => {
                check_error(&e);
                assert_eq!(e.status(), 400, "{e:?}");
            }
        }
    }
}

fn check_key(key: &VirtualKey) {
    let stored = key.to_storage_json();
    assert_eq!(
        VirtualKey::from_storage_json(&stored).as_ref(),
        Some(key),
        "the storage form does not read back: {stored}"
    );
    let view = key.to_json();
    assert!(view.get("key").is_none(), "the admin view shows the secret");
    let _ = key.check_usable(NOW);
    let _ = key.allows_model("gpt-4o");
}

/// The configuration: parsed with every secret set and with none; a valid
/// one keeps the documented guarantees, an error names its source.
pub fn check_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let with: &dyn Fn(&str) -> Option<String> = &crate::setup::secret;
    let without: &dyn Fn(&str) -> Option<String> = &|_| None;
    for secret in [with, without] {
        match Config::parse(text, "fuzz.toml", secret) {
            Ok(c) => {
                assert!(c.gateway.max_body_bytes > 0);
                assert!(c.gateway.upstream_timeout_ms > 0);
                for (alias, route) in &c.models {
                    assert_eq!(alias, &route.alias);
                    assert!(!route.deployments.is_empty(), "{alias} has no deployment");
                    for d in &route.deployments {
                        assert!(!d.model.trim().is_empty());
                    }
                }
            }
            Err(e) => {
                let shown = e.to_string();
                assert!(shown.contains("fuzz.toml"), "{shown}");
                assert!(!e.message.is_empty());
            }
        }
    }
}
