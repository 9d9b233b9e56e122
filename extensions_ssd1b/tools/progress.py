"""One progress bar on stderr for long work (``verify``, ``convert``): tqdm when installed, else a small fallback.

Drawn only when the stream is a terminal, so output captured to a file or a pipe stays one line per file.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import IO, Any


class Progress:
    """Bytes done out of ``total``, labelled; ``enabled`` None means: only on a terminal."""

    def __init__(self, total: int, label: str, enabled: bool | None = None, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total, self.label, self.done = max(total, 1), label, 0
        self._drawn = 0.0
        self._bar = _tqdm(self.total, label, self.stream) if self.enabled else None

    def advance(self, amount: int) -> None:
        self.done += amount
        if self._bar is not None:
            self._bar.update(amount)
            return
        now = time.monotonic()
        if self.enabled and (now - self._drawn > 0.1 or self.done >= self.total):
            self._drawn = now
            fraction = min(self.done / self.total, 1.0)
            bar = "#" * int(fraction * 30)
            self.stream.write(
                f"\r{self.label} [{bar:<30}] {fraction:4.0%} {self.done / 1e9:.2f}/{self.total / 1e9:.2f} GB"
            )
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _tqdm(total: int, label: str, stream: IO[str]) -> Any:
    """A tqdm bar counting bytes, or None when tqdm is not installed (a bare Python)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    # A terminal that reports its size as 0×0 (a fresh pty) would hide tqdm's bar: shutil falls back to 80×24.
    size = shutil.get_terminal_size()
    return tqdm(
        total=total, desc=label, file=stream, ncols=size.columns, nrows=size.lines,
        unit="B", unit_scale=True, unit_divisor=1024,
    )  # fmt: skip
