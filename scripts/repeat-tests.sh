#!/usr/bin/env bash
# Runs test binaries N times in a row and counts failures (flakiness check on this machine):
#   scripts/repeat-tests.sh N TEST...      e.g.  scripts/repeat-tests.sh 20 server_api bench_loadgen
# Builds once, then runs each listed `tests/TEST.rs` binary N times; prints one line per run and a
# summary (runs, failures, wall time). Exit status 1 when any run failed. Logs of failed runs are kept
# under target/repeat-tests/.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:?usage: $0 N TEST...}; shift
[ $# -gt 0 ] || { echo "usage: $0 N TEST..."; exit 2; }
export AIRAVATA_ASSETS=${AIRAVATA_ASSETS:-$PWD/../shared/assets}
args=(); for t in "$@"; do args+=(--test "$t"); done
cargo test --release "${args[@]}" --no-run 2>&1 | tail -1
logs=target/repeat-tests; mkdir -p "$logs"
fail=0; t0=$(date +%s)
for i in $(seq 1 "$n"); do
  s=$(date +%s)
  if cargo test --release "${args[@]}" >"$logs/run-$i.log" 2>&1; then
    echo "run $i: ok ($(( $(date +%s) - s )) s)"; rm -f "$logs/run-$i.log"
  else
    fail=$((fail + 1)); echo "run $i: FAILED ($(( $(date +%s) - s )) s, log $logs/run-$i.log)"
    grep -E "^test .* FAILED|panicked" "$logs/run-$i.log" | head -5
  fi
done
echo "summary: $n runs of [$*], $fail failed, $(( $(date +%s) - t0 )) s in all, $(nproc) cores"
[ "$fail" -eq 0 ]
