// Small helpers of the x86 kernel files (legacy.cpp, kquants.cpp, repack.cpp).
// Like everything in those files they have internal linkage: each file is
// compiled once per ISA, and the copies must never be merged by the linker.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "../blocks.h"

#define LL_INLINE inline __attribute__((always_inline))

namespace ll {
namespace {

// Activation blocks per segment: repack.cpp's Q4_0 kernels prepare the
// activation row this many blocks at a time, and the batch tiles keep this
// many blocks' scales (longer rows go to the kernels they fall back on);
// k <= 16384 is one segment.
constexpr int64_t SEG = 512;

LL_INLINE float h2f(half_t h) { return _cvtsh_ss(h); }  // exact, same as fp16_to_fp32
// Rounded to nearest even, same as fp32_to_fp16 (and ggml's F16C build) for every non-NaN float.
LL_INLINE half_t f2h(float f) { return (half_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }

LL_INLINE uint16_t load_u16(const uint8_t* p) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
}

LL_INLINE uint32_t load_u32(const uint8_t* p) {
    uint32_t v;
    std::memcpy(&v, p, 4);  // little-endian, as the format stores it
    return v;
}

LL_INLINE __m256i loadu256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
LL_INLINE __m128i loadu128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

LL_INLINE int hsum8i(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

// 16 packed bytes -> 32 bytes in 0..15: low nibbles (weights 0..15) in bytes
// 0..15, high nibbles (weights 16..31) in bytes 16..31.  The broadcast load
// needs no shuffle uop; the upper lane is shifted right by 4 per dword.
LL_INLINE __m256i nibbles32(const uint8_t* qs) {
    const __m256i t = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
    return _mm256_and_si256(_mm256_srlv_epi32(t, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)), _mm256_set1_epi8(0x0F));
}

// One block's 32 weights unpacked to a byte each (the batch tiles' staging).
struct alignas(32) Bytes32 {
    uint8_t b[32];
};

// Bit j of `bits` -> byte j = 0x10 if set, else 0 (the fifth bit of Q5 weights).
LL_INLINE __m256i bits_to_0x10(uint32_t bits) {
    const __m256i shuf = _mm256_setr_epi64x(0x0000000000000000ll, 0x0101010101010101ll, 0x0202020202020202ll,
                                            0x0303030303030303ll);
    __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), shuf);  // byte j = bits byte j/8
    b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfell));     // all bits but j%8
    return _mm256_and_si256(_mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1)), _mm256_set1_epi8(0x10));
}

// Q5_0 / Q5_1: the 32 unsigned 5-bit values (0..31) in weight order.
LL_INLINE __m256i q5_values(const uint8_t* qs, const uint8_t* qh) {
    return _mm256_or_si256(nibbles32(qs), bits_to_0x10(load_u32(qh)));
}

}  // namespace
}  // namespace ll
