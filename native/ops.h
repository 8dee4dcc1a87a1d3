// Drivers over the leaf kernels: threading, activation conversion, tiling.
// All pointers are raw and already validated by the caller (bindings.cpp).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels.h"
#include "threadpool.h"

namespace ll {

// Y[b, r] = sum_k X[b, k] * W[r, k]: W is N rows of K weights of `type`
// (row_bytes(type, K) bytes each, contiguous), X is B rows of K floats, Y is B rows of N floats.
// w_il: the same weights interleaved (interleave_rows), read instead of w
// where ks has a dot_gemv_il for the type; null: none.
void matmul(const KernelSet& ks, ThreadPool& pool, int type, const uint8_t* w, int64_t n_rows, int64_t k,
            const float* x, int64_t batch, float* y, const uint8_t* w_il = nullptr);

// One matrix of matmul_shared_x: n_rows rows of `type` (w_il: their interleaved
// copy, or null), Y written to y (batch rows of n_rows floats).
struct MatrixOut {
    int type;
    const uint8_t* w;
    const uint8_t* w_il;
    int64_t n_rows;
    float* y;
};

// matmul of n matrices by the same X (a layer's q, k and v; gate and up): X
// converted once per activation format and, where every matrix's rows can be
// split freely (one token, or batches from copies with their own tiles), all
// their rows in one run of the pool, so the threads meet once rather than
// once per matrix.  The same floats as n matmul calls.
void matmul_shared_x(const KernelSet& ks, ThreadPool& pool, const MatrixOut* m, int n, int64_t k, const float* x, int64_t batch);

// dst = dequantized src, n_rows rows of k weights each.
void dequantize(const KernelSet& ks, ThreadPool& pool, int type, const uint8_t* src, int64_t n_rows, int64_t k, float* dst);

// Converts n_rows activation rows of k floats to `weight_type`'s vec_dot format (dst: n_rows * row_bytes(vdt, k)).
void quantize_activations(const KernelSet& ks, ThreadPool& pool, int weight_type, const float* x, int64_t n_rows,
                          int64_t k, uint8_t* dst);

// Reads n bytes once on every pool thread's share and returns a checksum: the
// memory-bandwidth probe the benchmarks compare kernels against.
uint64_t stream_read(const KernelSet& ks, ThreadPool& pool, const uint8_t* buf, size_t n);

}  // namespace ll
