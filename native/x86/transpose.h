// Weight rows side by side in registers, one row per int32 lane: the loads
// and transposes of the batch tiles that multiply a whole block of rows by
// one broadcast activation dword per instruction (repack.cpp's Q4_0 tile,
// tiles.cpp), leaving each row's exact sum in its own lane where a row-major
// kernel spends a horizontal reduction per row and token; and the 4x4
// transpose that turns repack.cpp's per-row gemm sums into per-lane chains.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "common.h"

// The avx512 build uses 512-bit registers (SIMDe's emulated VNNI build keeps
// the 256-bit code).
#if defined(__AVX512F__) && defined(__AVX512VNNI__) && !defined(LL_VNNI_EMULATED)
#define LL_ZMM 1
#else
#define LL_ZMM 0
#endif

namespace ll {
namespace {

// 4x4 transpose of int32 lanes: out[g] = [in0[g], in1[g], in2[g], in3[g]]
LL_INLINE void transpose4(const __m128i in[4], __m128i out[4]) {
    const __m128i t0 = _mm_unpacklo_epi32(in[0], in[1]), t1 = _mm_unpackhi_epi32(in[0], in[1]);
    const __m128i t2 = _mm_unpacklo_epi32(in[2], in[3]), t3 = _mm_unpackhi_epi32(in[2], in[3]);
    out[0] = _mm_unpacklo_epi64(t0, t2);
    out[1] = _mm_unpackhi_epi64(t0, t2);
    out[2] = _mm_unpacklo_epi64(t1, t3);
    out[3] = _mm_unpackhi_epi64(t1, t3);
}

#if LL_ZMM
// The 16 bytes at p + j * step in 128-bit lane j: four rows side by side.
LL_INLINE __m512i rows4_128(const uint8_t* p, size_t step) {
    __m512i v = _mm512_castsi128_si512(loadu128(p));
    v = _mm512_inserti32x4(v, loadu128(p + step), 1);
    v = _mm512_inserti32x4(v, loadu128(p + 2 * step), 2);
    return _mm512_inserti32x4(v, loadu128(p + 3 * step), 3);
}

// In-lane 4x4 transposes of int32: int32 q of out[m], lane j = int32 m of v[q], lane j.
// With v[q] = rows4_128(p + q * stride, 4 * stride), int32 4j + q of out[m]
// is dword m of row 4j + q: one row per int32 lane, in order.
LL_INLINE void transpose_lanes4x4(const __m512i v[4], __m512i out[4]) {
    const __m512i a0 = _mm512_unpacklo_epi32(v[0], v[1]), a1 = _mm512_unpackhi_epi32(v[0], v[1]);
    const __m512i a2 = _mm512_unpacklo_epi32(v[2], v[3]), a3 = _mm512_unpackhi_epi32(v[2], v[3]);
    out[0] = _mm512_unpacklo_epi64(a0, a2);
    out[1] = _mm512_unpackhi_epi64(a0, a2);
    out[2] = _mm512_unpacklo_epi64(a1, a3);
    out[3] = _mm512_unpackhi_epi64(a1, a3);
}

// ggml's horizontal sum of a row's eight float lanes (hsum_ggml), for sixteen
// rows at once: acc[j], lane l holds row l's lane j.  Lanes j + (j + 4), then
// (0 + 2) and (1 + 3), then those two.
LL_INLINE __m512 hsum_lane_registers(const __m512* acc) {
    const __m512 h0 = _mm512_add_ps(acc[4], acc[0]), h1 = _mm512_add_ps(acc[5], acc[1]);
    const __m512 h2 = _mm512_add_ps(acc[6], acc[2]), h3 = _mm512_add_ps(acc[7], acc[3]);
    return _mm512_add_ps(_mm512_add_ps(h0, h2), _mm512_add_ps(h1, h3));
}

// The fp16 at p + r * stride for rows r = 0..15, as 16 floats.
inline __m512 halves16(const uint8_t* p, size_t stride) {
    uint64_t h[4] = {0, 0, 0, 0};
#pragma GCC unroll 16
    for (int r = 0; r < 16; r++) h[r / 4] |= (uint64_t)load_u16(p + r * stride) << (16 * (r % 4));
    return _mm512_cvtph_ps(_mm256_setr_epi64x((long long)h[0], (long long)h[1], (long long)h[2], (long long)h[3]));
}
#else
// 8x8 transpose of int32: int32 r of out[m] = int32 m of v[r].  With v[r]
// the 32 bytes of row r, out[m] holds dword m of every row, one per lane.
LL_INLINE void transpose8x8(const __m256i v[8], __m256i out[8]) {
    __m256i t[8], u[8];
    for (int k = 0; k < 8; k += 2) {
        t[k] = _mm256_unpacklo_epi32(v[k], v[k + 1]);
        t[k + 1] = _mm256_unpackhi_epi32(v[k], v[k + 1]);
    }
    for (int k = 0; k < 8; k += 4) {
        u[k] = _mm256_unpacklo_epi64(t[k], t[k + 2]);
        u[k + 1] = _mm256_unpackhi_epi64(t[k], t[k + 2]);
        u[k + 2] = _mm256_unpacklo_epi64(t[k + 1], t[k + 3]);
        u[k + 3] = _mm256_unpackhi_epi64(t[k + 1], t[k + 3]);
    }
    for (int m = 0; m < 4; m++) {
        out[m] = _mm256_permute2x128_si256(u[m], u[m + 4], 0x20);
        out[m + 4] = _mm256_permute2x128_si256(u[m], u[m + 4], 0x31);
    }
}

// The fp16 at p + r * stride for rows r = 0..7, as 8 floats.
inline __m256 halves8_rows(const uint8_t* p, size_t stride) {
    uint64_t h[2] = {0, 0};
#pragma GCC unroll 8
    for (int r = 0; r < 8; r++) h[r / 4] |= (uint64_t)load_u16(p + r * stride) << (16 * (r % 4));
    return _mm256_cvtph_ps(_mm_set_epi64x((long long)h[1], (long long)h[0]));
}
#endif

}  // namespace
}  // namespace ll
