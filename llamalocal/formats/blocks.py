"""Block formats, defined once.

Every GGML tensor type llamalocal reads or writes is listed here with its block
size (weights per block) and type size (bytes per block).  The ids are ggml's
`enum ggml_type` values, so they are also the numbers stored in GGUF files.
`native/blocks.h` mirrors this table with `static_assert`s, and a test checks
both against the `gguf` package's `GGML_QUANT_SIZES`.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

QK = 32  # weights per block of the legacy formats (Q4_0 ... Q8_1)
QK_K = 256  # weights per super-block of the k-quants
K_SCALE_SIZE = 12  # packed 6-bit scales and mins of Q4_K / Q5_K


class GGMLType(IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    BF16 = 30


@dataclass(frozen=True)
class BlockFormat:
    type: GGMLType
    block_size: int  # weights per block
    type_size: int  # bytes per block
    # Format the activation row is converted to before dot products with this
    # weight type (ggml's `vec_dot_type`): integer types multiply int8 by int8.
    vec_dot_type: GGMLType

    @property
    def name(self) -> str:
        return self.type.name

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size

    def row_bytes(self, n: int) -> int:
        """Bytes of one row of `n` weights; `n` must be a multiple of the block size."""
        if n % self.block_size:
            raise ValueError(f"{self.name}: row length {n} is not a multiple of the block size {self.block_size}")
        return n // self.block_size * self.type_size


T = GGMLType
FORMATS: dict[GGMLType, BlockFormat] = {
    f.type: f
    for f in (
        BlockFormat(T.F32, 1, 4, T.F32),
        BlockFormat(T.F16, 1, 2, T.F32),
        BlockFormat(T.BF16, 1, 2, T.F32),
        BlockFormat(T.Q4_0, QK, 2 + QK // 2, T.Q8_0),
        BlockFormat(T.Q4_1, QK, 4 + QK // 2, T.Q8_1),
        BlockFormat(T.Q5_0, QK, 2 + 4 + QK // 2, T.Q8_0),
        BlockFormat(T.Q5_1, QK, 4 + 4 + QK // 2, T.Q8_1),
        BlockFormat(T.Q8_0, QK, 2 + QK, T.Q8_0),
        # ggml's current block_q8_1 (half d, half s = d*sum(qs)); gguf-py still
        # lists an older 40-byte layout.  It is activation-only, never in files.
        BlockFormat(T.Q8_1, QK, 4 + QK, T.Q8_1),
        BlockFormat(T.Q2_K, QK_K, QK_K // 16 + QK_K // 4 + 4, T.Q8_K),
        BlockFormat(T.Q3_K, QK_K, QK_K // 8 + QK_K // 4 + 12 + 2, T.Q8_K),
        BlockFormat(T.Q4_K, QK_K, 4 + K_SCALE_SIZE + QK_K // 2, T.Q8_K),
        BlockFormat(T.Q5_K, QK_K, 4 + K_SCALE_SIZE + QK_K // 8 + QK_K // 2, T.Q8_K),
        BlockFormat(T.Q6_K, QK_K, QK_K // 2 + QK_K // 4 + QK_K // 16 + 2, T.Q8_K),
        BlockFormat(T.Q8_K, QK_K, 4 + QK_K + 2 * (QK_K // 16), T.Q8_K),
    )
}

# Byte offsets, within a block, of its fp16 scale fields (d, and m or dmin
# where present), as laid out in native/blocks.h.  Tests and benchmarks that
# fill blocks with random bytes set these to finite scales.
SCALE_FIELDS: dict[GGMLType, tuple[int, ...]] = {
    T.Q4_0: (0,), T.Q5_0: (0,), T.Q8_0: (0,),
    T.Q4_1: (0, 2), T.Q5_1: (0, 2), T.Q4_K: (0, 2), T.Q5_K: (0, 2),
    T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q6_K: (208,),
}

# Weight types the kernels multiply by (Q8_1 and Q8_K exist only as activations).
FLOAT_TYPES: tuple[GGMLType, ...] = (T.F32, T.F16, T.BF16)  # stored as plain numbers, not blocks
WEIGHT_TYPES: tuple[GGMLType, ...] = tuple(t for t in FORMATS if t not in (T.Q8_1, T.Q8_K))


def block_format(t: GGMLType | int | str) -> BlockFormat:
    """Look a format up by enum, ggml id or name ('Q4_K', 'q4_k')."""
    try:
        key = GGMLType[t.upper()] if isinstance(t, str) else GGMLType(t)
        return FORMATS[key]
    except (KeyError, ValueError):
        raise ValueError(f"unsupported GGML tensor type {t!r}") from None
