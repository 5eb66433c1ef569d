#!/usr/bin/env bash
# Build llama.cpp's own CPU tools from the pinned source (scripts/fetch-llama-cpp.sh) for
# side-by-side tests and fidelity reports: llama-quantize, llama-imatrix, llama-perplexity.
# Output: vendor/llama.cpp/build-cpu/bin/ (git-ignored). Idempotent; ~5 min on 2 cores.
# Usage: scripts/build-llama-tools.sh [JOBS]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-llama-cpp.sh >/dev/null
SRC=vendor/llama.cpp
BUILD=$SRC/build-cpu
JOBS=${1:-$(nproc)}
gen=(); command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S "$SRC" -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >"$BUILD.cmake.log" 2>&1 \
    || { cat "$BUILD.cmake.log"; exit 1; }
fi
cmake --build "$BUILD" -j "$JOBS" --target llama-quantize llama-imatrix llama-perplexity >"$BUILD.build.log" 2>&1 \
  || { tail -50 "$BUILD.build.log"; exit 1; }
echo "llama.cpp tools: $BUILD/bin (llama-quantize llama-imatrix llama-perplexity)"
