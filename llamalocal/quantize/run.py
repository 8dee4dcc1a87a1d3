"""`llamalocal quantize`: a checkpoint in, a GGUF file of the chosen type out.

Each tensor gets the type `plan` chooses and is rounded to nearest (ggml's
reference quantizers, byte-exact) or quantized with GPTQ (gptq.py, driven
layer by layer by calibration.py).  Tensors are streamed: one is loaded,
quantized, written and dropped before the next.
"""
from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from gguf import GGUFValueType

from ..convert import open_checkpoint
from ..convert.checkpoint import Checkpoint
from ..errors import CheckpointError, InvalidArgumentError, OutputExistsError
from ..formats import FLOAT_TYPES, GGMLType, block_format, quants
from ..io.gguf_metadata import MetaValue
from ..io.gguf_writer import TensorSpec, write_gguf
from .plan import QUANTIZATION_VERSION, FileType, file_type, plan_types


def quantize_rows(x: np.ndarray, qtype: GGMLType, threads: int = 0) -> np.ndarray:
    """ggml's reference quantizer over the rows of x, split across threads (the codecs release the GIL)."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    threads = threads or os.cpu_count() or 1
    if qtype in FLOAT_TYPES or threads == 1 or x.shape[0] < 2 * threads:
        return quants.quantize(x, qtype)
    fmt = block_format(qtype)
    out = np.empty((x.shape[0], fmt.row_bytes(x.shape[1])), np.uint8)
    bounds = np.linspace(0, x.shape[0], min(threads * 4, x.shape[0]) + 1).astype(int)

    def work(k: int) -> None:
        a, b = bounds[k], bounds[k + 1]
        out[a:b] = quants.quantize(x[a:b], qtype)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(len(bounds) - 1)))
    return out


@dataclass
class TensorReport:
    name: str
    shape: tuple[int, ...]
    source_type: str
    type: str
    method: str  # "rtn", "gptq" or "copy"
    rmse: float
    sqnr_db: float  # 10·log10(signal power / error power); inf when exact
    note: str = ""


def error_stats(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    d = (x.astype(np.float64) - y).ravel()
    err = float(d @ d) / max(d.size, 1)
    sig = float(np.square(x, dtype=np.float64).sum()) / max(x.size, 1)
    return math.sqrt(err), (math.inf if err == 0 else 10 * math.log10(max(sig, 1e-300) / err))


# -- the whole file -------------------------------------------------------------------------------------------

@dataclass
class QuantizeResult:
    output: Path
    file_type: str
    method: str
    n_bytes: int
    n_weights: int
    seconds: float
    tensors: list[TensorReport]
    warnings: list[str]

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.n_bytes / max(self.n_weights, 1)

    def to_json(self) -> str:
        d = {"output": str(self.output), "file_type": self.file_type, "method": self.method, "bytes": self.n_bytes,
             "weights": self.n_weights, "bits_per_weight": self.bits_per_weight, "seconds": self.seconds,
             "warnings": self.warnings,
             "tensors": [{**asdict(r), "sqnr_db": None if math.isinf(r.sqnr_db) else r.sqnr_db} for r in self.tensors]}
        return json.dumps(d, indent=1)


def output_metadata(ckpt: Checkpoint, ft: FileType) -> dict[str, MetaValue]:
    meta = dict(ckpt.metadata)
    meta["general.file_type"] = MetaValue(ft.ftype, GGUFValueType.UINT32)
    if ft.default not in FLOAT_TYPES:
        meta["general.quantization_version"] = MetaValue(QUANTIZATION_VERSION, GGUFValueType.UINT32)
    return meta


def quantize_model(input_path: str | Path, output_path: str | Path, type_name: str, *, method: str = "rtn",
                   tokenizer: Optional[str | Path] = None, force: bool = False, threads: int = 0,
                   gptq_options: Optional[dict] = None,
                   progress: Optional[Callable[[str, int, int], None]] = None, lora: Optional[list] = None) -> QuantizeResult:
    """Converts INPUT to OUTPUT. `progress(name, i, n)` is called before each tensor.  `lora`:
    LoRA adapters (paths or (path, scale) pairs) merged into the weights (model/lora.py)."""
    start = time.perf_counter()
    input_path, output_path = Path(input_path), Path(output_path)
    ft = file_type(type_name)
    if method not in ("rtn", "gptq"):
        raise InvalidArgumentError(f"unknown method {method!r} (rtn or gptq)")
    if output_path.exists() and input_path.exists() and os.path.samefile(input_path, output_path):
        raise InvalidArgumentError(f"{output_path} is the input file; choose another output")
    if output_path.exists() and not force:
        raise OutputExistsError(f"{output_path} already exists (use --force to overwrite it)")
    with open_checkpoint(input_path, tokenizer) as ckpt:
        if lora:
            from ..model.lora import merge_into_checkpoint

            merge_into_checkpoint(ckpt, lora)
        plans = plan_types(ckpt, ft)
        warnings = list(ckpt.warnings)
        gptq_run = None
        if method == "gptq":
            from .calibration import GPTQRun
            from .gptq import GPTQ_TYPES

            if ft.default not in GPTQ_TYPES:
                raise InvalidArgumentError(f"GPTQ quantizes to {', '.join(t.name for t in GPTQ_TYPES)} blocks, not {ft.name}")
            gptq_run = GPTQRun(ckpt, plans, **(gptq_options or {}))
        reports: list[TensorReport] = []

        def produce(i: int) -> np.ndarray:
            p, src = plans[i], ckpt.tensors[i]
            if progress:
                progress(p.name, i, len(plans))
            x = src.load()
            if x.shape != tuple(src.shape):
                raise CheckpointError(f"{ckpt.path}: tensor {src.name} loaded with shape {x.shape}, expected {src.shape}")
            used = "rtn"
            if gptq_run is not None and gptq_run.handles(p.name):
                data, used = gptq_run.quantized(p.name), "gptq"
            elif src.blocks is not None and p.source_type == p.type.name:
                data, used = src.blocks(), "copy"  # the blocks as they are: re-quantizing would only lose
            else:
                data = quantize_rows(x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x.reshape(1, -1), p.type, threads)
                if p.type in FLOAT_TYPES and p.source_type == p.type.name:
                    used = "copy"
            back = quants.dequantize(data, p.type).reshape(x.shape)
            rmse, sqnr = error_stats(x, back)
            reports.append(TensorReport(p.name, tuple(p.shape), p.source_type, p.type.name, used, rmse, sqnr, p.note))
            return data

        specs = [TensorSpec(p.name, p.type, tuple(p.shape)) for p in plans]
        size = write_gguf(output_path, ckpt.arch, output_metadata(ckpt, ft), specs, produce, force=force)
        if gptq_run is not None:
            warnings += gptq_run.warnings
    n_weights = sum(int(np.prod(p.shape)) for p in plans)
    return QuantizeResult(output_path, ft.name, method, size, n_weights, time.perf_counter() - start, reports, warnings)


def format_report(res: QuantizeResult) -> str:
    lines = [f"{'tensor':<34} {'shape':>14} {'from':>5} {'to':>5} {'method':>6} {'rmse':>10} {'sqnr dB':>8}  note"]
    for r in res.tensors:
        shape = "x".join(str(d) for d in reversed(r.shape))  # ggml order, as llama.cpp prints it
        sq = "exact" if math.isinf(r.sqnr_db) else f"{r.sqnr_db:.1f}"
        lines.append(f"{r.name:<34} {shape:>14} {r.source_type:>5} {r.type:>5} {r.method:>6} {r.rmse:>10.3g} {sq:>8}  {r.note}")
    return "\n".join(lines)


__all__ = ["quantize_model", "quantize_rows", "format_report", "QuantizeResult"]
