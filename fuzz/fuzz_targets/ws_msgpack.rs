#![no_main]
//! Fuzz target `ws_msgpack`: see tarn_verify::fuzz::ws_msgpack.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tarn_verify::fuzz::ws_msgpack(data);
});
