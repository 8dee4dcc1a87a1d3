"""Quantization quality: perplexity of each type and method against the F16 file.

For each model, the starting checkpoint is an F32 GGUF (a quantized source is
first dequantized to F32).  From it: F16, Q8_0, Q4_0 and Q4_1 by round to
nearest and by GPTQ, and Q4_K_M.  Printed per file: size, bits per weight,
quantization time, perplexity and its increase over F16, and for GPTQ its
increase as a fraction of RTN's at the same type.  With llama-cpp-python
installed, llama.cpp scores every file too (same tokens, same method), which
checks that our files load there and mean the same thing.

Text: WikiText-2 test, evaluation on its first half, GPTQ calibration on the
second half.  stories260K instead evaluates on TinyStories text and
calibrates on stories sampled from the F32 model itself (the sample file is
too small to split).

    python bench/bench_quantize.py [--models smollm2,gemma3,stories] [--chunks 20] [--calib-tokens 16384]
                                   [--variants Q4_0-rtn,Q4_0-gptq,...] [--no-act-order] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from models import GEMMA3, SMOLLM2, model_path  # noqa: E402

from llamalocal import backend  # noqa: E402
from llamalocal.generation import generate_tokens  # noqa: E402
from llamalocal.model.loader import load_model  # noqa: E402
from llamalocal.perplexity import log_softmax_at, perplexity  # noqa: E402
from llamalocal.quantize import quantize_model  # noqa: E402
from llamalocal.sampling import SamplerConfig, make_sampler  # noqa: E402

VARIANTS = [("F16", "rtn"), ("Q8_0", "rtn"), ("Q4_0", "rtn"), ("Q4_0", "gptq"), ("Q4_1", "rtn"), ("Q4_1", "gptq"),
            ("Q4_K_M", "rtn")]


def llama_cpp_perplexity(path: Path, tokens: list[int], n_ctx: int, n_chunks: int, bos: int | None, threads: int):
    """llama-perplexity's method through llama-cpp-python, on our token ids."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, n_threads=threads, verbose=False)
    first, nll, count = n_ctx // 2, 0.0, 0
    for c in range(n_chunks):
        chunk = list(tokens[c * n_ctx:(c + 1) * n_ctx])
        if bos is not None:
            chunk[0] = bos
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[first:n_ctx - 1], dtype=np.float32)
        lp = log_softmax_at(logits, np.asarray(chunk[first + 1:]))
        nll -= float(lp.sum())
        count += len(lp)
    del llm
    return math.exp(nll / count)


def sampled_stories(f32_path: Path, n_tokens: int, out: Path) -> Path:
    """Calibration text sampled from the model itself (seeded)."""
    lm = load_model(f32_path)
    tok, pieces, made = lm.tokenizer, [], 0
    seed = 0
    while made < n_tokens:
        cache = lm.model.new_cache(512)
        sample = make_sampler(SamplerConfig(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed))
        ids = list(generate_tokens(lm.model, [tok.bos_id], sample, 500, cache, frozenset(tok.eot_ids)))
        pieces.append(tok.decode(ids))
        made += len(ids)
        seed += 1
    out.write_text("\n".join(pieces), encoding="utf-8")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="stories,smollm2,gemma3")
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--calib-tokens", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-act-order", dest="act_order", action="store_false", help="GPTQ in plain column order")
    ap.add_argument("--workdir", default="/tmp/llamalocal-bench-quantize")
    ap.add_argument("--no-llama-cpp", action="store_true")
    ap.add_argument("--variants", default=",".join(f"{t}-{m}" for t, m in VARIANTS),
                    help="comma-separated TYPE-METHOD list (F16-rtn is always measured first: the baseline)")
    args = ap.parse_args()
    backend.set_num_threads(args.threads)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)

    wiki = model_path("wiki.test.raw").read_text(encoding="utf-8")
    lines = wiki.splitlines(keepends=True)
    wiki_eval, wiki_calib = "".join(lines[: len(lines) // 2]), "".join(lines[len(lines) // 2:])
    (work / "wiki-calib.txt").write_text(wiki_calib, encoding="utf-8")

    for key in args.models.split(","):
        if key == "stories":
            source, tokenizer, n_ctx = model_path("stories260K.bin"), model_path("tok512.bin"), 128
            eval_text = model_path("tinystories_sample.txt").read_text(encoding="utf-8")
        else:
            source, tokenizer, n_ctx = model_path({"smollm2": SMOLLM2, "gemma3": GEMMA3}[key]), None, 512
            eval_text = wiki_eval
        f32 = work / f"{key}-F32.gguf"
        if not f32.exists():
            quantize_model(source, f32, "F32", tokenizer=tokenizer, force=True)
        calib = sampled_stories(f32, args.calib_tokens, work / "stories-calib.txt") if key == "stories" \
            else work / "wiki-calib.txt"
        lm = load_model(f32)
        tokens = lm.tokenizer.encode(eval_text)
        bos = lm.tokenizer.bos_id if lm.tokenizer.add_bos else None
        n_chunks = min(args.chunks, len(tokens) // n_ctx)
        del lm
        print(f"\n## {key}: {n_chunks} chunks of {n_ctx} tokens; GPTQ calibration {args.calib_tokens} tokens "
              f"from {calib.name}{', act-order' if args.act_order else ', no act-order'}, {args.threads} threads")
        print(f"| file | MiB | bpw | quantize s | PPL | Δ vs F16 | GPTQ Δ / RTN Δ | llama.cpp PPL | ratio |")
        print("|---|---|---|---|---|---|---|---|---|")
        ppl_of: dict[tuple[str, str], float] = {}
        wanted = [tuple(v.rsplit("-", 1)) for v in args.variants.split(",")]
        for type_name, method in [("F16", "rtn")] + [v for v in wanted if v != ("F16", "rtn")]:
            out = work / f"{key}-{type_name}-{method}.gguf"
            opts = {"calib_file": calib, "calib_tokens": args.calib_tokens, "act_order": args.act_order} \
                if method == "gptq" else None
            t0 = time.perf_counter()
            res = quantize_model(f32, out, type_name, method=method, force=True, gptq_options=opts)
            seconds = time.perf_counter() - t0
            lm = load_model(out)
            p = perplexity(lm.model, tokens, n_ctx, n_chunks, bos).ppl
            del lm
            ppl_of[(type_name, method)] = p
            base = ppl_of.get(("F16", "rtn"), p)
            frac = ""
            if method == "gptq":
                rtn = ppl_of.get((type_name, "rtn"))
                frac = f"{(p - base) / (rtn - base):.2f}" if rtn is not None and rtn != base else "n/a"
            ref = None if args.no_llama_cpp else llama_cpp_perplexity(out, tokens, n_ctx, n_chunks, bos, args.threads)
            ref_s = "not installed" if ref is None else f"{ref:.4f}"
            ratio = "" if ref is None else f"{p / ref:.4f}"
            print(f"| {type_name} {method} | {res.n_bytes / 2**20:.2f} | {res.bits_per_weight:.2f} | {seconds:.1f} | "
                  f"{p:.4f} | {p - base:+.4f} | {frac} | {ref_s} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
