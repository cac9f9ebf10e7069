//! A real collectd 5.12 receiver (network `Listen` + csv) takes what `cadent blast --format
//! collectd` sends at security levels none, sign and encrypt; its csv files hold exactly
//! the values sent, and it refuses what it should.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cadent::protocol::collectd::{write_identifier, Value};
use cadent::tools::blast::{CollectdTraffic, Scratch};

use crate::support::{cadent_bin, free_port, temp_dir, wait_until};

pub(crate) const COLLECTD: &str = "/usr/sbin/collectd";

/// Writes `conf` to `dir/collectd.conf` and starts collectd on it in the foreground, its
/// stdout and stderr going to `dir/output`; it is stopped by PID when dropped.
pub(crate) fn spawn_collectd(dir: &Path, conf: &str, output: &str) -> Stoppable {
    let path = dir.join("collectd.conf");
    std::fs::write(&path, conf).unwrap();
    let log = std::fs::File::create(dir.join(output)).unwrap();
    Stoppable(
        Command::new(COLLECTD)
            .arg("-f")
            .arg("-C")
            .arg(&path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start collectd"),
    )
}

/// A child process stopped by PID (SIGTERM, then SIGKILL after a bounded wait) when dropped.
pub(crate) struct Stoppable(pub(crate) Child);

impl Stoppable {
    pub(crate) fn stop(&mut self) {
        if matches!(self.0.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let stopped = wait_until(Duration::from_secs(10), || {
            matches!(self.0.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Drop for Stoppable {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every row of the csv files under `root` as `identifier time values...` (identifiers as
/// the dump prints them), sorted, duplicates kept.
pub(crate) fn csv_rows(root: &Path) -> Vec<String> {
    let mut rows = Vec::new();
    let Ok(hosts) = std::fs::read_dir(root) else {
        return rows;
    };
    for host in hosts.flatten() {
        for plugin in std::fs::read_dir(host.path()).unwrap().flatten() {
            for file in std::fs::read_dir(plugin.path()).unwrap().flatten() {
                let name = file.file_name().into_string().unwrap();
                // `type[-type_instance]-YYYY-MM-DD`
                let type_ = &name[..name.len() - 11];
                let id = format!(
                    "{}/{}/{type_}",
                    host.file_name().to_string_lossy(),
                    plugin.file_name().to_string_lossy()
                );
                let text = std::fs::read_to_string(file.path()).unwrap();
                for line in text.lines().skip(1) {
                    rows.push(format!("{id} {}", line.replace(',', " ")));
                }
            }
        }
    }
    rows.sort();
    rows
}

pub(crate) const TYPES_DB: &str = "/usr/share/collectd/types.db";
const NAMES: u64 = 120;
const HOSTS: u64 = 4;
const PLUGINS: u64 = 6;

/// A collectd 5.12 receiver in the foreground (network `Listen` at a security level, with
/// an auth file, and csv with `StoreRates false`), stopped by PID when dropped.
pub(crate) struct Collectd {
    _proc: Stoppable,
    dir: PathBuf,
    pub(crate) port: u16,
}

impl Collectd {
    pub(crate) fn start(level: &str) -> Collectd {
        assert!(
            Path::new(COLLECTD).exists() && Path::new(TYPES_DB).exists(),
            "collectd 5.12 is missing: run scripts/install-peers.sh"
        );
        let dir = temp_dir(&format!("collectd-{level}"));
        let port = free_port();
        std::fs::write(dir.join("auth"), "cadent: secret\n").unwrap();
        let conf = format!(
            r#"Hostname "receiver"
FQDNLookup false
Interval 10
# One write thread: with several, two can create the same new csv file at once and
# corrupt its first rows (seen under load, e.g. a row `17,322791`).
WriteThreads 1
BaseDir "{d}"
PIDFile "{d}/collectd.pid"
TypesDB "{TYPES_DB}"
LoadPlugin network
LoadPlugin csv
<Plugin network>
  <Listen "127.0.0.1" "{port}">
    SecurityLevel "{level}"
    AuthFile "{d}/auth"
  </Listen>
</Plugin>
<Plugin csv>
  DataDir "{d}/csv"
  StoreRates false
</Plugin>
"#,
            d = dir.display()
        );
        let _proc = spawn_collectd(&dir, &conf, "collectd.log");
        let c = Collectd { _proc, dir, port };
        // Listening once the port can no longer be bound.
        let up = wait_until(Duration::from_secs(10), || {
            std::net::UdpSocket::bind(("127.0.0.1", port)).is_err()
        });
        assert!(up, "collectd did not listen:\n{}", c.log());
        c
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("collectd.log")).unwrap_or_default()
    }

    /// Every csv row as `identifier time values...`, identifiers as the dump prints them.
    fn rows(&self) -> BTreeSet<String> {
        self.csv_rows().into_iter().collect()
    }

    /// Every csv row, sorted, duplicates kept.
    pub(crate) fn csv_rows(&self) -> Vec<String> {
        csv_rows(&self.dir.join("csv"))
    }
}

/// The csv rows the value lists of one blast run should make.
fn expected(seed: u64, timestamp: u64) -> BTreeSet<String> {
    let t = CollectdTraffic::new(NAMES, HOSTS, PLUGINS, seed, timestamp);
    let mut scratch = Scratch::default();
    (0..NAMES)
        .map(|i| {
            let vl = t.value_list(i, &mut scratch);
            let mut id = Vec::new();
            write_identifier(&mut id, vl.identity());
            let mut row = String::from_utf8(id).unwrap();
            row += &format!(" {:.3}", vl.time.as_secs_f64());
            for v in vl.values.iter() {
                row += &match v {
                    Value::Gauge(g) => format!(" {g:.6}"),
                    Value::Counter(c) | Value::Absolute(c) => format!(" {c}"),
                    Value::Derive(d) => format!(" {d}"),
                };
            }
            row
        })
        .collect()
}

/// `cadent blast --format collectd` of NAMES value lists to the daemon.
fn blast(c: &Collectd, seed: u64, timestamp: u64, security: &[&str]) {
    let out = Command::new(cadent_bin())
        .args(["blast", "--format", "collectd", "--to"])
        .arg(format!("udp://127.0.0.1:{}", c.port))
        .args(["--count", &NAMES.to_string(), "--names", &NAMES.to_string()])
        .args([
            "--hosts",
            &HOSTS.to_string(),
            "--plugins",
            &PLUGINS.to_string(),
        ])
        .args([
            "--seed",
            &seed.to_string(),
            "--timestamp",
            &timestamp.to_string(),
        ])
        .args(security)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "blast failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("sent_lines={NAMES} ")), "{stdout}");
}

/// Waits (bounded) until collectd's csv holds `want`; then it must hold exactly that.
fn check(c: &Collectd, want: &BTreeSet<String>) {
    wait_until(Duration::from_secs(15), || c.rows().len() >= want.len());
    let got = c.rows();
    assert_eq!(&got, want, "csv differs; collectd log:\n{}", c.log());
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// blast's arguments for a security level and password, user `cadent`.
const fn security<'a>(level: &'a str, password: &'a str) -> [&'a str; 6] {
    [
        "--security-level",
        level,
        "--user",
        "cadent",
        "--password",
        password,
    ]
}

const SIGN: [&str; 6] = security("sign", "secret");
const ENCRYPT: [&str; 6] = security("encrypt", "secret");

/// Level none with an auth file: plain, signed and encrypted all land.
#[test]
fn collectd_accepts_plain_signed_and_encrypted_at_level_none() {
    let c = Collectd::start("None");
    let t = now() - 300;
    blast(&c, 1, t, &[]);
    blast(&c, 1, t + 10, &SIGN);
    blast(&c, 1, t + 20, &ENCRYPT);
    let mut want = expected(1, t);
    want.extend(expected(1, t + 10));
    want.extend(expected(1, t + 20));
    check(&c, &want);
}

/// Level sign: unsigned and wrongly signed packets are refused; the good ones, sent last
/// (with later times, so a refused packet would have shown first), land exactly.
#[test]
fn collectd_sign_listener_takes_only_good_signatures() {
    let c = Collectd::start("Sign");
    let t = now() - 300;
    blast(&c, 2, t, &[]);
    blast(&c, 3, t + 10, &security("sign", "wrong"));
    blast(&c, 4, t + 20, &security("encrypt", "wrong"));
    blast(&c, 5, t + 30, &SIGN);
    blast(&c, 5, t + 40, &ENCRYPT);
    let mut want = expected(5, t + 30);
    want.extend(expected(5, t + 40));
    check(&c, &want);
}

/// Level encrypt: plain and signed packets are refused, encrypted ones land exactly.
#[test]
fn collectd_encrypt_listener_takes_only_encrypted() {
    let c = Collectd::start("Encrypt");
    let t = now() - 300;
    blast(&c, 2, t, &[]);
    blast(&c, 3, t + 10, &SIGN);
    blast(&c, 4, t + 20, &security("encrypt", "wrong"));
    blast(&c, 5, t + 30, &ENCRYPT);
    check(&c, &expected(5, t + 30));
}
