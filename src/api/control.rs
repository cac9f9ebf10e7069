//! The control plane's state: the running topology, the health of every destination, and
//! the one path by which routing changes at run time (membership API, SIGHUP reload,
//! health transitions). Changes are serialised, applied to a copy, validated, and then
//! handed to every shard as a message; shards never wait for the control thread.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::config::{Config, Health, ListenUrl, Member, Transport};
use crate::output::health::{Evidence, State, Tracker};
use crate::route::{DestId, DestinationKind, Router};
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
    /// The control thread's router, for `/hashcheck` and `cadent hash`-style answers.
    router: Router,
    /// Writer failures (connect failures + write errors) seen at the last probe round.
    writer_failures: Vec<u64>,
    health_cfg: Health,
    /// For each listener of `topology.config`, its id (counter index; never reused).
    listener_ids: Vec<usize>,
    /// Listener names by id, removed ones included (for counters).
    listener_labels: Vec<String>,
    /// Where each listener of `topology.config` is bound.
    bound: Vec<String>,
}

/// The running topology and destination health, shared by the admin handlers, the
/// probe loop and the SIGHUP handler.
pub struct Control {
    inner: Mutex<Inner>,
    /// Serialises changes, so every shard sees them in one order.
    changes: tokio::sync::Mutex<()>,
    shards: Vec<ShardSender>,
    registry: Arc<Registry>,
    config_path: Option<PathBuf>,
}

/// How long a change waits for a shard whose inbox is full before giving up on it.
const SHARD_SEND_PATIENCE: Duration = Duration::from_secs(5);

impl Control {
    /// Control over running shards; `bound` says where each listener is bound.
    pub fn new(
        topology: Topology,
        shards: Vec<ShardSender>,
        registry: Arc<Registry>,
        config_path: Option<PathBuf>,
        bound: Vec<String>,
    ) -> Arc<Control> {
        let listeners = topology.config.listeners.len();
        let listener_labels = topology
            .config
            .listeners
            .iter()
            .map(|l| l.name.clone())
            .collect();
        let n = topology.table.destinations.len();
        let router = Router::new(&topology.config, &topology.table);
        let health_cfg = topology.config.health.clone();
        Arc::new(Control {
            inner: Mutex::new(Inner {
                topology,
                health: vec![Tracker::new(); n],
                router,
                writer_failures: vec![0; n],
                health_cfg,
                listener_ids: (0..listeners).collect(),
                listener_labels,
                bound,
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
            router.cluster_destinations(i, key.as_bytes(), hashed, &mut out);
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

    /// `GET /servers`: every cluster with each member's state and counters.
    pub fn servers_json(&self) -> serde_json::Value {
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
                        let counters = total.destinations.get(d.index()).cloned();
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
        &self,
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
        let member = Member::parse(&spec).map_err(|e| Refused::new(400, e))?;
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
    pub async fn remove_member(&self, cluster: &str, server: &str) -> Result<String, Refused> {
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
        &self,
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
        self.apply(cfg).await?;
        Ok(done)
    }

    /// SIGHUP: reads the config file again and applies its rules, clusters and health
    /// settings, and diffs its listeners. `[server]` and `[output]` changes need a
    /// restart: they are reported and the running ones kept.
    pub async fn reload(&self) -> Result<String, String> {
        let Some(path) = &self.config_path else {
            return Err("running on the embedded default config: nothing to reload".into());
        };
        let mut cfg = Config::load(path).map_err(|e| format!("{e:#}"))?;
        let _serial = self.changes.lock().await;
        let old = self.topology().config;
        let mut kept = Vec::new();
        let listeners = self.relisten(&old, &mut cfg).await;
        if cfg.server != old.server {
            kept.push("[server]");
            cfg.server = old.server.clone();
        }
        if cfg.output != old.output {
            kept.push("[output]");
            cfg.output = old.output.clone();
        }
        if !kept.is_empty() {
            tracing::warn!(
                sections = ?kept,
                "reload: these sections changed and need a restart; the running ones are kept"
            );
        }
        let summary = self.apply(cfg).await.map_err(|r| r.message)?;
        Ok(format!("{summary}; {listeners}"))
    }

    /// Diffs the listeners of a reloaded config against the running ones: unchanged ones
    /// (same name and settings) keep running untouched; removed and changed ones stop;
    /// new and changed ones start on every shard, each on a fresh counter id. A new
    /// listener whose address cannot be bound is left out (and logged); `cfg.listeners`
    /// ends up as what runs.
    async fn relisten(&self, old: &Config, cfg: &mut Config) -> String {
        let old_ids = self.lock().listener_ids.clone();
        let ids: Vec<Option<usize>> = cfg
            .listeners
            .iter()
            .map(|l| {
                old.listeners
                    .iter()
                    .position(|o| o == l)
                    .map(|i| old_ids[i])
            })
            .collect();
        let removed: Vec<usize> = old
            .listeners
            .iter()
            .enumerate()
            .filter(|(_, o)| !cfg.listeners.contains(o))
            .map(|(i, _)| old_ids[i])
            .collect();
        let added = ids.iter().filter(|i| i.is_none()).count();
        if removed.is_empty() && added == 0 {
            return "listeners unchanged".into();
        }
        for &id in &removed {
            let _ = self.broadcast(ControlMsg::Unlisten { id }).await;
        }
        if !removed.is_empty() && added > 0 {
            // Let shards close the sockets of removed listeners before their addresses
            // are bound again (a changed listener keeps its address). Shards read their
            // inbox at least every 100 ms.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // For each listener of the file: its id and where it is bound, or None when it
        // is new and its address cannot be bound (left out, logged).
        let old_bound = self.lock().bound.clone();
        let mut running: Vec<Option<(usize, String)>> = Vec::with_capacity(ids.len());
        let (mut started, mut failed) = (0, Vec::new());
        for (l, id) in cfg.listeners.iter().zip(&ids) {
            if let Some(id) = *id {
                let i = old_ids.iter().position(|&o| o == id).expect("a running id");
                running.push(Some((id, old_bound[i].clone())));
                continue;
            }
            let addr = match &l.url {
                ListenUrl::Inet(t, a) => match crate::ingest::bind::probe(*a, *t == Transport::Tcp)
                {
                    Ok(a) => Some(a),
                    Err(e) => {
                        tracing::error!(listener = %l.name, url = %l.url, error = %e, "reload: cannot bind; listener left out");
                        failed.push(l.name.clone());
                        running.push(None);
                        continue;
                    }
                },
                ListenUrl::Unix(_) => None,
            };
            let id = {
                let mut inner = self.lock();
                inner.listener_labels.push(l.name.clone());
                inner.listener_labels.len() - 1
            };
            let _ = self
                .broadcast(ControlMsg::Listen {
                    id,
                    listener: Box::new(l.clone()),
                    addr,
                })
                .await;
            started += 1;
            running.push(Some((id, l.url.bound(addr))));
        }
        // What runs now, in the file's order.
        let listeners = std::mem::take(&mut cfg.listeners);
        let mut inner = self.lock();
        inner.bound.clear();
        inner.listener_ids.clear();
        for (l, run) in listeners.into_iter().zip(running) {
            if let Some((id, shown)) = run {
                inner.listener_ids.push(id);
                inner.bound.push(shown);
                cfg.listeners.push(l);
            }
        }
        format!(
            "listeners started {}, stopped {}, failed {:?}",
            started,
            removed.len(),
            failed
        )
    }

    /// Validates nothing (callers did), builds the next topology keeping destination
    /// ids, and hands it to every shard.
    async fn apply(&self, cfg: Config) -> Result<String, Refused> {
        let (topology, summary) = {
            let mut inner = self.lock();
            let table = inner
                .topology
                .table
                .evolve(&cfg)
                .map_err(|e| Refused::new(409, e))?;
            let old = &inner.topology.table;
            let added: Vec<&str> = table.destinations[old.destinations.len()..]
                .iter()
                .map(|d| d.name.as_str())
                .collect();
            let retired: Vec<&str> = table
                .retired
                .iter()
                .enumerate()
                .filter(|&(d, &r)| r && !old.retired.get(d).copied().unwrap_or(false))
                .map(|(d, _)| table.destinations[d].name.as_str())
                .collect();
            let summary = format!(
                "{} clusters, {} routes; destinations added {:?}, retired {:?}",
                cfg.clusters.len(),
                cfg.routes.len(),
                added,
                retired
            );
            let n = table.destinations.len();
            inner.health.resize(n, Tracker::new());
            inner.writer_failures.resize(n, 0);
            inner.health_cfg = cfg.health.clone();
            let topology = Topology {
                config: Arc::new(cfg),
                table: Arc::new(table),
            };
            let mut router = Router::new(&topology.config, &topology.table);
            for (d, h) in inner.health.iter().enumerate() {
                router.set_alive(DestId(d as u16), h.state.is_up());
            }
            inner.router = router;
            inner.topology = topology.clone();
            (topology, summary)
        };
        self.registry.set_labels(Labels {
            listeners: self.lock().listener_labels.clone(),
            rules: topology
                .config
                .routes
                .iter()
                .map(|r| r.name.clone())
                .collect(),
            destinations: topology
                .table
                .destinations
                .iter()
                .map(|d| d.name.clone())
                .collect(),
        });
        self.broadcast(ControlMsg::Reconfigure(topology)).await?;
        tracing::info!(%summary, "topology changed");
        Ok(summary)
    }

    async fn broadcast(&self, msg: ControlMsg) -> Result<(), Refused> {
        let mut failed = 0;
        for s in &self.shards {
            let mut m = msg.clone();
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

    /// Probes every TCP destination each `probe_interval_ms`, and moves destinations
    /// between up, down and probing; each change goes to every shard. Runs forever.
    pub async fn probe_loop(self: Arc<Self>) {
        loop {
            // UDP and file destinations are never probed: they stay up.
            let (interval, timeout, targets) = {
                let inner = self.lock();
                let t = &inner.topology.table;
                let targets: Vec<(usize, Member)> = t
                    .destinations
                    .iter()
                    .enumerate()
                    .filter(|&(d, _)| !t.retired[d])
                    .filter_map(|(d, dest)| match &dest.kind {
                        DestinationKind::Net(m) if m.transport == Transport::Tcp => {
                            Some((d, m.clone()))
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
            for (d, m) in targets {
                probes.spawn(async move { (d, probe(&m, timeout).await) });
            }
            let mut results = Vec::new();
            while let Some(r) = probes.join_next().await {
                results.extend(r.ok());
            }
            for msg in self.observe(&results) {
                let _ = self.broadcast(msg).await;
            }
        }
    }

    /// Takes one round of probe results (destination, connected) with the writers'
    /// failures since the last round; returns the routing changes to tell the shards.
    fn observe(&self, results: &[(usize, bool)]) -> Vec<ControlMsg> {
        let total = Registry::total(&self.registry.per_shard());
        let mut inner = self.lock();
        let down_after = inner.health_cfg.down_after_failures;
        let mut changes = Vec::new();
        for &(d, probe_ok) in results {
            if d >= inner.health.len() {
                continue;
            }
            let failures = total
                .destinations
                .get(d)
                .map_or(0, |c| c.connect_failures + c.write_errors);
            let writer_failed = failures > inner.writer_failures[d];
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
                changes.push(ControlMsg::Health {
                    dest,
                    up: state.is_up(),
                });
            }
        }
        changes
    }
}

/// One TCP connect, closed at once.
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
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
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
