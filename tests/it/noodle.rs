//! Coco's endpoints (`/lookup`, `/tiers`, `/debug/vars`) and Noodle's Visage proxy,
//! against local HTTP servers that answer in Visage's JSON shape: the member that owns the
//! host is asked, `_meta` is added, upstream status codes pass through, a dead owner is a
//! 502 and a slow one a 504.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{cadent_bin, free_port, http_get, http_request, wait_until, Cadent};

/// A Visage stand-in: answers `GET /data/<host>/<plugin>/<instance>` with Visage's shape
/// `{"<host>": {"<plugin>": {"<instance>": {"value": {"data": [..]}}}}}`; plugin
/// `missing` is a 404 with a JSON error, `text` a 500 with a text body, `slow` answers
/// after 2 s. Remembers every request line.
struct Visage {
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Visage {
    fn start(ip: &str, port: u16) -> Visage {
        let l = TcpListener::bind((ip, port)).unwrap();
        l.set_nonblocking(true).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        let r = r.clone();
                        std::thread::spawn(move || answer(c, &r));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Visage {
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Visage {
    fn drop(&mut self) {
        self.stop();
    }
}

fn answer(c: TcpStream, requests: &Mutex<Vec<String>>) {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
    }
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    requests.lock().unwrap().push(target.clone());
    let path = target.split('?').next().unwrap();
    let parts: Vec<&str> = path.trim_start_matches("/data/").split('/').collect();
    let (host, plugin, instance) = (
        parts[0],
        parts.get(1).copied().unwrap_or(""),
        parts.get(2).copied().unwrap_or(""),
    );
    let (status, body) = match plugin {
        "missing" => (
            "404 Not Found",
            json!({"error": "no such plugin"}).to_string(),
        ),
        "text" => ("500 Internal Server Error", "broken".to_string()),
        "slow" => {
            std::thread::sleep(Duration::from_secs(2));
            ("200 OK", "{}".to_string())
        }
        _ => (
            "200 OK",
            json!({ host: { plugin: { instance: { "value": { "data": [1.5, 2.5, null] } } } } })
                .to_string(),
        ),
    };
    let mut c = c;
    let _ = write!(
        c,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn get(addr: &str, path: &str) -> (u16, Value) {
    let (status, body) = http_request(addr, "GET", path, "");
    let v = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, v)
}

#[test]
fn noodle_proxies_visage_reads_to_the_owner_and_coco_endpoints_answer() {
    let remote_port = free_port();
    let mut servers = [
        Visage::start("127.0.0.1", remote_port),
        Visage::start("127.0.0.2", remote_port),
    ];
    let noodle = format!("127.0.0.1:{}", free_port());
    let collectd_port = free_port();
    let config = format!(
        r#"
[server]
admin_listen = "ADMIN"
shards = 1
[[listen]]
name = "collectd"
url = "udp://127.0.0.1:{collectd_port}"
format = "collectd"
[[cluster]]
name = "shortterm"
kind = "coco"
format = "collectd"
members = ["udp://127.0.0.1:{p1}", "udp://127.0.0.2:{p2}"]
[[cluster]]
name = "spread"
kind = "fnv1a_ch"
key = "identifier"
format = "collectd"
members = ["udp://127.0.0.1:{p3}"]
[[route]]
match = {{ all = true }}
from = ["collectd"]
send_to = ["shortterm", "spread"]
[noodle]
listen = "{noodle}"
cluster = "shortterm"
remote_port = {remote_port}
timeout_ms = 500
"#,
        p1 = free_port(),
        p2 = free_port(),
        p3 = free_port(),
    );
    let cadent = Cadent::start("noodle", &config);
    let up = wait_until(Duration::from_secs(10), || {
        TcpStream::connect(&noodle).is_ok()
    });
    assert!(up, "noodle did not listen:\n{}", cadent.log());

    // Proxied to the owner /lookup names, with _meta, the upstream's JSON kept.
    let hosts: Vec<String> = (0..12).map(|i| format!("web{i:02}.example")).collect();
    let mut asked = [0, 0];
    for host in &hosts {
        let (status, lookup) = get(&cadent.admin, &format!("/lookup?name={host}"));
        assert_eq!(status, 200);
        let obj = lookup.as_object().unwrap();
        assert_eq!(obj.len(), 1, "only host-keyed clusters: {lookup}");
        let owner = lookup["shortterm"].as_str().unwrap().to_string();
        let ip = owner.split(':').next().unwrap();
        let which = usize::from(ip == "127.0.0.2");
        let before = servers[which].requests().len();
        let path = format!("/data/{host}/cpu/0?start=1&finish=2");
        let (status, v) = get(&noodle, &path);
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            v[host.as_str()]["cpu"]["0"]["value"]["data"],
            json!([1.5, 2.5, null])
        );
        let remote = format!("{ip}:{remote_port}");
        assert_eq!(
            v["_meta"],
            json!({ "host": remote, "target": owner, "url": format!("http://{remote}{path}") })
        );
        assert_eq!(servers[which].requests()[before..], [path]);
        asked[which] += 1;
        // Noodle's own /lookup answers the same.
        assert_eq!(get(&noodle, &format!("/lookup?name={host}")).1, lookup);
    }
    assert!(asked[0] > 0 && asked[1] > 0, "hosts spread: {asked:?}");

    // Status codes pass through; a text error page too.
    let host = &hosts[0];
    let (status, v) = get(&noodle, &format!("/data/{host}/missing/x"));
    assert_eq!(status, 404);
    assert_eq!(v["error"], "no such plugin");
    assert!(v["_meta"]["url"].as_str().unwrap().ends_with("/missing/x"));
    let (status, v) = get(&noodle, &format!("/data/{host}/text/x"));
    assert_eq!((status, v), (500, Value::String("broken".into())));
    // A slow owner: 504.
    let (status, v) = get(&noodle, &format!("/data/{host}/slow/x"));
    assert_eq!(status, 504, "{v}");
    // A dead owner: 502.
    let dead = hosts
        .iter()
        .find(|h| {
            get(&cadent.admin, &format!("/lookup?name={h}")).1["shortterm"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.2:")
        })
        .unwrap();
    servers[1].stop();
    let (status, v) = get(&noodle, &format!("/data/{dead}/cpu/0"));
    assert_eq!(status, 502, "{v}");
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains(&format!("127.0.0.2:{remote_port}")));
    assert_eq!(get(&noodle, "/data//cpu").0, 400, "no host");

    // collectd traffic, so /tiers has hosts to show.
    let out = Command::new(cadent_bin())
        .args(["blast", "--format", "collectd", "--to"])
        .arg(format!("udp://127.0.0.1:{collectd_port}"))
        .args([
            "--count",
            "200",
            "--names",
            "200",
            "--hosts",
            "10",
            "--plugins",
            "4",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    wait_until(Duration::from_secs(5), || {
        cadent.stats()["listeners"]["collectd"]["collectd"]["routed"] == 200
    });
    let (status, tiers) = get(&cadent.admin, "/tiers");
    assert_eq!(status, 200);
    let tiers = tiers.as_array().unwrap();
    assert_eq!(tiers.len(), 1, "spread is keyed by identifier: {tiers:?}");
    let t = &tiers[0];
    assert_eq!(t["name"], "shortterm");
    assert_eq!(
        t["virtual_replicas"], 90,
        "Coco's replica count for 2 targets"
    );
    let mut all_hosts = Vec::new();
    for (member, r) in t["routes"].as_object().unwrap() {
        for h in r["hosts"].as_array().unwrap() {
            let h = h.as_str().unwrap();
            assert_eq!(
                get(&cadent.admin, &format!("/lookup?name={h}")).1["shortterm"],
                member.as_str()
            );
            all_hosts.push(h.to_string());
        }
    }
    assert_eq!(all_hosts.len(), 10, "{t}");

    // /debug/vars: Coco's names.
    let vars: Value =
        serde_json::from_str(&http_get(&cadent.admin, "/debug/vars").unwrap()).unwrap();
    let coco = &vars["coco"];
    assert_eq!(coco["listen"]["decoded"], 200, "{coco}");
    assert!(coco["listen"]["raw"].as_u64().unwrap() > 0);
    assert_eq!(coco["filter"]["accepted"], 200);
    assert_eq!(coco["filter"]["rejected"], 0);
    assert_eq!(
        coco["send"]["total"], 200,
        "one member of shortterm per value list: {coco}"
    );
    assert!(coco["errors"]["decode.bad_signature"].is_u64());
    let n = &vars["noodle"];
    assert_eq!(n["fetch.target.requests"]["total"], 14, "{n}");
    assert_eq!(n["fetch.target.response.codes"]["404"], 1);
    assert_eq!(n["errors"]["fetch.timeout"], 1);
    assert_eq!(n["errors"]["fetch.http.get"], 1);
    assert_eq!(n["fetch.tier.requests"]["shortterm"], 16);
    assert!(vars["cadent"]["listeners"]["collectd"].is_object());
    assert!(vars["cmdline"].is_array());
}
