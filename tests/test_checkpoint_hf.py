"""Hugging Face checkpoints -> GGUF tensors and metadata (llamalocal.convert.hf, io.safetensors, tokenizer.to_gguf).

The HF directories are made from the GGUF test models by tests/hf_fixture.py,
so every converted tensor must equal the source GGUF's (dequantized) tensor
exactly and the vocabulary must tokenize like the source GGUF's.
"""
from __future__ import annotations

import json
import math
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from hf_fixture import (QWEN2_PRE, SMOLLM_PRE_TOKENIZER, bpe_tokenizer_files, encode, hf_permute, make_hf_llama_dir,
                        round_bf16, tiny_bpe_meta, write_safetensors_arrays, write_torch_zip)
from llamalocal.convert import open_checkpoint
from llamalocal.errors import CheckpointError
from llamalocal.convert.hf import open_hf
from llamalocal.convert.rope import hf_permute_to_gguf, llama3_rope_factors
from llamalocal.io.gguf_reader import GGUFFile
from llamalocal.io.safetensors import SafetensorsFile
from llamalocal.tokenizer import Tokenizer
from llamalocal.tokenizer.to_gguf import detect_pre
from models import SMOLLM2, model_path

TEXTS = ["Hello world", "The year 2024 had 366 days; 1234567 + 89 = ?", "emoji \U0001F999\U0001F680 ok \u00e9t\u00e9",
         "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", "  leading   spaces\n\n\ttabs",
         "I'm sure it's 'RE' we'll", "\u6211\u60f3\u5728apple\u5de5\u4f5c"]


def plain(ck) -> dict:
    return {k: v.value for k, v in ck.metadata.items()}


def same_value(a, b) -> bool:
    if isinstance(b, float):
        return np.float32(a) == np.float32(b)
    if isinstance(b, (str, bool, int)):
        return a == b
    return np.array_equal(np.asarray(a), np.asarray(b))


def check_hparams(ck, src: GGUFFile) -> None:
    arch = src.metadata["general.architecture"]
    assert ck.arch == arch and ck.metadata["general.architecture"].value == arch
    for k, v in src.metadata.items():
        if k.startswith(arch + "."):
            assert k in ck.metadata, k
            assert same_value(ck.metadata[k].value, v), (k, ck.metadata[k].value, v)
            assert int(ck.metadata[k].type) == src.value_types[k], k


def check_tokenizer(ck, src: GGUFFile) -> None:
    ours = Tokenizer.from_gguf_metadata(plain(ck))
    theirs = Tokenizer.from_gguf_metadata(src.metadata)
    for text in TEXTS:
        for special in (False, True):
            assert ours.encode(text, parse_special=special) == theirs.encode(text, parse_special=special), text
    assert ours.bos_id == theirs.bos_id and ours.eos_id == theirs.eos_id and ours.add_bos == theirs.add_bos


# -- SmolLM2: BPE vocabulary, tied embeddings, 2 shards, F32 ------------------------------------------------


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    src = model_path(SMOLLM2)
    d = make_hf_llama_dir(tmp_path_factory.mktemp("smol"), src, n_shards=2, name="SmolLM2-135M-Instruct")
    with GGUFFile(src) as g, open_checkpoint(d) as ck:
        yield d, g, ck


def test_smollm2_tensors_equal_source(smol):
    d, g, ck = smol
    assert ck.kind == "hf" and ck.warnings == []
    assert sorted(t.name for t in ck) == sorted(g.tensors)
    assert "output.weight" not in {t.name for t in ck}  # tied embeddings
    assert [t.name for t in ck][0] == "token_embd.weight"
    for t in ck:
        a = t.load()
        assert t.source_type == "F32" and a.dtype == np.float32 and a.flags.c_contiguous
        assert a.shape == t.shape == g.tensors[t.name].np_shape, t.name
        assert np.array_equal(a, g.tensor_array(t.name, dequantize=True)), t.name


def test_smollm2_metadata(smol):
    d, g, ck = smol
    check_hparams(ck, g)
    assert "general.file_type" not in ck.metadata
    assert ck.metadata["general.name"].value == "SmolLM2 135M Instruct"
    for k in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
              "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
              "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.chat_template"):
        assert same_value(ck.metadata[k].value, g.metadata[k]), k
        assert int(ck.metadata[k].type) == g.value_types[k], k
    assert ck.metadata["tokenizer.ggml.token_type"].value.dtype == np.int32


def test_smollm2_tokenizer(smol):
    d, g, ck = smol
    check_tokenizer(ck, g)


def test_permutation_matches_hf_rotate_half_rope():
    """Independent of the fixture: attention scores with HF's rotate-half rope on HF rows equal those with
    llama.cpp's interleaved rope on the converted rows."""
    rng = np.random.default_rng(0)
    n_head, hd, n_embd, pos = 3, 8, 12, 5
    w_hf = rng.standard_normal((n_head * hd, n_embd))
    x = rng.standard_normal(n_embd)
    theta = pos * 10000.0 ** (-np.arange(0, hd, 2) / hd)

    def rope_hf(q):  # transformers' apply_rotary_pos_emb, per head
        q = q.reshape(n_head, hd)
        cos, sin = np.cos(np.concatenate([theta, theta])), np.sin(np.concatenate([theta, theta]))
        rot = np.concatenate([-q[:, hd // 2:], q[:, :hd // 2]], axis=1)
        return (q * cos + rot * sin).reshape(-1)

    def rope_gguf(q):  # llama.cpp's normal rope: pairs (2i, 2i+1)
        q = q.reshape(n_head, hd // 2, 2)
        c, s = np.cos(theta), np.sin(theta)
        out = np.stack([q[..., 0] * c - q[..., 1] * s, q[..., 0] * s + q[..., 1] * c], axis=-1)
        return out.reshape(-1)

    w_gguf = hf_permute_to_gguf(w_hf, n_head)
    a, b = rope_hf(w_hf @ x), rope_gguf(w_gguf @ x)
    assert np.allclose(np.sort(a), np.sort(b)) and np.allclose(a @ a, b @ b)
    assert np.allclose(hf_permute(b.reshape(-1, 1), n_head).ravel(), a)  # same values, HF's order
    assert np.array_equal(hf_permute(w_gguf, n_head), w_hf)


# -- stories260K: SentencePiece tokenizer.model, BF16, untied --------------------------------------------


@pytest.fixture(scope="module")
def stories_bf16(tmp_path_factory):
    src = model_path("stories260K.gguf")
    d = make_hf_llama_dir(tmp_path_factory.mktemp("st"), src, dtype="BF16", spm_model=model_path("tok512.model"),
                          name="stories260K", name_or_path="stories260K")
    with GGUFFile(src) as g, open_checkpoint(d) as ck:
        yield d, g, ck


def test_stories_bf16_spm(stories_bf16):
    d, g, ck = stories_bf16
    assert sorted(t.name for t in ck) == sorted(g.tensors) and "output.weight" in g.tensors
    for t in ck:
        assert t.source_type == "BF16"
        assert np.array_equal(t.load(), round_bf16(g.tensor_array(t.name, dequantize=True))), t.name
    check_hparams(ck, g)
    m = plain(ck)
    assert m["tokenizer.ggml.model"] == "llama" and m["tokenizer.ggml.add_bos_token"] is True
    assert m["tokenizer.ggml.tokens"] == g.metadata["tokenizer.ggml.tokens"]
    check_tokenizer(ck, g)


def test_pytorch_bin_weights(tmp_path):
    src = model_path("stories260K.gguf")
    d = make_hf_llama_dir(tmp_path, src, spm_model=model_path("tok512.model"))
    with SafetensorsFile(d / "model.safetensors") as f:
        arrays = {n: f.load(n) for n in f.tensors}
    (d / "model.safetensors").unlink()
    write_torch_zip(d / "pytorch_model.bin", arrays, dtype="F16", archive="pytorch_model")
    with GGUFFile(src) as g, open_hf(d) as ck:
        for t in ck:
            assert t.source_type == "F16"
            want = g.tensor_array(t.name, dequantize=True).astype(np.float16).astype(np.float32)
            assert np.array_equal(t.load(), want), t.name
    # an explicit tokenizer path wins over the directory's files
    (d / "tokenizer.model").unlink()
    with pytest.raises(CheckpointError, match="no tokenizer"):
        open_hf(d)
    with open_hf(d, model_path("tok512.model")) as ck:
        assert len(ck.get("tokenizer.ggml.tokens")) == 512
    ck.close()  # closing twice is harmless
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        ck.tensors[0].load()  # closed: a clear error, not a crash


# -- Qwen2: biases, no permutation, tied, yarn --------------------------------------------------------------


LLAMA3_PRE = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s"
                                           "\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
     "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}


def make_qwen2_dir(tmp: Path, pre_tokenizer=QWEN2_PRE, rng_seed: int = 1, **config_extra) -> tuple[Path, dict]:
    rng = np.random.default_rng(rng_seed)
    meta = tiny_bpe_meta()
    n_vocab = len(meta["tokenizer.ggml.tokens"]) + 3  # config's vocab is padded beyond the tokenizer
    h, n_head, n_kv, ff, n_layer = 32, 4, 2, 48, 2
    hd = h // n_head
    arrays = {"model.embed_tokens.weight": rng.standard_normal((n_vocab, h)), "model.norm.weight": rng.random(h)}
    for i in range(n_layer):
        p = f"model.layers.{i}."
        arrays.update({
            p + "self_attn.q_proj.weight": rng.standard_normal((n_head * hd, h)),
            p + "self_attn.q_proj.bias": rng.standard_normal(n_head * hd),
            p + "self_attn.k_proj.weight": rng.standard_normal((n_kv * hd, h)),
            p + "self_attn.k_proj.bias": rng.standard_normal(n_kv * hd),
            p + "self_attn.v_proj.weight": rng.standard_normal((n_kv * hd, h)),
            p + "self_attn.v_proj.bias": rng.standard_normal(n_kv * hd),
            p + "self_attn.o_proj.weight": rng.standard_normal((h, n_head * hd)),
            p + "mlp.gate_proj.weight": rng.standard_normal((ff, h)), p + "mlp.up_proj.weight": rng.standard_normal((ff, h)),
            p + "mlp.down_proj.weight": rng.standard_normal((h, ff)),
            p + "input_layernorm.weight": rng.random(h), p + "post_attention_layernorm.weight": rng.random(h),
            p + "self_attn.rotary_emb.inv_freq": rng.random(hd // 2),  # old checkpoints carry it; ignored
        })
    arrays = {k: v.astype(np.float16).astype(np.float32) for k, v in arrays.items()}
    d = tmp / "Qwen2-tiny"
    d.mkdir()
    write_safetensors_arrays(d / "model.safetensors", arrays, "F16")
    config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": h, "intermediate_size": ff,
              "num_hidden_layers": n_layer, "num_attention_heads": n_head, "num_key_value_heads": n_kv,
              "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "vocab_size": n_vocab,
              "tie_word_embeddings": True, "bos_token_id": n_vocab - 7, "eos_token_id": n_vocab - 5,
              "torch_dtype": "float16", "use_sliding_window": False}
    config.update(config_extra)
    (d / "config.json").write_text(json.dumps(config), encoding="utf-8")
    bpe_tokenizer_files(d, meta, pre_tokenizer, normalizer={"type": "NFC"}, merges_as_pairs=False,
                        extra_config={"bos_token": None, "chat_template": [
                            {"name": "default", "template": "{{ messages }}"}, {"name": "tool_use", "template": "T"}]})
    return d, arrays


def test_qwen2(tmp_path):
    d, arrays = make_qwen2_dir(tmp_path, rope_scaling={"type": "yarn", "factor": 4.0,
                                                       "original_max_position_embeddings": 32768})
    with open_checkpoint(d) as ck:
        assert ck.arch == "qwen2" and ck.warnings == []
        names = {t.name for t in ck}
        assert "output.weight" not in names and "blk.1.attn_k.bias" in names and "blk.0.attn_q.bias" in names
        assert len(names) == 2 + 2 * 12
        for t in ck:
            hf = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}.get(t.name)
            if hf is None:
                _, i, part, kind = t.name.split(".")
                hf = f"model.layers.{i}." + {
                    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
                    "ffn_norm": "post_attention_layernorm"}[part] + "." + kind
            assert np.array_equal(t.load(), arrays[hf]), t.name  # no Q/K permutation for qwen2
            assert t.source_type == "F16"
        m = plain(ck)
        assert m["qwen2.attention.head_count_kv"] == 2 and m["qwen2.rope.freq_base"] == 1e6
        assert "qwen2.rope.dimension_count" not in m and "qwen2.vocab_size" not in m
        assert m["qwen2.rope.scaling.type"] == "yarn" and m["qwen2.rope.scaling.factor"] == 4.0
        assert m["qwen2.rope.scaling.original_context_length"] == 32768
        assert m["tokenizer.ggml.pre"] == "qwen2" and m["tokenizer.ggml.model"] == "gpt2"
        n_tok = len(m["tokenizer.ggml.tokens"])
        assert n_tok == 267 and m["tokenizer.ggml.tokens"][-1] == "[PAD266]" and m["tokenizer.ggml.token_type"][-1] == 5
        assert list(m["tokenizer.ggml.token_type"][260:264]) == [3, 3, 3, 4]
        assert m["tokenizer.ggml.eos_token_id"] == 262 and m["tokenizer.ggml.padding_token_id"] == 260
        assert m["tokenizer.ggml.bos_token_id"] == 260  # from config.json, as llama.cpp
        assert m["tokenizer.chat_template"] == "{{ messages }}" and m["tokenizer.chat_template.tool_use"] == "T"
        tok = Tokenizer.from_gguf_metadata(m)
        assert tok.encode("the thin", add_bos=False) == [ord("t"), 257, 256, ord("h"), 259]


@pytest.mark.parametrize("pre, want", [(QWEN2_PRE, "qwen2"), (LLAMA3_PRE, "llama-bpe"), (SMOLLM_PRE_TOKENIZER, "smollm"),
                                       ({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, "gpt-2"),
                                       ({"type": "Whitespace"}, None)])
def test_detect_pre(pre, want):
    assert detect_pre({"pre_tokenizer": pre, "normalizer": None})[0] == want


def test_unknown_pre_tokenizer_warns(tmp_path):
    d, _ = make_qwen2_dir(tmp_path, pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "WhitespaceSplit"}, {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}]})
    with open_hf(d) as ck:
        assert ck.get("tokenizer.ggml.pre") == "default"
        assert len(ck.warnings) == 1 and "pre-tokenizer" in ck.warnings[0] and "tokenizer.json" in ck.warnings[0]


def test_llama3_rope_freqs_and_linear_scaling(tmp_path):
    src = model_path("stories260K.gguf")
    d = make_hf_llama_dir(tmp_path, src, spm_model=model_path("tok512.model"))
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    (d / "config.json").write_text(json.dumps(cfg))
    with open_hf(d) as ck:
        t = ck.tensors[0]
        assert t.name == "rope_freqs.weight" and t.shape == (4,) and t.source_type == "F32"
        got = t.load()
    # Meta's apply_scaling, in float64
    freqs = 1.0 / (500000.0 ** (np.arange(0, 8, 2) / 8))
    want = []
    for f in freqs:
        wl = 2 * math.pi / f
        if wl < 8192 / 4:
            want.append(1.0)
        elif wl > 8192 / 1:
            want.append(8.0)
        else:
            s = (8192 / wl - 1) / (4 - 1)
            want.append(1 / ((1 - s) / 8 + s))
    assert got.dtype == np.float32 and np.allclose(got, want, rtol=1e-5)
    assert got[0] == 1.0 and got[-1] == 8.0
    assert np.allclose(llama3_rope_factors(500000.0, 128, 8.0, 1.0, 4.0, 8192)[[0, 63]], [1.0, 8.0])

    cfg["rope_scaling"] = {"type": "linear", "factor": 2.0}
    (d / "config.json").write_text(json.dumps(cfg))
    with open_hf(d) as ck:
        assert ck.get("rope.scaling.type") == "linear" and ck.get("rope.scaling.factor") == 2.0
        assert "rope_freqs.weight" not in {t.name for t in ck}


# -- bad inputs ---------------------------------------------------------------------------------------------


@pytest.fixture
def stories_dir(tmp_path):
    return make_hf_llama_dir(tmp_path, model_path("stories260K.gguf"), n_shards=2, spm_model=model_path("tok512.model"))


SHARD1 = "model-00001-of-00002.safetensors"


def _header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write_header(path: Path, header: dict, data: bytes) -> None:
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def _missing_shard(d):
    (d / SHARD1).unlink()
    return SHARD1


def _truncated(d):
    p = d / SHARD1
    p.write_bytes(p.read_bytes()[:-100])
    return SHARD1


def _offset_past_eof(d):
    p = d / SHARD1
    header, data = _header(p)
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"] = [len(data) + 8, len(data) + 8 + 4 * int(np.prod(header[name]["shape"]))]
    _write_header(p, header, data)
    return SHARD1


def _huge_header_length(d):
    p = d / SHARD1
    p.write_bytes(struct.pack("<Q", 2**62) + p.read_bytes()[8:])
    return SHARD1


def _garbage_header(d):
    p = d / SHARD1
    raw = p.read_bytes()
    p.write_bytes(raw[:8] + b"{\"a\": [1, 2" + b" " * (struct.unpack_from("<Q", raw)[0] - 11) + raw[8 + struct.unpack_from("<Q", raw)[0]:])
    return SHARD1


def _bad_dtype_size(d):
    p = d / SHARD1
    header, data = _header(p)
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [10**12, 10**12]
    _write_header(p, header, data)
    return SHARD1


def _shape_mismatch(d):
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] += 4
    (d / "config.json").write_text(json.dumps(cfg))
    return "ffn"


def _unknown_arch(d):
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GPTNeoXForCausalLM"]
    (d / "config.json").write_text(json.dumps(cfg))
    return "GPTNeoXForCausalLM"


def _garbage_config(d):
    (d / "config.json").write_text("{\"hidden_size\": 64,, }")
    return "config.json"


def _garbage_index(d):
    (d / "model.safetensors.index.json").write_text("[[[")
    return "model.safetensors.index.json"


def _index_escapes_dir(d):
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    idx["weight_map"] = {k: "../" + v for k, v in idx["weight_map"].items()}
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    return "model.safetensors.index.json"


def _garbage_tokenizer(d):
    (d / "tokenizer.json").write_bytes(b"\xff\xfe{garbage")
    return "tokenizer.json"


def _not_spm(d):
    (d / "tokenizer.model").write_bytes(b"\x00\x01 not a sentencepiece model" * 10)
    return "tokenizer.model"


def _missing_layer(d):
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    p = d / SHARD1
    header, data = _header(p)
    name = next(k for k in header if k.endswith("mlp.up_proj.weight"))
    del header[name]
    del idx["weight_map"][name]
    _write_header(p, header, data)
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    return "ffn_up"


@pytest.mark.parametrize("corrupt", [_missing_shard, _truncated, _offset_past_eof, _huge_header_length, _garbage_header,
                                     _bad_dtype_size, _shape_mismatch, _unknown_arch, _garbage_config, _garbage_index,
                                     _index_escapes_dir, _garbage_tokenizer, _not_spm, _missing_layer])
def test_bad_inputs(stories_dir, corrupt):
    if corrupt is _garbage_tokenizer:
        (stories_dir / "tokenizer.model").unlink()
    needle = corrupt(stories_dir)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError) as e:
        open_checkpoint(stories_dir).close()
    assert time.perf_counter() - t0 < 2.0
    assert needle in str(e.value), str(e.value)


def test_bad_input_messages(stories_dir):
    _unknown_arch(stories_dir)
    with pytest.raises(CheckpointError, match="supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"):
        open_hf(stories_dir)
    d2 = stories_dir.parent / "copy"
    shutil.copytree(stories_dir, d2)
    cfg = json.loads((d2 / "config.json").read_text())
    cfg["architectures"] = ["LlamaForCausalLM"]
    cfg["hidden_size"] = 128
    (d2 / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"'lm_head\.weight' \(output\.weight\) has shape \[512, 64\].*implies \[512, 128\]"):
        open_hf(d2)


def test_unsupported_dtype_fails_on_load(tmp_path):
    p = tmp_path / "x.safetensors"
    h = json.dumps({"a": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}).encode()
    p.write_bytes(struct.pack("<Q", len(h)) + h + bytes(16))
    with SafetensorsFile(p) as f:
        with pytest.raises(CheckpointError, match="x.safetensors.*I64"):
            f.load("a")
    h = json.dumps({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 16]}}).encode()
    p.write_bytes(struct.pack("<Q", len(h)) + h + bytes(16))
    with pytest.raises(CheckpointError, match="unknown dtype"):
        SafetensorsFile(p)


def test_safetensors_roundtrip_f16_bf16(tmp_path):
    a = np.random.default_rng(3).standard_normal((5, 7)).astype(np.float32)
    for dt, want in (("F16", a.astype(np.float16).astype(np.float32)), ("BF16", round_bf16(a)), ("F32", a)):
        write_safetensors_arrays(tmp_path / f"{dt}.safetensors", {"w": a, "empty": np.zeros((0, 3))}, dt)
        with SafetensorsFile(tmp_path / f"{dt}.safetensors") as f:
            assert np.array_equal(f.load("w"), want) and f.load("empty").shape == (0, 3)
            assert f.metadata == {"format": "pt"}
        with pytest.raises(CheckpointError, match=f"{dt}.safetensors: file is closed"):
            f.load("w")
    assert encode(np.float32([1.0]), "BF16") == b"\x80\x3f"
