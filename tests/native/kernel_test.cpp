// Holds every SIMD kernel to the scalar reference, per block format, on the
// CPU it runs on: all ISA paths this CPU supports (x86: avx2, avx512; AArch64
// under qemu: neon, dotprod).  The random blocks come from a fixed-seed
// generator, so x86 and AArch64 runs test the same data (the printed digest
// shows it).  Output ends with "N passed, N failed"; exit status 1 on failure.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "kernels.h"

using namespace ll;

namespace {

struct Rng {
    uint64_t s;
    uint64_t next() {  // splitmix64
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    float uniform() { return (next() >> 40) * (1.0f / 16777216.0f); }  // [0, 1)
    float normal() {
        float u = uniform() + 1e-7f, v = uniform();
        return std::sqrt(-2.0f * std::log(u)) * std::cos(6.2831853f * v);
    }
};

uint64_t g_digest = 1469598103934665603ull;  // FNV-1a over every generated input byte
void digest(const void* p, size_t n) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; i++) g_digest = (g_digest ^ b[i]) * 1099511628211ull;
}

int g_passed = 0, g_failed = 0;
void check(bool ok, const char* isa, const char* type, const char* what, int64_t k, int64_t rows, const char* detail) {
    if (ok) {
        g_passed++;
    } else {
        g_failed++;
        std::printf("FAIL %s %s %s k=%lld rows=%lld: %s\n", isa, type, what, (long long)k, (long long)rows, detail);
    }
}

// Scale fields (fp16 offsets inside a block) get finite values of the given
// magnitude; every other byte is random, which covers all quant values.
struct ScaleFields { int offsets[2]; int count; };
ScaleFields scale_fields(int t) {
    switch (t) {
        case TYPE_Q4_0: case TYPE_Q5_0: case TYPE_Q8_0: return {{0, 0}, 1};
        case TYPE_Q4_1: case TYPE_Q5_1: case TYPE_Q4_K: case TYPE_Q5_K: return {{0, 2}, 2};
        case TYPE_Q2_K: return {{80, 82}, 2};
        case TYPE_Q3_K: return {{108, 0}, 1};
        case TYPE_Q6_K: return {{208, 0}, 1};
        default: return {{0, 0}, 0};
    }
}

enum ScaleMode { SCALES_NORMAL, SCALES_ZERO, SCALES_TINY, SCALES_HUGE };

std::vector<uint8_t> random_rows(Rng& rng, int t, int64_t k, int64_t rows, ScaleMode mode) {
    const size_t rb = row_bytes(t, k);
    std::vector<uint8_t> buf(rb * rows);
    for (auto& b : buf) b = (uint8_t)rng.next();
    const int64_t n_values = (int64_t)buf.size() / TYPE_TRAITS[t].type_size;
    auto scale = [&]() -> float {
        switch (mode) {
            case SCALES_ZERO: return 0.0f;
            case SCALES_TINY: return 6.1e-5f * (0.5f + rng.uniform());   // near fp16's smallest normal
            case SCALES_HUGE: return 30000.0f * (0.5f + rng.uniform());  // near fp16's largest
            default: return 0.02f * (0.1f + rng.uniform()) * (rng.uniform() < 0.5f ? -1.0f : 1.0f);
        }
    };
    if (t == TYPE_F32) {
        float* f = reinterpret_cast<float*>(buf.data());
        for (int64_t i = 0; i < n_values; i++) f[i] = mode == SCALES_ZERO ? 0.0f : rng.normal();
    } else if (t == TYPE_F16) {
        half_t* h = reinterpret_cast<half_t*>(buf.data());
        for (int64_t i = 0; i < n_values; i++) h[i] = fp32_to_fp16(mode == SCALES_ZERO ? 0.0f : rng.normal());
    } else if (t == TYPE_BF16) {
        bf16_t* h = reinterpret_cast<bf16_t*>(buf.data());
        for (int64_t i = 0; i < n_values; i++) h[i] = (bf16_t)(fp32_to_bits(mode == SCALES_ZERO ? 0.0f : rng.normal()) >> 16);
    } else {
        const ScaleFields sf = scale_fields(t);
        const int ts = TYPE_TRAITS[t].type_size;
        for (int64_t b = 0; b < n_values; b++)
            for (int f = 0; f < sf.count; f++) {
                const half_t h = fp32_to_fp16(scale());
                std::memcpy(&buf[b * ts + sf.offsets[f]], &h, 2);
            }
    }
    digest(buf.data(), buf.size());
    return buf;
}

std::vector<float> random_activations(Rng& rng, int64_t k, bool outliers) {
    std::vector<float> x(k);
    for (auto& v : x) v = rng.normal();
    if (outliers)
        for (int64_t i = 0; i < k; i += 37) x[i] *= 50.0f;
    digest(x.data(), x.size() * sizeof(float));
    return x;
}

#if defined(__x86_64__)
constexpr bool SAME_ORDER_DOTS = true;
#else
constexpr bool SAME_ORDER_DOTS = false;
#endif

void test_type(const KernelSet& ref, const KernelSet& ks, int t, Rng& rng) {
    const TypeTraits& tt = TYPE_TRAITS[t];
    const int vdt = tt.vec_dot_type;
    const int64_t bs = tt.block_size == 1 ? QK : tt.block_size;
    // 16448: the 32-weight formats past one activation segment (x86 SEG = 512 blocks)
    const int64_t ks_list[] = {bs, 3 * bs, 4096 + (bs == QK_K ? 0 : 96), 16 * bs + (t == TYPE_F32 || t == TYPE_F16 || t == TYPE_BF16 ? 7 : 0),
                               tt.block_size == QK ? 16448 : 0};
    const int64_t rows_list[] = {1, 3, 17, 48};  // 48: whole groups of eight and of sixteen (dot_gemv_il)
    const ScaleMode modes[] = {SCALES_NORMAL, SCALES_ZERO, SCALES_TINY, SCALES_HUGE};
    char detail[256];
    for (int64_t k : ks_list) {
        if (k == 0) continue;
        for (int64_t rows : rows_list) {
            for (ScaleMode mode : modes) {
                std::vector<uint8_t> w = random_rows(rng, t, k, rows, mode);
                const size_t rb = row_bytes(t, k);

                // dequantize: same floats (a fused multiply-add may differ by an ulp)
                std::vector<float> d_ref(k * rows), d_isa(k * rows);
                for (int64_t r = 0; r < rows; r++) {
                    ref.dequant[t](w.data() + r * rb, d_ref.data() + r * k, k);
                    ks.dequant[t](w.data() + r * rb, d_isa.data() + r * k, k);
                }
                double worst = 0;
                for (int64_t i = 0; i < k * rows; i++) {
                    const double e = std::fabs((double)d_ref[i] - d_isa[i]) / (std::fabs((double)d_ref[i]) + 1e-30);
                    if (!(e <= worst)) worst = e;  // NaN-safe
                }
                std::snprintf(detail, sizeof detail, "max relative error %.3g", worst);
                check(worst <= 2e-7, ks.name, tt.name, "dequant", k, rows, detail);

                // dot products against the same converted activations
                const std::vector<float> x = random_activations(rng, k, mode == SCALES_HUGE);
                std::vector<uint8_t> xq;
                std::vector<float> x_deq(k);
                if (vdt == TYPE_F32) {
                    xq.assign(reinterpret_cast<const uint8_t*>(x.data()), reinterpret_cast<const uint8_t*>(x.data() + k));
                    x_deq = x;
                } else {
                    xq.resize(row_bytes(vdt, k));
                    ref.quant_act[vdt](x.data(), xq.data(), k);
                    ref.dequant[vdt](xq.data(), x_deq.data(), k);
                }
                std::vector<float> y_ref(rows), y_isa(rows);
                ref.dot[t](k, rows, w.data(), rb, xq.data(), y_ref.data());
                ks.dot[t](k, rows, w.data(), rb, xq.data(), y_isa.data());
                bool ok = true;
                double worst_rel = 0;
                for (int64_t r = 0; r < rows; r++) {
                    double mag = 0;  // sum of |terms|: the scale of float rounding error
                    for (int64_t i = 0; i < k; i++) mag += std::fabs((double)d_ref[r * k + i] * x_deq[i]);
                    const double e = std::fabs((double)y_ref[r] - y_isa[r]);
                    const double rel = e / (mag + 1e-30);
                    if (!(e <= 2e-5 * mag + 1e-30)) ok = false;
                    if (rel > worst_rel) worst_rel = rel;
                }
                // The x86 kernels sum in the reference's int32 lanes and float
                // chains (llama.cpp's x86 order): bit-identical, except F16/BF16
                // weights, whose dots follow no llama.cpp kernel.  NEON sums in
                // its own lanes: within float rounding.
                int64_t n_diff = 0;
                for (int64_t r = 0; r < rows; r++) n_diff += std::memcmp(&y_ref[r], &y_isa[r], sizeof(float)) != 0;
                if (SAME_ORDER_DOTS && t != TYPE_F16 && t != TYPE_BF16) ok = ok && n_diff == 0;
                std::snprintf(detail, sizeof detail, "max error / sum|terms| = %.3g, %lld of %lld outputs differ", worst_rel,
                              (long long)n_diff, (long long)rows);
                check(ok, ks.name, tt.name, "dot", k, rows, detail);

                // llama.cpp's kernels for repacked weights, its tiled k-quant kernel and
                // tinyBLAS: the same integer sums and float steps as the scalar
                // reference, so bit-identical
                const dot_rows_fn packed[4][2] = {{ref.dot_gemv[t], ks.dot_gemv[t]}, {ref.dot_gemm[t], ks.dot_gemm[t]},
                                                  {ref.dot_tiled[t], ks.dot_tiled[t]}, {ref.dot_sgemm[t], ks.dot_sgemm[t]}};
                const char* packed_name[4] = {"dot_gemv", "dot_gemm", "dot_tiled", "dot_sgemm"};
                for (int g = 0; g < 4; g++) {
                    if (!packed[g][1]) continue;  // this ISA multiplies the type with dot only
                    if (g == 3 && k % ks.lanes) continue;  // tinyBLAS takes k in multiples of its lane width only
                    if (!packed[g][0]) {
                        check(false, "scalar", tt.name, "reference missing", k, rows, "no scalar repacked-weight kernel");
                        continue;
                    }
                    packed[g][0](k, rows, w.data(), rb, xq.data(), y_ref.data());
                    packed[g][1](k, rows, w.data(), rb, xq.data(), y_isa.data());
                    int64_t n_diff = 0;
                    for (int64_t r = 0; r < rows; r++) n_diff += std::memcmp(&y_ref[r], &y_isa[r], sizeof(float)) != 0;
                    std::snprintf(detail, sizeof detail, "%lld of %lld outputs differ", (long long)n_diff, (long long)rows);
                    check(n_diff == 0, ks.name, tt.name, packed_name[g], k, rows, detail);
                }

                // the interleaved copy: its gemv is the reference's gemv on the rows
                // (dot where the type is not repacked), its tile that per token
                if (ks.dot_gemv_il[t] && rows % interleave_group(t) == 0) {
                    const dot_rows_fn ref_gemv = ks.dot_gemv[t] ? ref.dot_gemv[t] : ref.dot[t];
                    if (!ref_gemv) {
                        check(false, "scalar", tt.name, "reference missing", k, rows, "no scalar gemv for dot_gemv_il");
                    } else {
                        std::vector<uint8_t> il(w.size()), back(w.size());
                        interleave_rows(t, w.data(), rows, k, il.data());
                        deinterleave_rows(t, il.data(), rows, k, back.data());
                        ref_gemv(k, rows, w.data(), rb, xq.data(), y_ref.data());
                        ks.dot_gemv_il[t](k, rows, il.data(), rb, xq.data(), y_isa.data());
                        int64_t n_diff = 0;
                        for (int64_t r = 0; r < rows; r++) n_diff += std::memcmp(&y_ref[r], &y_isa[r], sizeof(float)) != 0;
                        std::snprintf(detail, sizeof detail, "%lld of %lld outputs differ%s", (long long)n_diff, (long long)rows,
                                      back == w ? "" : "; deinterleave_rows does not invert interleave_rows");
                        check(n_diff == 0 && back == w, ks.name, tt.name, "dot_gemv_il", k, rows, detail);
                        if (ks.dot_tile_il[t]) {
                            const size_t xrb = row_bytes(vdt, k);
                            for (int64_t n_tok : {2, 3, 4, 9}) {
                                std::vector<uint8_t> xs(n_tok * xrb);
                                for (int64_t j = 0; j < n_tok; j++) {
                                    const std::vector<float> xj = random_activations(rng, k, j == 1);
                                    ref.quant_act[vdt](xj.data(), xs.data() + j * xrb, k);
                                }
                                std::vector<float> y_one(n_tok * rows), y_tile(n_tok * rows);
                                for (int64_t j = 0; j < n_tok; j++) ref_gemv(k, rows, w.data(), rb, xs.data() + j * xrb, y_one.data() + j * rows);
                                ks.dot_tile_il[t](k, rows, il.data(), rb, xs.data(), xrb, n_tok, y_tile.data(), rows);
                                n_diff = 0;
                                for (int64_t i = 0; i < n_tok * rows; i++) n_diff += std::memcmp(&y_one[i], &y_tile[i], sizeof(float)) != 0;
                                std::snprintf(detail, sizeof detail, "%lld tokens: %lld of %lld outputs differ", (long long)n_tok,
                                              (long long)n_diff, (long long)(n_tok * rows));
                                check(n_diff == 0, ks.name, tt.name, "dot_tile_il", k, rows, detail);
                            }
                        }
                    }
                }

                // batch tiles: every output as the reference gives it one token at
                // a time: its dot (dot_tile), its tiled k-quant kernel
                // (dot_tile_tiled), or, for the repacked kernels
                // (dot_tile_packed), matmul's rule: the gemm for tokens in full
                // groups of four, the gemv for the rest
                enum { PLAIN, PACKED, TILED };
                for (int kind : {PLAIN, PACKED, TILED}) {
                    const bool packed_tile = kind == PACKED;
                    const dot_tile_fn tile_fn = kind == PACKED ? ks.dot_tile_packed[t] : kind == TILED ? ks.dot_tile_tiled[t] : ks.dot_tile[t];
                    const char* tile_name = kind == PACKED ? "dot_tile_packed" : kind == TILED ? "dot_tile_tiled" : "dot_tile";
                    if (!tile_fn || vdt == TYPE_F32) continue;
                    if (packed_tile && (!ref.dot_gemm[t] || !ref.dot_gemv[t])) {
                        check(false, "scalar", tt.name, "reference missing", k, rows, "no scalar gemm / gemv for the packed tile");
                        continue;
                    }
                    if (kind == TILED && !ref.dot_tiled[t]) {
                        check(false, "scalar", tt.name, "reference missing", k, rows, "no scalar tiled kernel for dot_tile_tiled");
                        continue;
                    }
                    const size_t xrb = row_bytes(vdt, k);
                    for (int64_t n_tok : {1, 3, 6, 9, 18}) {  // 18: past the few-token row order of dot_tile
                        std::vector<uint8_t> xs(n_tok * xrb);
                        for (int64_t j = 0; j < n_tok; j++) {
                            const std::vector<float> xj = random_activations(rng, k, j == 1);
                            ref.quant_act[vdt](xj.data(), xs.data() + j * xrb, k);
                        }
                        std::vector<float> y_one(n_tok * rows), y_tile(n_tok * rows);
                        const int64_t n_gemm = n_tok > 3 ? n_tok - n_tok % 4 : 0;
                        for (int64_t j = 0; j < n_tok; j++) {
                            const dot_rows_fn one = kind == TILED ? ref.dot_tiled[t] : !packed_tile ? ref.dot[t] : j < n_gemm ? ref.dot_gemm[t] : ref.dot_gemv[t];
                            one(k, rows, w.data(), rb, xs.data() + j * xrb, y_one.data() + j * rows);
                        }
                        tile_fn(k, rows, w.data(), rb, xs.data(), xrb, n_tok, y_tile.data(), rows);
                        int64_t n_diff = 0;
                        for (int64_t i = 0; i < n_tok * rows; i++) n_diff += std::memcmp(&y_one[i], &y_tile[i], sizeof(float)) != 0;
                        std::snprintf(detail, sizeof detail, "%lld tokens: %lld of %lld outputs differ", (long long)n_tok, (long long)n_diff,
                                      (long long)(n_tok * rows));
                        check(n_diff == 0, ks.name, tt.name, tile_name, k, rows, detail);
                    }
                }
            }
        }
    }
}

void test_quantizer(const KernelSet& ref, const KernelSet& ks, int vdt, Rng& rng) {
    char detail[256];
    if (!ref.quant_act[vdt] || !ref.dequant[vdt]) {
        check(false, "scalar", TYPE_TRAITS[vdt].name, "reference missing", 0, 0, "no scalar quantizer registered");
        return;
    }
    for (int64_t k : {(int64_t)QK_K, (int64_t)4096, (int64_t)11008}) {
        for (int variant = 0; variant < 3; variant++) {
            std::vector<float> x = random_activations(rng, k, variant == 1);
            if (variant == 2) std::fill(x.begin(), x.begin() + k / 2, 0.0f);  // all-zero blocks
            std::vector<uint8_t> a(row_bytes(vdt, k)), b(row_bytes(vdt, k));
            ref.quant_act[vdt](x.data(), a.data(), k);
            ks.quant_act[vdt](x.data(), b.data(), k);
            // Equal after dequantization up to one step of q (SIMD rounding of
            // exact .5 ties may differ): compare the dequantized values.
            std::vector<float> da(k), db(k);
            ref.dequant[vdt](a.data(), da.data(), k);
            ks.dequant[vdt](b.data(), db.data(), k);
            bool ok = true;
            const int64_t bsz = TYPE_TRAITS[vdt].block_size;
            for (int64_t i = 0; i < k && ok; i++) {
                float amax = 0;
                for (int64_t j = i / bsz * bsz; j < (i / bsz + 1) * bsz; j++) amax = std::fmax(amax, std::fabs(x[j]));
                const float step = amax / 127.0f;
                if (std::fabs(da[i] - db[i]) > 1.01f * step + 1e-30f) ok = false;
            }
            std::snprintf(detail, sizeof detail, "variant %d", variant);
            check(ok, ks.name, TYPE_TRAITS[vdt].name, "quantize", k, 1, detail);
        }
    }
}

// Float rows to F16 (the KV cache's stores), bit for bit: normal, subnormal
// and overflowing halves, exact ties between two halves, zeros, infinities,
// and a row length that leaves a tail.
void test_to_f16(const KernelSet& ref, const KernelSet& ks, Rng& rng) {
    char detail[256];
    if (!ref.quant_act[TYPE_F16]) {
        check(false, "scalar", "F16", "reference missing", 0, 0, "no scalar F16 conversion registered");
        return;
    }
    for (float spread : {1.0f, 1e-6f, 7e4f}) {
        const int64_t n = 1027;
        std::vector<float> x(n);
        for (auto& v : x) v = spread * rng.normal();
        for (int64_t i = 0; i < 64; i++) {  // halfway between 1 + i/1024 and the next half: rounds to the even one
            const float lo = 1.0f + (float)i / 1024.0f;
            x[i] = (i % 2 ? -1.0f : 1.0f) * (lo + 1.0f / 2048.0f);
        }
        x[64] = 0.0f, x[65] = -0.0f, x[66] = INFINITY, x[67] = -INFINITY, x[68] = 65520.0f, x[69] = 65519.0f;
        std::vector<half_t> a(n), b(n);
        ref.quant_act[TYPE_F16](x.data(), a.data(), n);
        ks.quant_act[TYPE_F16](x.data(), b.data(), n);
        int64_t n_diff = 0;
        for (int64_t i = 0; i < n; i++) n_diff += a[i] != b[i];
        std::snprintf(detail, sizeof detail, "spread %g: %lld of %lld differ", spread, (long long)n_diff, (long long)n);
        check(n_diff == 0, ks.name, "F16", "to_f16", n, 1, detail);
    }
}

void test_attention(const KernelSet& ref, const KernelSet& ks, Rng& rng) {
    char detail[256];
    for (int cache_type : {TYPE_F16, TYPE_F32}) {
        const size_t esz = cache_type == TYPE_F16 ? 2 : 4;
        for (int64_t hd : {8, 64, 68, 72, 256}) {
            for (int64_t n : {1, 7, 100, 333}) {
                // two KV heads interleaved per position: rows are 2*hd apart, as in the cache
                const size_t stride = 2 * hd;
                std::vector<uint8_t> k(n * stride * esz), v(n * stride * esz);
                for (size_t i = 0; i < (size_t)n * stride; i++) {
                    const float a = rng.normal(), b = rng.normal();
                    if (cache_type == TYPE_F16) {
                        reinterpret_cast<half_t*>(k.data())[i] = fp32_to_fp16(a);
                        reinterpret_cast<half_t*>(v.data())[i] = fp32_to_fp16(b);
                    } else {
                        reinterpret_cast<float*>(k.data())[i] = a;
                        reinterpret_cast<float*>(v.data())[i] = b;
                    }
                }
                digest(k.data(), k.size());
                std::vector<float> q(hd), scratch(2 * n + 128 + 64 * hd), o_ref(hd), o_isa(hd);
                const int64_t first = (n * 7 + hd) % 45;  // cache cell of the first key: any alignment
                // the longest case spreads the scores by hundreds: exp underflows to subnormals and zero
                const float q_scale = n == 333 ? 60.0f : 3.0f;
                for (auto& x : q) x = q_scale * rng.normal();
                const float scale = 1.0f / std::sqrt((float)hd);
                const size_t off = hd * esz;  // the second head
                for (bool batch : {false, true}) {  // one token (ggml_vec_dot_f16), a batch (tinyBLAS)
                    ref.attn[cache_type](n, hd, q.data(), k.data() + off, stride, v.data() + off, stride, scale, first, batch, scratch.data(),
                                         o_ref.data());
                    ks.attn[cache_type](n, hd, q.data(), k.data() + off, stride, v.data() + off, stride, scale, first, batch, scratch.data(),
                                        o_isa.data());
                    double worst = 0;
                    for (int64_t d = 0; d < hd; d++) worst = std::fmax(worst, std::fabs((double)o_ref[d] - o_isa[d]));
                    // both follow ggml's arithmetic step for step: bit-identical
                    std::snprintf(detail, sizeof detail, "%s: max abs error %.3g", batch ? "batch" : "one token", worst);
                    check(worst == 0.0, ks.name, cache_type == TYPE_F16 ? "F16 cache" : "F32 cache", "attention", hd, n, detail);
                }
            }
        }
    }
}

// SwiGLU's vector part, bit for bit, over the range where expf is a
// polynomial, where it underflows to subnormals and zero, and where it overflows.
void test_swiglu(const KernelSet& ref, const KernelSet& ks, Rng& rng) {
    for (float spread : {1.0f, 8.0f, 60.0f, 200.0f}) {
        const int64_t n = 1536;
        std::vector<float> gate(n), up(n);
        for (int64_t i = 0; i < n; i++) {
            gate[i] = spread * rng.normal();
            up[i] = rng.normal();
        }
        gate[0] = 0.0f;
        gate[1] = -0.0f;
        digest(gate.data(), n * sizeof(float));
        std::vector<float> a = gate, b = gate;
        ref.swiglu(n, a.data(), up.data());
        ks.swiglu(n, b.data(), up.data());
        int64_t n_diff = 0;
        for (int64_t i = 0; i < n; i++) n_diff += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
        char detail[96];
        std::snprintf(detail, sizeof detail, "inputs spread %g: %lld of %lld outputs differ", spread, (long long)n_diff, (long long)n);
        check(n_diff == 0, ks.name, "F32", "swiglu", n, 1, detail);
    }
}

// The bandwidth probe's loop: the same wrapping sum as the reference, at any
// length and word alignment.
void test_sum_words(const KernelSet& ref, const KernelSet& ks, Rng& rng) {
    std::vector<uint64_t> words(1000);
    for (auto& w : words) w = rng.next();
    digest(words.data(), words.size() * sizeof(uint64_t));
    for (size_t first : {0, 1, 3}) {
        for (size_t n : {0, 1, 7, 15, 16, 17, 33, 997}) {
            char detail[64];
            std::snprintf(detail, sizeof detail, "from word %zu", first);
            check(ks.sum_words(words.data() + first, n) == ref.sum_words(words.data() + first, n), ks.name, "u64",
                  "sum_words", (int64_t)n, 1, detail);
        }
    }
}

}  // namespace

int main() {
    const int weight_types[] = {TYPE_F32, TYPE_F16, TYPE_BF16, TYPE_Q4_0, TYPE_Q4_1, TYPE_Q5_0, TYPE_Q5_1, TYPE_Q8_0,
                                TYPE_Q2_K, TYPE_Q3_K, TYPE_Q4_K, TYPE_Q5_K, TYPE_Q6_K};
    const char* names[8];
    const int n_isas = available_isas(names, 8);
    std::printf("ISA paths:");
    for (int i = 0; i < n_isas; i++) std::printf(" %s", names[i]);
    std::printf("\n");
    for (int i = 0; i < n_isas; i++) {
        const KernelSet& ks = *kernels_for_isa(names[i]);
        const KernelSet& ref = scalar_kernels(ks.lanes);  // the scalar reference in this path's lane order
        g_digest = 1469598103934665603ull;
        Rng rng{42};
        for (int t : weight_types) {
            if (!ref.dot[t] || !ref.dequant[t]) {
                check(false, "scalar", TYPE_TRAITS[t].name, "reference missing", 0, 0, "no scalar kernel registered");
                continue;
            }
            test_type(ref, ks, t, rng);
        }
        for (int vdt : {TYPE_Q8_0, TYPE_Q8_1, TYPE_Q8_K}) test_quantizer(ref, ks, vdt, rng);
        test_to_f16(ref, ks, rng);
        test_attention(ref, ks, rng);
        test_swiglu(ref, ks, rng);
        test_sum_words(ref, ks, rng);
        std::printf("%s: input digest %016llx\n", names[i], (unsigned long long)g_digest);
    }
    std::printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
