//! Noodle: Visage's reads (`GET /data/<host>/<plugin>[/<instance>]?start=..&finish=..`)
//! proxied to the member that owns `<host>` in the `[noodle] cluster` (a host-keyed
//! cluster, so the member that stores a host's data is the one asked), on its
//! `remote_port`. The answer is Visage's JSON with Noodle's `_meta` added
//! (`{"host", "target", "url"}`), under the upstream's own status code (Noodle answered
//! 200 with an error body); an owner that cannot be reached is a 502, one that does not
//! answer in `timeout_ms` a 504. Its own listener also serves `/lookup` and
//! `/debug/vars`, as Noodle's did.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router as Http;
use http_body_util::{BodyExt, Empty, Limited};
use serde_json::{json, Value};

use super::coco::{self, LookupQuery};
use super::AdminState;

crate::counter_set! {
    /// Noodle's counters (the control thread's; Noodle's own names are in `/debug/vars`).
    pub struct NoodleCounters {
        /// Requests proxied (an upstream answered) [noodle fetch.target.requests.total].
        requests: counter,
        /// Body bytes proxied back [noodle fetch.bytes.proxied].
        bytes_proxied: counter,
        /// Requests for a path that names no host.
        errors_bad_request: counter,
        /// No member owns the host (an empty cluster) [noodle errors.fetch.con.get].
        errors_lookup: counter,
        /// The owner could not be reached or the request failed
        /// [noodle errors.fetch.http.get].
        errors_connect: counter,
        /// The owner did not answer within timeout_ms [noodle errors.fetch.timeout].
        errors_timeout: counter,
        /// The answer could not be read, or passed response_bytes_max
        /// [noodle errors.fetch.ioutil.readall].
        errors_read: counter,
        /// A 2xx answer that is not a JSON object [noodle errors.fetch.json.unmarshal].
        errors_json: counter,
    }
}

/// Noodle's counters, with the per-cluster, per-member and per-status maps.
#[derive(Debug, Default)]
pub struct NoodleStats(Mutex<NoodleCounts>);

#[derive(Debug, Default)]
struct NoodleCounts {
    counters: NoodleCounters,
    tiers: BTreeMap<String, u64>,
    targets: BTreeMap<String, u64>,
    codes: BTreeMap<u16, u64>,
}

impl NoodleStats {
    fn with(&self, f: impl FnOnce(&mut NoodleCounts)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// The counters.
    pub fn counters(&self) -> NoodleCounters {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counters
            .clone()
    }

    /// As Noodle's expvars, nested as Coco's `/debug/vars` nests them.
    pub fn json(&self) -> Value {
        let n = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let c = &n.counters;
        let mut targets = n.targets.clone();
        targets.insert("total".into(), c.requests);
        let codes: BTreeMap<String, u64> =
            n.codes.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        json!({
            "fetch.tier.requests": n.tiers,
            "fetch.target.requests": targets,
            "fetch.target.response.codes": codes,
            "fetch.bytes.proxied": c.bytes_proxied,
            "errors": {
                "fetch.bad_request": c.errors_bad_request,
                "fetch.con.get": c.errors_lookup,
                "fetch.http.get": c.errors_connect,
                "fetch.timeout": c.errors_timeout,
                "fetch.ioutil.readall": c.errors_read,
                "fetch.json.unmarshal": c.errors_json,
            },
        })
    }
}

/// Noodle's routes.
pub fn routes(state: Arc<AdminState>) -> Http {
    Http::new()
        .route("/data/{*rest}", get(data))
        .route("/lookup", get(lookup))
        .route("/debug/vars", get(coco::debug_vars))
        .with_state(state)
}

async fn lookup(State(s): State<Arc<AdminState>>, Query(q): Query<LookupQuery>) -> Response {
    coco::lookup(State(s), Query(q)).await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = json!({ "error": message.into() }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Why an upstream request failed.
enum FetchError {
    Connect(String),
    Timeout,
    Read(String),
}

/// `GET http://<addr><path_and_query>` within `timeout`; the status and the body, at
/// most `body_max` bytes.
async fn fetch(
    addr: &str,
    path_and_query: &str,
    timeout: Duration,
    body_max: usize,
) -> Result<(StatusCode, Bytes), FetchError> {
    let work = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| FetchError::Connect(e.to_string()))?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| FetchError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::get(path_and_query)
            .header(header::HOST, addr)
            .header(header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Connect(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| FetchError::Connect(e.to_string()))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), body_max)
            .collect()
            .await
            .map_err(|e| FetchError::Read(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(FetchError::Timeout))
}

/// `GET /data/<host>/...`: proxied to the owner of `<host>`.
async fn data(State(s): State<Arc<AdminState>>, uri: Uri) -> Response {
    let stats = &s.noodle;
    let path = uri.path();
    let host = path
        .strip_prefix("/data/")
        .and_then(|rest| rest.split('/').next())
        .filter(|h| !h.is_empty());
    let Some(host) = host else {
        stats.with(|n| n.counters.errors_bad_request += 1);
        return error(
            StatusCode::BAD_REQUEST,
            "want /data/<host>/<plugin>[/<instance>]",
        );
    };
    let host = percent_decode(host);
    let topology = s.control.topology();
    let Some(cfg) = topology.config.noodle.clone() else {
        return error(StatusCode::NOT_FOUND, "no [noodle] in the running config");
    };
    let cluster = &topology.config.clusters[cfg.cluster];
    stats.with(|n| *n.tiers.entry(cluster.name.clone()).or_default() += 1);
    let Some((member, _)) = s.control.owner(cfg.cluster, &host) else {
        stats.with(|n| n.counters.errors_lookup += 1);
        return error(
            StatusCode::BAD_GATEWAY,
            format!("no member of {:?} owns {host:?}", cluster.name),
        );
    };
    let target = member.display_hash();
    let ip = if member.host.contains(':') {
        format!("[{}]", member.host)
    } else {
        member.host.clone()
    };
    let remote = format!("{ip}:{}", cfg.remote_port.unwrap_or(80));
    let path_and_query = uri.path_and_query().map_or(path, |p| p.as_str());
    let url = format!("http://{remote}{path_and_query}");
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let (status, body) = match fetch(&remote, path_and_query, timeout, cfg.response_bytes_max).await
    {
        Ok(r) => r,
        Err(FetchError::Timeout) => {
            stats.with(|n| n.counters.errors_timeout += 1);
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                format!("{url}: no answer within {} ms", cfg.timeout_ms),
            );
        }
        Err(FetchError::Connect(e)) => {
            stats.with(|n| n.counters.errors_connect += 1);
            return error(StatusCode::BAD_GATEWAY, format!("{url}: {e}"));
        }
        Err(FetchError::Read(e)) => {
            stats.with(|n| n.counters.errors_read += 1);
            return error(
                StatusCode::BAD_GATEWAY,
                format!("{url}: reading the answer: {e}"),
            );
        }
    };
    stats.with(|n| {
        n.counters.requests += 1;
        n.counters.bytes_proxied += body.len() as u64;
        *n.targets.entry(target.clone()).or_default() += 1;
        *n.codes.entry(status.as_u16()).or_default() += 1;
    });
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(mut m)) => {
            m.insert(
                "_meta".into(),
                json!({ "host": remote, "target": target, "url": url }),
            );
            let out = Value::Object(m).to_string();
            (status, [(header::CONTENT_TYPE, "application/json")], out).into_response()
        }
        // Not a JSON object: an error page passes through under its status; a success
        // that Visage's clients cannot read is the upstream's fault.
        _ if !status.is_success() => (status, body).into_response(),
        _ => {
            stats.with(|n| n.counters.errors_json += 1);
            error(
                StatusCode::BAD_GATEWAY,
                format!("{url}: the answer is not a JSON object"),
            )
        }
    }
}

/// `%XX` escapes in a path segment decoded (a host name is plain ASCII in practice).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() + 1 {
            if let Some(v) = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_segments_decode() {
        assert_eq!(percent_decode("web%2D01.example"), "web-01.example");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
        assert_eq!(percent_decode("end%4"), "end%4");
    }
}
