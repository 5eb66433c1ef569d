#!/usr/bin/env bash
# On the GPU host: what the CPU advertises vs executes, and where the CPU-only
# calibration's SIGILL comes from (LD_PRELOAD reporter). Results in $OUT/sigill.tgz.
set -uo pipefail
cd "$(dirname "$0")/../.."
R=$OUT/sigill; mkdir -p "$R"
BIN=$PWD/.carry/bin
{ nproc; grep -m1 "model name" /proc/cpuinfo; grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E "avx512|amx" | tr '\n' ' '; echo; uname -r; } > "$R/host.txt" 2>&1
gcc -O1 -mavx512f -mavx512vnni -mavx512bf16 -mavx512fp16 -mavx512vbmi -mamx-tile -o /tmp/cpu-probe scripts/probe/cpu-probe.c && /tmp/cpu-probe > "$R/cpu-probe.txt" 2>&1
gcc -shared -fPIC -o /tmp/sigill-report.so scripts/probe/sigill-report.c
ls "$BIN" > "$R/bin-ls.txt"
CKPT=/tmp/ab/synth-airavata
mkdir -p /tmp/ab
timeout 120 env LD_LIBRARY_PATH=$BIN $BIN/airavata synth $CKPT --config airavata --shards 3 > "$R/synth.txt" 2>&1
for v in all; do
  timeout 150 env LD_LIBRARY_PATH=$BIN LD_PRELOAD=/tmp/sigill-report.so RUST_LOG=info $BIN/airavata convert $CKPT -o /tmp/ab/cal.gguf --force > "$R/convert-$v.txt" 2>&1
  echo "rc=$?" >> "$R/convert-$v.txt"
done
# Which variant is the offender: disassemble around the reported offset.
off=$(grep -o "offset in lib: 0x[0-9a-f]*" "$R/convert-all.txt" | head -1 | awk '{print $4}')
lib=$(grep -o "in /[^,]*" "$R/convert-all.txt" | head -1 | cut -c4-)
if [ -n "$off" ] && [ -n "$lib" ] && command -v objdump >/dev/null; then
  s=$((off - 48)); e=$((off + 32))
  objdump -d --start-address=$s --stop-address=$e "$lib" > "$R/disasm.txt" 2>&1
fi
tar czf "$OUT/sigill.tgz" -C "$OUT" sigill
cat "$R"/host.txt "$R"/cpu-probe.txt; grep -v "^\s*$" "$R/convert-all.txt" | grep -iE "sigill|bytes|offset|backend|variant|rc=|calibrat|error" | head -30; cat "$R/disasm.txt" 2>/dev/null | tail -20
