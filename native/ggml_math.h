// Scalar statements of ggml's CPU arithmetic where llama.cpp's results depend
// on it: its vectorised expf and the summation orders of its float dot
// products and softmax.  Reproducing them keeps our logits within llama.cpp's
// own noise (the models amplify last-bit differences through every int8
// activation rounding).  Everything is `static inline` (see blocks.h).
//
// Those orders depend on the width of the float vectors llama.cpp was built
// for: `lanes` is 16 for its AVX-512 build (which wrote the reference logits;
// our x86 and scalar paths follow it), where ggml's vec_dot, softmax, SiLU
// and llamafile's tinyBLAS work on 512-bit registers and horizontal sums
// follow _mm512_reduce_add_ps's tree, and 8 for its AVX2 build (our NEON
// paths follow that one).
#pragma once

#include <cmath>
#include <cstdint>

#include "blocks.h"

namespace ll {

// ggml_v_expf (the AVX2 version, 1.5 ulp), lane by lane; fmaf rounds once,
// as the vector FMA does.  exp(-inf) = 0.
static inline float ggml_expf(float x) {
    const float r = 0x1.8p23f;
    const float z = std::fmaf(x, 0x1.715476p+0f, r);
    const float n = z - r;
    const float b = std::fmaf(-n, 0x1.7f7d1cp-20f, std::fmaf(-n, 0x1.62e4p-1f, x));
    const uint32_t e = fp32_to_bits(z) << 23;
    const float k = fp32_from_bits(e + fp32_to_bits(1.0f));
    const float u = b * b;
    const float j = std::fmaf(std::fmaf(std::fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, std::fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)), u,
                              0x1.ffffecp-1f * b);
    if (!(std::fabs(n) > 126.0f)) return std::fmaf(j, k, k);
    const uint32_t g = n <= 0.0f ? 0x82000000u : 0u;
    const float s1 = fp32_from_bits(g + 0x7f000000u);
    if (std::fabs(n) > 192.0f) return s1 * s1;
    const float s2 = fp32_from_bits(e - g);
    return std::fmaf(s2, j, s2) * s1;
}

// ggml_v_expf's AVX-512 version, lane by lane: the same reduction, but the
// polynomial carries the 1 and _mm512_scalef_ps applies 2^n (ldexp rounds
// a subnormal result as VSCALEFPS does); beyond |n| > 192, 0 or infinity.
static inline float ggml_expf512(float x) {
    const float r = 0x1.8p23f;
    const float z = std::fmaf(x, 0x1.715476p+0f, r);
    const float n = z - r;
    const float b = std::fmaf(-n, 0x1.7f7d1cp-20f, std::fmaf(-n, 0x1.62e4p-1f, x));
    const float u = b * b;
    const float j = std::fmaf(std::fmaf(std::fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, std::fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)), u,
                              std::fmaf(0x1.ffffecp-1f, b, 1.0f));
    if (std::fabs(n) > 192.0f) return n <= 0.0f ? 0.0f : INFINITY;
    return std::ldexp(j, (int)n);
}

static inline float ggml_expf_lanes(float x, int lanes) { return lanes == 16 ? ggml_expf512(x) : ggml_expf(x); }

// ggml's SiLU in SwiGLU: x / (1 + ggml_expf(-x)) for whole groups of `lanes`,
// libm's expf for the tail of a row.
static inline float ggml_silu(float x, bool vector_lane, int lanes) {
    return x / (1.0f + (vector_lane ? ggml_expf_lanes(-x, lanes) : std::exp(-x)));
}

// Sum of 8 floats in the order of ggml's 256-bit horizontal add (hsum).
static inline float ggml_hsum8(const float* v) {
    const float a0 = v[0] + v[4], a1 = v[1] + v[5], a2 = v[2] + v[6], a3 = v[3] + v[7];
    return (a0 + a2) + (a1 + a3);
}

// Horizontal sum of one vector of `lanes` floats: hsum for 8, and for 16
// _mm512_reduce_add_ps (the halves added, then the same tree as hsum).
template <int L>
static inline float ggml_hsum(const float* v) {
    static_assert(L == 8 || L == 16, "ggml's x86 vectors hold 8 or 16 floats");
    if (L == 8) return ggml_hsum8(v);
    float t[8];
    for (int l = 0; l < 8; l++) t[l] = v[l] + v[l + 8];
    return ggml_hsum8(t);
}

// The reduction tree of ggml_vec_dot_f32/f16's four L-lane accumulators:
// a[k * stride] is accumulator k / L, lane k % L.  GGML_F32_VEC_REDUCE adds
// accumulators 2 and 3 into 0 and 1, then 1 into 0; the last horizontal sum
// is two _mm_hadd_ps for AVX2 (GGML_F32x8_REDUCE), _mm512_reduce_add_ps for
// AVX-512.
template <int L>
static inline float ggml_reduce4(const float* a, int64_t stride) {
    float r[L];
    for (int l = 0; l < L; l++)
        r[l] = (a[l * stride] + a[(2 * L + l) * stride]) + (a[(L + l) * stride] + a[(3 * L + l) * stride]);
    if (L == 16) return ggml_hsum<16>(r);
    return ((r[0] + r[4]) + (r[1] + r[5])) + ((r[2] + r[6]) + (r[3] + r[7]));
}

// ggml_vec_dot_f16: four L-lane FMA accumulators over chunks of 4L, the tree
// above, the tail added in double.  x(i) and y(i) return the i-th
// (fp16-exact) operands as floats.
template <int L, typename X, typename Y>
static inline float ggml_dot_f16(int64_t n, X x, Y y) {
    const int64_t np = n & ~int64_t(4 * L - 1);
    float acc[4 * L] = {0};  // acc[L * a + l]: accumulator a, lane l
    for (int64_t i = 0; i < np; i += 4 * L)
        for (int a = 0; a < 4 * L; a++) acc[a] = std::fmaf(x(i + a), y(i + a), acc[a]);
    double sum = (double)ggml_reduce4<L>(acc, 1);
    for (int64_t i = np; i < n; i++) sum += (double)(x(i) * y(i));
    return (float)sum;
}

// llamafile's tinyBLAS, which ggml's mul_mat hands an F32 x F32 or F16 x F16
// product whenever it has two or more columns (a prompt batch): per output one
// L-lane FMA accumulator over the whole row (lane = index mod L), then its
// horizontal sum.  It takes k only in multiples of L and m in multiples of 4;
// otherwise ggml's vec_dot does the product.
template <int L, typename X, typename Y>
static inline float tinyblas_dot(int64_t n, X x, Y y) {
    float acc[L] = {0};
    for (int64_t i = 0; i < n; i++) acc[i % L] = std::fmaf(x(i), y(i), acc[i % L]);
    return ggml_hsum<L>(acc);
}

// llama.cpp's attention spans the KV cache cells [0, n_kv), n_kv padded to 256;
// the cells outside the visible range weigh 0.  What that padding decides in
// the arithmetic is where the lanes and chunks of its sums fall (cell mod L,
// cell mod 4L in ggml_vec_dot_f16, and whether cells are left over for its
// double-precision tail: none), so a range aligned to 64 cells (4L for both
// widths) reproduces it: the visible cells [first, first + n) sit at
// [lead, lead + n) of `cells`.
constexpr int64_t KV_ALIGN = 64;
static inline int64_t kv_cells(int64_t first, int64_t n, int64_t* lead) {
    *lead = first % KV_ALIGN;
    return (*lead + n + KV_ALIGN - 1) / KV_ALIGN * KV_ALIGN;
}

// Softmax weights of the cells [lead, lead + n) among `cells` (a multiple of
// 64), as ggml_soft_max computes them over its padded KV range:
// ggml's expf, sums per L cells in its horizontal-add order added in double,
// then rounded to fp16 for the product with V.  s[i] = q·k_i * scale; the
// weights go to w[0, cells), 0 outside the visible cells.
template <int L>
static inline void ggml_softmax_cells(const float* s, int64_t n, int64_t lead, int64_t cells, float* w) {
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++) mx = std::fmax(mx, s[i]);
    for (int64_t a = 0; a < cells; a++) w[a] = (a >= lead && a < lead + n) ? ggml_expf_lanes(s[a - lead] - mx, L) : 0.0f;
    double sum = 0.0;
    for (int64_t a = 0; a < cells; a += L) sum += (double)ggml_hsum<L>(w + a);
    const float inv = (float)(1.0 / sum);
    for (int64_t a = 0; a < cells; a++) w[a] = fp16_to_fp32(fp32_to_fp16(w[a] * inv));
}

}  // namespace ll
