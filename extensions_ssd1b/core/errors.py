"""Typed errors with messages a user can act on."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any


class Ssd1bError(Exception):
    """Base class: every expected failure of the extension is one of these."""


class CheckpointError(Ssd1bError):
    """A file cannot be read as a checkpoint; the message names the file and the reason."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class LayoutError(Ssd1bError):
    """The UNet keys do not describe a consistent SDXL-family UNet."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class NotSdxlFamily(Ssd1bError):
    """A readable file that is not an SDXL-family UNet checkpoint (SD1.5, a LoRA, a VAE …)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        self.kind = kind
        super().__init__(f"not an SDXL-family checkpoint: {kind}" + (f" ({detail})" if detail else ""))


class ControlUnitRefused(Ssd1bError):
    """A ControlNet-extension unit that cannot run on the loaded UNet; raised before sampling."""

    def __init__(self, units: Iterable[str], model: str) -> None:
        self.units = list(units)
        self.model = model
        super().__init__(f"{model}: " + "; ".join(self.units))


def error_json(error: Ssd1bError, path: str | os.PathLike[str]) -> dict[str, Any]:
    """A typed error as JSON; the message always starts with the file it is about."""
    problems = error.problems if isinstance(error, LayoutError) else [str(error)]
    message = str(error)
    if not message.startswith(str(path)):
        message = f"{path}: {message}"
    return {"type": type(error).__name__, "message": message, "problems": problems}
