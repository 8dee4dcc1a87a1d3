"""Decode throughput with continuous batching: n sequences stepped one at a
time (forward, one token per call) against the same n batched into one pass
(forward_batch), total tokens/s over all sequences.

A decode step reads every weight once whatever the number of rows, so on a
bandwidth-bound model a batch of n should come close to n times the
single-sequence rate until the matmuls become compute-bound.  The two ways
alternate round by round so that machine noise hits both alike; each
sequence starts from its own prompt (different lengths) and decodes greedily.

    python bench/bench_batch.py MODEL.gguf [--threads 2] [--seqs 1,2,4] [--tg 32] [--rounds 5]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

from llamalocal import backend
from llamalocal.model.loader import load_model


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def prefill(m, n: int, n_ctx: int) -> tuple[list, list[int]]:
    caches, nxt = [], []
    for s in range(n):
        c = m.new_cache(n_ctx)
        nxt.append(int(np.argmax(m.forward([(7 * s + i) % 200 + 10 for i in range(16 + 5 * s)], c))))
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seqs", default="1,2,4", help="batch sizes (sequences)")
    ap.add_argument("--tg", type=int, default=32, help="decode steps per sequence and round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    backend.set_num_threads(args.threads)
    m = load_model(args.model).model
    sizes = [int(s) for s in args.seqs.split(",")]
    print(f"{args.model}: {cpu_name()}, kernel path {backend.active_isa()}, {backend.num_threads()} threads, "
          f"{args.tg} steps per round, median of {args.rounds} rounds")
    print(f"{'sequences':>9} {'one at a time t/s':>18} {'batched t/s':>12} {'speed-up':>9}")
    for n in sizes:
        caches, nxt = prefill(m, n, 64 + args.tg)
        marks = [c.n_tokens for c in caches]
        batched(m, caches, nxt, 2)  # warm-up: page in the weights, start the pool
        runs = []
        for _ in range(args.rounds):
            row = []
            for way in (one_at_a_time, batched):
                for c, k in zip(caches, marks):
                    c.truncate(k)
                row.append(way(m, caches, nxt, args.tg))
            runs.append(row)
        alone = statistics.median(r[0] for r in runs)
        batch = statistics.median(r[1] for r in runs)
        ratio = statistics.median(r[1] / r[0] for r in runs)
        print(f"{n:9d} {alone:18.1f} {batch:12.1f} {ratio:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
