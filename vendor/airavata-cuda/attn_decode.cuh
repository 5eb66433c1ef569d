// Split-KV decode attention (issue 24): B sequences, one query token each, over per-sequence
// K/V streams laid out as llama.cpp's KV cache views them (ggml_flash_attn_ext's K/V: ne =
// [D, n_kv, H_kv, n_stream], byte strides nb1 per token, nb2 per head, nb3 per stream).
//
// One block of 4 warps per (KV range, KV head, sequence): it reads the range's K rows once for all
// G = H / H_kv query heads that share them (GQA), keeps the scores in shared memory, then reads the
// V rows once. Each lane owns 8 consecutive dimensions of a row (16-byte loads for f16; q8_0 and
// q4_0 rows are read in place, 2-byte aligned, and dequantized in registers), so a warp covers
// 32 / (D / 8) tokens per load and U loads per lane are in flight. Softmax in fp32. When a sequence
// is split over several blocks, each writes its unnormalized output with its max and sum, and one
// combine kernel merges them (FlashDecoding).
#pragma once
#include <cuda_fp16.h>
#include <cstdint>
#include <math.h>


namespace airavata_attn {

enum KvType : int { KV_F16 = 0, KV_Q8_0 = 1, KV_Q4_0 = 2 };

constexpr int NWARPS = 4;
constexpr int UNROLL = 4;
constexpr int MAX_CHUNK = 1024;  // tokens per block (shared-memory scores)

// Bytes of one 32-value block of a quantized type: the fp16 scale d, then the quants.
__host__ __device__ constexpr int block_bytes(KvType t) { return t == KV_Q8_0 ? 34 : 18; }
__host__ __device__ constexpr int row_bytes(KvType t, int d) { return t == KV_F16 ? 2 * d : d / 32 * block_bytes(t); }

// Raw bytes of one lane's 8 dimensions of a row.
template <KvType T> struct Raw;
template <> struct Raw<KV_F16> { uint4 v; };
template <> struct Raw<KV_Q8_0> { uint16_t q[4]; uint16_t d; };
template <> struct Raw<KV_Q4_0> { uint16_t q[4]; uint16_t d; };

// Where a lane's 8 quant bytes (dimensions d0..d0+7) start in their block, after its 2-byte scale, in 2-byte units:
// q8_0 one byte a dimension; q4_0 dimensions j and j + 16 share byte j, so the lanes at d0 and d0 + 16 read the
// same 8 bytes (dequant takes the low or high nibbles). The block is row + (d0 / 32) * block_bytes(T).
template <KvType T> __device__ __forceinline__ int lane_quant_u16(int d0) {
    return T == KV_Q8_0 ? (d0 % 32) / 2 : (d0 % 16) / 2;
}

template <KvType T> __device__ __forceinline__ Raw<T> load_raw(const char * row, int d0);

template <> __device__ __forceinline__ Raw<KV_F16> load_raw<KV_F16>(const char * row, int d0) {
    Raw<KV_F16> r;
    r.v = __ldg(reinterpret_cast<const uint4 *>(row + 2 * d0));
    return r;
}

// Quantized K/V: the scale and the lane's 8 quant bytes with 2-byte loads (a block is only 2-byte aligned). Two
// specializations, not one template: the shipped kernels' SASS is the one measured (nvcc 13.0 allocates registers
// differently for the same arithmetic written as a template, e.g. 99 instead of 96 for q8_0 D128 G4).
template <> __device__ __forceinline__ Raw<KV_Q8_0> load_raw<KV_Q8_0>(const char * row, int d0) {
    const uint16_t * b = reinterpret_cast<const uint16_t *>(row + (d0 / 32) * block_bytes(KV_Q8_0));
    const int o = lane_quant_u16<KV_Q8_0>(d0);
    Raw<KV_Q8_0> r;
    r.d = __ldg(b);
#pragma unroll
    for (int i = 0; i < 4; ++i) r.q[i] = __ldg(b + 1 + o + i);
    return r;
}

template <> __device__ __forceinline__ Raw<KV_Q4_0> load_raw<KV_Q4_0>(const char * row, int d0) {
    const uint16_t * b = reinterpret_cast<const uint16_t *>(row + (d0 / 32) * block_bytes(KV_Q4_0));
    const int o = lane_quant_u16<KV_Q4_0>(d0);
    Raw<KV_Q4_0> r;
    r.d = __ldg(b);
#pragma unroll
    for (int i = 0; i < 4; ++i) r.q[i] = __ldg(b + 1 + o + i);
    return r;
}

template <KvType T> __device__ __forceinline__ void zero_raw(Raw<T> & r) { memset(&r, 0, sizeof(r)); }

__device__ __forceinline__ float h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }

template <KvType T> __device__ __forceinline__ void dequant(const Raw<T> & r, int d0, float (&x)[8]);

template <> __device__ __forceinline__ void dequant<KV_F16>(const Raw<KV_F16> & r, int, float (&x)[8]) {
    const __half2 * h = reinterpret_cast<const __half2 *>(&r.v);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 f = __half22float2(h[i]);
        x[2 * i] = f.x;
        x[2 * i + 1] = f.y;
    }
}

// Small integers to float without I2F (16 a clock per SM on Hopper, a quarter of FP32's rate): byte j of w
// (0..255) goes into the low mantissa byte of 2^23, so the float is 2^23 + byte exactly, and one FADD removes
// the offset. Four bytes: PRMT each, FADD each.
__device__ __forceinline__ uint32_t prmt_b32(uint32_t a, uint32_t b, uint32_t sel) {
    uint32_t d;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
    return d;
}
// x[j] = byte j of w - off, exactly (off: the byte value that means 0).
__device__ __forceinline__ void bytes_to_float(uint32_t w, float off, float (&x)[4]) {
#pragma unroll
    for (int j = 0; j < 4; ++j) x[j] = __uint_as_float(prmt_b32(w, 0x4B000000u, 0x7440u | j)) - (8388608.0f + off);
}

// q8_0 keeps I2F: the mantissa route above measured no faster for it (0.99-1.00x, H100,
// benches/results/2026-12-07-h100-attn-dequant), its limit being elsewhere (five 2-byte loads a lane a row).
template <> __device__ __forceinline__ void dequant<KV_Q8_0>(const Raw<KV_Q8_0> & r, int, float (&x)[8]) {
    const float d = h2f(r.d);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        x[2 * i] = d * (float) (int8_t) (r.q[i] & 0xff);
        x[2 * i + 1] = d * (float) (int8_t) (r.q[i] >> 8);
    }
}

// q4_0: each lane's 4 nibbles a word go through the mantissa of 2^23 (1.06-1.10x at B >= 16, same run).
template <> __device__ __forceinline__ void dequant<KV_Q4_0>(const Raw<KV_Q4_0> & r, int d0, float (&x)[8]) {
    const float d = h2f(r.d);
    const int shift = (d0 % 32) < 16 ? 0 : 4;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        // this lane's 4 nibbles of q[2h], q[2h+1], one a byte (0..15; 8 means 0)
        const uint32_t w = (prmt_b32(r.q[2 * h], r.q[2 * h + 1], 0x5410u) >> shift) & 0x0F0F0F0Fu;
        float f[4];
        bytes_to_float(w, 8.0f, f);
#pragma unroll
        for (int j = 0; j < 4; ++j) x[4 * h + j] = d * f[j];
    }
}

struct Params {
    const float * q;  // [B][H][D] with strides q_nb2 (per head), q_nb3 (per sequence), in floats
    const char * k;
    const char * v;
    const half * mask;  // [B][mask_nb3] (0 or -inf per KV position), or null
    float * out;        // [B][H][D]
    float * part_o;     // [B][H][n_splits][D]
    float2 * part_ml;   // [B][H][n_splits]: max, sum
    long long q_nb2, q_nb3;
    long long k_nb1, k_nb2, k_nb3, v_nb1, v_nb2, v_nb3;
    long long mask_nb3;
    int n_kv, chunk, n_splits, n_head, n_head_kv;
    float scale;
    // (Session 19's deeper unroll, 8 rows a lane, measured 20-26 % slower in session 20, and session 20's "wide"
    // loads of quantized K/V -- a lane's 8 quant bytes from one or two aligned 8-byte words instead of four 2-byte
    // loads -- measured 1.3-1.6x slower in session 22, are gone.)
};

template <int D, int G, KvType KT, KvType VT>
__global__ void __launch_bounds__(NWARPS * 32) attn_split_kernel(const Params p) {
    constexpr int LPT = D / 8;    // lanes per token
    constexpr int TPW = 32 / LPT; // tokens per warp per load
    constexpr int UK = UNROLL, UV = UNROLL;
    constexpr int STEP_K = NWARPS * TPW * UK, STEP_V = NWARPS * TPW * UV;
    extern __shared__ float smem[];
    float * s = smem;                      // [G][chunk] scores, then probabilities
    float * red = smem + G * p.chunk;      // [NWARPS][G][D] partial outputs
    __shared__ float stat[NWARPS][G];

    const int split = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int sub = lane % LPT, tw = lane / LPT, d0 = sub * 8;
    const int t0 = split * p.chunk;
    const int n = min(p.n_kv - t0, p.chunk);

    float q[G][8];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        const float * qp = p.q + b * p.q_nb3 + (kvh * G + g) * p.q_nb2 + d0;
        const float4 a = *reinterpret_cast<const float4 *>(qp);
        const float4 c = *reinterpret_cast<const float4 *>(qp + 4);
        q[g][0] = a.x * p.scale; q[g][1] = a.y * p.scale; q[g][2] = a.z * p.scale; q[g][3] = a.w * p.scale;
        q[g][4] = c.x * p.scale; q[g][5] = c.y * p.scale; q[g][6] = c.z * p.scale; q[g][7] = c.w * p.scale;
    }
    const char * kbase = p.k + b * p.k_nb3 + kvh * p.k_nb2 + (long long) t0 * p.k_nb1;
    const char * vbase = p.v + b * p.v_nb3 + kvh * p.v_nb2 + (long long) t0 * p.v_nb1;
    const half * mrow = p.mask ? p.mask + b * p.mask_nb3 + t0 : nullptr;

    // Scores: q . k for each token of the range.
    for (int base = 0; base < n; base += STEP_K) {
        Raw<KT> r[UK];
#pragma unroll
        for (int u = 0; u < UK; ++u) {
            const int t = base + (u * NWARPS + warp) * TPW + tw;
            if (t < n) r[u] = load_raw<KT>(kbase + (long long) t * p.k_nb1, d0);
            else zero_raw<KT>(r[u]);
        }
#pragma unroll
        for (int u = 0; u < UK; ++u) {
            const int t = base + (u * NWARPS + warp) * TPW + tw;
            float x[8];
            dequant<KT>(r[u], d0, x);
#pragma unroll
            for (int g = 0; g < G; ++g) {
                float dot = 0.f;
#pragma unroll
                for (int i = 0; i < 8; ++i) dot = fmaf(q[g][i], x[i], dot);
#pragma unroll
                for (int o = LPT / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
                if (sub == 0 && t < n) s[g * p.chunk + t] = dot + (mrow ? __half2float(mrow[t]) : 0.f);
            }
        }
    }
    __syncthreads();

    // Max and sum per head over the range; scores become exp(score - max).
    float mx[G], sm[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        float m = -INFINITY;
        for (int t = threadIdx.x; t < n; t += NWARPS * 32) m = fmaxf(m, s[g * p.chunk + t]);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        if (lane == 0) stat[warp][g] = m;
    }
    __syncthreads();
#pragma unroll
    for (int g = 0; g < G; ++g) {
        float m = stat[0][g];
#pragma unroll
        for (int w = 1; w < NWARPS; ++w) m = fmaxf(m, stat[w][g]);
        mx[g] = m;
    }
    __syncthreads();
#pragma unroll
    for (int g = 0; g < G; ++g) {
        float l = 0.f;
        for (int t = threadIdx.x; t < n; t += NWARPS * 32) {
            const float e = mx[g] == -INFINITY ? 0.f : __expf(s[g * p.chunk + t] - mx[g]);
            s[g * p.chunk + t] = e;
            l += e;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) l += __shfl_xor_sync(0xffffffffu, l, o);
        if (lane == 0) stat[warp][g] = l;
    }
    __syncthreads();
#pragma unroll
    for (int g = 0; g < G; ++g) {
        float l = 0.f;
#pragma unroll
        for (int w = 0; w < NWARPS; ++w) l += stat[w][g];
        sm[g] = l;
    }

    // Output: sum of p . v over the range.
    float acc[G][8];
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[g][i] = 0.f;
    for (int base = 0; base < n; base += STEP_V) {
        Raw<VT> r[UV];
#pragma unroll
        for (int u = 0; u < UV; ++u) {
            const int t = base + (u * NWARPS + warp) * TPW + tw;
            if (t < n) r[u] = load_raw<VT>(vbase + (long long) t * p.v_nb1, d0);
            else zero_raw<VT>(r[u]);
        }
#pragma unroll
        for (int u = 0; u < UV; ++u) {
            const int t = base + (u * NWARPS + warp) * TPW + tw;
            float x[8];
            dequant<VT>(r[u], d0, x);
#pragma unroll
            for (int g = 0; g < G; ++g) {
                const float w = t < n ? s[g * p.chunk + t] : 0.f;
#pragma unroll
                for (int i = 0; i < 8; ++i) acc[g][i] = fmaf(w, x[i], acc[g][i]);
            }
        }
    }
    // Lanes with the same dimensions (other tokens of the warp), then the warps.
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
            for (int o = LPT; o < 32; o <<= 1) acc[g][i] += __shfl_xor_sync(0xffffffffu, acc[g][i], o);
    if (tw == 0) {
#pragma unroll
        for (int g = 0; g < G; ++g)
#pragma unroll
            for (int i = 0; i < 8; ++i) red[(warp * G + g) * D + d0 + i] = acc[g][i];
    }
    __syncthreads();
    for (int j = threadIdx.x; j < G * D; j += NWARPS * 32) {
        const int g = j / D, d = j % D;
        float o = 0.f;
#pragma unroll
        for (int w = 0; w < NWARPS; ++w) o += red[(w * G + g) * D + d];
        const int h = kvh * G + g;
        const long long bh = (long long) b * p.n_head + h;
        if (p.n_splits == 1) {
            p.out[bh * D + d] = sm[g] > 0.f ? o / sm[g] : 0.f;
        } else {
            p.part_o[(bh * p.n_splits + split) * D + d] = o;
            if (d == 0) p.part_ml[bh * p.n_splits + split] = make_float2(mx[g], sm[g]);
        }
    }
}

// Merges the ranges of each (sequence, head): one block of D threads.
template <int D>
__global__ void __launch_bounds__(D) attn_combine_kernel(const Params p) {
    const int h = blockIdx.x, b = blockIdx.y, d = threadIdx.x;
    const long long bh = (long long) b * p.n_head + h;
    const float2 * ml = p.part_ml + bh * p.n_splits;
    float m = -INFINITY;
    for (int s = 0; s < p.n_splits; ++s) m = fmaxf(m, ml[s].x);
    float l = 0.f, o = 0.f;
    for (int s = 0; s < p.n_splits; ++s) {
        const float2 e = ml[s];
        const float w = e.x == -INFINITY ? 0.f : __expf(e.x - m);
        l += w * e.y;
        o += w * p.part_o[(bh * p.n_splits + s) * D + d];
    }
    p.out[bh * D + d] = l > 0.f ? o / l : 0.f;
}

// Blocks per sequence and tokens per block: enough blocks to fill the card (4 per SM) at every
// B, at least 64 tokens per block, at most MAX_CHUNK; the chunk a multiple of 32.
inline void plan_splits(int n_kv, int n_seq, int n_head_kv, int n_sm, int & chunk, int & n_splits) {
    const long long per_split = (long long) n_seq * n_head_kv;
    long long want = (4LL * n_sm + per_split - 1) / per_split;
    const long long min_splits = (n_kv + MAX_CHUNK - 1) / MAX_CHUNK;
    const long long max_splits = (n_kv + 63) / 64;
    if (want > max_splits) want = max_splits;
    if (want < min_splits) want = min_splits;
    if (want < 1) want = 1;
    chunk = (int) ((n_kv + want - 1) / want);
    chunk = (chunk + 31) / 32 * 32;
    if (chunk > MAX_CHUNK) chunk = MAX_CHUNK;
    n_splits = (n_kv + chunk - 1) / chunk;
}

inline size_t smem_bytes(int G, int D, int chunk) {
    return sizeof(float) * ((size_t) G * chunk + (size_t) NWARPS * G * D);
}

// At most 4 * 1024 + 4 * 4 * 128 floats = 24 KiB of dynamic shared memory: under the 48 KiB every
// launch may use without opting in.
static_assert(sizeof(float) * (4 * MAX_CHUNK + NWARPS * 4 * 128) <= 48 * 1024, "shared memory");

template <int D, int G, KvType KT, KvType VT>
inline void launch_typed(const Params & p, int n_seq, int n_head_kv, cudaStream_t st) {
    attn_split_kernel<D, G, KT, VT><<<dim3(p.n_splits, n_head_kv, n_seq), NWARPS * 32, smem_bytes(G, D, p.chunk), st>>>(p);
    if (p.n_splits > 1) attn_combine_kernel<D><<<dim3(p.n_head, n_seq), D, 0, st>>>(p);
}

template <int D, int G>
inline bool launch_dg(const Params & p, KvType kt, KvType vt, int n_seq, int n_head_kv, cudaStream_t st) {
    if (kt != vt) return false;
    switch (kt) {
        case KV_F16:  launch_typed<D, G, KV_F16, KV_F16>(p, n_seq, n_head_kv, st); return true;
        case KV_Q8_0: launch_typed<D, G, KV_Q8_0, KV_Q8_0>(p, n_seq, n_head_kv, st); return true;
        case KV_Q4_0: launch_typed<D, G, KV_Q4_0, KV_Q4_0>(p, n_seq, n_head_kv, st); return true;
    }
    return false;
}

// Whether a shape has an instance: head size 128 with 1 or 4 query heads per KV head (Airavata; a
// 4:1 GQA model), head size 64 with 1 or 3 (SmolLM2's 9 / 3), equal K and V types.
inline bool supported(int D, int G, KvType kt, KvType vt) {
    return kt == vt && ((D == 128 && (G == 1 || G == 4)) || (D == 64 && (G == 1 || G == 3)));
}

// Launches the split kernel and, when a sequence is split, the combine (p.chunk and p.n_splits from
// plan_splits); false, launching nothing, for a shape without an instance.
inline bool launch(const Params & p, int D, int G, KvType kt, KvType vt, int n_seq, int n_head_kv, cudaStream_t st) {
    if (!supported(D, G, kt, vt)) return false;
    if (D == 128) return G == 1 ? launch_dg<128, 1>(p, kt, vt, n_seq, n_head_kv, st) : launch_dg<128, 4>(p, kt, vt, n_seq, n_head_kv, st);
    return G == 1 ? launch_dg<64, 1>(p, kt, vt, n_seq, n_head_kv, st) : launch_dg<64, 3>(p, kt, vt, n_seq, n_head_kv, st);
}

}  // namespace airavata_attn
