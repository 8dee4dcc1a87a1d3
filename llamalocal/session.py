"""One conversation: its messages, the tokens in its KV cache, its sampler.

Each turn renders the whole conversation with the chat template, keeps the
longest prefix of tokens the cache already holds and evaluates only the
rest, so the time to the first token of turn N does not grow with N.  The
assistant's tokens stay in the cache as they were generated: the next
prompt is spliced as (previous prompt, generated tokens, the template's
end-of-turn tokens, the new turn), never a re-tokenization of the answer.

When the conversation outgrows the context, the policy decides, and says
so through `on_notice`: "drop-oldest" (the default) keeps the system prompt
and drops the oldest whole turns, re-evaluating what remains; "error"
refuses with ContextFullError.  Nothing is ever cut silently.

The CLI, the library API and each server slot use this one class.  A turn
never runs the model itself: it asks for each forward pass (a `Forward`) and
is sent the logits back, so the server can evaluate the turns of several
sessions in one batched pass; `send`, `reply` and `complete` without
`stepwise` answer those requests one at a time, under the session's lock.

Each session has its own LoRA adapter set (Transformer.with_lora: the same
weights, other layer objects); its cache holds tokens evaluated under one set
only, so a switch to another set starts the cache again.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Generator, Iterator, Mapping, Optional, Sequence

import numpy as np

from .chat import ChatTemplate, encode_chat
from .errors import ContextFullError, InvalidArgumentError, ModelFormatError
from .generation import GenerationStats
from .model.kv_cache import KVCache
from .model.loader import LoadedModel
from .model.lora import LoraAdapter
from .model.transformer import Transformer
from .sampling import SamplerConfig, TokenLogprob, make_sampler, token_logprob
from .session_file import model_identity, read_session, write_session

CONTEXT_POLICIES = ("drop-oldest", "error")
PREFILL_CHUNK = 256  # tokens per forward pass while prefilling: cancel and Ctrl-C are seen between chunks


@dataclass(frozen=True)
class Forward:
    """A turn's request to its driver: evaluate `tokens` into the session's cache
    at its next positions, then send the turn the last token's logits."""

    tokens: list[int]


@dataclass
class TurnStats(GenerationStats):
    """One answer: n_prompt counts the prompt tokens evaluated, n_reused those the cache already held."""

    n_reused: int = 0
    first_token_seconds: float = 0.0  # from the turn's start to its first piece of text
    n_dropped_messages: int = 0
    logprobs: list[TokenLogprob] = dataclasses.field(default_factory=list)  # per generated token, when asked for

    def footer(self) -> str:
        return (f"prompt: {self.n_prompt} tokens evaluated, {self.n_reused} reused from the cache, "
                f"{self.prompt_tps:.1f} t/s | answer: {self.n_generated} tokens, {self.gen_tps:.1f} t/s | "
                f"first token after {self.first_token_seconds:.2f} s | stop: {self.stop_reason}")


class Session:
    """A conversation with a loaded model.  Not for concurrent use itself; several
    sessions may share one model (`lock` serializes their forward passes, so each
    gets the tokens it would get alone).  `lora`: this session's (adapter, scale)
    pairs (none: the base model); None: the loaded model's own adapters."""

    def __init__(self, lm: LoadedModel, template: ChatTemplate, *, n_ctx: Optional[int] = None,
                 system: Optional[str] = None, sampling: Optional[SamplerConfig] = None,
                 context_policy: str = "drop-oldest", cache_type: str = "f16",
                 lock: Optional[threading.Lock] = None, on_notice: Optional[Callable[[str], None]] = None,
                 lora: Optional[Sequence[tuple[LoraAdapter, float]]] = None):
        if lm.tokenizer is None:
            raise InvalidArgumentError(f"{lm.path.name}: the model has no tokenizer to chat with")
        if context_policy not in CONTEXT_POLICIES:
            raise InvalidArgumentError(f"context policy {context_policy!r}: expected one of {', '.join(CONTEXT_POLICIES)}")
        self.lm = lm
        self.template = template
        self.model: Transformer = lm.model if lora is None else lm.model.with_lora(lora)
        self.cache: KVCache = self.model.new_cache(n_ctx, cache_type)
        self._cache_lora = self.model.lora_key  # the adapter set the cache's tokens were evaluated under
        self.context_policy = context_policy
        self.lock = lock or threading.Lock()
        self.on_notice = on_notice or (lambda message: None)
        self.system: Optional[str] = system
        self.messages: list[dict[str, str]] = []  # user and assistant turns; the system prompt is kept apart
        self.tokens: list[int] = []  # exactly what the cache holds, position by position
        self.sample = make_sampler(sampling or SamplerConfig())
        self.stats = TurnStats()
        self.prefill_chunk = PREFILL_CHUNK
        # How the last answer sits in `tokens`: the prompt before it and its generated ids.
        self._last_prompt: list[int] = []
        self._last_answer: list[int] = []
        self._last_answer_text = ""
        self._stop_ids = frozenset(lm.tokenizer.eot_ids)
        self._stop_texts = tuple(s for s in template.end_of_turn if s)

    # -- the conversation ---------------------------------------------------------------------------------

    @property
    def sampling(self) -> SamplerConfig:
        return self.sample.config

    def set_sampling(self, **changes: Any) -> None:
        """Changes sampling parameters; the random generator's state carries on."""
        self.sample = make_sampler(replace(self.sample.config, **changes), rng=self.sample.rng)

    def reseed(self, seed: Optional[int]) -> None:
        """A new random generator from `seed` (None: from OS entropy), the other settings kept."""
        self.sample = make_sampler(replace(self.sample.config, seed=seed))

    def reset(self) -> None:
        """Forgets the turns (the system prompt stays); the cache is reused from its start as far as it matches."""
        self.messages = []

    def clear_cache(self) -> None:
        """Empties the KV cache: the next turn evaluates its whole prompt, as a new session would."""
        self.cache.truncate(0)
        self.tokens = []
        self._last_answer = []

    def set_lora(self, lora: Optional[Sequence[tuple[LoraAdapter, float]]]) -> None:
        """The adapters of the next turns: (adapter, scale) pairs (none: the base
        model), or None for the loaded model's own.  Between turns only.  The
        conversation stays; the cache starts again unless the set is the same."""
        self.model = self.lm.model if lora is None else self.lm.model.with_lora(lora)
        self._sync_cache()

    @property
    def cache_lora(self) -> tuple:
        """The adapter set (lora.lora_key) the cached tokens were evaluated under:
        only a prompt run under that set may reuse them."""
        self._sync_cache()
        return self._cache_lora

    def _sync_cache(self) -> None:
        """Forgets the cache if it was filled under other adapters than the model's
        now (set_lora here, or the loaded model's set_lora): never reused across sets."""
        key = self.model.lora_key
        if key != self._cache_lora:
            self.clear_cache()
            self._cache_lora = key

    def conversation(self) -> list[dict[str, str]]:
        """The messages the template renders: the system prompt, then the turns."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    def send(self, text: str, *, max_tokens: int = -1, cancel: Optional[threading.Event] = None,
             stop: Sequence[str] = (), stepwise: bool = False) -> Iterator[str]:
        """Adds a user turn and streams the answer, piece by piece (UTF-8 safe).
        `stop` strings end it besides the template's own.  With `stepwise` the
        turn also yields a `Forward` for each pass it needs and must be sent the
        logits (`steps.send(logits)`): a scheduler batches several sessions so."""
        self.messages.append({"role": "user", "content": str(text)})
        return self._run(self._answer(self._prompt_ids, max_tokens, cancel, stop, record=True), stepwise)

    def reply(self, messages: Sequence[Mapping[str, Any]], *, max_tokens: int = -1,
              cancel: Optional[threading.Event] = None, stop: Sequence[str] = (), ignore_eos: bool = False,
              logprobs: Optional[int] = None, stepwise: bool = False) -> Iterator[str]:
        """Streams the answer to a whole conversation that the caller keeps (a
        system message first, if any; the last one the user's).  What the cache
        holds of an earlier call is reused as far as the conversation matches.
        With `logprobs` (the number of alternatives, 0 for none) each generated
        token's log-probability goes to `stats.logprobs` as it is sampled."""
        msgs = [{"role": str(m["role"]), "content": m["content"]} for m in messages]
        if not msgs or msgs[-1]["role"] != "user":
            raise InvalidArgumentError("reply() needs a conversation whose last message is the user's")
        if msgs[0]["role"] == "system":
            self.system = msgs[0]["content"]
            msgs = msgs[1:]
        else:
            self.system = None
        self.messages = msgs
        return self._run(self._answer(self._prompt_ids, max_tokens, cancel, stop, record=True, ignore_eos=ignore_eos,
                                      logprobs=logprobs), stepwise)

    def complete(self, prompt: str, *, max_tokens: int = -1, cancel: Optional[threading.Event] = None,
                 stop: Sequence[str] = (), ignore_eos: bool = False, logprobs: Optional[int] = None,
                 stepwise: bool = False) -> Iterator[str]:
        """Streams the continuation of a raw prompt (no template, nothing recorded as
        a turn); the cache is reused as far as it matches the prompt's tokens.
        `logprobs` as in reply()."""
        tok = self.lm.tokenizer
        ids = tok.encode(prompt) or ([tok.bos_id] if tok.bos_id is not None else [])
        if not ids:
            raise InvalidArgumentError("the prompt is empty and the model has no BOS token to start from")
        return self._run(self._answer(lambda: list(ids), max_tokens, cancel, stop, record=False, ignore_eos=ignore_eos,
                                      logprobs=logprobs), stepwise)

    def _run(self, steps: Generator[Any, Optional[np.ndarray], None], stepwise: bool) -> Iterator[Any]:
        return steps if stepwise else self._driven(steps)

    def _driven(self, steps: Generator[Any, Optional[np.ndarray], None]) -> Iterator[str]:
        """The pieces of text, each pass the turn asks for run here; closing it closes the turn."""
        try:
            item = next(steps)
            while True:
                if isinstance(item, Forward):
                    with self.lock:
                        logits = self.model.forward(item.tokens, self.cache)
                    item = steps.send(logits)
                else:
                    if item:
                        yield item
                    item = next(steps)
        except StopIteration:
            return
        finally:
            steps.close()

    # -- saved conversations -------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Writes the conversation, its cache, its adapters and its sampler state (atomically)."""
        self._sync_cache()
        n = len(self.tokens)
        state = {
            "model": model_identity(self.lm), "lora": _lora_state(self.model.lora),
            "system": self.system, "messages": self.messages,
            "tokens": [int(t) for t in self.tokens], "last_prompt": [int(t) for t in self._last_prompt],
            "last_answer": [int(t) for t in self._last_answer],
            "sampling": dataclasses.asdict(self.sampling), "rng_state": self.sample.rng.bit_generator.state,
            "context_policy": self.context_policy, "n_ctx": self.cache.n_ctx, "cache_type": self.cache.dtype,
        }
        arrays = {**{f"k{i}": k[:n] for i, k in enumerate(self.cache.k)},
                  **{f"v{i}": v[:n] for i, v in enumerate(self.cache.v)}}
        return write_session(path, state, arrays)

    @classmethod
    def load(cls, path: str | Path, lm: LoadedModel, template: ChatTemplate, *, lock: Optional[threading.Lock] = None,
             on_notice: Optional[Callable[[str], None]] = None,
             lora: Optional[Sequence[tuple[LoraAdapter, float]]] = None) -> "Session":
        """A saved conversation, resumed with exactly the next tokens it would have given.
        `lora` as for a new session; it must be the set the conversation was saved
        under (its cache holds that set's keys and values)."""
        state, arrays = read_session(path, lm)
        tokens = [int(t) for t in state["tokens"]]
        s = cls(lm, template, n_ctx=int(state["n_ctx"]), system=state["system"],
                sampling=SamplerConfig(**state["sampling"]), context_policy=state["context_policy"],
                cache_type=state["cache_type"], lock=lock, on_notice=on_notice, lora=lora)
        _check_saved_lora(path, state.get("lora"), s.model.lora)
        if len(tokens) > s.cache.n_ctx:
            raise ModelFormatError(f"{path}: {len(tokens)} cached tokens do not fit its context of {s.cache.n_ctx}")
        for i, (k, v) in enumerate(zip(s.cache.k, s.cache.v)):
            sk, sv = arrays.get(f"k{i}"), arrays.get(f"v{i}")
            want = (len(tokens),) + k.shape[1:]
            if sk is None or sv is None or sk.shape != want or sv.shape != want or sk.dtype != k.dtype:
                raise ModelFormatError(f"{path}: the saved cache of layer {i} does not fit this model")
            k[: len(tokens)] = sk
            v[: len(tokens)] = sv
        s.cache.n_tokens = len(tokens)
        s.tokens = tokens
        s.messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in state["messages"]]
        s._last_prompt = [int(t) for t in state["last_prompt"]]
        s._last_answer = [int(t) for t in state["last_answer"]]
        s._last_answer_text = s.messages[-1]["content"] if s.messages and s.messages[-1]["role"] == "assistant" else ""
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng_state"]
        s.sample = make_sampler(s.sampling, rng=rng)
        return s

    # -- one answer ---------------------------------------------------------------------------------------

    def _answer(self, prompt_ids: Callable[[], list[int]], max_tokens: int, cancel: Optional[threading.Event],
                stop: Sequence[str], record: bool, ignore_eos: bool = False, logprobs: Optional[int] = None
                ) -> Generator[Any, Optional[np.ndarray], None]:
        start = time.perf_counter()
        stats = self.stats = TurnStats()
        self._sync_cache()  # before the prompt is spliced from what the cache holds
        tok = self.lm.tokenizer
        stops = tuple(x for x in (*(self._stop_texts if record else ()), *stop) if x)
        stop_ids = frozenset() if ignore_eos else self._stop_ids
        ids = prompt_ids()
        reserve = max_tokens if max_tokens > 0 else min(256, self.cache.n_ctx // 4)
        while len(ids) + reserve > self.cache.n_ctx:
            if not record:
                raise ContextFullError(f"the prompt is {len(ids)} tokens; with {reserve} for the answer it does not "
                                       f"fit the context of {self.cache.n_ctx}")
            ids = self._make_room(ids, reserve, stats)

        logits = yield from self._evaluate(ids, stats, cancel)
        prompt = list(self.tokens)
        generated: list[int] = []
        decoder = tok.stream_decoder()
        if not record:
            for t in prompt:  # leading-space rules see the prompt
                decoder.feed(t)
        held = ""  # text that may be the start of a stop string, not shown yet
        answer_text = ""
        stats.stop_reason = "token limit"
        t0 = time.perf_counter()
        try:
            while max_tokens < 0 or len(generated) < max_tokens:
                if logits is None or (cancel is not None and cancel.is_set()):
                    stats.stop_reason = "cancelled"
                    break
                token = self.sample(logits, self.tokens)
                if token in stop_ids:
                    stats.stop_reason = "end of turn"
                    break
                generated.append(token)
                stats.n_generated += 1
                if logprobs is not None:
                    stats.logprobs.append(token_logprob(logits, token, logprobs))
                held += decoder.feed(token)
                stop_at = find_stop(held, stops)
                if stop_at is not None:
                    held = held[:stop_at]
                    stats.stop_reason = "stop string"
                    break
                shown, held = split_held(held, stops)
                if not stats.first_token_seconds:
                    stats.first_token_seconds = time.perf_counter() - start
                if shown:
                    answer_text += shown
                    yield shown
                if self.cache.n_free == 0:
                    stats.stop_reason = "context full"
                    self.on_notice(f"the answer filled the context of {self.cache.n_ctx} tokens and was cut there")
                    break
                logits = yield Forward([token])
                self.tokens.append(token)
            held += decoder.flush() if stats.stop_reason != "stop string" else ""
            if held:
                answer_text += held
                yield held
        except (GeneratorExit, KeyboardInterrupt):
            stats.stop_reason = "cancelled"
            raise
        finally:
            stats.gen_seconds = time.perf_counter() - t0
            if record:
                # What was said stays said, also when the caller stopped listening.
                self.messages.append({"role": "assistant", "content": answer_text})
                self._last_prompt = prompt
                # The splice needs the answer's tokens to be its text; a stop string cut from it breaks that.
                self._last_answer = [] if stats.stop_reason == "stop string" else generated
                self._last_answer_text = answer_text
            else:
                self._last_answer = []

    def _prompt_ids(self) -> list[int]:
        """The conversation's tokens, the last answer spliced in as generated."""
        tok, conv = self.lm.tokenizer, self.conversation()
        full = encode_chat(tok, self.template, conv, add_generation_prompt=True)
        if not self._last_answer or not self.tokens[: len(self._last_prompt)] == self._last_prompt:
            return full
        # index of the last assistant message in conv: the answer the cache holds
        last = max((i for i, m in enumerate(conv) if m["role"] == "assistant"), default=None)
        if last is None or conv[last]["content"] != self._last_answer_text:
            return full  # not the answer the cache holds (another conversation, or an edited answer)
        through = encode_chat(tok, self.template, conv[: last + 1], add_generation_prompt=False)
        empty = encode_chat(tok, self.template, conv[:last] + [{"role": "assistant", "content": ""}],
                            add_generation_prompt=False)
        p = self._last_prompt
        if full[: len(through)] != through or empty[: len(p)] != p:
            return full  # the template rewrites history (e.g. drops old answers): take its text as it is
        end_of_turn = empty[len(p):]
        return p + self._last_answer + end_of_turn + full[len(through):]

    def _make_room(self, ids: list[int], reserve: int, stats: TurnStats) -> list[int]:
        """Applies the context policy once: fewer turns, or an error."""
        n_ctx = self.cache.n_ctx
        what = f"the conversation is {len(ids)} tokens; with {reserve} for the answer it does not fit the context of {n_ctx}"
        if self.context_policy == "error" or len(self.messages) <= 1:
            if len(self.messages) <= 1:
                what = f"the message is {len(ids)} tokens; with {reserve} for the answer it does not fit the context of {n_ctx}"
            self.messages = self.messages[:-1] if self.messages and self.messages[-1]["role"] == "user" else self.messages
            raise ContextFullError(what)
        # the oldest whole turn: a user message and the answers up to the next user message
        end = 1
        while end < len(self.messages) and self.messages[end]["role"] != "user":
            end += 1
        dropped, self.messages = self.messages[:end], self.messages[end:]
        stats.n_dropped_messages += len(dropped)
        self._last_answer = []  # the splice no longer applies: the history changed before it
        self.on_notice(f"context full ({n_ctx} tokens): dropped the oldest turn ({len(dropped)} messages); "
                       f"{len(self.messages)} remain")
        return encode_chat(self.lm.tokenizer, self.template, self.conversation(), add_generation_prompt=True)

    def _evaluate(self, ids: list[int], stats: TurnStats, cancel: Optional[threading.Event]
                  ) -> Generator[Forward, Optional[np.ndarray], Optional[np.ndarray]]:
        """Brings the cache to `ids`, asking for only what it does not hold, a chunk
        per pass; returns the last token's logits (None if cancelled first)."""
        t0 = time.perf_counter()
        keep = common_prefix(self.tokens, ids)
        keep = min(keep, len(ids) - 1)  # the last token is evaluated again for its logits
        self.cache.truncate(keep)
        del self.tokens[keep:]
        stats.n_reused = keep
        logits = None
        for at in range(keep, len(ids), self.prefill_chunk):
            if cancel is not None and cancel.is_set():
                return None
            chunk = ids[at : at + self.prefill_chunk]
            logits = yield Forward(chunk)
            self.tokens.extend(chunk)
            stats.n_prompt += len(chunk)
            stats.prompt_seconds = time.perf_counter() - t0
        return logits


def _lora_state(lora: Sequence[tuple[LoraAdapter, float]]) -> list[dict[str, Any]]:
    """An adapter set as a saved session records it: each adapter's resolved path and scale."""
    return [{"path": str(Path(adapter.path).resolve()), "scale": float(scale)} for adapter, scale in lora]


def _check_saved_lora(path: str | Path, saved: Any, lora: Sequence[tuple[LoraAdapter, float]]) -> None:
    """Refuses to resume a saved cache under other adapters than it was filled under
    (`saved` None: a file written before sessions had adapters of their own)."""
    if saved is None:
        return
    if not isinstance(saved, list) or not all(isinstance(a, dict) and isinstance(a.get("path"), str)
                                              and isinstance(a.get("scale"), (int, float)) for a in saved):
        raise ModelFormatError(f"{path}: its 'lora' entry is not a list of adapter paths and scales")
    now = _lora_state(lora)
    if saved != now:
        def names(d: list) -> str:
            return ", ".join(f"{Path(a['path']).name} x{a['scale']:g}" for a in d) or "none"

        raise InvalidArgumentError(f"{path}: the conversation was saved under LoRA adapters {names(saved)}, not "
                                   f"{names(now)}: resume it with the same adapters")


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens a and b share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def find_stop(text: str, stops: Sequence[str]) -> Optional[int]:
    at = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(at) if at else None


def split_held(text: str, stops: Sequence[str]) -> tuple[str, str]:
    """(what can be shown, what must wait): the longest tail that begins a stop string waits."""
    for k in range(min(len(text), max((len(s) for s in stops), default=0)), 0, -1):
        tail = text[-k:]
        if any(s.startswith(tail) for s in stops):
            return text[:-k], tail
    return text, ""
