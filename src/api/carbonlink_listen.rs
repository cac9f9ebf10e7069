//! The CarbonLink listener of a store (`carbonlink_listen`): carbon-cache's cache query
//! protocol on the control thread, so a graphite-web that reads the whisper files itself
//! (`CARBONLINK_HOSTS`) still sees the points only the cache holds.
//!
//! Frames in and out are a 4-byte big-endian length and a pickle (`carbonlink` decodes
//! and encodes them). cache-query and cache-query-bulk ask the shards that own the names
//! (by message, answered on their tick: no shard waits); get-metadata and set-metadata
//! read or rewrite a file's header on the blocking pool. A frame over the bound, or one
//! that is not a request, closes the connection, as carbon's handler does; it is
//! counted (`read_api.carbonlink_bad_requests`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::carbonlink::{self, Request, FRAME_BYTES_MAX_DEFAULT};
use super::Control;
use crate::protocol::pickle::Decoder;

/// Connections served at once per listener; more wait in the kernel's backlog.
pub const CONNECTIONS_MAX: usize = 1024;

/// Serves CarbonLink for store `store` (its whisper tree at `root`) until aborted.
pub async fn serve(
    control: Arc<Control>,
    listener: tokio::net::TcpListener,
    store: String,
    root: PathBuf,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let (control, store, root) = (control.clone(), store.clone(), root.clone());
        tokio::spawn(async move {
            let _ = session(&control, stream, &store, &root).await;
            drop(permit);
        });
    }
}

async fn session(
    control: &Control,
    mut stream: tokio::net::TcpStream,
    store: &str,
    root: &std::path::Path,
) -> std::io::Result<()> {
    let mut decoder = Decoder::default();
    let mut frame = Vec::new();
    let mut out = Vec::new();
    loop {
        let mut len = [0u8; 4];
        match stream.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > FRAME_BYTES_MAX_DEFAULT {
            control.count_read(|c| c.carbonlink_bad_requests += 1);
            return Ok(());
        }
        frame.resize(len, 0);
        stream.read_exact(&mut frame).await?;
        out.clear();
        let request = match carbonlink::decode_request(&mut decoder, &frame) {
            Ok(r) => r,
            Err(e) => {
                control.count_read(|c| c.carbonlink_bad_requests += 1);
                tracing::debug!(reason = e.as_str(), "CarbonLink: not a request; closing");
                return Ok(());
            }
        };
        control.count_read(|c| c.carbonlink_requests += 1);
        match request {
            Request::CacheQuery { metric } => {
                let got = control.ask_cache(store, &[metric.to_string()]).await;
                let points: Vec<(i64, f64)> = got[0].iter().map(|&(t, v)| (t as i64, v)).collect();
                carbonlink::encode_datapoints(&points, &mut out);
            }
            Request::CacheQueryBulk { metrics } => {
                let names: Vec<String> = metrics.iter().map(|m| m.to_string()).collect();
                let got = control.ask_cache(store, &names).await;
                let points: Vec<Vec<(i64, f64)>> = got
                    .iter()
                    .map(|p| p.iter().map(|&(t, v)| (t as i64, v)).collect())
                    .collect();
                let pairs: Vec<(&str, &[(i64, f64)])> = metrics
                    .iter()
                    .copied()
                    .zip(points.iter().map(Vec::as_slice))
                    .collect();
                carbonlink::encode_datapoints_by_metric(&pairs, &mut out);
            }
            Request::Unknown { kind } => {
                carbonlink::encode_error(&carbonlink::invalid_type_message(kind), &mut out);
            }
            Request::GetMetadata { metric, key } => {
                let owned = OwnedMeta {
                    metric: metric.to_string(),
                    key: key.to_string(),
                    value: None,
                };
                out = metadata(root, owned).await;
            }
            Request::SetMetadata { metric, key, value } => {
                let owned = OwnedMeta {
                    metric: metric.to_string(),
                    key: key.to_string(),
                    value: Some(value.map(str::to_string)),
                };
                out = metadata(root, owned).await;
            }
        }
        stream.write_all(&out).await?;
    }
}

/// A metadata request that can move to the blocking pool.
struct OwnedMeta {
    metric: String,
    key: String,
    /// `None`: get; `Some(v)`: set to `v` (`None` when the request's value is not a str).
    value: Option<Option<String>>,
}

async fn metadata(root: &std::path::Path, m: OwnedMeta) -> Vec<u8> {
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let request = match &m.value {
            None => Request::GetMetadata {
                metric: &m.metric,
                key: &m.key,
            },
            Some(v) => Request::SetMetadata {
                metric: &m.metric,
                key: &m.key,
                value: v.as_deref(),
            },
        };
        let mut out = Vec::new();
        carbonlink::answer_metadata(&root, &request, &mut out);
        out
    })
    .await
    .unwrap_or_else(|e| {
        let mut out = Vec::new();
        carbonlink::encode_error(&format!("metadata failed: {e}"), &mut out);
        out
    })
}
