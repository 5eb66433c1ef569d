#!/usr/bin/env bash
# GPU-host benchmark, in stages that each fit a 10-minute command:
#
#   scripts/gpu-bench.sh build     # CUDA backend (libggml-cuda.so) + llama.cpp tools, from the pinned source
#   scripts/gpu-bench.sh synth     # random-weight checkpoint with Airavata's exact config (bf16, 3 shards)
#   scripts/gpu-bench.sh gguf      # only our GGUF (reference quantizer, fast) for the serving stages
#   scripts/gpu-bench.sh convert   # ours vs convert_hf_to_gguf.py + llama-quantize IQ4_XS: time, peak RSS
#   scripts/gpu-bench.sh ceilings  # llama-bench pp512/tg128 and llama-batched-bench on our GGUF
#   scripts/gpu-bench.sh serve     # our server and llama-server, same GGUF and slots, swept by `airavata bench`
#   scripts/gpu-bench.sh serveours # only our server's sweep and the old-app scenario
#   scripts/gpu-bench.sh graphs    # our server with GGML_CUDA_DISABLE_GRAPHS=1 (launch cost per step)
#   scripts/gpu-bench.sh variants  # both servers with --kv-unified, and both with --unique-prompts
#   scripts/gpu-bench.sh oldapp    # transformers + bitsandbytes NF4 on the same checkpoint, 50 new tokens
#   scripts/gpu-bench.sh cudaonly  # only the CUDA backend (libggml-cuda.so), when no llama.cpp tool is needed
#   scripts/gpu-bench.sh soak      # 8-minute soak of our server (64 streams, mixed requests, disconnects) on
#                                  # GPU $SOAK_GPU (default 0): RSS, VRAM, KV and slots every 10 s; checks
#   scripts/gpu-bench.sh calib7b   # default convert of the 7B: calibrated on the GPU (time, peak RSS), and the
#                                  # same without a GPU backend (states what it did)
#   scripts/gpu-bench.sh fuseqkv   # issue 23: --fuse-qkv file vs the separate one, llama-batched-bench S_TG at B 1/8/64
#   scripts/gpu-bench.sh calibcpu  # the default convert of the 7B on CPU cores alone, cut after CALIB_CPU_SECS:
#                                  # its calibration plan and the measured pace per chunk
#   scripts/gpu-bench.sh buildmg   # only the CUDA backend and llama-batched-bench (for multigpu/padsweep)
#   scripts/gpu-bench.sh multigpu  # 64 and 128 streams: --devices 0 (one engine) vs --devices all (one per GPU)
#   scripts/gpu-bench.sh padsweep  # 64/128/256 streams on one GPU, 256 slots: decode padding off vs on, CUDA
#                                  # graph captures per step, and llama-batched-bench S_TG at the same B
#   scripts/gpu-bench.sh mgproof   # issue 11's two-GPU proof: one engine at 64 streams, two engines at 128,
#                                  # llama-server -sm layer on both GPUs at 128 (same total slots)
#   scripts/gpu-bench.sh prefixroute # two engines, prompts in groups sharing long prefixes: --routing prefix
#                                  # vs least-loaded (prompt-cache hit rate, TTFT)
#   scripts/gpu-bench.sh steady    # batched ceiling at steady state: 64/128/256 streams with 8 requests per
#                                  # stream on one GPU vs llama-batched-bench S_TG (needs buildmg, synth, gguf)
#   scripts/gpu-bench.sh mixed     # 48 greedy + 16 sampled streams on GPU 0, --backend-greedy on vs off
#                                  # (cost of attaching/detaching backend samplers as requests alternate)
#   scripts/gpu-bench.sh profile   # issue 23: ncu per-kernel time, bytes and FLOP/s of a decode step at B = 1..256
#                                  # (PROFILE_B; AIRAVATA_CUDA_KERNELS=ours for our kernels, else llama.cpp's;
#                                  # PROFILE_NPP/PROFILE_KV prompt and cache, PROFILE_KERNELS a name regex)
#   scripts/gpu-bench.sh attncheck # issue 24: same greedy answers with our decode attention and with stock (q8_0 KV, 32 seqs)
#   scripts/gpu-bench.sh attnops   # issue 24: test-backend-ops FLASH_ATTN_EXT, CUDA vs CPU, at our kernel's shapes (both kernel sets)
#   scripts/gpu-bench.sh mmvbb     # issue 23: llama-batched-bench S_TG at B 1-16, stock vs our IQ4_XS matvec (default, from 1 column, up to 16)
#   scripts/gpu-bench.sh sanitize  # compute-sanitizer memcheck + racecheck over test-backend-ops' small cases of both of our kernels
#   scripts/gpu-bench.sh smol      # SmolLM2 nf4 from the .carry-m1.. parts of scripts/pack-smol-carry.sh (sha256-checked)
#   scripts/gpu-bench.sh mmkld     # issue 23: SmolLM2 nf4, llama-perplexity at 16/8/5-token micro-batches, our matvec's logits vs stock's (KLD)
#   scripts/gpu-bench.sh mmops     # issue 23: test-backend-ops MUL_MAT IQ4_XS at 1..257 columns, CUDA vs CPU (each of OPS_KERNELS)
#   scripts/gpu-bench.sh quantcpu  # CPU quantizer rows/s, .carry/quant-before vs .carry/quant-after (bench
#                                  # binaries), interleaved, one pinned core of the host
#   scripts/gpu-bench.sh attnsweep # attention at the lengths users have: KV f16/q8_0/q4_0 x B 1/16/64/128 x
#                                  # prompt 32/512/1024/2048/4096 tokens, llama-batched-bench (-fa on -ctk/-ctv)
#                                  # with llama.cpp's kernels and with ours (ATTN_KERNELS="stock ours", one
#                                  # build) and our server (ATTN_SERVE_KERNELS, default ours; --cache-type-k/-v,
#                                  # bench --prompt-lengths fixed:N) in the same lease; B x context that doesn't fit ATTN_KV_GIB (60) of KV is skipped
#                                  # and said so. Subsets, each one command under 10 minutes: ATTN_KV="f16 q8_0"
#                                  # ATTN_B="1 64" ATTN_NPP="1024" (also ATTN_NTG=64, ATTN_DEVICES=0,
#                                  # ATTN_KV_F16_BYTES=524288 per token, ATTN_DRY=1 prints the plan only).
#                                  # Every call prints the table of all results in $OUT so far
#   scripts/gpu-bench.sh attntable # only that table, from $OUT/attnsweep and $OUT/bench-attn-*.json
#
# Attention sweep, one lease (needs build or buildmg, synth, gguf), e.g.:
#   ATTN_KV=f16 ATTN_NPP="32 512 1024" scripts/gpu-bench.sh attnsweep
#   ATTN_KV=f16 ATTN_NPP="2048 4096" scripts/gpu-bench.sh attnsweep
#   ATTN_KV="q8_0" scripts/gpu-bench.sh attnsweep; ATTN_KV="q4_0" scripts/gpu-bench.sh attnsweep
#
# Multi-GPU round (nvidia-h200-x2), each line one command:
#   scripts/gpu-bench.sh buildmg synth
#   scripts/gpu-bench.sh gguf multigpu
#   scripts/gpu-bench.sh padsweep
#
# Inputs (paths relative to the repository root; see BENCHMARKS.md):
#   .carry/llama-src.tgz   the pinned llama.cpp source (scripts/fetch-llama-cpp.sh, trimmed by scripts/pack-carry.sh)
#   .carry/bin/            airavata built with --features dynamic-backends, plus its libggml*/libllama .so files
# Work happens in $WORK (default /tmp/ab); results land in $OUT (or ./bench-out); BUNDLE_TO packs them into one
# file (the device returns at most 8 files a call; see bundle below).
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
# SERVER_CPUS / CLIENT_CPUS (taskset lists, e.g. "0-15" / "16-31"): our server, llama-server and
# llama-batched-bench run on SERVER_CPUS, the bench client on CLIENT_CPUS, so that the client's 64-256
# streams do not share cores with the engine thread (in production the clients are elsewhere). Unset: no
# pinning.
# (A prefix array, not a function: a server started in the background keeps the pid that `kill` gets.)
PIN_SERVER=(); [ -n "${SERVER_CPUS:-}" ] && PIN_SERVER=(taskset -c "$SERVER_CPUS")
PIN_CLIENT=(); [ -n "${CLIENT_CPUS:-}" ] && PIN_CLIENT=(taskset -c "$CLIENT_CPUS")

# A summary script (on stdin) run with the helpers the summaries share: json, sys, and
# metric(path, name), one unlabelled series of a saved /metrics page (0 when absent).
PY_HELPERS='import json, sys
def metric(path, name):
    for line in open(path):
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0
'
summarize() { python3 -c "$PY_HELPERS$(cat)" "$@"; }

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
  # Our CUDA kernels over the pinned source (on at run time with AIRAVATA_CUDA_KERNELS=ours).
  "$ROOT/scripts/apply-cuda-patches.sh" "$SRC" | tee -a "$OUT/log.txt"
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

# The CPU backends beside the CUDA one (--backends-dir and test-backend-ops's reference need them): a build
# of llama.cpp's tools makes them; a ggml-cuda-only build takes the ones that ship with our binary (.carry/bin).
cpu_backends() {
  compgen -G "$BUILD/bin/libggml-cpu-*.so" >/dev/null && return 0
  compgen -G "$BIN/libggml-cpu-*.so" >/dev/null || { echo "no CPU backend in $BUILD/bin or $BIN" >&2; return 1; }
  cp "$BIN"/libggml-cpu-*.so "$BUILD/bin/"
}

stage_cudaonly() {
  configure
  ( time cmake --build "$BUILD" -j "$JOBS" --target ggml-cuda ) >"$OUT/build.log" 2>&1
  tail -4 "$OUT/build.log"
  cpu_backends
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

# Issue 23's fused QKV: the same GGUF written with --fuse-qkv (one attn_qkv matmul per layer instead of
# three), against the separate file: llama-batched-bench S_TG at FUSE_B (default 1 8 64), both files back to
# back, with llama.cpp's kernels. Needs buildmg, synth, gguf.
stage_fuseqkv() {
  local fused=$WORK/airavata-nf4-qkv.gguf b
  if [ ! -f "$fused" ]; then
    log "ours: airavata convert --fuse-qkv (nf4, reference)"
    measure "${AIRAVATA[@]}" convert "$CKPT" -o "$fused" --quantizer reference --no-calibration --fuse-qkv -q \
      | tee "$OUT/convert-fused.txt"
  fi
  mkdir -p "$OUT/fuseqkv"
  for b in ${FUSE_B:-1 8 64}; do
    for f in "$OURS" "$fused"; do
      local tag; tag=$([ "$f" = "$OURS" ] && echo separate || echo fused)
      log "llama-batched-bench $tag B=$b"
      "$BUILD/bin/llama-batched-bench" -m "$f" -ngl 99 -c $((b * 256)) -b 2048 -ub 512 -npp 32 -ntg 128 -npl "$b" 2>&1 \
        | grep -E "^\|" | tee "$OUT/fuseqkv/bb-$tag-$b.md"
    done
  done
}

# Issue 25 item 6: the default convert of the 7B on this host's CPU cores alone (no GPU backend loaded), cut
# after CALIB_CPU_SECS (default 240): its plan, the first chunks' pace and ETA, from which the whole CPU
# calibration time follows (a full run takes the 15-minute budget, more than one command may).
stage_calibcpu() {
  log "convert 7B, default, no GPU backend, $(nproc) cores, cut after ${CALIB_CPU_SECS:-240} s"
  timeout "${CALIB_CPU_SECS:-240}" "${AIRAVATA[@]}" convert "$CKPT" -o "$WORK/airavata-cpu.gguf" --force \
    2>&1 | tr '\r' '\n' | grep -v "^\s*$" >"$OUT/calibcpu.txt" || true
  grep -E "calibrat|chunk|skipped|Q8_0|temporary" "$OUT/calibcpu.txt" | tail -12 | tee -a "$OUT/log.txt"
  lscpu | grep -E "Model name|^CPU\(s\)" | tee -a "$OUT/log.txt"
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
    # --no-calibration: the serving stages need the default types, not the calibrated rounding (a CPU-only
    # convert of the 7B now calibrates within a 15-minute budget, which this stage must not spend).
    measure "${AIRAVATA[@]}" convert "$CKPT" -o "$OURS" --quantizer reference --no-calibration -q | tee "$OUT/convert-ours-ref.txt"
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
# PROMPT_LENGTHS (a --prompt-lengths spec, e.g. fixed:512 or mix:128-2048) replaces PROMPT_TOKENS.
sweep() {
  local label=$1 port=$2 api=$3
  local lengths=(--prompt-tokens "${PROMPT_TOKENS:-32}")
  [ -n "${PROMPT_LENGTHS:-}" ] && lengths=(--prompt-lengths "$PROMPT_LENGTHS")
  # shellcheck disable=SC2086
  "${PIN_CLIENT[@]}" "${AIRAVATA[@]}" bench --url "http://127.0.0.1:$port" --api "$api" --concurrency "${CONC:-1,4,16,32,64}" \
     --max-tokens "${MAX_TOKENS:-128}" "${lengths[@]}" ${BENCH_FLAGS:-} --label "$label" --json "$OUT/bench-$label.json" | tee "$OUT/bench-$label.md"
}
serve_ours() {
  local label=$1; shift
  log "our server: $label ($*)"
  "${PIN_SERVER[@]}" "${AIRAVATA[@]}" serve "$OURS" --port 18080 --parallel "$SLOTS" --ctx-size $((SLOTS * CTX_PER_SLOT)) \
     --backends-dir "$BUILD/bin" "$@" >"$OUT/server-$label.log" 2>&1 &
  local pid=$!
  wait_http http://127.0.0.1:18080/health
  sweep "$label" 18080 generate
  curl -s http://127.0.0.1:18080/info >"$OUT/info-$label.json" || true
  curl -s http://127.0.0.1:18080/metrics >"$OUT/metrics-$label.txt" || true
  if [ -n "${WITH_OLDAPP:-}" ]; then
    "${AIRAVATA[@]}" bench --url http://127.0.0.1:18080 --scenario old-app --requests 20 --json "$OUT/oldapp-$label.json" | tee "$OUT/oldapp-$label.md"
  fi
  kill $pid; wait $pid 2>/dev/null || true
}
serve_llama() {
  local label=$1; shift
  log "llama-server: $label ($*)"
  "${PIN_SERVER[@]}" "$BUILD/bin/llama-server" -m "$OURS" -ngl 99 --port 18081 -np "$SLOTS" -c $((SLOTS * CTX_PER_SLOT)) "$@" >"$OUT/server-$label.log" 2>&1 &
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

# Only our server's sweep and the old-app scenario (a quick re-check).
stage_serveours() {
  WITH_OLDAPP=1 serve_ours ours
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

stage_buildmg() {
  configure
  # BUILD_TARGETS: e.g. "ggml-cuda llama-server" for mgproof.
  # shellcheck disable=SC2086
  ( time cmake --build "$BUILD" -j "$JOBS" --target ${BUILD_TARGETS:-ggml-cuda llama-batched-bench} ) >"$OUT/build.log" 2>&1
  tail -4 "$OUT/build.log"
  cpu_backends
  nvidia-smi --query-gpu=index,name,memory.total --format=csv | tee -a "$OUT/log.txt"
}

# Output tokens/s of a bench JSON at each concurrency: "c=tok/s ...".
levels() {
  python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r = r[0] if isinstance(r, list) else r
print(" ".join(f"{l['concurrency']}={l['output_tokens_per_s'] or 0:.1f}" for l in r["levels"]))
PY
}

# Data parallel: one engine on GPU 0 vs one engine per GPU (the router splits the
# streams), same slots per engine, same GGUF; the figure is the ratio.
stage_multigpu() {
  local slots=${MG_SLOTS:-128}
  # MG_ONE / MG_ALL (e.g. cpu and cpu,cpu) let the stage be dry-run without GPUs.
  SLOTS=$slots CONC=${MG_CONC:-64,128} serve_ours multigpu-one --devices "${MG_ONE:-0}"
  SLOTS=$slots CONC=${MG_CONC:-64,128} serve_ours multigpu-all --devices "${MG_ALL:-all}"
  python3 - "$OUT/bench-multigpu-one.json" "$OUT/bench-multigpu-all.json" "$OUT/info-multigpu-all.json" <<'PY' | tee "$OUT/multigpu.md"
import json, sys
def load(p):
    r = json.load(open(p)); r = r[0] if isinstance(r, list) else r
    return {l["concurrency"]: l for l in r["levels"]}
one, two = load(sys.argv[1]), load(sys.argv[2])
info = json.load(open(sys.argv[3]))
engines = [(e["engine"], e["device"], e["routed"]) for e in info.get("engines", [])]
print(f"engines with --devices all: {engines}")
print("| streams | 1 engine tok/s | all engines tok/s | ratio | errors 1 / all |")
print("|--:|--:|--:|--:|--:|")
for c in sorted(one):
    a, b = one[c]["output_tokens_per_s"] or 0, two.get(c, {}).get("output_tokens_per_s") or 0
    print(f"| {c} | {a:.1f} | {b:.1f} | {b / a if a else 0:.2f} | {one[c]['errors']} / {two.get(c, {}).get('errors')} |")
PY
}

# Decode padding on one GPU with 256 slots: our server without and with padding
# (llama.cpp's debug log counts CUDA graph captures: "CUDA graph warmup complete"
# = a capture, "warmup reset" = a shape change), then llama-batched-bench at the
# same B on the same GGUF (f16 KV; and q8_0 KV at 256).
stage_padsweep() {
  local slots=${PAD_SLOTS:-256}
  for pad in 0 16; do
    RUST_LOG=info,llama-cpp-2=debug SLOTS=$slots CONC=${PAD_CONC:-64,128,256} serve_ours "pad$pad" --devices "${PAD_DEVICES:-0}" --decode-pad $pad
    local log=$OUT/server-pad$pad.log
    local captures resets reused steps padded
    captures=$(grep -c "CUDA graph warmup complete" "$log" || true)
    resets=$(grep -c "CUDA graph warmup reset" "$log" || true)
    reused=$(grep -c "reused" "$log" || true)
    steps=$(grep -E '^airavata_decode_steps_total ' "$OUT/metrics-pad$pad.txt" | awk '{print $2}')
    padded=$(grep -E '^airavata_engine_padded_tokens_total ' "$OUT/metrics-pad$pad.txt" | awk '{print $2}')
    echo "pad=$pad tok/s: $(levels "$OUT/bench-pad$pad.json") | steps=$steps captures=$captures resets=$resets graph-reused=$reused padded_tokens=$padded" | tee -a "$OUT/padsweep.md"
    python3 -c "import sys; s=float(sys.argv[1] or 0); print(f'pad=$pad captures/step={int(sys.argv[2])/s if s else 0:.4f} resets/step={int(sys.argv[3])/s if s else 0:.4f}')" "${steps:-0}" "$captures" "$resets" | tee -a "$OUT/padsweep.md"
    # Keep the big debug logs out of \$OUT: only the counted lines and the tail.
    grep -vE "CUDA Graph id|reusing previous graph|warmup" "$log" | tail -200 >"$log.tail"; rm -f "$log"
  done
  log "llama-batched-bench f16 KV, B=64,128,256"
  "$BUILD/bin/llama-batched-bench" -m "$OURS" -ngl 99 -c $((slots * CTX_PER_SLOT)) -b 2048 -ub 512 \
    -npp 32 -ntg 128 -npl 64,128,256 2>&1 | grep -E "^\|" | tee "$OUT/batched-bench-256.md"
  log "llama-batched-bench q8_0 KV (flash attention), B=256"
  "$BUILD/bin/llama-batched-bench" -m "$OURS" -ngl 99 -c $((slots * CTX_PER_SLOT)) -b 2048 -ub 512 \
    -fa on -ctk q8_0 -ctv q8_0 -npp 32 -ntg 128 -npl 256 2>&1 | grep -E "^\|" | tee "$OUT/batched-bench-256-q8.md"
  python3 - "$OUT/batched-bench-256.md" "$OUT/bench-pad0.json" "$OUT/bench-pad16.json" <<'PY' | tee -a "$OUT/padsweep.md"
import json, sys
stg = {}
for line in open(sys.argv[1]):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) >= 10 and cells[2].isdigit():
        stg[int(cells[2])] = float(cells[7])  # PP | TG | B | N_KV | T_PP | S_PP | T_TG | S_TG
def load(p):
    r = json.load(open(p)); r = r[0] if isinstance(r, list) else r
    return {l["concurrency"]: l for l in r["levels"]}
off, on = load(sys.argv[2]), load(sys.argv[3])
print("| streams | batched-bench S_TG | ours, no pad | ratio | ours, pad 16 | ratio | ms/step off / on | micro-batches/step off / on |")
print("|--:|--:|--:|--:|--:|--:|--:|--:|")
for c in sorted(off):
    s = stg.get(c, 0)
    a, b = off[c]["output_tokens_per_s"] or 0, on.get(c, {}).get("output_tokens_per_s") or 0
    ea, eb = off[c].get("engine") or {}, on.get(c, {}).get("engine") or {}
    print(f"| {c} | {s:.1f} | {a:.1f} | {a / s if s else 0:.2f} | {b:.1f} | {b / s if s else 0:.2f} | "
          f"{ea.get('total_ms_per_step', 0):.2f} / {eb.get('total_ms_per_step', 0):.2f} | "
          f"{ea.get('micro_batches_per_step', 0):.2f} / {eb.get('micro_batches_per_step', 0):.2f} |")
PY
}

# Issue 11's batched ceiling at steady state: one GPU, 256 slots, each level its own server run with
# STEADY_PER_STREAM (default 8) requests per stream, so the first wave's uncached prompts are a small part
# of the run; then llama-batched-bench S_TG at the same B, same GGUF, f16 KV, for each prompt length of
# STEADY_NPP (default 32; the run's own prompt length makes the attention spans alike, e.g. "32,126" for
# the chat-wrapped /generate prompt). batched-bench runs once per $OUT. Reports generated tok/s, tokens
# processed per step (prompt tokens included) and ms per processed token against batched-bench's.
# STEADY_FLAGS adds serve flags (e.g. --kv-unified, --fill-gaps off) and STEADY_BENCH_FLAGS bench flags
# (e.g. --raw) under STEADY_TAG in the file names.
stage_steady() {
  local slots=${STEADY_SLOTS:-256} per=${STEADY_PER_STREAM:-8}
  local conc=${STEADY_CONC:-64 128 256} npp=${STEADY_NPP:-32}
  for c in $conc; do
    # shellcheck disable=SC2086
    SLOTS=$slots CONC=$c BENCH_FLAGS="--requests $((c * per)) ${STEADY_BENCH_FLAGS:-}" serve_ours "steady${STEADY_TAG:-}$c" \
      --devices "${STEADY_DEVICES:-0}" ${STEADY_FLAGS:-}
  done
  if [ ! -s "$OUT/batched-bench-steady.md" ]; then
    log "llama-batched-bench f16 KV, PP=$npp, B=${conc// /,}"
    "${PIN_SERVER[@]}" "$BUILD/bin/llama-batched-bench" -m "$OURS" -ngl 99 -c $((slots * CTX_PER_SLOT)) -b 2048 -ub 512 \
      -npp "$npp" -ntg 128 -npl "${conc// /,}" 2>&1 | grep -E "^\|" | tee "$OUT/batched-bench-steady.md"
  fi
  python3 - "$OUT" "${STEADY_TAG:-}" $conc <<'PY' | tee "$OUT/steady${STEADY_TAG:-}.md"
import json, sys
out, tag, levels = sys.argv[1], sys.argv[2], [int(c) for c in sys.argv[3:]]
stg = {}  # (PP, B) -> S_TG
for line in open(f"{out}/batched-bench-steady.md"):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) >= 10 and cells[2].isdigit():
        stg[(int(cells[0]), int(cells[2]))] = float(cells[7])  # PP | TG | B | N_KV | T_PP | S_PP | T_TG | S_TG
pps = sorted({pp for pp, _ in stg})
print("| streams | requests | prompt tokens | ours tok/s | " + " | ".join(f"S_TG PP={pp} | ratio" for pp in pps)
      + " | tokens/step | micro-batches/step | dummies/step | graphs reused/step | ms/step | decode / sync / sample ms |")
print("|--:|--:|--:|--:|" + "--:|--:|" * len(pps) + "--:|--:|--:|--:|--:|--:|")
for c in levels:
    r = json.load(open(f"{out}/bench-steady{tag}{c}.json"))
    l = {x["concurrency"]: x for x in r["levels"]}[c]
    e = l.get("engine") or {}
    a = l["output_tokens_per_s"] or 0
    ms, ph = e.get("total_ms_per_step", 0), e.get("ms_per_step") or {}
    cols = " | ".join(f"{stg.get((pp, c), 0):.1f} | **{a / stg[(pp, c)] if stg.get((pp, c)) else 0:.3f}**" for pp in pps)
    print(f"| {c} | {l['ok']} | {l.get('mean_prompt_tokens') or 0:.0f} | {a:.1f} | {cols} | {e.get('tokens_per_step', 0):.1f} | "
          f"{e.get('micro_batches_per_step', 0):.2f} | {e.get('padded_tokens_per_step', 0):.2f} | "
          f"{e.get('reused_graphs_per_step', 0):.2f} | {ms:.2f} | "
          f"{ph.get('decode', 0):.2f} / {ph.get('sync', 0):.2f} / {ph.get('sample', 0):.2f} |")
PY
}

# Issue 23's per-kernel profile of a decode step, for the kernels the environment selects
# (AIRAVATA_CUDA_KERNELS=ours for ours, else llama.cpp's; PROFILE_TAG names the run, default "ours" or "stock"): ncu over llama-batched-bench at
# B = PROFILE_B (default "1 8 16 64 256"), prompt 32, with 4 and 12 generated tokens, CUDA graphs off,
# clocks and caches as in production (--clock-control none --cache-control none); the difference of the two
# reports is 8 decode steps (prompt processing and setup cancel). scripts/profile-table.py prints per kernel
# family: µs per step, share, launches, DRAM MB per step, GB/s and % of PEAK_GBS (default 3350, H100 SXM),
# the matmul kernels' TFLOP/s against PEAK_TFLOPS (default 990, dense fp16/bf16), and the wall step time of
# batched-bench with graphs on beside it. Needs buildmg, synth, gguf. ncu replays every kernel: split B over
# calls (e.g. PROFILE_B="1 8 16", then "64", then "256") to stay under 10 minutes each.
stage_profile() {
  local bs=${PROFILE_B:-1 8 16 64 256} lo=4 hi=12 npp=${PROFILE_NPP:-32} kv=${PROFILE_KV:-f16}
  # A longer prompt or a quantized cache (issue 24's attention shares): PROFILE_NPP=1024 PROFILE_KV=q8_0;
  # the tag (file names, table) then says so.
  local tag=${PROFILE_TAG:-$([ "${AIRAVATA_CUDA_KERNELS:-}" = ours ] && echo ours || echo stock)}
  [ -n "${PROFILE_TAG:-}" ] || [ "$npp-$kv" = 32-f16 ] || tag=$tag-p$npp-$kv
  local kvflags=(-fa on -ctk "$kv" -ctv "$kv")
  # PROFILE_KERNELS (a regex, e.g. "flash_attn|airavata"): ncu times only those kernels, the rest run at
  # full speed, so a long prompt's prefill does not take minutes under ncu.
  local filter=(); [ -n "${PROFILE_KERNELS:-}" ] && filter=(-k "regex:$PROFILE_KERNELS")
  local params
  params=$("${AIRAVATA[@]}" inspect "$OURS" --json | python3 -c "
import json, math, sys
t = json.load(sys.stdin)['tensors']
print(sum(math.prod(x['dims']) for x in t if len(x['dims']) == 2 and x['name'] != 'token_embd.weight'))")
  for b in $bs; do
    local ctx=$((b * (npp + 128)))
    for ntg in $lo $hi; do
      local rep="$WORK/profile-$tag-B$b-tg$ntg"
      log "ncu: $tag B=$b TG=$ntg"
      GGML_CUDA_DISABLE_GRAPHS=1 ncu --clock-control none --cache-control none "${filter[@]}" -f -o "$rep" \
        --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
        "$BUILD/bin/llama-batched-bench" -m "$OURS" -ngl 99 -c "$ctx" -b 2048 -ub 512 -npp "$npp" -ntg "$ntg" -npl "$b" \
        "${kvflags[@]}" >"$OUT/profile-$tag-B$b-tg$ntg.log" 2>&1
      ncu -i "$rep.ncu-rep" --csv --page raw >"$OUT/profile-$tag-B$b-tg$ntg.csv"
    done
    "$BUILD/bin/llama-batched-bench" -m "$OURS" -ngl 99 -c "$ctx" -b 2048 -ub 512 -npp "$npp" -ntg 128 -npl "$b" "${kvflags[@]}" 2>&1 \
      | grep -E "^\|" >"$OUT/profile-$tag-B$b-wall.md"
  done
  # shellcheck disable=SC2086
  python3 "$ROOT/scripts/profile-table.py" "$OUT" "$tag" $lo $hi "$params" "${PEAK_GBS:-3350}" "${PEAK_TFLOPS:-990}" $bs \
    | tee "$OUT/profile-$tag.md"
}

# Issue 24's end-to-end check of our decode attention inside llama.cpp: the same greedy answers with
# AIRAVATA_CUDA_KERNELS=ours and =stock, up to near-ties (scripts/greedy-compare.py). CHECK_MODEL
# (default our 7B-shape GGUF: head size 128, full multi-head) served with 32 slots and a q8_0 cache, where our
# kernel runs (one query per sequence, >= 16 sequences); each round is one request of 32 copies of a prompt,
# so both runs decode the same steps; a fresh server per run. CHECK_PROMPTS: a prompt set other than the shared
# Airavata one (e.g. .carry-m1/prompts-en.jsonl for SmolLM2, an English model). Needs buildmg, synth, gguf.
stage_attncheck() {
  local model=${CHECK_MODEL:-$OURS} n=${CHECK_N:-32}
  for k in stock ours; do
    log "attncheck: $k kernels"
    # VERBOSE: the server log names each shape one of ours ran for (counted below)
    AIRAVATA_CUDA_KERNELS_VERBOSE=1 AIRAVATA_CUDA_KERNELS=$([ $k = stock ] && echo stock || echo ours) "${AIRAVATA[@]}" serve "$model" --port 18097 \
      --parallel "$n" --ctx-size $((n * 512)) --cache-type-k q8_0 --cache-type-v q8_0 --backends-dir "$BUILD/bin" \
      >"$OUT/attncheck-$k.log" 2>&1 &
    local pid=$!
    wait_http http://127.0.0.1:18097/health
    python3 "$ROOT/scripts/greedy-compare.py" fetch --url http://127.0.0.1:18097 --prompts "${CHECK_PROMPTS:-$ROOT/.carry/prompts.jsonl}" \
      --n "$n" --rounds "${CHECK_ROUNDS:-4}" --max-tokens 64 --out "$OUT/attncheck-$k.json" | tee -a "$OUT/log.txt"
    kill $pid; wait $pid 2>/dev/null || true
    { grep -c "airavata: .* ran for" "$OUT/attncheck-$k.log" || true; } | sed "s/^/attncheck $k: shapes one of ours ran for: /" | tee -a "$OUT/log.txt"
  done
  python3 "$ROOT/scripts/greedy-compare.py" compare --n "$n" "$OUT/attncheck-stock.json" "$OUT/attncheck-ours.json" \
    | tee "$OUT/attncheck.txt"
}

# test-backend-ops built from the patched tree, with the cases of our kernels' shapes added (each set behind its
# own environment variable, so a plain run keeps llama.cpp's own cases). Needs build or buildmg.
build_backend_ops() {
  python3 "$ROOT/scripts/backend-ops-cases.py" "$SRC/tests/test-backend-ops.cpp"
  cmake -S "$SRC" -B "$BUILD" -DLLAMA_BUILD_TESTS=ON >>"$OUT/cmake.log" 2>&1
  ( time cmake --build "$BUILD" -j "$JOBS" --target test-backend-ops ) >"$OUT/build-tests.log" 2>&1 || { tail -30 "$OUT/build-tests.log"; return 1; }
}

# The environment of a kernel set, by name: stock, ours (the defaults: matvec at 4-8 columns, decode attention),
# oursmm (+ the many-column kernel at 17-256, off by default), oursmm9 (the same from 9 columns), ours-min1 (the
# matvec from 1 column), ours16 (up to 16 columns, where llama.cpp would use its mmq). (The v3 matvec's sets oursd /
# oursdp were removed with v3's ggml path after it measured no faster than v2: commit d7eb195 has them.)
kernel_env() {
  case $1 in
    stock) echo AIRAVATA_CUDA_KERNELS=stock ;;
    ours) echo AIRAVATA_CUDA_KERNELS=ours ;;
    ours-min1) echo AIRAVATA_CUDA_KERNELS=ours AIRAVATA_MMV_MIN_COLS=1 ;;
    ours16) echo AIRAVATA_CUDA_KERNELS=ours AIRAVATA_MMV_MAX_COLS=16 ;;
    oursmm) echo AIRAVATA_CUDA_KERNELS=ours AIRAVATA_MMM_MAX_COLS=256 ;;  # + the many-column kernel at 17-256
    oursmm9) echo AIRAVATA_CUDA_KERNELS=ours AIRAVATA_MMM_MIN_COLS=9 AIRAVATA_MMM_MAX_COLS=256 ;;  # ... from 9 columns
    *) echo "unknown kernel set $1 (stock, ours, ours-min1, ours16, oursmm, oursmm9)" >&2; return 1 ;;
  esac
}

# One op of test-backend-ops (CUDA0 against the CPU backend, normalised MSE bound per op) over the added cases
# ($2: their variable), once with our kernels and once with stock; prints the OK count, failures, and which
# of our kernels ran for which shapes (AIRAVATA_CUDA_KERNELS_VERBOSE).
run_backend_ops() {
  local op=$1 var=$2 tag=$3 k ke
  for k in ${OPS_KERNELS:-ours stock}; do
    ke=$(kernel_env "$k")  # an unknown name stops the script here (set -e), not a silent stock run
    log "test-backend-ops $op, $k kernels"
    # shellcheck disable=SC2086
    env "$var=1" $ke AIRAVATA_CUDA_KERNELS_VERBOSE=1 "$BUILD/bin/test-backend-ops" test -o "$op" -b CUDA0 \
      >"$OUT/$tag-$k.txt" 2>&1 || true
    { grep -cE "^ +$op.*OK" "$OUT/$tag-$k.txt" || true; } | sed "s/^/$k: OK cases /" | tee -a "$OUT/log.txt"
    { grep -c "^airavata: .* ran for" "$OUT/$tag-$k.txt" || true; } | sed "s/^/$k: shapes our kernel ran for /" | tee -a "$OUT/log.txt"
    { grep -E "FAIL|not supported|tests passed|Backend" "$OUT/$tag-$k.txt" || true; } | tail -8 | tee -a "$OUT/log.txt"
  done
}

# Issue 24's in-ggml check of our decode attention: FLASH_ATTN_EXT on CUDA against the CPU backend (normalised
# MSE <= 5e-4) over shapes where our kernel runs (q8_0 K/V, one query per sequence, >= 16 sequences: Airavata's
# 128 x 32 heads and SmolLM2's 64 x 9/3 GQA, K/V as views of a larger cache, mask on and off, 1..4096 cached
# tokens) and a few where it must not (two queries per sequence, 8 sequences, f16). A run took ~4.5 minutes per
# kernel set on 16 cores with 4096-token caches at 17 and 64 sequences too (now 16 only); OPS_KERNELS="ours" runs
# only ours.
stage_attnops() {
  build_backend_ops
  run_backend_ops FLASH_ATTN_EXT AIRAVATA_FA_EVAL attnops
}

# Issue 23's in-ggml check of our IQ4_XS matvec: MUL_MAT on CUDA against the CPU backend (normalised MSE <= 5e-4)
# at 1..17 columns (ours runs at 4..8, with ours16 up to 16) over Llama-7B's shapes and odd row counts, and
# strided views and a batched case that ours must leave to ggml.
stage_mmops() {
  build_backend_ops
  OPS_KERNELS=${OPS_KERNELS:-oursmm ours16 stock} run_backend_ops MUL_MAT AIRAVATA_MM_EVAL mmops
}

# Issue 23's IQ4_XS matvec inside llama.cpp: llama-batched-bench S_TG (prompt 32, 128 new tokens, f16 KV) at
# MMV_B (default 1 2 4 8 16) with each kernel set of MMV_KERNELS (default stock ours ours-min1 ours16: see
# kernel_env), one build, back to back; MMV_REPS rounds (default 2), the table takes the best.
# MMV_SERVE=1 also sweeps our server at 1/4/8 streams with stock and ours (8 slots, same prompt and tokens),
# with WITH_OLDAPP=1 the old app's 50-token request too. Needs buildmg, synth, gguf.
stage_mmvbb() {
  local dir=$OUT/mmvbb kerns=${MMV_KERNELS:-stock ours ours-min1 ours16} b k r ke
  mkdir -p "$dir"
  for k in $kerns; do kernel_env "$k" >/dev/null; done  # unknown names stop here
  for r in $(seq 1 "${MMV_REPS:-2}"); do
    for b in ${MMV_B:-1 2 4 8 16}; do
      for k in $kerns; do
        ke=$(kernel_env "$k")
        # shellcheck disable=SC2086
        env $ke "$BUILD/bin/llama-batched-bench" -m "$OURS" -ngl 99 -c $((b * 256)) -b 2048 -ub 512 \
          -npp 32 -ntg 128 -npl "$b" 2>&1 | grep -E "^\|" >"$dir/bb-$k-$b-r$r.md" || true
      done
    done
  done
  if [ -n "${MMV_SERVE:-}" ]; then
    for k in stock ours; do
      AIRAVATA_CUDA_KERNELS=$k SLOTS=8 CTX_PER_SLOT=256 CONC=1,4,8 MAX_TOKENS=128 PROMPT_TOKENS=32 \
        BENCH_FLAGS="--raw --unique-prompts" serve_ours "mmv-$k"
    done
  fi
  python3 - "$dir" $kerns <<'PY' | tee "$OUT/mmvbb.md"
import glob, os, re, sys
d, kerns = sys.argv[1], sys.argv[2:]
best = {}
for p in glob.glob(f"{d}/bb-*.md"):
    k, b = re.match(r"bb-(.+)-(\d+)-r\d+\.md", os.path.basename(p)).groups()
    for line in open(p):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 8 and cells[0].isdigit():
            s_tg = float(cells[7])  # | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | ...
            best[(k, int(b))] = max(best.get((k, int(b)), 0.0), s_tg)
print("| B | " + " | ".join(f"{k} S_TG" + ("" if k == "stock" else " (÷ stock)") for k in kerns) + " |")
print("|--:|" + "--:|" * len(kerns))
for b in sorted({b for _, b in best}):
    s = best.get(("stock", b), 0.0)
    cells = []
    for k in kerns:
        x = best.get((k, b), 0.0)
        cells.append(f"{x:.1f}" if k == "stock" or not s else f"{x:.1f} ({x / s:.3f})")
    print(f"| {b} | " + " | ".join(cells) + " |")
PY
}

# compute-sanitizer (memcheck, racecheck) over test-backend-ops' small cases of both of our kernels, with ours on
# (the matvec up to 16 columns) and CUDA graphs off (so every launch is checked as launched): the summaries, and any report's kernel names.
# Needs build or buildmg.
stage_sanitize() {
  build_backend_ops
  local tool spec op var rc ke
  ke=$(kernel_env "${SANITIZE_SET:-ours16}")
  for tool in ${SANITIZE_TOOLS:-memcheck racecheck}; do
    for spec in MUL_MAT:AIRAVATA_MM_EVAL FLASH_ATTN_EXT:AIRAVATA_FA_EVAL; do
      op=${spec%%:*} var=${spec##*:}
      log "compute-sanitizer --tool $tool, test-backend-ops $op (small cases), ours"
      rc=0
      # shellcheck disable=SC2086
      env "$var=small" $ke AIRAVATA_CUDA_KERNELS_VERBOSE=1 GGML_CUDA_DISABLE_GRAPHS=1 \
        compute-sanitizer --tool "$tool" --error-exitcode 9 "$BUILD/bin/test-backend-ops" test -o "$op" -b CUDA0 \
        >"$OUT/sanitize-$tool-$op.txt" 2>&1 || rc=$?
      { grep -E "ERROR SUMMARY|RACECHECK SUMMARY|tests passed" "$OUT/sanitize-$tool-$op.txt" || true; } | tee -a "$OUT/log.txt"
      { grep -c "^airavata: .* ran for" "$OUT/sanitize-$tool-$op.txt" || true; } | sed "s/^/  shapes ours ran for: /" | tee -a "$OUT/log.txt"
      # The kernels named in the reports ("at void name<...>(...)+0x..."): ours are mmv_iq4xs_kernel, quantize_x_q8, attn_split_kernel, attn_combine_kernel.
      { grep -E "^=========" "$OUT/sanitize-$tool-$op.txt" | grep -oE " at (void )?[A-Za-z_][A-Za-z_0-9:]*[<(]" || true; } \
        | sed -E 's/^ at (void )?//; s/[<(]$//' | sort | uniq -c | sed 's/^/  report lines in kernel: /' | tee -a "$OUT/log.txt"
      echo "  rc=$rc (9: the tool reported errors)" | tee -a "$OUT/log.txt"
    done
  done
}

# SmolLM2-135M-Instruct made nf4 on the CPU machine (scripts/pack-smol-carry.sh), carried as xz parts over chained
# calls (.carry-m1/smol.xz.1, .carry-m2/smol.xz.2, ...: the travelling tree is capped at 64 MiB; ignored paths stay
# on a warm machine) and put together here as $WORK/smol-nf4.gguf, checked against .carry-m1/smol.sha256.
SMOL=$WORK/smol-nf4.gguf
stage_smol() {
  local parts=() i=1
  while [ -f "$ROOT/.carry-m$i/smol.xz.$i" ]; do parts+=("$ROOT/.carry-m$i/smol.xz.$i"); i=$((i + 1)); done
  [ ${#parts[@]} -gt 0 ] && [ -f "$ROOT/.carry-m1/smol.sha256" ] \
    || { echo "smol: no parts (.carry-m1/smol.xz.1 and smol.sha256; scripts/pack-smol-carry.sh makes them)" >&2; return 1; }
  if [ ! -f "$SMOL" ]; then
    # python's lzma: the GPU host need not have xz
    cat "${parts[@]}" | python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)" >"$SMOL.part"
    mv "$SMOL.part" "$SMOL"
  fi
  local want got
  want=$(cat "$ROOT/.carry-m1/smol.sha256") got=$(sha256sum "$SMOL" | cut -d' ' -f1)
  log "smol: ${#parts[@]} parts, sha256 $got"
  [ "$got" = "$want" ] || { echo "smol: sha256 $got, expected $want (a part missing or stale?)" >&2; rm -f "$SMOL"; return 1; }
}

# Issue 23's real-model check of our IQ4_XS matvec: llama-perplexity with micro-batches of MMKLD_UB (default
# "16 8 5") tokens, so every matmul has that many columns and ours (kernel set MMKLD_SET, default ours16: up to 16
# columns) runs where the weights are IQ4_XS, on SmolLM2 nf4 (its 1536-wide ffn_down is IQ4_XS; 576-wide rows take
# IQ4_NL): stock kernels write the base logits, ours are scored against them (KLD, same top token).
# Text: .carry-m1/wiki.txt (WikiText-2 test, first 200 kB). Needs buildmg with llama-perplexity in BUILD_TARGETS, and smol.
# MMKLD_BASE_SET (default stock) names the kernel set that writes the base logits (MMKLD_BASE_SET=ours MMKLD_SET=ours:
# the run's own repeatability; at d7eb195, MMKLD_SET=oursd scored the v3 matvec against v2, the float-order floor).
stage_mmkld() {
  local ub ke kb base=${MMKLD_BASE_SET:-stock} set=${MMKLD_SET:-ours16}
  ke=$(kernel_env "$set") kb=$(kernel_env "$base")
  for ub in ${MMKLD_UB:-16 8 5}; do
    local common=(-m "$SMOL" -f "$ROOT/.carry-m1/wiki.txt" -c 512 -b 512 -ub "$ub" -ngl 99 --chunks "${MMKLD_CHUNKS:-40}")
    local kld=$WORK/smol-base-$base-$ub.kld tag=$set-vs-$base-ub$ub
    # written afresh every call: a base kept from before a rebuild on a warm machine would score the old kernels
    # shellcheck disable=SC2086
    env $kb "$BUILD/bin/llama-perplexity" "${common[@]}" --kl-divergence-base "$kld" >"$OUT/mmkld-base-$base-ub$ub.txt" 2>&1
    # shellcheck disable=SC2086
    env $ke AIRAVATA_CUDA_KERNELS_VERBOSE=1 "$BUILD/bin/llama-perplexity" "${common[@]}" \
      --kl-divergence-base "$kld" --kl-divergence >"$OUT/mmkld-$tag.txt" 2>&1
    log "mmkld ub=$ub: our kernel ran for $(grep -c '^airavata: mmv_iq4xs ran' "$OUT/mmkld-$tag.txt") shapes"
    { grep -E "^Mean +KLD|^Maximum KLD|^Same top|Final estimate" "$OUT/mmkld-$tag.txt" || true; } \
      | sed "s/^/ub=$ub $set vs $base: /" | tee -a "$OUT/log.txt"
  done
}

# Issue 11's two-GPU figures in one stage: our server on GPU 0 at 64 streams, on both GPUs (one engine each)
# at 128, and llama-server splitting the model over both GPUs (-sm layer) at 128 with the same total slots.
stage_mgproof() {
  local slots=${MG_SLOTS:-64}
  SLOTS=$slots CONC=64 serve_ours mg-one --devices "${MG_ONE:-0}"
  SLOTS=$slots CONC=128 serve_ours mg-all --devices "${MG_ALL:-all}"
  SLOTS=$((2 * slots)) CONC=128 serve_llama mg-llama-layer -sm layer
  python3 - "$OUT/bench-mg-one.json" "$OUT/bench-mg-all.json" "$OUT/bench-mg-llama-layer.json" <<'PY' | tee "$OUT/mgproof.md"
import json, sys
def lvl(p, c):
    r = json.load(open(p)); r = r[0] if isinstance(r, list) else r
    return next(l for l in r["levels"] if l["concurrency"] == c)
one, two, ls = lvl(sys.argv[1], 64), lvl(sys.argv[2], 128), lvl(sys.argv[3], 128)
t = lambda l: l["output_tokens_per_s"] or 0
print("| run | streams | tok/s | TTFT p50 ms | errors |")
print("|---|--:|--:|--:|--:|")
for name, l in [("ours, GPU 0", one), ("ours, both GPUs (2 engines)", two), ("llama-server -sm layer, both GPUs", ls)]:
    print(f"| {name} | {l['concurrency']} | {t(l):.1f} | {(l.get('ttft_ms') or {}).get('p50', 0):.1f} | {l['errors']} |")
print(f"\nboth GPUs at 128 / one GPU at 64: {t(two) / t(one):.3f} (target >= 1.9)")
print(f"both GPUs at 128 / llama-server -sm layer at 128: {t(two) / t(ls):.3f} (target >= 1.9)")
PY
}

# Prefix-cache routing: two engines, requests in PR_GROUPS groups that share a long prompt
# (bench --prefix-groups), routed by prefix (default) and by load alone; prompt-cache hit rate
# from /metrics and TTFT from the bench.
stage_prefixroute() {
  local slots=${PR_SLOTS:-32}
  for routing in prefix least-loaded; do
    SLOTS=$slots CTX_PER_SLOT=2048 CONC=${PR_CONC:-48} \
      BENCH_FLAGS="--prefix-groups ${PR_GROUPS:-48} --requests ${PR_REQUESTS:-384}" \
      PROMPT_TOKENS=${PR_PROMPT:-512} MAX_TOKENS=${PR_MAX:-32} \
      serve_ours "route-$routing" --devices "${MG_ALL:-all}" --routing "$routing" ${PR_FLAGS:-}
  done
  summarize "$OUT" <<'PY' | tee "$OUT/prefixroute.md"
out = sys.argv[1]
print("| routing | streams | tok/s | TTFT p50 ms | TTFT p90 ms | prompt tokens evaluated | from cache | hit rate | routed by prefix | errors |")
print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
for routing in ["prefix", "least-loaded"]:
    r = json.load(open(f"{out}/bench-route-{routing}.json")); r = r[0] if isinstance(r, list) else r
    m = f"{out}/metrics-route-{routing}.txt"
    pt, ct = metric(m, "airavata_prompt_tokens_total"), metric(m, "airavata_cached_prompt_tokens_total")
    by_prefix = sum(metric(m, f'airavata_router_requests_total{{engine="{e}",route="prefix"}}') for e in range(8))
    for l in r["levels"]:
        ttft = l.get("ttft_ms") or {}
        print(f"| {routing} | {l['concurrency']} | {l['output_tokens_per_s'] or 0:.1f} | {ttft.get('p50', 0):.1f} | "
              f"{ttft.get('p90', 0):.1f} | {pt:.0f} | {ct:.0f} | {ct / (pt + ct) if pt + ct else 0:.3f} | {by_prefix:.0f} | {l['errors']} |")
PY
}

# Greedy and sampled requests on one server at once (GPU 0, 64 slots): 48 greedy streams and 16 sampled
# ones (temperature 0.8), with --backend-greedy on and off. A slot that switches between the two detaches
# or attaches its backend sampler, and llama.cpp re-plans its graph at the next step: this measures what
# that costs. Reports each bench's tok/s, their sum, and the switch and backend-pick counters.
stage_mixed() {
  local slots=${MIX_SLOTS:-64} bg label pid
  for bg in on off; do
    label=mix-$bg
    log "our server: $label (48 greedy + 16 sampled streams)"
    "${AIRAVATA[@]}" serve "$OURS" --port 18080 --parallel "$slots" --ctx-size $((slots * CTX_PER_SLOT)) \
       --backends-dir "$BUILD/bin" --devices 0 --backend-greedy "$bg" >"$OUT/server-$label.log" 2>&1 &
    pid=$!
    wait_http http://127.0.0.1:18080/health
    "${AIRAVATA[@]}" bench --url http://127.0.0.1:18080 --concurrency 48 --requests 384 --max-tokens 128 \
      --prompt-tokens 32 --label "$label-greedy" --json "$OUT/bench-$label-greedy.json" >"$OUT/bench-$label-greedy.md" &
    local greedy=$!
    "${AIRAVATA[@]}" bench --url http://127.0.0.1:18080 --concurrency 16 --requests 128 --max-tokens 128 \
      --prompt-tokens 32 --temperature 0.8 --label "$label-sampled" --json "$OUT/bench-$label-sampled.json" \
      >"$OUT/bench-$label-sampled.md"
    wait $greedy
    curl -s http://127.0.0.1:18080/metrics >"$OUT/metrics-$label.txt" || true
    kill $pid; wait $pid 2>/dev/null || true
  done
  summarize "$OUT" <<'PY' | tee "$OUT/mixed.md"
out = sys.argv[1]
def level(path):
    r = json.load(open(path)); r = r[0] if isinstance(r, list) else r
    return r["levels"][0]
print("| backend greedy | greedy tok/s (48) | sampled tok/s (16) | sum | switches | backend picks / generated | ms/step | errors |")
print("|---|--:|--:|--:|--:|--:|--:|--:|")
for bg in ["on", "off"]:
    g, s = level(f"{out}/bench-mix-{bg}-greedy.json"), level(f"{out}/bench-mix-{bg}-sampled.json")
    m = f"{out}/metrics-mix-{bg}.txt"
    tg, ts = g["output_tokens_per_s"] or 0, s["output_tokens_per_s"] or 0
    e = g.get("engine") or {}
    print(f"| {bg} | {tg:.1f} | {ts:.1f} | {tg + ts:.1f} | {metric(m, 'airavata_backend_greedy_switches_total'):.0f} | "
          f"{metric(m, 'airavata_backend_greedy_tokens_total'):.0f} / {metric(m, 'airavata_generated_tokens_total'):.0f} | "
          f"{e.get('total_ms_per_step', 0):.2f} | {g['errors'] + s['errors']} |")
PY
}

# CPU quantizer speed before/after a change: two `cargo bench --bench quant --no-run` executables built on
# the CPU machine (.carry/quant-before, .carry/quant-after), each run QUANT_ROUNDS times in alternation
# (QUANT_QUICK: rows/s, best of 5, one thread) on one pinned core of an otherwise idle host.
stage_quantcpu() {
  local rounds=${QUANT_ROUNDS:-12} core=${QUANT_CORE:-3}
  mkdir -p "$OUT/quantcpu"
  # An optional .carry/quant-mid (a commit in between) runs in the same rotation.
  local variants=(before after)
  [ -x "$ROOT/.carry/quant-mid" ] && variants=(before mid after)
  for r in $(seq 1 "$rounds"); do
    for v in "${variants[@]}"; do
      QUANT_QUICK=1 taskset -c "$core" "$ROOT/.carry/quant-$v" >"$OUT/quantcpu/$v-$r.txt"
    done
  done
  python3 - "$OUT/quantcpu" "$rounds" <<'PY' | tee "$OUT/quantcpu.md"
import os, statistics, sys
d, n = sys.argv[1], int(sys.argv[2])
runs = {}
for v in ["before", "mid", "after"]:
    if not os.path.exists(f"{d}/{v}-1.txt"):
        continue
    for r in range(1, n + 1):
        for line in open(f"{d}/{v}-{r}.txt"):
            if ": " in line and line.rstrip().endswith("rows/s"):
                name, val = line.rsplit(": ", 1)
                runs.setdefault(name, {}).setdefault(v, []).append(float(val.split()[0]))
vs_all = [v for v in ["before", "mid", "after"] if any(v in r for r in runs.values())]
sp = lambda x: (max(x) - min(x)) / statistics.median(x)
print("| row | " + " | ".join(f"{v} (median of {n})" for v in vs_all) + " | after / before | spread (max-min)/median |")
print("|---|" + "--:|" * (len(vs_all) + 2))
for name, vs in runs.items():
    med = {v: statistics.median(vs[v]) for v in vs_all}
    cells = " | ".join(f"{med[v]:.0f}" for v in vs_all)
    spread = " / ".join(f"{sp(vs[v]):.1%}" for v in vs_all)
    print(f"| {name} | {cells} | {med['after'] / med['before']:.3f} | {spread} |")
PY
}

# Issue 24's attention sweep (see the header). For each KV type and prompt length N: the B of ATTN_B whose KV
# cache fits the budget (B x (N + NTG + 64) tokens; 64 tokens of slack for the estimated prompt length), then
# llama-batched-bench once per B (its KV is -c = B x (N + NTG): -npl B alone, so no larger B sizes it), then
# our server once with slots = the largest of them, swept at each B by `airavata bench --prompt-lengths
# fixed:N --raw --unique-prompts` (~N tokens, no chat wrapping, nothing served from the prompt cache; 2 x B
# requests a level, at least 8). KV bytes per token: ATTN_KV_F16_BYTES (default 524288 = 32 layers x 4096 x
# K and V x 2 bytes, the 7B shape) for f16; q8_0 34/64 of it, q4_0 18/64 (ggml's block sizes).
stage_attnsweep() {
  local kvs=${ATTN_KV:-f16 q8_0 q4_0} bs=${ATTN_B:-1 16 64 128} npps=${ATTN_NPP:-32 512 1024 2048 4096}
  local kerns=${ATTN_KERNELS:-stock ours} serve_kerns=${ATTN_SERVE_KERNELS-ours}
  local ntg=${ATTN_NTG:-64} gib=${ATTN_KV_GIB:-60} f16=${ATTN_KV_F16_BYTES:-524288} margin=64
  local dir=$OUT/attnsweep kv npp b k tok_bytes need
  mkdir -p "$dir"
  for kv in $kvs; do
    case $kv in
      f16) tok_bytes=$f16 ;;
      q8_0) tok_bytes=$((f16 * 34 / 64)) ;;
      q4_0) tok_bytes=$((f16 * 18 / 64)) ;;
      *) echo "attnsweep: unknown KV type $kv (f16, q8_0, q4_0)" >&2; return 1 ;;
    esac
    for npp in $npps; do
      local fit=() max=0
      for b in $bs; do
        need=$((b * (npp + ntg + margin) * tok_bytes))
        if (( need <= gib * 1073741824 )); then
          fit+=("$b"); (( b > max )) && max=$b
        else
          # One line per skipped combination; the table reads them back.
          echo "skip $kv $npp $b $(python3 -c "print(f'{$need / 2**30:.1f}')") $gib" | tee -a "$dir/skips.txt"
        fi
      done
      [ ${#fit[@]} -eq 0 ] && continue
      local conc; conc=$(IFS=,; echo "${fit[*]}")
      if [ -n "${ATTN_DRY:-}" ]; then
        for k in $kerns; do
          for b in "${fit[@]}"; do
            echo "plan AIRAVATA_CUDA_KERNELS=$k llama-batched-bench -c $((b * (npp + ntg))) -fa on -ctk $kv -ctv $kv -npp $npp -ntg $ntg -npl $b"
          done
        done
        for k in $serve_kerns; do
          echo "plan AIRAVATA_CUDA_KERNELS=$k ours --parallel $max --ctx-size $((max * (npp + ntg + margin))) --cache-type-k $kv --cache-type-v $kv, bench --concurrency $conc --prompt-lengths fixed:$npp --max-tokens $ntg"
        done
        continue
      fi
      # Both kernel sets from the same build (libggml-cuda reads AIRAVATA_CUDA_KERNELS), one B after the other.
      for b in "${fit[@]}"; do
        for k in $kerns; do
          log "llama-batched-bench kernels=$k kv=$kv npp=$npp B=$b"
          AIRAVATA_CUDA_KERNELS=$k "${PIN_SERVER[@]}" "$BUILD/bin/llama-batched-bench" -m "$OURS" -ngl 99 \
            -c $((b * (npp + ntg))) -b 2048 -ub 512 -fa on -ctk "$kv" -ctv "$kv" -npp "$npp" -ntg "$ntg" -npl "$b" 2>&1 \
            | grep -E "^\|" >"$dir/bb-$k-$kv-$npp-$b.md" || true
          cat "$dir/bb-$k-$kv-$npp-$b.md"
        done
      done
      for k in $serve_kerns; do
        AIRAVATA_CUDA_KERNELS=$k SLOTS=$max CTX_PER_SLOT=$((npp + ntg + margin)) CONC=$conc MAX_TOKENS=$ntg \
          PROMPT_LENGTHS=fixed:$npp BENCH_FLAGS="--raw --unique-prompts" serve_ours "attn-$k-$kv-$npp" \
          --devices "${ATTN_DEVICES:-0}" --flash-attn on --cache-type-k "$kv" --cache-type-v "$kv"
      done
    done
  done
  [ -n "${ATTN_DRY:-}" ] || stage_attntable
}

# The attention sweep's table: KV type x B x prompt length -> llama-batched-bench S_TG with llama.cpp's
# kernels and with ours (same build), their ratio, and our server against batched-bench with the same
# kernels; every result in $OUT so far (several attnsweep calls of one lease), skipped combinations named.
stage_attntable() {
  summarize "$OUT" <<'PY' | tee "$OUT/attnsweep.md"
import glob, os, re
out = sys.argv[1]
bb, ours, skipped = {}, {}, {}
for p in glob.glob(f"{out}/attnsweep/bb-*.md"):
    m = re.search(r"bb-(stock|ours)-([a-z0-9_]+)-(\d+)-(\d+)\.md$", p)
    if not m:
        continue
    for line in open(p):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 10 and cells[0].isdigit() and cells[2].isdigit():
            # PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s
            bb[(m.group(1), m.group(2), int(cells[0]), int(cells[2]))] = float(cells[7])
for p in glob.glob(f"{out}/bench-attn-*.json"):
    m = re.search(r"bench-attn-(stock|ours)-([a-z0-9_]+)-(\d+)\.json$", p)
    if not m:
        continue
    r = json.load(open(p)); r = r[0] if isinstance(r, list) else r
    for l in r["levels"]:
        ours[(m.group(1), m.group(2), int(m.group(3)), l["concurrency"])] = l
if os.path.exists(f"{out}/attnsweep/skips.txt"):
    for line in open(f"{out}/attnsweep/skips.txt"):
        f = line.split()
        if len(f) == 6 and f[0] == "skip":
            skipped[(f[1], int(f[2]), int(f[3]))] = f"skipped: KV {f[4]} GiB > {f[5]} GiB"
order = {"f16": 0, "q8_0": 1, "q4_0": 2}
keys = {k[1:] for k in bb} | {k[1:] for k in ours} | set(skipped)
keys = sorted(keys, key=lambda k: (order.get(k[0], 9), k[0], k[2], k[1]))
fmt = lambda x, d=1: "-" if x is None else f"{x:.{d}f}"
ratio = lambda a, b: f"**{a / b:.3f}**" if a and b else "-"
print("| KV | B | prompt | S_TG stock | S_TG ours | ours / stock | server kernels | server tok/s "
      "| server decode tok/s (B / TPOT p50) | decode / S_TG same kernels | TTFT p50 ms | errors | note |")
print("|---|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|---|")
for k in keys:
    kv, npp, b = k
    st, ou = bb.get(("stock",) + k), bb.get(("ours",) + k)
    runs = [(kern, ours[(kern,) + k]) for kern in ("stock", "ours") if (kern,) + k in ours] or [(None, None)]
    for kern, l in runs:
        note = skipped.get(k, "") if l is None and st is None and ou is None else ""
        tps = l.get("output_tokens_per_s") if l else None
        tpot = ((l or {}).get("tpot_ms") or {}).get("p50")
        dec = b * 1000.0 / tpot if tpot else None
        ttft = ((l or {}).get("ttft_ms") or {}).get("p50")
        same = bb.get((kern,) + k) if kern else None
        print(f"| {kv} | {b} | {npp} | {fmt(st)} | {fmt(ou)} | {ratio(ou, st)} | {kern or '-'} | {fmt(tps)} | {fmt(dec)} "
              f"| {ratio(dec, same)} | {fmt(ttft)} | {l['errors'] if l else '-'} | {note} |")
PY
}

# The device returns at most 8 files a call: BUNDLE_TO=DIR (e.g. BUNDLE_TO=$OUT OUT=/tmp/res, in that order) packs
# everything in $OUT into DIR/results.tgz, and copies log.txt beside it, when the script ends, failed stages too.
bundle() {
  if [ -n "${BUNDLE_TO:-}" ] && [ "$BUNDLE_TO" != "$OUT" ]; then
    mkdir -p "$BUNDLE_TO"
    tar czf "$BUNDLE_TO/results.tgz" -C "$OUT" . && cp "$OUT/log.txt" "$BUNDLE_TO/" 2>/dev/null || true
  fi
}
trap bundle EXIT
for s in "$@"; do "stage_$s"; done
