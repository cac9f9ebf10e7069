//! `Decoder::Pickle` (carbon's pickle receiver) over a stream, whole and cut in two at a
//! point the input picks: the same points and counts come out whatever the cut (a frame
//! is decoded only once it is whole), every point is parsed or rejected, nothing panics.
#![no_main]
use cadent::protocol::decode::{DecodeCounts, Decoder, End};
use cadent::protocol::pickle;
use libfuzzer_sys::fuzz_target;

fn run(decoder: &Decoder, chunks: &[&[u8]]) -> (Vec<String>, DecodeCounts) {
    let mut vm = pickle::Decoder::default();
    let mut points = Vec::new();
    let mut total = DecodeCounts::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut skipping = false;
    for (i, c) in chunks.iter().enumerate() {
        pending.extend_from_slice(c);
        let end = if i + 1 == chunks.len() {
            End::Stream
        } else {
            End::More
        };
        let mut counts = DecodeCounts::default();
        let used = decoder.decode_pickle(
            &mut vm,
            &pending,
            end,
            &mut skipping,
            &mut counts,
            &mut |p| points.push(format!("{p:?}")),
        );
        assert!(used <= pending.len());
        assert_eq!(
            counts.received_lines,
            counts.parsed_lines + counts.rejected_lines.iter().sum::<u64>(),
            "{counts:?}"
        );
        total.received_lines += counts.received_lines;
        total.parsed_lines += counts.parsed_lines;
        for (a, b) in total.rejected_lines.iter_mut().zip(&counts.rejected_lines) {
            *a += b;
        }
        for (a, b) in total.rejected_frames.iter_mut().zip(&counts.rejected_frames) {
            *a += b;
        }
        pending.drain(..used);
    }
    assert!(pending.is_empty(), "the end of a stream consumes everything");
    (points, total)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // Byte 0 picks the frame bound (small, so the over-long path runs too), byte 1 the cut.
    let decoder = Decoder::Pickle {
        frame_bytes_max: 16 + data[0] as usize * 16,
    };
    let body = &data[2..];
    let cut = (data[1] as usize * body.len()) / 255;
    let whole = run(&decoder, &[body]);
    let split = run(&decoder, &[&body[..cut], &body[cut..]]);
    assert_eq!(whole, split, "cut at {cut}");
});
