//! Routing: rules on metric names and the hash rings of clusters. Pure: no I/O, and
//! nothing allocates per metric once the caller's output vector has grown.

pub mod cache;
pub mod destination;
pub mod rewrite;
pub mod ring;
pub mod ring_fnv;
pub mod ring_python;
pub mod ring_statsd;
pub mod rules;

use std::collections::HashMap;

pub use cache::Fingerprint;
use cache::FingerprintTable;

use crate::config::{Action, ClusterKind, Config};
use crate::protocol::graphite;
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
    /// there. `scratch` is reused between calls.
    fn destinations_into(&self, key: &[u8], scratch: &mut Vec<usize>, out: &mut Vec<DestId>) {
        match &self.route {
            ClusterRoute::CarbonCh { ring, replication } => {
                ring.route_into(key, *replication, scratch);
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

/// The routing decision for one name: which rules matched, the verdict, the destinations.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    verdict: Verdict,
    /// The name was rewritten (carbon-c-relay cleansing) before rules and rings saw it.
    cleansed: bool,
    rules: Box<[u16]>,
    dests: Box<[DestId]>,
}

/// What the router decided for one metric.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'a> {
    /// Routed, dropped or unrouted.
    pub verdict: Verdict,
    /// Distinct destinations, in rule and replica order.
    pub dests: &'a [DestId],
    /// The name needed carbon-c-relay cleansing: rules and rings saw the cleansed name,
    /// and the line must go out with it.
    pub cleansed: bool,
}

/// Distinct plans kept before the cache starts over; real configs have a handful.
const PLANS_MAX: usize = 1 << 16;

/// Remembers the decision for recent names. Metric names repeat every interval, and a
/// decision depends on the name alone (rules match it, rings hash a prefix of it), so a
/// hit is exactly what evaluating the rules and MD5 would give, for the price of one
/// lookup (see [`cache`]). Decisions are interned: names share a handful of plans, found
/// by a hash of their contents, so a miss allocates only for a plan never seen before.
/// Bounded by `server.route_cache_names_max`; when full it is emptied and refills.
#[derive(Debug, Clone)]
struct RouteCache {
    by_name: FingerprintTable,
    plans: Vec<Plan>,
    /// Hash of a plan's contents -> the plans with that hash.
    plan_ids: HashMap<u64, Vec<u32>, ahash::RandomState>,
    hasher: ahash::RandomState,
}

impl RouteCache {
    fn new(names_max: usize) -> RouteCache {
        RouteCache {
            by_name: FingerprintTable::new(names_max),
            plans: Vec::new(),
            plan_ids: HashMap::with_hasher(ahash::RandomState::new()),
            hasher: ahash::RandomState::new(),
        }
    }

    fn insert(
        &mut self,
        fp: Fingerprint,
        verdict: Verdict,
        cleansed: bool,
        rules: &[u16],
        dests: &[DestId],
    ) {
        if self.plans.len() >= PLANS_MAX {
            self.by_name.clear();
            self.plans.clear();
            self.plan_ids.clear();
        }
        let h = self.hasher.hash_one((verdict, cleansed, rules, dests));
        let found = self.plan_ids.get(&h).and_then(|ids| {
            ids.iter().copied().find(|&id| {
                let p = &self.plans[id as usize];
                p.verdict == verdict
                    && p.cleansed == cleansed
                    && *p.rules == *rules
                    && *p.dests == *dests
            })
        });
        let id = match found {
            Some(id) => id,
            None => {
                let id = self.plans.len() as u32;
                self.plans.push(Plan {
                    verdict,
                    cleansed,
                    rules: rules.into(),
                    dests: dests.into(),
                });
                self.plan_ids.entry(h).or_default().push(id);
                id
            }
        };
        if !self.by_name.insert(fp, id) {
            // Full: start over. Plans stay (they are few, and bounded by PLANS_MAX).
            self.by_name.clear();
            self.by_name.insert(fp, id);
        }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    cache: RouteCache,
    cache_enabled: bool,
    scratch: Vec<usize>,
    scratch_rules: Vec<u16>,
    scratch_dests: Vec<DestId>,
    scratch_name: Vec<u8>,
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
            cache: RouteCache::new(cfg.server.route_cache_names_max),
            cache_enabled: cfg.server.route_cache_names_max > 0,
            scratch: Vec::with_capacity(8),
            scratch_rules: Vec::with_capacity(8),
            scratch_dests: Vec::with_capacity(8),
            scratch_name: Vec::with_capacity(256),
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

    /// Routes one metric: `name` is matched by the rules, `key` (the untagged part of
    /// `name`) is hashed by the rings. Counts each matching rule in `rule_hits` and returns
    /// the verdict with the distinct destinations, in rule and replica order.
    #[inline]
    pub fn route(
        &mut self,
        name: &[u8],
        key: &[u8],
        rule_hits: &mut [u64],
    ) -> (Verdict, &[DestId]) {
        let fp = self.fingerprint(name, key, false);
        let d = self.route_fingerprinted(fp, name, key, false, rule_hits);
        (d.verdict, d.dests)
    }

    /// The route cache's fingerprint of a metric, for [`prefetch`](Self::prefetch) and
    /// [`route_fingerprinted`](Self::route_fingerprinted). A decision depends on the name
    /// (rules), on the prefix of it the rings hash (`key`: the untagged part for graphite,
    /// the whole name for statsd) and on whether it is cleansed, so all go into it.
    #[inline]
    pub fn fingerprint(&self, name: &[u8], key: &[u8], cleanse: bool) -> Fingerprint {
        debug_assert!(name.starts_with(key));
        self.cache.by_name.fingerprint(name, key.len(), cleanse)
    }

    /// Starts loading the cache slot of a name that will be routed soon. Routing a batch
    /// of lines with their slots prefetched overlaps the memory latency of the lookups.
    #[inline]
    pub fn prefetch(&self, fp: Fingerprint) {
        self.cache.by_name.prefetch(fp);
    }

    /// [`route`](Self::route) with the fingerprint already computed, and with
    /// carbon-c-relay's cleansing of graphite names when `cleanse` is set: a name that
    /// needs it is routed as cleansed, and the decision says so. Whether a name needs it
    /// is remembered with the decision, so a cache hit costs no check.
    #[inline]
    pub fn route_fingerprinted(
        &mut self,
        fp: Fingerprint,
        name: &[u8],
        key: &[u8],
        cleanse: bool,
        rule_hits: &mut [u64],
    ) -> Decision<'_> {
        debug_assert_eq!(rule_hits.len(), self.rules.len());
        if let Some(id) = self.cache.by_name.get(fp) {
            let plan = &self.cache.plans[id as usize];
            for &r in plan.rules.iter() {
                rule_hits[r as usize] += 1;
            }
            return Decision {
                verdict: plan.verdict,
                dests: &plan.dests,
                cleansed: plan.cleansed,
            };
        }
        let cleansed = cleanse && !graphite::is_clean(name);
        let verdict = if cleansed {
            let mut clean = std::mem::take(&mut self.scratch_name);
            graphite::cleanse(name, &mut clean);
            let verdict = self.evaluate(&clean, graphite::hash_key(&clean));
            self.scratch_name = clean;
            verdict
        } else {
            self.evaluate(name, key)
        };
        for &r in &self.scratch_rules {
            rule_hits[r as usize] += 1;
        }
        if self.cache_enabled {
            self.cache.insert(
                fp,
                verdict,
                cleansed,
                &self.scratch_rules,
                &self.scratch_dests,
            );
        }
        Decision {
            verdict,
            dests: &self.scratch_dests,
            cleansed,
        }
    }

    /// Evaluates the rules and rings for one name, into the scratch vectors.
    fn evaluate(&mut self, name: &[u8], key: &[u8]) -> Verdict {
        self.scratch_rules.clear();
        self.scratch_dests.clear();
        let out = &mut self.scratch_dests;
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.matcher.is_match(name) {
                continue;
            }
            self.scratch_rules.push(i as u16);
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
                        self.clusters[c].destinations_into(key, &mut self.scratch, out);
                    }
                }
            }
            if !rule.continue_matching {
                break;
            }
        }
        if out.is_empty() {
            Verdict::Unrouted
        } else {
            Verdict::Routed
        }
    }

    /// The destinations of `key` in one cluster, in replica order (for `cadent hash` and
    /// `/hashcheck`).
    pub fn cluster_destinations(&mut self, cluster: usize, key: &[u8], out: &mut Vec<DestId>) {
        out.clear();
        self.clusters[cluster].destinations_into(key, &mut self.scratch, out);
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
        // Twice: the first call evaluates, the second comes from the cache.
        let mut hits = vec![0; r.rule_count()];
        let mut first = None;
        for round in 0..2 {
            let (v, out) = r.route(name.as_bytes(), name.as_bytes(), &mut hits);
            let names: Vec<String> = out
                .iter()
                .map(|d| t.destinations[d.index()].name.clone())
                .collect();
            let want_names: Vec<String> = want.1.iter().map(|s| s.to_string()).collect();
            assert_eq!((v, &names), (want.0, &want_names), "{name} round {round}");
            match &first {
                None => first = Some(hits.clone()),
                Some(h) => {
                    let doubled: Vec<u64> = h.iter().map(|x| x * 2).collect();
                    assert_eq!(hits, doubled, "{name}: rule hits counted on cache hits too");
                }
            }
        }
    }

    #[test]
    fn rules_in_order_with_continue_and_fanout() {
        for cache in [0, 2, 1000] {
            rules_with_cache(cache);
        }
    }

    fn rules_with_cache(names_max: usize) {
        let (mut r, t) = router(&format!(
            r#"
            [server]
            route_cache_names_max = {names_max}
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
            match = {{ prefix = "carbon." }}
            action = "drop"
            [[route]]
            match = {{ substring = ".fan." }}
            send_to = ["one", "two"]
            [[route]]
            match = {{ regex = "^cont" }}
            send_to = ["one"]
            continue = true
            [[route]]
            match = {{ prefix = "cont.x" }}
            send_to = ["two"]
        "#
        ));
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
