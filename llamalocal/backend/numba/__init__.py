"""The portable backend: ggml's float arithmetic (`ggml_math`), the quantized
matmul (`matmul`) and the transformer layer (`layer`) in numba, operation for
operation as the native scalar path computes them (bit-identical logits)."""
