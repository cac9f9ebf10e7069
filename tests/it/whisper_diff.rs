//! Differential property test: cadent's whisper engine against python whisper 1.1.10.
//!
//! To reproduce a failure: the panic names the sequence's seed and prints its last
//! operations. Replay that one sequence, every operation printed, with
//!     WHISPER_DIFF_SEED=<seed> cargo test --test it whisper_diff -- --nocapture
//! Knobs: WHISPER_DIFF_SEQUENCES (default 8000) and WHISPER_DIFF_SECONDS (default 45)
//! bound the run, whichever comes first; WHISPER_DIFF_PYTHON picks the interpreter
//! (default: the one `python3` resolves to, pyenv shims included).
//!
//! Each sequence creates one file with random (mostly valid) retentions, aggregation
//! method, xFilesFactor and creation mode, then applies random `update_many` batches
//! (duplicates, out of order, outside the retention, in the future, long runs across
//! the ring's wrap), single `update`s and `fetch`es, all with the same `now`, to a file
//! written by cadent (library API, `FileIo`) and one written by python whisper (driven
//! through tests/it/whisper_driver.py). After every step the two files must be byte
//! identical and every answer (fetch time info and values, or an error) the same.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use cadent::store::whisper::format::{self, AggregationMethod, CreateMode, Header, Scratch};
use cadent::store::whisper::io::FileIo;
use cadent::tools::SplitMix64;
use serde_json::Value;

use crate::support::temp_dir;

const WHISPER_VERSION: &str = "1.1.10";
const DRIVER_TIMEOUT: Duration = Duration::from_secs(20);
const PIP_TIMEOUT: Duration = Duration::from_secs(300);
/// Operations kept for the failure message.
const LOG_TAIL: usize = 12;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
    })
}

/// Run `cmd` to completion within `limit`; the child is killed past it.
fn run_bounded(mut cmd: Command, limit: Duration) -> Option<(bool, String)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().ok()? {
            return Some((status.success(), out.join().unwrap_or_default()));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Some((false, format!("killed after {limit:?}")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The interpreter that actually runs: `python3` may be a pyenv shim, and pip must
/// install into the same interpreter the driver runs on.
pub(crate) fn python() -> PathBuf {
    if let Ok(p) = std::env::var("WHISPER_DIFF_PYTHON") {
        return PathBuf::from(p);
    }
    for candidate in ["python3", "/usr/bin/python3"] {
        let mut cmd = Command::new(candidate);
        cmd.args(["-c", "import sys; print(sys.executable)"]);
        if let Some((true, out)) = run_bounded(cmd, Duration::from_secs(30)) {
            let exe = out.trim();
            if !exe.is_empty() {
                return PathBuf::from(exe);
            }
        }
    }
    panic!("no python3 interpreter found (set WHISPER_DIFF_PYTHON)");
}

fn whisper_version(py: &Path) -> Option<String> {
    let mut cmd = Command::new(py);
    cmd.args([
        "-c",
        "import whisper; from importlib.metadata import version; print(version('whisper'))",
    ]);
    match run_bounded(cmd, Duration::from_secs(30)) {
        Some((true, out)) => Some(out.trim().to_string()),
        _ => None,
    }
}

/// Make sure python whisper 1.1.10 is importable by `py`, installing it if not. A
/// failure here fails the test: the comparison is the point of it.
pub(crate) fn ensure_whisper(py: &Path) {
    if whisper_version(py).as_deref() == Some(WHISPER_VERSION) {
        return;
    }
    let mut cmd = Command::new(py);
    cmd.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        &format!("whisper=={WHISPER_VERSION}"),
    ]);
    let pip = run_bounded(cmd, PIP_TIMEOUT);
    let got = whisper_version(py);
    assert_eq!(
        got.as_deref(),
        Some(WHISPER_VERSION),
        "python whisper {WHISPER_VERSION} is needed by {} and could not be installed: {pip:?}",
        py.display()
    );
}

/// The long-lived python whisper process.
struct Driver {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Driver {
    fn start(py: &Path) -> Driver {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/whisper_driver.py");
        let mut child = Command::new(py)
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the whisper driver");
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Driver {
            child,
            stdin,
            lines,
        }
    }

    /// Send one request; `Ok(answer)` or `Err(python's exception)`.
    fn call(&mut self, req: &Value) -> Result<Value, String> {
        writeln!(self.stdin, "{req}").expect("write to the whisper driver");
        self.stdin.flush().expect("flush the whisper driver");
        let line = self
            .lines
            .recv_timeout(DRIVER_TIMEOUT)
            .expect("the whisper driver answers within its timeout");
        let mut answer: Value = serde_json::from_str(&line).expect("driver answers JSON");
        match answer.get_mut("err") {
            Some(e) => Err(e.as_str().unwrap_or("?").to_string()),
            None => Ok(answer["ok"].take()),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fetch answer in comparable form: `((from, until, step), value bits)`.
type FetchAnswer = Option<((i64, i64, i64), Vec<Option<u64>>)>;

fn python_fetch(v: Value) -> FetchAnswer {
    if v.is_null() {
        return None;
    }
    let ti: Vec<i64> = v[0]
        .as_array()
        .expect("time info")
        .iter()
        .map(|x| x.as_i64().expect("int"))
        .collect();
    let values = v[1]
        .as_array()
        .expect("values")
        .iter()
        .map(Value::as_u64)
        .collect();
    Some(((ti[0], ti[1], ti[2]), values))
}

fn cadent_fetch(f: Option<format::Fetch>) -> FetchAnswer {
    f.map(|f| {
        let bits = f.values.iter().map(|v| v.map(f64::to_bits)).collect();
        ((f.from, f.until, f.step), bits)
    })
}

/// One random sequence: its generator and the state both sides share.
struct Sequence {
    seed: u64,
    rng: SplitMix64,
    now: i64,
    archives: Vec<(u64, u64)>,
    log: Vec<String>,
    verbose: bool,
    steps: u64,
}

impl Sequence {
    fn chance(&mut self, percent: usize) -> bool {
        self.rng.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.rng.below(from.len())]
    }

    fn note(&mut self, what: String) {
        if self.verbose {
            eprintln!("seed {} step {}: {what}", self.seed, self.steps);
        }
        self.log.push(what);
        if self.log.len() > LOG_TAIL {
            self.log.remove(0);
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "whisper_diff: seed {} step {}: {what}\nlast operations:\n  {}\nreplay: \
             WHISPER_DIFF_SEED={} cargo test --test it whisper_diff -- --nocapture",
            self.seed,
            self.steps,
            self.log.join("\n  "),
            self.seed
        );
    }

    /// Valid retentions most of the time; one rule broken otherwise.
    fn retentions(&mut self) -> Vec<(u64, u64)> {
        let n = 1 + self.rng.below(3);
        let mut list: Vec<(u64, u64)> = Vec::with_capacity(n);
        list.push((
            self.pick(&[1, 2, 3, 5, 10, 60]),
            2 + self.rng.below(30) as u64,
        ));
        for _ in 1..n {
            let last = list.len() - 1;
            let k = 2 + self.rng.below(5) as u64;
            if list[last].1 < k {
                list[last].1 = k;
            }
            let (spp, points) = list[last];
            let lower_spp = spp * k;
            let lower_points = spp * points / lower_spp + 1 + self.rng.below(20) as u64;
            list.push((lower_spp, lower_points));
        }
        if list.len() > 1 && self.chance(8) {
            let i = self.rng.below(list.len() - 1);
            let (spp, points) = list[i];
            match self.rng.below(4) {
                0 => list[i + 1].0 = spp,
                1 => list[i + 1].0 = spp * 2 + 1,
                2 => list[i + 1].1 = spp * points / list[i + 1].0,
                _ => list[i].1 = list[i + 1].0 / spp - 1,
            }
            if list.iter().any(|&(s, p)| s == 0 || p == 0) {
                // whisper.py accepts a lone 0-point archive; cadent refuses it by design.
                list[i] = (spp, points);
            }
        }
        if self.chance(30) {
            list.reverse(); // both sort by precision
        }
        list
    }

    fn value(&mut self) -> f64 {
        match self.rng.below(100) {
            0..=39 => self.rng.below(21) as f64 - 10.0,
            40..=79 => (self.rng.below(2001) as f64 - 1000.0) / 7.0,
            80..=89 => {
                let v = f64::from_bits(self.rng.next_u64());
                if v.is_finite() {
                    v
                } else {
                    1.5
                }
            }
            90..=94 => self.pick(&[0.0, -0.0]),
            95..=97 => self.pick(&[1e308, -1e308, f64::INFINITY]),
            _ => f64::NAN,
        }
    }

    fn max_retention(&self) -> i64 {
        self.archives.iter().map(|a| a.0 * a.1).max().unwrap_or(1) as i64
    }

    fn step0(&self) -> i64 {
        self.archives.iter().map(|a| a.0).min().unwrap_or(1) as i64
    }

    fn timestamp(&mut self, batch: &[(i64, f64)]) -> i64 {
        let (now, max, step) = (self.now, self.max_retention(), self.step0());
        let prev = batch.last().map(|p| p.0);
        match (self.rng.below(100), prev) {
            (0..=14, Some(_)) => batch[self.rng.below(batch.len())].0,
            (15..=24, Some(p)) => p + self.rng.below(step as usize) as i64,
            (25..=39, Some(p)) => p + step,
            (40..=47, _) => now - max - 1 - self.rng.below(max as usize) as i64,
            (48..=54, _) => now + self.rng.below(3 * step as usize + 1) as i64,
            (55..=62, _) => {
                let a = self.archives[self.rng.below(self.archives.len())];
                now - (a.0 * a.1) as i64 + self.rng.below(3) as i64 - 1
            }
            _ => now - self.rng.below(max as usize + 1) as i64,
        }
    }

    fn batch(&mut self) -> Vec<(i64, f64)> {
        let mut batch = Vec::new();
        if self.chance(5) {
            // One run longer than the first archive, ending in the future: it wraps
            // the ring (whisper can even spill past the archive's end).
            let (a0, step) = (self.archives[0].1 as i64, self.step0());
            let extra = 1 + self.rng.below(6) as i64;
            let start = self.now - (a0 - extra / 2) * step;
            for i in 0..a0 + extra {
                let v = self.value();
                batch.push((start + i * step, v));
            }
            return batch;
        }
        for _ in 0..1 + self.rng.below(25) {
            let ts = self.timestamp(&batch);
            let v = self.value();
            batch.push((ts, v));
        }
        batch
    }

    fn advance(&mut self) {
        let (max, step) = (self.max_retention() as usize, self.step0() as usize);
        self.now += match self.rng.below(10) {
            0..=2 => 0,
            3..=6 => self.rng.below(3 * step + 1),
            7..=8 => self.rng.below(max + 1),
            _ => self.rng.below(3 * max + 1),
        } as i64;
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> String {
    let at = a.iter().zip(b).position(|(x, y)| x != y);
    format!(
        "cadent file {} bytes, python file {} bytes, first difference at {:?}",
        a.len(),
        b.len(),
        at.or((a.len() != b.len()).then(|| a.len().min(b.len())))
    )
}

/// What one sequence did, for the summary.
#[derive(Default)]
struct Counts {
    steps: u64,
    updates: u64,
    fetches: u64,
    refused_creates: u64,
}

fn run_sequence(seed: u64, driver: &mut Driver, dir: &Path, verbose: bool, counts: &mut Counts) {
    let mut seq = Sequence {
        seed,
        rng: SplitMix64(seed),
        now: 0,
        archives: Vec::new(),
        log: Vec::new(),
        verbose,
        steps: 0,
    };
    seq.now = 1_600_000_000 + seq.rng.below(200_000_000) as i64;
    let ours = dir.join(format!("c{seed}.wsp"));
    let theirs = dir.join(format!("p{seed}.wsp"));
    let _ = std::fs::remove_file(&ours);
    let _ = std::fs::remove_file(&theirs);

    let archives = seq.retentions();
    let xff = match seq.rng.below(12) {
        11 => seq.rng.below(1_000_001) as f64 / 1e6,
        i => [
            0.0,
            0.1,
            0.2,
            0.25,
            1.0 / 3.0,
            0.5,
            0.6,
            0.75,
            0.9,
            1.0,
            0.3,
        ][i],
    };
    let method = seq.pick(&AggregationMethod::ALL);
    let (mode, mode_name) = seq.pick(&[
        (CreateMode::Sparse, "sparse"),
        (CreateMode::Fallocate, "fallocate"),
        (CreateMode::ZeroFill, "zero"),
    ]);
    seq.note(format!(
        "create {archives:?} xff {xff} {method} {mode_name}"
    ));
    let req = serde_json::json!({"op": "create", "path": theirs, "archives": archives,
        "xff": xff, "method": method.name(), "mode": mode_name});
    let py = driver.call(&req);
    let mine = FileIo::create_new(&ours)
        .map_err(format::Error::from)
        .and_then(|mut io| format::create(&mut io, &archives, xff, method, mode));
    match (&py, &mine) {
        (Err(_), Err(_)) => {
            counts.refused_creates += 1;
            let _ = std::fs::remove_file(&ours);
            return;
        }
        (Ok(_), Ok(_)) => {}
        _ => seq.fail(&format!("create: python {py:?}, cadent {mine:?}")),
    }
    seq.archives = archives;
    let mut scratch = Scratch::new();
    compare_files(&seq, &ours, &theirs);

    for _ in 0..3 + seq.rng.below(15) {
        seq.steps += 1;
        seq.advance();
        let now = seq.now;
        let header = read_header(&seq, &ours);
        match seq.rng.below(100) {
            0..=59 => {
                let batch = seq.batch();
                seq.note(format!("update_many now {now} {batch:?}"));
                let points: Vec<(i64, u64)> = batch.iter().map(|p| (p.0, p.1.to_bits())).collect();
                let req = serde_json::json!({"op": "update_many", "path": theirs,
                    "points": points, "now": now});
                let py = driver.call(&req);
                let mut io = FileIo::open(&ours).expect("open cadent's file");
                let mine = format::update_many(&mut io, &header, &batch, now, &mut scratch);
                if py.is_ok() != mine.is_ok() {
                    seq.fail(&format!("update_many: python {py:?}, cadent {mine:?}"));
                }
                counts.updates += 1;
            }
            60..=69 => {
                let ts = seq.timestamp(&[]);
                let v = seq.value();
                seq.note(format!("update now {now} ts {ts} value {v:?}"));
                let req = serde_json::json!({"op": "update", "path": theirs, "ts": ts,
                    "bits": v.to_bits(), "now": now});
                let py = driver.call(&req);
                let mut io = FileIo::open(&ours).expect("open cadent's file");
                let mine = format::update(&mut io, &header, ts, v, now);
                if py.is_ok() != mine.is_ok() {
                    seq.fail(&format!("update: python {py:?}, cadent {mine:?}"));
                }
                counts.updates += 1;
            }
            _ => {
                let max = seq.max_retention() as usize;
                let from = now - seq.rng.below(max * 13 / 10 + 2) as i64
                    + if seq.chance(5) { max as i64 } else { 0 };
                let until = if seq.chance(5) {
                    from - 1 - seq.rng.below(10) as i64
                } else {
                    from + seq.rng.below(max + 2) as i64
                };
                seq.note(format!("fetch now {now} from {from} until {until}"));
                let req = serde_json::json!({"op": "fetch", "path": theirs, "from": from,
                    "until": until, "now": now});
                let py = driver.call(&req).map(python_fetch);
                let mut io = FileIo::open_read(&ours).expect("open cadent's file");
                let mine = format::fetch(&mut io, &header, from, until, now).map(cadent_fetch);
                match (&py, &mine) {
                    (Err(_), Err(_)) => {}
                    (Ok(a), Ok(b)) if a == b => {}
                    _ => seq.fail(&format!("fetch: python {py:?}, cadent {mine:?}")),
                }
                counts.fetches += 1;
            }
        }
        compare_files(&seq, &ours, &theirs);
        counts.steps += 1;
    }
    let _ = std::fs::remove_file(&ours);
    let _ = std::fs::remove_file(&theirs);
}

fn read_header(seq: &Sequence, path: &Path) -> Header {
    let mut io = FileIo::open_read(path).expect("open cadent's file");
    format::read_header(&mut io).unwrap_or_else(|e| seq.fail(&format!("read_header: {e}")))
}

fn compare_files(seq: &Sequence, ours: &Path, theirs: &Path) {
    let a = std::fs::read(ours).expect("read cadent's file");
    let b = std::fs::read(theirs).expect("read python's file");
    if a != b {
        seq.fail(&format!("files differ: {}", first_difference(&a, &b)));
    }
}

#[test]
fn whisper_diff_matches_python_whisper() {
    let py = python();
    ensure_whisper(&py);
    let mut driver = Driver::start(&py);
    let version = driver.call(&serde_json::json!({"op": "version"}));
    assert_eq!(version, Ok(Value::from(WHISPER_VERSION)));
    let dir = temp_dir("whisper-diff");
    let mut counts = Counts::default();

    if let Some(seed) = env_u64("WHISPER_DIFF_SEED") {
        run_sequence(seed, &mut driver, &dir, true, &mut counts);
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let max_sequences = env_u64("WHISPER_DIFF_SEQUENCES").unwrap_or(8000);
    let max_time = Duration::from_secs(env_u64("WHISPER_DIFF_SECONDS").unwrap_or(45));
    let start = Instant::now();
    let mut sequences = 0;
    while sequences < max_sequences && start.elapsed() < max_time {
        run_sequence(sequences, &mut driver, &dir, false, &mut counts);
        sequences += 1;
    }
    eprintln!(
        "whisper_diff: {sequences} sequences ({} refused creates), {} steps ({} updates, {} \
         fetches) byte-identical to python whisper {WHISPER_VERSION} in {:.1?}",
        counts.refused_creates,
        counts.steps,
        counts.updates,
        counts.fetches,
        start.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(sequences > 0);
}
