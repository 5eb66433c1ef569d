// mmm_iq4xs.cuh -- IQ4_XS weights x many activation columns (decode at batch 16..256) on fp16 tensor cores.
//
//   y[n][r] = sum_k W[r][k] * x[n][k],  r < nrows, n < ncols, k < K (K % 256 == 0)
//
// Weights: ggml's block_iq4_xs, rows packed, base 16-byte aligned (as for the matvec in mmv_iq4xs.cuh).
// Why a second kernel: at 16+ columns the matvec's per-32-value int8 scaling (one float multiply-add per output
// per 32 values) costs more issue slots than the weight stream allows, and each warp staging its own activations
// multiplies shared-memory traffic by the warp count. Here:
//   * the activations are converted ONCE per input to fp16 (convert_x_f16, in the order the decode produces the
//     weights, xq_pos; block-major, so a CTA's slice of one block is one contiguous run), so the tensor core
//     accumulates over all of K in fp32 and no per-group scaling remains;
//   * a CTA stages a BM-row x 256-column slice of the weights and the matching BN columns x 256 of activations
//     with 16-byte cp.async into an S-stage ring shared by all its warps (one barrier per 256 columns);
//   * each warp decodes its MT x 16 rows once per 32-column sub-block into fp16 A fragments, exactly
//     round_fp16(kv * round_fp16(2^8 * d * (ls - 32))), and reuses them for its NF B fragments (8 columns each),
//     each B fragment for its MT row tiles;
//     the 2^8 (undone exactly on the fp32 result) keeps the scales of small blocks out of fp16's subnormal range
//     (real IQ4_XS d reach 1e-5; d * (ls - 32) below 6.1e-5 would lose mantissa bits), at the cost of weights
//     beyond +-255 (none in an LLM's linear layers; they would become inf);
//   * every output is written once, by one CTA: where K is split over the CTAs of a cluster, each CTA adds 1/KS of
//     the tile's outputs over the cluster's partial tiles, read from their shared memory in rank order (no
//     workspace, no atomics, no fix-up kernel, deterministic).
// The codebook lookup is three PRMT (two 8-entry tables, then a byte pick by each index's bit 3), the bytes become
// fp16 through the 0x64xx exponent (1024 + byte), one exact HSUB2 and one HMUL2 by the scale; a block's scales are
// gathered as bytes and made fp16 the same way, two at a time (iq4xs_scales_f16).
#pragma once
#if __has_include("mmv_iq4xs.cuh")
#include "mmv_iq4xs.cuh"
#else
#include "airavata-mmv-iq4xs.cuh"  // its name inside ggml-cuda (scripts/apply-cuda-patches.sh)
#endif
#ifdef __CUDACC__
#include <cooperative_groups.h>
#endif
// Thread-block clusters (K split over a cluster's CTAs) exist from sm_90; compiled for an older card, the
// kernel takes KS = 1 only (mmm_cluster_splits' caller passes max_splits 1 there).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define MMM_CLUSTERS 1
#else
#define MMM_CLUSTERS 0
#endif

namespace airavata {

// kv + 128 (all 1..241, fit a byte): the table for indices 0..7 (UA) and 8..15 (UB).
constexpr uint32_t UA0 = pack4(kv_iq4nl(0) + 128, kv_iq4nl(1) + 128, kv_iq4nl(2) + 128, kv_iq4nl(3) + 128);
constexpr uint32_t UA1 = pack4(kv_iq4nl(4) + 128, kv_iq4nl(5) + 128, kv_iq4nl(6) + 128, kv_iq4nl(7) + 128);
constexpr uint32_t UB0 = pack4(kv_iq4nl(8) + 128, kv_iq4nl(9) + 128, kv_iq4nl(10) + 128, kv_iq4nl(11) + 128);
constexpr uint32_t UB1 = pack4(kv_iq4nl(12) + 128, kv_iq4nl(13) + 128, kv_iq4nl(14) + 128, kv_iq4nl(15) + 128);

// Stage layout: BM weight rows of MMM_RS bytes (a row's 136-byte block copied from the 16-byte boundary at or
// below it: <= 144 bytes), then BN activation columns of MMM_XS bytes (256 halves + 64: the quarter-warp's two
// columns of a 16-byte read land in different banks).
constexpr int MMM_RS = 176;
constexpr float MMM_W_SCALE = 256.0f;  // the weights' fp16 scale (a power of two: undone exactly)
constexpr int MMM_XS = 576;
__host__ __device__ constexpr int mmm_stage_bytes(int BM, int BN) { return BM * MMM_RS + BN * MMM_XS; }
// The converted activations (convert_x_f16 writes them, the kernel stages them): fp16, block-major, so the BN
// columns of one 256-column block that a CTA stages are one contiguous run of BN * 512 bytes (16-byte copies at
// fixed offsets from one pointer, no bounds test): element (k, n) at ((k / 256) * cols_padded + n) * 256 + the
// position of k % 256 (each 32-group in xq_pos order). Columns are padded to MMM_COL_PAD, a multiple of every
// tile's BN, with zeros.
constexpr int MMM_COL_PAD = 64;
__host__ __device__ constexpr int mmm_cols_padded(int ncols) { return (ncols + MMM_COL_PAD - 1) / MMM_COL_PAD * MMM_COL_PAD; }
__host__ __device__ constexpr size_t mmm_xh_elems(int ncols, int K) { return (size_t)mmm_cols_padded(ncols) * K; }
__host__ __device__ constexpr size_t mmm_xh_index(int ncols, int k, int n) {
    return ((size_t)(k / IQ4XS_QK) * mmm_cols_padded(ncols) + n) * IQ4XS_QK + ((k % IQ4XS_QK) & ~31) + xq_pos(k & 31);
}
// Rows (BM) and columns (BN) of a CTA's tile for a (NF, MT, WM, WN) kernel: WM warps of MT 16-row tiles each.
__host__ __device__ constexpr int mmm_bm(int MT, int WM) { return 16 * MT * WM; }
__host__ __device__ constexpr int mmm_bn(int NF, int WN) { return 8 * NF * WN; }
// Dynamic shared memory of mmm_iq4xs_kernel<NF, MT, WM, WN, WK> with S stages: the ring (weights and
// activations), which the reductions reuse at the end, so at least the larger of them:
//   * the WK > 1 reduction: float [WK - 1][WM * WN warps][MT * NF * 4 accumulators][32 lanes];
//   * the cluster's K-split reduction (launched with cluster dims (1, 1, KS > 1)): each CTA's partial tile,
//     float [WM * WN warps][MT * NF * 4][32 lanes], read by every CTA of the cluster.
__host__ __device__ constexpr int mmm_tile_floats(int NF, int MT, int WM, int WN) { return WM * WN * MT * NF * 4 * 32; }
__host__ __device__ constexpr int mmm_red_bytes(int NF, int MT, int WM, int WN, int WK) {
    return (WK > 1 ? WK - 1 : 1) * mmm_tile_floats(NF, MT, WM, WN) * (int)sizeof(float);
}
__host__ __device__ constexpr int mmm_smem_bytes(int NF, int MT, int WM, int WN, int WK, int S) {
    const int ring = S * mmm_stage_bytes(mmm_bm(MT, WM), mmm_bn(NF, WN));
    const int red = mmm_red_bytes(NF, MT, WM, WN, WK);
    return ring > red ? ring : red;
}
// The kernel's static shared memory: each lane's copy of the decode's constant words (iq4_f16_tables).
constexpr int IQ4_F16_TAB_N = 5;  // UA0, UA1, UB0, UB1, the fp16 exponent byte
constexpr int IQ4_F16_TAB_WORDS = 32 * IQ4_F16_TAB_N;
// Whether that kernel fits a CTA's shared memory (opt-in limit, bytes): dynamic + static.
__host__ __device__ constexpr bool mmm_fits_smem(int NF, int MT, int WM, int WN, int WK, int S, size_t optin) {
    return (size_t)mmm_smem_bytes(NF, MT, WM, WN, WK, S) + IQ4_F16_TAB_WORDS * 4 <= optin;
}
// The most CTAs a cluster may hold without the non-portable opt-in.
constexpr int MMM_MAX_SPLITS = 8;
// How many CTAs (a cluster) split K for each output tile: 1..min(max_splits, MMM_MAX_SPLITS, nb), the count with
// the least modelled time, waves(ks) * (MMM_SPLIT_FIXED_BLOCKS + nb / ks) in units of one K block's streaming:
// waves(ks) = ceil(tiles / cap[ks]), where cap[ks] is how many clusters of ks CTAs the card runs at once (cap[1]:
// SMs x CTAs a SM; beyond, cudaOccupancyMaxActiveClusters, which GPC sizes hold below SMs x CTAs / ks: on an
// H100, 62 clusters of four two-CTA-a-SM CTAs, so 64 tiles split by 4 took two waves, ncu session 23). The
// smallest count on ties (every split adds a reduction). max_splits: MMM_MAX_SPLITS on sm_90 and later, 1 before
// (no clusters); cap has max_splits + 1 entries (cap[0] unused).
// MMM_SPLIT_FIXED_BLOCKS: a CTA's cost besides streaming its blocks (the ring's fill before the first block and
// the reductions), in blocks: set from the pipeline's depth, not yet measured.
constexpr double MMM_SPLIT_FIXED_BLOCKS = 2.0;
inline int mmm_cluster_splits(long long tiles, int nb, const int *cap, int max_splits) {
    int best = 1;
    double best_t = 0;
    for (int ks = 1; ks <= max_splits && ks <= MMM_MAX_SPLITS && ks <= nb; ++ks) {
        const long long c = cap[ks] > 0 ? cap[ks] : 1;
        const double t = (double)((tiles + c - 1) / c) * (MMM_SPLIT_FIXED_BLOCKS + (double)nb / ks);
        if (ks == 1 || t < best_t * (1.0 - 1e-9)) {
            best_t = t;
            best = ks;
        }
    }
    return best;
}
// The launch attribute for KS CTAs splitting K: the cluster dims (1, 1, KS) the kernel checks (launch with
// gridDim.z = KS; attach it only for KS > 1).
inline cudaLaunchAttribute mmm_cluster_attribute(int ks) {
    cudaLaunchAttribute a = {};
    a.id = cudaLaunchAttributeClusterDimension;
    a.val.clusterDim.x = 1;
    a.val.clusterDim.y = 1;
    a.val.clusterDim.z = (unsigned)ks;
    return a;
}

#ifdef __CUDACC__

// cap[1..max_splits] for mmm_cluster_splits: how many clusters of ks CTAs of kern (nt threads, smem bytes of
// dynamic shared memory) the current device runs at once; cap[1] is SMs (sms) x CTAs a SM. Returns the first
// failing query's error. Ask once per kernel and shared-memory size, not on every launch.
template <typename Kernel>
inline cudaError_t mmm_cluster_caps(Kernel kern, int nt, int smem, int sms, int max_splits, int *cap) {
    int occ = 0;
    cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kern, nt, (size_t)smem);
    if (e != cudaSuccess) return e;
    cap[1] = sms * occ;
    for (int ks = 2; ks <= max_splits && ks <= MMM_MAX_SPLITS; ++ks) {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(1, 1, (unsigned)ks);
        cfg.blockDim = dim3((unsigned)nt);
        cfg.dynamicSmemBytes = (size_t)smem;
        cudaLaunchAttribute at = mmm_cluster_attribute(ks);
        cfg.attrs = &at;
        cfg.numAttrs = 1;
        e = cudaOccupancyMaxActiveClusters(&cap[ks], kern, &cfg);
        if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
}

// f32 activations -> fp16 (column n at x + n*ldx, K values) into xh in the block-major layout (mmm_xh_index:
// block kb's columns one after another, each 32-group in xq_pos order), the columns from ncols up to
// mmm_cols_padded(ncols) zero. Grid: mmm_xh_elems(ncols, K) threads. Finite values beyond fp16's range are
// clamped to +-65504 (llama.cpp's own fp16 paths would give inf); NaN stays NaN. x is the previous kernel's
// output (read after grid_dep_wait(), so not __restrict__).
__global__ void __launch_bounds__(256) convert_x_f16(const float *x, int K, int ldx, int ncols,
                                                     __half *__restrict__ xh) {
    grid_dep_wait();
    grid_dep_launch();
    const size_t i = (size_t)blockIdx.x * 256 + threadIdx.x;
    if (i >= mmm_xh_elems(ncols, K)) return;
    const int n = (int)(i / (size_t)K), k = (int)(i % (size_t)K);
    float v = n < ncols ? x[(size_t)n * ldx + k] : 0.0f;
    if (fabsf(v) > 65504.0f) v = copysignf(65504.0f, v);  // false for NaN
    xh[mmm_xh_index(ncols, k, n)] = __float2half_rn(v);
}

__device__ __forceinline__ void mma_f16_16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                              uint32_t b0, uint32_t b1) {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

// The 8 weights of one 4-byte qs word (bytes 4tq..4tq+3 of a 32-column sub-block, one row) times the sub-block's
// fp16 scale s2, as 4 half2: h[i] = (byte i low nibble, byte i high nibble) = columns (4tq + i, 16 + 4tq + i).
struct Half8 {
    uint32_t h[4];
};
__device__ __forceinline__ uint32_t h2_bits(__half2 v) { return *reinterpret_cast<uint32_t *>(&v); }
__device__ __forceinline__ __half2 bits_h2(uint32_t v) { return *reinterpret_cast<__half2 *>(&v); }
// The decode's constant words, in registers. Written as constants (or through __shfl_sync), ptxas keeps them in
// uniform registers and moves each into a vector register before every use (SASS: one IMAD.U32 per table per
// word, ~10 % of the decode); so each lane loads them from its own copy in shared memory, once.
struct Iq4F16Tables {
    uint32_t ua0, ua1, ub0, ub1, h64;
};
__device__ __forceinline__ Iq4F16Tables iq4_f16_tables(uint32_t *tab /* __shared__ [IQ4_F16_TAB_WORDS] */) {
    for (int i = threadIdx.x; i < IQ4_F16_TAB_WORDS; i += blockDim.x) {
        const int j = i % IQ4_F16_TAB_N;
        tab[i] = j == 0 ? UA0 : j == 1 ? UA1 : j == 2 ? UB0 : j == 3 ? UB1 : 0x64646464u;
    }
    __syncthreads();
    const uint32_t *t = tab + IQ4_F16_TAB_N * (threadIdx.x & 31);  // an odd stride: a warp's reads hit 32 banks
    return {t[0], t[1], t[2], t[3], t[4]};
}
// The 16-entry lookup of each nibble is two 8-entry PRMT lookups and a third PRMT that takes byte i from the first
// (selector nibble i) or the second (4 + i) by the nibble's bit 3. The first lookup reads the raw nibbles: where bit
// 3 is set PRMT's sign mode gives a byte the third does not take; the second must not see bit 3 (idx7).
__device__ __forceinline__ Half8 iq4_decode_f16(uint32_t w, __half2 s2, const Iq4F16Tables &t) {
    const uint32_t idx7 = w & 0x77777777u;
    const uint32_t pick = ((w >> 1) & 0x44444444u) | 0x32103210u;
    const __half2 off = __float2half2_rn(1152.0f);  // 1024 (the 0x64 exponent byte) + 128 (the table's offset)
    Half8 o;
#pragma unroll
    for (int p = 0; p < 2; ++p) {
        const uint32_t raw = p ? w >> 16 : w, sel = p ? idx7 >> 16 : idx7, pk = p ? pick >> 16 : pick;
        const uint32_t a = prmt(t.ua0, t.ua1, raw);  // kv[idx] + 128 where idx < 8
        const uint32_t b = prmt(t.ub0, t.ub1, sel);  // kv[8 + (idx & 7)] + 128
        const uint32_t u = prmt(a, b, pk);           // kv[idx] + 128
        const uint32_t h01 = prmt(u, t.h64, 0x4140u), h23 = prmt(u, t.h64, 0x4342u);
        o.h[2 * p] = h2_bits(__hmul2(__hsub2(bits_h2(h01), off), s2));
        o.h[2 * p + 1] = h2_bits(__hmul2(__hsub2(bits_h2(h23), off), s2));
    }
    return o;
}

// A block's 6-bit sub-block scales ls[0..7] come as nibbles (scales_l, 32 bits) and 2-bit fields (scales_h,
// 16 bits). iq4xs_scales_f16 gathers them as bytes: ev has ls[2j] in byte j, od ls[2j + 1]; a PRMT with
// iq4xs_ls_select<SBW>(wk) picks warp wk's SBW = 8 / WK consecutive ones, ls[SBW wk + i] in byte i (SBW = 8: the
// two selectors 0x5140 and 0x7362 give ls[0..3] and ls[4..7]).
template <int SBW> __device__ __forceinline__ uint32_t iq4xs_ls_select(int wk) {
    static_assert(SBW == 1 || SBW == 2 || SBW == 4 || SBW == 8, "SBW = 8 / WK");
    if (SBW == 8) return 0x5140u;
    if (SBW == 4) return wk ? 0x7362u : 0x5140u;
    if (SBW == 2) return (uint32_t)((4 + wk) << 4 | wk);  // ls[2wk] = ev byte wk, ls[2wk + 1] = od byte wk
    return (uint32_t)(wk & 1 ? 4 + (wk >> 1) : wk >> 1);  // ls[wk]
}
// The scales of this warp's SBW sub-blocks of one row (block header words hx = d | scales_h << 16, hy = scales_l)
// as fp16, round_fp16(2^8 d (ls - 32)), two to a word: sub-block SBW wk + i in half i & 1 of sc[i >> 1]. 2^8 d is
// exact in fp16 (for |d| < 255.9, subnormal d included), ls - 32 is exact, and HMUL2 rounds their product once: the
// same value as the float product converted by __float2half_rn.
template <int SBW>
__device__ __forceinline__ void iq4xs_scales_f16(uint32_t hx, uint32_t hy, uint32_t ls_sel, uint32_t h64,
                                                 uint32_t (&sc)[(SBW + 1) / 2]) {
    uint32_t x = hx >> 16;  // scales_h: ls[sb] >> 4 at bits 2sb, 2sb + 1
    x = (x | (x << 8)) & 0x00ff00ffu;
    x = (x | (x << 4)) & 0x0f0f0f0fu;
    x = (x | (x << 2)) & 0x33333333u;  // ... now nibble sb
    const uint32_t ev = (hy & 0x0f0f0f0fu) | ((x << 4) & 0xf0f0f0f0u);
    const uint32_t od = ((hy >> 4) & 0x0f0f0f0fu) | (x & 0xf0f0f0f0u);
    const __half2 d = __hmul2(bits_h2(prmt(hx, 0u, 0x1010u)), __float2half2_rn(MMM_W_SCALE));
    const __half2 off = __float2half2_rn(1056.0f);  // 1024 (the 0x64 exponent byte) + 32
    const uint32_t ls[2] = {prmt(ev, od, ls_sel), prmt(ev, od, 0x7362u)};
#pragma unroll
    for (int q = 0; q < (SBW + 1) / 2; ++q) {
        const uint32_t h = prmt(ls[q >> 1], h64, q & 1 ? 0x4342u : 0x4140u);  // 1024 + ls, two of them
        sc[q] = h2_bits(__hmul2(__hsub2(bits_h2(h), off), d));
    }
}

// One CTA: columns [8*NF*WN*bx, +8*NF*WN) x rows [16*MT*WM*by, +16*MT*WM) x the bz-th of KS = gridDim.z equal
// ranges of K's 256-column blocks. Warp (wm, wn, wk) computes MT 16-row tiles x 8*NF columns over sub-blocks
// [8/WK*wk, 8/WK*(wk+1)) of every block: each B fragment read from shared memory feeds MT tiles (session 22:
// with one 16-row tile a warp, at 64 columns the activations' shared-memory reads outweighed the weights 15:1).
// The WK partial sums are added in shared memory; with KS > 1 the kernel must be launched with cluster dims
// (1, 1, KS) (checked: it traps otherwise); each CTA leaves its partial tile in its shared memory, and CTA z
// adds the z-th 1/KS of the tile's outputs over the cluster's CTAs in rank order (distributed shared memory: no
// workspace, no fix-up kernel, a fixed order, so deterministic) and writes them. Splitting K puts a tile's weights on KS SMs, so few large row tiles still
// fill the card (mmm_cluster_splits). S >= 2 ring stages (run time), each one IQ4_XS block (256 columns of K).
// Launch with mmm_smem_bytes(NF, MT, WM, WN, WK, S) bytes of dynamic shared memory.
template <int NF, int MT, int WM, int WN, int WK = 1>
__global__ void __launch_bounds__(32 * WM * WN * WK)
    mmm_iq4xs_kernel(const uint8_t *__restrict__ W, const __half *xh, float *__restrict__ y, const int nrows,
                     const int nb, const int ncols, const int ldy, const int S) {
    extern __shared__ __align__(16) uint8_t smem[];
    const int KS = (int)gridDim.z, z = (int)blockIdx.z;
#if MMM_CLUSTERS
    namespace cg = cooperative_groups;
    const cg::cluster_group cluster = cg::this_cluster();
    const dim3 cd = cluster.dim_blocks();
    const bool cluster_ok = cd.x == 1 && cd.y == 1 && (int)cd.z == KS;
#else
    const bool cluster_ok = KS == 1;  // no clusters before sm_90: K is not split
#endif
    {  // a launcher that allocated less than the ring and the reductions need would overrun shared memory; one
       // that split K without the matching cluster would leave partial sums unadded
        uint32_t dyn;
        asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
        if (dyn < (uint32_t)mmm_smem_bytes(NF, MT, WM, WN, WK, S) || !cluster_ok) __trap();
    }
    constexpr int BM = mmm_bm(MT, WM), BN = mmm_bn(NF, WN), NT = 32 * WM * WN * WK;
    constexpr int STAGE = mmm_stage_bytes(BM, BN);
    static_assert(WK == 1 || WK == 2 || WK == 4 || WK == 8, "WK divides the 8 sub-blocks");
    constexpr int SBW = 8 / WK;  // sub-blocks per warp per stage
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wm = warp % WM, wn = (warp / WM) % WN, wk = warp / (WM * WN);
    const int g = lane >> 2, tq = lane & 3;
    const size_t rowbytes = (size_t)nb * IQ4XS_BYTES;
    const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;  // x: column tiles, adjacent CTAs share weights
    const int kb0 = (int)((long long)z * nb / KS), nk = (int)((long long)(z + 1) * nb / KS) - kb0;
    const uint32_t smem_s = (uint32_t)__cvta_generic_to_shared(smem);

    // Block u of row R starts 8*((R*nb + u) & 1) bytes past a 16-byte boundary; it is copied from that boundary:
    // 144 bytes, eight 16-byte chunks (j = 0..7, never past the block's end) and a tail (j = 8, which may run 8
    // bytes past it, so past the matrix on the last row: cp_async8 copies 8 there). Eight adjacent threads copy
    // one row's first 128 bytes (a warp reads four 128-byte runs). A thread's rows and chunk are the same every
    // stage, and NT / 8 and NT are even, so all its rows have one parity: only the block u moves.
    constexpr int WROWS = NT / 8, WCH = (BM + WROWS - 1) / WROWS;  // rows a pass covers; passes
    constexpr int TCH = (BM + NT - 1) / NT;                         // tail passes
    static_assert(NT % 32 == 0 && NT >= 32, "whole warps");
    const int jw = threadIdx.x & 7, rw = threadIdx.x >> 3;
    const size_t w_first = (size_t)(row0 + rw) * rowbytes + 16 * jw, w_step = (size_t)WROWS * rowbytes;
    const int w_par = (int)(((long long)(row0 + rw) * nb) & 1);
    const size_t t_first = (size_t)(row0 + threadIdx.x) * rowbytes + 128, t_step = (size_t)NT * rowbytes;
    const int t_par = (int)(((long long)(row0 + threadIdx.x) * nb) & 1);
    // The tail chunk runs 8 bytes past its block where the block starts 16-byte aligned (parity 0); only on the
    // matrix's last block is that past the matrix, and there 8 bytes are copied. A thread's tail rows are NT
    // apart, so at most one of them is the last row.
    const int t_last = (nrows - 1 - row0 - (int)threadIdx.x) % NT == 0 ? (nrows - 1 - row0 - (int)threadIdx.x) / NT : -1;
    auto issue_w = [&](int u, int s) {
        const uint32_t base = smem_s + s * STAGE;
        const size_t a = w_first + (size_t)u * IQ4XS_BYTES - ((w_par ^ u) & 1) * 8;
#pragma unroll
        for (int i = 0; i < WCH; ++i) {
            const int r = rw + i * WROWS;
            if ((BM % WROWS == 0 || r < BM) && row0 + r < nrows)
                cp_async16(base + r * MMM_RS + 16 * jw, W + a + (size_t)i * w_step);
        }
        const int t_odd = (t_par ^ u) & 1;
        const size_t at = t_first + (size_t)u * IQ4XS_BYTES - t_odd * 8;
#pragma unroll
        for (int i = 0; i < TCH; ++i) {
            const int r = (int)threadIdx.x + i * NT;
            if ((BM % NT == 0 || r < BM) && row0 + r < nrows) {
                const uint32_t dst = base + r * MMM_RS + 128;
                const uint8_t *src = W + at + (size_t)i * t_step;
                if (i == t_last && u == nb - 1 && !t_odd)
                    cp_async8(dst, src);
                else
                    cp_async16(dst, src);
            }
        }
    };
    // Activations: block u's BN columns [col0, col0 + BN) are one run of BN * 512 bytes (mmm_xh_index; columns
    // past ncols are zeros up to mmm_cols_padded, which BN divides). Chunk q = threadIdx.x + i * NT of the run is
    // column q >> 5's 16-byte piece q & 31: a warp copies one column's 512 bytes, at offsets fixed at compile time.
    constexpr int XROWS = NT / 32, XCH = BN * 32 / NT;
    static_assert((BN * 32) % NT == 0 && MMM_COL_PAD % BN == 0, "whole copies, columns padded to whole tiles");
    const uint8_t *const x_first = reinterpret_cast<const uint8_t *>(xh) + (size_t)col0 * 512 + 16 * threadIdx.x;
    const size_t x_step = (size_t)mmm_cols_padded(ncols) * 512;  // bytes of one block's columns
    auto issue_x = [&](int u, int s) {
        const uint32_t base = smem_s + s * STAGE + BM * MMM_RS + warp * MMM_XS + 16 * lane;
        const uint8_t *src = x_first + (size_t)u * x_step;
#pragma unroll
        for (int i = 0; i < XCH; ++i) cp_async16(base + i * XROWS * MMM_XS, src + i * NT * 16);
    };

    float acc[MT][NF][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int f = 0; f < NF; ++f)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[m][f][i] = 0.0f;

    // This warp's rows ra[m] and ra[m] + 8 of the tile; the parity of R*nb gives each block's 0/8-byte offset.
    int ra[MT], para[MT], parb[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) {
        ra[m] = 16 * (MT * wm + m) + g;
        para[m] = (int)(((long long)(row0 + ra[m]) * nb) & 1);
        parb[m] = (int)(((long long)(row0 + ra[m] + 8) * nb) & 1);
    }
    const int xcol = (8 * NF * wn + g) * MMM_XS + 16 * tq;  // this lane's B fragment bytes in fragment 0
    __shared__ uint32_t tab_words[IQ4_F16_TAB_WORDS];
    const Iq4F16Tables tab = iq4_f16_tables(tab_words);
    const uint32_t ls_sel = iq4xs_ls_select<SBW>(wk);

    // Prologue: weights of the first S-1 blocks before waiting for the kernel that wrote the activations.
    for (int s = 0; s < S - 1; ++s)
        if (s < nk) issue_w(kb0 + s, s);
    grid_dep_wait();
    for (int s = 0; s < S - 1; ++s) {
        if (s < nk) issue_x(kb0 + s, s);
        cp_async_commit();
    }

    // Ring slots of block t (read) and of block t + S - 1 (written): t % S and (t + S - 1) % S, kept as counters.
    int rs = 0, ws = S - 1;
    for (int t = 0; t < nk; ++t) {
        const int k = kb0 + t;
        cp_async_wait_dyn(S - 2);  // block k's group is complete
        __syncthreads();           // ... for every thread; and every warp is done with block k - 1's slot
        {
            const int tn = t + S - 1;
            if (tn < nk) {
                issue_w(kb0 + tn, ws);
                issue_x(kb0 + tn, ws);
            }
            cp_async_commit();
            ws = ws + 1 == S ? 0 : ws + 1;
        }
        const uint8_t *slot = smem + rs * STAGE;
        rs = rs + 1 == S ? 0 : rs + 1;
        const uint8_t *xs = slot + BM * MMM_RS + xcol;
        const uint8_t *pa[MT], *pb[MT];
        uint32_t sca[MT][(SBW + 1) / 2], scb[MT][(SBW + 1) / 2];  // this warp's sub-block scales (iq4xs_scales_f16)
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            pa[m] = slot + ra[m] * MMM_RS + ((para[m] ^ k) & 1) * 8;
            pb[m] = slot + (ra[m] + 8) * MMM_RS + ((parb[m] ^ k) & 1) * 8;
            const uint2 ha = *reinterpret_cast<const uint2 *>(pa[m]), hb = *reinterpret_cast<const uint2 *>(pb[m]);
            iq4xs_scales_f16<SBW>(ha.x, ha.y, ls_sel, tab.h64, sca[m]);
            iq4xs_scales_f16<SBW>(hb.x, hb.y, ls_sel, tab.h64, scb[m]);
        }
#pragma unroll
        for (int i = 0; i < SBW; ++i) {
            const int sb = SBW * wk + i;
            Half8 ga[MT], gb[MT];  // rows ra[m] and ra[m] + 8
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                const uint32_t wa = *reinterpret_cast<const uint32_t *>(pa[m] + 8 + 16 * sb + 4 * tq);
                const uint32_t wb = *reinterpret_cast<const uint32_t *>(pb[m] + 8 + 16 * sb + 4 * tq);
                const __half2 sa = i & 1 ? __high2half2(bits_h2(sca[m][i >> 1])) : __low2half2(bits_h2(sca[m][i >> 1]));
                const __half2 sbs = i & 1 ? __high2half2(bits_h2(scb[m][i >> 1])) : __low2half2(bits_h2(scb[m][i >> 1]));
                ga[m] = iq4_decode_f16(wa, sa, tab);
                gb[m] = iq4_decode_f16(wb, sbs, tab);
            }
#pragma unroll
            for (int f = 0; f < NF; ++f) {
                const uint4 b = *reinterpret_cast<const uint4 *>(xs + 8 * f * MMM_XS + 64 * sb);
                // k-step 0: columns (4tq, 16+4tq | 4tq+1, 17+4tq); k-step 1: (4tq+2, 18+4tq | 4tq+3, 19+4tq)
#pragma unroll
                for (int m = 0; m < MT; ++m) {
                    mma_f16_16816(acc[m][f], ga[m].h[0], gb[m].h[0], ga[m].h[1], gb[m].h[1], b.x, b.y);
                    mma_f16_16816(acc[m][f], ga[m].h[2], gb[m].h[2], ga[m].h[3], gb[m].h[3], b.z, b.w);
                }
            }
        }
    }
    cp_async_wait_dyn(0);
    grid_dep_launch();

    // A warp's accumulators as float4s, a lane's 4 of one (m, f) fragment each, laid out [warps of one K slice][MT][NF]
    // [32 lanes] (mmm_red_bytes): every shared-memory access of the reductions is 16 bytes, a warp's 512 contiguous.
    const int wmn = warp % (WM * WN);
    auto tile_at = [&](float *base, int m, int f) -> float4 & {
        return reinterpret_cast<float4 *>(base)[((wmn * MT + m) * NF + f) * 32 + lane];
    };
    auto acc4 = [&](int m, int f) { return make_float4(acc[m][f][0], acc[m][f][1], acc[m][f][2], acc[m][f][3]); };
    // A fragment's 4 outputs, (r, c), (r, c + 1), (r + 8, c), (r + 8, c + 1), those inside the matrix, with the
    // weights' MMM_W_SCALE undone.
    constexpr float unscale = 1.0f / MMM_W_SCALE;
    auto store4 = [&](int r, int c, float4 v) {
        if (r < nrows) {
            if (c < ncols) y[(size_t)c * ldy + r] = v.x * unscale;
            if (c + 1 < ncols) y[(size_t)(c + 1) * ldy + r] = v.y * unscale;
        }
        if (r + 8 < nrows) {
            if (c < ncols) y[(size_t)c * ldy + r + 8] = v.z * unscale;
            if (c + 1 < ncols) y[(size_t)(c + 1) * ldy + r + 8] = v.w * unscale;
        }
    };
    float *const red = reinterpret_cast<float *>(smem);
    if (WK > 1) {  // add the K slices' partial sums: warps wk > 0 leave theirs in the (now idle) ring
        __syncthreads();
        if (wk > 0) {
#pragma unroll
            for (int m = 0; m < MT; ++m)
#pragma unroll
                for (int f = 0; f < NF; ++f) tile_at(red + (wk - 1) * mmm_tile_floats(NF, MT, WM, WN), m, f) = acc4(m, f);
        }
        __syncthreads();
        if (wk == 0) {
#pragma unroll
            for (int j = 1; j < WK; ++j)
#pragma unroll
                for (int m = 0; m < MT; ++m)
#pragma unroll
                    for (int f = 0; f < NF; ++f) {
                        const float4 t = tile_at(red + (j - 1) * mmm_tile_floats(NF, MT, WM, WN), m, f);
                        acc[m][f][0] += t.x;
                        acc[m][f][1] += t.y;
                        acc[m][f][2] += t.z;
                        acc[m][f][3] += t.w;
                    }
        }
    }
#if MMM_CLUSTERS
    if (KS > 1) {  // the cluster's partial tiles, added in rank order: each CTA adds and writes 1/KS of the tile
        __syncthreads();  // the WK reduction is done with the space the partial tile takes
        if (wk == 0) {
#pragma unroll
            for (int m = 0; m < MT; ++m)
#pragma unroll
                for (int f = 0; f < NF; ++f) tile_at(red, m, f) = acc4(m, f);
        }
        cluster.sync();  // every partial tile written (release / acquire across the cluster)
        const float4 *rp[MMM_MAX_SPLITS];
#pragma unroll
        for (int j = 0; j < MMM_MAX_SPLITS; ++j)
            rp[j] = reinterpret_cast<const float4 *>(j < KS ? cluster.map_shared_rank(red, (unsigned)j) : red);
        constexpr int E4 = mmm_tile_floats(NF, MT, WM, WN) / 4;
        const int e1 = (int)((long long)(z + 1) * E4 / KS);
        for (int e = (int)((long long)z * E4 / KS) + (int)threadIdx.x; e < e1; e += NT) {
            float4 v = rp[0][e];
#pragma unroll
            for (int j = 1; j < MMM_MAX_SPLITS; ++j)
                if (j < KS) {
                    const float4 t = rp[j][e];
                    v.x += t.x;
                    v.y += t.y;
                    v.z += t.z;
                    v.w += t.w;
                }
            // e = ((wmn * MT + m) * NF + f) * 32 + lane, as tile_at lays it out; wmn = wm + WM * wn
            const int ln = e & 31, q = e >> 5;
            const int f = q % NF, m = (q / NF) % MT, wmn_e = q / (NF * MT);
            store4(row0 + 16 * (MT * (wmn_e % WM) + m) + (ln >> 2), col0 + 8 * NF * (wmn_e / WM) + 8 * f + 2 * (ln & 3), v);
        }
        cluster.sync();  // no CTA exits (releasing its shared memory) while another still reads it
        return;
    }
#endif
    if (wk > 0) return;
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int f = 0; f < NF; ++f) store4(row0 + ra[m], col0 + 8 * NF * wn + 8 * f + 2 * tq, acc4(m, f));
}

#endif  // __CUDACC__

}  // namespace airavata
