//! Regex lines and Go time layouts: never panic (overflow included: fuzz builds check
//! arithmetic). Any bytes are split at the first 0xff into a layout and a value: the
//! layout, if it compiles, parses the value; the whole input also goes through a fixed
//! regex line parser, whose key must be a non-empty slice of the line.
#![no_main]
use cadent::protocol::regex_line::{RegexLine, TimeLayout};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static LINES: [RegexLine; 2] = [
        RegexLine::new(
            r"^(?P<Key>[^ ]+) (?P<Value>\S+)(?: (?P<Timestamp>.+))?$",
            Some("Mon Jan _2 15:04:05.999 -07:00 MST 2006 002 PM"),
        )
        .unwrap(),
        RegexLine::new(r"(?P<Key>\w*)=(?P<Timestamp>\S*)", Some("unix")).unwrap(),
    ];
}

fuzz_target!(|data: &[u8]| {
    let (layout, value) = match data.iter().position(|&c| c == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, data),
    };
    if let Ok(layout) = std::str::from_utf8(layout) {
        if let Ok(layout) = TimeLayout::new(layout) {
            let _ = layout.parse(value);
        }
    }
    LINES.with(|lines| {
        for p in lines {
            if let Ok(parsed) = p.parse(data) {
                assert!(!parsed.key.is_empty());
                let start = parsed.key.as_ptr() as usize - data.as_ptr() as usize;
                assert!(start + parsed.key.len() <= data.len());
            }
        }
    });
});
