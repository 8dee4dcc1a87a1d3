"""llamalocal against llama.cpp (llama-cpp-python) on the same GGUF file.

Both engines run in this one process with the same thread count, alternating
round by round so that machine noise hits both alike.  Printed per engine:
prompt processing (batched prefill) and generation (one token at a time,
greedy) tokens/s as medians over the rounds, the median of the rounds'
ratios, and generation's fraction of memory bandwidth: the weight bytes one
token reads divided by time per token, over the read bandwidth measured in
the same round.

    pip install llama-cpp-python
    python bench/bench_generate.py MODEL.gguf [--threads 2] [--pp 128] [--tg 64] [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from llamalocal import backend
from llamalocal.model.loader import load_model


def bytes_per_token(lm) -> int:
    """Weights one decode step reads: every tensor once, except the embedding
    table (one row), which is read whole when it doubles as the classifier."""
    f = lm._file
    total = sum(t.n_bytes for n, t in f.tensors.items() if n != "token_embd.weight")
    if "output.weight" not in f.tensors:
        total += f.tensors["token_embd.weight"].n_bytes
    return total


def run_llamalocal(lm, prompt: list[int], n_gen: int) -> tuple[float, float]:
    cache = lm.model.new_cache(len(prompt) + n_gen + 8)
    t0 = time.perf_counter()
    logits = lm.model.forward(prompt, cache)
    pp = len(prompt) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(n_gen):
        logits = lm.model.forward([int(np.argmax(logits))], cache)
    return pp, n_gen / (time.perf_counter() - t0)


def run_llama_cpp(llm, prompt: list[int], n_gen: int) -> tuple[float, float]:
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    pp = len(prompt) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(n_gen):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    return pp, n_gen / (time.perf_counter() - t0)


def read_bandwidth(buf: np.ndarray) -> float:
    chunks = np.array_split(buf, 8)
    t0 = time.perf_counter()
    for c in chunks:
        backend._native.stream_read(c)
    return buf.nbytes / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pp", type=int, default=128, help="prompt tokens")
    ap.add_argument("--tg", type=int, default=64, help="generated tokens")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from llama_cpp import Llama  # the reference engine, installed separately

    backend.set_num_threads(args.threads)
    lm = load_model(args.model)
    n_ctx = args.pp + args.tg + 16
    # n_batch = n_ctx: llama-cpp-python keeps the last logits in a row indexed by position
    llm = Llama(model_path=args.model, n_ctx=n_ctx, n_batch=n_ctx, n_threads=args.threads,
                n_threads_batch=args.threads, verbose=False)
    text = open(__file__, encoding="utf-8").read() * 4  # any text: only the token count matters
    prompt = lm.tokenizer.encode(text)[: args.pp]
    probe = np.random.default_rng(0).integers(0, 256, size=1 << 30, dtype=np.uint8)
    bpt = bytes_per_token(lm)

    run_llamalocal(lm, prompt[:8], 4)  # warm-up: page in the weights, start the pools
    run_llama_cpp(llm, prompt[:8], 4)
    results = {"llamalocal": [], "llama.cpp": []}
    bws = []
    for r in range(args.rounds):
        bws.append(read_bandwidth(probe))
        results["llamalocal"].append(run_llamalocal(lm, prompt, args.tg))
        results["llama.cpp"].append(run_llama_cpp(llm, prompt, args.tg))
        print(f"round {r + 1}: " + ", ".join(f"{k} pp {v[-1][0]:.1f} tg {v[-1][1]:.1f}" for k, v in results.items()), flush=True)
    # The bandwidth one machine gives drifts between rounds: each round's probe
    # grades that round's decode, and the ratios are taken round by round
    # (the engines run back to back in each) before the median.
    bw = statistics.median(bws)
    print(f"\n{args.model}: {bpt / 1e6:.1f} MB of weights per token, read bandwidth {bw:.1f} GB/s (median), "
          f"{args.threads} threads, kernel path {backend.active_isa()}, pp{args.pp} tg{args.tg}, median of {args.rounds}")
    print(f"{'engine':12} {'pp t/s':>8} {'tg t/s':>8} {'tg of BW':>9}")
    for name, runs in results.items():
        pp = statistics.median(x[0] for x in runs)
        tg = statistics.median(x[1] for x in runs)
        of_bw = statistics.median(x[1] * bpt / 1e9 / b for x, b in zip(runs, bws))
        print(f"{name:12} {pp:8.1f} {tg:8.1f} {of_bw:9.0%}")
    ours, ref = results["llamalocal"], results["llama.cpp"]
    print(f"{'ratio':12} {statistics.median(a[0] / b[0] for a, b in zip(ours, ref)):8.2f} "
          f"{statistics.median(a[1] / b[1] for a, b in zip(ours, ref)):8.2f}   (median of the rounds' ratios)")

if __name__ == "__main__":
    main()
