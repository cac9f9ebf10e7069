//! `Decoder::Graphite` over a stream and a datagram, strict and as a cleansing listener
//! reads names: see `decode_common.rs`.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "decode_common.rs"]
mod decode_common;

fuzz_target!(|data: &[u8]| {
    for cleanse_names in [false, true] {
        decode_common::check(
            &cadent::protocol::decode::Decoder::Graphite { cleanse_names },
            data,
        );
    }
});
