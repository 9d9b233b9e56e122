"""The validating header reader: every header a user can meet is read as ``json`` reads it, or refused with a reason.

Well-formed headers are checked a column at a time (``_checked_columns``); anything that check
declines is checked entry by entry (``_tensor_info``), which names what is wrong.  The two must
agree: whatever the column check accepts, the entry-by-entry path accepts with the same result.
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

from extensions_ssd1b.core.errors import CheckpointError
from extensions_ssd1b.io.dtypes import SIZES
from extensions_ssd1b.io.header import _check_overlaps, _checked_columns, _tensor_info, parse_header, read_header
from extensions_ssd1b.tools.samples import write_sample

PATH = Path("header.safetensors")
Tensors = list[tuple[str, object]]


def tensors_of(raw: bytes, data_size: int) -> Tensors | None:
    """The tensors the reader makes of ``raw`` (in order), or None when it refuses the header."""
    try:
        return list(parse_header(PATH, raw, 8 + len(raw) + data_size).tensors.items())
    except CheckpointError:
        return None


def assert_agree(raw: bytes, data_size: int) -> bool:
    """The column check and the entry-by-entry check agree on ``raw``; True when the column check took it."""
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    if not isinstance(document, dict):
        return False
    document.pop("__metadata__", None)
    columns = _checked_columns(document, data_size)
    try:
        entries = {name: _tensor_info(PATH, name, entry, data_size) for name, entry in document.items()}
        _check_overlaps(PATH, entries)
    except CheckpointError:
        entries = None
    if columns is not None:
        assert entries is not None, f"the column check accepted a header the entry checks refuse: {raw[:300]!r}"
        assert list(columns.items()) == list(entries.items())
    return columns is not None


def compact(document: object, ensure_ascii: bool = False) -> bytes:
    raw = json.dumps(document, separators=(",", ":"), ensure_ascii=ensure_ascii).encode()
    return raw + b" " * (-len(raw) % 8)


def entries(*tensors: tuple[str, str, list[int]], metadata: dict | None = None) -> tuple[dict, int]:
    """A header document of back-to-back tensors (name, dtype, shape), and its data size."""
    document: dict[str, object] = {} if metadata is None else {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape in tensors:
        size = int(np.prod(shape)) * SIZES[dtype]
        document[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    return document, offset


THREE = (("a.weight", "F16", [2, 3]), ("a.bias", "F32", [3]), ("b", "BF16", [1, 2]))


# -- what safetensors writes -----------------------------------------------------------------------


def test_what_safetensors_writes_is_read_by_the_column_check():
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


def test_a_full_size_sample_is_read_by_the_column_check(tmp_path):
    path = write_sample(tmp_path / "ssd-1b.safetensors", "ssd-1b", sparse=True)
    with open(path, "rb") as handle:  # the header only: the data is a 4.5 GB hole
        raw = handle.read(struct.unpack("<Q", handle.read(8))[0])
    data_size = path.stat().st_size - 8 - len(raw)
    assert assert_agree(raw, data_size)
    assert list(read_header(path).tensors.items()) == tensors_of(raw, data_size)


@pytest.mark.parametrize("metadata", [None, {}, {"a": "1", "b": ""}, {"__metadata__": "x", "data_offsets": "y"}])
def test_metadata_variants(metadata):
    document, size = entries(*THREE, metadata=metadata)
    assert assert_agree(compact(document), size)
    assert tensors_of(compact(document), size) is not None


# -- everything else -------------------------------------------------------------------------------
def _replace(raw: bytes, old: str, new: str) -> bytes:
    assert old.encode() in raw, old
    return raw.replace(old.encode(), new.encode(), 1)


CANONICAL, SIZE = compact(entries(*THREE, metadata={"k": "v"})[0]), entries(*THREE)[1]
VALID, BROKEN = True, False
HEADERS = {  # name: (header, is it a valid header?)
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


def test_the_reference_header_is_read():
    assert assert_agree(CANONICAL, SIZE)
    assert tensors_of(CANONICAL, SIZE) is not None


@pytest.mark.parametrize("name", HEADERS)
def test_every_header_is_read_or_refused(name):
    raw, valid = HEADERS[name]
    assert_agree(raw, SIZE)
    assert (tensors_of(raw, SIZE) is not None) is valid


def test_offsets_must_stay_inside_the_data_and_may_leave_gaps():
    assert tensors_of(CANONICAL, SIZE - 1) is None
    assert assert_agree(CANONICAL, SIZE + 100)  # bytes after the last tensor are allowed
    gap = _replace(CANONICAL, "[24,28]", "[28,32]")
    assert not assert_agree(gap, SIZE + 4) and tensors_of(gap, SIZE + 4) is not None  # read entry by entry


def test_single_byte_mutations_never_make_the_checks_disagree():
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
    assert taken  # some mutations (in names, say) keep the header well-formed


names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
shapes = st.lists(st.integers(0, 5), max_size=3)
tensors = st.lists(st.tuples(names, st.sampled_from(sorted(SIZES)), shapes), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(tensors=tensors, metadata=st.none() | st.dictionaries(names, names, max_size=3), ascii_only=st.booleans())
def test_generated_headers_agree(tensors, metadata, ascii_only):
    document, size = entries(*tensors, metadata=metadata)
    raw = compact(document, ensure_ascii=ascii_only)
    taken = assert_agree(raw, size)
    tensor_names = [name for name, _, _ in tensors]
    if len(set(tensor_names)) == len(tensor_names) and "__metadata__" not in tensor_names:
        assert taken  # no duplicates: the form safetensors writes, whatever the names
