"""The header fast path reads only what ``json`` reads the same way, and reads it the same way.

``_parse_canonical`` handles headers exactly as safetensors writes them without ``json``; anything
else it must hand back (None) to ``_parse_json``, the reference with the detailed errors.  Every
header here goes through both: when the fast path accepts, the JSON path must accept too and
return the same tensors (in the same order) and metadata.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save

from extensions_ssd1b.errors import CheckpointError
from extensions_ssd1b.safetensors_header import (
    DTYPE_SIZES,
    _parse_canonical,
    _parse_json,
    parse_header,
    read_header,
)
from extensions_ssd1b.samples import write_sample

PATH = Path("header.safetensors")
Parsed = tuple[list[tuple[str, object]], dict[str, str]]


def both(raw: bytes, data_size: int) -> tuple[Parsed | None, Parsed | None]:
    """(fast result or None, JSON result or None when it raises), tensors as ordered item lists."""
    text = raw.decode("utf-8")
    fast = _parse_canonical(text, data_size)
    try:
        slow = _parse_json(PATH, text, data_size)
    except CheckpointError:
        slow = None
    return (
        None if fast is None else (list(fast[0].items()), fast[1]),
        None if slow is None else (list(slow[0].items()), slow[1]),
    )


def assert_agree(raw: bytes, data_size: int) -> bool:
    """Fast and JSON path agree on ``raw``; True when the fast path took it."""
    fast, slow = both(raw, data_size)
    if fast is not None:
        assert slow is not None, f"fast path accepted a header the JSON path rejects: {raw[:300]!r}"
        assert fast == slow
    return fast is not None


def compact(document: object, ensure_ascii: bool = False) -> bytes:
    raw = json.dumps(document, separators=(",", ":"), ensure_ascii=ensure_ascii).encode()
    return raw + b" " * (-len(raw) % 8)


def entries(*tensors: tuple[str, str, list[int]], metadata: dict | None = None) -> tuple[dict, int]:
    """A header document of back-to-back tensors (name, dtype, shape), and its data size."""
    document: dict[str, object] = {} if metadata is None else {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape in tensors:
        size = int(np.prod(shape)) * DTYPE_SIZES[dtype]
        document[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    return document, offset


THREE = (("a.weight", "F16", [2, 3]), ("a.bias", "F32", [3]), ("b", "BF16", [1, 2]))


# -- what the fast path is for ---------------------------------------------------------------------


def test_the_fast_path_reads_what_safetensors_writes():
    tensors = {
        "model.diffusion_model.out.2.weight": np.zeros((4, 320, 3, 3), np.float16),
        "empty": np.zeros((0, 7), np.float32),
        "scalar": np.ones((), np.int64),
        "mask": np.zeros(3, np.bool_),
        "ünïcode name with spaces, colons: and {braces} [brackets] %s %d": np.zeros(2, np.uint8),
    }
    blob = save(tensors, metadata={"modelspec.title": "ü", "format": "pt"})
    (length,) = struct.unpack("<Q", blob[:8])
    raw = blob[8 : 8 + length]
    assert assert_agree(raw, len(blob) - 8 - length)
    header = parse_header(PATH, raw, len(blob))
    assert header.shapes()["empty"] == (0, 7) and header.shapes()["scalar"] == ()
    assert header.metadata == {"modelspec.title": "ü", "format": "pt"}


def test_the_fast_path_reads_a_full_size_sample(tmp_path):
    path = write_sample(tmp_path / "ssd-1b.safetensors", "ssd-1b", sparse=True)
    with open(path, "rb") as handle:  # the header only: the data is a 4.5 GB hole
        raw = handle.read(struct.unpack("<Q", handle.read(8))[0])
    data_size = path.stat().st_size - 8 - len(raw)
    assert assert_agree(raw, data_size)
    assert read_header(path).tensors == _parse_json(path, raw.decode(), data_size)[0]


@pytest.mark.parametrize("metadata", [None, {}, {"a": "1", "b": ""}, {"__metadata__": "x", "data_offsets": "y"}])
def test_metadata_variants_agree(metadata):
    document, size = entries(*THREE, metadata=metadata)
    assert assert_agree(compact(document), size)


# -- what it must hand back ------------------------------------------------------------------------


def _replace(raw: bytes, old: str, new: str) -> bytes:
    assert old.encode() in raw, old
    return raw.replace(old.encode(), new.encode(), 1)


CANONICAL, SIZE = compact(entries(*THREE, metadata={"k": "v"})[0]), entries(*THREE)[1]
VALID, BROKEN = True, False
NOT_CANONICAL = {  # name: (header, does the JSON path read it?)
    "spaces after separators": (json.dumps(entries(*THREE)[0]).encode(), VALID),
    "escaped unicode name": (compact(entries(("é", "F16", [1]))[0], ensure_ascii=True), VALID),
    "escaped quote in a name": (compact(entries(('a":{"dtype":"F16', "F16", [1]))[0]), VALID),
    "escaped backslash": (compact(entries(("a\\b", "F16", [1]))[0]), VALID),
    "fields reordered": (_replace(CANONICAL, '"dtype":"F16","shape":[2,3]', '"shape":[2,3],"dtype":"F16"'), VALID),
    "newline padding": (CANONICAL.rstrip() + b"\n", VALID),
    "metadata last": (compact({**entries(*THREE)[0], "__metadata__": {"k": "v"}}), VALID),
    "metadata null": (_replace(CANONICAL, '{"k":"v"}', "null"), VALID),
    "duplicate metadata key": (_replace(CANONICAL, '{"k":"v"}', '{"k":"v","k":"w"}'), VALID),
    "tensors out of data order": (compact(dict(reversed(entries(*THREE)[0].items()))), VALID),
    "offset with spaces": (_replace(CANONICAL, "[12,24]", "[12, 24]"), VALID),
    "shape with spaces": (_replace(CANONICAL, "[2,3]", "[2, 3]"), VALID),
    "negative zero offset": (_replace(CANONICAL, "[0,12]", "[-0,12]"), VALID),
    "no tensors": (b"{}", VALID),
    "metadata only": (compact({"__metadata__": {"k": "v"}}), VALID),
    "duplicate tensor": (compact(entries(*THREE)[0]).replace(b'"b"', b'"a.bias"'), BROKEN),
    "tensor named __metadata__": (compact(entries(*THREE, ("__metadata__", "F16", [1]))[0]), BROKEN),
    "unknown dtype": (_replace(CANONICAL, '"F32"', '"F12"'), BROKEN),
    "lowercase dtype": (_replace(CANONICAL, '"F32"', '"f32"'), BROKEN),
    "leading zero in a shape": (_replace(CANONICAL, "[2,3]", "[02,3]"), BROKEN),
    "leading zero in an offset": (_replace(CANONICAL, "[0,12]", "[00,12]"), BROKEN),
    "float shape": (_replace(CANONICAL, "[2,3]", "[2.0,3]"), BROKEN),
    "exponent shape": (_replace(CANONICAL, "[1,2]", "[1e0,2]"), BROKEN),
    "bool shape": (_replace(CANONICAL, "[1,2]", "[true,2]"), BROKEN),
    "negative shape": (_replace(CANONICAL, "[2,3]", "[-2,-3]"), BROKEN),
    "nested shape": (_replace(CANONICAL, "[2,3]", "[[2],3]"), BROKEN),
    "empty shape slot": (_replace(CANONICAL, "[2,3]", "[2,,3]"), BROKEN),
    "three offsets": (_replace(CANONICAL, "[0,12]", "[0,6,12]"), BROKEN),
    "string offsets": (_replace(CANONICAL, "[0,12]", '["0","12"]'), BROKEN),
    "wrong byte count": (_replace(CANONICAL, "[2,3]", "[2,4]"), BROKEN),
    "overlapping": (_replace(CANONICAL, "[12,24]", "[8,20]"), BROKEN),
    "control character in a name": (_replace(CANONICAL, '"a.bias"', '"a.\x01bias"'), BROKEN),
    "tab in a name": (_replace(CANONICAL, '"a.bias"', '"a.\tbias"'), BROKEN),
    "entry not an object": (compact({"a": 5}), BROKEN),
    "metadata not strings": (_replace(CANONICAL, '{"k":"v"}', '{"k":1}'), BROKEN),
    "metadata a list": (_replace(CANONICAL, '{"k":"v"}', '["v"]'), BROKEN),
    "metadata deeply nested": (_replace(CANONICAL, '{"k":"v"}', "[" * 100_000 + "]" * 100_000), BROKEN),
    "trailing garbage": (CANONICAL.rstrip() + b"x", BROKEN),
    "one brace too many": (CANONICAL.rstrip() + b"}", BROKEN),
    "missing final brace": (CANONICAL.rstrip()[:-1], BROKEN),
    "nul padding": (CANONICAL.rstrip() + b"\x00" * 4, BROKEN),
    "not an object": (b"[]", BROKEN),
}


def test_the_canonical_reference_is_taken():
    assert assert_agree(CANONICAL, SIZE)


@pytest.mark.parametrize("name", NOT_CANONICAL)
def test_everything_else_is_left_to_the_json_path(name):
    raw, valid = NOT_CANONICAL[name]
    fast, slow = both(raw, SIZE)
    assert fast is None
    assert (slow is not None) is valid


def test_offsets_are_left_to_the_json_path_unless_back_to_back_inside_the_data():
    assert not assert_agree(CANONICAL, SIZE - 1)
    assert assert_agree(CANONICAL, SIZE + 100)  # bytes after the last tensor are allowed
    fast, slow = both(_replace(CANONICAL, "[24,28]", "[28,32]"), SIZE + 4)  # a gap: valid, not canonical
    assert fast is None and slow is not None


def test_single_byte_mutations_never_make_the_paths_disagree():
    rng = random.Random(20240611)
    alphabet = '"{}[]:,0123456789 \\-.eFU_\x01'
    text = CANONICAL.decode()
    taken = 0
    for _ in range(4000):
        i = rng.randrange(len(text))
        op = rng.randrange(3)
        c = rng.choice(alphabet)
        mutated = text[:i] + (c if op < 2 else "") + text[i + (op != 1) :]
        taken += assert_agree(mutated.encode(), SIZE)
    assert taken  # some mutations (in names, say) stay canonical


names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
shapes = st.lists(st.integers(0, 5), max_size=3)
tensors = st.lists(st.tuples(names, st.sampled_from(sorted(DTYPE_SIZES)), shapes), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(tensors=tensors, metadata=st.none() | st.dictionaries(names, names, max_size=3), ascii_only=st.booleans())
def test_generated_headers_agree(tensors, metadata, ascii_only):
    document, size = entries(*tensors, metadata=metadata)
    raw = compact(document, ensure_ascii=ascii_only)
    taken = assert_agree(raw, size)
    tensor_names = [name for name, _, _ in tensors]
    if b"\\" not in raw and len(set(tensor_names)) == len(tensor_names) and "__metadata__" not in tensor_names:
        assert taken  # no escapes, no duplicates: the form safetensors writes
