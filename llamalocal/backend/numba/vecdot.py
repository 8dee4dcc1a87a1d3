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
from .ggml_math import F0, fma
from .simd import f16, fma8, hsum8, isum8, lanes_q4, lanes_q5, lanes_q8, sums_q6_k, zeros8

# Format codes of the kernels (matmul maps the GGMLTypes to them)
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q6_K = range(6)


@njit(cache=True, nogil=True)
def _rows_q4_0_packed(w, xq, xd, out, r0, r1):
    nb = xq.shape[1] // QK
    for r in range(r0, r1):
        row = w[r]
        for b in range(xq.shape[0]):
            x, d = xq[b], xd[b]
            a = F0
            for i in range(nb):
                s = isum8(lanes_q4(row, 18 * i + 2, x, QK * i, 8))
                a = fma(np.float32(s), f16(row, 18 * i) * d[i], a)
            out[b, r] = a


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


@njit(cache=True, nogil=True)
def _rows(kind, packed, w, xq, xd, xs, bsums, out, r0, r1):
    if kind == Q4_0:
        if packed:
            _rows_q4_0_packed(w, xq, xd, out, r0, r1)
        else:
            _rows_q4_0(w, xq, xd, out, r0, r1)
    elif kind == Q4_1:
        _rows_q4_1(w, xq, xd, xs, out, r0, r1)
    elif kind == Q5_0:
        _rows_q5_0(w, xq, xd, out, r0, r1)
    elif kind == Q5_1:
        _rows_q5_1(w, xq, xd, xs, out, r0, r1)
    elif kind == Q6_K:
        _rows_q6_k(w, xq, xd, bsums, out, r0, r1)
    else:
        _rows_q8_0(w, xq, xd, out, r0, r1)


@njit(cache=True, parallel=True)
def mm_vecdot(kind, packed, w, xq, xd, xs, bsums, out, chunks):
    """out[b, r] = weight row r (format `kind`, the repacked Q4_0 kernel when
    `packed`) . activation row b: int8 quants xq (B, K), block scales xd and,
    for Q8_1, block sums xs (B, K // 32), for Q8_K its sums per 16 bsums
    (B, K // 16); the rows in `chunks` contiguous
    ranges, one per thread (numba's get_num_threads() in here would make the
    function uncacheable)."""
    n = w.shape[0]
    for t in prange(chunks):
        _rows(kind, packed, w, xq, xd, xs, bsums, out, n * t // chunks, n * (t + 1) // chunks)
