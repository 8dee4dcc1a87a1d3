"""Reference codecs for ggml block formats.

`quantize` and `dequantize` convert between float32 rows and the byte-exact
ggml block layouts listed in `llamalocal.formats`.  The legacy quantizers
reproduce ggml's `quantize_row_*_ref` (and therefore `gguf.quants`) byte for
byte; the k-quant ones live in `formats.kquants`.  All kernels are numba
functions compiled with cache=True; see kquants' docstring for the float32
discipline they follow.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from . import FLOAT_TYPES, FORMATS, QK, QK_K, GGMLType, block_format
from . import kquants as _k
from .fp16 import read_f16, write_f16

__all__ = ["dequantize", "quantize", "QUANTIZE_TYPES", "DEQUANTIZE_TYPES"]

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_HALF = np.float32(0.5)

T = GGMLType
TS_Q4_0 = FORMATS[T.Q4_0].type_size
TS_Q4_1 = FORMATS[T.Q4_1].type_size
TS_Q5_0 = FORMATS[T.Q5_0].type_size
TS_Q5_1 = FORMATS[T.Q5_1].type_size
TS_Q8_0 = FORMATS[T.Q8_0].type_size
TS_Q8_1 = FORMATS[T.Q8_1].type_size
TS_Q8_K = FORMATS[T.Q8_K].type_size
_HALF_QK = QK // 2


# ----------------------------------------------------------------------------
# legacy dequantization (ggml's dequantize_row_*: q*d, or q*d + m)
# ----------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _dequant_q4_0(src, dst):
    for i in range(src.size // TS_Q4_0):
        o = i * TS_Q4_0
        y = i * QK
        d = read_f16(src, o)
        for j in range(_HALF_QK):
            b = np.int64(src[o + 2 + j])
            dst[y + j] = np.float32((b & 0xF) - 8) * d
            dst[y + j + _HALF_QK] = np.float32((b >> 4) - 8) * d


@njit(cache=True, nogil=True)
def _dequant_q4_1(src, dst):
    for i in range(src.size // TS_Q4_1):
        o = i * TS_Q4_1
        y = i * QK
        d = read_f16(src, o)
        m = read_f16(src, o + 2)
        for j in range(_HALF_QK):
            b = np.int64(src[o + 4 + j])
            dst[y + j] = np.float32(b & 0xF) * d + m
            dst[y + j + _HALF_QK] = np.float32(b >> 4) * d + m


@njit(cache=True, nogil=True)
def _read_u32(src, o):
    return (np.int64(src[o]) | (np.int64(src[o + 1]) << 8)
            | (np.int64(src[o + 2]) << 16) | (np.int64(src[o + 3]) << 24))


@njit(cache=True, nogil=True)
def _dequant_q5(src, dst, ts, affine):
    """Q5_0 (affine=False: (q-16)*d) and Q5_1 (q*d + m); qh holds bit 4 of
    element j in bit j."""
    qh_off = 4 if affine else 2
    for i in range(src.size // ts):
        o = i * ts
        y = i * QK
        d = read_f16(src, o)
        m = read_f16(src, o + 2) if affine else _F0
        qh = _read_u32(src, o + qh_off)
        for j in range(_HALF_QK):
            b = np.int64(src[o + qh_off + 4 + j])
            q0 = (b & 0xF) | (((qh >> j) & 1) << 4)
            q1 = (b >> 4) | (((qh >> (j + _HALF_QK)) & 1) << 4)
            if affine:
                dst[y + j] = np.float32(q0) * d + m
                dst[y + j + _HALF_QK] = np.float32(q1) * d + m
            else:
                dst[y + j] = np.float32(q0 - 16) * d
                dst[y + j + _HALF_QK] = np.float32(q1 - 16) * d


@njit(cache=True, nogil=True)
def _dequant_q8(src, dst, ts, qs_off):
    """Q8_0 and Q8_1: int8 quants times the fp16 d at offset 0."""
    for i in range(src.size // ts):
        o = i * ts
        y = i * QK
        d = read_f16(src, o)
        for j in range(QK):
            q = np.int64(src[o + qs_off + j])
            if q >= 128:
                q -= 256
            dst[y + j] = np.float32(q) * d


# ----------------------------------------------------------------------------
# legacy quantization (ggml's quantize_row_*_ref)
# ----------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _quant_sym(x, dst, ts, nbits):
    """Q4_0 (nbits 4) and Q5_0 (nbits 5): d = max / -2**(nbits-1), where max
    is the signed value of largest magnitude, so it maps exactly to level 0."""
    half = 1 << (nbits - 1)
    top = (1 << nbits) - 1
    neg = np.float32(-half)
    bias = np.float32(half) + _HALF  # + 0.5 then truncation == round half up
    qs_off = 2 if nbits == 4 else 6
    for i in range(x.size // QK):
        o = i * ts
        b = i * QK
        amax = _F0
        mx = _F0
        for j in range(QK):
            v = x[b + j]
            if amax < abs(v):
                amax = abs(v)
                mx = v
        d = mx / neg
        inv = _F1 / d if d != _F0 else _F0
        write_f16(dst, o, d)
        qh = 0
        for j in range(_HALF_QK):
            q0 = min(top, np.int64(x[b + j] * inv + bias))
            q1 = min(top, np.int64(x[b + j + _HALF_QK] * inv + bias))
            dst[o + qs_off + j] = (q0 & 0xF) | ((q1 & 0xF) << 4)
            qh |= ((q0 >> 4) << j) | ((q1 >> 4) << (j + _HALF_QK))
        if nbits == 5:
            for t in range(4):
                dst[o + 2 + t] = (qh >> (8 * t)) & 0xFF


@njit(cache=True, nogil=True)
def _quant_affine(x, dst, ts, nbits):
    """Q4_1 / Q5_1: d = (max - min) / (2**nbits - 1), stored min m."""
    top = (1 << nbits) - 1
    ftop = np.float32(top)
    qs_off = 4 if nbits == 4 else 8
    for i in range(x.size // QK):
        o = i * ts
        b = i * QK
        mn = x[b]
        mx = x[b]
        for j in range(1, QK):
            v = x[b + j]
            if v < mn:
                mn = v
            if v > mx:
                mx = v
        d = (mx - mn) / ftop
        inv = _F1 / d if d != _F0 else _F0
        write_f16(dst, o, d)
        write_f16(dst, o + 2, mn)
        qh = 0
        for j in range(_HALF_QK):
            q0 = min(top, np.int64((x[b + j] - mn) * inv + _HALF))
            q1 = min(top, np.int64((x[b + j + _HALF_QK] - mn) * inv + _HALF))
            dst[o + qs_off + j] = (q0 & 0xF) | ((q1 & 0xF) << 4)
            qh |= ((q0 >> 4) << j) | ((q1 >> 4) << (j + _HALF_QK))
        if nbits == 5:
            for t in range(4):
                dst[o + 4 + t] = (qh >> (8 * t)) & 0xFF


@njit(cache=True, nogil=True)
def _roundf(v):
    """C roundf (half away from zero).  The +0.5 is done in float64 where it
    is exact; in float32 0.49999997 + 0.5 would round up to 1."""
    r = math.floor(abs(float(v)) + 0.5)
    return -r if v < _F0 else r


@njit(cache=True, nogil=True)
def _quant_q8(x, dst, ts, with_sum):
    """Q8_0, and Q8_1 (with_sum) which also stores s = fp16(d * sum(qs))."""
    qs_off = 4 if with_sum else 2
    d127 = np.float32(127.0)
    for i in range(x.size // QK):
        o = i * ts
        b = i * QK
        amax = _F0
        for j in range(QK):
            amax = max(amax, abs(x[b + j]))
        d = amax / d127
        inv = _F1 / d if d != _F0 else _F0
        write_f16(dst, o, d)
        s = 0
        for j in range(QK):
            q = np.int64(_roundf(x[b + j] * inv))
            s += q
            dst[o + qs_off + j] = q & 0xFF
        if with_sum:
            write_f16(dst, o + 2, np.float32(s) * d)


@njit(cache=True, nogil=True)
def _quant_bf16(bits, dst):
    """ggml_compute_fp32_to_bf16: NaNs stay NaN (forced quiet), everything
    else rounds to nearest even (overflowing to inf like the hardware)."""
    for i in range(bits.size):
        u = np.int64(bits[i])
        if (u & 0x7FFFFFFF) > 0x7F800000:
            dst[i] = (u >> 16) | 64
        else:
            dst[i] = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16) & 0xFFFF


# ----------------------------------------------------------------------------
# dispatch
# ----------------------------------------------------------------------------


def _dq_q8_k(blocks: np.ndarray, out: np.ndarray) -> None:
    b = blocks.reshape(-1, TS_Q8_K)
    d = np.ascontiguousarray(b[:, :4]).view(np.float32)
    qs = b[:, 4:4 + QK_K].view(np.int8)
    np.multiply(d, qs, out=out.reshape(-1, QK_K), dtype=np.float32)


_DEQUANT = {
    T.Q4_0: _dequant_q4_0,
    T.Q4_1: _dequant_q4_1,
    T.Q5_0: lambda s, d: _dequant_q5(s, d, TS_Q5_0, False),
    T.Q5_1: lambda s, d: _dequant_q5(s, d, TS_Q5_1, True),
    T.Q8_0: lambda s, d: _dequant_q8(s, d, TS_Q8_0, 2),
    T.Q8_1: lambda s, d: _dequant_q8(s, d, TS_Q8_1, 4),
    T.Q2_K: _k.dequant_q2_k,
    T.Q3_K: _k.dequant_q3_k,
    T.Q4_K: _k.dequant_q4_k,
    T.Q5_K: _k.dequant_q5_k,
    T.Q6_K: _k.dequant_q6_k,
    T.Q8_K: _dq_q8_k,
}


def _q_q8_k(x: np.ndarray, out: np.ndarray) -> None:
    nb = x.size // QK_K
    d = np.empty(nb, np.float32)
    qs = np.empty(nb * QK_K, np.int8)
    bsums = np.empty(nb * 16, np.int16)
    _k.quant_q8_k(x, d, qs, bsums)
    b = out.reshape(nb, TS_Q8_K)
    b[:, :4] = d.view(np.uint8).reshape(nb, 4)
    b[:, 4:4 + QK_K] = qs.view(np.uint8).reshape(nb, QK_K)
    b[:, 4 + QK_K:] = bsums.astype("<i2").view(np.uint8).reshape(nb, 32)


_QUANT = {
    T.Q4_0: lambda x, o: _quant_sym(x, o, TS_Q4_0, 4),
    T.Q5_0: lambda x, o: _quant_sym(x, o, TS_Q5_0, 5),
    T.Q4_1: lambda x, o: _quant_affine(x, o, TS_Q4_1, 4),
    T.Q5_1: lambda x, o: _quant_affine(x, o, TS_Q5_1, 5),
    T.Q8_0: lambda x, o: _quant_q8(x, o, TS_Q8_0, False),
    T.Q8_1: lambda x, o: _quant_q8(x, o, TS_Q8_1, True),
    T.Q4_K: _k.quant_q4_k,
    T.Q5_K: _k.quant_q5_k,
    T.Q6_K: _k.quant_q6_k,
    T.Q8_K: _q_q8_k,
}

DEQUANTIZE_TYPES: tuple[GGMLType, ...] = FLOAT_TYPES + tuple(_DEQUANT)
QUANTIZE_TYPES: tuple[GGMLType, ...] = FLOAT_TYPES + tuple(_QUANT)


def _as_bytes(data) -> np.ndarray:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    if not isinstance(data, np.ndarray):
        raise ValueError(f"expected a uint8 numpy array of block bytes, got {type(data).__name__}")
    if data.dtype != np.uint8:
        raise ValueError(f"expected block bytes with dtype uint8, got dtype {data.dtype}")
    if data.ndim == 0:
        raise ValueError("expected at least one dimension of block bytes, got a 0-d array")
    return data


def dequantize(data, qtype) -> np.ndarray:
    """Decode ggml blocks to float32.

    `data` is uint8 whose last dimension holds whole rows of blocks (any
    leading shape), or raw bytes.  Returns a new float32 array whose last
    dimension is the number of weights per row.
    """
    fmt = block_format(qtype)  # ValueError for unknown types
    if fmt.type not in DEQUANTIZE_TYPES:
        raise ValueError(f"dequantizing {fmt.name} is not supported")
    arr = _as_bytes(data)
    nbytes = arr.shape[-1]
    if nbytes % fmt.type_size:
        raise ValueError(
            f"{fmt.name}: row of {nbytes} bytes is not a multiple of the block size of {fmt.type_size} bytes")
    n = nbytes // fmt.type_size * fmt.block_size
    shape = arr.shape[:-1] + (n,)
    flat = np.ascontiguousarray(arr).reshape(-1)
    if fmt.type == T.F32:
        return flat.view("<f4").astype(np.float32).reshape(shape)
    if fmt.type == T.F16:
        return flat.view("<f2").astype(np.float32).reshape(shape)
    if fmt.type == T.BF16:
        return (flat.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    out = np.empty(flat.size // fmt.type_size * fmt.block_size, np.float32)
    if flat.size:
        _DEQUANT[fmt.type](flat, out)
    return out.reshape(shape)


def quantize(x, qtype) -> np.ndarray:
    """Encode float32 rows (..., n) into ggml blocks, returning uint8 (..., row_bytes).

    n must be a multiple of the format's block size.  Results are byte-exact
    with ggml's reference quantizers (and gguf.quants where it has them).
    """
    fmt = block_format(qtype)  # ValueError for unknown types
    if fmt.type not in QUANTIZE_TYPES:
        raise ValueError(f"quantizing to {fmt.name} is not supported "
                         f"(supported: {', '.join(t.name for t in QUANTIZE_TYPES)})")
    if not isinstance(x, np.ndarray):
        raise ValueError(f"expected a float32 numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise ValueError(f"expected float32 input, got dtype {x.dtype} (cast it with .astype(np.float32) first)")
    if x.ndim == 0:
        raise ValueError("expected at least one dimension, got a 0-d array")
    n = x.shape[-1]
    if n % fmt.block_size:
        raise ValueError(f"{fmt.name}: row length {n} is not a multiple of the block size {fmt.block_size}")
    shape = x.shape[:-1] + (fmt.row_bytes(n),)
    flat = np.ascontiguousarray(x).reshape(-1)
    if fmt.type == T.F32:
        return flat.astype("<f4").view(np.uint8).reshape(shape)
    if fmt.type == T.F16:
        return flat.astype("<f2").view(np.uint8).reshape(shape)
    if fmt.type == T.BF16:
        out16 = np.empty(flat.size, "<u2")
        _quant_bf16(flat.view(np.uint32), out16)
        return out16.view(np.uint8).reshape(shape)
    out = np.empty(flat.size // fmt.block_size * fmt.type_size, np.uint8)
    if flat.size:
        _QUANT[fmt.type](flat, out)
    return out.reshape(shape)
