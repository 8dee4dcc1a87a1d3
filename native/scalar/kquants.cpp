// Scalar reference kernels for the k-quants (256-weight super-blocks) and the
// Q8_K activation format.  Every SIMD kernel is tested against these; they
// follow ggml's reference code (ggml-quants.c dequantize_row_*,
// quantize_row_q8_K_ref, and the generic ggml_vec_dot_qX_K_q8_K) step for
// step: integer sums per sub-block, one float combine per super-block.
//
// Dequantization must equal gguf.quants.dequantize bit for bit, so the float
// expressions keep ggml's operand order.  A compiler fusing `dl * q - ml` into
// an FMA cannot change the result: d/dmin are fp16 (11 significant bits), the
// sub-block scales have at most 8 bits and q at most 6, so every product here
// has <= 24 significant bits and is exact in float32 (no fp16 value under- or
// overflows float32 when scaled this way).
#include <cmath>

#include "../kernels.h"

namespace ll {
namespace {

// ggml's nearest_int: adding 1.5 * 2^23 leaves round-half-even(fval) in the low
// mantissa bits (valid for |fval| <= 2^22).
static inline int nearest_int(float fval) {
    const float val = fval + 12582912.f;
    int i;
    std::memcpy(&i, &val, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}

// Scale and min of sub-block j (0..7) from the 12 packed bytes of Q4_K/Q5_K.
static inline void get_scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
    }
}

// ---- dequantize (ggml's dequantize_row_*) ----

void dequant_q2_k(const void* src, float* y, int64_t n) {
    const block_q2_K* x = static_cast<const block_q2_K*>(src);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = fp16_to_fp32(x[i].d);
        const float min = fp16_to_fp32(x[i].dmin);
        const uint8_t* q = x[i].qs;
        int is = 0;
        for (int nn = 0; nn < QK_K; nn += 128) {
            int shift = 0;
            for (int j = 0; j < 4; ++j) {
                uint8_t sc = x[i].scales[is++];
                float dl = d * (sc & 0xF), ml = min * (sc >> 4);
                for (int l = 0; l < 16; ++l) *y++ = dl * ((q[l] >> shift) & 3) - ml;
                sc = x[i].scales[is++];
                dl = d * (sc & 0xF);
                ml = min * (sc >> 4);
                for (int l = 0; l < 16; ++l) *y++ = dl * ((q[l + 16] >> shift) & 3) - ml;
                shift += 2;
            }
            q += 32;
        }
    }
}

void dequant_q3_k(const void* src, float* y, int64_t n) {
    const block_q3_K* x = static_cast<const block_q3_K*>(src);
    int8_t scales[16];
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d_all = fp16_to_fp32(x[i].d);
        const uint8_t* q = x[i].qs;
        const uint8_t* hm = x[i].hmask;
        uint8_t m = 1;
        unpack_q3_k_scales(x[i].scales, scales);
        int is = 0;
        for (int nn = 0; nn < QK_K; nn += 128) {
            int shift = 0;
            for (int j = 0; j < 4; ++j) {
                float dl = d_all * (scales[is++] - 32);
                for (int l = 0; l < 16; ++l) *y++ = dl * (((q[l + 0] >> shift) & 3) - ((hm[l + 0] & m) ? 0 : 4));
                dl = d_all * (scales[is++] - 32);
                for (int l = 0; l < 16; ++l) *y++ = dl * (((q[l + 16] >> shift) & 3) - ((hm[l + 16] & m) ? 0 : 4));
                shift += 2;
                m <<= 1;
            }
            q += 32;
        }
    }
}

void dequant_q4_k(const void* src, float* y, int64_t n) {
    const block_q4_K* x = static_cast<const block_q4_K*>(src);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t* q = x[i].qs;
        const float d = fp16_to_fp32(x[i].d);
        const float min = fp16_to_fp32(x[i].dmin);
        int is = 0;
        uint8_t sc, m;
        for (int j = 0; j < QK_K; j += 64) {
            get_scale_min_k4(is + 0, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            get_scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
            q += 32;
            is += 2;
        }
    }
}

void dequant_q5_k(const void* src, float* y, int64_t n) {
    const block_q5_K* x = static_cast<const block_q5_K*>(src);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t* ql = x[i].qs;
        const uint8_t* qh = x[i].qh;
        const float d = fp16_to_fp32(x[i].d);
        const float min = fp16_to_fp32(x[i].dmin);
        int is = 0;
        uint8_t sc, m;
        uint8_t u1 = 1, u2 = 2;
        for (int j = 0; j < QK_K; j += 64) {
            get_scale_min_k4(is + 0, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            get_scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
            ql += 32;
            is += 2;
            u1 <<= 2;
            u2 <<= 2;
        }
    }
}

void dequant_q6_k(const void* src, float* y, int64_t n) {
    const block_q6_K* x = static_cast<const block_q6_K*>(src);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = fp16_to_fp32(x[i].d);
        const uint8_t* ql = x[i].ql;
        const uint8_t* qh = x[i].qh;
        const int8_t* sc = x[i].scales;
        for (int nn = 0; nn < QK_K; nn += 128) {
            for (int l = 0; l < 32; ++l) {
                const int is = l / 16;
                const int q1 = (int8_t)((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = (int8_t)((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l + 0] = d * sc[is + 0] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
            y += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
    }
}

void dequant_q8_k(const void* src, float* y, int64_t n) {
    const block_q8_K* x = static_cast<const block_q8_K*>(src);
    for (int64_t i = 0; i < n / QK_K; i++)
        for (int j = 0; j < QK_K; ++j) *y++ = x[i].d * x[i].qs[j];
}

// ---- activation quantizer (ggml's quantize_row_q8_K_ref) ----
//
// The scale numerator is -127, as in current ggml (it was -128 before ggml's
// IQ2 kernels), so k-quant activations round as llama.cpp's do.
// llamalocal/quants_k.py uses the same value.

void quant_q8_k(const float* x, void* dst, int64_t n) {
    block_q8_K* y = static_cast<block_q8_K*>(dst);
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        float max = 0, amax = 0;
        for (int j = 0; j < QK_K; ++j) {
            const float ax = std::fabs(x[j]);
            if (ax > amax) {
                amax = ax;
                max = x[j];
            }
        }
        if (!amax) {
            y[i].d = 0;
            std::memset(y[i].qs, 0, QK_K);
            std::memset(y[i].bsums, 0, sizeof(y[i].bsums));
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < QK_K; ++j) {
            const int v = nearest_int(iscale * x[j]);
            y[i].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < QK_K / 16; ++j) {
            int sum = 0;
            for (int ii = 0; ii < 16; ++ii) sum += y[i].qs[j * 16 + ii];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1 / iscale;
    }
}

// ---- dot products (ggml's generic ggml_vec_dot_qX_K_q8_K) ----

template <class Combine>
float dot_q2_k_with(int64_t n, const void* w, const void* vy, Combine combine) {
    const block_q2_K* x = static_cast<const block_q2_K*>(w);
    const block_q8_K* y = static_cast<const block_q8_K*>(vy);
    float sumf = 0;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const uint8_t* q2 = x[i].qs;
        const int8_t* q8 = y[i].qs;
        const uint8_t* sc = x[i].scales;
        int summs = 0;
        for (int j = 0; j < 16; ++j) summs += y[i].bsums[j] * (sc[j] >> 4);
        int isum = 0, is = 0;
        for (int k = 0; k < QK_K / 128; ++k) {
            int shift = 0;
            for (int j = 0; j < 4; ++j) {
                int d = sc[is++] & 0xF;
                int isuml = 0;
                for (int l = 0; l < 16; ++l) isuml += q8[l] * ((q2[l] >> shift) & 3);
                isum += d * isuml;
                d = sc[is++] & 0xF;
                isuml = 0;
                for (int l = 16; l < 32; ++l) isuml += q8[l] * ((q2[l] >> shift) & 3);
                isum += d * isuml;
                shift += 2;
                q8 += 32;
            }
            q2 += 32;
        }
        sumf = combine(sumf, x[i], y[i], isum, summs);
    }
    return sumf;
}

template <class Combine>
float dot_q3_k_with(int64_t n, const void* w, const void* vy, Combine combine) {
    const block_q3_K* x = static_cast<const block_q3_K*>(w);
    const block_q8_K* y = static_cast<const block_q8_K*>(vy);
    int8_t scales[16];
    int8_t aux8[QK_K];
    float sumf = 0;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const uint8_t* q3 = x[i].qs;
        const uint8_t* hm = x[i].hmask;
        const int8_t* q8 = y[i].qs;
        // signed 3-bit values: low two bits, minus 4 when the hmask bit is clear
        int8_t* a = aux8;
        uint8_t m = 1;
        for (int j = 0; j < QK_K; j += 128) {
            for (int l = 0; l < 32; ++l) a[l] = q3[l] & 3;
            for (int l = 0; l < 32; ++l) a[l] -= (hm[l] & m ? 0 : 4);
            a += 32;
            m <<= 1;
            for (int l = 0; l < 32; ++l) a[l] = (q3[l] >> 2) & 3;
            for (int l = 0; l < 32; ++l) a[l] -= (hm[l] & m ? 0 : 4);
            a += 32;
            m <<= 1;
            for (int l = 0; l < 32; ++l) a[l] = (q3[l] >> 4) & 3;
            for (int l = 0; l < 32; ++l) a[l] -= (hm[l] & m ? 0 : 4);
            a += 32;
            m <<= 1;
            for (int l = 0; l < 32; ++l) a[l] = (q3[l] >> 6) & 3;
            for (int l = 0; l < 32; ++l) a[l] -= (hm[l] & m ? 0 : 4);
            a += 32;
            m <<= 1;
            q3 += 32;
        }
        unpack_q3_k_scales(x[i].scales, scales);
        int isum = 0;
        for (int j = 0; j < QK_K / 16; ++j) {
            int s = 0;
            for (int l = 0; l < 16; ++l) s += q8[16 * j + l] * aux8[16 * j + l];
            isum += (scales[j] - 32) * s;
        }
        sumf = combine(sumf, x[i], y[i], isum, 0);
    }
    return sumf;
}

template <class Combine>
float dot_q4_k_with(int64_t n, const void* w, const void* vy, Combine combine) {
    const block_q4_K* x = static_cast<const block_q4_K*>(w);
    const block_q8_K* y = static_cast<const block_q8_K*>(vy);
    uint8_t sm[16];  // scales[0..7], mins[8..15]
    float sumf = 0;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        unpack_q4_k_scales(x[i].scales, sm);
        const uint8_t* q4 = x[i].qs;
        const int8_t* q8 = y[i].qs;
        int isum = 0;
        for (int j = 0; j < QK_K / 64; ++j) {
            int s0 = 0, s1 = 0;
            for (int l = 0; l < 32; ++l) s0 += (q4[l] & 0xF) * q8[l];
            for (int l = 0; l < 32; ++l) s1 += (q4[l] >> 4) * q8[l + 32];
            isum += sm[2 * j] * s0 + sm[2 * j + 1] * s1;
            q4 += 32;
            q8 += 64;
        }
        int summs = 0;
        for (int j = 0; j < QK_K / 16; ++j) summs += y[i].bsums[j] * sm[8 + j / 2];
        sumf = combine(sumf, x[i], y[i], isum, summs);
    }
    return sumf;
}

// Q4_K as llama.cpp multiplies the weights it repacks (q4_K_8x8, see
// KernelSet): exact integer sums over GROUP sub-block pairs (4: a whole block,
// its gemv; 1: one pair, its gemm), each taken into two float FMA chains, one
// for d * sum(scale * dot) and one for dmin * sum(min * bsum), subtracted at
// the end.
template <int GROUP>
float dot_q4_k_packed(int64_t n, const void* w, const void* vy) {
    const block_q4_K* x = static_cast<const block_q4_K*>(w);
    const block_q8_K* y = static_cast<const block_q8_K*>(vy);
    uint8_t sm[16];  // scales[0..7], mins[8..15]
    float acc = 0.0f, acc_min = 0.0f;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        unpack_q4_k_scales(x[i].scales, sm);
        const float d = fp16_to_fp32(x[i].d) * y[i].d;
        const float dmin = fp16_to_fp32(x[i].dmin) * y[i].d;
        int isum = 0, imin = 0;
        for (int j = 0; j < QK_K / 64; ++j) {  // sub-blocks 2j (low nibbles) and 2j + 1 (high)
            const uint8_t* q4 = x[i].qs + 32 * j;
            const int8_t* q8 = y[i].qs + 64 * j;
            int s0 = 0, s1 = 0;
            for (int l = 0; l < 32; ++l) s0 += (q4[l] & 0xF) * q8[l];
            for (int l = 0; l < 32; ++l) s1 += (q4[l] >> 4) * q8[l + 32];
            isum += sm[2 * j] * s0 + sm[2 * j + 1] * s1;
            imin += sm[8 + 2 * j] * (y[i].bsums[4 * j] + y[i].bsums[4 * j + 1]) +
                    sm[8 + 2 * j + 1] * (y[i].bsums[4 * j + 2] + y[i].bsums[4 * j + 3]);
            if ((j + 1) % GROUP == 0) {
                acc = std::fmaf((float)isum, d, acc);
                acc_min = std::fmaf((float)imin, dmin, acc_min);
                isum = imin = 0;
            }
        }
    }
    return acc - acc_min;
}

template <class Combine>
float dot_q5_k_with(int64_t n, const void* w, const void* vy, Combine combine) {
    const block_q5_K* x = static_cast<const block_q5_K*>(w);
    const block_q8_K* y = static_cast<const block_q8_K*>(vy);
    uint8_t sm[16];
    float sumf = 0;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        unpack_q4_k_scales(x[i].scales, sm);
        const uint8_t* q4 = x[i].qs;
        const uint8_t* hm = x[i].qh;
        const int8_t* q8 = y[i].qs;
        int isum = 0;
        uint8_t m = 1;
        for (int j = 0; j < QK_K / 64; ++j) {
            int s0 = 0, s1 = 0;
            for (int l = 0; l < 32; ++l) s0 += ((q4[l] & 0xF) + (hm[l] & m ? 16 : 0)) * q8[l];
            m <<= 1;
            for (int l = 0; l < 32; ++l) s1 += ((q4[l] >> 4) + (hm[l] & m ? 16 : 0)) * q8[l + 32];
            m <<= 1;
            isum += sm[2 * j] * s0 + sm[2 * j + 1] * s1;
            q4 += 32;
            q8 += 64;
        }
        int summs = 0;
        for (int j = 0; j < QK_K / 16; ++j) summs += y[i].bsums[j] * sm[8 + j / 2];
        sumf = combine(sumf, x[i], y[i], isum, summs);
    }
    return sumf;
}

template <class Combine>
float dot_q6_k_with(int64_t n, const void* w, const void* vy, Combine combine) {
    const block_q6_K* x = static_cast<const block_q6_K*>(w);
    const block_q8_K* y = static_cast<const block_q8_K*>(vy);
    int8_t aux8[QK_K];
    float sumf = 0;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const uint8_t* q4 = x[i].ql;
        const uint8_t* qh = x[i].qh;
        const int8_t* q8 = y[i].qs;
        int8_t* a = aux8;
        for (int j = 0; j < QK_K; j += 128) {
            for (int l = 0; l < 32; ++l) {
                a[l + 0] = (int8_t)((q4[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                a[l + 32] = (int8_t)((q4[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                a[l + 64] = (int8_t)((q4[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                a[l + 96] = (int8_t)((q4[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            }
            a += 128;
            q4 += 64;
            qh += 32;
        }
        int isum = 0;
        for (int j = 0; j < QK_K / 16; ++j) {
            int s = 0;
            for (int l = 0; l < 16; ++l) s += q8[16 * j + l] * aux8[16 * j + l];
            isum += x[i].scales[j] * s;
        }
        sumf = combine(sumf, x[i], y[i], isum, 0);
    }
    return sumf;
}

// ggml's generic float work per super-block
float dot_q2_k(int64_t n, const void* w, const void* vy) {
    return dot_q2_k_with(n, w, vy, [](float sumf, const block_q2_K& x, const block_q8_K& y, int isum, int summs) {
        const float dall = y.d * fp16_to_fp32(x.d);
        const float dmin = y.d * fp16_to_fp32(x.dmin);
        return sumf + (dall * isum - dmin * summs);
    });
}
template <class B>
float combine_d(float sumf, const B& x, const block_q8_K& y, int isum, int) {
    const float d = fp16_to_fp32(x.d) * y.d;
    return sumf + d * isum;
}
template <class B>
float combine_d_dmin(float sumf, const B& x, const block_q8_K& y, int isum, int summs) {
    const float d = fp16_to_fp32(x.d) * y.d;
    const float dmin = fp16_to_fp32(x.dmin) * y.d;
    sumf += d * isum;
    return sumf - dmin * summs;
}
float dot_q3_k(int64_t n, const void* w, const void* vy) { return dot_q3_k_with(n, w, vy, combine_d<block_q3_K>); }
float dot_q4_k(int64_t n, const void* w, const void* vy) { return dot_q4_k_with(n, w, vy, combine_d_dmin<block_q4_K>); }
float dot_q5_k(int64_t n, const void* w, const void* vy) { return dot_q5_k_with(n, w, vy, combine_d_dmin<block_q5_K>); }
float dot_q6_k(int64_t n, const void* w, const void* vy) { return dot_q6_k_with(n, w, vy, combine_d<block_q6_K>); }

// llama.cpp's tiled k-quant matmul (see KernelSet::dot_tiled): r = d * s - dmin * m
// (product, then fused), acc += r * d_act (fused)
template <class B>
float combine_tiled(float acc, const B& x, const block_q8_K& y, int isum, int) {
    return std::fmaf(fp16_to_fp32(x.d) * (float)isum, y.d, acc);
}
template <class B>
float combine_tiled_min(float acc, const B& x, const block_q8_K& y, int isum, int summs) {
    const float r = std::fmaf(-fp16_to_fp32(x.dmin), (float)summs, fp16_to_fp32(x.d) * (float)isum);
    return std::fmaf(r, y.d, acc);
}
float dot_q2_k_tiled(int64_t n, const void* w, const void* vy) { return dot_q2_k_with(n, w, vy, combine_tiled_min<block_q2_K>); }
float dot_q3_k_tiled(int64_t n, const void* w, const void* vy) { return dot_q3_k_with(n, w, vy, combine_tiled<block_q3_K>); }
float dot_q4_k_tiled(int64_t n, const void* w, const void* vy) { return dot_q4_k_with(n, w, vy, combine_tiled_min<block_q4_K>); }
float dot_q5_k_tiled(int64_t n, const void* w, const void* vy) { return dot_q5_k_with(n, w, vy, combine_tiled_min<block_q5_K>); }
float dot_q6_k_tiled(int64_t n, const void* w, const void* vy) { return dot_q6_k_with(n, w, vy, combine_tiled<block_q6_K>); }

template <float (*DOT)(int64_t, const void*, const void*)>
void rows(int64_t n, int64_t nrows, const void* w, size_t stride, const void* x, float* y) {
    const uint8_t* p = static_cast<const uint8_t*>(w);
    for (int64_t r = 0; r < nrows; r++) y[r] = DOT(n, p + r * stride, x);
}

}  // namespace

void register_kquants_scalar(KernelSet* ks) {
    ks->dequant[TYPE_Q2_K] = dequant_q2_k;
    ks->dequant[TYPE_Q3_K] = dequant_q3_k;
    ks->dequant[TYPE_Q4_K] = dequant_q4_k;
    ks->dequant[TYPE_Q5_K] = dequant_q5_k;
    ks->dequant[TYPE_Q6_K] = dequant_q6_k;
    ks->dequant[TYPE_Q8_K] = dequant_q8_k;

    ks->quant_act[TYPE_Q8_K] = quant_q8_k;

    ks->dot[TYPE_Q2_K] = rows<dot_q2_k>;
    ks->dot[TYPE_Q3_K] = rows<dot_q3_k>;
    ks->dot[TYPE_Q4_K] = rows<dot_q4_k>;
    ks->dot[TYPE_Q5_K] = rows<dot_q5_k>;
    ks->dot[TYPE_Q6_K] = rows<dot_q6_k>;
    ks->dot_tiled[TYPE_Q2_K] = rows<dot_q2_k_tiled>;
    ks->dot_tiled[TYPE_Q3_K] = rows<dot_q3_k_tiled>;
    ks->dot_tiled[TYPE_Q4_K] = rows<dot_q4_k_tiled>;
    ks->dot_tiled[TYPE_Q5_K] = rows<dot_q5_k_tiled>;
    ks->dot_tiled[TYPE_Q6_K] = rows<dot_q6_k_tiled>;
    ks->dot_gemv[TYPE_Q4_K] = rows<dot_q4_k_packed<4>>;
    ks->dot_gemm[TYPE_Q4_K] = rows<dot_q4_k_packed<1>>;
}

}  // namespace ll
