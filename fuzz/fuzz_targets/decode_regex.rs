//! `Decoder::Regex` (a key and a unix timestamp cut out of any line) over a stream and a
//! datagram: see `decode_common.rs`.
#![no_main]
use cadent::protocol::decode::Decoder;
use cadent::protocol::regex_line::RegexLine;
use libfuzzer_sys::fuzz_target;

#[path = "decode_common.rs"]
mod decode_common;

thread_local! {
    static DECODER: Decoder = Decoder::Regex(
        RegexLine::new(r"^(?P<Key>[^ ]+) \S+ (?P<Timestamp>\S+)$", Some("unix")).unwrap(),
    );
}

fuzz_target!(|data: &[u8]| {
    DECODER.with(|d| decode_common::check(d, data));
});
