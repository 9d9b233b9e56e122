"""Convert diffusers SDXL-family weights into one A1111 single-file checkpoint, streaming.

The plan (:mod:`extensions_ssd1b.diffusers.plan`) says which source tensors make each LDM-named
output tensor.  Memory stays bounded by a few chunk buffers, whatever the model size: the output
header is written first, from shapes alone, then every tensor is copied chunk by chunk, converting
its dtype on the way.  The file is written under a temporary name in the destination folder and
renamed only when complete, so an interrupted or failed run leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from .. import __version__
from ..diffusers.plan import ConvertError, Planned, plan_conversion
from ..io.cast import cast, output_dtype
from ..io.dtypes import BY_VARIANT, SIZES
from ..io.header import is_safetensors_name
from ..io.stream import TensorReader
from ..io.write import TensorSpec, header_bytes, write_safetensors
from .progress import Progress

CHUNK_BYTES = 4 * 1024 * 1024
DTYPES = ("fp16", "bf16", "fp32")  # what --dtype offers


@dataclass
class ConvertResult:
    """What was written, from what, and how many values overflowed the output dtype (per tensor)."""

    destination: Path
    family: str
    tensors: int
    bytes_written: int
    seconds: float
    sources: list[str]
    overflowed: dict[str, int] = field(default_factory=dict)


# -- copying --------------------------------------------------------------------------------------


def _copy(
    planned: Planned,
    target: str,
    out: IO[bytes],
    readers: dict[Path, TensorReader],
    progress: Progress,
) -> int:
    """Write one output tensor; returns how many values overflowed the target dtype."""
    overflowed = 0
    source_size, target_size = SIZES[planned.dtype], SIZES[output_dtype(planned.dtype, target)]
    for piece in planned.pieces:
        reader = readers.get(piece.header.path)
        if reader is None:
            reader = readers[piece.header.path] = TensorReader(piece.header, CHUNK_BYTES)
        if planned.transpose:
            # Only the text projection (1280×1280) is transposed; it is read whole.
            raw = b"".join(bytes(c) for c in reader.chunks(piece.info))  # bytes(int) is that many zeros
            rows, cols = piece.info.shape
            matrix, lost = cast(raw, planned.dtype, target)
            data = np.frombuffer(matrix, dtype=f"u{target_size}").reshape(rows, cols).T.copy()
            out.write(data.tobytes())
            overflowed += lost
            progress.advance(len(raw))
            continue
        for chunk in reader.chunks(piece.info):
            if isinstance(chunk, int):  # a hole reads as zeros, and zero is zero in every dtype
                out.seek(chunk // source_size * target_size, os.SEEK_CUR)
                progress.advance(chunk)
                continue
            converted, lost = cast(chunk, planned.dtype, target)
            out.write(converted)
            overflowed += lost
            progress.advance(len(chunk))
    return overflowed


def _shareable_name(path: str, source: Path) -> str:
    """``path`` as metadata may show it: relative to the source folder ("unet/…"), else the file's name."""
    file = Path(path)
    if source.is_dir() and file.is_relative_to(source):
        return file.relative_to(source).as_posix()
    return file.name


def convert(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    components: str | os.PathLike[str] | None = None,
    dtype: str = "fp16",
    force: bool = False,
    progress: bool | None = None,
) -> ConvertResult:
    """Convert ``source`` into the A1111 single file ``destination`` (see the module docstring)."""
    started = time.monotonic()
    if dtype not in DTYPES:
        raise ConvertError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    target = BY_VARIANT[dtype]
    source, destination = Path(source), Path(destination)
    components = Path(components) if components is not None else None
    if not is_safetensors_name(destination):
        raise ConvertError(f"{destination}: the output must be a .safetensors file")
    if destination.is_dir():
        raise ConvertError(f"{destination}: is a folder; give the output file name")
    if not destination.parent.is_dir():
        raise ConvertError(f"{destination.parent}: no such folder")
    if destination.exists() and not force:
        raise ConvertError(f"{destination}: already exists (use --force to replace it)")

    plan = plan_conversion(source, components, target)
    for path in plan.sources:
        if destination.exists() and os.path.samefile(path, destination):
            raise ConvertError(f"{destination}: is one of the sources")
    family = plan.detection.family_key
    metadata = {
        "format": "pt",
        "ssd1b.tool": f"sd-webui-ssd1b {__version__} convert",
        "ssd1b.family": family,
        "ssd1b.dtype": dtype,
        # names only, relative to what was given: an absolute path would publish the home folder
        "ssd1b.converted_from": json.dumps([source.name]),
        "ssd1b.source_files": json.dumps([_shareable_name(path, source) for path in plan.sources]),
    }
    if components is not None:
        metadata["ssd1b.components_from"] = components.name
    # Read in source order: sequential on disk, whatever order the output uses.
    order = {path: i for i, path in enumerate(dict.fromkeys(p.pieces[0].header.path for p in plan.tensors))}
    ordered = sorted(plan.tensors, key=lambda p: (order[p.pieces[0].header.path], p.pieces[0].info.begin))
    specs = [TensorSpec(p.name, output_dtype(p.dtype, target), p.shape) for p in ordered]
    header, data_size = header_bytes(specs, metadata)
    free, needed = shutil.disk_usage(destination.parent).free, len(header) + data_size
    if free < needed:
        raise ConvertError(f"{destination.parent}: {free / 1e9:.2f} GB free, the output needs {needed / 1e9:.2f} GB")
    total_in = sum(p.info.nbytes for planned in ordered for p in planned.pieces)
    overflowed: dict[str, int] = {}

    def write_data(out: IO[bytes]) -> None:
        readers: dict[Path, TensorReader] = {}
        bar = Progress(total_in, f"convert → {destination.name}", progress)
        try:
            for planned in ordered:
                if lost := _copy(planned, target, out, readers, bar):
                    overflowed[planned.name] = lost
        finally:
            bar.close()
            for reader in readers.values():
                reader.close()

    try:
        write_safetensors(destination, specs, write_data, metadata=metadata, replace=force)
    except FileExistsError:
        raise ConvertError(f"{destination}: appeared while converting; not replaced (use --force)") from None
    return ConvertResult(
        destination, family, len(specs), len(header) + data_size, time.monotonic() - started, plan.sources, overflowed
    )
