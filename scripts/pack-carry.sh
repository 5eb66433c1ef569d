#!/usr/bin/env bash
# Prepare .carry/ (git-ignored) for scripts/gpu-bench.sh on a GPU host that has
# no cargo and no registry access:
#   .carry/llama-src.tgz  pinned llama.cpp source, trimmed of docs, models and other backends
#   .carry/bin/           airavata built with --features dynamic-backends + its shared libraries
#   .carry/bnb-site.zip   bitsandbytes wheel contents with only the CUDA 13 library (old-app stage)
#   .carry/prompts.jsonl  the shared Airavata prompt set (soak stage)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
mkdir -p .carry/bin
scripts/fetch-llama-cpp.sh
tar czf .carry/llama-src.tgz -C vendor \
  --exclude='llama.cpp/models/*' --exclude='llama.cpp/build*' --exclude='llama.cpp/docs' --exclude='llama.cpp/media' --exclude='llama.cpp/benches' \
  --exclude='llama.cpp/ggml/src/ggml-'{sycl,vulkan,opencl,hexagon,cann,musa,webgpu,zdnn,metal} \
  llama.cpp
CARGO_TARGET_DIR=${DYN_TARGET:-target-dyn} cargo build --release --features dynamic-backends
dyn=${DYN_TARGET:-target-dyn}/release
cp "$dyn/airavata" .carry/bin/
find "$dyn/build" -path '*llama-cpp-sys-2*' \( -name 'libggml*.so*' -o -name 'libllama*.so*' -o -name 'libmtmd*.so*' \) -exec cp -a {} .carry/bin/ \;
if [ ! -f .carry/bnb-site.zip ]; then
  tmp=$(mktemp -d)
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_24_x86_64 -d "$tmp" bitsandbytes==0.50.2
  (cd "$tmp" && mkdir site && cd site && unzip -q ../bitsandbytes-*.whl \
     && find . -name 'libbitsandbytes_*.so' ! -name '*cuda130*' ! -name '*cpu*' -delete && zip -qr "$root/.carry/bnb-site.zip" .)
  rm -rf "$tmp"
fi
# The Airavata prompt set for the soak stage.
assets=${AIRAVATA_ASSETS:-../shared/assets}
cp "$assets/eval-airavata-prompts/prompts.jsonl" .carry/prompts.jsonl
du -sh .carry/*
