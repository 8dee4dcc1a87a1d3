"""The vec_dot kernels on vector intrinsics: the legacy formats' matmul
(native/scalar/legacy.cpp dot_blocks), Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0
weights times Q8_0 / Q8_1 activation rows, and Q6_K's dot_k
(native/scalar/kquants.cpp) times Q8_K rows.

llama.cpp's x86 vec_dot, per block of 32 weights: 8 exact int32 lanes of 4
products, lane l into float chain l by acc = fma(d_w * d_x, lane, acc); the
chains meet in ggml's horizontal add; Q4_1/Q5_1 add min * s_x in a fused
chain of their own, added last (Q4_0/Q5_0/Q8_0 have no min: their chain
stays +0, and the final + 0 is kept for what it does to a -0 sum).  The
repacked Q4_0 kernel (dot_q4_0_packed, tensors of a multiple of 8 rows)
takes each block's exact sum into one chain instead: acc = fma(sum, d_w *
d_x, acc).  Q6_K's dot_k has the same 8 chains per super-block of 256, fed
its scaled lane sums (simd.sums_q6_k); its min chain is empty (+0 again).

The block products are the vector intrinsics of `simd`; each weight row is
read straight from its blocks, once per activation row, with no decoded
copy.  Rows are split into one contiguous chunk per thread, and each
format has its own small loop so that no format test sits in a block loop.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ...formats import QK, QK_K
from .activations import quant_q8, quant_q8_k_rows
from .ggml_math import F0, fma
from .simd import (
    f16,
    fma8,
    fma8_rows,
    hsum8,
    lanes_q4,
    lanes_q5,
    lanes_q8,
    scales8,
    store8,
    sums8_q4,
    sums_q6_k,
    zeros8,
)


@njit(cache=True, nogil=True)
def _rows_q4_0_packed(w, xq, xd, xsum, out, r0, r1):
    """Rows r0 .. r1 (multiples of 8) eight at a time, a lane per row, as
    the interleaved gemv lays them out: each block's exact sum (sum(q * x)
    minus 8 * sum(x), the latter per activation block in xsum) into the
    row's chain, acc = fma(sum, d_w * d_x, acc)."""
    nb = xq.shape[1] // QK
    for r in range(r0, r1, 8):
        for b in range(xq.shape[0]):
            x, d, xs = xq[b], xd[b], xsum[b]
            acc = zeros8()
            for i in range(nb):
                acc = fma8_rows(sums8_q4(w, r, 18 * i + 2, x, QK * i), 8 * xs[i], scales8(w, r, 18 * i), d[i], acc)
            store8(out[b], r, acc)


@njit(cache=True, nogil=True)
def _rows_q4_0(w, xq, xd, out, r0, r1):
    nb = xq.shape[1] // QK
    for r in range(r0, r1):
        row = w[r]
        for b in range(xq.shape[0]):
            x, d = xq[b], xd[b]
            acc = zeros8()
            for i in range(nb):
                acc = fma8(f16(row, 18 * i) * d[i], lanes_q4(row, 18 * i + 2, x, QK * i, 8), acc)
            out[b, r] = hsum8(acc) + F0


@njit(cache=True, nogil=True)
def _rows_q5_0(w, xq, xd, out, r0, r1):
    nb = xq.shape[1] // QK
    for r in range(r0, r1):
        row = w[r]
        for b in range(xq.shape[0]):
            x, d = xq[b], xd[b]
            acc = zeros8()
            for i in range(nb):
                o = 22 * i
                acc = fma8(f16(row, o) * d[i], lanes_q5(row, o + 2, o + 6, x, QK * i, 16), acc)
            out[b, r] = hsum8(acc) + F0


@njit(cache=True, nogil=True)
def _rows_q8_0(w, xq, xd, out, r0, r1):
    nb = xq.shape[1] // QK
    for r in range(r0, r1):
        row = w[r]
        for b in range(xq.shape[0]):
            x, d = xq[b], xd[b]
            acc = zeros8()
            for i in range(nb):
                acc = fma8(f16(row, 34 * i) * d[i], lanes_q8(row, 34 * i + 2, x, QK * i), acc)
            out[b, r] = hsum8(acc) + F0


@njit(cache=True, nogil=True)
def _rows_q4_1(w, xq, xd, xs, out, r0, r1):
    nb = xq.shape[1] // QK
    for r in range(r0, r1):
        row = w[r]
        for b in range(xq.shape[0]):
            x, d, s = xq[b], xd[b], xs[b]
            acc = zeros8()
            c = F0
            for i in range(nb):
                o = 20 * i
                acc = fma8(f16(row, o) * d[i], lanes_q4(row, o + 4, x, QK * i, 0), acc)
                c = fma(f16(row, o + 2), s[i], c)
            out[b, r] = hsum8(acc) + c


@njit(cache=True, nogil=True)
def _rows_q5_1(w, xq, xd, xs, out, r0, r1):
    nb = xq.shape[1] // QK
    for r in range(r0, r1):
        row = w[r]
        for b in range(xq.shape[0]):
            x, d, s = xq[b], xd[b], xs[b]
            acc = zeros8()
            c = F0
            for i in range(nb):
                o = 24 * i
                acc = fma8(f16(row, o) * d[i], lanes_q5(row, o + 4, o + 8, x, QK * i, 0), acc)
                c = fma(f16(row, o + 2), s[i], c)
            out[b, r] = hsum8(acc) + c


@njit(cache=True, nogil=True)
def _rows_q6_k(w, xq, xd, bsums, out, r0, r1):
    nsb = xq.shape[1] // QK_K
    for r in range(r0, r1):
        row = w[r]
        for b in range(xq.shape[0]):
            x, d, bs = xq[b], xd[b], bsums[b]
            acc = zeros8()
            for i in range(nsb):
                o = 210 * i
                acc = fma8(f16(row, o + 208) * d[i], sums_q6_k(row, o, x, QK_K * i, bs, 16 * i), acc)
            out[b, r] = hsum8(acc) + F0


# ----------------------------------------------------------------------------
# one parallel function per kernel
# ----------------------------------------------------------------------------
# Each takes the float activations (B, K) and quantizes them first, so a
# matmul is one call from Python.  They are separate functions rather than
# one with a format argument because numba compiles a function whole: this
# way a model compiles only the kernels of the formats it has, and the
# parallel region (slow to compile) holds one format's code.  `chunks` is
# the thread count: numba's get_num_threads() inside would make the
# functions uncacheable.


@njit(cache=True, nogil=True)
def _q8(x):
    """x (B, K) as Q8_1: quants, block scales, block sums.  Q8_0's quants and
    scales are the same numbers: the kernels that take Q8_0 ignore the sums
    (one compiled quantizer instead of one per flag value)."""
    B, K = x.shape
    qs = np.empty((B, K), np.int8)
    bits = np.empty((B, K // QK), np.uint16)
    d = np.empty((B, K // QK), np.float32)
    s = np.empty((B, K // QK), np.float32)
    quant_q8(x, True, qs, bits, bits, d, s)
    return qs, d, s


@njit(cache=True, nogil=True)
def _block_sums(qs):
    """The exact sum of each block of 32 quants, int32 (B, K // 32)."""
    B, K = qs.shape
    sums = np.zeros((B, K // QK), np.int32)
    for b in range(B):
        for k in range(K):
            sums[b, k // QK] += qs[b, k]
    return sums


@njit(cache=True, parallel=True)
def mm_q4_0_packed(w, x, out, chunks):
    qs, d, _ = _q8(x)
    xsum = _block_sums(qs)
    n8 = w.shape[0] // 8  # the repacked kernel's tensors have a multiple of 8 rows
    for t in prange(chunks):
        _rows_q4_0_packed(w, qs, d, xsum, out, 8 * (n8 * t // chunks), 8 * (n8 * (t + 1) // chunks))


@njit(cache=True, parallel=True)
def mm_q4_0(w, x, out, chunks):
    qs, d, _ = _q8(x)
    n = w.shape[0]
    for t in prange(chunks):
        _rows_q4_0(w, qs, d, out, n * t // chunks, n * (t + 1) // chunks)


@njit(cache=True, parallel=True)
def mm_q4_1(w, x, out, chunks):
    qs, d, s = _q8(x)
    n = w.shape[0]
    for t in prange(chunks):
        _rows_q4_1(w, qs, d, s, out, n * t // chunks, n * (t + 1) // chunks)


@njit(cache=True, parallel=True)
def mm_q5_0(w, x, out, chunks):
    qs, d, _ = _q8(x)
    n = w.shape[0]
    for t in prange(chunks):
        _rows_q5_0(w, qs, d, out, n * t // chunks, n * (t + 1) // chunks)


@njit(cache=True, parallel=True)
def mm_q5_1(w, x, out, chunks):
    qs, d, s = _q8(x)
    n = w.shape[0]
    for t in prange(chunks):
        _rows_q5_1(w, qs, d, s, out, n * t // chunks, n * (t + 1) // chunks)


@njit(cache=True, parallel=True)
def mm_q8_0(w, x, out, chunks):
    qs, d, _ = _q8(x)
    n = w.shape[0]
    for t in prange(chunks):
        _rows_q8_0(w, qs, d, out, n * t // chunks, n * (t + 1) // chunks)


@njit(cache=True, parallel=True)
def mm_q6_k(w, x, out, chunks):
    B, K = x.shape
    qs = np.empty((B, K), np.int8)
    d = np.empty((B, K // QK_K), np.float32)
    bsums = np.empty((B, K // 16), np.int32)
    quant_q8_k_rows(x, qs, d, bsums)
    n = w.shape[0]
    for t in prange(chunks):
        _rows_q6_k(w, qs, d, bsums, out, n * t // chunks, n * (t + 1) // chunks)
