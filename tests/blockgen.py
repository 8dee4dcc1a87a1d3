"""Random but valid GGML blocks for kernel tests.

Random bytes cover every quantized value; only the fp16 scale fields are
overwritten with finite scales of a chosen magnitude (random bytes there would
be NaN/inf now and then, which no real file holds).
"""
from __future__ import annotations

import numpy as np

from llamalocal.formats import FORMATS, SCALE_FIELDS, GGMLType as T


SCALE_RANGES = {
    "normal": (1e-3, 5e-2),
    "zero": (0.0, 0.0),
    "tiny": (6.1e-5, 1.2e-4),  # around fp16's smallest normal
    "huge": (2e4, 6e4),  # near fp16's largest finite value
}


def random_blocks(rng: np.random.Generator, qtype: T, n_rows: int, k: int, scales: str = "normal") -> np.ndarray:
    """uint8 array (n_rows, row_bytes) of valid `qtype` rows of k weights."""
    fmt = FORMATS[qtype]
    lo, hi = SCALE_RANGES[scales]
    # float types: normal values of magnitude `hi`, kept below fp16's largest finite value
    mag = min(hi, 8e3) if scales != "zero" else 0.0
    if qtype == T.F32:
        return (rng.standard_normal((n_rows, k)) * mag).astype(np.float32).view(np.uint8)
    if qtype == T.F16:
        return (rng.standard_normal((n_rows, k)) * mag).astype(np.float16).view(np.uint8)
    if qtype == T.BF16:
        f = (rng.standard_normal((n_rows, k)) * mag).astype(np.float32)
        return (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    n_blocks = k // fmt.block_size
    data = rng.integers(0, 256, size=(n_rows, n_blocks, fmt.type_size), dtype=np.uint8)
    for off in SCALE_FIELDS[qtype]:
        s = rng.uniform(lo, hi, size=(n_rows, n_blocks)) * rng.choice([-1.0, 1.0], size=(n_rows, n_blocks))
        data[:, :, off : off + 2] = s.astype(np.float16).view(np.uint8).reshape(n_rows, n_blocks, 2)
    return data.reshape(n_rows, n_blocks * fmt.type_size)
