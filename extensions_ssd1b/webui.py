"""The host adapter: the only module of the extension that touches AUTOMATIC1111.

Everything here imports the host lazily, inside functions, and checks capabilities (``hasattr``)
rather than version strings, so one code path serves v1.6.0 through v1.10.1.

How a distilled checkpoint is loaded:

1. *Pre-flight* (``load_model`` / ``reload_model_weights``): the safetensors header is read and
   the layout detected before the host tears down the current model.  A file we must refuse (an
   inconsistent layout, a LoRA or VAE picked as a checkpoint, a broken file) fails here with a
   message naming the file and the reason, and the previous model stays loaded.
2. *Config* (``sd_models_config.find_checkpoint_config``): a distilled layout gets its own config,
   a copy of the host's ``sd_xl_base.yaml`` whose UNet target is :func:`build_distilled_unet`
   with the layout as parameters.  Every architecture has a distinct config path, so each switch
   between them builds a fresh model (no stale weights from the previous checkpoint).
3. *Build*: :func:`build_distilled_unet` builds the UNet from the host's own sgm classes at
   exactly the detected shape, under the host's meta-device initialisation.
4. *Strict load* (``load_model_weights``): every UNet tensor of the file must be used and every
   UNet parameter must come from the file; otherwise the load fails naming the blocks.
5. v1.7+: the host's SSD-1B pruning (``convert_sdxl_to_ssd``) is skipped for our UNets.

A diffusers folder under ``models/Stable-diffusion`` is listed by the host as its
``unet/diffusion_pytorch_model*.safetensors``; ``read_state_dict`` is wrapped so that picking it
loads the whole folder (:mod:`extensions_ssd1b.pipeline_folder`), and every step above sees an
ordinary single-file state dict.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from . import __version__, infotext, pipeline_folder, settings, vae_choice, vae_nan
from .components import DIFFUSERS_PARTS
from .detect import LDM_UNET_PREFIX, OTHER_MODEL_KINDS, Detection, Form, compare_shapes, detect
from .errors import CheckpointError, LayoutError, NotSdxlFamily, Ssd1bError
from .families import match_family
from .layout import (
    UNetLayout,
    layout_from_dict,
    layout_from_sgm_params,
    layout_to_dict,
    ldm_to_diffusers_names,
    parameter_count,
)
from .report import FORM_DIFFUSERS_FOLDER
from .safetensors_header import read_header
from .unet_builder import LAYOUT_ATTRIBUTE, build_unet, is_ssd1b_unet

LOG_PREFIX = "[SSD-1B]"
BUILD_TARGET = f"{__name__}.build_distilled_unet"
ORIGINAL_ATTRIBUTE = "__ssd1b_original__"
API_INSPECT_ROUTE = "/ssd1b/v1/inspect"


_last_message: list[str] = [""]


def log(message: str) -> None:
    """One console line; the host asks for the same config twice per load, so repeats are dropped."""
    if message != _last_message[0]:
        print(f"{LOG_PREFIX} {message}", flush=True)
        _last_message[0] = message


# -- host facts ------------------------------------------------------------------------------------


def is_forge() -> bool:
    """Forge loads these models natively; we must not patch it."""
    return importlib.util.find_spec("modules_forge") is not None


@functools.lru_cache(maxsize=16)
def _pipeline_cached(path: str, version: tuple[int, ...]) -> pipeline_folder.PipelineCheckpoint:
    return pipeline_folder.plan_pipeline(path)


@functools.lru_cache(maxsize=64)
def _detect_file_cached(path: str, version: tuple[int, ...]) -> Detection:
    if pipeline_folder.pipeline_root(path) is not None:
        return detect(_pipeline_cached(path, version).shapes())
    return detect(read_header(path).shapes())


def _version(path: str | os.PathLike[str]) -> tuple[int, ...]:
    """What changes when the file does (mtime, size); for a diffusers folder's UNet file, also when a
    file is added to or removed from the folder or its parts (their modification times)."""
    try:
        stat = os.stat(path)
        version = (stat.st_mtime_ns, stat.st_size)
        if (root := pipeline_folder.pipeline_root(path)) is not None:
            folders = [root, *(root / part for part, _ in DIFFUSERS_PARTS)]
            version += tuple(os.stat(f).st_mtime_ns if f.is_dir() else 0 for f in folders)
        return version
    except OSError as error:
        raise CheckpointError(path, f"cannot be read: {error.strerror or error}") from None


def pipeline_of(path: str | os.PathLike[str]) -> pipeline_folder.PipelineCheckpoint | None:
    """The diffusers folder that loading ``path`` means, or None for an ordinary file (cached)."""
    if pipeline_folder.pipeline_root(path) is None:
        return None
    try:
        return _pipeline_cached(str(path), _version(path))
    except NotSdxlFamily:  # an SD1/SD2 diffusers folder: the host's business, as before
        return None


def detect_checkpoint_file(path: str | os.PathLike[str]) -> Detection:
    """Detection from the safetensors header (or, for a diffusers folder's UNet file, from the
    whole folder's headers); cached per file version so that a load reads them once."""
    try:
        return _detect_file_cached(str(path), _version(path))
    except (LayoutError, NotSdxlFamily) as error:
        error.path = str(path)  # type: ignore[attr-defined]
        raise


def describe(detection: Detection) -> str:
    layout = detection.layout
    billions = parameter_count(layout) / 1e9
    parts = [f"{detection.family_name} ({billions:.2f} B UNet, middle block: {layout.middle.value})"]
    missing = [name for name, has in (("VAE", detection.components.vae),) if not has]
    if missing:
        parts.append("no " + ", ".join(missing))
    return ", ".join(parts)


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
        detection = detect_checkpoint_file(filename)
    except NotSdxlFamily as error:
        if part := pipeline_folder.component_folder(filename):
            root, name = part
            raise CheckpointError(
                filename,
                f"is the {name} of the diffusers folder {root}; pick its "
                f"unet/{pipeline_folder.UNET_STEM}.safetensors to load the whole folder",
            ) from None
        if error.kind in OTHER_MODEL_KINDS:
            return None
        raise CheckpointError(filename, f"cannot be loaded as a checkpoint: {error}") from None
    except LayoutError as error:
        raise CheckpointError(filename, f"inconsistent SDXL-family UNet: {error}") from None
    if not detection.distilled or host_builds_itself(detection.layout):
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

    preflight((checkpoint_info or sd_models.select_checkpoint()).filename)
    return original(checkpoint_info, *args, **kwargs)


def _preflight_reload(
    original: Callable[..., Any], sd_model: Any = None, info: Any = None, *args: Any, **kwargs: Any
) -> Any:
    from modules import sd_models

    preflight((info or sd_models.select_checkpoint()).filename)
    return original(sd_model, info, *args, **kwargs)


# -- 2. config -------------------------------------------------------------------------------------


def _shapes(state_dict: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(getattr(value, "shape", ())) for key, value in state_dict.items()}


def rename_diffusers_unet(state_dict: dict[str, Any], detection: Detection) -> None:
    """Rename a diffusers-named UNet to LDM names in place (the tensors themselves are not copied)."""
    to_ldm = {diffusers: ldm for ldm, diffusers in ldm_to_diffusers_names(detection.layout).items()}
    prefix = detection.unet_prefix
    for key in [k for k in state_dict if k.startswith(prefix) and k[len(prefix) :] in to_ldm]:
        state_dict[LDM_UNET_PREFIX + to_ldm[key[len(prefix) :]]] = state_dict.pop(key)


def _read_state_dict(
    original: Callable[..., Any], checkpoint_file: str, print_global_state: bool = False, map_location: Any = None
) -> Any:
    pipeline = pipeline_of(checkpoint_file)
    if pipeline is None:
        return original(checkpoint_file, print_global_state, map_location)
    from modules import devices, sd_models, shared

    # The same device choice as the host's own read_state_dict.
    device = map_location or shared.weight_load_location or devices.get_optimal_device_name()
    log(f"{checkpoint_file}: reading the diffusers folder {pipeline.root} ({len(pipeline.plan.sources)} files)")
    return sd_models.get_state_dict_from_checkpoint(pipeline_folder.load_state_dict(pipeline, device))


def config_directory() -> Path:
    directory = Path(tempfile.gettempdir()) / "sd-webui-ssd1b" / "configs"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def write_distilled_config(base_config: str, detection: Detection) -> str:
    """A copy of the host's SDXL config whose UNet is built by us at ``detection.layout``.

    The path is a function of the layout, the components present and the base config, so a
    switch between architectures always changes ``used_config`` and makes the host build afresh.
    """
    import yaml

    with open(base_config, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    network = config["model"]["params"]["network_config"]
    base_params = network.get("params", {})
    network["target"] = BUILD_TARGET
    # Head width is not visible in the weights: use the host's, as its own SDXL UNet would.
    layout = dataclasses.replace(detection.layout, num_head_channels=int(base_params.get("num_head_channels", 64)))
    network["params"] = {
        "layout": layout_to_dict(layout),
        "attn_type": base_params.get("spatial_transformer_attn_type", "softmax"),
    }
    components = sorted(detection.components.present())
    config["ssd1b"] = {"family": detection.family_name, "components": components, "version": __version__}
    text = yaml.safe_dump(config, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = config_directory() / f"{detection.family_key}-{digest}.yaml"
    if not path.exists():
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    return str(path)


@functools.lru_cache(maxsize=16)
def stock_unet_layout(config_path: str) -> UNetLayout | None:
    """The UNet a host config builds with sgm's own ``UNetModel``, or None (not one, unreadable)."""
    import yaml

    try:
        with open(config_path, encoding="utf-8") as handle:
            network = yaml.safe_load(handle)["model"]["params"]["network_config"]
        if not network["target"].endswith(".UNetModel"):
            return None
        return layout_from_sgm_params(network["params"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


def builds(config_path: str, layout: UNetLayout) -> bool:
    """True when ``config_path`` builds exactly ``layout`` (head width is not in the weights: ignored)."""
    stock = stock_unet_layout(config_path)
    return stock is not None and stock == dataclasses.replace(layout, num_head_channels=stock.num_head_channels)


def host_builds_itself(layout: UNetLayout) -> bool:
    """SDXL and the refiner at the host's own widths: its stock configs build them correctly."""
    from modules import sd_models_config

    return any(builds(path, layout) for path in (sd_models_config.config_sdxl, sd_models_config.config_sdxl_refiner))


def _find_checkpoint_config(original: Callable[..., Any], state_dict: dict[str, Any], info: Any) -> Any:
    from modules import sd_models_config

    try:
        detection = detect(_shapes(state_dict))
    except NotSdxlFamily:
        return original(state_dict, info)
    except LayoutError as error:
        raise CheckpointError(
            getattr(info, "filename", "checkpoint"), f"inconsistent SDXL-family UNet: {error}"
        ) from None
    if not detection.distilled or host_builds_itself(detection.layout):
        return original(state_dict, info)
    if detection.form is Form.DIFFUSERS_UNET:
        rename_diffusers_unet(state_dict, detection)
    near = sd_models_config.find_checkpoint_config_near_filename(info) if info is not None else None
    if near is not None:
        if builds(near, detection.layout):
            log(f"{info.filename}: {describe(detection)}; using {near} beside it, which builds exactly this UNet")
            return near
        log(f"ignoring {near}: it does not build the UNet this checkpoint holds ({detection.family_name})")
    path = write_distilled_config(sd_models_config.config_sdxl, detection)
    log(f"{getattr(info, 'filename', 'checkpoint')}: {describe(detection)}; building the UNet at its true shape")
    return path


# -- 3. build --------------------------------------------------------------------------------------


def build_distilled_unet(layout: Mapping[str, Any], attn_type: str = "softmax", **_: Any) -> Any:
    """Config target: the UNet for ``layout`` from the host's sgm classes (called by sgm's loader)."""
    from sgm.modules.diffusionmodules import openaimodel

    return build_unet(openaimodel, layout_from_dict(layout), attn_type=attn_type)


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
    return original(model, checkpoint_info, state_dict, timer, *args, **kwargs)


# -- 5. the host's own SSD-1B pruning (v1.7+) ------------------------------------------------------


def _convert_sdxl_to_ssd(original: Callable[..., Any], hijack: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
    unet = model.model.diffusion_model
    if is_ssd1b_unet(unet) or not hasattr(unet.middle_block, "1"):
        return None  # already at its true shape; pruning it again would crash
    return original(hijack, model, *args, **kwargs)


# -- patching --------------------------------------------------------------------------------------


def _patch(owner: Any, name: str, wrapper: Callable[..., Any]) -> None:
    """Replace ``owner.name`` by ``wrapper(original, ...)``, once (scripts are re-imported on UI reload)."""
    current = getattr(owner, name)
    original = getattr(current, ORIGINAL_ATTRIBUTE, current)

    @functools.wraps(original)
    def patched(*args: Any, **kwargs: Any) -> Any:
        return wrapper(original, *args, **kwargs)

    setattr(patched, ORIGINAL_ATTRIBUTE, original)
    setattr(owner, name, patched)


def unpatch(owner: Any, name: str) -> None:
    current = getattr(owner, name)
    if hasattr(current, ORIGINAL_ATTRIBUTE):
        setattr(owner, name, getattr(current, ORIGINAL_ATTRIBUTE))


def patched_names() -> list[tuple[Any, str]]:
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
    "find_checkpoint_config": _find_checkpoint_config,
    "convert_sdxl_to_ssd": _convert_sdxl_to_ssd,
}


def install_load_path() -> bool:
    """Patch the host's load path; on Forge do nothing and say so once."""
    if is_forge():
        log("Forge detected: it loads SSD-1B, Vega and KOALA natively, so this extension stands down.")
        return False
    for owner, name in patched_names():
        _patch(owner, name, _WRAPPERS[name])
    return True


def uninstall_load_path() -> None:
    for owner, name in patched_names():
        unpatch(owner, name)


# -- what the UI and API show ----------------------------------------------------------------------


def loaded_unet_layout(sd_model: Any) -> UNetLayout | None:
    unet = getattr(getattr(sd_model, "model", None), "diffusion_model", None)
    return getattr(unet, LAYOUT_ATTRIBUTE, None) if is_ssd1b_unet(unet) else None


def listed_checkpoint_path(title: str) -> str | None:
    """The file behind a checkpoint title/name the webui lists; None for anything else."""
    from modules import sd_models

    info = sd_models.checkpoints_list.get(title) or sd_models.checkpoint_aliases.get(title)
    return info.filename if info is not None else None


def inspect_listed_checkpoint(title: str) -> dict[str, Any]:
    """JSON for the inspect route (raises KeyError for files the webui does not list)."""
    path = listed_checkpoint_path(title)
    if path is None:
        raise KeyError(title)
    try:
        detection = detect_checkpoint_file(path)
    except (CheckpointError, LayoutError, NotSdxlFamily) as error:
        return {"checkpoint": title, "ok": False, "error": str(error)}
    return {
        "checkpoint": title,
        "ok": True,
        "family": detection.family_name,
        "family_key": detection.family_key,
        "distilled": detection.distilled,
        "form": FORM_DIFFUSERS_FOLDER if pipeline_of(path) else detection.form.value,
        "unet_parameters": parameter_count(detection.layout),
        "middle": detection.layout.middle.value,
        "components": detection.components.present(),
        "layout": layout_to_dict(detection.layout),
    }


def make_script_class() -> type:
    """The always-on Script that records the UNet family in the infotext (scripts/ wires it)."""
    from modules import scripts, shared

    class Ssd1bScript(scripts.Script):
        def title(self) -> str:
            return "SSD-1B"

        def show(self, is_img2img: bool) -> Any:
            return scripts.AlwaysVisible

        def process(self, p: Any, *args: Any) -> None:
            layout = loaded_unet_layout(shared.sd_model)
            if layout is not None:
                family = match_family(layout)
                # the family key ("ssd-1b", "custom"): stable across versions and locales
                p.extra_generation_params[infotext.KEY_ARCH] = infotext.format_arch(family.key if family else "custom")

    return Ssd1bScript


def add_api_routes(app: Any) -> None:
    from fastapi import HTTPException

    def inspect_route(checkpoint: str) -> dict[str, Any]:
        try:
            return inspect_listed_checkpoint(checkpoint)
        except KeyError:
            raise HTTPException(status_code=404, detail=f"not a checkpoint the webui lists: {checkpoint!r}") from None

    app.add_api_route(API_INSPECT_ROUTE, inspect_route, methods=["GET"])


# -- VAE and NaN safety (issue 4) -------------------------------------------------------------------
#
# The decisions are the core's (vae_choice.resolve_vae, vae_nan.NanRecovery, vae_nan.sample_with_recovery);
# this section only reads the host's state for them and puts their answers where the host looks:
#
# * settings: registered at import time, so they exist with --nowebui and in /sdapi/v1/options;
# * sd_vae.resolve_vae: a distilled checkpoint without a VAE gets the resolved file instead of zeros;
# * processing.decode_first_stage / images_tensor_to_samples (processing imports both names): every
#   decode and encode of an in-scope model runs in the decided precision under NanRecovery;
# * StableDiffusionProcessing{Txt2Img,Img2Img}.sample: a UNet NaN is redone with the same noise, and a
#   refusal stops the generation before sampling;
# * on_cfg_denoised: one device-side reduction per step (StepWatch), read once after sampling.

SAFETY_SCRIPT_TITLE = "SSD-1B VAE and NaN safety"
DATA_FOLDER = "ssd1b"  # under the webui's data dir: the extension's own folder may be a read-only checkout


class VaeUnavailable(Ssd1bError):
    """No VAE can decode this model: every image would be flat gray (or TAESD-XL cannot be had)."""


@dataclasses.dataclass
class _Generation:
    """What one generation collects for its infotext."""

    p: Any
    notes: list[infotext.RecoveryNote] = dataclasses.field(default_factory=list)
    told: set[str] = dataclasses.field(default_factory=set)


_active: _Generation | None = None
_watch: vae_nan.StepWatch | None = None
_recovery: vae_nan.NanRecovery | None = None
_announced: set[str] = set()


def read_settings() -> settings.Values:
    from modules import shared

    return settings.read_values(lambda key: getattr(shared.opts, key, None))


# settings -----------------------------------------------------------------------------------------


def register_settings() -> None:
    """Add the "SSD-1B" section to the host's settings (call at script import; idempotent)."""
    import inspect

    import gradio as gr
    from modules import call_queue, shared, shared_items

    section: tuple[str, ...] = (settings.SECTION_ID, settings.SECTION_LABEL)
    if "category_id" in inspect.signature(shared.OptionInfo).parameters:  # v1.7+; v1.6's UI breaks on 3 parts
        section = (*section, settings.CATEGORY_ID)
    reload_vae = call_queue.wrap_queued_call(_reload_vae_of_loaded_model)
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


def _vae_choices(setting: settings.Setting) -> dict[str, Any]:
    from modules import sd_vae

    return {"choices": setting.choices_with(sd_vae.vae_dict)}


def _reload_vae_of_loaded_model() -> None:
    from modules import sd_models, sd_vae

    model = sd_models.model_data.sd_model  # not shared.sd_model: that would load a checkpoint
    if model is not None:
        sd_vae.reload_vae_weights(model)


def _infotext_pasted(_text: str, params: dict[str, Any]) -> None:
    infotext.pasted_values(params, vae_automatic=settings.VAE_AUTOMATIC)


# which VAE ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _describe_vae_cached(name: str, path: str, mtime_ns: int, size: int) -> vae_choice.VaeFile:
    return vae_choice.describe_vae_file(name, path)


def _describe_vae(name: str, path: str) -> vae_choice.VaeFile:
    try:
        stat = os.stat(path)
    except OSError as error:
        return vae_choice.VaeFile(name, path, problem=f"cannot be read: {error.strerror or error}")
    return _describe_vae_cached(name, path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _fingerprint_cached(path: str, mtime_ns: int, size: int) -> str | None:
    try:
        return vae_nan.file_fingerprint(path)
    except CheckpointError:
        return None


def _checkpoint_vae_fingerprint(path: str) -> str | None:
    if (pipeline := pipeline_of(path)) is not None:
        path = str(pipeline.vae_file())
    stat = os.stat(path)
    return _fingerprint_cached(path, stat.st_mtime_ns, stat.st_size)


def _scope_detection(checkpoint_file: str | None, values: settings.Values) -> Detection | None:
    """The detection of an SDXL-family checkpoint our settings apply to; None for the host's own."""
    if not checkpoint_file or not str(checkpoint_file).lower().endswith(".safetensors"):
        return None
    try:
        detection = detect_checkpoint_file(checkpoint_file)
    except (CheckpointError, LayoutError, NotSdxlFamily):
        return None
    return detection if values.applies_to(sdxl_family=True, distilled=detection.distilled) else None


def decide_vae(checkpoint_file: str | None) -> vae_choice.VaeDecision | vae_choice.VaeRefusal | None:
    """The VAE (and precision) for ``checkpoint_file``, or None where our settings do not apply."""
    values = read_settings()
    detection = _scope_detection(checkpoint_file, values)
    if detection is None or checkpoint_file is None:
        return None
    from modules import devices, extra_networks, paths, sd_vae, shared

    opts, cmd_opts = shared.opts, shared.cmd_opts
    near = sd_vae.find_vae_near_checkpoint(checkpoint_file)
    taesd = os.path.join(paths.models_path, vae_nan.TAESD_DIR)
    has_vae = detection.components.vae
    return vae_choice.resolve_vae(
        checkpoint=_display_name(checkpoint_file),
        checkpoint_has_vae=has_vae,
        setting=values.vae,
        precision=values.vae_precision,
        available=[_describe_vae(name, path) for name, path in sd_vae.vae_dict.items()],
        taesd=vae_choice.TaesdFiles(
            decoder=os.path.isfile(os.path.join(taesd, vae_nan.TAESDXL_DECODER)),
            encoder=os.path.isfile(os.path.join(taesd, vae_nan.TAESDXL_ENCODER)),
        ),
        device=vae_choice.DeviceCaps.of(devices.device, no_half_vae=bool(cmd_opts.no_half or cmd_opts.no_half_vae)),
        webui=vae_choice.WebuiVae(
            sd_vae=opts.sd_vae,
            overrides_per_model=opts.sd_vae_overrides_per_model_preferences,
            preferred=extra_networks.get_user_metadata(checkpoint_file).get("vae"),
            near_checkpoint=os.path.basename(near) if near else None,
            commandline_path=cmd_opts.vae_path,
        ),
        checkpoint_vae_fingerprint=_checkpoint_vae_fingerprint(checkpoint_file) if has_vae else None,
        models_dir=paths.models_path,
    )


def _display_name(checkpoint_file: str) -> str:
    pipeline = pipeline_of(checkpoint_file)
    return f"the diffusers folder {pipeline.root.name}" if pipeline else os.path.basename(checkpoint_file)


def _model_file(model: Any) -> str | None:
    return getattr(getattr(model, "sd_checkpoint_info", None), "filename", None)


def _announce(decision: vae_choice.VaeDecision) -> None:
    """The decision's console line (and its notes), once per distinct decision."""
    for line in (decision.reason, *decision.notes):
        if line not in _announced:
            _announced.add(line)
            log(line)


def _resolve_vae(original: Callable[..., Any], checkpoint_file: str, *args: Any, **kwargs: Any) -> Any:
    """``sd_vae.resolve_vae``: in scope, the file our decision names (the host would load zeros)."""
    resolution = original(checkpoint_file, *args, **kwargs)
    decision = decide_vae(checkpoint_file)
    if not isinstance(decision, vae_choice.VaeDecision):
        return resolution  # not ours, or a refusal: that one stops the generation, not the load
    _announce(decision)
    if decision.source is not vae_choice.VaeSource.FILE or resolution.vae == decision.path:
        return resolution
    return type(resolution)(decision.path, f"from SSD-1B ({decision.chosen_by})")


# the generation -----------------------------------------------------------------------------------


def toast(message: str | None) -> None:
    """A toast in the web UI (gradio's Warning, from inside an event); nothing for API calls."""
    if not message:
        return
    try:
        import gradio
    except ImportError:
        return
    warning = getattr(gradio, "Warning", None)
    if warning is not None:
        import warnings

        with warnings.catch_warnings():  # outside a gradio event it would be a Python warning
            warnings.simplefilter("ignore")
            warning(f"SSD-1B: {message}")


def _tell(message: str) -> None:
    """One console line and one toast per generation for the same message."""
    if _active is not None:
        if message in _active.told:
            return
        _active.told.add(message)
    log(message.removeprefix("SSD-1B: "))
    toast(message.removeprefix("SSD-1B: "))


def _record(notes: list[infotext.RecoveryNote]) -> None:
    if _active is None or not notes:
        return
    _active.notes.extend(notes)
    _active.p.extra_generation_params[infotext.KEY_NAN_RECOVERY] = infotext.format_recovery(_active.notes)


def begin_generation(p: Any) -> None:
    """Script.process: load the decided VAE before the first decode and put it into the infotext."""
    global _active
    from modules import sd_vae, shared

    _active = None
    model = shared.sd_model
    decision = decide_vae(_model_file(model))
    if decision is None:
        return
    _active = _Generation(p)
    if isinstance(decision, vae_choice.VaeRefusal):
        return  # raised from sample(), outside the script runner that would only log it
    _announce(decision)
    if decision.source is not vae_choice.VaeSource.TAESD_XL:
        expected = decision.path if decision.source is vae_choice.VaeSource.FILE else None
        if sd_vae.loaded_vae_file != expected:  # e.g. the file was added after the checkpoint loaded
            sd_vae.reload_vae_weights(model)
            # The host read these for the infotext's "VAE" and "VAE hash" before Script.process.
            p.sd_vae_name, p.sd_vae_hash = sd_vae.get_loaded_vae_name(), sd_vae.get_loaded_vae_hash()
    p.extra_generation_params.update(decision.infotext())


def end_generation(p: Any) -> None:
    global _active
    if _active is not None and _active.p is p:
        _active = None


def _nan_recovery() -> vae_nan.NanRecovery:
    global _recovery
    if _recovery is None:
        from modules import devices, paths_internal

        store = vae_nan.PrecisionStore(os.path.join(paths_internal.data_path, DATA_FOLDER))
        _recovery = vae_nan.NanRecovery(store, vae_choice.bf16_is_fast(devices.device), report=_report_event)
    return _recovery


def _report_event(event: vae_nan.NanEvent) -> None:
    log(event.console_line().removeprefix("SSD-1B: "))
    toast(event.toast())


@contextlib.contextmanager
def _vae_in(module: Any, precision: settings.Precision) -> Iterator[None]:
    """The VAE module and the host's ``dtype_vae`` in ``precision`` for one call, then as they were.

    ``dtype_vae`` goes along because the host casts the latent (decode) and the whole VAE (encode)
    to it inside the call.
    """
    from modules import devices

    saved = devices.dtype_vae
    devices.dtype_vae = vae_nan.DTYPES[precision]
    try:
        with vae_nan.module_precision(module, precision):
            yield
    finally:
        devices.dtype_vae = saved


def _run_vae(
    call: Callable[[], Any],
    module: Any,
    stage: vae_nan.Stage,
    decision: vae_choice.VaeDecision,
    policy: settings.NanPolicy,
    inputs: Any,
) -> Any:
    recovery = _nan_recovery()
    try:
        with _vae_in(module, decision.precision):
            return recovery.run(
                call,
                stage=stage,
                vae=decision.identity(),
                precision=decision.precision,
                with_precision=functools.partial(_vae_in, module),
                policy=policy,
                learn=decision.precision_auto,
                inputs=inputs,
            )
    finally:
        _record(recovery.take_notes())


def _taesd(stage: vae_nan.Stage) -> Any:
    """The host's TAESD-XL decoder or encoder module (it picks the XL files for SDXL-family models)."""
    from modules import paths, sd_vae_taesd

    decoder = stage is vae_nan.Stage.DECODE
    try:
        return sd_vae_taesd.decoder_model() if decoder else sd_vae_taesd.encoder_model()
    except Exception as error:  # the host downloads missing files: offline that fails in several ways
        file = vae_nan.TAESDXL_DECODER if decoder else vae_nan.TAESDXL_ENCODER
        folder = os.path.join(paths.models_path, vae_nan.TAESD_DIR)
        raise VaeUnavailable(
            f"TAESD-XL needs {file} in {folder}, and the webui could not get it ({error}). "
            f"Download it from {vae_nan.TAESD_URL} into that folder, or choose another VAE in Settings → SSD-1B."
        ) from error


def _in_scope_vae(model: Any, full_vae: bool) -> vae_choice.VaeDecision | None:
    """The decision for ``model``; None where the host's own handling applies: out of scope, or
    ``full_vae`` False (the user chose the host's TAESD method, which needs no VAE weights)."""
    if not full_vae:
        return None
    decision = decide_vae(_model_file(model))
    if isinstance(decision, vae_choice.VaeRefusal):
        _tell(decision.message)
        raise VaeUnavailable(decision.message)  # never decode gray
    return decision


def _decode_first_stage(original: Callable[..., Any], model: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    from modules import shared

    decision = _in_scope_vae(model, shared.opts.sd_vae_decode_method == "Full")
    if decision is None:
        return original(model, x, *args, **kwargs)
    policy = read_settings().nan_decode
    if decision.source is vae_choice.VaeSource.TAESD_XL:
        decoder = _taesd(vae_nan.Stage.DECODE)
        call = functools.partial(vae_nan.taesd_decode, decoder, x)
        return _run_vae(call, decoder, vae_nan.Stage.DECODE, decision, policy, x)
    call = functools.partial(original, model, x, *args, **kwargs)
    return _run_vae(call, model.first_stage_model, vae_nan.Stage.DECODE, decision, policy, x)


def _images_tensor_to_samples(
    original: Callable[..., Any], image: Any, approximation: Any = None, model: Any = None, *args: Any, **kwargs: Any
) -> Any:
    from modules import sd_samplers_common, shared

    target = model if model is not None else shared.sd_model
    if approximation is None:
        approximation = sd_samplers_common.approximation_indexes.get(shared.opts.sd_vae_encode_method, 0)
    call = functools.partial(original, image, approximation, model, *args, **kwargs)
    decision = _in_scope_vae(target, approximation == 0)  # 0: "Full"
    if decision is None:
        return call()
    policy = read_settings().nan_encode
    if decision.source is vae_choice.VaeSource.TAESD_XL:
        encoder = _taesd(vae_nan.Stage.ENCODE)
        call = functools.partial(vae_nan.taesd_encode, encoder, image)
        return _run_vae(call, encoder, vae_nan.Stage.ENCODE, decision, policy, image)
    return _run_vae(call, target.first_stage_model, vae_nan.Stage.ENCODE, decision, policy, image)


def _observe_step(params: Any) -> None:
    """on_cfg_denoised: one reduction on the device, no sync (read once after sampling)."""
    if _watch is not None:
        _watch.observe(params.x, params.sampling_step)


@contextlib.contextmanager
def _unet_remedy(model: Any, remedy: vae_nan.UnetRemedy) -> Iterator[None]:
    from modules import devices, shared

    if remedy is vae_nan.UnetRemedy.UPCAST_ATTENTION:
        # The host's attention code reads opts.upcast_attn on every call; set without saving.
        data = shared.opts.data
        had, saved = "upcast_attn" in data, data.get("upcast_attn")
        data["upcast_attn"] = True
        try:
            yield
        finally:
            if had:
                data["upcast_attn"] = saved
            else:
                data.pop("upcast_attn", None)
        return
    saved_dtype = devices.dtype_unet
    devices.dtype_unet = vae_nan.DTYPES[settings.Precision.FP32]  # the host casts inputs and timesteps to it
    try:
        with vae_nan.module_forward_precision(model.model.diffusion_model, settings.Precision.FP32):
            yield
    finally:
        devices.dtype_unet = saved_dtype


def _noise_rewinder(p: Any) -> Callable[[], None]:
    """Puts back a fresh copy of the batch's noise generator (p.rng, v1.6+), so a redo gets the same noise."""
    rng = getattr(p, "rng", None)
    fields = ("shape", "seeds", "subseeds", "subseed_strength", "seed_resize_from_h", "seed_resize_from_w")
    if rng is None or not all(hasattr(rng, name) for name in fields):
        return lambda: None
    arguments = {name: getattr(rng, name) for name in fields}
    shape, seeds = arguments.pop("shape"), arguments.pop("seeds")

    def rewind() -> None:
        p.rng = type(rng)(shape, seeds, **arguments)

    return rewind


def _sample(original: Callable[..., Any], p: Any, *args: Any, **kwargs: Any) -> Any:
    """``p.sample``: refuse before sampling when there is no VAE; redo a UNet NaN with the same noise."""
    global _watch
    from modules import devices, shared

    model = shared.sd_model
    values = read_settings()
    if _scope_detection(_model_file(model), values) is None:
        return original(p, *args, **kwargs)
    _in_scope_vae(model, shared.opts.sd_vae_decode_method == "Full")  # a refusal stops here, before sampling
    policy = values.nan_unet
    if policy is settings.NanPolicy.OFF:
        return original(p, *args, **kwargs)
    unet = model.model.diffusion_model
    init_latent = getattr(p, "init_latent", None)
    state = shared.state
    _watch = vae_nan.StepWatch()
    try:
        samples, recovery = vae_nan.sample_with_recovery(
            lambda: original(p, *args, **kwargs),
            watch=_watch,
            policy=policy,
            remedy=functools.partial(_unet_remedy, model),
            rewind=_noise_rewinder(p),
            unet_precision=vae_nan.precision_of(next(unet.parameters()).dtype),
            attention_upcast=bool(getattr(shared.opts, "upcast_attn", False)),
            nan_errors=(devices.NansException,),
            input_nonfinite=lambda: init_latent is not None and not vae_nan.all_finite(init_latent),
            stopped=lambda: bool(state.interrupted or state.skipped or getattr(state, "stopping_generation", False)),
        )
    finally:
        _watch = None
    if recovery is not None:
        _tell(recovery.message)
        _record([recovery.note])
    return samples


def _patched_sample_classes() -> list[type]:
    from modules import processing

    names = ("StableDiffusionProcessingTxt2Img", "StableDiffusionProcessingImg2Img")
    classes = [getattr(processing, name, None) for name in names]
    return [cls for cls in classes if cls is not None and "sample" in vars(cls)]


def install_vae_and_nan_safety() -> None:
    """Settings, VAE resolution, NaN-safe decode/encode and sampling (scripts/ wires it; idempotent)."""
    global _active, _watch, _recovery
    from modules import processing, script_callbacks, sd_vae

    _active, _watch, _recovery = None, None, None  # a new host (tests) or a reload starts afresh
    _announced.clear()
    register_settings()
    _patch(sd_vae, "resolve_vae", _resolve_vae)
    _patch(processing, "decode_first_stage", _decode_first_stage)
    _patch(processing, "images_tensor_to_samples", _images_tensor_to_samples)
    for cls in _patched_sample_classes():
        _patch(cls, "sample", _sample)
    script_callbacks.on_cfg_denoised(_observe_step)
    script_callbacks.on_infotext_pasted(_infotext_pasted)


def make_safety_script_class() -> type:
    """The always-on Script that opens and closes a generation's record (scripts/ wires it)."""
    from modules import scripts

    class Ssd1bSafetyScript(scripts.Script):
        def title(self) -> str:
            return SAFETY_SCRIPT_TITLE

        def show(self, is_img2img: bool) -> Any:
            return scripts.AlwaysVisible

        def process(self, p: Any, *args: Any) -> None:
            begin_generation(p)

        def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
            end_generation(p)

    return Ssd1bSafetyScript
