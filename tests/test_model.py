"""Model runtime end to end: llama2.c's expected text, llama.cpp's logits,
every kernel path, the KV cache and bad model files."""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import struct
import subprocess
import sys
import time
from functools import partial

import numpy as np
import pytest

from models import GEMMA3, SMOLLM2, TESTS_DIR, golden_path, model_path

from llamalocal import backend
from llamalocal.errors import ContextFullError, ModelFormatError
from llamalocal.formats import GGMLType
from llamalocal.model.loader import load_model


def expected_llama2c() -> dict[str, bytes]:
    """Ground truth copied verbatim from llama2.c (expected_llama2c_outputs.md)."""
    text = model_path("expected_llama2c_outputs.md").read_text(encoding="utf-8")
    greedy = ast.literal_eval(re.search(r"expected_stdout = (b'.*')", text).group(1))
    sampled = re.search(r"-s 133742\n(.*?)\n```", text, re.S).group(1).encode()
    return {"greedy200": greedy, "sampled": sampled}


def cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llamalocal.cli", *args], capture_output=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=TESTS_DIR)


# ---------------------------------------------------------------- llama2.c

def test_llama2c_bin_greedy_matches_run_c():
    r = cli("generate", str(model_path("stories260K.bin")), "-z", str(model_path("tok512.bin")), "--temp", "0", "-n", "200")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == expected_llama2c()["greedy200"]
    assert b"generation: 200 tokens" in r.stderr


def test_llama2c_bin_sampled_matches_run_c():
    """run.c's sampler (xorshift RNG, top-p 0.9, seed 133742) and an F32 cache like run.c's."""
    r = cli("generate", str(model_path("stories260K.bin")), "-z", str(model_path("tok512.bin")),
            "--temp", "1.0", "--top-p", "0.9", "-s", "133742", "-n", "256")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == expected_llama2c()["sampled"].decode().strip()


def test_stories_gguf_greedy_matches_run_c():
    """The same weights from GGUF with the embedded vocabulary."""
    r = cli("generate", str(model_path("stories260K.gguf")), "--temp", "0", "-n", "200")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == expected_llama2c()["greedy200"]


# ---------------------------------------------------------------- llama.cpp logits

GOLDEN = {"stories260K.gguf": "stories260k.raw.json", SMOLLM2: "smollm2-135m-q4_1.raw.json", GEMMA3: "gemma3-270m-q4_k_m.raw.json"}


def check_against_golden(model_name: str) -> dict:
    """Batched prompt logits and one-token-at-a-time greedy decoding against
    llama.cpp.  Returns the figures; raises AssertionError on a hard failure."""
    lm = load_model(model_path(model_name))
    g = json.loads(golden_path(GOLDEN[model_name]).read_text())
    errors, report = [], {"top1_checked": 0, "greedy": []}
    for case in g["cases"]:
        ids = case["token_ids"]
        assert lm.tokenizer.encode(case["prompt"]) == ids, "prompt tokens differ from llama.cpp's"
        logits = lm.model.forward(ids, lm.model.new_cache(256), all_logits=True)
        for i, top in enumerate(case["prompt_top"]):
            errors += list(np.abs(logits[i][top["ids"]] - np.array(top["logits"])))
            if top["logits"][0] - top["logits"][1] > 0.5:  # llama.cpp's choice is clear: ours must agree
                report["top1_checked"] += 1
                assert int(np.argmax(logits[i])) == top["ids"][0], f"{case['prompt']!r} position {i}: top-1 differs"
        # Greedy: must agree until llama.cpp's own choice was a near tie (margin < 0.5).
        cache = lm.model.new_cache(256)
        out, nxt = [], lm.model.forward(ids, cache)
        for k, want in enumerate(case["greedy_ids"]):
            tok = int(np.argmax(nxt))
            out.append(tok)
            if tok != want:
                close = [m for m in case["greedy_margins"][: k + 1] if m < 0.5]
                assert close, f"{case['prompt']!r}: greedy token {k} differs where llama.cpp's margin was {case['greedy_margins'][k]}"
                break
            nxt = lm.model.forward([tok], cache)
        report["greedy"].append((len(out) - (out != case["greedy_ids"][: len(out)]), len(case["greedy_ids"])))
    e = np.array(errors)
    report.update(median=float(np.median(e)), p95=float(np.percentile(e, 95)), max=float(e.max()), n=len(e),
                  exact=float(np.mean(e <= 5e-5)))  # the golden files round to 4 decimals
    return report


# The golden files were written by llama.cpp's AVX-512 build (on the
# development machine, see DESIGN.md), whose float sums run in 16 lanes
# (native/ggml_math.h).  The avx512, avx2 and scalar paths all follow that
# build's arithmetic and reproduce its logits to the files' 4 decimals:
# share of golden top-10 logits within 5e-5, and the largest difference
# (measured 1.0 and 5e-5 for SmolLM2 and Gemma 3 on every path); the numba
# fallback computes the scalar path's logits bit for bit
# (test_numba_path_bit_identical_to_native_scalar), so it does too.
# stories260K's F32 logits differ between any two llama.cpp builds by about
# 1e-4 (0.88 and 0.0024 measured), so it says little about the arithmetic.
EXACT = {SMOLLM2: (1.0, 1e-4), GEMMA3: (1.0, 1e-4), "stories260K.gguf": (0.85, 0.005)}
# Paths that do not round as llama.cpp's AVX-512 build does (NEON sums in 8
# lanes) must still keep every golden logit within 0.5 and every top-1 where
# llama.cpp's lead is clear (check_against_golden), as the issue asks of
# every path.
OTHER_PATH_MAX = 0.5
EXACT_ISAS = ("avx512", "avx2", "scalar", "numba")


def assert_golden(isa: str, model_name: str, r: dict) -> None:
    assert r["top1_checked"] > 0 and r["p95"] <= 0.5, r
    if isa in EXACT_ISAS:
        share, worst = EXACT[model_name]
        assert r["exact"] >= share and r["max"] <= worst, r
    else:
        assert r["max"] <= OTHER_PATH_MAX, r


@pytest.mark.parametrize("model_name", list(GOLDEN))
def test_logits_and_greedy_match_llama_cpp(model_name):
    from llamalocal import backend

    r = check_against_golden(model_name)
    print(model_name, r)
    assert_golden(backend.active_isa(), model_name, r)


ISA_CHECK = """
import sys, json
sys.path.insert(0, {tests!r})
from test_model import check_against_golden
from llamalocal import backend
r = check_against_golden({model!r})
print(json.dumps({{"isa": backend.active_isa(), **{{k: v for k, v in r.items() if k != "greedy"}}}}))
"""


def kernel_paths() -> list[dict]:
    from llamalocal import _native

    # the backend named too: the suite itself may run under LLAMALOCAL_BACKEND=numba
    paths = [{"LLAMALOCAL_BACKEND": "native", "LLAMALOCAL_ISA": isa} for isa in _native.available_isas()]
    return paths + [{"LLAMALOCAL_BACKEND": "numba"}]


def path_name(env: dict) -> str:
    return env.get("LLAMALOCAL_ISA", "numba")


@pytest.mark.parametrize("model_name", [SMOLLM2, GEMMA3])
@pytest.mark.parametrize("env", kernel_paths(), ids=path_name)
def test_every_kernel_path_matches_llama_cpp(env, model_name):
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run([sys.executable, "-c", ISA_CHECK.format(tests=tests_dir, model=model_name)], capture_output=True, text=True, cwd=TESTS_DIR,
                       env={**os.environ, **env}, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["isa"] == path_name(env)
    assert_golden(res["isa"], model_name, res)


# ---------------------------------------------------------------- runtime pieces

def on_path(path: str, fn):
    """fn() with models loaded and run on one kernel path in this process:
    "scalar" (native layers and kernels, LLAMALOCAL_ISA=scalar) or "numba"
    (backend.numba.layer.PyLayer on the numba kernels), whichever backend the suite runs on."""
    from llamalocal import _native, backend
    from llamalocal.backend.numba import matmul as fallback

    isa = _native.active_isa()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backend, "BACKEND", "native" if path == "scalar" else "numba")
        mp.setattr(backend, "_native", _native if path == "scalar" else None)
        mp.setattr(backend, "_fallback", fallback, raising=False)
        _native.set_isa("scalar")
        try:
            return fn()
        finally:
            _native.set_isa(isa)


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize("model_name", list(GOLDEN))
def test_numba_path_bit_identical_to_native_scalar(model_name):
    """The numba backend states native/layer.cpp and the scalar kernels float
    operation for float operation: the same logits, bit for bit, for a batched
    prompt (all rows, and the last row only, where the last layer's FFN sees
    one row), then one token at a time (the single-row kernels), on an F16 and
    an F32 (llama2.c's attention) cache."""

    def logits():
        lm = load_model(model_path(model_name))
        m, ids = lm.model, lm.tokenizer.encode("Once upon a time, there was a little")
        out = [m.forward(ids, m.new_cache(64), all_logits=True)]
        for dtype in ("f16", "f32"):
            cache = m.new_cache(64, dtype)
            out.append(m.forward(ids, cache))
            out += [m.forward([tok], cache) for tok in (5, 6)]
        return out

    want, got = on_path("scalar", logits), on_path("numba", logits)
    for i, (a, b) in enumerate(zip(want, got)):
        assert np.array_equal(bits(a), bits(b)), (i, float(np.abs(a - b).max()))


def test_numba_layer_bit_identical_on_a_sliding_window():
    """One Gemma 3 layer with a 5-position window: the attention span starts
    past cell 0 (ggml's padded KV range then leads with empty cells)."""
    from llamalocal import backend

    m = on_path("numba", lambda: load_model(model_path(GEMMA3)).model)
    py = m.layers[0]
    p = dataclasses.replace(py.params, sliding_window=5)
    py.params = p
    nat = on_path("scalar", lambda: backend.make_layer(p, py.t))
    x = m.embed(np.arange(100, 112))
    caches = {name: (np.zeros((32, p.n_head_kv, p.head_dim), np.float16),
                     np.zeros((32, p.n_head_kv, p.head_dim), np.float16)) for name in ("scalar", "numba")}
    layers = {"scalar": nat, "numba": py}
    pos = 0
    for rows in (x, x[:1] * 0.5, x[1:2] * 2.0, x[5:8]):
        outs = {}
        for name, layer in layers.items():
            outs[name] = rows.copy()
            on_path(name, partial(layer.forward, outs[name], pos, *caches[name]))
        assert np.array_equal(bits(outs["scalar"]), bits(outs["numba"])), pos
        assert np.array_equal(caches["scalar"][0], caches["numba"][0]) and np.array_equal(caches["scalar"][1], caches["numba"][1])
        pos += len(rows)


def test_last_layer_ffn_on_the_output_rows_only():
    """forward() without all_logits runs the last layer's FFN on the last row
    only (llama.cpp's inp_out_ids): the same logits as that row of a full
    pass, on the native layer and on the numpy one; the layer refuses an
    n_out outside 1..n_tokens."""
    from llamalocal import backend

    for name, be in ((SMOLLM2, backend.BACKEND), ("stories260K.gguf", "numba")):
        saved = backend.BACKEND
        try:
            backend.BACKEND = be
            lm = load_model(model_path(name))
            ids = lm.tokenizer.encode("Once upon a time, there was a little")
            last = lm.model.forward(ids, lm.model.new_cache(64))
            full = lm.model.forward(ids, lm.model.new_cache(64), all_logits=True)
            two = lm.model.forward(ids, lm.model.new_cache(64), n_logits=2)
        finally:
            backend.BACKEND = saved
        np.testing.assert_allclose(last, full[-1], atol=1e-4 * np.abs(full).max())
        np.testing.assert_allclose(two, full[-2:], atol=1e-4 * np.abs(full).max())
    m = load_model(model_path(SMOLLM2)).model
    cache = m.new_cache(8)
    with pytest.raises(ValueError, match="n_out"):
        m.layers[0].forward(np.zeros((3, m.config.n_embd), np.float32), 0, cache.k[0], cache.v[0], n_out=4)


def test_kv_cache_truncate_save_restore_and_overflow():
    lm = load_model(model_path(SMOLLM2))
    m, tok = lm.model, lm.tokenizer
    ids = tok.encode("The capital of France is")
    cache = m.new_cache(32)
    full = m.forward(ids + [12, 13], cache, all_logits=True)
    assert cache.n_tokens == len(ids) + 2
    cache.truncate(len(ids))
    again = m.forward([12, 13], cache, all_logits=True)
    np.testing.assert_allclose(again, full[-2:], atol=1e-4)
    state = cache.save()
    m.forward([99] * 5, cache)
    cache.restore(state)
    assert cache.n_tokens == len(ids) + 2
    np.testing.assert_allclose(m.forward([14], cache), m.forward([14], _replay(m, ids + [12, 13])), atol=1e-4)
    with pytest.raises(ContextFullError):
        m.forward(list(range(40)), cache)
    assert cache.n_tokens == len(ids) + 3  # a refused batch changes nothing


def _replay(m, ids):
    c = m.new_cache(32)
    m.forward(ids, c)
    return c


def test_f32_cache_option():
    lm = load_model(model_path(SMOLLM2))
    ids = lm.tokenizer.encode("def fibonacci(n):")
    a = lm.model.forward(ids, lm.model.new_cache(32, "f32"))
    b = lm.model.forward(ids, lm.model.new_cache(32, "f16"))
    assert int(np.argmax(a)) == int(np.argmax(b))


def test_generate_streams_only_generated_text_to_stdout():
    r = cli("generate", str(model_path(SMOLLM2)), "-p", "The capital of France is", "--temp", "0", "-n", "4")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().startswith(" Paris")
    assert "t/s" in r.stderr.decode() and "t/s" not in r.stdout.decode()
    echo = cli("generate", str(model_path(SMOLLM2)), "-p", "The capital of France is", "--temp", "0", "-n", "4", "--echo")
    assert echo.stdout.decode() == "The capital of France is" + r.stdout.decode()


def test_generate_seeded_sampling_is_reproducible():
    args = ("generate", str(model_path(SMOLLM2)), "-p", "Once upon a time", "--temp", "0.9", "-n", "24", "-s", "7")
    a, b = cli(*args), cli(*args)
    assert a.returncode == 0 and a.stdout == b.stdout and len(a.stdout) > 0


# ---------------------------------------------------------------- bad files

def _assert_clean_failure(path, what: str):
    t0 = time.perf_counter()
    with pytest.raises(ModelFormatError) as e:
        load_model(path)
    assert time.perf_counter() - t0 < 1.0
    assert path.name in str(e.value)
    r = cli("generate", str(path), "-p", "x", "-n", "1", timeout=120)
    assert r.returncode == 1
    err = r.stderr.decode().strip()
    assert err.startswith("Error:") and path.name in err and "Traceback" not in err, (what, err)


def test_truncated_model_is_refused(tmp_path):
    src = model_path(SMOLLM2)
    bad = tmp_path / "truncated.gguf"
    with open(src, "rb") as f:
        bad.write_bytes(f.read(src.stat().st_size // 2))
    _assert_clean_failure(bad, "truncated")


def test_tensor_offset_past_eof_is_refused(tmp_path):
    from llamalocal.io.gguf_reader import GGUFFile

    src = model_path("stories260K.gguf")
    with GGUFFile(src) as g:
        first = next(iter(g.tensors.values()))
        data_offset = g.data_offset
    raw = bytearray(src.read_bytes())
    rel = first.offset - data_offset
    at = raw.find(struct.pack("<Q", rel), 24, data_offset)  # the first tensor info's offset field
    assert at > 0
    raw[at : at + 8] = struct.pack("<Q", 1 << 40)
    bad = tmp_path / "offset.gguf"
    bad.write_bytes(bytes(raw))
    _assert_clean_failure(bad, "offset past EOF")


def test_absurd_tensor_count_is_refused(tmp_path):
    raw = bytearray(model_path("stories260K.gguf").read_bytes())
    raw[8:16] = struct.pack("<Q", 1 << 60)
    bad = tmp_path / "count.gguf"
    bad.write_bytes(bytes(raw))
    _assert_clean_failure(bad, "absurd tensor count")


def test_llama2c_bin_with_wrong_size_is_refused(tmp_path):
    bad = tmp_path / "short.bin"
    bad.write_bytes(model_path("stories260K.bin").read_bytes()[:-100])
    _assert_clean_failure(bad, "llama2.c size")


def test_info_and_sysinfo_commands():
    r = cli("info", str(model_path(SMOLLM2)))
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert "llama" in out and "Q4_1" in out and "gpt2" in out
    bad = cli("info", str(model_path("tok512.bin")))
    assert bad.returncode == 1 and "tok512.bin" in bad.stderr.decode() and "Traceback" not in bad.stderr.decode()
    r = cli("sysinfo")
    assert r.returncode == 0 and "kernel path:" in r.stdout.decode()


def test_library_api():
    import llamalocal

    lm = llamalocal.load_model(model_path("stories260K.gguf"))
    sample = llamalocal.make_sampler(llamalocal.SamplerConfig(temperature=0.0))
    bos = lm.tokenizer.bos_id
    ids = list(llamalocal.generate_tokens(lm.model, [bos], sample, 20, lm.model.new_cache(64)))
    text = lm.tokenizer.decode([bos] + ids).encode()  # SPM drops the leading space after BOS
    assert len(ids) == 20 and text == expected_llama2c()["greedy200"][: len(text)]
    with pytest.raises(AttributeError):
        llamalocal.no_such_thing


def test_layer_params_are_bound_field_by_field():
    """model.config.LayerParams crosses into C++ field by field: a field missing
    or misspelled on either side is a TypeError, not a silent 0 or default."""
    from llamalocal import _native
    from llamalocal.model.config import LayerParams

    lm = load_model(model_path("stories260K.gguf"))
    p = lm.model.config.layer_params(0)
    kw = p.as_kwargs()
    bound = _native.LayerParams(**kw)
    for name, value in kw.items():
        if value is None:
            assert getattr(bound, name) is None
        else:
            assert getattr(bound, name) == pytest.approx(value), name
    assert set(kw) == {f.name for f in dataclasses.fields(LayerParams)}
    missing = dict(kw)
    del missing["rope_base"]
    with pytest.raises(TypeError):
        _native.LayerParams(**missing)
    with pytest.raises(TypeError):
        _native.LayerParams(**kw, rope_freq_base=10000.0)
    with pytest.raises(ValueError, match="activation"):
        _native.Layer({}, _native.LayerParams(**{**kw, "activation": "relu"}))


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q6_K"])
def test_layers_keep_an_interleaved_copy_with_the_same_logits(tmp_path, qtype):
    """A model's Q4_0, Q4_1 or Q6_K matrices (and a classifier of such a type)
    have the interleaved copy where the kernels read one, and the logits are
    the mapped rows' (LLAMALOCAL_REPACK=0) bit for bit, prompt and decode.
    Q6_K: the Q4_K_M Gemma 3 file's attn_v / ffn_down layers (stories260K's
    64 columns hold no 256-weight block)."""
    if qtype == "Q6_K":
        q = model_path(GEMMA3)
    else:
        q = tmp_path / f"{qtype}.gguf"
        r = cli("quantize", model_path("stories260K.gguf"), q, "--type", qtype, "-q")
        assert r.returncode == 0, r.stderr
    type_id = int(GGMLType[qtype])
    code = ("import sys, numpy as np; from llamalocal.model.loader import load_model; from llamalocal import backend\n"
            f"m = load_model({str(q)!r}).model; c = m.new_cache(32); t = {type_id}\n"
            "a = m.forward([1, 403, 407, 261], c, all_logits=True); b = m.forward([378], c)\n"
            "d = m.forward_batch([5, 9], [0, 1], [c, m.new_cache(32)])\n"
            "copies = sum(len(v) == 3 and v[0] == t for t_ in m._layer_tensors for v in t_.values() if isinstance(v, tuple))\n"
            "g = backend.interleave_group(t) if backend.interleaved_types() else 1\n"
            "fit = sum(w.type == t and w.rows % g == 0 for name, w in m.tensors.items() if name.startswith('blk.'))\n"
            "bufs = {id(v[2].base) for t_ in m._layer_tensors for v in t_.values() if isinstance(v, tuple) and len(v) == 3}\n"
            "assert len(bufs) <= 1, bufs  # the copies are slices of one buffer\n"
            "kept = t in backend.interleaved_types(); o = m.output\n"
            "assert (m.output_il is not None) == (int(o.type) in backend.interleaved_types() and o.rows % backend.interleave_group(o.type) == 0)\n"
            "sys.stdout.write(f'{copies} {fit} {kept} ' + np.concatenate([a.ravel(), b, d.ravel()]).tobytes().hex())")
    outs = {}
    for repack in ("1", "0"):
        # from outside the source tree, so that the installed package (with its extension) is the one imported
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                           env={**os.environ, "LLAMALOCAL_REPACK": repack})
        assert r.returncode == 0, r.stderr
        outs[repack] = r.stdout.split()
    copies, fit, kept, logits = outs["1"]
    assert int(copies) == (int(fit) if kept == "True" else 0) and int(fit) >= (9 if qtype == "Q6_K" else 20)  # rows a multiple of the group
    assert outs["0"][0] == "0" and outs["0"][3] == logits


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="transparent huge pages are Linux's")
def test_huge_page_buffer_is_private_aligned_and_advised():
    """The interleaved copies' buffer: private memory starting on a 2 MiB
    boundary, advised for huge pages (VmFlags 'hg' in /proc/self/smaps: the
    kernel backs it with 2 MiB pages where it has them)."""
    buf = backend.huge_page_buffer(5 << 20)
    assert buf.nbytes == 5 << 20 and buf.flags.writeable and buf.ctypes.data % backend.HUGE_PAGE == 0
    buf[:] = 7
    addr = buf.ctypes.data
    for line in open("/proc/self/smaps").read().split("\n"):
        if "-" in line.split(" ")[0]:
            lo, hi = (int(a, 16) for a in line.split(" ")[0].split("-"))
            current = lo <= addr < hi
            if current:
                assert line.split()[1] == "rw-p", line  # private: shared anonymous memory is shmem, not advised
        elif current and line.startswith("VmFlags:"):
            assert "hg" in line.split(), line
            return
    pytest.fail("the buffer's mapping is not in /proc/self/smaps")


def test_release_pages_drops_only_a_file_maps_whole_pages(tmp_path):
    """release_pages takes a mapped array's pages out of the process (Rss of the
    mapping falls) and leaves arrays in private memory untouched."""
    import mmap

    from llamalocal.io.gguf_reader import release_pages

    path = tmp_path / "blob"
    path.write_bytes(np.arange(4 << 20, dtype=np.uint8).tobytes())

    def rss_kb() -> int:  # this mapping's resident size, from /proc/self/smaps
        lines = open("/proc/self/smaps").read().splitlines()
        for i, line in enumerate(lines):
            if line.endswith(str(path)):
                return next(int(l.split()[1]) for l in lines[i + 1:] if l.startswith("Rss:"))
        raise AssertionError("mapping not found")

    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    a = np.frombuffer(mm, dtype=np.uint8)[100:].reshape(-1, 4)
    assert int(a.sum(dtype=np.uint64)) > 0 and rss_kb() >= 4000
    release_pages(a)
    assert rss_kb() <= 8  # the first, partial page may stay
    assert np.array_equal(a[:4].ravel(), np.arange(100, 116, dtype=np.uint8))  # read back from the file
    private = np.arange(1 << 20, dtype=np.uint8)
    release_pages(private)
    assert np.array_equal(private, np.arange(1 << 20, dtype=np.uint8))
    del a
