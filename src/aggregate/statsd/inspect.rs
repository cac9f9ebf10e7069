//! Node 20's `util.inspect`, for exactly the values Etsy statsd's management console
//! prints (`counters`, `timers`, `gauges`): one object whose keys are metric names and
//! whose values are numbers or arrays of numbers, with node's default options (depth 2,
//! `breakLength` 80, `compact` 3, `maxArrayLength` 100, no colors). Operators' scripts
//! parse these replies, so the output is byte-identical to node's, layout included.
//!
//! The rules, as node 20's `lib/internal/util/inspect.js` applies them to these shapes
//! (read from the source embedded in node v20.20.2; names below are node's):
//! - Keys (`formatProperty`): `__proto__` as `['__proto__']`; keys matching
//!   `/^[a-zA-Z_][a-zA-Z_0-9]*$/` bare; others quoted by `strEscape`: single quotes, or
//!   double quotes when the key holds `'` and no `"`, or backticks when it holds both and
//!   no backtick or `${`, else single quotes with `\'`; control characters, U+007F to
//!   U+009F and the backslash escaped (`\b \t \n \f \r`, else `\xHH` in capitals).
//! - Numbers (`formatNumber`): `String(n)`, except -0 printed as `-0`.
//! - Arrays (`formatArray`): the first 100 values, then `... N more item(s)`; `[]` when
//!   empty. With more than 6 entries `groupArrayElements` may lay them out in columns
//!   (numbers right-aligned), which always means one row per line.
//! - `reduceToSingleString`: `{ a, b }` on one line when the entries' lengths (UTF-16
//!   units, the line's own newlines counted) plus `output.length * 2 + indentation +
//!   brace + 10` stay within 80 and none holds a newline; otherwise one entry per line,
//!   indented by two more spaces than the value. Its `compact` 3 depth rule never refuses
//!   a single line here: these values are two levels deep at most.
//! - The output budget (`ctx.budget`): once the arrays' text passes 2^27 UTF-16 units,
//!   node stops descending and prints every later non-empty array as `[Array]`.
//!
//! Keys come in the order the caller gives: JavaScript's `for..in` order (array-index
//! keys first, ascending, then insertion order), which [`super::table`] keeps. Keys are
//! distinct, as an object's are. Names that are not UTF-8 are read as node reads such a
//! datagram (each bad sequence one U+FFFD).

use std::fmt::Write as _;

use crate::protocol::jsnum::write_js_number;

/// One value of the inspected object.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    /// A counter's or gauge's number (or a set's member count).
    Number(f64),
    /// A timer's raw values.
    Numbers(&'a [f64]),
}

/// `breakLength`.
const BREAK_LENGTH: usize = 80;
/// `maxArrayLength`.
const ARRAY_SHOWN_MAX: usize = 100;
/// `compact`.
const COMPACT: usize = 3;
/// `ctx.indentationLvl` while an array that is a property value is formatted.
const ARRAY_INDENT: usize = 2;
/// `groupArrayElements`' `separatorSpace`: a comma and a space.
const SEPARATOR: usize = 2;
/// Past this many UTF-16 units of array text node prints further arrays as `[Array]`.
const BUDGET_MAX: usize = 1 << 27;
/// Above this many entries an object can never fit one line (`3n + 11 > 80`), so their
/// lengths are not needed.
const OBJECT_SINGLE_LINE_ENTRIES_MAX: usize = (BREAK_LENGTH - 11) / 3;

// The object is depth 1 and its arrays depth 2: `currentDepth - recurseTimes` is at most
// 1, below `compact`, so the single-line check always applies.
const _: () = assert!(COMPACT > 1);

/// Appends `util.inspect(object)` for an object with these entries, in this order.
pub fn write_object<'a, I>(out: &mut String, entries: I)
where
    I: IntoIterator<Item = (&'a [u8], Value<'a>)>,
{
    let mut arrays = ArrayWriter::default();
    let object_start = out.len();
    out.push('{');
    let mut n = 0usize;
    // Where each of the first entries lies in `out`, and their total length.
    let mut spans = Vec::new();
    let mut units = 0usize;
    let mut newline = false;
    for (key, value) in entries {
        out.push_str(if n == 0 { "\n  " } else { ",\n  " });
        let start = out.len();
        write_key(out, &String::from_utf8_lossy(key));
        out.push_str(": ");
        match value {
            Value::Number(v) => write_number(out, v),
            Value::Numbers(values) => arrays.write(out, values),
        }
        if n < OBJECT_SINGLE_LINE_ENTRIES_MAX {
            let text = &out[start..];
            units += utf16_len(text);
            newline |= text.contains('\n');
            spans.push(start..out.len());
        }
        n += 1;
    }
    if n == 0 {
        out.push('}');
        return;
    }
    if !newline && fits_one_line(n, 0, units) {
        let body: Vec<String> = spans.iter().map(|s| out[s.clone()].to_owned()).collect();
        out.truncate(object_start);
        out.push_str("{ ");
        out.push_str(&body.join(", "));
        out.push_str(" }");
    } else {
        out.push_str("\n}");
    }
}

/// `isBelowBreakLength` with `reduceToSingleString`'s `start`, for `entries` entries of
/// `units` UTF-16 units in all, opened by a one-character brace at `indentation`.
fn fits_one_line(entries: usize, indentation: usize, units: usize) -> bool {
    let start = entries + indentation + 1 + 10;
    let total = entries + start;
    total + entries <= BREAK_LENGTH && total + units <= BREAK_LENGTH
}

/// Formats arrays, keeping node's output budget across them.
#[derive(Default)]
struct ArrayWriter {
    /// The shown values, printed one after another.
    cells: String,
    /// Where each printed value ends in `cells`.
    ends: Vec<usize>,
    /// `ctx.budget[2]`: UTF-16 units of array text so far.
    budget: usize,
}

impl ArrayWriter {
    fn write(&mut self, out: &mut String, values: &[f64]) {
        if values.is_empty() {
            out.push_str("[]");
            return;
        }
        if self.budget > BUDGET_MAX {
            out.push_str("[Array]");
            return;
        }
        let shown = values.len().min(ARRAY_SHOWN_MAX);
        self.cells.clear();
        self.ends.clear();
        for &v in &values[..shown] {
            write_number(&mut self.cells, v);
            self.ends.push(self.cells.len());
        }
        let remaining = values.len() - shown;
        let more = (remaining > 0).then(|| {
            format!(
                "... {remaining} more item{}",
                if remaining > 1 { "s" } else { "" }
            )
        });
        let entries = shown + usize::from(more.is_some());
        let start = out.len();
        let columns = if entries > 6 {
            self.columns(entries)
        } else {
            None
        };
        if let Some(columns) = columns {
            self.write_grouped(out, columns, more.as_deref());
        } else {
            let units = self.cells.len() + more.as_ref().map_or(0, String::len);
            let sep = if fits_one_line(entries, ARRAY_INDENT, units) {
                ", "
            } else {
                ",\n    "
            };
            out.push_str(if sep == ", " { "[ " } else { "[\n    " });
            for i in 0..shown {
                if i > 0 {
                    out.push_str(sep);
                }
                out.push_str(self.cell(i));
            }
            if let Some(more) = &more {
                out.push_str(sep);
                out.push_str(more);
            }
            out.push_str(if sep == ", " { " ]" } else { "\n  ]" });
        }
        // Everything here is ASCII: bytes are UTF-16 units.
        self.budget += out.len() - start;
    }

    fn cell(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.cells[start..self.ends[i]]
    }

    /// `groupArrayElements`' column count, `None` where it leaves the entries as they are.
    /// `entries` counts the `... more items` entry, which only the average divides by.
    fn columns(&self, entries: usize) -> Option<usize> {
        let shown = self.ends.len();
        let mut total_length = 0usize;
        let mut max_length = 0usize;
        for i in 0..shown {
            let len = self.cell(i).len();
            total_length += len + SEPARATOR;
            max_length = max_length.max(len);
        }
        let actual_max = max_length + SEPARATOR;
        let spread_ok = total_length as f64 / actual_max as f64 > 5.0 || max_length <= 6;
        if !(actual_max * 3 + ARRAY_INDENT < BREAK_LENGTH && spread_ok) {
            return None;
        }
        // Node's float arithmetic, in node's order.
        let approx_char_heights = 2.5;
        let average_bias = (actual_max as f64 - total_length as f64 / entries as f64).sqrt();
        let biased_max = (actual_max as f64 - 3.0 - average_bias).max(1.0);
        let square =
            ((approx_char_heights * biased_max * shown as f64).sqrt() / biased_max).round();
        let columns = (square as usize)
            .min((BREAK_LENGTH - ARRAY_INDENT) / actual_max)
            .min(COMPACT * 4)
            .min(15);
        (columns > 1).then_some(columns)
    }

    /// The grouped rows, one per line; numbers right-aligned in their column.
    fn write_grouped(&self, out: &mut String, columns: usize, more: Option<&str>) {
        let shown = self.ends.len();
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                (c..shown)
                    .step_by(columns)
                    .map(|j| self.cell(j).len())
                    .max()
                    .unwrap_or(0)
                    + SEPARATOR
            })
            .collect();
        out.push_str("[\n    ");
        for row in (0..shown).step_by(columns) {
            if row > 0 {
                out.push_str(",\n    ");
            }
            let end = (row + columns).min(shown);
            for j in row..end {
                let cell = self.cell(j);
                let last = j + 1 == end;
                let width = widths[j - row] - if last { SEPARATOR } else { 0 };
                let len = cell.len() + if last { 0 } else { SEPARATOR };
                out.extend(std::iter::repeat_n(' ', width.saturating_sub(len)));
                out.push_str(cell);
                if !last {
                    out.push_str(", ");
                }
            }
        }
        if let Some(more) = more {
            out.push_str(",\n    ");
            out.push_str(more);
        }
        out.push_str("\n  ]");
    }
}

/// `formatNumber` without numeric separators.
fn write_number(out: &mut String, v: f64) {
    if v == 0.0 && v.is_sign_negative() {
        out.push_str("-0");
        return;
    }
    let mut buf = Vec::with_capacity(24);
    write_js_number(&mut buf, v);
    out.push_str(std::str::from_utf8(&buf).expect("numbers print as ASCII"));
}

/// A property name as `formatProperty` prints an own enumerable string key.
fn write_key(out: &mut String, key: &str) {
    if key == "__proto__" {
        out.push_str("['__proto__']");
    } else if is_identifier(key) {
        out.push_str(key);
    } else {
        write_quoted(out, key);
    }
}

/// `/^[a-zA-Z_][a-zA-Z_0-9]*$/`.
fn is_identifier(key: &str) -> bool {
    let b = key.as_bytes();
    match b.split_first() {
        Some((first, rest)) => {
            (first.is_ascii_alphabetic() || *first == b'_')
                && rest.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        }
        None => false,
    }
}

/// `strEscape`: the quote that needs no escaping where there is one, then the escapes.
/// (Lone surrogates, which node prints as `\uXXXX`, cannot occur in a Rust string.)
fn write_quoted(out: &mut String, s: &str) {
    let quote = if !s.contains('\'') {
        '\''
    } else if !s.contains('"') {
        '"'
    } else if !s.contains('`') && !s.contains("${") {
        '`'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\'' if quote == '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if c < ' ' || ('\u{7f}'..='\u{9f}').contains(&c) => {
                let _ = write!(out, "\\x{:02X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspect(entries: &[(&str, Value<'_>)]) -> String {
        let mut out = String::new();
        write_object(&mut out, entries.iter().map(|(k, v)| (k.as_bytes(), *v)));
        out
    }

    fn check(entries: &[(&str, Value<'_>)], expected: &str) {
        assert_eq!(inspect(entries), expected, "{entries:?}");
    }

    // Expected strings made by node v20.20.2: `node -e 'console.log(require("util")
    // .inspect(OBJECT))'` with the object written out as in each case.
    #[test]
    fn small_objects() {
        use Value::{Number as N, Numbers as A};
        check(&[], "{}");
        check(&[("a", N(1.0))], "{ a: 1 }");
        check(&[("a", A(&[]))], "{ a: [] }");
        check(
            &[
                ("x.y", N(-0.0)),
                ("_b9", N(f64::NAN)),
                ("c", N(f64::INFINITY)),
            ],
            "{ 'x.y': -0, _b9: NaN, c: Infinity }",
        );
        check(
            &[("it's", N(1e21)), ("q\"'", N(1e-7)), ("q\"'`", N(0.5))],
            "{ \"it's\": 1e+21, `q\"'`: 1e-7, 'q\"\\'`': 0.5 }",
        );
        check(
            &[("__proto__", A(&[1.0, 2.0])), ("\n\u{1}\u{7f}\\", N(3.0))],
            "{ ['__proto__']: [ 1, 2 ], '\\n\\x01\\x7F\\\\': 3 }",
        );
    }

    #[test]
    fn line_breaks() {
        use Value::Number as N;
        // `3n + 11` plus the entries' lengths: a 64-character key fits, 65 does not.
        let k = "k".repeat(65);
        check(&[(&k[..64], N(1.0))], &format!("{{ {}: 1 }}", &k[..64]));
        check(&[(&k, N(1.0))], &format!("{{\n  {k}: 1\n}}"));
        // Seven short entries fit; from 24 on the entry count alone breaks the line.
        let names: Vec<String> = (0..24).map(|i| format!("k{i}")).collect();
        let e: Vec<(&str, Value<'_>)> = names.iter().map(|n| (n.as_str(), N(0.0))).collect();
        check(
            &e[..7],
            "{ k0: 0, k1: 0, k2: 0, k3: 0, k4: 0, k5: 0, k6: 0 }",
        );
        assert!(inspect(&e[..23]).starts_with("{\n  k0: 0,\n  k1: 0,\n  k2: 0,\n  k3: "));
        assert!(inspect(&e).starts_with("{\n  k0: 0,\n  k1: 0,\n"));
    }

    #[test]
    fn arrays() {
        use Value::Numbers as A;
        let seven: Vec<f64> = (1..=7).map(f64::from).collect();
        check(
            &[("t", A(&seven))],
            "{\n  t: [\n    1, 2, 3, 4,\n    5, 6, 7\n  ]\n}",
        );
        check(
            &[("t", A(&[1e21, -1.5, 0.001, 123456.0, -0.0, 7.0, 8.0]))],
            "{\n  t: [\n    1e+21,   -1.5,\n    0.001, 123456,\n       -0,      7,\n        8\n  ]\n}",
        );
        let many: Vec<f64> = (0..103).map(f64::from).collect();
        let s = inspect(&[("t", A(&many))]);
        assert!(s.starts_with("{\n  t: [\n     0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11,\n"));
        assert!(
            s.ends_with("    96, 97, 98, 99,\n    ... 3 more items\n  ]\n}"),
            "{s}"
        );
        // One long value among short ones: no columns; one line if it fits, else one
        // value per line.
        let mut spread = vec![1.234_567_890_123_456_7e-300];
        spread.extend((1..=10).map(f64::from));
        check(
            &[("t", A(&spread))],
            "{ t: [ 1.2345678901234568e-300, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 ] }",
        );
        spread.extend((11..=15).map(f64::from));
        let per_line: Vec<String> = spread
            .iter()
            .map(|&v| {
                let mut s = String::new();
                write_number(&mut s, v);
                s
            })
            .collect();
        check(
            &[("t", A(&spread))],
            &format!("{{\n  t: [\n    {}\n  ]\n}}", per_line.join(",\n    ")),
        );
    }

    #[test]
    fn budget_turns_later_arrays_into_placeholders() {
        let mut w = ArrayWriter {
            budget: BUDGET_MAX - 1,
            ..ArrayWriter::default()
        };
        let mut out = String::new();
        w.write(&mut out, &[1.0, 2.0]);
        assert_eq!(out, "[ 1, 2 ]");
        out.clear();
        w.write(&mut out, &[1.0]);
        assert_eq!(out, "[Array]");
        out.clear();
        w.write(&mut out, &[]);
        assert_eq!(out, "[]");
    }
}
