//! Graphite lines: never panics; an accepted line's fields are sub-slices of the input,
//! the name has no blank, the value is a number python's float() reads (`inf`, `nan` and
//! digit groups included) and the timestamp a finite one.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(l) = cadent::protocol::graphite::parse(data) {
        assert!(!l.name.is_empty() && !l.name.contains(&b' ') && !l.name.contains(&b'\t'));
        assert!(cadent::protocol::python_float(l.value).is_some());
        let t = cadent::protocol::python_float(l.timestamp).unwrap();
        assert!(t.is_finite());
        assert!(l.key().len() <= l.name.len());
    }
});
