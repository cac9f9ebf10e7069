#!/usr/bin/env python3
"""Drive python carbon-aggregator (PyPI `carbon` 1.1.10) for tests/it/carbon_aggregator.rs.

Why a driver and not the daemon: carbon-aggregator emits from one twisted LoopingCall per
output metric, started when that metric's first point arrives, on the wall clock. Over
sockets neither the start times nor the moments of emission can be controlled, so the
same input would give different (equally right) output from run to run. This driver runs
carbon's own code (`carbon.aggregator.rules.RuleManager` reading the rules file,
`carbon.aggregator.processor.AggregationProcessor`, `carbon.aggregator.buffers`) with
twisted's `task.Clock` as the reactor of every LoopingCall and as `time.time()`, so the
whole run is deterministic and every emission has an exact time. What it replaces is the
socket receiver and the line-protocol client; the line format is copied from
`carbon.client.CarbonLineClientProtocol._sendDatapointsNow` and applied here.

Input: a JSON file (argv[1]) {"rules": text, "max_intervals": n, "forward_all": bool,
"ops": [[now, name, value_bits, timestamp] | [now]]}. Every op first advances the clock
to `now` (running the due LoopingCalls); a 4-element op then feeds one point to the
processor. Values cross as the u64 bit patterns of their doubles.

Usage: carbon_aggregator_driver.py SCENARIO.json RULES_PATH OUT.json (the rules text is
written to RULES_PATH for carbon's RuleManager to read).
Output (OUT.json, one JSON object): {"version", "generated": [[now, line]..],
"forwarded": [[now, name]..]}, `line` as carbon's line client would send it.
"""

import json
import struct
import sys

from importlib.metadata import version

from twisted.internet import task

from carbon import events, instrumentation, state
from carbon.conf import settings
import carbon.aggregator.buffers as buffers
from carbon.aggregator.buffers import BufferManager
from carbon.aggregator.processor import AggregationProcessor
from carbon.aggregator.rules import RuleManager

CLOCK = task.Clock()


class ClockedLoopingCall(task.LoopingCall):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.clock = CLOCK


class ClockTime:
    @staticmethod
    def time():
        return CLOCK.seconds()


def to_float(bits):
    return struct.unpack(">d", struct.pack(">Q", bits))[0]


def line(metric, datapoint):
    # carbon/client.py CarbonLineClientProtocol._sendDatapointsNow, verbatim logic.
    if isinstance(datapoint[1], float):
        value = ("%.10f" % datapoint[1]).rstrip("0").rstrip(".")
    else:
        value = "%d" % datapoint[1]
    return "%s %s %d" % (metric, value, datapoint[0])


def main():
    with open(sys.argv[1]) as f:
        scenario = json.load(f)
    rules_path = sys.argv[2]
    with open(rules_path, "w") as f:
        f.write(scenario["rules"])

    settings["MAX_AGGREGATION_INTERVALS"] = scenario["max_intervals"]
    settings["FORWARD_ALL"] = scenario["forward_all"]
    settings["LOG_AGGREGATOR_MISSES"] = False
    state.instrumentation = instrumentation
    state.events = events  # as carbon.service sets it
    buffers.LoopingCall = ClockedLoopingCall
    buffers.time = ClockTime

    generated = []
    events.metricGenerated.addHandler(
        lambda metric, datapoint: generated.append([int(CLOCK.seconds()), line(metric, datapoint)])
    )

    # read_rules is what RuleManager.read_from runs, without its 10 s re-read task.
    RuleManager.rules_file = rules_path
    RuleManager.read_rules()
    BufferManager.clear()

    processor = AggregationProcessor()
    forwarded = []
    for op in scenario["ops"]:
        now = op[0]
        if now > CLOCK.seconds():
            CLOCK.advance(now - CLOCK.seconds())
        if len(op) == 4:
            _, name, bits, ts = op
            for metric, _dp in processor.process(name, (float(ts), to_float(bits))):
                forwarded.append([now, metric])

    with open(sys.argv[3], "w") as f:
        json.dump(
            {"version": version("carbon"), "generated": generated, "forwarded": forwarded},
            f,
        )


main()
