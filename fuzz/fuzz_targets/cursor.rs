#![no_main]
//! Paging cursors: no panic on any text; only a cursor this secret issued for this query opens;
//! every cursor issued opens to what it was issued with; a cursor changed anywhere is refused.
use libfuzzer_sys::fuzz_target;
use scimlog_schemas::cursor;

const SECRET: [u8; 32] = [7; 32];
const NOW: i64 = 1_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Any text as a cursor: an error or a cursor that really was issued (then it opens the same
    // way again, for this query only).
    if let Ok(state) = cursor::open(&SECRET, "q", text, NOW) {
        assert!(cursor::open(&SECRET, "other", text, NOW).is_err(), "bound to its query");
        assert_eq!(cursor::open(&SECRET, "q", text, NOW).unwrap(), state);
    }
    // Issued with anything: opens to the same offset and id.
    let offset = data.iter().fold(0usize, |n, b| n.wrapping_mul(31).wrapping_add(*b as usize));
    let issued = cursor::issue(&SECRET, "q", offset, Some(text.to_string()), NOW, 60);
    let state = cursor::open(&SECRET, "q", &issued, NOW).expect("an issued cursor opens");
    assert_eq!((state.offset, state.after.as_deref()), (offset, Some(text)));
    // Changed in one place: refused.
    if let Some(first) = data.first() {
        let i = *first as usize % issued.len();
        let old = issued.as_bytes()[i];
        let new = if old == b'A' { b'B' } else { b'A' };
        let mut tampered = issued.clone().into_bytes();
        tampered[i] = new;
        let tampered = String::from_utf8(tampered).expect("ASCII");
        assert!(cursor::open(&SECRET, "q", &tampered, NOW).is_err(), "a changed cursor at {i} opened");
    }
});
