// mmm_iq4xs.cu -- standalone checks + timing for the IQ4_XS x many-columns fp16 tensor-core kernel in
// mmm_iq4xs.cuh (decode at batch 16..256). See NOTES.md. Build and run: run-mmm.sh.
//
//   ./mmm_iq4xs            checks (shapes x N x variants), then timing (Llama-7B shapes, N = 16..256)
//   ./mmm_iq4xs --check    checks on small shapes only (for compute-sanitizer)
//   ./mmm_iq4xs --quick    checks only
//   ./mmm_iq4xs --time-only  timing only (MMM_TIME_N=64, MMM_TIME_SHAPE=4096x4096: only that column count / shape)
//   MMM_ONLY=substring     only the variants whose name contains it (e.g. .T2., or .Za), checks and timing
//
// Checks, against references computed on the host in double:
//   * "fp16": sum_k h(W[r][k]) * h(x[n][k]) / 2^8 with h(W) = fp16(kv * fp16(2^8 * d * (ls - 32))), h(x) = fp16(x):
//     the kernel's own function up to the order of fp32 sums; bound BOUND_F16 (normwise relative);
//   * "exact": sum_k W[r][k] * x[n][k] with ggml's dequantization (f32 d * (ls - 32) * kv): reported, bound
//     BOUND_EXACT (what rounding weights and activations to fp16 may cost);
//   * every output written, nothing past the last column touched (sentinel column).
#include "mmm_iq4xs.cuh"
#include "harness_util.cuh"

#include <algorithm>
#include <array>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace airavata;

static const double BOUND_F16 = 1e-5;
static const double BOUND_EXACT = 2e-3;

struct Cfg {
    int NF, MT, WM, WN, WK, S, KS = 1;  // KS: CTAs of a cluster splitting K; 0 = mmm_cluster_splits's choice
    std::string name() const {
        char b[64];
        snprintf(b, sizeof b, "F%d.T%d.M%d.N%d.K%d.S%d.Z%s", NF, MT, WM, WN, WK, S, KS ? std::to_string(KS).c_str() : "a");
        return b;
    }
    int bm() const { return mmm_bm(MT, WM); }
    int bn() const { return mmm_bn(NF, WN); }
};
static int g_smem_optin = 0, g_sms = 0;
static int g_last_ks = 1;  // the split count of the last launch (Za variants: the heuristic's choice)

template <int NF, int MT, int WM, int WN, int WK>
static bool launch_t(int S, int KS, const uint8_t *W, const __half *xh, float *y, int nrows, int nb, int ncols,
                     cudaStream_t st) {
    constexpr int BM = mmm_bm(MT, WM), BN = mmm_bn(NF, WN), NT = 32 * WM * WN * WK;
    auto kern = mmm_iq4xs_kernel<NF, MT, WM, WN, WK>;
    const int smem = mmm_smem_bytes(NF, MT, WM, WN, WK, S);
    if (!mmm_fits_smem(NF, MT, WM, WN, WK, S, (size_t)g_smem_optin)) return false;
    static int attr = 48 * 1024;
    if (smem > attr) {
        CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        attr = smem;
    }
    const dim3 tiles((ncols + BN - 1) / BN, (nrows + BM - 1) / BM);
    if (KS == 0) {  // the card's cluster capacity is asked once per stage count (as ggml's launcher does), not
                    // inside the timing
        static int caps[8][MMM_MAX_SPLITS + 1] = {};
        int *cap = caps[S & 7];
        if (cap[1] == 0) CK(mmm_cluster_caps(kern, NT, smem, g_sms, MMM_MAX_SPLITS, cap));
        KS = mmm_cluster_splits((long long)tiles.x * tiles.y, nb, cap, MMM_MAX_SPLITS);  // an sm_90a build
    }
    g_last_ks = KS;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(tiles.x, tiles.y, KS);
    cfg.blockDim = dim3(NT);
    cfg.dynamicSmemBytes = (size_t)smem;
    cfg.stream = st;
    cudaLaunchAttribute at = mmm_cluster_attribute(KS);
    cfg.attrs = &at;
    cfg.numAttrs = KS > 1 ? 1 : 0;
    CK(cudaLaunchKernelEx(&cfg, kern, W, xh, y, nrows, nb, ncols, nrows, S));
    CKL();
    return true;
}

// false: the variant's tile does not fit this card's shared memory (a variant with no instantiation stops the run)
static bool mmm_launch(const Cfg &c, const uint8_t *W, const __half *xh, float *y, int nrows, int nb, int ncols,
                       cudaStream_t st) {
#define MMM_CASE(nf, mt, wm, wn, wk)                                                    \
    if (c.NF == nf && c.MT == mt && c.WM == wm && c.WN == wn && c.WK == wk)                \
        return launch_t<nf, mt, wm, wn, wk>(c.S, c.KS, W, xh, y, nrows, nb, ncols, st);
    // session 21's one-tile-a-warp variants (the best of each column count)
    MMM_CASE(2, 1, 1, 1, 8)
    MMM_CASE(4, 1, 2, 1, 8)
    MMM_CASE(8, 1, 4, 1, 2)
    MMM_CASE(8, 1, 2, 1, 8)
    // MT row tiles a warp, K split over a cluster
    MMM_CASE(2, 2, 4, 1, 1)
    MMM_CASE(2, 2, 4, 1, 2)
    MMM_CASE(2, 4, 2, 1, 2)
    MMM_CASE(2, 4, 4, 1, 1)
    MMM_CASE(2, 2, 2, 1, 4)
    MMM_CASE(4, 2, 4, 1, 1)
    MMM_CASE(4, 2, 4, 1, 2)
    MMM_CASE(4, 4, 2, 1, 2)
    MMM_CASE(4, 2, 2, 1, 2)
    MMM_CASE(8, 2, 4, 1, 1)
    MMM_CASE(8, 2, 4, 1, 2)
    MMM_CASE(8, 2, 2, 1, 2)
    MMM_CASE(4, 2, 4, 2, 1)
#undef MMM_CASE
    fprintf(stderr, "no kernel instantiated for variant %s (add it to mmm_launch)\n", c.name().c_str());
    exit(2);
}

static void convert_launch(const float *x, int K, int ncols, __half *xh, cudaStream_t st) {
    const size_t n = mmm_xh_elems(ncols, K);
    convert_x_f16<<<(unsigned)((n + 255) / 256), 256, 0, st>>>(x, K, K, ncols, xh);
    CKL();
}

// ------------------------------------------------------------------ host references
static float host_h(float v) {  // what convert_x_f16 makes of v, as a float
    if (std::fabs(v) > 65504.0f) v = std::copysign(65504.0f, v);
    return h2f(f2h_rne(v));
}
struct HostW {
    std::vector<float> exact, f16;  // [rows][K]
};
static HostW host_dequant(const std::vector<uint8_t> &Wh, int rows, int K) {
    const int nb = K / IQ4XS_QK;
    HostW o;
    o.exact.resize((size_t)rows * K);
    o.f16.resize((size_t)rows * K);
    for (int r = 0; r < rows; ++r)
        for (int b = 0; b < nb; ++b) {
            const uint8_t *blk = Wh.data() + ((size_t)r * nb + b) * IQ4XS_BYTES;
            uint16_t dh, sh;
            memcpy(&dh, blk, 2);
            memcpy(&sh, blk + 2, 2);
            const float d = h2f(dh);
            for (int sb = 0; sb < 8; ++sb) {
                const int ls = ((blk[4 + sb / 2] >> (4 * (sb & 1))) & 15) | (((sh >> (2 * sb)) & 3) << 4);
                const float dl = d * (float)(ls - 32);  // ggml: exact in f32
                const float dl16 = h2f(f2h_rne(dl * MMM_W_SCALE)) / MMM_W_SCALE;  // exact: powers of two
                for (int j = 0; j < 16; ++j) {
                    const uint8_t q = blk[8 + 16 * sb + j];
                    const int k0 = b * IQ4XS_QK + 32 * sb + j;
                    const int lo = kv_iq4nl(q & 15), hi = kv_iq4nl(q >> 4);
                    o.exact[(size_t)r * K + k0] = dl * (float)lo;
                    o.exact[(size_t)r * K + k0 + 16] = dl * (float)hi;
                    o.f16[(size_t)r * K + k0] = h2f(f2h_rne(dl16 * MMM_W_SCALE * (float)lo)) / MMM_W_SCALE;
                    o.f16[(size_t)r * K + k0 + 16] = h2f(f2h_rne(dl16 * MMM_W_SCALE * (float)hi)) / MMM_W_SCALE;
                }
            }
        }
    return o;
}
// ref[n][r] = sum_k w[r][k] * x[n][k] in double, threads over rows
static std::vector<double> host_gemm(const std::vector<float> &w, const std::vector<float> &x, int rows, int K,
                                     int N) {
    std::vector<double> ref((size_t)N * rows);
    const int nt = std::max(1, std::min(16, (int)std::thread::hardware_concurrency()));
    std::vector<std::thread> th;
    for (int t = 0; t < nt; ++t)
        th.emplace_back([&, t] {
            for (int r = t; r < rows; r += nt)
                for (int n = 0; n < N; ++n) {
                    double s = 0;
                    const float *wr = w.data() + (size_t)r * K, *xn = x.data() + (size_t)n * K;
                    for (int k = 0; k < K; ++k) s += (double)wr[k] * (double)xn[k];
                    ref[(size_t)n * rows + r] = s;
                }
        });
    for (auto &t : th) t.join();
    return ref;
}

int main(int argc, char **argv) {
    bool check_small = false, quick = false, time_only = false;
    for (int i = 1; i < argc; ++i) {
        if (!strcmp(argv[i], "--check")) check_small = true;
        else if (!strcmp(argv[i], "--quick")) quick = true;
        else if (!strcmp(argv[i], "--time-only")) time_only = true;  // timing without the checks (a re-run)
    }
    const char *only = getenv("MMM_ONLY");  // check and time only the variants whose name contains this
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    g_smem_optin = (int)prop.sharedMemPerBlockOptin;
    g_sms = prop.multiProcessorCount;
    printf("card: %s, %d SMs, %d KB smem/block opt-in\n", prop.name, prop.multiProcessorCount, g_smem_optin / 1024);
    cudaStream_t st;
    CK(cudaStreamCreate(&st));

    std::vector<Cfg> cfgs = {{2, 1, 1, 1, 8, 2}, {4, 1, 2, 1, 8, 3}, {8, 1, 4, 1, 2, 2}, {8, 1, 2, 1, 8, 4}};
    for (int S : {2, 3, 4})
        for (auto t : std::vector<std::array<int, 5>>{{2, 2, 4, 1, 1}, {2, 2, 4, 1, 2}, {2, 4, 2, 1, 2}, {2, 4, 4, 1, 1},
                                                       {2, 2, 2, 1, 4}, {4, 2, 4, 1, 1}, {4, 2, 4, 1, 2}, {4, 4, 2, 1, 2},
                                                       {4, 2, 2, 1, 2}, {8, 2, 4, 1, 1}, {8, 2, 4, 1, 2}, {8, 2, 2, 1, 2},
                                                       {4, 2, 4, 2, 1}})
            cfgs.push_back({t[0], t[1], t[2], t[3], t[4], S, 0});
    for (int KS : {1, 2, 3, 4, 8})  // the split count by hand, against mmm_cluster_splits's choice
        for (auto t : std::vector<std::array<int, 5>>{{2, 2, 4, 1, 2}, {8, 2, 4, 1, 2}})
            cfgs.push_back({t[0], t[1], t[2], t[3], t[4], 3, KS});

    // ---------------------------------------------------------------- checks
    std::vector<Shape> cshapes = {{16, 256, ""}, {37, 512, ""}, {64, 256, ""}, {129, 768, ""}, {200, 1024, ""}};
    if (time_only) cshapes.clear();
    std::vector<int> cNs = {1, 5, 16, 17, 33, 64, 65, 130};
    if (!check_small && !time_only) {
        cshapes.push_back({1000, 2048, ""});
        cshapes.push_back({4096, 4096, ""});
        cNs.push_back(256);
    }
    std::mt19937 rng(1234);
    int n_ok = 0, n_all = 0;
    double worst_f16 = 0, worst_exact = 0;
    for (const Shape &sh : cshapes) {
        const int nb = sh.K / IQ4XS_QK;
        const size_t wbytes = (size_t)sh.rows * nb * IQ4XS_BYTES;
        uint8_t *dW;
        CK(cudaMalloc(&dW, wbytes));  // exact size: the sanitizer sees any read past the matrix
        gen_blocks<<<(unsigned)((sh.rows * nb + 255) / 256), 256, 0, st>>>(dW, (size_t)sh.rows * nb, rng());
        CKL();
        std::vector<uint8_t> Wh(wbytes);
        CK(cudaMemcpy(Wh.data(), dW, wbytes, cudaMemcpyDeviceToHost));
        const HostW hw = host_dequant(Wh, sh.rows, sh.K);
        for (int N : cNs) {
            if (sh.rows * (size_t)sh.K * N > (size_t)2 << 30) continue;
            std::vector<float> x((size_t)N * sh.K), x16(x.size());
            std::normal_distribution<float> nd(0.f, 1.f);
            for (size_t i = 0; i < x.size(); ++i) {
                x[i] = nd(rng) * ((i % 97) == 0 ? 30.0f : 1.0f);  // a few outliers, as real activations have
                x16[i] = host_h(x[i]);
            }
            const std::vector<double> ref16 = host_gemm(hw.f16, x16, sh.rows, sh.K, N);
            const std::vector<double> refx = host_gemm(hw.exact, x, sh.rows, sh.K, N);
            float *dx, *dy;
            __half *dxh;
            CK(cudaMalloc(&dx, x.size() * 4));
            CK(cudaMalloc(&dxh, mmm_xh_elems(N, sh.K) * 2));  // exact size, as dW
            CK(cudaMalloc(&dy, (size_t)(N + 1) * sh.rows * 4));  // + a sentinel column
            CK(cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
            convert_launch(dx, sh.K, N, dxh, st);
            std::vector<float> y((size_t)(N + 1) * sh.rows);
            double case_f16 = 0, case_exact = 0;
            int case_n = 0;
            for (const Cfg &c : cfgs) {
                if (only && !strstr(c.name().c_str(), only)) continue;
                CK(cudaMemsetAsync(dy, 0xff, (size_t)(N + 1) * sh.rows * 4, st));  // NaN everywhere
                if (!mmm_launch(c, dW, dxh, dy, sh.rows, nb, N, st)) continue;
                CK(cudaStreamSynchronize(st));
                CK(cudaMemcpy(y.data(), dy, y.size() * 4, cudaMemcpyDeviceToHost));
                bool bad = false;
                const double e16 = rel_err(y.data(), ref16, ref16.size(), &bad), ex = rel_err(y.data(), refx, refx.size(), &bad);
                bool sentinel = true;
                for (int r = 0; r < sh.rows; ++r) {
                    uint32_t u;
                    memcpy(&u, &y[(size_t)N * sh.rows + r], 4);
                    sentinel &= u == 0xffffffffu;
                }
                const bool ok = !bad && sentinel && e16 <= BOUND_F16 && ex <= BOUND_EXACT;
                case_f16 = std::max(case_f16, e16);
                case_exact = std::max(case_exact, ex);
                ++case_n;
                ++n_all;
                n_ok += ok;
                if (!ok)
                    printf("check %5dx%-5d N=%-3d %-14s fp16-ref %.2e exact %.2e%s%s FAIL\n", sh.rows, sh.K, N,
                           c.name().c_str(), e16, ex, bad ? " NONFINITE" : "", sentinel ? "" : " SENTINEL-TOUCHED");
            }
            printf("check %5dx%-5d N=%-3d %2d variants: worst fp16-ref %.2e, exact %.2e\n", sh.rows, sh.K, N, case_n,
                   case_f16, case_exact);
            worst_f16 = std::max(worst_f16, case_f16);
            worst_exact = std::max(worst_exact, case_exact);
            CK(cudaFree(dx));
            CK(cudaFree(dxh));
            CK(cudaFree(dy));
        }
        CK(cudaFree(dW));
    }
    printf("checks: %d/%d passed (worst normwise error: %.2e against the fp16-input reference, bound %.0e; "
           "%.2e against ggml's exact dequantization, bound %.0e)\n",
           n_ok, n_all, worst_f16, BOUND_F16, worst_exact, BOUND_EXACT);
    if (n_ok != n_all) return 1;
    if (check_small || quick) return 0;

    // ---------------------------------------------------------------- timing
    EventTimer timer(st);
    const double copy_bw = d2d_copy_gbs(timer);
    printf("\nD2D copy %.0f GB/s\n", copy_bw);

    // Each timed run launches MMM_INNER calls back to back (each on the next weights of the pool) and counts
    // their mean: the host's launch latency overlaps the previous call, as in a CUDA graph or a busy stream.
    constexpr int MMM_INNER = 20;
    const size_t POOL = (size_t)320 << 20;  // weights rotate through > 6x the L2
    uint8_t *pool;
    CK(cudaMalloc(&pool, POOL));
    gen_blocks<<<(unsigned)((POOL / IQ4XS_BYTES + 255) / 256), 256, 0, st>>>(pool, POOL / IQ4XS_BYTES, 777);
    CKL();
    const int MAXN = 256;
    float *dx, *dy;
    __half *dxh;
    CK(cudaMalloc(&dx, (size_t)MAXN * 11008 * 4));
    CK(cudaMalloc(&dxh, mmm_xh_elems(MAXN, 11008) * 2));
    CK(cudaMalloc(&dy, (size_t)MAXN * 12288 * 4));
    {
        std::vector<float> xv((size_t)MAXN * 11008);
        std::normal_distribution<float> nd(0.f, 1.f);
        for (auto &v : xv) v = nd(rng);
        CK(cudaMemcpy(dx, xv.data(), xv.size() * 4, cudaMemcpyHostToDevice));
    }
    // the matvec (mmv_iq4xs.cuh) at 16 columns, as ggml's hook launches it there (T1.W4.U2.S1 + quantize_x_q8)
    int8_t *dxq;
    float *dxd;
    CK(cudaMalloc(&dxq, (size_t)16 * 11008));
    CK(cudaMalloc(&dxd, (size_t)11008 / 32 * 16 * 4));
    const int mmv_smem = mmv_smem_bytes(16, 1, 4, 2, 1);
    CK(cudaFuncSetAttribute(mmv_iq4xs_kernel<16, 1, 4, 2>, cudaFuncAttributeMaxDynamicSharedMemorySize, mmv_smem));

    const std::vector<Shape> tshapes = {
        {4096, 4096, "q,k,v,o"}, {11008, 4096, "gate/up"}, {4096, 11008, "down"}, {12288, 4096, "fused qkv"}};
    std::vector<int> tNs = {16, 32, 64, 128, 256};
    // MMM_TIME_N=64 / MMM_TIME_SHAPE=4096x4096: time only that column count / shape (e.g. to profile one launch)
    if (const char *e = getenv("MMM_TIME_N")) tNs = {atoi(e)};
    const char *only_shape = getenv("MMM_TIME_SHAPE");
    printf("\n%-10s %-10s %4s %-14s %9s %8s %7s %8s %9s %9s\n", "shape", "what", "N", "best", "us/call", "w GB/s",
           "%copy", "TFLOP/s", "conv_us", "mmv16_us");
    for (const Shape &sh : tshapes) {
        if (only_shape && std::to_string(sh.rows) + "x" + std::to_string(sh.K) != only_shape) continue;
        const int nb = sh.K / IQ4XS_QK;
        const size_t wbytes = (size_t)sh.rows * nb * IQ4XS_BYTES;
        const size_t stride = (wbytes + 255) & ~(size_t)255;
        const int nbuf = (int)(POOL / stride);
        for (int N : tNs) {
            int it = 0;
            const float tconv = timer.median_ms_per_call([&] { convert_launch(dx, sh.K, N, dxh, st); }, 2, 11, MMM_INNER);
            double best = 1e30;
            std::string bname;
            std::string all;
            for (const Cfg &c : cfgs) {
                if (c.bn() > 2 * N && c.bn() > 16) continue;  // a tile mostly of padding
                if (only && !strstr(c.name().c_str(), only)) continue;
                const uint8_t *Wb = pool;
                if (!mmm_launch(c, Wb, dxh, dy, sh.rows, nb, N, st)) continue;
                const float ms = timer.median_ms_per_call(
                    [&] {
                        mmm_launch(c, pool + (size_t)(it++ % nbuf) * stride, dxh, dy, sh.rows, nb, N, st);
                    },
                    2, 11, MMM_INNER);
                char b[80];
                snprintf(b, sizeof b, " %s=%.1f", c.name().c_str(), ms * 1e3);
                if (c.KS == 0) snprintf(b + strlen(b), sizeof b - strlen(b), "(z%d)", g_last_ks);
                all += b;
                if (ms * 1e3 < best) {
                    best = ms * 1e3;
                    bname = c.name();
                }
            }
            double tmmv = -1;
            if (N == 16) {
                const int ngrp = nb * 8;
                tmmv = 1e3 * timer.median_ms_per_call(
                                 [&] {
                                     quantize_x_q8<<<ngrp, 32 * mmv_xd_cols(16), 0, st>>>(dx, sh.K, sh.K, 16, dxq, dxd);
                                     mmv_iq4xs_kernel<16, 1, 4, 2><<<mmv_row_tiles(sh.rows, 1), 128, mmv_smem, st>>>(
                                         pool + (size_t)(it++ % nbuf) * stride, dxq, dxd, dy, sh.rows, nb, 1, 1);
                                 },
                                 2, 11, MMM_INNER);
            }
            const double gbs = wbytes / (best * 1e-6) / 1e9;
            printf("%5dx%-5d %-10s %4d %-14s %9.2f %8.0f %6.1f%% %8.1f %9.2f %9.2f\n", sh.rows, sh.K, sh.what, N,
                   bname.c_str(), best, gbs, 100.0 * gbs / copy_bw, 2.0 * sh.rows * sh.K * N / (best * 1e-6) / 1e12,
                   tconv * 1e3, tmmv);
            printf("  all:%s\n", all.c_str());
        }
    }
    return 0;
}
