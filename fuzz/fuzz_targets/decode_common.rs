//! Shared by the `decode_*` targets: a decoder fed any bytes as a stream, whole and cut
//! in two at a point the input picks (and, for line decoders, as one datagram). Whatever
//! the cut, the same points and counts come out; every received line is parsed or
//! rejected; nothing panics.
#![allow(dead_code)] // each target uses what it needs
use cadent::protocol::decode::{DecodeCounts, Decoder, End};

pub type Seen = (Vec<String>, DecodeCounts);

/// One call of a decoder on `pending` (what is buffered, read up to `End`), with the
/// stream's skipping flag, adding each point it emits to the list as `{:?}`. Returns the
/// bytes it used.
pub type Decode<'a> =
    dyn FnMut(&[u8], End, &mut bool, &mut DecodeCounts, &mut Vec<String>) -> usize + 'a;

/// Feeds `chunks` to `decode` as a stream that ends with `end`; checks every call's
/// counts add up and that the end consumes everything. Returns the points and counts.
pub fn run(decode: &mut Decode<'_>, chunks: &[&[u8]], end: End) -> Seen {
    let mut points = Vec::new();
    let mut total = DecodeCounts::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut skipping = false;
    for (i, c) in chunks.iter().enumerate() {
        pending.extend_from_slice(c);
        let last = i + 1 == chunks.len();
        let mut counts = DecodeCounts::default();
        let used = decode(
            &pending,
            if last { end } else { End::More },
            &mut skipping,
            &mut counts,
            &mut points,
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
        for (a, b) in total
            .rejected_frames
            .iter_mut()
            .zip(&counts.rejected_frames)
        {
            *a += b;
        }
        pending.drain(..used);
    }
    assert!(
        pending.is_empty(),
        "the end of a stream consumes everything"
    );
    (points, total)
}

/// The stream's body and where to cut it: byte 0 is the caller's (a bound), byte 1 picks
/// the cut. `None` for inputs too short to say.
pub fn body_and_cut(data: &[u8]) -> Option<(&[u8], usize)> {
    let body = data.get(2..)?;
    Some((body, (data[1] as usize * body.len()) / 255))
}

/// Checks `decoder` on `data`: byte 0 picks the line bound, byte 1 the cut.
pub fn check(decoder: &Decoder, data: &[u8]) {
    let Some((body, cut)) = body_and_cut(data) else {
        return;
    };
    let max = 8 + data[0] as usize % 120;
    let mut decode =
        |pending: &[u8], end, skipping: &mut bool, counts: &mut _, points: &mut Vec<String>| {
            decoder.decode(pending, end, max, skipping, counts, &mut |p| {
                points.push(format!("{p:?}"))
            })
        };
    let whole = run(&mut decode, &[body], End::Stream);
    let split = run(&mut decode, &[&body[..cut], &body[cut..]], End::Stream);
    assert_eq!(whole, split, "cut at {cut}");
    run(&mut decode, &[body], End::Datagram);
}
