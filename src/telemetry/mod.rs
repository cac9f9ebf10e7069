//! Counters. Each stage owns its counters, declared once as a [`set::CounterSet`]
//! (`counter_set!`): ingest its listeners', routing its own, output its destinations',
//! aggregation its aggregators', the mesh its channels'. Each shard owns plain `u64`
//! copies and publishes them every `stats_interval_ms`; the control thread sums the
//! copies and renders `/stats` JSON, `/metrics` Prometheus text and the self-metric
//! lines from the sets' field lists, so a new counter is one line in its set. The shard
//! never waits on the control thread: it skips a publish if the slot is busy.

pub mod set;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, RwLock};

use serde_json::{json, Map, Value};

pub use crate::api::read::ReadCounters;
pub use crate::ingest::{CollectdCounters, CollectdStats, ListenerCounters, ListenerStats};
pub use crate::output::DestinationCounters;
use crate::protocol::Reject;
pub use crate::route::RouteCounters;
pub use crate::shard::aggregate::AggregatorCounters;
pub use crate::shard::mesh::MeshCounters;
pub use crate::shard::store::StoreCounters;
use set::CounterSet;

/// Everything one shard counts.
#[derive(Debug, Clone, Default)]
pub struct ShardCounters {
    /// By listener id.
    pub listeners: Vec<ListenerStats>,
    /// Metrics matched, by rule index (config routes, then each aggregator's implicit
    /// `send_to` rule).
    pub rules_matched: Vec<u64>,
    /// Routing outcomes.
    pub routing: RouteCounters,
    /// By destination id (zeroes for a free id).
    pub destinations: Vec<DestinationCounters>,
    /// Every reclaimed destination's counters, summed (shown as destination
    /// [`RECLAIMED`]): what removed destinations did stays counted.
    pub reclaimed: DestinationCounters,
    /// The topology epoch the shard routes by (not summed).
    pub epoch: u64,
    /// By destination id: retired in the shard's topology, its queue closed and empty
    /// and its writer stopped, so the control thread may free the id (not summed).
    pub drained: Vec<bool>,
    /// By aggregator index.
    pub aggregators: Vec<AggregatorCounters>,
    /// By store index.
    pub stores: Vec<StoreCounters>,
    /// Cross-shard traffic.
    pub mesh: MeshCounters,
}

impl ShardCounters {
    /// Zeroed counters shaped for the config.
    pub fn new(
        listeners: usize,
        rules: usize,
        destinations: usize,
        aggregators: usize,
    ) -> ShardCounters {
        ShardCounters {
            listeners: vec![ListenerStats::default(); listeners],
            rules_matched: vec![0; rules],
            routing: RouteCounters::default(),
            destinations: vec![DestinationCounters::default(); destinations],
            reclaimed: DestinationCounters::default(),
            epoch: 0,
            drained: Vec::new(),
            aggregators: vec![AggregatorCounters::default(); aggregators],
            stores: Vec::new(),
            mesh: MeshCounters::default(),
        }
    }

    /// Makes room for counters of listeners up to `len` (a reload added one).
    pub fn grow_listeners(&mut self, len: usize) {
        if self.listeners.len() < len {
            self.listeners.resize(len, ListenerStats::default());
        }
    }

    fn add(&mut self, o: &ShardCounters) {
        // Shards apply a reconfiguration at their own tick: one may count more rules or
        // destinations than another for a moment.
        self.grow_listeners(o.listeners.len());
        for (a, b) in self.listeners.iter_mut().zip(&o.listeners) {
            a.add(b);
        }
        if self.rules_matched.len() < o.rules_matched.len() {
            self.rules_matched.resize(o.rules_matched.len(), 0);
        }
        for (a, b) in self.rules_matched.iter_mut().zip(&o.rules_matched) {
            *a += b;
        }
        self.routing.add(&o.routing);
        set::add_all(&mut self.destinations, &o.destinations);
        self.reclaimed.add(&o.reclaimed);
        set::add_all(&mut self.aggregators, &o.aggregators);
        set::add_all(&mut self.stores, &o.stores);
        self.mesh.add(&o.mesh);
    }
}

/// Names of the things counted, so snapshots can be rendered without the config.
#[derive(Debug, Clone, Default)]
pub struct Labels {
    /// Listener names, by id.
    pub listeners: Vec<String>,
    /// By listener id: a collectd listener (its collectd counters are shown).
    pub collectd_listeners: Vec<bool>,
    /// Route names, by rule index.
    pub rules: Vec<String>,
    /// Destination names, by id; `None` for a free id (nothing is rendered for it).
    pub destinations: Vec<Option<String>>,
    /// Aggregator names, by index.
    pub aggregators: Vec<String>,
    /// Store names, by index.
    pub stores: Vec<String>,
}

/// The published copies of every shard's counters.
#[derive(Debug)]
pub struct Registry {
    labels: RwLock<Labels>,
    shards: Vec<Mutex<ShardCounters>>,
    /// The read API's (control thread; no shard touches it).
    read: Mutex<ReadCounters>,
}

impl Registry {
    /// A registry for `shards` shards.
    pub fn new(labels: Labels, shards: usize) -> Arc<Registry> {
        let zero = ShardCounters::new(
            labels.listeners.len(),
            labels.rules.len(),
            labels.destinations.len(),
            labels.aggregators.len(),
        );
        Arc::new(Registry {
            labels: RwLock::new(labels),
            shards: (0..shards).map(|_| Mutex::new(zero.clone())).collect(),
            read: Mutex::new(ReadCounters::default()),
        })
    }

    /// Updates the read API's counters (control thread only).
    pub fn read_counters(&self, f: impl FnOnce(&mut ReadCounters)) {
        f(&mut self.read.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// A copy of the read API's counters.
    pub fn read_snapshot(&self) -> ReadCounters {
        self.read.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Publishes a shard's counters. Never blocks: if the control thread is reading this
    /// slot, the shard publishes next time. `force` waits (used once, at shutdown).
    pub fn publish(&self, shard: usize, counters: &ShardCounters, force: bool) {
        let slot = &self.shards[shard];
        let guard = if force {
            Some(slot.lock().unwrap_or_else(|e| e.into_inner()))
        } else {
            slot.try_lock().ok()
        };
        if let Some(mut g) = guard {
            g.clone_from(counters);
        }
    }

    /// Copies of every shard's counters, in shard order.
    pub fn per_shard(&self) -> Vec<ShardCounters> {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    /// The names of the things counted.
    pub fn labels(&self) -> Labels {
        self.labels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// New names after a reconfiguration; every shard's published copy grows to them
    /// (zeroes until the shard publishes), so a new item shows at once.
    pub fn set_labels(&self, labels: Labels) {
        for slot in &self.shards {
            let mut c = slot.lock().unwrap_or_else(|e| e.into_inner());
            c.grow_listeners(labels.listeners.len());
            if c.rules_matched.len() < labels.rules.len() {
                c.rules_matched.resize(labels.rules.len(), 0);
            }
            if c.destinations.len() < labels.destinations.len() {
                c.destinations
                    .resize(labels.destinations.len(), DestinationCounters::default());
            }
            if c.aggregators.len() < labels.aggregators.len() {
                c.aggregators
                    .resize(labels.aggregators.len(), AggregatorCounters::default());
            }
            if c.stores.len() < labels.stores.len() {
                c.stores
                    .resize(labels.stores.len(), StoreCounters::default());
            }
        }
        *self.labels.write().unwrap_or_else(|e| e.into_inner()) = labels;
    }

    /// Sum over shards.
    pub fn total(shards: &[ShardCounters]) -> ShardCounters {
        let mut iter = shards.iter();
        let mut t = iter.next().cloned().unwrap_or_default();
        for s in iter {
            t.add(s);
        }
        t
    }

    /// `/stats` JSON: totals by listener, rule, destination and aggregator, plus each
    /// shard's.
    pub fn stats_json(&self) -> Value {
        let labels = self.labels();
        let shards = self.per_shard();
        let total = Registry::total(&shards);
        let mut v = summary_json(&labels, &total);
        v["read_api"] = Value::Object(self.read_snapshot().to_json());
        v["shards"] = Value::Array(shards.iter().map(|c| summary_json(&labels, c)).collect());
        v
    }

    /// `/metrics`: Prometheus text exposition format, per shard (a `shard` label).
    pub fn prometheus(&self) -> String {
        let labels = self.labels();
        let shards = self.per_shard();
        let mut out = String::with_capacity(16 * 1024);
        item_families(&mut out, "", "listener", &labels.listeners, &shards, |c| {
            &c.listeners
        });
        header(
            &mut out,
            "rejected_lines",
            "Lines dropped at ingest, by reason.",
            "counter",
        );
        for (s, c) in shards.iter().enumerate() {
            for (name, l) in labels.listeners.iter().zip(&c.listeners) {
                for r in Reject::ALL {
                    let _ = writeln!(
                        out,
                        "cadent_rejected_lines{{listener=\"{}\",reason=\"{}\",shard=\"{s}\"}} {}",
                        escape(name),
                        r.as_str(),
                        l.rejected_lines[r as usize]
                    );
                }
            }
        }
        collectd_families(&mut out, &labels, &shards);
        header(
            &mut out,
            "route_matched",
            "Metrics matched by a route.",
            "counter",
        );
        for (s, c) in shards.iter().enumerate() {
            for (name, n) in labels.rules.iter().zip(&c.rules_matched) {
                let _ = writeln!(
                    out,
                    "cadent_route_matched{{route=\"{}\",shard=\"{s}\"}} {n}",
                    escape(name)
                );
            }
        }
        shard_families(&mut out, "", &shards, |c| &c.routing);
        let (names, per_shard) = destination_items(&labels, &shards);
        item_families(
            &mut out,
            "destination_",
            "destination",
            &names,
            &per_shard,
            |c| c.as_slice(),
        );
        item_families(
            &mut out,
            "aggregator_",
            "aggregator",
            &labels.aggregators,
            &shards,
            |c| &c.aggregators,
        );
        item_families(&mut out, "store_", "store", &labels.stores, &shards, |c| {
            &c.stores
        });
        shard_families(&mut out, "mesh_", &shards, |c| &c.mesh);
        let read = self.read_snapshot();
        for (f, v) in ReadCounters::FIELDS.iter().zip(read.values()) {
            header(
                &mut out,
                &format!("read_{}", f.name),
                &help_text(f.help),
                f.kind.as_str(),
            );
            let _ = writeln!(out, "cadent_read_{} {v}", f.name);
        }
        out
    }

    /// The self-metric lines (`[telemetry]`): every counter summed over shards, as
    /// graphite lines `PREFIX.<section>.<item>.<field> value ts`.
    pub fn graphite_lines(&self, prefix: &str, ts: i64, out: &mut Vec<u8>) {
        let labels = self.labels();
        let total = Registry::total(&self.per_shard());
        let ts = ts.max(0);
        let mut line = |path: &[&str], v: u64| {
            use std::io::Write;
            out.extend_from_slice(prefix.as_bytes());
            for p in path {
                out.push(b'.');
                push_segment(out, p);
            }
            let _ = writeln!(out, " {v} {ts}");
        };
        for (name, l) in labels.listeners.iter().zip(&total.listeners) {
            l.counters
                .each(|f, v| line(&["listeners", name, f.name], v));
            line(
                &["listeners", name, "rejected_lines"],
                l.rejected_lines.iter().sum(),
            );
        }
        for (i, (name, l)) in labels.listeners.iter().zip(&total.listeners).enumerate() {
            if labels.collectd_listeners.get(i).copied().unwrap_or(false) {
                let c = &l.collectd;
                c.counters
                    .each(|f, v| line(&["listeners", name, "collectd", f.name], v));
                let rejected = c.rejects.iter().chain(&c.types_rejects).sum();
                line(&["listeners", name, "collectd", "rejected"], rejected);
            }
        }
        for (name, n) in labels.rules.iter().zip(&total.rules_matched) {
            line(&["routes", name, "matched"], *n);
        }
        total.routing.each(|f, v| line(&["routing", f.name], v));
        let (names, items) = destination_items(&labels, std::slice::from_ref(&total));
        for (name, d) in names.iter().zip(&items[0]) {
            d.each(|f, v| line(&["destinations", name, f.name], v));
        }
        for (name, a) in labels.aggregators.iter().zip(&total.aggregators) {
            a.each(|f, v| line(&["aggregators", name, f.name], v));
        }
        for (name, st) in labels.stores.iter().zip(&total.stores) {
            st.each(|f, v| line(&["stores", name, f.name], v));
        }
        total.mesh.each(|f, v| line(&["mesh", f.name], v));
        self.read_snapshot()
            .each(|f, v| line(&["read_api", f.name], v));
    }
}

/// One snapshot as `/stats` JSON.
fn summary_json(labels: &Labels, c: &ShardCounters) -> Value {
    let mut listeners = Map::new();
    for (i, (name, l)) in labels.listeners.iter().zip(&c.listeners).enumerate() {
        let mut m = l.counters.to_json();
        let mut rejected = Map::new();
        for r in Reject::ALL {
            rejected.insert(r.as_str().into(), json!(l.rejected_lines[r as usize]));
        }
        m.insert(
            "rejected_lines".into(),
            json!(l.rejected_lines.iter().sum::<u64>()),
        );
        m.insert("rejected_by_reason".into(), Value::Object(rejected));
        if labels.collectd_listeners.get(i).copied().unwrap_or(false) {
            m.insert("collectd".into(), collectd_json(&l.collectd));
        }
        listeners.insert(name.clone(), Value::Object(m));
    }
    let mut routes = Map::new();
    for (name, n) in labels.rules.iter().zip(&c.rules_matched) {
        routes.insert(name.clone(), json!({ "matched": n }));
    }
    let items = |names: &[String], sets: &[Map<String, Value>]| -> Value {
        Value::Object(
            names
                .iter()
                .zip(sets)
                .map(|(n, m)| (n.clone(), Value::Object(m.clone())))
                .collect(),
        )
    };
    let (dest_names, dest_items) = destination_items(labels, std::slice::from_ref(c));
    let dests: Vec<_> = dest_items[0].iter().map(|d| d.to_json()).collect();
    let aggs: Vec<_> = c.aggregators.iter().map(|a| a.to_json()).collect();
    let stores: Vec<_> = c.stores.iter().map(|a| a.to_json()).collect();
    let mut v = Map::new();
    v.insert("listeners".into(), Value::Object(listeners));
    v.insert("routes".into(), Value::Object(routes));
    v.insert("destinations".into(), items(&dest_names, &dests));
    v.insert("aggregators".into(), items(&labels.aggregators, &aggs));
    v.insert("stores".into(), items(&labels.stores, &stores));
    for (k, x) in c.routing.to_json() {
        v.insert(k, x);
    }
    v.insert("mesh".into(), Value::Object(c.mesh.to_json()));
    Value::Object(v)
}

/// `/metrics` families of the collectd listeners: `cadent_collectd_<field>` and
/// `cadent_collectd_rejected` by reason.
fn collectd_families(out: &mut String, labels: &Labels, shards: &[ShardCounters]) {
    let is_collectd = |i: usize| labels.collectd_listeners.get(i).copied().unwrap_or(false);
    if !(0..labels.listeners.len()).any(is_collectd) {
        return;
    }
    for (k, f) in CollectdCounters::FIELDS.iter().enumerate() {
        header(
            out,
            &format!("collectd_{}", f.name),
            &help_text(f.help),
            f.kind.as_str(),
        );
        for (s, c) in shards.iter().enumerate() {
            for (i, (name, l)) in labels.listeners.iter().zip(&c.listeners).enumerate() {
                if is_collectd(i) {
                    let _ = writeln!(
                        out,
                        "cadent_collectd_{}{{listener=\"{}\",shard=\"{s}\"}} {}",
                        f.name,
                        escape(name),
                        l.collectd.counters.values()[k]
                    );
                }
            }
        }
    }
    header(
        out,
        "collectd_rejected",
        "collectd packets or parts refused, and value lists refused by the types table, by reason.",
        "counter",
    );
    for (s, c) in shards.iter().enumerate() {
        for (i, (name, l)) in labels.listeners.iter().zip(&c.listeners).enumerate() {
            if !is_collectd(i) {
                continue;
            }
            let reasons = crate::protocol::collectd::Reject::ALL
                .iter()
                .map(|r| (r.as_str(), l.collectd.rejects[*r as usize]))
                .chain(
                    crate::protocol::decode::TypesReject::ALL
                        .iter()
                        .map(|r| (r.as_str(), l.collectd.types_rejects[*r as usize])),
                );
            for (reason, v) in reasons {
                let _ = writeln!(
                    out,
                    "cadent_collectd_rejected{{listener=\"{}\",reason=\"{reason}\",shard=\"{s}\"}} {v}",
                    escape(name)
                );
            }
        }
    }
}

/// A collectd listener's counters, with its packet rejects and types-table rejects by
/// reason.
fn collectd_json(c: &CollectdStats) -> Value {
    let mut m = c.counters.to_json();
    let mut packets = Map::new();
    for r in crate::protocol::collectd::Reject::ALL {
        packets.insert(r.as_str().into(), json!(c.rejects[r as usize]));
    }
    let mut types = Map::new();
    for r in crate::protocol::decode::TypesReject::ALL {
        types.insert(r.as_str().into(), json!(c.types_rejects[r as usize]));
    }
    m.insert("rejected_by_reason".into(), Value::Object(packets));
    m.insert(
        "rejected_value_lists_by_reason".into(),
        Value::Object(types),
    );
    Value::Object(m)
}

/// The name under which the summed counters of reclaimed destinations are shown (no
/// destination name can take it: those start with `tcp://`, `udp://` or `file:`).
pub const RECLAIMED: &str = "reclaimed";

/// The destinations to render, by shard: every occupied id with its name, then
/// [`RECLAIMED`]; free ids are left out.
fn destination_items(
    labels: &Labels,
    shards: &[ShardCounters],
) -> (Vec<String>, Vec<Vec<DestinationCounters>>) {
    let ids: Vec<(usize, &String)> = labels
        .destinations
        .iter()
        .enumerate()
        .filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
        .collect();
    let mut names: Vec<String> = ids.iter().map(|(_, n)| (*n).clone()).collect();
    names.push(RECLAIMED.into());
    let items = shards
        .iter()
        .map(|c| {
            ids.iter()
                .map(|&(i, _)| c.destinations.get(i).cloned().unwrap_or_default())
                .chain(std::iter::once(c.reclaimed.clone()))
                .collect()
        })
        .collect();
    (names, items)
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP cadent_{name} {help}");
    let _ = writeln!(out, "# TYPE cadent_{name} {kind}");
}

fn help_text(help: &str) -> String {
    help.lines().map(str::trim).collect::<Vec<_>>().join(" ")
}

/// One family per field of `T`: `cadent_PREFIXfield{LABEL="name",shard="s"} v`.
fn item_families<S, T: CounterSet>(
    out: &mut String,
    prefix: &str,
    label: &str,
    names: &[String],
    shards: &[S],
    items: impl Fn(&S) -> &[T],
) {
    for (i, f) in T::FIELDS.iter().enumerate() {
        header(
            out,
            &format!("{prefix}{}", f.name),
            &help_text(f.help),
            f.kind.as_str(),
        );
        for (s, c) in shards.iter().enumerate() {
            for (name, item) in names.iter().zip(items(c)) {
                let _ = writeln!(
                    out,
                    "cadent_{prefix}{}{{{label}=\"{}\",shard=\"{s}\"}} {}",
                    f.name,
                    escape(name),
                    item.values()[i]
                );
            }
        }
    }
}

/// One family per field of a per-shard set: `cadent_PREFIXfield{shard="s"} v`.
fn shard_families<T: CounterSet>(
    out: &mut String,
    prefix: &str,
    shards: &[ShardCounters],
    set: impl Fn(&ShardCounters) -> &T,
) {
    for (i, f) in T::FIELDS.iter().enumerate() {
        header(
            out,
            &format!("{prefix}{}", f.name),
            &help_text(f.help),
            f.kind.as_str(),
        );
        for (s, c) in shards.iter().enumerate() {
            let _ = writeln!(
                out,
                "cadent_{prefix}{}{{shard=\"{s}\"}} {}",
                f.name,
                set(c).values()[i]
            );
        }
    }
}

impl CounterSet for ListenerStats {
    const FIELDS: &'static [set::Field] = ListenerCounters::FIELDS;
    fn values(&self) -> Vec<u64> {
        self.counters.values()
    }
    fn add(&mut self, other: &Self) {
        ListenerStats::add(self, other)
    }
}

/// A path segment of a self-metric name: bytes outside `[A-Za-z0-9_-]` become `_`
/// (destination names hold `://`, `:` and dots).
fn push_segment(out: &mut Vec<u8>, seg: &str) {
    out.extend(seg.bytes().map(|b| {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            b
        } else {
            b'_'
        }
    }));
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every counter field is summed over shards.
    #[test]
    fn totals_sum_every_field() {
        let mut one = ShardCounters::new(2, 3, 2, 1);
        let bump = |v: &mut ListenerStats| {
            v.counters = ListenerCounters {
                received_lines: 1,
                ..Default::default()
            };
            v.rejected_lines = [1; Reject::COUNT];
        };
        one.listeners.iter_mut().for_each(bump);
        one.rules_matched = vec![1; 3];
        one.routing.unrouted = 1;
        one.destinations[0].sent_lines = 1;
        one.aggregators[0].samples = 1;
        one.mesh.records_sent = 1;
        let total = Registry::total(&[one.clone(), one]);
        assert_eq!(total.listeners[1].counters.received_lines, 2);
        assert_eq!(total.listeners[1].rejected_lines, [2; Reject::COUNT]);
        assert_eq!(total.rules_matched, [2, 2, 2]);
        assert_eq!(total.routing.unrouted, 2);
        assert_eq!(total.destinations[0].sent_lines, 2);
        assert_eq!(total.aggregators[0].samples, 2);
        assert_eq!(total.mesh.records_sent, 2);
    }

    #[test]
    fn self_metric_lines_and_metrics_text_come_from_the_same_fields() {
        let labels = Labels {
            collectd_listeners: vec![false],
            listeners: vec!["in".into()],
            rules: vec!["route[0]".into()],
            destinations: vec![Some("tcp://127.0.0.1:2003".into())],
            aggregators: vec!["statsd".into()],
            stores: vec!["whisper".into()],
        };
        let r = Registry::new(labels, 1);
        let mut c = ShardCounters::new(1, 1, 1, 1);
        c.destinations[0].sent_lines = 7;
        r.publish(0, &c, true);
        let mut out = Vec::new();
        r.graphite_lines("cadent.h", 100, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("cadent.h.destinations.tcp___127_0_0_1_2003.sent_lines 7 100\n"),
            "{text}"
        );
        assert!(text.contains("cadent.h.listeners.in.received_lines 0 100\n"));
        let prom = r.prometheus();
        assert!(prom.contains(
            "cadent_destination_sent_lines{destination=\"tcp://127.0.0.1:2003\",shard=\"0\"} 7"
        ));
        let lines = text.lines().count();
        let families = prom.lines().filter(|l| l.starts_with("# TYPE")).count();
        assert!(lines > 20 && families > 20, "{lines} {families}");
    }
}
