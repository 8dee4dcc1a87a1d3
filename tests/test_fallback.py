"""The numba backend's kernels: llamalocal.backend.numba.matmul and the ggml
arithmetic of llamalocal.backend.numba.ggml_math, bit for bit against the native scalar
path (LLAMALOCAL_ISA=scalar) and, independently of it, close to a float64
reference built from gguf.quants.dequantize(W) and the dequantized vec_dot
activations."""
from __future__ import annotations

import ctypes
import ctypes.util

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as G
from numba import njit

from llamalocal.backend.numba import ggml_math as gn
from llamalocal.backend.numba import matmul as fallback
from llamalocal.formats import fp16, quants
from llamalocal.formats import FORMATS, QK_K, SCALE_FIELDS, WEIGHT_TYPES, GGMLType

try:
    from llamalocal import _native as native
except ImportError:
    native = None
needs_native = pytest.mark.skipif(native is None, reason="the native scalar path is the reference")

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


def bits(a: np.ndarray) -> np.ndarray:
    """float32 values as their bits: equality that tells -0 from +0 and compares NaNs."""
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def scalar_matmul(qtype, w, x):
    return native.matmul(int(qtype), w, x, isa="scalar")


# ---------------------------------------------------------------- bit for bit against the native scalar path

# Batch sizes that select each of native matmul()'s kernels: vec_dot (1, 3;
# F32 tinyBLAS from 2), the repacked Q4_K gemv (1, 3) or gemm + gemv (4, 5,
# 17), the tiled k-quant kernel (8, 17); 37 rows leave Q4_0/Q4_K unpacked and
# tinyBLAS unused, 64 rows allow both.
@needs_native
@pytest.mark.parametrize("batch", [1, 3, 4, 5, 8, 17])
@pytest.mark.parametrize("qtype", WEIGHT_TYPES, ids=lambda t: t.name)
def test_matmul_bit_identical_to_native_scalar(qtype, batch):
    k = 512
    x = (np.random.default_rng(batch).standard_normal((batch, k)) * 4).astype(np.float32)
    x[0, :QK_K] = 0  # an all-zero activation block
    for n in (37, 64):
        w = make_weights(qtype, n, k, seed=int(qtype) + n)
        assert np.array_equal(bits(fallback.matmul(qtype, w, x)), bits(scalar_matmul(qtype, w, x))), (n, qtype.name)


@needs_native
@pytest.mark.parametrize("qtype", [T.F32, T.F16, T.BF16], ids=lambda t: t.name)
def test_float_weights_bit_identical_to_native_scalar(qtype):
    """ggml_vec_dot_f32's chunks of 64 and its tail, tinyBLAS only where k % 16
    == 0 and n_rows % 4 == 0 (stories260K has k = 64, 172, 256, 688)."""
    for k in (8, 64, 172, 688):
        for n in (3, 172):
            w = make_weights(qtype, n, k, seed=k + n)
            for batch in (1, 2, 5):
                x = np.random.default_rng(batch).standard_normal((batch, k)).astype(np.float32)
                assert np.array_equal(bits(fallback.matmul(qtype, w, x)), bits(scalar_matmul(qtype, w, x))), (k, n, batch)


def test_kernel_variants_follow_native_matmul():
    v = fallback.kernel_variants
    assert list(v(T.Q4_K, 64, 256, 6)) == [fallback.GEMM] * 4 + [fallback.GEMV] * 2
    assert list(v(T.Q4_K, 64, 256, 3)) == [fallback.GEMV] * 3
    assert list(v(T.Q4_K, 60, 256, 8)) == [fallback.TILED] * 8
    assert list(v(T.Q6_K, 64, 256, 7)) == [fallback.VEC_DOT] * 7
    assert list(v(T.F32, 8, 64, 2)) == [fallback.SGEMM] * 2
    assert list(v(T.F32, 8, 72, 2)) == list(v(T.F32, 6, 64, 2)) == [fallback.VEC_DOT] * 2
    assert list(v(T.F32, 8, 64, 1)) == [fallback.VEC_DOT]
    assert list(v(T.Q8_0, 64, 256, 17)) == [fallback.VEC_DOT] * 17
    assert list(v(T.Q4_0, 64, 256, 6)) == [fallback.GEMV] * 6
    assert list(v(T.Q4_0, 60, 256, 6)) == [fallback.VEC_DOT] * 6


@needs_native
def test_activation_quantizers_byte_identical_to_native():
    x = (np.random.default_rng(6).standard_normal((3, 512)) * 3).astype(np.float32)
    x[1, :256] = 0  # a zero block of every format
    x[2, 300] = 1e4  # one large value in a block
    for wt in (T.Q4_0, T.Q4_1, T.Q6_K):
        assert np.array_equal(fallback.quantize_activations(wt, x), native.quantize_activations(int(wt), x, isa="scalar")), wt.name
    assert np.array_equal(fallback.quantize_activations(T.Q2_K, x), quants.quantize(x, T.Q8_K))


@needs_native
@pytest.mark.parametrize("qtype", WEIGHT_TYPES, ids=lambda t: t.name)
def test_dequantize_bit_identical_to_native(qtype):
    """The embeddings are dequantized rows: the model's input on both paths."""
    w = make_weights(qtype, 7, 512, seed=3)
    assert np.array_equal(bits(fallback.dequantize(qtype, w)), bits(native.dequantize(int(qtype), w, isa="scalar")))


@needs_native
def test_rms_norm_bit_identical_to_native():
    x = (np.random.default_rng(7).standard_normal((5, 576)) * 3).astype(np.float32)
    w = np.random.default_rng(8).standard_normal(576).astype(np.float32)
    y = np.empty_like(x)
    gn.rms_norm(x, w, np.float32(1e-5), y)
    assert np.array_equal(bits(y), bits(native.rms_norm(x, w, 1e-5)))


# ---------------------------------------------------------------- ggml_numba's primitives

def test_fp16_conversions_are_exact():
    halves = np.arange(1 << 16, dtype=np.uint16)
    finite = ~np.isnan(halves.view(np.float16))
    got = np.array([fp16.f16_to_f32(h) for h in halves], np.float32)
    assert np.array_equal(bits(got)[finite], bits(halves.view(np.float16).astype(np.float32))[finite])
    rng = np.random.default_rng(9)
    f = np.concatenate([rng.standard_normal(4000) * 10.0 ** rng.integers(-9, 6, 4000),
                        [0.0, -0.0, 65504.0, 65520.0, 1e6, -np.inf, 2.0 ** -25, 2.0 ** -24 * 1.5]]).astype(np.float32)
    with np.errstate(over="ignore"):
        want = f.astype(np.float16).view(np.uint16)
    assert np.array_equal(np.array([fp16.f32_to_f16(v) for v in f], np.uint16), want)


@njit(cache=True)
def _fma_all(a, b, c, out):
    for i in range(a.size):
        out[i] = gn.fma(a[i], b[i], c[i])


def test_fma_rounds_once():
    libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
    libm.fmaf.restype, libm.fmaf.argtypes = ctypes.c_float, [ctypes.c_float] * 3
    rng = np.random.default_rng(10)
    a, b, c = (rng.standard_normal((3, 2000)) * 1e3).astype(np.float32)
    got = np.empty_like(a)
    _fma_all(a, b, c, got)
    want = np.array([libm.fmaf(float(p), float(q), float(r)) for p, q, r in zip(a, b, c)], np.float32)
    assert np.array_equal(bits(got), bits(want))
    assert not np.array_equal(got, a * b + c)  # the rounded product differs somewhere


def test_expf512():
    x = np.linspace(-110.0, 88.0, 20001).astype(np.float32)
    got = np.array([gn.expf512(v) for v in x], np.float32)
    want = np.exp(x.astype(np.float64))
    # within 3 ulps (ggml's own bound is 1.5 ulps of the reduced argument) down
    # into the subnormals, where ldexp rounds the result once
    assert want.min() < 2.0 ** -140
    assert np.all(np.abs(got - want) <= 3 * np.spacing(want.astype(np.float32)))
    assert gn.expf512(np.float32(0.0)) == 1.0 and gn.expf512(np.float32(-200.0)) == 0.0
    assert gn.expf512(np.float32(200.0)) == np.inf and gn.expf512(-np.float32(np.inf)) == 0.0


# ---------------------------------------------------------------- float64 reference (independent of the native path)

def reference(qtype: GGMLType, w: np.ndarray, x: np.ndarray):
    """float64 X.W^T of the dequantized operands, and sum |x||w| per output.

    Q4_1/Q5_1 take the weight min times Q8_1's stored fp16 s = d*sum(q), as
    ggml and the native kernels do, so the reference swaps d*sum(q) for s."""
    wd = gguf.quants.dequantize(w, G(int(qtype))).astype(np.float64)
    xq = fallback.quantize_activations(qtype, x)
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


@pytest.mark.parametrize("batch", [1, 17])
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
    xq = quants.dequantize(fallback.quantize_activations(T.Q8_0, x), T.Q8_0)
    assert not np.array_equal(xq, x)
    y = fallback.matmul(T.Q8_0, w, x)
    np.testing.assert_allclose(y, wf.astype(np.float64) @ xq.astype(np.float64), rtol=1e-6)


def test_quantize_activation_formats():
    x = np.random.default_rng(6).standard_normal((3, 512)).astype(np.float32)
    assert fallback.quantize_activations(T.Q4_0, x).shape == (3, 16 * 34)
    assert fallback.quantize_activations(T.Q4_1, x).shape == (3, 16 * 36)
    assert fallback.quantize_activations(T.Q6_K, x).shape == (3, 2 * 292)
    assert fallback.quantize_activations(T.Q4_0, x[0]).shape == (16 * 34,)
    # Q8_0/Q8_1 activations round like llama.cpp's runtime quantizers (id = 127/amax,
    # half to even); ggml's *_ref rounding, which quants.quantize mirrors, differs
    # from it by at most one step.
    for wt, at in ((T.Q8_0, T.Q8_0), (T.Q5_1, T.Q8_1)):
        got = fallback.quantize_activations(wt, x)
        step = np.repeat(np.abs(x).reshape(3, -1, 32).max(-1) / 127, 32, axis=1)
        assert np.all(np.abs(quants.dequantize(got, at) - quants.dequantize(quants.quantize(x, at), at)) <= 1.01 * step)
    assert np.array_equal(fallback.quantize_activations(T.BF16, x).view(np.float32), x)


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
        fallback.quantize_activations(T.Q4_0, x.astype(np.float16))


def test_matmul_empty_shapes():
    w = np.zeros((0, 18), np.uint8)
    assert fallback.matmul(T.Q4_0, w, np.ones(32, np.float32)).shape == (0,)
    w = make_weights(T.Q8_0, 3, 32, seed=9)
    assert fallback.matmul(T.Q8_0, w, np.ones((0, 32), np.float32)).shape == (0, 3)
