#!/usr/bin/env bash
# Fidelity report on Gemma 3 270M (base; F16 "base" made by scripts/fetch-gemma3.sh AIRAVATA_BIN from
# the shipped Q4_K_M), Hindi and English, side by side with llama.cpp's own tools. Text: the 1000
# aligned PUD sentences (AIRAVATA_ASSETS/eval-pud-hi-en): sentences 1-500 of each language are the
# calibration half, 501-1000 the evaluation half (disjoint). One calibration text for every
# calibrated variant: both languages' calibration halves, interleaved in blocks of 10 sentences
# (so a CAL_TOKENS prefix holds both languages). Variants:
#   ours (defaults: built-in Hindi/English calibration), ours --no-calibration,
#   llama-quantize IQ4_XS without and with llama-imatrix on the calibration text,
#   ours --calibration <calibration text>, ours --scheme bnb-nf4 (the old app's scheme);
# each scored by llama-perplexity --kl-divergence against the F16 base on each language's
# evaluation half (sentences joined by newlines; CTX tokens a chunk, CHUNKS chunks).
# Targets (issue 25): defaults <= 0.5 x llama-quantize IQ4_XS in both languages; calibrated
# <= 0.70 x llama-quantize IQ4_XS + imatrix in both languages.
# Usage: scripts/fidelity-gemma3.sh OUT_DIR [CHUNKS]   (needs AIRAVATA_BIN or
#        target/release/airavata, scripts/build-llama-tools.sh, scripts/fetch-gemma3.sh AIRAVATA_BIN
#        or BASE=<F16 gguf>, AIRAVATA_ASSETS). Work files (big: the KLD base files are
#        CHUNKS x CTX/2 x 262144 x 2 bytes each, ~2 GB at the defaults) go to WORK
#        (default /tmp/fidelity-gemma3) and are kept, so a rerun only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: $0 OUT_DIR [CHUNKS]}
CHUNKS=${2:-32}
CTX=${CTX:-256}
CAL_TOKENS=16384
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BIN=${AIRAVATA_BIN:-target/release/airavata}
T=vendor/llama.cpp/build-cpu/bin
BASE=${BASE:-vendor/models/gemma3/gemma-3-270m.F16.gguf}
ASSETS=${AIRAVATA_ASSETS:-../shared/assets}
PUD=$ASSETS/eval-pud-hi-en
[ -x "$BIN" ] || { echo "build airavata first (or set AIRAVATA_BIN)"; exit 1; }
[ -f "$BASE" ] || { echo "make the F16 base first: scripts/fetch-gemma3.sh $BIN (or set BASE)"; exit 1; }
[ -x "$T/llama-perplexity" ] && [ -x "$T/llama-imatrix" ] && [ -x "$T/llama-quantize" ] \
  || { echo "run scripts/build-llama-tools.sh first"; exit 1; }
[ -f "$PUD/hi_pud.txt" ] && [ -f "$PUD/en_pud.txt" ] || { echo "$PUD/{hi,en}_pud.txt missing (AIRAVATA_ASSETS)"; exit 1; }
W=${WORK:-/tmp/fidelity-gemma3}
mkdir -p "$W"
THREADS=$(nproc)
python3 - "$PUD" "$W" <<'PY'
import sys
pud, w = sys.argv[1], sys.argv[2]
hi = open(f"{pud}/hi_pud.txt", encoding="utf-8").read().splitlines()
en = open(f"{pud}/en_pud.txt", encoding="utf-8").read().splitlines()
assert len(hi) == len(en) == 1000, (len(hi), len(en))
cal = []
for i in range(0, 500, 10):
    cal += hi[i:i + 10] + en[i:i + 10]
open(f"{w}/calib.txt", "w", encoding="utf-8").write("\n".join(cal) + "\n")
open(f"{w}/eval-hi.txt", "w", encoding="utf-8").write("\n".join(hi[500:]) + "\n")
open(f"{w}/eval-en.txt", "w", encoding="utf-8").write("\n".join(en[500:]) + "\n")
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
log "quantize ($BASE)"
timed ours-default      "$BIN" quantize "$BASE" "$W/ours-default.gguf" --quiet
timed ours-nocal        "$BIN" quantize "$BASE" "$W/ours-nocal.gguf" --no-calibration --quiet
timed ours-cal          "$BIN" quantize "$BASE" "$W/ours-cal.gguf" --calibration "$W/calib.txt" --calibration-tokens $CAL_TOKENS --quiet
timed ours-bnb-nf4      "$BIN" quantize "$BASE" "$W/ours-bnb-nf4.gguf" --scheme bnb-nf4 --quiet
timed imatrix           "$T/llama-imatrix" -m "$BASE" -f "$W/calib.txt" -o "$W/imatrix.gguf" -c 512 --chunks $((CAL_TOKENS / 512)) -t "$THREADS"
timed lq-iq4_xs         "$T/llama-quantize" "$BASE" "$W/lq-iq4_xs.gguf" IQ4_XS
timed lq-iq4_xs-imatrix "$T/llama-quantize" --imatrix "$W/imatrix.gguf" "$BASE" "$W/lq-iq4_xs-imatrix.gguf" IQ4_XS
ROWS="ours-default ours-nocal lq-iq4_xs lq-iq4_xs-imatrix ours-cal ours-bnb-nf4"
done_kld() { [ -s "$OUT/kld-$1-$2.txt" ] && grep -Eq "Mean +KLD:" "$OUT/kld-$1-$2.txt"; }
for lang in hi en; do
  todo=(); for m in $ROWS; do done_kld "$m" "$lang" || todo+=("$m"); done
  [ ${#todo[@]} -gt 0 ] || continue
  log "base logits ($lang)"
  if [ ! -f "$W/base-$lang.kld" ]; then
    t0=$(date +%s.%N)
    "$T/llama-perplexity" -m "$BASE" -f "$W/eval-$lang.txt" -c "$CTX" --chunks "$CHUNKS" \
      --kl-divergence-base "$W/base-$lang.kld" -t "$THREADS" >"$OUT/base-$lang.txt" 2>&1
    echo "base-logits-$lang $(echo "$(date +%s.%N) - $t0" | bc) s" >>"$OUT/times.txt"
  fi
  for m in "${todo[@]}"; do
    log "kld $m ($lang)"
    t0=$(date +%s.%N)
    "$T/llama-perplexity" -m "$W/$m.gguf" --kl-divergence-base "$W/base-$lang.kld" --kl-divergence \
      -c "$CTX" --chunks "$CHUNKS" -t "$THREADS" >"$OUT/kld-$m-$lang.txt" 2>&1
    echo "kld-$m-$lang $(echo "$(date +%s.%N) - $t0" | bc) s" >>"$OUT/times.txt"
  done
  # A KLD base file is CHUNKS x CTX/2 x n_vocab x 2 bytes: keep one at a time.
  [ "${KEEP_KLD:-0}" = 1 ] || rm -f "$W/base-$lang.kld"
done
for m in $ROWS; do "$BIN" inspect "$W/$m.gguf" --json >"$W/$m.json"; done
python3 - "$OUT" "$W" "$ROWS" "$CTX" "$CHUNKS" <<'PY'
import json, os, re, sys
out, w, rows, ctx, chunks = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4], sys.argv[5]
def grab(txt, pat):
    m = re.search(pat, txt)
    return float(m.group(1)) if m else float("nan")
res = {}
for r in rows:
    meta = json.load(open(f"{w}/{r}.json")).get("metadata", {})
    cal = meta.get("airavata.calibration.dataset") or meta.get("quantize.imatrix.dataset") or "-"
    x = dict(bytes=os.path.getsize(f"{w}/{r}.gguf"), cal=str(cal),
             tokens=meta.get("airavata.calibration.tokens"))
    for lang in ("hi", "en"):
        t = open(f"{out}/kld-{r}-{lang}.txt", encoding="utf-8", errors="replace").read()
        x[f"kld_{lang}"] = grab(t, r"Mean\s+KLD:\s+([0-9.]+)")
        x[f"p99_{lang}"] = grab(t, r"99\.0%\s+KLD:\s+([0-9.]+)")
        x[f"top_{lang}"] = grab(t, r"Same top p:\s+([0-9.]+)")
    res[r] = x
json.dump(res, open(f"{out}/summary.json", "w"), indent=1)
lq, im = res["lq-iq4_xs"], res["lq-iq4_xs-imatrix"]
names = {
    "ours-default": "ours, defaults (built-in calibration)",
    "ours-nocal": "ours --no-calibration",
    "lq-iq4_xs": "llama-quantize IQ4_XS",
    "lq-iq4_xs-imatrix": "llama-quantize IQ4_XS + llama-imatrix (PUD cal.)",
    "ours-cal": "ours --calibration (PUD cal.)",
    "ours-bnb-nf4": "ours --scheme bnb-nf4",
}
with open(f"{out}/summary.md", "w") as f:
    f.write(f"Gemma 3 270M, KLD vs the F16 base on the PUD evaluation halves (ctx {ctx}, {chunks} chunks each)\n\n")
    f.write("| variant | size | Hindi KLD | English KLD | Hindi / IQ4_XS | English / IQ4_XS "
            "| Hindi / IQ4_XS+imatrix | English / IQ4_XS+imatrix | same top % hi / en |\n")
    f.write("|---|--:|--:|--:|--:|--:|--:|--:|--:|\n")
    for r in rows:
        x = res[r]
        f.write(f"| {names[r]} | {x['bytes'] / 1e6:.1f} MB | {x['kld_hi']:.4f} | {x['kld_en']:.4f} "
                f"| {x['kld_hi'] / lq['kld_hi']:.3f} | {x['kld_en'] / lq['kld_en']:.3f} "
                f"| {x['kld_hi'] / im['kld_hi']:.3f} | {x['kld_en'] / im['kld_en']:.3f} "
                f"| {x['top_hi']:.2f} / {x['top_en']:.2f} |\n")
    d, c = res["ours-default"], res["ours-cal"]
    def verdict(ok):
        return "met" if ok else "MISSED"
    a = [d[f"kld_{l}"] / lq[f"kld_{l}"] for l in ("hi", "en")]
    b = [c[f"kld_{l}"] / im[f"kld_{l}"] for l in ("hi", "en")]
    f.write(f"\ntarget defaults <= 0.5 x llama-quantize IQ4_XS: Hindi {a[0]:.3f}, English {a[1]:.3f} "
            f"-> {verdict(max(a) <= 0.5)}\n")
    f.write(f"target calibrated <= 0.70 x llama-quantize IQ4_XS + imatrix: Hindi {b[0]:.3f}, "
            f"English {b[1]:.3f} -> {verdict(max(b) <= 0.70)}\n")
print(open(f"{out}/summary.md").read())
PY
