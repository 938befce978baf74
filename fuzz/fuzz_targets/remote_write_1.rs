#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| domesday_fuzz::remote_write_1(data));
