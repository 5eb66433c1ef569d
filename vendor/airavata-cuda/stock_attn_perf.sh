#!/usr/bin/env bash
# llama.cpp's own decode attention (ggml_flash_attn_ext on CUDA, b11434) at the grid the harness
# times: test-backend-ops perf over D 128, 32 heads, one query token per sequence, B sequences each
# with its own K/V stream (nr23 = {1, B}, as llama.cpp's per-sequence cache views it), mask on,
# f16 / q8_0 / q4_0 K and V, contexts 256..4096 (llama.cpp pads the cache view to 256).
# test-backend-ops reuses one K/V buffer per case, so small cases are L2-hot (compare with the
# harness's hot_us column there).
#   bash stock_attn_perf.sh OUT_DIR     (needs ../../.carry/llama-src.tgz or LLAMA_SRC, nvcc, cmake, ninja)
set -euo pipefail
cd "$(dirname "$0")"
OUT=${1:?usage: $0 OUT_DIR}
mkdir -p "$OUT"
W=${STOCK_WORK:-/tmp/stock-attn}
SRC=${LLAMA_SRC:-$W/llama.cpp}
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  mkdir -p "$W" && tar xzf ../../.carry/llama-src.tgz -C "$W"
fi
T=$SRC/tests/test-backend-ops.cpp
if ! grep -q AIRAVATA_FA_PERF "$T"; then
  python3 - "$T" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
anchor = "static std::vector<std::unique_ptr<test_case>> make_test_cases_perf() {\n    std::vector<std::unique_ptr<test_case>> test_cases;\n"
assert anchor in s, "make_test_cases_perf not found"
grid = """
    if (getenv("AIRAVATA_FA_PERF")) {  // issue 24's decode grid (vendor/airavata-cuda/stock_attn_perf.sh)
        for (ggml_type t : {GGML_TYPE_F16, GGML_TYPE_Q8_0, GGML_TYPE_Q4_0}) {
            for (int64_t b : {1, 16, 64, 128}) {
                for (int64_t kv : {256, 512, 1024, 2048, 4096}) {
                    test_cases.emplace_back(new test_flash_attn_ext(128, 128, 32, {1, b}, kv, 1, true, false, 0, 0, GGML_PREC_F32, t, t));
                }
            }
        }
        test_cases.emplace_back(new test_flash_attn_ext(64, 64, 3, {3, 1}, 1024, 1, true, false, 0, 0, GGML_PREC_F32, GGML_TYPE_F16, GGML_TYPE_F16));
        test_cases.emplace_back(new test_flash_attn_ext(64, 64, 3, {3, 64}, 1024, 1, true, false, 0, 0, GGML_PREC_F32, GGML_TYPE_F16, GGML_TYPE_F16));
        return test_cases;
    }
"""
open(p, "w").write(s.replace(anchor, anchor + grid, 1))
PY
fi
B=$W/build
if [ ! -x "$B/bin/test-backend-ops" ]; then
  cmake -S "$SRC" -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=ON \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF >"$OUT/stock-cmake.log" 2>&1
  ( time cmake --build "$B" -j "$(nproc)" --target test-backend-ops ) >"$OUT/stock-build.log" 2>&1 || { tail -30 "$OUT/stock-build.log"; exit 1; }
  tail -3 "$OUT/stock-build.log"
fi
AIRAVATA_FA_PERF=1 "$B/bin/test-backend-ops" perf -o FLASH_ATTN_EXT -b CUDA0 2>&1 | tee "$OUT/stock-perf.txt" | grep -E "FLASH_ATTN_EXT\(" | sed -E 's/,sinks=.*type_K=/ type_K=/' | cut -c1-200
