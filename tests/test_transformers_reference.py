"""The converter and the forward pass against Hugging Face transformers' own
implementation of each architecture `quantize` accepts.

transformers builds a small random model (LlamaForCausalLM with grouped-query
attention and llama3 rope scaling, MistralForCausalLM, Qwen2ForCausalLM with
its q/k/v biases) and saves it with `save_pretrained`.  `llamalocal quantize
--type F32` converts the directory; llamalocal's logits at every position must
equal transformers' to float32 rounding.  This checks the Q/K permutation, the
biases, rope and its scaling, GQA, tied and separate output, and the `qwen2`
runtime, against code we did not write.

Needs torch and transformers (`pip install torch transformers`; CI installs
them when a CPU torch wheel lies on local disk), and is skipped without them.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_fixture import QWEN2_PRE, bpe_tokenizer_files, tiny_bpe_meta  # noqa: E402

from llamalocal.model.loader import load_model  # noqa: E402

COMMON = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=512, rms_norm_eps=1e-5, vocab_size=300)
CASES = {
    "llama-gqa-llama3-rope": ("LlamaConfig", dict(rope_theta=500000.0, tie_word_embeddings=False, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64})),
    "mistral": ("MistralConfig", dict(rope_theta=10000.0, tie_word_embeddings=False, sliding_window=None)),
    "qwen2-biases-tied": ("Qwen2Config", dict(rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False)),
}


def build_hf_model(directory, config_name: str, extra: dict):
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**COMMON, **extra)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # the default init (std 0.02, unit norms) leaves every logit near 0
        for p in model.parameters():
            p.normal_(0.0, 0.25)
    model.save_pretrained(directory, safe_serialization=True)
    bpe_tokenizer_files(directory, tiny_bpe_meta(), QWEN2_PRE)
    return model


@pytest.mark.parametrize("case", list(CASES))
def test_logits_equal_transformers(tmp_path, case):
    config_name, extra = CASES[case]
    hf_dir, gguf = tmp_path / "hf", tmp_path / "model.gguf"
    model = build_hf_model(hf_dir, config_name, extra)
    r = subprocess.run([sys.executable, "-m", "llamalocal.cli", "quantize", str(hf_dir), str(gguf), "--type", "F32", "-q"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr

    ids = np.random.default_rng(1).integers(0, COMMON["vocab_size"], 100).tolist()
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    lm = load_model(gguf)
    got = lm.model.forward(ids, lm.model.new_cache(128, dtype="f32"), all_logits=True)
    scale = np.abs(want).max()
    assert scale > 1.0  # logits far from 0: a wrong permutation or bias would show
    assert np.abs(got - want).max() <= 1e-4 * scale, (np.abs(got - want).max(), scale)
    assert (got.argmax(-1) == want.argmax(-1)).all()
