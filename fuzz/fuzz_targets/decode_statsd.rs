//! `Decoder::Statsd` over a stream and a datagram: see `decode_common.rs`.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "decode_common.rs"]
mod decode_common;

fuzz_target!(|data: &[u8]| {
    decode_common::check(&cadent::protocol::decode::Decoder::Statsd, data);
});
