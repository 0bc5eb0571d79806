#![no_main]
//! See `portcullis_fuzz::checks::canonical_path`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::checks::canonical_path(data));
