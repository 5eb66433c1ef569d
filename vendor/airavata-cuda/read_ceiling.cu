// read_ceiling.cu -- how fast can ONE kernel read a matmul-sized weight matrix (9-27 MB), called back to back?
//
// Issue 23 asks the B = 1-8 matvec to stream its weights at >= 75 % of bandwidth. On an H200 (session 20) every
// matvec we have -- ours v2, ours v3, llama.cpp's mmvq -- reaches only 30-39 % of the copy rate on these sizes in
// the harness, and v2's load path alone (decode off) 54 %. This program measures the ceiling the decode has to
// live under: a kernel that does nothing but read the bytes (16-byte ld.global.nc, U loads in flight per thread),
// over the matvec harness's sizes and method (one CUDA graph of one call per buffer, rotating over a >= 320 MB
// pool so nothing is served from L2; median of 21 replays), in two launch modes:
//   plain: stream order; each call starts after the previous one has drained (the harness's matvec timing);
//   pdl:   programmatic dependent launch, as ggml-cuda launches kernels on Hopper: every CTA signals
//          launch_dependents at its start, issues its loads, and only then waits on the previous call
//          (griddepcontrol.wait) before its (never taken) store -- the shape a matvec takes when it fetches
//          weights before the activations exist. The next call's loads overlap this call's tail.
// Grids: "wave" = the resident CTAs (SMs x occupancy), each looping over its share; "pass" = enough CTAs that
// each thread makes exactly one pass of U loads (llama.cpp's mmvq style: many short CTAs).
//
// Build (seconds):  nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -o read_ceiling read_ceiling.cu
// Run:              ./read_ceiling            (full table, ~20 s)
//                   ./read_ceiling --check    (tiny sizes, every config once, verifies the sum; for compute-sanitizer)
#include <cuda_runtime.h>
#include <stdint.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#define CK(x)                                                                                                  \
    do {                                                                                                       \
        cudaError_t e_ = (x);                                                                                  \
        if (e_ != cudaSuccess) {                                                                               \
            fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, __LINE__, #x); \
            exit(2);                                                                                           \
        }                                                                                                      \
    } while (0)

__device__ __forceinline__ void dep_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void dep_launch() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Reads n16 16-byte words of buf: thread t of the grid takes words t + k*T (T = all threads), U at a time.
// Each thread XORs everything it read. Timing (write_all = 0): the XOR is stored only if it equals `never`, a
// value the caller does not expect the data to give, so the store is (almost) never taken but the loads cannot be
// dropped. --check (write_all = 1): every thread stores its XOR and the host compares the total with its own.
// __launch_bounds__(256, 1): with a bare (256) ptxas aims at full occupancy (32 registers) and, at U = 8, XORs each
// word as soon as it arrives to reuse its registers, so only 4 loads are in flight (SASS, nvcc 13.0); asking for
// one CTA per SM at least lets it issue all 8 first (48 registers, still 5 CTAs per SM).
template <int U>
__global__ void __launch_bounds__(256, 1) read_kernel(const uint4 *__restrict__ buf, size_t n16, uint32_t *sink,
                                                   uint32_t never, int write_all) {
    dep_launch();  // with PDL the next call may start now; without it this is a no-op
    const size_t T = (size_t)gridDim.x * blockDim.x;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    uint32_t acc = 0;
    for (; i + (size_t)(U - 1) * T < n16; i += (size_t)U * T) {
        uint4 v[U];
#pragma unroll
        for (int k = 0; k < U; ++k) v[k] = __ldg(buf + i + (size_t)k * T);
#pragma unroll
        for (int k = 0; k < U; ++k) acc ^= v[k].x ^ v[k].y ^ v[k].z ^ v[k].w;
    }
    for (; i < n16; i += T) {  // the last partial round
        const uint4 v = __ldg(buf + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    dep_wait();  // a matvec would read its activations here
    const size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (write_all) sink[tid] = acc;
    else if (acc == never) sink[0] = acc;
}

__global__ void fill_kernel(uint32_t *p, size_t n, uint32_t seed) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t z = (uint32_t)i * 2654435761u ^ seed;
        z ^= z >> 15;
        z *= 2246822519u;
        z ^= z >> 13;
        p[i] = z;
    }
}

struct Cfg {
    int U;         // 16-byte loads in flight per thread
    bool wave;     // resident-CTA grid (true) or one pass per thread (false)
    bool pdl;      // programmatic dependent launch between calls
};

typedef void (*KernelFn)(const uint4 *, size_t, uint32_t *, uint32_t, int);
static KernelFn kernel_for(int U) {
    switch (U) {
        case 1: return read_kernel<1>;
        case 2: return read_kernel<2>;
        case 4: return read_kernel<4>;
        case 8: return read_kernel<8>;
        default: fprintf(stderr, "U=%d not built\n", U); exit(2);
    }
}

static int g_sms = 0;
static int grid_for(const Cfg &c, size_t n16) {
    const KernelFn k = kernel_for(c.U);
    if (c.wave) {
        int per_sm = 0;
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, 256, 0));
        return std::max(1, per_sm) * g_sms;
    }
    const size_t per_block = (size_t)256 * c.U;
    const size_t g = (n16 + per_block - 1) / per_block;
    return (int)std::min<size_t>(std::max<size_t>(g, 1), (size_t)INT32_MAX);
}

static void launch(const Cfg &c, const uint4 *buf, size_t n16, uint32_t *sink, int write_all, cudaStream_t st) {
    const KernelFn k = kernel_for(c.U);
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)grid_for(c, n16));
    cfg.blockDim = dim3(256);
    cfg.dynamicSmemBytes = 0;
    cfg.stream = st;
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = c.pdl ? &attr : nullptr;
    cfg.numAttrs = c.pdl ? 1 : 0;
    CK(cudaLaunchKernelEx(&cfg, k, buf, n16, sink, 0xdeadbeefu, write_all));
}

static float median(std::vector<float> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

int main(int argc, char **argv) {
    const bool check = argc > 1 && !strcmp(argv[1], "--check");
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    g_sms = prop.multiProcessorCount;
    printf("device: %s, %d SMs, L2 %d MB\n", prop.name, g_sms, prop.l2CacheSize >> 20);
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));

    std::vector<Cfg> cfgs;
    for (int U : {1, 2, 4, 8})
        for (bool wave : {false, true})
            for (bool pdl : {false, true}) cfgs.push_back({U, wave, pdl});

    if (check) {
        // every config once on small odd sizes; each thread's XOR lands in sink and the host checks the total
        int fails = 0;
        for (size_t bytes : {(size_t)16 * 1000 + 16 * 7, (size_t)1 << 20, (size_t)3 * 1000 * 1000 + 16 * 3}) {
            const size_t n16 = bytes / 16;
            uint32_t *buf;
            CK(cudaMalloc(&buf, n16 * 16));
            fill_kernel<<<256, 256, 0, st>>>(buf, n16 * 4, 12345u);
            std::vector<uint32_t> h(n16 * 4);
            CK(cudaMemcpyAsync(h.data(), buf, n16 * 16, cudaMemcpyDeviceToHost, st));
            CK(cudaStreamSynchronize(st));
            uint32_t want = 0;
            for (uint32_t x : h) want ^= x;
            for (const Cfg &c : cfgs) {
                const int grid = grid_for(c, n16);
                const size_t threads = (size_t)grid * 256;
                uint32_t *sink;
                CK(cudaMalloc(&sink, threads * 4));
                launch(c, (const uint4 *)buf, n16, sink, 1, st);
                std::vector<uint32_t> s(threads);
                CK(cudaMemcpyAsync(s.data(), sink, threads * 4, cudaMemcpyDeviceToHost, st));
                CK(cudaStreamSynchronize(st));
                uint32_t got = 0;
                for (uint32_t x : s) got ^= x;
                if (got != want) {
                    ++fails;
                    printf("FAIL %zu bytes U=%d %s %s: xor %08x, expected %08x\n", bytes, c.U, c.wave ? "wave" : "pass",
                           c.pdl ? "pdl" : "plain", got, want);
                }
                CK(cudaFree(sink));
            }
            CK(cudaFree(buf));
        }
        printf("checks: %s (%zu configs x 3 sizes)\n", fails ? "FAILED" : "passed", cfgs.size());
        return fails ? 1 : 0;
    }

    // sizes: the matvec harness's weight matrices (IQ4_XS bytes) and a 256 MiB stream for the card's rate
    struct Size {
        size_t bytes;
        const char *what;
    };
    // rows x (K / 256) blocks of 136 bytes
    const Size sizes[] = {{(size_t)4096 * (4096 / 256) * 136, "4096x4096 (8.9 MB)"},
                          {(size_t)11008 * (4096 / 256) * 136, "11008x4096 (24.0 MB)"},
                          {(size_t)12288 * (4096 / 256) * 136, "12288x4096 (26.7 MB)"},
                          {(size_t)256 << 20, "256 MiB stream"}};
    uint32_t *sink;
    CK(cudaMalloc(&sink, 1 << 20));
    const size_t pool_bytes = (size_t)320 << 20;
    printf("(us per call: one graph of calls, one per buffer, rotating over >= 320 MB; median of 21 replays)\n");
    printf("%-22s %-3s %-5s %-6s %10s %9s\n", "size", "U", "grid", "launch", "us/call", "GB/s");
    for (const Size &sz : sizes) {
        const size_t n16 = sz.bytes / 16, bytes = n16 * 16;
        const int nbuf = (int)std::max<size_t>(2, (pool_bytes + bytes - 1) / bytes);
        std::vector<uint32_t *> bufs(nbuf);
        for (auto &b : bufs) {
            CK(cudaMalloc(&b, bytes));
            fill_kernel<<<1024, 256, 0, st>>>(b, bytes / 4, 777u);
        }
        CK(cudaStreamSynchronize(st));
        for (const Cfg &c : cfgs) {
            cudaGraph_t gr;
            cudaGraphExec_t ge;
            CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
            for (uint32_t *b : bufs) launch(c, (const uint4 *)b, n16, sink, 0, st);
            CK(cudaStreamEndCapture(st, &gr));
            CK(cudaGraphInstantiate(&ge, gr, 0));
            cudaEvent_t e0, e1;
            CK(cudaEventCreate(&e0));
            CK(cudaEventCreate(&e1));
            for (int w = 0; w < 3; ++w) CK(cudaGraphLaunch(ge, st));
            std::vector<float> ms;
            for (int r = 0; r < 21; ++r) {
                CK(cudaEventRecord(e0, st));
                CK(cudaGraphLaunch(ge, st));
                CK(cudaEventRecord(e1, st));
                CK(cudaEventSynchronize(e1));
                float m = 0;
                CK(cudaEventElapsedTime(&m, e0, e1));
                ms.push_back(m);
            }
            const double us = median(ms) * 1e3 / nbuf;
            printf("%-22s %-3d %-5s %-6s %10.2f %9.0f\n", sz.what, c.U, c.wave ? "wave" : "pass",
                   c.pdl ? "pdl" : "plain", us, bytes / us / 1e3);
            CK(cudaEventDestroy(e0));
            CK(cudaEventDestroy(e1));
            CK(cudaGraphExecDestroy(ge));
            CK(cudaGraphDestroy(gr));
        }
        for (auto &b : bufs) CK(cudaFree(b));
    }
    CK(cudaFree(sink));
    return 0;
}
