"""GPTQ over a whole model: calibration text run through it layer by layer.

    X = embed(calibration tokens)                    # [n_seq, T, d], embedding as it will be stored
    for each layer:
        run X through the layer at full precision, collecting the inputs of
            q/k/v, of the output projection, of gate/up and of down   -> H = 2/n Σ x xᵀ each
        GPTQ-quantize the layer's matrices against their H
        X = layer(X) with the stored blocks          # later layers see the errors of earlier ones

Inputs are collected with backend.numba.layer.PyLayer, the numpy statement of the
forward pass, at float32; the quantized layer then runs as inference runs it
(the native layer on the stored blocks, F16 KV cache).  A layer is
processed when the writer first asks for one of its tensors, so only the
calibration activations and one layer are held at a time.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .. import backend
from ..backend.numba.layer import PyLayer
from ..convert.checkpoint import Checkpoint
from ..errors import CheckpointError, InvalidArgumentError
from ..formats import quants
from ..model.arch import ARCHITECTURES
from ..model.transformer import LAYER_TENSORS, gather_layer
from .gptq import GPTQ_TYPES, HessianAccumulator, gptq_quantize

# Matrices that read the same input share one Hessian, fed by the first of them.
INPUT_OF = {"wq": "attn_in", "wk": "attn_in", "wv": "attn_in", "wo": "attn_out",
            "w_gate": "ffn_in", "w_up": "ffn_in", "w_down": "ffn_mid"}
RECORDS = {"wq", "wo", "w_gate", "w_down"}
GGUF_NAME = {ours: gguf for gguf, ours in LAYER_TENSORS.items()}
_LAYER_MATRIX = re.compile(r"blk\.(\d+)\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)\.weight$")


class CalibrationLayer(PyLayer):
    """PyLayer whose projections use float32 matrices and can record their inputs."""

    def __init__(self, tensors: dict, weights: dict[str, np.ndarray], params):
        super().__init__(tensors, params)
        self.w = weights  # ours-name -> float32 (rows, cols)
        self.hessians: Optional[dict[str, HessianAccumulator]] = None

    def linear(self, name: str, x: np.ndarray, bias: str = "") -> np.ndarray:
        if self.hessians is not None and name in RECORDS:
            self.hessians[INPUT_OF[name]].add(x)
        y = x @ self.w[name].T
        return y + self.t[bias] if bias in self.t else y


class GPTQRun:
    def __init__(self, ckpt: Checkpoint, plans, *, calib_file: str | Path, calib_tokens: int = 16384,
                 calib_ctx: int = 512, damp: float = 0.01, act_order: bool = True,
                 log: Optional[Callable[[str], None]] = None):
        if ckpt.arch not in ARCHITECTURES:
            raise CheckpointError(f"{ckpt.path}: GPTQ does not support architecture {ckpt.arch!r}")
        self.ckpt = ckpt
        self.types = {p.name: p.type for p in plans}
        self.damp, self.act_order = damp, act_order
        self.log = log or (lambda m: None)
        self.warnings: list[str] = []
        if not any(self.handles(p.name) for p in plans):
            raise InvalidArgumentError(f"GPTQ quantizes to {', '.join(t.name for t in GPTQ_TYPES)}; "
                             f"no layer matrix of this file type is one of them")
        n_vocab = ckpt.tensor("token_embd.weight").shape[0]
        self.config = ARCHITECTURES[ckpt.arch](lambda k, d=None: ckpt.get(k, d), n_vocab)
        if any(t.name == "rope_freqs.weight" for t in ckpt.tensors):
            self.config.rope_freq_factors = ckpt.tensor("rope_freqs.weight").load()
        self.x = self._embed(self._calibration_tokens(Path(calib_file), calib_tokens, calib_ctx))
        self.done = -1  # last layer processed
        self.ready: dict[str, np.ndarray] = {}  # GGUF name -> blocks, until the writer takes them

    def handles(self, name: str) -> bool:
        return _LAYER_MATRIX.match(name) is not None and self.types.get(name) in GPTQ_TYPES

    def quantized(self, name: str) -> np.ndarray:
        layer = int(_LAYER_MATRIX.match(name).group(1))
        while self.done < layer:
            self._process(self.done + 1)
        return self.ready.pop(name)

    # -- calibration data ---------------------------------------------------------------------------------

    def _calibration_tokens(self, path: Path, n_tokens: int, n_ctx: int) -> np.ndarray:
        from ..tokenizer import Tokenizer

        meta = {k: v.value for k, v in self.ckpt.metadata.items() if k.startswith("tokenizer.")}
        if "tokenizer.ggml.tokens" not in meta:
            raise CheckpointError(f"{self.ckpt.path}: no vocabulary to tokenize the calibration text with")
        tok = Tokenizer.from_gguf_metadata(meta)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: cannot read calibration text: {e}") from None
        ids = np.asarray(tok.encode(text), dtype=np.int64)
        n_ctx = min(n_ctx, self.config.n_ctx_train)
        if len(ids) < n_ctx:
            if len(ids) < 16:
                raise CheckpointError(f"{path}: {len(ids)} tokens are too few to calibrate with")
            n_ctx = len(ids)
        n_seq = max(1, min(n_tokens // n_ctx, len(ids) // n_ctx))
        if n_seq * n_ctx < n_tokens:
            self.warnings.append(f"{path.name}: {len(ids)} tokens give {n_seq} calibration sequences of {n_ctx} "
                                 f"({n_seq * n_ctx} tokens, {n_tokens} asked for)")
        seqs = ids[: n_seq * n_ctx].reshape(n_seq, n_ctx).copy()
        if tok.add_bos and tok.bos_id is not None:
            seqs[:, 0] = tok.bos_id  # as perplexity does: each sequence starts like a fresh context
        self.log(f"GPTQ calibration: {n_seq} sequences of {n_ctx} tokens from {path.name}")
        return seqs

    def _embed(self, seqs: np.ndarray) -> np.ndarray:
        """Embeddings of the calibration tokens, rounded to the type the embedding is stored as."""
        emb = self.ckpt.tensor("token_embd.weight").load()
        rows = np.unique(seqs)
        qtype = self.types["token_embd.weight"]
        table = quants.dequantize(quants.quantize(np.ascontiguousarray(emb[rows]), qtype), qtype)
        lookup = np.searchsorted(rows, seqs)
        x = table[lookup] * np.float32(self.config.embed_scale)  # [n_seq, T, d]
        return np.ascontiguousarray(x, dtype=np.float32)

    # -- one layer ------------------------------------------------------------------------------------------

    def _process(self, i: int) -> None:
        start = time.perf_counter()
        ck, cfg = self.ckpt, self.config
        names = {t.name for t in ck.tensors}
        matrices, vecs = gather_layer(i, lambda name: ck.tensor(name) if name in names else None)
        weights = {ours: t.load() for ours, t in matrices.items()}
        vectors = {ours: t.load().reshape(-1) for ours, t in vecs.items()}
        layer = CalibrationLayer(vectors, weights, cfg.layer_params(i))
        n_seq, n_ctx, _ = self.x.shape
        kv_shape = (n_ctx, cfg.n_head_kv, cfg.head_dim)

        # 1. inputs of every matrix, at full precision
        layer.hessians = {INPUT_OF[m]: HessianAccumulator(weights[m].shape[1]) for m in RECORDS}
        for s in range(n_seq):
            layer.forward(self.x[s].copy(), 0, np.zeros(kv_shape, np.float32), np.zeros(kv_shape, np.float32))
        hessians, layer.hessians = layer.hessians, None

        # 2. quantize
        stored: dict[str, tuple[int, np.ndarray]] = {}  # ours -> (type, blocks), as the file will hold them
        losses = []
        for ours, w in weights.items():
            name = f"blk.{i}.{GGUF_NAME[ours]}.weight"
            qtype = self.types[name]
            if qtype in GPTQ_TYPES:
                try:
                    res = gptq_quantize(w, hessians[INPUT_OF[ours]].hessian(), qtype, damp=self.damp,
                                        act_order=self.act_order)
                except (ValueError, np.linalg.LinAlgError) as e:  # weights or activations GPTQ cannot take
                    raise CheckpointError(f"{self.ckpt.path}: {name}: {e}") from None
                self.ready[name] = res.data
                stored[ours] = (int(qtype), res.data)
                losses.append(res.loss)
            else:  # e.g. a mix's higher-precision tensor: round to nearest
                stored[ours] = (int(qtype), quants.quantize(np.ascontiguousarray(w), qtype))

        # 3. the next layer's calibration input: this layer's output as inference computes it from the stored blocks
        run = backend.make_layer(cfg.layer_params(i), {**vectors, **stored})
        for s in range(n_seq):
            run.forward(self.x[s], 0, np.zeros(kv_shape, np.float16), np.zeros(kv_shape, np.float16))
        self.done = i
        self.log(f"GPTQ layer {i + 1}/{cfg.n_layer}: {len(losses)} matrices, mean loss {np.mean(losses):.4g}, "
                 f"{time.perf_counter() - start:.1f} s")
