"""Key layouts (names and shapes) of the non-UNet parts of an A1111 SDXL single file.

An SDXL checkpoint carries, besides the UNet, CLIP-L (``transformers`` ``CLIPTextModel`` naming under
``conditioner.embedders.0.transformer.``), the OpenCLIP-bigG text tower (``open_clip`` naming under
``conditioner.embedders.1.model.``; the refiner has it alone, at ``embedders.0``) and the KL VAE
(LDM naming under ``first_stage_model.``).  As for the UNet, every layout here is generated from a
small spec (width, layers …), and the diffusers name of each tensor comes from the same generator,
so sample files, verification and conversion agree by construction.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.errors import LayoutError
from .detect import CLIP_G_PREFIXES, CLIP_L_PREFIX, VAE_PREFIX, compare_shapes
from .layout import Shape, UNetLayout

ShapeMap = Mapping[str, Sequence[int]]

CLIP_G_BASE_PREFIX, CLIP_G_REFINER_PREFIX = CLIP_G_PREFIXES

# SGM's vector conditioner: each size/crop/target (or aesthetic-score) scalar is embedded to 256 values.
ADM_SCALAR_WIDTH = 256
ADM_SCALARS_BASE = 6  # original size (2), crop (2), target size (2)
ADM_SCALARS_REFINER = 5  # original size (2), crop (2), aesthetic score (1)

# Tensors a real file may or may not carry; neither changes what the model computes.
CLIP_L_OPTIONAL = ("text_model.embeddings.position_ids",)  # an int64 buffer, persistent in old transformers
OPEN_CLIP_OPTIONAL = ("logit_scale",)  # used only for image-text similarity, not for conditioning


@dataclass(frozen=True)
class ClipTextSpec:
    """A CLIP text transformer (CLIP-L for SDXL's first text encoder)."""

    width: int = 768
    layers: int = 12
    mlp: int = 3072
    vocab: int = 49408
    context: int = 77


@dataclass(frozen=True)
class OpenClipTextSpec:
    """An OpenCLIP text tower (OpenCLIP ViT-bigG/14 for SDXL)."""

    width: int = 1280
    layers: int = 32
    mlp: int = 5120
    vocab: int = 49408
    context: int = 77
    projection: int = 1280


@dataclass(frozen=True)
class VaeSpec:
    """The LDM/SGM ``AutoencoderKL`` (SD and SDXL share this shape)."""

    channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    res_blocks: int = 2
    z_channels: int = 4
    in_channels: int = 3
    out_channels: int = 3


SDXL_CLIP_L = ClipTextSpec()
SDXL_CLIP_G = OpenClipTextSpec()
SDXL_VAE = VaeSpec()


# -- CLIP-L (transformers naming, identical in A1111 files and diffusers' text_encoder/) ------------


def clip_text_tensors(spec: ClipTextSpec) -> dict[str, Shape]:
    """``CLIPTextModel`` tensors (names relative to ``conditioner.embedders.0.transformer.``)."""
    w = spec.width
    shapes: dict[str, Shape] = {
        "text_model.embeddings.token_embedding.weight": (spec.vocab, w),
        "text_model.embeddings.position_embedding.weight": (spec.context, w),
    }
    for i in range(spec.layers):
        layer = f"text_model.encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            shapes[f"{layer}self_attn.{proj}.weight"] = (w, w)
            shapes[f"{layer}self_attn.{proj}.bias"] = (w,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[f"{layer}{norm}.weight"] = (w,)
            shapes[f"{layer}{norm}.bias"] = (w,)
        shapes[f"{layer}mlp.fc1.weight"] = (spec.mlp, w)
        shapes[f"{layer}mlp.fc1.bias"] = (spec.mlp,)
        shapes[f"{layer}mlp.fc2.weight"] = (w, spec.mlp)
        shapes[f"{layer}mlp.fc2.bias"] = (w,)
    shapes["text_model.final_layer_norm.weight"] = (w,)
    shapes["text_model.final_layer_norm.bias"] = (w,)
    return shapes


# -- OpenCLIP-bigG --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """How one tensor of the LDM file is made from diffusers tensors.

    ``names`` are concatenated along dim 0 in order (q, k, v into ``in_proj_weight``); ``transpose``
    swaps the two axes of a 2-D tensor; anything else (a reshape to 1×1 conv) keeps the bytes as they
    are, because row-major order is unchanged.
    """

    names: tuple[str, ...]
    transpose: bool = False


def open_clip_tensors(spec: OpenClipTextSpec) -> dict[str, Shape]:
    """open_clip text-tower tensors (names relative to ``conditioner.embedders.1.model.``)."""
    w = spec.width
    shapes: dict[str, Shape] = {
        "ln_final.weight": (w,),
        "ln_final.bias": (w,),
        "logit_scale": (),
        "positional_embedding": (spec.context, w),
        "text_projection": (w, spec.projection),
        "token_embedding.weight": (spec.vocab, w),
    }
    for i in range(spec.layers):
        block = f"transformer.resblocks.{i}."
        shapes[f"{block}attn.in_proj_weight"] = (3 * w, w)
        shapes[f"{block}attn.in_proj_bias"] = (3 * w,)
        shapes[f"{block}attn.out_proj.weight"] = (w, w)
        shapes[f"{block}attn.out_proj.bias"] = (w,)
        for norm in ("ln_1", "ln_2"):
            shapes[f"{block}{norm}.weight"] = (w,)
            shapes[f"{block}{norm}.bias"] = (w,)
        shapes[f"{block}mlp.c_fc.weight"] = (spec.mlp, w)
        shapes[f"{block}mlp.c_fc.bias"] = (spec.mlp,)
        shapes[f"{block}mlp.c_proj.weight"] = (w, spec.mlp)
        shapes[f"{block}mlp.c_proj.bias"] = (w,)
    return shapes


def open_clip_diffusers_tensors(spec: OpenClipTextSpec) -> dict[str, Shape]:
    """The same tower as diffusers' ``CLIPTextModelWithProjection`` (text_encoder_2/)."""
    shapes = clip_text_tensors(ClipTextSpec(spec.width, spec.layers, spec.mlp, spec.vocab, spec.context))
    shapes["text_projection.weight"] = (spec.projection, spec.width)
    return shapes


def open_clip_sources(spec: OpenClipTextSpec) -> dict[str, Source]:
    """open_clip name → the diffusers tensors it is made from (``logit_scale`` has no diffusers twin)."""
    sources = {
        "ln_final.weight": Source(("text_model.final_layer_norm.weight",)),
        "ln_final.bias": Source(("text_model.final_layer_norm.bias",)),
        "positional_embedding": Source(("text_model.embeddings.position_embedding.weight",)),
        # open_clip computes x @ text_projection; nn.Linear computes x @ weight.T.
        "text_projection": Source(("text_projection.weight",), transpose=True),
        "token_embedding.weight": Source(("text_model.embeddings.token_embedding.weight",)),
    }
    renames = (
        ("attn.out_proj", "self_attn.out_proj"),
        ("ln_1", "layer_norm1"),
        ("ln_2", "layer_norm2"),
        ("mlp.c_fc", "mlp.fc1"),
        ("mlp.c_proj", "mlp.fc2"),
    )
    for i in range(spec.layers):
        block, layer = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            qkv = tuple(f"{layer}self_attn.{p}_proj.{kind}" for p in "qkv")
            sources[f"{block}attn.in_proj_{kind}"] = Source(qkv)
            for ours, theirs in renames:
                sources[f"{block}{ours}.{kind}"] = Source((f"{layer}{theirs}.{kind}",))
    return sources


# -- VAE ------------------------------------------------------------------------------------------


def _vae_resnet(ldm: str, diffusers: str, cin: int, cout: int) -> Iterator[tuple[str, str, Shape]]:
    yield f"{ldm}norm1.weight", f"{diffusers}norm1.weight", (cin,)
    yield f"{ldm}norm1.bias", f"{diffusers}norm1.bias", (cin,)
    yield f"{ldm}conv1.weight", f"{diffusers}conv1.weight", (cout, cin, 3, 3)
    yield f"{ldm}conv1.bias", f"{diffusers}conv1.bias", (cout,)
    yield f"{ldm}norm2.weight", f"{diffusers}norm2.weight", (cout,)
    yield f"{ldm}norm2.bias", f"{diffusers}norm2.bias", (cout,)
    yield f"{ldm}conv2.weight", f"{diffusers}conv2.weight", (cout, cout, 3, 3)
    yield f"{ldm}conv2.bias", f"{diffusers}conv2.bias", (cout,)
    if cin != cout:
        yield f"{ldm}nin_shortcut.weight", f"{diffusers}conv_shortcut.weight", (cout, cin, 1, 1)
        yield f"{ldm}nin_shortcut.bias", f"{diffusers}conv_shortcut.bias", (cout,)


def _vae_conv(ldm: str, diffusers: str, cin: int, cout: int, k: int) -> Iterator[tuple[str, str, Shape]]:
    yield f"{ldm}weight", f"{diffusers}weight", (cout, cin, k, k)
    yield f"{ldm}bias", f"{diffusers}bias", (cout,)


def _vae_mid(side: str, c: int) -> Iterator[tuple[str, str, Shape]]:
    yield from _vae_resnet(f"{side}.mid.block_1.", f"{side}.mid_block.resnets.0.", c, c)
    attn, ours = f"{side}.mid.attn_1.", f"{side}.mid_block.attentions.0."
    yield f"{attn}norm.weight", f"{ours}group_norm.weight", (c,)
    yield f"{attn}norm.bias", f"{ours}group_norm.bias", (c,)
    # LDM stores the attention projections as 1×1 convolutions, diffusers as Linear: same bytes.
    for ldm, diffusers in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        yield f"{attn}{ldm}.weight", f"{ours}{diffusers}.weight", (c, c, 1, 1)
        yield f"{attn}{ldm}.bias", f"{ours}{diffusers}.bias", (c,)
    yield from _vae_resnet(f"{side}.mid.block_2.", f"{side}.mid_block.resnets.1.", c, c)


def _vae_plan(spec: VaeSpec) -> Iterator[tuple[str, str, Shape]]:
    """(LDM name, diffusers name, LDM shape) of every VAE tensor, in LDM module order."""
    ch, mult, levels = spec.channels, spec.channel_mult, len(spec.channel_mult)
    yield from _vae_conv("encoder.conv_in.", "encoder.conv_in.", spec.in_channels, ch, 3)
    width = ch
    for level in range(levels):
        out = ch * mult[level]
        for j in range(spec.res_blocks):
            ldm, diffusers = f"encoder.down.{level}.block.{j}.", f"encoder.down_blocks.{level}.resnets.{j}."
            yield from _vae_resnet(ldm, diffusers, width, out)
            width = out
        if level != levels - 1:
            down = f"encoder.down_blocks.{level}.downsamplers.0.conv."
            yield from _vae_conv(f"encoder.down.{level}.downsample.conv.", down, width, width, 3)
    yield from _vae_mid("encoder", width)
    yield "encoder.norm_out.weight", "encoder.conv_norm_out.weight", (width,)
    yield "encoder.norm_out.bias", "encoder.conv_norm_out.bias", (width,)
    yield from _vae_conv("encoder.conv_out.", "encoder.conv_out.", width, 2 * spec.z_channels, 3)

    width = ch * mult[-1]
    yield from _vae_conv("decoder.conv_in.", "decoder.conv_in.", spec.z_channels, width, 3)
    yield from _vae_mid("decoder", width)
    for level in reversed(range(levels)):
        out = ch * mult[level]
        position = levels - 1 - level  # diffusers numbers up blocks deep to shallow
        for j in range(spec.res_blocks + 1):
            ldm, diffusers = f"decoder.up.{level}.block.{j}.", f"decoder.up_blocks.{position}.resnets.{j}."
            yield from _vae_resnet(ldm, diffusers, width, out)
            width = out
        if level != 0:
            up = f"decoder.up_blocks.{position}.upsamplers.0.conv."
            yield from _vae_conv(f"decoder.up.{level}.upsample.conv.", up, width, width, 3)
    yield "decoder.norm_out.weight", "decoder.conv_norm_out.weight", (width,)
    yield "decoder.norm_out.bias", "decoder.conv_norm_out.bias", (width,)
    yield from _vae_conv("decoder.conv_out.", "decoder.conv_out.", width, spec.out_channels, 3)
    z2 = 2 * spec.z_channels
    yield from _vae_conv("quant_conv.", "quant_conv.", z2, z2, 1)
    yield from _vae_conv("post_quant_conv.", "post_quant_conv.", spec.z_channels, spec.z_channels, 1)


def vae_tensors(spec: VaeSpec) -> dict[str, Shape]:
    """VAE tensors in LDM naming (relative to ``first_stage_model.``)."""
    return {ldm: shape for ldm, _, shape in _vae_plan(spec)}


def vae_diffusers_names(spec: VaeSpec) -> dict[str, str]:
    """LDM VAE name → diffusers ``AutoencoderKL`` name."""
    return {ldm: diffusers for ldm, diffusers, _ in _vae_plan(spec)}


def vae_diffusers_tensors(spec: VaeSpec) -> dict[str, Shape]:
    """VAE tensors as diffusers stores them (attention projections as 2-D Linear weights)."""
    shapes = {}
    for _, diffusers, shape in _vae_plan(spec):
        linear = ".attentions.0.to_" in diffusers and len(shape) == 4
        shapes[diffusers] = shape[:2] if linear else shape
    return shapes


# Old diffusers VAE files (before 0.14) name the mid-block attention differently.
VAE_LEGACY_ATTENTION_NAMES = {"to_q.": "query.", "to_k.": "key.", "to_v.": "value.", "to_out.0.": "proj_attn."}


# -- specs from shapes ----------------------------------------------------------------------------


def _count(keys: Sequence[str], pattern: str) -> int:
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := regex.match(k))}
    return max(found) + 1 if found else 0


def _dim(shapes: ShapeMap, key: str, axis: int, what: str) -> int:
    shape = shapes.get(key)
    if shape is None or len(shape) <= axis:
        raise LayoutError([f"{what}: {key} is missing or has the wrong rank"])
    return int(shape[axis])


def clip_text_spec_from(shapes: ShapeMap, what: str = "CLIP-L") -> ClipTextSpec:
    """Read a CLIP text spec off transformers-named tensors (no prefix)."""
    vocab = _dim(shapes, "text_model.embeddings.token_embedding.weight", 0, what)
    width = _dim(shapes, "text_model.embeddings.token_embedding.weight", 1, what)
    context = _dim(shapes, "text_model.embeddings.position_embedding.weight", 0, what)
    mlp = _dim(shapes, "text_model.encoder.layers.0.mlp.fc1.weight", 0, what)
    layers = _count(list(shapes), r"text_model\.encoder\.layers\.(\d+)\.")
    return ClipTextSpec(width, layers, mlp, vocab, context)


def open_clip_spec_from(shapes: ShapeMap, what: str = "OpenCLIP-bigG") -> OpenClipTextSpec:
    """Read an OpenCLIP spec off open_clip-named tensors (no prefix)."""
    vocab = _dim(shapes, "token_embedding.weight", 0, what)
    width = _dim(shapes, "token_embedding.weight", 1, what)
    context = _dim(shapes, "positional_embedding", 0, what)
    mlp = _dim(shapes, "transformer.resblocks.0.mlp.c_fc.weight", 0, what)
    projection = _dim(shapes, "text_projection", 1, what)
    layers = _count(list(shapes), r"transformer\.resblocks\.(\d+)\.")
    return OpenClipTextSpec(width, layers, mlp, vocab, context, projection)


def open_clip_spec_from_diffusers(shapes: ShapeMap, what: str = "text_encoder_2") -> OpenClipTextSpec:
    clip = clip_text_spec_from(shapes, what)
    projection = _dim(shapes, "text_projection.weight", 0, what)
    return OpenClipTextSpec(clip.width, clip.layers, clip.mlp, clip.vocab, clip.context, projection)


def vae_spec_from(shapes: ShapeMap, diffusers: bool = False, what: str = "VAE") -> VaeSpec:
    """Read a VAE spec off LDM- (or diffusers-) named tensors (no prefix)."""
    down, block, conv1 = ("down_blocks", "resnets", "conv1") if diffusers else ("down", "block", "conv1")
    channels = _dim(shapes, "encoder.conv_in.weight", 0, what)
    in_channels = _dim(shapes, "encoder.conv_in.weight", 1, what)
    levels = _count(list(shapes), rf"encoder\.{down}\.(\d+)\.")
    res_blocks = _count(list(shapes), rf"encoder\.{down}\.0\.{block}\.(\d+)\.")
    mult = []
    for level in range(levels):
        width = _dim(shapes, f"encoder.{down}.{level}.{block}.0.{conv1}.weight", 0, what)
        if width % channels:
            raise LayoutError([f"{what}: encoder level {level} is {width} wide, not a multiple of {channels}"])
        mult.append(width // channels)
    z = _dim(shapes, "post_quant_conv.weight", 0, what)
    out_channels = _dim(shapes, "decoder.conv_out.weight", 0, what)
    return VaeSpec(channels, tuple(mult), res_blocks, z, in_channels, out_channels)


# -- whole components inside a single file --------------------------------------------------------


@dataclass(frozen=True)
class ComponentLayout:
    """One non-UNet component found in a single file, with the spec read from it."""

    name: str  # "CLIP-L" | "OpenCLIP-bigG" | "VAE"
    prefix: str
    spec: ClipTextSpec | OpenClipTextSpec | VaeSpec
    expected: dict[str, Shape]  # relative names
    optional: tuple[str, ...] = ()
    found: Mapping[str, Shape] | None = None  # the file's tensors under ``prefix``, when already split


_COMPONENT_PREFIXES = (CLIP_L_PREFIX, CLIP_G_BASE_PREFIX, CLIP_G_REFINER_PREFIX, VAE_PREFIX)


def split_components(shapes: ShapeMap) -> dict[str, dict[str, Shape]]:
    """The file's tensors under each component prefix (prefix stripped), in one pass over the keys."""
    parts: dict[str, dict[str, Shape]] = {prefix: {} for prefix in _COMPONENT_PREFIXES}
    for key, shape in shapes.items():
        if not key.startswith(("conditioner.", VAE_PREFIX)):  # most keys are the UNet's
            continue
        for prefix in _COMPONENT_PREFIXES:
            if key.startswith(prefix):
                parts[prefix][key[len(prefix) :]] = tuple(shape)
                break
    return parts


def find_components(shapes: ShapeMap) -> tuple[list[ComponentLayout], list[str]]:
    """The text encoders and VAE of an LDM single file, and problems that keep one from being read."""
    found: list[ComponentLayout] = []
    problems: list[str] = []
    readers = (
        ("CLIP-L", CLIP_L_PREFIX, lambda s: clip_text_spec_from(s), clip_text_tensors, CLIP_L_OPTIONAL),
        ("OpenCLIP-bigG", CLIP_G_BASE_PREFIX, open_clip_spec_from, open_clip_tensors, OPEN_CLIP_OPTIONAL),
        ("OpenCLIP-bigG", CLIP_G_REFINER_PREFIX, open_clip_spec_from, open_clip_tensors, OPEN_CLIP_OPTIONAL),
        ("VAE", VAE_PREFIX, lambda s: vae_spec_from(s), vae_tensors, ()),
    )
    parts = split_components(shapes)
    for name, prefix, read_spec, generate, optional in readers:
        part = parts[prefix]
        if not part:
            continue
        try:
            spec = read_spec(part)
        except LayoutError as error:
            problems.extend(f"{name} ({prefix}): {p}" for p in error.problems)
            continue
        found.append(ComponentLayout(name, prefix, spec, _generated(generate, spec), optional, part))
    return found, problems


@functools.lru_cache(maxsize=16)
def _generated(generate: Any, spec: Any) -> dict[str, Shape]:
    """A generated layout, computed once per spec (callers only read it)."""
    return generate(spec)


def strip_prefix(shapes: ShapeMap, prefix: str) -> dict[str, Shape]:
    return {k[len(prefix) :]: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}


def component_problems(shapes: ShapeMap, component: ComponentLayout) -> list[str]:
    """Missing, unexpected and mis-shaped tensors of one component, against its generated layout."""
    found = component.found if component.found is not None else strip_prefix(shapes, component.prefix)
    actual = {k: v for k, v in found.items() if k not in component.optional}
    expected = {k: v for k, v in component.expected.items() if k not in component.optional}
    return [f"{component.name}: {problem}" for problem in compare_shapes(expected, actual, what="", group=module_group)]


_NUMBERED_MODULE = re.compile(r"^(.*\.\d+)\.")


def module_group(name: str) -> str:
    """The numbered layer a tensor belongs to ("text_model.encoder.layers.3"), else its module."""
    if m := _NUMBERED_MODULE.match(name):
        return m.group(1)
    return name.rsplit(".", 1)[0] if "." in name else name


def text_encoder_fit(shapes: ShapeMap, layout: UNetLayout) -> list[str]:
    """Why the text encoders in ``shapes`` cannot condition a UNet of ``layout`` (empty when they can)."""
    clip_l = shapes.get(CLIP_L_PREFIX + "text_model.final_layer_norm.weight")
    refiner = CLIP_G_REFINER_PREFIX + "text_projection" in shapes and clip_l is None
    g_prefix = CLIP_G_REFINER_PREFIX if refiner else CLIP_G_BASE_PREFIX
    projection = shapes.get(g_prefix + "text_projection")
    if projection is None or len(projection) != 2:
        return []  # no OpenCLIP tower: nothing to check against (a bare UNet or a partial file)
    width = int(projection[0]) + (int(clip_l[0]) if clip_l else 0)
    problems = []
    if width != layout.context_dim:
        parts = f"CLIP-L {int(clip_l[0])} + " if clip_l else ""
        problems.append(
            f"text encoders give {parts}OpenCLIP {int(projection[0])} = {width} wide tokens, "
            f"but the UNet cross-attends to {layout.context_dim}"
        )
    scalars = ADM_SCALARS_REFINER if refiner else ADM_SCALARS_BASE
    adm = int(projection[1]) + scalars * ADM_SCALAR_WIDTH
    if adm != layout.adm_in_channels:
        problems.append(
            f"pooled text ({int(projection[1])}) + {scalars}×{ADM_SCALAR_WIDTH} size embeddings = {adm}, "
            f"but the UNet's label_emb takes {layout.adm_in_channels}"
        )
    return problems


def single_file_component_shapes(
    clip_l: ClipTextSpec | None = SDXL_CLIP_L,
    clip_g: OpenClipTextSpec | None = SDXL_CLIP_G,
    vae: VaeSpec | None = SDXL_VAE,
    refiner: bool = False,
) -> dict[str, Shape]:
    """Every non-UNet tensor of a single file, prefixed as A1111/SGM stores them."""
    shapes: dict[str, Shape] = {}
    if clip_l is not None:
        shapes.update({CLIP_L_PREFIX + k: v for k, v in clip_text_tensors(clip_l).items()})
    if clip_g is not None:
        prefix = CLIP_G_REFINER_PREFIX if refiner else CLIP_G_BASE_PREFIX
        shapes.update({prefix + k: v for k, v in open_clip_tensors(clip_g).items()})
    if vae is not None:
        shapes.update({VAE_PREFIX + k: v for k, v in vae_tensors(vae).items()})
    return shapes
