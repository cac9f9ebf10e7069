//! Shards: one glommio executor per core, pinned, each owning its sockets, its copy of the
//! router, its writers, its share of the aggregators' keys and its counters. The control
//! thread talks to a shard only through its inbox (a lock-free queue, with a doorbell
//! that wakes the shard) and reads its counters from published copies; shards talk to
//! each other only over the mesh.
//!
//! A shard starts empty and gets everything it runs from a topology, through the one
//! path startup and every change share: `Prepare` (build the router, bind new listeners,
//! make new aggregators; anything that can fail fails here, and the shard says so),
//! then `Commit` once every shard prepared, or `Abort`. So shards never route by
//! different topologies after a change some shard refused.

pub mod aggregate;
pub mod mesh;
pub mod pipeline;
pub mod store;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use futures_lite::future;
use glommio::{LocalExecutorBuilder, Placement};

use crate::config::{Config, ListenUrl, Listener, StoreKind, Transport};
use crate::ingest::{self, bind, ReadOptions, StreamListener};
use crate::output::{self, writer::WriterOptions, Outputs, SlotChange};
use crate::point::Origin;
use crate::protocol::decode::{CollectdDecoder, Decoder};
use crate::route::{DestId, DestState, Destination, DestinationKind, DestinationTable, Router};
use crate::telemetry::{Registry, ShardCounters};
use aggregate::{AggStage, AggState, FlushProgress};
use mesh::ShardMesh;
use pipeline::{unix_ms, Core, Input};
use store::{StoreShared, StoreStage, StoreState};

/// What shards route by: a validated config, its destination table, and the ids that
/// stay stable across changes (listeners, aggregators). The control thread builds a new
/// one for every change and hands it to every shard.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Increases with every change.
    pub epoch: u64,
    /// The config whose listeners, rules, clusters and aggregators apply.
    pub config: Arc<Config>,
    /// Its destinations, ids stable across replacements.
    pub table: Arc<DestinationTable>,
    /// For each listener of the config: its id (counter index; never reused).
    pub listener_ids: Vec<usize>,
    /// For each listener of the config: where to bind (port 0 resolved; `None` for
    /// unix sockets).
    pub listener_addrs: Vec<Option<SocketAddr>>,
    /// For each aggregator of the config: its stable id (the same aggregator, by name and
    /// settings, keeps it; mesh records name it).
    pub aggregator_ids: Vec<u16>,
    /// For each store of the config: its stable id (the same name and path keep it, and
    /// with it their cache; mesh records name it).
    pub store_ids: Vec<u16>,
    /// For each store of the config: its process-wide parts (rate limits, the spill to
    /// read back).
    pub store_shared: Vec<Arc<StoreShared>>,
}

impl Topology {
    /// Nothing: no listeners, destinations or rules (what a shard starts with).
    pub fn empty(config: Arc<Config>) -> Topology {
        Topology {
            epoch: 0,
            config,
            table: Arc::new(DestinationTable::empty()),
            listener_ids: Vec::new(),
            listener_addrs: Vec::new(),
            aggregator_ids: Vec::new(),
            store_ids: Vec::new(),
            store_shared: Vec::new(),
        }
    }
}

/// A shard's answer to `Prepare`: (shard, epoch, Ok or why not).
pub type PrepareAck = (usize, u64, Result<(), String>);

/// A message from the control thread to a shard.
#[derive(Debug)]
pub enum ControlMsg {
    /// Get ready to route by a new topology, and answer on `ack`.
    Prepare {
        /// The topology.
        topology: Box<Topology>,
        /// Where the answer goes.
        ack: tokio::sync::mpsc::UnboundedSender<PrepareAck>,
    },
    /// Every shard prepared `epoch`: route by it now, and say so on `ack`.
    Commit {
        /// The prepared topology's epoch.
        epoch: u64,
        /// Where the shard says it routes by it.
        ack: tokio::sync::mpsc::UnboundedSender<PrepareAck>,
    },
    /// Some shard could not prepare `epoch`: forget it, keep the running one.
    Abort {
        /// The prepared topology's epoch.
        epoch: u64,
    },
    /// Destinations went up or down (one round of health checks); routing follows.
    Health {
        /// (destination, the serial of its occupant when judged, up).
        changes: Vec<(DestId, u64, bool)>,
    },
    /// Send every partly filled mesh batch now, then say so: a query that follows
    /// sees every point any shard read before it (the owner drains its inbound mesh
    /// before it answers).
    MeshFlush {
        /// Where the shard says it has sent.
        ack: tokio::sync::mpsc::UnboundedSender<usize>,
    },
    /// The statsd management console asks statsd aggregator `aggregator`.
    StatsdQuery {
        /// The aggregator's name.
        aggregator: String,
        /// The question.
        query: aggregate::StatsdQuery,
        /// Where the shard answers.
        reply: tokio::sync::mpsc::UnboundedSender<(usize, aggregate::StatsdAnswer)>,
    },
    /// `/tiers`: the collectd hosts this shard routed to each destination.
    HostsSeen {
        /// Where the shard answers: (shard, per destination id: hosts kept, hosts more).
        reply: tokio::sync::mpsc::UnboundedSender<(usize, HostsSeenAnswer)>,
    },
    /// The read API asks store `query.store` for the cached points of names this shard
    /// owns; the shard answers with their points, in the order asked.
    StoreQuery {
        /// The question.
        query: store::StoreQuery,
        /// Where the shard answers: (shard, points per name).
        reply:
            tokio::sync::mpsc::UnboundedSender<(usize, Vec<Vec<crate::store::cache::CachedPoint>>)>,
    },
    /// Graphite lines to route from `origin` (cadent's self-metrics).
    Inject {
        /// Where they come from.
        origin: Origin,
        /// `name value timestamp\n` lines.
        lines: Vec<u8>,
    },
}

/// A shard's answer to [`ControlMsg::HostsSeen`]: per destination id, the hosts it
/// keeps and how many more it saw.
pub type HostsSeenAnswer = Vec<(Vec<Vec<u8>>, u64)>;

/// The longest shard tick: the mesh, the store writers, sealing and publishing run on
/// it (each wakeup of a parked shard costs about 50-100 µs of CPU on a VM).
const TICK_MAX_MS: u64 = 50;

/// The shortest tick a store's write rate may ask for.
const TICK_MIN_MS: u64 = 5;

/// The shard tick for `cfg`: the shortest of `stats_interval_ms`, `mesh_interval_ms`,
/// [`TICK_MAX_MS`] and what each store needs. A store's writer starts a batch of at
/// most `writes_in_flight_max` writes per tick, so the tick is short enough for one
/// shard to start the whole process's `writes_per_second` by itself (20 ms when the
/// rate is unlimited).
fn tick_for(cfg: &Config) -> Duration {
    let stores = cfg.stores.iter().map(|s| {
        let StoreKind::Whisper(w) = &s.kind;
        match w.writes_per_second {
            0 => 20,
            wps => (w.writes_in_flight_max as u64 * 1_000 / wps).max(TICK_MIN_MS),
        }
    });
    let ms = stores.fold(
        cfg.server
            .stats_interval_ms
            .min(cfg.server.mesh_interval_ms)
            .min(TICK_MAX_MS),
        u64::min,
    );
    Duration::from_millis(ms)
}

/// Messages a shard inbox holds before the control thread must retry.
const INBOX_MESSAGES_MAX: usize = 64;

/// A shard's inbox: the messages, and a doorbell (one end of a socket pair, the shard
/// reads the other through io_uring) so the shard need not poll for them: its tick
/// can be long while a read API query is answered at once.
struct Inbox {
    queue: ArrayQueue<ControlMsg>,
    bell: std::os::unix::net::UnixStream,
    /// Set to stop the shard: a flag, not a message, so a full inbox cannot lose it.
    stop: AtomicBool,
}

impl Inbox {
    fn push(&self, msg: ControlMsg) -> Result<(), ControlMsg> {
        self.queue.push(msg)?;
        self.ring();
        Ok(())
    }

    /// Wakes the shard. Non-blocking: a full socket buffer already holds rings enough.
    fn ring(&self) {
        let _ = std::io::Write::write(&mut &self.bell, &[1]);
    }
}

/// How the control thread reaches a running shard.
pub struct ShardHandle {
    /// Shard number.
    pub id: usize,
    inbox: Arc<Inbox>,
    join: glommio::ExecutorJoinHandle<()>,
}

/// A clonable way to reach a shard's inbox (the control plane keeps these).
#[derive(Clone)]
pub struct ShardSender {
    inbox: Arc<Inbox>,
}

impl ShardSender {
    /// Sends a message; gives it back when the inbox is full (the shard empties it as
    /// soon as the doorbell wakes it).
    pub fn try_send(&self, msg: ControlMsg) -> Result<(), ControlMsg> {
        self.inbox.push(msg)
    }
}

impl ShardHandle {
    /// A sender to this shard's inbox.
    pub fn sender(&self) -> ShardSender {
        ShardSender {
            inbox: self.inbox.clone(),
        }
    }

    /// Sends a message; the shard is woken for it. False when the inbox is full.
    pub fn send(&self, msg: ControlMsg) -> bool {
        self.inbox.push(msg).is_ok()
    }

    /// Asks the shard to stop accepting, flush within `shutdown_timeout_ms` and exit; it
    /// sees this on its next tick whatever its inbox holds.
    pub fn shutdown(&self) {
        self.inbox.stop.store(true, Ordering::Release);
        self.inbox.ring();
    }

    /// Waits for the shard's thread to end.
    pub fn join(self) -> Result<(), String> {
        self.join
            .join()
            .map_err(|e| format!("shard {}: {e}", self.id))
    }
}

/// The CPUs shards are pinned to: those this process may run on.
pub fn available_cpus() -> Vec<usize> {
    match core_affinity::get_core_ids() {
        Some(ids) if !ids.is_empty() => ids.into_iter().map(|c| c.id).collect(),
        _ => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// Resolves `shards = 0` to the number of available CPUs.
pub fn shard_count(cfg: &Config) -> usize {
    match cfg.server.shards {
        0 => available_cpus().len().max(1),
        n => n,
    }
}

/// Where each listener of `cfg` binds: port 0 replaced by the port every shard will
/// bind, and a port another process holds refused.
pub fn probe_listeners(cfg: &Config) -> anyhow::Result<Vec<Option<SocketAddr>>> {
    cfg.listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            probe_listener(l)
                .map_err(|e| anyhow::anyhow!("listen[{i}] {}: cannot bind: {e}", l.url))
        })
        .collect()
}

/// One listener's probe (see [`bind::probe`]).
pub fn probe_listener(l: &Listener) -> std::io::Result<Option<SocketAddr>> {
    match &l.url {
        ListenUrl::Inet(t, addr) => bind::probe(*addr, *t == Transport::Tcp).map(Some),
        ListenUrl::Http(addr, _) => bind::probe(*addr, true).map(Some),
        ListenUrl::Unix(_) | ListenUrl::UnixDatagram(_) => Ok(None),
    }
}

/// Starts `shards` empty shards (they run nothing until the first topology is
/// committed). `config` gives the process-wide settings (`[server]`, `[output]`);
/// `stream_fds_max` bounds each shard's open stream connections (see [`ingest::fds`]).
pub fn spawn(
    config: Arc<Config>,
    registry: Arc<Registry>,
    stream_fds_max: usize,
) -> anyhow::Result<Vec<ShardHandle>> {
    let shards = shard_count(&config);
    let cpus = available_cpus();
    if shards > cpus.len() {
        tracing::warn!(
            shards,
            cpus = cpus.len(),
            "server.shards is more than the CPUs this process may run on: shards share \
             cores (pinned in turn), so they preempt one another; shards = 0 runs one per CPU"
        );
    }
    let meshes = mesh::links(
        shards,
        config.server.mesh_batch_bytes,
        config.server.mesh_queue_bytes_max,
    );
    let mut handles = Vec::with_capacity(shards);
    for (id, mesh) in meshes.into_iter().enumerate() {
        let (bell, bell_shard) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| anyhow::anyhow!("shard {id}: no socket pair for its inbox: {e}"))?;
        bell.set_nonblocking(true)
            .map_err(|e| anyhow::anyhow!("shard {id}: inbox doorbell: {e}"))?;
        let inbox = Arc::new(Inbox {
            queue: ArrayQueue::new(INBOX_MESSAGES_MAX),
            bell,
            stop: AtomicBool::new(false),
        });
        let (cfg, registry, inbox2) = (config.clone(), registry.clone(), inbox.clone());
        let cpu = cpus[id % cpus.len()];
        let join = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("shard-{id}"))
            .io_memory(config.server.io_memory_bytes)
            .spawn(move || async move {
                run(id, cfg, mesh, registry, inbox2, bell_shard, stream_fds_max).await;
            })
            .map_err(|e| anyhow::anyhow!("cannot start shard {id} on cpu {cpu}: {e}"))?;
        handles.push(ShardHandle { id, inbox, join });
    }
    Ok(handles)
}

/// What a shard prepared for an epoch, waiting for its commit.
struct Prepared {
    topology: Topology,
    router: Router,
    /// New listeners: (id, settings, its socket bound here, or None for unix).
    listeners: Vec<(usize, Listener, Option<Bound>, Input)>,
    /// By config index: a new aggregator, or None to keep the running one with that id.
    aggs: Vec<Option<AggState>>,
}

/// A socket bound at prepare time.
enum Bound {
    Tcp(glommio::net::TcpListener),
    Udp(glommio::net::UdpSocket),
    Unix(glommio::net::UnixListener, std::path::PathBuf),
    UnixDatagram(glommio::net::UnixDatagram, std::path::PathBuf),
}

/// A shard's running state outside the core.
struct Shard {
    id: usize,
    topology: Topology,
    /// Shards in the process (each gets `spool_bytes_max / shards` of a spool cap).
    shards: usize,
    listeners: HashMap<usize, RunningListener>,
    /// By destination id: its writer task (none for a free id).
    writers: Vec<Option<WriterTask>>,
    /// By destination id: the spool task of a destination that has a spool.
    spoolers: Vec<Option<SpoolerTask>>,
    /// The spool directories those tasks hold.
    open_spools: output::spooler::OpenSpools,
    /// Destinations listed again while their spool task was ending (it gave up on the
    /// removed destination): a new task starts once it has ended.
    spool_restarts: Vec<DestId>,
    aggregator_tasks: HashMap<u16, glommio::task::JoinHandle<()>>,
    /// By store id: its writes-in-flight bound and its dispatcher (dropping the task
    /// cancels it).
    store_tasks: HashMap<u16, (usize, glommio::Task<()>)>,
    prepared: Option<Prepared>,
    opts: WriterOptions,
    stall_max: Duration,
    /// Test hook: `CADENT_TEST_FAIL_PREPARE_SHARD=<n>` makes shard n refuse every
    /// prepare after the first (startup), so tests can prove a refused change leaves
    /// every shard on the old topology.
    fail_prepare: bool,
}

async fn run(
    id: usize,
    cfg: Arc<Config>,
    mesh: ShardMesh,
    registry: Arc<Registry>,
    inbox: Arc<Inbox>,
    bell: std::os::unix::net::UnixStream,
    stream_fds_max: usize,
) {
    let shards = mesh.shards();
    let empty = Topology::empty(cfg.clone());
    let router = Router::new(&empty.config, &empty.table, &[]);
    let outputs = Outputs::new(&empty.table, &cfg.output, 0);
    let counters = ShardCounters::new(0, 0, 0, 0);
    let core = Rc::new(RefCell::new(Core::new(
        router,
        outputs,
        AggStage::new(id, shards),
        StoreStage::new(id, shards),
        mesh,
        counters,
    )));
    core.borrow_mut().stream_fds_max = stream_fds_max;
    let mut shard = Shard {
        id,
        shards,
        topology: empty,
        listeners: HashMap::new(),
        writers: Vec::new(),
        spoolers: Vec::new(),
        open_spools: Default::default(),
        spool_restarts: Vec::new(),
        aggregator_tasks: HashMap::new(),
        store_tasks: HashMap::new(),
        prepared: None,
        opts: WriterOptions::from(&cfg.output),
        stall_max: Duration::from_millis(cfg.output.stall_ms_max),
        fail_prepare: std::env::var("CADENT_TEST_FAIL_PREPARE_SHARD")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            == Some(id),
    };

    // One timer per shard: every wakeup costs the shard tens of microseconds (glommio
    // parks through io_uring and a membarrier), so the periodic work shares one tick
    // (at most TICK_MAX_MS, intervals rounded up to whole ticks): the mesh (send what is
    // open, apply what arrived) every mesh_interval_ms, the store writers' steps,
    // partly filled batches sealed every flush_interval_ms, counters every
    // stats_interval_ms. The inbox is read when its doorbell rings.
    let flush_every = Duration::from_millis(cfg.output.flush_interval_ms);
    let mesh_every = Duration::from_millis(cfg.server.mesh_interval_ms);
    let stats_every = Duration::from_millis(cfg.server.stats_interval_ms);
    let mut tick = tick_for(&cfg);
    let (mut since_stats, mut since_mesh, mut since_flush) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let rang = Rc::new(glommio::sync::Semaphore::new(0));
    let _doorbell = {
        let rang = rang.clone();
        // SAFETY: the descriptor is the shard's end of the pair, owned from here on by
        // the glommio stream.
        let mut bell = unsafe {
            use std::os::unix::io::{FromRawFd, IntoRawFd};
            glommio::net::UnixStream::from_raw_fd(bell.into_raw_fd())
        };
        glommio::spawn_local(async move {
            let mut buf = [0u8; 256];
            while let Ok(n) = futures_lite::AsyncReadExt::read(&mut bell, &mut buf).await {
                if n == 0 {
                    break;
                }
                if rang.available() == 0 {
                    rang.signal(1);
                }
            }
        })
    };
    let mut next_tick = std::time::Instant::now() + tick;
    loop {
        let wait = next_tick.saturating_duration_since(std::time::Instant::now());
        let _ = future::or(
            async {
                let _ = rang.acquire(1).await;
            },
            glommio::timer::sleep(wait),
        )
        .await;
        if std::time::Instant::now() >= next_tick {
            next_tick += tick;
            since_stats += tick;
            since_mesh += tick;
            since_flush += tick;
            if shards > 1 && since_mesh >= mesh_every {
                drain_mesh(&mut core.borrow_mut());
                since_mesh = Duration::ZERO;
            }
            if since_flush >= flush_every {
                let mut c = core.borrow_mut();
                c.outputs.seal_all();
                reoffload(&mut c);
                since_flush = Duration::ZERO;
            }
            core.borrow().stores.beat();
            if since_stats >= stats_every {
                shard.publish(&core, &registry, false);
                since_stats = Duration::ZERO;
            }
            // Behind by more than a tick (a long step): start again from now.
            let now = std::time::Instant::now();
            if next_tick < now {
                next_tick = now + tick;
            }
        }
        if inbox.stop.load(Ordering::Acquire) {
            break;
        }
        shard.restart_spoolers(&core);
        while let Some(msg) = inbox.queue.pop() {
            match msg {
                ControlMsg::Health { changes } => shard.health(&core, &changes),
                ControlMsg::Prepare { topology, ack } => {
                    let epoch = topology.epoch;
                    let result = shard.prepare(*topology, &core);
                    let _ = ack.send((id, epoch, result));
                }
                ControlMsg::Commit { epoch, ack } => {
                    let result = shard.commit(epoch, &core);
                    let _ = ack.send((id, epoch, result));
                    // A store added or changed may need a shorter tick (or allow a
                    // longer one).
                    tick = tick_for(&shard.topology.config);
                    // Counters and drained ids by the new topology at once: the control
                    // thread names destinations by it as soon as every shard committed.
                    shard.publish(&core, &registry, false);
                }
                ControlMsg::Abort { epoch } => {
                    if shard.prepared.as_ref().map(|p| p.topology.epoch) == Some(epoch) {
                        shard.prepared = None;
                    }
                }
                ControlMsg::MeshFlush { ack } => {
                    core.borrow_mut().mesh.send_all();
                    let _ = ack.send(id);
                }
                ControlMsg::StatsdQuery {
                    aggregator,
                    query,
                    reply,
                } => {
                    drain_mesh(&mut core.borrow_mut());
                    let answer = core.borrow_mut().aggs.answer(&aggregator, &query);
                    let _ = reply.send((id, answer));
                }
                ControlMsg::HostsSeen { reply } => {
                    let c = core.borrow();
                    let seen = c.router.hosts_seen();
                    let answer = (0..c.outputs.len())
                        .map(|d| {
                            let (hosts, more) = seen.of(DestId(d as u16));
                            (hosts.into_iter().map(<[u8]>::to_vec).collect(), more)
                        })
                        .collect();
                    let _ = reply.send((id, answer));
                }
                ControlMsg::Inject { origin, lines } => {
                    core.borrow_mut().route_lines(origin, &lines);
                }
                ControlMsg::StoreQuery { query, reply } => {
                    let mut c = core.borrow_mut();
                    drain_mesh(&mut c);
                    let s = c
                        .stores
                        .stores
                        .iter()
                        .position(|s| s.config.name == query.store);
                    let answer = match s {
                        Some(s) => c.stores.answer(s, &query.names),
                        None => vec![Vec::new(); query.names.len()],
                    };
                    let _ = reply.send((id, answer));
                }
            }
        }
    }

    // Shutdown: stop accepting, let readers finish the buffer in hand, flush the
    // aggregators' open intervals into routing, then drain.
    drop(std::mem::take(&mut shard.listeners));
    core.borrow_mut().draining = true;
    glommio::timer::sleep(Duration::from_millis(20)).await;
    for (_, t) in shard.aggregator_tasks.drain() {
        drop(t);
    }
    drain_mesh(&mut core.borrow_mut());
    {
        let mut c = core.borrow_mut();
        let now = unix_ms();
        for a in 0..c.aggs.aggs.len() {
            let mut out = Vec::new();
            c.aggs.flush_now(a, now, &mut out);
            c.route_lines(Origin::Aggregator(a as u16), &out);
        }
        c.outputs.seal_all();
        for q in c.outputs.queues() {
            q.close_for_shutdown();
        }
    }
    // Writers deliver what memory holds (a destination with a spool stops at its memory
    // queue's end: the spool keeps the rest for the next start) until the deadline;
    // then every writer still running hands back what its sink has not acknowledged and
    // stops, and each spool task's last round spools what memory holds.
    let deadline = Duration::from_millis(cfg.server.shutdown_timeout_ms);
    let started = std::time::Instant::now();
    let writers = std::mem::take(&mut shard.writers);
    let writers: Vec<_> = writers.into_iter().flatten().map(|w| w.join).collect();
    let store_tasks = std::mem::take(&mut shard.store_tasks);
    let (drained, ()) = future::zip(
        join_within(writers, deadline, || {
            for q in core.borrow().outputs.queues() {
                q.request_stop();
            }
        }),
        drain_stores(&core, store_tasks, deadline, started),
    )
    .await;
    if !drained {
        tracing::warn!(
            shard = id,
            "writers did not stop after the shutdown deadline"
        );
    }
    for q in core.borrow().outputs.queues() {
        q.finish_spool();
    }
    let spoolers: Vec<_> = std::mem::take(&mut shard.spoolers)
        .into_iter()
        .flatten()
        .map(|t| t.join)
        .collect();
    if !join_within(spoolers, deadline, || {}).await {
        tracing::warn!(
            shard = id,
            "spools did not finish writing within the shutdown deadline"
        );
    }
    // Whatever is left (no spool, or the spool failed, or a reader appended after the
    // queues closed) will not be delivered: count it. No await separates this from the
    // executor's end, so nothing can be appended after it.
    {
        let mut c = core.borrow_mut();
        c.outputs.seal_all();
        for q in c.outputs.queues() {
            q.discard_at_shutdown();
        }
    }
    shard.publish(&core, &registry, true);
}

/// Awaits `tasks` for up to `deadline`; if it passes, calls `hurry` (which tells them to
/// stop) and gives them as long again. Returns whether all ended.
async fn join_within(
    tasks: Vec<glommio::task::JoinHandle<()>>,
    deadline: Duration,
    hurry: impl FnOnce(),
) -> bool {
    let mut pending: std::collections::VecDeque<_> = tasks.into();
    let mut hurry = Some(hurry);
    for round in 0..2 {
        if round == 1 {
            hurry.take().expect("once")();
        }
        let joined = future::or(
            async {
                while let Some(t) = pending.front_mut() {
                    t.await;
                    pending.pop_front();
                }
                true
            },
            async {
                glommio::timer::sleep(deadline).await;
                false
            },
        )
        .await;
        if joined {
            return true;
        }
    }
    false
}

/// Sends the open mesh batches and applies every record that arrived.
fn drain_mesh(c: &mut Core) {
    c.mesh.send_all();
    c.take_handed_over();
}

impl Core {
    /// Applies every record other shards handed over. A reader calls it before it
    /// processes what it read, so a name's samples read earlier on another shard (and
    /// sent early, see [`ShardMesh::send_early`]) apply first.
    #[inline]
    pub fn take_handed_over(&mut self) {
        if !self.mesh.has_inbound() {
            return;
        }
        for from in 0..self.mesh.shards() {
            while let Some(batch) = self.mesh.receive(from) {
                let Core { aggs, stores, .. } = &mut *self;
                aggs.apply_batch(from, &batch, &mut |payload| stores.apply_record(payload));
            }
        }
        self.stores.finish_batch();
    }
}

/// Shutdown of the stores: the writers go on (within their limits) until the cache is
/// empty or the spill's reserve of the deadline is reached, applying what other shards
/// still hand over; then they stop and what is left is spilled for the next start.
async fn drain_stores(
    core: &Rc<RefCell<Core>>,
    tasks: HashMap<u16, (usize, glommio::Task<()>)>,
    deadline: Duration,
    started: std::time::Instant,
) {
    if core.borrow().stores.stores.is_empty() {
        return;
    }
    // The spill is one sequential write per store; keep a fifth of the deadline for it.
    let write_until = deadline - (deadline / 5).min(Duration::from_secs(2));
    loop {
        {
            let mut c = core.borrow_mut();
            drain_mesh(&mut c);
            if c.stores.cached_points() == 0 {
                break;
            }
            c.stores.beat();
        }
        if started.elapsed() >= write_until {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    // The batched writes in flight finish (their buffers are the kernel's until then)
    // and are confirmed before the spill.
    for _ in 0..200 {
        if !core.borrow().stores.writes_in_flight() {
            break;
        }
        core.borrow().stores.beat();
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    drop(tasks);
    drain_mesh(&mut core.borrow_mut());
    let stores = core.borrow().stores.stores.len();
    for s in 0..stores {
        store::spill(core, s).await;
    }
}

/// Moves the queue of down destination `dest` to the live members of its cluster, when
/// it has any and its clusters route around it (any_of, failover). Returns whether it
/// does.
fn offload(c: &mut Core, dest: DestId) -> bool {
    let Some(targets) = c.router.offload_targets(dest).filter(|t| !t.is_empty()) else {
        return false;
    };
    let moved = c.outputs.offload(dest, &targets);
    if moved > 0 {
        tracing::info!(
            destination = dest.index(),
            lines = moved,
            "moved the queue of a down destination to live members"
        );
    }
    true
}

/// What a down destination's writer gave back after its queue was moved (the lines of a
/// connection it lost since, acknowledged unread or unacknowledged) moves too.
fn reoffload(c: &mut Core) {
    if c.router.alive().iter().all(|&up| up) {
        return;
    }
    for d in 0..c.router.alive().len() {
        let dest = DestId(d as u16);
        if !c.router.alive()[d] && c.outputs.queue(dest).is_some_and(|q| q.bytes() > 0) {
            offload(c, dest);
        }
    }
}

impl Shard {
    /// Destinations went up or down: routing follows, and when one went down and its
    /// clusters can take its lines anywhere (any_of, failover), its queue moves to them.
    /// A change judged about an earlier occupant of an id is ignored.
    fn health(&self, core: &Rc<RefCell<Core>>, changes: &[(DestId, u64, bool)]) {
        let table = &self.topology.table;
        let current: Vec<(DestId, bool)> = changes
            .iter()
            .filter(|&&(d, serial, _)| table.serial(d) == Some(serial))
            .map(|&(d, _, up)| (d, up))
            .collect();
        let mut c = core.borrow_mut();
        c.router.set_alive_many(&current);
        for &(dest, up) in &current {
            // A UDP writer cannot tell a dead member by itself, and a TCP member's
            // writer must not take back what is moved to the live members: both hold
            // while health says down.
            c.outputs.set_down(dest, !up);
            if up {
                continue;
            }
            if !offload(&mut c, dest) {
                // Nothing else can take its lines: what it holds in memory goes to its
                // spool (when it has one).
                c.outputs.spill(dest);
            }
        }
    }

    /// Starts a spool task for each destination listed again while its last one was
    /// ending, once it has ended.
    fn restart_spoolers(&mut self, core: &Rc<RefCell<Core>>) {
        if self.spool_restarts.is_empty() {
            return;
        }
        let c = core.borrow();
        let cfg = self.topology.config.clone();
        let pending = std::mem::take(&mut self.spool_restarts);
        for d in pending {
            let (Some(q), Some(dest)) = (c.outputs.queue(d), self.topology.table.get(d)) else {
                continue;
            };
            if !self.topology.table.is_live(d) {
                continue;
            }
            if self.spoolers[d.index()]
                .as_ref()
                .is_some_and(|t| !t.done.get())
            {
                self.spool_restarts.push(d);
                continue;
            }
            q.restart_spool();
            self.spoolers[d.index()] =
                self.spawn_spooler(&cfg, dest, q, c.outputs.spool_bytes_max(d), false);
        }
    }

    /// Starts the spool task of `dest` when it has a spool (`cap` over all shards).
    fn spawn_spooler(
        &self,
        cfg: &Config,
        dest: &Destination,
        q: Rc<output::DestQueue>,
        cap: u64,
        inherit: bool,
    ) -> Option<SpoolerTask> {
        let root = cfg.output.spool_dir.as_ref().filter(|_| cap > 0)?;
        let settings = output::spooler::SpoolSettings {
            name: dest.name.clone(),
            dir: output::spool::destination_dir(root, &dest.name, self.id),
            limits: output::spool::Limits::new(
                cap / self.shards as u64,
                cfg.output.spool_segment_bytes,
            ),
            fsync_interval: Duration::from_millis(cfg.output.spool_fsync_interval_ms),
            inherit,
        };
        let done = Rc::new(Cell::new(false));
        let done2 = done.clone();
        let open = self.open_spools.clone();
        let join = glommio::spawn_local(async move {
            output::spooler::run(q, settings, open).await;
            done2.set(true);
        })
        .detach();
        Some(SpoolerTask { join, done })
    }

    /// Publishes the shard's counters, with its epoch and the retired destinations it
    /// has drained (their queues closed and empty, their writers stopped).
    fn publish(&self, core: &Rc<RefCell<Core>>, registry: &Registry, force: bool) {
        let mut c = core.borrow_mut();
        c.aggs.refresh_gauges();
        c.stores.refresh_gauges();
        let Core {
            outputs,
            counters,
            aggs,
            stores,
            mesh,
            ..
        } = &mut *c;
        outputs.counters_into(&mut counters.destinations);
        counters.reclaimed.clone_from(outputs.reclaimed());
        counters.epoch = self.topology.epoch;
        let table = &self.topology.table;
        counters.drained.clear();
        counters.drained.extend((0..table.len()).map(|d| {
            matches!(table.states[d], DestState::Retired { .. })
                && self
                    .writers
                    .get(d)
                    .is_some_and(|w| w.as_ref().is_none_or(|w| w.done.get()))
                && self
                    .spoolers
                    .get(d)
                    .is_none_or(|t| t.as_ref().is_none_or(|t| t.done.get()))
        }));
        for (slot, a) in counters.aggregators.iter_mut().zip(&aggs.aggs) {
            slot.clone_from(&a.counters);
        }
        counters
            .stores
            .resize(stores.stores.len(), Default::default());
        for (slot, s) in counters.stores.iter_mut().zip(&stores.stores) {
            slot.clone_from(&s.counters);
        }
        counters.mesh = mesh.counters.clone();
        registry.publish(self.id, counters, force);
    }

    /// Builds what `topo` needs that can fail; keeps it until commit or abort.
    fn prepare(&mut self, topo: Topology, core: &Rc<RefCell<Core>>) -> Result<(), String> {
        if self.fail_prepare && self.topology.epoch > 0 {
            return Err(format!("shard {}: refused by the test hook", self.id));
        }
        let cfg = &topo.config;
        let mut router = Router::new(cfg, &topo.table, &topo.listener_ids);
        // Health carries over for the same occupant of an id, never to a new one.
        let carried: Vec<(DestId, bool)> = core
            .borrow()
            .router
            .alive()
            .iter()
            .enumerate()
            .map(|(d, &up)| (DestId(d as u16), up))
            .filter(|&(d, _)| {
                topo.table.serial(d).is_some()
                    && topo.table.serial(d) == self.topology.table.serial(d)
            })
            .collect();
        router.set_alive_many(&carried);
        let mut listeners = Vec::new();
        for (i, l) in cfg.listeners.iter().enumerate() {
            let id = topo.listener_ids[i];
            if self.listeners.contains_key(&id) {
                continue;
            }
            let decoder = match l.format {
                crate::config::Format::Graphite => Decoder::Graphite {
                    cleanse_names: l.cleanse_names,
                },
                crate::config::Format::Statsd => Decoder::Statsd,
                crate::config::Format::Pickle => Decoder::Pickle {
                    frame_bytes_max: l.frame_bytes_max,
                },
                crate::config::Format::Regex => {
                    let re = l.regex.as_deref().unwrap_or_default();
                    Decoder::Regex(
                        crate::protocol::regex_line::RegexLine::new(re, l.time_layout.as_deref())
                            .map_err(|e| format!("listen {:?}: {e}", l.name))?,
                    )
                }
                crate::config::Format::Collectd => {
                    let c = l.collectd.as_ref().expect("validated: collectd settings");
                    Decoder::Collectd(Box::new(CollectdDecoder::new(
                        c.security(),
                        c.types.clone(),
                        c.types_complete(),
                    )))
                }
            };
            let input = Input {
                decoder,
                line_bytes_max: l.line_bytes_max,
            };
            let bound = match (&l.url, topo.listener_addrs[i]) {
                (ListenUrl::Inet(Transport::Tcp, _) | ListenUrl::Http(..), Some(a)) => {
                    Some(Bound::Tcp(
                        bind::tcp(a, l.socket_receive_buffer_bytes)
                            .map_err(|e| format!("listen {:?} {}: {e}", l.name, l.url))?,
                    ))
                }
                (ListenUrl::Inet(Transport::Udp, _), Some(a)) => Some(Bound::Udp(
                    bind::udp(a, l.socket_receive_buffer_bytes)
                        .map_err(|e| format!("listen {:?} {}: {e}", l.name, l.url))?,
                )),
                // AF_UNIX has no SO_REUSEPORT: shard 0 binds unix sockets, now unless a
                // running listener holds the path (then at commit, once it is gone).
                (ListenUrl::Unix(path) | ListenUrl::UnixDatagram(path), _) if self.id == 0 => {
                    // Held by a running listener of the topology in force (at startup
                    // the empty topology carries the config, but runs nothing).
                    let held = (self.topology.listener_ids.iter())
                        .zip(&self.topology.config.listeners)
                        .any(|(id, o)| o.url == l.url && self.listeners.contains_key(id));
                    let failed = |e| format!("listen {:?} {}: {e}", l.name, l.url);
                    match (&l.url, held) {
                        (_, true) => None,
                        (ListenUrl::Unix(_), false) => Some(Bound::Unix(
                            bind_unix(path, l.socket_mode).map_err(failed)?,
                            path.clone(),
                        )),
                        (_, false) => Some(Bound::UnixDatagram(
                            bind_unix_datagram(path, l.socket_mode).map_err(failed)?,
                            path.clone(),
                        )),
                    }
                }
                _ => None,
            };
            listeners.push((id, l.clone(), bound, input));
        }
        let now = unix_ms();
        let mut aggs = Vec::with_capacity(cfg.aggregates.len());
        {
            let c = core.borrow();
            for (i, a) in cfg.aggregates.iter().enumerate() {
                let id = topo.aggregator_ids[i];
                let keep = c.aggs.aggs.iter().any(|x| x.id == id && x.config == *a);
                aggs.push(if keep {
                    None
                } else {
                    Some(c.aggs.build(id, a, now)?)
                });
            }
        }
        self.prepared = Some(Prepared {
            topology: topo,
            router,
            listeners,
            aggs,
        });
        Ok(())
    }

    /// Routes by the topology prepared for `epoch`.
    fn commit(&mut self, epoch: u64, core: &Rc<RefCell<Core>>) -> Result<(), String> {
        let Some(p) = self.prepared.take() else {
            return Err(format!("commit of epoch {epoch}, never prepared"));
        };
        if p.topology.epoch != epoch {
            return Err(format!(
                "commit of epoch {epoch}, but epoch {} was prepared",
                p.topology.epoch
            ));
        }
        let Prepared {
            topology,
            router,
            listeners,
            aggs,
        } = p;
        let cfg = topology.config.clone();
        let mut c = core.borrow_mut();
        // Aggregators that go (removed or changed): their open interval is flushed now,
        // routed by the rules it was collected under.
        let kept: Vec<u16> = topology
            .aggregator_ids
            .iter()
            .zip(&aggs)
            .filter(|(_, a)| a.is_none())
            .map(|(id, _)| *id)
            .collect();
        let now = unix_ms();
        let mut keep_map: HashMap<u16, AggState> = HashMap::new();
        let mut out = Vec::new();
        for i in (0..c.aggs.aggs.len()).rev() {
            if kept.contains(&c.aggs.aggs[i].id) {
                let agg = c.aggs.aggs.remove(i);
                keep_map.insert(agg.id, agg);
                continue;
            }
            out.clear();
            c.aggs.flush_now(i, now, &mut out);
            c.route_lines(Origin::Aggregator(i as u16), &out);
            c.aggs.aggs.remove(i);
        }
        let mut new_aggs = Vec::with_capacity(aggs.len());
        for (i, a) in aggs.into_iter().enumerate() {
            match a {
                Some(a) => new_aggs.push(a),
                None => new_aggs.push(
                    keep_map
                        .remove(&topology.aggregator_ids[i])
                        .expect("kept aggregators were running"),
                ),
            }
        }
        c.aggs.aggs = new_aggs;
        for task in self
            .aggregator_tasks
            .keys()
            .copied()
            .filter(|id| !topology.aggregator_ids.contains(id))
            .collect::<Vec<_>>()
        {
            drop(self.aggregator_tasks.remove(&task));
        }
        c.router = router;
        // Destinations: new ones get queues, writers and spool tasks, removed ones
        // retire, listed again ones reopen, drained ones the control thread freed are
        // dropped.
        if self.writers.len() < topology.table.len() {
            self.writers.resize_with(topology.table.len(), || None);
        }
        if self.spoolers.len() < topology.table.len() {
            self.spoolers.resize_with(topology.table.len(), || None);
        }
        for change in c.outputs.apply(&topology.table, Some(&cfg)) {
            match change {
                SlotChange::Added(d) => {
                    let q = c.outputs.queue(d).expect("added");
                    let dest = topology.table.get(d).expect("added");
                    self.writers[d.index()] =
                        Some(spawn_writer(self.id, dest, q.clone(), self.opts));
                    self.spoolers[d.index()] =
                        self.spawn_spooler(&cfg, dest, q, c.outputs.spool_bytes_max(d), true);
                }
                SlotChange::Revived(d) => {
                    // Its writer and spool task may still be draining (they go on), or
                    // have stopped.
                    let q = c.outputs.queue(d).expect("revived");
                    let dest = topology.table.get(d).expect("revived");
                    if self.writers[d.index()]
                        .as_ref()
                        .is_none_or(|w| w.done.get())
                    {
                        self.writers[d.index()] =
                            Some(spawn_writer(self.id, dest, q.clone(), self.opts));
                    }
                    match &self.spoolers[d.index()] {
                        Some(t) if !t.done.get() => {
                            if q.finishing_spool() {
                                self.spool_restarts.push(d);
                            }
                        }
                        _ => {
                            q.restart_spool();
                            self.spoolers[d.index()] = self.spawn_spooler(
                                &cfg,
                                dest,
                                q,
                                c.outputs.spool_bytes_max(d),
                                false,
                            );
                        }
                    }
                }
                SlotChange::Reclaimed(d) => {
                    self.writers[d.index()] = None;
                    self.spoolers[d.index()] = None;
                }
                SlotChange::Retired(_) => {}
            }
        }
        for d in 0..topology.table.len() {
            let d = DestId(d as u16);
            let around = c.router.offload_targets(d).is_some();
            c.outputs.set_routed_around(d, around);
        }
        let headroom = cfg
            .listeners
            .iter()
            .map(|l| l.read_buffer_bytes)
            .max()
            .unwrap_or(0);
        c.outputs.set_headroom(headroom);
        let rules = c.router.rule_count();
        let counters = &mut c.counters;
        counters.rules_matched.resize(rules, 0);
        counters
            .destinations
            .resize(topology.table.len(), Default::default());
        counters
            .aggregators
            .resize(cfg.aggregates.len(), Default::default());
        drop(c);
        // Listeners: stop the ones that went, start the new ones.
        let ids: Vec<usize> = topology.listener_ids.clone();
        self.listeners.retain(|id, _| ids.contains(id));
        for (id, l, bound, input) in listeners {
            core.borrow_mut().set_input(id, input);
            let ro = ReadOptions::new(id, &l, self.stall_max);
            match start_listener(self.id, &l, bound, core, ro) {
                Ok(Some(r)) => {
                    self.listeners.insert(id, r);
                }
                Ok(None) => {}
                Err(e) => tracing::error!(
                    shard = self.id,
                    listener = %l.name,
                    url = %l.url,
                    error = %e,
                    "cannot listen"
                ),
            }
        }
        // Aggregator tasks for aggregators that have none yet.
        let cfg_aggs: Vec<(u16, bool, u64)> = {
            let c = core.borrow();
            c.aggs
                .aggs
                .iter()
                .map(|a| {
                    let interval = match &a.config.kind {
                        crate::config::AggregateKind::Statsd(s) => s.engine.flush_interval_ms,
                        crate::config::AggregateKind::Carbon(_) => 1000,
                    };
                    (
                        a.id,
                        matches!(a.config.kind, crate::config::AggregateKind::Statsd(_)),
                        interval,
                    )
                })
                .collect()
        };
        for (id, statsd, interval_ms) in cfg_aggs {
            if self.aggregator_tasks.contains_key(&id) {
                continue;
            }
            let task = if statsd {
                glommio::spawn_local(statsd_flusher(core.clone(), id, interval_ms)).detach()
            } else {
                glommio::spawn_local(carbon_flusher(core.clone(), id)).detach()
            };
            self.aggregator_tasks.insert(id, task);
        }
        self.commit_stores(&topology, core);
        self.topology = topology;
        Ok(())
    }

    /// Stores: the same id keeps its cache (and takes the new settings), new ones start
    /// empty (and read back a previous run's spill), removed ones spill what they hold.
    /// Each has `writes_in_flight_max` writer tasks.
    fn commit_stores(&mut self, topology: &Topology, core: &Rc<RefCell<Core>>) {
        let cfg = &topology.config;
        let shards = core.borrow().stores.me().1;
        let mut c = core.borrow_mut();
        let mut old: Vec<StoreState> = std::mem::take(&mut c.stores.stores);
        let mut next = Vec::with_capacity(cfg.stores.len());
        let mut fresh = Vec::new();
        for (i, sc) in cfg.stores.iter().enumerate() {
            let id = topology.store_ids[i];
            let shared = topology.store_shared[i].clone();
            match old.iter().position(|o| o.id == id) {
                Some(k) => {
                    let mut st = old.remove(k);
                    st.reconfigure(sc.clone(), shared, shards);
                    next.push(st);
                }
                None => {
                    next.push(StoreState::new(id, sc.clone(), shared.clone(), shards));
                    fresh.push((id, shared));
                }
            }
        }
        let gone = old;
        c.stores.stores = next;
        c.counters
            .stores
            .resize(cfg.stores.len(), Default::default());
        drop(c);
        for st in gone {
            drop(self.store_tasks.remove(&st.id));
            // Its points go to its spill, read back when a store with its path runs
            // again.
            let me = core.borrow().stores.me().0;
            glommio::spawn_local(store::spill_removed(st, me)).detach();
        }
        for (id, shared) in fresh {
            if !shared.restore.is_empty() {
                glommio::spawn_local(store::restore(core.clone(), id, shared)).detach();
            }
        }
        // (A spawned task runs at once: no borrow may be held while spawning.)
        let wanted: Vec<(u16, usize)> = core
            .borrow()
            .stores
            .stores
            .iter()
            .map(|st| {
                let StoreKind::Whisper(w) = &st.config.kind;
                (st.id, w.writes_in_flight_max)
            })
            .collect();
        for (id, in_flight) in wanted {
            match self.store_tasks.get(&id) {
                Some((n, _)) if *n == in_flight => {}
                _ => {
                    // New, or its in-flight bound changed: a fresh dispatcher (dropping
                    // the old one cancels it; its running writes finish).
                    let task = glommio::spawn_local(store::dispatcher(core.clone(), id, in_flight));
                    self.store_tasks.insert(id, (in_flight, task));
                }
            }
        }
    }
}

/// The config index of the aggregator with stable id `id`, if it still runs.
fn agg_index(core: &Rc<RefCell<Core>>, id: u16) -> Option<usize> {
    core.borrow().aggs.aggs.iter().position(|a| a.id == id)
}

/// Sleeps until the next wall-clock multiple of `interval_ms`; returns it.
async fn sleep_until_multiple(interval_ms: u64) -> i64 {
    let now = unix_ms();
    let i = interval_ms as i64;
    let next = (now.div_euclid(i) + 1) * i;
    glommio::timer::sleep(Duration::from_millis((next - now).max(0) as u64)).await;
    next
}

/// Longest a statsd flush waits for the other shards' markers (and shard 0 for their
/// reports) before it runs without them (`late_flushes`).
fn marker_wait(interval_ms: u64) -> Duration {
    Duration::from_millis((interval_ms / 2).clamp(10, 2_000))
}

/// Flushes statsd aggregator `id` at every wall-clock multiple of its interval, with
/// the cross-shard markers that keep intervals exact.
async fn statsd_flusher(core: Rc<RefCell<Core>>, id: u16, interval_ms: u64) {
    loop {
        let t = sleep_until_multiple(interval_ms).await;
        let Some(a) = agg_index(&core, id) else {
            return;
        };
        {
            let mut c = core.borrow_mut();
            let c = &mut *c;
            c.aggs.flush_start(a, t, &mut c.mesh);
        }
        let started = std::time::Instant::now();
        let wait = marker_wait(interval_ms);
        let mut out = Vec::new();
        loop {
            let Some(a) = agg_index(&core, id) else {
                return;
            };
            let progress = {
                let mut c = core.borrow_mut();
                let c = &mut *c;
                if c.mesh.shards() > 1 {
                    drain_mesh(c);
                }
                out.clear();
                let give_up = started.elapsed() >= wait;
                let output_down = c.router.sinks_down(&c.aggs.aggs[a].config.send_to);
                let p = c
                    .aggs
                    .flush_step(a, give_up, output_down, &mut out, &mut c.mesh);
                if !out.is_empty() {
                    c.route_lines(Origin::Aggregator(a as u16), &out);
                }
                if p == FlushProgress::Done {
                    c.aggs.replay_deferred(a);
                }
                p
            };
            match progress {
                FlushProgress::Done => break,
                FlushProgress::Writing => future::yield_now().await,
                FlushProgress::WaitingForMarkers | FlushProgress::WaitingForReports => {
                    glommio::timer::sleep(Duration::from_millis(1)).await
                }
            }
        }
    }
}

/// Runs carbon aggregator `id`'s computes as they fall due (each second).
async fn carbon_flusher(core: Rc<RefCell<Core>>, id: u16) {
    let mut out = Vec::new();
    loop {
        sleep_until_multiple(1000).await;
        let Some(a) = agg_index(&core, id) else {
            return;
        };
        let mut c = core.borrow_mut();
        out.clear();
        if c.aggs.flush_carbon(a, unix_ms() / 1000, &mut out) > 0 {
            c.route_lines(Origin::Aggregator(a as u16), &out);
        }
    }
}

/// A listener running on this shard: its accept (or receive) task, and for a unix socket
/// the file to remove when it stops.
struct RunningListener {
    _task: glommio::Task<()>,
    unix_path: Option<std::path::PathBuf>,
}

impl Drop for RunningListener {
    fn drop(&mut self) {
        if let Some(p) = &self.unix_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Starts a listener on this shard from the socket prepared for it (tcp, udp), or binds
/// its unix socket (shard 0 only). `None` when this shard has no part in it.
fn start_listener(
    shard: usize,
    l: &Listener,
    bound: Option<Bound>,
    core: &Rc<RefCell<Core>>,
    ro: ReadOptions,
) -> std::io::Result<Option<RunningListener>> {
    let (task, unix_path) = match (bound, &l.url) {
        (Some(Bound::Tcp(s)), ListenUrl::Http(_, path)) => {
            let http = ingest::http::HttpOptions {
                path: path.clone(),
                body_bytes_max: l.body_bytes_max,
            };
            let accept = ingest::http::accept_loop(core.clone(), s, ro, http);
            (glommio::spawn_local(accept), None)
        }
        (Some(Bound::Tcp(s)), _) => {
            let accept = ingest::accept_loop(core.clone(), StreamListener::Tcp(s), ro);
            (glommio::spawn_local(accept), None)
        }
        (Some(Bound::Udp(s)), _) => (
            glommio::spawn_local(ingest::udp_loop(core.clone(), s, ro)),
            None,
        ),
        (Some(Bound::Unix(s, path)), _) => {
            let accept = ingest::accept_loop(core.clone(), StreamListener::Unix(s), ro);
            (glommio::spawn_local(accept), Some(path))
        }
        (Some(Bound::UnixDatagram(s, path)), _) => (
            glommio::spawn_local(ingest::unix_datagram_loop(core.clone(), s, ro)),
            Some(path),
        ),
        // AF_UNIX has no SO_REUSEPORT: shard 0 owns unix listeners.
        (None, ListenUrl::Unix(path)) if shard == 0 => {
            let s = bind_unix(path, l.socket_mode)?;
            let accept = ingest::accept_loop(core.clone(), StreamListener::Unix(s), ro);
            (glommio::spawn_local(accept), Some(path.clone()))
        }
        (None, ListenUrl::UnixDatagram(path)) if shard == 0 => {
            let s = bind_unix_datagram(path, l.socket_mode)?;
            (
                glommio::spawn_local(ingest::unix_datagram_loop(core.clone(), s, ro)),
                Some(path.clone()),
            )
        }
        _ => return Ok(None),
    };
    Ok(Some(RunningListener {
        _task: task,
        unix_path,
    }))
}

/// A destination's writer on this shard.
struct WriterTask {
    join: glommio::task::JoinHandle<()>,
    /// Set when the writer has stopped for good (its queue closed and drained).
    done: Rc<Cell<bool>>,
}

/// A destination's spool task on this shard.
struct SpoolerTask {
    join: glommio::task::JoinHandle<()>,
    /// Set when the task has ended (its queue closed and everything delivered, or the
    /// shard's final round done).
    done: Rc<Cell<bool>>,
}

/// Starts the writer of `dest`. It runs until its queue is closed and empty; if the
/// queue was reopened meanwhile (the destination was listed again), it starts over.
fn spawn_writer(
    shard: usize,
    dest: &Destination,
    q: Rc<output::DestQueue>,
    opts: WriterOptions,
) -> WriterTask {
    let name = dest.name.clone();
    let kind = dest.kind.clone();
    let done = Rc::new(Cell::new(false));
    let done2 = done.clone();
    let join = glommio::spawn_local(async move {
        loop {
            match &kind {
                DestinationKind::Net(m) if m.transport == Transport::Tcp => {
                    output::writer::run_tcp(q.clone(), m.clone(), name.clone(), opts).await
                }
                DestinationKind::Net(m) => {
                    output::writer::run_udp(q.clone(), m.clone(), name.clone(), opts).await
                }
                DestinationKind::File(f) => output::file::run(q.clone(), f.clone(), shard).await,
            }
            if q.is_closed() {
                break;
            }
        }
        done2.set(true);
    })
    .detach();
    WriterTask { join, done }
}

fn bind_unix(
    path: &std::path::Path,
    mode: Option<u32>,
) -> std::io::Result<glommio::net::UnixListener> {
    clear_stale_socket(path, "listening", |p| {
        std::os::unix::net::UnixStream::connect(p).map(drop)
    })?;
    let s = glommio::net::UnixListener::bind(path).map_err(std::io::Error::from)?;
    set_socket_mode(path, mode)?;
    Ok(s)
}

fn bind_unix_datagram(
    path: &std::path::Path,
    mode: Option<u32>,
) -> std::io::Result<glommio::net::UnixDatagram> {
    clear_stale_socket(path, "receiving", |p| {
        std::os::unix::net::UnixDatagram::unbound()?.connect(p)
    })?;
    let s = glommio::net::UnixDatagram::bind(path).map_err(std::io::Error::from)?;
    set_socket_mode(path, mode)?;
    Ok(s)
}

/// `listen[].socket_mode`: clients need write permission on the socket file.
fn set_socket_mode(path: &std::path::Path, mode: Option<u32>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match mode {
        Some(m) => std::fs::set_permissions(path, std::fs::Permissions::from_mode(m)),
        None => Ok(()),
    }
}

/// A socket file left by a previous run would make bind fail. It is removed only when
/// `connect` is refused (nobody serves it): a live one belongs to another process
/// (`serving`: what it is doing there), and taking it over would silently split (then
/// orphan) its traffic.
fn clear_stale_socket(
    path: &std::path::Path,
    serving: &str,
    connect: impl Fn(&std::path::Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Ok(());
    }
    match connect(path) {
        Ok(()) => Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("another process is {serving} on this socket"),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick_of(text: &str) -> u128 {
        let text = format!(
            "[[listen]]\nname = \"g\"\nurl = \"tcp://127.0.0.1:2003\"\nformat = \"graphite\"\n{text}"
        );
        tick_for(&Config::parse(&text).expect("a valid config")).as_millis()
    }

    #[test]
    fn the_tick_is_as_long_as_the_mesh_and_the_stores_allow() {
        assert_eq!(tick_of(""), 50);
        assert_eq!(tick_of("[server]\nmesh_interval_ms = 10\n"), 10);
        assert_eq!(tick_of("[server]\nstats_interval_ms = 30\n"), 30);
        let store = |wps: u64, in_flight: u64| {
            format!(
                "[[store]]\nname = \"w\"\nkind = \"whisper\"\npath = \"/tmp/w\"\n\
                 writes_per_second = {wps}\nwrites_in_flight_max = {in_flight}\n"
            )
        };
        // 256 in flight per tick holds 3000/s at 50 ms; 20000/s needs 12 ms.
        assert_eq!(tick_of(&store(3_000, 256)), 50);
        assert_eq!(tick_of(&store(20_000, 256)), 12);
        assert_eq!(tick_of(&store(10_000_000, 256)), TICK_MIN_MS as u128);
        assert_eq!(tick_of(&store(0, 256)), 20);
    }
}
