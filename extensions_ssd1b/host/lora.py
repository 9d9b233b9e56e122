"""Glue to the built-in Lora extension: it loads LoRA files through our layout-aware key map and says what applied.

The host's ``networks.load_network`` reads the file with ``sd_models.read_state_dict`` and matches its keys with
SDXL-only rules.  For an SDXL-family UNet whose layout we know (ours, or stock SDXL) our wrapper plans the file
once per file version (:mod:`extensions_ssd1b.lora.mapping`), reads the tensors it plans to use and hands them,
renamed to the host's own layer names, to the host's loader through ``read_state_dict`` (``load.py`` asks
:func:`pending_state_dict` first).  The file is only read.  Everything else stays the host's: module types,
merging, multipliers, caching.  Each generation reports every LoRA once (console and infotext); a file we cannot
use is one line naming it, and the generation goes on without it.
"""

from __future__ import annotations

import logging
import os
import sys
import weakref
from typing import Any

from ..arch.families import FAMILIES_BY_KEY, family_name, match_family
from ..arch.layout import UNetLayout, unet_tensor_shapes
from ..arch.unet_builder import LAYOUT_ATTRIBUTE, is_ssd1b_unet
from ..core import infotext
from ..core.errors import CheckpointError
from ..io.header import is_safetensors_name
from ..io.read import read_tensors
from ..lora.mapping import Fate, LoraPlan, plan_lora
from .patching import patch

log = logging.getLogger(__name__)

_pending: dict[str, dict[str, Any]] = {}  # file → renamed tensors, only while the host's load_network runs
_report: list[str] = []  # what the latest load_networks call loaded, one text per LoRA
_sdxl_unets: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
_TAG = "ssd1b_loaded_for"  # on a host Network: a weak reference to the UNet it was matched against, and its layout


def lora_extension() -> Any | None:
    """The built-in Lora extension's ``networks`` module, if it is loaded and has what we wrap."""
    networks = sys.modules.get("networks")
    wanted = ("load_network", "load_networks", "assign_network_names_to_compvis_modules", "loaded_networks")
    return networks if networks is not None and all(hasattr(networks, name) for name in wanted) else None


def install_lora() -> bool:
    """Wrap the Lora extension's loaders (nothing when it is disabled)."""
    networks = lora_extension()
    if networks is None:
        return False
    patch(networks, "load_network", _load_network)
    patch(networks, "load_networks", _load_networks)
    return True


def pending_state_dict(filename: str) -> dict[str, Any] | None:
    """The renamed tensors our wrapper is handing to the host's ``load_network`` for ``filename``, else None."""
    return _pending.get(filename)


def _unet(sd_model: Any) -> Any:
    return getattr(getattr(sd_model, "model", None), "diffusion_model", None)


def layout_of(sd_model: Any) -> UNetLayout | None:
    """The layout of the loaded UNet: ours, stock SDXL base (checked once per UNet), else None."""
    unet = _unet(sd_model)
    if is_ssd1b_unet(unet):
        return getattr(unet, LAYOUT_ATTRIBUTE)
    if unet is None or not getattr(sd_model, "is_sdxl", False):
        return None
    if unet not in _sdxl_unets:
        shapes = {key: tuple(value.shape) for key, value in unet.state_dict().items()}
        _sdxl_unets[unet] = shapes == unet_tensor_shapes(FAMILIES_BY_KEY["sdxl"].layout)
    return FAMILIES_BY_KEY["sdxl"].layout if _sdxl_unets[unet] else None


def _empty_network(networks: Any, name: str, network_on_disk: Any, problem: str) -> Any:
    """A network with no modules, carrying the reason: the generation goes on without it."""
    net = networks.network.Network(name, network_on_disk)
    net.mtime = os.path.getmtime(network_on_disk.filename)
    net.ssd1b_problem = problem
    return net


def _load_network(original: Any, name: str, network_on_disk: Any, *args: Any, **kwargs: Any) -> Any:
    from modules import shared

    layout = layout_of(shared.sd_model)
    filename = network_on_disk.filename
    if layout is None or not is_safetensors_name(filename):
        net = original(name, network_on_disk, *args, **kwargs)
    else:
        net = _load_planned(original, name, network_on_disk, layout, *args, **kwargs)
    setattr(net, _TAG, (weakref.ref(_unet(shared.sd_model)) if _unet(shared.sd_model) is not None else None, layout))
    return net


def _load_planned(original: Any, name: str, network_on_disk: Any, layout: UNetLayout, *args: Any, **kwargs: Any) -> Any:
    networks, filename = lora_extension(), network_on_disk.filename
    try:
        plan = plan_lora(filename, layout)
        tensors = read_tensors(filename, plan.renames)
    except CheckpointError as error:  # said once per generation by report_generation, like every LoRA
        return _empty_network(networks, name, network_on_disk, f"{filename}: {error.reason}")
    _pending[filename] = {plan.renames[key]: value for key, value in tensors.items()}
    try:
        net = original(name, network_on_disk, *args, **kwargs)
    except Exception as error:  # e.g. a LyCORIS type this host's Lora extension has no module type for
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return _empty_network(networks, name, network_on_disk, f"{filename}: the webui's Lora extension: {reason}")
    finally:
        _pending.pop(filename, None)
    net.ssd1b_plan = plan
    return net


def _stale(net: Any, unet: Any, layout: UNetLayout | None) -> bool:
    tag = getattr(net, _TAG, None)
    return tag is None or tag[1] != layout or (tag[0] is not None and tag[0]() is not unet)


def _load_networks(original: Any, names: Any, *args: Any, **kwargs: Any) -> Any:
    from modules import shared

    networks, sd_model = lora_extension(), shared.sd_model
    layout, unet = layout_of(sd_model), _unet(sd_model)
    if layout is not None:
        _keep_layer_names_live(networks, sd_model, unet)
    # A network matched against another UNet (a model switch) holds that UNet's modules and key map.
    networks.loaded_networks[:] = [net for net in networks.loaded_networks if not _stale(net, unet, layout)]
    for key, net in list(getattr(networks, "networks_in_memory", {}).items()):
        if _stale(net, unet, layout):
            networks.networks_in_memory.pop(key, None)
    result = original(names, *args, **kwargs)
    _report[:] = [text for net in networks.loaded_networks if (text := _describe(net, layout))]
    return result


def _keep_layer_names_live(networks: Any, sd_model: Any, unet: Any) -> None:
    """The Lora extension's names must point at the live UNet's modules, or every LoRA is silently a no-op."""
    mapping = getattr(sd_model, "network_layer_mapping", None)
    if mapping is None or mapping.get("diffusion_model_out_2") is not unet.out[2]:
        networks.assign_network_names_to_compvis_modules(sd_model)


def _describe(net: Any, layout: UNetLayout | None) -> str | None:
    name = getattr(net, "mentioned_name", None) or net.name
    if problem := getattr(net, "ssd1b_problem", None):
        return f"{name} not loaded ({problem})"
    plan: LoraPlan | None = getattr(net, "ssd1b_plan", None)
    if plan is None or layout is None or not plan.total:
        return None
    if not plan.count(Fate.APPLIED):
        filename = net.network_on_disk.filename
        return f"{plan.summary(name)}: none of its UNet modules exist in this model ({filename})"
    family = match_family(layout)
    if family is not None and not family.distilled and plan.count(Fate.APPLIED) == plan.total:
        return None  # SDXL with a LoRA that fully applies: nothing to say
    return plan.summary(name)


def report_generation(p: Any) -> None:
    """Once per generation: each LoRA's line in the console and in the infotext (and so in the API's info)."""
    if not _report:
        return
    from modules import shared

    text = "; ".join(_report)
    if getattr(p, "_ssd1b_lora_report", None) != text:
        p._ssd1b_lora_report = text
        layout = layout_of(shared.sd_model)
        for line in _report:
            log.info("%s LoRA: %s", family_name(layout) if layout else "SDXL", line)
    p.extra_generation_params[infotext.KEY_LORA] = text
