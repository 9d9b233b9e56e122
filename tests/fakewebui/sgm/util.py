"""Stand-in for ``sgm.util``: only the two helpers the UNet modules import from it."""

from __future__ import annotations

from inspect import isfunction


def exists(x):
    return x is not None


def default(val, d):
    if exists(val):
        return val
    return d() if isfunction(d) else d
