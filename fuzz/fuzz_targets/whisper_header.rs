//! Whisper files from anywhere: reading the header, fetching and dumping never panic,
//! whatever the bytes.
#![no_main]
use cadent::store::whisper::format;
use cadent::store::whisper::io::MemIo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut io = MemIo::from_bytes(data.to_vec());
    if let Ok(h) = format::read_header(&mut io) {
        let _ = format::fetch(&mut io, &h, 0, i64::from(u32::MAX), i64::from(u32::MAX));
        let mut slots = Vec::new();
        for a in &h.archives {
            let _ = format::read_archive(&mut io, a, &mut slots);
        }
        let mut scratch = format::Scratch::new();
        let _ = format::update_many(
            &mut io,
            &h,
            &[(1_700_000_000, 1.0), (1_699_999_000, 2.0)],
            1_700_000_100,
            &mut scratch,
        );
    }
});
