//! `aggregation-rules.conf` as carbon-aggregator 1.1.10 reads it
//! (`lib/carbon/aggregator/rules.py`: `RuleManager.read_rules`, `parse_definition`,
//! `AggregationRule.build_regex`, `build_template`).
//!
//! One rule a line: `output_template (frequency) = method input_pattern`.
//! Semantics kept from carbon:
//! - lines are stripped of Python whitespace; empty lines and lines starting with `#`
//!   are skipped; lines end at `\n`, `\r\n` or `\r` (Python's universal newlines);
//! - the line splits at its first `=`; the left side must be exactly two
//!   whitespace-separated words (template, frequency), the right side exactly two
//!   (method, input pattern); the frequency loses all leading `(` and trailing `)`;
//! - the input pattern becomes the same regex carbon builds: split on `.`; a component
//!   holding `<<x>>` becomes `pre(?P<x>.+?)post` (spans components), one holding `<x>`
//!   becomes `pre(?P<x>[^.]+?)post`, a lone `*` becomes `[^.]+`, and otherwise each `*`
//!   becomes `[^.]*`; components are joined with `\.` and `$` is appended. Everything
//!   else is regex syntax, unescaped, as in carbon (a `+` or `[ab]` in a pattern is an
//!   operator). Only the first capture of a component is one; the rest is literal;
//! - the regex is matched from the start of the name (Python `re.match`), so it is
//!   compiled here as `^(?:` regex `)`;
//! - the template's `<x>` is replaced by capture `x`.
//!
//! Deliberate differences, all reported as errors with their line where carbon would
//! crash, fail every metric, or silently produce odd names: a template field that the
//! input does not capture (carbon raises `KeyError` on every matching metric), a
//! `<<x>>` in the template (same), `%`, a stray `>` or an unclosed `<` in the template
//! (Python `%`-formatting errors or literal `)s`), a frequency that is not a positive
//! ASCII integer (carbon accepts `0` and `-5` and then divides by them; it also takes
//! `1_0` and Unicode digits) or is over 2^32 - 1 seconds, an unknown method, and a
//! capture name that is not a Python identifier. Carbon stops at the first bad line and keeps its old rules; here
//! every bad line is listed.
//!
//! The regex carbon builds is Python 3.11 `re` syntax; [`crate::pyre`] rewrites it for
//! the `regex` crate so that it matches what Python matches (classes as Python parses
//! them, so carbon's `*` rewrite inside `[0-9*]` means what it means to carbon; `{` that
//! is not a repetition is a literal), and refuses, naming the construct, what the
//! `regex` crate cannot match (look-around, backreferences, atomic groups, possessive
//! quantifiers) and what Python itself refuses (`\z`, `\p{L}`, `(?U)`).

use std::fmt;

use regex::bytes::Regex;

use super::method::Method;

/// One problem in an `aggregation-rules.conf`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct RuleError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong, quoting the offending text.
    pub message: String,
}

/// Every problem found in a rules file; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RulesError {
    /// In file order.
    pub errors: Vec<RuleError>,
}

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// One piece of an output template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Bytes copied as they are.
    Literal(Vec<u8>),
    /// The text of this capture group (index into the rule's regex groups).
    Capture(usize),
}

/// One parsed rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// 1-based line it came from.
    pub line: usize,
    /// The output template as written.
    pub output_pattern: String,
    /// The input pattern as written.
    pub input_pattern: String,
    /// Bucket width and emission period, in seconds.
    pub frequency_s: u32,
    /// How a bucket's values become one value.
    pub method: Method,
    /// The regex carbon builds from `input_pattern`, before anchoring.
    pub regex_source: String,
    pub(super) regex: Regex,
    pub(super) template: Vec<Segment>,
}

impl Rule {
    /// Writes the output name for `name` into `out` (cleared first); false when the rule
    /// does not match. `locs` must come from [`Rule::capture_locations`].
    pub fn output_name(
        &self,
        name: &[u8],
        locs: &mut regex::bytes::CaptureLocations,
        out: &mut Vec<u8>,
    ) -> bool {
        if self.regex.captures_read(locs, name).is_none() {
            return false;
        }
        out.clear();
        for seg in &self.template {
            match seg {
                Segment::Literal(b) => out.extend_from_slice(b),
                Segment::Capture(i) => {
                    // A group outside the matching branch of an alternation is
                    // `None` in Python's groupdict, and `%(x)s` writes it as `None`.
                    match locs.get(*i) {
                        Some((s, e)) => out.extend_from_slice(&name[s..e]),
                        None => out.extend_from_slice(b"None"),
                    }
                }
            }
        }
        true
    }

    /// Scratch space for [`Rule::output_name`], made once per rule.
    pub fn capture_locations(&self) -> regex::bytes::CaptureLocations {
        self.regex.capture_locations()
    }
}

/// A parsed `aggregation-rules.conf`, rules in file order.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// In file order: carbon feeds a point to every rule that matches.
    pub rules: Vec<Rule>,
}

impl Rules {
    /// Parses the text of an `aggregation-rules.conf`; collects every error.
    pub fn parse(text: &str) -> Result<Rules, RulesError> {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        for (line, raw) in py_lines(text) {
            let s = py_strip(raw);
            if s.is_empty() || s.starts_with('#') {
                continue;
            }
            match parse_rule(line, s) {
                Ok(r) => rules.push(r),
                Err(message) => errors.push(RuleError { line, message }),
            }
        }
        if errors.is_empty() {
            Ok(Rules { rules })
        } else {
            Err(RulesError { errors })
        }
    }
}

/// Lines as Python's text mode splits them (`\n`, `\r\n`, `\r`), numbered from 1.
fn py_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut rest = text;
    let mut n = 0;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        n += 1;
        let end = rest.find(['\n', '\r']).unwrap_or(rest.len());
        let line = &rest[..end];
        let skip = if rest[end..].starts_with("\r\n") {
            2
        } else if end < rest.len() {
            1
        } else {
            0
        };
        rest = &rest[end + skip..];
        Some((n, line))
    })
}

/// Python's `str.isspace`: Unicode White_Space plus the separators U+001C..U+001F.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn py_strip(s: &str) -> &str {
    s.trim_matches(py_space)
}

fn py_split(s: &str) -> Vec<&str> {
    s.split(py_space).filter(|w| !w.is_empty()).collect()
}

fn parse_rule(line: usize, s: &str) -> Result<Rule, String> {
    let (left, right) = s
        .split_once('=')
        .ok_or_else(|| format!("no '=' in {s:?}"))?;
    let (output_pattern, frequency) = match py_split(left)[..] {
        [o, f] => (o, f),
        _ => {
            return Err(format!(
                "left of '=' must be `output (frequency)`, got {:?}",
                py_strip(left)
            ))
        }
    };
    let (method, input_pattern) = match py_split(right)[..] {
        [m, i] => (m, i),
        _ => {
            return Err(format!(
                "right of '=' must be `method input`, got {:?}",
                py_strip(right)
            ))
        }
    };
    let freq_text = frequency.trim_start_matches('(').trim_end_matches(')');
    let digits = freq_text.strip_prefix('+').unwrap_or(freq_text);
    let all_digits = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    let frequency_s = match digits.parse::<u32>() {
        Ok(f) if f > 0 && all_digits => f,
        Err(_) if all_digits && !digits.trim_start_matches('0').is_empty() => {
            return Err(format!(
                "frequency {frequency:?} is over {} seconds",
                u32::MAX
            ))
        }
        _ => {
            return Err(format!(
                "frequency {frequency:?} is not a positive whole number of seconds"
            ))
        }
    };
    let method = Method::parse(method).ok_or_else(|| {
        format!(
            "unknown aggregation method {method:?} (known: {})",
            Method::NAMES.join(", ")
        )
    })?;
    let (regex_source, fields) = build_regex(input_pattern)?;
    let translated = crate::pyre::translate(&regex_source)
        .map_err(|e| format!("input pattern {input_pattern:?}: {e}"))?;
    let regex = Regex::new(&format!("^(?:{translated})")).map_err(|e| {
        format!(
            "input pattern {input_pattern:?} is not a valid regex: {}",
            one_line(&e.to_string())
        )
    })?;
    let template = build_template(output_pattern, &fields, &regex)?;
    Ok(Rule {
        line,
        output_pattern: output_pattern.to_string(),
        input_pattern: input_pattern.to_string(),
        frequency_s,
        method,
        regex_source,
        regex,
        template,
    })
}

/// A Python identifier (`str.isidentifier`), near enough: a letter or `_`, then
/// letters, digits or `_`, Unicode included (`hé`).
fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f == '_' || f.is_alphabetic())
        && c.all(|c| c == '_' || c.is_alphanumeric())
}

/// The regex crate's multi-line error (the pattern, a pointer, the message) on one
/// line, for a list of errors.
fn one_line(e: &str) -> String {
    e.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '^' || c == ' '))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Python's `s[a:b]` for byte offsets known to be on char boundaries (`<`, `>` are
/// ASCII): an empty string when `b <= a`.
fn slice(s: &str, a: usize, b: usize) -> &str {
    let b = b.min(s.len());
    if b <= a {
        ""
    } else {
        &s[a..b]
    }
}

/// carbon's `build_regex`, returning the regex text and the capture names.
fn build_regex(input: &str) -> Result<(String, Vec<String>), String> {
    let mut parts = Vec::new();
    let mut fields = Vec::new();
    for part in input.split('.') {
        let (capture, regex_part) = match (part.find("<<"), part.find(">>")) {
            (Some(i), Some(j)) => {
                let name = slice(part, i + 2, j);
                let post = slice(part, j + 2, part.len());
                (Some(name), format!("{}(?P<{name}>.+?){post}", &part[..i]))
            }
            _ => match (part.find('<'), part.find('>')) {
                (Some(i), Some(j)) if j > i => {
                    let name = &part[i + 1..j];
                    (
                        Some(name),
                        format!("{}(?P<{name}>[^.]+?){}", &part[..i], &part[j + 1..]),
                    )
                }
                _ if part == "*" => (None, "[^.]+".to_string()),
                _ => (None, part.replace('*', "[^.]*")),
            },
        };
        if let Some(name) = capture {
            if !is_identifier(name) {
                return Err(format!(
                    "capture name {name:?} in input pattern {input:?} is not an identifier"
                ));
            }
            if fields.iter().any(|f| f == name) {
                return Err(format!(
                    "capture {name:?} appears twice in input pattern {input:?}"
                ));
            }
            fields.push(name.to_string());
        }
        parts.push(regex_part);
    }
    Ok((parts.join("\\.") + "$", fields))
}

/// carbon's `build_template` (`<x>` -> `%(x)s`), checked where Python would fail later.
fn build_template(output: &str, fields: &[String], regex: &Regex) -> Result<Vec<Segment>, String> {
    if output.contains('%') {
        return Err(format!(
            "'%' in output {output:?}: carbon %-formats the template"
        ));
    }
    let mut segs = Vec::new();
    let mut rest = output;
    while !rest.is_empty() {
        match (rest.find('<'), rest.find('>')) {
            (None, None) => {
                segs.push(Segment::Literal(rest.as_bytes().to_vec()));
                break;
            }
            (Some(i), Some(j)) if i < j => {
                if i > 0 {
                    segs.push(Segment::Literal(rest.as_bytes()[..i].to_vec()));
                }
                let name = &rest[i + 1..j];
                if name.starts_with('<') {
                    return Err(format!(
                        "output {output:?} uses <<{}>>: write <{}> (carbon fails on every metric)",
                        name.trim_start_matches('<'),
                        name.trim_start_matches('<')
                    ));
                }
                if !fields.iter().any(|f| f == name) {
                    return Err(format!(
                        "output {output:?} uses <{name}>, which the input pattern does not capture"
                    ));
                }
                let idx = regex
                    .capture_names()
                    .position(|n| n == Some(name))
                    .expect("every captured field is a regex group");
                segs.push(Segment::Capture(idx));
                rest = &rest[j + 1..];
            }
            (_, Some(_)) => return Err(format!("'>' without '<' in output {output:?}")),
            (Some(_), None) => return Err(format!("unclosed '<' in output {output:?}")),
        }
    }
    Ok(segs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Rule {
        let mut r = Rules::parse(text).unwrap().rules;
        assert_eq!(r.len(), 1);
        r.pop().unwrap()
    }

    fn out(rule: &Rule, name: &str) -> Option<String> {
        let mut locs = rule.capture_locations();
        let mut buf = Vec::new();
        rule.output_name(name.as_bytes(), &mut locs, &mut buf)
            .then(|| String::from_utf8(buf).unwrap())
    }

    #[test]
    fn regex_is_carbons() {
        // Expected texts printed by carbon 1.1.10's AggregationRule(...).regex.pattern.
        let r = one("out.<app>.all.requests (60) = sum out.<app>.*.requests");
        assert_eq!(r.regex_source, "out\\.(?P<app>[^.]+?)\\.[^.]+\\.requests$");
        let r = one("b.<m> (60) = sum a.<<m>>.x");
        assert_eq!(r.regex_source, "a\\.(?P<m>.+?)\\.x$");
        let r = one("b.<m> (5) = max a.pre<m>post.x*y");
        assert_eq!(r.regex_source, "a\\.pre(?P<m>[^.]+?)post\\.x[^.]*y$");
        assert_eq!(r.frequency_s, 5);
    }

    #[test]
    fn templates() {
        let r = one("out.<app>.all.requests (60) = sum out.<app>.*.requests");
        assert_eq!(
            out(&r, "out.web.h1.requests").as_deref(),
            Some("out.web.all.requests")
        );
        assert_eq!(out(&r, "out.web.h1.requests.x"), None);
        assert_eq!(out(&r, "xout.web.h1.requests"), None);
        let r = one("b.<m>.total ((10)) = count a.<<m>>.x");
        assert_eq!(out(&r, "a.q.w.x").as_deref(), Some("b.q.w.total"));
        assert_eq!(r.frequency_s, 10);
        // Alternation is regex syntax in carbon too: `re.match` accepts any name
        // starting with `a` here.
        let r = one("o (1) = sum a|b.c");
        assert_eq!(out(&r, "azzz").as_deref(), Some("o"));
    }

    #[test]
    fn errors_have_lines() {
        let text = "# comment\n\
                    \n\
                    a (60) = sum b\n\
                    no equals\n\
                    a b (60) = sum b\n\
                    a (0) = sum b\n\
                    a (60) = bogus b\n\
                    a.<x> (60) = sum b.<y>\n\
                    a.<<x>> (60) = sum b.<<x>>\n\
                    a% (60) = sum b\n\
                    a (60) = sum b.<1x>\n\
                    a (60) = sum (b\r\n\
                    ok (x60) = sum b\r\
                    a (60) = sum b c\n";
        let e = Rules::parse(text).unwrap_err();
        let lines: Vec<usize> = e.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14], "{e}");
    }

    #[test]
    fn frequencies_fields_and_regex_errors_say_what_is_wrong() {
        let e = Rules::parse("a (5000000000) = sum b\n").unwrap_err();
        assert!(e.to_string().contains("is over 4294967295 seconds"), "{e}");
        let e = Rules::parse("a (0) = sum b\n").unwrap_err();
        assert!(e.to_string().contains("not a positive whole number"), "{e}");
        // A Unicode capture name is a Python identifier.
        let r = one("o.<h\u{e9}> (60) = sum i.<h\u{e9}>\n");
        assert_eq!(out(&r, "i.x").as_deref(), Some("o.x"));
        // The regex crate's error on one line.
        let e = Rules::parse("a (60) = sum b(\n").unwrap_err();
        assert!(!e.to_string().contains('\n'), "{e}");
        let e = Rules::parse("a (60) = sum b.c(?=x)\n").unwrap_err();
        assert!(e.to_string().contains("look-around"), "{e}");
    }

    #[test]
    fn comments_and_blank_lines() {
        let r = Rules::parse("  # x\n\n\t a (60) = avg b \n").unwrap();
        assert_eq!(r.rules.len(), 1);
        assert_eq!(r.rules[0].line, 3);
        assert_eq!(r.rules[0].method, Method::Avg);
    }
}
