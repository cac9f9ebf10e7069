//! Process-wide rate limits for a store's writers (`writes_per_second`,
//! `creates_per_minute`), shared by every shard.
//!
//! A limit of N per window W is a schedule, not a bucket: take k is due at k·W/N after
//! the last idle spell (the generic cell rate algorithm, with a tolerance of B
//! milliseconds, at least the clock's grain of one). At most B milliseconds' share
//! accumulates while idle, so any span of L milliseconds, aligned or not, holds at most
//! `(L + B)·N/W + 1` takes: any minute holds the limit's minute plus at most B
//! milliseconds' share and one, and a writer with a backlog gets exactly the rate. The
//! writers take in batches, once per shard tick, so `writes_per_second` has a tolerance of
//! a few ticks ([`WRITE_BURST_MS`], 50 ms): 3000 per second is at most 3151 in a second
//! that follows an idle spell, and at most 180151 in any minute; with a backlog each
//! second holds the rate, give or take a tick's share.
//! (carbon's token buckets let a full bucket through on top of the rate: up to 2N
//! creates in a minute.)
//!
//! Shards share a limit through one atomic word, the theoretical arrival time of the
//! next take; a take is a compare-and-swap, nothing locks or waits on another thread.
//! The clock comes in as an argument, so the pacing is tested exactly.

use std::sync::atomic::{AtomicU64, Ordering};

/// Largest N per window a limit takes (keeps its arithmetic in 64 bits for years).
pub const PER_WINDOW_MAX: u64 = 10_000_000;

/// The tolerance of `writes_per_second`: the writers take what accrued since their last
/// batch, one batch per shard tick (20 ms at most), so a little over two ticks' share
/// (timers run late) may go at once.
pub const WRITE_BURST_MS: u64 = 50;

/// N takes per window of `window_ms`, paced; N = 0 is unlimited.
#[derive(Debug)]
pub struct RateLimit {
    per_window: u64,
    window_ms: u64,
    /// Tolerance, in units: takes due up to this far ahead may go now.
    tolerance: u64,
    /// Times are kept in units of 1/N ms from here (a take costs `window_ms` units).
    base_ms: u64,
    /// When the next take is due, in units.
    due: AtomicU64,
}

impl RateLimit {
    /// A limit of `per_window` per `window_ms` (0: unlimited) with a tolerance of
    /// `burst_ms` (at least 1), counted from `now_ms`.
    pub fn new(per_window: u64, window_ms: u64, burst_ms: u64, now_ms: u64) -> RateLimit {
        assert!(window_ms > 0, "a window has a length");
        assert!(per_window <= PER_WINDOW_MAX, "validated by the config");
        assert!(burst_ms <= window_ms, "a tolerance within the window");
        RateLimit {
            per_window,
            window_ms,
            // What is due within the next `burst_ms` may go now.
            tolerance: (burst_ms.max(1) * per_window).saturating_sub(1),
            base_ms: now_ms,
            due: AtomicU64::new(0),
        }
    }

    /// `writes_per_second`, taken in batches ([`WRITE_BURST_MS`]).
    pub fn per_second(n: u64, now_ms: u64) -> RateLimit {
        RateLimit::new(n, 1_000, WRITE_BURST_MS, now_ms)
    }

    /// `creates_per_minute`.
    pub fn per_minute(n: u64, now_ms: u64) -> RateLimit {
        RateLimit::new(n, 60_000, 1, now_ms)
    }

    /// The configured N (0: unlimited).
    pub fn per_window(&self) -> u64 {
        self.per_window
    }

    /// Takes one at `now_ms` (unix ms), or says how many ms until one may be had.
    pub fn try_take(&self, now_ms: u64) -> Result<(), u64> {
        if self.per_window == 0 {
            return Ok(());
        }
        let n = self.per_window;
        let now = now_ms.saturating_sub(self.base_ms) * n;
        let limit = now + self.tolerance;
        let mut due = self.due.load(Ordering::Relaxed);
        loop {
            if due > limit {
                return Err((due - limit).div_ceil(n));
            }
            let next = due.max(now) + self.window_ms;
            match self
                .due
                .compare_exchange_weak(due, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(d) => due = d,
            }
        }
    }

    /// Takes up to `want` at `now_ms` at once (a writer's batch): as many as are due
    /// within the tolerance. 0 when none is.
    pub fn take_up_to(&self, now_ms: u64, want: u64) -> u64 {
        if self.per_window == 0 || want == 0 {
            return want;
        }
        let n = self.per_window;
        let now = now_ms.saturating_sub(self.base_ms) * n;
        let limit = now + self.tolerance;
        let mut due = self.due.load(Ordering::Relaxed);
        loop {
            if due > limit {
                return 0;
            }
            // Take i (from 0) is due at base + i·window: the ones due by the limit.
            let base = due.max(now);
            let k = want.min((limit - base) / self.window_ms + 1);
            let next = base + k * self.window_ms;
            match self
                .due
                .compare_exchange_weak(due, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return k,
                Err(d) => due = d,
            }
        }
    }

    /// Returns `k` takes not used after all (a batch found fewer names ready than it
    /// took): as if they had not been taken.
    pub fn give_back(&self, k: u64) {
        if self.per_window == 0 || k == 0 {
            return;
        }
        let _ = self
            .due
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                Some(d.saturating_sub(k * self.window_ms))
            });
    }

    /// Whether one could be taken at `now_ms`, without taking it.
    pub fn available(&self, now_ms: u64) -> bool {
        if self.per_window == 0 {
            return true;
        }
        let n = self.per_window;
        let now = now_ms.saturating_sub(self.base_ms) * n;
        self.due.load(Ordering::Relaxed) <= now + self.tolerance
    }
}

/// Seconds [`SecondCounts`] remembers.
const SECONDS_KEPT: usize = 64;

/// Events per wall-clock second over the last minute, shared by the shards (the store's
/// update_many calls: what `writes_per_second` let through, second by second). Each
/// slot is one atomic word, the second in the high half and its count in the low.
#[derive(Debug)]
pub struct SecondCounts {
    slots: [AtomicU64; SECONDS_KEPT],
}

impl Default for SecondCounts {
    fn default() -> SecondCounts {
        SecondCounts {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl SecondCounts {
    /// Counts `n` in unix second `second`.
    pub fn add(&self, second: u64, n: u64) {
        let slot = &self.slots[second as usize % SECONDS_KEPT];
        let second = second & 0xffff_ffff;
        let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
            match (w >> 32).cmp(&second) {
                std::cmp::Ordering::Equal => Some(w + n),
                std::cmp::Ordering::Less => Some(second << 32 | n),
                // A newer second holds the slot: this one is over a minute old.
                std::cmp::Ordering::Greater => None,
            }
        });
    }

    /// The counts of the `n` (at most 60) whole seconds before `now_s`, oldest first.
    pub fn last(&self, now_s: u64, n: u64) -> Vec<(u64, u64)> {
        let n = n.min(60);
        (now_s.saturating_sub(n)..now_s)
            .map(|s| {
                let w = self.slots[s as usize % SECONDS_KEPT].load(Ordering::Relaxed);
                (
                    s,
                    if w >> 32 == s & 0xffff_ffff {
                        w & 0xffff_ffff
                    } else {
                        0
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes as many as allowed every ms over `ms` milliseconds from `start`, skipping
    /// `idle` (start, len) spells; returns the take times.
    fn drain(l: &RateLimit, start: u64, ms: u64, idle: (u64, u64)) -> Vec<u64> {
        let mut at = Vec::new();
        for t in start..start + ms {
            if t >= idle.0 && t < idle.0 + idle.1 {
                continue;
            }
            while l.try_take(t).is_ok() {
                at.push(t);
                assert!(at.len() < 10_000_000);
            }
        }
        at
    }

    #[test]
    fn the_rate_in_any_span_idle_or_not() {
        for (n, w) in [
            (1200, 1000),
            (7, 1000),
            (600, 60_000),
            (1, 60_000),
            (3000, 1000),
        ] {
            let start = 1_700_000_000_000 + w / 3;
            let l = RateLimit::new(n, w, 1, start - 12_345);
            // A backlog the whole time, but for an idle spell in the middle.
            let idle = (start + 2 * w + w / 2, w * 3 / 4);
            let at = drain(&l, start, 5 * w, idle);
            // Every w-long span holds at most n + n/w + 1 (one ms's share and one).
            let bound = n + n.div_ceil(w) + 1;
            let mut j = 0;
            for i in 0..at.len() {
                while at[i] - at[j] >= w {
                    j += 1;
                }
                assert!(
                    (i - j + 1) as u64 <= bound,
                    "n={n} w={w}: {} in the span ending {}",
                    i - j + 1,
                    at[i] - start
                );
            }
            // With a backlog, the rate is met: the first two windows hold n each (± the
            // ms grain).
            let first = at.iter().filter(|&&t| t < start + w).count() as u64;
            let second = at
                .iter()
                .filter(|&&t| t >= start + w && t < start + 2 * w)
                .count() as u64;
            assert!(first.abs_diff(n) <= n.div_ceil(w), "n={n} w={w}: {first}");
            assert!(second.abs_diff(n) <= n.div_ceil(w), "n={n} w={w}: {second}");
        }
    }

    #[test]
    fn wait_hint_is_when_the_next_take_succeeds() {
        let l = RateLimit::new(4, 1000, 1, 0); // one per 250 ms
        assert_eq!(l.try_take(10_000), Ok(()));
        let wait = l.try_take(10_000).unwrap_err();
        assert_eq!(wait, 250);
        assert!(l.try_take(10_000 + wait - 1).is_err());
        assert!(l.available(10_000 + wait));
        assert_eq!(l.try_take(10_000 + wait), Ok(()));
        let l = RateLimit::new(1, 1000, 1, 0);
        l.try_take(10_000).unwrap();
        assert_eq!(l.try_take(10_400), Err(600));
        assert!(RateLimit::per_second(0, 0).try_take(0).is_ok());
    }

    #[test]
    fn shared_between_threads_never_over() {
        let l = std::sync::Arc::new(RateLimit::new(1000, 1000, 1, 0));
        let taken: u64 = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    (0..5_000u64).filter(|_| l.try_take(7_999).is_ok()).count() as u64
                })
            })
            .map(|h| h.join().unwrap())
            .sum();
        // One millisecond's share at 1000/s.
        assert_eq!(taken, 1);
    }

    /// Batches every `tick` ms take what accrued: the backlog gets the rate, and any
    /// second holds at most the limit plus the tolerance's share and one.
    #[test]
    fn batches_get_the_rate_within_the_tolerance() {
        for (n, tick, burst) in [(3000, 5, 10), (1000, 5, 10), (8, 5, 10), (40_000, 7, 10)] {
            let start = 1_700_000_000_000u64 + 333;
            let l = RateLimit::new(n, 1000, burst, start - 5_000);
            let mut at = Vec::new();
            let mut t = start;
            while t < start + 5_000 {
                let k = l.take_up_to(t, u64::MAX);
                at.extend(std::iter::repeat_n(t, k as usize));
                // A batch that found fewer names: gives some back, every third tick.
                if (t / tick) % 3 == 0 && k > 1 {
                    l.give_back(1);
                    at.pop();
                }
                t += tick;
            }
            let bound = n + (burst * n).div_ceil(1000) + 1;
            let mut j = 0;
            for i in 0..at.len() {
                while at[i] - at[j] >= 1000 {
                    j += 1;
                }
                assert!(
                    (i - j + 1) as u64 <= bound,
                    "n={n} tick={tick}: {}",
                    i - j + 1
                );
            }
            for s in 1..4 {
                let c = at
                    .iter()
                    .filter(|&&x| x >= start + s * 1000 && x < start + (s + 1) * 1000)
                    .count() as u64;
                assert!(c.abs_diff(n) <= (tick * n).div_ceil(1000) + 1, "n={n}: {c}");
            }
        }
        // Unlimited: everything asked for.
        assert_eq!(RateLimit::per_second(0, 0).take_up_to(5, 17), 17);
        // None due: none taken, and the one-at-a-time path agrees.
        let l = RateLimit::new(10, 1000, 10, 0);
        assert_eq!(l.take_up_to(1_000, 5), 1);
        assert_eq!(l.take_up_to(1_000, 5), 0);
        assert!(!l.available(1_000));
        assert!(l.try_take(1_090).is_err());
        assert!(l.available(1_091));
    }

    #[test]
    fn second_counts_keep_the_last_minute() {
        let c = SecondCounts::default();
        c.add(1_000, 2);
        c.add(1_000, 3);
        c.add(1_001, 1);
        // A second more than the ring ago does not clobber a newer one.
        c.add(1_001 - 64, 7);
        assert_eq!(c.last(1_002, 3), [(999, 0), (1_000, 5), (1_001, 1)]);
        c.add(1_064, 4);
        assert_eq!(c.last(1_065, 65).len(), 60);
        assert_eq!(c.last(1_065, 1), [(1_064, 4)]);
        assert_eq!(c.last(1_001, 1), [(1_000, 0)]);
    }
}
