// Scalar reference kernels for the float types and the legacy 32-weight block
// formats.  Every SIMD kernel is tested against these.  Dequantization follows
// ggml's reference code (ggml-quants.c); the dot products follow llama.cpp's
// x86 kernels, whose int32 lanes and float chains decide its rounding.
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

// The F16 KV cache's rows: round to nearest even, as F16C does
void quant_f16(const float* x, void* dst, int64_t n) {
    half_t* y = static_cast<half_t*>(dst);
    for (int64_t i = 0; i < n; i++) y[i] = fp32_to_fp16(x[i]);
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

// ggml_vec_dot_f32 at L lanes (llama.cpp's matvec for F32 weights): four
// L-lane FMA accumulators over chunks of 4L, ggml's reduction tree, then the
// tail one product and one add at a time.
template <int L>
float dot_f32(int64_t n, const void* w, const void* x) {
    const float* a = static_cast<const float*>(w);
    const float* b = static_cast<const float*>(x);
    const int64_t np = n & ~int64_t(4 * L - 1);
    float acc[4 * L] = {0};
    for (int64_t i = 0; i < np; i += 4 * L)
        for (int l = 0; l < 4 * L; l++) acc[l] = std::fmaf(a[i + l], b[i + l], acc[l]);
    float s = ggml_reduce4<L>(acc, 1);
    for (int64_t i = np; i < n; i++) s += a[i] * b[i];
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

// The integer weight values of one block, in weight order: signed for
// Q4_0/Q5_0/Q8_0, unsigned (the min added separately) for Q4_1/Q5_1.
void values(const block_q4_0& b, int* v) {
    for (int j = 0; j < QK / 2; j++) {
        v[j] = (b.qs[j] & 0x0F) - 8;
        v[j + QK / 2] = (b.qs[j] >> 4) - 8;
    }
}
void values(const block_q4_1& b, int* v) {
    for (int j = 0; j < QK / 2; j++) {
        v[j] = b.qs[j] & 0x0F;
        v[j + QK / 2] = b.qs[j] >> 4;
    }
}
template <class B>
void values5(const B& b, int* v, int offset) {
    const uint32_t qh = load_qh(b.qh);
    for (int j = 0; j < QK / 2; j++) {
        v[j] = ((b.qs[j] & 0x0F) | (((qh >> j) << 4) & 0x10)) - offset;
        v[j + QK / 2] = ((b.qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)) - offset;
    }
}
void values(const block_q5_0& b, int* v) { values5(b, v, 16); }
void values(const block_q5_1& b, int* v) { values5(b, v, 0); }
void values(const block_q8_0& b, int* v) {
    for (int j = 0; j < QK; j++) v[j] = b.qs[j];
}

// the min m_w of Q4_1/Q5_1 and the activation sum s_y of Q8_1 (0 for the others)
template <class B> float min_of(const B&) { return 0.0f; }
float min_of(const block_q4_1& b) { return fp16_to_fp32(b.m); }
float min_of(const block_q5_1& b) { return fp16_to_fp32(b.m); }
float sum_of(const block_q8_0&) { return 0.0f; }
float sum_of(const block_q8_1& b) { return fp16_to_fp32(b.s); }

// llama.cpp's x86 vec_dot (which wrote the reference logits): each block's
// products are summed exactly in 8 int32 lanes of 4 consecutive weights
// (maddubs + madd), lane l goes into float chain l by acc = fma(d_w * d_y,
// lane, acc), and the chains meet in ggml's horizontal add.  Q4_1/Q5_1 add
// m_w * s_y per block in one more fused chain, added last.
template <class WB, class YB>
float dot_blocks(int64_t n, const void* w, const void* x) {
    const WB* a = static_cast<const WB*>(w);
    const YB* b = static_cast<const YB*>(x);
    float acc[8] = {0}, c = 0.0f;
    int v[QK];
    for (int64_t i = 0; i < n / QK; i++) {
        values(a[i], v);
        const float d = fp16_to_fp32(a[i].d) * fp16_to_fp32(b[i].d);
        for (int l = 0; l < 8; l++) {
            int lane = 0;
            for (int j = 4 * l; j < 4 * l + 4; j++) lane += v[j] * b[i].qs[j];
            acc[l] = std::fmaf(d, (float)lane, acc[l]);
        }
        c = std::fmaf(min_of(a[i]), sum_of(b[i]), c);
    }
    return ggml_hsum8(acc) + c;
}

// Q4_0 as llama.cpp multiplies the weights it repacks (q4_0_8x8, see
// KernelSet; its gemv and gemm agree): each block's 32 products summed
// exactly, one float chain acc = fma(sum, d_w * d_y, acc), no horizontal add.
float dot_q4_0_packed(int64_t n, const void* w, const void* x) {
    const block_q4_0* a = static_cast<const block_q4_0*>(w);
    const block_q8_0* b = static_cast<const block_q8_0*>(x);
    float acc = 0.0f;
    int v[QK];
    for (int64_t i = 0; i < n / QK; i++) {
        values(a[i], v);
        int sum = 0;
        for (int j = 0; j < QK; j++) sum += v[j] * b[i].qs[j];
        acc = std::fmaf((float)sum, fp16_to_fp32(a[i].d) * fp16_to_fp32(b[i].d), acc);
    }
    return acc;
}

template <float (*DOT)(int64_t, const void*, const void*)>
void rows(int64_t n, int64_t nrows, const void* w, size_t stride, const void* x, float* y) {
    const uint8_t* p = static_cast<const uint8_t*>(w);
    for (int64_t r = 0; r < nrows; r++) y[r] = DOT(n, p + r * stride, x);
}

// The bandwidth probe's reference loop: one cache line per step into eight
// independent sums.
uint64_t sum_words(const uint64_t* p, size_t n) {
    uint64_t s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += p[i + j];
    for (; i < n; i++) s[0] += p[i];
    return s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
}

}  // namespace

void register_legacy_scalar(KernelSet* ks) {
    ks->sum_words = sum_words;
    ks->dequant[TYPE_F32] = dequant_f32;
    ks->dequant[TYPE_F16] = dequant_f16;
    ks->dequant[TYPE_BF16] = dequant_bf16;
    ks->dequant[TYPE_Q4_0] = dequant_q4_0;
    ks->dequant[TYPE_Q4_1] = dequant_q4_1;
    ks->dequant[TYPE_Q5_0] = dequant_q5_0;
    ks->dequant[TYPE_Q5_1] = dequant_q5_1;
    ks->dequant[TYPE_Q8_0] = dequant_q8_0;
    ks->dequant[TYPE_Q8_1] = dequant_q8_1;

    ks->quant_act[TYPE_F16] = quant_f16;
    ks->quant_act[TYPE_Q8_0] = quant_q8_0;
    ks->quant_act[TYPE_Q8_1] = quant_q8_1;

    ks->dot[TYPE_F32] = ks->lanes == 16 ? rows<dot_f32<16>> : rows<dot_f32<8>>;
    ks->dot_sgemm[TYPE_F32] = ks->lanes == 16 ? rows<dot_f32_sgemm<16>> : rows<dot_f32_sgemm<8>>;
    ks->dot[TYPE_F16] = rows<dot_f16>;
    ks->dot[TYPE_BF16] = rows<dot_bf16>;
    ks->dot[TYPE_Q4_0] = rows<dot_blocks<block_q4_0, block_q8_0>>;
    ks->dot_gemv[TYPE_Q4_0] = ks->dot_gemm[TYPE_Q4_0] = rows<dot_q4_0_packed>;
    ks->dot[TYPE_Q4_1] = rows<dot_blocks<block_q4_1, block_q8_1>>;
    ks->dot[TYPE_Q5_0] = rows<dot_blocks<block_q5_0, block_q8_0>>;
    ks->dot[TYPE_Q5_1] = rows<dot_blocks<block_q5_1, block_q8_1>>;
    ks->dot[TYPE_Q8_0] = rows<dot_blocks<block_q8_0, block_q8_0>>;
}

}  // namespace ll
