"""The one way this package writes a file: into a temporary file beside it, renamed into place when complete.

Converted checkpoints, sample checkpoints, generated webui configs and the remembered VAE precisions
all go through :func:`atomic_write`, so an interrupted or failed write never leaves a half-written
file under the real name.  Safetensors files are laid out from their tensors' shapes alone
(:func:`header_bytes`), which lets the data be streamed in afterwards.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .dtypes import SIZES

Shape = tuple[int, ...]


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a file to write: its name, safetensors dtype and shape."""

    name: str
    dtype: str
    shape: Shape

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * SIZES[self.dtype]


def header_bytes(tensors: Sequence[TensorSpec], metadata: Mapping[str, str] | None = None) -> tuple[bytes, int]:
    """The 8-byte length, the JSON header (padded to 8 bytes) and the size of the data section.

    Tensors are stored back to back in the given order, in the compact form safetensors writes.
    """
    document: dict[str, object] = {}
    if metadata:
        document["__metadata__"] = dict(metadata)
    offset = 0
    for tensor in tensors:
        document[tensor.name] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    raw = json.dumps(document, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # keep tensor data 8-byte aligned, as safetensors does
    return len(raw).to_bytes(8, "little") + raw, offset


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Sequence[TensorSpec],
    write_data: Callable[[IO[bytes]], None] | None = None,
    *,
    metadata: Mapping[str, str] | None = None,
    replace: bool = True,
) -> Path:
    """Write a safetensors file of ``tensors``, atomically.

    ``write_data(handle)`` writes the data section after the header, tensor by tensor in the given
    order; it may seek forward over zeros, and without it the whole data section is a hole (a sparse
    file, for header-only samples).  ``replace``: see :func:`atomic_write`.
    """
    path = Path(path)
    header, data_size = header_bytes(tensors, metadata)

    def write(handle: IO[bytes]) -> None:
        handle.write(header)
        if write_data is not None:
            write_data(handle)
        handle.truncate(len(header) + data_size)  # trailing holes still count towards the size

    atomic_write(path, write, replace=replace)
    return path


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, replacing what was there."""
    path = Path(path)
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")), replace=True)
    return path


def atomic_write(destination: Path, write: Callable[[IO[bytes]], object], *, replace: bool = False) -> None:
    """Run ``write`` on a temporary file beside ``destination``, then move it into place.

    On any failure, ``KeyboardInterrupt`` included, the temporary file is removed and
    ``destination`` is untouched.  Without ``replace`` an existing destination is never replaced,
    even one that appears while writing: that raises :class:`FileExistsError`.
    """
    if not replace and destination.exists():
        raise FileExistsError(errno.EEXIST, "already exists", str(destination))
    fd, temporary = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".partial")
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 would hide a checkpoint from other users
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        _publish(Path(temporary), destination, replace)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(temporary: Path, destination: Path, replace: bool) -> None:
    if replace:
        os.replace(temporary, destination)
        return
    try:
        os.link(temporary, destination)  # fails if the destination exists, unlike rename
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "appeared while writing; not replaced", str(destination)) from None
    except OSError:  # a file system without hard links (FAT, some network shares)
        if destination.exists():
            raise FileExistsError(errno.EEXIST, "appeared while writing; not replaced", str(destination)) from None
        os.rename(temporary, destination)
        return
    temporary.unlink()
