// AVX2 attention leaf (compiled as avx2 and avx512): the scalar reference's
// arithmetic 8 lanes at a time (fp16 rounding through F16C).
#include <immintrin.h>

#include <cmath>

#include "../kernels.h"

namespace ll {
namespace {

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

inline __m256 load_h(const half_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline __m256 round_h(__m256 v) { return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT)); }
inline float round_h1(float x) { return fp16_to_fp32(fp32_to_fp16(x)); }

constexpr int64_t MAX_HD = 1024;  // the bindings refuse larger heads

void attn_f16(int64_t n, int64_t hd, const float* q, const void* kp, size_t k_stride, const void* vp, size_t v_stride, float scale,
              float* w, float* out) {
    const half_t* k = static_cast<const half_t*>(kp);
    const half_t* v = static_cast<const half_t*>(vp);
    const int64_t hd8 = hd & ~int64_t(7);
    alignas(32) float qh[MAX_HD];
    for (int64_t d = 0; d < hd8; d += 8) _mm256_store_ps(qh + d, round_h(_mm256_loadu_ps(q + d)));
    for (int64_t d = hd8; d < hd; d++) qh[d] = round_h1(q[d]);

    float mx = -INFINITY;
    for (int64_t j = 0; j < n; j++) {
        const half_t* kj = k + j * k_stride;
        __m256 acc = _mm256_setzero_ps();
        for (int64_t d = 0; d < hd8; d += 8) acc = _mm256_fmadd_ps(_mm256_load_ps(qh + d), load_h(kj + d), acc);
        float s = hsum(acc);
        for (int64_t d = hd8; d < hd; d++) s += qh[d] * fp16_to_fp32(kj[d]);
        w[j] = s * scale;
        mx = std::fmax(mx, w[j]);
    }
    double sum = 0.0;
    for (int64_t j = 0; j < n; j++) sum += (double)(w[j] = std::exp(w[j] - mx));
    const float inv = (float)(1.0 / sum);

    for (int64_t d = 0; d < hd; d++) out[d] = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        const float p = round_h1(w[j] * inv);
        const __m256 vp8 = _mm256_set1_ps(p);
        const half_t* vj = v + j * v_stride;
        for (int64_t d = 0; d < hd8; d += 8) _mm256_storeu_ps(out + d, _mm256_fmadd_ps(vp8, load_h(vj + d), _mm256_loadu_ps(out + d)));
        for (int64_t d = hd8; d < hd; d++) out[d] += p * fp16_to_fp32(vj[d]);
    }
}

}  // namespace

void LL_REGISTER(attn)(KernelSet* ks) {
    ks->attn[TYPE_F16] = attn_f16;  // F32 caches use the scalar reference
}

}  // namespace ll
