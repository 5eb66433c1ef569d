#!/bin/bash
# Replicates of the calibrated-rounding lead (patches 2 + 3, AIRAVATA_ACTORDER=1 AIRAVATA_PUREQW=1) against main,
# Gemma 3 270M, perturbed by the calibration token count; scored on the whole PUD evaluation halves.
set -u
cd /tmp/lead
T=/work/main/vendor/llama.cpp/build-cpu/bin
BASE=/tmp/g3repo/vendor/models/gemma3/gemma-3-270m.F16.gguf
W=/tmp/fidelity-gemma3
K=/tmp/fullkld
run() {  # name binary tokens [env...]
  local name=$1 bin=$2 tok=$3; shift 3
  local t0=$(date +%s)
  env "$@" "$bin" quantize $BASE $name.gguf --calibration $W/calib.txt --calibration-tokens $tok --quiet > $name.qlog 2>&1
  echo "$name quantize $(( $(date +%s) - t0 )) s" >> times.txt
  for l in en hi; do
    $T/llama-perplexity -m $name.gguf --kl-divergence-base $K/base-$l.kld --kl-divergence -c 256 -t 2 > kld-$name-$l.txt 2>&1
  done
  printf "%-22s en %s  hi %s\n" $name "$(grep -E 'Mean +KLD' kld-$name-en.txt | sed 's/.*KLD: *//')" "$(grep -E 'Mean +KLD' kld-$name-hi.txt | sed 's/.*KLD: *//')" >> results.txt
}
MAIN=/work/main/target/release/airavata
LEAD=/work/wt-lead/target/release/airavata
run lead-16384 $LEAD 16384 AIRAVATA_ACTORDER=1 AIRAVATA_PUREQW=1
run main-14336 $MAIN 14336
run lead-14336 $LEAD 14336 AIRAVATA_ACTORDER=1 AIRAVATA_PUREQW=1
run main-12288 $MAIN 12288
run lead-12288 $LEAD 12288 AIRAVATA_ACTORDER=1 AIRAVATA_PUREQW=1
echo DONE >> results.txt
