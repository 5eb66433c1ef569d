#!/usr/bin/env python3
"""Adds the cases of airavata's CUDA kernels to llama.cpp's tests/test-backend-ops.cpp (in place, idempotent).

Each set sits behind its own environment variable, so a plain run keeps llama.cpp's own cases:
  AIRAVATA_FA_EVAL=1|small  FLASH_ATTN_EXT at our decode-attention shapes (issue 24)
  AIRAVATA_MM_EVAL=1|small  MUL_MAT IQ4_XS at 1-257 columns on Llama-7B shapes (issue 23)
`small` keeps the short ones, for compute-sanitizer. Used by scripts/gpu-bench.sh (attnops, mmops, sanitize);
tests/cuda_patches.rs checks that the result compiles against the pinned source.
"""
import sys
p = sys.argv[1]
s = open(p).read()
anchor = "static std::vector<std::unique_ptr<test_case>> make_test_cases_eval() {\n    std::vector<std::unique_ptr<test_case>> test_cases;\n"
assert anchor in s, "make_test_cases_eval not found"
fa = """
    if (getenv("AIRAVATA_FA_EVAL")) {  // issue 24: shapes of airavata's decode attention (scripts/gpu-bench.sh attnops)
        // AIRAVATA_FA_EVAL=small: the short caches only (for compute-sanitizer, gpu-bench.sh sanitize)
        const bool small = strcmp(getenv("AIRAVATA_FA_EVAL"), "small") == 0;
        const ggml_type q8 = GGML_TYPE_Q8_0, f16 = GGML_TYPE_F16;
        for (bool mask : {true, false}) {
            for (int64_t b : {16, 17, 64}) {
                for (int64_t kv : {1, 7, 256, 1000, 4096}) {
                    if (small && (b == 64 || kv > 256)) continue;
                    // 4096 cached tokens at 16 sequences only: the CPU backend's random fill of a K/V cache view
                    // at 64 x 4096 x 32 heads (2 GB each) took most of the ~4.5 minutes a run took
                    if (kv == 4096 && b != 16) continue;
                    test_cases.emplace_back(new test_flash_attn_ext(128, 128, 32, {1, b}, kv, 1, mask, false, 0, 0, GGML_PREC_F32, q8, q8));
                }
            }
            for (int64_t b : {16, 33}) {
                for (int64_t kv : {1, 100, 1024, 2500}) {
                    if (small && kv > 100) continue;
                    test_cases.emplace_back(new test_flash_attn_ext(64, 64, 3, {3, b}, kv, 1, mask, false, 0, 0, GGML_PREC_F32, q8, q8));
                }
            }
        }
        test_cases.emplace_back(new test_flash_attn_ext(128, 128, 32, {1, 16}, 512, 1, true, false, 0, 0, GGML_PREC_F32, q8, q8, {0, 1, 2, 3}, false));
        test_cases.emplace_back(new test_flash_attn_ext(128, 128, 32, {1, 16}, 512, 2, true, false, 0, 0, GGML_PREC_F32, q8, q8));
        test_cases.emplace_back(new test_flash_attn_ext(128, 128, 32, {1, 8}, 512, 1, true, false, 0, 0, GGML_PREC_F32, q8, q8));
        test_cases.emplace_back(new test_flash_attn_ext(128, 128, 32, {1, 64}, 1024, 1, true, false, 0, 0, GGML_PREC_F32, f16, f16));
        return test_cases;
    }
"""
mm = """
    if (getenv("AIRAVATA_MM_EVAL")) {  // issue 23: shapes of airavata's IQ4_XS matvec (scripts/gpu-bench.sh mmops)
        // AIRAVATA_MM_EVAL=small: the small shapes and the odd row count only (for compute-sanitizer)
        const bool small = strcmp(getenv("AIRAVATA_MM_EVAL"), "small") == 0;
        const ggml_type iq = GGML_TYPE_IQ4_XS, f32 = GGML_TYPE_F32;
        const int64_t mk[][2] = {{16, 256}, {33, 512}, {4096, 4096}, {4099, 4096}, {11008, 4096}, {4096, 11008}, {12288, 4096}};
        for (const auto & s : mk) {
            if (small && s[0] != 16 && s[0] != 33 && s[0] != 4099) continue;
            // ours: the matvec at 4-8 (up to 16 with AIRAVATA_MMV_MAX_COLS), the many-column kernel at 17-256
            for (int64_t n : {1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 17, 31, 33, 64, 65, 130, 256, 257}) {
                if (small && n > 65) continue;
                test_cases.emplace_back(new test_mul_mat(iq, f32, s[0], n, s[1], {1, 1}, {1, 1}));
            }
        }
        // weights and activations as views with a longer row stride (k_v, a multiple of 256 for IQ4_XS rows), and a
        // batch of two matrices: ours takes neither (packed weights, one matrix) and must leave them to ggml
        test_cases.emplace_back(new test_mul_mat(iq, f32, 4096, 8, 4096, {1, 1}, {1, 1}, {0, 1, 2, 3}, 4352));
        test_cases.emplace_back(new test_mul_mat(iq, f32, 4096, 6, 4096, {1, 1}, {1, 1}, {0, 1, 2, 3}, 4608));
        test_cases.emplace_back(new test_mul_mat(iq, f32, 4096, 64, 4096, {1, 1}, {1, 1}, {0, 1, 2, 3}, 4352));
        test_cases.emplace_back(new test_mul_mat(iq, f32, 512, 8, 1024, {2, 1}, {1, 1}));
        return test_cases;
    }
"""
for marker, block in (("AIRAVATA_FA_EVAL", fa), ("AIRAVATA_MM_EVAL", mm)):
    if marker not in s:
        s = s.replace(anchor, anchor + block, 1)
open(p, "w").write(s)
