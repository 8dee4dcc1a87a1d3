"""llamalocal.fallback.matmul against a float64 reference built from
gguf.quants.dequantize(W) and the dequantized vec_dot activations."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as G

from llamalocal import fallback, quants
from llamalocal.formats import FORMATS, QK_K, SCALE_FIELDS, WEIGHT_TYPES, GGMLType

T = GGMLType
QUANTIZABLE = {T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K}
def make_weights(qtype: GGMLType, n: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if qtype in QUANTIZABLE:
        return quants.quantize(rng.standard_normal((n, k)).astype(np.float32), qtype)
    # Q2_K / Q3_K: random quants and sub-scales under sane super-block scales
    ts = FORMATS[qtype].type_size
    w = rng.integers(0, 256, (n, k // QK_K, ts), dtype=np.uint8)
    for off in SCALE_FIELDS[qtype]:
        w[:, :, off:off + 2] = (rng.uniform(0.002, 0.02, (n, k // QK_K, 1))
                                .astype(np.float16).view(np.uint8))
    return w.reshape(n, -1)


def reference(qtype: GGMLType, w: np.ndarray, x: np.ndarray):
    """float64 X.W^T of the dequantized operands, and sum |x||w| per output.

    Q4_1/Q5_1 take the weight min times Q8_1's stored fp16 s = d*sum(q), as
    ggml and the native kernels do, so the reference swaps d*sum(q) for s."""
    wd = gguf.quants.dequantize(w, G(int(qtype))).astype(np.float64)
    xq = fallback.quantize_activation(qtype, x)
    xd = quants.dequantize(xq, FORMATS[qtype].vec_dot_type).astype(np.float64)
    ref = xd @ wd.T
    if qtype in (T.Q4_1, T.Q5_1):
        xb = xq.reshape(xq.shape[0], -1, 36)
        s = xb[:, :, 2:4].copy().view(np.float16)[:, :, 0].astype(np.float64)
        d_sum = xd.reshape(xq.shape[0], -1, 32).sum(axis=2)  # exact: d * sum(q)
        m = w.reshape(w.shape[0], -1, FORMATS[qtype].type_size)[:, :, 2:4].copy()
        m = m.view(np.float16)[:, :, 0].astype(np.float64)
        ref += (s - d_sum) @ m.T
    return ref, np.abs(xd) @ np.abs(wd).T


def assert_close(y, ref, mag):
    assert y.dtype == np.float32
    assert y.shape == ref.shape
    err = np.abs(y.astype(np.float64) - ref)
    assert np.all(err <= 1e-5 * mag + 1e-30), float((err / (mag + 1e-30)).max())


@pytest.mark.parametrize("batch", [1, 3, 17])
@pytest.mark.parametrize("qtype", WEIGHT_TYPES, ids=lambda t: t.name)
def test_matmul_matches_reference(qtype, batch):
    n, k = 37, 512
    w = make_weights(qtype, n, k, seed=int(qtype))
    x = np.random.default_rng(batch).standard_normal((batch, k)).astype(np.float32)
    ref, mag = reference(qtype, w, x)
    y = fallback.matmul(qtype, w, x)
    assert_close(y, ref, mag)
    # results are not trivially small: the products really were summed
    assert np.abs(ref).max() > 1e-3 * mag.max()


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_K, T.F16], ids=lambda t: t.name)
def test_matmul_large_batch_small_k(qtype):
    w = make_weights(qtype, 9, QK_K, seed=1)
    x = (np.random.default_rng(2).standard_normal((512, QK_K)) * 10).astype(np.float32)
    ref, mag = reference(qtype, w, x)
    assert_close(fallback.matmul(qtype, w, x), ref, mag)


def test_matmul_vector_and_out_argument():
    w = make_weights(T.Q5_1, 5, 64, seed=3)
    x = np.random.default_rng(4).standard_normal(64).astype(np.float32)
    y = fallback.matmul("q5_1", w, x)
    assert y.shape == (5,)
    ref, mag = reference(T.Q5_1, w, x.reshape(1, -1))
    assert_close(y, ref[0], mag[0])
    out = np.full(5, np.nan, np.float32)
    assert fallback.matmul(int(T.Q5_1), w, x, out=out) is out
    assert np.array_equal(out, y)
    out2 = np.empty((2, 5), np.float32)
    fallback.matmul(T.Q5_1, w, np.stack([x, -x]), out=out2)
    assert np.array_equal(out2[0], y) and np.array_equal(out2[1], -y)


def test_matmul_activation_is_quantized_once_per_row():
    # Q8_0 weights that are exactly +-1 at scale 1: the result must be the dot
    # with the Q8_0-quantized activation, not with x itself.
    rng = np.random.default_rng(5)
    wf = np.sign(rng.standard_normal((3, 64))).astype(np.float32)
    wf[:, 0] = 127  # pins every weight block's scale to 1.0
    wf[:, 32] = 127
    w = quants.quantize(wf, T.Q8_0)
    x = rng.standard_normal(64).astype(np.float32)
    xq = quants.dequantize(fallback.quantize_activation(T.Q8_0, x), T.Q8_0)
    assert not np.array_equal(xq, x)
    y = fallback.matmul(T.Q8_0, w, x)
    np.testing.assert_allclose(y, wf.astype(np.float64) @ xq.astype(np.float64), rtol=1e-6)


def test_quantize_activation_formats():
    x = np.random.default_rng(6).standard_normal((3, 512)).astype(np.float32)
    assert fallback.quantize_activation(T.Q4_0, x).shape == (3, 16 * 34)
    assert fallback.quantize_activation(T.Q4_1, x).shape == (3, 16 * 36)
    assert fallback.quantize_activation(T.Q6_K, x).shape == (3, 2 * 292)
    # Q8_0/Q8_1 activations round like llama.cpp's runtime quantizers (id = 127/amax,
    # half to even), as the native kernels do; ggml's *_ref rounding, which
    # quants.quantize mirrors, differs from it by at most one step.
    from llamalocal import _native

    for wt, at in ((T.Q8_0, T.Q8_0), (T.Q5_1, T.Q8_1)):
        got = fallback.quantize_activation(wt, x)
        assert np.array_equal(got, _native.quantize_activations(int(wt), x, isa="scalar"))
        step = np.repeat(np.abs(x).reshape(3, -1, 32).max(-1) / 127, 32, axis=1)
        assert np.all(np.abs(quants.dequantize(got, at) - quants.dequantize(quants.quantize(x, at), at)) <= 1.01 * step)
    assert np.array_equal(fallback.quantize_activation(T.Q2_K, x), quants.quantize(x, T.Q8_K))
    assert np.array_equal(fallback.quantize_activation(T.BF16, x).view(np.float32), x)


def test_dequantize_delegates():
    w = make_weights(T.Q3_K, 4, 512, seed=7)
    assert np.array_equal(fallback.dequantize(T.Q3_K, w), gguf.quants.dequantize(w, G.Q3_K))


def test_matmul_errors():
    w = make_weights(T.Q4_0, 4, 64, seed=8)
    x = np.ones(64, np.float32)
    with pytest.raises(TypeError, match="dtype"):
        fallback.matmul(T.Q4_0, w.view(np.int8), x)
    with pytest.raises(TypeError, match="dtype"):
        fallback.matmul(T.Q4_0, w, x.astype(np.float64))
    with pytest.raises(TypeError, match="numpy array"):
        fallback.matmul(T.Q4_0, w.tolist(), x)
    with pytest.raises(ValueError, match="contiguous"):
        fallback.matmul(T.Q4_0, np.asfortranarray(w), x)
    with pytest.raises(ValueError, match="contiguous"):
        fallback.matmul(T.Q4_0, w, np.ones((2, 128), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="dimensions"):
        fallback.matmul(T.Q4_0, w.reshape(-1), x)
    with pytest.raises(ValueError, match="dimensions"):
        fallback.matmul(T.Q4_0, w, np.ones((1, 1, 64), np.float32))
    with pytest.raises(ValueError, match="bytes"):
        fallback.matmul(T.Q4_0, w, np.ones(96, np.float32))  # K=96 needs 54 bytes per row
    with pytest.raises(ValueError, match="bytes"):
        fallback.matmul(T.Q4_1, w, x)  # Q4_0 rows passed off as Q4_1
    with pytest.raises(ValueError, match="multiple"):
        fallback.matmul(T.Q4_0, w, np.ones(70, np.float32))
    with pytest.raises(ValueError, match="shape"):
        fallback.matmul(T.Q4_0, w, x, out=np.empty(5, np.float32))
    with pytest.raises(TypeError, match="dtype"):
        fallback.matmul(T.Q4_0, w, x, out=np.empty(4, np.float64))
    with pytest.raises(ValueError, match="activation format"):
        fallback.matmul(T.Q8_K, np.zeros((1, 292), np.uint8), np.ones(256, np.float32))
    with pytest.raises(ValueError, match="unsupported"):
        fallback.matmul("Q7_0", w, x)
    with pytest.raises(TypeError, match="dtype"):
        fallback.quantize_activation(T.Q4_0, x.astype(np.float16))


def test_matmul_empty_shapes():
    w = np.zeros((0, 18), np.uint8)
    assert fallback.matmul(T.Q4_0, w, np.ones(32, np.float32)).shape == (0,)
    w = make_weights(T.Q8_0, 3, 32, seed=9)
    assert fallback.matmul(T.Q8_0, w, np.ones((0, 32), np.float32)).shape == (0, 3)
