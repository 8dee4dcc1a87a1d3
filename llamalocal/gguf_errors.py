"""Errors about model files, shared by every loader."""
from __future__ import annotations

from pathlib import Path


class ModelFormatError(ValueError):
    """A model file is malformed; the message names the file and what is wrong."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{Path(path).name}: {problem}")
