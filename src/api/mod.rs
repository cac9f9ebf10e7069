//! The control thread: admin HTTP (axum on a current-thread tokio runtime), signals, and
//! the bridge to shards. It never runs on a shard core and shards never wait on it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router as Http};
use serde::Deserialize;
use serde_json::json;

use crate::config::Config;
use crate::route::{DestinationTable, Router};
use crate::telemetry::Registry;

/// What the admin handlers read.
pub struct AdminState {
    /// The running config.
    pub config: Arc<Config>,
    /// Destinations of the running config.
    pub table: Arc<DestinationTable>,
    /// A router for `/hashcheck` (the control thread's own copy).
    pub router: Mutex<Router>,
    /// Published shard counters.
    pub registry: Arc<Registry>,
    /// Number of shards running.
    pub shards: usize,
    /// Listener addresses as bound.
    pub bound: Vec<String>,
    /// Process start.
    pub started: Instant,
}

/// The admin routes.
pub fn routes(state: Arc<AdminState>) -> Http {
    Http::new()
        .route("/ops/status", get(status))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/hashcheck", get(hashcheck))
        .with_state(state)
}

async fn status(State(s): State<Arc<AdminState>>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": s.started.elapsed().as_secs(),
        "shards": s.shards,
        "listeners": s.bound,
    }))
}

async fn stats(State(s): State<Arc<AdminState>>) -> Json<serde_json::Value> {
    Json(s.registry.stats_json())
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
    Json(json!({ "key": key, "clusters": hash_all(&s, &key) })).into_response()
}

fn hash_all(s: &AdminState, key: &str) -> serde_json::Value {
    let hashed = crate::protocol::graphite::hash_key(key.as_bytes());
    let mut router = s.router.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::new();
    let mut clusters = serde_json::Map::new();
    for (i, c) in s.config.clusters.iter().enumerate() {
        router.cluster_destinations(i, hashed, &mut out);
        let names: Vec<String> = out
            .iter()
            .map(|d| s.table.member_label(&s.config, i, *d))
            .collect();
        clusters.insert(
            c.name.clone(),
            json!({ "kind": c.kind.as_str(), "destinations": names }),
        );
    }
    serde_json::Value::Object(clusters)
}

/// Runs the admin server until SIGTERM or SIGINT; returns which signal arrived.
pub fn serve_until_signal(
    state: Arc<AdminState>,
    addr: SocketAddr,
) -> anyhow::Result<&'static str> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        // SIGHUP's default would kill the process without a flush (log rotation sends
        // it). Config reload on SIGHUP comes later; until then it is acknowledged only.
        let mut hup = signal(SignalKind::hangup())?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("server.admin_listen {addr}: cannot bind: {e}"))?;
        let app = routes(state);
        let server = std::future::IntoFuture::into_future(axum::serve(listener, app));
        tokio::pin!(server);
        loop {
            tokio::select! {
                r = &mut server => { r?; anyhow::bail!("admin server stopped") }
                _ = term.recv() => return Ok("SIGTERM"),
                _ = int.recv() => return Ok("SIGINT"),
                _ = hup.recv() => tracing::warn!("SIGHUP: config reload is not implemented yet; ignored"),
            }
        }
    })
}
