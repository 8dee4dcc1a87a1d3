"""llamalocal: local, quantized LLM inference for CPUs and laptops.

    import llamalocal
    lm = llamalocal.load_model("model.gguf")
    cache = lm.model.new_cache()
    sample = llamalocal.make_sampler(llamalocal.SamplerConfig(temperature=0.7, seed=1))
    for token in llamalocal.generate_tokens(lm.model, lm.tokenizer.encode("Hello"), sample, 32, cache):
        ...
"""
__version__ = "0.1.0"

# Resolved on first use, so that importing the package (the CLI does) never
# loads the kernels or fails on a bad LLAMALOCAL_ISA before it can report it.
_LAZY = {
    "load_model": ("loader", "load_model"),
    "generate_tokens": ("generation", "generate_tokens"),
    "SamplerConfig": ("sampling", "SamplerConfig"),
    "make_sampler": ("sampling", "make_sampler"),
    "KVCache": ("kv_cache", "KVCache"),
    "ContextFullError": ("kv_cache", "ContextFullError"),
    "ModelFormatError": ("gguf_io", "ModelFormatError"),
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'llamalocal' has no attribute {name!r}")
