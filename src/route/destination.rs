//! The destination table: every socket or file a writer delivers to, deduplicated across
//! clusters, so one member listed in two clusters shares one queue and one connection.

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
}

/// All destinations of a config, and for each cluster the destination of each member.
///
/// Ids are stable across reconfigurations ([`evolve`](Self::evolve)): a destination keeps
/// its id while any cluster lists it, new ones are appended, and removed ones stay in the
/// table marked retired (their writers drain and stop), so ids in flight stay valid.
#[derive(Debug, Clone)]
pub struct DestinationTable {
    /// Destinations by [`DestId`], retired ones included.
    pub destinations: Vec<Destination>,
    /// By [`DestId`]: no cluster lists it any more.
    pub retired: Vec<bool>,
    /// For each cluster (config order), the destination of each member (member order);
    /// a file cluster has exactly one.
    pub cluster_members: Vec<Vec<DestId>>,
}

/// Destinations one table may hold over its life, retired ones included.
pub const DESTINATIONS_MAX: usize = u16::MAX as usize;

impl DestinationTable {
    /// A table with no destinations.
    pub fn empty() -> DestinationTable {
        DestinationTable {
            destinations: Vec::new(),
            retired: Vec::new(),
            cluster_members: Vec::new(),
        }
    }

    /// Builds the table; a validated config guarantees fewer than 65536 destinations.
    pub fn from_config(cfg: &Config) -> DestinationTable {
        DestinationTable::empty()
            .evolve(cfg)
            .expect("a validated config fits the table")
    }

    /// The table for `cfg` that keeps this one's ids: destinations still listed keep their
    /// id, new ones are appended, ones no longer listed are marked retired. Fails when the
    /// table would pass [`DESTINATIONS_MAX`] (a restart starts it afresh).
    pub fn evolve(&self, cfg: &Config) -> Result<DestinationTable, String> {
        let mut destinations = self.destinations.clone();
        let mut retired = self.retired.clone();
        let mut used = vec![false; destinations.len()];
        let mut full = false;
        let mut intern = |name: String, kind: DestinationKind, format: &OutputFormat| -> DestId {
            // A destination whose format changed is a new one: its encoder is new.
            let found = destinations
                .iter()
                .zip(&retired)
                .position(|(d, &r)| !r && d.name == name && d.format == *format);
            let i = match found {
                Some(i) => i,
                None => {
                    if destinations.len() >= DESTINATIONS_MAX {
                        full = true;
                        return DestId(0);
                    }
                    destinations.push(Destination {
                        name,
                        kind,
                        format: format.clone(),
                    });
                    retired.push(false);
                    used.push(false);
                    destinations.len() - 1
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
        if full {
            return Err(format!(
                "more than {DESTINATIONS_MAX} destinations since start (retired ones count \
                 until a restart)"
            ));
        }
        for (r, u) in retired.iter_mut().zip(&used) {
            if !u {
                *r = true;
            }
        }
        Ok(DestinationTable {
            destinations,
            retired,
            cluster_members,
        })
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
