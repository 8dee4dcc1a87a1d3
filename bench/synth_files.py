"""Full-depth synthetic LLaMA files (1.1B and 7B shapes), quantized by llama.cpp and by llamalocal.

Test files for bench/compare.py, at the TinyLlama-1.1B and LLaMA-7B shapes.

No 1.1B or 7B checkpoint ships with the repository, and speed depends on the
tensor shapes, the types and the vocabulary size, not on what the weights
mean.  So this writes an F16 GGUF with every layer of the real shape, random
Gaussian weights at scales that keep the activations (and the logits) finite,
and the real LLaMA-2 32000-token SentencePiece vocabulary (classifier and
embedding table as large as the real ones, text tokenizes as it would), the
way llama.cpp's converter lays it out (F16 matrices, F32 norms, separate
output.weight).  Tensors stream one at a time, so memory stays at one tensor
(the largest, the 7B embedding table, is 0.5 GB as float32).

Then each F16 file is quantized twice into the same folder: by llama.cpp
(llama-cpp-python's `llama_model_quantize`, as `llama-quantize` does) and by
`llamalocal quantize` (round to nearest).  Existing files are skipped, and each
output appears only when complete, so an interrupted run can simply be rerun.

    nice -n 19 python bench/synth_files.py ~/bench-files --shapes 1.1b        # 2.2 GB F16 + 6 quantized
    nice -n 19 python bench/synth_files.py ~/bench-files --shapes 7b          # 13.5 GB F16 + 4 quantized
    python bench/synth_files.py /tmp/t --shapes 7b --layers 2                     # a quick 2-layer check

Output names: llama-1.1b.f16.gguf, llama-1.1b.Q4_0.llamacpp.gguf,
llama-1.1b.Q4_0.llamalocal.gguf, ... (llama-7b-L2.* with --layers 2).

Cost measured on the 2-core development machine (busy, under nice): 1.1B:
F16 31 s, quantizing 10 / 49 s (Q4_0, llama.cpp / llamalocal), 115 / 168 s
(Q4_K_M), 12 / 32 s (Q8_0); the 7B shape has 6.1 times the weights.  Peak
memory at the 7B shape: 0.8 GB writing the F16 file, 4.7 GB in `llamalocal quantize`
(its per-tensor error statistics hold float64 copies of the embedding table).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llamalocal.convert.checkpoint import llama_hparams
from llamalocal.formats import GGMLType
from llamalocal.io.gguf_metadata import string, u32
from llamalocal.io.gguf_writer import TensorSpec, write_gguf
from llamalocal.tokenizer.to_gguf import spm_vocab

# The repository sits beside shared/, its data folder (as in CI)
DEFAULT_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "models" / "tokenizer.model"


@dataclass(frozen=True)
class Shape:
    name: str
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_ctx: int
    types: tuple[str, ...]  # the quantized types made from it


SHAPES = {
    # TinyLlama-1.1B: grouped-query attention, 4 kv heads of 64
    "1.1b": Shape("llama-1.1b", 2048, 22, 32, 4, 5632, 2048, ("Q4_0", "Q4_K_M", "Q8_0")),
    # LLaMA(-2)-7B: full multi-head attention
    "7b": Shape("llama-7b", 4096, 32, 32, 32, 11008, 4096, ("Q4_0", "Q4_K_M")),
}
F16_FTYPE = 1  # llama.cpp's LLAMA_FTYPE_MOSTLY_F16, stored as general.file_type


def tensors(s: Shape, n_vocab: int) -> list[tuple[TensorSpec, float]]:
    """The tensors in llama.cpp's converter's order, each with the standard
    deviation of its random weights.

    Scales: a matrix reading a normalized vector (rms 1) has std 1/sqrt(fan-in),
    so its outputs are about unit size; the two matrices that write into the
    residual stream (attn_output, ffn_down) are further scaled by 1/sqrt(2L)
    (GPT-2's scaled initialisation), so 2L additions keep the residual stream
    near rms 1 at any depth and the logits (unit-size) stay finite."""
    d, kv = s.n_embd, s.n_embd // s.n_head * s.n_head_kv
    resid = 1.0 / np.sqrt(2 * s.n_layer)
    F16, F32 = GGMLType.F16, GGMLType.F32
    out = [(TensorSpec("token_embd.weight", F16, (n_vocab, d)), 1.0)]  # rows are the residual stream's start
    for i in range(s.n_layer):
        p = f"blk.{i}."
        out += [
            (TensorSpec(p + "attn_norm.weight", F32, (d,)), 0.0),
            (TensorSpec(p + "attn_q.weight", F16, (d, d)), d ** -0.5),
            (TensorSpec(p + "attn_k.weight", F16, (kv, d)), d ** -0.5),
            (TensorSpec(p + "attn_v.weight", F16, (kv, d)), d ** -0.5),
            (TensorSpec(p + "attn_output.weight", F16, (d, d)), d ** -0.5 * resid),
            (TensorSpec(p + "ffn_norm.weight", F32, (d,)), 0.0),
            (TensorSpec(p + "ffn_gate.weight", F16, (s.n_ff, d)), d ** -0.5),
            (TensorSpec(p + "ffn_up.weight", F16, (s.n_ff, d)), d ** -0.5),
            (TensorSpec(p + "ffn_down.weight", F16, (d, s.n_ff)), s.n_ff ** -0.5 * resid),
        ]
    out += [(TensorSpec("output_norm.weight", F32, (d,)), 0.0),
            (TensorSpec("output.weight", F16, (n_vocab, d)), d ** -0.5)]
    return out


def random_tensor(spec: TensorSpec, std: float, seed: int) -> np.ndarray:
    """Norm weights are ones (std 0); matrices N(0, std).  Seeded by the tensor's
    name, so a layer's weights do not depend on how many layers the file has."""
    if std == 0.0:
        return np.ones(spec.shape, np.float32)
    rng = np.random.default_rng([seed, zlib.crc32(spec.name.encode())])
    x = rng.standard_normal(spec.shape, dtype=np.float32)
    x *= std
    return x.astype(np.float16)


def write_f16(path: Path, s: Shape, tokenizer: Path, seed: int = 0) -> None:
    vocab = spm_vocab(tokenizer)  # tokenizer.ggml.*: tokens, scores, types, special ids, add_bos
    n_vocab = len(vocab["tokenizer.ggml.tokens"].value)
    meta = {"general.name": string(f"synthetic {s.name} shape (random weights)"),
            "general.file_type": u32(F16_FTYPE)}
    meta.update(llama_hparams("llama", n_ctx=s.n_ctx, n_embd=s.n_embd, n_ff=s.n_ff, n_layer=s.n_layer,
                              n_head=s.n_head, n_head_kv=s.n_head_kv, norm_eps=1e-5, rope_base=10000.0,
                              rope_dim=s.n_embd // s.n_head, n_vocab=n_vocab))
    meta.update(vocab)
    plan = tensors(s, n_vocab)
    write_gguf(path, "llama", meta, [spec for spec, _ in plan], lambda i: random_tensor(*plan[i], seed))


def quantize_llama_cpp(src: Path, dst: Path, type_name: str, threads: int) -> None:
    """llama.cpp's quantizer (what `llama-quantize SRC DST TYPE` runs), writing
    beside the output and renaming when done, as llamalocal's writer does."""
    import llama_cpp as lc

    quiet = lc.llama_log_callback(lambda level, text, user_data: None)  # its per-tensor lines are noise here
    lc.llama_log_set(quiet, ctypes.c_void_p(0))
    params = lc.llama_model_quantize_default_params()
    params.ftype = getattr(lc, f"LLAMA_FTYPE_MOSTLY_{type_name}")
    params.nthread = threads
    tmp = dst.with_name(f".{dst.name}.partial")
    try:
        rc = lc.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize({src.name} -> {type_name}) returned {rc}")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def quantize_llamalocal(src: Path, dst: Path, type_name: str, threads: int) -> None:
    """`llamalocal quantize`, the command users run, in this interpreter."""
    cmd = [sys.executable, "-c", "import sys; from llamalocal.cli import main; sys.argv[0] = 'llamalocal'; main()",
           "quantize", "--type", type_name, "-q", "-t", str(threads), str(src), str(dst)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def timed(what: str, fn, *a) -> None:
    print(f"  {what} ...", end=" ", flush=True)
    t0 = time.perf_counter()
    fn(*a)
    print(f"{time.perf_counter() - t0:.0f} s", flush=True)


def make(directory: str | Path, shapes: list[str], *, layers: int | None = None, types: list[str] | None = None,
         threads: int = 2, tokenizer: Path = DEFAULT_TOKENIZER) -> list[Path]:
    """Writes what is missing; returns the quantized files (llama.cpp's, then ours, per type)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    made = []
    for key in shapes:
        s = SHAPES[key]
        if layers is not None:  # a shallow copy of the shape, for quick checks; named so it never passes for full depth
            s = Shape(f"{s.name}-L{layers}", s.n_embd, layers, s.n_head, s.n_head_kv, s.n_ff, s.n_ctx, s.types)
        f16 = directory / f"{s.name}.f16.gguf"
        print(f"{s.name}: {s.n_layer} layers, n_embd {s.n_embd}, ffn {s.n_ff}, {s.n_head}/{s.n_head_kv} heads",
              flush=True)
        if not f16.exists():
            timed(f"writing {f16.name}", write_f16, f16, s, tokenizer)
        for t in types or s.types:
            for who, quantize in (("llamacpp", quantize_llama_cpp), ("llamalocal", quantize_llamalocal)):
                out = directory / f"{s.name}.{t}.{who}.gguf"
                if not out.exists():
                    timed(f"{who:10} quantize -> {out.name}", quantize, f16, out, t, threads)
                made.append(out)
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", help="output folder (existing files are kept)")
    ap.add_argument("--shapes", default="1.1b", help=f"comma-separated: {', '.join(SHAPES)}")
    ap.add_argument("--layers", type=int, help="override the layer count (quick checks; not full depth)")
    ap.add_argument("--types", help="comma-separated quantized types (default: per shape, "
                                    + "; ".join(f"{k}: {','.join(v.types)}" for k, v in SHAPES.items()) + ")")
    ap.add_argument("--threads", type=int, default=2, help="quantizer threads")
    ap.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER, help="SentencePiece tokenizer.model")
    args = ap.parse_args()
    shapes = args.shapes.split(",")
    for key in shapes:
        if key not in SHAPES:
            ap.error(f"unknown shape {key!r} (known: {', '.join(SHAPES)})")
    files = make(args.dir, shapes, layers=args.layers, types=args.types.split(",") if args.types else None,
                 threads=args.threads, tokenizer=args.tokenizer)
    for f in files:
        print(f"{f.stat().st_size / 1e9:7.2f} GB  {f}")


if __name__ == "__main__":
    main()
