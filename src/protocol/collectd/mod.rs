//! collectd's binary network protocol (collectd 5.12 `network.c`), both directions.
//!
//! A packet is a run of parts (`type u16 BE | length u16 BE | body`) with state carried
//! from part to part: each values part stands for a copy of the identity, time and
//! interval read so far. [`Decoder`] turns a datagram into [`Record`]s borrowed from the
//! datagram, accepting and refusing exactly what a collectd `Listen` block with the same
//! [`Security`] does; [`Encoder`] packs value lists into packets the way collectd's
//! sender does (only changed fields, as many value lists as fit), optionally signed or
//! encrypted. Nothing here does I/O; the caller reads the auth file and owns the sockets.
//!
//! Not checked here: that `type` exists in `types.db` and that the number of values
//! matches its data sources. collectd drops such a value list after parsing; so must the
//! stage that knows `types.db`.

mod decode;
mod encode;
pub mod graphite_names;
mod security;
#[cfg(test)]
mod tests;
pub mod types_db;

pub use decode::{DecodeStats, Decoder, Reject};
pub use encode::{EncodeReject, EncodeStats, Encoder, EncoderConfig, MAX_PACKET_BYTES_DEFAULT};
pub use security::{AuthFile, Credentials, Security, SecurityError, SecurityLevel, SendSecurity};

use std::fmt;

/// Part type ids (`network.h`).
pub(crate) mod part {
    pub const HOST: u16 = 0x0000;
    pub const TIME: u16 = 0x0001;
    pub const PLUGIN: u16 = 0x0002;
    pub const PLUGIN_INSTANCE: u16 = 0x0003;
    pub const TYPE: u16 = 0x0004;
    pub const TYPE_INSTANCE: u16 = 0x0005;
    pub const VALUES: u16 = 0x0006;
    pub const INTERVAL: u16 = 0x0007;
    pub const TIME_HR: u16 = 0x0008;
    pub const INTERVAL_HR: u16 = 0x0009;
    pub const MESSAGE: u16 = 0x0100;
    pub const SEVERITY: u16 = 0x0101;
    pub const SIGNATURE: u16 = 0x0200;
    pub const ENCRYPTION: u16 = 0x0210;
}

/// Identity strings hold at most this many bytes including their NUL
/// (`DATA_MAX_NAME_LEN`): 127 characters.
pub const NAME_BYTES_MAX: usize = 128;
/// A notification message holds at most this many bytes including its NUL
/// (`NOTIF_MAX_MSG_LEN`).
pub const MESSAGE_BYTES_MAX: usize = 256;

/// collectd's time: seconds × 2^30 (`cdtime_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct CdTime(pub u64);

impl CdTime {
    /// Whole seconds as collectd converts them (`TIME_T_TO_CDTIME_T`).
    pub fn from_secs(secs: u64) -> CdTime {
        CdTime(secs << 30)
    }

    /// Seconds as a float, as the csv plugin prints them.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / (1u64 << 30) as f64
    }

    /// Seconds rounded to nearest, as write_graphite does (`CDTIME_T_TO_TIME_T`).
    pub fn as_secs_rounded(self) -> u64 {
        (self.0 >> 30) + ((self.0 >> 29) & 1)
    }
}

/// One data source's value, in the type its wire code says.
#[derive(Debug, Clone, Copy)]
pub enum Value {
    /// Code 0, u64 big-endian.
    Counter(u64),
    /// Code 1, f64 little-endian.
    Gauge(f64),
    /// Code 2, i64 big-endian.
    Derive(i64),
    /// Code 3, u64 big-endian.
    Absolute(u64),
}

impl Value {
    /// The wire type code.
    pub fn code(self) -> u8 {
        match self {
            Value::Counter(_) => 0,
            Value::Gauge(_) => 1,
            Value::Derive(_) => 2,
            Value::Absolute(_) => 3,
        }
    }

    /// The 8 wire bytes (gauges little-endian, the rest big-endian).
    pub fn to_wire(self) -> [u8; 8] {
        match self {
            Value::Counter(v) | Value::Absolute(v) => v.to_be_bytes(),
            Value::Gauge(v) => v.to_le_bytes(),
            Value::Derive(v) => v.to_be_bytes(),
        }
    }

    /// Reads one value; `None` for a type code collectd does not know.
    pub fn from_wire(code: u8, bytes: [u8; 8]) -> Option<Value> {
        Some(match code {
            0 => Value::Counter(u64::from_be_bytes(bytes)),
            1 => Value::Gauge(f64::from_le_bytes(bytes)),
            2 => Value::Derive(i64::from_be_bytes(bytes)),
            3 => Value::Absolute(u64::from_be_bytes(bytes)),
            _ => return None,
        })
    }
}

/// Bitwise for gauges, so NaN equals itself: what a round trip must preserve.
impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        self.code() == other.code() && self.to_wire() == other.to_wire()
    }
}

/// The values of one value list: either a view of a decoded values part (no copy) or a
/// caller's slice.
#[derive(Clone, Copy)]
pub struct Values<'a>(ValuesRepr<'a>);

#[derive(Clone, Copy)]
enum ValuesRepr<'a> {
    /// `types.len()` codes, each known (checked by the decoder), and `8 × types.len()`
    /// bytes of values.
    Wire {
        types: &'a [u8],
        data: &'a [u8],
    },
    Slice(&'a [Value]),
}

impl<'a> Values<'a> {
    /// No values.
    pub const EMPTY: Values<'static> = Values(ValuesRepr::Slice(&[]));

    /// Values a producer built.
    pub fn from_slice(values: &'a [Value]) -> Values<'a> {
        Values(ValuesRepr::Slice(values))
    }

    /// A decoded values part's codes and data; the decoder checked every code.
    pub(crate) fn from_wire(types: &'a [u8], data: &'a [u8]) -> Values<'a> {
        debug_assert_eq!(types.len() * 8, data.len());
        debug_assert!(types.iter().all(|&t| t <= 3));
        Values(ValuesRepr::Wire { types, data })
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match self.0 {
            ValuesRepr::Wire { types, .. } => types.len(),
            ValuesRepr::Slice(s) => s.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`th value. Panics when out of range.
    pub fn get(&self, i: usize) -> Value {
        match self.0 {
            ValuesRepr::Wire { types, data } => {
                let bytes: [u8; 8] = data[i * 8..i * 8 + 8].try_into().expect("8 bytes");
                Value::from_wire(types[i], bytes).expect("codes checked at decode")
            }
            ValuesRepr::Slice(s) => s[i],
        }
    }

    /// Every value in order.
    pub fn iter(&self) -> impl Iterator<Item = Value> + '_ {
        (0..self.len()).map(move |i| self.get(i))
    }

    /// Appends the values part body after its header: count, codes, values.
    pub(crate) fn write_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.len() as u16).to_be_bytes());
        match self.0 {
            ValuesRepr::Wire { types, data } => {
                out.extend_from_slice(types);
                out.extend_from_slice(data);
            }
            ValuesRepr::Slice(s) => {
                out.extend(s.iter().map(|v| v.code()));
                for v in s {
                    out.extend_from_slice(&v.to_wire());
                }
            }
        }
    }
}

impl PartialEq for Values<'_> {
    fn eq(&self, other: &Values<'_>) -> bool {
        self.iter().eq(other.iter())
    }
}

impl fmt::Debug for Values<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// One value list, its strings borrowed from the datagram (or from a producer).
/// Strings are bytes without the NUL; empty means unset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValueList<'a> {
    /// Host name.
    pub host: &'a [u8],
    /// Plugin name.
    pub plugin: &'a [u8],
    /// Plugin instance, often empty.
    pub plugin_instance: &'a [u8],
    /// Type, a `types.db` name.
    pub type_: &'a [u8],
    /// Type instance, often empty.
    pub type_instance: &'a [u8],
    /// When the values were read.
    pub time: CdTime,
    /// The reading interval.
    pub interval: CdTime,
    /// One value per data source of the type.
    pub values: Values<'a>,
}

impl<'a> ValueList<'a> {
    /// The five identity strings: host, plugin, plugin instance, type, type instance.
    pub fn identity(&self) -> [&'a [u8]; 5] {
        [
            self.host,
            self.plugin,
            self.plugin_instance,
            self.type_,
            self.type_instance,
        ]
    }
}

/// Appends collectd's identifier (`FORMAT_VL`),
/// `host/plugin[-plugin_instance]/type[-type_instance]`, of an identity as
/// [`ValueList::identity`] gives it.
pub fn write_identifier(out: &mut Vec<u8>, [host, plugin, pinst, type_, tinst]: [&[u8]; 5]) {
    out.extend_from_slice(host);
    out.push(b'/');
    out.extend_from_slice(plugin);
    if !pinst.is_empty() {
        out.push(b'-');
        out.extend_from_slice(pinst);
    }
    out.push(b'/');
    out.extend_from_slice(type_);
    if !tinst.is_empty() {
        out.push(b'-');
        out.extend_from_slice(tinst);
    }
}

/// A notification's severity (`NOTIF_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// 1.
    Failure,
    /// 2.
    Warning,
    /// 4.
    Okay,
}

impl Severity {
    /// From collectd's int; `None` for anything else, which collectd ignores.
    pub fn from_code(code: i32) -> Option<Severity> {
        match code {
            1 => Some(Severity::Failure),
            2 => Some(Severity::Warning),
            4 => Some(Severity::Okay),
            _ => None,
        }
    }

    /// The word collectd prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Failure => "FAILURE",
            Severity::Warning => "WARNING",
            Severity::Okay => "OKAY",
        }
    }
}

/// A notification: the identity in force when its message part arrived.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Notification<'a> {
    /// Host name.
    pub host: &'a [u8],
    /// Plugin name.
    pub plugin: &'a [u8],
    /// Plugin instance.
    pub plugin_instance: &'a [u8],
    /// Type.
    pub type_: &'a [u8],
    /// Type instance.
    pub type_instance: &'a [u8],
    /// When it happened.
    pub time: CdTime,
    /// How bad.
    pub severity: Severity,
    /// The text, non-empty.
    pub message: &'a [u8],
}

impl<'a> Notification<'a> {
    /// The five identity strings, as [`ValueList::identity`].
    pub fn identity(&self) -> [&'a [u8]; 5] {
        [
            self.host,
            self.plugin,
            self.plugin_instance,
            self.type_,
            self.type_instance,
        ]
    }
}

/// What a datagram carries, in order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Record<'a> {
    /// A value list (dispatched by a values part).
    Values(ValueList<'a>),
    /// A notification (dispatched by a message part).
    Notification(Notification<'a>),
}
