#![no_main]
//! Fuzz target `http_path`: see tarn_verify::fuzz::http_path.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tarn_verify::fuzz::http_path(data);
});
