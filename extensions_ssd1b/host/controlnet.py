"""sd-webui-controlnet on a distilled UNet: IP-Adapter on the layers that exist, units that cannot map refused.

Nothing here imports sd-webui-controlnet: its modules are looked up in ``sys.modules`` once the webui loaded it
(``scripts.hook`` …, the names its own scripts import them under), and patched through our registry.  On SDXL and on
any UNet we did not build every wrapper calls straight through.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from ..arch.families import family_name
from ..arch.layout import UNetLayout
from ..arch.unet_builder import LAYOUT_ATTRIBUTE, is_ssd1b_unet
from ..control import mapping
from ..core.errors import ControlUnitRefused
from . import checkpoints, patching

log = logging.getLogger(__name__)

INFOTEXT_IP_ADAPTER = "SSD-1B IP-Adapter layers"
INFOTEXT_RESIDUALS = "SSD-1B ControlNet residuals"
REFUSAL_ATTRIBUTE = "ssd1b_control_refusal"  # on p: raised by our sample() before the first step

# ControlModelType member names -> our unit kinds
_KINDS = {
    "ControlNet": mapping.CONTROLNET,
    "ControlNetUnion": mapping.CONTROLNET,
    "InstantID": mapping.CONTROLNET,
    "T2I_Adapter": mapping.T2I_ADAPTER,
    "T2I_CoAdapter": mapping.T2I_ADAPTER,
    "IPAdapter": mapping.IP_ADAPTER,
    "AttentionInjection": mapping.REFERENCE,
    "ControlLoRA": mapping.CONTROL_LORA,
    "Controlllite": mapping.LLLITE,
    "ReVision": mapping.MODEL_AGNOSTIC,
    "T2I_StyleAdapter": mapping.MODEL_AGNOSTIC,
}

_ip_counts: list[tuple[int, int]] = []  # (applied, skipped) per IP-Adapter hooked since the last UnetHook.hook
_residual_map: mapping.ResidualMap | None = None  # of the UNet hooked last, when not SDXL's own order


def _layout(unet: Any) -> UNetLayout | None:
    return getattr(unet, LAYOUT_ATTRIBUTE) if is_ssd1b_unet(unet) else None


def model_name(layout: UNetLayout, sd_model: Any) -> str:
    path = checkpoints.model_file(sd_model)
    name = family_name(layout)
    return f"{name} ({checkpoints.display_name(path)})" if path else name


# -- IP-Adapter: each SDXL layer's weights onto the model's layer at the same site ---------------------------------


def _target(model: Any, block_type: str, block_id: int, index: int) -> tuple[bool, mapping.AttnLayer | None]:
    """(whether ``model`` is ours, the layer of it that takes SDXL layer ``block_type[block_id]`` #index)."""
    layout = _layout(model)
    if layout is None:
        return False, None
    sdxl_layer = mapping.AttnLayer(block_type, block_id, index)
    attn_map = mapping.attention_map(layout)
    if sdxl_layer == mapping.sdxl_attention_layers()[0]:  # an IP-Adapter starts hooking: count once per unit
        _ip_counts.append((attn_map.applied, attn_map.skipped))
    return True, attn_map.target(sdxl_layer)


def _set_model_attn2_replace(original: Callable[..., Any], model: Any, target_cls: Any, function: Any, tid: Any) -> Any:
    """v1.1.440+ ``plugable_ipadapter.set_model_attn2_replace``: SDXL ``TransformerID`` -> our layer, or skipped."""
    ours, target = _target(model, tid.block_type.value, tid.block_id, tid.block_index)
    if not ours:
        return original(model, target_cls, function, tid)
    if target is None:
        return None  # SDXL layer absent here: its weights (the number kept by the caller) are not used
    moved = type(tid)(type(tid.block_type)(target.block_type), target.block_id, target.index, tid.transformer_index)
    return original(model, target_cls, function, moved)


def _set_model_patch_replace(
    original: Callable[..., Any], model: Any, function: Any, flag: str, block_id: int, index: int
) -> Any:
    """v1.1.436 ``controlmodel_ipadapter.set_model_patch_replace`` (SDXL): the same, in its arguments."""
    ours, target = _target(model, flag, block_id, index)
    if not ours:
        return original(model, function, flag, block_id, index)
    if target is None:
        return None
    return original(model, function, target.block_type, target.block_id, target.index)


# -- ControlNet: its SDXL residuals in the order the hook hands them to this model's blocks -----------------------


def _control_model_forward(original: Callable[..., Any], self: Any, *args: Any, **kwargs: Any) -> Any:
    outs = original(self, *args, **kwargs)
    rmap = _residual_map
    if rmap is None or not isinstance(outs, (list, tuple)) or len(outs) != mapping.SDXL_RESIDUALS:
        return outs
    first = outs[0]
    return mapping.hook_order(rmap, outs, lambda: first.new_zeros(first.shape[0], 1, 1, 1))


# -- LLLite: it asserts on layers that do not exist; the unit is refused before sampling instead -------------------


def _lllite_hook(original: Callable[..., Any], self: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
    layout = _layout(model)
    if layout is not None and mapping.refusal(layout, mapping.LLLITE):
        return None
    return original(self, model, *args, **kwargs)


# -- the UNet hook: refuse what cannot map, report what IP-Adapter skipped ------------------------------------------


def _unit_names(process: Any, count: int) -> list[str]:
    """The enabled units' model names (sd-webui-controlnet orders its params the same way); generic when unknown."""
    try:
        external_code = sys.modules["internal_controlnet.external_code"]
        units = [u for u in external_code.get_all_units_in_processing(process) if getattr(u, "enabled", False)]
        names = [str(getattr(u, "model", "") or "") for u in units]
    except Exception:  # older layout of its package, or units passed another way
        names = []
    return names if len(names) == count else [""] * count


def refusals(layout: UNetLayout, params: list[Any], process: Any) -> list[str]:
    """One line per unit that cannot run on ``layout``."""
    found = []
    for number, (param, name) in enumerate(zip(params, _unit_names(process, len(params)), strict=True)):
        kind = _KINDS.get(getattr(param.control_model_type, "name", ""))
        reason = mapping.refusal(layout, kind) if kind else "it is of a type this extension does not know"
        if reason:
            label = f"ControlNet unit {number} ({kind or param.control_model_type.name}{', ' + name if name else ''})"
            found.append(f"{label} cannot run here: {reason}")
    return found


def _unet_hook(
    original: Callable[..., Any],
    self: Any,
    model: Any,
    sd_ldm: Any,
    control_params: Any,
    process: Any,
    *args: Any,
    **kwargs: Any,
) -> Any:
    global _residual_map
    counts, _ip_counts[:] = list(_ip_counts), []
    layout = _layout(model)
    _residual_map = None
    if layout is None:
        return original(self, model, sd_ldm, control_params, process, *args, **kwargs)
    lines = refusals(layout, list(control_params or []), process)
    if lines:
        for name in ("scripts.ipadapter.plugable_ipadapter", "scripts.controlmodel_ipadapter"):
            clear = getattr(sys.modules.get(name), "clear_all_ip_adapter", None)
            if clear is not None:
                clear()  # nothing of a refused generation stays patched
        self.model, self.control_params = None, None
        error = ControlUnitRefused(lines, model_name(layout, sd_ldm))
        setattr(process, REFUSAL_ATTRIBUTE, error)
        log.error("%s", error)
        return None
    kinds = {_KINDS.get(getattr(p.control_model_type, "name", "")) for p in control_params or []}
    rmap = mapping.residual_map(layout)
    if mapping.CONTROLNET in kinds and not rmap.identity:
        _residual_map = rmap
        received = sum(slot is not None for slot in rmap.sources)
        text = f"{received} of {mapping.SDXL_RESIDUALS} SDXL residuals ({len(rmap.skipped)} absent here)"
        process.extra_generation_params[INFOTEXT_RESIDUALS] = text
        log.info("ControlNet on %s: %s", model_name(layout, sd_ldm), text)
    if counts:
        applied, skipped = counts[0]
        text = f"{applied} of {applied + skipped} SDXL layers ({skipped} absent here)"
        process.extra_generation_params[INFOTEXT_IP_ADAPTER] = text
        log.info("IP-Adapter on %s: %s", model_name(layout, sd_ldm), text)
    return original(self, model, sd_ldm, control_params, process, *args, **kwargs)


def raise_refusal(p: Any) -> None:
    """Our ``sample``: stop a generation whose ControlNet units were refused, before its first step."""
    error = getattr(p, REFUSAL_ATTRIBUTE, None)
    if error is not None:
        setattr(p, REFUSAL_ATTRIBUTE, None)
        raise error


# -- installing ------------------------------------------------------------------------------------------------------


def install_controlnet_glue() -> bool:
    """Patch sd-webui-controlnet if the webui loaded it (idempotent; called again before each generation)."""
    hook = sys.modules.get("scripts.hook")
    if hook is None or not hasattr(hook, "UnetHook"):
        return False
    patching.patch(hook.UnetHook, "hook", _unet_hook)
    ipadapter = sys.modules.get("scripts.ipadapter.plugable_ipadapter")  # v1.1.440 and later
    if ipadapter is not None and hasattr(ipadapter, "set_model_attn2_replace"):
        patching.patch(ipadapter, "set_model_attn2_replace", _set_model_attn2_replace)
    ipadapter = sys.modules.get("scripts.controlmodel_ipadapter")  # v1.1.436 and earlier
    if ipadapter is not None and hasattr(ipadapter, "set_model_patch_replace"):
        patching.patch(ipadapter, "set_model_patch_replace", _set_model_patch_replace)
    cldm = sys.modules.get("scripts.cldm")
    if cldm is not None and hasattr(cldm, "PlugableControlModel"):
        patching.patch(cldm.PlugableControlModel, "forward", _control_model_forward)
    lllite = sys.modules.get("scripts.controlnet_lllite")
    if lllite is not None and hasattr(lllite, "PlugableControlLLLite"):
        patching.patch(lllite.PlugableControlLLLite, "hook", _lllite_hook)
    return True
