// NEON attention leaf (compiled as neon and dotprod) for F16 caches: the
// scalar reference's arithmetic (ggml's, see ggml_math.h) with the same
// roundings in the same order, so results are bit-identical to it.  The
// O(n * hd) work is vectorised: K·q follows ggml_vec_dot_f16's four 8-lane
// accumulators (eight 4-lane ones here), or for a batch tinyBLAS's one (two
// 4-lane ones), and V·weights keeps one partial sum per cell slot (cell mod
// 32, or mod 8 for a batch) across head dimensions.
#include <arm_neon.h>

#include <cmath>
#include <cstring>

#include "../ggml_math.h"
#include "../kernels.h"

namespace ll {
namespace {

inline float32x4_t load_h(const half_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }

constexpr int64_t MAX_HD = 1024;  // the bindings refuse larger heads

// ggml_vec_dot_f16(hd, k, qh) in ggml's x86 order
inline float dot_kq(int64_t hd, const half_t* k, const float* qh) {
    const int64_t np = hd & ~int64_t(31);
    float32x4_t acc[8];
    for (int a = 0; a < 8; a++) acc[a] = vdupq_n_f32(0.0f);
    for (int64_t i = 0; i < np; i += 32)
        for (int a = 0; a < 8; a++) acc[a] = vfmaq_f32(acc[a], load_h(k + i + 4 * a), vld1q_f32(qh + i + 4 * a));
    float lanes[32];
    for (int a = 0; a < 8; a++) vst1q_f32(lanes + 4 * a, acc[a]);
    double sum = (double)ggml_reduce4<8>(lanes, 1);
    for (int64_t i = np; i < hd; i++) sum += (double)(fp16_to_fp32(k[i]) * qh[i]);
    return (float)sum;
}

// tinyBLAS's K·q for a batch (hd a multiple of 8): one 8-lane accumulator, ggml_hsum8's adds
inline float dot_kq_batch(int64_t hd, const half_t* k, const float* qh) {
    float32x4_t lo = vdupq_n_f32(0.0f), hi = lo;
    for (int64_t i = 0; i < hd; i += 8) {
        lo = vfmaq_f32(lo, load_h(k + i), vld1q_f32(qh + i));
        hi = vfmaq_f32(hi, load_h(k + i + 4), vld1q_f32(qh + i + 4));
    }
    const float32x4_t t = vaddq_f32(lo, hi);
    return (vgetq_lane_f32(t, 0) + vgetq_lane_f32(t, 2)) + (vgetq_lane_f32(t, 1) + vgetq_lane_f32(t, 3));
}

void attn_f16(int64_t n, int64_t hd, const float* q, const void* kp, size_t k_stride, const void* vp, size_t v_stride, float scale,
              int64_t first, bool batch, float* scratch, float* out) {
    const half_t* k = static_cast<const half_t*>(kp);
    const half_t* v = static_cast<const half_t*>(vp);
    int64_t lead;
    const int64_t cells = kv_cells(first, n, &lead);
    const bool kq_tiny = batch && hd % 8 == 0, kqv_tiny = batch && hd % 4 == 0;  // as in the scalar reference
    const int n_slots = kqv_tiny ? 8 : 32;
    float* w = scratch;                   // [cells] softmax weights
    float* s = scratch + cells;           // [n] scores
    float* slots = scratch + 2 * n + 128;  // [n_slots][hd] partial sums of V·w

    float qh[MAX_HD];
    for (int64_t d = 0; d < hd; d++) qh[d] = fp16_to_fp32(fp32_to_fp16(q[d]));
    for (int64_t i = 0; i < n; i++) s[i] = (kq_tiny ? dot_kq_batch(hd, k + i * k_stride, qh) : dot_kq(hd, k + i * k_stride, qh)) * scale;
    ggml_softmax_cells<8>(s, n, lead, cells, w);

    std::memset(slots, 0, sizeof(float) * n_slots * hd);
    const int64_t hd4 = hd & ~int64_t(3);
    for (int64_t i = 0; i < n; i++) {
        const int64_t a = lead + i;
        float* acc = slots + (a % n_slots) * hd;
        const half_t* vi = v + i * v_stride;
        int64_t d = 0;
        for (; d < hd4; d += 4) vst1q_f32(acc + d, vfmaq_n_f32(vld1q_f32(acc + d), load_h(vi + d), w[a]));
        for (; d < hd; d++) acc[d] = std::fmaf(fp16_to_fp32(vi[d]), w[a], acc[d]);
    }
    // ggml's reduction tree per output, 4 outputs at a time (same adds, same order)
    auto S = [&](int slot, int64_t d) { return vld1q_f32(slots + slot * hd + d); };
    int64_t d = 0;
    if (kqv_tiny) {  // ggml_hsum8's adds over the 8 slots, 4 outputs at a time (hd is a multiple of 4 here)
        for (; d < hd4; d += 4) {
            const float32x4_t t0 = vaddq_f32(S(0, d), S(4, d)), t1 = vaddq_f32(S(1, d), S(5, d));
            const float32x4_t t2 = vaddq_f32(S(2, d), S(6, d)), t3 = vaddq_f32(S(3, d), S(7, d));
            vst1q_f32(out + d, vaddq_f32(vaddq_f32(t0, t2), vaddq_f32(t1, t3)));
        }
        return;
    }
    for (; d < hd4; d += 4) {
        float32x4_t r[8];
        for (int l = 0; l < 8; l++) r[l] = vaddq_f32(vaddq_f32(S(l, d), S(16 + l, d)), vaddq_f32(S(8 + l, d), S(24 + l, d)));
        const float32x4_t t0 = vaddq_f32(r[0], r[4]), t1 = vaddq_f32(r[1], r[5]), t2 = vaddq_f32(r[2], r[6]), t3 = vaddq_f32(r[3], r[7]);
        vst1q_f32(out + d, vaddq_f32(vaddq_f32(t0, t1), vaddq_f32(t2, t3)));
    }
    for (; d < hd; d++) out[d] = ggml_reduce4<8>(slots + d, hd);
}

}  // namespace

void LL_REGISTER(attn)(KernelSet* ks) { ks->attn[TYPE_F16] = attn_f16; }

}  // namespace ll
