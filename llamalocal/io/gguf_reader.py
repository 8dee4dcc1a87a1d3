"""GGUF v2/v3 reader: validates the whole header, then serves tensors from a memory map.

Layout (ggml `docs/gguf.md`), all little-endian::

    "GGUF"  u32 version  u64 tensor_count  u64 kv_count
    kv_count x   (string key, u32 value_type, value)
    tensor_count x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset)
    padding to `general.alignment` (default 32)
    tensor data; each tensor at data_start + offset (offset a multiple of the alignment)

    string = u64 length + UTF-8 bytes (no NUL); array = u32 type + u64 count + values

The file is memory-mapped read-only and parsed with `struct` straight from the map.
Every count and length is checked against the bytes that remain before anything
is read or allocated, so a corrupt or hostile file fails quickly with a
`ModelFormatError` naming the file and the problem.  Tensor data is never copied:
`tensor_bytes()` returns uint8 views into the map.

Metadata values are plain Python values: str, int, float, bool; arrays of strings
(and nested arrays) are lists; arrays of numbers or bools are numpy arrays (copies,
so they do not pin the map).  Strings that are not valid UTF-8 (possible in some
tokenizer vocabularies) are decoded with ``errors="surrogateescape"``, so
``s.encode("utf-8", "surrogateescape")`` gives back the exact bytes.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFValueType

from ..errors import ModelFormatError
from ..formats import FORMATS, WEIGHT_TYPES, BlockFormat, GGMLType, block_format

__all__ = ["GGUFFile", "TensorInfo", "GGUF_MAGIC", "DEFAULT_ALIGNMENT"]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
HEADER_SIZE = 24  # magic, version, tensor_count, kv_count
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_KEY_LEN = 65535  # the spec's limit on metadata key length
MAX_TENSOR_NAME_LEN = 64  # the spec's limit on tensor name length
MAX_ARRAY_DEPTH = 4  # nested arrays deeper than this are rejected
INT64_MAX = 2**63 - 1

# Smallest possible encodings, used to reject absurd counts before looping.
# KV: key length (8) + at least 1 key byte + value type (4) + smallest value (1).
MIN_KV_BYTES = 8 + 1 + 4 + 1
# Tensor info: name length (8) + 1 name byte + n_dims (4) + one dim (8) + type (4) + offset (8).
MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8

# gguf_metadata_value_type
V = GGUFValueType
_SCALAR_STRUCT = {
    V.UINT8: struct.Struct("<B"), V.INT8: struct.Struct("<b"), V.UINT16: struct.Struct("<H"), V.INT16: struct.Struct("<h"),
    V.UINT32: struct.Struct("<I"), V.INT32: struct.Struct("<i"), V.FLOAT32: struct.Struct("<f"),
    V.BOOL: struct.Struct("<B"), V.UINT64: struct.Struct("<Q"), V.INT64: struct.Struct("<q"),
    V.FLOAT64: struct.Struct("<d"),
}
_NUMPY_DTYPE = {
    V.UINT8: np.dtype("<u1"), V.INT8: np.dtype("<i1"), V.UINT16: np.dtype("<u2"), V.INT16: np.dtype("<i2"),
    V.UINT32: np.dtype("<u4"), V.INT32: np.dtype("<i4"), V.FLOAT32: np.dtype("<f4"), V.BOOL: np.dtype("<u1"),
    V.UINT64: np.dtype("<u8"), V.INT64: np.dtype("<i8"), V.FLOAT64: np.dtype("<f8"),
}
_KNOWN_TYPES = frozenset(int(t) for t in V)
_INTEGER_TYPES = (V.UINT8, V.INT8, V.UINT16, V.INT16, V.UINT32, V.INT32, V.UINT64, V.INT64)
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_HEADER = struct.Struct("<4sIQQ")

# ggml type ids that exist but that llamalocal cannot read: names for error messages only
# (sizes of the supported ones live in formats/blocks.py).
_OTHER_GGML_TYPE_NAMES = {
    4: "Q4_2 (removed)", 5: "Q4_3 (removed)", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S",
    20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64",
    28: "F64", 29: "IQ1_M", 31: "Q4_0_4_4 (removed)", 32: "Q4_0_4_8 (removed)", 33: "Q4_0_8_8 (removed)",
    34: "TQ1_0", 35: "TQ2_0", 36: "IQ4_NL_4_4 (removed)", 37: "IQ4_NL_4_8 (removed)",
    38: "IQ4_NL_8_8 (removed)", 39: "MXFP4",
}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file.  `shape` is in ggml order (ne0 = row length first)."""

    name: str
    shape: tuple[int, ...]
    type: GGMLType
    offset: int  # absolute byte offset in the file
    n_bytes: int
    _file: "GGUFFile | None" = field(default=None, repr=False, compare=False)

    @property
    def np_shape(self) -> tuple[int, ...]:
        """numpy (C) order: (rows, row_len) for a matrix."""
        return tuple(reversed(self.shape))

    @property
    def n_dims(self) -> int:
        return len(self.shape)

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def format(self) -> BlockFormat:
        return FORMATS[self.type]

    @property
    def row_bytes(self) -> int:
        return self.format.row_bytes(self.shape[0])

    @property
    def n_rows(self) -> int:
        return self.n_elements // self.shape[0]

    def data(self) -> np.ndarray:
        """Zero-copy uint8 view of the raw data: (rows, row_bytes), or (n_bytes,) for a 1-D tensor."""
        if self._file is None:
            raise ValueError(f"tensor {self.name!r} is not attached to an open GGUF file")
        return self._file.tensor_bytes(self.name)


class HeaderParser:
    """Bounded reads from a mapped header; every failure is a ModelFormatError naming the file."""

    __slots__ = ("buf", "pos", "end", "label")

    def __init__(self, buf, end: int, label: str):
        self.buf = buf
        self.pos = 0
        self.end = end
        self.label = label

    def fail(self, what: str) -> ModelFormatError:
        return ModelFormatError(f"{self.label}: {what}")

    def need(self, n: int, what: str) -> None:
        if n > self.end - self.pos:
            raise self.fail(f"{what} at offset {self.pos} needs {n} bytes but only {self.end - self.pos} remain "
                            f"(file is {self.end} bytes; truncated or corrupt)")

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def raw_string(self, what: str, max_len: int | None = None) -> bytes:
        start = self.pos
        n = self.u64(f"length of {what}")
        if max_len is not None and n > max_len:
            raise self.fail(f"{what} at offset {start} is {n} bytes long (the limit is {max_len})")
        if n > self.end - self.pos:
            raise self.fail(f"{what} at offset {start} claims {n} bytes but only {self.end - self.pos} remain "
                            f"(file is {self.end} bytes)")
        s = self.buf[self.pos:self.pos + n]
        self.pos += n
        return s

    def string(self, what: str, max_len: int | None = None) -> str:
        return _decode(self.raw_string(what, max_len))

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        st = _SCALAR_STRUCT.get(vtype)
        if st is not None:
            self.need(st.size, what)
            (v,) = st.unpack_from(self.buf, self.pos)
            if vtype == V.BOOL:
                if v > 1:
                    raise self.fail(f"{what} at offset {self.pos} is a bool with invalid value {v} (must be 0 or 1)")
                v = bool(v)
            self.pos += st.size
            return v
        if vtype == V.STRING:
            return self.string(what)
        if vtype == V.ARRAY:
            return self.array(what, depth + 1)
        raise self.fail(f"{what} at offset {self.pos - 4} has unknown value type {vtype}")

    def array(self, what: str, depth: int) -> Any:
        start = self.pos
        if depth > MAX_ARRAY_DEPTH:
            raise self.fail(f"{what} at offset {start}: arrays nested more than {MAX_ARRAY_DEPTH} deep")
        etype = self.u32(f"element type of array {what}")
        count = self.u64(f"length of array {what}")
        if etype in _NUMPY_DTYPE:
            min_size = _NUMPY_DTYPE[etype].itemsize
        elif etype == V.STRING:
            min_size = 8
        elif etype == V.ARRAY:
            min_size = 12
        else:
            raise self.fail(f"array {what} at offset {start} has unknown element type {etype}")
        remaining = self.end - self.pos
        if count > remaining // min_size:
            raise self.fail(f"array {what} at offset {start} claims {count} elements of type "
                            f"{V(etype).name} (at least {min_size} bytes each) but only {remaining} bytes "
                            f"remain (file is {self.end} bytes)")
        if etype in _NUMPY_DTYPE:
            dt = _NUMPY_DTYPE[etype]
            arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos).astype(dt.newbyteorder("="))
            self.pos += count * dt.itemsize
            if etype == V.BOOL:
                if count and arr.max() > 1:
                    raise self.fail(f"bool array {what} at offset {start} holds values other than 0 and 1")
                arr = arr.astype(bool)
            return arr
        if etype == V.STRING:
            return self._string_array(count, what)
        return [self.array(f"{what}[{i}]", depth + 1) for i in range(count)]

    def _string_array(self, count: int, what: str) -> list[str]:
        buf, end, unpack = self.buf, self.end, _U64.unpack_from
        pos = self.pos
        out: list[str] = []
        append = out.append
        for i in range(count):
            if end - pos < 8:
                self.pos = pos
                self.need(8, f"length of {what}[{i}]")
            (n,) = unpack(buf, pos)
            pos += 8
            if n > end - pos:
                raise self.fail(f"string {what}[{i}] at offset {pos - 8} claims {n} bytes but only {end - pos} "
                                f"remain (file is {end} bytes)")
            b = buf[pos:pos + n]
            pos += n
            try:
                append(b.decode("utf-8"))
            except UnicodeDecodeError:
                append(b.decode("utf-8", "surrogateescape"))
        self.pos = pos
        return out


def _decode(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b.decode("utf-8", "surrogateescape")


def _type_name(type_id: int) -> str:
    try:
        return GGMLType(type_id).name
    except ValueError:
        return _OTHER_GGML_TYPE_NAMES.get(type_id, "unknown")


def close_map(mm: "mmap.mmap | None") -> None:
    """Closes a file map unless numpy views still use it; then it is unmapped when the last is collected."""
    if mm is not None:
        try:
            mm.close()
        except BufferError:
            pass


def release_pages(a: np.ndarray) -> None:
    """Drops the pages of `a`, a view of a file map, from this process's memory:
    they stay in the page cache, and reading `a` maps them back in.  Arrays not
    over a file map are left alone (on private memory MADV_DONTNEED would zero
    them), as are the partial pages at either end, which neighbours share."""
    base = a
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    mm = base.obj if isinstance(base, memoryview) else base
    if not isinstance(mm, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED") or mm.closed:
        return
    start = a.ctypes.data - np.frombuffer(mm, dtype=np.uint8).ctypes.data
    page = mmap.PAGESIZE
    lo, hi = -(-start // page) * page, (start + a.nbytes) // page * page
    if 0 <= lo < hi <= len(mm):
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


class MappedFile:
    """A model file read through a memory map (`_mm`, and `_base`, the array over
    it): its lifetime and its metadata, GGUF's keys (`metadata`)."""

    _mm: "mmap.mmap | None"
    _label: str
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]

    def tensor(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self._label}: no tensor named {name!r}") from None

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def __contains__(self, key: str) -> bool:
        """Whether metadata key `key` is present (tensors: `name in f.tensors`)."""
        return key in self.metadata

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    @property
    def name(self) -> str | None:
        return self.metadata.get("general.name")

    def arch_get(self, suffix: str, default: Any = None) -> Any:
        """Value of `{architecture}.{suffix}`, e.g. arch_get("attention.head_count")."""
        arch = self.architecture
        if arch is None:
            return default
        return self.metadata.get(f"{arch}.{suffix}", default)

    def close(self) -> None:
        """Release the map.  Views handed out earlier stay valid; the map is unmapped when the last one dies."""
        self._base = None
        mm, self._mm = self._mm, None
        close_map(mm)

    @property
    def closed(self) -> bool:
        return self._mm is None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class GGUFFile(MappedFile):
    """A validated, memory-mapped GGUF file.

    >>> with GGUFFile("model.gguf") as f:
    ...     f.architecture, f.arch_get("block_count"), f.tensors["output_norm.weight"].shape
    """

    format_name = "gguf"  # as LoadedModel.format reports it

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._label = str(path)
        self._mm: mmap.mmap | None = None
        self._base: np.ndarray | None = None
        self.metadata: dict[str, Any] = {}
        self.value_types: dict[str, int] = {}  # key -> GGUF value type id, so metadata can be copied faithfully
        self.tensors: dict[str, TensorInfo] = {}
        # A missing or unreadable file raises OSError (FileNotFoundError, ...), not ModelFormatError.
        with open(self.path, "rb") as fh:
            self.file_size = os.fstat(fh.fileno()).st_size
            if self.file_size < HEADER_SIZE:  # also avoids mmap's error on empty files
                raise ModelFormatError(f"{self._label}: file is {self.file_size} bytes, too small for a GGUF "
                                       f"header ({HEADER_SIZE} bytes)")
            self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        # The file may have changed between stat and mmap; the map is the truth.
        self.file_size = len(self._mm)
        try:
            self._parse()
        except BaseException:
            self.close()
            raise
        self._base = np.frombuffer(self._mm, dtype=np.uint8)

    # -- parsing -------------------------------------------------------------------------------------

    def _parse(self) -> None:
        p = HeaderParser(self._mm, self.file_size, self._label)
        if self.file_size < HEADER_SIZE:
            raise p.fail(f"file is {self.file_size} bytes, too small for a GGUF header ({HEADER_SIZE} bytes)")
        magic, version, n_tensors, n_kv = _HEADER.unpack_from(self._mm, 0)
        if magic != GGUF_MAGIC:
            raise p.fail(f"not a GGUF file (magic bytes {magic!r}, expected {GGUF_MAGIC!r})")
        if version not in SUPPORTED_VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            if version & 0xFFFF == 0 and swapped in (1, 2, 3):
                raise p.fail(f"big-endian GGUF file (version field reads {swapped} big-endian); "
                             f"only little-endian GGUF files are supported")
            if version == 1:
                raise p.fail("GGUF version 1 is not supported (it uses 32-bit counts; versions 2 and 3 are "
                             "supported); re-convert the model with a current converter")
            raise p.fail(f"unsupported GGUF version {version} (supported: 2, 3)")
        self.version = version
        p.pos = HEADER_SIZE
        body = self.file_size - HEADER_SIZE
        # Reject absurd counts before looping over them: every entry needs a minimum number of bytes.
        if n_kv > body // MIN_KV_BYTES:
            raise p.fail(f"header claims {n_kv} metadata entries but the file ({self.file_size} bytes) can hold "
                         f"at most {body // MIN_KV_BYTES}")
        if n_tensors > body // MIN_TENSOR_INFO_BYTES:
            raise p.fail(f"header claims {n_tensors} tensors but the file ({self.file_size} bytes) can hold "
                         f"at most {body // MIN_TENSOR_INFO_BYTES}")
        if n_kv * MIN_KV_BYTES + n_tensors * MIN_TENSOR_INFO_BYTES > body:
            raise p.fail(f"header claims {n_kv} metadata entries and {n_tensors} tensors, more than the file "
                         f"({self.file_size} bytes) can hold")
        self.n_kv = n_kv
        self.n_tensors = n_tensors

        meta: dict[str, Any] = {}
        for i in range(n_kv):
            at = p.pos
            key = p.string(f"key of metadata entry #{i}", MAX_KEY_LEN)
            if not key:
                raise p.fail(f"metadata entry #{i} at offset {at} has an empty key")
            if key in meta:
                raise p.fail(f"duplicate metadata key {key!r} (entry #{i} at offset {at})")
            vtype = p.u32(f"value type of metadata key {key!r}")
            if vtype not in _KNOWN_TYPES:
                raise p.fail(f"metadata key {key!r} (offset {at}) has unknown value type {vtype}")
            meta[key] = p.value(vtype, f"value of metadata key {key!r}")
            self.value_types[key] = vtype
            if key == "general.alignment" and vtype not in _INTEGER_TYPES:
                raise p.fail(f"general.alignment has type {V(vtype).name}, expected an integer")
        self.metadata = meta

        alignment = meta.get("general.alignment", DEFAULT_ALIGNMENT)
        if alignment <= 0 or alignment & (alignment - 1):
            raise p.fail(f"general.alignment = {alignment} is not a power of two")
        self.alignment = int(alignment)

        raw: list[tuple[str, tuple[int, ...], GGMLType, int, int, int]] = []
        seen: set[str] = set()
        for i in range(n_tensors):
            at = p.pos
            name = p.string(f"name of tensor #{i}", MAX_TENSOR_NAME_LEN)
            if not name:
                raise p.fail(f"tensor #{i} at offset {at} has an empty name")
            if name in seen:
                raise p.fail(f"duplicate tensor name {name!r} (tensor #{i} at offset {at})")
            seen.add(name)
            what = f"tensor {name!r}"
            n_dims = p.u32(f"dimension count of {what}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise p.fail(f"{what} has {n_dims} dimensions (must be 1..{MAX_DIMS})")
            p.need(8 * n_dims, f"dimensions of {what}")
            dims = struct.unpack_from(f"<{n_dims}Q", self._mm, p.pos)
            p.pos += 8 * n_dims
            type_id = p.u32(f"type of {what}")
            rel = p.u64(f"data offset of {what}")
            n_el = 1
            for d in dims:
                if d == 0:
                    raise p.fail(f"{what} has a zero dimension (shape {list(dims)})")
                n_el *= d
                if n_el > INT64_MAX:
                    raise p.fail(f"{what} shape {list(dims)} has more than 2**63-1 elements")
            try:
                gtype = GGMLType(type_id)
            except ValueError:
                gtype = None
            if gtype is None or gtype not in WEIGHT_TYPES:
                name_t = _type_name(type_id)
                why = "an activation-only format" if gtype is not None else "not supported by llamalocal"
                raise p.fail(f"{what} has tensor type {name_t} (id {type_id}), {why}")
            fmt = block_format(gtype)
            if dims[0] % fmt.block_size:
                raise p.fail(f"{what} ({fmt.name}) has row length ne0={dims[0]}, not a multiple of the "
                             f"{fmt.name} block size {fmt.block_size}")
            n_bytes = n_el // fmt.block_size * fmt.type_size
            if rel % self.alignment:
                raise p.fail(f"{what} data offset {rel} is not a multiple of the alignment {self.alignment}")
            raw.append((name, tuple(int(d) for d in dims), gtype, rel, n_bytes, at))

        self.data_offset = -(-p.pos // self.alignment) * self.alignment
        tensors: dict[str, TensorInfo] = {}
        for name, dims, gtype, rel, n_bytes, _ in raw:
            off = self.data_offset + rel
            if off + n_bytes > self.file_size:
                raise p.fail(f"tensor {name!r} data [offset {off}, {n_bytes} bytes] runs past the end of the file "
                             f"({self.file_size} bytes)")
            tensors[name] = TensorInfo(name, dims, gtype, off, n_bytes, self)
        by_offset = sorted(tensors.values(), key=lambda t: t.offset)
        for a, b in zip(by_offset, by_offset[1:]):
            if a.offset + a.n_bytes > b.offset:
                raise p.fail(f"tensors {a.name!r} [offset {a.offset}, {a.n_bytes} bytes] and {b.name!r} "
                             f"[offset {b.offset}, {b.n_bytes} bytes] overlap")
        self.tensors = tensors

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.tensors)} tensors, {len(self.metadata)} keys"
        return f"<GGUFFile {self._label!r} v{getattr(self, 'version', '?')} {state}>"

    # -- tensors --------------------------------------------------------------------------------------

    def tensor_bytes(self, name: str) -> np.ndarray:
        """Zero-copy, read-only uint8 view: (rows, row_bytes), or (n_bytes,) for a 1-D tensor."""
        t = self.tensor(name)
        if self._base is None:
            raise ValueError(f"{self._label}: file is closed")
        flat = self._base[t.offset:t.offset + t.n_bytes]
        if t.n_dims == 1:
            return flat
        return flat.reshape(t.n_rows, t.row_bytes)

    def tensor_array(self, name: str, dequantize: bool = False) -> np.ndarray:
        """F32 tensors: a zero-copy float32 view in numpy order (`np_shape`).

        Other types raise TypeError unless `dequantize=True`, which returns a new
        float32 array decoded by `formats.quants.dequantize`.
        """
        t = self.tensor(name)
        raw = self.tensor_bytes(name)
        if t.type == GGMLType.F32:
            return raw.reshape(-1).view("<f4").reshape(t.np_shape)
        if not dequantize:
            raise TypeError(f"{self._label}: tensor {name!r} is {t.type.name}, not F32; "
                            f"pass dequantize=True to get a dequantized float32 copy")
        from ..formats.quants import dequantize as _dequantize

        return _dequantize(raw, t.type).reshape(t.np_shape)
