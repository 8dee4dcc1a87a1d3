"""Builds Hugging Face and Meta checkpoints from a GGUF test model, for the converter tests.

    from hf_fixture import make_hf_llama_dir, make_meta_dir

* `make_hf_llama_dir(tmp_dir, gguf)`: every tensor dequantized to F32 (or
  rounded to BF16), renamed to HF's names, Q/K rows put back into HF's
  rotate-half order (the inverse of llama.cpp's permutation), saved as
  ``model.safetensors`` (or shards + ``model.safetensors.index.json``) with a
  ``config.json``.  A byte-level BPE vocabulary becomes ``tokenizer.json`` +
  ``tokenizer_config.json`` shaped like SmolLM2's (Digits + ByteLevel
  pre-tokenizer, added special tokens, chat template); with ``spm_model`` the
  SentencePiece file is copied as ``tokenizer.model`` instead.
* `make_meta_dir(tmp_dir, gguf, spm_model)`: Meta's layout (``params.json``,
  ``consolidated.NN.pth``, ``tokenizer.model``), the .pth written by
  `write_torch_zip` without torch.

The safetensors and torch files are written by the small writers below (the
``safetensors`` and ``torch`` packages are not needed).
"""
from __future__ import annotations

import json
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from llamalocal.io.gguf_reader import GGUFFile
from llamalocal.tokenizer.bpe import BYTE_TO_UNICODE

# -- numeric helpers ------------------------------------------------------------------------------------


def f32_to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def round_bf16(a: np.ndarray) -> np.ndarray:
    return bf16_bits_to_f32(f32_to_bf16_bits(a))


def hf_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """GGUF (interleaved rope pairs) -> HF rotate-half row order; inverse of llama.cpp's permute."""
    rows = w.shape[0]
    return np.ascontiguousarray(
        w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def encode(a: np.ndarray, dtype: str) -> bytes:
    if dtype == "F32":
        return np.ascontiguousarray(a, dtype="<f4").tobytes()
    if dtype == "F16":
        return np.ascontiguousarray(a, dtype="<f2").tobytes()
    if dtype == "BF16":
        return f32_to_bf16_bits(a).astype("<u2").tobytes()
    raise ValueError(dtype)


# -- safetensors writer -----------------------------------------------------------------------------------

_ITEM = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8}


def write_safetensors(path: Path, specs: Iterable[tuple[str, str, tuple[int, ...]]],
                      produce: Callable[[str], bytes], metadata: Optional[dict] = None) -> int:
    """Writes one file: ``specs`` are (name, dtype, shape); ``produce(name)`` gives the bytes.
    Returns the data size."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    specs = list(specs)
    for name, dtype, shape in specs:
        n = int(np.prod(shape, dtype=np.int64)) * _ITEM[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for name, dtype, shape in specs:
            data = produce(name)
            assert len(data) == header[name]["data_offsets"][1] - header[name]["data_offsets"][0], name
            fh.write(data)
    return offset


def write_safetensors_arrays(path: Path, arrays: dict[str, np.ndarray], dtype: str = "F32") -> None:
    write_safetensors(path, [(k, dtype, v.shape) for k, v in arrays.items()], lambda k: encode(arrays[k], dtype))


# -- GGUF -> HF -------------------------------------------------------------------------------------------

_HF_LAYER = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
_HF_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}


def hf_name(gguf_name: str) -> str:
    if gguf_name in _HF_GLOBAL:
        return _HF_GLOBAL[gguf_name]
    _, i, part, kind = gguf_name.split(".")
    return f"model.layers.{i}.{_HF_LAYER[part]}.{kind}"


def gguf_hparams(meta: dict) -> dict:
    a = meta["general.architecture"]
    return {k[len(a) + 1:]: v for k, v in meta.items() if k.startswith(a + ".")}


def _short_float(x: float) -> float:
    return float(f"{float(x):.6g}")


def hf_config(meta: dict, tied: bool, dtype: str, name_or_path: str) -> dict:
    hp = gguf_hparams(meta)
    return {
        "_name_or_path": name_or_path,
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": int(meta.get("tokenizer.ggml.bos_token_id", 1)),
        "eos_token_id": int(meta.get("tokenizer.ggml.eos_token_id", 2)),
        "hidden_act": "silu",
        "hidden_size": int(hp["embedding_length"]),
        "initializer_range": 0.02,
        "intermediate_size": int(hp["feed_forward_length"]),
        "max_position_embeddings": int(hp["context_length"]),
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": int(hp["attention.head_count"]),
        "num_hidden_layers": int(hp["block_count"]),
        "num_key_value_heads": int(hp.get("attention.head_count_kv", hp["attention.head_count"])),
        "pretraining_tp": 1,
        "rms_norm_eps": _short_float(hp["attention.layer_norm_rms_epsilon"]),
        "rope_scaling": None,
        "rope_theta": _short_float(hp.get("rope.freq_base", 10000.0)),
        "tie_word_embeddings": tied,
        "torch_dtype": {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[dtype],
        "transformers_version": "4.42.3",
        "use_cache": True,
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
    }


def _added_token(i: int, text: str, special: bool) -> dict:
    return {"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def bpe_tokenizer_files(directory: Path, meta: dict, pre_tokenizer: dict, normalizer=None,
                        merges_as_pairs: bool = True, extra_config: Optional[dict] = None) -> None:
    """tokenizer.json + tokenizer_config.json for a byte-level BPE vocabulary given as GGUF metadata."""
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = [int(t) for t in meta["tokenizer.ggml.token_type"]]
    assert len(set(tokens)) == len(tokens), "duplicate token texts cannot be written as a tokenizer.json vocab"
    merges = []
    for m in meta["tokenizer.ggml.merges"]:
        pos = m.find(" ", 1)
        merges.append([m[:pos], m[pos + 1:]] if merges_as_pairs else m)
    added = [_added_token(i, t, types[i] == 3) for i, t in enumerate(tokens) if types[i] in (3, 4)]
    tj = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    }
    (directory / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")

    def tok(key: str) -> Optional[str]:
        i = meta.get(f"tokenizer.ggml.{key}")
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    cfg = {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added},
        "additional_special_tokens": [t for t in ("<|im_start|>", "<|im_end|>") if t in tokens],
        "bos_token": tok("bos_token_id"), "eos_token": tok("eos_token_id"),
        "unk_token": tok("unknown_token_id"), "pad_token": tok("padding_token_id"),
        "clean_up_tokenization_spaces": False, "model_max_length": 8192,
        "tokenizer_class": "GPT2Tokenizer", "vocab_size": len(tokens),
    }
    if "tokenizer.chat_template" in meta:
        cfg["chat_template"] = meta["tokenizer.chat_template"]
    cfg.update(extra_config or {})
    (directory / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")


# A byte-level BPE vocabulary of the 256 byte tokens, four merges and four special tokens.
def tiny_bpe_meta(extra_tokens=("\u0120t", "he", "\u0120the", "in"), merges=("\u0120 t", "h e", "\u0120t he", "i n")):
    tokens = list(BYTE_TO_UNICODE) + list(extra_tokens) + ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool>"]
    types = [1] * (len(tokens) - 4) + [3, 3, 3, 4]
    return {"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": list(merges),
            "tokenizer.ggml.eos_token_id": len(tokens) - 2, "tokenizer.ggml.padding_token_id": len(tokens) - 4}


QWEN2_PRE = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}"
                                           "\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
     "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
SMOLLM_PRE_TOKENIZER = {"type": "Sequence", "pretokenizers": [
    {"type": "Digits", "individual_digits": True},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
]}


def _spm_tokenizer_files(directory: Path, spm_model: Path, meta: dict) -> None:
    shutil.copyfile(spm_model, directory / "tokenizer.model")
    tokens = meta["tokenizer.ggml.tokens"]
    specials = {i: tokens[i] for i in (0, 1, 2)}
    cfg = {
        "add_bos_token": True, "add_eos_token": False, "legacy": False, "tokenizer_class": "LlamaTokenizer",
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True} for i, t in specials.items()},
        "bos_token": specials[1], "eos_token": specials[2], "unk_token": specials[0], "pad_token": None,
        "clean_up_tokenization_spaces": False, "model_max_length": 2048, "sp_model_kwargs": {},
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")


def make_hf_llama_dir(tmp_dir: Path, source_gguf: Path, *, n_shards: int = 1, dtype: str = "F32",
                      spm_model: Optional[Path] = None, name: str = "hf-model",
                      name_or_path: str = "HuggingFaceTB/SmolLM2-135M-Instruct") -> Path:
    """An HF LlamaForCausalLM directory holding the GGUF's weights (see the module docstring)."""
    out = Path(tmp_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    with GGUFFile(source_gguf) as g:
        meta = dict(g.metadata)
        hp = gguf_hparams(meta)
        n_head = int(hp["attention.head_count"])
        n_kv = int(hp.get("attention.head_count_kv", n_head))
        names = list(g.tensors)
        tied = "output.weight" not in names

        def produce(hf: str) -> bytes:
            gname = by_hf[hf]
            a = g.tensor_array(gname, dequantize=True)
            part = gname.split(".")[2] if gname.startswith("blk.") else ""
            if part == "attn_q":
                a = hf_permute(a, n_head)
            elif part == "attn_k":
                a = hf_permute(a, n_kv)
            return encode(a, dtype)

        by_hf = {hf_name(n): n for n in names}
        specs = [(hf_name(n), dtype, g.tensors[n].np_shape) for n in names]
        sizes = [int(np.prod(s)) for _, _, s in specs]
        shard_of = np.minimum((np.cumsum(sizes) - 1) * n_shards // sum(sizes), n_shards - 1)
        weight_map, total = {}, 0
        for k in range(n_shards):
            part = [s for s, j in zip(specs, shard_of) if j == k]
            fname = "model.safetensors" if n_shards == 1 else f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
            total += write_safetensors(out / fname, part, produce)
            weight_map.update({s[0]: fname for s in part})
        if n_shards > 1:
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    (out / "config.json").write_text(json.dumps(hf_config(meta, tied, dtype, name_or_path), indent=2), encoding="utf-8")
    gen = {"bos_token_id": int(meta.get("tokenizer.ggml.bos_token_id", 1)),
           "eos_token_id": int(meta.get("tokenizer.ggml.eos_token_id", 2)), "transformers_version": "4.42.3"}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2), encoding="utf-8")
    if spm_model is not None:
        _spm_tokenizer_files(out, Path(spm_model), meta)
    elif meta.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"{source_gguf} has a SentencePiece vocabulary: pass spm_model (its tokenizer.model)")
    else:
        bpe_tokenizer_files(out, meta, SMOLLM_PRE_TOKENIZER)
    return out


# -- torch zip writer (no torch) --------------------------------------------------------------------------

_STORAGE = {"F32": b"FloatStorage", "F16": b"HalfStorage", "BF16": b"BFloat16Storage"}


def _p_int(v: int) -> bytes:
    return b"J" + struct.pack("<i", v)  # BININT


def _p_str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b  # BINUNICODE


def _p_tuple(items: list) -> bytes:
    return b"(" + b"".join(items) + b"t"  # MARK ... TUPLE


def torch_pickle(entries: list[tuple[str, str, str, int, int, tuple, tuple]], extra_global: bytes = b"") -> bytes:
    """The data.pkl torch.save writes for a state dict, in pickle protocol 2 opcodes.

    ``entries``: (name, dtype, storage key, storage numel, offset, size, stride).
    Each value is ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
    False, OrderedDict())`` and each storage the persistent id
    ``("storage", torch.FloatStorage, key, "cpu", numel)`` (BINPERSID)."""
    out = [b"\x80\x02", b"ccollections\nOrderedDict\n", b")", b"R", b"("]  # PROTO 2; OrderedDict(); MARK
    for name, dtype, key, numel, offset, size, stride in entries:
        pid = _p_tuple([_p_str("storage"), b"ctorch\n" + _STORAGE[dtype] + b"\n", _p_str(key), _p_str("cpu"),
                        _p_int(numel)]) + b"Q"
        args = _p_tuple([pid, _p_int(offset), _p_tuple([_p_int(d) for d in size]),
                         _p_tuple([_p_int(s) for s in stride]), b"\x89",  # NEWFALSE: requires_grad
                         b"ccollections\nOrderedDict\n)R"])  # backward_hooks
        out += [_p_str(name), b"ctorch._utils\n_rebuild_tensor_v2\n", args, b"R"]
    out += [extra_global, b"u."]  # SETITEMS, STOP
    return b"".join(out)


def _stored_aligned(zf: zipfile.ZipFile, name: str, data: bytes, align: int = 64) -> None:
    """A ZIP_STORED entry whose data starts on an `align` boundary, padded with an extra field as torch does."""
    offset = zf.fp.tell()
    pad = -(offset + 30 + len(name.encode()) + 4) % align
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
    zf.writestr(info, data)


def write_torch_zip(path: Path, tensors: dict[str, np.ndarray], dtype: str = "F32", transposed: Iterable[str] = (),
                    archive: str = "consolidated", pickle_bytes: Optional[bytes] = None) -> None:
    """``torch.save(state_dict, path)`` without torch.

    Zip layout (all entries stored, data 64-byte aligned): ``ARCHIVE/data.pkl``
    (`torch_pickle`), ``ARCHIVE/byteorder`` ("little"), ``ARCHIVE/data/0``,
    ``ARCHIVE/data/1``, ... (one storage per tensor, raw little-endian),
    ``ARCHIVE/version`` ("3"), ``ARCHIVE/.data/serialization_id``.  Tensors named
    in ``transposed`` are stored column-major (a non-contiguous stride)."""
    transposed = set(transposed)
    entries, blobs = [], []
    for i, (name, a) in enumerate(tensors.items()):
        a = np.asarray(a, dtype=np.float32)
        if name in transposed and a.ndim == 2:
            blobs.append(encode(np.ascontiguousarray(a.T), dtype))
            stride = (1, a.shape[0])
        else:
            blobs.append(encode(a, dtype))
            stride = tuple(int(np.prod(a.shape[k + 1:])) for k in range(a.ndim))
        entries.append((name, dtype, str(i), a.size, 0, tuple(a.shape), stride))
    with zipfile.ZipFile(path, "w") as zf:
        _stored_aligned(zf, f"{archive}/data.pkl", pickle_bytes if pickle_bytes is not None else torch_pickle(entries))
        _stored_aligned(zf, f"{archive}/byteorder", b"little")
        for i, blob in enumerate(blobs):
            _stored_aligned(zf, f"{archive}/data/{i}", blob)
        _stored_aligned(zf, f"{archive}/version", b"3\n")
        _stored_aligned(zf, f"{archive}/.data/serialization_id", b"0123456789")


# -- GGUF -> Meta -----------------------------------------------------------------------------------------

_META_LAYER = {"attn_q": "attention.wq", "attn_k": "attention.wk", "attn_v": "attention.wv",
               "attn_output": "attention.wo", "ffn_gate": "feed_forward.w1", "ffn_down": "feed_forward.w2",
               "ffn_up": "feed_forward.w3", "attn_norm": "attention_norm", "ffn_norm": "ffn_norm"}
_META_GLOBAL = {"token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight",
                "output.weight": "output.weight"}
_META_AXIS = {"attn_q": 0, "attn_k": 0, "attn_v": 0, "ffn_gate": 0, "ffn_up": 0, "attn_output": 1, "ffn_down": 1}


def meta_name(gguf_name: str) -> str:
    if gguf_name in _META_GLOBAL:
        return _META_GLOBAL[gguf_name]
    _, i, part, _ = gguf_name.split(".")
    return f"layers.{i}.{_META_LAYER[part]}.weight"


def _meta_axis(gguf_name: str) -> Optional[int]:
    if gguf_name == "token_embd.weight":
        return 1  # Llama 2's ParallelEmbedding splits columns
    if gguf_name == "output.weight":
        return 0
    if gguf_name.startswith("blk."):
        return _META_AXIS.get(gguf_name.split(".")[2])
    return None


def make_meta_dir(tmp_dir: Path, source_gguf: Path, spm_model: Path, *, n_shards: int = 1, dtype: str = "F32",
                  name: str = "meta-model", transposed: Iterable[str] = ()) -> Path:
    """Meta's original layout of the GGUF's weights (GGUF layout = Meta layout: no permutation)."""
    out = Path(tmp_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    with GGUFFile(source_gguf) as g:
        meta = dict(g.metadata)
        hp = gguf_hparams(meta)
        arrays = {n: np.array(g.tensor_array(n, dequantize=True)) for n in g.tensors}
    head_dim = int(hp["embedding_length"]) // int(hp["attention.head_count"])
    for k in range(n_shards):
        part = {}
        for n, a in arrays.items():
            axis = _meta_axis(n)
            part[meta_name(n)] = a if axis is None or n_shards == 1 else np.array_split(a, n_shards, axis=axis)[k]
        # Meta's Llama 1/2 files carry the rope frequencies, which converters ignore
        part["rope.freqs"] = (1.0 / 10000 ** (np.arange(0, head_dim, 2) / head_dim)).astype(np.float32)
        write_torch_zip(out / f"consolidated.{k:02d}.pth", part, dtype=dtype, transposed=transposed)
    params = {"dim": int(hp["embedding_length"]), "multiple_of": 4, "n_heads": int(hp["attention.head_count"]),
              "n_kv_heads": int(hp.get("attention.head_count_kv", hp["attention.head_count"])),
              "n_layers": int(hp["block_count"]), "norm_eps": _short_float(hp["attention.layer_norm_rms_epsilon"]),
              "vocab_size": -1, "max_seq_len": int(hp["context_length"])}
    (out / "params.json").write_text(json.dumps(params), encoding="utf-8")
    shutil.copyfile(spm_model, out / "tokenizer.model")
    return out
