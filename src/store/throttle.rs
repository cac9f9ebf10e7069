//! Process-wide rate limits for a store's writers (`writes_per_second`,
//! `creates_per_minute`), shared by every shard.
//!
//! A limit of N per window W is a schedule, not a bucket: take k is due at k·W/N after
//! the last idle spell (the generic cell rate algorithm, with a tolerance of one
//! millisecond, the clock's grain). Nothing accumulates while idle, so any span of L
//! milliseconds, aligned or not, holds at most `(L + 1)·N/W + 1` takes: any minute holds
//! the limit's minute plus at most one millisecond's share and one, and a writer with a
//! backlog gets exactly the rate. (carbon's token buckets let a full bucket through on
//! top of the rate: up to 2N creates in a minute.)
//!
//! Shards share a limit through one atomic word, the theoretical arrival time of the
//! next take; a take is a compare-and-swap, nothing locks or waits on another thread.
//! The clock comes in as an argument, so the pacing is tested exactly.

use std::sync::atomic::{AtomicU64, Ordering};

/// Largest N per window a limit takes (keeps its arithmetic in 64 bits for years).
pub const PER_WINDOW_MAX: u64 = 10_000_000;

/// N takes per window of `window_ms`, paced; N = 0 is unlimited.
#[derive(Debug)]
pub struct RateLimit {
    per_window: u64,
    window_ms: u64,
    /// Times are kept in units of 1/N ms from here (a take costs `window_ms` units).
    base_ms: u64,
    /// When the next take is due, in units.
    due: AtomicU64,
}

impl RateLimit {
    /// A limit of `per_window` per `window_ms` (0: unlimited), counted from `now_ms`.
    pub fn new(per_window: u64, window_ms: u64, now_ms: u64) -> RateLimit {
        assert!(window_ms > 0, "a window has a length");
        assert!(per_window <= PER_WINDOW_MAX, "validated by the config");
        RateLimit {
            per_window,
            window_ms,
            base_ms: now_ms,
            due: AtomicU64::new(0),
        }
    }

    /// `writes_per_second`.
    pub fn per_second(n: u64, now_ms: u64) -> RateLimit {
        RateLimit::new(n, 1_000, now_ms)
    }

    /// `creates_per_minute`.
    pub fn per_minute(n: u64, now_ms: u64) -> RateLimit {
        RateLimit::new(n, 60_000, now_ms)
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
        // Tolerance: what is due within this millisecond may go now.
        let limit = now + n - 1;
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

    /// Whether one could be taken at `now_ms`, without taking it.
    pub fn available(&self, now_ms: u64) -> bool {
        if self.per_window == 0 {
            return true;
        }
        let n = self.per_window;
        let now = now_ms.saturating_sub(self.base_ms) * n;
        self.due.load(Ordering::Relaxed) < now + n
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
            let l = RateLimit::new(n, w, start - 12_345);
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
        let l = RateLimit::per_second(4, 0); // one per 250 ms
        assert_eq!(l.try_take(10_000), Ok(()));
        let wait = l.try_take(10_000).unwrap_err();
        assert_eq!(wait, 250);
        assert!(l.try_take(10_000 + wait - 1).is_err());
        assert!(l.available(10_000 + wait));
        assert_eq!(l.try_take(10_000 + wait), Ok(()));
        let l = RateLimit::per_second(1, 0);
        l.try_take(10_000).unwrap();
        assert_eq!(l.try_take(10_400), Err(600));
        assert!(RateLimit::per_second(0, 0).try_take(0).is_ok());
    }

    #[test]
    fn shared_between_threads_never_over() {
        let l = std::sync::Arc::new(RateLimit::per_second(1000, 0));
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
}
