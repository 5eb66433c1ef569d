#!/usr/bin/env bash
# Multiple-choice accuracy through the real client: EleutherAI lm-evaluation-harness (`local-completions`,
# i.e. our /v1/completions with echo + logprobs) on small local tasks built from shared/assets:
#   airavata_mmlu_hi      Hindi MMLU (IndicInstruct, val split), the answer texts scored after "उत्तर:"
#   airavata_pud_next_hi  which sentence comes next in a UD PUD document (Hindi), 1 of 4
#   airavata_pud_next_en  the same items in English
#   (airavata_mmlu_hi_abcd, the lettered form, is there too: TASKS=... to add it)
# Fully offline: the tasks are local JSONL, and lm-eval tokenizes through the server's vLLM-style
# /tokenizer_info, /tokenize, /detokenize (tokenizer_backend=remote), so no Hugging Face tokenizer.
#
# Usage: benches/lm-eval.sh [LABEL=MODEL.gguf ...]
#   No arguments: SmolLM2-135M-Instruct F16 and ours (`quantize`, default nf4) made from it; Gemma-3-270m
#   F16 (`quantize --allow-requantize --scheme f16` of the shipped Q4_K_M) and ours made from that F16.
#   Quantized files are made once into MODELS_DIR. Prints (and writes OUT/summary.md) a markdown table
#   of acc / acc_norm per task and model, and for each LABEL-nf4 beside a LABEL-f16 how many items
#   changed their answer.
# Environment:
#   AIRAVATA_BIN   server binary (default target/release/airavata)
#   LMEVAL_VENV    venv holding lm_eval (default /work/.venv-lmeval; `pip install "lm-eval[api]==0.4.13"`)
#   AIRAVATA_ASSETS shared assets (default ../shared/assets)
#   OUT            output folder (default target/lm-eval/<date-time>); lm-eval's samples there hold the
#                  assets' text: commit only summary.md / results_*.json from it
#   MODELS_DIR     where the default set's derived GGUFs go (default target/lm-eval-models)
#   SMOL_F16, GEMMA_Q4KM  the default set's inputs (default vendor/models/..., scripts/fetch-*.sh)
#   N              items per task (default 100; the generator samples with a fixed seed)
#   TASKS          comma list (default airavata_mmlu_hi,airavata_pud_next_hi,airavata_pud_next_en)
#   LIMIT          pass --limit to lm_eval (a quick smoke run)
#   PORT           server port (default 18300); SERVE_ARGS extra `airavata serve` flags
#   CONCURRENT     lm-eval num_concurrent (default 1; the server runs --parallel CONCURRENT)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$(realpath "${AIRAVATA_BIN:-target/release/airavata}")
VENV=${LMEVAL_VENV:-/work/.venv-lmeval}
ASSETS=$(realpath "${AIRAVATA_ASSETS:-../shared/assets}")
OUT=${OUT:-target/lm-eval/$(date +%Y%m%d-%H%M%S)}
MODELS_DIR=${MODELS_DIR:-target/lm-eval-models}
N=${N:-100}
TASKS=${TASKS:-airavata_mmlu_hi,airavata_pud_next_hi,airavata_pud_next_en}
PORT=${PORT:-18300}
CONCURRENT=${CONCURRENT:-1}
[ -x "$BIN" ] || { echo "no server binary at $BIN (cargo build --release, or set AIRAVATA_BIN)" >&2; exit 1; }
[ -x "$VENV/bin/lm_eval" ] || { echo "no lm_eval in $VENV: python3 -m venv $VENV && $VENV/bin/pip install 'lm-eval[api]==0.4.13'" >&2; exit 1; }
[ -d "$ASSETS/eval-pud-hi-en" ] || { echo "no shared assets at $ASSETS (set AIRAVATA_ASSETS)" >&2; exit 1; }
mkdir -p "$OUT" "$MODELS_DIR"
OUT=$(realpath "$OUT")
MODELS_DIR=$(realpath "$MODELS_DIR")
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_EVALUATE_OFFLINE=1
export HF_DATASETS_CACHE="$OUT/hf-datasets-cache" TOKENIZERS_PARALLELISM=false

log() { echo "== $*" | tee -a "$OUT/log.txt" >&2; }

# 1. The task data (JSONL, relative to $OUT, where lm_eval runs: see the task YAMLs).
python3 benches/lm-eval/make_tasks.py "$ASSETS" "$OUT/lmeval-data" --n "$N" | tee -a "$OUT/log.txt"

# 2. The models.
MODELS=("$@")
if [ ${#MODELS[@]} -eq 0 ]; then
  SMOL=${SMOL_F16:-vendor/models/smollm2/SmolLM2-135M-Instruct.F16.gguf}
  GEMMA_Q4KM=${GEMMA_Q4KM:-vendor/models/gemma3/gemma-3-270m-q4_k_m.gguf}
  [ -f "$SMOL" ] || { echo "missing $SMOL: scripts/fetch-smollm2.sh" >&2; exit 1; }
  [ -f "$GEMMA_Q4KM" ] || { echo "missing $GEMMA_Q4KM: scripts/fetch-gemma3.sh" >&2; exit 1; }
  make_model() {  # OUT_FILE ARGS... (skipped when OUT_FILE exists)
    local out=$1; shift
    [ -f "$out" ] && return 0
    log "quantize $* -> $out"
    local t0=$SECONDS
    "$BIN" quantize "$@" "$out.tmp" >>"$OUT/quantize.log" 2>&1
    mv "$out.tmp" "$out"
    log "$(basename "$out"): $((SECONDS - t0)) s, $(stat -c %s "$out") bytes"
  }
  make_model "$MODELS_DIR/smollm2-135m-nf4.gguf" "$SMOL"
  make_model "$MODELS_DIR/gemma3-270m-f16.gguf" --allow-requantize --scheme f16 "$GEMMA_Q4KM"
  make_model "$MODELS_DIR/gemma3-270m-nf4.gguf" "$MODELS_DIR/gemma3-270m-f16.gguf"
  MODELS=(
    "smollm2-135m-f16=$SMOL"
    "smollm2-135m-nf4=$MODELS_DIR/smollm2-135m-nf4.gguf"
    "gemma3-270m-f16=$MODELS_DIR/gemma3-270m-f16.gguf"
    "gemma3-270m-nf4=$MODELS_DIR/gemma3-270m-nf4.gguf"
  )
fi

SERVER_PID=
stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=
}
trap stop_server EXIT INT TERM

URL=http://127.0.0.1:$PORT
LABELS=()
for spec in "${MODELS[@]}"; do
  if [[ $spec == *=* ]]; then label=${spec%%=*}; model=${spec#*=}; else model=$spec; label=$(basename "$model" .gguf); fi
  [ -f "$model" ] || { echo "no model file $model" >&2; exit 1; }
  LABELS+=("$label")
  dir=$OUT/$label
  mkdir -p "$dir"
  # 3. The server, one model at a time.
  log "$label: serve $model"
  # shellcheck disable=SC2086
  "$BIN" serve "$model" --port "$PORT" --parallel "$CONCURRENT" --model-name "$label" ${SERVE_ARGS:-} \
    >"$dir/serve.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 300); do
    curl -sf "$URL/health" >/dev/null 2>&1 && break
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -20 "$dir/serve.log" >&2; echo "server exited" >&2; exit 1; }
    sleep 1
  done
  curl -sf "$URL/health" >/dev/null || { echo "server not healthy after 300 s" >&2; exit 1; }
  # Preflight: the routes lm-eval needs, with the request it sends (see benches/lm-eval/README.md).
  pre=$(curl -s "$URL/tokenizer_info" -w '\n%{http_code}' || true)
  [ "${pre##*$'\n'}" = 200 ] || { echo "GET /tokenizer_info: ${pre%$'\n'*}" >&2; echo "the server lacks lm-eval's remote tokenizer routes" >&2; exit 2; }
  pre=$(curl -s "$URL/v1/completions" -H 'Content-Type: application/json' -w '\n%{http_code}' \
    -d "{\"model\": \"$label\", \"prompt\": \"The capital of France is Paris\", \"temperature\": 0, \"max_tokens\": 1, \"logprobs\": 1, \"seed\": 1234, \"echo\": true}" || true)
  [ "${pre##*$'\n'}" = 200 ] || { echo "echo request: ${pre%$'\n'*}" >&2; echo "the server lacks /v1/completions echo+logprobs" >&2; exit 2; }
  # 4. lm-eval.
  log "$label: lm_eval $TASKS"
  t0=$SECONDS
  (cd "$OUT" && "$VENV/bin/lm_eval" --model local-completions \
    --model_args "base_url=$URL/v1/completions,model=$label,tokenizer_backend=remote,tokenized_requests=False,num_concurrent=$CONCURRENT,max_retries=3,timeout=1200" \
    --tasks "$TASKS" --include_path "$ROOT/benches/lm-eval/tasks" \
    --output_path "$dir" --log_samples ${LIMIT:+--limit "$LIMIT"}) >"$dir/lm_eval.log" 2>&1 \
    || { tail -30 "$dir/lm_eval.log" >&2; echo "lm_eval failed for $label (log: $dir/lm_eval.log)" >&2; exit 1; }
  log "$label: lm_eval done in $((SECONDS - t0)) s"
  grep -A20 '^|' "$dir/lm_eval.log" | head -20 >&2 || true
  stop_server
done

# 5. The table.
"$VENV/bin/python" benches/lm-eval/summary.py "$OUT" "$TASKS" "${LABELS[@]}" | tee "$OUT/summary.md"
