"""The C++ extension: every ISA path this CPU runs, against gguf.quants and
against the scalar reference, plus argument checking."""
from __future__ import annotations

import os
import subprocess
import sys

import gguf
import numpy as np
import pytest

from blockgen import random_blocks
from models import TESTS_DIR
from llamalocal.formats import FORMATS, WEIGHT_TYPES, GGMLType as T

# No importorskip: a missing extension must fail here, not quietly leave only
# the numba fallback under test.
from llamalocal import _native

ISAS = _native.available_isas()
COMPILED_ISAS = {"x86_64": ["avx512", "avx2", "scalar"], "aarch64": ["dotprod", "neon", "scalar"]}.get(_native.arch, ["scalar"])
# ggml's activation formats; gguf.quants can only produce Q8_0 of the three
GGUF_TYPES = {t: gguf.GGMLQuantizationType(int(t)) for t in FORMATS if t not in (T.Q8_1, T.Q8_K)}


def ref_matmul(qtype: T, w: np.ndarray, x: np.ndarray, isa: str) -> tuple[np.ndarray, np.ndarray]:
    """float64 Y = X · Wᵀ from gguf's dequantization and our converted activations,
    and the sum of |terms| per output (the scale of float rounding error)."""
    wf = gguf.quants.dequantize(w, GGUF_TYPES[qtype]).astype(np.float64)
    if FORMATS[qtype].vec_dot_type == T.F32:
        xf = x.astype(np.float64)
    else:
        xq = _native.quantize_activations(int(qtype), x, isa="scalar")
        xf = _native.dequantize(int(FORMATS[qtype].vec_dot_type), xq, isa="scalar").astype(np.float64)
    return xf @ wf.T, np.abs(xf) @ np.abs(wf).T


def test_type_table_matches_gguf_and_cpp():
    traits = _native.type_traits()
    assert set(traits) == {int(t) for t in FORMATS}
    for t, f in FORMATS.items():
        name, bs, ts, vdt = traits[int(t)]
        assert (name, bs, ts, vdt) == (f.name, f.block_size, f.type_size, int(f.vec_dot_type))
        if t in GGUF_TYPES:
            assert gguf.GGML_QUANT_SIZES[GGUF_TYPES[t]] == (bs, ts)


def test_every_compiled_isa_is_exercised_when_the_cpu_has_it():
    assert ISAS[-1] == "scalar" and set(ISAS) <= set(COMPILED_ISAS)
    missing = [i for i in COMPILED_ISAS if i not in ISAS]
    if missing:
        pytest.skip(f"this CPU lacks {', '.join(missing)}: those paths are compiled but cannot run here")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", WEIGHT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("scales", ["normal", "zero", "tiny", "huge"])
def test_dequantize_matches_gguf(isa, qtype, scales):
    rng = np.random.default_rng(int(qtype) * 7 + len(scales))
    k = FORMATS[qtype].block_size * 8 if FORMATS[qtype].block_size > 1 else 301
    w = random_blocks(rng, qtype, 5, k, scales)
    got = _native.dequantize(int(qtype), w, isa=isa)
    want = gguf.quants.dequantize(w, GGUF_TYPES[qtype])
    if isa == "scalar":
        np.testing.assert_array_equal(got, want)
    else:  # a fused multiply-add may round the last bit differently
        np.testing.assert_allclose(got, want, rtol=2e-7, atol=0)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", WEIGHT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("batch", [1, 3, 17, 512])
def test_matmul_matches_reference(isa, qtype, batch):
    rng = np.random.default_rng(1000 + int(qtype) * 13 + batch)
    bs = FORMATS[qtype].block_size
    k = 3 * 256 if bs > 1 else 3 * 256 + 5  # odd lengths exercise the float tails
    n = 37 if batch < 512 else 9
    w = random_blocks(rng, qtype, n, k)
    x = rng.standard_normal((batch, k)).astype(np.float32)
    x[:, ::41] *= 30.0  # activation outliers, as real models have
    want, mag = ref_matmul(qtype, w, x, isa)
    got = _native.matmul(int(qtype), w, x, isa=isa)
    assert got.shape == (batch, n) and got.dtype == np.float32
    err = np.abs(got - want)
    # Q4_1/Q5_1 use s = d*sum(q) stored as fp16 (ggml's Q8_1), worth ~1e-3 relative of the min term
    tol = (2e-3 if qtype in (T.Q4_1, T.Q5_1) else 2e-5) * mag + 1e-6
    assert np.all(err <= tol), f"worst error/tolerance {np.max(err / tol):.3g}"
    if isa != "scalar":
        scalar = _native.matmul(int(qtype), w, x, isa="scalar")
        assert np.all(np.abs(got - scalar) <= 2e-5 * mag + 1e-6)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", [T.F32, T.Q4_0, T.Q4_K, T.Q6_K], ids=lambda t: t.name)
@pytest.mark.parametrize("batch", [1, 2, 5, 8, 13])
def test_matmul_llama_cpp_kernel_choices(isa, qtype, batch):
    """Shapes where llama.cpp changes kernels (and so rounding): tinyBLAS for F32
    batches (k a multiple of 8, rows of 4), its repacked-Q4_K gemm for the batch
    rows in full groups of four and gemv for the rest (rows a multiple of 8),
    its repacked-Q4_0 gemv / gemm (which agree), its tiled k-quant kernel from
    8 batch rows on.  Every path stays within float rounding of the reference,
    and a gemv row equals the same row alone."""
    rng = np.random.default_rng(77 + int(qtype) * 5 + batch)
    n, k = 40, 3 * 256
    w = random_blocks(rng, qtype, n, k)
    x = rng.standard_normal((batch, k)).astype(np.float32)
    want, mag = ref_matmul(qtype, w, x, isa)
    got = _native.matmul(int(qtype), w, x, isa=isa)
    assert np.all(np.abs(got - want) <= 2e-5 * mag + 1e-6)
    if qtype == T.Q4_0 or (qtype == T.Q4_K and (batch <= 3 or batch % 4)):  # the last row goes through the gemv
        assert np.array_equal(got[-1:], _native.matmul(int(qtype), w, x[-1:], isa=isa))


@pytest.mark.parametrize("isa", ISAS)
def test_repacked_q4_0_one_chain_per_output(isa):
    """llama.cpp repacks Q4_0 tensors of a multiple of 8 rows on x86
    (q4_0_8x8): every output is one float chain, acc = fma(block sum, d_w *
    d_x, acc), with no horizontal add.  The x86 paths give the scalar
    reference's floats bit for bit: one token, token groups (four, eight on
    avx512) with a remainder (the batch tile), and rows past 16384 columns (the chain carried
    across segments); the harness covers row counts short of a group of 8.
    NEON keeps vec_dot (llama.cpp's ARM repack rounds
    differently again), within rounding.  37 rows are not repacked: vec_dot,
    which differs from the chain in the last bits."""
    rng = np.random.default_rng(808)
    for n, k in ((72, 4096), (16, 17 * 1024), (37, 1024)):
        w = random_blocks(rng, T.Q4_0, n, k)
        for batch in (1, 5, 9):
            x = rng.standard_normal((batch, k)).astype(np.float32)
            got = _native.matmul(int(T.Q4_0), w, x, isa=isa)
            want = _native.matmul(int(T.Q4_0), w, x, isa="scalar")
            if _native.arch == "x86_64":
                assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (n, k, batch)
            else:
                ref, mag = ref_matmul(T.Q4_0, w, x, isa)
                assert np.all(np.abs(got - ref) <= 2e-5 * mag + 1e-6)
    # the two arithmetics really differ: the same rows, repacked or not
    w = random_blocks(rng, T.Q4_0, 40, 4096)
    x = rng.standard_normal(4096).astype(np.float32)
    assert not np.array_equal(_native.matmul(int(T.Q4_0), w, x, isa="scalar")[:37],
                              _native.matmul(int(T.Q4_0), w[:37], x, isa="scalar"))


X16_TYPES = (T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_K, T.Q6_K, *X16_TYPES], ids=lambda t: t.name)
def test_interleaved_copy_gives_the_rows_floats(isa, qtype):
    """The copy of the weights a layer keeps (interleave_rows: Q4_0 / Q4_K / Q6_K eight
    rows block by block, the 32-weight formats sixteen rows transposed), read by
    the kernels over it where the ISA has them and otherwise ignored: the rows'
    floats bit for bit, for one token and batches, and for rows past a segment."""
    rng = np.random.default_rng(909)
    group = _native.interleave_group(int(qtype))
    assert group == (16 if qtype in X16_TYPES else 8)
    for n, k in ((80, 4096), (16, 17 * 1024), (16, 512)):
        w = random_blocks(rng, qtype, n, k)
        il = _native.interleave_rows(int(qtype), w, k)
        assert il.shape == w.shape and not np.array_equal(il, w)
        if qtype not in (T.Q5_0, T.Q5_1):  # (their fifth bits are regrouped bit by bit)
            assert np.array_equal(np.sort(il, axis=None), np.sort(w, axis=None))  # the same bytes, reordered
        for batch in (1, 2, 5, 9):
            x = rng.standard_normal((batch, k)).astype(np.float32)
            want = _native.matmul(int(qtype), w, x, isa=isa)
            got = _native.matmul(int(qtype), w, x, isa=isa, w_il=il)
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (n, k, batch)
    reads_copy = isa == "avx512" or (isa == "avx2" and qtype in (T.Q4_0, T.Q4_K, T.Q6_K))
    bad = il.copy()
    bad[0, 20] ^= 0xFF
    x = rng.standard_normal(512).astype(np.float32)
    changed = not np.array_equal(_native.matmul(int(qtype), w, x, isa=isa, w_il=bad), _native.matmul(int(qtype), w, x, isa=isa))
    assert changed == reads_copy  # a changed copy changes the result exactly where it is read
    with pytest.raises(ValueError, match=f"multiple of {group}"):
        _native.interleave_rows(int(qtype), w[:group - 1], 512)
    # into a buffer given (a slice of the model's one buffer of copies): the same bytes
    out = np.zeros(w.size + 64, np.uint8)[64:].reshape(w.shape)
    assert _native.interleave_rows(int(qtype), w, 512, out) is out and np.array_equal(out, _native.interleave_rows(int(qtype), w, 512))
    with pytest.raises(ValueError, match="out: expected shape"):
        _native.interleave_rows(int(qtype), w, 512, np.zeros((w.shape[0] * 2, w.shape[1] // 2), np.uint8))
    with pytest.raises(ValueError, match="read-only"):
        ro = np.zeros_like(w)
        ro.flags.writeable = False
        _native.interleave_rows(int(qtype), w, 512, ro)
    with pytest.raises(ValueError, match="rows"):
        _native.matmul(int(qtype), w, x, w_il=il[:4])


def test_interleaved_types_follow_the_active_path():
    """Layers keep copies only where the active kernels read them: Q4_0, Q4_K
    and Q6_K on the x86 paths, the 32-weight formats on avx512 too, none on
    scalar or NEON, none with LLAMALOCAL_REPACK=0."""
    code = "from llamalocal import backend; print(sorted(backend.interleaved_types()))"
    want = {"avx2": [T.Q4_0, T.Q4_K, T.Q6_K], "avx512": sorted([T.Q4_0, T.Q4_K, T.Q6_K, *X16_TYPES])}
    for isa in ISAS:
        r = _run_python(code, LLAMALOCAL_ISA=isa)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == str([int(t) for t in want.get(isa, [])]), isa
    r = _run_python(code, LLAMALOCAL_REPACK="0")
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr

@pytest.mark.parametrize("isa", ISAS)
def test_matvec_odd_rows_and_1d_input(isa):
    rng = np.random.default_rng(7)
    for n in (1, 5, 33, 1001):
        w = random_blocks(rng, T.Q4_0, n, 4096)
        x = rng.standard_normal(4096).astype(np.float32)
        y = _native.matmul(int(T.Q4_0), w, x, isa=isa)
        assert y.shape == (n,)
        want, mag = ref_matmul(T.Q4_0, w, x[None], isa)
        assert np.all(np.abs(y - want[0]) <= 2e-5 * mag[0] + 1e-6)


@pytest.mark.parametrize("isa", ISAS)
def test_activation_q8_0_matches_gguf(isa):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 4096)).astype(np.float32)
    x[1, :64] = 0.0  # all-zero blocks
    x[2] *= 1e4
    got = _native.quantize_activations(int(T.Q4_0), x, isa=isa)
    want = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)
    if isa == "scalar":
        np.testing.assert_array_equal(got, want)
    else:  # SIMD may round exact .5 ties the other way: at most one step
        gd = gguf.quants.dequantize(got, gguf.GGMLQuantizationType.Q8_0)
        wd = gguf.quants.dequantize(want, gguf.GGMLQuantizationType.Q8_0)
        step = np.repeat(np.abs(x).reshape(4, -1, 32).max(-1) / 127, 32, axis=1)
        assert np.all(np.abs(gd - wd) <= step * 1.01)


def test_threads_do_not_change_results():
    rng = np.random.default_rng(11)
    w = random_blocks(rng, T.Q4_K, 999, 2048)
    x = rng.standard_normal((3, 2048)).astype(np.float32)
    before = _native.num_threads()
    try:
        _native.set_num_threads(1)
        y1 = _native.matmul(int(T.Q4_K), w, x)
        _native.set_num_threads(2)
        y2 = _native.matmul(int(T.Q4_K), w, x)
    finally:
        _native.set_num_threads(before)
    np.testing.assert_array_equal(y1, y2)  # each output is computed by one thread, in the same order


def test_matmul_into_out_buffer():
    rng = np.random.default_rng(5)
    w = random_blocks(rng, T.Q8_0, 16, 64)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    out = np.zeros((2, 16), np.float32)
    y = _native.matmul(int(T.Q8_0), w, x, out=out)
    assert np.shares_memory(y, out) and np.array_equal(out, _native.matmul(int(T.Q8_0), w, x))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
def test_bandwidth_probe_reads_every_byte(isa, threads):
    # The probe's checksum is the wrapping sum of the buffer's 8-byte-aligned
    # words and of the bytes outside them, so a thread share or a vector tail
    # left unread shows.
    rng = np.random.default_rng(3)
    before = _native.num_threads()
    try:
        _native.set_num_threads(threads)
        for n in (0, 5, 8, 127, 128 * 1024 + 77):
            buf = rng.integers(0, 256, size=n + 3, dtype=np.uint8)[3:]  # not 8-byte aligned
            head = min(n, -buf.ctypes.data % 8)
            end = head + (n - head) // 8 * 8
            words = np.frombuffer(buf[head:end].tobytes(), np.uint64)
            outside = int(buf[:head].sum()) + int(buf[end:].sum())
            expected = (int(words.sum(dtype=np.uint64)) + outside) % 2**64
            assert _native.stream_read(buf, isa=isa) == expected
    finally:
        _native.set_num_threads(before)


class TestBadArguments:
    w = np.zeros((4, 18 * 2), np.uint8)  # 4 rows of 64 Q4_0 weights
    x = np.zeros(64, np.float32)

    def test_wrong_dtypes(self):
        with pytest.raises(TypeError, match="x: expected dtype float32"):
            _native.matmul(int(T.Q4_0), self.w, self.x.astype(np.float64))
        with pytest.raises(TypeError, match="w: expected dtype uint8"):
            _native.matmul(int(T.Q4_0), self.w.view(np.int8), self.x)

    def test_non_contiguous(self):
        with pytest.raises(ValueError, match="C-contiguous"):
            _native.matmul(int(T.Q4_0), self.w, np.zeros((2, 128), np.float32)[:, ::2])
        with pytest.raises(ValueError, match="C-contiguous"):
            _native.dequantize(int(T.Q4_0), np.zeros((4, 72), np.uint8)[:, ::2])

    def test_shape_mismatch(self):
        with pytest.raises(ValueError, match="take 72 bytes, got 36"):
            _native.matmul(int(T.Q4_0), self.w, np.zeros(128, np.float32))
        with pytest.raises(ValueError, match="dimensions"):
            _native.matmul(int(T.Q4_0), self.w, np.zeros((1, 1, 64), np.float32))
        with pytest.raises(ValueError, match="out: expected"):
            _native.matmul(int(T.Q4_0), self.w, self.x, out=np.zeros(5, np.float32))

    def test_misaligned_lengths(self):
        with pytest.raises(ValueError, match="not a positive multiple of the Q4_0 block size 32"):
            _native.matmul(int(T.Q4_0), self.w, np.zeros(48, np.float32))
        with pytest.raises(ValueError, match="not a whole number of Q4_K blocks"):
            _native.dequantize(int(T.Q4_K), np.zeros(145, np.uint8))
        with pytest.raises(ValueError, match="multiple of the Q8_K block size 256"):
            _native.quantize_activations(int(T.Q4_K), np.zeros(100, np.float32))

    def test_unknown_types_and_paths(self):
        with pytest.raises(ValueError, match="unsupported GGML tensor type id 4"):
            _native.matmul(4, self.w, self.x)
        with pytest.raises(ValueError, match="activation format"):
            _native.matmul(int(T.Q8_K), self.w, self.x)
        with pytest.raises(ValueError, match="not available"):
            _native.matmul(int(T.Q4_0), self.w, self.x, isa="sse9")
        with pytest.raises(ValueError, match="not available"):
            _native.set_isa("sse9")
        with pytest.raises(ValueError, match="read-only"):
            out = np.zeros(4, np.float32)
            out.flags.writeable = False
            _native.matmul(int(T.Q4_0), self.w, self.x, out=out)


def native_env(**env: str) -> dict:
    """The environment with `env` added, for a child process that must use the
    C++ extension even when this run forces the numba backend."""
    base = {k: v for k, v in os.environ.items() if k != "LLAMALOCAL_BACKEND"}
    return {**base, **env}


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=native_env(**env), timeout=300,
                          cwd=TESTS_DIR)


@pytest.mark.parametrize("isa", ISAS)
def test_isa_env_var_selects_path(isa):
    r = _run_python("from llamalocal import backend; print(backend.active_isa())", LLAMALOCAL_ISA=isa)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == isa


def test_isa_env_var_rejects_unavailable_path():
    r = subprocess.run([sys.executable, "-m", "llamalocal.cli", "sysinfo"], capture_output=True, text=True, cwd=TESTS_DIR,
                       env=native_env(LLAMALOCAL_ISA="pdp11"), timeout=120)
    assert r.returncode != 0 and "LLAMALOCAL_ISA='pdp11' is not available" in r.stderr


def run_harness(*build_args: str) -> str:
    """Builds tests/native/kernel_test.cpp with build.sh and runs it; returns its output."""
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "kernel_test"
        subprocess.run(["bash", str(root / "tests/native/build.sh"), str(exe), *build_args], check=True, timeout=600)
        r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:]
    summary = r.stdout.strip().splitlines()[-1]
    passed, failed = (int(s.split()[0]) for s in summary.split(", "))
    assert failed == 0 and passed > 1000, summary
    return r.stdout


def test_native_harness_all_isas():
    """The C++ test program: every SIMD path against scalar on this CPU."""
    run_harness()


@pytest.mark.skipif(_native.arch != "x86_64", reason="the avx512 build exists on x86-64 only")
def test_native_harness_avx512_source_with_emulated_vnni():
    """The avx512 build's only AVX-512 instructions are its VNNI
    multiply-accumulates (native/x86/int_macc.h); its 16-lane float sums live
    in pairs of 256-bit registers.  Built with SIMDe's portable VPDPBUSD/VPDPWSSD
    instead of -mavx512*, its code runs against the scalar reference (at 16
    lanes) on any AVX2 CPU, so a mistake in that path cannot hide on machines
    without AVX-512 (where test_native_harness_all_isas cannot run it)."""
    out = run_harness("g++", "x86", "--emulate-avx512")
    assert "ISA paths: avx512 avx2 scalar" in out, out[:200]
