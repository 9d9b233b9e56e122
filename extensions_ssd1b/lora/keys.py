"""Split a LoRA tensor name into its module and weight part, whatever format wrote it, in dotted form.

Formats: kohya with LDM ("compvis") names (``lora_unet_input_blocks_7_1_transformer_blocks_3_attn1_to_q.…``),
kohya with diffusers names (``lora_unet_down_blocks_2_attentions_1_…``), and dotted diffusers/PEFT names
(``unet.down_blocks.2.attentions.1.….to_q.lora_A.weight``, ``….lora.down.weight``, the old attention-processor
``….attn1.processor.to_q_lora.down.weight``).  Weight parts come out in the names every host release accepts
(``lora_down.weight`` / ``lora_up.weight`` / ``alpha``); other (LyCORIS) parts are passed on as they are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Weight parts of dotted files, longest first, and the kohya name each becomes.
_DOTTED_PARTS: tuple[tuple[str, str], ...] = (
    (".lora.down.weight", "lora_down.weight"),
    (".lora.up.weight", "lora_up.weight"),
    (".lora_A.weight", "lora_down.weight"),
    (".lora_B.weight", "lora_up.weight"),
    (".lora_down.weight", "lora_down.weight"),
    (".lora_up.weight", "lora_up.weight"),
    (".lora_mid.weight", "lora_mid.weight"),
    (".alpha", "alpha"),
)
_KOHYA_PARTS = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}

# Names that hold an underscore themselves: kohya joins every level of a module path with "_".
_COMPOUNDS = sorted(
    (
        "input_blocks", "output_blocks", "middle_block", "time_embed", "label_emb", "transformer_blocks",
        "to_q", "to_k", "to_v", "to_out", "proj_in", "proj_out", "in_layers", "out_layers", "emb_layers",
        "skip_connection", "down_blocks", "up_blocks", "mid_block", "conv_shortcut", "time_emb_proj",
        "conv_in", "conv_out", "conv_norm_out", "time_embedding", "add_embedding", "linear_1", "linear_2",
    ),
    key=len,
    reverse=True,
)  # fmt: skip
_COMPOUND = re.compile("|".join(_COMPOUNDS))
_PROCESSOR = re.compile(r"\.processor\.(to_[qkv]|to_out)_lora$")  # diffusers' old attention-processor LoRA

UNET = "unet"
TEXT_ENCODERS = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}


@dataclass(frozen=True)
class LoraKey:
    """One tensor of a LoRA file: which model part, which module (dotted, relative to it), which weight part."""

    part: str  # "unet", "lora_te1_", "lora_te2_" or "" (passed on unchanged)
    module: str  # dotted module path, LDM or diffusers names (e.g. "down_blocks.2.attentions.1.proj_in")
    weight: str  # "lora_down.weight", "lora_up.weight", "alpha", or a LyCORIS part such as "hada_w1_a"
    original: str  # the name in the file


def dotted(underscored: str) -> str:
    """``input_blocks_7_1_transformer_blocks_3_attn1_to_q`` → ``input_blocks.7.1.transformer_blocks.3.attn1.to_q``."""
    protected = _COMPOUND.sub(lambda m: m.group(0).replace("_", "\0"), underscored)
    return protected.replace("_", ".").replace("\0", "_")


def underscored(module: str) -> str:
    return module.replace(".", "_")


def parse_key(name: str) -> LoraKey:
    """The model part, dotted module path and weight part of tensor ``name`` (``part`` "" when unknown)."""
    if name.startswith("lora_unet_"):
        module, _, weight = name.partition(".")
        return LoraKey(UNET, dotted(module.removeprefix("lora_unet_")), _KOHYA_PARTS.get(weight, weight), name)
    found = next(((suffix, part) for suffix, part in _DOTTED_PARTS if name.endswith(suffix)), None)
    if found is None:
        return LoraKey("", "", "", name)
    module, weight = name[: -len(found[0])], found[1]
    module = _PROCESSOR.sub(lambda m: "." + (m.group(1) if m.group(1) != "to_out" else "to_out.0"), module)
    head, _, rest = module.partition(".")
    if head == UNET:
        return LoraKey(UNET, rest, weight, name)
    if head in TEXT_ENCODERS:
        return LoraKey(TEXT_ENCODERS[head], underscored(rest), weight, name)
    if head in ("down_blocks", "mid_block", "up_blocks", "conv_in", "conv_out", "time_embedding", "add_embedding"):
        return LoraKey(UNET, module, weight, name)  # a diffusers UNet file without the "unet." prefix
    return LoraKey("", "", "", name)
