#!/usr/bin/env bash
# Applies airavata's CUDA kernels to a pinned llama.cpp source tree (the one step every CUDA-backend build
# takes: scripts/gpu-bench.sh's configure, deploy/Dockerfile): copies vendor/airavata-cuda's kernel headers
# and ggml-cuda sources into SRC/ggml/src/ggml-cuda/ and applies vendor/airavata-cuda/patches/*.patch (the
# dispatch hooks). Idempotent: an already patched tree is left as it is. At run time AIRAVATA_CUDA_KERNELS=ours
# turns our kernels on (opt-in until verified end to end on a GPU); unset or `stock`, llama.cpp's kernels run.
#   scripts/apply-cuda-patches.sh SRC            apply
#   scripts/apply-cuda-patches.sh --check SRC    only check that every patch applies cleanly (CI)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
check=0
if [ "${1:-}" = "--check" ]; then check=1; shift; fi
SRC=${1:?usage: $0 [--check] LLAMA_CPP_SRC}
K=$here/vendor/airavata-cuda
dst=$SRC/ggml/src/ggml-cuda
[ -d "$dst" ] || { echo "no ggml-cuda sources under $SRC" >&2; exit 1; }
for p in "$K"/patches/*.patch; do
  if patch -p1 -d "$SRC" --dry-run -R -s -f < "$p" >/dev/null 2>&1; then
    echo "already applied: $(basename "$p")"
    continue
  fi
  patch -p1 -d "$SRC" --dry-run -N -s < "$p" >/dev/null || { echo "does not apply cleanly: $p" >&2; exit 1; }
  if [ $check = 1 ]; then echo "applies cleanly: $(basename "$p")"; continue; fi
  patch -p1 -d "$SRC" -N -s < "$p"
  echo "applied: $(basename "$p")"
done
[ $check = 1 ] && exit 0
cp "$K/attn_decode.cuh" "$dst/airavata-attn-decode.cuh"
cp "$K/mmv_iq4xs.cuh" "$dst/airavata-mmv-iq4xs.cuh"
cp "$K/mmm_iq4xs.cuh" "$dst/airavata-mmm-iq4xs.cuh"
cp "$K"/ggml/*.cu "$K"/ggml/*.cuh "$dst/"
echo "airavata CUDA kernels in $dst (on with AIRAVATA_CUDA_KERNELS=ours)"
