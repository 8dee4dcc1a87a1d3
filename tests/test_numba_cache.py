"""The numba backend's compiled code is cached on disk: a second process with
the same NUMBA_CACHE_DIR loads every kernel it needs instead of compiling it
again (numba reports each compilation as a "numba:compile" event; loading
from the cache reports none)."""
from __future__ import annotations

import os
import subprocess
import sys

# Decode-shaped work on the kernels a model's forward pass uses: the matmul
# of a legacy format (plain and repacked Q4_0), Q6_K, the norm, RoPE, GLU
# and attention over an F16 cache.  Prints how many functions it compiled.
SCRIPT = r"""
import numpy as np
from numba.core import event

compiled = event.RecordingListener()
event.register("numba:compile", compiled)

from llamalocal.backend.numba import ggml_math as gn
from llamalocal.backend.numba import matmul as fallback
from llamalocal.formats import GGMLType, quants

rng = np.random.default_rng(0)
x = rng.standard_normal(256).astype(np.float32)
for qtype, rows in ((GGMLType.Q4_1, 12), (GGMLType.Q4_0, 16), (GGMLType.Q4_0, 12), (GGMLType.Q6_K, 4)):
    w = quants.quantize(rng.standard_normal((rows, 256)).astype(np.float32), qtype)
    fallback.matmul(qtype, w, x)
h = rng.standard_normal((1, 256)).astype(np.float32)
y = np.empty_like(h)
gn.rms_norm(h, np.ones(256, np.float32), np.float32(1e-5), y)
q = rng.standard_normal((1, 4, 64)).astype(np.float32)
gn.rope(q, 3, 64, np.float32(10000), np.float32(1), np.empty(0, np.float32), False)
gn.glu(h.copy(), h, False)
kv = rng.standard_normal((4, 2, 64)).astype(np.float16).view(np.uint16)  # an F16 cache, as layer.py passes it
gn.attention(True, q, kv, kv, 3, 0, 2, 0.125, np.empty_like(q))
print(sum(1 for _, ev in compiled.buffer if ev.is_start))
"""


def _compilations(cache_dir: str) -> int:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, LLAMALOCAL_BACKEND="numba")
    done = subprocess.run([sys.executable, "-c", SCRIPT], check=False, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def test_second_run_compiles_nothing(tmp_path):
    first = _compilations(str(tmp_path))
    assert first > 0  # an empty cache: everything was compiled
    assert _compilations(str(tmp_path)) == 0
