"""Validated, memory-mapped reader of ``.safetensors`` files (Hugging Face weights).

Layout, all little-endian::

    u64 N                      length of the header
    N bytes                    JSON object (UTF-8, may be padded with spaces):
                               {"name": {"dtype": "F32", "shape": [rows, cols], "data_offsets": [begin, end]},
                                ..., "__metadata__": {"key": "value", ...}}
    data                       the tensors; offsets are relative to the start of this buffer

Every offset, size and shape is checked against the file length and the dtype
before anything is read, so a truncated or hostile file fails at once with a
`CheckpointError` naming the file and the problem (never a crash or a huge
allocation).  Tensors are read lazily from a read-only memory map and returned
as float32 copies: F32, F16 and BF16 are supported (BF16 is widened by shifting
its 16 bits into the top half of a float32).

A model directory holds ``model.safetensors``, or shards listed by
``model.safetensors.index.json`` (``{"weight_map": {tensor: shard file}}``);
`open_safetensors_model` opens either and serves the tensors of all shards.
"""
from __future__ import annotations

import json
import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import CheckpointError
from .gguf_reader import close_map
from .shards import ShardedWeights

__all__ = ["SafetensorsFile", "TensorEntry", "open_safetensors_model", "read_json"]

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference implementation's limit
MAX_DIMS = 8

# dtype -> bytes per element (every dtype of the format, so sizes can be checked for all)
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "F4": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
# dtypes that load() converts to float32, with the numpy type read from the file
_READ_DTYPE = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}


def read_json(path: Path, what: str = "JSON file") -> object:
    """Parses a small JSON file; any problem is a CheckpointError naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: {what} is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: {what} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    except RecursionError:
        raise CheckpointError(f"{path}: {what} is nested too deeply") from None


def to_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """F32/F16 (as read) or BF16 (as uint16 bits) -> a new float32 array of the same shape."""
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)  # astype copies, so the result never pins a memory map


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    n_bytes: int
    file: Path

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


class SafetensorsFile:
    """One ``.safetensors`` file: a validated header and a read-only memory map."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tensors: dict[str, TensorEntry] = {}
        self.metadata: dict[str, str] = {}
        self._mm: Optional[mmap.mmap] = None
        try:
            fh = open(self.path, "rb")
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot open safetensors file: {e.strerror or e}") from None
        with fh:
            size = fh.seek(0, 2)
            fh.seek(0)
            if size < 8:
                raise self._fail(f"file is {size} bytes, too short for a safetensors header")
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size - 8:
                raise self._fail(f"header length {n} exceeds the {size - 8} bytes after the length field "
                                 f"(truncated or not a safetensors file)")
            if n > MAX_HEADER_BYTES:
                raise self._fail(f"header length {n} exceeds the limit of {MAX_HEADER_BYTES} bytes")
            if n < 2:
                raise self._fail(f"header length {n} is too short for a JSON object")
            header_bytes = fh.read(n)
            if len(header_bytes) != n:
                raise self._fail("file shrank while being read")
            self._parse_header(header_bytes, data_start=8 + n, data_len=size - 8 - n)
            if size > 0 and self.tensors:
                try:
                    self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                except (OSError, ValueError) as e:
                    raise self._fail(f"cannot memory-map: {e}") from None

    def _fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {what}")

    def _parse_header(self, raw: bytes, data_start: int, data_len: int) -> None:
        if raw[:1] != b"{":
            raise self._fail("header does not start with '{' (not a safetensors file)")
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except UnicodeDecodeError as e:
            raise self._fail(f"header is not valid UTF-8 ({e.reason} at byte {8 + e.start})") from None
        except json.JSONDecodeError as e:
            raise self._fail(f"header is not valid JSON: {e.msg} at byte {8 + e.pos}") from None
        except ValueError as e:  # duplicate keys
            raise self._fail(f"header has a {e}") from None
        except RecursionError:
            raise self._fail("header JSON is nested too deeply") from None
        if not isinstance(header, dict):
            raise self._fail("header is not a JSON object")
        meta = header.pop("__metadata__", None)
        if meta is not None:
            if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
                raise self._fail("__metadata__ must be an object of string values")
            self.metadata = meta
        spans = []
        for name, info in header.items():
            entry = self._entry(name, info, data_start, data_len)
            self.tensors[name] = entry
            spans.append((entry.start, entry.start + entry.n_bytes, name))
        spans.sort()
        for (_, end_a, name_a), (start_b, _, name_b) in zip(spans, spans[1:]):
            if start_b < end_a:
                raise self._fail(f"tensors {name_a!r} and {name_b!r} overlap in the data buffer")

    def _entry(self, name: str, info, data_start: int, data_len: int) -> TensorEntry:
        where = f"tensor {name!r}"
        if not isinstance(info, dict):
            raise self._fail(f"{where}: header entry is not an object")
        dtype = info.get("dtype")
        if dtype not in DTYPE_SIZES:
            raise self._fail(f"{where}: unknown dtype {dtype!r}")
        shape = info.get("shape")
        if (not isinstance(shape, list) or len(shape) > MAX_DIMS
                or not all(type(d) is int and d >= 0 for d in shape)):
            raise self._fail(f"{where}: shape {shape!r} is not a list of at most {MAX_DIMS} non-negative integers")
        offsets = info.get("data_offsets")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(o) is int and o >= 0 for o in offsets)):
            raise self._fail(f"{where}: data_offsets {offsets!r} is not a pair of non-negative integers")
        begin, end = offsets
        if begin > end:
            raise self._fail(f"{where}: data_offsets [{begin}, {end}] run backwards")
        if end > data_len:
            raise self._fail(f"{where}: data_offsets [{begin}, {end}] run past the end of the file "
                             f"(the data buffer holds {data_len} bytes; truncated?)")
        n = 1
        for d in shape:
            n *= d
        need = n * DTYPE_SIZES[dtype]
        if end - begin != need:
            raise self._fail(f"{where}: shape {shape} of {dtype} needs {need} bytes but data_offsets "
                             f"[{begin}, {end}] hold {end - begin}")
        return TensorEntry(name, dtype, tuple(shape), data_start + begin, need, self.path)

    def load(self, name: str) -> np.ndarray:
        """The tensor as a new C-contiguous float32 array."""
        entry = self.tensors.get(name)
        if entry is None:
            raise CheckpointError(f"{self.path}: no tensor {name!r}")
        read = _READ_DTYPE.get(entry.dtype)
        if read is None:
            raise self._fail(f"tensor {name!r} has dtype {entry.dtype}; only F32, F16 and BF16 are supported")
        if entry.n_bytes == 0:
            return np.zeros(entry.shape, dtype=np.float32)
        if self._mm is None:
            raise self._fail("file is closed")
        raw = np.frombuffer(self._mm, dtype=read, count=entry.n_elements, offset=entry.start)
        out = to_float32(raw, entry.dtype).reshape(entry.shape)
        del raw
        return out

    def close(self) -> None:
        close_map(self._mm)
        self._mm = None

    def __enter__(self) -> "SafetensorsFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _shard_name(index: Path, value) -> str:
    if not isinstance(value, str) or not value or "/" in value or "\\" in value or value in (".", ".."):
        raise CheckpointError(f"{index}: weight_map entry {value!r} is not a plain file name")
    return value


def open_safetensors_model(directory: Path) -> Optional[ShardedWeights]:
    """Opens the safetensors weights of a model directory; None if it has none.

    ``model.safetensors.index.json`` is authoritative when present: every shard
    it names must exist and hold the tensors mapped to it."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    files: list[SafetensorsFile] = []
    where: dict[str, SafetensorsFile] = {}
    try:
        if index.is_file():
            data = read_json(index, "safetensors index")
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index}: no 'weight_map' object of tensor name -> shard file")
            by_shard: dict[str, list[str]] = {}
            for tensor, shard in weight_map.items():
                by_shard.setdefault(_shard_name(index, shard), []).append(tensor)
            for shard, names in by_shard.items():
                p = directory / shard
                if not p.is_file():
                    raise CheckpointError(f"{index}: shard {shard} is missing from {directory} "
                                          f"(it holds {len(names)} tensors, e.g. {names[0]!r})")
                f = SafetensorsFile(p)
                files.append(f)
                for t in names:
                    if t not in f.tensors:
                        raise CheckpointError(f"{p}: tensor {t!r} is not in this shard, but {index.name} maps it here")
                    where[t] = f
            return ShardedWeights(files, where)
        if (directory / "model.safetensors").is_file():
            paths = [directory / "model.safetensors"]
        else:
            paths = sorted(directory.glob("model-*.safetensors")) or sorted(directory.glob("*.safetensors"))
        if not paths:
            return None
        for p in paths:
            f = SafetensorsFile(p)
            files.append(f)
            for t in f.tensors:
                if t in where:
                    raise CheckpointError(f"{p}: tensor {t!r} is also in {where[t].path.name}; "
                                          f"add a model.safetensors.index.json to say which shards belong to the model")
                where[t] = f
        return ShardedWeights(files, where)
    except CheckpointError:
        for f in files:
            f.close()
        raise
