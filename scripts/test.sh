#!/usr/bin/env bash
# The whole test suite on a fresh machine: install the peers, then every test.
# This is the README's test command, and what .ci/run runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-peers.sh
cargo test --locked --all-targets
