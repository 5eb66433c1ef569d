#!/usr/bin/env bash
# Build the IQ4_XS matrix-vector harness and run compute-sanitizer, checks and timing.
#
#   bash build-and-run.sh              build, sanitizer (small shapes), full checks, timing
#   bash build-and-run.sh --no-timing  build, sanitizer, full checks (no timing)
#   bash build-and-run.sh --build-only
# env: OUT (results folder, default ./out), NVCC, ARCHS (gencode flags), GGML_SRC (llama.cpp's ggml folder),
#      NO_BASELINE=1 (skip llama.cpp's mmvq baseline), PREBUILT=path (skip the build), SRC=dir (build the harness
#      files there, default here; ab.sh builds an older commit's copy), BIN=path (the binary, default build/mmv_iq4xs),
#      NO_SANITIZER=1, NO_CEILING=1 (skip read_ceiling: the read-only ceiling at the same sizes, plain vs PDL launches)
set -euo pipefail
cd "$(dirname "$0")"
MODE=${1:-full}
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT" build
NVCC=${NVCC:-nvcc}
ARCHS=${ARCHS:-"-gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_90,code=sm_90"}
FLAGS="-O3 -std=c++17 $ARCHS"
LINK="-Xcompiler -static-libstdc++ -Xcompiler -static-libgcc"
# llama.cpp's ggml for the baseline: vendor/llama.cpp here, else (on the GPU host, where vendor/llama.cpp is not
# carried) the pinned source from .carry/llama-src.tgz, unpacked unpatched into /tmp.
G=${GGML_SRC:-../llama.cpp/ggml}
if [ ! -f "$G/src/ggml-cuda/mmvq.cu" ] && [ -f ../../.carry/llama-src.tgz ]; then
    mkdir -p /tmp/airavata-llama-src
    [ -f /tmp/airavata-llama-src/llama.cpp/ggml/src/ggml-cuda/mmvq.cu ] || tar xzf ../../.carry/llama-src.tgz -C /tmp/airavata-llama-src
    G=/tmp/airavata-llama-src/llama.cpp/ggml
fi

if [ -n "${PREBUILT:-}" ]; then
    BIN=$PREBUILT
else
    t0=$(date +%s)
    defs="" objs=""
    if [ "${NO_BASELINE:-0}" != 1 ] && [ -f "$G/src/ggml-cuda/mmvq.cu" ]; then
        # llama.cpp's own mul_mat_vec_q<IQ4_XS> from the pinned source, for a same-card baseline
        $NVCC $FLAGS -I$G/include -I$G/src -I$G/src/ggml-cuda -c baseline_ggml.cu -o build/baseline_ggml.o &
        bpid=$!
        defs="-DWITH_GGML_BASELINE" objs="build/baseline_ggml.o"
    fi
    BIN=${BIN:-build/mmv_iq4xs}
    $NVCC $FLAGS -Xptxas -v $defs -c "${SRC:-.}/mmv_iq4xs.cu" -o "$BIN.o" 2> "$BIN.ptxas.log" || { cat "$BIN.ptxas.log"; exit 1; }
    if [ -n "$objs" ]; then wait $bpid; fi
    $NVCC $FLAGS $LINK "$BIN.o" $objs -o "$BIN"
    cp "$BIN.ptxas.log" "$OUT/ptxas.log" 2>/dev/null || true
    echo "build: $(( $(date +%s) - t0 )) s"
fi
[ "$MODE" = "--build-only" ] && exit 0

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt" || true

if [ "${NO_CEILING:-0}" != 1 ] && [ "$MODE" != "--no-timing" ]; then
    # ~25 s: what one kernel that only reads these matrices reaches, launched plain and with PDL (read_ceiling.cu)
    $NVCC $FLAGS $LINK read_ceiling.cu -o build/read_ceiling
    compute-sanitizer --tool memcheck --error-exitcode 9 build/read_ceiling --check > "$OUT/read_ceiling-memcheck.log" 2>&1 \
        && echo "read_ceiling memcheck: clean" || { echo "read_ceiling memcheck: FAILED (rc=$?)"; tail -20 "$OUT/read_ceiling-memcheck.log"; }
    build/read_ceiling 2>&1 | tee "$OUT/read_ceiling.txt"
fi

if [ "${NO_SANITIZER:-0}" != 1 ]; then
    # small shapes, every variant and N = 1..8, no timing
    compute-sanitizer --tool memcheck --error-exitcode 9 "$BIN" --check > "$OUT/memcheck.log" 2>&1 \
        && echo "memcheck: clean" || { echo "memcheck: FAILED (rc=$?)"; tail -30 "$OUT/memcheck.log"; }
    compute-sanitizer --tool racecheck --error-exitcode 9 "$BIN" --check > "$OUT/racecheck.log" 2>&1 \
        && echo "racecheck: clean" || { echo "racecheck: FAILED (rc=$?)"; tail -30 "$OUT/racecheck.log"; }
fi

if [ "$MODE" = "--no-timing" ]; then
    "$BIN" --quick 2>&1 | tee "$OUT/run.log"
    exit 0
fi
"$BIN" 2>&1 | tee "$OUT/run.log"

# hardware counters for the best variant on 11008x4096, N=1 and N=8 (and ggml's kernel)
if [ "${NO_NCU:-0}" != 1 ] && command -v ncu > /dev/null; then
    for n in 1 8; do
        cfg=$(awk -v n=$n '$1=="11008x4096" && $3==n {print $4}' "$OUT/run.log" | tail -1)
        [ -z "$cfg" ] && continue
        case "$cfg" in D.*) echo "ncu: best at N=$n is $cfg (v3); --profile takes T-variants only"; continue ;; esac
        set -- $(echo "$cfg" | sed -E 's/T([0-9]+)\.W([0-9]+)\.U([0-9]+)\.S([0-9]+)/\1 \2 \3 \4/')
        timeout 60 ncu --clock-control none --section SpeedOfLight --section Occupancy --section SchedulerStats \
            --section WarpStateStats --kernel-name regex:'mmv_iq4xs_kernel|mul_mat_vec_q' \
            "$BIN" --profile "$1" "$2" "$3" "$4" 11008 4096 $n > "$OUT/ncu_N$n.txt" 2>&1 || true
        grep -E "mmv_iq4xs_kernel|mul_mat_vec_q|DRAM Throughput|Memory Throughput|Duration|Achieved Occupancy|Issue Slots Busy|No Eligible|Registers Per|Theoretical Occ|Stall" "$OUT/ncu_N$n.txt" | head -30
    done
fi
