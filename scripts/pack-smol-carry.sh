#!/usr/bin/env bash
# SmolLM2-135M-Instruct for the GPU host's real-model checks (gpu-bench.sh smol, mmkld, attncheck), which has no
# registry access and takes at most 64 MiB of travelling tree per call: made nf4 here (our default scheme, no
# calibration, from the F16 base of scripts/fetch-smollm2.sh), xz-compressed and split into parts of at most
# PART_MB (default 40) MB, one git-ignored folder per part, to carry over chained calls:
#   .carry-m1/smol.xz.1  .carry-m1/smol.sha256 (of the GGUF)  .carry-m1/wiki.txt (WikiText-2 test, first 200 kB)
#   .carry-m1/prompts-en.jsonl (16 English sentences of PUD, prompts for attncheck)
#   .carry-m2/smol.xz.2  ...
# Usage: scripts/pack-smol-carry.sh [AIRAVATA_BINARY]   (default .carry/bin/airavata, else target/release/airavata)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-}
if [ -z "$bin" ]; then
  if [ -x .carry/bin/airavata ]; then bin=.carry/bin/airavata; else bin=target/release/airavata; fi
fi
[ -x "$bin" ] || { echo "no airavata binary at $bin (build one, or pass its path)" >&2; exit 1; }
export LD_LIBRARY_PATH="$(dirname "$bin")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
assets=${AIRAVATA_ASSETS:-../shared/assets}
wiki=$assets/eval-wikitext2/wiki.test.raw
[ -f "$wiki" ] || { echo "WikiText-2 test text not found under $assets" >&2; exit 1; }
scripts/fetch-smollm2.sh "$bin"
dir=vendor/models/smollm2
nf4=$dir/SmolLM2-135M-Instruct.nf4.gguf
[ -f "$nf4" ] || "$bin" quantize "$dir/SmolLM2-135M-Instruct.F16.gguf" "$nf4" --no-calibration -q
rm -rf .carry-m[0-9]*
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
xz -T0 -9 -c "$nf4" >"$tmp/smol.xz"
split -b "$(( ${PART_MB:-40} * 1000 * 1000 ))" -d -a 2 "$tmp/smol.xz" "$tmp/part."
i=0
for p in "$tmp"/part.*; do
  i=$((i + 1))
  mkdir -p ".carry-m$i"
  mv "$p" ".carry-m$i/smol.xz.$i"
done
sha256sum "$nf4" | cut -d' ' -f1 >.carry-m1/smol.sha256
head -c 200000 "$wiki" >.carry-m1/wiki.txt
# English prompts for attncheck on this English model (CHECK_PROMPTS=.carry-m1/prompts-en.jsonl): the first
# sentences of the PUD English set, so greedy answers are real text with clear top-2 gaps.
python3 - "$assets/eval-pud-hi-en/en_pud.txt" .carry-m1/prompts-en.jsonl <<'PY'
import json, sys
lines = [l.strip() for l in open(sys.argv[1], encoding="utf-8") if l.strip()][:16]
with open(sys.argv[2], "w", encoding="utf-8") as f:
    for l in lines:
        f.write(json.dumps({"prompt": l}, ensure_ascii=False) + "\n")
PY
du -sh .carry-m*/*
echo "SmolLM2 nf4 ($(stat -c %s "$nf4") bytes, sha256 $(cat .carry-m1/smol.sha256)) in $i parts"
