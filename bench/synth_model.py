"""A LLaMA-7B-shaped GGUF with random weights, for timing the decode step at 7B shapes.

No 7B model ships with the repository, but a decode step's speed depends on
the tensor shapes and types, not on what the weights mean.  This writes the
layers of LLaMA-7B (4096 wide, 32 heads, feed-forward 11008) with random
quantized blocks at sane fp16 scales, a byte-level SentencePiece vocabulary
(any text encodes), and a small classifier, so that bench_generate.py can run
llamalocal and llama.cpp on it:

    python bench/synth_model.py /tmp/7b-shaped-q4_0.gguf --type Q4_0 --layers 4
    python bench/bench_generate.py /tmp/7b-shaped-q4_0.gguf --pp 16 --tg 32 --rounds 7

Four layers read 457 MB per token, far more than the last-level cache.
"""
from __future__ import annotations

import argparse

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, TokenType

from llamalocal.formats import FORMATS, SCALE_FIELDS, GGMLType

EMBED, FF, HEADS = 4096, 11008, 32
SCALE = 0.004  # fp16 block scale: random 4-bit weights times this keep the activations finite


def byte_vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    return tokens, [0.0] * len(tokens), [int(t) for t in types]


def random_blocks(qtype: GGMLQuantizationType, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """rows x cols weights as random blocks whose fp16 scales (d, and dmin or m
    where the format has one) are SCALE: random bytes there could be NaN."""
    fmt = FORMATS[GGMLType(int(qtype))]
    b = rng.integers(0, 256, size=(rows * cols // fmt.block_size, fmt.type_size), dtype=np.uint8)
    for off in SCALE_FIELDS[fmt.type]:
        b[:, off:off + 2] = np.frombuffer(np.float16(SCALE).tobytes(), np.uint8)
    if fmt.type == GGMLType.Q4_1:  # w = d * q + m, q in 0..15: m = -8d centres the weights as Q4_0's offset does
        b[:, 2:4] = np.frombuffer(np.float16(-8 * SCALE).tobytes(), np.uint8)
    return b.reshape(rows, -1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--type", default="Q4_0", choices=["Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K"])
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    qtype = GGMLQuantizationType[args.type]
    rng = np.random.default_rng(0)

    w = GGUFWriter(args.out, "llama")
    tokens, scores, types = byte_vocab()
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_context_length(2048)
    w.add_embedding_length(EMBED)
    w.add_feed_forward_length(FF)
    w.add_block_count(args.layers)
    w.add_head_count(HEADS)
    w.add_head_count_kv(HEADS)
    w.add_rope_dimension_count(EMBED // HEADS)
    w.add_layer_norm_rms_eps(1e-5)

    def quantized(name: str, rows: int, cols: int) -> None:
        data = random_blocks(qtype, rows, cols, rng)
        w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)

    def norm(name: str) -> None:
        w.add_tensor(name, np.ones(EMBED, np.float32))

    vocab = len(tokens)
    quantized("token_embd.weight", vocab, EMBED)
    for layer in range(args.layers):
        p = f"blk.{layer}."
        norm(p + "attn_norm.weight")
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            quantized(p + name + ".weight", EMBED, EMBED)
        norm(p + "ffn_norm.weight")
        quantized(p + "ffn_gate.weight", FF, EMBED)
        quantized(p + "ffn_up.weight", FF, EMBED)
        quantized(p + "ffn_down.weight", EMBED, FF)
    norm("output_norm.weight")
    quantized("output.weight", vocab, EMBED)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
