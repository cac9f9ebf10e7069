//! Shards: one glommio executor per core, pinned, each owning its sockets, its copy of the
//! router, its writers and its counters. The control thread talks to a shard only through
//! its inbox (polled on the shard's tick) and reads its counters from published copies.

pub mod pipeline;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use futures_lite::future;
use glommio::{LocalExecutorBuilder, Placement};

use crate::config::{Config, ListenUrl, Listener, Transport};
use crate::ingest::{self, bind, ReadOptions, StreamListener};
use crate::output::{self, writer::WriterOptions, Outputs};
use crate::route::{DestId, Destination, DestinationKind, DestinationTable, Router};
use crate::telemetry::{Registry, ShardCounters};
use pipeline::Core;

/// What shards route by: a validated config and its destination table. The control
/// thread replaces it (membership changes, SIGHUP) and hands every shard the new one.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The config whose rules and clusters apply.
    pub config: Arc<Config>,
    /// Its destinations, ids stable across replacements.
    pub table: Arc<DestinationTable>,
}

/// A message from the control thread to a shard.
#[derive(Debug, Clone)]
pub enum ControlMsg {
    /// Stop accepting, flush, exit.
    Shutdown,
    /// Route by a new topology: new destinations get queues and writers, retired ones
    /// drain and stop, unchanged ones keep their queues and connections.
    Reconfigure(Topology),
    /// Start listener `id` (a reload added it), bound to `addr` (probed by the control
    /// thread; `None` for unix sockets).
    Listen {
        /// Listener id: its counters' index, never reused.
        id: usize,
        /// Its settings.
        listener: Box<Listener>,
        /// Where to bind.
        addr: Option<SocketAddr>,
    },
    /// Stop listener `id` (a reload removed or changed it). Open connections finish.
    Unlisten {
        /// Listener id.
        id: usize,
    },
    /// A destination went up or down (health checks); routing follows.
    Health {
        /// The destination.
        dest: DestId,
        /// Up (true) or down.
        up: bool,
    },
}

/// Messages a shard inbox holds before the control thread must retry.
const INBOX_MESSAGES_MAX: usize = 64;

/// How the control thread reaches a running shard.
pub struct ShardHandle {
    /// Shard number.
    pub id: usize,
    inbox: Arc<ArrayQueue<ControlMsg>>,
    join: glommio::ExecutorJoinHandle<()>,
}

/// A clonable way to reach a shard's inbox (the control plane keeps these).
#[derive(Clone)]
pub struct ShardSender {
    inbox: Arc<ArrayQueue<ControlMsg>>,
}

impl ShardSender {
    /// Sends a message; false when the inbox is full (the shard empties it every tick).
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

    /// Sends a message; the shard sees it on its next tick. False when the inbox is full.
    pub fn send(&self, msg: ControlMsg) -> bool {
        self.inbox.push(msg).is_ok()
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

/// Listener addresses after probing: port 0 replaced by the port every shard will bind.
pub fn probe_listeners(cfg: &Config) -> anyhow::Result<Vec<Option<SocketAddr>>> {
    cfg.listeners
        .iter()
        .enumerate()
        .map(|(i, l)| match &l.url {
            ListenUrl::Inet(t, addr) => bind::probe(*addr, *t == Transport::Tcp)
                .map(Some)
                .map_err(|e| anyhow::anyhow!("listen[{i}] {}: cannot bind: {e}", l.url)),
            ListenUrl::Unix(_) => Ok(None),
        })
        .collect()
}

/// Starts every shard and waits until each has bound its sockets (or one failed).
pub fn spawn(
    cfg: Arc<Config>,
    table: Arc<DestinationTable>,
    addrs: Vec<Option<SocketAddr>>,
    registry: Arc<Registry>,
) -> anyhow::Result<Vec<ShardHandle>> {
    let shards = shard_count(&cfg);
    let cpus = available_cpus();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut handles = Vec::with_capacity(shards);
    for id in 0..shards {
        let inbox = Arc::new(ArrayQueue::new(INBOX_MESSAGES_MAX));
        let (cfg, table, addrs, registry, inbox2, ready) = (
            cfg.clone(),
            table.clone(),
            addrs.clone(),
            registry.clone(),
            inbox.clone(),
            ready_tx.clone(),
        );
        let cpu = cpus[id % cpus.len()];
        let io_memory = cfg.server.io_memory_bytes;
        let join = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("shard-{id}"))
            .io_memory(io_memory)
            .spawn(move || async move {
                run(id, cfg, table, addrs, registry, inbox2, ready).await;
            })
            .map_err(|e| anyhow::anyhow!("cannot start shard {id} on cpu {cpu}: {e}"))?;
        handles.push(ShardHandle { id, inbox, join });
    }
    drop(ready_tx);
    let mut failure = None;
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("a shard exited before it was ready".into()),
        }
    }
    if let Some(e) = failure {
        for h in &handles {
            h.send(ControlMsg::Shutdown);
        }
        for h in handles {
            let _ = h.join();
        }
        anyhow::bail!(e);
    }
    Ok(handles)
}

async fn run(
    id: usize,
    cfg: Arc<Config>,
    table: Arc<DestinationTable>,
    addrs: Vec<Option<SocketAddr>>,
    registry: Arc<Registry>,
    inbox: Arc<ArrayQueue<ControlMsg>>,
    ready: mpsc::Sender<Result<(), String>>,
) {
    let router = Router::new(&cfg, &table);
    let headroom = cfg
        .listeners
        .iter()
        .map(|l| l.read_buffer_bytes)
        .max()
        .unwrap_or(0);
    let outputs = Outputs::new(&table, &cfg.output, headroom);
    let counters = ShardCounters::new(
        cfg.listeners.len(),
        router.rule_count(),
        table.destinations.len(),
    );
    let core = Rc::new(RefCell::new(Core::new(router, outputs, counters)));
    let stall_max = Duration::from_millis(cfg.output.stall_ms_max);

    // Writers first, so nothing queued waits for a writer.
    let opts = WriterOptions::from(&cfg.output);
    let mut writers = Vec::with_capacity(table.destinations.len());
    for (d, dest) in table.destinations.iter().enumerate() {
        let q = core.borrow().outputs.queue(DestId(d as u16));
        writers.push(spawn_writer(id, dest, q, opts));
    }

    let mut listeners = HashMap::with_capacity(cfg.listeners.len());
    for (i, l) in cfg.listeners.iter().enumerate() {
        match start_listener(id, i, l, addrs[i], &core, stall_max) {
            Ok(running) => listeners.extend(running.map(|r| (i, r))),
            Err(e) => {
                let _ = ready.send(Err(format!("shard {id}: listen[{i}] {}: {e}", l.url)));
                return;
            }
        }
    }
    let _ = ready.send(Ok(()));
    drop(ready);

    // Partly filled batches are sealed every flush_interval_ms, on a timer of their own.
    let flush_every = Duration::from_millis(cfg.output.flush_interval_ms);
    let flusher = {
        let core = core.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(flush_every).await;
                core.borrow_mut().outputs.seal_all();
            }
        })
    };
    // The tick: publish counters and read the inbox.
    let tick = Duration::from_millis(cfg.server.stats_interval_ms).min(Duration::from_millis(100));
    let stats_every = Duration::from_millis(cfg.server.stats_interval_ms);
    let mut since_stats = Duration::ZERO;
    loop {
        glommio::timer::sleep(tick).await;
        since_stats += tick;
        if since_stats >= stats_every {
            publish(id, &core, &registry, false);
            since_stats = Duration::ZERO;
        }
        let mut shutdown = false;
        while let Some(msg) = inbox.pop() {
            match msg {
                ControlMsg::Shutdown => shutdown = true,
                ControlMsg::Health { dest, up } => health(id, &core, dest, up),
                ControlMsg::Listen {
                    id: lid,
                    listener,
                    addr,
                } => {
                    core.borrow_mut().counters.grow_listeners(lid + 1);
                    match start_listener(id, lid, &listener, addr, &core, stall_max) {
                        Ok(running) => listeners.extend(running.map(|r| (lid, r))),
                        Err(e) => tracing::error!(
                            shard = id,
                            listener = %listener.name,
                            url = %listener.url,
                            error = %e,
                            "reload: cannot listen"
                        ),
                    }
                }
                // Dropping the accept (or receive) task closes the socket; accepted
                // connections are tasks of their own and finish normally.
                ControlMsg::Unlisten { id: lid } => drop(listeners.remove(&lid)),
                ControlMsg::Reconfigure(topo) => reconfigure(id, &core, &topo, &mut writers, opts),
            }
        }
        if shutdown {
            break;
        }
    }

    // Shutdown: stop accepting, let readers finish the buffer in hand, flush, drain.
    drop(listeners);
    drop(flusher);
    core.borrow_mut().draining = true;
    glommio::timer::sleep(Duration::from_millis(20)).await;
    {
        let mut c = core.borrow_mut();
        c.outputs.seal_all();
        for q in c.outputs.queues() {
            q.close();
        }
    }
    let deadline = Duration::from_millis(cfg.server.shutdown_timeout_ms);
    let drained = future::or(
        async {
            for w in writers {
                w.await;
            }
            true
        },
        async {
            glommio::timer::sleep(deadline).await;
            false
        },
    )
    .await;
    if !drained {
        tracing::warn!(
            shard = id,
            "shutdown deadline passed with data still queued (counted as dropped_lines_shutdown)"
        );
    }
    // Whatever is left (the deadline passed, or a reader appended after the queues
    // closed and their writers finished) will not be delivered: count it. No await
    // separates this from the executor's end, so nothing can be appended after it.
    {
        let mut c = core.borrow_mut();
        c.outputs.seal_all();
        for q in c.outputs.queues() {
            q.discard_at_shutdown();
        }
    }
    publish(id, &core, &registry, true);
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

/// A destination went up or down: routing follows, and when it went down and its
/// clusters can take its lines anywhere (any_of, failover), its queue moves to them.
fn health(shard: usize, core: &Rc<RefCell<Core>>, dest: DestId, up: bool) {
    let mut c = core.borrow_mut();
    c.router.set_alive(dest, up);
    if up {
        return;
    }
    if let Some(targets) = c.router.offload_targets(dest) {
        let moved = c.outputs.offload(dest, &targets);
        if moved > 0 {
            tracing::info!(
                shard,
                destination = dest.index(),
                lines = moved,
                "moved the queue of a down destination to live members"
            );
        }
    }
}

/// Binds and starts listener `lid` on this shard: a `SO_REUSEPORT` socket of its own for
/// tcp and udp, the socket itself for unix (shard 0 only). `None` when this shard has no
/// part in it.
fn start_listener(
    shard: usize,
    lid: usize,
    l: &Listener,
    addr: Option<SocketAddr>,
    core: &Rc<RefCell<Core>>,
    stall_max: Duration,
) -> std::io::Result<Option<RunningListener>> {
    let ro = ReadOptions::new(lid, l, stall_max);
    if let Some(re) = &l.regex {
        let parser = crate::protocol::regex_line::RegexLine::new(re, l.time_layout.as_deref())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        core.borrow_mut().set_line_regex(lid, parser);
    }
    let (task, unix_path) = match (&l.url, addr) {
        (ListenUrl::Inet(Transport::Tcp, _), Some(a)) => {
            let s = bind::tcp(a, l.socket_receive_buffer_bytes)?;
            let accept = ingest::accept_loop(core.clone(), StreamListener::Tcp(s), ro);
            (glommio::spawn_local(accept), None)
        }
        (ListenUrl::Inet(Transport::Udp, _), Some(a)) => {
            let s = bind::udp(a, l.socket_receive_buffer_bytes)?;
            (
                glommio::spawn_local(ingest::udp_loop(core.clone(), s, ro)),
                None,
            )
        }
        // AF_UNIX has no SO_REUSEPORT: shard 0 owns unix listeners.
        (ListenUrl::Unix(path), _) if shard == 0 => {
            let s = bind_unix(path)?;
            let accept = ingest::accept_loop(core.clone(), StreamListener::Unix(s), ro);
            (glommio::spawn_local(accept), Some(path.clone()))
        }
        _ => return Ok(None),
    };
    Ok(Some(RunningListener {
        _task: task,
        unix_path,
    }))
}

fn spawn_writer(
    shard: usize,
    dest: &Destination,
    q: Rc<output::DestQueue>,
    opts: WriterOptions,
) -> glommio::task::JoinHandle<()> {
    let name = dest.name.clone();
    match &dest.kind {
        DestinationKind::Net(m) if m.transport == Transport::Tcp => {
            glommio::spawn_local(output::writer::run_tcp(q, m.clone(), name, opts)).detach()
        }
        DestinationKind::Net(m) => {
            glommio::spawn_local(output::writer::run_udp(q, m.clone(), name)).detach()
        }
        DestinationKind::File(f) => {
            glommio::spawn_local(output::file::run(q, f.clone(), shard)).detach()
        }
    }
}

/// Applies a new topology: a router for its rules and clusters (keeping which
/// destinations are up), queues and writers for new destinations, and retirement for
/// the ones no cluster lists any more. Queues of unchanged destinations are untouched.
fn reconfigure(
    shard: usize,
    core: &Rc<RefCell<Core>>,
    topo: &Topology,
    writers: &mut Vec<glommio::task::JoinHandle<()>>,
    opts: WriterOptions,
) {
    let mut c = core.borrow_mut();
    let mut router = Router::new(&topo.config, &topo.table);
    for (d, &up) in c.router.alive().iter().enumerate() {
        router.set_alive(DestId(d as u16), up);
    }
    c.router = router;
    let before = c.outputs.len();
    c.outputs.extend(&topo.table);
    for d in before..topo.table.destinations.len() {
        let q = c.outputs.queue(DestId(d as u16));
        writers.push(spawn_writer(shard, &topo.table.destinations[d], q, opts));
    }
    for (d, &retired) in topo.table.retired.iter().enumerate() {
        if retired {
            c.outputs.retire(DestId(d as u16));
        }
    }
    let rules = c.router.rule_count();
    let counters = &mut c.counters;
    counters.rules_matched.resize(rules, 0);
    counters
        .destinations
        .resize(topo.table.destinations.len(), Default::default());
}

fn bind_unix(path: &std::path::Path) -> std::io::Result<glommio::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    // A socket file left by a previous run would make bind fail. Remove it only when
    // nobody answers on it: a live one belongs to another process, and taking it over
    // would silently split (then orphan) its traffic.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "another process is listening on this socket",
                    ))
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)?
                }
                Err(e) => return Err(e),
            }
        }
    }
    glommio::net::UnixListener::bind(path).map_err(std::io::Error::from)
}

fn publish(id: usize, core: &Rc<RefCell<Core>>, registry: &Registry, force: bool) {
    let mut c = core.borrow_mut();
    let Core {
        outputs, counters, ..
    } = &mut *c;
    for (slot, q) in counters.destinations.iter_mut().zip(outputs.queues()) {
        *slot = q.counters();
    }
    registry.publish(id, counters, force);
}
