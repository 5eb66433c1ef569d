#!/usr/bin/env bash
# Issue 11, item 5: CPU serving against llama-server on this machine, same GGUF, same settings
# (SmolLM2-135M-Instruct Q4_1, 2 threads, 4 slots, ~32-token prompts, 64 new tokens, 1 and 4 streams),
# fixed prompts (prompt cache may serve them) and unique prompts (every prompt evaluated).
# Usage: scripts/cpu-ttft.sh OUT_DIR LABEL=CMD...  (each CMD serves on $PORT; see the defaults below;
# MODES="fixed" runs only the fixed-prompt mode)
# Default runs: ours (target/release/airavata, the default build), ours-dyn (.carry/bin, CPU variants
# loaded at run time), llama-server (vendor/llama.cpp/build-native, llama.cpp's default native build).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?out dir}; shift
mkdir -p "$OUT"
MODEL=${MODEL:-vendor/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
PORT=${PORT:-18190}
REQ=${REQ:-24}
AIRAVATA=${AIRAVATA:-target/release/airavata}
runs=("$@")
if [ ${#runs[@]} -eq 0 ]; then
  runs=(
    "ours=$AIRAVATA serve $MODEL --port $PORT --threads 2 --parallel 4 --ctx-size 4096"
    "llama-server=vendor/llama.cpp/build-native/bin/llama-server -m $MODEL --port $PORT -t 2 -np 4 -c 4096"
  )
fi
wait_http() { for _ in $(seq 1 120); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.5; done; return 1; }
for run in "${runs[@]}"; do
  label=${run%%=*}; cmd=${run#*=}
  for mode in ${MODES:-fixed unique}; do
    flags=(); [ "$mode" = unique ] && flags=(--unique-prompts)
    echo "[$(date +%T)] $label $mode: $cmd" | tee -a "$OUT/log.txt"
    # shellcheck disable=SC2086
    $cmd >"$OUT/server-$label-$mode.log" 2>&1 &
    pid=$!
    wait_http "http://127.0.0.1:$PORT/health"
    "$AIRAVATA" bench --url "http://127.0.0.1:$PORT" --api openai-completions --concurrency 1,4 \
      --prompt-tokens 32 --max-tokens 64 --requests "$REQ" --warmup 2 "${flags[@]}" \
      --label "$label-$mode" --json "$OUT/bench-$label-$mode.json" >"$OUT/bench-$label-$mode.md" 2>&1
    kill $pid; wait $pid 2>/dev/null || true
  done
done
"$AIRAVATA" bench --compare "$OUT"/bench-*.json | tee "$OUT/compare.md"
