//! A client body to /v1/chat/completions through the whole gateway, every provider behind (recorded answers).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    conduit_fuzz::pipeline::check_request(conduit::providers::Endpoint::ChatCompletions, data);
});
