"""`llamalocal perplexity` against llama.cpp's llama-perplexity figures
(golden/perplexity.json: wiki.test.raw, 40 chunks of 512 tokens)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from models import GEMMA3, SMOLLM2, TESTS_DIR, golden_path, model_path

from llamalocal.perplexity import log_softmax_at, perplexity

GOLDEN_NAMES = {SMOLLM2: "SmolLM2-135M-Instruct.Q4_1.gguf", GEMMA3: "gemma-3-270m-q4_k_m.gguf"}


def golden_ppl(model_name: str) -> dict:
    results = json.loads(golden_path("perplexity.json").read_text())["results"]
    return next(r for r in results if r["model"].startswith(GOLDEN_NAMES[model_name]))


@pytest.mark.parametrize("model_name", [SMOLLM2, GEMMA3])
def test_perplexity_matches_llama_cpp(model_name):
    g = golden_ppl(model_name)
    r = subprocess.run([sys.executable, "-m", "llamalocal.cli", "perplexity", str(model_path(model_name)), "-f",
                        str(model_path("wiki.test.raw")), "--ctx", str(g["n_ctx"]), "--chunks", str(g["chunks"])],
                       capture_output=True, text=True, timeout=1800, cwd=TESTS_DIR)
    assert r.returncode == 0, r.stderr[-2000:]
    line = r.stdout.strip().splitlines()[-1]
    ppl, err = (float(v) for v in line.split("PPL = ")[1].split(" (")[0].split(" +/- "))
    print(model_name, line, "llama.cpp:", g["ppl"], g["stderr"])
    assert abs(ppl - g["ppl"]) <= 0.01 * g["ppl"], (ppl, g["ppl"])
    assert abs(err - g["stderr"]) <= 0.05 * g["stderr"], (err, g["stderr"])
    assert f"[{g['chunks']}/{g['chunks']}]" in r.stderr  # progress per chunk


def test_log_softmax_at():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], np.float32)
    got = log_softmax_at(logits, np.array([2, 1]))
    want = [3.0 - math.log(math.exp(1) + math.exp(2) + math.exp(3)), -math.log(3.0)]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_perplexity_needs_one_chunk():
    from llamalocal.model.loader import load_model

    lm = load_model(model_path("stories260K.gguf"))
    with pytest.raises(ValueError, match="fewer than one chunk"):
        perplexity(lm.model, list(range(10)), n_ctx=512)
