#!/usr/bin/env bash
# Build llama.cpp's own CPU tools from the pinned source (scripts/fetch-llama-cpp.sh) for
# side-by-side tests and fidelity reports: llama-quantize, llama-imatrix, llama-perplexity and
# llama-server (the chat-template/tokenization oracle of tests/llama_server_template.rs; built
# without its web UI: no npm and no download of prebuilt UI assets).
# Output: vendor/llama.cpp/build-cpu/bin/ (git-ignored). Idempotent: a build directory
# configured by an older version of this script (LLAMA_BUILD_SERVER=OFF) is reconfigured in
# place and only the missing targets are compiled. From scratch on 2 cores: ~3.7 min for the first
# three tools, +2.7 min for llama-server (2026-12-06, benches/results/2026-12-06-llama-server-template).
# Usage: scripts/build-llama-tools.sh [JOBS]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-llama-cpp.sh >/dev/null
SRC=vendor/llama.cpp
BUILD=$SRC/build-cpu
JOBS=${1:-$(nproc)}
TARGETS=(llama-quantize llama-imatrix llama-perplexity llama-server)
gen=(); command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
if [ -f "$BUILD/CMakeCache.txt" ]; then gen=(); fi # the generator of an existing cache stays
if ! grep -qx 'LLAMA_BUILD_SERVER:BOOL=ON' "$BUILD/CMakeCache.txt" 2>/dev/null \
  || ! grep -qx 'LLAMA_USE_PREBUILT_UI:BOOL=OFF' "$BUILD/CMakeCache.txt" 2>/dev/null; then
  cmake -S "$SRC" -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF >"$BUILD.cmake.log" 2>&1 \
    || { cat "$BUILD.cmake.log"; exit 1; }
fi
cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}" >"$BUILD.build.log" 2>&1 \
  || { tail -50 "$BUILD.build.log"; exit 1; }
echo "llama.cpp tools: $BUILD/bin (${TARGETS[*]})"
