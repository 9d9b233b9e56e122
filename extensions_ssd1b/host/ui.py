"""What the user sees and touches: the always-on scripts, the inspect API route, the settings page, infotext paste.

Settings are registered at script import, so they exist with ``--nowebui`` and in ``/sdapi/v1/options``.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any

from ..arch.families import match_family
from ..arch.layout import UNetLayout, layout_to_dict, parameter_count
from ..arch.unet_builder import LAYOUT_ATTRIBUTE, is_ssd1b_unet
from ..core import infotext, settings
from ..core.errors import CheckpointError, LayoutError, NotSdxlFamily
from ..diffusers.folder import FORM_DIFFUSERS_FOLDER
from . import checkpoints, controlnet, lora, patching, safety, vae

API_INSPECT_ROUTE = "/ssd1b/v1/inspect"
SAFETY_SCRIPT_TITLE = "SSD-1B VAE and NaN safety"


# -- the always-on scripts -------------------------------------------------------------------------


def loaded_unet_layout(sd_model: Any) -> UNetLayout | None:
    unet = getattr(getattr(sd_model, "model", None), "diffusion_model", None)
    return getattr(unet, LAYOUT_ATTRIBUTE, None) if is_ssd1b_unet(unet) else None


def make_script_class() -> type:
    """The always-on Script that records the UNet family in the infotext (scripts/ wires it)."""
    from modules import scripts, shared

    class Ssd1bScript(scripts.Script):
        def title(self) -> str:
            return "SSD-1B"

        def show(self, is_img2img: bool) -> Any:
            return scripts.AlwaysVisible

        def before_process(self, p: Any, *args: Any) -> None:
            if patching.any_active():  # sd-webui-controlnet may load after us: patch it before its process runs
                controlnet.install_controlnet_glue()

        def process(self, p: Any, *args: Any) -> None:
            if not patching.any_active():
                return
            layout = loaded_unet_layout(shared.sd_model)
            if layout is not None:
                family = match_family(layout)
                # the family key ("ssd-1b", "custom"): stable across versions and locales
                p.extra_generation_params[infotext.KEY_ARCH] = infotext.format_arch(family.key if family else "custom")

        def process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
            if patching.any_active():  # after the host's extra networks activated this batch's LoRAs
                lora.report_generation(p)

    return Ssd1bScript


def make_safety_script_class() -> type:
    """The always-on Script that opens and closes a generation's record (scripts/ wires it)."""
    from modules import scripts

    class Ssd1bSafetyScript(scripts.Script):
        def title(self) -> str:
            return SAFETY_SCRIPT_TITLE

        def show(self, is_img2img: bool) -> Any:
            return scripts.AlwaysVisible

        def process(self, p: Any, *args: Any) -> None:
            if patching.any_active():
                safety.begin_generation(p)

        def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
            if patching.any_active():
                safety.end_generation(p)

    return Ssd1bSafetyScript


# -- the API route behind the badge ----------------------------------------------------------------


def listed_checkpoint_path(title: str) -> str | None:
    """The file behind a checkpoint title/name the webui lists; None for anything else.

    "Refresh" empties the host's list before refilling it (``list_models``), so a title missing
    from it is also looked up in the checkpoint folders, where the host's list comes from.
    """
    from modules import sd_models

    info = sd_models.checkpoints_list.get(title) or sd_models.checkpoint_aliases.get(title)
    return info.filename if info is not None else _checkpoint_in_folders(title)


_SHORT_HASH = re.compile(r" \[[0-9a-f]{8,10}\]$")  # "name [shorthash]" titles
_CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")  # list_models' ext_filter, compared lowercased as it does
_NOT_CHECKPOINTS = (".vae.safetensors", ".vae.ckpt")  # and its ext_blacklist


def _checkpoint_in_folders(title: str) -> str | None:
    """The file a title names relative to a checkpoint folder (as ``CheckpointInfo.name`` is), if it is one."""
    from modules import sd_models, shared

    relative = _SHORT_HASH.sub("", title)
    if not relative.lower().endswith(_CHECKPOINT_SUFFIXES) or relative.lower().endswith(_NOT_CHECKPOINTS):
        return None
    folders = [sd_models.model_path, getattr(shared.cmd_opts, "ckpt_dir", None)]
    for folder in filter(None, folders):
        root = os.path.realpath(folder)
        candidate = os.path.realpath(os.path.join(root, relative))
        if os.path.commonpath([root, candidate]) == root and os.path.isfile(candidate):
            return candidate
    return None


def inspect_listed_checkpoint(title: str) -> dict[str, Any]:
    """JSON for the inspect route (raises KeyError for files the webui does not list)."""
    path = listed_checkpoint_path(title)
    if path is None:
        raise KeyError(title)
    try:
        detection = checkpoints.detect_checkpoint_file(path)
    except (CheckpointError, LayoutError, NotSdxlFamily) as error:
        return {"checkpoint": title, "ok": False, "error": str(error)}
    return {
        "checkpoint": title,
        "ok": True,
        "family": detection.family_name,
        "family_key": detection.family_key,
        "distilled": detection.distilled,
        "form": FORM_DIFFUSERS_FOLDER if checkpoints.pipeline_of(path) else detection.form.value,
        "unet_parameters": parameter_count(detection.layout),
        "middle": detection.layout.middle.value,
        "components": detection.components.present(),
        "layout": layout_to_dict(detection.layout),
    }


def add_api_routes(app: Any) -> None:
    from fastapi import HTTPException

    def inspect_route(checkpoint: str) -> dict[str, Any]:
        try:
            return inspect_listed_checkpoint(checkpoint)
        except KeyError:
            raise HTTPException(status_code=404, detail=f"not a checkpoint the webui lists: {checkpoint!r}") from None

    app.add_api_route(API_INSPECT_ROUTE, inspect_route, methods=["GET"])


# -- settings and infotext paste -------------------------------------------------------------------


def install_settings() -> None:
    """Add the "SSD-1B" section to the host's settings and map pasted infotext onto it (idempotent)."""
    from modules import script_callbacks

    register_settings()
    script_callbacks.on_infotext_pasted(_infotext_pasted)


def register_settings() -> None:
    """Add the "SSD-1B" section to the host's settings (call at script import; idempotent)."""
    import inspect

    import gradio as gr
    from modules import call_queue, shared, shared_items

    section: tuple[str, ...] = (settings.SECTION_ID, settings.SECTION_LABEL)
    if "category_id" in inspect.signature(shared.OptionInfo).parameters:  # v1.7+; v1.6's UI breaks on 3 parts
        section = (*section, settings.CATEGORY_ID)
    reload_vae = call_queue.wrap_queued_call(vae.reload_vae_of_loaded_model)
    options = {}
    for setting in settings.SETTINGS:
        refresh = None
        if setting.lists_webui_vaes:  # choices read when the page is built, with a refresh button
            component, args = gr.Dropdown, functools.partial(_vae_choices, setting)
            refresh = getattr(shared_items, "refresh_vae_list", None)
        elif setting.kind == "checkbox":
            component, args = gr.Checkbox, None
        else:
            component = gr.Dropdown if setting.kind == "dropdown" else gr.Radio
            args = {"choices": list(setting.choices)}
        options[setting.key] = shared.OptionInfo(
            setting.default,
            setting.label,
            component,
            args,
            onchange=reload_vae if setting.reloads_vae else None,
            refresh=refresh,
            infotext=setting.infotext,
        ).info(setting.info)
    shared.options_templates.update(shared.options_section(section, options))
    for key, info in options.items():
        # options_templates is opts.data_labels only until the settings UI reorders it (Reload UI).
        shared.opts.add_option(key, info)
        # v1.6's add_option leaves opts.data alone: GET /sdapi/v1/options lists opts.data only, and
        # override_settings looks keys up there.
        shared.opts.data.setdefault(key, info.default)


def uninstall_settings() -> None:
    """Take the "SSD-1B" section out of the settings page; the values users saved stay in ``opts.data``."""
    from modules import shared

    for setting in settings.SETTINGS:
        shared.opts.data_labels.pop(setting.key, None)
        shared.options_templates.pop(setting.key, None)


def _vae_choices(setting: settings.Setting) -> dict[str, Any]:
    from modules import sd_vae

    return {"choices": setting.choices_with(sd_vae.vae_dict)}


def _infotext_pasted(_text: str, params: dict[str, Any]) -> None:
    infotext.pasted_values(params, vae_automatic=settings.VAE_AUTOMATIC)
