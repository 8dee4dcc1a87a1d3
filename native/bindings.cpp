// Python bindings: check dtype, shape and contiguity, then hand raw pointers
// to ops.cpp with the GIL released.  Every user-facing mistake becomes a
// Python exception naming the argument; nothing reaches C++ unchecked.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "kernels.h"
#include "ops.h"

namespace py = pybind11;
using namespace ll;

namespace {

std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); i++) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

void check_array(const py::array& a, const char* arg, const py::dtype& dt, const char* dt_name, int min_ndim, int max_ndim) {
    if (!a.dtype().is(dt))
        throw py::type_error(std::string(arg) + ": expected dtype " + dt_name + ", got " + std::string(py::str(a.dtype())));
    if (a.ndim() < min_ndim || a.ndim() > max_ndim)
        throw py::value_error(std::string(arg) + ": expected " + std::to_string(min_ndim) + (min_ndim == max_ndim ? "" : "-" + std::to_string(max_ndim)) +
                              " dimensions, got shape " + shape_str(a));
    if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(arg) + ": array must be C-contiguous");
}

int check_type(int type) {
    if (!type_supported(type)) throw py::value_error("unsupported GGML tensor type id " + std::to_string(type));
    return type;
}

int check_weight_type(int type) {
    if (!is_weight_type(check_type(type)))
        throw py::value_error(std::string(TYPE_TRAITS[type].name) + " is an activation format, not a weight type");
    return type;
}

void check_k(int type, int64_t k, const char* what) {
    const int bs = TYPE_TRAITS[type].block_size;
    if (k <= 0 || k % bs)
        throw py::value_error(std::string(what) + " " + std::to_string(k) + " is not a positive multiple of the " +
                              TYPE_TRAITS[type].name + " block size " + std::to_string(bs));
}

const KernelSet& kernels(const py::object& isa) {
    if (isa.is_none()) return active_kernels();
    const std::string name = py::cast<std::string>(isa);
    const KernelSet* ks = kernels_for_isa(name.c_str());
    if (!ks) throw py::value_error("ISA path '" + name + "' is not available on this CPU");
    return *ks;
}

template <typename Fn>
Fn require(Fn fn, int type, const char* what) {
    if (!fn) throw std::runtime_error(std::string("no ") + what + " kernel for " + TYPE_TRAITS[type].name);
    return fn;
}

// Weight bytes as (rows, row_bytes): a 1-D buffer is one row.
void weight_rows(const py::array& w, int type, int64_t k, int64_t* n_rows) {
    check_array(w, "w", py::dtype::of<uint8_t>(), "uint8", 1, 2);
    const int64_t rb = (int64_t)row_bytes(type, k);
    const int64_t got = w.ndim() == 2 ? w.shape(1) : w.shape(0);
    if (got != rb)
        throw py::value_error("w: rows of " + std::to_string(k) + " " + TYPE_TRAITS[type].name + " weights take " +
                              std::to_string(rb) + " bytes, got " + std::to_string(got) + " (shape " + shape_str(w) + ")");
    *n_rows = w.ndim() == 2 ? w.shape(0) : 1;
}

// The weights' interleaved copy (blocks.h interleave_rows): uint8 (rows, row_bytes), rows a multiple of
// interleave_group(type), written into `out` (same shape, e.g. a slice of one huge-page buffer for all of a
// model's copies) or a new array.
py::array interleave_rows_py(int type, const py::array& w, int64_t k, const py::object& out) {
    check_weight_type(type);
    check_k(type, k, "k");
    int64_t n_rows;
    weight_rows(w, type, k, &n_rows);
    const int group = interleave_group(type);
    if (n_rows % group)
        throw py::value_error("w: " + std::to_string(n_rows) + " rows are not a multiple of " + std::to_string(group));
    py::array dest;
    if (out.is_none()) {
        dest = py::array_t<uint8_t>({(py::ssize_t)n_rows, (py::ssize_t)row_bytes(type, k)});
    } else {
        dest = py::cast<py::array>(out);
        check_array(dest, "out", py::dtype::of<uint8_t>(), "uint8", 2, 2);
        if (dest.shape(0) != n_rows || dest.shape(1) != (py::ssize_t)row_bytes(type, k))
            throw py::value_error("out: expected shape (" + std::to_string(n_rows) + ", " + std::to_string(row_bytes(type, k)) +
                                  "), got " + shape_str(dest));
        if (!dest.writeable()) throw py::value_error("out: array is read-only");
    }
    const uint8_t* src = static_cast<const uint8_t*>(w.data());
    uint8_t* dst = static_cast<uint8_t*>(dest.mutable_data());
    {
        py::gil_scoped_release release;
        auto pool = global_pool();
        const int64_t groups = n_rows / group;
        const size_t group_bytes = group * row_bytes(type, k);
        pool->run([&](int ith, int nth) {
            const int64_t g0 = groups * ith / nth, g1 = groups * (ith + 1) / nth;
            interleave_rows(type, src + g0 * group_bytes, (g1 - g0) * group, k, dst + g0 * group_bytes);
        });
    }
    return dest;
}

py::array_t<float> matmul_py(int type, const py::array& w, const py::array& x, const py::object& out, const py::object& isa,
                             const py::object& w_il) {
    check_weight_type(type);
    check_array(x, "x", py::dtype::of<float>(), "float32", 1, 2);
    const int64_t k = x.shape(x.ndim() - 1);
    check_k(type, k, "x: row length");
    const int64_t batch = x.ndim() == 2 ? x.shape(0) : 1;
    int64_t n_rows;
    weight_rows(w, type, k, &n_rows);
    const KernelSet& ks = kernels(isa);
    require(ks.dot[type], type, "dot product");
    if (TYPE_TRAITS[type].vec_dot_type != TYPE_F32) require(ks.quant_act[TYPE_TRAITS[type].vec_dot_type], type, "activation quantization");

    py::array_t<float> y;
    if (out.is_none()) {
        y = x.ndim() == 2 ? py::array_t<float>({(py::ssize_t)batch, (py::ssize_t)n_rows}) : py::array_t<float>((py::ssize_t)n_rows);
    } else {
        py::array o = py::cast<py::array>(out);
        check_array(o, "out", py::dtype::of<float>(), "float32", 1, 2);
        if (!o.writeable()) throw py::value_error("out: array is read-only");
        if (o.size() != batch * n_rows || o.shape(o.ndim() - 1) != n_rows)
            throw py::value_error("out: expected " + std::to_string(batch) + " x " + std::to_string(n_rows) + " floats, got shape " + shape_str(o));
        y = py::cast<py::array_t<float>>(o);
    }
    const uint8_t* wp = static_cast<const uint8_t*>(w.data());
    const uint8_t* ilp = nullptr;
    if (!w_il.is_none()) {
        py::array il = py::cast<py::array>(w_il);
        int64_t il_rows;
        weight_rows(il, type, k, &il_rows);
        if (il_rows != n_rows) throw py::value_error("w_il: " + std::to_string(il_rows) + " rows, w has " + std::to_string(n_rows));
        ilp = static_cast<const uint8_t*>(il.data());
    }
    const float* xp = static_cast<const float*>(x.data());
    float* yp = y.mutable_data();
    {
        py::gil_scoped_release release;
        auto pool = global_pool();
        ll::matmul(ks, *pool, type, wp, n_rows, k, xp, batch, yp, ilp);
    }
    return y;
}

py::array_t<float> dequantize_py(int type, const py::array& src, const py::object& isa) {
    check_type(type);
    check_array(src, "src", py::dtype::of<uint8_t>(), "uint8", 1, 2);
    const int64_t rb_got = src.shape(src.ndim() - 1);
    const int ts = TYPE_TRAITS[type].type_size, bs = TYPE_TRAITS[type].block_size;
    if (rb_got % ts)
        throw py::value_error("src: " + std::to_string(rb_got) + " bytes per row is not a whole number of " + TYPE_TRAITS[type].name +
                              " blocks (" + std::to_string(ts) + " bytes each)");
    const int64_t k = rb_got / ts * bs;
    const int64_t n_rows = src.ndim() == 2 ? src.shape(0) : 1;
    const KernelSet& ks = kernels(isa);
    require(ks.dequant[type], type, "dequantization");
    py::array_t<float> dst = src.ndim() == 2 ? py::array_t<float>({(py::ssize_t)n_rows, (py::ssize_t)k}) : py::array_t<float>((py::ssize_t)k);
    const uint8_t* sp = static_cast<const uint8_t*>(src.data());
    float* dp = dst.mutable_data();
    if (k > 0) {
        py::gil_scoped_release release;
        auto pool = global_pool();
        ll::dequantize(ks, *pool, type, sp, n_rows, k, dp);
    }
    return dst;
}

py::array_t<uint8_t> quantize_activations_py(int weight_type, const py::array& x, const py::object& isa) {
    check_weight_type(weight_type);
    check_array(x, "x", py::dtype::of<float>(), "float32", 1, 2);
    const int vdt = TYPE_TRAITS[weight_type].vec_dot_type;
    if (vdt == TYPE_F32) throw py::value_error(std::string(TYPE_TRAITS[weight_type].name) + " weights take float32 activations as they are");
    const int64_t k = x.shape(x.ndim() - 1);
    check_k(vdt, k, "x: row length");
    const int64_t n_rows = x.ndim() == 2 ? x.shape(0) : 1;
    const int64_t rb = (int64_t)row_bytes(vdt, k);
    const KernelSet& ks = kernels(isa);
    require(ks.quant_act[vdt], vdt, "activation quantization");
    py::array_t<uint8_t> dst = x.ndim() == 2 ? py::array_t<uint8_t>({(py::ssize_t)n_rows, (py::ssize_t)rb}) : py::array_t<uint8_t>((py::ssize_t)rb);
    const float* xp = static_cast<const float*>(x.data());
    uint8_t* dp = dst.mutable_data();
    {
        py::gil_scoped_release release;
        auto pool = global_pool();
        ll::quantize_activations(ks, *pool, weight_type, xp, n_rows, k, dp);
    }
    return dst;
}

uint64_t stream_read_py(const py::array& buf, const py::object& isa) {
    const KernelSet& ks = kernels(isa);
    check_array(buf, "buf", py::dtype::of<uint8_t>(), "uint8", 1, 1);
    const uint8_t* p = static_cast<const uint8_t*>(buf.data());
    const size_t n = (size_t)buf.size();
    py::gil_scoped_release release;
    auto pool = global_pool();
    return ll::stream_read(ks, *pool, p, n);
}

}  // namespace

void bind_layer(py::module_& m);  // bindings_layer.cpp

PYBIND11_MODULE(_native, m) {
    m.doc() = "llamalocal native kernels: GGML block formats, SIMD dot products, thread pool";

    m.def("matmul", &matmul_py, py::arg("type"), py::arg("w"), py::arg("x"), py::arg("out") = py::none(), py::arg("isa") = py::none(),
          py::arg("w_il") = py::none(),
          "Y = X · Wᵀ. w: uint8 (N, row_bytes) weights of GGML `type`; x: float32 (K,) or (B, K). Returns float32 (N,) or (B, N). "
          "w_il: the same weights interleaved (interleave_rows), read where the kernel set multiplies them so.");
    m.def("interleave_rows", &interleave_rows_py, py::arg("type"), py::arg("w"), py::arg("k"), py::arg("out") = py::none(),
          "The weights' rows interleaved in groups of interleave_group(type), block by block (the layout the interleaved kernels read).");
    m.def("interleave_group", [](int type) {
        check_weight_type(type);
        return interleave_group(type);
    }, py::arg("type"), "Rows per group of the type's interleaved copy (interleave_rows): its row count must be a multiple.");
    m.def("interleaved_types", [] {
        std::vector<int> types;
        for (int t = 0; t < TYPE_COUNT; t++)
            if (active_kernels().dot_gemv_il[t]) types.push_back(t);
        return types;
    }, "Weight types the active kernel set multiplies from an interleaved copy (dot_gemv_il): layers keep one of those.");
    m.def("dequantize", &dequantize_py, py::arg("type"), py::arg("src"), py::arg("isa") = py::none(),
          "Dequantize uint8 rows (or one 1-D row) of GGML `type` to float32.");
    m.def("quantize_activations", &quantize_activations_py, py::arg("weight_type"), py::arg("x"), py::arg("isa") = py::none(),
          "Convert float32 activation rows to the int8 format the kernels of `weight_type` multiply by (Q8_0, Q8_1 or Q8_K).");
    m.def("stream_read", &stream_read_py, py::arg("buf"), py::arg("isa") = py::none(), "Read a uint8 buffer once on all pool threads (bandwidth probe); returns a checksum: the wrapping sum of its aligned 64-bit words and of the bytes outside them.");

    m.def("available_isas", [] {
        const char* names[8];
        int n = available_isas(names, 8);
        return std::vector<std::string>(names, names + n);
    });
    m.def("active_isa", [] { return std::string(active_kernels().name); });
    m.def("set_isa", [](const std::string& name) {
        if (!set_active_isa(name.c_str())) throw py::value_error("ISA path '" + name + "' is not available on this CPU");
    });
    m.def("cpu_features", [] {
        const char* names[16];
        bool flags[16];
        int n = ll::cpu_features(names, flags, 16);
        py::dict d;
        for (int i = 0; i < n; i++) d[names[i]] = flags[i];
        return d;
    });
    m.def("set_num_threads", [](int n) {
        if (n < 0 || n > 1024) throw py::value_error("n_threads must be between 0 (default) and 1024, got " + std::to_string(n));
        set_global_threads(n);
    }, py::arg("n"));
    m.def("num_threads", [] { return global_pool()->size(); });
    m.def("default_num_threads", &default_thread_count);
    m.def("type_traits", [] {
        py::dict d;
        for (int t = 0; t < TYPE_COUNT; t++)
            if (type_supported(t)) d[py::int_(t)] = py::make_tuple(TYPE_TRAITS[t].name, TYPE_TRAITS[t].block_size, TYPE_TRAITS[t].type_size, (int)TYPE_TRAITS[t].vec_dot_type);
        return d;
    });
    bind_layer(m);
    m.attr("arch") =
#if defined(__x86_64__) || defined(_M_X64)
        "x86_64";
#elif defined(__aarch64__)
        "aarch64";
#else
        "other";
#endif
}
