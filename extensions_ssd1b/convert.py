"""Convert diffusers SDXL-family weights into one A1111 single-file checkpoint, streaming.

Sources: a diffusers folder (``unet/``, ``text_encoder/``, ``text_encoder_2/``, ``vae/``), or a
diffusers UNet file plus ``components`` (an SDXL single file that provides the text encoders and
the VAE).  The output is in LDM/SGM naming, so :func:`extensions_ssd1b.detect.detect` and A1111 read
it as any SDXL checkpoint.

Memory stays bounded by a few chunk buffers, whatever the model size: the output header is written
first, from shapes alone, then every tensor is copied chunk by chunk, converting its dtype on the
way.  The file is written under a temporary name in the destination folder and renamed only when
complete, so an interrupted or failed run leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from . import __version__
from .components import (
    CLIP_G_BASE_PREFIX,
    CLIP_G_REFINER_PREFIX,
    CLIP_L_OPTIONAL,
    VAE_LEGACY_ATTENTION_NAMES,
    ComponentLayout,
    Source,
    clip_text_spec_from,
    clip_text_tensors,
    component_problems,
    find_components,
    open_clip_diffusers_tensors,
    open_clip_sources,
    open_clip_spec_from_diffusers,
    text_encoder_fit,
    vae_diffusers_names,
    vae_diffusers_tensors,
    vae_spec_from,
    vae_tensors,
    weight_files,
)
from .detect import CLIP_L_PREFIX, LDM_UNET_PREFIX, VAE_PREFIX, Detection, Form, detect
from .errors import LayoutError, NotSdxlFamily, Ssd1bError
from .layout import Shape, ldm_to_diffusers_names
from .safetensors_header import DTYPE_SIZES, SafetensorsHeader, TensorInfo, read_header
from .samples import TensorSpec, header_bytes
from .verify import Progress, TensorReader

DTYPES = {"fp16": "F16", "bf16": "BF16", "fp32": "F32"}
CASTABLE = frozenset(("F16", "BF16", "F32", "F64"))
CHUNK_BYTES = 4 * 1024 * 1024


class ConvertError(Ssd1bError):
    """The conversion cannot be done as asked; nothing was written."""


class MissingComponents(ConvertError):
    """The sources lack text encoders or a VAE that an A1111 checkpoint needs."""

    def __init__(self, source: Path, missing: list[str]) -> None:
        self.source, self.missing = source, missing
        super().__init__(
            f"{source}: no {', '.join(missing)} to put in the checkpoint; A1111 needs all of them "
            "(give --components FILE, an SDXL single file that has them)"
        )


# -- dtype conversion without torch (numpy only keeps the process small) ---------------------------


def _to_float(chunk: memoryview | bytes, dtype: str) -> np.ndarray:
    if dtype == "BF16":  # bf16 is the top half of an f32
        return (np.frombuffer(chunk, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(chunk, dtype={"F16": "<f2", "F32": "<f4", "F64": "<f8"}[dtype])


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
        return values.astype({"F16": "<f2", "F32": "<f4", "F64": "<f8"}[dtype])


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


# -- writing a safetensors file from shapes -------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(destination: Path, write: Callable[[IO[bytes]], None], *, force: bool = False) -> None:
    """Run ``write`` on a temporary file beside ``destination``, then move it into place.

    On any failure, ``KeyboardInterrupt`` included, the temporary file is removed and
    ``destination`` is untouched.  Without ``force`` an existing destination is never replaced,
    even one that appears while writing.
    """
    if destination.exists() and not force:
        raise ConvertError(f"{destination}: already exists (use --force to replace it)")
    fd, temporary = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".partial")
    try:
        os.chmod(temporary, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        _publish(Path(temporary), destination, force)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _publish(temporary: Path, destination: Path, force: bool) -> None:
    if force:
        os.replace(temporary, destination)
        return
    try:
        os.link(temporary, destination)  # fails if the destination exists, unlike rename
    except FileExistsError:
        raise ConvertError(f"{destination}: appeared while converting; not replaced (use --force)") from None
    except OSError:  # a file system without hard links (FAT, some network shares)
        if destination.exists():
            raise ConvertError(f"{destination}: appeared while converting; not replaced (use --force)") from None
        os.rename(temporary, destination)
        return
    temporary.unlink()


# -- the conversion plan --------------------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    header: SafetensorsHeader
    name: str

    @property
    def info(self) -> TensorInfo:
        return self.header.tensors[self.name]


@dataclass(frozen=True)
class Planned:
    """One output tensor: its LDM name and shape, and the source tensors it is made of."""

    name: str
    shape: Shape
    dtype: str  # of the sources
    pieces: tuple[Piece, ...]
    transpose: bool = False


@dataclass
class ConvertResult:
    destination: Path
    family: str
    tensors: int
    bytes_written: int
    seconds: float
    sources: list[str]
    overflowed: dict[str, int] = field(default_factory=dict)


class _Tensors:
    """Tensors of one source, possibly sharded over several files, by name."""

    def __init__(self, headers: Sequence[SafetensorsHeader], what: str) -> None:
        self.what = what
        self.headers = list(headers)
        self.where: dict[str, SafetensorsHeader] = {}
        self.stored: dict[str, str] = {}  # the name we use → the name in the file (old spellings)
        for header in headers:
            for name in header.tensors:
                if name in self.where:
                    raise ConvertError(f"{header.path}: tensor {name!r} is also in {self.where[name].path}")
                self.where[name] = header
                self.stored[name] = name

    def rename(self, old: str, new: str) -> None:
        self.where[new] = self.where.pop(old)
        self.stored[new] = self.stored.pop(old)

    def shapes(self) -> dict[str, Shape]:
        return {name: header.tensors[self.stored[name]].shape for name, header in self.where.items()}

    def piece(self, name: str) -> Piece:
        if name not in self.where:
            raise ConvertError(f"{self.what}: tensor {name!r} is missing")
        return Piece(self.where[name], self.stored[name])

    def planned(self, ldm_name: str, source: Source | str, shape: Shape | None = None) -> Planned:
        if isinstance(source, str):
            source = Source((source,))
        pieces = tuple(self.piece(n) for n in source.names)
        dtypes = {p.info.dtype for p in pieces}
        if len(dtypes) != 1:
            raise ConvertError(f"{self.what}: {', '.join(source.names)} have different dtypes {sorted(dtypes)}")
        if shape is None:
            first = pieces[0].info.shape
            shape = (sum(p.info.shape[0] for p in pieces), *first[1:]) if len(pieces) > 1 else first
            if source.transpose:
                shape = tuple(reversed(shape))
        return Planned(ldm_name, tuple(shape), dtypes.pop(), pieces, source.transpose)


def _headers(paths: Iterable[Path]) -> list[SafetensorsHeader]:
    return [read_header(p) for p in paths]


def _check(tensors: _Tensors, expected: dict[str, Shape], optional: tuple[str, ...] = ()) -> None:
    component = ComponentLayout(tensors.what, "", None, expected, optional)  # type: ignore[arg-type]
    if problems := component_problems(tensors.shapes(), component):
        raise LayoutError(problems)


def _named(error: Ssd1bError, path: object) -> Ssd1bError:
    """Attach the file an error is about, for messages (the CLI prefixes it)."""
    error.path = str(path)  # type: ignore[attr-defined]
    return error


def _plan_unet(tensors: _Tensors) -> tuple[list[Planned], Detection]:
    try:
        detection = detect(tensors.shapes())
    except (LayoutError, NotSdxlFamily) as error:
        raise _named(error, tensors.what) from None
    if detection.form is Form.SINGLE_FILE:
        raise ConvertError(f"{tensors.what}: already an A1111 single file; nothing to convert")
    names = ldm_to_diffusers_names(detection.layout)
    if detection.form is Form.LDM_UNET:
        names = {ldm: ldm for ldm in names}
    plan = [
        tensors.planned(LDM_UNET_PREFIX + ldm, detection.unet_prefix + diffusers) for ldm, diffusers in names.items()
    ]
    return plan, detection


def _plan_clip_l(tensors: _Tensors) -> list[Planned]:
    expected = clip_text_tensors(clip_text_spec_from(tensors.shapes(), tensors.what))
    _check(tensors, expected, CLIP_L_OPTIONAL)
    names = [n for n in (*expected, *CLIP_L_OPTIONAL) if n in tensors.where]
    return [tensors.planned(CLIP_L_PREFIX + name, name) for name in names]


def _plan_clip_g(tensors: _Tensors, prefix: str) -> list[Planned]:
    spec = open_clip_spec_from_diffusers(tensors.shapes(), tensors.what)
    _check(tensors, open_clip_diffusers_tensors(spec))
    return [tensors.planned(prefix + name, source) for name, source in open_clip_sources(spec).items()]


def _plan_vae(tensors: _Tensors) -> list[Planned]:
    for name in list(tensors.where):
        for new, old in VAE_LEGACY_ATTENTION_NAMES.items():
            if f".attentions.0.{old}" in name:
                tensors.rename(name, name.replace(f".attentions.0.{old}", f".attentions.0.{new}"))
    shapes = tensors.shapes()
    spec = vae_spec_from(shapes, diffusers=True, what=tensors.what)
    expected = vae_diffusers_tensors(spec)
    # Some exports keep the attention projections as 1×1 convolutions: the same bytes.
    flattened = {k: v[:2] if k in expected and len(v) == 4 and len(expected[k]) == 2 else v for k, v in shapes.items()}
    component = ComponentLayout(tensors.what, "", spec, expected)
    if problems := component_problems(flattened, component):
        raise LayoutError(problems)
    ldm_shapes = vae_tensors(spec)
    plan = []
    for ldm, diffusers in vae_diffusers_names(spec).items():
        piece = tensors.piece(diffusers)
        plan.append(Planned(VAE_PREFIX + ldm, ldm_shapes[ldm], piece.info.dtype, (piece,)))
    return plan


def _plan_components_file(header: SafetensorsHeader) -> tuple[list[Planned], dict[str, bool]]:
    """Text encoders and VAE copied as they are from an SDXL single file."""
    shapes = header.shapes()
    components, problems = find_components(shapes)
    for component in components:
        problems.extend(component_problems(shapes, component))
    if problems:
        raise LayoutError([f"{header.path}: {p}" for p in problems])
    prefixes = [c.prefix for c in components]
    plan = [
        Planned(name, info.shape, info.dtype, (Piece(header, name),))
        for name, info in header.tensors.items()
        if name.startswith(tuple(prefixes))
    ]
    found = {c.name: True for c in components}
    return plan, found


def _folder_part(root: Path, name: str, stem: str, dtype: str, variant: str | None) -> _Tensors | None:
    folder = root / name
    if not folder.is_dir():
        return None
    return _Tensors(_headers(weight_files(folder, stem, dtype, variant)), f"{folder}")


@dataclass
class Plan:
    tensors: list[Planned]
    detection: Detection
    sources: list[str]


def plan_conversion(source: Path, components: Path | None, dtype: str, variant: str | None = None) -> Plan:
    """Decide every output tensor and where it comes from, reading headers only.

    ``dtype`` is the output's (it picks the weight variant of a folder) and ``variant`` a weight
    variant to prefer over that ("fp16", "" for the plain files)."""
    sources: list[str] = []
    parts: dict[str, _Tensors | None] = {}
    if source.is_dir():
        unet = _folder_part(source, "unet", "diffusion_pytorch_model", dtype, variant)
        if unet is None:
            raise ConvertError(f"{source}: not a diffusers folder (no unet/ subfolder)")
        parts["clip_l"] = _folder_part(source, "text_encoder", "model", dtype, variant)
        parts["clip_g"] = _folder_part(source, "text_encoder_2", "model", dtype, variant)
        parts["vae"] = _folder_part(source, "vae", "diffusion_pytorch_model", dtype, variant)
    elif source.is_file():
        unet = _Tensors([read_header(source)], str(source))
        parts = {"clip_l": None, "clip_g": None, "vae": None}
    else:
        raise ConvertError(f"{source}: no such file or folder")
    plan, detection = _plan_unet(unet)
    sources.extend(str(h.path) for h in unet.headers)

    # The refiner has OpenCLIP alone, as wide as the UNet's cross-attention, at embedders.0.
    clip_g = parts.get("clip_g")
    g_width = open_clip_spec_from_diffusers(clip_g.shapes(), clip_g.what).width if clip_g else None
    refiner = parts.get("clip_l") is None and g_width == detection.layout.context_dim
    have: dict[str, bool] = {}
    if parts["clip_l"] is not None and not refiner:
        plan += _plan_clip_l(parts["clip_l"])
        have["CLIP-L"] = True
    if parts["clip_g"] is not None:
        plan += _plan_clip_g(parts["clip_g"], CLIP_G_REFINER_PREFIX if refiner else CLIP_G_BASE_PREFIX)
        have["OpenCLIP-bigG"] = True
    if parts["vae"] is not None:
        plan += _plan_vae(parts["vae"])
        have["VAE"] = True
    for part in parts.values():
        if part is not None:
            sources.extend(str(h.path) for h in part.headers)
    if components is not None:
        header = read_header(components)
        extra, found = _plan_components_file(header)
        taken = [p for p in extra if _component_name(p.name) not in have]
        plan += taken
        have.update({name: True for name in found if name not in have})
        sources.append(str(components))

    missing = [n for n in ("CLIP-L", "OpenCLIP-bigG", "VAE") if n not in have]
    if refiner and "CLIP-L" in missing:
        missing.remove("CLIP-L")
    if missing:
        raise MissingComponents(source, missing)
    shapes = {p.name: p.shape for p in plan}
    if problems := text_encoder_fit(shapes, detection.layout):
        raise _named(LayoutError(problems), source)
    return Plan(plan, detection, sources)


def _component_name(name: str) -> str:
    if name.startswith(CLIP_L_PREFIX):
        return "CLIP-L"
    if name.startswith(VAE_PREFIX):
        return "VAE"
    return "OpenCLIP-bigG"


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
    source_size, target_size = DTYPE_SIZES[planned.dtype], DTYPE_SIZES[output_dtype(planned.dtype, target)]
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
    target = DTYPES[dtype]
    source, destination = Path(source), Path(destination)
    components = Path(components) if components is not None else None
    if destination.suffix != ".safetensors":
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
        "ssd1b.converted_from": json.dumps([str(source)]),
        "ssd1b.source_files": json.dumps(plan.sources),
    }
    if components is not None:
        metadata["ssd1b.components_from"] = str(components)
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

    def write(out: IO[bytes]) -> None:
        readers: dict[Path, TensorReader] = {}
        bar = Progress(total_in, f"convert → {destination.name}", progress)
        try:
            out.write(header)
            for planned in ordered:
                if lost := _copy(planned, target, out, readers, bar):
                    overflowed[planned.name] = lost
            out.truncate(len(header) + data_size)  # trailing holes still count towards the size
        finally:
            bar.close()
            for reader in readers.values():
                reader.close()

    atomic_write(destination, write, force=force)
    return ConvertResult(
        destination, family, len(specs), len(header) + data_size, time.monotonic() - started, plan.sources, overflowed
    )
