"""LoRA adapters, applied unmerged: y = W·x + scale·B(A·x) on each adapted
projection, scale = user_scale·alpha/rank, as llama.cpp applies them.  The
quantized base weights stay memory-mapped and shared; an adapter costs only
its own F32 A (rank x in) and B (out x rank) matrices.

Two forms are read:

* llama.cpp's GGUF adapters: `general.type = adapter`, `adapter.type = lora`,
  `adapter.lora.alpha` (0 or absent: scale = user_scale), tensors
  `blk.N.<proj>.weight.lora_a` (rank x in) and `.lora_b` (out x rank);
* Hugging Face PEFT directories (`adapter_config.json` and
  `adapter_model.safetensors` or `adapter_model.bin`), read directly: names
  mapped to the GGUF ones, and lora_B of q and k given the row permutation
  llama.cpp's converter gives LLaMA's base Q/K weights (the adapter's output
  rows must line up with the base's).  scale = lora_alpha / r (rsLoRA:
  lora_alpha / sqrt(r)).

An adapter that does not fit the base (architecture, a tensor the base lacks
or that cannot be adapted, a shape) is refused with the tensor's name.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    CheckpointError,
    InvalidArgumentError,
    MissingFileError,
    ModelFormatError,
    UnsupportedModelError,
)
from .config import ModelConfig

# GGUF projection names -> the layer implementations' names (model/transformer.py LAYER_TENSORS)
PROJECTIONS = {"attn_q": "wq", "attn_k": "wk", "attn_v": "wv", "attn_output": "wo",
               "ffn_gate": "w_gate", "ffn_up": "w_up", "ffn_down": "w_down"}
# Hugging Face module names -> GGUF (as convert/hf.py maps the base weights)
HF_MODULES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}
_GGUF_NAME = re.compile(r"blk\.(\d+)\.([a-z_]+)\.weight")
_PEFT_NAME = re.compile(r"(?:base_model\.model\.)?model\.layers\.(\d+)\.([a-z_]+\.[a-z_]+)\.lora_([AB])(?:\.[A-Za-z0-9_-]+)?\.weight")
# rows of Q / K permuted by llama.cpp's converter (rope on interleaved pairs)
_PERMUTED_ARCHS = {"llama"}


@dataclass(eq=False)
class LoraAdapter:
    """One adapter: base weight name (`blk.N.attn_q.weight`) -> (A, B), float32.

    Compared and hashed by identity (eq=False): an adapter set's key
    (lora_key) is its adapter objects and scales, two adapters read from one
    file are two adapters, and comparing A and B arrays is never needed."""

    path: Path
    format: str  # "gguf" or "peft"
    arch: str | None  # the GGUF adapter's architecture (PEFT directories name none)
    alpha: float  # 0: the scale is the user's scale alone
    tensors: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    def scale(self, weight: str, user_scale: float) -> float:
        """user_scale·alpha/rank in float32, as llama.cpp computes it."""
        rank = np.float32(self.tensors[weight][1].shape[1])
        s = np.float32(user_scale)
        return float(s * np.float32(self.alpha) / rank) if self.alpha else float(s)

    def check(self, base: dict[str, Any], config: ModelConfig) -> None:
        """Refuses, by name, an adapter that does not fit the base model's tensors
        (QTensor-like: .rows, .cols) and architecture."""
        if self.arch is not None and self.arch != config.arch:
            raise UnsupportedModelError(f"{self.name}: adapter for architecture {self.arch!r}, the model is {config.arch!r}")
        for weight, (a, b) in self.tensors.items():
            m = _GGUF_NAME.fullmatch(weight)
            if m is None or m.group(2) not in PROJECTIONS:
                raise UnsupportedModelError(f"{self.name}: tensor '{weight}.lora_a': only the attention and feed-forward "
                                            f"projections ({', '.join(PROJECTIONS)}) of a layer can be adapted")
            if int(m.group(1)) >= config.n_layer or weight not in base:
                raise UnsupportedModelError(f"{self.name}: tensor '{weight}.lora_a': the model has no tensor '{weight}'")
            w = base[weight]
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or a.shape[0] < 1:
                raise UnsupportedModelError(f"{self.name}: tensor '{weight}.lora_a' is {_shape(a)} and '{weight}.lora_b' "
                                            f"{_shape(b)}: expected rank x in and out x rank")
            if a.shape[1] != w.cols or b.shape[0] != w.rows:
                raise UnsupportedModelError(
                    f"{self.name}: tensor '{weight}.lora_a' is {_shape(a)} and '{weight}.lora_b' {_shape(b)}, but the "
                    f"model's '{weight}' is {w.rows}x{w.cols} (out x in): expected rank x {w.cols} and {w.rows} x rank")


def _shape(a: np.ndarray) -> str:
    return "x".join(map(str, a.shape))


def load_adapter(path: str | Path, config: ModelConfig) -> LoraAdapter:
    """A GGUF adapter file or a PEFT directory, as float32 (A, B) per base weight."""
    path = Path(path)
    if path.is_dir():
        return _read_peft(path, config)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such LoRA adapter (a GGUF adapter file or a PEFT directory)")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ModelFormatError(f"{path}: not a LoRA adapter (expected a GGUF adapter file or a PEFT directory)")
    return _read_gguf(path)


def _read_gguf(path: Path) -> LoraAdapter:
    from .. import backend
    from ..formats import GGMLType
    from ..io.gguf_reader import GGUFFile

    with GGUFFile(path) as f:
        if f.get("general.type") != "adapter" or f.get("adapter.type") != "lora":
            raise ModelFormatError(f"{path.name}: not a LoRA adapter (general.type={f.get('general.type')!r}, "
                                   f"adapter.type={f.get('adapter.type')!r}; expected 'adapter' and 'lora')")
        alpha = f.get("adapter.lora.alpha", 0.0)
        if not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise ModelFormatError(f"{path.name}: adapter.lora.alpha must be a number, got {alpha!r}")
        halves: dict[str, dict[str, np.ndarray]] = {}
        for name, ti in f.tensors.items():
            base, dot, part = name.rpartition(".")
            if not dot or part not in ("lora_a", "lora_b"):
                raise UnsupportedModelError(f"{path.name}: tensor '{name}' is not a LoRA A or B matrix")
            if ti.n_dims != 2:
                raise ModelFormatError(f"{path.name}: tensor '{name}' has {ti.n_dims} dimensions, expected 2")
            if ti.type == GGMLType.F32:
                arr = np.array(f.tensor_array(name), dtype=np.float32)  # a copy: the file is closed after this
            else:  # F16, BF16 or quantized adapters (convert_lora_to_gguf's default is F16): computed in F32
                arr = backend.dequantize(ti.type, np.ascontiguousarray(f.tensor_bytes(name))).reshape(ti.np_shape)
            halves.setdefault(base, {})[part] = np.ascontiguousarray(arr, dtype=np.float32)
        tensors = {}
        for base, ab in halves.items():
            for part in ("lora_a", "lora_b"):
                if part not in ab:
                    other = "lora_b" if part == "lora_a" else "lora_a"
                    raise ModelFormatError(f"{path.name}: tensor '{base}.{other}' has no '{base}.{part}'")
            tensors[base] = (ab["lora_a"], ab["lora_b"])
        if not tensors:
            raise ModelFormatError(f"{path.name}: the adapter has no tensors")
        return LoraAdapter(path, "gguf", f.architecture, float(alpha), tensors)


def _read_peft(path: Path, config: ModelConfig) -> LoraAdapter:
    from ..convert.rope import hf_permute_to_gguf
    from ..io.safetensors import SafetensorsFile, read_json
    from ..io.torch_zip import TorchZipFile

    cfg_path = path / "adapter_config.json"
    if not cfg_path.is_file():
        raise MissingFileError(f"{path}: not a PEFT adapter directory (no adapter_config.json)")
    try:
        cfg = read_json(cfg_path, "adapter_config.json")
    except CheckpointError as e:
        raise ModelFormatError(str(e)) from None
    if not isinstance(cfg, dict):
        raise ModelFormatError(f"{cfg_path}: expected a JSON object")
    peft_type = str(cfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise UnsupportedModelError(f"{path.name}: PEFT type {peft_type!r} is not supported (only LORA)")
    for key in ("use_dora", "fan_in_fan_out"):
        if cfg.get(key):
            raise UnsupportedModelError(f"{path.name}: adapter_config.json sets {key}, which is not supported")
    if cfg.get("alpha_pattern"):
        raise UnsupportedModelError(f"{path.name}: per-module lora_alpha (alpha_pattern) is not supported")
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if not isinstance(r, int) or r < 1 or not isinstance(alpha, (int, float)):
        raise ModelFormatError(f"{cfg_path}: 'r' must be a positive integer and 'lora_alpha' a number, got {r!r} and {alpha!r}")

    st, pt = path / "adapter_model.safetensors", path / "adapter_model.bin"
    if st.is_file():
        opened: Any = SafetensorsFile(st)
    elif pt.is_file():
        opened = TorchZipFile(pt)
    else:
        raise MissingFileError(f"{path}: no adapter_model.safetensors or adapter_model.bin")
    permute = config.arch in _PERMUTED_ARCHS and not config.rope_neox
    halves: dict[str, dict[str, np.ndarray]] = {}
    try:
        for name in opened.tensors:
            m = _PEFT_NAME.fullmatch(name)
            if m is None or m.group(2) not in HF_MODULES:
                raise UnsupportedModelError(f"{path.name}: tensor '{name}' is not a LoRA matrix of a layer's attention "
                                            f"or feed-forward projection ({', '.join(HF_MODULES)})")
            proj = HF_MODULES[m.group(2)]
            weight = f"blk.{m.group(1)}.{proj}.weight"
            w = opened.load(name)
            if w.ndim != 2:
                raise ModelFormatError(f"{path.name}: tensor '{name}' has {w.ndim} dimensions, expected 2")
            if m.group(3) == "B" and permute and proj in ("attn_q", "attn_k"):
                heads = config.n_head if proj == "attn_q" else config.n_head_kv
                if w.shape[0] % (2 * heads):
                    raise UnsupportedModelError(f"{path.name}: tensor '{name}' has {w.shape[0]} rows, not a multiple of "
                                                f"2 x {heads} heads")
                w = hf_permute_to_gguf(w, heads)
            halves.setdefault(weight, {})[m.group(3)] = np.ascontiguousarray(w, dtype=np.float32)
    except CheckpointError as e:
        raise ModelFormatError(str(e)) from None
    finally:
        opened.close()
    tensors = {}
    for weight, ab in halves.items():
        if set(ab) != {"A", "B"}:
            raise ModelFormatError(f"{path.name}: the LoRA of '{weight}' has only lora_{''.join(ab)}")
        tensors[weight] = (ab["A"], ab["B"])
    if not tensors:
        raise ModelFormatError(f"{path.name}: the adapter has no tensors")
    if cfg.get("use_rslora"):  # scale alpha/sqrt(rank), written as alpha'/rank per tensor below
        alpha_eff = {w: float(np.float32(alpha) * np.sqrt(np.float32(b.shape[1]))) for w, (_, b) in tensors.items()}
        if len(set(alpha_eff.values())) > 1:
            raise UnsupportedModelError(f"{path.name}: rsLoRA with ranks differing between tensors is not supported")
        alpha = next(iter(alpha_eff.values()))
    return LoraAdapter(path, "peft", None, float(alpha), tensors)


def load_adapters(lora: Sequence[Any] | None, config: ModelConfig,
                  loaded: dict[Path, LoraAdapter] | None = None) -> list[tuple[LoraAdapter, float]]:
    """[(adapter, user scale), ...] from a list of adapter paths (scale 1), (path, scale)
    pairs or LoraAdapter objects (also in pairs), each read once.  `loaded`
    (resolved path -> adapter) is consulted and filled, so that naming one file
    again gives the same adapter object, hence the same adapter set (lora_key)."""
    out = []
    for item in lora or ():
        scale = 1.0
        if isinstance(item, (tuple, list)):
            if len(item) != 2 or not isinstance(item[1], (int, float)):
                raise InvalidArgumentError(f"lora: expected an adapter path or an (adapter path, scale) pair, got {item!r}")
            item, scale = item[0], float(item[1])
        if not math.isfinite(scale):
            raise InvalidArgumentError(f"lora: the scale of {item} must be a finite number, got {scale}")
        if isinstance(item, LoraAdapter):
            out.append((item, scale))
            continue
        if not isinstance(item, (str, os.PathLike)):
            raise InvalidArgumentError(f"lora: expected an adapter path or an (adapter path, scale) pair, got {item!r}")
        key = Path(item).resolve()
        adapter = loaded.get(key) if loaded is not None else None
        if adapter is None:
            adapter = load_adapter(item, config)
            if loaded is not None:
                loaded[key] = adapter
        out.append((adapter, scale))
    return out


def lora_key(lora: Sequence[tuple[LoraAdapter, float]]) -> tuple:
    """What makes two adapter sets the same computation: the same adapter objects
    with the same scales, in the same order (the terms are summed in order)."""
    return tuple((adapter, float(scale)) for adapter, scale in lora)


def merge_into_checkpoint(ckpt: Any, lora: Sequence[Any]) -> list[str]:
    """`quantize --lora`: the adapters merged into a convert.Checkpoint's weights
    instead of applied at run time.  Each adapted tensor then loads as
    W + sum(scale·B·A) (summed in float64, rounded once to float32), so it is
    quantized from the merged values.  Returns the merged tensors' names."""
    from .arch import ARCHITECTURES

    if ckpt.arch not in ARCHITECTURES:
        raise UnsupportedModelError(f"{ckpt.path}: architecture {ckpt.arch!r} is not supported")
    n_vocab = ckpt.tensor("token_embd.weight").shape[0]
    config = ARCHITECTURES[ckpt.arch](lambda k, d=None: ckpt.get(k, d), n_vocab)
    adapters = load_adapters(lora, config)
    base = {t.name: _Shape(*t.shape) for t in ckpt.tensors if len(t.shape) == 2}
    for adapter, _ in adapters:
        adapter.check(base, config)
    merged = []
    for t in ckpt.tensors:
        terms = [(adapter.tensors[t.name], adapter.scale(t.name, s)) for adapter, s in adapters if t.name in adapter.tensors]
        if terms:
            t.load, t.blocks, t.source_type = _merged_load(t.load, terms), None, "F32"
            merged.append(t.name)
    return merged


@dataclass(frozen=True)
class _Shape:
    rows: int
    cols: int


def _merged_load(load: Any, terms: list[tuple[tuple[np.ndarray, np.ndarray], float]]) -> Any:
    def merged() -> np.ndarray:
        w = np.asarray(load(), dtype=np.float64)
        for (a, b), scale in terms:
            w += scale * (b.astype(np.float64) @ a.astype(np.float64))
        return np.ascontiguousarray(w, dtype=np.float32)

    return merged


def layer_lora(adapters: Sequence[tuple[LoraAdapter, float]], i: int) -> dict[str, list[tuple[np.ndarray, np.ndarray, float]]]:
    """Layer i's adapters as backend.make_layer takes them: {wq: [(A, B, scale), ...], ...}."""
    out: dict[str, list] = {}
    for adapter, user_scale in adapters:
        for gguf_name, ours in PROJECTIONS.items():
            weight = f"blk.{i}.{gguf_name}.weight"
            if weight in adapter.tensors:
                a, b = adapter.tensors[weight]
                out.setdefault(ours, []).append((a, b, adapter.scale(weight, user_scale)))
    return out


__all__ = ["PROJECTIONS", "LoraAdapter", "layer_lora", "load_adapter", "load_adapters", "lora_key",
           "merge_into_checkpoint"]
