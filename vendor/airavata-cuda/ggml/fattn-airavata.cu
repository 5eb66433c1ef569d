// airavata's decode attention inside ggml-cuda (issue 24): ggml_flash_attn_ext with one query token per
// sequence and a q8_0 K/V cache, at 16 or more sequences — where vendor/airavata-cuda's harness measured our
// split-KV kernel ahead of fattn-vec (1.08-1.48x on an H100; with f16 both read at the bandwidth floor, and
// at B = 1 fattn-vec is faster, so those stay stock). Copied into ggml/src/ggml-cuda/ with
// airavata-attn-decode.cuh by scripts/apply-cuda-patches.sh; fattn.cu calls airavata_fattn_decode first.
//
// Opt-in until verified end to end on a GPU (scripts/gpu-bench.sh attncheck): the one switch is
// airavata-switch.cuh's AIRAVATA_CUDA_KERNELS.
#include "common.cuh"
#include "fattn-airavata.cuh"
#include "airavata-attn-decode.cuh"

#include "airavata-switch.cuh"

static bool aligned16(const void * p, size_t stride) {
    return reinterpret_cast<uintptr_t>(p) % 16 == 0 && stride % 16 == 0;
}

bool airavata_fattn_decode(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    using namespace airavata_attn;
    if (!airavata_kernels_on()) {
        return false;
    }
    const ggml_tensor * Q    = dst->src[0];
    const ggml_tensor * K    = dst->src[1];
    const ggml_tensor * V    = dst->src[2];
    const ggml_tensor * mask = dst->src[3];
    const ggml_tensor * sinks = dst->src[4];

    float scale = 1.0f, max_bias = 0.0f, logit_softcap = 0.0f;
    memcpy(&scale,         (const float *) dst->op_params + 0, sizeof(float));
    memcpy(&max_bias,      (const float *) dst->op_params + 1, sizeof(float));
    memcpy(&logit_softcap, (const float *) dst->op_params + 2, sizeof(float));

    // The measured win: q8_0 K and V, one query per sequence, >= 16 sequences with their own streams.
    if (K->type != GGML_TYPE_Q8_0 || V->type != GGML_TYPE_Q8_0 || Q->type != GGML_TYPE_F32 || dst->type != GGML_TYPE_F32) {
        return false;
    }
    if (sinks != nullptr || max_bias != 0.0f || logit_softcap != 0.0f || ggml_get_op_params_i32(dst, 4) != 0) {
        return false;
    }
    const int64_t D = Q->ne[0], n_q = Q->ne[1], H = Q->ne[2], n_seq = Q->ne[3];
    const int64_t n_kv = K->ne[1], Hkv = K->ne[2];
    if (n_q != 1 || n_seq < 16 || K->ne[0] != D || V->ne[0] != D || V->ne[1] != n_kv || V->ne[2] != Hkv ||
        K->ne[3] != n_seq || V->ne[3] != n_seq || Hkv <= 0 || H % Hkv != 0 || n_kv <= 0 || n_kv > INT32_MAX) {
        return false;
    }
    const int G = (int) (H / Hkv);
    if (!supported((int) D, G, KV_Q8_0, KV_Q8_0)) {
        return false;
    }
    // Rows of one head contiguous; Q rows float4-aligned; the output contiguous [D, H, 1, n_seq].
    if (K->nb[0] != ggml_type_size(K->type) || V->nb[0] != ggml_type_size(V->type) || Q->nb[0] != sizeof(float) ||
        !aligned16(Q->data, Q->nb[2]) || Q->nb[3] % 16 != 0 || !ggml_is_contiguous(dst) ||
        dst->ne[0] != D || dst->ne[1] != H || dst->ne[2] != 1 || dst->ne[3] != n_seq) {
        return false;
    }
    if (mask != nullptr && (mask->type != GGML_TYPE_F16 || mask->ne[0] < n_kv || (mask->ne[3] != 1 && mask->ne[3] != n_seq) ||
                            mask->nb[0] != sizeof(half))) {
        return false;
    }

    Params p{};
    p.q = (const float *) Q->data;
    p.k = (const char *) K->data;
    p.v = (const char *) V->data;
    p.mask = mask ? (const half *) mask->data : nullptr;
    p.out = (float *) dst->data;
    p.q_nb2 = Q->nb[2] / sizeof(float);
    p.q_nb3 = Q->nb[3] / sizeof(float);
    p.k_nb1 = K->nb[1]; p.k_nb2 = K->nb[2]; p.k_nb3 = K->nb[3];
    p.v_nb1 = V->nb[1]; p.v_nb2 = V->nb[2]; p.v_nb3 = V->nb[3];
    p.mask_nb3 = mask && mask->ne[3] > 1 ? mask->nb[3] / sizeof(half) : 0;
    p.n_kv = (int) n_kv;
    p.n_head = (int) H;
    p.n_head_kv = (int) Hkv;
    p.scale = scale;
    plan_splits(p.n_kv, (int) n_seq, (int) Hkv, ggml_cuda_info().devices[ctx.device].nsm, p.chunk, p.n_splits);

    ggml_cuda_pool_alloc<float>  part_o(ctx.pool());
    ggml_cuda_pool_alloc<float2> part_ml(ctx.pool());
    if (p.n_splits > 1) {
        part_o.alloc(n_seq * H * p.n_splits * D);
        part_ml.alloc(n_seq * H * p.n_splits);
        p.part_o  = part_o.get();
        p.part_ml = part_ml.get();
    }
    const bool ok = launch(p, (int) D, G, KV_Q8_0, KV_Q8_0, (int) n_seq, (int) Hkv, ctx.stream());
    CUDA_CHECK(cudaGetLastError());
    if (ok) {
        airavata_kernel_ran("attn_decode", [&] {
            return "D " + std::to_string(D) + " heads " + std::to_string(H) + "/" + std::to_string(Hkv) + " seqs " +
                   std::to_string(n_seq);
        });
    }
    return ok;
}
