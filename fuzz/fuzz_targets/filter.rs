#![no_main]
//! The filter parser and evaluator: no panic on any input, and a parsed filter prints back to
//! the same tree.
use libfuzzer_sys::fuzz_target;
use scimlog_schemas::filter::{Filter, FilterLimits};
use scimlog_schemas::registry::registry;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(f) = Filter::parse(text, FilterLimits::default()) {
        let user = serde_json::json!({"userName": "b", "emails": [{"value": "b@x", "type": "work"}], "meta": {"lastModified": "2011-05-13T04:42:34Z"}});
        let _ = f.matches(&registry().user, &user);
        let again = Filter::parse(&f.to_string(), FilterLimits { max_length: usize::MAX, max_depth: usize::MAX })
            .expect("printed filters parse");
        assert_eq!(again, f);
    }
});
