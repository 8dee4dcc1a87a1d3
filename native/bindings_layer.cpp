// Bindings of the fused transformer layer: tensors and hyperparameters are
// checked once when a Layer is built; forward() then checks only the
// activations and the cache it is handed.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "layer.h"
#include "ops.h"

namespace py = pybind11;
using namespace ll;

namespace {

// model.config.LayerParams, field for field: every field is a required
// keyword of the constructor, so a field missing, added or misspelled on
// either side is a TypeError when the model is built, never a silent 0.
struct LayerParams {
    int64_t n_embd, n_head, n_head_kv, head_dim, n_ff, rope_dim, sliding_window;
    float rope_base, rope_pos_scale, norm_eps, attn_scale;
    bool rope_neox, attn_scale_q;
    std::string activation;
    py::object rope_freq_factors;  // None or a float32 vector of rope_dim / 2
};

class Layer {
public:
    Layer(const Layer&) = delete;  // L points into fused_
    Layer& operator=(const Layer&) = delete;
    Layer(const py::dict& tensors, const LayerParams& p) {
        L.n_embd = p.n_embd;
        L.n_head = p.n_head;
        L.n_head_kv = p.n_head_kv;
        L.head_dim = p.head_dim;
        L.n_ff = p.n_ff;
        L.rope_dim = p.rope_dim;
        L.sliding_window = p.sliding_window;
        L.rope_base = p.rope_base;
        L.rope_pos_scale = p.rope_pos_scale;
        L.norm_eps = p.norm_eps;
        L.attn_scale = p.attn_scale;
        L.rope_neox = p.rope_neox;
        L.attn_scale_q = p.attn_scale_q;
        if (p.activation != "silu" && p.activation != "gelu_tanh")
            throw py::value_error("activation must be 'silu' or 'gelu_tanh', got '" + p.activation + "'");
        L.activation = p.activation == "silu" ? ACT_SILU : ACT_GELU_TANH;
        if (L.n_embd <= 0 || L.n_head <= 0 || L.n_head_kv <= 0 || L.head_dim <= 0 || L.n_ff <= 0)
            throw py::value_error("n_embd, n_head, n_head_kv, head_dim and n_ff must be positive");
        if (L.n_head % L.n_head_kv) throw py::value_error("n_head must be a multiple of n_head_kv");
        if (L.head_dim > 1024) throw py::value_error("head_dim above 1024 is not supported");
        if (L.rope_dim <= 0 || L.rope_dim > L.head_dim || L.rope_dim % 2)
            throw py::value_error("rope_dim must be positive, even and at most head_dim");
        if (L.sliding_window < 0) throw py::value_error("sliding_window must be >= 0");

        const int64_t d = L.n_embd, nq = L.n_head * L.head_dim, nkv = L.n_head_kv * L.head_dim;
        L.attn_norm = vec(tensors, "attn_norm", d, true);
        L.wq = mat(tensors, "wq", nq, d);
        L.wk = mat(tensors, "wk", nkv, d);
        L.wv = mat(tensors, "wv", nkv, d);
        L.wo = mat(tensors, "wo", d, nq);
        L.bq = vec(tensors, "bq", nq, false);
        L.bk = vec(tensors, "bk", nkv, false);
        L.bv = vec(tensors, "bv", nkv, false);
        L.q_norm = vec(tensors, "q_norm", L.head_dim, false);
        L.k_norm = vec(tensors, "k_norm", L.head_dim, false);
        L.attn_post_norm = vec(tensors, "attn_post_norm", d, false);
        L.ffn_norm = vec(tensors, "ffn_norm", d, true);
        L.w_gate = mat(tensors, "w_gate", L.n_ff, d);
        L.w_up = mat(tensors, "w_up", L.n_ff, d);
        L.w_down = mat(tensors, "w_down", d, L.n_ff);
        L.ffn_post_norm = vec(tensors, "ffn_post_norm", d, false);
        if (tensors.contains("lora") && !tensors["lora"].is_none()) lora(py::cast<py::dict>(tensors["lora"]));
        if (!p.rope_freq_factors.is_none()) {
            py::array a = py::cast<py::array>(p.rope_freq_factors);
            check_f32(a, "rope_freq_factors", L.rope_dim / 2);
            keep_.push_back(a);
            L.rope_freq_factors = static_cast<const float*>(a.data());
        }
    }

    void forward(py::array x, int64_t pos0, py::array k_cache, py::array v_cache, int64_t n_out) {
        check_x(x);
        const int64_t T = x.shape(0);
        if (n_out != -1 && (n_out < 1 || n_out > T))
            throw py::value_error("n_out must be between 1 and the " + std::to_string(T) + " tokens, got " + std::to_string(n_out));
        const KVRef kv = cache_ref(k_cache, v_cache, "");
        if (pos0 < 0 || pos0 + T > kv.n_ctx)
            throw py::value_error("positions " + std::to_string(pos0) + ".." + std::to_string(pos0 + T) + " do not fit a cache of " + std::to_string(kv.n_ctx));
        float* xp = static_cast<float*>(x.mutable_data());
        if (T == 0) return;
        py::gil_scoped_release release;
        auto pool = global_pool();
        layer_forward(active_kernels(), *pool, L, xp, T, pos0, kv, n_out < 0 ? T : n_out);
    }

    // Tokens of several sequences in one pass (layer_forward_batch): row t of x
    // belongs to sequence seq[t] at position pos[t] of that sequence's cache
    // (k_caches[seq[t]], v_caches[seq[t]]); a sequence's rows are contiguous
    // and at consecutive positions.
    void forward_batch(py::array x, py::array seq, py::array pos, py::sequence k_caches, py::sequence v_caches, bool last_only) {
        check_x(x);
        const int64_t T = x.shape(0);
        if (!seq.dtype().is(py::dtype::of<int32_t>()) || seq.ndim() != 1 || !(seq.flags() & py::array::c_style) || seq.shape(0) != T)
            throw py::value_error("seq must be a C-contiguous int32 vector of the " + std::to_string(T) + " tokens' sequence ids");
        if (!pos.dtype().is(py::dtype::of<int64_t>()) || pos.ndim() != 1 || !(pos.flags() & py::array::c_style) || pos.shape(0) != T)
            throw py::value_error("pos must be a C-contiguous int64 vector of the " + std::to_string(T) + " tokens' positions");
        const int64_t n_seq = (int64_t)py::len(k_caches);
        if (n_seq < 1 || (int64_t)py::len(v_caches) != n_seq)
            throw py::value_error("k_caches and v_caches must be lists of the same length, one cache per sequence (got " +
                                  std::to_string(n_seq) + " and " + std::to_string(py::len(v_caches)) + ")");
        std::vector<py::array> arrays;  // kept alive while the GIL is released
        std::vector<SeqSpan> spans(n_seq);
        for (int64_t s = 0; s < n_seq; s++) {
            py::object k = k_caches[(size_t)s], v = v_caches[(size_t)s];
            if (!py::isinstance<py::array>(k) || !py::isinstance<py::array>(v))
                throw py::value_error("sequence " + std::to_string(s) + ": KV caches must be numpy arrays");
            py::array ka = py::reinterpret_borrow<py::array>(k), va = py::reinterpret_borrow<py::array>(v);
            spans[s].kv = cache_ref(ka, va, "sequence " + std::to_string(s) + ": ");
            spans[s].row0 = -1;
            if (s > 0 && spans[s].kv.type != spans[0].kv.type)
                throw py::value_error("sequence " + std::to_string(s) + ": every sequence's cache must have the same type");
            arrays.push_back(ka);
            arrays.push_back(va);
        }
        // One sequence's cache shared with another (or its K with its V)
        // would have one write the other's rows: refused, not raced.  Sorted
        // by address, an overlap is a buffer starting before an earlier one ends.
        std::vector<std::pair<const uint8_t*, size_t>> by_address;  // (start, index into arrays)
        for (size_t i = 0; i < arrays.size(); i++)
            if (arrays[i].nbytes() > 0) by_address.emplace_back(static_cast<const uint8_t*>(arrays[i].data()), i);
        std::sort(by_address.begin(), by_address.end());
        for (size_t j = 1, last = 0; j < by_address.size(); j++) {  // last: the buffer reaching furthest so far
            const size_t a = by_address[last].second, b = by_address[j].second;
            if (by_address[j].first < by_address[last].first + arrays[a].nbytes()) {
                const size_t sa = std::min(a, b) / 2, sb = std::max(a, b) / 2;
                throw py::value_error(sa == sb ? "sequence " + std::to_string(sa) + ": k_cache and v_cache overlap in memory"
                                               : "sequences " + std::to_string(sa) + " and " + std::to_string(sb) +
                                                     " share KV cache memory: each sequence needs its own cache");
            }
            last = j;  // no overlap: j starts at or after every earlier buffer's end
        }
        const int32_t* sq = static_cast<const int32_t*>(seq.data());
        const int64_t* ps = static_cast<const int64_t*>(pos.data());
        for (int64_t t = 0; t < T; t++) {
            const int32_t s = sq[t];
            if (s < 0 || s >= n_seq)
                throw py::value_error("seq[" + std::to_string(t) + "] = " + std::to_string(s) + " is not a sequence id in [0, " + std::to_string(n_seq) + ")");
            SeqSpan& S = spans[s];
            if (ps[t] < 0 || ps[t] >= S.kv.n_ctx)
                throw py::value_error("sequence " + std::to_string(s) + ": position " + std::to_string(ps[t]) + " (row " + std::to_string(t) +
                                      ") is outside its cache of " + std::to_string(S.kv.n_ctx));
            if (S.row0 < 0) {
                S.row0 = t;
                S.pos0 = ps[t];
            } else if (S.row0 + S.n_tokens != t) {
                throw py::value_error("sequence " + std::to_string(s) + ": its tokens must be contiguous in x (row " + std::to_string(t) + ")");
            } else if (ps[t] != S.pos0 + S.n_tokens) {
                throw py::value_error("sequence " + std::to_string(s) + ": positions must be consecutive, got " + std::to_string(ps[t - 1]) +
                                      " then " + std::to_string(ps[t]) + " (row " + std::to_string(t) + ")");
            }
            S.n_tokens++;
        }
        for (SeqSpan& S : spans)
            if (S.row0 < 0) S.row0 = 0;  // a sequence without tokens in this batch
        float* xp = static_cast<float*>(x.mutable_data());
        if (T == 0) return;
        py::gil_scoped_release release;
        auto pool = global_pool();
        layer_forward_batch(active_kernels(), *pool, L, xp, T, spans.data(), n_seq, last_only);
    }

private:
    void check_x(const py::array& x) const {
        if (!x.dtype().is(py::dtype::of<float>()) || x.ndim() != 2 || !(x.flags() & py::array::c_style) || !x.writeable())
            throw py::value_error("x must be a writable C-contiguous float32 array of shape (n_tokens, n_embd)");
        if (x.shape(1) != L.n_embd) throw py::value_error("x: expected " + std::to_string(L.n_embd) + " features, got " + std::to_string(x.shape(1)));
    }

    // One layer's cache: K and V of the same type (F16 or F32) and the same
    // shape (n_ctx, n_head_kv, head_dim), writable and C-contiguous.
    KVRef cache_ref(py::array& k_cache, py::array& v_cache, const std::string& who) const {
        KVRef kv;
        const bool f16 = k_cache.dtype().is(py::dtype::of<uint16_t>()) || k_cache.dtype().char_() == 'e';
        const bool f32 = k_cache.dtype().is(py::dtype::of<float>());
        if (!(f16 || f32) || !k_cache.dtype().is(v_cache.dtype())) throw py::value_error(who + "k_cache and v_cache must both be float16 or both float32");
        kv.type = f16 ? TYPE_F16 : TYPE_F32;
        for (py::array* c : {&k_cache, &v_cache})
            if (c->ndim() != 3 || !(c->flags() & py::array::c_style) || !c->writeable())
                throw py::value_error(who + "KV cache arrays must be writable, C-contiguous and 3-D");
        kv.n_ctx = k_cache.shape(0);
        if (k_cache.shape(1) != L.n_head_kv || k_cache.shape(2) != L.head_dim)
            throw py::value_error(who + "k_cache: expected shape (n_ctx, " + std::to_string(L.n_head_kv) + ", " + std::to_string(L.head_dim) + ")");
        if (v_cache.shape(0) != kv.n_ctx || v_cache.shape(1) != L.n_head_kv || v_cache.shape(2) != L.head_dim)
            throw py::value_error(who + "v_cache: expected the shape of k_cache (" + std::to_string(kv.n_ctx) + ", " + std::to_string(L.n_head_kv) + ", " + std::to_string(L.head_dim) + ")");
        kv.k = static_cast<uint8_t*>(k_cache.mutable_data());
        kv.v = static_cast<uint8_t*>(v_cache.mutable_data());
        return kv;
    }

    static void check_f32(const py::array& a, const char* name, int64_t n) {
        if (!a.dtype().is(py::dtype::of<float>()) || !(a.flags() & py::array::c_style) || a.size() != n)
            throw py::value_error(std::string(name) + ": expected a C-contiguous float32 vector of " + std::to_string(n) + " values");
    }

    TensorRef vec(const py::dict& t, const char* name, int64_t n, bool required) {
        if (!t.contains(name) || t[name].is_none()) {
            if (required) throw py::value_error(std::string("layer tensor '") + name + "' is missing");
            return TensorRef{};
        }
        py::array a = py::cast<py::array>(t[name]);
        check_f32(a, name, n);
        keep_.push_back(a);
        TensorRef r;
        r.data = static_cast<const uint8_t*>(a.data());
        r.type = TYPE_F32;
        r.rows = 1;
        r.cols = n;
        return r;
    }

    // A weight matrix is (type_id, uint8 array of shape (rows, row_bytes)).
    TensorRef mat(const py::dict& t, const char* name, int64_t rows, int64_t cols) {
        if (!t.contains(name)) throw py::value_error(std::string("layer tensor '") + name + "' is missing");
        py::tuple tup = py::cast<py::tuple>(t[name]);
        if (tup.size() != 2 && tup.size() != 3)
            throw py::value_error(std::string(name) + ": expected (type_id, uint8 array) or (type_id, uint8 array, interleaved copy)");
        const int type = py::cast<int>(tup[0]);
        py::array a = py::cast<py::array>(tup[1]);
        if (!is_weight_type(type)) throw py::value_error(std::string(name) + ": unsupported tensor type id " + std::to_string(type));
        if (cols % TYPE_TRAITS[type].block_size)
            throw py::value_error(std::string(name) + ": row length " + std::to_string(cols) + " is not a multiple of the " + TYPE_TRAITS[type].name + " block size");
        if (!a.dtype().is(py::dtype::of<uint8_t>()) || a.ndim() != 2 || !(a.flags() & py::array::c_style) || a.shape(0) != rows ||
            a.shape(1) != (py::ssize_t)row_bytes(type, cols))
            throw py::value_error(std::string(name) + ": expected C-contiguous uint8 (" + std::to_string(rows) + ", " +
                                  std::to_string(row_bytes(type, cols)) + ") for " + std::to_string(rows) + "x" + std::to_string(cols) + " " + TYPE_TRAITS[type].name);
        keep_.push_back(a);
        TensorRef r;
        r.data = static_cast<const uint8_t*>(a.data());
        r.type = type;
        r.rows = rows;
        r.cols = cols;
        if (tup.size() == 3 && !tup[2].is_none()) {
            py::array il = py::cast<py::array>(tup[2]);
            if (!il.dtype().is(py::dtype::of<uint8_t>()) || il.ndim() != 2 || !(il.flags() & py::array::c_style) ||
                il.shape(0) != a.shape(0) || il.shape(1) != a.shape(1) || rows % interleave_group(type))
                throw py::value_error(std::string(name) + ": the interleaved copy must be C-contiguous uint8 of the weights' shape, rows a multiple of " +
                                      std::to_string(interleave_group(type)));
            keep_.push_back(il);
            r.il = static_cast<const uint8_t*>(il.data());
        }
        return r;
    }

    // tensors["lora"]: {projection name: [(A, B, scale), ...]}, A float32
    // (rank, in) and B float32 (out, rank), C-contiguous; scale a float.
    void lora(const py::dict& adapters) {
        const std::pair<const char*, int> projs[] = {{"wq", PROJ_Q}, {"wk", PROJ_K}, {"wv", PROJ_V}, {"wo", PROJ_O},
                                                     {"w_gate", PROJ_GATE}, {"w_up", PROJ_UP}, {"w_down", PROJ_DOWN}};
        const TensorRef* weights[N_PROJ] = {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down};
        size_t known = 0;
        for (const auto& [name, id] : projs) {
            if (!adapters.contains(name)) continue;
            known++;
            const TensorRef& W = *weights[id];
            const std::string who = std::string("lora ") + name;
            for (py::handle item : py::cast<py::sequence>(adapters[name])) {
                py::tuple tup = py::cast<py::tuple>(item);
                if (tup.size() != 3) throw py::value_error(who + ": expected (A, B, scale) tuples");
                py::array a = py::cast<py::array>(tup[0]), b = py::cast<py::array>(tup[1]);
                for (py::array* m : {&a, &b})
                    if (!m->dtype().is(py::dtype::of<float>()) || m->ndim() != 2 || !(m->flags() & py::array::c_style))
                        throw py::value_error(who + ": A and B must be C-contiguous 2-D float32 arrays");
                const int64_t r = a.shape(0);
                if (r < 1 || a.shape(1) != W.cols || b.shape(0) != W.rows || b.shape(1) != r)
                    throw py::value_error(who + ": expected A (rank, " + std::to_string(W.cols) + ") and B (" + std::to_string(W.rows) +
                                          ", rank), got A (" + std::to_string(a.shape(0)) + ", " + std::to_string(a.shape(1)) + ") and B (" +
                                          std::to_string(b.shape(0)) + ", " + std::to_string(b.shape(1)) + ")");
                keep_.push_back(a);
                keep_.push_back(b);
                LoraRef ref;
                ref.a = TensorRef{static_cast<const uint8_t*>(a.data()), TYPE_F32, r, W.cols};
                ref.b = TensorRef{static_cast<const uint8_t*>(b.data()), TYPE_F32, W.rows, r};
                ref.scale = py::cast<float>(tup[2]);
                L.lora[id].push_back(ref);
            }
        }
        if (known != adapters.size()) throw py::value_error("lora: projection names must be wq, wk, wv, wo, w_gate, w_up or w_down");
        // the A matrices of each input group, concatenated (LayerSpec::lora_a_fused)
        const std::vector<int> groups[2] = {{PROJ_Q, PROJ_K, PROJ_V}, {PROJ_GATE, PROJ_UP}};
        for (int g = 0; g < 2; g++) {
            int64_t rows = 0, n = 0;
            for (int id : groups[g]) n += (int64_t)L.lora[id].size();
            if (n < 2) continue;
            for (int id : groups[g])
                for (LoraRef& ad : L.lora[id]) {
                    ad.fused_row = rows;
                    rows += ad.a.rows;
                }
            const int64_t cols = L.n_embd;  // every projection of both groups reads the normed residual
            std::vector<float>& buf = fused_[g];
            buf.assign((size_t)(rows * cols), 0.0f);
            for (int id : groups[g])
                for (const LoraRef& ad : L.lora[id])
                    std::copy(ad.a.f32(), ad.a.f32() + ad.a.rows * cols, buf.begin() + ad.fused_row * cols);
            L.lora_a_fused[g] = TensorRef{reinterpret_cast<const uint8_t*>(buf.data()), TYPE_F32, rows, cols};
        }
    }

    LayerSpec L;
    std::vector<float> fused_[2];  // LayerSpec::lora_a_fused's rows
    std::vector<py::array> keep_;  // the arrays the raw pointers in L point into
};

}  // namespace

void bind_layer(py::module_& m) {
    py::class_<LayerParams>(m, "LayerParams", "The hyperparameters of one block (model.config.LayerParams).")
        .def(py::init([](int64_t n_embd, int64_t n_head, int64_t n_head_kv, int64_t head_dim, int64_t n_ff, int64_t rope_dim,
                         float rope_base, bool rope_neox, float rope_pos_scale, py::object rope_freq_factors, float norm_eps,
                         std::string activation, int64_t sliding_window, float attn_scale, bool attn_scale_q) {
                 return LayerParams{n_embd, n_head, n_head_kv, head_dim, n_ff, rope_dim, sliding_window, rope_base,
                                    rope_pos_scale, norm_eps, attn_scale, rope_neox, attn_scale_q, std::move(activation),
                                    std::move(rope_freq_factors)};
             }),
             py::kw_only(), py::arg("n_embd"), py::arg("n_head"), py::arg("n_head_kv"), py::arg("head_dim"), py::arg("n_ff"),
             py::arg("rope_dim"), py::arg("rope_base"), py::arg("rope_neox"), py::arg("rope_pos_scale"),
             py::arg("rope_freq_factors").none(true), py::arg("norm_eps"), py::arg("activation"), py::arg("sliding_window"),
             py::arg("attn_scale"), py::arg("attn_scale_q"))
        .def_readonly("n_embd", &LayerParams::n_embd)
        .def_readonly("n_head", &LayerParams::n_head)
        .def_readonly("n_head_kv", &LayerParams::n_head_kv)
        .def_readonly("head_dim", &LayerParams::head_dim)
        .def_readonly("n_ff", &LayerParams::n_ff)
        .def_readonly("rope_dim", &LayerParams::rope_dim)
        .def_readonly("rope_base", &LayerParams::rope_base)
        .def_readonly("rope_neox", &LayerParams::rope_neox)
        .def_readonly("rope_pos_scale", &LayerParams::rope_pos_scale)
        .def_readonly("rope_freq_factors", &LayerParams::rope_freq_factors)
        .def_readonly("norm_eps", &LayerParams::norm_eps)
        .def_readonly("activation", &LayerParams::activation)
        .def_readonly("sliding_window", &LayerParams::sliding_window)
        .def_readonly("attn_scale", &LayerParams::attn_scale)
        .def_readonly("attn_scale_q", &LayerParams::attn_scale_q);
    py::class_<Layer>(m, "Layer", "One fused LLaMA-family transformer block (attention + FFN).")
        .def(py::init<const py::dict&, const LayerParams&>(), py::arg("tensors"), py::arg("params"))
        .def("forward", &Layer::forward, py::arg("x"), py::arg("pos0"), py::arg("k_cache"), py::arg("v_cache"), py::arg("n_out") = -1,
             "x (n_tokens, n_embd) float32 at positions pos0..: updated in place; K/V written to the caches.  "
             "With n_out (1..n_tokens), only the last n_out rows get the feed-forward half and hold the output.")
        .def("forward_batch", &Layer::forward_batch, py::arg("x"), py::arg("seq"), py::arg("pos"), py::arg("k_caches"), py::arg("v_caches"),
             py::arg("last_only") = false,
             "Tokens of several sequences in one pass: row t of x (n_tokens, n_embd) float32 belongs to sequence seq[t] (int32, "
             "0..len(k_caches)-1) at position pos[t] (int64) of that sequence's caches k_caches[seq[t]], v_caches[seq[t]]; a "
             "sequence's rows are contiguous and at consecutive positions.  x is updated in place; with last_only, only the last "
             "row of each sequence gets the feed-forward half and holds the output.");
    m.def("rms_norm", [](const py::array& x, const py::array& w, float eps) {
        if (!x.dtype().is(py::dtype::of<float>()) || !w.dtype().is(py::dtype::of<float>()) || !(x.flags() & py::array::c_style) ||
            !(w.flags() & py::array::c_style) || x.ndim() < 1 || w.ndim() != 1 || x.shape(x.ndim() - 1) != w.shape(0))
            throw py::value_error("rms_norm: x (..., n) and w (n,) must be C-contiguous float32");
        py::array_t<float> y(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
        const int64_t n = w.shape(0);
        ll::rms_norm(static_cast<const float*>(x.data()), static_cast<const float*>(w.data()), y.mutable_data(), n ? x.size() / n : 0, n, eps);
        return y;
    }, py::arg("x"), py::arg("w"), py::arg("eps"));
}
