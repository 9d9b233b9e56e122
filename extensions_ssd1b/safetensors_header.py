"""A strict, torch-free reader of the safetensors header.

Detection reads only this header (a few hundred KB even for a 7 GB checkpoint).  Every way a
file can be broken or hostile is turned into a :class:`CheckpointError` naming the file and the
reason, before a single tensor byte is touched.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .errors import CheckpointError

# Real SDXL headers are ~200 KB; anything past this is not a checkpoint we want to parse.
MAX_HEADER_BYTES = 64 * 1024 * 1024

DTYPE_SIZES: Mapping[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip


class TensorInfo(NamedTuple):  # a tuple: thousands are made per header, and tuples are cheap
    dtype: str
    shape: tuple[int, ...]
    begin: int  # byte offset relative to the start of the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int  # absolute file offset of the first tensor byte
    file_size: int

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: info.shape for name, info in self.tensors.items()}


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and validate the header of the safetensors file at ``path``."""
    path = Path(path)
    try:
        # open() on a FIFO blocks until a writer appears: refuse anything but a file first.
        if not os.path.isdir(path) and not stat.S_ISREG(os.stat(path).st_mode):
            raise CheckpointError(path, "is not a regular file (a pipe, socket or device)")
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if os.path.isdir(path):
                raise CheckpointError(path, "is a directory, not a checkpoint file")
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(path, f"file is {size} bytes, too short for a safetensors header")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise CheckpointError(path, f"header length {length} bytes is implausibly large (not safetensors?)")
            if length > size - 8:
                raise CheckpointError(
                    path, f"header length {length} bytes exceeds the file ({size} bytes): truncated or not safetensors"
                )
            raw = handle.read(length)
    except IsADirectoryError:
        raise CheckpointError(path, "is a directory, not a checkpoint file") from None
    except FileNotFoundError:
        raise CheckpointError(path, "no such file") from None
    except PermissionError:
        raise CheckpointError(path, "not readable (permission denied)") from None
    except OSError as error:
        raise CheckpointError(path, f"cannot be read: {error.strerror or error}") from None
    return parse_header(path, raw, size)


def parse_header(path: Path, raw: bytes, file_size: int) -> SafetensorsHeader:
    """Validate a header's JSON against the file it came from."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(path, "header is not valid UTF-8 (not a safetensors file?)") from None
    try:
        document = json.loads(text)
        # A duplicate key would silently keep the last entry; only when the entry count and the
        # number of "data_offsets" disagree is the slower duplicate-rejecting parse needed.
        if isinstance(document, dict) and text.count('"data_offsets"') != len(document) - ("__metadata__" in document):
            document = json.loads(text, object_pairs_hook=_reject_duplicates)
    except ValueError as error:  # JSONDecodeError and duplicate keys
        raise CheckpointError(path, f"header is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise CheckpointError(path, "header is not a JSON object")
    data_start = 8 + len(raw)
    data_size = file_size - data_start
    metadata = document.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(path, "__metadata__ must map strings to strings")
    tensors = {name: _tensor_info(path, name, entry, data_size) for name, entry in document.items()}
    spans = sorted((info.begin, info.end, name) for name, info in tensors.items() if info.nbytes)
    for (_, end_a, name_a), (begin_b, _, name_b) in itertools.pairwise(spans):
        if begin_b < end_a:
            raise CheckpointError(path, f"tensors {name_a!r} and {name_b!r} overlap in the data section")
    return SafetensorsHeader(path, tensors, dict(metadata), data_start, file_size)


def _tensor_info(path: Path, name: str, entry: object, data_size: int) -> TensorInfo:
    # Fast path for a well-formed entry (C-level checks only); anything else gets the detailed checks.
    try:
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]  # type: ignore[index]
        if (
            type(shape) is list
            and set(map(type, shape)) <= {int}
            and min(shape, default=0) >= 0
            and type(begin) is int
            and type(end) is int
            and 0 <= begin <= end <= data_size
            and end - begin == math.prod(shape) * DTYPE_SIZES[dtype]
        ):
            return TensorInfo(dtype, tuple(shape), begin, end)
    except (TypeError, KeyError, ValueError):
        pass
    if not isinstance(entry, dict):
        raise CheckpointError(path, f"tensor {name!r}: entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise CheckpointError(path, f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise CheckpointError(path, f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise CheckpointError(path, f"tensor {name!r}: data_offsets {offsets!r} is not a pair of integers")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise CheckpointError(
            path, f"tensor {name!r}: data_offsets {offsets} fall outside the data section ({data_size} bytes)"
        )
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if end - begin != expected:
        raise CheckpointError(
            path, f"tensor {name!r}: {end - begin} bytes stored but shape {shape} of {dtype} needs {expected}"
        )
    return TensorInfo(dtype, tuple(shape), begin, end)
