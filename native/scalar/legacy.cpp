// Scalar reference kernels for the float types and the legacy 32-weight block
// formats.  Every SIMD kernel is tested against these; they follow ggml's
// reference code (ggml-quants.c) step for step, integer sums per block.
#include <cmath>

#include "../ggml_math.h"
#include "../kernels.h"

namespace ll {
namespace {

// ---- dequantize ----

void dequant_f32(const void* src, float* dst, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }

void dequant_f16(const void* src, float* dst, int64_t n) {
    const half_t* s = static_cast<const half_t*>(src);
    for (int64_t i = 0; i < n; i++) dst[i] = fp16_to_fp32(s[i]);
}

void dequant_bf16(const void* src, float* dst, int64_t n) {
    const bf16_t* s = static_cast<const bf16_t*>(src);
    for (int64_t i = 0; i < n; i++) dst[i] = bf16_to_fp32(s[i]);
}

void dequant_q4_0(const void* src, float* dst, int64_t n) {
    const block_q4_0* b = static_cast<const block_q4_0*>(src);
    for (int64_t i = 0; i < n / QK; i++, dst += QK) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < QK / 2; j++) {
            dst[j] = ((b[i].qs[j] & 0x0F) - 8) * d;
            dst[j + QK / 2] = ((b[i].qs[j] >> 4) - 8) * d;
        }
    }
}

void dequant_q4_1(const void* src, float* dst, int64_t n) {
    const block_q4_1* b = static_cast<const block_q4_1*>(src);
    for (int64_t i = 0; i < n / QK; i++, dst += QK) {
        const float d = fp16_to_fp32(b[i].d), m = fp16_to_fp32(b[i].m);
        for (int j = 0; j < QK / 2; j++) {
            dst[j] = (b[i].qs[j] & 0x0F) * d + m;
            dst[j + QK / 2] = (b[i].qs[j] >> 4) * d + m;
        }
    }
}

// The fifth bit of weight j sits in bit j of qh (little-endian u32).
static inline uint32_t load_qh(const uint8_t* qh) { return (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24; }

void dequant_q5_0(const void* src, float* dst, int64_t n) {
    const block_q5_0* b = static_cast<const block_q5_0*>(src);
    for (int64_t i = 0; i < n / QK; i++, dst += QK) {
        const float d = fp16_to_fp32(b[i].d);
        const uint32_t qh = load_qh(b[i].qh);
        for (int j = 0; j < QK / 2; j++) {
            const int x0 = ((b[i].qs[j] & 0x0F) | (((qh >> j) << 4) & 0x10)) - 16;
            const int x1 = ((b[i].qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)) - 16;
            dst[j] = x0 * d;
            dst[j + QK / 2] = x1 * d;
        }
    }
}

void dequant_q5_1(const void* src, float* dst, int64_t n) {
    const block_q5_1* b = static_cast<const block_q5_1*>(src);
    for (int64_t i = 0; i < n / QK; i++, dst += QK) {
        const float d = fp16_to_fp32(b[i].d), m = fp16_to_fp32(b[i].m);
        const uint32_t qh = load_qh(b[i].qh);
        for (int j = 0; j < QK / 2; j++) {
            const int x0 = (b[i].qs[j] & 0x0F) | (((qh >> j) << 4) & 0x10);
            const int x1 = (b[i].qs[j] >> 4) | ((qh >> (j + 12)) & 0x10);
            dst[j] = x0 * d + m;
            dst[j + QK / 2] = x1 * d + m;
        }
    }
}

void dequant_q8_0(const void* src, float* dst, int64_t n) {
    const block_q8_0* b = static_cast<const block_q8_0*>(src);
    for (int64_t i = 0; i < n / QK; i++, dst += QK) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < QK; j++) dst[j] = b[i].qs[j] * d;
    }
}

void dequant_q8_1(const void* src, float* dst, int64_t n) {
    const block_q8_1* b = static_cast<const block_q8_1*>(src);
    for (int64_t i = 0; i < n / QK; i++, dst += QK) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < QK; j++) dst[j] = b[i].qs[j] * d;
    }
}

// ---- activation quantizers ----
// llama.cpp's runtime quantizers (its x86 SIMD ones, which produced the
// reference logits): scale id = 127/amax and round half to even.  ggml's
// *_ref functions, which gguf.quants mirrors for weights, use 1/d and round
// half away from zero instead; the two differ in rare last-bit cases.

// One block of 32: qs = round_even(x * 127/amax); returns d = amax/127 and sum(qs).
static inline float quant_block_q8(const float* x, int8_t* qs, int* sum) {
    float amax = 0.0f;
    for (int j = 0; j < QK; j++) amax = std::fmax(amax, std::fabs(x[j]));
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    *sum = 0;
    for (int j = 0; j < QK; j++) *sum += qs[j] = (int8_t)std::nearbyint(x[j] * id);
    return amax / 127.0f;
}

void quant_q8_0(const float* x, void* dst, int64_t n) {
    block_q8_0* y = static_cast<block_q8_0*>(dst);
    int sum;
    for (int64_t i = 0; i < n / QK; i++, x += QK) y[i].d = fp32_to_fp16(quant_block_q8(x, y[i].qs, &sum));
}

void quant_q8_1(const float* x, void* dst, int64_t n) {
    block_q8_1* y = static_cast<block_q8_1*>(dst);
    int sum;
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        const float d = quant_block_q8(x, y[i].qs, &sum);
        y[i].d = fp32_to_fp16(d);
        y[i].s = fp32_to_fp16(d * (float)sum);
    }
}

// ---- dot products: one weight row against one converted activation row ----

float dot_f32(int64_t n, const void* w, const void* x) {
    const float* a = static_cast<const float*>(w);
    const float* b = static_cast<const float*>(x);
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

// llamafile's tinyBLAS for F32 batches (KernelSet::dot_sgemm) at L lanes
template <int L>
float dot_f32_sgemm(int64_t n, const void* w, const void* x) {
    const float* a = static_cast<const float*>(w);
    const float* b = static_cast<const float*>(x);
    return tinyblas_dot<L>(n, [&](int64_t i) { return a[i]; }, [&](int64_t i) { return b[i]; });
}

float dot_f16(int64_t n, const void* w, const void* x) {
    const half_t* a = static_cast<const half_t*>(w);
    const float* b = static_cast<const float*>(x);
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += fp16_to_fp32(a[i]) * b[i];
    return s;
}

float dot_bf16(int64_t n, const void* w, const void* x) {
    const bf16_t* a = static_cast<const bf16_t*>(w);
    const float* b = static_cast<const float*>(x);
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += bf16_to_fp32(a[i]) * b[i];
    return s;
}

float dot_q4_0(int64_t n, const void* w, const void* x) {
    const block_q4_0* a = static_cast<const block_q4_0*>(w);
    const block_q8_0* b = static_cast<const block_q8_0*>(x);
    float s = 0.0f;
    for (int64_t i = 0; i < n / QK; i++) {
        int sumi = 0;
        for (int j = 0; j < QK / 2; j++)
            sumi += ((a[i].qs[j] & 0x0F) - 8) * b[i].qs[j] + ((a[i].qs[j] >> 4) - 8) * b[i].qs[j + QK / 2];
        s += sumi * (fp16_to_fp32(a[i].d) * fp16_to_fp32(b[i].d));
    }
    return s;
}

float dot_q4_1(int64_t n, const void* w, const void* x) {
    const block_q4_1* a = static_cast<const block_q4_1*>(w);
    const block_q8_1* b = static_cast<const block_q8_1*>(x);
    float s = 0.0f;
    for (int64_t i = 0; i < n / QK; i++) {
        int sumi = 0;
        for (int j = 0; j < QK / 2; j++) sumi += (a[i].qs[j] & 0x0F) * b[i].qs[j] + (a[i].qs[j] >> 4) * b[i].qs[j + QK / 2];
        // the min m adds m * sum(y) = m * s_y to the block's dot product
        s += sumi * (fp16_to_fp32(a[i].d) * fp16_to_fp32(b[i].d)) + fp16_to_fp32(a[i].m) * fp16_to_fp32(b[i].s);
    }
    return s;
}

float dot_q5_0(int64_t n, const void* w, const void* x) {
    const block_q5_0* a = static_cast<const block_q5_0*>(w);
    const block_q8_0* b = static_cast<const block_q8_0*>(x);
    float s = 0.0f;
    for (int64_t i = 0; i < n / QK; i++) {
        const uint32_t qh = load_qh(a[i].qh);
        int sumi = 0;
        for (int j = 0; j < QK / 2; j++) {
            const int x0 = ((a[i].qs[j] & 0x0F) | (((qh >> j) << 4) & 0x10)) - 16;
            const int x1 = ((a[i].qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)) - 16;
            sumi += x0 * b[i].qs[j] + x1 * b[i].qs[j + QK / 2];
        }
        s += sumi * (fp16_to_fp32(a[i].d) * fp16_to_fp32(b[i].d));
    }
    return s;
}

float dot_q5_1(int64_t n, const void* w, const void* x) {
    const block_q5_1* a = static_cast<const block_q5_1*>(w);
    const block_q8_1* b = static_cast<const block_q8_1*>(x);
    float s = 0.0f;
    for (int64_t i = 0; i < n / QK; i++) {
        const uint32_t qh = load_qh(a[i].qh);
        int sumi = 0;
        for (int j = 0; j < QK / 2; j++) {
            const int x0 = (a[i].qs[j] & 0x0F) | (((qh >> j) << 4) & 0x10);
            const int x1 = (a[i].qs[j] >> 4) | ((qh >> (j + 12)) & 0x10);
            sumi += x0 * b[i].qs[j] + x1 * b[i].qs[j + QK / 2];
        }
        s += sumi * (fp16_to_fp32(a[i].d) * fp16_to_fp32(b[i].d)) + fp16_to_fp32(a[i].m) * fp16_to_fp32(b[i].s);
    }
    return s;
}

float dot_q8_0(int64_t n, const void* w, const void* x) {
    const block_q8_0* a = static_cast<const block_q8_0*>(w);
    const block_q8_0* b = static_cast<const block_q8_0*>(x);
    float s = 0.0f;
    for (int64_t i = 0; i < n / QK; i++) {
        int sumi = 0;
        for (int j = 0; j < QK; j++) sumi += a[i].qs[j] * b[i].qs[j];
        s += sumi * (fp16_to_fp32(a[i].d) * fp16_to_fp32(b[i].d));
    }
    return s;
}

template <float (*DOT)(int64_t, const void*, const void*)>
void rows(int64_t n, int64_t nrows, const void* w, size_t stride, const void* x, float* y) {
    const uint8_t* p = static_cast<const uint8_t*>(w);
    for (int64_t r = 0; r < nrows; r++) y[r] = DOT(n, p + r * stride, x);
}

}  // namespace

void register_legacy_scalar(KernelSet* ks) {
    ks->dequant[TYPE_F32] = dequant_f32;
    ks->dequant[TYPE_F16] = dequant_f16;
    ks->dequant[TYPE_BF16] = dequant_bf16;
    ks->dequant[TYPE_Q4_0] = dequant_q4_0;
    ks->dequant[TYPE_Q4_1] = dequant_q4_1;
    ks->dequant[TYPE_Q5_0] = dequant_q5_0;
    ks->dequant[TYPE_Q5_1] = dequant_q5_1;
    ks->dequant[TYPE_Q8_0] = dequant_q8_0;
    ks->dequant[TYPE_Q8_1] = dequant_q8_1;

    ks->quant_act[TYPE_Q8_0] = quant_q8_0;
    ks->quant_act[TYPE_Q8_1] = quant_q8_1;

    ks->dot[TYPE_F32] = rows<dot_f32>;
    ks->dot_sgemm[TYPE_F32] = ks->lanes == 16 ? rows<dot_f32_sgemm<16>> : rows<dot_f32_sgemm<8>>;
    ks->dot[TYPE_F16] = rows<dot_f16>;
    ks->dot[TYPE_BF16] = rows<dot_bf16>;
    ks->dot[TYPE_Q4_0] = rows<dot_q4_0>;
    ks->dot[TYPE_Q4_1] = rows<dot_q4_1>;
    ks->dot[TYPE_Q5_0] = rows<dot_q5_0>;
    ks->dot[TYPE_Q5_1] = rows<dot_q5_1>;
    ks->dot[TYPE_Q8_0] = rows<dot_q8_0>;
}

}  // namespace ll
