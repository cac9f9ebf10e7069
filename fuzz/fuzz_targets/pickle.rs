//! Pickle frames: never panics; whatever decodes is a valid point, and re-encoding the
//! points decodes to the same points.
#![no_main]
use cadent::protocol::pickle::{self, Decoder, Framed, Point};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::default();
    // As a stream of frames, with a small bound so the over-length path runs too.
    let mut rest = data;
    for _ in 0..64 {
        match pickle::split_frame(rest, 4096) {
            Framed::Frame { pickle, consumed } => {
                assert!(consumed <= rest.len());
                let _ = decoder.decode(pickle, |_| {});
                rest = &rest[consumed..];
            }
            Framed::Need(n) => {
                assert!(n > rest.len());
                break;
            }
            Framed::TooLarge(n) => {
                assert!(n > 4096);
                break;
            }
        }
    }

    // As one pickle.
    let mut names = Vec::new();
    let mut stamps = Vec::new();
    if decoder
        .decode(data, |p| {
            assert!(p.timestamp.is_finite() && !p.value.is_nan());
            assert!(std::str::from_utf8(p.name).is_ok());
            names.push(p.name.to_vec());
            stamps.push((p.timestamp, p.value));
        })
        .is_ok()
    {
        let points: Vec<Point> = names
            .iter()
            .zip(&stamps)
            .map(|(n, &(timestamp, value))| Point {
                name: n,
                timestamp,
                value,
            })
            .collect();
        let mut frame = Vec::new();
        pickle::encode_frame(&points, &mut frame);
        let mut again = Vec::new();
        pickle::decode(&frame[4..], |p| again.push(p.name.to_vec())).expect("own frames decode");
        assert_eq!(again, names);
    }
});
