"""The host's checkpoint load path, patched: pre-flight, diffusers folders, strict load, and no second pruning.

How a distilled checkpoint is loaded (capability checks, not version strings, serve v1.6.0–v1.10.1):

1. *Pre-flight* (``load_model`` / ``reload_model_weights``): the header is read and the layout
   detected before the host tears down the current model.  A file we must refuse (an inconsistent
   layout, a LoRA or VAE picked as a checkpoint, a broken file) fails here with a message naming
   the file and the reason, and the previous model stays loaded.
2. *Config* and 3. *build*: :mod:`.config`.
4. *Strict load* (``load_model_weights``): every UNet tensor of the file must be used and every
   UNet parameter must come from the file; otherwise the load fails naming the blocks.
5. v1.7+: the host's SSD-1B pruning (``convert_sdxl_to_ssd``) is skipped for our UNets.

A diffusers folder under ``models/Stable-diffusion`` is listed by the host as its
``unet/diffusion_pytorch_model*.safetensors``; ``read_state_dict`` is wrapped so that picking it
loads the whole folder (:mod:`extensions_ssd1b.diffusers.pipeline`), and every step above sees an
ordinary single-file state dict.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Mapping
from typing import Any

from ..arch.detect import LDM_UNET_PREFIX, OTHER_MODEL_KINDS, Detection, compare_shapes
from ..arch.unet_builder import is_ssd1b_unet
from ..core.errors import CheckpointError, LayoutError, NotSdxlFamily
from ..diffusers.folder import UNET_STEM, component_folder
from ..diffusers.pipeline import load_state_dict
from . import checkpoints, config, lora, memory
from .console import install_console
from .patching import patch, unpatch

log = logging.getLogger(__name__)


def is_forge() -> bool:
    """Forge loads these models natively; we must not patch it."""
    return importlib.util.find_spec("modules_forge") is not None


# -- 1. pre-flight ---------------------------------------------------------------------------------


def preflight(filename: str) -> Detection | None:
    """Check a checkpoint before the host touches the loaded model.

    Returns the detection for a distilled SDXL-family file, None for anything the host handles
    itself (SDXL, SD1/2, other architectures, pickled .ckpt), and raises :class:`Ssd1bError` with
    a message for the user when the file must not be loaded.
    """
    if not str(filename).lower().endswith(".safetensors"):
        return None
    try:
        detection = checkpoints.detect_checkpoint_file(filename)
    except NotSdxlFamily as error:
        if part := component_folder(filename):
            root, name = part
            raise CheckpointError(
                filename,
                f"is the {name} of the diffusers folder {root}; pick its "
                f"unet/{UNET_STEM}.safetensors to load the whole folder",
            ) from None
        if error.kind in OTHER_MODEL_KINDS:
            return None
        raise CheckpointError(filename, f"cannot be loaded as a checkpoint: {error}") from None
    except LayoutError as error:
        raise CheckpointError(filename, f"inconsistent SDXL-family UNet: {error}") from None
    if not detection.distilled or config.host_builds_itself(detection.layout):
        return None
    if not (detection.components.clip_l and detection.components.clip_g):
        raise CheckpointError(
            filename,
            f"holds a {detection.family_name} UNet without SDXL's text encoders; A1111 needs a single-file "
            "checkpoint. Convert it: python -m extensions_ssd1b convert <diffusers folder> <output>.safetensors",
        )
    return detection


def _preflight_load_model(original: Callable[..., Any], checkpoint_info: Any = None, *args: Any, **kwargs: Any) -> Any:
    from modules import sd_models

    detection = preflight((checkpoint_info or sd_models.select_checkpoint()).filename)
    memory.release_before_switch(sd_models.model_data.sd_model, detection)
    try:
        return original(checkpoint_info, *args, **kwargs)
    finally:
        memory.return_freed_memory()


def _preflight_reload(
    original: Callable[..., Any], sd_model: Any = None, info: Any = None, *args: Any, **kwargs: Any
) -> Any:
    from modules import sd_models

    info = info or sd_models.select_checkpoint()
    detection = preflight(info.filename)
    # The host would read the new file beside the old model, then build anew anyway: drop the old one first.
    released = memory.release_before_switch(sd_model or sd_models.model_data.sd_model, detection)
    try:
        if released or (sd_model or sd_models.model_data.sd_model) is None:
            # With no model to reuse the host's next step is load_model; v1.6's reload_model_weights cannot start
            # from no model (it sends None to the CPU when "keep models in RAM" is on, its default).
            sd_models.load_model(info)
            return sd_models.model_data.sd_model
        return original(sd_model, info, *args, **kwargs)
    finally:
        memory.return_freed_memory()


def _read_state_dict(
    original: Callable[..., Any], checkpoint_file: str, print_global_state: bool = False, map_location: Any = None
) -> Any:
    if (converted := lora.pending_state_dict(checkpoint_file)) is not None:  # a LoRA file, renamed by host/lora.py
        return converted
    pipeline = checkpoints.pipeline_of(checkpoint_file)
    if pipeline is None:
        return original(checkpoint_file, print_global_state, map_location)
    from modules import devices, sd_models, shared

    # The same device choice as the host's own read_state_dict.
    device = map_location or shared.weight_load_location or devices.get_optimal_device_name()
    files = len(pipeline.plan.sources)
    log.info("%s: reading the diffusers folder %s (%d files)", checkpoint_file, pipeline.root, files)
    return sd_models.get_state_dict_from_checkpoint(load_state_dict(pipeline, device))


# -- 4. strict load --------------------------------------------------------------------------------


def verify_unet_state_dict(unet: Any, state_dict: Mapping[str, Any], filename: str) -> None:
    """Every UNet tensor of the file is used and every UNet parameter comes from the file."""
    expected = {key: tuple(value.shape) for key, value in unet.state_dict().items()}
    present = {
        key[len(LDM_UNET_PREFIX) :]: tuple(value.shape)
        for key, value in state_dict.items()
        if key.startswith(LDM_UNET_PREFIX)
    }
    if problems := compare_shapes(expected, present):
        raise CheckpointError(filename, "UNet does not match the model built for it: " + "; ".join(problems))


def _strict_load_model_weights(
    original: Callable[..., Any],
    model: Any,
    checkpoint_info: Any,
    state_dict: Any,
    timer: Any,
    *args: Any,
    **kwargs: Any,
) -> Any:
    unet = getattr(getattr(model, "model", None), "diffusion_model", None)
    if is_ssd1b_unet(unet):
        if state_dict is None:  # the host's "restore previous" path: read it once, here
            from modules import sd_models

            state_dict = sd_models.get_checkpoint_state_dict(checkpoint_info, timer)
        verify_unet_state_dict(unet, state_dict, checkpoint_info.filename)
    config.announce_load(checkpoint_info.filename)
    return original(model, checkpoint_info, state_dict, timer, *args, **kwargs)


# -- 5. the host's own SSD-1B pruning (v1.7+) ------------------------------------------------------


def _convert_sdxl_to_ssd(original: Callable[..., Any], hijack: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
    unet = model.model.diffusion_model
    if is_ssd1b_unet(unet) or not hasattr(unet.middle_block, "1"):
        return None  # already at its true shape; pruning it again would crash
    return original(hijack, model, *args, **kwargs)


# -- installing ------------------------------------------------------------------------------------


def patched_names() -> list[tuple[Any, str]]:
    """(owner, name) of every host function the load path wraps, as this host has them."""
    from modules import sd_hijack, sd_models, sd_models_config

    names = [
        (sd_models, "load_model"),
        (sd_models, "reload_model_weights"),
        (sd_models, "load_model_weights"),
        (sd_models, "read_state_dict"),
        (sd_models_config, "find_checkpoint_config"),
    ]
    if hasattr(sd_hijack.StableDiffusionModelHijack, "convert_sdxl_to_ssd"):  # v1.7+
        names.append((sd_hijack.StableDiffusionModelHijack, "convert_sdxl_to_ssd"))
    return names


_WRAPPERS: dict[str, Callable[..., Any]] = {
    "load_model": _preflight_load_model,
    "reload_model_weights": _preflight_reload,
    "load_model_weights": _strict_load_model_weights,
    "read_state_dict": _read_state_dict,
    "find_checkpoint_config": config.find_checkpoint_config,
    "convert_sdxl_to_ssd": _convert_sdxl_to_ssd,
}


def install_load_path() -> bool:
    """Patch the host's load path; on Forge do nothing and say so once."""
    install_console()
    if is_forge():
        log.info("Forge detected: it loads SSD-1B, Vega and KOALA natively, so this extension stands down.")
        return False
    for owner, name in patched_names():
        patch(owner, name, _WRAPPERS[name])
    return True


def uninstall_load_path() -> None:
    """Put the host's own load path back (the VAE and NaN patches stay: see ``extension.uninstall``)."""
    for owner, name in patched_names():
        unpatch(owner, name)
