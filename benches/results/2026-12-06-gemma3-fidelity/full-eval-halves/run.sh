#!/bin/bash
# Full evaluation halves (all chunks), the two calibrated variants, paired on the same base logits.
set -e
cd /work/main
T=vendor/llama.cpp/build-cpu/bin
W=/tmp/fidelity-gemma3
O=/tmp/fullkld
BASE=/tmp/g3repo/vendor/models/gemma3/gemma-3-270m.F16.gguf
for lang in en hi; do
  $T/llama-perplexity -m $BASE -f $W/eval-$lang.txt -c 256 --kl-divergence-base $O/base-$lang.kld -t 2 > $O/base-$lang.txt 2>&1
  for m in lq-iq4_xs-imatrix ours-cal lq-iq4_xs; do
    $T/llama-perplexity -m $W/$m.gguf --kl-divergence-base $O/base-$lang.kld --kl-divergence -c 256 -t 2 > $O/kld-$m-$lang.txt 2>&1
    grep -E "^Mean +KLD" $O/kld-$m-$lang.txt | sed "s/^/$m $lang /"
  done
done
echo DONE
