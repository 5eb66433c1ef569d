#!/usr/bin/env bash
# ev.sh NAME MODE [extra args]: MODE cal (wiki first half, 16384 tokens) or default (built-in text)
set -euo pipefail
cd /tmp/cal-smol
NAME=$1; MODE=$2; shift 2
BIN=${BIN:-/work/wt-cal/target/release/airavata}
T=/work/main/vendor/llama.cpp/build-cpu/bin
BASE=/work/main/vendor/models/smollm2/SmolLM2-135M-Instruct.F16.gguf
W=/tmp/fidelity-smollm2
if [ ! -f $NAME.gguf ]; then
  t0=$(date +%s)
  if [ $MODE = cal ]; then
    "$BIN" quantize $BASE $NAME.gguf --calibration $W/calib.txt --calibration-tokens 16384 --quiet "$@" > $NAME.qlog 2>&1
  else
    "$BIN" quantize $BASE $NAME.gguf --quiet "$@" > $NAME.qlog 2>&1
  fi
  echo "$NAME quantize $(( $(date +%s) - t0 )) s" >> times.txt
fi
$T/llama-perplexity -m $NAME.gguf --kl-divergence-base $W/base.kld --kl-divergence -c 256 --chunks 30 -t 2 > kld-$NAME.txt 2>&1
tok=$("$BIN" inspect $NAME.gguf --json | python3 -c "import json,sys; print(json.load(sys.stdin)['metadata'].get('airavata.calibration.tokens'))")
printf "%-28s %s  tokens %s\n" $NAME "$(grep -E 'Mean +KLD' kld-$NAME.txt | sed 's/.*KLD: *//')" "$tok" | tee -a results.txt
