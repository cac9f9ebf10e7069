//! The store stage of a shard: the stores (`crate::store`) wired to points, owners, the
//! clock and io_uring.
//!
//! A whisper file has exactly one writer, so every name is owned by one shard,
//! [`store_owner`] (from the name's fingerprint, the cache's key, so a point is hashed
//! once; over carbon's normalized name: its tags sorted, so every spelling of a tagged
//! series meets on one shard and one file). A point routed
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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::{Store, StoreKind};
use crate::fingerprint::fingerprint;
use crate::point::Point;
use crate::shard::aggregate::owner_of_fingerprint;
use crate::shard::mesh::{put_str16, Reader, ShardMesh};
use crate::shard::pipeline::{unix_ms, Core};
use crate::store::cache::{self, Cache, CachedPoint, Outcome, Refused};
use crate::store::spill;
use crate::store::throttle::{RateLimit, SecondCounts};
use crate::store::whisper::batch::{self, Batch};
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
        /// `/`, NUL, a component over 255 bytes, a path over 4095 with the root made
        /// absolute, or one the file system calls too long).
        dropped_points_bad_name: counter,
        /// Points dropped because whisper cannot store their timestamp (NaN, or 2^32 and
        /// later; an older one than every archive is taken and dropped by the write, as
        /// whisper does).
        dropped_points_bad_timestamp: counter,
        /// Points whose value is NaN (a plaintext `nan`), dropped as carbon drops them.
        dropped_points_nan: counter,
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
        /// Closes of written files that failed (the writes were done).
        close_errors: counter,
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
    /// update_many calls per wall-clock second, the whole process (the limit, seen),
    /// each counted in the second it started (its writes handed to the kernel), as the
    /// limit charges it: a batch's completions are read a tick later.
    pub updates_by_second: SecondCounts,
    /// The shards whose cache has points waiting (a bit each): the limit is shared
    /// among them.
    pub wanting: AtomicU64,
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
            updates_by_second: SecondCounts::default(),
            wanting: AtomicU64::new(0),
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
    /// Signalled once per shard tick: the writer's step.
    pub beat: Rc<glommio::sync::Semaphore>,
    /// Updates whose writes are in flight (`None` where no io_uring could be made:
    /// then every write runs as a task).
    batch: Option<Batch<Flight>>,
    /// Buffers the writer reuses.
    reaped: Vec<(Flight, Result<uring::Cost, WriteError>)>,
    update: Vec<(i64, f64)>,
    sort: Vec<CachedPoint>,
    scratch: Scratch,
    /// When the writer last stepped (unix ms).
    last_step_ms: i64,
    root: PathBuf,
    last_log_ms: i64,
}

impl StoreState {
    /// A store with an empty cache holding this shard's share of `cache_points_max`.
    pub fn new(id: u16, config: Store, shared: Arc<StoreShared>, shards: usize) -> StoreState {
        let StoreKind::Whisper(w) = &config.kind;
        let root = w.path.clone();
        let cache = Cache::new(w.cache_points_max.div_ceil(shards as u64));
        let batch = match Batch::new(w.writes_in_flight_max) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!(store = %config.name, error = %e, "no io_uring for batched writes: every write runs as a task");
                None
            }
        };
        StoreState {
            id,
            config,
            shared,
            cache,
            counters: StoreCounters::default(),
            beat: Rc::new(glommio::sync::Semaphore::new(0)),
            batch,
            reaped: Vec::new(),
            update: Vec::new(),
            sort: Vec::new(),
            scratch: Scratch::new(),
            last_step_ms: 0,
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

    /// Caches a point of a name this shard owns, `fp` its [`fingerprint`].
    fn apply(&mut self, name: &[u8], fp: u128, point: CachedPoint) {
        let refused = match self.cache.find_fp(fp) {
            Some(slot) => self.cache.push(slot, point).err(),
            None => {
                let path = std::str::from_utf8(name)
                    .map_err(|_| "not_utf8")
                    .and_then(|n| metric_path(&self.root, n));
                match path {
                    Ok(path) => self.cache.insert(name, fp, path, point).err(),
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
    /// Points for this shard's caches, their index entries prefetched, applied by
    /// [`StoreStage::finish_batch`] (names in `staged_bytes`).
    staged: Vec<StagedPoint>,
    staged_bytes: Vec<u8>,
    /// The last stamp given to a `-1` ("now") timestamp.
    last_now: f64,
}

/// Seconds between two `-1` points stamped within one batch. carbon reads `time.time()`
/// for each, so no two are equal: of several in one second whisper keeps the first
/// (the lowest float timestamp of an `int()` second). One batch shares one clock
/// reading here; each `-1` point after the first is stamped this much later, which
/// keeps carbon's order without reading the clock per point.
const NOW_STEP_S: f64 = 1e-6;

/// The stamp of a `-1` point read at `now_s`, after `last` (the one before): `now_s`,
/// or [`NOW_STEP_S`] after `last` while `last` is at or past `now_s` by less than a
/// second (the same batch's clock reading). A clock stepped back by more starts again
/// from `now_s`, so points never stay stamped ahead of the clock.
fn stamp_now(last: &mut f64, now_s: f64) -> f64 {
    *last = if *last >= now_s && *last < now_s + 1.0 {
        *last + NOW_STEP_S
    } else {
        now_s
    };
    *last
}

/// The shard that owns store name `name` (carbon's normal form): its writer and cache.
/// The cache's [`fingerprint`] decides it, so the hot path hashes a point once.
pub fn store_owner(name: &[u8], shards: usize) -> usize {
    owner_of_fingerprint(fingerprint(name), shards)
}

/// A point waiting in [`StoreStage::staged`].
struct StagedPoint {
    store: usize,
    fp: u128,
    point: CachedPoint,
    name: (u32, u32),
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
            staged: Vec::new(),
            staged_bytes: Vec::new(),
            last_now: 0.0,
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
        let last_now = &mut self.last_now;
        let Some((ts, v)) = p.value.datapoint(|| stamp_now(last_now, now_s)) else {
            st.counters.dropped_wrong_protocol += 1;
            return;
        };
        // A negative timestamp is taken, as carbon takes it: its file is made, and
        // whisper drops the point (older than every archive).
        if ts.is_nan() || ts >= TIMESTAMP_END {
            st.counters.dropped_points_bad_timestamp += 1;
            return;
        }
        // carbon's receiver drops NaN values; infinities are stored.
        if v.is_nan() {
            st.counters.dropped_points_nan += 1;
            return;
        }
        // carbon's normalized name (tags sorted); allocates only for tagged names.
        // A name with no tag and no leading `~` is its own normal form.
        let plain = name.first() != Some(&b'~') && memchr::memchr(b';', name).is_none();
        let normalized = if plain {
            None
        } else {
            std::str::from_utf8(name).ok().and_then(normalize)
        };
        let key = normalized.as_deref().map_or(name, str::as_bytes);
        let fp = fingerprint(key);
        let to = owner_of_fingerprint(fp, shards);
        if to == me {
            self.stage(s, key, fp, (ts, v));
        } else {
            st.counters.points_to_other_shards += 1;
            let id = st.id;
            mesh.record(to, TAG_STORE, |b| {
                b.extend_from_slice(&id.to_le_bytes());
                b.extend_from_slice(&fp.to_le_bytes());
                b.extend_from_slice(&ts.to_bits().to_le_bytes());
                b.extend_from_slice(&v.to_bits().to_le_bytes());
                put_str16(b, key);
            });
        }
    }

    /// Holds a point for store `s` until [`finish_batch`](Self::finish_batch), starting
    /// the load of its name's index entry: the points of a batch (or of a mesh batch)
    /// look their names up together, each miss overlapping the others.
    fn stage(&mut self, s: usize, name: &[u8], fp: u128, point: CachedPoint) {
        self.stores[s].cache.prefetch(fp);
        let at = self.staged_bytes.len() as u32;
        self.staged_bytes.extend_from_slice(name);
        self.staged.push(StagedPoint {
            store: s,
            fp,
            point,
            name: (at, name.len() as u32),
        });
    }

    /// Caches the points staged since the last call, in the order they came. Called at
    /// the end of every routed batch and every mesh drain, so nothing stays staged
    /// while the shard waits (or across a reload, which renumbers the stores).
    pub fn finish_batch(&mut self) {
        for p in &self.staged {
            let (at, len) = (p.name.0 as usize, p.name.1 as usize);
            let name = &self.staged_bytes[at..at + len];
            self.stores[p.store].apply(name, p.fp, p.point);
        }
        self.staged.clear();
        self.staged_bytes.clear();
    }

    /// Takes a point another shard handed over; it is cached by the next
    /// [`finish_batch`](Self::finish_batch).
    pub fn apply_record(&mut self, payload: &[u8]) {
        let mut r = Reader(payload);
        let id = r.u16();
        let fp = u128::from_le_bytes(r.bytes(16).try_into().expect("16 bytes"));
        let (ts, v) = (r.f64(), r.f64());
        let name = r.str16();
        match self.by_id(id) {
            Some(s) => self.stage(s, name, fp, (ts, v)),
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

    /// Wakes every store's writer for its step (once per shard tick).
    pub fn beat(&self) {
        for st in &self.stores {
            if st.beat.available() == 0 {
                st.beat.signal(1);
            }
        }
    }

    /// Whether any store has batched writes in flight.
    pub fn writes_in_flight(&self) -> bool {
        self.stores
            .iter()
            .any(|s| s.batch.as_ref().is_some_and(|b| b.in_flight() > 0))
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

/// A write that runs as its own task, through glommio's files (`uring`): a create, or an
/// update that would have blocked in the batch.
struct Taken {
    job: cache::Job,
    name: String,
    path: PathBuf,
    no_file: bool,
    points: usize,
    update: Vec<(i64, f64)>,
    /// Lock the file for the update (`store[].flock`).
    flock: bool,
    /// When it was taken, unix ms.
    started_ms: i64,
}

/// An update in the batch: what its completion confirms.
pub struct Flight {
    job: cache::Job,
    points: u32,
    update_len: u32,
    /// When it was started, unix ms.
    started_ms: i64,
}

/// The writer of store `id` on this shard: one [`step`] per shard tick (the tick loop
/// signals the store's `beat`, so the writer wakes with the shard and never on its own).
/// Ends when the store goes (a reload changing `writes_in_flight_max` starts a new one).
pub async fn dispatcher(core: Rc<RefCell<Core>>, id: u16, in_flight_max: usize) {
    let Some(beat) = ({
        let c = core.borrow();
        c.stores.by_id(id).map(|s| c.stores.stores[s].beat.clone())
    }) else {
        return;
    };
    let slow = Rc::new(std::cell::Cell::new(0usize));
    loop {
        if beat.acquire(1).await.is_err() {
            return;
        }
        let spawn = {
            let mut c = core.borrow_mut();
            let Some(s) = c.stores.by_id(id) else {
                return;
            };
            let me = c.stores.me;
            step(
                &mut c.stores.stores[s],
                me,
                in_flight_max,
                slow.get(),
                unix_ms(),
            )
        };
        // (A spawned task runs at once: no borrow may be held while spawning.)
        for t in spawn {
            let (core, slow) = (core.clone(), slow.clone());
            slow.set(slow.get() + 1);
            glommio::spawn_local(async move {
                write_task(&core, id, t).await;
                slow.set(slow.get() - 1);
            })
            .detach();
        }
    }
}

/// One writer step: confirms the batch's finished updates, takes what the limit allows
/// now (at most `in_flight_max` in flight, `slow` of them as tasks), starts the updates
/// that cannot block in the batch and returns the others to run as tasks.
fn step(st: &mut StoreState, me: usize, in_flight_max: usize, slow: usize, now: i64) -> Vec<Taken> {
    let mut reaped = std::mem::take(&mut st.reaped);
    if let Some(batch) = st.batch.as_mut() {
        batch.reap(|f, r| reaped.push((f, r)));
        st.counters.close_errors += batch.take_close_errors();
        // The finished files' closes go now: a name written again in this step must
        // not find its own lock still held.
        if let Err(e) = batch.submit() {
            tracing::warn!(store = %st.config.name, error = %e, "io_uring submit failed");
        }
    }
    for (f, r) in reaped.drain(..) {
        let outcome = match r {
            Ok(cost) => Written::Done {
                created: false,
                cost,
            },
            Err(error) => Written::Failed {
                error,
                creating: false,
            },
        };
        finish(
            st,
            f.job,
            f.points as usize,
            f.update_len as usize,
            None,
            outcome,
            (f.started_ms, now),
        );
    }
    st.reaped = reaped;
    let mut tasks = Vec::new();
    let in_batch = st.batch.as_ref().map_or(0, |b| b.in_flight());
    let room = in_flight_max.saturating_sub(in_batch + slow) as u64;
    // The limit is shared fairly among the shards with points waiting: each step takes
    // at most its share of what accrued since the last (a quarter more, for timers
    // that run late), so one shard's writes cannot starve another's.
    let bit = 1u64 << (me % 64);
    let waiting = st.cache.has_waiting();
    let wanting = if waiting {
        st.shared.wanting.fetch_or(bit, Ordering::Relaxed) | bit
    } else {
        st.shared.wanting.fetch_and(!bit, Ordering::Relaxed) & !bit
    };
    let elapsed_ms = (now - st.last_step_ms).clamp(0, 1_000) as u64;
    st.last_step_ms = now;
    let per_second = st.shared.writes.per_window();
    let share = if per_second == 0 {
        room
    } else {
        (per_second * elapsed_ms * 5 / 4).div_ceil(1_000 * u64::from(wanting.count_ones().max(1)))
            + 1
    };
    let room = room.min(share);
    if room > 0 && waiting {
        let took = st.shared.writes.take_up_to(now as u64, room);
        if took < room {
            st.counters.throttled_writes += 1;
        }
        let mut creates_open = st.shared.creates.available(now as u64);
        let mut used = 0;
        let StoreKind::Whisper(w) = &st.config.kind;
        let flock = w.flock;
        for _ in 0..took {
            let Some(job) = st.cache.next(now, creates_open) else {
                break;
            };
            cache::to_update(st.cache.job_points(job), &mut st.update, &mut st.sort);
            let points = st.cache.job_points(job).len();
            let no_file = st.cache.job_no_file(job);
            if no_file && st.shared.creates.try_take(now as u64).is_err() {
                creates_open = false;
                finish(st, job, points, 0, None, Written::NoCreateToken, (now, now));
                continue;
            }
            used += 1;
            let slow_path = match (no_file, st.batch.as_mut()) {
                (false, Some(b)) => {
                    let flight = Flight {
                        job,
                        points: points as u32,
                        update_len: st.update.len() as u32,
                        started_ms: now,
                    };
                    let path = st.cache.job_name(job).1;
                    match b.update(path, &st.update, now / 1000, &mut st.scratch, flock, flight) {
                        Ok(()) => false,
                        Err((_, batch::Refused::WouldBlock)) => true,
                        Err((_, batch::Refused::Failed(error))) => {
                            // Nothing was written: the token goes back.
                            used -= 1;
                            let outcome = Written::Failed {
                                error,
                                creating: false,
                            };
                            finish(st, job, points, 0, None, outcome, (now, now));
                            false
                        }
                    }
                }
                _ => true,
            };
            if slow_path {
                let (name, path) = st.cache.job_name(job);
                tasks.push(Taken {
                    job,
                    name: String::from_utf8_lossy(name).into_owned(),
                    path: path.clone(),
                    no_file,
                    points,
                    update: st.update.clone(),
                    flock,
                    started_ms: now,
                });
            }
        }
        st.shared.writes.give_back(took - used);
    }
    if let Some(batch) = st.batch.as_mut() {
        if let Err(e) = batch.submit() {
            tracing::warn!(store = %st.config.name, error = %e, "io_uring submit failed");
        }
    }
    tasks
}

/// A write as a task: through io_uring on the shard's ring, then confirmed to the cache.
async fn write_task(core: &Rc<RefCell<Core>>, id: u16, t: Taken) {
    let mut scratch = Scratch::new();
    let outcome = write_one(core, id, &t, &mut scratch).await;
    let mut c = core.borrow_mut();
    let Some(s) = c.stores.by_id(id) else {
        return;
    };
    let st = &mut c.stores.stores[s];
    if let Written::Failed {
        error: WriteError::NoFile | WriteError::Busy,
        ..
    } = outcome
    {
        // Nothing was written (no file yet, or another process holds it): the token
        // goes back, as the batch's refusals do.
        st.shared.writes.give_back(1);
    }
    finish(
        st,
        t.job,
        t.points,
        t.update.len(),
        Some((&t.name, &t.path)),
        outcome,
        (t.started_ms, unix_ms()),
    );
}

/// Ends a write: its counters, and the cache told what became of its points.
/// `(started_ms, now)`: when the write was taken (it counts in that second's
/// `updates_by_second`) and now, unix ms.
fn finish(
    st: &mut StoreState,
    job: cache::Job,
    points: usize,
    update_len: usize,
    named: Option<(&str, &Path)>,
    outcome: Written,
    (started_ms, now): (i64, i64),
) {
    let confirm = match outcome {
        Written::Done { created, cost } => {
            let k = &mut st.counters;
            k.updates += 1;
            k.updated_points += update_len as u64;
            k.creates += u64::from(created);
            k.read_ops += u64::from(cost.reads);
            k.write_ops += u64::from(cost.writes);
            st.shared
                .updates_by_second
                .add((started_ms / 1000) as u64, 1);
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
                    st.counters.dropped_points_corrupt_file += points as u64;
                    log_failure(st, job, named, &c.to_string(), now);
                    Outcome::Dropped
                }
                WriteError::Invalid(e) => {
                    st.counters.dropped_points_bad_schema += points as u64;
                    log_failure(st, job, named, &e, now);
                    Outcome::Dropped
                }
                WriteError::Io(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => {
                    // No retry can make this path shorter (the root's length passed the
                    // check but a component or the whole is over the file system's own
                    // limit): dropped, as carbon drops it.
                    st.counters.dropped_points_bad_name += points as u64;
                    log_failure(st, job, named, &e.to_string(), now);
                    Outcome::Dropped
                }
                e @ (WriteError::Io(_) | WriteError::Unsettled) => {
                    if creating {
                        st.counters.create_errors += 1;
                    } else {
                        st.counters.write_errors += 1;
                    }
                    log_failure(st, job, named, &e.to_string(), now);
                    retry(RETRY_AFTER_ERROR_MS)
                }
            }
        }
    };
    st.cache.confirm(job, confirm);
}

/// A name whose write failed is tried again after this long.
const RETRY_AFTER_ERROR_MS: i64 = 1_000;

fn log_failure(
    st: &mut StoreState,
    job: cache::Job,
    named: Option<(&str, &Path)>,
    error: &str,
    now: i64,
) {
    if now - st.last_log_ms >= LOG_EVERY_MS {
        st.last_log_ms = now;
        let (name, path) = match named {
            Some((n, p)) => (n.to_string(), p.to_path_buf()),
            None => {
                let (n, p) = st.cache.job_name(job);
                (String::from_utf8_lossy(n).into_owned(), p.clone())
            }
        };
        tracing::warn!(
            store = %st.config.name,
            name = %name,
            file = %path.display(),
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

/// A slow write: its tokens were taken by the step that handed it over.
async fn write_one(core: &Rc<RefCell<Core>>, id: u16, t: &Taken, scratch: &mut Scratch) -> Written {
    let update = &t.update;
    let result = if t.no_file {
        let new = {
            let c = core.borrow();
            match c.stores.by_id(id) {
                Some(s) => c.stores.stores[s].new_file(&t.name),
                None => return Written::NoCreateToken,
            }
        };
        uring::create(&t.path, &new, update, unix_ms() / 1000, scratch, t.flock)
            .await
            .map(|cost| (true, cost))
            .map_err(|e| (e, true))
    } else {
        uring::update(&t.path, update, unix_ms() / 1000, scratch, t.flock)
            .await
            .map(|cost| (false, cost))
            .map_err(|e| (e, false))
    };
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
        if store_owner(name, shards) != me {
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

    #[test]
    fn now_stamps_rise_within_a_batch_and_follow_the_clock() {
        let mut last = 0.0;
        let t = 1_700_000_000.25;
        let a = stamp_now(&mut last, t);
        let b = stamp_now(&mut last, t);
        let c = stamp_now(&mut last, t);
        assert_eq!(a, t);
        assert!(a < b && b < c && c < t + 1e-5, "{a} {b} {c}");
        // A later batch reads a later clock.
        assert_eq!(stamp_now(&mut last, t + 0.5), t + 0.5);
        // The clock stepped back more than a second: the stamps follow it.
        assert_eq!(stamp_now(&mut last, t - 3600.0), t - 3600.0);
        // Back by less than a second: still just after the last stamp.
        let d = stamp_now(&mut last, t - 3600.5);
        assert!(d > t - 3600.0 && d < t - 3600.0 + 1e-5, "{d}");
    }
}
