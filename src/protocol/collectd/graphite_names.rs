//! collectd value lists -> graphite plaintext lines, exactly as collectd 5.12's
//! write_graphite (`format_graphite.c`) writes them, options included.
//!
//! Per data source one line `key value seconds\r\n` (collectd ends lines with CRLF).
//! The key is `{Prefix}{host}{Postfix}.{plugin}[-{plugin_instance}].{type}[-{type_instance}][.{ds}]`
//! or, with `use_tags`, `{Prefix}{plugin}.{type}[.{ds}]{Postfix};host=..;plugin=..[..]`.
//! Values follow the data source's kind in types.db (not the wire code; collectd
//! reinterprets the 8 bytes): gauges as `%.15g`; with `store_rates`, counters, derives
//! and absolutes as a rate `%f` from per-series state kept here as collectd's value
//! cache keeps it; otherwise as integers.
//!
//! Seen from collectd 5.12 and followed here: `/` in any identity field is written as
//! `_` whatever the escape character; `reverse_host` applies with tags too; a rate outside
//! the data source's min/max in types.db is `nan`.
//!
//! Not modelled: collectd forgets a series' rate state when it has not been updated for
//! `Timeout` × interval of wall-clock time (its cache timeout); [`GraphiteNamer::forget`]
//! lets the caller do the same.

use std::collections::HashMap;
use std::io::Write as _;

use super::types_db::{DataSource, DsType, TypesDb};
use super::{write_identifier, CdTime, Value, ValueList};

/// Bytes collectd replaces in the whole key (`GRAPHITE_FORBIDDEN`).
const FORBIDDEN: &[u8] = b" \t\"\\:!,/()\n\r";

/// write_graphite's options, under the same names as its config keys.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphiteOptions {
    /// `Prefix`, put in literally (and then escaped with the whole key).
    pub prefix: String,
    /// `Postfix`, put in literally after the host (after the metric with tags).
    pub postfix: String,
    /// `EscapeCharacter`, default `_`; must not itself be a forbidden byte.
    pub escape_character: u8,
    /// `SeparateInstances`: `.` instead of `-` before instances.
    pub separate_instances: bool,
    /// `AlwaysAppendDS`: the data-source name even for single-source types.
    pub always_append_ds: bool,
    /// `PreserveSeparator`: keep `.` inside host, plugin, type and instances.
    pub preserve_separator: bool,
    /// `DropDuplicateFields`: `cpu-0.cpu-idle` -> `cpu-0.idle`, `load.load.x` -> `load.x`.
    pub drop_duplicate_fields: bool,
    /// `ReverseHost`: `a.b.c` -> `c.b.a` before escaping.
    pub reverse_host: bool,
    /// `UseTags`: graphite 1.1 tagged names.
    pub use_tags: bool,
    /// `StoreRates` (collectd's default: on).
    pub store_rates: bool,
    /// The receiving daemon's `Interval`, used for a value list that carries none
    /// (collectd fills it in on dispatch); matters only for a first ABSOLUTE rate.
    pub interval_default: CdTime,
}

impl Default for GraphiteOptions {
    fn default() -> GraphiteOptions {
        GraphiteOptions {
            prefix: String::new(),
            postfix: String::new(),
            escape_character: b'_',
            separate_instances: false,
            always_append_ds: false,
            preserve_separator: false,
            drop_duplicate_fields: false,
            reverse_host: false,
            use_tags: false,
            store_rates: true,
            interval_default: CdTime::from_secs(10),
        }
    }
}

/// Options collectd itself would refuse or crash on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphiteOptionsError {
    /// collectd asserts the escape character is not one it escapes.
    #[error("escape_character {0:?} is itself a character graphite forbids")]
    ForbiddenEscape(char),
}

/// Why a value list wrote no lines. A closed set, so counters are an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum GraphiteReject {
    /// The type is not in types.db (collectd drops it on dispatch).
    UnknownType = 0,
    /// The number of values differs from the type's data sources (dropped likewise).
    ValueCount,
}

impl GraphiteReject {
    /// Number of reasons.
    pub const COUNT: usize = 2;

    /// The reason as it appears in stats.
    pub fn as_str(self) -> &'static str {
        match self {
            GraphiteReject::UnknownType => "unknown_type",
            GraphiteReject::ValueCount => "value_count",
        }
    }
}

const _: () = assert!(GraphiteReject::ValueCount as usize + 1 == GraphiteReject::COUNT);

/// Plain counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GraphiteStats {
    /// Value lists mapped.
    pub value_lists: u64,
    /// Lines written.
    pub lines: u64,
    /// Series with rate state.
    pub series: u64,
    /// New series not given rate state because `series_max` series have it: their
    /// counter and derive rates are written as unknown (`nan`), as for a first sample.
    pub series_full: u64,
    /// Value lists refused, indexed by `GraphiteReject as usize`.
    pub rejects: [u64; GraphiteReject::COUNT],
}

/// collectd's value-cache entry for one series: the last raw values and rates.
#[derive(Debug)]
struct RateState {
    last_time: CdTime,
    raw: Vec<u64>,
    rates: Vec<f64>,
}

/// Maps value lists to graphite lines; owns the per-series rate state.
#[derive(Debug)]
pub struct GraphiteNamer {
    options: GraphiteOptions,
    rates: HashMap<Vec<u8>, RateState>,
    /// Series rate state is kept for, at most.
    series_max: usize,
    /// Reused buffers: the series key and the escaped name parts.
    key: Vec<u8>,
    parts: [Vec<u8>; 5],
    tmp_plugin: Vec<u8>,
    tmp_type: Vec<u8>,
    rate_buf: Vec<f64>,
    num: Vec<u8>,
    stats: GraphiteStats,
}

const HOST: usize = 0;
const PLUGIN: usize = 1;
const PLUGIN_INSTANCE: usize = 2;
const TYPE: usize = 3;
const TYPE_INSTANCE: usize = 4;

impl GraphiteNamer {
    /// A namer with no rate state.
    pub fn new(options: GraphiteOptions) -> Result<GraphiteNamer, GraphiteOptionsError> {
        if FORBIDDEN.contains(&options.escape_character) || options.escape_character == 0 {
            return Err(GraphiteOptionsError::ForbiddenEscape(
                options.escape_character as char,
            ));
        }
        Ok(GraphiteNamer {
            options,
            rates: HashMap::new(),
            series_max: usize::MAX,
            key: Vec::new(),
            parts: Default::default(),
            tmp_plugin: Vec::new(),
            tmp_type: Vec::new(),
            rate_buf: Vec::new(),
            num: Vec::new(),
            stats: GraphiteStats::default(),
        })
    }

    /// Keeps rate state (`store_rates`) for at most `series_max` series: a new series
    /// past it is written as a first sample is, and counted in `series_full`.
    pub fn set_series_max(&mut self, series_max: usize) {
        self.series_max = series_max;
    }

    /// The options in force.
    pub fn options(&self) -> &GraphiteOptions {
        &self.options
    }

    /// Counters so far.
    pub fn stats(&self) -> &GraphiteStats {
        &self.stats
    }

    /// Drops the rate state of series not wanted any more, as collectd's cache timeout
    /// does; `keep` sees collectd's identifier (`host/plugin[-pi]/type[-ti]`) and the
    /// series' last time.
    pub fn forget(&mut self, mut keep: impl FnMut(&[u8], CdTime) -> bool) {
        self.rates.retain(|k, s| keep(k, s.last_time));
        self.stats.series = self.rates.len() as u64;
    }

    /// Appends one line per data source of `vl` to `out`; returns how many.
    pub fn write(
        &mut self,
        types: &TypesDb,
        vl: &ValueList<'_>,
        out: &mut Vec<u8>,
    ) -> Result<usize, GraphiteReject> {
        let Some(ds) = types.get(vl.type_) else {
            return Err(self.reject(GraphiteReject::UnknownType));
        };
        self.write_sources(ds, vl, out)
    }

    /// [`write`](Self::write) with the data sources of `vl`'s type already looked up.
    pub fn write_sources(
        &mut self,
        ds: &[DataSource],
        vl: &ValueList<'_>,
        out: &mut Vec<u8>,
    ) -> Result<usize, GraphiteReject> {
        let ident = vl.identity();
        if ds.len() != vl.values.len() {
            return Err(self.reject(GraphiteReject::ValueCount));
        }
        self.stats.value_lists += 1;
        let store_rates = self.options.store_rates;
        if store_rates {
            self.update_rates(ds, vl);
        }
        self.escape_parts(ident);
        if !self.options.use_tags {
            self.join_instances();
        }
        let seconds = vl.time.as_secs_rounded() as u32;
        for (i, source) in ds.iter().enumerate() {
            let ds_name =
                (self.options.always_append_ds || ds.len() > 1).then_some(source.name.as_bytes());
            let start = out.len();
            if self.options.use_tags {
                self.name_tagged(ds_name, out);
            } else {
                self.name_plain(ds_name, out);
            }
            let esc = self.options.escape_character;
            for b in &mut out[start..] {
                if FORBIDDEN.contains(b) {
                    *b = esc;
                }
            }
            out.push(b' ');
            let bits = raw_bits(vl.values.get(i));
            match source.ds_type {
                DsType::Gauge => format_g15(f64::from_bits(bits), &mut self.num, out),
                _ if store_rates => format_f6(self.rate_buf[i], out),
                DsType::Counter | DsType::Absolute => {
                    let _ = write!(out, "{bits}");
                }
                DsType::Derive => {
                    let _ = write!(out, "{}", bits as i64);
                }
            }
            let _ = write!(out, " {seconds}\r\n");
        }
        self.stats.lines += ds.len() as u64;
        Ok(ds.len())
    }

    fn reject(&mut self, r: GraphiteReject) -> GraphiteReject {
        self.stats.rejects[r as usize] += 1;
        r
    }

    /// collectd's `uc_update` then `uc_get_rate`: leaves this value list's rates in
    /// `rate_buf`.
    fn update_rates(&mut self, ds: &[DataSource], vl: &ValueList<'_>) {
        self.key.clear();
        write_identifier(&mut self.key, vl.identity());
        let interval = if vl.interval.0 == 0 {
            self.options.interval_default
        } else {
            vl.interval
        };
        self.rate_buf.clear();
        match self.rates.get_mut(self.key.as_slice()) {
            None => {
                let mut state = RateState {
                    last_time: vl.time,
                    raw: Vec::with_capacity(vl.values.len()),
                    rates: Vec::with_capacity(vl.values.len()),
                };
                for (i, source) in ds.iter().enumerate() {
                    let bits = raw_bits(vl.values.get(i));
                    state.raw.push(bits);
                    state.rates.push(match source.ds_type {
                        DsType::Gauge => f64::from_bits(bits),
                        DsType::Counter | DsType::Derive => f64::NAN,
                        DsType::Absolute if interval.0 > 0 => bits as f64 / interval.as_secs_f64(),
                        DsType::Absolute => f64::NAN,
                    });
                }
                self.rate_buf.extend_from_slice(&state.rates);
                if self.rates.len() < self.series_max {
                    self.rates.insert(self.key.clone(), state);
                    self.stats.series += 1;
                } else {
                    self.stats.series_full += 1;
                }
            }
            Some(state) => {
                // collectd refuses an update that is not newer ("value too old") but
                // still writes the value list, with the rates it had.
                if vl.time > state.last_time {
                    let dt = CdTime(vl.time.0 - state.last_time.0).as_secs_f64();
                    for (i, source) in ds.iter().enumerate() {
                        let bits = raw_bits(vl.values.get(i));
                        let old = state.raw[i];
                        let rate = match source.ds_type {
                            DsType::Gauge => f64::from_bits(bits),
                            DsType::Counter => counter_diff(old, bits) as f64 / dt,
                            DsType::Derive => (bits as i64).wrapping_sub(old as i64) as f64 / dt,
                            DsType::Absolute => bits as f64 / dt,
                        };
                        // A rate outside the data source's bounds is unknown.
                        let out_of_bounds = rate < source.min || rate > source.max;
                        state.rates[i] = if out_of_bounds { f64::NAN } else { rate };
                        state.raw[i] = bits;
                    }
                    state.last_time = vl.time;
                }
                self.rate_buf.extend_from_slice(&state.rates);
            }
        }
    }

    /// `gr_copy_escape_part` on each identity field (with ReverseHost first).
    fn escape_parts(&mut self, ident: [&[u8]; 5]) {
        let esc = self.options.escape_character;
        // Tagged names keep their dots.
        let keep_dots = self.options.preserve_separator || self.options.use_tags;
        for (dst, src) in self.parts.iter_mut().zip(ident) {
            dst.clear();
            dst.extend_from_slice(src);
        }
        if self.options.reverse_host {
            let host = &mut self.parts[HOST];
            host.clear();
            for (n, label) in ident[HOST].rsplit(|&b| b == b'.').enumerate() {
                if n > 0 {
                    host.push(b'.');
                }
                host.extend_from_slice(label);
            }
        }
        for part in &mut self.parts {
            for b in part.iter_mut() {
                if (!keep_dots && *b == b'.') || is_c_space_or_cntrl(*b) {
                    *b = esc;
                } else if *b == b'/' {
                    // Always `_`, whatever the escape character (seen from collectd).
                    *b = b'_';
                }
            }
        }
    }

    /// The plain name's `plugin[-plugin_instance]` and `type[-type_instance]` (the same
    /// for every data source of a value list).
    fn join_instances(&mut self) {
        let o = &self.options;
        let sep = if o.separate_instances { b'.' } else { b'-' };
        let p = &self.parts;
        self.tmp_plugin.clear();
        self.tmp_plugin.extend_from_slice(&p[PLUGIN]);
        if !p[PLUGIN_INSTANCE].is_empty() {
            self.tmp_plugin.push(sep);
            self.tmp_plugin.extend_from_slice(&p[PLUGIN_INSTANCE]);
        }
        self.tmp_type.clear();
        if p[TYPE_INSTANCE].is_empty() {
            self.tmp_type.extend_from_slice(&p[TYPE]);
        } else if o.drop_duplicate_fields && p[PLUGIN] == p[TYPE] {
            self.tmp_type.extend_from_slice(&p[TYPE_INSTANCE]);
        } else {
            self.tmp_type.extend_from_slice(&p[TYPE]);
            self.tmp_type.push(sep);
            self.tmp_type.extend_from_slice(&p[TYPE_INSTANCE]);
        }
    }

    /// The plain name, from the parts [`GraphiteNamer::join_instances`] made.
    fn name_plain(&self, ds_name: Option<&[u8]>, out: &mut Vec<u8>) {
        let o = &self.options;
        let p = &self.parts;
        out.extend_from_slice(o.prefix.as_bytes());
        out.extend_from_slice(&p[HOST]);
        out.extend_from_slice(o.postfix.as_bytes());
        out.push(b'.');
        out.extend_from_slice(&self.tmp_plugin);
        let drop_type =
            ds_name.is_some() && o.drop_duplicate_fields && self.tmp_plugin == self.tmp_type;
        if !drop_type {
            out.push(b'.');
            out.extend_from_slice(&self.tmp_type);
        }
        if let Some(ds) = ds_name {
            out.push(b'.');
            out.extend_from_slice(ds);
        }
    }

    fn name_tagged(&self, ds_name: Option<&[u8]>, out: &mut Vec<u8>) {
        let o = &self.options;
        let p = &self.parts;
        let dupe_type = o.drop_duplicate_fields && p[PLUGIN] == p[TYPE];
        out.extend_from_slice(o.prefix.as_bytes());
        out.extend_from_slice(&p[PLUGIN]);
        if !dupe_type {
            out.push(b'.');
            out.extend_from_slice(&p[TYPE]);
        }
        if let Some(ds) = ds_name {
            out.push(b'.');
            out.extend_from_slice(ds);
        }
        out.extend_from_slice(o.postfix.as_bytes());
        out.extend_from_slice(b";host=");
        out.extend_from_slice(&p[HOST]);
        out.extend_from_slice(b";plugin=");
        out.extend_from_slice(&p[PLUGIN]);
        if !p[PLUGIN_INSTANCE].is_empty() {
            out.extend_from_slice(b";plugin_instance=");
            out.extend_from_slice(&p[PLUGIN_INSTANCE]);
        }
        if !dupe_type {
            out.extend_from_slice(b";type=");
            out.extend_from_slice(&p[TYPE]);
        }
        let dupe_instance = o.drop_duplicate_fields && p[PLUGIN_INSTANCE] == p[TYPE_INSTANCE];
        if !p[TYPE_INSTANCE].is_empty() && !dupe_instance {
            out.extend_from_slice(b";type_instance=");
            out.extend_from_slice(&p[TYPE_INSTANCE]);
        }
        if let Some(ds) = ds_name {
            out.extend_from_slice(b";ds_name=");
            out.extend_from_slice(ds);
        }
    }
}

/// The 8 bytes of collectd's `value_t` union as a u64: the data source's kind in
/// types.db decides how they are read, whatever the wire code said.
fn raw_bits(v: Value) -> u64 {
    match v {
        Value::Counter(c) | Value::Absolute(c) => c,
        Value::Gauge(g) => g.to_bits(),
        Value::Derive(d) => d as u64,
    }
}

/// collectd's `counter_diff`: a wrap at 32 or 64 bits.
fn counter_diff(old: u64, new: u64) -> u64 {
    if old > new {
        if old <= u32::MAX as u64 {
            (u32::MAX as u64 - old) + new + 1
        } else {
            (u64::MAX - old).wrapping_add(new).wrapping_add(1)
        }
    } else {
        new - old
    }
}

/// `isspace || iscntrl` in the C locale; bytes >= 0x80 are neither.
fn is_c_space_or_cntrl(b: u8) -> bool {
    b <= b' ' || b == 0x7f
}

/// glibc's spelling of infinities and NaNs (sign shown, also for NaN).
fn non_finite(v: f64, out: &mut Vec<u8>) -> bool {
    if v.is_finite() {
        return false;
    }
    if v.is_sign_negative() {
        out.push(b'-');
    }
    out.extend_from_slice(if v.is_nan() { b"nan" } else { b"inf" });
    true
}

/// printf `%f`. Rust's fixed formatting is exact and rounds half to even on the exact
/// decimal expansion, as glibc does.
fn format_f6(v: f64, out: &mut Vec<u8>) {
    if !non_finite(v, out) {
        let _ = write!(out, "{v:.6}");
    }
}

/// printf `%.15g` (glibc): 15 significant digits, fixed for exponents -4..15, else
/// `d.ddde±XX`; trailing zeros and a bare point removed.
fn format_g15(v: f64, num: &mut Vec<u8>, out: &mut Vec<u8>) {
    const P: i32 = 15;
    if non_finite(v, out) {
        return;
    }
    if v == 0.0 {
        out.extend_from_slice(if v.is_sign_negative() { b"-0" } else { b"0" });
        return;
    }
    num.clear();
    let _ = write!(num, "{:.*e}", (P - 1) as usize, v.abs());
    let e_at = num.iter().position(|&b| b == b'e').expect("exponent");
    let exp: i32 = std::str::from_utf8(&num[e_at + 1..])
        .expect("ascii")
        .parse()
        .expect("exponent digits");
    // The P significant digits, without the point.
    let mut d = [0u8; P as usize];
    let mut n = 0;
    for &b in &num[..e_at] {
        if b.is_ascii_digit() {
            d[n] = b;
            n += 1;
        }
    }
    debug_assert_eq!(n, P as usize);
    let mut last = n;
    if v.is_sign_negative() {
        out.push(b'-');
    }
    if (-4..P).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            out.extend_from_slice(&d[..int_len]);
            while last > int_len && d[last - 1] == b'0' {
                last -= 1;
            }
            if last > int_len {
                out.push(b'.');
                out.extend_from_slice(&d[int_len..last]);
            }
        } else {
            while d[last - 1] == b'0' {
                last -= 1;
            }
            out.extend_from_slice(b"0.");
            for _ in 0..(-exp - 1) {
                out.push(b'0');
            }
            out.extend_from_slice(&d[..last]);
        }
    } else {
        out.push(d[0]);
        while last > 1 && d[last - 1] == b'0' {
            last -= 1;
        }
        if last > 1 {
            out.push(b'.');
            out.extend_from_slice(&d[1..last]);
        }
        out.push(b'e');
        out.push(if exp < 0 { b'-' } else { b'+' });
        let _ = write!(out, "{:02}", exp.unsigned_abs());
    }
}

#[cfg(test)]
mod tests {
    use super::super::Values;
    use super::*;

    fn g15(v: f64) -> String {
        let mut out = Vec::new();
        format_g15(v, &mut Vec::new(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn percent_g15_like_glibc() {
        for (v, s) in [
            (0.0, "0"),
            (-0.0, "-0"),
            (1.0, "1"),
            (0.25, "0.25"),
            (1234.5, "1234.5"),
            (70.33849828876555, "70.3384982887655"),
            (2.74755859375, "2.74755859375"),
            (1e15, "1e+15"),
            (123456789012345.0, "123456789012345"),
            (1234567890123456.0, "1.23456789012346e+15"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-1.5e-300, "-1.5e-300"),
            (1e100, "1e+100"),
            (0.1 + 0.2, "0.3"),
            (f64::NAN, "nan"),
            (-f64::NAN, "-nan"),
            (f64::NEG_INFINITY, "-inf"),
            (999999999999999.9, "1e+15"),
            (0.125, "0.125"),
            (2.384185791015625e-07, "2.38418579101562e-07"),
            (2.5, "2.5"),
        ] {
            assert_eq!(g15(v), s, "{v:e}");
        }
    }

    #[test]
    fn percent_f() {
        for (v, s) in [
            (0.9, "0.900000"),
            (f64::NAN, "nan"),
            (-2.5e-7, "-0.000000"),
            (0.0000005, "0.000000"),
            (0.0000025, "0.000003"),
        ] {
            let mut out = Vec::new();
            format_f6(v, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), s);
        }
    }

    #[test]
    fn counter_wraps_like_collectd() {
        assert_eq!(counter_diff(5, 7), 2);
        assert_eq!(counter_diff(u32::MAX as u64 - 1, 3), 5);
        assert_eq!(counter_diff(u64::MAX - 1, 3), 5);
    }

    fn types() -> TypesDb {
        TypesDb::parse(
            "cpu value:DERIVE:0:U\nload shortterm:GAUGE:0:5000, midterm:GAUGE:0:5000, longterm:GAUGE:0:5000\n\
             if_octets rx:DERIVE:0:U, tx:DERIVE:0:U\nmemory value:GAUGE:0:U\n\
             counter value:COUNTER:U:U\nabsolute value:ABSOLUTE:0:U\n",
        )
        .unwrap()
    }

    fn vl<'a>(host: &'a str, ids: [&'a str; 4], secs: u64, values: &'a [Value]) -> ValueList<'a> {
        ValueList {
            host: host.as_bytes(),
            plugin: ids[0].as_bytes(),
            plugin_instance: ids[1].as_bytes(),
            type_: ids[2].as_bytes(),
            type_instance: ids[3].as_bytes(),
            time: CdTime::from_secs(secs),
            interval: CdTime::from_secs(10),
            values: Values::from_slice(values),
        }
    }

    /// Maps each value list in order; returns all the lines.
    fn check(options: GraphiteOptions, lists: &[ValueList<'_>], expected: &str) {
        let db = types();
        let mut namer = GraphiteNamer::new(options).unwrap();
        let mut out = Vec::new();
        for l in lists {
            namer.write(&db, l, &mut out).unwrap();
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            expected.replace('\n', "\r\n")
        );
    }

    /// Vector C's value lists and the lines the reference saw collectd write.
    #[test]
    fn reference_vector_c() {
        let h = "test.host.example";
        let t = 1795238337;
        let idle = [Value::Derive(12345)];
        let load = [Value::Gauge(0.25), Value::Gauge(0.5), Value::Gauge(1.5)];
        let octets = [Value::Derive(1000), Value::Derive(2000)];
        let abs = [Value::Absolute(9)];
        let lists = [
            vl(h, ["cpu", "0", "cpu", "idle"], t, &idle),
            vl(h, ["load", "", "load", ""], t, &load),
            vl(h, ["interface", "eth0", "if_octets", ""], t, &octets),
            vl("oldtime", ["tgplug", "", "absolute", ""], t, &abs),
        ];
        let no_rates = GraphiteOptions {
            store_rates: false,
            ..GraphiteOptions::default()
        };
        check(
            no_rates.clone(),
            &lists[..1],
            "test_host_example.cpu-0.cpu-idle 12345 1795238337\n",
        );
        check(
            GraphiteOptions {
                prefix: "collectd.".into(),
                postfix: ".pf".into(),
                separate_instances: true,
                always_append_ds: true,
                ..no_rates.clone()
            },
            &lists[..1],
            "collectd.test_host_example.pf.cpu.0.cpu.idle.value 12345 1795238337\n",
        );
        check(
            GraphiteOptions {
                use_tags: true,
                ..no_rates
            },
            &lists[2..3],
            "interface.if_octets.rx;host=test.host.example;plugin=interface;plugin_instance=eth0;type=if_octets;ds_name=rx 1000 1795238337\n\
             interface.if_octets.tx;host=test.host.example;plugin=interface;plugin_instance=eth0;type=if_octets;ds_name=tx 2000 1795238337\n",
        );
        check(
            GraphiteOptions {
                drop_duplicate_fields: true,
                preserve_separator: true,
                reverse_host: true,
                ..GraphiteOptions::default()
            },
            &[lists[1], lists[0], lists[3]],
            "example.host.test.load.shortterm 0.25 1795238337\n\
             example.host.test.load.midterm 0.5 1795238337\n\
             example.host.test.load.longterm 1.5 1795238337\n\
             example.host.test.cpu-0.idle nan 1795238337\n\
             oldtime.tgplug.absolute 0.900000 1795238337\n",
        );
    }

    #[test]
    fn rates_follow_the_series() {
        let a = [Value::Derive(100)];
        let b = [Value::Derive(160)];
        let c = [Value::Derive(10)];
        check(
            GraphiteOptions::default(),
            &[
                vl("h", ["cpu", "", "cpu", ""], 100, &a),
                vl("h", ["cpu", "", "cpu", ""], 110, &b),
                vl("h", ["cpu", "", "cpu", ""], 110, &c),
                vl("h", ["cpu", "", "cpu", ""], 120, &c),
            ],
            "h.cpu.cpu nan 100\nh.cpu.cpu 6.000000 110\nh.cpu.cpu 6.000000 110\nh.cpu.cpu nan 120\n",
        );
    }

    #[test]
    fn refuses_what_collectd_drops() {
        let db = types();
        let mut namer = GraphiteNamer::new(GraphiteOptions::default()).unwrap();
        let one = [Value::Gauge(1.0)];
        let mut out = Vec::new();
        let r = namer.write(&db, &vl("h", ["p", "", "nope", ""], 1, &one), &mut out);
        assert_eq!(r, Err(GraphiteReject::UnknownType));
        let r = namer.write(&db, &vl("h", ["p", "", "load", ""], 1, &one), &mut out);
        assert_eq!(r, Err(GraphiteReject::ValueCount));
        assert!(out.is_empty());
        assert_eq!(namer.stats().rejects, [1, 1]);
        let bad = GraphiteOptions {
            escape_character: b'/',
            ..GraphiteOptions::default()
        };
        assert!(GraphiteNamer::new(bad).is_err());
    }
}
