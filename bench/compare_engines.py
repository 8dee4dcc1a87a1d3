"""The two engines as bench/compare.py drives them, each in a process of its own.

compare.py never loads a model itself.  It starts, per file and thread count,
one long-lived *worker* per engine for the throughput rounds (loaded once,
driven by JSON lines on stdin/stdout, so the rounds can interleave the
engines), and per round one fresh *load child* per engine for
load-to-first-token and peak RSS (a process that has already loaded a model,
or the other engine, would pollute both).  A separate process per engine also
keeps each engine's thread pool and allocator out of the other's way.

This module imports neither engine at the top: a llama.cpp process must not
pay for importing llamalocal (its peak RSS would include it), nor the reverse.

    python bench/compare_engines.py worker ENGINE MODEL THREADS N_CTX N_BATCH
    python bench/compare_engines.py load ENGINE MODEL THREADS N_CTX SHORT_IDS PROMPT_IDS   (ids: 1,2,3)

ENGINE is `llamalocal` or `llama.cpp`.  Both engines evaluate exactly the
token ids the parent sends (tokenized once, by llamalocal), greedily.
"""
from __future__ import annotations

import ctypes
import json
import os
import sys
import time

import numpy as np

_KEEP = []  # objects C code holds on to (llama.cpp's log callback)


class Ours:
    """llamalocal: the model and one KV cache."""

    name = "llamalocal"

    def __init__(self, path: str, threads: int, n_ctx: int, n_batch: int):
        from llamalocal import backend
        from llamalocal.model.loader import load_model

        backend.set_num_threads(threads)
        self.lm = load_model(path)
        self.cache = self.lm.model.new_cache(n_ctx)
        self.info = {"kernel_path": backend.active_isa(), "threads": backend.num_threads()}

    def tokens(self, text: str) -> list[int]:
        return [int(t) for t in self.lm.tokenizer.encode(text)]

    def reset(self) -> None:
        self.cache.truncate(0)

    def eval(self, tokens: list[int]) -> np.ndarray:
        """Appends tokens to the cache; the last one's logits."""
        return self.lm.model.forward(tokens, self.cache)


class LlamaCpp:
    """llama.cpp through llama-cpp-python's low-level API, as llama-bench calls it:
    llama_decode on a batch, logits of the last token only.  (The high-level
    Llama class adds per-call Python bookkeeping that llama.cpp itself does not have.)"""

    name = "llama.cpp"

    def __init__(self, path: str, threads: int, n_ctx: int, n_batch: int):
        import llama_cpp as lc

        self.lc = lc
        quiet = lc.llama_log_callback(lambda level, text, user_data: None)
        _KEEP.append(quiet)  # llama.cpp calls it from C: it must outlive every call
        lc.llama_log_set(quiet, ctypes.c_void_p(0))
        lc.llama_backend_init()
        mp = lc.llama_model_default_params()  # as llama-cli loads: load mode auto (mmap here), lazy
        self.model = lc.llama_model_load_from_file(path.encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        p = lc.llama_context_default_params()
        p.n_ctx = n_ctx
        # llama-bench's defaults: a batch of up to 2048 tokens computed in micro-batches of 512
        p.n_batch, p.n_ubatch = n_batch, min(n_batch, 512)
        p.n_threads = p.n_threads_batch = threads
        self.ctx = lc.llama_init_from_model(self.model, p)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.batch = lc.llama_batch_init(n_batch, 0, 1)
        self.pos = 0
        self.info = {"threads": threads, "flash_attn_type": int(p.flash_attn_type), "n_ubatch": p.n_ubatch,
                     "load_mode": int(mp.load_mode),
                     "system_info": lc.llama_print_system_info().decode(errors="replace").strip()}

    def reset(self) -> None:
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        self.pos = 0

    def eval(self, tokens: list[int]) -> np.ndarray:
        b, n = self.batch, len(tokens)
        for i, t in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, self.pos + i, 1, i == n - 1
            b.seq_id[i][0] = 0
        b.n_tokens = n
        rc = self.lc.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        self.pos += n
        return np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.ctx, n - 1), shape=(self.n_vocab,))


ENGINES = {Ours.name: Ours, LlamaCpp.name: LlamaCpp}


def run(engine, prompt: list[int], n_gen: int) -> dict:
    """pp: the whole prompt in one call, from an empty cache.  tg: from an empty
    cache (as llama-bench's tg, so the figure does not depend on the prompt
    length), one token, then n_gen single-token steps, greedy, timed."""
    engine.reset()
    t0 = time.perf_counter()
    logits = engine.eval(prompt)
    pp = len(prompt) / (time.perf_counter() - t0)
    finite, top1 = bool(np.isfinite(logits).all()), int(np.argmax(logits))
    engine.reset()
    logits = engine.eval(prompt[:1])
    t0 = time.perf_counter()
    for _ in range(n_gen):
        logits = engine.eval([int(np.argmax(logits))])
    tg = n_gen / (time.perf_counter() - t0)
    return {"pp": pp, "tg": tg, "finite": finite and bool(np.isfinite(logits).all()), "top1_after_prompt": top1}


def protocol_stdout():
    """The real stdout for the JSON replies; fd 1 then points at stderr, so
    that whatever native code prints cannot corrupt the replies."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    return out


def memory_mb() -> dict:
    """From /proc/self/status: VmHWM, this process's peak resident set (not the
    parent's wait4 ru_maxrss, into which Linux carries the forking parent's RSS
    across exec), and the resident set now split into anonymous memory and
    mapped file pages (the weights, shared with the page cache)."""
    keys = {"VmHWM:": "rss_mb", "RssAnon:": "rss_anon_mb", "RssFile:": "rss_file_mb"}
    out = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key = line.split(maxsplit=1)[0] if line.strip() else ""
            if key in keys:
                out[keys[key]] = int(line.split()[1]) * 1024 / 1e6  # kB
    return out


def worker(name: str, path: str, threads: int, n_ctx: int, n_batch: int) -> None:
    """Loads once, then answers requests: {"op": "tokens", "text": ...} (llamalocal),
    {"op": "run", "prompt": [...], "tg": n} and {"op": "quit"}, one JSON line each."""
    out = protocol_stdout()
    engine = ENGINES[name](path, threads, n_ctx, n_batch)
    print(json.dumps({"ready": engine.info}), file=out, flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "quit":
            break
        if req["op"] == "tokens":
            reply = {"tokens": engine.tokens(req["text"])}
        else:  # with the worker's own peak so far, a cross-check of the load processes' figure
            reply = {**run(engine, req["prompt"], req["tg"]), "worker_rss_mb": memory_mb()["rss_mb"]}
        print(json.dumps(reply), file=out, flush=True)


def load_child(name: str, path: str, threads: int, n_ctx: int, short: list[int], prompt: list[int]) -> None:
    """Seconds from opening the file to the first generated token after the short
    prompt.  Imports come first and are reported apart: they are the same for
    every file, and not part of opening one.  Then, untimed, the full prompt from
    an empty cache, so that the peak RSS reported covers the benchmarked work
    (a pp-sized batch in a context as large as the workers'), not just loading."""
    out = protocol_stdout()
    t_start = time.perf_counter()
    if name == Ours.name:
        import llamalocal.model.loader  # noqa: F401  (the import, timed apart)
    else:
        import llama_cpp

        llama_cpp.llama_backend_init()
    t_open = time.perf_counter()
    engine = ENGINES[name](path, threads, n_ctx, len(prompt))
    logits = engine.eval(short)
    token = int(np.argmax(logits))
    t_first = time.perf_counter()
    finite = bool(np.isfinite(logits).all())
    engine.reset()
    finite = finite and bool(np.isfinite(engine.eval(prompt)).all())
    print(json.dumps({"seconds": t_first - t_open, "import_seconds": t_open - t_start, "token": token,
                      "finite": finite, **memory_mb()}), file=out, flush=True)


if __name__ == "__main__":
    mode, engine_name, model, n_threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if mode == "worker":
        worker(engine_name, model, n_threads, int(sys.argv[5]), int(sys.argv[6]))
    elif mode == "load":
        load_child(engine_name, model, n_threads, int(sys.argv[5]), [int(t) for t in sys.argv[6].split(",")],
                   [int(t) for t in sys.argv[7].split(",")])
    else:
        sys.exit(f"unknown mode {mode!r}")
