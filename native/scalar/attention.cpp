// Scalar reference of the attention leaf, following ggml's non-flash path:
// KQ = K·q with q rounded to the cache type, softmax(KQ * scale) with its sum
// in double, weights rounded to the cache type, then V·weights.
#include <cmath>

#include "../kernels.h"

namespace ll {
namespace {

static inline float round_f16(float x) { return fp16_to_fp32(fp32_to_fp16(x)); }

// w[0..n) = softmax(w * scale), as ggml_soft_max_f32 computes it
static inline void softmax(float* w, int64_t n, float scale) {
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; j++) mx = std::fmax(mx, w[j] *= scale);
    double sum = 0.0;
    for (int64_t j = 0; j < n; j++) sum += (double)(w[j] = std::exp(w[j] - mx));
    const float inv = (float)(1.0 / sum);
    for (int64_t j = 0; j < n; j++) w[j] *= inv;
}

void attn_f16(int64_t n, int64_t hd, const float* q, const void* kp, size_t k_stride, const void* vp, size_t v_stride, float scale,
              float* w, float* out) {
    const half_t* k = static_cast<const half_t*>(kp);
    const half_t* v = static_cast<const half_t*>(vp);
    for (int64_t j = 0; j < n; j++) {
        float s = 0.0f;
        for (int64_t d = 0; d < hd; d++) s += round_f16(q[d]) * fp16_to_fp32(k[j * k_stride + d]);
        w[j] = s;
    }
    softmax(w, n, scale);
    for (int64_t d = 0; d < hd; d++) out[d] = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        const float p = round_f16(w[j]);
        for (int64_t d = 0; d < hd; d++) out[d] += p * fp16_to_fp32(v[j * v_stride + d]);
    }
}

void attn_f32(int64_t n, int64_t hd, const float* q, const void* kp, size_t k_stride, const void* vp, size_t v_stride, float scale,
              float* w, float* out) {
    const float* k = static_cast<const float*>(kp);
    const float* v = static_cast<const float*>(vp);
    for (int64_t j = 0; j < n; j++) {
        float s = 0.0f;
        for (int64_t d = 0; d < hd; d++) s += q[d] * k[j * k_stride + d];
        w[j] = s;
    }
    softmax(w, n, scale);
    for (int64_t d = 0; d < hd; d++) out[d] = 0.0f;
    for (int64_t j = 0; j < n; j++)
        for (int64_t d = 0; d < hd; d++) out[d] += w[j] * v[j * v_stride + d];
}

}  // namespace

void register_attn_scalar(KernelSet* ks) {
    ks->attn[TYPE_F16] = attn_f16;
    ks->attn[TYPE_F32] = attn_f32;
}

}  // namespace ll
