// Scalar statements of ggml's CPU arithmetic where llama.cpp's results depend
// on it: its vectorised expf and its fp16 dot product's summation order.
// Reproducing them keeps our logits within llama.cpp's own noise (the
// models amplify last-bit differences through every int8 activation
// rounding).  Everything is `static inline` (see blocks.h).
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

// ggml's SiLU in SwiGLU: x / (1 + ggml_expf(-x)) for whole groups of 8, libm's
// expf for the tail of a row.
static inline float ggml_silu(float x, bool vector_lane) {
    return x / (1.0f + (vector_lane ? ggml_expf(-x) : std::exp(-x)));
}

// ggml_vec_dot_f16 (AVX2 build): four 8-lane FMA accumulators over chunks of
// 32, a fixed reduction tree, the tail added in double.  x(i) and y(i) return
// the i-th (fp16-exact) operands as floats.
// The reduction tree of ggml_vec_dot_f16's accumulators: a[k * stride] is
// accumulator k / 8, lane k % 8 (GGML_F32x8_REDUCE, then two horizontal adds).
static inline float ggml_reduce32(const float* a, int64_t stride) {
    float r[8];
    for (int l = 0; l < 8; l++) r[l] = (a[l * stride] + a[(16 + l) * stride]) + (a[(8 + l) * stride] + a[(24 + l) * stride]);
    return ((r[0] + r[4]) + (r[1] + r[5])) + ((r[2] + r[6]) + (r[3] + r[7]));
}

template <typename X, typename Y>
static inline float ggml_dot_f16(int64_t n, X x, Y y) {
    const int64_t np = n & ~int64_t(31);
    float acc[32] = {0};  // acc[8 * a + l]: accumulator a, lane l
    for (int64_t i = 0; i < np; i += 32)
        for (int a = 0; a < 32; a++) acc[a] = std::fmaf(x(i + a), y(i + a), acc[a]);
    double sum = (double)ggml_reduce32(acc, 1);
    for (int64_t i = np; i < n; i++) sum += (double)(x(i) * y(i));
    return (float)sum;
}

// Sum of 8 floats in the order of ggml's 256-bit horizontal add (hsum).
static inline float ggml_hsum8(const float* v) {
    const float a0 = v[0] + v[4], a1 = v[1] + v[5], a2 = v[2] + v[6], a3 = v[3] + v[7];
    return (a0 + a2) + (a1 + a3);
}

// llamafile's tinyBLAS (AVX2 build), which ggml's mul_mat hands an F32 x F32
// or F16 x F16 product whenever it has two or more columns (a prompt batch):
// per output one 8-lane FMA accumulator over the whole row (lane = index mod
// 8), then the horizontal add of ggml_hsum8.  It takes k only in multiples of
// 8 and m in multiples of 4; otherwise ggml's vec_dot does the product.
template <typename X, typename Y>
static inline float tinyblas_dot(int64_t n, X x, Y y) {
    float acc[8] = {0};
    for (int64_t i = 0; i < n; i++) acc[i % 8] = std::fmaf(x(i), y(i), acc[i % 8]);
    return ggml_hsum8(acc);
}

// Softmax weights of the cells [lead, lead + n) among `cells` (a multiple of
// 32), as ggml_soft_max computes them over a KV range padded to 32 cells:
// ggml's expf, sums per 8 cells in its horizontal-add order added in double,
// then rounded to fp16 for the product with V.  s[i] = q·k_i * scale; the
// weights go to w[0, cells), 0 outside the visible cells.
static inline void ggml_softmax_cells(const float* s, int64_t n, int64_t lead, int64_t cells, float* w) {
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++) mx = std::fmax(mx, s[i]);
    for (int64_t a = 0; a < cells; a++) w[a] = (a >= lead && a < lead + n) ? ggml_expf(s[a - lead] - mx) : 0.0f;
    double sum = 0.0;
    for (int64_t a = 0; a < cells; a += 8) sum += (double)ggml_hsum8(w + a);
    const float inv = (float)(1.0 / sum);
    for (int64_t a = 0; a < cells; a++) w[a] = fp16_to_fp32(fp32_to_fp16(w[a] * inv));
}

}  // namespace ll
