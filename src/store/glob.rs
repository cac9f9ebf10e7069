//! Graphite's metric glob, compiled once per query into one matcher per dot-separated
//! segment, with graphite-web 1.1.10's semantics (`StandardFinder._find_paths` in
//! `webapp/graphite/finders/standard.py`, `expand_braces` in `finders/__init__.py`, and
//! python 3.11's `fnmatch`, which they call):
//!
//! - the query is split on `.` **first**, so braces never span segments: `a.{b.c,d}` is
//!   the three segments `a`, `{b` and `c,d}`, which hold no complete brace group and so
//!   match the directory entries `{b` and `c,d}` literally;
//! - each segment's braces are then expanded textually, innermost-leftmost group first
//!   (graphite-web's `(\{([^\{\}]*)\})` search, repeated): `{a,{b,c}}x` is `ax`, `bx`,
//!   `cx`; an empty group `{}` expands to nothing (`a{}b` is `ab`); `{a,}` is `a` and
//!   the empty string; an unbalanced `{` or `}` stays a literal character;
//! - every alternative is then an fnmatch pattern over one name: `*` any run of
//!   characters, `?` one character, `[...]` a set with ranges, `[!...]` its negation, a
//!   `]` right after `[` or `[!` a member, `-` first or last a member, a reversed range
//!   (`[z-a]`) empty, and a `[` with no closing `]` a literal `[`. Matching is on
//!   characters (code points) and case-sensitive, as fnmatch is on POSIX;
//! - a segment that is exactly `**` (or has `**` as one brace alternative) is
//!   graphite-web's globstar: zero or more directories, or, as the last segment,
//!   everything below at any depth. [`crate::store::whisper::find`] walks it.
//!
//! One difference, on purpose: graphite-web deletes every backslash from the query and
//! then, for a segment that had an escaped wildcard, renames every match after the
//! pattern. Here `\c` is the literal character `c` (never a wildcard, brace, comma or
//! set syntax), which finds the same file where the escaped name is the only match and
//! never invents names. A trailing lone `\` is dropped, as graphite-web drops it.
//!
//! Compiling is bounded ([`GlobLimits`]): the query length, the number of alternatives
//! the braces expand to, and the characters that expansion may produce. An empty
//! segment (`a..b`, a leading or trailing `.`) or empty brace alternative (`{,x}`)
//! matches no entry: it is the directory itself, as graphite-web's finder joins an
//! empty name to the directory (`a..b` finds `a.b`, `.a` finds `a`, and a last one the
//! branch `a.`). A literal holding `/`, NUL or an escaped `.` matches nothing (no
//! directory entry of a metric name holds one).
//!
//! How this is checked: the unit tests below hold python's answers; `tests/it/read_api.rs`
//! runs graphite-web's own `expand_braces` + `fnmatch` (`match_entries`) from its 1.1.10
//! sdist on thousands of random patterns and names and compares every answer.

use std::fmt;

/// Bounds on compiling one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobLimits {
    /// Longest query, in bytes.
    pub pattern_bytes_max: usize,
    /// Most alternatives the braces of the whole query may expand to (summed over its
    /// segments).
    pub alternatives_max: usize,
    /// Most characters those alternatives may hold together, while expanding.
    pub expanded_chars_max: usize,
}

impl Default for GlobLimits {
    /// 64 KiB of query (a Grafana "All" of a thousand hosts fits), 10 000 alternatives,
    /// 1 Mi characters of expansion.
    fn default() -> GlobLimits {
        GlobLimits {
            pattern_bytes_max: 64 << 10,
            alternatives_max: 10_000,
            expanded_chars_max: 1 << 20,
        }
    }
}

/// Why a query does not compile. Each is the client's error (the API answers 4xx).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    /// The query is empty.
    #[error("the query is empty")]
    Empty,
    /// The query is longer than [`GlobLimits::pattern_bytes_max`].
    #[error("the query is {len} bytes, more than the {max} allowed")]
    TooLong {
        /// The query's length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The braces expand to more than [`GlobLimits::alternatives_max`] alternatives.
    #[error("the query's braces expand to more than {max} alternatives (at segment {segment})")]
    TooManyAlternatives {
        /// The 0-based segment being expanded when the bound was reached.
        segment: usize,
        /// The bound.
        max: usize,
    },
    /// The expansion would hold more than [`GlobLimits::expanded_chars_max`] characters.
    #[error("the query's braces expand to more than {max} characters (at segment {segment})")]
    ExpansionTooLarge {
        /// The 0-based segment being expanded when the bound was reached.
        segment: usize,
        /// The bound.
        max: usize,
    },
}

/// A compiled query.
#[derive(Debug, Clone)]
pub struct Glob {
    source: String,
    segments: Vec<Segment>,
}

/// One dot-separated segment: the union of its brace alternatives.
#[derive(Debug, Clone, Default)]
pub struct Segment {
    /// Alternatives without wildcards, sorted and deduplicated (the fast path: a lookup,
    /// not a directory listing).
    literals: Vec<String>,
    /// Alternatives with wildcards.
    patterns: Vec<Pattern>,
    /// `**` is one of the alternatives.
    globstar: bool,
    /// An empty alternative (the segment is empty, as in `a..b` or `a.`, or a brace
    /// gives one, as in `{,x}`): graphite-web's finder joins an empty name to the
    /// directory, which is the directory itself, so this walks on from where it is (a
    /// last one is that directory, as a branch whose path ends in `.`).
    here: bool,
}

/// One fnmatch pattern over a single name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// This character.
    Char(char),
    /// `?`: any one character.
    Any,
    /// `*`: any run, possibly empty (runs of `*` are one token).
    Star,
    /// `[...]`: one character in (or, negated, not in) the inclusive ranges.
    Set {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// A character of the query and whether a backslash made it literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sym {
    c: char,
    escaped: bool,
}

impl Sym {
    fn is(self, c: char) -> bool {
        !self.escaped && self.c == c
    }
}

impl Glob {
    /// Compile `pattern`.
    pub fn compile(pattern: &str, limits: &GlobLimits) -> Result<Glob, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        if pattern.len() > limits.pattern_bytes_max {
            return Err(GlobError::TooLong {
                len: pattern.len(),
                max: limits.pattern_bytes_max,
            });
        }
        let syms = unescape(pattern);
        let mut budget = Budget {
            alternatives_left: limits.alternatives_max,
            alternatives_max: limits.alternatives_max,
            chars_max: limits.expanded_chars_max,
        };
        let segments = syms
            .split(|s| s.is('.'))
            .enumerate()
            .map(|(index, syms)| Segment::compile(syms, index, &mut budget))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Glob {
            source: pattern.to_string(),
            segments,
        })
    }

    /// The query as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The segments, in order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// True when the query has no wildcard, set or brace alternatives: it names at most
    /// one metric (or directory).
    pub fn is_literal(&self) -> bool {
        self.segments
            .iter()
            .all(|s| !s.globstar && s.patterns.is_empty() && s.literals.len() == 1)
    }

    /// The one name a literal query names, its braces of one choice resolved
    /// (`a.{b,b}.c` names `a.b.c`); `None` when it is not literal.
    pub fn literal_name(&self) -> Option<String> {
        if !self.is_literal() {
            return None;
        }
        let parts: Vec<&str> = self
            .segments
            .iter()
            .map(|s| s.literals[0].as_str())
            .collect();
        Some(parts.join("."))
    }

    /// True when the whole metric name `name` matches, segment by segment (for names
    /// that are not files yet, such as the cache's). A globstar is zero or more
    /// segments, or, last, one or more.
    pub fn matches_name(&self, name: &str) -> bool {
        let parts: Vec<&str> = name.split('.').collect();
        match_parts(&self.segments, &parts)
    }
}

fn match_parts(segments: &[Segment], parts: &[&str]) -> bool {
    let Some((segment, rest)) = segments.split_first() else {
        return parts.is_empty();
    };
    // The directory itself, then the rest; a last one names a branch, never a name.
    if segment.here && !rest.is_empty() && match_parts(rest, parts) {
        return true;
    }
    let Some((part, tail)) = parts.split_first() else {
        return false;
    };
    if segment.matches(part) && match_parts(rest, tail) {
        return true;
    }
    if !segment.globstar {
        return false;
    }
    if rest.is_empty() {
        // graphite-web turns a terminal `**` into `**.*`: everything below, depth >= 1.
        return !part.is_empty();
    }
    // Zero or more directories, then the rest.
    (0..parts.len()).any(|skip| match_parts(rest, &parts[skip..]))
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Segment {
    fn compile(syms: &[Sym], index: usize, budget: &mut Budget) -> Result<Segment, GlobError> {
        let mut segment = Segment::default();
        if syms.is_empty() {
            segment.here = true;
            return Ok(segment);
        }
        let mut variants = Vec::new();
        expand_braces(syms, index, budget, &mut variants)?;
        for v in variants {
            if v.len() == 2 && v[0].is('*') && v[1].is('*') {
                segment.globstar = true;
                continue;
            }
            let pattern = Pattern::compile(&v);
            match pattern.literal() {
                Some(s) if s.is_empty() => segment.here = true,
                // One holding '/', NUL or '.' names no entry.
                Some(s) if s.contains(['/', '\0', '.']) => {}
                Some(s) => segment.literals.push(s),
                None => segment.patterns.push(pattern),
            }
        }
        segment.literals.sort_unstable();
        segment.literals.dedup();
        segment.patterns.dedup();
        Ok(segment)
    }

    /// True when the name `name` (one path component) matches an alternative. The
    /// globstar alternative is the walker's; it matches nothing here.
    pub fn matches(&self, name: &str) -> bool {
        self.literals
            .binary_search_by(|l| l.as_str().cmp(name))
            .is_ok()
            || self.patterns.iter().any(|p| p.matches(name))
    }

    /// The alternatives, when none has a wildcard: the walker looks them up instead of
    /// listing the directory.
    pub fn literals(&self) -> Option<&[String]> {
        (self.patterns.is_empty() && !self.globstar).then_some(&self.literals)
    }

    /// True when `**` is one of the alternatives.
    pub fn is_globstar(&self) -> bool {
        self.globstar
    }

    /// True when `**` is the only alternative: nothing to match in the directory itself.
    pub fn is_only_globstar(&self) -> bool {
        self.globstar && self.literals.is_empty() && self.patterns.is_empty()
    }

    /// True when an alternative is empty: the directory itself (see `here`).
    pub fn is_here(&self) -> bool {
        self.here
    }

    /// True when nothing can match in a directory's entries (only impossible literals,
    /// or only the directory itself).
    pub fn is_void(&self) -> bool {
        self.literals.is_empty() && self.patterns.is_empty() && !self.globstar
    }
}

/// Reads the query's characters; `\c` makes `c` literal and a trailing `\` is dropped.
fn unescape(pattern: &str) -> Vec<Sym> {
    let mut syms = Vec::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                syms.push(Sym {
                    c: next,
                    escaped: true,
                });
            }
        } else {
            syms.push(Sym { c, escaped: false });
        }
    }
    syms
}

struct Budget {
    alternatives_left: usize,
    alternatives_max: usize,
    chars_max: usize,
}

/// graphite-web's `expand_braces`, on a worklist so the bounds are checked as it grows.
/// The count of pending plus finished alternatives never falls until the end (a group
/// of `k` alternatives replaces one string by `k >= 1`), so the bound refuses no query
/// whose expansion would fit it before dedup.
fn expand_braces(
    syms: &[Sym],
    segment: usize,
    budget: &mut Budget,
    out: &mut Vec<Vec<Sym>>,
) -> Result<(), GlobError> {
    let too_many = GlobError::TooManyAlternatives {
        segment,
        max: budget.alternatives_max,
    };
    let too_large = GlobError::ExpansionTooLarge {
        segment,
        max: budget.chars_max,
    };
    let mut pending: Vec<Vec<Sym>> = vec![syms.to_vec()];
    let mut chars = syms.len();
    if chars > budget.chars_max {
        return Err(too_large);
    }
    let mut count = 1usize;
    if count > budget.alternatives_left {
        return Err(too_many);
    }
    while let Some(s) = pending.pop() {
        let Some((open, close)) = first_group(&s) else {
            out.push(s);
            continue;
        };
        chars -= s.len();
        count -= 1;
        let (prefix, inner, suffix) = (&s[..open], &s[open + 1..close], &s[close + 1..]);
        for alt in inner.split(|x| x.is(',')) {
            let len = prefix.len() + alt.len() + suffix.len();
            count += 1;
            chars += len;
            if count > budget.alternatives_left {
                return Err(too_many);
            }
            if chars > budget.chars_max {
                return Err(too_large);
            }
            let mut v = Vec::with_capacity(len);
            v.extend_from_slice(prefix);
            v.extend_from_slice(alt);
            v.extend_from_slice(suffix);
            pending.push(v);
        }
    }
    out.sort_unstable_by(|a, b| cmp_syms(a, b));
    out.dedup();
    budget.alternatives_left -= out.len();
    Ok(())
}

fn cmp_syms(a: &[Sym], b: &[Sym]) -> std::cmp::Ordering {
    a.iter()
        .map(|s| (s.c, s.escaped))
        .cmp(b.iter().map(|s| (s.c, s.escaped)))
}

/// The leftmost `{...}` holding no other brace (graphite-web's `\{([^\{\}]*)\}`): the
/// first `{` whose next brace is a `}`.
fn first_group(s: &[Sym]) -> Option<(usize, usize)> {
    let mut open = None;
    for (i, sym) in s.iter().enumerate() {
        if sym.is('{') {
            open = Some(i);
        } else if sym.is('}') {
            if let Some(o) = open {
                return Some((o, i));
            }
        }
    }
    None
}

impl Pattern {
    /// python 3.11's `fnmatch.translate`, read as a matcher instead of a regex.
    fn compile(s: &[Sym]) -> Pattern {
        let mut tokens = Vec::with_capacity(s.len());
        let n = s.len();
        let mut i = 0;
        while i < n {
            let sym = s[i];
            i += 1;
            if sym.escaped {
                tokens.push(Token::Char(sym.c));
                continue;
            }
            match sym.c {
                '*' => {
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                }
                '?' => tokens.push(Token::Any),
                '[' => {
                    let mut j = i;
                    let negated = j < n && s[j].is('!');
                    if negated {
                        j += 1;
                    }
                    let members_start = j;
                    if j < n && s[j].c == ']' {
                        j += 1; // a `]` first is a member
                    }
                    while j < n && !s[j].is(']') {
                        j += 1;
                    }
                    if j >= n {
                        tokens.push(Token::Char('['));
                        continue;
                    }
                    tokens.push(Token::Set {
                        negated,
                        ranges: set_ranges(&s[members_start..j]),
                    });
                    i = j + 1;
                }
                c => tokens.push(Token::Char(c)),
            }
        }
        Pattern { tokens }
    }

    /// The pattern's text when it is all literal characters.
    fn literal(&self) -> Option<String> {
        self.tokens
            .iter()
            .map(|t| match t {
                Token::Char(c) => Some(*c),
                _ => None,
            })
            .collect()
    }

    /// Whole-name match, with backtracking to the last `*` only (enough for `*` and
    /// single-character tokens; linear in practice, `O(len(name) × len(pattern))` at
    /// worst).
    fn matches(&self, name: &str) -> bool {
        let t = &self.tokens;
        let (mut p, mut s) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while s < name.len() {
            let c = name[s..].chars().next().expect("s is on a char boundary");
            if p < t.len() {
                if t[p] == Token::Star {
                    star = Some((p, s));
                    p += 1;
                    continue;
                }
                if t[p].matches_char(c) {
                    p += 1;
                    s += c.len_utf8();
                    continue;
                }
            }
            let Some((sp, ss)) = star else {
                return false;
            };
            // Let the last `*` take one more character and retry after it.
            let skipped = name[ss..].chars().next().expect("ss < s").len_utf8();
            star = Some((sp, ss + skipped));
            p = sp + 1;
            s = ss + skipped;
        }
        t[p..].iter().all(|t| *t == Token::Star)
    }
}

impl Token {
    fn matches_char(&self, c: char) -> bool {
        match self {
            Token::Char(x) => *x == c,
            Token::Any => true,
            Token::Star => unreachable!("stars are handled by the matcher"),
            Token::Set { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

/// The members of a set (without its brackets and `!`), as fnmatch reads them: `a-c` is
/// a range when a character follows the `-`, a range runs left to right (a reversed one
/// is empty), and a `-` first or last is a member.
fn set_ranges(m: &[Sym]) -> Vec<(char, char)> {
    let mut ranges = Vec::with_capacity(m.len());
    let mut k = 0;
    while k < m.len() {
        if k + 2 < m.len() && m[k + 1].is('-') {
            let (lo, hi) = (m[k].c, m[k + 2].c);
            if lo <= hi {
                ranges.push((lo, hi));
            }
            k += 3;
        } else {
            ranges.push((m[k].c, m[k].c));
            k += 1;
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(p: &str) -> Glob {
        Glob::compile(p, &GlobLimits::default()).unwrap()
    }

    /// `(segment pattern, name, expected)`; expected answers are python 3.11's
    /// `bool(match_entries([name], pattern))` with graphite-web 1.1.10's
    /// `graphite.finders.match_entries` (brace expansion, then `fnmatch.filter`).
    fn check(cases: &[(&str, &str, bool)]) {
        for &(pattern, name, want) in cases {
            let g = glob(pattern);
            assert_eq!(g.segments().len(), 1, "{pattern:?} is one segment");
            assert_eq!(
                g.segments()[0].matches(name),
                want,
                "{pattern:?} vs {name:?}"
            );
        }
    }

    #[test]
    fn wildcards_and_sets_as_fnmatch() {
        check(&[
            ("*", "cpu", true),
            ("*", "", true),
            ("c*", "cpu", true),
            ("*u", "cpu", true),
            ("*p*", "cpu", true),
            ("*x*", "cpu", false),
            ("c?u", "cpu", true),
            ("c?", "cpu", false),
            ("???", "cpé", true),
            ("c**u", "cpu", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("[abc]pu", "cpu", true),
            ("[!abc]pu", "cpu", false),
            ("[!abc]pu", "dpu", true),
            ("[a-d]pu", "cpu", true),
            ("[d-a]pu", "cpu", false),
            ("[!d-a]pu", "cpu", true),
            ("[]]x", "]x", true),
            ("[!]]x", "]x", false),
            ("[!]]x", "ax", true),
            ("[-a]", "-", true),
            ("[a-]", "-", true),
            ("[c-a-e]", "-", true),
            ("[c-a-e]", "e", true),
            ("[c-a-e]", "b", false),
            ("[a-c-e]", "d", false),
            ("[a-c-e]", "b", true),
            ("[a-c--e]", "d", true),
            ("[", "[", true),
            ("a[b", "a[b", true),
            ("[!]", "[!]", true),
            ("[]", "[]", true),
            ("[]a", "[]a", true),
            ("[]a]", "a", true),
            ("x[!]", "x[!]", true),
            ("CPU", "cpu", false),
            ("é*", "éa", true),
        ]);
    }

    #[test]
    fn braces_as_graphite_web() {
        check(&[
            ("{a,b}", "a", true),
            ("{a,b}", "b", true),
            ("{a,b}", "c", false),
            ("x{a,b*}", "xbee", true),
            ("{a,{b,c}}x", "cx", true),
            ("{a,{b,c}}x", "ax", true),
            ("a{}b", "ab", true),
            ("{a,}b", "b", true),
            ("{a,}b", "ab", true),
            ("{a", "{a", true),
            ("a}", "a}", true),
            ("{a,b}}", "a}", true),
            ("{{a,b}", "{b", true),
            ("{[ab],c}", "b", true),
            ("[{a,b]}", "[a", true),
            ("[{a,b]}", "b", true),
            ("{a,b}{c,d}", "bc", true),
            ("{a,b}{c,d}", "bb", false),
            ("{,}x", "x", true),
        ]);
    }

    #[test]
    fn a_dot_inside_braces_splits_the_segment() {
        let g = glob("a.{b.c,d}");
        assert_eq!(g.segments().len(), 3);
        assert_eq!(g.segments()[1].literals(), Some(&["{b".to_string()][..]));
        assert_eq!(g.segments()[2].literals(), Some(&["c,d}".to_string()][..]));
        assert!(g.matches_name("a.{b.c,d}"));
        assert!(!g.matches_name("a.b.c"));
        assert!(!g.matches_name("a.d"));
    }

    #[test]
    fn literal_fast_path() {
        let g = glob("servers.{web01,web02}.cpu");
        let lit: Vec<Option<Vec<String>>> = g
            .segments()
            .iter()
            .map(|s| s.literals().map(<[String]>::to_vec))
            .collect();
        assert_eq!(
            lit,
            [
                Some(vec!["servers".to_string()]),
                Some(vec!["web01".to_string(), "web02".to_string()]),
                Some(vec!["cpu".to_string()]),
            ]
        );
        assert!(!g.is_literal());
        assert!(glob("a.b.c").is_literal());
        assert_eq!(glob("a.b.c").literal_name().as_deref(), Some("a.b.c"));
        for one in ["a.{b,b}.c", "a.{b}.c", "a.{b}c.c", "{a}.b.{c,c}"] {
            let g = glob(one);
            let want = if one.contains("}c") {
                "a.bc.c"
            } else {
                "a.b.c"
            };
            assert_eq!(g.literal_name().as_deref(), Some(want), "{one}");
        }
        assert_eq!(glob("a.{b,c}").literal_name(), None);
        assert!(!glob("a.b*").is_literal());
        assert_eq!(glob("a.b*").segments()[1].literals(), None);
    }

    #[test]
    fn escapes_make_characters_literal() {
        let g = glob(r"a\*b");
        assert_eq!(g.segments()[0].literals(), Some(&["a*b".to_string()][..]));
        assert!(!g.segments()[0].matches("axb"));
        check(&[
            (r"\{a,b\}", "{a,b}", true),
            (r"{a\,b,c}", "a,b", true),
            (r"{a\,b,c}", "c", true),
            // An escaped `]` does not close a set.
            (r"[a\]]", "]", true),
            (r"[a\]]", "a]", false),
            (r"x\", "x", true),
        ]);
        // An escaped dot is part of the segment, not a separator, and no entry of a
        // metric name holds one.
        let g = glob(r"a\.b");
        assert_eq!(g.segments().len(), 1);
        assert!(g.segments()[0].is_void());
    }

    #[test]
    fn impossible_segments_match_nothing() {
        // An empty segment is the directory itself (graphite-web's join(dir, '')): it
        // matches no entry, is skipped within a name, and last names only a branch.
        for (p, name) in [("a..b", "a.b"), (".a", "a"), ("a.{,x}.b", "a.b")] {
            let g = glob(p);
            assert!(g.segments().iter().any(Segment::is_here), "{p}");
            assert!(g.matches_name(name), "{p}");
            assert!(!g.matches_name("a.c.b"), "{p}");
        }
        let g = glob("a.");
        assert!(g.segments()[1].is_void() && g.segments()[1].is_here());
        assert!(!g.matches_name("a") && !g.matches_name("a.b"));
        // `/` or NUL never name an entry, so a literal holding one is dropped: it can
        // never turn into a path outside the root.
        let g = glob("x./etc/passwd");
        assert!(g.segments()[1].is_void());
        let g = glob("{/etc,ok}");
        assert_eq!(g.segments()[0].literals(), Some(&["ok".to_string()][..]));
        assert!(glob("{a}").segments()[0].literals().is_some());
        assert!(glob("{}").segments()[0].is_void());
    }

    #[test]
    fn globstar() {
        let g = glob("a.**.z");
        assert!(g.segments()[1].is_globstar());
        assert!(g.segments()[1].is_only_globstar());
        assert!(!glob("{**,x}").segments()[0].is_only_globstar());
        assert!(g.matches_name("a.z"));
        assert!(g.matches_name("a.b.z"));
        assert!(g.matches_name("a.b.c.z"));
        assert!(!g.matches_name("a.b.c"));
        let g = glob("a.**");
        assert!(!g.matches_name("a"));
        assert!(g.matches_name("a.b"));
        assert!(g.matches_name("a.b.c"));
        let g = glob("a.{**,x}.z");
        assert!(g.segments()[1].is_globstar());
        assert!(g.matches_name("a.x.z") && g.matches_name("a.q.r.z"));
        // `***` is not a globstar: fnmatch reads it as `*`.
        let g = glob("a.***.z");
        assert!(!g.segments()[1].is_globstar());
        assert!(!g.matches_name("a.b.c.z"));
        assert!(g.matches_name("a.b.z"));
    }

    #[test]
    fn bounds() {
        let limits = GlobLimits {
            pattern_bytes_max: 64,
            alternatives_max: 8,
            expanded_chars_max: 100,
        };
        assert_eq!(Glob::compile("", &limits).unwrap_err(), GlobError::Empty);
        assert!(matches!(
            Glob::compile(&"a".repeat(65), &limits),
            Err(GlobError::TooLong { len: 65, max: 64 })
        ));
        assert!(Glob::compile("{a,b}{c,d}{e,f}", &limits).is_ok()); // 8
        assert_eq!(
            Glob::compile("{a,b}{c,d}{e,f}{g,h}", &limits).unwrap_err(),
            GlobError::TooManyAlternatives { segment: 0, max: 8 }
        );
        // The bound is over the whole query.
        assert!(matches!(
            Glob::compile("{a,b}{c,d}.{e,f}{g,h}{i,j}", &limits),
            Err(GlobError::TooManyAlternatives { segment: 1, .. })
        ));
        let long = format!("{}{{a,b}}{{c,d}}", "x".repeat(40));
        assert!(matches!(
            Glob::compile(&long, &limits),
            Err(GlobError::ExpansionTooLarge { segment: 0, .. })
        ));
        // Exponential nesting is refused quickly.
        let bomb = "{a,b}".repeat(60);
        let started = std::time::Instant::now();
        assert!(Glob::compile(&bomb, &GlobLimits::default()).is_err());
        assert!(started.elapsed().as_secs() < 5);
        let msg = Glob::compile(&bomb, &GlobLimits::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("10000 alternatives"), "{msg}");
    }

    #[test]
    fn pathological_stars_stay_fast() {
        let g = glob(&format!("{}b", "a*".repeat(30)));
        let name = "a".repeat(200);
        let started = std::time::Instant::now();
        assert!(!g.segments()[0].matches(&name));
        assert!(started.elapsed().as_secs() < 2);
    }
}
