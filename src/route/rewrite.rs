//! carbon-c-relay's rewrite rules: `rewrite REGEX into TEMPLATE;`.
//!
//! The semantics are carbon-c-relay 3.7.3's `router_rewrite_metric`, pinned by
//! `tests/it/rewrite.rs` against `carbon-c-relay -t`:
//!
//! - Only the **first (leftmost) match** is replaced; the text before and after it is
//!   kept. `rewrite b(a)r into X\1Y` turns `zzbarbar` into `zzXaYbar`. Anchor the regex
//!   (`^...$`) to replace the whole name.
//! - `\N` inserts group N (any number of digits: `\12` is group 12). A group that did
//!   not take part in the match inserts nothing.
//! - `\_N` lowercases the group, `\^N` uppercases it (ASCII only, as C's `tolower` in
//!   the C locale), `\.N` turns its dots into `_`; `\_.N` and `\^.N` do both.
//! - Every other `\c` writes `c` (`\z` is `z`); `\\` and a trailing `\` write nothing,
//!   and `\\1` is group 1. These follow from c-relay's escape state machine, which we
//!   replay once at compile time (see `compile_template`), including its quirks:
//!   - after a group, the case of the next `\N` carries over: `\_1\2` lowercases both;
//!   - right after a group, `\_` and `\^` are literal: `\1\_2` writes group 1 then `_2`;
//!   - `\^\_1` writes `_1`, and `\_..1` loses the lowercase (`\..1` is `\.1`).
//! - Rewrites apply in place, in config order: each sees the previous one's output.
//!
//! Refused at compile time, where c-relay would write garbage or nothing:
//! - a reference to a group the regex does not have (c-relay reads an unset slot, or
//!   writes nothing), and `\0` (c-relay writes nothing: it is not the whole match);
//! - an invalid regex.
//!
//! Where we differ from c-relay 3.7.3 on purpose:
//! - `\g{N}` is group N (carbon-c-relay 3.8+ syntax, which separates a group from
//!   following digits: `\g{1}0`). 3.7.3 writes it literally as `g{N}`; nobody wants that.
//!   The case and dot flags apply to it as to `\N`: `\_g{1}`.
//! - A regex without capture groups that c-relay cannot reduce to a plain string match
//!   (`a.c`, `[0-9]+`) replaces its match here. 3.7.3 reads an unset match slot for those
//!   and leaves the name alone, logs "newmetric size too small", or appends garbage.
//!   Plain-string regexes (`foo`, `^foo`, `foo$`, `^foo$`) behave the same in both.
//! - c-relay builds the new name in an 8 KiB buffer and gives up (name unchanged) when
//!   it does not fit; we have no such limit (names are bounded by the line length).
//!
//! Regex dialects: our regexes are Rust `regex` (RE2-like, bytes, Unicode off so `.` is
//! one byte as in the C locale); c-relay uses POSIX extended (`regcomp(REG_EXTENDED)`).
//! The differences that matter:
//! - no backreferences inside the pattern (`(a)\1` is refused by `regex`);
//! - alternation is leftmost-first here and leftmost-longest in POSIX: `(a|ab)` matches
//!   `a` of `abc` here and `ab` in c-relay. Put the longer alternative first, or anchor;
//! - POSIX has no `\d`, lazy `*?` or `(?i)`: a pattern using them means something else
//!   (or nothing) to c-relay (glibc reads `\d` as `d`, `x+?` as `(x+)?`); `\w` and `\s`
//!   are glibc extensions there, ASCII in the C locale;
//! - a backslash inside brackets is a literal in POSIX (`[\d]` is `\` or `d`) and an
//!   escape here.
//!
//! Greedy groups, classes, anchors, `?`, `+`, `*`, `{m,n}` and alternations whose
//! alternatives cannot both match at one place mean the same in both, which is what the
//! comparison test uses.

use std::fmt;

use crate::protocol::regex_line::SlotRegex;
use regex::bytes::{CaptureLocations, RegexBuilder};

/// What a group reference does to the bytes it inserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    /// As matched (`\N`).
    Retain,
    /// ASCII lowercase (`\_N`).
    Lower,
    /// ASCII uppercase (`\^N`).
    Upper,
}

/// One step of a compiled template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Bytes `start..end` of the template's literal buffer.
    Literal { start: u32, end: u32 },
    /// Capture group `index`, with its case and whether dots become `_`.
    Group { index: u32, case: Case, dots: bool },
}

/// c-relay's escape state while it walks a template (`rcase` in router.c).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RCase {
    Retain,
    Lower,
    Upper,
    RetainDot,
    LowerDot,
    UpperDot,
}

impl RCase {
    fn split(self) -> (Case, bool) {
        match self {
            RCase::Retain => (Case::Retain, false),
            RCase::Lower => (Case::Lower, false),
            RCase::Upper => (Case::Upper, false),
            RCase::RetainDot => (Case::Retain, true),
            RCase::LowerDot => (Case::Lower, true),
            RCase::UpperDot => (Case::Upper, true),
        }
    }
}

/// A compiled template: literal bytes and group references, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    ops: Vec<Op>,
    literals: Vec<u8>,
}

impl Template {
    fn uses_groups(&self) -> bool {
        self.ops.iter().any(|op| matches!(op, Op::Group { .. }))
    }
}

/// Replays c-relay 3.7.3's template walk (`router_rewrite_metric`) once, recording
/// what it would write instead of writing it. `groups` is the regex's number of
/// capture groups; references beyond it, and `\0`, are errors.
fn compile_template(tpl: &str, groups: usize) -> Result<Template, String> {
    let bytes = tpl.as_bytes();
    let mut t = Template {
        ops: Vec::new(),
        literals: Vec::new(),
    };
    // 0: plain text; 1: after `\` (and flags); 2: inside the digits of `\N`.
    let mut escape = 0u8;
    let mut rcase = RCase::Retain;
    // Saturates instead of overflowing (c-relay's `int` would): any value past
    // `groups` is refused below either way.
    let mut reference: usize = 0;
    // Whether digits were read since the last flush: c-relay tests `ref > 0`, so
    // `\0` and a `\` that only continues an escape both insert nothing.
    let mut digits = false;
    let mut i = 0;
    // Walks one past the end: c-relay's loop also handles the terminating NUL, which
    // is what flushes a trailing `\N`.
    while i <= bytes.len() {
        let p = bytes.get(i).copied();
        i += 1;
        if p == Some(b'\\') && escape == 0 {
            escape = 1;
            rcase = RCase::Retain;
            continue;
        }
        if escape == 1 && rcase == RCase::Retain && p == Some(b'_') {
            rcase = RCase::Lower;
        } else if escape == 1 && rcase == RCase::Retain && p == Some(b'^') {
            rcase = RCase::Upper;
        } else if escape == 1 && p == Some(b'.') {
            rcase = match rcase {
                RCase::Lower => RCase::LowerDot,
                RCase::Upper => RCase::UpperDot,
                _ => RCase::RetainDot,
            };
        } else if escape != 0 && p.is_some_and(|c| c.is_ascii_digit()) {
            escape = 2;
            digits = true;
            let digit = usize::from(p.unwrap_or(b'0') - b'0');
            reference = reference.saturating_mul(10).saturating_add(digit);
        } else {
            if escape != 0 {
                if digits {
                    push_group(&mut t, tpl, reference, rcase, groups)?;
                }
                reference = 0;
                digits = false;
                // Extension: `\g{N}` (c-relay 3.8+), in the place a digit could go.
                if p == Some(b'g') && bytes.get(i) == Some(&b'{') {
                    let close = bytes[i..]
                        .iter()
                        .position(|&c| c == b'}')
                        .map(|k| i + k)
                        .ok_or_else(|| {
                            format!("template `{tpl}`: `\\g{{` without a closing `}}`")
                        })?;
                    let number = &tpl[i + 1..close];
                    if number.is_empty() || !number.bytes().all(|c| c.is_ascii_digit()) {
                        return Err(format!(
                            "template `{tpl}`: `\\g{{{number}}}` is not a group number"
                        ));
                    }
                    let n = number.parse::<usize>().unwrap_or(usize::MAX);
                    push_group(&mut t, tpl, n, rcase, groups)?;
                    i = close + 1;
                    escape = 0;
                    rcase = RCase::Retain;
                    continue;
                }
            }
            // A `\` met while escaped keeps the state: that is how `\1\2` chains.
            if p != Some(b'\\') {
                escape = 0;
                rcase = RCase::Retain;
                if let Some(c) = p {
                    push_literal(&mut t, c);
                }
            }
        }
    }
    Ok(t)
}

fn push_group(
    t: &mut Template,
    tpl: &str,
    reference: usize,
    rcase: RCase,
    groups: usize,
) -> Result<(), String> {
    if reference == 0 {
        return Err(format!(
            "template `{tpl}` uses \\0, which carbon-c-relay replaces with nothing \
             (it is not the whole match); remove it"
        ));
    }
    if reference > groups {
        let shown = if reference == usize::MAX {
            "a huge number".to_string()
        } else {
            format!("\\{reference}")
        };
        return Err(format!(
            "template `{tpl}` refers to group {shown}, but the regex has {groups} capture group{}",
            if groups == 1 { "" } else { "s" }
        ));
    }
    let (case, dots) = rcase.split();
    t.ops.push(Op::Group {
        index: reference as u32,
        case,
        dots,
    });
    Ok(())
}

fn push_literal(t: &mut Template, c: u8) {
    let at = t.literals.len() as u32;
    t.literals.push(c);
    if let Some(Op::Literal { end, .. }) = t.ops.last_mut() {
        if *end == at {
            *end = at + 1;
            return;
        }
    }
    t.ops.push(Op::Literal {
        start: at,
        end: at + 1,
    });
}

/// One `rewrite REGEX into TEMPLATE` rule, compiled.
///
/// `Send` but not `Sync` (see [`SlotRegex`]): `apply` allocates nothing. Each shard
/// owns its copy.
#[derive(Clone)]
pub struct Rewrite {
    regex: SlotRegex,
    template: Template,
    /// Whether the template inserts groups; if not, a plain `find` is enough.
    uses_groups: bool,
    source: (String, String),
}

impl Rewrite {
    /// Compiles `rewrite regex into template`. The error names what is wrong: the
    /// regex's own error, or the template's bad group reference.
    pub fn compile(regex: &str, into: &str) -> Result<Rewrite, String> {
        let re = RegexBuilder::new(regex)
            .unicode(false)
            .build()
            .map_err(|e| format!("rewrite regex `{regex}`: {e}"))?;
        let groups = re.captures_len() - 1;
        let template = compile_template(into, groups)?;
        let uses_groups = template.uses_groups();
        Ok(Rewrite {
            regex: SlotRegex::new(re),
            template,
            uses_groups,
            source: (regex.to_string(), into.to_string()),
        })
    }

    /// The regex as written in the config.
    pub fn regex(&self) -> &str {
        &self.source.0
    }

    /// The template as written in the config.
    pub fn template(&self) -> &str {
        &self.source.1
    }

    /// Rewrites `name`: returns true when the regex matched, and then `out` holds the
    /// new name (its old contents replaced). On false `out` is left as it was.
    /// Allocates nothing once `out` has the capacity.
    pub fn apply(&self, name: &[u8], out: &mut Vec<u8>) -> bool {
        if !self.uses_groups {
            let Some(m) = self.regex.regex().find(name) else {
                return false;
            };
            out.clear();
            out.extend_from_slice(&name[..m.start()]);
            out.extend_from_slice(&self.template.literals);
            out.extend_from_slice(&name[m.end()..]);
            return true;
        }
        self.regex
            .captures_read(name, |locs| self.expand(name, locs, out))
            .is_some()
    }

    fn expand(&self, name: &[u8], locs: &CaptureLocations, out: &mut Vec<u8>) {
        let (start, end) = locs.get(0).expect("a match has group 0");
        out.clear();
        out.extend_from_slice(&name[..start]);
        for op in &self.template.ops {
            match *op {
                Op::Literal { start, end } => {
                    out.extend_from_slice(&self.template.literals[start as usize..end as usize])
                }
                Op::Group { index, case, dots } => {
                    // A group that did not take part inserts nothing.
                    let Some((s, e)) = locs.get(index as usize) else {
                        continue;
                    };
                    let part = &name[s..e];
                    if case == Case::Retain && !dots {
                        out.extend_from_slice(part);
                        continue;
                    }
                    out.extend(part.iter().map(|&c| {
                        if dots && c == b'.' {
                            b'_'
                        } else {
                            match case {
                                Case::Retain => c,
                                Case::Lower => c.to_ascii_lowercase(),
                                Case::Upper => c.to_ascii_uppercase(),
                            }
                        }
                    }));
                }
            }
        }
        out.extend_from_slice(&name[end..]);
    }
}

impl fmt::Debug for Rewrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rewrite")
            .field("regex", &self.source.0)
            .field("into", &self.source.1)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies `rules` in config order, each to the previous one's output, as c-relay
    /// does; true when any matched, and the final name is then in `out`. (In production
    /// the router chains rewrites route by route: `route::Rewritten`.)
    fn apply_all(rules: &[Rewrite], name: &[u8], out: &mut Vec<u8>, scratch: &mut Vec<u8>) -> bool {
        let mut any = false;
        for rule in rules {
            let matched = if any {
                rule.apply(out, scratch)
            } else {
                rule.apply(name, scratch)
            };
            if matched {
                std::mem::swap(out, scratch);
                any = true;
            }
        }
        any
    }

    /// Rewrites `name` with one rule; `None` when it does not match.
    fn rw(re: &str, tpl: &str, name: &str) -> Option<String> {
        let r = Rewrite::compile(re, tpl).unwrap_or_else(|e| panic!("{re} {tpl}: {e}"));
        let mut out = Vec::new();
        r.apply(name.as_bytes(), &mut out)
            .then(|| String::from_utf8(out).unwrap())
    }

    /// Each expectation below was printed by carbon-c-relay 3.7.3 `-t` (except the
    /// rows marked as extensions).
    #[test]
    fn crelay_semantics() {
        let re2 = r"^([A-Za-z]+)\.(.*)$";
        let re3 = r"^([A-Za-z]+)\.([A-Za-z]+)\.(.*)$";
        let cases: &[(&str, &str, &str, Option<&str>)] = &[
            (
                r"^foo\.([a-z]+)\.(.*)$",
                r"bar.\1.\2",
                "foo.abc.def",
                Some("bar.abc.def"),
            ),
            ("b(a)r", r"X\1Y", "zzbarzz", Some("zzXaYzz")),
            ("b(a)r", r"X\1Y", "barbar", Some("XaYbar")),
            ("b(a)r", r"X\1Y", "abarbar", Some("aXaYbar")),
            ("b(a)r", r"X\1Y", "nomatch", None),
            ("(a)|(b)", r"[\1][\2]", "xbx", Some("x[][b]x")),
            ("(a)|(b)", r"[\1][\2]", "xax", Some("x[a][]x")),
            (re2, r"a\\b", "Foo.Bar.baz", Some("ab")),
            (
                re2,
                r"\_1.\^2.\.2.\_.2.\^.2",
                "Foo.Bar.baz",
                Some("foo.BAR.BAZ.Bar_baz.bar_baz.BAR_BAZ"),
            ),
            (
                re2,
                r"-\1\2-\_\1-\^_1-\_^1-\1_2",
                "Foo.Bar.baz",
                Some("-FooBar.baz-foo-_1-^1-Foo_2"),
            ),
            (
                re2,
                r"\\1-\z-\_z-\._1-trail\",
                "Foo.Bar.baz",
                Some("Foo-z-z-_1-trail"),
            ),
            (re2, r"\1\a\_2\\b", "Foo.Bar.baz", Some("Fooabar.bazb")),
            (
                re3,
                r"\1\_2|\_1\2|\_..2|\^\_1|\..3|\^.3|\_3\|\1\\2|\1\",
                "Foo.Bar.b.Az",
                Some("Foo_2|foobar|Bar|_1|b_Az|B_AZ|b.az|FooBar|Foo"),
            ),
            ("foo", "X", "afoobfoo", Some("aXbfoo")),
            ("foo$", "X", "afoobfoo", Some("afoobX")),
            (
                "^(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)(k)(l)",
                r"\12-\11-\10-\1",
                "abcdefghijklm",
                Some("l-k-j-am"),
            ),
            // Extensions: `\g{N}`, and a groupless real regex.
            (re2, r"\g{1}0\_g{2}", "Foo.Bar.baz", Some("Foo0bar.baz")),
            ("a.c", "X", "zabcz", Some("zXz")),
            ("[0-9]+", "N", "ab12cd", Some("abNcd")),
        ];
        for &(re, tpl, name, want) in cases {
            assert_eq!(
                rw(re, tpl, name).as_deref(),
                want,
                "rewrite {re} into {tpl} on {name}"
            );
        }
    }

    #[test]
    fn refuses_bad_references() {
        let bad: &[(&str, &str, &str)] = &[
            (
                "(a)",
                r"\2",
                "refers to group \\2, but the regex has 1 capture group",
            ),
            (
                "^foo",
                r"X\1Y",
                "refers to group \\1, but the regex has 0 capture groups",
            ),
            ("(a)", r"\0", "\\0"),
            ("(a)", r"\99999999999999999999999", "a huge number"),
            ("(a)", r"\g{2}", "refers to group \\2"),
            ("(a)", r"\g{x}", "is not a group number"),
            ("(a)", r"\g{1", "without a closing"),
            ("(a", "x", "rewrite regex `(a`"),
            (r"(a)\1", "x", "rewrite regex"),
        ];
        for &(re, tpl, want) in bad {
            let err = Rewrite::compile(re, tpl).expect_err(re);
            assert!(err.contains(want), "{re} {tpl}: {err}");
        }
    }

    #[test]
    fn leftmost_first_alternation_is_documented() {
        // POSIX (c-relay) would take the longest alternative, `ab`.
        assert_eq!(rw("(a|ab)", r"<\1>", "abc").as_deref(), Some("<a>bc"));
        assert_eq!(rw("(ab|a)", r"<\1>", "abc").as_deref(), Some("<ab>c"));
    }

    #[test]
    fn bytes_are_bytes() {
        // Unicode off: `.` is one byte, case folding is ASCII only, as in the C locale.
        let r = Rewrite::compile("^(.)(.*)$", r"\^1-\_2").unwrap();
        let mut out = Vec::new();
        assert!(r.apply(b"\xc3\xa9A\xff", &mut out));
        assert_eq!(out, b"\xc3-\xa9a\xff");
    }

    #[test]
    fn chain_in_config_order_and_no_reallocation() {
        let rules = [
            Rewrite::compile(r"^servers\.([^.]+)\.", r"hosts.\_1.").unwrap(),
            Rewrite::compile(r"\.cpu\.", ".processor.").unwrap(),
            Rewrite::compile("^nomatch", "x").unwrap(),
        ];
        let mut out = Vec::with_capacity(256);
        let mut scratch = Vec::with_capacity(256);
        assert!(apply_all(
            &rules,
            b"servers.WEB01.cpu.user",
            &mut out,
            &mut scratch
        ));
        assert_eq!(out, b"hosts.web01.processor.user");
        let ptrs = (out.as_ptr(), scratch.as_ptr());
        for _ in 0..100 {
            assert!(apply_all(
                &rules,
                b"servers.WEB02.cpu.sys",
                &mut out,
                &mut scratch
            ));
        }
        let mut now = [out.as_ptr(), scratch.as_ptr()];
        now.sort();
        let mut was = [ptrs.0, ptrs.1];
        was.sort();
        assert_eq!(now, was, "the two buffers are reused, never reallocated");
        assert!(!apply_all(&rules, b"other.metric", &mut out, &mut scratch));
    }

    #[test]
    fn clone_is_independent() {
        let a = Rewrite::compile("(x)", r"<\1>").unwrap();
        let b = a.clone();
        let mut out = Vec::new();
        assert!(b.apply(b"axb", &mut out));
        assert_eq!(out, b"a<x>b");
        assert!(a.apply(b"x", &mut out));
        assert_eq!(out, b"<x>");
        assert_eq!((a.regex(), a.template()), ("(x)", r"<\1>"));
    }
}
