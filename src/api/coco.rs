//! Coco's endpoints on the admin server: `/lookup?name=HOST` (where every host-keyed
//! cluster places a collectd host), `/tiers` (each host-keyed cluster, its members and
//! the hosts routed to each), and `/debug/vars` (expvar-style JSON with Coco's and
//! Noodle's counter names where they mean something here, next to cadent's own `/stats`),
//! so tools that read Coco's API keep working.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::AdminState;
use crate::config::{ClusterKind, Format};
use crate::route::ring_coco;
use crate::telemetry::Registry;

/// `/lookup` calls per cluster (Coco's `coco.lookup`).
#[derive(Debug, Default)]
pub struct Lookups(Mutex<BTreeMap<String, u64>>);

impl Lookups {
    fn count(&self, cluster: &str) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(cluster.to_string()).or_default() += 1;
    }

    fn json(&self) -> Value {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        json!(*m)
    }
}

#[derive(Deserialize)]
pub(super) struct LookupQuery {
    name: Option<String>,
}

/// The host-keyed clusters, by config index.
fn host_keyed(s: &AdminState) -> Vec<usize> {
    let t = s.control.topology();
    (0..t.config.clusters.len())
        .filter(|&i| t.config.clusters[i].host_keyed())
        .collect()
}

/// `GET /lookup?name=HOST`: `{"<cluster>": "<member>"}` for every host-keyed cluster, as
/// Coco answers (members as `host:port`), routed as the shards route now.
pub(super) async fn lookup(
    State(s): State<Arc<AdminState>>,
    Query(q): Query<LookupQuery>,
) -> Response {
    let Some(name) = q.name.filter(|n| !n.is_empty()) else {
        return (StatusCode::BAD_REQUEST, "missing ?name=HOST\n").into_response();
    };
    lookup_json(&s, &name).into_response()
}

/// `/lookup`'s answer for `host`.
pub(super) fn lookup_json(s: &AdminState, host: &str) -> Json<Value> {
    let t = s.control.topology();
    let mut out = Map::new();
    for i in host_keyed(s) {
        let name = &t.config.clusters[i].name;
        if let Some((m, _)) = s.control.owner(i, host) {
            out.insert(name.clone(), json!(m.display_hash()));
        }
        s.lookups.count(name);
    }
    Json(Value::Object(out))
}

/// Coco's replica count for a coco cluster of `n` members.
fn virtual_replicas(kind: ClusterKind, n: usize) -> Value {
    match kind {
        ClusterKind::Coco => json!(ring_coco::replicas_for(n)),
        _ => Value::Null,
    }
}

/// `GET /tiers`: every host-keyed cluster with its members, its replica count and the
/// collectd hosts routed to each member (at most `server.tiers_hosts_max` per member,
/// with a count of the others).
pub(super) async fn tiers(State(s): State<Arc<AdminState>>) -> Json<Value> {
    let seen = s.control.hosts_seen().await;
    let t = s.control.topology();
    let mut out = Vec::new();
    for i in host_keyed(&s) {
        let c = &t.config.clusters[i];
        let mut routes = Map::new();
        for (m, d) in c.members.iter().zip(&t.table.cluster_members[i]) {
            let (hosts, more) = seen.get(d.index()).cloned().unwrap_or_default();
            routes.insert(
                m.display_hash(),
                json!({ "hosts": hosts, "hosts_more": more }),
            );
        }
        out.push(json!({
            "name": c.name,
            "kind": c.kind.as_str(),
            "key": c.collectd_key().as_str(),
            "format": c.format.as_str(),
            "targets": c.members.iter().map(|m| m.display_hash()).collect::<Vec<_>>(),
            "virtual_replicas": virtual_replicas(c.kind, c.members.len()),
            "replication": c.replication,
            "routes": routes,
        }));
    }
    Json(Value::Array(out))
}

/// `GET /debug/vars`: expvar-style JSON. `cmdline` as Go's expvar has it; `coco` and
/// `noodle` with Coco's and Noodle's counter names (maps nested as Coco nests them, so
/// `coco/listen/raw` reads the same); `cadent` is `/stats`.
pub(super) async fn debug_vars(State(s): State<Arc<AdminState>>) -> Json<Value> {
    let seen = s.control.hosts_seen().await;
    let total = Registry::total(&s.registry.per_shard());
    let t = s.control.topology();
    let cfg = &t.config;
    let (mut raw, mut decoded, mut accepted, mut rejected, mut receive) = (0, 0, 0, 0, 0);
    let mut errors = BTreeMap::<String, u64>::new();
    for (l, &id) in cfg.listeners.iter().zip(&t.listener_ids) {
        if l.format != Format::Collectd {
            continue;
        }
        let Some(ls) = total.listeners.get(id) else {
            continue;
        };
        let c = &ls.collectd.counters;
        raw += c.packets;
        decoded += c.value_lists;
        accepted += c.routed;
        rejected += c.dropped_by_rule;
        receive += ls.counters.read_errors;
        for r in crate::protocol::collectd::Reject::ALL {
            *errors.entry(format!("decode.{}", r.as_str())).or_default() +=
                ls.collectd.rejects[r as usize];
        }
        for r in crate::protocol::decode::TypesReject::ALL {
            *errors.entry(format!("decode.{}", r.as_str())).or_default() +=
                ls.collectd.types_rejects[r as usize];
        }
    }
    errors.insert("fetch.receive".into(), receive);
    let mut send = BTreeMap::<String, u64>::new();
    let mut hosts = Map::new();
    let (mut sent_total, mut write_errors, mut dropped) = (0, 0, 0);
    let mut seen_dest = std::collections::HashSet::new();
    for i in host_keyed(&s) {
        let c = &cfg.clusters[i];
        let mut tier_hosts = Map::new();
        for (m, d) in c.members.iter().zip(&t.table.cluster_members[i]) {
            let n = seen
                .get(d.index())
                .map_or(0, |(h, more)| h.len() as u64 + more);
            tier_hosts.insert(m.display_hash(), json!(n));
            let Some(dc) = total.destinations.get(d.index()) else {
                continue;
            };
            if !seen_dest.insert(*d) {
                continue;
            }
            send.insert(m.display_hash(), dc.queued_lines);
            sent_total += dc.queued_lines;
            write_errors += dc.write_errors;
            dropped += dc.dropped_lines_queue_full
                + dc.dropped_lines_write_failed
                + dc.dropped_lines_shutdown
                + dc.dropped_unencodable;
        }
        hosts.insert(c.name.clone(), Value::Object(tier_hosts));
    }
    send.insert("total".into(), sent_total);
    errors.insert("send.write".into(), write_errors);
    errors.insert("send.dropped".into(), dropped);
    errors.insert("lookup.hash.get".into(), 0);
    let coco = json!({
        "listen": { "raw": raw, "decoded": decoded },
        "filter": { "accepted": accepted, "rejected": rejected },
        "send": send,
        "errors": errors,
        "hash.hosts": hosts,
        "lookup": s.lookups.json(),
    });
    Json(json!({
        "cmdline": std::env::args().collect::<Vec<_>>(),
        "coco": coco,
        "noodle": s.noodle.json(),
        "cadent": s.registry.stats_json(),
    }))
}
