// The one run-time switch of airavata's CUDA kernels inside ggml-cuda (vendor/airavata-cuda/NOTES.md).
// AIRAVATA_CUDA_KERNELS=ours turns them on (opt-in until verified end to end on a GPU); unset or `stock`,
// llama.cpp's kernels run for every shape. Read once per process.
// AIRAVATA_CUDA_KERNELS_VERBOSE=1 also prints, once per kernel and shape, when one of ours runs (for the
// op-level checks, which must know that our kernel, not a fallback, was compared).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <string>

inline bool airavata_kernels_on() {
    static const bool on = [] {
        const char * e = getenv("AIRAVATA_CUDA_KERNELS");
        return e != nullptr && strcmp(e, "ours") == 0;
    }();
    return on;
}

// describe: a callable giving the shape as a std::string, called only when verbose (the launch path of every
// matmul comes here, so the quiet case builds no strings).
template <typename Describe> inline void airavata_kernel_ran(const char * kernel, Describe && describe) {
    static const bool verbose = getenv("AIRAVATA_CUDA_KERNELS_VERBOSE") != nullptr;
    if (!verbose) {
        return;
    }
    const std::string shape = describe();
    static std::mutex mu;
    static std::set<std::string> seen;
    const std::lock_guard<std::mutex> lock(mu);
    if (seen.insert(std::string(kernel) + " " + shape).second) {
        fprintf(stderr, "airavata: %s ran for %s\n", kernel, shape.c_str());
    }
}
