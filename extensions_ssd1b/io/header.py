"""A strict, torch-free reader of the safetensors header.

Detection reads only this header (a few hundred KB even for a 7 GB checkpoint).  Every way a
file can be broken or hostile is turned into a :class:`CheckpointError` naming the file and the
reason, before a single tensor byte is touched.

The header is parsed by ``json``.  Its entries are checked column by column at C level
(:func:`_checked_columns`: thousands of entries in about a millisecond); when any check fails,
every entry is checked one by one (:func:`_tensor_info`) to say which one is wrong and why.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeGuard

from ..core.errors import CheckpointError
from .dtypes import SIZES

# Real SDXL headers are ~200 KB; anything past this is not a checkpoint we want to parse.
MAX_HEADER_BYTES = 64 * 1024 * 1024
SAFETENSORS_SUFFIX = ".safetensors"


def is_safetensors_name(path: str | os.PathLike[str]) -> bool:
    """A name ending in ``.safetensors`` in any case, as A1111 lists them (``MODEL.SAFETENSORS`` too)."""
    return os.fspath(path).lower().endswith(SAFETENSORS_SUFFIX)


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
        shape_of = operator.attrgetter("shape")  # mapped at C level: every detection asks for this
        return dict(zip(self.tensors, map(shape_of, self.tensors.values()), strict=True))


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
    data_start = 8 + len(raw)
    tensors, metadata = _parse_json(path, text, file_size - data_start)
    return SafetensorsHeader(path, tensors, metadata, data_start, file_size)


def _parse_json(path: Path, text: str, data_size: int) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Any header: parsed by ``json``, every entry checked, each problem named."""
    try:
        document = json.loads(text)
        # A duplicate key would silently keep the last entry; only when the entry count and the
        # number of "data_offsets" disagree is the slower duplicate-rejecting parse needed.
        if isinstance(document, dict) and text.count('"data_offsets"') != len(document) - ("__metadata__" in document):
            document = json.loads(text, object_pairs_hook=_reject_duplicates)
    except ValueError as error:  # JSONDecodeError and duplicate keys
        raise CheckpointError(path, f"header is not valid JSON: {error}") from None
    except RecursionError:
        raise CheckpointError(path, "header is not valid JSON: nested too deeply") from None
    if not isinstance(document, dict):
        raise CheckpointError(path, "header is not a JSON object")
    metadata = document.pop("__metadata__", None) or {}
    if not _is_metadata(metadata):
        raise CheckpointError(path, "__metadata__ must map strings to strings")
    tensors = _checked_columns(document, data_size)
    if tensors is None:  # something is wrong: find the entry and say what
        tensors = {name: _tensor_info(path, name, entry, data_size) for name, entry in document.items()}
        _check_overlaps(path, tensors)
    return tensors, dict(metadata)


def _check_overlaps(path: Path, tensors: dict[str, TensorInfo]) -> None:
    spans = sorted((info.begin, info.end, name) for name, info in tensors.items() if info.nbytes)
    for (_, end_a, name_a), (begin_b, _, name_b) in itertools.pairwise(spans):
        if begin_b < end_a:
            raise CheckpointError(path, f"tensors {name_a!r} and {name_b!r} overlap in the data section")


def _is_metadata(value: object) -> TypeGuard[dict[str, str]]:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


_DTYPE, _SHAPE, _OFFSETS = map(operator.itemgetter, ("dtype", "shape", "data_offsets"))
_BEGIN, _END = operator.itemgetter(0), operator.itemgetter(1)


def _checked_columns(entries: dict[str, object], data_size: int) -> dict[str, TensorInfo] | None:
    """Every entry as a :class:`TensorInfo` when all pass the checks of :func:`_tensor_info` and are stored
    back to back; else None.

    The same checks, a column at a time with C-level ``map`` (no Python code runs per tensor): a
    header of thousands of tensors is validated in about the time ``json`` takes to parse it.
    """
    values = list(entries.values())
    try:
        dtypes, shapes, offsets = (list(map(field, values)) for field in (_DTYPE, _SHAPE, _OFFSETS))
    except (TypeError, KeyError):  # an entry is not an object, or lacks a field
        return None
    if not (
        set(map(type, dtypes)) <= {str}
        and set(map(type, shapes)) <= {list}
        and set(map(type, offsets)) <= {list}
        and set(map(len, offsets)) <= {2}
    ):
        return None
    begins, ends = list(map(_BEGIN, offsets)), list(map(_END, offsets))
    dims = list(itertools.chain.from_iterable(shapes))
    if (
        not set(map(type, dims)) <= {int}  # bool is not int here, as in the detailed check
        or not set(map(type, begins)) | set(map(type, ends)) <= {int}
        or not SIZES.keys() >= set(dtypes)
        or min(dims, default=0) < 0
        or max(ends, default=0) > data_size
    ):
        return None
    sizes = map(operator.mul, map(math.prod, shapes), map(SIZES.__getitem__, dtypes))
    if not all(map(operator.eq, map(operator.sub, ends, begins), sizes)):  # also rules out begin > end
        return None
    # Stored back to back in header order, as safetensors writes them, no two can overlap; any other
    # order is left to the detailed path, which sorts the spans and names an overlapping pair.
    if begins and (begins[0] != 0 or begins[1:] != ends[:-1]):
        return None
    # tuple.__new__ is TensorInfo._make without a Python-level call per tensor.
    infos = map(tuple.__new__, itertools.repeat(TensorInfo), zip(dtypes, map(tuple, shapes), begins, ends, strict=True))
    return dict(zip(entries, infos, strict=True))


def _tensor_info(path: Path, name: str, entry: object, data_size: int) -> TensorInfo:
    """One entry, checked field by field; the error names the tensor and what is wrong with it."""
    if not isinstance(entry, dict):
        raise CheckpointError(path, f"tensor {name!r}: entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SIZES:
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
    expected = math.prod(shape) * SIZES[dtype]
    if end - begin != expected:
        raise CheckpointError(
            path, f"tensor {name!r}: {end - begin} bytes stored but shape {shape} of {dtype} needs {expected}"
        )
    return TensorInfo(dtype, tuple(shape), begin, end)
