"""Map a LoRA file's UNet modules onto the loaded model's layout, index for index, and count what applies.

Every UNet module of the file is brought to one address, layout-independent: the diffusers block it sits in
("down_blocks.2.attentions.1.", which says level and position) plus its name inside that block in LDM terms
("transformer_blocks.3.attn1.to_q").  LDM ("compvis") numbered names are decoded with the layout they were
numbered for: the loaded model's own when every one of them names a module of it with the LoRA's shape, else
SDXL's (an SDXL LoRA on a distilled model).  The address is then looked up in the loaded model's layout: a block
or transformer block it does not have is counted, never moved to another level or position.
The plan needs only the safetensors header and is made once per file version.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from ..arch.families import FAMILIES_BY_KEY
from ..arch.layout import BlockPlan, UNetLayout, block_plan, ldm_inner_name, unet_tensor_shapes
from ..io.cache import per_file_version
from ..io.header import read_header
from .keys import UNET, LoraKey, parse_key, underscored

HOST_UNET_PREFIX = "diffusion_model_"  # the Lora extension's name for a module of the UNet
_OUT = "out."  # the address of the final norm and conv (diffusers has no block prefix for them)
_DIFFUSERS_BLOCK = re.compile(
    r"(?:(?:down|up)_blocks\.\d+\.(?:attentions|resnets)\.\d+|down_blocks\.\d+\.downsamplers\.0"
    r"|up_blocks\.\d+\.upsamplers\.0|mid_block\.(?:attentions|resnets)\.\d+|conv_in|time_embedding|add_embedding)\."
)
_KINDS = {"attentions": "attn", "resnets": "res", "downsamplers": "down", "upsamplers": "up", "conv_in": "conv_in"}
_KINDS |= {"time_embedding": "time_embed", "add_embedding": "label_emb"}
_DIFFUSERS_OUT = {"conv_norm_out": "0", "conv_out": "2"}


class Fate(str, Enum):
    APPLIED = "applied"
    MISSING = "for blocks this model does not have"
    UNMATCHED = "unmatched"


@dataclass(frozen=True)
class LoraPlan:
    """What becomes of one LoRA file on one layout: host key names and a count per UNet module."""

    renames: Mapping[str, str]  # file tensor name → name for the host's Lora extension (only what it should load)
    fates: Mapping[str, Fate]  # each UNet module of the file (its dotted name in the file's terms) → fate
    source: str  # the layout LDM-numbered names were read in: "SDXL" or "own"
    unmatched_examples: tuple[str, ...] = field(default=())

    def count(self, fate: Fate) -> int:
        return sum(1 for value in self.fates.values() if value is fate)

    @property
    def total(self) -> int:
        return len(self.fates)

    def summary(self, name: str) -> str:
        """``name 412/700 applied, 288 for blocks this model does not have`` (zero counts left out)."""
        text = f"{name} {self.count(Fate.APPLIED)}/{self.total} applied"
        for fate in (Fate.MISSING, Fate.UNMATCHED):
            if number := self.count(fate):
                text += f", {number} {fate.value}"
        return text


@functools.lru_cache(maxsize=16)
def _blocks(layout: UNetLayout) -> tuple[dict[str, BlockPlan], dict[str, BlockPlan]]:
    """Blocks by LDM prefix and by address prefix."""
    plans = list(block_plan(layout))
    return {p.prefix: p for p in plans}, {(p.diffusers_prefix or _OUT): p for p in plans}


@functools.lru_cache(maxsize=16)
def _module_shapes(layout: UNetLayout) -> dict[str, tuple[int, ...]]:
    """Weight shape of every module of the UNet (LDM dotted names)."""
    return {k.removesuffix(".weight"): s for k, s in unet_tensor_shapes(layout).items() if k.endswith(".weight")}


def sdxl_numbered(layout: UNetLayout) -> UNetLayout | None:
    """SDXL's block structure at ``layout``'s widths (how an SDXL LoRA's LDM names are numbered), if comparable."""
    sdxl = FAMILIES_BY_KEY["sdxl"].layout
    if layout.levels != sdxl.levels:
        return None
    widths = ("model_channels", "channel_mult", "context_dim", "adm_in_channels", "num_head_channels")
    return dataclasses.replace(sdxl, **{name: getattr(layout, name) for name in widths})


def _address_of_ldm(module: str, layout: UNetLayout) -> str | None:
    """``input_blocks.7.1.transformer_blocks.3.attn1.to_q`` (numbered for ``layout``) → address, or None."""
    by_prefix = _blocks(layout)[0]
    parts = module.split(".")
    for cut in range(len(parts), 0, -1):
        plan = by_prefix.get(".".join(parts[:cut]) + ".")
        if plan is not None:
            return (plan.diffusers_prefix or _OUT) + ".".join(parts[cut:])
    return None


def _address_of_diffusers(module: str) -> str | None:
    """``down_blocks.2.attentions.1.transformer_blocks.3.attn1.to_q`` → the same address in LDM inner names."""
    head = module.partition(".")[0]
    if head in _DIFFUSERS_OUT:
        return _OUT + _DIFFUSERS_OUT[head]
    block = _DIFFUSERS_BLOCK.match(module + ".")
    if block is None:
        return None
    prefix = block.group(0)
    kind = next(_KINDS[part] for part in prefix.split(".") if part in _KINDS)
    inner = ldm_inner_name(kind, module[len(prefix) :] if len(module) > len(prefix) else "")
    return None if inner is None else prefix + inner


def _target(address: str, layout: UNetLayout) -> tuple[Fate, str]:
    """Where ``address`` lives in ``layout``: (APPLIED, LDM module), (MISSING, "") or (UNMATCHED, "")."""
    by_address = _blocks(layout)[1]
    block = _DIFFUSERS_BLOCK.match(address)
    prefix = block.group(0) if block else _OUT if address.startswith(_OUT) else ""
    if not prefix:
        return Fate.UNMATCHED, ""
    plan = by_address.get(prefix)
    if plan is None:
        return Fate.MISSING, ""
    inner = address[len(prefix) :]
    module = plan.prefix + inner if inner else plan.prefix.rstrip(".")
    if module in _module_shapes(layout):
        return Fate.APPLIED, module
    return (Fate.MISSING if inner.startswith("transformer_blocks.") else Fate.UNMATCHED), ""


def _fits(shapes: Mapping[str, tuple[int, ...]], weight: tuple[int, ...]) -> bool:
    """Whether a LoRA module's down/up shapes make a delta of the target weight's shape (other types: not checked)."""
    down, up = shapes.get("lora_down.weight"), shapes.get("lora_up.weight")
    if down is None or up is None:
        return True
    return len(weight) >= 2 and up[0] == weight[0] and down[1] == weight[1]


def plan_for(keys_and_shapes: Mapping[str, tuple[int, ...]], layout: UNetLayout) -> LoraPlan:
    """The plan for a LoRA whose tensors have these names and shapes, on a model of ``layout``."""
    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    keys: dict[str, list[LoraKey]] = {}
    renames: dict[str, str] = {}
    for name, shape in keys_and_shapes.items():
        key = parse_key(name)
        if key.part == UNET:
            modules.setdefault(key.module, {})[key.weight] = shape
            keys.setdefault(key.module, []).append(key)
        elif key.part:
            renames[name] = f"{key.part}{key.module}.{key.weight}"
        else:
            renames[name] = name  # text encoders in kohya names and anything else: the host decides
    shapes = _module_shapes(layout)
    ldm = [m for m in modules if _address_of_diffusers(m) is None]
    own = all(m in shapes and _fits(modules[m], shapes[m]) for m in ldm)
    numbering = layout if own else sdxl_numbered(layout)
    fates: dict[str, Fate] = {}
    examples: list[str] = []
    for module, parts in modules.items():
        address = _address_of_diffusers(module)
        if address is None and numbering is not None:
            address = _address_of_ldm(module, numbering)
        fate, target = _target(address, layout) if address else (Fate.UNMATCHED, "")
        if fate is Fate.APPLIED and not _fits(parts, shapes[target]):
            fate = Fate.UNMATCHED
        fates[module] = fate
        if fate is Fate.APPLIED:
            host = HOST_UNET_PREFIX + underscored(target)
            renames.update({key.original: f"{host}.{key.weight}" for key in keys[module]})
        elif fate is Fate.UNMATCHED and len(examples) < 3:
            examples.append(module)
    return LoraPlan(renames, fates, "own" if own else "SDXL", tuple(examples))


@per_file_version(maxsize=32)
def plan_lora(path: str, layout: UNetLayout) -> LoraPlan:
    """:func:`plan_for` a safetensors LoRA file (its header only); CheckpointError naming the file if unreadable."""
    return plan_for(read_header(path).shapes(), layout)
