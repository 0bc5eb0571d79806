#![no_main]
//! See `portcullis_fuzz::checks::csp`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::checks::csp(data));
