#!/usr/bin/env python3
"""collectd tiers (issue 12): cadent vs Coco 1.0.1, side by side, same loads.

    python3 bench/collectd_tiers.py --coco /tmp/coco-build/coco   # see bench/README.md

Each relay takes collectd packets on 127.0.0.1 and sends every value list to one member
of each of two tiers (2 members each, Coco's ring placing hosts). The members are one
`cadent echo --format collectd` process with four UDP addresses, counting the value lists
of every packet it receives (16 MiB receive buffers). Loads, each run separately against
a fresh relay:

- collectd-tg bursts: `collectd-tg -n N -H 1000 -p 20 -i I` for --duration-s seconds,
  stopped by PID;
- `cadent blast --format collectd --rate R --count C` (its own count of value lists sent).

Per run:
- generator packets = the `Udp: OutDatagrams` delta of /proc/net/snmp minus the packets
  the relay itself sent (cadent's destination `writes`, Coco's `coco.send.total`: one
  datagram per value list per tier);
- relay input packets = cadent's collectd `packets`, Coco's `coco.listen.raw`; their
  difference is what the relay never read (kernel drops: the `RcvbufErrors` delta is
  printed too, summed over every socket of the host);
- value lists in = cadent's `value_lists`, Coco's `coco.listen.decoded`; value lists sent
  to the generator = generator packets x (value lists in / relay input packets);
- loss = 1 - (value lists counted at the members / 2) / value lists sent;
- relay CPU = utime + stime of the relay process (/proc/PID/stat) from just before the
  load to the end of the drain (the members' counts still for 1 s, bounded);
- value lists per CPU-second = value lists in / relay CPU.

Nothing is committed or built from Coco here: pass the binary built from its public source
(bench/README.md says how). Everything on 127.0.0.1; every wait is bounded; processes are
stopped by PID. Stdlib only.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CADENT = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                      "release", "cadent")
COLLECTD_TG = "/usr/bin/collectd-tg"
TYPES_DB = "/usr/share/collectd/types.db"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def free_tcp_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def udp_snmp():
    with open("/proc/net/snmp") as f:
        lines = [l.split() for l in f if l.startswith("Udp:")]
    return dict(zip(lines[0][1:], map(int, lines[1][1:])))


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def stop(proc):
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def wait_for(f, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if f():
                return True
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    return False


class Sinks:
    """Four counting members in one `cadent echo --format collectd`."""

    def __init__(self, tmp):
        self.ports = [free_port() for _ in range(4)]
        self.stats = os.path.join(tmp, "echo.json")
        listen = ",".join("udp://127.0.0.1:%d" % p for p in self.ports)
        self.proc = subprocess.Popen(
            [CADENT, "echo", "--format", "collectd", "--quiet", "--interval-ms", "200",
             "--listen", listen, "--stats-file", self.stats],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_for(lambda: os.path.exists(self.stats), 10):
            sys.exit("echo did not start")

    def value_lists(self):
        with open(self.stats) as f:
            return json.load(f)["total_lines"]

    def close(self):
        stop(self.proc)


class Cadent:
    name = "cadent"

    def __init__(self, tmp, port, sinks, shards):
        self.admin = "127.0.0.1:%d" % free_tcp_port()
        m = ["\"udp://127.0.0.1:%d\"" % p for p in sinks.ports]
        conf = os.path.join(tmp, "cadent.toml")
        with open(conf, "w") as f:
            f.write(f"""
[server]
admin_listen = "{self.admin}"
shards = {shards}
[telemetry]
prefix = ""
[health]
# No probe datagrams inside the measured window (they would count as generator packets).
probe_interval_ms = 600000
[[listen]]
name = "collectd"
url = "udp://127.0.0.1:{port}"
format = "collectd"
types_db = ["{TYPES_DB}"]
[[cluster]]
name = "shortterm"
kind = "coco"
format = "collectd"
members = [{m[0]}, {m[1]}]
[[cluster]]
name = "midterm"
kind = "coco"
format = "collectd"
members = [{m[2]}, {m[3]}]
[[route]]
match = {{ regex = "/cadent-bench-matches-nothing/" }}
action = "drop"
[[route]]
match = {{ all = true }}
send_to = ["shortterm", "midterm"]
""")
        self.log = open(os.path.join(tmp, "cadent.log"), "wb")
        self.proc = subprocess.Popen([CADENT, "serve", "--config", conf],
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        if not wait_for(lambda: get_json("http://%s/ops/status" % self.admin), 20):
            sys.exit("cadent did not start")

    def counters(self):
        s = get_json("http://%s/stats" % self.admin)
        c = s["listeners"]["collectd"]["collectd"]
        writes = sum(d["writes"] for d in s["destinations"].values())
        sent_vl = sum(d["sent_lines"] for d in s["destinations"].values())
        return {"packets": c["packets"], "value_lists": c["value_lists"],
                "relay_datagrams": writes, "relay_sent_vl": sent_vl}

    def close(self):
        stop(self.proc)
        self.log.close()


class Coco:
    name = "coco"

    def __init__(self, tmp, port, sinks, binary, types_db):
        self.api = "127.0.0.1:%d" % free_tcp_port()
        t = ["\"127.0.0.1:%d\"" % p for p in sinks.ports]
        conf = os.path.join(tmp, "coco.conf")
        with open(conf, "w") as f:
            f.write(f"""
[listen]
bind = "127.0.0.1:{port}"
typesdb = "{types_db}"
[filter]
blacklist = "/cadent-bench-matches-nothing/"
[tiers]
[tiers.shortterm]
targets = [{t[0]}, {t[1]}]
[tiers.midterm]
targets = [{t[2]}, {t[3]}]
[api]
bind = "{self.api}"
[measure]
interval = "10s"
""")
        self.log = open(os.path.join(tmp, "coco.log"), "wb")
        self.proc = subprocess.Popen([binary, conf], stdout=self.log, stderr=self.log)
        if not wait_for(lambda: get_json("http://%s/debug/vars" % self.api), 20):
            sys.exit("coco did not start")

    def counters(self):
        v = get_json("http://%s/debug/vars" % self.api)["coco"]
        listen = v.get("listen", {})
        send = v.get("send", {})
        return {"packets": listen.get("raw", 0), "value_lists": listen.get("decoded", 0),
                "relay_datagrams": send.get("total", 0), "relay_sent_vl": send.get("total", 0)}

    def close(self):
        stop(self.proc)
        self.log.close()


def run(relay_kind, load, secs, args, coco_types):
    with tempfile.TemporaryDirectory(prefix="cadent-tiers-bench-") as tmp:
        sinks = Sinks(tmp)
        port = free_port()
        if relay_kind == "coco":
            relay = Coco(tmp, port, sinks, args.coco, coco_types)
        else:
            relay = Cadent(tmp, port, sinks, args.shards)
        try:
            time.sleep(0.5)
            c0, n0, cpu0, sink0 = relay.counters(), udp_snmp(), cpu_s(relay.proc.pid), sinks.value_lists()
            t0 = time.monotonic()
            cmd = [a.replace("PORT", str(port)) for a in load]
            gen = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if load[0] == COLLECTD_TG:
                time.sleep(secs)
                stop(gen)
            else:
                try:
                    gen.wait(timeout=secs + 120)
                except subprocess.TimeoutExpired:
                    stop(gen)
            t_load = time.monotonic() - t0
            # Drain: the members' counts still for 1 s (at most --drain-s).
            last, still_since = -1, time.monotonic()
            deadline = time.monotonic() + args.drain_s
            while time.monotonic() < deadline:
                now = sinks.value_lists()
                if now != last:
                    last, still_since = now, time.monotonic()
                elif time.monotonic() - still_since >= 1.0:
                    break
                time.sleep(0.2)
            cpu1 = cpu_s(relay.proc.pid)
            time.sleep(0.6)  # cadent publishes its counters every 500 ms
            c1, n1, sink1 = relay.counters(), udp_snmp(), sinks.value_lists()
        finally:
            relay.close()
            sinks.close()
    d = {k: c1[k] - c0[k] for k in c1}
    snmp = {k: n1[k] - n0[k] for k in n1}
    gen_packets = snmp["OutDatagrams"] - d["relay_datagrams"]
    vl_per_packet = d["value_lists"] / max(1, d["packets"])
    sent_vl = gen_packets * vl_per_packet
    at_members = sink1 - sink0
    cpu = cpu1 - cpu0
    return {
        "relay": relay_kind,
        "load_s": round(t_load, 2),
        "gen_packets": gen_packets,
        "relay_packets": d["packets"],
        "unread_packets": gen_packets - d["packets"],
        "rcvbuf_errors": snmp["RcvbufErrors"],
        "value_lists_in": d["value_lists"],
        "value_lists_sent_est": round(sent_vl),
        "relay_datagrams_out": d["relay_datagrams"],
        "at_members": at_members,
        "loss_pct": round(100.0 * max(0.0, 1 - at_members / 2 / max(1, sent_vl)), 2),
        "relay_cpu_s": round(cpu, 2),
        "vl_per_cpu_s": round(d["value_lists"] / max(cpu, 1e-9)),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--coco", help="Coco 1.0.1 binary built from its public source")
    ap.add_argument("--coco-types-db", help="types.db for Coco (default: beside the binary's "
                    "source, else %s)" % TYPES_DB)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--duration-s", type=float, default=10)
    ap.add_argument("--burst-s", type=float, default=3,
                    help="seconds of the unthrottled collectd-tg burst (-i 0.01)")
    ap.add_argument("--drain-s", type=float, default=90)
    ap.add_argument("--tg-n", type=int, default=100000)
    ap.add_argument("--tg-interval", type=float, default=1.0)
    ap.add_argument("--blast-rate", type=int, default=200000)
    ap.add_argument("--blast-count", type=int, default=1000000)
    ap.add_argument("--relays", default="cadent,coco")
    args = ap.parse_args()
    loads = [
        ("collectd-tg -n %d -H 1000 -p 20 -i %g, %gs" % (args.tg_n, args.tg_interval, args.duration_s),
         [COLLECTD_TG, "-n", str(args.tg_n), "-H", "1000", "-p", "20",
          "-i", str(args.tg_interval), "-d", "127.0.0.1", "-D", "PORT"], args.duration_s),
        ("collectd-tg -n %d -H 1000 -p 20 -i 0.01 (unthrottled), %gs" % (args.tg_n, args.burst_s),
         [COLLECTD_TG, "-n", str(args.tg_n), "-H", "1000", "-p", "20",
          "-i", "0.01", "-d", "127.0.0.1", "-D", "PORT"], args.burst_s),
        ("blast --format collectd --rate %d --count %d" % (args.blast_rate, args.blast_count),
         [CADENT, "blast", "--format", "collectd", "--to", "udp://127.0.0.1:PORT",
          "--rate", str(args.blast_rate), "--count", str(args.blast_count),
          "--names", "20000", "--hosts", "1000", "--plugins", "20"], args.duration_s),
    ]
    coco_types = args.coco_types_db or TYPES_DB
    relays = [r for r in args.relays.split(",") if r]
    if "coco" in relays and not args.coco:
        sys.exit("--coco PATH is needed (or --relays cadent)")
    print("| load | relay | gen packets | relay read | unread | RcvbufErrors | value lists in "
          "| at members (2 tiers) | loss % | relay CPU s | value lists / CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, cmd, secs in loads:
        for relay in relays:
            r = run(relay, cmd, secs, args, coco_types)
            print("| %s | %s | %s | %s | %s | %s | %s | %s | %.2f | %.2f | %s |" % (
                name, relay, f"{r['gen_packets']:,}", f"{r['relay_packets']:,}",
                f"{r['unread_packets']:,}", f"{r['rcvbuf_errors']:,}",
                f"{r['value_lists_in']:,}", f"{r['at_members']:,}", r["loss_pct"],
                r["relay_cpu_s"], f"{r['vl_per_cpu_s']:,}"))
            print("<!-- raw: %s -->" % json.dumps(r))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
