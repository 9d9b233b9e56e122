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
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from . import __version__
from .detect import LDM_UNET_PREFIX, OTHER_MODEL_KINDS, Detection, Form, compare_shapes, detect
from .errors import CheckpointError, LayoutError, NotSdxlFamily
from .families import CUSTOM_DISTILLED, match_family
from .layout import (
    UNetLayout,
    layout_from_dict,
    layout_from_sgm_params,
    layout_to_dict,
    ldm_to_diffusers_names,
    parameter_count,
)
from .safetensors_header import read_header
from .unet_builder import LAYOUT_ATTRIBUTE, build_unet, is_ssd1b_unet

LOG_PREFIX = "[SSD-1B]"
BUILD_TARGET = f"{__name__}.build_distilled_unet"
ORIGINAL_ATTRIBUTE = "__ssd1b_original__"
API_INSPECT_ROUTE = "/ssd1b/v1/inspect"


def log(message: str) -> None:
    print(f"{LOG_PREFIX} {message}", flush=True)


# -- host facts ------------------------------------------------------------------------------------


def is_forge() -> bool:
    """Forge loads these models natively; we must not patch it."""
    return importlib.util.find_spec("modules_forge") is not None


@functools.lru_cache(maxsize=64)
def _detect_file_cached(path: str, mtime_ns: int, size: int) -> Detection:
    return detect(read_header(path).shapes())


def detect_checkpoint_file(path: str | os.PathLike[str]) -> Detection:
    """Detection from the safetensors header; cached per (path, mtime, size) so a load reads it once."""
    try:
        stat = os.stat(path)
    except OSError as error:
        raise CheckpointError(path, f"cannot be read: {error.strerror or error}") from None
    try:
        return _detect_file_cached(str(path), stat.st_mtime_ns, stat.st_size)
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
        if error.kind in OTHER_MODEL_KINDS:
            return None
        raise CheckpointError(filename, f"cannot be loaded as a checkpoint: {error}") from None
    except LayoutError as error:
        raise CheckpointError(filename, f"inconsistent SDXL-family UNet: {error}") from None
    if not detection.distilled:
        return None
    if detection.form is not Form.SINGLE_FILE or not (detection.components.clip_l and detection.components.clip_g):
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


def config_builds_layout(config_path: str, layout: UNetLayout) -> bool:
    """True when the stock sgm UNet of ``config_path`` has exactly ``layout`` (a user's own yaml)."""
    import yaml

    try:
        with open(config_path, encoding="utf-8") as handle:
            network = yaml.safe_load(handle)["model"]["params"]["network_config"]
        return network["target"].endswith(".UNetModel") and layout_from_sgm_params(network["params"]) == layout
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return False


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
    if not detection.distilled:
        return original(state_dict, info)
    if detection.form is Form.DIFFUSERS_UNET:
        rename_diffusers_unet(state_dict, detection)
    near = sd_models_config.find_checkpoint_config_near_filename(info) if info is not None else None
    if near is not None:
        if config_builds_layout(near, detection.layout):
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
        (sd_models_config, "find_checkpoint_config"),
    ]
    if hasattr(sd_hijack.StableDiffusionModelHijack, "convert_sdxl_to_ssd"):  # v1.7+
        names.append((sd_hijack.StableDiffusionModelHijack, "convert_sdxl_to_ssd"))
    return names


_WRAPPERS: dict[str, Callable[..., Any]] = {
    "load_model": _preflight_load_model,
    "reload_model_weights": _preflight_reload,
    "load_model_weights": _strict_load_model_weights,
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
        "form": detection.form.value,
        "unet_parameters": parameter_count(detection.layout),
        "middle": detection.layout.middle.value,
        "components": detection.components.present(),
        "layout": layout_to_dict(detection.layout),
    }


ARCH_INFOTEXT_KEY = "SSD-1B arch"


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
                p.extra_generation_params[ARCH_INFOTEXT_KEY] = family.name if family else CUSTOM_DISTILLED

    return Ssd1bScript


def add_api_routes(app: Any) -> None:
    from fastapi import HTTPException

    def inspect_route(checkpoint: str) -> dict[str, Any]:
        try:
            return inspect_listed_checkpoint(checkpoint)
        except KeyError:
            raise HTTPException(status_code=404, detail=f"not a checkpoint the webui lists: {checkpoint!r}") from None

    app.add_api_route(API_INSPECT_ROUTE, inspect_route, methods=["GET"])
