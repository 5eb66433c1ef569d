#!/bin/bash
set -u
cd /tmp/hbd
T=/work/main/vendor/llama.cpp/build-cpu/bin
BASE=/tmp/g3repo/vendor/models/gemma3/gemma-3-270m.F16.gguf
K=/tmp/fullkld
BIN=/work/main/target/release/airavata
run() {  # name [args...]
  local name=$1; shift
  local t0=$(date +%s)
  "$BIN" quantize $BASE $name.gguf --quiet "$@" > $name.qlog 2>&1
  echo "$name quantize $(( $(date +%s) - t0 )) s" >> times.txt
  for l in en hi; do
    $T/llama-perplexity -m $name.gguf --kl-divergence-base $K/base-$l.kld --kl-divergence -c 256 -t 2 > kld-$name-$l.txt 2>&1
  done
  printf "%-22s en %s  hi %s\n" $name "$(grep -E 'Mean +KLD' kld-$name-en.txt | sed 's/.*KLD: *//')" "$(grep -E 'Mean +KLD' kld-$name-hi.txt | sed 's/.*KLD: *//')" >> results.txt
}
run default-new-14336 --calibration-tokens 14336
run default-hb1024-14336 --calibration-tokens 14336 --hessian-block 1024
# SmolLM2 default on the 30-chunk protocol of BENCHMARKS (base.kld of scripts/fidelity-smollm2.sh)
S=/work/main/vendor/models/smollm2/SmolLM2-135M-Instruct.F16.gguf
W=/tmp/fidelity-smollm2
"$BIN" quantize $S smol-default-new.gguf --quiet > smol.qlog 2>&1
$T/llama-perplexity -m smol-default-new.gguf --kl-divergence-base $W/base.kld --kl-divergence -c 256 --chunks 30 -t 2 > kld-smol-default-new.txt 2>&1
printf "%-22s %s\n" smol-default-new-30ch "$(grep -E 'Mean +KLD' kld-smol-default-new.txt | sed 's/.*KLD: *//')" >> results.txt
echo DONE2 >> results.txt
