"""Build an SGM ``UNetModel`` at exactly the shape of a :class:`UNetLayout`.

The building blocks (``ResBlock``, ``SpatialTransformer``, ``Downsample`` …) are taken from the
``openaimodel`` module handed in: the host's own sgm in the webui, a stand-in in tests.  The
result is an instance of a subclass of that module's ``UNetModel`` with the stock module names and
the stock ``forward``, so every class-level patch of the host (attention optimisations, sd_unet
forward wrapping, low-VRAM hooks, Lora, ControlNet) applies to it unchanged.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import torch.nn as nn

from .layout import BlockPlan, UNetLayout, block_plan

LAYOUT_ATTRIBUTE = "ssd1b_layout"  # marks a UNet this extension built, and how


def is_ssd1b_unet(module: object) -> bool:
    return isinstance(getattr(module, LAYOUT_ATTRIBUTE, None), UNetLayout)


@functools.cache
def distilled_unet_class(openaimodel: ModuleType) -> type:
    """A ``UNetModel`` subclass whose constructor takes a layout (one class per sgm module)."""

    class DistilledUNetModel(openaimodel.UNetModel):  # type: ignore[name-defined,misc]
        """sgm ``UNetModel`` built block by block; ``forward`` is inherited untouched."""

        def __init__(self, layout: UNetLayout, *, use_checkpoint: bool = False, attn_type: str = "softmax") -> None:
            nn.Module.__init__(self)
            _init_like_unet_model(self, openaimodel, layout, use_checkpoint, attn_type)

    DistilledUNetModel.__qualname__ = DistilledUNetModel.__name__
    return DistilledUNetModel


def build_unet(
    openaimodel: ModuleType, layout: UNetLayout, *, use_checkpoint: bool = False, attn_type: str = "softmax"
) -> nn.Module:
    """Construct the UNet for ``layout`` from ``openaimodel``'s classes (weights uninitialised)."""
    if problems := layout.problems() + layout.head_problems():
        raise ValueError("; ".join(problems))
    return distilled_unet_class(openaimodel)(layout, use_checkpoint=use_checkpoint, attn_type=attn_type)


def _init_like_unet_model(unet: Any, sgm: ModuleType, layout: UNetLayout, use_checkpoint: bool, attn_type: str) -> None:
    # The attributes sgm's UNetModel sets and its forward (or host code) reads.
    setattr(unet, LAYOUT_ATTRIBUTE, layout)
    unet.in_channels = layout.in_channels
    unet.model_channels = layout.model_channels
    unet.out_channels = layout.out_channels
    unet.num_res_blocks = list(layout.num_res_blocks)
    unet.attention_resolutions = []
    unet.dropout = 0
    unet.channel_mult = list(layout.channel_mult)
    unet.conv_resample = True
    unet.num_classes = "sequential"
    unet.use_checkpoint = use_checkpoint
    unet.num_heads = -1
    unet.num_head_channels = layout.num_head_channels
    unet.num_heads_upsample = -1
    unet.predict_codebook_ids = False
    unet.use_fairscale_checkpoint = False

    blocks: dict[str, list[nn.Module]] = {}
    for plan in block_plan(layout):
        if plan.kind in ("time_embed", "label_emb", "out"):
            continue
        container = plan.prefix.rsplit(".", 2)[0]  # "input_blocks.4.1." -> "input_blocks.4"
        blocks.setdefault(container, []).append(_make_piece(sgm, plan, layout, use_checkpoint, attn_type))

    emb = layout.time_embed_dim
    unet.time_embed = nn.Sequential(sgm.linear(layout.model_channels, emb), nn.SiLU(), sgm.linear(emb, emb))
    unet.label_emb = nn.Sequential(
        nn.Sequential(sgm.linear(layout.adm_in_channels, emb), nn.SiLU(), sgm.linear(emb, emb))
    )

    def sequence(container: str) -> nn.Module:
        return sgm.TimestepEmbedSequential(*blocks.get(container, []))

    unet.input_blocks = nn.ModuleList(sequence(name) for name in blocks if name.startswith("input_blocks."))
    # An empty TimestepEmbedSequential is an identity: that is how a model without a middle block runs.
    unet.middle_block = sgm.TimestepEmbedSequential(*blocks.get("middle_block", []))
    unet.output_blocks = nn.ModuleList(sequence(name) for name in blocks if name.startswith("output_blocks."))
    unet.out = nn.Sequential(
        sgm.normalization(layout.model_channels),
        nn.SiLU(),
        sgm.zero_module(sgm.conv_nd(2, layout.model_channels, layout.out_channels, 3, padding=1)),
    )
    unet._feature_size = 0


def _make_piece(
    sgm: ModuleType, plan: BlockPlan, layout: UNetLayout, use_checkpoint: bool, attn_type: str
) -> nn.Module:
    if plan.kind == "conv_in":
        return sgm.conv_nd(2, plan.in_channels, plan.out_channels, 3, padding=1)
    if plan.kind == "res":
        return sgm.ResBlock(
            plan.in_channels,
            layout.time_embed_dim,
            0,
            out_channels=plan.out_channels,
            dims=2,
            use_checkpoint=use_checkpoint,
            use_scale_shift_norm=False,
        )
    if plan.kind == "attn":
        heads = plan.in_channels // layout.num_head_channels
        return sgm.SpatialTransformer(
            plan.in_channels,
            heads,
            layout.num_head_channels,
            depth=plan.depth,
            context_dim=layout.context_dim,
            disable_self_attn=False,
            use_linear=True,
            attn_type=attn_type,
            use_checkpoint=use_checkpoint,
        )
    if plan.kind == "down":
        return sgm.Downsample(plan.in_channels, True, dims=2, out_channels=plan.out_channels)
    if plan.kind == "up":
        return sgm.Upsample(plan.in_channels, True, dims=2, out_channels=plan.out_channels)
    raise ValueError(f"no SGM module for block kind {plan.kind!r}")  # pragma: no cover
