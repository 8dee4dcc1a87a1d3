"""llamalocal: local, quantized LLM inference for CPUs and laptops."""
__version__ = "0.1.0"
