#![no_main]
//! User and Group validation: no panic on any input.
use libfuzzer_sys::fuzz_target;
use scimlog_schemas::resource::{parse_group, parse_user};

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let _ = parse_user(&body);
    let _ = parse_group(&body);
});
