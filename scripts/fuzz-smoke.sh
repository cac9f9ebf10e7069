#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for FUZZ_SECONDS (default 15) each: a bounded
# smoke run for CI; longer runs are noted in bench/README.md. Needs the nightly toolchain
# the machine image ships; installs cargo-fuzz from crates.io when missing. A crash fails.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${FUZZ_SECONDS:-15}
if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz-smoke: no nightly toolchain; cargo-fuzz needs one" >&2
    exit 1
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
log=$(mktemp)
# New inputs a smoke run finds go to a scratch folder (libFuzzer writes to the first
# corpus folder), so the test command leaves the committed corpus as it was; the long
# runs (fuzz-long.sh) are the ones that grow it.
scratch=$(mktemp -d)
trap 'rm -rf "$log" "$scratch"' EXIT
for target in $(cargo +nightly fuzz list); do
    mkdir -p "$scratch/$target" "corpus/$target"
    if cargo +nightly fuzz run "$target" "$scratch/$target" "corpus/$target" \
        -- -max_total_time="$secs" -max_len=4096 >"$log" 2>&1; then
        echo "fuzz-smoke: $target: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$log" | tail -1)"
    else
        tail -40 "$log" >&2
        echo "fuzz-smoke: $target FAILED" >&2
        exit 1
    fi
done
