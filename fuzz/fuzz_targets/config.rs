//! The configuration document (TOML), with every secret set and with none.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    conduit_fuzz::inputs::check_config(data);
});
