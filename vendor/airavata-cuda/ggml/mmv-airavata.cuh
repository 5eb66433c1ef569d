// airavata's IQ4_XS matrix-vector product inside ggml-cuda (issue 23); see mmv-airavata.cu.
#pragma once

#include "common.cuh"

// Computes dst = src0 * src1 with our kernel and returns true, or returns false (having done nothing) for every
// case it does not cover, which then takes llama.cpp's own path.
bool airavata_mul_mat_vec(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, const ggml_tensor * src1,
                          ggml_tensor * dst);
