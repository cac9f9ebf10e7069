#!/usr/bin/env python3
"""Whisper store, side by side in one run: cadent vs go-carbon 0.17 vs carbon-cache 1.1.10.

1. Updates to existing whisper files from a steady line stream. NAMES files of
   2s:30m,1m:1d (average, xff 0.5) are made first (python whisper, sparse), one copy per
   system. Each system then takes the same stream over TCP: RATE lines/s for SECONDS s,
   name i of NAMES in turn, timestamp = the second it is sent; writes are limited to
   WRITES update_many calls/s (cadent writes_per_second, go-carbon
   max-updates-per-second, carbon MAX_UPDATES_PER_SECOND), RATE/WRITES = 10 points per
   update in steady state. When the stream ends the system writes what it holds; the
   run ends when its cache is empty (cadent: /stats; the others: their self-metric
   cache size, then two quiet metric intervals). Reported per system: CPU-seconds of
   the process (utime+stime from /proc, start to end), points written (every point
   sent, checked on a sample of files), update_many calls (cadent's counters, the
   others' self-metrics), points per CPU-second, points per update; for cadent also
   its update_many calls in each whole wall-clock second of the steady phase, as the
   store counts them (`updates_by_second` in /stats: the limit, exactly).
2. /render of 100 series over 24 h (100 files of 60s:1d, full): cadent's read API over
   HTTP (keep-alive, one client) against graphite-web 1.1.10 reading the same files
   (Django's test client in-process: no HTTP at all, which favours graphite-web).
   Requests per second and p99 latency.

go-carbon is built from its public source (v0.17.1, the 0.17 release that builds with
Debian's Go 1.19) by hand, never committed:
    git --git-dir=<mirror of go-graphite/go-carbon> archive v0.17.1 | tar -x -C /tmp/go-carbon-0.17.1
    cd /tmp/go-carbon-0.17.1 && GOFLAGS=-mod=vendor GOPROXY=off go build -o go-carbon .

Run (release build first: cargo build --release --bin cadent):
    python3 bench/store.py [--names 100000 --rate 30000 --writes 3000 --seconds 90]
cadent locks each file it updates (store flock = true, its default); go-carbon runs with
flock = false and carbon without WHISPER_LOCK_WRITES, their defaults. --no-cadent-flock
runs cadent without locks too, like for like.
"""

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCHEMA = "[bench]\npattern = ^bench\\.\nretentions = 2s:30m,1m:1d\n\n[render]\npattern = ^render\\.\nretentions = 60s:1d\n\n[default]\npattern = .*\nretentions = 10s:1h,1m:1d\n"
AGGREGATION = "[default]\npattern = .*\nxFilesFactor = 0.5\naggregationMethod = average\n"
TICK_S = 0.01
CLK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("nothing listens on %d" % port)


def name(i):
    return "bench.h%04d.m%02d" % (i // 100, i % 100)


def make_tree(whisper, root, names):
    for i in range(names):
        p = os.path.join(root, "bench", "h%04d" % (i // 100), "m%02d.wsp" % (i % 100))
        os.makedirs(os.path.dirname(p), exist_ok=True)
        whisper.create(p, [(2, 900), (60, 1440)], xFilesFactor=0.5,
                       aggregationMethod="average", sparse=True)


def send_stream(port, names, rate, seconds, sent):
    """RATE lines/s for SECONDS s, names in turn, each line stamped with its second."""
    s = socket.create_connection(("127.0.0.1", port))
    per_tick = max(1, int(rate * TICK_S))
    start = time.time()
    i = 0
    ticks = int(seconds / TICK_S)
    for t in range(ticks):
        due = start + t * TICK_S
        now = time.time()
        if due > now:
            time.sleep(due - now)
        ts = int(time.time())
        lines = []
        for _ in range(per_tick):
            lines.append("%s %d %d\n" % (name(i % names), i % 1000, ts))
            i += 1
        s.sendall("".join(lines).encode())
        sent[0] = i
    s.close()


class Proc:
    def __init__(self, argv, cwd, log, env=None):
        self.log = open(log, "w")
        self.p = subprocess.Popen(argv, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT,
                                  env=env)

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.log.close()


def http_json(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return json.loads(body)


def selfmetric_sum(whisper, root, suffix):
    """Sums every value of the self-metric files under root ending in suffix."""
    total, n = 0.0, 0
    for d, _, files in os.walk(os.path.join(root, "carbon")):
        for f in files:
            p = os.path.join(d, f)
            if p.endswith(suffix):
                (_, _, step), vals = whisper.fetch(p, time.time() - 3500)
                total += sum(v for v in vals if v is not None)
                n += 1
    return total if n else None


def selfmetric_last(whisper, root, suffix):
    for d, _, files in os.walk(os.path.join(root, "carbon")):
        for f in files:
            p = os.path.join(d, f)
            if p.endswith(suffix):
                _, vals = whisper.fetch(p, time.time() - 600)
                known = [v for v in vals if v is not None]
                return known[-1] if known else None
    return None


def check_sample(whisper, root, names, last_ts, sample=500):
    """Every sampled file holds a point in the last seconds sent."""
    missing = 0
    step = max(1, names // sample)
    for i in range(0, names, step):
        p = os.path.join(root, "bench", "h%04d" % (i // 100), "m%02d.wsp" % (i % 100))
        (start, _, st), vals = whisper.fetch(p, last_ts - 120, last_ts + 1)
        if not any(v is not None for v in vals[-30:]):
            missing += 1
    return missing


def run_cadent(args, work, whisper):
    d = os.path.join(work, "cadent")
    port, admin = free_port(), free_port()
    with open(os.path.join(d, "schemas.conf"), "w") as f:
        f.write(SCHEMA)
    with open(os.path.join(d, "aggregation.conf"), "w") as f:
        f.write(AGGREGATION)
    with open(os.path.join(d, "cadent.toml"), "w") as f:
        f.write(
            '[server]\nadmin_listen = "127.0.0.1:%d"\nshards = %d\n[telemetry]\nprefix = ""\n'
            '[[listen]]\nname = "g"\nurl = "tcp://127.0.0.1:%d"\nformat = "graphite"\n'
            '[[store]]\nname = "whisper"\nkind = "whisper"\npath = "./whisper"\n'
            'schemas_file = "schemas.conf"\naggregation_file = "aggregation.conf"\n'
            "writes_per_second = %d\ncreates_per_minute = 0\nflock = %s\n"
            '[[route]]\nmatch = { all = true }\nsend_to = ["whisper"]\n'
            % (admin, args.shards, port, args.writes, "true" if args.cadent_flock else "false")
        )
    proc = Proc([args.cadent, "serve", "--config", "cadent.toml"], d, os.path.join(d, "log"))
    wait_port(admin)
    wait_port(port)
    sent = [0]
    sender = threading.Thread(target=send_stream,
                              args=(port, args.names, args.rate, args.seconds, sent))
    cpu0 = cpu_s(proc.p.pid)
    t0 = time.time()
    # The limit, second by second, in the steady phase (after one write cycle).
    steady_from = t0 + args.names / args.writes + 5
    sender.start()
    # The store counts its update_many calls per wall-clock second (the last minute in
    # /stats): collected as the run goes, exact, with no sampling lag.
    by_second = {}
    while sender.is_alive():
        time.sleep(5)
        by_second.update(http_json(admin, "/stats")["stores"]["whisper"]["updates_by_second"])
    sender.join()
    while True:
        st = http_json(admin, "/stats")["stores"]["whisper"]
        if st["cache_points"] == 0 and st["points_cached"] == sent[0]:
            break
        time.sleep(0.2)
    cpu = cpu_s(proc.p.pid) - cpu0
    elapsed = time.time() - t0
    proc.stop()
    missing = check_sample(whisper, os.path.join(d, "whisper"), args.names, int(t0 + args.seconds))
    return {
        "system": "cadent" if args.cadent_flock else "cadent (flock = false)",
        "points": sent[0],
        "updates": st["updates"],
        "cpu_s": round(cpu, 2),
        "elapsed_s": round(elapsed, 1),
        "read_ops": st["read_ops"],
        "write_ops": st["write_ops"],
        "sample_files_missing_last_points": missing,
        # Whole seconds of the steady phase: after one write cycle over every name, until
        # the stream ends.
        "updates_per_second_steady": [by_second[k] for k in sorted(by_second)
                                      if steady_from <= int(k) < t0 + args.seconds - 1],
    }


def run_go_carbon(args, work, whisper):
    d = os.path.join(work, "go-carbon")
    port = free_port()
    with open(os.path.join(d, "schemas.conf"), "w") as f:
        f.write(SCHEMA)
    with open(os.path.join(d, "aggregation.conf"), "w") as f:
        f.write(AGGREGATION)
    conf = """[common]
user = ""
graph-prefix = "carbon.agents.gocarbon"
metric-endpoint = "local"
max-cpu = 2
metric-interval = "10s"
[whisper]
data-dir = "%(d)s/whisper"
schemas-file = "%(d)s/schemas.conf"
aggregation-file = "%(d)s/aggregation.conf"
workers = 4
max-updates-per-second = %(w)d
sparse-create = true
flock = false
enabled = true
[cache]
max-size = 100000000
write-strategy = "max"
[udp]
enabled = false
[tcp]
listen = "127.0.0.1:%(port)d"
enabled = true
[pickle]
enabled = false
[carbonlink]
enabled = false
[grpc]
enabled = false
[carbonserver]
enabled = false
[dump]
enabled = false
[pprof]
enabled = false
[[logging]]
logger = ""
file = "%(d)s/go-carbon.log"
level = "error"
""" % {"d": d, "w": args.writes, "port": port}
    with open(os.path.join(d, "go-carbon.conf"), "w") as f:
        f.write(conf)
    proc = Proc([args.go_carbon, "-config", "go-carbon.conf"], d, os.path.join(d, "log"))
    wait_port(port)
    sent = [0]
    cpu0 = cpu_s(proc.p.pid)
    t0 = time.time()
    send_stream(port, args.names, args.rate, args.seconds, sent)
    root = os.path.join(d, "whisper")
    # Until its self-metrics say the cache is empty, then two more intervals (the last
    # updates reach the counters).
    deadline = time.time() + 600
    while time.time() < deadline:
        time.sleep(5)
        size = selfmetric_last(whisper, root, "cache/size.wsp")
        if size == 0 and time.time() - t0 > args.seconds + 20:
            break
    time.sleep(21)
    cpu = cpu_s(proc.p.pid) - cpu0
    elapsed = time.time() - t0
    proc.stop()
    updates = selfmetric_sum(whisper, root, "persister/updateOperations.wsp")
    committed = selfmetric_sum(whisper, root, "persister/committedPoints.wsp")
    missing = check_sample(whisper, root, args.names, int(t0 + args.seconds))
    return {
        "system": "go-carbon 0.17.1",
        "points": sent[0],
        "committed_points_selfmetric": committed,
        "updates": updates,
        "cpu_s": round(cpu, 2),
        "elapsed_s": round(elapsed, 1),
        "sample_files_missing_last_points": missing,
    }


def run_carbon(args, work, whisper, python):
    d = os.path.join(work, "carbon")
    port, pport, qport = free_port(), free_port(), free_port()
    os.makedirs(os.path.join(d, "conf"), exist_ok=True)
    os.makedirs(os.path.join(d, "log"), exist_ok=True)
    with open(os.path.join(d, "conf", "storage-schemas.conf"), "w") as f:
        f.write(SCHEMA)
    with open(os.path.join(d, "conf", "storage-aggregation.conf"), "w") as f:
        f.write(AGGREGATION)
    with open(os.path.join(d, "conf", "carbon.conf"), "w") as f:
        f.write(
            "[cache]\nSTORAGE_DIR = %(d)s\nLOCAL_DATA_DIR = %(d)s/whisper\nWHITELISTS_DIR = %(d)s/lists\n"
            "CONF_DIR = %(d)s/conf\nLOG_DIR = %(d)s/log\nPID_DIR = %(d)s\nENABLE_LOGROTATION = False\n"
            "USER =\nMAX_CACHE_SIZE = inf\nMAX_UPDATES_PER_SECOND = %(w)d\nMAX_CREATES_PER_MINUTE = inf\n"
            "LINE_RECEIVER_INTERFACE = 127.0.0.1\nLINE_RECEIVER_PORT = %(port)d\nENABLE_UDP_LISTENER = False\n"
            "PICKLE_RECEIVER_INTERFACE = 127.0.0.1\nPICKLE_RECEIVER_PORT = %(pport)d\n"
            "CACHE_QUERY_INTERFACE = 127.0.0.1\nCACHE_QUERY_PORT = %(qport)d\nLOG_UPDATES = False\n"
            "LOG_CACHE_HITS = False\nLOG_CREATES = False\nENABLE_TAGS = False\n"
            "CARBON_METRIC_INTERVAL = 10\nCARBON_METRIC_PREFIX = carbon\n"
            % {"d": d, "w": args.writes, "port": port, "pport": pport, "qport": qport}
        )
    script = os.path.join(os.path.dirname(python), "carbon-cache.py")
    proc = Proc([python, script, "--config=%s/conf/carbon.conf" % d, "--nodaemon", "start"], d,
                os.path.join(d, "out.log"))
    wait_port(port)
    sent = [0]
    cpu0 = cpu_s(proc.p.pid)
    t0 = time.time()
    send_stream(port, args.names, args.rate, args.seconds, sent)
    root = os.path.join(d, "whisper")
    deadline = time.time() + 1800
    while time.time() < deadline:
        time.sleep(5)
        size = selfmetric_last(whisper, root, "cache/size.wsp")
        if size == 0 and time.time() - t0 > args.seconds + 20:
            break
    time.sleep(21)
    cpu = cpu_s(proc.p.pid) - cpu0
    elapsed = time.time() - t0
    proc.stop()
    updates = selfmetric_sum(whisper, root, "updateOperations.wsp")
    committed = selfmetric_sum(whisper, root, "committedPoints.wsp")
    missing = check_sample(whisper, root, args.names, int(t0 + args.seconds))
    return {
        "system": "carbon-cache 1.1.10",
        "points": sent[0],
        "committed_points_selfmetric": committed,
        "updates": updates,
        "cpu_s": round(cpu, 2),
        "elapsed_s": round(elapsed, 1),
        "sample_files_missing_last_points": missing,
    }


def render_bench(args, work, whisper):
    root = os.path.join(work, "render", "whisper")
    now = int(time.time())
    for i in range(100):
        p = os.path.join(root, "render", "s%03d" % i, "value.wsp")
        os.makedirs(os.path.dirname(p), exist_ok=True)
        whisper.create(p, [(60, 1440)], xFilesFactor=0.5, aggregationMethod="average")
        whisper.update_many(p, [(now - 60 * k, float(i + k)) for k in range(1440)], now=now)
    d = os.path.join(work, "render")
    admin = free_port()
    with open(os.path.join(d, "cadent.toml"), "w") as f:
        f.write(
            '[server]\nadmin_listen = "127.0.0.1:%d"\nshards = %d\n[telemetry]\nprefix = ""\n'
            '[[listen]]\nname = "g"\nurl = "tcp://127.0.0.1:%d"\nformat = "graphite"\n'
            '[[store]]\nname = "whisper"\nkind = "whisper"\npath = "./whisper"\n'
            '[[route]]\nmatch = { all = true }\nsend_to = ["whisper"]\n'
            % (admin, args.shards, free_port())
        )
    proc = Proc([args.cadent, "serve", "--config", "cadent.toml"], d, os.path.join(d, "log"))
    wait_port(admin)
    path = "/render/?target=render.*.value&from=-24h&until=now&format=json"
    c = http.client.HTTPConnection("127.0.0.1", admin, timeout=30)
    lat = []
    n_series = None
    t0 = time.time()
    for _ in range(args.render_requests):
        a = time.perf_counter()
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        lat.append(time.perf_counter() - a)
        assert r.status == 200, body[:200]
        if n_series is None:
            n_series = len(json.loads(body))
    total = time.time() - t0
    proc.stop()
    cadent = {"system": "cadent", "series": n_series, "requests": len(lat),
              "rps": round(len(lat) / total, 1),
              "p99_ms": round(sorted(lat)[int(len(lat) * 0.99) - 1] * 1000, 1),
              "median_ms": round(statistics.median(lat) * 1000, 1)}
    # graphite-web reading the same files, in-process.
    gw = os.path.join(ROOT, ".peers/graphite-web-venv/bin/python")
    script = """
import json, os, sys, time, statistics
tmp = sys.argv[1]; root = sys.argv[2]; n = int(sys.argv[3])
os.makedirs(os.path.join(tmp, 'log'), exist_ok=True)
open(os.path.join(tmp, 'gws.py'), 'w').write(
  "from graphite.settings import *\\nSECRET_KEY='b'\\nALLOWED_HOSTS=['*']\\nLOG_DIR=%r\\n"
  "STANDARD_DIRS=[%r]\\nCLUSTER_SERVERS=[]\\nCARBONLINK_HOSTS=[]\\nTAGDB=''\\n"
  "CACHES={'default':{'BACKEND':'django.core.cache.backends.dummy.DummyCache'}}\\n"
  "DATABASES={'default':{'ENGINE':'django.db.backends.sqlite3','NAME':%r}}\\n"
  % (os.path.join(tmp,'log'), root, os.path.join(tmp,'g.db')))
sys.path.insert(0, tmp); os.environ['DJANGO_SETTINGS_MODULE'] = 'gws'
import django; django.setup()
from django.test import Client
c = Client(); lat = []; series = None
t0 = time.time()
for _ in range(n):
    a = time.perf_counter()
    r = c.get('/render/', {'target': 'render.*.value', 'from': '-24h', 'until': 'now', 'format': 'json'})
    lat.append(time.perf_counter() - a)
    assert r.status_code == 200
    if series is None: series = len(json.loads(r.content))
total = time.time() - t0
print(json.dumps({'series': series, 'requests': n, 'rps': round(n / total, 1),
  'p99_ms': round(sorted(lat)[int(n * 0.99) - 1] * 1000, 1),
  'median_ms': round(statistics.median(lat) * 1000, 1)}))
"""
    out = subprocess.run([gw, "-c", script, os.path.join(d, "gw"), root,
                          str(max(20, args.render_requests // 5))],
                         capture_output=True, text=True, check=True)
    gweb = json.loads(out.stdout.strip().splitlines()[-1])
    gweb["system"] = "graphite-web 1.1.10 (in-process Django test client)"
    return [cadent, gweb]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--names", type=int, default=100_000)
    ap.add_argument("--rate", type=int, default=30_000)
    ap.add_argument("--writes", type=int, default=3_000)
    ap.add_argument("--seconds", type=int, default=90)
    ap.add_argument("--shards", type=int, default=2)
    # go-carbon runs with flock = false and carbon without WHISPER_LOCK_WRITES (both
    # their defaults); cadent locks by default. --no-cadent-flock compares like for like.
    ap.add_argument("--cadent-flock", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--work", default="/tmp/cadent-store-bench")
    ap.add_argument("--go-carbon", default="/tmp/go-carbon-0.17.1/go-carbon")
    ap.add_argument("--cadent", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release/cadent"))
    ap.add_argument("--render-requests", type=int, default=200)
    ap.add_argument("--only", default="cadent,go-carbon,carbon,render")
    args = ap.parse_args()
    import whisper
    only = args.only.split(",")
    shutil.rmtree(args.work, ignore_errors=True)
    base = os.path.join(args.work, "base")
    t = time.time()
    make_tree(whisper, os.path.join(base, "whisper"), args.names)
    print("made %d files in %.0f s" % (args.names, time.time() - t), file=sys.stderr)
    results = []
    for sysname in ("cadent", "go-carbon", "carbon"):
        if sysname not in only:
            continue
        d = os.path.join(args.work, sysname)
        shutil.copytree(base, d, symlinks=True)
        subprocess.run(["sync"])
        print("running %s" % sysname, file=sys.stderr)
        if sysname == "cadent":
            r = run_cadent(args, args.work, whisper)
        elif sysname == "go-carbon":
            r = run_go_carbon(args, args.work, whisper)
        else:
            r = run_carbon(args, args.work, whisper, sys.executable)
        r["points_per_cpu_s"] = round(r["points"] / r["cpu_s"]) if r["cpu_s"] else None
        if r.get("updates"):
            r["points_per_update"] = round(r["points"] / r["updates"], 2)
        print(json.dumps(r), file=sys.stderr)
        results.append(r)
        shutil.rmtree(d, ignore_errors=True)
    out = {"updates": results,
           "setup": {"names": args.names, "rate": args.rate, "writes_per_second": args.writes,
                     "seconds": args.seconds, "shards": args.shards}}
    if "render" in only:
        out["render"] = render_bench(args, args.work, whisper)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
