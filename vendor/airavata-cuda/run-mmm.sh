#!/usr/bin/env bash
# Build the IQ4_XS many-column (batch 16-256) tensor-core harness (mmm_iq4xs.cu) and run compute-sanitizer
# (memcheck, racecheck on --check), the full checks and the timing table. Results in OUT (default ./out-mmm).
# Arguments go to the harness (--time-only, --quick); MMM_ONLY=substring narrows the variants (racecheck over all
# of them takes more than 70 s on an H100). --build-only: build and stop. SRC=dir builds the harness files there
# (default here; ab.sh builds an older commit's copy), BIN=path names the binary (default build/mmm_iq4xs),
# PREBUILT=path skips the build and runs that binary.
set -euo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-$PWD/out-mmm}
mkdir -p "$OUT" build
ARCHS=${ARCHS:-"-gencode=arch=compute_90a,code=sm_90a"}
BIN=${PREBUILT:-${BIN:-build/mmm_iq4xs}}
if [ -z "${PREBUILT:-}" ]; then
  nvcc -O3 -std=c++17 $ARCHS -Xptxas -v -lineinfo -Xcompiler -static-libstdc++ -Xcompiler -static-libgcc \
    "${SRC:-.}/mmm_iq4xs.cu" -o "$BIN" 2> "$OUT/ptxas-mmm.log" || { cat "$OUT/ptxas-mmm.log"; exit 1; }
  grep -E "registers|spill" "$OUT/ptxas-mmm.log" | sed -E 's/ptxas info *: //' | sort | uniq -c | head -20
fi
[ "${1:-}" = --build-only ] && exit 0
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv | tee "$OUT/nvidia-smi.txt"
if [ "${NO_SANITIZER:-0}" != 1 ]; then
  compute-sanitizer --tool memcheck --error-exitcode 9 "$BIN" --check > "$OUT/memcheck.log" 2>&1 \
    && echo "memcheck: clean" || { echo "memcheck: FAILED"; tail -20 "$OUT/memcheck.log"; }
  compute-sanitizer --tool racecheck --error-exitcode 9 "$BIN" --check > "$OUT/racecheck.log" 2>&1 \
    && echo "racecheck: clean" || { echo "racecheck: FAILED"; tail -20 "$OUT/racecheck.log"; }
fi
"$BIN" "$@" 2>&1 | tee "$OUT/mmm.txt"
