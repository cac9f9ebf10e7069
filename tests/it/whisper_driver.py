#!/usr/bin/env python3
"""Drive python whisper (PyPI `whisper` 1.1.10) for tests/it/whisper_diff.rs.

One long-lived process: one JSON request per line on stdin, one JSON answer per line on
stdout. Every `now` is passed explicitly (whisper's `now=` argument), so whisper never
consults the clock. Values cross the pipe as the u64 bit patterns of their doubles, so
nothing is lost to decimal formatting.

Requests (answers are {"ok": ...} or {"err": "ExceptionName: message"}):
  {"op": "version"}                                        -> whisper's version string
  {"op": "create", "path", "archives": [[spp, points]..], "xff", "method",
   "mode": "sparse" | "fallocate" | "zero"}                -> null
  {"op": "update_many", "path", "points": [[ts, bits]..], "now"} -> null
  {"op": "update", "path", "ts", "bits", "now"}            -> null
  {"op": "fetch", "path", "from", "until", "now"}          -> null or
                                                 [[from, until, step], [bits or null..]]
"""

import json
import struct
import sys

import whisper


def to_float(bits):
    return struct.unpack(">d", struct.pack(">Q", bits))[0]


def to_bits(value):
    if value is None:
        return None
    return struct.unpack(">Q", struct.pack(">d", value))[0]


def handle(req):
    op = req["op"]
    if op == "version":
        from importlib.metadata import version

        return version("whisper")
    if op == "create":
        mode = req["mode"]
        whisper.create(
            req["path"],
            [tuple(a) for a in req["archives"]],
            xFilesFactor=req["xff"],
            aggregationMethod=req["method"],
            sparse=(mode == "sparse"),
            useFallocate=(mode == "fallocate"),
        )
        return None
    if op == "update_many":
        points = [(ts, to_float(bits)) for ts, bits in req["points"]]
        whisper.update_many(req["path"], points, now=req["now"])
        return None
    if op == "update":
        whisper.update(req["path"], to_float(req["bits"]), req["ts"], now=req["now"])
        return None
    if op == "fetch":
        got = whisper.fetch(req["path"], req["from"], req["until"], now=req["now"])
        if got is None:
            return None
        (time_info, values) = got
        return [list(time_info), [to_bits(v) for v in values]]
    raise ValueError("unknown op %r" % op)


def main():
    for line in sys.stdin:
        req = json.loads(line)
        try:
            answer = {"ok": handle(req)}
        except Exception as e:  # every whisper error is an answer, not a crash
            answer = {"err": "%s: %s" % (type(e).__name__, e)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
