"""fp16 <-> float, each rounding named once, for the numba kernels and codecs
(numba has no float16 type and no scalar bit casts).

- `f16_to_f32` / `read_f16`: half -> float32, exact (native/blocks.h fp16_to_fp32).
- `f32_to_f16`: float32 -> half bits as ggml's runtime rounds activations and
  KV values (native/blocks.h fp32_to_fp16: round half to even, by float32
  arithmetic on the bits).
- `f64_to_f16` / `write_f16`: a float64 (the quantizers' scales) -> half,
  rounded once.  For a float32 input the two agree; they are kept apart
  because a float64 scale narrowed to float32 first would round twice.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def f32_bits(typingctx, x):
    """The IEEE bits of a float32, as a non-negative int64."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.zext(builder.bitcast(args[0], ir.IntType(32)), ir.IntType(64))

    return types.int64(types.float32), codegen


@intrinsic
def bits_f32(typingctx, u):
    """The float32 whose IEEE bits are the low 32 bits of int64 u."""
    if u != types.int64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.trunc(args[0], ir.IntType(32)), ir.FloatType())

    return types.float32(types.int64), codegen


@intrinsic
def bits_f64(typingctx, u):
    """The float64 whose IEEE bits are int64 u."""
    if u != types.int64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@njit(cache=True, nogil=True, inline="always")
def f16_to_f32(h):
    w = np.int64(h) << 16
    sign = w & 0x80000000
    two_w = (w + w) & 0xFFFFFFFF
    normalized = bits_f32((two_w >> 4) + (np.int64(0xE0) << 23)) * bits_f32(np.int64(0x7800000))
    denormalized = bits_f32((two_w >> 17) | (np.int64(126) << 23)) - np.float32(0.5)
    if two_w < (1 << 27):
        return bits_f32(sign | f32_bits(denormalized))
    return bits_f32(sign | f32_bits(normalized))


@njit(cache=True, nogil=True, inline="always")
def read_f16(src, o):
    """The little-endian half at src[o:o + 2] (a uint8 array) as float32."""
    return f16_to_f32(np.int64(src[o]) | (np.int64(src[o + 1]) << 8))


@njit(cache=True, nogil=True, inline="always")
def f32_to_f16(f):
    """fp16 bits (int64) of float32 f."""
    base = (abs(f) * bits_f32(np.int64(0x77800000))) * bits_f32(np.int64(0x08800000))
    w = f32_bits(f)
    shl1_w = (w + w) & 0xFFFFFFFF
    sign = w & 0x80000000
    bias = shl1_w & 0xFF000000
    if bias < 0x71000000:
        bias = np.int64(0x71000000)
    base = bits_f32((bias >> 1) + 0x07800000) + base
    bits = f32_bits(base)
    nonsign = ((bits >> 13) & 0x7C00) + (bits & 0x0FFF)
    return (sign >> 16) | (np.int64(0x7E00) if shl1_w > 0xFF000000 else nonsign)


@njit(cache=True, nogil=True, inline="always")
def round_f16(x):
    return f16_to_f32(f32_to_f16(x))


@njit(cache=True, nogil=True)
def _rne(v):
    """Round a non-negative float64 to the nearest integer, ties to even."""
    r = math.floor(v)
    frac = v - r
    if frac > 0.5 or (frac == 0.5 and r % 2.0 == 1.0):
        r += 1.0
    return r


@njit(cache=True, nogil=True)
def f64_to_f16(f):
    """Any float (the quantizers' float64 scales) -> IEEE half bits, rounded
    once to nearest even, as gguf.quants' numpy astype does; going through
    float32 first could round twice."""
    v = float(f)
    sign = 0x8000 if math.copysign(1.0, v) < 0.0 else 0
    a = abs(v)
    if a != a:
        return sign | 0x7E00
    if a == math.inf:
        return sign | 0x7C00
    if a < 6.103515625e-05:  # below 2**-14 the half is subnormal: units of 2**-24
        # a * 2**24 is exact; a result of 1024 is the smallest normal's bit pattern
        return sign | int(_rne(a * 16777216.0))
    m, e = math.frexp(a)  # a = m * 2**e, 0.5 <= m < 1, m has at most 24 bits
    q = int(_rne(m * 2048.0))  # implicit bit + 10 mantissa bits
    ex = e + 14
    if q == 2048:
        q = 1024
        ex += 1
    if ex >= 31:
        return sign | 0x7C00
    return sign | (ex << 10) | (q - 1024)


@njit(cache=True, nogil=True)
def write_f16(dst, o, f):
    h = f64_to_f16(f)
    dst[o] = h & 0xFF
    dst[o + 1] = h >> 8
