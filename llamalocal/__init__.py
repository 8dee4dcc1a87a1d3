"""llamalocal: local, quantized LLM inference for CPUs and laptops.

    import llamalocal
    model = llamalocal.load("model.gguf")             # or load(): the default chat model
    for piece in model.generate("Once upon a time", max_tokens=64, temperature=0.7, seed=1): ...
    chat = model.chat(system="You are terse.")
    for piece in chat.send("Hello!"): ...
"""
from .errors import (
    BackendError,
    ChatTemplateError,
    CheckpointError,
    ContextFullError,
    Error,
    InvalidArgumentError,
    MissingFileError,
    ModelFormatError,
    ModelStoreError,
    OutputExistsError,
    TokenizerError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

# Resolved on first use, so that importing the package (the CLI does) never
# loads the kernels or fails on a bad LLAMALOCAL_ISA before it can report it.
_LAZY = {
    "load": ("api", "load"),
    "Model": ("api", "Model"),
    "Session": ("session", "Session"),
    "Llama": ("llama_cpp_compat", "Llama"),
    "load_model": ("model.loader", "load_model"),
    "generate_tokens": ("generation", "generate_tokens"),
    "SamplerConfig": ("sampling", "SamplerConfig"),
    "make_sampler": ("sampling", "make_sampler"),
    "KVCache": ("model.kv_cache", "KVCache"),
}
__all__ = ["__version__", "Error", "BackendError", "ChatTemplateError", "CheckpointError", "ContextFullError",
           "InvalidArgumentError", "MissingFileError", "ModelFormatError", "ModelStoreError", "OutputExistsError",
           "TokenizerError", "UnsupportedModelError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'llamalocal' has no attribute {name!r}")
