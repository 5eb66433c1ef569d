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
run default-new
run default-hb1024 --hessian-block 1024
echo DONE >> results.txt
