//! The usage record's JSON forms, its queries and totals.

use super::*;

/// A record with every optional field set, one with none, and one with
/// strings to escape (quotes, backslashes, control characters,
/// non-ASCII), a deployment among them, a date past 9999.
fn sample_records() -> (UsageRecord, UsageRecord, UsageRecord) {
    let full = UsageRecord {
        request_id: "req_\"1".into(),
        key_id: "key_1".into(),
        model: "chat".into(),
        provider: Some("openai".into()),
        provider_model: Some("gpt-4o-mini".into()),
        endpoint: "/v1/chat/completions".into(),
        status: 200,
        streamed: true,
        usage: TokenUsage {
            prompt_tokens: 10,
            completion_tokens: 5,
            total_tokens: 15,
            cached_tokens: 3,
            cache_write_tokens: 2,
            reasoning_tokens: 1,
        },
        estimated_prompt_tokens: 12,
        estimated_completion_tokens: u64::MAX,
        cost_nanos: Some(123_456_789),
        refused_by: Some("tpm".into()),
        latency_us: 1_234_567,
        upstream_latency_us: 1_000_001,
        created_at_ms: 1_767_225_600_123,
        attempts: 2,
        failed_attempts: vec![FailedAttempt {
            alias: "chat".into(),
            provider: "anthropic".into(),
            model: "claude".into(),
            status: 529,
            code: Some("overloaded".into()),
            kind: AttemptFailure::default(),
        }],
        served_alias: Some("fallback".into()),
        trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
    };
    let bare = UsageRecord {
        key_id: "k".into(),
        ..UsageRecord::default()
    };
    let escaped = UsageRecord {
        request_id: "req_\"1\"".into(),
        key_id: "k\\1".into(),
        model: "m\n\u{1}é✓".into(),
        provider: Some("p\"".into()),
        provider_model: Some("x/\t".into()),
        cost_nanos: Some(0),
        created_at_ms: 253_402_300_800_000,
        failed_attempts: vec![FailedAttempt {
            alias: "a\u{1f}".into(),
            provider: "p".into(),
            model: "m".into(),
            status: 0,
            code: None,
            kind: AttemptFailure::Timeout,
        }],
        ..UsageRecord::default()
    };
    (full, bare, escaped)
}

/// The store's direct serialisation is the admin view's text, byte for
/// byte, with every optional field set and unset.
#[test]
fn written_json_is_the_views_text() {
    let (full, bare, escaped) = sample_records();
    for r in [full, bare, escaped] {
        let mut out = b"prefix".to_vec();
        r.write_json(&mut out).unwrap();
        assert_eq!(
            std::str::from_utf8(&out[6..]).unwrap(),
            r.to_json().to_string()
        );
    }
}

/// The stored form reads back as the record it was written from, as
/// the view's text does, for records with every field set, none, and
/// strings to escape; it is valid JSON with the fields a store filters
/// on, and shorter than the view.
#[test]
fn stored_json_reads_back_as_the_record() {
    let (full, bare, escaped) = sample_records();
    for r in [full, bare, escaped] {
        let mut stored = Vec::new();
        r.write_stored_json(&mut stored).unwrap();
        let stored: Value = serde_json::from_slice(&stored).unwrap();
        let view = r.to_json();
        assert_eq!(
            UsageRecord::from_json(&stored),
            UsageRecord::from_json(&view),
            "{stored}"
        );
        assert_eq!(UsageRecord::from_json(&stored).unwrap().to_json(), view);
        for field in [
            "request_id",
            "key_id",
            "model",
            "endpoint",
            "status",
            "created_at_ms",
        ] {
            assert_eq!(stored.get(field), view.get(field), "{field}");
        }
        assert!(stored.to_string().len() < view.to_string().len());
    }
}

#[test]
fn reads_openai_usage() {
    let u = TokenUsage::from_openai(&json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 2}}))
    .unwrap();
    assert_eq!(
        (
            u.prompt_tokens,
            u.completion_tokens,
            u.total_tokens,
            u.cached_tokens,
            u.reasoning_tokens
        ),
        (10, 5, 15, 4, 2)
    );
    assert!(TokenUsage::from_openai(&Value::Null).is_none());
    let e = TokenUsage::from_openai(&json!({"prompt_tokens": 8, "total_tokens": 8})).unwrap();
    assert_eq!(e.completion_tokens, 0);
}

/// Found by fuzzing (`response_openai`): counts whose sum passes 2^64
/// overflowed (a panic in debug builds), even with `total_tokens` given.
#[test]
fn huge_counts_saturate() {
    let max = u64::MAX;
    let u =
        TokenUsage::from_openai(&json!({"prompt_tokens": max, "completion_tokens": 1})).unwrap();
    assert_eq!(u.total_tokens, max);
    let u = TokenUsage::from_openai(
        &json!({"prompt_tokens": max, "completion_tokens": max, "total_tokens": 7}),
    )
    .unwrap();
    assert_eq!(u.total_tokens, 7);
}

#[test]
fn record_round_trip() {
    let r = UsageRecord {
        request_id: "req_1".into(),
        key_id: "key_1".into(),
        model: "m".into(),
        provider: Some("p".into()),
        provider_model: None,
        endpoint: "/v1/chat/completions".into(),
        status: 200,
        streamed: true,
        usage: TokenUsage {
            prompt_tokens: 1,
            completion_tokens: 2,
            total_tokens: 3,
            ..Default::default()
        },
        estimated_prompt_tokens: 5,
        estimated_completion_tokens: 7,
        cost_nanos: Some(1234),
        refused_by: None,
        latency_us: 12_345,
        upstream_latency_us: 12_000,
        created_at_ms: 1_700_000_000_123,
        attempts: 2,
        failed_attempts: vec![FailedAttempt {
            alias: "m".into(),
            provider: "q".into(),
            model: "x".into(),
            status: 503,
            code: Some("upstream_error".into()),
            kind: AttemptFailure::Status5xx,
        }],
        served_alias: Some("m-backup".into()),
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    };
    assert_eq!(UsageRecord::from_json(&r.to_json()).unwrap(), r);
    assert_eq!(r.to_json()["overhead_ms"], 0.345);
}
