#!/usr/bin/env bash
# The many-column kernel's timing (both stagings, back-to-back launches) and an ncu profile of one launch of the
# tiles ggml uses (4096 x 4096 at 16 and 64 columns). Results in OUT (default ./out-mmm-profile). ~4 minutes on an
# H100. QUICK=1: only the shipped staging, and only the 64-column profile (~2 minutes).
set -uo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-$PWD/out-mmm-profile}
mkdir -p "$OUT" build
ARCHS=${ARCHS:-"-gencode=arch=compute_90a,code=sm_90a"}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv > "$OUT/nvidia-smi.txt"
QUICK=${QUICK:-0}
stagings="1 0"; profiles=("F2.T2.M4.N1.K1.S2 16" "F8.T2.M2.N1.K2.S2 64")
if [ "$QUICK" = 1 ]; then stagings=1; profiles=("F8.T2.M2.N1.K2.S2 64"); fi
for fs in $stagings; do
  nvcc -O3 -std=c++17 $ARCHS -lineinfo -DMMM_FIXED_STAGING=$fs -Xcompiler -static-libstdc++ -Xcompiler -static-libgcc \
    mmm_iq4xs.cu -o build/mmm_iq4xs_staging$fs > "$OUT/nvcc-staging$fs.log" 2>&1 &
done
wait
timeout 150 build/mmm_iq4xs_staging1 --time-only > "$OUT/mmm.txt" 2>&1; echo "rc=$?" >> "$OUT/mmm.txt"
if [ "$QUICK" != 1 ]; then
  timeout 100 build/mmm_iq4xs_staging0 --time-only > "$OUT/mmm-staging0.txt" 2>&1; echo "rc=$?" >> "$OUT/mmm-staging0.txt"
fi
# one launch each (launch 0 is the harness's probe; 5 is a timed one, on rotating weights)
for v in "${profiles[@]}"; do
  set -- $v
  MMM_ONLY=$1 MMM_TIME_N=$2 MMM_TIME_SHAPE=4096x4096 timeout 120 ncu --clock-control none --set full \
    -k regex:mmm_iq4xs_kernel --launch-skip 5 --launch-count 1 build/mmm_iq4xs_staging1 --time-only \
    > "$OUT/ncu-$1-N$2.txt" 2>&1
  echo "rc=$?" >> "$OUT/ncu-$1-N$2.txt"
done
