#!/usr/bin/env bash
# GPU-host benchmark, in stages that each fit a 10-minute command:
#
#   scripts/gpu-bench.sh build     # CUDA backend (libggml-cuda.so) + llama.cpp tools, from the pinned source
#   scripts/gpu-bench.sh synth     # random-weight checkpoint with Airavata's exact config (bf16, 3 shards)
#   scripts/gpu-bench.sh gguf      # only our GGUF (reference quantizer, fast) for the serving stages
#   scripts/gpu-bench.sh convert   # ours vs convert_hf_to_gguf.py + llama-quantize IQ4_XS: time, peak RSS
#   scripts/gpu-bench.sh ceilings  # llama-bench pp512/tg128 and llama-batched-bench on our GGUF
#   scripts/gpu-bench.sh serve     # our server and llama-server, same GGUF and slots, swept by `airavata bench`
#   scripts/gpu-bench.sh graphs    # our server with GGML_CUDA_DISABLE_GRAPHS=1 (launch cost per step)
#   scripts/gpu-bench.sh variants  # both servers with --kv-unified, and both with --unique-prompts
#   scripts/gpu-bench.sh oldapp    # transformers + bitsandbytes NF4 on the same checkpoint, 50 new tokens
#   scripts/gpu-bench.sh cudaonly  # only the CUDA backend (libggml-cuda.so), when no llama.cpp tool is needed
#   scripts/gpu-bench.sh soak      # 8-minute soak of our server (64 streams, mixed requests, disconnects) on
#                                  # GPU $SOAK_GPU (default 0): RSS, VRAM, KV and slots every 10 s; checks
#   scripts/gpu-bench.sh calib7b   # default convert of the 7B: calibrated on the GPU (time, peak RSS), and the
#                                  # same without a GPU backend (states what it did)
#
# Inputs (paths relative to the repository root; see BENCHMARKS.md):
#   .carry/llama-src.tgz   the pinned llama.cpp source (scripts/fetch-llama-cpp.sh, trimmed by scripts/pack-carry.sh)
#   .carry/bin/            airavata built with --features dynamic-backends, plus its libggml*/libllama .so files
# Work happens in $WORK (default /tmp/ab); results land in $OUT (or ./bench-out).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${WORK:-/tmp/ab}
OUT=${OUT:-$ROOT/bench-out}
mkdir -p "$WORK" "$OUT"
SRC=$WORK/llama.cpp
BUILD=$WORK/build
BIN=$ROOT/.carry/bin
# Our binary finds its own libggml*/libllama next to it; the tools keep their build RPATH.
AIRAVATA=(env "LD_LIBRARY_PATH=$BIN" "$BIN/airavata")
JOBS=$(nproc)
CKPT=$WORK/synth-airavata
OURS=$WORK/airavata-nf4.gguf
SLOTS=${SLOTS:-64}
CTX_PER_SLOT=${CTX_PER_SLOT:-512}
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }

# Peak RSS (KiB) and wall time of a command, without /usr/bin/time.
measure() {
  python3 - "$@" <<'PY'
import resource, subprocess, sys, time
t = time.time()
rc = subprocess.call(sys.argv[1:])
dt = time.time() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"MEASURE seconds={dt:.2f} peak_rss_kib={rss} rc={rc}")
sys.exit(rc)
PY
}

configure() {
  if [ ! -f "$SRC/CMakeLists.txt" ]; then
    mkdir -p "$WORK" && tar xzf "$ROOT/.carry/llama-src.tgz" -C "$WORK"
  fi
  log "configure"
  cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_BACKEND_DL=ON -DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=ON -DBUILD_SHARED_LIBS=ON \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >"$OUT/cmake.log" 2>&1
}

stage_build() {
  configure
  log "build ggml-cuda and the tools"
  ( time cmake --build "$BUILD" -j "$JOBS" --target ggml-cuda llama-bench llama-batched-bench llama-server llama-quantize llama-perplexity ) >"$OUT/build.log" 2>&1
  tail -4 "$OUT/build.log"
  ls -la "$BUILD/bin" | grep -E "ggml|llama-" | tee -a "$OUT/log.txt"
}

stage_cudaonly() {
  configure
  ( time cmake --build "$BUILD" -j "$JOBS" --target ggml-cuda ) >"$OUT/build.log" 2>&1
  tail -4 "$OUT/build.log"
  # The CPU backends ship with our binary; --backends-dir needs them beside the CUDA one.
  cp "$BIN"/libggml-cpu-*.so "$BUILD/bin/"
  ls -la "$BUILD/bin" | grep -E "ggml" | tee -a "$OUT/log.txt"
}

# The default `convert` of the 7B shape: with the CUDA backend it calibrates on
# the GPU (built-in text, error feedback); without one it says what it did.
stage_calib7b() {
  log "convert 7B, default (calibrated on the GPU)"
  measure "${AIRAVATA[@]}" convert "$CKPT" -o "$WORK/airavata-cal.gguf" --force \
    --backends-dir "$BUILD/bin" 2>&1 | grep -v "^\s*$" | tail -8 | tee -a "$OUT/log.txt"
  log "convert 7B, default, no GPU backend loaded, 2 cores (as a CPU-only box)"
  measure taskset -c 0-1 "${AIRAVATA[@]}" convert "$CKPT" -o "$WORK/airavata-nogpu.gguf" --force \
    2>&1 | grep -v "^\s*$" | tail -4 | tee -a "$OUT/log.txt"
  for f in airavata-cal airavata-nogpu; do
    "${AIRAVATA[@]}" inspect "$WORK/$f.gguf" --json | python3 -c "
import json, sys
m = json.load(sys.stdin)['metadata']
print('$f', {k: v for k, v in m.items() if k.startswith(('airavata.calibration', 'quantize.imatrix', 'general.file_type'))})" | tee -a "$OUT/log.txt"
  done
}

# The same greedy tokens on CPU and CUDA, through our dynamic-backends binary.
stage_cudacheck() {
  local model=${CHECK_MODEL:-$ROOT/.carry/models/stories260K.gguf}
  for ngl in 0 99; do
    "${AIRAVATA[@]}" serve "$model" --port 18090 --parallel 1 --ctx-size 512 --n-gpu-layers $ngl \
       --backends-dir "$BUILD/bin" >"$OUT/cudacheck-$ngl.log" 2>&1 &
    local pid=$!
    wait_http http://127.0.0.1:18090/health
    curl -s http://127.0.0.1:18090/info | python3 -c "import json,sys; i=json.load(sys.stdin); print('devices', i['model'].get('devices'), 'offload', i['model'].get('gpu_offload'))" | tee -a "$OUT/log.txt"
    curl -s http://127.0.0.1:18090/generate -H 'content-type: application/json' \
       -d '{"prompt": "", "raw": true, "max_new_tokens": 100, "temperature": 0}' >"$OUT/greedy-ngl$ngl.json"
    kill $pid; wait $pid 2>/dev/null || true
  done
  python3 - "$OUT/greedy-ngl0.json" "$OUT/greedy-ngl99.json" <<'PY' | tee -a "$OUT/log.txt"
import json, sys
a, b = (json.load(open(p))["generated_text"] for p in sys.argv[1:])
print("CPU  :", a[:120].replace("\n", " "))
print("CUDA :", b[:120].replace("\n", " "))
print("greedy CPU == CUDA:", a == b, "(chars", len(a), len(b), ")")
PY
}

stage_synth() {
  if [ ! -f "$CKPT/config.json" ]; then
    log "synth 7B"
    measure "${AIRAVATA[@]}" synth "$CKPT" --config airavata --shards 3 | tee -a "$OUT/log.txt"
  fi
  du -sh "$CKPT" | tee -a "$OUT/log.txt"
}

# Just our GGUF for the serving stages, quickly (reference quantizer: the same
# tensor types as the default, so the same kernels and speed).
stage_gguf() {
  if [ ! -f "$OURS" ]; then
    log "ours: airavata convert (nf4, reference) for serving"
    measure "${AIRAVATA[@]}" convert "$CKPT" -o "$OURS" --quantizer reference -q | tee "$OUT/convert-ours-ref.txt"
  fi
}

stage_convert() {
  log "ours: airavata convert (nf4, search)"
  measure "${AIRAVATA[@]}" convert "$CKPT" -o "$OURS" --force -q | tee "$OUT/convert-ours.txt"
  "${AIRAVATA[@]}" --version | tee -a "$OUT/convert-ours.txt"
  if [ -n "${WITH_REFERENCE:-}" ]; then
    log "ours: airavata convert (nf4, reference)"
    measure "${AIRAVATA[@]}" convert "$CKPT" -o "$WORK/airavata-nf4-ref.gguf" --quantizer reference --force -q | tee "$OUT/convert-ours-ref.txt"
  fi
  if [ -n "${SKIP_LLAMACPP:-}" ]; then ls -la "$WORK"/*.gguf | tee -a "$OUT/log.txt"; return; fi
  log "llama.cpp: convert_hf_to_gguf.py --outtype f16"
  PYTHONPATH="$SRC/gguf-py" measure python3 "$SRC/convert_hf_to_gguf.py" "$CKPT" --outtype f16 --outfile "$WORK/f16.gguf" >"$OUT/convert-py.log" 2>&1 || true
  grep MEASURE "$OUT/convert-py.log" | tee "$OUT/convert-llamacpp-py.txt"
  log "llama.cpp: llama-quantize IQ4_XS"
  measure "$BUILD/bin/llama-quantize" "$WORK/f16.gguf" "$WORK/llamacpp-iq4xs.gguf" IQ4_XS "$JOBS" >"$OUT/quantize.log" 2>&1 || true
  grep MEASURE "$OUT/quantize.log" | tee "$OUT/convert-llamacpp-quantize.txt"
  ls -la "$WORK"/*.gguf | tee -a "$OUT/log.txt"
}

stage_ceilings() {
  log "llama-bench pp512/tg128"
  "$BUILD/bin/llama-bench" -m "$OURS" -ngl 99 -p 512 -n 128 -r 3 -o md | tee "$OUT/llama-bench.md"
  log "llama-batched-bench"
  "$BUILD/bin/llama-batched-bench" -m "$OURS" -ngl 99 -c $((SLOTS * CTX_PER_SLOT)) -b 2048 -ub 512 \
    -npp 32 -ntg 128 -npl 1,4,16,32,64 2>&1 | grep -E "^\|" | tee "$OUT/batched-bench.md"
  log "llama-batched-bench, unified KV"
  "$BUILD/bin/llama-batched-bench" -m "$OURS" -ngl 99 -c $((SLOTS * CTX_PER_SLOT)) -b 2048 -ub 512 -kvu \
    -npp 32 -ntg 128 -npl 1,4,16,32,64 2>&1 | grep -E "^\|" | tee "$OUT/batched-bench-kvu.md"
  log "greedy CPU vs CUDA on the same model"
  "${AIRAVATA[@]}" --version | tee -a "$OUT/log.txt"
}

wait_http() { for _ in $(seq 1 300); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 1; done; return 1; }

# One server run swept by `airavata bench`: serve_ours LABEL [serve flags...] / serve_llama LABEL [flags...].
# Extra bench flags (e.g. --unique-prompts) come from BENCH_FLAGS.
sweep() {
  local label=$1 port=$2 api=$3
  "${AIRAVATA[@]}" bench --url "http://127.0.0.1:$port" --api "$api" --concurrency "${CONC:-1,4,16,32,64}" \
     --max-tokens 128 --prompt-tokens 32 ${BENCH_FLAGS:-} --label "$label" --json "$OUT/bench-$label.json" | tee "$OUT/bench-$label.md"
}
serve_ours() {
  local label=$1; shift
  log "our server: $label ($*)"
  "${AIRAVATA[@]}" serve "$OURS" --port 18080 --parallel "$SLOTS" --ctx-size $((SLOTS * CTX_PER_SLOT)) \
     --backends-dir "$BUILD/bin" "$@" >"$OUT/server-$label.log" 2>&1 &
  local pid=$!
  wait_http http://127.0.0.1:18080/health
  sweep "$label" 18080 generate
  if [ -n "${WITH_OLDAPP:-}" ]; then
    "${AIRAVATA[@]}" bench --url http://127.0.0.1:18080 --scenario old-app --requests 20 --json "$OUT/oldapp-$label.json" | tee "$OUT/oldapp-$label.md"
  fi
  kill $pid; wait $pid 2>/dev/null || true
}
serve_llama() {
  local label=$1; shift
  log "llama-server: $label ($*)"
  "$BUILD/bin/llama-server" -m "$OURS" -ngl 99 --port 18081 -np "$SLOTS" -c $((SLOTS * CTX_PER_SLOT)) "$@" >"$OUT/server-$label.log" 2>&1 &
  local pid=$!
  wait_http http://127.0.0.1:18081/health
  sweep "$label" 18081 openai-completions
  kill $pid; wait $pid 2>/dev/null || true
}

stage_serve() {
  WITH_OLDAPP=1 serve_ours ours
  serve_llama llama-server
  "${AIRAVATA[@]}" bench --compare "$OUT/bench-ours.json" "$OUT/bench-llama-server.json" --svg "$OUT/bench.svg" | tee "$OUT/bench-compare.md"
}

# Our server with ggml-cuda's CUDA graphs off: how much of a step is kernel launches.
stage_graphs() {
  GGML_CUDA_DISABLE_GRAPHS=1 CONC=1,64 serve_ours ours-no-cuda-graphs
}

# Variants: one KV stream for all slots (both servers), and prompts no cache can serve.
stage_variants() {
  serve_ours ours-kvu --kv-unified
  serve_llama llama-server-kvu --kv-unified
  BENCH_FLAGS=--unique-prompts serve_ours ours-unique
  BENCH_FLAGS=--unique-prompts serve_llama llama-server-unique
  "${AIRAVATA[@]}" bench --compare "$OUT"/bench-*.json | tee "$OUT/bench-all.md"
}

# Soak: scripts/soak.py drives our server for SOAK_SECS (default 480) at 64 streams with the
# Airavata prompt set (.carry/prompts.jsonl); 2048 context per slot so every prompt fits.
stage_soak() {
  local gpu=${SOAK_GPU:-0} secs=${SOAK_SECS:-480} port=18095
  log "soak: ${secs} s, 64 streams, GPU $gpu"
  CUDA_VISIBLE_DEVICES=$gpu "${AIRAVATA[@]}" serve "$OURS" --port $port --parallel 64 --ctx-size $((64 * 2048)) \
     --backends-dir "$BUILD/bin" >"$OUT/server-soak.log" 2>&1 &
  local pid=$!
  wait_http http://127.0.0.1:$port/health
  local rc=0
  python3 "$ROOT/scripts/soak.py" --url http://127.0.0.1:$port --pid $pid --gpu "$gpu" --duration "$secs" \
     --concurrency 64 --prompts "$ROOT/.carry/prompts.jsonl" --out "$OUT" >"$OUT/soak.txt" 2>&1 || rc=$?
  tail -12 "$OUT/soak.txt" | tee -a "$OUT/log.txt"
  kill $pid; wait $pid 2>/dev/null || true
  log "soak exit $rc"
}

stage_oldapp() {
  # bitsandbytes is not installed there: .carry/bnb-site.zip is its wheel's
  # contents trimmed to the CUDA 13 library (scripts/pack-carry.sh).
  if [ -f "$ROOT/.carry/bnb-site.zip" ]; then
    mkdir -p /tmp/site && (cd /tmp/site && python3 -c "import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extractall('.')" "$ROOT/.carry/bnb-site.zip")
    export PYTHONPATH=/tmp/site
  fi
  python3 "$ROOT/scripts/old_app_bench.py" "$CKPT" --new-tokens 50 --requests 10 | tee "$OUT/oldapp-python.txt"
}

for s in "$@"; do "stage_$s"; done
