// x86 kernels for the weights llama.cpp repacks: its CPU backend stores Q4_0
// and Q4_K tensors with a multiple of 8 rows interleaved (q4_0_8x8, q4_K_8x8)
// and multiplies them with a gemv and a gemm of its own, which round
// differently from its vec_dot kernels (see KernelSet::dot_gemv).  These
// reproduce those floats bit for bit from the blocks as GGUF stores them, so
// nothing is repacked here.  For whole batches, a tile per type
// (KernelSet::dot_tile_packed) unpacks each block once for several tokens and
// gives every token the gemm's or the gemv's outputs.
//
// Compiled once per ISA like legacy.cpp and kquants.cpp: LL_ISA=avx2 and
// LL_ISA=avx512.  Unlike theirs, the avx512 build's code here is its own
// (512-bit registers, LL_ZMM); the floats are the same in both builds.
// Everything but the registration has internal linkage, so that the two
// builds never share an inline symbol.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <vector>

#include "../kernels.h"

#include "common.h"
#include "int_macc.h"
#include "q4_k.h"
#include "transpose.h"

namespace ll {
namespace {

// ---- Q4_0 as llama.cpp multiplies the weights it repacks (q4_0_8x8) ----
//
// ggml_gemv / ggml_gemm_q4_0_8x8_q8_0 (AVX2; the scalar reference's
// dot_q4_0_packed): per row and block the exact sum of all 32 products, one
// float chain acc = fma(sum, d_w * d_y, acc), one lane per row.  Eight rows go
// at a time.  Rows 2q and 2q+1 share a register (one AND, one shift and AND
// unpack both); the products of the low and the high nibbles are added in
// int16 (at most 4 * 15 * 127) and paired to int32 by one MADD, leaving four
// lanes per row, which a three-step horizontal-add tree turns into one sum
// per row, in lane order 0, 2, 4, 6, 1, 3, 5, 7.  The offset 8 * sum(y), the
// same for every row, comes off once for all eight.  Per row and block that
// is about 7 vector operations against legacy.cpp's dot_q4_0's 10; measured
// on one core in L2, 3.05 cycles against 3.40, the rest mostly the eight fp16
// scales, gathered through general registers as that dot does (a VPGATHERDD
// or a prepass through a table measured slower).  Rows are streamed and
// prefetched as there, and the chain is carried across segments (common.h's
// SEG) through out[] (exact).

struct PackedPrep {
    float d[SEG];        // d_y
    int32_t off[SEG];    // 8 * sum(y)
};

inline void prep_q4_0_packed(const block_q8_0* y, int64_t nb, PackedPrep* p) {
    for (int64_t i = 0; i < nb; i++) {
        p->d[i] = h2f(y[i].d);
        const __m256i qy = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[i].qs));
        p->off[i] = 8 * hsum8i(MAC_U8S8(_mm256_setzero_si256(), _mm256_set1_epi8(1), qy));
    }
}

// The fp16 at p + r * stride for rows r = 0, 2, 4, 6, 1, 3, 5, 7, as 8 floats.
inline __m256 halves8(const uint8_t* p, size_t stride) {
    uint64_t h[2] = {0, 0};
#pragma GCC unroll 8
    for (int l = 0; l < 8; l++) {  // lane l: row 2l (l < 4) or 2(l - 4) + 1
        const int r = l < 4 ? 2 * l : 2 * (l - 4) + 1;
        h[l / 4] |= (uint64_t)load_u16(p + r * stride) << (16 * (l % 4));
    }
    return _mm256_cvtph_ps(_mm_set_epi64x((long long)h[1], (long long)h[0]));
}

// Eight rows' blocks unpacked to unsigned nibbles (weights 0-15 in lo, 16-31
// in hi).  The avx2 build keeps rows 2q | 2q+1 in 256-bit register q; the
// avx512 build rows q, q+2, q+4, q+6 in the 128-bit lanes of 512-bit register
// q, which halves the unpacking and lets two VPDPBUSD per register take the
// exact products (measured on one Zen 5 core in cache: 26-27 -> 37 GB/s).
// Sixteen rows to a pass unpack faster still, but from DRAM they streamed
// 3-7 points less of the read bandwidth than eight.
struct Q4Rows8 {
#if LL_ZMM
    __m512i lo[2], hi[2];
#else
    __m256i lo[4], hi[4];
#endif
};

#if LL_ZMM
// The Q4_0 blocks of four rows, `step` bytes apart from `block`, one row to a
// 128-bit lane: lo = weights 0-15, hi = 16-31 as unsigned nibbles.
LL_INLINE void nibbles_rows4(const uint8_t* block, size_t step, __m512i& lo, __m512i& hi) {
    const __m512i qs = rows4_128(block + offsetof(block_q4_0, qs), step);
    const __m512i mask = _mm512_set1_epi8(0x0F);
    lo = _mm512_and_si512(qs, mask);
    hi = _mm512_and_si512(_mm512_srli_epi16(qs, 4), mask);
}
#endif

template <bool PREFETCH>
inline __attribute__((always_inline)) Q4Rows8 unpack_q4_0_rows8(const uint8_t* w, size_t stride) {
    Q4Rows8 u;
#if LL_ZMM
#pragma GCC unroll 2
    for (int q = 0; q < 2; q++) {
        const uint8_t* b = w + q * stride;
        if (PREFETCH) {  // next pass
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) _mm_prefetch(reinterpret_cast<const char*>(b) + (8 + 2 * j) * stride, _MM_HINT_T0);
        }
        nibbles_rows4(b, 2 * stride, u.lo[q], u.hi[q]);
    }
#else
    const __m256i mask = _mm256_set1_epi8(0x0F);
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++) {
        const uint8_t* b = w + 2 * q * stride;
        if (PREFETCH) {  // next pass
            _mm_prefetch(reinterpret_cast<const char*>(b) + 8 * stride, _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(b) + 9 * stride, _MM_HINT_T0);
        }
        const __m256i qs = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(b + stride + offsetof(block_q4_0, qs)),
                                               reinterpret_cast<const __m128i*>(b + offsetof(block_q4_0, qs)));
        u.lo[q] = _mm256_and_si256(qs, mask);
        u.hi[q] = _mm256_and_si256(_mm256_srli_epi16(qs, 4), mask);
    }
#endif
    return u;
}

// sum(u * y) over one block of each of the eight rows, exact, in lane order
// 0, 2, 4, 6, 1, 3, 5, 7.
inline __attribute__((always_inline)) __m256i sums_q4_0_rows8(const Q4Rows8& u, const int8_t* yqs) {
    const __m128i* yq = reinterpret_cast<const __m128i*>(yqs);
#if LL_ZMM
    const __m512i y_lo = _mm512_broadcast_i32x4(_mm_loadu_si128(yq));      // y0..15 in every lane
    const __m512i y_hi = _mm512_broadcast_i32x4(_mm_loadu_si128(yq + 1));  // y16..31
    __m512i v[2];  // register q, lane j: row 2j + q's sum in 4 int32
#pragma GCC unroll 2
    for (int q = 0; q < 2; q++) v[q] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), u.lo[q], y_lo), u.hi[q], y_hi);
    // lane j: [v0 v1 v0 v1] partial pairs, then totals
    __m512i a = _mm512_add_epi32(_mm512_unpacklo_epi32(v[0], v[1]), _mm512_unpackhi_epi32(v[0], v[1]));
    a = _mm512_add_epi32(a, _mm512_shuffle_epi32(a, _MM_PERM_BADC));
    return _mm512_castsi512_si256(_mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0), a));
#else
    const __m256i y_lo = _mm256_broadcastsi128_si256(_mm_loadu_si128(yq));      // y0..15 in both halves
    const __m256i y_hi = _mm256_broadcastsi128_si256(_mm_loadu_si128(yq + 1));  // y16..31
    __m256i v[4];  // rows 2q | 2q+1: sum(u * y) in 4 lanes each
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++)
        v[q] = _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(u.lo[q], y_lo), _mm256_maddubs_epi16(u.hi[q], y_hi)),
                                 _mm256_set1_epi16(1));
    return _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
#endif
}

// NT tokens (activation rows yb[t], prepared in prep[t]) over eight rows from
// w; output t to out + t * out_stride, which holds the chains so far if add.
// Per block the eight rows are unpacked once for all NT tokens.
// `step`: from one block of a row to its next (row-major: one block; the
// interleaved copy: eight).
template <int NT, bool PREFETCH>
inline void q4_0_packed_rows8(int64_t nb, const uint8_t* w, size_t stride, const block_q8_0* const* yb, const PackedPrep* prep,
                              float* out, size_t out_stride, bool add, size_t step = sizeof(block_q4_0)) {
    // lane order of the sums and the chains: rows 0, 2, 4, 6, 1, 3, 5, 7
    __m256 acc[NT];
#pragma GCC unroll 4
    for (int t = 0; t < NT; t++)
        acc[t] = add ? _mm256_permutevar8x32_ps(_mm256_loadu_ps(out + t * out_stride), _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7))
                     : _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++, w += step) {
        if (step != sizeof(block_q4_0)) {  // the stream's lines 2 KB ahead, two per 144-byte step so that
            // nearly every line is asked for: one per step, 1 KB ahead, left every other line to the
            // hardware prefetchers (decode, paired in-process A/B against that: 1.1B-shape +13%,
            // 7B-shape +22%; two lines 1 KB ahead 4% / 2% below 2 KB, 512 bytes no better; adding
            // lines into L2 4 KB ahead -9%, 8 KB ahead -40%)
            _mm_prefetch(reinterpret_cast<const char*>(w) + 2048, _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(w) + 2048 + 64, _MM_HINT_T0);
        }
        const Q4Rows8 u = unpack_q4_0_rows8<PREFETCH>(w, stride);
        const __m256 dw = halves8(w, stride);
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) {
            __m256i sum = sums_q4_0_rows8(u, yb[t][i].qs);
            sum = _mm256_sub_epi32(sum, _mm256_set1_epi32(prep[t].off[i]));  // sum((u - 8) * y)
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(dw, _mm256_broadcast_ss(prep[t].d + i)), acc[t]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < NT; t++)
        _mm256_storeu_ps(out + t * out_stride, _mm256_permutevar8x32_ps(acc[t], _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}

inline void q4_0_packed_row(int64_t nb, const uint8_t* w, const block_q8_0* y, const PackedPrep* p, float* out, bool add) {
    float acc = add ? *out : 0.0f;
    for (int64_t i = 0; i < nb; i++, w += sizeof(block_q4_0)) {
        const __m256i qy = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(y[i].qs));
        const int sum = hsum8i(MAC_U8S8(_mm256_setzero_si256(), nibbles32(w + offsetof(block_q4_0, qs)), qy)) - p->off[i];
        acc = std::fmaf((float)sum, h2f(load_u16(w)) * p->d[i], acc);
    }
    *out = acc;
}

// IL: w is the interleaved copy (KernelSet::dot_gemv_il): each group of eight
// rows is one stream of 144-byte steps, the hardware prefetcher's case
// (1.1B-shape decode on Zen 4: 26.4 -> 22.4 ms a token).
template <bool IL = false>
void dot_q4_0_packed(int64_t n, int64_t nrows, const void* w, size_t stride, const void* x, float* y) {
    const uint8_t* p = static_cast<const uint8_t*>(w);
    const block_q8_0* xb = static_cast<const block_q8_0*>(x);
    const int64_t nb = n / QK;
    constexpr size_t B = sizeof(block_q4_0), STEP = IL ? 8 * B : B;  // from a row's block to its next
    PackedPrep prep;
    for (int64_t s0 = 0; s0 < nb; s0 += SEG) {
        const int64_t ns = nb - s0 < SEG ? nb - s0 : SEG;
        prep_q4_0_packed(xb + s0, ns, &prep);
        const uint8_t* ps = p + s0 * STEP;
        const bool add = s0 > 0;
        int64_t r = 0;
        const block_q8_0* ys = xb + s0;
        if constexpr (IL) {
            for (; r < nrows; r += 8) q4_0_packed_rows8<1, false>(ns, ps + r * nb * B, B, &ys, &prep, y + r, 0, add, STEP);
            continue;
        }
        for (; r + 16 <= nrows; r += 8) q4_0_packed_rows8<1, true>(ns, ps + r * stride, stride, &ys, &prep, y + r, 0, add);
        for (; r + 8 <= nrows; r += 8) q4_0_packed_rows8<1, false>(ns, ps + r * stride, stride, &ys, &prep, y + r, 0, add);
        for (; r < nrows; r++) q4_0_packed_row(ns, ps + r * stride, xb + s0, &prep, y + r, add);
    }
}

#if LL_ZMM
// The avx512 build's batch pass: sixteen rows, NT tokens.  Per block the
// rows' nibbles are transposed into eight registers, register m holding
// weight bytes 4m..4m+3 (m < 4: low nibbles; else the high, 16 + 4(m - 4)..)
// of row l in int32 lane l, once per call for every group of tokens
// (unpack_q4_0_rows16).  A token then needs only eight VPDPBUSD against its
// activation bytes broadcast four at a time, which leave each row's exact
// sum in its own lane, where the one-token pass spends a horizontal
// reduction per token.  The chains and floats are dot_q4_0_packed's.
struct alignas(64) Q40Rows16 {
    __m512i wt[8];  // wt[m], int32 lane r: bytes 4m..4m+3 of row r's nibbles (m < 4 low, else high)
    __m512 d;       // the rows' scales
};

LL_INLINE void unpack_q4_0_rows16(int64_t nb, const uint8_t* w, size_t stride, Q40Rows16* u) {
    for (int64_t i = 0; i < nb; i++, w += sizeof(block_q4_0)) {
        __m512i lo[4], hi[4];  // register q, lane j: row 4j + q
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++) nibbles_rows4(w + q * stride, 4 * stride, lo[q], hi[q]);
        transpose_lanes4x4(lo, u[i].wt);
        transpose_lanes4x4(hi, u[i].wt + 4);
        u[i].d = halves16(w, stride);
    }
}

// The rows unpacked in u (AHEAD), or unpacked from w block by block, in registers.
template <int NT, bool AHEAD>
inline void q4_0_tile_rows16(int64_t nb, const Q40Rows16* u, const uint8_t* w, size_t stride, const block_q8_0* const* yb,
                             const PackedPrep* prep, float* out, size_t out_stride) {
    __m512 acc[NT];
#pragma GCC unroll 8
    for (int t = 0; t < NT; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        Q40Rows16 b;  // the block of the sixteen rows, from u or unpacked here: in registers either way
        if constexpr (AHEAD) b = u[i];
        else unpack_q4_0_rows16(1, w + i * sizeof(block_q4_0), stride, &b);
#pragma GCC unroll 8
        for (int t = 0; t < NT; t++) {
            const uint8_t* yq = reinterpret_cast<const uint8_t*>(yb[t][i].qs);
            __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();  // two chains: lower latency
#pragma GCC unroll 4
            for (int m = 0; m < 4; m++) {
                s0 = _mm512_dpbusd_epi32(s0, b.wt[m], _mm512_set1_epi32((int)load_u32(yq + 4 * m)));
                s1 = _mm512_dpbusd_epi32(s1, b.wt[4 + m], _mm512_set1_epi32((int)load_u32(yq + 16 + 4 * m)));
            }
            const __m512i sum = _mm512_sub_epi32(_mm512_add_epi32(s0, s1), _mm512_set1_epi32(prep[t].off[i]));  // sum((u - 8) * y)
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(b.d, _mm512_set1_ps(prep[t].d[i])), acc[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < NT; t++) _mm512_storeu_ps(out + t * out_stride, acc[t]);
}

// A group of nt <= 8 tokens through q4_0_tile_rows16.
template <bool AHEAD>
inline void q4_0_tile_group(int nt, int64_t nb, const Q40Rows16* u, const uint8_t* w, size_t stride, const block_q8_0* const* yb,
                            const PackedPrep* prep, float* out, size_t out_stride) {
    switch (nt) {
        case 8: return q4_0_tile_rows16<8, AHEAD>(nb, u, w, stride, yb, prep, out, out_stride);
        case 7: return q4_0_tile_rows16<7, AHEAD>(nb, u, w, stride, yb, prep, out, out_stride);
        case 6: return q4_0_tile_rows16<6, AHEAD>(nb, u, w, stride, yb, prep, out, out_stride);
        case 5: return q4_0_tile_rows16<5, AHEAD>(nb, u, w, stride, yb, prep, out, out_stride);
        case 4: return q4_0_tile_rows16<4, AHEAD>(nb, u, w, stride, yb, prep, out, out_stride);
        case 3: return q4_0_tile_rows16<3, AHEAD>(nb, u, w, stride, yb, prep, out, out_stride);
        case 2: return q4_0_tile_rows16<2, AHEAD>(nb, u, w, stride, yb, prep, out, out_stride);
        default: return q4_0_tile_rows16<1, AHEAD>(nb, u, w, stride, yb, prep, out, out_stride);
    }
}
#endif

// Several tokens at once (KernelSet::dot_tile_packed): groups of tokens
// through q4_0_tile_rows16 (avx512) or q4_0_packed_rows8, which unpack each
// block once for all of them; every output is dot_q4_0_packed's.
void dot_tile_q4_0_packed(int64_t n, int64_t nrows, const void* w, size_t stride, const void* x, size_t x_stride, int64_t n_tok,
                          float* y, size_t y_stride) {
    const uint8_t* p = static_cast<const uint8_t*>(w);
    const uint8_t* xb = static_cast<const uint8_t*>(x);
    const int64_t nb = n / QK;
    if (nb > SEG || nrows < 8) {  // long rows: dot_q4_0_packed carries the chain across segments
        for (int64_t t = 0; t < n_tok; t++) dot_q4_0_packed(n, nrows, w, stride, xb + t * x_stride, y + t * y_stride);
        return;
    }
    // tokens per group: the avx512 pass keeps eight chains in registers
    constexpr int GROUP = LL_ZMM ? 8 : 4;
#if LL_ZMM
    // Several groups of tokens: every group of sixteen rows unpacked once,
    // first, for all of them.  One group (a decode step of a few sequences):
    // each block unpacked into registers as the pass reaches it (3% faster
    // than through memory).
    const int64_t rows16 = nrows / 16 * 16;
    const bool ahead = n_tok > GROUP;
    thread_local std::vector<Q40Rows16> unpacked;
    if (ahead) {
        unpacked.resize((size_t)(rows16 / 16 * nb));
        for (int64_t r = 0; r < rows16; r += 16) unpack_q4_0_rows16(nb, p + r * stride, stride, unpacked.data() + r / 16 * nb);
    }
#endif
    PackedPrep prep[GROUP];
    for (int64_t t0 = 0; t0 < n_tok; t0 += GROUP) {
        const int nt = n_tok - t0 < GROUP ? (int)(n_tok - t0) : GROUP;
        const block_q8_0* yb[GROUP];
        for (int t = 0; t < nt; t++) {
            yb[t] = reinterpret_cast<const block_q8_0*>(xb + (t0 + t) * x_stride);
            prep_q4_0_packed(yb[t], nb, &prep[t]);
        }
        float* yt = y + t0 * y_stride;
        int64_t r = 0;
#if LL_ZMM
        for (; r < rows16; r += 16) {
            const Q40Rows16* u = ahead ? unpacked.data() + r / 16 * nb : nullptr;
            const uint8_t* wr = p + r * stride;
            float* o = yt + r;
            if (ahead) q4_0_tile_group<true>(nt, nb, u, wr, stride, yb, prep, o, y_stride);
            else q4_0_tile_group<false>(nt, nb, u, wr, stride, yb, prep, o, y_stride);
        }
#endif
        for (; r + 8 <= nrows; r += 8)
            for (int t = 0; t < nt; t += 4) {
                const uint8_t* wr = p + r * stride;
                float* o = yt + t * y_stride + r;
                switch (nt - t < 4 ? nt - t : 4) {
                    case 4: q4_0_packed_rows8<4, false>(nb, wr, stride, yb + t, prep + t, o, y_stride, false); break;
                    case 3: q4_0_packed_rows8<3, false>(nb, wr, stride, yb + t, prep + t, o, y_stride, false); break;
                    case 2: q4_0_packed_rows8<2, false>(nb, wr, stride, yb + t, prep + t, o, y_stride, false); break;
                    default: q4_0_packed_rows8<1, false>(nb, wr, stride, yb + t, prep + t, o, y_stride, false); break;
                }
            }
        for (; r < nrows; r++)  // rows short of a group of 8
            for (int t = 0; t < nt; t++) q4_0_packed_row(nb, p + r * stride, yb[t], &prep[t], yt + t * y_stride + r, false);
    }
}

// ---- Q4_K as llama.cpp multiplies the weights it repacks (q4_K_8x8) ----
//
// ggml_gemv_q4_K_8x8_q8_K / ggml_gemm_q4_K_8x8_q8_K (AVX2): per output, exact
// integer sums over a group of sub-block pairs (the whole block in the gemv,
// one pair in the gemm), each taken into two float FMA chains, d * sum(scale *
// dot) and dmin * sum(min * bsum), subtracted at the end.  Same arithmetic as
// the scalar reference's dot_q4_k_packed.

#if LL_ZMM
// A super-block's activations arranged for sumi_q4_k_zmm: vector 2h + n holds
// sub-blocks 4h + n and 4h + n + 2 (n = 0: low nibbles, 1: high), a 256-bit
// half each, matching the nibbles of qs[64h..64h+63] in one 512-bit load.
struct Q8KZmm {
    __m512i y[4];
};

LL_INLINE Q8KZmm arrange_q8_k_zmm(const int8_t* q8) {
    Q8KZmm a;
    _Pragma("GCC unroll 4")
    for (int v = 0; v < 4; ++v) {
        const int8_t* p = q8 + 128 * (v / 2) + 32 * (v % 2);
        a.y[v] = _mm512_inserti64x4(_mm512_castsi256_si512(loadu256(p)), loadu256(p + 64), 1);
    }
    return a;
}

// From scz (int16 scales s0..s7 in every 128-bit lane): s_j broadcast to the
// low 256-bit half, s_(j+2) to the high.
LL_INLINE __m512i scale_pair_zmm(__m512i scz, int j) {
    return _mm512_shuffle_epi8(scz, _mm512_inserti64x4(_mm512_set1_epi16((short)(0x0100 + 0x0202 * j)),
                                                       _mm256_set1_epi16((short)(0x0100 + 0x0202 * (j + 2))), 1));
}

// sumi_q4_k with 512-bit registers: four lanes summing to sum_j scale_j * dot_j
// (exact integers, so any lanes with that total give the same floats).
LL_INLINE __m128i sumi_q4_k_zmm(const block_q4_K* x, const Q8KZmm& a, __m256i sc) {
    const __m512i m4 = _mm512_set1_epi8(0xF);
    const __m512i scz = _mm512_broadcast_i32x4(_mm256_castsi256_si128(sc));  // int16 s0..s7 in every lane
    __m512i acc = _mm512_setzero_si512();
    _Pragma("GCC unroll 2")
    for (int h = 0; h < 2; ++h) {
        const __m512i q = _mm512_loadu_si512(x->qs + 64 * h);
        _Pragma("GCC unroll 2")
        for (int n = 0; n < 2; ++n) {
            const __m512i u = n ? _mm512_and_si512(_mm512_srli_epi16(q, 4), m4) : _mm512_and_si512(q, m4);
            acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(u, a.y[2 * h + n]), scale_pair_zmm(scz, 4 * h + n));
        }
    }
    const __m256i r = _mm256_add_epi32(_mm512_castsi512_si256(acc), _mm512_extracti64x4_epi64(acc, 1));
    return _mm_add_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}
#endif

// The gemm's float steps for one block of four rows: sums[t] / mins[t] hold
// row t's four per-pair integer sums; each pair in order into the row's two
// chains (lane t).
LL_INLINE void gemm_chains(const __m128i sums[4], const __m128i mins[4], __m128 d, __m128 dmin, __m128& acc, __m128& acc_min) {
    __m128i s[4], m[4];
    transpose4(sums, s);
    transpose4(mins, m);
    for (int g = 0; g < 4; ++g) {
        acc = _mm_fmadd_ps(_mm_cvtepi32_ps(s[g]), d, acc);
        acc_min = _mm_fmadd_ps(_mm_cvtepi32_ps(m[g]), dmin, acc_min);
    }
}

// A row's block unpacked for the gemm (dot_q4_k_packed<1>, and once for
// all of a batch's tokens in dot_tile_q4_k_packed).
#if LL_ZMM
// The avx512 build keeps two pairs to a 512-bit register: lo[h] holds the low
// nibbles of qs[64h..64h+63] (pair 2h's sub-block 4h in the low half, pair
// 2h+1's 4h+2 in the high), hi[h] the high nibbles (4h+1 | 4h+3), each with
// its broadcast scales; the activations come arranged to match (Q8KZmm).
struct alignas(64) Q4KUnpacked {
    __m512i lo[2], hi[2];
    __m512i s_lo[2], s_hi[2];
    __m128i mins;  // int16 mins m0..m7
};
#else
struct alignas(32) Q4KUnpacked {
    __m256i lo[4], hi[4];      // pair j: sub-block 2j's weights (low nibbles), 2j+1's (high)
    __m256i s_lo[4], s_hi[4];  // their scales, broadcast int16
    __m128i mins;              // int16 mins m0..m7
};
#endif

// Row b's four pair sums (lane j: pair j, exact) against one super-block of activations.
#if LL_ZMM
LL_INLINE __m128i q4_k_pair_sums(const Q4KUnpacked& b, const Q8KZmm& y) {
    __m512i p[2];  // p[h]: pair 2h in the low half's 8 lanes, 2h + 1 in the high half's
    _Pragma("GCC unroll 2")
    for (int h = 0; h < 2; ++h)
        p[h] = _mm512_dpwssd_epi32(_mm512_madd_epi16(_mm512_maddubs_epi16(b.lo[h], y.y[2 * h]), b.s_lo[h]),
                                   _mm512_maddubs_epi16(b.hi[h], y.y[2 * h + 1]), b.s_hi[h]);
    // 128-bit lanes 0, 1 (pairs 0 | 2) and 2, 3 (pairs 1 | 3): [p0 p1 p0 p1] sums, then the two lanes of each pair added
    __m512i a = _mm512_add_epi32(_mm512_unpacklo_epi32(p[0], p[1]), _mm512_unpackhi_epi32(p[0], p[1]));
    a = _mm512_add_epi32(a, _mm512_shuffle_epi32(a, _MM_PERM_BADC));
    a = _mm512_add_epi32(a, _mm512_shuffle_i32x4(a, a, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm512_castsi512_si128(_mm512_permutexvar_epi32(_mm512_setr_epi32(0, 8, 1, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), a));
}
#else
LL_INLINE __m128i q4_k_pair_sums(const Q4KUnpacked& b, const int8_t* q8) {
    __m256i pair[4];
    _Pragma("GCC unroll 4")
    for (int j = 0; j < 4; ++j) {
        const __m256i lo = _mm256_maddubs_epi16(b.lo[j], loadu256(q8 + 64 * j));
        const __m256i hi = _mm256_maddubs_epi16(b.hi[j], loadu256(q8 + 64 * j + 32));
        pair[j] = MADD16_ACC(_mm256_madd_epi16(lo, b.s_lo[j]), hi, b.s_hi[j]);
    }
    return halves(_mm256_hadd_epi32(_mm256_hadd_epi32(pair[0], pair[1]), _mm256_hadd_epi32(pair[2], pair[3])));
}
#endif

// Row b's block unpacked (sc: its int16 scales s0..s7 in both lanes, mins: m0..m7).
LL_INLINE void unpack_q4_k_row(const block_q4_K* b, __m256i sc, __m128i mins, Q4KUnpacked& o) {
    o.mins = mins;
#if LL_ZMM
    const __m512i m4 = _mm512_set1_epi8(0xF);
    const __m512i scz = _mm512_broadcast_i32x4(_mm256_castsi256_si128(sc));
    _Pragma("GCC unroll 2")
    for (int h = 0; h < 2; ++h) {
        const __m512i q = _mm512_loadu_si512(b->qs + 64 * h);
        o.lo[h] = _mm512_and_si512(q, m4);
        o.hi[h] = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
        o.s_lo[h] = scale_pair_zmm(scz, 4 * h);
        o.s_hi[h] = scale_pair_zmm(scz, 4 * h + 1);
    }
#else
    const __m256i m4 = _mm256_set1_epi8(0xF);
    _Pragma("GCC unroll 4")
    for (int j = 0; j < 4; ++j) {
        const __m256i q = loadu256(b->qs + 32 * j);
        o.lo[j] = _mm256_and_si256(q, m4);
        o.hi[j] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        o.s_lo[j] = _mm256_shuffle_epi8(sc, _mm256_set1_epi16((short)(0x0100 + 0x0202 * 2 * j)));
        o.s_hi[j] = _mm256_shuffle_epi8(sc, _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * j + 1))));
    }
#endif
}

// Four rows at a time, one float lane each (lane-wise FMAs round as fmaf):
// per block the gemv's single (scale, min) sum pair, or the gemm's four, one
// per pair of sub-blocks (madd pairs the mins exactly so).
// IL: w is the interleaved copy (KernelSet::dot_gemv_il): block i of row
// 8g + j at ((g * nb + i) * 8 + j) blocks, one stream per eight rows, taken
// as two groups of four per block (the activations arranged once for both).
template <int GROUP, bool IL = false>
void dot_q4_k_packed(int64_t n, int64_t nrows, const void* w, size_t stride, const void* vx, float* out) {
    const uint8_t* p = static_cast<const uint8_t*>(w);
    const block_q8_K* y = static_cast<const block_q8_K*>(vx);
    const int64_t nb = n / QK_K;
    constexpr size_t B = sizeof(block_q4_K), STEP = IL ? 8 * B : B;  // from a row's block to its next
    constexpr int H = IL ? 2 : 1;                                     // groups of four rows per pass
    for (int64_t r = 0; r < nrows; r += 4 * H) {
        const uint8_t* row[4 * H];
        for (int t = 0; t < 4 * H; ++t)
            row[t] = IL ? p + (r * nb + t) * B : p + std::min<int64_t>(r + t, nrows - 1) * stride;
        auto blk = [&](int t, int64_t i) { return reinterpret_cast<const block_q4_K*>(row[t] + i * STEP); };
        // The same bytes of the next group's four rows are fetched into L1
        // while this group streams, as legacy.cpp's matvec does: measured at 2
        // threads, 30-33.5 GB/s against 28-30 for a fixed distance ahead in
        // each row (kquants.cpp's LL_DOT_ROWS cursor).  The interleaved copy
        // is one stream: its lines a few blocks ahead.
        const bool prefetch = r + 8 <= nrows;
        __m128 acc[H], acc_min[H];
        for (int h = 0; h < H; ++h) acc[h] = acc_min[h] = _mm_setzero_ps();
        for (int64_t i = 0; i < nb; ++i) {
            if (IL) {
                const char* a = reinterpret_cast<const char*>(blk(0, i)) + 2 * STEP;
                _Pragma("GCC unroll 18")
                for (int o = 0; o < (int)STEP; o += 64) _mm_prefetch(a + o, _MM_HINT_T0);
            } else if (prefetch) {
                _Pragma("GCC unroll 4")
                for (int t = 0; t < 4; ++t) {
                    const char* a = reinterpret_cast<const char*>(blk(t, i)) + 4 * stride;
                    _Pragma("GCC unroll 3")
                    for (int o = 0; o < (int)sizeof(block_q4_K); o += 64) _mm_prefetch(a + o, _MM_HINT_T0);
                }
            }
            const __m128i bs32 = _mm_hadd_epi16(loadu128(y[i].bsums), loadu128(y[i].bsums + 8));  // per sub-block
#if LL_ZMM
            const Q8KZmm yz = arrange_q8_k_zmm(y[i].qs);
#else
            const int8_t* yz = y[i].qs;
#endif
            _Pragma("GCC unroll 2")
            for (int h = 0; h < H; ++h) {
                alignas(16) half_t dm[8];  // d0, dmin0, d1, dmin1, ...
                __m128i sums[4], mins[4];  // per row
                // loops over rows fully unrolled: sums and mins then live in
                // registers (as arrays indexed at run time they went through the
                // stack, with an accumulator spilled: a quarter of the kernel's time)
                _Pragma("GCC unroll 2")
                for (int t = 0; t < 4; t += 2) {  // scales unpacked two rows at a time
                    const ScalesK4x2 sc2 = scales_k4x2(blk(4 * h + t, i)->scales, blk(4 * h + t + 1, i)->scales);
                    mins[t] = _mm_madd_epi16(_mm256_castsi256_si128(sc2.mins), bs32);  // min * bsum, paired: 4 lanes
                    mins[t + 1] = _mm_madd_epi16(_mm256_extracti128_si256(sc2.mins, 1), bs32);
                    _Pragma("GCC unroll 2")
                    for (int u = 0; u < 2; ++u) {
                        const block_q4_K* b = blk(4 * h + t + u, i);
                        const __m256i sc = u ? sc2.sc1 : sc2.sc0;
                        std::memcpy(dm + 2 * (t + u), &b->d, 4);
                        if (GROUP == 4) {
#if LL_ZMM
                            sums[t + u] = sumi_q4_k_zmm(b, yz, sc);
#else
                            sums[t + u] = halves(sumi_q4_k(b, y[i].qs, sc));
#endif
                        } else {
                            Q4KUnpacked o;
                            unpack_q4_k_row(b, sc, u ? _mm256_extracti128_si256(sc2.mins, 1) : _mm256_castsi256_si128(sc2.mins), o);
                            sums[t + u] = q4_k_pair_sums(o, yz);
                        }
                    }
                }
                const __m256 dd = _mm256_mul_ps(_mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(dm))), _mm256_set1_ps(y[i].d));
                const __m128 lo = _mm256_castps256_ps128(dd), hi = _mm256_extractf128_ps(dd, 1);
                const __m128 d = _mm_shuffle_ps(lo, hi, 0x88), dmin = _mm_shuffle_ps(lo, hi, 0xDD);  // per row
                if (GROUP == 4) {  // one sum per row: horizontal sums of the four rows at once
                    const __m128i s = _mm_hadd_epi32(_mm_hadd_epi32(sums[0], sums[1]), _mm_hadd_epi32(sums[2], sums[3]));
                    const __m128i m = _mm_hadd_epi32(_mm_hadd_epi32(mins[0], mins[1]), _mm_hadd_epi32(mins[2], mins[3]));
                    acc[h] = _mm_fmadd_ps(_mm_cvtepi32_ps(s), d, acc[h]);
                    acc_min[h] = _mm_fmadd_ps(_mm_cvtepi32_ps(m), dmin, acc_min[h]);
                } else {  // four per row, in order
                    gemm_chains(sums, mins, d, dmin, acc[h], acc_min[h]);
                }
            }
        }
        for (int h = 0; h < H; ++h) {
            alignas(16) float res[4];
            _mm_store_ps(res, _mm_sub_ps(acc[h], acc_min[h]));
            for (int t = 0; t < 4 && r + 4 * h + t < nrows; ++t) out[r + 4 * h + t] = res[t];
        }
    }
}

// Batches (KernelSet::dot_tile_packed): the tokens in full groups of four
// take the gemm's arithmetic, the others the gemv's, as matmul() assigns
// them.  For the gemm tokens a group of four rows is unpacked once, per block
// and sub-block pair, into nibble bytes and broadcast scale vectors, and
// every token then costs q4_k_pair_sums per row instead of also the
// unpacking.  The
// integer sums are exact and the transposes and FMA chains are
// dot_q4_k_packed<1>'s, so the floats are the same.

// n_tok tokens through the gemm's arithmetic over four rows whose blocks are in u
// (u[t * nb + i]), the four rows' d and dmin of block i as floats at d4 + 4i / dmin4 + 4i.
inline void q4_k_gemm_rows4(int64_t nb, const Q4KUnpacked* u, const float* d4, const float* dmin4, const uint8_t* x,
                            size_t x_stride, int64_t n_tok, float* out, size_t out_stride, int nrows) {
    for (int64_t tok = 0; tok < n_tok; tok++) {
        const block_q8_K* y = reinterpret_cast<const block_q8_K*>(x + tok * x_stride);
        __m128 acc = _mm_setzero_ps(), acc_min = _mm_setzero_ps();
        for (int64_t i = 0; i < nb; ++i) {
            const __m128i bs32 = _mm_hadd_epi16(loadu128(y[i].bsums), loadu128(y[i].bsums + 8));
#if LL_ZMM
            const Q8KZmm yq = arrange_q8_k_zmm(y[i].qs);
#else
            const int8_t* yq = y[i].qs;
#endif
            __m128i sums[4], mins[4];
            _Pragma("GCC unroll 4")
            for (int t = 0; t < 4; ++t) {
                const Q4KUnpacked& b = u[t * nb + i];
                sums[t] = q4_k_pair_sums(b, yq);
                mins[t] = _mm_madd_epi16(b.mins, bs32);
            }
            const __m128 yd = _mm_set1_ps(y[i].d);
            gemm_chains(sums, mins, _mm_mul_ps(_mm_loadu_ps(d4 + 4 * i), yd), _mm_mul_ps(_mm_loadu_ps(dmin4 + 4 * i), yd), acc, acc_min);
        }
        alignas(16) float res[4];
        _mm_store_ps(res, _mm_sub_ps(acc, acc_min));
        for (int t = 0; t < nrows; ++t) out[tok * out_stride + t] = res[t];
    }
}

void dot_tile_q4_k_packed(int64_t n, int64_t nrows, const void* w, size_t stride, const void* x, size_t x_stride, int64_t n_tok,
                          float* y, size_t y_stride) {
    const uint8_t* p = static_cast<const uint8_t*>(w);
    const uint8_t* xb = static_cast<const uint8_t*>(x);
    const int64_t n_gemm = n_tok > 3 ? n_tok - n_tok % 4 : 0;
    for (int64_t t = n_gemm; t < n_tok; t++) dot_q4_k_packed<4>(n, nrows, w, stride, xb + t * x_stride, y + t * y_stride);
    if (n_gemm == 0) return;
    const int64_t nb = n / QK_K;
    thread_local std::vector<Q4KUnpacked> unpacked;
    thread_local std::vector<float> dm;  // per block the four rows' d, then per block their dmin
    unpacked.resize((size_t)(4 * nb));
    dm.resize((size_t)(8 * nb));
    for (int64_t r = 0; r < nrows; r += 4) {
        const block_q4_K* xr[4];
        for (int t = 0; t < 4; ++t) xr[t] = reinterpret_cast<const block_q4_K*>(p + std::min<int64_t>(r + t, nrows - 1) * stride);
        for (int64_t i = 0; i < nb; ++i) {
            alignas(16) half_t h[8];  // d0, dmin0, d1, dmin1, ...
            for (int t = 0; t < 4; t += 2) {
                const ScalesK4x2 sc2 = scales_k4x2(xr[t][i].scales, xr[t + 1][i].scales);
                for (int v = 0; v < 2; ++v) {
                    const block_q4_K* b = xr[t + v] + i;
                    unpack_q4_k_row(b, v ? sc2.sc1 : sc2.sc0, v ? _mm256_extracti128_si256(sc2.mins, 1) : _mm256_castsi256_si128(sc2.mins),
                                    unpacked[(t + v) * nb + i]);
                    std::memcpy(h + 2 * (t + v), &b->d, 4);
                }
            }
            const __m256 f = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(h)));
            const __m128 lo = _mm256_castps256_ps128(f), hi = _mm256_extractf128_ps(f, 1);
            _mm_storeu_ps(&dm[4 * i], _mm_shuffle_ps(lo, hi, 0x88));
            _mm_storeu_ps(&dm[4 * (nb + i)], _mm_shuffle_ps(lo, hi, 0xDD));
        }
        const int rows_here = (int)std::min<int64_t>(4, nrows - r);
        q4_k_gemm_rows4(nb, unpacked.data(), dm.data(), dm.data() + 4 * nb, xb, x_stride, n_gemm, y + r, y_stride, rows_here);
    }
}

}  // namespace

void LL_REGISTER(repack)(KernelSet* ks) {
    ks->dot_gemv[TYPE_Q4_0] = ks->dot_gemm[TYPE_Q4_0] = dot_q4_0_packed<>;
    ks->dot_gemv_il[TYPE_Q4_0] = dot_q4_0_packed<true>;
    ks->dot_tile_packed[TYPE_Q4_0] = dot_tile_q4_0_packed;
    ks->dot_gemv[TYPE_Q4_K] = dot_q4_k_packed<4>;
    ks->dot_gemv_il[TYPE_Q4_K] = dot_q4_k_packed<4, true>;
    ks->dot_gemm[TYPE_Q4_K] = dot_q4_k_packed<1>;
    ks->dot_tile_packed[TYPE_Q4_K] = dot_tile_q4_k_packed;
}

}  // namespace ll
