"""The one registry of what this extension replaced in the host: every patch goes through :func:`patch`.

A patch wraps ``owner.name`` as ``wrapper(original, *args, **kwargs)``.  The original is kept on
the wrapper, so patching again (scripts are re-imported on Reload UI) wraps the original, never
our own wrapper, and :func:`unpatch` puts it back.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

ORIGINAL_ATTRIBUTE = "__ssd1b_original__"

# (owner, attribute name) of every patch in place, in the order they were made.
_installed: list[tuple[Any, str]] = []


def patch(owner: Any, name: str, wrapper: Callable[..., Any]) -> None:
    """Replace ``owner.name`` by ``wrapper(original, ...)``, once (a second patch replaces the first)."""
    current = getattr(owner, name)
    original = getattr(current, ORIGINAL_ATTRIBUTE, current)

    @functools.wraps(original)
    def patched(*args: Any, **kwargs: Any) -> Any:
        return wrapper(original, *args, **kwargs)

    setattr(patched, ORIGINAL_ATTRIBUTE, original)
    setattr(owner, name, patched)
    if not any(o is owner and n == name for o, n in _installed):
        _installed.append((owner, name))


def unpatch(owner: Any, name: str) -> None:
    """Put the host's original ``owner.name`` back (nothing happens if it is not patched)."""
    current = getattr(owner, name)
    if hasattr(current, ORIGINAL_ATTRIBUTE):
        setattr(owner, name, getattr(current, ORIGINAL_ATTRIBUTE))
    _installed[:] = [(o, n) for o, n in _installed if not (o is owner and n == name)]


def installed() -> list[tuple[Any, str]]:
    """(owner, name) of every patch in place."""
    return list(_installed)
