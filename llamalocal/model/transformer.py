"""The LLaMA-family transformer, shared by every architecture in arch/.

    x = embed(tokens) * embed_scale                     # [T, d]
    for each layer:                                     # fused in C++ (native/layer.cpp)
        h = x + attn(norm(x))                           #   or backend/numba/layer.py
        x = h + ffn(norm(h))
    logits = norm(x) · W_outᵀ                           # [T, vocab]

Weights stay where the loader put them (views into the memory-mapped file),
but for the interleaved copies of the matrices whose types the x86 kernels
read so (backend.interleaved_types; layer_matrix), all in one buffer of huge pages
(InterleavedCopies); the KV cache belongs to the caller.
`with_lora` gives the same model under other LoRA adapters: only the layer
objects differ, every weight is shared.
"""
from __future__ import annotations

import copy
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, TypeVar

import numpy as np

from .. import backend
from ..errors import ContextFullError, InvalidArgumentError, UnsupportedModelError
from ..formats import GGMLType
from ..io.gguf_reader import release_pages
from .config import ModelConfig
from .kv_cache import DEFAULT_CONTEXT_CAP, KVCache
from .lora import LoraAdapter, layer_lora, lora_key


@dataclass
class QTensor:
    """A weight tensor: rows of `cols` weights of `type`, as raw bytes (rows, row_bytes)."""

    name: str
    type: GGMLType
    rows: int
    cols: int
    data: np.ndarray  # uint8, C-contiguous (rows, row_bytes)

    def f32(self) -> np.ndarray:
        """The tensor as float32 (rows, cols); zero-copy for F32 tensors."""
        if self.type == GGMLType.F32:
            return self.data.view(np.float32).reshape(self.rows, self.cols)
        return backend.dequantize(self.type, self.data)

    def vector(self) -> np.ndarray:
        return np.ascontiguousarray(self.f32().reshape(-1), dtype=np.float32)


T = TypeVar("T")

# GGUF tensor names of one layer -> the names the layer implementations use.
LAYER_TENSORS = {
    "attn_norm": "attn_norm", "attn_q": "wq", "attn_k": "wk", "attn_v": "wv", "attn_output": "wo",
    "attn_q_norm": "q_norm", "attn_k_norm": "k_norm", "post_attention_norm": "attn_post_norm",
    "ffn_norm": "ffn_norm", "ffn_gate": "w_gate", "ffn_up": "w_up", "ffn_down": "w_down", "post_ffw_norm": "ffn_post_norm",
}
MATRICES = {"wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"}
BIASES = {"attn_q": "bq", "attn_k": "bk", "attn_v": "bv"}
# with_lora views a model keeps (least recently used dropped first); a view a
# session still holds lives on with it, this only bounds what is kept for reuse
MAX_LORA_VIEWS = 8


def gather_layer(i: int, find: Callable[[str], Optional[T]]) -> tuple[dict[str, T], dict[str, T]]:
    """Layer i's tensors, looked up by GGUF name with `find` (None: absent),
    as (matrices, vectors) under the layer's names (wq ..., attn_norm ..., bq ...)."""
    matrices: dict[str, T] = {}
    vectors: dict[str, T] = {}
    for gguf_name, ours in LAYER_TENSORS.items():
        t = find(f"blk.{i}.{gguf_name}.weight")
        if t is not None:
            (matrices if ours in MATRICES else vectors)[ours] = t
    for gguf_name, ours in BIASES.items():
        t = find(f"blk.{i}.{gguf_name}.bias")
        if t is not None:
            vectors[ours] = t
    return matrices, vectors


class InterleavedCopies:
    """Where the layers' interleaved copies go: one buffer of huge pages for them
    all (backend.huge_page_buffer), cut in the order the copies are made."""

    ALIGN = 64

    def __init__(self, matrices: Sequence[QTensor], interleaved: frozenset[int]):
        self.interleaved = interleaved
        sizes = [self._span(t) for t in matrices if self.wanted(t)]
        self.buffer = backend.huge_page_buffer(sum(sizes)) if sizes else None
        self.used = 0

    def wanted(self, t: QTensor) -> bool:
        return int(t.type) in self.interleaved and t.rows % backend.interleave_group(t.type) == 0

    def _span(self, t: QTensor) -> int:
        return -(-t.data.nbytes // self.ALIGN) * self.ALIGN

    def take(self, t: QTensor) -> np.ndarray:
        out = self.buffer[self.used:self.used + t.data.nbytes].reshape(t.data.shape)
        self.used += self._span(t)
        return out


COPY_CHUNK = 16 << 20


def layer_matrix(t: QTensor, copies: InterleavedCopies) -> tuple:
    """A layer's matrix as the backend takes it: (type id, rows), plus the rows
    interleaved where the kernels multiply that type fastest (decode then
    streams one run of memory per group of rows, as llama.cpp's repacked
    weights do).  The copy takes the mapped rows' place in memory: their pages are
    released (the file stays mapped, and whatever reads the rows again, e.g.
    another ISA path, maps them back in), so the model stays at its file's size,
    also while it loads: a large matrix (Gemma 3's 170 MB classifier) is copied
    COPY_CHUNK bytes of rows at a time, each chunk's pages released before the next."""
    if not copies.wanted(t):
        return (int(t.type), t.data)
    copy = copies.take(t)
    group = backend.interleave_group(t.type)
    step = max(1, COPY_CHUNK // max(1, t.data.shape[1] * group)) * group
    for r0 in range(0, t.rows, step):
        rows = slice(r0, r0 + step)
        backend.interleave_rows(t.type, t.data[rows], t.cols, out=copy[rows])
        release_pages(t.data[rows])
    return (int(t.type), t.data, copy)


class Transformer:
    def __init__(self, config: ModelConfig, tensors: dict[str, QTensor], source: str = "model"):
        self.config = config
        self.source = source

        def need(name: str) -> QTensor:
            if name not in tensors:
                raise UnsupportedModelError(f"{source}: tensor '{name}' is missing")
            return tensors[name]

        self.token_embd = need("token_embd.weight")
        if (self.token_embd.rows, self.token_embd.cols) != (config.n_vocab, config.n_embd):
            raise UnsupportedModelError(
                f"{source}: token_embd.weight is {self.token_embd.rows}x{self.token_embd.cols}, expected {config.n_vocab}x{config.n_embd}")
        self.output_norm = need("output_norm.weight").vector()
        # Tied embeddings: without output.weight the embedding matrix is the classifier.
        self.output = tensors.get("output.weight", self.token_embd)
        if "rope_freqs.weight" in tensors:
            config.rope_freq_factors = tensors["rope_freqs.weight"].vector()

        self.tensors = tensors
        self._layer_tensors = []
        layers = [gather_layer(i, tensors.get) for i in range(config.n_layer)]
        copies = InterleavedCopies([t for matrices, _ in layers for t in matrices.values()] + [self.output],
                                   backend.interleaved_types())
        for matrices, vectors in layers:
            self._layer_tensors.append({**{k: layer_matrix(t, copies) for k, t in matrices.items()},
                                        **{k: t.vector() for k, t in vectors.items()}})
        # the classifier's copy, where its type gets one (a tied embedding's rows
        # are still looked up in the mapped file)
        self.output_il = layer_matrix(self.output, copies)[2] if copies.wanted(self.output) else None
        self.lora: list[tuple[LoraAdapter, float]] = []
        self.layers = self._make_layers(self.lora)
        # with_lora's views, by adapter set (lora_key), kept by the model they view
        self._root = self
        self._views: OrderedDict[tuple, Transformer] = OrderedDict()
        self._views_lock = threading.Lock()

    def _make_layers(self, lora: Sequence[tuple[LoraAdapter, float]]) -> list:
        layers = []
        for i, layer_tensors in enumerate(self._layer_tensors):
            adapters = layer_lora(lora, i)
            try:
                layers.append(backend.make_layer(self.config.layer_params(i),
                                                 {**layer_tensors, "lora": adapters} if adapters else layer_tensors))
            except ValueError as e:
                raise UnsupportedModelError(f"{self.source}: layer {i}: {e}") from None
        return layers

    def set_lora(self, lora: Sequence[tuple[LoraAdapter, float]]) -> None:
        """Applies these (adapter, user scale) pairs, unmerged, instead of the
        current ones (none: the base model).  Refuses, by tensor name, an adapter
        that does not fit; the base weights are untouched.  KV caches filled under
        other adapters no longer match this model: start them again."""
        if self._root is not self:
            raise InvalidArgumentError("set_lora() on a with_lora() view, which other sessions may share: "
                                       "call with_lora() on the loaded model instead")
        for adapter, _ in lora:
            adapter.check(self.tensors, self.config)
        self.layers = self._make_layers(lora)
        self.lora = list(lora)

    @property
    def lora_key(self) -> tuple:
        """This model's adapter set, as lora.lora_key compares them."""
        return lora_key(self.lora)

    def with_lora(self, lora: Sequence[tuple[LoraAdapter, float]]) -> Transformer:
        """This model with these (adapter, user scale) pairs applied unmerged instead
        of its own (none: the base model), for sessions that each pick their own.
        A view: it shares every weight tensor (the memory-mapped file), the
        config and the output matrix with this model; only its layer objects
        differ, which point at the same weights plus the adapters' A and B.
        Views are kept by adapter set (the same adapter objects and scales), so
        switching between sets already made costs nothing; the set this model
        has itself gives this model.  Adapters that do not fit are refused by
        tensor name, as set_lora refuses them."""
        root = self._root
        lora = [(adapter, float(scale)) for adapter, scale in lora]
        key = lora_key(lora)
        if key == root.lora_key:
            return root
        with root._views_lock:
            view = root._views.get(key)
            if view is not None:
                root._views.move_to_end(key)
                return view
        for adapter, scale in lora:
            if not math.isfinite(scale):
                raise InvalidArgumentError(f"lora: the scale of {adapter.name} must be a finite number, got {scale}")
            adapter.check(root.tensors, root.config)
        # A shallow copy shares every attribute (weights, config, output, and
        # whatever else the model holds); only the layers and the adapter list
        # are the view's own.  Forward passes over views of one model are
        # serialized by their callers' lock, as they are over the model itself.
        view = copy.copy(root)
        view.layers = root._make_layers(lora)
        view.lora = lora
        with root._views_lock:
            view = root._views.setdefault(key, view)  # another thread may have made it meanwhile
            root._views.move_to_end(key)
            while len(root._views) > MAX_LORA_VIEWS:
                root._views.popitem(last=False)
        return view

    def new_cache(self, n_ctx: Optional[int] = None, dtype: str = "f16") -> KVCache:
        """A KV cache for n_ctx tokens (default: the training context, at most DEFAULT_CONTEXT_CAP)."""
        c = self.config
        return KVCache(c.n_layer, n_ctx or min(c.n_ctx_train, DEFAULT_CONTEXT_CAP), c.n_head_kv, c.head_dim, dtype)

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        rows = self.token_embd.data[tokens]  # [T, row_bytes]: only the rows used are read
        x = backend.dequantize(self.token_embd.type, np.ascontiguousarray(rows)).reshape(len(tokens), self.config.n_embd)
        if self.config.embed_scale != 1.0:
            x *= np.float32(self.config.embed_scale)
        return np.ascontiguousarray(x, dtype=np.float32)

    def forward(self, tokens, cache: KVCache, all_logits: bool = False, n_logits: Optional[int] = None) -> np.ndarray:
        """Evaluates tokens at the cache's next positions; returns logits of the
        last token (vocab,), of every token (T, vocab), or of the last n_logits
        tokens (n_logits, vocab)."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        n = len(tokens)
        if n == 0:
            raise ValueError("forward() needs at least one token")
        if tokens.min() < 0 or tokens.max() >= self.config.n_vocab:
            raise ValueError(f"token ids must be in [0, {self.config.n_vocab}), got {tokens.min()}..{tokens.max()}")
        if n > cache.n_free:
            raise ContextFullError(f"{n} more tokens do not fit: {cache.n_tokens} of {cache.n_ctx} context positions are used")
        pos0 = cache.n_tokens
        keep = n if all_logits else min(n_logits or 1, n)
        x = self.embed(tokens)  # [T, d]
        last = len(self.layers) - 1
        for i, (layer, k, v) in enumerate(zip(self.layers, cache.k, cache.v)):
            # x = h + ffn(norm(h)), h = x + attn(norm(x)); as in llama.cpp, the last
            # layer's FFN runs on the rows whose logits are wanted only
            layer.forward(x, pos0, k, v, n_out=keep if i == last else n)
        cache.n_tokens = pos0 + n
        x = backend.rms_norm(np.ascontiguousarray(x[n - keep :]), self.output_norm, self.config.norm_eps)
        logits = backend.matmul(self.output.type, self.output.data, x, w_il=self.output_il)  # [keep, vocab]
        return logits if (all_logits or n_logits) else logits[0]

    def forward_batch(self, tokens: Sequence[int], seq: Sequence[int], caches: Sequence[KVCache]) -> np.ndarray:
        """Evaluates the tokens of several sequences in one pass (continuous
        batching): token t belongs to sequence seq[t] and goes to caches[seq[t]]
        at that cache's next position.  The tokens of one sequence are
        contiguous; every cache gets at least one.  Returns the logits of each
        sequence's last token, (len(caches), vocab), in the order of caches.

        The matmuls run once over every row, so a decode step of several
        sequences reads the weights once; each token's RoPE, cache write and
        attention are its own sequence's, computed as forward() would compute
        them (a one-sequence batch gives forward()'s logits bit for bit)."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        seq = np.asarray(seq, dtype=np.int64).reshape(-1)
        n, n_seq = len(tokens), len(caches)
        if n == 0 or n_seq == 0:
            raise ValueError("forward_batch() needs at least one token and one cache")
        if len(seq) != n:
            raise ValueError(f"seq has {len(seq)} entries for {n} tokens")
        if tokens.min() < 0 or tokens.max() >= self.config.n_vocab:
            raise ValueError(f"token ids must be in [0, {self.config.n_vocab}), got {tokens.min()}..{tokens.max()}")
        if seq.min() < 0 or seq.max() >= n_seq:
            raise ValueError(f"sequence ids must be in [0, {n_seq}), got {seq.min()}..{seq.max()}")
        # runs of rows as Python ints: a decode step has a few, and numpy's
        # per-call costs were most of this method's own time
        starts = [0, *(np.flatnonzero(seq[1:] != seq[:-1]) + 1).tolist()]
        ends = [*starts[1:], n]
        order = seq[starts].tolist()  # the sequence of each run of rows
        if len(set(order)) != len(order):
            raise ValueError("the tokens of one sequence must be contiguous")
        if len(order) != n_seq:
            raise ValueError(f"every cache needs at least one token: only {len(order)} of {n_seq} sequences have any")
        if len({id(c) for c in caches}) != n_seq:
            raise ValueError("a cache appears twice in caches: each sequence needs its own")
        for s, c in enumerate(caches):
            if len(c.k) != len(self.layers) or c.dtype != caches[0].dtype:
                raise ValueError(f"cache {s} does not fit: {len(c.k)} layers of {c.dtype}, expected {len(self.layers)} of {caches[0].dtype}")
        pos = np.empty(n, np.int64)
        for a, b, s in zip(starts, ends, order):
            c = caches[s]
            if b - a > c.n_free:
                raise ContextFullError(
                    f"sequence {s}: {b - a} more tokens do not fit: {c.n_tokens} of {c.n_ctx} context positions are used")
            pos[a:b] = np.arange(c.n_tokens, c.n_tokens + b - a)
        x = self.embed(tokens)  # [T, d]
        seq32 = seq.astype(np.int32)
        last = len(self.layers) - 1
        k_by_layer, v_by_layer = zip(*(c.k for c in caches)), zip(*(c.v for c in caches))  # [layer][sequence]
        for i, (layer, k, v) in enumerate(zip(self.layers, k_by_layer, v_by_layer)):
            # as forward(): the last layer's FFN runs on the rows whose logits are wanted only
            layer.forward_batch(x, seq32, pos, k, v, i == last)
        for a, b, s in zip(starts, ends, order):
            caches[s].n_tokens += b - a
        rows = np.empty(n_seq, np.int64)
        rows[order] = np.asarray(ends) - 1
        x = backend.rms_norm(np.ascontiguousarray(x[rows]), self.output_norm, self.config.norm_eps)
        return backend.matmul(self.output.type, self.output.data, x, w_il=self.output_il)  # [n_seq, vocab]
