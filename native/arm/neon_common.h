// Helpers shared by the NEON kernel files (each compiled as neon and dotprod).
// Everything has internal linkage: the two builds must not share symbols.
#pragma once

#include <arm_neon.h>

#include <cstring>

#include "../blocks.h"

// acc (int32x4) += four-way dot products of int8 lanes: lane i gets
// a[4i..4i+3] . b[4i..4i+3] with SDOT.  The emulation distributes the same
// products over the lanes differently; callers only ever use the lane total.
#if defined(__ARM_FEATURE_DOTPROD)
#define LL_VDOT(acc, a, b) vdotq_s32((acc), (a), (b))
#else
static inline int32x4_t vdot_emul(int32x4_t acc, int8x16_t a, int8x16_t b) {
    const int16x8_t p0 = vmull_s8(vget_low_s8(a), vget_low_s8(b));  // |a*b| <= 128*128 fits int16
    const int16x8_t p1 = vmull_high_s8(a, b);
    return vpadalq_s16(vpadalq_s16(acc, p0), p1);
}
#define LL_VDOT(acc, a, b) vdot_emul((acc), (a), (b))
#endif

// Hardware fp16 -> fp32 (exact, like fp16_to_fp32 in blocks.h, but one instruction).
static inline float h2f(ll::half_t h) {
    __fp16 f;
    std::memcpy(&f, &h, sizeof f);
    return (float)f;
}
