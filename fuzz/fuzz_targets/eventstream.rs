//! The Bedrock eventstream decoder: split-invariant, bounded, one error at most, re-encodes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    conduit_fuzz::framing::check_eventstream(data);
});
