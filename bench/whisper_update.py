#!/usr/bin/env python3
"""whisper update_many throughput: cadent's engine vs python whisper 1.1.10, same operations.

Each run creates FILES files of 10s:6h,1m:7d,10m:5y (sum, sparse), then ROUNDS times
writes BATCH consecutive 10 s points into each file, with `now` just after the newest
point (python whisper's clock is pinned the same way). cadent's side is
`examples/whisper_bench.rs` (release build); python's runs here, in this interpreter,
with its file calls counted. Prints medians of --repeats runs per batch size.

Run with the interpreter that has whisper installed (scripts/install-peers.sh):
    python3 bench/whisper_update.py [--files 100] [--points 200000] [--repeats 5]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ARCHIVES = [(10, 2160), (60, 10080), (600, 262800)]
START = 1_700_000_000


class CountingFile:
    """Wraps the file whisper opens, counting the reads and writes it issues."""

    counts = {"reads": 0, "writes": 0}

    def __init__(self, f):
        self._f = f

    def read(self, *a):
        CountingFile.counts["reads"] += 1
        return self._f.read(*a)

    def write(self, *a):
        CountingFile.counts["writes"] += 1
        return self._f.write(*a)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def python_run(whisper, d, files, batch, rounds):
    paths = [os.path.join(d, "p%d.wsp" % i) for i in range(files)]
    for p in paths:
        whisper.create(p, ARCHIVES, xFilesFactor=0.5, aggregationMethod="sum", sparse=True)
    real_open = open
    whisper.open = lambda *a, **k: CountingFile(real_open(*a, **k))
    CountingFile.counts = {"reads": 0, "writes": 0}
    clock = {"now": START}
    whisper.time.time = lambda: clock["now"]
    t = START
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(rounds):
        points = [(t + k * 10, float(k % 7)) for k in range(batch)]
        clock["now"] = t + batch * 10
        for p in paths:
            whisper.update_many(p, points)
        t += batch * 10
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    del whisper.open
    updates = rounds * files
    return {
        "impl": "python",
        "batch": batch,
        "updates": updates,
        "points": updates * batch,
        "cpu_s": cpu,
        "wall_s": wall,
        "reads_per_update": CountingFile.counts["reads"] / updates,
        "writes_per_update": CountingFile.counts["writes"] / updates,
    }


def cadent_run(binary, d, files, batch, rounds):
    out = subprocess.run([binary, d, str(files), str(batch), str(rounds)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--points", type=int, default=200_000, help="points per run and batch size")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", default="1,10,100")
    args = ap.parse_args()
    import whisper  # noqa: E402  (the reference; fail early if missing)

    subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "whisper_bench"],
                   cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "examples", "whisper_bench")
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        rounds = max(1, args.points // (batch * args.files))
        runs = {"cadent": [], "python": []}
        for r in range(args.repeats):
            for impl in (("cadent", "python") if r % 2 == 0 else ("python", "cadent")):
                d = tempfile.mkdtemp(prefix="cadent-whisper-bench-")
                try:
                    if impl == "cadent":
                        runs[impl].append(cadent_run(binary, d, args.files, batch, rounds))
                    else:
                        runs[impl].append(python_run(whisper, d, args.files, batch, rounds))
                finally:
                    shutil.rmtree(d, ignore_errors=True)
        for impl in ("cadent", "python"):
            rs = runs[impl]
            cpu = statistics.median(x["cpu_s"] for x in rs)
            pts = rs[0]["points"]
            rows.append((batch, impl, pts, cpu, pts / cpu if cpu else float("inf"),
                         rs[0]["reads_per_update"], rs[0]["writes_per_update"]))
    print("%6s %7s %9s %8s %14s %12s %13s" % ("batch", "impl", "points", "cpu_s", "points/cpu_s",
                                              "reads/update", "writes/update"))
    for row in rows:
        print("%6d %7s %9d %8.3f %14.0f %12.2f %13.2f" % row)
    by = {(b, i): p for (b, i, _, _, p, _, _) in rows}
    for b in sorted({r[0] for r in rows}):
        print("batch %d: cadent does %.1fx python whisper's points per CPU-second"
              % (b, by[(b, "cadent")] / by[(b, "python")]))


if __name__ == "__main__":
    sys.exit(main())
