#pragma once
#include "common.cuh"

// airavata's decode attention (vendor/airavata-cuda): computes dst and returns true for the shapes it
// covers when AIRAVATA_CUDA_KERNELS=ours, else returns false and leaves dst to llama.cpp's kernels.
bool airavata_fattn_decode(ggml_backend_cuda_context & ctx, ggml_tensor * dst);
