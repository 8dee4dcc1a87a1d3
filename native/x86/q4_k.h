// The Q4_K block arithmetic that kquants.cpp (vec_dot and the tiled matmul,
// for Q5_K too, whose scales are packed the same way) and repack.cpp (the
// repacked-Q4_K kernels) share: the packed scales unpacked, and the exact
// integer sums of a super-block.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "../blocks.h"
#include "common.h"
#include "int_macc.h"

namespace ll {
namespace {

// Q4_K/Q5_K: the 12 packed scale bytes b0..b11 of two blocks (one per
// 128-bit lane) -> per lane [scale0..7, min0..7] as bytes (6 bits each), the
// values of ggml's get_scale_min_k4:
//   scale j<4 = b[j] & 63          scale j>=4 = (b[j+4] & 15) | (b[j-4] >> 6) << 4
//   min   j<4 = b[j+4] & 63        min   j>=4 = (b[j+4] >> 4) | (b[j]   >> 6) << 4
// Reads 16 bytes at s0 and s1; in both block types 4 more bytes of the block follow.
LL_INLINE __m256i unpack_scales_k4x2(const uint8_t* s0, const uint8_t* s1) {
    const __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(loadu128(s0)), loadu128(s1), 1);
    // [b0..3, b8..11, b4..7, b8..11]
    const __m256i t = _mm256_shuffle_epi8(v, _mm256_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11,
                                                              0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
    const __m256i low = _mm256_or_si256(
        _mm256_and_si256(t, _mm256_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0,
                                             63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0)),
        _mm256_and_si256(_mm256_srli_epi16(t, 4), _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15,
                                                                   0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15)));
    // bits 6..7 of b0..3 (for scales 4..7) and b4..7 (mins 4..7), moved to bits 4..5
    const __m256i u = _mm256_shuffle_epi8(v, _mm256_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7,
                                                              -1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7));
    return _mm256_or_si256(low, _mm256_and_si256(_mm256_srli_epi16(u, 2), _mm256_set1_epi8(0x30)));
}

// Two rows' scales and mins unpacked in one 256-bit register (a single row
// passes its scales twice and keeps row 0).
struct ScalesK4x2 {
    __m256i sc0, sc1;  // int16 scales s0..s7 of row 0 / row 1, in both lanes
    __m256i mins;      // int16 mins: lane 0 row 0, lane 1 row 1
};

LL_INLINE ScalesK4x2 scales_k4x2(const uint8_t* s0, const uint8_t* s1) {
    const __m256i sm = unpack_scales_k4x2(s0, s1);  // per lane [scales, mins] bytes
    const __m256i zero = _mm256_setzero_si256();
    const __m256i sc = _mm256_unpacklo_epi8(sm, zero);
    return ScalesK4x2{_mm256_permute4x64_epi64(sc, 0x44), _mm256_permute4x64_epi64(sc, 0xEE), _mm256_unpackhi_epi8(sm, zero)};
}

// 8 sub-blocks of 32 weights (u[j] is sub-block j) with int16 scales s0..s7
// in both 128-bit lanes of sc: returns lanes summing to sum_j scale_j * dot_j.
// Lane i holds bytes 4i..4i+3 of every 32-weight vector, as in ggml's
// ggml_vec_dot_q4_K_q8_K: the same int32 lanes, so the float FMA that
// follows rounds exactly as llama.cpp's does.
LL_INLINE __m256i scaled_dot8(const __m256i u[8], const int8_t* q8, __m256i sc) {
    // two independent accumulators (integer sums: the order does not matter)
    __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
    _Pragma("GCC unroll 4")
    for (int j = 0; j < 4; ++j) {
        // s_2j and s_2j+1 broadcast to every int16 position
        const __m256i s_lo = _mm256_shuffle_epi8(sc, _mm256_set1_epi16((short)(0x0100 + 0x0202 * 2 * j)));
        const __m256i s_hi = _mm256_shuffle_epi8(sc, _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * j + 1))));
        acc0 = MADD16_ACC(acc0, _mm256_maddubs_epi16(u[2 * j], loadu256(q8 + 64 * j)), s_lo);
        acc1 = MADD16_ACC(acc1, _mm256_maddubs_epi16(u[2 * j + 1], loadu256(q8 + 64 * j + 32)), s_hi);
    }
    return _mm256_add_epi32(acc0, acc1);
}

// Q4_K: nibbles of qs[32j..32j+31] are sub-blocks 2j (low) and 2j+1 (high).
LL_INLINE __m256i sumi_q4_k(const block_q4_K* x, const int8_t* q8, __m256i sc) {
    const __m256i m4 = _mm256_set1_epi8(0xF);
    __m256i u[8];
    _Pragma("GCC unroll 4")
    for (int j = 0; j < 4; ++j) {
        const __m256i q = loadu256(x->qs + 32 * j);
        u[2 * j + 0] = _mm256_and_si256(q, m4);
        u[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
    }
    return scaled_dot8(u, q8, sc);
}

// The two 128-bit halves of 8 int32 lanes added: 4 lanes with the same total.
LL_INLINE __m128i halves(__m256i v) { return _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)); }

}  // namespace
}  // namespace ll
