#!/usr/bin/env bash
# On the GPU host (after gpu-bench.sh build synth gguf): the CPU-only serve path
# that died with SIGILL in llama.cpp's AMX kernels, the GPU paths through the
# same loader, and a short serving sweep. Results under $OUT/c.
set -uo pipefail
cd "$(dirname "$0")/../.."
C=$OUT/c; mkdir -p "$C"
BIN=$PWD/.carry/bin
A=(env LD_LIBRARY_PATH=$BIN RUST_LOG=airavata=info,llama-cpp-2=info "$BIN/airavata")
M=/tmp/ab/airavata-nf4.gguf
strip() { sed 's/\x1b\[[0-9;]*m//g' | cut -c1-260; }
one() { # label, port, flags...
  local label=$1 port=$2; shift 2
  echo "== $label: serve $*"
  "${A[@]}" serve "$M" --port "$port" --parallel 1 --ctx-size 512 "$@" > "$C/$label.log" 2>&1 &
  local p=$!
  for i in $(seq 1 180); do curl -sf http://127.0.0.1:$port/health >/dev/null && break; kill -0 $p 2>/dev/null || break; sleep 1; done
  curl -s -m 120 http://127.0.0.1:$port/generate -H 'content-type: application/json' \
    -d '{"prompt":"भारत की राजधानी","max_new_tokens":8}' | cut -c1-300; echo
  curl -s http://127.0.0.1:$port/info | python3 -c "import json,sys; i=json.load(sys.stdin); print('engines', [(e['engine'], e['device'], e['status']) for e in i['engines']])" 2>&1
  kill $p 2>/dev/null; wait $p; echo "server exit $?"
  grep -E -i "AMX|loaded CPU backend|loaded /|SIGILL|error" "$C/$label.log" | strip | head -6
}
{
  one cpu 18101
  one cpu-devices 18102 --devices cpu
  one gpu0 18103 --devices 0 --backends-dir /tmp/ab/build/bin
  one gpu-auto 18104 --backends-dir /tmp/ab/build/bin
} > "$C/amx-check.txt" 2>&1
cat "$C/amx-check.txt"
OUT=$C CONC=1,64 bash scripts/gpu-bench.sh serveours > $C/serveours.txt 2>&1 || true
tar czf $OUT/c.tgz -C $OUT c
