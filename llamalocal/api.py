"""The library API that applications embed.

    model = llamalocal.load("model.gguf")                 # or None: the default chat model
    for piece in model.generate("Once upon a time", max_tokens=64, temperature=0.7, seed=1):
        print(piece, end="", flush=True)
    chat = model.chat(system="You are terse.")            # a Session; many per model, weights shared
    tuned = model.chat(lora=[("adapter.gguf", 0.5)])      # its own LoRA adapters, the same weights
    for piece in chat.send("Hello!"):
        print(piece, end="", flush=True)
    chat.save("talk.llsession"); chat = model.load_chat("talk.llsession")

Generation can be cancelled from another thread (`cancel=threading.Event()`);
kernels release the GIL, so a UI thread stays responsive.  Every error a user
can cause is a `llamalocal.Error`.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from . import backend
from .chat import ChatTemplate
from .errors import InvalidArgumentError
from .generation import generate_tokens
from .model.loader import LoadedModel, load_model
from .model.lora import LoraAdapter, load_adapters
from .model.transformer import Transformer
from .sampling import SamplerConfig, make_sampler
from .session import Session, find_stop, split_held

_SAMPLING_FIELDS = {"temperature", "top_k", "top_p", "min_p", "repeat_penalty", "frequency_penalty",
                    "presence_penalty", "repeat_last_n", "seed"}


def sampler_config(**options: Any) -> SamplerConfig:
    """A SamplerConfig from keyword options; an unknown name is an error, not ignored."""
    unknown = set(options) - _SAMPLING_FIELDS
    if unknown:
        raise InvalidArgumentError(f"unknown sampling option(s): {', '.join(sorted(unknown))} "
                                   f"(known: {', '.join(sorted(_SAMPLING_FIELDS))})")
    return SamplerConfig(**options)


class Model:
    """A loaded model: its weights are shared by every session made from it."""

    def __init__(self, lm: LoadedModel, *, n_ctx: Optional[int] = None, template: Optional[str] = None):
        self.lm = lm
        self.n_ctx = n_ctx
        self.template_name = template
        self._template: Optional[ChatTemplate] = None
        # One forward pass at a time: the native thread pool serves one caller, and
        # sessions in several threads then get exactly the tokens each would alone.
        self.lock = threading.Lock()
        # adapters read so far, by resolved path: naming a file again gives the same
        # adapter, so sessions with the same adapters and scales share one model view
        self._adapters: dict[Path, LoraAdapter] = {Path(a.path).resolve(): a for a, _ in lm.model.lora}

    @property
    def path(self) -> Path:
        return self.lm.path

    @property
    def tokenizer(self):
        return self.lm.tokenizer

    @property
    def template(self) -> ChatTemplate:
        if self._template is None:
            self._template = ChatTemplate.from_metadata(self.lm.metadata, self.lm.tokenizer, name=self.template_name)
        return self._template

    def adapters(self, lora: Optional[Sequence[Any]]) -> Optional[list[tuple[LoraAdapter, float]]]:
        """`lora` as load() takes it (paths, (path, scale) pairs or LoraAdapter objects;
        an empty list: none) as (adapter, scale) pairs, each file read once; None stays
        None, which means the adapters the model was loaded with."""
        return None if lora is None else load_adapters(lora, self.lm.model.config, self._adapters)

    def transformer(self, lora: Optional[Sequence[Any]] = None) -> Transformer:
        """The model under these adapters (None: those it was loaded with), its weights shared."""
        pairs = self.adapters(lora)
        return self.lm.model if pairs is None else self.lm.model.with_lora(pairs)

    # -- text -----------------------------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: Optional[bool] = None, special: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_bos=add_bos, parse_special=special)

    def detokenize(self, ids: Sequence[int], *, special: bool = False) -> str:
        return self.tokenizer.decode(ids, special=special)

    def logits(self, ids: Sequence[int], *, lora: Optional[Sequence[Any]] = None) -> np.ndarray:
        """Logits (len(ids), vocab) of every position, from a fresh cache; `lora` as for chat()."""
        ids = list(ids)
        model = self.transformer(lora)
        with self.lock:
            return model.forward(ids, model.new_cache(max(len(ids), 1)), all_logits=True)

    def generate(self, prompt: str, *, max_tokens: int = 128, stop: Sequence[str] = (), ignore_eos: bool = False,
                 cancel: Optional[threading.Event] = None, lora: Optional[Sequence[Any]] = None,
                 **sampling: Any) -> Iterator[str]:
        """Streams the continuation of `prompt` (no chat template), UTF-8 safe.
        `stop` strings end it and are not returned; `lora` as for chat()."""
        tok = self.tokenizer
        sample = make_sampler(sampler_config(**sampling))
        ids = tok.encode(prompt) or ([tok.bos_id] if tok.bos_id is not None else [])
        if not ids:
            raise InvalidArgumentError("the prompt is empty and the model has no BOS token to start from")
        model = self.transformer(lora)
        cache = model.new_cache(self.n_ctx)
        if len(ids) >= cache.n_ctx:
            raise InvalidArgumentError(f"the prompt is {len(ids)} tokens, the context only {cache.n_ctx}")
        decoder = tok.stream_decoder()
        for t in ids:  # leading-space rules see the prompt
            decoder.feed(t)
        stops = tuple(s for s in stop if s)
        held = ""
        stop_ids = frozenset() if ignore_eos else frozenset(tok.eot_ids)
        steps = generate_tokens(model, ids, sample, min(max_tokens, cache.n_ctx - len(ids)), cache, stop_ids,
                                lock=self.lock)
        for token in steps:
            held += decoder.feed(token)
            stop_at = find_stop(held, stops)
            if stop_at is not None:
                if held[:stop_at]:
                    yield held[:stop_at]
                return
            shown, held = split_held(held, stops)
            if shown:
                yield shown
            if cancel is not None and cancel.is_set():
                return
        held += decoder.flush()
        if held:
            yield held

    def complete(self, prompt: str, **options: Any) -> str:
        """generate(), joined."""
        return "".join(self.generate(prompt, **options))

    # -- chat -----------------------------------------------------------------------------------------------

    def chat(self, system: Optional[str] = None, *, context_policy: str = "drop-oldest",
             on_notice: Optional[Callable[[str], None]] = None, lora: Optional[Sequence[Any]] = None,
             **sampling: Any) -> Session:
        """A new conversation (its own KV cache) with this model's chat template.  `lora`:
        this conversation's adapters, as load() takes them ([] for none); None: the
        model's own.  Sessions with other adapters share the weights, never a cache."""
        return Session(self.lm, self.template, n_ctx=self.n_ctx, system=system, sampling=sampler_config(**sampling),
                       context_policy=context_policy, lock=self.lock, on_notice=on_notice, lora=self.adapters(lora))

    def load_chat(self, path: str | Path, *, on_notice: Optional[Callable[[str], None]] = None,
                  lora: Optional[Sequence[Any]] = None) -> Session:
        """A conversation saved with Session.save, resumed with exactly the next tokens it would have given
        (under the adapters it was saved with: `lora` as for chat())."""
        return Session.load(path, self.lm, self.template, lock=self.lock, on_notice=on_notice,
                            lora=self.adapters(lora))


def load(path: str | Path | None = None, *, n_threads: Optional[int] = None, n_ctx: Optional[int] = None,
         template: Optional[str] = None, tokenizer: str | Path | None = None,
         lora: Optional[Sequence[Any]] = None) -> Model:
    """Loads a model file (GGUF or llama2.c); None means the default chat model,
    downloaded once into the model cache when it is not there yet.  `lora`: LoRA
    adapters applied unmerged, as paths (GGUF adapters or PEFT directories, scale 1)
    or (path, scale) pairs; the quantized base weights stay mapped as they are.
    They are the model's default: chat(lora=...) gives a session its own."""
    from .model_store import resolve

    if n_threads is not None:
        backend.set_num_threads(n_threads)
    return Model(load_model(resolve(None if path is None else str(path)), tokenizer, lora=lora), n_ctx=n_ctx,
                 template=template)
