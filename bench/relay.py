#!/usr/bin/python3
"""Graphite relay benchmark: cadent vs carbon-c-relay 3.7.3, side by side in one run.

Topology (both relays, same ports): `cadent blast` -> TCP 127.0.0.1:24003 -> relay ->
carbon_ch over 4 TCP sinks 127.0.0.1:24101..24104 (instances a..d), all four served by one
`cadent echo` process. Relays alternate run by run; every run starts fresh sinks and a
fresh relay. See bench/README.md for what is measured and how to read it.

Stdlib only. Everything it starts is stopped by PID in a `finally`.
"""

import argparse
import datetime
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RELAY_PORT = 24003
SINK_PORTS = [24101, 24102, 24103, 24104]
ADMIN_PORT = 24080
CLK_TCK = os.sysconf("SC_CLK_TCK")
BLAST_RE = re.compile(
    r"^blast: sent_lines=(\d+) sent_bytes=(\d+) elapsed_s=([\d.]+) rate=(\d+) errors=(\d+)$",
    re.M,
)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def cpu_seconds(pid):
    """utime + stime of a live process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # Fields after "(comm)": state is [0], utime is field 14 overall -> [11], stime [12].
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def vm_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def inbound_conns(port):
    """Established TCP connections whose local port is `port` (server side), IPv4.
    /proc/net/tcp is read in pages and can repeat a row when the table changes under
    the read, so rows are deduplicated by address pair."""
    conns = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[3] == "01" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                conns.add((parts[1], parts[2]))
    return len(conns)


def inbound_owners(port):
    """Which processes hold the client ends of established connections into `port`:
    a list of "pid cmdline" (for the foreign-traffic warning; scans /proc, so slow)."""
    peers, inodes = set(), {}
    with open("/proc/net/tcp") as f:
        next(f)
        rows = [l.split() for l in f]
    for r in rows:
        if r[3] == "01" and int(r[1].rsplit(":", 1)[1], 16) == port:
            peers.add(int(r[2].rsplit(":", 1)[1], 16))
    for r in rows:
        if r[3] == "01" and int(r[2].rsplit(":", 1)[1], 16) == port \
                and int(r[1].rsplit(":", 1)[1], 16) in peers:
            inodes[r[9]] = None
    owners = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    with open(f"/proc/{pid}/cmdline", "rb") as c:
                        cmd = c.read().replace(b"\0", b" ").decode(errors="replace")[:200]
                    owners.add(f"{pid} {cmd}")
        except OSError:
            continue
    return sorted(owners)


def port_accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def port_free(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_until(pred, timeout_s, step_s=0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step_s)
    return pred()


class Procs:
    """Every process this script starts, stopped by PID (TERM, bounded wait, KILL)."""

    def __init__(self):
        self.procs = []

    def start(self, name, argv, log_path, stdout=None):
        logf = open(log_path, "wb")
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else logf,
            stderr=logf,
            cwd=ROOT,
        )
        p.bench_name = name
        p.bench_log = logf
        self.procs.append(p)
        return p

    def stop(self, p, timeout_s=10.0):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log(f"bench: {p.bench_name} (pid {p.pid}) ignored SIGTERM; killing")
                p.kill()
                p.wait(timeout=timeout_s)
        p.bench_log.close()
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in list(reversed(self.procs)):
            try:
                self.stop(p, timeout_s=5.0)
            except Exception as e:  # keep stopping the others
                log(f"bench: stopping {p.bench_name} (pid {p.pid}): {e}")


def read_stats(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def wait_sinks_settled(stats_path, expected, quiet_s, timeout_s):
    """Polls the echo stats file until it holds `expected` lines or stops growing for
    `quiet_s`; bounded by `timeout_s`. Returns the last total seen."""
    deadline = time.monotonic() + timeout_s
    last_total, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        st = read_stats(stats_path)
        total = st["total_lines"] if st else 0
        now = time.monotonic()
        if total != last_total:
            last_total, last_change = total, now
        if total >= expected:
            return total
        if now - last_change >= quiet_s:
            return total
        time.sleep(0.1)
    log(f"bench: sinks still growing after {timeout_s}s; reading totals anyway")
    return last_total


def write_configs(args, out_dir):
    """bench/crelay.conf and bench/cadent-relay.toml with the ring kind of --hash."""
    for name in ("crelay.conf", "cadent-relay.toml"):
        with open(os.path.join(HERE, name)) as f:
            text = f.read()
        if name == "crelay.conf":
            text = text.replace("    carbon_ch ", f"    {args.hash} ")
        else:
            text = text.replace('kind = "carbon_ch"', f'kind = "{args.hash}"')
        assert args.hash in text
        with open(os.path.join(out_dir, name), "w") as f:
            f.write(text)
    args.conf_dir = out_dir


def relay_argv(kind, args):
    if kind == "cadent":
        return [args.cadent, "serve", "--config", os.path.join(args.conf_dir, "cadent-relay.toml")]
    return [
        args.crelay, "-f", os.path.join(args.conf_dir, "crelay.conf"),
        "-s", "-w", "2", "-b", "2500", "-q", "250000",
    ]


def one_run(kind, run_no, args, out_dir, procs):
    tag = f"{run_no:02d}-{kind}"
    # Other work on the host skews CPU numbers; kept with each run to judge it.
    load_before = round(os.getloadavg()[0], 2)
    ports = [RELAY_PORT] + SINK_PORTS + ([ADMIN_PORT] if kind == "cadent" else [])
    if not wait_until(lambda: all(port_free(p) for p in ports), 10.0, 0.2):
        busy = [p for p in ports if not port_free(p)]
        raise RuntimeError(f"ports still busy: {busy}")

    stats_path = os.path.join(out_dir, f"{tag}-sinks.json")
    sinks_out = os.path.join(out_dir, f"{tag}-sinks.out")
    sinks_stdout = open(sinks_out, "wb")
    listen = ",".join(f"tcp://127.0.0.1:{p}" for p in SINK_PORTS)
    sinks = procs.start(
        "echo",
        [args.cadent, "echo", "--listen", listen, "--stats-file", stats_path,
         "--interval-ms", "100", "--quiet"],
        os.path.join(out_dir, f"{tag}-sinks.log"),
        stdout=sinks_stdout,
    )
    try:
        if not wait_until(lambda: all(port_accepts(p) for p in SINK_PORTS), 10.0):
            raise RuntimeError("sinks did not start listening (see *-sinks.log)")

        relay = procs.start(kind, relay_argv(kind, args), os.path.join(out_dir, f"{tag}-relay.log"))
        if not wait_until(lambda: relay.poll() is not None or port_accepts(RELAY_PORT), 15.0):
            raise RuntimeError(f"{kind} did not accept on {RELAY_PORT} within 15 s")
        if relay.poll() is not None:
            raise RuntimeError(f"{kind} exited with {relay.returncode} (see {tag}-relay.log)")
        time.sleep(args.warmup_s)  # let the relay connect to its sinks

        cpu0 = cpu_seconds(relay.pid)
        sink_cpu0 = cpu_seconds(sinks.pid)
        t0 = time.monotonic()
        blast_argv = [
            args.cadent, "blast", "--to", f"tcp://127.0.0.1:{RELAY_PORT}", "--format", "graphite",
            "--count", str(args.lines), "--connections", str(args.connections),
            "--names", str(args.names), "--rate", str(args.rate), "--seed", str(args.seed + run_no),
            "--stall-timeout-s", "30",
        ]
        blast = subprocess.Popen(blast_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        procs.procs.append(blast)
        blast.bench_name, blast.bench_log = "blast", open(os.devnull, "wb")
        # Sampled while blast runs: more connections into the relay than blast opened
        # means someone else is sending to the bench ports and the run is void.
        conns_max, foreign = 0, []
        expect_s = args.lines / args.rate if args.rate else 0
        blast_deadline = time.monotonic() + 2 * expect_s + 120
        try:
            # wait4 gives the generator's own CPU time; bounded by blast_deadline (blast has
            # its own stall timeout too).
            while True:
                pid, status, ru = os.wait4(blast.pid, os.WNOHANG)
                if pid:
                    break
                conns = inbound_conns(RELAY_PORT)
                if conns > args.connections and not foreign:
                    foreign = inbound_owners(RELAY_PORT)
                conns_max = max(conns_max, conns)
                if time.monotonic() > blast_deadline:
                    blast.kill()
                    _, status, ru = os.wait4(blast.pid, 0)
                    break
                time.sleep(0.05)
            blast.returncode = os.waitstatus_to_exitcode(status)
            b_out = blast.stdout.read().decode()
            b_err = blast.stderr.read().decode()
        finally:
            procs.procs.remove(blast)
            blast.bench_log.close()
        t_sent = time.monotonic()
        m = BLAST_RE.search(b_out)
        if not m:
            raise RuntimeError(f"blast failed (exit {blast.returncode}): {b_out} {b_err}")
        sent, sent_bytes, blast_s, blast_rate, blast_errors = (
            int(m[1]), int(m[2]), float(m[3]), int(m[4]), int(m[5]))

        seen = wait_sinks_settled(stats_path, sent, args.quiet_s, args.settle_timeout_s)
        t_settled = time.monotonic()
        cpu1 = cpu_seconds(relay.pid)
        sink_cpu1 = cpu_seconds(sinks.pid)
        rss_kib = vm_hwm_kib(relay.pid)
        procs.stop(relay)
        relay_rc = relay.returncode
        procs.stop(sinks)
        sinks_stdout.close()
        with open(sinks_out) as f:
            final = f.read()
        m2 = re.search(r"^echo: total_lines=(\d+)", final, re.M)
        delivered = int(m2[1]) if m2 else seen
        st = read_stats(stats_path) or {"addresses": {}}
        per_sink = [st["addresses"].get(f"tcp://127.0.0.1:{p}", {}).get("lines", 0) for p in SINK_PORTS]
    finally:
        procs.stop_all()
        if not sinks_stdout.closed:
            sinks_stdout.close()

    relay_cpu = cpu1 - cpu0
    return {
        "relay": kind,
        "run": run_no,
        "loadavg_1m_before": load_before,
        "sent": sent,
        "sent_bytes": sent_bytes,
        "delivered": delivered,
        "delivered_before_stop": seen,
        "loss": sent - delivered,
        "per_sink": per_sink,
        "blast_errors": blast_errors,
        "relay_inbound_conns_max": conns_max,
        "relay_inbound_owners": foreign,
        "foreign_traffic": conns_max > args.connections or delivered > sent,
        "blast_elapsed_s": blast_s,
        "blast_rate": blast_rate,
        "wall_s": round(t_settled - t0, 3),
        "send_to_settle_s": round(t_settled - t_sent, 3),
        "relay_cpu_s": round(relay_cpu, 3),
        "relay_cpu_s_per_M": round(relay_cpu / (sent / 1e6), 4) if sent else None,
        "relay_lines_per_cpu_s": round(delivered / relay_cpu) if relay_cpu > 0 else None,
        "relay_peak_rss_MiB": round(rss_kib / 1024, 1),
        "relay_exit": relay_rc,
        "blast_cpu_s_per_M": round((ru.ru_utime + ru.ru_stime) / (sent / 1e6), 4) if sent else None,
        "sink_cpu_s_per_M": round((sink_cpu1 - sink_cpu0) / (sent / 1e6), 4) if sent else None,
    }


def median(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


COLUMNS = [
    ("sent", "sent", "{:.0f}"),
    ("delivered", "delivered", "{:.0f}"),
    ("loss", "loss", "{:.0f}"),
    ("relay_cpu_s_per_M", "cpu_s/M", "{:.3f}"),
    ("relay_lines_per_cpu_s", "lines/cpu_s", "{:.0f}"),
    ("relay_peak_rss_MiB", "rss_MiB", "{:.1f}"),
    ("wall_s", "wall_s", "{:.2f}"),
    ("blast_rate", "offered/s", "{:.0f}"),
    ("blast_cpu_s_per_M", "blast_cpu/M", "{:.3f}"),
    ("sink_cpu_s_per_M", "sink_cpu/M", "{:.3f}"),
]


def fmt(v, spec):
    return "-" if v is None else spec.format(v)


def print_table(rows, kinds, out):
    head = ["relay", "runs"] + [c[1] for c in COLUMNS]
    lines = [head]
    meds = {}
    for kind in kinds:
        rs = [r for r in rows if r["relay"] == kind]
        if not rs:
            continue
        meds[kind] = {k: median(rs, k) for k, _, _ in COLUMNS}
        lines.append([kind, str(len(rs))] + [fmt(meds[kind][k], s) for k, _, s in COLUMNS])
    widths = [max(len(l[i]) for l in lines) for i in range(len(head))]
    print("medians per relay:", file=out)
    for l in lines:
        print("  " + "  ".join(c.rjust(w) for c, w in zip(l, widths)), file=out)
    a, b = meds.get("cadent"), meds.get("crelay")
    if a and b and a["relay_cpu_s_per_M"] and b["relay_cpu_s_per_M"]:
        ratio = a["relay_cpu_s_per_M"] / b["relay_cpu_s_per_M"]
        print(f"ratio cadent/c-relay CPU per M lines: {ratio:.3f} "
              f"(c-relay uses {1 / ratio:.1f}x the CPU of cadent)", file=out)
    return meds


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=2_000_000, help="lines per run (default 2000000)")
    ap.add_argument("--connections", type=int, default=4, help="generator TCP connections (4)")
    ap.add_argument("--rate", type=int, default=0, help="offered lines/s in total, 0 = as fast as possible (0)")
    ap.add_argument("--repeats", type=int, default=5, help="runs per relay, alternating (5)")
    ap.add_argument("--names", type=int, default=100_000, help="distinct metric names (100000)")
    ap.add_argument("--seed", type=int, default=1, help="generator seed; run k uses seed+k (1)")
    ap.add_argument("--cadent", default=os.path.join(ROOT, "target/release/cadent"), help="cadent binary (target/release/cadent)")
    ap.add_argument("--crelay", default="/usr/bin/carbon-c-relay", help="carbon-c-relay binary")
    ap.add_argument("--relays", default="cadent,crelay", help="which relays to run (cadent,crelay)")
    ap.add_argument("--hash", default="carbon_ch", choices=["carbon_ch", "fnv1a_ch", "jump_fnv1a_ch"],
                    help="ring kind of the sinks cluster, the same in both relays (carbon_ch)")
    ap.add_argument("--warmup-s", type=float, default=0.5, help="pause after the relay accepts (0.5)")
    ap.add_argument("--quiet-s", type=float, default=3.0, help="sinks settled after this long without growth (3)")
    ap.add_argument("--settle-timeout-s", type=float, default=120.0, help="bound on waiting for sinks (120)")
    ap.add_argument("--out", default=os.path.join(HERE, "out"), help="logs and results (bench/out)")
    args = ap.parse_args()

    kinds = [k.strip() for k in args.relays.split(",") if k.strip()]
    for k in kinds:
        if k not in ("cadent", "crelay"):
            ap.error(f"unknown relay {k!r}")
    if not os.access(args.cadent, os.X_OK):
        ap.error(f"{args.cadent}: not executable (cargo build --release)")
    if args.repeats < 1 or args.lines < 1 or args.connections < 1:
        ap.error("--repeats, --lines and --connections must be at least 1")

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = os.path.join(args.out, f"relay-{args.hash}-{stamp}")
    os.makedirs(out_dir, exist_ok=True)
    write_configs(args, out_dir)
    # SIGTERM ends the script through the `finally` below, like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    env = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host_cpus": os.cpu_count(),
        "kernel": platform.release(),
        "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
        "crelay_version": subprocess.run([args.crelay, "-v"], capture_output=True, text=True).stdout.splitlines()[0:1],
        "args": vars(args),
    }
    log(f"bench: {env['date']} {env['host_cpus']} cpus, {env['cpu_model']}, out {out_dir}")
    procs = Procs()
    rows = []
    try:
        for i in range(args.repeats):
            order = kinds if i % 2 == 0 else list(reversed(kinds))
            for kind in order:
                r = one_run(kind, i, args, out_dir, procs)
                rows.append(r)
                if r["foreign_traffic"]:
                    log(f"bench: WARNING run {i} {kind}: up to {r['relay_inbound_conns_max']} "
                        f"connections into :{RELAY_PORT} (blast opened {args.connections}), "
                        f"delivered {r['delivered']} of {r['sent']} sent: something else "
                        "used the bench ports during this run; treat it as void; clients: "
                        f"{r['relay_inbound_owners']}")
                log(f"bench: run {i} {kind:6}: sent={r['sent']} delivered={r['delivered']} "
                    f"loss={r['loss']} cpu={r['relay_cpu_s']}s ({r['relay_cpu_s_per_M']} s/M) "
                    f"rss={r['relay_peak_rss_MiB']}MiB wall={r['wall_s']}s "
                    f"blast={r['blast_rate']}/s blast_cpu/M={r['blast_cpu_s_per_M']} "
                    f"sinks={r['per_sink']} load={r['loadavg_1m_before']}")
    finally:
        procs.stop_all()
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump({"env": env, "runs": rows}, f, indent=1)
    meds = print_table(rows, kinds, sys.stdout)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"env": env, "runs": rows, "medians": meds}, f, indent=1)
    print(f"runs and logs: {out_dir}")


if __name__ == "__main__":
    main()
