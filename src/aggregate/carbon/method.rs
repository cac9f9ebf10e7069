//! Aggregation methods and their exact arithmetic.
//!
//! carbon-aggregator 1.1.10's methods (`AGGREGATION_METHODS` in
//! `lib/carbon/aggregator/rules.py`) compute as carbon does on CPython 3.11:
//! - `sum`: Python's `sum(values)`, left to right in arrival order from `0` (3.11 adds
//!   plainly; 3.12+ would use compensated summation and can differ in the last bit);
//! - `avg`: `float(sum) / len`;
//! - `min`, `max`: Python's builtins (the first of equal values wins);
//! - `count`: `len(values)`, an integer;
//! - `p50 p75 p80 p90 p95 p99 p999`: carbon's linear interpolation on a stable sort,
//!   rank `factor * (n - 1)`, `v[l] * (r - rank) + v[r] * (rank - l)`.
//!
//! Methods carbon lacks follow carbon-c-relay 3.x (`aggregator.c`):
//! - `median`: c-relay's nearest rank at 50, `k = (int)(0.5 * n + 0.9)`, `v[k - 1]`
//!   (not carbon's `p50`, which interpolates). c-relay 3.7.3 sorts with a comparator
//!   that truncates the difference of two doubles to `int`, so values less than 1
//!   apart can stay out of order and its median is then another value; here the sort
//!   is exact, so the two agree when values differ by at least 1 or are equal;
//! - `variance`: population variance, `sum((v - sum / n)^2) / n` over the values in
//!   arrival order, `sum` the running sum; the square is a product where c-relay
//!   calls `pow(d, 2)` (glibc's pow is within 0.52 ULP of it);
//! - `stddev`: the square root of that;
//! - `last`: the value that arrived last (carbon-relay-ng's `last`; c-relay has none).

/// How a bucket's values become one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Python `sum`.
    Sum,
    /// `float(sum) / len`.
    Avg,
    /// Python `min`.
    Min,
    /// Python `max`.
    Max,
    /// Number of values, written as an integer.
    Count,
    /// The value that arrived last.
    Last,
    /// carbon-c-relay's median (nearest rank).
    Median,
    /// carbon's `pNN`, the factor in thousandths (`p999` is 999, `p50` is 500).
    Percentile(u16),
    /// Population standard deviation (carbon-c-relay's `stddev`).
    Stddev,
    /// Population variance (carbon-c-relay's `variance`).
    Variance,
}

/// One computed value: carbon writes integers with `%d` and floats with `%.10f`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A Python float.
    Float(f64),
    /// A Python int (`count`).
    Int(u64),
}

const PERCENTILES: &[(&str, u16)] = &[
    ("p50", 500),
    ("p75", 750),
    ("p80", 800),
    ("p90", 900),
    ("p95", 950),
    ("p99", 990),
    ("p999", 999),
];

impl Method {
    /// Every name a rule may use.
    pub const NAMES: &'static [&'static str] = &[
        "sum", "avg", "min", "max", "count", "last", "median", "stddev", "variance", "p50", "p75",
        "p80", "p90", "p95", "p99", "p999",
    ];

    /// The method a rule names, if any.
    pub fn parse(name: &str) -> Option<Method> {
        Some(match name {
            "sum" => Method::Sum,
            "avg" => Method::Avg,
            "min" => Method::Min,
            "max" => Method::Max,
            "count" => Method::Count,
            "last" => Method::Last,
            "median" => Method::Median,
            "stddev" => Method::Stddev,
            "variance" => Method::Variance,
            _ => {
                let (_, t) = PERCENTILES.iter().find(|(n, _)| *n == name)?;
                Method::Percentile(*t)
            }
        })
    }

    /// Whether the method needs every value, not just running sums.
    pub fn keeps_values(self) -> bool {
        matches!(
            self,
            Method::Median | Method::Percentile(_) | Method::Stddev | Method::Variance
        )
    }
}

/// What a bucket keeps as values arrive: one number whose meaning is the method's
/// (the running sum for `sum`, `avg`, `variance` and `stddev`; the min; the max; the
/// last value; nothing for the rest) and the count. The values themselves are kept
/// apart, only for methods that [`Method::keeps_values`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Acc {
    /// Per method, see above.
    pub value: f64,
    /// Values added.
    pub count: u64,
}

impl Acc {
    /// Adds one value (never NaN: callers drop those first).
    #[inline]
    pub fn add(&mut self, method: Method, v: f64) {
        debug_assert!(!v.is_nan());
        match method {
            // From 0, as Python's `sum` (so a lone -0.0 sums to 0.0, as there).
            Method::Sum | Method::Avg | Method::Variance | Method::Stddev => self.value += v,
            // Python's min/max replace only on a strict comparison.
            Method::Min => {
                if self.count == 0 || v < self.value {
                    self.value = v;
                }
            }
            Method::Max => {
                if self.count == 0 || v > self.value {
                    self.value = v;
                }
            }
            Method::Last => self.value = v,
            Method::Count | Method::Median | Method::Percentile(_) => {}
        }
        self.count += 1;
    }
}

/// Computes `method` over a bucket. `values` holds the bucket's values in arrival order
/// (only read by methods that keep them); `scratch` is reused for sorting. `acc` must
/// hold at least one value.
pub fn compute(method: Method, acc: &Acc, values: &[f64], scratch: &mut Vec<f64>) -> Value {
    debug_assert!(acc.count > 0);
    let n = acc.count;
    match method {
        Method::Sum | Method::Min | Method::Max | Method::Last => Value::Float(acc.value),
        Method::Avg => Value::Float(acc.value / n as f64),
        Method::Count => Value::Int(n),
        Method::Percentile(thousandths) => {
            let factor = f64::from(thousandths) / 1000.0;
            let v = sorted(values, scratch);
            let rank = factor * (v.len() - 1) as f64;
            let left = rank.floor();
            let right = rank.ceil();
            let (l, r) = (left as usize, right as usize);
            if l == r {
                Value::Float(v[l])
            } else {
                Value::Float(v[l] * (right - rank) + v[r] * (rank - left))
            }
        }
        Method::Median => {
            let v = sorted(values, scratch);
            // C's `(int)` truncates toward zero; the operand is positive.
            let k = (0.5 * v.len() as f64 + 0.9) as usize;
            Value::Float(v[k - 1])
        }
        Method::Variance | Method::Stddev => {
            let avg = acc.value / n as f64;
            let mut ksum = 0.0;
            for &x in values {
                let d = x - avg;
                ksum += d * d;
            }
            ksum /= n as f64;
            Value::Float(if method == Method::Variance {
                ksum
            } else {
                ksum.sqrt()
            })
        }
    }
}

/// A stable ascending sort (Python's `sorted`, `<` only; no NaN reaches here).
fn sorted<'a>(values: &[f64], scratch: &'a mut Vec<f64>) -> &'a [f64] {
    scratch.clear();
    scratch.extend_from_slice(values);
    scratch.sort_by(|a, b| a.partial_cmp(b).expect("no NaN in buckets"));
    scratch
}

/// Writes `value` as carbon's line client does: `%d` for ints, and for floats
/// `("%.10f" % v).rstrip('0').rstrip('.')`. No allocation: digits go straight into `out`.
pub fn write_value(out: &mut Vec<u8>, value: Value) {
    use std::io::Write;
    match value {
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) if f.is_nan() => out.extend_from_slice(b"nan"),
        Value::Float(f) if f.is_infinite() => {
            out.extend_from_slice(if f > 0.0 { b"inf" } else { b"-inf" })
        }
        Value::Float(f) => {
            // Rust's `{:.10}` rounds the exact binary value half-to-even, as C's printf
            // does, and keeps the sign of -0.0; both checked against Python in tests.
            let _ = write!(out, "{f:.10}");
            while out.last() == Some(&b'0') {
                out.pop();
            }
            if out.last() == Some(&b'.') {
                out.pop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(method: Method, vals: &[f64]) -> Value {
        let mut a = Acc::default();
        for &v in vals {
            a.add(method, v);
        }
        compute(method, &a, vals, &mut Vec::new())
    }

    fn text(v: Value) -> String {
        let mut b = Vec::new();
        write_value(&mut b, v);
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn formats_like_carbons_line_client() {
        // Right-hand sides from python3.11: ("%.10f" % v).rstrip('0').rstrip('.').
        for (v, want) in [
            (3.0, "3"),
            (0.0, "0"),
            (-0.0, "-0"),
            (2f64.powi(-11), "0.0004882812"),
            (123.456, "123.456"),
            (1e-11, "0"),
            (2.5e-10, "0.0000000003"),
            (100.0, "100"),
            (1e21, "1000000000000000000000"),
            (-1.5, "-1.5"),
            (f64::INFINITY, "inf"),
        ] {
            assert_eq!(text(Value::Float(v)), want, "{v}");
        }
        assert_eq!(text(Value::Int(7)), "7");
    }

    #[test]
    fn carbon_percentiles() {
        // python3.11: carbon.aggregator.rules.percentile(0.9)([5, 1, 4, 2, 3]) == 4.6
        assert_eq!(
            run(Method::Percentile(900), &[5.0, 1.0, 4.0, 2.0, 3.0]),
            Value::Float(4.6)
        );
        assert_eq!(
            run(Method::Percentile(500), &[1.0, 2.0, 3.0, 4.0]),
            Value::Float(2.5)
        );
        assert_eq!(run(Method::Percentile(999), &[7.0]), Value::Float(7.0));
    }

    #[test]
    fn crelay_median_and_variance() {
        // k = (int)(0.5 * 4 + 0.9) = 2 -> second smallest.
        assert_eq!(
            run(Method::Median, &[4.0, 1.0, 3.0, 2.0]),
            Value::Float(2.0)
        );
        assert_eq!(run(Method::Median, &[3.0, 1.0, 2.0]), Value::Float(2.0));
        assert_eq!(
            run(Method::Variance, &[1.0, 2.0, 3.0, 4.0]),
            Value::Float(1.25)
        );
        assert_eq!(
            run(Method::Stddev, &[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]),
            Value::Float(2.0)
        );
    }

    #[test]
    fn running_stats() {
        let v = [3.0, -1.0, 8.0, 2.0];
        assert_eq!(run(Method::Sum, &v), Value::Float(12.0));
        assert_eq!(run(Method::Avg, &v), Value::Float(3.0));
        assert_eq!(run(Method::Min, &v), Value::Float(-1.0));
        assert_eq!(run(Method::Max, &v), Value::Float(8.0));
        assert_eq!(run(Method::Count, &v), Value::Int(4));
        assert_eq!(run(Method::Last, &v), Value::Float(2.0));
        assert!(Method::NAMES.iter().all(|n| Method::parse(n).is_some()));
        assert_eq!(Method::parse("average"), None);
    }
}
