//! A client body to /v1/embeddings through the whole gateway, every provider behind (recorded answers).
#![no_main]

use libfuzzer_sys::{fuzz_mutator, fuzz_target};

fuzz_target!(|data: &[u8]| {
    conduit_fuzz::pipeline::check_request(conduit::providers::Endpoint::Embeddings, data);
});

// Half the mutations change one value inside the JSON (see conduit_fuzz::mutate).
fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    conduit_fuzz::mutate::mutate(data, size, max_size, seed)
});
