"""Portable numba backend, used when the C++ extension is not built.

It serves the same kernel API as the native module: `matmul(qtype, w, x)`
computes Y = X . W^T for a weight matrix stored row-wise in a ggml block
format, with the native scalar path's arithmetic (LLAMALOCAL_ISA=scalar,
native/ops.cpp and native/scalar/*.cpp), bit for bit:

- integer weight formats multiply int8 activations: each activation row is
  first quantized to the weight type's vec_dot type (Q8_0/Q8_1 as llama.cpp's
  runtime quantizers round, Q8_K as ggml's reference one), then
- every output is one of the native kernels, chosen per activation row as
  native matmul() chooses: llama.cpp's x86 vec_dot (exact int32 lane sums
  taken into float FMA chains, ggml's horizontal add), its tiled k-quant
  matmul (batches of 8+), its repacked Q4_0 and Q4_K gemv/gemm (tensors
  with a multiple of 8 rows), ggml_vec_dot_f32 or tinyBLAS for F32 weights.

Integer sums are exact, so only the float steps need the C++ order; those
are written out here one operation at a time in float32 (see ggml_math).
The legacy formats and Q6_K's vec_dot run on vector intrinsics straight
from the blocks (vecdot, simd); the other k-quant kernels decode weights one
row at a time into small integer buffers (reused for every activation row).
Neither makes a float copy of the matrix; rows are spread over threads with
numba's prange, as the native pool splits them.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
from numba import get_num_threads, njit, prange

from ...formats import (
    FORMATS,
    QK_K,
    WEIGHT_TYPES,
    BlockFormat,
    GGMLType,
    block_format,
    quants,
)
from ...formats.fp16 import bits_f32, f16_to_f32, read_f16
from . import vecdot
from .activations import Activations
from .ggml_math import F0, LANES, fma, hsum8, hsum16, reduce4

__all__ = ["matmul", "dequantize", "quantize_activations"]

T = GGMLType
# The one-call kernels of vecdot: type -> (vec_dot kernel, repacked gemv or None)
_VECDOT = {T.Q4_0: (vecdot.mm_q4_0, vecdot.mm_q4_0_packed), T.Q4_1: (vecdot.mm_q4_1, None),
           T.Q5_0: (vecdot.mm_q5_0, None), T.Q5_1: (vecdot.mm_q5_1, None), T.Q8_0: (vecdot.mm_q8_0, None),
           T.Q6_K: (vecdot.mm_q6_k, None)}
_KQUANT = {T.Q2_K: 0, T.Q3_K: 1, T.Q4_K: 2, T.Q5_K: 3, T.Q6_K: 4}
_Q2_K, _Q3_K, _Q4_K, _Q5_K, _Q6_K = range(5)

_U8, _F32 = np.dtype(np.uint8), np.dtype(np.float32)  # dtype == dtype is quicker than dtype == type

# The kernel an activation row gets (native/ops.cpp matmul, KernelSet)
VEC_DOT, TILED, GEMV, GEMM, SGEMM = range(5)

@njit(cache=True, nogil=True)
def _lanes_of_4(v, x, p, lanes):
    """lanes[g] = the exact sum of v * x over weights 4g .. 4g + 3 (products
    p, then their sums: two flat loops that LLVM vectorizes)."""
    for j in range(v.size):
        p[j] = v[j] * x[j]
    for g in range(lanes.size):
        lanes[g] = p[4 * g] + p[4 * g + 1] + p[4 * g + 2] + p[4 * g + 3]


# ----------------------------------------------------------------------------
# k-quants (native/scalar/kquants.cpp)
# ----------------------------------------------------------------------------
# Per super-block the kernels take integer sums into float chains in 8 lanes;
# lane l of sub-block c (32 weights) holds 4 weights: 32c + 4l + e (Q4_K,
# Q5_K, Q6_K: maddubs + madd) or, for Q2_K/Q3_K, whose 16-weight scales come
# in through int16 pairs, 32c + 16(l//4) + 2(l%4) + {0, 1, 8, 9}.  Those are
# decoded (and their activations gathered, _PAIRS_ORDER) in lane order, so
# one loop serves both: lane l of sub-block c is k = 32c + 4l + e, and its
# 16-weight scale group is k // 16 either way.

_PAIRS_ORDER = np.array([32 * c + 16 * (l // 4) + 2 * (l % 4) + (e & 1) + 8 * (e >> 1)
                         for c in range(8) for l in range(8) for e in range(4)], np.int64)


@njit(cache=True, nogil=True)
def _decode_k(kind, row, u, sc, mn, d, dmin):
    """One row of super-blocks -> unsigned values u (lane order, see above;
    Q3_K's and Q6_K's offsets 4 and 32 not removed), scales sc and mins mn
    per 16 weights, and the fp16 d and dmin (0 where a format has none)."""
    order = _PAIRS_ORDER
    for i in range(d.size):
        ub = u[i * QK_K:(i + 1) * QK_K]
        g0 = i * 16
        if kind == _Q2_K:  # scales[16], qs[64], d, dmin
            o = i * 84
            d[i] = read_f16(row, o + 80)
            dmin[i] = read_f16(row, o + 82)
            for g in range(16):
                sc[g0 + g] = np.int32(row[o + g]) & 0xF
                mn[g0 + g] = np.int32(row[o + g]) >> 4
            for k in range(QK_K):
                e = order[k]
                ub[k] = (np.int32(row[o + 16 + 32 * (e // 128) + e % 32]) >> (2 * (e % 128 // 32))) & 3
        elif kind == _Q3_K:  # hmask[32], qs[64], scales[12], d
            o = i * 110
            d[i] = read_f16(row, o + 108)
            dmin[i] = F0
            for g in range(16):  # unpack_q3_k_scales, minus 32
                lo = (np.int32(row[o + 96 + g]) & 0xF) if g < 8 else (np.int32(row[o + 96 + g - 8]) >> 4)
                hi = (np.int32(row[o + 104 + (g & 3)]) >> (2 * (g >> 2))) & 3
                sc[g0 + g] = (lo | (hi << 4)) - 32
                mn[g0 + g] = 0
            for k in range(QK_K):
                e = order[k]
                low = (np.int32(row[o + 32 + 32 * (e // 128) + e % 32]) >> (2 * (e % 128 // 32))) & 3
                ub[k] = low | (((np.int32(row[o + e % 32]) >> (e // 32)) & 1) << 2)
        elif kind == _Q4_K or kind == _Q5_K:  # d, dmin, scales[12], (qh[32],) qs[128]
            five = kind == _Q5_K
            o = i * (176 if five else 144)
            d[i] = read_f16(row, o)
            dmin[i] = read_f16(row, o + 2)
            for j in range(8):  # get_scale_min_k4
                s = o + 4
                if j < 4:
                    scj, mnj = np.int32(row[s + j]) & 63, np.int32(row[s + j + 4]) & 63
                else:
                    scj = (np.int32(row[s + j + 4]) & 0xF) | ((np.int32(row[s + j - 4]) >> 6) << 4)
                    mnj = (np.int32(row[s + j + 4]) >> 4) | ((np.int32(row[s + j]) >> 6) << 4)
                sc[g0 + 2 * j] = sc[g0 + 2 * j + 1] = scj
                mn[g0 + 2 * j] = mn[g0 + 2 * j + 1] = mnj
            qs = o + (48 if five else 16)
            for c in range(4):  # weights 64c + l and 64c + 32 + l share byte qs[32c + l]
                for l in range(32):
                    b = np.int32(row[qs + 32 * c + l])
                    lo, hi = b & 0xF, b >> 4
                    if five:
                        h = np.int32(row[o + 16 + l]) >> (2 * c)
                        lo |= (h & 1) << 4
                        hi |= (h & 2) << 3
                    ub[64 * c + l] = lo
                    ub[64 * c + 32 + l] = hi
        else:  # Q6_K: ql[128], qh[64], scales[16] (int8), d
            o = i * 210
            d[i] = read_f16(row, o + 208)
            dmin[i] = F0
            for g in range(16):
                s = np.int32(row[o + 192 + g])
                sc[g0 + g] = s - 256 if s >= 128 else s
                mn[g0 + g] = 0
            for h in range(2):
                for q in range(4):
                    for l in range(32):
                        lo = (np.int32(row[o + 64 * h + 32 * (q & 1) + l]) >> (4 * (q >> 1))) & 0xF
                        ub[128 * h + 32 * q + l] = lo | (((np.int32(row[o + 128 + 32 * h + l]) >> (2 * q)) & 3) << 4)


@njit(cache=True, parallel=True)
def _mm_kquant(kind, w, variant, xqs, xd, bsums, out):
    """out[b, r] for weight row r and activation row b with the kernel
    variant[b]: VEC_DOT (dot_k), TILED (dot_k_tiled), GEMV / GEMM
    (dot_q4_k_packed<4> / <1>, Q4_K only)."""
    N = w.shape[0]
    B, K = xqs.shape
    nsb = K // QK_K
    for r in prange(N):
        u = np.empty(K, np.int32)
        sc = np.empty(K // 16, np.int32)
        mn = np.empty(K // 16, np.int32)
        d = np.empty(nsb, np.float32)
        dmin = np.empty(nsb, np.float32)
        _decode_k(kind, w[r], u, sc, mn, d, dmin)
        p = np.empty(K, np.int32)
        lanes = np.empty(K // 4, np.int32)
        s = np.empty(8, np.int32)
        m = np.empty(8, np.int32)
        s32 = np.empty(8, np.int32)
        acc = np.empty(8, np.float32)
        accm = np.empty(4, np.float32)
        for b in range(B):
            var = variant[b]
            _lanes_of_4(u, xqs[b], p, lanes)
            acc[:] = F0
            accm[:] = F0
            a1 = F0
            a2 = F0
            for i in range(nsb):
                # klanes: the exact int32 lane sums s (with Q3_K's and Q6_K's
                # offsets through the activation block sums) and m (the mins)
                g0 = 16 * i
                s[:] = 0
                for c in range(8):
                    s32[c] = 0
                    for l in range(8):
                        q4 = lanes[64 * i + 8 * c + l]
                        s[l] += sc[g0 + 2 * c + l // 4] * q4
                        s32[c] += q4
                bs = bsums[b, g0:g0 + 16]
                for l in range(8):
                    if kind == _Q2_K:
                        m[l] = mn[g0 + 2 * l] * bs[2 * l] + mn[g0 + 2 * l + 1] * bs[2 * l + 1]
                    elif (kind == _Q4_K or kind == _Q5_K) and l < 4:
                        m[l] = (mn[g0 + 4 * l] * bs[4 * l] + mn[g0 + 4 * l + 1] * bs[4 * l + 1]
                                + mn[g0 + 4 * l + 2] * bs[4 * l + 2] + mn[g0 + 4 * l + 3] * bs[4 * l + 3])
                    else:
                        m[l] = 0
                    if kind == _Q3_K or kind == _Q6_K:
                        s[l] -= (4 if kind == _Q3_K else 32) * (sc[g0 + 2 * l] * bs[2 * l] + sc[g0 + 2 * l + 1] * bs[2 * l + 1])
                yd = xd[b, i]
                if var == VEC_DOT:
                    # acc = fma(d_w * d_x, s, acc) per lane; Q2_K's mins into the
                    # same lanes, Q4_K/Q5_K's into a 4-lane chain of their own
                    dd = d[i] * yd
                    dm = dmin[i] * yd
                    for l in range(8):
                        acc[l] = fma(dd, np.float32(s[l]), acc[l])
                    if kind == _Q2_K:
                        for l in range(8):
                            acc[l] = fma(-dm, np.float32(m[l]), acc[l])
                    if kind == _Q4_K or kind == _Q5_K:
                        for l in range(4):
                            accm[l] = fma(-dm, np.float32(m[l]), accm[l])
                elif var == TILED:
                    # r = d * s - dmin * m (a product, then fused), acc += r * d_x fused
                    st = 0
                    mt = 0
                    for l in range(8):
                        st += s[l]
                        mt += m[l]
                    rb = fma(-dmin[i], np.float32(mt), d[i] * np.float32(st))
                    a1 = fma(rb, yd, a1)
                else:
                    # repacked Q4_K: exact sums over 4 sub-block pairs (gemv) or
                    # 1 (gemm), each into a chain for d and one for dmin
                    dd = d[i] * yd
                    dm = dmin[i] * yd
                    group = 4 if var == GEMV else 1
                    isum = 0
                    imin = 0
                    for j in range(4):
                        isum += sc[g0 + 4 * j] * s32[2 * j] + sc[g0 + 4 * j + 2] * s32[2 * j + 1]
                        imin += m[j]
                        if (j + 1) % group == 0:
                            a1 = fma(np.float32(isum), dd, a1)
                            a2 = fma(np.float32(imin), dm, a2)
                            isum = 0
                            imin = 0
            if var == VEC_DOT:
                out[b, r] = hsum8(acc, 0) + ((accm[0] + accm[2]) + (accm[1] + accm[3]))
            elif var == TILED:
                out[b, r] = a1
            else:
                out[b, r] = a1 - a2


# ----------------------------------------------------------------------------
# float weights (native/scalar/legacy.cpp dot_f32, dot_f32_sgemm, dot_f16, dot_bf16)
# ----------------------------------------------------------------------------


@njit(cache=True, parallel=True)
def _mm_f32(w, variant, x, out):
    """ggml_vec_dot_f32 (four 16-lane FMA accumulators over chunks of 64,
    ggml_reduce4, the tail one rounded product and add at a time) or tinyBLAS
    (one 16-lane FMA accumulator, then its horizontal sum)."""
    N, K = w.shape
    B = x.shape[0]
    kp = K & ~(4 * LANES - 1)
    for r in prange(N):
        wr = w[r]
        acc = np.empty(4 * LANES, np.float32)
        for b in range(B):
            xb = x[b]
            acc[:] = F0
            if variant[b] == SGEMM:
                for k in range(K):
                    acc[k % LANES] = fma(wr[k], xb[k], acc[k % LANES])
                out[b, r] = hsum16(acc, 0)
                continue
            for k0 in range(0, kp, 4 * LANES):
                for a in range(4 * LANES):
                    acc[a] = fma(wr[k0 + a], xb[k0 + a], acc[a])
            s = reduce4(acc)
            for k in range(kp, K):
                s += wr[k] * xb[k]
            out[b, r] = s


@njit(cache=True, parallel=True)
def _mm_half(w, bf16, x, out):
    """F16 / BF16 weights (uint16 bits): one rounded product and add at a time."""
    N, K = w.shape
    B = x.shape[0]
    for r in prange(N):
        row = np.empty(K, np.float32)
        for k in range(K):
            row[k] = bits_f32(np.int64(w[r, k]) << 16) if bf16 else f16_to_f32(w[r, k])
        for b in range(B):
            s = F0
            for k in range(K):
                s += row[k] * x[b, k]
            out[b, r] = s


# ----------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------


# qtype (a GGMLType, its id or its name) -> its BlockFormat: a model's layers
# make ~200 matmul calls per token, and block_format's lookup showed up
_WEIGHT_FORMATS: dict = {}


def _weight_format(qtype) -> BlockFormat:
    try:
        return _WEIGHT_FORMATS[qtype]
    except (KeyError, TypeError):  # not seen yet, or unhashable (block_format says what is wrong)
        pass
    fmt = block_format(qtype)
    if fmt.type not in WEIGHT_TYPES:
        raise ValueError(f"{fmt.name} is an activation format, not a weight type "
                         f"(weight types: {', '.join(t.name for t in WEIGHT_TYPES)})")
    _WEIGHT_FORMATS[qtype] = fmt
    return fmt


def _check_array(name: str, a, dtype, ndims: tuple[int, ...]) -> np.ndarray:
    if isinstance(a, np.ndarray) and a.dtype == dtype and a.ndim in ndims and a.flags.c_contiguous:
        return a  # the common case in one test; the ones below say what is wrong
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}, got {a.dtype}")
    if a.ndim not in ndims:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndims))} dimensions, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    return a


def _check_activations(x) -> np.ndarray:
    x = _check_array("x", x, _F32, (1, 2))
    return x.reshape(1, -1) if x.ndim == 1 else x


def quantize_activations(qtype_of_weights, x) -> np.ndarray:
    """Activation rows (K,) or (B, K) in the weights' vec_dot format, as uint8
    (..., row_bytes), byte for byte as the native quantize_activations.  Float
    weight types take activations as plain F32."""
    fmt = _weight_format(qtype_of_weights)
    x2 = _check_activations(x)
    vfmt = FORMATS[fmt.vec_dot_type]
    if x2.shape[1] % vfmt.block_size:
        raise ValueError(f"x: length {x2.shape[1]} is not a multiple of the {vfmt.name} block size {vfmt.block_size}")
    if vfmt.type == T.F32:
        return x.view(np.uint8).copy()
    return Activations(vfmt.type, x2).packed().reshape(*x.shape[:-1], -1)


def dequantize(qtype, w) -> np.ndarray:
    """Weights (..., row_bytes) -> float32 (..., K)."""
    return quants.dequantize(w, qtype)


def kernel_variants(qtype, n_rows: int, k: int, batch: int) -> np.ndarray:
    """The kernel native matmul() gives each activation row (native/ops.cpp):
    repacked Q4_0 (a multiple of 8 rows) its gemv / gemm, which agree;
    repacked Q4_K (a multiple of 8 rows) takes its gemm for the rows in full
    groups of four (batches of more than three) and its gemv for the others;
    other k-quants their tiled kernel from 8 rows on; F32 tinyBLAS from 2
    rows on when k % 16 == 0 and n_rows % 4 == 0; everything else vec_dot."""
    t = block_format(qtype).type
    v = np.full(batch, VEC_DOT, np.int64)
    if t == T.Q4_0 and n_rows % 8 == 0:
        v[:] = GEMV  # its gemv and gemm agree
    elif t == T.Q4_K and n_rows % 8 == 0:
        n_gemm = batch - batch % 4 if batch > 3 else 0
        v[:] = GEMV
        v[:n_gemm] = GEMM
    elif t in _KQUANT and batch >= 8:
        v[:] = TILED
    elif t == T.F32 and batch >= 2 and k % LANES == 0 and n_rows % 4 == 0:
        v[:] = SGEMM
    return v


def _run_vecdot(t, w, x2, out2) -> None:
    """A format's one-call kernel of vecdot.py (kernel_variants' choice for it,
    without its array) on rows (B, K) of activations, over the threads."""
    vec_dot, gemv = _VECDOT[t]
    kernel = gemv if gemv is not None and len(w) % 8 == 0 else vec_dot
    kernel(w, x2, out2, min(get_num_threads(), len(w)))


def row_kernel(qtype, w) -> Optional[Callable]:
    """What matmul() runs on one activation row for these weights (rows of a
    format with a one-call kernel in vecdot.py), as f(x (1, K), out (1, N)),
    for callers that have checked the shapes once already (the layer's decode
    step); None for the formats matmul() runs otherwise."""
    t = _weight_format(qtype).type
    if t not in _VECDOT:
        return None
    return lambda x, out: _run_vecdot(t, w, x, out)


def matmul(qtype, w, x, out=None) -> np.ndarray:
    """Y = X . W^T for W (N, row_bytes) in format `qtype` and float32 X of
    shape (K,) or (B, K); returns float32 (N,) or (B, N), written into `out`
    when given."""
    fmt = _weight_format(qtype)
    w = _check_array("w", w, _U8, (2,))
    x2 = _check_activations(x)
    N = w.shape[0]
    B, K = x2.shape
    if K % fmt.block_size:
        raise ValueError(f"x: length {K} is not a multiple of the {fmt.name} block size {fmt.block_size}")
    if w.shape[1] != fmt.row_bytes(K):
        raise ValueError(f"w: rows of {w.shape[1]} bytes do not match K={K}: "
                         f"{fmt.name} needs {fmt.row_bytes(K)} bytes per row")
    shape = (N,) if x.ndim == 1 else (B, N)
    if out is None:
        out = np.empty(shape, np.float32)
    else:
        _check_array("out", out, _F32, (len(shape),))
        if out.shape != shape:
            raise ValueError(f"out must have shape {shape}, got {out.shape}")
    out2 = out.reshape(B, N)
    if N == 0 or B == 0:
        return out
    if K == 0:
        out2[...] = 0.0
        return out

    t = fmt.type
    if t in _VECDOT and (B < 8 or t != T.Q6_K):  # Q6_K: below the tiled kernel's 8 rows
        _run_vecdot(t, w, x2, out2)
        return out
    variant = kernel_variants(t, N, K, B)
    if t == T.F32:
        _mm_f32(w.view(np.float32), variant, x2, out2)
    elif t in (T.F16, T.BF16):
        _mm_half(w.view(np.uint16), t == T.BF16, x2, out2)
    else:
        a = Activations(T.Q8_K, x2)
        qs = a.qs if t not in (T.Q2_K, T.Q3_K) else np.ascontiguousarray(
            a.qs.reshape(B, -1, QK_K)[:, :, _PAIRS_ORDER].reshape(B, K))
        _mm_kquant(_KQUANT[t], w, variant, qs, a.d, a.bsums, out2)
    return out
