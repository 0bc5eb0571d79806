#![no_main]
//! See `portcullis_fuzz::checks::nonce_html`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::checks::nonce_html(data));
