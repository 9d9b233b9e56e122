"""Which VAE an in-scope model decodes with: the host's state read for :func:`~extensions_ssd1b.vae.choice.resolve_vae`.

``sd_vae.resolve_vae`` is wrapped so that a distilled checkpoint without a VAE gets the resolved
file instead of zeros; the decision's reason is printed once.  VAE files are described (header and
fingerprint) once per file version, and known by content through the host's own sha256 of them,
kept in its cache (``modules.hashes``): a file is hashed once, only when a decision depends on it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from ..arch.detect import Detection
from ..core import settings
from ..core.errors import CheckpointError, LayoutError, NotSdxlFamily
from ..io.cache import per_file_version
from ..io.header import is_safetensors_name
from ..vae import choice, nan
from . import checkpoints

log = logging.getLogger(__name__)

_announced: set[str] = set()


def read_settings() -> settings.Values:
    """Our settings as typed values (defaults where the host has none yet)."""
    from modules import shared

    return settings.read_values(lambda key: getattr(shared.opts, key, None))


@per_file_version(maxsize=256)
def _vae_file(path: str, name: str) -> choice.VaeFile:
    return choice.describe_vae_file(name, path)


def _describe_vae(name: str, path: str) -> choice.VaeFile:
    try:
        return _vae_file(path, name)
    except CheckpointError as error:  # cannot even be looked at
        return choice.VaeFile(name, path, problem=error.reason)


@per_file_version(maxsize=256)
def _file_sha256(path: str, name: str) -> str | None:
    from modules import hashes

    try:  # cached by the host across restarts; None with --no-hashing and nothing cached
        return hashes.sha256(path, f"{VAE_HASH_TITLE_PREFIX}{name}")
    except OSError:  # gone since the list was made (v1.6's sha256_from_cache raises then)
        return None


# The host's own "vae" title is one entry for every VAE (sd_vae.get_loaded_vae_hash): each file gets
# its own, named like the host's "checkpoint/<name>" entries.
VAE_HASH_TITLE_PREFIX = "vae/"


def vae_sha256(vae: choice.VaeFile) -> str | None:
    """The full sha256 of a VAE file, from the host's hash cache (computed there once if missing)."""
    try:
        return _file_sha256(vae.path, vae.name)
    except CheckpointError:
        return None


@per_file_version(maxsize=64)
def _file_fingerprint(path: str) -> str | None:
    try:
        return nan.file_fingerprint(path)
    except CheckpointError:
        return None


def checkpoint_vae_fingerprint(path: str) -> str | None:
    """The fingerprint of the VAE inside a checkpoint (or its diffusers folder's ``vae/``)."""
    if (pipeline := checkpoints.pipeline_of(path)) is not None:
        path = str(pipeline.vae_file())
    return _file_fingerprint(path)


def scope_detection(checkpoint_file: str | None, values: settings.Values) -> Detection | None:
    """The detection of an SDXL-family checkpoint our settings apply to; None for the host's own."""
    if not checkpoint_file or not is_safetensors_name(checkpoint_file):
        return None
    try:
        detection = checkpoints.detect_checkpoint_file(checkpoint_file)
    except (CheckpointError, LayoutError, NotSdxlFamily):
        return None
    return detection if values.applies_to(sdxl_family=True, distilled=detection.distilled) else None


def decide_vae(checkpoint_file: str | None) -> choice.VaeDecision | choice.VaeRefusal | None:
    """The VAE (and precision) for ``checkpoint_file``, or None where our settings do not apply."""
    values = read_settings()
    detection = scope_detection(checkpoint_file, values)
    if detection is None or checkpoint_file is None:
        return None
    from modules import devices, extra_networks, paths, sd_vae, shared

    opts, cmd_opts = shared.opts, shared.cmd_opts
    near = sd_vae.find_vae_near_checkpoint(checkpoint_file)
    taesd = os.path.join(paths.models_path, nan.TAESD_DIR)
    has_vae = detection.components.vae
    return choice.resolve_vae(
        checkpoint=checkpoints.display_name(checkpoint_file),
        checkpoint_has_vae=has_vae,
        setting=values.vae,
        precision=values.vae_precision,
        available=[_describe_vae(name, path) for name, path in sd_vae.vae_dict.items()],
        taesd=choice.TaesdFiles(
            decoder=os.path.isfile(os.path.join(taesd, nan.TAESDXL_DECODER)),
            encoder=os.path.isfile(os.path.join(taesd, nan.TAESDXL_ENCODER)),
        ),
        device=choice.DeviceCaps.of(devices.device, no_half_vae=bool(cmd_opts.no_half or cmd_opts.no_half_vae)),
        webui=choice.WebuiVae(
            sd_vae=opts.sd_vae,
            overrides_per_model=opts.sd_vae_overrides_per_model_preferences,
            preferred=extra_networks.get_user_metadata(checkpoint_file).get("vae"),
            near_checkpoint=os.path.basename(near) if near else None,
            commandline_path=cmd_opts.vae_path,
        ),
        checkpoint_vae_fingerprint=checkpoint_vae_fingerprint(checkpoint_file) if has_vae else None,
        models_dir=paths.models_path,
        content_sha256=vae_sha256,
    )


def announce(decision: choice.VaeDecision) -> None:
    """The decision's console line (and its notes), once per distinct decision."""
    for line in (decision.reason, *decision.notes):
        if line not in _announced:
            _announced.add(line)
            log.info("%s", line)


def forget_announcements() -> None:
    """A new host (tests) or a reload starts announcing afresh."""
    _announced.clear()


def resolve_vae(original: Callable[..., Any], checkpoint_file: str, *args: Any, **kwargs: Any) -> Any:
    """``sd_vae.resolve_vae``: in scope, the file our decision names (the host would load zeros)."""
    resolution = original(checkpoint_file, *args, **kwargs)
    decision = decide_vae(checkpoint_file)
    if not isinstance(decision, choice.VaeDecision):
        return resolution  # not ours, or a refusal: that one stops the generation, not the load
    announce(decision)
    if decision.source is not choice.VaeSource.FILE or resolution.vae == decision.path:
        return resolution
    return type(resolution)(decision.path, f"from SSD-1B ({decision.chosen_by})")


def reload_vae_of_loaded_model() -> None:
    """Load the VAE the settings now decide for the model in memory (settings change callback)."""
    from modules import sd_models, sd_vae

    model = sd_models.model_data.sd_model  # not shared.sd_model: that would load a checkpoint
    if model is not None:
        sd_vae.reload_vae_weights(model)
