// One transformer block of the LLaMA family, fused: a decode step crosses into
// C++ once per layer.  Covers llama (LLaMA 1-3, Mistral, SmolLM2), qwen2 (QKV
// biases) and gemma3 (QK-norm, post-norms, GeGLU, sliding window).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels.h"
#include "threadpool.h"

namespace ll {

struct TensorRef {
    const uint8_t* data = nullptr;  // nullptr: tensor absent
    int type = -1;
    int64_t rows = 0;  // output features
    int64_t cols = 0;  // row length (input features); 1-D tensors: rows = 1
    const uint8_t* il = nullptr;  // the same rows interleaved (interleave_rows), or nullptr
    bool present() const { return data != nullptr; }
    const float* f32() const { return reinterpret_cast<const float*>(data); }
};

enum Activation : int { ACT_SILU = 0, ACT_GELU_TANH = 1 };

// One LoRA adapter on one projection W (out x in): y = W·x + scale·B(A·x),
// A (rank x in) and B (out x rank) F32, applied unmerged as llama.cpp does
// (scale = user_scale·alpha/rank, folded in by the caller).
struct LoraRef {
    TensorRef a, b;
    float scale = 1.0f;
    int64_t fused_row = -1;  // this A's first row in its input group's lora_a_fused, or -1
};

// The projections an adapter can apply to (LayerSpec::lora's index).
enum Proj : int { PROJ_Q = 0, PROJ_K, PROJ_V, PROJ_O, PROJ_GATE, PROJ_UP, PROJ_DOWN, N_PROJ };

struct LayerSpec {
    TensorRef attn_norm, wq, wk, wv, wo, bq, bk, bv, q_norm, k_norm, attn_post_norm;
    TensorRef ffn_norm, w_gate, w_up, w_down, ffn_post_norm;
    int64_t n_embd = 0, n_head = 0, n_head_kv = 0, head_dim = 0, n_ff = 0;
    int64_t rope_dim = 0;           // rotated dimensions per head (<= head_dim)
    float rope_base = 0.0f;         // every field is set from LayerParams (bindings_layer.cpp)
    float rope_pos_scale = 1.0f;    // linear rope scaling: positions multiplied by this
    const float* rope_freq_factors = nullptr;  // llama3-style per-frequency divisors (rope_dim/2), or null
    bool rope_neox = false;         // rotate (x[i], x[i+d/2]) instead of (x[2i], x[2i+1])
    float norm_eps = 1e-5f;
    int activation = ACT_SILU;
    int64_t sliding_window = 0;     // 0: attend to every earlier position
    float attn_scale = 0.0f;        // 0: 1/sqrt(head_dim)
    bool attn_scale_q = false;      // scale q before q·K (gemma) rather than the scores
    std::vector<LoraRef> lora[N_PROJ];  // adapters per projection, summed in order; empty: none
    // The A matrices of the projections that read the same input (q, k, v and gate, up),
    // rows concatenated: one decode step computes their A·x in one matmul (the same
    // floats: one token's rows are independent dot products).  Absent: fewer than two.
    TensorRef lora_a_fused[2];  // [0]: q, k, v; [1]: gate, up
};

// The KV cache of one layer, owned by Python: K and V are both
// [n_ctx][n_head_kv][head_dim], in the cache type (F16 or F32).
struct KVRef {
    uint8_t* k = nullptr;
    uint8_t* v = nullptr;
    int type = TYPE_F16;  // TYPE_F16 or TYPE_F32
    int64_t n_ctx = 0;
};

// x: [n_tokens][n_embd] residual stream of tokens at positions pos0.., updated
// in place.  Their K and V are written to the cache at those positions first.
// Only the last n_out rows (1 <= n_out <= n_tokens) get the feed-forward half
// and hold the layer's output; the rows before them keep h = x + attn(norm(x)).
// llama.cpp's last layer does this for the rows whose logits are wanted, which
// changes the kernels (and so the rounding) its FFN matmuls use.
void layer_forward(const KernelSet& ks, ThreadPool& pool, const LayerSpec& L, float* x, int64_t n_tokens, int64_t pos0,
                   const KVRef& kv, int64_t n_out);

// One sequence's share of a batch: rows [row0, row0 + n_tokens) of x, at
// positions pos0.. of its own cache.
struct SeqSpan {
    int64_t row0 = 0, n_tokens = 0, pos0 = 0;
    KVRef kv;
};

// Tokens of several sequences in one pass (continuous batching): the matmuls
// run once over all n_tokens rows, so a decode step of four sequences reads
// the weights once, not four times.  RoPE, the cache writes and attention
// follow each row's own sequence: a token's attention over its cache is the
// computation layer_forward does for it, batch flag included (set by the
// sequence's own token count), so a sequence's attention does not depend on
// what it is batched with; only the matmuls' rounding does.  The spans must
// not overlap, must cover the rows and must use distinct caches (the bindings
// check this).  With last_only, only the last row of each sequence gets the
// feed-forward half (n_out = 1 per sequence), the rows taken in x's order.
void layer_forward_batch(const KernelSet& ks, ThreadPool& pool, const LayerSpec& L, float* x, int64_t n_tokens,
                         const SeqSpan* seqs, int64_t n_seq, bool last_only);

// y[t] = x[t] / rms(x[t]) * w, for n rows of n_embd.
void rms_norm(const float* x, const float* w, float* y, int64_t n_rows, int64_t n_embd, float eps);

}  // namespace ll
