"""Stream the bytes of one tensor after another in bounded chunks, skipping the holes of sparse files.

Tensors are read through one reusable buffer (a few MiB), never mapped: a mapped file counts
towards the process's resident memory as pages are touched.  ``verify`` and ``convert`` read
whole checkpoints this way without torch.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from typing import IO

from ..core.errors import CheckpointError
from .header import SafetensorsHeader, TensorInfo

CHUNK_BYTES = 8 * 1024 * 1024  # a multiple of every element size


class TensorReader:
    """Yields the bytes of one tensor at a time in chunks of at most ``chunk_bytes``.

    A chunk is a ``memoryview`` of a buffer that the next chunk overwrites, or, where the file has
    a hole (a sparse file), an ``int``: that many zero bytes, not read at all.
    """

    def __init__(self, header: SafetensorsHeader, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.header = header
        self._buffer = bytearray(chunk_bytes)
        self._file: IO[bytes] = open(header.path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        if os.fstat(self._file.fileno()).st_size != header.file_size:
            self.close()
            raise CheckpointError(header.path, "the file changed size since its header was read")
        self._holes = hasattr(os, "SEEK_DATA")

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def _is_hole(self, start: int, length: int) -> bool:
        if not self._holes:
            return False
        try:
            return os.lseek(self._file.fileno(), start, os.SEEK_DATA) >= start + length
        except OSError as error:
            if error.errno == errno.ENXIO:  # no data after start: a hole up to the end of the file
                return True
            self._holes = False  # the file system cannot tell; read everything
            return False

    def chunks(self, info: TensorInfo) -> Iterator[memoryview | int]:
        position = self.header.data_start + info.begin
        end = self.header.data_start + info.end
        view = memoryview(self._buffer)
        while position < end:
            length = min(len(self._buffer), end - position)
            if self._is_hole(position, length):
                yield length
            else:
                self._file.seek(position)
                got = self._file.readinto(view[:length]) or 0
                if got != length:
                    raise CheckpointError(self.header.path, f"file ended while reading at byte {position + got}")
                yield view[:length]
            position += length
