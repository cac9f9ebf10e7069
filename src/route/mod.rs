//! Routing: rules on metric names and the hash rings of clusters. Pure: no I/O, and
//! nothing allocates per metric once the caller's output vector has grown.

pub mod destination;
pub mod ring;
pub mod rules;

use std::collections::HashMap;

use crate::config::{Action, ClusterKind, Config};
pub use destination::{DestId, Destination, DestinationKind, DestinationTable};
use ring::{CarbonRing, RingMember};
use rules::Matcher;

/// How a cluster maps a key onto its members.
#[derive(Debug, Clone)]
pub enum ClusterRoute {
    /// carbon-c-relay's md5 ring.
    CarbonCh {
        /// The ring over the members.
        ring: CarbonRing,
        /// Distinct members per key.
        replication: usize,
    },
    /// Every member.
    Forward,
}

/// A cluster ready to route: its kind and its members' destinations.
#[derive(Debug, Clone)]
pub struct CompiledCluster {
    /// Cluster name.
    pub name: String,
    /// Ring or fan-out.
    pub route: ClusterRoute,
    /// Destination of each member, in member order.
    pub members: Vec<DestId>,
}

impl CompiledCluster {
    /// Appends the destinations of `key` (replica order) to `out`, skipping ones already
    /// there. `scratch` is reused between calls; `positions` caches ring positions.
    #[inline]
    fn destinations_into(
        &self,
        key: &[u8],
        positions: &mut PositionCache,
        scratch: &mut Vec<usize>,
        out: &mut Vec<DestId>,
    ) {
        match &self.route {
            ClusterRoute::CarbonCh { ring, replication } => {
                ring.route_position_into(positions.get(key), *replication, scratch);
                for &m in scratch.iter() {
                    push_unique(out, self.members[m]);
                }
            }
            ClusterRoute::Forward => {
                for &d in &self.members {
                    push_unique(out, d);
                }
            }
        }
    }
}

#[inline]
fn push_unique(out: &mut Vec<DestId>, d: DestId) {
    if !out.contains(&d) {
        out.push(d);
    }
}

/// Remembers the md5 ring position of recent keys: metric names repeat every interval,
/// and MD5 is most of what routing costs. Positions depend on the key alone, so one cache
/// serves every carbon_ch cluster, and a hit gives exactly what MD5 would. Bounded by
/// `server.hash_cache_keys_max`: when full it is emptied and refills.
#[derive(Debug, Clone)]
struct PositionCache {
    map: HashMap<Box<[u8]>, u16, ahash::RandomState>,
    keys_max: usize,
}

impl PositionCache {
    fn new(keys_max: usize) -> PositionCache {
        PositionCache {
            map: HashMap::with_hasher(ahash::RandomState::new()),
            keys_max,
        }
    }

    #[inline]
    fn get(&mut self, key: &[u8]) -> u16 {
        if let Some(&p) = self.map.get(key) {
            return p;
        }
        let p = CarbonRing::position(key);
        if self.keys_max > 0 {
            if self.map.len() >= self.keys_max {
                self.map.clear();
            }
            self.map.insert(key.into(), p);
        }
        p
    }
}

/// A compiled route rule.
#[derive(Debug, Clone)]
struct Rule {
    matcher: Matcher,
    /// `None` = drop.
    send_to: Option<Vec<usize>>,
    continue_matching: bool,
}

/// What the router decided for one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Sent to the destinations written to `out` (possibly also dropped by a later rule's
    /// absence of matches; what counts is that `out` is non-empty).
    Routed,
    /// A drop rule matched first.
    Dropped,
    /// No rule matched.
    Unrouted,
}

/// Rules plus clusters: name in, destinations out. Each shard owns a clone.
#[derive(Debug, Clone)]
pub struct Router {
    rules: Vec<Rule>,
    clusters: Vec<CompiledCluster>,
    positions: PositionCache,
    scratch: Vec<usize>,
}

impl Router {
    /// Compiles the routes and rings of a validated config.
    pub fn new(cfg: &Config, table: &DestinationTable) -> Router {
        let clusters = cfg
            .clusters
            .iter()
            .zip(&table.cluster_members)
            .map(|(c, members)| {
                let route = match c.kind {
                    ClusterKind::CarbonCh => {
                        let ring_members: Vec<RingMember<'_>> = c
                            .members
                            .iter()
                            .map(|m| RingMember {
                                host: &m.host,
                                port: m.port,
                                instance: m.instance.as_deref(),
                            })
                            .collect();
                        ClusterRoute::CarbonCh {
                            ring: CarbonRing::new(&ring_members),
                            replication: c.replication,
                        }
                    }
                    ClusterKind::Forward | ClusterKind::File => ClusterRoute::Forward,
                };
                CompiledCluster {
                    name: c.name.clone(),
                    route,
                    members: members.clone(),
                }
            })
            .collect();
        let rules = cfg
            .routes
            .iter()
            .map(|r| Rule {
                matcher: Matcher::compile(&r.matcher),
                send_to: match &r.action {
                    Action::Drop => None,
                    Action::SendTo(c) => Some(c.clone()),
                },
                continue_matching: r.continue_matching,
            })
            .collect();
        Router {
            rules,
            clusters,
            positions: PositionCache::new(cfg.server.hash_cache_keys_max),
            scratch: Vec::with_capacity(8),
        }
    }

    /// The compiled clusters, in config order.
    pub fn clusters(&self) -> &[CompiledCluster] {
        &self.clusters
    }

    /// Number of rules (the length `route` expects of `rule_hits`).
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Routes one metric: `name` is matched by the rules, `key` is hashed by the rings.
    /// Clears `out` and fills it with distinct destinations; counts each matching rule in
    /// `rule_hits`.
    #[inline]
    pub fn route(
        &mut self,
        name: &[u8],
        key: &[u8],
        rule_hits: &mut [u64],
        out: &mut Vec<DestId>,
    ) -> Verdict {
        debug_assert_eq!(rule_hits.len(), self.rules.len());
        out.clear();
        let mut matched = false;
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.matcher.is_match(name) {
                continue;
            }
            rule_hits[i] += 1;
            matched = true;
            match &rule.send_to {
                None => {
                    return if out.is_empty() {
                        Verdict::Dropped
                    } else {
                        Verdict::Routed
                    }
                }
                Some(clusters) => {
                    for &c in clusters {
                        self.clusters[c].destinations_into(
                            key,
                            &mut self.positions,
                            &mut self.scratch,
                            out,
                        );
                    }
                }
            }
            if !rule.continue_matching {
                break;
            }
        }
        match (matched, out.is_empty()) {
            (false, _) => Verdict::Unrouted,
            (true, false) => Verdict::Routed,
            (true, true) => Verdict::Unrouted,
        }
    }

    /// The destinations of `key` in one cluster, in replica order (for `cadent hash` and
    /// `/hashcheck`).
    pub fn cluster_destinations(&mut self, cluster: usize, key: &[u8], out: &mut Vec<DestId>) {
        out.clear();
        self.clusters[cluster].destinations_into(key, &mut self.positions, &mut self.scratch, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(text: &str) -> (Router, DestinationTable) {
        let cfg = Config::parse(text).unwrap();
        let table = DestinationTable::from_config(&cfg);
        (Router::new(&cfg, &table), table)
    }

    fn check(r: &mut Router, t: &DestinationTable, name: &str, want: (Verdict, &[&str])) {
        let mut hits = vec![0; r.rule_count()];
        let mut out = Vec::new();
        let v = r.route(name.as_bytes(), name.as_bytes(), &mut hits, &mut out);
        let names: Vec<&str> = out
            .iter()
            .map(|d| t.destinations[d.index()].name.as_str())
            .collect();
        assert_eq!((v, names.as_slice()), want, "{name}");
    }

    #[test]
    fn rules_in_order_with_continue_and_fanout() {
        let (mut r, t) = router(
            r#"
            [[listen]]
            name = "g"
            url = "tcp://127.0.0.1:0"
            format = "graphite"
            [[cluster]]
            name = "one"
            kind = "forward"
            members = ["127.0.0.1:1"]
            [[cluster]]
            name = "two"
            kind = "forward"
            members = ["127.0.0.1:2", "udp://127.0.0.1:1"]
            [[route]]
            match = { prefix = "carbon." }
            action = "drop"
            [[route]]
            match = { substring = ".fan." }
            send_to = ["one", "two"]
            [[route]]
            match = { regex = "^cont" }
            send_to = ["one"]
            continue = true
            [[route]]
            match = { prefix = "cont.x" }
            send_to = ["two"]
        "#,
        );
        check(&mut r, &t, "carbon.x", (Verdict::Dropped, &[]));
        check(&mut r, &t, "nothing", (Verdict::Unrouted, &[]));
        check(
            &mut r,
            &t,
            "a.fan.b",
            (
                Verdict::Routed,
                &[
                    "tcp://127.0.0.1:1",
                    "tcp://127.0.0.1:2",
                    "udp://127.0.0.1:1",
                ],
            ),
        );
        check(
            &mut r,
            &t,
            "cont.y",
            (Verdict::Routed, &["tcp://127.0.0.1:1"]),
        );
        check(
            &mut r,
            &t,
            "cont.x",
            (
                Verdict::Routed,
                &[
                    "tcp://127.0.0.1:1",
                    "tcp://127.0.0.1:2",
                    "udp://127.0.0.1:1",
                ],
            ),
        );
    }
}
