// Q4_1, Q5_0, Q5_1 and Q8_0 weights multiplied from their x16 copies
// (blocks.h interleave_rows): sixteen rows to a 512-bit register, one row
// per int32 lane, for one token (decode, KernelSet::dot_gemv_il) and for
// batches (dot_tile_il).
//
// ggml's vec_dot for these formats keeps eight float lanes per row: lane j
// is the chain of d_w * d_y times the exact sum over weight bytes 4j..4j+3
// with the activation's, to which Q4_1 / Q5_1 add the chain of m_w * s_y
// after the horizontal sum.  Here register j holds lane j of sixteen rows, so
// a block and a token cost eight VPDPBUSD against a broadcast activation
// dword, eight conversions and eight FMAs for all sixteen rows, where the
// row-major kernels (legacy.cpp) spend about as many instructions again per
// row on scale shuffles, and tiles.cpp's legacy tile transposes its rows on
// every call.  The copy is transposed once, at load time, so a decode step
// of one or a few sequences gets the same arithmetic as a prompt.  The
// integer sums are exact (unsigned weights u, started at -offset * sum(y)
// where the weight is u - offset) and the float steps are dot's, lane by
// lane, so every output is dot's bit for bit.
//
// Compiled once per ISA like the other x86 files; only the avx512 build
// (LL_ZMM) registers anything.
#include <immintrin.h>

#include <cstddef>
#include <vector>

#include "../kernels.h"

#include "common.h"
#include "transpose.h"

namespace ll {
namespace {

#if LL_ZMM
template <int T> struct X16;
template <> struct X16<TYPE_Q4_1> { typedef block_q4_1x16 B; typedef block_q8_1 Y; enum { offset = 0, min = 1, qh = 0 }; };
template <> struct X16<TYPE_Q5_0> { typedef block_q5_0x16 B; typedef block_q8_0 Y; enum { offset = 16, min = 0, qh = 1 }; };
template <> struct X16<TYPE_Q5_1> { typedef block_q5_1x16 B; typedef block_q8_1 Y; enum { offset = 0, min = 1, qh = 1 }; };
template <> struct X16<TYPE_Q8_0> { typedef block_q8_0x16 B; typedef block_q8_0 Y; enum { offset = 128, min = 0, qh = 0 }; };

// Register j of a block: the sixteen rows' unsigned weights 4j..4j+3.
template <int T>
LL_INLINE __m512i weights(const typename X16<T>::B& b, int j) {
    if constexpr (T == TYPE_Q8_0) {
        return _mm512_xor_si512(_mm512_loadu_si512(b.qs[j]), _mm512_set1_epi8((char)0x80));
    } else {
        const __m512i q = _mm512_loadu_si512(b.qs[j & 3]);
        __m512i u = _mm512_and_si512(j < 4 ? q : _mm512_srli_epi16(q, 4), _mm512_set1_epi8(0x0F));
        if constexpr (X16<T>::qh) u = _mm512_mask_add_epi8(u, _cvtu64_mask64(b.qh[j]), u, _mm512_set1_epi8(0x10));
        return u;
    }
}

// The exact sums of sixteen rows' weights u with one activation dword y4
// broadcast, started at zero or at *start: VPDPBUSD with y4 as an embedded
// broadcast and the zeroing as an idiom the renamer takes, where the
// intrinsics compile to a separate broadcast and a register copy, two more
// vector instructions per product in a loop that is issue-bound.
LL_INLINE __m512i dpbusd_zero(__m512i u, const uint8_t* y4) {
    __m512i s;
    __asm__("vpxord %0, %0, %0\n\tvpdpbusd %2%{1to16%}, %1, %0" : "=&v"(s) : "v"(u), "m"(*reinterpret_cast<const uint32_t*>(y4)));
    return s;
}

LL_INLINE __m512i dpbusd_from(const int32_t* start, __m512i u, const uint8_t* y4) {
    __m512i s;
    __asm__("vpbroadcastd %3, %0\n\tvpdpbusd %2%{1to16%}, %1, %0"
            : "=&v"(s)
            : "v"(u), "m"(*reinterpret_cast<const uint32_t*>(y4)), "m"(*start));
    return s;
}

// A token's activation block as the kernels read it.
struct Act {
    float d, s;         // d_y, and s_y (Q8_1)
    int32_t start[8];   // -offset * (sum of bytes 4j..4j+3): where lane j's sum starts
};

template <int T>
void prep_act(const uint8_t* x, int64_t nb, Act* a) {
    typedef typename X16<T>::Y Y;
    const Y* y = reinterpret_cast<const Y*>(x);
    for (int64_t i = 0; i < nb; i++) {
        a[i].d = h2f(y[i].d);
        if constexpr (X16<T>::min) a[i].s = h2f(y[i].s);
        if constexpr (X16<T>::offset != 0) {
            const __m256i sums = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), loadu256(y[i].qs)), _mm256_set1_epi16(1));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(a[i].start), _mm256_mullo_epi32(sums, _mm256_set1_epi32(-(int)X16<T>::offset)));
        }
    }
}

// NT tokens (1 or 2) against sixteen rows over nb blocks: out[t * out_stride
// + l] for row l.  Two tokens' sixteen chains and their scales fill the
// registers.
template <int T, int NT>
LL_INLINE void rows16(int64_t nb, const typename X16<T>::B* w, const uint8_t* const* yq, const Act* const* act, float* out,
                      size_t out_stride) {
    typedef typename X16<T>::Y Y;
    __m512 acc[NT][8], macc[NT];
    _Pragma("GCC unroll 2")
    for (int t = 0; t < NT; t++) {
        macc[t] = _mm512_setzero_ps();
        _Pragma("GCC unroll 8")
        for (int j = 0; j < 8; j++) acc[t][j] = _mm512_setzero_ps();
    }
    for (int64_t i = 0; i < nb; i++) {
        const typename X16<T>::B& b = w[i];
        // Tokens in pairs: the next group's block into L2 (sixteen rows
        // ahead, a few KB): the hardware prefetchers alone left a decode step
        // of four sequences stalled on memory between bursts of arithmetic
        // (SmolLM2 and Gemma 3, 4 sequences: +24%).  One token: this stream's
        // block four ahead into L1 (1.1B-shape Q8_0 decode, paired in-process
        // A/Bs against the pairs' prefetch: +3.5% to +10.6% in four runs,
        // SmolLM2 +1.6%; two or eight blocks ahead no better).
        const char* next = reinterpret_cast<const char*>(NT == 1 ? w + i + 4 : w + i + nb);
        _Pragma("GCC unroll 9")
        for (size_t o = 0; o < sizeof(b); o += 64) NT == 1 ? _mm_prefetch(next + o, _MM_HINT_T0) : _mm_prefetch(next + o, _MM_HINT_T1);
        const __m512 dw = _mm512_cvtph_ps(loadu256(b.d));
        __m512 dd[NT];  // d_w * d_y, as dot's row_scales
        _Pragma("GCC unroll 2")
        for (int t = 0; t < NT; t++) {
            dd[t] = _mm512_mul_ps(dw, _mm512_set1_ps(act[t][i].d));
            if constexpr (X16<T>::min) macc[t] = _mm512_fmadd_ps(_mm512_cvtph_ps(loadu256(b.m)), _mm512_set1_ps(act[t][i].s), macc[t]);
        }
        _Pragma("GCC unroll 8")
        for (int j = 0; j < 8; j++) {
            const __m512i u = weights<T>(b, j);
            _Pragma("GCC unroll 2")
            for (int t = 0; t < NT; t++) {
                const uint8_t* q = reinterpret_cast<const uint8_t*>(reinterpret_cast<const Y*>(yq[t])[i].qs);
                const __m512i s = X16<T>::offset ? dpbusd_from(&act[t][i].start[j], u, q + 4 * j) : dpbusd_zero(u, q + 4 * j);
                acc[t][j] = _mm512_fmadd_ps(dd[t], _mm512_cvtepi32_ps(s), acc[t][j]);
            }
        }
    }
    _Pragma("GCC unroll 2")
    for (int t = 0; t < NT; t++) {
        __m512 v = hsum_lane_registers(acc[t]);
        if constexpr (X16<T>::min) v = _mm512_add_ps(v, macc[t]);  // the min chain after the sum, as dot adds it
        _mm512_storeu_ps(out + t * out_stride, v);
    }
}

// KernelSet::dot_tile_il: n_tok tokens against nrows (a multiple of 16) rows
// of the x16 copy starting at w.
template <int T>
void tile_x16(int64_t n, int64_t nrows, const void* w, size_t stride, const void* x, size_t x_stride, int64_t n_tok, float* y,
              size_t y_stride) {
    typedef typename X16<T>::B B;
    const uint8_t* p = static_cast<const uint8_t*>(w);
    const uint8_t* xb = static_cast<const uint8_t*>(x);
    const int64_t nb = n / QK;
    thread_local std::vector<Act> acts;  // [t * nb + i]
    if ((int64_t)acts.size() < n_tok * nb) acts.resize((size_t)(n_tok * nb));
    for (int64_t t = 0; t < n_tok; t++) prep_act<T>(xb + t * x_stride, nb, &acts[t * nb]);
    for (int64_t g = 0; g < nrows / 16; g++) {
        const B* wg = reinterpret_cast<const B*>(p + g * 16 * stride);
        for (int64_t t = 0; t < n_tok; t += 2) {
            const int64_t t1 = t + 1 < n_tok ? t + 1 : t;
            const uint8_t* yq[2] = {xb + t * x_stride, xb + t1 * x_stride};
            const Act* a[2] = {&acts[t * nb], &acts[t1 * nb]};
            if (t1 > t) rows16<T, 2>(nb, wg, yq, a, y + t * y_stride + g * 16, y_stride);
            else rows16<T, 1>(nb, wg, yq, a, y + t * y_stride + g * 16, y_stride);
        }
    }
}

// KernelSet::dot_gemv_il: one token.
template <int T>
void gemv_x16(int64_t n, int64_t nrows, const void* w, size_t stride, const void* x, float* y) {
    tile_x16<T>(n, nrows, w, stride, x, 0, 1, y, 0);
}
#endif

}  // namespace

void LL_REGISTER(lanes16)(KernelSet* ks) {
#if LL_ZMM
    ks->dot_gemv_il[TYPE_Q4_1] = gemv_x16<TYPE_Q4_1>;
    ks->dot_gemv_il[TYPE_Q5_0] = gemv_x16<TYPE_Q5_0>;
    ks->dot_gemv_il[TYPE_Q5_1] = gemv_x16<TYPE_Q5_1>;
    ks->dot_gemv_il[TYPE_Q8_0] = gemv_x16<TYPE_Q8_0>;
    ks->dot_tile_il[TYPE_Q4_1] = tile_x16<TYPE_Q4_1>;
    ks->dot_tile_il[TYPE_Q5_0] = tile_x16<TYPE_Q5_0>;
    ks->dot_tile_il[TYPE_Q5_1] = tile_x16<TYPE_Q5_1>;
    ks->dot_tile_il[TYPE_Q8_0] = tile_x16<TYPE_Q8_0>;
#else
    (void)ks;
#endif
}

}  // namespace ll
