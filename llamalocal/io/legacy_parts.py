"""Split (multi-part) checkpoints of the first pre-GGUF formats, read as one model (for io/legacy_ggml.py).

LLaMA 13B, 30B and 65B came as 2, 4 and 8 shards (Meta's consolidated.0N.pth), and llama.cpp's first
converter wrote one file per shard: `x.bin`, `x.bin.1`, `x.bin.2`, ...  Every part repeats the whole
header and vocabulary; its tensors are the shard's (ne0 = row length, n = number of parts):

    1-D tensors (the norms)                           whole in every part; read from the first
    tok_embeddings, attention.wo, feed_forward.w2     split by columns: part i holds elements
                                                      [i*ne0/n, (i+1)*ne0/n) of every row
    every other 2-D tensor (output, attention.wq,     split by rows: part i holds rows
    .wk, .wv, feed_forward.w1, .w3)                   [i*ne1/n, (i+1)*ne1/n)

How many parts there are, as the llama.cpp of each time determined it:

- March 2023, unversioned 'ggml' and then 'ggmf' v1 (main.cpp's, then llama.cpp's `llama_model_load`):
  from n_embd alone, LLAMA_N_PARTS = {4096: 1, 5120: 2, 6656: 4, 8192: 8}, later overridable with
  `--n_parts` (needed for merged single-file 13B models); each part checked to hold full/n of each split
  dimension, and read at the first part's tensor offset (identical headers and vocabularies).
- April 2023 on (`llama_model_loader`, which read 'ggml', 'ggmf' and 'ggjt'; still so in June's, with ggjt
  v3): n_embd divided by the first part's tok_embeddings ne0 (`guess_n_parts`); every part's hparams must
  equal the first's, and its shards the first's type and shape; the same split by columns / by rows
  (`llama_split_type`: SPLIT_BY_COLUMNS / SPLIT_BY_ROWS), 1-D tensors (SPLIT_NONE) from the first part.

We count as the April loader did: it is what the file itself says; it gives March's count for every set
March read correctly (a part's tok_embeddings holds n_embd/n of each row), and it reads merged files and
models of other sizes (no table, no override).  'ggjt' files (March 30 on) were always written whole
(PR #613: "the new format always combines things into a single file"; its migration script merged
parts, and no later tool wrote parts), and the loader of their time mapped only the first file and
asserted one shard per tensor when mapping (the default): a ggjt file holding a part is refused.

A quantized tensor split by columns must be cut at a block boundary (ne0/n a multiple of the block's 32
weights): each part file was quantized on its own (quantize.sh ran over ggml-model-f16.bin*), in blocks
along its rows, and both loaders copied row_size/n bytes of each row.  Parts' tensors are assembled in
memory (copies in today's layout, not views into the maps; reported once in `warnings`), and the maps of
the parts after the first are closed then.
"""
from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import ModelFormatError
from .gguf_reader import close_map

__all__ = ["MAX_PARTS", "PartMap", "assemble", "check_part_header", "count_parts", "part_path", "part_shape",
           "split_by_columns", "split_kind"]

MAX_PARTS = 64  # LLaMA 65B had 8
_HPARAM_NAMES = ("n_vocab", "n_embd", "n_mult", "n_head", "n_layer", "n_rot", "ftype")


def split_by_columns(name: str) -> bool:
    """Whether the 2-D tensor `name` (GGUF's name) is split by columns; every other 2-D tensor is split by rows."""
    return name == "token_embd.weight" or name.endswith((".attn_output.weight", ".ffn_down.weight"))


def split_kind(name: str, full: tuple[int, ...]) -> str:
    if len(full) == 1:
        return "whole in each part"
    return "split by columns" if split_by_columns(name) else "split by rows"


def part_shape(name: str, full: tuple[int, ...], n: int) -> tuple[int, ...] | None:
    """The shape (ggml order) each of n parts holds of tensor `name` of shape `full`; None if it does not split
    evenly."""
    if len(full) == 1 or n == 1:
        return full
    ne0, ne1 = full
    if split_by_columns(name):
        return (ne0 // n, ne1) if ne0 % n == 0 else None
    return (ne0, ne1 // n) if ne1 % n == 0 else None


def count_parts(tok_embd_shape: tuple[int, ...] | None, n_embd: int) -> int:
    """n_embd / the first part's tok_embeddings ne0 (April 2023's guess_n_parts); 1 when that is not a whole
    number above 1 (the shape check then reports the tensor)."""
    if tok_embd_shape is None or len(tok_embd_shape) != 2:
        return 1
    ne0 = tok_embd_shape[0]
    return n_embd // ne0 if ne0 < n_embd and n_embd % ne0 == 0 else 1


def part_path(first: Path, i: int) -> Path:
    return first if i == 0 else Path(f"{first}.{i}")


def assemble(name: str, shards: list[np.ndarray], rows: int) -> np.ndarray:
    """A 2-D tensor's bytes (as the era stores them, flat, contiguous) from its parts' bytes, in part order."""
    if split_by_columns(name):  # each part holds whole blocks of every row: rows side by side
        return np.concatenate([s.reshape(rows, -1) for s in shards], axis=1).reshape(-1)
    return np.concatenate(shards)


class PartMap:
    """Part i > 0 of a split checkpoint, mapped read-only; every failure names the file."""

    def __init__(self, first: Path, i: int, n: int, why: str):
        self.path = part_path(first, i)
        self.label = str(self.path)
        self.mm: mmap.mmap | None = None
        try:
            with open(self.path, "rb") as fh:
                self.size = os.fstat(fh.fileno()).st_size
                if self.size:
                    self.mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise ModelFormatError(f"{self.label}: no such file: part {i + 1} of the {n}-part split checkpoint "
                                   f"{first.name} ({why})") from None
        except OSError as e:
            raise ModelFormatError(f"{self.label}: cannot read part {i + 1} of {n}: {e.strerror or e}") from None
        self.base = np.frombuffer(self.mm, dtype=np.uint8) if self.mm is not None else np.empty(0, np.uint8)

    def close(self) -> None:
        self.base = None
        mm, self.mm = self.mm, None
        close_map(mm)


def check_part_header(part: PartMap, first_label: str, first: np.ndarray, header_end: int, hp_at: int) -> None:
    """Part files repeat the first's header and vocabulary byte for byte (March's loader read each part at the
    first part's tensor offset); name the first difference."""
    if part.size < header_end:
        raise ModelFormatError(f"{part.label}: file is {part.size} bytes, shorter than the header and vocabulary of "
                               f"{first_label} ({header_end} bytes): truncated, or not a part of it")
    mine = part.base[:header_end]
    diff = np.flatnonzero(mine != first[:header_end])
    if not diff.size:
        return
    at = int(diff[0])
    if at < hp_at:
        raise ModelFormatError(f"{part.label}: magic/version {bytes(mine[:hp_at])!r} differ from those of "
                               f"{first_label} ({bytes(first[:hp_at])!r}): not a part of it")
    if at < hp_at + 4 * len(_HPARAM_NAMES):
        k = (at - hp_at) // 4
        (a,), (b,) = (struct.unpack_from("<i", x, hp_at + 4 * k) for x in (mine, first))
        raise ModelFormatError(f"{part.label}: header differs from the first part's: {_HPARAM_NAMES[k]} = {a} here, "
                               f"{b} in {first_label}: not a part of it")
    raise ModelFormatError(f"{part.label}: vocabulary differs from the first part's ({first_label}) at offset {at}: "
                           f"not a part of it")
