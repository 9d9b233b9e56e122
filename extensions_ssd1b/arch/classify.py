"""Which component a tensor belongs to, where a UNet starts, and what is wrong with a file's structure.

Shared by ``inspect`` (the report) and ``verify``, which group the same tensors the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from .components import component_problems, find_components, module_group, text_encoder_fit
from .detect import CLIP_G_PREFIXES, CLIP_L_PREFIX, LDM_UNET_PREFIX, VAE_PREFIX, Detection, block_of

ShapeMap = Mapping[str, Sequence[int]]


def component_of(key: str, unet_prefix: str | None) -> str:
    """The component a tensor belongs to ("UNet", "CLIP-L", "OpenCLIP-bigG", "VAE" or "other"), by its prefix."""
    if unet_prefix is not None and key.startswith(unet_prefix):
        return "UNet"
    if key.startswith(CLIP_L_PREFIX):
        return "CLIP-L"
    if key.startswith(CLIP_G_PREFIXES):
        return "OpenCLIP-bigG"
    if key.startswith(VAE_PREFIX):
        return "VAE"
    return "other"


def guess_unet_prefix(keys: Iterable[str]) -> str | None:
    """The UNet prefix of a file whose layout could not be detected (None: no UNet)."""
    keys = set(keys)
    if any(k.startswith(LDM_UNET_PREFIX) for k in keys):
        return LDM_UNET_PREFIX
    if "unet.conv_in.weight" in keys:
        return "unet."
    if "input_blocks.0.0.weight" in keys or "conv_in.weight" in keys:
        return ""
    return None


def block_key(key: str, unet_prefix: str | None) -> str:
    """The block a tensor belongs to, for the all-zero check (a transformer block, a ResBlock, a layer)."""
    if unet_prefix is not None and key.startswith(unet_prefix):
        return unet_prefix + block_of(key[len(unet_prefix) :])
    prefix = next((p for p in (CLIP_L_PREFIX, *CLIP_G_PREFIXES, VAE_PREFIX) if key.startswith(p)), "")
    return prefix + module_group(key[len(prefix) :])


def structure_problems(shapes: ShapeMap, detection: Detection | None) -> list[str]:
    """Text encoders and VAE off their generated layouts, and text encoders that do not fit the UNet."""
    components, problems = find_components(shapes)
    for component in components:
        problems.extend(component_problems(shapes, component))
    if detection is not None:
        problems.extend(text_encoder_fit(shapes, detection.layout))
    return problems
