"""Read whole tensors into torch through ``safetensors.safe_open``: the reader wherever byte offsets don't matter."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import CheckpointError

if TYPE_CHECKING:
    import torch


class TensorFiles(contextlib.AbstractContextManager["TensorFiles"]):
    """Open safetensors files on first use and read named tensors from them; all are closed on exit."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._stack = contextlib.ExitStack()
        self._open: dict[Path, Any] = {}

    def get(self, path: str | os.PathLike[str], name: str) -> torch.Tensor:
        """Tensor ``name`` of the file at ``path``, on the device given at construction."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        try:
            if path not in self._open:
                self._open[path] = self._stack.enter_context(safe_open(str(path), framework="pt", device=self.device))
            return self._open[path].get_tensor(name)
        except (SafetensorError, OSError) as error:
            raise CheckpointError(path, f"cannot read tensor {name!r}: {error}") from None

    def __exit__(self, *exc: object) -> None:
        self._open.clear()
        self._stack.close()


def read_tensors(path: str | os.PathLike[str], names: Iterable[str], device: str = "cpu") -> dict[str, torch.Tensor]:
    """Only the tensors ``names`` of one file (nothing else of it is read)."""
    with TensorFiles(device) as files:
        return {name: files.get(path, name) for name in names}
