#!/bin/bash
set -u
cd /tmp/hb
T=/work/main/vendor/llama.cpp/build-cpu/bin
BASE=/tmp/g3repo/vendor/models/gemma3/gemma-3-270m.F16.gguf
W=/tmp/fidelity-gemma3
K=/tmp/fullkld
BIN=/work/main/target/release/airavata
run() {  # name tokens [args...]
  local name=$1 tok=$2; shift 2
  local t0=$(date +%s)
  "$BIN" quantize $BASE $name.gguf --calibration $W/calib.txt --calibration-tokens $tok --quiet "$@" > $name.qlog 2>&1
  echo "$name quantize $(( $(date +%s) - t0 )) s" >> times.txt
  for l in en hi; do
    $T/llama-perplexity -m $name.gguf --kl-divergence-base $K/base-$l.kld --kl-divergence -c 256 -t 2 > kld-$name-$l.txt 2>&1
  done
  printf "%-22s en %s  hi %s\n" $name "$(grep -E 'Mean +KLD' kld-$name-en.txt | sed 's/.*KLD: *//')" "$(grep -E 'Mean +KLD' kld-$name-hi.txt | sed 's/.*KLD: *//')" >> results.txt
  rm -f $name.gguf
}
run hb2048-16384 16384 --hessian-block 2048
run hb2048-14336 14336 --hessian-block 2048
run hb2048-12288 12288 --hessian-block 2048
echo DONE >> results.txt
