// Batch tiles that hold one weight row per int32 lane (transpose.h): a
// block of rows is unpacked and transposed once per call, and every token
// then takes each row's exact integer sums straight from its lanes with one
// multiply-accumulate per broadcast activation dword, where the row-major
// tiles spend about as many instructions on horizontal reductions and
// transposes per row and token as on the products.  The float steps are the
// replaced kernels' own, lane by lane, so every output is unchanged; rows
// short of a full group and tokens outside the gemm's groups of four go to
// the kernels registered before (repack.cpp).
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

// A super-block of sixteen rows, unpacked once per call for every token:
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

}  // namespace

// After repack's registration, whose tile serves what these leave.
void LL_REGISTER(tiles)(KernelSet* ks) {
    if (!ks->dot_tile_packed[TYPE_Q4_K]) return;
    q4_k_rest = ks->dot_tile_packed[TYPE_Q4_K];
    ks->dot_tile_packed[TYPE_Q4_K] = dot_tile_q4_k;
}

}  // namespace ll
