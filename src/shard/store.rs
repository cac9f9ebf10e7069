//! The store stage of a shard: the stores (`crate::store`) wired to points, owners, the
//! clock and io_uring.
//!
//! A whisper file has exactly one writer, so every name is owned by one shard,
//! `owner(name)` (the aggregators' rule, over carbon's normalized name: its tags sorted,
//! so every spelling of a tagged series meets on one shard and one file). A point routed
//! to a store on another shard goes to its owner over the mesh. The owner caches it
//! ([`Cache`]) and its writer tasks write the cache out through io_uring
//! (`store::whisper::uring`), at most `writes_per_second` update_many calls and
//! `creates_per_minute` new files per second and minute across the whole process (the
//! limits are shared atomics, [`RateLimit`]). A name without a file waits in the cache
//! for a create token; nothing is dropped for it (carbon drops such points).
//!
//! Reads of the cache come from the control thread by message ([`StoreQuery`]),
//! answered on the shard's tick: nothing here locks.
//!
//! Stop: the writers keep writing (within the limits) until shortly before
//! `shutdown_timeout_ms`, then what the cache still holds is spilled to disk
//! (`store::spill`) and read back at the next start.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Store, StoreKind};
use crate::point::Point;
use crate::shard::aggregate::owner;
use crate::shard::mesh::{put_str16, Reader, ShardMesh};
use crate::shard::pipeline::{unix_ms, Core};
use crate::store::cache::{self, Cache, CachedPoint, Outcome, Refused};
use crate::store::spill;
use crate::store::throttle::RateLimit;
use crate::store::whisper::format::Scratch;
use crate::store::whisper::path::{metric_path, normalize};
use crate::store::whisper::uring::{self, NewFile, WriteError};

crate::counter_set! {
    /// Counters of one store on one shard.
    pub struct StoreCounters {
        /// Points routed to this store on this shard.
        points: counter,
        /// Of those, handed to the shard that owns their name.
        points_to_other_shards: counter,
        /// Points (from any shard) taken into this shard's cache.
        points_cached: counter,
        /// Points dropped because the cache held cache_points_max points.
        dropped_points_cache_full: counter,
        /// Points dropped because their name cannot be a file (empty or doubled dots,
        /// `/`, NUL, a component over 255 bytes, a path over 4095).
        dropped_points_bad_name: counter,
        /// Points dropped because whisper cannot store their timestamp (outside 0..2^32).
        dropped_points_bad_timestamp: counter,
        /// Points of a protocol a store does not take (statsd samples, regex lines).
        dropped_wrong_protocol: counter,
        /// Points dropped because their file is not a whisper file.
        dropped_points_corrupt_file: counter,
        /// Points dropped because their name's schema cannot make a file.
        dropped_points_bad_schema: counter,
        /// Mesh records for a store this shard does not run (a reload removed it).
        dropped_unknown_store: counter,
        /// update_many calls made (a create's first write included).
        updates: counter,
        /// Points those calls wrote.
        updated_points: counter,
        /// Files created.
        creates: counter,
        /// Writes that failed (I/O); their points stay cached and are retried.
        write_errors: counter,
        /// Creates that failed (I/O, a full disk); their points stay cached.
        create_errors: counter,
        /// Writes put off because another process held the file's lock.
        lock_busy: counter,
        /// Writes that waited for a writes_per_second token.
        throttled_writes: counter,
        /// Names that waited for a creates_per_minute token.
        throttled_creates: counter,
        /// io_uring read operations for updates.
        read_ops: counter,
        /// io_uring write and fallocate operations.
        write_ops: counter,
        /// Points written to the spill at shutdown (the deadline came first).
        spilled_points: counter,
        /// Points lost because the spill could not be written.
        dropped_points_spill_failed: counter,
        /// Points read back from a previous run's spill.
        restored_points: counter,
        /// Cache queries answered (render, CarbonLink).
        cache_queries: counter,
        /// Points cached now (in flight included).
        cache_points: gauge,
        /// Names cached now.
        cache_names: gauge,
        /// Bytes the cache holds (an estimate from capacities).
        cache_bytes: gauge,
        /// Points in writes not finished yet.
        inflight_points: gauge,
    }
}

/// Mesh record tag of this stage (the aggregators use 1 to 5).
pub const TAG_STORE: u8 = 16;

/// A store's process-wide parts, shared by every shard (the control thread makes them).
#[derive(Debug)]
pub struct StoreShared {
    /// `writes_per_second`.
    pub writes: RateLimit,
    /// `creates_per_minute`.
    pub creates: RateLimit,
    /// A previous run's spill files to read back at start.
    pub restore: Vec<PathBuf>,
    /// Shards that have not read them yet; the last one removes them.
    pub restore_pending: AtomicUsize,
}

impl StoreShared {
    /// The shared parts of `store` for `shards` shards, at `now_ms`.
    pub fn new(store: &Store, shards: usize, restore: Vec<PathBuf>, now_ms: u64) -> StoreShared {
        let StoreKind::Whisper(w) = &store.kind;
        StoreShared {
            writes: RateLimit::per_second(w.writes_per_second, now_ms),
            creates: RateLimit::per_minute(w.creates_per_minute, now_ms),
            restore,
            restore_pending: AtomicUsize::new(shards),
        }
    }
}

/// One store on this shard.
pub struct StoreState {
    /// Stable id (mesh records name it).
    pub id: u16,
    /// Its config.
    pub config: Store,
    /// Its process-wide parts.
    pub shared: Arc<StoreShared>,
    /// This shard's cache.
    pub cache: Cache,
    /// Its counters on this shard.
    pub counters: StoreCounters,
    root: PathBuf,
    last_log_ms: i64,
}

impl StoreState {
    /// A store with an empty cache holding this shard's share of `cache_points_max`.
    pub fn new(id: u16, config: Store, shared: Arc<StoreShared>, shards: usize) -> StoreState {
        let StoreKind::Whisper(w) = &config.kind;
        let root = w.path.clone();
        let cache = Cache::new(w.cache_points_max.div_ceil(shards as u64));
        StoreState {
            id,
            config,
            shared,
            cache,
            counters: StoreCounters::default(),
            root,
            last_log_ms: 0,
        }
    }

    /// Takes a reload's settings (the cache stays).
    pub fn reconfigure(&mut self, config: Store, shared: Arc<StoreShared>, shards: usize) {
        let StoreKind::Whisper(w) = &config.kind;
        self.cache
            .set_points_max(w.cache_points_max.div_ceil(shards as u64));
        self.root = w.path.clone();
        self.config = config;
        self.shared = shared;
    }

    /// The whisper root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Caches a point of a name this shard owns.
    fn apply(&mut self, name: &[u8], point: CachedPoint) {
        let refused = match self.cache.find(name) {
            Some(slot) => self.cache.push(slot, point).err(),
            None => {
                let path = std::str::from_utf8(name)
                    .map_err(|_| "not_utf8")
                    .and_then(|n| metric_path(&self.root, n));
                match path {
                    Ok(path) => self.cache.insert(name, path, point).err(),
                    Err(reason) => {
                        self.counters.dropped_points_bad_name += 1;
                        let now = unix_ms();
                        if now - self.last_log_ms >= LOG_EVERY_MS {
                            self.last_log_ms = now;
                            tracing::warn!(
                                store = %self.config.name,
                                name = %String::from_utf8_lossy(name),
                                reason,
                                "a name that cannot be a whisper file: dropped (logged once per {LOG_EVERY_MS} ms)"
                            );
                        }
                        return;
                    }
                }
            }
        };
        match refused {
            None => self.counters.points_cached += 1,
            Some(Refused::Full) => self.counters.dropped_points_cache_full += 1,
        }
    }

    /// What a new file for `name` gets: carbon's schema and aggregation rules.
    fn new_file(&self, name: &str) -> NewFile {
        let StoreKind::Whisper(w) = &self.config.kind;
        let (x_files_factor, method) = w.aggregations.rules.for_name(name);
        NewFile {
            archives: w
                .schemas
                .rules
                .retentions_for(name)
                .iter()
                .map(|r| (u64::from(r.seconds_per_point), u64::from(r.points)))
                .collect(),
            x_files_factor,
            method,
            mode: w.create_mode,
        }
    }
}

/// A warning about bad names is logged at most this often per store and shard.
const LOG_EVERY_MS: i64 = 10_000;

/// The stores of one shard.
pub struct StoreStage {
    me: usize,
    shards: usize,
    /// By config index of the running topology.
    pub stores: Vec<StoreState>,
}

/// The largest timestamp whisper stores (an unsigned 32-bit field), exclusive.
const TIMESTAMP_END: f64 = 4_294_967_296.0;

impl StoreStage {
    /// An empty stage for shard `me` of `shards`.
    pub fn new(me: usize, shards: usize) -> StoreStage {
        StoreStage {
            me,
            shards,
            stores: Vec::new(),
        }
    }

    /// This shard's number and the shard count.
    pub fn me(&self) -> (usize, usize) {
        (self.me, self.shards)
    }

    /// The config index of the store with stable id `id`.
    pub fn by_id(&self, id: u16) -> Option<usize> {
        self.stores.iter().position(|s| s.id == id)
    }

    /// Takes a point routed to store `s` under `name`, at `now_s`: caches it here when
    /// this shard owns the name, else hands it to the owner.
    #[inline]
    pub fn take(&mut self, s: usize, p: &Point<'_>, name: &[u8], now_s: f64, mesh: &mut ShardMesh) {
        let (me, shards) = (self.me, self.shards);
        let Some(st) = self.stores.get_mut(s) else {
            return;
        };
        st.counters.points += 1;
        let Some((ts, v)) = p.value.datapoint(now_s) else {
            st.counters.dropped_wrong_protocol += 1;
            return;
        };
        if !(0.0..TIMESTAMP_END).contains(&ts) {
            st.counters.dropped_points_bad_timestamp += 1;
            return;
        }
        // carbon's normalized name (tags sorted); allocates only for tagged names.
        let normalized = std::str::from_utf8(name).ok().and_then(normalize);
        let key = normalized.as_deref().map_or(name, str::as_bytes);
        let to = owner(key, shards);
        if to == me {
            st.apply(key, (ts, v));
        } else {
            st.counters.points_to_other_shards += 1;
            let id = st.id;
            mesh.record(to, TAG_STORE, |b| {
                b.extend_from_slice(&id.to_le_bytes());
                b.extend_from_slice(&ts.to_bits().to_le_bytes());
                b.extend_from_slice(&v.to_bits().to_le_bytes());
                put_str16(b, key);
            });
        }
    }

    /// Applies a point another shard handed over.
    pub fn apply_record(&mut self, payload: &[u8]) {
        let mut r = Reader(payload);
        let id = r.u16();
        let (ts, v) = (r.f64(), r.f64());
        let name = r.str16();
        match self.by_id(id) {
            Some(s) => self.stores[s].apply(name, (ts, v)),
            None => {
                if let Some(s) = self.stores.first_mut() {
                    s.counters.dropped_unknown_store += 1;
                }
            }
        }
    }

    /// Answers a cache query: the cached points of each name this shard owns.
    pub fn answer(&mut self, store: usize, names: &[String]) -> Vec<Vec<CachedPoint>> {
        let Some(st) = self.stores.get_mut(store) else {
            return vec![Vec::new(); names.len()];
        };
        st.counters.cache_queries += 1;
        names
            .iter()
            .map(|n| {
                let mut out = Vec::new();
                st.cache.query(n.as_bytes(), &mut out);
                out
            })
            .collect()
    }

    /// Refreshes the gauges before the counters are published.
    pub fn refresh_gauges(&mut self) {
        for st in &mut self.stores {
            let c = &mut st.counters;
            c.cache_points = st.cache.points();
            c.cache_names = st.cache.names() as u64;
            c.cache_bytes = st.cache.bytes_estimate();
            c.inflight_points = st.cache.inflight_points();
        }
    }

    /// Points every store here still holds.
    pub fn cached_points(&self) -> u64 {
        self.stores.iter().map(|s| s.cache.points()).sum()
    }
}

/// A question from the control thread to the owner shard of some names.
#[derive(Debug, Clone)]
pub struct StoreQuery {
    /// The store, by name.
    pub store: String,
    /// Names (carbon-normalized) this shard owns.
    pub names: Vec<String>,
}

/// How long an idle dispatcher sleeps before it looks at the cache again.
const IDLE_MS: u64 = 20;

/// A write taken from the cache.
struct Taken {
    job: cache::Job,
    name: String,
    path: PathBuf,
    no_file: bool,
    shared: Arc<StoreShared>,
    points: usize,
    update: Vec<(i64, f64)>,
}

enum Pick {
    Gone,
    Idle,
    Write(Taken),
}

/// The writer of store `id` on this shard: takes the next name in carbon's `sorted`
/// order whenever fewer than `in_flight_max` writes run, and runs each write as its own
/// task (io_uring keeps them all busy). Ends when the store goes (a reload changing
/// `writes_in_flight_max` starts a new one).
pub async fn dispatcher(core: Rc<RefCell<Core>>, id: u16, in_flight_max: usize) {
    let slots = Rc::new(glommio::sync::Semaphore::new(in_flight_max as u64));
    // One write at a time waits on the process-wide limit; the others wait here,
    // parked, rather than each polling the clock.
    let gate = Rc::new(glommio::sync::Semaphore::new(1));
    let mut sort: Vec<CachedPoint> = Vec::new();
    loop {
        let Ok(permit) = slots.acquire_static_permit(1).await else {
            return;
        };
        let now_ms = unix_ms();
        let pick = {
            let mut c = core.borrow_mut();
            match c.stores.by_id(id) {
                None => Pick::Gone,
                Some(s) => {
                    let st = &mut c.stores.stores[s];
                    let creates_open = st.shared.creates.available(now_ms as u64);
                    match st.cache.next(now_ms, creates_open) {
                        None => Pick::Idle,
                        Some(job) => {
                            let mut update = Vec::new();
                            cache::to_update(st.cache.job_points(job), &mut update, &mut sort);
                            let (name, path) = st.cache.job_name(job);
                            Pick::Write(Taken {
                                job,
                                name: String::from_utf8_lossy(name).into_owned(),
                                path: path.clone(),
                                no_file: st.cache.job_no_file(job),
                                shared: st.shared.clone(),
                                points: st.cache.job_points(job).len(),
                                update,
                            })
                        }
                    }
                }
            }
        };
        match pick {
            Pick::Gone => return,
            Pick::Idle => {
                drop(permit);
                glommio::timer::sleep(Duration::from_millis(IDLE_MS)).await;
            }
            Pick::Write(t) => {
                let (core, gate) = (core.clone(), gate.clone());
                glommio::spawn_local(async move {
                    write_task(&core, id, t, &gate).await;
                    drop(permit);
                })
                .detach();
            }
        }
    }
}

/// One write: through io_uring, then confirmed to the cache.
async fn write_task(core: &Rc<RefCell<Core>>, id: u16, t: Taken, gate: &glommio::sync::Semaphore) {
    let mut scratch = Scratch::new();
    let outcome = write_one(core, id, &t, gate, &mut scratch).await;
    let mut c = core.borrow_mut();
    let Some(s) = c.stores.by_id(id) else {
        return;
    };
    let st = &mut c.stores.stores[s];
    let now = unix_ms();
    let confirm = match outcome {
        Written::Done { created, cost } => {
            let k = &mut st.counters;
            k.updates += 1;
            k.updated_points += t.update.len() as u64;
            k.creates += u64::from(created);
            k.read_ops += u64::from(cost.reads);
            k.write_ops += u64::from(cost.writes);
            Outcome::Written
        }
        Written::NoCreateToken => {
            st.counters.throttled_creates += 1;
            Outcome::Retry {
                retry_at_ms: now,
                no_file: true,
            }
        }
        Written::Failed { error, creating } => {
            let retry = |ms: i64| Outcome::Retry {
                retry_at_ms: now + ms,
                no_file: false,
            };
            match error {
                WriteError::NoFile => Outcome::Retry {
                    retry_at_ms: now,
                    no_file: true,
                },
                WriteError::Busy => {
                    st.counters.lock_busy += 1;
                    retry(100)
                }
                WriteError::Corrupt(c) => {
                    st.counters.dropped_points_corrupt_file += t.points as u64;
                    log_failure(st, &t, &c.to_string(), now);
                    Outcome::Dropped
                }
                WriteError::Invalid(e) => {
                    st.counters.dropped_points_bad_schema += t.points as u64;
                    log_failure(st, &t, &e, now);
                    Outcome::Dropped
                }
                e @ (WriteError::Io(_) | WriteError::Unsettled) => {
                    if creating {
                        st.counters.create_errors += 1;
                    } else {
                        st.counters.write_errors += 1;
                    }
                    log_failure(st, &t, &e.to_string(), now);
                    retry(RETRY_AFTER_ERROR_MS)
                }
            }
        }
    };
    st.cache.confirm(t.job, confirm);
}

/// A name whose write failed is tried again after this long.
const RETRY_AFTER_ERROR_MS: i64 = 1_000;

fn log_failure(st: &mut StoreState, t: &Taken, error: &str, now: i64) {
    if now - st.last_log_ms >= LOG_EVERY_MS {
        st.last_log_ms = now;
        tracing::warn!(
            store = %st.config.name,
            name = %t.name,
            file = %t.path.display(),
            error,
            "whisper write failed (logged once per {LOG_EVERY_MS} ms; counted in the store's counters)"
        );
    }
}

enum Written {
    Done { created: bool, cost: uring::Cost },
    NoCreateToken,
    Failed { error: WriteError, creating: bool },
}

/// Waits for a token of `limit`, behind the shard's `gate` (one waiter polls the
/// clock, the others are parked); true when it had to wait.
async fn token(limit: &RateLimit, gate: &glommio::sync::Semaphore) -> bool {
    if limit.try_take(unix_ms() as u64).is_ok() {
        return false;
    }
    let Ok(_turn) = gate.acquire_permit(1).await else {
        return true;
    };
    loop {
        match limit.try_take(unix_ms() as u64) {
            Ok(()) => return true,
            Err(ms) => glommio::timer::sleep(Duration::from_millis(ms)).await,
        }
    }
}

async fn write_one(
    core: &Rc<RefCell<Core>>,
    id: u16,
    t: &Taken,
    gate: &glommio::sync::Semaphore,
    scratch: &mut Scratch,
) -> Written {
    let update = &t.update;
    let file = if t.no_file {
        None
    } else {
        match uring::open(&t.path).await {
            Ok(f) => f,
            Err(e) => {
                return Written::Failed {
                    error: WriteError::Io(e),
                    creating: false,
                }
            }
        }
    };
    let waited;
    let result = match file {
        Some(file) => {
            waited = token(&t.shared.writes, gate).await;
            let r = uring::update_file(&file, update, unix_ms() / 1000, scratch).await;
            let closed = uring::close(file).await;
            match (r, closed) {
                (Ok(cost), Ok(())) => Ok((false, cost)),
                (Err(e), _) => Err((e, false)),
                (Ok(_), Err(e)) => Err((WriteError::Io(e), false)),
            }
        }
        None => {
            if t.shared.creates.try_take(unix_ms() as u64).is_err() {
                return Written::NoCreateToken;
            }
            waited = token(&t.shared.writes, gate).await;
            let new = {
                let c = core.borrow();
                match c.stores.by_id(id) {
                    Some(s) => c.stores.stores[s].new_file(&t.name),
                    None => return Written::NoCreateToken,
                }
            };
            uring::create(&t.path, &new, update, unix_ms() / 1000, scratch)
                .await
                .map(|cost| (true, cost))
                .map_err(|e| (e, true))
        }
    };
    if waited {
        let mut c = core.borrow_mut();
        if let Some(s) = c.stores.by_id(id) {
            c.stores.stores[s].counters.throttled_writes += 1;
        }
    }
    match result {
        Ok((created, cost)) => Written::Done { created, cost },
        Err((error, creating)) => Written::Failed { error, creating },
    }
}

/// The spill text of a store's cache, and its points.
fn spill_text(st: &StoreState) -> (String, u64) {
    let mut text = String::new();
    let mut points = 0u64;
    st.cache.each(|name, inflight, cached| {
        spill::write_points(name, inflight, &mut text);
        spill::write_points(name, cached, &mut text);
        points += (inflight.len() + cached.len()) as u64;
    });
    (text, points)
}

/// Spills what store `s` still holds to its spill directory (shutdown); returns the
/// points written.
pub async fn spill(core: &Rc<RefCell<Core>>, s: usize) -> u64 {
    let ((text, points), path) = {
        let c = core.borrow();
        let st = &c.stores.stores[s];
        (
            spill_text(st),
            spill::file_name(st.root(), unix_ms(), c.stores.me),
        )
    };
    if points == 0 {
        return 0;
    }
    let result = write_spill(&path, text.into_bytes()).await;
    let mut c = core.borrow_mut();
    let st = &mut c.stores.stores[s];
    match result {
        Ok(()) => {
            st.counters.spilled_points += points;
            tracing::info!(
                store = %st.config.name,
                points,
                file = %path.display(),
                "unwritten points spilled for the next start"
            );
            points
        }
        Err(e) => {
            st.counters.dropped_points_spill_failed += points;
            tracing::error!(
                store = %st.config.name,
                points,
                file = %path.display(),
                error = %e,
                "cannot spill unwritten points; they are lost (counted)"
            );
            0
        }
    }
}

/// Spills the cache of a store a reload removed (read back when a store with its path
/// runs again).
pub async fn spill_removed(st: StoreState, me: usize) {
    let (text, points) = spill_text(&st);
    if points == 0 {
        return;
    }
    let path = spill::file_name(st.root(), unix_ms(), me);
    match write_spill(&path, text.into_bytes()).await {
        Ok(()) => {
            tracing::info!(store = %st.config.name, points, file = %path.display(), "store removed; its cache spilled")
        }
        Err(e) => {
            tracing::error!(store = %st.config.name, points, error = %e, "store removed; its cache could not be spilled and is lost")
        }
    }
}

async fn write_spill(path: &Path, bytes: Vec<u8>) -> std::io::Result<()> {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    glommio::executor()
        .spawn_blocking(move || std::fs::create_dir_all(dir))
        .await?;
    let tmp = path.with_extension("tmp");
    let f = glommio::io::BufferedFile::create(&tmp)
        .await
        .map_err(std::io::Error::from)?;
    let len = bytes.len();
    let mut off = 0u64;
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = f
            .write_at(rest.clone(), off)
            .await
            .map_err(std::io::Error::from)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        rest.drain(..n);
        off += n as u64;
    }
    debug_assert_eq!(off as usize, len);
    f.fdatasync().await.map_err(std::io::Error::from)?;
    f.close().await.map_err(std::io::Error::from)?;
    glommio::io::rename(&tmp, path)
        .await
        .map_err(std::io::Error::from)
}

/// Bytes of a spill file read at a time.
const RESTORE_CHUNK_BYTES: usize = 4 << 20;

/// Reads a previous run's spill files back into store `id`'s cache (the names this
/// shard owns); the last shard to finish removes the files.
pub async fn restore(core: Rc<RefCell<Core>>, id: u16, shared: Arc<StoreShared>) {
    for file in &shared.restore {
        if let Err(e) = restore_file(&core, id, file).await {
            tracing::error!(file = %file.display(), error = %e, "cannot read a spill file");
        }
    }
    if shared.restore_pending.fetch_sub(1, Ordering::AcqRel) == 1 {
        for file in &shared.restore {
            let _ = glommio::io::remove(file).await;
        }
    }
}

async fn restore_file(core: &Rc<RefCell<Core>>, id: u16, path: &Path) -> std::io::Result<()> {
    let f = glommio::io::BufferedFile::open(path)
        .await
        .map_err(std::io::Error::from)?;
    let len = f.file_size().await.map_err(std::io::Error::from)?;
    let mut carry: Vec<u8> = Vec::new();
    let mut off = 0u64;
    while off < len {
        let got = f
            .read_at(off, RESTORE_CHUNK_BYTES)
            .await
            .map_err(std::io::Error::from)?;
        if got.is_empty() {
            break;
        }
        off += got.len() as u64;
        carry.extend_from_slice(&got);
        // Keep the last name's run for the next chunk (it may go on there), unless
        // this is the end.
        let cut = if off >= len {
            carry.len()
        } else {
            last_run_start(&carry)
        };
        restore_text(core, id, &carry[..cut]);
        carry.drain(..cut);
    }
    if !carry.is_empty() {
        restore_text(core, id, &carry);
    }
    let _ = f.close().await;
    Ok(())
}

/// Where the last complete name run of spill text begins (0 when there is one run).
fn last_run_start(text: &[u8]) -> usize {
    let Some(end) = memchr::memrchr(b'\n', text) else {
        return 0;
    };
    let complete = &text[..end];
    let line_start = |at: usize| memchr::memrchr(b'\n', &complete[..at]).map_or(0, |i| i + 1);
    let name_of = |line: &[u8]| -> Vec<u8> {
        let mut parts = line.rsplitn(3, |&b| b == b' ');
        parts.nth(2).unwrap_or_default().to_vec()
    };
    let mut start = line_start(complete.len());
    let name = name_of(&complete[start..]);
    while start > 0 {
        let prev = line_start(start - 1);
        if name_of(&complete[prev..start - 1]) != name {
            break;
        }
        start = prev;
    }
    start
}

fn restore_text(core: &Rc<RefCell<Core>>, id: u16, text: &[u8]) {
    let mut c = core.borrow_mut();
    let (me, shards) = c.stores.me();
    let Some(s) = c.stores.by_id(id) else {
        return;
    };
    let st = &mut c.stores.stores[s];
    let root = st.root.clone();
    let mut restored = 0u64;
    let mut dropped = 0u64;
    spill::read_points(text, |name, points| {
        if owner(name, shards) != me {
            return;
        }
        let Ok(n) = std::str::from_utf8(name) else {
            return;
        };
        let Ok(path) = metric_path(&root, n) else {
            dropped += points.len() as u64;
            return;
        };
        let refused = st.cache.restore(name, || path, points);
        restored += (points.len() - refused) as u64;
        dropped += refused as u64;
    });
    st.counters.restored_points += restored;
    st.counters.dropped_points_cache_full += dropped;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_run_of_spill_text_is_carried() {
        let text = b"a 1.0 1.0\nb 1.0 1.0\nb 2.0 2.0\nc 1";
        assert_eq!(last_run_start(text), 10);
        assert_eq!(last_run_start(b"a 1.0 1.0\na 2.0 2.0\n"), 0);
        assert_eq!(last_run_start(b"x 1.0 1.0\na 1.0 1.0\na 2.0 2.0\n"), 10);
    }
}
