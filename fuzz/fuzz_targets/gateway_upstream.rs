//! A provider's answer (first byte: provider, endpoint, stream; second: status and read size) through the gateway's translation, relay and metering.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let [select, shape, body @ ..] = data { conduit_fuzz::pipeline::check_upstream(*select, *shape, body); }
});
