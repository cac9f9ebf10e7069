//! `Decoder::Pickle` (carbon's pickle receiver) over a stream, whole and cut in two at a
//! point the input picks: the same points and counts come out whatever the cut (a frame
//! is decoded only once it is whole), every point is parsed or rejected, nothing panics.
//! The stream driver is `decode_common.rs`'s.
#![no_main]
use cadent::protocol::decode::{Decoder, End};
use cadent::protocol::pickle;
use libfuzzer_sys::fuzz_target;

#[path = "decode_common.rs"]
mod decode_common;

fuzz_target!(|data: &[u8]| {
    let Some((body, cut)) = decode_common::body_and_cut(data) else {
        return;
    };
    // Byte 0 picks the frame bound (small, so the over-long path runs too).
    let decoder = Decoder::Pickle {
        frame_bytes_max: 16 + data[0] as usize * 16,
    };
    // Each stream gets its own pickle machine, as each connection does.
    let decoder = &decoder;
    let stream = || {
        let mut vm = pickle::Decoder::default();
        move |pending: &[u8], end, skipping: &mut bool, counts: &mut _, points: &mut Vec<String>| {
            decoder.decode_pickle(&mut vm, pending, end, skipping, counts, &mut |p| {
                points.push(format!("{p:?}"))
            })
        }
    };
    let whole = decode_common::run(&mut stream(), &[body], End::Stream);
    let split = decode_common::run(&mut stream(), &[&body[..cut], &body[cut..]], End::Stream);
    assert_eq!(whole, split, "cut at {cut}");
});
