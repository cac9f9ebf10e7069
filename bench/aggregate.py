#!/usr/bin/env python3
"""statsd aggregation engine (cadent::aggregate::statsd) cost, and Etsy statsd 0.9.0's
CPU per million samples for a ratio.

    python3 bench/aggregate.py                  # --keys 100000 1000000 --repeats 3 --cpu-s 1.0
    python3 bench/aggregate.py --no-build --etsy-s 10

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
import json
import os
import re
import socket
import statistics
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


def etsy(seconds, keys):
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
    d = tempfile.mkdtemp(prefix="cadent-bench-etsy-")
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


def main():
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
