//! The whisper side of `/metrics/find`: walk a whisper root for a [`Glob`] and return
//! the branches (directories) and leaves (`.wsp` files) it matches, as graphite-web
//! 1.1.10's `StandardFinder.find_nodes` does (`webapp/graphite/finders/standard.py`).
//!
//! Synchronous std-fs code, meant for a blocking pool. What it returns:
//! - nodes sorted by path, a branch before a leaf of the same path (a directory `a/b/`
//!   next to a file `a/b.wsp` is both, as in graphite-web), without duplicates;
//! - for a leaf, its file, and, when [`FindOptions::intervals`] is set, graphite-web's
//!   `WhisperReader.get_intervals()`: one interval from `now - maxRetention` to
//!   `max(mtime, now - maxRetention)`, in whole seconds (graphite-web's are floats; the
//!   mtime is rounded down). That needs the file's header: a leaf whose header does not
//!   read (corrupt, truncated) is counted in [`FindStats::corrupt_files`] and left out,
//!   never a panic. Without intervals, no file is opened.
//! - a tagged query (holding `;`, not starting with `_tagged.`) is looked up exactly at
//!   carbon's hashed path ([`super::path::metric_path`]) and answered with the query as
//!   the leaf's path, as graphite-web does; no globbing.
//!
//! What it skips, counted in [`FindStats`] where the reason is a fault: entries whose
//! name is not UTF-8 (`skipped_names`), entries starting with `.` (hidden files, and no
//! metric name has an empty component), directories and file stems holding a `.` (a
//! name with a dot there would read back as another name), files not ending in `.wsp`
//! (graphite-web's `.wsp.gz` and `.rrd` readers are not offered), and directories that
//! cannot be listed or files that cannot be opened (`unreadable`, as graphite-web logs
//! and goes on).
//!
//! Symlinks are followed for matching, as graphite-web's `scandir().is_dir()`/`isdir`
//! do: a linked directory is a branch and is walked into by the next segment, a linked
//! file is a leaf, and a dangling link is ignored. A globstar (`**`) walks only real
//! directories, as graphite-web's `os.walk(followlinks=False)` does, so walks cannot
//! loop: every other step consumes a segment of the query. Links may point outside the
//! root; whoever placed them there meant it (trees spread over disks).
//!
//! Bounds ([`FindOptions`]): more than `series_max` nodes, or more than `dirs_max`
//! directory listings and literal lookups, stop the walk with a [`FindError`], which the
//! API answers with a 4xx.
//!
//! How this is checked: the tests below build trees and compare with answers worked out
//! from graphite-web's code; `tests/it/read_api.rs` compares whole finds with
//! graphite-web's own `StandardFinder` code run on the same tree.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::format::{self, Error as FormatError};
use super::io::FileIo;
use super::path::metric_path;
use crate::store::glob::{Glob, Segment};

/// How to walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FindOptions {
    /// The time the intervals are counted back from, seconds since the epoch.
    pub now: i64,
    /// Return leaves only (graphite-web's `leavesOnly=1`); branches are still walked.
    pub leaves_only: bool,
    /// Read each leaf's header for its interval.
    pub intervals: bool,
    /// Most nodes (leaves and branches) one find may return.
    pub series_max: usize,
    /// Most directory listings plus literal lookups one find may do.
    pub dirs_max: usize,
}

/// A match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The metric path (`a.b.c`).
    pub path: String,
    /// Branch or leaf.
    pub kind: NodeKind,
}

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory.
    Branch,
    /// A whisper file.
    Leaf(Leaf),
}

impl Node {
    /// True for a leaf.
    pub fn is_leaf(&self) -> bool {
        matches!(self.kind, NodeKind::Leaf(_))
    }

    /// The last segment of the path (graphite-web's `node.name`).
    pub fn name(&self) -> &str {
        self.path.rsplit('.').next().unwrap_or(&self.path)
    }
}

/// A leaf's file and, when asked for, its interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// The `.wsp` file, under the root (links not resolved).
    pub file: PathBuf,
    /// When the file may hold data; `None` unless [`FindOptions::intervals`].
    pub interval: Option<Interval>,
}

/// `[start, end]` in seconds since the epoch (graphite-web's `Interval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    /// `now - maxRetention`.
    pub start: i64,
    /// `max(mtime, start)`.
    pub end: i64,
}

/// What a find did besides matching.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FindStats {
    /// Directory listings plus literal lookups.
    pub dirs_visited: usize,
    /// Leaves left out because their header does not read.
    pub corrupt_files: usize,
    /// Directories that could not be listed and files that could not be opened.
    pub unreadable: usize,
    /// Entries whose name is not UTF-8.
    pub skipped_names: usize,
}

/// A find's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The matches, sorted by path, branch before leaf.
    pub nodes: Vec<Node>,
    /// Counters.
    pub stats: FindStats,
}

/// A find stopped by a bound; the client's query is too broad (4xx).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FindError {
    /// More than [`FindOptions::series_max`] nodes match.
    #[error("the query matches more than {max} series")]
    TooManySeries {
        /// The bound.
        max: usize,
    },
    /// More than [`FindOptions::dirs_max`] directories would be visited.
    #[error("the query visits more than {max} directories")]
    TooManyDirs {
        /// The bound.
        max: usize,
    },
}

/// Every whisper file's metric name under `root`, as graphite-web 1.1.10's
/// `StandardFinder.get_index` lists them for `/metrics/index.json`: an `os.walk` that
/// lists symlinked files but does not enter symlinked directories, every file named
/// `*.wsp`, its path relative to `root` with every `.wsp` removed and `/` made `.`,
/// leading dots stripped, sorted (duplicates kept, as `bisect.insort_left` keeps them).
/// Tagged series are listed under their hashed paths, as graphite-web lists them.
/// More than `dirs_max` directories is [`FindError::TooManyDirs`]; unreadable
/// directories and names that are not UTF-8 are skipped and counted.
pub fn index(root: &Path, dirs_max: usize) -> Result<(Vec<String>, FindStats), FindError> {
    let mut names = Vec::new();
    let mut stats = FindStats::default();
    let mut pending: Vec<(std::path::PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = pending.pop() {
        stats.dirs_visited += 1;
        if stats.dirs_visited > dirs_max {
            return Err(FindError::TooManyDirs { max: dirs_max });
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            stats.unreadable += 1;
            continue;
        };
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                stats.skipped_names += 1;
                continue;
            };
            // os.walk sorts a symlink to a directory among the directories (and, not
            // following links, does not enter it); a dangling link is a file to it.
            let (dir, link) = kind_of(&entry).map_or((false, true), |(d, _, l)| (d, l));
            if dir {
                if !link {
                    pending.push((entry.path(), format!("{rel}/{name}")));
                }
                continue;
            }
            if name.ends_with(".wsp") {
                let full = format!("{rel}/{name}");
                let metric = full.replace(".wsp", "").replace('/', ".");
                names.push(metric.trim_start_matches('.').to_string());
            }
        }
    }
    names.sort();
    Ok((names, stats))
}

/// Walk `root` for `glob`.
pub fn find(root: &Path, glob: &Glob, opts: &FindOptions) -> Result<Found, FindError> {
    let mut walk = Walk {
        opts,
        stats: FindStats::default(),
        nodes: Vec::new(),
    };
    let source = glob.source();
    if source.contains(';') && !source.starts_with("_tagged.") {
        walk.tagged(root, source)?;
    } else {
        walk.segments(root, "", glob.segments())?;
    }
    let mut nodes = walk.nodes;
    nodes.sort_by(|a, b| (&a.path, a.is_leaf()).cmp(&(&b.path, b.is_leaf())));
    nodes.dedup_by(|a, b| a.path == b.path && a.is_leaf() == b.is_leaf());
    Ok(Found {
        nodes,
        stats: walk.stats,
    })
}

struct Walk<'o> {
    opts: &'o FindOptions,
    stats: FindStats,
    nodes: Vec<Node>,
}

/// One directory entry that can be part of a metric name.
struct Entry {
    name: String,
    /// A directory, or a link to one.
    dir: bool,
    /// A regular file, or a link to one.
    file: bool,
    /// The entry itself is a link.
    link: bool,
}

/// A segment as applied in one directory: the query's, or the `*` graphite-web puts
/// after a terminal globstar.
#[derive(Clone, Copy)]
enum Here<'g> {
    Glob(&'g Segment),
    All,
}

impl Walk<'_> {
    fn visit(&mut self) -> Result<(), FindError> {
        if self.stats.dirs_visited >= self.opts.dirs_max {
            return Err(FindError::TooManyDirs {
                max: self.opts.dirs_max,
            });
        }
        self.stats.dirs_visited += 1;
        Ok(())
    }

    fn push(&mut self, node: Node) -> Result<(), FindError> {
        if node.kind == NodeKind::Branch && self.opts.leaves_only {
            return Ok(());
        }
        if self.nodes.len() >= self.opts.series_max {
            return Err(FindError::TooManySeries {
                max: self.opts.series_max,
            });
        }
        self.nodes.push(node);
        Ok(())
    }

    fn branch(&mut self, path: String) -> Result<(), FindError> {
        self.push(Node {
            path,
            kind: NodeKind::Branch,
        })
    }

    fn leaf(&mut self, path: String, file: PathBuf) -> Result<(), FindError> {
        let interval = if self.opts.intervals {
            match leaf_interval(&file, self.opts.now) {
                Ok(interval) => Some(interval),
                Err(FormatError::Corrupt(_)) => {
                    self.stats.corrupt_files += 1;
                    return Ok(());
                }
                Err(_) => {
                    self.stats.unreadable += 1;
                    return Ok(());
                }
            }
        } else {
            None
        };
        self.push(Node {
            path,
            kind: NodeKind::Leaf(Leaf { file, interval }),
        })
    }

    fn tagged(&mut self, root: &Path, name: &str) -> Result<(), FindError> {
        let Ok(file) = metric_path(root, name) else {
            return Ok(());
        };
        self.visit()?;
        if fs::metadata(&file).is_ok_and(|m| m.is_file()) {
            self.leaf(name.to_string(), file)?;
        }
        Ok(())
    }

    /// Match `segments` below `dir`, whose metric path is `prefix` (empty at the root).
    fn segments(
        &mut self,
        dir: &Path,
        prefix: &str,
        segments: &[Segment],
    ) -> Result<(), FindError> {
        let Some((segment, rest)) = segments.split_first() else {
            return Ok(());
        };
        if segment.is_here() {
            // graphite-web's join(dir, ''): this directory itself. Walked on from here
            // (`a..b` finds `a.b`); last, it is the branch `prefix.` (`a.` finds `a.`).
            if rest.is_empty() {
                self.visit()?;
                if is_dir(dir) {
                    self.branch(if prefix.is_empty() {
                        String::new()
                    } else {
                        format!("{prefix}.")
                    })?;
                }
            } else {
                self.segments(dir, prefix, rest)?;
            }
        }
        if segment.is_void() {
            return Ok(());
        }
        if let Some(literals) = segment.literals() {
            for name in literals {
                self.visit()?;
                let path = join_path(prefix, name);
                let sub = dir.join(name);
                if rest.is_empty() {
                    if is_dir(&sub) {
                        self.branch(path.clone())?;
                    }
                    let file = dir.join(format!("{name}.wsp"));
                    if fs::metadata(&file).is_ok_and(|m| m.is_file()) {
                        self.leaf(path, file)?;
                    }
                } else if is_dir(&sub) {
                    self.segments(&sub, &path, rest)?;
                }
            }
        } else if !segment.is_only_globstar() {
            self.here(dir, prefix, Here::Glob(segment), rest)?;
        }
        if segment.is_globstar() {
            self.globstar(dir, prefix, rest)?;
        }
        Ok(())
    }

    /// List `dir` and match `segment` against its entries, then `rest` below.
    fn here(
        &mut self,
        dir: &Path,
        prefix: &str,
        segment: Here<'_>,
        rest: &[Segment],
    ) -> Result<(), FindError> {
        let Some(entries) = self.list(dir)? else {
            return Ok(());
        };
        for e in &entries {
            if e.dir && !e.name.contains('.') && segment.matches(&e.name) {
                let path = join_path(prefix, &e.name);
                if rest.is_empty() {
                    self.branch(path)?;
                } else {
                    self.segments(&dir.join(&e.name), &path, rest)?;
                }
            }
            if e.file && rest.is_empty() {
                let Some(stem) = e.name.strip_suffix(".wsp") else {
                    continue;
                };
                if !stem.is_empty() && !stem.contains('.') && segment.matches(stem) {
                    self.leaf(join_path(prefix, stem), dir.join(&e.name))?;
                }
            }
        }
        Ok(())
    }

    /// graphite-web's `**`: `rest` at `dir` and at every real directory below it; a
    /// terminal `**` is `**.*`, every entry below at any depth.
    fn globstar(&mut self, dir: &Path, prefix: &str, rest: &[Segment]) -> Result<(), FindError> {
        if rest.is_empty() {
            self.here(dir, prefix, Here::All, &[])?;
        } else {
            self.segments(dir, prefix, rest)?;
        }
        let Some(entries) = self.list(dir)? else {
            return Ok(());
        };
        for e in entries {
            if e.dir && !e.link && !e.name.contains('.') {
                let path = join_path(prefix, &e.name);
                self.globstar(&dir.join(&e.name), &path, rest)?;
            }
        }
        Ok(())
    }

    /// The entries of `dir` that can be part of a name; `None` (counted) when it cannot
    /// be listed.
    fn list(&mut self, dir: &Path) -> Result<Option<Vec<Entry>>, FindError> {
        self.visit()?;
        let Ok(read) = fs::read_dir(dir) else {
            self.stats.unreadable += 1;
            return Ok(None);
        };
        let mut entries = Vec::new();
        for entry in read {
            let Ok(entry) = entry else {
                self.stats.unreadable += 1;
                continue;
            };
            let Ok(name) = entry.file_name().into_string() else {
                self.stats.skipped_names += 1;
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let Some((dir, file, link)) = kind_of(&entry) else {
                continue;
            };
            entries.push(Entry {
                name,
                dir,
                file,
                link,
            });
        }
        Ok(Some(entries))
    }
}

impl Here<'_> {
    fn matches(self, name: &str) -> bool {
        match self {
            Here::Glob(segment) => segment.matches(name),
            Here::All => true,
        }
    }
}

/// A directory entry's kind: (a directory, a file, a symlink to either), following a
/// symlink (one stat, only for links); `None` for a dangling link or an unreadable kind.
fn kind_of(entry: &fs::DirEntry) -> Option<(bool, bool, bool)> {
    let kind = entry.file_type().ok()?;
    if kind.is_symlink() {
        let m = fs::metadata(entry.path()).ok()?;
        Some((m.is_dir(), m.is_file(), true))
    } else {
        Some((kind.is_dir(), kind.is_file(), false))
    }
}

fn is_dir(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_dir())
}

fn join_path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// graphite-web's `WhisperReader.get_intervals()`, in whole seconds.
fn leaf_interval(file: &Path, now: i64) -> Result<Interval, FormatError> {
    let mut io = FileIo::open_read(file)?;
    let header = format::read_header(&mut io)?;
    let mtime = fs::metadata(file)?
        .modified()?
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let start = now - i64::from(header.max_retention);
    Ok(Interval {
        start,
        end: mtime.max(start),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::glob::GlobLimits;
    use crate::store::whisper::format::{AggregationMethod, CreateMode};
    use std::os::unix::fs::symlink;

    const NOW: i64 = 1_700_000_000;

    struct Tree(PathBuf);

    impl Tree {
        fn new(tag: &str) -> Tree {
            let dir = std::env::temp_dir().join(format!(
                "cadent-find-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Tree(dir)
        }

        /// A whisper file `rel` (slashes) of 10s:1h,1m:1d (maxRetention 86400), its
        /// mtime set to `mtime`.
        fn wsp(&self, rel: &str, mtime: i64) -> PathBuf {
            let path = self.0.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            let mut io = FileIo::create_new(&path).unwrap();
            format::create(
                &mut io,
                &[(10, 360), (60, 1440)],
                0.5,
                AggregationMethod::Average,
                CreateMode::Sparse,
            )
            .unwrap();
            let file = fs::File::options().write(true).open(&path).unwrap();
            let at = UNIX_EPOCH + std::time::Duration::from_secs(mtime as u64);
            file.set_modified(at).unwrap();
            path
        }

        fn dir(&self, rel: &str) {
            fs::create_dir_all(self.0.join(rel)).unwrap();
        }

        fn file(&self, rel: &str, bytes: &[u8]) {
            let path = self.0.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, bytes).unwrap();
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn opts() -> FindOptions {
        FindOptions {
            now: NOW,
            leaves_only: false,
            intervals: false,
            series_max: 1000,
            dirs_max: 1000,
        }
    }

    fn run(tree: &Tree, query: &str, opts: &FindOptions) -> Result<Found, FindError> {
        let glob = Glob::compile(query, &GlobLimits::default()).unwrap();
        find(&tree.0, &glob, opts)
    }

    /// `L path` for a leaf, `B path` for a branch.
    fn check(tree: &Tree, query: &str, expected: &[&str]) {
        let found = run(tree, query, &opts()).unwrap();
        let got: Vec<String> = found
            .nodes
            .iter()
            .map(|n| format!("{} {}", if n.is_leaf() { "L" } else { "B" }, n.path))
            .collect();
        assert_eq!(got, expected, "{query}");
    }

    fn servers() -> Tree {
        let t = Tree::new("servers");
        for rel in [
            "servers/web01/cpu/user.wsp",
            "servers/web01/cpu/system.wsp",
            "servers/web02/cpu/user.wsp",
            "servers/web02/load.wsp",
            "servers/web02/load/short.wsp",
            "servers/db01/disk.wsp",
        ] {
            t.wsp(rel, NOW - 30);
        }
        t.dir("servers/.git/objects");
        t.dir("servers/x.y");
        t.wsp("servers/web02/a.b.wsp", NOW);
        t.file("servers/web02/notes.txt", b"hi");
        t.file("servers/web02/.hidden.wsp", b"");
        t
    }

    #[test]
    fn branches_and_leaves_sorted() {
        let t = servers();
        check(&t, "servers", &["B servers"]);
        check(
            &t,
            "servers.*",
            &["B servers.db01", "B servers.web01", "B servers.web02"],
        );
        check(
            &t,
            "servers.web02.*",
            &[
                "B servers.web02.cpu",
                "B servers.web02.load",
                "L servers.web02.load",
            ],
        );
        check(
            &t,
            "servers.web0[12].cpu.*",
            &[
                "L servers.web01.cpu.system",
                "L servers.web01.cpu.user",
                "L servers.web02.cpu.user",
            ],
        );
        check(
            &t,
            "servers.{web01,web02,web09}.cpu.user",
            &["L servers.web01.cpu.user", "L servers.web02.cpu.user"],
        );
        check(
            &t,
            "servers.web02.load",
            &["B servers.web02.load", "L servers.web02.load"],
        );
        check(
            &t,
            "servers.*.{cpu,load}.u*",
            &["L servers.web01.cpu.user", "L servers.web02.cpu.user"],
        );
        check(&t, "servers.web02.notes", &[]);
        check(&t, "servers.web02.a", &[]);
        check(&t, "nothing.*", &[]);
        // An empty segment is the directory itself, as graphite-web's join(dir, '').
        check(&t, "servers..web01", &["B servers.web01"]);
        check(&t, ".servers.db01.disk", &["L servers.db01.disk"]);
        check(&t, "servers.db01.", &["B servers.db01."]);
        check(&t, "servers.db01.disk.", &[]);
    }

    #[test]
    fn leaves_only_and_names() {
        let t = servers();
        let found = run(
            &t,
            "servers.web02.*",
            &FindOptions {
                leaves_only: true,
                ..opts()
            },
        )
        .unwrap();
        let paths: Vec<&str> = found.nodes.iter().map(|n| n.path.as_str()).collect();
        assert_eq!(paths, ["servers.web02.load"]);
        assert_eq!(found.nodes[0].name(), "load");
        let NodeKind::Leaf(leaf) = &found.nodes[0].kind else {
            panic!()
        };
        assert_eq!(leaf.file, t.0.join("servers/web02/load.wsp"));
        assert_eq!(leaf.interval, None);
    }

    #[test]
    fn intervals_from_header_and_mtime() {
        let t = servers();
        t.wsp("old/m.wsp", NOW - 200_000);
        let o = FindOptions {
            intervals: true,
            ..opts()
        };
        let found = run(&t, "{servers.web02.load,old.m}", &o).unwrap();
        assert!(found.nodes.is_empty(), "braces never span segments");
        let found = run(&t, "servers.web02.load", &o).unwrap();
        let NodeKind::Leaf(leaf) = &found.nodes[1].kind else {
            panic!()
        };
        assert_eq!(
            leaf.interval,
            Some(Interval {
                start: NOW - 86400,
                end: NOW - 30
            })
        );
        // An mtime before the retention window: the interval is empty at its start.
        let found = run(&t, "old.m", &o).unwrap();
        let NodeKind::Leaf(leaf) = &found.nodes[0].kind else {
            panic!()
        };
        assert_eq!(
            leaf.interval,
            Some(Interval {
                start: NOW - 86400,
                end: NOW - 86400
            })
        );
    }

    #[test]
    fn corrupt_files_are_counted_and_skipped() {
        let t = servers();
        t.file("servers/web03/truncated.wsp", &[0, 0, 0, 1, 0]);
        t.file("servers/web03/empty.wsp", b"");
        let good = t.wsp("servers/web03/good.wsp", NOW);
        let mut bytes = fs::read(&good).unwrap();
        bytes[3] = 42; // unknown aggregation
        t.file("servers/web03/badagg.wsp", &bytes);
        let o = FindOptions {
            intervals: true,
            ..opts()
        };
        let found = run(&t, "servers.web03.*", &o).unwrap();
        let paths: Vec<&str> = found.nodes.iter().map(|n| n.path.as_str()).collect();
        assert_eq!(paths, ["servers.web03.good"]);
        assert_eq!(found.stats.corrupt_files, 3);
        // Without intervals no file is opened, so nothing is known to be corrupt.
        let found = run(&t, "servers.web03.*", &opts()).unwrap();
        assert_eq!(found.nodes.len(), 4);
        assert_eq!(found.stats.corrupt_files, 0);
    }

    #[test]
    fn bounds_stop_the_walk() {
        let t = servers();
        let o = FindOptions {
            series_max: 2,
            ..opts()
        };
        assert_eq!(
            run(&t, "servers.*", &o).unwrap_err(),
            FindError::TooManySeries { max: 2 }
        );
        assert!(run(&t, "servers.web01.cpu.*", &o).is_ok());
        let o = FindOptions {
            dirs_max: 3,
            ..opts()
        };
        assert_eq!(
            run(&t, "servers.*.cpu.*", &o).unwrap_err(),
            FindError::TooManyDirs { max: 3 }
        );
        // Literal lookups count too.
        let o = FindOptions {
            dirs_max: 2,
            ..opts()
        };
        assert!(run(&t, "servers.web01", &o).is_ok());
        assert!(run(&t, "servers.web01.cpu", &o).is_err());
        // Leaves-only does not count the branches it leaves out.
        let o = FindOptions {
            series_max: 1,
            leaves_only: true,
            ..opts()
        };
        assert_eq!(run(&t, "servers.web02.*", &o).unwrap().nodes.len(), 1);
    }

    #[test]
    fn symlinks() {
        let t = servers();
        let elsewhere = Tree::new("elsewhere");
        elsewhere.wsp("disk2/mem.wsp", NOW);
        symlink(elsewhere.0.join("disk2"), t.0.join("servers/web04")).unwrap();
        symlink(
            t.0.join("servers/web01/cpu/user.wsp"),
            t.0.join("servers/web02/alias.wsp"),
        )
        .unwrap();
        symlink(t.0.join("nowhere"), t.0.join("servers/dangling")).unwrap();
        symlink(t.0.join("servers"), t.0.join("servers/web01/loop")).unwrap();
        check(&t, "servers.web04.*", &["L servers.web04.mem"]);
        check(&t, "servers.web04.mem", &["L servers.web04.mem"]);
        check(&t, "servers.web02.al*", &["L servers.web02.alias"]);
        check(
            &t,
            "servers.*",
            &[
                "B servers.db01",
                "B servers.web01",
                "B servers.web02",
                "B servers.web04",
            ],
        );
        // A globstar does not walk into links, so the loop is not followed.
        let found = run(&t, "servers.**", &opts()).unwrap();
        let paths: Vec<String> = found.nodes.iter().map(|n| n.path.clone()).collect();
        assert!(paths.contains(&"servers.web01.loop".to_string()));
        assert!(paths.contains(&"servers.web04".to_string()));
        assert!(!paths
            .iter()
            .any(|p| p.contains("loop.") || p.contains("web04.")));
        // Fixed segments may walk through the loop, but only as deep as the query.
        check(
            &t,
            "servers.web01.loop.web01.cpu.user",
            &["L servers.web01.loop.web01.cpu.user"],
        );
    }

    #[test]
    fn globstar_as_graphite_web() {
        let t = servers();
        check(
            &t,
            "servers.**.user",
            &["L servers.web01.cpu.user", "L servers.web02.cpu.user"],
        );
        check(
            &t,
            "servers.web02.**",
            &[
                "B servers.web02.cpu",
                "L servers.web02.cpu.user",
                "B servers.web02.load",
                "L servers.web02.load",
                "L servers.web02.load.short",
            ],
        );
        // `**` matches zero directories too, and duplicates from overlapping
        // alternatives are merged.
        check(
            &t,
            "servers.web02.{**,load}.short",
            &["L servers.web02.load.short"],
        );
        check(
            &t,
            "servers.**.load",
            &["B servers.web02.load", "L servers.web02.load"],
        );
    }

    #[test]
    fn tagged_lookup_is_exact() {
        let t = servers();
        let file = metric_path(&t.0, "cpu;host=a;dc=x").unwrap();
        let rel = file
            .strip_prefix(&t.0)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        t.wsp(&rel, NOW);
        // graphite-web answers with the query as written, not the normalized name.
        check(&t, "cpu;host=a;dc=x", &["L cpu;host=a;dc=x"]);
        check(&t, "cpu;dc=x;host=a", &["L cpu;dc=x;host=a"]);
        check(&t, "cpu;host=b", &[]);
        let branch = format!("B _tagged.{}", &rel[8..11]);
        check(&t, "_tagged.*", &[branch.as_str()]);
    }

    #[test]
    fn non_utf8_names_are_counted() {
        use std::os::unix::ffi::OsStrExt;
        let t = servers();
        let bad = t.0.join(std::ffi::OsStr::from_bytes(b"servers/\xff.wsp"));
        fs::write(bad, b"").unwrap();
        let found = run(&t, "servers.*", &opts()).unwrap();
        assert_eq!(found.nodes.len(), 3);
        assert_eq!(found.stats.skipped_names, 1);
    }
}
