#pragma once
#include "common.cuh"

// airavata's decode attention (vendor/airavata-cuda): computes dst and returns true for the shapes it
// covers, else returns false and leaves dst to llama.cpp's kernels. AIRAVATA_CUDA_KERNELS=stock: always false.
bool airavata_fattn_decode(ggml_backend_cuda_context & ctx, ggml_tensor * dst);
