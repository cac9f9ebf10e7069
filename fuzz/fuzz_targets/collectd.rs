//! collectd datagrams: never panics at any security level; every record it gives has
//! what collectd requires to dispatch, and re-encoding those records then decoding them
//! again gives the same records. The listener's decoder (points in batches, named by
//! identifier in a scratch) gives exactly the value lists the types table accepts, each
//! named by its identifier and keyed by its host.
#![no_main]
use std::sync::Arc;

use cadent::point::Value;
use cadent::protocol::collectd::types_db::TypesDb;
use cadent::protocol::collectd::{
    write_identifier, AuthFile, Decoder, Encoder, EncoderConfig, Record, Security, SecurityLevel,
};
use cadent::protocol::decode::{CollectdDecoder, DecodeCounts};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let auth = AuthFile::parse(b"alice: s3cret\n");
    let securities = [
        Security::new(SecurityLevel::None, None).unwrap(),
        Security::new(SecurityLevel::None, Some(auth.clone())).unwrap(),
        Security::new(SecurityLevel::Sign, Some(auth.clone())).unwrap(),
        Security::new(SecurityLevel::Encrypt, Some(auth)).unwrap(),
    ];
    for security in securities {
        let mut buf = data.to_vec();
        let mut decoder = Decoder::new(security);
        // Every decoded value list fits a 64 KiB packet: its parts were in the input.
        let mut encoder = Encoder::new(EncoderConfig {
            max_packet_bytes: 65535,
            ..EncoderConfig::default()
        });
        let mut first = Vec::new();
        let mut packets: Vec<Vec<u8>> = Vec::new();
        decoder.decode(&mut buf, &mut |r| {
            first.push(format!("{r:?}"));
            if let Record::Values(vl) = r {
                assert!(vl.time.0 != 0 && !vl.host.is_empty() && !vl.plugin.is_empty());
                assert!(!vl.type_.is_empty() && !vl.values.is_empty());
                encoder
                    .push(&vl, &mut |p: &[u8]| packets.push(p.to_vec()))
                    .expect("a decoded value list encodes");
            }
        });
        encoder.flush(&mut |p: &[u8]| packets.push(p.to_vec()));
        let mut again = Vec::new();
        let mut plain = Decoder::default();
        for p in &mut packets {
            plain.decode(p, &mut |r| {
                if let Record::Values(_) = r {
                    again.push(format!("{r:?}"));
                }
            });
        }
        first.retain(|r| r.starts_with("Values"));
        assert_eq!(first, again);
    }
    // The listener's decoder.
    let types = Arc::new(TypesDb::builtin());
    let mut want = Vec::new();
    let mut buf = data.to_vec();
    Decoder::default().decode(&mut buf, &mut |r| {
        if let Record::Values(vl) = r {
            if types.get(vl.type_).is_none_or(|ds| ds.len() == vl.values.len()) {
                let mut id = Vec::new();
                write_identifier(&mut id, vl.identity());
                want.push((id, vl.host.to_vec()));
            }
        }
    });
    let mut got = Vec::new();
    let mut buf = data.to_vec();
    let mut d = CollectdDecoder::new(Security::default(), types, false);
    let mut counts = DecodeCounts::default();
    d.decode(&mut buf, &mut counts, &mut |points| {
        assert!(!points.is_empty() && points.len() <= 16);
        for p in points {
            let Value::Collectd(c) = p.value else {
                panic!("a collectd point")
            };
            assert_eq!(p.key, c.vl.host);
            got.push((p.name.to_vec(), p.key.to_vec()));
        }
    });
    assert_eq!(got, want);
});
