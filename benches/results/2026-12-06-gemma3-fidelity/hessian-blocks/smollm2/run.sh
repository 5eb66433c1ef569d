#!/bin/bash
# SmolLM2: Hessian block 1024 (default) vs 2048 (one block for the 1536-wide ffn_down input), calibrated on the
# WikiText-2 first half (cal) or the built-in text (def), perturbed by the calibration token count; 120 chunks.
set -u
cd /tmp/hbs
T=/work/main/vendor/llama.cpp/build-cpu/bin
BASE=/work/main/vendor/models/smollm2/SmolLM2-135M-Instruct.F16.gguf
W=/tmp/fidelity-smollm2
BIN=/work/main/target/release/airavata
[ -f base120.kld ] || $T/llama-perplexity -m $BASE -f $W/eval.txt -c 256 --chunks 120 --kl-divergence-base base120.kld -t 2 > base120.txt 2>&1
run() {  # name mode tokens hb
  local name=$1 mode=$2 tok=$3 hb=$4 t0=$(date +%s)
  if [ $mode = cal ]; then
    "$BIN" quantize $BASE $name.gguf --calibration $W/calib.txt --calibration-tokens $tok --hessian-block $hb --quiet > $name.qlog 2>&1
  else
    "$BIN" quantize $BASE $name.gguf --calibration-tokens $tok --hessian-block $hb --quiet > $name.qlog 2>&1
  fi
  echo "$name quantize $(( $(date +%s) - t0 )) s" >> times.txt
  $T/llama-perplexity -m $name.gguf --kl-divergence-base base120.kld --kl-divergence -c 256 --chunks 120 -t 2 > kld-$name.txt 2>&1
  printf "%-22s %s\n" $name "$(grep -E 'Mean +KLD' kld-$name.txt | sed 's/.*KLD: *//')" >> results.txt
  rm -f $name.gguf
}
for tok in 16384 14336 12288; do
  for hb in 1024 2048; do run cal-$tok-hb$hb cal $tok $hb; done
done
for tok in 16384 12288; do
  for hb in 1024 2048; do run def-$tok-hb$hb def $tok $hb; done
done
echo DONE >> results.txt
