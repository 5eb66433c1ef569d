#!/usr/bin/env bash
# Mirrors scripts/fidelity-smollm2.sh for ours-default only (old and new binary), 30 chunks as the 2026-11-30 run.
# Usage (from the repository root): OUT=DIR OLD_BIN=<airavata built before the addition> bash THIS_FILE
set -euo pipefail
cd "$(dirname "$0")/../../../../.."
W=/tmp/fidelity-smollm2; O=${OUT:?output dir}; mkdir -p $W $O
T=vendor/llama.cpp/build-cpu/bin
BASE=vendor/models/smollm2/SmolLM2-135M-Instruct.F16.gguf
python3 - /work/shared/assets/eval-wikitext2/wiki.test.raw "$W/calib.txt" "$W/eval.txt" <<'PY'
import sys
t = open(sys.argv[1], encoding="utf-8").read()
i = t.index("\n = ", len(t) // 2)
open(sys.argv[2], "w", encoding="utf-8").write(t[:i])
open(sys.argv[3], "w", encoding="utf-8").write(t[i:])
PY
for v in new old; do
  BIN=target/release/airavata; [ $v = old ] && BIN=${OLD_BIN:?copy of the binary before the addition}
  if [ ! -f $W/ours-default-$v.gguf ]; then
    t0=$(date +%s.%N)
    $BIN quantize $BASE $W/ours-default-$v.gguf --quiet >>$O/log.txt 2>&1
    echo "ours-default-$v $(echo "$(date +%s.%N) - $t0" | bc) s" >>$O/times.txt
  fi
done
[ -f $W/base.kld ] || $T/llama-perplexity -m $BASE -f $W/eval.txt -c 256 --chunks 30 --kl-divergence-base $W/base.kld -t $(nproc) >$O/base.txt 2>&1
for v in new old; do
  $T/llama-perplexity -m $W/ours-default-$v.gguf --kl-divergence-base $W/base.kld --kl-divergence -c 256 --chunks 30 -t $(nproc) >$O/kld-ours-default-$v.txt 2>&1
  grep -E "Mean +KLD|Same top" $O/kld-ours-default-$v.txt
done
echo smol done
