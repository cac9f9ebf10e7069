//! `[[aggregate]]`: aggregators routes hand points to (`aggregate = "NAME"`), each of a
//! kind that carries its own settings: Etsy statsd 0.9.0's options under snake_case
//! names, or carbon-aggregator's rules file.

use std::net::SocketAddr;
use std::path::PathBuf;

use toml::{Table, Value};

use super::reader::TableReader;
use super::{parse_socket_addr, Cluster, ConfigError, Sink, Store};
use crate::aggregate::carbon::{CarbonConfig, Rules, TimestampAt};
use crate::aggregate::statsd::{Bin, HistogramRule, StatsdConfig, TagMode};

/// One aggregator.
#[derive(Debug, Clone)]
pub struct Aggregate {
    /// Name routes and stats use.
    pub name: String,
    /// Clusters and stores that get what the aggregator flushes (and, for carbon, its
    /// forwarded inputs) when no route with `from` naming it claims them.
    pub send_to: Vec<Sink>,
    /// The kind with its settings.
    pub kind: AggregateKind,
}

/// An aggregator's kind and settings.
#[derive(Debug, Clone)]
pub enum AggregateKind {
    /// Etsy statsd 0.9.0.
    Statsd(Box<StatsdAggregate>),
    /// carbon-aggregator (carbon 1.1.10).
    Carbon(CarbonAggregate),
}

impl AggregateKind {
    /// The word used in configs.
    pub fn as_str(&self) -> &'static str {
        match self {
            AggregateKind::Statsd(_) => "statsd",
            AggregateKind::Carbon(_) => "carbon",
        }
    }
}

/// `kind = "statsd"`.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsdAggregate {
    /// The engine's settings (Etsy's options, and cadent's bounds).
    pub engine: StatsdConfig,
    /// Etsy's management console (TCP), when set.
    pub mgmt_listen: Option<SocketAddr>,
}

/// `kind = "carbon"`.
#[derive(Debug, Clone)]
pub struct CarbonAggregate {
    /// carbon's `aggregation-rules.conf`, unchanged.
    pub rules_file: PathBuf,
    /// Its text when the config was read (a reload reads it again).
    pub rules_text: String,
    /// The rules it holds.
    pub rules: Rules,
    /// The engine's settings.
    pub engine: CarbonConfig,
    /// How often the rules file is looked at and, when its text changed, applied (as
    /// carbon re-reads it every 10 s); zero: only at a reload.
    pub rules_reread_interval_ms: u64,
}

impl PartialEq for CarbonAggregate {
    fn eq(&self, o: &Self) -> bool {
        self.rules_file == o.rules_file
            && self.rules_text == o.rules_text
            && self.engine.keys_max == o.engine.keys_max
            && self.engine.max_intervals == o.engine.max_intervals
            && self.engine.timestamp_at == o.engine.timestamp_at
            && self.engine.forward_all == o.engine.forward_all
            && self.engine.bucket_values_max == o.engine.bucket_values_max
    }
}

impl PartialEq for AggregateKind {
    fn eq(&self, o: &Self) -> bool {
        match (self, o) {
            (AggregateKind::Statsd(a), AggregateKind::Statsd(b)) => a == b,
            (AggregateKind::Carbon(a), AggregateKind::Carbon(b)) => a == b,
            _ => false,
        }
    }
}

impl PartialEq for Aggregate {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name && self.send_to == o.send_to && self.kind == o.kind
    }
}

pub(super) fn read_aggregate(
    t: &Table,
    i: usize,
    clusters: &[Cluster],
    stores: &[Store],
    errs: &mut Vec<ConfigError>,
) -> Aggregate {
    let mut r = TableReader::new(t, format!("aggregate[{i}]"));
    let name = r.req_str("name", errs);
    if name.is_empty() && t.contains_key("name") {
        errs.push(ConfigError::new(r.key_path("name"), "must not be empty"));
    }
    let kind_s = r.req_str("kind", errs);
    let send_to_names = r.strings("send_to", errs);
    let send_to = super::resolve_send_to(
        &send_to_names,
        clusters,
        stores,
        &r.key_path("send_to"),
        errs,
    );
    let kind = match kind_s.as_str() {
        "statsd" => AggregateKind::Statsd(Box::new(read_statsd(&mut r, errs))),
        "carbon" => AggregateKind::Carbon(read_carbon(&mut r, errs)),
        "" => AggregateKind::Statsd(Box::new(StatsdAggregate {
            engine: StatsdConfig::default(),
            mgmt_listen: None,
        })),
        other => {
            errs.push(ConfigError::new(
                r.key_path("kind"),
                format!("unknown kind {other:?} (expected statsd or carbon)"),
            ));
            AggregateKind::Statsd(Box::new(StatsdAggregate {
                engine: StatsdConfig::default(),
                mgmt_listen: None,
            }))
        }
    };
    r.finish(errs);
    Aggregate {
        name,
        send_to,
        kind,
    }
}

fn read_statsd(r: &mut TableReader<'_>, errs: &mut Vec<ConfigError>) -> StatsdAggregate {
    let d = StatsdConfig::default();
    let flush_interval_ms = r.uint(
        "flush_interval_ms",
        d.flush_interval_ms,
        1,
        86_400_000,
        errs,
    );
    let percent_thresholds = read_thresholds(r, errs).unwrap_or(d.percent_thresholds);
    let histograms = read_histograms(r, errs);
    let calculated_timer_metrics = r.strings("calculated_timer_metrics", errs);
    let legacy_namespace = r.boolean("legacy_namespace", d.legacy_namespace, errs);
    let global_prefix = r.str_or("global_prefix", &d.global_prefix, errs);
    let prefix_counter = r.str_or("prefix_counter", &d.prefix_counter, errs);
    let prefix_timer = r.str_or("prefix_timer", &d.prefix_timer, errs);
    let prefix_gauge = r.str_or("prefix_gauge", &d.prefix_gauge, errs);
    let prefix_set = r.str_or("prefix_set", &d.prefix_set, errs);
    // Etsy appends `.` and the suffix whenever the key is set, even to "".
    let global_suffix = r.opt_str("global_suffix", errs);
    let prefix_stats = r.str_or("prefix_stats", &d.prefix_stats, errs);
    let flush_counts = r.boolean("flush_counts", d.flush_counts, errs);
    let delete_idle_stats = r.boolean("delete_idle_stats", d.delete_idle_stats, errs);
    let delete_counters = r.opt_bool("delete_counters", errs);
    let delete_timers = r.opt_bool("delete_timers", errs);
    let delete_sets = r.opt_bool("delete_sets", errs);
    let delete_gauges = r.opt_bool("delete_gauges", errs);
    // Etsy's gaugesMaxTTL, in flushes; 0 is read as 1, as Etsy does.
    let gauges_max_ttl_flushes = r.uint("gauges_max_ttl", 1, 0, 1_000_000, errs) as u32;
    let key_name_sanitize = r.boolean("key_name_sanitize", true, errs);
    let tag_mode = match r.str_or("tag_mode", "etsy", errs).as_str() {
        "etsy" => TagMode::Etsy,
        "sorted" => TagMode::Sorted,
        other => {
            errs.push(ConfigError::new(
                r.key_path("tag_mode"),
                format!("unknown value {other:?} (expected etsy or sorted)"),
            ));
            TagMode::Etsy
        }
    };
    let keys_max = r.uint("keys_max", d.keys_max as u64, 1, 1 << 32, errs) as usize;
    let timer_values_max = r.uint(
        "timer_values_max",
        d.timer_values_max as u64,
        1,
        1 << 28,
        errs,
    ) as usize;
    let timer_sketch_relative_error = r.float(
        "timer_sketch_relative_error",
        d.timer_sketch_relative_error,
        1e-6,
        0.5,
        errs,
    );
    let timer_sketch_buckets_max = r.uint(
        "timer_sketch_buckets_max",
        d.timer_sketch_buckets_max as u64,
        2,
        1 << 20,
        errs,
    ) as usize;
    let set_values_max =
        r.uint("set_values_max", d.set_values_max as u64, 1, 1 << 28, errs) as usize;
    let mgmt_listen = r
        .opt_str("mgmt_listen", errs)
        .and_then(|s| match parse_socket_addr(&s) {
            Ok(a) => Some(a),
            Err(e) => {
                errs.push(ConfigError::new(r.key_path("mgmt_listen"), e));
                None
            }
        });
    let engine = StatsdConfig {
        flush_interval_ms,
        percent_thresholds,
        histograms,
        calculated_timer_metrics,
        legacy_namespace,
        global_prefix,
        prefix_counter,
        prefix_timer,
        prefix_gauge,
        prefix_set,
        global_suffix,
        prefix_stats,
        flush_counts,
        delete_idle_stats,
        delete_counters,
        delete_timers,
        delete_sets,
        delete_gauges,
        gauges_max_ttl_flushes,
        tag_mode,
        key_name_sanitize,
        keys_max,
        timer_values_max,
        timer_sketch_relative_error,
        timer_sketch_buckets_max,
        set_values_max,
    };
    if let Err(e) = engine.validate() {
        errs.push(ConfigError::new(r.key_path(""), e.to_string()));
    }
    StatsdAggregate {
        engine,
        mgmt_listen,
    }
}

/// `percent_threshold`: a number or a list of numbers (Etsy listifies a single value;
/// a single 0 is falsy to Etsy's `percentThreshold || 90`, so it means 90).
fn read_thresholds(r: &mut TableReader<'_>, errs: &mut Vec<ConfigError>) -> Option<Vec<f64>> {
    let path = r.key_path("percent_threshold");
    let v = r.value("percent_threshold")?;
    let number = |v: &Value, at: String, errs: &mut Vec<ConfigError>| match v {
        Value::Integer(i) => Some(*i as f64),
        Value::Float(f) if f.is_finite() => Some(*f),
        other => {
            errs.push(ConfigError::new(
                at,
                format!("expected a number, found {}", other.type_str()),
            ));
            None
        }
    };
    let out: Vec<f64> = match v {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .filter_map(|(j, v)| number(v, format!("{path}[{j}]"), errs))
            .collect(),
        other => number(other, path.clone(), errs)
            .map(|t| if t == 0.0 { 90.0 } else { t })
            .into_iter()
            .collect(),
    };
    Some(out)
}

/// `histogram = [{ metric = "latency", bins = [10, 50, "inf"] }]`.
fn read_histograms(r: &mut TableReader<'_>, errs: &mut Vec<ConfigError>) -> Vec<HistogramRule> {
    let path = r.key_path("histogram");
    let Some(v) = r.value("histogram") else {
        return Vec::new();
    };
    let Value::Array(items) = v else {
        errs.push(ConfigError::new(
            path,
            format!("expected an array of tables, found {}", v.type_str()),
        ));
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for (j, item) in items.iter().enumerate() {
        let at = format!("{path}[{j}]");
        let Value::Table(t) = item else {
            errs.push(ConfigError::new(
                at,
                format!("expected a table, found {}", item.type_str()),
            ));
            continue;
        };
        let mut hr = TableReader::new(t, at.clone());
        let metric = hr.req_str("metric", errs);
        let mut bins = Vec::new();
        match hr.value("bins") {
            Some(Value::Array(bs)) => {
                for (k, b) in bs.iter().enumerate() {
                    match b {
                        Value::Integer(i) => bins.push(Bin::Below(*i as f64)),
                        Value::Float(f) if f.is_finite() => bins.push(Bin::Below(*f)),
                        Value::String(s) if s == "inf" => bins.push(Bin::Inf),
                        other => errs.push(ConfigError::new(
                            format!("{at}.bins[{k}]"),
                            format!("expected a number or \"inf\", found {other}"),
                        )),
                    }
                }
            }
            Some(other) => errs.push(ConfigError::new(
                format!("{at}.bins"),
                format!("expected an array, found {}", other.type_str()),
            )),
            None => errs.push(ConfigError::new(format!("{at}.bins"), "is required")),
        }
        hr.finish(errs);
        out.push(HistogramRule { metric, bins });
    }
    out
}

fn read_carbon(r: &mut TableReader<'_>, errs: &mut Vec<ConfigError>) -> CarbonAggregate {
    let d = CarbonConfig::default();
    let rules_file = PathBuf::from(r.req_str("rules_file", errs));
    let forward_inputs = r.boolean("forward_inputs", true, errs);
    let rules_reread_interval_ms = r.uint("rules_reread_interval_ms", 10_000, 0, 86_400_000, errs);
    let keys_max = r.uint("keys_max", d.keys_max as u64, 1, u32::MAX as u64 - 1, errs) as usize;
    let max_intervals = r.uint("max_intervals", u64::from(d.max_intervals), 1, 10_000, errs) as u32;
    let bucket_values_max = r.uint(
        "bucket_values_max",
        d.bucket_values_max as u64,
        1,
        1 << 28,
        errs,
    ) as usize;
    let timestamp_at = match r.str_or("timestamp_at", "start", errs).as_str() {
        "start" => TimestampAt::Start,
        "end" => TimestampAt::End,
        other => {
            errs.push(ConfigError::new(
                r.key_path("timestamp_at"),
                format!("unknown value {other:?} (expected start or end)"),
            ));
            TimestampAt::Start
        }
    };
    let mut rules = Rules::default();
    let mut rules_text = String::new();
    if !rules_file.as_os_str().is_empty() {
        match super::read_text_bounded(&rules_file, super::RULES_FILE_BYTES_MAX) {
            Ok(text) => match Rules::parse(&text) {
                Ok(rs) => {
                    rules = rs;
                    rules_text = text;
                }
                // One error per bad rule, each naming its line.
                Err(e) => errs.extend(e.errors.iter().map(|e| {
                    ConfigError::new(
                        r.key_path("rules_file"),
                        format!("{}: {e}", rules_file.display()),
                    )
                })),
            },
            Err(e) => errs.push(ConfigError::new(
                r.key_path("rules_file"),
                format!("cannot read {}: {e}", rules_file.display()),
            )),
        }
    }
    CarbonAggregate {
        rules_file,
        rules_text,
        rules,
        engine: CarbonConfig {
            keys_max,
            max_intervals,
            timestamp_at,
            forward_all: forward_inputs,
            bucket_values_max,
        },
        rules_reread_interval_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn statsd_of(options: &str) -> StatsdAggregate {
        let text = format!(
            "[[listen]]\nname = \"s\"\nurl = \"udp://127.0.0.1:8125\"\nformat = \"statsd\"\n\
             [[cluster]]\nname = \"out\"\nkind = \"file\"\npath = \"/tmp/out\"\n\
             [[route]]\nmatch = {{ all = true }}\naggregate = \"a\"\n\
             [[aggregate]]\nname = \"a\"\nkind = \"statsd\"\nsend_to = [\"out\"]\n{options}"
        );
        let cfg = Config::parse(&text).expect("a valid config");
        match &cfg.aggregates[0].kind {
            AggregateKind::Statsd(s) => (**s).clone(),
            AggregateKind::Carbon(_) => unreachable!("a statsd aggregate"),
        }
    }

    #[test]
    fn etsy_option_values_that_javascript_reads_its_own_way() {
        // `percentThreshold || 90`: a single 0 is falsy, a list holding 0 is not.
        let t = |o: &str| statsd_of(o).engine.percent_thresholds;
        assert_eq!(t("percent_threshold = 0\n"), vec![90.0]);
        assert_eq!(t("percent_threshold = 0.0\n"), vec![90.0]);
        assert_eq!(t("percent_threshold = [0]\n"), vec![0.0]);
        assert_eq!(t("percent_threshold = 95\n"), vec![95.0]);
        // `'.' + globalSuffix` whenever the key is set, even to "".
        let s = |o: &str| statsd_of(o).engine.global_suffix;
        assert_eq!(s("global_suffix = \"\"\n"), Some(String::new()));
        assert_eq!(s("global_suffix = \"x\"\n"), Some("x".to_string()));
        assert_eq!(s(""), None);
    }
}
