"""Runs graphite-web 1.1.10's and carbon 1.1.10's own code for tests/it/read_api.rs.

Reads one JSON request on stdin: {"webapp": <graphite-web sdist's webapp/ dir>,
"cases": [...]}, answers one JSON list on stdout, an answer per case.

graphite-web's modules import Django at the top; the few that do are replaced by stubs
(settings, logger, request/response objects), and the functions under test are taken
from graphite-web's own source files with `ast` and run unchanged:
- finders/__init__.py: match_entries, expand_braces (the glob);
- finders/standard.py: StandardFinder.find_nodes (the walk) and get_index
  (/metrics/index.json), with readers/whisper.py's
  WhisperReader for intervals;
- metrics/views.py: pickle_nodes, msgpack_nodes, json_nodes, tree_json (find bodies),
  expand_view with json_response_for (on a stub request and STORE);
- render/datalib.py: TimeSeries (getInfo, datapoints); render/views.py: renderViewJson;
- util.py: the py3 SafeUnpickler/unpickle that RemoteFinder and RemoteReader load with.
graphite-web's msgpack is its vendored umsgpack (what it imports without msgpack-python).
The RemoteFinder/RemoteReader response parsing (finders/remote.py, readers/remote.py)
is a few lines inside methods that need Django and HTTP; those lines are copied below,
marked. carbon's CacheManagementHandler (lib/carbon/protocols.py) runs unchanged, on a
MetricCache and a WhisperDatabase of carbon's own.
"""
import ast
import datetime
import io
import json
import math
import os
import pickle
import re
import sys
import time
import types
from collections import UserDict
from functools import reduce
from urllib.parse import unquote_plus

request = json.load(sys.stdin)
WEBAPP = request["webapp"]
sys.path.insert(0, WEBAPP)


class Log:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def stub(name, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


class Settings:
    STANDARD_DIRS = []
    DEFAULT_XFILES_FACTOR = 0
    TIME_ZONE = "UTC"


stub("django")
stub("django.conf", settings=Settings())
stub("graphite.logger", log=Log())


def extract(relpath, names, globs):
    """Defines graphite-web's top-level (or if/else-nested) functions and classes
    `names` from `relpath` in `globs`; of two definitions the last wins (python 3's)."""
    path = os.path.join(WEBAPP, relpath)
    tree = ast.parse(open(path).read(), path)
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names:
            if node.col_offset <= 2:  # module level, or one if/else deep
                found[node.name] = node
    assert set(found) == set(names), (relpath, names, list(found))
    body = sorted(found.values(), key=lambda n: n.lineno)
    exec(compile(ast.Module(body=body, type_ignores=[]), path, "exec"), globs)
    return globs


util = stub("graphite.util")
extract("graphite/util.py",
        ["is_pattern", "is_escaped_pattern", "find_escaped_pattern_fields"], util.__dict__)
import graphite  # noqa: E402  the real package

readers = types.ModuleType("graphite.readers")
readers.__path__ = [os.path.join(WEBAPP, "graphite/readers")]
sys.modules["graphite.readers"] = readers
import graphite.readers.whisper as readers_whisper  # noqa: E402


class RRDReader:
    supported = False


readers.WhisperReader = readers_whisper.WhisperReader
readers.GzippedWhisperReader = readers_whisper.GzippedWhisperReader
readers.RRDReader = RRDReader

import graphite.umsgpack as umsgpack  # noqa: E402
from graphite.finders import match_entries  # noqa: E402
from graphite.finders.standard import StandardFinder  # noqa: E402
from graphite.finders.utils import FindQuery  # noqa: E402
from graphite.intervals import Interval, IntervalSet  # noqa: E402
from graphite.node import BranchNode, LeafNode  # noqa: E402
from graphite.tags.utils import TaggedSeries  # noqa: E402

unpickling = extract("graphite/util.py", ["SafeUnpickler", "unpickle"],
                     {"pickle": pickle, "sys": sys, "BytesIO": io.BytesIO})
unpickle = unpickling["unpickle"]

views = extract("graphite/metrics/views.py",
                ["tree_json", "pickle_nodes", "msgpack_nodes", "json_nodes"],
                {"unquote_plus": unquote_plus, "pickle": pickle, "msgpack": umsgpack,
                 "text_type": str})


class TagDB:
    parse = staticmethod(TaggedSeries.parse)


class Store:
    tagdb = TagDB()


datalib = extract("graphite/render/datalib.py", ["Tags", "TimeSeries"],
                  {"UserDict": UserDict, "text_type": str, "settings": Settings(),
                   "STORE": Store(), "re": re, "log": Log()})


class HttpResponse:
    def __init__(self, content="", content_type=None):
        self.content = content


render_views = extract("graphite/render/views.py", ["renderViewJson"],
                       {"json": json, "math": math, "HttpResponse": HttpResponse})


class QueryDict:
    """The part of Django's QueryDict the views use: GET.copy(), update, get, getlist."""

    def __init__(self, pairs):
        self.pairs = list(pairs)

    def copy(self):
        return QueryDict(self.pairs)

    def update(self, other):
        self.pairs.extend(other.pairs)

    def get(self, key, default=None):
        values = self.getlist(key)
        return values[-1] if values else default

    def getlist(self, key):
        return [v for k, v in self.pairs if k == key]

    def __contains__(self, key):
        return any(k == key for k, _ in self.pairs)

    def __getitem__(self, key):
        values = self.getlist(key)
        if not values:
            raise KeyError(key)
        return values[-1]


class Request:
    def __init__(self, pairs):
        self.GET = QueryDict(pairs)
        self.POST = QueryDict([])
        self.META = {}


class Response(HttpResponse):
    def __init__(self, content="", content_type=None, **kwargs):
        self.content = content
        self.headers = {}

    def __setitem__(self, key, value):
        self.headers[key] = value


class FindStore:
    """STORE.find answering each query with the nodes the test gives for it."""

    def __init__(self, answers):
        self.answers = answers

    def find(self, query, local=False, headers=None):
        return self.answers[query]


expand = extract("graphite/metrics/views.py", ["expand_view", "json_response_for"],
                 {"json": json, "reduce": reduce, "HttpResponse": Response,
                  "extractForwardHeaders": lambda request: {}})


class ViewStore:
    """STORE.find for find_view: records the query it was asked, answers the test's nodes
    (leaves only when asked, as the finders do)."""

    def __init__(self, nodes):
        self.nodes = nodes
        self.asked = []

    def find(self, query, fromTime=None, untilTime=None, local=False, headers=None,
             leaves_only=False):
        self.asked.append(query)
        return [n for n in self.nodes if n.is_leaf or not leaves_only]


class ParamError(Exception):
    pass


class Pytz:
    """The part of pytz find_view uses, for UTC (graphite-web's default TIME_ZONE; the
    tests send no tz)."""

    class UnknownTimeZoneError(Exception):
        pass

    @staticmethod
    def timezone(name):
        assert name == "UTC", name
        return datetime.timezone.utc


pytz = Pytz()


find_views = extract("graphite/metrics/views.py",
                     ["find_view", "queryParamAsInt", "nodes_by_position",
                      "json_response_for"],
                     {"json": json, "pytz": pytz, "datetime": datetime.datetime,
                      "settings": Settings(), "log": Log(), "HttpResponse": Response,
                      "HttpResponseBadRequest": Response,
                      "InputParameterError": ParamError,
                      "handleInputParameterError": lambda f: f,
                      "extractForwardHeaders": lambda request: {}})


def remote_find(data):
    # graphite-web 1.1.10 finders/remote.py, RemoteFinder.find_nodes, on
    # `results = self.deserialize(result)`:
    nodes = []
    for node_info in data:
        path = node_info.get('path') or node_info.get('metric_path')
        is_leaf = node_info.get('is_leaf') or node_info.get('isLeaf')
        intervals = node_info.get('intervals') or []
        if not isinstance(intervals, IntervalSet):
            intervals = IntervalSet(
                [Interval(interval[0], interval[1]) for interval in intervals])
        # (end of the copied lines)
        nodes.append([path, bool(is_leaf), [[i.start, i.end] for i in intervals]])
    return nodes


def remote_render(data):
    # graphite-web 1.1.10 readers/remote.py, RemoteReader.fetch_multi, on
    # `data = self.finder.deserialize(result)`:
    return [
        {
            'pathExpression': series.get('pathExpression', series['name']),
            'name': series['name'],
            'time_info': (series['start'], series['end'], series['step']),
            'values': series['values'],
        }
        for series in data
    ]


def number(text):
    return None if text is None else float(text)


class Reader:
    """A leaf's reader with a fixed interval (graphite-web's WhisperReader counts from
    time.time(), which the find case compares separately)."""

    def __init__(self, interval):
        self.interval = interval

    def get_intervals(self):
        return IntervalSet([Interval(*self.interval)] if self.interval else [])


def op_match(case):
    return [sorted(match_entries(case["names"], p)) for p in case["patterns"]]


def op_find(case):
    finder = StandardFinder([case["root"]])
    out = {}
    for node in finder.find_nodes(FindQuery(case["pattern"], None, None)):
        # graphite.storage.Store._find groups nodes by path; a branch and a leaf of one
        # path are both kept.
        key = (node.path, node.is_leaf)
        if key not in out:
            interval = None
            if node.is_leaf:
                intervals = list(node.intervals)
                interval = [intervals[0].start, intervals[0].end]
            out[key] = [node.path, node.is_leaf, interval]
    return {"nodes": [out[k] for k in sorted(out)], "now": time.time()}


def op_index(case):
    # StandardFinder.get_index walks settings.WHISPER_DIR (RRD off, as above).
    sys.modules["graphite.finders.standard"].settings.WHISPER_DIR = case["root"]
    return StandardFinder([case["root"]]).get_index({})


def op_find_formats(case):
    matches = []
    for path, is_leaf, interval in case["nodes"]:
        matches.append(LeafNode(path, Reader(interval)) if is_leaf else BranchNode(path))
    # find_view: matches.sort(key=lambda node: node.name), stable on the given order.
    matches.sort(key=lambda node: node.name)
    query = case["query"]
    base_path = query.rsplit('.', 1)[0] + '.' if '.' in query else ''
    gw_pickle = views["pickle_nodes"](matches)
    equivalent = []
    for node in matches:
        info = dict(path=node.path, is_leaf=node.is_leaf)
        if node.is_leaf:
            info['intervals'] = [(i.start, i.end) for i in node.intervals]
        equivalent.append(info)
    ours = bytes.fromhex(case["pickle"])
    return {
        "pickle_p2": pickle.dumps(equivalent, protocol=2).hex(),
        "remote_gw": remote_find(unpickle.loads(gw_pickle)),
        "remote_ours": remote_find(unpickle.loads(ours)),
        "remote_msgpack_ours": remote_find(
            umsgpack.unpackb(bytes.fromhex(case["msgpack"]), encoding='utf-8')),
        "msgpack": views["msgpack_nodes"](matches).hex(),
        "json": json.dumps(views["json_nodes"](matches)),
        "treejson": json.dumps(views["tree_json"](matches, base_path,
                                                  wildcards=case["wildcards"])),
    }


def op_expand(case):
    answers = {}
    for query, nodes in case["answers"]:
        answers[query] = [LeafNode(path, Reader(None)) if is_leaf else BranchNode(path)
                          for path, is_leaf in nodes]
    expand["STORE"] = FindStore(answers)
    pairs = [("query", q) for q, _ in case["answers"]]
    pairs += [(k, v) for k, v in case["params"].items()]
    return expand["expand_view"](Request(pairs)).content


def op_find_view(case):
    # find_view itself, for the formats it renders inline (completer, nodelist).
    nodes = [LeafNode(path, Reader(None)) if is_leaf else BranchNode(path)
             for path, is_leaf in case["nodes"]]
    store = ViewStore(nodes)
    find_views["STORE"] = store
    try:
        content = find_views["find_view"](Request(case["params"])).content
    except Exception as e:  # graphite-web answers these with an error status
        return {"error": type(e).__name__, "asked": store.asked}
    return {"content": content, "asked": store.asked}


def op_render_formats(case):
    TimeSeries = datalib["TimeSeries"]
    expression = None
    data = []
    for s in case["series"]:
        values = [number(v) for v in s["values"]]
        series = TimeSeries(s["name"], s["start"], s["end"], s["step"], values,
                            xFilesFactor=case.get("x_files_factor", 0.0))
        # datalib._merge_results: the series of one target, which come together, share
        # its pathExpr object.
        if expression != s["target"]:
            expression = s["target"]
        series.pathExpression = expression
        data.append(series)
    info = [series.getInfo() for series in data]
    gw_pickle = pickle.dumps(info, protocol=-1)
    options = {"noNullPoints": True} if case["no_null_points"] else {}
    if case.get("pretty"):
        options["pretty"] = True
    if case.get("max_data_points") is not None:
        options["maxDataPoints"] = case["max_data_points"]
        try:
            return {"json": render_views["renderViewJson"](options, data).content}
        except Exception as e:  # graphite-web's own failures (an IndexError, a 500)
            return {"error": type(e).__name__}

    def comparable(remote):
        # NaN != NaN: compare values by repr.
        for r in remote:
            r['values'] = [repr(v) for v in r['values']]
        return remote

    return {
        "pickle_p2": pickle.dumps(info, protocol=2).hex(),
        "remote_gw": comparable(remote_render(unpickle.loads(gw_pickle))),
        "remote_ours": comparable(remote_render(unpickle.loads(bytes.fromhex(case["pickle"])))),
        "remote_msgpack_ours": comparable(remote_render(
            umsgpack.unpackb(bytes.fromhex(case["msgpack"]), encoding='utf-8'))),
        "msgpack": umsgpack.packb(info).hex(),
        "json": render_views["renderViewJson"](options, data).content,
    }


def op_fetch(case):
    import whisper
    answer = whisper.fetch(case["path"], case["from"], case["until"], now=case["now"])
    if answer is None:
        return None
    (start, end, step), values = answer
    return [start, end, step, [None if v is None else repr(v) for v in values]]


def op_set_aggregation(case):
    import whisper
    return whisper.setAggregationMethod(case["path"], case["method"])


def op_carbonlink(case):
    from carbon.conf import settings
    from carbon import state
    from carbon.cache import MetricCache
    from carbon.protocols import CacheManagementHandler
    from carbon.util import get_unpickler
    from carbon.database import WhisperDatabase

    settings["LOCAL_DATA_DIR"] = case["root"]
    state.database = WhisperDatabase(settings)
    cache = MetricCache()
    cache.clear()
    for name, ts, value in case["points"]:
        # MetricReceiver: datapoint = (float(timestamp), float(value)).
        cache.store(name, (float(ts), float(value)))
    answers = []
    for req in case["requests"]:
        # graphite-web carbonlink.py, CarbonLinkPool.send_request:
        # pickle.dumps(request, protocol=settings.CARBONLINK_PICKLE_PROTOCOL) with -1.
        raw = pickle.dumps(req, protocol=-1)
        handler = CacheManagementHandler()
        handler.peerAddr = "test"
        handler.unpickler = get_unpickler(insecure=False)
        sent = []
        handler.sendString = sent.append
        handler.stringReceived(raw)
        answers.append([raw.hex(), sent[0].hex(), repr(unpickle.loads(sent[0]))])
    return answers


def op_attime(case):
    # graphite-web's render/attime.py as it is, in UTC (its default TIME_ZONE); pytz is
    # not installed here: UTC needs no more of it than this.
    import datetime as dt

    class Utc(dt.tzinfo):
        def utcoffset(self, d):
            return dt.timedelta(0)

        def dst(self, d):
            return dt.timedelta(0)

        def tzname(self, d):
            return "UTC"

        def localize(self, d):
            return d.replace(tzinfo=self)

        def normalize(self, d):
            return d

    utc = Utc()
    stub("pytz", timezone=lambda name: utc)
    path = os.path.join(WEBAPP, "graphite/render/attime.py")
    attime = {"__name__": "attime"}
    exec(compile(open(path).read(), path, "exec"), attime)
    out = []
    for s in case["strings"]:
        try:
            out.append(int(attime["parseATTime"](s, utc, str(case["now"])).timestamp()))
        except Exception as e:  # graphite-web answers these with an error
            out.append("error: %s" % type(e).__name__)
    return out


OPS = {
    "attime": op_attime,
    "match": op_match,
    "find": op_find,
    "index": op_index,
    "find_formats": op_find_formats,
    "expand": op_expand,
    "find_view": op_find_view,
    "render_formats": op_render_formats,
    "fetch": op_fetch,
    "set_aggregation": op_set_aggregation,
    "carbonlink": op_carbonlink,
}

json.dump([OPS[case["op"]](case) for case in request["cases"]], sys.stdout)
