//! Graphite lines: never panics; an accepted line's fields are sub-slices of the input,
//! the name has no blank, and both numbers are finite.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(l) = cadent::protocol::graphite::parse(data) {
        assert!(!l.name.is_empty() && !l.name.contains(&b' ') && !l.name.contains(&b'\t'));
        let v: f64 = std::str::from_utf8(l.value).unwrap().parse().unwrap();
        assert!(v.is_finite());
        let t: f64 = std::str::from_utf8(l.timestamp).unwrap().parse().unwrap();
        assert!(t.is_finite());
        assert!(l.key().len() <= l.name.len());
    }
});
