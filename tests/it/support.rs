//! Shared pieces of the integration tests: free ports, a cadent process, collecting sinks.
//! Everything is on 127.0.0.1 and every wait is bounded.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cadent::route::ring::RingMember;
use cadent::tools::SplitMix64;

/// Runs `scripts/install-peers.sh` once per test run (idempotent: it installs only
/// what is missing). Tests that need a peer call it rather than skip.
pub fn install_peers() {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-peers.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/install-peers.sh");
        assert!(
            out.status.success(),
            "scripts/install-peers.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// A port that was free a moment ago (bound with port 0, then released).
/// A port nothing listens on now, TCP and UDP. Taken below the kernel's ephemeral range
/// (32768 and up here), walking from a place that depends on the process, so the
/// outgoing connections of other tests (which take ephemeral ports) cannot take it
/// between this call and the bind of whatever the test starts on it.
pub fn free_port() -> u16 {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU64 = AtomicU64::new(u64::MAX);
    let _ = NEXT.compare_exchange(
        u64::MAX,
        u64::from(std::process::id()) * 7919 % u64::from(SPAN),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (LOW + (NEXT.fetch_add(1, Ordering::Relaxed) % u64::from(SPAN)) as u32) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN)
}

/// A fresh temporary directory for one test, under this process's [`test_root`].
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = test_root().join(format!("{tag}-{}", N.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Set by the panic hook [`test_root`] installs: some test failed, so its directories
/// are evidence and stay on disk.
static A_TEST_PANICKED: AtomicBool = AtomicBool::new(false);

/// `$TMPDIR/cadent-it-PID`, holding every [`temp_dir`] of this test process. It is
/// removed when the process exits, unless a test panicked: then it is kept, and its
/// path printed, for whoever looks at the failure. (A run killed from outside leaves
/// it behind; its name carries the PID.)
pub fn test_root() -> &'static Path {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("cadent-it-{}", std::process::id()));
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            A_TEST_PANICKED.store(true, Ordering::Relaxed);
            previous(info);
        }));
        extern "C" fn remove_root() {
            let Some(root) = ROOT.get() else { return };
            if A_TEST_PANICKED.load(Ordering::Relaxed) {
                eprintln!(
                    "a test failed: its directories are kept in {}",
                    root.display()
                );
            } else {
                let _ = std::fs::remove_dir_all(root);
            }
        }
        // SAFETY: `remove_root` is a plain `extern "C" fn` without arguments that
        // only reads statics; registering it has no other precondition.
        let registered = unsafe { libc::atexit(remove_root) };
        assert_eq!(registered, 0, "atexit");
        root
    })
}

/// The cadent binary under test.
pub fn cadent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cadent")
}

/// A running `cadent serve`, stopped (SIGTERM) when dropped.
pub struct Cadent {
    child: Option<Child>,
    /// Admin address.
    pub admin: String,
    /// Directory holding the config (and the working directory).
    pub dir: PathBuf,
}

impl Cadent {
    /// Starts cadent on a config whose text contains `ADMIN` where the admin address goes.
    pub fn start(tag: &str, config: &str) -> Cadent {
        Cadent::start_with_env(tag, config, &[])
    }

    /// [`start`](Self::start) with extra environment variables.
    pub fn start_with_env(tag: &str, config: &str, env: &[(&str, &str)]) -> Cadent {
        Cadent::start_limited(temp_dir(tag), config, env, &[], None)
    }

    /// [`start`](Self::start) with files written beside the config first (name, text).
    pub fn start_with_files(tag: &str, config: &str, files: &[(&str, &str)]) -> Cadent {
        Cadent::start_limited(temp_dir(tag), config, &[], files, None)
    }

    /// As [`start`](Self::start), in `dir` (a restart where a previous run left its
    /// spool or its store).
    pub fn start_in(dir: PathBuf, config: &str) -> Cadent {
        Cadent::start_limited(dir, config, &[], &[], None)
    }

    /// Starts cadent in `dir` (its working directory), with extra environment
    /// variables, `files` written there first (name, text), and `RLIMIT_NOFILE` (soft
    /// and hard) set to `nofile` in the child when given.
    pub fn start_limited(
        dir: PathBuf,
        config: &str,
        env: &[(&str, &str)],
        files: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Cadent {
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let admin = format!("127.0.0.1:{}", free_port());
        let mut text = config.replace("ADMIN", &admin);
        // cadent's own counters are routed like any input once a minute; tests that
        // count what their sinks get turn them off unless they ask for them.
        if !text.contains("[telemetry]") {
            text.push_str("\n[telemetry]\nprefix = \"\"\n");
        }
        let path = dir.join("cadent.toml");
        std::fs::write(&path, text).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("cadent.log"))
            .unwrap();
        let mut cmd = Command::new(cadent_bin());
        cmd.args(["serve", "--config"])
            .arg(&path)
            .envs(env.iter().copied())
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit(2) only, between fork and exec: async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    let r = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("start cadent");
        let mut c = Cadent {
            child: Some(child),
            admin,
            dir,
        };
        c.wait_ready();
        c
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("cadent exited at start ({status}):\n{}", self.log());
            }
            if http_get(&self.admin, "/ops/status").is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("cadent did not become ready:\n{}", self.log());
    }

    /// cadent's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("cadent.log")).unwrap_or_default()
    }

    /// `/stats` as JSON, read after the next counter publication.
    pub fn stats(&self) -> serde_json::Value {
        let body = http_get(&self.admin, "/stats").expect("GET /stats");
        serde_json::from_str(&body).expect("stats JSON")
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Resident memory now (kB, from /proc).
    pub fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS")
    }

    /// Sends SIGTERM and waits up to `limit` for the exit: its code, or None if the
    /// process was still running then (it is killed).
    pub fn stop_within(mut self, limit: Duration) -> Option<i32> {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return Some(s.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The config file it runs on.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("cadent.toml")
    }

    /// Kills the process with SIGKILL (no shutdown at all) and reaps it; returns its
    /// directory for a restart.
    pub fn kill9(mut self) -> PathBuf {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        self.dir.clone()
    }

    /// Sends SIGTERM and returns the exit code (bounded wait).
    pub fn stop(mut self) -> i32 {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("cadent did not stop within 30 s after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cadent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// GET over a fresh connection; the body of a 200, or None (nothing answers, or another status).
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    match http(addr, "GET", path, "")? {
        (200, body) => Some(body),
        _ => None,
    }
}

/// One HTTP request over a fresh connection: the status code and the body.
pub fn http_request(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    http(addr, method, path, body).expect("an answer from the admin server")
}

/// One request over a fresh connection; None when nothing answers.
fn http(addr: &str, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Each connection's lines in arrival order, connections in accept order.
type Connections = Arc<Mutex<Vec<Arc<Mutex<Vec<String>>>>>>;

/// A TCP sink that keeps every line it receives, by line, and each connection's lines in
/// arrival order.
pub struct Sink {
    /// `127.0.0.1:port`.
    pub addr: String,
    lines: Arc<Mutex<HashMap<String, u32>>>,
    /// Each connection's lines, in accept order.
    conns: Connections,
    total: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// Graceful stop: stop accepting, half-close every connection and read it to its end.
    closing: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What a sink's reader threads share.
#[derive(Clone)]
struct SinkShared {
    lines: Arc<Mutex<HashMap<String, u32>>>,
    conns: Connections,
    total: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    closing: Arc<AtomicBool>,
    /// Ends its sending side at once on every connection (it never talks back), and
    /// reads on: a half-closed peer, as `socat -u` and some collectors are.
    half_close: bool,
}

impl Sink {
    /// Listens on a free port; one reader thread per connection.
    pub fn start() -> Sink {
        Sink::start_at("127.0.0.1:0")
    }

    /// Listens on `addr` (a sink that comes back where it was); one thread per connection.
    pub fn start_at(addr: &str) -> Sink {
        Sink::listen(addr, false)
    }

    /// Listens on a free port, and half-closes each connection as it accepts it (a FIN
    /// at once), reading on to the end.
    pub fn start_half_closing() -> Sink {
        Sink::listen("127.0.0.1:0", true)
    }

    fn listen(addr: &str, half_close: bool) -> Sink {
        let l = TcpListener::bind(addr).unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let shared = SinkShared {
            lines: Arc::new(Mutex::new(HashMap::new())),
            conns: Arc::new(Mutex::new(Vec::new())),
            total: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            closing: Arc::new(AtomicBool::new(false)),
            half_close,
        };
        let sh = shared.clone();
        let thread = std::thread::spawn(move || {
            let mut readers = Vec::new();
            while !sh.stop.load(Ordering::Relaxed) && !sh.closing.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        if sh.half_close {
                            s.shutdown(Shutdown::Write).unwrap();
                        }
                        s.set_read_timeout(Some(Duration::from_millis(200)))
                            .unwrap();
                        let order = Arc::new(Mutex::new(Vec::new()));
                        sh.conns.lock().unwrap().push(order.clone());
                        let sh = sh.clone();
                        readers.push(std::thread::spawn(move || read_lines(s, &sh, &order)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            // Closing: the port refuses connections from now on.
            drop(l);
            for r in readers {
                let _ = r.join();
            }
        });
        Sink {
            addr,
            lines: shared.lines,
            conns: shared.conns,
            total: shared.total,
            stop: shared.stop,
            closing: shared.closing,
            thread: Some(thread),
        }
    }

    /// Lines received so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Every distinct line with how often it arrived.
    pub fn lines(&self) -> HashMap<String, u32> {
        self.lines.lock().unwrap().clone()
    }

    /// Each connection's lines in arrival order, connections in accept order.
    pub fn connections(&self) -> Vec<Vec<String>> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.lock().unwrap().clone())
            .collect()
    }

    /// Dies at once, as a killed process does (what its kernel holds unread is lost),
    /// and returns every distinct line it had read with how often.
    pub fn kill(mut self) -> HashMap<String, u32> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.lines()
    }

    /// A sink that goes away without losing what it was sent: it stops accepting (the
    /// port refuses connections), half-closes each connection and reads it until the
    /// sender closes or goes quiet (bounded), so every byte its kernel acknowledged is
    /// counted. (Dropping a sink
    /// instead loses what its kernel holds unread, as a killed process would.)
    pub fn stop_gracefully(&mut self) {
        self.closing.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_lines(mut s: TcpStream, sh: &SinkShared, order: &Mutex<Vec<String>>) {
    let mut buf = vec![0u8; 1 << 16];
    let mut pending: Vec<u8> = Vec::new();
    let mut half_closed: Option<Instant> = None;
    loop {
        if half_closed.is_none() && sh.closing.load(Ordering::Relaxed) {
            let _ = s.shutdown(Shutdown::Write);
            half_closed = Some(Instant::now());
        }
        if half_closed.is_some_and(|t| t.elapsed() > Duration::from_secs(10)) {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                let Some(last) = pending.iter().rposition(|&b| b == b'\n') else {
                    continue;
                };
                let mut map = sh.lines.lock().unwrap();
                let mut seq = order.lock().unwrap();
                let mut count = 0;
                for l in pending[..last].split(|&b| b == b'\n') {
                    let line = String::from_utf8_lossy(l).into_owned();
                    *map.entry(line.clone()).or_insert(0) += 1;
                    seq.push(line);
                    count += 1;
                }
                drop(seq);
                drop(map);
                sh.total.fetch_add(count, Ordering::Relaxed);
                pending.drain(..=last);
                // A stopped sink dies at once, even while lines keep coming (a dead sink
                // under load, in tests that kill one).
                if sh.stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                // Stopping gracefully, it reads until the sender is quiet: a sender may
                // keep a half-closed connection open, as cadent does.
                if sh.stop.load(Ordering::Relaxed)
                    || half_closed.is_some_and(|t| t.elapsed() > Duration::from_millis(500))
                {
                    break;
                }
            }
            // A signal to this process (a child's SIGCHLD) interrupts a read with a
            // timeout (signal(7)): not the end of the connection.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits (bounded) until `f` is true; returns whether it became true.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Sends `data` over one TCP connection and closes it cleanly.
pub fn send_tcp(addr: &str, data: &[u8]) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    // Wait for the server's close so every byte was read before we report done.
    let mut b = [0u8; 16];
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.read(&mut b);
}

/// Sends each datagram from one socket.
pub fn send_udp(addr: &str, datagrams: &[Vec<u8>]) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    for d in datagrams {
        s.send_to(d, addr).unwrap();
    }
}

/// Runs `cadent hash` on `names`; returns name -> destinations.
pub fn cadent_hash(
    config: &std::path::Path,
    cluster: &str,
    names: &[String],
) -> HashMap<String, String> {
    let mut child = Command::new(cadent_bin())
        .args(["hash", "--config"])
        .arg(config)
        .args(["--cluster", cluster])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = names.join("\n") + "\n";
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "cadent hash failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (n, d) = l.split_once('\t').expect("NAME<TAB>DESTS");
            (n.to_string(), d.to_string())
        })
        .collect()
}

/// A UDP sink that keeps every line of every datagram.
pub struct UdpSink {
    /// `127.0.0.1:port`.
    pub addr: String,
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpSink {
    /// Binds a free port.
    pub fn start() -> UdpSink {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = s.local_addr().unwrap().to_string();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (lines2, stop2) = (lines.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok(n) = s.recv(&mut buf) {
                    let mut l = lines2.lock().unwrap();
                    for line in buf[..n].split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                        l.push(String::from_utf8_lossy(line).into_owned());
                    }
                }
            }
        });
        UdpSink {
            addr,
            lines,
            stop,
            thread: Some(thread),
        }
    }

    /// Lines received so far, in arrival order.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A peer program found in PATH or in `extra_dirs`. Missing is a failure, not a skip:
/// without the peer a comparison would prove nothing.
pub fn peer_bin(name: &str, extra_dirs: &[&str]) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra_dirs.iter().map(PathBuf::from))
        .chain(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|bin| bin.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found: this test compares against it; run scripts/install-peers.sh")
        })
}

/// What a peer printed.
pub struct PeerOutput {
    /// Standard output (invalid UTF-8 replaced).
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `cmd` with `stdin_file` on stdin and its output in files under `dir` (so no pipe
/// can fill and stall it), bounded by `timeout`. A failure or a timeout panics with what
/// the peer said.
pub fn run_peer(
    mut cmd: Command,
    stdin_file: &std::path::Path,
    dir: &std::path::Path,
    tag: &str,
    timeout: Duration,
) -> PeerOutput {
    let out_path = dir.join(format!("{tag}.stdout"));
    let err_path = dir.join(format!("{tag}.stderr"));
    cmd.stdin(Stdio::from(
        std::fs::File::open(stdin_file).expect("open stdin file"),
    ))
    .stdout(Stdio::from(
        std::fs::File::create(&out_path).expect("stdout file"),
    ))
    .stderr(Stdio::from(
        std::fs::File::create(&err_path).expect("stderr file"),
    ));
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} ran past {timeout:?}; see {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = std::fs::read(&out_path).expect("read stdout");
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    if !status.success() {
        panic!("{cmd:?} failed with {status}\nstderr:\n{stderr}");
    }
    PeerOutput {
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr,
    }
}

/// `names`, one per line, each ending in a newline: a peer's stdin.
pub fn lines<S: AsRef<str>>(names: &[S]) -> String {
    let mut out = String::with_capacity(names.iter().map(|n| n.as_ref().len() + 1).sum());
    for name in names {
        out.push_str(name.as_ref());
        out.push('\n');
    }
    out
}

/// One name for each of `targets` (ring positions): the first of `PREFIX0`, `PREFIX1`,
/// ... whose `position` it is, in position order. About 65536 * ln(targets) tries; the
/// bound (8 million) leaves a wide margin.
pub fn names_at_positions(
    targets: impl IntoIterator<Item = u16>,
    prefix: &str,
    position: impl Fn(&[u8]) -> u16,
) -> Vec<String> {
    let mut wanted: std::collections::BTreeMap<u16, Option<String>> =
        targets.into_iter().map(|p| (p, None)).collect();
    let mut missing = wanted.len();
    let mut name = String::new();
    for k in 0..8_000_000u32 {
        if missing == 0 {
            break;
        }
        name.clear();
        let _ = write!(name, "{prefix}{k}");
        if let Some(slot @ None) = wanted.get_mut(&position(name.as_bytes())) {
            *slot = Some(name.clone());
            missing -= 1;
        }
    }
    assert_eq!(missing, 0, "no name found for some target positions");
    wanted.into_values().flatten().collect()
}

/// The ring `carbon-c-relay -t -d -f conf` prints for cluster `c` (its stdin and
/// output as files in `dir`): (`POS`, `server`) from its `POS@server` cells, in ring
/// order.
pub fn crelay_ring_cells(
    conf: &std::path::Path,
    dir: &std::path::Path,
    timeout: Duration,
) -> Vec<(u16, String)> {
    let stdin = dir.join("ring.in");
    std::fs::write(&stdin, "a.b.c.d\n").expect("write ring stdin");
    let mut cmd = Command::new(peer_bin("carbon-c-relay", &[]));
    cmd.args(["-t", "-d", "-f"]).arg(conf);
    let stdout = run_peer(cmd, &stdin, dir, "ring", timeout).stdout;
    let cells: Vec<(u16, String)> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("# hash ring for c follows"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .flat_map(str::split_whitespace)
        .map(|cell| {
            let (pos, server) = cell.split_once('@').expect("ring cell is POS@server");
            (pos.parse().expect("ring position"), server.to_string())
        })
        .collect();
    assert!(!cells.is_empty(), "no ring in c-relay -d output:\n{stdout}");
    cells
}

/// The per-name blocks of `carbon-c-relay -t` output: each name as c-relay echoed it,
/// and the server lines printed under `cluster_line` (such as `carbon_ch(c)`) in its
/// block, in order (`-d`'s `hash_pos(..)` lines left out). The config echo before the
/// blocks never has a line that is exactly `match`, so that line starts a block.
fn crelay_test_blocks<'a>(stdout: &'a str, cluster_line: &str) -> Vec<(&'a str, Vec<&'a str>)> {
    let mut blocks: Vec<(&str, Vec<&str>)> = Vec::new();
    let (mut in_block, mut in_cluster) = (false, false);
    for line in stdout.lines() {
        let trimmed = line.trim();
        if line == "match" {
            in_block = true;
            in_cluster = false;
        } else if !in_block {
            continue;
        } else if let Some(name) = line.trim_start().strip_prefix("* -> ") {
            blocks.push((name, Vec::new()));
        } else if trimmed == cluster_line {
            in_cluster = true;
        } else if trimmed == "stop" {
            in_block = false;
            in_cluster = false;
        } else if in_cluster && !trimmed.starts_with("hash_pos(") {
            let (_, servers) = blocks.last_mut().expect("server line inside a block");
            servers.push(trimmed);
        }
    }
    blocks
}

/// Generated metric names for the ring comparisons: the reference notes' fixed vectors
/// (`a.b.c.d`, `collectd.bar.memory.free`, `foo.bar`, `m12052`) first, then the names
/// `make` writes (each into an empty string) until there are `count` distinct ones.
pub fn distinct_names(count: usize, mut make: impl FnMut(&mut String)) -> Vec<String> {
    let mut out: Vec<String> = ["a.b.c.d", "collectd.bar.memory.free", "foo.bar", "m12052"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut seen: std::collections::HashSet<String> = out.iter().cloned().collect();
    while out.len() < count {
        let mut name = String::new();
        make(&mut name);
        if seen.insert(name.clone()) {
            out.push(name);
        }
    }
    out
}

/// Pushes 1 to `segments_max` dot-separated segments of 1 to 12 bytes that
/// carbon-c-relay's cleansing keeps.
pub fn push_random_segments(name: &mut String, rng: &mut SplitMix64, segments_max: usize) {
    const SEGMENT_BYTES: &[u8] =
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-";
    for i in 0..1 + rng.below(segments_max) {
        if i > 0 {
            name.push('.');
        }
        for _ in 0..1 + rng.below(12) {
            name.push(SEGMENT_BYTES[rng.below(SEGMENT_BYTES.len())] as char);
        }
    }
}

/// Pushes 2 to 7 dot-separated `words`.
pub fn push_words(name: &mut String, rng: &mut SplitMix64, words: &[&str]) {
    for i in 0..2 + rng.below(6) {
        if i > 0 {
            name.push('.');
        }
        name.push_str(words[rng.below(words.len())]);
    }
}

/// A hash-cluster member of a peer comparison, parsed from its config spec
/// `host:port[=instance]` (IPv6 as `[::1]:2101`).
#[derive(Clone, Copy)]
pub struct Member {
    /// The spec itself: how answers are written and compared.
    pub spec: &'static str,
    /// `host:port` as carbon-c-relay prints a chosen server (IPv6 bracketed).
    pub addr: &'static str,
    /// Host as hashed (IPv6 without brackets).
    pub host: &'static str,
    pub port: u16,
    pub instance: Option<&'static str>,
}

/// Parses a member spec `host:port[=instance]`.
pub fn member(spec: &'static str) -> Member {
    let (addr, instance) = match spec.split_once('=') {
        Some((addr, instance)) => (addr, Some(instance)),
        None => (spec, None),
    };
    let (host, port) = addr.rsplit_once(':').expect("member spec is host:port");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Member {
        spec,
        addr,
        host,
        port: port.parse().expect("member port"),
        instance,
    }
}

/// The ring members for `members`, in order.
pub fn ring_members(members: &[Member]) -> Vec<RingMember<'static>> {
    members
        .iter()
        .map(|m| RingMember {
            host: m.host,
            port: m.port,
            instance: m.instance,
        })
        .collect()
}

/// A carbon-c-relay config routing everything to cluster `c` of `kind` (`carbon_ch`,
/// `fnv1a_ch`, ...) over the member specs `members`.
pub fn crelay_cluster_conf(kind: &str, members: &[&str], replication: usize) -> String {
    format!(
        "cluster c {kind} replication {replication}\n    {}\n    ;\nmatch * send to c stop;\n",
        members.join("\n    ")
    )
}

/// Runs `carbon-c-relay -t -f conf` on `names` (its stdin and output as files in `dir`)
/// and reads, per name, the servers it printed under `cluster_line` (such as
/// `carbon_ch(c)`), in order. Fails unless it answered every name, in input order.
pub fn crelay_test_routes<S: AsRef<str>>(
    conf: &std::path::Path,
    names: &[S],
    dir: &std::path::Path,
    cluster_line: &str,
    timeout: Duration,
) -> Vec<Vec<String>> {
    let stdin = dir.join("names.in");
    std::fs::write(&stdin, lines(names)).expect("write c-relay stdin");
    let mut cmd = Command::new(peer_bin("carbon-c-relay", &[]));
    cmd.arg("-t").arg("-f").arg(conf);
    let stdout = run_peer(cmd, &stdin, dir, "routes", timeout).stdout;
    let blocks = crelay_test_blocks(&stdout, cluster_line);
    assert_eq!(
        blocks.len(),
        names.len(),
        "c-relay answered {} of {} names; see {}",
        blocks.len(),
        names.len(),
        dir.display()
    );
    blocks
        .into_iter()
        .zip(names)
        .map(|((echoed, servers), name)| {
            assert_eq!(echoed, name.as_ref(), "c-relay answers out of order");
            servers.into_iter().map(str::to_string).collect()
        })
        .collect()
}
