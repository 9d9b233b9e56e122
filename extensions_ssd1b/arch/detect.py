"""Detect the UNet layout of a checkpoint from tensor names and shapes alone.

The method is ComfyUI's: count blocks, read widths from shapes, then match a table.  The
counted layout is then expanded back into the full list of tensors it implies and compared with
the file, so any inconsistency (a gap, a transformer without its ResBlock, a block whose keys
disagree about its depth, a shape off the channel plan) is reported by block name.

Most files hold exactly the UNet of a known family: that is checked first, against the family's
expansion, and settles the common case without counting (the count would find the same layout).
"""

from __future__ import annotations

import functools
import itertools
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

from ..core.errors import LayoutError, NotSdxlFamily
from .families import CUSTOM_DISTILLED, FAMILIES, Family, match_family
from .layout import Middle, Shape, UNetLayout, ldm_to_diffusers_names, unet_tensor_shapes

ShapeMap = Mapping[str, Sequence[int]]

LDM_UNET_PREFIX = "model.diffusion_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
CLIP_G_PREFIXES = ("conditioner.embedders.1.model.", "conditioner.embedders.0.model.")
VAE_PREFIX = "first_stage_model."
# A diffusers-named UNet: bare, as in a diffusers folder, or inside a single file.
DIFFUSERS_UNET_PREFIXES = ("", "unet.", LDM_UNET_PREFIX)
VAE_REQUIRED = ("decoder.conv_in.weight", "post_quant_conv.weight", "decoder.conv_out.weight")


# Kinds of file that are whole models of another architecture: the host's business, not ours.
SD_UNET_KIND = "an SD 1.x/2.x-style UNet"
DIFFUSERS_NON_SDXL_KIND = "diffusers UNet without SDXL's text-time embedding"
UNKNOWN_MODEL_KIND = "an unknown model"
OTHER_MODEL_KINDS = frozenset({SD_UNET_KIND, DIFFUSERS_NON_SDXL_KIND, UNKNOWN_MODEL_KIND})


class Form(str, Enum):
    """Where and how the UNet is stored in the file."""

    SINGLE_FILE = "single-file"  # A1111/SGM checkpoint, UNet under model.diffusion_model.
    LDM_UNET = "ldm-unet"  # a bare UNet in LDM naming
    DIFFUSERS_UNET = "diffusers-unet"  # diffusers UNet2DConditionModel naming


@dataclass(frozen=True)
class Components:
    unet: bool
    clip_l: bool
    clip_g: bool
    vae: bool

    def present(self) -> list[str]:
        names = ("UNet", "CLIP-L", "OpenCLIP-bigG", "VAE")
        return [name for name, has in zip(names, (self.unet, self.clip_l, self.clip_g, self.vae), strict=True) if has]


@dataclass(frozen=True)
class Detection:
    form: Form
    unet_prefix: str
    layout: UNetLayout
    family: Family | None
    components: Components

    @property
    def family_name(self) -> str:
        return self.family.name if self.family else CUSTOM_DISTILLED

    @property
    def family_key(self) -> str:
        return self.family.key if self.family else "custom"

    @property
    def distilled(self) -> bool:
        return self.family.distilled if self.family else True


def detect(shapes: ShapeMap) -> Detection:
    """Detect the SDXL-family UNet in ``shapes`` (tensor name → shape).

    Raises :class:`NotSdxlFamily` for files that hold something else (SD1.5, a LoRA, a VAE …)
    and :class:`LayoutError` for an SDXL-family UNet whose keys are inconsistent.
    """
    form, prefix = _locate_unet(shapes)
    family = _known_family(shapes, form, prefix)
    if family is not None:
        return Detection(form, prefix, family.layout, family, detect_components(shapes))
    unet = {key[len(prefix) :]: tuple(shape) for key, shape in shapes.items() if key.startswith(prefix)}
    layout = layout_from_diffusers(unet) if form is Form.DIFFUSERS_UNET else layout_from_ldm(unet)
    expected = _expected_unet_shapes(layout, form)
    if expected != unet and (problems := compare_shapes(expected, unet)):
        raise LayoutError(problems)
    return Detection(form, prefix, layout, match_family(layout), detect_components(shapes))


@functools.lru_cache(maxsize=64)
def _expected_unet_shapes(layout: UNetLayout, form: Form, prefix: str = "") -> Mapping[str, Shape]:
    """Every UNet tensor of ``layout`` as a file of ``form`` names it, after ``prefix`` (read-only: cached)."""
    shapes = unet_tensor_shapes(layout)
    names = ldm_to_diffusers_names(layout) if form is Form.DIFFUSERS_UNET else None
    return MappingProxyType({prefix + (names[key] if names else key): shape for key, shape in shapes.items()})


def _known_family(shapes: ShapeMap, form: Form, prefix: str) -> Family | None:
    """The family whose UNet, tensor for tensor and shape for shape, is the one under ``prefix``."""
    unet_tensors = sum(map(str.startswith, shapes, itertools.repeat(prefix)))
    for family in FAMILIES:
        expected = _expected_unet_shapes(family.layout, form, prefix)
        if len(expected) == unet_tensors and expected.items() <= shapes.items():
            return family
    return None


def _any_starting_with(keys: Iterable[str], prefix: str | tuple[str, ...]) -> bool:
    return any(map(str.startswith, keys, itertools.repeat(prefix)))


def detect_components(shapes: ShapeMap) -> Components:
    return Components(
        unet=_any_starting_with(shapes, LDM_UNET_PREFIX) or _has_bare_unet(shapes),
        clip_l=_any_starting_with(shapes, CLIP_L_PREFIX),
        clip_g=_any_starting_with(shapes, CLIP_G_PREFIXES),
        vae=has_vae(shapes),
    )


def has_vae(shapes: ShapeMap) -> bool:
    """True when the file carries a VAE decoder under ``first_stage_model.``."""
    return all(VAE_PREFIX + key in shapes for key in VAE_REQUIRED)


def _has_bare_unet(shapes: ShapeMap) -> bool:
    return "input_blocks.0.0.weight" in shapes or any(p + "conv_in.weight" in shapes for p in DIFFUSERS_UNET_PREFIXES)


def _locate_unet(shapes: ShapeMap) -> tuple[Form, str]:
    if f"{LDM_UNET_PREFIX}input_blocks.0.0.weight" in shapes:
        prefix = LDM_UNET_PREFIX
    elif "input_blocks.0.0.weight" in shapes:
        prefix = ""
    elif any(p + "conv_in.weight" in shapes for p in DIFFUSERS_UNET_PREFIXES):
        prefix = next(p for p in DIFFUSERS_UNET_PREFIXES if p + "conv_in.weight" in shapes)
        if f"{prefix}add_embedding.linear_1.weight" not in shapes:
            raise NotSdxlFamily(DIFFUSERS_NON_SDXL_KIND, "SD 1.x/2.x?")
        return Form.DIFFUSERS_UNET, prefix
    else:
        raise NotSdxlFamily(*classify_non_unet(shapes))
    if f"{prefix}label_emb.0.0.weight" not in shapes:
        context = _first_context_dim(shapes, prefix)
        detail = {768: "SD 1.x", 1024: "SD 2.x"}.get(context or 0, "no ADM (label_emb) input")
        raise NotSdxlFamily(SD_UNET_KIND, detail)
    return (Form.SINGLE_FILE if prefix else Form.LDM_UNET), prefix


def classify_non_unet(shapes: ShapeMap) -> tuple[str, str]:
    """Name what a file without a UNet is, so the error can tell the user what they picked."""
    keys = list(shapes)
    if any("lora_" in k or ".lora." in k or ".lora_A" in k or k.startswith(("lycoris_", "hada_")) for k in keys):
        return "a LoRA/LyCORIS network", "load it from the Lora tab, not as a checkpoint"
    if {"encoder.conv_in.weight", "decoder.conv_in.weight"} <= set(keys) or "decoder.conv_in.weight" in keys:
        return "a VAE", "put it in models/VAE and pick it as VAE"
    if any(k.startswith(("first_stage_model.", "decoder.layers.", "encoder.layers.")) for k in keys) and not any(
        k.startswith(("conditioner.", "cond_stage_model.")) for k in keys
    ):
        return "a VAE or TAESD", "put it in models/VAE"
    if any(k in ("emb_params", "clip_l", "clip_g", "string_to_param") for k in keys):
        return "a textual-inversion embedding", "put it in the embeddings folder"
    if any(k.startswith(("conditioner.", "cond_stage_model.", "text_model.")) for k in keys):
        return "text encoders only", "the file holds no UNet"
    if not keys:
        return "an empty file", "it holds no tensors"
    return UNKNOWN_MODEL_KIND, f"{len(keys)} tensors, none of them an SDXL UNet"


def _first_context_dim(shapes: ShapeMap, prefix: str) -> int | None:
    for key, shape in shapes.items():
        if key.startswith(prefix) and key.endswith("attn2.to_k.weight") and len(shape) == 2:
            return int(shape[1])
    return None


def _indices(keys: Sequence[str], head: str) -> list[int]:
    """Sorted block indices N of keys that start with ``head`` + "N."."""
    pattern = re.compile(re.escape(head) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in keys if (m := pattern.match(k))})


def _gap_problem(indices: list[int], head: str) -> str | None:
    missing = sorted(set(range(indices[-1] + 1)) - set(indices)) if indices else []
    if missing:
        names = ", ".join(f"{head}{i}" for i in missing)
        return f"{head.rstrip('.')} numbering has a gap: no {names}"
    return None


_TRANSFORMER_INDEX = re.compile(r"^(.*\.)transformer_blocks\.(\d+)\.")


class _Depths:
    """Transformer depth per SpatialTransformer prefix, from one pass over the keys."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._deepest: dict[str, int] = {}
        for key in keys:
            if m := _TRANSFORMER_INDEX.match(key):
                block, index = m.group(1), int(m.group(2))
                self._deepest[block] = max(self._deepest.get(block, -1), index)

    def __call__(self, block: str) -> int:
        """Depth at ``block`` (e.g. "input_blocks.4.1."): highest index + 1, gaps show as missing keys."""
        return self._deepest.get(block, -1) + 1


def layout_from_ldm(unet: Mapping[str, Shape]) -> UNetLayout:
    """Count the blocks of an LDM-named UNet (no prefix) into a layout."""
    keys = list(unet)
    depth_at = _Depths(keys)
    problems: list[str] = []

    def shape(key: str) -> Shape | None:
        return tuple(unet[key]) if key in unet else None

    conv_in = shape("input_blocks.0.0.weight")
    if conv_in is None or len(conv_in) != 4:
        raise LayoutError(["input_blocks.0.0.weight (conv_in) is missing or not a 4-D convolution"])
    model_channels = conv_in[0]

    inputs = _indices(keys, "input_blocks.")
    outputs = _indices(keys, "output_blocks.")
    for indices, head in ((inputs, "input_blocks."), (outputs, "output_blocks.")):
        if gap := _gap_problem(indices, head):
            problems.append(gap)

    input_depths: list[list[int]] = [[]]
    level_widths: list[int] = []
    for index in inputs[1:]:
        block = f"input_blocks.{index}."
        if f"{block}0.op.weight" in unet:
            if not input_depths[-1]:
                problems.append(f"{block[:-1]}: a downsample closes a level that has no ResBlock")
            input_depths.append([])
        elif f"{block}0.in_layers.0.weight" in unet:
            width = shape(f"{block}0.out_layers.3.weight")
            if width is None:
                problems.append(f"{block[:-1]}.0: ResBlock without out_layers.3.weight")
            elif len(input_depths[-1]) == 0:
                level_widths.append(width[0])
            input_depths[-1].append(depth_at(block + "1."))
        elif any(k.startswith(block + "1.") for k in keys):
            problems.append(f"{block[:-1]}: a transformer without its residual block")
        else:
            problems.append(f"{block[:-1]}: neither a ResBlock nor a downsample")
    if problems:
        raise LayoutError(problems)
    if not input_depths[-1]:
        raise LayoutError(["the last input level ends in a downsample and has no ResBlock"])

    channel_mult = []
    for level, width in enumerate(level_widths):
        if width % model_channels:
            problems.append(f"input level {level} is {width} wide, not a multiple of {model_channels}")
        channel_mult.append(width // model_channels)

    middle_blocks = _indices(keys, "middle_block.")
    middle_depth = depth_at("middle_block.1.")
    if not middle_blocks:
        middle = Middle.NONE
    elif middle_blocks == [0]:
        middle = Middle.RES_ONLY
    elif middle_blocks == [0, 1, 2] and middle_depth:
        middle = Middle.FULL
    else:
        held = ", ".join(f"middle_block.{i}" for i in middle_blocks)
        problems.append(f"middle block holds {held}; expected a ResBlock, ResBlock+transformer+ResBlock, or nothing")
        middle = Middle.NONE

    output_depths: list[tuple[int, ...]] = []
    cursor = 0
    for level in reversed(range(len(input_depths))):
        count = len(input_depths[level]) + 1
        output_depths.append(tuple(depth_at(f"output_blocks.{cursor + i}.1.") for i in range(count)))
        cursor += count
    if len(outputs) != cursor:
        problems.append(f"{len(outputs)} output blocks, but the input side needs {cursor}")

    to_k = next((s for k, s in unet.items() if k.endswith("attn2.to_k.weight")), None)
    label_emb = shape("label_emb.0.0.weight")
    out_conv = shape("out.2.weight")
    if out_conv is None:
        problems.append("out.2.weight (conv_out) is missing")
    if problems:
        raise LayoutError(problems)
    return _checked_layout(
        tuple(tuple(d) for d in input_depths),
        tuple(output_depths),
        middle,
        middle_depth,
        conv_in,
        tuple(channel_mult),
        context=to_k,
        adm=label_emb,
        conv_out=out_conv,
    )


def layout_from_diffusers(unet: Mapping[str, Shape]) -> UNetLayout:
    """Count the blocks of a diffusers-named ``UNet2DConditionModel`` state dict into a layout."""
    keys = list(unet)
    depth_at = _Depths(keys)
    problems: list[str] = []
    conv_in = unet.get("conv_in.weight")
    if conv_in is None or len(conv_in) != 4:
        raise LayoutError(["conv_in.weight is missing or not a 4-D convolution"])
    model_channels = conv_in[0]
    down_levels = _indices(keys, "down_blocks.")
    up_levels = _indices(keys, "up_blocks.")
    for indices, head in ((down_levels, "down_blocks."), (up_levels, "up_blocks.")):
        if gap := _gap_problem(indices, head):
            problems.append(gap)
    if len(down_levels) != len(up_levels) or not down_levels:
        problems.append(f"{len(down_levels)} down blocks but {len(up_levels)} up blocks")
    if problems:
        raise LayoutError(problems)

    def level_depths(head: str) -> tuple[int, ...]:
        resnets = _indices(keys, head + "resnets.")
        if gap := _gap_problem(resnets, head + "resnets."):
            problems.append(gap)
        return tuple(depth_at(f"{head}attentions.{j}.") for j in range(len(resnets)))

    input_depths = tuple(level_depths(f"down_blocks.{b}.") for b in down_levels)
    output_depths = tuple(level_depths(f"up_blocks.{p}.") for p in up_levels)
    channel_mult = []
    for b in down_levels:
        width = unet.get(f"down_blocks.{b}.resnets.0.conv2.weight")
        if width is None or width[0] % model_channels:
            problems.append(f"down_blocks.{b}.resnets.0: missing or off the channel plan")
        else:
            channel_mult.append(width[0] // model_channels)
    resnets, attentions = _indices(keys, "mid_block.resnets."), _indices(keys, "mid_block.attentions.")
    middle_depth = depth_at("mid_block.attentions.0.")
    if not resnets and not attentions:
        middle = Middle.NONE
    elif resnets == [0] and not attentions:
        middle = Middle.RES_ONLY
    elif resnets == [0, 1] and attentions == [0] and middle_depth:
        middle = Middle.FULL
    else:
        problems.append(f"mid_block holds resnets {resnets} and attentions {attentions}")
        middle = Middle.NONE
    to_k = next((s for k, s in unet.items() if k.endswith("attn2.to_k.weight")), None)
    add_emb = unet.get("add_embedding.linear_1.weight")
    conv_out = unet.get("conv_out.weight")
    if conv_out is None:
        problems.append("conv_out.weight is missing")
    if problems:
        raise LayoutError(problems)
    return _checked_layout(
        input_depths,
        output_depths,
        middle,
        middle_depth,
        conv_in,
        tuple(channel_mult),
        context=to_k,
        adm=add_emb,
        conv_out=conv_out,
    )


def _checked_layout(
    input_depths: tuple[tuple[int, ...], ...],
    output_depths: tuple[tuple[int, ...], ...],
    middle: Middle,
    middle_depth: int,
    conv_in: Sequence[int],
    channel_mult: tuple[int, ...],
    *,
    context: Sequence[int] | None,
    adm: Sequence[int] | None,
    conv_out: Sequence[int] | None,
) -> UNetLayout:
    """The counted layout, with widths read from the shapes of the conv, ADM and cross-attention weights."""
    layout = UNetLayout(
        input_depths=input_depths,
        output_depths=output_depths,
        middle=middle,
        middle_depth=middle_depth if middle is Middle.FULL else 0,
        model_channels=conv_in[0],
        channel_mult=channel_mult,
        context_dim=context[1] if context else 2048,
        adm_in_channels=adm[1] if adm else 0,
        in_channels=conv_in[1],
        out_channels=conv_out[0] if conv_out else 4,
    )
    if layout_problems := layout.problems():
        raise LayoutError(layout_problems)
    return layout


_TRANSFORMER_BLOCK = re.compile(r"^(.*?\.transformer_blocks\.\d+)\.")


def block_of(key: str) -> str:
    """The block a tensor belongs to, for messages: "input_blocks.7.1.transformer_blocks.4"."""
    if m := _TRANSFORMER_BLOCK.match(key):
        return m.group(1)
    parts = key.split(".")
    depth = {"input_blocks": 3, "output_blocks": 3, "middle_block": 2, "down_blocks": 4, "up_blocks": 4}
    depth.update({"mid_block": 3})
    return ".".join(parts[: depth.get(parts[0], 1)])


def _summarise(keys: list[str], group: Callable[[str], str], limit: int = 8) -> str:
    blocks: dict[str, int] = defaultdict(int)
    for key in keys:
        blocks[group(key)] += 1
    named = [f"{block} ({n} tensor{'s' if n > 1 else ''})" for block, n in blocks.items()]
    more = f" and {len(named) - limit} more" if len(named) > limit else ""
    return ", ".join(named[:limit]) + more


def compare_shapes(
    expected: Mapping[str, Shape],
    actual: Mapping[str, Shape],
    *,
    what: str = "UNet",
    group: Callable[[str], str] = block_of,
) -> list[str]:
    """Differences between the tensors a layout implies and those present, grouped by block."""
    noun = f"{what} tensors" if what else "tensors"
    missing = [k for k in expected if k not in actual]
    unexpected = [k for k in actual if k not in expected]
    wrong = [k for k in expected if k in actual and tuple(actual[k]) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"missing {noun}: {_summarise(missing, group)}")
    if unexpected:
        problems.append(f"unexpected {noun}: {_summarise(unexpected, group)}")
    for key in wrong[:5]:
        problems.append(f"{key} has shape {tuple(actual[key])}, the layout needs {tuple(expected[key])}")
    if len(wrong) > 5:
        problems.append(f"{len(wrong) - 5} more tensors with other shapes")
    return problems
