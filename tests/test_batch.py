"""Continuous batching: Transformer.forward_batch and Layer.forward_batch.

Tokens of several sequences go through one pass, each with its own
positions and KV cache.  RoPE, the cache writes and attention are the
per-sequence computation forward() does, bit for bit; the matmuls see every
row at once, and a row's result depends on the kernel its place in the batch
selects (from four rows llama.cpp's gemm for repacked weights, from eight
its tiled k-quant kernel), so a sequence batched with others differs from
the same sequence alone as much as a batched prompt differs from its tokens
fed one at a time, and not at all where the kernels are the same."""
from __future__ import annotations

import dataclasses
from functools import lru_cache, partial

import numpy as np
import pytest

from models import GEMMA3, SMOLLM2, model_path
from test_model import bits, on_path

from llamalocal.errors import ContextFullError
from llamalocal.model.kv_cache import KVCache
from llamalocal.model.loader import load_model

MODELS = [SMOLLM2, GEMMA3]
PROMPTS = ["Once upon a time", "The capital of France is Paris, and the capital of Germany is", "def fibonacci(n):"]
# Gemma 3's local layers attend to the last 512 positions: one sequence
# longer than that has its attention span start past cell 0.
LONG = {GEMMA3: 530}
# Batched logits against one sequence at a time where the batch sends a row
# through another matmul kernel than one row alone takes (measured on
# avx512, five rows over six steps: SmolLM2 0 (no repacked weights), Gemma 3
# up to 1.10, median 0.11, Q4_K's gemm against its gemv; forward() itself shows
# 1.08 between a 15-token prompt's batched logits and the same tokens fed
# one at a time).
MAX_DIFF = {SMOLLM2: 0.5, GEMMA3: 1.5}


@lru_cache(maxsize=None)
def model(name: str):
    lm = load_model(model_path(name))
    return lm.model, lm.tokenizer


def clone(m, cache: KVCache) -> KVCache:
    c = m.new_cache(cache.n_ctx, cache.dtype)
    c.restore(cache.save())
    return c


def prompts(name: str) -> list[list[int]]:
    m, tok = model(name)
    ids = [tok.encode(p) for p in PROMPTS]
    if name in LONG:
        ids[1] = (ids[1] * LONG[name])[: LONG[name]]
    return ids


@lru_cache(maxsize=None)
def _prefilled(name: str, n_seq: int) -> tuple[tuple[KVCache, ...], tuple[int, ...]]:
    m, _ = model(name)
    ps = prompts(name)
    caches, nxt = [], []
    for s in range(n_seq):
        ids = ps[s % len(ps)]
        ids = ids[: len(ids) - s // len(ps)]  # the prompts again, a token shorter
        c = m.new_cache(640)
        nxt.append(int(np.argmax(m.forward(ids, c))))
        caches.append(c)
    return tuple(caches), tuple(nxt)


def prefilled(name: str, n_seq: int) -> tuple[list[KVCache], list[int]]:
    """n_seq caches, each holding one of the prompts, and each one's next token."""
    m, _ = model(name)
    caches, nxt = _prefilled(name, n_seq)
    return [clone(m, c) for c in caches], list(nxt)


def assert_close(name: str, want: np.ndarray, got: np.ndarray, what: str) -> float:
    """Same argmax where the lead is clear (> 0.5), every logit within MAX_DIFF."""
    diff = float(np.abs(want - got).max())
    assert diff < MAX_DIFF[name], (what, diff)
    for s, (w, g) in enumerate(zip(want, got)):
        top2 = np.sort(w)[-2:]
        if top2[1] - top2[0] > 0.5:
            assert int(np.argmax(w)) == int(np.argmax(g)), (what, s)
    return diff


def assert_bits(want: np.ndarray, got: np.ndarray, what: str) -> None:
    assert np.array_equal(bits(want), bits(got)), (what, float(np.abs(want - got).max()))


# Cached K and V rows (one position and KV head) of the batched caches
# against the one-at-a-time ones: largest relative difference measured 0.086
# (Gemma 3, five sequences, six steps); forward() itself shows 0.092 between
# a 25-token prompt batched and fed one token at a time (SmolLM2 0.041).
KV_REL = 0.15


def assert_caches_close(a: KVCache, b: KVCache, what: str) -> None:
    assert a.n_tokens == b.n_tokens, what
    n = a.n_tokens
    for i, (x, y) in enumerate(zip(a.k + a.v, b.k + b.v)):
        x, y = x[:n].astype(np.float32), y[:n].astype(np.float32)
        rel = np.linalg.norm(y - x, axis=-1) / np.maximum(np.linalg.norm(x, axis=-1), 1e-6)
        assert rel.max() < KV_REL, (what, "KV"[i // len(a.k)], i % len(a.k), float(rel.max()))


@pytest.mark.parametrize("n_seq", [3, 5])
@pytest.mark.parametrize("name", MODELS)
def test_batched_decode_matches_one_sequence_at_a_time(name, n_seq):
    """Prompts of different lengths (Gemma 3: one past its 512-position
    window) prefilled one by one, then decode steps of one token per
    sequence: forward_batch against forward([tok], cache) on copies of the
    same caches, fed the same tokens.  Three rows take the one-row matmul
    kernels (repacked gemm starts at four rows, the tiled k-quant kernel at
    eight, and neither model has an F32 matrix for tinyBLAS): bit for bit.
    Five rows: within MAX_DIFF, caches within rounding."""
    m, _ = model(name)
    alone, nxt = prefilled(name, n_seq)
    batched = [clone(m, c) for c in alone]
    diffs = []
    for step in range(6):
        want = np.stack([m.forward([t], c) for t, c in zip(nxt, alone)])
        got = m.forward_batch(nxt, range(n_seq), batched)
        assert got.shape == (n_seq, m.config.n_vocab)
        if n_seq <= 3:
            assert_bits(want, got, f"step {step}")
        diffs.append(assert_close(name, want, got, f"step {step}"))
        nxt = [int(np.argmax(w)) for w in want]
    for s, (a, b) in enumerate(zip(alone, batched)):
        if n_seq <= 3:
            assert all(np.array_equal(x, y) for x, y in zip(a.k + a.v, b.k + b.v)), s
        assert_caches_close(a, b, f"sequence {s}")
    print(name, n_seq, "sequences: largest logit difference", max(diffs))


@pytest.mark.parametrize("name", MODELS)
def test_batch_row_depends_only_on_its_sequence_and_kernel(name):
    """n copies of one sequence's cache, the same token for each: a row's
    logits depend on nothing in the batch but the matmul kernel its place
    selects.  Up to three rows: each is forward()'s one-row result.  Four
    and eight rows: all alike (one gemm group / one tiled batch).  Five:
    the first four alike, the fifth (a gemv row on x86's repacked weights)
    forward()'s one-row result again."""
    m, _ = model(name)
    (c0,), (t0,) = _prefilled(name, 1)
    alone = m.forward([t0], clone(m, c0))
    for n in (1, 2, 3, 4, 5, 8):
        got = m.forward_batch([t0] * n, range(n), [clone(m, c0) for _ in range(n)])
        for i in range(min(n, 4) if n == 5 else n):
            assert_bits(got[0], got[i], f"{n} rows, row {i}")
        if n <= 3 or n == 5:
            assert_bits(alone, got[n - 1], f"{n} rows")


@pytest.mark.parametrize("name", MODELS)
def test_batch_of_one_sequence_is_forward_bit_for_bit(name):
    """One sequence alone: a prompt, then single tokens, through forward_batch
    are forward()'s logits and cache contents exactly."""
    m, _ = model(name)
    ids = prompts(name)[2]
    a, b = m.new_cache(64), m.new_cache(64)
    want = [m.forward(ids, a)] + [m.forward([t], a) for t in (5, 6, 7)]
    got = [m.forward_batch(ids, [0] * len(ids), [b])] + [m.forward_batch([t], [0], [b]) for t in (5, 6, 7)]
    for i, (w, g) in enumerate(zip(want, got)):
        assert g.shape == (1, m.config.n_vocab)
        assert np.array_equal(bits(w), bits(g[0])), i
    assert a.n_tokens == b.n_tokens == len(ids) + 3
    for x, y in zip(a.k + a.v, b.k + b.v):
        assert np.array_equal(x, y)


@pytest.mark.parametrize("name", MODELS)
def test_prompt_chunk_batched_with_decode_tokens(name):
    """A prompt chunk of one sequence (after a prefix already cached)
    batched with decode tokens of two others.  A 4-token chunk first: every
    row takes the kernel it takes alone (the chunk is a gemm group, the
    decode rows and the three rows of the last layer's FFN and the
    classifier take the one-row kernels), so bit for bit.  Then a 7-token
    chunk between the decode tokens (rows in another kernel: within
    MAX_DIFF), then a decode step with the sequences in another order in x:
    logits still in the caches' order."""
    m, _ = model(name)
    alone, nxt = prefilled(name, 3)
    batched = [clone(m, c) for c in alone]
    chunk = [11, 12, 13, 14]
    want = np.stack([m.forward(chunk, alone[0]), m.forward([nxt[1]], alone[1]), m.forward([nxt[2]], alone[2])])
    got = m.forward_batch(chunk + nxt[1:], [0] * len(chunk) + [1, 2], batched)
    assert_bits(want, got, "4-token chunk first")
    assert all(np.array_equal(x, y) for a, b in zip(alone, batched) for x, y in zip(a.k + a.v, b.k + b.v))

    nxt = [int(np.argmax(w)) for w in want]
    chunk = [21, 22, 23, 24, 25, 26, 27]
    want = np.stack([m.forward([nxt[0]], alone[0]), m.forward(chunk, alone[1]), m.forward([nxt[2]], alone[2])])
    got = m.forward_batch([nxt[0]] + chunk + [nxt[2]], [0] + [1] * len(chunk) + [2], batched)
    assert_close(name, want, got, "chunk in the middle")
    assert [c.n_tokens for c in batched] == [c.n_tokens for c in alone]

    nxt = [int(np.argmax(w)) for w in want]
    want = np.stack([m.forward([t], c) for t, c in zip(nxt, alone)])
    got = m.forward_batch([nxt[2], nxt[0], nxt[1]], [2, 0, 1], batched)
    assert_close(name, want, got, "sequences reordered")
    for s, (a, b) in enumerate(zip(alone, batched)):
        assert_caches_close(a, b, f"sequence {s}")


def _layer(path: str, p, tensors: dict):
    """A layer on the active native kernel path ("native") or PyLayer ("numba")."""
    from llamalocal import backend

    if path == "numba":
        return on_path("numba", lambda: backend.make_layer(p, tensors))
    from llamalocal import _native

    return _native.Layer(tensors, _native.LayerParams(**p.as_kwargs()))


@pytest.mark.parametrize("path", ["native", "numba"])
def test_layer_batch_is_the_single_sequence_computation(path):
    """One Gemma 3 layer (GQA: 4 query heads on 1 KV head) with a 5-position
    sliding window, so that most attention spans start past cell 0 (ggml's
    padded KV range then leads with empty cells), on caches of random
    values: rows of three sequences batched against each sequence alone.
    The batches are chosen so that every row takes the matmul kernel it
    takes alone (a decode batch of three: no repacked gemm below four rows,
    no tiled k-quant kernel below eight, no F32 matrix for tinyBLAS; a
    4-token prompt chunk then a decode token: the chunk is a full gemm group
    either way, the decode row a gemv row either way), so everything else,
    RoPE at each row's own position, the cache writes and the attention, must
    be bit for bit the single-sequence result."""
    lm = on_path("numba", lambda: load_model(model_path(GEMMA3)).model)
    tensors = lm.layers[0].t
    p = dataclasses.replace(lm.layers[0].params, sliding_window=5)
    layer = _layer(path, p, tensors)
    x = lm.embed(np.arange(200, 230))
    rng = np.random.default_rng(1)
    for rows, seq, pos in (([0, 1, 2], [0, 1, 2], [0, 9, 3]), ([3, 4, 5, 6, 7], [0, 0, 0, 0, 2], [1, 2, 3, 4, 10])):
        alone = [tuple(rng.standard_normal((32, p.n_head_kv, p.head_dim)).astype(np.float16) for _ in "kv") for _ in range(3)]
        batched = [(k.copy(), v.copy()) for k, v in alone]
        seq_a, pos_a = np.array(seq, np.int32), np.array(pos, np.int64)
        want = x[rows]
        for s in set(seq):
            r = np.flatnonzero(seq_a == s)
            part = np.ascontiguousarray(want[r])
            layer.forward(part, int(pos_a[r[0]]), *alone[s])
            want[r] = part
        got = x[rows]
        layer.forward_batch(got, seq_a, pos_a, [k for k, _ in batched], [v for _, v in batched])
        assert np.array_equal(bits(want), bits(got)), (rows, float(np.abs(want - got).max()))
        for (ka, va), (kb, vb) in zip(alone, batched):
            assert np.array_equal(ka, kb) and np.array_equal(va, vb)


# ---------------------------------------------------------------- bad inputs

def _layer_and_caches(path: str):
    m = on_path(path, lambda: load_model(model_path(SMOLLM2)).model)
    c = [m.new_cache(8) for _ in range(2)]
    return m, m.layers[0], [x.k[0] for x in c], [x.v[0] for x in c]


BAD_LAYER_CALLS = {
    "x float64": (lambda L, x, s, p, k, v: L.forward_batch(x.astype(np.float64), s, p, k, v), "x must be"),
    "seq int64": (lambda L, x, s, p, k, v: L.forward_batch(x, s.astype(np.int64), p, k, v), "seq must be"),
    "pos int32": (lambda L, x, s, p, k, v: L.forward_batch(x, s, p.astype(np.int32), k, v), "pos must be"),
    "seq length": (lambda L, x, s, p, k, v: L.forward_batch(x, s[:2], p, k, v), "seq must be"),
    "seq id out of range": (lambda L, x, s, p, k, v: L.forward_batch(x, np.array([0, 0, 2], np.int32), p, k, v), "sequence id"),
    "negative seq id": (lambda L, x, s, p, k, v: L.forward_batch(x, np.array([0, 0, -1], np.int32), p, k, v), "sequence id"),
    "non-consecutive positions": (lambda L, x, s, p, k, v: L.forward_batch(x, s, np.array([0, 2, 0], np.int64), k, v), "consecutive"),
    "decreasing positions": (lambda L, x, s, p, k, v: L.forward_batch(x, s, np.array([3, 2, 0], np.int64), k, v), "consecutive"),
    "rows not contiguous": (lambda L, x, s, p, k, v: L.forward_batch(x, np.array([0, 1, 0], np.int32), np.array([0, 0, 1], np.int64), k, v), "contiguous"),
    "position past the cache": (lambda L, x, s, p, k, v: L.forward_batch(x, s, np.array([6, 7, 8], np.int64), k, v), "outside its cache"),
    "negative position": (lambda L, x, s, p, k, v: L.forward_batch(x, s, np.array([-1, 0, 0], np.int64), k, v), "outside its cache"),
    "huge position": (lambda L, x, s, p, k, v: L.forward_batch(x, s, np.array([2**62, 2**62 + 1, 0], np.int64), k, v), "outside its cache"),
    "fewer v caches": (lambda L, x, s, p, k, v: L.forward_batch(x, s, p, k, v[:1]), "same length"),
    "no caches": (lambda L, x, s, p, k, v: L.forward_batch(x, s, p, [], []), "same length"),
    "cache not an array": (lambda L, x, s, p, k, v: L.forward_batch(x, s, p, [k[0], [1, 2]], v), "sequence 1"),
    "cache dtypes differ": (lambda L, x, s, p, k, v: L.forward_batch(x, s, p, [k[0], k[1].astype(np.float32)], [v[0], v[1].astype(np.float32)]), "same type"),
    "k and v dtypes differ": (lambda L, x, s, p, k, v: L.forward_batch(x, s, p, [k[0], k[1].astype(np.float32)], v), "float16"),
    "cache shape": (lambda L, x, s, p, k, v: L.forward_batch(x, s, p, [k[0], k[1][:, :1]], [v[0], v[1][:, :1]]), "sequence 1"),
    "read-only cache": (lambda L, x, s, p, k, v: L.forward_batch(x, s, p, [k[0], _readonly(k[1])], v), "sequence 1"),
    "shared cache": (lambda L, x, s, p, k, v: L.forward_batch(x, s, p, [k[0], k[0]], [v[0], v[1]]), "own cache"),
    "overlapping caches": (lambda L, x, s, p, k, v: L.forward_batch(x, s, p, *_overlapping(k[0])), "own cache"),
    "k is v": (lambda L, x, s, p, k, v: L.forward_batch(x, s, p, k, [v[0], k[1]]), "sequence 1: k_cache and v_cache overlap"),
}


def _overlapping(k: np.ndarray) -> tuple[list, list]:
    """Two sequences' K and V cut from one buffer, sequence 1's K overlapping sequence 0's by one position."""
    n = len(k)
    buf = np.zeros((4 * n,) + k.shape[1:], k.dtype)
    return [buf[:n], buf[n - 1 : 2 * n - 1]], [buf[3 * n :], buf[2 * n : 3 * n]]


def _readonly(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("path", ["scalar", "numba"])
@pytest.mark.parametrize("case", list(BAD_LAYER_CALLS))
def test_layer_forward_batch_refuses_bad_inputs(path, case):
    m, layer, k, v = _layer_and_caches(path)
    x = m.embed(np.array([1, 2, 3]))
    seq, pos = np.array([0, 0, 1], np.int32), np.array([0, 1, 0], np.int64)
    call, match = BAD_LAYER_CALLS[case]
    before = [a.copy() for a in k + v]
    with pytest.raises(ValueError, match=match):
        on_path(path, partial(call, layer, x, seq, pos, k, v))
    assert all(np.array_equal(a, b) for a, b in zip(before, k + v))  # refused before anything is written
    on_path(path, partial(layer.forward_batch, x, seq, pos, k, v))  # the good call still runs


def test_transformer_forward_batch_refuses_bad_inputs():
    m, _ = model(SMOLLM2)
    a, b = m.new_cache(8), m.new_cache(8)
    m.forward([1, 2, 3, 4, 5, 6], a)
    for tokens, seq, caches, err, match in (
        ([1, 2, 3, 4], [0, 0, 0, 1], [a, b], ContextFullError, "sequence 0"),  # 6 + 3 > 8
        ([1, 2], [0, 1], [], ValueError, "at least one"),
        ([], [], [a, b], ValueError, "at least one"),
        ([1, 2], [0], [a, b], ValueError, "entries"),
        ([1, m.config.n_vocab], [0, 1], [a, b], ValueError, "token ids"),
        ([1, -1], [0, 1], [a, b], ValueError, "token ids"),
        ([1, 2], [0, 2], [a, b], ValueError, "sequence ids"),
        ([1, 2, 3], [0, 1, 0], [a, b], ValueError, "contiguous"),
        ([1, 2], [1, 1], [a, b], ValueError, "at least one token"),
        ([1, 2], [0, 1], [b, b], ValueError, "twice"),
        ([1, 2], [0, 1], [a, m.new_cache(8, "f32")], ValueError, "does not fit"),
    ):
        with pytest.raises(err, match=match):
            m.forward_batch(tokens, seq, caches)
    assert (a.n_tokens, b.n_tokens) == (6, 0)  # a refused batch changes nothing
    assert m.forward_batch([1, 2, 3], [0, 0, 1], [a, b]).shape == (2, m.config.n_vocab)
    assert (a.n_tokens, b.n_tokens) == (8, 1)
    with pytest.raises(ContextFullError):
        m.forward_batch([1, 2], [0, 1], [a, b])


# ---------------------------------------------------------------- numba backend

@pytest.mark.parametrize("name", MODELS)
def test_numba_forward_batch_bit_identical_to_native_scalar(name):
    """PyLayer.forward_batch states layer_forward_batch as PyLayer.forward
    states layer_forward: the same logits and caches bit for bit, for a
    decode batch, a prompt chunk batched with decode tokens (the gathered
    last rows) and an F32 cache (llama2.c's attention)."""

    def run():
        m = load_model(model_path(name)).model
        out = []
        for dtype in ("f16", "f32"):
            caches = [m.new_cache(48, dtype) for _ in range(3)]
            for c, n in zip(caches, (3, 11, 6)):
                m.forward(list(range(100, 100 + n)), c)
            out.append(m.forward_batch([5, 6, 7], [0, 1, 2], caches))
            out.append(m.forward_batch([8, 9, 10, 11, 12, 13], [0, 1, 1, 1, 1, 2], caches))
            out += [kv[: c.n_tokens] for c in caches for kv in c.k + c.v]
        return out

    want, got = on_path("scalar", run), on_path("numba", run)
    for i, (a, b) in enumerate(zip(want, got)):
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8)), (i, float(np.abs(a.astype(np.float32) - b.astype(np.float32)).max()))
