// The body of ggml's AVX2 ggml_vec_dot_f32 and ggml_vec_dot_f16: four 8-lane
// FMA accumulators over chunks of 32, then GGML_F32x8_REDUCE's tree.  Shared
// so that F32 weights (legacy.cpp) and the F16 K cache (attention.cpp) round
// exactly as llama.cpp's kernels do; the callers add ggml's tails.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace ll {
namespace {

// Sum of a[i] * b[i] over i < (n & ~31); load_a(i) gives a[i..i+7] as floats.
template <class LoadA>
inline float ggml_vec_dot_chunks(int64_t n, LoadA load_a, const float* b) {
    const int64_t np = n & ~int64_t(31);
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (int64_t i = 0; i < np; i += 32) {
        s0 = _mm256_fmadd_ps(load_a(i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(load_a(i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(load_a(i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(load_a(i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    const __m256 x = _mm256_add_ps(_mm256_add_ps(s0, s2), _mm256_add_ps(s1, s3));
    const __m128 t0 = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    const __m128 t1 = _mm_hadd_ps(t0, t0);
    return _mm_cvtss_f32(_mm_hadd_ps(t1, t1));
}

}  // namespace
}  // namespace ll
