//! Routing: rules on metric names and the hash rings of clusters. Pure: no I/O, and
//! nothing allocates per metric once the caller's output vector has grown.

pub mod cache;
pub mod destination;
pub mod rewrite;
pub mod ring;
pub mod ring_coco;
pub mod ring_fnv;
pub mod ring_python;
pub mod ring_statsd;
pub mod rules;

use std::collections::HashMap;

pub use cache::Fingerprint;
use cache::FingerprintTable;

use crate::config::{Action, ClusterKey, ClusterKind, Config, OnDown, Sink};
use crate::point::Origin;
use crate::protocol::graphite;
pub use destination::{
    DestId, DestState, Destination, DestinationKind, DestinationTable, TooManyDestinations,
    DESTINATION_IDS_MAX,
};
use rewrite::Rewrite;
use ring::{CarbonRing, RingMember};
use ring_coco::CocoRing;
use ring_fnv::{FnvRing, JumpRing};
use ring_python::PythonRing;
use ring_statsd::StatsdRing;
use rules::Matcher;

crate::counter_set! {
    /// What routing decided, per shard (matches per rule are counted beside it).
    pub struct RouteCounters {
        /// Metrics a drop route matched.
        dropped_by_rule: counter,
        /// Metrics no route matched (dropped).
        unrouted: counter,
        /// Metrics a rewrite left with an empty name (dropped: no receiver takes a
        /// line without a name; carbon-c-relay sends one).
        dropped_empty_name: counter,
        /// cadent's own counters routed as graphite lines (`[telemetry]`): with the
        /// listeners' parsed lines and the aggregators' flushed ones, what routing was
        /// handed.
        self_metric_lines: counter,
    }
}

/// The names `/stats` gives the rules a router counts: each route's name, then, per
/// aggregator, the implicit last rule that sends its output to its `send_to`.
pub fn rule_labels(cfg: &Config) -> Vec<String> {
    cfg.routes
        .iter()
        .map(|r| r.name.clone())
        .chain(
            cfg.aggregates
                .iter()
                .map(|a| format!("aggregate[{}].send_to", a.name)),
        )
        .collect()
}

/// How rules and rings read a point's name; part of every routing decision (and of its
/// fingerprint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameForm {
    /// As given: statsd, regex lines, graphite with `cleanse_names = false`, cadent's own
    /// lines. Rings hash the name or its untagged prefix, as their kind does.
    Plain,
    /// Graphite, cleansed as carbon-c-relay does before rules and rings see it.
    Cleansed,
    /// A collectd value list: the name is its identifier, the key its host, and each
    /// hashing cluster hashes the host or the identifier, as its `key` says.
    Collectd,
}

impl NameForm {
    /// One number per form, for the route cache's fingerprint.
    fn code(self) -> u8 {
        match self {
            NameForm::Plain => 0,
            NameForm::Cleansed => 1,
            NameForm::Collectd => 2,
        }
    }
}

/// Whether destination `d` is up by `alive` (one not listed yet is).
#[inline]
fn is_up(alive: &[bool], d: DestId) -> bool {
    alive.get(d.index()).copied().unwrap_or(true)
}

/// What evaluation hashes for one point.
#[derive(Debug, Clone, Copy)]
enum Keying {
    /// A graphite name: its path (up to the first `;`, or where a rewrite ended it).
    Path,
    /// A collectd identifier whose first `host_len` bytes are its host.
    Collectd { host_len: usize },
}

impl Keying {
    /// The key rings hash in `current`, the name as rules left it, whose graphite path is
    /// `path` (`rewritten`: a rewrite changed it, so a collectd host is read back from it:
    /// the text before its first `/`).
    fn key<'a>(self, current: &'a [u8], path: &'a [u8], rewritten: bool) -> &'a [u8] {
        match self {
            Keying::Path => path,
            Keying::Collectd { host_len } if !rewritten => &current[..host_len],
            Keying::Collectd { .. } => {
                let end = memchr::memchr(b'/', current).unwrap_or(current.len());
                &current[..end]
            }
        }
    }
}

/// A hash ring of one of the ring kinds; all share `route_into`'s shape.
#[derive(Debug, Clone)]
pub enum Ring {
    /// carbon-c-relay's md5 ring (`carbon_ch`).
    Carbon(CarbonRing),
    /// carbon-c-relay's FNV-1a ring (`fnv1a_ch`).
    Fnv(FnvRing),
    /// carbon-c-relay's jump hash (`jump_fnv1a_ch`).
    Jump(JumpRing),
    /// python carbon's md5 ring (`carbon_ch_python`).
    Python(PythonRing),
    /// statsd's proxy ring (`statsd_hashring`).
    Statsd(StatsdRing),
    /// Coco's ring (`coco`).
    Coco(CocoRing),
}

/// Weight of each `statsd_hashring` member: the value statsd's proxy gives every node.
const STATSD_MEMBER_WEIGHT: u32 = 100;

impl Ring {
    fn build(kind: ClusterKind, members: &[RingMember<'_>], diverse: bool) -> Ring {
        match kind {
            ClusterKind::Fnv1aCh => Ring::Fnv(FnvRing::new(members)),
            ClusterKind::JumpFnv1aCh => Ring::Jump(JumpRing::new(members)),
            ClusterKind::CarbonChPython => Ring::Python(PythonRing::new(members, diverse)),
            ClusterKind::StatsdHashring => Ring::Statsd(StatsdRing::new(
                members,
                &vec![STATSD_MEMBER_WEIGHT; members.len()],
            )),
            ClusterKind::Coco => Ring::Coco(CocoRing::new(members)),
            _ => {
                debug_assert_eq!(kind, ClusterKind::CarbonCh);
                Ring::Carbon(CarbonRing::new(members))
            }
        }
    }

    /// The bytes this kind hashes: carbon-c-relay's kinds hash the name cut at its first
    /// `;` (`key`); python carbon hashes the whole name, tags included; statsd's proxy
    /// hashes the text before the first `:` of the line, which is the statsd name; Coco
    /// hashes the whole key it is given (a collectd host name), never cut.
    fn key<'a>(&self, name: &'a [u8], key: &'a [u8]) -> &'a [u8] {
        match self {
            Ring::Python(_) | Ring::Statsd(_) | Ring::Coco(_) => name,
            _ => key,
        }
    }

    /// Members a key goes to at `replication`: python carbon with diverse replicas
    /// sends to at most one member per host.
    fn wanted(&self, replication: usize) -> usize {
        match self {
            Ring::Python(r) => r.replica_count(replication),
            _ => replication,
        }
    }

    /// Clears `out` and pushes up to `n` distinct member indexes in preference order.
    fn route_into(&self, key: &[u8], n: usize, out: &mut Vec<usize>) {
        match self {
            Ring::Carbon(r) => r.route_into(key, n, out),
            Ring::Fnv(r) => r.route_into(key, n, out),
            Ring::Jump(r) => r.route_into(key, n, out),
            Ring::Python(r) => r.route_into(key, n, out),
            Ring::Statsd(r) => r.route_into(key, n, out),
            Ring::Coco(r) => r.route_into(key, n, out),
        }
    }
}

/// How a cluster maps a key onto its members.
#[derive(Debug, Clone)]
pub enum ClusterRoute {
    /// A consistent-hash ring.
    Ring {
        /// The ring over the members.
        ring: Ring,
        /// Distinct members per key.
        replication: usize,
        /// `on_down = "reroute"`: keys of a dead member go to the next live one.
        reroute: bool,
        /// statsd_hashring rerouting as statsd's proxy does it: a ring rebuilt from the
        /// live members (with their indexes), while any member is down.
        live_ring: Option<Box<(Ring, Vec<usize>)>>,
    },
    /// carbon-c-relay's `any_of`: FNV-1a of the key modulo the member count.
    AnyOf,
    /// The first live member in list order.
    Failover,
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
    /// The members as configured (to rebuild a statsd ring from the live ones).
    config_members: Vec<crate::config::Member>,
    /// What it hashes of a collectd value list.
    collectd_key: ClusterKey,
}

impl CompiledCluster {
    /// Appends the destinations of `key` (replica order) to `out`, skipping ones already
    /// there. `collectd`: `name` is a collectd identifier and `key` its host, and the
    /// cluster's `key` picks which is hashed. `alive` says which destinations are up (by
    /// [`DestId`]); `scratch` is reused.
    fn destinations_into(
        &self,
        name: &[u8],
        key: &[u8],
        collectd: bool,
        alive: &[bool],
        scratch: &mut Vec<usize>,
        out: &mut Vec<DestId>,
    ) {
        let live = |m: usize| is_up(alive, self.members[m]);
        let n = self.members.len();
        let key = match (collectd, self.collectd_key) {
            (false, _) => key,
            (true, ClusterKey::Host) => key,
            (true, ClusterKey::Identifier) => name,
        };
        match &self.route {
            ClusterRoute::Ring {
                ring,
                replication,
                reroute,
                live_ring,
            } => {
                // A collectd key is hashed whole, whatever the ring's kind.
                let key = if collectd { key } else { ring.key(name, key) };
                let wanted = ring.wanted(*replication);
                if !*reroute || (0..n).all(live) {
                    ring.route_into(key, wanted, scratch);
                    for &m in scratch.iter() {
                        push_unique(out, self.members[m]);
                    }
                    return;
                }
                if let Some(lr) = live_ring {
                    let (live_ring, index) = &**lr;
                    live_ring.route_into(key, wanted, scratch);
                    for &m in scratch.iter() {
                        push_unique(out, self.members[index[m]]);
                    }
                    return;
                }
                // The whole walk, then the first `wanted` live members of it. With every
                // member down the owners keep their keys (queued until one returns).
                ring.route_into(key, n, scratch);
                let mut taken = 0;
                for &m in scratch.iter() {
                    if taken < wanted && live(m) {
                        push_unique(out, self.members[m]);
                        taken += 1;
                    }
                }
                if taken == 0 {
                    for &m in scratch.iter().take(wanted) {
                        push_unique(out, self.members[m]);
                    }
                }
            }
            ClusterRoute::AnyOf => {
                if n == 0 {
                    return;
                }
                let h = ring_fnv::fnv1a_32(key);
                let owner = h as usize % n;
                if live(owner) {
                    push_unique(out, self.members[owner]);
                    return;
                }
                // The owner's keys spread over the live members by a second draw from the
                // hash; every other key stays where it was.
                let live_count = (0..n).filter(|&m| live(m)).count();
                if live_count == 0 {
                    push_unique(out, self.members[owner]);
                    return;
                }
                let pick = (h.rotate_right(16) as usize) % live_count;
                let m = (0..n).filter(|&m| live(m)).nth(pick).unwrap_or(owner);
                push_unique(out, self.members[m]);
            }
            ClusterRoute::Failover => {
                let m = (0..n).find(|&m| live(m)).unwrap_or(0);
                if n > 0 {
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

    /// statsd's proxy routes around a dead server by rebuilding its ring from the live
    /// ones; a statsd_hashring cluster with `on_down = "reroute"` does the same.
    fn rebuild_live_ring(&mut self, alive: &[bool]) {
        let ClusterRoute::Ring {
            ring: Ring::Statsd(_),
            reroute: true,
            live_ring,
            ..
        } = &mut self.route
        else {
            return;
        };
        let live: Vec<usize> = (0..self.members.len())
            .filter(|&m| is_up(alive, self.members[m]))
            .collect();
        *live_ring = if live.len() == self.members.len() || live.is_empty() {
            None
        } else {
            let members: Vec<RingMember<'_>> = live
                .iter()
                .map(|&m| {
                    let c = &self.config_members[m];
                    RingMember {
                        host: &c.host,
                        port: c.port,
                        instance: c.instance.as_deref(),
                    }
                })
                .collect();
            let ring = Ring::build(ClusterKind::StatsdHashring, &members, false);
            Some(Box::new((ring, live)))
        };
    }
}

/// Adds a target unless it is already there under the same name stage.
#[inline]
fn push_target(targets: &mut Vec<Target>, stages: &mut Vec<u8>, t: Target, stage: u8) {
    let seen = targets
        .iter()
        .zip(stages.iter())
        .any(|(&ot, &os)| ot == t && os == stage);
    if !seen {
        targets.push(t);
        stages.push(stage);
    }
}

#[inline]
fn push_unique(out: &mut Vec<DestId>, d: DestId) {
    if !out.contains(&d) {
        out.push(d);
    }
}

/// Where a routed point goes: a closed set, so the pipeline matches on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// A destination (a cluster member or file), through its encoder and queue.
    Dest(DestId),
    /// An aggregator (index into the config's `[[aggregate]]`), on the shard that owns
    /// the point's name.
    Aggregator(u16),
    /// A store (index into the config's `[[store]]`), on the shard that owns the
    /// point's name (each whisper file has one writer).
    Store(u16),
}

impl Target {
    /// The destination, when the target is one.
    pub fn dest(self) -> Option<DestId> {
        match self {
            Target::Dest(d) => Some(d),
            Target::Aggregator(_) | Target::Store(_) => None,
        }
    }
}

/// The routing decision for one name: which rules matched, the verdict, the targets.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    verdict: Verdict,
    /// The name was rewritten (carbon-c-relay cleansing) before rules and rings saw it.
    cleansed: bool,
    rules: Box<[u16]>,
    targets: Box<[Target]>,
    /// For each target, how many rewrites its name went through (0 = as received);
    /// empty when no rewrite applied.
    stages: Box<[u8]>,
}

/// What the router decided for one metric.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'a> {
    /// Routed, dropped or unrouted.
    pub verdict: Verdict,
    /// Distinct targets, in rule and replica order.
    pub targets: &'a [Target],
    /// The name needed carbon-c-relay cleansing: rules and rings saw the cleansed name,
    /// and the line must go out with it.
    pub cleansed: bool,
    /// The cleansed name when the router had to compute it (a cache miss, or a hit whose
    /// rewrites replay from it); empty otherwise, and the caller cleanses for output.
    pub cleansed_name: &'a [u8],
    /// Empty unless a rewrite rule changed the name: then, per target, which name it
    /// gets (0 = the received or cleansed name, `k` = `names[k - 1]`).
    pub stages: &'a [u8],
    /// The rewritten names, in rewrite order.
    pub names: &'a [Vec<u8>],
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
        targets: &[Target],
        stages: &[u8],
    ) {
        if self.plans.len() >= PLANS_MAX {
            self.by_name.clear();
            self.plans.clear();
            self.plan_ids.clear();
        }
        let h = self
            .hasher
            .hash_one((verdict, cleansed, rules, targets, stages));
        let found = self.plan_ids.get(&h).and_then(|ids| {
            ids.iter().copied().find(|&id| {
                let p = &self.plans[id as usize];
                p.verdict == verdict
                    && p.cleansed == cleansed
                    && *p.rules == *rules
                    && *p.targets == *targets
                    && *p.stages == *stages
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
                    targets: targets.into(),
                    stages: stages.into(),
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

/// What a compiled rule does with a metric it matches.
#[derive(Debug, Clone)]
enum RuleAction {
    Drop,
    SendTo(Vec<Sink>),
    Aggregate(u16),
}

/// A compiled route rule.
#[derive(Debug, Clone)]
struct Rule {
    matcher: Matcher,
    rewrite: Option<Rewrite>,
    action: RuleAction,
    /// Origins it takes ([`Origin::code`]); `None`: every listener's (and telemetry's).
    from: Option<Vec<u32>>,
    continue_matching: bool,
}

impl Rule {
    /// Whether the rule looks at points of `origin`: an aggregator's output only where
    /// `from` names it, and never by a rule that aggregates (no loops).
    #[inline]
    fn takes(&self, origin: Origin) -> bool {
        match (&self.from, origin) {
            (_, Origin::Aggregator(_)) if matches!(self.action, RuleAction::Aggregate(_)) => false,
            (None, Origin::Aggregator(_)) => false,
            (None, _) => true,
            (Some(f), o) => f.contains(&o.code()),
        }
    }
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
    /// A rewrite left an empty name before any target took the metric.
    EmptyName,
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
    scratch_targets: Vec<Target>,
    scratch_stages: Vec<u8>,
    scratch_cluster: Vec<DestId>,
    scratch_name: Vec<u8>,
    /// Names produced by rewrite rules for the metric being routed, in order.
    rewritten: Rewritten,
    /// Destinations that are up, by [`DestId`]; routing around the others.
    alive: Vec<bool>,
    /// The collectd hosts each destination was given (bounded).
    hosts_seen: HostsSeen,
    /// Per (form, origin) asked so far: the decision no name can change, if any (see
    /// [`Router::constant_route`]).
    constant: Vec<(NameForm, Origin, Option<u16>)>,
    /// Those decisions.
    constant_plans: Vec<ConstantPlan>,
}

/// A decision that holds for every name from one origin: the rules that apply there all
/// match every name, rewrite nothing and send only to aggregators and stores (or drop).
#[derive(Debug, Clone)]
struct ConstantPlan {
    verdict: Verdict,
    rules: Vec<u16>,
    targets: Vec<Target>,
    stages: Vec<u8>,
}

/// The collectd hosts routed to each destination, as routing decisions were made (each
/// host is recorded when one of its identifiers is evaluated, which a route cache hit
/// skips; a new topology starts empty): what `/tiers` shows. At most `hosts_max` hosts
/// per destination are kept; past it hosts are counted, not kept.
#[derive(Debug, Clone, Default)]
pub struct HostsSeen {
    hosts_max: usize,
    /// By [`DestId`]: the hosts kept, and how many more were not.
    by_dest: Vec<(HostSet, u64)>,
}

type HostSet = std::collections::HashSet<Box<[u8]>, ahash::RandomState>;

impl HostsSeen {
    fn new(hosts_max: usize) -> HostsSeen {
        HostsSeen {
            hosts_max,
            by_dest: Vec::new(),
        }
    }

    fn record(&mut self, host: &[u8], dests: impl Iterator<Item = DestId>) {
        for d in dests {
            if self.by_dest.len() <= d.index() {
                self.by_dest.resize_with(d.index() + 1, Default::default);
            }
            let (set, more) = &mut self.by_dest[d.index()];
            if set.contains(host) {
                continue;
            }
            if set.len() < self.hosts_max {
                set.insert(host.into());
            } else {
                *more += 1;
            }
        }
    }

    /// The hosts kept for `d` and the count of others seen (an upper bound: a host not
    /// kept is counted each time one of its identifiers is evaluated).
    pub fn of(&self, d: DestId) -> (Vec<&[u8]>, u64) {
        match self.by_dest.get(d.index()) {
            Some((set, more)) => (set.iter().map(|h| &**h).collect(), *more),
            None => (Vec::new(), 0),
        }
    }
}

impl Router {
    /// Compiles the routes and rings of a validated config. `listener_ids` gives the id
    /// (counter index, [`Origin::Listener`]) of each of its listeners; empty: their
    /// positions.
    pub fn new(cfg: &Config, table: &DestinationTable, listener_ids: &[usize]) -> Router {
        let clusters = cfg
            .clusters
            .iter()
            .zip(&table.cluster_members)
            .map(|(c, members)| {
                let ring_members: Vec<RingMember<'_>> = c
                    .members
                    .iter()
                    .map(|m| RingMember {
                        host: &m.host,
                        port: m.port,
                        instance: m.instance.as_deref(),
                    })
                    .collect();
                let route = match c.kind {
                    k if k.is_ring() => ClusterRoute::Ring {
                        ring: Ring::build(k, &ring_members, c.diverse_replicas),
                        replication: c.replication,
                        reroute: c.on_down == OnDown::Reroute,
                        live_ring: None,
                    },
                    ClusterKind::AnyOf => ClusterRoute::AnyOf,
                    ClusterKind::Failover => ClusterRoute::Failover,
                    _ => ClusterRoute::Forward,
                };
                CompiledCluster {
                    name: c.name.clone(),
                    route,
                    members: members.clone(),
                    config_members: c.members.clone(),
                    collectd_key: c.collectd_key(),
                }
            })
            .collect();
        let origin_of = |from: &String| -> Option<u32> {
            if let Some(a) = crate::config::aggregate_origin(from) {
                return cfg
                    .aggregate_index(a)
                    .map(|a| Origin::Aggregator(a as u16).code());
            }
            let i = cfg.listeners.iter().position(|l| &l.name == from)?;
            let id = listener_ids.get(i).copied().unwrap_or(i);
            Some(Origin::Listener(id as u16).code())
        };
        let mut rules: Vec<Rule> = cfg
            .routes
            .iter()
            .map(|r| Rule {
                matcher: Matcher::compile(&r.matcher),
                rewrite: r
                    .rewrite
                    .as_ref()
                    .map(|rw| Rewrite::compile(&rw.regex, &rw.into).expect("validated by config")),
                action: match &r.action {
                    Action::Drop => RuleAction::Drop,
                    Action::SendTo(c) => RuleAction::SendTo(c.clone()),
                    Action::Aggregate(a) => RuleAction::Aggregate(*a as u16),
                },
                from: (!r.from.is_empty()).then(|| r.from.iter().filter_map(origin_of).collect()),
                continue_matching: r.continue_matching,
            })
            .collect();
        // Each aggregator's output ends at its `send_to`: an implicit last rule.
        for (a, agg) in cfg.aggregates.iter().enumerate() {
            rules.push(Rule {
                matcher: Matcher::compile(&crate::config::Match::All),
                rewrite: None,
                action: RuleAction::SendTo(agg.send_to.clone()),
                from: Some(vec![Origin::Aggregator(a as u16).code()]),
                continue_matching: false,
            });
        }
        Router {
            rules,
            clusters,
            cache: RouteCache::new(cfg.server.route_cache_names_max),
            cache_enabled: cfg.server.route_cache_names_max > 0,
            scratch: Vec::with_capacity(8),
            scratch_rules: Vec::with_capacity(8),
            scratch_targets: Vec::with_capacity(8),
            scratch_stages: Vec::with_capacity(8),
            scratch_cluster: Vec::with_capacity(8),
            scratch_name: Vec::with_capacity(256),
            rewritten: Rewritten::default(),
            alive: vec![true; table.destinations.len()],
            hosts_seen: HostsSeen::new(cfg.server.tiers_hosts_max),
            constant: Vec::new(),
            constant_plans: Vec::new(),
        }
    }

    /// Whether output to `sinks` (an aggregator's `send_to`) cannot be delivered now:
    /// they are clusters only (a store is local: never down), and every member of each
    /// is down. (An aggregator's flush is then no write to its graphite, as Etsy's
    /// writer counts a refused connection: see `shard::aggregate`.)
    pub fn sinks_down(&self, sinks: &[Sink]) -> bool {
        !sinks.is_empty()
            && sinks.iter().all(|s| match s {
                Sink::Cluster(c) => {
                    (self.clusters[*c].members.iter()).all(|&d| !is_up(&self.alive, d))
                }
                Sink::Store(_) => false,
            })
    }

    /// Whether every name of `form` from `origin` gets the same decision, and which: then
    /// [`route_constant`](Self::route_constant) gives it without hashing the name or
    /// looking it up (a statsd listener whose one route sends everything to an
    /// aggregator). That holds when each rule that takes `origin`, up to the first that
    /// stops matching, matches every name, rewrites nothing and sends only to
    /// aggregators and stores or drops; cleansed and collectd names never qualify (the
    /// decision records per name whether it was cleansed, and which hosts went where).
    /// Worked out once per (form, origin) and topology.
    pub fn constant_route(&mut self, form: NameForm, origin: Origin) -> Option<u16> {
        if let Some(&(_, _, c)) = self
            .constant
            .iter()
            .find(|(f, o, _)| *f == form && *o == origin)
        {
            return c;
        }
        let c = self.constant_plan(form, origin);
        self.constant.push((form, origin, c));
        c
    }

    fn constant_plan(&mut self, form: NameForm, origin: Origin) -> Option<u16> {
        if form != NameForm::Plain {
            return None;
        }
        for rule in self.rules.iter().filter(|r| r.takes(origin)) {
            let only_local = match &rule.action {
                RuleAction::Drop | RuleAction::Aggregate(_) => true,
                RuleAction::SendTo(sinks) => sinks.iter().all(|s| matches!(s, Sink::Store(_))),
            };
            if !matches!(rule.matcher, Matcher::All) || rule.rewrite.is_some() || !only_local {
                return None;
            }
            if !rule.continue_matching || matches!(rule.action, RuleAction::Drop) {
                break;
            }
        }
        // No rule below can look at the name, so any name gives the decision.
        let verdict = self.evaluate(b"", Keying::Path, origin);
        let id = u16::try_from(self.constant_plans.len()).ok()?;
        self.constant_plans.push(ConstantPlan {
            verdict,
            rules: self.scratch_rules.clone(),
            targets: self.scratch_targets.clone(),
            stages: self.scratch_stages.clone(),
        });
        Some(id)
    }

    /// The decision [`constant_route`](Self::constant_route) found (`plan` is what it
    /// returned), counted in `rule_hits` as a routed name's would be.
    #[inline(always)]
    pub fn route_constant(&self, plan: u16, rule_hits: &mut [u64]) -> Decision<'_> {
        let plan = &self.constant_plans[plan as usize];
        for &r in &plan.rules {
            rule_hits[r as usize] += 1;
        }
        Decision {
            verdict: plan.verdict,
            targets: &plan.targets,
            cleansed: false,
            cleansed_name: &[],
            stages: &plan.stages,
            names: &[],
        }
    }

    /// The compiled clusters, in config order.
    pub fn clusters(&self) -> &[CompiledCluster] {
        &self.clusters
    }

    /// Marks a destination up or down. Decisions depend on it, so a change empties the
    /// route cache (it refills from the next lines).
    pub fn set_alive(&mut self, d: DestId, up: bool) {
        self.set_alive_many(&[(d, up)]);
    }

    /// Marks several destinations up or down at once (a round of health checks): the
    /// cache is emptied and live rings rebuilt once, not once per destination, so a
    /// thousand members going down together costs one rebuild.
    pub fn set_alive_many(&mut self, changes: &[(DestId, bool)]) {
        let mut changed = false;
        for &(d, up) in changes {
            if self.alive.len() <= d.index() {
                self.alive.resize(d.index() + 1, true);
            }
            if self.alive[d.index()] != up {
                self.alive[d.index()] = up;
                changed = true;
            }
        }
        if changed {
            self.cache.by_name.clear();
            for c in &mut self.clusters {
                c.rebuild_live_ring(&self.alive);
            }
        }
    }

    /// Where the queued lines of destination `d`, now down, can go instead: the live
    /// members of its cluster when every cluster listing it routes around a dead member
    /// per line without caring which live member gets it (any_of: all live members;
    /// failover: the first live one). `None` when some cluster keeps its keys on it
    /// (rings queue or reroute per key; forward sends to every member), so its queue waits.
    pub fn offload_targets(&self, d: DestId) -> Option<Vec<DestId>> {
        let mut targets = None;
        for c in &self.clusters {
            if !c.members.contains(&d) {
                continue;
            }
            let live = |x: &&DestId| **x != d && is_up(&self.alive, **x);
            let t: Vec<DestId> = match c.route {
                ClusterRoute::AnyOf => c.members.iter().filter(live).copied().collect(),
                ClusterRoute::Failover => {
                    c.members.iter().find(live).copied().into_iter().collect()
                }
                _ => return None,
            };
            targets.get_or_insert(t);
        }
        targets
    }

    /// Which destinations are up, by [`DestId`].
    pub fn alive(&self) -> &[bool] {
        &self.alive
    }

    /// Number of rules (the length `route` expects of `rule_hits`).
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Routes one metric read by listener 0: `name` is matched by the rules, `key` (the
    /// untagged part of `name`) is hashed by the rings. Counts each matching rule in
    /// `rule_hits` and returns the verdict with the distinct targets, in rule and
    /// replica order.
    #[inline]
    pub fn route(
        &mut self,
        name: &[u8],
        key: &[u8],
        rule_hits: &mut [u64],
    ) -> (Verdict, &[Target]) {
        let origin = Origin::Listener(0);
        let fp = self.fingerprint(name, key, NameForm::Plain, origin);
        let d = self.route_fingerprinted(fp, name, key, NameForm::Plain, origin, rule_hits);
        (d.verdict, d.targets)
    }

    /// The route cache's fingerprint of a metric, for [`prefetch`](Self::prefetch) and
    /// [`route_fingerprinted`](Self::route_fingerprinted). A decision depends on the name
    /// (rules), on the prefix of it the rings hash (`key`: the untagged part for graphite,
    /// the whole name for statsd, the host of a collectd identifier), on its form
    /// (cleansed or not, collectd) and on where it came from (routes with `from`), so all
    /// go into it. Two hosts sending the same plugin and type have different identifiers,
    /// so never share a decision.
    #[inline(always)]
    pub fn fingerprint(
        &self,
        name: &[u8],
        key: &[u8],
        form: NameForm,
        origin: Origin,
    ) -> Fingerprint {
        debug_assert!(name.starts_with(key));
        self.cache
            .by_name
            .fingerprint(name, key.len(), form.code(), origin.code())
    }

    /// Starts loading the cache slot of a name that will be routed soon. Routing a batch
    /// of lines with their slots prefetched overlaps the memory latency of the lookups.
    #[inline]
    pub fn prefetch(&self, fp: Fingerprint) {
        self.cache.by_name.prefetch(fp);
    }

    /// [`route`](Self::route) with the fingerprint already computed, for a name of
    /// `form`: with carbon-c-relay's cleansing of graphite names ([`NameForm::Cleansed`]),
    /// a name that needs it is routed as cleansed, and the decision says so (whether a
    /// name needs it is remembered with the decision, so a cache hit costs no check); a
    /// collectd identifier ([`NameForm::Collectd`]) is hashed by host or identifier as
    /// each cluster's `key` says.
    #[inline(always)]
    pub fn route_fingerprinted(
        &mut self,
        fp: Fingerprint,
        name: &[u8],
        key: &[u8],
        form: NameForm,
        origin: Origin,
        rule_hits: &mut [u64],
    ) -> Decision<'_> {
        debug_assert_eq!(rule_hits.len(), self.rules.len());
        if let Some(id) = self.cache.by_name.get(fp) {
            let plan = &self.cache.plans[id as usize];
            for &r in plan.rules.iter() {
                rule_hits[r as usize] += 1;
            }
            let mut cleansed_name: &[u8] = &[];
            if !plan.stages.is_empty() {
                // Rewritten names are per name, not per plan: replay the rewrites of the
                // rules that matched (rare: only names a rewrite changed get here).
                let base: &[u8] = if plan.cleansed {
                    graphite::cleanse(name, &mut self.scratch_name);
                    cleansed_name = &self.scratch_name;
                    &self.scratch_name
                } else {
                    name
                };
                let tagged = form != NameForm::Collectd;
                replay_rewrites(&self.rules, &plan.rules, base, tagged, &mut self.rewritten);
            }
            return Decision {
                verdict: plan.verdict,
                targets: &plan.targets,
                cleansed: plan.cleansed,
                cleansed_name,
                stages: &plan.stages,
                // Only a plan with rewrites replayed them: other names must not see the
                // last rewritten metric's names.
                names: if plan.stages.is_empty() {
                    &[]
                } else {
                    self.rewritten.names()
                },
            };
        }
        self.route_miss(fp, name, key, form, origin, rule_hits)
    }

    /// [`route_fingerprinted`](Self::route_fingerprinted) for a name the cache does not
    /// hold: rules, rings and the cache insert. Kept out of line so the hit path (almost
    /// every line) stays small enough to inline into the shard's loop.
    #[cold]
    #[inline(never)]
    fn route_miss(
        &mut self,
        fp: Fingerprint,
        name: &[u8],
        key: &[u8],
        form: NameForm,
        origin: Origin,
        rule_hits: &mut [u64],
    ) -> Decision<'_> {
        let cleanse = form == NameForm::Cleansed;
        let cleansed = cleanse && !graphite::is_clean(name);
        let keying = match form {
            NameForm::Collectd => Keying::Collectd {
                host_len: key.len(),
            },
            _ => Keying::Path,
        };
        let verdict = if cleansed {
            let mut clean = std::mem::take(&mut self.scratch_name);
            graphite::cleanse(name, &mut clean);
            let verdict = self.evaluate(&clean, keying, origin);
            self.scratch_name = clean;
            verdict
        } else {
            self.evaluate(name, keying, origin)
        };
        if form == NameForm::Collectd && verdict == Verdict::Routed {
            self.hosts_seen
                .record(key, self.scratch_targets.iter().filter_map(|t| t.dest()));
        }
        for &r in &self.scratch_rules {
            rule_hits[r as usize] += 1;
        }
        if self.cache_enabled {
            self.cache.insert(
                fp,
                verdict,
                cleansed,
                &self.scratch_rules,
                &self.scratch_targets,
                &self.scratch_stages,
            );
        }
        Decision {
            verdict,
            targets: &self.scratch_targets,
            cleansed,
            cleansed_name: if cleansed { &self.scratch_name } else { &[] },
            stages: &self.scratch_stages,
            names: self.rewritten.names(),
        }
    }

    /// Evaluates the rules and rings for one name from `origin`, into the scratch
    /// vectors; `keying` says what of it the rings hash.
    fn evaluate(&mut self, name: &[u8], keying: Keying, origin: Origin) -> Verdict {
        let collectd = matches!(keying, Keying::Collectd { .. });
        self.scratch_rules.clear();
        self.scratch_targets.clear();
        self.scratch_stages.clear();
        self.rewritten.clear();
        let mut dropped = false;
        let mut emptied = false;
        // Graphite tags (`;k=v` after the path) are not matched or rewritten, as
        // carbon-c-relay treats them; a collectd identifier has none.
        let tagged = !collectd;
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.takes(origin) {
                continue;
            }
            let current = self.rewritten.current(name);
            // c-relay compares a prefix with the whole line (its `strncmp` does not stop
            // at the tags), every other match with the path alone.
            let path = match rule.matcher {
                Matcher::Prefix(_) => current,
                _ => self.rewritten.path(name, tagged),
            };
            if !rule.matcher.is_match(path) {
                continue;
            }
            self.scratch_rules.push(i as u16);
            if let Some(rw) = &rule.rewrite {
                if self.rewritten.apply(rw, name, tagged) && self.rewritten.current(name).is_empty()
                {
                    emptied = true;
                    break;
                }
            }
            let stage = self.rewritten.used as u8;
            let current = self.rewritten.current(name);
            let path = self.rewritten.path(name, tagged);
            let key = keying.key(current, path, self.rewritten.used > 0);
            match &rule.action {
                RuleAction::Drop => {
                    dropped = true;
                    break;
                }
                RuleAction::Aggregate(a) => {
                    push_target(
                        &mut self.scratch_targets,
                        &mut self.scratch_stages,
                        Target::Aggregator(*a),
                        stage,
                    );
                }
                RuleAction::SendTo(sinks) => {
                    for &sink in sinks {
                        let c = match sink {
                            Sink::Cluster(c) => c,
                            Sink::Store(s) => {
                                push_target(
                                    &mut self.scratch_targets,
                                    &mut self.scratch_stages,
                                    Target::Store(s as u16),
                                    stage,
                                );
                                continue;
                            }
                        };
                        self.scratch_cluster.clear();
                        self.clusters[c].destinations_into(
                            current,
                            key,
                            collectd,
                            &self.alive,
                            &mut self.scratch,
                            &mut self.scratch_cluster,
                        );
                        for &d in &self.scratch_cluster {
                            push_target(
                                &mut self.scratch_targets,
                                &mut self.scratch_stages,
                                Target::Dest(d),
                                stage,
                            );
                        }
                    }
                }
            }
            if !rule.continue_matching {
                break;
            }
        }
        if self.rewritten.used == 0 {
            self.scratch_stages.clear();
        }
        if !self.scratch_targets.is_empty() {
            Verdict::Routed
        } else if dropped {
            Verdict::Dropped
        } else if emptied {
            Verdict::EmptyName
        } else {
            Verdict::Unrouted
        }
    }

    /// The destinations of `key` in one cluster, in replica order (for `cadent hash`,
    /// `/hashcheck` and `/lookup`). `collectd`: `name` is a collectd identifier (or a bare
    /// host) and `key` its host.
    pub fn cluster_destinations(
        &mut self,
        cluster: usize,
        name: &[u8],
        key: &[u8],
        collectd: bool,
        out: &mut Vec<DestId>,
    ) {
        out.clear();
        self.clusters[cluster].destinations_into(
            name,
            key,
            collectd,
            &self.alive,
            &mut self.scratch,
            out,
        );
    }

    /// The collectd hosts routed to each destination (see [`HostsSeen`]).
    pub fn hosts_seen(&self) -> &HostsSeen {
        &self.hosts_seen
    }
}

/// The names rewrite rules produced for one metric. The buffers are kept between metrics,
/// so a rewrite allocates only while they grow.
///
/// Each name's graphite path ends where carbon-c-relay's does: the first `;` of the name
/// as received, then, after a rewrite, the end of what the rewrite wrote, the received
/// tags following. A rewrite that writes a `;` (`\2;host=\1`) makes it part of the
/// path, which later matches, rewrites and the rings see whole, as c-relay's do.
#[derive(Debug, Clone, Default)]
struct Rewritten {
    names: Vec<Vec<u8>>,
    /// Where the path of each of `names` ends.
    path_ends: Vec<usize>,
    used: usize,
}

impl Rewritten {
    fn clear(&mut self) {
        self.used = 0;
    }

    fn names(&self) -> &[Vec<u8>] {
        &self.names[..self.used]
    }

    /// The latest name: `name` when nothing was rewritten yet.
    fn current<'a>(&'a self, name: &'a [u8]) -> &'a [u8] {
        match self.used {
            0 => name,
            k => &self.names[k - 1],
        }
    }

    /// The latest name's path: `name` up to its first `;` when nothing was rewritten yet
    /// (`tagged`: a graphite name; otherwise the whole name).
    fn path<'a>(&'a self, name: &'a [u8], tagged: bool) -> &'a [u8] {
        match self.used {
            0 if tagged => graphite::hash_key(name),
            0 => name,
            k => &self.names[k - 1][..self.path_ends[k - 1]],
        }
    }

    /// Applies `rw` to the latest name; true (and one more name) when it matched.
    /// `tagged`: only the path is rewritten, the tags are kept as they are
    /// (carbon-c-relay).
    fn apply(&mut self, rw: &Rewrite, name: &[u8], tagged: bool) -> bool {
        if self.names.len() == self.used {
            self.names.push(Vec::with_capacity(name.len() + 32));
            self.path_ends.push(0);
        }
        let path_len = self.path(name, tagged).len();
        let (done, rest) = self.names.split_at_mut(self.used);
        let current: &[u8] = done.last().map_or(name, |v| v.as_slice());
        let out = &mut rest[0];
        if rw.apply(&current[..path_len], out) {
            self.path_ends[self.used] = out.len();
            out.extend_from_slice(&current[path_len..]);
            self.used += 1;
            true
        } else {
            false
        }
    }
}

/// Applies the rewrites of the matched `rules` to `name` in order, as evaluation did.
fn replay_rewrites(
    rules: &[Rule],
    matched: &[u16],
    name: &[u8],
    tagged: bool,
    out: &mut Rewritten,
) {
    out.clear();
    for &r in matched {
        if let Some(rw) = &rules[r as usize].rewrite {
            out.apply(rw, name, tagged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(text: &str) -> (Router, DestinationTable) {
        let cfg = Config::parse(text).unwrap();
        let table = DestinationTable::from_config(&cfg);
        (Router::new(&cfg, &table, &[]), table)
    }

    fn check(r: &mut Router, t: &DestinationTable, name: &str, want: (Verdict, &[&str])) {
        // Twice: the first call evaluates, the second comes from the cache.
        let mut hits = vec![0; r.rule_count()];
        let mut first = None;
        for round in 0..2 {
            let (v, out) = r.route(name.as_bytes(), name.as_bytes(), &mut hits);
            let names: Vec<String> = out
                .iter()
                .map(|d| t.destinations[d.dest().unwrap().index()].name.clone())
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

    #[test]
    fn constant_routes_are_found_only_where_no_name_can_change_the_decision() {
        let head = r#"
            [[listen]]
            name = "s"
            url = "udp://127.0.0.1:0"
            format = "statsd"
            [[listen]]
            name = "g"
            url = "tcp://127.0.0.1:0"
            format = "graphite"
            [[cluster]]
            name = "out"
            kind = "forward"
            members = ["127.0.0.1:1"]
            [[aggregate]]
            name = "agg"
            kind = "statsd"
            send_to = ["out"]
        "#;
        let s = Origin::Listener(0);
        let g = Origin::Listener(1);
        // Keeps the aggregator in use where the rules under test do not (the config
        // refuses an aggregator no route feeds); `s` never reaches it.
        let for_g = "[[route]]\nfrom = [\"g\"]\nmatch = { all = true }\naggregate = \"agg\"\n";
        // Everything from `s` to the aggregator: constant there, not for `g` (its names
        // reach the cluster rule below), never for cleansed names.
        let (mut r, _) = router(&format!(
            r#"{head}
            [[route]]
            from = ["s"]
            match = {{ all = true }}
            aggregate = "agg"
            [[route]]
            match = {{ prefix = "x." }}
            send_to = ["out"]
            "#
        ));
        let plan = r
            .constant_route(NameForm::Plain, s)
            .expect("constant for s");
        assert_eq!(
            r.constant_route(NameForm::Plain, s),
            Some(plan),
            "asked twice"
        );
        assert_eq!(r.constant_route(NameForm::Plain, g), None);
        assert_eq!(r.constant_route(NameForm::Cleansed, s), None);
        assert_eq!(r.constant_route(NameForm::Collectd, s), None);
        let mut hits = vec![0; r.rule_count()];
        let d = r.route_constant(plan, &mut hits);
        assert_eq!(d.verdict, Verdict::Routed);
        assert_eq!(d.targets, &[Target::Aggregator(0)]);
        assert_eq!(hits[0], 1);
        // The same as routing any name through the rules.
        let (v, t) = {
            let fp = r.fingerprint(b"any.name", b"any.name", NameForm::Plain, s);
            let d =
                r.route_fingerprinted(fp, b"any.name", b"any.name", NameForm::Plain, s, &mut hits);
            (d.verdict, d.targets.to_vec())
        };
        assert_eq!((v, t), (Verdict::Routed, vec![Target::Aggregator(0)]));

        // A rule that looks at the name, rewrites it, or picks cluster members first:
        // never constant.
        for first in [
            r#"match = { prefix = "a." }
            aggregate = "agg""#,
            r#"match = { all = true }
            rewrite = { regex = "^a", into = "b" }
            aggregate = "agg""#,
            r#"match = { all = true }
            send_to = ["out"]"#,
            r#"match = { all = true }
            aggregate = "agg"
            continue = true
            [[route]]
            match = { regex = "x" }
            send_to = ["out"]"#,
        ] {
            let (mut r, _) = router(&format!("{head}\n[[route]]\n{first}\n{for_g}"));
            assert_eq!(r.constant_route(NameForm::Plain, s), None, "{first}");
        }
        // A drop in front of everything else, and no rule at all: constant too.
        let (mut r, _) = router(&format!(
            "{head}\n[[route]]\nmatch = {{ all = true }}\naction = \"drop\"\n[[route]]\nmatch = {{ prefix = \"a\" }}\nsend_to = [\"out\"]\n{for_g}"
        ));
        let plan = r
            .constant_route(NameForm::Plain, s)
            .expect("drop is constant");
        assert_eq!(
            r.route_constant(plan, &mut vec![0; r.rule_count()]).verdict,
            Verdict::Dropped
        );
        let (mut r, _) = router(&format!("{head}\n{for_g}"));
        let plan = r
            .constant_route(NameForm::Plain, s)
            .expect("no rule is constant");
        assert_eq!(
            r.route_constant(plan, &mut vec![0; r.rule_count()]).verdict,
            Verdict::Unrouted
        );
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

    fn cluster_config(kind: &str, extra: &str, members: usize) -> String {
        let members: Vec<String> = (1..=members)
            .map(|i| format!("\"127.0.0.1:{}={}\"", 2000 + i, i))
            .collect();
        format!(
            r#"
            [[listen]]
            name = "g"
            url = "tcp://127.0.0.1:0"
            format = "graphite"
            [[cluster]]
            name = "c"
            kind = "{kind}"
            members = [{}]
            {extra}
            [[route]]
            match = {{ all = true }}
            send_to = ["c"]
        "#,
            members.join(", ")
        )
    }

    /// Where each of `names` goes (destination indexes), through the cache.
    fn placements(r: &mut Router, names: &[String]) -> Vec<Vec<usize>> {
        let mut hits = vec![0; r.rule_count()];
        names
            .iter()
            .map(|n| {
                let (_, d) = r.route(n.as_bytes(), n.as_bytes(), &mut hits);
                d.iter().map(|d| d.dest().unwrap().index()).collect()
            })
            .collect()
    }

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("app.host{i}.metric{}", i * 7))
            .collect()
    }

    #[test]
    fn any_of_moves_only_the_dead_members_share_and_back() {
        let (mut r, _) = router(&cluster_config("any_of", "", 4));
        let names = names(4000);
        let before = placements(&mut r, &names);
        let mut share = [0usize; 4];
        for p in &before {
            assert_eq!(p.len(), 1);
            share[p[0]] += 1;
        }
        assert!(share.iter().all(|&s| s > 800), "fnv1a spreads: {share:?}");
        r.set_alive(DestId(2), false);
        let during = placements(&mut r, &names);
        let mut spread = [0usize; 4];
        for (b, d) in before.iter().zip(&during) {
            if b[0] == 2 {
                assert_ne!(d[0], 2, "a dead member gets nothing");
                spread[d[0]] += 1;
            } else {
                assert_eq!(b, d, "keys of live members stay");
            }
        }
        assert!(
            [0, 1, 3].iter().all(|&m| spread[m] > share[2] / 6),
            "the dead share spreads over every live member: {spread:?}"
        );
        r.set_alive(DestId(2), true);
        assert_eq!(placements(&mut r, &names), before, "and comes back");
    }

    #[test]
    fn failover_takes_the_first_live_member() {
        let (mut r, _) = router(&cluster_config("failover", "", 3));
        let names = names(50);
        assert!(placements(&mut r, &names).iter().all(|p| p == &[0]));
        r.set_alive(DestId(0), false);
        assert!(placements(&mut r, &names).iter().all(|p| p == &[1]));
        r.set_alive(DestId(1), false);
        assert!(placements(&mut r, &names).iter().all(|p| p == &[2]));
        r.set_alive(DestId(2), false);
        assert!(
            placements(&mut r, &names).iter().all(|p| p == &[0]),
            "all down: the first member queues"
        );
        r.set_alive(DestId(0), true);
        assert!(placements(&mut r, &names).iter().all(|p| p == &[0]));
    }

    #[test]
    fn ring_reroute_moves_a_dead_owner_to_the_next_live_member_queue_keeps_it() {
        for (on_down, replication) in [("reroute", 1), ("reroute", 2), ("queue", 2)] {
            let extra = format!("replication = {replication}\non_down = \"{on_down}\"");
            let (mut r, _) = router(&cluster_config("carbon_ch", &extra, 4));
            let names = names(3000);
            let before = placements(&mut r, &names);
            r.set_alive(DestId(1), false);
            let during = placements(&mut r, &names);
            // The full walk of each name, for the expected replacement.
            let cluster = &r.clusters[0];
            let mut walk = Vec::new();
            for ((n, b), d) in names.iter().zip(&before).zip(&during) {
                if on_down == "queue" || !b.contains(&1) {
                    assert_eq!(b, d, "{on_down}: {n} stays");
                    continue;
                }
                if let ClusterRoute::Ring { ring, .. } = &cluster.route {
                    ring.route_into(n.as_bytes(), 4, &mut walk);
                }
                let want: Vec<usize> = walk
                    .iter()
                    .copied()
                    .filter(|&m| m != 1)
                    .take(replication)
                    .collect();
                assert_eq!(d, &want, "{n}: next live members of the walk");
            }
            r.set_alive(DestId(1), true);
            assert_eq!(placements(&mut r, &names), before);
        }
    }

    #[test]
    fn rewrites_apply_in_order_and_each_destination_gets_its_stage() {
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
            members = ["127.0.0.1:2"]
            [[route]]
            match = { prefix = "a." }
            send_to = ["one"]
            continue = true
            [[route]]
            match = { prefix = "a." }
            rewrite = { regex = "^a\\.(.*)$", into = "b.\\1" }
            [[route]]
            match = { prefix = "b." }
            send_to = ["one", "two"]
        "#,
        );
        let mut hits = vec![0; r.rule_count()];
        for round in 0..2 {
            let fp = r.fingerprint(b"a.x;t=1", b"a.x", NameForm::Plain, Origin::Listener(0));
            let d = r.route_fingerprinted(
                fp,
                b"a.x;t=1",
                b"a.x",
                NameForm::Plain,
                Origin::Listener(0),
                &mut hits,
            );
            let got: Vec<(String, u8)> = d
                .targets
                .iter()
                .zip(d.stages)
                .map(|(d, &s)| (t.destinations[d.dest().unwrap().index()].name.clone(), s))
                .collect();
            assert_eq!(
                got,
                [
                    ("tcp://127.0.0.1:1".to_string(), 0),
                    ("tcp://127.0.0.1:1".to_string(), 1),
                    ("tcp://127.0.0.1:2".to_string(), 1),
                ],
                "round {round}"
            );
            assert_eq!(d.names, [b"b.x;t=1".to_vec()], "round {round}");
        }
        assert_eq!(hits, [2, 2, 2]);
    }

    /// Fingerprints and routes `name` (hashed by `key`) read by listener 0.
    fn from_listener0<'r>(
        r: &'r mut Router,
        name: &str,
        key: &str,
        form: NameForm,
        hits: &mut [u64],
    ) -> Decision<'r> {
        let (name, key) = (name.as_bytes(), key.as_bytes());
        let fp = r.fingerprint(name, key, form, Origin::Listener(0));
        r.route_fingerprinted(fp, name, key, form, Origin::Listener(0), hits)
    }

    /// Routes `name` from listener 0 (graphite); (verdict, destination names, the name
    /// each destination gets).
    fn route_named(
        r: &mut Router,
        t: &DestinationTable,
        name: &str,
    ) -> (Verdict, Vec<(String, String)>) {
        let mut hits = vec![0; r.rule_count()];
        let key = name.split(';').next().unwrap();
        let d = from_listener0(r, name, key, NameForm::Plain, &mut hits);
        let got = d
            .targets
            .iter()
            .enumerate()
            .map(|(j, d0)| {
                let stage = d.stages.get(j).copied().unwrap_or(0);
                let sent = match stage {
                    0 => name.to_string(),
                    k => String::from_utf8(d.names[k as usize - 1].clone()).unwrap(),
                };
                (
                    t.destinations[d0.dest().unwrap().index()].name.clone(),
                    sent,
                )
            })
            .collect();
        (d.verdict, got)
    }

    #[test]
    fn tags_are_neither_matched_nor_rewritten_and_an_emptied_name_is_counted() {
        // As carbon-c-relay 3.7.3 does live (its dispatcher ends the path at the first
        // `;`): rules see the path; a rewrite changes the path and keeps the tags.
        let (mut r, t) = router(
            r#"
            [[listen]]
            name = "g"
            url = "tcp://127.0.0.1:0"
            format = "graphite"
            [[cluster]]
            name = "c0"
            kind = "forward"
            members = ["127.0.0.1:1"]
            [[cluster]]
            name = "c1"
            kind = "forward"
            members = ["127.0.0.1:2"]
            [[cluster]]
            name = "c3"
            kind = "forward"
            members = ["127.0.0.1:4"]
            [[route]]
            match = { regex = "^empty\\.me" }
            rewrite = { regex = "empty\\.me(x*)", into = "\\1" }
            [[route]]
            match = { regex = "^lo\\." }
            rewrite = { regex = "^lo\\.(.*)$", into = "lo.\\_1" }
            [[route]]
            match = { regex = "\\.cpu2$" }
            rewrite = { regex = "^(.*)\\.cpu2$", into = "\\1.processor" }
            [[route]]
            match = { regex = "cpu$" }
            send_to = ["c0"]
            [[route]]
            match = { substring = "dc=x" }
            send_to = ["c1"]
            [[route]]
            match = { prefix = "p.a;" }
            send_to = ["c1"]
            [[route]]
            match = { all = true }
            send_to = ["c3"]
        "#,
        );
        let one = |dest: &str, name: &str| vec![(dest.to_string(), name.to_string())];
        for _round in 0..2 {
            assert_eq!(
                route_named(&mut r, &t, "a.cpu;dc=x"),
                (Verdict::Routed, one("tcp://127.0.0.1:1", "a.cpu;dc=x"))
            );
            assert_eq!(
                route_named(&mut r, &t, "b.mem;dc=x"),
                (Verdict::Routed, one("tcp://127.0.0.1:4", "b.mem;dc=x"))
            );
            assert_eq!(
                route_named(&mut r, &t, "t.x;dc=x.cpu"),
                (Verdict::Routed, one("tcp://127.0.0.1:4", "t.x;dc=x.cpu"))
            );
            assert_eq!(
                route_named(&mut r, &t, "p.a;t=1"),
                (Verdict::Routed, one("tcp://127.0.0.1:2", "p.a;t=1"))
            );
            assert_eq!(
                route_named(&mut r, &t, "x.cpu2;dc=y"),
                (
                    Verdict::Routed,
                    one("tcp://127.0.0.1:4", "x.processor;dc=y")
                )
            );
            assert_eq!(
                route_named(&mut r, &t, "lo.MiXeD;T=Up"),
                (Verdict::Routed, one("tcp://127.0.0.1:4", "lo.mixed;T=Up"))
            );
            assert_eq!(
                route_named(&mut r, &t, "empty.me"),
                (Verdict::EmptyName, vec![])
            );
        }
    }

    /// Routes a collectd identifier (host = text before the first `/`), through the cache.
    fn collectd_dests(r: &mut Router, id: &str) -> Vec<usize> {
        let host = id.split('/').next().unwrap();
        let mut hits = vec![0; r.rule_count()];
        let d = from_listener0(r, id, host, NameForm::Collectd, &mut hits);
        d.targets
            .iter()
            .map(|t| t.dest().unwrap().index())
            .collect()
    }

    #[test]
    fn collectd_host_keyed_clusters_keep_a_host_together_identifier_keyed_spread_it() {
        for kind in [
            "coco",
            "carbon_ch",
            "fnv1a_ch",
            "jump_fnv1a_ch",
            "statsd_hashring",
            "any_of",
        ] {
            for key in ["host", "identifier"] {
                let (mut r, _) = router(&cluster_config(kind, &format!("key = \"{key}\""), 4));
                let mut members_of_host = std::collections::HashSet::new();
                for round in 0..2 {
                    for i in 0..200 {
                        let id = format!("web01/plugin{i}/gauge-x");
                        let d = collectd_dests(&mut r, &id);
                        assert_eq!(d.len(), 1);
                        members_of_host.insert(d[0]);
                        // The same plugin and type from another host: its own decision,
                        // never the cached one of web01.
                        let other = format!("db02/plugin{i}/gauge-x");
                        let want = {
                            let mut out = Vec::new();
                            let k: &[u8] = if key == "host" {
                                b"db02"
                            } else {
                                other.as_bytes()
                            };
                            r.cluster_destinations(0, other.as_bytes(), k, true, &mut out);
                            out[0].index()
                        };
                        assert_eq!(
                            collectd_dests(&mut r, &other),
                            [want],
                            "{kind} {key} {round}"
                        );
                    }
                }
                if key == "host" {
                    assert_eq!(members_of_host.len(), 1, "{kind}: one member per host");
                } else {
                    assert!(
                        members_of_host.len() >= 3,
                        "{kind}: spread {members_of_host:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn coco_clusters_are_host_keyed_and_place_the_host_as_coco_does() {
        let cfg = Config::parse(&cluster_config("coco", "", 2)).unwrap();
        assert!(cfg.clusters[0].host_keyed());
        let (mut r, _) = router(&cluster_config("coco", "", 2));
        // Coco 1.0.1's placement of the host, whatever the rest of the identifier.
        // (shared/reference/cadent-coco.md section 4: Coco's placement depends on the
        // member count and order only.)
        for (host, member) in [
            ("host.example.org", 0),
            ("alice", 0),
            ("bob", 0),
            ("web-01", 1),
        ] {
            let id = format!("{host}/cpu-0/cpu-idle");
            assert_eq!(collectd_dests(&mut r, &id), [member], "{host}");
        }
        let seen = r.hosts_seen();
        let (h0, more0) = seen.of(DestId(0));
        let (h1, more1) = seen.of(DestId(1));
        assert_eq!(h0.len() + h1.len(), 4);
        assert_eq!(more0 + more1, 0);
    }
}
