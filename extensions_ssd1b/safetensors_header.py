"""A strict, torch-free reader of the safetensors header.

Detection reads only this header (a few hundred KB even for a 7 GB checkpoint).  Every way a
file can be broken or hostile is turned into a :class:`CheckpointError` naming the file and the
reason, before a single tensor byte is touched.

A header exactly as safetensors writes it is parsed with a handful of C-level string operations
(:func:`_parse_canonical`); anything else, including every broken header, goes through ``json``
and the detailed checks, which also say what is wrong.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import os
import re
import stat
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeGuard

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
    data_size = file_size - data_start
    tensors, metadata = _parse_canonical(text, data_size) or _parse_json(path, text, data_size)
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
    tensors = {name: _tensor_info(path, name, entry, data_size) for name, entry in document.items()}
    spans = sorted((info.begin, info.end, name) for name, info in tensors.items() if info.nbytes)
    for (_, end_a, name_a), (begin_b, _, name_b) in itertools.pairwise(spans):
        if begin_b < end_a:
            raise CheckpointError(path, f"tensors {name_a!r} and {name_b!r} overlap in the data section")
    return tensors, dict(metadata)


def _is_metadata(value: object) -> TypeGuard[dict[str, str]]:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


# The canonical form: compact JSON, "__metadata__" (if any) first, then every tensor in data order,
# each starting where the one before ends.  Split at the quotes, an entry is ten tokens:
#   "NAME":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]},
#    NAME  :{  dtype  :  F16  ,  shape  :[2,3],  data_offsets  :[0,12]},
_ENTRY_TOKENS = 10
_FIELDS = (0, 4, 7, 9)  # name, dtype, shape, data_offsets
_PUNCTUATION = ((1, ":{"), (2, "dtype"), (3, ":"), (5, ","), (6, "shape"), (8, "data_offsets"))
_SHAPE_TOKEN = r":\[(?:(?:0|[1-9][0-9]*)(?:,(?:0|[1-9][0-9]*))*)?\],"  # JSON integers: no sign, no 0-prefix
_SHAPE_TOKENS = re.compile(f'{_SHAPE_TOKEN}(?:"{_SHAPE_TOKEN})*')  # joined at quotes
_OFFSETS_TOKEN = ":[%d,%d]},"
_METADATA_START = '{"__metadata__":'
_NOT_IN_CANONICAL = ("\\", *map(chr, range(0x20)))  # escapes; control characters, which JSON strings may not hold
_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_reject_duplicates)


def _parse_canonical(text: str, data_size: int) -> tuple[dict[str, TensorInfo], dict[str, str]] | None:
    """A header in the form safetensors writes, parsed without ``json``; None for any other header.

    Only what ``json`` reads the same way is accepted, with the same result (tests/test_header_fast_path.py
    compares the two); None leaves the verdict, and the error message, to :func:`_parse_json`.
    """
    # Without escapes, every quote delimits a string and the text between two quotes is its value.
    # (One search per character: no copy of the header, unlike a translate or a regex pass.)
    if any(map(text.__contains__, _NOT_IN_CANONICAL)):
        return None
    metadata: object = {}
    start = 1  # the quote that opens the first tensor's name
    if text.startswith(_METADATA_START):
        try:
            metadata, end = _STRICT_JSON.raw_decode(text, len(_METADATA_START))
        except (ValueError, RecursionError):
            return None
        if not text.startswith(",", end):
            return None
        start = end + 1
    if not (text.startswith("{") and text.startswith('"', start)) or not _is_metadata(metadata):
        return None
    columns = _entry_columns(text, start)
    if columns is None:
        return None
    names, dtypes, shape_tokens, offset_tokens = columns
    shape_of = _canonical_shapes(set(shape_tokens))  # a few dozen distinct shapes
    if shape_of is None or not DTYPE_SIZES.keys() >= set(dtypes):
        return None
    shapes = list(map(shape_of.__getitem__, shape_tokens))
    elements = {token: math.prod(shape) for token, shape in shape_of.items()}
    sizes = map(operator.mul, map(elements.__getitem__, shape_tokens), map(DTYPE_SIZES.__getitem__, dtypes))
    offsets = _back_to_back(offset_tokens, sizes, data_size)
    if offsets is None:
        return None
    # tuple.__new__ is TensorInfo._make without a Python-level call per tensor.
    infos = map(tuple.__new__, itertools.repeat(TensorInfo), zip(dtypes, shapes, *offsets, strict=True))
    tensors: dict[str, TensorInfo] = dict(zip(names, infos, strict=True))
    if len(tensors) != len(names) or "__metadata__" in tensors:  # a duplicate: _parse_json names it
        return None
    return tensors, metadata


def _entry_columns(text: str, start: int) -> tuple[list[str], list[str], list[str], list[str]] | None:
    """The name, dtype, shape and data_offsets tokens of the entries from ``start`` on, if all are punctuated right.

    A helper of its own so that the ten tokens per tensor are freed before thousands of objects are built.
    """
    tokens = text.split('"')
    first = text.count('"', 0, start) + 1
    count, rest = divmod(len(tokens) - first, _ENTRY_TOKENS)
    if rest or not count:
        return None
    if any(tokens[first + slot :: _ENTRY_TOKENS].count(word) != count for slot, word in _PUNCTUATION):
        return None
    names, dtypes, shapes, offsets = (tokens[first + slot :: _ENTRY_TOKENS] for slot in _FIELDS)
    last = offsets[-1].rstrip(" ")  # the header's closing brace, then the padding to 8 bytes
    if not last.endswith("}"):
        return None
    offsets[-1] = last[:-1] + ","
    return names, dtypes, shapes, offsets


def _canonical_shapes(tokens: Iterable[str]) -> dict[str, tuple[int, ...]] | None:
    """The shape in each of these distinct ``:[2,3],`` tokens, or None if any is not written that way."""
    distinct = list(tokens)
    joined = '"'.join(distinct)
    if not _SHAPE_TOKENS.fullmatch(joined):
        return None
    dims = json.loads("[" + joined.replace('"', "").replace(":", "")[:-1] + "]")  # [2,3],[4],[],...
    return dict(zip(distinct, map(tuple, dims), strict=True))


def _back_to_back(tokens: list[str], sizes: Iterable[int], data_size: int) -> tuple[list[int], list[int]] | None:
    """Begins and ends of tensors of these sizes stored back to back from byte 0, if the tokens hold just those.

    Then every tensor has its size, none overlaps another, and the last one ending inside the data
    section keeps them all inside.
    """
    ends = list(itertools.accumulate(sizes))
    begins = [0, *ends[:-1]]
    # Joined at quotes, which no token holds, the two strings are equal only if every token is.
    pairs = itertools.chain.from_iterable(zip(begins, ends, strict=True))
    expected = '"'.join([_OFFSETS_TOKEN] * len(ends)) % tuple(pairs)
    return (begins, ends) if ends[-1] <= data_size and '"'.join(tokens) == expected else None


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
