//! A typed reader over a TOML table that records every error with its key path and
//! rejects keys nobody asked for, so one pass reports all mistakes at once.

use toml::{Table, Value};

use super::ConfigError;

/// Reads typed values out of one TOML table, remembering which keys were taken.
pub(super) struct TableReader<'a> {
    table: &'a Table,
    path: String,
    taken: Vec<&'static str>,
}

impl<'a> TableReader<'a> {
    /// `path` is how the table is named in errors (`server`, `listen[0]`).
    pub(super) fn new(table: &'a Table, path: impl Into<String>) -> Self {
        TableReader {
            table,
            path: path.into(),
            taken: Vec::new(),
        }
    }

    /// The key path of `key` in this table.
    pub(super) fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.taken.push(key);
        self.table.get(key)
    }

    fn type_error(&self, key: &str, want: &str, got: &Value, errs: &mut Vec<ConfigError>) {
        errs.push(ConfigError::new(
            self.key_path(key),
            format!("expected {want}, found {}", got.type_str()),
        ));
    }

    /// An optional string.
    pub(super) fn opt_str(
        &mut self,
        key: &'static str,
        errs: &mut Vec<ConfigError>,
    ) -> Option<String> {
        match self.get(key)? {
            Value::String(s) => Some(s.clone()),
            v => {
                self.type_error(key, "a string", v, errs);
                None
            }
        }
    }

    /// A required string; a missing key is an error.
    pub(super) fn req_str(&mut self, key: &'static str, errs: &mut Vec<ConfigError>) -> String {
        let present = self.table.contains_key(key);
        match self.opt_str(key, errs) {
            Some(s) => s,
            None => {
                if !present {
                    errs.push(ConfigError::new(self.key_path(key), "is required"));
                }
                String::new()
            }
        }
    }

    /// A string with a default.
    pub(super) fn str_or(
        &mut self,
        key: &'static str,
        default: &str,
        errs: &mut Vec<ConfigError>,
    ) -> String {
        self.opt_str(key, errs)
            .unwrap_or_else(|| default.to_string())
    }

    /// A non-negative integer within `[min, max]`, with a default.
    pub(super) fn uint(
        &mut self,
        key: &'static str,
        default: u64,
        min: u64,
        max: u64,
        errs: &mut Vec<ConfigError>,
    ) -> u64 {
        debug_assert!(
            min <= default && default <= max,
            "default of {key} out of range"
        );
        match self.get(key) {
            None => default,
            Some(Value::Integer(i))
                if (*i as i128) >= min as i128 && (*i as i128) <= max as i128 =>
            {
                *i as u64
            }
            Some(Value::Integer(i)) => {
                errs.push(ConfigError::new(
                    self.key_path(key),
                    format!("{i} is out of range ({min}..={max})"),
                ));
                default
            }
            Some(v) => {
                self.type_error(key, "an integer", v, errs);
                default
            }
        }
    }

    /// The raw value of `key`, if present (marked as read).
    pub(super) fn value(&mut self, key: &'static str) -> Option<&'a Value> {
        self.get(key)
    }

    /// A number (integer or float) within `[min, max]`, with a default.
    pub(super) fn float(
        &mut self,
        key: &'static str,
        default: f64,
        min: f64,
        max: f64,
        errs: &mut Vec<ConfigError>,
    ) -> f64 {
        let v = match self.get(key) {
            None => return default,
            Some(Value::Integer(i)) => *i as f64,
            Some(Value::Float(f)) => *f,
            Some(v) => {
                self.type_error(key, "a number", v, errs);
                return default;
            }
        };
        if !(v >= min && v <= max) {
            errs.push(ConfigError::new(
                self.key_path(key),
                format!("{v} is out of range ({min}..={max})"),
            ));
            return default;
        }
        v
    }

    /// A boolean with a default.
    pub(super) fn boolean(
        &mut self,
        key: &'static str,
        default: bool,
        errs: &mut Vec<ConfigError>,
    ) -> bool {
        match self.get(key) {
            None => default,
            Some(Value::Boolean(b)) => *b,
            Some(v) => {
                self.type_error(key, "true or false", v, errs);
                default
            }
        }
    }

    /// An optional boolean.
    pub(super) fn opt_bool(
        &mut self,
        key: &'static str,
        errs: &mut Vec<ConfigError>,
    ) -> Option<bool> {
        match self.get(key)? {
            Value::Boolean(b) => Some(*b),
            v => {
                self.type_error(key, "true or false", v, errs);
                None
            }
        }
    }

    /// An array of strings (missing = empty).
    pub(super) fn strings(
        &mut self,
        key: &'static str,
        errs: &mut Vec<ConfigError>,
    ) -> Vec<String> {
        match self.get(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, v) in items.iter().enumerate() {
                    match v {
                        Value::String(s) => out.push(s.clone()),
                        v => errs.push(ConfigError::new(
                            format!("{}[{i}]", self.key_path(key)),
                            format!("expected a string, found {}", v.type_str()),
                        )),
                    }
                }
                out
            }
            Some(v) => {
                self.type_error(key, "an array of strings", v, errs);
                Vec::new()
            }
        }
    }

    /// An optional sub-table (inline or not).
    pub(super) fn table(
        &mut self,
        key: &'static str,
        errs: &mut Vec<ConfigError>,
    ) -> Option<&'a Table> {
        match self.get(key)? {
            Value::Table(t) => Some(t),
            v => {
                self.type_error(key, "a table", v, errs);
                None
            }
        }
    }

    /// An array of tables (`[[name]]`), missing = empty.
    pub(super) fn tables(
        &mut self,
        key: &'static str,
        errs: &mut Vec<ConfigError>,
    ) -> Vec<&'a Table> {
        match self.get(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, v) in items.iter().enumerate() {
                    match v {
                        Value::Table(t) => out.push(t),
                        v => errs.push(ConfigError::new(
                            format!("{}[{i}]", self.key_path(key)),
                            format!("expected a table, found {}", v.type_str()),
                        )),
                    }
                }
                out
            }
            Some(v) => {
                self.type_error(key, &format!("[[{key}]] tables"), v, errs);
                Vec::new()
            }
        }
    }

    /// Reports every key of the table that no getter asked for.
    pub(super) fn finish(self, errs: &mut Vec<ConfigError>) {
        for key in self.table.keys() {
            if !self.taken.iter().any(|t| t == key) {
                let mut known = self.taken.clone();
                known.sort_unstable();
                known.dedup();
                errs.push(ConfigError::new(
                    self.key_path(key),
                    format!("unknown key (known here: {})", known.join(", ")),
                ));
            }
        }
    }
}
