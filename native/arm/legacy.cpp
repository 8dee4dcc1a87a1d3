// NEON kernels for the float types and the legacy 32-weight block formats.
//
// Compiled twice (see CMakeLists.txt / tests/native/build.sh): LL_ISA=neon for
// baseline armv8-a and LL_ISA=dotprod with -march=armv8.2-a+dotprod.  The only
// difference between the two builds is LL_VDOT: SDOT where the compiler may
// use it, otherwise ggml's widening-multiply emulation.  Every helper lives in
// an anonymous namespace so the two builds cannot be merged by the linker.
//
// The approach follows ggml's ARM kernels (ggml-cpu/arch/arm/quants.c): unpack
// the weights of a block to signed int8 lanes, take 4-lane int8 dot products
// against the Q8 activations, convert the block's int32 sum to float and
// multiply by the product of the two block scales.
#include <arm_neon.h>

#include "../kernels.h"
#include "neon_common.h"

namespace ll {
namespace {

// Dot-rows wrapper: one row dot function per weight type, applied to every row.
#define LL_DEFINE_ROWS(name, rowdot)                                                                    \
    void name(int64_t n, int64_t nrows, const void* w, size_t stride, const void* x, float* y) {      \
        const uint8_t* p = static_cast<const uint8_t*>(w);                                            \
        for (int64_t r = 0; r < nrows; r++) y[r] = rowdot(n, p + (size_t)r * stride, x);               \
    }

// ---- float weights: dot against float32 activations ----

static inline float dot_f32(int64_t n, const void* w, const void* x) {
    const float* a = static_cast<const float*>(w);
    const float* b = static_cast<const float*>(x);
    float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
        s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
        s2 = vfmaq_f32(s2, vld1q_f32(a + i + 8), vld1q_f32(b + i + 8));
        s3 = vfmaq_f32(s3, vld1q_f32(a + i + 12), vld1q_f32(b + i + 12));
    }
    for (; i + 4 <= n; i += 4) s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static inline float32x4_t f16_lo(uint16x8_t v) { return vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(v))); }
static inline float32x4_t f16_hi(uint16x8_t v) { return vcvt_f32_f16(vreinterpret_f16_u16(vget_high_u16(v))); }

static inline float dot_f16(int64_t n, const void* w, const void* x) {
    const half_t* a = static_cast<const half_t*>(w);
    const float* b = static_cast<const float*>(x);
    float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const uint16x8_t h0 = vld1q_u16(a + i), h1 = vld1q_u16(a + i + 8);
        s0 = vfmaq_f32(s0, f16_lo(h0), vld1q_f32(b + i));
        s1 = vfmaq_f32(s1, f16_hi(h0), vld1q_f32(b + i + 4));
        s2 = vfmaq_f32(s2, f16_lo(h1), vld1q_f32(b + i + 8));
        s3 = vfmaq_f32(s3, f16_hi(h1), vld1q_f32(b + i + 12));
    }
    for (; i + 4 <= n; i += 4) s0 = vfmaq_f32(s0, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(a + i))), vld1q_f32(b + i));
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
    for (; i < n; i++) s += h2f(a[i]) * b[i];
    return s;
}

// bf16 -> fp32 is a 16-bit left shift into the high half.
static inline float32x4_t bf16_lo(uint16x8_t v) { return vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(v), 16)); }
static inline float32x4_t bf16_hi(uint16x8_t v) { return vreinterpretq_f32_u32(vshll_high_n_u16(v, 16)); }

static inline float dot_bf16(int64_t n, const void* w, const void* x) {
    const bf16_t* a = static_cast<const bf16_t*>(w);
    const float* b = static_cast<const float*>(x);
    float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const uint16x8_t h0 = vld1q_u16(a + i), h1 = vld1q_u16(a + i + 8);
        s0 = vfmaq_f32(s0, bf16_lo(h0), vld1q_f32(b + i));
        s1 = vfmaq_f32(s1, bf16_hi(h0), vld1q_f32(b + i + 4));
        s2 = vfmaq_f32(s2, bf16_lo(h1), vld1q_f32(b + i + 8));
        s3 = vfmaq_f32(s3, bf16_hi(h1), vld1q_f32(b + i + 12));
    }
    for (; i + 4 <= n; i += 4) s0 = vfmaq_f32(s0, vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(a + i), 16)), vld1q_f32(b + i));
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
    for (; i < n; i++) s += bf16_to_fp32(a[i]) * b[i];
    return s;
}

// ---- legacy block formats: unpack one block's 32 weights to int8 lanes ----
// lo holds weights 0..15 (low nibbles), hi weights 16..31 (high nibbles).

static inline void unpack_q4_0(const block_q4_0& b, int8x16_t& lo, int8x16_t& hi) {
    const uint8x16_t v = vld1q_u8(b.qs);
    const int8x16_t s8 = vdupq_n_s8(8);
    lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F))), s8);
    hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), s8);
}

static inline void unpack_q4_1(const block_q4_1& b, int8x16_t& lo, int8x16_t& hi) {
    const uint8x16_t v = vld1q_u8(b.qs);
    lo = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F)));
    hi = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
}

// The fifth bits: bit j of the little-endian u32 qh belongs to weight j.
// Returns 0x10 in each lane whose bit is set (lo: weights 0..15, hi: 16..31).
static inline void fifth_bits(const uint8_t* qh, uint8x16_t& lo, uint8x16_t& hi) {
    uint32_t h;
    std::memcpy(&h, qh, 4);
    const uint8x16_t bytes = vreinterpretq_u8_u32(vdupq_n_u32(h));
    static const uint8_t idx_lo[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
    static const uint8_t idx_hi[16] = {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3};
    static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t mask = vld1q_u8(bit), b10 = vdupq_n_u8(0x10);
    lo = vandq_u8(vtstq_u8(vqtbl1q_u8(bytes, vld1q_u8(idx_lo)), mask), b10);
    hi = vandq_u8(vtstq_u8(vqtbl1q_u8(bytes, vld1q_u8(idx_hi)), mask), b10);
}

static inline void unpack_q5_0(const block_q5_0& b, int8x16_t& lo, int8x16_t& hi) {
    uint8x16_t hl, hh;
    fifth_bits(b.qh, hl, hh);
    const uint8x16_t v = vld1q_u8(b.qs);
    const int8x16_t s16 = vdupq_n_s8(16);
    lo = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vandq_u8(v, vdupq_n_u8(0x0F)), hl)), s16);
    hi = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(v, 4), hh)), s16);
}

static inline void unpack_q5_1(const block_q5_1& b, int8x16_t& lo, int8x16_t& hi) {
    uint8x16_t hl, hh;
    fifth_bits(b.qh, hl, hh);
    const uint8x16_t v = vld1q_u8(b.qs);
    lo = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(v, vdupq_n_u8(0x0F)), hl));
    hi = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(v, 4), hh));
}

// int32 lane sums of one block's 32 products.
static inline int32x4_t block_dot(int8x16_t lo, int8x16_t hi, const int8_t* q8) {
    return LL_VDOT(LL_VDOT(vdupq_n_s32(0), lo, vld1q_s8(q8)), hi, vld1q_s8(q8 + 16));
}

// Two blocks per iteration with independent accumulators (as ggml does), then
// the odd block.  UNPACK(block, lo, hi) fills the int8 lanes.
#define LL_DOT_SYMMETRIC(WT, UNPACK)                                                                   \
    const WT* a = static_cast<const WT*>(w);                                                           \
    const block_q8_0* b = static_cast<const block_q8_0*>(x);                                           \
    const int64_t nb = n / QK;                                                                         \
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0;                                                 \
    int64_t i = 0;                                                                                     \
    for (; i + 2 <= nb; i += 2) {                                                                      \
        int8x16_t l0, h0, l1, h1;                                                                      \
        UNPACK(a[i], l0, h0);                                                                          \
        UNPACK(a[i + 1], l1, h1);                                                                      \
        const int32x4_t p0 = block_dot(l0, h0, b[i].qs), p1 = block_dot(l1, h1, b[i + 1].qs);         \
        acc0 = vmlaq_n_f32(acc0, vcvtq_f32_s32(p0), h2f(a[i].d) * h2f(b[i].d));                        \
        acc1 = vmlaq_n_f32(acc1, vcvtq_f32_s32(p1), h2f(a[i + 1].d) * h2f(b[i + 1].d));                \
    }                                                                                                  \
    for (; i < nb; i++) {                                                                              \
        int8x16_t l0, h0;                                                                              \
        UNPACK(a[i], l0, h0);                                                                          \
        acc0 = vmlaq_n_f32(acc0, vcvtq_f32_s32(block_dot(l0, h0, b[i].qs)), h2f(a[i].d) * h2f(b[i].d)); \
    }                                                                                                  \
    return vaddvq_f32(vaddq_f32(acc0, acc1));

// Formats with a min m: sum over the block of (q*d + m) * y = d*dy*sum(q*qy) + m*s_y.
#define LL_DOT_WITH_MIN(WT, UNPACK)                                                                    \
    const WT* a = static_cast<const WT*>(w);                                                           \
    const block_q8_1* b = static_cast<const block_q8_1*>(x);                                           \
    const int64_t nb = n / QK;                                                                         \
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0;                                                 \
    float summs = 0.0f;                                                                                \
    int64_t i = 0;                                                                                     \
    for (; i + 2 <= nb; i += 2) {                                                                      \
        int8x16_t l0, h0, l1, h1;                                                                      \
        UNPACK(a[i], l0, h0);                                                                          \
        UNPACK(a[i + 1], l1, h1);                                                                      \
        summs += h2f(a[i].m) * h2f(b[i].s) + h2f(a[i + 1].m) * h2f(b[i + 1].s);                        \
        const int32x4_t p0 = block_dot(l0, h0, b[i].qs), p1 = block_dot(l1, h1, b[i + 1].qs);         \
        acc0 = vmlaq_n_f32(acc0, vcvtq_f32_s32(p0), h2f(a[i].d) * h2f(b[i].d));                        \
        acc1 = vmlaq_n_f32(acc1, vcvtq_f32_s32(p1), h2f(a[i + 1].d) * h2f(b[i + 1].d));                \
    }                                                                                                  \
    for (; i < nb; i++) {                                                                              \
        int8x16_t l0, h0;                                                                              \
        UNPACK(a[i], l0, h0);                                                                          \
        summs += h2f(a[i].m) * h2f(b[i].s);                                                            \
        acc0 = vmlaq_n_f32(acc0, vcvtq_f32_s32(block_dot(l0, h0, b[i].qs)), h2f(a[i].d) * h2f(b[i].d)); \
    }                                                                                                  \
    return vaddvq_f32(vaddq_f32(acc0, acc1)) + summs;

static inline float dot_q4_0(int64_t n, const void* w, const void* x) { LL_DOT_SYMMETRIC(block_q4_0, unpack_q4_0) }
static inline float dot_q5_0(int64_t n, const void* w, const void* x) { LL_DOT_SYMMETRIC(block_q5_0, unpack_q5_0) }
static inline float dot_q4_1(int64_t n, const void* w, const void* x) { LL_DOT_WITH_MIN(block_q4_1, unpack_q4_1) }
static inline float dot_q5_1(int64_t n, const void* w, const void* x) { LL_DOT_WITH_MIN(block_q5_1, unpack_q5_1) }

static inline void unpack_q8_0(const block_q8_0& b, int8x16_t& lo, int8x16_t& hi) {
    lo = vld1q_s8(b.qs);
    hi = vld1q_s8(b.qs + 16);
}
static inline float dot_q8_0(int64_t n, const void* w, const void* x) { LL_DOT_SYMMETRIC(block_q8_0, unpack_q8_0) }

LL_DEFINE_ROWS(rows_f32, dot_f32)
LL_DEFINE_ROWS(rows_f16, dot_f16)
LL_DEFINE_ROWS(rows_bf16, dot_bf16)
LL_DEFINE_ROWS(rows_q4_0, dot_q4_0)
LL_DEFINE_ROWS(rows_q4_1, dot_q4_1)
LL_DEFINE_ROWS(rows_q5_0, dot_q5_0)
LL_DEFINE_ROWS(rows_q5_1, dot_q5_1)
LL_DEFINE_ROWS(rows_q8_0, dot_q8_0)

// ---- dequantize ----

// dst[0..15] = v * d (v int8 lanes), each product rounded once as in the scalar code.
static inline void store_scaled(float* dst, int8x16_t v, float d) {
    const int16x8_t lo = vmovl_s8(vget_low_s8(v)), hi = vmovl_high_s8(v);
    vst1q_f32(dst + 0, vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))), d));
    vst1q_f32(dst + 4, vmulq_n_f32(vcvtq_f32_s32(vmovl_high_s16(lo)), d));
    vst1q_f32(dst + 8, vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))), d));
    vst1q_f32(dst + 12, vmulq_n_f32(vcvtq_f32_s32(vmovl_high_s16(hi)), d));
}

// dst[0..15] = v * d + m (separate multiply and add, like the scalar reference).
static inline void store_scaled_min(float* dst, int8x16_t v, float d, float m) {
    const int16x8_t lo = vmovl_s8(vget_low_s8(v)), hi = vmovl_high_s8(v);
    const float32x4_t vm = vdupq_n_f32(m);
    vst1q_f32(dst + 0, vaddq_f32(vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))), d), vm));
    vst1q_f32(dst + 4, vaddq_f32(vmulq_n_f32(vcvtq_f32_s32(vmovl_high_s16(lo)), d), vm));
    vst1q_f32(dst + 8, vaddq_f32(vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))), d), vm));
    vst1q_f32(dst + 12, vaddq_f32(vmulq_n_f32(vcvtq_f32_s32(vmovl_high_s16(hi)), d), vm));
}

#define LL_DEQUANT_SYMMETRIC(name, WT, UNPACK)                                 \
    void name(const void* src, float* dst, int64_t n) {                        \
        const WT* b = static_cast<const WT*>(src);                             \
        for (int64_t i = 0; i < n / QK; i++, dst += QK) {                      \
            int8x16_t lo, hi;                                                  \
            UNPACK(b[i], lo, hi);                                              \
            const float d = h2f(b[i].d);                                       \
            store_scaled(dst, lo, d);                                          \
            store_scaled(dst + 16, hi, d);                                     \
        }                                                                      \
    }

#define LL_DEQUANT_WITH_MIN(name, WT, UNPACK)                                  \
    void name(const void* src, float* dst, int64_t n) {                        \
        const WT* b = static_cast<const WT*>(src);                             \
        for (int64_t i = 0; i < n / QK; i++, dst += QK) {                      \
            int8x16_t lo, hi;                                                  \
            UNPACK(b[i], lo, hi);                                              \
            const float d = h2f(b[i].d), m = h2f(b[i].m);                      \
            store_scaled_min(dst, lo, d, m);                                   \
            store_scaled_min(dst + 16, hi, d, m);                              \
        }                                                                      \
    }

LL_DEQUANT_SYMMETRIC(dequant_q4_0, block_q4_0, unpack_q4_0)
LL_DEQUANT_SYMMETRIC(dequant_q5_0, block_q5_0, unpack_q5_0)
LL_DEQUANT_SYMMETRIC(dequant_q8_0, block_q8_0, unpack_q8_0)
LL_DEQUANT_WITH_MIN(dequant_q4_1, block_q4_1, unpack_q4_1)
LL_DEQUANT_WITH_MIN(dequant_q5_1, block_q5_1, unpack_q5_1)

void dequant_f16(const void* src, float* dst, int64_t n) {
    const half_t* s = static_cast<const half_t*>(src);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const uint16x8_t h = vld1q_u16(s + i);
        vst1q_f32(dst + i, f16_lo(h));
        vst1q_f32(dst + i + 4, f16_hi(h));
    }
    for (; i < n; i++) dst[i] = h2f(s[i]);
}

void dequant_bf16(const void* src, float* dst, int64_t n) {
    const bf16_t* s = static_cast<const bf16_t*>(src);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const uint16x8_t h = vld1q_u16(s + i);
        vst1q_f32(dst + i, bf16_lo(h));
        vst1q_f32(dst + i + 4, bf16_hi(h));
    }
    for (; i < n; i++) dst[i] = bf16_to_fp32(s[i]);
}

// ---- activation quantizers: Q8_0 and Q8_1 ----
// d = amax / 127, id = d ? 1/d : 0, q = round half away from zero (FCVTAS,
// the same as roundf in the scalar reference), d and s stored as fp16.

static inline float block_amax(const float* x) {
    float32x4_t m = vabsq_f32(vld1q_f32(x));
    for (int j = 4; j < QK; j += 4) m = vmaxq_f32(m, vabsq_f32(vld1q_f32(x + j)));
    return vmaxvq_f32(m);
}

// Quantizes 32 floats by id into q; returns the lane sums of q as int32x4.
static inline int32x4_t quantize_block(const float* x, float id, int8_t* q) {
    int32x4_t sum = vdupq_n_s32(0);
    for (int j = 0; j < QK; j += 8) {
        const int32x4_t a = vcvtaq_s32_f32(vmulq_n_f32(vld1q_f32(x + j), id));
        const int32x4_t b = vcvtaq_s32_f32(vmulq_n_f32(vld1q_f32(x + j + 4), id));
        sum = vaddq_s32(sum, vaddq_s32(a, b));
        const int16x8_t ab = vcombine_s16(vmovn_s32(a), vmovn_s32(b));
        vst1_s8(q + j, vmovn_s16(ab));
    }
    return sum;
}

void quant_q8_0(const float* x, void* dst, int64_t n) {
    block_q8_0* y = static_cast<block_q8_0*>(dst);
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        const float d = block_amax(x) / 127.0f;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        quantize_block(x, id, y[i].qs);
    }
}

void quant_q8_1(const float* x, void* dst, int64_t n) {
    block_q8_1* y = static_cast<block_q8_1*>(dst);
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        const float d = block_amax(x) / 127.0f;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        const int sum = vaddvq_s32(quantize_block(x, id, y[i].qs));
        y[i].s = fp32_to_fp16(sum * d);
    }
}

// The F16 KV cache's rows: FCVTN rounds to nearest even, as fp32_to_fp16 does
void quant_f16(const float* x, void* dst, int64_t n) {
    half_t* y = static_cast<half_t*>(dst);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1_u16(y + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(x + i))));
    for (; i < n; i++) y[i] = fp32_to_fp16(x[i]);
}

// The bandwidth probe: 16-byte loads, four independent sums (64-bit loads
// leave one core short of what DRAM delivers).
uint64_t sum_words(const uint64_t* p, size_t n) {
    uint64x2_t s0 = vdupq_n_u64(0), s1 = s0, s2 = s0, s3 = s0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        s0 = vaddq_u64(s0, vld1q_u64(p + i));
        s1 = vaddq_u64(s1, vld1q_u64(p + i + 2));
        s2 = vaddq_u64(s2, vld1q_u64(p + i + 4));
        s3 = vaddq_u64(s3, vld1q_u64(p + i + 6));
    }
    uint64_t s = vaddvq_u64(vaddq_u64(vaddq_u64(s0, s1), vaddq_u64(s2, s3)));
    for (; i < n; i++) s += p[i];
    return s;
}

}  // namespace

void LL_REGISTER(legacy)(KernelSet* ks) {
    ks->sum_words = sum_words;
    ks->dequant[TYPE_F16] = dequant_f16;
    ks->dequant[TYPE_BF16] = dequant_bf16;
    ks->dequant[TYPE_Q4_0] = dequant_q4_0;
    ks->dequant[TYPE_Q4_1] = dequant_q4_1;
    ks->dequant[TYPE_Q5_0] = dequant_q5_0;
    ks->dequant[TYPE_Q5_1] = dequant_q5_1;
    ks->dequant[TYPE_Q8_0] = dequant_q8_0;

    ks->quant_act[TYPE_F16] = quant_f16;
    ks->quant_act[TYPE_Q8_0] = quant_q8_0;
    ks->quant_act[TYPE_Q8_1] = quant_q8_1;

    ks->dot[TYPE_F32] = rows_f32;
    ks->dot[TYPE_F16] = rows_f16;
    ks->dot[TYPE_BF16] = rows_bf16;
    ks->dot[TYPE_Q4_0] = rows_q4_0;
    ks->dot[TYPE_Q4_1] = rows_q4_1;
    ks->dot[TYPE_Q5_0] = rows_q5_0;
    ks->dot[TYPE_Q5_1] = rows_q5_1;
    ks->dot[TYPE_Q8_0] = rows_q8_0;
}

}  // namespace ll
