"""Which of an SDXL control model's residuals, injection points and attention layers land on which block of a layout.

An SDXL ControlNet emits one residual per SDXL input block plus one for the middle (10), a T2I-Adapter four features
added after input blocks 3, 5, 8 and the middle, and an IP-Adapter carries key/value weights for SDXL's 70 cross-
attention layers.  A place in a UNet is named by its *site*: what the block is (``conv_in``, the ``res``-th ResBlock of
a level, the downsample that closes a level, the middle) and its width.  Something made for an SDXL site goes to the
block of the model with the same site and width; SDXL sites the model lacks are skipped, and a model block with no
SDXL counterpart receives nothing.  A unit whose contributions cannot be placed that way is refused, with a reason.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ..arch.families import FAMILIES_BY_KEY
from ..arch.layout import Middle, UNetLayout

SDXL = FAMILIES_BY_KEY["sdxl"].layout
T = TypeVar("T")
SDXL_T2I_INPUT_BLOCKS = (3, 5, 8)  # sd-webui-controlnet adds T2I features after these input blocks, then the middle


def sdxl_like(layout: UNetLayout) -> UNetLayout:
    """SDXL at ``layout``'s base width and context (SDXL itself for every full-size model; reduced test models too)."""
    return dataclasses.replace(
        SDXL,
        model_channels=layout.model_channels,
        context_dim=layout.context_dim,
        adm_in_channels=layout.adm_in_channels,
        num_head_channels=layout.num_head_channels,
    )


@dataclass(frozen=True)
class Site:
    """A block of a UNet by role: ``kind`` is "conv_in", "res", "down" or "middle"."""

    kind: str
    level: int
    res: int
    width: int


def input_sites(layout: UNetLayout) -> list[Site]:
    """One site per ``input_blocks`` entry, in block order."""
    sites = [Site("conv_in", 0, 0, layout.model_channels)]
    for level, depths in enumerate(layout.input_depths):
        width = layout.level_channels(level)
        sites += [Site("res", level, res, width) for res in range(len(depths))]
        if level != layout.levels - 1:
            sites.append(Site("down", level, 0, width))
    return sites


def middle_site(layout: UNetLayout) -> Site | None:
    if layout.middle is Middle.NONE:
        return None
    return Site("middle", layout.levels - 1, 0, layout.level_channels(layout.levels - 1))


@dataclass(frozen=True)
class ResidualMap:
    """For each of the model's input blocks, then its middle, the SDXL residual slot (0-9) it receives, or None."""

    sources: tuple[int | None, ...]
    skipped: tuple[int, ...]  # SDXL slots no block of the model receives

    @property
    def identity(self) -> bool:
        return self.sources == tuple(range(len(input_sites(SDXL)) + 1))


@functools.cache  # layouts are frozen; called per hooked layer and per step
def residual_map(layout: UNetLayout) -> ResidualMap:
    """Where each SDXL ControlNet residual goes on ``layout`` (same site, same width)."""
    sdxl = sdxl_like(layout)
    sdxl_sites = [*input_sites(sdxl), middle_site(sdxl)]
    index = {site: slot for slot, site in enumerate(sdxl_sites)}
    model_sites: list[Site | None] = [*input_sites(layout), middle_site(layout)]
    sources = tuple(index.get(site) if site else None for site in model_sites)
    return ResidualMap(sources, tuple(slot for slot in range(len(sdxl_sites)) if slot not in sources))


SDXL_RESIDUALS = 10  # sd-webui-controlnet's list: one per SDXL input block, the middle last


def hook_order(rmap: ResidualMap, outs: Sequence[T], zero: Callable[[], T]) -> list[T]:
    """An SDXL ControlNet's 10 outputs rearranged so that sd-webui-controlnet's hook gives each block its residual.

    The hook adds the last entry after the middle and, walking the output blocks, pops one more for each skip
    connection: input block ``i`` of ``n`` receives entry ``9 - n + i``.  Entries no block pops are left as they
    were; a block (or middle) with no SDXL counterpart receives ``zero()``.
    """
    blocks = len(rmap.sources) - 1
    if blocks >= SDXL_RESIDUALS:
        raise ValueError(f"{blocks} input blocks: more than the hook's {SDXL_RESIDUALS - 1} residual entries")
    arranged = list(outs)
    for block, slot in enumerate(rmap.sources[:-1]):
        arranged[SDXL_RESIDUALS - 1 - blocks + block] = outs[slot] if slot is not None else zero()
    middle = rmap.sources[-1]
    arranged[SDXL_RESIDUALS - 1] = outs[middle] if middle is not None else zero()
    return arranged


def t2i_points(layout: UNetLayout) -> tuple[int | None, ...]:
    """For each of the four SDXL T2I-Adapter features, the model's input block (or -1: the middle) it belongs after."""
    sdxl = sdxl_like(layout)
    sdxl_sites = input_sites(sdxl)
    wanted = [*(sdxl_sites[i] for i in SDXL_T2I_INPUT_BLOCKS), middle_site(sdxl)]
    model_sites = input_sites(layout)
    points: list[int | None] = []
    for site in wanted:
        if site is not None and site.kind == "middle":
            points.append(-1 if middle_site(layout) == site else None)
        else:
            points.append(model_sites.index(site) if site in model_sites else None)
    return tuple(points)


# -- IP-Adapter: SDXL's cross-attention layers ---------------------------------------------------------------------


@dataclass(frozen=True)
class AttnLayer:
    """A cross-attention: ``block_type`` "input"/"middle"/"output", ``block_id`` (0: middle), ``index`` in it."""

    block_type: str
    block_id: int
    index: int


def _attention_sites(layout: UNetLayout) -> list[tuple[AttnLayer, tuple[str, int, int, int]]]:
    """Every cross-attention of ``layout`` and its site, in IP-Adapter's order: input, output, middle."""
    found: list[tuple[AttnLayer, tuple[str, int, int, int]]] = []
    for level, depths in enumerate(layout.input_depths):
        for res, depth in enumerate(depths):
            block = layout.input_block_index(level, res)
            found += [(AttnLayer("input", block, k), ("input", level, res, k)) for k in range(depth)]
    for position, depths in enumerate(layout.output_depths):
        for res, depth in enumerate(depths):
            block = layout.output_block_index(position, res)
            found += [(AttnLayer("output", block, k), ("output", position, res, k)) for k in range(depth)]
    if layout.middle is Middle.FULL:
        found += [(AttnLayer("middle", 0, k), ("middle", 0, 0, k)) for k in range(layout.middle_depth)]
    return found


@functools.cache  # layouts are frozen; called per hooked layer and per step
def sdxl_attention_layers() -> tuple[AttnLayer, ...]:
    """SDXL's 70 cross-attention layers; the i-th uses IP-Adapter weights ``{2i+1}.to_k_ip`` / ``.to_v_ip``."""
    return tuple(layer for layer, _site in _attention_sites(SDXL))


@dataclass(frozen=True)
class AttnMap:
    """For each SDXL cross-attention layer (by number), the model's layer that takes its weights, or None."""

    targets: tuple[AttnLayer | None, ...]

    @property
    def applied(self) -> int:
        return sum(t is not None for t in self.targets)

    @property
    def skipped(self) -> int:
        return len(self.targets) - self.applied

    def target(self, sdxl_layer: AttnLayer) -> AttnLayer | None:
        return self.targets[sdxl_attention_layers().index(sdxl_layer)]


@functools.cache  # layouts are frozen; called per hooked layer and per step
def attention_map(layout: UNetLayout) -> AttnMap:
    """SDXL layer -> the model's layer at the same site and width (same level, position and transformer index)."""
    widths = {("input", level): layout.level_channels(level) for level in range(layout.levels)}
    widths |= {("output", p): layout.level_channels(layout.levels - 1 - p) for p in range(layout.levels)}
    widths[("middle", 0)] = layout.level_channels(layout.levels - 1)
    sdxl = sdxl_like(layout)
    sdxl_widths = {("input", lv): sdxl.level_channels(lv) for lv in range(sdxl.levels)}
    sdxl_widths |= {("output", p): sdxl.level_channels(sdxl.levels - 1 - p) for p in range(sdxl.levels)}
    sdxl_widths[("middle", 0)] = sdxl.level_channels(sdxl.levels - 1)
    model = {site: layer for layer, site in _attention_sites(layout)}
    targets = []
    for _layer, site in _attention_sites(SDXL):
        target = model.get(site)
        if target is not None and widths.get(site[:2]) != sdxl_widths[site[:2]]:
            target = None  # same place, other width: SDXL's weights cannot apply
        targets.append(target)
    return AttnMap(tuple(targets))


# -- which units run ------------------------------------------------------------------------------------------------

CONTROLNET = "ControlNet"
T2I_ADAPTER = "T2I-Adapter"
IP_ADAPTER = "IP-Adapter"
REFERENCE = "reference"
CONTROL_LORA = "Control-LoRA"
LLLITE = "ControlLLLite"
MODEL_AGNOSTIC = "model-agnostic"  # units that only change the conditioning (ReVision, T2I style adapter)
UNIT_KINDS = (CONTROLNET, T2I_ADAPTER, IP_ADAPTER, REFERENCE, CONTROL_LORA, LLLITE, MODEL_AGNOSTIC)


def refusal(layout: UNetLayout, kind: str) -> str | None:
    """Why a unit of ``kind`` cannot run on ``layout`` as sd-webui-controlnet applies it, or None when it can."""
    same_input_side = input_sites(layout) == input_sites(sdxl_like(layout))
    if kind == CONTROLNET:  # mapped by hook_order; skipped SDXL residuals are reported, not refused
        rmap = residual_map(layout)
        if len(rmap.sources) > SDXL_RESIDUALS:
            return (
                f"{len(rmap.sources) - 1} input blocks: more than SDXL's 9, which sd-webui-controlnet's hook counts on"
            )
        if not any(slot is not None for slot in rmap.sources):
            return "no block here has the level and width of an SDXL ControlNet residual"
        return None
    if kind == T2I_ADAPTER:
        if t2i_points(layout) == (*SDXL_T2I_INPUT_BLOCKS, -1):
            return None
        return (
            "sd-webui-controlnet adds T2I features after SDXL's input blocks 3, 5, 8 and the middle; they differ here"
        )
    if kind == IP_ADAPTER:
        return None if attention_map(layout).applied else "no cross-attention layer here matches an SDXL one"
    if kind == REFERENCE:
        if same_input_side and len(layout.output_depths) == SDXL.levels and sum(map(len, layout.output_depths)) >= 6:
            return None
        return "reference-only/adain hooks SDXL input blocks 4, 5, 7, 8 and output blocks 0-5, which differ here"
    if kind in (CONTROL_LORA, LLLITE):
        if attention_map(layout).skipped == 0 and same_input_side and layout.middle is Middle.FULL:
            return None
        return "it binds SDXL layers by name, and layers it needs do not exist here"
    if kind == MODEL_AGNOSTIC:
        return None
    raise ValueError(f"unknown unit kind {kind!r}")
