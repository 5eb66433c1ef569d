// baseline_ggml.cu -- llama.cpp's own IQ4_XS matrix-vector path (quantize_row_q8_1_cuda +
// mul_mat_vec_q<GGML_TYPE_IQ4_XS, ncols_dst>) compiled from the pinned source in
// vendor/llama.cpp (b11434), so the harness can time it on the same card, same buffers.
// Only built when vendor/llama.cpp/ggml is present (build-and-run.sh).  The few ggml
// host symbols these files reference are stubbed below; the rest of ggml is not linked.
#include "common.cuh"
#include "mmvq.cu"
#include "quantize.cu"

#include <cstdarg>

// ---- stubs for ggml symbols (normally in ggml-base / ggml-cuda.cu)
static ggml_cuda_device_info make_info() {
    ggml_cuda_device_info info{};
    int n = 0;
    cudaGetDeviceCount(&n);
    info.device_count = n;
    for (int id = 0; id < n && id < GGML_CUDA_MAX_DEVICES; ++id) {
        cudaDeviceProp p;
        cudaGetDeviceProperties(&p, id);
        info.devices[id].nsm = p.multiProcessorCount;
        info.devices[id].smpb = p.sharedMemPerBlock;
        info.devices[id].smpbo = p.sharedMemPerBlockOptin;
        info.devices[id].warp_size = p.warpSize;
        info.devices[id].cc = 100 * p.major + 10 * p.minor;
    }
    return info;
}
const ggml_cuda_device_info &ggml_cuda_info() {
    static ggml_cuda_device_info info = make_info();
    return info;
}
int ggml_cuda_get_device() {
    int id = 0;
    cudaGetDevice(&id);
    return id;
}
extern "C" void ggml_abort(const char *file, int line, const char *fmt, ...) {
    fprintf(stderr, "ggml_abort %s:%d: ", file, line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    abort();
}
extern "C" int64_t ggml_blck_size(enum ggml_type type) { return type == GGML_TYPE_IQ4_XS ? QK_K : 1; }
void ggml_cuda_error(const char *stmt, const char *func, const char *file, int line, const char *msg) {
    fprintf(stderr, "ggml CUDA error: %s in %s at %s:%d: %s\n", msg, func, file, line, stmt);
    abort();
}
void ggml_cuda_set_device(int device) { cudaSetDevice(device); }
// referenced only by ggml_cuda_mul_mat_vec_q / ggml_cuda_should_use_mmvq, which the harness never calls
#define STUB_ABORT(...) { fprintf(stderr, "ggml stub called\n"); abort(); }
std::unique_ptr<ggml_cuda_pool> ggml_backend_cuda_context::new_pool_for_device(int, int) STUB_ABORT()
extern "C" {
bool ggml_are_same_shape(const struct ggml_tensor *, const struct ggml_tensor *) STUB_ABORT()
bool ggml_are_same_stride(const struct ggml_tensor *, const struct ggml_tensor *) STUB_ABORT()
size_t ggml_backend_buffer_get_alloc_size(ggml_backend_buffer_t, const struct ggml_tensor *) STUB_ABORT()
enum ggml_backend_buffer_usage ggml_backend_buffer_get_usage(ggml_backend_buffer_t) STUB_ABORT()
bool ggml_is_contiguous(const struct ggml_tensor *) STUB_ABORT()
bool ggml_is_contiguously_allocated(const struct ggml_tensor *) STUB_ABORT()
bool ggml_is_matrix(const struct ggml_tensor *) STUB_ABORT()
bool ggml_is_quantized(enum ggml_type) STUB_ABORT()
size_t ggml_nbytes(const struct ggml_tensor *) STUB_ABORT()
int64_t ggml_nelements(const struct ggml_tensor *) STUB_ABORT()
size_t ggml_type_size(enum ggml_type) STUB_ABORT()
}

// ---- entry points used by mmv_iq4xs.cu
bool ggml_baseline_available() { return true; }
size_t ggml_baseline_vy_bytes(int K, int N) {
    const int64_t Kp = GGML_PAD(K, MATRIX_ROW_PADDING);
    return (size_t)N * Kp / QK8_1 * sizeof(block_q8_1);
}
void ggml_baseline_quantize(const float *x, void *vy, int K, int N, cudaStream_t st) {
    const int64_t Kp = GGML_PAD(K, MATRIX_ROW_PADDING);
    quantize_row_q8_1_cuda(x, nullptr, vy, GGML_TYPE_IQ4_XS, K, /*s11*/ K, /*s12*/ (int64_t)K * N,
                           /*s13*/ (int64_t)K * N, Kp, N, 1, 1, st);
}
void ggml_baseline_mmvq(const void *W, const void *vy, float *y, int nrows, int K, int N, cudaStream_t st) {
    const int64_t Kp = GGML_PAD(K, MATRIX_ROW_PADDING);
    const int s01 = K / QK_K;    // row stride of W in blocks
    const int s11 = Kp / QK8_1;  // column stride of vy in q8_1 blocks
    const int s1 = nrows;        // column stride of y
    ggml_cuda_mm_fusion_args_device fusion{};
    mul_mat_vec_q_switch_ncols_dst<GGML_TYPE_IQ4_XS>(W, vy, nullptr, fusion, y, K, nrows, N, s01, s11, s1,
                                                     /*nchannels_x*/ 1, /*nchannels_y*/ 1, /*nchannels_dst*/ 1,
                                                     /*stride_channel_x*/ s01 * nrows, /*stride_channel_y*/ s11 * N,
                                                     /*stride_channel_dst*/ s1 * N, /*nsamples_x*/ 1,
                                                     /*nsamples_dst*/ 1, /*stride_sample_x*/ s01 * nrows,
                                                     /*stride_sample_y*/ s11 * N, /*stride_sample_dst*/ s1 * N,
                                                     /*ids_stride*/ 0, st);
}
