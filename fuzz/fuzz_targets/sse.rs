//! The SSE parser: split-invariant, equal to a reference parser, re-encodes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    conduit_fuzz::framing::check_sse(data);
});
