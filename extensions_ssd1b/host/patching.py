"""The one registry of what this extension replaced in the host: every patch goes through :func:`patch`.

A patch puts a small dispatcher at ``owner.name`` that calls ``wrapper(original, *args, **kwargs)``.  The
registry, not the function, remembers the original and which dispatcher is ours: ``functools.wraps`` copies a
function's ``__dict__`` into any wrapper another extension puts on top of ours, so a marker stored there would
make their wrapper look like ours.  Scripts are imported again on Reload UI while this package stays loaded, so:

- patching again updates the wrapper our dispatcher calls and never wraps twice;
- :func:`unpatch` puts the host's original back when our dispatcher is still on top; when another extension has
  wrapped it since, cutting ourselves out would cut them out too, so ours stays in their chain, passing through.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Patch:
    owner: Any
    name: str
    original: Callable[..., Any]
    wrapper: Callable[..., Any]
    dispatcher: Callable[..., Any]
    active: bool = True


_patches: list[Patch] = []


def _find(owner: Any, name: str) -> Patch | None:
    return next((p for p in _patches if p.owner is owner and p.name == name), None)


def _dispatcher(record: Patch) -> Callable[..., Any]:
    @functools.wraps(record.original, updated=())  # name and docstring; nothing of the original's __dict__
    def dispatch(*args: Any, **kwargs: Any) -> Any:
        if record.active:
            return record.wrapper(record.original, *args, **kwargs)
        return record.original(*args, **kwargs)

    return dispatch


def patch(owner: Any, name: str, wrapper: Callable[..., Any]) -> None:
    """Make ``owner.name`` call ``wrapper(original, ...)``; idempotent, and safe under wrappers of others."""
    record = _find(owner, name)
    if record is not None:  # still in place, on top or inside another extension's chain: take it up again
        record.wrapper, record.active = wrapper, True
        return
    record = Patch(owner, name, getattr(owner, name), wrapper, dispatcher=lambda: None)
    record.dispatcher = _dispatcher(record)
    setattr(owner, name, record.dispatcher)
    _patches.append(record)


def unpatch(owner: Any, name: str) -> None:
    """Put the host's original ``owner.name`` back; under another extension's wrapper, only pass through."""
    record = _find(owner, name)
    if record is None:
        return
    if getattr(owner, name) is record.dispatcher:
        setattr(owner, name, record.original)
        _patches.remove(record)
    else:
        record.active = False


def unpatch_all() -> None:
    """Undo every patch, the latest first (what "disable the extension" and Reload UI need)."""
    for record in reversed(list(_patches)):
        unpatch(record.owner, record.name)


def installed() -> list[tuple[Any, str]]:
    """(owner, name) of every patch that is active."""
    return [(p.owner, p.name) for p in _patches if p.active]


def any_active() -> bool:
    """Whether the extension is in effect (our always-on scripts do nothing once everything is undone)."""
    return any(p.active for p in _patches)


def is_ours(function: Any) -> bool:
    """Whether ``function`` is one of our dispatchers."""
    return any(p.dispatcher is function for p in _patches)
