"""Writing GGUF v3 files safely: into a temporary file beside the output,
renamed into place only when complete, so an interrupted run leaves no half
file and an existing file is replaced only when asked.

The header (metadata and tensor infos) is written first; tensor data then
streams in one tensor at a time, produced on demand by the caller.
"""
from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from ..errors import OutputExistsError
from ..formats import GGMLType, block_format
from .gguf_metadata import MetaValue


@dataclass
class TensorSpec:
    name: str
    type: GGMLType
    shape: tuple[int, ...]  # numpy order; the last dimension runs along the blocks

    @property
    def n_bytes(self) -> int:
        fmt = block_format(self.type)
        return int(np.prod(self.shape[:-1], dtype=np.int64)) * fmt.row_bytes(self.shape[-1])


def write_gguf(path: str | os.PathLike, arch: str, metadata: dict[str, MetaValue], tensors: list[TensorSpec],
               produce: Callable[[int], np.ndarray], *, force: bool = False) -> int:
    """Writes `tensors` (data from `produce(i)`: uint8 blocks or a float array of the
    tensor's type) with `metadata`; returns the file size."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists (use --force to overwrite it)")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory")
    # Assembled hidden beside the output: same file system, so the final rename is
    # atomic.  Not mkstemp: its 0600 mode would stay on the model file; this honours
    # the umask, as any file a tool writes does.
    tmp = (path.parent or Path(".")) / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    w = None
    try:
        logging.getLogger("gguf.gguf_writer").setLevel(logging.WARNING)  # its plan printout is noise here
        w = GGUFWriter(tmp, arch)
        for key, mv in metadata.items():
            if key == "general.architecture":
                continue
            value = mv.value.tolist() if isinstance(mv.value, np.ndarray) else mv.value
            w.add_key_value(key, value, mv.type, mv.sub_type)
        for t in tensors:
            fmt = block_format(t.type)
            byte_shape = (*t.shape[:-1], fmt.row_bytes(t.shape[-1]))
            w.add_tensor_info(t.name, byte_shape, np.dtype(np.uint8), t.n_bytes, GGMLQuantizationType(int(t.type)))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for i, t in enumerate(tensors):
            data = np.ascontiguousarray(produce(i))
            if data.nbytes != t.n_bytes:
                raise ValueError(f"tensor {t.name}: produced {data.nbytes} bytes, expected {t.n_bytes}")
            w.write_tensor_data(data.view(np.uint8))
        w.fout[0].flush()
        os.fsync(w.fout[0].fileno())
        w.close()
        size = tmp.stat().st_size
        os.replace(tmp, path)
        return size
    finally:
        if w is not None:
            w.close()
        if tmp.exists():
            tmp.unlink()
