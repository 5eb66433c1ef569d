#!/usr/bin/env bash
# Fidelity report on a real trained model (SmolLM2-135M-Instruct, F16 base made from the shipped
# Q4_1), side by side with llama.cpp's own tools, scored by llama-perplexity --kl-divergence on the
# second half of WikiText-2 test; calibration texts never overlap it:
#   ours (defaults: built-in Hindi/English calibration), ours --no-calibration,
#   ours --calibration <first half>, llama-quantize IQ4_XS without and with llama-imatrix on that
#   same first half, llama-quantize Q4_K_M, and ours --scheme bnb-nf4 (the old app's scheme).
# Usage: scripts/fidelity-smollm2.sh OUT_DIR [CHUNKS]   (needs target/release/airavata,
#        scripts/build-llama-tools.sh, scripts/fetch-smollm2.sh, AIRAVATA_ASSETS)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: $0 OUT_DIR [CHUNKS]}
CHUNKS=${2:-40}
CTX=256
CAL_TOKENS=16384
mkdir -p "$OUT"
BIN=${AIRAVATA_BIN:-target/release/airavata}
T=vendor/llama.cpp/build-cpu/bin
BASE=vendor/models/smollm2/SmolLM2-135M-Instruct.F16.gguf
ASSETS=${AIRAVATA_ASSETS:-../shared/assets}
[ -x "$BIN" ] && [ -f "$BASE" ] || { echo "build airavata and fetch SmolLM2 first"; exit 1; }
[ "${OURS_ONLY:-0}" = 1 ] || [ -x "$T/llama-perplexity" ] || { echo "run scripts/build-llama-tools.sh first"; exit 1; }
# Work files (kept, so a rerun only does what is missing).
W=${WORK:-/tmp/fidelity-smollm2}
mkdir -p "$W"
# Disjoint halves of wiki.test.raw, split at an article heading.
python3 - "$ASSETS/eval-wikitext2/wiki.test.raw" "$W/calib.txt" "$W/eval.txt" <<'PY'
import sys
t = open(sys.argv[1], encoding="utf-8").read()
i = t.index("\n = ", len(t) // 2)
open(sys.argv[2], "w", encoding="utf-8").write(t[:i])
open(sys.argv[3], "w", encoding="utf-8").write(t[i:])
PY
log() { echo "== $*" | tee -a "$OUT/log.txt"; }
timed() {
  local name=$1; shift
  if [ -f "$W/$name.gguf" ]; then return 0; fi
  local t0; t0=$(date +%s.%N)
  "$@" >>"$OUT/log.txt" 2>&1
  echo "$name $(echo "$(date +%s.%N) - $t0" | bc) s" >>"$OUT/times.txt"
}
touch "$OUT/times.txt"
log "quantize"
timed ours-default        "$BIN" quantize "$BASE" "$W/ours-default.gguf" --quiet
timed ours-nocal          "$BIN" quantize "$BASE" "$W/ours-nocal.gguf" --no-calibration --quiet
timed ours-cal-wiki       "$BIN" quantize "$BASE" "$W/ours-cal-wiki.gguf" --calibration "$W/calib.txt" --calibration-tokens $CAL_TOKENS --quiet
timed ours-bnb-nf4        "$BIN" quantize "$BASE" "$W/ours-bnb-nf4.gguf" --scheme bnb-nf4 --quiet
if [ "${OURS_ONLY:-0}" = 1 ]; then exit 0; fi
timed imatrix             "$T/llama-imatrix" -m "$BASE" -f "$W/calib.txt" -o "$W/imatrix.gguf" -c 512 --chunks $((CAL_TOKENS / 512)) -t "$(nproc)"
timed lq-iq4_xs           "$T/llama-quantize" "$BASE" "$W/lq-iq4_xs.gguf" IQ4_XS
timed lq-iq4_xs-imatrix   "$T/llama-quantize" --imatrix "$W/imatrix.gguf" "$BASE" "$W/lq-iq4_xs-imatrix.gguf" IQ4_XS
# llama-quantize with the imatrix and our type mix (its default mix's early ffn_down Q5_K, which ours
# keeps with collected statistics, and attn_v Q5_0, which ours gives a GQA model's attn_v with
# collected statistics): rounding against rounding at equal types.
n_layer=$("$BIN" inspect "$BASE" --json | python3 -c "import json,sys; m=json.load(sys.stdin)['metadata']; print(m['llama.block_count'])")
timed lq-iq4_xs-imatrix-mix "$T/llama-quantize" --imatrix "$W/imatrix.gguf" --tensor-type "blk\.($(seq -s '|' 0 $((n_layer / 8 - 1))))\.ffn_down=q5_k" --tensor-type "attn_v=q5_0" "$BASE" "$W/lq-iq4_xs-imatrix-mix.gguf" IQ4_XS
timed lq-q4_k_m           "$T/llama-quantize" "$BASE" "$W/lq-q4_k_m.gguf" Q4_K_M
log "base logits"
[ -f "$W/base.kld" ] || "$T/llama-perplexity" -m "$BASE" -f "$W/eval.txt" -c $CTX --chunks "$CHUNKS" --kl-divergence-base "$W/base.kld" -t "$(nproc)" >>"$OUT/log.txt" 2>&1
for m in ours-default ours-nocal ours-cal-wiki lq-iq4_xs lq-iq4_xs-imatrix lq-iq4_xs-imatrix-mix lq-q4_k_m ours-bnb-nf4; do
  log "kld $m"
  "$T/llama-perplexity" -m "$W/$m.gguf" --kl-divergence-base "$W/base.kld" --kl-divergence -c $CTX --chunks "$CHUNKS" -t "$(nproc)" >"$OUT/kld-$m.txt" 2>&1
  "$BIN" inspect "$W/$m.gguf" --json >"$W/$m.json"
done
python3 - "$OUT" "$W" <<'PY'
import json, re, sys, os
out, w = sys.argv[1], sys.argv[2]
rows = ["ours-default", "ours-nocal", "ours-cal-wiki", "lq-iq4_xs", "lq-iq4_xs-imatrix", "lq-iq4_xs-imatrix-mix", "lq-q4_k_m", "ours-bnb-nf4"]
def grab(txt, pat):
    m = re.search(pat, txt)
    return float(m.group(1)) if m else float("nan")
res = {}
for r in rows:
    t = open(f"{out}/kld-{r}.txt", encoding="utf-8", errors="replace").read()
    meta = json.load(open(f"{w}/{r}.json"))
    cal = meta.get("metadata", {}).get("airavata.calibration.dataset") or meta.get("metadata", {}).get("quantize.imatrix.dataset") or "—"
    res[r] = dict(
        bytes=os.path.getsize(f"{w}/{r}.gguf"),
        kld=grab(t, r"Mean\s+KLD:\s+([0-9.]+)"),
        p99=grab(t, r"99\.0%\s+KLD:\s+([0-9.]+)"),
        top=grab(t, r"Same top p:\s+([0-9.]+)"),
        ppl=grab(t, r"Mean PPL\(Q\)\s*:\s+([0-9.]+)"),
        cal=str(cal), tokens=meta.get("metadata", {}).get("airavata.calibration.tokens"),
    )
json.dump(res, open(f"{out}/summary.json", "w"), indent=1)
with open(f"{out}/summary.md", "w") as f:
    f.write("| file | bytes | mean KLD | 99% KLD | same top % | PPL(Q) | calibration |\n|---|--:|--:|--:|--:|--:|---|\n")
    for r in rows:
        x = res[r]
        f.write(f"| {r} | {x['bytes']/1e6:.1f} M | {x['kld']:.4f} | {x['p99']:.3f} | {x['top']:.2f} | {x['ppl']:.3f} | {x['cal']}{' (' + str(x['tokens']) + ' tokens)' if x['tokens'] else ''} |\n")
    d = res
    f.write("\nratios (mean KLD): ")
    f.write(f"default/lq-iq4_xs = {d['ours-default']['kld']/d['lq-iq4_xs']['kld']:.3f}; ")
    f.write(f"default/bnb-nf4 = {d['ours-default']['kld']/d['ours-bnb-nf4']['kld']:.3f}; ")
    f.write(f"no-calibration/lq-iq4_xs = {d['ours-nocal']['kld']/d['lq-iq4_xs']['kld']:.3f}; ")
    f.write(f"calibrated-on-wiki/lq-iq4_xs-imatrix = {d['ours-cal-wiki']['kld']/d['lq-iq4_xs-imatrix']['kld']:.3f}; ")
    f.write(f"calibrated-on-wiki/lq-iq4_xs-imatrix-mix (same types) = {d['ours-cal-wiki']['kld']/d['lq-iq4_xs-imatrix-mix']['kld']:.3f}; ")
    f.write(f"size default/lq-iq4_xs = {d['ours-default']['bytes']/d['lq-iq4_xs']['bytes']:.4f}; ")
    f.write(f"size calibrated-on-wiki/lq-iq4_xs-imatrix = {d['ours-cal-wiki']['bytes']/d['lq-iq4_xs-imatrix']['bytes']:.4f}\n")
print(open(f"{out}/summary.md").read())
PY
