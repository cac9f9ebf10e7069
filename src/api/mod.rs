//! The control thread: admin HTTP (axum on a current-thread tokio runtime), signals, and
//! the bridge to shards. It never runs on a shard core and shards never wait on it.

pub mod attime;
pub mod bounded;
pub mod carbonlink;
pub mod carbonlink_listen;
pub mod coco;
pub mod control;
pub mod noodle;
pub mod read;
pub mod read_format;
pub mod statsd_console;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router as Http};
use serde::Deserialize;
use serde_json::json;

use crate::telemetry::Registry;
pub use control::Control;

/// What the admin handlers read.
pub struct AdminState {
    /// The running topology, health and the path to change them.
    pub control: Arc<Control>,
    /// Published shard counters.
    pub registry: Arc<Registry>,
    /// Number of shards running.
    pub shards: usize,
    /// Process start.
    pub started: Instant,
    /// `/lookup` calls per cluster.
    pub lookups: coco::Lookups,
    /// Noodle's counters.
    pub noodle: noodle::NoodleStats,
    /// Spool directories found at startup that no configured destination owns (left by
    /// an earlier config): reported, never deleted.
    pub orphan_spools: Vec<String>,
    /// The HTTP listeners' connection counters (admin and read API).
    pub http: Arc<bounded::HttpCounters>,
    /// Connections the admin listener has open, once it serves.
    pub http_open: std::sync::OnceLock<bounded::OpenConnections>,
}

/// The admin routes.
pub fn routes(state: Arc<AdminState>) -> Http {
    Http::new()
        .route("/ops/status", get(status))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/hashcheck", get(hashcheck))
        .route("/lookup", get(coco::lookup))
        .route("/tiers", get(coco::tiers))
        .route("/debug/vars", get(coco::debug_vars))
        .route("/servers", get(servers))
        .route("/cluster/{name}/members", post(add_member))
        .route("/cluster/{name}/members/{server}", delete(remove_member))
        .route("/metrics/find", get(read::find).post(read::find))
        .route("/metrics/find/", get(read::find).post(read::find))
        .route("/metrics/index.json", get(read::index).post(read::index))
        .route("/metrics/expand", get(read::expand).post(read::expand))
        .route("/metrics/expand/", get(read::expand).post(read::expand))
        .route("/render", get(read::render).post(read::render))
        .route("/render/", get(read::render).post(read::render))
        .with_state(state)
}

async fn status(State(s): State<Arc<AdminState>>) -> Json<serde_json::Value> {
    // A destination whose spool failed (full disk, I/O error) runs memory-only, with
    // drops counted: the process is up, but degraded.
    let total = Registry::total(&s.registry.per_shard());
    let labels = s.registry.labels();
    let spool_failed: Vec<&String> = labels
        .destinations
        .iter()
        .zip(&total.destinations)
        .filter(|(_, d)| d.spool_failed > 0)
        .filter_map(|(name, _)| name.as_ref())
        .collect();
    Json(json!({
        "status": if spool_failed.is_empty() { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": s.started.elapsed().as_secs(),
        "shards": s.shards,
        "listeners": s.control.bound(),
        "spool_failed": spool_failed,
        "orphan_spools": s.orphan_spools,
    }))
}

async fn stats(State(s): State<Arc<AdminState>>) -> Json<serde_json::Value> {
    let mut v = s.registry.stats_json();
    if let Some(o) = v.as_object_mut() {
        let open = s.http_open.get().map_or(0, |g| g.get());
        o.insert("http".into(), s.http.json(open));
    }
    // Each store's update_many calls per wall-clock second over the last minute, the
    // whole process: the `writes_per_second` limit as it held.
    let topo = s.control.topology();
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for (store, shared) in topo.config.stores.iter().zip(&topo.store_shared) {
        if let Some(st) = v
            .get_mut("stores")
            .and_then(|x| x.get_mut(&store.name))
            .and_then(|x| x.as_object_mut())
        {
            let seconds: serde_json::Map<String, serde_json::Value> = shared
                .updates_by_second
                .last(now_s, 60)
                .into_iter()
                .map(|(sec, n)| (sec.to_string(), json!(n)))
                .collect();
            st.insert("updates_by_second".into(), seconds.into());
        }
    }
    Json(v)
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.registry.prometheus(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct HashQuery {
    key: Option<String>,
}

async fn hashcheck(State(s): State<Arc<AdminState>>, Query(q): Query<HashQuery>) -> Response {
    let Some(key) = q.key.filter(|k| !k.is_empty()) else {
        return (StatusCode::BAD_REQUEST, "missing ?key=\n").into_response();
    };
    Json(json!({ "key": key, "clusters": s.control.hash_all(&key) })).into_response()
}

async fn servers(State(s): State<Arc<AdminState>>) -> Json<serde_json::Value> {
    Json(s.control.servers_json())
}

/// Changes are allowed from loopback, or with `Authorization: Bearer <server.admin_token>`.
fn authorised(
    s: &AdminState,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<(), (StatusCode, &'static str)> {
    authorised_by(s.control.admin_token().as_deref(), peer, headers)
}

fn authorised_by(
    token: Option<&str>,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<(), (StatusCode, &'static str)> {
    if peer.ip().is_loopback() {
        return Ok(());
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match (token, given) {
        (Some(token), Some(given)) if constant_time_eq(token.as_bytes(), given.as_bytes()) => {
            Ok(())
        }
        (None, _) => Err((
            StatusCode::FORBIDDEN,
            "membership changes are allowed from loopback only (no server.admin_token set)\n",
        )),
        _ => Err((StatusCode::UNAUTHORIZED, "missing or wrong admin token\n")),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The fields of a membership request.
#[derive(Deserialize, Default, Debug)]
pub struct MemberForm {
    /// `[proto://]host:port[=instance]`.
    pub server: Option<String>,
    /// The instance, when not in `server`.
    pub instance: Option<String>,
}

/// The body as JSON (`{"server": .., "instance": ..}`) or as a urlencoded form.
fn member_form(headers: &HeaderMap, body: &[u8]) -> Result<MemberForm, String> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    parse_member_request(json, body)
}

/// Reads a `POST /cluster/NAME/members` body: JSON when `json`, else a urlencoded form
/// (strict `%XX` escapes, known fields only). What the fuzz target `admin_member` drives.
pub fn parse_member_request(json: bool, body: &[u8]) -> Result<MemberForm, String> {
    if json {
        return serde_json::from_slice(body).map_err(|e| format!("bad JSON body: {e}"));
    }
    let text = std::str::from_utf8(body).map_err(|_| "body is not UTF-8".to_string())?;
    let mut form = MemberForm::default();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v)?;
        match percent_decode(k)?.as_str() {
            "server" => form.server = Some(v),
            "instance" => form.instance = Some(v),
            other => return Err(format!("unknown field {other:?} (server, instance)")),
        }
    }
    Ok(form)
}

pub(crate) fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                // Two hex digits, nothing else (from_str_radix alone takes "+1").
                let hex = b
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())
                    .ok_or_else(|| format!("bad %-escape in {s:?}"))?;
                out.push(hex);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} decodes to invalid UTF-8"))
}

fn refused(r: control::Refused) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, format!("{}\n", r.message)).into_response()
}

async fn add_member(
    State(s): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = authorised(&s, peer, &headers) {
        return r.into_response();
    }
    let form = match member_form(&headers, &body) {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let Some(server) = form.server.filter(|v| !v.is_empty()) else {
        return (
            StatusCode::BAD_REQUEST,
            "`server` is required (host:port)\n",
        )
            .into_response();
    };
    match s
        .control
        .add_member(&name, &server, form.instance.as_deref())
        .await
    {
        Ok(msg) => (StatusCode::OK, format!("{msg}\n")).into_response(),
        Err(r) => refused(r),
    }
}

async fn remove_member(
    State(s): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((name, server)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorised(&s, peer, &headers) {
        return r.into_response();
    }
    match s.control.remove_member(&name, &server).await {
        Ok(msg) => (StatusCode::OK, format!("{msg}\n")).into_response(),
        Err(r) => refused(r),
    }
}

/// Gives the shards their first topology (`initial`), then runs the admin server on
/// `admin` (bound before anything else, so a taken port stops startup before any data
/// listener binds) until SIGTERM or SIGINT; returns which signal arrived. `started`
/// runs once the shards route by `initial`.
pub fn serve_until_signal(
    state: Arc<AdminState>,
    admin: std::net::TcpListener,
    initial: crate::config::Config,
    started: impl FnOnce(&AdminState),
) -> anyhow::Result<&'static str> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        // SIGHUP reloads the config file (its default would kill the process unflushed).
        let mut hup = signal(SignalKind::hangup())?;
        admin.set_nonblocking(true)?;
        let (max, idle) = (
            initial.server.admin_connections_max,
            Duration::from_millis(initial.server.admin_idle_timeout_ms),
        );
        let listener = bounded::BoundedListener::new(
            tokio::net::TcpListener::from_std(admin)?,
            max,
            idle,
            state.http.clone(),
        );
        let _ = state.http_open.set(listener.gauge());
        let control = state.control.clone();
        // Noodle listens where the starting config says (a reload that moves it is
        // logged as needing a restart); it reads the rest of [noodle] per request.
        let noodle = match &initial.noodle {
            Some(n) => Some(bounded::BoundedListener::new(
                tokio::net::TcpListener::bind(n.listen)
                    .await
                    .map_err(|e| anyhow::anyhow!("noodle.listen {}: cannot bind: {e}", n.listen))?,
                max,
                idle,
                Arc::new(bounded::HttpCounters::default()),
            )),
            None => None,
        };
        control
            .start(initial)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        started(&state);
        tokio::spawn(control.clone().probe_loop());
        tokio::spawn(control.clone().reclaim_loop());
        tokio::spawn(control.clone().rules_loop());
        tokio::spawn(control.clone().telemetry_loop());
        if let Some(l) = noodle {
            let app = noodle::routes(state.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(l, app).await {
                    tracing::error!(error = %e, "noodle stopped");
                }
            });
        }
        let app = routes(state).into_make_service_with_connect_info::<SocketAddr>();
        // `tap_io` only for the connect info (axum gives a listener's address to
        // handlers through it).
        let listener = axum::serve::ListenerExt::tap_io(listener, |_| {});
        let server = std::future::IntoFuture::into_future(axum::serve(listener, app));
        tokio::pin!(server);
        loop {
            tokio::select! {
                r = &mut server => { r?; anyhow::bail!("admin server stopped") }
                _ = term.recv() => return Ok("SIGTERM"),
                _ = int.recv() => return Ok("SIGINT"),
                _ = hup.recv() => {
                    let control = control.clone();
                    tokio::spawn(async move {
                        match control.reload().await {
                            Ok(summary) => tracing::info!(%summary, "SIGHUP: config reloaded"),
                            Err(e) => tracing::error!("SIGHUP: config not reloaded, the running one is kept: {e}"),
                        }
                    });
                }
            }
        }
    });
    // Probes, reloads and requests in flight are dropped, and a blocking name lookup is
    // not waited for: shutdown must not hang on the control plane.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_need_loopback_or_the_token() {
        let lo: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let lo6: SocketAddr = "[::1]:5000".parse().unwrap();
        let far: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let none = HeaderMap::new();
        let mut good = HeaderMap::new();
        good.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        let mut bad = HeaderMap::new();
        bad.insert(header::AUTHORIZATION, "Bearer s3cre".parse().unwrap());
        assert!(authorised_by(None, lo, &none).is_ok());
        assert!(authorised_by(None, lo6, &none).is_ok());
        assert_eq!(
            authorised_by(None, far, &good).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
        assert!(authorised_by(Some("s3cret"), far, &good).is_ok());
        for h in [&none, &bad] {
            assert_eq!(
                authorised_by(Some("s3cret"), far, h).unwrap_err().0,
                StatusCode::UNAUTHORIZED
            );
        }
    }

    #[test]
    fn member_forms_json_and_urlencoded() {
        let mut json = HeaderMap::new();
        json.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        let f = member_form(&json, br#"{"server":"10.0.0.1:2003","instance":"a"}"#).unwrap();
        assert_eq!(f.server.as_deref(), Some("10.0.0.1:2003"));
        assert_eq!(f.instance.as_deref(), Some("a"));
        let f = member_form(
            &HeaderMap::new(),
            b"server=%5B%3A%3A1%5D%3A2003&instance=b+c",
        )
        .unwrap();
        assert_eq!(f.server.as_deref(), Some("[::1]:2003"));
        assert_eq!(f.instance.as_deref(), Some("b c"));
        assert!(member_form(&HeaderMap::new(), b"server=%zz").is_err());
        assert!(member_form(&HeaderMap::new(), b"server=%+1").is_err());
        assert!(member_form(&HeaderMap::new(), b"server=%-1").is_err());
        assert!(member_form(&HeaderMap::new(), b"colour=red").is_err());
    }
}
