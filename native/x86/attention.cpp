// AVX2 attention leaf (compiled as avx2 and avx512) for F16 caches: the scalar
// reference's arithmetic (ggml's, see ggml_math.h) with the same roundings in
// the same order, so results are bit-identical.  V·weights runs across head
// dimensions with one partial sum per cell slot: cell mod 32, as
// ggml_vec_dot_f16 groups each output's terms, or cell mod 8, as tinyBLAS's
// single 8-lane accumulator does for a batch.
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "../ggml_math.h"
#include "../kernels.h"
#include "ggml_vec_dot.h"

namespace ll {
namespace {

inline __m256 load_h(const half_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline __m256 round_h(__m256 v) { return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT)); }

// ggml_v_expf (AVX2)
inline __m256 v_expf(__m256 x) {
    const __m256 r = _mm256_set1_ps(0x1.8p23f);
    const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), r);
    const __m256 n = _mm256_sub_ps(z, r);
    const __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f), _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
    const __m256i e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    const __m256 k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1))));
    const __m256i c = _mm256_castps_si256(_mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.f), n), _mm256_set1_ps(126), _CMP_GT_OQ));
    const __m256 u = _mm256_mul_ps(b, b);
    const __m256 j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f)), u,
                        _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f))),
        u, _mm256_mul_ps(_mm256_set1_ps(0x1.ffffecp-1f), b));
    if (!_mm256_movemask_ps(_mm256_castsi256_ps(c))) return _mm256_fmadd_ps(j, k, k);
    const __m256i g = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)), _mm256_set1_epi32(0x82000000u));
    const __m256 s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f000000u)));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    const __m256i d = _mm256_castps_si256(_mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.f), n), _mm256_set1_ps(192), _CMP_GT_OQ));
    return _mm256_or_ps(_mm256_and_ps(_mm256_castsi256_ps(d), _mm256_mul_ps(s1, s1)),
                        _mm256_andnot_ps(_mm256_castsi256_ps(d),
                                         _mm256_or_ps(_mm256_and_ps(_mm256_castsi256_ps(c), _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
                                                      _mm256_andnot_ps(_mm256_castsi256_ps(c), _mm256_fmadd_ps(k, j, k)))));
}

inline float hsum_ggml(__m256 v) {  // ggml's 256-bit horizontal add
    __m128 s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

constexpr int64_t MAX_HD = 1024;  // the bindings refuse larger heads

// ggml_vec_dot_f16(hd, k, qh): four 8-lane accumulators over chunks of 32, its reduction tree, double tail
inline float dot_kq(int64_t hd, const half_t* k, const float* qh) {
    const int64_t np = hd & ~int64_t(31);
    double sum = (double)ggml_vec_dot_chunks(hd, [k](int64_t i) { return load_h(k + i); }, qh);
    for (int64_t i = np; i < hd; i++) sum += (double)(fp16_to_fp32(k[i]) * qh[i]);
    return (float)sum;
}

// tinyBLAS's K·q for a batch (hd a multiple of 8): one 8-lane accumulator, its horizontal add
inline float dot_kq_batch(int64_t hd, const half_t* k, const float* qh) {
    __m256 a = _mm256_setzero_ps();
    for (int64_t i = 0; i < hd; i += 8) a = _mm256_fmadd_ps(load_h(k + i), _mm256_loadu_ps(qh + i), a);
    return hsum_ggml(a);
}

void attn_f16(int64_t n, int64_t hd, const float* q, const void* kp, size_t k_stride, const void* vp, size_t v_stride, float scale,
              int64_t first, bool batch, float* scratch, float* out) {
    const half_t* k = static_cast<const half_t*>(kp);
    const half_t* v = static_cast<const half_t*>(vp);
    const int64_t lead = first % 32, cells = (lead + n + 31) & ~int64_t(31);
    const bool kq_tiny = batch && hd % 8 == 0, kqv_tiny = batch && hd % 4 == 0;  // as in the scalar reference
    const int n_slots = kqv_tiny ? 8 : 32;
    float* w = scratch;             // [cells] softmax weights
    float* s = scratch + cells;     // [n] scores
    float* slots = scratch + 2 * n + 64;  // [n_slots][hd] partial sums of V·w

    alignas(32) float qh[MAX_HD];
    const int64_t hd8 = hd & ~int64_t(7);
    for (int64_t d = 0; d < hd8; d += 8) _mm256_store_ps(qh + d, round_h(_mm256_loadu_ps(q + d)));
    for (int64_t d = hd8; d < hd; d++) qh[d] = fp16_to_fp32(fp32_to_fp16(q[d]));

    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++)
        mx = std::fmax(mx, s[i] = (kq_tiny ? dot_kq_batch(hd, k + i * k_stride, qh) : dot_kq(hd, k + i * k_stride, qh)) * scale);
    for (int64_t a = 0; a < cells; a++) w[a] = (a >= lead && a < lead + n) ? s[a - lead] - mx : -INFINITY;
    double sum = 0.0;
    for (int64_t a = 0; a < cells; a += 8) {
        const __m256 e = v_expf(_mm256_loadu_ps(w + a));
        _mm256_storeu_ps(w + a, e);
        sum += (double)hsum_ggml(e);
    }
    const __m256 inv = _mm256_set1_ps((float)(1.0 / sum));
    for (int64_t a = 0; a < cells; a += 8) _mm256_storeu_ps(w + a, round_h(_mm256_mul_ps(_mm256_loadu_ps(w + a), inv)));

    std::memset(slots, 0, sizeof(float) * n_slots * hd);
    for (int64_t i = 0; i < n; i++) {
        const int64_t a = lead + i;
        float* acc = slots + (a % n_slots) * hd;
        const half_t* vi = v + i * v_stride;
        const __m256 p = _mm256_set1_ps(w[a]);
        int64_t d = 0;
        for (; d < hd8; d += 8) _mm256_storeu_ps(acc + d, _mm256_fmadd_ps(load_h(vi + d), p, _mm256_loadu_ps(acc + d)));
        for (; d < hd; d++) acc[d] = std::fmaf(fp16_to_fp32(vi[d]), w[a], acc[d]);
    }
    // ggml's reduction tree per output, 8 outputs at a time (the same adds in the same order)
    auto S = [&](int slot, int64_t d) { return _mm256_loadu_ps(slots + slot * hd + d); };
    int64_t d = 0;
    if (kqv_tiny) {  // tinyBLAS's horizontal add of the 8 lanes, 8 outputs at a time
        for (; d < hd8; d += 8) {
            const __m256 t0 = _mm256_add_ps(S(0, d), S(4, d)), t1 = _mm256_add_ps(S(1, d), S(5, d));
            const __m256 t2 = _mm256_add_ps(S(2, d), S(6, d)), t3 = _mm256_add_ps(S(3, d), S(7, d));
            _mm256_storeu_ps(out + d, _mm256_add_ps(_mm256_add_ps(t0, t2), _mm256_add_ps(t1, t3)));
        }
        float lanes[8];
        for (; d < hd; d++) {
            for (int l = 0; l < 8; l++) lanes[l] = slots[l * hd + d];
            out[d] = ggml_hsum8(lanes);
        }
        return;
    }
    for (; d < hd8; d += 8) {
        __m256 r[8];
        for (int l = 0; l < 8; l++) r[l] = _mm256_add_ps(_mm256_add_ps(S(l, d), S(16 + l, d)), _mm256_add_ps(S(8 + l, d), S(24 + l, d)));
        const __m256 t0 = _mm256_add_ps(r[0], r[4]), t1 = _mm256_add_ps(r[1], r[5]), t2 = _mm256_add_ps(r[2], r[6]), t3 = _mm256_add_ps(r[3], r[7]);
        _mm256_storeu_ps(out + d, _mm256_add_ps(_mm256_add_ps(t0, t1), _mm256_add_ps(t2, t3)));
    }
    for (; d < hd; d++) out[d] = ggml_reduce32(slots + d, hd);
}

}  // namespace

void LL_REGISTER(attn)(KernelSet* ks) {
    ks->attn[TYPE_F16] = attn_f16;  // F32 caches use the scalar reference
}

}  // namespace ll
