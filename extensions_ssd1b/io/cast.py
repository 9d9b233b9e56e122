"""Convert raw little-endian tensor bytes between F16, BF16, F32 and F64 with numpy alone (no torch)."""

from __future__ import annotations

import numpy as np

from .dtypes import CASTABLE, DTYPES


def _to_float(chunk: memoryview | bytes, dtype: str) -> np.ndarray:
    if dtype == "BF16":  # bf16 is the top half of an f32
        return (np.frombuffer(chunk, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(chunk, dtype=DTYPES[dtype].values)


def _from_float(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        wide = values.astype(np.float32, copy=False)
        bits = wide.view(np.uint32)
        # Round to nearest even, as torch does; NaN becomes the canonical quiet NaN 0x7FC0.
        rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
        nan = np.isnan(wide)
        if nan.any():
            rounded[nan] = 0x7FC0
        return rounded
    with np.errstate(over="ignore"):  # overflow to ±inf is counted by the caller
        return values.astype(DTYPES[dtype].values)


def cast(chunk: memoryview | bytes, source: str, target: str) -> tuple[memoryview | bytes | np.ndarray, int]:
    """Convert raw little-endian values from ``source`` to ``target``; also returns how many overflowed."""
    if source == target or source not in CASTABLE or target not in CASTABLE:
        return chunk, 0
    values = _to_float(chunk, source)
    converted = _from_float(values, target)
    overflowed = 0
    if (source, target) in _NARROWING:  # large values become ±inf
        overflowed = _count_inf(converted, target) - int(np.count_nonzero(np.isinf(values)))
    return converted, max(overflowed, 0)


# Conversions whose target cannot hold the source's largest finite values (bf16's maximum is a
# little below f32's, so rounding can overflow there too); f16 → bf16/f32 never can.
_NARROWING = frozenset(
    (s, t) for s in CASTABLE for t in CASTABLE if (t == "F16" and s != "F16") or (s == "F64" and t != "F64")
) | {("F32", "BF16")}


def _count_inf(values: np.ndarray, dtype: str) -> int:
    if dtype == "BF16":
        return int(np.count_nonzero((values & 0x7FFF) == 0x7F80))
    return int(np.count_nonzero(np.isinf(values)))


def output_dtype(source: str, target: str) -> str:
    """Floating tensors take the target dtype; integer buffers (position_ids) keep theirs."""
    return target if source in CASTABLE else source
