//! The control plane's state: the running topology, the health of every destination, and
//! the one path by which routing changes at run time (membership API, SIGHUP reload,
//! health transitions). Changes are serialised, applied to a copy, validated, and then
//! handed to every shard as a message; shards never wait for the control thread.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::config::{Config, Health, Member, Transport};
use crate::output::health::{Evidence, State, Tracker};
use crate::route::{DestId, DestState, DestinationKind, Router};
use crate::shard::{ControlMsg, ShardSender, Topology};
use crate::telemetry::{Labels, Registry};

/// Why a change was refused: an HTTP status and a message for the caller.
#[derive(Debug, Clone)]
pub struct Refused {
    /// 400 bad request, 404 unknown cluster or member, 409 conflict, 503 shards busy.
    pub status: u16,
    /// What is wrong.
    pub message: String,
}

impl Refused {
    fn new(status: u16, message: impl Into<String>) -> Refused {
        Refused {
            status,
            message: message.into(),
        }
    }
}

struct Inner {
    topology: Topology,
    /// By destination id.
    health: Vec<Tracker>,
    /// By destination id: the serial of the occupant `health` is about.
    serials: Vec<u64>,
    /// The control thread's router, for `/hashcheck` and `cadent hash`-style answers.
    router: Router,
    /// Writer failures (connect failures + write errors) seen at the last probe round.
    writer_failures: Vec<u64>,
    health_cfg: Health,
    /// Listener names by id, removed ones included (for counters).
    listener_labels: Vec<String>,
    /// Where each listener of `topology.config` is bound.
    bound: Vec<String>,
    /// The next aggregator id to hand out.
    next_aggregator_id: u16,
    /// The next store id to hand out.
    next_store_id: u16,
}

/// The running topology and destination health, shared by the admin handlers, the
/// probe loop and the SIGHUP handler.
pub struct Control {
    inner: Mutex<Inner>,
    /// The statsd consoles' health (`health up|down`), by aggregator name.
    pub(super) console_health:
        Mutex<std::collections::HashMap<String, crate::aggregate::statsd::mgmt::Health>>,
    /// Running statsd consoles: address -> (aggregator, task).
    consoles:
        Mutex<std::collections::HashMap<std::net::SocketAddr, (String, tokio::task::AbortHandle)>>,
    /// Running CarbonLink listeners: address -> (store, its root, task).
    carbonlinks: Mutex<
        std::collections::HashMap<
            std::net::SocketAddr,
            (String, PathBuf, tokio::task::AbortHandle),
        >,
    >,
    started_unix_s: i64,
    /// Serialises changes, so every shard sees them in one order.
    changes: tokio::sync::Mutex<()>,
    shards: Vec<ShardSender>,
    registry: Arc<Registry>,
    config_path: Option<PathBuf>,
}

/// How long a change waits for a shard whose inbox is full before giving up on it.
const SHARD_SEND_PATIENCE: Duration = Duration::from_secs(5);

/// How long a read waits for the shards' cache answers.
const CACHE_QUERY_PATIENCE: Duration = Duration::from_secs(5);

/// How long a change waits for every shard to answer its `Prepare`.
const PREPARE_PATIENCE: Duration = Duration::from_secs(10);

/// The rules-file loop wakes at least this often; each file is read at its own interval.
const RULES_LOOK_MAX: Duration = Duration::from_secs(1);
/// ... and at most this often, whatever the shortest interval.
const RULES_LOOK_MIN: Duration = Duration::from_millis(50);

/// How often drained destinations are looked for and reclaimed.
const RECLAIM_INTERVAL: Duration = Duration::from_secs(1);

/// Names for a log line: all of a few, or the first ones and how many more.
fn few(names: &[&str]) -> String {
    const SHOWN: usize = 8;
    if names.len() <= SHOWN {
        format!("{names:?}")
    } else {
        format!("{:?} and {} more", &names[..SHOWN], names.len() - SHOWN)
    }
}

impl Control {
    /// Control over running (empty) shards; [`apply_config`](Self::apply_config) gives
    /// them their first topology.
    pub fn new(
        shards: Vec<ShardSender>,
        registry: Arc<Registry>,
        config_path: Option<PathBuf>,
    ) -> Arc<Control> {
        let empty = Topology::empty(Arc::new(Config::empty()));
        let router = Router::new(&empty.config, &empty.table, &[]);
        let health_cfg = empty.config.health.clone();
        Arc::new(Control {
            console_health: Mutex::new(Default::default()),
            consoles: Mutex::new(Default::default()),
            carbonlinks: Mutex::new(Default::default()),
            started_unix_s: crate::shard::pipeline::unix_ms() / 1000,
            inner: Mutex::new(Inner {
                topology: empty,
                health: Vec::new(),
                serials: Vec::new(),
                router,
                writer_failures: Vec::new(),
                health_cfg,
                listener_labels: Vec::new(),
                bound: Vec::new(),
                next_aggregator_id: 0,
                next_store_id: 0,
            }),
            changes: tokio::sync::Mutex::new(()),
            shards,
            registry,
            config_path,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the process started (unix seconds).
    pub fn started_unix_s(&self) -> i64 {
        self.started_unix_s
    }

    /// Has every shard send its partly filled mesh batches (a shard sends them on its
    /// tick otherwise): a query asked after this sees every point read before it, since
    /// an owner drains its inbound mesh before it answers.
    async fn flush_mesh(&self) {
        if self.shards.len() < 2 {
            return;
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        if self
            .broadcast(|| ControlMsg::MeshFlush { ack: tx.clone() })
            .await
            .is_err()
        {
            return;
        }
        drop(tx);
        let deadline = tokio::time::Instant::now() + CACHE_QUERY_PATIENCE;
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, rx.recv()).await {}
    }

    /// Asks every shard's share of statsd aggregator `name`; answers in shard order.
    pub async fn ask_statsd(
        &self,
        name: &str,
        query: crate::shard::aggregate::StatsdQuery,
    ) -> Vec<crate::shard::aggregate::StatsdAnswer> {
        self.flush_mesh().await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sent = self
            .broadcast(|| ControlMsg::StatsdQuery {
                aggregator: name.to_string(),
                query: query.clone(),
                reply: tx.clone(),
            })
            .await;
        drop(tx);
        let mut answers = vec![crate::shard::aggregate::StatsdAnswer::Unknown; self.shards.len()];
        if sent.is_err() {
            return answers;
        }
        let deadline = tokio::time::Instant::now() + PREPARE_PATIENCE;
        while let Ok(Some((shard, a))) = tokio::time::timeout_at(deadline, rx.recv()).await {
            if let Some(slot) = answers.get_mut(shard) {
                *slot = a;
            }
        }
        answers
    }

    /// The cached points of `names` in store `store` (by name), asked of the shards
    /// that own them; one list per name, in the order asked (empty where none, or where
    /// a shard did not answer in time).
    pub async fn ask_cache(
        &self,
        store: &str,
        names: &[String],
    ) -> Vec<Vec<crate::store::cache::CachedPoint>> {
        let shards = self.shards.len();
        let mut by_shard: Vec<(Vec<String>, Vec<usize>)> = vec![(Vec::new(), Vec::new()); shards];
        for (i, n) in names.iter().enumerate() {
            let key = crate::store::whisper::path::normalize(n).unwrap_or_else(|| n.clone());
            let to = crate::shard::store::store_owner(key.as_bytes(), shards);
            by_shard[to].0.push(key);
            by_shard[to].1.push(i);
        }
        let mut out = vec![Vec::new(); names.len()];
        self.flush_mesh().await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut asked = 0;
        let mut index: Vec<Vec<usize>> = vec![Vec::new(); shards];
        for (shard, (keys, idx)) in by_shard.into_iter().enumerate() {
            if keys.is_empty() {
                continue;
            }
            let mut msg = ControlMsg::StoreQuery {
                query: crate::shard::store::StoreQuery {
                    store: store.to_string(),
                    names: keys,
                },
                reply: tx.clone(),
            };
            let deadline = tokio::time::Instant::now() + CACHE_QUERY_PATIENCE;
            loop {
                match self.shards[shard].try_send(msg) {
                    Ok(()) => {
                        asked += 1;
                        index[shard] = idx;
                        break;
                    }
                    Err(back) if tokio::time::Instant::now() < deadline => {
                        msg = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(_) => break,
                }
            }
        }
        drop(tx);
        let deadline = tokio::time::Instant::now() + CACHE_QUERY_PATIENCE;
        while asked > 0 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((shard, points))) => {
                    asked -= 1;
                    for (i, p) in index[shard].iter().zip(points) {
                        out[*i] = p;
                    }
                }
                _ => break,
            }
        }
        out
    }

    /// Updates the read API's counters.
    pub fn count_read(&self, f: impl FnOnce(&mut crate::api::read::ReadCounters)) {
        self.registry.read_counters(f);
    }

    /// Starts the CarbonLink listeners the running config's stores ask for and stops the
    /// others. `strict`: one that cannot bind is an error (startup); otherwise logged.
    fn sync_carbonlinks(self: &Arc<Self>, strict: bool) -> Result<(), String> {
        let wanted: Vec<(std::net::SocketAddr, String, PathBuf)> = self
            .topology()
            .config
            .stores
            .iter()
            .filter_map(|s| {
                let crate::config::StoreKind::Whisper(w) = &s.kind;
                w.carbonlink_listen
                    .map(|a| (a, s.name.clone(), w.path.clone()))
            })
            .collect();
        let mut running = self.carbonlinks.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|addr, (name, root, task)| {
            let keep = wanted
                .iter()
                .any(|(a, n, r)| a == addr && n == name && r == root);
            if !keep {
                task.abort();
            }
            keep
        });
        for (addr, name, root) in wanted {
            if running.contains_key(&addr) {
                continue;
            }
            let bound = bind_tokio(addr);
            match bound {
                Ok(l) => {
                    let task = tokio::spawn(super::carbonlink_listen::serve(
                        self.clone(),
                        l,
                        name.clone(),
                        root.clone(),
                    ));
                    running.insert(addr, (name, root, task.abort_handle()));
                }
                Err(e) if strict => {
                    return Err(format!(
                        "store {name:?} carbonlink_listen {addr}: cannot bind: {e}"
                    ))
                }
                Err(e) => {
                    tracing::error!(store = %name, %addr, error = %e, "cannot serve CarbonLink")
                }
            }
        }
        Ok(())
    }

    /// Starts the statsd consoles the running config asks for and stops the others.
    /// `strict`: one that cannot bind is an error (startup); otherwise it is logged.
    fn sync_consoles(self: &Arc<Self>, strict: bool) -> Result<(), String> {
        let wanted: Vec<(std::net::SocketAddr, String)> = self
            .topology()
            .config
            .aggregates
            .iter()
            .filter_map(|a| match &a.kind {
                crate::config::AggregateKind::Statsd(s) => {
                    s.mgmt_listen.map(|addr| (addr, a.name.clone()))
                }
                _ => None,
            })
            .collect();
        let mut running = self.consoles.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|addr, (name, task)| {
            let keep = wanted.iter().any(|(a, n)| a == addr && n == name);
            if !keep {
                task.abort();
            }
            keep
        });
        for (addr, name) in wanted {
            if running.contains_key(&addr) {
                continue;
            }
            let bound = bind_tokio(addr);
            match bound {
                Ok(l) => {
                    let task =
                        tokio::spawn(super::statsd_console::serve(self.clone(), l, name.clone()));
                    running.insert(addr, (name, task.abort_handle()));
                }
                Err(e) if strict => {
                    return Err(format!(
                        "aggregate {name:?} mgmt_listen {addr}: cannot bind: {e}"
                    ))
                }
                Err(e) => {
                    tracing::error!(aggregator = %name, %addr, error = %e, "cannot serve the statsd console")
                }
            }
        }
        Ok(())
    }

    /// The topology shards route by now.
    pub fn topology(&self) -> Topology {
        self.lock().topology.clone()
    }

    /// Where each listener is bound now.
    pub fn bound(&self) -> Vec<String> {
        self.lock().bound.clone()
    }

    /// The admin token of the running config.
    pub fn admin_token(&self) -> Option<String> {
        self.lock().topology.config.server.admin_token.clone()
    }

    /// Where `key` goes in every cluster, as shards route it now (health included).
    pub fn hash_all(&self, key: &str) -> serde_json::Value {
        let hashed = crate::protocol::graphite::hash_key(key.as_bytes());
        let mut inner = self.lock();
        let Inner {
            topology, router, ..
        } = &mut *inner;
        let mut out = Vec::new();
        let mut clusters = serde_json::Map::new();
        for (i, c) in topology.config.clusters.iter().enumerate() {
            router.cluster_destinations(i, key.as_bytes(), hashed, false, &mut out);
            let names: Vec<String> = out
                .iter()
                .map(|d| topology.table.member_label(&topology.config, i, *d))
                .collect();
            clusters.insert(
                c.name.clone(),
                json!({ "kind": c.kind.as_str(), "destinations": names }),
            );
        }
        serde_json::Value::Object(clusters)
    }

    /// The collectd hosts every shard routed to each destination (by destination id):
    /// the union of the hosts the shards keep, at most `server.tiers_hosts_max`, sorted,
    /// and how many more were seen (an upper bound: shards count the hosts they did not
    /// keep, each time one of its identifiers is routed afresh).
    pub async fn hosts_seen(&self) -> Vec<(Vec<String>, u64)> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sent = self
            .broadcast(|| ControlMsg::HostsSeen { reply: tx.clone() })
            .await;
        drop(tx);
        let (max, n) = {
            let inner = self.lock();
            (
                inner.topology.config.server.tiers_hosts_max,
                inner.topology.table.destinations.len(),
            )
        };
        let mut sets = vec![(std::collections::BTreeSet::new(), 0u64); n];
        if sent.is_err() {
            return sets
                .into_iter()
                .map(|(s, m)| (s.into_iter().collect(), m))
                .collect();
        }
        let deadline = tokio::time::Instant::now() + PREPARE_PATIENCE;
        let mut answers = 0;
        while answers < self.shards.len() {
            let Ok(Some((_, a))) = tokio::time::timeout_at(deadline, rx.recv()).await else {
                break;
            };
            answers += 1;
            for ((set, more), (hosts, m)) in sets.iter_mut().zip(a) {
                *more += m;
                for h in hosts {
                    let h = String::from_utf8_lossy(&h).into_owned();
                    if set.contains(&h) {
                        continue;
                    }
                    if set.len() < max {
                        set.insert(h);
                    } else {
                        *more += 1;
                    }
                }
            }
        }
        sets.into_iter()
            .map(|(s, m)| (s.into_iter().collect(), m))
            .collect()
    }

    /// The member that owns collectd `host` in cluster `cluster` as shards route now
    /// (health included), with the cluster's kind: `(member, destination id)`.
    pub fn owner(&self, cluster: usize, host: &str) -> Option<(Member, DestId)> {
        let mut inner = self.lock();
        let Inner {
            topology, router, ..
        } = &mut *inner;
        let c = topology.config.clusters.get(cluster)?;
        let mut out = Vec::new();
        router.cluster_destinations(cluster, host.as_bytes(), host.as_bytes(), true, &mut out);
        let d = *out.first()?;
        let j = topology.table.cluster_members[cluster]
            .iter()
            .position(|m| *m == d)?;
        Some((c.members.get(j)?.clone(), d))
    }

    /// `GET /servers`: every cluster with each member's state and counters.
    pub fn servers_json(&self) -> serde_json::Value {
        use crate::telemetry::set::CounterSet;
        let total = Registry::total(&self.registry.per_shard());
        let inner = self.lock();
        let t = &inner.topology;
        let clusters: Vec<serde_json::Value> = t
            .config
            .clusters
            .iter()
            .zip(&t.table.cluster_members)
            .map(|(c, dests)| {
                let members: Vec<serde_json::Value> = dests
                    .iter()
                    .enumerate()
                    .map(|(j, d)| {
                        let dest = &t.table.destinations[d.index()];
                        let h = &inner.health[d.index()];
                        let counters = total
                            .destinations
                            .get(d.index())
                            .map(|c| serde_json::Value::Object(c.to_json()));
                        json!({
                            "server": c.members.get(j).map(|m| m.display_hash()),
                            "destination": dest.name,
                            "state": h.state,
                            "state_changes": h.state_changes,
                            "probe_failures": h.probe_failures,
                            "counters": counters,
                        })
                    })
                    .collect();
                json!({
                    "name": c.name,
                    "kind": c.kind.as_str(),
                    "replication": c.replication,
                    "members": members,
                })
            })
            .collect();
        json!({ "clusters": clusters })
    }

    /// Adds a member to a cluster (`server` as `[tcp://|udp://]host:port`).
    pub async fn add_member(
        self: &Arc<Self>,
        cluster: &str,
        server: &str,
        instance: Option<&str>,
    ) -> Result<String, Refused> {
        let spec =
            match instance {
                Some(_) if server.contains('=') => return Err(Refused::new(
                    400,
                    "give the instance either in `server` (host:port=instance) or as `instance`",
                )),
                Some(i) if !i.is_empty() => format!("{server}={i}"),
                _ => server.to_string(),
            };
        let bound = self.topology().config.server.member_instance_bytes_max;
        let member = Member::parse_bounded(&spec, bound).map_err(|e| Refused::new(400, e))?;
        self.change_members(cluster, |members| {
            members.push(member.clone());
            Ok(format!(
                "added {} to cluster {cluster:?}",
                member.display_hash()
            ))
        })
        .await
    }

    /// Removes the member of a cluster whose address is `server` (`host:port`, with or
    /// without scheme and instance). Its queued lines are still delivered to it.
    pub async fn remove_member(
        self: &Arc<Self>,
        cluster: &str,
        server: &str,
    ) -> Result<String, Refused> {
        self.change_members(cluster, |members| {
            let j = members
                .iter()
                .position(|m| member_matches(m, server))
                .ok_or_else(|| {
                    Refused::new(404, format!("cluster {cluster:?} has no member {server:?}"))
                })?;
            let removed = members.remove(j);
            Ok(format!(
                "removed {} from cluster {cluster:?}",
                removed.display_hash()
            ))
        })
        .await
    }

    /// Changes the member list of `cluster` in a copy of the running config, checks the
    /// cluster as loading would, and applies it.
    async fn change_members(
        self: &Arc<Self>,
        cluster: &str,
        change: impl FnOnce(&mut Vec<Member>) -> Result<String, Refused>,
    ) -> Result<String, Refused> {
        let _serial = self.changes.lock().await;
        let mut cfg = (*self.topology().config).clone();
        let ci = cfg
            .cluster_index(cluster)
            .ok_or_else(|| Refused::new(404, format!("no cluster named {cluster:?}")))?;
        let done = change(&mut cfg.clusters[ci].members)?;
        cfg.check_cluster(ci)
            .map_err(|e| Refused::new(409, e.to_string()))?;
        self.apply(cfg, false).await?;
        Ok(done)
    }

    /// SIGHUP: reads the config file again and applies it: listeners diffed (unchanged
    /// ones keep running), rules, clusters, aggregators and health settings. `[server]`
    /// and `[output]` changes need a restart: they are reported and the running ones
    /// kept.
    pub async fn reload(self: &Arc<Self>) -> Result<String, String> {
        let Some(path) = &self.config_path else {
            return Err("running on the embedded default config: nothing to reload".into());
        };
        let mut cfg = Config::load(path).map_err(|e| format!("{e:#}"))?;
        let _serial = self.changes.lock().await;
        let old = self.topology().config;
        let mut kept = Vec::new();
        if cfg.server != old.server {
            kept.push("[server]");
            cfg.server = old.server.clone();
        }
        if cfg.output != old.output {
            kept.push("[output]");
            cfg.output = old.output.clone();
        }
        // Noodle keeps the address it listens on; the rest of [noodle] applies.
        let old_listen = old.noodle.as_ref().map(|n| n.listen);
        if cfg.noodle.as_ref().map(|n| n.listen) != old_listen {
            kept.push("[noodle].listen");
            match (&mut cfg.noodle, old_listen) {
                (Some(n), Some(l)) => n.listen = l,
                (n, _) => *n = None,
            }
        }
        if !kept.is_empty() {
            tracing::warn!(
                sections = ?kept,
                "reload: these sections changed and need a restart; the running ones are kept"
            );
        }
        // All or nothing, as every change: a new listener that cannot bind refuses the
        // reload (the running config is kept; a later SIGHUP tries again).
        let summary = self.apply(cfg, true).await.map_err(|r| r.message)?;
        let _ = self.sync_consoles(false);
        let _ = self.sync_carbonlinks(false);
        Ok(summary)
    }

    /// Startup: the first topology, through the same path as every change. Every
    /// listener (and statsd console) must bind.
    pub async fn start(self: &Arc<Self>, cfg: Config) -> Result<String, String> {
        let _serial = self.changes.lock().await;
        let summary = self.apply(cfg, true).await.map_err(|r| r.message)?;
        self.sync_consoles(true)?;
        self.sync_carbonlinks(true)?;
        Ok(summary)
    }

    /// Builds the next topology from a validated `cfg` (listener ids and addresses,
    /// aggregator ids, destination ids kept where things are unchanged), has every
    /// shard prepare it, and commits it only when every shard did; otherwise every
    /// shard keeps the running one. `strict`: a listener that cannot bind fails the
    /// change (startup, reload); otherwise it is left out and logged (membership
    /// changes and reclaims, which keep the running listeners).
    async fn apply(&self, mut cfg: Config, strict: bool) -> Result<String, Refused> {
        let old = self.topology();
        // Listeners: an unchanged one keeps its id and socket; a new or changed one gets
        // a fresh id, and its address is probed unless one of ours holds it now.
        let mut listener_ids = Vec::with_capacity(cfg.listeners.len());
        let mut listener_addrs = Vec::with_capacity(cfg.listeners.len());
        let mut bound = Vec::with_capacity(cfg.listeners.len());
        let mut labels = self.lock().listener_labels.clone();
        let mut taken = vec![false; old.config.listeners.len()];
        let mut keep = vec![true; cfg.listeners.len()];
        let (mut started, mut failed) = (0, Vec::new());
        for (i, l) in cfg.listeners.iter().enumerate() {
            if let Some(k) = (0..old.config.listeners.len())
                .find(|&k| !taken[k] && old.config.listeners[k] == *l)
            {
                taken[k] = true;
                listener_ids.push(old.listener_ids[k]);
                listener_addrs.push(old.listener_addrs[k]);
                bound.push(l.url.bound(old.listener_addrs[k]));
                continue;
            }
            let ours = old
                .config
                .listeners
                .iter()
                .zip(&old.listener_addrs)
                .find(|(o, a)| o.url == l.url && a.is_some())
                .map(|(_, a)| *a);
            let addr = match ours {
                Some(a) => Ok(a),
                None => crate::shard::probe_listener(l),
            };
            match addr {
                Ok(a) => {
                    labels.push(l.name.clone());
                    listener_ids.push(labels.len() - 1);
                    listener_addrs.push(a);
                    bound.push(l.url.bound(a));
                    started += 1;
                }
                Err(e) if strict => {
                    return Err(Refused::new(
                        409,
                        format!("listen[{i}] {}: cannot bind: {e}", l.url),
                    ))
                }
                Err(e) => {
                    tracing::error!(listener = %l.name, url = %l.url, error = %e, "reload: cannot bind; listener left out");
                    failed.push(l.name.clone());
                    keep[i] = false;
                }
            }
        }
        if keep.iter().any(|k| !k) {
            let mut k = keep.iter();
            cfg.listeners
                .retain(|_| *k.next().expect("one per listener"));
        }
        let stopped = taken.iter().filter(|t| !**t).count();
        // Aggregators: the same name and settings keep their id (and their keys).
        let mut next_id = self.lock().next_aggregator_id;
        let aggregator_ids: Vec<u16> = cfg
            .aggregates
            .iter()
            .map(
                |a| match old.config.aggregates.iter().position(|o| o == a) {
                    Some(k) => old.aggregator_ids[k],
                    None => {
                        next_id = next_id.wrapping_add(1);
                        next_id
                    }
                },
            )
            .collect();
        // Stores: the same name and path keep their id (and their cache); their shared
        // limits are kept unless a limit changed. A new one reads back the spill its path
        // holds.
        let mut next_store_id = self.lock().next_store_id;
        let now_ms = crate::shard::pipeline::unix_ms() as u64;
        let mut store_ids = Vec::with_capacity(cfg.stores.len());
        let mut store_shared = Vec::with_capacity(cfg.stores.len());
        for st in &cfg.stores {
            let crate::config::StoreKind::Whisper(w) = &st.kind;
            let same = old.config.stores.iter().position(|o| {
                let crate::config::StoreKind::Whisper(ow) = &o.kind;
                o.name == st.name && ow.path == w.path
            });
            match same {
                Some(k) => {
                    store_ids.push(old.store_ids[k]);
                    let crate::config::StoreKind::Whisper(ow) = &old.config.stores[k].kind;
                    let keep = ow.writes_per_second == w.writes_per_second
                        && ow.creates_per_minute == w.creates_per_minute;
                    store_shared.push(if keep {
                        old.store_shared[k].clone()
                    } else {
                        Arc::new(crate::shard::store::StoreShared::new(
                            st,
                            self.shards.len(),
                            Vec::new(),
                            now_ms,
                        ))
                    });
                }
                None => {
                    next_store_id = next_store_id.wrapping_add(1);
                    store_ids.push(next_store_id);
                    let restore = crate::store::spill::list(&w.path);
                    if !restore.is_empty() {
                        tracing::info!(store = %st.name, files = restore.len(), "reading back the spill of a previous run");
                    }
                    store_shared.push(Arc::new(crate::shard::store::StoreShared::new(
                        st,
                        self.shards.len(),
                        restore,
                        now_ms,
                    )));
                }
            }
        }
        // Retired destinations every shard has drained are freed with this change.
        let reclaim = self.reclaimable(&old);
        let epoch = old.epoch + 1;
        let table = old
            .table
            .evolve(&cfg, epoch, &reclaim)
            .map_err(|e| Refused::new(409, e.to_string()))?;
        let (mut added, mut retired, mut revived) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..table.len() {
            let d = DestId(i as u16);
            let (was, now) = (old.table.states.get(i).copied(), table.states[i]);
            let new_occupant = table.serial(d).is_some() && table.serial(d) != old.table.serial(d);
            match (was, now) {
                _ if new_occupant => added.push(table.destinations[i].name.as_str()),
                (Some(DestState::Live), DestState::Retired { .. }) => {
                    retired.push(table.destinations[i].name.as_str())
                }
                (Some(DestState::Retired { .. }), DestState::Live) => {
                    revived.push(table.destinations[i].name.as_str())
                }
                _ => {}
            }
        }
        let summary = format!(
            "{} clusters, {} routes, {} aggregators; destinations added {}, retired {}, \
             listed again {}, reclaimed {}, live or draining {}; listeners started \
             {started}, stopped {stopped}, failed {failed:?}",
            cfg.clusters.len(),
            cfg.routes.len(),
            cfg.aggregates.len(),
            few(&added),
            few(&retired),
            few(&revived),
            reclaim.len(),
            table.occupied(),
        );
        let topology = Topology {
            epoch,
            config: Arc::new(cfg),
            table: Arc::new(table),
            listener_ids,
            listener_addrs,
            aggregator_ids,
            store_ids,
            store_shared,
        };
        // Every shard prepares; only then does any of them route by it.
        let refusals = self
            .ask_all(
                |ack| ControlMsg::Prepare {
                    topology: Box::new(topology.clone()),
                    ack,
                },
                epoch,
            )
            .await?;
        if !refusals.is_empty() {
            let _ = self.broadcast(|| ControlMsg::Abort { epoch }).await;
            tracing::error!(
                ?refusals,
                "change refused by shards; every shard keeps the running topology"
            );
            return Err(Refused::new(
                503,
                format!(
                    "not applied (every shard keeps the running topology): {}",
                    refusals.join("; ")
                ),
            ));
        }
        let failures = self
            .ask_all(|ack| ControlMsg::Commit { epoch, ack }, epoch)
            .await?;
        if !failures.is_empty() {
            // Every shard prepared, so this is a bug or a stuck shard: say so loudly.
            tracing::error!(
                ?failures,
                epoch,
                "shards did not commit a prepared topology"
            );
        }
        {
            let mut inner = self.lock();
            let n = topology.table.len();
            inner.health.resize(n, Tracker::new());
            inner.serials.resize(n, 0);
            inner.writer_failures.resize(n, 0);
            // A new occupant of an id starts with fresh health and counters.
            for d in 0..n {
                let serial = topology.table.serial(DestId(d as u16)).unwrap_or(0);
                if inner.serials[d] != serial {
                    inner.serials[d] = serial;
                    inner.health[d] = Tracker::new();
                    inner.writer_failures[d] = 0;
                }
            }
            inner.health_cfg = topology.config.health.clone();
            let mut router = Router::new(&topology.config, &topology.table, &topology.listener_ids);
            let alive: Vec<(DestId, bool)> = inner
                .health
                .iter()
                .enumerate()
                .map(|(d, h)| (DestId(d as u16), h.state.is_up()))
                .collect();
            router.set_alive_many(&alive);
            inner.router = router;
            inner.listener_labels = labels.clone();
            inner.bound = bound;
            inner.next_aggregator_id = next_id;
            inner.next_store_id = next_store_id;
            inner.topology = topology.clone();
        }
        let mut collectd_listeners = vec![false; labels.len()];
        for (l, &id) in topology.config.listeners.iter().zip(&topology.listener_ids) {
            if l.format == crate::config::Format::Collectd && id < collectd_listeners.len() {
                collectd_listeners[id] = true;
            }
        }
        self.registry.set_labels(Labels {
            listeners: labels,
            collectd_listeners,
            rules: crate::route::rule_labels(&topology.config),
            destinations: (0..topology.table.len())
                .map(|d| topology.table.get(DestId(d as u16)).map(|d| d.name.clone()))
                .collect(),
            aggregators: topology
                .config
                .aggregates
                .iter()
                .map(|a| a.name.clone())
                .collect(),
            stores: topology
                .config
                .stores
                .iter()
                .map(|s| s.name.clone())
                .collect(),
        });
        tracing::info!(%summary, epoch, "topology committed");
        Ok(summary)
    }

    /// The retired destinations of `topology` that every shard has reported drained
    /// while routing by an epoch at or after their retirement: no shard's router, route
    /// cache, queue or writer refers to them any more, so their ids may be freed.
    fn reclaimable(&self, topology: &Topology) -> Vec<DestId> {
        let shards = self.registry.per_shard();
        if shards.len() < self.shards.len() || shards.is_empty() {
            return Vec::new();
        }
        (0..topology.table.len())
            .filter_map(|d| match topology.table.states[d] {
                DestState::Retired { epoch } => shards
                    .iter()
                    .all(|s| s.epoch >= epoch && s.drained.get(d).copied().unwrap_or(false))
                    .then_some(DestId(d as u16)),
                _ => None,
            })
            .collect()
    }

    /// Frees drained destinations: each second, if some retired destination has drained
    /// on every shard and no other change is under way, the running config is applied
    /// again, which frees them (their slots, buffers and counters go; the counters into
    /// the reclaimed totals). Runs forever.
    pub async fn reclaim_loop(self: Arc<Self>) {
        let mut wait = RECLAIM_INTERVAL;
        loop {
            tokio::time::sleep(wait).await;
            let topology = self.topology();
            if self.reclaimable(&topology).is_empty() {
                continue;
            }
            let Ok(_serial) = self.changes.try_lock() else {
                continue;
            };
            let cfg = (*self.topology().config).clone();
            match self.apply(cfg, false).await {
                Ok(_) => wait = RECLAIM_INTERVAL,
                Err(e) => {
                    // A shard refused: try again later, less often.
                    tracing::debug!(error = %e.message, "reclaim not applied");
                    wait = (wait * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    /// Re-reads the rules files the config names at their `rules_reread_interval_ms`
    /// (carbon's aggregation rules, a whisper store's schemas and aggregation files),
    /// and applies the config with the changed ones through the one change path. A file
    /// that cannot be read or parsed keeps the running rules, logged once per distinct
    /// error; a change that is refused is tried again at the file's next look.
    pub async fn rules_loop(self: Arc<Self>) {
        use crate::config::reread;
        use std::collections::{HashMap, HashSet};
        let mut next_look: HashMap<String, tokio::time::Instant> = HashMap::new();
        let mut complained: HashMap<String, String> = HashMap::new();
        loop {
            let files = reread::watched(&self.topology().config);
            let tick = files
                .iter()
                .map(|f| f.interval)
                .min()
                .unwrap_or(RULES_LOOK_MAX)
                .clamp(RULES_LOOK_MIN, RULES_LOOK_MAX);
            tokio::time::sleep(tick).await;
            let now = tokio::time::Instant::now();
            next_look.retain(|label, _| files.iter().any(|f| &f.label == label));
            let due: HashSet<String> = files
                .iter()
                .filter(|f| {
                    let at = next_look.entry(f.label.clone()).or_insert(now + f.interval);
                    if now < *at {
                        return false;
                    }
                    *at = now + f.interval;
                    true
                })
                .map(|f| f.label.clone())
                .collect();
            if due.is_empty() {
                continue;
            }
            // Under the change lock, against the config running now (a reload may have
            // come in between). The files are small and bounded: read in place.
            let _serial = self.changes.lock().await;
            let mut cfg = (*self.topology().config).clone();
            let mut changed = Vec::new();
            for f in reread::watched(&cfg)
                .iter()
                .filter(|f| due.contains(&f.label))
            {
                match reread::reread_into(&mut cfg, f) {
                    Ok(c) => {
                        if complained.remove(&f.label).is_some() {
                            tracing::info!(file = %f.label, "rules file readable again");
                        }
                        if c {
                            changed.push(f.label.clone());
                        }
                    }
                    Err(e) => {
                        if complained.get(&f.label) != Some(&e) {
                            tracing::error!(file = %f.label, error = %e, "rules file changed but cannot be used; the running rules are kept");
                            complained.insert(f.label.clone(), e);
                        }
                    }
                }
            }
            if changed.is_empty() {
                continue;
            }
            match self.apply(cfg, false).await {
                Ok(summary) => {
                    tracing::info!(files = ?changed, %summary, "rules files changed: applied")
                }
                Err(e) => {
                    tracing::error!(files = ?changed, error = %e.message, "rules files changed but not applied; tried again at their next look")
                }
            }
        }
    }

    /// Sends `make(ack)` to every shard and waits for every answer for `epoch` (up to
    /// [`PREPARE_PATIENCE`]); returns the refusals, one per shard that refused or did not
    /// answer.
    async fn ask_all(
        &self,
        make: impl Fn(tokio::sync::mpsc::UnboundedSender<crate::shard::PrepareAck>) -> ControlMsg,
        epoch: u64,
    ) -> Result<Vec<String>, Refused> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        self.broadcast(|| make(tx.clone())).await?;
        drop(tx);
        let mut refusals = Vec::new();
        let mut answered = 0;
        let deadline = tokio::time::Instant::now() + PREPARE_PATIENCE;
        while answered < self.shards.len() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((shard, e, result))) if e == epoch => {
                    answered += 1;
                    if let Err(why) = result {
                        refusals.push(format!("shard {shard}: {why}"));
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    refusals.push(format!(
                        "{} shard(s) did not answer",
                        self.shards.len() - answered
                    ));
                    break;
                }
            }
        }
        Ok(refusals)
    }

    /// Sends `make()` to every shard, waiting up to [`SHARD_SEND_PATIENCE`] for a full
    /// inbox.
    async fn broadcast(&self, make: impl Fn() -> ControlMsg) -> Result<(), Refused> {
        let mut failed = 0;
        for s in &self.shards {
            let mut m = make();
            let deadline = tokio::time::Instant::now() + SHARD_SEND_PATIENCE;
            loop {
                match s.try_send(m) {
                    Ok(()) => break,
                    Err(back) if tokio::time::Instant::now() < deadline => {
                        m = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(_) => {
                        failed += 1;
                        break;
                    }
                }
            }
        }
        if failed > 0 {
            tracing::error!(failed, "shards did not take a control message in time");
            return Err(Refused::new(
                503,
                format!("{failed} shard(s) did not respond"),
            ));
        }
        Ok(())
    }

    /// Routes cadent's own counters as graphite lines every `[telemetry] interval_ms`
    /// (off with an empty prefix). Runs forever.
    pub async fn telemetry_loop(self: Arc<Self>) {
        let started = crate::shard::pipeline::unix_ms();
        loop {
            let (interval, prefix) = {
                let t = &self.lock().topology.config.telemetry;
                (t.interval_ms, t.prefix.clone())
            };
            let now = crate::shard::pipeline::unix_ms();
            let next = (now.div_euclid(interval as i64) + 1) * interval as i64;
            tokio::time::sleep(Duration::from_millis((next - now) as u64)).await;
            // The first lines come a whole interval after the start, not at the first
            // multiple, which may be a moment away.
            if prefix.is_empty() || self.shards.is_empty() || next < started + interval as i64 {
                continue;
            }
            let mut lines = Vec::new();
            self.registry
                .graphite_lines(&prefix, next / 1000, &mut lines);
            let _ = self.shards[0].try_send(ControlMsg::Inject {
                origin: crate::point::Origin::Telemetry,
                lines,
            });
        }
    }

    /// Probes every TCP destination (a connect) and every collectd UDP destination (an
    /// empty datagram, which collectd ignores, and a look for the ICMP refusal it may
    /// draw) each `probe_interval_ms`, and moves destinations between up, down and
    /// probing; each change goes to every shard. Runs forever.
    pub async fn probe_loop(self: Arc<Self>) {
        loop {
            // Other UDP destinations (an empty datagram is a packet to statsd) and file
            // destinations are never probed: they stay up unless their writers fail.
            let (interval, timeout, targets) = {
                let inner = self.lock();
                let t = &inner.topology.table;
                let targets: Vec<(usize, u64, Member)> = t
                    .destinations
                    .iter()
                    .enumerate()
                    .filter(|&(d, _)| t.is_live(DestId(d as u16)))
                    .filter_map(|(d, dest)| match (&dest.kind, &dest.format) {
                        (DestinationKind::Net(m), _) if m.transport == Transport::Tcp => {
                            Some((d, dest.serial, m.clone()))
                        }
                        (DestinationKind::Net(m), crate::config::OutputFormat::Collectd(_)) => {
                            Some((d, dest.serial, m.clone()))
                        }
                        _ => None,
                    })
                    .collect();
                (
                    Duration::from_millis(inner.health_cfg.probe_interval_ms),
                    Duration::from_millis(inner.health_cfg.probe_timeout_ms),
                    targets,
                )
            };
            tokio::time::sleep(interval).await;
            let mut probes = tokio::task::JoinSet::new();
            for (d, serial, m) in targets {
                probes.spawn(async move { (d, serial, probe(&m, timeout).await) });
            }
            let mut results = Vec::new();
            while let Some(r) = probes.join_next().await {
                results.extend(r.ok());
            }
            // One message per round, however many destinations changed: a thousand
            // members going down together must not flood the shards' inboxes.
            let changes = self.observe(&results);
            if !changes.is_empty() {
                let _ = self
                    .broadcast(|| ControlMsg::Health {
                        changes: changes.clone(),
                    })
                    .await;
            }
        }
    }

    /// Takes one round of probe results (destination, serial of its occupant when
    /// probed, connected) with the writers' failures since the last round; returns the
    /// routing changes to tell the shards. Results about an earlier occupant of an id
    /// are dropped.
    fn observe(&self, results: &[(usize, u64, bool)]) -> Vec<(DestId, u64, bool)> {
        let total = Registry::total(&self.registry.per_shard());
        let mut inner = self.lock();
        let down_after = inner.health_cfg.down_after_failures;
        let mut changes = Vec::new();
        for &(d, serial, probe_ok) in results {
            if d >= inner.health.len() || inner.serials[d] != serial {
                continue;
            }
            let (failures, stalled_ms) = total.destinations.get(d).map_or((0, 0), |c| {
                (c.connect_failures + c.write_errors, c.stalled_ms)
            });
            // A writer that has had data outstanding a whole interval without the peer
            // acknowledging any (it accepts, but does not read) fails the interval too,
            // though its write timeout has not struck yet.
            let writer_failed = failures > inner.writer_failures[d]
                || stalled_ms >= inner.health_cfg.probe_interval_ms;
            inner.writer_failures[d] = failures;
            let e = Evidence {
                probe_ok,
                writer_failed,
            };
            let Some(state) = inner.health[d].observe(e, down_after) else {
                continue;
            };
            let name = &inner.topology.table.destinations[d].name;
            match state {
                State::Down => tracing::warn!(destination = %name, "destination down"),
                State::Probing => {
                    tracing::info!(destination = %name, "destination answers; probing")
                }
                State::Up => tracing::info!(destination = %name, "destination up"),
            }
            // Down and probing both route around it: only a change of routing is news.
            let dest = DestId(d as u16);
            if inner.router.alive().get(d).copied().unwrap_or(true) != state.is_up() {
                inner.router.set_alive(dest, state.is_up());
                changes.push((dest, serial, state.is_up()));
            }
        }
        changes
    }
}

/// One TCP connect, closed at once; or for UDP an empty datagram on a connected socket,
/// failed when it draws an ICMP refusal within the timeout (at most 200 ms).
async fn probe(m: &Member, timeout: Duration) -> bool {
    let target: Result<Vec<SocketAddr>, _> = match m.host.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(vec![SocketAddr::new(ip, m.port)]),
        Err(_) => tokio::net::lookup_host((m.host.as_str(), m.port))
            .await
            .map(|a| a.collect()),
    };
    let Some(addr) = target.ok().and_then(|a| a.into_iter().next()) else {
        return false;
    };
    if m.transport == Transport::Udp {
        return probe_udp(addr, timeout.min(Duration::from_millis(200)))
            .await
            .unwrap_or(false);
    }
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

async fn probe_udp(addr: SocketAddr, wait: Duration) -> std::io::Result<bool> {
    let local: SocketAddr = if addr.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let s = tokio::net::UdpSocket::bind(local).await?;
    s.connect(addr).await?;
    if s.send(&[]).await.is_err() {
        return Ok(false);
    }
    tokio::time::sleep(wait).await;
    Ok(s.take_error()?.is_none())
}

/// Whether `server` names member `m`: `host:port`, with or without a scheme, with or
/// without the instance.
fn member_matches(m: &Member, server: &str) -> bool {
    let host = if m.host.contains(':') {
        format!("[{}]", m.host)
    } else {
        m.host.clone()
    };
    let plain = format!("{host}:{}", m.port);
    let with_scheme = format!("{}://{plain}", m.transport.scheme());
    server == plain && m.transport == Transport::Tcp
        || server == with_scheme
        || server == m.display_hash()
        || server == format!("{}://{}", m.transport.scheme(), m.display_hash())
}

/// A TCP listener on `addr` for the control thread's tokio runtime (CarbonLink, the statsd
/// consoles).
fn bind_tokio(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(l)
}
