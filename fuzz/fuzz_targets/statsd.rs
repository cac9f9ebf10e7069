//! statsd lines: never panics; an accepted line's name is the text before its first ':'.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(name) = cadent::protocol::statsd::parse(data) {
        assert_eq!(data.get(name.len()), Some(&b':'));
    }
});
