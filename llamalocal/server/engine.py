"""The server's engine: `--parallel` slots, each a Session with its own KV
cache, driven by one thread that decodes them together (continuous batching).

Each step is one forward pass over what every busy slot needs next: one
token of each slot that is answering and one prompt chunk of each slot that
is still reading its prompt, every sequence at its own positions in its own
cache (Transformer.forward_batch).  Decode is bound by reading the weights,
so four streams in one pass cost little more than one; and a long prompt
holds up the others' streams by one chunk per step, never by the whole
prompt.  A request goes to the free slot whose cached tokens share the
longest prefix with its prompt, so a client that resends the whole
conversation each turn pays only for the new turn (the session layer does
the reuse; this module only chooses the slot).

A request may name its own LoRA adapters (scales of those loaded at start).
Slots under different adapter sets run different layers, so a step makes one
pass per set in use; and a slot's cache is reused only by a request under
the set it was filled under.
"""
from __future__ import annotations

import itertools
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Optional, Sequence

import numpy as np

from ..api import Model, sampler_config
from ..chat import encode_chat
from ..errors import Error, InvalidArgumentError
from ..model.lora import LoraAdapter, lora_key
from ..sampling import make_sampler
from ..session import Forward, Session, common_prefix

SERVER_PREFILL_CHUNK = 64  # prompt tokens per slot and step: what a new prompt adds to the other streams' step


class BusyError(Error, RuntimeError):
    """Every slot is taken and the queue of waiting requests is full."""


@dataclass
class Job:
    """One request: a conversation (`messages`) or a raw `prompt`, and where its output goes.
    `sink` is called on the engine's thread with ("piece", str), then ("done", TurnStats) or ("error", Error);
    with `logprobs` (alternatives per token), ("logprobs", [TokenLogprob]) comes before the piece
    that shows those tokens."""

    sink: Callable[[tuple], None]
    messages: Optional[list[dict[str, Any]]] = None
    prompt: Optional[str] = None
    sampling: dict[str, Any] = field(default_factory=dict)
    max_tokens: int = -1
    stop: Sequence[str] = ()
    ignore_eos: bool = False
    logprobs: Optional[int] = None
    lora: Optional[list[tuple[LoraAdapter, float]]] = None  # (adapter, scale) pairs; None: the model's own
    cancel: threading.Event = field(default_factory=threading.Event)
    n_prompt_tokens: int = 0  # filled in when the job starts


class Slot:
    def __init__(self, session: Session, index: int):
        self.session = session
        self.index = index
        self.job: Optional[Job] = None
        self.steps: Optional[Generator[Any, Optional[np.ndarray], None]] = None  # the session's turn, stepwise
        self.pending: Optional[Forward] = None  # the pass the turn waits for
        self.n_logprobs_sent = 0
        self.last_used = 0


class Engine:
    def __init__(self, model: Model, *, n_slots: int = 1, n_ctx: Optional[int] = None, max_waiting: int = 32):
        if n_slots < 1:
            raise InvalidArgumentError(f"--parallel must be at least 1, got {n_slots}")
        self.model = model
        self.slots = []
        for i in range(n_slots):
            s = model.chat(context_policy="error")
            if n_ctx:
                s.cache = model.lm.model.new_cache(n_ctx)
            s.prefill_chunk = SERVER_PREFILL_CHUNK
            self.slots.append(Slot(s, i))
        self.n_ctx = self.slots[0].session.cache.n_ctx
        self._waiting: queue.Queue[Job] = queue.Queue(maxsize=max_waiting)
        self._wake = threading.Event()
        self._stop = False
        self._clock = itertools.count()
        # what /health reports of the batching: passes run, those over several sequences, the most sequences in one
        self.n_passes = self.n_batched_passes = self.most_sequences = 0
        self._thread = threading.Thread(target=self._run, name="llamalocal-engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        try:
            self._waiting.put_nowait(job)
        except queue.Full:
            raise BusyError(f"all {len(self.slots)} slots are busy and {self._waiting.maxsize} requests wait") from None
        self._wake.set()

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(10)

    # -- the engine's thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop:
            self._wake.clear()  # before looking at the queue: a request submitted after this wakes the wait below
            self._admit()
            for slot in self.slots:
                if slot.job is not None and slot.job.cancel.is_set():
                    self._cancel(slot)
            ready = [s for s in self.slots if s.pending is not None]
            if not ready:
                self._wake.wait(0.5)
                continue
            # one pass per adapter set: a pass runs one set of layers over all its rows
            groups: dict[tuple, list[Slot]] = {}
            for slot in ready:
                groups.setdefault(slot.session.model.lora_key, []).append(slot)
            for group in groups.values():
                try:
                    logits = self._forward(group)
                except (Error, ValueError) as e:  # a pass the sessions' own checks should have refused: fail its requests, not the server
                    for slot in group:
                        slot.steps.close()
                        self._finish(slot, ("error", e))
                    continue
                for slot, row in zip(group, logits):
                    self._advance(slot, row)

    def _forward(self, ready: list[Slot]) -> np.ndarray:
        """One pass over the tokens of ready slots under one adapter set; row i: the
        logits of slot i's last token."""
        model = ready[0].session.model
        self.n_passes += 1
        self.n_batched_passes += len(ready) > 1
        self.most_sequences = max(self.most_sequences, len(ready))
        with self.model.lock:
            if len(ready) == 1:  # one sequence: the single-sequence path, the same floats
                slot = ready[0]
                return model.forward(slot.pending.tokens, slot.session.cache)[None]
            tokens = [t for s in ready for t in s.pending.tokens]
            seq = [i for i, s in enumerate(ready) for _ in s.pending.tokens]
            return model.forward_batch(tokens, seq, [s.session.cache for s in ready])

    def _admit(self) -> None:
        while any(s.job is None for s in self.slots):
            try:
                job = self._waiting.get_nowait()
            except queue.Empty:
                return
            if job.cancel.is_set():
                continue
            try:
                ids = self._prompt_tokens(job)
            except Error as e:  # e.g. a template that refuses the conversation
                job.sink(("error", e))
                continue
            slot = self._choose(ids, self.model.lm.model.lora_key if job.lora is None else lora_key(job.lora))
            job.n_prompt_tokens = len(ids)
            try:
                self._start(slot, job)
            except Error as e:
                job.sink(("error", e))
                slot.job, slot.steps = None, None

    def _choose(self, ids: list[int], lora: tuple) -> Slot:
        """The free slot whose cache, filled under the adapter set `lora` (a lora_key),
        shares the longest prefix with the prompt `ids`; then the least recently used.
        A cache filled under other adapters counts as empty: the slot will start it again."""
        free = [s for s in self.slots if s.job is None]

        def reusable(s: Slot) -> int:
            return common_prefix(s.session.tokens, ids) if s.session.cache_lora == lora else 0

        return max(free, key=lambda s: (reusable(s), -s.last_used))

    def _prompt_tokens(self, job: Job) -> list[int]:
        """The job's prompt as the slots' sessions tokenize it (they share the model's template)."""
        tok = self.model.tokenizer
        if job.messages is not None:
            return encode_chat(tok, self.slots[0].session.template, job.messages, add_generation_prompt=True)
        return tok.encode(job.prompt or "")

    def _start(self, slot: Slot, job: Job) -> None:
        s = slot.session
        s.set_lora(job.lora)  # the same set keeps the cache; another starts it again
        s.sample = make_sampler(sampler_config(**job.sampling))
        if job.messages is not None:
            steps = s.reply(job.messages, max_tokens=job.max_tokens, cancel=job.cancel, stop=job.stop,
                            ignore_eos=job.ignore_eos, logprobs=job.logprobs, stepwise=True)
        else:
            steps = s.complete(job.prompt or "", max_tokens=job.max_tokens, cancel=job.cancel, stop=job.stop,
                               ignore_eos=job.ignore_eos, logprobs=job.logprobs, stepwise=True)
        slot.job, slot.steps, slot.n_logprobs_sent = job, steps, 0
        self._advance(slot, None)

    def _advance(self, slot: Slot, logits: Optional[np.ndarray]) -> None:
        """Sends the turn its logits (None: starts it) and runs it to the next pass it
        asks for, passing its text on; or to its end."""
        slot.pending = None
        try:
            item = slot.steps.send(logits)
            while not isinstance(item, Forward):
                if item:
                    self._send_logprobs(slot)
                    slot.job.sink(("piece", item))
                item = next(slot.steps)
        except StopIteration:
            self._finish(slot, ("done", slot.session.stats))
            return
        except Error as e:
            self._finish(slot, ("error", e))
            return
        slot.pending = item

    def _send_logprobs(self, slot: Slot) -> None:
        """The tokens sampled since the last piece; those cut by a stop string at the end are never sent."""
        new = slot.session.stats.logprobs[slot.n_logprobs_sent:]
        if new:
            slot.job.sink(("logprobs", new))
            slot.n_logprobs_sent += len(new)

    def _cancel(self, slot: Slot) -> None:
        """A client that went away: its turn ends now (what was said stays in the session), its slot is free."""
        slot.steps.close()
        self._finish(slot, ("done", slot.session.stats))

    def _finish(self, slot: Slot, event: tuple) -> None:
        slot.job.sink(event)
        slot.job, slot.steps, slot.pending = None, None, None
        slot.last_used = next(self._clock)
