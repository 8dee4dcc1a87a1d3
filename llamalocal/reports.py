"""What `llamalocal info` prints about a model file."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .formats import GGMLType
from .io.gguf_reader import GGUFFile
from .io.legacy_ggml import open_model_file
from .model.kv_cache import DEFAULT_CONTEXT_CAP


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def _fmt_count(n: int) -> str:
    for div, suffix in ((10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= div:
            return f"{n / div:.2f}{suffix}"
    return str(n)


def _scalar(v: Any) -> Any:
    """Per-layer arrays (e.g. head_count_kv in some models) shown by their distinct values."""
    if isinstance(v, np.ndarray):
        vals = sorted(set(v.tolist()))
        return vals[0] if len(vals) == 1 else "/".join(str(x) for x in vals)
    return v


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    return None


def kv_cache_bytes(f: GGUFFile, n_ctx: int, bytes_per_value: int = 2) -> int | None:
    """K and V cache for `n_ctx` tokens (F16 by default); None when the hyperparameters are missing."""
    n_layers = _as_int(f.arch_get("block_count"))
    n_embd = _as_int(f.arch_get("embedding_length"))
    n_head = f.arch_get("attention.head_count")
    n_kv = f.arch_get("attention.head_count_kv", n_head)
    if n_layers is None or n_head is None or n_kv is None:
        return None
    heads = np.asarray(n_head).reshape(-1)
    kv = np.asarray(n_kv, dtype=np.int64).reshape(-1)
    if kv.size == 1:
        kv = np.full(n_layers, int(kv[0]), dtype=np.int64)
    if kv.size != n_layers or heads.size == 0 or int(heads.max()) <= 0:
        return None
    k_len = _as_int(f.arch_get("attention.key_length"))
    v_len = _as_int(f.arch_get("attention.value_length"))
    if k_len is None or v_len is None:
        if n_embd is None:
            return None
        hd = n_embd // int(heads.max())
        k_len = hd if k_len is None else k_len
        v_len = hd if v_len is None else v_len
    return int(kv.sum()) * n_ctx * (k_len + v_len) * bytes_per_value


def describe(path: str | os.PathLike[str]) -> str:
    """Human-readable summary printed by `llamalocal info MODEL` (a GGUF file, or a pre-GGUF one as the GGUF
    it loads as)."""
    with open_model_file(path) or GGUFFile(path) as f:  # GGUFFile names what is wrong with any other file
        lines: list[str] = []
        add = lines.append
        arch = f.architecture or "(unknown)"
        add(f"model:        {f.name or Path(path).name}")
        add(f"architecture: {arch}")
        summary = [arch]
        n_blocks = _as_int(f.arch_get("block_count"))
        if n_blocks is not None:
            summary.append(f"{n_blocks} blocks")
        if f.tensors:
            n_params = sum(t.n_elements for t in f.tensors.values())
            summary.append(f"{_fmt_count(n_params)} parameters")
            weight_elems: dict[GGMLType, int] = {}
            for t in f.tensors.values():
                if t.n_dims >= 2:
                    weight_elems[t.type] = weight_elems.get(t.type, 0) + t.n_elements
            if weight_elems:
                summary.append(f"mostly {max(weight_elems, key=weight_elems.__getitem__).name}")
        add(f"summary:      {', '.join(summary)}")
        add(f"file:         {f.path} ({f.file_size:,} bytes, {_fmt_bytes(f.file_size)})")
        if f.format_name != "gguf":
            add(f"format:       {f.format_name} (pre-GGUF llama.cpp file; read as the GGUF below, constants of its "
                f"era assumed), {len(f.tensors)} tensors")
        else:
            add(f"format:       GGUF v{f.version}, alignment {f.alignment}, {len(f.metadata)} metadata keys, "
                f"{len(f.tensors)} tensors")
        for w in getattr(f, "warnings", ()):
            add(f"warning:      {w}")

        hp_keys = [
            ("context_length", "context_length"),
            ("embedding_length", "embedding_length"),
            ("block_count", "block_count"),
            ("feed_forward_length", "feed_forward_length"),
            ("attention.head_count", "head_count"),
            ("attention.head_count_kv", "head_count_kv"),
            ("attention.key_length", "key_length"),
            ("attention.value_length", "value_length"),
            ("rope.freq_base", "rope.freq_base"),
            ("rope.dimension_count", "rope.dimension_count"),
            ("rope.scaling.type", "rope.scaling.type"),
            ("rope.scaling.factor", "rope.scaling.factor"),
            ("attention.layer_norm_rms_epsilon", "rms_norm_eps"),
            ("attention.layer_norm_epsilon", "norm_eps"),
            ("attention.sliding_window", "sliding_window"),
            ("vocab_size", "vocab_size"),
            ("expert_count", "expert_count"),
            ("expert_used_count", "expert_used_count"),
        ]
        hp = [(label, _scalar(f.arch_get(k))) for k, label in hp_keys if f.arch_get(k) is not None]
        if hp:
            add("hyperparameters:")
            width = max(len(label) for label, _ in hp)
            for label, v in hp:
                add(f"  {label:<{width}}  {v:g}" if isinstance(v, float) else f"  {label:<{width}}  {v}")

        if f.tensors:
            by_type: dict[GGMLType, list[int]] = {}
            for t in f.tensors.values():
                acc = by_type.setdefault(t.type, [0, 0, 0])
                acc[0] += 1
                acc[1] += t.n_bytes
                acc[2] += t.n_elements
            add("tensors:")
            for gt, (count, nb, ne) in sorted(by_type.items(), key=lambda kv: -kv[1][1]):
                add(f"  {gt.name:<5} {count:4d} tensors  {_fmt_bytes(nb):>12}  {8 * nb / ne:6.2f} bits/weight")
            total_bytes = sum(v[1] for v in by_type.values())
            total_params = sum(v[2] for v in by_type.values())
            add(f"  total {len(f.tensors):4d} tensors  {_fmt_bytes(total_bytes):>12}  "
                f"{8 * total_bytes / total_params:6.2f} bits/weight")
            add(f"parameters:   {total_params:,} ({_fmt_count(total_params)})")
        else:
            total_bytes = 0
            add("tensors:      none (vocabulary-only file)")

        tok_model = f.get("tokenizer.ggml.model")
        tokens = f.get("tokenizer.ggml.tokens")
        if tok_model is not None or tokens is not None:
            parts = [f"model {tok_model}"]
            if f.get("tokenizer.ggml.pre") is not None:
                parts.append(f"pre {f.get('tokenizer.ggml.pre')}")
            if tokens is not None:
                parts.append(f"vocab {len(tokens)}")
            merges = f.get("tokenizer.ggml.merges")
            if merges is not None:
                parts.append(f"merges {len(merges)}")
            for key, label in (("bos_token_id", "bos"), ("eos_token_id", "eos")):
                tid = f.get(f"tokenizer.ggml.{key}")
                if tid is not None:
                    piece = tokens[tid] if isinstance(tokens, list) and isinstance(tid, int) and 0 <= tid < len(
                        tokens) else None
                    parts.append(f"{label} {tid}" + (f" {piece!r}" if piece is not None else ""))
            add(f"tokenizer:    {', '.join(parts)}")
        else:
            add("tokenizer:    none")
        tmpl = f.get("tokenizer.chat_template")
        if isinstance(tmpl, str):
            add(f"chat template: present ({len(tmpl):,} chars)")
        else:
            add("chat template: none")

        ctx_train = _as_int(f.arch_get("context_length"))
        n_ctx = min(ctx_train, DEFAULT_CONTEXT_CAP) if ctx_train else DEFAULT_CONTEXT_CAP
        kv = kv_cache_bytes(f, n_ctx)
        if kv is None:
            add(f"memory:       {_fmt_bytes(total_bytes)} weights (mapped); KV cache unknown")
        else:
            add(f"memory:       {_fmt_bytes(total_bytes)} weights (mapped) + {_fmt_bytes(kv)} KV cache "
                f"(F16, {n_ctx} tokens) = {_fmt_bytes(total_bytes + kv)}")
        return "\n".join(lines)
