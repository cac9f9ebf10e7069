//! Vectors A-E from `shared/reference/collectd.md` (made by collectd 5.12 or accepted by
//! it), round trips, and one test per security rule of a `Listen` block.

use super::*;

/// A: collectd-tg (libcollectdclient), first value list of a captured packet.
const A: &str = "0000000d686f737430303834000002000e706c7567696e303037000004000a67617567650000050011746931373134363336393135000008000c1ac04a64a73e19000009000c00000000800000000006000f0001010000baf4a9955140";
/// B: collectd daemon, first value list.
const B: &str = "0000000b7478686f7374000008000c1ac04a74ced8dd930009000c0000000040000000000200096c6f616400000400096c6f6164000006002100030101010000000000fb0540000000000030f33f0000000000e0dd3f";
/// C: 7 value lists: state carry, clearing, several data sources, old TIME, all types.
const C: &str = "00000016746573742e686f73742e6578616d706c65000008000c1ac04a70400000000009000c0000000280000000000200086370750000030006300000040008637075000005000969646c65000006000f00010200000000000030390005000975736572000006000f000102000000000000002a000200096c6f6164000003000500000400096c6f6164000005000500000600210003010101000000000000d03f000000000000e03f000000000000f83f0002000e696e74657266616365000003000965746830000004000e69665f6f637465747300000600180002020200000000000003e800000000000007d00002000b6d656d6f72790000030005000004000b6d656d6f7279000005000975736564000006000f00010100000000004a93400001000c000000006b0129c10000000c6f6c6474696d65000002000b7467706c7567000004000c636f756e7465720000050005000006000f00010000000000000000070004000d6162736f6c757465000006000f0001030000000000000009";
/// D: signed by alice/s3cret.
const D: &str = "020000295505c37a8c751491fe2ca9eae56305ed5a189133445f6234f87882551b3752c7616c696365000000107369676e65642d686f7374000008000c1ac04a70400000000009000c0000000280000000000200077467000004000a6761756765000006000f0001010000000000000a40";
/// E: encrypted for alice/s3cret with IV 00..0f.
const E: &str = "021000740005616c696365000102030405060708090a0b0c0d0e0f7b98c3cc70c070d6900dadb4ec914905f24c25bd29e824e05187c846d30954da48263b53c7cb3fe0bd6639cd99a6996519c6cd0ef26b7122f267e1e4ef56c03a0029cc2119f042c72332cb2d9f3b468197bb19701ca5d3bc43";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn auth(text: &str) -> Option<AuthFile> {
    Some(AuthFile::parse(text.as_bytes()))
}

fn security(level: SecurityLevel, auth_text: Option<&str>) -> Security {
    Security::new(level, auth_text.and_then(auth)).unwrap()
}

/// One record per line, the way `cadent collectd dump` will print them, but with the
/// exact cdtime and the value variants.
fn show(r: &Record<'_>) -> String {
    fn ident(identity: [&[u8]; 5]) -> String {
        let mut out = Vec::new();
        write_identifier(&mut out, identity);
        String::from_utf8_lossy(&out).into_owned()
    }
    match r {
        Record::Values(v) => format!(
            "{} {:#x} {} {:?}",
            ident(v.identity()),
            v.time.0,
            v.interval.as_secs_f64(),
            v.values
        ),
        Record::Notification(n) => format!(
            "NOTIFY {} {:#x} {} {}",
            ident(n.identity()),
            n.time.0,
            n.severity.as_str(),
            String::from_utf8_lossy(n.message)
        ),
    }
}

fn decode_with(dec: &mut Decoder, packet: &[u8]) -> Vec<String> {
    let mut buf = packet.to_vec();
    let mut out = Vec::new();
    dec.decode(&mut buf, &mut |r| out.push(show(&r)));
    out
}

/// Decodes at a level; returns the records and the stats.
fn run(level: SecurityLevel, auth_text: Option<&str>, packet: &[u8]) -> (Vec<String>, DecodeStats) {
    let mut dec = Decoder::new(security(level, auth_text));
    let out = decode_with(&mut dec, packet);
    (out, dec.stats().clone())
}

fn check(packet: &[u8], expected: &[&str]) {
    let (got, _) = run(SecurityLevel::None, None, packet);
    assert_eq!(got, expected);
}

const T: &str = "0x1ac04a7040000000"; // 1795238337 s

#[test]
fn vector_a_collectd_tg() {
    check(
        &hex(A),
        &["host0084/plugin007/gauge-ti1714636915 0x1ac04a64a73e1900 2 [Gauge(70.33849828876555)]"],
    );
}

#[test]
fn vector_b_daemon() {
    check(
        &hex(B),
        &["txhost/load/load 0x1ac04a74ced8dd93 1 [Gauge(2.74755859375), Gauge(1.19921875), Gauge(0.466796875)]"],
    );
}

#[test]
fn vector_c_state_carry() {
    let (got, stats) = run(SecurityLevel::None, None, &hex(C));
    let expected = [
        format!("test.host.example/cpu-0/cpu-idle {T} 10 [Derive(12345)]"),
        format!("test.host.example/cpu-0/cpu-user {T} 10 [Derive(42)]"),
        format!("test.host.example/load/load {T} 10 [Gauge(0.25), Gauge(0.5), Gauge(1.5)]"),
        format!("test.host.example/interface-eth0/if_octets {T} 10 [Derive(1000), Derive(2000)]"),
        format!("test.host.example/memory/memory-used {T} 10 [Gauge(1234.5)]"),
        format!("oldtime/tgplug/counter {T} 10 [Counter(7)]"),
        format!("oldtime/tgplug/absolute {T} 10 [Absolute(9)]"),
    ];
    assert_eq!(got, expected);
    assert_eq!(stats.value_lists, 7);
    assert_eq!(stats.rejected_total(), 0);
}

const D_RECORD: &str = "signed-host/tg/gauge 0x1ac04a7040000000 10 [Gauge(3.25)]";
const E_RECORD: &str = "enc-host/tg/gauge 0x1ac04a7040000000 10 [Gauge(6.5)]";
const ALICE: &str = "alice: s3cret\n";
const ALICE_WRONG: &str = "alice: secret\n";

#[test]
fn vector_d_signed() {
    let (got, stats) = run(SecurityLevel::Sign, Some(ALICE), &hex(D));
    assert_eq!(got, [D_RECORD]);
    assert_eq!(stats.rejected_total(), 0);
}

#[test]
fn vector_e_encrypted() {
    let (got, stats) = run(SecurityLevel::Encrypt, Some(ALICE), &hex(E));
    assert_eq!(got, [E_RECORD]);
    assert_eq!(stats.rejected_total(), 0);
}

// ---- Security rules: what a `Listen` block with the same settings does. ----

/// A plain packet (vector B): processed at `none`, ignored at `sign` and `encrypt`.
#[test]
fn rule_plain_packet_by_level() {
    assert_eq!(run(SecurityLevel::None, None, &hex(B)).0.len(), 1);
    assert_eq!(run(SecurityLevel::None, Some(ALICE), &hex(B)).0.len(), 1);
    let (got, stats) = run(SecurityLevel::Sign, Some(ALICE), &hex(B));
    assert!(got.is_empty());
    assert_eq!(stats.rejected(Reject::UnsignedIgnored), 1);
    let (got, stats) = run(SecurityLevel::Encrypt, Some(ALICE), &hex(B));
    assert!(got.is_empty());
    assert_eq!(stats.rejected(Reject::UnencryptedIgnored), 1);
}

/// Level `none` without an auth file takes signed data unverified, even under a wrong
/// signature (collectd: "can't verify it ... Will accept it").
#[test]
fn rule_none_without_auth_accepts_signed_unverified() {
    let mut d = hex(D);
    d[10] ^= 0xff; // break the MAC
    let (got, stats) = run(SecurityLevel::None, None, &d);
    assert_eq!(got, [D_RECORD]);
    assert_eq!(stats.signatures_unverified, 1);
}

/// Level `none` with an auth file verifies signatures: good ones pass, bad ones drop the
/// rest of the packet.
#[test]
fn rule_none_with_auth_verifies() {
    assert_eq!(run(SecurityLevel::None, Some(ALICE), &hex(D)).0, [D_RECORD]);
    let (got, stats) = run(SecurityLevel::None, Some(ALICE_WRONG), &hex(D));
    assert!(got.is_empty());
    assert_eq!(stats.rejected(Reject::BadSignature), 1);
}

/// Encrypted data needs an auth file at every level; with one, `none` decrypts it.
#[test]
fn rule_encrypted_needs_auth() {
    let (got, stats) = run(SecurityLevel::None, None, &hex(E));
    assert!(got.is_empty());
    assert_eq!(stats.rejected(Reject::NoAuthFile), 1);
    assert_eq!(run(SecurityLevel::None, Some(ALICE), &hex(E)).0, [E_RECORD]);
}

/// `sign` takes signed and encrypted data; wrong password or unknown user: nothing.
#[test]
fn rule_sign_level() {
    assert_eq!(run(SecurityLevel::Sign, Some(ALICE), &hex(D)).0, [D_RECORD]);
    assert_eq!(run(SecurityLevel::Sign, Some(ALICE), &hex(E)).0, [E_RECORD]);
    let (got, stats) = run(SecurityLevel::Sign, Some(ALICE_WRONG), &hex(D));
    assert!(got.is_empty());
    assert_eq!(stats.rejected(Reject::BadSignature), 1);
    let (got, stats) = run(SecurityLevel::Sign, Some("bob: s3cret\n"), &hex(D));
    assert!(got.is_empty());
    assert_eq!(stats.rejected(Reject::UnknownUser), 1);
}

/// `encrypt` takes only encrypted data: signed packets are ignored.
#[test]
fn rule_encrypt_level() {
    let (got, stats) = run(SecurityLevel::Encrypt, Some(ALICE), &hex(D));
    assert!(got.is_empty());
    assert_eq!(stats.rejected(Reject::UnencryptedIgnored), 1);
    let (got, stats) = run(SecurityLevel::Encrypt, Some(ALICE_WRONG), &hex(E));
    assert!(got.is_empty());
    assert_eq!(stats.rejected(Reject::BadChecksum), 1);
    let (got, stats) = run(SecurityLevel::Encrypt, Some("bob: s3cret\n"), &hex(E));
    assert!(got.is_empty());
    assert_eq!(stats.rejected(Reject::UnknownUser), 1);
}

/// Altered ciphertext fails the SHA-1 check.
#[test]
fn rule_tampered_ciphertext() {
    let mut e = hex(E);
    let last = e.len() - 1;
    e[last] ^= 1;
    let (got, stats) = run(SecurityLevel::Encrypt, Some(ALICE), &e);
    assert!(got.is_empty());
    assert_eq!(stats.rejected(Reject::BadChecksum), 1);
}

/// collectd refuses a `sign` or `encrypt` listener without an auth file.
#[test]
fn rule_sign_and_encrypt_need_auth_file() {
    for level in [SecurityLevel::Sign, SecurityLevel::Encrypt] {
        assert_eq!(
            Security::new(level, None).unwrap_err(),
            SecurityError::AuthFileRequired(level)
        );
    }
    assert!(Security::new(SecurityLevel::None, None).is_ok());
    assert_eq!(
        "Encrypt".parse::<SecurityLevel>(),
        Ok(SecurityLevel::Encrypt)
    );
    assert!("paranoid".parse::<SecurityLevel>().is_err());
}

/// Plain parts before a signature are ignored at `sign`; what the signature covers is
/// read with fresh state. At `none` both are read.
#[test]
fn rule_sign_mixed_packet() {
    let mut p = hex(B);
    p.extend_from_slice(&hex(D));
    let (got, stats) = run(SecurityLevel::Sign, Some(ALICE), &p);
    assert_eq!(got, [D_RECORD]);
    assert_eq!(stats.rejected(Reject::UnsignedIgnored), 1);
    assert_eq!(run(SecurityLevel::None, Some(ALICE), &p).0.len(), 2);
}

/// An encrypted part is a packet of its own (fresh state) and the outer packet goes on
/// after it; at `encrypt` the plain parts around it are ignored.
#[test]
fn rule_encrypted_part_amid_plain() {
    // Plain host part, then E, then a values part: the outer host carries past E.
    let mut p = hex("0000000a6f75746572000001000c000000006b0129c10002000670000004000a676175676500");
    p.extend_from_slice(&hex(E));
    p.extend_from_slice(&hex("0006000f0001010000000000000040"));
    let (got, stats) = run(SecurityLevel::None, Some(ALICE), &p);
    assert_eq!(stats.rejected_total(), 0, "{stats:?}");
    assert_eq!(
        got,
        [E_RECORD, "outer/p/gauge 0x1ac04a7040000000 0 [Gauge(2.0)]"]
    );
    let (got, stats) = run(SecurityLevel::Encrypt, Some(ALICE), &p);
    assert_eq!(got, [E_RECORD]);
    assert_eq!(stats.rejected(Reject::UnencryptedIgnored), 1);
}

#[test]
fn auth_file_parsing() {
    let a = AuthFile::parse(
        b"# comment\n\n  alice:   s3cret\r\nbob:\nno colon\nalice: other\ncarol :pw with space \n",
    );
    assert_eq!(a.len(), 2);
    assert!(a.get(b"alice").is_some());
    assert!(a.get(b"bob").is_none()); // empty password: skipped
    assert!(a.get(b"carol ").is_some()); // trailing space in the user kept
    assert!(a.get(b"carol").is_none());
    // First alice wins: D verifies.
    let dec_auth = "alice: s3cret\nalice: other\n";
    assert_eq!(
        run(SecurityLevel::Sign, Some(dec_auth), &hex(D)).0,
        [D_RECORD]
    );
    // Trailing space in the password is part of it.
    assert!(run(SecurityLevel::Sign, Some("alice: s3cret \n"), &hex(D))
        .0
        .is_empty());
}

// ---- Malformed input: the rest is dropped, what was read stands. ----

#[test]
fn malformed_keeps_earlier_value_lists() {
    let c = hex(C);
    // Cut inside the third values part: the first two stand.
    let cut = 160;
    let (got, stats) = run(SecurityLevel::None, None, &c[..cut]);
    assert_eq!(got.len(), 2);
    assert_eq!(stats.rejected(Reject::PartOverrunsPacket), 1);
}

#[test]
fn unknown_part_skipped() {
    let mut p = hex("777700080000000000");
    p.truncate(8);
    p.extend_from_slice(&hex(A));
    assert_eq!(run(SecurityLevel::None, None, &p).0.len(), 1);
}

/// Decodes a mutated copy of vector A: `kept` value lists stand and `reason` is counted once.
fn check_mutated(what: &str, mutate: impl FnOnce(&mut Vec<u8>), kept: usize, reason: Reject) {
    let mut p = hex(A);
    mutate(&mut p);
    let (got, stats) = run(SecurityLevel::None, None, &p);
    assert_eq!(got.len(), kept, "{what}");
    assert_eq!(stats.rejected(reason), 1, "{what}");
}

#[test]
fn bad_parts() {
    check_mutated(
        "host not NUL-terminated",
        |p| p[12] = b'x',
        0,
        Reject::BadString,
    );
    check_mutated(
        "unknown value type code",
        |p| {
            let at = p.len() - 9;
            p[at] = 9;
        },
        0,
        Reject::BadValueType,
    );
    check_mutated(
        "values length that does not match its count",
        |p| {
            let at = p.len() - 11;
            p[at] = 2;
        },
        0,
        Reject::BadValues,
    );
    check_mutated(
        "trailing bytes after a good packet",
        |p| p.extend_from_slice(&[0, 0, 0]),
        1,
        Reject::TrailingBytes,
    );
    check_mutated(
        "a part shorter than its header",
        |p| p.extend_from_slice(&[0, 0, 0, 2, 0]),
        1,
        Reject::PartTooShort,
    );
}

fn string_part(kind: u16, s: &[u8]) -> Vec<u8> {
    let mut p = kind.to_be_bytes().to_vec();
    p.extend_from_slice(&((s.len() + 5) as u16).to_be_bytes());
    p.extend_from_slice(s);
    p.push(0);
    p
}

fn number_part(kind: u16, v: u64) -> Vec<u8> {
    let mut p = kind.to_be_bytes().to_vec();
    p.extend_from_slice(&12u16.to_be_bytes());
    p.extend_from_slice(&v.to_be_bytes());
    p
}

const GAUGE_1: &str = "0006000f000101000000000000f03f";

#[test]
fn string_lengths() {
    for (len, ok) in [(127, true), (128, false)] {
        let mut p = string_part(0, &vec![b'h'; len]);
        p.extend(number_part(1, 100));
        p.extend(string_part(2, b"p"));
        p.extend(string_part(4, b"t"));
        p.extend(hex(GAUGE_1));
        let (got, stats) = run(SecurityLevel::None, None, &p);
        assert_eq!(got.len(), ok as usize, "{len}");
        assert_eq!(stats.rejected(Reject::StringTooLong), !ok as u64);
    }
}

/// A values part with no time, host, plugin or type is not dispatched; parsing goes on.
#[test]
fn incomplete_value_list_skipped() {
    let mut p = string_part(0, b"h");
    p.extend(string_part(2, b"p"));
    p.extend(string_part(4, b"t"));
    p.extend(hex(GAUGE_1)); // time 0
    p.extend(number_part(1, 100));
    p.extend(hex(GAUGE_1));
    p.extend(string_part(2, b"")); // plugin cleared
    p.extend(hex(GAUGE_1));
    let (got, stats) = run(SecurityLevel::None, None, &p);
    assert_eq!(got, ["h/p/t 0x1900000000 0 [Gauge(1.0)]"]);
    assert_eq!(stats.rejected(Reject::IncompleteValueList), 2);
}

#[test]
fn notifications() {
    let mut p = string_part(0, b"h");
    p.extend(string_part(2, b"p"));
    p.extend(string_part(0x100, b"no severity yet"));
    p.extend(number_part(0x101, 2));
    p.extend(string_part(0x100, b"no time yet"));
    p.extend(number_part(8, 5 << 30));
    p.extend(string_part(0x100, b"disk full"));
    p.extend(string_part(0x100, b""));
    p.extend(number_part(0x101, 3));
    p.extend(string_part(0x100, b"bad severity"));
    let (got, stats) = run(SecurityLevel::None, None, &p);
    assert_eq!(got, ["NOTIFY h/p/ 0x140000000 WARNING disk full"]);
    assert_eq!(stats.notifications, 1);
    assert_eq!(stats.rejected(Reject::BadNotification), 4);
}

/// collectd reads 8 bytes after a numeric part's header whatever its length.
#[test]
fn short_numeric_part_reads_like_collectd() {
    let mut p = string_part(0, b"h");
    p.extend(string_part(2, b"p"));
    p.extend(string_part(4, b"t"));
    // time_hr with length 4: the value is the next 8 bytes; then parsing resumes there.
    p.extend(hex("00080004"));
    p.extend(hex(GAUGE_1));
    p.extend(hex(GAUGE_1));
    let (got, _) = run(SecurityLevel::None, None, &p);
    assert_eq!(
        got,
        [
            "h/p/t 0x6000f00010100 0 [Gauge(1.0)]",
            "h/p/t 0x6000f00010100 0 [Gauge(1.0)]"
        ]
    );
}

// ---- Encoding ----

/// Decodes with a given security; returns owned records for comparison.
fn decode_all(sec: Security, packets: &[Vec<u8>]) -> Vec<String> {
    let mut dec = Decoder::new(sec);
    let mut out = Vec::new();
    for p in packets {
        out.extend(decode_with(&mut dec, p));
    }
    assert_eq!(dec.stats().rejected_total(), 0, "{:?}", dec.stats());
    out
}

/// Decodes `packet`, encodes what came out with `config`, returns the packets.
fn reencode(sec: Security, packet: &[u8], config: EncoderConfig) -> (Vec<String>, Vec<Vec<u8>>) {
    let mut buf = packet.to_vec();
    let mut enc = Encoder::new(config);
    let mut shown = Vec::new();
    let mut packets = Vec::new();
    let mut sink = |p: &[u8]| packets.push(p.to_vec());
    Decoder::new(sec).decode(&mut buf, &mut |r| {
        shown.push(show(&r));
        if let Record::Values(vl) = r {
            enc.push(&vl, &mut sink).unwrap();
        }
    });
    enc.flush(&mut sink);
    (shown, packets)
}

fn alice() -> Credentials {
    Credentials::new(b"alice", b"s3cret").unwrap()
}

#[test]
fn round_trip_vectors() {
    let alice_sec = || security(SecurityLevel::None, Some(ALICE));
    for v in [A, B, C, D, E] {
        let configs = [
            (EncoderConfig::default(), SecurityLevel::None),
            (
                EncoderConfig {
                    security: SendSecurity::Sign(alice()),
                    ..EncoderConfig::default()
                },
                SecurityLevel::Sign,
            ),
            (
                EncoderConfig {
                    security: SendSecurity::Encrypt(alice()),
                    ..EncoderConfig::default()
                },
                SecurityLevel::Encrypt,
            ),
        ];
        for (config, level) in configs {
            let (before, packets) = reencode(alice_sec(), &hex(v), config);
            assert_eq!(packets.len(), 1);
            assert_eq!(
                decode_all(security(level, Some(ALICE)), &packets),
                before,
                "{v}"
            );
        }
    }
}

/// The encoder writes parts in the daemon's order, so D's payload comes out byte for
/// byte, and so does its signature.
#[test]
fn sign_produces_vector_d() {
    let config = EncoderConfig {
        security: SendSecurity::Sign(alice()),
        ..EncoderConfig::default()
    };
    let (_, packets) = reencode(security(SecurityLevel::Sign, Some(ALICE)), &hex(D), config);
    assert_eq!(to_hex(&packets[0]), D);
}

#[test]
fn encrypt_produces_vector_e() {
    let mut buf = hex(E);
    let mut enc = Encoder::new(EncoderConfig {
        security: SendSecurity::Encrypt(alice()),
        ..EncoderConfig::default()
    });
    enc.fix_iv(core::array::from_fn(|i| i as u8));
    let mut out = Vec::new();
    Decoder::new(security(SecurityLevel::Encrypt, Some(ALICE))).decode(&mut buf, &mut |r| {
        if let Record::Values(vl) = r {
            enc.push(&vl, &mut |p: &[u8]| out.push(p.to_vec())).unwrap();
        }
    });
    enc.flush(&mut |p: &[u8]| out.push(p.to_vec()));
    assert_eq!(to_hex(&out[0]), E);
}

/// Vector C re-encoded plain is one packet holding the same 7 value lists, with only
/// the changed fields written: 372 bytes, as a collectd `Forward` relay re-encodes it
/// (C repeats an unchanged time as an old-style TIME part, 12 bytes).
#[test]
fn reencode_c_writes_only_changes() {
    let (before, packets) = reencode(
        security(SecurityLevel::None, None),
        &hex(C),
        EncoderConfig::default(),
    );
    assert_eq!(packets.len(), 1);
    assert_eq!(before.len(), 7);
    assert_eq!(packets[0].len(), 372);
    assert_eq!(decode_all(Security::default(), &packets), before);
}

/// Many value lists: packets never exceed the limit, are filled (the next value list
/// did not fit), and decode to what went in, clearing fields that go back to empty.
#[test]
fn packing() {
    let values = [
        Value::Gauge(1.5),
        Value::Derive(-3),
        Value::Counter(7),
        Value::Absolute(9),
    ];
    let hosts: Vec<String> = (0..7).map(|h| format!("host{h:04}")).collect();
    let plugins: Vec<String> = (0..5).map(|p| format!("plugin{p:03}")).collect();
    let mut lists = Vec::new();
    for i in 0..3000usize {
        let pi: &[u8] = if i % 3 == 0 { b"" } else { b"inst" };
        let ti: &[u8] = if i % 4 == 0 { b"" } else { b"ti" };
        lists.push(ValueList {
            host: hosts[i % 7].as_bytes(),
            plugin: plugins[i / 7 % 5].as_bytes(),
            plugin_instance: pi,
            type_: b"gauge",
            type_instance: ti,
            time: CdTime::from_secs(1_795_238_337 + (i / 100) as u64),
            interval: CdTime::from_secs(10),
            values: Values::from_slice(&values[..1 + i % 4]),
        });
    }
    for security in [
        SendSecurity::None,
        SendSecurity::Sign(alice()),
        SendSecurity::Encrypt(alice()),
    ] {
        let mut enc = Encoder::new(EncoderConfig {
            max_packet_bytes: MAX_PACKET_BYTES_DEFAULT,
            security,
        });
        let mut packets: Vec<Vec<u8>> = Vec::new();
        for vl in &lists {
            enc.push(vl, &mut |p: &[u8]| packets.push(p.to_vec()))
                .unwrap();
        }
        enc.flush(&mut |p: &[u8]| packets.push(p.to_vec()));
        assert_eq!(enc.stats().value_lists, 3000);
        // The biggest value list with every field written is under 120 bytes.
        for p in &packets[..packets.len() - 1] {
            assert!(p.len() <= MAX_PACKET_BYTES_DEFAULT);
            assert!(p.len() > MAX_PACKET_BYTES_DEFAULT - 120, "{}", p.len());
        }
        let expected: Vec<String> = lists.iter().map(|vl| show(&Record::Values(*vl))).collect();
        assert_eq!(decode_all(security_for_test(), &packets), expected);
    }
}

fn security_for_test() -> Security {
    security(SecurityLevel::None, Some(ALICE))
}

#[test]
fn encode_rejects() {
    let v = [Value::Gauge(1.0)];
    let good = ValueList {
        host: b"h",
        plugin: b"p",
        plugin_instance: b"",
        type_: b"t",
        type_instance: b"",
        time: CdTime::from_secs(1),
        interval: CdTime(0),
        values: Values::from_slice(&v),
    };
    let mut enc = Encoder::new(EncoderConfig::default());
    let mut sink = |_: &[u8]| panic!("nothing to send yet");
    assert_eq!(enc.push(&good, &mut sink), Ok(()));
    let long = [b'x'; 128];
    let many = [Value::Gauge(0.0); 200];
    let cases = [
        (ValueList { host: b"", ..good }, EncodeReject::Incomplete),
        (
            ValueList {
                time: CdTime(0),
                ..good
            },
            EncodeReject::Incomplete,
        ),
        (
            ValueList {
                plugin_instance: &long,
                ..good
            },
            EncodeReject::StringTooLong,
        ),
        (
            ValueList {
                type_instance: b"a\0b",
                ..good
            },
            EncodeReject::StringHasNul,
        ),
        (
            ValueList {
                values: Values::from_slice(&[]),
                ..good
            },
            EncodeReject::NoValues,
        ),
        (
            ValueList {
                values: Values::from_slice(&many),
                ..good
            },
            EncodeReject::TooBig,
        ),
    ];
    for (vl, why) in cases {
        assert_eq!(enc.push(&vl, &mut sink), Err(why));
    }
    assert_eq!(enc.pending(), 1);
    assert_eq!(enc.stats().rejects.iter().sum::<u64>(), 6);
}

/// NaN gauges survive the round trip bit for bit (collectd sends NaN as 00..f8 7f).
#[test]
fn nan_round_trip() {
    let v = [Value::Gauge(f64::NAN)];
    let vl = ValueList {
        host: b"h",
        plugin: b"p",
        plugin_instance: b"",
        type_: b"t",
        type_instance: b"",
        time: CdTime::from_secs(1),
        interval: CdTime(0),
        values: Values::from_slice(&v),
    };
    let mut enc = Encoder::new(EncoderConfig::default());
    let mut packets = Vec::new();
    enc.push(&vl, &mut |p: &[u8]| packets.push(p.to_vec()))
        .unwrap();
    enc.flush(&mut |p: &[u8]| packets.push(p.to_vec()));
    assert!(to_hex(&packets[0]).ends_with("000000000000f87f"));
    let mut got = Vec::new();
    Decoder::default().decode(&mut packets[0], &mut |r| {
        if let Record::Values(d) = r {
            got.push(d.values.get(0));
        }
    });
    assert_eq!(got, v);
}
