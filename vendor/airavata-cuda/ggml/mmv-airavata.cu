// airavata's IQ4_XS matrix-vector product inside ggml-cuda (issue 23): 4 to 8 activation columns (decode at
// batch 4-8), where vendor/airavata-cuda's harness measured our kernel ahead of mul_mat_vec_q on an H100 (at 8
// columns 1.5x on 4096x4096 and 1.6-1.7x on the FFN shapes; at 1-3 columns mmvq is as fast or faster, so those
// stay stock); AIRAVATA_MMV_MIN_COLS / AIRAVATA_MMV_MAX_COLS move the ends within 1-16. Copied into
// ggml/src/ggml-cuda/ with airavata-mmv-iq4xs.cuh by scripts/apply-cuda-patches.sh; mmvq.cu's
// ggml_cuda_mul_mat_vec_q calls airavata_mul_mat_vec first (up to 8 columns), and ggml-cuda.cu's
// ggml_cuda_mul_mat before its mmq (more than 8).
//
// The activations are quantized by our own kernel (int8 per 32 values with ggml's q8_1 rounding and its fp16
// scale, in the tensor-core fragment order the matvec kernel reads), into a pool buffer.
//
// With AIRAVATA_MMM_MAX_COLS=N (0..4096, 0 = off; from AIRAVATA_MMM_MIN_COLS, default 17) the fp16 tensor-core kernel of
// airavata-mmm-iq4xs.cuh takes the columns up to N: activations converted once to fp16, no per-32 scaling, every
// output written once (no stream-k fix-up). Off by default: its first measurement (session 21, H100, harness)
// put it at 25-29 us for 4096 x 4096 at 16-64 columns, 10-12 % of the copy rate, latency-bound (ncu: 2 warps a
// scheduler, half the SMs idle at 64 row tiles), and slower than our matvec at 16 columns (22.6 us). Its second
// version (session 22: two 16-row tiles a warp, 128-row CTA tiles, K split over a Hopper cluster) is what is
// launched here; not yet measured, so still off.
#include "mmv-airavata.cuh"
#include "airavata-switch.cuh"
#include "airavata-mmv-iq4xs.cuh"
#include "airavata-mmm-iq4xs.cuh"

#include <climits>

namespace {

// The variants with the best worst case over the four Llama-7B shapes (harness, H100): T1.W8.U2 at 3-8
// columns; at 9-16 T1.W4.U2 (10.3-24.1 us at 12-16 columns where T1.W8.U2 takes 11.9-32.3 us,
// benches/results/2026-12-07-h100-mmv-harness16).
constexpr int MMV_T     = 1;  // 16-row tiles per block
constexpr int MMV_UB    = 2;  // 256-column blocks per unit
constexpr int MMV_S     = 1;  // ring stages per warp
// Warps splitting K.
constexpr int mmv_warps(int ncols) {
    return ncols > 8 ? 4 : 8;
}
constexpr int MMV_KERNEL_MAX_COLS = 16;  // what the kernel can take (two mma B fragments)

// A column bound from the environment within [lo, hi], else the default.
int64_t cols_from_env(const char * name, int64_t dflt, int64_t lo, int64_t hi) {
    const char * e = getenv(name);
    if (e == nullptr) {
        return dflt;
    }
    const int v = atoi(e);
    return v >= lo && v <= hi ? (int64_t) v : dflt;
}

// The columns ours takes by default, 4-8: below 4 llama.cpp's mmvq is as fast or faster (measured inside
// llama.cpp on an H100), above 8 llama.cpp uses its tensor-core mmq, against which ours has not been measured
// yet. AIRAVATA_MMV_MIN_COLS / AIRAVATA_MMV_MAX_COLS (1..16) move the ends, to measure them.
int64_t min_cols() {
    static const int64_t n = cols_from_env("AIRAVATA_MMV_MIN_COLS", 4, 1, MMV_KERNEL_MAX_COLS);
    return n;
}
int64_t max_cols() {
    static const int64_t n = cols_from_env("AIRAVATA_MMV_MAX_COLS", 8, 1, MMV_KERNEL_MAX_COLS);
    return n;
}

// The many-column kernel's range, 0..4096 each (AIRAVATA_MMM_MAX_COLS=0, the default, turns it off).
int64_t mmm_min_cols() {
    static const int64_t n = cols_from_env("AIRAVATA_MMM_MIN_COLS", 17, 0, 4096);
    return n;
}
int64_t mmm_max_cols() {
    static const int64_t n = cols_from_env("AIRAVATA_MMM_MAX_COLS", 0, 0, 4096);
    return n;
}

// Its tiles: the harness's (vendor/airavata-cuda/mmm_iq4xs.cu) best over the four Airavata shapes on an H100
// (session 23, benches/results/2026-12-07-h100-mmm-v2/): up to 16 columns F2.T2.M4.N1.K1.S2 (128 rows x 16 columns,
// 4 warps of two 16-row tiles, 2 stages), up to 32 F4.T2.M2.N1.K2.S2 (64 x 32, 2 warps x 2 K slices), beyond
// F8.T2.M2.N1.K2.S2 (64 x 64); K split over a cluster of mmm_cluster_splits CTAs.
struct MmmTile {
    int nf, mt, wm, wn, wk, stages;
};
constexpr MmmTile mmm_tile(int64_t ncols) {
    return ncols <= 16 ? MmmTile{ 2, 2, 4, 1, 1, 2 } :
           ncols <= 32 ? MmmTile{ 4, 2, 2, 1, 2, 2 } :
                         MmmTile{ 8, 2, 2, 1, 2, 2 };
}
// Whether the tile for ncols columns fits the card's shared memory and the grid's y limit.
bool mmm_fits(int64_t ncols, int64_t rows, size_t smpbo) {
    const MmmTile t    = mmm_tile(ncols);
    const int     bm   = airavata::mmm_bm(t.mt, t.wm);
    return airavata::mmm_fits_smem(t.nf, t.mt, t.wm, t.wn, t.wk, t.stages, smpbo) && (rows + bm - 1) / bm <= 65535;
}
template <int NF, int MT, int WM, int WN, int WK>
void mmm_launch_tile(const uint8_t * W, const half * xh, float * y, int nrows, int nb, int ncols, int stages, int nsm,
                     int max_splits, cudaStream_t stream) {
    using namespace airavata;
    constexpr int BM = mmm_bm(MT, WM), BN = mmm_bn(NF, WN), NT = 32 * WM * WN * WK;
    auto kern = mmm_iq4xs_kernel<NF, MT, WM, WN, WK>;
    const int smem = mmm_smem_bytes(NF, MT, WM, WN, WK, stages);
    CUDA_SET_SHARED_MEMORY_LIMIT(kern, smem);
    // How many clusters of each size the card runs at once: asked once per device (and shared-memory size), not on
    // every launch.
    static int cap_smem[GGML_CUDA_MAX_DEVICES]                     = {};
    static int caps[GGML_CUDA_MAX_DEVICES][MMM_MAX_SPLITS + 1]     = {};
    const int  dev                                                 = ggml_cuda_get_device();
    if (cap_smem[dev] != smem) {
        CUDA_CHECK(mmm_cluster_caps(kern, NT, smem, nsm, max_splits, caps[dev]));
        cap_smem[dev] = smem;
    }
    const dim3 tiles((ncols + BN - 1) / BN, (nrows + BM - 1) / BM);
    const int ks = mmm_cluster_splits((long long) tiles.x * tiles.y, nb, caps[dev], max_splits);
    // ggml's launcher cannot add the cluster's dims, so the launch is written out: the cluster (1, 1, ks) and,
    // as ggml_cuda_kernel_launch would (same switch, GGML_CUDA_PDL), programmatic dependent launch.
    cudaLaunchAttribute attrs[2];
    unsigned int nattrs = 0;
    if (ks > 1) {
        attrs[nattrs++] = mmm_cluster_attribute(ks);
    }
#if defined(GGML_CUDA_USE_PDL)
    static const bool pdl_env = [] {
        const char * e = getenv("GGML_CUDA_PDL");
        return e == nullptr || atoi(e) != 0;
    }();
    if (pdl_env && ggml_cuda_kernel_can_use_pdl(reinterpret_cast<const void *>(kern))) {
        attrs[nattrs].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attrs[nattrs].val.programmaticStreamSerializationAllowed = 1;
        ++nattrs;
    }
#endif
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim          = dim3(tiles.x, tiles.y, (unsigned int) ks);
    cfg.blockDim         = dim3(NT);
    cfg.dynamicSmemBytes = (size_t) smem;
    cfg.stream           = stream;
    cfg.attrs            = attrs;
    cfg.numAttrs         = nattrs;
    CUDA_CHECK(cudaLaunchKernelEx(&cfg, kern, W, xh, y, nrows, nb, ncols, nrows, stages));
}
// max_splits: how many CTAs of a cluster may split K (1 where the card has no clusters, before Hopper).
void mmm_launch(const uint8_t * W, const half * xh, float * y, int nrows, int nb, int ncols, int nsm, int max_splits,
                cudaStream_t stream) {
    constexpr MmmTile narrow16 = mmm_tile(16), narrow = mmm_tile(32), wide = mmm_tile(33);
    static_assert(narrow16.nf != narrow.nf && narrow.nf != wide.nf && narrow16.nf != wide.nf, "nf names the tile");
    const MmmTile t = mmm_tile(ncols);
    if (t.nf == narrow16.nf) {
        mmm_launch_tile<narrow16.nf, narrow16.mt, narrow16.wm, narrow16.wn, narrow16.wk>(W, xh, y, nrows, nb, ncols,
                                                                                       t.stages, nsm, max_splits, stream);
    } else if (t.nf == narrow.nf) {
        mmm_launch_tile<narrow.nf, narrow.mt, narrow.wm, narrow.wn, narrow.wk>(W, xh, y, nrows, nb, ncols, t.stages,
                                                                             nsm, max_splits, stream);
    } else {
        mmm_launch_tile<wide.nf, wide.mt, wide.wm, wide.wn, wide.wk>(W, xh, y, nrows, nb, ncols, t.stages, nsm,
                                                                     max_splits, stream);
    }
}

// Dynamic shared memory of the kernel at ncols columns.
int smem_bytes(int64_t ncols) {
    return airavata::mmv_smem_bytes((int) ncols, MMV_T, mmv_warps((int) ncols), MMV_UB, MMV_S);
}

template <int NC>
void launch_cols(const uint8_t * W, const int8_t * xq, const float * xd, float * y, int nrows, int nb,
                 cudaStream_t stream) {
    using namespace airavata;
    constexpr int WARPS = mmv_warps(NC);
    const int smem = smem_bytes(NC);
    CUDA_SET_SHARED_MEMORY_LIMIT((mmv_iq4xs_kernel<NC, MMV_T, WARPS, MMV_UB>), smem);
    const int grid = mmv_row_tiles(nrows, MMV_T);
    // ggml's launcher: with programmatic dependent launch (Hopper, GGML_CUDA_PDL) the kernel fetches its weights
    // while the activation quantization before it still runs.
    ggml_cuda_kernel_launch(mmv_iq4xs_kernel<NC, MMV_T, WARPS, MMV_UB>,
                            ggml_cuda_kernel_launch_params(dim3(grid), dim3(WARPS * 32), (size_t) smem, stream), W, xq,
                            xd, y, nrows, nb, MMV_S, 1);
}

void launch(int64_t ncols, const uint8_t * W, const int8_t * xq, const float * xd, float * y, int nrows, int nb,
            cudaStream_t stream) {
    switch (ncols) {
        case 1: launch_cols<1>(W, xq, xd, y, nrows, nb, stream); break;
        case 2: launch_cols<2>(W, xq, xd, y, nrows, nb, stream); break;
        case 3: launch_cols<3>(W, xq, xd, y, nrows, nb, stream); break;
        case 4: launch_cols<4>(W, xq, xd, y, nrows, nb, stream); break;
        case 5: launch_cols<5>(W, xq, xd, y, nrows, nb, stream); break;
        case 6: launch_cols<6>(W, xq, xd, y, nrows, nb, stream); break;
        case 7: launch_cols<7>(W, xq, xd, y, nrows, nb, stream); break;
        case 8: launch_cols<8>(W, xq, xd, y, nrows, nb, stream); break;
        case 9: launch_cols<9>(W, xq, xd, y, nrows, nb, stream); break;
        case 10: launch_cols<10>(W, xq, xd, y, nrows, nb, stream); break;
        case 11: launch_cols<11>(W, xq, xd, y, nrows, nb, stream); break;
        case 12: launch_cols<12>(W, xq, xd, y, nrows, nb, stream); break;
        case 13: launch_cols<13>(W, xq, xd, y, nrows, nb, stream); break;
        case 14: launch_cols<14>(W, xq, xd, y, nrows, nb, stream); break;
        case 15: launch_cols<15>(W, xq, xd, y, nrows, nb, stream); break;
        case 16: launch_cols<16>(W, xq, xd, y, nrows, nb, stream); break;
        default: GGML_ABORT("airavata mmv: %d columns", (int) ncols);  // excluded by max_cols()
    }
}

bool single_matrix(const ggml_tensor * t) {
    return t->ne[2] == 1 && t->ne[3] == 1;
}

}  // namespace

bool airavata_mul_mat_vec(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, const ggml_tensor * src1,
                          ggml_tensor * dst) {
    if (!airavata_kernels_on()) {
        return false;
    }
    if (src0->type != GGML_TYPE_IQ4_XS || src1->type != GGML_TYPE_F32 || dst->type != GGML_TYPE_F32) {
        return false;
    }
    const int cc = ggml_cuda_info().devices[ctx.device].cc;
    if (!GGML_CUDA_CC_IS_NVIDIA(cc) || cc < GGML_CUDA_CC_AMPERE) {  // cp.async and int8 mma.m16n8k32
        return false;
    }
    const int64_t K = src0->ne[0], rows = src0->ne[1], ncols = src1->ne[1];
    const bool mmv = ncols >= min_cols() && ncols <= max_cols();
    const bool mmm = !mmv && ncols >= mmm_min_cols() && ncols <= mmm_max_cols();
    if ((!mmv && !mmm) || K <= 0 || K % airavata::IQ4XS_QK != 0 || rows <= 0 || rows > INT_MAX / 2 ||
        K / airavata::IQ4XS_QK > INT_MAX / 8 || ncols > INT_MAX / K) {
        return false;
    }
    // One matrix (no broadcast batches), rows of src0 packed; src1 columns of K floats at any float stride;
    // dst contiguous [rows, ncols].
    if (!single_matrix(src0) || !single_matrix(src1) || !single_matrix(dst) || !ggml_is_contiguous(src0) ||
        src1->ne[0] != K || src1->nb[0] != sizeof(float) || src1->nb[1] % sizeof(float) != 0 ||
        src1->nb[1] / sizeof(float) > (size_t) INT_MAX ||
        !ggml_is_contiguous(dst) || dst->ne[0] != rows || dst->ne[1] != ncols) {
        return false;
    }
    if (reinterpret_cast<uintptr_t>(src0->data) % 16 != 0) {  // 16-byte cp.async from 16-byte-aligned row spans
        return false;
    }
    const size_t smpbo = ggml_cuda_info().devices[ctx.device].smpbo;
    if (mmm) {
        if (!mmm_fits(ncols, rows, smpbo)) {
            return false;
        }
        cudaStream_t stream = ctx.stream();
        const size_t n = airavata::mmm_xh_elems((int) ncols, (int) K);  // block-major, columns padded
        ggml_cuda_pool_alloc<half> xh(ctx.pool(), n);
        if (reinterpret_cast<uintptr_t>(xh.get()) % 16 != 0) {
            return false;
        }
        ggml_cuda_kernel_launch(airavata::convert_x_f16,
                                ggml_cuda_kernel_launch_params(dim3((unsigned) ((n + 255) / 256)), dim3(256), (size_t) 0, stream),
                                (const float *) src1->data, (int) K, (int) (src1->nb[1] / sizeof(float)), (int) ncols,
                                xh.get());
        mmm_launch((const uint8_t *) src0->data, xh.get(), (float *) dst->data, (int) rows,
                   (int) (K / airavata::IQ4XS_QK), (int) ncols, ggml_cuda_info().devices[ctx.device].nsm,
                   cc >= GGML_CUDA_CC_HOPPER ? airavata::MMM_MAX_SPLITS : 1, stream);
        CUDA_CHECK(cudaGetLastError());
        airavata_kernel_ran("mmm_iq4xs", [&] {
            return std::to_string(rows) + "x" + std::to_string(K) + " cols " + std::to_string(ncols);
        });
        return true;
    }
    if ((size_t) smem_bytes(ncols) > smpbo) {
        return false;
    }
    const int nb   = (int) (K / airavata::IQ4XS_QK);
    const int ngrp = nb * 8;  // 32-value groups per column
    cudaStream_t stream = ctx.stream();

    ggml_cuda_pool_alloc<int8_t> xq(ctx.pool(), (size_t) ncols * ngrp * 32);
    const int xdc = airavata::mmv_xd_cols((int) ncols);  // scales per 32-group (8 or 16)
    ggml_cuda_pool_alloc<float>  xd(ctx.pool(), (size_t) ngrp * xdc);
    if (reinterpret_cast<uintptr_t>(xq.get()) % 16 != 0 || reinterpret_cast<uintptr_t>(xd.get()) % 16 != 0) {
        return false;
    }
    ggml_cuda_kernel_launch(airavata::quantize_x_q8, ggml_cuda_kernel_launch_params(dim3(ngrp), dim3(32 * xdc), (size_t) 0, stream),
                            (const float *) src1->data, (int) K, (int) (src1->nb[1] / sizeof(float)), (int) ncols,
                            xq.get(), xd.get());
    launch(ncols, (const uint8_t *) src0->data, xq.get(), xd.get(), (float *) dst->data, (int) rows, nb, stream);
    CUDA_CHECK(cudaGetLastError());
    airavata_kernel_ran("mmv_iq4xs", [&] {
        return std::to_string(rows) + "x" + std::to_string(K) + " cols " + std::to_string(ncols);
    });
    return true;
}
