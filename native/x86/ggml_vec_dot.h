// ggml's float reductions as llama.cpp's AVX-512 build compiles them (the
// build that wrote the reference logits; see ggml_math.h): 16 lanes, held as
// two __m256 halves.  Lane-wise FMAs and adds round exactly as the 512-bit
// instructions do, so the avx2 and avx512 objects share this code and give
// the same floats on every x86 CPU (the avx512 objects' only AVX-512
// instructions are the VNNI ones of int_macc.h).
#pragma once

#include <immintrin.h>

#include <cstdint>

#if 1
#define LL_GGML_LANES 16
#else
#define LL_GGML_LANES 8
#endif

namespace ll {
namespace {

constexpr int GGML_LANES = 16;
constexpr int GGML_HALVES = 2;  // __m256 per ggml vector

// ggml's 256-bit horizontal add (hsum): (v0+v4 + v2+v6) + (v1+v5 + v3+v7).
inline float hsum_ggml(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// Horizontal sum of one 16-lane vector as _mm512_reduce_add_ps: the two
// halves added, then hsum's tree.
inline float hsum_lanes(const __m256* v) { return hsum_ggml(_mm256_add_ps(v[0], v[1])); }

// The body of ggml_vec_dot_f32 and ggml_vec_dot_f16: the sum of a[i] * b[i]
// over i < (n & ~(4L - 1)) in four L-lane FMA accumulators, then
// GGML_F32_VEC_REDUCE's tree; load_a(i) gives a[i..i+7] as floats.  Shared so
// that F32 weights (legacy.cpp) and the F16 K cache (attention.cpp) round
// exactly as llama.cpp's kernels do; the callers add ggml's tails.
template <class LoadA>
inline float ggml_vec_dot_chunks(int64_t n, LoadA load_a, const float* b) {
    constexpr int STEP = 4 * GGML_LANES;
    const int64_t np = n & ~int64_t(STEP - 1);
    __m256 s[4][GGML_HALVES];
    for (auto& acc : s)
        for (auto& h : acc) h = _mm256_setzero_ps();
    for (int64_t i = 0; i < np; i += STEP)
        for (int a = 0; a < 4; a++)
            for (int h = 0; h < GGML_HALVES; h++) {
                const int64_t at = i + a * GGML_LANES + h * 8;
                s[a][h] = _mm256_fmadd_ps(load_a(at), _mm256_loadu_ps(b + at), s[a][h]);
            }
    __m256 x[GGML_HALVES];
    for (int h = 0; h < GGML_HALVES; h++) x[h] = _mm256_add_ps(_mm256_add_ps(s[0][h], s[2][h]), _mm256_add_ps(s[1][h], s[3][h]));
    return hsum_lanes(x);
}

}  // namespace
}  // namespace ll
