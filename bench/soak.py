#!/usr/bin/env python3
"""Soak: `cadent serve` under load while everything that goes wrong in production goes
wrong at once, for --minutes (default 30), all on 127.0.0.1.

- load: `cadent blast` at --rate lines/s (default 100k) over 4 connections;
- membership churn: every 5 s a member (a counting sink) is added, and every 5 s one is
  removed again, through the admin API;
- SIGHUP: the config file is reloaded every 20 s (its member list alternates);
- a flapping sink: one member's `cadent echo` is killed every 30 s and started again
  10 s later at the same address;
- a slowloris crowd: --slowloris connections (default 300) each sending one byte every
  --slowloris-byte-s seconds (default 5), reopened when cadent closes them.

RSS is sampled every 10 s; at the end the load stops, queues drain, and every accounting
identity of /stats is checked (received = parsed + rejected per listener; per
destination, the reclaimed one included, queued + recovered = sent + dropped + offloaded
+ spooled; parsed = routed). Prints a JSON summary; exits 1 if an identity fails or RSS grew after warm-up by
more than --rss-growth-mb.

    bench/soak.py --cadent target/release/cadent --minutes 30
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def http(admin, method, path, body=None):
    req = urllib.request.Request(f"http://{admin}{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def config(admin, listen, members):
    ms = ", ".join(f'"{m}"' for m in members)
    return f"""
[server]
admin_listen = "{admin}"
shards = 2
stats_interval_ms = 200
[output]
flush_interval_ms = 50
reconnect_backoff_min_ms = 50
reconnect_backoff_max_ms = 1000
[health]
probe_interval_ms = 500
[[listen]]
name = "in"
url = "tcp://{listen}"
format = "graphite"
idle_timeout_ms = 30000
[[cluster]]
name = "c"
kind = "carbon_ch"
members = [{ms}]
[[route]]
match = {{ all = true }}
send_to = ["c"]
"""


def accounting(stats):
    """The identities; returns a list of failures (empty: all hold)."""
    fails = []
    parsed = stats.get("self_metric_lines", 0)
    for name, l in stats["listeners"].items():
        r, p, j = l["received_lines"], l["parsed_lines"], l["rejected_lines"]
        if r != p + j:
            fails.append(f"listener {name}: received {r} != parsed {p} + rejected {j}")
        parsed += p
    routed = stats.get("unrouted", 0) + stats.get("dropped_by_rule", 0)
    for name, d in stats["destinations"].items():
        out = (d["sent_lines"] + d["dropped_lines_queue_full"] + d["dropped_lines_shutdown"]
               + d["dropped_lines_write_failed"] + d["offloaded_lines"]
               + d.get("dropped_lines_spool_full", 0) + d.get("dropped_lines_spool_error", 0)
               + d.get("spool_lines", 0))
        queued = d["queued_lines"] + d.get("recovered_lines", 0)
        if queued != out:
            fails.append(f"destination {name}: queued + recovered {queued} != accounted {out}")
        routed += d["queued_lines"] - d["offloaded_lines"]
    if parsed != routed:
        fails.append(f"parsed {parsed} != routed {routed}")
    return fails


class Echo:
    """A `cadent echo` sink at a fixed address (it can be stopped and started again)."""

    def __init__(self, cadent, port, workdir):
        self.cadent, self.port, self.workdir = cadent, port, workdir
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["nice", "-n", "19", self.cadent, "echo", "--listen", f"tcp://127.0.0.1:{self.port}",
             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
            self.proc = None


def slowloris(addr, count, byte_s, stop, stats):
    """Holds `count` connections, each sending one byte every `byte_s` seconds."""
    host, port = addr.split(":")
    conns = []
    while not stop.is_set():
        while len(conns) < count and not stop.is_set():
            try:
                conns.append(socket.create_connection((host, int(port)), timeout=2))
                stats["opened"] += 1
            except OSError:
                stats["connect_failed"] += 1
                break
        alive = []
        for c in conns:
            try:
                c.send(b"x")
                alive.append(c)
            except OSError:
                stats["closed_by_cadent"] += 1
                c.close()
        conns = alive
        stop.wait(byte_s)
    for c in conns:
        c.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cadent", default="target/release/cadent")
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--rate", type=int, default=100_000)
    ap.add_argument("--slowloris", type=int, default=300)
    ap.add_argument("--slowloris-byte-s", type=float, default=5)
    ap.add_argument("--warmup-minutes", type=float, default=5)
    ap.add_argument("--rss-growth-mb", type=float, default=32)
    ap.add_argument("--out", default=None, help="write the JSON summary here too")
    a = ap.parse_args()
    cadent = os.path.abspath(a.cadent)
    work = tempfile.mkdtemp(prefix="cadent-soak-")
    admin, listen = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    ports = [free_port() for _ in range(4)]
    sinks = [Echo(cadent, p, work) for p in ports]
    base = [f"127.0.0.1:{ports[0]}=a", f"127.0.0.1:{ports[1]}=b"]
    path = os.path.join(work, "cadent.toml")
    with open(path, "w") as f:
        f.write(config(admin, listen, base))
    log = open(os.path.join(work, "cadent.log"), "w")
    proc = subprocess.Popen([cadent, "serve", "--config", path], stderr=log,
                            stdout=subprocess.DEVNULL)
    for _ in range(100):
        if http(admin, "GET", "/ops/status")[0] == 200:
            break
        time.sleep(0.1)
    duration = a.minutes * 60
    blast = subprocess.Popen(
        ["nice", "-n", "19", cadent, "blast", "--to", f"tcp://{listen}", "--rate", str(a.rate),
         "--count", "0", "--duration-s", str(int(duration)), "--connections", "4",
         "--names", "100000"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stop = threading.Event()
    loris = {"opened": 0, "closed_by_cadent": 0, "connect_failed": 0}
    t = threading.Thread(target=slowloris,
                         args=(listen, a.slowloris, a.slowloris_byte_s, stop, loris))
    t.start()
    started = time.time()
    samples, events = [], {"adds": 0, "removes": 0, "hups": 0, "flaps": 0, "refused": 0}
    churn = f"127.0.0.1:{ports[2]}"
    flapping = sinks[1]
    tick = 0
    while time.time() - started < duration:
        time.sleep(1)
        tick += 1
        if tick % 10 == 0:
            samples.append((round(time.time() - started), rss_kb(proc.pid)))
        if tick % 10 == 5:
            st, _ = http(admin, "POST", "/cluster/c/members",
                         f"server={churn}&instance=z".encode())
            events["adds"] += st == 200
            events["refused"] += st not in (200, 409)
        if tick % 10 == 0:
            st, _ = http(admin, "DELETE", f"/cluster/c/members/{churn}")
            events["removes"] += st == 200
        if tick % 20 == 0:
            members = base + ([f"127.0.0.1:{ports[3]}=d"] if (tick // 20) % 2 else [])
            with open(path, "w") as f:
                f.write(config(admin, listen, members))
            proc.send_signal(signal.SIGHUP)
            events["hups"] += 1
        if tick % 30 == 0:
            flapping.stop()
            events["flaps"] += 1
        if tick % 30 == 10 and flapping.proc is None:
            flapping.start()
    # The end: the load stops, every sink is back, queues drain.
    print(f"soak: load done after {time.time() - started:.0f} s; draining", file=sys.stderr)
    blast.wait(timeout=120)
    blast_err = blast.stderr.read().decode().strip().splitlines()[-1:]
    stop.set()
    t.join()
    for s in sinks:
        if s.proc is None:
            s.start()
    with open(path, "w") as f:
        f.write(config(admin, listen, base))
    proc.send_signal(signal.SIGHUP)
    fails = ["not checked"]
    for _ in range(120):
        time.sleep(1)
        st, body = http(admin, "GET", "/stats")
        if st == 200:
            stats = json.loads(body)
            fails = accounting(stats)
            if not fails:
                break
    print(f"soak: accounting {fails or 'holds'}", file=sys.stderr)
    warm = [r for (s, r) in samples if s >= a.warmup_minutes * 60]
    growth_mb = (max(warm) - warm[0]) / 1024 if warm else 0.0
    totals = {k: sum(d[k] for d in stats["destinations"].values())
              for k in ("queued_lines", "sent_lines", "dropped_lines_queue_full",
                        "dropped_lines_shutdown", "dropped_lines_write_failed",
                        "offloaded_lines")}
    listener = stats["listeners"]["in"]
    summary = {
        "minutes": a.minutes,
        "rate_asked": a.rate,
        "blast": blast_err,
        "received_lines": listener["received_lines"],
        "lines_per_s": round(listener["received_lines"] / duration),
        "connections": {k: listener[k] for k in
                        ("connections_accepted", "connections_refused",
                         "connections_idle_closed", "accept_errors")},
        "slowloris": loris,
        "events": events,
        "destinations": totals,
        "rss_mb_first_after_warmup": round(warm[0] / 1024, 1) if warm else None,
        "rss_mb_max_after_warmup": round(max(warm) / 1024, 1) if warm else None,
        "rss_growth_mb_after_warmup": round(growth_mb, 1),
        "rss_samples_mb": [(s, round(r / 1024, 1)) for s, r in samples[::6]],
        "accounting": fails or "every identity holds",
    }
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    for s in sinks:
        s.stop()
    text = json.dumps(summary, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    sys.exit(1 if fails or growth_mb > a.rss_growth_mb else 0)


if __name__ == "__main__":
    main()
