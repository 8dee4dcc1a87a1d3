"""Kernel backend: the C++ extension when it is installed, numba otherwise.

`LLAMALOCAL_BACKEND=native|numba` forces a backend; `LLAMALOCAL_ISA=...`
forces one of the native ISA paths (avx512, avx2, neon, dotprod, scalar).
Everything above this module calls `matmul`/`dequantize`/`make_layer` here
and never imports `_native` or the numba modules directly.
"""
from __future__ import annotations

import mmap
import os
import sys
from typing import Any, Optional

import numpy as np

from ..errors import BackendError
from ..formats import GGMLType, block_format


def _load_native() -> tuple[Any, Optional[str]]:
    try:
        from .. import _native  # type: ignore[attr-defined]
    except ImportError as e:
        return None, str(e)
    return _native, None


def _select() -> tuple[str, Any, Optional[str]]:
    forced = os.environ.get("LLAMALOCAL_BACKEND", "").strip().lower()
    if forced not in ("", "auto", "native", "numba"):
        raise BackendError(f"LLAMALOCAL_BACKEND={forced!r}: expected 'native', 'numba' or 'auto'")
    if forced == "numba":
        return "numba", None, "forced by LLAMALOCAL_BACKEND=numba"
    native, err = _load_native()
    if native is None:
        if forced == "native":
            raise BackendError(f"LLAMALOCAL_BACKEND=native but the C++ extension cannot be imported: {err}")
        print(f"llamalocal: C++ extension unavailable ({err}); using the slower numba kernels", file=sys.stderr)
        return "numba", None, err
    isa = os.environ.get("LLAMALOCAL_ISA", "").strip().lower()
    if isa:
        available = native.available_isas()
        if isa not in available:
            raise BackendError(f"LLAMALOCAL_ISA={isa!r} is not available on this CPU (available: {', '.join(available)})")
        native.set_isa(isa)
    return "native", native, None


BACKEND, _native, FALLBACK_REASON = _select()
if BACKEND == "numba":
    from .numba import matmul as _fallback


def _type_id(qtype: GGMLType | int | str) -> int:
    return int(block_format(qtype).type)


def matmul(qtype, w: np.ndarray, x: np.ndarray, out: Optional[np.ndarray] = None,
           w_il: Optional[np.ndarray] = None) -> np.ndarray:
    """Y = X · Wᵀ for quantized W: w is uint8 (N, row_bytes), x float32 (K,) or (B, K).
    w_il: the same weights' interleaved copy (interleave_rows), read instead where
    the kernels multiply the type so."""
    if _native is not None:
        return _native.matmul(_type_id(qtype), w, x, out, w_il=w_il)
    return _fallback.matmul(qtype, w, x, out)


def interleaved_types() -> frozenset[int]:
    """Weight type ids the kernels multiply fastest from an interleaved copy of the
    rows (interleave_rows): a layer keeps one of each such matrix.  None on the
    numba backend, on ISA paths without such kernels, or with LLAMALOCAL_REPACK=0."""
    if _native is None or os.environ.get("LLAMALOCAL_REPACK", "").strip() == "0":
        return frozenset()
    return frozenset(_native.interleaved_types())


def interleave_group(qtype) -> int:
    """Rows per group of the type's interleaved copy: a matrix gets one only if its
    row count is a multiple."""
    return _native.interleave_group(_type_id(qtype))


def interleave_rows(qtype, w: np.ndarray, cols: int, out: Optional[np.ndarray] = None) -> np.ndarray:
    """w's rows (uint8 (N, row_bytes), N a multiple of interleave_group) in the
    type's interleaved layout (native/blocks.h: groups of rows stored block by
    block), written into `out` (uint8, w's shape) when given."""
    return _native.interleave_rows(_type_id(qtype), w, cols, out)


HUGE_PAGE = 2 << 20


def huge_page_buffer(nbytes: int) -> np.ndarray:
    """uint8 (nbytes,) of private memory that Linux backs with 2 MiB pages where it
    can (MADV_HUGEPAGE: transparent huge pages in their usual 'madvise' mode).
    Decode streams every weight once per token; on 4 KiB pages that is a TLB miss
    and a page walk every 4 KiB, which cost 1.1B Q4_0 decode ~6%."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return np.empty(nbytes, np.uint8)
    # Private: a shared anonymous map is shmem, which these pages do not cover.
    mm = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf = np.frombuffer(mm, np.uint8)
    # Only whole, aligned 2 MiB ranges can be huge pages: start at one.
    start = -buf.ctypes.data % HUGE_PAGE
    mm.madvise(mmap.MADV_HUGEPAGE)
    return buf[start:start + nbytes]


def dequantize(qtype, w: np.ndarray) -> np.ndarray:
    """Dequantize uint8 rows of `qtype` to float32."""
    if _native is not None:
        return _native.dequantize(_type_id(qtype), w)
    return _fallback.dequantize(qtype, w)


def make_layer(params, tensors: dict):
    """One transformer block on this backend.  `params` is a model.config.LayerParams;
    `tensors` maps the layer's names (wq, ..., attn_norm, bq, ...) to (type id,
    uint8 rows) or (type id, uint8 rows, interleaved copy) for matrices and
    float32 vectors for the rest.  Raises ValueError when a tensor or a
    parameter does not fit."""
    if BACKEND == "native":
        return _native.Layer(tensors, _native.LayerParams(**params.as_kwargs()))
    from .numba.layer import PyLayer

    return PyLayer(tensors, params)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x / rms(x) * w over the last axis (float32)."""
    if _native is not None:
        return _native.rms_norm(x, w, eps)
    from .numba.layer import rms_norm as py_rms_norm

    return py_rms_norm(x, w, eps)


def set_num_threads(n: int) -> None:
    """Threads for the kernels; 0 means one per physical core."""
    if _native is not None:
        _native.set_num_threads(n)
    else:
        import numba

        numba.set_num_threads(n if n > 0 else numba.config.NUMBA_DEFAULT_NUM_THREADS)


def num_threads() -> int:
    if _native is not None:
        return _native.num_threads()
    import numba

    return numba.get_num_threads()


def active_isa() -> str:
    return _native.active_isa() if _native is not None else "numba"


def info() -> dict:
    """What `llamalocal sysinfo` prints: backend, ISA paths, CPU features, threads."""
    d: dict[str, Any] = {"backend": BACKEND, "active_isa": active_isa(), "threads": num_threads()}
    if _native is not None:
        d["arch"] = _native.arch
        d["available_isas"] = _native.available_isas()
        d["cpu_features"] = _native.cpu_features()
        d["default_threads"] = _native.default_num_threads()
    else:
        d["fallback_reason"] = FALLBACK_REASON
    return d
