// Scalar reference of the attention leaf.  F16 caches follow ggml's non-flash
// path step for step (see ggml_math.h) at a lane width L of 8 or 16: KQ =
// K·fp16(q); softmax over ggml's padded KV range with its expf, summed per
// L cells; V·fp16(weights).  Both products sum in ggml_vec_dot_f16's order for
// a single token and in tinyBLAS's for a batch (where its size conditions
// hold, as in ggml).
#include <cmath>

#include "../ggml_math.h"
#include "../kernels.h"

namespace ll {
namespace {

static inline float round_f16(float x) { return fp16_to_fp32(fp32_to_fp16(x)); }

template <int L>
void attn_f16(int64_t n, int64_t hd, const float* q, const void* kp, size_t k_stride, const void* vp, size_t v_stride, float scale,
              int64_t first, bool batch, float* scratch, float* out) {
    const half_t* k = static_cast<const half_t*>(kp);
    const half_t* v = static_cast<const half_t*>(vp);
    int64_t lead;
    const int64_t cells = kv_cells(first, n, &lead);
    const bool kq_tiny = batch && hd % L == 0, kqv_tiny = batch && hd % 4 == 0;  // tinyBLAS: k % L, m % 4
    float* s = scratch + cells;  // scratch: cells weights, then n scores
    for (int64_t i = 0; i < n; i++) {
        const half_t* ki = k + i * k_stride;
        auto kd = [&](int64_t d) { return fp16_to_fp32(ki[d]); };
        auto qd = [&](int64_t d) { return round_f16(q[d]); };
        s[i] = (kq_tiny ? tinyblas_dot<L>(hd, kd, qd) : ggml_dot_f16<L>(hd, kd, qd)) * scale;
    }
    float* w = scratch;
    ggml_softmax_cells<L>(s, n, lead, cells, w);
    for (int64_t d = 0; d < hd; d++) {
        auto vd = [&](int64_t a) { return a >= lead && a < lead + n ? fp16_to_fp32(v[(a - lead) * v_stride + d]) : 0.0f; };
        auto wd = [&](int64_t a) { return w[a]; };
        out[d] = kqv_tiny ? tinyblas_dot<L>(cells, vd, wd) : ggml_dot_f16<L>(cells, vd, wd);
    }
}

// F32 caches (llama2.c checkpoints): plain float attention, as llama2.c's run.c.
void attn_f32(int64_t n, int64_t hd, const float* q, const void* kp, size_t k_stride, const void* vp, size_t v_stride, float scale,
              int64_t, bool, float* w, float* out) {
    const float* k = static_cast<const float*>(kp);
    const float* v = static_cast<const float*>(vp);
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; j++) {
        float s = 0.0f;
        for (int64_t d = 0; d < hd; d++) s += q[d] * k[j * k_stride + d];
        w[j] = s * scale;
        mx = std::fmax(mx, w[j]);
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < n; j++) sum += (w[j] = std::exp(w[j] - mx));
    for (int64_t j = 0; j < n; j++) w[j] /= sum;
    for (int64_t d = 0; d < hd; d++) out[d] = 0.0f;
    for (int64_t j = 0; j < n; j++)
        for (int64_t d = 0; d < hd; d++) out[d] += w[j] * v[j * v_stride + d];
}

template <int L>
void swiglu(int64_t n, float* gate, const float* up) {
    for (int64_t i = 0; i < n; i++) gate[i] = ggml_silu(gate[i], true, L) * up[i];
}

}  // namespace

void register_attn_scalar(KernelSet* ks) {
    ks->attn[TYPE_F16] = ks->lanes == 16 ? attn_f16<16> : attn_f16<8>;
    ks->attn[TYPE_F32] = attn_f32;
    ks->swiglu = ks->lanes == 16 ? swiglu<16> : swiglu<8>;
}

}  // namespace ll
