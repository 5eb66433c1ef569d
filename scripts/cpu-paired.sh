#!/usr/bin/env bash
# Issue 11, item 5, paired: our server and llama-server up at once (same GGUF, same settings as
# scripts/cpu-ttft.sh), benched in rounds of one block per server, the order reversed every round
# (A B, B A, A B, …), so that this shared machine's drift (±10 % between runs minutes apart) falls on
# both sides of every comparison. Each block is one `airavata bench` run with its own warm-up;
# --unique-prompts tags prompts by the run's start second, so no block reuses another's prompts.
# Usage: scripts/cpu-paired.sh OUT_DIR [ROUNDS] [LABEL=CMD ...]
#   each CMD serves on the port in $PORT (substituted when the CMD runs); default arms: ours
#   (target/release/airavata, the default build) and llama-server (vendor/llama.cpp/build-native).
#   env: CONC (1), MODE (unique|fixed), REQ (24). Summary: scripts/cpu-paired-summary.py OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?out dir}; ROUNDS=${2:-10}; shift $(( $# >= 2 ? 2 : $# ))
mkdir -p "$OUT"
MODEL=${MODEL:-vendor/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
BASE_PORT=${BASE_PORT:-18190}
REQ=${REQ:-24}; CONC=${CONC:-1}; MODE=${MODE:-unique}
AIRAVATA=${AIRAVATA:-target/release/airavata}
arms=("$@")
if [ ${#arms[@]} -eq 0 ]; then
  # shellcheck disable=SC2016 # $PORT is expanded per arm below
  arms=(
    'ours='"$AIRAVATA"' serve '"$MODEL"' --port $PORT --threads 2 --parallel 4 --ctx-size 4096'
    'llama-server=vendor/llama.cpp/build-native/bin/llama-server -m '"$MODEL"' --port $PORT -t 2 -np 4 -c 4096'
  )
fi
[ -e "$MODEL" ] || { echo "missing: $MODEL" >&2; exit 2; }
wait_http() { for _ in $(seq 1 120); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.5; done; echo "no answer: $1" >&2; return 1; }
labels=(); pids=(); declare -A url
trap 'kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true' EXIT
{ echo "$(date -u +%FT%TZ) rounds=$ROUNDS conc=$CONC mode=$MODE req=$REQ model=$MODEL"; } >"$OUT/log.txt"
for i in "${!arms[@]}"; do
  label=${arms[$i]%%=*}; PORT=$((BASE_PORT + i))
  cmd=$(eval "echo \"${arms[$i]#*=}\"")
  echo "$label: $cmd" >>"$OUT/log.txt"
  # shellcheck disable=SC2086
  $cmd >"$OUT/server-$label.log" 2>&1 &
  pids+=($!); labels+=("$label"); url[$label]="http://127.0.0.1:$PORT"
done
for label in "${labels[@]}"; do wait_http "${url[$label]}/health"; done
flags=(); [ "$MODE" = unique ] && flags=(--unique-prompts)
n=0
for r in $(seq 1 "$ROUNDS"); do
  order=("${labels[@]}")
  if [ $((r % 2)) -eq 0 ]; then order=(); for ((j = ${#labels[@]} - 1; j >= 0; j--)); do order+=("${labels[$j]}"); done; fi
  for label in "${order[@]}"; do
    n=$((n + 1))
    f=$(printf '%s/r%02d-b%02d-%s' "$OUT" "$r" "$n" "$label")
    echo "[$(date +%T)] round $r block $n: $label" | tee -a "$OUT/log.txt"
    "$AIRAVATA" bench --url "${url[$label]}" --api openai-completions --concurrency "$CONC" \
      --prompt-tokens 32 --max-tokens 64 --requests "$REQ" --warmup 2 "${flags[@]}" \
      --label "$label" --json "$f.json" >"$f.md" 2>&1
    sleep 1 # the next block's unique-prompt tag is a new second
  done
done
python3 scripts/cpu-paired-summary.py "$OUT" | tee "$OUT/summary.md"
