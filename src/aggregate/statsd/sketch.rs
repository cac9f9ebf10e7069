//! The timer sketch used once a timer holds `timer_values_max` raw values in one interval.
//!
//! A DDSketch-style log-bucket histogram (Masson, Rim, Lee, VLDB 2019): a positive value
//! `v` goes to bucket `i = ceil(log_g(v))` with `g = (1 + a) / (1 - a)`, and every value
//! in bucket `i` is represented by `2 g^i / (g + 1)`, which is within relative error `a`
//! of it. So any rank statistic read from the sketch (a percentile's `upper_P`/`lower_P`,
//! the median) is within relative error `a` of a value that holds that rank, whatever the
//! distribution; sums over the lowest or highest k values (`sum_P`, `mean_P`) are within
//! `a` too, since each term is. Why this and not t-digest: the bound is a guarantee rather
//! than an empirical accuracy, two sketches with the same `a` merge by adding bucket
//! counts (exactly, in any order: what a cross-shard or cross-node merge needs), and
//! insert is one `ln` and an increment with no allocation once the range is covered.
//!
//! Values at or below [`MIN_POSITIVE`] (zero, and the negative timings Etsy accepts only
//! through its `" ms"` type quirk) are counted in one zero bucket represented by 0.
//! The bucket array is bounded by `buckets_max`; past it the lowest buckets are folded
//! together (their representative becomes the lowest kept bucket's), which keeps the
//! high percentiles, the ones timers are read for, within `a`.

/// Smallest value given its own bucket; smaller ones are counted as 0.
pub const MIN_POSITIVE: f64 = 1e-9;

/// A mergeable log-bucket sketch with relative error `a`.
#[derive(Clone, Debug)]
pub struct Sketch {
    gamma_ln: f64,
    gamma: f64,
    /// Index of `counts[0]`.
    offset: i32,
    counts: Vec<u64>,
    zero: u64,
    n: u64,
    buckets_max: usize,
}

impl Sketch {
    /// An empty sketch with relative error `relative_error` (0 < a < 1) and at most
    /// `buckets_max` buckets.
    pub fn new(relative_error: f64, buckets_max: usize) -> Sketch {
        assert!(relative_error > 0.0 && relative_error < 1.0);
        assert!(buckets_max >= 2);
        let gamma = (1.0 + relative_error) / (1.0 - relative_error);
        Sketch {
            gamma_ln: gamma.ln(),
            gamma,
            offset: 0,
            counts: Vec::new(),
            zero: 0,
            n: 0,
            buckets_max,
        }
    }

    /// Heap bytes of the buckets.
    pub fn bytes(&self) -> usize {
        self.counts.capacity() * std::mem::size_of::<u64>()
    }

    /// Values counted.
    pub fn len(&self) -> u64 {
        self.n
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    fn index_of(&self, v: f64) -> i32 {
        (v.ln() / self.gamma_ln).ceil() as i32
    }

    /// The value bucket `i` stands for.
    fn representative(&self, i: i32) -> f64 {
        2.0 * self.gamma.powi(i) / (self.gamma + 1.0)
    }

    /// Counts one value.
    pub fn insert(&mut self, v: f64) {
        self.insert_n(v, 1);
    }

    fn insert_n(&mut self, v: f64, c: u64) {
        self.n += c;
        if v.is_nan() || v <= MIN_POSITIVE {
            self.zero += c;
            return;
        }
        let i = self.index_of(v.min(f64::MAX));
        self.add_at(i, c);
    }

    fn add_at(&mut self, i: i32, c: u64) {
        if self.counts.is_empty() {
            self.offset = i;
            self.counts.push(0);
        }
        if i < self.offset {
            let grow = (self.offset - i) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = i;
        } else if i >= self.offset + self.counts.len() as i32 {
            let new_len = (i - self.offset + 1) as usize;
            self.counts.resize(new_len, 0);
        }
        self.counts[(i - self.offset) as usize] += c;
        if self.counts.len() > self.buckets_max {
            // Fold the lowest buckets into the lowest one kept.
            let excess = self.counts.len() - self.buckets_max;
            let folded: u64 = self.counts[..=excess].iter().sum();
            self.counts.drain(..excess);
            self.counts[0] = folded;
            self.offset += excess as i32;
        }
    }

    /// Adds every count of `other` (same relative error) to this sketch.
    pub fn merge(&mut self, other: &Sketch) {
        assert!(
            (self.gamma - other.gamma).abs() < 1e-12,
            "merging sketches with different relative errors"
        );
        self.n += other.zero;
        self.zero += other.zero;
        for (k, &c) in other.counts.iter().enumerate() {
            if c > 0 {
                self.n += c;
                self.add_at(other.offset + k as i32, c);
            }
        }
    }

    /// Every non-empty bucket as `(representative, count)`, lowest first.
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let zero = (self.zero > 0).then_some((0.0, self.zero));
        zero.into_iter().chain(
            self.counts
                .iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(|(k, &c)| (self.representative(self.offset + k as i32), c)),
        )
    }

    /// The representative of the value at 0-based rank `r` (ascending), `r < len()`.
    pub fn value_at_rank(&self, r: u64) -> f64 {
        debug_assert!(r < self.n);
        let mut seen = 0;
        for (v, c) in self.buckets() {
            seen += c;
            if r < seen {
                return v;
            }
        }
        0.0
    }

    /// Sum and sum of squares of the representatives of the lowest `k` values.
    pub fn sums_lowest(&self, k: u64) -> (f64, f64) {
        let mut left = k;
        let (mut s, mut sq) = (0.0, 0.0);
        for (v, c) in self.buckets() {
            let take = c.min(left);
            left -= take;
            s += v * take as f64;
            sq += v * v * take as f64;
        }
        (s, sq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_within_relative_error() {
        let a = 0.01;
        let mut s = Sketch::new(a, 4096);
        let mut exact: Vec<f64> = (0..20_000)
            .map(|i| ((i * 7919) % 20_000) as f64 * 0.37 + 0.5)
            .collect();
        for &v in &exact {
            s.insert(v);
        }
        exact.sort_by(f64::total_cmp);
        for r in [0, 1, 100, 9_999, 18_000, 19_799, 19_999] {
            let got = s.value_at_rank(r as u64);
            let want = exact[r];
            assert!((got - want).abs() <= a * want, "rank {r}: {got} vs {want}");
        }
        let (sum, _) = s.sums_lowest(20_000);
        let want: f64 = exact.iter().sum();
        assert!((sum - want).abs() <= a * want);
    }

    #[test]
    fn merge_equals_inserting_everything() {
        let mut a = Sketch::new(0.02, 4096);
        let mut b = Sketch::new(0.02, 4096);
        let mut all = Sketch::new(0.02, 4096);
        for i in 0..1000 {
            let v = f64::from(i) * 1.3;
            if i % 3 == 0 {
                a.insert(v);
            } else {
                b.insert(v);
            }
            all.insert(v);
        }
        a.merge(&b);
        assert_eq!(a.len(), all.len());
        for r in [0, 10, 500, 999] {
            assert_eq!(a.value_at_rank(r), all.value_at_rank(r));
        }
    }

    #[test]
    fn bucket_count_is_bounded() {
        let mut s = Sketch::new(0.01, 64);
        for e in -300..300 {
            s.insert(10f64.powi(e));
        }
        assert!(s.counts.len() <= 64);
        assert_eq!(s.len(), 600);
        // The top values stay accurate.
        let top = s.value_at_rank(599);
        assert!((top - 1e299).abs() <= 0.01 * 1e299);
    }
}
