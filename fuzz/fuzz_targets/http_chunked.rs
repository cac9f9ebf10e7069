//! The HTTP listener's chunked bodies: any bytes, read in pieces of any size, through
//! the decoder a connection uses. Never panics; the body never holds more than the
//! bound or the input; a body that is whole reads the same in any piece size, and a
//! body chunked from the input's own bytes reads back as those bytes.
#![no_main]
use cadent::ingest::http::chunked_body;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, wire)) = data.split_first() else {
        return;
    };
    let piece = 1 + (first as usize & 0x3f);
    let max = 64 + (first as usize >> 6) * 512;
    let d = chunked_body(wire, piece, max);
    assert!(d.body.len() <= max && d.body.len() <= wire.len());
    if d.done {
        let whole = chunked_body(wire, wire.len().max(1), max);
        assert!(whole.done);
        assert_eq!(whole.body, d.body);
    }
    // The input as a body: chunks of the first byte's size, read in those pieces.
    let size = 1 + (first as usize % 17);
    let mut framed = Vec::new();
    for c in wire.chunks(size) {
        framed.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        framed.extend_from_slice(c);
        framed.extend_from_slice(b"\r\n");
    }
    framed.extend_from_slice(b"0\r\n\r\n");
    let back = chunked_body(&framed, piece, wire.len());
    assert!(back.done && back.refused.is_none());
    assert_eq!(back.body, wire);
});
