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

import collections
import io
import mmap
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .checkpoint import Checkpoint, CheckpointError, MetaValue, ShardedWeights, SourceTensor, llama_hparams, string
from .checkpoint_hf import llama3_rope_factors
from .gguf_io import close_map
from .safetensors_io import read_json, to_float32
from .vocab_gguf import spm_vocab

__all__ = ["open_meta", "TorchZipFile", "open_torch_model"]

_STORAGE_DTYPES = {  # torch storage class -> (our dtype name, numpy dtype read from the file)
    "FloatStorage": ("F32", "<f4"), "HalfStorage": ("F16", "<f2"), "BFloat16Storage": ("BF16", "<u2"),
    "DoubleStorage": ("F64", "<f8"), "LongStorage": ("I64", "<i8"), "IntStorage": ("I32", "<i4"),
    "ShortStorage": ("I16", "<i2"), "CharStorage": ("I8", "i1"), "ByteStorage": ("U8", "u1"),
    "BoolStorage": ("BOOL", "u1"),
}
_FLOAT_TYPES = ("F32", "F16", "BF16")
MAX_PICKLE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class _StorageType:
    dtype: str


@dataclass(frozen=True)
class _Storage:
    dtype: str
    key: str
    numel: int


@dataclass(frozen=True)
class TorchTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    storage: _Storage
    offset: int
    stride: tuple[int, ...]
    file: Path


@dataclass(frozen=True)
class _TensorRef:
    """What the unpickler makes of a tensor (a value the pickle data cannot forge)."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("tensor without a storage")
    if not (type(offset) is int and offset >= 0 and isinstance(size, tuple) and isinstance(stride, tuple)
            and len(size) == len(stride) <= 8
            and all(type(d) is int and d >= 0 for d in size) and all(type(s) is int and s >= 0 for s in stride)):
        raise pickle.UnpicklingError(f"malformed tensor: offset {offset!r}, size {size!r}, stride {stride!r}")
    return _TensorRef(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name][0])
        fn = _ALLOWED.get((module, name))
        if fn is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a checkpoint")
        return fn

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and type(pid[4]) is int
                and pid[4] >= 0):
            raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:80]}")
        return _Storage(pid[1].dtype, pid[2], pid[4])


class TorchZipFile:
    """The tensors of one ``torch.save`` zip archive, read lazily."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._mm: Optional[mmap.mmap] = None
        self.tensors: dict[str, TorchTensor] = {}
        try:
            self._zip = zipfile.ZipFile(self.path)
        except zipfile.BadZipFile:
            raise self._fail("not a zip archive (truncated, or the legacy pre-1.6 torch.save format, which is "
                             "not supported)") from None
        except OSError as e:
            raise self._fail(f"cannot open: {e.strerror or e}") from None
        try:
            self._read_index()
            self._size = self.path.stat().st_size
            with open(self.path, "rb") as fh:
                self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except BaseException:
            self.close()
            raise

    def _fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {what}")

    def _read_index(self) -> None:
        pkls = [i for i in self._zip.infolist()
                if i.filename.count("/") == 1 and i.filename.split("/")[1] == "data.pkl"]
        if len(pkls) != 1:
            raise self._fail(f"expected one ARCHIVE/data.pkl entry, found {len(pkls)}")
        self._prefix = pkls[0].filename[: -len("data.pkl")]
        names = set(self._zip.namelist())
        bo = self._prefix + "byteorder"
        if bo in names:
            order = self._zip.read(bo).strip() if self._zip.getinfo(bo).file_size <= 16 else b"?"
            if order not in (b"little", b""):
                raise self._fail(f"byte order {order!r} is not supported (only little-endian)")
        if pkls[0].file_size > MAX_PICKLE_BYTES:
            raise self._fail(f"data.pkl is {pkls[0].file_size} bytes, more than a state dict needs")
        try:
            data = self._zip.read(pkls[0])
            obj = _RestrictedUnpickler(io.BytesIO(data)).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
                RecursionError, OverflowError, MemoryError, zipfile.BadZipFile) as e:
            raise self._fail(f"cannot read data.pkl: {e}") from None
        if isinstance(obj, dict) and set(obj) in ({"model"}, {"state_dict"}):
            obj = next(iter(obj.values()))
        if not isinstance(obj, dict):
            raise self._fail(f"data.pkl holds a {type(obj).__name__}, not a state dict of tensors")
        for name, t in obj.items():
            if not (isinstance(name, str) and isinstance(t, _TensorRef)):
                raise self._fail(f"state dict entry {str(name)[:60]!r} is not a tensor")
            storage, offset, size, stride = t.storage, t.offset, t.size, t.stride
            n = 1
            for d in size:
                n *= d
            if n and offset + sum((d - 1) * s for d, s in zip(size, stride)) >= storage.numel:
                raise self._fail(f"tensor {name!r} (size {list(size)}, offset {offset}) runs past the end of its "
                                 f"storage of {storage.numel} elements")
            self.tensors[name] = TorchTensor(name, storage.dtype, size, storage, offset, stride, self.path)

    def _storage(self, st: _Storage) -> np.ndarray:
        dtype = np.dtype(next(v[1] for v in _STORAGE_DTYPES.values() if v[0] == st.dtype))
        entry = f"{self._prefix}data/{st.key}"
        try:
            info = self._zip.getinfo(entry)
        except KeyError:
            raise self._fail(f"storage {entry} is missing from the archive") from None
        need = st.numel * dtype.itemsize
        if info.file_size < need:
            raise self._fail(f"storage {entry} holds {info.file_size} bytes, but {st.numel} {st.dtype} "
                             f"elements need {need}")
        if info.compress_type == zipfile.ZIP_STORED and self._mm is not None:
            start = info.header_offset
            if start + 30 > self._size or self._mm[start:start + 4] != b"PK\x03\x04":
                raise self._fail(f"storage {entry}: bad local zip header")
            name_len, extra_len = struct.unpack_from("<HH", self._mm, start + 26)
            data = start + 30 + name_len + extra_len
            if data + need > self._size:
                raise self._fail(f"storage {entry} runs past the end of the file (truncated?)")
            return np.frombuffer(self._mm, dtype=dtype, count=st.numel, offset=data)
        if info.file_size > 4 * need + (1 << 20):
            raise self._fail(f"storage {entry} is {info.file_size} bytes, far more than its {need}")
        try:
            raw = self._zip.read(info)
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise self._fail(f"cannot read storage {entry}: {e}") from None
        return np.frombuffer(raw, dtype=dtype, count=st.numel)

    def load(self, name: str) -> np.ndarray:
        t = self.tensors.get(name)
        if t is None:
            raise self._fail(f"no tensor {name!r}")
        if t.dtype not in _FLOAT_TYPES:
            raise self._fail(f"tensor {name!r} has dtype {t.dtype}; only F32, F16 and BF16 are supported")
        if 0 in t.shape:
            return np.zeros(t.shape, dtype=np.float32)
        base = self._storage(t.storage)
        item = base.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(base[t.offset:], shape=t.shape,
                                               strides=tuple(s * item for s in t.stride), writeable=False)
        out = np.ascontiguousarray(to_float32(view, t.dtype))
        del view, base
        return out

    def close(self) -> None:
        close_map(self._mm)
        self._mm = None
        self._zip.close()


def open_torch_model(directory: Path) -> Optional[ShardedWeights]:
    """pytorch_model.bin (or its shards) of a Hugging Face directory; None if absent."""
    paths = sorted(Path(directory).glob("pytorch_model*.bin"))
    if not paths:
        return None
    files: list[TorchZipFile] = []
    try:
        for p in paths:
            files.append(TorchZipFile(p))
        return ShardedWeights(files)
    except BaseException:
        for f in files:
            f.close()
        raise


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
    rope_base = float(_param(params, params_path, "rope_theta", float, 10000.0))
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
