// Harness for the split-KV decode attention kernel (attn_decode.cuh), issue 24.
//
//   attn_decode --check     random shapes against an fp64 host reference (no timing)
//   attn_decode             checks, then timing over B x context x KV type (Airavata: D 128, 32 heads)
//
// Reference: softmax(q . k * scale + mask) . v in double over the same K/V bytes dequantized on the
// host (f16 -> float, q8_0 d * q, q4_0 d * (q - 8)). Bound: max |out - ref| <= 1e-4 * max |ref| per
// (sequence, head) (fp32 accumulation only; the inputs are the same bytes).
// Timing: CUDA events around a loop of calls rotating over copies of K/V (>= 256 MB in all, so L2
// holds none of it), median of 5; bytes = K + V + Q + mask + out; % of the measured D2D copy bandwidth.
#include "attn_decode.cuh"
#include <cuda_runtime.h>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

using namespace airavata_attn;

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
    fprintf(stderr, "CUDA %s at %s:%d: %s\n", #x, __FILE__, __LINE__, cudaGetErrorString(e_)); exit(2); } } while (0)

static const char * type_name(KvType t) { return t == KV_F16 ? "f16" : t == KV_Q8_0 ? "q8_0" : "q4_0"; }

__device__ __forceinline__ uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

// Random rows of a KV type: f16 values in (-1, 1); quantized blocks with random codes and a
// positive scale ~ 1/127 (q8_0) or 1/8 (q4_0).
__global__ void fill_rows(char * p, long long n_rows, int row_bytes, KvType t, uint64_t seed) {
    const long long i = blockIdx.x * (long long) blockDim.x + threadIdx.x;
    const long long n_units = t == KV_F16 ? n_rows * row_bytes / 2 : n_rows * row_bytes / block_bytes(t);
    if (i >= n_units) return;
    const uint64_t r = mix(seed ^ (uint64_t) i * 0x2545f4914f6cdd1dULL);
    if (t == KV_F16) {
        reinterpret_cast<half *>(p)[i] = __float2half((float) ((r >> 11) * (1.0 / 9007199254740992.0)) * 2.f - 1.f);
        return;
    }
    const int bs = block_bytes(t);
    unsigned char * b = reinterpret_cast<unsigned char *>(p) + i * bs;
    const float u = (float) ((r >> 40) & 0xffff) / 65536.f;
    const half d = __float2half((t == KV_Q8_0 ? 1.f / 127.f : 1.f / 8.f) * (0.5f + u));
    memcpy(b, &d, 2);
    uint64_t x = r;
    for (int j = 2; j < bs; ++j) {
        if ((j & 7) == 2) x = mix(x);
        unsigned char c = (unsigned char) (x >> (8 * (j & 7)));
        if (t == KV_Q8_0 && c == 0x80) c = 0x81;  // ggml's q8_0 codes are -127..127
        b[j] = c;
    }
}

__global__ void fill_f32(float * p, long long n, float scale, uint64_t seed) {
    const long long i = blockIdx.x * (long long) blockDim.x + threadIdx.x;
    if (i >= n) return;
    const uint64_t r = mix(seed ^ (uint64_t) i * 0x9e3779b97f4a7c15ULL);
    p[i] = scale * ((float) ((r >> 11) * (1.0 / 9007199254740992.0)) * 2.f - 1.f);
}

static float half_to_float_host(const unsigned char * b) {
    uint16_t h;
    memcpy(&h, b, 2);
    __half_raw raw;
    raw.x = h;
    return __half2float(__half(raw));
}

static void dequant_row_host(const unsigned char * row, KvType t, int D, double * out) {
    if (t == KV_F16) {
        for (int i = 0; i < D; ++i) out[i] = half_to_float_host(row + 2 * i);
        return;
    }
    for (int blk = 0; blk < D / 32; ++blk) {
        const unsigned char * b = row + blk * block_bytes(t);
        const double d = half_to_float_host(b);
        for (int j = 0; j < 32; ++j) {
            if (t == KV_Q8_0) out[blk * 32 + j] = d * (double) (int8_t) b[2 + j];
            else out[blk * 32 + j] = d * (double) ((j < 16 ? (b[2 + j] & 0xf) : (b[2 + j - 16] >> 4)) - 8);
        }
    }
}

struct Shape {
    int B, H, Hkv, D, n_kv;
    KvType kt, vt;
};

struct Buffers {
    Shape sh;
    int rb_k, rb_v;
    long long k_nb1, k_nb2, k_nb3, v_nb1, v_nb2, v_nb3;
    size_t k_bytes, v_bytes;
    char *k = nullptr, *v = nullptr;
    float *q = nullptr, *out = nullptr, *part_o = nullptr;
    float2 * part_ml = nullptr;
    half * mask = nullptr;
    int chunk = 0, n_splits = 0;
};

static int g_sm = 132;

static void layout(Buffers & bf) {
    const Shape & s = bf.sh;
    bf.rb_k = row_bytes(s.kt, s.D);
    bf.rb_v = row_bytes(s.vt, s.D);
    // llama.cpp's cache: all heads of a token contiguous; one stream per sequence.
    bf.k_nb2 = bf.rb_k; bf.k_nb1 = (long long) s.Hkv * bf.rb_k; bf.k_nb3 = bf.k_nb1 * s.n_kv;
    bf.v_nb2 = bf.rb_v; bf.v_nb1 = (long long) s.Hkv * bf.rb_v; bf.v_nb3 = bf.v_nb1 * s.n_kv;
    bf.k_bytes = (size_t) bf.k_nb3 * s.B;
    bf.v_bytes = (size_t) bf.v_nb3 * s.B;
    plan_splits(s.n_kv, s.B, s.Hkv, g_sm, bf.chunk, bf.n_splits);
}

static Params params(const Buffers & bf, const char * k, const char * v) {
    const Shape & s = bf.sh;
    Params p;
    p.q = bf.q; p.k = k; p.v = v; p.mask = bf.mask; p.out = bf.out; p.part_o = bf.part_o; p.part_ml = bf.part_ml;
    p.q_nb2 = s.D; p.q_nb3 = (long long) s.H * s.D;
    p.k_nb1 = bf.k_nb1; p.k_nb2 = bf.k_nb2; p.k_nb3 = bf.k_nb3;
    p.v_nb1 = bf.v_nb1; p.v_nb2 = bf.v_nb2; p.v_nb3 = bf.v_nb3;
    p.mask_nb3 = s.n_kv;
    p.n_kv = s.n_kv; p.chunk = bf.chunk; p.n_splits = bf.n_splits; p.n_head = s.H; p.n_head_kv = s.Hkv;
    p.scale = 1.f / sqrtf((float) s.D);
    return p;
}

// Shapes outside the instantiated set are refused (the integration falls back to stock kernels).
static bool launch(const Params & p, const Shape & s, cudaStream_t st) {
    if (s.H % s.Hkv != 0) return false;
    return airavata_attn::launch(p, s.D, s.H / s.Hkv, s.kt, s.vt, s.B, s.Hkv, st);
}

static void alloc(Buffers & bf, int copies) {
    const Shape & s = bf.sh;
    // rounded up to 8 bytes, as ggml pads its buffers
    CK(cudaMalloc(&bf.k, (bf.k_bytes * copies + 7) / 8 * 8));
    CK(cudaMalloc(&bf.v, (bf.v_bytes * copies + 7) / 8 * 8));
    CK(cudaMalloc(&bf.q, sizeof(float) * s.B * s.H * s.D));
    CK(cudaMalloc(&bf.out, sizeof(float) * s.B * s.H * s.D));
    CK(cudaMalloc(&bf.part_o, sizeof(float) * s.B * s.H * s.D * std::max(1, bf.n_splits)));
    CK(cudaMalloc(&bf.part_ml, sizeof(float2) * s.B * s.H * std::max(1, bf.n_splits)));
    CK(cudaMalloc(&bf.mask, sizeof(half) * s.B * s.n_kv));
}

static void release(Buffers & bf) {
    cudaFree(bf.k); cudaFree(bf.v); cudaFree(bf.q); cudaFree(bf.out); cudaFree(bf.part_o); cudaFree(bf.part_ml); cudaFree(bf.mask);
}

static void fill(Buffers & bf, int copies, uint64_t seed, float q_scale) {
    const Shape & s = bf.sh;
    const long long rows = (long long) s.B * s.n_kv * s.Hkv * copies;
    auto units = [&](KvType t, int rb) { return t == KV_F16 ? rows * rb / 2 : rows * rb / block_bytes(t); };
    long long u = units(s.kt, bf.rb_k);
    fill_rows<<<(unsigned) ((u + 255) / 256), 256>>>(bf.k, rows, bf.rb_k, s.kt, seed * 3 + 1);
    u = units(s.vt, bf.rb_v);
    fill_rows<<<(unsigned) ((u + 255) / 256), 256>>>(bf.v, rows, bf.rb_v, s.vt, seed * 3 + 2);
    const long long nq = (long long) s.B * s.H * s.D;
    fill_f32<<<(unsigned) ((nq + 255) / 256), 256>>>(bf.q, nq, q_scale, seed * 3 + 3);
    CK(cudaGetLastError());
}

// Per-sequence valid lengths in the mask (0 for t < len, -inf after).
static void set_mask(Buffers & bf, const std::vector<int> & len) {
    const Shape & s = bf.sh;
    std::vector<half> m((size_t) s.B * s.n_kv);
    for (int b = 0; b < s.B; ++b)
        for (int t = 0; t < s.n_kv; ++t) m[(size_t) b * s.n_kv + t] = __float2half(t < len[b] ? 0.f : -INFINITY);
    CK(cudaMemcpy(bf.mask, m.data(), m.size() * sizeof(half), cudaMemcpyHostToDevice));
}

static double check(const Shape & s, uint64_t seed, float q_scale, bool quiet = false) {
    Buffers bf;
    bf.sh = s;
    layout(bf);
    alloc(bf, 1);
    fill(bf, 1, seed, q_scale);
    std::vector<int> len(s.B);
    for (int b = 0; b < s.B; ++b) len[b] = b == 0 ? s.n_kv : 1 + (int) ((seed * 2654435761ULL + b * 40503ULL) % s.n_kv);
    set_mask(bf, len);
    CK(cudaMemset(bf.out, 0xff, sizeof(float) * s.B * s.H * s.D));  // NaN poison
    const Params p = params(bf, bf.k, bf.v);
    if (!launch(p, s, 0)) { fprintf(stderr, "unsupported shape\n"); exit(3); }
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    std::vector<unsigned char> hk(bf.k_bytes), hv(bf.v_bytes);
    std::vector<float> hq((size_t) s.B * s.H * s.D), ho(hq.size());
    CK(cudaMemcpy(hk.data(), bf.k, bf.k_bytes, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(hv.data(), bf.v, bf.v_bytes, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(hq.data(), bf.q, hq.size() * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(ho.data(), bf.out, ho.size() * 4, cudaMemcpyDeviceToHost));
    const int G = s.H / s.Hkv;
    double worst = 0;
    std::vector<double> kr(s.D), vr(s.D), sc(s.n_kv), o(s.D);
    for (int b = 0; b < s.B; ++b)
        for (int h = 0; h < s.H; ++h) {
            const int kvh = h / G;
            const float * q = &hq[((size_t) b * s.H + h) * s.D];
            double mx = -1e300;
            for (int t = 0; t < len[b]; ++t) {
                dequant_row_host(&hk[b * bf.k_nb3 + t * bf.k_nb1 + kvh * bf.k_nb2], s.kt, s.D, kr.data());
                double d = 0;
                for (int i = 0; i < s.D; ++i) d += (double) q[i] * kr[i];
                sc[t] = d / sqrt((double) s.D);
                mx = std::max(mx, sc[t]);
            }
            double l = 0;
            std::fill(o.begin(), o.end(), 0.0);
            for (int t = 0; t < len[b]; ++t) {
                const double e = exp(sc[t] - mx);
                l += e;
                dequant_row_host(&hv[b * bf.v_nb3 + t * bf.v_nb1 + kvh * bf.v_nb2], s.vt, s.D, vr.data());
                for (int i = 0; i < s.D; ++i) o[i] += e * vr[i];
            }
            double amax = 0, emax = 0;
            for (int i = 0; i < s.D; ++i) {
                const double ref = o[i] / l, got = ho[((size_t) b * s.H + h) * s.D + i];
                amax = std::max(amax, fabs(ref));
                emax = std::isfinite(got) ? std::max(emax, fabs(got - ref)) : 1e30;
            }
            worst = std::max(worst, emax / std::max(amax, 1e-30));
        }
    release(bf);
    if (!quiet)
        printf("check B=%d H=%d Hkv=%d D=%d n_kv=%d %s/%s splits=%d chunk=%d q_scale=%g: rel err %.2e %s\n", s.B, s.H, s.Hkv,
               s.D, s.n_kv, type_name(s.kt), type_name(s.vt), bf.n_splits, bf.chunk, q_scale, worst,
               worst <= 1e-4 ? "ok" : "FAIL");
    return worst;
}

static int run_checks(bool small) {
    struct Case { Shape s; uint64_t seed; float q_scale; };
    std::vector<Case> cases;
    const KvType types[3] = {KV_F16, KV_Q8_0, KV_Q4_0};
    struct Hs { int H, Hkv, D; } heads[4] = {{32, 32, 128}, {9, 3, 64}, {8, 2, 128}, {4, 4, 64}};
    const int lens_small[6] = {1, 7, 33, 256, 300, 1000};
    const int lens_big[3] = {2048, 4097, 8192};
    uint64_t seed = 1;
    for (const KvType t : types)
        for (const Hs & hs : heads) {
            for (int li = 0; li < 6; ++li) {
                const int B = 1 + (int) (seed % 5);
                cases.push_back({Shape{B, hs.H, hs.Hkv, hs.D, lens_small[li], t, t}, seed++, 3.f});
            }
            if (small) continue;
            for (int li = 0; li < 3; ++li) cases.push_back({Shape{2, hs.H, hs.Hkv, hs.D, lens_big[li], t, t}, seed++, 3.f});
            // Large logits: the softmax must rescale (scores ~ +-60).
            cases.push_back({Shape{3, hs.H, hs.Hkv, hs.D, 777, t, t}, seed++, 60.f});
        }
    int fails = 0, n = 0;
    for (const Case & c : cases) {
        fails += check(c.s, c.seed, c.q_scale) > 1e-4;
        ++n;
    }
    printf("checks: %d/%d passed\n", n - fails, n);
    return fails;
}

static double copy_bw() {
    const size_t n = 1ULL << 30;
    char *a, *b;
    CK(cudaMalloc(&a, n));
    CK(cudaMalloc(&b, n));
    CK(cudaMemset(a, 1, n));
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0); cudaEventCreate(&e1);
    float best = 1e30f;
    for (int r = 0; r < 5; ++r) {
        cudaEventRecord(e0);
        CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice));
        cudaEventRecord(e1);
        cudaEventSynchronize(e1);
        float ms;
        cudaEventElapsedTime(&ms, e0, e1);
        best = std::min(best, ms);
    }
    cudaFree(a); cudaFree(b);
    return 2.0 * n / (best * 1e-3) / 1e9;
}

static void time_one(const Shape & s, double bw) {
    Buffers bf;
    bf.sh = s;
    layout(bf);
    const size_t per = bf.k_bytes + bf.v_bytes;
    int copies = (int) std::max<size_t>(1, (256ULL << 20) / per + 1);
    copies = std::min(copies, 64);
    while (copies > 1 && per * copies > (24ULL << 30)) --copies;
    alloc(bf, copies);
    fill(bf, copies, 7, 3.f);
    set_mask(bf, std::vector<int>(s.B, s.n_kv));
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    auto call = [&](int c) {
        const Params p = params(bf, bf.k + (size_t) c * bf.k_bytes, bf.v + (size_t) c * bf.v_bytes);
        launch(p, s, st);
    };
    for (int c = 0; c < copies; ++c) call(c);
    CK(cudaStreamSynchronize(st));
    CK(cudaGetLastError());
    const int calls = std::max(copies, 20);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0); cudaEventCreate(&e1);
    // cold: rotating over the copies (as 32 layers' caches are); hot: one copy (L2 may hold it).
    auto median_us = [&](int n_copies) {
        std::vector<float> t;
        for (int r = 0; r < 5; ++r) {
            cudaEventRecord(e0, st);
            for (int i = 0; i < calls; ++i) call(i % n_copies);
            cudaEventRecord(e1, st);
            cudaEventSynchronize(e1);
            float ms;
            cudaEventElapsedTime(&ms, e0, e1);
            t.push_back(ms * 1e3f / calls);
        }
        std::sort(t.begin(), t.end());
        return (double) t[2];
    };
    const double us = median_us(copies), hot = median_us(1);
    const double bytes = (double) per + 4.0 * s.B * s.H * s.D * 2 + 2.0 * s.B * s.n_kv;
    printf("%-5s %4d %6d %3d/%-3d %4d %6d %10.2f %8.0f %6.1f%% %8.2f %9.2f\n", type_name(s.kt), s.B, s.n_kv, s.H, s.Hkv,
           bf.n_splits, bf.chunk, us, bytes / (us * 1e-6) / 1e9, 100.0 * bytes / (us * 1e-6) / 1e9 / bw, bytes / bw / 1e3, hot);
    fflush(stdout);
    cudaStreamDestroy(st);
    release(bf);
}

int main(int argc, char ** argv) {
    bool check_only = false, small = false;
    for (int i = 1; i < argc; ++i) {
        if (!strcmp(argv[i], "--check")) check_only = true;
        if (!strcmp(argv[i], "--small")) small = true;
    }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    g_sm = prop.multiProcessorCount;
    printf("card: %s, %d SMs\n", prop.name, g_sm);
    const int fails = run_checks(small || check_only);
    if (check_only) return fails ? 1 : 0;
    const double bw = copy_bw();
    printf("D2D copy bandwidth %.0f GB/s\n", bw);
    printf("\ntype     B    ctx  H/Hkv  splits chunk    us/call     GB/s  %%copy floor_us    hot_us\n");
    const KvType types[3] = {KV_F16, KV_Q8_0, KV_Q4_0};
    const int Bs[4] = {1, 16, 64, 128};
    const int ctxs[5] = {256, 512, 1024, 2048, 4096};
    for (const KvType t : types)
        for (int b : Bs)
            for (int c : ctxs) time_one(Shape{b, 32, 32, 128, c, t, t}, bw);
    for (int b : {1, 64}) time_one(Shape{b, 9, 3, 64, 1024, KV_F16, KV_F16}, bw);
    printf("RESULT checks %s\n", fails ? "FAILED" : "passed");
    return fails ? 1 : 0;
}
