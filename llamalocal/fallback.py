"""Portable numba backend, used when the C++ extension is not built.

It serves the same kernel API as the native module: `matmul(qtype, w, x)`
computes Y = X . W^T for a weight matrix stored row-wise in a ggml block
format.  Like the native kernels (and ggml), integer weight formats are not
multiplied in float: each activation row is first quantized to the weight
type's `vec_dot_type` (Q8_0, Q8_1 or Q8_K) and every block contributes
d_w * d_x * sum(q_w * q_x), plus for the affine formats the weight min times
the activation's block sum.  That sum is what ggml and the native kernels use:
Q8_K's exact integer bsums times d, and Q8_1's stored fp16 s = d*sum(q) for
Q4_1/Q5_1.  So the result is the float64 dot product of the dequantized
operands (with Q8_1's s in place of d*sum(q)) up to float roundoff.

Weights are decoded one row at a time into small integer buffers (reused for
every activation row), never into a float copy of the matrix; rows are spread
over threads with numba's prange.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import quants
from .formats import FORMATS, QK, QK_K, WEIGHT_TYPES, BlockFormat, GGMLType, block_format
from .quants_k import q3k_scale, scale_min_k4

__all__ = ["matmul", "dequantize", "quantize_activation"]

T = GGMLType
_TS = {t: f.type_size for t, f in FORMATS.items()}

# bits -> float32 lookup tables for the 16-bit float weight types
_F16_LUT = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
_BF16_LUT = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)

# Row decoder selector.  Every integer format is decoded to the same shape:
# int32 quants q (k-quants with their integer sub-block scale already
# multiplied in), one float64 scale ws per block (32 legacy weights or a
# 256-weight super-block) and, for the affine kinds, one float64 offset wm
# per group of 32 (legacy) or 16 (k-quants): weight = ws*q + wm.  Scales and
# offsets are fp16 times small integers, exact in float64, so a single kernel
# serves all formats and a block's integer dot needs one flat loop.
_KIND = {T.Q4_0: 0, T.Q5_0: 1, T.Q8_0: 2, T.Q4_1: 3, T.Q5_1: 4,
         T.Q2_K: 5, T.Q3_K: 6, T.Q4_K: 7, T.Q5_K: 8, T.Q6_K: 9}
_FIRST_K_KIND = 5
_AFFINE_KINDS = (3, 4, 5, 7, 8)


# ----------------------------------------------------------------------------
# row decoders: bytes of one weight row -> q, ws, wm
# ----------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _h(lut, row, o):
    return lut[np.int64(row[o]) | (np.int64(row[o + 1]) << 8)]


@njit(cache=True, nogil=True)
def _decode_legacy(kind, row, lut, q, ws, wm):
    """32-weight blocks: Q4_0, Q5_0, Q8_0 (offset removed), Q4_1, Q5_1."""
    affine = kind >= 3
    five = kind == 1 or kind == 4
    ts = 34 if kind == 2 else (20 if affine else 18) + (4 if five else 0)
    hdr = 4 if affine else 2
    qs_off = hdr + (4 if five else 0)
    off = 0 if affine else (16 if five else 8)
    for i in range(ws.size):
        o = i * ts
        ws[i] = _h(lut, row, o)
        if affine:
            wm[i] = _h(lut, row, o + 2)
        qb = q[i * QK:(i + 1) * QK]
        if kind == 2:
            blk = row[o + 2:o + 34]
            for j in range(QK):
                v = np.int32(blk[j])
                qb[j] = v - 256 if v >= 128 else v
            continue
        blk = row[o + qs_off:o + qs_off + 16]
        for j in range(16):
            b = np.int32(blk[j])
            qb[j] = (b & 0xF) - off
            qb[j + 16] = (b >> 4) - off
        if five:
            qh = (np.int64(row[o + hdr]) | (np.int64(row[o + hdr + 1]) << 8)
                  | (np.int64(row[o + hdr + 2]) << 16) | (np.int64(row[o + hdr + 3]) << 24))
            for j in range(QK):
                qb[j] += ((qh >> j) & 1) << 4


@njit(cache=True, nogil=True)
def _decode_k(kind, row, lut, q, ws, wm):
    """K-quant super-blocks: ws = d, q = sc[g]*quant, wm[g] = -dmin*m[g]
    per group g of 16."""
    for i in range(ws.size):
        qb = q[i * QK_K:(i + 1) * QK_K]
        g0 = i * 16
        if kind == 5:  # Q2_K: element 128h + 32j + l uses bits 2j of qs[32h + l]
            o = i * 84
            ws[i] = _h(lut, row, o + 80)
            dmin = float(_h(lut, row, o + 82))
            for g in range(16):
                s = np.int32(row[o + g])
                wm[g0 + g] = -dmin * (s >> 4)
                sc = s & 0xF
                shift = 2 * ((g >> 1) & 3)
                src = row[o + 16 + 32 * (g >> 3) + 16 * (g & 1):]
                dst = qb[16 * g:16 * g + 16]
                for t in range(16):
                    dst[t] = sc * ((np.int32(src[t]) >> shift) & 3)
        elif kind == 6:  # Q3_K: as Q2_K; a clear bit 4h + j of hmask[l] means -4
            o = i * 110
            ws[i] = _h(lut, row, o + 108)
            for g in range(16):
                sc = np.int32(q3k_scale(row, o + 96, g))
                h = g >> 3
                j = (g >> 1) & 3
                bit = 1 << (4 * h + j)
                lo = row[o + 32 + 32 * h + 16 * (g & 1):]
                hm = row[o + 16 * (g & 1):]
                dst = qb[16 * g:16 * g + 16]
                for t in range(16):
                    v = (np.int32(lo[t]) >> (2 * j)) & 3
                    if not (hm[t] & bit):
                        v -= 4
                    dst[t] = sc * v
        elif kind == 7 or kind == 8:  # Q4_K, Q5_K: sub-blocks of 32 share a scale
            five = kind == 8
            o = i * (176 if five else 144)
            ws[i] = _h(lut, row, o)
            dmin = float(_h(lut, row, o + 2))
            for c in range(4):
                s1, m1 = scale_min_k4(2 * c, row, o + 4)
                s2, m2 = scale_min_k4(2 * c + 1, row, o + 4)
                for u in range(2):
                    wm[g0 + 4 * c + u] = -dmin * m1
                    wm[g0 + 4 * c + 2 + u] = -dmin * m2
                src = row[o + (48 if five else 16) + 32 * c:]
                d1 = qb[64 * c:64 * c + 32]
                d2 = qb[64 * c + 32:64 * c + 64]
                a1 = np.int32(s1)
                a2 = np.int32(s2)
                if five:
                    hb = row[o + 16:o + 48]
                    for l in range(32):
                        b = np.int32(src[l])
                        h = np.int32(hb[l]) >> (2 * c)
                        d1[l] = a1 * ((b & 0xF) | ((h & 1) << 4))
                        d2[l] = a2 * ((b >> 4) | ((h & 2) << 3))
                else:
                    for l in range(32):
                        b = np.int32(src[l])
                        d1[l] = a1 * (b & 0xF)
                        d2[l] = a2 * (b >> 4)
        else:  # Q6_K: 128-weight halves; ql nibbles and qh bit pairs interleave
            o = i * 210
            ws[i] = _h(lut, row, o + 208)
            for h in range(2):
                ql = row[o + 64 * h:o + 64 * h + 64]
                qh = row[o + 128 + 32 * h:o + 128 + 32 * h + 32]
                for k in range(4):
                    shift = 4 * (k >> 1)
                    src = ql[32 * (k & 1):]
                    for half in range(2):
                        sc = np.int32(row[o + 192 + 8 * h + 2 * k + half])
                        if sc >= 128:
                            sc -= 256
                        dst = qb[128 * h + 32 * k + 16 * half:128 * h + 32 * k + 16 * half + 16]
                        for t in range(16):
                            l = 16 * half + t
                            v = ((np.int32(src[l]) >> shift) & 0xF) | (((np.int32(qh[l]) >> (2 * k)) & 3) << 4)
                            dst[t] = sc * (v - 32)


# ----------------------------------------------------------------------------
# kernels: exact integer block sums, float64 scaling and accumulation
# ----------------------------------------------------------------------------


@njit(cache=True, parallel=True)
def _mm_int(kind, bsize, gsize, w, lut, xqs, xd, xsum, out):
    """out[b, n] = sum over blocks k of xd[b, k] * ws[k] * sum(q*qx) + sum
    over the block's groups g of wm[g] * xsum[b, g], where xsum is the
    activation's value sum per group (Q8_1's s per 32, d * bsums per 16)."""
    N = w.shape[0]
    B, K = xqs.shape
    nblk = K // bsize
    ng = K // gsize
    gpb = bsize // gsize
    affine = False
    for a in _AFFINE_KINDS:
        affine |= kind == a
    for n in prange(N):
        q = np.empty(K, np.int32)
        ws = np.empty(nblk, np.float64)
        wm = np.zeros(ng, np.float64)
        if kind < _FIRST_K_KIND:
            _decode_legacy(kind, w[n], lut, q, ws, wm)
        else:
            _decode_k(kind, w[n], lut, q, ws, wm)
        for b in range(B):
            xb = xqs[b]
            acc = 0.0
            for k in range(nblk):
                # slices indexed from 0 let numba drop its negative-index
                # wraparound code, which is what allows LLVM to vectorize
                qk = q[k * bsize:(k + 1) * bsize]
                xk = xb[k * bsize:(k + 1) * bsize]
                s = np.int32(0)
                for t in range(bsize):
                    s += qk[t] * xk[t]
                acc += float(xd[b, k]) * ws[k] * s
                if affine:
                    for g in range(k * gpb, (k + 1) * gpb):
                        acc += wm[g] * xsum[b, g]
            out[b, n] = acc


@njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def _mm_f16(w, lut, x, out):
    """F16 / BF16 weights (uint16 bits) decoded through a 64 Ki-entry table."""
    N, K = w.shape
    B = x.shape[0]
    for n in prange(N):
        row = np.empty(K, np.float64)
        for k in range(K):
            row[k] = lut[w[n, k]]
        for b in range(B):
            acc = 0.0
            for k in range(K):
                acc += row[k] * x[b, k]
            out[b, n] = acc


# ----------------------------------------------------------------------------
# activation packing
# ----------------------------------------------------------------------------


def _split_activation(vtype: GGMLType, xq: np.ndarray, K: int):
    """Unpack quantized activation rows (B, row_bytes) into arrays the kernels
    index directly: int8 quants (B, K), float32 block scales d and float64
    value sums per group (only used by the affine weight formats)."""
    B = xq.shape[0]
    ts = _TS[vtype]
    blocks = xq.reshape(B, -1, ts)
    if vtype == T.Q8_K:
        d = np.ascontiguousarray(blocks[:, :, :4]).view(np.float32).reshape(B, -1)
        qs = np.ascontiguousarray(blocks[:, :, 4:4 + QK_K]).view(np.int8).reshape(B, K)
        bsums = np.ascontiguousarray(blocks[:, :, 4 + QK_K:]).view("<i2").reshape(B, -1, 16)
        xsum = (d[:, :, None].astype(np.float64) * bsums).reshape(B, K // 16)
        return qs, d, xsum
    qs_off = 4 if vtype == T.Q8_1 else 2
    d = np.ascontiguousarray(blocks[:, :, :2]).view("<f2").reshape(B, -1).astype(np.float32)
    qs = np.ascontiguousarray(blocks[:, :, qs_off:]).view(np.int8).reshape(B, K)
    if vtype == T.Q8_1:
        xsum = np.ascontiguousarray(blocks[:, :, 2:4]).view("<f2").reshape(B, -1).astype(np.float64)
    else:
        xsum = np.zeros((B, K // QK), np.float64)
    return qs, d, xsum


# ----------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------


def _weight_format(qtype) -> BlockFormat:
    fmt = block_format(qtype)
    if fmt.type not in WEIGHT_TYPES:
        raise ValueError(f"{fmt.name} is an activation format, not a weight type "
                         f"(weight types: {', '.join(t.name for t in WEIGHT_TYPES)})")
    return fmt


def _check_array(name: str, a, dtype, ndims: tuple[int, ...]) -> np.ndarray:
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
    x = _check_array("x", x, np.float32, (1, 2))
    return x.reshape(1, -1) if x.ndim == 1 else x


def quantize_activation(qtype_of_weights, x) -> np.ndarray:
    """Activation rows (K,) or (B, K) in the weights' vec_dot format, as uint8
    (..., row_bytes).  Float weight types take activations as plain F32."""
    fmt = _weight_format(qtype_of_weights)
    x2 = _check_activations(x)
    vfmt = FORMATS[fmt.vec_dot_type]
    if x2.shape[1] % vfmt.block_size:
        raise ValueError(f"x: length {x2.shape[1]} is not a multiple of the {vfmt.name} block size {vfmt.block_size}")
    if vfmt.type in (GGMLType.Q8_0, GGMLType.Q8_1):
        return _quantize_q8_runtime(x, with_sum=vfmt.type == GGMLType.Q8_1)
    return quants.quantize(x, vfmt.type)


def _quantize_q8_runtime(x: np.ndarray, with_sum: bool) -> np.ndarray:
    """Q8_0 / Q8_1 activations rounded as the native kernels and llama.cpp's
    runtime quantizers do: id = 127/amax and round half to even (ggml's *_ref
    weight quantizers, which quants.quantize mirrors, use 1/d and round half
    away from zero)."""
    blocks = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, 32)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    d = amax / np.float32(127.0)
    safe = np.where(amax != 0, amax, np.float32(1.0))
    inv = np.where(amax != 0, np.float32(127.0) / safe, np.float32(0.0)).astype(np.float32)
    q = np.rint(blocks * inv).astype(np.int8)
    parts = [d.astype(np.float16).view(np.uint8)]
    if with_sum:
        s = d * q.astype(np.int32).sum(axis=1, keepdims=True).astype(np.float32)
        parts.append(s.astype(np.float16).view(np.uint8))
    parts.append(q.view(np.uint8))
    return np.concatenate(parts, axis=1).reshape(*x.shape[:-1], -1)


def dequantize(qtype, w) -> np.ndarray:
    """Weights (..., row_bytes) -> float32 (..., K)."""
    return quants.dequantize(w, qtype)


def matmul(qtype, w, x, out=None) -> np.ndarray:
    """Y = X . W^T for W (N, row_bytes) in format `qtype` and float32 X of
    shape (K,) or (B, K); returns float32 (N,) or (B, N), written into `out`
    when given."""
    fmt = _weight_format(qtype)
    w = _check_array("w", w, np.uint8, (2,))
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
        _check_array("out", out, np.float32, (len(shape),))
        if out.shape != shape:
            raise ValueError(f"out must have shape {shape}, got {out.shape}")
    out2 = out.reshape(B, N)
    if N == 0 or B == 0:
        return out
    if K == 0:
        out2[...] = 0.0
        return out

    t = fmt.type
    if t == T.F32:
        np.matmul(x2, w.view(np.float32).T, out=out2)
    elif t in (T.F16, T.BF16):
        _mm_f16(w.view(np.uint16), _F16_LUT if t == T.F16 else _BF16_LUT, x2, out2)
    else:
        vt = fmt.vec_dot_type
        xqs, xd, xsum = _split_activation(vt, quantize_activation(fmt.type, x2), K)
        if vt == T.Q8_K:
            _mm_int(_KIND[t], QK_K, 16, w, _F16_LUT, xqs, xd, xsum, out2)
        else:
            _mm_int(_KIND[t], QK, QK, w, _F16_LUT, xqs, xd, xsum, out2)
    return out
