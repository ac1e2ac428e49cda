//! Key extraction from request headers, and admin bodies that create or patch a key.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    conduit_fuzz::inputs::check_keys(data);
});
