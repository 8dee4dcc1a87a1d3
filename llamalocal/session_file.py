"""Saved conversations (`.llsession`): resumed, they give exactly the next
tokens the uninterrupted session would have given.

A zip holding `session.json` (format version, the model's identity, the
messages, the cached token ids, the sampler's settings and random state,
how the last answer sits in the cache) and `kv.npz` (each layer's K and V
for the cached positions, in the cache's own type).  The model's identity is
its file name, size and a hash of its header (metadata and tensor table):
another model file is refused by name.  Written to a temporary file and
renamed, so an interrupted save never leaves half a file.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidArgumentError, MissingFileError, ModelFormatError
from .model.loader import LoadedModel

FORMAT = "llamalocal-session"
VERSION = 1
_HEADER_HASH_BYTES = 1 << 24  # a llama2.c file has no header to speak of: its first 16 MiB stand in


def model_identity(lm: LoadedModel) -> dict[str, Any]:
    size = lm.path.stat().st_size
    n = lm._file.data_offset if lm._file is not None else min(size, _HEADER_HASH_BYTES)
    h = hashlib.sha256()
    with open(lm.path, "rb") as f:
        h.update(f.read(n))
    return {"file": lm.path.name, "size": size, "header_sha256": h.hexdigest()}


def write_session(path: str | Path, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """`state` (JSON-able, the model's identity added here) and the cache's arrays, atomically."""
    path = Path(path)
    state = {"format": FORMAT, "version": VERSION, **state}
    kv = io.BytesIO()
    np.savez(kv, **arrays)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED) as z:
            z.writestr("session.json", json.dumps(state))
            z.writestr("kv.npz", kv.getvalue())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_session(path: str | Path, lm: LoadedModel) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The state and arrays of a session file saved with this very model file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such session file")
    try:
        with zipfile.ZipFile(path) as z:
            state = json.loads(z.read("session.json"))
            with np.load(io.BytesIO(z.read("kv.npz"))) as kv:
                arrays = {name: kv[name] for name in kv.files}
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
        raise ModelFormatError(f"{path}: not a llamalocal session file ({e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("version") != VERSION:
        raise ModelFormatError(f"{path}: not a version-{VERSION} llamalocal session file")
    want, have = state.get("model"), model_identity(lm)
    if want != have:
        name = want.get("file", "?") if isinstance(want, dict) else "?"
        raise InvalidArgumentError(f"{path} was saved with the model {name}, not {have['file']}: "
                                   f"load it with that model file")
    return state, arrays
