"""The `llamalocal` command: click wiring over the library."""
from __future__ import annotations

import platform
import sys
from typing import Optional

import click

from . import __version__
from .errors import Error
from .model.kv_cache import DEFAULT_CONTEXT_CAP
from .sampling import SamplerConfig

_SAMPLING = SamplerConfig()  # the defaults the options show


class _Commands(click.Group):
    """The one place where llamalocal's errors become a one-line message and
    exit status 1: each names the file or argument and what is wrong."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (Error, OSError) as e:  # OSError: the system's message names the file
            raise click.ClickException(str(e)) from None


def _backend():
    from . import backend

    return backend


def _load_with_tokenizer(model: str, tokenizer_path: Optional[str]):
    """The model for generate/perplexity; it must have a tokenizer."""
    from .model.loader import load_model

    lm = load_model(model, tokenizer_path, **click.get_current_context().meta.get("llamalocal.overrides", {}))
    for w in lm.warnings:
        click.echo(f"warning: {w}", err=True)
    if lm.tokenizer is None:
        raise click.ClickException(f"{model}: the file has no tokenizer; pass one with -z")
    return lm


def sampling_options(f):
    """The sampler's flags, shared by generate and chat (defaults: SamplerConfig's, llama.cpp's)."""
    for option in reversed([
        click.option("--temp", "temperature", default=_SAMPLING.temperature, show_default=True, help="Temperature; 0 = greedy."),
        click.option("--top-k", default=_SAMPLING.top_k, show_default=True),
        click.option("--top-p", default=_SAMPLING.top_p, show_default=True),
        click.option("--min-p", default=_SAMPLING.min_p, show_default=True),
        click.option("--repeat-penalty", default=_SAMPLING.repeat_penalty, show_default=True),
        click.option("--repeat-last-n", default=_SAMPLING.repeat_last_n, show_default=True),
        click.option("--frequency-penalty", default=_SAMPLING.frequency_penalty, show_default=True),
        click.option("--presence-penalty", default=_SAMPLING.presence_penalty, show_default=True),
        click.option("-s", "--seed", type=int, default=None, help="RNG seed (default: random)."),
    ]):
        f = option(f)
    return f


def constant_options(f):
    """--rms-norm-eps and --rope-freq-base, as llama.cpp had them: they override what the file says (or, for
    pre-GGUF files, which store neither, their era's defaults).  Stored in the context, read by the loader."""
    def keep(ctx: click.Context, param: click.Parameter, value: Optional[float]) -> None:
        if value is not None and not value > 0:
            raise click.BadParameter("must be positive")
        if value is not None:
            ctx.meta.setdefault("llamalocal.overrides", {})[param.name] = value

    for name, what in (("--rms-norm-eps", "RMSNorm epsilon"), ("--rope-freq-base", "RoPE base frequency")):
        f = click.option(name, type=float, default=None, expose_value=False, callback=keep,
                         help=f"Override the model's {what}.")(f)
    return f


def lora_options(f):
    """--lora ADAPTER (repeatable) and --lora-scale S (one for all, or one per --lora, in order): LoRA
    adapters applied unmerged (model/lora.py), or merged by quantize.  Stored in the context as the
    loader's `lora` option."""
    def keep(ctx: click.Context, param: click.Parameter, value: tuple) -> None:
        ctx.meta[f"llamalocal.{param.name}"] = value
        paths, scales = ctx.meta.get("llamalocal.lora"), ctx.meta.get("llamalocal.lora_scale")
        if paths is None or scales is None:  # the other option's callback has not run yet
            return
        if scales and not paths:
            raise click.UsageError("--lora-scale needs --lora")
        if len(scales) not in (0, 1, len(paths)):
            raise click.UsageError(f"{len(scales)} --lora-scale values for {len(paths)} --lora adapters: give one, or one per adapter")
        if paths:
            per = list(scales) * len(paths) if len(scales) == 1 else list(scales) or [1.0] * len(paths)
            ctx.meta.setdefault("llamalocal.overrides", {})["lora"] = list(zip(paths, per))

    f = click.option("--lora-scale", type=float, multiple=True, expose_value=False, callback=keep,
                     help="Scale of the LoRA adapters (default 1): one for all, or one per --lora.")(f)
    return click.option("--lora", type=click.Path(exists=True), multiple=True, expose_value=False, callback=keep,
                        help="LoRA adapter (llama.cpp GGUF adapter or PEFT directory), repeatable: applied unmerged "
                             "(quantize: merged into the output's weights).")(f)


def runtime_options(f):
    f = click.option("-c", "--ctx", "n_ctx", type=int, default=0,
                     help=f"Context size (default: the model's, at most {DEFAULT_CONTEXT_CAP}).")(f)
    return click.option("-t", "--threads", type=int, default=0, help="Threads (default: physical cores).")(f)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="llamalocal")
def main() -> None:
    """Local, quantized LLM inference for CPUs and laptops."""


@main.command()
def sysinfo() -> None:
    """Show CPU features, the active kernel path, threads and backend."""
    info = _backend().info()
    click.echo(f"llamalocal {__version__} on {platform.machine()} ({platform.system()}), Python {platform.python_version()}")
    click.echo(f"backend:      {info['backend']}")
    click.echo(f"kernel path:  {info['active_isa']}")
    if info["backend"] == "native":
        click.echo(f"ISA paths:    {', '.join(info['available_isas'])} (best first; LLAMALOCAL_ISA forces one)")
        feats = info["cpu_features"]
        click.echo("CPU features: " + (" ".join(k for k, v in feats.items() if v) or "none of the SIMD extensions used"))
        click.echo(f"threads:      {info['threads']} (default {info['default_threads']}: physical cores)")
    else:
        click.echo(f"threads:      {info['threads']}")
        click.echo(f"why numba:    {info['fallback_reason']}")


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
def info(model: str) -> None:
    """Describe a GGUF model: architecture, hyperparameters, tensor types, tokenizer, memory."""
    from .reports import describe

    click.echo(describe(model))


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-p", "--prompt", default="", help="Prompt text (default: empty, generation starts from BOS).")
@click.option("-f", "--file", "prompt_file", type=click.Path(exists=True, dir_okay=False), help="Read the prompt from a file.")
@click.option("-n", "--n-predict", default=128, show_default=True, help="Tokens to generate.")
@sampling_options
@runtime_options
@constant_options
@click.option("-z", "--tokenizer", "tokenizer_path", type=click.Path(exists=True, dir_okay=False),
              help="Tokenizer for llama2.c checkpoints (tokenizer.bin or a SentencePiece .model).")
@click.option("--cache-type", type=click.Choice(["auto", "f16", "f32"]), default="auto", show_default=True,
              help="KV cache precision; auto = f16 for GGUF (as llama.cpp), f32 for llama2.c checkpoints (as run.c).")
@click.option("--echo", is_flag=True, help="Print the prompt before the generated text.")
@click.option("--ignore-eos", is_flag=True, help="Keep generating past end-of-sequence tokens.")
@lora_options
def generate(model: str, prompt: str, prompt_file: Optional[str], n_predict: int, temperature: float, top_k: int, top_p: float,
             min_p: float, repeat_penalty: float, repeat_last_n: int, frequency_penalty: float, presence_penalty: float,
             seed: Optional[int], threads: int, n_ctx: int, tokenizer_path: Optional[str], cache_type: str, echo: bool,
             ignore_eos: bool) -> None:
    """Generate text after a prompt.  Only the generated text goes to stdout
    (the prompt too with --echo); timings and notices go to stderr."""
    from .generation import GenerationStats, generate_tokens
    from .sampling import Llama2cSampler, make_sampler

    backend = _backend()
    if n_predict < 0 or n_ctx < 0 or threads < 0:
        raise click.UsageError("-n, --ctx and --threads must not be negative")
    if prompt_file:
        with open(prompt_file, encoding="utf-8") as fh:
            prompt = fh.read()
    backend.set_num_threads(threads)
    lm = _load_with_tokenizer(model, tokenizer_path)
    tok = lm.tokenizer
    if lm.format == "llama2c":
        # llama2.c's run: its own sampler (xorshift RNG, top-p), so seeds reproduce run.c's output
        sample = Llama2cSampler(temperature, top_p, seed)
    else:
        sample = make_sampler(SamplerConfig(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                            repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                                            presence_penalty=presence_penalty, repeat_last_n=repeat_last_n, seed=seed))

    ids = tok.encode(prompt)
    if not ids:
        if tok.bos_id is None:
            raise click.ClickException("the prompt is empty and the model has no BOS token to start from")
        ids = [tok.bos_id]
    if cache_type == "auto":
        cache_type = "f32" if lm.format == "llama2c" else "f16"
    cache = lm.model.new_cache(n_ctx or None, cache_type)
    if len(ids) >= cache.n_ctx:
        raise click.ClickException(f"the prompt is {len(ids)} tokens, the context only {cache.n_ctx}")
    n_predict = min(n_predict, cache.n_ctx - len(ids))
    stop = frozenset() if ignore_eos else frozenset(tok.eot_ids)

    out = sys.stdout
    if echo:
        out.write(prompt)
        out.flush()
    stats = GenerationStats()
    decoder = tok.stream_decoder()
    for t in ids:  # prime the detokenizer so leading-space rules see the prompt
        decoder.feed(t)
    try:
        for token in generate_tokens(lm.model, ids, sample, n_predict, cache, stop, stats):
            text = decoder.feed(token)
            if text:
                out.write(text)
                out.flush()
        out.write(decoder.flush())
        out.flush()
    except KeyboardInterrupt:
        out.flush()
        click.echo("\ninterrupted", err=True)
    click.echo(
        f"\nprompt: {stats.n_prompt} tokens, {stats.prompt_tps:.1f} t/s | generation: {stats.n_generated} tokens, "
        f"{stats.gen_tps:.1f} t/s | stop: {stats.stop_reason or 'interrupted'} | {backend.active_isa()}, {backend.num_threads()} threads",
        err=True,
    )


@main.command()
@click.argument("model", required=False)
@click.option("--system", default=None, help="System prompt.")
@click.option("-n", "--n-predict", default=-1, show_default=True, help="Most tokens per answer; -1: until the end of the turn.")
@sampling_options
@runtime_options
@constant_options
@click.option("--template", default=None,
              help="Chat template: the file's named template, or a built-in (chatml, llama-2, llama-3, mistral, gemma, "
                   "alpaca, vicuna); default: the file's own, else one detected from the vocabulary.")
@click.option("--context-policy", type=click.Choice(["drop-oldest", "error"]), default="drop-oldest", show_default=True,
              help="When the conversation outgrows the context: drop the oldest turns (announced), or stop with an error.")
@click.option("--stats", "show_stats", is_flag=True, help="A footer after each answer: tokens evaluated and reused, t/s.")
@click.option("-f", "--file", "input_file", type=click.Path(exists=True, dir_okay=False),
              help="Read one message from a file (non-interactive).")
@click.option("-z", "--tokenizer", "tokenizer_path", type=click.Path(exists=True, dir_okay=False),
              help="Tokenizer for llama2.c checkpoints.")
@lora_options
def chat(model: Optional[str], system: Optional[str], n_predict: int, temperature: float, top_k: int, top_p: float,
         min_p: float, repeat_penalty: float, repeat_last_n: int, frequency_penalty: float, presence_penalty: float,
         seed: Optional[int], n_ctx: int, threads: int, template: Optional[str], context_policy: str, show_stats: bool,
         input_file: Optional[str], tokenizer_path: Optional[str]) -> None:
    """Chat with a model.  MODEL is a file, a known name (`llamalocal list --known`) or a URL;
    without it, the default chat model (downloaded once).  When stdin is not a terminal,
    each line is one message and only the answers are written to stdout."""
    from .api import Model
    from .chat.repl import ChatLoop
    from .model_store import resolve

    backend = _backend()
    if n_ctx < 0 or threads < 0:
        raise click.UsageError("--ctx and --threads must not be negative")
    backend.set_num_threads(threads)
    lm = _load_with_tokenizer(str(resolve(model)), tokenizer_path)
    m = Model(lm, n_ctx=n_ctx or None, template=template)

    def notice(message: str) -> None:
        click.echo(f"notice: {message}", err=True)

    session = m.chat(system, context_policy=context_policy, on_notice=notice, temperature=temperature, top_k=top_k,
                     top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
                     frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, seed=seed)
    loop = ChatLoop(session, load_session=lambda path: m.load_chat(path, on_notice=notice), max_tokens=n_predict,
                    show_stats=show_stats)
    if input_file:
        with open(input_file, encoding="utf-8") as fh:
            loop.run_piped(fh, whole_input=True)
    elif not sys.stdin.isatty():
        loop.run_piped(sys.stdin)
    else:
        loop.run_interactive()


@main.command()
@click.argument("model", required=False)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", default=8080, show_default=True)
@click.option("--parallel", "n_slots", default=1, show_default=True, help="Requests served at once, each with its own KV cache.")
@click.option("-c", "--ctx", "n_ctx", type=int, default=0, help="Context per slot (default: the model's, at most "
              f"{DEFAULT_CONTEXT_CAP}).")
@click.option("-t", "--threads", type=int, default=0, help="Threads (default: physical cores).")
@click.option("--api-key", default=None, help="Require `Authorization: Bearer KEY` on every request.")
@click.option("--template", default=None, help="Chat template (as for chat).")
@click.option("--name", "served_name", default=None, help="The model name the API reports (default: the file's stem).")
@lora_options
def serve(model: Optional[str], host: str, port: int, n_slots: int, n_ctx: int, threads: int, api_key: Optional[str],
          template: Optional[str], served_name: Optional[str]) -> None:
    """Serve a model over OpenAI's (/v1/...) and ollama's (/api/...) HTTP APIs."""
    import ipaddress

    import uvicorn

    from .api import Model
    from .model_store import resolve
    from .server.app import create_app

    backend = _backend()
    if n_ctx < 0 or threads < 0 or n_slots < 1:
        raise click.UsageError("--ctx and --threads must not be negative, --parallel at least 1")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        click.echo(f"warning: listening on {host}, not only this machine" + ("" if api_key else " and without --api-key"),
                   err=True)
    backend.set_num_threads(threads)
    path = resolve(model)
    m = Model(_load_with_tokenizer(str(path), None), n_ctx=n_ctx or None, template=template)
    app = create_app(m, name=served_name or path.stem, n_slots=n_slots, n_ctx=n_ctx or None, api_key=api_key)
    click.echo(f"serving {path.name} on http://{host}:{port} ({n_slots} slot{'s' * (n_slots > 1)}, "
               f"{app.state.engine.n_ctx} tokens of context each)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


@main.command()
@click.argument("name")
def pull(name: str) -> None:
    """Download a model by name (see `list --known`) or HTTPS URL into the model cache."""
    from .model_store import pull as pull_model

    click.echo(str(pull_model(name)))


@main.command(name="list")
@click.option("--known", is_flag=True, help="List the models that can be pulled by name instead.")
def list_(known: bool) -> None:
    """The models in the cache (name, size, type, architecture)."""
    from .model_store import DEFAULT_MODEL, KNOWN_MODELS, list_models, models_dir

    if known:
        for k in KNOWN_MODELS.values():
            mark = " (default)" if k.name == DEFAULT_MODEL else ""
            click.echo(f"{k.name:<26} {'chat' if k.chat else 'base':<5} {k.description}{mark}")
        return
    entries = list_models()
    if not entries:
        click.echo(f"no models in {models_dir()} (llamalocal pull NAME)", err=True)
    for e in entries:
        click.echo(f"{e.name:<40} {e.size / 2**20:>9.1f} MiB  {e.file_type or '?':<8} {e.architecture or '?'}")


@main.command()
@click.argument("name")
def rm(name: str) -> None:
    """Remove a model from the cache."""
    from .model_store import remove

    click.echo(f"removed {remove(name)}")


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-f", "--file", "text_file", required=True, type=click.Path(exists=True, dir_okay=False), help="Text to score.")
@click.option("-c", "--ctx", "n_ctx", default=512, show_default=True, help="Tokens per chunk.")
@click.option("--chunks", "n_chunks", type=int, default=None, help="Chunks to score (default: all).")
@click.option("-t", "--threads", type=int, default=0, help="Threads (default: physical cores).")
@click.option("-z", "--tokenizer", "tokenizer_path", type=click.Path(exists=True, dir_okay=False), help="Tokenizer for llama2.c checkpoints.")
@constant_options
@lora_options
def perplexity(model: str, text_file: str, n_ctx: int, n_chunks: Optional[int], threads: int, tokenizer_path: Optional[str]) -> None:
    """Perplexity of a model on a text, by llama.cpp's method (chunks of --ctx
    tokens, loss over the second half of each)."""
    from .perplexity import perplexity as run

    backend = _backend()
    backend.set_num_threads(threads)
    if n_ctx < 4 or (n_chunks is not None and n_chunks < 1):
        raise click.UsageError("--ctx must be at least 4 and --chunks at least 1")
    lm = _load_with_tokenizer(model, tokenizer_path)
    with open(text_file, encoding="utf-8") as fh:
        text = fh.read()
    tokens = lm.tokenizer.encode(text)
    bos = lm.tokenizer.bos_id if lm.tokenizer.add_bos else None
    click.echo(f"{len(tokens)} tokens, chunks of {n_ctx}", err=True)
    r = run(lm.model, tokens, n_ctx, n_chunks, bos, progress=lambda i, n, p: click.echo(f"[{i}/{n}] {p:.4f}", err=True))
    click.echo(f"PPL = {r.ppl:.4f} +/- {r.stderr:.5f} ({r.n_chunks} chunks of {n_ctx}, {r.n_scored} predictions)")


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True))
@click.argument("output_path", metavar="OUTPUT", type=click.Path(dir_okay=False))
@click.option("--type", "type_name", required=True,
              help="F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K_S, Q4_K_M (= Q4_K), Q5_K_S, Q5_K_M (= Q5_K), Q6_K.")
@click.option("--method", type=click.Choice(["rtn", "gptq"]), default="rtn", show_default=True,
              help="Round to nearest, or GPTQ (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0; needs --calib).")
@click.option("--calib", "calib_file", type=click.Path(exists=True, dir_okay=False), help="Calibration text for GPTQ.")
@click.option("--calib-tokens", default=16384, show_default=True, help="Calibration tokens GPTQ uses.")
@click.option("--calib-ctx", default=512, show_default=True, help="Tokens per calibration sequence.")
@click.option("--damp", default=0.01, show_default=True, help="GPTQ damping, as a fraction of the mean Hessian diagonal.")
@click.option("--act-order/--no-act-order", default=True, show_default=True,
              help="GPTQ: quantize columns in order of decreasing activation energy (with blocks' scales fixed first).")
@click.option("--tokenizer", "tokenizer_path", type=click.Path(exists=True),
              help="Tokenizer for inputs that carry none (llama2.c: tokenizer.bin or tokenizer.model).")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Save the per-tensor report as JSON.")
@click.option("-t", "--threads", type=int, default=0, help="Threads (default: all cores).")
@click.option("-q", "--quiet", is_flag=True, help="No per-tensor table.")
@lora_options
def quantize(input_path: str, output_path: str, type_name: str, method: str, calib_file: Optional[str], calib_tokens: int,
             calib_ctx: int, damp: float, act_order: bool, tokenizer_path: Optional[str], force: bool,
             report_path: Optional[str], threads: int, quiet: bool) -> None:
    """Convert a checkpoint (Hugging Face directory, Meta .pth directory, llama2.c
    .bin, or GGUF) to a GGUF file of the chosen type.  The output appears only
    when complete."""
    import signal

    from tqdm import tqdm

    from .quantize import format_report, quantize_model

    if method == "gptq" and not calib_file:
        raise click.UsageError("--method gptq needs calibration text: --calib FILE")
    if method == "rtn" and calib_file:
        raise click.UsageError("--calib is only used by --method gptq")
    # A terminated run unwinds like Ctrl-C, so the partial output is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bar = tqdm(total=0, unit="tensor", desc="quantize", file=sys.stderr, disable=None, leave=False)

    def progress(name: str, i: int, n: int) -> None:
        bar.total = n
        bar.n = i
        bar.set_postfix_str(name, refresh=True)

    gptq_options = {"calib_file": calib_file, "calib_tokens": calib_tokens, "calib_ctx": calib_ctx, "damp": damp,
                    "act_order": act_order, "log": lambda m: bar.write(m, file=sys.stderr)}
    try:
        res = quantize_model(input_path, output_path, type_name, method=method, tokenizer=tokenizer_path, force=force,
                             threads=threads, gptq_options=gptq_options if method == "gptq" else None, progress=progress,
                             lora=click.get_current_context().meta.get("llamalocal.overrides", {}).get("lora"))
    finally:
        bar.close()
    for w in res.warnings:
        click.echo(f"warning: {w}", err=True)
    if not quiet:
        click.echo(format_report(res))
    if report_path:
        with open(report_path, "w", encoding="utf-8") as fh:
            fh.write(res.to_json())
    click.echo(f"wrote {res.output}: {res.file_type} ({res.method}), {res.n_bytes / 2**20:.2f} MiB, "
               f"{res.bits_per_weight:.2f} bits per weight, {res.seconds:.1f} s")


if __name__ == "__main__":
    main()
