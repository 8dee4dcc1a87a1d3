"""Hugging Face model directories (config.json + safetensors) as a `Checkpoint`.

Supported: LlamaForCausalLM and MistralForCausalLM (GGUF arch "llama") and
Qwen2ForCausalLM ("qwen2"), converted the way llama.cpp's
``convert_hf_to_gguf.py`` converts them:

* tensor names: ``model.layers.N.self_attn.q_proj.weight`` -> ``blk.N.attn_q.weight`` and so on;
* Q/K rows of llama/mistral: HF stores each head's rotary pairs as two halves
  (rotate-half); llama.cpp's rope wants them interleaved, so rows are permuted
  with ``w.reshape(n_head, 2, rows // n_head // 2, ...).swapaxes(1, 2)`` (n_head_kv
  for K).  Qwen2 runs NeoX-style rope in llama.cpp and is not permuted;
* tied embeddings (``tie_word_embeddings``, or no ``lm_head.weight``): no ``output.weight``;
* ``rope_scaling`` llama3 -> a ``rope_freqs.weight`` F32 tensor; linear ->
  ``{arch}.rope.scaling.type/factor``; yarn (qwen2) -> type/factor/original context;
* every tensor's shape is checked against config.json before anything is loaded.

PyTorch ``pytorch_model*.bin`` weights (no safetensors) are read with the
restricted zip reader of `io.torch_zip`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import CheckpointError
from ..io.gguf_metadata import MetaValue, f32, string, u32
from ..io.safetensors import open_safetensors_model, read_json
from ..model.config import DEFAULT_ROPE_BASE
from ..tokenizer.to_gguf import hf_vocab, spm_vocab
from .checkpoint import Checkpoint, SourceTensor, llama_hparams
from .rope import hf_permute_to_gguf, llama3_rope_factors

__all__ = ["open_hf", "SUPPORTED_ARCHITECTURES", "llama3_rope_factors", "hf_permute_to_gguf"]

SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
_MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}

_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}
_GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.([a-z_]+\.[a-z_]+|[a-z_]+)\.(weight|bias)")
_IGNORED_RE = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
_BLOCK_ORDER = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]


@dataclass
class _HParams:
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    n_ctx: int
    norm_eps: float
    rope_base: float
    explicit_head_dim: bool


def _int_param(config: dict, cfg_path: Path, *keys: str, default: Optional[int] = None) -> int:
    for k in keys:
        v = config.get(k)
        if v is not None:
            if type(v) is not int or v <= 0:
                raise CheckpointError(f"{cfg_path}: {k} = {v!r} is not a positive integer")
            return v
    if default is None:
        raise CheckpointError(f"{cfg_path}: missing {keys[0]}")
    return default


def _float_param(config: dict, cfg_path: Path, key: str, default: float) -> float:
    v = config.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise CheckpointError(f"{cfg_path}: {key} = {v!r} is not a positive number")
    return float(v)


def _hparams(config: dict, cfg_path: Path) -> _HParams:
    n_embd = _int_param(config, cfg_path, "hidden_size")
    n_head = _int_param(config, cfg_path, "num_attention_heads")
    n_head_kv = _int_param(config, cfg_path, "num_key_value_heads", default=n_head)
    head_dim = config.get("head_dim")
    explicit = head_dim is not None
    if explicit:
        head_dim = _int_param(config, cfg_path, "head_dim")
    elif n_embd % n_head:
        raise CheckpointError(f"{cfg_path}: hidden_size {n_embd} is not a multiple of num_attention_heads {n_head}")
    else:
        head_dim = n_embd // n_head
    if n_head % n_head_kv:
        raise CheckpointError(f"{cfg_path}: num_attention_heads {n_head} is not a multiple of "
                              f"num_key_value_heads {n_head_kv}")
    if head_dim % 2:
        raise CheckpointError(f"{cfg_path}: head dimension {head_dim} is odd; rope needs pairs")
    rope = config.get("rope_parameters") if isinstance(config.get("rope_parameters"), dict) else {}
    theta = config.get("rope_theta", rope.get("rope_theta"))
    return _HParams(
        n_embd=n_embd, n_ff=_int_param(config, cfg_path, "intermediate_size"),
        n_layer=_int_param(config, cfg_path, "num_hidden_layers"), n_head=n_head, n_head_kv=n_head_kv,
        head_dim=head_dim, n_vocab=_int_param(config, cfg_path, "vocab_size"),
        n_ctx=_int_param(config, cfg_path, "max_position_embeddings", "n_ctx", "n_positions", default=2048),
        norm_eps=_float_param(config, cfg_path, "rms_norm_eps", 1e-6),
        rope_base=_float_param({"rope_theta": theta}, cfg_path, "rope_theta", DEFAULT_ROPE_BASE), explicit_head_dim=explicit)


def _expected_shapes(hp: _HParams, arch: str) -> dict[str, tuple[int, ...]]:
    q, kv = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
    per_layer = {
        "attn_q.weight": (q, hp.n_embd), "attn_k.weight": (kv, hp.n_embd), "attn_v.weight": (kv, hp.n_embd),
        "attn_output.weight": (hp.n_embd, q), "ffn_gate.weight": (hp.n_ff, hp.n_embd),
        "ffn_up.weight": (hp.n_ff, hp.n_embd), "ffn_down.weight": (hp.n_embd, hp.n_ff),
        "attn_norm.weight": (hp.n_embd,), "ffn_norm.weight": (hp.n_embd,),
        "attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,), "attn_output.bias": (hp.n_embd,),
        "ffn_gate.bias": (hp.n_ff,), "ffn_up.bias": (hp.n_ff,), "ffn_down.bias": (hp.n_embd,),
    }
    shapes = {"token_embd.weight": (hp.n_vocab, hp.n_embd), "output_norm.weight": (hp.n_embd,),
              "output.weight": (hp.n_vocab, hp.n_embd)}
    for i in range(hp.n_layer):
        for k, s in per_layer.items():
            shapes[f"blk.{i}.{k}"] = s
    return shapes


def _gguf_name(hf_name: str) -> Optional[str]:
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    m = _LAYER_RE.fullmatch(hf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"blk.{int(m.group(1))}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"
    return None


def _hf_name(gguf_name: str) -> str:
    for hf, g in _GLOBAL_NAMES.items():
        if g == gguf_name:
            return hf
    _, i, part, kind = gguf_name.split(".")
    return f"model.layers.{i}.{next(h for h, g in _LAYER_NAMES.items() if g == part)}.{kind}"


def _sort_key(name: str):
    if name == "rope_freqs.weight":
        return (0, 0, 0, 0)
    if name == "token_embd.weight":
        return (1, 0, 0, 0)
    if name.startswith("blk."):
        _, i, part, kind = name.split(".")
        return (2, int(i), _BLOCK_ORDER.index(part), kind != "weight")
    return (3, name != "output_norm.weight", 0, 0)


def _general_name(config: dict, directory: Path) -> dict[str, MetaValue]:
    """general.* naming as llama.cpp derives it from _name_or_path or the directory name."""
    model_id = config.get("_name_or_path")
    if not isinstance(model_id, str) or not model_id or model_id.count("/") > 1:
        model_id = directory.resolve().name
    meta = {"general.type": string("model"), "general.name": string(model_id)}
    try:
        from gguf.metadata import Metadata

        full, org, basename, finetune, version, size_label = Metadata.get_model_id_components(model_id, 0)
        if full:
            meta["general.name"] = string(Metadata.id_to_title(full))
    except (ImportError, AttributeError, TypeError, ValueError, IndexError):
        return meta
    for key, val in (("organization", org and Metadata.id_to_title(org)), ("basename", basename),
                     ("finetune", finetune), ("version", version), ("size_label", size_label)):
        if isinstance(val, str) and val:
            meta[f"general.{key}"] = string(val)
    return meta


def _rope_scaling(config: dict, cfg_path: Path, arch: str, hp: _HParams, warnings: list):
    """(extra metadata, rope_freqs array or None)."""
    rs = config.get("rope_scaling") or config.get("rope_parameters")
    if rs is None:
        return {}, None
    if not isinstance(rs, dict):
        raise CheckpointError(f"{cfg_path}: rope_scaling is not an object")
    kind = str(rs.get("rope_type", rs.get("type", "default"))).lower()
    if kind == "default":
        return {}, None

    def num(key: str, default: Optional[float]) -> float:
        v = rs.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise CheckpointError(f"{cfg_path}: rope_scaling.{key} = {v!r} is not a positive number")
        return float(v)

    if kind == "linear" and "factor" in rs:
        return {f"{arch}.rope.scaling.type": string("linear"), f"{arch}.rope.scaling.factor": f32(num("factor", None))}, None
    if kind == "llama3" and arch == "llama":
        low, high = num("low_freq_factor", 1.0), num("high_freq_factor", 4.0)
        if low == high:
            raise CheckpointError(f"{cfg_path}: rope_scaling low_freq_factor equals high_freq_factor ({low})")
        # transformers reads it from rope_scaling; llama.cpp's converter from the top level (the same
        # 8192 in every Llama 3.x config), which would misplace the bands of any other model.
        old_ctx = (num("original_max_position_embeddings", None) if "original_max_position_embeddings" in rs
                   else _float_param(config, cfg_path, "original_max_position_embeddings", 8192.0))
        return {}, llama3_rope_factors(hp.rope_base, hp.head_dim, num("factor", 8.0), low, high, old_ctx)
    if kind == "yarn" and arch == "qwen2" and "factor" in rs:
        orig = rs.get("original_max_position_embeddings")
        if type(orig) is not int or orig <= 0:
            raise CheckpointError(f"{cfg_path}: yarn rope_scaling needs original_max_position_embeddings")
        return {f"{arch}.rope.scaling.type": string("yarn"), f"{arch}.rope.scaling.factor": f32(num("factor", None)),
                f"{arch}.rope.scaling.original_context_length": u32(orig)}, None
    warnings.append(f"{cfg_path}: rope_scaling type {kind!r} is ignored (as llama.cpp's converter ignores it "
                    f"for {arch})")
    return {}, None


def _open_weights(directory: Path):
    weights = open_safetensors_model(directory)
    if weights is not None:
        return weights
    from ..io.torch_zip import open_torch_model

    weights = open_torch_model(directory)
    if weights is None:
        raise CheckpointError(f"{directory}: no weights (model.safetensors, model.safetensors.index.json, "
                              f"*.safetensors or pytorch_model.bin)")
    return weights


def _vocab(directory: Path, tokenizer: Optional[Path], n_vocab: int, warnings: list) -> dict[str, MetaValue]:
    if tokenizer is None:
        return hf_vocab(directory, n_vocab, warnings)
    tokenizer = Path(tokenizer)
    if tokenizer.is_dir():
        return hf_vocab(tokenizer, n_vocab, warnings)
    if tokenizer.suffix == ".json":
        return hf_vocab(tokenizer.parent, n_vocab, warnings)
    return spm_vocab(tokenizer, n_vocab)


def open_hf(path: Path, tokenizer: Path | None = None) -> Checkpoint:
    """Opens a Hugging Face model directory (or a file inside one)."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{directory}: no config.json (not a Hugging Face model directory)")
    config = read_json(cfg_path, "model config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_path}: not a JSON object")
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and all(isinstance(a, str) for a in archs):
        hf_arch = archs[0]
    elif isinstance(config.get("model_type"), str) and config["model_type"] in _MODEL_TYPES:
        hf_arch = _MODEL_TYPES[config["model_type"]]
    else:
        raise CheckpointError(f"{cfg_path}: no 'architectures' list naming the model class")
    if hf_arch not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(f"{cfg_path}: architecture {hf_arch!r} is not supported "
                              f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    arch = SUPPORTED_ARCHITECTURES[hf_arch]
    hp = _hparams(config, cfg_path)
    warnings: list[str] = []
    rope_meta, rope_freqs = _rope_scaling(config, cfg_path, arch, hp, warnings)

    weights = _open_weights(directory)
    try:
        tensors = _tensors(weights, config, cfg_path, arch, hp, rope_freqs)
        meta: dict[str, MetaValue] = {"general.architecture": string(arch)}
        meta.update(_general_name(config, directory))
        meta.update(llama_hparams(
            arch, n_ctx=hp.n_ctx, n_embd=hp.n_embd, n_ff=hp.n_ff, n_layer=hp.n_layer, n_head=hp.n_head,
            n_head_kv=hp.n_head_kv, norm_eps=hp.norm_eps, rope_base=hp.rope_base,
            rope_dim=hp.head_dim if arch == "llama" else None, n_vocab=hp.n_vocab if arch == "llama" else None,
            head_dim=hp.head_dim))
        meta.update(rope_meta)
        meta.update(_vocab(directory, tokenizer, hp.n_vocab, warnings))
    except BaseException:
        weights.close()
        raise
    return Checkpoint(path=directory, kind="hf", arch=arch, metadata=meta, tensors=tensors, warnings=warnings,
                      _close=weights.close)


def _tensors(weights, config: dict, cfg_path: Path, arch: str, hp: _HParams,
             rope_freqs: Optional[np.ndarray]) -> list[SourceTensor]:
    expected = _expected_shapes(hp, arch)
    tied = bool(config.get("tie_word_embeddings", False)) or "lm_head.weight" not in weights.names
    found: dict[str, str] = {}  # gguf name -> hf name
    for hf_name in weights.names:
        entry = weights.entry(hf_name)
        if _IGNORED_RE.fullmatch(hf_name) or (tied and hf_name == "lm_head.weight"):
            continue
        name = _gguf_name(hf_name)
        if name is None:
            raise CheckpointError(f"{entry.file}: tensor {hf_name!r} has no GGUF counterpart for {arch}")
        want = expected.get(name)
        if want is None:
            raise CheckpointError(f"{entry.file}: tensor {hf_name!r} is beyond the {hp.n_layer} layers "
                                  f"of {cfg_path.name}")
        if tuple(entry.shape) != want:
            raise CheckpointError(f"{entry.file}: tensor {hf_name!r} ({name}) has shape {list(entry.shape)}, but "
                                  f"{cfg_path.name} implies {list(want)}")
        found[name] = hf_name
    required = ["token_embd.weight", "output_norm.weight"] + [
        f"blk.{i}.{p}.weight" for i in range(hp.n_layer) for p in _BLOCK_ORDER]
    if arch == "qwen2":
        required += [f"blk.{i}.{p}.bias" for i in range(hp.n_layer) for p in ("attn_q", "attn_k", "attn_v")]
    missing = [n for n in required if n not in found]
    if missing:
        raise CheckpointError(f"{cfg_path.parent}: {len(missing)} tensors are missing from the weights, "
                              f"e.g. {_hf_name(missing[0])!r} ({missing[0]})")

    def loader(hf_name: str, shape: tuple[int, ...], heads: int) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            a = weights.load(hf_name)
            if a.shape != shape:
                raise CheckpointError(f"{weights.entry(hf_name).file}: tensor {hf_name!r} loaded with shape "
                                      f"{a.shape}, expected {shape}")
            return hf_permute_to_gguf(a, heads) if heads else np.ascontiguousarray(a)
        return load

    out = []
    for name, hf_name in found.items():
        part = name.split(".")[2] if name.startswith("blk.") else ""
        heads = 0
        if arch == "llama" and part in ("attn_q", "attn_k"):
            heads = hp.n_head if part == "attn_q" else hp.n_head_kv
        shape = expected[name]
        out.append(SourceTensor(name, shape, weights.entry(hf_name).dtype, loader(hf_name, shape, heads)))
    if rope_freqs is not None:
        freqs = rope_freqs.astype(np.float32)
        out.append(SourceTensor("rope_freqs.weight", freqs.shape, "F32", lambda: freqs.copy()))
    out.sort(key=lambda t: _sort_key(t.name))
    return out
