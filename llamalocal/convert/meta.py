"""Meta's original checkpoints (``consolidated.NN.pth`` + ``params.json`` + ``tokenizer.model``) as a `Checkpoint`.

PyTorch files are read without torch.  ``torch.save`` writes a zip archive
(entries stored uncompressed)::

    ARCHIVE/data.pkl      pickle of the state dict {name: tensor}
    ARCHIVE/data/KEY      raw little-endian bytes of storage KEY
    ARCHIVE/version       "3"; ARCHIVE/byteorder "little" (newer torch)

In the pickle each tensor is ``torch._utils._rebuild_tensor_v2(storage,
offset, size, stride, requires_grad, backward_hooks)`` whose storage is a
persistent id ``("storage", torch.FloatStorage, KEY, "cpu", numel)``.  The
unpickler here resolves only those globals (the tensor rebuild functions, the
storage classes and ``collections.OrderedDict``) to inert stand-ins; any other
global is refused, so no code from the file runs.  Tensors are then read
lazily, one at a time, from a memory map of the archive (F32, F16, BF16).

Meta's weights already use the interleaved rope layout of GGUF, so Q/K are
not permuted.  Model-parallel checkpoints (``consolidated.00.pth``,
``consolidated.01.pth``, ...) are merged per tensor as Meta's code splits them.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import CheckpointError
from ..io.gguf_metadata import MetaValue, string
from ..io.safetensors import read_json
from ..io.torch_zip import TorchZipFile
from ..model.config import DEFAULT_ROPE_BASE
from ..tokenizer.to_gguf import spm_vocab
from .checkpoint import Checkpoint, SourceTensor, llama_hparams
from .rope import llama3_rope_factors

__all__ = ["open_meta"]

# -- Meta checkpoints ------------------------------------------------------------------------------------

_META_NAMES = {"attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v",
               "attention.wo": "attn_output", "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down",
               "feed_forward.w3": "ffn_up", "attention_norm": "attn_norm", "ffn_norm": "ffn_norm"}
_META_LAYER_RE = re.compile(r"layers\.(\d+)\.([a-z_]+\.w[123qkvo]|[a-z_]+)\.weight")
# model-parallel split axis (Meta's ColumnParallelLinear: 0, RowParallelLinear: 1)
_SPLIT_AXIS = {"attn_q": 0, "attn_k": 0, "attn_v": 0, "ffn_gate": 0, "ffn_up": 0, "attn_output": 1, "ffn_down": 1}
_ORDER = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]


def _meta_name(name: str) -> Optional[str]:
    if name in ("tok_embeddings.weight", "norm.weight", "output.weight"):
        return {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
                "output.weight": "output.weight"}[name]
    m = _META_LAYER_RE.fullmatch(name)
    if m and m.group(2) in _META_NAMES:
        return f"blk.{int(m.group(1))}.{_META_NAMES[m.group(2)]}.weight"
    return None


def _param(params: dict, path: Path, key: str, kind=int, default=None):
    v = params.get(key, default)
    ok = (type(v) is int and v > 0) if kind is int else (
        not isinstance(v, bool) and isinstance(v, (int, float)) and 0 < v < float("inf"))
    if not ok:
        raise CheckpointError(f"{path}: {key} = {v!r} is not a positive {'integer' if kind is int else 'number'}")
    return v


def _find_tokenizer(directory: Path, tokenizer: Optional[Path]) -> Path:
    if tokenizer is not None:
        p = Path(tokenizer)
        return p / "tokenizer.model" if p.is_dir() else p
    for p in (directory / "tokenizer.model", directory.parent / "tokenizer.model"):
        if p.is_file():
            return p
    raise CheckpointError(f"{directory}: no tokenizer.model here or in the parent directory; pass the tokenizer's path")


def open_meta(directory: Path, tokenizer: Path | None = None) -> Checkpoint:
    directory = Path(directory)
    params_path = directory / "params.json"
    params = read_json(params_path, "params")
    if not isinstance(params, dict):
        raise CheckpointError(f"{params_path}: not a JSON object")
    shards = sorted(directory.glob("consolidated.*.pth"))
    if not shards:
        raise CheckpointError(f"{directory}: no consolidated.*.pth files")
    if params.get("moe") or params.get("n_experts"):
        raise CheckpointError(f"{params_path}: mixture-of-experts checkpoints are not supported")
    n_embd = _param(params, params_path, "dim")
    n_layer = _param(params, params_path, "n_layers")
    n_head = _param(params, params_path, "n_heads")
    n_head_kv = _param(params, params_path, "n_kv_heads", default=n_head)
    norm_eps = float(_param(params, params_path, "norm_eps", float, 1e-5))
    rope_base = float(_param(params, params_path, "rope_theta", float, DEFAULT_ROPE_BASE))
    if n_embd % n_head or n_head % n_head_kv or (n_embd // n_head) % 2:
        raise CheckpointError(f"{params_path}: dim {n_embd}, n_heads {n_head}, n_kv_heads {n_head_kv} are inconsistent")
    head_dim = n_embd // n_head
    if isinstance(params.get("max_seq_len"), int) and params["max_seq_len"] > 0:
        n_ctx = params["max_seq_len"]
    elif rope_base == 500000.0:
        n_ctx = 131072 if params.get("use_scaled_rope") else 8192  # Llama 3 / 3.1
    elif rope_base == 1000000.0:
        n_ctx = 16384  # CodeLlama
    else:
        n_ctx = 4096 if norm_eps == 1e-5 else 2048  # Llama 2 / Llama 1, as llama.cpp's legacy converter guesses

    files: list[TorchZipFile] = []
    try:
        for p in shards:
            files.append(TorchZipFile(p))
        tensors, n_vocab, n_ff = _meta_tensors(files, params, params_path, n_embd, n_layer, n_head, n_head_kv)
        meta: dict[str, MetaValue] = {"general.architecture": string("llama"), "general.type": string("model"),
                                      "general.name": string(directory.resolve().name)}
        meta.update(llama_hparams("llama", n_ctx=n_ctx, n_embd=n_embd, n_ff=n_ff, n_layer=n_layer, n_head=n_head,
                                  n_head_kv=n_head_kv, norm_eps=norm_eps, rope_base=rope_base, rope_dim=head_dim,
                                  n_vocab=n_vocab))
        if params.get("use_scaled_rope"):
            freqs = llama3_rope_factors(rope_base, head_dim, 8.0, 1.0, 4.0, 8192.0)
            tensors.insert(0, SourceTensor("rope_freqs.weight", freqs.shape, "F32", lambda: freqs.copy()))
        meta.update(spm_vocab(_find_tokenizer(directory, tokenizer), n_vocab))
    except BaseException:
        for f in files:
            f.close()
        raise

    def close() -> None:
        for f in files:
            f.close()

    return Checkpoint(path=directory, kind="meta", arch="llama", metadata=meta, tensors=tensors, _close=close)


def _meta_tensors(files: list[TorchZipFile], params: dict, params_path: Path, n_embd: int, n_layer: int,
                  n_head: int, n_head_kv: int):
    first = files[0]
    n_parts = len(files)
    for f in files[1:]:
        if set(f.tensors) != set(first.tensors):
            raise CheckpointError(f"{f.path}: holds different tensors than {first.path.name}")
    names: dict[str, str] = {}
    for name in first.tensors:
        if name == "rope.freqs":
            continue
        gguf = _meta_name(name)
        if gguf is None:
            raise CheckpointError(f"{first.path}: tensor {name!r} has no GGUF counterpart")
        names[gguf] = name

    def merged_shape(gname: str) -> tuple[int, ...]:
        shapes = [f.tensors[names[gname]].shape for f in files]
        if len(shapes[0]) == 1 or n_parts == 1:
            return shapes[0]
        axis = _axis(gname, shapes[0], n_embd, n_parts)
        out = list(shapes[0])
        out[axis] = sum(s[axis] for s in shapes)
        return tuple(out)

    for required in ("token_embd.weight", "blk.0.ffn_gate.weight"):
        if required not in names:
            raise CheckpointError(f"{first.path}: no {required!r} tensor")
    n_vocab = merged_shape("token_embd.weight")[0]
    if isinstance(params.get("vocab_size"), int) and params["vocab_size"] > 0 and params["vocab_size"] != n_vocab:
        raise CheckpointError(f"{first.path}: tok_embeddings has {n_vocab} rows, params.json says vocab_size "
                              f"{params['vocab_size']}")
    n_ff = merged_shape("blk.0.ffn_gate.weight")[0]
    q, kv = n_embd, n_embd // n_head * n_head_kv
    want = {"token_embd.weight": (n_vocab, n_embd), "output_norm.weight": (n_embd,),
            "output.weight": (n_vocab, n_embd)}
    for i in range(n_layer):
        want.update({f"blk.{i}.attn_q.weight": (q, n_embd), f"blk.{i}.attn_k.weight": (kv, n_embd),
                     f"blk.{i}.attn_v.weight": (kv, n_embd), f"blk.{i}.attn_output.weight": (n_embd, q),
                     f"blk.{i}.ffn_gate.weight": (n_ff, n_embd), f"blk.{i}.ffn_up.weight": (n_ff, n_embd),
                     f"blk.{i}.ffn_down.weight": (n_embd, n_ff), f"blk.{i}.attn_norm.weight": (n_embd,),
                     f"blk.{i}.ffn_norm.weight": (n_embd,)})
    for gname, src in names.items():
        if gname not in want:
            raise CheckpointError(f"{first.path}: tensor {src!r} is beyond the {n_layer} layers of {params_path.name}")
        shape = merged_shape(gname)
        if shape != want[gname]:
            raise CheckpointError(f"{first.path}: tensor {src!r} has shape {list(shape)}, but {params_path.name} "
                                  f"implies {list(want[gname])}")
    missing = [n for n in want if n not in names and n != "output.weight"]
    if missing:
        raise CheckpointError(f"{first.path}: {len(missing)} tensors are missing, e.g. {missing[0]!r} (GGUF name)")

    def loader(gname: str):
        src = names[gname]

        def load() -> np.ndarray:
            parts = [f.load(src) for f in files] if len(want[gname]) > 1 else [first.load(src)]
            if len(parts) == 1:
                return parts[0]
            return np.ascontiguousarray(np.concatenate(parts, axis=_axis(gname, parts[0].shape, n_embd, n_parts)))
        return load

    def key(g: str):
        if g.startswith("blk."):
            _, i, part, _ = g.split(".")
            return (1, int(i), _ORDER.index(part))
        return ({"token_embd.weight": 0, "output_norm.weight": 2, "output.weight": 3}[g], 0, 0)

    tensors = [SourceTensor(g, want[g], first.tensors[names[g]].dtype, loader(g)) for g in sorted(names, key=key)]
    return tensors, n_vocab, n_ff


def _axis(gname: str, part_shape: tuple[int, ...], n_embd: int, n_parts: int) -> int:
    if gname == "token_embd.weight":  # Llama 2 splits the embedding by columns, Llama 3 by rows
        return 1 if part_shape[1] * n_parts == n_embd else 0
    if gname == "output.weight":
        return 0
    return _SPLIT_AXIS[gname.split(".")[2]]
