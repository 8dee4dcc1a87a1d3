"""Decode throughput with continuous batching: n sequences stepped one at a
time (forward, one token per call) against the same n batched into one pass
(forward_batch), total tokens/s over all sequences; next to it llama.cpp's
figures on the same GGUF file and thread count.

A decode step reads every weight once whatever the number of rows, so on a
bandwidth-bound model a batch of n should come close to n times the
single-sequence rate until the matmuls become compute-bound.  The two ways
alternate round by round so that machine noise hits both alike; each
sequence starts from its own prompt (different lengths) and decodes greedily.

llama.cpp runs the way llama-server batches its slots, through
llama-cpp-python's low-level API: one context whose KV cache holds every
sequence (seq_id = sequence index, unified cache), each sequence prefilled
with its own prompt, then per step either one llama_decode of a llama_batch
holding one token of each sequence, or n llama_decode calls of one token;
greedy, argmax over each sequence's llama_get_logits_ith row.  Its rounds
interleave with llamalocal's.  Without llama-cpp-python (or with
--no-llama-cpp) only llamalocal is measured.

    python bench/bench_batch.py MODEL.gguf [--threads 2] [--seqs 1,2,4] [--tg 32] [--rounds 5] [--no-llama-cpp]
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import time

import numpy as np
from machine import cpu_name

from llamalocal import backend
from llamalocal.model.loader import load_model


def prompt(s: int) -> list[int]:
    """Sequence s's prompt: its own tokens and its own length."""
    return [(7 * s + i) % 200 + 10 for i in range(16 + 5 * s)]


def prefill(m, n: int, n_ctx: int) -> tuple[list, list[int]]:
    caches, nxt = [], []
    for s in range(n):
        c = m.new_cache(n_ctx)
        nxt.append(int(np.argmax(m.forward(prompt(s), c))))
        caches.append(c)
    return caches, nxt


def one_at_a_time(m, caches, nxt, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        nxt = [int(np.argmax(m.forward([t], c))) for t, c in zip(nxt, caches)]
    return len(caches) * steps / (time.perf_counter() - t0)


def batched(m, caches, nxt, steps: int) -> float:
    seq = list(range(len(caches)))
    t0 = time.perf_counter()
    for _ in range(steps):
        nxt = [int(i) for i in np.argmax(m.forward_batch(nxt, seq, caches), axis=1)]
    return len(caches) * steps / (time.perf_counter() - t0)


def llamalocal_round(m, caches, marks, nxt, steps: int) -> list[float]:
    row = []
    for way in (one_at_a_time, batched):
        for c, k in zip(caches, marks):
            c.truncate(k)
        row.append(way(m, caches, nxt, steps))
    return row


_QUIET = None  # llama.cpp's log callback, kept alive here


def import_llama_cpp():
    """llama_cpp with its log silenced, or None and why not."""
    try:
        import llama_cpp
    except (ImportError, OSError, RuntimeError) as e:  # not installed, or its shared library failed to load
        return None, f"{type(e).__name__}: {e}"
    global _QUIET  # llama.cpp calls it from C: it must outlive every call
    _QUIET = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
    llama_cpp.llama_log_set(_QUIET, ctypes.c_void_p(0))
    return llama_cpp, None


class LlamaCpp:
    """llama.cpp's model loaded once; per batch size a context holding n
    sequences and a llama_batch big enough for a prompt or a step."""

    def __init__(self, lc, path: str, threads: int):
        self.lc, self.threads = lc, threads
        lc.llama_backend_init()
        self.model = lc.llama_model_load_from_file(path.encode(), lc.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.ctx = self.batch = None

    def open(self, n_seq: int, seq_ctx: int) -> None:
        lc = self.lc
        p = lc.llama_context_default_params()
        p.n_seq_max = n_seq
        p.n_ctx = n_seq * seq_ctx  # the whole cache; without kv_unified each sequence gets n_ctx / n_seq_max
        p.n_batch = p.n_ubatch = max(seq_ctx, n_seq)
        p.n_threads = p.n_threads_batch = self.threads
        if hasattr(p, "kv_unified"):
            p.kv_unified = True
        self.ctx = lc.llama_init_from_model(self.model, p)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.batch = lc.llama_batch_init(p.n_batch, 0, 1)
        self.n_seq = n_seq

    def close(self) -> None:
        if self.batch is not None:
            self.lc.llama_batch_free(self.batch)
        if self.ctx:
            self.lc.llama_free(self.ctx)
        self.ctx = self.batch = None

    def free(self) -> None:
        self.close()
        self.lc.llama_model_free(self.model)
        self.lc.llama_backend_free()

    def decode(self, tokens: list[int], seqs: list[int], pos: list[int], logits: list[bool]) -> None:
        b = self.batch
        for i, (t, s, p, out) in enumerate(zip(tokens, seqs, pos, logits)):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, p, 1, out
            b.seq_id[i][0] = s
        b.n_tokens = len(tokens)
        rc = self.lc.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def argmax(self, i: int) -> int:
        row = np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
        return int(np.argmax(row))

    def prefill(self) -> tuple[list[int], list[int]]:
        """Empty the cache, then each sequence's prompt: first tokens and next positions."""
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        nxt, pos = [], []
        for s in range(self.n_seq):
            p = prompt(s)
            self.decode(p, [s] * len(p), list(range(len(p))), [False] * (len(p) - 1) + [True])
            nxt.append(self.argmax(len(p) - 1))
            pos.append(len(p))
        return nxt, pos

    def one_at_a_time(self, nxt: list[int], pos: list[int], steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            for s in range(self.n_seq):
                self.decode([nxt[s]], [s], [pos[s]], [True])
                nxt[s] = self.argmax(0)
                pos[s] += 1
        return self.n_seq * steps / (time.perf_counter() - t0)

    def batched(self, nxt: list[int], pos: list[int], steps: int) -> float:
        seq, every = list(range(self.n_seq)), [True] * self.n_seq
        t0 = time.perf_counter()
        for _ in range(steps):
            self.decode(nxt, seq, pos, every)
            nxt = [self.argmax(i) for i in seq]
            pos = [p + 1 for p in pos]
        return self.n_seq * steps / (time.perf_counter() - t0)

    def round(self, steps: int) -> list[float]:
        return [way(*self.prefill(), steps) for way in (self.one_at_a_time, self.batched)]


def medians(runs: list[list[float]]) -> tuple[float, float, float]:
    """One at a time and batched t/s, and the median of the rounds' speed-ups."""
    return (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs),
            statistics.median(r[1] / r[0] for r in runs))


def open_llama_cpp(args) -> LlamaCpp | None:
    if args.no_llama_cpp:
        print("llama.cpp: not measured (--no-llama-cpp)")
        return None
    lc, why = import_llama_cpp()
    if lc is None:
        print(f"llama.cpp: not measured, llama_cpp is not importable ({why})")
        return None
    try:
        cpp = LlamaCpp(lc, args.model, args.threads)
    except RuntimeError as e:
        print(f"llama.cpp: not measured ({e})")
        return None
    print(f"llama.cpp: llama-cpp-python {lc.__version__}, {args.threads} threads, "
          f"kv_unified {'on' if hasattr(lc.llama_context_params, 'kv_unified') else 'n/a (always unified)'}")
    return cpp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seqs", default="1,2,4", help="batch sizes (sequences)")
    ap.add_argument("--tg", type=int, default=32, help="decode steps per sequence and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-llama-cpp", action="store_true", help="measure llamalocal only")
    args = ap.parse_args()

    backend.set_num_threads(args.threads)
    m = load_model(args.model).model
    sizes = [int(s) for s in args.seqs.split(",")]
    print(f"{args.model}: {cpu_name()}, kernel path {backend.active_isa()}, {backend.num_threads()} threads, "
          f"{args.tg} steps per round, median of {args.rounds} rounds")
    cpp = open_llama_cpp(args)
    head = f"{'sequences':>9} {'one at a time t/s':>18} {'batched t/s':>12} {'speed-up':>9}"
    if cpp is None:
        print(head)
    else:
        print(f"{'':9} {'llamalocal':-^41} {'llama.cpp':-^41}")
        print(head + head[9:] + f" {'batched ours/cpp':>17}")
    try:
        for n in sizes:
            seq_ctx = max(64, len(prompt(n - 1))) + args.tg
            caches, nxt = prefill(m, n, seq_ctx)
            marks = [c.n_tokens for c in caches]
            batched(m, caches, nxt, 2)  # warm-up: page in the weights, start the pool
            if cpp is not None:
                cpp.open(n, seq_ctx)
                cpp.batched(*cpp.prefill(), 2)
            ours, ref = [], []
            for _ in range(args.rounds):
                ours.append(llamalocal_round(m, caches, marks, nxt, args.tg))
                if cpp is not None:
                    ref.append(cpp.round(args.tg))
            alone, batch, ratio = medians(ours)
            line = f"{n:9d} {alone:18.1f} {batch:12.1f} {ratio:8.2f}x"
            if cpp is not None:
                cpp.close()
                alone, batch, ratio = medians(ref)
                vs = statistics.median(a[1] / b[1] for a, b in zip(ours, ref))
                line += f" {alone:18.1f} {batch:12.1f} {ratio:8.2f}x {vs:16.2f}x"
            print(line, flush=True)
    finally:
        if cpp is not None:
            cpp.free()


if __name__ == "__main__":
    main()
