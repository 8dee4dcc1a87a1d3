"""K-quant codecs (super-blocks of 256) and the scalar helpers all codecs share.

Everything here is a numba kernel over flat buffers; `formats.quants` does
the validation, reshaping and dispatch.  The quantizers reproduce ggml's
`quantize_row_*_ref` bit for bit, so every intermediate is float32: a Python
float literal would silently promote a whole expression to float64 inside
numba, hence the named np.float32 constants and the explicit np.float32(int)
conversions (C converts `int * float` to float, numba to float64).  Operand
order also follows the C source, because float32 rounding depends on it.
ggml builds that let the compiler fuse a*b+c into FMA (-ffp-contract=fast with
-mfma) can round differently; we match the unfused arithmetic.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from . import FORMATS, QK_K, GGMLType
from .fp16 import read_f16, write_f16

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_F32 = np.float32(32.0)
_F63 = np.float32(63.0)
_TENTH = np.float32(0.1)
_MAGIC = np.float32(12582912.0)  # 1.5 * 2**23, see nearest_int
_GROUP_MAX_EPS = np.float32(1e-15)

# Q8_K activation scale numerator: -127, as ggml's quantize_row_q8_K_ref uses
# today (it was -128 before ggml's IQ2 kernels), so activations of k-quant
# matmuls round as llama.cpp's do.  The native kernels use the same value.
_Q8K_NUMERATOR = np.float32(-127.0)

TS_Q2_K = FORMATS[GGMLType.Q2_K].type_size
TS_Q3_K = FORMATS[GGMLType.Q3_K].type_size
TS_Q4_K = FORMATS[GGMLType.Q4_K].type_size
TS_Q5_K = FORMATS[GGMLType.Q5_K].type_size
TS_Q6_K = FORMATS[GGMLType.Q6_K].type_size


# ----------------------------------------------------------------------------
# scalar helpers
# ----------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def nearest_int(fval):
    """ggml's nearest_int: adding 1.5*2**23 in float32 leaves round(fval),
    ties to even, in the low 23 mantissa bits, and the result is those bits
    minus 2**22.  Outside |fval| < 2**22 (reached when an fp16 scale
    overflowed to inf) the mantissa field is decoded from the sum the same
    way, so even those blocks come out as ggml writes them."""
    v = fval + _MAGIC
    a = abs(float(v))
    if 8388608.0 <= a < 16777216.0:
        return np.int64(a) - 12582912
    if a != a:
        return 0  # the default quiet NaN has mantissa field 2**22
    if a == math.inf or a == 0.0:
        return -4194304
    if a < 1.1754943508222875e-38:  # subnormal: the field is a / 2**-149
        return np.int64(a * 7.136238463529799e44) - 4194304
    m, e = math.frexp(a)
    return np.int64((m * 2.0 - 1.0) * 8388608.0) - 4194304


@njit(cache=True, nogil=True)
def scale_min_k4(j, s, o):
    """6-bit scale and min of sub-block j from the 12 packed bytes at s[o:]."""
    if j < 4:
        return np.int64(s[o + j] & 63), np.int64(s[o + j + 4] & 63)
    sc = (np.int64(s[o + j + 4]) & 0xF) | ((np.int64(s[o + j - 4]) >> 6) << 4)
    mn = (np.int64(s[o + j + 4]) >> 4) | ((np.int64(s[o + j]) >> 6) << 4)
    return sc, mn


@njit(cache=True, nogil=True)
def q3k_scale(s, o, k):
    """Signed 6-bit scale k (0..15) of a Q3_K block; scales start at s[o]."""
    if k < 8:
        lo = np.int64(s[o + k]) & 0xF
    else:
        lo = np.int64(s[o + k - 8]) >> 4
    hi = (np.int64(s[o + 8 + (k & 3)]) >> (2 * (k >> 2))) & 3
    return (lo | (hi << 4)) - 32


# ----------------------------------------------------------------------------
# dequantization (same operation order as ggml's dequantize_row_*)
# ----------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def dequant_q2_k(src, dst):
    for i in range(src.size // TS_Q2_K):
        o = i * TS_Q2_K
        y = i * QK_K
        d = read_f16(src, o + 80)
        dmin = read_f16(src, o + 82)
        for g in range(16):  # element e = 128*h + 32*j + l uses bits 2j of qs[32h + l]
            sc = np.int64(src[o + g])
            dl = d * np.float32(sc & 0xF)
            ml = dmin * np.float32(sc >> 4)
            h = g >> 3
            shift = 2 * ((g >> 1) & 3)
            base = o + 16 + 32 * h + 16 * (g & 1)
            for t in range(16):
                q = (np.int64(src[base + t]) >> shift) & 3
                dst[y + 16 * g + t] = dl * np.float32(q) - ml


@njit(cache=True, nogil=True)
def dequant_q3_k(src, dst):
    for i in range(src.size // TS_Q3_K):
        o = i * TS_Q3_K
        y = i * QK_K
        d = read_f16(src, o + 108)
        for g in range(16):  # same element order as Q2_K; high bit j+4h of hmask[l]
            dl = d * np.float32(q3k_scale(src, o + 96, g))
            h = g >> 3
            j = (g >> 1) & 3
            bit = 1 << (4 * h + j)
            for t in range(16):
                l = 16 * (g & 1) + t
                q = (np.int64(src[o + 32 + 32 * h + l]) >> (2 * j)) & 3
                if not (src[o + l] & bit):
                    q -= 4
                dst[y + 16 * g + t] = dl * np.float32(q)


@njit(cache=True, nogil=True)
def dequant_q4_k(src, dst):
    for i in range(src.size // TS_Q4_K):
        o = i * TS_Q4_K
        y = i * QK_K
        d = read_f16(src, o)
        dmin = read_f16(src, o + 2)
        for c in range(4):
            sc1, m1 = scale_min_k4(2 * c, src, o + 4)
            sc2, m2 = scale_min_k4(2 * c + 1, src, o + 4)
            d1 = d * np.float32(sc1)
            dm1 = dmin * np.float32(m1)
            d2 = d * np.float32(sc2)
            dm2 = dmin * np.float32(m2)
            for l in range(32):
                b = np.int64(src[o + 16 + 32 * c + l])
                dst[y + 64 * c + l] = d1 * np.float32(b & 0xF) - dm1
                dst[y + 64 * c + 32 + l] = d2 * np.float32(b >> 4) - dm2


@njit(cache=True, nogil=True)
def dequant_q5_k(src, dst):
    for i in range(src.size // TS_Q5_K):
        o = i * TS_Q5_K
        y = i * QK_K
        d = read_f16(src, o)
        dmin = read_f16(src, o + 2)
        for c in range(4):
            sc1, m1 = scale_min_k4(2 * c, src, o + 4)
            sc2, m2 = scale_min_k4(2 * c + 1, src, o + 4)
            d1 = d * np.float32(sc1)
            dm1 = dmin * np.float32(m1)
            d2 = d * np.float32(sc2)
            dm2 = dmin * np.float32(m2)
            for l in range(32):
                b = np.int64(src[o + 48 + 32 * c + l])
                hb = np.int64(src[o + 16 + l])
                q1 = (b & 0xF) | (((hb >> (2 * c)) & 1) << 4)
                q2 = (b >> 4) | (((hb >> (2 * c + 1)) & 1) << 4)
                dst[y + 64 * c + l] = d1 * np.float32(q1) - dm1
                dst[y + 64 * c + 32 + l] = d2 * np.float32(q2) - dm2


@njit(cache=True, nogil=True)
def q6k_value(src, o, e):
    """Signed 6-bit quant of element e (0..255) of the Q6_K block at src[o]."""
    h = e >> 7
    r = e & 127
    k = r >> 5
    l = r & 31
    b = np.int64(src[o + 64 * h + l + 32 * (k & 1)])
    lo = (b >> (4 * (k >> 1))) & 0xF
    hi = (np.int64(src[o + 128 + 32 * h + l]) >> (2 * k)) & 3
    return (lo | (hi << 4)) - 32


@njit(cache=True, nogil=True)
def dequant_q6_k(src, dst):
    for i in range(src.size // TS_Q6_K):
        o = i * TS_Q6_K
        y = i * QK_K
        d = read_f16(src, o + 208)
        for g in range(16):
            sc = np.int64(src[o + 192 + g])
            if sc >= 128:
                sc -= 256
            dl = d * np.float32(sc)  # ggml: d * sc * q, left to right
            for t in range(16):
                e = 16 * g + t
                dst[y + e] = dl * np.float32(q6k_value(src, o, e))


# ----------------------------------------------------------------------------
# quantization (quantize_row_q4_K_ref / q5_K_ref / q6_K_ref / q8_K_ref)
# ----------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _make_qkx2_quants(nmax, x, weights, L, Laux, rmin, rdelta, nstep):
    """Affine fit x ~ scale*L - the_min, L in [0, nmax], minimising the
    weighted squared error over a small grid of trial scales.
    Returns (scale, the_min)."""
    n = x.size
    mn = x[0]
    mx = x[0]
    sum_w = weights[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        xi = x[i]
        if xi < mn:
            mn = xi
        if xi > mx:
            mx = xi
        w = weights[i]
        sum_w += w
        sum_x += w * xi
    if mn > _F0:
        mn = _F0
    if mx == mn:
        for i in range(n):
            L[i] = 0
        return _F0, -mn
    fnmax = np.float32(nmax)
    iscale = fnmax / (mx - mn)
    scale = _F1 / iscale
    best_error = _F0
    for i in range(n):
        l = max(0, min(nmax, nearest_int(iscale * (x[i] - mn))))
        L[i] = l
        diff = scale * np.float32(l) + mn - x[i]
        best_error += weights[i] * (diff * diff)
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * np.float32(step) + fnmax) / (mx - mn)
        sum_l = _F0
        sum_l2 = _F0
        sum_xl = _F0
        for i in range(n):
            l = max(0, min(nmax, nearest_int(iscale * (x[i] - mn))))
            Laux[i] = l
            w = weights[i]
            fl = np.float32(l)
            sum_l += w * fl
            sum_l2 += w * fl * fl
            sum_xl += w * fl * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > _F0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > _F0:
                this_min = _F0
                this_scale = sum_xl / sum_l2
            cur_error = _F0
            for i in range(n):
                diff = this_scale * np.float32(Laux[i]) + this_min - x[i]
                cur_error += weights[i] * (diff * diff)
            if cur_error < best_error:
                for i in range(n):
                    L[i] = Laux[i]
                best_error = cur_error
                scale = this_scale
                mn = this_min
    return scale, -mn


@njit(cache=True, nogil=True)
def _quant_k_affine(x, dst, nmax, rmin, nstep, ts, qs_off):
    """Shared body of Q4_K (nmax 15) and Q5_K (nmax 31): 8 sub-blocks of 32,
    each scale and min stored as 6 bits relative to the super-block's d/dmin."""
    L = np.zeros(QK_K, np.uint8)
    Laux = np.zeros(32, np.uint8)
    weights = np.zeros(32, np.float32)
    scales = np.zeros(8, np.float32)
    mins = np.zeros(8, np.float32)
    for i in range(x.size // QK_K):
        xb = x[i * QK_K:(i + 1) * QK_K]
        o = i * ts
        max_scale = _F0
        max_min = _F0
        for j in range(8):
            xs = xb[32 * j:32 * j + 32]
            sum_x2 = _F0
            for l in range(32):
                sum_x2 += xs[l] * xs[l]
            av_x = np.float32(math.sqrt(sum_x2 / _F32))  # == sqrtf: double rounding is exact for sqrt
            for l in range(32):
                weights[l] = av_x + abs(xs[l])
            s, m = _make_qkx2_quants(nmax, xs, weights, L[32 * j:32 * j + 32], Laux, rmin, _TENTH, nstep)
            scales[j] = s
            mins[j] = m
            if s > max_scale:
                max_scale = s
            if m > max_min:
                max_min = m
        inv_scale = _F63 / max_scale if max_scale > _F0 else _F0
        inv_min = _F63 / max_min if max_min > _F0 else _F0
        for t in range(12):
            dst[o + 4 + t] = 0
        for j in range(8):
            # ggml stores nearest_int in a uint8 before clamping: keep the wrap
            ls = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)
            lm = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
            if j < 4:
                dst[o + 4 + j] = ls
                dst[o + 4 + j + 4] = lm
            else:
                dst[o + 4 + j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
                dst[o + 4 + j - 4] |= (ls >> 4) << 6
                dst[o + 4 + j] |= (lm >> 4) << 6
        write_f16(dst, o, max_scale / _F63)
        write_f16(dst, o + 2, max_min / _F63)
        d_all = read_f16(dst, o)
        dmin_all = read_f16(dst, o + 2)
        for j in range(8):
            sc, m = scale_min_k4(j, dst, o + 4)
            d = d_all * np.float32(sc)
            if d == _F0:
                continue  # keeps the levels chosen by _make_qkx2_quants, as ggml does
            dm = dmin_all * np.float32(m)
            for l in range(32):
                q = nearest_int((xb[32 * j + l] + dm) / d)
                L[32 * j + l] = max(0, min(nmax, q))
        if nmax == 31:
            for t in range(32):
                dst[o + 16 + t] = 0
            for c in range(4):
                for l in range(32):
                    l1 = np.int64(L[64 * c + l])
                    l2 = np.int64(L[64 * c + 32 + l])
                    if l1 > 15:
                        l1 -= 16
                        dst[o + 16 + l] |= 1 << (2 * c)
                    if l2 > 15:
                        l2 -= 16
                        dst[o + 16 + l] |= 2 << (2 * c)
                    dst[o + qs_off + 32 * c + l] = l1 | (l2 << 4)
        else:
            for c in range(4):
                for l in range(32):
                    dst[o + qs_off + 32 * c + l] = L[64 * c + l] | (L[64 * c + 32 + l] << 4)


def quant_q4_k(x, dst):
    _quant_k_affine(x, dst, 15, np.float32(-1.0), 20, TS_Q4_K, 16)


def quant_q5_k(x, dst):
    _quant_k_affine(x, dst, 31, np.float32(-0.5), 15, TS_Q5_K, 48)


@njit(cache=True, nogil=True)
def _make_qx_quants_rmse1(nmax, x, L):
    """Symmetric fit x ~ scale*(L - nmax) weighted by x**2 (ggml's
    make_qx_quants with rmse_type 1 and no importance weights)."""
    n = x.size
    mx = _F0
    amax = _F0
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    if amax < _GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return _F0
    fnmax = np.float32(nmax)
    iscale = -fnmax / mx
    sumlx = _F0
    suml2 = _F0
    for i in range(n):
        l = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
        L[i] = l + nmax
        w = x[i] * x[i]
        fl = np.float32(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    scale = sumlx / suml2 if suml2 != _F0 else _F0
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(fnmax + _TENTH * np.float32(step)) / mx
        sumlx = _F0
        suml2 = _F0
        for i in range(n):
            l = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
            w = x[i] * x[i]
            fl = np.float32(l)
            sumlx += w * x[i] * fl
            suml2 += w * fl * fl
        if suml2 > _F0 and sumlx * sumlx > best * suml2:
            for i in range(n):
                L[i] = nmax + max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@njit(cache=True, nogil=True)
def quant_q6_k(x, dst):
    L = np.zeros(QK_K, np.uint8)
    scales = np.zeros(16, np.float32)
    for i in range(x.size // QK_K):
        xb = x[i * QK_K:(i + 1) * QK_K]
        o = i * TS_Q6_K
        max_scale = _F0
        max_abs_scale = _F0
        for g in range(16):
            s = _make_qx_quants_rmse1(32, xb[16 * g:16 * g + 16], L[16 * g:16 * g + 16])
            scales[g] = s
            if abs(s) > max_abs_scale:
                max_abs_scale = abs(s)
                max_scale = s
        if max_abs_scale < _GROUP_MAX_EPS:
            for t in range(TS_Q6_K):
                dst[o + t] = 0
            continue
        iscale = np.float32(-128.0) / max_scale
        write_f16(dst, o + 208, _F1 / iscale)
        d_all = read_f16(dst, o + 208)
        for g in range(16):
            sc = min(127, nearest_int(iscale * scales[g]))
            dst[o + 192 + g] = sc & 0xFF
            d = d_all * np.float32(sc)
            if d == _F0:
                continue
            for t in range(16):
                q = nearest_int(xb[16 * g + t] / d)
                L[16 * g + t] = max(-32, min(31, q)) + 32
        for h in range(2):
            for l in range(32):
                a = np.int64(L[128 * h + l])
                b = np.int64(L[128 * h + 32 + l])
                c = np.int64(L[128 * h + 64 + l])
                e = np.int64(L[128 * h + 96 + l])
                dst[o + 64 * h + l] = (a & 0xF) | ((c & 0xF) << 4)
                dst[o + 64 * h + 32 + l] = (b & 0xF) | ((e & 0xF) << 4)
                dst[o + 128 + 32 * h + l] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6)


@njit(cache=True, nogil=True)
def quant_q8_k(x, d_out, qs_out, bsums_out):
    """Q8_K fields go to separate arrays; the caller packs the 292-byte blocks
    (numba cannot store a float32 into a byte buffer without a bit cast)."""
    for i in range(x.size // QK_K):
        xb = x[i * QK_K:(i + 1) * QK_K]
        mx = _F0
        amax = _F0
        for j in range(QK_K):
            ax = abs(xb[j])
            if ax > amax:
                amax = ax
                mx = xb[j]
        if amax == _F0:
            d_out[i] = _F0
            for j in range(QK_K):
                qs_out[i * QK_K + j] = 0
            for j in range(16):
                bsums_out[i * 16 + j] = 0
            continue
        iscale = _Q8K_NUMERATOR / mx
        for g in range(16):
            s = 0
            for t in range(16):
                v = min(127, nearest_int(iscale * xb[16 * g + t]))
                qs_out[i * QK_K + 16 * g + t] = v
                s += v
            bsums_out[i * 16 + g] = s
        d_out[i] = _F1 / iscale
