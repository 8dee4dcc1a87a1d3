"""GGUF metadata values with their GGUF value types, as the writer stores them
and as llama.cpp's converter types each key."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from gguf import GGUFValueType

from ..errors import CheckpointError


@dataclass
class MetaValue:
    value: Any
    type: GGUFValueType
    sub_type: Optional[GGUFValueType] = None  # element type of arrays


# -- typed values ---------------------------------------------------------------

V = GGUFValueType


def u32(v: int) -> MetaValue:
    return MetaValue(int(v), V.UINT32)


def f32(v: float) -> MetaValue:
    return MetaValue(float(v), V.FLOAT32)


def string(v: str) -> MetaValue:
    return MetaValue(str(v), V.STRING)


def boolean(v: bool) -> MetaValue:
    return MetaValue(bool(v), V.BOOL)


def array(values, sub_type: GGUFValueType) -> MetaValue:
    return MetaValue(values, V.ARRAY, sub_type)


# GGUF value types of the tokenizer keys, as llama.cpp's converter writes them.
_TOKENIZER_KEY_TYPES = {
    "tokenizer.ggml.tokens": (V.ARRAY, V.STRING), "tokenizer.ggml.merges": (V.ARRAY, V.STRING),
    "tokenizer.ggml.scores": (V.ARRAY, V.FLOAT32), "tokenizer.ggml.token_type": (V.ARRAY, V.INT32),
}


def tokenizer_metadata(meta: dict[str, Any]) -> dict[str, MetaValue]:
    """Types a plain `tokenizer.*` dict (as tokenizer.spm's loaders return it) for writing."""
    out: dict[str, MetaValue] = {}
    for key, value in meta.items():
        if key in _TOKENIZER_KEY_TYPES:
            vtype, sub = _TOKENIZER_KEY_TYPES[key]
            out[key] = MetaValue([float(v) if sub == V.FLOAT32 else v for v in value] if sub != V.STRING else list(value),
                                 vtype, sub)
        elif isinstance(value, bool):
            out[key] = boolean(value)
        elif isinstance(value, int):
            out[key] = u32(value)
        elif isinstance(value, str):
            out[key] = string(value)
        else:
            raise CheckpointError(f"tokenizer key {key!r}: cannot store a {type(value).__name__}")
    return out
