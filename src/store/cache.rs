//! The write-back cache of one store on one shard: the points of the names this shard
//! owns that are not on disk yet, and the order they are written in.
//!
//! Points are kept as carbon's `MetricCache` keeps them: per name, with their timestamp
//! as received (a float: carbon keys its cache by `float(timestamp)`), in arrival order.
//! A write takes every point of one name; the writer sorts them by timestamp and keeps
//! the last of equal timestamps, as carbon's `pop` and `dict(datapoints)` do, so the
//! update_many calls are carbon's.
//!
//! **Write order** is carbon's `CACHE_WRITE_STRATEGY = sorted` (its default): a loop
//! over the cache, names with the most points first, every name once per loop; names
//! that get points while the loop runs wait for the next loop. Largest-first is what
//! makes a throttled writer efficient (the most points per `update_many`, the one cost
//! that counts on disk), and the loop bounds how long any name waits: nothing starves,
//! which carbon's `max` strategy cannot promise. (`timesorted`, oldest first, spends
//! the same writes on fewer points.)
//!
//! **In flight.** Points handed to a write stay visible to readers until the write is
//! confirmed (go-carbon's `notConfirmed`): a query sees the points in flight, then the
//! newer ones. A failed write puts its points back in front of the newer ones, so the
//! newest value for a timestamp still wins.
//!
//! **Written names stay until the next loop.** A name whose points were all written keeps
//! its slot (name, file path, buffers) until the next loop starts: a name that gets a new
//! point before then (every name of a steady stream, when the writer is throttled) is
//! not looked up, validated, allocated and freed again once per write. The loop's start
//! frees every slot still empty, so what is kept is at most one loop's writes.
//!
//! **Bound.** `points_max` points (in flight included); past it a new point is refused
//! and the caller counts it. A repeated timestamp counts until it is written (carbon
//! counts it once: a bound, not an accounting, is what is promised here).
//!
//! No I/O, no clock: `now_ms` comes in where it matters.

use std::path::PathBuf;

use crate::fingerprint::{fingerprint, FpIndex};

/// One cached point: (timestamp as received, value).
pub type CachedPoint = (f64, f64);

/// Why a point was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The cache holds `points_max` points.
    Full,
}

/// Bytes of a name kept inside its key (and slot); longer names go behind a pointer.
const NAME_INLINE_BYTES: usize = 46;

/// A cached name: short names (most) inline in the slot, so adding a name allocates
/// nothing.
#[derive(Clone)]
enum NameKey {
    Inline {
        len: u8,
        bytes: [u8; NAME_INLINE_BYTES],
    },
    Heap(Box<[u8]>),
}

impl NameKey {
    fn new(name: &[u8]) -> NameKey {
        if name.len() <= NAME_INLINE_BYTES {
            let mut bytes = [0u8; NAME_INLINE_BYTES];
            bytes[..name.len()].copy_from_slice(name);
            NameKey::Inline {
                len: name.len() as u8,
                bytes,
            }
        } else {
            NameKey::Heap(name.into())
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            NameKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            NameKey::Heap(b) => b,
        }
    }

    /// Bytes held behind a pointer.
    fn heap_bytes(&self) -> usize {
        match self {
            NameKey::Inline { .. } => 0,
            NameKey::Heap(b) => b.len(),
        }
    }
}

impl Default for NameKey {
    fn default() -> NameKey {
        NameKey::new(b"")
    }
}

impl std::fmt::Debug for NameKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

#[derive(Debug)]
struct Slot {
    name: NameKey,
    /// The name's fingerprint: its key in the index.
    fp: u128,
    path: PathBuf,
    points: Vec<CachedPoint>,
    inflight: Vec<CachedPoint>,
    writing: bool,
    /// Not written before this time (after a failure, or while it waits for a file
    /// creation), unix ms.
    not_before_ms: i64,
    /// The last open found no file: it waits for a create token.
    no_file: bool,
    live: bool,
}

impl Slot {
    /// Written and nothing since: no point cached or in flight. Kept until the next
    /// loop (see the module's notes), not counted in [`Cache::names`].
    fn is_idle(&self) -> bool {
        self.points.is_empty() && self.inflight.is_empty() && !self.writing
    }

    /// Heap bytes of its name (when not inline) and file path.
    fn name_bytes(&self) -> usize {
        self.name.heap_bytes() + self.path.as_os_str().len()
    }
}

/// Runs `f` on one of a slot's point buffers, adding what it grew by to `capacity`
/// ([`Cache::bytes_estimate`]'s running count).
#[inline]
fn growing<R>(
    capacity: &mut usize,
    v: &mut Vec<CachedPoint>,
    f: impl FnOnce(&mut Vec<CachedPoint>) -> R,
) -> R {
    let before = v.capacity();
    let r = f(v);
    *capacity += v.capacity() - before;
    r
}

/// A write taken from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// The slot (give it back to [`Cache::confirm`]).
    pub slot: u32,
}

/// How a write ended, for [`Cache::confirm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// On disk: the points leave the cache.
    Written,
    /// Not written and not to be (a corrupt file): the points leave the cache; the
    /// caller counts them.
    Dropped,
    /// Not written; try again not before `retry_at_ms`. `no_file`: there was no file
    /// and no create token (the name waits for one).
    Retry {
        /// Earliest next try, unix ms.
        retry_at_ms: i64,
        /// The name has no file yet.
        no_file: bool,
    },
}

/// One store's cache on one shard.
#[derive(Debug)]
pub struct Cache {
    /// Name fingerprint -> slot. Open addressing with a prefetch: at 100k names the
    /// index outgrows the CPU caches, and a lookup's miss was 9 % of the store's CPU in
    /// `bench/store.py` (a `HashMap` of names, which cannot be prefetched). Keyed by
    /// [`fingerprint`] as the statsd engine's tables are (128 bits: the odds of two names
    /// sharing one are stated there).
    index: FpIndex,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// This loop's order, popped from the back (so the largest is last).
    queue: Vec<u32>,
    points: u64,
    points_max: u64,
    inflight_points: u64,
    /// When the queue was last rebuilt and found nothing (unix ms, and whether creates
    /// were open): no rebuild before `REBUILD_IDLE_MS` after that, so idle polling does
    /// not walk every name.
    idle_since: Option<(i64, bool)>,
    /// The earliest `not_before_ms` among names waiting only for their retry time.
    next_retry_ms: i64,
    /// Slots kept with no point (written since the loop started).
    idle: usize,
    /// Point capacity of every slot's two buffers (free slots keep theirs), kept as
    /// they change so [`Cache::bytes_estimate`] is O(1): it runs on every counter
    /// publish, and a walk over 100k slots twice a second was a tenth of an idle
    /// store's CPU.
    point_capacity: usize,
    /// Heap bytes of the live slots' names and paths.
    name_bytes: usize,
}

/// After a rebuild found nothing ready, the next waits this long.
const REBUILD_IDLE_MS: i64 = 10;

impl Cache {
    /// An empty cache bounded at `points_max` points.
    pub fn new(points_max: u64) -> Cache {
        Cache {
            index: FpIndex::default(),
            slots: Vec::new(),
            free: Vec::new(),
            queue: Vec::new(),
            points: 0,
            points_max,
            inflight_points: 0,
            idle_since: None,
            next_retry_ms: i64::MAX,
            idle: 0,
            point_capacity: 0,
            name_bytes: 0,
        }
    }

    /// Changes the bound (a reload); points above it stay until written.
    pub fn set_points_max(&mut self, points_max: u64) {
        self.points_max = points_max;
    }

    /// Points held, in flight included.
    pub fn points(&self) -> u64 {
        self.points
    }

    /// Points handed to writes not confirmed yet.
    pub fn inflight_points(&self) -> u64 {
        self.inflight_points
    }

    /// Names holding points (in flight included).
    pub fn names(&self) -> usize {
        self.index.len() - self.idle
    }

    /// Counts a kept empty slot as holding points again (it is about to get some).
    #[inline]
    fn revive(&mut self, id: u32) {
        if self.slots[id as usize].is_idle() {
            self.idle -= 1;
        }
    }

    /// The slot of `name`, if cached.
    pub fn find(&self, name: &[u8]) -> Option<u32> {
        self.find_fp(fingerprint(name))
    }

    /// The slot of the name whose [`fingerprint`] is `fp`, if cached.
    #[inline]
    pub fn find_fp(&self, fp: u128) -> Option<u32> {
        let id = self.index.get(fp)?;
        debug_assert_eq!(self.slots[id as usize].fp, fp);
        Some(id)
    }

    /// Starts loading the index entry a [`find_fp`](Self::find_fp) of `fp` reads.
    #[inline]
    pub fn prefetch(&self, fp: u128) {
        self.index.prefetch(fp);
    }

    /// Adds a point to a cached name.
    #[inline]
    pub fn push(&mut self, slot: u32, point: CachedPoint) -> Result<(), Refused> {
        if self.points >= self.points_max {
            return Err(Refused::Full);
        }
        self.points += 1;
        self.revive(slot);
        growing(
            &mut self.point_capacity,
            &mut self.slots[slot as usize].points,
            |v| v.push(point),
        );
        Ok(())
    }

    /// Adds a name (its file at `path`), `fp` its [`fingerprint`], with its first point;
    /// the caller checked it is absent (with that `fp`).
    pub fn insert(
        &mut self,
        name: &[u8],
        fp: u128,
        path: PathBuf,
        point: CachedPoint,
    ) -> Result<u32, Refused> {
        if self.points >= self.points_max {
            return Err(Refused::Full);
        }
        debug_assert_eq!(fp, fingerprint(name));
        debug_assert!(self.find_fp(fp).is_none());
        let slot = Slot {
            name: NameKey::new(name),
            fp,
            path,
            points: Vec::new(),
            inflight: Vec::new(),
            writing: false,
            not_before_ms: 0,
            no_file: false,
            live: true,
        };
        self.name_bytes += slot.name_bytes();
        let id = match self.free.pop() {
            Some(id) => {
                let old = &mut self.slots[id as usize];
                // Keep the freed slot's buffers.
                let (mut points, mut inflight) = (
                    std::mem::take(&mut old.points),
                    std::mem::take(&mut old.inflight),
                );
                points.clear();
                inflight.clear();
                *old = Slot {
                    points,
                    inflight,
                    ..slot
                };
                id
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(fp, id);
        // Counted idle for the moment, so the push below counts it holding points.
        self.idle += 1;
        self.push(id, point).map(|()| id)
    }

    /// Puts points back in front of a name's newer ones (restored from a previous run's
    /// spill, so anything received since wins), creating the name if needed. Returns
    /// how many were refused because the cache is full.
    pub fn restore(
        &mut self,
        name: &[u8],
        path: impl FnOnce() -> PathBuf,
        points: &[CachedPoint],
    ) -> usize {
        let room = self.points_max.saturating_sub(self.points) as usize;
        let take = points.len().min(room);
        if take == 0 {
            return points.len();
        }
        let fp = fingerprint(name);
        let id = match self.find_fp(fp) {
            Some(id) => id,
            None => match self.insert(name, fp, path(), points[0]) {
                Ok(id) => {
                    // insert counted and pushed the first point; undo, then add all.
                    self.slots[id as usize].points.clear();
                    self.points -= 1;
                    self.idle += 1;
                    id
                }
                Err(Refused::Full) => return points.len(),
            },
        };
        self.revive(id);
        let s = &mut self.slots[id as usize];
        growing(&mut self.point_capacity, &mut s.points, |v| {
            v.splice(0..0, points[..take].iter().copied());
        });
        self.points += take as u64;
        points.len() - take
    }

    /// The next name to write at `now_ms` under carbon's `sorted` strategy, or `None`
    /// when nothing is ready. `creates_open`: a name with no file may be tried (a create
    /// token may be had).
    pub fn next(&mut self, now_ms: i64, creates_open: bool) -> Option<Job> {
        for round in 0..2 {
            while let Some(id) = self.queue.pop() {
                if self.ready(id, now_ms, creates_open) {
                    return Some(self.take(id));
                }
            }
            if round == 0 {
                if let Some((at, open)) = self.idle_since {
                    let soon = now_ms.saturating_sub(at) < REBUILD_IDLE_MS;
                    if open == creates_open && soon && now_ms < self.next_retry_ms {
                        return None;
                    }
                }
                self.rebuild_queue(now_ms, creates_open);
                self.idle_since = self.queue.is_empty().then_some((now_ms, creates_open));
            }
        }
        None
    }

    fn ready(&self, id: u32, now_ms: i64, creates_open: bool) -> bool {
        Self::slot_ready(&self.slots[id as usize], now_ms, creates_open)
    }

    fn slot_ready(s: &Slot, now_ms: i64, creates_open: bool) -> bool {
        s.live
            && !s.writing
            && !s.points.is_empty()
            && s.not_before_ms <= now_ms
            && (creates_open || !s.no_file)
    }

    fn rebuild_queue(&mut self, now_ms: i64, creates_open: bool) {
        self.queue.clear();
        let mut next_retry_ms = i64::MAX;
        for (id, s) in self.slots.iter_mut().enumerate() {
            if !s.live {
                continue;
            }
            let id = id as u32;
            if s.is_idle() {
                // Written and nothing since: the new loop frees it.
                s.live = false;
                self.name_bytes -= s.name_bytes();
                s.name = NameKey::default();
                s.path = PathBuf::new();
                self.index.remove(s.fp);
                self.free.push(id);
                continue;
            }
            if Self::slot_ready(s, now_ms, creates_open) {
                self.queue.push(id);
            } else if !s.writing && !s.points.is_empty() && s.not_before_ms > now_ms {
                next_retry_ms = next_retry_ms.min(s.not_before_ms);
            }
        }
        self.idle = 0;
        self.next_retry_ms = next_retry_ms;
        // Ascending by points, popped from the back: the largest first. Ties by name,
        // so the order is the same on every run.
        let slots = &self.slots;
        self.queue.sort_unstable_by(|&a, &b| {
            let (a, b) = (&slots[a as usize], &slots[b as usize]);
            a.points
                .len()
                .cmp(&b.points.len())
                .then_with(|| b.name.as_bytes().cmp(a.name.as_bytes()))
        });
    }

    fn take(&mut self, id: u32) -> Job {
        let s = &mut self.slots[id as usize];
        debug_assert!(s.inflight.is_empty());
        std::mem::swap(&mut s.points, &mut s.inflight);
        s.writing = true;
        self.inflight_points += s.inflight.len() as u64;
        Job { slot: id }
    }

    /// The name and file of a job.
    pub fn job_name(&self, job: Job) -> (&[u8], &PathBuf) {
        let s = &self.slots[job.slot as usize];
        (s.name.as_bytes(), &s.path)
    }

    /// Whether the job's name had no file at its last try (it waited for a create).
    pub fn job_no_file(&self, job: Job) -> bool {
        self.slots[job.slot as usize].no_file
    }

    /// Whether any point waits that is not in flight.
    pub fn has_waiting(&self) -> bool {
        self.points > self.inflight_points
    }

    /// The points of a job, in arrival order.
    pub fn job_points(&self, job: Job) -> &[CachedPoint] {
        &self.slots[job.slot as usize].inflight
    }

    /// Ends a job.
    pub fn confirm(&mut self, job: Job, outcome: Outcome) {
        let id = job.slot;
        let s = &mut self.slots[id as usize];
        debug_assert!(s.writing);
        s.writing = false;
        let n = s.inflight.len() as u64;
        self.inflight_points -= n;
        match outcome {
            Outcome::Written | Outcome::Dropped => {
                s.inflight.clear();
                s.no_file = false;
                self.points -= n;
            }
            Outcome::Retry {
                retry_at_ms,
                no_file,
            } => {
                // The older points go in front of any that came meanwhile.
                growing(&mut self.point_capacity, &mut s.inflight, |v| {
                    v.append(&mut s.points)
                });
                std::mem::swap(&mut s.points, &mut s.inflight);
                s.not_before_ms = retry_at_ms;
                s.no_file = no_file;
            }
        }
        if matches!(outcome, Outcome::Retry { .. }) {
            self.idle_since = None;
        }
        if self.slots[id as usize].is_idle() {
            // Kept (name, path, buffers) until the next loop: see the module's notes.
            self.idle += 1;
        }
    }

    /// The cached points of `name` (in flight first, then newer), in arrival order.
    pub fn query(&self, name: &[u8], out: &mut Vec<CachedPoint>) {
        if let Some(id) = self.find(name) {
            let s = &self.slots[id as usize];
            out.extend_from_slice(&s.inflight);
            out.extend_from_slice(&s.points);
        }
    }

    /// Every name with its points (in flight first), for the spill at shutdown.
    pub fn each(&self, mut f: impl FnMut(&[u8], &[CachedPoint], &[CachedPoint])) {
        for s in self.slots.iter().filter(|s| s.live) {
            if !s.inflight.is_empty() || !s.points.is_empty() {
                f(s.name.as_bytes(), &s.inflight, &s.points);
            }
        }
    }

    /// Bytes the cache holds, estimated from capacities (O(1): the parts that change
    /// are counted as they change).
    pub fn bytes_estimate(&self) -> u64 {
        let slots = self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.name_bytes
            + self.point_capacity * std::mem::size_of::<CachedPoint>();
        (slots + self.index.bytes() + (self.queue.capacity() + self.free.capacity()) * 4) as u64
    }
}

/// The points of one write as whisper's `update_many` gets them from carbon: sorted by
/// timestamp (stable), the last of equal timestamps kept (`dict(datapoints)`), each
/// timestamp truncated to whole seconds (`int(t)` in whisper).
pub fn to_update(points: &[CachedPoint], out: &mut Vec<(i64, f64)>, sort: &mut Vec<CachedPoint>) {
    sort.clear();
    sort.extend_from_slice(points);
    sort.sort_by(|a, b| a.0.total_cmp(&b.0));
    out.clear();
    for (i, &(ts, v)) in sort.iter().enumerate() {
        if sort.get(i + 1).is_some_and(|n| n.0 == ts) {
            continue; // a later point has the same timestamp: it wins
        }
        out.push((ts as i64, v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(c: &mut Cache, name: &str, ts: f64, v: f64) -> Result<(), Refused> {
        let fp = fingerprint(name.as_bytes());
        match c.find_fp(fp) {
            Some(s) => c.push(s, (ts, v)),
            None => c
                .insert(name.as_bytes(), fp, PathBuf::from(name), (ts, v))
                .map(|_| ()),
        }
    }

    fn written(c: &mut Cache, now: i64) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        while let Some(j) = c.next(now, true) {
            let (n, _) = c.job_name(j);
            out.push((
                String::from_utf8(n.to_vec()).unwrap(),
                c.job_points(j).len(),
            ));
            c.confirm(j, Outcome::Written);
        }
        out
    }

    #[test]
    fn largest_first_each_name_once_per_loop() {
        let mut c = Cache::new(100);
        for (name, n) in [("a", 1), ("b", 3), ("c", 2)] {
            for i in 0..n {
                add(&mut c, name, i as f64, 1.0).unwrap();
            }
        }
        let j = c.next(0, true).unwrap();
        assert_eq!(c.job_name(j).0, b"b");
        // Points that come for b while it is written wait for the next loop.
        add(&mut c, "b", 10.0, 2.0).unwrap();
        c.confirm(j, Outcome::Written);
        assert_eq!(
            written(&mut c, 0),
            [("c".into(), 2), ("a".into(), 1), ("b".into(), 1)]
        );
        assert_eq!((c.points(), c.names()), (0, 0));
        assert!(c.next(0, true).is_none());
    }

    #[test]
    fn in_flight_points_stay_visible_and_a_retry_keeps_newer_points_last() {
        let mut c = Cache::new(100);
        add(&mut c, "x", 1.0, 1.0).unwrap();
        add(&mut c, "x", 2.0, 2.0).unwrap();
        let j = c.next(0, true).unwrap();
        add(&mut c, "x", 1.0, 9.0).unwrap();
        let mut q = Vec::new();
        c.query(b"x", &mut q);
        assert_eq!(q, [(1.0, 1.0), (2.0, 2.0), (1.0, 9.0)]);
        assert_eq!(c.inflight_points(), 2);
        c.confirm(
            j,
            Outcome::Retry {
                retry_at_ms: 1000,
                no_file: false,
            },
        );
        q.clear();
        c.query(b"x", &mut q);
        assert_eq!(q, [(1.0, 1.0), (2.0, 2.0), (1.0, 9.0)]);
        // Not before its retry time.
        assert!(c.next(999, true).is_none());
        let j = c.next(1000, true).unwrap();
        let mut up = Vec::new();
        to_update(c.job_points(j), &mut up, &mut Vec::new());
        assert_eq!(up, [(1, 9.0), (2, 2.0)]);
        c.confirm(j, Outcome::Written);
        assert_eq!(c.points(), 0);
    }

    #[test]
    fn bounded_and_names_without_files_wait_for_creates() {
        let mut c = Cache::new(3);
        add(&mut c, "a", 1.0, 1.0).unwrap();
        add(&mut c, "a", 2.0, 1.0).unwrap();
        add(&mut c, "b", 1.0, 1.0).unwrap();
        assert_eq!(add(&mut c, "c", 1.0, 1.0), Err(Refused::Full));
        assert_eq!(add(&mut c, "a", 3.0, 1.0), Err(Refused::Full));
        let j = c.next(0, true).unwrap();
        assert_eq!(c.job_name(j).0, b"a");
        c.confirm(
            j,
            Outcome::Retry {
                retry_at_ms: 0,
                no_file: true,
            },
        );
        // While creates are closed, only b (which has a file) is written.
        assert_eq!(written_closed(&mut c), ["b"]);
        assert_eq!(written(&mut c, 0), [("a".into(), 2)]);
    }

    fn written_closed(c: &mut Cache) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(j) = c.next(0, false) {
            out.push(String::from_utf8(c.job_name(j).0.to_vec()).unwrap());
            c.confirm(j, Outcome::Written);
        }
        out
    }

    #[test]
    fn restore_goes_in_front_and_respects_the_bound() {
        let mut c = Cache::new(4);
        add(&mut c, "a", 5.0, 5.0).unwrap();
        assert_eq!(c.restore(b"a", || "a".into(), &[(5.0, 1.0), (4.0, 4.0)]), 0);
        assert_eq!(c.restore(b"b", || "b".into(), &[(1.0, 1.0), (2.0, 2.0)]), 1);
        let mut q = Vec::new();
        c.query(b"a", &mut q);
        assert_eq!(q, [(5.0, 1.0), (4.0, 4.0), (5.0, 5.0)]);
        let mut up = Vec::new();
        to_update(&q, &mut up, &mut Vec::new());
        assert_eq!(up, [(4, 4.0), (5, 5.0)]);
        assert_eq!(c.points(), 4);
    }

    #[test]
    fn a_written_name_is_kept_until_the_next_loop() {
        let mut c = Cache::new(100);
        for name in ["a", "b"] {
            add(&mut c, name, 1.0, 1.0).unwrap();
        }
        let (ja, jb) = (c.next(0, true).unwrap(), c.next(0, true).unwrap());
        c.confirm(ja, Outcome::Written);
        c.confirm(jb, Outcome::Written);
        // Both kept, neither counted as holding points.
        assert_eq!((c.names(), c.points()), (0, 0));
        let a = c.find(b"a").unwrap();
        assert!(c.find(b"b").is_some());
        // a gets a point before the next loop: the same slot takes it.
        add(&mut c, "a", 2.0, 2.0).unwrap();
        assert_eq!((c.find(b"a"), c.names()), (Some(a), 1));
        // The next loop frees b (nothing since its write) and writes a.
        let j = c.next(20, true).unwrap();
        assert_eq!((c.job_name(j).0, c.find(b"b")), (&b"a"[..], None));
        c.confirm(j, Outcome::Written);
        // Restores into the kept slot and into a new one count right.
        assert_eq!(c.restore(b"a", || "a".into(), &[(1.0, 1.0)]), 0);
        assert_eq!(c.find(b"a"), Some(a));
        assert_eq!(c.restore(b"n", || "n".into(), &[(1.0, 1.0)]), 0);
        assert_eq!((c.names(), c.points()), (2, 2));
        let mut seen = 0;
        c.each(|_, _, _| seen += 1);
        assert_eq!(seen, 2);
        let (j1, j2) = (c.next(40, true).unwrap(), c.next(40, true).unwrap());
        c.confirm(j1, Outcome::Written);
        c.confirm(j2, Outcome::Written);
        // A spill sees only names with points.
        c.each(|_, _, _| panic!("an empty name spilled"));
        assert!(c.next(60, true).is_none());
        assert_eq!((c.names(), c.points()), (0, 0));
        assert!(c.find(b"a").is_none() && c.find(b"n").is_none());
    }

    #[test]
    fn names_come_and_go_through_many_loops() {
        // The index under churn: names added, written, freed by a later loop and added
        // again, with the freed slots reused; every name found exactly while cached.
        let mut c = Cache::new(1_000_000);
        let mut rng = crate::tools::SplitMix64(11);
        let mut now = 0;
        for round in 0..20 {
            for _ in 0..400 {
                let n = format!("m.{}", rng.below(3000));
                add(&mut c, &n, round as f64, 1.0).unwrap();
            }
            // Write about half the loop.
            now += 20;
            for _ in 0..c.names() / 2 {
                let Some(j) = c.next(now, true) else { break };
                c.confirm(j, Outcome::Written);
            }
            let mut held = std::collections::HashSet::new();
            c.each(|name, _, _| {
                held.insert(name.to_vec());
            });
            assert_eq!(held.len(), c.names(), "round {round}");
            for i in 0..3000 {
                let n = format!("m.{i}");
                if held.contains(n.as_bytes()) {
                    let slot = c.find(n.as_bytes()).expect("a cached name is found");
                    assert_eq!(c.slots[slot as usize].name.as_bytes(), n.as_bytes());
                }
            }
        }
        // Everything written, two loops later nothing is kept.
        while let Some(j) = c.next(now, true) {
            c.confirm(j, Outcome::Written);
        }
        now += 20;
        assert!(c.next(now, true).is_none());
        assert_eq!((c.names(), c.points(), c.index.len()), (0, 0, 0));
    }

    #[test]
    fn long_and_short_names_are_found_alike() {
        let mut c = Cache::new(100);
        let long = "a.".repeat(40);
        let edge = "b".repeat(NAME_INLINE_BYTES);
        for name in [long.as_str(), edge.as_str(), "", "x"] {
            add(&mut c, name, 1.0, 1.0).unwrap();
            add(&mut c, name, 2.0, 1.0).unwrap();
        }
        assert_eq!((c.names(), c.points()), (4, 8));
        for name in [long.as_str(), edge.as_str(), "", "x"] {
            let mut q = Vec::new();
            c.query(name.as_bytes(), &mut q);
            assert_eq!(q.len(), 2, "{name}");
        }
        assert!(c.find(&long.as_bytes()[1..]).is_none());
        let mut names = Vec::new();
        c.each(|n, _, p| names.push((n.to_vec(), p.len())));
        names.sort();
        assert_eq!(names[1], (long.into_bytes(), 2));
    }

    #[test]
    fn fractional_timestamps_sort_as_floats_like_carbon() {
        // carbon keys its cache by float: 10.7 and 10.3 are two points; sorted, both
        // become 10 for whisper, which keeps the first (10.3's value).
        let mut up = Vec::new();
        to_update(&[(10.7, 7.0), (10.3, 3.0)], &mut up, &mut Vec::new());
        assert_eq!(up, [(10, 3.0), (10, 7.0)]);
    }
    /// What [`Cache::bytes_estimate`] counts as it goes, counted by a walk.
    fn walked_bytes(c: &Cache) -> u64 {
        let per_point = std::mem::size_of::<CachedPoint>();
        let slots: usize = c
            .slots
            .iter()
            .map(|s| s.name_bytes() + (s.points.capacity() + s.inflight.capacity()) * per_point)
            .sum();
        (slots
            + c.slots.capacity() * std::mem::size_of::<Slot>()
            + c.index.bytes()
            + (c.queue.capacity() + c.free.capacity()) * 4) as u64
    }

    #[test]
    fn the_bytes_counted_as_they_change_match_a_walk() {
        let mut c = Cache::new(10_000);
        let long = "l.".repeat(40);
        let mut now = 1_000;
        for round in 0..6 {
            for i in 0..50 {
                let name = if i % 7 == 0 {
                    format!("{long}{i}")
                } else {
                    format!("n.{i}")
                };
                for k in 0..(i % 5 + round) {
                    add(&mut c, &name, k as f64, 1.0).unwrap();
                }
            }
            c.restore(b"restored.name", || PathBuf::from("r"), &[(1.0, 1.0); 9]);
            assert_eq!(c.bytes_estimate(), walked_bytes(&c), "round {round}");
            let mut n = 0;
            while let Some(j) = c.next(now, true) {
                // Some writes fail and come back in front of newer points.
                let outcome = if n % 3 == 0 {
                    Outcome::Retry {
                        retry_at_ms: now,
                        no_file: false,
                    }
                } else {
                    Outcome::Written
                };
                if n % 3 == 0 {
                    let name = String::from_utf8(c.job_name(j).0.to_vec()).unwrap();
                    add(&mut c, &name, 99.0, 1.0).unwrap();
                }
                c.confirm(j, outcome);
                n += 1;
            }
            assert_eq!(c.bytes_estimate(), walked_bytes(&c), "round {round}");
            now += 20 * (round + 1);
        }
    }
}
