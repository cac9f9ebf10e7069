#!/usr/bin/env bash
# Installs the real peers the tests and benchmarks talk to. Idempotent; needs root for apt.
#   carbon-c-relay 3.7.3 (Debian): carbon_ch reference (`-t` test mode) and bench peer.
#   whisper 1.1.10 (PyPI): the whisper format reference (tests/it/whisper_diff.rs).
#   collectd 5.12 (Debian collectd-core, collectd-utils for collectd-tg): the collectd
#   protocol and write_graphite reference (tests/it/collectd_*.rs).
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

echo "install-peers: carbon-c-relay $(carbon-c-relay -v 2>&1 | head -1 | tr -s ' ' | cut -c1-60)" >&2
