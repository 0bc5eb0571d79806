#![no_main]
//! See `portcullis_fuzz::checks::request`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = portcullis_fuzz::checks::request(data);
});
