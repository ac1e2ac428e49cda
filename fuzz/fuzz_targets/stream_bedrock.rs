//! The bedrock stream decoder (chat and legacy completions): split-invariant, well-formed chunks and errors.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    conduit_fuzz::decoders::check_stream("bedrock", data);
});
