//! Bad configs: each is rejected by `cadent check` (and `cadent serve`) with a message
//! naming the key.

use std::process::Command;

use crate::support::*;

const BASE_LISTEN: &str =
    "[[listen]]\nname = \"g\"\nurl = \"tcp://127.0.0.1:2003\"\nformat = \"graphite\"\n";
const BASE_CLUSTER: &str =
    "[[cluster]]\nname = \"c\"\nkind = \"carbon_ch\"\nmembers = [\"127.0.0.1:2101=a\", \"127.0.0.1:2102=b\"]\n";

fn check(text: &str) -> (bool, String) {
    let dir = temp_dir("badcfg");
    let path = dir.join("c.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(cadent_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn broken_configs_are_rejected_naming_the_key() {
    let cases: Vec<(String, &str)> = vec![
        (format!("bogus = 1\n{BASE_LISTEN}"), "bogus: unknown key"),
        (format!("[server]\nshards = \"two\"\n{BASE_LISTEN}"), "server.shards: expected an integer"),
        (format!("[server]\nadmin_listen = \"nowhere\"\n{BASE_LISTEN}"), "server.admin_listen"),
        ("[[listen]]\nname = \"g\"\nformat = \"graphite\"\n".into(), "listen[0].url: is required"),
        ("[[listen]]\nname = \"g\"\nurl = \"127.0.0.1:2003\"\nformat = \"graphite\"\n".into(), "listen[0].url"),
        ("[[listen]]\nname = \"g\"\nurl = \"tcp://127.0.0.1:2003\"\nformat = \"json\"\n".into(), "listen[0].format"),
        (format!("{BASE_LISTEN}colour = \"red\"\n"), "listen[0].colour: unknown key"),
        (format!("{BASE_LISTEN}{BASE_LISTEN}"), "listen[1].name"),
        (format!("{BASE_LISTEN}line_bytes_max = 1000000\n"), "listen[0].line_bytes_max"),
        (format!("{BASE_LISTEN}[[cluster]]\nname = \"c\"\nkind = \"maglev\"\nmembers = [\"a:1\"]\n"), "cluster[0].kind"),
        (format!("{BASE_LISTEN}[[cluster]]\nname = \"c\"\nkind = \"forward\"\nmembers = [\"a\"]\n"), "cluster[0].members[0]"),
        (format!("{BASE_LISTEN}[[cluster]]\nname = \"c\"\nkind = \"forward\"\nmembers = []\n"), "cluster[0].members: needs at least one"),
        (format!("{BASE_LISTEN}{BASE_CLUSTER}replication = 3\n"), "cluster[0].replication"),
        (
            format!("{BASE_LISTEN}[[cluster]]\nname = \"c\"\nkind = \"carbon_ch\"\nmembers = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n"),
            "cluster[0].members[1]: same host and instance",
        ),
        (format!("{BASE_LISTEN}[[cluster]]\nname = \"f\"\nkind = \"file\"\n"), "cluster[0].path"),
        (format!("{BASE_LISTEN}{BASE_CLUSTER}[[route]]\nmatch = {{ all = true }}\nsend_to = [\"nope\"]\n"), "route[0].send_to[0]"),
        (format!("{BASE_LISTEN}{BASE_CLUSTER}[[route]]\nsend_to = [\"c\"]\n"), "route[0].match: is required"),
        (
            format!("{BASE_LISTEN}{BASE_CLUSTER}[[route]]\nmatch = {{ prefix = \"a\", substring = \"b\" }}\nsend_to = [\"c\"]\n"),
            "route[0].match: needs exactly one",
        ),
        (format!("{BASE_LISTEN}{BASE_CLUSTER}[[route]]\nmatch = {{ regex = \"(\" }}\nsend_to = [\"c\"]\n"), "route[0].match.regex"),
        (format!("{BASE_LISTEN}{BASE_CLUSTER}[[route]]\nmatch = {{ all = true }}\naction = \"drop\"\nsend_to = [\"c\"]\n"), "route[0].send_to"),
        (format!("{BASE_LISTEN}{BASE_CLUSTER}[[route]]\nmatch = {{ all = true }}\naction = \"explode\"\n"), "route[0].action"),
        (format!("{BASE_LISTEN}[output]\nflush_bytes = 1\n"), "output.flush_bytes"),
        (format!("{BASE_LISTEN}[output]\nreconnect_backoff_min_ms = 9000\nreconnect_backoff_max_ms = 10\n"), "output.reconnect_backoff_min_ms"),
        (format!("{BASE_LISTEN}[output]\nspool_fsync_interval_ms = 0\n"), "output.spool_fsync_interval_ms"),
        (format!("{BASE_LISTEN}[output]\nspool_segment_bytes = 100\n"), "output.spool_segment_bytes"),
        (format!("{BASE_LISTEN}[output]\nspool_segment_bytes = 8192\n"), "output.spool_segment_bytes: cannot hold a batch"),
        (format!("{BASE_LISTEN}[output]\nspool_dir = 1\n"), "output.spool_dir: expected a string"),
        (format!("{BASE_LISTEN}{BASE_CLUSTER}spool_bytes_max = -1\n"), "cluster[0].spool_bytes_max"),
        (
            format!("{BASE_LISTEN}[[cluster]]\nname = \"f\"\nkind = \"file\"\npath = \"x.log\"\nspool_bytes_max = 1\n"),
            "cluster[0].spool_bytes_max: applies to tcp members only",
        ),
        (
            format!("{BASE_LISTEN}[[store]]\nname = \"w\"\nkind = \"whisper\"\npath = \"w\"\nflock = \"yes\"\n"),
            "store[0].flock: expected true or false",
        ),
        ("[server\nshards = 1\n".into(), "(syntax)"),
        ("[server]\nshards = 1\n".into(), "listen: no [[listen]]"),
    ];
    let mut failures = Vec::new();
    for (text, want) in &cases {
        let (ok, stderr) = check(text);
        if ok || !stderr.contains(want) {
            failures.push(format!(
                "want {want:?}, ok={ok}, stderr:\n{stderr}\nconfig:\n{text}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n----\n"));
}

#[test]
fn every_error_is_reported_at_once() {
    let text = format!(
        "bogus = 1\n[server]\nshards = -1\n{BASE_LISTEN}format2 = 1\n{BASE_CLUSTER}replication = 9\n\
         [[route]]\nmatch = {{ regex = \"[\" }}\nsend_to = [\"x\"]\n"
    );
    let (ok, stderr) = check(&text);
    assert!(!ok);
    for want in [
        "bogus",
        "server.shards",
        "listen[0].format2",
        "cluster[0].replication",
        "route[0].match.regex",
        "route[0].send_to[0]",
    ] {
        assert!(stderr.contains(want), "missing {want} in:\n{stderr}");
    }
}

#[test]
fn serve_refuses_a_bad_config_and_shipped_configs_pass() {
    let dir = temp_dir("badserve");
    let path = dir.join("c.toml");
    std::fs::write(&path, "[server]\nshards = \"x\"\n").unwrap();
    let out = Command::new(cadent_bin())
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.shards"));
    let root = env!("CARGO_MANIFEST_DIR");
    for f in ["configs/cadent.toml", "configs/default.toml"] {
        let out = Command::new(cadent_bin())
            .args(["check", "--config"])
            .arg(format!("{root}/{f}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
