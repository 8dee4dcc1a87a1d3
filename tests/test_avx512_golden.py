"""The avx512 objects on whole models, on any x86 CPU.

llama.cpp's golden files (../shared/golden) were written on an AVX-512
machine, by a llama.cpp built for it: its float sums run in 16 lanes there
(see native/ggml_math.h), and every x86 path of ours follows that build.  The
avx512 objects differ from the avx2 ones only in their VNNI integer
multiply-accumulates; here the extension is built once more with
LLAMALOCAL_EMULATE_AVX512 (those instructions from SIMDe, all else the same
code) so that the avx512 path runs without AVX-512 hardware, and it must
reproduce the golden logits to the files' 4 decimals, as the avx2 path does.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from models import TESTS_DIR
from test_model import EXACT, GEMMA3, ISA_CHECK, SMOLLM2
from test_native import native_env

from llamalocal import _native

ROOT = TESTS_DIR.parent

# The emulated build's package comes first on the path; an editable install's
# import redirect (scikit-build-core's finder) would otherwise win over it.
PRELUDE = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "ScikitBuild" not in type(f).__name__]
import llamalocal
assert llamalocal.__file__.startswith({site!r}), llamalocal.__file__
"""


@pytest.fixture(scope="module")
def emulated_site(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("avx512_emulated")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp),
                    "-C", "cmake.define.LLAMALOCAL_EMULATE_AVX512=ON", "-C", f"build-dir={tmp / 'build'}"],
                   check=True, timeout=1200)
    site = tmp / "site"
    with zipfile.ZipFile(next(tmp.glob("llamalocal-*.whl"))) as z:
        z.extractall(site)
    return site


@pytest.mark.skipif(_native.arch != "x86_64", reason="the avx512 build exists on x86-64 only")
@pytest.mark.parametrize("model_name", [SMOLLM2, GEMMA3])
def test_avx512_path_reproduces_llama_cpps_avx512_build(emulated_site, model_name):
    script = PRELUDE.format(site=str(emulated_site)) + ISA_CHECK.format(tests=str(TESTS_DIR), model=model_name)
    env = native_env(PYTHONPATH=os.pathsep.join([str(emulated_site), os.environ.get("PYTHONPATH", "")]), LLAMALOCAL_ISA="avx512")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=TESTS_DIR, env=env, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    print(model_name, res)
    assert res["isa"] == "avx512"
    share, worst = EXACT[model_name]
    assert res["exact"] >= share and res["max"] <= worst, res
