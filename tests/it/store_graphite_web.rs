//! A real graphite-web 1.1.10 (PyPI, `.peers/graphite-web-venv`, driven through Django's
//! test client by `gweb_driver.py`) against cadent's read API and CarbonLink:
//! - with `CLUSTER_SERVERS` pointing at cadent (pickle, `?format=msgpack`, and POSTs
//!   with multipart/form-data fields as `REMOTE_STORE_USE_POST = True` sends them),
//!   `/metrics/find` and `/render` (json, functions included: sumSeries, summarize,
//!   averageSeries, maxSeries with alias, several targets) answer exactly what
//!   graphite-web answers reading the same whisper files itself;
//! - graphite-web reading the files itself with `CARBONLINK_HOSTS` at cadent sees the
//!   points only cadent's cache holds (and without it, does not);
//! - Grafana's data source test (`constantLine(100)`, and other constantLine renders)
//!   asked of cadent directly answers byte for byte what graphite-web answers.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::store_carbon::{store_driver, unix_now};
use crate::support::{
    free_port, http_get, install_peers, run_peer, send_tcp, temp_dir, wait_until, Cadent,
};

/// graphite-web's python (its virtualenv, made by scripts/install-peers.sh).
fn gweb_python() -> std::path::PathBuf {
    install_peers();
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".peers/graphite-web-venv/bin/python");
    assert!(
        py.is_file(),
        "{} (scripts/install-peers.sh makes it)",
        py.display()
    );
    py
}

/// graphite-web's answers to `requests` with these settings.
fn graphite_web(
    whisper_dir: Option<&Path>,
    cluster: &[String],
    carbonlink: &[String],
    requests: &[Value],
) -> Vec<Value> {
    graphite_web_with(whisper_dir, cluster, carbonlink, json!({}), requests)
}

/// As `graphite_web`, with more of graphite-web's settings overridden.
fn graphite_web_with(
    whisper_dir: Option<&Path>,
    cluster: &[String],
    carbonlink: &[String],
    settings: Value,
    requests: &[Value],
) -> Vec<Value> {
    let py = gweb_python();
    let tmp = temp_dir("gweb");
    let input = tmp.join("request.json");
    std::fs::write(
        &input,
        json!({
            "tmp": tmp,
            "whisper_dir": whisper_dir,
            "cluster": cluster,
            "carbonlink": carbonlink,
            "settings": settings,
            "requests": requests,
        })
        .to_string(),
    )
    .unwrap();
    let mut cmd = Command::new(&py);
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/gweb_driver.py"));
    let out = run_peer(cmd, &input, &tmp, "gweb", Duration::from_secs(120));
    let answers: Vec<Value> = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("graphite-web driver: {e}\n{}", out.stderr));
    assert_eq!(answers.len(), requests.len());
    let _ = std::fs::remove_dir_all(&tmp);
    answers
}

fn req(path: &str, params: &[(&str, &str)]) -> Value {
    json!({"path": path, "params": params})
}

/// A body as JSON, find intervals left out: graphite-web's own come from the clock and
/// file mtimes as floats, a cluster peer's as whole seconds.
fn body(answer: &Value) -> Value {
    let mut v: Value = serde_json::from_str(answer["body"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {answer}"));
    if let Some(nodes) = v.as_array_mut() {
        for n in nodes {
            if let Some(o) = n.as_object_mut() {
                o.remove("intervals");
            }
        }
    }
    v
}

fn store_config(port: u16, extra: &str) -> String {
    format!(
        r#"
[server]
admin_listen = "ADMIN"
shards = 2
[telemetry]
prefix = ""
[[listen]]
name = "plain"
url = "tcp://127.0.0.1:{port}"
format = "graphite"
[[store]]
name = "whisper"
kind = "whisper"
path = "./data/whisper"
create_mode = "sparse"
{extra}
[[route]]
match = {{ all = true }}
send_to = ["whisper"]
"#
    )
}

#[test]
fn graphite_web_with_cadent_as_cluster_server_answers_as_on_the_files() {
    let port = free_port();
    let c = Cadent::start(
        "store-gweb-cluster",
        &store_config(port, "writes_per_second = 0\ncreates_per_minute = 0"),
    );
    let now = unix_now();
    let mut text = String::new();
    let mut points = 0;
    for h in 1..=4 {
        for k in 0..40i64 {
            let ts = now - 60 * k;
            text.push_str(&format!(
                "servers.web{h}.cpu.user {} {ts}\n",
                h * 10 + k % 7
            ));
            text.push_str(&format!("servers.web{h}.cpu.sys {}.5 {ts}\n", h + k % 3));
            for d in ["sda", "sdb"] {
                if k % 5 != 0 {
                    text.push_str(&format!(
                        "servers.web{h}.disk.{d}.reads.count {} {ts}\n",
                        k * h
                    ));
                    points += 1;
                }
            }
            points += 2;
        }
    }
    send_tcp(&format!("127.0.0.1:{port}"), text.as_bytes());
    let written = wait_until(Duration::from_secs(30), || {
        let st = &c.stats()["stores"]["whisper"];
        st["points_cached"].as_u64() == Some(points) && st["cache_points"] == 0
    });
    assert!(written, "{}", c.stats()["stores"]["whisper"]);
    let (from, until) = ((now - 2700).to_string(), (now - 90).to_string());
    let window = [("from", from.as_str()), ("until", until.as_str())];
    let render = |targets: &[&str]| {
        let mut p: Vec<(&str, &str)> = targets.iter().map(|t| ("target", *t)).collect();
        p.extend_from_slice(&window);
        p.push(("format", "json"));
        req("/render", &p)
    };
    let requests = vec![
        // graphite-web asks its cluster peers for /metrics/index.json?local=1; a peer
        // that fails it is left out of the requests after it.
        req("/metrics/index.json", &[]),
        req(
            "/metrics/find/",
            &[("query", "servers.*"), ("format", "json")],
        ),
        req(
            "/metrics/find/",
            &[("query", "servers.web1.*.*"), ("format", "json")],
        ),
        req("/metrics/find/", &[("query", "servers.*.cpu.*")]),
        req(
            "/metrics/find/",
            &[("query", "servers.web{1,3}.disk.*"), ("format", "json")],
        ),
        req(
            "/metrics/expand/",
            &[("query", "servers.*.cpu.*"), ("leavesOnly", "1")],
        ),
        render(&["servers.web1.cpu.user"]),
        render(&["servers.*.cpu.user"]),
        render(&["sumSeries(servers.*.cpu.user)"]),
        render(&["summarize(servers.web1.cpu.user,\"10min\",\"sum\")"]),
        render(&["averageSeries(servers.*.disk.*.reads.count)"]),
        render(&[
            "alias(maxSeries(servers.web[12].cpu.*),\"m\")",
            "servers.web4.cpu.sys",
        ]),
        render(&["servers.nothing.here"]),
        // Braces of one choice name one series.
        render(&["servers.{web1,web1}.cpu.{user}"]),
        // graphite-web sends seriesByTag to its peers as it is: matching nothing (no tag
        // database here, as graphite-web's own), it must not take cadent out of the
        // cluster for the requests after it.
        render(&["seriesByTag('name=servers.web1.cpu.user')"]),
        render(&["servers.web2.cpu.user"]),
        // Grafana's maxDataPoints: graphite-web averages in renderViewJson.
        req(
            "/render",
            &[
                ("target", "servers.web1.cpu.*"),
                ("target", "servers.web3.disk.sda.reads.count"),
                window[0],
                window[1],
                ("format", "json"),
                ("maxDataPoints", "7"),
            ],
        ),
    ];
    let root = c.dir.join("data/whisper");
    let local = graphite_web(Some(&root), &[], &[], &requests);
    let pickle = graphite_web(None, std::slice::from_ref(&c.admin), &[], &requests);
    let msgpack = graphite_web(
        None,
        &[format!("{}?format=msgpack", c.admin)],
        &[],
        &requests,
    );
    // REMOTE_STORE_USE_POST: graphite-web POSTs its finds and renders, their fields
    // encoded as multipart/form-data (urllib3's default for POST fields).
    let post = graphite_web_with(
        None,
        std::slice::from_ref(&c.admin),
        &[],
        json!({ "REMOTE_STORE_USE_POST": true }),
        &requests,
    );
    for (i, r) in requests.iter().enumerate() {
        assert_eq!(local[i]["status"], 200, "{r}: {}", local[i]);
        for (how, cluster) in [
            ("pickle", &pickle[i]),
            ("msgpack", &msgpack[i]),
            ("post", &post[i]),
        ] {
            assert_eq!(cluster["status"], 200, "{how} {r}: {cluster}");
            assert_eq!(
                body(cluster),
                body(&local[i]),
                "{how} cluster vs local files, {r}"
            );
        }
    }
    // The answers are not empty: every render but the last has values.
    let names = body(&local[0]);
    assert!(
        names.as_array().unwrap().len() >= 10,
        "index.json lists the files: {names}"
    );
    for a in local[6..12]
        .iter()
        .chain(&local[13..14])
        .chain(&local[15..16])
    {
        let b = body(a);
        let known = b
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["datapoints"].as_array().unwrap())
            .filter(|p| !p[0].is_null())
            .count();
        assert!(known >= 4, "{a}");
    }
    // A client asking cadent directly (Grafana pointed at it) gets the same bodies.
    for (i, r) in requests.iter().enumerate().skip(6) {
        let Some(params) = r["params"].as_array() else {
            continue;
        };
        let query: Vec<String> = params
            .iter()
            .map(|kv| format!("{}={}", kv[0].as_str().unwrap(), kv[1].as_str().unwrap()))
            .collect();
        if query
            .iter()
            .any(|q| q.contains('(') || q.contains('{') || q.contains('"'))
        {
            continue; // functions are graphite-web's; braces need escaping
        }
        let direct = http_get(&c.admin, &format!("/render?{}", query.join("&")))
            .unwrap_or_else(|| panic!("direct {r}"));
        assert_eq!(
            body(&json!({ "body": direct })),
            body(&local[i]),
            "direct vs local files, {r}"
        );
    }
    let max_points = body(&local[16]);
    for s in max_points.as_array().unwrap() {
        assert!(s["datapoints"].as_array().unwrap().len() <= 7, "{s}");
    }
    let read = &c.stats()["read_api"];
    assert!(read["render_requests"].as_u64().unwrap() >= 12, "{read}");
    assert!(read["find_requests"].as_u64().unwrap() >= 8, "{read}");
}

#[test]
fn graphite_web_reading_files_sees_cached_points_over_carbonlink() {
    let port = free_port();
    let link = free_port();
    let dir = temp_dir("store-gweb-carbonlink");
    let root = dir.join("data/whisper");
    let names: Vec<String> = (0..60).map(|i| format!("link.n{i:02}.value")).collect();
    let now = unix_now();
    // The files exist (python whisper made them, with an old point each).
    store_driver(json!({
        "cmd": "create", "root": root, "names": names,
        "archives": [[60, 10080]], "points": [[now - 1200, 1.0]],
    }));
    // One write a second: the new points stay in the cache for a while.
    let c = Cadent::start_in(
        dir.clone(),
        &store_config(
            port,
            &format!("writes_per_second = 1\ncarbonlink_listen = \"127.0.0.1:{link}\""),
        ),
    );
    let ts = now - 120;
    let text: String = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n} {} {ts}\n", 100 + i))
        .collect();
    send_tcp(&format!("127.0.0.1:{port}"), text.as_bytes());
    assert!(wait_until(Duration::from_secs(10), || {
        c.stats()["stores"]["whisper"]["points_cached"] == 60
    }));
    let (from, until) = ((now - 1800).to_string(), (now - 60).to_string());
    let requests = vec![req(
        "/render",
        &[
            ("target", "link.*.value"),
            ("from", &from),
            ("until", &until),
            ("format", "json"),
        ],
    )];
    // Without CarbonLink first, while most points are only in the cache; with it, every
    // point shows, cached or written since.
    let without = graphite_web(Some(&root), &[], &[], &requests);
    let carbonlink = [format!("127.0.0.1:{link}:a")];
    let with_link = graphite_web(Some(&root), &[], &carbonlink, &requests);
    let slot = ts - ts % 60;
    let value_at = |answer: &Value, name: &str| -> Option<f64> {
        body(answer)
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["target"] == name)
            .and_then(|s| {
                s["datapoints"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p[1] == slot)
                    .and_then(|p| p[0].as_f64())
            })
    };
    let mut only_cached = 0;
    for (i, n) in names.iter().enumerate() {
        assert_eq!(
            value_at(&with_link[0], n),
            Some(100.0 + i as f64),
            "{n} over CarbonLink: {}",
            with_link[0]
        );
        if value_at(&without[0], n).is_none() {
            only_cached += 1;
        }
    }
    // Written at one a second: many were still only in the cache.
    assert!(only_cached >= 20, "{only_cached} of 60 only in the cache");
    let read = &c.stats()["read_api"];
    assert!(
        read["carbonlink_requests"].as_u64().unwrap() >= 60,
        "{read}"
    );
}

/// Form-encodes one value (what a browser or Grafana sends).
fn form_value(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn grafana_data_source_test_renders_constant_line_as_graphite_web() {
    let c = Cadent::start("store-gweb-constant", &store_config(free_port(), ""));
    let render = |targets: &[&str], extra: &[(&'static str, &'static str)]| {
        let mut p: Vec<(&str, &str)> = targets.iter().map(|t| ("target", *t)).collect();
        p.extend_from_slice(&[
            ("from", "1700000000"),
            ("until", "1700003600"),
            ("format", "json"),
        ]);
        p.extend_from_slice(extra);
        req("/render", &p)
    };
    let requests = vec![
        // Grafana's "Save & test" (with epochs instead of -1h/now, for one answer).
        render(&["constantLine(100)"], &[("maxDataPoints", "300")]),
        render(
            &[
                "constantLine(1.5)",
                "constantLine(-2e3)",
                "constantLine( -007 )",
            ],
            &[],
        ),
        render(&["constantLine(3)"], &[("maxDataPoints", "1")]),
        render(&["constantLine(1e400)"], &[]),
        // Averaged by maxDataPoints.
        render(
            &["constantLine(7)"],
            &[("maxDataPoints", "2"), ("pretty", "1")],
        ),
        render(
            &["constantLine(0.1)"],
            &[("until", "1700003601"), ("noNullPoints", "1")],
        ),
    ];
    let empty = temp_dir("gweb-empty");
    let local = graphite_web(Some(&empty), &[], &[], &requests);
    for (i, r) in requests.iter().enumerate() {
        assert_eq!(local[i]["status"], 200, "{r}: {}", local[i]);
        let query: Vec<String> = r["params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| {
                let (k, v) = (kv[0].as_str().unwrap(), kv[1].as_str().unwrap());
                format!("{k}={}", form_value(v))
            })
            .collect();
        let direct = http_get(&c.admin, &format!("/render?{}", query.join("&")))
            .unwrap_or_else(|| panic!("direct {r}"));
        // Byte for byte: floats as Python writes them, pretty's indent.
        assert_eq!(direct, local[i]["body"].as_str().unwrap(), "{r}");
    }
    // As Grafana sends it: a POSTed form, relative times.
    let (status, body) = crate::support::http_request(
        &c.admin,
        "POST",
        "/render",
        "target=constantLine(100)&from=-1h&until=now&format=json&maxDataPoints=300",
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v[0]["target"], "100.0", "{v}");
    let points = v[0]["datapoints"].as_array().unwrap();
    assert_eq!(points.len(), 3, "{v}");
    assert!(points.iter().all(|p| p[0] == 100.0), "{v}");
    // Other functions stay graphite-web's.
    let (status, body) =
        crate::support::http_request(&c.admin, "GET", "/render?target=sumSeries(a.*)", "");
    assert_eq!(status, 400, "{body}");
    let _ = std::fs::remove_dir_all(&empty);
}
