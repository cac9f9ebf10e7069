//! Datagram -> records, as `network.c`'s `parse_packet` reads them.

use super::security::{
    self, Security, SecurityLevel, ENCRYPTION_OVERHEAD_BYTES, SIGNATURE_HEADER_BYTES,
};
use super::{part, CdTime, Notification, Record, Severity, ValueList, Values};
use super::{MESSAGE_BYTES_MAX, NAME_BYTES_MAX};

/// Encrypted parts inside encrypted parts are followed this deep. collectd recurses
/// without a bound (each level costs 43 bytes); no sender nests at all.
const NESTING_MAX: u32 = 8;

/// Why (part of) a datagram was dropped. A closed set, so counters are an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reject {
    /// A part's length is under 4; the rest of the packet is dropped.
    PartTooShort = 0,
    /// A part's length runs past the datagram; the rest is dropped.
    PartOverrunsPacket,
    /// 1 to 4 bytes after the last part (collectd: "Received truncated packet").
    TrailingBytes,
    /// A numeric part with fewer than 12 bytes left in the packet; the rest is dropped.
    BadNumber,
    /// A string part that is empty of even its NUL or does not end with NUL; the rest
    /// is dropped.
    BadString,
    /// A string longer than collectd's buffer (127 characters; 255 for messages).
    StringTooLong,
    /// A values part whose length is not `6 + 9n`, or too short; the rest is dropped.
    BadValues,
    /// A value type code other than 0-3; the rest is dropped.
    BadValueType,
    /// A values part with no values (no type has zero data sources).
    NoValues,
    /// A values part while time is 0 or host, plugin or type is empty: not dispatched.
    IncompleteValueList,
    /// A message part with a bad severity, time 0 or an empty message: not dispatched.
    BadNotification,
    /// Plain parts at security level `sign` (counted once per packet).
    UnsignedIgnored,
    /// Plain or signed parts at security level `encrypt` (counted once per packet).
    UnencryptedIgnored,
    /// A signature part with a bad length; the rest is dropped.
    BadSignaturePart,
    /// A signed or encrypted part from a user not in the auth file.
    UnknownUser,
    /// The HMAC does not match (wrong password or altered data); the rest is dropped.
    BadSignature,
    /// An encryption part with a bad length or user name length.
    BadEncryptionPart,
    /// An encrypted part reached a listener without an auth file.
    NoAuthFile,
    /// The decrypted SHA-1 does not match (wrong password or altered data).
    BadChecksum,
    /// Encrypted parts nested deeper than we follow.
    NestedTooDeep,
}

impl Reject {
    /// Number of reasons.
    pub const COUNT: usize = 20;
    /// Every reason, in counter order.
    pub const ALL: [Reject; Reject::COUNT] = [
        Reject::PartTooShort,
        Reject::PartOverrunsPacket,
        Reject::TrailingBytes,
        Reject::BadNumber,
        Reject::BadString,
        Reject::StringTooLong,
        Reject::BadValues,
        Reject::BadValueType,
        Reject::NoValues,
        Reject::IncompleteValueList,
        Reject::BadNotification,
        Reject::UnsignedIgnored,
        Reject::UnencryptedIgnored,
        Reject::BadSignaturePart,
        Reject::UnknownUser,
        Reject::BadSignature,
        Reject::BadEncryptionPart,
        Reject::NoAuthFile,
        Reject::BadChecksum,
        Reject::NestedTooDeep,
    ];

    /// The reason as it appears in stats.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::PartTooShort => "part_too_short",
            Reject::PartOverrunsPacket => "part_overruns_packet",
            Reject::TrailingBytes => "trailing_bytes",
            Reject::BadNumber => "bad_number",
            Reject::BadString => "bad_string",
            Reject::StringTooLong => "string_too_long",
            Reject::BadValues => "bad_values",
            Reject::BadValueType => "bad_value_type",
            Reject::NoValues => "no_values",
            Reject::IncompleteValueList => "incomplete_value_list",
            Reject::BadNotification => "bad_notification",
            Reject::UnsignedIgnored => "unsigned_ignored",
            Reject::UnencryptedIgnored => "unencrypted_ignored",
            Reject::BadSignaturePart => "bad_signature_part",
            Reject::UnknownUser => "unknown_user",
            Reject::BadSignature => "bad_signature",
            Reject::BadEncryptionPart => "bad_encryption_part",
            Reject::NoAuthFile => "no_auth_file",
            Reject::BadChecksum => "bad_checksum",
            Reject::NestedTooDeep => "nested_too_deep",
        }
    }
}

const _: () = assert!(Reject::NestedTooDeep as usize + 1 == Reject::COUNT);

/// Plain counters of what the decoder saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Datagrams given to [`Decoder::decode`].
    pub packets: u64,
    /// Value lists dispatched.
    pub value_lists: u64,
    /// Notifications dispatched.
    pub notifications: u64,
    /// Signature parts accepted unverified because no auth file is configured (what
    /// collectd does at level `none`).
    pub signatures_unverified: u64,
    /// Rejects, indexed by `Reject as usize`.
    pub rejects: [u64; Reject::COUNT],
}

impl DecodeStats {
    /// The count for one reason.
    pub fn rejected(&self, reason: Reject) -> u64 {
        self.rejects[reason as usize]
    }

    /// All rejects.
    pub fn rejected_total(&self) -> u64 {
        self.rejects.iter().sum()
    }
}

/// The fields a packet carries from part to part (`vl` and `n` in `parse_packet`,
/// which always hold the same identity and time).
#[derive(Clone, Copy, Default)]
struct State<'a> {
    host: &'a [u8],
    plugin: &'a [u8],
    plugin_instance: &'a [u8],
    type_: &'a [u8],
    type_instance: &'a [u8],
    time: u64,
    interval: u64,
    severity: i32,
}

/// Whether the content being read came inside a verified signature or a decrypted part
/// (`PP_SIGNED`, `PP_ENCRYPTED`).
#[derive(Clone, Copy, Default)]
struct Flags {
    signed: bool,
    encrypted: bool,
}

/// A listener's decoder: its security settings and counters.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    security: Security,
    stats: DecodeStats,
}

impl Decoder {
    /// A decoder accepting what a `Listen` block with these settings accepts.
    pub fn new(security: Security) -> Decoder {
        Decoder {
            security,
            stats: DecodeStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &DecodeStats {
        &self.stats
    }

    /// Counters so far, and zero them (a caller adding them up elsewhere).
    pub fn take_stats(&mut self) -> DecodeStats {
        std::mem::take(&mut self.stats)
    }

    /// Decodes one datagram, calling `sink` with each record in order. Encrypted parts
    /// are decrypted in place, so `packet` is altered. Records already given to `sink`
    /// stand when a later part is malformed.
    pub fn decode<'a, F: FnMut(Record<'a>)>(&mut self, packet: &'a mut [u8], sink: &mut F) {
        self.stats.packets += 1;
        self.parse(packet, Flags::default(), 0, sink);
    }

    fn reject(&mut self, reason: Reject) {
        self.stats.rejects[reason as usize] += 1;
    }

    /// `parse_packet`: one level of parts. Returns at the end or at the first malformed
    /// part (collectd's `break`).
    fn parse<'a, F: FnMut(Record<'a>)>(
        &mut self,
        mut buf: &'a mut [u8],
        mut flags: Flags,
        depth: u32,
        sink: &mut F,
    ) {
        let mut st = State::default();
        let mut ignored_counted = false;
        let level = self.security.level;
        loop {
            let remaining = buf.len();
            if remaining <= 4 {
                if remaining > 0 {
                    self.reject(Reject::TrailingBytes);
                }
                return;
            }
            let kind = u16::from_be_bytes([buf[0], buf[1]]);
            let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
            if len > remaining {
                return self.reject(Reject::PartOverrunsPacket);
            }
            if len < 4 {
                return self.reject(Reject::PartTooShort);
            }

            if kind == part::ENCRYPTION {
                let this = split_part(&mut buf, len);
                let payload = match self.decrypt(this, remaining) {
                    Ok(p) => p,
                    Err(r) => return self.reject(r),
                };
                if depth >= NESTING_MAX {
                    return self.reject(Reject::NestedTooDeep);
                }
                let inner = Flags {
                    encrypted: true,
                    ..flags
                };
                self.parse(payload, inner, depth + 1, sink);
                continue;
            }
            if level == SecurityLevel::Encrypt && !flags.encrypted {
                if !ignored_counted {
                    ignored_counted = true;
                    self.reject(Reject::UnencryptedIgnored);
                }
                split_part(&mut buf, len);
                continue;
            }
            if kind == part::SIGNATURE {
                if remaining <= SIGNATURE_HEADER_BYTES || len <= SIGNATURE_HEADER_BYTES {
                    return self.reject(Reject::BadSignaturePart);
                }
                let Some(auth) = &self.security.auth else {
                    // collectd: "can't verify it because no user DB has been
                    // configured. Will accept it." The part is skipped and the
                    // content after it read as before.
                    self.stats.signatures_unverified += 1;
                    split_part(&mut buf, len);
                    continue;
                };
                let Some(user) = auth.get(&buf[SIGNATURE_HEADER_BYTES..len]) else {
                    return self.reject(Reject::UnknownUser);
                };
                // The MAC covers the user name and everything after the part.
                if !security::mac_ok(user, &buf[SIGNATURE_HEADER_BYTES..], &buf[4..36]) {
                    return self.reject(Reject::BadSignature);
                }
                // collectd reads the rest as a new packet (fresh state) and then stops.
                split_part(&mut buf, len);
                flags.signed = true;
                st = State::default();
                ignored_counted = false;
                continue;
            }
            if level == SecurityLevel::Sign && !flags.encrypted && !flags.signed {
                if !ignored_counted {
                    ignored_counted = true;
                    self.reject(Reject::UnsignedIgnored);
                }
                split_part(&mut buf, len);
                continue;
            }

            match kind {
                part::VALUES => {
                    // collectd wants 15 bytes left even for zero values.
                    if remaining < 15 {
                        return self.reject(Reject::BadValues);
                    }
                    let n = u16::from_be_bytes([buf[4], buf[5]]) as usize;
                    if len != 6 + 9 * n {
                        return self.reject(Reject::BadValues);
                    }
                    let this: &'a [u8] = split_part(&mut buf, len);
                    let (types, data) = this[6..].split_at(n);
                    if types.iter().any(|&t| t > 3) {
                        return self.reject(Reject::BadValueType);
                    }
                    if n == 0 {
                        self.reject(Reject::NoValues);
                    } else if st.time == 0
                        || st.host.is_empty()
                        || st.plugin.is_empty()
                        || st.type_.is_empty()
                    {
                        self.reject(Reject::IncompleteValueList);
                    } else {
                        self.stats.value_lists += 1;
                        sink(Record::Values(ValueList {
                            host: st.host,
                            plugin: st.plugin,
                            plugin_instance: st.plugin_instance,
                            type_: st.type_,
                            type_instance: st.type_instance,
                            time: CdTime(st.time),
                            interval: CdTime(st.interval),
                            values: Values::from_wire(types, data),
                        }));
                    }
                }
                part::TIME
                | part::TIME_HR
                | part::INTERVAL
                | part::INTERVAL_HR
                | part::SEVERITY => {
                    // collectd reads 8 bytes after the header whatever the length says,
                    // then steps over `len` bytes.
                    if remaining < 12 {
                        return self.reject(Reject::BadNumber);
                    }
                    let v = u64::from_be_bytes(buf[4..12].try_into().expect("8 bytes"));
                    split_part(&mut buf, len);
                    match kind {
                        part::TIME => st.time = v << 30,
                        part::TIME_HR => st.time = v,
                        part::INTERVAL => st.interval = v << 30,
                        part::INTERVAL_HR => st.interval = v,
                        _ => st.severity = v as i32,
                    }
                }
                part::HOST
                | part::PLUGIN
                | part::PLUGIN_INSTANCE
                | part::TYPE
                | part::TYPE_INSTANCE
                | part::MESSAGE => {
                    let this: &'a [u8] = split_part(&mut buf, len);
                    let max = if kind == part::MESSAGE {
                        MESSAGE_BYTES_MAX
                    } else {
                        NAME_BYTES_MAX
                    };
                    let s = match string(this, max) {
                        Ok(s) => s,
                        Err(r) => return self.reject(r),
                    };
                    match kind {
                        part::HOST => st.host = s,
                        part::PLUGIN => st.plugin = s,
                        part::PLUGIN_INSTANCE => st.plugin_instance = s,
                        part::TYPE => st.type_ = s,
                        part::TYPE_INSTANCE => st.type_instance = s,
                        _ => self.notify(&st, s, sink),
                    }
                }
                // Unknown parts (and signature parts at levels that skip them) are
                // stepped over.
                _ => {
                    split_part(&mut buf, len);
                }
            }
        }
    }

    fn notify<'a, F: FnMut(Record<'a>)>(
        &mut self,
        st: &State<'a>,
        message: &'a [u8],
        sink: &mut F,
    ) {
        let severity = Severity::from_code(st.severity);
        match severity {
            Some(severity) if st.time != 0 && !message.is_empty() => {
                self.stats.notifications += 1;
                sink(Record::Notification(Notification {
                    host: st.host,
                    plugin: st.plugin,
                    plugin_instance: st.plugin_instance,
                    type_: st.type_,
                    type_instance: st.type_instance,
                    time: CdTime(st.time),
                    severity,
                    message,
                }));
            }
            _ => self.reject(Reject::BadNotification),
        }
    }

    /// `parse_part_encr_aes256`: checks, decrypts `this` (one whole part) in place and
    /// returns the payload. `remaining` is what was left of the packet at the part.
    fn decrypt<'a>(&self, this: &'a mut [u8], remaining: usize) -> Result<&'a mut [u8], Reject> {
        let len = this.len();
        if remaining <= ENCRYPTION_OVERHEAD_BYTES || len <= ENCRYPTION_OVERHEAD_BYTES {
            return Err(Reject::BadEncryptionPart);
        }
        let user_len = u16::from_be_bytes([this[4], this[5]]) as usize;
        if user_len == 0 || user_len > len - (ENCRYPTION_OVERHEAD_BYTES + 1) {
            return Err(Reject::BadEncryptionPart);
        }
        let auth = self.security.auth.as_ref().ok_or(Reject::NoAuthFile)?;
        let user = auth
            .get(&this[6..6 + user_len])
            .ok_or(Reject::UnknownUser)?;
        let (head, sealed) = this.split_at_mut(6 + user_len + 16);
        let iv: &[u8; 16] = head[6 + user_len..].try_into().expect("16 bytes");
        security::ofb(&user.aes_key, iv, sealed);
        let (hash, payload) = sealed.split_at_mut(20);
        if security::sha1(payload) != *hash {
            return Err(Reject::BadChecksum);
        }
        Ok(payload)
    }
}

/// Splits the part of `len` bytes off the front of `buf` and returns it.
fn split_part<'a>(buf: &mut &'a mut [u8], len: usize) -> &'a mut [u8] {
    let (this, rest) = std::mem::take(buf).split_at_mut(len);
    *buf = rest;
    this
}

/// `parse_part_string`: the bytes before the first NUL of a NUL-terminated body.
fn string(this: &[u8], max: usize) -> Result<&[u8], Reject> {
    let body = &this[4..];
    if body.is_empty() {
        return Err(Reject::BadString);
    }
    if body.len() > max {
        return Err(Reject::StringTooLong);
    }
    if body[body.len() - 1] != 0 {
        return Err(Reject::BadString);
    }
    Ok(security::until_nul(body))
}
