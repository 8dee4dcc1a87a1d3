"""`llamalocal.Llama`: llama-cpp-python's high-level API, for code written against it.

    from llamalocal import Llama
    llm = Llama(model_path="model.gguf", n_ctx=2048, seed=1)
    out = llm("Q: Name the planets in the solar system? A: ", max_tokens=32, stop=["Q:", "\\n"], echo=True)
    for chunk in llm.create_chat_completion(messages=[...], stream=True): ...

Honoured: Llama(model_path, n_ctx, n_threads, seed, chat_format, verbose, n_gpu_layers — accepted for
compatibility, no GPU is used); create_completion / __call__ (prompt, max_tokens, temperature, top_p,
top_k, min_p, stop, seed, repeat_penalty, presence_penalty, frequency_penalty, logprobs, echo, stream);
create_chat_completion (messages, the same sampling options, max_tokens, stop, seed, logprobs,
top_logprobs, stream);
tokenize(text: bytes, add_bos, special); detokenize(tokens) -> bytes.  Any other argument is an
error, never silently ignored.  The responses are the server's OpenAI-shaped objects, made by the
same code (server/openai_format.py) from the same engine.
"""
from __future__ import annotations

import queue
from typing import Any, Iterator, Optional, Sequence, Union

from .api import Model
from .errors import InvalidArgumentError
from .model.loader import load_model
from .server.engine import Engine, Job
from .server.openai_format import Completion
from .server.protocol import Answer

# llama-cpp-python's defaults
_COMPLETION_DEFAULTS = {"max_tokens": 16, "temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05,
                        "repeat_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                        "logprobs": None}  # logprobs: alternatives per token, as OpenAI's completions take it
_CHAT_DEFAULTS = {**_COMPLETION_DEFAULTS, "temperature": 0.2, "max_tokens": None, "logprobs": False, "top_logprobs": None}
_SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty", "seed")


class Llama:
    def __init__(self, model_path: str, *, n_ctx: int = 512, n_threads: Optional[int] = None, seed: Optional[int] = None,
                 chat_format: Optional[str] = None, verbose: bool = True, n_gpu_layers: int = 0):
        from . import backend

        if n_threads is not None:
            backend.set_num_threads(n_threads)
        self.model_path = str(model_path)
        self.verbose = verbose
        self._seed = seed
        self._model = Model(load_model(model_path), n_ctx=n_ctx or None, template=chat_format)
        self._engine = Engine(self._model, n_slots=1, n_ctx=n_ctx or None)
        self.n_ctx = self._engine.n_ctx
        self._last_prompt_tokens = 0

    # -- tokens ---------------------------------------------------------------------------------------------

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return self._model.tokenizer.encode(text.decode("utf-8", errors="replace"), add_bos=add_bos,
                                            parse_special=special)

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> bytes:
        return self._model.tokenizer.decode_bytes(tokens, special=special)

    # -- completions ----------------------------------------------------------------------------------------

    def __call__(self, prompt: str, **kwargs: Any) -> Union[dict, Iterator[dict]]:
        return self.create_completion(prompt, **kwargs)

    def create_completion(self, prompt: str, *, stream: bool = False, echo: bool = False,
                          **kwargs: Any) -> Union[dict, Iterator[dict]]:
        opts = _options(kwargs, _COMPLETION_DEFAULTS, "create_completion")
        job = self._job(opts, opts["logprobs"])
        shape = self._shape(False, job, offset=len(prompt))
        events = self._run({"prompt": prompt, **job})
        if stream:
            return self._stream(events, shape, prompt if echo else "")
        answer = _collect(events)
        shape.n_prompt_tokens = self._last_prompt_tokens
        return shape.whole((prompt if echo else "") + answer.text, answer.stats, answer.logprobs)

    def create_chat_completion(self, messages: list[dict[str, Any]], *, stream: bool = False,
                               **kwargs: Any) -> Union[dict, Iterator[dict]]:
        opts = _options(kwargs, _CHAT_DEFAULTS, "create_chat_completion")
        if opts["top_logprobs"] is not None and not opts["logprobs"]:
            raise InvalidArgumentError("create_chat_completion: top_logprobs needs logprobs=True")
        job = self._job(opts, (opts["top_logprobs"] or 0) if opts["logprobs"] else None)
        shape = self._shape(True, job)
        events = self._run({"messages": [dict(m) for m in messages], **job})
        if stream:
            return self._stream(events, shape, None)
        answer = _collect(events)
        shape.n_prompt_tokens = self._last_prompt_tokens
        return shape.whole(answer.text, answer.stats, answer.logprobs)

    # -- the engine -----------------------------------------------------------------------------------------

    def _shape(self, chat: bool, job: dict[str, Any], offset: int = 0) -> Completion:
        tokenizer = self._model.tokenizer if job["logprobs"] is not None else None
        return Completion(chat, self.model_path, tokenizer=tokenizer, offset=offset)

    def _job(self, opts: dict[str, Any], logprobs: Optional[int]) -> dict[str, Any]:
        sampling = {k: opts[k] for k in _SAMPLING if opts.get(k) is not None}
        if "seed" not in sampling and self._seed is not None:
            sampling["seed"] = self._seed
        max_tokens = opts.get("max_tokens")
        stop = opts.get("stop") or []
        if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int) or not 0 <= logprobs <= 20):
            raise InvalidArgumentError(f"logprobs: expected a number of alternatives from 0 to 20, got {logprobs!r}")
        return {"sampling": sampling, "max_tokens": -1 if not max_tokens or max_tokens < 0 else int(max_tokens),
                "stop": [stop] if isinstance(stop, str) else list(stop), "logprobs": logprobs}

    def _run(self, job_args: dict[str, Any]) -> Iterator[tuple]:
        events: queue.Queue = queue.Queue()
        job = Job(sink=events.put, **job_args)
        self._engine.submit(job)

        def read() -> Iterator[tuple]:
            try:
                while True:
                    event = events.get()
                    if event[0] == "error":
                        raise event[1]
                    if event[0] == "done":
                        self._last_prompt_tokens = job.n_prompt_tokens
                    yield event
                    if event[0] == "done":
                        return
            finally:
                job.cancel.set()

        return read()

    def _stream(self, events: Iterator[tuple], shape: Completion, echo: Optional[str]) -> Iterator[dict]:
        first = shape.first_chunk()
        if first:
            yield first
        if echo:
            yield shape.chunk(echo)
        for kind, value in events:
            if kind in ("piece", "logprobs"):
                chunk = shape.piece_chunk(kind, value)
                if chunk:
                    yield chunk
            else:
                shape.n_prompt_tokens = self._last_prompt_tokens
                yield from shape.last_chunks(value, include_usage=False)

    def reset(self) -> None:
        """Forgets the cached prompt, as llama-cpp-python's reset() does: the next call evaluates all of it."""
        for slot in self._engine.slots:
            slot.session.clear_cache()

    def close(self) -> None:
        self._engine.close()


def _options(kwargs: dict[str, Any], defaults: dict[str, Any], where: str) -> dict[str, Any]:
    known = set(defaults) | {"stop", "seed"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise InvalidArgumentError(f"{where}: {', '.join(unknown)} not supported (supported: {', '.join(sorted(known))})")
    return {**defaults, **kwargs}


def _collect(events: Iterator[tuple]) -> Answer:
    answer = Answer()
    for event in events:
        answer.add(event)
    return answer
