//! carbon's pickle protocol against python's own pickle: frames python writes (protocols
//! 0-5, and carbon's sender path) decode to the same points, and frames cadent writes load
//! in python to the same list, byte for byte what python itself would write.

use std::io::Write;
use std::process::{Command, Stdio};

use cadent::protocol::pickle::{self, Decoder, Framed, Point, FRAME_BYTES_MAX_DEFAULT};
use cadent::tools::SplitMix64;

/// python3 (pickle is stdlib), the system one if pyenv's shim is not usable; probed once.
fn python() -> &'static str {
    static PYTHON: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| {
        ["python3", "/usr/bin/python3"]
            .into_iter()
            .find(|candidate| {
                Command::new(candidate)
                    .args(["-c", "import pickle"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .expect("no python3 interpreter found")
    })
}

/// Runs `script` with `stdin` fed in, returns stdout.
fn run_python(script: &str, stdin: &[u8]) -> String {
    let mut child = Command::new(python())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0);
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// One expected point: name, timestamp, value (floats parsed from python's repr, which
/// round-trips exactly).
type Expected = (Vec<u8>, f64, f64);

fn parse_point(fields: &[&str]) -> Expected {
    (
        unhex(fields[0]),
        fields[1].parse().unwrap(),
        fields[2].parse().unwrap(),
    )
}

// For each case: `F <kind> <frame hex>` then one `P <name hex> <repr ts> <repr value>` per
// point. Kinds: protocols 0-5 via pickle.dumps, and `carbon`: carbon 1.1.10's
// CarbonPickleClientProtocol path, `sendString(pickle.dumps(datapoints, protocol=2))` with
// Int32StringReceiver's '!I' length (struct.pack('!L') is the same 4 bytes), carrying the
// (float(ts), float(value)) tuples its receiver made.
const PYTHON_FRAMES: &str = r#"
import pickle, random, struct, sys
rng = random.Random(20261121)
ALPHABET = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-:#'
EXTRA = ['\u00e9', '\u20ac', '\u00fc', '\U0001f600', '\\', '%', '=']
def name():
    parts = []
    for _ in range(rng.randint(1, 6)):
        s = ''.join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 12)))
        if rng.random() < 0.1:
            s += rng.choice(EXTRA)
        parts.append(s)
    n = '.'.join(parts)
    if rng.random() < 0.05:
        n += ';tag=' + rng.choice(['x', 'y\u00e9'])
    return n
def number():
    r = rng.random()
    if r < 0.3: return rng.randint(-300, 70000)
    if r < 0.4: return rng.randint(-2**62, 2**62)
    if r < 0.5: return rng.choice([0.0, -0.0, 5e-324, 1.7976931348623157e308, 0.1])
    return rng.uniform(-1e12, 1e12)
def timestamp():
    r = rng.random()
    if r < 0.6: return rng.randint(1000000000, 2000000000)
    if r < 0.7: return rng.randint(0, 70000)
    return rng.uniform(0, 2e9)
def points():
    names = [name() for _ in range(rng.randint(1, 30))]
    # Reuse name objects, so pickle writes memo GETs for them.
    return [(rng.choice(names), (timestamp(), number())) for _ in range(rng.choice([0, 1, 2, 17, 300, 1001, 2500]))]
out = []
for case in range(int(sys.argv[1])):
    for kind in ['0', '1', '2', '3', '4', '5', 'carbon']:
        dps = points()
        if kind == 'carbon':
            dps = [(m, (float(t), float(v))) for (m, (t, v)) in dps]
            data = pickle.dumps(dps, protocol=2)
            frame = struct.pack('!L', len(data)) + data
        else:
            data = pickle.dumps(dps, protocol=int(kind))
            frame = struct.pack('!I', len(data)) + data
        out.append('F %s %s' % (kind, frame.hex()))
        for (m, (t, v)) in dps:
            out.append('P %s %r %r' % (m.encode('utf-8').hex(), float(t), float(v)))
print('\n'.join(out))
"#;

#[test]
fn python_frames_decode_to_the_same_points() {
    let out = Command::new(python())
        .args(["-c", PYTHON_FRAMES, "12"])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();

    // Cases as python wrote them, and one stream of all frames for the framer.
    let mut cases: Vec<(String, Vec<u8>, Vec<Expected>)> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields[0] {
            "F" => cases.push((fields[1].to_string(), unhex(fields[2]), Vec::new())),
            "P" => cases.last_mut().unwrap().2.push(parse_point(&fields[1..])),
            other => panic!("unexpected line {other:?}"),
        }
    }
    assert_eq!(cases.len(), 12 * 7);
    let stream: Vec<u8> = cases.iter().flat_map(|c| c.1.iter().copied()).collect();

    let mut decoder = Decoder::default();
    let mut rest = &stream[..];
    let mut points_total = 0;
    for (kind, frame, expected) in &cases {
        let Framed::Frame { pickle, consumed } = pickle::split_frame(rest, FRAME_BYTES_MAX_DEFAULT)
        else {
            panic!("{kind}: frame not found")
        };
        assert_eq!(consumed, frame.len(), "{kind}");
        assert_eq!(pickle, &frame[4..], "{kind}");
        rest = &rest[consumed..];

        let mut got: Vec<Expected> = Vec::new();
        let d = decoder
            .decode(pickle, |p| {
                got.push((p.name.to_vec(), p.timestamp, p.value))
            })
            .unwrap_or_else(|r| panic!("protocol {kind}: rejected {}", r.as_str()));
        assert_eq!(d.skipped, 0, "protocol {kind}");
        assert_eq!(got.len(), expected.len(), "protocol {kind}");
        for (g, e) in got.iter().zip(expected) {
            assert_eq!(g.0, e.0, "protocol {kind}");
            // Bit-exact, -0.0 included.
            assert_eq!(g.1.to_bits(), e.1.to_bits(), "protocol {kind} {:?}", e);
            assert_eq!(g.2.to_bits(), e.2.to_bits(), "protocol {kind} {:?}", e);
        }
        points_total += got.len();
    }
    assert!(rest.is_empty());
    assert!(points_total > 1000, "{points_total}");
}

// Reads frames from stdin as carbon's receiver would (Int32StringReceiver, then
// pickle.loads) and prints each point, then whether python's own protocol-2 dump of the
// loaded list is byte-identical to cadent's pickle.
const PYTHON_LOADS: &str = r#"
import pickle, struct, sys
buf = sys.stdin.buffer.read()
at = 0
while at < len(buf):
    (n,) = struct.unpack('!L', buf[at:at + 4])
    data = buf[at + 4:at + 4 + n]
    at += 4 + n
    dps = pickle.loads(data)
    assert type(dps) is list
    print('F %d %d' % (len(dps), pickle.dumps(dps, protocol=2) == data))
    for (m, (t, v)) in dps:
        assert type(m) is str and type(v) is float and type(t) in (int, float)
        print('P %s %r %r' % (m.encode('utf-8').hex(), float(t), v))
"#;

#[test]
fn cadent_frames_load_in_python() {
    let mut rng = SplitMix64(0x9e37_79b9_7f4a_7c15);
    let words = [
        "servers",
        "web01",
        "cpu",
        "load",
        "caf\u{e9}",
        "\u{20ac}uro",
        "a-b_c",
        "x;tag=1",
    ];
    let mut cases: Vec<Vec<(String, f64, f64)>> = Vec::new();
    for case in 0..40 {
        let n = [0, 1, 2, 3, 999, 1000, 1001, 2345][case % 8];
        let points = (0..n)
            .map(|_| {
                let parts = 1 + rng.below(5);
                let name: Vec<String> = (0..parts)
                    .map(|_| format!("{}{}", words[rng.below(8)], rng.below(100)))
                    .collect();
                let timestamp = match rng.below(4) {
                    0 => rng.below(300) as f64,
                    1 => (1_000_000_000 + rng.below(1_000_000_000)) as f64,
                    2 => (rng.next_u64() >> 2) as f64 * if rng.below(2) == 0 { 1.0 } else { -1.0 },
                    _ => rng.below(1 << 40) as f64 / 1024.0,
                };
                let value = f64::from_bits(rng.next_u64());
                let value = if value.is_finite() { value } else { 0.5 };
                (name.join("."), timestamp, value)
            })
            .collect();
        cases.push(points);
    }

    let mut stream = Vec::new();
    for points in &cases {
        let points: Vec<Point> = points
            .iter()
            .map(|(n, t, v)| Point {
                name: n.as_bytes(),
                timestamp: *t,
                value: *v,
            })
            .collect();
        let before = stream.len();
        let n = pickle::encode_frame(&points, &mut stream);
        assert_eq!(n, stream.len() - before);
    }

    let out = run_python(PYTHON_LOADS, &stream);
    let mut lines = out.lines();
    for (i, points) in cases.iter().enumerate() {
        let header: Vec<&str> = lines.next().unwrap().split(' ').collect();
        assert_eq!(header[0], "F");
        assert_eq!(
            header[1].parse::<usize>().unwrap(),
            points.len(),
            "case {i}"
        );
        assert_eq!(header[2], "1", "case {i}: python would write other bytes");
        for (name, t, v) in points {
            let fields: Vec<&str> = lines.next().unwrap().split(' ').collect();
            let (gn, gt, gv) = parse_point(&fields[1..]);
            assert_eq!(gn, name.as_bytes(), "case {i}");
            assert_eq!(gt.to_bits(), t.to_bits(), "case {i} {name}");
            assert_eq!(gv.to_bits(), v.to_bits(), "case {i} {name}");
        }
    }
    assert!(lines.next().is_none());
}

#[test]
fn pickles_that_would_run_code_are_refused() {
    // Each of these would run code in python's pickle.loads; cadent refuses them.
    let script = r#"
import pickle, os, sys, collections
class Evil:
    def __reduce__(self):
        return (os.system, ('true',))
for obj in [[Evil()], [('a', (1, collections.OrderedDict()))], [('a', (1, 2j))]]:
    for proto in range(6):
        print(pickle.dumps(obj, protocol=proto).hex())
"#;
    let out = run_python(script, b"");
    let mut n = 0;
    for line in out.lines() {
        let data = unhex(line);
        let r = pickle::decode(&data, |_| panic!("nothing to emit"));
        assert_eq!(
            r.map(|_| ()),
            Err(pickle::Reject::BadOpcode),
            "{}",
            hex(&data)
        );
        n += 1;
    }
    assert_eq!(n, 18);
}
