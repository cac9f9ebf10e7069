//! Rewrite rules against carbon-c-relay 3.7.3, the peer whose semantics we copy.
//!
//! For every rule in `RULES`, the same generated names go through
//! `carbon-c-relay -t -f CONF` (one rewrite, then `match * send to c stop`) and through
//! `Rewrite::apply`; every final name must be the same. Then a chain of rewrites in one
//! config, which c-relay applies in config order, against the router's chain (rewrite-only routes in config order).
//!
//! `-t` prints, per input line, a `rewrite` block when a rewrite matched and then
//!
//! ```text
//! match
//!     * -> FINAL_NAME
//! ```
//!
//! so the `* -> ` line after each line that is exactly `match` is the name c-relay
//! would send. The config echo before them never has a line that is exactly `match`.
//! Test mode does not cleanse names, so the names use only bytes cleansing keeps.
//!
//! The rules are written where POSIX extended (c-relay) and Rust `regex` agree (see
//! `route/rewrite.rs`): greedy groups, classes, anchors, alternatives that cannot both
//! match at one place. Every regex without groups is one c-relay reduces to a plain
//! string match, because 3.7.3 mishandles groupless real regexes.

use cadent::config::Config;
use cadent::route::rewrite::Rewrite;
use cadent::route::{DestinationTable, Router};
use cadent::tools::SplitMix64;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long one c-relay run may take before the test fails.
const PEER_TIMEOUT: Duration = Duration::from_secs(30);
/// Generated names per rule.
const NAMES: usize = 4000;

/// One rule: what it exercises, the regex, cadent's template and c-relay's template
/// (the same text, except where cadent's `\g{N}` extension is spelled `\N` for 3.7.3).
struct Rule {
    what: &'static str,
    regex: &'static str,
    into: &'static str,
    crelay_into: &'static str,
}

const fn rule(what: &'static str, regex: &'static str, into: &'static str) -> Rule {
    Rule {
        what,
        regex,
        into,
        crelay_into: into,
    }
}

const ELEVEN: &str = r"^([^.]+)\.([^.]+)\.([^.]+)\.([^.]+)\.([^.]+)\.([^.]+)\.([^.]+)\.([^.]+)\.([^.]+)\.([^.]+)\.([^.]+)";

const RULES: &[Rule] = &[
    rule(
        "anchored, whole name",
        r"^servers\.([^.]+)\.(.*)$",
        r"hosts.\1.\2",
    ),
    rule(
        "anchored start, rest kept",
        r"^([a-zA-Z]+)\.([a-zA-Z]+)",
        r"\2.\1",
    ),
    rule("unanchored, first match only", "([0-9]+)", r"<\1>"),
    rule("lowercase and uppercase", r"^([^.]*)\.(.*)$", r"\_1.\^2"),
    rule("dots to underscores", r"^(.*)\.([^.]*)$", r"\.1.\2"),
    rule(
        "lower+dots, upper+dots",
        r"^([^.]+)\.(.*)$",
        r"\_.2|\^.2|\1",
    ),
    rule("unanchored uppercase run", "([A-Z]+)", r"\_1"),
    rule(
        "optional group that may not take part",
        r"^([a-z]+)(\.([0-9]+))?\.(.*)$",
        r"\1-\3-\4",
    ),
    rule("alternation, one side unset", "(web)|(db)", r"[\1|\2]"),
    rule("groups beyond 9", ELEVEN, r"\11.\10.\1"),
    rule("bounded repeat", "^([a-z]{2,4})([a-z]*)", r"\2\1"),
    rule("empty match at the start", "(x*)", r"[\1]"),
    rule(
        "alternation of prefixes",
        r"^([Ss]ervers|[Hh]osts)\.",
        r"\^1.",
    ),
    rule("number between dots", r"\.([0-9]+)\.", r"._\1_."),
    rule(
        "escape quirks: \\\\, \\z, trailing \\",
        r"^([^.]+)\.([^.]+)",
        r"\\1-\z-\2\",
    ),
    rule(
        "escape quirks: case carries, \\_ after a group",
        r"^([^.]+)\.([^.]+)",
        r"\_1\2|\1\_2|\^\_1|\_..2|\..1",
    ),
    rule("escape quirks: \\1\\a", r"^([^.]+)\.([^.]+)", r"\1\a\_2\\b"),
    rule("groupless prefix (strncmp)", r"^stats\.", "statsd."),
    rule("groupless substring (strstr)", r"\.cpu\.", ".processor."),
    rule("groupless suffix (tailcmp)", r"\.count$", ".total"),
    rule("groupless exact (strcmp)", r"^foo\.bar$", "baz"),
    Rule {
        what: "\\g{N} (3.8+ syntax; \\N for 3.7.3)",
        regex: r"^([^.]+)\.([^.]+)",
        into: r"\g{2}-\_g{1}.\^.g{2}",
        crelay_into: r"\2-\_1.\^.2",
    },
];

/// Names built from words the rules look for, random words, numbers and mixed case,
/// 1 to 13 segments. The same on every run.
fn names(n: usize, seed: u64) -> Vec<String> {
    const WORDS: &[&str] = &[
        "servers", "Servers", "hosts", "Hosts", "stats", "web", "db", "cpu", "count", "foo", "bar",
        "Web01", "DB-2", "load", "x", "xx", "xxx", "user", "sys", "a_b", "MiXeD",
    ];
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
    let mut rng = SplitMix64(seed);
    let mut out = Vec::with_capacity(n + 4);
    // A few fixed names for the exact and suffix rules.
    out.extend(["foo.bar", "foo.bar.baz", "a.count", "stats.x.count"].map(String::from));
    while out.len() < n {
        let segments = 1 + rng.below(13);
        let mut name = String::new();
        for s in 0..segments {
            if s > 0 {
                name.push('.');
            }
            match rng.below(4) {
                0 | 1 => name.push_str(WORDS[rng.below(WORDS.len())]),
                2 => name.push_str(&rng.below(100_000).to_string()),
                _ => {
                    for _ in 0..1 + rng.below(8) {
                        name.push(ALNUM[rng.below(ALNUM.len())] as char);
                    }
                }
            }
        }
        out.push(name);
    }
    out
}

/// A c-relay config string: quoted, since c-relay's lexer drops one level of `\`
/// inside quotes (so every `\` is doubled) and would cut unquoted text at `;`.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Runs `carbon-c-relay -t` on `conf` with `names` on stdin, output to files (no pipe
/// can fill), bounded by `PEER_TIMEOUT`; returns each name's final form.
fn crelay_final_names(conf: &str, names: &[String], dir: &Path) -> Vec<String> {
    let conf_path = dir.join("relay.conf");
    fs::write(&conf_path, conf).expect("write config");
    let stdin_path = dir.join("names.in");
    fs::write(&stdin_path, crate::support::lines(names)).expect("write names");
    let mut cmd = Command::new(crate::support::peer_bin("carbon-c-relay", &[]));
    cmd.arg("-t").arg("-f").arg(&conf_path);
    let crate::support::PeerOutput { stdout, stderr } =
        crate::support::run_peer(cmd, &stdin_path, dir, "relay", PEER_TIMEOUT);
    // c-relay reports a rewrite it could not do on stderr and leaves the name alone;
    // none of our rules may hit that.
    assert!(
        !stderr.contains("failed to rewrite"),
        "c-relay could not rewrite:\n{stderr}"
    );
    let mut finals = Vec::with_capacity(names.len());
    let mut in_match = false;
    for line in stdout.lines() {
        if line == "match" {
            in_match = true;
        } else if in_match {
            let name = line
                .strip_prefix("    * -> ")
                .unwrap_or_else(|| panic!("unexpected line after `match`: {line:?}"));
            finals.push(name.to_string());
            in_match = false;
        }
    }
    assert_eq!(
        finals.len(),
        names.len(),
        "c-relay answered {} of {} names; see {}",
        finals.len(),
        names.len(),
        dir.display()
    );
    finals
}

fn config(rules: &[(&str, &str)]) -> String {
    let mut conf = String::from("cluster c forward 127.0.0.1:2101;\n");
    for (regex, into) in rules {
        conf.push_str(&format!("rewrite {} into {};\n", quote(regex), quote(into)));
    }
    conf.push_str("match * send to c stop;\n");
    conf
}

/// Compares cadent's final names with c-relay's; returns how many differ, printing
/// the first few.
fn compare(label: &str, names: &[String], want: &[String], got: &[String]) -> usize {
    let mut differ = 0;
    for ((name, want), got) in names.iter().zip(want).zip(got) {
        if want != got {
            if differ < 10 {
                eprintln!("{label}: {name:?}: c-relay {want:?}, cadent {got:?}");
            }
            differ += 1;
        }
    }
    differ
}

#[test]
fn rules_match_crelay() {
    let names = names(NAMES, 0x5eed_0001);
    let mut total = 0;
    let mut rewritten = 0;
    let mut differ = 0;
    for (i, r) in RULES.iter().enumerate() {
        let dir = workdir(&format!("rule{i}"));
        let want = crelay_final_names(&config(&[(r.regex, r.crelay_into)]), &names, &dir);
        let rule = Rewrite::compile(r.regex, r.into).unwrap_or_else(|e| panic!("{}: {e}", r.what));
        let mut out = Vec::new();
        let got: Vec<String> = names
            .iter()
            .map(|n| {
                if rule.apply(n.as_bytes(), &mut out) {
                    String::from_utf8(out.clone()).expect("ASCII in, ASCII out")
                } else {
                    n.clone()
                }
            })
            .collect();
        let changed = names.iter().zip(&want).filter(|(n, w)| n != w).count();
        // A rule no name exercises would prove nothing.
        assert!(changed > 0, "{}: no name was rewritten", r.what);
        let d = compare(r.what, &names, &want, &got);
        eprintln!(
            "{:<45} {changed:>5} of {} rewritten, {d} differ",
            r.what,
            names.len()
        );
        total += names.len();
        rewritten += changed;
        differ += d;
        if d == 0 {
            let _ = fs::remove_dir_all(&dir);
        }
    }
    eprintln!(
        "{} rules x {} names: {total} compared, {rewritten} rewritten by c-relay, {differ} differ",
        RULES.len(),
        names.len()
    );
    assert_eq!(
        differ, 0,
        "cadent and carbon-c-relay rewrote names differently"
    );
}

#[test]
fn chain_in_config_order_matches_crelay() {
    let chain: &[(&str, &str)] = &[
        (r"^servers\.([^.]+)\.", r"hosts.\_1."),
        (r"^hosts\.([^.]+)\.(.*)$", r"\2.by_host.\1"),
        (r"\.cpu\.", ".processor."),
        ("([A-Z]+)", r"\_1"),
        (r"^([a-z0-9_-]+)\.", r"\^1."),
    ];
    let mut names = names(NAMES, 0x5eed_0002);
    names.extend(
        [
            "servers.WEB01.cpu.user",
            "servers.db.load",
            "Hosts.x",
            "cpu",
        ]
        .map(String::from),
    );
    let dir = workdir("chain");
    let want = crelay_final_names(&config(chain), &names, &dir);
    // The same chain as cadent routes run it: one rewrite-only route per rule, matching
    // every name, then a route that sends the final name somewhere.
    let mut toml = String::from(
        "[[listen]]\nname = \"g\"\nurl = \"tcp://127.0.0.1:0\"\nformat = \"graphite\"\n\
         [[cluster]]\nname = \"c\"\nkind = \"forward\"\nmembers = [\"127.0.0.1:1\"]\n",
    );
    for (re, into) in chain {
        toml.push_str(&format!(
            "[[route]]\nmatch = {{ all = true }}\nrewrite = {{ regex = '{re}', into = '{into}' }}\n"
        ));
    }
    toml.push_str("[[route]]\nmatch = { all = true }\nsend_to = [\"c\"]\n");
    let cfg = Config::parse(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let mut router = Router::new(&cfg, &DestinationTable::from_config(&cfg), &[]);
    let mut hits = vec![0; router.rule_count()];
    let got: Vec<String> = names
        .iter()
        .map(|n| {
            let name = n.as_bytes();
            // As c-relay's -t mode: no cleansing, and the whole name is the key.
            let plain = cadent::route::NameForm::Plain;
            let fp = router.fingerprint(name, name, plain, cadent::point::Origin::Listener(0));
            let d = router.route_fingerprinted(
                fp,
                name,
                name,
                plain,
                cadent::point::Origin::Listener(0),
                &mut hits,
            );
            let last = d.names.last().map_or(name, |v| v.as_slice());
            String::from_utf8(last.to_vec()).unwrap()
        })
        .collect();
    assert_eq!(
        want[names.len() - 4],
        "CPU.user.by_host.web01",
        "sanity: c-relay chains in config order"
    );
    let changed = names.iter().zip(&want).filter(|(n, w)| n != w).count();
    let d = compare("chain", &names, &want, &got);
    eprintln!(
        "chain of {}: {changed} of {} rewritten, {d} differ",
        chain.len(),
        names.len()
    );
    assert_eq!(d, 0, "the chain differs from carbon-c-relay");
    let _ = fs::remove_dir_all(&dir);
}

fn workdir(tag: &str) -> PathBuf {
    crate::support::temp_dir(&format!("rewrite-{tag}"))
}
