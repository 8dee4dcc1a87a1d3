"""Every error a user can cause, under one root: `llamalocal.Error`.

The CLI catches `Error` in one place and prints its message as one line, so
each message names the file (or the argument) and what is wrong with it.
Each class also derives from the built-in exception it refines, so code that
catches `ValueError` or `OSError` around a call keeps working.
"""
from __future__ import annotations


class Error(Exception):
    """Root of llamalocal's user-facing errors: the message is what the user reads."""


class InvalidArgumentError(Error, ValueError):
    """A value given on the command line or to the API is not one llamalocal accepts."""


class ModelFormatError(Error, ValueError):
    """A model file is malformed or unsupported; the message names the file and the problem."""


class UnsupportedModelError(Error, ValueError):
    """The file is valid but describes a model llamalocal cannot run."""


class TokenizerError(Error, ValueError):
    """A vocabulary (GGUF tokenizer metadata, tokenizer.bin, a .model file) is malformed or unsupported."""


class ChatTemplateError(Error, ValueError):
    """A chat template cannot be used: a syntax error, a failed render, an unsafe operation, or an unknown name."""


class CheckpointError(Error, ValueError):
    """A quantize input cannot be converted: names the file and what is wrong."""


class OutputExistsError(Error, FileExistsError):
    """The output file exists and overwriting was not asked for."""


class BackendError(Error, RuntimeError):
    """A forced backend or ISA path cannot be used on this machine."""


class ContextFullError(Error, RuntimeError):
    """More tokens than the KV cache has room for."""


class MissingFileError(Error, FileNotFoundError):
    """A file named on the command line or to the API does not exist."""


class ModelStoreError(Error, OSError):
    """A model cannot be pulled, found in or removed from the model store; names the model and what was tried."""
