"""Pre-GGUF llama.cpp model files (March-August 2023), read as if they were GGUF.

Five formats came before GGUF; all are little-endian and start alike::

    u32 magic   'ggml' 0x67676d6c (unversioned: alpaca.cpp), 'ggmf' 0x67676d66 (v1), 'ggjt' 0x67676a74 (v1, v2, v3)
    u32 version (not in unversioned 'ggml' files)
    7 x i32     n_vocab, n_embd, n_mult, n_head, n_layer, n_rot, ftype
    n_vocab x   (u32 len, len bytes[, f32 score])      scores from 'ggmf' on
    until EOF   i32 n_dims, i32 name_len, i32 type, i32 ne[n_dims] (ne0 = row length), name,
                ['ggjt': zero padding to a multiple of 32 bytes from the start of the file], data

The block layouts changed with the versions (type ids are today's: 0 F32, 1 F16,
2 Q4_0, 3 Q4_1, 4 Q4_2, 6 Q5_0, 7 Q5_1, 8 Q8_0; blocks of 32 weights):

    format      Q4_0 / Q4_1 / Q8_0 scales   Q4 / Q5 nibbles                       other
    ggml, ggmf  f32 (Q8_0 did not exist)    pairs: byte j = elements 2j, 2j+1    F32, F16, Q4_0, Q4_1 only
    ggjt v1     f32                         pairs                                Q4_2, Q5_0, Q5_1, Q8_0 added
    ggjt v2     f32                         split halves: byte j = j, j + 16     Q4_2 removed
    ggjt v3     f16 (today's layouts)       split halves

Older blocks are converted once, here, to today's layouts, so the kernels run
them: the quant values are kept exactly and f32 scales are rounded to f16 (the
one loss, reported in `warnings`).  Q4_2 (ggjt v1 only: blocks of 16, f16 d, 8 bytes of
nibble pairs, d*(q-8)) has no exact image in today's block formats: its values (exact in
f32: an 11-bit d times |q-8| <= 8) become F16 if all of a tensor's are exact in f16, else
F32 (3.2x or 6.4x its size, reported).  Tensors that need no conversion (F32, F16, every
ggjt v3 type) stay views into the map.

What a file does not store is assumed as its era's llama.cpp did (see
`../shared/legacy/*/expected.json`): n_ff = ((2*(4*n_embd)/3 + n_mult - 1) /
n_mult) * n_mult, RoPE over the whole head (n_embd / n_head, adjacent pairs)
with base 10000, BOS 1, EOS 2, a space prepended to the prompt, RMSNorm eps
1e-6 (hard-coded in ggml until ggjt v3's time; the ground truth documents it
for unversioned files, llama.cpp's history for ggmf and ggjt v1/v2) or 5e-6
(ggjt v3's default, LLAMA_DEFAULT_RMS_EPS); eps and RoPE
base can be overridden, as `--rms-norm-eps` / `--rope-freq-base` did.  The
vocabulary becomes a SentencePiece ('llama') vocabulary: pieces with ' ' as
U+2581 again, <unk>, <s>, </s> and the <0xNN> byte pieces restored; unversioned
files store no scores, so each piece scores -id (SentencePiece's BPE order).

Split checkpoints (x.bin, x.bin.1, ...: LLaMA 13B-65B as llama.cpp's first converter wrote
them, unversioned ggml and ggmf v1) are read as one model: the parts are counted as the
April 2023 loader did (n_embd / the first part's tok_embeddings row length), each repeats
the header and vocabulary, and each 2-D tensor is split by columns or by rows (layout and
history in `legacy_parts.py`); the assembled tensors are held in memory.  A ggjt file
holding a part is refused (ggjt was always written whole); a whole file is one model
whatever lies beside it (a sibling x.bin.1 is noted in `warnings`).

Every count, length and offset is checked against each file before use; each
problem is one `ModelFormatError` naming the file and what is wrong.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from gguf import GGUFValueType as V

from ..errors import ModelFormatError
from ..formats import GGMLType
from .gguf_reader import GGUF_MAGIC, GGUFFile, HeaderParser, MappedFile, TensorInfo
from .legacy_parts import (
    MAX_PARTS,
    PartMap,
    assemble,
    check_part_header,
    count_parts,
    part_path,
    part_shape,
    split_by_columns,
    split_kind,
)

__all__ = ["ERAS", "LegacyGGMLFile", "legacy_format", "legacy_n_ff"]

# The u32 magics as they appear on disk (little-endian).
_MAGICS = {b"lmgg": "ggml", b"fmgg": "ggmf", b"tjgg": "ggjt"}
ALIGNMENT = 32  # ggjt tensor data
CONTEXT_LENGTH = 2048  # not stored; LLaMA 1's, as llama.cpp's ggml-to-gguf converter assumed
ROPE_BASE = 10000.0
BOS, EOS, UNK = 1, 2, 0
MAX_VOCAB = 1 << 22  # an n_vocab above this is not a LLaMA vocabulary
MAX_PIECE_BYTES = 1 << 16
MAX_NAME_BYTES = 512
MAX_LAYERS = 4096
_I32 = struct.Struct("<i")
_F32 = struct.Struct("<f")

# token types (llama.cpp's)
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6


@dataclass(frozen=True)
class Era:
    """One format: its container and block layouts, and the constants its llama.cpp assumed."""

    name: str
    scores: bool  # the vocabulary stores an f32 score per piece
    aligned: bool  # tensor data starts at a multiple of 32 bytes
    f32_scales: bool  # Q4_0 / Q4_1 / Q8_0 block scales are f32 (today's: f16)
    pairs: bool  # Q4 / Q5 nibbles in pairs (byte j = elements 2j, 2j+1), not split halves
    types: frozenset  # tensor type ids the era wrote
    rms_norm_eps: float
    split: bool  # the era wrote split (multi-part) checkpoints: x.bin, x.bin.1, ... (io/legacy_parts.py)


_OLD = frozenset({0, 1, 2, 3})
_GGJT = frozenset({0, 1, 2, 3, 6, 7, 8})
ERAS = {
    ("ggml", None): Era("ggml (unversioned)", False, False, True, True, _OLD, 1e-6, True),
    ("ggmf", 1): Era("ggmf v1", True, False, True, True, _OLD, 1e-6, True),
    ("ggjt", 1): Era("ggjt v1", True, True, True, True, _GGJT | {4}, 1e-6, False),
    ("ggjt", 2): Era("ggjt v2", True, True, True, False, _GGJT, 1e-6, False),
    ("ggjt", 3): Era("ggjt v3", True, True, False, False, _GGJT, 5e-6, False),
}

# Bytes per block as each era stores it: (f32-scale eras, f16-scale eras); blocks of 32 weights, Q4_2's of 16.
_SRC_BLOCK = {2: (20, 18), 3: (24, 20), 4: (10, 10), 6: (22, 22), 7: (24, 24), 8: (36, 34)}
_QK = {4: 16}
_DST_BLOCK = {2: 18, 3: 20, 6: 22, 7: 24, 8: 34}
_N_SCALES = {2: 1, 3: 2, 6: 1, 7: 2, 8: 1}  # d (and m) before the quants
_TYPE_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 4: "Q4_2", 5: "Q4_3", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0"}

# Tensor names: the original checkpoint's (Meta's) -> GGUF's.
_GLOBAL_NAMES = {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
                 "output.weight": "output.weight"}
_LAYER_NAMES = {"attention.wq.weight": "attn_q.weight", "attention.wk.weight": "attn_k.weight",
                "attention.wv.weight": "attn_v.weight", "attention.wo.weight": "attn_output.weight",
                "attention_norm.weight": "attn_norm.weight", "ffn_norm.weight": "ffn_norm.weight",
                "feed_forward.w1.weight": "ffn_gate.weight", "feed_forward.w2.weight": "ffn_down.weight",
                "feed_forward.w3.weight": "ffn_up.weight"}


def legacy_format(head: bytes) -> str | None:
    """'ggml', 'ggmf' or 'ggjt' for a file starting with `head` (its first 4 bytes), else None."""
    return _MAGICS.get(bytes(head[:4]))


def open_model_file(path: str | os.PathLike[str]) -> GGUFFile | LegacyGGMLFile | None:
    """A GGUF file, or a pre-GGUF one read as the GGUF it converts to, told apart
    by the magic whatever the file is called; None for any other file."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == GGUF_MAGIC:
        return GGUFFile(path)
    return LegacyGGMLFile(path) if legacy_format(head) else None


def legacy_n_ff(n_embd: int, n_mult: int) -> int:
    """The feed-forward size every pre-GGUF llama.cpp derived from n_mult (integer arithmetic)."""
    return ((2 * (4 * n_embd) // 3 + n_mult - 1) // n_mult) * n_mult


def _full_shapes(hp: dict[str, int], n_ff: int) -> dict[str, tuple[int, ...]]:
    """Every tensor a LLaMA of these hyperparameters has (GGUF names) -> its shape (ggml order)."""
    n_embd, n_vocab = hp["n_embd"], hp["n_vocab"]
    want = {"token_embd.weight": (n_embd, n_vocab), "output_norm.weight": (n_embd,), "output.weight": (n_embd, n_vocab)}
    per_layer = {"attn_q.weight": (n_embd, n_embd), "attn_k.weight": (n_embd, n_embd),
                 "attn_v.weight": (n_embd, n_embd), "attn_output.weight": (n_embd, n_embd),
                 "attn_norm.weight": (n_embd,), "ffn_norm.weight": (n_embd,), "ffn_gate.weight": (n_embd, n_ff),
                 "ffn_up.weight": (n_embd, n_ff), "ffn_down.weight": (n_ff, n_embd)}
    for i in range(hp["n_layer"]):
        want.update({f"blk.{i}.{k}": v for k, v in per_layer.items()})
    return want


class _Raw(NamedTuple):
    """A tensor as one file stores it: its name there, shape (ggml order), type id, data offset and size."""

    src: str
    ne: tuple[int, ...]
    type_id: int
    off: int
    n_bytes: int


def gguf_tensor_name(name: str) -> str | None:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "layers" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
        return f"blk.{int(parts[1])}.{_LAYER_NAMES[parts[2]]}"
    return None


class _Reader(HeaderParser):
    """GGUF's bounded reads, and the signed and float fields of the older headers."""

    __slots__ = ()

    def _unpack(self, st: struct.Struct, what: str):
        self.need(st.size, what)
        (v,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return v

    def i32(self, what: str) -> int:
        return self._unpack(_I32, what)

    def f32(self, what: str) -> float:
        return self._unpack(_F32, what)

    def take(self, n: int, what: str) -> bytes:
        self.need(n, what)
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b


class LegacyGGMLFile(MappedFile):
    """A validated, memory-mapped pre-GGUF file with GGUFFile's interface: `metadata` (GGUF keys, llama
    architecture), `value_types`, `tensors` (GGUF names), `tensor_bytes`, `tensor_array`, `close`.

    >>> with LegacyGGMLFile("ggml-alpaca-7b-q4.bin") as f:
    ...     f.format_name, f.metadata["llama.feed_forward_length"], f.warnings
    """

    alignment = ALIGNMENT

    def __init__(self, path: str | os.PathLike[str], rms_norm_eps: float | None = None,
                 rope_freq_base: float | None = None):
        self.path = Path(path)
        self._label = str(path)
        self._mm: mmap.mmap | None = None
        self._base: np.ndarray | None = None
        self._converted: dict[str, np.ndarray] = {}  # GGUF name -> today's blocks, (rows, row_bytes)
        self.metadata: dict[str, Any] = {}
        self.value_types: dict[str, int] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self.warnings: list[str] = []
        self.parts: list[Path] = [self.path]  # x.bin, x.bin.1, ... of a split checkpoint
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 4 + 7 * 4:
                raise ModelFormatError(f"{self._label}: file is {size} bytes, too small for a ggml/ggmf/ggjt header")
            self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self.file_size = len(self._mm)
        try:
            self._base = np.frombuffer(self._mm, dtype=np.uint8)
            self._parse(rms_norm_eps, rope_freq_base)
        except BaseException:
            self.close()
            raise

    # -- parsing ------------------------------------------------------------------------------------

    def _parse(self, rms_norm_eps: float | None, rope_freq_base: float | None) -> None:
        r = _Reader(self._mm, len(self._mm), self._label)
        magic = legacy_format(r.take(4, "magic"))
        if magic is None:
            raise r.fail(f"not a ggml/ggmf/ggjt model file (magic bytes {bytes(self._mm[:4])!r})")
        version = None if magic == "ggml" else r.u32("format version")
        era = ERAS.get((magic, version))
        if era is None:
            known = ", ".join(f"{m} v{v}" for m, v in ERAS if v is not None)
            raise r.fail(f"unknown {magic!r} format version {version} (known: ggml unversioned, {known})")
        self.era = era
        self.format_name = era.name
        self.version = version
        hp_at = r.pos
        names = ("n_vocab", "n_embd", "n_mult", "n_head", "n_layer", "n_rot", "ftype")
        hp = {k: r.i32(f"hyperparameter {k}") for k in names}
        self.hparams = hp
        self._check_hparams(r, hp)
        tokens, scores, types = self._read_vocab(r, hp["n_vocab"])
        header_end = r.pos
        n_ff = legacy_n_ff(hp["n_embd"], hp["n_mult"])
        want = _full_shapes(hp, n_ff)
        raw = self._scan_tensors(r, want)
        tok = raw.get("token_embd.weight")
        n_parts = count_parts(tok.ne if tok else None, hp["n_embd"])
        why = f"n_embd {hp['n_embd']} / tok_embeddings rows of {tok.ne[0] if tok else '?'} weights in {self.path.name}"
        if n_parts > 1 and not era.split:
            raise r.fail(f"holds a part of a split checkpoint ({why} = {n_parts} parts), which {era.name} files never "
                         f"were (always written whole); split checkpoints are read for ggml (unversioned) and ggmf v1")
        stem, _, k = self.path.name.rpartition(".")
        if n_parts > 1 and k.isdigit() and (self.path.parent / stem).is_file():
            raise r.fail(f"is part {int(k) + 1} of the split checkpoint {stem} ({why} = {n_parts} parts): open {stem}")
        if n_parts > MAX_PARTS:
            raise r.fail(f"{why}: {n_parts} parts is absurd (limit {MAX_PARTS})")
        self.parts = [part_path(self.path, i) for i in range(n_parts)]
        self._check_shapes(raw, want, hp, n_ff, self._label, n_parts, 0)
        self._scaled: dict[str, float] = {}  # tensors whose f32 block scales became f16 -> largest relative change
        self._widened: dict[str, tuple[int, int]] = {}  # Q4_2 tensors -> (their bytes, the F16/F32 bytes)
        if n_parts == 1:
            for name, t in raw.items():
                self._add(name, t, self._base[t.off:t.off + t.n_bytes], mapped=True)
        else:
            self._read_parts(raw, want, hp, n_ff, header_end, hp_at, why)
        beside = part_path(self.path, n_parts)
        if beside.exists():  # as that era's llama.cpp, which counted the parts the same way, ignored it
            held = "a whole model" if n_parts == 1 else f"part 1 of {n_parts}"
            self.warnings.append(f"{beside.name} is beside it but not read: {self.path.name} is {held} ({why})")
        if self._scaled:
            kinds = sorted({self.tensors[n].type.name for n in self._scaled})
            self.warnings.append(
                f"{self.path.name}: {len(self._scaled)} {'/'.join(kinds)} tensors of this {era.name} file store f32 "
                f"block scales; converted to today's layout with f16 scales (quant values kept exactly, largest "
                f"relative change of a scale in f16's normal range {max(self._scaled.values()):.2g})")
        if self._widened:
            counts = {k: sum(self.tensors[n].type.name == k for n in self._widened) for k in ("F16", "F32")}
            src, dst = (sum(v[i] for v in self._widened.values()) / 2**20 for i in (0, 1))
            self.warnings.append(
                f"{self.path.name}: {len(self._widened)} Q4_2 tensors (blocks of 16, which no format of today "
                f"holds exactly) converted to their exact values, {counts['F16']} as F16 and {counts['F32']} as F32: "
                f"{src:.1f} MiB became {dst:.1f} MiB")
        eps = era.rms_norm_eps if rms_norm_eps is None else float(rms_norm_eps)
        base = ROPE_BASE if rope_freq_base is None else float(rope_freq_base)
        self._set_metadata(hp, n_ff, eps, base, tokens, scores, types)

    def _check_hparams(self, r: _Reader, hp: dict[str, int]) -> None:
        for k in ("n_vocab", "n_embd", "n_mult", "n_head", "n_layer"):
            if hp[k] <= 0:
                raise r.fail(f"hyperparameter {k} = {hp[k]} must be positive")
        min_entry = 4 + (4 if self.era.scores else 0)
        room = (r.end - r.pos) // min_entry
        if hp["n_vocab"] > min(MAX_VOCAB, room):
            raise r.fail(f"n_vocab = {hp['n_vocab']} is absurd: the file has room for at most {room} vocabulary "
                         f"entries (limit {MAX_VOCAB})")
        if hp["n_layer"] > MAX_LAYERS:
            raise r.fail(f"n_layer = {hp['n_layer']} is absurd (limit {MAX_LAYERS})")
        if hp["n_embd"] % hp["n_head"]:
            raise r.fail(f"n_embd = {hp['n_embd']} is not a multiple of n_head = {hp['n_head']}")
        if hp["n_embd"] > 1 << 20 or hp["n_mult"] > 1 << 20:
            raise r.fail(f"n_embd = {hp['n_embd']}, n_mult = {hp['n_mult']}: absurd sizes")

    def _read_vocab(self, r: _Reader, n_vocab: int):
        tokens: list[str] = []
        scores = np.zeros(n_vocab, dtype=np.float32)
        types = np.full(n_vocab, _NORMAL, dtype=np.int32)
        for i in range(n_vocab):
            n = r.u32(f"length of vocabulary entry #{i}")
            if n > MAX_PIECE_BYTES:
                raise r.fail(f"vocabulary entry #{i} at offset {r.pos - 4} claims {n} bytes (limit {MAX_PIECE_BYTES})")
            b = bytes(r.take(n, f"vocabulary entry #{i}"))
            scores[i] = r.f32(f"score of vocabulary entry #{i}") if self.era.scores else -float(i)
            text, types[i] = _piece(i, b)
            tokens.append(text)
        if not self.era.scores:
            scores[types != _NORMAL] = 0.0
        return tokens, scores, types

    def _scan_tensors(self, r: _Reader, want: dict[str, tuple[int, ...]]) -> dict[str, _Raw]:
        """Every tensor header of one file (from r.pos to its end), checked against the file: GGUF name -> _Raw."""
        era = self.era
        out: dict[str, _Raw] = {}
        while r.pos < r.end:
            at = r.pos
            n_dims = r.i32("tensor header (n_dims)")
            name_len = r.i32("tensor header (name length)")
            type_id = r.i32("tensor header (type)")
            if not 1 <= n_dims <= 4:
                raise r.fail(f"tensor header at offset {at}: {n_dims} dimensions (must be 1..4)")
            if not 1 <= name_len <= MAX_NAME_BYTES:
                raise r.fail(f"tensor header at offset {at}: name length {name_len} (must be 1..{MAX_NAME_BYTES})")
            ne = tuple(r.i32(f"dimension {k} of the tensor at offset {at}") for k in range(n_dims))
            raw_name = bytes(r.take(name_len, f"name of the tensor at offset {at}"))
            try:
                src_name = raw_name.decode("utf-8")
            except UnicodeDecodeError:
                raise r.fail(f"tensor at offset {at} has a name that is not UTF-8: {raw_name[:40]!r}") from None
            what = f"tensor {src_name!r}"
            if type_id not in era.types:
                tname = _TYPE_NAMES.get(type_id, "unknown")
                raise r.fail(f"{what} has tensor type id {type_id} ({tname}), not one a {era.name} file holds "
                             f"({', '.join(_TYPE_NAMES[t] for t in sorted(era.types))})")
            if any(d <= 0 for d in ne):
                raise r.fail(f"{what} has a non-positive dimension (ne = {list(ne)})")
            name = gguf_tensor_name(src_name)
            if name is None:
                raise r.fail(f"{what} is not a LLaMA tensor name this loader knows")
            if name in out:
                raise r.fail(f"{what} appears twice")
            n_el = 1
            for d in ne:
                n_el *= d
            qk = _QK.get(type_id, 32)
            if type_id >= 2 and ne[0] % qk:
                full = want.get(name, ne)
                if len(ne) == 2 == len(full) and split_by_columns(name) and ne[0] < full[0] and full[0] % ne[0] == 0:
                    raise r.fail(f"{what} ({_TYPE_NAMES[type_id]}) holds {ne[0]} of the {full[0]} weights of each row: "
                                 f"a column slice of a {full[0] // ne[0]}-part split checkpoint that does not end at "
                                 f"a {qk}-weight block boundary (each part's rows must be whole blocks)")
                raise r.fail(f"{what} ({_TYPE_NAMES[type_id]}) has row length {ne[0]}, not a multiple of {qk}")
            if era.aligned:
                r.pos += -r.pos % ALIGNMENT
            n_bytes = n_el * (4, 2)[type_id] if type_id < 2 else n_el // qk * self._src_block(type_id)
            if r.pos > r.end or n_bytes > r.end - r.pos:
                raise r.fail(f"{what} data [offset {r.pos}, {n_bytes} bytes] runs past the end of the file "
                             f"({r.end} bytes)")
            out[name] = _Raw(src_name, ne, type_id, r.pos, n_bytes)
            r.pos += n_bytes
        return out

    def _src_block(self, type_id: int) -> int:
        return _SRC_BLOCK[type_id][0 if self.era.f32_scales else 1]

    def _add(self, name: str, t: _Raw, data: np.ndarray, mapped: bool) -> None:
        """Tensor `name` from its bytes as the era stores them: converted to today's blocks if they differ (Q4_2
        to exact F16 or F32 values), kept as a view into the map if `mapped` and not converted, else held as the
        given (contiguous) array."""
        era, type_id = self.era, t.type_id
        n_bytes = t.n_bytes
        if type_id == 4:
            values = _q4_2_values(data.reshape(-1, _SRC_BLOCK[4][0]))
            if values is None:
                raise ModelFormatError(f"{self._label}: tensor {t.src!r} (Q4_2): a block scale is not finite")
            with np.errstate(over="ignore"):
                half = values.astype("<f2")
            exact16 = np.array_equal(half.astype(np.float32), values)
            conv = (half if exact16 else values).view(np.uint8)
            self._converted[name] = conv
            self._widened[name] = (t.n_bytes, conv.size)
            self.tensors[name] = TensorInfo(name, t.ne, GGMLType.F16 if exact16 else GGMLType.F32, t.off, conv.size,
                                            self)
            return
        gtype = GGMLType(type_id)
        if (era.f32_scales and type_id in (2, 3, 8)) or (era.pairs and type_id in (2, 3, 6, 7)):
            conv, change = _convert_blocks(data.reshape(-1, self._src_block(type_id)), type_id, era)
            if not np.all(np.isfinite(conv[:, :2 * _N_SCALES[type_id]].copy().view("<f2"))):
                raise ModelFormatError(f"{self._label}: tensor {t.src!r}: a block scale is too large for f16 "
                                       f"(today's {gtype.name} blocks)")
            if change is not None:
                self._scaled[name] = change
            self._converted[name] = conv
            n_bytes = conv.size
        elif not mapped:
            self._converted[name] = data
        self.tensors[name] = TensorInfo(name, t.ne, gtype, t.off, n_bytes, self)

    def _read_parts(self, raw: dict[str, _Raw], want, hp, n_ff: int, header_end: int, hp_at: int, why: str) -> None:
        """Parts 2..n of a split checkpoint (io/legacy_parts.py), each checked as the first; the 2-D tensors
        assembled from all parts, the 1-D ones taken from the first."""
        n = len(self.parts)
        parts: list[PartMap] = []
        try:
            scans = [raw]
            for i in range(1, n):
                part = PartMap(self.path, i, n, why)
                parts.append(part)
                check_part_header(part, self._label, self._base, header_end, hp_at)
                r = _Reader(part.mm, part.size, part.label)
                r.pos = header_end
                scan = self._scan_tensors(r, want)
                self._check_shapes(scan, want, hp, n_ff, part.label, n, i)
                for name, t in scan.items():
                    if t.type_id != raw[name].type_id:
                        raise ModelFormatError(f"{part.label}: tensor {t.src!r} is {_TYPE_NAMES[t.type_id]} here, "
                                               f"{_TYPE_NAMES[raw[name].type_id]} in {self.path.name}")
                scans.append(scan)
            bases, held = [self._base] + [p.base for p in parts], 0
            for name, t in raw.items():
                if len(t.ne) == 1:
                    self._add(name, t, self._base[t.off:t.off + t.n_bytes], mapped=True)
                    continue
                shards = [b[s[name].off:s[name].off + s[name].n_bytes] for b, s in zip(bases, scans)]
                data = assemble(name, shards, t.ne[1])
                del shards
                self._add(name, t._replace(ne=want[name], n_bytes=data.size), data, mapped=False)
                held += self.tensors[name].n_bytes
            self.warnings.append(f"{self.path.name}: read with {', '.join(p.path.name for p in parts)} as one "
                                 f"{n}-part checkpoint; its 2-D tensors were assembled in memory "
                                 f"({held / 2**20:.1f} MiB), not mapped")
        finally:
            for p in parts:
                p.close()

    @staticmethod
    def _check_shapes(raw: dict[str, _Raw], want, hp, n_ff: int, label: str, n_parts: int, i: int) -> None:
        """Every tensor a LLaMA of these hyperparameters needs, with its shape (part i's of n_parts), and no other."""
        n_embd, n_vocab = hp["n_embd"], hp["n_vocab"]
        for name, full in want.items():
            t = raw.get(name)
            if t is None:
                raise ModelFormatError(f"{label}: tensor {name!r} is missing ({len(raw)} tensors read, "
                                       f"n_layer = {hp['n_layer']})")
            shape = part_shape(name, full, n_parts)
            if shape is None:
                raise ModelFormatError(f"{label}: tensor {t.src!r} of shape {list(full)} does not split evenly into "
                                       f"the {n_parts} parts of this checkpoint")
            if t.ne != shape:
                how = "" if n_parts == 1 else f"; part {i + 1} of {n_parts}, {split_kind(name, full)}"
                raise ModelFormatError(f"{label}: tensor {name!r} has shape {list(t.ne)}, expected "
                                       f"{list(shape)} (n_embd {n_embd}, n_ff {n_ff} from n_mult {hp['n_mult']}, "
                                       f"n_vocab {n_vocab}{how})")
        extra = sorted(set(raw) - set(want))
        if extra:
            raise ModelFormatError(f"{label}: tensors beyond n_layer = {hp['n_layer']}: {', '.join(extra[:3])}")

    def _set_metadata(self, hp, n_ff, eps, base, tokens, scores, types) -> None:
        a = "llama"
        U32, F32, STR, ARR = int(V.UINT32), int(V.FLOAT32), int(V.STRING), int(V.ARRAY)
        name = self.path.name[:-4] if self.path.name.endswith(".bin") else self.path.stem
        entries = [
            ("general.architecture", a, STR), ("general.name", name, STR),
            (f"{a}.context_length", CONTEXT_LENGTH, U32), (f"{a}.embedding_length", hp["n_embd"], U32),
            (f"{a}.feed_forward_length", n_ff, U32), (f"{a}.block_count", hp["n_layer"], U32),
            (f"{a}.attention.head_count", hp["n_head"], U32), (f"{a}.attention.head_count_kv", hp["n_head"], U32),
            (f"{a}.rope.dimension_count", hp["n_embd"] // hp["n_head"], U32), (f"{a}.rope.freq_base", base, F32),
            (f"{a}.attention.layer_norm_rms_epsilon", eps, F32),
            ("tokenizer.ggml.model", "llama", STR), ("tokenizer.ggml.tokens", tokens, ARR),
            ("tokenizer.ggml.scores", scores, ARR), ("tokenizer.ggml.token_type", types, ARR),
            ("tokenizer.ggml.bos_token_id", BOS, U32), ("tokenizer.ggml.eos_token_id", EOS, U32),
            ("tokenizer.ggml.unknown_token_id", UNK, U32),
        ]
        for key, value, vtype in entries:
            self.metadata[key] = value
            self.value_types[key] = vtype

    def __repr__(self) -> str:
        return f"<LegacyGGMLFile {self._label!r} {getattr(self, 'format_name', '?')} {len(self.tensors)} tensors>"

    def tensor_bytes(self, name: str) -> np.ndarray:
        """Today's blocks as uint8: (rows, row_bytes), or (n_bytes,) for a 1-D tensor; a view into the map
        unless the blocks were converted."""
        t = self.tensor(name)
        flat = self._converted[name].reshape(-1) if name in self._converted else None
        if flat is None:
            if self._base is None:
                raise ValueError(f"{self._label}: file is closed")
            flat = self._base[t.offset:t.offset + t.n_bytes]
        return flat if t.n_dims == 1 else flat.reshape(t.n_rows, t.row_bytes)

    def tensor_array(self, name: str, dequantize: bool = False) -> np.ndarray:
        t = self.tensor(name)
        raw = self.tensor_bytes(name)
        if t.type == GGMLType.F32:
            return raw.reshape(-1).view("<f4").reshape(t.np_shape)
        if not dequantize:
            raise TypeError(f"{self._label}: tensor {name!r} is {t.type.name}, not F32; pass dequantize=True")
        from ..formats.quants import dequantize as _dequantize

        return _dequantize(raw, t.type).reshape(t.np_shape)


def _piece(i: int, b: bytes) -> tuple[str, int]:
    """A vocabulary entry as these files store it (' ' for U+2581, raw bytes for byte pieces, empty
    control pieces, ' \u2047 ' for <unk>) -> SentencePiece's piece text and token type."""
    if i == UNK and b in (" \u2047 ".encode(), b""):
        return "<unk>", _UNKNOWN
    if not b:
        return {BOS: "<s>", EOS: "</s>"}.get(i, f"<ctrl{i}>"), _CONTROL
    if len(b) == 1 and 3 <= i <= 258 and b[0] == i - 3:
        return f"<0x{b[0]:02X}>", _BYTE
    try:
        text = b.decode("utf-8")
    except UnicodeDecodeError:
        text = b.decode("utf-8", "surrogateescape")
    return text.replace(" ", "\u2581"), _NORMAL


def _q4_2_values(blocks: np.ndarray) -> np.ndarray | None:
    """ggjt v1's Q4_2 blocks (nb, 10): f16 d, 8 bytes of nibble pairs (byte j = elements 2j, 2j+1) -> the f32
    values d*(q-8), exact (an 11-bit significand times |q-8| <= 8); None if a scale is not finite."""
    d = np.ascontiguousarray(blocks[:, :2]).view("<f2").astype(np.float32)
    if not np.all(np.isfinite(d)):
        return None
    qs = blocks[:, 2:]
    q = np.stack((qs & 0x0F, qs >> 4), axis=-1).reshape(len(blocks), 16).astype(np.float32)
    return ((q - 8) * d).reshape(-1)


def _pairs_to_halves(qs: np.ndarray) -> np.ndarray:
    """16 bytes per block, byte j = elements 2j (low) and 2j+1 (high) -> byte j = elements j and j+16."""
    q = np.stack((qs & 0x0F, qs >> 4), axis=-1).reshape(qs.shape[0], 32)
    return (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)


def _convert_blocks(blocks: np.ndarray, type_id: int, era: Era) -> tuple[np.ndarray, float | None]:
    """Blocks of an older layout (nb, src_bytes) -> today's (nb, dst_bytes), and the largest relative change
    of a scale when f32 scales were rounded to f16 (None when none were)."""
    nb, ns = blocks.shape[0], _N_SCALES[type_id]
    out = np.empty((nb, _DST_BLOCK[type_id]), dtype=np.uint8)
    change = None
    if era.f32_scales and type_id in (2, 3, 8):
        s32 = np.ascontiguousarray(blocks[:, :4 * ns]).view("<f4")
        with np.errstate(over="ignore"):
            s16 = s32.astype("<f2")  # round to nearest even, as ggml's fp32 -> fp16
        out[:, :2 * ns] = s16.view(np.uint8)
        rest = blocks[:, 4 * ns:]
        normal = np.abs(s32) >= 2.0**-14  # below f16's smallest normal a scale only keeps its magnitude
        rel = np.abs(s16[normal].astype(np.float64) - s32[normal]) / np.abs(s32[normal].astype(np.float64))
        rel = rel[np.isfinite(rel)]
        change = float(rel.max()) if rel.size else 0.0
    else:
        out[:, :2 * ns] = blocks[:, :2 * ns]
        rest = blocks[:, 2 * ns:]
    if type_id == 8:
        out[:, 2 * ns:] = rest
    elif type_id in (6, 7):  # qh (bit i = element i's fifth bit, in every era), then the nibbles
        out[:, 2 * ns:2 * ns + 4] = rest[:, :4]
        out[:, 2 * ns + 4:] = _pairs_to_halves(rest[:, 4:]) if era.pairs else rest[:, 4:]
    else:
        out[:, 2 * ns:] = _pairs_to_halves(rest) if era.pairs else rest
    return out, change
