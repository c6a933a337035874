#![no_main]
//! Fuzz target `wal_record`: see tarn_verify::fuzz::wal_record.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tarn_verify::fuzz::wal_record(data);
});
