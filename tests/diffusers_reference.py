"""diffusers' ``UNet2DConditionModel`` as an independent reference for our UNet layouts.

``diffusers_config`` states a layout in diffusers' own config vocabulary, ``reference_unet``
builds that model and loads LDM-named weights into it through our key map, ``random_state_dict``
makes weights for any layout and ``reduced`` shrinks a layout to CPU-test size.  diffusers is
imported lazily: the webui-tier tests use the weight helpers in a venv without diffusers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from extensions_ssd1b.arch.layout import Middle, UNetLayout, ldm_to_diffusers_names, unet_tensor_shapes

# SDXL conditions on 6 micro-conditioning numbers (original size, crop, target size), each
# embedded to ``addition_time_embed_dim`` sinusoidal features and concatenated after the pooled
# text embedding: 1280 + 6 * 256 = 2816.  Any count works as long as the widths add up.
TIME_IDS = 6


def addition_time_embed_dim(layout: UNetLayout) -> int:
    """Width of one embedded time id: SDXL's 256 at full width, 8 for the reduced test layouts."""
    return 256 if layout.adm_in_channels > TIME_IDS * 256 else 8


def text_embeds_dim(layout: UNetLayout) -> int:
    """Width of the pooled text embedding that, with the embedded time ids, fills the ADM vector."""
    width = layout.adm_in_channels - TIME_IDS * addition_time_embed_dim(layout)
    if width <= 0:
        raise ValueError(f"adm_in_channels {layout.adm_in_channels} leaves no room for text_embeds")
    return width


def _per_level(depths: tuple[int, ...], filler: int) -> int | list[int]:
    """One level's transformer depths in diffusers form: an int when uniform, else a list."""
    if not any(depths):
        return filler  # DownBlock2D / UpBlock2D ignore it
    if not all(depths):
        raise ValueError(f"diffusers cannot express a level that mixes attention and none: {depths}")
    return depths[0] if len(set(depths)) == 1 else list(depths)


def diffusers_config(layout: UNetLayout) -> dict[str, Any]:
    """``UNet2DConditionModel`` kwargs for ``layout`` (ValueError where diffusers cannot say it)."""
    if problems := layout.problems():
        raise ValueError("; ".join(problems))
    middle_depth = layout.middle_depth if layout.middle is Middle.FULL else 1
    # The mid block takes its depth from the deepest level's entry, so attention-free levels
    # carry the middle depth (the refiner's last level has no attention but a depth-4 middle).
    down = [_per_level(d, middle_depth) for d in layout.input_depths]
    up = [_per_level(d, middle_depth) for d in layout.output_depths]
    if layout.middle is Middle.FULL:
        deepest = down[-1] if isinstance(down[-1], int) else down[-1][0]
        if deepest != layout.middle_depth:
            raise ValueError(f"diffusers ties the mid depth to the deepest level ({deepest}), not {middle_depth}")
    widths = [layout.level_channels(level) for level in range(layout.levels)]
    num_res = layout.num_res_blocks
    return {
        "sample_size": 128,
        "in_channels": layout.in_channels,
        "out_channels": layout.out_channels,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": tuple("CrossAttnDownBlock2D" if any(d) else "DownBlock2D" for d in layout.input_depths),
        "up_block_types": tuple("CrossAttnUpBlock2D" if any(d) else "UpBlock2D" for d in layout.output_depths),
        "mid_block_type": {
            Middle.FULL: "UNetMidBlock2DCrossAttn",
            Middle.RES_ONLY: "UNetMidBlock2D",
            Middle.NONE: None,
        }[layout.middle],
        "block_out_channels": tuple(widths),
        "layers_per_block": num_res[0] if len(set(num_res)) == 1 else list(num_res),
        "transformer_layers_per_block": down,
        "reverse_transformer_layers_per_block": up,
        # diffusers' historical misnomer: attention_head_dim is the number of heads per level.
        "attention_head_dim": tuple(w // layout.num_head_channels for w in widths),
        "cross_attention_dim": layout.context_dim,
        "use_linear_projection": True,
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "act_fn": "silu",
        "upcast_attention": False,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": addition_time_embed_dim(layout),
        "projection_class_embeddings_input_dim": layout.adm_in_channels,
    }


def reference_unet(layout: UNetLayout, ldm_state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """diffusers' UNet for ``layout`` with ``ldm_state_dict`` loaded strictly through our key map."""
    from diffusers import UNet2DConditionModel

    names = ldm_to_diffusers_names(layout)
    with torch.device("meta"):  # skip diffusers' random init; every tensor is assigned below
        model = UNet2DConditionModel(**diffusers_config(layout))
    model.load_state_dict({names[key]: value for key, value in ldm_state_dict.items()}, strict=True, assign=True)
    return model.eval()


@dataclasses.dataclass(frozen=True)
class Inputs:
    """One batch for both UNets: sgm reads ``y``, diffusers reads ``text_embeds`` + ``time_ids``."""

    x: torch.Tensor
    timesteps: torch.Tensor
    context: torch.Tensor
    y: torch.Tensor
    text_embeds: torch.Tensor
    time_ids: torch.Tensor


def example_inputs(layout: UNetLayout, timestep_embedding, seed: int = 0) -> Inputs:
    """A fixed batch of two: latents, two different timesteps, 77 context tokens, ADM vector.

    The latent is 8x16: non-square (a height/width mix-up shows) and divisible by 8 for the
    refiner's three downsamplings, yet small enough for CPU.

    diffusers builds SDXL's ADM vector inside the UNet (``text_time``): the pooled text embedding
    followed by every time id embedded sinusoidally.  sgm receives it ready-made as ``y``, built by
    its conditioner (``ConcatTimestepEmbedderND``) with ``timestep_embedding``; we build ``y`` the
    same way from the same numbers, so a mismatch in either UNet's label path shows in the output.
    """
    g = torch.Generator().manual_seed(seed)
    batch = 2
    text_embeds = torch.randn(batch, text_embeds_dim(layout), generator=g)
    time_ids = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0], [768.0, 1344.0, 64.0, 32.0, 1024.0, 1024.0]])
    assert time_ids.shape[1] == TIME_IDS
    embedded = timestep_embedding(time_ids.flatten(), addition_time_embed_dim(layout)).reshape(batch, -1)
    return Inputs(
        x=torch.randn(batch, layout.in_channels, 8, 16, generator=g),
        timesteps=torch.tensor([999.0, 261.0]),
        context=torch.randn(batch, 77, layout.context_dim, generator=g),
        y=torch.cat([text_embeds, embedded], dim=-1),
        text_embeds=text_embeds,
        time_ids=time_ids,
    )


def run_sgm(unet: torch.nn.Module, inputs: Inputs) -> torch.Tensor:
    with torch.no_grad():
        return unet(inputs.x, timesteps=inputs.timesteps, context=inputs.context, y=inputs.y)


def run_diffusers(unet: torch.nn.Module, inputs: Inputs) -> torch.Tensor:
    added = {"text_embeds": inputs.text_embeds, "time_ids": inputs.time_ids}
    with torch.no_grad():
        return unet(inputs.x, inputs.timesteps, encoder_hidden_states=inputs.context, added_cond_kwargs=added).sample


# The UNet ``network_config`` params of sgm's configs/inference/sd_xl_{base,refiner}.yaml (45c443b3).
SDXL_BASE_UNET_PARAMS: dict[str, Any] = {
    "adm_in_channels": 2816,
    "num_classes": "sequential",
    "use_checkpoint": True,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "attention_resolutions": [4, 2],
    "num_res_blocks": 2,
    "channel_mult": [1, 2, 4],
    "num_head_channels": 64,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": True,
    "transformer_depth": [1, 2, 10],
    "context_dim": 2048,
    "spatial_transformer_attn_type": "softmax-xformers",
    "legacy": False,
}
SDXL_REFINER_UNET_PARAMS: dict[str, Any] = {
    **SDXL_BASE_UNET_PARAMS,
    "adm_in_channels": 2560,
    "model_channels": 384,
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth": 4,
    "context_dim": [1280, 1280, 1280, 1280],
}


def reduced_stock_params(params: dict[str, Any]) -> dict[str, Any]:
    """A stock sgm config shrunk exactly like :func:`reduced` shrinks a layout."""
    small = reduced(UNetLayout((), (), Middle.NONE))
    context = params["context_dim"]
    return {
        **params,
        "model_channels": small.model_channels,
        "num_head_channels": small.num_head_channels,
        "adm_in_channels": small.adm_in_channels,
        "context_dim": [small.context_dim] * len(context) if isinstance(context, list) else small.context_dim,
    }


def random_state_dict(layout: UNetLayout, seed: int) -> dict[str, torch.Tensor]:
    """Random fp32 weights for every tensor of ``layout`` (LDM names), scaled to keep activations O(1).

    Unlike a fresh sgm model nothing is zero-initialised, so every block influences the output.
    """
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for key, shape in unet_tensor_shapes(layout).items():
        noise = torch.randn(shape, generator=generator)
        if len(shape) > 1:  # linear / conv: unit-variance outputs for unit-variance inputs
            weights[key] = noise / math.sqrt(math.prod(shape[1:]))
        elif key.endswith(".weight"):  # the only 1-D weights are GroupNorm / LayerNorm scales
            weights[key] = 1.0 + 0.1 * noise
        else:
            weights[key] = 0.1 * noise
    return weights


def reduced(layout: UNetLayout) -> UNetLayout:
    """The same block structure at CPU-test width (GroupNorm's 32 groups still divide every width)."""
    return dataclasses.replace(layout, model_channels=32, context_dim=64, adm_in_channels=64, num_head_channels=16)
