"""The one registry of what this extension replaced in the host: every patch goes through :func:`patch`.

A patch puts a small dispatcher at ``owner.name`` that calls ``wrapper(original, *args, **kwargs)``.  The
registry, not the function, remembers the original and which dispatcher is ours: ``functools.wraps`` copies a
function's ``__dict__`` into any wrapper another extension puts on top of ours, so a marker stored there would
make their wrapper look like ours.  Scripts are imported again on Reload UI while this package stays loaded, so:

- patching again updates the wrapper our dispatcher calls and never wraps twice;
- :func:`unpatch` puts the host's original back when our dispatcher is still on top; when another extension has
  wrapped it since, cutting ourselves out would cut them out too, so ours stays in their chain, passing through.
  Either way the dispatcher itself turns into a pass-through: host modules that imported the name while we were
  installed (``from modules.sd_models import reload_model_weights`` in the API) keep a reference to it.
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
    in_place: bool = True  # our dispatcher is at owner.name, or inside another extension's chain there


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
    if record is None:
        record = Patch(owner, name, getattr(owner, name), wrapper, dispatcher=lambda: None, in_place=False)
        record.dispatcher = _dispatcher(record)
        _patches.append(record)
    record.wrapper, record.active = wrapper, True
    if not record.in_place:  # new, or we put the original back earlier: wrap what is there now
        record.original = getattr(owner, name)
        setattr(owner, name, record.dispatcher)
        record.in_place = True


def unpatch(owner: Any, name: str) -> None:
    """Put the host's original ``owner.name`` back; under another extension's wrapper, only pass through."""
    record = _find(owner, name)
    if record is None:
        return
    record.active = False
    if record.in_place and getattr(owner, name) is record.dispatcher:
        setattr(owner, name, record.original)
        record.in_place = False


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


def passes_through(function: Any) -> bool:
    """Whether ``function`` is one of our dispatchers, undone: it only calls the host's original."""
    return any(p.dispatcher is function and not p.active for p in _patches)
