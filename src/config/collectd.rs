//! collectd settings: a `format = "collectd"` listener's security level, auth file and
//! types table; and what a cluster's members receive (`format`): graphite lines, with
//! collectd value lists named as collectd's write_graphite names them, or collectd
//! packets, optionally signed or encrypted. Each format carries its own settings.

use std::path::PathBuf;
use std::sync::Arc;

use toml::Table;

use super::reader::TableReader;
use super::{ConfigError, Format, Member, Transport};
use crate::protocol::collectd::graphite_names::GraphiteOptions;
use crate::protocol::collectd::types_db::TypesDb;
use crate::protocol::collectd::{
    AuthFile, Credentials, Security, SecurityLevel, SendSecurity, MAX_PACKET_BYTES_DEFAULT,
};

/// Largest auth file or types.db read.
const FILE_BYTES_MAX: u64 = 16 << 20;

/// A collectd listener's settings (`listen[].security_level`, `auth_file`, `types_db`).
#[derive(Clone)]
pub struct CollectdListen {
    /// collectd's `SecurityLevel`: what the listener processes.
    pub security_level: SecurityLevel,
    /// collectd's `AuthFile` (`user: password` lines), if given.
    pub auth_file: Option<PathBuf>,
    /// The auth file as read (a reload reads it again; equal bytes, same listener).
    auth_bytes: Vec<u8>,
    /// Its users.
    pub auth: Option<AuthFile>,
    /// types.db files, later ones overriding earlier types; empty: the built-in table.
    pub types_db: Vec<PathBuf>,
    /// Their texts as read.
    types_text: Vec<String>,
    /// The table value lists are checked against.
    pub types: Arc<TypesDb>,
}

impl std::fmt::Debug for CollectdListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the passwords.
        f.debug_struct("CollectdListen")
            .field("security_level", &self.security_level)
            .field("auth_file", &self.auth_file)
            .field("types_db", &self.types_db)
            .finish_non_exhaustive()
    }
}

impl PartialEq for CollectdListen {
    fn eq(&self, o: &Self) -> bool {
        self.security_level == o.security_level
            && self.auth_file == o.auth_file
            && self.auth_bytes == o.auth_bytes
            && self.types_db == o.types_db
            && self.types_text == o.types_text
    }
}

impl Eq for CollectdListen {}

impl CollectdListen {
    /// The listener's acceptance rules.
    pub fn security(&self) -> Security {
        Security::new(self.security_level, self.auth.clone())
            .expect("validated: sign and encrypt have an auth file")
    }

    /// Whether the table came from `types_db` files (a type not in it is refused, as
    /// collectd refuses it) rather than the built-in table.
    pub fn types_complete(&self) -> bool {
        !self.types_db.is_empty()
    }
}

fn security_level(r: &mut TableReader<'_>, errs: &mut Vec<ConfigError>) -> SecurityLevel {
    let s = r.str_or("security_level", "none", errs);
    s.parse().unwrap_or_else(|e| {
        errs.push(ConfigError::new(
            r.key_path("security_level"),
            format!("{e}"),
        ));
        SecurityLevel::None
    })
}

/// The collectd keys of listener `r` (format `format`): read for a collectd listener,
/// refused on any other.
pub(super) fn read_listen(
    r: &mut TableReader<'_>,
    t: &Table,
    format: Format,
    errs: &mut Vec<ConfigError>,
) -> Option<CollectdListen> {
    if format != Format::Collectd {
        for key in ["security_level", "auth_file", "types_db"] {
            if t.contains_key(key) {
                errs.push(ConfigError::new(
                    r.key_path(key),
                    "applies to format = \"collectd\" only",
                ));
            }
        }
        // Taken so they are not also reported as unknown keys.
        let _ = r.value("security_level");
        let _ = r.value("auth_file");
        let _ = r.value("types_db");
        return None;
    }
    let security_level = security_level(r, errs);
    let auth_file = r.opt_str("auth_file", errs).map(PathBuf::from);
    let mut auth_bytes = Vec::new();
    let mut auth = None;
    if let Some(path) = &auth_file {
        match read_bounded(path) {
            Ok(bytes) => {
                auth = Some(AuthFile::parse(&bytes));
                auth_bytes = bytes;
            }
            Err(e) => errs.push(ConfigError::new(
                r.key_path("auth_file"),
                format!("cannot read {}: {e}", path.display()),
            )),
        }
    }
    if security_level != SecurityLevel::None && auth_file.is_none() {
        errs.push(ConfigError::new(
            r.key_path("auth_file"),
            "is required with security_level sign or encrypt (as collectd's Listen requires AuthFile)",
        ));
    }
    let types_db: Vec<PathBuf> = r
        .strings("types_db", errs)
        .into_iter()
        .map(PathBuf::from)
        .collect();
    let mut types = if types_db.is_empty() {
        TypesDb::builtin()
    } else {
        TypesDb::default()
    };
    let mut types_text = Vec::new();
    for (j, path) in types_db.iter().enumerate() {
        let at = format!("{}[{j}]", r.key_path("types_db"));
        match read_bounded(path).map(String::from_utf8) {
            Ok(Ok(text)) => {
                if let Err(e) = types.extend_from(&text) {
                    errs.push(ConfigError::new(at, format!("{}: {e}", path.display())));
                }
                types_text.push(text);
            }
            Ok(Err(_)) => errs.push(ConfigError::new(
                at,
                format!("{} is not UTF-8 text", path.display()),
            )),
            Err(e) => errs.push(ConfigError::new(
                at,
                format!("cannot read {}: {e}", path.display()),
            )),
        }
    }
    Some(CollectdListen {
        security_level,
        auth_file,
        auth_bytes,
        auth,
        types_db,
        types_text,
        types: Arc::new(types),
    })
}

fn read_bounded(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(FILE_BYTES_MAX + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > FILE_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {FILE_BYTES_MAX} bytes"),
        ));
    }
    Ok(buf)
}

/// What a ring or `any_of` cluster hashes of a collectd value list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterKey {
    /// The host: every value list of a host goes to the same member (Coco's tiers).
    Host,
    /// The whole identifier: a busy host's value lists spread over the members.
    Identifier,
}

impl ClusterKey {
    /// The word used in configs.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterKey::Host => "host",
            ClusterKey::Identifier => "identifier",
        }
    }
}

/// What a cluster's members receive.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputFormat {
    /// Text lines: graphite in normal form, statsd and regex lines as received, and
    /// collectd value lists as collectd's write_graphite writes them (with these options).
    Graphite(GraphiteOut),
    /// collectd's binary protocol: value lists packed into full packets.
    Collectd(CollectdSend),
}

impl OutputFormat {
    /// The word used in configs.
    pub fn as_str(&self) -> &'static str {
        match self {
            OutputFormat::Graphite(_) => "graphite",
            OutputFormat::Collectd(_) => "collectd",
        }
    }
}

impl Default for OutputFormat {
    fn default() -> OutputFormat {
        OutputFormat::Graphite(GraphiteOut::default())
    }
}

/// `format = "graphite"`: write_graphite's options for collectd value lists.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphiteOut {
    /// write_graphite's options under its key names (snake_case).
    pub options: GraphiteOptions,
    /// `store_rates`: series whose last raw value one destination keeps per shard; a
    /// new series past it is written with an unknown rate (`nan`) and counted.
    pub store_rates_series_max: usize,
}

impl Default for GraphiteOut {
    fn default() -> GraphiteOut {
        GraphiteOut {
            options: GraphiteOptions::default(),
            store_rates_series_max: STORE_RATES_SERIES_MAX_DEFAULT,
        }
    }
}

const STORE_RATES_SERIES_MAX_DEFAULT: usize = 100_000;

/// `format = "collectd"`: how packets are made for the members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectdSend {
    /// Largest packet (collectd's `MaxPacketSize`, 1024 to 65535).
    pub packet_bytes_max: usize,
    /// None, sign or encrypt (a collectd `Server` block's `SecurityLevel`).
    pub security_level: SecurityLevel,
    /// `Username` for sign and encrypt.
    pub username: String,
    /// `Password` for sign and encrypt.
    pub password: String,
}

impl CollectdSend {
    /// The encoder's security.
    pub fn send_security(&self) -> SendSecurity {
        let creds = || {
            Credentials::new(self.username.as_bytes(), self.password.as_bytes())
                .expect("validated user name")
        };
        match self.security_level {
            SecurityLevel::None => SendSecurity::None,
            SecurityLevel::Sign => SendSecurity::Sign(creds()),
            SecurityLevel::Encrypt => SendSecurity::Encrypt(creds()),
        }
    }
}

const GRAPHITE_KEYS: [&str; 11] = [
    "prefix",
    "postfix",
    "escape_character",
    "separate_instances",
    "always_append_ds",
    "preserve_separator",
    "drop_duplicate_fields",
    "reverse_host",
    "use_tags",
    "store_rates",
    "store_rates_series_max",
];
const COLLECTD_KEYS: [&str; 4] = ["packet_bytes_max", "security_level", "username", "password"];

/// A cluster's `format` and the settings of that format.
pub(super) fn read_output_format(
    r: &mut TableReader<'_>,
    t: &Table,
    errs: &mut Vec<ConfigError>,
) -> OutputFormat {
    let format = r.str_or("format", "graphite", errs);
    let refuse = |keys: &[&str], errs: &mut Vec<ConfigError>, r: &TableReader<'_>| {
        for key in keys {
            if t.contains_key(*key) {
                errs.push(ConfigError::new(
                    r.key_path(key),
                    format!("does not apply to format = {format:?}"),
                ));
            }
        }
    };
    match format.as_str() {
        "collectd" => {
            refuse(&GRAPHITE_KEYS, errs, r);
            for key in GRAPHITE_KEYS {
                let _ = r.value(key);
            }
            let packet_bytes_max = r.uint(
                "packet_bytes_max",
                MAX_PACKET_BYTES_DEFAULT as u64,
                1024,
                65535,
                errs,
            ) as usize;
            let security_level = security_level(r, errs);
            let username = r.opt_str("username", errs).unwrap_or_default();
            let password = r.opt_str("password", errs).unwrap_or_default();
            if security_level != SecurityLevel::None {
                if let Err(e) = Credentials::new(username.as_bytes(), password.as_bytes()) {
                    errs.push(ConfigError::new(r.key_path("username"), e.to_string()));
                }
                if password.is_empty() {
                    errs.push(ConfigError::new(
                        r.key_path("password"),
                        "is required with security_level sign or encrypt",
                    ));
                }
            } else if t.contains_key("username") || t.contains_key("password") {
                errs.push(ConfigError::new(
                    r.key_path("security_level"),
                    "username and password are used only with security_level sign or encrypt",
                ));
            }
            OutputFormat::Collectd(CollectdSend {
                packet_bytes_max,
                security_level,
                username,
                password,
            })
        }
        other => {
            if other != "graphite" {
                errs.push(ConfigError::new(
                    r.key_path("format"),
                    format!("unknown format {other:?} (expected graphite or collectd)"),
                ));
            }
            refuse(&COLLECTD_KEYS, errs, r);
            for key in COLLECTD_KEYS {
                let _ = r.value(key);
            }
            let d = GraphiteOptions::default();
            let escape = r.str_or("escape_character", "_", errs);
            let escape_character = match escape.as_bytes() {
                [b] if b.is_ascii() => *b,
                _ => {
                    errs.push(ConfigError::new(
                        r.key_path("escape_character"),
                        "must be one ASCII character",
                    ));
                    d.escape_character
                }
            };
            let options = GraphiteOptions {
                prefix: r.str_or("prefix", "", errs),
                postfix: r.str_or("postfix", "", errs),
                escape_character,
                separate_instances: r.boolean("separate_instances", false, errs),
                always_append_ds: r.boolean("always_append_ds", false, errs),
                preserve_separator: r.boolean("preserve_separator", false, errs),
                drop_duplicate_fields: r.boolean("drop_duplicate_fields", false, errs),
                reverse_host: r.boolean("reverse_host", false, errs),
                use_tags: r.boolean("use_tags", false, errs),
                store_rates: r.boolean("store_rates", true, errs),
                interval_default: d.interval_default,
            };
            if let Err(e) =
                crate::protocol::collectd::graphite_names::GraphiteNamer::new(options.clone())
            {
                errs.push(ConfigError::new(
                    r.key_path("escape_character"),
                    e.to_string(),
                ));
            }
            let store_rates_series_max = r.uint(
                "store_rates_series_max",
                STORE_RATES_SERIES_MAX_DEFAULT as u64,
                0,
                1 << 30,
                errs,
            ) as usize;
            OutputFormat::Graphite(GraphiteOut {
                options,
                store_rates_series_max,
            })
        }
    }
}

/// collectd's network protocol runs over UDP only.
pub(super) fn check_members(
    format: &OutputFormat,
    members: &[Member],
    path: &str,
    errs: &mut Vec<ConfigError>,
) {
    if !matches!(format, OutputFormat::Collectd(_)) {
        return;
    }
    for (j, m) in members.iter().enumerate() {
        if m.transport != Transport::Udp {
            errs.push(ConfigError::new(
                format!("{path}members[{j}]"),
                "a format = \"collectd\" member is udp://host:port (collectd's network protocol is UDP)",
            ));
        }
    }
}
