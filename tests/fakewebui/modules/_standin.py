"""Switches of the stand-in webui: which A1111 release it imitates, and its command line.

``install_fake_webui`` sets these before anything else of ``modules`` is imported; every other
stand-in file reads them at import time, exactly where the real release differs.  The stand-in is
forgotten after each test, so a new test can pick another release.
"""

from __future__ import annotations

VERSION = "1.10.1"
"""The A1111 release imitated: 1.6.0, 1.7.0, 1.8.0, 1.9.x or 1.10.1."""

ARGV: list[str] = []
"""Command-line flags as the webui would have received them (parsed by shared_cmd_options)."""

SUPPORTED = ("1.6.0", "1.7.0", "1.8.0", "1.9.4", "1.10.1")


def version_tuple(version: str | None = None) -> tuple[int, ...]:
    return tuple(int(part) for part in (version or VERSION).split(".")[:3])


def at_least(version: str) -> bool:
    """True when the imitated release is ``version`` or newer."""
    return version_tuple() >= version_tuple(version)
