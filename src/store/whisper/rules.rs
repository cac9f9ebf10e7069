//! Choosing the retention and aggregation of a new whisper file from
//! `storage-schemas.conf` and `storage-aggregation.conf`, as carbon 1.1.x does
//! (`lib/carbon/storage.py`: `loadStorageSchemas`, `loadAggregationSchemas`;
//! `lib/carbon/util.py`: `parseRetentionDef`).
//!
//! Semantics kept from carbon:
//! - sections are scanned in file order and the first whose `pattern` matches wins;
//! - `pattern` is searched, not anchored (Python `re.search`);
//! - when nothing matches, carbon appends an implicit default: schemas
//!   `60:10080` (`defaultArchive = Archive(60, 60 * 24 * 7)`, 7 days of minutely
//!   data) and aggregation `(None, None)`, which whisper's `create` turns into
//!   xFilesFactor 0.5 and `average`. Note the shipped example's catch-all
//!   `[default] pattern = .* retentions = 60s:1d,5m:30d,1h:3y` is config, not the
//!   code default.
//! - a matching aggregation section that omits a key gets whisper's default for
//!   that key (0.5 / `average`); later sections are not consulted;
//! - retentions are validated as whisper's `validateArchiveList` does, and are
//!   kept sorted by precision, as `whisper.create` writes them.
//!
//! Deliberate differences: where carbon logs and silently skips a section (missing
//! `pattern` or `retentions`, retentions whisper rejects, an unparsable
//! xFilesFactor) or crashes (bad regex, xFilesFactor outside [0, 1], unknown
//! aggregationMethod, a lone `%`), [`Schemas::parse`] and [`Aggregations::parse`]
//! fail with every problem listed, each naming its line, section and key. Zero
//! precision or zero points are rejected (whisper would accept a lone `0:0`).
//! Unknown keys (go-carbon's `priority`, `compressed`) are ignored, as carbon does.
//!
//! Patterns are Python regexes compiled by the `regex` crate. `\Z` is rewritten to
//! `\z`; otherwise the syntax is taken as is, so: look-around and backreferences
//! (`(?=`, `(?!`, `(?<=`, `\1`, `(?P=n)`) are compile errors here; a `{` that is not
//! a valid repetition is a literal in Python but an error here; `[[:alpha:]]` and
//! the class operators `&&`, `--`, `~~` mean classes here but literal characters in
//! Python; `$` does not also match before a trailing newline (names have none).
//! Digits in retentions are ASCII only (Python's `isdigit` takes any Unicode digit).
//!
//! The INI dialect is Python 3 `configparser` as carbon uses it: `=` or `:` splits
//! key from value at the first occurrence, keys are case-insensitive, full-line
//! comments start with `#` or `;` (no inline comments), indented lines continue the
//! previous value, duplicate sections or keys are errors, `%%` reads as `%`.

use std::fmt;

use super::format;
use regex::Regex;

/// One whisper archive: `seconds_per_point` precision, `points` slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Precision in seconds.
    pub seconds_per_point: u32,
    /// Number of slots.
    pub points: u32,
}

/// Carbon's implicit schema when no section matches: `60:10080`
/// (`defaultArchive = Archive(60, 60 * 24 * 7)` in carbon's storage.py).
pub const DEFAULT_RETENTIONS: &[Retention] = &[Retention {
    seconds_per_point: 60,
    points: 60 * 24 * 7,
}];

/// whisper's xFilesFactor when carbon passes none (`whisper.create`).
pub const DEFAULT_X_FILES_FACTOR: f32 = 0.5;

/// whisper's aggregation method when carbon passes none (`whisper.create`).
pub const DEFAULT_AGGREGATION_METHOD: AggregationMethod = AggregationMethod::Average;

/// Name carbon gives its implicit fallback rule (`DefaultSchema('default', ...)`).
pub const DEFAULT_SECTION: &str = "default";

/// The format engine's aggregation methods; rules name them as the config files do.
pub use super::format::AggregationMethod;

/// One problem in a rules file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: [{section}] {key}: {message}")]
pub struct RuleError {
    /// 1-based line of the offending key or section header.
    pub line: usize,
    /// Section name, or `""` before the first section.
    pub section: String,
    /// Lower-cased key, or `""` for problems with the section itself.
    pub key: String,
    /// What is wrong, quoting the offending value.
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

#[derive(Debug)]
struct SchemaRule {
    section: String,
    regex: Regex,
    retentions: Vec<Retention>,
}

/// Parsed `storage-schemas.conf`.
#[derive(Debug)]
pub struct Schemas {
    rules: Vec<SchemaRule>,
}

impl Schemas {
    /// Parses the text of a `storage-schemas.conf`; collects every error.
    pub fn parse(text: &str) -> Result<Schemas, RulesError> {
        let (sections, mut errors) = parse_ini(text);
        let mut rules = Vec::with_capacity(sections.len());
        for s in &sections {
            let regex = s.pattern(&mut errors);
            let retentions = match s.get("retentions") {
                None => {
                    s.error(&mut errors, s.line, "retentions", "missing");
                    None
                }
                Some(e) => match parse_retentions(&e.value) {
                    Ok(r) => Some(r),
                    Err(m) => {
                        s.error(&mut errors, e.line, "retentions", m);
                        None
                    }
                },
            };
            if let (Some(regex), Some(retentions)) = (regex, retentions) {
                rules.push(SchemaRule {
                    section: s.name.clone(),
                    regex,
                    retentions,
                });
            }
        }
        if errors.is_empty() {
            Ok(Schemas { rules })
        } else {
            Err(RulesError { errors })
        }
    }

    /// The archives for a new file named `name`, sorted by precision: the first
    /// matching section's, else [`DEFAULT_RETENTIONS`].
    pub fn retentions_for(&self, name: &str) -> &[Retention] {
        self.rule_for(name)
            .map_or(DEFAULT_RETENTIONS, |r| &r.retentions)
    }

    /// The section that decides `name`, or [`DEFAULT_SECTION`]; for logs.
    pub fn section_for(&self, name: &str) -> &str {
        self.rule_for(name).map_or(DEFAULT_SECTION, |r| &r.section)
    }

    fn rule_for(&self, name: &str) -> Option<&SchemaRule> {
        self.rules.iter().find(|r| r.regex.is_match(name))
    }
}

#[derive(Debug)]
struct AggregationRule {
    section: String,
    regex: Regex,
    x_files_factor: f32,
    method: AggregationMethod,
}

/// Parsed `storage-aggregation.conf`.
#[derive(Debug)]
pub struct Aggregations {
    rules: Vec<AggregationRule>,
}

impl Aggregations {
    /// Parses the text of a `storage-aggregation.conf`; collects every error.
    pub fn parse(text: &str) -> Result<Aggregations, RulesError> {
        let (sections, mut errors) = parse_ini(text);
        let mut rules = Vec::with_capacity(sections.len());
        for s in &sections {
            let regex = s.pattern(&mut errors);
            let mut ok = true;
            let mut x_files_factor = DEFAULT_X_FILES_FACTOR;
            if let Some(e) = s.get("xfilesfactor") {
                match parse_x_files_factor(&e.value) {
                    Ok(x) => x_files_factor = x,
                    Err(m) => {
                        s.error(&mut errors, e.line, "xfilesfactor", m);
                        ok = false;
                    }
                }
            }
            let mut method = DEFAULT_AGGREGATION_METHOD;
            if let Some(e) = s.get("aggregationmethod") {
                match AggregationMethod::from_name(&e.value) {
                    Some(m) => method = m,
                    None => {
                        let m = format!(
                            "unknown method {:?}; expected one of average, sum, last, max, \
                             min, avg_zero, absmax, absmin",
                            e.value
                        );
                        s.error(&mut errors, e.line, "aggregationmethod", m);
                        ok = false;
                    }
                }
            }
            if let (Some(regex), true) = (regex, ok) {
                rules.push(AggregationRule {
                    section: s.name.clone(),
                    regex,
                    x_files_factor,
                    method,
                });
            }
        }
        if errors.is_empty() {
            Ok(Aggregations { rules })
        } else {
            Err(RulesError { errors })
        }
    }

    /// `(xFilesFactor, method)` for a new file named `name`: the first matching
    /// section's (whisper's defaults for keys it omits), else 0.5 and `average`.
    pub fn for_name(&self, name: &str) -> (f32, AggregationMethod) {
        self.rule_for(name)
            .map_or((DEFAULT_X_FILES_FACTOR, DEFAULT_AGGREGATION_METHOD), |r| {
                (r.x_files_factor, r.method)
            })
    }

    /// The section that decides `name`, or [`DEFAULT_SECTION`]; for logs.
    pub fn section_for(&self, name: &str) -> &str {
        self.rule_for(name).map_or(DEFAULT_SECTION, |r| &r.section)
    }

    fn rule_for(&self, name: &str) -> Option<&AggregationRule> {
        self.rules.iter().find(|r| r.regex.is_match(name))
    }
}

/// Python's `float()` then carbon's `0 <= x <= 1` check; whisper stores an f32.
fn parse_x_files_factor(value: &str) -> Result<f32, String> {
    // Digit groups only between digits (`0._5` is not a number to python).
    let x = crate::protocol::python_float(value.trim().as_bytes())
        .ok_or_else(|| format!("{value:?} is not a number"))?;
    if !(0.0..=1.0).contains(&x) {
        return Err(format!("{value:?} is outside [0, 1]"));
    }
    Ok(x as f32)
}

/// Seconds per unit, carbon's `UnitMultipliers`: a single letter, `y` = 365 days.
fn unit_seconds(unit: &str) -> Option<u64> {
    Some(match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "y" => 365 * 86_400,
        _ => return None,
    })
}

/// `<digits>` or `<digits><lowercase letters>`, as carbon's `^(\d+)([a-z]+)$`.
fn split_number_unit(s: &str) -> Option<(u64, &str)> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = s.split_at(digits);
    if num.is_empty() || !unit.bytes().all(|b| b.is_ascii_lowercase()) {
        return None;
    }
    // More digits than fit are out of range for whisper anyway.
    let n = num.parse().unwrap_or(u64::MAX);
    Some((n, unit))
}

/// One retention definition as carbon and whisper-create.py read it:
/// `PRECISION:DURATION` with units s/m/h/d/w/y, or legacy `SECONDS:POINTS`.
pub fn parse_retention(def: &str) -> Result<Retention, String> {
    let def = def.trim();
    let Some((precision, points)) = def.split_once(':') else {
        return Err(format!("{def:?} is not PRECISION:DURATION"));
    };
    if points.contains(':') {
        return Err(format!("{def:?} is not PRECISION:DURATION"));
    }
    let bad_unit = |u: &str| format!("invalid unit {u:?} in {def:?}; expected one of s m h d w y");
    let seconds_per_point = match split_number_unit(precision) {
        Some((n, "")) => n,
        Some((n, u)) => n.saturating_mul(unit_seconds(u).ok_or_else(|| bad_unit(u))?),
        None => return Err(format!("invalid precision {precision:?} in {def:?}")),
    };
    if seconds_per_point == 0 {
        return Err(format!("zero precision in {def:?}"));
    }
    let points = match split_number_unit(points) {
        Some((n, "")) => n,
        // Python 3 divides to a float and `int()` truncates: floor for positives.
        Some((n, u)) => {
            n.saturating_mul(unit_seconds(u).ok_or_else(|| bad_unit(u))?) / seconds_per_point
        }
        None => return Err(format!("invalid retention {points:?} in {def:?}")),
    };
    if points == 0 {
        return Err(format!("{def:?} gives zero points"));
    }
    let too_big = |what| format!("{what} in {def:?} does not fit whisper's 32-bit header");
    Ok(Retention {
        seconds_per_point: u32::try_from(seconds_per_point).map_err(|_| too_big("precision"))?,
        points: u32::try_from(points).map_err(|_| too_big("point count"))?,
    })
}

/// A `retentions` value: comma-separated items, then whisper's
/// `validateArchiveList`, which also sorts by precision.
fn parse_retentions(value: &str) -> Result<Vec<Retention>, String> {
    let mut archives = value
        .split(',')
        .map(parse_retention)
        .collect::<Result<Vec<_>, _>>()?;
    archives.sort_by_key(|a| a.seconds_per_point);
    // whisper's validateArchiveList, as the format engine applies it to new files.
    let mut pairs: Vec<(u64, u64)> = archives
        .iter()
        .map(|a| (u64::from(a.seconds_per_point), u64::from(a.points)))
        .collect();
    format::validate_archives(&mut pairs).map_err(|e| e.to_string())?;
    Ok(archives)
}

/// A pattern as Python's `re` reads it (see [`crate::pyre`]).
fn compile_pattern(pattern: &str) -> Result<Regex, String> {
    let translated = crate::pyre::translate(pattern)?;
    Regex::new(&translated).map_err(|e| format!("invalid regex {pattern:?}: {e}"))
}

struct Entry {
    line: usize,
    value: String,
}

struct Section {
    name: String,
    line: usize,
    /// Lower-cased key, in file order.
    entries: Vec<(String, Entry)>,
}

impl Section {
    fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, e)| e)
    }

    fn error(
        &self,
        errors: &mut Vec<RuleError>,
        line: usize,
        key: &str,
        message: impl Into<String>,
    ) {
        push_error(errors, line, &self.name, key, message);
    }

    /// The compiled `pattern`, or an error for it (carbon skips a section without
    /// one, and `if pattern:` treats an empty value as missing).
    fn pattern(&self, errors: &mut Vec<RuleError>) -> Option<Regex> {
        match self.get("pattern") {
            None => {
                self.error(errors, self.line, "pattern", "missing");
                None
            }
            Some(e) if e.value.is_empty() => {
                self.error(errors, e.line, "pattern", "empty");
                None
            }
            Some(e) => match compile_pattern(&e.value) {
                Ok(r) => Some(r),
                Err(m) => {
                    self.error(errors, e.line, "pattern", m);
                    None
                }
            },
        }
    }
}

fn push_error(
    errors: &mut Vec<RuleError>,
    line: usize,
    section: &str,
    key: &str,
    message: impl Into<String>,
) {
    errors.push(RuleError {
        line,
        section: section.to_string(),
        key: key.to_string(),
        message: message.into(),
    });
}

/// configparser's `BasicInterpolation` as far as it can apply without `%(name)s`
/// references: `%%` is `%`, any other `%` is an error.
fn interpolate(value: &str) -> Result<String, &'static str> {
    if !value.contains('%') {
        return Ok(value.to_string());
    }
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('(') => return Err("%(name)s interpolation is not supported"),
            _ => return Err("'%' must be written '%%'"),
        }
    }
    Ok(out)
}

/// The subset of Python 3 `configparser` these files use.
fn parse_ini(text: &str) -> (Vec<Section>, Vec<RuleError>) {
    let mut sections: Vec<Section> = Vec::new();
    let mut errors = Vec::new();
    // Whether the last key line may take continuation lines.
    let mut continuing = false;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() {
            continuing = false;
            continue;
        }
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let indented = raw.starts_with([' ', '\t']);
        if indented && continuing {
            if let Some((_, e)) = sections.last_mut().and_then(|s| s.entries.last_mut()) {
                e.value.push('\n');
                e.value.push_str(line);
            }
            continue;
        }
        continuing = false;
        if line.starts_with('[') && line.ends_with(']') && line.len() > 2 {
            let name = &line[1..line.len() - 1];
            if name == "DEFAULT" {
                push_error(
                    &mut errors,
                    line_no,
                    name,
                    "",
                    "the DEFAULT section is not supported",
                );
            } else if sections.iter().any(|s| s.name == name) {
                push_error(&mut errors, line_no, name, "", "duplicate section");
            }
            sections.push(Section {
                name: name.to_string(),
                line: line_no,
                entries: Vec::new(),
            });
            continue;
        }
        let Some(section) = sections.last_mut() else {
            push_error(
                &mut errors,
                line_no,
                "",
                "",
                "key before the first [section]",
            );
            continue;
        };
        let Some(split) = line.find(['=', ':']) else {
            push_error(
                &mut errors,
                line_no,
                &section.name,
                "",
                "expected KEY = VALUE",
            );
            continue;
        };
        let key = line[..split].trim_end().to_lowercase();
        if key.is_empty() {
            push_error(&mut errors, line_no, &section.name, "", "empty key");
            continue;
        }
        if section.entries.iter().any(|(k, _)| *k == key) {
            push_error(&mut errors, line_no, &section.name, &key, "duplicate key");
            continue;
        }
        let value = match interpolate(line[split + 1..].trim_start()) {
            Ok(v) => v,
            Err(m) => {
                push_error(&mut errors, line_no, &section.name, &key, m);
                continue;
            }
        };
        section.entries.push((
            key,
            Entry {
                line: line_no,
                value,
            },
        ));
        continuing = true;
    }
    (sections, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(seconds_per_point: u32, points: u32) -> Retention {
        Retention {
            seconds_per_point,
            points,
        }
    }

    /// `retentions` value -> archives, or the start of the error message.
    fn check_retentions(value: &str, expected: Result<&[Retention], &str>) {
        match (parse_retentions(value), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{value}"),
            (Err(got), Err(want)) => assert!(got.contains(want), "{value}: {got}"),
            (got, want) => panic!("{value}: got {got:?}, want {want:?}"),
        }
    }

    /// carbon's conf/storage-schemas.conf.example (1.1.x).
    const CARBON_SCHEMAS: &str = r"# Schema definitions for Whisper files. Entries are scanned in order,
# and first match wins. This file is scanned for changes every 60 seconds.
#
#    [name]
#    pattern = regex
#    retentions = timePerPoint:timeToStore, timePerPoint:timeToStore, ...

# Carbon's internal metrics. This entry should match what is specified in
# CARBON_METRIC_PREFIX and CARBON_METRIC_INTERVAL settings
[carbon]
pattern = ^carbon\.
retentions = 60:90d

[default]
pattern = .*
retentions = 60s:1d,5m:30d,1h:3y
";

    /// carbon's conf/storage-aggregation.conf.example (1.1.x).
    const CARBON_AGGREGATION: &str = r"# Aggregation methods for whisper files. Entries are scanned in order,
# and first match wins. This file is scanned for changes every 60 seconds
#
#  [name]
#  pattern = <regex>
#  xFilesFactor = <float between 0 and 1>
#  aggregationMethod = <average|sum|last|max|min>
#
[min]
pattern = \.min$
xFilesFactor = 0.1
aggregationMethod = min

[max]
pattern = \.max$
xFilesFactor = 0.1
aggregationMethod = max

[sum]
pattern = \.count$
xFilesFactor = 0
# for monotonically increasing counters
aggregationMethod = max
# for counters that reset every interval (statsd-style)
#aggregationMethod = sum

[default_average]
pattern = .*
xFilesFactor = 0.5
aggregationMethod = average
";

    #[test]
    fn carbon_example_schemas() {
        let s = Schemas::parse(CARBON_SCHEMAS).unwrap();
        assert_eq!(s.retentions_for("carbon.agents.a.cpu"), &[r(60, 129_600)]);
        assert_eq!(s.section_for("carbon.agents.a.cpu"), "carbon");
        // Unanchored: `.*` matches anything, and `^carbon\.` only at the start.
        assert_eq!(
            s.retentions_for("servers.carbon.x"),
            &[r(60, 1440), r(300, 8640), r(3600, 26_280)]
        );
        assert_eq!(s.section_for("servers.carbon.x"), "default");
    }

    #[test]
    fn carbon_example_aggregation() {
        let a = Aggregations::parse(CARBON_AGGREGATION).unwrap();
        assert_eq!(a.for_name("a.b.min"), (0.1, AggregationMethod::Min));
        assert_eq!(a.for_name("a.b.max"), (0.1, AggregationMethod::Max));
        assert_eq!(a.for_name("a.b.count"), (0.0, AggregationMethod::Max));
        assert_eq!(a.section_for("a.b.count"), "sum");
        assert_eq!(a.for_name("a.min.b"), (0.5, AggregationMethod::Average));
    }

    #[test]
    fn no_match_gives_carbon_defaults() {
        let s = Schemas::parse("[x]\npattern = ^only\\.\nretentions = 10s:1h\n").unwrap();
        assert_eq!(s.retentions_for("other"), DEFAULT_RETENTIONS);
        assert_eq!(s.retentions_for("other"), &[r(60, 10_080)]);
        assert_eq!(s.section_for("other"), DEFAULT_SECTION);
        let empty = Schemas::parse("").unwrap();
        assert_eq!(empty.retentions_for("a"), &[r(60, 10_080)]);

        let a = Aggregations::parse("[x]\npattern = ^only\\.\naggregationMethod = sum\n").unwrap();
        assert_eq!(a.for_name("other"), (0.5, AggregationMethod::Average));
        assert_eq!(
            Aggregations::parse("").unwrap().for_name("a"),
            (0.5, AggregationMethod::Average)
        );
    }

    #[test]
    fn first_match_wins_in_file_order() {
        let s = Schemas::parse(
            "[b]\npattern = b\nretentions = 1s:1m\n\n[a]\npattern = a\nretentions = 1m:1h\n",
        )
        .unwrap();
        assert_eq!(s.section_for("ab"), "b");
        assert_eq!(s.retentions_for("ab"), &[r(1, 60)]);
        assert_eq!(s.retentions_for("a"), &[r(60, 60)]);
    }

    #[test]
    fn matching_section_defaults_omitted_keys_without_falling_through() {
        let a = Aggregations::parse(
            "[xff_only]\npattern = ^x\\.\nxFilesFactor = 0\n\n\
             [method_only]\npattern = ^y\\.\naggregationMethod = sum\n\n\
             [all]\npattern = .\nxFilesFactor = 0.9\naggregationMethod = max\n",
        )
        .unwrap();
        assert_eq!(a.for_name("x.a"), (0.0, AggregationMethod::Average));
        assert_eq!(a.for_name("y.a"), (0.5, AggregationMethod::Sum));
        assert_eq!(a.for_name("z.a"), (0.9, AggregationMethod::Max));
    }

    #[test]
    fn all_eight_methods() {
        for m in AggregationMethod::ALL {
            let text = format!("[s]\npattern = .\naggregationMethod = {m}\n");
            assert_eq!(Aggregations::parse(&text).unwrap().for_name("a").1, m);
        }
        assert_eq!(AggregationMethod::from_name("Average"), None);
        assert_eq!(AggregationMethod::from_name("avg"), None);
    }

    #[test]
    fn retention_units_and_legacy_form() {
        check_retentions("10s:6h", Ok(&[r(10, 2160)]));
        check_retentions("1m:7d", Ok(&[r(60, 10_080)]));
        check_retentions("1h:1w", Ok(&[r(3600, 168)]));
        check_retentions("1d:1y", Ok(&[r(86_400, 365)]));
        check_retentions("60:1440", Ok(&[r(60, 1440)]));
        // Bare number on the right is a point count even after a unit (go-carbon differs).
        check_retentions("10s:1000", Ok(&[r(10, 1000)]));
        check_retentions("60:90d", Ok(&[r(60, 129_600)]));
        // Python 3 true division then int(): floor.
        check_retentions("7s:1m", Ok(&[r(7, 8)]));
        check_retentions(" 10s:1d , 1m:30d ", Ok(&[r(10, 8640), r(60, 43_200)]));
        // whisper.create sorts archives by precision.
        check_retentions("1m:30d,10s:1d", Ok(&[r(10, 8640), r(60, 43_200)]));
    }

    #[test]
    fn retention_errors() {
        check_retentions("10min:1d", Err("invalid unit \"min\""));
        check_retentions("1M:1d", Err("invalid precision \"1M\""));
        check_retentions("10s:1x", Err("invalid unit \"x\""));
        check_retentions("10s", Err("is not PRECISION:DURATION"));
        check_retentions("10s:1d:1", Err("is not PRECISION:DURATION"));
        check_retentions("10s:1d,", Err("is not PRECISION:DURATION"));
        check_retentions("-10:100", Err("invalid precision"));
        check_retentions("10:1.5d", Err("invalid retention"));
        check_retentions("0s:1d", Err("zero precision"));
        check_retentions("1d:1h", Err("zero points"));
        check_retentions("1:99999999999", Err("32-bit"));
        // validateArchiveList
        check_retentions("1m:1d,60s:2d", Err("same precision"));
        check_retentions("180s:7d,300s:30d", Err("evenly divide"));
        check_retentions("10s:1d,1m:1h", Err("cover larger time intervals"));
        check_retentions("10s:5,1m:1d", Err("consolidate"));
    }

    /// Each error's `(line, section, key)`.
    fn places(err: &RulesError) -> Vec<(usize, &str, &str)> {
        err.errors
            .iter()
            .map(|e| (e.line, e.section.as_str(), e.key.as_str()))
            .collect()
    }

    #[test]
    fn errors_name_section_and_key_and_are_all_collected() {
        let err = Schemas::parse(
            "[bad_unit]\npattern = a\nretentions = 10q:1d\n\n\
             [no_pattern]\nretentions = 1m:1d\n\n\
             [bad_regex]\npattern = (?=x)\nretentions = 1m:1d\n\n\
             [no_retentions]\npattern = a\n",
        )
        .unwrap_err();
        assert_eq!(
            places(&err),
            [
                (3, "bad_unit", "retentions"),
                (5, "no_pattern", "pattern"),
                (9, "bad_regex", "pattern"),
                (12, "no_retentions", "retentions"),
            ]
        );
        let text = err.to_string();
        assert!(
            text.starts_with("line 3: [bad_unit] retentions: invalid unit \"q\""),
            "{text}"
        );

        let err = Aggregations::parse(
            "[a]\npattern = a\nxFilesFactor = 1.5\naggregationMethod = median\n\
             [b]\npattern = b\nxFilesFactor = half\n\
             [c]\npattern = c\nxFilesFactor = 0._5\n\
             [d]\npattern = d\nxFilesFactor = nan\n",
        )
        .unwrap_err();
        assert_eq!(
            places(&err),
            [
                (3, "a", "xfilesfactor"),
                (4, "a", "aggregationmethod"),
                (7, "b", "xfilesfactor"),
                (10, "c", "xfilesfactor"),
                (13, "d", "xfilesfactor"),
            ]
        );
        // python's float(): digit groups between digits, surrounding spaces.
        let a = Aggregations::parse("[a]\npattern = a\nxFilesFactor = 0.2_5\n").unwrap();
        assert_eq!(a.for_name("a").0, 0.25);
    }

    #[test]
    fn ini_dialect() {
        // Keys are case-insensitive, ':' works as a delimiter, ';' comments,
        // indented continuation lines, '%%' is '%'.
        let s =
            Schemas::parse("; comment\n[s]\nPATTERN: ^a%%b\nRetentions = 10s:1d,\n    1m:30d\n")
                .unwrap();
        assert_eq!(s.section_for("a%b"), "s");
        assert_eq!(s.retentions_for("a%b"), &[r(10, 8640), r(60, 43_200)]);

        let bad = |text: &str, message: &str| {
            let err = Schemas::parse(text).unwrap_err();
            assert!(err.to_string().contains(message), "{text:?}: {err}");
        };
        bad("pattern = a\n", "key before the first [section]");
        bad(
            "[s]\npattern = a\nretentions = 1m:1d\n[s]\n",
            "duplicate section",
        );
        bad(
            "[s]\npattern = a\npattern = b\nretentions = 1m:1d\n",
            "duplicate key",
        );
        bad(
            "[s]\npattern = 5%\nretentions = 1m:1d\n",
            "'%' must be written '%%'",
        );
        bad("[s]\njunk\n", "expected KEY = VALUE");
        bad("[DEFAULT]\npattern = a\nretentions = 1m:1d\n", "DEFAULT");
        bad("[s]\npattern =\nretentions = 1m:1d\n", "[s] pattern: empty");
        // No inline comments in Python 3 configparser.
        bad(
            "[s]\npattern = a\nretentions = 1m:1d # daily\n",
            "[s] retentions",
        );
    }

    #[test]
    fn python_regex_corners() {
        let s = Schemas::parse("[s]\npattern = \\.count\\Z\nretentions = 1s:1m\n").unwrap();
        assert_eq!(s.section_for("a.count"), "s");
        assert_eq!(s.section_for("a.count.x"), DEFAULT_SECTION);
        let s = Schemas::parse("[s]\npattern = (?i)^SERVERS\\.\nretentions = 1s:1m\n").unwrap();
        assert_eq!(s.section_for("servers.a"), "s");
        assert!(Schemas::parse("[s]\npattern = (a)\\1\nretentions = 1s:1m\n").is_err());
    }
}
