"""Plan a diffusers SDXL-family model as an A1111 single file: each LDM-named tensor and the source tensors behind it.

Sources: a diffusers folder (``unet/``, ``text_encoder/``, ``text_encoder_2/``, ``vae/``), or a
diffusers UNet file plus ``components`` (an SDXL single file that provides the text encoders and
the VAE).  The plan is made from headers alone: the UNet renamed to LDM names, CLIP-L as it is,
OpenCLIP's q/k/v joined and its projection transposed, the VAE renamed.  ``convert`` writes it to
a file; a diffusers folder picked in the webui is loaded from it directly (:mod:`.pipeline`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..arch.components import (
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
)
from ..arch.detect import CLIP_L_PREFIX, LDM_UNET_PREFIX, VAE_PREFIX, Detection, Form, detect
from ..arch.layout import Shape, ldm_to_diffusers_names
from ..core.errors import LayoutError, NotSdxlFamily, Ssd1bError
from ..io.header import SafetensorsHeader, TensorInfo, read_header
from .folder import weight_files


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
