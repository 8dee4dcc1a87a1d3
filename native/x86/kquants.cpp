// AVX2 kernels for the k-quants (Q2_K..Q6_K x Q8_K) and the Q8_K activation
// quantizer.  The same source is built a second time for AVX-512 VNNI: the only
// difference is the pair of multiply-accumulate macros of int_macc.h, so the
// AVX2 build (tested on every x86 machine) checks the logic of both.  The
// kernels for Q4_K weights as llama.cpp repacks them are in repack.cpp.
//
// Scheme shared by every dot kernel (facts from ggml's AVX2 kernels, code our
// own): weights are unpacked to unsigned bytes (2..6 bits) and multiplied with
// the int8 activations 32 at a time (maddubs: int16 sums of pairs), and the
// sub-block scale, broadcast as int16, is applied in the widening int16 ->
// int32 pair sum (madd, or VNNI's dpwssd): per 32 weights one maddubs, one
// unpack and one madd, with no per-sub-block shuffles of the scales.  Constant
// offsets (Q3_K's -4, Q6_K's -32) and the mins (Q2_K, Q4_K, Q5_K) are folded in
// through the activation block sums (bsums).  Integer sums per super-block,
// one float fused multiply-add per super-block and term.  Two weight rows are
// processed per pass so they share the activation loads (and, for Q4_K/Q5_K,
// the per-block scale bookkeeping), and each row stream is software-prefetched
// (see the row drivers): matvec must run at DRAM bandwidth.
//
// Every helper lives in an anonymous namespace: this file is compiled once per
// ISA and the copies must never be merged by the linker.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "../kernels.h"

#include "common.h"
#include "ggml_vec_dot.h"
#include "int_macc.h"
#include "q4_k.h"

namespace ll {
namespace {

LL_INLINE __m128i unpack_scales_k4(const uint8_t* s) { return _mm256_castsi256_si128(unpack_scales_k4x2(s, s)); }

// Q3_K: the 12 packed bytes -> 16 signed scales (6-bit value - 32) as bytes.
LL_INLINE __m128i unpack_scales_q3(const uint8_t* s) {
    int8_t sc[16];
    unpack_q3_k_scales(s, sc);
    return _mm_sub_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc)), _mm_set1_epi8(32));
}

// ---- one super-block of one row: returns acc + its contribution (8 lanes) ----

// The integer dot products of one super-block.  u[v] holds weights
// 32v..32v+31 as unsigned bytes (at most 6 bits, so maddubs cannot saturate);
// maddubs gives int16 sums of adjacent pairs.  Interleaving the int16 sums of
// two vectors (unpacklo/hi) puts one pair from each into every int32 lane, so
// a single int16 scale pattern, broadcast by pshufd, scales both in madd.

// 16 sub-blocks of 16 weights (lane 0 of u[v] is sub-block 2v, lane 1 is
// 2v + 1) with 16 signed byte scales: returns lanes summing to
// sum_k scale_k * dot_k.
LL_INLINE __m256i scaled_dot16(const __m256i u[8], const int8_t* q8, __m128i scales16) {
    // int16 scales, lane 0: s0 s2 .. s14, lane 1: s1 s3 .. s15.  Vectors 2m and
    // 2m + 1 hold sub-blocks (4m, 4m+1) and (4m+2, 4m+3): interleaved, lane 0
    // needs (s4m, s4m+2) = lane-0 dword m, lane 1 (s4m+1, s4m+3) = lane-1 dword m.
    const __m256i sc = _mm256_cvtepi8_epi16(
        _mm_shuffle_epi8(scales16, _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15)));
    const __m256i s[4] = {_mm256_shuffle_epi32(sc, 0x00), _mm256_shuffle_epi32(sc, 0x55), _mm256_shuffle_epi32(sc, 0xAA),
                          _mm256_shuffle_epi32(sc, 0xFF)};
    __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
    _Pragma("GCC unroll 4")
    for (int m = 0; m < 4; ++m) {
        const __m256i a = _mm256_maddubs_epi16(u[2 * m], loadu256(q8 + 64 * m));
        const __m256i b = _mm256_maddubs_epi16(u[2 * m + 1], loadu256(q8 + 64 * m + 32));
        acc0 = MADD16_ACC(acc0, _mm256_unpacklo_epi16(a, b), s[m]);
        acc1 = MADD16_ACC(acc1, _mm256_unpackhi_epi16(a, b), s[m]);
    }
    return _mm256_add_epi32(acc0, acc1);
}

// ---- Q4_K/Q5_K: the scale, min and float work of a pair of rows ----
//
// Rows are processed in pairs (see the row drivers), and these two formats
// carry enough per-block bookkeeping (12 packed scale bytes, the min term) that
// doing it for both rows in one 256-bit register pays.  accm collects the min
// terms: lanes 0..3 for the first row, 4..7 for the second (the scales come
// from scales_k4x2, q4_k.h).

// acc_r += d_r * sumi_r and accm -= dmin_r * sum_j min_j * (bsums[2j] + bsums[2j+1]),
// with (d_r, dmin_r) row r's fp16 pair at dm_r times the activation scale.
LL_INLINE void finish_k4x2(const half_t* dm0, const half_t* dm1, const block_q8_K* y, __m256i sumi0, __m256i sumi1,
                           __m256i mins, __m256& acc0, __m256& acc1, __m256& accm) {
    const __m128i h = _mm_unpacklo_epi32(_mm_cvtsi32_si128((int)load_u32(reinterpret_cast<const uint8_t*>(dm0))),
                                         _mm_cvtsi32_si128((int)load_u32(reinterpret_cast<const uint8_t*>(dm1))));
    const __m128 dd = _mm_mul_ps(_mm_cvtph_ps(h), _mm_set1_ps(y->d));  // [d0, dmin0, d1, dmin1]
    acc0 = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(sumi0), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehl_ps(dd, dd)), _mm256_cvtepi32_ps(sumi1), acc1);
    const __m128i pairs = _mm_hadd_epi16(loadu128(y->bsums), loadu128(y->bsums + 8));  // sums of 32 activations
    const __m256i summ = _mm256_madd_epi16(mins, _mm256_broadcastsi128_si256(pairs));
    const __m256 dmin = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(dd), _mm256_setr_epi32(1, 1, 1, 1, 3, 3, 3, 3));
    accm = _mm256_fnmadd_ps(dmin, _mm256_cvtepi32_ps(summ), accm);
}

// Integer lanes of one Q2_K super-block: sumi sums to sum(scale * dot), summ to sum(min * bsum).
LL_INLINE void lanes_q2_k(const block_q2_K* x, const block_q8_K* y, __m256i& sumi_out, __m256i& summ_out) {
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m128i sc = loadu128(x->scales);
    const __m128i scales = _mm_and_si128(sc, _mm_set1_epi8(0xF));
    const __m128i mins = _mm_and_si128(_mm_srli_epi16(sc, 4), _mm_set1_epi8(0xF));
    const __m256i summ = _mm256_madd_epi16(_mm256_cvtepu8_epi16(mins), loadu256(y->bsums));
    // weights 32(4h + j) .. +31 are bits 2j..2j+1 of qs[32h .. 32h+31]
    __m256i u[8];
    _Pragma("GCC unroll 8")
    for (int h = 0; h < 2; ++h) {
        const __m256i q = loadu256(x->qs + 32 * h);
        u[4 * h + 0] = _mm256_and_si256(q, m3);
        u[4 * h + 1] = _mm256_and_si256(_mm256_srli_epi16(q, 2), m3);
        u[4 * h + 2] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m3);
        u[4 * h + 3] = _mm256_and_si256(_mm256_srli_epi16(q, 6), m3);
    }
    sumi_out = scaled_dot16(u, y->qs, scales);
    summ_out = summ;
}

LL_INLINE __m256 block_q2_k(const block_q2_K* x, const block_q8_K* y, __m256 acc) {
    __m256i sumi, summ;
    lanes_q2_k(x, y, sumi, summ);
    const float d = y->d * h2f(x->d), dmin = y->d * h2f(x->dmin);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    return _mm256_fmadd_ps(_mm256_set1_ps(-dmin), _mm256_cvtepi32_ps(summ), acc);
}

// Integer lanes of one Q3_K super-block, summing to sum(scale * dot).
LL_INLINE __m256i lanes_q3_k(const block_q3_K* x, const block_q8_K* y) {
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m256i m4 = _mm256_set1_epi8(4);
    const __m128i scales = unpack_scales_q3(x->scales);
    const __m256i hm = loadu256(x->hmask);
    // weight group g = 4h + j (32 weights): bits 2j..2j+1 of qs[32h..], plus 4
    // when bit g of hmask is set; the weight is that minus 4.  16-bit shifts
    // move bit g to bit 2 without crossing into the neighbouring byte.
    const __m256i hb[8] = {_mm256_slli_epi16(hm, 2), _mm256_slli_epi16(hm, 1), hm, _mm256_srli_epi16(hm, 1),
                           _mm256_srli_epi16(hm, 2), _mm256_srli_epi16(hm, 3), _mm256_srli_epi16(hm, 4), _mm256_srli_epi16(hm, 5)};
    __m256i u[8];
    _Pragma("GCC unroll 8")
    for (int h = 0; h < 2; ++h) {
        const __m256i q = loadu256(x->qs + 32 * h);
        u[4 * h + 0] = _mm256_or_si256(_mm256_and_si256(q, m3), _mm256_and_si256(hb[4 * h + 0], m4));
        u[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 2), m3), _mm256_and_si256(hb[4 * h + 1], m4));
        u[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m3), _mm256_and_si256(hb[4 * h + 2], m4));
        u[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 6), m3), _mm256_and_si256(hb[4 * h + 3], m4));
    }
    // sum_k s_k * (sum u*q8 - 4 * bsum_k)
    const __m256i bias = _mm256_madd_epi16(_mm256_cvtepi8_epi16(scales), loadu256(y->bsums));
    return _mm256_sub_epi32(scaled_dot16(u, y->qs, scales), _mm256_slli_epi32(bias, 2));
}

LL_INLINE __m256 block_q3_k(const block_q3_K* x, const block_q8_K* y, __m256 acc) {
    return _mm256_fmadd_ps(_mm256_set1_ps(y->d * h2f(x->d)), _mm256_cvtepi32_ps(lanes_q3_k(x, y)), acc);
}

// Q4_K: sumi_q4_k (q4_k.h) for each row of the pair.
LL_INLINE void block2_q4_k(const block_q4_K* x0, const block_q4_K* x1, const block_q8_K* y, __m256& acc0, __m256& acc1, __m256& accm) {
    const ScalesK4x2 s = scales_k4x2(x0->scales, x1->scales);
    const __m256i sumi0 = sumi_q4_k(x0, y->qs, s.sc0);
    const __m256i sumi1 = sumi_q4_k(x1, y->qs, s.sc1);
    finish_k4x2(&x0->d, &x1->d, y, sumi0, sumi1, s.mins, acc0, acc1, accm);
}

// Q5_K: as Q4_K, plus the fifth bits: bit 2j of qh[l] for sub-block 2j, bit
// 2j+1 for 2j+1.  Each step moves the next two bits down to bits 0 and 1
// (16-bit shifts keep them inside their byte for these distances).
LL_INLINE __m256i sumi_q5_k(const block_q5_K* x, const int8_t* q8, __m256i sc) {
    const __m256i m4 = _mm256_set1_epi8(0xF);
    const __m256i m16 = _mm256_set1_epi8(0x10);
    __m256i hb = loadu256(x->qh);
    __m256i u[8];
    _Pragma("GCC unroll 4")
    for (int j = 0; j < 4; ++j) {
        const __m256i q = loadu256(x->qs + 32 * j);
        u[2 * j + 0] = _mm256_or_si256(_mm256_and_si256(q, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), m16));
        u[2 * j + 1] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), _mm256_and_si256(_mm256_slli_epi16(hb, 3), m16));
        hb = _mm256_srli_epi16(hb, 2);
    }
    return scaled_dot8(u, q8, sc);
}

LL_INLINE void block2_q5_k(const block_q5_K* x0, const block_q5_K* x1, const block_q8_K* y, __m256& acc0, __m256& acc1, __m256& accm) {
    const ScalesK4x2 s = scales_k4x2(x0->scales, x1->scales);
    const __m256i sumi0 = sumi_q5_k(x0, y->qs, s.sc0);
    const __m256i sumi1 = sumi_q5_k(x1, y->qs, s.sc1);
    finish_k4x2(&x0->d, &x1->d, y, sumi0, sumi1, s.mins, acc0, acc1, accm);
}

// As ggml_vec_dot_q6_K_q8_K: vector v's two sub-blocks (bytes 0..15 and
// 16..31) are scaled by s_2v and s_2v+1, so int32 lane i holds bytes
// 4i..4i+3 of every vector, and the -32 offset comes off afterwards through
// the activation block sums, 32 * (bsum_2i * s_2i + bsum_2i+1 * s_2i+1) from
// lane i.  These are ggml's lanes, so the float FMA rounds exactly as
// llama.cpp's does.
LL_INLINE __m256i lanes_q6_k(const block_q6_K* x, const block_q8_K* y) {
    const __m256i m4 = _mm256_set1_epi8(0xF);
    const __m256i m30 = _mm256_set1_epi8(0x30);
    const __m128i scales = loadu128(x->scales);
    // unsigned 6-bit values u; the weight is u - 32
    __m256i u[8];
    _Pragma("GCC unroll 8")
    for (int h = 0; h < 2; ++h) {
        const __m256i ql0 = loadu256(x->ql + 64 * h);
        const __m256i ql1 = loadu256(x->ql + 64 * h + 32);
        const __m256i qh = loadu256(x->qh + 32 * h);
        u[4 * h + 0] = _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
        u[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
        u[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, m30));
        u[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
    }
    __m256i sumi[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
    _Pragma("GCC unroll 8")
    for (int v = 0; v < 8; ++v) {
        const __m256i p16 = _mm256_maddubs_epi16(u[v], loadu256(y->qs + 32 * v));  // u <= 63: no saturation
        const __m256i sv = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(
            scales, _mm_setr_epi8(2 * v, 2 * v, 2 * v, 2 * v, 2 * v, 2 * v, 2 * v, 2 * v, 2 * v + 1, 2 * v + 1, 2 * v + 1, 2 * v + 1,
                                  2 * v + 1, 2 * v + 1, 2 * v + 1, 2 * v + 1)));
        sumi[v % 4] = MADD16_ACC(sumi[v % 4], p16, sv);  // independent chains; integer sums
    }
    const __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(loadu256(y->bsums), _mm256_cvtepi8_epi16(scales)), 5);
    const __m256i total = _mm256_add_epi32(_mm256_add_epi32(sumi[0], sumi[1]), _mm256_add_epi32(sumi[2], sumi[3]));
    return _mm256_sub_epi32(total, offset);
}

LL_INLINE __m256 block_q6_k(const block_q6_K* x, const block_q8_K* y, __m256 acc) {
    return _mm256_fmadd_ps(_mm256_set1_ps(y->d * h2f(x->d)), _mm256_cvtepi32_ps(lanes_q6_k(x, y)), acc);
}

LL_INLINE void block2_q6_k(const block_q6_K* x0, const block_q6_K* x1, const block_q8_K* y, __m256& acc0, __m256& acc1, __m256&) {
    acc0 = block_q6_k(x0, y, acc0);
    acc1 = block_q6_k(x1, y, acc1);
}

// The other formats have little per-block bookkeeping: a pair is two rows.
#define LL_PAIR_OF(NAME, BLOCK_T, BLOCK_FN)                                                                     \
    LL_INLINE void NAME(const BLOCK_T* x0, const BLOCK_T* x1, const block_q8_K* y, __m256& acc0, __m256& acc1, __m256&) { \
        acc0 = BLOCK_FN(x0, y, acc0);                                                                           \
        acc1 = BLOCK_FN(x1, y, acc1);                                                                           \
    }
LL_PAIR_OF(block2_q2_k, block_q2_K, block_q2_k)
LL_PAIR_OF(block2_q3_k, block_q3_K, block_q3_k)
#undef LL_PAIR_OF

// ---- row drivers: two rows per pass share the activation loads ----
//
// Matvec streams every weight byte from DRAM once, and each block takes few
// enough cycles that memory latency decides the speed: with the hardware
// prefetchers alone, two threads reached only ~45-70% of the read bandwidth
// at 7B shapes.  So each row stream also prefetches into L2 (T1 measured
// better than T0/T2) the data it will read PREFETCH_AHEAD bytes later.  A
// stream that reads row r goes on with row r + 2 (the next pair), so the
// cursor continues there when it passes the end of the row; a fixed address
// offset instead would land in the neighbouring row's stream and give long
// rows (k = 11008) a much poorer lead.  Prefetches never fault, so running
// past the last row is harmless.

constexpr int64_t PREFETCH_AHEAD = 4096;

// Addresses are kept as integers: the cursor may point past the weights.
struct PrefetchCursor {
    uintptr_t row;  // row being prefetched
    int64_t off;    // byte offset in it
    int64_t used;   // bytes per row that the kernel reads
    int64_t next;   // bytes from a row to the next row of the same stream
};

// Where a stream starting at `row` will be PREFETCH_AHEAD bytes later.
LL_INLINE PrefetchCursor prefetch_start(const void* row, int64_t used, int64_t next) {
    const int64_t rows_ahead = PREFETCH_AHEAD / used;
    return PrefetchCursor{reinterpret_cast<uintptr_t>(row) + (uintptr_t)(rows_ahead * next), PREFETCH_AHEAD - rows_ahead * used, used, next};
}

// Prefetches `size` bytes at the cursor plus `delta` bytes, into L2.
LL_INLINE void prefetch_lines(const PrefetchCursor& c, int64_t delta, int size) {
    const uintptr_t a = c.row + (uintptr_t)(c.off + delta);
    _Pragma("GCC unroll 4")
    for (int o = 0; o < size; o += 64) _mm_prefetch(reinterpret_cast<const char*>(a + (uintptr_t)o), _MM_HINT_T1);
}

LL_INLINE void prefetch_advance(PrefetchCursor& c, int size) {
    c.off += size;
    if (c.off >= c.used) {
        c.off -= c.used;
        c.row += (uintptr_t)c.next;
    }
}

LL_INLINE float hsum128_ps(__m128 s) {
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// A last odd row runs as a pair with itself; only the first result is kept.
#define LL_DOT_ROWS(NAME, BLOCK_T, BLOCK2_FN)                                                                 \
    void NAME(int64_t n, int64_t nrows, const void* w, size_t stride, const void* vx, float* out) {          \
        const uint8_t* p = static_cast<const uint8_t*>(w);                                                    \
        const block_q8_K* y = static_cast<const block_q8_K*>(vx);                                             \
        const int64_t nb = n / QK_K, used = nb * (int64_t)sizeof(BLOCK_T);                                    \
        if (nb <= 0) {                                                                                        \
            for (int64_t r = 0; r < nrows; ++r) out[r] = 0.0f;                                                \
            return;                                                                                           \
        }                                                                                                     \
        for (int64_t r = 0; r < nrows; r += 2) {                                                              \
            const bool pair = r + 1 < nrows;                                                                  \
            const BLOCK_T* x0 = reinterpret_cast<const BLOCK_T*>(p + r * stride);                             \
            const BLOCK_T* x1 = reinterpret_cast<const BLOCK_T*>(p + (pair ? r + 1 : r) * stride);            \
            PrefetchCursor pf = prefetch_start(x0, used, (pair ? 2 : 1) * (int64_t)stride);                   \
            const int64_t pf_second = pair ? (int64_t)stride : 0;                                             \
            __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), accm = _mm256_setzero_ps();        \
            for (int64_t i = 0; i < nb; ++i) {                                                                \
                prefetch_lines(pf, 0, (int)sizeof(BLOCK_T));                                                  \
                prefetch_lines(pf, pf_second, (int)sizeof(BLOCK_T));                                          \
                prefetch_advance(pf, (int)sizeof(BLOCK_T));                                                   \
                BLOCK2_FN(x0 + i, x1 + i, y + i, acc0, acc1, accm);                                           \
            }                                                                                                 \
            out[r] = hsum_ggml(acc0) + hsum128_ps(_mm256_castps256_ps128(accm));                                \
            if (pair) out[r + 1] = hsum_ggml(acc1) + hsum128_ps(_mm256_extractf128_ps(accm, 1));                \
        }                                                                                                     \
    }

LL_DOT_ROWS(dot_q2_k, block_q2_K, block2_q2_k)
LL_DOT_ROWS(dot_q3_k, block_q3_K, block2_q3_k)
LL_DOT_ROWS(dot_q4_k, block_q4_K, block2_q4_k)
LL_DOT_ROWS(dot_q5_k, block_q5_K, block2_q5_k)
LL_DOT_ROWS(dot_q6_k, block_q6_K, block2_q6_k)

#undef LL_DOT_ROWS

// Q6_K from the interleaved copy (KernelSet::dot_gemv_il): block i of row
// 8g + j at ((g * nb + i) * 8 + j) blocks, so eight rows are one stream,
// its lines fetched into L2 four blocks ahead (6.7 KB; two ahead into L1, as
// repack.cpp's Q4_K copy does, was 3% slower); each row takes dot_q6_k's
// arithmetic (its zero min term added too: -0 + 0 is +0).  Against row-major
// pairs, decode of the Q4_K_M files (a quarter of their bytes Q6_K), 2
// threads: 1.1B +5-9%, 7B +4% (in-process A/Bs).
void dot_q6_k_il(int64_t n, int64_t nrows, const void* w, size_t, const void* vx, float* out) {
    const block_q6_K* x = static_cast<const block_q6_K*>(w);
    const block_q8_K* y = static_cast<const block_q8_K*>(vx);
    const int64_t nb = n / QK_K;
    for (int64_t r = 0; r < nrows; r += 8) {
        const block_q6_K* g = x + r * nb;
        __m256 acc[8];
        _Pragma("GCC unroll 8")
        for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
        for (int64_t i = 0; i < nb; ++i) {
            const char* ahead = reinterpret_cast<const char*>(g + (i + 4) * 8);
            _Pragma("GCC unroll 27")
            for (int o = 0; o < 8 * (int)sizeof(block_q6_K); o += 64) _mm_prefetch(ahead + o, _MM_HINT_T1);
            _Pragma("GCC unroll 8")
            for (int j = 0; j < 8; ++j) acc[j] = block_q6_k(g + i * 8 + j, y + i, acc[j]);
        }
        for (int j = 0; j < 8; ++j) out[r + j] = hsum_ggml(acc[j]) + 0.0f;
    }
}

// ---- llama.cpp's tiled k-quant matmul (see KernelSet::dot_tiled) ----
//
// Per super-block the exact integer sums s = sum(scale * dot) and m =
// sum(min * bsum) from the same integer lanes as the kernels above, then
// ggml's tiled microkernel epilogue: r = d * s, r -= dmin * m (fused),
// acc += r * d_act (fused).  Same arithmetic as the scalar reference.

// Integer lanes of one super-block summing to s = sum(scale * dot) and m = sum(min * bsum), in 4 lanes each.
template <class B>
LL_INLINE void tiled_lanes(const B* x, const block_q8_K* y, __m128i& s, __m128i& m);

template <>
LL_INLINE void tiled_lanes(const block_q2_K* x, const block_q8_K* y, __m128i& s, __m128i& m) {
    __m256i sumi, summ;
    lanes_q2_k(x, y, sumi, summ);
    s = halves(sumi);
    m = halves(summ);
}
template <>
LL_INLINE void tiled_lanes(const block_q3_K* x, const block_q8_K* y, __m128i& s, __m128i& m) {
    s = halves(lanes_q3_k(x, y));
    m = _mm_setzero_si128();
}
template <>
LL_INLINE void tiled_lanes(const block_q4_K* x, const block_q8_K* y, __m128i& s, __m128i& m) {
    const ScalesK4x2 sc = scales_k4x2(x->scales, x->scales);
    s = halves(sumi_q4_k(x, y->qs, sc.sc0));
    m = _mm_madd_epi16(_mm256_castsi256_si128(sc.mins), _mm_hadd_epi16(loadu128(y->bsums), loadu128(y->bsums + 8)));
}
template <>
LL_INLINE void tiled_lanes(const block_q5_K* x, const block_q8_K* y, __m128i& s, __m128i& m) {
    const ScalesK4x2 sc = scales_k4x2(x->scales, x->scales);
    s = halves(sumi_q5_k(x, y->qs, sc.sc0));
    m = _mm_madd_epi16(_mm256_castsi256_si128(sc.mins), _mm_hadd_epi16(loadu128(y->bsums), loadu128(y->bsums + 8)));
}
template <>
LL_INLINE void tiled_lanes(const block_q6_K* x, const block_q8_K* y, __m128i& s, __m128i& m) {
    s = halves(lanes_q6_k(x, y));
    m = _mm_setzero_si128();
}

// Formats with a min term (and a dmin to scale it): all but Q3_K and Q6_K.
template <class B>
constexpr bool HAS_MIN = !std::is_same<B, block_q3_K>::value && !std::is_same<B, block_q6_K>::value;

// Four rows at a time, one float lane each (lane-wise ops round as the scalar ones).
template <class B>
void dot_tiled(int64_t n, int64_t nrows, const void* w, size_t stride, const void* vx, float* out) {
    const uint8_t* p = static_cast<const uint8_t*>(w);
    const block_q8_K* y = static_cast<const block_q8_K*>(vx);
    const int64_t nb = n / QK_K;
    for (int64_t r = 0; r < nrows; r += 4) {
        const B* x[4];
        for (int t = 0; t < 4; ++t) x[t] = reinterpret_cast<const B*>(p + std::min<int64_t>(r + t, nrows - 1) * stride);
        __m128 acc = _mm_setzero_ps();
        for (int64_t i = 0; i < nb; ++i) {
            __m128i s[4], m[4];
            _Pragma("GCC unroll 4")  // s and m in registers, not through the stack
            for (int t = 0; t < 4; ++t) tiled_lanes(x[t] + i, y + i, s[t], m[t]);
            const __m128i st = _mm_hadd_epi32(_mm_hadd_epi32(s[0], s[1]), _mm_hadd_epi32(s[2], s[3]));  // [s of row 0..3]
            const __m128 d = _mm_setr_ps(h2f(x[0][i].d), h2f(x[1][i].d), h2f(x[2][i].d), h2f(x[3][i].d));
            __m128 v = _mm_mul_ps(d, _mm_cvtepi32_ps(st));
            if constexpr (HAS_MIN<B>) {
                const __m128i mt = _mm_hadd_epi32(_mm_hadd_epi32(m[0], m[1]), _mm_hadd_epi32(m[2], m[3]));
                const __m128 dmin = _mm_setr_ps(h2f(x[0][i].dmin), h2f(x[1][i].dmin), h2f(x[2][i].dmin), h2f(x[3][i].dmin));
                v = _mm_fnmadd_ps(dmin, _mm_cvtepi32_ps(mt), v);
            }
            acc = _mm_fmadd_ps(v, _mm_set1_ps(y[i].d), acc);
        }
        alignas(16) float res[4];
        _mm_store_ps(res, acc);
        for (int t = 0; t < 4 && r + t < nrows; ++t) out[r + t] = res[t];
    }
}

// ---- Q8_K activation quantizer (quantize_row_q8_K_ref, -127 numerator as in current ggml) ----

void quant_q8_k(const float* x, void* dst, int64_t n) {
    block_q8_K* y = static_cast<block_q8_K*>(dst);
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const __m256i ones8 = _mm256_set1_epi8(1);
    const __m256i max127 = _mm256_set1_epi32(127);
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        __m256 vmax = _mm256_setzero_ps();
        // max_ps returns its second operand when either is NaN: NaNs are skipped, as in the reference
        for (int j = 0; j < QK_K; j += 8) vmax = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + j), abs_mask), vmax);
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        const float amax = _mm_cvtss_f32(m);
        if (!(amax > 0.0f)) {
            std::memset(&y[i], 0, sizeof(block_q8_K));
            continue;
        }
        // the signed value of the first element with the largest magnitude
        const __m256 vamax = _mm256_set1_ps(amax);
        float max = 0.0f;
        for (int j = 0; j < QK_K; j += 8) {
            const int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_and_ps(_mm256_loadu_ps(x + j), abs_mask), vamax, _CMP_EQ_OQ));
            if (mask) {
                max = x[j + __builtin_ctz((unsigned)mask)];
                break;
            }
        }
        const float iscale = -127.f / max;
        const __m256 vs = _mm256_set1_ps(iscale);
        __m256i bs[8];  // per 32 values: sums of 4 consecutive qs
        _Pragma("GCC unroll 8")
        for (int c = 0; c < 8; c++) {
            __m256i v[4];
            _Pragma("GCC unroll 8")
            for (int k = 0; k < 4; k++) {
                // cvtps rounds half to even under the default MXCSR, like nearest_int
                v[k] = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 32 * c + 8 * k), vs)), max127);
            }
            const __m256i a = _mm256_packs_epi32(v[0], v[1]);
            const __m256i b = _mm256_packs_epi32(v[2], v[3]);
            const __m256i q = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(a, b), perm);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[i].qs + 32 * c), q);
            bs[c] = MAC_U8S8(_mm256_setzero_si256(), ones8, q);
        }
        // bs[c] lanes 0..3 sum to bsums[2c], lanes 4..7 to bsums[2c+1]
        const __m256i h01 = _mm256_hadd_epi32(bs[0], bs[1]), h23 = _mm256_hadd_epi32(bs[2], bs[3]);
        const __m256i h45 = _mm256_hadd_epi32(bs[4], bs[5]), h67 = _mm256_hadd_epi32(bs[6], bs[7]);
        const __m256i a = _mm256_hadd_epi32(h01, h23);  // [B0 B2 B4 B6 | B1 B3 B5 B7]
        const __m256i b = _mm256_hadd_epi32(h45, h67);  // [B8 B10 B12 B14 | B9 B11 B13 B15]
        const __m256i packed = _mm256_packs_epi32(a, b);  // [B0 B2 B4 B6 B8 B10 B12 B14 | B1 B3 ... B15]
        const __m128i ev = _mm256_castsi256_si128(packed), od = _mm256_extracti128_si256(packed, 1);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y[i].bsums), _mm_unpacklo_epi16(ev, od));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y[i].bsums + 8), _mm_unpackhi_epi16(ev, od));
        y[i].d = 1 / iscale;
    }
}

// ---- dequantize ----

// 32 unsigned bytes -> 4 x 8 floats d*q - m (exact: the product has <= 24 bits)
LL_INLINE void store_affine32(float* dst, __m256i q, __m256 d, __m256 m) {
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    _mm256_storeu_ps(dst + 0, _mm256_fmsub_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), m));
    _mm256_storeu_ps(dst + 8, _mm256_fmsub_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(lo, lo))), m));
    _mm256_storeu_ps(dst + 16, _mm256_fmsub_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), m));
    _mm256_storeu_ps(dst + 24, _mm256_fmsub_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(hi, hi))), m));
}

void dequant_q4_k(const void* src, float* dst, int64_t n) {
    const block_q4_K* x = static_cast<const block_q4_K*>(src);
    const __m256i m4 = _mm256_set1_epi8(0xF);
    alignas(16) uint8_t sm[16];
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = h2f(x[i].d), dmin = h2f(x[i].dmin);
        _mm_store_si128(reinterpret_cast<__m128i*>(sm), unpack_scales_k4(x[i].scales));
        _Pragma("GCC unroll 8")
        for (int j = 0; j < 4; j++) {
            const __m256i q = loadu256(x[i].qs + 32 * j);
            store_affine32(dst, _mm256_and_si256(q, m4), _mm256_set1_ps(d * sm[2 * j]), _mm256_set1_ps(dmin * sm[8 + 2 * j]));
            store_affine32(dst + 32, _mm256_and_si256(_mm256_srli_epi16(q, 4), m4), _mm256_set1_ps(d * sm[2 * j + 1]),
                           _mm256_set1_ps(dmin * sm[8 + 2 * j + 1]));
            dst += 64;
        }
    }
}

// 16 signed bytes -> 2 x 8 floats d*q
LL_INLINE void store_scaled16(float* dst, __m128i q, __m256 d) {
    _mm256_storeu_ps(dst + 0, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))));
    _mm256_storeu_ps(dst + 8, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(q, q)))));
}

void dequant_q6_k(const void* src, float* dst, int64_t n) {
    const block_q6_K* x = static_cast<const block_q6_K*>(src);
    const __m256i m4 = _mm256_set1_epi8(0xF);
    const __m256i m30 = _mm256_set1_epi8(0x30);
    const __m256i m32 = _mm256_set1_epi8(32);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = h2f(x[i].d);
        const int8_t* sc = x[i].scales;
        _Pragma("GCC unroll 8")
        for (int h = 0; h < 2; ++h) {
            const __m256i ql0 = loadu256(x[i].ql + 64 * h);
            const __m256i ql1 = loadu256(x[i].ql + 64 * h + 32);
            const __m256i qh = loadu256(x[i].qh + 32 * h);
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
            q[1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, m30));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
            _Pragma("GCC unroll 8")
            for (int g = 0; g < 4; g++) {
                const __m256i v = _mm256_sub_epi8(q[g], m32);
                store_scaled16(dst, _mm256_castsi256_si128(v), _mm256_set1_ps(d * sc[8 * h + 2 * g]));
                store_scaled16(dst + 16, _mm256_extracti128_si256(v, 1), _mm256_set1_ps(d * sc[8 * h + 2 * g + 1]));
                dst += 32;
            }
        }
    }
}

}  // namespace

void LL_REGISTER(kquants)(KernelSet* ks) {
    ks->dot[TYPE_Q2_K] = dot_q2_k;
    ks->dot[TYPE_Q3_K] = dot_q3_k;
    ks->dot[TYPE_Q4_K] = dot_q4_k;
    ks->dot[TYPE_Q5_K] = dot_q5_k;
    ks->dot[TYPE_Q6_K] = dot_q6_k;
    ks->dot_gemv_il[TYPE_Q6_K] = dot_q6_k_il;
    ks->dot_tiled[TYPE_Q2_K] = dot_tiled<block_q2_K>;
    ks->dot_tiled[TYPE_Q3_K] = dot_tiled<block_q3_K>;
    ks->dot_tiled[TYPE_Q4_K] = dot_tiled<block_q4_K>;
    ks->dot_tiled[TYPE_Q5_K] = dot_tiled<block_q5_K>;
    ks->dot_tiled[TYPE_Q6_K] = dot_tiled<block_q6_K>;
    ks->quant_act[TYPE_Q8_K] = quant_q8_k;
    ks->dequant[TYPE_Q4_K] = dequant_q4_k;
    ks->dequant[TYPE_Q6_K] = dequant_q6_k;
}

}  // namespace ll
