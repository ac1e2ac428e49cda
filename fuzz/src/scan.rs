//! The raw request scan ([`conduit::frontdoors::chat::RawRequest`]) against
//! the tree parse: whatever the scan accepts, the tree parses to the same
//! fields in the same order, and the scan's prompt estimate is the tree's.

use conduit::frontdoors::chat::{parse_tree, RawRequest};
use conduit::metering::limits::estimate_prompt_tokens;
use serde_json::Value;

/// Panics when the scan reads `body` otherwise than the tree does.
pub fn check_scan(body: &[u8]) {
    let Some(raw) = RawRequest::scan(body) else {
        return;
    };
    let tree = match parse_tree(body) {
        Ok(tree) => tree,
        Err(e) => panic!("the scan accepted a body the tree refuses: {e}"),
    };
    assert_eq!(raw.prompt_estimate(), estimate_prompt_tokens(&tree));
    assert_eq!(raw.fields().len(), tree.len());
    for ((key, value), (tree_key, tree_value)) in raw.fields().iter().zip(&tree) {
        assert_eq!(key, tree_key);
        let parsed: Value = serde_json::from_str(value.get()).expect("a scanned value parses");
        assert_eq!(&parsed, tree_value);
    }
}
