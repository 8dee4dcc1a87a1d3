"""llamalocal.quants against gguf.quants (the Python port of ggml's codecs) and
against values derived from ggml's C reference quantizers."""
from __future__ import annotations

import hashlib

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as G

from llamalocal.formats import quants
from llamalocal.formats import FORMATS, QK_K, GGMLType, block_format

T = GGMLType

# byte offsets of the fp16 scale fields inside one block
_F16_FIELDS = {
    T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,), T.Q8_1: (0, 2),
    T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,),
}
# finite scales worth hitting: zero, signed zero, subnormal, smallest normal, largest
_SCALE_POOL = np.array([0.0, -0.0, 6e-8, 6.1e-5, 65504.0, -65504.0, 1.0, -0.5, 3e-3, 0.0625],
                       dtype=np.float16)

LEGACY = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
KQUANTS = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]


def random_blocks(qtype: GGMLType, rows: int, blocks_per_row: int, seed: int) -> np.ndarray:
    """Random block bytes whose fp16 scale fields are finite (a mix of random
    and extreme values), so dequantized results contain no NaN."""
    rng = np.random.default_rng(seed)
    ts = FORMATS[qtype].type_size
    raw = rng.integers(0, 256, (rows, blocks_per_row, ts), dtype=np.uint8)
    for off in _F16_FIELDS[qtype]:
        scales = (rng.standard_normal((rows, blocks_per_row)) * 0.05).astype(np.float16)
        pick = rng.random((rows, blocks_per_row)) < 0.5
        scales[pick] = rng.choice(_SCALE_POOL, size=int(pick.sum()))
        raw[:, :, off:off + 2] = scales.view(np.uint8).reshape(rows, blocks_per_row, 2)
    return raw.reshape(rows, blocks_per_row * ts)


def gguf_bytes(x: np.ndarray, qtype: GGMLType) -> np.ndarray:
    ref = gguf.quants.quantize(x, G(int(qtype)))
    return np.ascontiguousarray(ref).view(np.uint8).reshape(x.shape[:-1] + (-1,))


# ----------------------------------------------------------------------------
# dequantize
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", LEGACY + KQUANTS, ids=lambda t: t.name)
def test_dequantize_matches_gguf(qtype):
    data = random_blocks(qtype, rows=7, blocks_per_row=9, seed=int(qtype))
    ours = quants.dequantize(data, qtype)
    ref = gguf.quants.dequantize(data, G(int(qtype)))
    assert ours.dtype == np.float32
    assert ours.shape == (7, 9 * FORMATS[qtype].block_size)
    assert not np.isnan(ours).any()
    assert np.array_equal(ours, ref)
    # the extreme scales really were exercised
    assert np.abs(ours).max() > 1e5


def test_dequantize_float_types_match_gguf():
    rng = np.random.default_rng(1)
    halves = rng.integers(0, 1 << 16, 4096, dtype=np.uint16)
    halves = halves[(halves & 0x7C00) != 0x7C00]  # drop inf / NaN
    raw = halves.view(np.uint8)
    assert np.array_equal(quants.dequantize(raw, T.F16), gguf.quants.dequantize(raw, G.F16))
    bf = rng.integers(0, 1 << 16, 4096, dtype=np.uint16)
    bf = bf[(bf & 0x7F80) != 0x7F80]
    raw = bf.view(np.uint8)
    assert np.array_equal(quants.dequantize(raw, T.BF16), gguf.quants.dequantize(raw, G.BF16))
    f = rng.standard_normal(100).astype(np.float32)
    assert np.array_equal(quants.dequantize(f.view(np.uint8), "f32"), f)


def test_dequantize_keeps_leading_shape_and_accepts_bytes():
    data = random_blocks(T.Q4_0, rows=6, blocks_per_row=2, seed=3)
    flat = quants.dequantize(data, T.Q4_0)
    nested = quants.dequantize(data.reshape(2, 3, -1), "q4_0")
    assert nested.shape == (2, 3, 64)
    assert np.array_equal(nested.reshape(6, 64), flat)
    one = quants.dequantize(data[0].tobytes(), int(T.Q4_0))
    assert one.shape == (64,) and np.array_equal(one, flat[0])


def test_dequantize_activation_formats():
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 256, (4, 3 * 36), dtype=np.uint8).reshape(-1, 36)
    raw[:, :2] = (rng.standard_normal((12, 1)) * 0.1).astype(np.float16).view(np.uint8)
    d = raw[:, :2].copy().view(np.float16).astype(np.float32)
    expect = raw[:, 4:].view(np.int8).astype(np.float32) * d
    assert np.array_equal(quants.dequantize(raw.reshape(4, -1), T.Q8_1), expect.reshape(4, 96))

    raw = rng.integers(0, 256, (5, 292), dtype=np.uint8)
    raw[:, :4] = (rng.standard_normal((5, 1)) * 0.01).astype(np.float32).view(np.uint8)
    d = raw[:, :4].copy().view(np.float32)
    expect = raw[:, 4:260].view(np.int8).astype(np.float32) * d
    assert np.array_equal(quants.dequantize(raw.reshape(-1), T.Q8_K), expect.reshape(-1))


# ----------------------------------------------------------------------------
# quantize: byte-exact with gguf.quants
# ----------------------------------------------------------------------------


def _datasets():
    rng = np.random.default_rng(42)
    outliers = rng.standard_normal((5, 256)).astype(np.float32)
    outliers[rng.random(outliers.shape) < 0.02] *= 100
    constant = np.full((3, 96), 0.3, np.float32)
    constant[1] = -2.5
    mixed = rng.standard_normal((17, 128)).astype(np.float32)
    mixed[2, :32] = 0  # one all-zero block inside a row
    mixed[4, 32:64] = 7.0  # one constant block
    mixed[6, 64:96] = -np.abs(mixed[6, 64:96])  # all negative
    mixed[8, :32] = np.abs(mixed[8, :32]) + 1  # all positive, min > 0
    return {
        "normal-1row": rng.standard_normal((1, 512)).astype(np.float32),
        "normal-3rows": rng.standard_normal((3, 64)).astype(np.float32),
        "mixed-17rows": mixed,
        "outliers": outliers,
        "zeros": np.zeros((2, 64), np.float32),
        "constant": constant,
        "tiny": (rng.standard_normal((3, 64)) * 1e-30).astype(np.float32),
        "huge": (rng.standard_normal((3, 64)) * 1e4).astype(np.float32),
        "halves": (rng.integers(-64, 64, (4, 64)) / 2).astype(np.float32),  # exact .5 ties
        "3d": rng.standard_normal((2, 3, 64)).astype(np.float32),
        "1d": rng.standard_normal(96).astype(np.float32),
    }


DATASETS = _datasets()


@pytest.mark.parametrize("name", sorted(DATASETS))
@pytest.mark.parametrize("qtype", [T.F16, T.BF16] + LEGACY, ids=lambda t: t.name)
def test_quantize_matches_gguf(qtype, name):
    x = DATASETS[name]
    ours = quants.quantize(x, qtype)
    assert ours.dtype == np.uint8
    assert ours.shape == x.shape[:-1] + (FORMATS[qtype].row_bytes(x.shape[-1]),)
    assert np.array_equal(ours, gguf_bytes(x, qtype))


def test_quantize_bf16_special_values_match_gguf():
    bits = np.array([0x7FC00000, 0xFFC00001, 0x7F800001, 0x7F800000, 0xFF800000, 0x7F7FFFFF,
                     0x3F808000, 0x3F818000, 0x3F808001, 0x00000001, 0x80000000, 0x007FFFFF,
                     0x3F7FFFFF, 0xC0490FDB], dtype=np.uint32)
    x = bits.view(np.float32)
    ours = quants.quantize(x, T.BF16)
    assert np.array_equal(ours, gguf_bytes(x, T.BF16))
    out = ours.view(np.uint16)
    assert out[6] == 0x3F80 and out[7] == 0x3F82  # ties to even
    assert out[5] == 0x7F80  # FLT_MAX rounds up to inf
    assert (out[2] & 0x7FC0) == 0x7FC0  # signalling NaN comes back quiet


def test_quantize_f32_roundtrip():
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    q = quants.quantize(x, T.F32)
    assert q.shape == (3, 20)
    assert np.array_equal(quants.dequantize(q, T.F32), x)


def test_legacy_roundtrip_is_stable():
    x = np.random.default_rng(9).standard_normal((4, 256)).astype(np.float32)
    for qtype in LEGACY:
        q = quants.quantize(x, qtype)
        y = quants.dequantize(q, qtype)
        assert np.array_equal(quants.quantize(y, qtype), q), qtype.name


# ----------------------------------------------------------------------------
# k-quants
# ----------------------------------------------------------------------------


def golden_input(rows: int = 8, n: int = 1024) -> np.ndarray:
    """Platform-independent test data: integer hashing and exact float32 ops
    only, so the C reference and this test see the same bits everywhere."""
    i = np.arange(rows * n, dtype=np.uint64)
    h = i * np.uint64(6364136223846793005) + np.uint64(1442695040888963407)
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    u = sum(((h >> np.uint64(16 * k)) & np.uint64(0xFFFF)).astype(np.int64) for k in range(4))
    x = ((u - 131070).astype(np.float32) / np.float32(3 * 2**15)).reshape(rows, n)
    x[:, ::97] *= np.float32(8)
    x[1] *= np.float32(2**-20)
    x[2] *= np.float32(2**10)
    x[3, :256] = 0
    x[4, 256:512] = np.float32(0.375)
    x[5] *= np.float32(2**24)  # fp16 scales overflow to inf; ggml still writes defined bytes
    return x


# SHA-256 of the output of ggml's quantize_row_{q4_K,q5_K,q6_K,q8_K,q8_1}_ref
# (C code from ggml-quants.c in a standalone file, q8_K with iscale -127/max as in current ggml,
# gcc -O2 -ffp-contract=off on x86-64) for golden_input().
GOLDEN_SHA256 = {
    T.Q4_K: "c1c9f323f86dd9005899d2d2a6a3a76cadd9e4056e69dffb60b0384bf14d4dee",
    T.Q5_K: "570d29d2172817c97dc1db0b13f63b0da0f5f8c44fb939876e787f6220d99b8e",
    T.Q6_K: "9c84c1883021f8433ef1cac6b1e8919a16982bedcfac4c1a9e447c8377161927",
    T.Q8_K: "e2546530d290a80634e8de7aa83b731d6f873445a1a588f04b71a92d6366ab9b",
    T.Q8_1: "b8afa55ee2747163036bf58f2667364e679d23cd4910c382c1118fad37ba1a2a",
}


@pytest.mark.parametrize("qtype", list(GOLDEN_SHA256), ids=lambda t: t.name)
def test_quantize_matches_ggml_reference_output(qtype):
    q = quants.quantize(golden_input(), qtype)
    assert hashlib.sha256(q.tobytes()).hexdigest() == GOLDEN_SHA256[qtype]


# measured on this data: Q4_K 0.0718, Q5_K 0.0364, Q6_K 0.0178
@pytest.mark.parametrize("qtype,bound", [(T.Q4_K, 0.075), (T.Q5_K, 0.04), (T.Q6_K, 0.02)],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_kquant_roundtrip_error(qtype, bound):
    x = np.random.default_rng(0).standard_normal((16, 2048)).astype(np.float32)
    q = quants.quantize(x, qtype)
    assert q.shape == (16, 8 * FORMATS[qtype].type_size)
    y = quants.dequantize(q, qtype)
    assert np.array_equal(y, gguf.quants.dequantize(q, G(int(qtype))))
    rel = np.sqrt(np.mean((y - x) ** 2)) / np.sqrt(np.mean(x ** 2))
    assert rel < bound


@pytest.mark.parametrize("qtype,bound", [(T.Q4_K, 1e-6), (T.Q6_K, 1e-6), (T.Q5_K, 1e-2)],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_kquant_requantize_is_stable(qtype, bound):
    # Q4_K and Q6_K land on their own grid again (measured: bit-identical);
    # Q5_K's narrower scale search sometimes picks a neighbouring grid
    # (measured relative RMS change 4.4e-3).
    x = np.random.default_rng(11).standard_normal((8, 1024)).astype(np.float32)
    y = quants.dequantize(quants.quantize(x, qtype), qtype)
    y2 = quants.dequantize(quants.quantize(y, qtype), qtype)
    assert np.sqrt(np.mean((y2 - y) ** 2)) / np.sqrt(np.mean(y ** 2)) <= bound


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_K], ids=lambda t: t.name)
def test_kquant_zero_blocks(qtype):
    x = np.random.default_rng(2).standard_normal((2, 3 * QK_K)).astype(np.float32)
    x[0, QK_K:2 * QK_K] = 0
    x[1] = 0
    q = quants.quantize(x, qtype)
    ts = FORMATS[qtype].type_size
    blocks = q.reshape(2, 3, ts)
    assert not blocks[0, 1].any() and not blocks[1].any()  # all-zero bytes
    y = quants.dequantize(q, qtype)
    assert not y[0, QK_K:2 * QK_K].any() and not y[1].any()
    assert y[0, :QK_K].any()


def test_q6_k_hand_worked_block():
    # Every group of 16 is -8..7.  make_qx_quants(16, 32, rmse_type 1): max is
    # -8, iscale = -32/-8 = 4, L = 4x + 32 fits exactly, scale = sum(4x^4) /
    # sum(16x^4) = 0.25, and no trial scale beats an exact fit.  Then
    # iscale = -128/0.25 = -512, d = fp16(-1/512) = 0x9800, every scale is
    # nearest_int(-512*0.25) = -128 (0x80), d*sc = 0.25 and L = 4x + 32 again,
    # i.e. L[e] = 4*(e % 16); the block dequantizes exactly.
    e = np.arange(QK_K)
    x = ((e % 16) - 8).astype(np.float32)
    q = quants.quantize(x, T.Q6_K)
    assert q.shape == (210,)
    L = 4 * (np.arange(32) % 16)
    ql = (L & 0xF) | ((L & 0xF) << 4)  # L[l] and L[l + 64] are equal
    qh = (L >> 4) * 0b01010101  # the four high-bit pairs are equal too
    assert np.array_equal(q[0:32], ql) and np.array_equal(q[32:64], ql)
    assert np.array_equal(q[64:96], ql) and np.array_equal(q[96:128], ql)
    assert np.array_equal(q[128:160], qh) and np.array_equal(q[160:192], qh)
    assert np.all(q[192:208] == 0x80)
    assert q[208] == 0x00 and q[209] == 0x98
    assert np.array_equal(quants.dequantize(q, T.Q6_K), x)


def test_q4_k_hand_worked_block():
    # Every sub-block of 32 is 0..15 twice.  make_qkx2_quants(nmax 15): min 0,
    # max 15, iscale 1, L = x with zero error, so no trial wins: scale 1,
    # min -0.0.  max_scale 1 -> d = fp16(1/63) = 0x2410 (0.015869140625),
    # dmin = 0, every 6-bit scale 63 and min 0.  Re-fitting with d*63 =
    # 0.999755859375 keeps L = x, so values come back scaled by that factor.
    x = (np.arange(QK_K) % 16).astype(np.float32)
    q = quants.quantize(x, T.Q4_K)
    assert q.shape == (144,)
    assert list(q[0:4]) == [0x10, 0x24, 0x00, 0x00]
    assert list(q[4:16]) == [255] * 4 + [0] * 4 + [15] * 4
    assert np.array_equal(q[16:], (np.arange(128) % 16) * 17)
    y = quants.dequantize(q, T.Q4_K)
    assert np.array_equal(y, x * np.float32(0.999755859375))


def test_q8_k_fields_are_consistent():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((3, 2 * QK_K)) * rng.uniform(1e-3, 1e3, (3, 1))).astype(np.float32)
    x[1, 7] = -50 * np.abs(x[1]).max()  # negative extreme
    q = quants.quantize(x, T.Q8_K)
    assert q.shape == (3, 2 * 292)
    blocks = q.reshape(-1, 292)
    d = blocks[:, :4].copy().view(np.float32)[:, 0]
    qs = blocks[:, 4:260].view(np.int8).astype(np.int64)
    bsums = blocks[:, 260:].copy().view("<i2").astype(np.int64)
    assert np.array_equal(bsums, qs.reshape(-1, 16, 16).sum(axis=2))
    xb = x.reshape(-1, QK_K)
    imax = np.abs(xb).argmax(axis=1)
    mx = xb[np.arange(len(xb)), imax]
    iscale = np.float32(-127) / mx
    assert np.array_equal(d, np.float32(1) / iscale)
    assert np.all(qs[np.arange(len(xb)), imax] == -127)  # the extreme maps to -127
    assert np.all(np.abs(qs * d[:, None].astype(np.float64) - xb) <= np.abs(d[:, None]) * 0.5001)
    y = quants.dequantize(q, T.Q8_K)
    assert np.array_equal(y.reshape(-1, QK_K), (qs.astype(np.float32) * d[:, None]).astype(np.float32))


def test_q8_1_fields_are_consistent():
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((5, 128)) * 3).astype(np.float32)
    x[0, :32] = 0
    q = quants.quantize(x, T.Q8_1)
    assert q.shape == (5, 4 * 36)
    blocks = q.reshape(-1, 36)
    # d and qs are those of Q8_0, which gguf implements
    q80 = gguf_bytes(x, T.Q8_0).reshape(-1, 34)
    assert np.array_equal(blocks[:, :2], q80[:, :2])
    assert np.array_equal(blocks[:, 4:], q80[:, 2:])
    qs = blocks[:, 4:].view(np.int8).astype(np.int64)
    d32 = np.abs(x.reshape(-1, 32)).max(axis=1) / np.float32(127)
    s_expect = (qs.sum(axis=1).astype(np.float32) * d32).astype(np.float16)
    assert np.array_equal(blocks[:, 2:4].copy().view(np.float16)[:, 0], s_expect)
    assert not blocks[0].any()


# ----------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------


def test_bad_inputs_raise_value_error():
    x = np.zeros((2, 64), np.float32)
    with pytest.raises(ValueError, match="float32"):
        quants.quantize(x.astype(np.float64), T.Q4_0)
    with pytest.raises(ValueError, match="multiple of the block size"):
        quants.quantize(np.zeros((2, 48), np.float32), T.Q4_0)
    with pytest.raises(ValueError, match="multiple of the block size"):
        quants.quantize(np.zeros(128, np.float32), T.Q4_K)
    with pytest.raises(ValueError, match="Q2_K"):
        quants.quantize(np.zeros(256, np.float32), T.Q2_K)
    with pytest.raises(ValueError, match="unsupported"):
        quants.quantize(x, "Q9_9")
    with pytest.raises(ValueError, match="unsupported"):
        quants.dequantize(np.zeros(18, np.uint8), 4)  # id 4 (old Q4_2) does not exist
    with pytest.raises(ValueError, match="0-d"):
        quants.quantize(np.array(1.0, dtype=np.float32), T.F16)
    with pytest.raises(ValueError, match="uint8"):
        quants.dequantize(np.zeros(18, np.int8), T.Q4_0)
    with pytest.raises(ValueError, match="uint8"):
        quants.dequantize([0] * 18, T.Q4_0)
    with pytest.raises(ValueError, match="not a multiple"):
        quants.dequantize(np.zeros((2, 19), np.uint8), T.Q4_0)
    with pytest.raises(ValueError, match="not a multiple"):
        quants.dequantize(np.zeros(143, np.uint8), T.Q4_K)


def test_empty_inputs():
    assert quants.quantize(np.zeros((0, 64), np.float32), T.Q4_0).shape == (0, 36)
    assert quants.dequantize(np.zeros((3, 0), np.uint8), T.Q6_K).shape == (3, 0)


def test_supported_type_lists():
    assert set(quants.DEQUANTIZE_TYPES) == set(FORMATS)
    assert {T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_K, T.Q8_1, T.BF16} <= set(quants.QUANTIZE_TYPES)
    assert block_format("q4_k").type in quants.QUANTIZE_TYPES
