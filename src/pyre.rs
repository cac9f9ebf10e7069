//! Python 3.11's `re` syntax (carbon's storage-schemas, storage-aggregation and
//! aggregation-rules patterns are compiled by it) rewritten for the `regex` crate, so
//! that a pattern both accept matches the same names, and a pattern Python refuses, or
//! one whose meaning the `regex` crate cannot give, is refused with a clear message
//! instead of silently matching something else.
//!
//! Where the two syntaxes differ and how each case is taken:
//! - character classes are parsed as Python parses them and written out item by item:
//!   `[` inside a class is a literal (`[0-9[^.]*]`, which carbon's `*` rewrite makes of
//!   `[0-9*]`, is the class `0-9 [ ^ .` repeated, then a literal `]`), so are `&&`,
//!   `--` and `~~` (set operations in the `regex` crate), and `[:digit:]` is no POSIX
//!   class; a `]` first in a class is a literal, `\b` in a class is a backspace, `\1` an
//!   octal escape;
//! - `{` that does not make a repetition (`{a,b}`, `x{`, `{}`) is a literal, and `{,n}`
//!   means `{0,n}`;
//! - escapes: `\Z` is the `regex` crate's `\z`; `\a`, `\v`, octal (`\0`, `\101`),
//!   `\xhh`, `\uXXXX` and `\UXXXXXXXX` become `\x{..}`; an ASCII letter Python does not
//!   know (`\z`, `\p`, `\e`, `\k`) is refused, as Python refuses it; any other escaped
//!   character is that character;
//! - `(?#...)` comments are dropped; global flags (`(?aimsux)`) must open the pattern,
//!   as in Python 3.11; `(?a)` makes `\w`, `\d`, `\s` and `\b` ASCII (classes
//!   written out, `(?-u:\b)`), `(?u)` is the default; `(?x)`
//!   drops whitespace outside classes and makes the rest of the pattern after an
//!   unescaped `#` outside a class a comment; scoped flags `(?i:...)` and `(?-i:...)`
//!   carry `i`, `m` and `s`;
//! - refused, since the `regex` crate cannot match them: backreferences (`\1`,
//!   `(?P=name)`), look-around, atomic groups `(?>...)`, possessive quantifiers (`a*+`,
//!   `a{2}+`), conditionals, `\N{...}`, and `(?L)`.
//!
//! - `\w` and `\s` are written out as Python's (`\w` is exactly the letters, numbers and
//!   `_`; the `regex` crate's also takes combining marks and joiners but not `²`, and
//!   its `\s` lacks U+001C-U+001F); `\d` is the same in both.
//!
//! Left as they are: `\b` and `\B` keep the `regex` crate's idea of a word character
//! (it cannot be given another without look-around), so a name with a combining mark
//! or a `²` next to the boundary can differ; with `(?a)`, `(?i)` still folds case
//! beyond ASCII (`k` also matches the Kelvin sign); `$` in Python also matches before a
//! final newline, which no metric name has.

/// The `regex` crate's spelling of Python pattern `p`, or why it cannot be one.
pub fn translate(p: &str) -> Result<String, String> {
    let chars: Vec<char> = p.chars().collect();
    let mut t = Translator {
        p,
        c: &chars,
        i: 0,
        out: String::with_capacity(p.len() + 8),
        verbose: false,
        ascii: false,
    };
    t.run()?;
    Ok(t.out)
}

struct Translator<'a> {
    p: &'a str,
    c: &'a [char],
    i: usize,
    out: String,
    /// `(?x)` at the start: `#` outside a class starts a comment.
    verbose: bool,
    /// `(?a)` at the start: `\w`, `\d`, `\s` and `\b` are ASCII.
    ascii: bool,
}

/// Python 3.11's `\s` (`str.isspace()`): the `regex` crate's `\s` (White_Space) lacks
/// U+001C-U+001F.
const PY_SPACE: &str =
    r"\t-\r\x1C-\x20\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}";
/// Python 3.11's `\w` (`str.isalnum()` or `_`): exactly the letters and numbers (the
/// `regex` crate's `\w` also takes combining marks and joiners, and no `No` numbers).
const PY_WORD: &str = r"\p{L}\p{N}_";

/// One item of a class: a character, or a class escape written as is (`\d`).
enum ClassItem {
    Char(char),
    Escape(char),
}

impl Translator<'_> {
    fn err(&self, what: &str) -> String {
        format!("{what} in {:?}", self.p)
    }

    fn peek(&self) -> Option<char> {
        self.c.get(self.i).copied()
    }

    fn peek_at(&self, k: usize) -> Option<char> {
        self.c.get(self.i + k).copied()
    }

    fn run(&mut self) -> Result<(), String> {
        // Global flags open the pattern (Python 3.11 refuses them anywhere else).
        while self.c[self.i..].starts_with(&['(', '?']) {
            let Some(flags) = self.global_flags()? else {
                break;
            };
            self.out.push_str(&flags);
        }
        while let Some(ch) = self.peek() {
            self.i += 1;
            match ch {
                '\\' => self.escape()?,
                '[' => self.class()?,
                ']' => self.out.push_str("\\]"),
                '}' => self.out.push_str("\\}"),
                '{' => {
                    if let Some(rep) = self.repetition() {
                        self.out.push_str(&rep);
                        self.after_quantifier()?;
                    } else {
                        self.out.push_str("\\{");
                    }
                }
                '*' | '+' | '?' => {
                    self.out.push(ch);
                    self.after_quantifier()?;
                }
                '(' => self.group()?,
                '#' if self.verbose => return Ok(()),
                ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c' if self.verbose => {}
                c => self.out.push(c),
            }
        }
        Ok(())
    }

    /// After a quantifier: `?` makes it lazy; `+` (possessive) cannot be matched here.
    fn after_quantifier(&mut self) -> Result<(), String> {
        match self.peek() {
            Some('?') => {
                self.i += 1;
                self.out.push('?');
                if self.peek() == Some('+') {
                    return Err(self.err("a quantifier after a lazy quantifier"));
                }
                Ok(())
            }
            Some('+') => Err(self.err(
                "a possessive quantifier (`*+`, `++`, `?+`, `{m,n}+`): Python 3.11's; \
                 the regex crate has none",
            )),
            _ => Ok(()),
        }
    }

    /// Python's `{m}`, `{m,}`, `{,n}`, `{m,n}` (the `{` taken); `None` when the text
    /// is not one (then `{` is a literal and nothing is consumed).
    fn repetition(&mut self) -> Option<String> {
        let start = self.i;
        let digits = |t: &mut Self| {
            let s = t.i;
            while t.peek().is_some_and(|c| c.is_ascii_digit()) {
                t.i += 1;
            }
            t.c[s..t.i].iter().collect::<String>()
        };
        if self.peek() == Some('}') {
            return None;
        }
        let lo = digits(self);
        let hi = if self.peek() == Some(',') {
            self.i += 1;
            Some(digits(self))
        } else {
            None
        };
        if self.peek() != Some('}') {
            self.i = start;
            return None;
        }
        self.i += 1;
        let lo = if lo.is_empty() { "0".to_string() } else { lo };
        Some(match hi {
            None => format!("{{{lo}}}"),
            Some(h) if h.is_empty() => format!("{{{lo},}}"),
            Some(h) => format!("{{{lo},{h}}}"),
        })
    }

    /// `count` hex digits after an escape letter, as a char.
    fn hex(&mut self, count: usize, what: &str) -> Result<char, String> {
        let s: String = self.c[self.i..].iter().take(count).collect();
        if s.chars().count() != count || !s.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(self.err(&format!("{what} needs {count} hex digits")));
        }
        self.i += count;
        let v = u32::from_str_radix(&s, 16).expect("hex digits");
        char::from_u32(v).ok_or_else(|| self.err(&format!("{what}{s} is not a character")))
    }

    /// Up to `more` further octal digits after `first`, as a char (at most 0o377).
    fn octal(&mut self, first: char, more: usize) -> Result<char, String> {
        let mut v = first.to_digit(8).expect("an octal digit");
        for _ in 0..more {
            match self.peek().and_then(|c| c.to_digit(8)) {
                Some(d) => {
                    v = v * 8 + d;
                    self.i += 1;
                }
                None => break,
            }
        }
        if v > 0o377 {
            return Err(self.err("an octal escape above \\377"));
        }
        Ok(char::from_u32(v).expect("below 256"))
    }

    /// An escape's character where Python and the class both mean one character.
    fn char_escape(&mut self, e: char) -> Result<Option<char>, String> {
        Ok(Some(match e {
            'a' => '\x07',
            'f' => '\x0c',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'v' => '\x0b',
            'x' => self.hex(2, "\\x")?,
            'u' => self.hex(4, "\\u")?,
            'U' => self.hex(8, "\\U")?,
            'N' => return Err(self.err("\\N{...} (named characters) is not supported")),
            c if c.is_ascii_alphabetic() => return Ok(None),
            c if c.is_ascii_digit() => return Ok(None),
            c => c,
        }))
    }

    fn push_char(&mut self, c: char) {
        self.out.push_str(&format!("\\x{{{:X}}}", c as u32));
    }

    /// An escape outside a class (the `\` taken).
    fn escape(&mut self) -> Result<(), String> {
        let Some(e) = self.peek() else {
            return Err(self.err("a `\\` at the end"));
        };
        self.i += 1;
        match e {
            'A' => self.out.push_str("\\A"),
            'b' | 'B' if self.ascii => {
                self.out
                    .push_str(if e == 'b' { "(?-u:\\b)" } else { "(?-u:\\B)" })
            }
            'b' | 'B' => {
                self.out.push('\\');
                self.out.push(e);
            }
            'd' | 'D' | 's' | 'S' | 'w' | 'W' => {
                let class = self.class_escape_text(e, false);
                self.out.push_str(&class);
            }
            'Z' => self.out.push_str("\\z"),
            '0' => {
                let c = self.octal('0', 2)?;
                self.push_char(c);
            }
            '1'..='9' => {
                // Three octal digits are an octal escape; anything else a backreference.
                let octal3 = e <= '7'
                    && self.peek().is_some_and(|c| c.is_digit(8))
                    && self.peek_at(1).is_some_and(|c| c.is_digit(8));
                if !octal3 {
                    return Err(self.err("a backreference (\\N): the regex crate has none"));
                }
                let c = self.octal(e, 2)?;
                self.push_char(c);
            }
            e => match self.char_escape(e)? {
                Some(c) => self.push_char(c),
                None => return Err(self.err(&format!("bad escape \\{e} (Python refuses it)"))),
            },
        }
        Ok(())
    }

    /// A class (the `[` taken), parsed as Python's `sre_parse` does.
    fn class(&mut self) -> Result<(), String> {
        let negate = if self.peek() == Some('^') {
            self.i += 1;
            true
        } else {
            false
        };
        let start = self.i;
        let unterminated = |t: &Self| t.err("an unterminated character set");
        let mut items: Vec<(ClassItem, Option<char>)> = Vec::new();
        loop {
            let Some(ch) = self.peek() else {
                return Err(unterminated(self));
            };
            self.i += 1;
            if ch == ']' && self.i - 1 != start {
                break;
            }
            let first = if ch == '\\' {
                self.class_escape()?
            } else {
                ClassItem::Char(ch)
            };
            if self.peek() == Some('-') {
                self.i += 1;
                let Some(that) = self.peek() else {
                    return Err(unterminated(self));
                };
                self.i += 1;
                if that == ']' {
                    items.push((first, None));
                    items.push((ClassItem::Char('-'), None));
                    break;
                }
                let second = if that == '\\' {
                    self.class_escape()?
                } else {
                    ClassItem::Char(that)
                };
                match (first, second) {
                    (ClassItem::Char(lo), ClassItem::Char(hi)) if lo <= hi => {
                        items.push((ClassItem::Char(lo), Some(hi)));
                    }
                    _ => return Err(self.err("a bad character range")),
                }
            } else {
                items.push((first, None));
            }
        }
        self.out.push('[');
        if negate {
            self.out.push('^');
        }
        for (item, hi) in items {
            match item {
                ClassItem::Escape(e) => {
                    let class = self.class_escape_text(e, true);
                    self.out.push_str(&class);
                }
                ClassItem::Char(c) => {
                    self.push_char(c);
                    if let Some(hi) = hi {
                        self.out.push('-');
                        self.push_char(hi);
                    }
                }
            }
        }
        self.out.push(']');
        Ok(())
    }

    /// Python's class escape `\\e` (`d D s S w W`) as the `regex` crate's text, with
    /// `(?a)` applied: items to go inside a class (`in_class`), or a class of its own.
    /// A negated one is always a class of its own (nested, inside a class).
    fn class_escape_text(&self, e: char, in_class: bool) -> String {
        let items = match (e.to_ascii_lowercase(), self.ascii) {
            ('d', false) => return format!("\\{e}"),
            ('d', true) => "0-9",
            ('w', false) => PY_WORD,
            ('w', true) => "0-9A-Za-z_",
            ('s', false) => PY_SPACE,
            (_, _) => "\\t-\\r ",
        };
        if e.is_ascii_uppercase() {
            format!("[^{items}]")
        } else if in_class {
            items.to_string()
        } else {
            format!("[{items}]")
        }
    }

    /// An escape inside a class (the `\` taken).
    fn class_escape(&mut self) -> Result<ClassItem, String> {
        let Some(e) = self.peek() else {
            return Err(self.err("an unterminated character set"));
        };
        self.i += 1;
        Ok(match e {
            'd' | 'D' | 's' | 'S' | 'w' | 'W' => ClassItem::Escape(e),
            'b' => ClassItem::Char('\x08'),
            '0'..='7' => ClassItem::Char(self.octal(e, 2)?),
            '8' | '9' => return Err(self.err(&format!("bad escape \\{e} in a class"))),
            e => match self.char_escape(e)? {
                Some(c) => ClassItem::Char(c),
                None => return Err(self.err(&format!("bad escape \\{e} (Python refuses it)"))),
            },
        })
    }

    /// Flags that open the pattern, `(?aimsux)`, as the regex crate's flags; `None`
    /// (nothing consumed) when the group is not a global flag group.
    fn global_flags(&mut self) -> Result<Option<String>, String> {
        let start = self.i;
        let mut j = self.i + 2;
        let mut flags = String::new();
        while let Some(&c) = self.c.get(j) {
            if c == ')' {
                break;
            }
            if !c.is_ascii_alphabetic() {
                return Ok(None);
            }
            flags.push(c);
            j += 1;
        }
        if self.c.get(j) != Some(&')') || flags.is_empty() {
            return Ok(None);
        }
        self.i = j + 1;
        let mut on = String::new();
        for f in flags.chars() {
            match f {
                'i' | 'm' | 's' => on.push(f),
                'x' => self.verbose = true,
                'u' => {}
                'a' => self.ascii = true,
                'L' => return Err(self.err("the L flag (Python refuses it for text)")),
                _ => {
                    self.i = start;
                    return Err(self.err(&format!("unknown flag {f:?}")));
                }
            }
        }
        if on.is_empty() {
            return Ok(Some(String::new()));
        }
        Ok(Some(format!("(?{on})")))
    }

    /// A group (the `(` taken).
    fn group(&mut self) -> Result<(), String> {
        if self.peek() != Some('?') {
            self.out.push('(');
            return Ok(());
        }
        let rest: String = self.c[self.i + 1..].iter().take(3).collect();
        let refuse =
            |t: &Self, what: &str| Err(t.err(&format!("{what}: the regex crate has none")));
        if rest.starts_with("P<") || rest.starts_with(':') {
            self.out.push_str("(?");
            self.i += 1;
            return Ok(());
        }
        if rest.starts_with("P=") {
            return refuse(self, "a backreference (?P=name)");
        }
        if rest.starts_with('#') {
            // A comment, to the first `)`.
            while let Some(c) = self.peek() {
                self.i += 1;
                if c == ')' {
                    return Ok(());
                }
            }
            return Err(self.err("an unterminated comment"));
        }
        if rest.starts_with('=')
            || rest.starts_with('!')
            || rest.starts_with("<=")
            || rest.starts_with("<!")
        {
            return refuse(self, "look-around");
        }
        if rest.starts_with('>') {
            return refuse(self, "an atomic group (?>...)");
        }
        if rest.starts_with('(') {
            return refuse(self, "a conditional group");
        }
        if rest.starts_with('<') {
            // `(?<name>...)` is not Python 3.11 syntax.
            return Err(self.err("(?<...> (Python names groups (?P<name>...))"));
        }
        // Scoped flags: (?flags:...) or (?flags-flags:...).
        self.i += 1;
        let mut spec = String::new();
        loop {
            match self.peek() {
                Some(':') => {
                    self.i += 1;
                    break;
                }
                Some(c) if c.is_ascii_alphabetic() || c == '-' => {
                    spec.push(c);
                    self.i += 1;
                }
                Some(')') => {
                    return Err(self.err("global flags not at the start of the pattern"));
                }
                _ => return Err(self.err("an unknown extension (?...")),
            }
        }
        let (on, off) = spec.split_once('-').unwrap_or((&spec, ""));
        let mut rust = String::new();
        for (set, minus) in [(on, false), (off, true)] {
            if minus && !set.is_empty() {
                rust.push('-');
            }
            for f in set.chars() {
                match f {
                    'i' | 'm' | 's' => rust.push(f),
                    _ => return Err(self.err(&format!("scoped flag {f:?} is not supported"))),
                }
            }
        }
        self.out.push_str(&format!("(?{rust}:"));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::translate;
    use regex::Regex;

    /// Every pattern here was checked with python 3.11's `re`: the names it matches
    /// (`re.search`), and for refusals, that Python refuses it too where it says so.
    #[test]
    fn classes_read_as_python_reads_them() {
        for (p, yes, no) in [
            // carbon turns `h[0-9*]` into this: the class 0-9 [ ^ . repeated, then `]`.
            (
                "^h[0-9[^.]*]$",
                &["h1]", "h[]", "h]", "h^.]"][..],
                &["h1", "h*]"][..],
            ),
            ("^i\\.[[:digit:]]$", &["i.d]", "i.:]"], &["i.5", "i.x"]),
            ("^[a&&b]$", &["a", "&", "b"], &["ab"]),
            ("^[a-c--b]$", &["a", "-", "b", "0"], &["d"]),
            ("^[a~~b]$", &["~", "a"], &["c"]),
            ("^[]a]$", &["]", "a"], &["b"]),
            ("^[^]a]$", &["b"], &["]", "a"]),
            ("^[a-]$", &["a", "-"], &["b"]),
            ("^[\\d.]+$", &["1.2"], &["a"]),
            ("^[\\]]$", &["]"], &["\\"]),
            ("^[\\101]$", &["A"], &["1"]),
        ] {
            let re = Regex::new(&translate(p).unwrap()).unwrap();
            for y in yes {
                assert!(re.is_match(y), "{p} should match {y}");
            }
            for n in no {
                assert!(!re.is_match(n), "{p} should not match {n}");
            }
        }
    }

    #[test]
    fn braces_escapes_groups_and_flags() {
        for (p, yes, no) in [
            ("^a{,2}$", &["", "a", "aa"][..], &["aaa"][..]),
            ("^a{2}$", &["aa"], &["a"]),
            ("^a{2,}?$", &["aaa"], &["a"]),
            ("^x{a,b}$", &["x{a,b}"], &["xa"]),
            ("^x{$", &["x{"], &["x"]),
            ("^x{}$", &["x{}"], &["x"]),
            ("^a}$", &["a}"], &["a"]),
            ("^a\\Z", &["a"], &["ab"]),
            ("^\\101\\x42\\u0043$", &["ABC"], &["abc"]),
            ("^a(?#note)b$", &["ab"], &["a(?#note)b"]),
            ("(?i)^ab$", &["AB"], &["ac"]),
            ("^a(?i:b)c$", &["aBc"], &["aBC"]),
            ("(?x)^ab$#comment", &["ab"], &["a"]),
            ("(?x)^ab#$", &["abc"], &["a"]),
            ("(?x)^a b [ ]$", &["ab "], &["a b "]),
            ("^\\.\\-\\ $", &[".- "], &["x"]),
            ("^a.b$", &["a.b", "axb"], &["ab"]),
        ] {
            let t = translate(p).unwrap();
            let re = Regex::new(&t).unwrap();
            for y in yes {
                assert!(re.is_match(y), "{p} ({t}) should match {y}");
            }
            for n in no {
                assert!(!re.is_match(n), "{p} ({t}) should not match {n}");
            }
        }
    }

    /// `\w`, `\s` and their negations as Python 3.11 (Unicode 14) has them, and `(?a)`
    /// (each checked with python 3.11's `re.search`).
    #[test]
    fn word_and_space_classes_as_python_and_ascii_mode() {
        for (p, yes, no) in [
            (
                "^w\\.\\w+\\.z$",
                &["w.a_1.z", "w.x\u{b2}.z", "w.\u{bd}.z", "w.\u{663}.z"][..],
                &["w.e\u{301}.z", "w.a\u{200d}.z", "w.a-b.z", "w.a\u{203f}b.z"][..],
            ),
            ("^[\\w.]+$", &["a.b", "x\u{b2}"], &["e\u{301}", "a b"]),
            ("^\\W$", &["\u{301}", "-", "\u{200d}"], &["a", "\u{b2}"]),
            ("^[^\\W\\d]+$", &["ab", "\u{e9}"], &["a1", "a-"]),
            (
                "^a\\sb$",
                &["a\x1cb", "a\u{3000}b", "a\tb", "a\u{85}b"],
                &["a\u{200b}b", "ab"],
            ),
            ("^a\\Sb$", &["axb", "a\u{200b}b"], &["a\x1fb", "a b"]),
            ("^[\\s]$", &["\x1d", " "], &["x"]),
            ("(?a)^\\w+$", &["ab_9"], &["\u{e9}", "x\u{b2}"]),
            ("(?a)^\\W$", &["\u{e9}", "-"], &["a"]),
            ("(?a)^\\D+$", &["ab", "\u{663}"], &["1"]),
            ("(?a)^\\d$", &["7"], &["\u{663}"]),
            ("(?a)^\\S+$", &["\u{e9}\u{3000}"], &["a b"]),
            ("(?a)^\\s$", &[" ", "\x0b"], &["\u{3000}", "\x1c"]),
            ("(?a)^[^a]$", &["\u{e9}", "b"], &["a"]),
            ("(?a)^.$", &["\u{e9}"], &["ab"]),
            ("(?a)^[\u{e9}]$", &["\u{e9}"], &["e"]),
            ("(?a)\\bq$", &["\u{e9}q", "a.q"], &["aq"]),
        ] {
            let t = translate(p).unwrap();
            let re = Regex::new(&t).unwrap_or_else(|e| panic!("{p} ({t}): {e}"));
            for y in yes {
                assert!(re.is_match(y), "{p} ({t}) should match {y:?}");
            }
            for n in no {
                assert!(!re.is_match(n), "{p} ({t}) should not match {n:?}");
            }
        }
    }

    #[test]
    fn what_python_refuses_or_the_regex_crate_cannot_match() {
        for (p, why) in [
            ("a\\z", "bad escape"),
            ("\\p{L}", "bad escape"),
            ("a\\", "at the end"),
            ("(a)\\1", "backreference"),
            ("(?P<x>a)(?P=x)", "backreference"),
            ("a(?=b)", "look-around"),
            ("(?<=a)b", "look-around"),
            ("(?>a)", "atomic"),
            ("a*+a", "possessive"),
            ("a{2}+", "possessive"),
            ("a(?i)b", "not at the start"),
            ("(?<n>a)", "(?P<name>"),
            ("[a", "unterminated"),
            ("[z-a]", "bad character range"),
            ("[\\d-z]", "bad character range"),
            ("(?U)a", "unknown flag"),
            ("\\N{DIGIT ONE}", "named characters"),
        ] {
            let e = translate(p).unwrap_err();
            assert!(e.contains(why), "{p}: {e}");
        }
    }
}
