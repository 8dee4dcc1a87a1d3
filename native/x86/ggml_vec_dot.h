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
// ggml_vec_dot_lanes stops before the horizontal sum: the 16 lanes' vector
// with its halves added (hsum_ggml of it is the sum), for callers that sum
// several at once (hsum8_ggml).
template <class LoadA>
inline __m256 ggml_vec_dot_lanes(int64_t n, LoadA load_a, const float* b) {
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
    return _mm256_add_ps(x[0], x[1]);
}

template <class LoadA>
inline float ggml_vec_dot_chunks(int64_t n, LoadA load_a, const float* b) {
    return hsum_ggml(ggml_vec_dot_lanes(n, load_a, b));
}

// hsum_ggml of eight vectors at once, the sums in order: the same pairs of
// lanes added (l and l + 4, then l and l + 2, then 0 and 1), by shuffles
// that keep eight sums in flight instead of one.
inline __m256 hsum8_ggml(const __m256* y) {
    __m256 z[4];  // z[p]: cell 2p's four sums in the low 128 bits, cell 2p + 1's in the high
    for (int p = 0; p < 4; p++)
        z[p] = _mm256_add_ps(_mm256_permute2f128_ps(y[2 * p], y[2 * p + 1], 0x31), _mm256_permute2f128_ps(y[2 * p], y[2 * p + 1], 0x20));
    __m256 r[2];  // per 128 bits: [A0+A2, A1+A3, B0+B2, B1+B3]
    for (int p = 0; p < 2; p++)
        r[p] = _mm256_add_ps(_mm256_shuffle_ps(z[2 * p], z[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm256_shuffle_ps(z[2 * p], z[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    const __m256 t = _mm256_add_ps(_mm256_shuffle_ps(r[0], r[1], _MM_SHUFFLE(2, 0, 2, 0)), _mm256_shuffle_ps(r[0], r[1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm256_permutevar8x32_ps(t, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));  // t: cells 0 2 4 6 | 1 3 5 7
}

}  // namespace
}  // namespace ll
