//! Value lists -> packets, as collectd's sender packs them: only the fields that changed
//! since the previous value list in the packet, as many value lists as fit.

use super::security::{
    self, IvSource, SendSecurity, ENCRYPTION_OVERHEAD_BYTES, SIGNATURE_HEADER_BYTES,
};
use super::{part, ValueList, NAME_BYTES_MAX};

/// collectd's default `MaxPacketSize`.
pub const MAX_PACKET_BYTES_DEFAULT: usize = 1452;
/// The smallest packet that holds any valid value list whole.
const MAX_PACKET_BYTES_MIN: usize = 1024;

/// How to pack.
#[derive(Debug, Clone)]
pub struct EncoderConfig {
    /// Largest datagram, security parts included (collectd allows 1024 to 65535).
    pub max_packet_bytes: usize,
    /// Plain, signed or encrypted.
    pub security: SendSecurity,
}

impl Default for EncoderConfig {
    fn default() -> EncoderConfig {
        EncoderConfig {
            max_packet_bytes: MAX_PACKET_BYTES_DEFAULT,
            security: SendSecurity::None,
        }
    }
}

/// Why a value list was not packed. A closed set, so counters are an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EncodeReject {
    /// Host, plugin or type empty, or time 0: a receiver would not dispatch it.
    Incomplete = 0,
    /// A string over 127 bytes.
    StringTooLong,
    /// A string with a NUL inside, which a receiver would cut.
    StringHasNul,
    /// No values.
    NoValues,
    /// More values than fit in one packet.
    TooBig,
}

impl EncodeReject {
    /// Number of reasons.
    pub const COUNT: usize = 5;

    /// The reason as it appears in stats.
    pub fn as_str(self) -> &'static str {
        match self {
            EncodeReject::Incomplete => "incomplete",
            EncodeReject::StringTooLong => "string_too_long",
            EncodeReject::StringHasNul => "string_has_nul",
            EncodeReject::NoValues => "no_values",
            EncodeReject::TooBig => "too_big",
        }
    }
}

const _: () = assert!(EncodeReject::TooBig as usize + 1 == EncodeReject::COUNT);

/// Plain counters of what the encoder did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodeStats {
    /// Value lists packed.
    pub value_lists: u64,
    /// Packets handed out.
    pub packets: u64,
    /// Bytes handed out.
    pub bytes: u64,
    /// Value lists refused, indexed by `EncodeReject as usize`.
    pub rejects: [u64; EncodeReject::COUNT],
}

/// The five identity strings, in the order the daemon writes them.
const STRING_PARTS: [u16; 5] = [
    part::HOST,
    part::PLUGIN,
    part::PLUGIN_INSTANCE,
    part::TYPE,
    part::TYPE_INSTANCE,
];

/// Packs value lists into one packet at a time; hands each full packet to a sink.
pub struct Encoder {
    max_packet_bytes: usize,
    security: SendSecurity,
    iv: Option<IvSource>,
    /// The packet: the security header (if any), then the plain parts.
    buf: Vec<u8>,
    /// Length of the security header at the front of `buf`.
    header_bytes: usize,
    /// Where in `buf` each identity string was last written (empty: never, or cleared).
    last: [(usize, usize); 5],
    last_time: u64,
    last_interval: u64,
    /// Value lists in the packet being filled.
    pending: usize,
    stats: EncodeStats,
    #[cfg(test)]
    fixed_iv: Option<[u8; 16]>,
}

impl Encoder {
    /// An encoder; `max_packet_bytes` is clamped to collectd's 1024..=65535.
    pub fn new(config: EncoderConfig) -> Encoder {
        let max_packet_bytes = config.max_packet_bytes.clamp(MAX_PACKET_BYTES_MIN, 65535);
        let header_bytes = match &config.security {
            SendSecurity::None => 0,
            SendSecurity::Sign(c) => SIGNATURE_HEADER_BYTES + c.name().len(),
            SendSecurity::Encrypt(c) => ENCRYPTION_OVERHEAD_BYTES + c.name().len(),
        };
        let iv = matches!(config.security, SendSecurity::Encrypt(_)).then(IvSource::new);
        let mut e = Encoder {
            max_packet_bytes,
            security: config.security,
            iv,
            buf: Vec::with_capacity(max_packet_bytes),
            header_bytes,
            last: [(0, 0); 5],
            last_time: 0,
            last_interval: 0,
            pending: 0,
            stats: EncodeStats::default(),
            #[cfg(test)]
            fixed_iv: None,
        };
        e.reset();
        e
    }

    /// Counters so far.
    pub fn stats(&self) -> &EncodeStats {
        &self.stats
    }

    /// Value lists waiting in the packet being filled.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Adds a value list; when it does not fit, the packet so far goes to `sink` first.
    /// A value list no receiver would take is refused and counted.
    pub fn push<F: FnMut(&[u8])>(
        &mut self,
        vl: &ValueList<'_>,
        sink: &mut F,
    ) -> Result<(), EncodeReject> {
        self.push_inner(vl, true, sink)
    }

    /// [`push`](Self::push) for a value list the [`Decoder`](super::Decoder) made: its
    /// strings were read up to their NUL and bounded to 127 bytes, so they are not
    /// checked again (asserted in debug builds).
    pub fn push_decoded<F: FnMut(&[u8])>(
        &mut self,
        vl: &ValueList<'_>,
        sink: &mut F,
    ) -> Result<(), EncodeReject> {
        debug_assert!(check_strings(vl, [true; 5]).is_ok());
        self.push_inner(vl, false, sink)
    }

    fn push_inner<F: FnMut(&[u8])>(
        &mut self,
        vl: &ValueList<'_>,
        check: bool,
        sink: &mut F,
    ) -> Result<(), EncodeReject> {
        if let Err(r) = check_complete(vl) {
            self.stats.rejects[r as usize] += 1;
            return Err(r);
        }
        if self.header_bytes + bytes_alone(vl) > self.max_packet_bytes {
            self.stats.rejects[EncodeReject::TooBig as usize] += 1;
            return Err(EncodeReject::TooBig);
        }
        let mut plan = self.plan(vl);
        // Only strings that are written need checking: an unchanged one was checked
        // when it was written into this packet.
        let strings_ok = |changed| {
            if check {
                check_strings(vl, changed)
            } else {
                Ok(())
            }
        };
        if let Err(r) = strings_ok(plan.1) {
            self.stats.rejects[r as usize] += 1;
            return Err(r);
        }
        if self.buf.len() + plan.0 > self.max_packet_bytes {
            self.flush(sink);
            plan = self.plan(vl);
            if let Err(r) = strings_ok(plan.1) {
                self.stats.rejects[r as usize] += 1;
                return Err(r);
            }
        }
        let (need, changed) = plan;
        let before = self.buf.len();
        self.write(vl, changed);
        debug_assert_eq!(self.buf.len() - before, need);
        self.pending += 1;
        self.stats.value_lists += 1;
        Ok(())
    }

    /// Sends the packet being filled, if it holds anything.
    pub fn flush<F: FnMut(&[u8])>(&mut self, sink: &mut F) {
        if self.pending == 0 {
            return;
        }
        self.seal();
        debug_assert!(self.buf.len() <= self.max_packet_bytes);
        self.stats.packets += 1;
        self.stats.bytes += self.buf.len() as u64;
        sink(&self.buf);
        self.reset();
    }

    /// Empties the packet: security header only, state all empty.
    fn reset(&mut self) {
        self.buf.clear();
        self.last = [(0, 0); 5];
        self.last_time = 0;
        self.last_interval = 0;
        self.pending = 0;
        match &self.security {
            SendSecurity::None => {}
            SendSecurity::Sign(c) => {
                self.buf.extend_from_slice(&part::SIGNATURE.to_be_bytes());
                self.buf
                    .extend_from_slice(&(self.header_bytes as u16).to_be_bytes());
                self.buf.extend_from_slice(&[0; 32]);
                self.buf.extend_from_slice(c.name());
            }
            SendSecurity::Encrypt(c) => {
                self.buf.extend_from_slice(&part::ENCRYPTION.to_be_bytes());
                self.buf.extend_from_slice(&[0, 0]); // length, at seal
                self.buf
                    .extend_from_slice(&(c.name().len() as u16).to_be_bytes());
                self.buf.extend_from_slice(c.name());
                self.buf.extend_from_slice(&[0; 16 + 20]); // IV and SHA-1, at seal
            }
        }
        debug_assert_eq!(self.buf.len(), self.header_bytes);
    }

    /// Every later packet uses this IV: only for reproducing fixed test vectors.
    #[cfg(test)]
    pub(crate) fn fix_iv(&mut self, iv: [u8; 16]) {
        self.fixed_iv = Some(iv);
    }

    /// Signs or encrypts the finished packet in place.
    fn seal(&mut self) {
        match &self.security {
            SendSecurity::None => {}
            SendSecurity::Sign(c) => {
                let tag = security::mac(&c.user, &self.buf[SIGNATURE_HEADER_BYTES..]);
                self.buf[4..36].copy_from_slice(&tag);
            }
            SendSecurity::Encrypt(c) => {
                let len = self.buf.len() as u16;
                self.buf[2..4].copy_from_slice(&len.to_be_bytes());
                let iv = self
                    .iv
                    .as_mut()
                    .expect("IV source when encrypting")
                    .next_iv();
                #[cfg(test)]
                let iv = self.fixed_iv.unwrap_or(iv);
                let at = 6 + c.name().len();
                self.buf[at..at + 16].copy_from_slice(&iv);
                let hash = security::sha1(&self.buf[self.header_bytes..]);
                self.buf[at + 16..at + 36].copy_from_slice(&hash);
                security::ofb(&c.user.aes_key, &iv, &mut self.buf[at + 16..]);
            }
        }
    }

    fn string_changed(&self, i: usize, s: &[u8]) -> bool {
        let (start, end) = self.last[i];
        self.buf[start..end] != *s
    }

    /// The bytes `vl` adds to the packet being filled, and which of its identity strings
    /// differ from the packet's state (those are written).
    fn plan(&self, vl: &ValueList<'_>) -> (usize, [bool; 5]) {
        let mut need = 6 + 9 * vl.values.len();
        let mut changed = [false; 5];
        for (i, s) in vl.identity().into_iter().enumerate() {
            changed[i] = self.string_changed(i, s);
            if changed[i] {
                need += 5 + s.len();
            }
        }
        if vl.time.0 != self.last_time {
            need += 12;
        }
        if vl.interval.0 != self.last_interval {
            need += 12;
        }
        (need, changed)
    }

    /// Appends `vl` with the string parts `changed` (from [`Encoder::plan`]) marks.
    fn write(&mut self, vl: &ValueList<'_>, changed: [bool; 5]) {
        let s = vl.identity();
        // Daemon order: host, time, interval, plugin, plugin instance, type, type instance.
        if changed[0] {
            self.write_string(0, s[0]);
        }
        if vl.time.0 != self.last_time {
            self.write_number(part::TIME_HR, vl.time.0);
            self.last_time = vl.time.0;
        }
        if vl.interval.0 != self.last_interval {
            self.write_number(part::INTERVAL_HR, vl.interval.0);
            self.last_interval = vl.interval.0;
        }
        for i in 1..s.len() {
            if changed[i] {
                self.write_string(i, s[i]);
            }
        }
        let len = 6 + 9 * vl.values.len();
        self.buf.extend_from_slice(&part::VALUES.to_be_bytes());
        self.buf.extend_from_slice(&(len as u16).to_be_bytes());
        vl.values.write_body(&mut self.buf);
    }

    /// Writes a changed string part (an empty one clears the field).
    fn write_string(&mut self, i: usize, s: &[u8]) {
        self.buf.extend_from_slice(&STRING_PARTS[i].to_be_bytes());
        self.buf
            .extend_from_slice(&((5 + s.len()) as u16).to_be_bytes());
        let start = self.buf.len();
        self.buf.extend_from_slice(s);
        self.last[i] = (start, self.buf.len());
        self.buf.push(0);
    }

    fn write_number(&mut self, kind: u16, v: u64) {
        self.buf.extend_from_slice(&kind.to_be_bytes());
        self.buf.extend_from_slice(&12u16.to_be_bytes());
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
}

/// Bytes a value list takes as the first in a packet (every set field written).
fn bytes_alone(vl: &ValueList<'_>) -> usize {
    let strings: usize = vl
        .identity()
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| 5 + s.len())
        .sum();
    let numbers = 12 * (usize::from(vl.time.0 != 0) + usize::from(vl.interval.0 != 0));
    6 + 9 * vl.values.len() + strings + numbers
}

/// What no receiver would take, strings aside.
fn check_complete(vl: &ValueList<'_>) -> Result<(), EncodeReject> {
    if vl.host.is_empty() || vl.plugin.is_empty() || vl.type_.is_empty() || vl.time.0 == 0 {
        return Err(EncodeReject::Incomplete);
    }
    if vl.values.is_empty() {
        return Err(EncodeReject::NoValues);
    }
    Ok(())
}

/// The identity strings to be written (`changed`) that no receiver would take whole.
fn check_strings(vl: &ValueList<'_>, changed: [bool; 5]) -> Result<(), EncodeReject> {
    for (s, _) in vl.identity().iter().zip(changed).filter(|(_, c)| *c) {
        if s.len() >= NAME_BYTES_MAX {
            return Err(EncodeReject::StringTooLong);
        }
        if memchr::memchr(0, s).is_some() {
            return Err(EncodeReject::StringHasNul);
        }
    }
    Ok(())
}
