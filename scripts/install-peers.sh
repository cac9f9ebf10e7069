#!/usr/bin/env bash
# Installs the real peers the tests and benchmarks talk to. Idempotent; needs root for apt.
#   carbon-c-relay 3.7.3 (Debian): carbon_ch reference (`-t` test mode) and bench peer.
#   whisper 1.1.10 (PyPI): the whisper format reference (tests/it/whisper_diff.rs).
#   collectd 5.12 (Debian collectd-core, collectd-utils for collectd-tg): the collectd
#   protocol and write_graphite reference (tests/it/collectd_*.rs).
#   carbon 1.1.10 (PyPI): python carbon's ConsistentHashRing (carbon_ch_python) and
#   carbon-aggregator (graphite aggregation reference).
#   graphite-web 1.1.10 (PyPI, in .peers/graphite-web-venv): the read API's client.
#   statsd 0.9.0 and hashring 3.2.0 (npm, into .peers/node): Etsy statsd, the statsd
#   aggregation reference, and the ring of its proxy (statsd_hashring).
set -euo pipefail

need_apt=()
command -v carbon-c-relay >/dev/null 2>&1 || need_apt+=(carbon-c-relay)
[ -x /usr/sbin/collectd ] || need_apt+=(collectd-core)
command -v collectd-tg >/dev/null 2>&1 || need_apt+=(collectd-utils)

if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "install-peers: apt-get install ${need_apt[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! python3 -c 'import importlib.metadata as m, sys; sys.exit(m.version("whisper") != "1.1.10")' 2>/dev/null; then
    echo "install-peers: pip install whisper==1.1.10" >&2
    python3 -m pip install --quiet --disable-pip-version-check whisper==1.1.10
fi

if ! python3 -c 'import importlib.metadata as m, sys; sys.exit(m.version("carbon") != "1.1.10")' 2>/dev/null; then
    echo "install-peers: pip install carbon==1.1.10" >&2
    # Without GRAPHITE_NO_PREFIX carbon installs itself under /opt/graphite.
    GRAPHITE_NO_PREFIX=1 python3 -m pip install --quiet --disable-pip-version-check carbon==1.1.10
fi

# npm packages live in the repository's .peers/node (ignored by git); tests find them there.
node_dir="$(cd "$(dirname "$0")/.." && pwd)/.peers/node"
if ! node -e 'process.exit(require(process.argv[1]+"/node_modules/statsd/package.json").version==="0.9.0" && require(process.argv[1]+"/node_modules/hashring/package.json").version==="3.2.0" ? 0 : 1)' "$node_dir" 2>/dev/null; then
    echo "install-peers: npm install statsd@0.9.0 hashring@3.2.0 into $node_dir" >&2
    mkdir -p "$node_dir"
    npm install --silent --no-audit --no-fund --prefix "$node_dir" statsd@0.9.0 hashring@3.2.0 >/dev/null
fi

echo "install-peers: carbon-c-relay $(carbon-c-relay -v 2>&1 | head -1 | tr -s ' ' | cut -c1-60)" >&2

# graphite-web 1.1.10 (PyPI) in its own virtualenv, .peers/graphite-web-venv (ignored by
# git), so its Django 2.2 and urllib3 1.x do not touch the system's packages; with
# whisper 1.1.10 beside it for its local reads. msgpack-python is deliberately not
# installed: graphite-web 1.1.10's msgpack cluster path needs its vendored umsgpack
# (msgpack-python >= 1.0 refuses its `encoding=` argument). The read API's cluster and
# CarbonLink client (tests/it/store_graphite_web.rs, bench/store.py).
gweb_venv="$(cd "$(dirname "$0")/.." && pwd)/.peers/graphite-web-venv"
if ! "$gweb_venv/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("graphite-web") != "1.1.10")' 2>/dev/null; then
    echo "install-peers: graphite-web 1.1.10 into $gweb_venv" >&2
    python3 -m venv "$gweb_venv"
    GRAPHITE_NO_PREFIX=1 "$gweb_venv/bin/pip" install --quiet --disable-pip-version-check \
        'graphite-web==1.1.10' 'Django>=2.2,<2.3' 'urllib3<2' 'whisper==1.1.10'
fi
