//! collectd's `types.db`: each type's data sources (name, kind, bounds).
//!
//! Format, as collectd's `types_list.c` reads it: one type a line, `type` then one or
//! more `name:KIND:min:max` fields separated by whitespace (a trailing `,` on a field is
//! dropped), `U` for an unbounded min or max; lines whose first field starts with `#`
//! and blank lines are skipped. A type defined twice keeps the later definition, as
//! collectd replaces it. Unlike collectd, which logs and skips a bad line, we refuse the
//! file and name the line: a half-read types.db would rename metrics silently.

use std::collections::HashMap;
use std::fmt;

/// How collectd treats a data source's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsType {
    /// An ever-growing u64 that may wrap.
    Counter,
    /// A reading, f64.
    Gauge,
    /// A signed counter, i64.
    Derive,
    /// A u64 reset at every read.
    Absolute,
}

impl DsType {
    /// From the word in types.db, case-insensitive as collectd reads it.
    pub fn from_word(word: &str) -> Option<DsType> {
        [
            ("COUNTER", DsType::Counter),
            ("GAUGE", DsType::Gauge),
            ("DERIVE", DsType::Derive),
            ("ABSOLUTE", DsType::Absolute),
        ]
        .into_iter()
        .find(|(w, _)| w.eq_ignore_ascii_case(word))
        .map(|(_, t)| t)
    }
}

/// One data source of a type.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSource {
    /// The name write_graphite appends (`rx`, `shortterm`, `value`).
    pub name: String,
    /// Counter, gauge, derive or absolute.
    pub ds_type: DsType,
    /// Lower bound; NaN for `U`.
    pub min: f64,
    /// Upper bound; NaN for `U`.
    pub max: f64,
}

/// A line of types.db that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("types.db line {line}: {reason}: {text:?}")]
pub struct TypesDbError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: &'static str,
    /// The offending field or line.
    pub text: String,
}

/// Type name -> data sources.
#[derive(Clone, Default)]
pub struct TypesDb {
    types: HashMap<Vec<u8>, Vec<DataSource>>,
}

impl fmt::Debug for TypesDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypesDb")
            .field("types", &self.types.len())
            .finish()
    }
}

/// The types cadent knows without a `types_db` file: the definitions collectd 5.12's
/// types.db gives the types of its commonly loaded plugins (cpu, load, memory, interface,
/// disk, df, processes, swap, users, entropy, irq, vmem, uptime, ...) and the generic
/// ones (`gauge`, `derive`, `counter`, `absolute`, the types collectd-tg sends). Name the
/// full file with a listener's `types_db` for anything else.
const BUILTIN: &str = include_str!("types_builtin.db");

impl TypesDb {
    /// The built-in table ([`BUILTIN`]).
    pub fn builtin() -> TypesDb {
        TypesDb::parse(BUILTIN).expect("the built-in table parses")
    }

    /// Reads a whole types.db text.
    pub fn parse(text: &str) -> Result<TypesDb, TypesDbError> {
        let mut db = TypesDb::default();
        db.extend_from(text)?;
        Ok(db)
    }

    /// Reads more definitions into this db (collectd accepts several `TypesDB` files;
    /// later ones replace earlier types of the same name).
    pub fn extend_from(&mut self, text: &str) -> Result<(), TypesDbError> {
        for (i, line) in text.lines().enumerate() {
            self.parse_line(i + 1, line)?;
        }
        Ok(())
    }

    fn parse_line(&mut self, line: usize, text: &str) -> Result<(), TypesDbError> {
        let err = |reason, t: &str| TypesDbError {
            line,
            reason,
            text: t.to_string(),
        };
        let mut fields = text
            .split([' ', '\t', '\r', '\n'])
            .filter(|f| !f.is_empty());
        let Some(name) = fields.next() else {
            return Ok(());
        };
        if name.starts_with('#') {
            return Ok(());
        }
        if name.len() >= super::NAME_BYTES_MAX {
            return Err(err("type name over 127 bytes", name));
        }
        let mut sources = Vec::new();
        for field in fields {
            let field = field.strip_suffix(',').unwrap_or(field);
            let parts: Vec<&str> = field.split(':').collect();
            let [ds_name, kind, min, max] = parts[..] else {
                return Err(err("data source is not name:KIND:min:max", field));
            };
            if ds_name.is_empty() || ds_name.len() >= super::NAME_BYTES_MAX {
                return Err(err("data source name empty or over 127 bytes", field));
            }
            let ds_type = DsType::from_word(kind).ok_or_else(|| err("unknown DS type", kind))?;
            let bound = |s: &str| -> Result<f64, TypesDbError> {
                if s == "U" {
                    Ok(f64::NAN)
                } else {
                    s.parse::<f64>().map_err(|_| err("bad bound", s))
                }
            };
            sources.push(DataSource {
                name: ds_name.to_string(),
                ds_type,
                min: bound(min)?,
                max: bound(max)?,
            });
        }
        if sources.is_empty() {
            return Err(err("type without data sources", text));
        }
        self.types.insert(name.as_bytes().to_vec(), sources);
        Ok(())
    }

    /// The data sources of `type_`, if it is defined.
    pub fn get(&self, type_: &[u8]) -> Option<&[DataSource]> {
        self.types.get(type_).map(Vec::as_slice)
    }

    /// Number of types.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// Whether no type is defined.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(db: &TypesDb, t: &str) -> Vec<(String, DsType)> {
        db.get(t.as_bytes())
            .unwrap_or_else(|| panic!("{t} missing"))
            .iter()
            .map(|d| (d.name.clone(), d.ds_type))
            .collect()
    }

    #[test]
    fn reads_the_format() {
        let db = TypesDb::parse(
            "# comment\n\nload  shortterm:GAUGE:0:5000, midterm:GAUGE:0:5000, longterm:GAUGE:0:5000\n\
             if_octets\t\trx:DERIVE:0:U, tx:derive:0:U\r\n  # indented comment\nvalue value:GAUGE:U:U\n",
        )
        .unwrap();
        assert_eq!(db.len(), 3);
        let load = db.get(b"load").unwrap();
        assert_eq!(load.len(), 3);
        assert_eq!(load[1].name, "midterm");
        assert_eq!(load[1].max, 5000.0);
        let rx = &db.get(b"if_octets").unwrap()[0];
        assert_eq!((rx.ds_type, rx.min), (DsType::Derive, 0.0));
        assert!(rx.max.is_nan());
        assert!(db.get(b"nope").is_none());
    }

    #[test]
    fn builtin_table_has_the_common_types() {
        let db = TypesDb::builtin();
        assert!(db.len() >= 90, "{}", db.len());
        let g = DsType::Gauge;
        let s = |n: &str| n.to_string();
        assert_eq!(
            names(&db, "load"),
            [(s("shortterm"), g), (s("midterm"), g), (s("longterm"), g)]
        );
        assert_eq!(names(&db, "derive"), [(s("value"), DsType::Derive)]);
        assert_eq!(names(&db, "gauge"), [(s("value"), g)]);
        // Where the installed file exists, every built-in type is defined as it has it.
        if let Ok(text) = std::fs::read_to_string("/usr/share/collectd/types.db") {
            let full = TypesDb::parse(&text).unwrap();
            let bits = |v: &[DataSource]| -> Vec<(String, DsType, u64, u64)> {
                v.iter()
                    .map(|d| (d.name.clone(), d.ds_type, d.min.to_bits(), d.max.to_bits()))
                    .collect()
            };
            for (name, sources) in &db.types {
                let theirs = full.types.get(name).map(|v| bits(v));
                assert_eq!(theirs, Some(bits(sources)), "{name:?}");
            }
        }
    }

    #[test]
    fn later_definition_replaces() {
        let db = TypesDb::parse("a x:GAUGE:U:U\na y:COUNTER:0:U\n").unwrap();
        assert_eq!(names(&db, "a"), [("y".to_string(), DsType::Counter)]);
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line, reason) in [
            (
                "a x:GAUGE:U:U\nb x:GAUGE:U\n",
                2,
                "data source is not name:KIND:min:max",
            ),
            ("\n\nc x:TIMER:U:U\n", 3, "unknown DS type"),
            ("d x:GAUGE:zero:U\n", 1, "bad bound"),
            ("# c\ne\n", 2, "type without data sources"),
        ] {
            let e = TypesDb::parse(text).unwrap_err();
            assert_eq!((e.line, e.reason), (line, reason), "{text:?}");
            assert!(e.to_string().starts_with(&format!("types.db line {line}:")));
        }
    }

    /// The file Debian's collectd-core installs; absent elsewhere, so only checked
    /// where it exists (the integration test requires it).
    #[test]
    fn reads_installed_types_db() {
        let Ok(text) = std::fs::read_to_string("/usr/share/collectd/types.db") else {
            return;
        };
        let db = TypesDb::parse(&text).unwrap();
        assert!(db.len() > 100, "{}", db.len());
        let g = DsType::Gauge;
        let d = DsType::Derive;
        let s = |n: &str| n.to_string();
        assert_eq!(
            names(&db, "load"),
            [(s("shortterm"), g), (s("midterm"), g), (s("longterm"), g)]
        );
        assert_eq!(names(&db, "if_octets"), [(s("rx"), d), (s("tx"), d)]);
        assert_eq!(names(&db, "cpu"), [(s("value"), d)]);
        assert_eq!(names(&db, "gauge"), [(s("value"), g)]);
        assert_eq!(names(&db, "counter"), [(s("value"), DsType::Counter)]);
        assert_eq!(names(&db, "absolute"), [(s("value"), DsType::Absolute)]);
    }
}
