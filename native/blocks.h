// Block formats, defined once for the C++ side: byte-exact with ggml's
// ggml-common.h, mirrored by llamalocal/formats/blocks.py (a test checks the two agree).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace ll {

// ggml's `enum ggml_type` values: these are the numbers stored in GGUF files.
enum Type : int {
    TYPE_F32 = 0,
    TYPE_F16 = 1,
    TYPE_Q4_0 = 2,
    TYPE_Q4_1 = 3,
    TYPE_Q5_0 = 6,
    TYPE_Q5_1 = 7,
    TYPE_Q8_0 = 8,
    TYPE_Q8_1 = 9,
    TYPE_Q2_K = 10,
    TYPE_Q3_K = 11,
    TYPE_Q4_K = 12,
    TYPE_Q5_K = 13,
    TYPE_Q6_K = 14,
    TYPE_Q8_K = 15,
    TYPE_BF16 = 30,
    TYPE_COUNT = 40,
};

constexpr int QK = 32;     // legacy formats: weights per block
constexpr int QK_K = 256;  // k-quants: weights per super-block
constexpr int K_SCALE_SIZE = 12;

typedef uint16_t half_t;  // IEEE fp16 bits
typedef uint16_t bf16_t;  // bfloat16 bits

struct block_q4_0 { half_t d; uint8_t qs[QK / 2]; };
struct block_q4_1 { half_t d; half_t m; uint8_t qs[QK / 2]; };
struct block_q5_0 { half_t d; uint8_t qh[4]; uint8_t qs[QK / 2]; };
struct block_q5_1 { half_t d; half_t m; uint8_t qh[4]; uint8_t qs[QK / 2]; };
struct block_q8_0 { half_t d; int8_t qs[QK]; };
// activation format for Q4_1/Q5_1: s = d * sum(qs) carries the min's contribution
struct block_q8_1 { half_t d; half_t s; int8_t qs[QK]; };

struct block_q2_K { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; half_t d; half_t dmin; };
struct block_q3_K { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; half_t d; };
struct block_q4_K { half_t d; half_t dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qs[QK_K / 2]; };
struct block_q5_K { half_t d; half_t dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; };
struct block_q6_K { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; half_t d; };
// activation format for the k-quants: bsums[j] = sum of qs[16j..16j+15]
struct block_q8_K { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; };

static_assert(sizeof(block_q4_0) == 18, "block_q4_0 size");
static_assert(sizeof(block_q4_1) == 20, "block_q4_1 size");
static_assert(sizeof(block_q5_0) == 22, "block_q5_0 size");
static_assert(sizeof(block_q5_1) == 24, "block_q5_1 size");
static_assert(sizeof(block_q8_0) == 34, "block_q8_0 size");
static_assert(sizeof(block_q8_1) == 36, "block_q8_1 size");
static_assert(sizeof(block_q2_K) == 84, "block_q2_K size");
static_assert(sizeof(block_q3_K) == 110, "block_q3_K size");
static_assert(sizeof(block_q4_K) == 144, "block_q4_K size");
static_assert(sizeof(block_q5_K) == 176, "block_q5_K size");
static_assert(sizeof(block_q6_K) == 210, "block_q6_K size");
static_assert(sizeof(block_q8_K) == 292, "block_q8_K size");

struct TypeTraits {
    const char* name;
    int block_size;  // weights per block; 0 = not a supported type
    int type_size;   // bytes per block
    Type vec_dot_type;  // activation format for dot products with this weight type
};

// Indexed by Type; entries with block_size 0 are unsupported ids.
extern const TypeTraits TYPE_TRAITS[TYPE_COUNT];

inline bool type_supported(int t) { return t >= 0 && t < TYPE_COUNT && TYPE_TRAITS[t].block_size > 0; }
inline bool is_weight_type(int t) { return type_supported(t) && t != TYPE_Q8_1 && t != TYPE_Q8_K; }
inline size_t row_bytes(int t, int64_t n) { return (size_t)(n / TYPE_TRAITS[t].block_size) * TYPE_TRAITS[t].type_size; }

// Interleaved copies of weight rows: the layouts the interleaved kernels read
// (KernelSet::dot_gemv_il), the same weights reordered so that a kernel over a
// group of rows reads one contiguous stream instead of one per row (llama.cpp
// repacks the same weights for the same reason).  A group starts where its
// first row starts row-major.
//
// Groups of eight (Q4_0, Q4_K and any other type): each group stored block by
// block, the eight rows' blocks side by side: block i of row 8g + r is at
// ((g * nb + i) * 8 + r) * type_size.
//
// Groups of sixteen (Q4_1, Q5_0, Q5_1, Q8_0), for kernels that hold one row per
// int32 lane of a 512-bit register (x86/lanes16.cpp): each group stored block
// by block, block i of the sixteen rows one x16 block below.  Byte 4l + b of
// qs[c] is byte 4c + b of row l's qs, so one load gives every row's bytes
// 4c..4c+3 (Q4_1 / Q5: the low nibbles are weights 4c.., the high ones
// 16 + 4c..); bit 4l + b of qh[j] is row l's fifth bit of weight 4j + b.
struct block_q4_1x16 { half_t d[16]; half_t m[16]; uint8_t qs[4][64]; };
struct block_q5_0x16 { half_t d[16]; uint64_t qh[8]; uint8_t qs[4][64]; };
struct block_q5_1x16 { half_t d[16]; half_t m[16]; uint64_t qh[8]; uint8_t qs[4][64]; };
struct block_q8_0x16 { half_t d[16]; int8_t qs[8][64]; };
static_assert(sizeof(block_q4_1x16) == 16 * sizeof(block_q4_1), "block_q4_1x16 size");
static_assert(sizeof(block_q5_0x16) == 16 * sizeof(block_q5_0), "block_q5_0x16 size");
static_assert(sizeof(block_q5_1x16) == 16 * sizeof(block_q5_1), "block_q5_1x16 size");
static_assert(sizeof(block_q8_0x16) == 16 * sizeof(block_q8_0), "block_q8_0x16 size");

// Rows per group of a type's interleaved copy.
inline int interleave_group(int t) { return t == TYPE_Q4_1 || t == TYPE_Q5_0 || t == TYPE_Q5_1 || t == TYPE_Q8_0 ? 16 : 8; }
// A type's interleaved copy and back (rows a multiple of interleave_group(t)).
void interleave_rows(int t, const uint8_t* src, int64_t rows, int64_t cols, uint8_t* dst);
void deinterleave_rows(int t, const uint8_t* src, int64_t rows, int64_t cols, uint8_t* dst);

// Scalar number conversions.  `static inline` on purpose: these are included by
// translation units compiled for different ISAs, and an externally visible
// inline copy built with AVX2 could be picked by the linker for baseline code.
static inline float fp32_from_bits(uint32_t w) { float f; std::memcpy(&f, &w, 4); return f; }
static inline uint32_t fp32_to_bits(float f) { uint32_t w; std::memcpy(&w, &f, 4); return w; }

// IEEE half -> float, exact for every input including subnormals, inf and NaN.
static inline float fp16_to_fp32(half_t h) {
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const uint32_t exp_offset = 0xE0u << 23;
    const float exp_scale = fp32_from_bits(0x7800000u);  // 2^-112
    const float normalized = fp32_from_bits((two_w >> 4) + exp_offset) * exp_scale;
    const uint32_t magic_mask = 126u << 23;
    const float magic_bias = 0.5f;
    const float denormalized = fp32_from_bits((two_w >> 17) | magic_mask) - magic_bias;
    const uint32_t denormalized_cutoff = 1u << 27;
    const uint32_t result = sign | (two_w < denormalized_cutoff ? fp32_to_bits(denormalized) : fp32_to_bits(normalized));
    return fp32_from_bits(result);
}

// float -> IEEE half, round to nearest even (same bits as ggml / numpy astype).
static inline half_t fp32_to_fp16(float f) {
    const float scale_to_inf = fp32_from_bits(0x77800000u);   // 2^112
    const float scale_to_zero = fp32_from_bits(0x08800000u);  // 2^-110
    float base = (f < 0 ? -f : f) * scale_to_inf * scale_to_zero;
    const uint32_t w = fp32_to_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = fp32_from_bits((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = fp32_to_bits(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
    const uint32_t mantissa_bits = bits & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return (half_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

static inline float bf16_to_fp32(bf16_t h) { return fp32_from_bits((uint32_t)h << 16); }

// The packed 6-bit scales of the k-quants (ggml's kmask unpacking), for every
// kernel path; `static inline` for the reason above.

// Q3_K: the 16 signed scales of a block, still offset by 32.
static inline void unpack_q3_k_scales(const uint8_t* packed, int8_t out[16]) {
    const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f;
    uint32_t aux[4];
    std::memcpy(aux, packed, 12);
    const uint32_t tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
    aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
    aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
    aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
    std::memcpy(out, aux, 16);
}

// Q4_K/Q5_K: the 8 scales (bytes 0..7) and 8 mins (bytes 8..15) of a block
// (the same values as ggml's get_scale_min_k4 for j = 0..7).
static inline void unpack_q4_k_scales(const uint8_t* packed, uint8_t out[16]) {
    const uint32_t kmask1 = 0x3f3f3f3f, kmask2 = 0x0f0f0f0f, kmask3 = 0x03030303;
    uint32_t utmp[4];
    std::memcpy(utmp, packed, 12);
    utmp[3] = ((utmp[2] >> 4) & kmask2) | (((utmp[1] >> 6) & kmask3) << 4);
    const uint32_t uaux = utmp[1] & kmask1;
    utmp[1] = (utmp[2] & kmask2) | (((utmp[0] >> 6) & kmask3) << 4);
    utmp[2] = uaux;
    utmp[0] &= kmask1;
    std::memcpy(out, utmp, 16);
}

}  // namespace ll
