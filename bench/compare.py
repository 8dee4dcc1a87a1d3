"""llamalocal against llama.cpp (llama-cpp-python) on the same GGUF files, one command.

Per file and thread count, printed per engine with ours/llama.cpp ratios:

* pp512: prompt processing t/s, a 512-token prompt evaluated in one call;
* tg128: generation t/s, 128 tokens one at a time, greedy, from an empty cache
  (llama-bench's pp512 and tg128);
* tg's share of the read bandwidth: the weight bytes one token reads over the
  time per token, divided by the read bandwidth measured by a streaming read
  in the same round (as bench_generate.py does);
* load to first token: seconds from opening the file to the first generated
  token after a short prompt, page cache warm (the file was just read), each
  timed load after an untimed one of the same engine: on a virtual machine
  the first process to touch memory another has not just freed pays the
  host's first-touch cost (a 7B load took 1 s or 7 s by that alone), which
  would otherwise fall on whichever engine loads first in the round;
* peak RSS (MB) of that process (VmHWM), after it has also evaluated the pp
  prompt: the memory the benchmarked work needs, mapped weights included.

The engines run the same token ids with the same thread count, each in its own
process (compare_engines.py).  Throughput comes from one long-lived process
per engine, the rounds interleaved, the order swapped every round (ABBA), so
that drift and noise on the machine hit both engines alike.  Load time and
peak RSS come from a fresh process per engine and round, because a process that
has already loaded something reports figures polluted by it.  Figures are
medians over the rounds; ratios are medians of the rounds' ratios, each taken
between the two engines of the same round.

    python bench/compare.py MODEL.gguf [MODEL2.gguf ...] [--threads 1,2] [--pp 512] [--tg 128] [--rounds 5]
                            [--json OUT.json] [--png OUT.png]
    python bench/compare.py --make ~/bench-files --shapes 1.1b,7b --threads 1,2 --json cmp.json --png cmp.png

--make DIR first writes the synthetic full-depth files (bench/synth_files.py:
F16 at the 1.1B / 7B shapes with the LLaMA-2 vocabulary, quantized by
llama.cpp and by llamalocal, existing files kept), then compares all of
them, with any MODEL files given.  The PNG needs matplotlib (pip install -e .[bench]).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
from machine import cpu_name

from llamalocal import backend
from llamalocal.io.gguf_reader import GGUFFile

HERE = Path(__file__).resolve().parent
ENGINES = ("llamalocal", "llama.cpp")
# Metrics printed per engine: (key, label, short label, format, higher is better)
METRICS = (("pp", "pp{pp} t/s", "pp{pp}", "{:.1f}", True), ("tg", "tg{tg} t/s", "tg{tg}", "{:.1f}", True),
           ("bw_share", "tg share of bandwidth", "tg/BW", "{:.0%}", True),
           ("load_s", "load to first token s", "load", "{:.3f}", False),
           ("rss_mb", "peak RSS MB", "peak RSS", "{:.0f}", False))
RATIO_KEYS = ("pp", "tg", "load_s", "rss_mb")  # summary and chart: bw_share's ratio is tg's (same round, same bandwidth)
SETTLE_S = 0.1  # pause between engines: each pool spins a few ms after its last job before it sleeps


def bytes_per_token(path: Path) -> int:
    """Weights one decode step reads (bench_generate.py's rule, from the file's
    tensor table): every tensor once, except the embedding table (one row),
    which is read whole when it doubles as the classifier."""
    with GGUFFile(path) as f:
        total = sum(t.n_bytes for n, t in f.tensors.items() if n != "token_embd.weight")
        if "output.weight" not in f.tensors:
            total += f.tensors["token_embd.weight"].n_bytes
    return total


def read_bandwidth(buf: np.ndarray) -> float:
    """GB/s of a streaming read of buf (far larger than the caches) with the
    kernels' threads: the ceiling a decode step's weight reads can reach."""
    chunks = np.array_split(buf, 8)
    t0 = time.perf_counter()
    for c in chunks:
        backend._native.stream_read(c)
    return buf.nbytes / (time.perf_counter() - t0) / 1e9


# -- the engines' processes ------------------------------------------------------------------------------

def _engine_cmd(*args) -> list[str]:
    return [sys.executable, str(HERE / "compare_engines.py"), *map(str, args)]


class Worker:
    """One engine loaded once in its own process, driven by JSON lines."""

    def __init__(self, engine: str, path: Path, threads: int, n_ctx: int, n_batch: int):
        self.engine = engine
        self.proc = subprocess.Popen(_engine_cmd("worker", engine, path, threads, n_ctx, n_batch),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._reply()["ready"]

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.engine} worker exited (code {self.proc.wait()}); see its messages above")
        return json.loads(line)

    def call(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.close()
            except OSError:
                pass
            self.proc.wait()


def load_run(engine: str, path: Path, threads: int, n_ctx: int, short: list[int], prompt: list[int]) -> dict:
    """A fresh process: load to first token, then its peak RSS (VmHWM)."""
    ids = (",".join(map(str, short)), ",".join(map(str, prompt)))
    p = subprocess.run(_engine_cmd("load", engine, path, threads, n_ctx, *ids), check=False, stdout=subprocess.PIPE,
                       text=True)
    if p.returncode != 0 or not p.stdout.strip():
        raise RuntimeError(f"{engine} load process failed (code {p.returncode}); see its messages above")
    return json.loads(p.stdout)


# -- one file at one thread count ------------------------------------------------------------------------

def prompt_text(n_tokens_hint: int) -> str:
    """Any text: only the token count matters.  This module's source, repeated."""
    text = (HERE / "compare.py").read_text(encoding="utf-8")
    return text * (1 + n_tokens_hint // 2000)


def compare_file(path: Path, threads: int, args, probe: np.ndarray) -> dict:
    bpt = bytes_per_token(path)
    n_ctx = max(args.pp, args.tg + 1) + 16
    workers = {}
    try:
        for e in ENGINES:  # llamalocal first: it tokenizes the prompt both engines get
            workers[e] = Worker(e, path, threads, n_ctx, args.pp)
        prompt = workers["llamalocal"].call(op="tokens", text=prompt_text(args.pp))["tokens"][: args.pp]
        if len(prompt) < args.pp:
            raise RuntimeError(f"the prompt text gave only {len(prompt)} tokens")
        short = prompt[: args.short]
        for w in workers.values():  # warm-up: page the weights in, start the pools
            w.call(op="run", prompt=prompt[:8], tg=4)
        rounds = []
        for r in range(args.rounds):
            order = ENGINES if r % 2 == 0 else ENGINES[::-1]
            rnd = {"bandwidth_gbs": read_bandwidth(probe)}
            for e in order:
                time.sleep(SETTLE_S)
                rnd[e] = workers[e].call(op="run", prompt=prompt, tg=args.tg)
                rnd[e]["bw_share"] = rnd[e]["tg"] * bpt / 1e9 / rnd["bandwidth_gbs"]
            for e in order:
                time.sleep(SETTLE_S)
                load_run(e, path, threads, n_ctx, short, prompt)  # untimed: memory warm for the timed one
                lr = load_run(e, path, threads, n_ctx, short, prompt)
                rnd[e].update(load_s=lr["seconds"], import_s=lr["import_seconds"], rss_mb=lr["rss_mb"],
                              rss_anon_mb=lr["rss_anon_mb"], rss_file_mb=lr["rss_file_mb"],
                              first_token=lr["token"], finite=rnd[e]["finite"] and lr["finite"])
            rounds.append(rnd)
            print(f"  round {r + 1}/{args.rounds}: bw {rnd['bandwidth_gbs']:.1f} GB/s; " + "; ".join(
                f"{e} pp {rnd[e]['pp']:.1f} tg {rnd[e]['tg']:.1f} load {rnd[e]['load_s']:.2f}s "
                f"rss {rnd[e]['rss_mb']:.0f}MB" for e in ENGINES), flush=True)
        info = {e: w.info for e, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    return summarize(path, threads, bpt, rounds, info, len(prompt), len(short))


def summarize(path: Path, threads: int, bpt: int, rounds: list[dict], info: dict, n_pp: int, n_short: int) -> dict:
    keys = [m[0] for m in METRICS]
    extra = ["import_s", "rss_anon_mb", "rss_file_mb", "worker_rss_mb"]
    median = {e: {k: statistics.median(r[e][k] for r in rounds) for k in keys + extra} for e in ENGINES}
    ratio = {k: statistics.median(r["llamalocal"][k] / r["llama.cpp"][k] for r in rounds) for k in keys}
    return {"file": str(path), "name": path.name, "bytes": path.stat().st_size, "weight_bytes_per_token": bpt,
            "threads": threads, "pp_tokens": n_pp, "short_prompt_tokens": n_short,
            "bandwidth_gbs": statistics.median(r["bandwidth_gbs"] for r in rounds),
            "finite": {e: all(r[e]["finite"] for r in rounds) for e in ENGINES},
            # greedy token after the pp prompt: the same model computed by both should mostly agree
            # (near-ties, as random weights give, can tip either way)
            "top1_after_prompt": {e: rounds[0][e]["top1_after_prompt"] for e in ENGINES},
            "engines": info, "median": median, "ratio": ratio, "rounds": rounds}


# -- output ------------------------------------------------------------------------------------------------

def label(key: str, args, short: bool = False) -> str:
    m = next(m for m in METRICS if m[0] == key)
    return m[2 if short else 1].format(pp=args.pp, tg=args.tg)


def higher_is_better(key: str) -> bool:
    return next(m[4] for m in METRICS if m[0] == key)


def print_result(res: dict, args) -> None:
    print(f"\n{res['name']}: {res['bytes'] / 1e6:.0f} MB, {res['weight_bytes_per_token'] / 1e6:.1f} MB of weights "
          f"per token, {res['threads']} threads, read bandwidth {res['bandwidth_gbs']:.1f} GB/s, "
          f"median of {len(res['rounds'])} rounds")
    print(f"  {'':24} {'llamalocal':>11} {'llama.cpp':>11} {'ours/cpp':>9}")
    for key, _, _, fmt, higher in METRICS:
        vals = " ".join(f"{fmt.format(res['median'][e][key]):>11}" for e in ENGINES)
        better = "higher is better" if higher else "lower is better"
        print(f"  {label(key, args):24} {vals} {res['ratio'][key]:9.2f}  ({better})")
    anon_file = " ".join(f"{res['median'][e]['rss_anon_mb']:.0f}+{res['median'][e]['rss_file_mb']:.0f}".rjust(11)
                         for e in ENGINES)
    print(f"  {'  of it anon+file MB':24} {anon_file} {'':9}  (resident at the end: own memory + mapped file)")
    top = res["top1_after_prompt"]
    print(f"  greedy token after the prompt: llamalocal {top['llamalocal']}, llama.cpp {top['llama.cpp']}"
          f" ({'same' if top['llamalocal'] == top['llama.cpp'] else 'different'})")
    bad = [e for e in ENGINES if not res["finite"][e]]
    if bad:
        print(f"  WARNING: non-finite logits from {', '.join(bad)}")


def print_summary(results: list[dict], args) -> None:
    print("\nours/llama.cpp, median of per-round ratios (pp, tg: higher is better; load, RSS: lower is better)")
    print(f"{'file':44} {'threads':>7} " + " ".join(f"{label(k, args, True):>9}" for k in RATIO_KEYS))
    for r in results:
        print(f"{r['name'][:44]:44} {r['threads']:7d} " + " ".join(f"{r['ratio'][k]:9.2f}" for k in RATIO_KEYS))


def write_png(results: list[dict], args, machine: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    keys = RATIO_KEYS
    names = [f"{label(k, args)} ({'higher' if higher_is_better(k) else 'lower'} is better)" for k in keys]
    threads = sorted({r["threads"] for r in results})
    files = list(dict.fromkeys(r["name"] for r in results))
    fig, axes = plt.subplots(len(threads), 1, figsize=(max(7, 1.6 * len(files) * 1.2 + 2), 4.2 * len(threads)),
                             squeeze=False)
    width = 0.8 / len(keys)
    for ax, t in zip(axes[:, 0], threads):
        by_file = {r["name"]: r for r in results if r["threads"] == t}
        x = np.arange(len(files))
        for i, (k, n) in enumerate(zip(keys, names)):
            vals = [by_file[f]["ratio"][k] if f in by_file else np.nan for f in files]
            bars = ax.bar(x + (i - (len(keys) - 1) / 2) * width, vals, width, label=n)
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
        ax.axhline(1.0, color="black", linewidth=1)
        ax.set_xticks(x, [f.removesuffix(".gguf") for f in files], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("llamalocal / llama.cpp")
        ax.set_title(f"{t} thread{'s' if t > 1 else ''}", fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"llamalocal vs llama.cpp, median of per-round ratios — {machine['cpu']}, "
                 f"llamalocal kernel path {machine['kernel_path']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


# -- main --------------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", type=Path, help="GGUF files")
    ap.add_argument("--threads", default="2", help="comma-separated thread counts, each measured")
    ap.add_argument("--pp", type=int, default=512, help="prompt tokens (pp)")
    ap.add_argument("--tg", type=int, default=128, help="generated tokens (tg)")
    ap.add_argument("--short", type=int, default=8, help="prompt tokens before the first token, for load time")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="write every figure and round here")
    ap.add_argument("--png", help="bar chart of the ratios (needs matplotlib)")
    ap.add_argument("--make", metavar="DIR", help="first make the synthetic files (bench/synth_files.py) in DIR "
                                                  "and compare them too")
    ap.add_argument("--shapes", default="1.1b,7b", help="with --make: which shapes (1.1b, 7b)")
    ap.add_argument("--layers", type=int, help="with --make: override the layer count (quick checks, not full depth)")
    args = ap.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    files = list(args.models)
    if args.make:
        import synth_files  # beside this file

        files += synth_files.make(args.make, args.shapes.split(","), layers=args.layers, threads=max(thread_counts))
    if not files:
        ap.error("no model files (give some, or --make DIR)")
    for f in files:
        if not f.is_file():
            ap.error(f"{f}: no such file")
    if args.png:
        import matplotlib  # noqa: F401  (fail now, not after an hour of measuring)
    if backend._native is None:
        sys.exit("the bandwidth probe needs llamalocal's C++ extension (the numba backend is active)")

    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "kernel_path": backend.active_isa(),
               "backend": backend.BACKEND, "python": platform.python_version(),
               "llamalocal": metadata.version("llamalocal"), "llama_cpp_python": metadata.version("llama_cpp_python")}
    print(f"{machine['cpu']}, {machine['cores']} cores; llamalocal {machine['llamalocal']} kernel path "
          f"{machine['kernel_path']}; llama-cpp-python {machine['llama_cpp_python']}; threads {thread_counts}; "
          f"pp{args.pp} tg{args.tg}, load after a {args.short}-token prompt, {args.rounds} rounds")
    # The probe must be far larger than the caches and really written (untouched
    # pages all map the one zero page, which would read from cache).
    probe = np.full(1 << 30, 1, dtype=np.uint8)
    results = []
    for path in files:
        for t in thread_counts:
            backend.set_num_threads(t)  # the bandwidth probe's threads
            print(f"\n{path.name}, {t} threads", flush=True)
            try:
                res = compare_file(path, t, args, probe)
            except Exception as e:  # noqa: BLE001  (one file an engine cannot run must not end a long comparison)
                print(f"  skipped: {type(e).__name__}: {e}", flush=True)
                continue
            print_result(res, args)
            results.append(res)
    if not results:
        sys.exit("nothing was measured")
    print_summary(results, args)
    if args.json:
        settings = {"pp": args.pp, "tg": args.tg, "short": args.short, "rounds": args.rounds, "threads": thread_counts}
        Path(args.json).write_text(json.dumps({"machine": machine, "settings": settings, "results": results},
                                              indent=1), encoding="utf-8")
        print(f"wrote {args.json}")
    if args.png:
        write_png(results, args, machine, args.png)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
