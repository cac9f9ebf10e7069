//! The read API on the admin listener, as graphite-web's cluster peers and go-carbon's
//! carbonserver answer it: `/metrics/find`, `/metrics/expand` and `/render` (raw series,
//! and of graphite-web's functions only `constantLine`, which Grafana's data source
//! test renders) over the first `[[store]]`'s whisper tree and its cache, in
//! graphite-web 1.1.10's shapes (`read_format`). graphite-web with `CLUSTER_SERVERS`
//! pointing here runs its functions over these series; Grafana points at graphite-web,
//! or straight here for raw series.
//!
//! Everything runs on the control thread: file walks and reads on tokio's blocking pool,
//! the cache by message to the shards that own the names (answered on their tick), so a
//! read never blocks a shard's data path. Bounds: a query matching more than
//! `read_series_max` series (or walking more than `read_dirs_max` directories) is
//! refused with 422, a response over `read_response_bytes_max` with 422 too, each with a
//! message saying which bound.
//!
//! Parameters come from the query string and, for POST, a urlencoded or
//! multipart/form-data body (graphite-web merges `request.GET` and `request.POST`; its
//! `REMOTE_STORE_USE_POST = True` sends multipart). Times (`from`, `until`, `now`) are epoch
//! seconds or graphite's relative forms (`now`, `-1h`, `now-30min`, ...).

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::read_format::{self, Format, RenderSeries, CONSOLIDATION_DEFAULT};
use super::AdminState;
use crate::config::{StoreKind, WhisperStore};
use crate::store::glob::{Glob, GlobLimits};
use crate::store::whisper::find::{self, FindOptions, Node, NodeKind};
use crate::store::whisper::path::metric_path;
use crate::store::whisper::render::{self, FetchError, Series};

crate::counter_set! {
    /// Counters of the read API (control thread).
    pub struct ReadCounters {
        /// /metrics/find requests.
        find_requests: counter,
        /// /metrics/expand requests.
        expand_requests: counter,
        /// /metrics/index.json requests.
        index_requests: counter,
        /// /render requests.
        render_requests: counter,
        /// CarbonLink requests answered.
        carbonlink_requests: counter,
        /// CarbonLink frames that were not a request (connection closed, as carbon).
        carbonlink_bad_requests: counter,
        /// Requests refused as malformed (400).
        bad_requests: counter,
        /// Requests refused by read_series_max or read_dirs_max (422).
        refused_too_many_series: counter,
        /// Requests refused by read_response_bytes_max (422).
        refused_response_too_large: counter,
        /// Series rendered.
        series_rendered: counter,
        /// Cache points merged into rendered series.
        cache_points_merged: counter,
        /// Whisper files skipped because their header does not read.
        corrupt_files: counter,
        /// Directories or files that could not be read.
        unreadable: counter,
    }
}

/// Query and body parameters, in order.
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub(crate) fn parse(
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Params, String> {
        let mut p = Vec::new();
        if let Some(q) = query {
            parse_into(q, &mut p)?;
        }
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let (mime, rest) = content_type.split_once(';').unwrap_or((content_type, ""));
        let mime = mime.trim().to_ascii_lowercase();
        if body.is_empty() {
            // Nothing to read, whatever the type says.
        } else if mime == "application/x-www-form-urlencoded" {
            let text =
                std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_string())?;
            parse_into(text, &mut p)?;
        } else if mime == "multipart/form-data" {
            // graphite-web's cluster requests with REMOTE_STORE_USE_POST = True (urllib3
            // encodes POST fields as multipart).
            let boundary = header_param(rest, "boundary")
                .ok_or_else(|| "multipart/form-data without a boundary".to_string())?;
            parse_multipart(body, &boundary, &mut p)?;
        }
        Ok(Params(p))
    }

    fn get(&self, key: &str) -> Option<&str> {
        // graphite-web's QueryDict.get: the last value.
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn flag(&self, key: &str) -> bool {
        self.get(key)
            .is_some_and(|v| v.parse::<i64>().unwrap_or(0) != 0)
    }
}

fn parse_into(text: &str, out: &mut Vec<(String, String)>) -> Result<(), String> {
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((super::percent_decode(k)?, super::percent_decode(v)?));
    }
    Ok(())
}

/// A `key=value` parameter of a header (`; boundary="x"`), unquoted.
fn header_param(params: &str, key: &str) -> Option<String> {
    params.split(';').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case(key) {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        Some(v.to_string())
    })
}

/// The fields of a `multipart/form-data` body (RFC 7578), in order. A field's name is
/// its Content-Disposition `name` (HTML5's `%22`, `%0D`, `%0A` escapes read back); its
/// value is the part's bytes, which must be UTF-8. Parts without a name are skipped, as
/// Django skips them.
fn parse_multipart(
    body: &[u8],
    boundary: &str,
    out: &mut Vec<(String, String)>,
) -> Result<(), String> {
    if boundary.is_empty() || boundary.len() > 200 {
        return Err(format!(
            "multipart boundary {boundary:?}: 1 to 200 characters"
        ));
    }
    let delimiter = format!("--{boundary}");
    let d = delimiter.as_bytes();
    let truncated = || "the multipart body ends before its closing boundary".to_string();
    // Every delimiter after the first starts a line.
    let next_delimiter = format!("\r\n{delimiter}");
    let next_delimiter = next_delimiter.as_bytes();
    // The preamble (usually nothing) ends at the first delimiter.
    let mut at = memchr::memmem::find(body, d).ok_or_else(truncated)? + d.len();
    loop {
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            return Ok(());
        }
        // The delimiter line ends with CRLF (transport padding before it is allowed).
        let eol = memchr::memmem::find(rest, b"\r\n").ok_or_else(truncated)?;
        let part_start = at + eol + 2;
        let part_len =
            memchr::memmem::find(&body[part_start..], next_delimiter).ok_or_else(truncated)?;
        let part = &body[part_start..part_start + part_len];
        at = part_start + part_len + next_delimiter.len();
        let (head, value) = match memchr::memmem::find(part, b"\r\n\r\n") {
            Some(i) => (&part[..i], &part[i + 4..]),
            // A part with no headers starts with the blank line.
            None if part.starts_with(b"\r\n") => (&[][..], &part[2..]),
            None => return Err("a multipart part without a blank line after its headers".into()),
        };
        let head = std::str::from_utf8(head)
            .map_err(|_| "a multipart part's headers are not UTF-8".to_string())?;
        let name = head.split("\r\n").find_map(|line| {
            let (k, v) = line.split_once(':')?;
            if !k.trim().eq_ignore_ascii_case("content-disposition") {
                return None;
            }
            let (kind, params) = v.split_once(';').unwrap_or((v, ""));
            if !kind.trim().eq_ignore_ascii_case("form-data") {
                return None;
            }
            header_param(params, "name")
        });
        let Some(name) = name else { continue };
        let name = name
            .replace("%22", "\"")
            .replace("%0D", "\r")
            .replace("%0A", "\n");
        let value = std::str::from_utf8(value)
            .map_err(|_| format!("multipart field {name:?} is not UTF-8"))?;
        out.push((name, value.to_string()));
    }
}

/// A refusal: status and message.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, format!("{}\n", self.1)).into_response()
    }
}

fn bad(msg: impl Into<String>) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, msg.into())
}

/// The store reads are served from: the first `[[store]]`.
fn read_store(s: &AdminState) -> Result<(String, WhisperStore), Refusal> {
    let topo = s.control.topology();
    match topo.config.stores.first() {
        Some(st) => {
            let StoreKind::Whisper(w) = &st.kind;
            Ok((st.name.clone(), (**w).clone()))
        }
        None => Err(Refusal(
            StatusCode::NOT_FOUND,
            "no [[store]] is configured: nothing to read".into(),
        )),
    }
}

/// Whether a read that met corrupt files may say so in the log: at most once every 10
/// seconds, the whole process (a dashboard repeats its queries).
fn corrupt_log_due() -> bool {
    static LAST_S: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(i64::MIN);
    let now = unix_now();
    let last = LAST_S.load(std::sync::atomic::Ordering::Relaxed);
    now.saturating_sub(last) >= 10
        && LAST_S
            .compare_exchange(
                last,
                now,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            )
            .is_ok()
}

fn unix_now() -> i64 {
    crate::shard::pipeline::unix_ms() / 1000
}

pub use super::attime::parse_at_time;

fn ensure_ascii(headers: &HeaderMap) -> bool {
    // graphite-web's json_response_for: ensure_ascii unless the client accepts more.
    match headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(a) => a == "application/json",
    }
}

/// A JSON body as graphite-web finishes it: indented with `pretty` (any non-empty value,
/// as Python's `bool()` reads it), then wrapped in the `jsonp` callback; the content type
/// when it is no longer plain JSON.
fn json_body(
    params: &Params,
    body: Vec<u8>,
    bytes_max: usize,
) -> Result<(Option<&str>, Vec<u8>), read_format::ResponseTooLarge> {
    let body = match params.get("pretty").filter(|v| !v.is_empty()) {
        Some(_) => read_format::python_indent(&body, bytes_max)?,
        None => body,
    };
    Ok(jsonp(params, body))
}

fn jsonp(params: &Params, body: Vec<u8>) -> (Option<&str>, Vec<u8>) {
    match params.get("jsonp").filter(|j| !j.is_empty()) {
        Some(cb) => {
            let mut out = Vec::with_capacity(body.len() + cb.len() + 2);
            out.extend_from_slice(cb.as_bytes());
            out.push(b'(');
            out.extend_from_slice(&body);
            out.push(b')');
            (Some("text/javascript"), out)
        }
        None => (None, body),
    }
}

fn respond(content_type: &str, body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, content_type.to_string())], body).into_response()
}

fn count(s: &AdminState, f: impl FnOnce(&mut ReadCounters)) {
    s.registry.read_counters(f);
}

/// The nodes matching each query, found on the blocking pool.
async fn find_all(
    s: &AdminState,
    store: &WhisperStore,
    queries: &[String],
    leaves_only: bool,
    intervals: bool,
    now: i64,
) -> Result<Vec<Vec<Node>>, Refusal> {
    let mut globs = Vec::with_capacity(queries.len());
    for q in queries {
        globs.push(
            Glob::compile(q, &GlobLimits::default())
                .map_err(|e| bad(format!("query {q:?}: {e}")))?,
        );
    }
    let root = store.path.clone();
    let opts = FindOptions {
        now,
        leaves_only,
        intervals,
        series_max: store.read_series_max,
        dirs_max: store.read_dirs_max,
    };
    let joined = tokio::task::spawn_blocking(move || {
        let mut all = Vec::with_capacity(globs.len());
        let mut total = 0usize;
        for g in &globs {
            let found = find::find(&root, g, &opts)?;
            total += found.nodes.len();
            if total > opts.series_max {
                return Err(find::FindError::TooManySeries {
                    max: opts.series_max,
                });
            }
            all.push(found);
        }
        Ok(all)
    })
    .await
    .map_err(|e| {
        Refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("find failed: {e}"),
        )
    })?;
    match joined {
        Ok(all) => {
            let (corrupt, unreadable) = all.iter().fold((0, 0), |(c, u), f| {
                (c + f.stats.corrupt_files, u + f.stats.unreadable)
            });
            count(s, |c| {
                c.corrupt_files += corrupt as u64;
                c.unreadable += unreadable as u64;
            });
            if corrupt + unreadable > 0 && corrupt_log_due() {
                tracing::warn!(corrupt, unreadable, "find: corrupt or unreadable whisper files left out of the answer (counted in corrupt_files, unreadable)");
            }
            Ok(all.into_iter().map(|f| f.nodes).collect())
        }
        Err(e) => {
            count(s, |c| c.refused_too_many_series += 1);
            Err(Refusal(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "{e} (read_series_max {}, read_dirs_max {}): narrow the query",
                    store.read_series_max, store.read_dirs_max
                ),
            ))
        }
    }
}

fn too_large(s: &AdminState, e: read_format::ResponseTooLarge) -> Refusal {
    count(s, |c| c.refused_response_too_large += 1);
    Refusal(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!("{e} (read_response_bytes_max): ask for fewer series or a shorter time"),
    )
}

/// The response to a read request, counting the refusals that were the client's fault.
fn answer(s: &AdminState, r: Result<Response, Refusal>) -> Response {
    r.unwrap_or_else(|r| {
        if r.0 == StatusCode::BAD_REQUEST {
            count(s, |c| c.bad_requests += 1);
        }
        r.into_response()
    })
}

/// `/metrics/find/`.
pub async fn find(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    count(&s, |c| c.find_requests += 1);
    answer(&s, find_inner(&s, q.as_deref(), &headers, &body).await)
}

async fn find_inner(
    s: &AdminState,
    q: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Refusal> {
    let p = Params::parse(q, headers, body).map_err(bad)?;
    let (_, store) = read_store(s)?;
    let mut queries: Vec<String> = p.all("query").into_iter().map(str::to_string).collect();
    if queries.is_empty() {
        return Err(bad("missing ?query="));
    }
    let now = match p.get("now") {
        Some(n) => parse_at_time(n, unix_now()).map_err(bad)?,
        None => unix_now(),
    };
    let format = p.get("format").unwrap_or("treejson");
    let leaves_only = p.flag("leavesOnly");
    // graphite-web's own JSON shapes; the cluster formats (json, pickle, msgpack) come
    // from `Format`.
    let fmt = if matches!(format, "treejson" | "completer" | "nodelist") {
        None
    } else {
        Some(Format::from_name(format).ok_or_else(|| {
            bad(format!(
                "format {format:?}: expected treejson, json, pickle, msgpack, completer or nodelist"
            ))
        })?)
    };
    let position = match p.get("position") {
        None => -1,
        Some(v) => v
            .trim()
            .parse::<i64>()
            .map_err(|_| bad(format!("position {v:?}: expected an integer")))?,
    };
    let tree_query = queries[0].clone();
    if format == "completer" {
        let variants = p.flag("automatic_variants");
        for q in &mut queries {
            *q = read_format::completer_query(q, variants);
        }
    }
    let found = find_all(s, &store, &queries, leaves_only, fmt.is_some(), now).await?;
    let mut nodes: Vec<Node> = found.into_iter().flatten().collect();
    nodes.sort_by(|a, b| (&a.path, a.is_leaf()).cmp(&(&b.path, b.is_leaf())));
    nodes.dedup_by(|a, b| a.path == b.path && a.is_leaf() == b.is_leaf());
    let max = store.read_response_bytes_max;
    let ascii = ensure_ascii(headers);
    let mut out = Vec::new();
    let encoded = match fmt {
        None if format == "completer" => {
            read_format::find_completer(&nodes, p.flag("wildcards"), ascii, &mut out, max)
        }
        None if format == "nodelist" => {
            read_format::find_nodelist(&nodes, position, ascii, &mut out, max)
                .map_err(|path| bad(format!("position {position}: {path:?} has no such part")))?
        }
        None => read_format::find_treejson(
            &nodes,
            &tree_query,
            p.flag("wildcards"),
            ascii,
            &mut out,
            max,
        ),
        Some(Format::Json) => read_format::find_json(&nodes, ascii, &mut out, max),
        Some(Format::Pickle) => read_format::find_pickle(&nodes, &mut out, max),
        Some(Format::Msgpack) => read_format::find_msgpack(&nodes, &mut out, max),
    };
    encoded.map_err(|e| too_large(s, e))?;
    let ct = fmt.map_or("application/json", Format::content_type);
    let (wrapped, out) = if matches!(fmt, None | Some(Format::Json)) {
        json_body(&p, out, max).map_err(|e| too_large(s, e))?
    } else {
        (None, out)
    };
    Ok(respond(wrapped.unwrap_or(ct), out))
}

/// `/metrics/index.json`: every metric name in the store's tree (graphite-web's
/// cluster peers ask it with `local=1`, `RemoteFinder.get_index`; an error there
/// counts against the peer). Bounded by `read_dirs_max` and `read_response_bytes_max`.
pub async fn index(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    count(&s, |c| c.index_requests += 1);
    let r = async {
        let p = Params::parse(q.as_deref(), &headers, &body).map_err(bad)?;
        let (_, store) = read_store(&s)?;
        let (root, dirs_max) = (store.path.clone(), store.read_dirs_max);
        let walked = tokio::task::spawn_blocking(move || find::index(&root, dirs_max))
            .await
            .map_err(|e| {
                Refusal(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("index failed: {e}"),
                )
            })?;
        let (names, stats) = walked.map_err(|e| {
            count(&s, |c| c.refused_too_many_series += 1);
            Refusal(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{e} (read_dirs_max {})", store.read_dirs_max),
            )
        })?;
        count(&s, |c| c.unreadable += stats.unreadable as u64);
        let mut out = Vec::new();
        read_format::index_json(
            &names,
            ensure_ascii(&headers),
            &mut out,
            store.read_response_bytes_max,
        )
        .map_err(|e| too_large(&s, e))?;
        let (wrapped, out) =
            json_body(&p, out, store.read_response_bytes_max).map_err(|e| too_large(&s, e))?;
        Ok(respond(wrapped.unwrap_or("application/json"), out))
    }
    .await;
    answer(&s, r)
}

/// `/metrics/expand/`.
pub async fn expand(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    count(&s, |c| c.expand_requests += 1);
    let r = async {
        let p = Params::parse(q.as_deref(), &headers, &body).map_err(bad)?;
        let (_, store) = read_store(&s)?;
        let queries: Vec<String> = p.all("query").into_iter().map(str::to_string).collect();
        if queries.is_empty() {
            return Err(bad("missing ?query="));
        }
        let leaves_only = p.flag("leavesOnly");
        let found = find_all(&s, &store, &queries, leaves_only, false, unix_now()).await?;
        let pairs: Vec<(&str, &[Node])> = queries
            .iter()
            .map(String::as_str)
            .zip(found.iter().map(Vec::as_slice))
            .collect();
        let mut out = Vec::new();
        read_format::expand_json(
            &pairs,
            leaves_only,
            p.flag("groupByExpr"),
            ensure_ascii(&headers),
            &mut out,
            store.read_response_bytes_max,
        )
        .map_err(|e| too_large(&s, e))?;
        let (wrapped, out) =
            json_body(&p, out, store.read_response_bytes_max).map_err(|e| too_large(&s, e))?;
        Ok(respond(wrapped.unwrap_or("application/json"), out))
    }
    .await;
    answer(&s, r)
}

/// One series to render: its name, the target that found it, its file.
struct Wanted {
    name: String,
    target: usize,
    file: Option<PathBuf>,
}

/// A `constantLine(N)` target's value, read as graphite-web's grammar reads numbers
/// (its float parameter makes an int literal a float too: `100` is named `100.0`).
#[derive(Debug, Clone, PartialEq)]
struct Constant {
    /// Python's `str()` of the float: the series' name.
    text: String,
    value: f64,
}

impl Constant {
    /// `None` when `target` is not a `constantLine(...)` call; otherwise the value, or
    /// what is wrong with the argument.
    fn parse(target: &str) -> Option<Result<Constant, String>> {
        let inner = target
            .trim()
            .strip_prefix("constantLine")?
            .trim_start()
            .strip_prefix('(')?
            .strip_suffix(')')?
            .trim();
        // (graphite-web's grammar reads `constantLine(value=3)` as the path
        // `constantLine`: a keyword is refused here rather than rendered as nothing.)
        Some(Constant::number(inner).ok_or_else(|| {
            format!("constantLine takes one number (an int, a decimal or 1e3), not {inner:?}")
        }))
    }

    /// graphite-web's number literals: `-?\d+`, `-?\d+\.\d+`, and either followed by
    /// `e` or `E` and `-?\d+`.
    fn number(arg: &str) -> Option<Constant> {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let (mantissa, exponent) = match arg.find(['e', 'E']) {
            Some(at) => (&arg[..at], Some(&arg[at + 1..])),
            None => (arg, None),
        };
        let unsigned = mantissa.strip_prefix('-').unwrap_or(mantissa);
        let mantissa_ok = match unsigned.split_once('.') {
            Some((whole, fraction)) => digits(whole) && digits(fraction),
            None => digits(unsigned),
        };
        let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix('-').unwrap_or(e)));
        if !mantissa_ok || !exponent_ok {
            return None;
        }
        let value: f64 = arg.parse().ok()?;
        let mut text = Vec::new();
        crate::tools::pyfmt::py_repr_into(&mut text, value);
        Some(Constant {
            text: String::from_utf8(text).ok()?,
            value,
        })
    }
}

/// `/render/`: raw series (no functions), graphite-web's pickle, msgpack or json.
pub async fn render(
    State(s): State<Arc<AdminState>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    count(&s, |c| c.render_requests += 1);
    answer(&s, render_inner(&s, q.as_deref(), &headers, &body).await)
}

async fn render_inner(
    s: &AdminState,
    q: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Refusal> {
    let p = Params::parse(q, headers, body).map_err(bad)?;
    let (store_name, store) = read_store(s)?;
    let mut targets: Vec<String> = p.all("target").into_iter().map(str::to_string).collect();
    if targets.is_empty() {
        // jQuery's and PHP's form, which graphite-web reads when there is no `target`.
        targets = p.all("target[]").into_iter().map(str::to_string).collect();
    }
    if targets.is_empty() {
        return Err(bad("missing ?target="));
    }
    // graphite-web sends a `seriesByTag(...)` target to its cluster peers as it is (the
    // other functions it applies itself). cadent keeps no tag index (a tagged series'
    // file is named by its hash), so it matches nothing here, as on a graphite-web with
    // an empty tag database: an error would have graphite-web leave cadent out of every
    // request for REMOTE_RETRY_DELAY.
    let by_tag = |t: &str| t.trim_start().starts_with("seriesByTag(");
    // `constantLine(N)` is answered here: Grafana's "Save & test" of a Graphite data
    // source renders `constantLine(100)`, so a data source pointed straight at cadent
    // passes it.
    let mut constants: Vec<(usize, Constant)> = Vec::new();
    for (i, t) in targets.iter_mut().enumerate() {
        if let Some(c) = Constant::parse(t) {
            let c = c.map_err(|e| bad(format!("target {t:?}: {e}")))?;
            // graphite-web's pathExpression for it.
            *t = format!("constantLine({})", c.text);
            constants.push((i, c));
        }
    }
    let constant = |i: usize| constants.iter().any(|(c, _)| *c == i);
    if let Some((_, t)) =
        (targets.iter().enumerate()).find(|(i, t)| t.contains('(') && !by_tag(t) && !constant(*i))
    {
        return Err(bad(format!(
            "target {t:?}: functions are graphite-web's; cadent serves raw series and \
             constantLine (point graphite-web's CLUSTER_SERVERS here to apply functions)"
        )));
    }
    let f = p.get("format").unwrap_or("json");
    let format = Format::from_name(f)
        .ok_or_else(|| bad(format!("format {f:?}: expected json, pickle or msgpack")))?;
    let now = match p.get("now") {
        Some(n) => parse_at_time(n, unix_now()).map_err(bad)?,
        None => unix_now(),
    };
    let from = match p.get("from") {
        Some(f) => parse_at_time(f, now).map_err(bad)?,
        None => now - 86_400,
    };
    let until = match p.get("until") {
        Some(u) => parse_at_time(u, now).map_err(bad)?,
        None => now,
    };
    // graphite-web swaps them when from is later.
    let (from, until) = (from.min(until), from.max(until));
    if from == until {
        return Err(bad(format!(
            "from and until are both {from}: an empty range"
        )));
    }
    // constantLine's points are at from, halfway and until: it needs a step.
    let step = (until - from) / 2;
    if let (Some((i, _)), 0) = (constants.first(), step) {
        return Err(bad(format!(
            "target {:?}: from and until 1 s apart leave constantLine no step",
            targets[*i]
        )));
    }
    // graphite-web takes `maxDataPoints` when it is all digits, and for JSON only.
    let max_data_points = match p.get("maxDataPoints") {
        Some(m) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()) => {
            match m.parse::<u64>().unwrap_or(u64::MAX) {
                0 => return Err(bad("maxDataPoints 0: at least 1 point per series")),
                m => Some(m),
            }
        }
        _ => None,
    };
    let x_files_factor = match p.get("xFilesFactor") {
        Some(x) => x
            .parse::<f64>()
            .map_err(|_| bad(format!("xFilesFactor {x:?}")))?,
        None => 0.0,
    };
    // Leaves: a literal target is its own leaf (its file may not exist yet: the cache
    // may hold it); a glob is found.
    let mut wanted: Vec<Wanted> = Vec::new();
    let mut globs = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        if by_tag(t) || constant(i) {
            continue;
        }
        let g = Glob::compile(t, &GlobLimits::default())
            .map_err(|e| bad(format!("target {t:?}: {e}")))?;
        if let Some(name) = g.literal_name().filter(|_| !t.contains(';')) {
            // Braces or a set of one choice name one metric too (`a.{b,b}`).
            wanted.push(Wanted {
                file: metric_path(&store.path, &name).ok(),
                name,
                target: i,
            });
        } else {
            globs.push((i, t.clone()));
        }
    }
    if !globs.is_empty() {
        let queries: Vec<String> = globs.iter().map(|(_, t)| t.clone()).collect();
        let found = find_all(s, &store, &queries, true, false, now).await?;
        for ((i, _), nodes) in globs.iter().zip(found) {
            for n in nodes {
                if let NodeKind::Leaf(leaf) = n.kind {
                    wanted.push(Wanted {
                        name: n.path,
                        target: *i,
                        file: Some(leaf.file),
                    });
                }
            }
        }
    }
    if wanted.len() + constants.len() > store.read_series_max {
        count(s, |c| c.refused_too_many_series += 1);
        return Err(Refusal(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "the targets match {} series, more than read_series_max {}: narrow them",
                wanted.len() + constants.len(),
                store.read_series_max
            ),
        ));
    }
    // Files on the blocking pool; the cache from the owner shards, meanwhile.
    let files: Vec<Option<PathBuf>> = wanted.iter().map(|w| w.file.clone()).collect();
    let fetching = tokio::task::spawn_blocking(move || {
        files
            .iter()
            .map(|f| match f {
                Some(f) => render::fetch_file(f, from, until, now),
                None => Err(FetchError::NotFound),
            })
            .collect::<Vec<_>>()
    });
    let names: Vec<String> = wanted.iter().map(|w| w.name.clone()).collect();
    let cached = s.control.ask_cache(&store_name, &names).await;
    let fetched = fetching.await.map_err(|e| {
        Refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("render failed: {e}"),
        )
    })?;
    let mut series: Vec<(usize, String, Series)> = Vec::with_capacity(wanted.len());
    let (mut corrupt, mut merged) = (0u64, 0u64);
    let mut first_corrupt = None;
    for ((w, f), points) in wanted.iter().zip(fetched).zip(&cached) {
        let points: Vec<(i64, f64)> = points.iter().map(|&(t, v)| (t as i64, v)).collect();
        match f {
            Ok(Some(mut f)) => {
                merged += f.merge_cache(&points) as u64;
                series.push((w.target, w.name.clone(), f.series));
            }
            Ok(None) => {}
            Err(FetchError::NotFound) if !points.is_empty() => {
                // Only in the cache: whisper's window at the step its file will have.
                let step = i64::from(
                    store
                        .schemas
                        .rules
                        .retentions_for(&w.name)
                        .first()
                        .map_or(60, |r| r.seconds_per_point),
                );
                let mut sr = Series::empty(from, until.min(now).max(from), step);
                merged += sr.overlay(&points) as u64;
                series.push((w.target, w.name.clone(), sr));
            }
            Err(FetchError::Corrupt(e)) => {
                corrupt += 1;
                first_corrupt.get_or_insert_with(|| (w.name.clone(), e.to_string()));
            }
            Err(_) => {}
        }
    }
    if let Some((name, error)) = first_corrupt {
        if corrupt_log_due() {
            tracing::warn!(store = %store_name, series = %name, %error, files = corrupt, "render: corrupt whisper files left out of the answer (counted in corrupt_files)");
        }
    }
    // graphite-web's constantLine: three points, at from, halfway and until.
    for (i, c) in &constants {
        let sr = Series {
            start: from,
            end: until,
            step,
            values: vec![Some(c.value); 3],
        };
        series.push((*i, c.text.clone(), sr));
    }
    // graphite-web orders a target's series by path.
    series.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    if let (Format::Json, Some(m)) = (format, max_data_points) {
        let mut each: Vec<&mut Series> = series.iter_mut().map(|(_, _, s)| s).collect();
        read_format::consolidate_max_points(&mut each, m, x_files_factor);
    }
    let rendered: Vec<RenderSeries<'_>> = series
        .iter()
        .map(|(t, name, sr)| RenderSeries {
            name,
            path_expression: &targets[*t],
            series: sr,
            consolidation_func: CONSOLIDATION_DEFAULT,
            x_files_factor,
        })
        .collect();
    count(s, |c| {
        c.series_rendered += rendered.len() as u64;
        c.cache_points_merged += merged;
        c.corrupt_files += corrupt;
    });
    let max = store.read_response_bytes_max;
    let mut out = Vec::new();
    match format {
        Format::Pickle => read_format::render_pickle(&rendered, &mut out, max),
        Format::Msgpack => read_format::render_msgpack(&rendered, &mut out, max),
        Format::Json => read_format::render_json(&rendered, p.flag("noNullPoints"), &mut out, max),
    }
    .map_err(|e| too_large(s, e))?;
    let (wrapped, out) = if format == Format::Json {
        json_body(&p, out, max).map_err(|e| too_large(s, e))?
    } else {
        (None, out)
    };
    Ok(respond(wrapped.unwrap_or(format.content_type()), out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_lines_read_numbers_as_graphite_web() {
        let c = |t: &str| Constant::parse(t).map(|r| r.map(|c| (c.text, c.value)));
        assert_eq!(c("constantLine(100)"), Some(Ok(("100.0".into(), 100.0))));
        assert_eq!(
            c(" constantLine ( -007 ) "),
            Some(Ok(("-7.0".into(), -7.0)))
        );
        assert_eq!(c("constantLine(-0)"), Some(Ok(("-0.0".into(), -0.0))));
        assert_eq!(c("constantLine(1.50)"), Some(Ok(("1.5".into(), 1.5))));
        assert_eq!(
            c("constantLine(1e400)"),
            Some(Ok(("inf".into(), f64::INFINITY)))
        );
        assert_eq!(c("constantLine(1e3)"), Some(Ok(("1000.0".into(), 1000.0))));
        assert_eq!(c("constantLine(2.5E-1)"), Some(Ok(("0.25".into(), 0.25))));
        assert_eq!(c("constantLine(1e20)"), Some(Ok(("1e+20".into(), 1e20))));
        for bad in [
            "constantLine()",
            "constantLine(.5)",
            "constantLine(1.)",
            "constantLine(+1)",
            "constantLine(a.b)",
            "constantLine(1,2)",
            "constantLine(1e)",
            "constantLine(inf)",
            "constantLine(value=3)",
        ] {
            assert!(matches!(c(bad), Some(Err(_))), "{bad}");
        }
        assert_eq!(c("servers.*.cpu"), None);
        assert_eq!(c("sumSeries(constantLine(1))"), None);
    }

    #[test]
    fn params_merge_query_and_form_body() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        let p =
            Params::parse(Some("target=a.b&format=json"), &h, b"target=c.%2A&from=-1h").unwrap();
        assert_eq!(p.all("target"), ["a.b", "c.*"]);
        assert_eq!(p.get("from"), Some("-1h"));
        assert!(Params::parse(Some("x=%zz"), &HeaderMap::new(), b"").is_err());
    }

    fn multipart(boundary: &str, body: &[u8]) -> Result<Params, String> {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}")
                .parse()
                .unwrap(),
        );
        Params::parse(Some("format=json"), &h, body)
    }

    #[test]
    fn params_read_a_multipart_body_as_urllib3_writes_it() {
        // urllib3 1.26's encode_multipart_formdata (graphite-web's POST requests), with
        // a fixed boundary.
        let body = b"--b0undary\r\nContent-Disposition: form-data; name=\"local\"\r\n\r\n1\r\n\
            --b0undary\r\nContent-Disposition: form-data; name=\"format\"\r\n\r\npickle\r\n\
            --b0undary\r\nContent-Disposition: form-data; name=\"target\"\r\n\r\na.b\r\n\
            --b0undary\r\nContent-Disposition: form-data; name=\"target\"\r\n\r\nc.*\r\n\
            --b0undary\r\nContent-Disposition: form-data; name=\"from\"\r\n\r\n100\r\n\
            --b0undary--\r\n";
        let p = multipart("b0undary", body).unwrap();
        assert_eq!(p.all("target"), ["a.b", "c.*"]);
        // Every cut and every one-byte change of it is read or refused, never a panic.
        for cut in 0..body.len() {
            let _ = multipart("b0undary", &body[..cut]);
            let mut changed = body.to_vec();
            for b in [b'-', b'\r', b'\n', b'"', 0xff] {
                changed[cut] = b;
                let _ = multipart("b0undary", &changed);
            }
        }
        assert_eq!(p.get("format"), Some("pickle"));
        assert_eq!(p.get("from"), Some("100"));
        assert!(p.flag("local"));
        // A quoted boundary, a preamble, headers in other cases, an escaped name, a value
        // with CRLF inside, and a nameless part.
        let body = b"preamble\r\n--x y\r\ncontent-disposition: Form-Data; NAME=\"a%22b\"\r\n\
            Content-Type: text/plain\r\n\r\nline1\r\nline2\r\n--x y\r\n\
            Content-Disposition: form-data\r\n\r\nskipped\r\n--x y--";
        let p = multipart("\"x y\"", body).unwrap();
        assert_eq!(p.get("a\"b"), Some("line1\r\nline2"));
        assert_eq!(p.0.len(), 2);
        // Refused: no closing boundary, no boundary, a part without its blank line.
        assert!(multipart(
            "b",
            b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1"
        )
        .is_err());
        assert!(multipart("", b"--\r\n").is_err());
        assert!(multipart(
            "b",
            b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n--b--"
        )
        .is_err());
        assert!(multipart(
            "b",
            b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n\xff\r\n--b--"
        )
        .is_err());
    }
}
