#!/usr/bin/env python3
"""Makes the whisper goldens in this folder with python whisper 1.1.10.

    cd tests/data/whisper && python3 make_goldens.py

Each case creates a file, applies update_many batches at a pinned `now`, and records
fetches; goldens.json holds the operations and the fetch answers, NAME.wsp the bytes.
tests/it/whisper_golden.rs replays the operations with cadent and compares.
"""
import json
import os

import whisper

CASES = [
    {"name": "avg_3archives", "archives": [[10, 12], [60, 10], [300, 12]], "xff": 0.5,
     "method": "average"},
    {"name": "max_xff03", "archives": [[60, 5], [300, 4]], "xff": 0.3, "method": "max"},
    {"name": "absmin_wrap", "archives": [[1, 7], [7, 5]], "xff": 0.0, "method": "absmin"},
    {"name": "avg_zero_single", "archives": [[5, 20]], "xff": 1.0, "method": "avg_zero"},
]
T0 = 1_700_000_000


def batches(case_index):
    # Deterministic: out of order, duplicates, across ring wraps, some outside retention.
    out = []
    for b in range(6):
        now = T0 + 37 * b * (case_index + 1)
        pts = []
        for k in range(9):
            ago = (k * 13 + b * 7 + case_index) % 400
            pts.append([now - ago, round(((k * 31 + b * 17) % 23) - 11.5, 3)])
        pts.append(list(pts[2]))  # an exact duplicate
        out.append({"now": now, "points": pts})
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    clock = {"now": T0}
    whisper.time.time = lambda: clock["now"]
    manifest = []
    for i, case in enumerate(CASES):
        path = os.path.join(here, case["name"] + ".wsp")
        if os.path.exists(path):
            os.unlink(path)
        whisper.create(path, [tuple(a) for a in case["archives"]], xFilesFactor=case["xff"],
                       aggregationMethod=case["method"])
        ops = batches(i)
        fetches = []
        for op in ops:
            clock["now"] = op["now"]
            whisper.update_many(path, [tuple(p) for p in op["points"]])
        now = ops[-1]["now"]
        clock["now"] = now
        for (frm, until) in [(now - 60, now), (now - 600, now - 100), (now - 3000, now)]:
            r = whisper.fetch(path, frm, until, now=now)
            fetches.append({"from": frm, "until": until, "now": now,
                            "result": None if r is None else [list(r[0]), r[1]]})
        manifest.append(dict(case, ops=ops, fetches=fetches))
    with open(os.path.join(here, "goldens.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
