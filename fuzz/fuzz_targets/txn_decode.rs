#![no_main]
//! Fuzz target `txn_decode`: see tarn_verify::fuzz::txn_decode.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tarn_verify::fuzz::txn_decode(data);
});
