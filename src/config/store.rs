//! `[[store]]`: where routes keep metrics, each of a kind that carries its own settings.
//! A store is named in `send_to` like a cluster (names are shared between the two).
//! Today one kind: `whisper`, carbon-cache's files.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use toml::Table;

use super::reader::TableReader;
use super::{parse_socket_addr, ConfigError};
use crate::store::whisper::format::CreateMode;
use crate::store::whisper::rules::{Aggregations, Schemas};

/// One store.
#[derive(Debug, Clone, PartialEq)]
pub struct Store {
    /// Name routes (`send_to`), aggregators and stats use.
    pub name: String,
    /// The kind with its settings.
    pub kind: StoreKind,
}

/// A store's kind and settings.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreKind {
    /// Whisper files, as carbon-cache keeps them.
    Whisper(Box<WhisperStore>),
}

impl StoreKind {
    /// The word used in configs.
    pub fn as_str(&self) -> &'static str {
        match self {
            StoreKind::Whisper(_) => "whisper",
        }
    }
}

/// A rules file as read at config load: its path (empty: carbon's defaults), text and
/// parsed rules.
#[derive(Debug)]
pub struct RulesFile<T> {
    /// The file (empty when not given).
    pub path: PathBuf,
    /// Its text when the config was read (a reload reads it again).
    pub text: String,
    /// What it says.
    pub rules: Arc<T>,
}

impl<T> Clone for RulesFile<T> {
    fn clone(&self) -> Self {
        RulesFile {
            path: self.path.clone(),
            text: self.text.clone(),
            rules: self.rules.clone(),
        }
    }
}

impl<T> PartialEq for RulesFile<T> {
    fn eq(&self, o: &Self) -> bool {
        self.path == o.path && self.text == o.text
    }
}

/// `kind = "whisper"`.
#[derive(Debug, Clone, PartialEq)]
pub struct WhisperStore {
    /// The root of the tree (`a.b.c` is `<path>/a/b/c.wsp`), made absolute at load.
    pub path: PathBuf,
    /// carbon's `storage-schemas.conf` (carbon's default `60:10080` when not given).
    pub schemas: RulesFile<Schemas>,
    /// carbon's `storage-aggregation.conf` (average, xFilesFactor 0.5 when not given).
    pub aggregations: RulesFile<Aggregations>,
    /// How often both rules files are looked at and, when a text changed, applied to
    /// files created from then on (as carbon-cache re-reads them every 60 s); zero: only
    /// at a reload.
    pub rules_reread_interval_ms: u64,
    /// `update_many` calls per second, the whole process (0: unlimited).
    pub writes_per_second: u64,
    /// New files per minute, the whole process (0: unlimited); points of names waiting
    /// for a file wait in the cache.
    pub creates_per_minute: u64,
    /// Points the cache holds, the whole process (each shard holds its share); past it
    /// new points are dropped and counted.
    pub cache_points_max: u64,
    /// Writes each shard has in flight at once: a batch starts on every shard tick and
    /// its completions are read on the next, so it bounds a shard's writes per tick.
    pub writes_in_flight_max: usize,
    /// How new files get their data area.
    pub create_mode: CreateMode,
    /// Each update holds `flock(LOCK_EX)` on its file (carbon's `WHISPER_LOCK_WRITES`,
    /// go-carbon's `flock`), so whisper's tools that lock see whole updates.
    pub flock: bool,
    /// carbon's CarbonLink (cache query) protocol, for graphite-web's CARBONLINK_HOSTS.
    pub carbonlink_listen: Option<SocketAddr>,
    /// Read API: most series (leaves and branches of a find, series of a render) one
    /// request may touch; more is refused with 422.
    pub read_series_max: usize,
    /// Read API: largest response body; larger is refused with 413.
    pub read_response_bytes_max: usize,
    /// Read API: most directory listings one find may do; more is refused with 422.
    pub read_dirs_max: usize,
}

/// Largest storage-schemas / storage-aggregation file read.
pub const STORAGE_RULES_FILE_BYTES_MAX: u64 = 16 << 20;

pub(super) fn read_store(t: &Table, i: usize, errs: &mut Vec<ConfigError>) -> Store {
    let mut r = TableReader::new(t, format!("store[{i}]"));
    let name = r.req_str("name", errs);
    if name.is_empty() && t.contains_key("name") {
        errs.push(ConfigError::new(r.key_path("name"), "must not be empty"));
    }
    let kind_s = r.req_str("kind", errs);
    let kind = match kind_s.as_str() {
        "whisper" | "" => StoreKind::Whisper(Box::new(read_whisper(&mut r, errs))),
        other => {
            errs.push(ConfigError::new(
                r.key_path("kind"),
                format!("unknown kind {other:?} (expected whisper)"),
            ));
            StoreKind::Whisper(Box::new(read_whisper(&mut r, errs)))
        }
    };
    r.finish(errs);
    Store { name, kind }
}

fn read_rules<T>(
    r: &mut TableReader<'_>,
    key: &'static str,
    parse: impl Fn(&str) -> Result<T, crate::store::whisper::rules::RulesError>,
    errs: &mut Vec<ConfigError>,
) -> RulesFile<T> {
    let path = PathBuf::from(r.opt_str(key, errs).unwrap_or_default());
    let empty = || Arc::new(parse("").expect("an empty rules file parses"));
    if path.as_os_str().is_empty() {
        return RulesFile {
            path,
            text: String::new(),
            rules: empty(),
        };
    }
    let text = match super::read_text_bounded(&path, STORAGE_RULES_FILE_BYTES_MAX) {
        Ok(t) => t,
        Err(e) => {
            errs.push(ConfigError::new(
                r.key_path(key),
                format!("cannot read {}: {e}", path.display()),
            ));
            String::new()
        }
    };
    let rules = match parse(&text) {
        Ok(rules) => Arc::new(rules),
        Err(e) => {
            errs.push(ConfigError::new(
                r.key_path(key),
                format!("{}: {e}", path.display()),
            ));
            empty()
        }
    };
    RulesFile { path, text, rules }
}

fn read_whisper(r: &mut TableReader<'_>, errs: &mut Vec<ConfigError>) -> WhisperStore {
    let path = PathBuf::from(r.str_or("path", "./data/whisper", errs));
    if path.as_os_str().is_empty() {
        errs.push(ConfigError::new(r.key_path("path"), "must not be empty"));
    }
    // Absolute, so that every user of the root (the writer's PATH_MAX check, the read
    // API, CarbonLink) measures the path the kernel will: a relative `./data/whisper`
    // passed names whose every open then failed with ENAMETOOLONG.
    let path = std::path::absolute(&path).unwrap_or(path);
    let schemas = read_rules(r, "schemas_file", Schemas::parse, errs);
    let aggregations = read_rules(r, "aggregation_file", Aggregations::parse, errs);
    let rules_reread_interval_ms = r.uint("rules_reread_interval_ms", 60_000, 0, 86_400_000, errs);
    let writes_per_second = r.uint("writes_per_second", 1_200, 0, 100_000_000, errs);
    let creates_per_minute = r.uint("creates_per_minute", 600, 0, 100_000_000, errs);
    let cache_points_max = r.uint("cache_points_max", 10_000_000, 1_000, 1 << 40, errs);
    let writes_in_flight_max = r.uint("writes_in_flight_max", 256, 1, 4_096, errs) as usize;
    let flock = r.boolean("flock", true, errs);
    let create_mode = match r.str_or("create_mode", "fallocate", errs).as_str() {
        "fallocate" => CreateMode::Fallocate,
        "sparse" => CreateMode::Sparse,
        "zero" => CreateMode::ZeroFill,
        other => {
            errs.push(ConfigError::new(
                r.key_path("create_mode"),
                format!("unknown value {other:?} (expected fallocate, sparse or zero)"),
            ));
            CreateMode::Fallocate
        }
    };
    let carbonlink_listen = r.opt_str("carbonlink_listen", errs).and_then(|s| {
        parse_socket_addr(&s)
            .map_err(|e| errs.push(ConfigError::new(r.key_path("carbonlink_listen"), e)))
            .ok()
    });
    let read_series_max = r.uint("read_series_max", 10_000, 1, 100_000_000, errs) as usize;
    let read_response_bytes_max =
        r.uint("read_response_bytes_max", 64 << 20, 1 << 10, 16 << 30, errs) as usize;
    let read_dirs_max = r.uint("read_dirs_max", 100_000, 1, 100_000_000, errs) as usize;
    WhisperStore {
        path,
        schemas,
        aggregations,
        rules_reread_interval_ms,
        writes_per_second,
        creates_per_minute,
        cache_points_max,
        writes_in_flight_max,
        create_mode,
        flock,
        carbonlink_listen,
        read_series_max,
        read_response_bytes_max,
        read_dirs_max,
    }
}
