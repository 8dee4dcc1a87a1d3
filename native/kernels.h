// Leaf kernels and the per-ISA tables that hold them.
//
// Every ISA (scalar, avx2, avx512, neon, dotprod) fills a KernelSet with the
// kernels it has; missing entries fall back to the scalar reference.  The
// drivers in ops.cpp (threading, activation quantization, tiling) only call
// through these pointers, so they are compiled once for the baseline ISA.
#pragma once

#include <cstddef>
#include <cstdint>

#include "blocks.h"

namespace ll {

// Dequantize n weights (a multiple of the block size) from src into dst.
typedef void (*dequant_row_fn)(const void* src, float* dst, int64_t n);

// Quantize n activations (a multiple of the block size) into an activation
// format (Q8_0, Q8_1 or Q8_K), or into F16 (any n: the rows of the F16 KV cache).
typedef void (*quant_row_fn)(const float* src, void* dst, int64_t n);

// y[r] = dot(weight row r, x) for r in [0, nrows).  Weight rows start
// row_stride bytes apart; x holds n activations already converted to the weight
// type's vec_dot_type (plain float32 for F32/F16/BF16 weights).
typedef void (*dot_rows_fn)(int64_t n, int64_t nrows, const void* w, size_t row_stride, const void* x, float* y);

// Several activation rows at once (a prompt batch): y[t * y_stride + r] =
// dot(weight row r, activation row t) for t < n_tok, activation rows x_stride
// bytes apart.  Each output is bit-identical to dot_rows_fn's: the same lanes
// and float chains, but a weight block is unpacked once for several tokens.
typedef void (*dot_tile_fn)(int64_t n, int64_t nrows, const void* w, size_t row_stride, const void* x, size_t x_stride,
                            int64_t n_tok, float* y, size_t y_stride);

// Attention of one query over n cached positions: K and V rows of hd values of
// the cache type, k_stride / v_stride elements apart, the first at cache cell
// `first`; scratch holds 2n + 128 + 64hd floats; the result goes to out[hd].  For an F16
// cache the arithmetic is ggml's (flash attention off, llama.cpp's default),
// so logits agree with llama.cpp: its padded KV range (ggml_math.h), q and the softmax weights
// rounded to fp16, ggml's expf and its fp16 dot-product summation order.
// `batch` says the query is one of a batch of two or more tokens: llama.cpp
// then computes K·q and V·weights with llamafile's tinyBLAS (see ggml_math.h),
// whose summation order differs from the one-token path's ggml_vec_dot_f16.
typedef void (*attn_fn)(int64_t n, int64_t hd, const float* q, const void* k, size_t k_stride, const void* v, size_t v_stride,
                        float scale, int64_t first, bool batch, float* scratch, float* out);

// SwiGLU's vector part: gate[i] = silu(gate[i]) * up[i] for i < n, n a
// multiple of the set's `lanes`, as ggml_vec_swiglu_f32 computes its whole
// vectors (ggml_silu's vector lanes, ggml_math.h); the caller does a row's tail.
typedef void (*swiglu_fn)(int64_t n, float* gate, const float* up);

// The wrapping sum of n 64-bit words: the inner loop of the bandwidth probe
// (ops.h stream_read), which must read as fast as the widest loads allow, or
// the probe measures its own adds rather than the memory.
typedef uint64_t (*sum_words_fn)(const uint64_t* p, size_t n);

struct KernelSet {
    const char* name;
    // ggml's float vector width in the llama.cpp build whose arithmetic this
    // set reproduces: 16 (its AVX-512 build, which wrote the reference
    // logits: the avx512, avx2 and scalar paths) or 8 (its AVX2 build: the
    // NEON paths).  The float sums that depend on it (tinyBLAS and vec_dot
    // for F32 weights and the F16 KV cache, softmax, SiLU's vector groups)
    // follow it; the scalar registrations read it.
    int lanes;
    dequant_row_fn dequant[TYPE_COUNT];
    dot_rows_fn dot[TYPE_COUNT];
    // llama.cpp's CPU backend repacks some weight types into interleaved
    // blocks when the tensor has a multiple of 8 rows (on AVX2: Q4_0, Q4_K) and
    // multiplies them with its own kernels, which round differently from its
    // vec_dot ones: a gemm for the batch rows in full groups of four (batches
    // of more than three rows) and a gemv for the others.  Null where a type
    // is not repacked; an ISA without them uses dot (they are not filled in
    // from the scalar set).
    dot_rows_fn dot_gemv[TYPE_COUNT];
    dot_rows_fn dot_gemm[TYPE_COUNT];
    // One token against the weights' interleaved copy (blocks.h
    // interleave_rows; w is a group's first byte, nrows a multiple of
    // interleave_group, stride the row bytes), the same floats as dot_gemv
    // on the rows where the type is repacked, else as dot.  Where it is set,
    // a layer keeps such a copy of the weights of that type (decode then
    // streams one run of memory per group of rows); null: no copy, the
    // mapped rows are read.  Not filled in from the scalar set: its reference
    // is dot_gemv or dot on the rows.
    dot_rows_fn dot_gemv_il[TYPE_COUNT];
    // Whole batches against the interleaved copy, every output as dot gives
    // it one token at a time.  Null where there is none (matmul takes a
    // tile's rows back to row order for the kernels that read rows); not
    // filled in.
    dot_tile_fn dot_tile_il[TYPE_COUNT];
    // Whole batches through the repacked kernels, each token as matmul()
    // assigns it to dot_gemm or dot_gemv (bit for bit), a block unpacked once
    // for several tokens.  Null where there is none (gemm / gemv per token);
    // not filled in.
    dot_tile_fn dot_tile_packed[TYPE_COUNT];
    // llama.cpp's tiled k-quant matmul, which replaces vec_dot for batches of
    // 8 or more rows on weights it does not repack: per super-block the exact
    // integer sums s = sum(scale * dot) and m = sum(min * bsum), r = d * s -
    // dmin * m (a product, then a fused multiply-subtract), and acc += r *
    // d_act fused.  Null where there is none (dot is used); not filled in from
    // the scalar set either.
    dot_rows_fn dot_tiled[TYPE_COUNT];
    // Whole batches through dot_tiled's arithmetic, every output as dot_tiled
    // gives it one token at a time.  Null where there is none (dot_tiled per
    // token); not filled in.
    dot_tile_fn dot_tile_tiled[TYPE_COUNT];
    // llamafile's tinyBLAS, which ggml's mul_mat uses for F32 weights when the
    // batch has two or more rows, k is a multiple of `lanes` and the row count
    // a multiple of 4 (see ggml_math.h).  Null where unused; not filled in.
    dot_rows_fn dot_sgemm[TYPE_COUNT];
    // Batches multiplied where `dot` would be (not repacked, tiled or
    // tinyBLAS): the same floats, fewer instructions.  Null where there is
    // none (dot is used per token); not filled in from the scalar set.
    dot_tile_fn dot_tile[TYPE_COUNT];
    quant_row_fn quant_act[TYPE_COUNT];  // indexed by activation type: Q8_0, Q8_1, Q8_K; and F16
    attn_fn attn[TYPE_COUNT];            // indexed by KV cache type: F16, F32
    swiglu_fn swiglu;
    sum_words_fn sum_words;
};

// Registration functions, one per (type family, ISA).  Each sets only the
// entries it implements.  Families: "legacy" = F32, F16, BF16, Q4_0, Q4_1, Q5_0,
// Q5_1, Q8_0 and the Q8_0/Q8_1 activation quantizers; "kquants" = Q2_K..Q6_K and
// the Q8_K activation quantizer; "attn" = attention over the KV cache and
// SwiGLU (both built on ggml's vector expf).  The x86
// ISAs have two more: "repack" = dot_gemv, dot_gemm and dot_tile_packed for the
// weights llama.cpp's x86 build repacks (Q4_0, Q4_K), whose references the
// scalar set registers with legacy and kquants; and "tiles", registered after
// it, = batch tiles that hold one weight row per lane and hand the rows and
// tokens they leave to the entries registered before (x86/tiles.cpp); and
// "lanes16" = dot_gemv_il and dot_tile_il for the x16 copies of the 32-weight
// formats (x86/lanes16.cpp; avx512 only).
#define LL_DECLARE_FAMILIES(isa)             \
    void register_legacy_##isa(KernelSet* ks);  \
    void register_kquants_##isa(KernelSet* ks); \
    void register_attn_##isa(KernelSet* ks);
LL_DECLARE_FAMILIES(scalar)
#if defined(__x86_64__) || defined(_M_X64)
LL_DECLARE_FAMILIES(avx2)
LL_DECLARE_FAMILIES(avx512)
void register_repack_avx2(KernelSet* ks);
void register_repack_avx512(KernelSet* ks);
void register_tiles_avx2(KernelSet* ks);
void register_tiles_avx512(KernelSet* ks);
void register_lanes16_avx2(KernelSet* ks);
void register_lanes16_avx512(KernelSet* ks);
#endif
#if defined(__aarch64__)
LL_DECLARE_FAMILIES(neon)
LL_DECLARE_FAMILIES(dotprod)
#endif

// ---- dispatch (dispatch.cpp) ----
// The scalar reference set at a lane width (8 or 16), always complete.
const KernelSet& scalar_kernels(int lanes);
// Names of the ISA paths this CPU can run, best first, always ending in "scalar".
int available_isas(const char** names, int max_names);
// Kernel set for a named ISA (nullptr if unknown or not supported here).
const KernelSet* kernels_for_isa(const char* name);
// The active set: LLAMALOCAL_ISA if set (and supported), else the best path.
const KernelSet& active_kernels();
// Returns false (and changes nothing) when the name is unknown or unsupported.
bool set_active_isa(const char* name);
// CPU features as name/flag pairs, for `llamalocal sysinfo`.
int cpu_features(const char** names, bool* flags, int max);

}  // namespace ll

// Per-ISA sources (native/x86/*.cpp, native/arm/*.cpp) are compiled once per
// ISA with LL_ISA set to the suffix; LL_REGISTER(legacy) names that build's
// registration function.
#define LL_CAT2(a, b) a##_##b
#define LL_CAT(a, b) LL_CAT2(a, b)
#define LL_REGISTER(family) LL_CAT(register_##family, LL_ISA)
