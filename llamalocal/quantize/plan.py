"""Which type each tensor of a `llamalocal quantize` output gets.

It follows llama.cpp's llama-quantize, so a file written here is what
llama.cpp users expect of a "Q4_K_M":

  * norms, biases and other 1-D tensors stay as they are (F32);
  * the output matrix (or the embedding, when it doubles as the output) gets
    Q6_K, or Q8_0 when its rows do not fit the target's block;
  * the mixes raise attn_v and ffn_down to more bits on some layers;
  * a row length that is not a multiple of the type's block falls back to a
    type that fits (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, else F16).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..convert.checkpoint import Checkpoint
from ..errors import InvalidArgumentError
from ..formats import FLOAT_TYPES, GGMLType, block_format

T = GGMLType


@dataclass(frozen=True)
class FileType:
    name: str
    default: GGMLType  # the type most weight matrices get
    ftype: int  # llama.cpp's `enum llama_ftype`, stored as general.file_type


FILE_TYPES = {f.name: f for f in (
    FileType("F32", T.F32, 0), FileType("F16", T.F16, 1), FileType("BF16", T.BF16, 32),
    FileType("Q4_0", T.Q4_0, 2), FileType("Q4_1", T.Q4_1, 3), FileType("Q8_0", T.Q8_0, 7),
    FileType("Q5_0", T.Q5_0, 8), FileType("Q5_1", T.Q5_1, 9),
    FileType("Q4_K_S", T.Q4_K, 14), FileType("Q4_K_M", T.Q4_K, 15),
    FileType("Q5_K_S", T.Q5_K, 16), FileType("Q5_K_M", T.Q5_K, 17), FileType("Q6_K", T.Q6_K, 18),
)}
ALIASES = {"Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}  # as llama-quantize accepts them
# A row length that does not fit the type's block (llama.cpp's tensor_type_fallback).
FALLBACK = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}
QUANTIZATION_VERSION = 2  # ggml's GGML_QNT_VERSION


def file_type(name: str) -> FileType:
    key = ALIASES.get(name.upper(), name.upper())
    if key not in FILE_TYPES:
        raise InvalidArgumentError(f"unknown type {name!r} (choose from {', '.join(list(FILE_TYPES) + list(ALIASES))})")
    return FILE_TYPES[key]


@dataclass
class TensorPlan:
    name: str
    shape: tuple[int, ...]
    source_type: str
    type: GGMLType
    note: str = ""  # why the type differs from the file type's default


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _fits(t: GGMLType, cols: int) -> bool:
    return cols % block_format(t).block_size == 0


def plan_types(ckpt: Checkpoint, ft: FileType) -> list[TensorPlan]:
    """The type of every tensor, chosen as llama-quantize chooses it."""
    names = [t.name for t in ckpt.tensors]
    tied = "output.weight" not in names
    n_attn_v = sum(n.endswith("attn_v.weight") for n in names)
    n_ffn_down = sum("ffn_down" in n and n.endswith(".weight") for n in names)
    i_attn_v = i_ffn_down = 0
    quantized_target = ft.default not in FLOAT_TYPES
    plans = []
    for t in ckpt.tensors:
        name, cols = t.name, t.shape[-1]
        matrix = len(t.shape) >= 2 and name.endswith("weight") and "_norm.weight" not in name
        if not matrix:
            plans.append(TensorPlan(name, t.shape, t.source_type, T.F32))  # norms, biases: kept exact
            continue
        new, note = ft.default, ""
        if quantized_target:
            if name == "output.weight" or (tied and name == "token_embd.weight"):
                if cols % block_format(ft.default).block_size:
                    new, note = T.Q8_0, "output matrix"
                elif ft.default != T.Q8_0:
                    new, note = T.Q6_K, "output matrix"
            elif name.endswith("attn_v.weight"):
                if ft.name in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i_attn_v, n_attn_v):
                    new, note = T.Q6_K, f"{ft.name} mix"
                elif ft.name == "Q4_K_S" and i_attn_v < 4:
                    new, note = T.Q5_K, f"{ft.name} mix"
                i_attn_v += 1
            elif "ffn_down" in name:
                if ft.name in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i_ffn_down, n_ffn_down):
                    new, note = T.Q6_K, f"{ft.name} mix"
                elif ft.name == "Q4_K_S" and i_ffn_down < n_ffn_down // 8:
                    new, note = T.Q5_K, f"{ft.name} mix"
                i_ffn_down += 1
            if not _fits(new, cols):
                wanted = new
                new = FALLBACK.get(new, T.F16)
                if not _fits(new, cols):
                    new = T.F16
                note = f"{cols} columns do not fit {wanted.name} blocks: {new.name}"
        elif not _fits(new, cols):
            new, note = T.F32, f"{cols} columns"
        plans.append(TensorPlan(name, t.shape, t.source_type, new, note))
    return plans


# -- round to nearest -----------------------------------------------------------------------------------------
