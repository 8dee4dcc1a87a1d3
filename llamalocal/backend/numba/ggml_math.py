"""ggml's float arithmetic in numba: the numba backend's statement of
native/ggml_math.h, of the scalar attention kernels (native/scalar/attention.cpp)
and of the element-wise steps of native/layer.cpp.

The models amplify last-bit differences (every int8 activation rounding can
flip), so the numba backend reproduces the native scalar path operation for
operation: float32 values stay float32 (numba widens mixed float32/float64
arithmetic and Python float literals to float64, so constants here are
np.float32 and the fused multiply-add refuses anything else), float sums run
in the order the C++ states, a*b+c is a rounded product and a rounded add
except where `fma` is written, and expf/cosf/sinf/tanhf/powf are libm's float
functions, which numba's `math` calls on float32 arguments as std:: does in
C++ (numpy's vectorised np.exp and friends differ by an ulp here and there).
Double-precision sums are float64 on purpose, as in the C++.

As in the C++, the float vector width of the llama.cpp build being
reproduced is 16 lanes (its AVX-512 build, see native/kernels.h).
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from ...formats.fp16 import bits_f64, f16_to_f32, round_f16
from .simd import fma16, reduce4_16, zeros16

LANES = 16  # KernelSet::lanes of the native scalar path
KV_ALIGN = 64  # ggml_math.h: the attention's KV range is aligned to 64 cells

F0 = np.float32(0.0)
F1 = np.float32(1.0)


# ----------------------------------------------------------------------------
# a primitive numba lacks: an exactly rounded float32 FMA (the float32 bit
# casts live with the fp16 conversions, in formats/fp16.py)
# ----------------------------------------------------------------------------


@intrinsic
def fma(typingctx, a, b, c):
    """std::fmaf: a*b+c rounded once (LLVM's llvm.fma.f32: the FMA instruction
    where the CPU has one, libm's fmaf otherwise).  float32 operands only: a
    float64 here would mean a silent double rounding somewhere upstream."""
    if not (a == types.float32 and b == types.float32 and c == types.float32):
        return None

    def codegen(context, builder, sig, args):
        f32 = ir.FloatType()
        fn = builder.module.declare_intrinsic("llvm.fma", [f32], ir.FunctionType(f32, [f32, f32, f32]))
        return builder.call(fn, args)

    return types.float32(types.float32, types.float32, types.float32), codegen


# ----------------------------------------------------------------------------
# ggml_math.h
# ----------------------------------------------------------------------------

_EXP_R = np.float32(float.fromhex("0x1.8p23"))
_EXP_LOG2E = np.float32(float.fromhex("0x1.715476p+0"))
_EXP_LN2_HI = np.float32(float.fromhex("0x1.62e4p-1"))
_EXP_LN2_LO = np.float32(float.fromhex("0x1.7f7d1cp-20"))
_EXP_C5 = np.float32(float.fromhex("0x1.0e4020p-7"))
_EXP_C4 = np.float32(float.fromhex("0x1.573e2ep-5"))
_EXP_C3 = np.float32(float.fromhex("0x1.555e66p-3"))
_EXP_C2 = np.float32(float.fromhex("0x1.fffdb6p-2"))
_EXP_C1 = np.float32(float.fromhex("0x1.ffffecp-1"))
_F192 = np.float32(192.0)


@njit(cache=True, nogil=True)
def expf512(x):
    """ggml_expf512: ggml_v_expf's AVX-512 version, lane by lane."""
    z = fma(x, _EXP_LOG2E, _EXP_R)
    n = z - _EXP_R
    b = fma(-n, _EXP_LN2_LO, fma(-n, _EXP_LN2_HI, x))
    u = b * b
    j = fma(fma(fma(_EXP_C5, b, _EXP_C4), u, fma(_EXP_C3, b, _EXP_C2)), u, fma(_EXP_C1, b, F1))
    if abs(n) > _F192:
        return F0 if n <= F0 else np.float32(np.inf)
    # j * 2^n is exact in float64, so narrowing rounds once, as ldexpf does;
    # 2^n from its bits (|n| <= 192) rather than a libm ldexp per element
    return np.float32(np.float64(j) * bits_f64((np.int64(n) + 1023) << 52))


@njit(cache=True, nogil=True, inline="always")
def hsum8(v, o):
    """ggml_hsum8 of v[o:o+8]."""
    a0 = v[o] + v[o + 4]
    a1 = v[o + 1] + v[o + 5]
    a2 = v[o + 2] + v[o + 6]
    a3 = v[o + 3] + v[o + 7]
    return (a0 + a2) + (a1 + a3)


@njit(cache=True, nogil=True, inline="always")
def hsum16(v, o):
    """ggml_hsum<16> of v[o:o+16] (_mm512_reduce_add_ps)."""
    a0 = (v[o] + v[o + 8]) + (v[o + 4] + v[o + 12])
    a1 = (v[o + 1] + v[o + 9]) + (v[o + 5] + v[o + 13])
    a2 = (v[o + 2] + v[o + 10]) + (v[o + 6] + v[o + 14])
    a3 = (v[o + 3] + v[o + 11]) + (v[o + 7] + v[o + 15])
    return (a0 + a2) + (a1 + a3)


@njit(cache=True, nogil=True, inline="always")
def _lane4(acc, l):
    return (acc[l] + acc[2 * LANES + l]) + (acc[LANES + l] + acc[3 * LANES + l])


@njit(cache=True, nogil=True)
def reduce4(acc):
    """ggml_reduce4<16> of ggml_vec_dot's four 16-lane accumulators acc[64]:
    accumulators 2 and 3 into 0 and 1, 1 into 0, then hsum16 of the lanes."""
    a0 = (_lane4(acc, 0) + _lane4(acc, 8)) + (_lane4(acc, 4) + _lane4(acc, 12))
    a1 = (_lane4(acc, 1) + _lane4(acc, 9)) + (_lane4(acc, 5) + _lane4(acc, 13))
    a2 = (_lane4(acc, 2) + _lane4(acc, 10)) + (_lane4(acc, 6) + _lane4(acc, 14))
    a3 = (_lane4(acc, 3) + _lane4(acc, 11)) + (_lane4(acc, 7) + _lane4(acc, 15))
    return (a0 + a2) + (a1 + a3)


@njit(cache=True, nogil=True)
def _hsum16_columns(acc, y):
    """y[d] = hsum16 of acc[0:16, d], for every d."""
    for d in range(y.size):
        a0 = (acc[0, d] + acc[8, d]) + (acc[4, d] + acc[12, d])
        a1 = (acc[1, d] + acc[9, d]) + (acc[5, d] + acc[13, d])
        a2 = (acc[2, d] + acc[10, d]) + (acc[6, d] + acc[14, d])
        a3 = (acc[3, d] + acc[11, d]) + (acc[7, d] + acc[15, d])
        y[d] = (a0 + a2) + (a1 + a3)


@njit(cache=True, nogil=True)
def _reduce4_columns(acc, y):
    """y[d] = reduce4 of acc[0:64, d], for every d: reduce4 is hsum16 of
    its 16 lanes' sums over the four accumulators (_lane4)."""
    lanes = np.empty((LANES, y.size), np.float32)
    for l in range(LANES):
        for d in range(y.size):
            lanes[l, d] = (acc[l, d] + acc[2 * LANES + l, d]) + (acc[LANES + l, d] + acc[3 * LANES + l, d])
    _hsum16_columns(lanes, y)


@njit(cache=True, nogil=True)
def silu(x, vector_lane):
    """ggml_silu: ggml's expf for whole groups of lanes, libm's for a row's tail."""
    return x / (F1 + (expf512(-x) if vector_lane else math.exp(-x)))


_GELU_C = np.float32(0.7978845608028654)
_GELU_A = np.float32(0.044715)
_HALF = np.float32(0.5)
_F10 = np.float32(10.0)


@njit(cache=True, nogil=True)
def gelu_tanh(x):
    """layer.cpp's gelu_tanh: on the fp16 value of x, the result rounded to fp16."""
    if x <= -_F10:
        return F0
    if x >= _F10:
        return x
    xh = round_f16(x)
    return round_f16(_HALF * xh * (F1 + math.tanh(_GELU_C * xh * (F1 + _GELU_A * xh * xh))))


# ----------------------------------------------------------------------------
# the element-wise steps of native/layer.cpp
# ----------------------------------------------------------------------------


# The element-wise kernels run on the calling thread: a parallel region costs
# more to start than their work (and on a busy machine much more); native
# layer.cpp runs them on one thread too.


@njit(cache=True, nogil=True)
def rms_norm(x, w, eps, y):
    """y[r] = x[r] * (1/sqrt(mean(x[r]^2) + eps)) * w: squares in float32,
    summed in float64 in order, as ggml does."""
    n = x.shape[1]
    for r in range(x.shape[0]):
        ss = 0.0
        for i in range(n):
            ss += np.float64(x[r, i] * x[r, i])
        mean = np.float32(ss / n)
        scale = F1 / math.sqrt(mean + eps)
        for i in range(n):
            y[r, i] = x[r, i] * scale * w[i]


@njit(cache=True, nogil=True)
def rope(x, pos0, rope_dim, base, pos_scale, freq_factors, neox):
    """In place on x [T, n_heads, head_dim]: ggml's angles (theta_i = p *
    theta_scale^i by repeated multiplication) and its rotation as its FMA
    build compiles it (the x0 product fused, the x1 product rounded)."""
    T, H, _ = x.shape
    half = rope_dim // 2
    theta_scale = math.pow(base, np.float32(-2.0) / np.float32(rope_dim))
    cs = np.empty(2 * half, np.float32)
    for t in range(T):
        theta = np.float32(pos0 + t)
        for i in range(half):
            ff = freq_factors[i] if freq_factors.size else F1
            angle = pos_scale * (theta / ff)
            cs[2 * i] = math.cos(angle)
            cs[2 * i + 1] = math.sin(angle)
            theta *= theta_scale
        for h in range(H):
            v = x[t, h]
            for i in range(half):
                ia, ib = (i, i + half) if neox else (2 * i, 2 * i + 1)
                c, s, x0, x1 = cs[2 * i], cs[2 * i + 1], v[ia], v[ib]
                v[ia] = fma(x0, c, -(x1 * s))
                v[ib] = fma(x0, s, x1 * c)


@njit(cache=True, nogil=True)
def _glu_silu(gate, up):
    n_ff = gate.shape[1]
    n_vec = n_ff & ~(LANES - 1)
    for t in range(gate.shape[0]):
        for i in range(n_ff):
            gate[t, i] = silu(gate[t, i], i < n_vec) * up[t, i]


@njit(cache=True, nogil=True)
def _glu_gelu(gate, up):
    for t in range(gate.shape[0]):
        for i in range(gate.shape[1]):
            gate[t, i] = gelu_tanh(gate[t, i]) * up[t, i]


def glu(gate, up, gelu: bool) -> None:
    """In place gate = act(gate) * up; SiLU takes ggml's expf on the first
    n_ff & ~15 values of a row, libm's on the rest (layer.cpp's n_vec).  One
    compiled loop per activation: a model compiles only its own."""
    (_glu_gelu if gelu else _glu_silu)(gate, up)


# ----------------------------------------------------------------------------
# attention (native/scalar/attention.cpp)
# ----------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def dot_f16(x, y):
    """ggml_dot_f16<16>: four 16-lane FMA accumulators over chunks of 64,
    ggml_reduce4, the tail added in double; x, y contiguous float32."""
    n = x.size
    np_ = n & ~(4 * LANES - 1)
    a0 = a1 = a2 = a3 = zeros16()
    for i in range(0, np_, 4 * LANES):
        a0 = fma16(x, y, i, a0)
        a1 = fma16(x, y, i + LANES, a1)
        a2 = fma16(x, y, i + 2 * LANES, a2)
        a3 = fma16(x, y, i + 3 * LANES, a3)
    s = np.float64(reduce4_16(a0, a1, a2, a3))
    for i in range(np_, n):
        s += np.float64(x[i] * y[i])
    return np.float32(s)


@njit(cache=True, nogil=True)
def tinyblas_dot(x, y, acc):
    """llamafile's tinyBLAS (tinyblas_dot<16>): one 16-lane FMA accumulator
    (acc[:16], the caller's: an allocation per key cost more than the dot),
    lane = index mod 16."""
    for a in range(LANES):
        acc[a] = F0
    for i in range(x.size):
        acc[i % LANES] = fma(x[i], y[i], acc[i % LANES])
    return hsum16(acc, 0)


@njit(cache=True, nogil=True)
def softmax_cells(s, n, lead, cells, w):
    """ggml_softmax_cells<16>: weights of cells [lead, lead + n) of w[:cells]
    (0 elsewhere) from the scores s[:n]; sums per 16 cells in its horizontal
    add order, added in double; weights rounded to fp16."""
    mx = -np.float32(np.inf)
    for i in range(n):
        mx = max(mx, s[i])
    for a in range(cells):
        w[a] = expf512(s[a - lead] - mx) if lead <= a < lead + n else F0
    total = 0.0
    for a in range(0, cells, LANES):
        total += np.float64(hsum16(w, a))
    inv = np.float32(1.0 / total)
    for a in range(cells):
        w[a] = round_f16(w[a] * inv)


@njit(cache=True, nogil=True)
def _attend_f16(q, keys, values, pos0, window, group, scale, task, out):
    """attn_f16<16> for query row t and head h (task = t * n_head + h).
    q [T, n_head, hd] float32; keys, values [n_ctx, n_head_kv, hd] uint16,
    the fp16 cache's bits, each row converted exactly as it is read (numba
    has no float16, and converting the whole cache in numpy every step took
    a sixth of SmolLM2's decode); out [T, n_head, hd].  The products follow
    ggml's choice: tinyBLAS when the batch has two or more tokens (and hd
    suits it), ggml_vec_dot_f16 otherwise."""
    T, H, hd = q.shape
    kq_tiny = T > 1 and hd % LANES == 0
    kqv_tiny = T > 1 and hd % 4 == 0
    t, h = task // H, task % H
    g, p = h // group, pos0 + t
    j0 = max(0, p - window + 1) if window > 0 else 0
    n = p - j0 + 1
    lead = j0 % KV_ALIGN
    cells = (lead + n + KV_ALIGN - 1) // KV_ALIGN * KV_ALIGN
    qh = np.empty(hd, np.float32)
    for d in range(hd):
        qh[d] = round_f16(q[t, h, d])
    k = keys[j0:j0 + n, g]
    s = np.empty(n, np.float32)
    row = np.empty(hd, np.float32)
    acc_dot = np.empty(LANES, np.float32)
    for i in range(n):
        for d in range(hd):
            row[d] = f16_to_f32(k[i, d])
        dot = tinyblas_dot(row, qh, acc_dot) if kq_tiny else dot_f16(row, qh)
        s[i] = dot * scale
    w = np.empty(cells, np.float32)
    softmax_cells(s, n, lead, cells, w)
    # V·w over the cells, each in its lane (cell mod 16 or 64).  Cells
    # outside [lead, lead + n) have v = w = 0, and fma(0, 0, acc) = acc (an
    # accumulator starting at +0 never becomes -0 when rounding to
    # nearest), so only the visible cells are visited.
    # The accumulators are stored lane by lane (acc[lane, d]) so that a
    # cell's update and the final sums run over d in contiguous rows, which
    # LLVM vectorises; each d's own sums are unchanged.
    nacc = LANES if kqv_tiny else 4 * LANES
    acc = np.zeros((nacc, hd), np.float32)
    for a in range(lead, lead + n):
        wa = w[a]
        va = values[j0 + a - lead, g]
        for d in range(hd):
            row[d] = f16_to_f32(va[d])
        lane = acc[a % nacc]
        for d in range(hd):
            lane[d] = fma(row[d], wa, lane[d])
    # ggml_dot_f16 over a multiple of 64 cells has no double tail
    if kqv_tiny:
        _hsum16_columns(acc, out[t, h])
    else:
        _reduce4_columns(acc, out[t, h])


@njit(cache=True, nogil=True)
def _attend_f32(q, keys, values, pos0, window, group, scale, task, out):
    """attn_f32 (F32 caches, llama2.c's run.c arithmetic) for one task: plain
    float sums in order."""
    H, hd = q.shape[1], q.shape[2]
    t, h = task // H, task % H
    g, p = h // group, pos0 + t
    j0 = max(0, p - window + 1) if window > 0 else 0
    n = p - j0 + 1
    w = np.empty(n, np.float32)
    mx = -np.float32(np.inf)
    for j in range(n):
        s = F0
        for d in range(hd):
            s += q[t, h, d] * keys[j0 + j, g, d]
        w[j] = s * scale
        mx = max(mx, w[j])
    total = F0
    for j in range(n):
        w[j] = math.exp(w[j] - mx)
        total += w[j]
    for j in range(n):
        w[j] /= total
    for d in range(hd):
        out[t, h, d] = F0
    for j in range(n):
        for d in range(hd):
            out[t, h, d] += w[j] * values[j0 + j, g, d]


# One loop over the (token, head) tasks per cache type, serial and
# parallel: numba fixes parallel=True at compile time, and its thread
# start-up costs more than a short attention span does.  Separate functions
# rather than flags, so that a model compiles only its cache type's kernel.
@njit(cache=True, nogil=True)
def _attention_serial_f16(q, keys, values, pos0, window, group, scale, out):
    for task in range(q.shape[0] * q.shape[1]):
        _attend_f16(q, keys, values, pos0, window, group, scale, task, out)


@njit(cache=True, nogil=True)
def _attention_serial_f32(q, keys, values, pos0, window, group, scale, out):
    for task in range(q.shape[0] * q.shape[1]):
        _attend_f32(q, keys, values, pos0, window, group, scale, task, out)


# prange's index is unsigned: as int64, the task kernels keep the signature
# the serial loops compiled them for, rather than compiling again
@njit(cache=True, parallel=True)
def _attention_parallel_f16(q, keys, values, pos0, window, group, scale, out):
    for task in prange(q.shape[0] * q.shape[1]):
        _attend_f16(q, keys, values, pos0, window, group, scale, np.int64(task), out)


@njit(cache=True, parallel=True)
def _attention_parallel_f32(q, keys, values, pos0, window, group, scale, out):
    for task in prange(q.shape[0] * q.shape[1]):
        _attend_f32(q, keys, values, pos0, window, group, scale, np.int64(task), out)


def attention(f16: bool, q, keys, values, pos0: int, window: int, group: int, scale, out) -> None:
    """softmax(q · Kᵀ * scale) · V of every query row and head (layer.cpp's
    attention): ggml's arithmetic for an F16 cache (f16; keys and values hold
    its values as float32), llama2.c's for an F32 one.  Spread over threads
    from 8 KiB of K and V reads, as the native layer's (at 64 KiB SmolLM2's
    decode ran its attention on one thread below 85 positions: 1.6 of its
    9 ms a token; at 8 KiB 7-8 ms a token)."""
    T, H, hd = q.shape
    read = T * H * (pos0 + T) * hd * (2 if f16 else 4) * 2 // group
    if read < 8 * 1024:
        run = _attention_serial_f16 if f16 else _attention_serial_f32
    else:
        run = _attention_parallel_f16 if f16 else _attention_parallel_f32
    run(q, keys, values, pos0, window, group, np.float32(scale), out)
