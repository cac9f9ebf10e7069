#!/usr/bin/env bash
# The whole test suite on a fresh machine: install the peers, then every test.
# This is the README's test command, and what .ci/run runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-peers.sh
# Fuzz smoke runs first, so the test runner's summary closes the output.
scripts/fuzz-smoke.sh
cargo test --locked --all-targets
