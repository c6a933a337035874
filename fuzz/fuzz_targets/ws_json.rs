#![no_main]
//! Fuzz target `ws_json`: see tarn_verify::fuzz::ws_json.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tarn_verify::fuzz::ws_json(data);
});
