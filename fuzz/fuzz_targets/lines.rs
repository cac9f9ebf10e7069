//! Line framing: whatever the split points of a stream, the same lines come out, and no
//! returned line is longer than the bound or contains a newline.
#![no_main]
use cadent::protocol::lines::{split, Piece};
use libfuzzer_sys::fuzz_target;

fn frame(chunks: &[&[u8]], max: usize) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::new();
    let mut pending = Vec::new();
    let mut skipping = false;
    for c in chunks {
        pending.extend_from_slice(c);
        let n = split(&pending, max, &mut skipping, |p| {
            out.push(match p {
                Piece::Line(l) => {
                    assert!(l.len() <= max && !l.contains(&b'\n'));
                    Some(l.to_vec())
                }
                Piece::TooLong => None,
            })
        });
        pending.drain(..n);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max = 8 + data[0] as usize % 64;
    let cut = 1 + data[1] as usize % (data.len() - 1);
    let body = &data[2..];
    let cut = cut.min(body.len());
    let whole = frame(&[body], max);
    let split_in_two = frame(&[&body[..cut], &body[cut..]], max);
    assert_eq!(whole, split_in_two);
});
