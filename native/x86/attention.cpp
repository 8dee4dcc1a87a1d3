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
constexpr int64_t LONG_ROUNDS = 2;     // cells per slot from which V·w goes through memory

// ggml_vec_dot_f16(hd, k, qh): four L-lane accumulators over chunks of 4L, its reduction tree, double tail
inline float dot_kq(int64_t hd, const half_t* k, const float* qh) {
    const int64_t np = hd & ~(DOT_STEP - 1);
    double sum = (double)ggml_vec_dot_chunks(hd, [k](int64_t i) { return load_h(k + i); }, qh);
    for (int64_t i = np; i < hd; i++) sum += (double)(fp16_to_fp32(k[i]) * qh[i]);
    return (float)sum;
}

// tinyBLAS's K·q for a batch (hd a multiple of L): one L-lane accumulator,
// its halves added (hsum_ggml of it is the dot)
inline __m256 dot_kq_batch_lanes(int64_t hd, const half_t* k, const float* qh) {
    __m256 a[GGML_HALVES];
    for (auto& h : a) h = _mm256_setzero_ps();
    for (int64_t i = 0; i < hd; i += GGML_LANES)
        for (int h = 0; h < GGML_HALVES; h++) a[h] = _mm256_fmadd_ps(load_h(k + i + 8 * h), _mm256_loadu_ps(qh + i + 8 * h), a[h]);
    return _mm256_add_ps(a[0], a[1]);
}

// 8 outputs of ggml's horizontal sum over L slots (t[l] holds slot l's partial sums)
inline __m256 hsum_slots(const __m256* t) {
    __m256 v[8];
    for (int l = 0; l < 8; l++) v[l] = _mm256_add_ps(t[l], t[l + 8]);
    const __m256 t0 = _mm256_add_ps(v[0], v[4]), t1 = _mm256_add_ps(v[1], v[5]);
    const __m256 t2 = _mm256_add_ps(v[2], v[6]), t3 = _mm256_add_ps(v[3], v[7]);
    return _mm256_add_ps(_mm256_add_ps(t0, t2), _mm256_add_ps(t1, t3));
}

// One slot's share of V·w over 8 * NV head dimensions, in registers:
// acc = fma(v_i, w_i, acc) over its cells i = i0, i0 + step, ... < n, from zero.
template <int NV>
__attribute__((always_inline)) inline void v_chain(int64_t n, int64_t i0, int64_t step, const half_t* v, size_t v_stride, const float* w,
                                                   __m256* a) {
    __m256 acc[NV];
    for (int g = 0; g < NV; g++) acc[g] = _mm256_setzero_ps();
    for (int64_t i = i0; i < n; i += step) {
        const __m256 p = _mm256_set1_ps(w[i]);
        const half_t* vi = v + i * v_stride;
        for (int g = 0; g < NV; g++) acc[g] = _mm256_fmadd_ps(load_h(vi + 8 * g), p, acc[g]);
    }
    for (int g = 0; g < NV; g++) a[g] = acc[g];
}

// ggml's reduction of 8 outputs over L slots after its first level: t[l]
// holds the first level's sums of slot lane l (the four accumulators of
// ggml_vec_dot_f16 added, or tinyBLAS's one accumulator).
inline __m256 reduce_slots(const __m256* t) {
    if (GGML_LANES == 16) return hsum_slots(t);
    // GGML_F32x8_REDUCE's hadds: (r0+r4 + r1+r5) + (r2+r6 + r3+r7)
    const __m256 t0 = _mm256_add_ps(t[0], t[4]), t1 = _mm256_add_ps(t[1], t[5]);
    const __m256 t2 = _mm256_add_ps(t[2], t[6]), t3 = _mm256_add_ps(t[3], t[7]);
    return _mm256_add_ps(_mm256_add_ps(t0, t1), _mm256_add_ps(t2, t3));
}

// V·w for 8 * NV head dimensions over few cells per slot: each slot's chain
// (v_chain; slot l's first cell first[l]) with the tree's first level taken
// in registers as the chains come, the rest through t, [L][8 * NV].  (Every
// slot's sums stored and reloaded for the tree took as many instructions as
// the products at a decode step's few cells per slot.)
template <int NV>
__attribute__((always_inline)) inline void v_short(int64_t n, const int64_t* first, int n_slots, const half_t* v, size_t v_stride,
                                                   const float* w, float* t, float* out) {
    constexpr int L = GGML_LANES;
    for (int l = 0; l < L; l++) {
        __m256 a[NV];
        v_chain<NV>(n, first[l], n_slots, v, v_stride, w, a);
        if (n_slots == 4 * L) {  // (S(l) + S(2L+l)) + (S(L+l) + S(3L+l))
            __m256 b[NV], c[NV], e[NV];
            v_chain<NV>(n, first[2 * L + l], n_slots, v, v_stride, w, b);
            for (int g = 0; g < NV; g++) a[g] = _mm256_add_ps(a[g], b[g]);
            v_chain<NV>(n, first[L + l], n_slots, v, v_stride, w, c);
            v_chain<NV>(n, first[3 * L + l], n_slots, v, v_stride, w, e);
            for (int g = 0; g < NV; g++) a[g] = _mm256_add_ps(a[g], _mm256_add_ps(c[g], e[g]));
        }
        for (int g = 0; g < NV; g++) _mm256_storeu_ps(t + (l * NV + g) * 8, a[g]);
    }
    for (int g = 0; g < NV; g++) {
        __m256 tl[L];
        for (int l = 0; l < L; l++) tl[l] = _mm256_loadu_ps(t + (l * NV + g) * 8);
        _mm256_storeu_ps(out + 8 * g, reduce_slots(tl));
    }
}

// V·w over hd8 head dimensions (a multiple of 8) where slots have many cells:
// each slot's chain 64 dimensions at a time into slots[slot][hd], then the
// tree over them from memory (the stores amortized over the chains).
inline void v_long(int64_t n, int64_t hd, int64_t hd8, const int64_t* first, int n_slots, const half_t* v, size_t v_stride,
                   const float* w, float* slots, float* out) {
    constexpr int L = GGML_LANES;
    for (int slot = 0; slot < n_slots; slot++) {
        float* acc = slots + slot * hd;
        int64_t d = 0;
        for (; d + 64 <= hd8; d += 64) {
            __m256 a[8];
            v_chain<8>(n, first[slot], n_slots, v + d, v_stride, w, a);
            for (int g = 0; g < 8; g++) _mm256_storeu_ps(acc + d + 8 * g, a[g]);
        }
        for (; d < hd8; d += 8) {
            __m256 a;
            v_chain<1>(n, first[slot], n_slots, v + d, v_stride, w, &a);
            _mm256_storeu_ps(acc + d, a);
        }
    }
    auto S = [&](int slot, int64_t d) { return _mm256_loadu_ps(slots + slot * hd + d); };
    for (int64_t d = 0; d < hd8; d += 8) {
        __m256 t[L];
        for (int l = 0; l < L; l++)
            t[l] = n_slots == L ? S(l, d) : _mm256_add_ps(_mm256_add_ps(S(l, d), S(2 * L + l, d)), _mm256_add_ps(S(L + l, d), S(3 * L + l, d)));
        _mm256_storeu_ps(out + d, reduce_slots(t));
    }
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
    // Eight cells' dots at a time where each is one vector before its
    // horizontal sum (tinyBLAS's, or ggml_vec_dot_f16's without a tail):
    // the eight sums in one shuffle tree (hsum8_ggml).
    const bool by_eight = kq_tiny || hd % DOT_STEP == 0;
    const __m256 vscale = _mm256_set1_ps(scale);
    float mx = -INFINITY;
    auto scores = [&](auto cold) {  // the loop compiled twice, with the prefetches and without
        auto fetch = [&](int64_t i) {
            if constexpr (decltype(cold)::value) {
                if (i + PREFETCH_ROWS < n) prefetch(k + (i + PREFETCH_ROWS) * k_stride, 0);
                prefetch(v + i * v_stride, 1);
            }
        };
        for (int64_t i = 0; cold && i < std::min(n, PREFETCH_ROWS); i++) prefetch(k + i * k_stride, 0);
        int64_t i = 0;
        if (by_eight) {
            __m256 vmx = _mm256_set1_ps(-INFINITY);
            for (; i + 8 <= n; i += 8) {
                __m256 y[8];
                for (int c = 0; c < 8; c++) {
                    fetch(i + c);
                    const half_t* kc = k + (i + c) * k_stride;
                    y[c] = kq_tiny ? dot_kq_batch_lanes(hd, kc, qh) : ggml_vec_dot_lanes(hd, [kc](int64_t d) { return load_h(kc + d); }, qh);
                }
                const __m256 sc = _mm256_mul_ps(hsum8_ggml(y), vscale);
                _mm256_storeu_ps(s + i, sc);
                vmx = _mm256_max_ps(sc, vmx);  // a NaN score is passed over, as fmax does
            }
            alignas(32) float m8[8];
            _mm256_store_ps(m8, vmx);
            for (float m : m8) mx = fmax_inline(mx, m);
        }
        for (; i < n; i++) {
            fetch(i);
            const half_t* ki = k + i * k_stride;
            const float dot = kq_tiny ? hsum_ggml(dot_kq_batch_lanes(hd, ki, qh)) : dot_kq(hd, ki, qh);
            mx = fmax_inline(mx, s[i] = dot * scale);
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

    // V·w: few cells per slot (a decode step's case) with the tree's first
    // level in registers, 32 head dimensions at a time (16 where registers
    // are fewer); from LONG_ROUNDS cells per slot, through memory.  The
    // whole kernel against all-through-memory and one dot per cell, on a
    // decode step's cold cache (4 sequences, 9 heads over 3 KV heads, avx512):
    // hd 64 at 62 / 128 / 300 / 500 cells -19% / -25% / -3% / -5%, hd 256 at
    // 62 cells -32%; but hd 128 at 250-400 cells and hd 256 at 200 +5-13%,
    // not understood.
    int64_t first_cell[DOT_STEP];  // slot l's first cell: (lead + first_cell[l]) % n_slots == l
    first_cell[0] = (n_slots - lead % n_slots) % n_slots;  // one division: a decode step has ~10^3 heads
    for (int l = 1; l < n_slots; l++) first_cell[l] = first_cell[l - 1] + 1 == n_slots ? 0 : first_cell[l - 1] + 1;
    int64_t d = 0;
    if (lead + n > LONG_ROUNDS * n_slots) {
        v_long(n, hd, hd8, first_cell, n_slots, v, v_stride, w + lead, slots, out);
        d = hd8;
    }
#if defined(__AVX512F__)
    constexpr int NV = 4;
#else
    constexpr int NV = 2;
#endif
    for (; d + 8 * NV <= hd8; d += 8 * NV) v_short<NV>(n, first_cell, n_slots, v + d, v_stride, w + lead, slots, out + d);
    for (; d < hd8; d += 8) v_short<1>(n, first_cell, n_slots, v + d, v_stride, w + lead, slots, out + d);
    // a head size that is not a multiple of 8: the last dimensions one by one, ggml's tree over the slots
    for (; d < hd; d++) {
        for (int l = 0; l < n_slots; l++) {
            float acc = 0.0f;
            for (int64_t i = first_cell[l]; i < n; i += n_slots) acc = std::fmaf(fp16_to_fp32(v[i * v_stride + d]), w[lead + i], acc);
            slots[l] = acc;
        }
        out[d] = kqv_tiny ? ggml_hsum<GGML_LANES>(slots) : ggml_reduce4<GGML_LANES>(slots, 1);
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
