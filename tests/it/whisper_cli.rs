//! `cadent whisper create|info|update|fetch|dump` against python whisper 1.1.10's scripts,
//! run live: the same arguments give byte-identical files and output, each tool reads
//! the other's files, and broken input gives a clear `[ERROR]`, never a panic.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::support::{cadent_bin, temp_dir};
use crate::whisper_diff::{ensure_whisper, python};

struct Tools {
    py: PathBuf,
    scripts: PathBuf,
}

impl Tools {
    fn new() -> Tools {
        let py = python();
        ensure_whisper(&py);
        let out = Command::new(&py)
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_path('scripts'))",
            ])
            .output()
            .unwrap();
        let scripts = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        assert!(
            scripts.join("whisper-info.py").exists(),
            "whisper's scripts not in {}",
            scripts.display()
        );
        Tools { py, scripts }
    }

    /// (exit ok, stdout, stderr) of whisper-<tool>.py.
    fn python(&self, tool: &str, args: &[&str]) -> (bool, String, String) {
        outcome(
            Command::new(&self.py)
                .arg(self.scripts.join(format!("whisper-{tool}.py")))
                .args(args),
        )
    }

    /// (exit ok, stdout, stderr) of `cadent whisper <tool>`.
    fn cadent(&self, tool: &str, args: &[&str]) -> (bool, String, String) {
        outcome(
            Command::new(cadent_bin())
                .args(["whisper", tool])
                .args(args),
        )
    }
}

/// Runs `cmd` to its end: (exit ok, stdout, stderr).
fn outcome(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn whisper_tools_match_python_whisper_scripts() {
    let t = Tools::new();
    let dir = temp_dir("whispercli");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &["60:5", "300:4"],
            &["--xFilesFactor", "0.3", "--aggregationMethod", "max"],
        ),
        (
            &["10s:1m", "1m:5m", "5m:1h"],
            &["--aggregationMethod", "sum", "--sparse"],
        ),
        (
            &["1m:1h", "1h:1d"],
            &[
                "--xFilesFactor",
                "0",
                "--aggregationMethod",
                "absmin",
                "--fallocate",
            ],
        ),
        (&["60:1440"], &[]),
    ];
    for (i, (retentions, opts)) in cases.iter().enumerate() {
        let (p, c) = (dir.join(format!("p{i}.wsp")), dir.join(format!("c{i}.wsp")));
        let args = |path: &Path| -> Vec<String> {
            let mut v = vec![s(path).to_string()];
            v.extend(retentions.iter().map(|x| x.to_string()));
            v.extend(opts.iter().map(|x| x.to_string()));
            v
        };
        let pa = args(&p);
        let ca = args(&c);
        let (pok, pout, perr) =
            t.python("create", &pa.iter().map(String::as_str).collect::<Vec<_>>());
        let (cok, cout, cerr) =
            t.cadent("create", &ca.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(pok && cok, "case {i}: create failed: {perr} / {cerr}");
        assert_eq!(
            pout.replace(s(&p), "F"),
            cout.replace(s(&c), "F"),
            "case {i}: create output"
        );
        let same_bytes = |what: &str| {
            assert!(
                std::fs::read(&p).unwrap() == std::fs::read(&c).unwrap(),
                "case {i}: files differ after {what}"
            );
        };
        same_bytes("create");

        // Several points (update_many), then one (update): the scripts take both paths.
        // Ages stay at least 10 s clear of every archive's retention (60, 300, 1200, 3600,
        // 86400 s here): each tool reads the clock itself, and a second ticking between the
        // two runs must not move a point to another archive. (Edges are covered by
        // whisper_diff.rs, which pins `now`.)
        let mut points: Vec<String> = [30, 31, 90, 200, 29, 3_500]
            .iter()
            .enumerate()
            .map(|(k, ago)| format!("{}:{}.{k}", now - ago, k * 7))
            .collect();
        // Values only python's float() reads: an infinity (rolled up into every archive)
        // and a digit group.
        points.extend([format!("{}:inf", now - 45), format!("{}:1_5", now - 46)]);
        let pts: Vec<&str> = points.iter().map(String::as_str).collect();
        assert!(t.python("update", &[&[s(&p)], pts.as_slice()].concat()).0);
        assert!(t.cadent("update", &[&[s(&c)], pts.as_slice()].concat()).0);
        same_bytes("update_many");
        let one = format!("{}:-2.5", now - 30);
        assert!(t.python("update", &[s(&p), &one]).0);
        assert!(t.cadent("update", &[s(&c), &one]).0);
        same_bytes("update");

        // Each tool reads the other's file: python's scripts on cadent's, cadent's on python's.
        // Inside every case's retention (the shortest is 1200 s): both tools clamp `from`
        // to their own clock, which may tick between the two runs.
        let (from, until) = ((now - 600).to_string(), now.to_string());
        let reads: [(&str, Vec<&str>); 8] = [
            ("info", vec![]),
            ("info", vec!["--json"]),
            ("info", vec!["xFilesFactor"]),
            ("info", vec!["archives"]),
            ("fetch", vec!["--from", &from, "--until", &until]),
            ("fetch", vec!["--json", "--from", &from, "--until", &until]),
            ("dump", vec![]),
            ("dump", vec!["--raw"]),
        ];
        for (tool, extra) in &reads {
            let py = t.python(tool, &[&[s(&c)], extra.as_slice()].concat());
            let ours = t.cadent(tool, &[&[s(&p)], extra.as_slice()].concat());
            assert_eq!(py.0, ours.0, "case {i}: {tool} {extra:?} exit status");
            assert_eq!(py.1, ours.1, "case {i}: {tool} {extra:?} output");
        }
    }
}

#[test]
fn whisper_tools_refuse_bad_input_clearly() {
    let t = Tools::new();
    let dir = temp_dir("whispercli-bad");
    for bad in [
        &["60:5", "60:10"][..],
        &["60:5", "90:10"],
        &["60:5", "300:1"],
        &["1x:5"],
        &["60:0"],
    ] {
        let path = dir.join("bad.wsp");
        let (ok, _, err) = t.cadent("create", &[&[s(&path)], bad].concat());
        assert!(!ok && err.starts_with("[ERROR] "), "{bad:?}: {err}");
        assert!(!path.exists(), "{bad:?}: a refused create leaves no file");
    }
    let good = dir.join("good.wsp");
    assert!(t.cadent("create", &[s(&good), "60:5", "300:4"]).0);
    let bytes = std::fs::read(&good).unwrap();
    let mut corrupt: Vec<(&str, Vec<u8>)> =
        vec![("truncated", bytes[..30].to_vec()), ("empty", Vec::new())];
    let mut unknown_method = bytes.clone();
    unknown_method[..4].copy_from_slice(&99u32.to_be_bytes());
    corrupt.push(("unknown aggregation type", unknown_method));
    let mut bad_xff = bytes.clone();
    bad_xff[8..12].copy_from_slice(&7.5f32.to_be_bytes());
    corrupt.push(("xff out of range", bad_xff));
    for (what, data) in corrupt {
        let path = dir.join("corrupt.wsp");
        std::fs::write(&path, data).unwrap();
        for tool in ["info", "fetch", "dump", "update"] {
            let args: Vec<&str> = if tool == "update" {
                vec![s(&path), "N:1"]
            } else {
                vec![s(&path)]
            };
            let (ok, _, err) = t.cadent(tool, &args);
            assert!(!ok, "{what}: {tool} accepted a corrupt file");
            assert!(
                err.starts_with("[ERROR] ") && !err.contains("panicked"),
                "{what}: {tool}: {err}"
            );
        }
    }
}
