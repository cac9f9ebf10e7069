#!/usr/bin/env bash
# Long fuzz runs, one target after another: `scripts/fuzz-long.sh graphite:3600 lines:900`.
# The targets are built once (`cargo +nightly fuzz build`; FUZZ_NO_BUILD=1 skips it, so
# lanes started side by side do not rebuild under each other), then each runs on
# fuzz/corpus/TARGET for the given seconds at nice 19 (it yields to builds), appending
# "target executions seconds finished-at" to $FUZZ_LOG (default fuzz/long-runs.log). A
# crash stops the lane; its input is kept in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
log=${FUZZ_LOG:-long-runs.log}
[ -n "${FUZZ_NO_BUILD:-}" ] || nice -n 19 cargo +nightly fuzz build
bin=target/x86_64-unknown-linux-gnu/release
for spec in "$@"; do
    target=${spec%%:*}
    secs=${spec##*:}
    mkdir -p "corpus/$target" "artifacts/$target"
    out=$(mktemp)
    if nice -n 19 "$bin/$target" "corpus/$target" -artifact_prefix="artifacts/$target/" \
        -max_total_time="$secs" -max_len=4096 -print_final_stats=1 >"$out" 2>&1; then
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out" | grep -o '[0-9]*$' | tail -1)
        took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$out" | grep -o 'in [0-9]*' | grep -o '[0-9]*' | tail -1)
        echo "$target ${runs:-?} ${took:-$secs} $(date -u +%FT%TZ)" >>"$log"
    else
        echo "$target CRASH $(date -u +%FT%TZ) see $out" >>"$log"
        tail -60 "$out" >&2
        exit 1
    fi
    rm -f "$out"
done
