"""llamalocal.gptq: GPTQ output is exact ggml blocks, ggml's own grid, and better than round-to-nearest."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as G

from llamalocal.formats import quants
from llamalocal.formats import FORMATS, GGMLType
from llamalocal.quantize.gptq import GPTQ_TYPES, HessianAccumulator, gptq_quantize, proxy_loss

T = GGMLType
TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]


def gg(t: GGMLType) -> G:
    return G(int(t))


def bits(a: np.ndarray) -> np.ndarray:
    # compare float32 by bit pattern, so -0.0 vs 0.0 or NaN would count as a difference
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def weights(rows: int, cols: int, seed: int) -> np.ndarray:
    """Random weights with two all-zero rows and one column 1000x larger than the rest."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[[0, rows // 2]] = 0.0
    w[:, 37] *= 1000.0
    return w


def correlated_hessian(cols: int, n: int, seed: int) -> np.ndarray:
    """H from inputs X = Z @ A: a random mixing matrix makes the columns strongly correlated."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, cols)) @ rng.standard_normal((cols, cols))
    acc = HessianAccumulator(cols)
    acc.add(x.astype(np.float32))
    return acc.hessian()


def rtn_loss(w: np.ndarray, h: np.ndarray, t: GGMLType) -> float:
    return proxy_loss(w, gguf.quants.dequantize(gguf.quants.quantize(w, gg(t)), gg(t)), h)


# ----------------------------------------------------------------------------
# 1. exact ggml blocks
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("t", TYPES)
def test_round_trip_is_exact(t, act_order):
    rows, cols = 17, 256  # two lazy batches of 128, eight groups
    w = weights(rows, cols, seed=1)
    h = correlated_hessian(cols, 4 * cols, seed=2)
    for block_size in (128, 32):
        res = gptq_quantize(w, h, t, act_order=act_order, block_size=block_size)
        assert res.data.dtype == np.uint8 and res.data.shape == (rows, FORMATS[t].row_bytes(cols))
        assert res.q.dtype == np.float32 and res.q.shape == (rows, cols)
        assert isinstance(res.loss, float) and np.isfinite(res.loss)
        assert res.loss == pytest.approx(proxy_loss(w, res.q, h), rel=1e-12)
        assert np.isfinite(res.q).all()
        np.testing.assert_array_equal(bits(gguf.quants.dequantize(res.data, gg(t))), bits(res.q))
        np.testing.assert_array_equal(bits(quants.dequantize(res.data, t)), bits(res.q))
        # GPTQ really moved weights away from round-to-nearest (error feedback happened)
        assert not np.array_equal(res.data, gguf.quants.quantize(w, gg(t)))


# ----------------------------------------------------------------------------
# 2. the grid is ggml's
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("t", TYPES)
def test_identity_hessian_is_ggml_round_to_nearest(t, act_order):
    # With H = I, Hinv is diagonal, so no error reaches any other column and GPTQ
    # degenerates to rounding each weight on its group's grid.  Equal diagonals
    # leave act_order's (stable) permutation as the identity, and static groups
    # are then ggml's groups too.
    w = weights(19, 160, seed=3)
    res = gptq_quantize(w, np.eye(160), t, act_order=act_order)
    np.testing.assert_array_equal(res.data, gguf.quants.quantize(w, gg(t)))
    np.testing.assert_array_equal(res.data, quants.quantize(w, t))


# ----------------------------------------------------------------------------
# 3. better than round-to-nearest where it matters
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("t", [T.Q4_0, T.Q4_1])
def test_gptq_beats_rtn_on_correlated_inputs(t, act_order):
    rows, cols = 64, 256
    w = np.random.default_rng(4).standard_normal((rows, cols)).astype(np.float32)
    h = correlated_hessian(cols, 4 * cols, seed=5)
    res = gptq_quantize(w, h, t, act_order=act_order)
    assert res.loss <= 0.7 * rtn_loss(w, h, t)


# ----------------------------------------------------------------------------
# the algorithm is IST-DASLab's
# ----------------------------------------------------------------------------


def _group_params(wg: np.ndarray, t: GGMLType):
    """gguf.quants' choice of (id, min, fp16 d, fp16 m) for groups wg (rows, 32), float32."""
    wg = wg.astype(np.float32)
    if t == T.Q4_0:
        mx = np.take_along_axis(wg, abs(wg).argmax(axis=-1, keepdims=True), axis=-1)
        d, m = mx / np.float32(-8), np.zeros_like(mx)
    else:
        m = wg.min(axis=-1, keepdims=True)
        d = (wg.max(axis=-1, keepdims=True) - m) / np.float32(15)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    return inv, m, d.astype(np.float16).astype(np.float32), m.astype(np.float16).astype(np.float32)


def _round(w: np.ndarray, p, t: GGMLType) -> np.ndarray:
    inv, m, dq, mq = (a[:, 0] for a in p)
    x = w.astype(np.float32)
    if t == T.Q4_0:
        c = np.clip(np.trunc(x * inv + np.float32(8.5)), 0, 15)
        return (c - np.float32(8)).astype(np.float32) * dq
    c = np.clip(np.trunc((x - m) * inv + np.float32(0.5)), 0, 15).astype(np.float32)
    return c * dq + mq


def ist_daslab_fasterquant(W, H, t, blocksize, percdamp, actorder):
    """numpy transliteration of IST-DASLab gptq.py's fasterquant with groupsize=32
    (static_groups when actorder) and ggml's round-to-nearest as the quantizer."""
    W = W.astype(np.float64)
    H = H.copy()
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    groupsize = 32
    if actorder:
        groups = [_group_params(W[:, i:i + groupsize], t) for i in range(0, W.shape[1], groupsize)]
        perm = np.argsort(-np.diag(H), kind="stable")
        W = W[:, perm]
        H = H[perm][:, perm]
        invperm = np.argsort(perm)
    Q = np.zeros_like(W, dtype=np.float32)
    damp = percdamp * np.mean(np.diag(H))
    H[np.diag_indices_from(H)] += damp
    Hinv = np.linalg.cholesky(np.linalg.inv(H)).T
    for i1 in range(0, W.shape[1], blocksize):
        i2 = min(i1 + blocksize, W.shape[1])
        W1 = W[:, i1:i2].copy()
        Err1 = np.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hinv1[i, i]
            if not actorder:
                if (i1 + i) % groupsize == 0:
                    params = _group_params(W[:, i1 + i:i1 + i + groupsize], t)
            else:
                params = groups[perm[i1 + i] // groupsize]
            q = _round(w, params, t)
            Q[:, i1 + i] = q
            err1 = (w - q) / d
            W1[:, i:] -= np.outer(err1, Hinv1[i, i:])
            Err1[:, i] = err1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return Q[:, invperm] if actorder else Q


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("t", [T.Q4_0, T.Q4_1])
def test_matches_ist_daslab_transliteration(t, act_order):
    rows, cols = 11, 128
    w = weights(rows, cols, seed=6)
    x = np.random.default_rng(7).standard_normal((3 * cols, cols)) @ np.random.default_rng(8).standard_normal((cols, cols))
    x[:, [3, 90]] = 0.0  # dead columns
    acc = HessianAccumulator(cols)
    acc.add(x)
    h = acc.hessian()
    # blocksize 32 = groupsize, where IST-DASLab's group parameters see the fully updated weights
    ref = ist_daslab_fasterquant(w, h, t, 32, 0.01, act_order)
    for block_size in (32, 64, 128):
        res = gptq_quantize(w, h, t, act_order=act_order, block_size=block_size)
        np.testing.assert_array_equal(res.q, ref)


# ----------------------------------------------------------------------------
# 4. degenerate Hessians and bad arguments
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("t", TYPES)
def test_dead_columns_and_zero_hessian(t, act_order):
    rows, cols = 9, 96
    w = weights(rows, cols, seed=9)
    x = np.random.default_rng(10).standard_normal((200, cols))
    x[:, [0, 31, 32, 77]] = 0.0
    acc = HessianAccumulator(cols)
    acc.add(x)
    res = gptq_quantize(w, acc.hessian(), t, act_order=act_order)
    assert np.isfinite(res.q).all() and np.isfinite(res.loss)
    np.testing.assert_array_equal(bits(gguf.quants.dequantize(res.data, gg(t))), bits(res.q))

    # no calibration data at all: every column is dead, so every weight is zeroed
    res = gptq_quantize(w, HessianAccumulator(cols).hessian(), t, act_order=act_order)
    assert np.isfinite(res.q).all() and res.loss == 0.0
    np.testing.assert_array_equal(res.q, np.zeros_like(w))


def test_cholesky_failure_retries_then_raises():
    cols = 64
    w = weights(5, cols, seed=11)
    rank_one = np.ones((cols, cols))
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(rank_one)  # so the undamped attempt below must fail
    res = gptq_quantize(w, rank_one, T.Q4_0, damp=0.0)
    assert np.isfinite(res.q).all()

    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        gptq_quantize(w, -np.eye(cols), T.Q4_0)


def test_bad_arguments_raise_value_error():
    h = np.eye(64)
    with pytest.raises(ValueError, match="multiple"):
        gptq_quantize(np.zeros((4, 48), np.float32), np.eye(48), T.Q4_0)
    with pytest.raises(ValueError, match="multiple"):
        gptq_quantize(np.zeros((4, 80), np.float32), np.eye(80), T.Q8_0)
    for t in (T.Q4_K, T.Q6_K, T.F16, T.Q8_1):
        assert t not in GPTQ_TYPES
        with pytest.raises(ValueError):
            gptq_quantize(np.zeros((4, 256), np.float32), np.eye(256), t)
    with pytest.raises(ValueError):
        gptq_quantize(np.zeros((4, 64), np.float32), np.eye(32), T.Q4_0)  # H shape
    with pytest.raises(ValueError):
        gptq_quantize(np.zeros((4, 64), np.float32), h, T.Q4_0, block_size=48)
    with pytest.raises(ValueError):
        gptq_quantize(np.full((4, 64), np.nan, np.float32), h, T.Q4_0)
    assert set(GPTQ_TYPES) == set(TYPES)


# ----------------------------------------------------------------------------
# 5. Hessian accumulation
# ----------------------------------------------------------------------------


def test_hessian_accumulator_matches_one_shot():
    cols = 48
    rng = np.random.default_rng(12)
    batches = [rng.standard_normal((k, cols)).astype(np.float32) for k in (7, 50, 1, 13)]
    batches.append(rng.standard_normal((2, 5, cols)).astype(np.float32))  # (batch, seq, cols)
    acc = HessianAccumulator(cols)
    np.testing.assert_array_equal(acc.hessian(), np.zeros((cols, cols)))
    for b in batches:
        acc.add(b)
    x = np.concatenate([b.reshape(-1, cols) for b in batches]).astype(np.float64)
    assert acc.n == len(x) == 81
    h = acc.hessian()
    assert h.dtype == np.float64 and h.shape == (cols, cols)
    np.testing.assert_allclose(h, 2.0 / len(x) * x.T @ x, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError):
        acc.add(np.zeros((3, cols + 1), np.float32))
