//! Counters. Each shard owns plain `u64` counters and publishes a copy every
//! `stats_interval_ms`; the control thread sums the copies for `/stats` and `/metrics`.
//! The shard never waits on the control thread: it skips a publish if the slot is busy.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use crate::protocol::Reject;

/// Counters of one listener on one shard.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListenerCounters {
    /// Lines seen (good and bad).
    pub received_lines: u64,
    /// Bytes read.
    pub received_bytes: u64,
    /// Lines that parsed.
    pub parsed_lines: u64,
    /// Rejected lines, by [`Reject`] reason.
    pub rejected_lines: [u64; Reject::COUNT],
    /// UDP datagrams received.
    pub datagrams: u64,
    /// Connections accepted.
    pub connections_accepted: u64,
    /// Connections refused at `connections_max`.
    pub connections_refused: u64,
    /// Connections open now (gauge).
    pub connections_open: u64,
    /// Read or accept errors.
    pub read_errors: u64,
    /// Times a reader waited for a full destination queue.
    pub stalls: u64,
}

/// Counters of one destination on one shard.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DestinationCounters {
    /// Lines put into this destination's batches.
    pub queued_lines: u64,
    /// Lines the kernel (socket or file) accepted.
    pub sent_lines: u64,
    /// Bytes written.
    pub sent_bytes: u64,
    /// Writes (syscalls or datagrams) that carried them.
    pub writes: u64,
    /// Lines dropped because the queue was over `queue_bytes_max` (oldest first).
    pub dropped_lines_queue_full: u64,
    /// Lines still queued when the shutdown deadline passed.
    pub dropped_lines_shutdown: u64,
    /// Lines in a UDP datagram or file write that failed (a TCP batch's unwritten part is
    /// retried instead).
    pub dropped_lines_write_failed: u64,
    /// Lines moved from this destination's queue to live members of its cluster when it
    /// went down (any_of, failover): delivered elsewhere, not lost.
    pub offloaded_lines: u64,
    /// Failed writes (TCP: the unwritten part is sent again after reconnecting).
    pub write_errors: u64,
    /// Successful connects.
    pub connects: u64,
    /// Failed connects.
    pub connect_failures: u64,
    /// Bytes queued now (gauge).
    pub queue_bytes: u64,
    /// 1 while connected (gauge).
    pub connected: u64,
}

/// Everything one shard counts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardCounters {
    /// By listener index (config order).
    pub listeners: Vec<ListenerCounters>,
    /// Metrics matched, by rule index.
    pub rules_matched: Vec<u64>,
    /// By destination index.
    pub destinations: Vec<DestinationCounters>,
    /// Metrics a drop rule matched.
    pub dropped_by_rule: u64,
    /// Metrics no rule matched.
    pub unrouted: u64,
}

impl ShardCounters {
    /// Zeroed counters shaped for the config.
    pub fn new(listeners: usize, rules: usize, destinations: usize) -> ShardCounters {
        ShardCounters {
            listeners: vec![ListenerCounters::default(); listeners],
            rules_matched: vec![0; rules],
            destinations: vec![DestinationCounters::default(); destinations],
            dropped_by_rule: 0,
            unrouted: 0,
        }
    }

    /// Makes room for counters of listeners up to `len` (a reload added one).
    pub fn grow_listeners(&mut self, len: usize) {
        if self.listeners.len() < len {
            self.listeners.resize(len, ListenerCounters::default());
        }
    }

    fn add(&mut self, o: &ShardCounters) {
        // Shards apply a reconfiguration at their own tick: one may count more rules or
        // destinations than another for a moment.
        self.grow_listeners(o.listeners.len());
        if self.rules_matched.len() < o.rules_matched.len() {
            self.rules_matched.resize(o.rules_matched.len(), 0);
        }
        if self.destinations.len() < o.destinations.len() {
            self.destinations
                .resize(o.destinations.len(), DestinationCounters::default());
        }
        macro_rules! sum {
            ($a:expr, $b:expr, $($f:ident),*) => { $( $a.$f += $b.$f; )* };
        }
        for (a, b) in self.listeners.iter_mut().zip(&o.listeners) {
            sum!(
                a,
                b,
                received_lines,
                received_bytes,
                parsed_lines,
                datagrams
            );
            sum!(
                a,
                b,
                connections_accepted,
                connections_refused,
                connections_open
            );
            sum!(a, b, read_errors, stalls);
            for (x, y) in a.rejected_lines.iter_mut().zip(&b.rejected_lines) {
                *x += y;
            }
        }
        for (a, b) in self.rules_matched.iter_mut().zip(&o.rules_matched) {
            *a += b;
        }
        for (a, b) in self.destinations.iter_mut().zip(&o.destinations) {
            sum!(a, b, queued_lines, sent_lines, sent_bytes, writes);
            sum!(
                a,
                b,
                dropped_lines_queue_full,
                dropped_lines_shutdown,
                dropped_lines_write_failed,
                offloaded_lines
            );
            sum!(
                a,
                b,
                write_errors,
                connects,
                connect_failures,
                queue_bytes,
                connected
            );
        }
        sum!(self, o, dropped_by_rule, unrouted);
    }
}

/// Names of the things counted, so snapshots can be rendered without the config.
#[derive(Debug, Clone, Default)]
pub struct Labels {
    /// Listener names.
    pub listeners: Vec<String>,
    /// Route names.
    pub rules: Vec<String>,
    /// Destination names.
    pub destinations: Vec<String>,
}

/// The published copies of every shard's counters.
#[derive(Debug)]
pub struct Registry {
    labels: RwLock<Labels>,
    shards: Vec<Mutex<ShardCounters>>,
}

impl Registry {
    /// A registry for `shards` shards.
    pub fn new(labels: Labels, shards: usize) -> Arc<Registry> {
        let zero = ShardCounters::new(
            labels.listeners.len(),
            labels.rules.len(),
            labels.destinations.len(),
        );
        Arc::new(Registry {
            labels: RwLock::new(labels),
            shards: (0..shards).map(|_| Mutex::new(zero.clone())).collect(),
        })
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

    /// New names after a reconfiguration (destinations only grow; rules may change).
    pub fn set_labels(&self, labels: Labels) {
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

    /// `/stats` JSON: totals by listener, rule and destination, plus each shard's.
    pub fn stats_json(&self) -> serde_json::Value {
        let labels = self.labels();
        use serde_json::{json, Map, Value};
        let shards = self.per_shard();
        let total = Registry::total(&shards);
        let listeners = |c: &ShardCounters| -> Value {
            let mut m = Map::new();
            for (name, l) in labels.listeners.iter().zip(&c.listeners) {
                let mut rejected = Map::new();
                for r in Reject::ALL {
                    rejected.insert(r.as_str().into(), json!(l.rejected_lines[r as usize]));
                }
                m.insert(
                    name.clone(),
                    json!({
                        "received_lines": l.received_lines,
                        "received_bytes": l.received_bytes,
                        "parsed_lines": l.parsed_lines,
                        "rejected_lines": l.rejected_lines.iter().sum::<u64>(),
                        "rejected_by_reason": rejected,
                        "datagrams": l.datagrams,
                        "connections_accepted": l.connections_accepted,
                        "connections_refused": l.connections_refused,
                        "connections_open": l.connections_open,
                        "read_errors": l.read_errors,
                        "stalls": l.stalls,
                    }),
                );
            }
            Value::Object(m)
        };
        let rules = |c: &ShardCounters| -> Value {
            let mut m = Map::new();
            for (name, n) in labels.rules.iter().zip(&c.rules_matched) {
                m.insert(name.clone(), json!({ "matched": n }));
            }
            Value::Object(m)
        };
        let dests = |c: &ShardCounters| -> Value {
            let mut m = Map::new();
            for (name, d) in labels.destinations.iter().zip(&c.destinations) {
                m.insert(name.clone(), serde_json::to_value(d).unwrap_or(Value::Null));
            }
            Value::Object(m)
        };
        let summary = |c: &ShardCounters| -> Value {
            json!({
                "listeners": listeners(c),
                "routes": rules(c),
                "destinations": dests(c),
                "dropped_by_rule": c.dropped_by_rule,
                "unrouted": c.unrouted,
            })
        };
        let mut v = summary(&total);
        v["shards"] = Value::Array(shards.iter().map(summary).collect());
        v
    }

    /// `/metrics`: Prometheus text exposition format, totals plus a `shard` label.
    pub fn prometheus(&self) -> String {
        let labels = self.labels();
        let shards = self.per_shard();
        let mut out = String::with_capacity(16 * 1024);
        let mut family = |name: &str, help: &str, kind: &str, rows: &mut dyn FnMut(&mut String)| {
            let _ = writeln!(out, "# HELP cadent_{name} {help}");
            let _ = writeln!(out, "# TYPE cadent_{name} {kind}");
            rows(&mut out);
        };
        // One family per counter field: `$prefix$field{$label="name",shard="s"} value`,
        // for the listeners or the destinations of every shard.
        macro_rules! per_item_family {
            ($prefix:literal, $label:literal, $names:ident, $items:ident, $field:ident, $kind:expr, $help:expr) => {
                family(
                    concat!($prefix, stringify!($field)),
                    $help,
                    $kind,
                    &mut |o| {
                        for (s, c) in shards.iter().enumerate() {
                            for (name, item) in labels.$names.iter().zip(&c.$items) {
                                let _ = writeln!(
                                    o,
                                    concat!(
                                        "cadent_",
                                        $prefix,
                                        "{}{{",
                                        $label,
                                        "=\"{}\",shard=\"{}\"}} {}"
                                    ),
                                    stringify!($field),
                                    escape(name),
                                    s,
                                    item.$field
                                );
                            }
                        }
                    },
                );
            };
        }
        macro_rules! listener_family {
            ($field:ident, $kind:expr, $help:expr) => {
                per_item_family!("", "listener", listeners, listeners, $field, $kind, $help)
            };
        }
        macro_rules! dest_family {
            ($field:ident, $kind:expr, $help:expr) => {
                per_item_family!(
                    "destination_",
                    "destination",
                    destinations,
                    destinations,
                    $field,
                    $kind,
                    $help
                )
            };
        }
        listener_family!(received_lines, "counter", "Lines received (good and bad).");
        listener_family!(received_bytes, "counter", "Bytes received.");
        listener_family!(parsed_lines, "counter", "Lines that parsed.");
        listener_family!(datagrams, "counter", "UDP datagrams received.");
        listener_family!(connections_accepted, "counter", "Connections accepted.");
        listener_family!(
            connections_refused,
            "counter",
            "Connections refused at connections_max."
        );
        listener_family!(connections_open, "gauge", "Connections open.");
        listener_family!(read_errors, "counter", "Read and accept errors.");
        listener_family!(
            stalls,
            "counter",
            "Reads delayed by a full destination queue."
        );
        family(
            "rejected_lines",
            "Lines dropped at ingest, by reason.",
            "counter",
            &mut |o| {
                for (s, c) in shards.iter().enumerate() {
                    for (name, l) in labels.listeners.iter().zip(&c.listeners) {
                        for r in Reject::ALL {
                            let _ = writeln!(
                                o,
                                "cadent_rejected_lines{{listener=\"{}\",reason=\"{}\",shard=\"{s}\"}} {}",
                                escape(name),
                                r.as_str(),
                                l.rejected_lines[r as usize]
                            );
                        }
                    }
                }
            },
        );
        family(
            "route_matched",
            "Metrics matched by a route.",
            "counter",
            &mut |o| {
                for (s, c) in shards.iter().enumerate() {
                    for (name, n) in labels.rules.iter().zip(&c.rules_matched) {
                        let _ = writeln!(
                            o,
                            "cadent_route_matched{{route=\"{}\",shard=\"{s}\"}} {n}",
                            escape(name)
                        );
                    }
                }
            },
        );
        family(
            "dropped_by_rule",
            "Metrics dropped by a drop route.",
            "counter",
            &mut |o| {
                for (s, c) in shards.iter().enumerate() {
                    let _ = writeln!(
                        o,
                        "cadent_dropped_by_rule{{shard=\"{s}\"}} {}",
                        c.dropped_by_rule
                    );
                }
            },
        );
        family(
            "unrouted",
            "Metrics no route matched (dropped).",
            "counter",
            &mut |o| {
                for (s, c) in shards.iter().enumerate() {
                    let _ = writeln!(o, "cadent_unrouted{{shard=\"{s}\"}} {}", c.unrouted);
                }
            },
        );
        dest_family!(queued_lines, "counter", "Lines queued for a destination.");
        dest_family!(sent_lines, "counter", "Lines written to a destination.");
        dest_family!(sent_bytes, "counter", "Bytes written to a destination.");
        dest_family!(
            writes,
            "counter",
            "Write calls or datagrams to a destination."
        );
        dest_family!(
            dropped_lines_queue_full,
            "counter",
            "Lines dropped: queue over queue_bytes_max."
        );
        dest_family!(
            dropped_lines_shutdown,
            "counter",
            "Lines dropped: still queued at the shutdown deadline."
        );
        dest_family!(
            dropped_lines_write_failed,
            "counter",
            "Lines dropped: a UDP or file write failed."
        );
        dest_family!(
            offloaded_lines,
            "counter",
            "Lines moved to live members of the cluster when the destination went down."
        );
        dest_family!(write_errors, "counter", "Failed writes.");
        dest_family!(connects, "counter", "Successful connects.");
        dest_family!(connect_failures, "counter", "Failed connects.");
        dest_family!(queue_bytes, "gauge", "Bytes queued for a destination.");
        dest_family!(connected, "gauge", "1 while the destination is connected.");
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_numbers(v: serde_json::Value, f: &dyn Fn(u64) -> u64) -> serde_json::Value {
        use serde_json::Value;
        match v {
            Value::Number(n) => Value::from(f(n.as_u64().unwrap())),
            Value::Array(a) => Value::Array(a.into_iter().map(|x| map_numbers(x, f)).collect()),
            Value::Object(o) => {
                Value::Object(o.into_iter().map(|(k, x)| (k, map_numbers(x, f))).collect())
            }
            other => other,
        }
    }

    /// Every counter field is summed over shards (a field missing from `add` would stay 1).
    #[test]
    fn totals_sum_every_field() {
        let shape = serde_json::to_value(ShardCounters::new(2, 3, 2)).unwrap();
        let ones: ShardCounters = serde_json::from_value(map_numbers(shape, &|_| 1)).unwrap();
        let total = serde_json::to_value(Registry::total(&[ones.clone(), ones])).unwrap();
        let all_two = map_numbers(total.clone(), &|_| 2);
        assert_eq!(total, all_two);
    }
}
