"""Remember what was computed from a file until the file changes: results cached per (path, file version)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from ..core.errors import CheckpointError

R = TypeVar("R")
Version = Callable[[str], Hashable]


def file_version(path: str | os.PathLike[str]) -> tuple[int, int]:
    """What changes when the file does: its modification time and size.

    Raises :class:`CheckpointError` naming the file when it cannot be looked at.
    """
    try:
        stat = os.stat(path)
    except OSError as error:
        raise CheckpointError(path, f"cannot be read: {error.strerror or error}") from None
    return stat.st_mtime_ns, stat.st_size


class PerFileVersion(Generic[R]):
    """``function(path, *args)``, computed once per version of the file at ``path``."""

    def __init__(self, function: Callable[..., R], maxsize: int, version: Version) -> None:
        self._version = version
        self._cached = functools.lru_cache(maxsize)(lambda path, _version, *args: function(path, *args))
        functools.update_wrapper(self, function)

    def __call__(self, path: str | os.PathLike[str], *args: Hashable) -> R:
        path = os.fspath(path)
        return self._cached(path, self._version(path), *args)

    def cache_clear(self) -> None:
        self._cached.cache_clear()


def per_file_version(maxsize: int, version: Version = file_version) -> Callable[[Callable[..., R]], PerFileVersion[R]]:
    """Decorator: cache ``function(path, *args)`` until ``version(path)`` changes (default: mtime and size)."""

    def decorate(function: Callable[..., R]) -> PerFileVersion[R]:
        return PerFileVersion(function, maxsize, version)

    return decorate
