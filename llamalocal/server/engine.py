"""The server's engine: `--parallel` slots, each a Session with its own KV
cache, driven by one thread that interleaves them step by step.

A step is one prompt chunk or one generated token of one slot, so a long
prompt never holds up the other slots' streams for more than a chunk.  A
request goes to the free slot whose cached tokens share the longest prefix
with its prompt, so a client that resends the whole conversation each turn
pays only for the new turn (the session layer does the reuse; this module
only chooses the slot).
"""
from __future__ import annotations

import itertools
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

from ..api import Model, sampler_config
from ..chat import encode_chat
from ..errors import Error, InvalidArgumentError
from ..sampling import make_sampler
from ..session import Session

SERVER_PREFILL_CHUNK = 64  # tokens per step while a prompt is evaluated: the other slots' latency bound


class BusyError(Error, RuntimeError):
    """Every slot is taken and the queue of waiting requests is full."""


@dataclass
class Job:
    """One request: a conversation (`messages`) or a raw `prompt`, and where its output goes.
    `sink` is called on the engine's thread with ("piece", str), then ("done", TurnStats) or ("error", Error)."""

    sink: Callable[[tuple], None]
    messages: Optional[list[dict[str, Any]]] = None
    prompt: Optional[str] = None
    sampling: dict[str, Any] = field(default_factory=dict)
    max_tokens: int = -1
    stop: Sequence[str] = ()
    ignore_eos: bool = False
    cancel: threading.Event = field(default_factory=threading.Event)
    n_prompt_tokens: int = 0  # filled in when the job starts


class Slot:
    def __init__(self, session: Session, index: int):
        self.session = session
        self.index = index
        self.job: Optional[Job] = None
        self.steps: Optional[Iterator[str]] = None
        self.last_used = 0.0


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
            self._admit()
            active = [s for s in self.slots if s.job is not None]
            if not active:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            for slot in active:
                self._step(slot)

    def _admit(self) -> None:
        while any(s.job is None for s in self.slots):
            try:
                job = self._waiting.get_nowait()
            except queue.Empty:
                return
            if job.cancel.is_set():
                continue
            slot = self._choose(job)
            try:
                self._start(slot, job)
            except Error as e:
                job.sink(("error", e))
                slot.job, slot.steps = None, None

    def _choose(self, job: Job) -> Slot:
        """The free slot whose cache shares the longest prefix with the job's prompt; then the least recently used."""
        free = [s for s in self.slots if s.job is None]
        ids = self._prompt_tokens(free[0].session, job)

        def shared(slot: Slot) -> int:
            held = slot.session.tokens
            n = 0
            for a, b in zip(held, ids):
                if a != b:
                    break
                n += 1
            return n

        return max(free, key=lambda s: (shared(s), -s.last_used))

    def _prompt_tokens(self, session: Session, job: Job) -> list[int]:
        tok = self.model.tokenizer
        if job.messages is not None:
            return encode_chat(tok, session.template, job.messages, add_generation_prompt=True)
        return tok.encode(job.prompt or "")

    def _start(self, slot: Slot, job: Job) -> None:
        s = slot.session
        s.sample = make_sampler(sampler_config(**job.sampling))
        job.n_prompt_tokens = len(self._prompt_tokens(s, job))
        if job.messages is not None:
            steps = s.reply(job.messages, max_tokens=job.max_tokens, cancel=job.cancel, stop=job.stop,
                            ignore_eos=job.ignore_eos, stepwise=True)
        else:
            steps = s.complete(job.prompt or "", max_tokens=job.max_tokens, cancel=job.cancel, stop=job.stop,
                               ignore_eos=job.ignore_eos, stepwise=True)
        slot.job, slot.steps = job, steps

    def _step(self, slot: Slot) -> None:
        job, steps = slot.job, slot.steps
        try:
            piece = next(steps)
        except StopIteration:
            self._finish(slot, ("done", slot.session.stats))
            return
        except Error as e:
            self._finish(slot, ("error", e))
            return
        if piece:
            job.sink(("piece", piece))

    def _finish(self, slot: Slot, event: tuple) -> None:
        slot.job.sink(event)
        slot.job, slot.steps = None, None
        slot.last_used = next(self._clock)
