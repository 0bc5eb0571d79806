#![no_main]
//! See `portcullis_fuzz::gateway_checks::gateway_config`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::gateway_checks::gateway_config(data));
