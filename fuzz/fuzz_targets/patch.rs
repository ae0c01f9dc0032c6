#![no_main]
//! The PATCH parser and engine, then validation of the result: no panic on any input.
use libfuzzer_sys::fuzz_target;
use scimlog_schemas::filter::FilterLimits;
use scimlog_schemas::patch::{apply, parse_patch};
use scimlog_schemas::registry::registry;
use scimlog_schemas::resource::parse_user;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    if let Ok(ops) = parse_patch(&body, FilterLimits::default(), 100) {
        let mut doc = serde_json::json!({"userName": "a", "emails": [{"value": "a@x", "type": "work"}]})
            .as_object()
            .unwrap()
            .clone();
        for op in &ops {
            if apply(&registry().user, &mut doc, op).is_err() {
                return;
            }
        }
        let _ = parse_user(&serde_json::Value::Object(doc));
    }
});
