//! A provider's answer (first byte: provider, endpoint, stream; second: status and read size) through the gateway's translation, relay and metering.
#![no_main]

use libfuzzer_sys::{fuzz_mutator, fuzz_target};

fuzz_target!(|data: &[u8]| {
    if let [select, shape, body @ ..] = data {
        conduit_fuzz::pipeline::check_upstream(*select, *shape, body);
    }
});

// Half the mutations change one value inside the JSON (see conduit_fuzz::mutate).
fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    conduit_fuzz::mutate::mutate(data, size, max_size, seed)
});
