//! The destination table: every socket or file a writer delivers to, deduplicated across
//! clusters, so one member listed in two clusters shares one queue and one connection.

use crate::config::{ClusterKind, Config, FileSink, Member};

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
}

/// All destinations of a config, and for each cluster the destination of each member.
#[derive(Debug, Clone)]
pub struct DestinationTable {
    /// Destinations by [`DestId`].
    pub destinations: Vec<Destination>,
    /// For each cluster (config order), the destination of each member (member order);
    /// a file cluster has exactly one.
    pub cluster_members: Vec<Vec<DestId>>,
}

impl DestinationTable {
    /// Builds the table; a validated config guarantees fewer than 65536 destinations.
    pub fn from_config(cfg: &Config) -> DestinationTable {
        let mut destinations: Vec<Destination> = Vec::new();
        let mut intern = |name: String, kind: DestinationKind| -> DestId {
            if let Some(i) = destinations.iter().position(|d| d.name == name) {
                return DestId(i as u16);
            }
            assert!(
                destinations.len() < u16::MAX as usize,
                "too many destinations"
            );
            destinations.push(Destination { name, kind });
            DestId((destinations.len() - 1) as u16)
        };
        let cluster_members = cfg
            .clusters
            .iter()
            .map(|c| match (c.kind, &c.file) {
                (ClusterKind::File, Some(f)) => {
                    vec![intern(
                        format!("file:{}", f.path.display()),
                        DestinationKind::File(f.clone()),
                    )]
                }
                _ => c
                    .members
                    .iter()
                    .map(|m| intern(m.address_key(), DestinationKind::Net(m.clone())))
                    .collect(),
            })
            .collect();
        DestinationTable {
            destinations,
            cluster_members,
        }
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
