//! Response bodies of the read API, as graphite-web 1.1.10 writes them, so graphite-web
//! can use cadent as a `CLUSTER_SERVERS` peer and clients see graphite's shapes. Pure
//! encoders into a caller's buffer: no HTTP types, no I/O.
//!
//! `/metrics/find` (graphite-web `webapp/graphite/metrics/views.py`, `find_view`): the
//! matches are ordered by name (the last segment) for every format, as
//! `matches.sort(key=lambda node: node.name)` does (graphite-web leaves ties in the
//! random order of its merge; here they keep path order, a branch before a leaf), then
//! - `pickle` (`pickle_nodes`): `[{'path': str, 'is_leaf': bool, 'intervals': [(start,
//!   end), ...]}]`, `intervals` on leaves only. graphite-web pickles an `IntervalSet`
//!   object there; a list of pairs is what its `RemoteFinder.find_nodes` also accepts
//!   (`IntervalSet([Interval(i[0], i[1]) for i in intervals])`) and needs no GLOBAL
//!   opcode. A leaf found without intervals gets `[]`.
//! - `msgpack` (`msgpack_nodes`): the same maps, `intervals` as `[[start, end]]`.
//! - `json` (`json_nodes`): `[{"path", "is_leaf", "intervals": [{"start", "end"}]}]`,
//!   sorted by path.
//! - `treejson` (`tree_json`, graphite-web's default): `{"text", "id", "allowChildren",
//!   "expandable", "leaf"}` per distinct name, branches first, with the `*` node
//!   prepended for `wildcards=1`; `text` is `unquote_plus(name)`, `id` the query up to
//!   its last dot plus the name.
//! - `completer` (inline in `find_view`): the query is rewritten first (`..` to `*.`, a
//!   `*` appended, with `automatic_variants=1` a part holding `,` braced), then
//!   `{"metrics": [{"path", "name", "is_leaf": "0"|"1"}]}`, a branch's path ending in
//!   `.`, and `{"name": "*"}` last for `wildcards=1` with more than one match.
//! - `nodelist` (`nodes_by_position`): `{"nodes": [...]}`, the sorted distinct path
//!   parts at `position` (default -1, a Python index). A path too short for it is a
//!   400 here (graphite-web fails with an IndexError).
//!
//! `/metrics/expand` (`expand_view`): `{"results": [paths]}` sorted and deduplicated over
//! all queries, or with `groupByExpr=1` `{"results": {query: [paths]}}`.
//!
//! `/render` with `format=pickle|msgpack` (`renderViewPickle`, `renderViewMsgPack`, each
//! series' `TimeSeries.getInfo()`): `{'name', 'start', 'end', 'step', 'values',
//! 'pathExpression', 'valuesPerPoint', 'consolidationFunc', 'xFilesFactor'}` in that
//! order, values a list of floats and None. graphite-web's `RemoteReader.fetch_multi`
//! reads `name`, `start`, `end`, `step`, `values` and, if present, `pathExpression`.
//! `format=json` (`renderViewJson`): `[{"target", "tags", "datapoints": [[value, ts]]}]`
//! with graphite-web's `NaN` → `null` and `Infinity` → `1e9999` rewrite and `tags` as
//! its `TaggedSeries.parse` gives them; `maxDataPoints` averages the series first
//! ([`consolidate_max_points`]).
//!
//! Byte compatibility: pickles are protocol 2 in the bytes CPython writes
//! ([`Writer`]); graphite-web writes protocol 5 (`protocol=-1`), which loads to
//! the same objects. msgpack is written as graphite-web's `msgpack.dumps(obj,
//! use_bin_type=True)` writes it (msgpack-python or its vendored u-msgpack-python 2.7.1
//! alike): smallest int and str forms, floats as float64. JSON is python's
//! `json.dumps` with its default separators, `ensure_ascii` as the caller says
//! (graphite-web sets it when the request's Accept is exactly `application/json` or
//! absent). `tests/it/read_api.rs` checks every encoder against graphite-web 1.1.10's
//! own view code run on the same data (`pickle_nodes`, `msgpack_nodes`, `json_nodes`,
//! `tree_json`, `expand_view`, `TimeSeries.getInfo`, `renderViewJson`): JSON and
//! msgpack byte for byte, pickles byte for byte against python's protocol-2 pickle of
//! the same objects, and every pickle and msgpack body read back through the lines of
//! its `RemoteFinder` / `RemoteReader` to what graphite-web's own bodies give.
//!
//! A fact for whoever points graphite-web at us with `?format=msgpack`: graphite-web
//! 1.1.10 reads msgpack with `msgpack.unpackb(data, encoding='utf-8')`, which
//! msgpack-python 1.x refuses (`TypeError: unexpected keyword argument 'encoding'`,
//! checked with 1.2.4); it works with the vendored u-msgpack-python, i.e. with
//! msgpack-python not installed (or older than 1.0).
//!
//! Bounds: every encoder stops with [`ResponseTooLarge`] once its output passes the
//! caller's `bytes_max` (`read_response_bytes_max`), checked after each node or series,
//! so an oversized answer costs at most one series past the bound.

use std::fmt::Write as _;

use crate::protocol::pickle::Writer;
use crate::store::whisper::find::{Node, NodeKind};
use crate::store::whisper::render::Series;

/// A response format of `/metrics/find` and `/render`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Python pickle, protocol 2.
    Pickle,
    /// MessagePack.
    Msgpack,
    /// JSON.
    Json,
}

impl Format {
    /// The format named by a `format=` parameter (`pickle`, `msgpack`, `json`).
    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "pickle" => Some(Format::Pickle),
            "msgpack" => Some(Format::Msgpack),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    /// graphite-web's Content-Type for it.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Pickle => "application/pickle",
            Format::Msgpack => "application/x-msgpack",
            Format::Json => "application/json",
        }
    }
}

/// The encoded response would be larger than the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the response is larger than {bytes_max} bytes")]
pub struct ResponseTooLarge {
    /// The bound.
    pub bytes_max: usize,
}

fn bounded(out: &[u8], start: usize, bytes_max: usize) -> Result<(), ResponseTooLarge> {
    if out.len() - start > bytes_max {
        return Err(ResponseTooLarge { bytes_max });
    }
    Ok(())
}

/// The nodes in graphite-web's find order: by name, then (our tie-break) by path, a
/// branch first.
fn by_name(nodes: &[Node]) -> Vec<&Node> {
    let mut sorted: Vec<&Node> = nodes.iter().collect();
    sorted.sort_by(|a, b| (a.name(), &a.path, a.is_leaf()).cmp(&(b.name(), &b.path, b.is_leaf())));
    sorted
}

fn interval(node: &Node) -> Option<Option<(i64, i64)>> {
    match &node.kind {
        NodeKind::Branch => None,
        NodeKind::Leaf(leaf) => Some(leaf.interval.map(|i| (i.start, i.end))),
    }
}

/// `/metrics/find?format=pickle`.
pub fn find_pickle(
    nodes: &[Node],
    out: &mut Vec<u8>,
    bytes_max: usize,
) -> Result<(), ResponseTooLarge> {
    let start = out.len();
    let mut result = Ok(());
    let mut w = Writer::new(out);
    let sorted = by_name(nodes);
    w.list(sorted.iter(), |w, node| {
        let leaf = interval(node);
        w.dict(
            0..if leaf.is_some() { 3 } else { 2 },
            |w, field| match field {
                0 => {
                    w.shared_str("path");
                    w.str(&node.path);
                }
                1 => {
                    w.shared_str("is_leaf");
                    w.bool(leaf.is_some());
                }
                _ => {
                    w.shared_str("intervals");
                    let span = leaf.flatten();
                    w.list(span.iter(), |w, &(a, b)| {
                        w.tuple(2, |w| {
                            w.int(a);
                            w.int(b);
                        })
                    });
                }
            },
        );
        if result.is_ok() && w.len() - start > bytes_max {
            result = Err(ResponseTooLarge { bytes_max });
        }
    });
    w.finish();
    result?;
    bounded(out, start, bytes_max)
}

/// `/metrics/find?format=msgpack`.
pub fn find_msgpack(
    nodes: &[Node],
    out: &mut Vec<u8>,
    bytes_max: usize,
) -> Result<(), ResponseTooLarge> {
    let start = out.len();
    msgpack::array(out, nodes.len());
    for node in by_name(nodes) {
        let leaf = interval(node);
        msgpack::map(out, if leaf.is_some() { 3 } else { 2 });
        msgpack::str(out, "path");
        msgpack::str(out, &node.path);
        msgpack::str(out, "is_leaf");
        msgpack::bool(out, leaf.is_some());
        if let Some(span) = leaf {
            msgpack::str(out, "intervals");
            msgpack::array(out, span.iter().len());
            if let Some((a, b)) = span {
                msgpack::array(out, 2);
                msgpack::int(out, a);
                msgpack::int(out, b);
            }
        }
        bounded(out, start, bytes_max)?;
    }
    Ok(())
}

/// `/metrics/find?format=json`.
pub fn find_json(
    nodes: &[Node],
    ensure_ascii: bool,
    out: &mut Vec<u8>,
    bytes_max: usize,
) -> Result<(), ResponseTooLarge> {
    let start = out.len();
    let mut sorted = by_name(nodes);
    sorted.sort_by(|a, b| a.path.cmp(&b.path)); // stable: ties keep the name order
    out.push(b'[');
    for (i, node) in sorted.into_iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(b"{\"path\": ");
        json::str(out, &node.path, ensure_ascii);
        match interval(node) {
            None => out.extend_from_slice(b", \"is_leaf\": false}"),
            Some(span) => {
                out.extend_from_slice(b", \"is_leaf\": true, \"intervals\": [");
                if let Some((a, b)) = span {
                    let _ = write!(Json(out), "{{\"start\": {a}, \"end\": {b}}}");
                }
                out.extend_from_slice(b"]}");
            }
        }
        bounded(out, start, bytes_max)?;
    }
    out.push(b']');
    bounded(out, start, bytes_max)
}

/// `/metrics/index.json`: the names as a JSON list (graphite-web's
/// `json_response_for`).
pub fn index_json(
    names: &[String],
    ensure_ascii: bool,
    out: &mut Vec<u8>,
    bytes_max: usize,
) -> Result<(), ResponseTooLarge> {
    let start = out.len();
    out.push(b'[');
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        json::str(out, name, ensure_ascii);
        if i % 1024 == 0 {
            bounded(out, start, bytes_max)?;
        }
    }
    out.push(b']');
    bounded(out, start, bytes_max)
}

/// `/metrics/find?format=treejson` (graphite-web's default) for `query`; `wildcards`
/// is graphite-web's `wildcards=1` (or a profile's advanced UI).
pub fn find_treejson(
    nodes: &[Node],
    query: &str,
    wildcards: bool,
    ensure_ascii: bool,
    out: &mut Vec<u8>,
    bytes_max: usize,
) -> Result<(), ResponseTooLarge> {
    const BRANCH: &str = "\"allowChildren\": 1, \"expandable\": 1, \"leaf\": 0}";
    const LEAF: &str = "\"allowChildren\": 0, \"expandable\": 0, \"leaf\": 1}";
    let start = out.len();
    let base = match query.rsplit_once('.') {
        Some((head, _)) => &query[..head.len() + 1],
        None => "",
    };
    let sorted = by_name(nodes);
    let mut first = true;
    let mut item = |out: &mut Vec<u8>, text: &str, name: &str, leaf: bool| {
        out.extend_from_slice(if first { b"[" } else { b", " });
        first = false;
        out.extend_from_slice(b"{\"text\": ");
        json::str(out, text, ensure_ascii);
        out.extend_from_slice(b", \"id\": ");
        let mut id = String::with_capacity(base.len() + name.len());
        id.push_str(base);
        id.push_str(name);
        json::str(out, &id, ensure_ascii);
        out.extend_from_slice(b", ");
        out.extend_from_slice(if leaf { LEAF } else { BRANCH }.as_bytes());
    };
    if wildcards && nodes.len() > 1 {
        let any_branch = nodes.iter().any(|n| !n.is_leaf());
        item(out, "*", "*", !any_branch);
    }
    let mut seen = std::collections::HashSet::new();
    let mut leaves = Vec::new();
    for node in sorted {
        if !seen.insert(node.name()) {
            continue; // graphite-web keeps the first node of a name
        }
        if node.is_leaf() {
            leaves.push(node);
        } else {
            item(out, &unquote_plus(node.name()), node.name(), false);
            bounded(out, start, bytes_max)?;
        }
    }
    for node in leaves {
        item(out, &unquote_plus(node.name()), node.name(), true);
        bounded(out, start, bytes_max)?;
    }
    if first {
        out.push(b'[');
    }
    out.push(b']');
    bounded(out, start, bytes_max)
}

/// `/metrics/find?format=completer` (graphite-web's composer completion): `{"metrics":
/// [{"path", "name", "is_leaf": "0"|"1"}]}` in name order, a branch's path ending in
/// `.`, and with `wildcards` a last `{"name": "*"}` when more than one node matched.
pub fn find_completer(
    nodes: &[Node],
    wildcards: bool,
    ensure_ascii: bool,
    out: &mut Vec<u8>,
    bytes_max: usize,
) -> Result<(), ResponseTooLarge> {
    let start = out.len();
    out.extend_from_slice(b"{\"metrics\": [");
    for (i, node) in by_name(nodes).into_iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(b"{\"path\": ");
        if node.is_leaf() {
            json::str(out, &node.path, ensure_ascii);
        } else {
            json::str(out, &format!("{}.", node.path), ensure_ascii);
        }
        out.extend_from_slice(b", \"name\": ");
        json::str(out, node.name(), ensure_ascii);
        out.extend_from_slice(if node.is_leaf() {
            b", \"is_leaf\": \"1\"}"
        } else {
            b", \"is_leaf\": \"0\"}"
        });
        bounded(out, start, bytes_max)?;
    }
    if wildcards && nodes.len() > 1 {
        out.extend_from_slice(b", {\"name\": \"*\"}");
    }
    out.extend_from_slice(b"]}");
    bounded(out, start, bytes_max)
}

/// graphite-web's completer rewrite of a find query: `..` becomes `*.`, a `*` is
/// appended unless it ends in one, and with `automatic_variants` a part holding `,` and
/// no `{` becomes `{part}`.
pub fn completer_query(query: &str, automatic_variants: bool) -> String {
    let mut q = query.replace("..", "*.");
    if !q.ends_with('*') {
        q.push('*');
    }
    if automatic_variants {
        let parts: Vec<String> = q
            .split('.')
            .map(|p| {
                if p.contains(',') && !p.contains('{') {
                    format!("{{{p}}}")
                } else {
                    p.to_string()
                }
            })
            .collect();
        q = parts.join(".");
    }
    q
}

/// `/metrics/find?format=nodelist`: `{"nodes": [...]}`, the distinct path parts at
/// `position` (negative counts from the end, as a Python index) of the matched paths,
/// sorted. `Err(path)` names a path too short for `position`.
pub fn find_nodelist(
    nodes: &[Node],
    position: i64,
    ensure_ascii: bool,
    out: &mut Vec<u8>,
    bytes_max: usize,
) -> Result<Result<(), ResponseTooLarge>, String> {
    let mut found = std::collections::BTreeSet::new();
    for node in nodes {
        let part = match usize::try_from(position) {
            Ok(i) => node.path.split('.').nth(i),
            Err(_) => usize::try_from(-(position + 1))
                .ok()
                .and_then(|i| node.path.rsplit('.').nth(i)),
        };
        found.insert(part.ok_or_else(|| node.path.clone())?);
    }
    let start = out.len();
    out.extend_from_slice(b"{\"nodes\": [");
    for (i, part) in found.into_iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        json::str(out, part, ensure_ascii);
        if let Err(e) = bounded(out, start, bytes_max) {
            return Ok(Err(e));
        }
    }
    out.extend_from_slice(b"]}");
    Ok(bounded(out, start, bytes_max))
}

/// `/metrics/expand`: for each query, its nodes; `leaves_only` drops branches.
pub fn expand_json<'n>(
    results: &[(&str, &'n [Node])],
    leaves_only: bool,
    group_by_expr: bool,
    ensure_ascii: bool,
    out: &mut Vec<u8>,
    bytes_max: usize,
) -> Result<(), ResponseTooLarge> {
    let start = out.len();
    let paths = |nodes: &'n [Node]| -> Vec<&'n str> {
        nodes
            .iter()
            .filter(|n| n.is_leaf() || !leaves_only)
            .map(|n| n.path.as_str())
            .collect()
    };
    // graphite-web's `results[query] = set()` per query: a python dict, so a query
    // asked twice keeps its first place and its last answer.
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for &(query, nodes) in results {
        match groups.iter_mut().find(|(q, _)| *q == query) {
            Some(group) => group.1 = paths(nodes),
            None => groups.push((query, paths(nodes))),
        }
    }
    let list = |out: &mut Vec<u8>, mut paths: Vec<&str>| {
        paths.sort_unstable();
        paths.dedup();
        out.push(b'[');
        for (i, p) in paths.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            json::str(out, p, ensure_ascii);
        }
        out.push(b']');
    };
    out.extend_from_slice(b"{\"results\": ");
    if group_by_expr {
        out.push(b'{');
        for (i, (query, group)) in groups.into_iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            json::str(out, query, ensure_ascii);
            out.extend_from_slice(b": ");
            list(out, group);
            bounded(out, start, bytes_max)?;
        }
        out.push(b'}');
    } else {
        list(
            out,
            groups.into_iter().flat_map(|(_, paths)| paths).collect(),
        );
    }
    out.push(b'}');
    bounded(out, start, bytes_max)
}

/// One series of a `/render` answer.
#[derive(Debug, Clone, Copy)]
pub struct RenderSeries<'a> {
    /// The metric path (graphite-web's `name`).
    pub name: &'a str,
    /// The target it answers (graphite-web's `pathExpression`): the glob as requested.
    pub path_expression: &'a str,
    /// The values.
    pub series: &'a Series,
    /// graphite-web's `consolidationFunc`: `average` unless the request said otherwise
    /// ([`CONSOLIDATION_DEFAULT`]).
    pub consolidation_func: &'static str,
    /// graphite-web's `xFilesFactor`: the request's `xFilesFactor`, else
    /// `DEFAULT_XFILES_FACTOR` (0).
    pub x_files_factor: f64,
}

/// graphite-web's default `consolidationFunc` of a fetched series.
pub const CONSOLIDATION_DEFAULT: &str = "average";

/// `/render?format=pickle`.
pub fn render_pickle(
    series: &[RenderSeries<'_>],
    out: &mut Vec<u8>,
    bytes_max: usize,
) -> Result<(), ResponseTooLarge> {
    let start = out.len();
    let mut result = Ok(());
    let mut w = Writer::new(out);
    // graphite-web gives every series of one target the same pathExpression object,
    // which python's pickler writes once and then fetches from its memo.
    let mut previous_expression: Option<(&str, u32)> = None;
    w.list(series.iter(), |w, s| {
        if result.is_err() {
            w.none(); // keep the pickle well formed; it is discarded
            return;
        }
        w.dict(0..9, |w, field| match field {
            0 => {
                w.shared_str("name");
                w.str(s.name);
            }
            1 => {
                w.shared_str("start");
                w.int(s.series.start);
            }
            2 => {
                w.shared_str("end");
                w.int(s.series.end);
            }
            3 => {
                w.shared_str("step");
                w.int(s.series.step);
            }
            4 => {
                w.shared_str("values");
                w.list(s.series.values.iter(), |w, v| w.opt_float(*v));
            }
            5 => {
                w.shared_str("pathExpression");
                match previous_expression {
                    Some((text, slot)) if text == s.path_expression => w.get(slot),
                    _ => {
                        previous_expression =
                            Some((s.path_expression, w.str_slot(s.path_expression)))
                    }
                }
            }
            6 => {
                w.shared_str("valuesPerPoint");
                w.int(1);
            }
            7 => {
                w.shared_str("consolidationFunc");
                w.shared_str(s.consolidation_func);
            }
            _ => {
                w.shared_str("xFilesFactor");
                w.float(s.x_files_factor);
            }
        });
        if w.len() - start > bytes_max {
            result = Err(ResponseTooLarge { bytes_max });
        }
    });
    w.finish();
    result?;
    bounded(out, start, bytes_max)
}

/// `/render?format=msgpack`.
pub fn render_msgpack(
    series: &[RenderSeries<'_>],
    out: &mut Vec<u8>,
    bytes_max: usize,
) -> Result<(), ResponseTooLarge> {
    let start = out.len();
    msgpack::array(out, series.len());
    for s in series {
        msgpack::map(out, 9);
        msgpack::str(out, "name");
        msgpack::str(out, s.name);
        msgpack::str(out, "start");
        msgpack::int(out, s.series.start);
        msgpack::str(out, "end");
        msgpack::int(out, s.series.end);
        msgpack::str(out, "step");
        msgpack::int(out, s.series.step);
        msgpack::str(out, "values");
        msgpack::array(out, s.series.values.len());
        for v in &s.series.values {
            match v {
                Some(v) => msgpack::float(out, *v),
                None => msgpack::nil(out),
            }
        }
        msgpack::str(out, "pathExpression");
        msgpack::str(out, s.path_expression);
        msgpack::str(out, "valuesPerPoint");
        msgpack::int(out, 1);
        msgpack::str(out, "consolidationFunc");
        msgpack::str(out, s.consolidation_func);
        msgpack::str(out, "xFilesFactor");
        msgpack::float(out, s.x_files_factor);
        bounded(out, start, bytes_max)?;
    }
    Ok(())
}

/// `/render?format=json`; `no_null_points` is graphite-web's `noNullPoints` (null points
/// dropped, and a series left with none dropped). graphite-web always escapes to ASCII
/// here.
pub fn render_json(
    series: &[RenderSeries<'_>],
    no_null_points: bool,
    out: &mut Vec<u8>,
    bytes_max: usize,
) -> Result<(), ResponseTooLarge> {
    let start = out.len();
    out.push(b'[');
    let mut first = true;
    for s in series {
        let keep = |v: &Option<f64>| !no_null_points || v.is_some_and(|v| !v.is_nan());
        if no_null_points && !s.series.values.iter().any(keep) {
            continue;
        }
        if !first {
            out.extend_from_slice(b", ");
        }
        first = false;
        out.extend_from_slice(b"{\"target\": ");
        json::str(out, s.name, true);
        out.extend_from_slice(b", \"tags\": {");
        for (i, (tag, value)) in graphite_tags(s.name).into_iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            json::str(out, tag, true);
            out.extend_from_slice(b": ");
            json::str(out, value, true);
        }
        out.extend_from_slice(b"}, \"datapoints\": [");
        let mut first_point = true;
        for (ts, v) in s.series.points() {
            if !keep(&v) {
                continue;
            }
            if !first_point {
                out.extend_from_slice(b", ");
            }
            first_point = false;
            out.push(b'[');
            match v {
                // graphite-web's `.replace('NaN,', 'null,').replace('Infinity,',
                // '1e9999,')`: a value is always followed by its timestamp's comma.
                None => out.extend_from_slice(b"null"),
                Some(v) if v.is_nan() => out.extend_from_slice(b"null"),
                Some(v) if v.is_infinite() => {
                    out.extend_from_slice(if v > 0.0 { b"1e9999" } else { b"-1e9999" })
                }
                Some(v) => crate::tools::pyfmt::py_repr_into(out, v),
            }
            let _ = write!(Json(out), ", {ts}]");
        }
        out.extend_from_slice(b"]}");
        bounded(out, start, bytes_max)?;
    }
    out.push(b']');
    bounded(out, start, bytes_max)
}

/// `json` (written as Python's `json.dumps` writes without `indent`: `", "` and `": "`
/// between items) as `json.dumps(..., indent=2)` writes it, graphite-web's `pretty=1`:
/// each item of a non-empty array or object on its own line, two spaces a level, `[]`
/// and `{}` as they are.
pub fn python_indent(json: &[u8], bytes_max: usize) -> Result<Vec<u8>, ResponseTooLarge> {
    let mut out = Vec::with_capacity(json.len() * 2);
    let mut depth = 0usize;
    let newline = |out: &mut Vec<u8>, depth: usize| {
        out.push(b'\n');
        out.resize(out.len() + 2 * depth, b' ');
    };
    let (mut i, mut in_string) = (0, false);
    while i < json.len() {
        let b = json[i];
        i += 1;
        if in_string {
            out.push(b);
            match b {
                b'\\' if i < json.len() => {
                    out.push(json[i]);
                    i += 1;
                }
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                out.push(b);
            }
            b'[' | b'{' => {
                out.push(b);
                if json.get(i).is_some_and(|&c| c == b']' || c == b'}') {
                    out.push(json[i]);
                    i += 1;
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(b);
            }
            b',' => {
                out.push(b',');
                newline(&mut out, depth);
                if json.get(i) == Some(&b' ') {
                    i += 1;
                }
            }
            _ => out.push(b),
        }
        if out.len() > bytes_max {
            return Err(ResponseTooLarge { bytes_max });
        }
    }
    Ok(out)
}

/// graphite-web 1.1.10's `renderViewJson` with `maxDataPoints` (Grafana always sends
/// it): each series whose step puts more than `max_points` points in the whole request's
/// range (earliest start to latest end, over all series) is averaged over
/// `ceil(points / max_points)` slots (`TimeSeries.consolidate`, its `average`, a bucket
/// of gaps or with fewer known values than `x_files_factor` of its slots a gap). Its
/// start moves to the next multiple of the new step after it, by at least one new step,
/// and one slot fewer than that move is dropped from the front, as graphite-web's
/// `del series[0]` loop does. `max_points` 1 averages each series into one point at its
/// start. The result has as many points as graphite-web's `zip` of values and
/// timestamps. Where graphite-web fails (deleting from an exhausted series), the series
/// is left empty.
pub fn consolidate_max_points(series: &mut [&mut Series], max_points: u64, x_files_factor: f64) {
    assert!(max_points > 0, "maxDataPoints 0 is refused before this");
    let Some(first) = series.iter().find(|s| !s.values.is_empty()) else {
        // graphite-web's `if any(data)`: nothing to consolidate.
        return;
    };
    let (mut start_all, mut end_all) = (first.start, first.end);
    for s in series.iter() {
        start_all = start_all.min(s.start);
        end_all = end_all.max(s.end);
    }
    let range = (end_all - start_all) as f64;
    for s in series.iter_mut() {
        let per_point = if max_points == 1 {
            s.values.len() as i64
        } else {
            let points = range / s.step as f64;
            if (max_points as f64) >= points {
                continue;
            }
            let per_point = (points / max_points as f64).ceil() as i64;
            let seconds = per_point * s.step;
            let nudge = seconds + s.start.rem_euclid(s.step) - s.start.rem_euclid(seconds);
            s.start += nudge;
            let lose = ((nudge / s.step) - 1).max(0) as usize;
            s.values.drain(..lose.min(s.values.len()));
            per_point
        };
        if per_point <= 1 {
            continue;
        }
        let step = per_point * s.step;
        // graphite-web zips the buckets with range(start, end + 1, step).
        let stamps = ((s.end + 1 - s.start).max(0) + step - 1) / step;
        let buckets: Vec<Option<f64>> = s
            .values
            .chunks(per_point as usize)
            .take(stamps as usize)
            .map(|bucket| {
                let (sum, known) =
                    (bucket.iter().flatten()).fold((0.0, 0usize), |(sum, n), v| (sum + v, n + 1));
                (known > 0 && known as f64 / per_point as f64 >= x_files_factor)
                    .then(|| sum / known as f64)
            })
            .collect();
        s.values = buckets;
        s.step = step;
        s.end = s.start + s.values.len() as i64 * step;
    }
}

/// graphite-web's `TimeSeries.tags` for a fetched series with its default tag
/// database: `TaggedSeries.parse(name).tags` (`name;k=v;...`: the tags in order, a
/// repeated tag keeping its first place and last value, then `name`, the metric with
/// leading `~` removed), or `{'name': name}` when that fails or the name looks like a
/// function call (`^[a-z]+[(].+[)]$`, case-insensitive).
pub fn graphite_tags(name: &str) -> Vec<(&str, &str)> {
    let fallback = vec![("name", name)];
    if looks_like_call(name) {
        return fallback;
    }
    let mut segments = name.split(';');
    let metric = segments.next().unwrap_or("");
    let mut tags: Vec<(&str, &str)> = Vec::new();
    for segment in segments {
        let Some((tag, value)) = segment.split_once('=') else {
            return fallback;
        };
        let valid = !tag.is_empty()
            && !value.is_empty()
            && !tag.contains([';', '!', '^', '='])
            && !value.starts_with('~');
        if !valid {
            return fallback;
        }
        set_tag(&mut tags, tag, value);
    }
    let sanitized = metric.trim_start_matches('~');
    if sanitized.is_empty() {
        return fallback;
    }
    set_tag(&mut tags, "name", sanitized);
    tags
}

fn set_tag<'a>(tags: &mut Vec<(&'a str, &'a str)>, tag: &'a str, value: &'a str) {
    match tags.iter_mut().find(|(t, _)| *t == tag) {
        Some(slot) => slot.1 = value,
        None => tags.push((tag, value)),
    }
}

fn looks_like_call(name: &str) -> bool {
    let letters = name.bytes().take_while(u8::is_ascii_alphabetic).count();
    let rest = &name.as_bytes()[letters..];
    letters > 0 && rest.len() >= 3 && rest[0] == b'(' && rest[rest.len() - 1] == b')'
}

/// python's `urllib.parse.unquote_plus` (UTF-8, `errors='replace'`).
fn unquote_plus(s: &str) -> String {
    if !s.contains(['%', '+']) {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut bytes = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => bytes.push(b' '),
            b'%' if i + 2 < b.len() && hex(b[i + 1]).is_some() && hex(b[i + 2]).is_some() => {
                bytes.push(hex(b[i + 1]).unwrap_or(0) * 16 + hex(b[i + 2]).unwrap_or(0));
                i += 3;
                continue;
            }
            c => bytes.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// `write!` into a byte buffer.
struct Json<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Json<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// python's `json.dumps` pieces.
mod json {
    /// A str as `json.dumps` writes it: `ensure_ascii` escapes everything outside
    /// printable ASCII as `\uXXXX` (surrogate pairs above U+FFFF); otherwise only `"`,
    /// `\` and control characters are escaped.
    pub fn str(out: &mut Vec<u8>, s: &str, ensure_ascii: bool) {
        out.push(b'"');
        for c in s.chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                '\u{8}' => out.extend_from_slice(b"\\b"),
                '\u{c}' => out.extend_from_slice(b"\\f"),
                c if (c as u32) < 0x20 || (ensure_ascii && !(' '..='~').contains(&c)) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.extend_from_slice(format!("\\u{unit:04x}").as_bytes());
                    }
                }
                c => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        out.push(b'"');
    }
}

/// The few MessagePack forms the read API needs, in the encodings msgpack-python and
/// u-msgpack-python choose (`use_bin_type=True`): the smallest int form, str as
/// fixstr/str8/str16/str32, float64.
mod msgpack {
    pub fn nil(out: &mut Vec<u8>) {
        out.push(0xc0);
    }

    pub fn bool(out: &mut Vec<u8>, v: bool) {
        out.push(if v { 0xc3 } else { 0xc2 });
    }

    pub fn float(out: &mut Vec<u8>, v: f64) {
        out.push(0xcb);
        out.extend_from_slice(&v.to_be_bytes());
    }

    pub fn int(out: &mut Vec<u8>, v: i64) {
        if (0..128).contains(&v) {
            out.push(v as u8);
        } else if (-32..0).contains(&v) {
            out.push(v as i8 as u8);
        } else if v >= 0 {
            let v = v as u64;
            if v <= u8::MAX.into() {
                out.extend_from_slice(&[0xcc, v as u8]);
            } else if v <= u16::MAX.into() {
                out.push(0xcd);
                out.extend_from_slice(&(v as u16).to_be_bytes());
            } else if v <= u32::MAX.into() {
                out.push(0xce);
                out.extend_from_slice(&(v as u32).to_be_bytes());
            } else {
                out.push(0xcf);
                out.extend_from_slice(&v.to_be_bytes());
            }
        } else if v >= i8::MIN.into() {
            out.extend_from_slice(&[0xd0, v as i8 as u8]);
        } else if v >= i16::MIN.into() {
            out.push(0xd1);
            out.extend_from_slice(&(v as i16).to_be_bytes());
        } else if v >= i32::MIN.into() {
            out.push(0xd2);
            out.extend_from_slice(&(v as i32).to_be_bytes());
        } else {
            out.push(0xd3);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }

    pub fn str(out: &mut Vec<u8>, s: &str) {
        let n = s.len();
        if n < 32 {
            out.push(0xa0 | n as u8);
        } else if n <= u8::MAX as usize {
            out.extend_from_slice(&[0xd9, n as u8]);
        } else if n <= u16::MAX as usize {
            out.push(0xda);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(0xdb);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        out.extend_from_slice(s.as_bytes());
    }

    pub fn array(out: &mut Vec<u8>, n: usize) {
        header(out, n, 0x90, 0xdc, 0xdd);
    }

    pub fn map(out: &mut Vec<u8>, n: usize) {
        header(out, n, 0x80, 0xde, 0xdf);
    }

    fn header(out: &mut Vec<u8>, n: usize, fix: u8, n16: u8, n32: u8) {
        if n < 16 {
            out.push(fix | n as u8);
        } else if n <= u16::MAX as usize {
            out.push(n16);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(n32);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::whisper::find::{Interval, Leaf};

    const MAX: usize = usize::MAX;

    fn node(path: &str, leaf: Option<(i64, i64)>) -> Node {
        Node {
            path: path.to_string(),
            kind: match leaf {
                None => NodeKind::Branch,
                Some((start, end)) => NodeKind::Leaf(Leaf {
                    file: format!("/r/{path}.wsp").into(),
                    interval: Some(Interval { start, end }),
                }),
            },
        }
    }

    /// The nodes of the python runs below, in find's (path) order.
    fn nodes() -> Vec<Node> {
        vec![
            node("servers.a%2Bb", Some((1, 2))),
            node("servers.web01", None),
            node("servers.web02", None),
            node("servers.web02", Some((1699913600, 1699999970))),
        ]
    }

    fn text(f: impl FnOnce(&mut Vec<u8>) -> Result<(), ResponseTooLarge>) -> String {
        let mut out = Vec::new();
        f(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn python_indent_as_json_dumps_indent_2() {
        // json.dumps(d) and json.dumps(d, indent=2) of python 3.11, for
        // d = {"a, b": ["x\"],{", 1.5, None], "c": {}, "d": [], "e": [[]]}.
        let compact = br#"{"a, b": ["x\"],{", 1.5, null], "c": {}, "d": [], "e": [[]]}"#;
        let want = "{\n  \"a, b\": [\n    \"x\\\"],{\",\n    1.5,\n    null\n  ],\n  \"c\": {},\n  \"d\": [],\n  \"e\": [\n    []\n  ]\n}";
        let got = python_indent(compact, 1 << 20).unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), want);
        assert!(python_indent(compact, 20).is_err());
    }

    #[test]
    fn json_strings_as_python() {
        // python3 -c 'import json; print(json.dumps(["a\"b\\c\n\x01\x7f é€😀"]))' (and
        // ensure_ascii=False)
        let s = "a\"b\\c\n\x01\x7f é€😀";
        let mut out = Vec::new();
        json::str(&mut out, s, true);
        assert_eq!(out, br#""a\"b\\c\n\u0001\u007f \u00e9\u20ac\ud83d\ude00""#);
        out.clear();
        json::str(&mut out, s, false);
        assert_eq!(out, "\"a\\\"b\\\\c\\n\\u0001\x7f é€😀\"".as_bytes());
    }

    #[test]
    fn unquote_plus_as_python() {
        // python3 -c "from urllib.parse import unquote_plus as u; print([u(x) for x in [...]])"
        let cases = [
            ("a+b", "a b"),
            ("%41%2e", "A."),
            ("%zz%4", "%zz%4"),
            ("%ff", "\u{fffd}"),
            ("caf%C3%A9", "café"),
            ("%", "%"),
            ("plain", "plain"),
        ];
        for (i, o) in cases {
            assert_eq!(unquote_plus(i), o, "{i}");
        }
    }

    #[test]
    fn find_json_and_treejson_as_graphite_web() {
        // Expected: json.dumps of json_nodes() / tree_json() on these nodes sorted by
        // name (graphite-web 1.1.10's metrics/views.py, run in python 3.11).
        let json = text(|o| find_json(&nodes(), true, o, MAX));
        assert_eq!(
            json,
            r#"[{"path": "servers.a%2Bb", "is_leaf": true, "intervals": [{"start": 1, "end": 2}]}, {"path": "servers.web01", "is_leaf": false}, {"path": "servers.web02", "is_leaf": false}, {"path": "servers.web02", "is_leaf": true, "intervals": [{"start": 1699913600, "end": 1699999970}]}]"#
        );
        let tree = text(|o| find_treejson(&nodes(), "servers.*", true, true, o, MAX));
        assert_eq!(
            tree,
            r#"[{"text": "*", "id": "servers.*", "allowChildren": 1, "expandable": 1, "leaf": 0}, {"text": "web01", "id": "servers.web01", "allowChildren": 1, "expandable": 1, "leaf": 0}, {"text": "web02", "id": "servers.web02", "allowChildren": 1, "expandable": 1, "leaf": 0}, {"text": "a+b", "id": "servers.a%2Bb", "allowChildren": 0, "expandable": 0, "leaf": 1}]"#
        );
        assert_eq!(text(|o| find_treejson(&[], "x", true, true, o, MAX)), "[]");
        assert_eq!(text(|o| find_json(&[], true, o, MAX)), "[]");
        let one = [node("a", Some((1, 2)))];
        assert_eq!(
            text(|o| find_treejson(&one, "a", true, true, o, MAX)),
            r#"[{"text": "a", "id": "a", "allowChildren": 0, "expandable": 0, "leaf": 1}]"#
        );
        let leaf_without_interval = [Node {
            path: "a.b".into(),
            kind: NodeKind::Leaf(Leaf {
                file: "/r/a/b.wsp".into(),
                interval: None,
            }),
        }];
        assert_eq!(
            text(|o| find_json(&leaf_without_interval, true, o, MAX)),
            r#"[{"path": "a.b", "is_leaf": true, "intervals": []}]"#
        );
    }

    #[test]
    fn expand_as_graphite_web() {
        let a = [node("a.x", None), node("a.y", Some((0, 1)))];
        let b = [node("a.y", Some((0, 1))), node("b.z", Some((0, 1)))];
        let results: [(&str, &[Node]); 3] = [("a.*", &a), ("*.{y,z}", &b), ("a.*", &a)];
        assert_eq!(
            text(|o| expand_json(&results, false, false, true, o, MAX)),
            r#"{"results": ["a.x", "a.y", "b.z"]}"#
        );
        // A query asked twice keeps its last answer (graphite-web's dict), even where
        // the answers differ (a file appeared between the two finds).
        let results: [(&str, &[Node]); 3] = [("a.*", &a), ("*.{y,z}", &b), ("a.*", &a[1..])];
        assert_eq!(
            text(|o| expand_json(&results, false, false, true, o, MAX)),
            r#"{"results": ["a.y", "b.z"]}"#
        );
        assert_eq!(
            text(|o| expand_json(&results, true, true, true, o, MAX)),
            r#"{"results": {"a.*": ["a.y"], "*.{y,z}": ["a.y", "b.z"]}}"#
        );
    }

    #[test]
    fn msgpack_forms() {
        let mut out = Vec::new();
        for v in [
            0,
            127,
            128,
            255,
            256,
            65535,
            65536,
            1 << 32,
            -1,
            -32,
            -33,
            -128,
            -129,
            -32769,
            i64::MIN,
        ] {
            msgpack::int(&mut out, v);
        }
        // graphite-web 1.1.10's vendored u-msgpack-python, from its webapp/ directory:
        // python3 -c "import graphite.umsgpack as m; print(b''.join(m.packb(v) for v in [...]).hex())"
        assert_eq!(
            out.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "007fcc80ccffcd0100cdffffce00010000cf0000000100000000ffe0d0dfd080d1ff7fd2ffff7fffd38000000000000000"
        );
        out.clear();
        msgpack::str(&mut out, &"x".repeat(31));
        assert_eq!(out[0], 0xbf);
        out.clear();
        msgpack::str(&mut out, &"x".repeat(32));
        assert_eq!(out[..2], [0xd9, 32]);
        out.clear();
        msgpack::str(&mut out, &"x".repeat(256));
        assert_eq!(out[..3], [0xda, 1, 0]);
        out.clear();
        msgpack::array(&mut out, 15);
        msgpack::array(&mut out, 16);
        msgpack::map(&mut out, 1);
        msgpack::map(&mut out, 70000);
        assert_eq!(out, [0x9f, 0xdc, 0, 16, 0x81, 0xdf, 0, 1, 0x11, 0x70]);
    }

    #[test]
    fn tags_as_graphite_web() {
        assert_eq!(graphite_tags("a.b"), [("name", "a.b")]);
        assert_eq!(graphite_tags("~a.b"), [("name", "a.b")]);
        assert_eq!(graphite_tags("~~"), [("name", "~~")]);
        assert_eq!(
            graphite_tags("cpu;host=a;dc=x"),
            [("host", "a"), ("dc", "x"), ("name", "cpu")]
        );
        assert_eq!(
            graphite_tags("cpu;name=x;k=1;k=2"),
            [("name", "cpu"), ("k", "2")]
        );
        assert_eq!(graphite_tags("cpu;bad"), [("name", "cpu;bad")]);
        assert_eq!(graphite_tags("cpu;k=~v"), [("name", "cpu;k=~v")]);
        assert_eq!(graphite_tags("cpu;k!=v"), [("name", "cpu;k!=v")]);
        assert_eq!(
            graphite_tags("sumSeries(a;b=c)"),
            [("name", "sumSeries(a;b=c)")]
        );
    }

    #[test]
    fn render_json_as_graphite_web() {
        let s = Series {
            start: 1700000040,
            end: 1700000340,
            step: 60,
            values: vec![
                Some(0.0),
                None,
                Some(2.0),
                Some(f64::NAN),
                Some(f64::INFINITY),
            ],
        };
        let series = [RenderSeries {
            name: "servers.web01.cpu.user",
            path_expression: "servers.*.cpu.user",
            series: &s,
            consolidation_func: CONSOLIDATION_DEFAULT,
            x_files_factor: 0.0,
        }];
        assert_eq!(
            text(|o| render_json(&series, false, o, MAX)),
            r#"[{"target": "servers.web01.cpu.user", "tags": {"name": "servers.web01.cpu.user"}, "datapoints": [[0.0, 1700000040], [null, 1700000100], [2.0, 1700000160], [null, 1700000220], [1e9999, 1700000280]]}]"#
        );
        assert_eq!(
            text(|o| render_json(&series, true, o, MAX)),
            r#"[{"target": "servers.web01.cpu.user", "tags": {"name": "servers.web01.cpu.user"}, "datapoints": [[0.0, 1700000040], [2.0, 1700000160], [1e9999, 1700000280]]}]"#
        );
        let empty = Series {
            values: vec![None; 5],
            ..s.clone()
        };
        let series = [RenderSeries {
            series: &empty,
            ..series[0]
        }];
        assert_eq!(text(|o| render_json(&series, true, o, MAX)), "[]");
    }

    #[test]
    fn bounds() {
        let s = Series {
            start: 0,
            end: 6000,
            step: 60,
            values: vec![Some(1.0); 100],
        };
        let series: Vec<RenderSeries<'_>> = (0..10)
            .map(|_| RenderSeries {
                name: "a.b",
                path_expression: "a.*",
                series: &s,
                consolidation_func: CONSOLIDATION_DEFAULT,
                x_files_factor: 0.0,
            })
            .collect();
        let mut out = Vec::new();
        render_pickle(&series, &mut out, MAX).unwrap();
        let full = out.len();
        for f in [render_pickle, render_msgpack] {
            let mut out = Vec::new();
            assert_eq!(
                f(&series, &mut out, full / 2),
                Err(ResponseTooLarge {
                    bytes_max: full / 2
                })
            );
            // It stopped soon after the bound, not at the end.
            assert!(out.len() < full / 2 + full / 5, "{} of {full}", out.len());
        }
        let mut out = Vec::new();
        assert!(render_json(&series, false, &mut out, 100).is_err());
        assert!(find_pickle(&nodes(), &mut Vec::new(), 50).is_err());
        assert!(find_msgpack(&nodes(), &mut Vec::new(), 50).is_err());
        assert!(find_json(&nodes(), true, &mut Vec::new(), 50).is_err());
        assert!(find_treejson(&nodes(), "a", false, true, &mut Vec::new(), 50).is_err());
        let r: [(&str, &[Node]); 1] = [("q", &nodes())];
        assert!(expand_json(&r, false, true, true, &mut Vec::new(), 20).is_err());
        assert!(find_pickle(&nodes(), &mut Vec::new(), 10_000).is_ok());
    }

    #[test]
    fn formats() {
        assert_eq!(Format::from_name("msgpack"), Some(Format::Msgpack));
        assert_eq!(Format::from_name("treejson"), None);
        assert_eq!(Format::Pickle.content_type(), "application/pickle");
    }
}
