#include "layer.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "ggml_math.h"
#include "ops.h"

#define LL_ALWAYS_INLINE __attribute__((always_inline))

namespace ll {

// As ggml computes it (squares in float, summed in double), so that the int8
// activations quantized from the result round exactly as llama.cpp's do.
// Four rows at a time: each row's sum is a chain of dependent double adds in
// ggml's order, and four independent chains overlap where one alone waits on
// every add (a decode step of four sequences spent 2% of its time here).
void rms_norm(const float* x, const float* w, float* y, int64_t n_rows, int64_t n, float eps) {
    auto scale_row = [&](const float* xr, float* yr, double ss) {
        const float mean = (float)(ss / (double)n);
        const float scale = 1.0f / std::sqrt(mean + eps);
        for (int64_t i = 0; i < n; i++) yr[i] = xr[i] * scale * w[i];
    };
    int64_t r = 0;
    for (; r + 4 <= n_rows; r += 4) {
        const float *x0 = x + r * n, *x1 = x0 + n, *x2 = x1 + n, *x3 = x2 + n;
        double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
        for (int64_t i = 0; i < n; i++) {
            s0 += (double)(x0[i] * x0[i]);
            s1 += (double)(x1[i] * x1[i]);
            s2 += (double)(x2[i] * x2[i]);
            s3 += (double)(x3[i] * x3[i]);
        }
        const double ss[4] = {s0, s1, s2, s3};
        for (int j = 0; j < 4; j++) scale_row(x + (r + j) * n, y + (r + j) * n, ss[j]);
    }
    for (; r < n_rows; r++) {
        double ss = 0.0;
        for (int64_t i = 0; i < n; i++) ss += (double)(x[r * n + i] * x[r * n + i]);
        scale_row(x + r * n, y + r * n, ss);
    }
}

namespace {

// A buffer of at least n floats, this thread's own, that only grows: a layer's
// activations would otherwise be allocated and zeroed again in every layer of
// every step, serial work the other threads wait on.  Buffers in use at the
// same time have different ids; every user writes what it reads.
template <int ID>
float* scratch(size_t n) {
    thread_local std::vector<float> buf;
    if (buf.size() < n) buf.resize(n);
    return buf.data();
}

// The rows of each sequence of a batch, as (first row, count).
using RowSpans = std::vector<std::pair<int64_t, int64_t>>;

RowSpans row_spans(const SeqSpan* seqs, int64_t n_seq) {
    RowSpans spans;
    for (int64_t s = 0; s < n_seq; s++) spans.emplace_back(seqs[s].row0, seqs[s].n_tokens);
    return spans;
}

// y[T][rows] += scale·B(A·x) per adapter, then + b: what llama.cpp adds to
// W·x (build_lora_mm): each adapter's B·(A·x) scaled and added, then the bias.
// ax_fused: a decode step's A·x of every adapter of the input group (lora_ax_fused), or null.
// spans: the rows of each sequence (null: all T rows are one).  The adapters'
// F32 matmuls run per sequence, because ggml multiplies one row by a dot
// product and several by tinyBLAS, which sum in different orders: a sequence
// batched with others then gets the floats it gets alone.  (The quantized W·x
// rounds each row alike at any batch size, so it runs once over all rows.)
void add_adapters_and_bias(const KernelSet& ks, ThreadPool& pool, const TensorRef& W, const TensorRef& b, const float* x, int64_t T,
                           float* y, const std::vector<LoraRef>& lora, const float* ax_fused, const RowSpans* spans) {
    for (const LoraRef& ad : lora) {
        const RowSpans whole{{0, T}};
        const int64_t r = ad.a.rows;
        std::vector<float> ax, bax(T * W.rows);
        const float* t = ax_fused && ad.fused_row >= 0 ? ax_fused + ad.fused_row : nullptr;
        if (!t) ax.resize(T * r);
        for (const auto& [r0, n] : spans ? *spans : whole) {
            if (n == 0) continue;
            if (!t) matmul(ks, pool, TYPE_F32, ad.a.data, r, W.cols, x + r0 * W.cols, n, ax.data() + r0 * r);  // [n, r]
            matmul(ks, pool, TYPE_F32, ad.b.data, W.rows, r, (t ? t : ax.data()) + r0 * r, n, bax.data() + r0 * W.rows);  // [n, rows]
        }
        for (int64_t i = 0; i < T * W.rows; i++) {
            const float s = bax[i] * ad.scale;  // ggml_scale, then ggml_add: two roundings
            y[i] += s;
        }
    }
    if (b.present())
        for (int64_t t = 0; t < T; t++)
            for (int64_t i = 0; i < W.rows; i++) y[t * W.rows + i] += b.f32()[i];
}

// y[T][rows] = x[T][cols] · Wᵀ (+ adapters) (+ b), in llama.cpp's order.
void linear(const KernelSet& ks, ThreadPool& pool, const TensorRef& W, const TensorRef& b, const float* x, int64_t T, float* y,
            const std::vector<LoraRef>& lora = {}, const float* ax_fused = nullptr, const RowSpans* spans = nullptr) {
    matmul(ks, pool, W.type, W.data, W.rows, W.cols, x, T, y, W.il);
    add_adapters_and_bias(ks, pool, W, b, x, T, y, lora, ax_fused, spans);
}

// One projection of linears(): y = x · Wᵀ (+ adapters) (+ b).
struct Projection {
    const TensorRef& W;
    const TensorRef& b;
    float* y;
    const std::vector<LoraRef>& lora;
};

// linear() of projections sharing x (q, k, v; gate, up): their W·x in one
// matmul_shared_x, then each one's adapters and bias.
void linears(const KernelSet& ks, ThreadPool& pool, std::initializer_list<Projection> ps, const float* x, int64_t T,
             const float* ax_fused, const RowSpans* spans) {
    std::vector<MatrixOut> m;
    for (const Projection& p : ps) m.push_back(MatrixOut{p.W.type, p.W.data, p.W.il, p.W.rows, p.y});
    matmul_shared_x(ks, pool, m.data(), (int)m.size(), ps.begin()->W.cols, x, T);
    for (const Projection& p : ps) add_adapters_and_bias(ks, pool, p.W, p.b, x, T, p.y, p.lora, ax_fused, spans);
}

// One token's A·x for every adapter of an input group, in one matmul (empty otherwise).
std::vector<float> lora_ax_fused(const KernelSet& ks, ThreadPool& pool, const TensorRef& A, const float* x, int64_t T) {
    std::vector<float> ax;
    if (T != 1 || !A.present()) return ax;
    ax.resize(A.rows);
    matmul(ks, pool, TYPE_F32, A.data, A.rows, A.cols, x, 1, ax.data());
    return ax;
}

// The rotation of position p: cs[i * 2] = cos, + 1 = sin of pair i's angle, as
// ggml builds them: theta_i = p * theta_scale^i by repeated multiplication.
void rope_angles(const LayerSpec& L, int64_t p, float* cs) {
    const int64_t half = L.rope_dim / 2;
    const float theta_scale = std::pow(L.rope_base, -2.0f / (float)L.rope_dim);
    float theta = (float)p;
    for (int64_t i = 0; i < half; i++) {
        const float ff = L.rope_freq_factors ? L.rope_freq_factors[i] : 1.0f;
        const float angle = L.rope_pos_scale * (theta / ff);
        cs[i * 2] = std::cos(angle);
        cs[i * 2 + 1] = std::sin(angle);
        theta *= theta_scale;
    }
}

// The rotations of positions pos0..pos0+n-1 (rope_angles each, one after
// another), valid until the next call.  Every layer of a step rotates by the
// same angles, and every step after by most of them again: they are kept per
// rope setting, for the first ROPE_TABLE_POSITIONS positions, in this
// thread's tables (their sines and cosines were a tenth of a decode step of
// four sequences, computed serially while the other threads waited).
constexpr int64_t ROPE_TABLE_POSITIONS = 1 << 15;

const float* rope_rotations(const LayerSpec& L, int64_t pos0, int64_t n) {
    struct Table {
        int64_t dim;
        float base, pos_scale;
        std::vector<float> freq_factors;  // by value: another model's array may later sit at the same address
        std::vector<float> cs;            // [p][i][cos, sin]
    };
    thread_local std::vector<Table> tables;
    thread_local std::vector<float> scratch;
    const int64_t half = L.rope_dim / 2;
    if (half == 0) return nullptr;  // nothing rotated
    if (pos0 + n > ROPE_TABLE_POSITIONS) {
        scratch.resize(n * 2 * half);
        for (int64_t t = 0; t < n; t++) rope_angles(L, pos0 + t, scratch.data() + t * 2 * half);
        return scratch.data();
    }
    const float* ff = L.rope_freq_factors;
    auto same_factors = [&](const Table& t) {
        return ff ? t.freq_factors.size() == (size_t)half && std::equal(ff, ff + half, t.freq_factors.begin()) : t.freq_factors.empty();
    };
    Table* tab = nullptr;
    for (Table& t : tables)
        if (t.dim == L.rope_dim && t.base == L.rope_base && t.pos_scale == L.rope_pos_scale && same_factors(t)) tab = &t;
    if (!tab) {
        if (tables.size() >= 8) tables.clear();  // settings of models long gone
        tables.push_back(Table{L.rope_dim, L.rope_base, L.rope_pos_scale, ff ? std::vector<float>(ff, ff + half) : std::vector<float>{}, {}});
        tab = &tables.back();
    }
    const int64_t have = (int64_t)tab->cs.size() / (2 * half);
    if (pos0 + n > have) {
        const int64_t want = std::min(ROPE_TABLE_POSITIONS, std::max(pos0 + n, 2 * have));
        tab->cs.resize(want * 2 * half);
        for (int64_t p = have; p < want; p++) rope_angles(L, p, tab->cs.data() + p * 2 * half);
    }
    return tab->cs.data() + pos0 * 2 * half;
}

// Rotary position embedding of every head of n_tokens rows (n_heads * head_dim each).
LL_ALWAYS_INLINE inline void rope_rows(const LayerSpec& L, const float* cs, float* x, int64_t n_tokens, int64_t n_heads) {
    const int64_t half = L.rope_dim / 2;
    for (int64_t t = 0; t < n_tokens; t++) {
        for (int64_t h = 0; h < n_heads; h++) {
            float* v = x + (t * n_heads + h) * L.head_dim;
            for (int64_t i = 0; i < half; i++) {
                // llama GGUFs pair adjacent dims (their converter permuted Q/K rows);
                // neox-style models (qwen2, gemma3) pair dim i with dim i + d/2.
                float* a = L.rope_neox ? v + i : v + 2 * i;
                float* b = L.rope_neox ? v + i + half : v + 2 * i + 1;
                // ggml's rotation x0*c - x1*s, x0*s + x1*c as its FMA build
                // compiles it: the x0 product fused, the x1 product rounded.
                const float c = cs[(t * half + i) * 2], s = cs[(t * half + i) * 2 + 1], x0 = *a, x1 = *b;
                *a = std::fmaf(x0, c, -(x1 * s));
                *b = std::fmaf(x0, s, x1 * c);
            }
        }
    }
}

#if defined(__x86_64__) || defined(_M_X64)
// The same loop where the CPU has FMA: std::fmaf an instruction, not a libm
// call per product (this file is built for the baseline ISA).
__attribute__((target("fma"))) void rope_rows_fma(const LayerSpec& L, const float* cs, float* x, int64_t n_tokens, int64_t n_heads) {
    rope_rows(L, cs, x, n_tokens, n_heads);
}
#endif

void rope(const LayerSpec& L, const float* cs, float* x, int64_t n_tokens, int64_t n_heads) {
#if defined(__x86_64__) || defined(_M_X64)
    static const bool fma = __builtin_cpu_supports("fma");
    if (fma) return rope_rows_fma(L, cs, x, n_tokens, n_heads);
#endif
    rope_rows(L, cs, x, n_tokens, n_heads);
}

void store_kv(const KernelSet& ks, const LayerSpec& L, const KVRef& kv, const float* k, const float* v, int64_t n_tokens, int64_t pos0) {
    const int64_t row = L.n_head_kv * L.head_dim, n = n_tokens * row;  // row: one position of the cache
    if (kv.type == TYPE_F16) {
        ks.quant_act[TYPE_F16](k, reinterpret_cast<half_t*>(kv.k) + pos0 * row, n);
        ks.quant_act[TYPE_F16](v, reinterpret_cast<half_t*>(kv.v) + pos0 * row, n);
    } else {
        std::copy(k, k + n, reinterpret_cast<float*>(kv.k) + pos0 * row);
        std::copy(v, v + n, reinterpret_cast<float*>(kv.v) + pos0 * row);
    }
}

// The attention scale: the model's, else 1/sqrt(head_dim).
inline float score_scale(const LayerSpec& L) { return L.attn_scale > 0 ? L.attn_scale : 1.0f / std::sqrt((float)L.head_dim); }

// out[t][h] = softmax(q[t][h] · K[j0..p]ᵀ * scale) · V[j0..p] for each row t at
// position p of its sequence's cache (causal; j0 > p - window on sliding-window layers).
void attention(const KernelSet& ks, ThreadPool& pool, const LayerSpec& L, const SeqSpan* seqs, int64_t n_seq, const float* q,
               float* out, int64_t n_tokens) {
    const int64_t hd = L.head_dim, row = L.n_head_kv * hd, group = L.n_head / L.n_head_kv;
    // With attn_scale_q the caller has already scaled q (see attention_half).
    const float scale = L.attn_scale_q ? 1.0f : score_scale(L);
    std::vector<int32_t> owner(n_tokens);
    int64_t span_max = 0;
    size_t bytes = 0;  // K and V bytes read
    for (int64_t s = 0; s < n_seq; s++) {
        const SeqSpan& S = seqs[s];
        for (int64_t t = 0; t < S.n_tokens; t++) owner[S.row0 + t] = (int32_t)s;
        span_max = std::max(span_max, S.pos0 + S.n_tokens);
        const size_t esz = S.kv.type == TYPE_F16 ? 2 : 4;
        bytes += (size_t)(S.n_tokens * L.n_head) * (S.pos0 + S.n_tokens) * hd * esz * 2 / group;
    }
    const int64_t n_tasks = n_tokens * L.n_head;
    std::atomic<int64_t> next{0};
    auto work = [&](int, int) {
        float* work_buf = scratch<7>(2 * span_max + 128 + 64 * hd);  // see attn_fn
        for (int64_t task; (task = next.fetch_add(1)) < n_tasks;) {
            const int64_t t = task / L.n_head, h = task % L.n_head, g = h / group;
            const SeqSpan& S = seqs[owner[t]];
            const int64_t p = S.pos0 + (t - S.row0);
            const int64_t j0 = L.sliding_window > 0 ? std::max<int64_t>(0, p - L.sliding_window + 1) : 0;
            const size_t first = (size_t)(j0 * row + g * hd) * (S.kv.type == TYPE_F16 ? 2 : 4);
            // the batch flag is the sequence's own: a decode token attends as it would alone
            ks.attn[S.kv.type](p - j0 + 1, hd, q + (t * L.n_head + h) * hd, S.kv.k + first, row, S.kv.v + first, row, scale, j0,
                               S.n_tokens > 1, work_buf, out + (t * L.n_head + h) * hd);
        }
    };
    // tiny attention spans are not worth waking the pool for (from 8 KB it
    // is: a decode step at ~30 positions, 23 KB, SmolLM2 +3%, Gemma 3 +4%)
    if (bytes < 8 * 1024) work(0, 1);
    else pool.run(work);
}

// GELU as llama.cpp computes it (ggml_vec_geglu_f32): looked up by the fp16
// value of x in a table of fp16 results, built once from the float formula,
// so both roundings are reproduced and no element pays for a tanhf.
inline float gelu_tanh_of_half(half_t h) {
    const float xh = fp16_to_fp32(h);
    const float c = 0.7978845608028654f;  // sqrt(2/pi)
    return 0.5f * xh * (1.0f + std::tanh(c * xh * (1.0f + 0.044715f * xh * xh)));
}

const half_t* gelu_table() {
    static const std::vector<half_t> table = [] {
        std::vector<half_t> t(1 << 16);
        for (uint32_t h = 0; h < t.size(); h++) t[h] = fp32_to_fp16(gelu_tanh_of_half((half_t)h));
        return t;
    }();
    return table.data();
}

inline float gelu_tanh(float x, const half_t* table) {
    if (x <= -10.0f) return 0.0f;
    if (x >= 10.0f) return x;
    return fp16_to_fp32(table[fp32_to_fp16(x)]);
}

// gate = act(gate) * up over T rows of n_ff, the rows split among the threads
// when there are enough of them (a prompt batch).
void glu(const KernelSet& ks, ThreadPool& pool, const LayerSpec& L, float* gate, const float* up, int64_t T) {
    // ggml's SwiGLU: vector expf in groups of its lane width, libm for a row's tail
    const int64_t n_ff = L.n_ff, n_vec = n_ff & ~int64_t(ks.lanes - 1);
    const half_t* table = L.activation == ACT_GELU_TANH ? gelu_table() : nullptr;
    auto rows = [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; t++) {
            float* g = gate + t * n_ff;
            const float* u = up + t * n_ff;
            if (table) {
                for (int64_t i = 0; i < n_ff; i++) g[i] = gelu_tanh(g[i], table) * u[i];
                continue;
            }
            ks.swiglu(n_vec, g, u);
            for (int64_t i = n_vec; i < n_ff; i++) g[i] = ggml_silu(g[i], false, ks.lanes) * u[i];
        }
    };
    if (T < 2 * pool.size()) {
        rows(0, T);
        return;
    }
    pool.run([&](int ith, int nth) { rows(T * ith / nth, T * (ith + 1) / nth); });
}

// x = h = x + attn(norm(x)) on every row, each row at its sequence's position.
void attention_half(const KernelSet& ks, ThreadPool& pool, const LayerSpec& L, float* x, int64_t T, const SeqSpan* seqs,
                    int64_t n_seq) {
    const int64_t d = L.n_embd, hd = L.head_dim, nq = L.n_head * hd, nkv = L.n_head_kv * hd;
    float *xn = scratch<0>(T * d), *q = scratch<1>(T * nq), *k = scratch<2>(T * nkv), *v = scratch<3>(T * nkv),
          *att = scratch<4>(T * nq), *o = scratch<5>(T * d);
    const RowSpans spans = row_spans(seqs, n_seq);
    rms_norm(x, L.attn_norm.f32(), xn, T, d, L.norm_eps);
    const std::vector<float> ax = lora_ax_fused(ks, pool, L.lora_a_fused[0], xn, T);
    const float* axp = ax.empty() ? nullptr : ax.data();
    // q [T, n_head * hd], k and v [T, n_head_kv * hd]
    linears(ks, pool, {{L.wq, L.bq, q, L.lora[PROJ_Q]}, {L.wk, L.bk, k, L.lora[PROJ_K]}, {L.wv, L.bv, v, L.lora[PROJ_V]}}, xn, T, axp,
            &spans);
    if (L.q_norm.present()) rms_norm(q, L.q_norm.f32(), q, T * L.n_head, hd, L.norm_eps);
    if (L.k_norm.present()) rms_norm(k, L.k_norm.f32(), k, T * L.n_head_kv, hd, L.norm_eps);
    for (int64_t s = 0; s < n_seq; s++) {
        const SeqSpan& S = seqs[s];
        const float* cs = rope_rotations(L, S.pos0, S.n_tokens);  // q's and k's
        rope(L, cs, q + S.row0 * nq, S.n_tokens, L.n_head);
        rope(L, cs, k + S.row0 * nkv, S.n_tokens, L.n_head_kv);
    }
    // llama.cpp's gemma graph scales q, in float32, before q is rounded to fp16
    // for q·K (scaling the scores instead differs where q/sqrt(hd) is an fp16 subnormal)
    if (L.attn_scale_q) {
        const float s = score_scale(L);
        for (int64_t i = 0; i < T * nq; i++) q[i] *= s;
    }
    for (int64_t s = 0; s < n_seq; s++) {
        const SeqSpan& S = seqs[s];
        store_kv(ks, L, S.kv, k + S.row0 * nkv, v + S.row0 * nkv, S.n_tokens, S.pos0);
    }
    attention(ks, pool, L, seqs, n_seq, q, att, T);  // [T, n_head * hd]
    linear(ks, pool, L.wo, TensorRef{}, att, T, o, L.lora[PROJ_O], nullptr, &spans);  // [T, d]
    if (L.attn_post_norm.present()) rms_norm(o, L.attn_post_norm.f32(), o, T, d, L.norm_eps);
    for (int64_t i = 0; i < T * d; i++) x[i] += o[i];
}

// x = x + ffn(norm(x)) on T contiguous rows, ffn(h) = W_down · (act(W_gate · h) * (W_up · h)).
// spans: the rows of each sequence (null: one sequence).
void ffn_half(const KernelSet& ks, ThreadPool& pool, const LayerSpec& L, float* x, int64_t T, const RowSpans* spans = nullptr) {
    const int64_t d = L.n_embd;
    float *xn = scratch<0>(T * d), *gate = scratch<1>(T * L.n_ff), *up = scratch<2>(T * L.n_ff), *o = scratch<3>(T * d);
    rms_norm(x, L.ffn_norm.f32(), xn, T, d, L.norm_eps);
    const std::vector<float> ax = lora_ax_fused(ks, pool, L.lora_a_fused[1], xn, T);
    const float* axp = ax.empty() ? nullptr : ax.data();
    const TensorRef none;
    linears(ks, pool, {{L.w_gate, none, gate, L.lora[PROJ_GATE]}, {L.w_up, none, up, L.lora[PROJ_UP]}}, xn, T, axp, spans);  // [T, n_ff] each
    glu(ks, pool, L, gate, up, T);
    linear(ks, pool, L.w_down, TensorRef{}, gate, T, o, L.lora[PROJ_DOWN], nullptr, spans);  // [T, d]
    if (L.ffn_post_norm.present()) rms_norm(o, L.ffn_post_norm.f32(), o, T, d, L.norm_eps);
    for (int64_t i = 0; i < T * d; i++) x[i] += o[i];
}

}  // namespace

void layer_forward(const KernelSet& ks, ThreadPool& pool, const LayerSpec& L, float* x, int64_t T, int64_t pos0, const KVRef& kv,
                   int64_t n_out) {
    SeqSpan one;
    one.n_tokens = T;
    one.pos0 = pos0;
    one.kv = kv;
    attention_half(ks, pool, L, x, T, &one, 1);
    ffn_half(ks, pool, L, x + (T - n_out) * L.n_embd, n_out);
}

void layer_forward_batch(const KernelSet& ks, ThreadPool& pool, const LayerSpec& L, float* x, int64_t T, const SeqSpan* seqs,
                         int64_t n_seq, bool last_only) {
    if (T == 0) return;
    attention_half(ks, pool, L, x, T, seqs, n_seq);
    std::vector<int64_t> rows;
    for (int64_t s = 0; s < n_seq; s++)
        if (seqs[s].n_tokens > 0) rows.push_back(seqs[s].row0 + seqs[s].n_tokens - 1);
    if (!last_only || (int64_t)rows.size() == T) {
        const RowSpans spans = row_spans(seqs, n_seq);
        ffn_half(ks, pool, L, x, T, &spans);
        return;
    }
    // the output rows gathered in x's order, so one sequence alone gets
    // layer_forward's n_out = 1 pass
    std::sort(rows.begin(), rows.end());
    const int64_t d = L.n_embd, n = (int64_t)rows.size();
    float* h = scratch<6>(n * d);
    RowSpans spans;  // one row of each sequence
    for (int64_t i = 0; i < n; i++) {
        std::copy(x + rows[i] * d, x + (rows[i] + 1) * d, h + i * d);
        spans.emplace_back(i, 1);
    }
    ffn_half(ks, pool, L, h, n, &spans);
    for (int64_t i = 0; i < n; i++) std::copy(h + i * d, h + (i + 1) * d, x + rows[i] * d);
}

}  // namespace ll
