#!/usr/bin/env bash
# Build the decode-attention harness and run compute-sanitizer (memcheck, racecheck on --check --small),
# the checks and the timing grid; then llama.cpp's kernel on the same grid (stock_attn_perf.sh) unless
# NO_STOCK=1. Results in OUT (default ./out-attn).
set -euo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-$PWD/out-attn}
mkdir -p "$OUT" build
ARCHS=${ARCHS:-"-gencode=arch=compute_90a,code=sm_90a"}
if [ "${NO_STOCK:-0}" != 1 ]; then
  bash stock_attn_perf.sh "$OUT" > "$OUT/stock.txt" 2>&1 &
  stock=$!
fi
nvcc -O3 -std=c++17 $ARCHS -Xptxas -v -lineinfo attn_decode.cu -o build/attn_decode 2> "$OUT/ptxas-attn.log" \
  || { cat "$OUT/ptxas-attn.log"; exit 1; }
grep -E "registers|spill" "$OUT/ptxas-attn.log" | sed -E 's/ptxas info *: //' | sort | uniq -c | head -20
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv | tee "$OUT/nvidia-smi.txt"
if [ "${NO_SANITIZER:-0}" != 1 ]; then
  compute-sanitizer --tool memcheck --error-exitcode 9 build/attn_decode --check --small > "$OUT/memcheck.log" 2>&1 \
    && echo "memcheck: clean" || { echo "memcheck: FAILED"; tail -20 "$OUT/memcheck.log"; }
  compute-sanitizer --tool racecheck --error-exitcode 9 build/attn_decode --check --small > "$OUT/racecheck.log" 2>&1 \
    && echo "racecheck: clean" || { echo "racecheck: FAILED"; tail -20 "$OUT/racecheck.log"; }
fi
build/attn_decode 2>&1 | tee "$OUT/attn.txt" | grep -v "^check .* ok$"
if [ "${NO_STOCK:-0}" != 1 ]; then wait $stock || true; cat "$OUT/stock.txt"; fi
