//! `[gateway] revocation_delay_ms` in process: a key without limits whose
//! authority vouched for it goes upstream without asking again until the
//! delay has passed, then asks (and a revocation made elsewhere applies);
//! with `0`, or with limits, the authority is asked on every request.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use conduit::keys::{hash_secret, VirtualKey};
use conduit::memory::{
    ManualClock, MemoryKeyStore, MemoryUsageStore, QueueSpawner, ScriptedUpstream,
};
use conduit::metering::limits::{LimitStatus, Rejection};
use conduit::ports::{Admission, Demand, KeyStore, Limiter, Settlement, StoreError};
use conduit::{Config, Gateway, GatewayError, Ports};
use futures_executor::block_on;
use serde_json::json;

/// An authority on keys (as a Durable Object or DynamoDB's consistent read
/// is): counts the admissions it is asked for, refuses once revoked.
#[derive(Default)]
struct Authority {
    asked: AtomicUsize,
    revoked: AtomicBool,
}

conduit::port! {
    impl Limiter for Authority {
        async fn admit(&self, key: &VirtualKey, _demand: &Demand) -> Result<Admission, Rejection> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            if self.revoked.load(Ordering::SeqCst) {
                return Err(Rejection {
                    error: GatewayError::InvalidApiKey("This API key has been revoked.".into()),
                    status: LimitStatus::default(),
                });
            }
            Ok(Admission { key: Some(key.clone()), ..Admission::default() })
        }
        async fn settle(&self, _key: &VirtualKey, _admission: &Admission, _settlement: Settlement) {}
        async fn status(&self, _key: &VirtualKey) -> Result<LimitStatus, StoreError> {
            Ok(LimitStatus::default())
        }
        fn trust_for_revocation_delay(&self) -> bool {
            true
        }
    }
}

const SECRET: &str = "condt_revocation_delay_test_secret";

fn gateway(delay: &str, limits: serde_json::Value) -> (Gateway, Arc<Authority>, Arc<ManualClock>) {
    let config = Config::parse(
        &format!(
            r#"
[providers.openai]
kind = "openai-compatible"
base_url = "http://upstream.test/v1"

[models."m"]
deployments = [{{ provider = "openai", model = "gpt-4o-mini" }}]

[gateway]
{delay}
"#
        ),
        "test",
        &|_| None,
    )
    .unwrap();
    let clock = Arc::new(ManualClock::new(1_780_000_000_000_000));
    let keys = Arc::new(MemoryKeyStore::default());
    let key = VirtualKey::from_create_body(
        &json!({"name": "hot", "limits": limits}),
        "key_hot".into(),
        1_780_000_000,
    )
    .unwrap();
    block_on(keys.insert(&key, &hash_secret(SECRET))).unwrap();
    let upstream = ScriptedUpstream::new(|_| {
        let body = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}});
        Ok(http::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(vec![Bytes::from(body.to_string())])
            .unwrap())
    });
    let authority = Arc::new(Authority::default());
    let ports = Ports {
        keys,
        usage: Arc::new(MemoryUsageStore::default()),
        upstream,
        clock: clock.clone(),
        limiter: authority.clone(),
        spawner: Arc::new(QueueSpawner::default()),
    };
    (Gateway::new(config, ports, None), authority, clock)
}

fn chat(g: &Gateway) -> u16 {
    let req = http::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("authorization", format!("Bearer {SECRET}"))
        .body(Bytes::from(
            r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#,
        ))
        .unwrap();
    block_on(g.handle(req)).status().as_u16()
}

#[test]
fn a_key_without_limits_is_trusted_for_the_delay_then_asked_again() {
    let (g, authority, clock) = gateway("revocation_delay_ms = 2000", json!(null));
    assert_eq!(chat(&g), 200);
    assert_eq!(
        authority.asked.load(Ordering::SeqCst),
        1,
        "the first request asks"
    );
    for _ in 0..20 {
        assert_eq!(chat(&g), 200);
    }
    assert_eq!(
        authority.asked.load(Ordering::SeqCst),
        1,
        "then no round trip"
    );
    // Revoked elsewhere: still served within the delay (the stated bound) ...
    authority.revoked.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_millis(1_900));
    assert_eq!(chat(&g), 200);
    // ... and refused once it has passed.
    clock.advance(Duration::from_millis(200));
    assert_eq!(chat(&g), 401);
    assert_eq!(chat(&g), 401);
}

#[test]
fn zero_delay_asks_on_every_request() {
    let (g, authority, _) = gateway("revocation_delay_ms = 0", json!(null));
    for _ in 0..5 {
        assert_eq!(chat(&g), 200);
    }
    assert_eq!(authority.asked.load(Ordering::SeqCst), 5);
    authority.revoked.store(true, Ordering::SeqCst);
    assert_eq!(chat(&g), 401, "at once");
}

#[test]
fn a_key_with_limits_is_admitted_by_the_authority_every_time() {
    let (g, authority, _) = gateway("", json!({"rpm": 1000}));
    for _ in 0..5 {
        assert_eq!(chat(&g), 200);
    }
    assert_eq!(authority.asked.load(Ordering::SeqCst), 5);
    authority.revoked.store(true, Ordering::SeqCst);
    assert_eq!(chat(&g), 401, "at once");
}
