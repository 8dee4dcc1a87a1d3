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
template <typename F>
void parallel_guided(ThreadPool& pool, int64_t n, int64_t min_chunk, size_t work_bytes, F&& body) {
    if (n <= 0) return;
    const int64_t nth = pool.size();
    if (nth == 1 || n <= min_chunk || work_bytes < MIN_PARALLEL_BYTES) {
        body(0, n);
        return;
    }
    std::atomic<int64_t> next{0};
    pool.run([&](int, int) {
        int64_t r0 = next.load(std::memory_order_relaxed);
        while (r0 < n) {
            const int64_t share = (n - r0) / (2 * nth) / min_chunk * min_chunk;
            const int64_t r1 = std::min(n, r0 + std::max(min_chunk, share));
            if (next.compare_exchange_weak(r0, r1, std::memory_order_relaxed)) {
                body(r0, r1);
                r0 = next.load(std::memory_order_relaxed);
            }
        }
    });
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

void matmul(const KernelSet& ks, ThreadPool& pool, int type, const uint8_t* w, int64_t n_rows, int64_t k,
            const float* x, int64_t batch, float* y, const uint8_t* w_il) {
    const int vdt = TYPE_TRAITS[type].vec_dot_type;
    const size_t w_rb = row_bytes(type, k);
    dot_rows_fn dot = ks.dot[type];
    // Weights llama.cpp would repack (see KernelSet): its gemm for the rows in
    // full groups of four, its gemv for the rest.
    const bool packed = n_rows % 8 == 0 && ks.dot_gemv[type] && ks.dot_gemm[type];
    const int64_t n_gemm = packed && batch > 3 ? batch - batch % 4 : 0;
    // Weights it keeps as they are: its tiled kernel for batches of 8 or more
    // (k-quants), llamafile's tinyBLAS for batches of 2 or more (F32).
    if (!packed && batch >= 8 && ks.dot_tiled[type]) dot = ks.dot_tiled[type];
    if (batch >= 2 && k % ks.lanes == 0 && n_rows % 4 == 0 && ks.dot_sgemm[type]) dot = ks.dot_sgemm[type];
    auto dot_for = [&](int64_t b) { return !packed ? dot : b < n_gemm ? ks.dot_gemm[type] : ks.dot_gemv[type]; };
    // The interleaved copy (where the kernels read one): its gemv for one
    // token, its tile (where there is one) for batches
    const bool il = w_il && ks.dot_gemv_il[type] && n_rows % interleave_group(type) == 0;
    const dot_rows_fn gemv_il = il ? ks.dot_gemv_il[type] : nullptr;
    const dot_tile_fn tile_il = il ? ks.dot_tile_il[type] : nullptr;

    // Integer weight types multiply int8 activations: convert X once, not per row.
    std::unique_ptr<uint8_t[]> xq_buf;
    const uint8_t* xq = reinterpret_cast<const uint8_t*>(x);
    size_t x_rb = (size_t)k * sizeof(float);
    if (vdt != TYPE_F32) {
        x_rb = row_bytes(vdt, k);
        xq_buf.reset(new uint8_t[x_rb * batch]);
        quantize_activations(ks, pool, type, x, batch, k, xq_buf.get());
        xq = xq_buf.get();
    }

    if (batch == 1) {
        const dot_rows_fn dot1 = gemv_il ? gemv_il : dot_for(0);
        const uint8_t* w1 = gemv_il ? w_il : w;
        parallel_guided(pool, n_rows, 16, n_rows * w_rb,
                        [&](int64_t r0, int64_t r1) { dot1(k, r1 - r0, w1 + r0 * w_rb, w_rb, xq, y + r0); });
        return;
    }
    // Batched from an interleaved copy with a tile of its own: that tile takes
    // every token over a group of rows before the next group, so the weights
    // are read once however the rows are split, and they are split as for one
    // token: a long run per thread, streamed (4 sequences a step, against
    // L2-sized tiles: SmolLM2 +6%, Gemma 3 +29%; prompts within 3%).
    if (tile_il) {
        parallel_guided(pool, n_rows, interleave_group(type), n_rows * w_rb * batch,
                        [&](int64_t r0, int64_t r1) { tile_il(k, r1 - r0, w_il + r0 * w_rb, w_rb, xq, x_rb, batch, y + r0, n_rows); });
        return;
    }
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
        if (!gemv_il) return w + r0 * w_rb;
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
