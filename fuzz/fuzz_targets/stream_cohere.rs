//! The cohere stream decoder (chat and legacy completions): split-invariant, well-formed chunks and errors.
#![no_main]

use libfuzzer_sys::{fuzz_mutator, fuzz_target};

fuzz_target!(|data: &[u8]| {
    conduit_fuzz::decoders::check_stream("cohere", data);
});

// Half the mutations change one value inside the JSON (see conduit_fuzz::mutate).
fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    conduit_fuzz::mutate::mutate(data, size, max_size, seed)
});
