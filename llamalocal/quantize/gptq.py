"""GPTQ quantization into ggml's legacy block formats.

GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers") quantizes a linear layer's weight matrix
W one input column at a time.  After each column it spreads that column's
rounding error over the columns still waiting, weighted by the inverse
Hessian of the layer's squared output error.  The output error matters, not
the weight error, so the weights move to cancel each other's rounding along
the directions the calibration inputs actually use.

The loop follows IST-DASLab's reference `gptq.py` (`fasterquant`) and keeps
its symbols: H, Hinv, W, W1, Q, Q1, Err1, blocksize (`block_size` here) and
percdamp (`damp` here).  Only the grid is different: every group of 32
contiguous input columns is one ggml block.  Its scale d (and min m) is chosen
exactly as ggml's `quantize_row_*_ref` chooses it, rounded to fp16 as stored,
and each weight is rounded with ggml's own formula.  So the output is plain
Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 blocks that llama.cpp reads with its usual
kernels, and `GPTQResult.q` is bit for bit what dequantizing them gives.

Orientation: GGUF stores a linear layer as (rows = output features, cols =
input features) and ggml's blocks run along cols.  GPTQ's columns are also
input features, so each column step visits one position of every block in
that block column.

Two deliberate differences from the reference:
  * Dynamic groups (act_order=False) take their parameters from the fully
    error-updated weights at the start of the group.  IST-DASLab reads them
    from its outer W, which misses the updates made earlier in the same lazy
    batch whenever groupsize < blocksize.  Here `block_size` must be a
    multiple of 32, so every group lies inside one lazy batch and is read
    from W1.
  * H and the working W are float64, not float32.  Rounding must be decided
    on float32 values to reproduce ggml's grid, so each weight is narrowed to
    float32 only at that point.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from ..formats import QK, GGMLType, block_format
from ..formats.fp16 import f16_to_f32, f64_to_f16

__all__ = ["HessianAccumulator", "GPTQResult", "gptq_quantize", "proxy_loss", "GPTQ_TYPES"]

T = GGMLType

# How each format maps a group to codes.  SYM: d = max / -half, where max is the
# signed value of largest magnitude, and value = (q - half) * d.  AFFINE:
# d = (max - min) / top, m = min and value = q * d + m.  Q8: d = amax / 127 and
# value = q * d.
_SYM, _AFFINE, _Q8 = 0, 1, 2
# qtype -> (kind, levels).  levels is `half` for SYM, `top` (the largest code)
# for AFFINE, and 127 for Q8.
_SCHEMES = {
    T.Q4_0: (_SYM, 8),
    T.Q5_0: (_SYM, 16),
    T.Q4_1: (_AFFINE, 15),
    T.Q5_1: (_AFFINE, 31),
    T.Q8_0: (_Q8, 127),
}
GPTQ_TYPES: tuple[GGMLType, ...] = tuple(_SCHEMES)

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_HALF = np.float32(0.5)

# Attempts at Cholesky: the requested damping, then 10x more each time.
_CHOLESKY_TRIES = 5


# ----------------------------------------------------------------------------
# Hessian
# ----------------------------------------------------------------------------


class HessianAccumulator:
    """Running H = 2/n · Σ x xᵀ over calibration rows (float64).

    This is the Hessian of the layer's summed squared output error
    (2/n)·Σ‖(W - Q) x‖² with respect to each row of W.  The raw sum Σ x xᵀ is
    accumulated and scaled only when read.  That is the same matrix as
    IST-DASLab's running rescale but with one rounding fewer per batch, and
    float64 because H is inverted later and calibration sets can be long.
    """

    def __init__(self, n_cols: int):
        if n_cols <= 0:
            raise ValueError(f"n_cols must be positive, got {n_cols}")
        self.n_cols = int(n_cols)
        self._sum = np.zeros((self.n_cols, self.n_cols), np.float64)
        self._n = 0

    def add(self, x: np.ndarray) -> None:
        """Add inputs x (..., n_cols); leading dimensions (batch, sequence) are flattened into rows."""
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[-1] != self.n_cols:
            raise ValueError(f"expected inputs with last dimension {self.n_cols}, got shape {x.shape}")
        x = x.reshape(-1, self.n_cols).astype(np.float64)
        if not np.isfinite(x).all():
            raise ValueError("calibration inputs contain NaN or inf")
        self._sum += x.T @ x
        self._n += x.shape[0]

    @property
    def n(self) -> int:
        return self._n

    def hessian(self) -> np.ndarray:
        """(n_cols, n_cols) float64 copy.  All zeros before any rows have been
        added, which gptq_quantize treats as every column dead."""
        if self._n == 0:
            return np.zeros_like(self._sum)
        return self._sum * (2.0 / self._n)


def proxy_loss(w: np.ndarray, q: np.ndarray, h: np.ndarray) -> float:
    """tr((W - Q) H (W - Q)ᵀ) / rows, in float64.

    With H from HessianAccumulator this is (2/n)·Σ‖(W - Q) x‖² / rows: the mean
    squared output error of the quantized layer over the calibration inputs,
    per output feature, times 2.  It is the quantity GPTQ minimizes, and it
    compares any two quantizations of the same W (GPTQ, round-to-nearest).
    """
    delta = np.asarray(w, np.float64) - np.asarray(q, np.float64)
    if delta.shape[0] == 0:
        return 0.0
    return float(np.einsum("ij,ij->", delta @ np.asarray(h, np.float64), delta) / delta.shape[0])


# ----------------------------------------------------------------------------
# Hinv
# ----------------------------------------------------------------------------


def _inv_upper(r: np.ndarray) -> np.ndarray:
    """Inverse of an upper triangular matrix by 2x2 block recursion.

    inv([[A, B], [0, D]]) = [[A⁻¹, -A⁻¹ B D⁻¹], [0, D⁻¹]].  Nearly all the
    work lands in matrix products, about n³/3 flops.  A general np.linalg.inv
    costs roughly eight times that, and numpy has no trtri."""
    n = r.shape[0]
    if n <= 64:
        # LU of a triangular matrix does not pivot, so this is back-substitution.
        return np.triu(np.linalg.inv(r))
    k = n // 2
    a_inv = _inv_upper(r[:k, :k])
    d_inv = _inv_upper(r[k:, k:])
    out = np.zeros_like(r)
    out[:k, :k] = a_inv
    out[k:, k:] = d_inv
    out[:k, k:] = -(a_inv @ r[:k, k:]) @ d_inv
    return out


def _upper_cholesky_of_inverse(H: np.ndarray) -> np.ndarray:
    """U upper triangular with Uᵀ U = H⁻¹: IST-DASLab's
    cholesky(cholesky_inverse(cholesky(H)), upper=True).

    Reverse the index order, factor, and reverse back: H = R Rᵀ with R upper.
    Then H⁻¹ = R⁻ᵀ R⁻¹, so U = R⁻¹.  A Cholesky factor with a positive diagonal
    is unique, so this is the same matrix with one factorization instead of
    two and no explicit H⁻¹.  Raises LinAlgError if H is not positive
    definite."""
    r = np.linalg.cholesky(H[::-1, ::-1])[::-1, ::-1]
    U = _inv_upper(np.ascontiguousarray(r))
    if not np.isfinite(U).all():
        raise np.linalg.LinAlgError("inverse Cholesky factor is not finite")
    return U


def _damped_hinv(H: np.ndarray, damp: float) -> np.ndarray:
    """Add damp · mean(diag H) to the diagonal and factor.  If that is not
    positive definite (for example a rank-deficient H with damp=0, or rounding
    in a badly conditioned one), retry with 10x the damping a few times."""
    mean_diag = float(np.mean(np.diag(H)))
    idx = np.arange(H.shape[0])
    percdamp = damp
    for _ in range(_CHOLESKY_TRIES):
        Hd = H.copy()
        Hd[idx, idx] += percdamp * mean_diag
        try:
            return _upper_cholesky_of_inverse(Hd)
        except np.linalg.LinAlgError:
            percdamp = percdamp * 10.0 if percdamp > 0 else 1e-4
    raise np.linalg.LinAlgError(
        f"GPTQ: the Hessian is not positive definite even with damping {percdamp / 10.0:g} x mean(diag(H)) "
        f"(tried from {damp:g}); H should be 2/n X^T X of finite calibration inputs")


# ----------------------------------------------------------------------------
# the ggml grid
# ----------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _f16_round(v):
    return f16_to_f32(f64_to_f16(v))


@numba.njit(cache=True, nogil=True)
def _find_params(Wc, c0, g, kind, levels, inv, lo, dq, mq):
    """Choose group g's parameters from columns c0..c0+31 of Wc, row by row,
    as ggml's quantize_row_*_ref does.  Everything is float32 in C's operation
    order, so the stored bytes match.

    inv and lo are what ggml rounds with: 1/d from the unrounded d, and the
    unrounded min.  dq and mq are the fp16 values actually stored, which are
    what dequantization (and therefore Q and GPTQ's error) uses."""
    for r in range(Wc.shape[0]):
        if kind == _AFFINE:
            mn = np.float32(Wc[r, c0])
            mx = mn
            for j in range(1, QK):
                v = np.float32(Wc[r, c0 + j])
                if v < mn:
                    mn = v
                if v > mx:
                    mx = v
            d = (mx - mn) / np.float32(levels)
            m = mn
        else:
            # strict < keeps the first element of largest magnitude, as ggml does
            amax = _F0
            mx = _F0
            for j in range(QK):
                v = np.float32(Wc[r, c0 + j])
                if amax < abs(v):
                    amax = abs(v)
                    mx = v
            if kind == _SYM:
                d = mx / np.float32(-levels)
            else:
                d = amax / np.float32(levels)
            m = _F0
        inv[r, g] = _F1 / d if d != _F0 else _F0
        lo[r, g] = m
        dq[r, g] = _f16_round(d)
        mq[r, g] = _f16_round(m)


@numba.njit(cache=True, nogil=True)
def _round_to_grid(x, kind, levels, inv, lo, dq, mq):
    """(code, value) for float32 x on one group's grid.

    The code uses ggml's rounding expression, so with no error feedback the
    result is ggml's round-to-nearest.  GPTQ's updates can move a weight
    outside the range its group was sized for, so codes are clamped at both
    ends; ggml clamps only the top because it never sees such values.  The
    value is computed from the stored fp16 parameters in gguf's dequantization
    order."""
    if kind == _Q8:
        v = x * inv
        # C roundf, with the +0.5 in float64 where it is exact
        a = np.floor(abs(np.float64(v)) + 0.5)
        if not a <= 127.0:  # also catches NaN; -128 is avoided to keep the grid symmetric like ggml's
            a = 127.0
        c = np.int64(a)
        if v < _F0:
            c = -c
        return c, np.float32(c) * dq
    top = 2 * levels - 1 if kind == _SYM else levels
    if kind == _SYM:
        v = x * inv + (np.float32(levels) + _HALF)
    else:
        v = (x - lo) * inv + _HALF
    if not v > _F0:
        c = 0
    elif v >= np.float32(top):
        c = top
    else:
        c = np.int64(v)  # truncation, as C's (int8_t) cast
    if kind == _SYM:
        return c, np.float32(c - levels) * dq
    return c, np.float32(c) * dq + mq


@numba.njit(cache=True, nogil=True)
def _gptq_block(W1, Hinv1, grp, dynamic, kind, levels, inv, lo, dq, mq, Q1, codes1, Err1):
    """The inner loop of fasterquant over one lazy batch of columns.

    W1 (rows, count) float64 holds the current weights of this batch and is
    updated in place.  grp[i] is the ggml block column (group) of the batch's
    column i.  With `dynamic`, a group's parameters are chosen when its first
    column comes up, from W1 as the errors have left it.  Otherwise they were
    filled in beforehand (static groups).

    Row by row, each weight's error err = (w - q) / Hinv[i, i] is pushed onto
    the batch's remaining columns: W1[:, j] -= err * Hinv1[i, j].  Hinv's
    rows come from the Cholesky factor, which is why one row of it is enough
    (the OBS update after earlier columns are eliminated).  Running along
    each row keeps the inner loop contiguous."""
    rows, count = W1.shape
    for i in range(count):
        g = grp[i]
        if dynamic and i % QK == 0:
            _find_params(W1, i, g, kind, levels, inv, lo, dq, mq)
        d = Hinv1[i, i]
        for r in range(rows):
            w = W1[r, i]
            c, q = _round_to_grid(np.float32(w), kind, levels, inv[r, g], lo[r, g], dq[r, g], mq[r, g])
            codes1[r, i] = c
            Q1[r, i] = q
            err = (w - q) / d
            Err1[r, i] = err
            for j in range(i + 1, count):
                W1[r, j] -= err * Hinv1[i, j]


@numba.njit(cache=True, nogil=True)
def _static_params(W, kind, levels, inv, lo, dq, mq):
    for g in range(W.shape[1] // QK):
        _find_params(W, g * QK, g, kind, levels, inv, lo, dq, mq)


def _pack(codes: np.ndarray, dq: np.ndarray, mq: np.ndarray, qtype: GGMLType) -> np.ndarray:
    """Lay codes (rows, cols) and per-block fp16 parameters out as ggml blocks
    (native/blocks.h).  Byte j of the nibbles holds element j low and element
    j+16 high.  Q5's qh holds bit 4 of element j in bit j, little-endian."""
    rows, cols = codes.shape
    nb = cols // QK
    c = codes.reshape(rows, nb, QK)
    d = dq.astype("<f2").view(np.uint8).reshape(rows, nb, 2)
    parts = [d]
    if qtype in (T.Q4_1, T.Q5_1):
        parts.append(mq.astype("<f2").view(np.uint8).reshape(rows, nb, 2))
    if qtype == T.Q8_0:
        parts.append(c.astype(np.int8).view(np.uint8))
    else:
        u = c.astype(np.uint32)
        if qtype in (T.Q5_0, T.Q5_1):
            qh = (((u >> 4) & 1) << np.arange(QK, dtype=np.uint32)).sum(axis=-1, dtype=np.uint32)
            parts.append(qh.astype("<u4").view(np.uint8).reshape(rows, nb, 4))
        parts.append(((u[..., :QK // 2] & 0xF) | ((u[..., QK // 2:] & 0xF) << 4)).astype(np.uint8))
    return np.concatenate(parts, axis=-1).reshape(rows, -1)


# ----------------------------------------------------------------------------
# GPTQ
# ----------------------------------------------------------------------------


@dataclass
class GPTQResult:
    data: np.ndarray  # uint8 (rows, row_bytes): the ggml blocks, row-major, as stored in GGUF
    q: np.ndarray  # float32 (rows, cols): exactly what dequantizing `data` gives
    loss: float  # proxy_loss(w, q, h): tr((W-Q) H (W-Q)ᵀ) / rows with the undamped H given


def gptq_quantize(w: np.ndarray, h: np.ndarray, qtype, *, damp: float = 0.01, act_order: bool = False,
                  block_size: int = 128) -> GPTQResult:
    """w: float32 (rows, cols) as stored in GGUF (rows = output features, cols = input features, the
    dimension the ggml blocks run along); h: (cols, cols) from HessianAccumulator.hessian().

    qtype: Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0 (GGMLType, ggml id or name).
    damp: IST-DASLab's percdamp, as a fraction of mean(diag(H)).
    act_order: process columns by descending diag(H), with static groups.
    block_size: columns per lazy batch update, a multiple of 32.
    Raises ValueError for bad arguments and np.linalg.LinAlgError (itself a
    ValueError) if H cannot be made positive definite.
    """
    fmt = block_format(qtype)
    if fmt.type not in _SCHEMES:
        raise ValueError(f"GPTQ supports {', '.join(t.name for t in GPTQ_TYPES)}, not {fmt.name}")
    kind, levels = _SCHEMES[fmt.type]
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D weight matrix (rows, cols), got shape {w.shape}")
    rows, cols = w.shape
    if cols % QK or cols == 0:
        raise ValueError(f"{fmt.name}: cols = {cols} is not a positive multiple of the block size {QK}")
    if block_size <= 0 or block_size % QK:
        raise ValueError(f"block_size must be a positive multiple of {QK} so groups never straddle "
                         f"a lazy batch, got {block_size}")
    if not damp >= 0:
        raise ValueError(f"damp must be >= 0, got {damp}")
    h = np.asarray(h, np.float64)
    if h.shape != (cols, cols):
        raise ValueError(f"expected H of shape ({cols}, {cols}), got {h.shape}")
    if not np.isfinite(h).all():
        raise ValueError("H contains NaN or inf")
    # ggml quantizes float32, so that is the W the grid is fitted to
    w32 = w.astype(np.float32)
    if not np.isfinite(w32).all():
        raise ValueError("weights contain NaN or inf")
    if rows == 0:
        return GPTQResult(np.zeros((0, fmt.row_bytes(cols)), np.uint8), np.zeros((0, cols), np.float32), 0.0)

    # Columns whose input is always zero have no effect on the output: give H
    # a unit diagonal there so it stays invertible, and zero the weight so no
    # error is ever attributed to it.
    H = h.copy()
    W = w32.astype(np.float64)
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0

    n_groups = cols // QK
    inv = np.zeros((rows, n_groups), np.float32)
    lo = np.zeros_like(inv)
    dq = np.zeros_like(inv)
    mq = np.zeros_like(inv)
    if act_order:
        # Groups must stay contiguous ggml blocks while columns are visited out
        # of order, so each block's parameters come from the weights before any
        # error feedback ("static groups").
        _static_params(W, kind, levels, inv, lo, dq, mq)
        # stable, so equal diagonals keep their natural order
        perm = np.argsort(-np.diag(H), kind="stable")
        W = W[:, perm]
        H = H[perm][:, perm]
    else:
        perm = np.arange(cols)
    grp = (perm // QK).astype(np.int64)

    Hinv = _damped_hinv(H, damp)

    Q = np.empty((rows, cols), np.float32)
    codes = np.empty((rows, cols), np.int16)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        count = i2 - i1
        W1 = np.ascontiguousarray(W[:, i1:i2])
        Q1 = np.empty((rows, count), np.float32)
        codes1 = np.empty((rows, count), np.int16)
        Err1 = np.empty((rows, count), np.float64)
        _gptq_block(W1, np.ascontiguousarray(Hinv[i1:i2, i1:i2]), grp[i1:i2], not act_order,
                    kind, levels, inv, lo, dq, mq, Q1, codes1, Err1)
        Q[:, i1:i2] = Q1
        codes[:, i1:i2] = codes1
        # the lazy batch update: all later columns at once, as one matrix product
        if i2 < cols:
            W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    if act_order:
        Qo = np.empty_like(Q)
        Qo[:, perm] = Q
        co = np.empty_like(codes)
        co[:, perm] = codes
        Q, codes = Qo, co
    if not np.isfinite(Q).all():
        raise ValueError(f"{fmt.name}: a block scale overflows fp16 (weights too large for this format)")
    data = _pack(codes, dq, mq, fmt.type)
    return GPTQResult(data=data, q=Q, loss=proxy_loss(w32, Q, h))
