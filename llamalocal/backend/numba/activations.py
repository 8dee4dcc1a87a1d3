"""Activation rows quantized for the integer kernels, as the native
quantize_activations does: Q8_0/Q8_1 as llama.cpp's runtime quantizers round
(native/scalar/legacy.cpp quant_q8_0/_1), Q8_K as ggml's reference one
(kquants.cpp quant_q8_k).  On the calling thread: cheap next to the product,
which reads every weight.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ...formats import QK, QK_K, GGMLType
from ...formats.fp16 import f16_to_f32, f32_to_f16
from ...formats.kquants import quant_q8_k
from .ggml_math import F0

T = GGMLType

_MAGIC = np.float32(12582912.0)  # 1.5 * 2^23: x + _MAGIC rounds x to an integer, half to even
_F127 = np.float32(127.0)


@njit(cache=True, nogil=True)
def quant_q8(x, with_sum, qs, dh, sh, d, s):
    """llama.cpp's runtime Q8_0/Q8_1 quantizer per block of 32: id = 127/amax,
    qs = round_half_even(x * id), d = fp16(amax/127) and, for Q8_1, s =
    fp16(d * sum(qs)); dh and sh get the fp16 bits, d and s their values (s
    stays 0 for Q8_0, which has none)."""
    B, K = x.shape
    nb = K // QK
    for task in range(B * nb):
        r, i = task // nb, task % nb
        xb = x[r, i * QK:(i + 1) * QK]
        amax = F0
        for j in range(QK):
            amax = max(amax, abs(xb[j]))
        inv = _F127 / amax if amax != F0 else F0
        total = 0
        for j in range(QK):
            v = np.int64((xb[j] * inv + _MAGIC) - _MAGIC)
            qs[r, i * QK + j] = v
            total += v
        dr = amax / _F127
        dh[r, i] = f32_to_f16(dr)
        d[r, i] = f16_to_f32(dh[r, i])
        sh[r, i] = f32_to_f16(dr * np.float32(total)) if with_sum else 0
        s[r, i] = f16_to_f32(sh[r, i])


@njit(cache=True, nogil=True)
def quant_q8_k_rows(x, qs, d, bsums):
    """ggml's quantize_row_q8_K_ref (formats.kquants.quant_q8_k) of every row."""
    for r in range(x.shape[0]):
        quant_q8_k(x[r], d[r], qs[r], bsums[r])


class Activations:
    """Quantized activation rows as the kernels read them: int8 quants qs
    (B, K), float32 block scales d, and Q8_1's s (float32 per block) or
    Q8_K's bsums (int32 per 16)."""

    def __init__(self, vtype: GGMLType, x: np.ndarray):
        B, K = x.shape
        self.vtype = vtype
        self.qs = np.empty((B, K), np.int8)
        if vtype == T.Q8_K:
            self.d = np.empty((B, K // QK_K), np.float32)
            self.bsums = np.empty((B, K // 16), np.int32)
            quant_q8_k_rows(x, self.qs, self.d, self.bsums)
            self.s = np.zeros((B, 0), np.float32)
        else:
            self.dh = np.empty((B, K // QK), np.uint16)
            self.sh = np.empty((B, K // QK), np.uint16)
            self.d = np.empty((B, K // QK), np.float32)
            self.s = np.empty((B, K // QK), np.float32)
            quant_q8(x, vtype == T.Q8_1, self.qs, self.dh, self.sh, self.d, self.s)
            self.bsums = np.zeros((B, 0), np.int32)

    def packed(self) -> np.ndarray:
        """The rows as native/blocks.h lays the blocks out, uint8 (B, row_bytes)."""
        B = self.qs.shape[0]
        qs = self.qs.view(np.uint8).reshape(B, -1, QK_K if self.vtype == T.Q8_K else QK)
        if self.vtype == T.Q8_K:
            parts = [self.d.astype("<f4").reshape(B, -1, 1).view(np.uint8), qs,
                     self.bsums.astype("<i2").reshape(B, -1, 16).view(np.uint8)]
        else:
            halves = [self.dh, self.sh] if self.vtype == T.Q8_1 else [self.dh]
            parts = [h.astype("<u2").reshape(B, -1, 1).view(np.uint8) for h in halves] + [qs]
        return np.concatenate(parts, axis=2).reshape(B, -1)
