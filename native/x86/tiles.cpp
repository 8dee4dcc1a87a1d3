// Batch tiles that hold one weight row per int32 lane (transpose.h): a
// block of rows is unpacked and transposed once per call, and every token
// then takes each row's exact integer sums straight from its lanes with one
// multiply-accumulate per broadcast activation dword, where the row-major
// tiles spend about as many instructions on horizontal reductions and
// transposes per row and token as on the products.  The float steps are the
// replaced kernels' own, lane by lane, so every output is unchanged; rows
// short of a full group, tokens outside the gemm's groups of four and
// decode steps of a few sequences go to the kernels registered before
// (repack.cpp, legacy.cpp).
//
// Compiled once per ISA like the other x86 files: the avx512 build takes
// sixteen rows to a 512-bit register and VPDPBUSD, the avx2 build (and the
// emulated-VNNI test build) eight rows and VPMADDUBSW.
#include <immintrin.h>

#include <cstddef>
#include <cstring>
#include <vector>

#include "../kernels.h"

#include "common.h"
#include "q4_k.h"
#include "transpose.h"

namespace ll {
namespace {

// ---- Q4_K, the gemm's tokens (dot_q4_k_packed<1> in repack.cpp) ----
//
// Per block and pair g of sub-blocks: s_g = sum(scale * dot) into the row's
// chain by acc = fma(s_g, d_w * d_y, acc), and min * bsum into its min chain
// likewise; the output is acc - acc_min.

dot_tile_fn q4_k_rest = nullptr;  // repack.cpp's tile: the rows and tokens these leave

#if LL_ZMM
constexpr int Q4K_ROWS = 16;

// A super-block of sixteen rows, unpacked once per call for every token.
struct alignas(64) Q4KRows16 {
    __m512i w[4][16];  // pair g: [m] bytes 4m..4m+3 of sub-block 2g (low nibbles of qs[32g..]), [8 + m] of 2g + 1 (high)
    __m512i sc[8];     // the int32 scale of sub-block j
    __m512i mins[4];   // the int16 pair (min 2g, min 2g + 1)
    __m512 d, dmin;
};

LL_INLINE void unpack_q4_k_rows16(const uint8_t* blk, size_t stride, Q4KRows16& o) {
    const __m512i m4 = _mm512_set1_epi8(0xF);
    _Pragma("GCC unroll 8")
    for (int piece = 0; piece < 8; piece++) {  // qs[16 piece..]: dwords 4 piece.. of pair piece / 2
        __m512i v[4], t[4];
        for (int q = 0; q < 4; q++) v[q] = rows4_128(blk + offsetof(block_q4_K, qs) + 16 * piece + q * stride, 4 * stride);
        transpose_lanes4x4(v, t);
        for (int m = 0; m < 4; m++) {
            o.w[piece / 2][4 * (piece % 2) + m] = _mm512_and_si512(t[m], m4);
            o.w[piece / 2][8 + 4 * (piece % 2) + m] = _mm512_and_si512(_mm512_srli_epi16(t[m], 4), m4);
        }
    }
    // each row's int16 scales and mins, then transposed as the nibbles are: dword g is the pair of 2g, 2g + 1
    alignas(64) int16_t sm[2][16][8];
    for (int r = 0; r < 16; r += 2) {
        const ScalesK4x2 s2 = scales_k4x2(blk + r * stride + offsetof(block_q4_K, scales), blk + (r + 1) * stride + offsetof(block_q4_K, scales));
        _mm_store_si128(reinterpret_cast<__m128i*>(sm[0][r]), _mm256_castsi256_si128(s2.sc0));
        _mm_store_si128(reinterpret_cast<__m128i*>(sm[0][r + 1]), _mm256_castsi256_si128(s2.sc1));
        _mm_store_si128(reinterpret_cast<__m128i*>(sm[1][r]), _mm256_castsi256_si128(s2.mins));
        _mm_store_si128(reinterpret_cast<__m128i*>(sm[1][r + 1]), _mm256_extracti128_si256(s2.mins, 1));
    }
    __m512i v[4], t[4];
    for (int q = 0; q < 4; q++) v[q] = rows4_128(reinterpret_cast<const uint8_t*>(sm[0][q]), 4 * sizeof sm[0][0]);
    transpose_lanes4x4(v, t);
    for (int g = 0; g < 4; g++) {
        o.sc[2 * g] = _mm512_and_si512(t[g], _mm512_set1_epi32(0xFFFF));
        o.sc[2 * g + 1] = _mm512_srli_epi32(t[g], 16);
    }
    for (int q = 0; q < 4; q++) v[q] = rows4_128(reinterpret_cast<const uint8_t*>(sm[1][q]), 4 * sizeof sm[1][0]);
    transpose_lanes4x4(v, o.mins);
    o.d = halves16(blk + offsetof(block_q4_K, d), stride);
    o.dmin = halves16(blk + offsetof(block_q4_K, dmin), stride);
}

// NT tokens (activation rows x + t * x_stride) over sixteen rows unpacked in
// u[0..nb): per block and pair g, sum(scale * dot) into the row's chain and
// min * bsum into its min chain, in dot_q4_k_packed<1>'s order.
template <int NT>
inline void q4_k_tile_rows16(int64_t nb, const Q4KRows16* u, const uint8_t* x, size_t x_stride, float* out, size_t out_stride) {
    const block_q8_K* y[NT];
    __m512 acc[NT], acc_min[NT];
    for (int t = 0; t < NT; t++) {
        y[t] = reinterpret_cast<const block_q8_K*>(x + t * x_stride);
        acc[t] = acc_min[t] = _mm512_setzero_ps();
    }
    for (int64_t i = 0; i < nb; i++) {
        const Q4KRows16& b = u[i];
        _Pragma("GCC unroll 4")
        for (int g = 0; g < 4; g++) {
            __m512i lo[NT], hi[NT];
            for (int t = 0; t < NT; t++) lo[t] = hi[t] = _mm512_setzero_si512();
            _Pragma("GCC unroll 8")
            for (int m = 0; m < 8; m++) {
                const __m512i wl = _mm512_load_si512(&b.w[g][m]), wh = _mm512_load_si512(&b.w[g][8 + m]);
                _Pragma("GCC unroll 4")
                for (int t = 0; t < NT; t++) {
                    const uint8_t* q = reinterpret_cast<const uint8_t*>(y[t][i].qs) + 64 * g + 4 * m;
                    lo[t] = _mm512_dpbusd_epi32(lo[t], wl, _mm512_set1_epi32((int)load_u32(q)));
                    hi[t] = _mm512_dpbusd_epi32(hi[t], wh, _mm512_set1_epi32((int)load_u32(q + 32)));
                }
            }
            _Pragma("GCC unroll 4")
            for (int t = 0; t < NT; t++) {
                const __m512i s = _mm512_add_epi32(_mm512_mullo_epi32(lo[t], b.sc[2 * g]), _mm512_mullo_epi32(hi[t], b.sc[2 * g + 1]));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(b.d, _mm512_set1_ps(y[t][i].d)), acc[t]);
            }
        }
        _Pragma("GCC unroll 4")
        for (int t = 0; t < NT; t++) {
            alignas(16) int32_t bs[4];  // per pair the int16 sums of its two sub-blocks' activations
            _mm_store_si128(reinterpret_cast<__m128i*>(bs), _mm_hadd_epi16(loadu128(y[t][i].bsums), loadu128(y[t][i].bsums + 8)));
            const __m512 dmin = _mm512_mul_ps(b.dmin, _mm512_set1_ps(y[t][i].d));
            for (int g = 0; g < 4; g++)
                acc_min[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_madd_epi16(b.mins[g], _mm512_set1_epi32(bs[g]))), dmin, acc_min[t]);
        }
    }
    for (int t = 0; t < NT; t++) _mm512_storeu_ps(out + t * out_stride, _mm512_sub_ps(acc[t], acc_min[t]));
}

#else
constexpr int Q4K_ROWS = 8;

// A super-block of eight rows, unpacked once per call for every token.
struct alignas(32) Q4KRows8 {
    __m256i w[4][16];  // pair g: [m] bytes 4m..4m+3 of sub-block 2g (low nibbles of qs[32g..]), [8 + m] of 2g + 1 (high)
    __m256i sc[8];     // the int16 scale of sub-block j, twice in each int32 lane (VPMADDWD scales both halves)
    __m256i mins[4];   // the int16 pair (min 2g, min 2g + 1)
    __m256 d, dmin;
};

LL_INLINE void unpack_q4_k_rows8(const uint8_t* blk, size_t stride, Q4KRows8& o) {
    const __m256i m4 = _mm256_set1_epi8(0xF);
    for (int g = 0; g < 4; g++) {
        __m256i v[8], t[8];
        for (int r = 0; r < 8; r++) v[r] = loadu256(blk + r * stride + offsetof(block_q4_K, qs) + 32 * g);
        transpose8x8(v, t);
        for (int m = 0; m < 8; m++) {
            o.w[g][m] = _mm256_and_si256(t[m], m4);
            o.w[g][8 + m] = _mm256_and_si256(_mm256_srli_epi16(t[m], 4), m4);
        }
    }
    alignas(32) uint16_t sm[2][8][8];  // per row its int16 scales and mins (scales_k4x2)
    for (int r = 0; r < 8; r += 2) {
        const ScalesK4x2 s2 = scales_k4x2(blk + r * stride + offsetof(block_q4_K, scales), blk + (r + 1) * stride + offsetof(block_q4_K, scales));
        _mm_store_si128(reinterpret_cast<__m128i*>(sm[0][r]), _mm256_castsi256_si128(s2.sc0));
        _mm_store_si128(reinterpret_cast<__m128i*>(sm[0][r + 1]), _mm256_castsi256_si128(s2.sc1));
        _mm_store_si128(reinterpret_cast<__m128i*>(sm[1][r]), _mm256_castsi256_si128(s2.mins));
        _mm_store_si128(reinterpret_cast<__m128i*>(sm[1][r + 1]), _mm256_extracti128_si256(s2.mins, 1));
    }
    alignas(32) uint32_t sc[8][8], mins[4][8];
    for (int r = 0; r < 8; r++) {
        for (int j = 0; j < 8; j++) sc[j][r] = sm[0][r][j] * 0x10001u;
        for (int g = 0; g < 4; g++) mins[g][r] = sm[1][r][2 * g] | (uint32_t)sm[1][r][2 * g + 1] << 16;
    }
    for (int j = 0; j < 8; j++) o.sc[j] = _mm256_load_si256(reinterpret_cast<const __m256i*>(sc[j]));
    for (int g = 0; g < 4; g++) o.mins[g] = _mm256_load_si256(reinterpret_cast<const __m256i*>(mins[g]));
    o.d = halves8_rows(blk + offsetof(block_q4_K, d), stride);
    o.dmin = halves8_rows(blk + offsetof(block_q4_K, dmin), stride);
}

// NT tokens over eight rows unpacked in u[0..nb).  A sub-block's products
// are summed in int16 pairs (each at most 8 * 2 * 15 * 128 = 30720) and
// scaled by VPMADDWD; the min chains take a second pass over the blocks,
// which keeps the first pass's sixteen registers free of them.
template <int NT>
inline void q4_k_tile_rows8(int64_t nb, const Q4KRows8* u, const uint8_t* x, size_t x_stride, float* out, size_t out_stride) {
    const block_q8_K* y[NT];
    __m256 acc[NT];
    for (int t = 0; t < NT; t++) {
        y[t] = reinterpret_cast<const block_q8_K*>(x + t * x_stride);
        acc[t] = _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < nb; i++) {
        const Q4KRows8& b = u[i];
        _Pragma("GCC unroll 4")
        for (int g = 0; g < 4; g++) {
            __m256i s[NT];
            _Pragma("GCC unroll 2")
            for (int h = 0; h < 2; h++) {  // sub-block 2g + h
                __m256i p[NT];
                _Pragma("GCC unroll 8")
                for (int m = 0; m < 8; m++) {
                    const __m256i wv = _mm256_load_si256(&b.w[g][8 * h + m]);
                    _Pragma("GCC unroll 4")
                    for (int t = 0; t < NT; t++) {
                        const uint8_t* q = reinterpret_cast<const uint8_t*>(y[t][i].qs) + 64 * g + 32 * h + 4 * m;
                        const __m256i v = _mm256_maddubs_epi16(wv, _mm256_set1_epi32((int)load_u32(q)));
                        p[t] = m ? _mm256_add_epi16(p[t], v) : v;
                    }
                }
                _Pragma("GCC unroll 4")
                for (int t = 0; t < NT; t++) {
                    const __m256i v = _mm256_madd_epi16(p[t], b.sc[2 * g + h]);
                    s[t] = h ? _mm256_add_epi32(s[t], v) : v;
                }
            }
            _Pragma("GCC unroll 4")
            for (int t = 0; t < NT; t++)
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[t]), _mm256_mul_ps(b.d, _mm256_set1_ps(y[t][i].d)), acc[t]);
        }
    }
    for (int t = 0; t < NT; t++) {
        __m256 acc_min = _mm256_setzero_ps();
        for (int64_t i = 0; i < nb; i++) {
            alignas(16) int32_t bs[4];  // per pair the int16 sums of its two sub-blocks' activations
            _mm_store_si128(reinterpret_cast<__m128i*>(bs), _mm_hadd_epi16(loadu128(y[t][i].bsums), loadu128(y[t][i].bsums + 8)));
            const __m256 dmin = _mm256_mul_ps(u[i].dmin, _mm256_set1_ps(y[t][i].d));
            for (int g = 0; g < 4; g++)
                acc_min = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(u[i].mins[g], _mm256_set1_epi32(bs[g]))), dmin, acc_min);
        }
        _mm256_storeu_ps(out + t * out_stride, _mm256_sub_ps(acc[t], acc_min));
    }
}
#endif

#if LL_ZMM
typedef Q4KRows16 Q4KRows;
LL_INLINE void unpack_q4_k_rows(const uint8_t* blk, size_t stride, Q4KRows& o) { unpack_q4_k_rows16(blk, stride, o); }
LL_INLINE void q4_k_tile_rows(int64_t nb, const Q4KRows* u, const uint8_t* x, size_t x_stride, float* out, size_t out_stride) {
    q4_k_tile_rows16<4>(nb, u, x, x_stride, out, out_stride);
}
#else
typedef Q4KRows8 Q4KRows;
LL_INLINE void unpack_q4_k_rows(const uint8_t* blk, size_t stride, Q4KRows& o) { unpack_q4_k_rows8(blk, stride, o); }
LL_INLINE void q4_k_tile_rows(int64_t nb, const Q4KRows* u, const uint8_t* x, size_t x_stride, float* out, size_t out_stride) {
    q4_k_tile_rows8<4>(nb, u, x, x_stride, out, out_stride);
}
#endif

// KernelSet::dot_tile_packed for Q4_K: the gemm's tokens (full groups of
// four, as matmul() assigns them) over full groups of rows here, the rest
// through q4_k_rest.
void dot_tile_q4_k(int64_t n, int64_t nrows, const void* w, size_t stride, const void* x, size_t x_stride, int64_t n_tok, float* y,
                   size_t y_stride) {
    const uint8_t* p = static_cast<const uint8_t*>(w);
    const uint8_t* xb = static_cast<const uint8_t*>(x);
    const int64_t n_gemm = n_tok > 3 ? n_tok - n_tok % 4 : 0;
    const int64_t rows = n_gemm ? nrows / Q4K_ROWS * Q4K_ROWS : 0;
    if (rows == 0) return q4_k_rest(n, nrows, w, stride, x, x_stride, n_tok, y, y_stride);
    const int64_t nb = n / QK_K;
    thread_local std::vector<Q4KRows> u;
    u.resize((size_t)nb);
    for (int64_t r = 0; r < rows; r += Q4K_ROWS) {
        for (int64_t i = 0; i < nb; i++) unpack_q4_k_rows(p + r * stride + i * sizeof(block_q4_K), stride, u[i]);
        for (int64_t t = 0; t < n_gemm; t += 4) q4_k_tile_rows(nb, u.data(), xb + t * x_stride, x_stride, y + t * y_stride + r, y_stride);
    }
    if (n_gemm < n_tok) q4_k_rest(n, rows, w, stride, xb + n_gemm * x_stride, x_stride, n_tok - n_gemm, y + n_gemm * y_stride, y_stride);
    if (rows < nrows) q4_k_rest(n, nrows - rows, p + rows * stride, stride, x, x_stride, n_tok, y + rows, y_stride);
}

// ---- Q6_K, llama.cpp's tiled k-quant matmul (dot_tiled in kquants.cpp) ----
//
// Per block s = sum(scale * dot(u, y)) - 32 * sum(scale * bsum) over the
// sixteen sub-blocks of 16 (u the unsigned 6-bit values), then acc =
// fma(d_w * s, d_y, acc).  Vector v of a block is weights 32v..32v+31, as
// lanes_q6_k unpacks them: its sub-blocks are 2v (dwords 0..3) and 2v + 1.

dot_rows_fn q6_k_rest = nullptr;  // kquants.cpp's dot_tiled: the rows these leave

#if LL_ZMM
constexpr int Q6K_ROWS = 16;
// The 32 bytes at p of each row of the group (rows stride apart): dword m of every row in out[m].
LL_INLINE void row_dwords8(const uint8_t* p, size_t stride, __m512i out[8]) {
    for (int piece = 0; piece < 2; piece++) {
        __m512i v[4];
        for (int q = 0; q < 4; q++) v[q] = rows4_128(p + 16 * piece + q * stride, 4 * stride);
        transpose_lanes4x4(v, out + 4 * piece);
    }
}
// The vector width's few operations that unpack_q6_k_rows uses in both builds.
typedef __m512i VecI;
typedef __m512 VecF;
LL_INLINE VecI v_or(VecI a, VecI b) { return _mm512_or_si512(a, b); }
LL_INLINE VecI v_and(VecI a, VecI b) { return _mm512_and_si512(a, b); }
LL_INLINE VecI v_bytes(char c) { return _mm512_set1_epi8(c); }
LL_INLINE VecI v_load(const void* p) { return _mm512_load_si512(p); }
LL_INLINE VecF v_halves(const uint8_t* p, size_t stride) { return halves16(p, stride); }
LL_INLINE VecI shl16(VecI a, int n) { return _mm512_slli_epi16(a, n); }
LL_INLINE VecI shr16(VecI a, int n) { return _mm512_srli_epi16(a, n); }
#else
constexpr int Q6K_ROWS = 8;
// The 32 bytes at p of each row of the group (rows stride apart): dword m of every row in out[m].
LL_INLINE void row_dwords8(const uint8_t* p, size_t stride, __m256i out[8]) {
    __m256i v[8];
    for (int r = 0; r < 8; r++) v[r] = loadu256(p + r * stride);
    transpose8x8(v, out);
}
typedef __m256i VecI;
typedef __m256 VecF;
LL_INLINE VecI v_or(VecI a, VecI b) { return _mm256_or_si256(a, b); }
LL_INLINE VecI v_and(VecI a, VecI b) { return _mm256_and_si256(a, b); }
LL_INLINE VecI v_bytes(char c) { return _mm256_set1_epi8(c); }
LL_INLINE VecI v_load(const void* p) { return _mm256_load_si256(static_cast<const __m256i*>(p)); }
LL_INLINE VecF v_halves(const uint8_t* p, size_t stride) { return halves8_rows(p, stride); }
LL_INLINE VecI shl16(VecI a, int n) { return _mm256_slli_epi16(a, n); }
LL_INLINE VecI shr16(VecI a, int n) { return _mm256_srli_epi16(a, n); }
#endif

struct alignas(sizeof(VecI)) Q6KRows {
    VecI w[8][8];  // w[v][m]: bytes 4m..4m+3 of vector v, the unsigned 6-bit values
    VecI sc[16];   // the scale of sub-block k: int32 (avx512), or int16 twice in each int32 lane for VPMADDWD (avx2)
    VecI scp[8];   // the int16 pair (scale 2j, scale 2j + 1), for the offset's sum
    VecF d;
};

LL_INLINE void unpack_q6_k_rows(const uint8_t* blk, size_t stride, Q6KRows& o) {
    const VecI m4 = v_bytes(0xF), m30 = v_bytes(0x30);
    for (int h = 0; h < 2; h++) {
        VecI ql0[8], ql1[8], qh[8];
        row_dwords8(blk + offsetof(block_q6_K, ql) + 64 * h, stride, ql0);
        row_dwords8(blk + offsetof(block_q6_K, ql) + 64 * h + 32, stride, ql1);
        row_dwords8(blk + offsetof(block_q6_K, qh) + 32 * h, stride, qh);
        for (int m = 0; m < 8; m++) {  // as lanes_q6_k, on whole dwords: the byte positions line up
            const VecI a = ql0[m], b = ql1[m], c = qh[m];
            o.w[4 * h + 0][m] = v_or(v_and(a, m4), v_and(shl16(c, 4), m30));
            o.w[4 * h + 1][m] = v_or(v_and(b, m4), v_and(shl16(c, 2), m30));
            o.w[4 * h + 2][m] = v_or(v_and(shr16(a, 4), m4), v_and(c, m30));
            o.w[4 * h + 3][m] = v_or(v_and(shr16(b, 4), m4), v_and(shr16(c, 2), m30));
        }
    }
    // per row its sixteen int8 scales, one row per lane
    alignas(64) uint32_t sc[16][Q6K_ROWS], scp[8][Q6K_ROWS];
    for (int r = 0; r < Q6K_ROWS; r++) {
        const int8_t* s = reinterpret_cast<const int8_t*>(blk + r * stride + offsetof(block_q6_K, scales));
        for (int k = 0; k < 16; k++) sc[k][r] = LL_ZMM ? (uint32_t)(int32_t)s[k] : (uint16_t)s[k] * 0x10001u;
        for (int j = 0; j < 8; j++) scp[j][r] = (uint16_t)s[2 * j] | (uint32_t)(uint16_t)s[2 * j + 1] << 16;
    }
    for (int k = 0; k < 16; k++) o.sc[k] = v_load(sc[k]);
    for (int j = 0; j < 8; j++) o.scp[j] = v_load(scp[j]);
    o.d = v_halves(blk + offsetof(block_q6_K, d), stride);
}

// NT tokens over a group of rows unpacked in u[0..nb): each sub-block's
// exact dot, scaled, into the block's sum s; the offset term from the
// tokens' bsums; then dot_tiled's two float steps.
template <int NT>
inline void q6_k_tile_rows(int64_t nb, const Q6KRows* u, const uint8_t* x, size_t x_stride, float* out, size_t out_stride) {
    const block_q8_K* y[NT];
    VecF acc[NT];
    for (int t = 0; t < NT; t++) {
        y[t] = reinterpret_cast<const block_q8_K*>(x + t * x_stride);
#if LL_ZMM
        acc[t] = _mm512_setzero_ps();
#else
        acc[t] = _mm256_setzero_ps();
#endif
    }
    for (int64_t i = 0; i < nb; i++) {
        const Q6KRows& b = u[i];
        VecI s[NT];
        _Pragma("GCC unroll 8")
        for (int v = 0; v < 8; v++) {
            _Pragma("GCC unroll 2")
            for (int h = 0; h < 2; h++) {  // sub-block 2v + h: dwords 4h..4h + 3
                _Pragma("GCC unroll 4")
                for (int t = 0; t < NT; t++) {
                    const uint8_t* q = reinterpret_cast<const uint8_t*>(y[t][i].qs) + 32 * v + 16 * h;
#if LL_ZMM
                    __m512i a = _mm512_setzero_si512();
                    _Pragma("GCC unroll 4")
                    for (int m = 0; m < 4; m++) a = _mm512_dpbusd_epi32(a, b.w[v][4 * h + m], _mm512_set1_epi32((int)load_u32(q + 4 * m)));
                    const __m512i sv = _mm512_mullo_epi32(a, b.sc[2 * v + h]);
#else
                    // int16 pair sums of at most 2 * 2 * 63 * 128 = 32256
                    const __m256i p0 = _mm256_add_epi16(_mm256_maddubs_epi16(b.w[v][4 * h], _mm256_set1_epi32((int)load_u32(q))),
                                                        _mm256_maddubs_epi16(b.w[v][4 * h + 1], _mm256_set1_epi32((int)load_u32(q + 4))));
                    const __m256i p1 = _mm256_add_epi16(_mm256_maddubs_epi16(b.w[v][4 * h + 2], _mm256_set1_epi32((int)load_u32(q + 8))),
                                                        _mm256_maddubs_epi16(b.w[v][4 * h + 3], _mm256_set1_epi32((int)load_u32(q + 12))));
                    const __m256i sv = _mm256_add_epi32(_mm256_madd_epi16(p0, b.sc[2 * v + h]), _mm256_madd_epi16(p1, b.sc[2 * v + h]));
#endif
#if LL_ZMM
                    s[t] = v + h ? _mm512_add_epi32(s[t], sv) : sv;
#else
                    s[t] = v + h ? _mm256_add_epi32(s[t], sv) : sv;
#endif
                }
            }
        }
        _Pragma("GCC unroll 4")
        for (int t = 0; t < NT; t++) {
            const uint8_t* bs = reinterpret_cast<const uint8_t*>(y[t][i].bsums);
#if LL_ZMM
            __m512i off = _mm512_setzero_si512();
            for (int j = 0; j < 8; j++) off = _mm512_add_epi32(off, _mm512_madd_epi16(b.scp[j], _mm512_set1_epi32((int)load_u32(bs + 4 * j))));
            const __m512i st = _mm512_sub_epi32(s[t], _mm512_slli_epi32(off, 5));
            acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(b.d, _mm512_cvtepi32_ps(st)), _mm512_set1_ps(y[t][i].d), acc[t]);
#else
            __m256i off = _mm256_setzero_si256();
            for (int j = 0; j < 8; j++) off = _mm256_add_epi32(off, _mm256_madd_epi16(b.scp[j], _mm256_set1_epi32((int)load_u32(bs + 4 * j))));
            const __m256i st = _mm256_sub_epi32(s[t], _mm256_slli_epi32(off, 5));
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(b.d, _mm256_cvtepi32_ps(st)), _mm256_set1_ps(y[t][i].d), acc[t]);
#endif
        }
    }
    for (int t = 0; t < NT; t++) {
#if LL_ZMM
        _mm512_storeu_ps(out + t * out_stride, acc[t]);
#else
        _mm256_storeu_ps(out + t * out_stride, acc[t]);
#endif
    }
}

// KernelSet::dot_tile_tiled for Q6_K: full groups of rows here, the rest
// through q6_k_rest one token at a time.
void dot_tile_q6_k(int64_t n, int64_t nrows, const void* w, size_t stride, const void* x, size_t x_stride, int64_t n_tok, float* y,
                   size_t y_stride) {
    const uint8_t* p = static_cast<const uint8_t*>(w);
    const uint8_t* xb = static_cast<const uint8_t*>(x);
    const int64_t rows = nrows / Q6K_ROWS * Q6K_ROWS, nb = n / QK_K;
    thread_local std::vector<Q6KRows> u;
    u.resize((size_t)nb);
    for (int64_t r = 0; r < rows; r += Q6K_ROWS) {
        for (int64_t i = 0; i < nb; i++) unpack_q6_k_rows(p + r * stride + i * sizeof(block_q6_K), stride, u[i]);
        int64_t t = 0;
        for (; t + 4 <= n_tok; t += 4) q6_k_tile_rows<4>(nb, u.data(), xb + t * x_stride, x_stride, y + t * y_stride + r, y_stride);
        const uint8_t* xt = xb + t * x_stride;
        float* yt = y + t * y_stride + r;
        switch (n_tok - t) {
            case 3: q6_k_tile_rows<3>(nb, u.data(), xt, x_stride, yt, y_stride); break;
            case 2: q6_k_tile_rows<2>(nb, u.data(), xt, x_stride, yt, y_stride); break;
            case 1: q6_k_tile_rows<1>(nb, u.data(), xt, x_stride, yt, y_stride); break;
            default: break;
        }
    }
    if (rows < nrows)
        for (int64_t t = 0; t < n_tok; t++) q6_k_rest(n, nrows - rows, p + rows * stride, stride, xb + t * x_stride, y + t * y_stride + rows);
}

// ---- Q4_1, Q5_0, Q5_1, Q8_0: what legacy.cpp's dot_tile gives ----
//
// ggml's vec_dot for these keeps eight float lanes per row: lane j is the
// chain of d_w * d_y times the exact sum over weight bytes 4j..4j+3 with the
// activation's, to which Q4_1 / Q5_1 add the chain of m_w * s_y after the
// horizontal sum.  Here int32 lane l of register j holds row l's lane j: the
// unsigned weights u (u - 16 the Q5_0 weight, u - 128 the Q8_0 one) take the
// exact sums by VPDPBUSD, started at -offset * (sum of the activation bytes),
// and each row's eight chains meet in hsum_ggml's order across registers.

dot_tile_fn legacy_rest[TYPE_COUNT] = {};  // legacy.cpp's dot_tile: the rows these leave, long rows

#if LL_ZMM
constexpr int LEGACY_ROWS = 16, LEGACY_TOKS = 2;  // two tokens: sixteen chains plus their scales fill the registers

struct alignas(64) LegacyRows16 {
    __m512i w[8];  // [j], int32 lane l: u of weight bytes 4j..4j+3 of row l
    __m512 d, m;   // the rows' scales and (Q4_1 / Q5_1) mins
};

template <int T> struct Legacy;
template <> struct Legacy<TYPE_Q4_1> { typedef block_q4_1 W; typedef block_q8_1 Y; enum { offset = 0, min = 1 }; };
template <> struct Legacy<TYPE_Q5_0> { typedef block_q5_0 W; typedef block_q8_0 Y; enum { offset = 16, min = 0 }; };
template <> struct Legacy<TYPE_Q5_1> { typedef block_q5_1 W; typedef block_q8_1 Y; enum { offset = 0, min = 1 }; };
template <> struct Legacy<TYPE_Q8_0> { typedef block_q8_0 W; typedef block_q8_0 Y; enum { offset = 128, min = 0 }; };

// Sixteen rows' nb blocks: each row's values unpacked to bytes row by row
// (one stream at a time, and the same row of the next sixteen prefetched:
// sixteen rows read block by block outran the hardware prefetchers), then
// each block's sixteen byte rows transposed a 16-byte half at a time.
template <int T>
inline void unpack_legacy_rows16(int64_t nb, const uint8_t* p, size_t stride, LegacyRows16* o) {
    typedef typename Legacy<T>::W W;
    thread_local std::vector<Bytes32> bytes;  // [nb r + i]
    bytes.resize((size_t)(LEGACY_ROWS * nb));
    for (int r = 0; r < LEGACY_ROWS; r++) {
        const W* b = reinterpret_cast<const W*>(p + r * stride);
        for (int64_t i = 0; i < nb; i++) {
            _mm_prefetch(reinterpret_cast<const char*>(b + i) + LEGACY_ROWS * stride, _MM_HINT_T0);
            __m256i u;
            if constexpr (T == TYPE_Q8_0) u = _mm256_xor_si256(loadu256(b[i].qs), _mm256_set1_epi8((char)0x80));
            else if constexpr (T == TYPE_Q4_1) u = nibbles32(b[i].qs);
            else u = q5_values(b[i].qs, b[i].qh);
            _mm256_store_si256(reinterpret_cast<__m256i*>(bytes[nb * r + i].b), u);
        }
    }
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t* bi = bytes[i].b;
        const size_t row = 32 * nb;
        for (int h = 0; h < 2; h++) {
            __m512i v[4];
            for (int q = 0; q < 4; q++) v[q] = rows4_128(bi + row * q + 16 * h, 4 * row);
            transpose_lanes4x4(v, o[i].w + 4 * h);
        }
        o[i].d = halves16(p + i * sizeof(W) + offsetof(W, d), stride);
        if constexpr (Legacy<T>::min) o[i].m = halves16(p + i * sizeof(W) + offsetof(W, m), stride);
    }
}

// A token's activation blocks as the tile reads them: d_y, s_y (Q8_1), and
// -offset * (sum of bytes 4j..4j+3) per block.
struct LegacyToken {
    std::vector<float> d, s;
    std::vector<int32_t> start;  // [8 i + j]
};

template <int T>
void prep_legacy_token(const uint8_t* x, int64_t nb, LegacyToken& p) {
    typedef typename Legacy<T>::Y Y;
    const Y* y = reinterpret_cast<const Y*>(x);
    p.d.resize(nb);
    p.s.resize(nb);
    p.start.resize(8 * nb);
    for (int64_t i = 0; i < nb; i++) {
        p.d[i] = h2f(y[i].d);
        if constexpr (Legacy<T>::min) p.s[i] = h2f(y[i].s);
        const __m256i sums = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), loadu256(y[i].qs)), _mm256_set1_epi16(1));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(&p.start[8 * i]), _mm256_mullo_epi32(sums, _mm256_set1_epi32(-(int)Legacy<T>::offset)));
    }
}

template <int T, int NT>
inline void legacy_tile_rows16(int64_t nb, const LegacyRows16* u, const uint8_t* const* yq, const LegacyToken* const* tok, float* out,
                               size_t out_stride) {
    typedef typename Legacy<T>::Y Y;
    __m512 acc[NT][8], macc[NT];
    _Pragma("GCC unroll 2")
    for (int t = 0; t < NT; t++) {
        macc[t] = _mm512_setzero_ps();
        _Pragma("GCC unroll 8")
        for (int j = 0; j < 8; j++) acc[t][j] = _mm512_setzero_ps();
    }
    for (int64_t i = 0; i < nb; i++) {
        const LegacyRows16& b = u[i];
        _Pragma("GCC unroll 2")
        for (int t = 0; t < NT; t++) {
            const uint8_t* q = reinterpret_cast<const uint8_t*>(reinterpret_cast<const Y*>(yq[t])[i].qs);
            const int32_t* start = tok[t]->start.data() + 8 * i;
            const __m512 dd = _mm512_mul_ps(b.d, _mm512_set1_ps(tok[t]->d[i]));  // d_w * d_y, as dot's row_scales
            if constexpr (Legacy<T>::min) macc[t] = _mm512_fmadd_ps(b.m, _mm512_set1_ps(tok[t]->s[i]), macc[t]);
            _Pragma("GCC unroll 8")
            for (int j = 0; j < 8; j++) {
                const __m512i s0 = Legacy<T>::offset ? _mm512_set1_epi32(start[j]) : _mm512_setzero_si512();
                const __m512i s = _mm512_dpbusd_epi32(s0, b.w[j], _mm512_set1_epi32((int)load_u32(q + 4 * j)));
                acc[t][j] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(s), acc[t][j]);
            }
        }
    }
    _Pragma("GCC unroll 2")
    for (int t = 0; t < NT; t++) {
        const __m512 sum = hsum_lane_registers(acc[t]);
        // the min chain (zero but for Q4_1 / Q5_1) added as dot_q45_pass adds it; Q8_0's dot adds nothing
        _mm512_storeu_ps(out + t * out_stride, T != TYPE_Q8_0 ? _mm512_add_ps(sum, macc[t]) : sum);
    }
}

// KernelSet::dot_tile for these types: full groups of sixteen rows here,
// the rest (and rows longer than a segment) through legacy.cpp's.
template <int T>
void dot_tile_legacy(int64_t n, int64_t nrows, const void* w, size_t stride, const void* x, size_t x_stride, int64_t n_tok, float* y,
                     size_t y_stride) {
    const uint8_t* p = static_cast<const uint8_t*>(w);
    const uint8_t* xb = static_cast<const uint8_t*>(x);
    // A decode step of up to four sequences stays with legacy.cpp's tile,
    // which unpacks as it computes: here the unpacking, which reads the
    // weights from memory, is a phase of its own, and with four tokens or
    // fewer to share it that came out slower (SmolLM2, 4 sequences: 310 vs
    // 285 tok/s; 8 sequences: 366 vs 389).
    const int64_t nb = n / QK, rows = nb > SEG || n_tok <= 4 ? 0 : nrows / LEGACY_ROWS * LEGACY_ROWS;
    if (rows) {
        // the whole tile into L2 at once (ops.cpp keeps tiles within it): its rows'
        // lines are fetched side by side rather than a row's worth at a time
        // (SmolLM2, 8 sequences a step: +5%; prompts: no difference)
        for (int64_t r = 0; r < nrows; r++)
            for (size_t o = 0; o < (size_t)nb * sizeof(typename Legacy<T>::W); o += 64)
                _mm_prefetch(reinterpret_cast<const char*>(p + r * stride + o), _MM_HINT_T1);
        thread_local std::vector<LegacyToken> toks;
        thread_local std::vector<LegacyRows16> u;
        if ((int64_t)toks.size() < n_tok) toks.resize(n_tok);
        for (int64_t t = 0; t < n_tok; t++) prep_legacy_token<T>(xb + t * x_stride, nb, toks[t]);
        u.resize((size_t)nb);
        for (int64_t r = 0; r < rows; r += LEGACY_ROWS) {
            unpack_legacy_rows16<T>(nb, p + r * stride, stride, u.data());
            for (int64_t t = 0; t < n_tok; t += LEGACY_TOKS) {
                const uint8_t* yq[LEGACY_TOKS] = {xb + t * x_stride, xb + (t + 1) * x_stride};
                const LegacyToken* tk[LEGACY_TOKS] = {&toks[t], &toks[t + 1 < n_tok ? t + 1 : t]};
                if (t + 1 < n_tok) legacy_tile_rows16<T, 2>(nb, u.data(), yq, tk, y + t * y_stride + r, y_stride);
                else legacy_tile_rows16<T, 1>(nb, u.data(), yq, tk, y + t * y_stride + r, y_stride);
            }
        }
    }
    if (rows < nrows) legacy_rest[T](n, nrows - rows, p + rows * stride, stride, x, x_stride, n_tok, y + rows, y_stride);
}
#endif

}  // namespace

// After repack's registration, whose tile serves what these leave.
void LL_REGISTER(tiles)(KernelSet* ks) {
    if (ks->dot_tile_packed[TYPE_Q4_K]) {
        q4_k_rest = ks->dot_tile_packed[TYPE_Q4_K];
        ks->dot_tile_packed[TYPE_Q4_K] = dot_tile_q4_k;
    }
    if (ks->dot_tiled[TYPE_Q6_K]) {
        q6_k_rest = ks->dot_tiled[TYPE_Q6_K];
        ks->dot_tile_tiled[TYPE_Q6_K] = dot_tile_q6_k;
    }
#if LL_ZMM
    const int legacy_types[] = {TYPE_Q4_1, TYPE_Q5_0, TYPE_Q5_1, TYPE_Q8_0};
    const dot_tile_fn legacy_tiles[] = {dot_tile_legacy<TYPE_Q4_1>, dot_tile_legacy<TYPE_Q5_0>, dot_tile_legacy<TYPE_Q5_1>,
                                        dot_tile_legacy<TYPE_Q8_0>};
    for (int i = 0; i < 4; i++)
        if (ks->dot_tile[legacy_types[i]]) {
            legacy_rest[legacy_types[i]] = ks->dot_tile[legacy_types[i]];
            ks->dot_tile[legacy_types[i]] = legacy_tiles[i];
        }
#endif
}

}  // namespace ll
