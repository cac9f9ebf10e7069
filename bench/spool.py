#!/usr/bin/python3
"""Fan-out with a dead sink: cadent (disk spool) vs carbon-c-relay 3.7.3, side by side.

The seeds' scenario: 10M lines/minute (167k lines/s) duplicated to 3 sinks (a `forward`
cluster) for at least 2 minutes; one sink is stopped for 60 s and started again on the
same port. Each relay does the run twice: with the sink stopped ("kill") and without
("nokill"), so the spool's cost is the difference. See bench/README.md ("spool.py").

Topology: `cadent blast --sequence` (4 connections, every line numbered) -> TCP
127.0.0.1:24203 -> relay -> 127.0.0.1:24211, :24212, :24213, each its own
`cadent echo --sequence-dir --graceful-ms` process (so one can be stopped). A stopped sink
is stopped gracefully (SIGTERM: it stops accepting, half-closes its connections and
reads them until the relay closes them, at most --graceful-ms), so what its kernel
acknowledged is counted; see tuning.md for what a SIGKILLed sink loses with any relay.
The outage is timed from when the stopped sink has exited.

Stdlib only. Everything it starts is stopped by PID in a `finally`.
"""

import argparse
import datetime
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from relay import (  # noqa: E402  (shared helpers of the relay bench)
    BLAST_RE, Procs, cpu_seconds, log, port_accepts, port_free, read_stats, vm_hwm_kib,
    wait_until,
)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RELAY_PORT = 24203
SINK_PORTS = [24211, 24212, 24213]
ADMIN_PORT = 24280
KILLED = 1  # index of the sink that is stopped


def cadent_config(out_dir, args):
    spool = os.path.join(out_dir, "spool")
    members = ", ".join(f'"tcp://127.0.0.1:{p}"' for p in SINK_PORTS)
    return f"""# cadent side of bench/spool.py
[server]
shards = 0
admin_listen = "127.0.0.1:{ADMIN_PORT}"
stats_interval_ms = 100
[output]
spool_dir = "{spool}"
spool_bytes_max = {args.spool_bytes_max}
spool_fsync_interval_ms = 200
[[listen]]
name = "graphite"
url = "tcp://127.0.0.1:{RELAY_PORT}"
format = "graphite"
[[cluster]]
name = "fan"
kind = "forward"
members = [{members}]
[[route]]
match = {{ prefix = "seq." }}
send_to = ["fan"]
"""


def crelay_config():
    members = "\n        ".join(f"127.0.0.1:{p}" for p in SINK_PORTS)
    return f"""# carbon-c-relay side of bench/spool.py
listen
    type linemode
        127.0.0.1:{RELAY_PORT} proto tcp
    ;
cluster fan
    forward
        {members}
    ;
match ^seq\\. send to fan stop;
"""


def cadent_stats():
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/stats", timeout=2) as r:
            return json.load(r)
    except (OSError, ValueError):
        return None


def du(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                pass
    return total


def proc_write_bytes(pid):
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def bits(path):
    """A sink incarnation's bitmap as an int (bit N: sequence N arrived)."""
    try:
        with open(path, "rb") as f:
            return int.from_bytes(f.read(), "little")
    except OSError:
        return 0


class Sink:
    """One sink port; each start is an incarnation with its own stats and bitmap."""

    def __init__(self, k, port, tag, out_dir, args, procs):
        self.k, self.port, self.tag, self.out_dir = k, port, tag, out_dir
        self.args, self.procs = args, procs
        self.incarnations = []  # (stats path, bitmap dir)
        self.proc = None

    def start(self):
        n = len(self.incarnations)
        stats = os.path.join(self.out_dir, f"{self.tag}-sink{self.k}-{n}.json")
        seq_dir = os.path.join(self.out_dir, f"{self.tag}-sink{self.k}-{n}-seq")
        self.incarnations.append((stats, seq_dir))
        self.proc = self.procs.start(
            f"sink{self.k}",
            [self.args.cadent, "echo", "--listen", f"tcp://127.0.0.1:{self.port}",
             "--stats-file", stats, "--interval-ms", "100", "--quiet",
             "--sequence-dir", seq_dir, "--graceful-ms", str(self.args.graceful_ms)],
            os.path.join(self.out_dir, f"{self.tag}-sink{self.k}-{n}.log"),
        )
        if not wait_until(lambda: port_accepts(self.port), 10.0):
            raise RuntimeError(f"sink {self.port} did not start")

    def stop(self):
        if self.proc is not None:
            self.procs.stop(self.proc, timeout_s=20.0)
            self.proc = None

    def lines(self):
        """Lines received over every incarnation (the live one's stats lag <= 100 ms)."""
        total = 0
        for stats, _ in self.incarnations:
            st = read_stats(stats)
            if st:
                total += st["total_lines"]
        return total

    def result(self, sent):
        """After the sink stopped: lost and duplicated, merging incarnations."""
        seen, received = 0, 0
        for stats, seq_dir in self.incarnations:
            st = read_stats(stats) or {"total_lines": 0}
            received += st["total_lines"]
            seen |= bits(os.path.join(seq_dir, f"{self.port}.bits"))
        unique = seen.bit_count()
        return {"received": received, "unique": unique, "lost": sent - unique,
                "duplicated": received - unique}


def one_run(relay, mode, args, out_dir, procs):
    tag = f"{relay}-{mode}"
    log(f"bench: run {tag}")
    ports = [RELAY_PORT] + SINK_PORTS + [ADMIN_PORT]
    if not wait_until(lambda: all(port_free(p) for p in ports), 10.0, 0.2):
        raise RuntimeError(f"ports busy: {[p for p in ports if not port_free(p)]}")
    run_dir = os.path.join(out_dir, tag)
    os.makedirs(run_dir)
    sinks = [Sink(k, p, tag, run_dir, args, procs) for k, p in enumerate(SINK_PORTS)]
    try:
        for s in sinks:
            s.start()
        if relay == "cadent":
            conf = os.path.join(run_dir, "cadent.toml")
            with open(conf, "w") as f:
                f.write(cadent_config(run_dir, args))
            argv = [args.cadent, "serve", "--config", conf]
        else:
            conf = os.path.join(run_dir, "crelay.conf")
            with open(conf, "w") as f:
                f.write(crelay_config())
            argv = [args.crelay, "-f", conf, "-s", "-w", "2", "-b", "2500", "-q", "250000"]
        rp = procs.start(relay, argv, os.path.join(run_dir, "relay.log"))
        if not wait_until(lambda: rp.poll() is not None or port_accepts(RELAY_PORT), 15.0):
            raise RuntimeError(f"{relay} did not accept")
        if rp.poll() is not None:
            raise RuntimeError(f"{relay} exited with {rp.returncode}")
        time.sleep(0.5)

        count = args.rate * args.duration_s
        cpu0, wb0 = cpu_seconds(rp.pid), proc_write_bytes(rp.pid)
        blast = subprocess.Popen(
            [args.cadent, "blast", "--to", f"tcp://127.0.0.1:{RELAY_PORT}", "--sequence",
             "--count", str(count), "--rate", str(args.rate), "--connections", "4",
             "--names", "100000", "--stall-timeout-s", "60", "--progress"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        procs.procs.append(blast)
        blast.bench_name, blast.bench_log = "blast", open(os.devnull, "wb")
        t0 = time.monotonic()
        # What blast had sent, and when (its progress line, every 500 ms): a live sink's
        # lag is how long ago blast had sent what the sink has now.
        progress = []
        reader = threading.Thread(target=read_progress, args=(blast.stderr, t0, progress), daemon=True)
        reader.start()
        samples = []
        killed_at = returned_at = drained_at = None
        lag_max = [0.0] * len(sinks)
        peak_spool = peak_du = 0
        spool_dir = os.path.join(run_dir, "spool")
        # Bounded: blast ends by count (at the offered rate) or its stall timeout; the
        # loop by the deadline below.
        deadline = t0 + args.duration_s * 2 + 120
        reaped = None
        while time.monotonic() < deadline:
            now = time.monotonic() - t0
            pid, status, ru = os.wait4(blast.pid, os.WNOHANG)
            if pid:
                reaped = (status, ru)
            running = reaped is None
            if mode == "kill" and killed_at is None and now >= args.kill_at_s:
                # The outage runs from when the sink has gone (it reads for up to
                # --graceful-ms after it stops accepting).
                sinks[KILLED].stop()
                killed_at = time.monotonic() - t0
                log(f"bench: {tag}: sink {SINK_PORTS[KILLED]} stopped at {now:.1f}s")
            if killed_at is not None and returned_at is None and now >= killed_at + args.outage_s:
                sinks[KILLED].start()
                returned_at = time.monotonic() - t0
                log(f"bench: {tag}: sink {SINK_PORTS[KILLED]} back at {returned_at:.1f}s")
            row = {"t": round(now, 2), "lines": [s.lines() for s in sinks]}
            if running and now > 1.0:
                for k, s in enumerate(sinks):
                    if k == KILLED and mode == "kill":
                        continue
                    at = sent_at(progress, row["lines"][k], args.rate)
                    if at is not None:
                        lag_max[k] = max(lag_max[k], now - at)
            if relay == "cadent":
                st = cadent_stats()
                d = (st or {}).get("destinations", {}).get(f"tcp://127.0.0.1:{SINK_PORTS[KILLED]}")
                if d:
                    row["spool_bytes"] = d["spool_bytes"]
                    row["spool_lines"] = d["spool_lines"]
                    row["spooling"] = d["spooling"]
                    peak_spool = max(peak_spool, d["spool_bytes"])
                    if (returned_at is not None and drained_at is None
                            and d["spool_lines"] == 0 and d["spooling"] == 0):
                        drained_at = time.monotonic() - t0
                        log(f"bench: {tag}: spool drained at {drained_at:.1f}s")
                peak_du = max(peak_du, du(spool_dir))
            samples.append(row)
            if not running:
                break
            time.sleep(0.2)
        if reaped is None:
            blast.kill()
            _, status, ru = os.wait4(blast.pid, 0)
        else:
            status, ru = reaped
        blast.returncode = os.waitstatus_to_exitcode(status)
        procs.procs.remove(blast)
        blast.bench_log.close()
        out = blast.stdout.read().decode()
        m = BLAST_RE.search(out)
        if not m:
            raise RuntimeError(f"blast failed: {out}")
        sent, blast_s = int(m[1]), float(m[3])
        t_sent = time.monotonic() - t0
        # Settle: every sink has everything (or stops growing for quiet_s), and for cadent
        # the spool is drained.
        last, last_change = None, time.monotonic()
        settle_deadline = time.monotonic() + args.settle_timeout_s
        while time.monotonic() < settle_deadline:
            lines = [s.lines() for s in sinks]
            now = time.monotonic() - t0
            if relay == "cadent" and returned_at is not None and drained_at is None:
                st = cadent_stats()
                d = (st or {}).get("destinations", {}).get(f"tcp://127.0.0.1:{SINK_PORTS[KILLED]}")
                if d:
                    peak_spool = max(peak_spool, d["spool_bytes"])
                    if d["spool_lines"] == 0 and d["spooling"] == 0:
                        drained_at = now
                        log(f"bench: {tag}: spool drained at {drained_at:.1f}s")
                peak_du = max(peak_du, du(spool_dir))
            if lines != last:
                last, last_change = lines, time.monotonic()
            if all(n >= sent for n in lines) and (relay != "cadent" or returned_at is None or drained_at):
                break
            if time.monotonic() - last_change >= args.quiet_s:
                break
            time.sleep(0.2)
        t_settled = time.monotonic() - t0
        cpu = cpu_seconds(rp.pid) - cpu0
        wb1 = proc_write_bytes(rp.pid)
        rss = vm_hwm_kib(rp.pid)
        st = cadent_stats() if relay == "cadent" else None
        procs.stop(rp)
        for s in sinks:
            s.stop()
    finally:
        procs.stop_all()

    per_sink = []
    for k, s in enumerate(sinks):
        r = s.result(sent)
        r["port"] = s.port
        r["killed"] = mode == "kill" and k == KILLED
        r["lag_s_max"] = None if r["killed"] else round(lag_max[k], 3)
        if st:
            d = st["destinations"].get(f"tcp://127.0.0.1:{s.port}", {})
            r["resent_lines"] = d.get("resent_lines")
            r["spooled_lines"] = d.get("spooled_lines")
            r["replayed_lines"] = d.get("replayed_lines")
            r["dropped"] = sum(d.get(f, 0) for f in (
                "dropped_lines_queue_full", "dropped_lines_spool_full",
                "dropped_lines_spool_error", "dropped_lines_shutdown"))
        per_sink.append(r)
    res = {
        "relay": relay, "mode": mode, "sent": sent, "offered_rate": args.rate,
        "blast_elapsed_s": blast_s, "send_end_s": round(t_sent, 2),
        "settled_s": round(t_settled, 2),
        "relay_cpu_s": round(cpu, 2),
        "relay_cpu_s_per_M": round(cpu / (sent / 1e6), 4),
        "relay_peak_rss_MiB": round(rss / 1024, 1),
        "blast_cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
        "per_sink": per_sink,
        "killed_at_s": killed_at, "returned_at_s": returned_at,
    }
    if relay == "cadent" and mode == "kill" and st:
        d = st["destinations"].get(f"tcp://127.0.0.1:{SINK_PORTS[KILLED]}", {})
        spooled_bytes = d.get("spooled_bytes") or 0
        res["spool"] = {
            "peak_spool_bytes": peak_spool,
            "peak_spool_dir_bytes": peak_du,
            "cap_bytes": args.spool_bytes_max,
            "drained_at_s": drained_at,
            "drain_s": round(drained_at - returned_at, 2) if drained_at and returned_at else None,
            "spooled_lines": d.get("spooled_lines"),
            "replayed_lines": d.get("replayed_lines"),
            "spooled_bytes": spooled_bytes,
            "spool_bytes_written": d.get("spool_bytes_written"),
            "written_per_spooled_byte": round(d["spool_bytes_written"] / spooled_bytes, 4) if spooled_bytes else None,
            "process_write_bytes": (wb1 - wb0) if wb0 is not None and wb1 is not None else None,
            "process_write_per_spooled_byte": round((wb1 - wb0) / spooled_bytes, 4)
            if spooled_bytes and wb0 is not None and wb1 is not None else None,
        }
        sp = res["spool"]
        if sp["drain_s"]:
            # Lines waiting at the return, plus what arrived during the drain, went out in
            # drain_s: the replay rate, against the ingest rate.
            waiting = next((r.get("spool_lines") for r in samples
                            if returned_at is not None and r["t"] >= returned_at and "spool_lines" in r), None)
            sp["waiting_at_return_lines"] = waiting
            if waiting:
                rate = (waiting + args.rate * sp["drain_s"]) / sp["drain_s"]
                sp["drain_lines_per_s"] = round(rate)
                sp["drain_x_ingest"] = round(rate / args.rate, 2)
    with open(os.path.join(run_dir, "samples.json"), "w") as f:
        json.dump(samples, f)
    return res


PROGRESS_RE = re.compile(rb"blast: (\d+) lines")


def read_progress(stream, t0, progress):
    """Appends (seconds since t0, lines sent) for each blast progress line."""
    buf = b""
    while True:
        chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)
        if not chunk:
            return
        buf += chunk
        *parts, buf = buf.split(b"\r")
        for p in parts:
            m = PROGRESS_RE.search(p)
            if m:
                progress.append((time.monotonic() - t0, int(m[1])))


def sent_at(progress, lines, rate):
    """When blast had sent `lines` lines: linear between its progress reports, and past the
    last one extrapolated at the offered rate. The sink's stats are up to 100 ms older
    than the moment they are compared with, so a lag is over-stated, never under."""
    snap = list(progress)
    if not snap or lines < snap[0][1]:
        return None  # before blast's first report: nothing to compare with
    for (t1, n1), (t2, n2) in zip(snap, snap[1:]):
        if n2 >= lines:
            if n2 == n1:
                return t2
            return t1 + (t2 - t1) * (lines - n1) / (n2 - n1)
    t, n = snap[-1]
    return t + (lines - n) / rate


def print_summary(results, out):
    print("per run:", file=out)
    for r in results:
        print(f"  {r['relay']:6} {r['mode']:6} sent={r['sent']} cpu_s/M={r['relay_cpu_s_per_M']:.3f} "
              f"rss_MiB={r['relay_peak_rss_MiB']} settled_s={r['settled_s']}", file=out)
        for s in r["per_sink"]:
            extra = ""
            if "resent_lines" in s:
                extra = f" resent={s['resent_lines']} spooled={s['spooled_lines']} dropped={s['dropped']}"
            lag = "-" if s["lag_s_max"] is None else f"{s['lag_s_max']:.2f}"
            print(f"    sink {s['port']}{' (stopped)' if s['killed'] else ''}: "
                  f"lost={s['lost']} duplicated={s['duplicated']} lag_max_s={lag}{extra}", file=out)
        if "spool" in r:
            print(f"    spool: {json.dumps(r['spool'])}", file=out)
    by = {(r["relay"], r["mode"]): r for r in results}
    for relay in ("cadent", "crelay"):
        k, n = by.get((relay, "kill")), by.get((relay, "nokill"))
        if k and n:
            print(f"{relay}: CPU per M lines {n['relay_cpu_s_per_M']:.3f} s with no sink stopped, "
                  f"{k['relay_cpu_s_per_M']:.3f} s with one stopped "
                  f"(+{k['relay_cpu_s_per_M'] - n['relay_cpu_s_per_M']:.3f})", file=out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=167_000, help="offered lines/s (167000)")
    ap.add_argument("--duration-s", type=int, default=150, help="seconds of sending (150)")
    ap.add_argument("--kill-at-s", type=float, default=30.0, help="when the sink stops (30)")
    ap.add_argument("--outage-s", type=float, default=60.0, help="how long it stays stopped (60)")
    ap.add_argument("--spool-bytes-max", type=int, default=1 << 30, help="cadent's spool cap (1 GiB)")
    ap.add_argument("--graceful-ms", type=int, default=1000,
                    help="a stopped sink reads its connections for up to this long (1000)")
    ap.add_argument("--relays", default="cadent,crelay", help="cadent,crelay")
    ap.add_argument("--modes", default="kill,nokill", help="kill,nokill")
    ap.add_argument("--cadent", default=os.path.join(ROOT, "target/release/cadent"))
    ap.add_argument("--crelay", default="/usr/bin/carbon-c-relay")
    ap.add_argument("--quiet-s", type=float, default=5.0, help="settled after this long without growth (5)")
    ap.add_argument("--settle-timeout-s", type=float, default=300.0, help="bound on settling (300)")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    args = ap.parse_args()
    if not os.access(args.cadent, os.X_OK):
        ap.error(f"{args.cadent}: not executable (cargo build --release)")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = os.path.join(args.out, f"spool-{stamp}")
    os.makedirs(out_dir)
    procs = Procs()
    results = []
    try:
        for relay in [r for r in args.relays.split(",") if r]:
            for mode in [m for m in args.modes.split(",") if m]:
                results.append(one_run(relay, mode, args, out_dir, procs))
    finally:
        procs.stop_all()
    meta = {
        "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
        "args": vars(args), "results": results,
    }
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print_summary(results, sys.stdout)
    print(f"results: {out_dir}/results.json", file=sys.stderr)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    main()
