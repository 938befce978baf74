#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| domesday_fuzz::collector_config(data));
