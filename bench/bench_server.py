"""Concurrent streams on the server's engine: aggregate and per-stream generation rate.

    python bench/bench_server.py MODEL.gguf --streams 1,2,4 --tokens 64 --threads 2

Each round runs N chat requests at once on N slots (temperature 0, different
prompts, fixed length: end of turn ignored) for every N, and reports generated
tokens per second over the whole round (aggregate) and per stream; the ratios
are to the first N of the same round (one stream alone), medians over rounds.
Prints the CPU and the kernel path.
"""
from __future__ import annotations

import argparse
import queue
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine import cpu_name  # noqa: E402

from llamalocal import backend  # noqa: E402
from llamalocal.api import load  # noqa: E402
from llamalocal.server.engine import Engine, Job  # noqa: E402

PROMPTS = ["Tell me about the sea.", "Write about a mountain.", "Describe a city at night.", "Explain how rain forms.",
           "Tell me a story about a fox.", "What is a star?", "Describe a forest.", "Write about a river."]


def run_round(engine: Engine, n: int, tokens: int) -> tuple[float, list[float]]:
    """(aggregate t/s, per-stream t/s) for n streams started together."""
    done: queue.Queue = queue.Queue()
    starts, ends, counts = {}, {}, {}
    t0 = time.perf_counter()
    for i in range(n):
        def sink(event, i=i):
            if event[0] == "piece" and i not in starts:
                starts[i] = time.perf_counter()
            if event[0] in ("done", "error"):
                ends[i] = time.perf_counter()
                counts[i] = event[1].n_generated if event[0] == "done" else 0
                done.put(i)
        engine.submit(Job(sink=sink, messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                          sampling={"temperature": 0.0}, max_tokens=tokens, ignore_eos=True))
    for _ in range(n):
        done.get()
    total = time.perf_counter() - t0
    per = [counts[i] / (ends[i] - starts[i]) for i in range(n) if counts[i] and i in starts]
    return sum(counts.values()) / total, per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--streams", default="1,2,4")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    streams = [int(s) for s in args.streams.split(",")]
    model = load(args.model, n_threads=args.threads, n_ctx=512)
    engine = Engine(model, n_slots=max(streams), n_ctx=512)
    print(f"{Path(args.model).name}: {cpu_name()}, kernel path {backend.active_isa()}, {backend.num_threads()} threads, "
          f"{args.tokens} tokens per stream, median of {args.rounds} interleaved rounds")
    print(f"{'streams':>7} {'aggregate t/s':>14} {'per stream t/s':>15} {'aggregate / one':>16} {'per stream / one':>17}")
    # Rounds outer, stream counts inner: machine noise then hits every count alike,
    # and each ratio is taken within a round (against that round's one stream).
    aggs: dict[int, list[float]] = {n: [] for n in streams}
    pers: dict[int, list[float]] = {n: [] for n in streams}
    ratios: dict[int, list[tuple[float, float]]] = {n: [] for n in streams}
    for _ in range(args.rounds):
        row = {n: run_round(engine, n, args.tokens) for n in streams}
        base_agg, base_per = row[streams[0]][0], statistics.median(row[streams[0]][1])
        for n, (agg, per) in row.items():
            aggs[n].append(agg)
            pers[n].append(statistics.median(per))
            ratios[n].append((agg / base_agg, statistics.median(per) / base_per))
    for n in streams:
        agg_ratio = statistics.median(r[0] for r in ratios[n])
        per_ratio = statistics.median(r[1] for r in ratios[n])
        print(f"{n:>7} {statistics.median(aggs[n]):>14.1f} {statistics.median(pers[n]):>15.1f} {agg_ratio:>16.2f} "
              f"{per_ratio:>17.2f}")
    engine.close()


if __name__ == "__main__":
    main()
