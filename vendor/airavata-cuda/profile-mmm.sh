#!/usr/bin/env bash
# The many-column kernel's timing (run-mmm.sh --time-only: back-to-back launches, no sanitizer) and an ncu
# profile of one launch of the tiles ggml uses (4096 x 4096 at 16 and 64 columns). Results in OUT (default
# ./out-mmm-profile). ~2 minutes on an H100. QUICK=1: only the 64-column profile (~1 minute).
# Per profile: ncu-<variant>-N<cols>.txt (the details page), .sass.csv (the source page: one row per SASS
# instruction with its executed count, stall samples and shared-memory wavefronts) and .summary.txt
# (ncu_source_summary.py: where the stall samples and the excess wavefronts are). KEEP_REP=1 keeps the report;
# PREBUILT=path profiles that binary instead of building one (run-mmm.sh).
set -uo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-$PWD/out-mmm-profile}
mkdir -p "$OUT"
profiles=("F2.T2.M4.N1.K1.S2 16" "F8.T2.M2.N1.K2.S2 64")
if [ "${QUICK:-0}" = 1 ]; then profiles=("F8.T2.M2.N1.K2.S2 64"); fi
OUT=$OUT NO_SANITIZER=1 timeout 200 bash run-mmm.sh --time-only > "$OUT/run-mmm.log" 2>&1
echo "rc=$?" >> "$OUT/run-mmm.log"
# one launch each (launch 0 is the harness's probe; 5 is a timed one, on rotating weights)
for v in "${profiles[@]}"; do
  set -- $v
  base="$OUT/ncu-$1-N$2"
  MMM_ONLY=$1 MMM_TIME_N=$2 MMM_TIME_SHAPE=4096x4096 timeout 120 ncu --clock-control none --set full -f -o "$base" \
    -k regex:mmm_iq4xs_kernel --launch-skip 5 --launch-count 1 "${PREBUILT:-build/mmm_iq4xs}" --time-only > "$base.log" 2>&1
  echo "rc=$?" >> "$base.log"
  ncu --import "$base.ncu-rep" --page details > "$base.txt" 2>&1
  ncu --import "$base.ncu-rep" --page source --csv --print-source sass > "$base.sass.csv" 2>&1
  python3 ncu_source_summary.py "$base.sass.csv" > "$base.summary.txt" 2>&1
  [ "${KEEP_REP:-0}" = 1 ] || rm -f "$base.ncu-rep"
done
