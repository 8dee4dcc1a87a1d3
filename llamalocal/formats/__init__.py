"""GGML block formats, defined once: the table (`blocks`), fp16 conversions
(`fp16`), and the reference codecs (`quants`, `kquants`) that the converter,
the numba backend and the tests share."""
from .blocks import (
    FLOAT_TYPES,
    FORMATS,
    K_SCALE_SIZE,
    QK,
    QK_K,
    SCALE_FIELDS,
    WEIGHT_TYPES,
    BlockFormat,
    GGMLType,
    block_format,
)

__all__ = ["FLOAT_TYPES", "FORMATS", "K_SCALE_SIZE", "QK", "QK_K", "SCALE_FIELDS", "WEIGHT_TYPES", "BlockFormat", "GGMLType", "block_format"]
