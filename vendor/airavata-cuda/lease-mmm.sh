#!/usr/bin/env bash
# The many-column kernel's next lease as two device calls of under 10 minutes, run back to back on one warm machine
# (the ggml build of phase 1 stays for phase 2). Run from the repository root on the device:
#   bash vendor/airavata-cuda/lease-mmm.sh 1    # carry .carry/llama-src.tgz .carry/bin vendor/airavata-cuda/ab-base
#   bash vendor/airavata-cuda/lease-mmm.sh 2    # same carry
# Phase 1 (~9 min): in the background the ggml-cuda + llama-batched-bench build (gpu-bench.sh buildmg) and, niced,
#   the synthetic 7B GGUF (synth gguf); meanwhile the standalone harness: the A/B against the commit in ab-base
#   (ab-mmm.sh; make it here first with `bash vendor/airavata-cuda/ab-mmm.sh --prepare <commit>`), the checks of
#   the 2-stage tiles (run-mmm.sh --quick, no sanitizer), memcheck on the small shapes, and ncu's profile of
#   ggml's 64-column tile (profile-mmm.sh QUICK=1).
# Phase 2 (~6 min): llama-batched-bench S_TG at B = 16 and 64 with kernel sets stock / ours / oursmm9 (ours against
#   oursmm9 isolates the many-column kernel), then test-backend-ops MUL_MAT against the CPU backend with oursmm9.
# Everything lands in /tmp/lease-mmm-<phase> and is packed into $OUT/lease-mmm-<phase>.tgz (a call returns few files).
set -uo pipefail
cd "$(dirname "$0")/../.."
phase=${1:?usage: lease-mmm.sh 1|2}
P=/tmp/lease-mmm-$phase
RES=/tmp/lease-mmm-res  # gpu-bench.sh's OUT, shared by both phases
mkdir -p "$P" "$RES"
pack() { tar czf "${OUT:-/tmp}/lease-mmm-$phase.tgz" -C /tmp "lease-mmm-$phase" && ls -l "${OUT:-/tmp}/lease-mmm-$phase.tgz"; }
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
    ( cd $H && OUT=$P/ab timeout 240 bash ab-mmm.sh > "$P/ab.log" 2>&1; echo "ab rc=$?" >> "$P/ab.log" )
    ( cd $H && MMM_ONLY=.S2.Za OUT=$P/checks NO_SANITIZER=1 timeout 180 bash run-mmm.sh --quick > "$P/checks.log" 2>&1
      echo "checks rc=$?" >> "$P/checks.log" )
    ( cd $H && MMM_ONLY=.S2.Za timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 build/mmm_iq4xs --check \
        > "$P/memcheck.log" 2>&1; echo "memcheck rc=$?" >> "$P/memcheck.log" )
    ( cd $H && QUICK=1 OUT=$P/profile timeout 150 bash profile-mmm.sh > "$P/profile.log" 2>&1
      echo "profile rc=$?" >> "$P/profile.log" )
    wait $b1 $b2
    cp "$RES/build.log" "$P/" 2>/dev/null
    tail -3 "$P"/ab/ab.txt "$P"/checks.log "$P"/memcheck.log "$P"/build.txt "$P"/synth-gguf.txt 2>/dev/null
    ;;
  2)
    timeout 200 env OUT=$RES MMV_B="16 64" MMV_KERNELS="stock ours oursmm9" MMV_REPS=1 scripts/gpu-bench.sh mmvbb \
      > "$P/mmvbb.txt" 2>&1
    echo "mmvbb rc=$?" >> "$P/mmvbb.txt"
    timeout 330 env OUT=$RES OPS_KERNELS=oursmm9 scripts/gpu-bench.sh mmops > "$P/mmops.txt" 2>&1
    echo "mmops rc=$?" >> "$P/mmops.txt"
    cp -r "$RES/mmvbb" "$RES/mmvbb.md" "$RES"/mmops-*.txt "$P/" 2>/dev/null
    cat "$P/mmvbb.txt"; tail -8 "$P/mmops.txt"
    ;;
  *) echo "phase 1 or 2"; exit 2 ;;
esac
