// mmv_iq4xs.cuh -- batch 1..16 matrix-vector product for ggml's IQ4_XS weights on Hopper.
//
//   y[n][r] = sum_k W[r][k] * x[n][k],  r < nrows, n < N <= 16, k < K (K % 256 == 0)
//
// Weights: exactly ggml's block_iq4_xs (136 bytes / 256 weights, rows contiguous,
// row r at W + r*K/256*136).  The base pointer must be 16-byte aligned.
//
// Activations are quantized ONCE per distinct input by quantize_x_q8 (int8 per 32
// values, rounding and fp16-rounded scale as ggml's quantize_q8_1), into a layout
// that is directly the B fragment of mma.m16n8k32.s8 (see below).  The matvec
// kernel then:
//   * streams the weight bytes of a 16*T-row x 512-column unit into a per-warp
//     shared-memory ring with 16-byte cp.async.cg (several units in flight per warp);
//     since 136-byte blocks are only 8-byte aligned, each row segment is copied from
//     its 16-byte-aligned start and the reader adds the 0/8-byte offset;
//   * decodes the 4-bit codebook with 4 PRMT per 8 weights: the "low" lookup
//     (table bytes kv[0..7], all negative) uses PRMT's sign-replicate mode to give
//     -1 where the index is >= 8, the "high" lookup (table bytes kv[8..15]+1, all
//     positive) with the index's bit 3 flipped gives 0 where the index is < 8, so
//     lo + hi == kv[idx] exactly; the sum is taken by the tensor core: two
//     accumulating int8 mma per (16 rows x 32 k) tile;
//   * scales the int32 tile by d*(ls-32) (row, 32-block) and the activation scale.
// The CTA's warps split K; partial sums are reduced in shared memory, so every
// output is written exactly once (no atomics, no zero-init, deterministic).
#pragma once
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace airavata {

constexpr int IQ4XS_QK = 256;
constexpr int IQ4XS_BYTES = 136;  // sizeof(block_iq4_xs)

// ggml's block layout (ggml-common.h), written out here for the harness.
struct block_iq4_xs {
    uint16_t d;          // ggml_half
    uint16_t scales_h;
    uint8_t  scales_l[IQ4XS_QK / 64];
    uint8_t  qs[IQ4XS_QK / 2];
};
static_assert(sizeof(block_iq4_xs) == IQ4XS_BYTES, "block_iq4_xs size");

// kvalues_iq4nl
__host__ __device__ constexpr int8_t kv_iq4nl(int i) {
    constexpr int8_t t[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
    return t[i];
}
__host__ __device__ constexpr uint32_t pack4(int a, int b, int c, int d) {
    return (uint32_t)(uint8_t)a | ((uint32_t)(uint8_t)b << 8) | ((uint32_t)(uint8_t)c << 16) | ((uint32_t)(uint8_t)d << 24);
}
// low table: kv[0..7] (all negative -> PRMT sign mode yields 0xFF = -1)
constexpr uint32_t KT0 = pack4(kv_iq4nl(0), kv_iq4nl(1), kv_iq4nl(2), kv_iq4nl(3));
constexpr uint32_t KT1 = pack4(kv_iq4nl(4), kv_iq4nl(5), kv_iq4nl(6), kv_iq4nl(7));
// high table: kv[8..15]+1 (all in 2..114, msb clear -> PRMT sign mode yields 0)
constexpr uint32_t KT2 = pack4(kv_iq4nl(8) + 1, kv_iq4nl(9) + 1, kv_iq4nl(10) + 1, kv_iq4nl(11) + 1);
constexpr uint32_t KT3 = pack4(kv_iq4nl(12) + 1, kv_iq4nl(13) + 1, kv_iq4nl(14) + 1, kv_iq4nl(15) + 1);

// Position of physical element i (0..31) of a 32-group inside the 32 quantized
// bytes of one (group, column) in xq.  Thread t (= lane%4) of the mma reads bytes
// 8t..8t+7 = B fragment {b0, b1}; they must hold x at the k positions that the
// weight decode puts in A: {4t, 4t+16, 4t+1, 4t+17 | 4t+2, 4t+18, 4t+3, 4t+19}.
__host__ __device__ constexpr int xq_pos(int i) { return 8 * ((i & 15) >> 2) + 2 * (i & 3) + (i >> 4); }

#ifdef __CUDACC__

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
    uint32_t d;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
    return d;
}

__device__ __forceinline__ void mma_s8_16832(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                             uint32_t b0, uint32_t b1) {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif  // never launched below sm_80 (the dispatch checks the compute capability)
}

// One 16-row x 32-column IQ4_XS tile as the two A fragments whose sum is the int8 weights (lo + hi == kv[idx],
// see the header): lane (g, tq)'s words w0 (row g) and w1 (row g + 8), bytes 4tq..4tq+3 of the sub-block.
// a0: row g, k 0..3 (low half of the word); a1: row g + 8; a2/a3: the high halves. kt0/kt2: KT0/KT2 in registers.
struct Iq4Tile {
    uint32_t lo[4], hi[4];
};
__device__ __forceinline__ Iq4Tile iq4_decode_tile(uint32_t w0, uint32_t w1, uint32_t kt0, uint32_t kt2) {
    const uint32_t f0 = w0 ^ 0x88888888u, f1 = w1 ^ 0x88888888u;
    return {{prmt(kt0, KT1, w0), prmt(kt0, KT1, w1), prmt(kt0, KT1, w0 >> 16), prmt(kt0, KT1, w1 >> 16)},
            {prmt(kt2, KT3, f0), prmt(kt2, KT3, f1), prmt(kt2, KT3, f0 >> 16), prmt(kt2, KT3, f1 >> 16)}};
}
// c += the tile times one B fragment (8 columns): both halves into the same int32 accumulators.
__device__ __forceinline__ void iq4_mma_tile(int (&c)[4], const Iq4Tile &a, uint2 b) {
    mma_s8_16832(c, a.lo[0], a.lo[1], a.lo[2], a.lo[3], b.x, b.y);
    mma_s8_16832(c, a.hi[0], a.hi[1], a.hi[2], a.hi[3], b.x, b.y);
}
// The 6-bit scale of sub-block sb (0..7) of a block, from its scales_l (sl) and scales_h (sh): ls - 32 multiplies d.
__device__ __forceinline__ int iq4xs_sub_scale(uint32_t sl, uint32_t sh, int sb) {
    return (int)(((sl >> (4 * sb)) & 15u) | (((sh >> (2 * sb)) & 3u) << 4));
}

__device__ __forceinline__ void cp_async_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
__device__ __forceinline__ void cp_async_wait_dyn(int n) {
#if __CUDA_ARCH__ >= 800
    switch (n) {
        case 0: asm volatile("cp.async.wait_group 0;\n" ::: "memory"); break;
        case 1: asm volatile("cp.async.wait_group 1;\n" ::: "memory"); break;
        case 2: asm volatile("cp.async.wait_group 2;\n" ::: "memory"); break;
        default: asm volatile("cp.async.wait_group 3;\n" ::: "memory"); break;
    }
#endif
}

// Programmatic dependent launch (Hopper): a kernel launched with the PDL attribute may start while the
// kernel before it still runs; grid_dep_wait() returns once that kernel has finished and its writes are
// visible (at once when launched without the attribute), grid_dep_launch() lets the next kernel start early.
__device__ __forceinline__ void grid_dep_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void grid_dep_launch() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// ---------------------------------------------------------------------------------
// Activation quantization: x f32, column n at x + n*ldx, K values, N <= 16 columns.
// Out: xq int8 [N][K/32][32] (column-major, each 32-group in mma order),
//      xd f32  [K/32][XDC]   (scale of group g, column n at g*XDC+n; 0 for N <= n < XDC),
// XDC = mmv_xd_cols(N) = 8 for N <= 8, else 16.
// One warp per (32-group, column); block = XDC warps = the XDC columns of one group (launch with
// 32 * XDC threads).
// Same arithmetic as ggml's quantize_q8_1: d = amax/127, q = round(x/d), and d kept as ggml keeps it, rounded
// to fp16, so this kernel computes what llama.cpp's mul_mat_vec_q computes (up to the order of float sums).
// With an f32 d the logits of a real model (SmolLM2 nf4) moved by a mean KLD of 0.0033 against llama.cpp's
// kernels: a model with outlier activations is that sensitive to any change in activation rounding (llama.cpp's
// own mmq and mmvq, which round differently, differ by 0.0046 on it).
// x is read after grid_dep_wait(), so it is not __restrict__ (which would let the compiler hoist the load).
__global__ void __launch_bounds__(512) quantize_x_q8(const float *x, int K, int ldx, int N, int8_t *__restrict__ xq,
                                                     float *__restrict__ xd) {
    grid_dep_wait();    // x is the previous kernel's output
    grid_dep_launch();  // the matvec may start and fetch its weights meanwhile
    const int grp = blockIdx.x, ngrp = gridDim.x;
    const int n = threadIdx.x >> 5, lane = threadIdx.x & 31, xdc = blockDim.x >> 5;
    if (n >= N) {
        if (lane == 0) xd[grp * xdc + n] = 0.0f;
        return;
    }
    const float v = x[(size_t)n * ldx + (size_t)grp * 32 + lane];
    float amax = fabsf(v);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float d = amax / 127.0f;
    const int q = amax == 0.0f ? 0 : (int)roundf(v / d);
    xq[((size_t)n * ngrp + grp) * 32 + xq_pos(lane)] = (int8_t)q;
    if (lane == 0) xd[grp * xdc + n] = __half2float(__float2half_rn(d));
}

// ---------------------------------------------------------------------------------
// Matrix-vector kernel.
//   NCOLS: number of activation columns (1..16; beyond 8 a second mma B fragment shares each decoded weight tile)
//   T:     16-row tiles per CTA (each warp computes all T tiles of its K slice)
//   WARPS: warps per CTA; they split the K units round-robin, partial sums reduced in smem
//   UB:    256-column blocks per unit (1 or 2); a unit = 16*T rows x 256*UB columns
// Runtime: S = ring stages per warp (>= 1), compute = 0 times the load path alone.
// Each stage holds the unit's weight rows and its activation slice (int8 + scales),
// all brought in by 16-byte cp.async.cg, so the tile loop only reads shared memory.
__host__ __device__ constexpr int mmv_rs(int UB) { return UB == 1 ? 176 : 304; }  // odd multiple of 16 >= 8+136*UB
__host__ __device__ constexpr int mmv_xcol(int UB) { return 8 * UB * 32 + 32; }    // +32: no bank conflicts
__host__ __device__ constexpr int mmv_xd_cols(int NC) { return NC <= 8 ? 8 : 16; }  // scale columns per group
__host__ __device__ constexpr int mmv_stage_bytes(int NC, int T, int UB) {
    return 16 * T * mmv_rs(UB) + NC * mmv_xcol(UB) + 8 * UB * 4 * mmv_xd_cols(NC);
}
// Row tiles of 16*T rows covering an nrows-row matrix (v2's grid; v3's tiles are T = 1).
__host__ __device__ constexpr int mmv_row_tiles(int nrows, int T) { return (nrows + 16 * T - 1) / (16 * T); }
__host__ __device__ constexpr int mmv_dwt_bytes(int T, int UB) { return UB * 8 * T * 8 * 2 * 4; }
__host__ __device__ constexpr int mmv_smem_bytes(int NC, int T, int WARPS, int UB, int S) {
    return WARPS * (S * mmv_stage_bytes(NC, T, UB) + mmv_dwt_bytes(T, UB));
}

// The 8 bytes at src (8-byte aligned): the tail of the matrix's last block.
__device__ __forceinline__ void cp_async8(uint32_t dst, const void *src) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(dst), "l"(src));
#endif
}
__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
#endif
}

template <int NCOLS, int T, int WARPS, int UB>
__global__ void __launch_bounds__(WARPS * 32)
    mmv_iq4xs_kernel(const uint8_t *__restrict__ W, const int8_t *__restrict__ xq, const float *__restrict__ xd,
                     float *__restrict__ y, const int nrows, const int nb, const int S, const int compute) {
    extern __shared__ __align__(16) uint8_t smem[];
    constexpr int ROWS = 16 * T;
    constexpr int RS = mmv_rs(UB);
    constexpr int XC = mmv_xcol(UB);
    constexpr int WB = ROWS * RS;           // weight bytes per stage
    constexpr int XB = NCOLS * XC;          // activation bytes per stage
    constexpr int XDC = mmv_xd_cols(NCOLS); // activation scales per 32-group
    constexpr int NF = (NCOLS + 7) / 8;     // mma B fragments (8 columns each)
    static_assert(NCOLS >= 1 && NCOLS <= 16, "1..16 columns");
    constexpr int STAGE = mmv_stage_bytes(NCOLS, T, UB);
    constexpr int NM = UB == 1 ? 2 : 3;     // 16-byte chunks per row segment: 9 or 18 -> lane%8 + 8m
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, tq = lane & 3;
    const size_t rowbytes = (size_t)nb * IQ4XS_BYTES;
    const int ngrp = nb * 8;
    const int row0 = blockIdx.x * ROWS;
    const int nu = (nb + UB - 1) / UB;

    uint8_t *wsm = smem + warp * (S * STAGE + mmv_dwt_bytes(T, UB));
    float2 *dwt = reinterpret_cast<float2 *>(wsm + S * STAGE);  // [blk][sb][t][g] -> (row g, row g+8)
    const uint32_t wsm_s = (uint32_t)__cvta_generic_to_shared(wsm);

    // codebook words kept in registers (shfl keeps ptxas from rematerializing them)
    const uint32_t kt0 = __shfl_sync(0xffffffffu, KT0, 0);
    const uint32_t kt2 = __shfl_sync(0xffffffffu, KT2, 0);

    // A unit's segment of row R starts at byte R*rowbytes + u*UB*136 = 8*((R*nb + UB*u) & 1)
    // mod 16; it is copied from the 16-byte-aligned address below it, so inside a stage row r
    // starts at r*RS + off(r, u).  par[t][h]: parity of R*nb for this thread's A rows.
    auto off_of = [&](int par, int u) { return ((par ^ (UB * u)) & 1) * 8; };
    int rb[T][2], par[T][2];
#pragma unroll
    for (int t = 0; t < T; ++t)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = 16 * t + 8 * h + g;
            par[t][h] = (int)(((long long)(row0 + r) * nb) & 1);
            rb[t][h] = r * RS + 8 + 4 * tq;  // + 8 skips the block header, + 4*tq selects the word
        }

    // a unit's weight rows into stage s (they depend on no earlier kernel) ... Lane l copies chunks
    // j = l % 8 + 8m of rows r = 4i + l / 8: its rows' start pointers, parities and whether one of them is the
    // matrix's last row are fixed, so a stage adds one offset a row (no 64-bit multiplies, no bounds arithmetic).
    static_assert(4 * T <= 32, "one parity bit a row");
    const uint8_t *const wtile = W + (size_t)row0 * rowbytes;  // the CTA's first row
    uint32_t woff[4 * T];  // lane's row i, chunk lane % 8, from wtile (< 16T rows: fits 32 bits)
    int wpar = 0, wlast = -1;  // bit i: parity of R*nb of row i; the i whose row is the matrix's last (or -1)
#pragma unroll
    for (int i = 0; i < 4 * T; ++i) {
        const int r = 4 * i + (lane >> 3), R = row0 + r;
        woff[i] = (uint32_t)((size_t)r * rowbytes) + 16 * (lane & 7);
        wpar |= (int)(((long long)R * nb) & 1) << i;
        if (R == nrows - 1) wlast = i;
    }
    auto issue_w = [&](int u, int s) {
        const int cu = min(UB, nb - UB * u);
        const uint32_t sbase = wsm_s + s * STAGE + 16 * (lane & 7);
#pragma unroll
        for (int i = 0; i < 4 * T; ++i) {
            const int r = 4 * i + (lane >> 3);
            if (row0 + r < nrows) {
                const int off = off_of(wpar >> i & 1, u);
                const int span = off + IQ4XS_BYTES * cu;  // bytes from the 16-byte boundary to the segment's end
                const uint8_t *src = wtile + woff[i] + (u * (UB * IQ4XS_BYTES) - off);
#pragma unroll
                for (int m = 0; m < NM; ++m) {
                    const int j = (lane & 7) + 8 * m;
                    if (16 * j < span) {
                        // past the segment's end is past the matrix only on its last row's last unit (8 bytes left)
                        if (i == wlast && u == nu - 1 && 16 * j + 16 > span)
                            cp_async8(sbase + r * RS + 128 * m, src + 128 * m);
                        else
                            cp_async16(sbase + r * RS + 128 * m, src + 128 * m);
                    }
                }
            }
        }
    };
    // ... and its activation slice: NCOLS columns x 8*cu groups x 32 bytes, and the 8*cu x XDC scales
    auto issue_x = [&](int u, int s) {
        const int cu = min(UB, nb - UB * u);
        const uint32_t sbase = wsm_s + s * STAGE;
        const int8_t *xs = xq + (size_t)(8 * UB * u) * 32;
#pragma unroll
        for (int c0 = 0; c0 < NCOLS * 16 * UB; c0 += 32) {
            const int c = c0 + lane;
            const int n = c / (16 * UB), j = c % (16 * UB);
            if (c < NCOLS * 16 * UB && j < 16 * cu)
                cp_async16(sbase + WB + n * XC + 16 * j, xs + (size_t)n * ngrp * 32 + 16 * j);
        }
        for (int c = lane; c < 2 * cu * XDC; c += 32)  // 8*cu groups x XDC floats, 16 bytes a copy
            cp_async16(sbase + WB + XB + 16 * c, xd + (size_t)(8 * UB * u) * XDC + 4 * c);
    };
    auto issue = [&](int u, int s) {
        issue_w(u, s);
        issue_x(u, s);
    };

    float acc[T][NF][4];
#pragma unroll
    for (int t = 0; t < T; ++t)
#pragma unroll
        for (int f = 0; f < NF; ++f)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[t][f][i] = 0.0f;

    const int nk = warp < nu ? (nu - warp + WARPS - 1) / WARPS : 0;
    // Prologue: the first S units' weights are requested before waiting for the kernel that wrote the
    // activations (under PDL that overlaps its tail); commit group s then holds stage s's activations (group 0
    // also every prologue weight), so waiting for group k still covers all of stage k.
    for (int s = 0; s < S; ++s)
        if (s < nk) issue_w(warp + s * WARPS, s);
    grid_dep_wait();
    for (int s = 0; s < S; ++s) {
        if (s < nk) issue_x(warp + s * WARPS, s);
        cp_async_commit();
    }

    for (int k = 0, s = 0; k < nk; ++k, s = s + 1 == S ? 0 : s + 1) {  // s = k % S
        const int u = warp + k * WARPS;
        const int cu = min(UB, nb - UB * u);
        cp_async_wait_dyn(S - 1);
        __syncwarp();
        const uint8_t *slot = wsm + s * STAGE;
        const uint8_t *xsm = slot + WB;
        const float *dxs = reinterpret_cast<const float *>(slot + WB + XB);

        int ro[T][2];  // this unit's row starts (alignment offset included)
#pragma unroll
        for (int t = 0; t < T; ++t)
#pragma unroll
            for (int h = 0; h < 2; ++h) ro[t][h] = rb[t][h] + off_of(par[t][h], u);

        if (compute) {
            // per-(row, block) scales d*(ls-32) of the 8 sub-blocks -> dwt
#pragma unroll
            for (int t = 0; t < T; ++t) {
                const int r = (lane & 15) + 16 * t;
                const int blk = lane >> 4;
                if (blk < cu) {
                    const int off = off_of((int)(((long long)(row0 + r) * nb) & 1), u);
                    const uint2 h = *reinterpret_cast<const uint2 *>(slot + r * RS + off + IQ4XS_BYTES * blk);
                    const float d = __half2float(__ushort_as_half((unsigned short)(h.x & 0xffffu)));
                    const uint32_t sh = h.x >> 16, sl = h.y;
                    float *dst = reinterpret_cast<float *>(dwt) + ((blk * 8 * T + t) * 8 + (r & 7)) * 2 + ((r >> 3) & 1);
#pragma unroll
                    for (int sb = 0; sb < 8; ++sb) {
                        dst[sb * T * 16] = d * (float)(iq4xs_sub_scale(sl, sh, sb) - 32);
                    }
                }
            }
            __syncwarp();

#pragma unroll
            for (int blk = 0; blk < UB; ++blk) {
                if (blk < cu) {
#pragma unroll
                    for (int sb = 0; sb < 8; ++sb) {
                        const int sbl = blk * 8 + sb;
                        // fragment f: B column g is activation column 8f + g; C columns 2tq, 2tq+1 are 8f + 2tq, +1
                        uint2 b[NF];
                        float2 dx[NF];
#pragma unroll
                        for (int f = 0; f < NF; ++f) {
                            b[f] = make_uint2(0u, 0u);
                            if (8 * f + g < NCOLS)
                                b[f] = *reinterpret_cast<const uint2 *>(xsm + (8 * f + g) * XC + sbl * 32 + tq * 8);
                            dx[f] = *reinterpret_cast<const float2 *>(dxs + sbl * XDC + 8 * f + 2 * tq);
                        }
#pragma unroll
                        for (int t = 0; t < T; ++t) {
                            const uint32_t w0 =
                                *reinterpret_cast<const uint32_t *>(slot + ro[t][0] + blk * IQ4XS_BYTES + 16 * sb);
                            const uint32_t w1 =
                                *reinterpret_cast<const uint32_t *>(slot + ro[t][1] + blk * IQ4XS_BYTES + 16 * sb);
                            const Iq4Tile a = iq4_decode_tile(w0, w1, kt0, kt2);  // decoded once, used by every fragment
                            const float2 dw = dwt[(sbl * T + t) * 8 + g];
#pragma unroll
                            for (int f = 0; f < NF; ++f) {
                                int c[4] = {0, 0, 0, 0};
                                iq4_mma_tile(c, a, b[f]);
                                acc[t][f][0] = fmaf((float)c[0], dw.x * dx[f].x, acc[t][f][0]);
                                acc[t][f][1] = fmaf((float)c[1], dw.x * dx[f].y, acc[t][f][1]);
                                acc[t][f][2] = fmaf((float)c[2], dw.y * dx[f].x, acc[t][f][2]);
                                acc[t][f][3] = fmaf((float)c[3], dw.y * dx[f].y, acc[t][f][3]);
                            }
                        }
                    }
                }
            }
        }
        __syncwarp();
        if (k + S < nk) issue(warp + (k + S) * WARPS, s);
        cp_async_commit();
    }
    cp_async_wait_dyn(0);
    grid_dep_launch();  // only the reduction is left: the next kernel may start its prologue

    // reduce the warps' partial sums (split K) and write each output once
    __syncthreads();
    // [WARPS][ROWS][8 * NF] floats: 512 * T * NF * WARPS bytes, less than the ring (>= 2816 * T * WARPS)
    constexpr int RC = 8 * NF;
    float *red = reinterpret_cast<float *>(smem);
#pragma unroll
    for (int t = 0; t < T; ++t)
#pragma unroll
        for (int f = 0; f < NF; ++f) {
            float *p = red + (warp * ROWS + 16 * t + g) * RC + 8 * f + 2 * tq;
            p[0] = acc[t][f][0];
            p[1] = acc[t][f][1];
            p[8 * RC] = acc[t][f][2];  // row g + 8
            p[8 * RC + 1] = acc[t][f][3];
        }
    __syncthreads();
    for (int i = threadIdx.x; i < ROWS * NCOLS; i += WARPS * 32) {
        const int r = i % ROWS, col = i / ROWS;
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) sum += red[(w * ROWS + r) * RC + col];
        if (row0 + r < nrows) y[(size_t)col * nrows + row0 + r] = sum;
    }
}

// ---------------------------------------------------------------------------------
// v3, "direct" (session 19; harness variants D.*, not yet run on a GPU): the weights go straight into registers,
// no shared-memory staging. Session 19 measured v2's staging path alone (cp.async -> shared memory, no decode) at
// 56-69 % of the copy rate at N = 1, below llama.cpp's mul_mat_vec_q, which loads 4-byte words into registers.
//
//   * A warp owns a K-range of whole 256-column blocks (warp w: blocks [w*nbw, (w+1)*nbw)) of the CTA's current
//     16-row tile; lane (g, tq) loads exactly its mma A-fragment words: bytes 4tq..4tq+3 of every 32-column
//     sub-block of rows g and g+8 (8 + 2 loads of 4 and 8 bytes per row per block), with ld.global.nc.
//   * Software pipeline across the warp's whole sequence of (tile, block) items, tile boundaries included: the
//     next item's weights (and with XP its activations) are requested before the current item is decoded.
//   * Activations (quantize_x_q8's layout, = the B fragment) come from global memory through L1 (N*K bytes,
//     shared by every tile of the CTA), read only after grid_dep_wait().
//   * Decode and mma exactly as v2. Partial sums of the WARPS K-ranges are reduced in shared memory, double
//     buffered by tile parity, one __syncthreads per tile; every output written once.
//   * The grid may be smaller than the number of tiles (CTA b takes tiles b, b + grid, ...).
// 1..8 columns (one mma B fragment).
__device__ __forceinline__ uint32_t ld_nc_u32(const uint8_t *p) {
    uint32_t v;
    asm volatile("ld.global.nc.u32 %0, [%1];\n" : "=r"(v) : "l"(p));
    return v;
}
__device__ __forceinline__ uint2 ld_nc_u2(const uint8_t *p) {
    uint2 v;
    asm volatile("ld.global.nc.v2.u32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "l"(p));
    return v;
}
// activations: written by the kernel before (PDL), so plain coherent loads, ordered after grid_dep_wait() by
// the asm volatile of both
__device__ __forceinline__ uint2 ld_u2(const void *p) {
    uint2 v;
    asm volatile("ld.global.v2.u32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "l"(p));
    return v;
}
__device__ __forceinline__ float2 ld_f2(const float *p) {
    float2 v;
    asm volatile("ld.global.v2.f32 {%0, %1}, [%2];\n" : "=f"(v.x), "=f"(v.y) : "l"(p));
    return v;
}

template <int NCOLS, int WARPS, bool XP>
__global__ void __launch_bounds__(WARPS * 32, 16 / WARPS)
    mmv_iq4xs_direct_kernel(const uint8_t *__restrict__ W, const int8_t *xq, const float *xd, float *__restrict__ y,
                            const int nrows, const int nb, const int compute) {
    static_assert(NCOLS >= 1 && NCOLS <= 8, "1..8 columns");
    static_assert(WARPS == 4 || WARPS == 8, "4 or 8 warps");
    constexpr int XDC = mmv_xd_cols(NCOLS);
    __shared__ float red[2][WARPS][16][8];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, tq = lane & 3;
    const size_t rowbytes = (size_t)nb * IQ4XS_BYTES;
    const int ngrp = nb * 8;
    const int ntiles = mmv_row_tiles(nrows, 1);
    const int nbw = (nb + WARPS - 1) / WARPS;
    const int b0 = min(nb, warp * nbw);
    const int nblk = min(nb, b0 + nbw) - b0;  // 0 for trailing warps when nb < WARPS
    const int bid = (int)blockIdx.x, grid = (int)gridDim.x;
    const int my_tiles = bid < ntiles ? (ntiles - 1 - bid) / grid + 1 : 0;
    const int nitems = my_tiles * nblk;
    const uint32_t kt0 = __shfl_sync(0xffffffffu, KT0, 0);
    const uint32_t kt2 = __shfl_sync(0xffffffffu, KT2, 0);

    // item i = (tile bid + (i / nblk) * grid, block b0 + i % nblk)
    auto load_w = [&](int i, uint32_t (&w)[8][2], uint2 (&hd)[2]) {
        const int tile = bid + (i / nblk) * grid;
        const int blk = b0 + i % nblk;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int R = 16 * tile + g + 8 * h;
            if (R < nrows) {
                const uint8_t *p = W + (size_t)R * rowbytes + (size_t)blk * IQ4XS_BYTES;
                hd[h] = ld_nc_u2(p);  // d, scales_h | scales_l
#pragma unroll
                for (int sb = 0; sb < 8; ++sb) w[sb][h] = ld_nc_u32(p + 8 + 16 * sb + 4 * tq);
            } else {  // a row past the end: d = 0, so it adds nothing (and is never written)
                hd[h] = make_uint2(0u, 0u);
#pragma unroll
                for (int sb = 0; sb < 8; ++sb) w[sb][h] = 0u;
            }
        }
    };
    auto load_x = [&](int i, uint2 (&b)[8], float2 (&dx)[8]) {
        const int blk = b0 + i % nblk;
#pragma unroll
        for (int sb = 0; sb < 8; ++sb) {
            const int grp = 8 * blk + sb;
            b[sb] = make_uint2(0u, 0u);
            if (g < NCOLS) b[sb] = ld_u2(xq + ((size_t)g * ngrp + grp) * 32 + 8 * tq);
            dx[sb] = ld_f2(xd + (size_t)grp * XDC + 2 * tq);
        }
    };
    auto decode_mma = [&](const uint32_t (&w)[8][2], const uint2 (&hd)[2], const uint2 (&b)[8],
                          const float2 (&dx)[8], float (&acc)[4]) {
        float d[2];
        uint32_t sh[2], sl[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            d[h] = __half2float(__ushort_as_half((unsigned short)(hd[h].x & 0xffffu)));
            sh[h] = hd[h].x >> 16;
            sl[h] = hd[h].y;
        }
#pragma unroll
        for (int sb = 0; sb < 8; ++sb) {
            int c[4] = {0, 0, 0, 0};
            iq4_mma_tile(c, iq4_decode_tile(w[sb][0], w[sb][1], kt0, kt2), b[sb]);
            const float dw0 = d[0] * (float)(iq4xs_sub_scale(sl[0], sh[0], sb) - 32);
            const float dw1 = d[1] * (float)(iq4xs_sub_scale(sl[1], sh[1], sb) - 32);
            acc[0] = fmaf((float)c[0], dw0 * dx[sb].x, acc[0]);  // row g, column 2tq
            acc[1] = fmaf((float)c[1], dw0 * dx[sb].y, acc[1]);  // row g, column 2tq + 1
            acc[2] = fmaf((float)c[2], dw1 * dx[sb].x, acc[2]);  // row g + 8
            acc[3] = fmaf((float)c[3], dw1 * dx[sb].y, acc[3]);
        }
    };

    uint32_t cw[8][2], nw[8][2];
    uint2 chd[2], nhd[2];
    uint2 cb[8], nbx[8];
    float2 cdx[8], ndx[8];
    if (nitems > 0) load_w(0, cw, chd);  // weights depend on no earlier kernel: requested before the wait
    grid_dep_wait();
    if (XP && nitems > 0) load_x(0, cb, cdx);

    int i = 0;
    for (int ti = 0; ti < my_tiles; ++ti) {
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int j = 0; j < nblk; ++j, ++i) {
            const bool more = i + 1 < nitems;
            if (more) load_w(i + 1, nw, nhd);
            if (XP) {
                if (more) load_x(i + 1, nbx, ndx);
            } else {
                load_x(i, cb, cdx);
            }
            if (compute) decode_mma(cw, chd, cb, cdx, acc);
            if (more) {
#pragma unroll
                for (int sb = 0; sb < 8; ++sb) {
                    cw[sb][0] = nw[sb][0];
                    cw[sb][1] = nw[sb][1];
                    if (XP) {
                        cb[sb] = nbx[sb];
                        cdx[sb] = ndx[sb];
                    }
                }
                chd[0] = nhd[0];
                chd[1] = nhd[1];
            }
        }
        const int p = ti & 1;
        red[p][warp][g][2 * tq] = acc[0];
        red[p][warp][g][2 * tq + 1] = acc[1];
        red[p][warp][g + 8][2 * tq] = acc[2];
        red[p][warp][g + 8][2 * tq + 1] = acc[3];
        __syncthreads();  // also orders this read of red[p] before its next write (tile ti + 2, after barrier ti + 1)
        const int tile = bid + ti * grid;
        for (int k = threadIdx.x; k < 16 * NCOLS; k += WARPS * 32) {
            const int r = k & 15, col = k >> 4;
            float sum = 0.0f;
#pragma unroll
            for (int w = 0; w < WARPS; ++w) sum += red[p][w][r][col];
            if (16 * tile + r < nrows) y[(size_t)col * nrows + 16 * tile + r] = sum;
        }
    }
    grid_dep_launch();
}

#endif  // __CUDACC__

}  // namespace airavata
