"""Read every tensor of a safetensors file with bounded memory and report what is wrong with it.

Tensors are read in data-offset order through one reusable buffer (a few MiB), never mapped: a
mapped file counts towards the process's resident memory as pages are touched.  Checks work on the
raw bit patterns (exponent all ones = NaN/Inf, everything but the sign zero = zero), so every
floating dtype safetensors knows is handled the same way, bf16 and fp8 included, without torch.

Problems (non-zero exit): unreadable or inconsistent headers, a file that is not an SDXL-family
checkpoint, layout inconsistencies (UNet, text encoders, VAE, and whether they fit each other),
NaN/Inf values, all-zero blocks (an all-zero VAE decoder is A1111's uniform grey image) and
mixed floating dtypes inside one component.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..arch.classify import block_key, component_of, guess_unet_prefix, structure_problems
from ..arch.detect import VAE_PREFIX, Detection, detect
from ..core.errors import CheckpointError, LayoutError, NotSdxlFamily, error_json
from ..io.dtypes import DTYPES, FLOATS
from ..io.header import SafetensorsHeader, read_header
from ..io.stream import CHUNK_BYTES, TensorReader
from .progress import Progress

# -- per-tensor statistics ------------------------------------------------------------------------


@dataclass
class TensorStats:
    nan: int = 0
    inf: int = 0
    nonzero: bool = False


def scan_chunk(chunk: memoryview | int, dtype: str, stats: TensorStats) -> None:
    """Fold one chunk of a tensor into ``stats``."""
    if isinstance(chunk, int):
        return  # a hole: zeros
    kind = DTYPES[dtype]
    bits = np.frombuffer(chunk, dtype=kind.bits)
    if kind.exponent:  # IEEE-style: exponent all ones is Inf (mantissa zero) or NaN
        special = (bits & kind.exponent) == kind.exponent
        specials = int(np.count_nonzero(special))
        if specials:
            nans = int(np.count_nonzero((bits & kind.magnitude) > kind.exponent))
            stats.nan += nans
            stats.inf += specials - nans
    elif kind.is_float:  # fp8 e4m3fn: no infinities, NaN is S.1111.111
        stats.nan += int(np.count_nonzero((bits & kind.magnitude) == kind.magnitude))
    stats.nonzero = stats.nonzero or bool(np.any(bits & kind.magnitude if kind.is_float else bits))


# -- the report -----------------------------------------------------------------------------------


@dataclass
class VerifyReport:
    path: str
    error: dict[str, Any] | None = None  # the typed error: unreadable, not SDXL, or a refused layout
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    family: str | None = None
    tensors: int = 0
    bytes_scanned: int = 0
    dtypes: dict[str, dict[str, int]] = field(default_factory=dict)
    nonfinite: dict[str, dict[str, int]] = field(default_factory=dict)
    zero_blocks: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.problems

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "error": self.error,
            "problems": self.problems,
            "notes": self.notes,
            "family": self.family,
            "tensors": self.tensors,
            "bytes_scanned": self.bytes_scanned,
            "dtypes": self.dtypes,
            "nonfinite": self.nonfinite,
            "zero_blocks": self.zero_blocks,
        }


def _listing(names: list[str], limit: int = 6) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def verify_file(
    path: str | os.PathLike[str],
    *,
    progress: bool | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    data_only: bool = False,
    label: str | None = None,
) -> VerifyReport:
    """Check one file completely: header, layout, and every byte of every tensor.

    ``data_only`` skips the checkpoint checks, for a part of a diffusers folder (a text encoder …);
    ``label`` then names the component every tensor of the file belongs to.
    """
    report = VerifyReport(str(path))
    try:
        header = read_header(path)
    except CheckpointError as error:
        report.error = error_json(error, path)
        return report
    shapes = header.shapes()
    report.tensors = len(shapes)
    detection: Detection | None = None
    structure: list[str] = []
    try:
        if not data_only:
            detection = detect(shapes)
            report.family = detection.family_name
    except NotSdxlFamily as error:
        report.error = error_json(error, path)
        return report
    except LayoutError as error:
        structure.extend(f"UNet layout: {p}" for p in error.problems)
    if not data_only:
        structure.extend(structure_problems(shapes, detection))
    if structure:  # the extension refuses such a file; the data is still read, to say what else is wrong
        report.error = error_json(LayoutError(structure), path)
        report.problems.extend(structure)
    if detection is not None:
        unet_prefix: str | None = detection.unet_prefix
    else:
        unet_prefix = "" if label == "unet" else guess_unet_prefix(shapes)
    try:
        stats = _scan(header, progress, chunk_bytes, report)
    except CheckpointError as error:
        report.error = error_json(error, path)
        return report
    _judge(header, stats, unet_prefix, report, label)
    return report


def _scan(
    header: SafetensorsHeader,
    progress: bool | None,
    chunk_bytes: int,
    report: VerifyReport,
) -> dict[str, TensorStats]:
    ordered = sorted(header.tensors.items(), key=lambda item: item[1].begin)
    total = sum(info.nbytes for _, info in ordered)
    bar = Progress(total, f"verify {header.path.name}", progress)
    stats: dict[str, TensorStats] = {}
    try:
        with TensorReader(header, chunk_bytes) as reader:
            for name, info in ordered:
                tensor = stats[name] = TensorStats()
                for chunk in reader.chunks(info):
                    scan_chunk(chunk, info.dtype, tensor)
                    size = chunk if isinstance(chunk, int) else len(chunk)
                    report.bytes_scanned += size
                    bar.advance(size)
    except OSError as error:
        raise CheckpointError(header.path, f"cannot be read: {error.strerror or error}") from None
    finally:
        bar.close()
    return stats


def _judge(
    header: SafetensorsHeader,
    stats: dict[str, TensorStats],
    unet_prefix: str | None,
    report: VerifyReport,
    label: str | None = None,
) -> None:
    def part_of(key: str) -> str:
        return label or component_of(key, unet_prefix)

    # NaN / Inf
    bad = {name: s for name, s in stats.items() if s.nan or s.inf}
    report.nonfinite = {name: {"nan": s.nan, "inf": s.inf} for name, s in bad.items()}
    if bad:
        described = [f"{name} ({s.nan} NaN, {s.inf} Inf)" for name, s in bad.items()]
        report.problems.append(f"{len(bad)} tensors hold NaN/Inf: {_listing(described)}")

    # dtypes per component; a mix inside one component is a half-converted file
    by_component: dict[str, Counter[str]] = defaultdict(Counter)
    for name, info in header.tensors.items():
        by_component[part_of(name)][info.dtype] += 1
    report.dtypes = {component: dict(counts) for component, counts in sorted(by_component.items())}
    for component, counts in sorted(by_component.items()):
        floats = {d: n for d, n in counts.items() if d in FLOATS}
        if len(floats) > 1:
            mix = ", ".join(f"{n} {d}" for d, n in sorted(floats.items(), key=lambda x: -x[1]))
            report.problems.append(f"{component} mixes floating dtypes: {mix}")
    floats_used = {d for counts in by_component.values() for d in counts if d in FLOATS}
    if len(floats_used) > 1 and not any("mixes" in p for p in report.problems):
        report.notes.append("components are stored in different dtypes: " + ", ".join(sorted(floats_used)))

    # all-zero blocks
    blocks: dict[str, list[str]] = defaultdict(list)
    for name, info in header.tensors.items():
        if info.nbytes:
            blocks[block_key(name, unet_prefix)].append(name)
    zero = [b for b, names in blocks.items() if not any(stats[n].nonzero for n in names)]
    report.zero_blocks = zero
    if not zero:
        return
    per_component: dict[str, list[str]] = defaultdict(list)
    for block in zero:
        per_component[part_of(blocks[block][0])].append(block)
    totals = Counter(part_of(names[0]) for names in blocks.values())
    for component, names in sorted(per_component.items()):
        if len(names) == totals[component]:
            report.problems.append(
                f"the whole {component} is zeros ({len(names)} blocks): a placeholder or an empty sparse file, "
                "not trained weights"
            )
        else:
            report.problems.append(f"{component}: {len(names)} all-zero blocks: {_listing(names)}")
    decoder = VAE_PREFIX + "decoder."
    decoder_convs = [n for n, i in header.tensors.items() if n.startswith(decoder) and len(i.shape) == 4]
    if decoder_convs and not any(stats[n].nonzero for n in decoder_convs):
        report.problems.append(
            "the VAE decoder's convolutions are all zero: A1111 will decode every image to uniform grey"
        )
