"""The shape of an SDXL-family UNet as plain data, and everything derived from it.

A :class:`UNetLayout` says how many residual blocks each level has, the transformer depth
after every residual block (input side, middle, output side) and the channel plan.  From it we
generate the exact LDM/SGM state-dict keys with their shapes; detection, strict verification,
parameter counts, test fixtures and the diffusers key map are all derived from that one
generator, so they cannot disagree with each other.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Any

Shape = tuple[int, ...]


class Middle(str, Enum):
    """What ``middle_block`` holds."""

    FULL = "res-attn-res"  # ResBlock, SpatialTransformer, ResBlock (SDXL, KOALA-1B)
    RES_ONLY = "res"  # a single ResBlock (SSD-1B, Segmind-Vega)
    NONE = "none"  # no middle block at all (KOALA-700M)


@dataclass(frozen=True)
class UNetLayout:
    """Per-block structure of an SGM ``UNetModel``-style UNet.

    ``input_depths[level][j]`` is the transformer depth after down ResBlock ``j`` of ``level``
    (levels run shallow to deep, 0 = no transformer).  ``output_depths[p][i]`` is the same for the
    output path, whose levels run deep to shallow exactly as ``output_blocks`` are numbered; each
    output level has one ResBlock more than its input level.
    """

    input_depths: tuple[tuple[int, ...], ...]
    output_depths: tuple[tuple[int, ...], ...]
    middle: Middle
    middle_depth: int = 0
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4)
    context_dim: int = 2048
    adm_in_channels: int = 2816
    in_channels: int = 4
    out_channels: int = 4
    num_head_channels: int = 64

    @property
    def num_res_blocks(self) -> tuple[int, ...]:
        return tuple(len(level) for level in self.input_depths)

    @property
    def levels(self) -> int:
        return len(self.channel_mult)

    @property
    def time_embed_dim(self) -> int:
        return self.model_channels * 4

    def level_channels(self, level: int) -> int:
        return self.model_channels * self.channel_mult[level]

    def problems(self) -> list[str]:
        """Reasons why this layout cannot describe a buildable UNet (empty when it can)."""
        found: list[str] = []
        if len(self.input_depths) != self.levels or len(self.output_depths) != self.levels:
            found.append(
                f"{self.levels} channel levels but {len(self.input_depths)} input and "
                f"{len(self.output_depths)} output levels"
            )
            return found
        for position, depths in enumerate(self.output_depths):
            level = self.levels - 1 - position
            if len(depths) != self.num_res_blocks[level] + 1:
                found.append(
                    f"output level {position} has {len(depths)} blocks; its input level has "
                    f"{self.num_res_blocks[level]} ResBlocks, so it needs {self.num_res_blocks[level] + 1}"
                )
        if any(n < 1 for n in self.num_res_blocks):
            found.append("every level needs at least one ResBlock")
        if self.middle is Middle.FULL and self.middle_depth < 1:
            found.append("a full middle block needs a transformer depth of at least 1")
        if self.middle is not Middle.FULL and self.middle_depth:
            found.append("only a full middle block has a transformer depth")
        for level in range(self.levels):
            if self.level_channels(level) % 32:  # sgm normalises with GroupNorm(32 groups)
                found.append(f"level {level} is {self.level_channels(level)} wide, not a multiple of 32")
        return found

    def head_problems(self) -> list[str]:
        """Attention heads are not visible in the weights; the builder checks them against the config."""
        return [
            f"level {level} width {self.level_channels(level)} is not a multiple of the head width "
            f"{self.num_head_channels}"
            for level in range(self.levels)
            if self.level_channels(level) % self.num_head_channels
        ]

    # -- block numbering ------------------------------------------------------------------------

    def input_block_index(self, level: int, res: int) -> int:
        return 1 + sum(n + 1 for n in self.num_res_blocks[:level]) + res

    def downsample_index(self, level: int) -> int:
        return 1 + sum(n + 1 for n in self.num_res_blocks[: level + 1]) - 1

    def output_block_index(self, position: int, res: int) -> int:
        return sum(len(d) for d in self.output_depths[:position]) + res

    @property
    def transformer_count(self) -> int:
        middle = self.middle_depth if self.middle is Middle.FULL else 0
        return sum(map(sum, self.input_depths)) + sum(map(sum, self.output_depths)) + middle


@dataclass(frozen=True)
class BlockPlan:
    """One structural piece of the UNet, in LDM naming, with its channel widths."""

    prefix: str  # e.g. "input_blocks.4.1." (always ends with a dot)
    kind: str  # "conv_in" | "time_embed" | "label_emb" | "res" | "attn" | "down" | "up" | "out"
    in_channels: int
    out_channels: int
    depth: int = 0  # transformer depth, for kind == "attn"
    diffusers_prefix: str = ""  # the same block in diffusers' UNet2DConditionModel naming


def block_plan(layout: UNetLayout) -> Iterator[BlockPlan]:
    """Every block of the UNet in the order SGM's ``UNetModel`` builds them."""
    mc, emb = layout.model_channels, layout.time_embed_dim
    yield BlockPlan("time_embed.", "time_embed", mc, emb, 0, "time_embedding.")
    yield BlockPlan("label_emb.0.", "label_emb", layout.adm_in_channels, emb, 0, "add_embedding.")
    yield BlockPlan("input_blocks.0.0.", "conv_in", layout.in_channels, mc, 0, "conv_in.")
    skip_channels = [mc]
    ch = mc
    for level, depths in enumerate(layout.input_depths):
        out = layout.level_channels(level)
        for res, depth in enumerate(depths):
            index = layout.input_block_index(level, res)
            down = f"down_blocks.{level}."
            yield BlockPlan(f"input_blocks.{index}.0.", "res", ch, out, 0, f"{down}resnets.{res}.")
            ch = out
            if depth:
                yield BlockPlan(f"input_blocks.{index}.1.", "attn", ch, ch, depth, f"{down}attentions.{res}.")
            skip_channels.append(ch)
        if level != layout.levels - 1:
            index = layout.downsample_index(level)
            yield BlockPlan(f"input_blocks.{index}.0.", "down", ch, ch, 0, f"down_blocks.{level}.downsamplers.0.")
            skip_channels.append(ch)
    if layout.middle is not Middle.NONE:
        yield BlockPlan("middle_block.0.", "res", ch, ch, 0, "mid_block.resnets.0.")
    if layout.middle is Middle.FULL:
        yield BlockPlan("middle_block.1.", "attn", ch, ch, layout.middle_depth, "mid_block.attentions.0.")
        yield BlockPlan("middle_block.2.", "res", ch, ch, 0, "mid_block.resnets.1.")
    for position, depths in enumerate(layout.output_depths):
        level = layout.levels - 1 - position
        out = layout.level_channels(level)
        for res, depth in enumerate(depths):
            index = layout.output_block_index(position, res)
            up = f"up_blocks.{position}."
            skip = skip_channels.pop()
            yield BlockPlan(f"output_blocks.{index}.0.", "res", ch + skip, out, 0, f"{up}resnets.{res}.")
            ch = out
            if depth:
                yield BlockPlan(f"output_blocks.{index}.1.", "attn", ch, ch, depth, f"{up}attentions.{res}.")
            if level and res == len(depths) - 1:
                slot = 2 if depth else 1
                yield BlockPlan(f"output_blocks.{index}.{slot}.", "up", ch, ch, 0, f"{up}upsamplers.0.")
    yield BlockPlan("out.", "out", ch, layout.out_channels, 0, "")


def _resblock_tensors(cin: int, cout: int, emb: int) -> Iterator[tuple[str, Shape]]:
    yield from (("in_layers.0.weight", (cin,)), ("in_layers.0.bias", (cin,)))
    yield from (("in_layers.2.weight", (cout, cin, 3, 3)), ("in_layers.2.bias", (cout,)))
    yield from (("emb_layers.1.weight", (cout, emb)), ("emb_layers.1.bias", (cout,)))
    yield from (("out_layers.0.weight", (cout,)), ("out_layers.0.bias", (cout,)))
    yield from (("out_layers.3.weight", (cout, cout, 3, 3)), ("out_layers.3.bias", (cout,)))
    if cin != cout:
        yield from (("skip_connection.weight", (cout, cin, 1, 1)), ("skip_connection.bias", (cout,)))


def _transformer_tensors(c: int, depth: int, context_dim: int) -> Iterator[tuple[str, Shape]]:
    yield from (("norm.weight", (c,)), ("norm.bias", (c,)))
    yield from (("proj_in.weight", (c, c)), ("proj_in.bias", (c,)))
    for k in range(depth):
        block = f"transformer_blocks.{k}."
        for attn, kv_width in (("attn1", c), ("attn2", context_dim)):
            yield f"{block}{attn}.to_q.weight", (c, c)
            yield f"{block}{attn}.to_k.weight", (c, kv_width)
            yield f"{block}{attn}.to_v.weight", (c, kv_width)
            yield f"{block}{attn}.to_out.0.weight", (c, c)
            yield f"{block}{attn}.to_out.0.bias", (c,)
        yield from ((f"{block}ff.net.0.proj.weight", (8 * c, c)), (f"{block}ff.net.0.proj.bias", (8 * c,)))
        yield from ((f"{block}ff.net.2.weight", (c, 4 * c)), (f"{block}ff.net.2.bias", (c,)))
        for norm in ("norm1", "norm2", "norm3"):
            yield from ((f"{block}{norm}.weight", (c,)), (f"{block}{norm}.bias", (c,)))
    yield from (("proj_out.weight", (c, c)), ("proj_out.bias", (c,)))


def block_tensors(block: BlockPlan, layout: UNetLayout) -> Iterator[tuple[str, Shape]]:
    """The (relative name, shape) of every tensor one block owns."""
    cin, cout = block.in_channels, block.out_channels
    if block.kind == "res":
        yield from _resblock_tensors(cin, cout, layout.time_embed_dim)
    elif block.kind == "attn":
        yield from _transformer_tensors(cin, block.depth, layout.context_dim)
    elif block.kind in ("time_embed", "label_emb"):
        yield from (("0.weight", (cout, cin)), ("0.bias", (cout,)))
        yield from (("2.weight", (cout, cout)), ("2.bias", (cout,)))
    elif block.kind == "conv_in":
        yield from (("weight", (cout, cin, 3, 3)), ("bias", (cout,)))
    elif block.kind in ("down", "up"):
        name = "op" if block.kind == "down" else "conv"
        yield from ((f"{name}.weight", (cout, cin, 3, 3)), (f"{name}.bias", (cout,)))
    elif block.kind == "out":
        yield from (("0.weight", (cin,)), ("0.bias", (cin,)))
        yield from (("2.weight", (cout, cin, 3, 3)), ("2.bias", (cout,)))
    else:  # pragma: no cover - BlockPlan kinds are closed
        raise ValueError(f"unknown block kind {block.kind!r}")


# How tensor names inside a block differ between LDM and diffusers (prefix → prefix).
_DIFFUSERS_INNER_NAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "res": (
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("emb_layers.1.", "time_emb_proj."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("skip_connection.", "conv_shortcut."),
    ),
    "time_embed": (("0.", "linear_1."), ("2.", "linear_2.")),
    "label_emb": (("0.", "linear_1."), ("2.", "linear_2.")),
    "down": (("op.", "conv."),),
    "out": (("0.", "conv_norm_out."), ("2.", "conv_out.")),
}


def diffusers_tensor_name(block: BlockPlan, name: str) -> str:
    """The diffusers name of tensor ``name`` (relative to ``block``)."""
    for ldm, diffusers in _DIFFUSERS_INNER_NAMES.get(block.kind, ()):
        if name.startswith(ldm):
            return block.diffusers_prefix + diffusers + name[len(ldm) :]
    return block.diffusers_prefix + name


def ldm_inner_name(kind: str, diffusers_inner: str) -> str | None:
    """The LDM name of a module inside a block of ``kind`` from its diffusers name ("conv1" → "in_layers.2").

    ``""`` is the block itself (a conv_in or sampler conv); None when diffusers has no such name there.
    """
    if kind == "down":
        return "op" if diffusers_inner == "conv" else None
    if kind == "up":
        return "conv" if diffusers_inner == "conv" else None
    for ldm, diffusers in _DIFFUSERS_INNER_NAMES.get(kind, ()):
        if (diffusers_inner + ".").startswith(diffusers):
            return (ldm + diffusers_inner[len(diffusers) :]).rstrip(".")
    return diffusers_inner


@functools.lru_cache(maxsize=32)
def ldm_to_diffusers_names(layout: UNetLayout) -> Mapping[str, str]:
    """LDM UNet tensor name → diffusers ``UNet2DConditionModel`` name, for every tensor (read-only)."""
    return MappingProxyType(
        {
            block.prefix + name: diffusers_tensor_name(block, name)
            for block in block_plan(layout)
            for name, _ in block_tensors(block, layout)
        }
    )


def unet_tensor_shapes(layout: UNetLayout) -> dict[str, Shape]:
    """Every UNet tensor of ``layout`` in LDM naming (no ``model.diffusion_model.`` prefix)."""
    return {block.prefix + name: shape for block in block_plan(layout) for name, shape in block_tensors(block, layout)}


def parameter_count(layout: UNetLayout) -> int:
    return sum(math.prod(shape) for shape in unet_tensor_shapes(layout).values())


def layout_to_dict(layout: UNetLayout) -> dict[str, object]:
    """Plain JSON/YAML-safe form (used in generated webui configs and in ``inspect --json``)."""
    return {
        "input_depths": [list(level) for level in layout.input_depths],
        "output_depths": [list(level) for level in layout.output_depths],
        "middle": layout.middle.value,
        "middle_depth": layout.middle_depth,
        "model_channels": layout.model_channels,
        "channel_mult": list(layout.channel_mult),
        "context_dim": layout.context_dim,
        "adm_in_channels": layout.adm_in_channels,
        "in_channels": layout.in_channels,
        "out_channels": layout.out_channels,
        "num_head_channels": layout.num_head_channels,
    }


def layout_from_dict(data: Mapping[str, Any]) -> UNetLayout:
    """Inverse of :func:`layout_to_dict`; accepts any sequence types (e.g. OmegaConf ListConfig)."""
    return UNetLayout(
        input_depths=tuple(tuple(int(d) for d in level) for level in data["input_depths"]),
        output_depths=tuple(tuple(int(d) for d in level) for level in data["output_depths"]),
        middle=Middle(str(data["middle"])),
        middle_depth=int(data["middle_depth"]),
        model_channels=int(data["model_channels"]),
        channel_mult=tuple(int(m) for m in data["channel_mult"]),
        context_dim=int(data["context_dim"]),
        adm_in_channels=int(data["adm_in_channels"]),
        in_channels=int(data["in_channels"]),
        out_channels=int(data["out_channels"]),
        num_head_channels=int(data["num_head_channels"]),
    )


def layout_from_sgm_params(params: Mapping[str, Any]) -> UNetLayout | None:
    """The layout a stock sgm ``UNetModel`` builds from these config params, or None if we can't say.

    Used to tell whether a user's ``<checkpoint>.yaml`` would build exactly the UNet in the file.
    """
    if params.get("num_attention_blocks") is not None or not params.get("use_linear_in_transformer", False):
        return None
    mult = tuple(int(m) for m in params["channel_mult"])
    levels = len(mult)
    res = params["num_res_blocks"]
    res = [int(res)] * levels if isinstance(res, int) else [int(n) for n in res]
    depth = params.get("transformer_depth", 1)
    depth = [int(depth)] * levels if isinstance(depth, int) else [int(d) for d in depth]
    attention = {int(a) for a in params.get("attention_resolutions", [])}
    level_depth = [depth[level] if 2**level in attention else 0 for level in range(levels)]
    middle_depth = params.get("transformer_depth_middle")
    middle_depth = depth[-1] if middle_depth is None else int(middle_depth)
    context = params.get("context_dim")
    if context is not None and not isinstance(context, int):  # the refiner lists one per level
        context = next(iter(context))
    return UNetLayout(
        input_depths=tuple((level_depth[level],) * res[level] for level in range(levels)),
        output_depths=tuple((level_depth[level],) * (res[level] + 1) for level in reversed(range(levels))),
        middle=Middle.FULL,
        middle_depth=middle_depth,
        model_channels=int(params["model_channels"]),
        channel_mult=mult,
        context_dim=int(context or 0),
        adm_in_channels=int(params.get("adm_in_channels") or 0),
        in_channels=int(params["in_channels"]),
        out_channels=int(params["out_channels"]),
        num_head_channels=int(params.get("num_head_channels", 64)),
    )
