"""The tensors of one model spread over several files."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import CheckpointError


class ShardedWeights:
    """The tensors of a model spread over several files (safetensors or torch shards).

    `where` maps each tensor name to the open file holding it; each file has
    `.tensors` (name -> entry with .shape, .dtype, .file), `.load(name)` and `.close()`."""

    def __init__(self, files: list, where: Optional[dict] = None):
        self.files = files
        if where is None:
            where = {}
            for f in files:
                for name in f.tensors:
                    if name in where:
                        raise CheckpointError(f"{f.path}: tensor {name!r} is also in {where[name].path.name}")
                    where[name] = f
        self._where = where

    @property
    def names(self) -> list[str]:
        return list(self._where)

    def entry(self, name: str):
        return self._where[name].tensors[name]

    def load(self, name: str) -> np.ndarray:
        return self._where[name].load(name)

    def close(self) -> None:
        for f in self.files:
            f.close()
