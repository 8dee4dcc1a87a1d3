// x86 SIMD kernels for the float types and the legacy 32-weight block formats
// (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and the Q8_0/Q8_1 activation
// quantizers.  Compiled twice: LL_ISA=avx2 (-mavx2 -mfma -mf16c) and
// LL_ISA=avx512 (adds AVX-512 F/BW/VL/DQ/VNNI).  Both builds run the same
// 256-bit code and give the same floats; they differ only in MAC_U8S8, the
// u8 x s8 multiply-accumulate of int_macc.h.
//
// Integer math is exact: 4/5-bit weights stay unsigned (0..15 / 0..31) so
// VPMADDUBSW never saturates (31 * 128 * 2 < 32767), and Q8_0 x Q8_0 uses the
// sign trick, |w| (0..128) times sign(y, w).  Q4_0/Q5_0's -8/-16 offset is
// applied per block in float through the activation block sum (see
// "quantized dot products" below, which also explains how the matvec kernels
// keep up with DRAM).  Dequantization and the activation quantizers give
// bit-identical results to the scalar reference.  The kernels for Q4_0
// weights as llama.cpp repacks them are in repack.cpp.
//
// Everything here has internal linkage (anonymous namespace): the two ISA
// builds of this file must not share any externally visible inline symbol.
#include <immintrin.h>

#include <cstddef>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../kernels.h"

#include "common.h"
#include "ggml_vec_dot.h"
#include "int_macc.h"

namespace ll {
namespace {

// ---- helpers ----

// Stops the compiler from fusing a rounded product into a later add (GCC
// contracts vector intrinsics into FMA under -ffp-contract=fast); used where
// the result must match the scalar reference bit for bit.
inline __m256 opaque(__m256 v) {
    __asm__("" : "+x"(v));
    return v;
}

inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

// 32 bytes (int8) -> 4 x 8 floats times d, stored to dst[0..31].
inline void store_i8x32_scaled(__m256i q, float d, float* dst) {
    const __m256 vd = _mm256_set1_ps(d);
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    _mm256_storeu_ps(dst + 0, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), vd));
    _mm256_storeu_ps(dst + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))), vd));
    _mm256_storeu_ps(dst + 16, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), vd));
    _mm256_storeu_ps(dst + 24, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))), vd));
}

// 32 bytes (0..31 unsigned) -> q * d + m (product rounded first, as in scalar).
inline void store_u8x32_scaled_min(__m256i q, float d, float m, float* dst) {
    const __m256 vd = _mm256_set1_ps(d), vm = _mm256_set1_ps(m);
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        const __m256 p = opaque(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[j])), vd));
        _mm256_storeu_ps(dst + 8 * j, _mm256_add_ps(p, vm));
    }
}

// ---- dequantize ----

void dequant_f32(const void* src, float* dst, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }

void dequant_f16(const void* src, float* dst, int64_t n) {
    const half_t* s = static_cast<const half_t*>(src);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
    for (; i < n; i++) dst[i] = h2f(s[i]);
}

void dequant_bf16(const void* src, float* dst, int64_t n) {
    const bf16_t* s = static_cast<const bf16_t*>(src);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
    }
    for (; i < n; i++) dst[i] = bf16_to_fp32(s[i]);
}

void dequant_q4_0(const void* src, float* dst, int64_t n) {
    const block_q4_0* b = static_cast<const block_q4_0*>(src);
    for (int64_t i = 0; i < n / QK; i++, dst += QK)
        store_i8x32_scaled(_mm256_sub_epi8(nibbles32(b[i].qs), _mm256_set1_epi8(8)), h2f(b[i].d), dst);
}

void dequant_q4_1(const void* src, float* dst, int64_t n) {
    const block_q4_1* b = static_cast<const block_q4_1*>(src);
    for (int64_t i = 0; i < n / QK; i++, dst += QK) store_u8x32_scaled_min(nibbles32(b[i].qs), h2f(b[i].d), h2f(b[i].m), dst);
}

void dequant_q5_0(const void* src, float* dst, int64_t n) {
    const block_q5_0* b = static_cast<const block_q5_0*>(src);
    for (int64_t i = 0; i < n / QK; i++, dst += QK)
        store_i8x32_scaled(_mm256_sub_epi8(q5_values(b[i].qs, b[i].qh), _mm256_set1_epi8(16)), h2f(b[i].d), dst);
}

void dequant_q5_1(const void* src, float* dst, int64_t n) {
    const block_q5_1* b = static_cast<const block_q5_1*>(src);
    for (int64_t i = 0; i < n / QK; i++, dst += QK)
        store_u8x32_scaled_min(q5_values(b[i].qs, b[i].qh), h2f(b[i].d), h2f(b[i].m), dst);
}

void dequant_q8_0(const void* src, float* dst, int64_t n) {
    const block_q8_0* b = static_cast<const block_q8_0*>(src);
    for (int64_t i = 0; i < n / QK; i++, dst += QK)
        store_i8x32_scaled(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs)), h2f(b[i].d), dst);
}

void dequant_q8_1(const void* src, float* dst, int64_t n) {
    const block_q8_1* b = static_cast<const block_q8_1*>(src);
    for (int64_t i = 0; i < n / QK; i++, dst += QK)
        store_i8x32_scaled(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs)), h2f(b[i].d), dst);
}

// ---- activation quantizers ----
// Same bytes as the scalar reference, which follows llama.cpp's runtime (x86
// SIMD) quantizers: d = amax / 127, id = 127 / amax (0 for an all-zero block),
// q = x * id rounded half to even.

// Quantizes 32 floats: returns d, writes qs, and the int32 lanes summing to sum(q).
inline float quant_block32(const float* x, int8_t* qs, __m256i* lane_sums) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v[4];
    for (int j = 0; j < 4; j++) v[j] = _mm256_loadu_ps(x + 8 * j);
    __m256 amax = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                                _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
    const float m = hmax8(amax);
    const float d = m / 127.0f;
    const __m256 vid = _mm256_set1_ps(m != 0.0f ? 127.0f / m : 0.0f);
    __m256i q[4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++)
        q[j] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[j], vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    *lane_sums = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    // pack i32 -> i8; packs work per 128-bit lane, the permute restores order
    const __m256i p01 = _mm256_packs_epi32(q[0], q[1]), p23 = _mm256_packs_epi32(q[2], q[3]);
    const __m256i p = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs), p);
    return d;
}

void quant_q8_0(const float* x, void* dst, int64_t n) {
    block_q8_0* y = static_cast<block_q8_0*>(dst);
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        __m256i sums;
        y[i].d = f2h(quant_block32(x, y[i].qs, &sums));
    }
}

void quant_q8_1(const float* x, void* dst, int64_t n) {
    block_q8_1* y = static_cast<block_q8_1*>(dst);
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        __m256i sums;
        const float d = quant_block32(x, y[i].qs, &sums);
        y[i].d = f2h(d);
        y[i].s = f2h(d * (float)hsum8i(sums));
    }
}

// The F16 KV cache's rows, as ggml's F16C build stores them
void quant_f16(const float* x, void* dst, int64_t n) {
    half_t* y = static_cast<half_t*>(dst);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = f2h(x[i]);
}

// ---- float dot products (one row at a time; x is float32) ----

inline __m256 load_f16(const half_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline __m256 load_bf16(const bf16_t* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}
inline float scalar_f16(half_t v) { return h2f(v); }
inline float scalar_bf16(bf16_t v) { return bf16_to_fp32(v); }

// One row at a time (x stays in L1), four independent accumulators.  No
// software prefetch here: a single sequential stream per call is what the
// hardware prefetchers handle well (measured: adding one made F16 slower).
#define LL_FLOAT_DOT(NAME, T, LOAD, SCALAR)                                                              \
    float NAME##_row(int64_t n, const T* a, const float* b) {                                            \
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;                                      \
        int64_t i = 0;                                                                                   \
        for (; i + 32 <= n; i += 32) {                                                                   \
            s0 = _mm256_fmadd_ps(LOAD(a + i), _mm256_loadu_ps(b + i), s0);                               \
            s1 = _mm256_fmadd_ps(LOAD(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);                       \
            s2 = _mm256_fmadd_ps(LOAD(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);                     \
            s3 = _mm256_fmadd_ps(LOAD(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);                     \
        }                                                                                                \
        for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(LOAD(a + i), _mm256_loadu_ps(b + i), s0);        \
        float s = hsum_ggml(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));                    \
        for (; i < n; i++) s += SCALAR(a[i]) * b[i];                                                     \
        return s;                                                                                        \
    }                                                                                                    \
    void NAME(int64_t n, int64_t nrows, const void* w, size_t stride, const void* x, float* y) {         \
        const uint8_t* p = static_cast<const uint8_t*>(w);                                               \
        for (int64_t r = 0; r < nrows; r++)                                                              \
            y[r] = NAME##_row(n, reinterpret_cast<const T*>(p + r * stride), static_cast<const float*>(x)); \
    }

// ggml_vec_dot_f32, which llama.cpp uses for F32 weights where tinyBLAS does
// not apply (one token, or k not a multiple of the lane width): four L-lane
// FMA accumulators over chunks of 4L, GGML_F32_VEC_REDUCE's adds, then the tail
// one product and one add at a time (no FMA: ggml's build does not fuse them).
float dot_f32_row(int64_t n, const float* a, const float* b) {
    const int64_t np = n & ~int64_t(4 * GGML_LANES - 1);
    float s = ggml_vec_dot_chunks(n, [a](int64_t i) { return _mm256_loadu_ps(a + i); }, b);
    for (int64_t i = np; i < n; i++) {
        float prod = a[i] * b[i];
        __asm__("" : "+x"(prod));  // keeps the compiler from fusing the add into an FMA
        s += prod;
    }
    return s;
}

void dot_f32(int64_t n, int64_t nrows, const void* w, size_t stride, const void* x, float* y) {
    const uint8_t* p = static_cast<const uint8_t*>(w);
    for (int64_t r = 0; r < nrows; r++) y[r] = dot_f32_row(n, reinterpret_cast<const float*>(p + r * stride), static_cast<const float*>(x));
}

// llamafile's tinyBLAS for F32 batches (KernelSet::dot_sgemm; n is a multiple
// of the lane width L): one L-lane FMA accumulator per row, its horizontal sum
void dot_f32_sgemm(int64_t n, int64_t nrows, const void* w, size_t stride, const void* x, float* y) {
    const uint8_t* p = static_cast<const uint8_t*>(w);
    const float* b = static_cast<const float*>(x);
    for (int64_t r = 0; r < nrows; r++) {
        const float* a = reinterpret_cast<const float*>(p + r * stride);
        __m256 acc[GGML_HALVES];
        for (auto& h : acc) h = _mm256_setzero_ps();
        for (int64_t i = 0; i < n; i += GGML_LANES)
            for (int h = 0; h < GGML_HALVES; h++)
                acc[h] = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8 * h), _mm256_loadu_ps(b + i + 8 * h), acc[h]);
        y[r] = hsum_lanes(acc);
    }
}

LL_FLOAT_DOT(dot_f16, half_t, load_f16, scalar_f16)
LL_FLOAT_DOT(dot_bf16, bf16_t, load_bf16, scalar_bf16)
#undef LL_FLOAT_DOT

// ---- quantized dot products ----
//
// Structure (all five formats):
//  * The activation row is prepared once per call: d_y per block, plus for
//    Q8_1 its s = d_y * sum(y) and for Q4_0/Q5_0 the offset (8 or 16) times
//    the sums of y over each 4-byte group.  The 4/5-bit
//    weights are unpacked unsigned (u); Q4_0/Q5_0 subtract those products from
//    the int32 lanes of sum(u * y), which leaves exactly ggml's signed lanes
//    sum((u - offset) * y), so the float FMA that follows rounds as llama.cpp's
//    does.  Q4_1/Q5_1 add m_w * s_y per block in float, as ggml does.
//  * Weight rows go ROWS_PER_PASS = 4 at a time (leftover rows one at a time):
//    each activation block is loaded once per pass, the four float
//    accumulators are independent dependency chains, and each row gets one
//    horizontal sum at the end.
//  * While a pass streams its rows, it prefetches the same bytes of the rows
//    of the next pass (R * stride further on) into L1, and of the pass four
//    further on into L2 (prefetch_passes): the hardware prefetchers alone
//    leave the loads waiting on DRAM (measured: about 60% of stream_read
//    bandwidth on one core without either, about 90% with the first; the
//    second took the 262144x640 Q8_0 classifier from 19 to 33 GB/s at two
//    threads).
//  * Per block, the rows' fp16 scales are packed into one u64 in general
//    registers and converted by a single VCVTPH2PS; each row's FMA takes its
//    product with d_y by an in-register lane broadcast (row_scales, lane_of);
//    the R constant terms are one 4-lane FMA.

constexpr int ROWS_PER_PASS = 4;

// A pass's prefetches for row b's current bytes: the next pass's into L1,
// the pass four further on's into L2.
template <int R>
LL_INLINE void prefetch_passes(const uint8_t* b, size_t stride) {
    _mm_prefetch(reinterpret_cast<const char*>(b) + R * stride, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(b) + 4 * R * stride, _MM_HINT_T1);
}

// One row's chains run over all its blocks, as ggml's do (a row cut into
// parts, each part's sum added, would round differently), so the prepared
// activations are as long as the row: this thread's buffers, grown as needed.
struct Prep {
    float* d;
    float* c;
    // Q4_0 / Q5_0: offset * (sums of the activations over each 4-byte group),
    // subtracted from the unsigned products' lane sums so that every int32
    // lane equals ggml's signed one and the float rounding that follows is
    // llama.cpp's.
    __m256i* off;
};

inline Prep prep_buffers(int64_t nb) {
    thread_local std::vector<float> d, c;
    thread_local std::vector<Bytes32> off;
    if ((int64_t)d.size() < nb) {
        d.resize(nb);
        c.resize(nb);
        off.resize(nb);
    }
    return Prep{d.data(), c.data(), reinterpret_cast<__m256i*>(off.data())};
}

// Q8_0 activations; OFFSET = 8 (Q4_0), 16 (Q5_0), or 0 (Q8_0: no offset).
template <int OFFSET>
inline void prep_q8_0(const block_q8_0* y, int64_t nb, Prep* p) {
    for (int64_t i = 0; i < nb; i++) {
        p->d[i] = h2f(y[i].d);
        if (OFFSET) {
            const __m256i qy = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[i].qs));
            const __m256i lane_sums = MAC_U8S8(_mm256_setzero_si256(), _mm256_set1_epi8(1), qy);
            p->off[i] = _mm256_mullo_epi32(lane_sums, _mm256_set1_epi32(OFFSET));
        }
    }
}

inline void prep_q8_1(const block_q8_1* y, int64_t nb, Prep* p) {
    for (int64_t i = 0; i < nb; i++) {
        p->d[i] = h2f(y[i].d);
        p->c[i] = h2f(y[i].s);
    }
}

// The fp16 at p + r * stride for r < R, as floats in lanes 0..R-1 (others 0).
template <int R>
inline __m128 row_halves(const uint8_t* p, size_t stride) {
    uint64_t h = 0;
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) h |= (uint64_t)load_u16(p + r * stride) << (16 * r);
    return _mm_cvtph_ps(_mm_cvtsi64_si128((long long)h));
}

// d_w * d_y for rows 0..R-1 (R <= 4) in lanes 0..R-1 of both 128-bit halves,
// so that lane_of broadcasts a row's scale in-register (one VPERMILPS).  A
// stack array and broadcast loads instead cost a store-to-load round trip per
// block, measured at about a third of the kernel's time.
template <int R>
inline __m256 row_scales(const uint8_t* p, size_t stride, const float* dy) {
    const __m128 dw = row_halves<R>(p, stride);
    return _mm256_mul_ps(_mm256_set_m128(dw, dw), _mm256_broadcast_ss(dy));
}
template <int L>
inline __m256 lane(__m256 v) { return _mm256_permute_ps(v, L * 0x55); }
inline __m256 lane_of(__m256 v, int l) {  // l is a constant once the row loop is unrolled
    switch (l) {
        case 0: return lane<0>(v);
        case 1: return lane<1>(v);
        case 2: return lane<2>(v);
        default: return lane<3>(v);
    }
}

// Block layouts of the 4/5-bit formats: byte offsets of d, m (or -1), qh (or -1), qs.
template <int T> struct Fmt;
template <> struct Fmt<TYPE_Q4_0> { enum { size = sizeof(block_q4_0), d = 0, m = -1, qh = -1, qs = offsetof(block_q4_0, qs) }; };
template <> struct Fmt<TYPE_Q4_1> { enum { size = sizeof(block_q4_1), d = 0, m = offsetof(block_q4_1, m), qh = -1, qs = offsetof(block_q4_1, qs) }; };
template <> struct Fmt<TYPE_Q5_0> { enum { size = sizeof(block_q5_0), d = 0, m = -1, qh = offsetof(block_q5_0, qh), qs = offsetof(block_q5_0, qs) }; };
template <> struct Fmt<TYPE_Q5_1> { enum { size = sizeof(block_q5_1), d = 0, m = offsetof(block_q5_1, m), qh = offsetof(block_q5_1, qh), qs = offsetof(block_q5_1, qs) }; };

// Q4_0 / Q4_1 / Q5_0 / Q5_1 against Q8_0 / Q8_1 (see the structure notes above).
template <int R, bool PREFETCH, int T, class YBLOCK>
inline void dot_q45_pass(int64_t nb, const uint8_t* w, size_t stride, const YBLOCK* y, const Prep* p, float* out) {
    typedef Fmt<T> F;
    __m256 acc[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
    __m128 cacc = _mm_setzero_ps();  // Q4_1 / Q5_1, lane r: sum of m_w * s_y for row r
    for (int64_t i = 0; i < nb; i++, w += F::size) {
        const __m256i qy = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[i].qs));
        const __m256 sc = row_scales<R>(w + F::d, stride, p->d + i);
        if (F::m >= 0) cacc = _mm_fmadd_ps(row_halves<R>(w + F::m, stride), _mm_broadcast_ss(p->c + i), cacc);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const uint8_t* b = w + r * stride;
            if (PREFETCH) prefetch_passes<R>(b, stride);
            const __m256i qw = F::qh >= 0 ? q5_values(b + F::qs, b + F::qh) : nibbles32(b + F::qs);
            __m256i sum = MAC_U8S8(_mm256_setzero_si256(), qw, qy);  // sum(u * y) per 4-byte lane, exact
            if (F::m < 0) sum = _mm256_sub_epi32(sum, p->off[i]);   // sum((u - offset) * y): ggml's signed lanes
            acc[r] = _mm256_fmadd_ps(lane_of(sc, r), _mm256_cvtepi32_ps(sum), acc[r]);
        }
    }
    alignas(16) float c[4];
    _mm_store_ps(c, cacc);
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) out[r] = hsum_ggml(acc[r]) + c[r];
}

// Q8_0 against Q8_0, sign trick: |w| (0..128, unsigned) * sign(y, w) = w * y.
template <int R, bool PREFETCH, int T, class YBLOCK>
inline void dot_q8_0_pass(int64_t nb, const uint8_t* w, size_t stride, const YBLOCK* y, const Prep* p, float* out) {
    __m256 acc[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++, w += sizeof(block_q8_0)) {
        const __m256i qy = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[i].qs));
        const __m256 sc = row_scales<R>(w, stride, p->d + i);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const uint8_t* b = w + r * stride;
            if (PREFETCH) prefetch_passes<R>(b, stride);
            const __m256i qw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + offsetof(block_q8_0, qs)));
            const __m256i sum = MAC_U8S8(_mm256_setzero_si256(), _mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qy, qw));
            acc[r] = _mm256_fmadd_ps(lane_of(sc, r), _mm256_cvtepi32_ps(sum), acc[r]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) out[r] = hsum_ggml(acc[r]);
}

#define LL_QUANT_DOT(NAME, PASS, T, WBLOCK, YBLOCK, PREP_FN)                                                  \
    void NAME(int64_t n, int64_t nrows, const void* w, size_t stride, const void* x, float* y) {              \
        const uint8_t* p = static_cast<const uint8_t*>(w);                                                    \
        const YBLOCK* xb = static_cast<const YBLOCK*>(x);                                                     \
        const int64_t nb = n / QK;                                                                            \
        Prep prep = prep_buffers(nb);                                                                         \
        PREP_FN(xb, nb, &prep);                                                                               \
        int64_t r = 0;                                                                                        \
        for (; r + 2 * ROWS_PER_PASS <= nrows; r += ROWS_PER_PASS)                                            \
            PASS<ROWS_PER_PASS, true, T, YBLOCK>(nb, p + r * stride, stride, xb, &prep, y + r);               \
        for (; r + ROWS_PER_PASS <= nrows; r += ROWS_PER_PASS)                                                \
            PASS<ROWS_PER_PASS, false, T, YBLOCK>(nb, p + r * stride, stride, xb, &prep, y + r);              \
        for (; r < nrows; r++) PASS<1, false, T, YBLOCK>(nb, p + r * stride, stride, xb, &prep, y + r);       \
    }

LL_QUANT_DOT(dot_q4_0, dot_q45_pass, TYPE_Q4_0, block_q4_0, block_q8_0, prep_q8_0<8>)
LL_QUANT_DOT(dot_q5_0, dot_q45_pass, TYPE_Q5_0, block_q5_0, block_q8_0, prep_q8_0<16>)
LL_QUANT_DOT(dot_q4_1, dot_q45_pass, TYPE_Q4_1, block_q4_1, block_q8_1, prep_q8_1)
LL_QUANT_DOT(dot_q5_1, dot_q45_pass, TYPE_Q5_1, block_q5_1, block_q8_1, prep_q8_1)
LL_QUANT_DOT(dot_q8_0, dot_q8_0_pass, TYPE_Q8_0, block_q8_0, block_q8_0, prep_q8_0<0>)
#undef LL_QUANT_DOT

// ---- batch tiles (KernelSet::dot_tile) ----
//
// TILE_ROWS weight rows x TILE_TOKS activation rows per pass: the 4/5-bit
// weights are unpacked to bytes once per call (dot_tile), each weight vector
// serves four tokens and each activation block's offset sums serve TILE_ROWS
// rows as the starting value of their multiply-accumulates, which then yield
// ggml's signed lanes sum((u - offset) * y) directly.  With VPDPBUSD, Q8_0
// takes the same path (u = w + 128, offset 128); without it w + 128 would
// overflow VPMADDUBSW's int16 pair sums, and Q8_0 keeps dot's sign trick.
// Per output the integer lanes, the scale product d_w * d_y, the FMA chain,
// the min chain and the horizontal sum are dot's, so the floats are the same.
// Weight tiles are small enough to stay in cache while the tokens pass over
// them (ops.cpp), so nothing is prefetched.

constexpr int TILE_ROWS = 2, TILE_TOKS = 4;
// Q8_0's passes of one token group take four rows where there are 32 vector
// registers: it has no unpacked rows or min chain to hold, and the classifiers
// it is used for measured 16% faster at four tokens (4/5-bit types: no gain).
#if defined(__AVX512VL__) || defined(LL_VNNI_EMULATED)
constexpr int Q8_TILE_ROWS = 4;
#else
constexpr int Q8_TILE_ROWS = 2;
#endif
#if defined(LL_VNNI_EMULATED) || (defined(__AVX512VNNI__) && defined(__AVX512VL__))
constexpr bool Q8_UNSIGNED = true;  // MAC_U8S8 is VPDPBUSD: w + 128 (up to 255) times y is exact
#else
constexpr bool Q8_UNSIGNED = false;
#endif

// The activation scales of TILE_TOKS tokens, converted once per token group:
// d[i][t] = d_y of token t's block i, and s[i][t] its Q8_1 sum.
struct TileScales {
    alignas(16) float d[SEG][TILE_TOKS];
    alignas(16) float s[SEG][TILE_TOKS];
};

template <int RN, class YBLOCK>
inline void tile_scales(int64_t nb, const uint8_t* x, size_t x_stride, TileScales* ts) {
    for (int64_t i = 0; i < nb; i++)
        for (int t = 0; t < TILE_TOKS; t++) {
            const YBLOCK* b = reinterpret_cast<const YBLOCK*>(x + (t < RN ? t : 0) * x_stride) + i;
            ts->d[i][t] = t < RN ? h2f(b->d) : 0.0f;
            if constexpr (std::is_same<YBLOCK, block_q8_1>::value) ts->s[i][t] = t < RN ? h2f(b->s) : 0.0f;
        }
}

// RM rows x RN tokens over nb blocks.  Q4_0/Q4_1/Q5_0/Q5_1 (Fmt) and Q8_0
// (T == TYPE_Q8_0, sign trick as in dot_q8_0_pass).
// u: the rows' weights already unpacked to bytes (see dot_tile), nb 32-byte
// vectors per row; null for Q8_0, whose bytes are the weights.
template <int RM, int RN, int T, class YBLOCK>
inline void tile_pass(int64_t nb, const uint8_t* w, size_t stride, const Bytes32* u, const uint8_t* x, size_t x_stride,
                      const TileScales* ts, float* y, size_t y_stride) {
    constexpr bool Q8 = T == TYPE_Q8_0;
    constexpr bool SIGNED_Q8 = Q8 && !Q8_UNSIGNED;
    typedef Fmt<Q8 ? TYPE_Q4_0 : T> F;  // Q8_0 reads its own layout below
    constexpr int64_t WSIZE = Q8 ? (int64_t)sizeof(block_q8_0) : (int64_t)F::size;
    constexpr bool HAS_MIN = !Q8 && F::m >= 0;
    constexpr int OFFSET = Q8 ? (Q8_UNSIGNED ? 128 : 0) : T == TYPE_Q4_0 ? 8 : T == TYPE_Q5_0 ? 16 : 0;
    const YBLOCK* yb[RN];
    for (int t = 0; t < RN; t++) yb[t] = reinterpret_cast<const YBLOCK*>(x + t * x_stride);
    __m256 acc[RM][RN];
    __m128 cacc[RM];  // lane t: the min chain sum of m_w * s_y (Q4_1 / Q5_1)
    // every loop over r and t unrolled, so that acc stays in registers
#pragma GCC unroll 4
    for (int r = 0; r < RM; r++) {
        cacc[r] = _mm_setzero_ps();
#pragma GCC unroll 4
        for (int t = 0; t < RN; t++) acc[r][t] = _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < nb; i++, w += WSIZE) {
        const __m128 vdy = _mm_load_ps(ts->d[i]);
        __m256i qw[RM], sw[RM];  // unpacked weights; signed Q8_0: |w| in qw, w itself in sw
        __m256 sc[RM];  // d_w[r] * d_y[t] in lane t of both halves (lane_of), as in dot
#pragma GCC unroll 4
        for (int r = 0; r < RM; r++) {
            const uint8_t* b = w + r * stride;
            _mm_prefetch(reinterpret_cast<const char*>(b) + RM * stride, _MM_HINT_T0);  // the next pass's rows, as dot
            const __m128 v = _mm_mul_ps(_mm_set1_ps(h2f(load_u16(b))), vdy);  // d leads every block
            sc[r] = _mm256_set_m128(v, v);
            if constexpr (Q8) {
                sw[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + offsetof(block_q8_0, qs)));
                qw[r] = SIGNED_Q8 ? _mm256_sign_epi8(sw[r], sw[r]) : _mm256_xor_si256(sw[r], _mm256_set1_epi8((char)0x80));
            } else {
                qw[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(u[r * nb + i].b));
            }
            if constexpr (HAS_MIN) cacc[r] = _mm_fmadd_ps(_mm_set1_ps(h2f(load_u16(b + F::m))), _mm_load_ps(ts->s[i]), cacc[r]);
        }
#pragma GCC unroll 4
        for (int t = 0; t < RN; t++) {
            const __m256i qy = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(yb[t][i].qs));
            // -OFFSET * (sums of y over each 4-byte group): minus dot's Prep::off
            const __m256i start = OFFSET ? _mm256_sub_epi32(_mm256_setzero_si256(),
                                                            MAC_U8S8(_mm256_setzero_si256(), _mm256_set1_epi8((char)OFFSET), qy))
                                         : _mm256_setzero_si256();
#pragma GCC unroll 4
            for (int r = 0; r < RM; r++) {
                const __m256i sum = SIGNED_Q8 ? MAC_U8S8(start, qw[r], _mm256_sign_epi8(qy, sw[r])) : MAC_U8S8(start, qw[r], qy);
                acc[r][t] = _mm256_fmadd_ps(lane_of(sc[r], t), _mm256_cvtepi32_ps(sum), acc[r][t]);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < RM; r++) {
        alignas(16) float c[4];
        _mm_store_ps(c, cacc[r]);
#pragma GCC unroll 4
        for (int t = 0; t < RN; t++) y[t * y_stride + r] = hsum_ggml(acc[r][t]) + c[t];
    }
}

template <int RN, int T, class YBLOCK>
inline void tile_rows(int64_t nb, int64_t nrows, const uint8_t* w, size_t stride, const Bytes32* u, const uint8_t* x, size_t x_stride,
                      TileScales* ts, float* y, size_t y_stride) {
    tile_scales<RN, YBLOCK>(nb, x, x_stride, ts);
    int64_t r = 0;
    for (; r + TILE_ROWS <= nrows; r += TILE_ROWS)
        tile_pass<TILE_ROWS, RN, T, YBLOCK>(nb, w + r * stride, stride, u ? u + r * nb : u, x, x_stride, ts, y + r, y_stride);
    for (; r < nrows; r++) tile_pass<1, RN, T, YBLOCK>(nb, w + r * stride, stride, u ? u + r * nb : u, x, x_stride, ts, y + r, y_stride);
}

// The 4/5-bit weights of rows [0, nrows) unpacked to bytes, nb vectors per row.
template <int T>
inline void unpack_rows(int64_t nb, int64_t nrows, const uint8_t* p, size_t stride, Bytes32* u) {
    typedef Fmt<T> F;
    for (int64_t r = 0; r < nrows; r++)
        for (int64_t i = 0; i < nb; i++) {
            const uint8_t* b = p + r * stride + i * F::size;
            _mm_prefetch(reinterpret_cast<const char*>(b) + 4 * stride, _MM_HINT_T0);
            _mm256_store_si256(reinterpret_cast<__m256i*>(u[r * nb + i].b), F::qh >= 0 ? q5_values(b + F::qs, b + F::qh) : nibbles32(b + F::qs));
        }
}

// RM rows x rn tokens (rn <= TILE_TOKS, one group).
template <int RM, int T, class YBLOCK>
inline void pass_group(int rn, int64_t nb, const uint8_t* w, size_t stride, const Bytes32* u, const uint8_t* x, size_t x_stride,
                       const TileScales* ts, float* y, size_t y_stride) {
    switch (rn) {
        case 4: return tile_pass<RM, 4, T, YBLOCK>(nb, w, stride, u, x, x_stride, ts, y, y_stride);
        case 3: return tile_pass<RM, 3, T, YBLOCK>(nb, w, stride, u, x, x_stride, ts, y, y_stride);
        case 2: return tile_pass<RM, 2, T, YBLOCK>(nb, w, stride, u, x, x_stride, ts, y, y_stride);
        case 1: return tile_pass<RM, 1, T, YBLOCK>(nb, w, stride, u, x, x_stride, ts, y, y_stride);
        default: return;
    }
}

constexpr int FEW_GROUPS = 2;  // decode steps of up to 8 sequences (one group: tile_one_group)

// A few groups of tokens (a decode step of several sequences): each pass's
// rows unpacked just before the pass, every group over them, so that reading
// the weights from memory is spread over the arithmetic rather than done in
// one burst before it, with nothing computed meanwhile.
template <int T, class YBLOCK>
void tile_few_groups(int64_t nb, int64_t nrows, const uint8_t* p, size_t stride, const uint8_t* x, size_t x_stride, int64_t n_tok,
                     float* y, size_t y_stride) {
    const int n_groups = (int)((n_tok + TILE_TOKS - 1) / TILE_TOKS);
    auto rn_of = [&](int g) { return (int)std::min<int64_t>(TILE_TOKS, n_tok - g * TILE_TOKS); };
    TileScales ts[FEW_GROUPS];
    for (int g = 0; g < n_groups; g++) {
        const uint8_t* xg = x + g * TILE_TOKS * x_stride;
        switch (rn_of(g)) {
            case 4: tile_scales<4, YBLOCK>(nb, xg, x_stride, &ts[g]); break;
            case 3: tile_scales<3, YBLOCK>(nb, xg, x_stride, &ts[g]); break;
            case 2: tile_scales<2, YBLOCK>(nb, xg, x_stride, &ts[g]); break;
            default: tile_scales<1, YBLOCK>(nb, xg, x_stride, &ts[g]); break;
        }
    }
    thread_local std::vector<Bytes32> unpacked;
    unpacked.resize((size_t)(TILE_ROWS * nb));
    Bytes32* u = T != TYPE_Q8_0 ? unpacked.data() : nullptr;
    for (int64_t r = 0; r < nrows;) {
        const bool full = r + TILE_ROWS <= nrows;
        if constexpr (T != TYPE_Q8_0) unpack_rows<T>(nb, full ? TILE_ROWS : 1, p + r * stride, stride, u);
        for (int g = 0; g < n_groups; g++) {
            const uint8_t* xg = x + g * TILE_TOKS * x_stride;
            float* yg = y + g * TILE_TOKS * y_stride + r;
            if (full) pass_group<TILE_ROWS, T, YBLOCK>(rn_of(g), nb, p + r * stride, stride, u, xg, x_stride, &ts[g], yg, y_stride);
            else pass_group<1, T, YBLOCK>(rn_of(g), nb, p + r * stride, stride, u, xg, x_stride, &ts[g], yg, y_stride);
        }
        r += full ? TILE_ROWS : 1;
    }
}

// One group of RN <= TILE_TOKS tokens (a decode step of up to four
// sequences): as tile_few_groups, with the group's size known at compile time.
template <int RN, int T, class YBLOCK>
void tile_one_group(int64_t nb, int64_t nrows, const uint8_t* p, size_t stride, const uint8_t* x, size_t x_stride, float* y,
                    size_t y_stride) {
    TileScales ts;
    tile_scales<RN, YBLOCK>(nb, x, x_stride, &ts);
    thread_local std::vector<Bytes32> unpacked;
    unpacked.resize((size_t)(TILE_ROWS * nb));
    Bytes32* u = T != TYPE_Q8_0 ? unpacked.data() : nullptr;
    constexpr int RM = T == TYPE_Q8_0 ? Q8_TILE_ROWS : TILE_ROWS;
    int64_t r = 0;
    for (; r + RM <= nrows; r += RM) {
        if constexpr (T != TYPE_Q8_0) unpack_rows<T>(nb, RM, p + r * stride, stride, u);
        tile_pass<RM, RN, T, YBLOCK>(nb, p + r * stride, stride, u, x, x_stride, &ts, y + r, y_stride);
    }
    for (; r < nrows; r++) {
        if constexpr (T != TYPE_Q8_0) unpack_rows<T>(nb, 1, p + r * stride, stride, u);
        tile_pass<1, RN, T, YBLOCK>(nb, p + r * stride, stride, u, x, x_stride, &ts, y + r, y_stride);
    }
}

template <int T, class YBLOCK, void (*DOT)(int64_t, int64_t, const void*, size_t, const void*, float*)>
void dot_tile(int64_t n, int64_t nrows, const void* w, size_t stride, const void* x, size_t x_stride, int64_t n_tok, float* y,
              size_t y_stride) {
    const uint8_t* p = static_cast<const uint8_t*>(w);
    const uint8_t* xb = static_cast<const uint8_t*>(x);
    const int64_t nb = n / QK;
    if (nb > SEG) {  // longer than TileScales holds: dot, token by token
        for (int64_t t = 0; t < n_tok; t++) DOT(n, nrows, w, stride, xb + t * x_stride, y + t * y_stride);
        return;
    }
    switch (n_tok) {
        case 4: return tile_one_group<4, T, YBLOCK>(nb, nrows, p, stride, xb, x_stride, y, y_stride);
        case 3: return tile_one_group<3, T, YBLOCK>(nb, nrows, p, stride, xb, x_stride, y, y_stride);
        case 2: return tile_one_group<2, T, YBLOCK>(nb, nrows, p, stride, xb, x_stride, y, y_stride);
        case 1: return tile_one_group<1, T, YBLOCK>(nb, nrows, p, stride, xb, x_stride, y, y_stride);
        default: break;
    }
    if (n_tok <= FEW_GROUPS * TILE_TOKS) return tile_few_groups<T, YBLOCK>(nb, nrows, p, stride, xb, x_stride, n_tok, y, y_stride);
    // More tokens (a prompt): the 4/5-bit weights unpacked to bytes once for
    // all the tokens rather than once per group of TILE_TOKS (the rows stay
    // in cache meanwhile, see ops.cpp): it takes about a quarter of the
    // per-token vector work away and frees the registers the unpacking
    // constants held.
    const Bytes32* u = nullptr;
    if constexpr (T != TYPE_Q8_0) {
        thread_local std::vector<Bytes32> unpacked;
        unpacked.resize((size_t)(nrows * nb));
        unpack_rows<T>(nb, nrows, p, stride, unpacked.data());
        u = unpacked.data();
    }
    TileScales ts;
    int64_t t = 0;
    for (; t + TILE_TOKS <= n_tok; t += TILE_TOKS)
        tile_rows<TILE_TOKS, T, YBLOCK>(nb, nrows, p, stride, u, xb + t * x_stride, x_stride, &ts, y + t * y_stride, y_stride);
    const uint8_t* xt = xb + t * x_stride;
    float* yt = y + t * y_stride;
    switch (n_tok - t) {
        case 3: tile_rows<3, T, YBLOCK>(nb, nrows, p, stride, u, xt, x_stride, &ts, yt, y_stride); break;
        case 2: tile_rows<2, T, YBLOCK>(nb, nrows, p, stride, u, xt, x_stride, &ts, yt, y_stride); break;
        case 1: tile_rows<1, T, YBLOCK>(nb, nrows, p, stride, u, xt, x_stride, &ts, yt, y_stride); break;
        default: break;
    }
}

}  // namespace

void LL_REGISTER(legacy)(KernelSet* ks) {
    ks->lanes = GGML_LANES;
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

    ks->dot[TYPE_F32] = dot_f32;
    ks->dot_sgemm[TYPE_F32] = dot_f32_sgemm;
    ks->dot[TYPE_F16] = dot_f16;
    ks->dot[TYPE_BF16] = dot_bf16;
    ks->dot[TYPE_Q4_0] = dot_q4_0;
    ks->dot[TYPE_Q4_1] = dot_q4_1;
    ks->dot[TYPE_Q5_0] = dot_q5_0;
    ks->dot[TYPE_Q5_1] = dot_q5_1;
    ks->dot[TYPE_Q8_0] = dot_q8_0;
    ks->dot_tile[TYPE_Q4_0] = dot_tile<TYPE_Q4_0, block_q8_0, dot_q4_0>;
    ks->dot_tile[TYPE_Q4_1] = dot_tile<TYPE_Q4_1, block_q8_1, dot_q4_1>;
    ks->dot_tile[TYPE_Q5_0] = dot_tile<TYPE_Q5_0, block_q8_0, dot_q5_0>;
    ks->dot_tile[TYPE_Q5_1] = dot_tile<TYPE_Q5_1, block_q8_1, dot_q5_1>;
    ks->dot_tile[TYPE_Q8_0] = dot_tile<TYPE_Q8_0, block_q8_0, dot_q8_0>;
}

}  // namespace ll

#undef MAC_U8S8
