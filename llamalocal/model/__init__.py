"""The model: typed hyperparameters (`config`), the per-architecture settings
(`arch`), the transformer, its KV cache, and the loader that opens a file."""
