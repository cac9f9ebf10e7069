//! The destination table: every socket or file a writer delivers to, deduplicated across
//! clusters, so one member listed in two clusters shares one queue and one connection.
//!
//! Ids are `u16` indexes used in routing plans, counters and queues on every shard, so
//! an id changes meaning only through a life cycle the control thread drives:
//! **live** (some cluster lists it) -> **retired** at epoch E (no cluster lists it; its
//! writers drain its queue) -> **free** once every shard has reported it drained while
//! routing by an epoch >= E (no router, route cache, queue or writer refers to it any
//! more) -> reused by the next new destination. A retired destination that a cluster
//! lists again before it is freed comes back to life with its id, queue and counters.
//! The live plus retired destinations are bounded by `output.destinations_max`.

use crate::config::{ClusterKind, Config, FileSink, Member, OutputFormat};

/// Index into the destination table; the same on every shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestId(pub u16);

impl DestId {
    /// As an index into per-destination arrays.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Where a destination delivers.
#[derive(Debug, Clone)]
pub enum DestinationKind {
    /// A network member (tcp or udp).
    Net(Member),
    /// A rotating file per shard.
    File(FileSink),
}

/// One destination.
#[derive(Debug, Clone)]
pub struct Destination {
    /// `tcp://host:port`, `udp://host:port` or `file:<path>`: the name in stats.
    pub name: String,
    /// How it is reached.
    pub kind: DestinationKind,
    /// What it receives (its cluster's `format`).
    pub format: OutputFormat,
    /// Unique over the table's life: which occupant of its id this is (an id that was
    /// freed and reused holds a new serial, so a message about the old occupant is
    /// recognised and ignored).
    pub serial: u64,
}

/// Where an id stands in its life cycle (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestState {
    /// Some cluster lists it.
    Live,
    /// No cluster lists it since topology `epoch`; its writers drain its queue.
    Retired {
        /// The epoch of the topology that retired it.
        epoch: u64,
    },
    /// Reclaimed: nothing refers to it; the next new destination may take the id. Its
    /// entry in `destinations` is the last occupant's, kept only as a tombstone.
    Free,
}

/// All destinations of a config, and for each cluster the destination of each member.
#[derive(Debug, Clone)]
pub struct DestinationTable {
    /// Destinations by [`DestId`] (a free id holds its last occupant; see `states`).
    pub destinations: Vec<Destination>,
    /// By [`DestId`]: live, retired or free.
    pub states: Vec<DestState>,
    /// For each cluster (config order), the destination of each member (member order);
    /// a file cluster has exactly one.
    pub cluster_members: Vec<Vec<DestId>>,
    /// The serial the next new destination gets.
    next_serial: u64,
}

/// Ids a table can hold: a [`DestId`] is a `u16`.
pub const DESTINATION_IDS_MAX: usize = u16::MAX as usize;

/// A change that would leave more than `output.destinations_max` destinations live or
/// draining.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooManyDestinations {
    /// Live destinations the change asks for.
    pub live: usize,
    /// Retired ones still draining.
    pub draining: usize,
    /// The bound.
    pub max: usize,
}

impl std::fmt::Display for TooManyDestinations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "output.destinations_max ({}): the change needs {} live destinations while {} \
             removed ones still drain their queues; wait for them to drain (or be reclaimed), \
             or raise output.destinations_max",
            self.max, self.live, self.draining
        )
    }
}

impl DestinationTable {
    /// A table with no destinations.
    pub fn empty() -> DestinationTable {
        DestinationTable {
            destinations: Vec::new(),
            states: Vec::new(),
            cluster_members: Vec::new(),
            next_serial: 1,
        }
    }

    /// Builds the table; a validated config has at most `output.destinations_max`.
    pub fn from_config(cfg: &Config) -> DestinationTable {
        DestinationTable::empty()
            .evolve(cfg, 0, &[])
            .expect("a validated config fits the table")
    }

    /// The table for `cfg` at topology `epoch` that keeps this one's ids: destinations
    /// still listed keep their id (a retired one listed again comes back), ids in
    /// `reclaim` (retired ones every shard has drained) become free, new destinations
    /// take the lowest free id or are appended, and ones no longer listed are retired at
    /// `epoch`. Fails when more than `output.destinations_max` would be live or
    /// draining.
    pub fn evolve(
        &self,
        cfg: &Config,
        epoch: u64,
        reclaim: &[DestId],
    ) -> Result<DestinationTable, TooManyDestinations> {
        let max = cfg.output.destinations_max.min(DESTINATION_IDS_MAX);
        let mut t = self.clone();
        for d in reclaim {
            if let Some(s @ DestState::Retired { .. }) = t.states.get_mut(d.index()) {
                *s = DestState::Free;
            }
        }
        let mut used = vec![false; t.destinations.len()];
        let mut full = false;
        let mut intern = |name: String, kind: DestinationKind, format: &OutputFormat| -> DestId {
            // A destination whose format changed is a new one: its encoder is new.
            let found =
                t.destinations.iter().zip(&t.states).position(|(d, &s)| {
                    s != DestState::Free && d.name == name && d.format == *format
                });
            let i = match found {
                Some(i) => {
                    // Listed again (its instance may differ): live, same queue.
                    t.destinations[i].kind = kind;
                    t.states[i] = DestState::Live;
                    i
                }
                None => {
                    let serial = t.next_serial;
                    t.next_serial += 1;
                    let d = Destination {
                        name,
                        kind,
                        format: format.clone(),
                        serial,
                    };
                    match t.states.iter().position(|&s| s == DestState::Free) {
                        Some(i) => {
                            t.destinations[i] = d;
                            t.states[i] = DestState::Live;
                            i
                        }
                        None if t.destinations.len() < DESTINATION_IDS_MAX => {
                            t.destinations.push(d);
                            t.states.push(DestState::Live);
                            used.push(false);
                            t.destinations.len() - 1
                        }
                        None => {
                            full = true;
                            return DestId(0);
                        }
                    }
                }
            };
            used[i] = true;
            DestId(i as u16)
        };
        let cluster_members = cfg
            .clusters
            .iter()
            .map(|c| match (c.kind, &c.file) {
                (ClusterKind::File, Some(f)) => {
                    vec![intern(
                        format!("file:{}", f.path.display()),
                        DestinationKind::File(f.clone()),
                        &c.format,
                    )]
                }
                _ => c
                    .members
                    .iter()
                    .map(|m| intern(m.address_key(), DestinationKind::Net(m.clone()), &c.format))
                    .collect(),
            })
            .collect();
        for (s, &u) in t.states.iter_mut().zip(&used) {
            if *s == DestState::Live && !u {
                *s = DestState::Retired { epoch };
            }
        }
        t.cluster_members = cluster_members;
        let live = t.states.iter().filter(|&&s| s == DestState::Live).count();
        let draining = t
            .states
            .iter()
            .filter(|s| matches!(s, DestState::Retired { .. }))
            .count();
        if full || live + draining > max {
            return Err(TooManyDestinations {
                live,
                draining,
                max,
            });
        }
        Ok(t)
    }

    /// Number of ids (live, retired and free).
    pub fn len(&self) -> usize {
        self.destinations.len()
    }

    /// True with no ids at all.
    pub fn is_empty(&self) -> bool {
        self.destinations.is_empty()
    }

    /// Destination `d`, unless its id is free.
    pub fn get(&self, d: DestId) -> Option<&Destination> {
        match self.states.get(d.index())? {
            DestState::Free => None,
            _ => self.destinations.get(d.index()),
        }
    }

    /// Whether some cluster lists `d`.
    pub fn is_live(&self, d: DestId) -> bool {
        self.states.get(d.index()) == Some(&DestState::Live)
    }

    /// The serial of `d`'s occupant, unless its id is free.
    pub fn serial(&self, d: DestId) -> Option<u64> {
        self.get(d).map(|x| x.serial)
    }

    /// Live and retired (still draining) destinations.
    pub fn occupied(&self) -> usize {
        self.states
            .iter()
            .filter(|&&s| s != DestState::Free)
            .count()
    }

    /// How `cadent hash` and `/hashcheck` name destination `d` of cluster `cluster`: the
    /// member as written (`host:port[=instance]`), or the destination's name for a file.
    pub fn member_label(&self, cfg: &Config, cluster: usize, d: DestId) -> String {
        let members = &cfg.clusters[cluster].members;
        match self.cluster_members[cluster].iter().position(|m| *m == d) {
            Some(j) if j < members.len() => members[j].display_hash(),
            _ => self.destinations[d.index()].name.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(members: &[&str], max: usize) -> Config {
        let list: Vec<String> = members.iter().map(|m| format!("{m:?}")).collect();
        Config::parse(&format!(
            r#"
            [output]
            destinations_max = {max}
            [[listen]]
            name = "g"
            url = "tcp://127.0.0.1:0"
            format = "graphite"
            [[cluster]]
            name = "c"
            kind = "forward"
            members = [{}]
            [[route]]
            match = {{ all = true }}
            send_to = ["c"]
        "#,
            list.join(",")
        ))
        .unwrap()
    }

    #[test]
    fn retired_ids_come_back_or_are_freed_and_reused() {
        let a = cfg(&["127.0.0.1:1", "127.0.0.1:2"], 3);
        let t1 = DestinationTable::from_config(&a);
        assert_eq!(t1.states, [DestState::Live, DestState::Live]);
        // :2 removed at epoch 5: retired, still occupying its id.
        let t2 = t1.evolve(&cfg(&["127.0.0.1:1"], 3), 5, &[]).unwrap();
        assert_eq!(t2.states[1], DestState::Retired { epoch: 5 });
        assert_eq!(t2.occupied(), 2);
        // Listed again before it drained (with another instance): the same id and
        // occupant, live again.
        let t3 = t2
            .evolve(&cfg(&["127.0.0.1:1", "127.0.0.1:2=b"], 3), 6, &[])
            .unwrap();
        assert_eq!(t3.states[1], DestState::Live);
        assert_eq!(t3.serial(DestId(1)), t1.serial(DestId(1)));
        // Removed again, drained, reclaimed: the id is free.
        let t4 = t3.evolve(&cfg(&["127.0.0.1:1"], 3), 7, &[]).unwrap();
        let t5 = t4
            .evolve(&cfg(&["127.0.0.1:1"], 3), 8, &[DestId(1)])
            .unwrap();
        assert_eq!(t5.states[1], DestState::Free);
        assert!(t5.get(DestId(1)).is_none());
        // Reclaiming a live id does nothing.
        let t5b = t4
            .evolve(&cfg(&["127.0.0.1:1"], 3), 8, &[DestId(0)])
            .unwrap();
        assert!(t5b.is_live(DestId(0)));
        // A new destination takes the free id, as a new occupant.
        let t6 = t5
            .evolve(&cfg(&["127.0.0.1:1", "127.0.0.1:3"], 3), 9, &[])
            .unwrap();
        assert_eq!(t6.len(), 2);
        assert_eq!(t6.cluster_members[0], [DestId(0), DestId(1)]);
        assert_eq!(t6.destinations[1].name, "tcp://127.0.0.1:3");
        assert_ne!(t6.serial(DestId(1)), t1.serial(DestId(1)));
        // Churn of one member never grows the table.
        let mut t = t6;
        for e in 10..200u64 {
            let members: &[&str] = if e % 2 == 0 {
                &["127.0.0.1:1", "127.0.0.1:9"]
            } else {
                &["127.0.0.1:1"]
            };
            let drained: Vec<DestId> = (0..t.len())
                .filter(|&d| matches!(t.states[d], DestState::Retired { .. }))
                .map(|d| DestId(d as u16))
                .collect();
            t = t.evolve(&cfg(members, 3), e, &drained).unwrap();
        }
        assert!(t.len() <= 3, "{}", t.len());
    }

    #[test]
    fn live_plus_draining_is_bounded() {
        let t = DestinationTable::from_config(&cfg(&["127.0.0.1:1", "127.0.0.1:2"], 2));
        // :2 drains while :3 comes: three occupied ids, over the bound of two.
        let e = t
            .evolve(&cfg(&["127.0.0.1:1", "127.0.0.1:3"], 2), 2, &[])
            .unwrap_err();
        assert_eq!((e.live, e.draining, e.max), (2, 1, 2));
        assert!(e.to_string().contains("output.destinations_max"));
        // Once :2 is reclaimed, :3 fits in its id.
        let ok = t
            .evolve(&cfg(&["127.0.0.1:1"], 2), 2, &[])
            .unwrap()
            .evolve(&cfg(&["127.0.0.1:1", "127.0.0.1:3"], 2), 3, &[DestId(1)])
            .unwrap();
        assert_eq!(ok.len(), 2);
        // A config listing more than the bound is refused when read.
        let text = "[output]\ndestinations_max = 1\n[[listen]]\nname = \"g\"\nurl = \"tcp://127.0.0.1:0\"\nformat = \"graphite\"\n[[cluster]]\nname = \"c\"\nkind = \"forward\"\nmembers = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n[[route]]\nmatch = { all = true }\nsend_to = [\"c\"]\n";
        let errs = Config::parse(text).unwrap_err();
        assert!(
            errs.to_string().contains("output.destinations_max"),
            "{errs}"
        );
    }
}
