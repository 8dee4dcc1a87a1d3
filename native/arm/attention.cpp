// NEON attention leaf (compiled as neon and dotprod): the scalar reference's
// arithmetic 4 lanes at a time (fp16 rounding through vcvt, nearest even).
#include <arm_neon.h>

#include <cmath>

#include "../kernels.h"

namespace ll {
namespace {

inline float32x4_t load_h(const half_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
inline float32x4_t round_h(float32x4_t v) { return vcvt_f32_f16(vcvt_f16_f32(v)); }
inline float round_h1(float x) { return fp16_to_fp32(fp32_to_fp16(x)); }

constexpr int64_t MAX_HD = 1024;  // the bindings refuse larger heads

void attn_f16(int64_t n, int64_t hd, const float* q, const void* kp, size_t k_stride, const void* vp, size_t v_stride, float scale,
              float* w, float* out) {
    const half_t* k = static_cast<const half_t*>(kp);
    const half_t* v = static_cast<const half_t*>(vp);
    const int64_t hd4 = hd & ~int64_t(3);
    float qh[MAX_HD];
    for (int64_t d = 0; d < hd4; d += 4) vst1q_f32(qh + d, round_h(vld1q_f32(q + d)));
    for (int64_t d = hd4; d < hd; d++) qh[d] = round_h1(q[d]);

    float mx = -INFINITY;
    for (int64_t j = 0; j < n; j++) {
        const half_t* kj = k + j * k_stride;
        float32x4_t acc = vdupq_n_f32(0.0f);
        for (int64_t d = 0; d < hd4; d += 4) acc = vfmaq_f32(acc, vld1q_f32(qh + d), load_h(kj + d));
        float s = vaddvq_f32(acc);
        for (int64_t d = hd4; d < hd; d++) s += qh[d] * fp16_to_fp32(kj[d]);
        w[j] = s * scale;
        mx = std::fmax(mx, w[j]);
    }
    double sum = 0.0;
    for (int64_t j = 0; j < n; j++) sum += (double)(w[j] = std::exp(w[j] - mx));
    const float inv = (float)(1.0 / sum);

    for (int64_t d = 0; d < hd; d++) out[d] = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        const float p = round_h1(w[j] * inv);
        const half_t* vj = v + j * v_stride;
        for (int64_t d = 0; d < hd4; d += 4) vst1q_f32(out + d, vfmaq_n_f32(vld1q_f32(out + d), load_h(vj + d), p));
        for (int64_t d = hd4; d < hd; d++) out[d] += p * fp16_to_fp32(vj[d]);
    }
}

}  // namespace

void LL_REGISTER(attn)(KernelSet* ks) { ks->attn[TYPE_F16] = attn_f16; }

}  // namespace ll
