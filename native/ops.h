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

// dst = dequantized src, n_rows rows of k weights each.
void dequantize(const KernelSet& ks, ThreadPool& pool, int type, const uint8_t* src, int64_t n_rows, int64_t k, float* dst);

// Converts n_rows activation rows of k floats to `weight_type`'s vec_dot format (dst: n_rows * row_bytes(vdt, k)).
void quantize_activations(const KernelSet& ks, ThreadPool& pool, int weight_type, const float* x, int64_t n_rows,
                          int64_t k, uint8_t* dst);

// Reads n bytes once on every pool thread's share and returns a checksum: the
// memory-bandwidth probe the benchmarks compare kernels against.
uint64_t stream_read(const KernelSet& ks, ThreadPool& pool, const uint8_t* buf, size_t n);

}  // namespace ll
