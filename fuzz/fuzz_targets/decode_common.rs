//! Shared by the `decode_*` targets: one `Decoder` variant fed any bytes as a stream,
//! whole and cut in two at a point the input picks, and as one datagram. Whatever the
//! cut, the same points and counts come out; every received line is parsed or
//! rejected; nothing panics.
use cadent::protocol::decode::{DecodeCounts, Decoder, End};

type Seen = (Vec<String>, DecodeCounts);

fn run(decoder: &Decoder, chunks: &[&[u8]], end: End, max: usize) -> Seen {
    let mut points = Vec::new();
    let mut total = DecodeCounts::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut skipping = false;
    for (i, c) in chunks.iter().enumerate() {
        pending.extend_from_slice(c);
        let last = i + 1 == chunks.len();
        let mut counts = DecodeCounts::default();
        let used = decoder.decode(
            &pending,
            if last { end } else { End::More },
            max,
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
        total.rejected_samples += counts.rejected_samples;
        for (a, b) in total.rejected_lines.iter_mut().zip(&counts.rejected_lines) {
            *a += b;
        }
        pending.drain(..used);
    }
    assert!(pending.is_empty(), "the end of a stream consumes everything");
    (points, total)
}

/// Checks `decoder` on `data`: byte 0 picks the line bound, byte 1 the cut.
pub fn check(decoder: &Decoder, data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let max = 8 + data[0] as usize % 120;
    let body = &data[2..];
    let cut = (data[1] as usize * body.len()) / 255;
    let whole = run(decoder, &[body], End::Stream, max);
    let split = run(decoder, &[&body[..cut], &body[cut..]], End::Stream, max);
    assert_eq!(whole, split, "cut at {cut}");
    run(decoder, &[body], End::Datagram, max);
}
