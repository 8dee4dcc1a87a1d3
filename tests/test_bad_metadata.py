"""Model files with bad metadata: one line on stderr naming the file and what
is wrong, exit status 1, never a traceback; values llama.cpp accepts with a
default (an out-of-range special token id) load with a warning that says so."""
from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from models import SMOLLM2, TESTS_DIR, model_path

from llamalocal import Error, load_model
from llamalocal.convert import open_checkpoint
from llamalocal.formats import GGMLType
from llamalocal.io.gguf_metadata import MetaValue
from llamalocal.io.gguf_writer import TensorSpec, write_gguf

STORIES = "stories260K.gguf"


def cli(*args: str) -> subprocess.CompletedProcess:
    # from the tests folder, so that the installed package is run, not the source tree beside it
    return subprocess.run([sys.executable, "-m", "llamalocal.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=TESTS_DIR)


def rewritten(src: Path, dst: Path, change) -> Path:
    """src (an F32 file) written again with change(metadata) applied."""
    with open_checkpoint(src) as ck:
        meta = dict(ck.metadata)
        change(meta)
        specs = [TensorSpec(t.name, GGMLType[t.source_type], t.shape) for t in ck.tensors]
        write_gguf(dst, ck.arch, meta, specs, lambda i: ck.tensors[i].load())
    return dst


def patched_value(src: Path, dst: Path, key: str, value: bytes) -> Path:
    """src with the value of metadata `key` overwritten in place (same size)."""
    field = gguf.GGUFReader(src).fields[key]
    at = field.offset + 8 + len(key.encode()) + 4  # key length, key, value type
    if field.types[0] == gguf.GGUFValueType.STRING:
        at += 8  # the string's length
    raw = bytearray(src.read_bytes())
    raw[at : at + len(value)] = value
    dst.write_bytes(bytes(raw))
    return dst


def assert_one_line_error(path: Path, *words: str) -> str:
    with pytest.raises(Error) as e:
        load_model(path)
    assert path.name in str(e.value)
    r = cli("generate", str(path), "-p", "x", "-n", "1")
    err = r.stderr.strip()
    assert r.returncode == 1, err
    assert err.startswith("Error:") and "\n" not in err and "Traceback" not in err, err
    assert path.name in err, err
    for w in words:
        assert w in err, err
    return err


def test_token_type_shorter_than_the_vocabulary(tmp_path):
    def drop_one(meta):
        mv = meta["tokenizer.ggml.token_type"]
        meta["tokenizer.ggml.token_type"] = MetaValue(list(mv.value)[:-1], mv.type, mv.sub_type)

    bad = rewritten(model_path(STORIES), tmp_path / "short_token_type.gguf", drop_one)
    assert_one_line_error(bad, "token_type", "511 entries for 512 tokens")


def test_unknown_pre_tokenizer_is_refused(tmp_path):
    """llama.cpp refuses it too: another pre-tokenizer would silently give other ids."""
    bad = patched_value(model_path(SMOLLM2), tmp_path / "unknown_pre.gguf", "tokenizer.ggml.pre", b"smollx")
    assert_one_line_error(bad, "pre-tokenizer", "smollx")


def test_inconsistent_head_counts(tmp_path):
    bad = patched_value(model_path(STORIES), tmp_path / "heads.gguf", "llama.attention.head_count_kv", struct.pack("<I", 3))
    assert_one_line_error(bad, "head_count 8", "head_count_kv 3")


def test_zero_layers(tmp_path):
    bad = patched_value(model_path(STORIES), tmp_path / "no_layers.gguf", "llama.block_count", struct.pack("<I", 0))
    assert_one_line_error(bad, "block_count")


def test_out_of_range_bos_id_loads_with_a_warning(tmp_path):
    """llama.cpp logs "bad special token" and uses the default id; so do we, on stderr."""
    bad = patched_value(model_path(STORIES), tmp_path / "bos.gguf", "tokenizer.ggml.bos_token_id", struct.pack("<I", 10**9))
    lm = load_model(bad)
    assert lm.tokenizer.bos_id == 1  # SPM's default
    assert any("bos_token_id" in w and str(10**9) in w and bad.name in w for w in lm.warnings), lm.warnings
    r = cli("generate", str(bad), "-p", "Once", "-n", "2", "--temp", "0")
    assert r.returncode == 0, r.stderr
    assert f"warning: {bad.name}: 'tokenizer.ggml.bos_token_id' = {10**9}" in r.stderr


def test_embedding_smaller_than_the_vocabulary(tmp_path):
    def more_tokens(meta):
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
            mv = meta[key]
            extra = {"tokenizer.ggml.tokens": ["<extra>"], "tokenizer.ggml.scores": [0.0], "tokenizer.ggml.token_type": [1]}
            meta[key] = MetaValue(list(mv.value) + extra[key], mv.type, mv.sub_type)

    bad = rewritten(model_path(STORIES), tmp_path / "big_vocab.gguf", more_tokens)
    assert_one_line_error(bad, "513 tokens", "512")


def test_missing_model_and_bad_arguments_are_one_line():
    r = cli("generate", "no/such/model.gguf", "-p", "x")
    assert r.returncode != 0 and "Traceback" not in r.stderr and "no/such/model.gguf" in r.stderr
    r = cli("generate", str(model_path(STORIES)), "-p", "x", "--top-p", "1.5")
    assert r.returncode == 1 and r.stderr.strip().startswith("Error:") and "top_p" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
