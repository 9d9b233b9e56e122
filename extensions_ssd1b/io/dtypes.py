"""The one table of safetensors dtypes: size, bit layout, and the names numpy, torch, diffusers and our settings use."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class DType:
    """One safetensors dtype and everything the package needs to know about it."""

    name: str  # as the header writes it: "F16"
    size: int  # bytes per element
    bits: str  # numpy code of the unsigned integer as wide as one element: its raw bit pattern
    values: str | None = None  # numpy code of the values, for the dtypes we cast between without torch
    exponent: int = 0  # exponent mask of an IEEE-style float: all ones is Inf (mantissa 0) or NaN
    magnitude: int = 0  # everything but the sign bit (floats): zero here is ±0
    torch: str | None = None  # attribute of the torch module: "float16"
    variant: str | None = None  # diffusers weight variant, CLI --dtype and VAE precision name: "fp16"

    @property
    def is_float(self) -> bool:
        return self.magnitude != 0

    @property
    def castable(self) -> bool:
        """Converted without torch (numpy, with bf16 as the top half of an f32)."""
        return self.name == "BF16" or self.values is not None


DTYPES: Mapping[str, DType] = MappingProxyType({
    dtype.name: dtype
    for dtype in (
        DType("F64", 8, "<u8", "<f8", 0x7FF0000000000000, 0x7FFFFFFFFFFFFFFF, "float64"),
        DType("F32", 4, "<u4", "<f4", 0x7F800000, 0x7FFFFFFF, "float32", "fp32"),
        DType("F16", 2, "<u2", "<f2", 0x7C00, 0x7FFF, "float16", "fp16"),
        DType("BF16", 2, "<u2", None, 0x7F80, 0x7FFF, "bfloat16", "bf16"),
        DType("F8_E5M2", 1, "u1", None, 0x7C, 0x7F, "float8_e5m2"),
        # The "fn" variant: no infinities; only S.1111.111 is NaN, so it has no exponent rule.
        DType("F8_E4M3", 1, "u1", None, 0, 0x7F, "float8_e4m3fn"),
        DType("I64", 8, "<u8", torch="int64"),
        DType("I32", 4, "<u4", torch="int32"),
        DType("I16", 2, "<u2", torch="int16"),
        DType("I8", 1, "u1", torch="int8"),
        DType("U64", 8, "<u8", torch="uint64"),
        DType("U32", 4, "<u4", torch="uint32"),
        DType("U16", 2, "<u2", torch="uint16"),
        DType("U8", 1, "u1", torch="uint8"),
        DType("BOOL", 1, "u1", torch="bool"),
    )
})  # fmt: skip

SIZES: Mapping[str, int] = {name: dtype.size for name, dtype in DTYPES.items()}  # a dict: the header's hot loop
FLOATS = frozenset(name for name, dtype in DTYPES.items() if dtype.is_float)
CASTABLE = frozenset(name for name, dtype in DTYPES.items() if dtype.castable)
BY_VARIANT: Mapping[str, str] = MappingProxyType(
    {dtype.variant: name for name, dtype in DTYPES.items() if dtype.variant}
)  # "fp16" → "F16"
