#!/usr/bin/env bash
set -euo pipefail
cd /work/wt-tools
SRC=vendor/llama.cpp; BUILD=$SRC/build-cpu
s=$(date +%s)
cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF > /tmp/old.cmake.log 2>&1
cmake --build "$BUILD" -j 2 --target llama-quantize llama-imatrix llama-perplexity > /tmp/old.build.log 2>&1
m=$(date +%s); echo "old 3 tools (configure+build): $((m-s)) s"
scripts/build-llama-tools.sh 2
e=$(date +%s); echo "new script on top (reconfigure + llama-server): $((e-m)) s"
s2=$(date +%s); scripts/build-llama-tools.sh 2; e2=$(date +%s); echo "rerun (idempotent): $((e2-s2)) s"
