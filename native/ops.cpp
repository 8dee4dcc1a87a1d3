#include "ops.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

namespace ll {

namespace {

// Below this many bytes of work a job is done faster by one thread than the
// wake-up of the others costs.
constexpr size_t MIN_PARALLEL_BYTES = 64 * 1024;

// Splits [0, n) into contiguous chunks of `chunk` items handed out dynamically,
// so a thread slowed by the OS does not hold everyone back.  `work_bytes` is
// the memory the whole job touches.
template <typename F>
void parallel_chunks(ThreadPool& pool, int64_t n, int64_t chunk, size_t work_bytes, F&& body) {
    if (n <= 0) return;
    const int64_t n_chunks = (n + chunk - 1) / chunk;
    if (n_chunks == 1 || pool.size() == 1 || work_bytes < MIN_PARALLEL_BYTES) {
        for (int64_t c = 0; c < n_chunks; c++) body(c * chunk, std::min(n, (c + 1) * chunk));
        return;
    }
    std::atomic<int64_t> next{0};
    pool.run([&](int, int) {
        for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < n_chunks;)
            body(c * chunk, std::min(n, (c + 1) * chunk));
    });
}

// parallel_chunks for memory-bound jobs (a decode step's gemv): chunks shrink
// as the rows run out (each a share of what is left, at least min_chunk), so
// the threads finish together; a thread idle at the tail is bandwidth unused.
// [0, n) may be several parts laid end to end (the matrices of one run):
// part_end(r) is the end of the part holding row r, and no chunk crosses one.
template <typename F, typename E>
void parallel_guided(ThreadPool& pool, int64_t n, int64_t min_chunk, size_t work_bytes, F&& body, E&& part_end) {
    if (n <= 0) return;
    const int64_t nth = pool.size();
    if (nth == 1 || n <= min_chunk || work_bytes < MIN_PARALLEL_BYTES) {
        for (int64_t r0 = 0; r0 < n;) {  // a part a call
            const int64_t r1 = part_end(r0);
            body(r0, r1);
            r0 = r1;
        }
        return;
    }
    std::atomic<int64_t> next{0};
    pool.run([&](int, int) {
        int64_t r0 = next.load(std::memory_order_relaxed);
        while (r0 < n) {
            const int64_t share = (n - r0) / (2 * nth) / min_chunk * min_chunk;
            const int64_t r1 = std::min(part_end(r0), r0 + std::max(min_chunk, share));
            if (next.compare_exchange_weak(r0, r1, std::memory_order_relaxed)) {
                body(r0, r1);
                r0 = next.load(std::memory_order_relaxed);
            }
        }
    });
}

template <typename F>
void parallel_guided(ThreadPool& pool, int64_t n, int64_t min_chunk, size_t work_bytes, F&& body) {
    parallel_guided(pool, n, min_chunk, work_bytes, body, [n](int64_t) { return n; });
}

// Rows per chunk: enough chunks for balance (about 8 per thread) but never so
// small that the per-chunk overhead shows; a multiple of 8, the row group of
// the repacked-weight kernels.
int64_t row_chunk(int64_t n_rows, int n_threads, int64_t min_chunk) {
    int64_t c = n_rows / (8 * (int64_t)n_threads);
    c = std::max<int64_t>(min_chunk, (c + 7) & ~int64_t(7));
    return c;
}

}  // namespace

void quantize_activations(const KernelSet& ks, ThreadPool& pool, int weight_type, const float* x, int64_t n_rows,
                          int64_t k, uint8_t* dst) {
    const int vdt = TYPE_TRAITS[weight_type].vec_dot_type;
    const size_t rb = row_bytes(vdt, k);
    quant_row_fn q = ks.quant_act[vdt];
    parallel_chunks(pool, n_rows, std::max<int64_t>(1, n_rows / (4 * pool.size())), n_rows * k * sizeof(float), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; r++) q(x + r * k, dst + r * rb, k);
    });
}

namespace {

// Weights llama.cpp would repack (see KernelSet): its gemm for the rows in
// full groups of four, its gemv for the rest.
bool repacked(const KernelSet& ks, int type, int64_t n_rows) { return n_rows % 8 == 0 && ks.dot_gemv[type] && ks.dot_gemm[type]; }

bool reads_copy(const KernelSet& ks, int type, int64_t n_rows, const uint8_t* w_il) {
    return w_il && ks.dot_gemv_il[type] && n_rows % interleave_group(type) == 0;
}

// The kernel of a matrix whose rows can be split anywhere on a group of 16
// (what every interleaved layout divides): one token, or a batch from an
// interleaved copy with a tile of its own, which takes every token over a
// group of rows before the next, so the weights are read once however the
// rows are split.  Neither set: the batch goes through matmul's L2 tiles.
struct RowKernel {
    dot_rows_fn gemv = nullptr;
    dot_tile_fn tile = nullptr;
    const uint8_t* w = nullptr;  // the rows it reads (the copy or the weights)
    bool any() const { return gemv || tile; }
};

RowKernel row_kernel(const KernelSet& ks, int type, const uint8_t* w, int64_t n_rows, int64_t batch, const uint8_t* w_il) {
    const bool il = reads_copy(ks, type, n_rows, w_il);
    if (batch == 1) {
        if (il) return {ks.dot_gemv_il[type], nullptr, w_il};
        return {repacked(ks, type, n_rows) ? ks.dot_gemv[type] : ks.dot[type], nullptr, w};
    }
    if (il && ks.dot_tile_il[type]) return {nullptr, ks.dot_tile_il[type], w_il};
    return {};
}

// X in the weight type's vec_dot format: integer weight types multiply int8
// activations, converted once rather than per row; float weights take x.
struct Activations {
    std::unique_ptr<uint8_t[]> buf;
    const uint8_t* data;
    size_t row_bytes;
};

Activations activations(const KernelSet& ks, ThreadPool& pool, int type, const float* x, int64_t batch, int64_t k) {
    const int vdt = TYPE_TRAITS[type].vec_dot_type;
    Activations a{nullptr, reinterpret_cast<const uint8_t*>(x), (size_t)k * sizeof(float)};
    if (vdt != TYPE_F32) {
        a.row_bytes = row_bytes(vdt, k);
        a.buf.reset(new uint8_t[a.row_bytes * batch]);
        quantize_activations(ks, pool, type, x, batch, k, a.buf.get());
        a.data = a.buf.get();
    }
    return a;
}

// Rows [r0, r1) of one matrix through its RowKernel.
void run_rows(const RowKernel& rk, int type, int64_t n_rows, int64_t k, const Activations& a, int64_t batch, float* y,
              int64_t r0, int64_t r1) {
    const size_t w_rb = row_bytes(type, k);
    if (rk.gemv) rk.gemv(k, r1 - r0, rk.w + r0 * w_rb, w_rb, a.data, y + r0);
    else rk.tile(k, r1 - r0, rk.w + r0 * w_rb, w_rb, a.data, a.row_bytes, batch, y + r0, n_rows);
}

// How a run of split rows is cut: a multiple of every interleaved group.
constexpr int64_t SPLIT_ROWS = 16;

}  // namespace

void matmul(const KernelSet& ks, ThreadPool& pool, int type, const uint8_t* w, int64_t n_rows, int64_t k,
            const float* x, int64_t batch, float* y, const uint8_t* w_il) {
    const size_t w_rb = row_bytes(type, k);
    const Activations a = activations(ks, pool, type, x, batch, k);
    const uint8_t* xq = a.data;
    const size_t x_rb = a.row_bytes;
    // One token, or a batch from a copy with its own tile: split as a stream,
    // a long run per thread (4 sequences a step from x16 copies, against
    // L2-sized tiles: SmolLM2 +6%, Gemma 3 +29%; prompts within 3%).
    if (const RowKernel rk = row_kernel(ks, type, w, n_rows, batch, w_il); rk.any()) {
        parallel_guided(pool, n_rows, SPLIT_ROWS, n_rows * w_rb * batch,
                        [&](int64_t r0, int64_t r1) { run_rows(rk, type, n_rows, k, a, batch, y, r0, r1); });
        return;
    }
    dot_rows_fn dot = ks.dot[type];
    const bool packed = repacked(ks, type, n_rows);
    const int64_t n_gemm = packed && batch > 3 ? batch - batch % 4 : 0;
    // Weights llama.cpp keeps as they are: its tiled kernel for batches of 8 or
    // more (k-quants), llamafile's tinyBLAS for batches of 2 or more (F32).
    if (!packed && batch >= 8 && ks.dot_tiled[type]) dot = ks.dot_tiled[type];
    if (batch >= 2 && k % ks.lanes == 0 && n_rows % 4 == 0 && ks.dot_sgemm[type]) dot = ks.dot_sgemm[type];
    auto dot_for = [&](int64_t b) { return !packed ? dot : b < n_gemm ? ks.dot_gemm[type] : ks.dot_gemv[type]; };
    const bool il = reads_copy(ks, type, n_rows, w_il);

    // Batched: a tile of weight rows stays in L2 while every activation row
    // passes over it, so weights are read from memory once per call.
    // Tiles are whole groups of 16 rows, the avx512 row-per-lane tiles' unit
    // (tiles.cpp), which the others' (8 repacked rows, 4 or 2 plain) divide.
    constexpr int64_t group = 16;
    int64_t tile = std::max<int64_t>(group, std::min<int64_t>(64, (int64_t)((256 * 1024) / std::max<size_t>(w_rb, 1)) & ~(group - 1)));
    // Whole rounds of tiles for the threads: a decode step's small matrices
    // have few tiles (k and v of a small model: 3 of 64 rows), and one thread
    // taking one more than the others leaves them idle for that long.
    const int64_t nth = pool.size();
    if (int64_t n_tiles = (n_rows + tile - 1) / tile; nth > 1 && n_tiles % nth) {
        n_tiles += nth - n_tiles % nth;
        tile = std::max(group, ((n_rows + n_tiles - 1) / n_tiles + group - 1) / group * group);
    }
    const dot_tile_fn dot_tile = packed                    ? ks.dot_tile_packed[type]
                                 : dot == ks.dot[type]       ? ks.dot_tile[type]
                                 : dot == ks.dot_tiled[type] ? ks.dot_tile_tiled[type]
                                                             : nullptr;
    // From the interleaved copy without a tile of its own, batches
    // (compute-bound) take each tile's rows back to row order, in cache, for
    // the kernels above.
    auto rows_of = [&](int64_t r0, int64_t r1) -> const uint8_t* {
        if (!il) return w + r0 * w_rb;
        thread_local std::vector<uint8_t> rows;
        rows.resize((size_t)(r1 - r0) * w_rb);
        deinterleave_rows(type, w_il + r0 * w_rb, r1 - r0, k, rows.data());
        return rows.data();
    };
    parallel_chunks(pool, n_rows, tile, n_rows * w_rb * batch, [&](int64_t r0, int64_t r1) {
        const uint8_t* wr = rows_of(r0, r1);
        if (dot_tile) dot_tile(k, r1 - r0, wr, w_rb, xq, x_rb, batch, y + r0, n_rows);
        else
            for (int64_t b = 0; b < batch; b++) dot_for(b)(k, r1 - r0, wr, w_rb, xq + b * x_rb, y + b * n_rows + r0);
    });
}

void matmul_shared_x(const KernelSet& ks, ThreadPool& pool, const MatrixOut* m, int n, int64_t k, const float* x, int64_t batch) {
    std::vector<RowKernel> rk(n);
    for (int i = 0; i < n; i++) {
        rk[i] = row_kernel(ks, m[i].type, m[i].w, m[i].n_rows, batch, m[i].w_il);
        if (!rk[i].any()) {  // one of them through L2 tiles: each on its own
            for (int j = 0; j < n; j++) matmul(ks, pool, m[j].type, m[j].w, m[j].n_rows, k, x, batch, m[j].y, m[j].w_il);
            return;
        }
    }
    std::vector<Activations> acts;  // one per activation format, made by the first matrix of that format
    std::vector<size_t> act_of(n);
    std::vector<int64_t> start(n + 1, 0);  // matrix i's rows are [start[i], start[i + 1]) of the run
    size_t bytes = 0;
    for (int i = 0; i < n; i++) {
        const int vdt = TYPE_TRAITS[m[i].type].vec_dot_type;
        int first = 0;
        while (TYPE_TRAITS[m[first].type].vec_dot_type != vdt) first++;
        if (first == i) {
            act_of[i] = acts.size();
            acts.push_back(activations(ks, pool, m[i].type, x, batch, k));
        } else {
            act_of[i] = act_of[first];
        }
        start[i + 1] = start[i] + m[i].n_rows;
        bytes += m[i].n_rows * row_bytes(m[i].type, k) * batch;
    }
    auto part = [&](int64_t r) {
        int i = 0;
        while (r >= start[i + 1]) i++;
        return i;
    };
    parallel_guided(
        pool, start[n], SPLIT_ROWS, bytes,
        [&](int64_t r0, int64_t r1) {
            const int i = part(r0);
            run_rows(rk[i], m[i].type, m[i].n_rows, k, acts[act_of[i]], batch, m[i].y, r0 - start[i], r1 - start[i]);
        },
        [&](int64_t r) { return start[part(r) + 1]; });
}

void dequantize(const KernelSet& ks, ThreadPool& pool, int type, const uint8_t* src, int64_t n_rows, int64_t k, float* dst) {
    const size_t rb = row_bytes(type, k);
    dequant_row_fn f = ks.dequant[type];
    parallel_chunks(pool, n_rows, row_chunk(n_rows, pool.size(), 1), n_rows * k * sizeof(float), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; r++) f(src + r * rb, dst + r * k, k);
    });
}

uint64_t stream_read(const KernelSet& ks, ThreadPool& pool, const uint8_t* buf, size_t n) {
    // Whole words from the first 8-byte boundary on; the bytes before and after it are added one by one.
    const size_t head = std::min(n, (size_t)(-(uintptr_t)buf % sizeof(uint64_t)));
    const size_t words = (n - head) / sizeof(uint64_t);
    const uint64_t* p = reinterpret_cast<const uint64_t*>(buf + head);
    std::vector<uint64_t> partial(pool.size(), 0);
    pool.run([&](int ith, int nth) {
        const size_t per = (words + nth - 1) / nth;
        const size_t a = std::min(words, per * ith), b = std::min(words, a + per);
        partial[ith] = ks.sum_words(p + a, b - a);
    });
    uint64_t s = 0;
    for (uint64_t v : partial) s += v;
    for (size_t i = 0; i < head; i++) s += buf[i];
    for (size_t i = head + words * sizeof(uint64_t); i < n; i++) s += buf[i];
    return s;
}

}  // namespace ll
