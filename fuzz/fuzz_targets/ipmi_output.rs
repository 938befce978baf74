#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| domesday_fuzz::ipmi_output(data));
