// x86 attention leaf (compiled as avx2 and avx512) for F16 caches: the scalar
// reference's arithmetic (ggml's, see ggml_math.h) at the build's lane width L
// (ggml_vec_dot.h), with the same roundings in the same order, so results are
// bit-identical.  V·weights runs across head dimensions with one partial sum
// per cell slot: cell mod 4L, as ggml_vec_dot_f16 groups each output's terms,
// or cell mod L, as tinyBLAS's single L-lane accumulator does for a batch.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "../ggml_math.h"
#include "../kernels.h"
#include "ggml_vec_dot.h"

namespace ll {
namespace {

inline __m256 load_h(const half_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline __m256 round_h(__m256 v) { return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT)); }

// 2^n for integral n in [-126, 127], exactly
inline __m256 pow2(__m256 n) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}

// ggml_v_expf (AVX-512): the polynomial carries the 1, and 2^n is applied with
// one rounding as VSCALEFPS does; where 2^n is not a normal float it is
// applied in two exact power-of-two steps, of which only the second rounds.
inline __m256 v_expf512(__m256 x) {
    const __m256 r = _mm256_set1_ps(0x1.8p23f);
    const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), r);
    const __m256 n = _mm256_sub_ps(z, r);
    const __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f), _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
    const __m256 u = _mm256_mul_ps(b, b);
    const __m256 j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f)), u,
                        _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f))),
        u, _mm256_fmadd_ps(_mm256_set1_ps(0x1.ffffecp-1f), b, _mm256_set1_ps(1.0f)));
    const __m256 an = _mm256_andnot_ps(_mm256_set1_ps(-0.f), n);
    const __m256 wide = _mm256_cmp_ps(an, _mm256_set1_ps(126), _CMP_GT_OQ);
    if (!_mm256_movemask_ps(wide)) return _mm256_mul_ps(j, pow2(n));
    const __m256 pos = _mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_GT_OQ);
    const __m256 step = _mm256_and_ps(wide, _mm256_blendv_ps(_mm256_set1_ps(-100), _mm256_set1_ps(100), pos));
    const __m256 far = _mm256_cmp_ps(an, _mm256_set1_ps(192), _CMP_GT_OQ);
    const __m256 n1 = _mm256_andnot_ps(far, _mm256_sub_ps(n, step));  // far lanes: any finite exponent
    const __m256 res = _mm256_mul_ps(_mm256_mul_ps(j, pow2(n1)), pow2(step));
    return _mm256_blendv_ps(res, _mm256_and_ps(pos, _mm256_set1_ps(INFINITY)), far);
}

// std::fmax without its libm call (a call per score, 1.5% of a 512-token
// prompt's time): the larger, or the operand that is not NaN.
inline float fmax_inline(float a, float b) { return b > a || a != a ? b : a; }

constexpr int64_t MAX_HD = 1024;  // the bindings refuse larger heads
constexpr int64_t DOT_STEP = 4 * GGML_LANES;  // ggml_vec_dot_f16's chunk
constexpr int64_t PREFETCH_ROWS = 8;  // K rows asked for ahead of their dot

// ggml_vec_dot_f16(hd, k, qh): four L-lane accumulators over chunks of 4L, its reduction tree, double tail
inline float dot_kq(int64_t hd, const half_t* k, const float* qh) {
    const int64_t np = hd & ~(DOT_STEP - 1);
    double sum = (double)ggml_vec_dot_chunks(hd, [k](int64_t i) { return load_h(k + i); }, qh);
    for (int64_t i = np; i < hd; i++) sum += (double)(fp16_to_fp32(k[i]) * qh[i]);
    return (float)sum;
}

// tinyBLAS's K·q for a batch (hd a multiple of L): one L-lane accumulator, its horizontal sum
inline float dot_kq_batch(int64_t hd, const half_t* k, const float* qh) {
    __m256 a[GGML_HALVES];
    for (auto& h : a) h = _mm256_setzero_ps();
    for (int64_t i = 0; i < hd; i += GGML_LANES)
        for (int h = 0; h < GGML_HALVES; h++) a[h] = _mm256_fmadd_ps(load_h(k + i + 8 * h), _mm256_loadu_ps(qh + i + 8 * h), a[h]);
    return hsum_lanes(a);
}

// 8 outputs of ggml's horizontal sum over L slots (t[l] holds slot l's partial sums)
inline __m256 hsum_slots(const __m256* t) {
    __m256 v[8];
    for (int l = 0; l < 8; l++) v[l] = _mm256_add_ps(t[l], t[l + 8]);
    const __m256 t0 = _mm256_add_ps(v[0], v[4]), t1 = _mm256_add_ps(v[1], v[5]);
    const __m256 t2 = _mm256_add_ps(v[2], v[6]), t3 = _mm256_add_ps(v[3], v[7]);
    return _mm256_add_ps(_mm256_add_ps(t0, t2), _mm256_add_ps(t1, t3));
}

// One slot's share of V·w over 8 * G head dimensions: acc = fma(v_i, w_i,
// acc) over its cells i = i0, i0 + step, ..., from zero.
template <int G>
inline void v_chain(int64_t n, int64_t i0, int64_t step, const half_t* v, size_t v_stride, const float* w, float* out) {
    __m256 a[G];
    for (int g = 0; g < G; g++) a[g] = _mm256_setzero_ps();
    for (int64_t i = i0; i < n; i += step) {
        const __m256 p = _mm256_set1_ps(w[i]);
        const half_t* vi = v + i * v_stride;
        for (int g = 0; g < G; g++) a[g] = _mm256_fmadd_ps(load_h(vi + 8 * g), p, a[g]);
    }
    for (int g = 0; g < G; g++) _mm256_storeu_ps(out + 8 * g, a[g]);
}

void attn_f16(int64_t n, int64_t hd, const float* q, const void* kp, size_t k_stride, const void* vp, size_t v_stride, float scale,
              int64_t first, bool batch, float* scratch, float* out) {
    const half_t* k = static_cast<const half_t*>(kp);
    const half_t* v = static_cast<const half_t*>(vp);
    int64_t lead;
    const int64_t cells = kv_cells(first, n, &lead);
    const bool kq_tiny = batch && hd % GGML_LANES == 0, kqv_tiny = batch && hd % 4 == 0;  // as in the scalar reference
    const int n_slots = kqv_tiny ? GGML_LANES : DOT_STEP;  // cells is a multiple of both: no tail
    float* w = scratch;             // [cells] softmax weights
    float* s = scratch + cells;     // [n] scores
    float* slots = scratch + 2 * n + 128;  // [n_slots][hd] partial sums of V·w

    alignas(32) float qh[MAX_HD];
    const int64_t hd8 = hd & ~int64_t(7);
    for (int64_t d = 0; d < hd8; d += 8) _mm256_store_ps(qh + d, round_h(_mm256_loadu_ps(q + d)));
    for (int64_t d = hd8; d < hd; d++) qh[d] = fp16_to_fp32(fp32_to_fp16(q[d]));

    // A decode token's cache rows are cold by the time a layer's attention
    // runs (a step's weights have streamed through the caches since): K rows
    // are asked for PREFETCH_ROWS ahead of their dot and V rows as their
    // scores come, so the loops below do not wait on memory row by row
    // (SmolLM2 decode, paired A/Bs in a fast and a slow spell of the VM:
    // 4 sequences +4.4% and +0.6%, one +3.0% and +1.7%; Gemma 3 ±0).  A
    // prompt's rows were just written and are in cache: its loop has no
    // prefetches (prefetching there, or testing inside the loop whether to,
    // cost pp512 2-5%).
    const int64_t row_bytes = hd * (int64_t)sizeof(half_t);
    auto prefetch = [row_bytes](const half_t* row, int hint) {
        for (int64_t o = 0; o < row_bytes; o += 64)
            hint == 0 ? _mm_prefetch(reinterpret_cast<const char*>(row) + o, _MM_HINT_T0)
                      : _mm_prefetch(reinterpret_cast<const char*>(row) + o, _MM_HINT_T1);
    };
    float mx = -INFINITY;
    auto scores = [&](auto cold) {  // the loop compiled twice, with the prefetches and without
        for (int64_t i = 0; cold && i < std::min(n, PREFETCH_ROWS); i++) prefetch(k + i * k_stride, 0);
        for (int64_t i = 0; i < n; i++) {
            if constexpr (cold) {
                if (i + PREFETCH_ROWS < n) prefetch(k + (i + PREFETCH_ROWS) * k_stride, 0);
                prefetch(v + i * v_stride, 1);
            }
            mx = fmax_inline(mx, s[i] = (kq_tiny ? dot_kq_batch(hd, k + i * k_stride, qh) : dot_kq(hd, k + i * k_stride, qh)) * scale);
        }
    };
    if (batch) scores(std::false_type{});
    else scores(std::true_type{});
    // Only the lane groups that hold visible cells: the others' weights are
    // exp(-inf) = +0, which adds nothing to the sum (no partial sum is -0),
    // and V·w reads the visible cells' weights alone.
    const int64_t a0 = lead / GGML_LANES * GGML_LANES, a1 = (lead + n + GGML_LANES - 1) / GGML_LANES * GGML_LANES;
    for (int64_t a = a0; a < a1; a++) w[a] = (a >= lead && a < lead + n) ? s[a - lead] - mx : -INFINITY;
    double sum = 0.0;
    for (int64_t a = a0; a < a1; a += GGML_LANES) {
        __m256 e[GGML_HALVES];
        for (int h = 0; h < GGML_HALVES; h++) _mm256_storeu_ps(w + a + 8 * h, e[h] = v_expf512(_mm256_loadu_ps(w + a + 8 * h)));
        sum += (double)hsum_lanes(e);
    }
    const __m256 inv = _mm256_set1_ps((float)(1.0 / sum));
    for (int64_t a = a0; a < a1; a += 8) _mm256_storeu_ps(w + a, round_h(_mm256_mul_ps(_mm256_loadu_ps(w + a), inv)));

    // Slot by slot, its cells' chain in order, 64 head dimensions at a time
    // in registers (through memory, cell by cell, the accumulators' loads and
    // stores took half the attention's time).
    int64_t i0 = (n_slots - lead % n_slots) % n_slots;  // slot 0's first cell: (lead + i0) % n_slots == slot
    for (int slot = 0; slot < n_slots; slot++, i0 = i0 + 1 == n_slots ? 0 : i0 + 1) {
        float* acc = slots + slot * hd;
        int64_t d = 0;
        for (; d + 64 <= hd8; d += 64) v_chain<8>(n, i0, n_slots, v + d, v_stride, w + lead, acc + d);
        for (; d < hd8; d += 8) v_chain<1>(n, i0, n_slots, v + d, v_stride, w + lead, acc + d);
        for (; d < hd; d++) {
            float t = 0.0f;
            for (int64_t i = i0; i < n; i += n_slots) t = std::fmaf(fp16_to_fp32(v[i * v_stride + d]), w[lead + i], t);
            acc[d] = t;
        }
    }
    // ggml's reduction tree per output, 8 outputs at a time (the same adds in the same order)
    auto S = [&](int slot, int64_t d) { return _mm256_loadu_ps(slots + slot * hd + d); };
    for (int64_t d = 0; d < hd8; d += 8) {
        __m256 t[GGML_LANES];
        if (kqv_tiny) {
            for (int l = 0; l < GGML_LANES; l++) t[l] = S(l, d);
            _mm256_storeu_ps(out + d, hsum_slots(t));
            continue;
        }
        constexpr int L = GGML_LANES;
        for (int l = 0; l < L; l++) t[l] = _mm256_add_ps(_mm256_add_ps(S(l, d), S(2 * L + l, d)), _mm256_add_ps(S(L + l, d), S(3 * L + l, d)));
        if (L == 16) {
            _mm256_storeu_ps(out + d, hsum_slots(t));
        } else {  // GGML_F32x8_REDUCE's hadds: (r0+r4 + r1+r5) + (r2+r6 + r3+r7)
            const __m256 t0 = _mm256_add_ps(t[0], t[4]), t1 = _mm256_add_ps(t[1], t[5]);
            const __m256 t2 = _mm256_add_ps(t[2], t[6]), t3 = _mm256_add_ps(t[3], t[7]);
            _mm256_storeu_ps(out + d, _mm256_add_ps(_mm256_add_ps(t0, t1), _mm256_add_ps(t2, t3)));
        }
    }
    for (int64_t d = hd8; d < hd; d++) {
        float lanes[GGML_LANES];
        for (int l = 0; l < GGML_LANES; l++) lanes[l] = slots[l * hd + d];
        out[d] = kqv_tiny ? ggml_hsum<GGML_LANES>(lanes) : ggml_reduce4<GGML_LANES>(slots + d, hd);
    }
}

// x / (1 + expf(-x)) * up, eight lanes at a time: ggml_v_silu's division and
// ggml_vec_swiglu_f32's product, lane by lane as the 16-lane build does them.
void swiglu(int64_t n, float* gate, const float* up) {
    const __m256 one = _mm256_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 8) {
        const __m256 x = _mm256_loadu_ps(gate + i);
        const __m256 e = v_expf512(_mm256_xor_ps(x, _mm256_set1_ps(-0.0f)));  // -x
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i)));
    }
}

}  // namespace

void LL_REGISTER(attn)(KernelSet* ks) {
    ks->lanes = GGML_LANES;
    ks->attn[TYPE_F16] = attn_f16;  // F32 caches use the scalar reference
    ks->swiglu = swiglu;
}

}  // namespace ll
