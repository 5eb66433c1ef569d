// harness_util.cuh -- what the standalone harnesses (mmv_iq4xs.cu, mmm_iq4xs.cu) share: CUDA error checks, host
// fp16, random IQ4_XS blocks on the device, a read-bandwidth probe, the event timer, the D2D copy rate, the
// normwise error and the timed shapes' record.
#pragma once
#include "mmv_iq4xs.cuh"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#define CK(x)                                                                                        \
    do {                                                                                             \
        cudaError_t e_ = (x);                                                                        \
        if (e_ != cudaSuccess) {                                                                     \
            fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, __LINE__, #x); \
            exit(2);                                                                                 \
        }                                                                                            \
    } while (0)
#define CKL() CK(cudaGetLastError())

// ------------------------------------------------------------------ host fp16
static float h2f(uint16_t h) {
    const uint32_t s = (h >> 15) & 1, e = (h >> 10) & 31, m = h & 1023;
    float v;
    if (e == 0) v = ldexpf((float)m, -24);
    else if (e == 31) v = m ? NAN : INFINITY;
    else v = ldexpf((float)(m | 1024), (int)e - 25);
    return s ? -v : v;
}
static uint16_t f2h_rne(float f) {  // host float -> fp16, round to nearest even (for ggml's fp16 d)
    __half h = __float2half_rn(f);
    uint16_t u;
    memcpy(&u, &h, 2);
    return u;
}

// ------------------------------------------------------------------ random weights on device
__device__ __forceinline__ uint64_t splitmix(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
// random valid blocks: random qs/scales bytes, d = +-2^U(-17,-9) (fp16, incl. subnormals;
// real Llama IQ4_XS d are ~1e-5..1e-3)
__global__ void gen_blocks(uint8_t *W, size_t nblocks, uint64_t seed) {
    const size_t b = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= nblocks) return;
    uint64_t *p = reinterpret_cast<uint64_t *>(W + b * airavata::IQ4XS_BYTES);
    uint64_t st = splitmix(seed ^ (b * 0x632be59bd9b4e019ull));
    const uint64_t r0 = splitmix(st);
    const float u = (float)((r0 >> 11) & 0xffffff) / 16777216.0f;
    float d = exp2f(-17.0f + 8.0f * u);
    if (r0 & 1) d = -d;
    const uint16_t dh = __half_as_ushort(__float2half_rn(d));
    const uint64_t r1 = splitmix(st + 1);
    p[0] = (uint64_t)dh | ((r1 & 0xffffull) << 16) | ((r1 >> 16) << 32);  // d, scales_h, scales_l
    for (int i = 1; i < 17; ++i) p[i] = splitmix(st + 1 + i);
}

// ------------------------------------------------------------------ bandwidth probes
__global__ void read_probe(const uint4 *__restrict__ p, size_t n, uint32_t *out) {
    uint32_t acc = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const uint4 v = __ldcs(p + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x12345678u) out[0] = acc;
}

// ------------------------------------------------------------------ timing
// Median of reps event-timed calls of fn on stream st, after warm untimed ones (ms).
struct EventTimer {
    cudaStream_t st;
    cudaEvent_t e0, e1;
    explicit EventTimer(cudaStream_t s) : st(s) {
        CK(cudaEventCreate(&e0));
        CK(cudaEventCreate(&e1));
    }
    template <typename Fn> float median_ms(Fn &&fn, int warm, int reps) {
        for (int i = 0; i < warm; ++i) fn();
        std::vector<float> t;
        for (int i = 0; i < reps; ++i) {
            CK(cudaEventRecord(e0, st));
            fn();
            CK(cudaEventRecord(e1, st));
            CK(cudaEventSynchronize(e1));
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            t.push_back(ms);
        }
        std::sort(t.begin(), t.end());
        return t[t.size() / 2];
    }
    // Per call, from `inner` calls back to back between the events (a lone call's events also time the host's
    // launch latency, several microseconds: as much as a small kernel itself); the median of reps such runs.
    template <typename Fn> float median_ms_per_call(Fn &&fn, int warm, int reps, int inner) {
        return median_ms(
                   [&] {
                       for (int i = 0; i < inner; ++i) fn();
                   },
                   warm, reps) /
               (float)inner;
    }
};
// The card's device-to-device copy rate (read + write bytes a second, GB/s) over n-byte buffers.
static double d2d_copy_gbs(EventTimer &timer, size_t n = (size_t)1 << 30) {
    void *a, *b;
    CK(cudaMalloc(&a, n));
    CK(cudaMalloc(&b, n));
    CK(cudaMemset(a, 1, n));
    CK(cudaMemset(b, 2, n));
    const float tc = timer.median_ms([&] { CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, timer.st)); }, 2, 15);
    CK(cudaFree(a));
    CK(cudaFree(b));
    return 2.0 * n / (tc * 1e-3) / 1e9;
}

// ------------------------------------------------------------------ checks
// Normwise relative error of y[0..n) against ref (NaN when ref is all zero: fails every bound); sets *nonfinite
// when y holds a NaN or an infinity.
static double rel_err(const float *y, const std::vector<double> &ref, size_t n, bool *nonfinite) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; ++i) {
        if (!std::isfinite(y[i])) *nonfinite = true;
        const double e = (double)y[i] - ref[i];
        num += e * e;
        den += ref[i] * ref[i];
    }
    return std::sqrt(num / den);
}

// A weight matrix shape the harnesses check or time.
struct Shape {
    int rows, K;
    const char *what;
};
