"""Pre-GGUF llama.cpp files (io/legacy_ggml.py) against the files and runs of
../shared/legacy, written by the llama.cpp of each era (expected.json).

The ggmf v1 and ggjt v1/v2 formats have no file there: the tests write them
from the f32 model following the documented layouts, as they write split
(multi-part) checkpoints (x.bin, x.bin.1, ...) and ggjt v1's Q4_2 blocks.  The
raw bytes are read here with a parser of their own, independent of the loader.
"""
from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llamalocal.errors import ModelFormatError
from llamalocal.formats import GGMLType
from llamalocal.formats.quants import dequantize
from llamalocal.generation import generate_tokens
from llamalocal.io.gguf_reader import GGUFFile
from llamalocal.io.legacy_ggml import LegacyGGMLFile
from llamalocal.model.loader import load_model
from models import TESTS_DIR, legacy_path

EPS = {"hardcoded_1e-6": 1e-6, "default_5e-6": 5e-6, "1e-5": 1e-5}
NAMES = {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
         "output.weight": "output.weight", "attention.wq.weight": "attn_q.weight", "attention.wk.weight": "attn_k.weight",
         "attention.wv.weight": "attn_v.weight", "attention.wo.weight": "attn_output.weight",
         "attention_norm.weight": "attn_norm.weight", "ffn_norm.weight": "ffn_norm.weight",
         "feed_forward.w1.weight": "ffn_gate.weight", "feed_forward.w2.weight": "ffn_down.weight",
         "feed_forward.w3.weight": "ffn_up.weight"}
Q4_0, Q4_1, Q4_2, Q5_0, Q5_1, Q8_0 = 2, 3, 4, 6, 7, 8
MAGICS = {b"lmgg": "ggml", b"fmgg": "ggmf", b"tjgg": "ggjt"}
# Near ties: how far below our top logit the token that era's llama.cpp chose may be where the two part.
NEAR_TIE = 0.25


def gguf_name(name: str) -> str:
    if name.startswith("layers."):
        _, i, rest = name.split(".", 2)
        return f"blk.{i}.{NAMES[rest]}"
    return NAMES[name]


def expected(folder: str) -> dict:
    return json.loads((legacy_path(folder) / "expected.json").read_text(encoding="utf-8"))


# -- the documented layouts, read and written here ------------------------------------------------------

def block_bytes(type_id: int, f32_scales: bool) -> int:
    return {Q4_0: 20 if f32_scales else 18, Q4_1: 24 if f32_scales else 20, Q5_0: 22, Q5_1: 24,
            Q8_0: 36 if f32_scales else 34}[type_id]


def walk(path: Path) -> dict:
    """The whole file by the layouts of expected.json: header, vocabulary, tensors (raw data bytes)."""
    buf = path.read_bytes()
    magic = MAGICS[buf[:4]]
    pos = 4
    version = None
    if magic != "ggml":
        (version,) = struct.unpack_from("<I", buf, pos)
        pos += 4
    hp = dict(zip(("n_vocab", "n_embd", "n_mult", "n_head", "n_layer", "n_rot", "ftype"),
                  struct.unpack_from("<7i", buf, pos)))
    pos += 28
    vocab = []
    for _ in range(hp["n_vocab"]):
        (n,) = struct.unpack_from("<I", buf, pos)
        text = buf[pos + 4:pos + 4 + n]
        pos += 4 + n
        score = None
        if magic != "ggml":
            (score,) = struct.unpack_from("<f", buf, pos)
            pos += 4
        vocab.append((text, score))
    f32_scales = not (magic == "ggjt" and version == 3)
    tensors = []
    while pos < len(buf):
        n_dims, name_len, type_id = struct.unpack_from("<3i", buf, pos)
        ne = list(struct.unpack_from(f"<{n_dims}i", buf, pos + 12))
        pos += 12 + 4 * n_dims
        name = buf[pos:pos + name_len].decode()
        pos += name_len
        if magic == "ggjt":
            pos += -pos % 32
        n = int(np.prod(ne))
        nbytes = n * (4, 2)[type_id] if type_id < 2 else n // 32 * block_bytes(type_id, f32_scales)
        tensors.append((name, ne, type_id, buf[pos:pos + nbytes]))
        pos += nbytes
    assert pos == len(buf)
    return {"magic": magic, "version": version, "hparams": hp, "vocab": vocab, "tensors": tensors}


def write_legacy(path: Path, magic: str, version: int | None, hp: dict, vocab: list, tensors: list) -> Path:
    out = bytearray({v: k for k, v in MAGICS.items()}[magic])
    if version is not None:
        out += struct.pack("<I", version)
    out += struct.pack("<7i", *(hp[k] for k in ("n_vocab", "n_embd", "n_mult", "n_head", "n_layer", "n_rot", "ftype")))
    for text, score in vocab:
        out += struct.pack("<I", len(text)) + text + (b"" if magic == "ggml" else struct.pack("<f", score))
    for name, ne, type_id, data in tensors:
        out += struct.pack(f"<3i{len(ne)}i", len(ne), len(name), type_id, *ne) + name.encode()
        if magic == "ggjt":
            out += bytes(-len(out) % 32)
        out += data
    path.write_bytes(bytes(out))
    return path


def pack4(q: np.ndarray, pairs: bool) -> np.ndarray:
    """(nb, 32) values 0..15 -> 16 bytes a block: pairs (2j, 2j+1) or split halves (j, j+16)."""
    lo, hi = (q[:, 0::2], q[:, 1::2]) if pairs else (q[:, :16], q[:, 16:])
    return (lo | (hi << 4)).astype(np.uint8)


def unpack4(qs: np.ndarray, pairs: bool) -> np.ndarray:
    lo, hi = qs & 15, qs >> 4
    if pairs:
        return np.stack((lo, hi), axis=-1).reshape(len(qs), 32)
    return np.concatenate((lo, hi), axis=1)


def encode(x: np.ndarray, type_id: int, f32_scales: bool, pairs: bool) -> tuple[bytes, np.ndarray]:
    """A tensor in an old block layout, and the values today's blocks must give for it (f16 scales)."""
    b = x.reshape(-1, 32).astype(np.float32)
    lo, hi, amax = b.min(1), b.max(1), np.abs(b).max(1)

    def div(a, d):
        return np.divide(a, d[:, None], out=np.zeros_like(a), where=d[:, None] != 0)

    if type_id in (Q4_0, Q5_0, Q8_0):
        top = {Q4_0: 7, Q5_0: 15, Q8_0: 127}[type_id]
        off = {Q4_0: 8, Q5_0: 16, Q8_0: 0}[type_id]
        d = (amax / top).astype(np.float32)
        q = np.clip(np.round(div(b, d)), -top, top).astype(np.int64) + off
        scales = [d]
    else:
        top = {Q4_1: 15, Q5_1: 31}[type_id]
        off = 0
        d = ((hi - lo) / top).astype(np.float32)
        q = np.clip(np.round(div(b - lo[:, None], d)), 0, top).astype(np.int64)
        scales = [d, lo.astype(np.float32)]
    sdt = "<f4" if f32_scales and type_id in (Q4_0, Q4_1, Q8_0) else "<f2"
    parts = [s.astype(sdt).reshape(-1, 1).view(np.uint8) for s in scales]
    if type_id in (Q5_0, Q5_1):
        qh = ((q >> 4) & 1).astype(np.uint64) << np.arange(32, dtype=np.uint64)
        parts.append(qh.sum(1).astype("<u4").reshape(-1, 1).view(np.uint8))
    parts.append(q.astype(np.int8).view(np.uint8) if type_id == Q8_0 else pack4((q & 15).astype(np.uint8), pairs))
    d16 = [s.astype("<f2").astype(np.float32) for s in scales]
    qf = (q - off).astype(np.float32)
    want = qf * d16[0][:, None] if len(d16) == 1 else qf * d16[0][:, None] + d16[1][:, None]
    return np.concatenate(parts, axis=1).tobytes(), want.reshape(-1)


# -- helpers ---------------------------------------------------------------------------------------

def greedy(lm, prompt_ids, kv: str, n: int = 64) -> list[int]:
    cache = lm.model.new_cache(256, kv)
    return list(generate_tokens(lm.model, prompt_ids, lambda logits, _: int(np.argmax(logits)), n, cache,
                                frozenset({2})))


def float_runs():
    for folder in ("ggml-unversioned", "ggjt-v3"):
        for r in expected(folder)["runs"]:
            if (legacy_path(folder) / r["model"]).is_file() and r["model"].split(".")[-2] in ("f32", "f16"):
                yield folder, r


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llamalocal.cli", *args], check=False, capture_output=True, text=True, timeout=300,
                          cwd=TESTS_DIR)


@pytest.fixture(scope="module")
def f32_model() -> dict:
    return walk(legacy_path("ggml-unversioned/stories260K-mha.f32.bin"))


# -- every file of ../shared/legacy ----------------------------------------------------------------

@pytest.mark.parametrize("folder", ["ggml-unversioned", "ggjt-v3"])
def test_every_file_loads_as_its_expected_json_describes(folder):
    files = {e["file"]: e for e in expected(folder)["files"]}
    present = sorted(p.name for p in legacy_path(folder).glob("*.bin"))
    assert present and set(present) <= set(files)
    for name in present:
        e = files[name]
        lm = load_model(legacy_path(folder) / name)
        f = lm._file
        assert f.hparams == e["hparams"] and f.version == e["version"] and f.format_name.startswith(e["magic"])
        assert lm.model.config.n_ff == e["n_ff"] == 192 and lm.model.config.n_vocab == 512
        assert lm.model.config.norm_eps == (5e-6 if e["version"] == 3 else 1e-6)
        assert len(f.tensors) == sum(e["tensor_type_counts"].values())
        counts = {}
        for t in f.tensors.values():
            counts[t.type.name.lower()] = counts.get(t.type.name.lower(), 0) + 1
        assert counts == e["tensor_type_counts"]
        for i, text, _ in e["vocab_sample"]:  # the pieces as the file stores them, restored to SentencePiece's
            piece = lm.tokenizer.id_to_piece(i)
            assert piece in ("<unk>", "<s>", "</s>", text.replace(" ", "\u2581")) or \
                (text.startswith(("\\x", "\x00")) and piece.startswith("<0x"))
        # f32 block scales rounded to f16 are reported, once
        assert len(lm.warnings) == (1 if folder == "ggml-unversioned" and ".q4_" in name else 0)


@pytest.mark.parametrize("folder,run", list(float_runs()),
                         ids=lambda v: v if isinstance(v, str) else f"{v['model']}-{v['kv_cache']}-{v['rms_eps_setting']}-{v['prompt'][:4]}")
def test_float_files_reproduce_the_eras_greedy_tokens(folder, run):
    lm = load_model(legacy_path(folder) / run["model"], rms_norm_eps=EPS[run["rms_eps_setting"]])
    assert lm.model.config.norm_eps == EPS[run["rms_eps_setting"]]
    if run["prompt"]:  # an empty prompt was [BOS, ' '] in that era: taken from the run as it is
        assert lm.tokenizer.encode(run["prompt"]) == run["prompt_tokens"]
    assert greedy(lm, run["prompt_tokens"], run["kv_cache"]) == run["generated_token_ids"]


def test_ggjt_v3_quantized_files_follow_the_eras_greedy_tokens_up_to_near_ties():
    """That era's activations were quantized to Q8_0 / Q8_1 with f32 scales (today's Q8_1 stores f16); where
    the greedy paths part, the token it chose must be a near tie of ours, and the path before it equal."""
    folder, lms, parted, whole = "ggjt-v3", {}, [], 0
    for r in expected(folder)["runs"]:
        if not (legacy_path(folder) / r["model"]).is_file() or r["model"].split(".")[-2] in ("f32", "f16"):
            continue
        key = (r["model"], r["rms_eps_setting"])
        if key not in lms:
            lms[key] = load_model(legacy_path(folder) / r["model"], rms_norm_eps=EPS[r["rms_eps_setting"]])
        model = lms[key].model
        cache = model.new_cache(256, r["kv_cache"])
        logits = model.forward(r["prompt_tokens"], cache)
        for i, want in enumerate(r["generated_token_ids"]):
            ours = int(np.argmax(logits))
            if ours != want:
                parted.append((r["model"], r["kv_cache"], r["rms_eps_setting"], r["prompt"], i,
                               float(logits[ours] - logits[want])))
                break
            logits = model.forward([want], cache)
        else:
            whole += 1
    assert whole + len(parted) == 60
    for model, kv, eps, prompt, i, margin in parted:
        assert i >= 8 and margin < NEAR_TIE, (model, kv, eps, prompt, i, margin)
    assert whole >= 20, parted


@pytest.mark.parametrize("name", ["stories260K-mha.q4_0.bin", "stories260K-mha.q4_1.bin"])
def test_unversioned_quantized_blocks_dequantize_exactly(name):
    """Each block read by the era's layout (f32 d [, f32 m], nibble pairs) equals today's block after the load,
    f16-rounded scales aside; and lies within half a step of the f32 model's weights."""
    raw = walk(legacy_path(f"ggml-unversioned/{name}"))
    ref = GGUFFile(legacy_path("stories260K-mha.f32.gguf"))
    f = LegacyGGMLFile(legacy_path(f"ggml-unversioned/{name}"))
    n_quant = 0
    for src, ne, type_id, data in raw["tensors"]:
        t = f.tensors[gguf_name(src)]
        loaded = dequantize(f.tensor_bytes(t.name), t.type).reshape(-1)
        w = ref.tensor_array(t.name).reshape(-1)
        if type_id == 0:
            assert np.array_equal(loaded, np.frombuffer(data, "<f4")) and np.array_equal(loaded, w)
            continue
        n_quant += 1
        ns = 1 if type_id == Q4_0 else 2
        blocks = np.frombuffer(data, np.uint8).reshape(-1, 4 * ns + 16)
        sc = blocks[:, :4 * ns].copy().view("<f4")
        q = unpack4(blocks[:, 4 * ns:], pairs=True).astype(np.float32)
        d, d16 = sc[:, :1], sc[:, :1].astype("<f2").astype(np.float32)
        if type_id == Q4_0:
            era, today = (q - 8) * d, (q - 8) * d16
        else:
            m, m16 = sc[:, 1:], sc[:, 1:].astype("<f2").astype(np.float32)
            era, today = q * d + m, q * d16 + m16
        assert np.array_equal(loaded, today.reshape(-1)), t.name
        # in exact arithmetic, rounding the scales to f16 is the only change
        qd = (q - 8 * (type_id == Q4_0)).astype(np.float64)
        shift = qd * (d16.astype(np.float64) - d)
        if type_id == Q4_1:
            shift += m16.astype(np.float64) - m
        assert np.all(np.abs(today - era - shift) <= (np.abs(qd * d) + np.abs(era)) * 2.0**-22), t.name
        step_err = np.abs(w.reshape(-1, 32) - era) - d / 2
        assert step_err.max() <= 1e-6, (t.name, step_err.max())
    assert n_quant == 37


# -- ggmf v1, ggjt v1, ggjt v2: files written here ---------------------------------------------------

ERAS = {("ggmf", 1): (True, True, (Q4_0, Q4_1)), ("ggjt", 1): (True, True, (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)),
        ("ggjt", 2): (True, False, (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)), ("ggjt", 3): (False, False, (Q4_0, Q8_0))}


def _vocab_with_scores(f32_model):
    scores = [s for _, s in walk(legacy_path("ggjt-v3/stories260K-mha.q8_0.bin"))["vocab"]]
    return [(text, s) for (text, _), s in zip(f32_model["vocab"], scores)]


@pytest.mark.parametrize("era", list(ERAS), ids=lambda e: f"{e[0]}v{e[1]}")
def test_written_files_of_each_format(era, f32_model, tmp_path):
    magic, version = era
    f32_scales, pairs, types = ERAS[era]
    vocab = _vocab_with_scores(f32_model)
    path = write_legacy(tmp_path / "m.bin", magic, version, f32_model["hparams"], vocab, f32_model["tensors"])
    lm = load_model(path)
    assert lm.model.config.norm_eps == (5e-6 if version == 3 else 1e-6)
    for r in expected("ggml-unversioned")["runs"]:
        if r["model"] == "stories260K-mha.f32.bin":
            if r["prompt"]:
                assert lm.tokenizer.encode(r["prompt"]) == r["prompt_tokens"]
            assert greedy(lm, r["prompt_tokens"], "f32") == r["generated_token_ids"]
    for type_id in types:
        tensors, want = [], {}
        for name, ne, t, data in f32_model["tensors"]:
            if len(ne) == 2:
                data, want[gguf_name(name)] = encode(np.frombuffer(data, "<f4"), type_id, f32_scales, pairs)
                t = type_id
            tensors.append((name, ne, t, data))
        hp = dict(f32_model["hparams"], ftype=type_id)
        f = LegacyGGMLFile(write_legacy(tmp_path / f"q{type_id}.bin", magic, version, hp, vocab, tensors))
        assert len(f.warnings) == (1 if f32_scales and type_id in (Q4_0, Q4_1, Q8_0) else 0)
        for name, values in want.items():
            t = f.tensors[name]
            assert t.type == type_id
            assert np.array_equal(dequantize(f.tensor_bytes(name), t.type).reshape(-1), values), (era, type_id, name)


def test_formats_refuse_types_they_never_had(f32_model, tmp_path):
    vocab = _vocab_with_scores(f32_model)
    (name, ne, _, data), rest = f32_model["tensors"][0], f32_model["tensors"][1:]
    q42 = [(name, ne, Q4_2, data[:len(data) // 64 * 10])] + rest  # Q4_2: blocks of 16, f16 d + 8 bytes
    with pytest.raises(ModelFormatError, match=r"type id 4 \(Q4_2\), not one a ggjt v2 file holds"):
        LegacyGGMLFile(write_legacy(tmp_path / "v2.bin", "ggjt", 2, f32_model["hparams"], vocab, q42))
    q80 = [(name, ne, Q8_0, data[:len(data) // 32 * 36])] + rest
    with pytest.raises(ModelFormatError, match="type id 8 .Q8_0.*ggmf v1"):
        LegacyGGMLFile(write_legacy(tmp_path / "mf.bin", "ggmf", 1, f32_model["hparams"], vocab, q80))
    with pytest.raises(ModelFormatError, match="unknown 'ggjt' format version 4"):
        LegacyGGMLFile(write_legacy(tmp_path / "v4.bin", "ggjt", 4, f32_model["hparams"], vocab, rest))


def encode_q4_2(x: np.ndarray) -> tuple[bytes, np.ndarray]:
    """ggjt v1's Q4_2 (blocks of 16: f16 d = amax/7, q = round(x/d) + 8 in 0..15, nibble pairs), and the values
    d*(q-8) it stands for (float64, exact)."""
    b = x.reshape(-1, 16).astype(np.float32)
    d = (np.abs(b).max(1) / 7).astype("<f2")
    d32 = d.astype(np.float32)[:, None]
    q = np.clip(np.round(np.divide(b, d32, out=np.zeros_like(b), where=d32 != 0)) + 8, 0, 15).astype(np.uint8)
    blocks = np.concatenate([d.reshape(-1, 1).view(np.uint8), q[:, 0::2] | (q[:, 1::2] << 4)], axis=1)
    return blocks.tobytes(), ((q.astype(np.float64) - 8) * d32.astype(np.float64)).reshape(-1)


def test_ggjt_v1_q4_2_reads_as_its_exact_values(f32_model, tmp_path):
    """Q4_2 has no exact image among today's block formats: its values are kept exactly, in F16 when every one
    of a tensor's is exact there, else in F32; the size cost is reported once."""
    rng = np.random.default_rng(0)
    tensors, want = [], {}
    for name, ne, t, data in f32_model["tensors"]:
        if len(ne) == 2:
            x = np.frombuffer(data, "<f4")
            if name == "layers.0.attention.wq.weight":  # d = 2^-6 in every block: values k * 2^-6, exact in f16
                k = rng.integers(-7, 8, size=(x.size // 16, 16)).astype(np.float32)
                k[:, 0] = 7
                x = (k * 2.0**-6).reshape(-1)
            data, want[gguf_name(name)] = encode_q4_2(x)
            t = Q4_2
        tensors.append((name, ne, t, data))
    hp = dict(f32_model["hparams"], ftype=5)  # LLAMA_FTYPE_MOSTLY_Q4_2
    path = write_legacy(tmp_path / "q4_2.bin", "ggjt", 1, hp, _vocab_with_scores(f32_model), tensors)
    f = LegacyGGMLFile(path)
    types = {n: f.tensors[n].type for n in want}
    assert types.pop("blk.0.attn_q.weight") == GGMLType.F16 and set(types.values()) == {GGMLType.F32}
    for name, values in want.items():
        assert np.array_equal(f.tensor_array(name, dequantize=True).reshape(-1).astype(np.float64), values), name
    src, dst = sum(len(d) for _, _, t, d in tensors if t == Q4_2), sum(f.tensors[n].n_bytes for n in want)
    note = (f"q4_2.bin: {len(want)} Q4_2 tensors (blocks of 16, which no format of today holds exactly) converted "
            f"to their exact values, 1 as F16 and {len(want) - 1} as F32: {src / 2**20:.1f} MiB became "
            f"{dst / 2**20:.1f} MiB")
    assert f.warnings == [note]
    lm = load_model(path)
    assert np.all(np.isfinite(lm.model.forward([1, 45, 217], lm.model.new_cache(16, "f32"))))
    bad = bytearray(path.read_bytes())
    first = f.tensors["token_embd.weight"].offset
    bad[first:first + 2] = b"\x00\x7c"  # an infinite d
    (tmp_path / "inf.bin").write_bytes(bytes(bad))
    with pytest.raises(ModelFormatError, match=r"inf\.bin: tensor 'tok_embeddings.weight' \(Q4_2\): a block scale "
                                               r"is not finite"):
        LegacyGGMLFile(tmp_path / "inf.bin")


# -- split (multi-part) checkpoints: x.bin, x.bin.1, ... -------------------------------------------------

def split_parts(tensors: list, n: int) -> list[list]:
    """A whole model's tensors (walk()'s records) as the n parts of a split checkpoint hold them: 1-D tensors
    whole in each; tok_embeddings, wo and w2 split by columns (a slice of every row's bytes); the rest by rows."""
    parts = [[] for _ in range(n)]
    for name, ne, type_id, data in tensors:
        if len(ne) == 1:
            for p in parts:
                p.append((name, ne, type_id, data))
            continue
        rows = np.frombuffer(data, np.uint8).reshape(ne[1], -1)
        by_columns = name.startswith("tok_embeddings.") or name.endswith(("attention.wo.weight",
                                                                            "feed_forward.w2.weight"))
        for i, p in enumerate(parts):
            if by_columns:
                w = rows.shape[1] // n
                p.append((name, [ne[0] // n, ne[1]], type_id, rows[:, i * w:(i + 1) * w].tobytes()))
            else:
                h = ne[1] // n
                p.append((name, [ne[0], h], type_id, rows[i * h:(i + 1) * h].tobytes()))
    return parts


def write_split(folder: Path, magic: str, version: int | None, hp: dict, vocab: list, tensors: list, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    first = folder / "x.bin"
    for i, part in enumerate(split_parts(tensors, n)):
        write_legacy(Path(f"{first}.{i}") if i else first, magic, version, hp, vocab, part)
    return first


def _whole(kind: str, magic: str, version: int | None, f32_model, folder: Path):
    """A one-part file of stories260K in `kind` (ggml-unversioned's own file, or its tensors in a ggmf file)."""
    m = walk(legacy_path(f"ggml-unversioned/stories260K-mha.{kind}.bin"))
    vocab = m["vocab"] if magic == "ggml" else _vocab_with_scores(f32_model)
    folder.mkdir(parents=True, exist_ok=True)
    return write_legacy(folder / "x.bin", magic, version, m["hparams"], vocab, m["tensors"]), m, vocab


SPLITS = [("ggml", None, kind, n) for kind, n in (("f32", 2), ("f32", 4), ("f16", 2), ("f16", 4), ("q4_0", 2),
                                                  ("q4_1", 2))]
SPLITS += [("ggmf", 1, kind, n) for kind, n in (("f32", 2), ("f32", 4), ("q4_0", 2), ("q4_1", 2))]


@pytest.mark.parametrize("magic,version,kind,n", SPLITS, ids=lambda v: str(v))
def test_split_checkpoints_read_as_the_one_part_model(magic, version, kind, n, f32_model, tmp_path):
    one_path, m, vocab = _whole(kind, magic, version, f32_model, tmp_path / "one")
    first = write_split(tmp_path / "split", magic, version, m["hparams"], vocab, m["tensors"], n)
    assert (tmp_path / f"split/x.bin.{n - 1}").is_file() and not (tmp_path / f"split/x.bin.{n}").exists()
    one, split = LegacyGGMLFile(one_path), LegacyGGMLFile(first)
    assert split.parts == [first] + [Path(f"{first}.{i}") for i in range(1, n)]
    assert split.metadata.keys() == one.metadata.keys()
    for k, v in one.metadata.items():
        assert np.array_equal(split.metadata[k], v) if isinstance(v, np.ndarray) else split.metadata[k] == v, k
    assert list(split.tensors) == list(one.tensors)
    for name, t in one.tensors.items():
        s = split.tensors[name]
        assert (s.type, s.shape, s.n_bytes) == (t.type, t.shape, t.n_bytes), name
        got = split.tensor_bytes(name)
        assert got.flags.c_contiguous and got.shape == one.tensor_bytes(name).shape, name
        assert np.array_equal(got, one.tensor_bytes(name)), name
    # the f32-scale note (same file name) as the one-part file's, and one note of the assembly
    assembled = [w for w in split.warnings if "assembled in memory" in w]
    assert len(assembled) == 1 and f"{n}-part checkpoint" in assembled[0]
    assert [w for w in split.warnings if w not in assembled] == one.warnings
    split.close()
    prompt = next(r["prompt_tokens"] for r in expected("ggml-unversioned")["runs"] if r["prompt"])
    assert greedy(load_model(first), prompt, "f32") == greedy(load_model(one_path), prompt, "f32")


def test_split_f32_checkpoint_reproduces_the_eras_greedy_tokens(tmp_path):
    m = walk(legacy_path("ggml-unversioned/stories260K-mha.f32.bin"))
    first = write_split(tmp_path, "ggml", None, m["hparams"], m["vocab"], m["tensors"], 2)
    lm = load_model(first)
    runs = [r for r in expected("ggml-unversioned")["runs"]
            if (r["model"], r["kv_cache"], r["rms_eps_setting"]) == ("stories260K-mha.f32.bin", "f32", "hardcoded_1e-6")]
    assert len(runs) == 3
    for r in runs:
        assert greedy(lm, r["prompt_tokens"], "f32") == r["generated_token_ids"]


def test_whole_file_with_a_sibling_loads_as_that_eras_llama_cpp_did(tmp_path):
    """A whole file (tok_embeddings rows of n_embd) is one model however many x.bin.N lie beside it."""
    src = legacy_path("ggml-unversioned/stories260K-mha.f16.bin").read_bytes()
    (tmp_path / "x.bin").write_bytes(src)
    (tmp_path / "x.bin.1").write_bytes(src)
    lm = load_model(tmp_path / "x.bin")
    assert lm._file.parts == [tmp_path / "x.bin"]
    assert [w for w in lm.warnings if "x.bin.1 is beside it but not read: x.bin is a whole model" in w]


def _split_errors(f32_model, tmp_path: Path) -> dict[str, tuple[Path, str, str]]:
    """Broken split checkpoints: case -> (path given, file the message names, message)."""
    m = walk(legacy_path("ggml-unversioned/stories260K-mha.q4_0.bin"))
    vocab = _vocab_with_scores(f32_model)
    hp = m["hparams"]

    def split(case: str, n: int = 2, magic: str = "ggmf", version: int | None = 1) -> Path:
        return write_split(tmp_path / case, magic, version, hp, vocab, m["tensors"], n)

    cases = {}
    first = split("missing")
    Path(f"{first}.1").unlink()
    cases["missing"] = (first, "x.bin.1", "no such file: part 2 of the 2-part split checkpoint x.bin")
    first = split("truncated")
    part = Path(f"{first}.1")
    part.write_bytes(part.read_bytes()[:-100])
    cases["truncated"] = (first, "x.bin.1", "runs past the end of the file")
    first = split("truncated_header")
    part = Path(f"{first}.1")
    part.write_bytes(part.read_bytes()[:1000])
    cases["truncated_header"] = (first, "x.bin.1", "shorter than the header and vocabulary of")
    first = split("n_layer")
    part = Path(f"{first}.1")
    data = bytearray(part.read_bytes())
    data[8 + 16:8 + 20] = struct.pack("<i", 4)  # magic, version, n_vocab, n_embd, n_mult, n_head, n_layer
    part.write_bytes(bytes(data))
    cases["header"] = (first, "x.bin.1", "header differs from the first part's: n_layer = 4 here, 5 in")
    first = split("vocab")
    part = Path(f"{first}.1")
    data = bytearray(part.read_bytes())
    data[8 + 28 + 4 * 300] ^= 1  # a byte of a piece or of a score
    part.write_bytes(bytes(data))
    cases["vocab"] = (first, "x.bin.1", "vocabulary differs from the first part's")
    cases["second_part"] = (Path(f"{split('second')}.1"), "x.bin.1", "is part 2 of the split checkpoint x.bin")
    cases["block_boundary"] = (split("blocks", 4), "x.bin", "does not end at a 32-weight block boundary")
    m = f32_model
    for case in ("type", "shape"):
        first = write_split(tmp_path / case, "ggml", None, m["hparams"], m["vocab"], m["tensors"], 2)
        part1 = split_parts(m["tensors"], 2)[1]
        i = next(k for k, t in enumerate(part1) if t[0] == "layers.0.attention.wq.weight")
        name, ne, _, data = part1[i]
        if case == "type":
            part1[i] = (name, ne, 1, np.frombuffer(data, "<f4").astype("<f2").tobytes())
        else:
            part1[i] = (name, [ne[0], ne[1] // 2], 0, data[:len(data) // 2])
        write_legacy(Path(f"{first}.1"), "ggml", None, m["hparams"], m["vocab"], part1)
    cases["type"] = (tmp_path / "type/x.bin", "x.bin.1",
                     "tensor 'layers.0.attention.wq.weight' is F16 here, F32 in x.bin")
    shape = ("tensor 'blk.0.attn_q.weight' has shape [64, 16], expected [64, 32] (n_embd 64, n_ff 192 from n_mult 32, "
             "n_vocab 512; part 2 of 2, split by rows)")
    cases["shape"] = (tmp_path / "shape/x.bin", "x.bin.1", shape)
    first = write_split(tmp_path / "ggjt", "ggjt", 1, m["hparams"], vocab, m["tensors"], 2)
    cases["ggjt"] = (first, "x.bin", "ggjt v1 files never were (always written whole)")
    return cases


def test_broken_split_checkpoints_give_one_clear_error_through_the_cli(f32_model, tmp_path):
    for case, (path, named, message) in _split_errors(f32_model, tmp_path).items():
        r = cli("info", str(path))
        assert r.returncode == 1, (case, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, (case, r.stderr)
        assert message in r.stderr and f"{path.parent / named}: " in r.stderr, (case, r.stderr)
        with pytest.raises(ModelFormatError, match=re.escape(message)):
            load_model(path)


# -- corrupt files: one clear error through the CLI ----------------------------------------------------

def _corrupt(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = legacy_path("ggml-unversioned/stories260K-mha.f32.bin").read_bytes()
    first = 2916  # first tensor header (expected.json)
    cases = {
        "bad_magic": (b"lmgx" + good[4:], "magic bytes"),
        "n_vocab": (good[:4] + struct.pack("<i", 10**9) + good[8:], "n_vocab = 1000000000 is absurd"),
        "past_eof": (good[:-100], "runs past the end of the file"),
        "unknown_type": (good[:first + 8] + struct.pack("<i", 99) + good[first + 12:], "type id 99"),
        "truncated_header": (good[:20], "too small"),
        "truncated_vocab": (good[:1000], "truncated"),
    }
    out = {}
    for k, (data, message) in cases.items():
        (tmp_path / f"{k}.bin").write_bytes(data)
        out[k] = (tmp_path / f"{k}.bin", message)
    return out


def test_corrupt_files_give_one_clear_error_through_the_cli(tmp_path):
    for case, (path, message) in _corrupt(tmp_path).items():
        r = cli("info", str(path))
        assert r.returncode == 1, (case, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, (case, r.stderr)
        assert message in r.stderr and path.name in r.stderr, (case, r.stderr)
        if case != "bad_magic":  # (a bad magic is simply not a legacy file: GGUF's reader names it)
            with pytest.raises(ModelFormatError, match=message):
                load_model(path)


def test_cli_generate_and_overrides(tmp_path):
    run = next(r for r in expected("ggml-unversioned")["runs"] if r["model"].endswith("f32.bin"))
    model = tmp_path / "weights.dat"  # detection is by magic, whatever the name
    model.write_bytes(legacy_path("ggml-unversioned/stories260K-mha.f32.bin").read_bytes())
    r = cli("generate", str(model), "-p", run["prompt"], "-n", "64", "--temp", "0", "--cache-type", "f32")
    assert r.returncode == 0, r.stderr
    assert " " + run["prompt"] + r.stdout == run["stdout"]
    bad = cli("generate", str(model), "-p", "x", "-n", "4", "--temp", "0", "--rms-norm-eps", "1")
    assert bad.returncode == 0 and bad.stdout != r.stdout[:len(bad.stdout)]
    cfg = load_model(model, rms_norm_eps=2e-5, rope_freq_base=5e5).model.config
    assert cfg.norm_eps == 2e-5 and cfg.rope_base == [5e5] * 5


def test_default_chat_template_follows_the_file_name(tmp_path):
    from llamalocal.api import Model

    data = legacy_path("ggml-unversioned/stories260K-mha.q4_0.bin").read_bytes()
    (tmp_path / "ggml-alpaca-7b-q4.bin").write_bytes(data)
    text = Model(load_model(tmp_path / "ggml-alpaca-7b-q4.bin")).template.render(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert text.endswith("### Instruction:\nHi\n\n### Response:\n")
    (tmp_path / "other.bin").write_bytes(data)
    assert Model(load_model(tmp_path / "other.bin"), template="alpaca").template.family == "alpaca"


# -- conversion to GGUF ------------------------------------------------------------------------------

def test_converted_gguf_gives_the_same_greedy_tokens(tmp_path):
    runs = [r for r in expected("ggjt-v3")["runs"] if r["model"] == "stories260K-mha.f16.bin"
            and r["kv_cache"] == "f32" and r["rms_eps_setting"] == "default_5e-6"]
    cases = [("ggjt-v3/stories260K-mha.f16.bin", "F16"), ("ggjt-v3/stories260K-mha.q8_0.bin", "Q8_0"),
             ("ggml-unversioned/stories260K-mha.q4_0.bin", "Q4_0")]
    for src, type_name in cases:
        out = tmp_path / f"{type_name}.gguf"
        r = cli("quantize", str(legacy_path(src)), str(out), "--type", type_name, "-q")
        assert r.returncode == 0, r.stderr
        old, new = load_model(legacy_path(src)), load_model(out)
        with GGUFFile(out) as g:
            assert g.metadata["tokenizer.ggml.tokens"] == old.metadata["tokenizer.ggml.tokens"]
            kept = [n for n, t in g.tensors.items() if t.type == old._file.tensors[n].type]
            assert len(kept) >= 46  # Q4_0's mix puts output.weight in Q6_K
            for n in kept:  # blocks copied as they are, never re-quantized
                assert np.array_equal(g.tensor_bytes(n), old._file.tensor_bytes(n)), n
        if len(kept) < 48:
            continue
        for run in runs:
            assert greedy(new, run["prompt_tokens"], "f32") == greedy(old, run["prompt_tokens"], "f32")
            if type_name == "F16":
                assert greedy(new, run["prompt_tokens"], "f32") == run["generated_token_ids"]
    try:
        import llama_cpp
    except ImportError:
        pytest.skip("llama-cpp-python is not installed: the converted file was not loaded in llama.cpp")
    llm = llama_cpp.Llama(model_path=str(tmp_path / "F16.gguf"), n_ctx=256, n_threads=1, verbose=False)
    for run in runs:
        llm.reset()
        llm.eval(run["prompt_tokens"])
        got = []
        for _ in range(64):
            t = llm.sample(top_k=1, temp=0.0)
            if t == 2:
                break
            got.append(t)
            llm.eval([t])
        assert got == run["generated_token_ids"], run["prompt"]
