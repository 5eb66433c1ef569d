#!/usr/bin/env bash
# Session 24's kernel changes (compile-checked only) measured in four device calls of under 10 minutes each, run
# back to back on one warm machine (phase 1's ggml build and GGUF stay for phases 3 and 4). From the repository root:
#   bash vendor/airavata-cuda/next-lease.sh 1|2|3|4
# carrying .carry/llama-src.tgz, .carry/bin and vendor/airavata-cuda/ab-base (made here first:
# `bash vendor/airavata-cuda/ab.sh --prepare ce5d45f`, the commit before the changes).
# Phase 1 (~9 min): in the background the ggml-cuda + llama-batched-bench build (gpu-bench.sh buildmg) and, niced,
#   the synthetic 7B GGUF (synth gguf); meanwhile the many-column harness: the A/B against ab-base (ab.sh mmm), the
#   checks of the 2-stage tiles (run-mmm.sh --quick, no sanitizer), memcheck on the small shapes, and ncu's profile
#   of ggml's 64-column tile with its source page (profile-mmm.sh QUICK=1).
# Phase 2 (~7 min): the matvec harness (build-and-run.sh: sanitizer, checks against llama.cpp's mmvq output, timing
#   beside mmvq), then its A/B against ab-base (ab.sh mmv).
# Phase 3 (~7 min): llama-batched-bench S_TG at B = 8, 16 and 64 with kernel sets stock / ours / oursmm9 (ours
#   against oursmm9 isolates the many-column kernel), then the fused-QKV file against the separate one with stock
#   kernels at B = 1, 8, 64 (gpu-bench.sh fuseqkv: issue 23's one-QKV-matmul item, never measured).
# Phase 4 (~8 min): test-backend-ops MUL_MAT against the CPU backend and compute-sanitizer memcheck, kernel set
#   oursmm9 (the many-column kernel from 9 columns).
# Everything lands in /tmp/next-lease-<phase> and is packed into $OUT/next-lease-<phase>.tgz (a call returns few files).
set -uo pipefail
cd "$(dirname "$0")/../.."
phase=${1:?usage: next-lease.sh 1|2|3|4}
P=/tmp/next-lease-$phase
RES=/tmp/next-lease-res  # gpu-bench.sh's OUT, shared by the phases
mkdir -p "$P" "$RES"
pack() { tar czf "${OUT:-/tmp}/next-lease-$phase.tgz" -C /tmp "next-lease-$phase" && ls -l "${OUT:-/tmp}/next-lease-$phase.tgz"; }
trap pack EXIT
H=vendor/airavata-cuda
case $phase in
  1)
    ( timeout 420 env OUT=$RES BUILD_TARGETS="ggml-cuda llama-batched-bench" scripts/gpu-bench.sh buildmg \
        > "$P/build.txt" 2>&1; echo "build rc=$?" >> "$P/build.txt" ) &
    b1=$!
    ( timeout 200 nice -n 5 env OUT=$RES scripts/gpu-bench.sh synth gguf > "$P/synth-gguf.txt" 2>&1
      echo "synth gguf rc=$?" >> "$P/synth-gguf.txt" ) &
    b2=$!
    ( cd $H && OUT=$P/ab timeout 240 bash ab.sh mmm > "$P/ab.log" 2>&1; echo "ab rc=$?" >> "$P/ab.log" )
    # ab.sh built this tree's harness as build/mmm_iq4xs: the checks, memcheck and the profile run that binary
    ( cd $H && MMM_ONLY=.S2.Za OUT=$P/checks NO_SANITIZER=1 PREBUILT=build/mmm_iq4xs timeout 180 bash run-mmm.sh --quick \
        > "$P/checks.log" 2>&1
      echo "checks rc=$?" >> "$P/checks.log" )
    ( cd $H && MMM_ONLY=.S2.Za timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 build/mmm_iq4xs --check \
        > "$P/memcheck.log" 2>&1; echo "memcheck rc=$?" >> "$P/memcheck.log" )
    ( cd $H && QUICK=1 OUT=$P/profile PREBUILT=build/mmm_iq4xs timeout 150 bash profile-mmm.sh > "$P/profile.log" 2>&1
      echo "profile rc=$?" >> "$P/profile.log" )
    wait $b1 $b2
    cp "$RES/build.log" "$P/" 2>/dev/null
    tail -3 "$P"/ab/ab.txt "$P"/checks.log "$P"/memcheck.log "$P"/build.txt "$P"/synth-gguf.txt 2>/dev/null
    ;;
  2)
    ( cd $H && OUT=$P/mmv NO_NCU=1 NO_CEILING=1 ARCHS="-gencode=arch=compute_90a,code=sm_90a" timeout 300 \
        bash build-and-run.sh > "$P/mmv.log" 2>&1; echo "mmv rc=$?" >> "$P/mmv.log" )
    ( cd $H && OUT=$P/ab-mmv NEW_CSV=$P/mmv/timings.csv timeout 270 bash ab.sh mmv > "$P/ab-mmv.log" 2>&1
      echo "ab mmv rc=$?" >> "$P/ab-mmv.log" )
    grep -E "memcheck|racecheck|checks:" "$P/mmv.log"; tail -3 "$P/ab-mmv/ab.txt" 2>/dev/null
    ;;
  3)
    timeout 240 env OUT=$RES MMV_B="8 16 64" MMV_KERNELS="stock ours oursmm9" MMV_REPS=1 scripts/gpu-bench.sh mmvbb \
      > "$P/mmvbb.txt" 2>&1
    echo "mmvbb rc=$?" >> "$P/mmvbb.txt"
    timeout 280 env OUT=$RES FUSE_B="1 8 64" scripts/gpu-bench.sh fuseqkv > "$P/fuseqkv.txt" 2>&1
    echo "fuseqkv rc=$?" >> "$P/fuseqkv.txt"
    cp -r "$RES/mmvbb" "$RES/mmvbb.md" "$RES/fuseqkv" "$P/" 2>/dev/null
    cat "$P/mmvbb.txt"; grep -h "^| *32 " "$P"/fuseqkv/*.md 2>/dev/null
    ;;
  4)
    timeout 330 env OUT=$RES OPS_KERNELS=oursmm9 scripts/gpu-bench.sh mmops > "$P/mmops.txt" 2>&1
    echo "mmops rc=$?" >> "$P/mmops.txt"
    timeout 200 env OUT=$RES SANITIZE_SET=oursmm9 SANITIZE_TOOLS=memcheck scripts/gpu-bench.sh sanitize > "$P/sanitize.txt" 2>&1
    echo "sanitize rc=$?" >> "$P/sanitize.txt"
    cp "$RES"/mmops-*.txt "$RES"/sanitize-*.txt "$P/" 2>/dev/null
    tail -8 "$P/mmops.txt"; grep -E "SUMMARY|rc=" "$P/sanitize.txt"
    ;;
  *) echo "phase 1, 2, 3 or 4"; exit 2 ;;
esac
