#!/usr/bin/env python3
"""collectd and pickle codecs (issue 4): value lists decoded + re-encoded per CPU-second,
and packets per second through `cadent collectd dump` under collectd-tg and blast load.

    python3 bench/collectd.py            # --repeats 5 --load-repeats 3 --duration-s 5

Part 1 runs examples/collectd_bench.rs (release) --repeats times and reports medians.
Part 2 starts `cadent collectd dump --listen udp://127.0.0.1:PORT --duration-s S` with
stdout to /dev/null, then a load generator (collectd-tg, or `cadent blast --format
collectd` at a fixed rate) against it; the generator is stopped (by PID) when dump exits.
Sent packets are the OutDatagrams delta of /proc/net/snmp over dump's window, kernel
drops the RcvbufErrors delta, received packets and value lists dump's own summary line.
dump's CPU comes from wait4's rusage. Everything on 127.0.0.1; stdlib only.
"""
import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CADENT = os.path.join(ROOT, "target", "release", "cadent")
EXAMPLE = os.path.join(ROOT, "target", "release", "examples", "collectd_bench")
COLLECTD_TG = "/usr/bin/collectd-tg"


def build():
    subprocess.run(
        ["cargo", "build", "--release", "--bin", "cadent", "--example", "collectd_bench"],
        cwd=ROOT,
        check=True,
    )


def codec_runs(repeats, cpu_s, value_lists):
    runs = []
    for _ in range(repeats):
        out = subprocess.run(
            [EXAMPLE, str(cpu_s), str(value_lists)], check=True, capture_output=True, text=True
        ).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    rows = []
    for i, case in enumerate(runs[0]["collectd"]):
        rows.append(
            (
                "collectd " + case["security"],
                statistics.median(r["collectd"][i]["vl_per_cpu_s"] for r in runs),
                statistics.median(r["collectd"][i]["packets_per_cpu_s"] for r in runs),
                case["vl_per_packet"],
                case["packet_bytes_avg"],
            )
        )
    p = runs[0]["pickle"]
    rows.append(
        (
            "pickle (500/frame)",
            statistics.median(r["pickle"]["points_per_cpu_s"] for r in runs),
            statistics.median(r["pickle"]["frames_per_cpu_s"] for r in runs),
            500,
            p["frame_bytes_avg"],
        )
    )
    return rows, runs


def udp_snmp():
    with open("/proc/net/snmp") as f:
        lines = [l.split() for l in f if l.startswith("Udp:")]
    return dict(zip(lines[0][1:], map(int, lines[1][1:])))


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def stop(proc):
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def load_run(load_cmd, duration_s):
    """One dump window under one generator; returns a dict of counts."""
    port = free_port()
    err_path = "/tmp/collectd_bench_dump.%d.err" % os.getpid()
    with open(os.devnull, "wb") as devnull, open(err_path, "wb") as err:
        dump = subprocess.Popen(
            [
                CADENT,
                "collectd",
                "dump",
                "--listen",
                "udp://127.0.0.1:%d" % port,
                "--duration-s",
                str(duration_s),
            ],
            stdout=devnull,
            stderr=err,
        )
        time.sleep(0.3)  # bound before the load starts
        before, t0 = udp_snmp(), time.monotonic()
        cmd = [a.replace("PORT", str(port)) for a in load_cmd]
        load = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _, status, ru = os.wait4(dump.pid, 0)
            dump.returncode = os.waitstatus_to_exitcode(status)
            after, t1 = udp_snmp(), time.monotonic()
        finally:
            stop(load)
            stop(dump)
    with open(err_path) as f:
        summary = f.read()
    os.unlink(err_path)
    m = re.search(r"packets=(\d+) value_lists=(\d+)", summary)
    if dump.returncode != 0 or not m:
        sys.exit("dump failed (%s): %s" % (dump.returncode, summary))
    window = t1 - t0
    d = {k: after[k] - before[k] for k in after}
    return {
        "window_s": window,
        "sent_packets": d["OutDatagrams"],
        "recv_packets": int(m.group(1)),
        "value_lists": int(m.group(2)),
        "rcvbuf_drops": d["RcvbufErrors"],
        "noports": d["NoPorts"],
        "dump_cpu_s": ru.ru_utime + ru.ru_stime,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cpu-s", type=float, default=1.5, help="CPU seconds per codec case")
    ap.add_argument("--value-lists", type=int, default=100000)
    ap.add_argument("--load-repeats", type=int, default=3)
    ap.add_argument("--duration-s", type=float, default=5)
    ap.add_argument("--blast-rates", default="100000,400000", help="value lists/s")
    ap.add_argument("--tg-n", type=int, default=100000, help="collectd-tg -n (per -i)")
    ap.add_argument("--tg-interval", type=float, default=1.0, help="collectd-tg -i")
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    if not args.no_build:
        build()

    rows, _ = codec_runs(args.repeats, args.cpu_s, args.value_lists)
    print("## codecs: decode + re-encode, same security (median of %d)" % args.repeats)
    print()
    print("| codec | units/cpu_s | packets or frames/cpu_s | units/packet | bytes/packet |")
    print("|---|---|---|---|---|")
    for name, u, p, per, b in rows:
        print("| %s | %s | %s | %s | %s |" % (name, f"{u:,.0f}", f"{p:,.0f}", per, f"{b:,.0f}"))
    print()
    sys.stdout.flush()

    loads = []
    if os.path.exists(COLLECTD_TG):
        loads.append(
            (
                "collectd-tg -n %d -H 1000 -p 20 -i %g" % (args.tg_n, args.tg_interval),
                [COLLECTD_TG, "-n", str(args.tg_n), "-H", "1000", "-p", "20",
                 "-i", str(args.tg_interval), "-d", "127.0.0.1", "-D", "PORT"],
            )
        )
    for rate in [int(r) for r in args.blast_rates.split(",") if r]:
        loads.append(
            (
                "blast --format collectd --rate %d" % rate,
                [CADENT, "blast", "--format", "collectd", "--to", "udp://127.0.0.1:PORT",
                 "--rate", str(rate), "--count", "0", "--duration-s",
                 str(args.duration_s + 3), "--names", "20000", "--hosts", "1000",
                 "--plugins", "20"],
            )
        )
    print("## cadent collectd dump --duration-s %g > /dev/null under load (median of %d)"
          % (args.duration_s, args.load_repeats))
    print()
    print("| load | sent pkt/s | recv pkt/s | recv vl/s | kernel drops | drop % | dump cpu_s per 1M vl | dump cpu % |")
    print("|---|---|---|---|---|---|---|---|")
    for name, cmd in loads:
        runs = [load_run(cmd, args.duration_s) for _ in range(args.load_repeats)]
        med = lambda f: statistics.median(f(r) for r in runs)
        sent = med(lambda r: r["sent_packets"] / r["window_s"])
        recv = med(lambda r: r["recv_packets"] / r["window_s"])
        vls = med(lambda r: r["value_lists"] / r["window_s"])
        drops = med(lambda r: r["rcvbuf_drops"])
        droppct = med(lambda r: 100.0 * r["rcvbuf_drops"] / max(1, r["sent_packets"]))
        cpu_m = med(lambda r: r["dump_cpu_s"] / max(1, r["value_lists"]) * 1e6)
        cpu_pct = med(lambda r: 100.0 * r["dump_cpu_s"] / r["window_s"])
        print("| %s | %s | %s | %s | %s | %.2f | %.3f | %.0f |" % (
            name, f"{sent:,.0f}", f"{recv:,.0f}", f"{vls:,.0f}", f"{drops:,.0f}",
            droppct, cpu_m, cpu_pct))
        print("<!-- raw %s: %s -->" % (name, json.dumps(runs)))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
