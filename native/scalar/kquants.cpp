// Scalar reference kernels for the k-quants (256-weight super-blocks) and the
// Q8_K activation format.  Every SIMD kernel is tested against these.
// Dequantization and the Q8_K quantizer follow ggml's reference code
// (ggml-quants.c dequantize_row_*, quantize_row_q8_K_ref) step for step; the
// dot products follow llama.cpp's x86 kernels (see "dot products" below).
//
// Dequantization must equal gguf.quants.dequantize bit for bit, so the float
// expressions keep ggml's operand order.  A compiler fusing `dl * q - ml` into
// an FMA cannot change the result: d/dmin are fp16 (11 significant bits), the
// sub-block scales have at most 8 bits and q at most 6, so every product here
// has <= 24 significant bits and is exact in float32 (no fp16 value under- or
// overflows float32 when scaled this way).
#include <cmath>
#include <type_traits>

#include "../ggml_math.h"
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
// llamalocal/formats/kquants.py uses the same value.

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

// ---- dot products ----
//
// llama.cpp's x86 vec_dot kernels (which wrote the reference logits) sum a
// super-block exactly in int32 lanes, then take each lane into a float FMA
// chain: the lanes decide the rounding, so the reference states them.  Per
// super-block: s[l] sums to sum(scale * q * y) (q signed: Q3_K's -4 and Q6_K's
// -32 offsets are subtracted through the activation block sums, in lanes of
// their own) and m[l] to sum(min * bsum).  Which weights fall in which lane
// follows from the instructions: maddubs + madd over 32 weights give lane
// (i % 32) / 4; Q2_K/Q3_K's 16-weight scales come in through unpacked int16
// pairs, giving lane 4 * (b / 16) + (b / 2) % 4 for b = i % 32.
struct KLanes {
    int32_t s[8];
    int32_t m[8];
};

static inline int lane_by_4(int i) { return (i % 32) / 4; }
static inline int lane_of_pairs(int i) { return 4 * (i % 32 / 16) + (i % 32 / 2) % 4; }

// u[i] unsigned weight values and scale[j] per 16 weights -> s lanes.
template <int (*LANE)(int)>
static inline void scaled_lanes(const int* u, const int* scale, const int8_t* y, int32_t* s) {
    for (int l = 0; l < 8; ++l) s[l] = 0;
    for (int i = 0; i < QK_K; ++i) s[LANE(i)] += scale[i / 16] * u[i] * y[i];
}

// pair lanes of 16-weight block sums: out[l] = a[2l] * bs[2l] + a[2l+1] * bs[2l+1]
static inline void pair_lanes(const int* a, const int16_t* bsums, int32_t* out) {
    for (int l = 0; l < 8; ++l) out[l] = a[2 * l] * bsums[2 * l] + a[2 * l + 1] * bsums[2 * l + 1];
}

static inline void klanes(const block_q2_K& x, const block_q8_K& y, KLanes* k) {
    int u[QK_K], scale[16], mins[16];
    for (int i = 0; i < QK_K; ++i) u[i] = (x.qs[32 * (i / 128) + i % 32] >> (2 * (i % 128 / 32))) & 3;
    for (int j = 0; j < 16; ++j) {
        scale[j] = x.scales[j] & 0xF;
        mins[j] = x.scales[j] >> 4;
    }
    scaled_lanes<lane_of_pairs>(u, scale, y.qs, k->s);
    pair_lanes(mins, y.bsums, k->m);
}

static inline void klanes(const block_q3_K& x, const block_q8_K& y, KLanes* k) {
    int u[QK_K], scale[16];  // u = low two bits | 4 * hmask bit = q + 4
    for (int i = 0; i < QK_K; ++i)
        u[i] = ((x.qs[32 * (i / 128) + i % 32] >> (2 * (i % 128 / 32))) & 3) | ((x.hmask[i % 32] >> (i / 32)) & 1) << 2;
    int8_t sc[16];
    unpack_q3_k_scales(x.scales, sc);
    for (int j = 0; j < 16; ++j) scale[j] = sc[j] - 32;
    int32_t bias[8];
    scaled_lanes<lane_of_pairs>(u, scale, y.qs, k->s);
    pair_lanes(scale, y.bsums, bias);
    for (int l = 0; l < 8; ++l) {
        k->s[l] -= 4 * bias[l];
        k->m[l] = 0;
    }
}

// Q4_K / Q5_K: 32-weight sub-blocks; the mins pair sub-blocks 2l and 2l + 1 in lanes 0..3.
static inline void lanes_k4(const int* u, const uint8_t* packed_scales, const block_q8_K& y, KLanes* k) {
    uint8_t sm[16];  // scales[0..7], mins[8..15]
    unpack_q4_k_scales(packed_scales, sm);
    int scale[16];
    for (int j = 0; j < 16; ++j) scale[j] = sm[j / 2];
    scaled_lanes<lane_by_4>(u, scale, y.qs, k->s);
    for (int l = 0; l < 8; ++l)
        k->m[l] = l < 4 ? sm[8 + 2 * l] * (y.bsums[4 * l] + y.bsums[4 * l + 1]) + sm[9 + 2 * l] * (y.bsums[4 * l + 2] + y.bsums[4 * l + 3]) : 0;
}

static inline void klanes(const block_q4_K& x, const block_q8_K& y, KLanes* k) {
    int u[QK_K];
    for (int i = 0; i < QK_K; ++i) u[i] = (x.qs[32 * (i / 64) + i % 32] >> (4 * (i / 32 % 2))) & 0xF;
    lanes_k4(u, x.scales, y, k);
}

static inline void klanes(const block_q5_K& x, const block_q8_K& y, KLanes* k) {
    int u[QK_K];
    for (int i = 0; i < QK_K; ++i)
        u[i] = ((x.qs[32 * (i / 64) + i % 32] >> (4 * (i / 32 % 2))) & 0xF) | ((x.qh[i % 32] >> (i / 32)) & 1) << 4;
    lanes_k4(u, x.scales, y, k);
}

static inline void klanes(const block_q6_K& x, const block_q8_K& y, KLanes* k) {
    int u[QK_K], scale[16];  // u = q + 32
    for (int i = 0; i < QK_K; ++i) {
        const int h = i / 128, q = i % 128 / 32, l = i % 32;
        u[i] = ((x.ql[64 * h + 32 * (q % 2) + l] >> (4 * (q / 2))) & 0xF) | ((x.qh[32 * h + l] >> (2 * q)) & 3) << 4;
    }
    for (int j = 0; j < 16; ++j) scale[j] = x.scales[j];
    int32_t offset[8];
    scaled_lanes<lane_by_4>(u, scale, y.qs, k->s);
    pair_lanes(scale, y.bsums, offset);
    for (int l = 0; l < 8; ++l) {
        k->s[l] -= 32 * offset[l];
        k->m[l] = 0;
    }
}

template <class B> static inline float dmin_of(const B& x) { return fp16_to_fp32(x.dmin); }
template <> inline float dmin_of(const block_q3_K&) { return 0.0f; }
template <> inline float dmin_of(const block_q6_K&) { return 0.0f; }

// The x86 vec_dot: per lane acc = fma(d_x * d_y, s, acc).  Q2_K takes its mins
// into the same lanes (fma(-dmin, m, acc)); Q4_K/Q5_K into a 4-lane chain of
// their own, added after the horizontal sums.
template <class B>
float dot_k(int64_t n, const void* w, const void* vy) {
    const B* x = static_cast<const B*>(w);
    const block_q8_K* y = static_cast<const block_q8_K*>(vy);
    constexpr bool MIN_OWN_CHAIN = std::is_same<B, block_q4_K>::value || std::is_same<B, block_q5_K>::value;
    float acc[8] = {0}, accm[4] = {0};
    KLanes k;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        klanes(x[i], y[i], &k);
        const float d = fp16_to_fp32(x[i].d) * y[i].d, dmin = dmin_of(x[i]) * y[i].d;
        for (int l = 0; l < 8; ++l) acc[l] = std::fmaf(d, (float)k.s[l], acc[l]);
        if (std::is_same<B, block_q2_K>::value)
            for (int l = 0; l < 8; ++l) acc[l] = std::fmaf(-dmin, (float)k.m[l], acc[l]);
        if (MIN_OWN_CHAIN)
            for (int l = 0; l < 4; ++l) accm[l] = std::fmaf(-dmin, (float)k.m[l], accm[l]);
    }
    return ggml_hsum8(acc) + ((accm[0] + accm[2]) + (accm[1] + accm[3]));
}

// llama.cpp's tiled k-quant matmul (see KernelSet::dot_tiled): per super-block
// the exact totals s and m, r = d * s - dmin * m (product, then fused),
// acc += r * d_act (fused).
template <class B>
float dot_k_tiled(int64_t n, const void* w, const void* vy) {
    const B* x = static_cast<const B*>(w);
    const block_q8_K* y = static_cast<const block_q8_K*>(vy);
    float acc = 0.0f;
    KLanes k;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        klanes(x[i], y[i], &k);
        int32_t s = 0, m = 0;
        for (int l = 0; l < 8; ++l) {
            s += k.s[l];
            m += k.m[l];
        }
        const float r = std::fmaf(-dmin_of(x[i]), (float)m, fp16_to_fp32(x[i].d) * (float)s);
        acc = std::fmaf(r, y[i].d, acc);
    }
    return acc;
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

    ks->dot[TYPE_Q2_K] = rows<dot_k<block_q2_K>>;
    ks->dot[TYPE_Q3_K] = rows<dot_k<block_q3_K>>;
    ks->dot[TYPE_Q4_K] = rows<dot_k<block_q4_K>>;
    ks->dot[TYPE_Q5_K] = rows<dot_k<block_q5_K>>;
    ks->dot[TYPE_Q6_K] = rows<dot_k<block_q6_K>>;
    ks->dot_tiled[TYPE_Q2_K] = rows<dot_k_tiled<block_q2_K>>;
    ks->dot_tiled[TYPE_Q3_K] = rows<dot_k_tiled<block_q3_K>>;
    ks->dot_tiled[TYPE_Q4_K] = rows<dot_k_tiled<block_q4_K>>;
    ks->dot_tiled[TYPE_Q5_K] = rows<dot_k_tiled<block_q5_K>>;
    ks->dot_tiled[TYPE_Q6_K] = rows<dot_k_tiled<block_q6_K>>;
    ks->dot_gemv[TYPE_Q4_K] = rows<dot_q4_k_packed<4>>;
    ks->dot_gemm[TYPE_Q4_K] = rows<dot_q4_k_packed<1>>;
}

}  // namespace ll
