"""Kernel benchmark: matvec at 7B shapes against the machine's read bandwidth.

Decode reads every weight once per token, so a matvec kernel is judged by the
fraction of memory bandwidth it reaches.  Weights are spread over many copies
(far more than the last-level cache) and each call reads the next copy, so
bytes come from DRAM as they do in a real model.  The bandwidth probe (a plain
streaming sum in the extension) runs in the same process, interleaved with the
kernels round by round (the bandwidth left to one VM drifts from second to
second), and every figure is a median: the fraction is the median of the
rounds' own ratios.

    python bench/bench_kernels.py [--types Q4_0,Q4_K] [--threads 1,2] [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from llamalocal import backend
from llamalocal.formats import FORMATS, SCALE_FIELDS, WEIGHT_TYPES, GGMLType as T, block_format

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]  # (rows N, row length K) of LLaMA-7B's projections
# A kernel that is slower than DRAM even on cached weights is compute-bound:
# the "in cache" column times it on this many bytes of rows, read again and again.
CACHE_RESIDENT_BYTES = 8 << 20


def weight_copies(qtype: T, n: int, k: int, total_bytes: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Distinct weight matrices adding up to at least total_bytes, with sane fp16 scales
    (random bytes there could be subnormal or NaN, which some CPUs process slowly)."""
    fmt = FORMATS[qtype]
    mat_bytes = n * fmt.row_bytes(k)
    count = max(2, -(-total_bytes // mat_bytes))
    buf = rng.integers(0, 256, size=count * mat_bytes, dtype=np.uint8)
    if qtype in (T.F32, T.F16, T.BF16):
        vals = {T.F32: np.float32, T.F16: np.float16}.get(qtype)
        if vals is not None:
            buf.view(vals)[:] = rng.standard_normal(buf.size // np.dtype(vals).itemsize).astype(vals)
        else:  # bf16: keep the high half of normal floats
            buf.view(np.uint16)[:] = (rng.standard_normal(buf.size // 2).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    else:
        blocks = buf.reshape(-1, fmt.type_size)
        scale = np.array([0.01], np.float16).view(np.uint8)
        for off in SCALE_FIELDS[qtype]:
            blocks[:, off] = scale[0]
            blocks[:, off + 1] = scale[1]
    return [buf[i * mat_bytes : (i + 1) * mat_bytes].reshape(n, -1) for i in range(count)]


def time_calls(fn, items, min_seconds: float) -> float:
    """Median seconds per call over rounds that each sweep all items once."""
    per_call = []
    t_end = time.perf_counter() + min_seconds
    while time.perf_counter() < t_end or len(per_call) < 3:
        t0 = time.perf_counter()
        for it in items:
            fn(it)
        per_call.append((time.perf_counter() - t0) / len(items))
    return statistics.median(per_call)


def paired_rounds(fn, items, probe: np.ndarray, min_seconds: float) -> tuple[float, float, float]:
    """Rounds of one probe sweep then one sweep of fn over all items, so that both
    see the same moment's bandwidth.  Returns the medians of the kernel's seconds
    per call, of the probe's GB/s and of the rounds' (kernel bytes/s) / (probe bytes/s)
    with a kernel call reading items[0].nbytes."""
    chunks = np.array_split(probe, 8)
    per_call, probe_gbs, ratios = [], [], []
    t_end = time.perf_counter() + min_seconds
    while time.perf_counter() < t_end or len(ratios) < 5:
        t0 = time.perf_counter()
        for c in chunks:
            backend._native.stream_read(c)
        t1 = time.perf_counter()
        for it in items:
            fn(it)
        t2 = time.perf_counter()
        per_call.append((t2 - t1) / len(items))
        probe_gbs.append(probe.nbytes / (t1 - t0) / 1e9)
        ratios.append(items[0].nbytes / per_call[-1] / 1e9 / probe_gbs[-1])
    return statistics.median(per_call), statistics.median(probe_gbs), statistics.median(ratios)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--types", default=",".join(t.name for t in WEIGHT_TYPES))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--quick", action="store_true", help="shorter timings and smaller working sets")
    ap.add_argument("--batch", type=int, default=512, help="batch of the matmul GFLOP/s column")
    args = ap.parse_args()
    if backend.BACKEND != "native":
        raise SystemExit("the kernel benchmark needs the C++ extension (backend is numba)")
    types = [block_format(t).type for t in args.types.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    secs = 0.3 if args.quick else 1.0
    working_set = (256 if args.quick else 768) << 20
    rng = np.random.default_rng(0)
    probe = rng.integers(0, 256, size=1 << 30, dtype=np.uint8)

    print(f"kernel path {backend.active_isa()}, weights swept over >= {working_set >> 20} MiB per shape (DRAM, not cache)")
    print("in cache: the same kernel on rows that fit in the last-level cache, its compute ceiling")
    print("of BW: the median over rounds of (kernel GB/s) / (read BW), each round timing the probe then the kernel")
    print(f"{'type':6} {'thr':>3} {'shape (N x K)':>14} {'GB/s':>7} {'read BW':>8} {'of BW':>6} {'us/call':>8} {'in cache':>9}")
    summary = []
    for nth in threads:
        backend.set_num_threads(nth)
        for qtype in types:
            for n, k in SHAPES:
                copies = weight_copies(qtype, n, k, working_set, rng)
                x = rng.standard_normal(k).astype(np.float32)
                out = np.empty(n, np.float32)
                t, bw, frac = paired_rounds(lambda w: backend._native.matmul(int(qtype), w, x, out), copies, probe, 2 * secs)
                gbs = copies[0].nbytes / t / 1e9
                hot = copies[0][: max(1, (CACHE_RESIDENT_BYTES // copies[0][0].nbytes) // 8 * 8)]
                t_hot = time_calls(lambda w: backend._native.matmul(int(qtype), w, x, out[: len(w)]), [hot] * 16, secs / 2)
                summary.append((qtype.name, nth, frac))
                print(f"{qtype.name:6} {nth:>3} {f'{n}x{k}':>14} {gbs:7.1f} {bw:8.1f} {frac:6.0%} {t * 1e6:8.0f} "
                      f"{hot.nbytes / t_hot / 1e9:9.1f}", flush=True)
                del copies

    print(f"\nbatch-{args.batch} matmul at 4096x4096 ({max(threads)} threads)")
    backend.set_num_threads(max(threads))
    print(f"{'type':6} {'GFLOP/s':>8} {'ms/call':>8}")
    x = rng.standard_normal((args.batch, 4096)).astype(np.float32)
    for qtype in types:
        w = weight_copies(qtype, 4096, 4096, 0, rng)[0]
        out = np.empty((args.batch, 4096), np.float32)
        t = time_calls(lambda w_: backend._native.matmul(int(qtype), w_, x, out), [w], secs)
        print(f"{qtype.name:6} {2 * args.batch * 4096 * 4096 / t / 1e9:8.1f} {t * 1e3:8.1f}", flush=True)

    print("\nmedian fraction of read bandwidth over the three shapes:")
    for nth in threads:
        row = [f"{name} {statistics.median(f for n2, t2, f in summary if n2 == name and t2 == nth):.0%}" for name in dict.fromkeys(s[0] for s in summary)]
        print(f"  {nth} thread(s): " + ", ".join(row))


if __name__ == "__main__":
    main()
