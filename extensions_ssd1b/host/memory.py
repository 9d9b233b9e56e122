"""Memory across architecture switches: the old model goes before the new file is read, freed memory goes back.

Every switch between layouts builds a new model (each layout has its own config), so whatever the old one keeps
adds up: the host reads the new state dict while the old model still sits in RAM, and glibc keeps the freed
arenas of both.  Pre-flight knows from the header alone that the architecture changes, so the old model can be
dropped first; after a load, ``malloc_trim`` hands the freed pages back to the OS.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import gc
import logging
from typing import Any

from ..arch.detect import Detection
from ..arch.layout import UNetLayout
from ..arch.unet_builder import LAYOUT_ATTRIBUTE, is_ssd1b_unet

log = logging.getLogger(__name__)


def _our_layout(sd_model: Any) -> UNetLayout | None:
    unet = getattr(getattr(sd_model, "model", None), "diffusion_model", None)
    return getattr(unet, LAYOUT_ATTRIBUTE, None) if is_ssd1b_unet(unet) else None


def switches_architecture(sd_model: Any, detection: Detection | None) -> bool:
    """Whether loading a file with this pre-flight ``detection`` (None: the host builds it) replaces a model of
    another architecture, where the host builds a new model anyway and nothing of the old one is reused."""
    if sd_model is None:
        return False
    current = _our_layout(sd_model)
    new = detection.layout if detection is not None else None
    if current is None or new is None:
        return current is not new  # one of the two is ours: another config either way
    # the head width comes from the host's config at build time, not from the file
    return dataclasses.replace(new, num_head_channels=current.num_head_channels) != current


def release_before_switch(sd_model: Any, detection: Detection | None) -> bool:
    """Drop ``sd_model`` now if the file about to load replaces it with another architecture; True if dropped.

    Not when the user keeps several models loaded (v1.7+ ``sd_checkpoints_limit`` > 1): the host may reuse them.
    """
    from modules import shared

    if int(getattr(shared.opts, "sd_checkpoints_limit", 1) or 1) > 1 or not switches_architecture(sd_model, detection):
        return False
    release_model()
    return True


def release_model() -> None:
    """Drop the loaded model the way the host's own new-config path does, only before the file is read."""
    from modules import sd_hijack, sd_models

    data = sd_models.model_data
    model = data.sd_model
    if model is None:
        return
    sd_hijack.model_hijack.undo_hijack(model)
    if hasattr(sd_models, "send_model_to_trash"):  # v1.7+: to the meta device, keeping the object's shape
        sd_models.send_model_to_trash(model)
    if model in getattr(data, "loaded_sd_models", []):
        data.loaded_sd_models.remove(model)
    data.sd_model = None
    del model
    gc.collect()


@functools.cache
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None  # glibc only
    except OSError:
        return None


def return_freed_memory() -> None:
    """Collect garbage and give the C allocator's free pages back to the OS (glibc; elsewhere a no-op)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
