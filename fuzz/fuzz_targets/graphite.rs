//! Graphite lines: never panics; an accepted line's fields are sub-slices of the input,
//! the name has no blank, the value is a number python's float() reads (`inf`, `nan` and
//! digit groups included) and the timestamp a finite one. A cleansing listener's parse
//! (any byte but a blank in a name) accepts whatever the strict one does, and its names
//! cleanse to bytes of `[A-Za-z0-9._:#-]` in the path and no NUL anywhere.
#![no_main]
use cadent::protocol::graphite;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let strict = graphite::parse(data);
    if let Ok(l) = strict {
        assert!(!l.name.is_empty() && !l.name.contains(&b' ') && !l.name.contains(&b'\t'));
        assert!(cadent::protocol::python_float(l.value).is_some());
        let t = cadent::protocol::python_float(l.timestamp).unwrap();
        assert!(t.is_finite());
        assert!(l.key().len() <= l.name.len());
    }
    let any = graphite::parse_with(data, true);
    if let Ok(l) = strict {
        assert_eq!(any, Ok(l));
    }
    if let Ok(l) = any {
        assert!(!l.name.is_empty() && !l.name.contains(&b' ') && !l.name.contains(&b'\t'));
        let mut out = Vec::new();
        graphite::cleanse(l.name, &mut out);
        assert!(!out.contains(&0));
        let path = graphite::hash_key(&out);
        assert!(path
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"._:#-".contains(&b)));
        assert!(graphite::is_clean(&out) || out.is_empty() || out.starts_with(b";"));
    }
});
