#!/usr/bin/env python3
"""statsd aggregation: `cadent serve` end to end against Etsy statsd 0.9.0 (`serve`), and
the engine's own cost (`engine`, the default).

    /usr/bin/python3 bench/aggregate.py serve   # --rate 1000000 --lines 20000000 --names 100000
                                                # --shards 2 --repeats 3
    python3 bench/aggregate.py                  # --keys 100000 1000000 --repeats 3 --cpu-s 1.0
    python3 bench/aggregate.py --no-build --etsy-s 10

`serve`: the same generator (`cadent blast --format statsd`: counters, timers, gauges and
sets 5:3:1:1 over --names names, 20 lines per datagram, --rate lines/s offered over UDP)
into `cadent serve` (--shards shards, statsd UDP listener -> `[[aggregate]] kind =
"statsd"`) and into Etsy statsd 0.9.0 (node), one after the other, alternating, --repeats
times each. Both flush every 10 minutes, so the run measures ingest (the engine's flush
cost is part `engine`). Per run: lines the server counted (cadent: its statsd listener's
`received_lines`; Etsy: `statsd.metrics_received` through its management console),
utime+stime of the whole server process over the run (/proc/PID/stat), kernel drops (the
`Udp: RcvbufErrors` delta of /proc/net/snmp over the run), RSS after the run and keys held
(cadent: its aggregator's `keys`; Etsy: --names). Reports medians and the ratio of lines
per CPU-second. Everything on 127.0.0.1; processes stopped by PID.

Part 1 runs examples/aggregate_bench.rs (release) for each key count, --repeats times,
and prints the median of each number per type: samples per CPU-second through `ingest`
(pre-parsed) and `ingest_datagram` (Etsy's text grammar, 20 lines per datagram), the
CPU time of one flush of every key, and live heap bytes per key (requested bytes, from a
counting allocator in the example).

Part 2 (skipped with --etsy-s 0) starts Etsy statsd 0.9.0 (node, .peers/node) on
127.0.0.1 with a 10-minute flushInterval (no flush during the run), sends it counter
datagrams of 20 lines over --keys-etsy keys from this process for --etsy-s seconds, then
reads `statsd.metrics_received` through its management port (`counters`) and node's CPU
time from /proc/PID/stat. It reports node's CPU-seconds per million samples it actually
received (the kernel may drop some; they cost node nothing), beside the engine's
`ingest_datagram` figure for counters at the same key count. node is stopped by PID.
Everything on 127.0.0.1; stdlib only.
"""
import argparse
import functools
import json
import os
import re
import socket
import statistics
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "target", "release", "examples", "aggregate_bench")
STATSD = os.path.join(ROOT, ".peers", "node", "node_modules", "statsd", "stats.js")

FIELDS = [
    "ingest_per_cpu_s",
    "datagram_per_cpu_s",
    "flush_cpu_s",
    "flush_lines",
    "bytes_per_key",
    "bytes_per_key_at_flush",
    "samples_per_key_at_flush",
    "ingest_and_flush_per_cpu_s",
    "allocations_per_million_samples",
]


def build():
    subprocess.run(
        ["cargo", "build", "--release", "--example", "aggregate_bench"], cwd=ROOT, check=True
    )


def engine(keys, repeats, cpu_s):
    runs = []
    for _ in range(repeats):
        out = subprocess.run(
            [EXAMPLE, str(keys), str(cpu_s)], check=True, capture_output=True, text=True
        ).stdout
        runs.append([json.loads(l) for l in out.strip().splitlines()])
    rows = []
    for i, first in enumerate(runs[0]):
        row = {"type": first["type"], "keys": keys}
        for f in FIELDS:
            row[f] = statistics.median(r[i][f] for r in runs)
        rows.append(row)
    return rows


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


def mgmt(port, cmd):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(cmd.encode() + b"\n")
        data = b""
        while b"END" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.decode()


def in_work_dir(prefix):
    """Runs the decorated function with a fresh directory under $TMPDIR as its first
    argument. The directory is removed when the run returns (the sink's output alone is
    tens of MB a run), and kept, with its path printed, when the run fails."""
    def wrap(run):
        @functools.wraps(run)
        def with_dir(*args):
            d = tempfile.mkdtemp(prefix=prefix)
            try:
                result = run(d, *args)
            except BaseException:
                print(f"run failed: its files are kept in {d}", file=sys.stderr)
                raise
            shutil.rmtree(d, ignore_errors=True)
            return result
        return with_dir
    return wrap


@in_work_dir("cadent-bench-etsy-")
def etsy(d, seconds, keys):
    if not os.path.exists(STATSD):
        sys.exit("Etsy statsd is not installed: run scripts/install-peers.sh")
    udp, mport = free_port(), free_port()
    cfg = {
        "port": udp,
        "address": "127.0.0.1",
        "mgmt_port": mport,
        "mgmt_address": "127.0.0.1",
        "flushInterval": 600000,
    }
    path = os.path.join(d, "config.js")
    with open(path, "w") as f:
        json.dump(cfg, f)
    log = open(os.path.join(d, "statsd.log"), "w")
    node = subprocess.Popen(["node", STATSD, path], stdout=log, stderr=log, cwd=d)
    try:
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", mport), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or node.poll() is not None:
                    sys.exit("Etsy statsd did not start; see " + d)
                time.sleep(0.1)
        datagrams = []
        for start in range(0, keys, 20):
            lines = [f"bench.counter.k{i}:1|c" for i in range(start, min(start + 20, keys))]
            datagrams.append("\n".join(lines).encode())
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        cpu0 = proc_cpu_s(node.pid)
        sent = 0
        end = time.time() + seconds
        while time.time() < end:
            for dg in datagrams:
                s.sendto(dg, ("127.0.0.1", udp))
                sent += dg.count(b"\n") + 1
        time.sleep(1.0)  # let node drain its socket buffer
        cpu = proc_cpu_s(node.pid) - cpu0
        counters = mgmt(mport, "counters")
        m = re.search(r"'statsd\.metrics_received': (\d+)", counters)
        received = int(m.group(1)) if m else 0
        return {
            "keys": keys,
            "seconds": seconds,
            "samples_sent": sent,
            "samples_received": received,
            "node_cpu_s": round(cpu, 3),
            "node_cpu_s_per_million": round(cpu / (received / 1e6), 3) if received else None,
        }
    finally:
        node.terminate()
        try:
            node.wait(timeout=10)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
        log.close()


CADENT = os.path.join(ROOT, "target", "release", "cadent")


def udp_rcvbuf_errors():
    with open("/proc/net/snmp") as f:
        rows = [l.split() for l in f if l.startswith("Udp:")]
    head, vals = rows[0], rows[1]
    return int(vals[head.index("RcvbufErrors")])


def vm_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def http_json(port, path):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


def wait_port(port, proc, what):
    deadline = time.time() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                sys.exit(f"{what} did not start")
            time.sleep(0.1)


def blast(port, a):
    out = subprocess.run(
        [CADENT, "blast", "--to", f"udp://127.0.0.1:{port}", "--format", "statsd",
         "--rate", str(a.rate), "--count", str(a.lines), "--names", str(a.names),
         "--datagram-lines", "20", "--datagram-bytes", "1400",
         "--connections", str(a.connections), "--seed", "7"],
        check=True, capture_output=True, text=True,
    ).stdout
    m = re.search(r"sent_lines=(\d+).*rate=(\d+)", out)
    return int(m.group(1)), int(m.group(2))


def settle(read, timeout_s=60):
    """Waits until `read()` stops growing (1 s unchanged), bounded."""
    last, since, end = read(), time.time(), time.time() + timeout_s
    while time.time() < end:
        time.sleep(0.25)
        now = read()
        if now != last:
            last, since = now, time.time()
        elif time.time() - since >= 1.0:
            break
    return last


@in_work_dir("cadent-bench-serve-")
def run_cadent(d, a):
    udp, admin = free_port(), free_port()
    cfg = f"""
[server]
shards = {a.shards}
admin_listen = "127.0.0.1:{admin}"
[telemetry]
prefix = ""
[[listen]]
name = "statsd"
url = "udp://127.0.0.1:{udp}"
format = "statsd"
socket_receive_buffer_bytes = 33554432
[[cluster]]
name = "out"
kind = "file"
path = "{d}/out.log"
[[aggregate]]
name = "statsd"
kind = "statsd"
flush_interval_ms = 600000
send_to = ["out"]
[[route]]
from = ["statsd"]
match = {{ all = true }}
aggregate = "statsd"
"""
    path = os.path.join(d, "cadent.toml")
    with open(path, "w") as f:
        f.write(cfg)
    log = open(os.path.join(d, "cadent.log"), "w")
    p = subprocess.Popen([a.cadent, "serve", "--config", path], stdout=log, stderr=log, cwd=d)
    try:
        wait_port(admin, p, "cadent")
        time.sleep(0.3)
        drops0, cpu0 = udp_rcvbuf_errors(), proc_cpu_s(p.pid)
        sent, rate = blast(udp, a)
        lines = lambda: http_json(admin, "/stats")["listeners"]["statsd"]["received_lines"]
        received = settle(lines)
        cpu = proc_cpu_s(p.pid) - cpu0
        drops = udp_rcvbuf_errors() - drops0
        keys = http_json(admin, "/stats")["aggregators"]["statsd"]["keys"]
        rss = vm_rss_kib(p.pid)
        return dict(server="cadent", sent=sent, offered=rate, received=received, cpu_s=cpu,
                    kernel_drops=drops, keys=keys, rss_kib=rss)
    finally:
        stop(p, log)


def stop(p, log):
    p.terminate()
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    log.close()


@in_work_dir("cadent-bench-etsy-serve-")
def run_etsy(d, a):
    udp, mport = free_port(), free_port()
    cfg = {"port": udp, "address": "127.0.0.1", "mgmt_port": mport,
           "mgmt_address": "127.0.0.1", "flushInterval": 600000, "backends": []}
    path = os.path.join(d, "config.js")
    with open(path, "w") as f:
        json.dump(cfg, f)
    log = open(os.path.join(d, "statsd.log"), "w")
    p = subprocess.Popen(["node", STATSD, path], stdout=log, stderr=log, cwd=d)
    try:
        wait_port(mport, p, "Etsy statsd")
        drops0, cpu0 = udp_rcvbuf_errors(), proc_cpu_s(p.pid)
        sent, rate = blast(udp, a)

        def lines():
            m = re.search(r"'statsd\.metrics_received': (\d+)", mgmt(mport, "counters"))
            return int(m.group(1)) if m else 0

        received = settle(lines)
        cpu = proc_cpu_s(p.pid) - cpu0
        drops = udp_rcvbuf_errors() - drops0
        rss = vm_rss_kib(p.pid)
        return dict(server="etsy", sent=sent, offered=rate, received=received, cpu_s=cpu,
                    kernel_drops=drops, keys=a.names, rss_kib=rss)
    finally:
        stop(p, log)


def serve(argv):
    ap = argparse.ArgumentParser(prog="aggregate.py serve")
    ap.add_argument("--rate", type=int, default=1_000_000)
    ap.add_argument("--lines", type=int, default=20_000_000)
    ap.add_argument("--names", type=int, default=100_000)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--servers", default="cadent,etsy")
    ap.add_argument("--cadent", default=CADENT,
                    help="the cadent binary that serves (the generator is always the build's)")
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args(argv)
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "--bin", "cadent"], cwd=ROOT, check=True)
    servers = a.servers.split(",")
    runs = []
    for k in range(a.repeats):
        order = servers if k % 2 == 0 else list(reversed(servers))
        for srv in order:
            r = run_cadent(a) if srv == "cadent" else run_etsy(a)
            r["lines_per_cpu_s"] = r["received"] / r["cpu_s"] if r["cpu_s"] else 0
            r["rss_bytes_per_key"] = r["rss_kib"] * 1024 / r["keys"] if r["keys"] else 0
            log(json.dumps(r))
            runs.append(r)
    print("| server | sent | offered/s | received | kernel drops | CPU s | lines/CPU-s | RSS MiB | RSS bytes/key |")
    print("|---|---|---|---|---|---|---|---|---|")
    med = {}
    for srv in servers:
        rs = [r for r in runs if r["server"] == srv]
        m = {f: statistics.median(r[f] for r in rs) for f in
             ["sent", "offered", "received", "kernel_drops", "cpu_s", "lines_per_cpu_s",
              "rss_kib", "rss_bytes_per_key"]}
        med[srv] = m
        print(f"| {srv} | {m['sent']:,.0f} | {m['offered']:,.0f} | {m['received']:,.0f} "
              f"| {m['kernel_drops']:,.0f} | {m['cpu_s']:.2f} | {m['lines_per_cpu_s']:,.0f} "
              f"| {m['rss_kib'] / 1024:.1f} | {m['rss_bytes_per_key']:.0f} |")
    if "cadent" in med and "etsy" in med and med["etsy"]["lines_per_cpu_s"]:
        print(f"cadent / Etsy lines per CPU-second: "
              f"{med['cadent']['lines_per_cpu_s'] / med['etsy']['lines_per_cpu_s']:.1f}x")
    with open(os.path.join(ROOT, "target", "aggregate_serve.json"), "w") as f:
        json.dump(runs, f, indent=1)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        return serve(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "engine":
        sys.argv.pop(1)
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, nargs="+", default=[100000, 1000000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu-s", type=float, default=1.0)
    ap.add_argument("--etsy-s", type=float, default=10.0)
    ap.add_argument("--keys-etsy", type=int, default=100000)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        build()
    results = {"engine": [], "etsy": None}
    for k in a.keys:
        results["engine"].extend(engine(k, a.repeats, a.cpu_s))
    print("| type | keys | ingest samples/CPU-s | datagram samples/CPU-s | flush CPU s (lines) | bytes/key | bytes/key at flush (samples/key) | allocations per 1M samples |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["engine"]:
        print(
            f"| {r['type']} | {r['keys']:,} | {r['ingest_per_cpu_s']:,.0f} | {r['datagram_per_cpu_s']:,.0f} "
            f"| {r['flush_cpu_s']:.3f} ({r['flush_lines']:,.0f}) | {r['bytes_per_key']:.0f} "
            f"| {r['bytes_per_key_at_flush']:.0f} ({r['samples_per_key_at_flush']:.0f}) "
            f"| {r['allocations_per_million_samples']:.1f} |"
        )
    if a.etsy_s > 0:
        e = etsy(a.etsy_s, a.keys_etsy)
        results["etsy"] = e
        ours = [r for r in results["engine"] if r["type"] == "counter" and r["keys"] == a.keys_etsy]
        if ours and e["node_cpu_s_per_million"]:
            cadent = 1e6 / ours[0]["datagram_per_cpu_s"]
            e["cadent_cpu_s_per_million"] = round(cadent, 4)
            e["ratio"] = round(e["node_cpu_s_per_million"] / cadent, 1)
        print(json.dumps(e))
    with open(os.path.join(ROOT, "target", "aggregate_bench.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
