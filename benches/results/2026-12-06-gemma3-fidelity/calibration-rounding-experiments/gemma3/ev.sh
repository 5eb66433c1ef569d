#!/usr/bin/env bash
# ev.sh NAME [extra quantize args...]: quantize base with --calibration (PUD cal half) using $BIN, then KLD hi/en
set -euo pipefail
cd /tmp/cal-work
NAME=$1; shift
BIN=${BIN:-/work/wt-cal/target/release/airavata}
T=/work/main/vendor/llama.cpp/build-cpu/bin
if [ ! -f $NAME.gguf ]; then
  t0=$(date +%s)
  "$BIN" quantize base.gguf $NAME.gguf --calibration calib.txt --calibration-tokens 16384 --quiet "$@" > $NAME.qlog 2>&1
  echo "$NAME quantize $(( $(date +%s) - t0 )) s" >> times.txt
fi
for l in hi en; do
  $T/llama-perplexity -m $NAME.gguf --kl-divergence-base base-$l.kld --kl-divergence -c 256 --chunks 32 -t 2 > kld-$NAME-$l.txt 2>&1
done
printf "%-28s hi %s  en %s\n" $NAME "$(grep -E 'Mean +KLD' kld-$NAME-hi.txt | sed 's/.*KLD: *//')" "$(grep -E 'Mean +KLD' kld-$NAME-en.txt | sed 's/.*KLD: *//')" | tee -a results.txt
