"""Meta's consolidated.NN.pth checkpoints -> GGUF (llamalocal.convert.meta, io.torch_zip), read without torch.

The checkpoints are written by tests/hf_fixture.py in torch.save's zip format
(zipfile + hand-written pickle opcodes) from stories260K's weights; Meta's
layout is GGUF's, so every tensor must equal the source GGUF's exactly.
"""
from __future__ import annotations

import json
import pickle
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hf_fixture import make_meta_dir, round_bf16, torch_pickle, write_torch_zip
from llamalocal.convert import open_checkpoint
from llamalocal.errors import CheckpointError
from llamalocal.convert.meta import open_meta
from llamalocal.io.torch_zip import TorchZipFile
from llamalocal.io.gguf_reader import GGUFFile
from llamalocal.tokenizer import Tokenizer
from models import model_path

TEXTS = ["Once upon a time, there was a little girl named Lily.", "12345 + 67 = ?", "emoji \U0001F999 \u00e9t\u00e9",
         "  two  spaces\nnew line", ""]


def source():
    return model_path("stories260K.gguf")


def check_against_gguf(ck, rounding=lambda a: a) -> None:
    with GGUFFile(source()) as g:
        assert sorted(t.name for t in ck) == sorted(g.tensors)
        for t in ck:
            a = t.load()
            assert a.dtype == np.float32 and a.flags.c_contiguous and a.shape == t.shape == g.tensors[t.name].np_shape
            assert np.array_equal(a, rounding(g.tensor_array(t.name, dequantize=True))), t.name
        arch = g.metadata["general.architecture"]
        for k, v in g.metadata.items():
            if k.startswith(arch + "."):
                assert np.float32(ck.metadata[k].value) == np.float32(v), k
                assert int(ck.metadata[k].type) == g.value_types[k], k
        ours = Tokenizer.from_gguf_metadata({k: v.value for k, v in ck.metadata.items()})
        theirs = Tokenizer.from_gguf_metadata(g.metadata)
        for text in TEXTS:
            assert ours.encode(text) == theirs.encode(text), text
        assert ck.metadata["tokenizer.ggml.tokens"].value == g.metadata["tokenizer.ggml.tokens"]
        assert np.array_equal(ck.metadata["tokenizer.ggml.token_type"].value, g.metadata["tokenizer.ggml.token_type"])
        assert np.allclose(ck.metadata["tokenizer.ggml.scores"].value, g.metadata["tokenizer.ggml.scores"])


def test_single_file_f32(tmp_path):
    d = make_meta_dir(tmp_path, source(), model_path("tok512.model"))
    with open_checkpoint(d) as ck:
        assert ck.kind == "meta" and ck.arch == "llama" and ck.warnings == []
        assert [t.name for t in ck][:2] == ["token_embd.weight", "blk.0.attn_norm.weight"]
        assert all(t.source_type == "F32" for t in ck)
        check_against_gguf(ck)
        assert ck.get("general.name") == "meta-model" and "general.file_type" not in ck.metadata
    # the .pth itself is also a valid INPUT
    with open_checkpoint(d / "consolidated.00.pth") as ck:
        assert ck.kind == "meta"


def test_two_shards_bf16_strided(tmp_path):
    d = make_meta_dir(tmp_path, source(), model_path("tok512.model"), n_shards=2, dtype="BF16",
                      transposed=["layers.0.attention.wq.weight", "layers.4.feed_forward.w2.weight"])
    with open_meta(d, None) as ck:
        assert all(t.source_type == "BF16" for t in ck)
        check_against_gguf(ck, round_bf16)


def test_f16_tokenizer_in_parent(tmp_path):
    d = make_meta_dir(tmp_path, source(), model_path("tok512.model"), dtype="F16")
    (d / "tokenizer.model").rename(tmp_path / "tokenizer.model")  # Llama 2's release layout
    with open_meta(d, None) as ck:
        check_against_gguf(ck, lambda a: a.astype(np.float16).astype(np.float32))
    with open_meta(d, tmp_path / "tokenizer.model") as ck:
        assert ck.get("tokenizer.ggml.model") == "llama"


def test_scaled_rope_params(tmp_path):
    d = make_meta_dir(tmp_path, source(), model_path("tok512.model"))
    params = json.loads((d / "params.json").read_text())
    del params["max_seq_len"]
    params.update(rope_theta=500000.0, use_scaled_rope=True)
    (d / "params.json").write_text(json.dumps(params))
    with open_meta(d, None) as ck:
        assert ck.tensors[0].name == "rope_freqs.weight"
        f = ck.tensors[0].load()
        assert f.shape == (4,) and f[0] == 1.0 and f[-1] == 8.0
        assert ck.get("context_length") == 131072 and ck.get("rope.freq_base") == 500000.0


def test_with_real_torch(tmp_path):
    torch = pytest.importorskip("torch")
    d = make_meta_dir(tmp_path, source(), model_path("tok512.model"))
    with GGUFFile(source()) as g:
        from hf_fixture import meta_name
        sd = {meta_name(n): torch.from_numpy(np.array(g.tensor_array(n, dequantize=True))).to(torch.bfloat16)
              for n in g.tensors}
    sd["layers.1.attention.wk.weight"] = sd["layers.1.attention.wk.weight"].t().contiguous().t()  # strided
    torch.save(sd, d / "consolidated.00.pth")
    with open_meta(d, None) as ck:
        check_against_gguf(ck, round_bf16)


# -- restricted unpickler and bad inputs --------------------------------------------------------------------


def _zip_with_pickle(path: Path, pkl: bytes, storages: dict[str, bytes] = None) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/version", "3\n")
        for k, v in (storages or {}).items():
            zf.writestr(f"archive/data/{k}", v)


def test_foreign_globals_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    payloads = [
        b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(f"touch {marker}")) + f"touch {marker}".encode() + b"\x85R.",
        b"\x80\x02cbuiltins\neval\nX\x0e\x00\x00\x00__import__('os')\x85R.",
        b"\x80\x02}X\x01\x00\x00\x00a" + b"ctorch._utils\n_rebuild_tensor_v2\n(" + b"cposix\nsystem\n" + b"tRs.",
    ]
    for i, pkl in enumerate(payloads):
        p = tmp_path / f"evil{i}.pth"
        _zip_with_pickle(p, pkl)
        with pytest.raises(CheckpointError, match=rf"evil{i}\.pth.*(is not allowed|malformed)"):
            TorchZipFile(p)
    assert not marker.exists()


def test_pickle_must_be_a_state_dict_of_tensors(tmp_path):
    p = tmp_path / "list.pth"
    _zip_with_pickle(p, b"\x80\x02]q\x00.")
    with pytest.raises(CheckpointError, match="list.pth.*not a state dict"):
        TorchZipFile(p)
    p = tmp_path / "forged.pth"  # a plain tuple posing as a rebuilt tensor
    _zip_with_pickle(p, pickle.dumps({"w": ("tensor", "x", 0, (1,), (1,))}, protocol=2))
    with pytest.raises(CheckpointError, match="forged.pth.*'w' is not a tensor"):
        TorchZipFile(p)


def test_storage_problems(tmp_path):
    ok = torch_pickle([("w", "F32", "0", 6, 0, (2, 3), (3, 1))])
    p = tmp_path / "m.pth"
    _zip_with_pickle(p, ok, {"0": np.arange(6, dtype="<f4").tobytes()})
    f = TorchZipFile(p)
    assert np.array_equal(f.load("w"), np.arange(6, dtype=np.float32).reshape(2, 3))
    f.close()

    _zip_with_pickle(p, ok, {})
    f = TorchZipFile(p)
    with pytest.raises(CheckpointError, match="m.pth.*storage archive/data/0 is missing"):
        f.load("w")
    f.close()

    _zip_with_pickle(p, ok, {"0": bytes(8)})
    f = TorchZipFile(p)
    with pytest.raises(CheckpointError, match="m.pth.*holds 8 bytes"):
        f.load("w")
    f.close()

    _zip_with_pickle(p, torch_pickle([("w", "F32", "0", 6, 2, (2, 3), (3, 1))]), {"0": bytes(24)})
    with pytest.raises(CheckpointError, match="m.pth.*runs past the end of its storage"):
        TorchZipFile(p)

    # a huge declared size is refused from the header alone, before any allocation
    _zip_with_pickle(p, torch_pickle([("w", "F32", "0", 2**31 - 1, 0, (2**31 - 1,), (1,))]), {"0": bytes(24)})
    f = TorchZipFile(p)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="m.pth.*holds 24 bytes"):
        f.load("w")
    assert time.perf_counter() - t0 < 1.0
    f.close()


def _legacy(d):
    (d / "consolidated.00.pth").write_bytes(b"\x80\x02\x8a\x0alz\xfc\x9cF\xf9 j\xa8P\x19." + bytes(100))
    return "consolidated.00.pth"


def _truncated(d):
    p = d / "consolidated.00.pth"
    p.write_bytes(p.read_bytes()[:5000])
    return "consolidated.00.pth"


def _bad_params(d):
    (d / "params.json").write_text("{\"dim\": 64, \"n_layers\": }")
    return "params.json"


def _params_mismatch(d):
    params = json.loads((d / "params.json").read_text())
    params["n_kv_heads"] = 8
    (d / "params.json").write_text(json.dumps(params))
    return "attention.wk"


def _too_few_layers(d):
    params = json.loads((d / "params.json").read_text())
    params["n_layers"] = 4
    (d / "params.json").write_text(json.dumps(params))
    return "layers.4"


def _tiktoken(d):
    (d / "tokenizer.model").write_text("IQ== 0\nIg== 1\nIw== 2\n")
    return "tiktoken"


def _no_tokenizer(d):
    (d / "tokenizer.model").unlink()
    return "tokenizer.model"


def _unknown_tensor(d):
    with GGUFFile(source()) as g:
        a = np.array(g.tensor_array("output_norm.weight"))
    write_torch_zip(d / "consolidated.00.pth", {"norm.weight": a, "adapter.weight": a})
    return "adapter.weight"


@pytest.mark.parametrize("corrupt", [_legacy, _truncated, _bad_params, _params_mismatch, _too_few_layers, _tiktoken,
                                     _no_tokenizer, _unknown_tensor])
def test_bad_inputs(tmp_path, corrupt):
    d = make_meta_dir(tmp_path, source(), model_path("tok512.model"))
    needle = corrupt(d)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError) as e:
        open_checkpoint(d).close()
    assert time.perf_counter() - t0 < 2.0
    assert needle in str(e.value), str(e.value)
