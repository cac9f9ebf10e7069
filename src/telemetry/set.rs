//! Counter sets: how a stage declares its counters once and gets summing, `/stats`
//! JSON, `/metrics` text and self-metric lines from that one declaration.
//!
//! ```ignore
//! counter_set! {
//!     /// Counters of one destination on one shard.
//!     pub struct DestinationCounters {
//!         /// Lines put into this destination's batches.
//!         queued_lines: counter,
//!         /// Bytes queued now.
//!         queue_bytes: gauge,
//!     }
//! }
//! ```
//!
//! Every field is a plain `u64` the owning stage increments; the doc comment is the help
//! text `/metrics` prints. Sums over shards add every field (a gauge summed over shards is
//! the process's value: bytes queued, connections open), except a `max` gauge, whose
//! process value is the largest shard's (the age of the oldest spooled record).

/// Whether a field only grows or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only grows (Prometheus `counter`).
    Counter,
    /// Goes up and down (Prometheus `gauge`).
    Gauge,
    /// A gauge combined over shards by taking the largest (an age, a duration).
    Max,
}

impl Kind {
    /// Prometheus's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge | Kind::Max => "gauge",
        }
    }
}

/// One field of a counter set.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Field name, as in `/stats` and after the prefix in `/metrics`.
    pub name: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// The help text (the field's doc comment).
    pub help: &'static str,
}

/// A struct of `u64` counters declared with [`counter_set!`].
pub trait CounterSet: Clone + Default + std::fmt::Debug {
    /// Every field, in declaration order.
    const FIELDS: &'static [Field];
    /// Field values, in [`FIELDS`](Self::FIELDS) order.
    fn values(&self) -> Vec<u64>;
    /// Adds every field of `other` (sums over shards; `max` fields take the larger).
    fn add(&mut self, other: &Self);
    /// Each field with its value.
    fn each(&self, mut f: impl FnMut(&'static Field, u64)) {
        for (field, v) in Self::FIELDS.iter().zip(self.values()) {
            f(field, v);
        }
    }
    /// The fields as a JSON object.
    fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        self.each(|f, v| {
            m.insert(f.name.into(), v.into());
        });
        m
    }
}

/// Declares a [`CounterSet`]: a struct of `pub u64` fields, each `name: counter`,
/// `name: gauge` or `name: max` with its doc comment as help text.
#[macro_export]
macro_rules! counter_set {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[doc = $doc:literal])+ $field:ident : $kind:ident ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct $name {
            $( $(#[doc = $doc])+ pub $field: u64, )*
        }

        impl $crate::telemetry::set::CounterSet for $name {
            const FIELDS: &'static [$crate::telemetry::set::Field] = &[
                $( $crate::telemetry::set::Field {
                    name: stringify!($field),
                    kind: $crate::counter_set!(@kind $kind),
                    help: $crate::counter_set!(@help $($doc)+),
                }, )*
            ];
            fn values(&self) -> Vec<u64> {
                vec![ $( self.$field ),* ]
            }
            fn add(&mut self, other: &Self) {
                $( $crate::counter_set!(@add $kind self.$field, other.$field); )*
            }
        }
    };
    (@kind counter) => { $crate::telemetry::set::Kind::Counter };
    (@kind gauge) => { $crate::telemetry::set::Kind::Gauge };
    (@kind max) => { $crate::telemetry::set::Kind::Max };
    (@add max $a:expr, $b:expr) => { $a = $a.max($b) };
    (@add $kind:ident $a:expr, $b:expr) => { $a += $b };
    (@help $first:literal $($rest:literal)*) => { concat!($first $(, "\n", $rest)*) };
}

/// Adds `b` into `a` element by element, growing `a` to `b`'s length (shards apply a
/// reconfiguration at their own tick, so one may count more items than another).
pub fn add_all<T: CounterSet>(a: &mut Vec<T>, b: &[T]) {
    if a.len() < b.len() {
        a.resize(b.len(), T::default());
    }
    for (x, y) in a.iter_mut().zip(b) {
        x.add(y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::counter_set! {
        /// Test set.
        pub struct Two {
            /// First.
            a: counter,
            /// Second, a gauge.
            /// Two lines of help.
            b: gauge,
            /// The largest over shards.
            c: max,
        }
    }

    #[test]
    fn fields_values_and_sums() {
        assert_eq!(Two::FIELDS.len(), 3);
        assert_eq!(Two::FIELDS[2].kind.as_str(), "gauge");
        assert_eq!(Two::FIELDS[1].kind, Kind::Gauge);
        assert_eq!(
            Two::FIELDS[1].help.trim(),
            "Second, a gauge.\n Two lines of help."
        );
        let mut x = Two { a: 1, b: 2, c: 7 };
        x.add(&Two { a: 10, b: 20, c: 3 });
        assert_eq!(x.values(), [11, 22, 7]);
        let mut v = vec![Two { a: 1, b: 1, c: 1 }];
        add_all(
            &mut v,
            &[Two { a: 1, b: 1, c: 4 }, Two { a: 5, b: 5, c: 5 }],
        );
        assert_eq!(v, [Two { a: 2, b: 2, c: 4 }, Two { a: 5, b: 5, c: 5 }]);
    }
}
