"""A GGUF file as quantize input: its metadata copied with its value types,
its tensors decoded to float32 one at a time.

F32, F16 and BF16 files are the usual input.  A quantized file can be
re-quantized, with a warning: its weights have already lost precision; a
tensor whose type the output keeps is copied block for block.  Pre-GGUF
llama.cpp files (io/legacy_ggml.py) come in the same way, as the GGUF they
load as; `--tokenizer` (a SentencePiece .model) replaces their vocabulary.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFValueType

from ..errors import CheckpointError, ModelFormatError
from ..formats import GGMLType
from ..io.gguf_metadata import MetaValue
from ..io.gguf_reader import GGUFFile
from ..io.legacy_ggml import LegacyGGMLFile, open_model_file
from .checkpoint import Checkpoint, SourceTensor

# Keys describing the file's own encoding, rewritten by the writer.
_NOT_COPIED = ("general.file_type", "general.quantization_version", "general.alignment", "split.")

_ARRAY_TYPES = {
    np.dtype(np.uint8): GGUFValueType.UINT8, np.dtype(np.int8): GGUFValueType.INT8,
    np.dtype(np.uint16): GGUFValueType.UINT16, np.dtype(np.int16): GGUFValueType.INT16,
    np.dtype(np.uint32): GGUFValueType.UINT32, np.dtype(np.int32): GGUFValueType.INT32,
    np.dtype(np.uint64): GGUFValueType.UINT64, np.dtype(np.int64): GGUFValueType.INT64,
    np.dtype(np.float32): GGUFValueType.FLOAT32, np.dtype(np.float64): GGUFValueType.FLOAT64,
    np.dtype(np.bool_): GGUFValueType.BOOL,
}


def _meta_value(key: str, value, vtype: int) -> MetaValue:
    vtype = GGUFValueType(vtype)
    if vtype != GGUFValueType.ARRAY:
        return MetaValue(value, vtype)
    if isinstance(value, np.ndarray):
        return MetaValue(value.tolist(), vtype, _ARRAY_TYPES[value.dtype.newbyteorder("=")])
    if all(isinstance(v, str) for v in value):
        return MetaValue(list(value), vtype, GGUFValueType.STRING)
    raise CheckpointError(f"metadata key {key!r}: nested arrays are not supported")


def open_gguf(path: Path, tokenizer: Path | str | None = None) -> Checkpoint:
    """A GGUF file, or a pre-GGUF one (then `tokenizer`, a SentencePiece model, may replace its vocabulary)."""
    try:
        f = open_model_file(path) or GGUFFile(path)
    except ModelFormatError as e:
        raise CheckpointError(str(e)) from None
    legacy = isinstance(f, LegacyGGMLFile)
    arch = f.architecture
    if not arch:
        f.close()
        raise CheckpointError(f"{path}: no general.architecture in the metadata")
    metadata = {k: _meta_value(k, v, f.value_types[k]) for k, v in f.metadata.items()
                if not k.startswith(_NOT_COPIED)}
    warnings = list(getattr(f, "warnings", []))
    if legacy and tokenizer is not None:
        from ..tokenizer.to_gguf import spm_vocab

        if Path(tokenizer).suffix != ".model":
            f.close()
            raise CheckpointError(f"{tokenizer}: a pre-GGUF file's vocabulary can be replaced by a SentencePiece "
                                  f"tokenizer.model only")
        metadata = {k: v for k, v in metadata.items() if not k.startswith("tokenizer.")}
        metadata.update(spm_vocab(tokenizer, f.tensors["token_embd.weight"].shape[1]))
    quantized = sorted({t.type.name for t in f.tensors.values()
                        if t.type not in (GGMLType.F32, GGMLType.F16, GGMLType.BF16)})
    if quantized:
        warnings.append(f"{path.name} is already quantized ({', '.join(quantized)}): re-quantizing compounds "
                        f"the rounding error; convert from the original F16/F32 weights when you can")

    def loader(name: str):
        return lambda: np.ascontiguousarray(f.tensor_array(name, dequantize=True), dtype=np.float32)

    def blocks(name: str):
        return lambda: f.tensor_bytes(name)

    tensors = [SourceTensor(t.name, t.np_shape, t.type.name, loader(t.name), blocks(t.name)) for t in f.tensors.values()]
    return Checkpoint(path, "ggml" if legacy else "gguf", arch, metadata, tensors, warnings, f.close)
