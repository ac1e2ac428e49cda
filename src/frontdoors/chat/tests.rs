//! The raw request path against the tree path: the same checks, the same
//! estimate, and the same upstream body (the same JSON; the same bytes for a
//! compact, canonical body).

use serde_json::{json, Map, Value};

use super::{parse_tree, ClientBody, RawRequest};
use crate::metering::limits::{completion_allowance, estimate_prompt_tokens};
use crate::providers::openai::{prepare_body, splice_body};
use crate::providers::Endpoint;

/// The request seeds of the fuzz targets (recorded SDK requests).
const SEEDS: [&str; 12] = [
    include_str!("../../../fuzz/seeds/chat/images.json"),
    include_str!("../../../fuzz/seeds/chat/json_schema.json"),
    include_str!("../../../fuzz/seeds/chat/simple.json"),
    include_str!("../../../fuzz/seeds/chat/stream.json"),
    include_str!("../../../fuzz/seeds/chat/stream_tools.json"),
    include_str!("../../../fuzz/seeds/chat/tools.json"),
    include_str!("../../../fuzz/seeds/completions/options.json"),
    include_str!("../../../fuzz/seeds/completions/simple.json"),
    include_str!("../../../fuzz/seeds/completions/stream.json"),
    include_str!("../../../fuzz/seeds/embeddings/batch_base64.json"),
    include_str!("../../../fuzz/seeds/embeddings/options.json"),
    include_str!("../../../fuzz/seeds/embeddings/simple.json"),
];

/// Bodies as the SDKs and hand-written clients send them: spaces, escapes,
/// `stream_options` given or not, token ids, image parts, numbers.
const SHAPED: [&str; 12] = [
    r#"{"messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Say hello in one short sentence."}], "model": "chat", "max_tokens": 32}"#,
    r#"{"model":"chat","messages":[{"role":"user","content":"caf\u00e9 \"quoted\" \ud83d\ude00 \n"}],"stream":true}"#,
    r#"{"model":"chat","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":false,"extra":1}}"#,
    r#"{"model":"chat","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":null}"#,
    r#"{"model":"chat","messages":[{"role":"user","content":"hi"}],"stream":false,"stream_options":{"include_usage":true}}"#,
    r#"{"model":"chat","messages":[{"role":"user","content":[{"type":"text","text":"what is this?"},{"type":"image_url","image_url":{"url":"https://example.com/a.png","detail":"low"}},{"type":"input_image","image_url":"x"}]}],"max_completion_tokens":100,"n":2,"temperature":0.7,"top_p":1e-3,"seed":-42}"#,
    r#"{"model":"comp","prompt":[[1,2,3],[4,5]],"max_tokens":7,"suffix":"end","logit_bias":{"50256":-100}}"#,
    r#"{"model":"emb","input":["one","two"],"encoding_format":"base64","dimensions":256}"#,
    "{\n  \"model\" : \"chat\" ,\n  \"messages\" : [ { \"role\" : \"user\" , \"content\" : \"spaced\" } ]\n}\n",
    r#"{"model":"chat","messages":[{"role":"user","content":"x","type":"text","type":"image"}]}"#,
    r#"{"model":"chat","messages":[{"role":"user","content":"a","content":"longer text"}],"user":"u-1","metadata":{"a":"b"},"tools":[]}"#,
    r#"{"model":"chat","messages":[{"role":"user","content":"hi"}],"max_tokens":null,"n":null,"stream":null}"#,
];

/// A wide object (more keys than the scan keeps inline), with keys repeated.
fn wide() -> String {
    let mut props = String::new();
    for i in 0..40 {
        props.push_str(&format!(
            "\"p{}\":{{\"type\":\"string\",\"description\":\"field {i}\"}},",
            i % 25
        ));
    }
    props.push_str("\"type\":\"image\",\"type\":\"object\"");
    format!(
        r#"{{"model":"chat","messages":[{{"role":"user","content":"hi"}}],"tools":[{{"type":"function","function":{{"name":"f","parameters":{{"type":"object","properties":{{{props}}}}}}}}}]}}"#
    )
}

fn corpus() -> Vec<String> {
    let mut all: Vec<String> = SEEDS
        .iter()
        .chain(SHAPED.iter())
        .map(|s| s.to_string())
        .collect();
    all.push(wide());
    all
}

/// The tree path's view of `body`, field by field.
fn check_same_reading(body: &str) {
    let tree = parse_tree(body.as_bytes()).expect("the corpus parses");
    let raw = RawRequest::scan(body.as_bytes()).unwrap_or_else(|| panic!("scanned: {body}"));
    assert_eq!(
        raw.prompt_estimate,
        estimate_prompt_tokens(&tree),
        "estimate of {body}"
    );
    let keys: Vec<&str> = raw.fields().iter().map(|(k, _)| *k).collect();
    let tree_keys: Vec<&str> = tree.keys().map(String::as_str).collect();
    assert_eq!(keys, tree_keys, "{body}");
    for (k, v) in &tree {
        assert_eq!(raw.get(k).as_ref(), Some(v), "{k} of {body}");
    }
    let client = ClientBody::Raw(raw);
    for default in [16, 4096] {
        assert_eq!(
            client
                .completion_allowance(default)
                .map_err(|e| e.to_string()),
            completion_allowance(&tree, default).map_err(|e| e.to_string()),
            "{body}"
        );
    }
}

#[test]
fn the_scan_reads_what_the_tree_reads() {
    for body in corpus() {
        check_same_reading(&body);
    }
}

#[test]
fn the_spliced_body_is_the_printed_body() {
    for body in corpus() {
        let raw = RawRequest::scan(body.as_bytes()).expect("scanned");
        for stream in [false, true] {
            let mut tree = parse_tree(body.as_bytes()).unwrap();
            let printed = prepare_body(&mut tree, "gpt-4o-mini-2024-07-18", stream).unwrap();
            let spliced = splice_body(&raw, "gpt-4o-mini-2024-07-18", stream);
            let printed_value: Value = serde_json::from_slice(&printed).unwrap();
            let spliced_value: Value = serde_json::from_slice(&spliced).unwrap();
            assert_eq!(spliced_value, printed_value, "{body} (stream {stream})");
            // Same keys in the same order, too.
            let order = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
            assert_eq!(order(&spliced_value), order(&printed_value));
            // A compact, canonical body comes out byte for byte as printed.
            let canonical = serde_json::to_vec(&parse_tree(body.as_bytes()).unwrap()).unwrap();
            if canonical == body.trim_end().as_bytes() {
                assert_eq!(
                    String::from_utf8_lossy(&spliced),
                    String::from_utf8_lossy(&printed),
                    "{body} (stream {stream})"
                );
            }
        }
    }
}

#[test]
fn the_seeds_are_canonical_so_their_bytes_are_compared() {
    let canonical = SEEDS
        .iter()
        .filter(|s| {
            serde_json::to_vec(&parse_tree(s.as_bytes()).unwrap()).unwrap()
                == s.trim_end().as_bytes()
        })
        .count();
    assert!(canonical >= 10, "only {canonical} canonical seeds");
}

#[test]
fn what_the_scan_is_unsure_of_goes_to_the_tree() {
    let deep = format!(
        r#"{{"model":"chat","messages":[{{"role":"user","content":{}"x"{}}}]}}"#,
        "[".repeat(110),
        "]".repeat(110)
    );
    for body in [
        r#"{"model":"a","model":"b","messages":[]}"#,
        r#"{"mod\u0065l":"a","messages":[]}"#,
        r#"{"model":"a","messages":[{"r\u006fle":"user"}]}"#,
        r#"{"model":"a","messages":[{"role":"user","content":"\ud800"}]}"#,
        r#"{"model":"a","messages":[],"temperature":1e400}"#,
        r#"{"model":"a","messages":[]} trailing"#,
        r#"["model"]"#,
        r#"{"model":"a","messages":[{"role":"user","content":"hi"}]"#,
        deep.as_str(),
    ] {
        assert!(RawRequest::scan(body.as_bytes()).is_none(), "{body}");
    }
    // Each of them still gets the tree's answer.
    let tree = ClientBody::parse(
        Endpoint::ChatCompletions,
        br#"{"model":"a","model":"b","messages":[]}"#,
    )
    .unwrap();
    assert_eq!(tree.get("model").as_deref(), Some(&json!("b")));
    assert!(matches!(tree, ClientBody::Tree(_)));
    let err = ClientBody::parse(
        Endpoint::ChatCompletions,
        br#"{"model":"a","messages":[],"temperature":1e400}"#,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("We could not parse the JSON body"),
        "{err}"
    );
    let err = ClientBody::parse(Endpoint::ChatCompletions, b"[1]").unwrap_err();
    assert!(err.to_string().contains("must be a JSON object"), "{err}");
}

#[test]
fn the_front_doors_get_the_tree() {
    let body = br#"{"model":"chat","input":"hi"}"#;
    assert!(matches!(
        ClientBody::parse(Endpoint::Responses, body).unwrap(),
        ClientBody::Tree(_)
    ));
    assert!(matches!(
        ClientBody::parse(Endpoint::Embeddings, body).unwrap(),
        ClientBody::Raw(_)
    ));
}

#[test]
fn a_raw_body_becomes_the_same_tree() {
    let body = SHAPED[5].as_bytes();
    let mut client = ClientBody::parse(Endpoint::ChatCompletions, body).unwrap();
    assert!(client.has("messages") && !client.has("stream"));
    let tree: Map<String, Value> = client.tree().unwrap().clone();
    assert_eq!(tree, parse_tree(body).unwrap());
    assert!(client.raw().is_none());
}

/// The upstream request of every OpenAI-dialect provider, spliced and
/// built from the tree: the same method, URL, headers and JSON body (the
/// same bytes for a canonical body).
#[test]
fn the_providers_send_the_same_request_either_way() {
    use crate::providers::azure::Azure;
    use crate::providers::openai::OpenAi;
    use crate::providers::{Call, Provider};
    let providers: Vec<std::sync::Arc<dyn Provider>> = vec![
        crate::frontdoors::behind_front_doors(std::sync::Arc::new(OpenAi::new(
            "http://h/v1".into(),
            Some("sk-test".into()),
        ))),
        crate::frontdoors::behind_front_doors(std::sync::Arc::new(
            OpenAi::new("http://h:8080/v1".into(), None).with_responses_api(),
        )),
        crate::frontdoors::behind_front_doors(std::sync::Arc::new(Azure::new(
            "https://r.openai.azure.com".into(),
            "az-key".into(),
            "2024-10-21".into(),
        ))),
    ];
    let cases = [
        (Endpoint::ChatCompletions, SEEDS[5], false),
        (Endpoint::ChatCompletions, SEEDS[3], true),
        (Endpoint::ChatCompletions, SHAPED[0], false),
        (Endpoint::ChatCompletions, SHAPED[2], true),
        (Endpoint::Completions, SEEDS[6], false),
        (Endpoint::Completions, SEEDS[8], true),
        (Endpoint::Embeddings, SEEDS[9], false),
        (Endpoint::Embeddings, SHAPED[7], false),
    ];
    for provider in &providers {
        for (endpoint, body, stream) in cases {
            let call = Call {
                endpoint,
                model: "deploy-1",
                stream,
                now_secs: 0,
                request_id: "req_1",
                drop_unsupported_params: false,
            };
            let raw = RawRequest::scan(body.as_bytes()).expect("scanned");
            let spliced = provider
                .splice_request(&call, &raw)
                .expect("an OpenAI-dialect provider splices")
                .unwrap();
            let mut tree = parse_tree(body.as_bytes()).unwrap();
            let built = provider.build_request(&call, &mut tree).unwrap();
            assert_eq!(spliced.method(), built.method());
            assert_eq!(spliced.uri(), built.uri());
            assert_eq!(spliced.headers(), built.headers(), "{body}");
            let json = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap();
            assert_eq!(json(spliced.body()), json(built.body()), "{body}");
            let canonical = serde_json::to_vec(&parse_tree(body.as_bytes()).unwrap()).unwrap();
            if canonical == body.trim_end().as_bytes() {
                assert_eq!(spliced.body(), built.body(), "{body}");
            }
        }
        // The front doors' endpoints are never spliced.
        let call = Call {
            endpoint: Endpoint::Responses,
            model: "deploy-1",
            stream: false,
            now_secs: 0,
            request_id: "req_1",
            drop_unsupported_params: false,
        };
        let raw = RawRequest::scan(br#"{"model":"m","input":"hi"}"#).unwrap();
        assert!(provider.splice_request(&call, &raw).is_none());
    }
}

/// An alias no OpenAI-dialect provider serves: the scan stops after the top
/// level (the model is asked for before the walk) and the body is parsed
/// once into the tree, the one every provider is built from; the same
/// tree, and the same 400s, as without the question.
#[test]
fn a_body_for_other_dialects_goes_to_the_tree_at_once() {
    for body in SEEDS.iter().chain(&SHAPED) {
        let model = parse_tree(body.as_bytes()).unwrap()["model"].clone();
        let mut asked = None;
        let client = ClientBody::parse_for(Endpoint::ChatCompletions, body.as_bytes(), |m| {
            asked = Some(m.to_owned());
            false
        })
        .unwrap();
        assert_eq!(asked.as_deref(), model.as_str(), "{body}");
        match client {
            ClientBody::Tree(tree) => assert_eq!(tree, parse_tree(body.as_bytes()).unwrap()),
            ClientBody::Raw(_) => panic!("raw values kept: {body}"),
        }
        let kept = ClientBody::parse_for(Endpoint::ChatCompletions, body.as_bytes(), |_| true);
        assert!(matches!(kept.unwrap(), ClientBody::Raw(_)), "{body}");
    }
    // Bad bodies: the tree's 400 either way, asked or not.
    for body in [
        &br#"{"model":"a","messages":[],"temperature":1e400}"#[..],
        b"[1]",
        br#"{"model":"a","messages":[]"#,
    ] {
        let refused = ClientBody::parse_for(Endpoint::ChatCompletions, body, |_| false);
        let kept = ClientBody::parse(Endpoint::ChatCompletions, body);
        assert_eq!(
            refused.unwrap_err().to_string(),
            kept.unwrap_err().to_string()
        );
    }
}
