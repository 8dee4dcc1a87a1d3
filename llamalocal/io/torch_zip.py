"""torch.save zip files read without torch: a restricted unpickler that only
rebuilds tensors (no arbitrary code), and the storages memory-mapped."""
from __future__ import annotations

import collections
import io
import mmap
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import CheckpointError
from ..formats import FLOAT_TYPES
from .gguf_reader import close_map
from .safetensors import to_float32
from .shards import ShardedWeights

_STORAGE_DTYPES = {  # torch storage class -> (our dtype name, numpy dtype read from the file)
    "FloatStorage": ("F32", "<f4"), "HalfStorage": ("F16", "<f2"), "BFloat16Storage": ("BF16", "<u2"),
    "DoubleStorage": ("F64", "<f8"), "LongStorage": ("I64", "<i8"), "IntStorage": ("I32", "<i4"),
    "ShortStorage": ("I16", "<i2"), "CharStorage": ("I8", "i1"), "ByteStorage": ("U8", "u1"),
    "BoolStorage": ("BOOL", "u1"),
}
_FLOAT_NAMES = tuple(t.name for t in FLOAT_TYPES)
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
        if t.dtype not in _FLOAT_NAMES:
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
