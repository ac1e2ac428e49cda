//! openai's whole answers (every endpoint) and error answers: OpenAI objects or client-visible errors.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    conduit_fuzz::decoders::check_response("openai", data);
});
