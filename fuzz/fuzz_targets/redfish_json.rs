#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| domesday_fuzz::redfish_json(data));
