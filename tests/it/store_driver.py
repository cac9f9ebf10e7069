"""Python side of tests/it/store_*.rs: reads whisper trees with python whisper 1.1.10.

One JSON request on stdin, one JSON answer on stdout.

- {"cmd": "tree", "root": DIR, "now": N}: every .wsp file under DIR (relative path) with
  whisper.info (aggregation, xFilesFactor, archives) and, per archive, what
  whisper.fetch returns for that archive's whole retention at `now` (the archive is picked
  by fetch's own rule: from = now - retention + 1), values as floats or None.
- {"cmd": "compare", "a": DIR, "b": DIR, "now": N}: both trees as above and their
  differences: files only in one, and per file the first differing field.
- {"cmd": "create", "root": DIR, "names": [...], "archives": [[spp, points], ...],
   "points": [[ts, value], ...]}: whisper.create then whisper.update_many for each name
  (carbon's layout: dots are directories).
"""

import json
import math
import os
import sys

import whisper


def tree(root, now):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if not f.endswith(".wsp"):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, root)
            try:
                info = whisper.info(path)
            except Exception as e:  # a corrupt file shows as its error
                out[rel] = {"error": repr(e)}
                continue
            archives = []
            for a in info["archives"]:
                (start, end, step), values = whisper.fetch(
                    path, now - a["retention"] + 1, now, now=now
                )
                archives.append(
                    {
                        "secondsPerPoint": a["secondsPerPoint"],
                        "points": a["points"],
                        "start": start,
                        "end": end,
                        "step": step,
                        "values": values,
                    }
                )
            out[rel] = {
                "aggregationMethod": info["aggregationMethod"],
                "xFilesFactor": info["xFilesFactor"],
                "maxRetention": info["maxRetention"],
                "archives": archives,
            }
    return out


def finite(v):
    """A value JSON can carry (python's json writes infinities as bare `Infinity`)."""
    return repr(v) if isinstance(v, float) and not math.isfinite(v) else v


def compare(a, b, now):
    ta, tb = tree(a, now), tree(b, now)
    diffs = []
    for rel in sorted(set(ta) & set(tb)):
        fa, fb = ta[rel], tb[rel]
        if fa == fb:
            continue
        for key in sorted(set(fa) | set(fb)):
            if fa.get(key) != fb.get(key):
                if key == "archives" and "archives" in fa and "archives" in fb:
                    for i, (xa, xb) in enumerate(zip(fa["archives"], fb["archives"])):
                        if xa != xb:
                            pairs = [
                                (j, finite(va), finite(vb))
                                for j, (va, vb) in enumerate(zip(xa["values"], xb["values"]))
                                if va != vb
                            ]
                            diffs.append(
                                {"file": rel, "archive": i, "first_values": pairs[:5],
                                 "a": {k: xa[k] for k in ("start", "end", "step")},
                                 "b": {k: xb[k] for k in ("start", "end", "step")}}
                            )
                            break
                else:
                    diffs.append({"file": rel, "field": key, "a": fa.get(key), "b": fb.get(key)})
                break
    known = sum(
        1
        for f in ta.values()
        for arch in f.get("archives", [])
        for v in arch["values"]
        if v is not None
    )
    return {
        "only_a": sorted(set(ta) - set(tb)),
        "only_b": sorted(set(tb) - set(ta)),
        "files": len(ta),
        "known_values_a": known,
        "diffs": diffs,
    }


def main():
    req = json.load(sys.stdin)
    if req["cmd"] == "tree":
        ans = tree(req["root"], req["now"])
    elif req["cmd"] == "create":
        for name in req["names"]:
            path = os.path.join(req["root"], *name.split(".")) + ".wsp"
            os.makedirs(os.path.dirname(path), exist_ok=True)
            whisper.create(path, [tuple(a) for a in req["archives"]])
            if req.get("points"):
                whisper.update_many(path, [tuple(p) for p in req["points"]])
        ans = {"created": len(req["names"])}
    elif req["cmd"] == "compare":
        ans = compare(req["a"], req["b"], req["now"])
    else:
        raise SystemExit("unknown cmd %r" % req["cmd"])
    json.dump(ans, sys.stdout)


if __name__ == "__main__":
    main()
