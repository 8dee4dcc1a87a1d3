// NEON kernels for the k-quants (256-weight super-blocks) and the Q8_K
// activation quantizer.
//
// Compiled twice like legacy.cpp: LL_ISA=neon (armv8-a) and LL_ISA=dotprod
// (-march=armv8.2-a+dotprod); LL_VDOT is SDOT or its emulation.  Helpers live
// in an anonymous namespace so the two builds stay distinct.
//
// Same scheme as ggml's ARM kernels (ggml-cpu/arch/arm/quants.c): weights are
// unpacked to non-negative int8 lanes, dotted with the Q8_K activations per
// 16- or 32-weight group and scaled by the integer sub-block scale; constant
// offsets (mins, Q6_K's -32, Q3_K's -4) are applied through Q8_K's bsums.
#include <arm_neon.h>

#include <cmath>

#include "../kernels.h"
#include "neon_common.h"

namespace ll {
namespace {

// Sum of the 16 products of one int8 vector pair.
static inline int32_t dot16(int8x16_t a, int8x16_t b) { return vaddvq_s32(LL_VDOT(vdupq_n_s32(0), a, b)); }
// Sum of the 32 products of two vector pairs.
static inline int32_t dot32(int8x16_t a0, int8x16_t b0, int8x16_t a1, int8x16_t b1) {
    return vaddvq_s32(LL_VDOT(LL_VDOT(vdupq_n_s32(0), a0, b0), a1, b1));
}

static inline int8x16_t s8(uint8x16_t v) { return vreinterpretq_s8_u8(v); }

// Sum over 16 groups of (int16 weights[g] * int16 bsums[g]).
static inline int32_t dot_i16x16(int16x8_t a0, int16x8_t a1, const int16_t* bsums) {
    const int16x8_t b0 = vld1q_s16(bsums), b1 = vld1q_s16(bsums + 8);
    int32x4_t p = vmull_s16(vget_low_s16(a0), vget_low_s16(b0));
    p = vmlal_high_s16(p, a0, b0);
    p = vmlal_s16(p, vget_low_s16(a1), vget_low_s16(b1));
    p = vmlal_high_s16(p, a1, b1);
    return vaddvq_s32(p);
}

// Q4_K / Q5_K: 8 six-bit scales and 8 six-bit mins packed in 12 bytes.  After
// this, bytes 0..7 of utmp are the scales and bytes 8..15 the mins (ggml's
// kmask unpacking; equivalent to get_scale_min_k4 for j = 0..7).
static inline void unpack_scales_mins_k4(const uint8_t* packed, uint32_t utmp[4]) {
    unpack_q4_k_scales(packed, reinterpret_cast<uint8_t*>(utmp));
}

// Sum over the 8 sub-blocks of 32 of mins[j] * (bsums[2j] + bsums[2j+1]).
static inline int32_t mins_dot_bsums(const uint8_t* mins8, const int16_t* bsums) {
    const int16x8_t q8sums = vpaddq_s16(vld1q_s16(bsums), vld1q_s16(bsums + 8));  // |sum of 32| <= 4064
    const int16x8_t mins = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(mins8)));
    int32x4_t p = vmull_s16(vget_low_s16(mins), vget_low_s16(q8sums));
    p = vmlal_high_s16(p, mins, q8sums);
    return vaddvq_s32(p);
}

// ---- Q2_K: 16 groups of 16, 2-bit quants, 4-bit scale and min per group ----

static inline float dot_q2_K(int64_t n, const void* w, const void* x) {
    const block_q2_K* a = static_cast<const block_q2_K*>(w);
    const block_q8_K* b = static_cast<const block_q8_K*>(x);
    const uint8x16_t m3 = vdupq_n_u8(3);
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = b[i].d * h2f(a[i].d);
        const float dmin = b[i].d * h2f(a[i].dmin);
        const uint8x16_t sm = vld1q_u8(a[i].scales);
        uint8_t sc[16];
        vst1q_u8(sc, vandq_u8(sm, vdupq_n_u8(0x0F)));
        const uint8x16_t mins = vshrq_n_u8(sm, 4);
        const int32_t summ = dot_i16x16(vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(mins))),
                                        vreinterpretq_s16_u16(vmovl_high_u8(mins)), b[i].bsums);
        const uint8_t* q2 = a[i].qs;
        const int8_t* q8 = b[i].qs;
        int32_t isum = 0;
        int is = 0;
        for (int j = 0; j < QK_K / 128; j++, q2 += 32, is += 8) {
            const uint8x16_t v0 = vld1q_u8(q2), v1 = vld1q_u8(q2 + 16);
            // shift 0, 2, 4, 6: each 2-bit plane covers 32 weights (two groups of 16)
            isum += dot16(s8(vandq_u8(v0, m3)), vld1q_s8(q8)) * sc[is + 0];
            isum += dot16(s8(vandq_u8(v1, m3)), vld1q_s8(q8 + 16)) * sc[is + 1];
            isum += dot16(s8(vandq_u8(vshrq_n_u8(v0, 2), m3)), vld1q_s8(q8 + 32)) * sc[is + 2];
            isum += dot16(s8(vandq_u8(vshrq_n_u8(v1, 2), m3)), vld1q_s8(q8 + 48)) * sc[is + 3];
            isum += dot16(s8(vandq_u8(vshrq_n_u8(v0, 4), m3)), vld1q_s8(q8 + 64)) * sc[is + 4];
            isum += dot16(s8(vandq_u8(vshrq_n_u8(v1, 4), m3)), vld1q_s8(q8 + 80)) * sc[is + 5];
            isum += dot16(s8(vshrq_n_u8(v0, 6)), vld1q_s8(q8 + 96)) * sc[is + 6];
            isum += dot16(s8(vshrq_n_u8(v1, 6)), vld1q_s8(q8 + 112)) * sc[is + 7];
            q8 += 128;
        }
        sumf += d * isum - dmin * summ;
    }
    return sumf;
}

// ---- Q3_K: 16 groups of 16, 2 low bits + inverted high bit, 6-bit signed scales ----

static inline void unpack_scales_q3_K(const uint8_t* packed, int8_t scales[16]) {
    unpack_q3_k_scales(packed, scales);
    vst1q_s8(scales, vsubq_s8(vld1q_s8(scales), vdupq_n_s8(32)));
}

static inline float dot_q3_K(int64_t n, const void* w, const void* x) {
    const block_q3_K* a = static_cast<const block_q3_K*>(w);
    const block_q8_K* b = static_cast<const block_q8_K*>(x);
    const uint8x16_t m3 = vdupq_n_u8(3), four = vdupq_n_u8(4);
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = b[i].d * h2f(a[i].d);
        int8_t sc[16];
        unpack_scales_q3_K(a[i].scales, sc);
        // weight = low2 - (high bit clear ? 4 : 0) = (low2 | high<<2) - 4: dot the
        // unsigned 3-bit value and take 4 * scale * bsum back off.
        const int32_t sum4 = dot_i16x16(vmovl_s8(vget_low_s8(vld1q_s8(sc))), vmovl_high_s8(vld1q_s8(sc)), b[i].bsums);
        uint8x16_t hm0 = vld1q_u8(a[i].hmask), hm1 = vld1q_u8(a[i].hmask + 16);
        const uint8_t* q3 = a[i].qs;
        const int8_t* q8 = b[i].qs;
        int32_t isum = 0;
        const int8_t* s = sc;
        for (int j = 0; j < QK_K / 128; j++, q3 += 32) {
            const uint8x16_t v0 = vld1q_u8(q3), v1 = vld1q_u8(q3 + 16);
            for (int shift = 0; shift < 8; shift += 2, s += 2, q8 += 32) {
                // bit (j*4 + shift/2) of hmask -> value 4
                const uint8x16_t h0 = vandq_u8(vshlq_n_u8(hm0, 2), four);
                const uint8x16_t h1 = vandq_u8(vshlq_n_u8(hm1, 2), four);
                hm0 = vshrq_n_u8(hm0, 1);
                hm1 = vshrq_n_u8(hm1, 1);
                const int8x16_t shv = vdupq_n_s8((int8_t)-shift);
                const uint8x16_t l0 = vandq_u8(vshlq_u8(v0, shv), m3);
                const uint8x16_t l1 = vandq_u8(vshlq_u8(v1, shv), m3);
                isum += dot16(s8(vorrq_u8(l0, h0)), vld1q_s8(q8)) * s[0];
                isum += dot16(s8(vorrq_u8(l1, h1)), vld1q_s8(q8 + 16)) * s[1];
            }
        }
        sumf += d * (isum - 4 * sum4);
    }
    return sumf;
}

// ---- Q4_K: 8 sub-blocks of 32, 4-bit quants, 6-bit scale and min ----

static inline float dot_q4_K(int64_t n, const void* w, const void* x) {
    const block_q4_K* a = static_cast<const block_q4_K*>(w);
    const block_q8_K* b = static_cast<const block_q8_K*>(x);
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = b[i].d * h2f(a[i].d);
        const float dmin = b[i].d * h2f(a[i].dmin);
        uint32_t utmp[4];
        unpack_scales_mins_k4(a[i].scales, utmp);
        const uint8_t* sc = reinterpret_cast<const uint8_t*>(utmp);
        const int32_t summ = mins_dot_bsums(sc + 8, b[i].bsums);
        const uint8_t* q4 = a[i].qs;
        const int8_t* q8 = b[i].qs;
        int32_t sumi1 = 0, sumi2 = 0;
        for (int j = 0; j < QK_K / 64; j++, q4 += 32, q8 += 64) {
            const uint8x16_t v0 = vld1q_u8(q4), v1 = vld1q_u8(q4 + 16);
            sumi1 += dot32(s8(vandq_u8(v0, m4)), vld1q_s8(q8), s8(vandq_u8(v1, m4)), vld1q_s8(q8 + 16)) * sc[2 * j];
            sumi2 += dot32(s8(vshrq_n_u8(v0, 4)), vld1q_s8(q8 + 32), s8(vshrq_n_u8(v1, 4)), vld1q_s8(q8 + 48)) * sc[2 * j + 1];
        }
        sumf += d * (sumi1 + sumi2) - dmin * summ;
    }
    return sumf;
}

// ---- Q5_K: Q4_K plus a fifth bit per weight in qh ----

static inline float dot_q5_K(int64_t n, const void* w, const void* x) {
    const block_q5_K* a = static_cast<const block_q5_K*>(w);
    const block_q8_K* b = static_cast<const block_q8_K*>(x);
    const uint8x16_t m4 = vdupq_n_u8(0x0F), one = vdupq_n_u8(1), two = vdupq_n_u8(2);
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = b[i].d * h2f(a[i].d);
        const float dmin = b[i].d * h2f(a[i].dmin);
        uint32_t utmp[4];
        unpack_scales_mins_k4(a[i].scales, utmp);
        const uint8_t* sc = reinterpret_cast<const uint8_t*>(utmp);
        const int32_t summ = mins_dot_bsums(sc + 8, b[i].bsums);
        uint8x16_t qh0 = vld1q_u8(a[i].qh), qh1 = vld1q_u8(a[i].qh + 16);
        const uint8_t* q5 = a[i].qs;
        const int8_t* q8 = b[i].qs;
        int32_t sumi = 0;
        for (int j = 0; j < QK_K / 64; j++, q5 += 32, q8 += 64) {
            const uint8x16_t v0 = vld1q_u8(q5), v1 = vld1q_u8(q5 + 16);
            // bit 2j of qh -> 16 for the low nibbles, bit 2j+1 -> 16 for the high ones
            const uint8x16_t h0 = vshlq_n_u8(vandq_u8(qh0, one), 4), h1 = vshlq_n_u8(vandq_u8(qh1, one), 4);
            const uint8x16_t h2 = vshlq_n_u8(vandq_u8(qh0, two), 3), h3 = vshlq_n_u8(vandq_u8(qh1, two), 3);
            qh0 = vshrq_n_u8(qh0, 2);
            qh1 = vshrq_n_u8(qh1, 2);
            sumi += dot32(s8(vorrq_u8(vandq_u8(v0, m4), h0)), vld1q_s8(q8), s8(vorrq_u8(vandq_u8(v1, m4), h1)), vld1q_s8(q8 + 16)) * sc[2 * j];
            sumi += dot32(s8(vorrq_u8(vshrq_n_u8(v0, 4), h2)), vld1q_s8(q8 + 32), s8(vorrq_u8(vshrq_n_u8(v1, 4), h3)), vld1q_s8(q8 + 48)) * sc[2 * j + 1];
        }
        sumf += d * sumi - dmin * summ;
    }
    return sumf;
}

// ---- Q6_K: 16 groups of 16, 4 low + 2 high bits, int8 scales, offset -32 ----

static inline float dot_q6_K(int64_t n, const void* w, const void* x) {
    const block_q6_K* a = static_cast<const block_q6_K*>(w);
    const block_q8_K* b = static_cast<const block_q8_K*>(x);
    const uint8x16_t m4 = vdupq_n_u8(0x0F), m3 = vdupq_n_u8(3);
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = b[i].d * h2f(a[i].d);
        const int8x16_t scv = vld1q_s8(a[i].scales);
        // the unsigned 6-bit values are dotted directly; -32 comes back via bsums
        const int32_t sum32 = dot_i16x16(vmovl_s8(vget_low_s8(scv)), vmovl_high_s8(scv), b[i].bsums);
        const uint8_t* ql = a[i].ql;
        const uint8_t* qh = a[i].qh;
        const int8_t* q8 = b[i].qs;
        const int8_t* sc = a[i].scales;
        int32_t isum = 0;
        for (int j = 0; j < QK_K / 128; j++, ql += 64, qh += 32, q8 += 128, sc += 8) {
            const uint8x16_t h0 = vld1q_u8(qh), h1 = vld1q_u8(qh + 16);
            const uint8x16_t l0 = vld1q_u8(ql), l1 = vld1q_u8(ql + 16), l2 = vld1q_u8(ql + 32), l3 = vld1q_u8(ql + 48);
            const uint8x16_t q0 = vorrq_u8(vandq_u8(l0, m4), vshlq_n_u8(vandq_u8(h0, m3), 4));
            const uint8x16_t q1 = vorrq_u8(vandq_u8(l1, m4), vshlq_n_u8(vandq_u8(h1, m3), 4));
            const uint8x16_t q2 = vorrq_u8(vandq_u8(l2, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(h0, 2), m3), 4));
            const uint8x16_t q3 = vorrq_u8(vandq_u8(l3, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(h1, 2), m3), 4));
            const uint8x16_t q4 = vorrq_u8(vshrq_n_u8(l0, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(h0, 4), m3), 4));
            const uint8x16_t q5 = vorrq_u8(vshrq_n_u8(l1, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(h1, 4), m3), 4));
            const uint8x16_t q6 = vorrq_u8(vshrq_n_u8(l2, 4), vshlq_n_u8(vshrq_n_u8(h0, 6), 4));
            const uint8x16_t q7 = vorrq_u8(vshrq_n_u8(l3, 4), vshlq_n_u8(vshrq_n_u8(h1, 6), 4));
            isum += dot16(s8(q0), vld1q_s8(q8 + 0)) * sc[0];
            isum += dot16(s8(q1), vld1q_s8(q8 + 16)) * sc[1];
            isum += dot16(s8(q2), vld1q_s8(q8 + 32)) * sc[2];
            isum += dot16(s8(q3), vld1q_s8(q8 + 48)) * sc[3];
            isum += dot16(s8(q4), vld1q_s8(q8 + 64)) * sc[4];
            isum += dot16(s8(q5), vld1q_s8(q8 + 80)) * sc[5];
            isum += dot16(s8(q6), vld1q_s8(q8 + 96)) * sc[6];
            isum += dot16(s8(q7), vld1q_s8(q8 + 112)) * sc[7];
        }
        sumf += d * (isum - 32 * sum32);
    }
    return sumf;
}

#define LL_DEFINE_ROWS(name, rowdot)                                                                    \
    void name(int64_t n, int64_t nrows, const void* w, size_t stride, const void* x, float* y) {      \
        const uint8_t* p = static_cast<const uint8_t*>(w);                                            \
        for (int64_t r = 0; r < nrows; r++) y[r] = rowdot(n, p + (size_t)r * stride, x);               \
    }

LL_DEFINE_ROWS(rows_q2_K, dot_q2_K)
LL_DEFINE_ROWS(rows_q3_K, dot_q3_K)
LL_DEFINE_ROWS(rows_q4_K, dot_q4_K)
LL_DEFINE_ROWS(rows_q5_K, dot_q5_K)
LL_DEFINE_ROWS(rows_q6_K, dot_q6_K)

// ---- dequantize (ggml's dequantize_row_qX_K, same float operations) ----

// dst[0..15] = ds * q - m (separate multiply and subtract).
static inline void store_u8_scaled_min(float* dst, uint8x16_t q, float ds, float m) {
    const uint16x8_t lo = vmovl_u8(vget_low_u8(q)), hi = vmovl_high_u8(q);
    const float32x4_t vm = vdupq_n_f32(m);
    vst1q_f32(dst + 0, vsubq_f32(vmulq_n_f32(vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo))), ds), vm));
    vst1q_f32(dst + 4, vsubq_f32(vmulq_n_f32(vcvtq_f32_u32(vmovl_high_u16(lo)), ds), vm));
    vst1q_f32(dst + 8, vsubq_f32(vmulq_n_f32(vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi))), ds), vm));
    vst1q_f32(dst + 12, vsubq_f32(vmulq_n_f32(vcvtq_f32_u32(vmovl_high_u16(hi)), ds), vm));
}

// dst[0..15] = ds * q (int8 lanes).
static inline void store_s8_scaled(float* dst, int8x16_t q, float ds) {
    const int16x8_t lo = vmovl_s8(vget_low_s8(q)), hi = vmovl_high_s8(q);
    vst1q_f32(dst + 0, vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))), ds));
    vst1q_f32(dst + 4, vmulq_n_f32(vcvtq_f32_s32(vmovl_high_s16(lo)), ds));
    vst1q_f32(dst + 8, vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))), ds));
    vst1q_f32(dst + 12, vmulq_n_f32(vcvtq_f32_s32(vmovl_high_s16(hi)), ds));
}

void dequant_q4_K(const void* src, float* dst, int64_t n) {
    const block_q4_K* b = static_cast<const block_q4_K*>(src);
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
        uint32_t utmp[4];
        unpack_scales_mins_k4(b[i].scales, utmp);
        const uint8_t* sc = reinterpret_cast<const uint8_t*>(utmp);
        const uint8_t* q = b[i].qs;
        for (int j = 0; j < QK_K / 64; j++, q += 32, dst += 64) {
            const float d1 = d * sc[2 * j], m1 = dmin * sc[8 + 2 * j];
            const float d2 = d * sc[2 * j + 1], m2 = dmin * sc[8 + 2 * j + 1];
            const uint8x16_t v0 = vld1q_u8(q), v1 = vld1q_u8(q + 16);
            store_u8_scaled_min(dst, vandq_u8(v0, m4), d1, m1);
            store_u8_scaled_min(dst + 16, vandq_u8(v1, m4), d1, m1);
            store_u8_scaled_min(dst + 32, vshrq_n_u8(v0, 4), d2, m2);
            store_u8_scaled_min(dst + 48, vshrq_n_u8(v1, 4), d2, m2);
        }
    }
}

void dequant_q2_K(const void* src, float* dst, int64_t n) {
    const block_q2_K* b = static_cast<const block_q2_K*>(src);
    const uint8x16_t m3 = vdupq_n_u8(3);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
        const uint8_t* q = b[i].qs;
        const uint8_t* sc = b[i].scales;
        for (int j = 0; j < QK_K / 128; j++, q += 32) {
            const uint8x16_t v0 = vld1q_u8(q), v1 = vld1q_u8(q + 16);
            for (int shift = 0; shift < 8; shift += 2, sc += 2, dst += 32) {
                const int8x16_t shv = vdupq_n_s8((int8_t)-shift);
                store_u8_scaled_min(dst, vandq_u8(vshlq_u8(v0, shv), m3), d * (sc[0] & 0xF), dmin * (sc[0] >> 4));
                store_u8_scaled_min(dst + 16, vandq_u8(vshlq_u8(v1, shv), m3), d * (sc[1] & 0xF), dmin * (sc[1] >> 4));
            }
        }
    }
}

void dequant_q3_K(const void* src, float* dst, int64_t n) {
    const block_q3_K* b = static_cast<const block_q3_K*>(src);
    const uint8x16_t m3 = vdupq_n_u8(3), four = vdupq_n_u8(4);
    const int8x16_t s4 = vdupq_n_s8(4);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = h2f(b[i].d);
        int8_t sc[16];
        unpack_scales_q3_K(b[i].scales, sc);  // already minus 32
        uint8x16_t hm0 = vld1q_u8(b[i].hmask), hm1 = vld1q_u8(b[i].hmask + 16);
        const uint8_t* q = b[i].qs;
        const int8_t* s = sc;
        for (int j = 0; j < QK_K / 128; j++, q += 32) {
            const uint8x16_t v0 = vld1q_u8(q), v1 = vld1q_u8(q + 16);
            for (int shift = 0; shift < 8; shift += 2, s += 2, dst += 32) {
                const uint8x16_t h0 = vandq_u8(vshlq_n_u8(hm0, 2), four), h1 = vandq_u8(vshlq_n_u8(hm1, 2), four);
                hm0 = vshrq_n_u8(hm0, 1);
                hm1 = vshrq_n_u8(hm1, 1);
                const int8x16_t shv = vdupq_n_s8((int8_t)-shift);
                const int8x16_t w0 = vsubq_s8(s8(vorrq_u8(vandq_u8(vshlq_u8(v0, shv), m3), h0)), s4);
                const int8x16_t w1 = vsubq_s8(s8(vorrq_u8(vandq_u8(vshlq_u8(v1, shv), m3), h1)), s4);
                store_s8_scaled(dst, w0, d * s[0]);
                store_s8_scaled(dst + 16, w1, d * s[1]);
            }
        }
    }
}

void dequant_q5_K(const void* src, float* dst, int64_t n) {
    const block_q5_K* b = static_cast<const block_q5_K*>(src);
    const uint8x16_t m4 = vdupq_n_u8(0x0F), one = vdupq_n_u8(1), two = vdupq_n_u8(2);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = h2f(b[i].d), dmin = h2f(b[i].dmin);
        uint32_t utmp[4];
        unpack_scales_mins_k4(b[i].scales, utmp);
        const uint8_t* sc = reinterpret_cast<const uint8_t*>(utmp);
        uint8x16_t qh0 = vld1q_u8(b[i].qh), qh1 = vld1q_u8(b[i].qh + 16);
        const uint8_t* q = b[i].qs;
        for (int j = 0; j < QK_K / 64; j++, q += 32, dst += 64) {
            const float d1 = d * sc[2 * j], m1 = dmin * sc[8 + 2 * j];
            const float d2 = d * sc[2 * j + 1], m2 = dmin * sc[8 + 2 * j + 1];
            const uint8x16_t v0 = vld1q_u8(q), v1 = vld1q_u8(q + 16);
            const uint8x16_t h0 = vshlq_n_u8(vandq_u8(qh0, one), 4), h1 = vshlq_n_u8(vandq_u8(qh1, one), 4);
            const uint8x16_t h2 = vshlq_n_u8(vandq_u8(qh0, two), 3), h3 = vshlq_n_u8(vandq_u8(qh1, two), 3);
            qh0 = vshrq_n_u8(qh0, 2);
            qh1 = vshrq_n_u8(qh1, 2);
            store_u8_scaled_min(dst, vorrq_u8(vandq_u8(v0, m4), h0), d1, m1);
            store_u8_scaled_min(dst + 16, vorrq_u8(vandq_u8(v1, m4), h1), d1, m1);
            store_u8_scaled_min(dst + 32, vorrq_u8(vshrq_n_u8(v0, 4), h2), d2, m2);
            store_u8_scaled_min(dst + 48, vorrq_u8(vshrq_n_u8(v1, 4), h3), d2, m2);
        }
    }
}

void dequant_q6_K(const void* src, float* dst, int64_t n) {
    const block_q6_K* b = static_cast<const block_q6_K*>(src);
    const uint8x16_t m4 = vdupq_n_u8(0x0F), m3 = vdupq_n_u8(3);
    const int8x16_t s32 = vdupq_n_s8(32);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = h2f(b[i].d);
        const uint8_t* ql = b[i].ql;
        const uint8_t* qh = b[i].qh;
        const int8_t* sc = b[i].scales;
        for (int j = 0; j < QK_K / 128; j++, ql += 64, qh += 32, sc += 8, dst += 128) {
            const uint8x16_t h0 = vld1q_u8(qh), h1 = vld1q_u8(qh + 16);
            const uint8x16_t l0 = vld1q_u8(ql), l1 = vld1q_u8(ql + 16), l2 = vld1q_u8(ql + 32), l3 = vld1q_u8(ql + 48);
            const uint8x16_t q[8] = {
                vorrq_u8(vandq_u8(l0, m4), vshlq_n_u8(vandq_u8(h0, m3), 4)),
                vorrq_u8(vandq_u8(l1, m4), vshlq_n_u8(vandq_u8(h1, m3), 4)),
                vorrq_u8(vandq_u8(l2, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(h0, 2), m3), 4)),
                vorrq_u8(vandq_u8(l3, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(h1, 2), m3), 4)),
                vorrq_u8(vshrq_n_u8(l0, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(h0, 4), m3), 4)),
                vorrq_u8(vshrq_n_u8(l1, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(h1, 4), m3), 4)),
                vorrq_u8(vshrq_n_u8(l2, 4), vshlq_n_u8(vshrq_n_u8(h0, 6), 4)),
                vorrq_u8(vshrq_n_u8(l3, 4), vshlq_n_u8(vshrq_n_u8(h1, 6), 4)),
            };
            // y = d * sc * q, evaluated as (d * sc) * q like the reference
            for (int g = 0; g < 8; g++) store_s8_scaled(dst + 16 * g, vsubq_s8(s8(q[g]), s32), d * sc[g]);
        }
    }
}

// ---- Q8_K activation quantizer (ggml's quantize_row_q8_K_ref) ----
// max = the first value of largest magnitude; iscale = -127/max; q =
// min(127, nearest_int(iscale * x)) (round half to even: FCVTNS); d = 1/iscale;
// bsums[g] = sum of the 16 quants of group g.

void quant_q8_K(const float* x, void* dst, int64_t n) {
    block_q8_K* y = static_cast<block_q8_K*>(dst);
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        float32x4_t m = vabsq_f32(vld1q_f32(x));
        for (int j = 4; j < QK_K; j += 4) m = vmaxq_f32(m, vabsq_f32(vld1q_f32(x + j)));
        const float amax = vmaxvq_f32(m);
        if (!amax) {
            y[i].d = 0.0f;
            std::memset(y[i].qs, 0, sizeof y[i].qs);
            std::memset(y[i].bsums, 0, sizeof y[i].bsums);
            continue;
        }
        int jmax = 0;
        while (jmax < QK_K - 1 && std::fabs(x[jmax]) != amax) jmax++;
        const float iscale = -127.0f / x[jmax];
        const int32x4_t lim = vdupq_n_s32(127);
        for (int g = 0; g < QK_K / 16; g++) {
            const float* xg = x + 16 * g;
            const int32x4_t a = vminq_s32(vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(xg + 0), iscale)), lim);
            const int32x4_t b = vminq_s32(vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(xg + 4), iscale)), lim);
            const int32x4_t c = vminq_s32(vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(xg + 8), iscale)), lim);
            const int32x4_t e = vminq_s32(vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(xg + 12), iscale)), lim);
            y[i].bsums[g] = (int16_t)vaddvq_s32(vaddq_s32(vaddq_s32(a, b), vaddq_s32(c, e)));
            const int16x8_t ab = vcombine_s16(vmovn_s32(a), vmovn_s32(b));
            const int16x8_t ce = vcombine_s16(vmovn_s32(c), vmovn_s32(e));
            vst1q_s8(y[i].qs + 16 * g, vcombine_s8(vmovn_s16(ab), vmovn_s16(ce)));
        }
        y[i].d = 1.0f / iscale;
    }
}

}  // namespace

void LL_REGISTER(kquants)(KernelSet* ks) {
    ks->dequant[TYPE_Q2_K] = dequant_q2_K;
    ks->dequant[TYPE_Q3_K] = dequant_q3_K;
    ks->dequant[TYPE_Q4_K] = dequant_q4_K;
    ks->dequant[TYPE_Q5_K] = dequant_q5_K;
    ks->dequant[TYPE_Q6_K] = dequant_q6_K;

    ks->quant_act[TYPE_Q8_K] = quant_q8_K;

    ks->dot[TYPE_Q2_K] = rows_q2_K;
    ks->dot[TYPE_Q3_K] = rows_q3_K;
    ks->dot[TYPE_Q4_K] = rows_q4_K;
    ks->dot[TYPE_Q5_K] = rows_q5_K;
    ks->dot[TYPE_Q6_K] = rows_q6_K;
}

}  // namespace ll
