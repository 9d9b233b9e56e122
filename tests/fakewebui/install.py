"""Install the stand-in webui for one test, and the helpers tests drive it with.

``install_fake_webui(monkeypatch, version, tmp_path)`` makes ``modules`` (and ``launch``, a
``gradio`` stub when no real gradio is installed, the stand-in ``sgm`` when no real one is
importable, and optionally ``modules_forge``) importable through a private import hook, runs the
host's startup (settings, checkpoint list, extension scripts, VAE list) and returns a
:class:`FakeWebui`.  When the test ends every module it added is forgotten and every torch class
attribute the host's load contexts leave behind is restored, so the next test can pick another
release.  When a real ``modules`` is already imported (the ``SD_WEBUI_ROOT`` tier), nothing is
installed and the handle wraps the real host.
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import safetensors.torch
import torch
import yaml

FAKE_WEBUI = Path(__file__).resolve().parent
SDXL_TEST_CONFIG = FAKE_WEBUI / "configs" / "sd_xl_base.yaml"

SUPPORTED_VERSIONS = ("1.6.0", "1.7.0", "1.8.0", "1.9.4", "1.10.1")

DEFAULT_CMD_ARGS = ("--use-cpu", "all", "--no-half", "--no-download-sd-model", "--do-not-download-clip")
"""The flags A1111's own CPU CI starts with (less the ones about the server)."""

UNET_PREFIX = "model.diffusion_model."


# -- the test scale --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestScale:
    """Widths of the stand-in's SDXL (configs/sd_xl_base.yaml is the single source of them)."""

    __test__ = False  # not a pytest test class

    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    transformer_depth: tuple[int, ...]
    num_head_channels: int
    context_dim: int
    adm_in_channels: int
    clip_l_width: int
    openclip_width: int
    size_embed_dim: int
    text_max_length: int
    vae_channels: int
    latent_downscale: int

    @classmethod
    def from_config(cls, path: Path = SDXL_TEST_CONFIG) -> TestScale:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))["model"]["params"]
        unet = params["network_config"]["params"]
        embedders = params["conditioner_config"]["params"]["emb_models"]
        ddconfig = params["first_stage_config"]["params"]["ddconfig"]
        return cls(
            model_channels=unet["model_channels"],
            channel_mult=tuple(unet["channel_mult"]),
            num_res_blocks=unet["num_res_blocks"],
            transformer_depth=tuple(unet["transformer_depth"]),
            num_head_channels=unet["num_head_channels"],
            context_dim=unet["context_dim"],
            adm_in_channels=unet["adm_in_channels"],
            clip_l_width=embedders[0]["params"]["width"],
            openclip_width=embedders[1]["params"]["width"],
            size_embed_dim=embedders[2]["params"]["outdim"],
            text_max_length=embedders[0]["params"]["max_length"],
            vae_channels=ddconfig["ch"],
            latent_downscale=2 ** (len(ddconfig["ch_mult"]) - 1),
        )


TEST_SCALE = TestScale.from_config()

# What A1111's convert_sdxl_to_ssd deletes from an SDXL UNet: a file without these is SSD-1B-shaped.
SSD1B_REMOVED_UNET_PREFIXES = (
    "middle_block.1.",
    "middle_block.2.",
    *(
        f"{block}.1.transformer_blocks.{i}."
        for block in ("input_blocks.7", "input_blocks.8", "output_blocks.0", "output_blocks.1")
        for i in range(4, 10)
    ),
    "output_blocks.4.1.transformer_blocks.1.",
    "output_blocks.5.1.transformer_blocks.1.",
)


def ssd1b_shaped(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An SDXL state dict cut to SSD-1B's UNet shape (what A1111 v1.7+ detects as SSD)."""
    removed = tuple(UNET_PREFIX + prefix for prefix in SSD1B_REMOVED_UNET_PREFIXES)
    return {key: value for key, value in state_dict.items() if not key.startswith(removed)}


def without_vae(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint shipped without its VAE ("VAE is not baked")."""
    return {key: value for key, value in state_dict.items() if not key.startswith("first_stage_model.")}


# -- installing ------------------------------------------------------------------------------------


class _StandInFinder(importlib.abc.MetaPathFinder):
    """Finds the stand-in's top-level packages (and only those) without touching sys.path."""

    def __init__(self, locations: dict[str, Path]) -> None:
        self.locations = locations

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        location = self.locations.get(fullname)
        if location is None:
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [str(location)])


# Class attributes the host's construction/load contexts replace.  LoadStateDictOnMeta leaves
# stale entries on Linear, Conv2d, ... (a real A1111 quirk), so they are put back after each test.
_TORCH_ATTRIBUTES = (
    (torch.nn.Module, "load_state_dict"),
    (torch.nn.Module, "_load_from_state_dict"),
    (torch.nn.Module, "to"),
    (torch.nn.Linear, "__init__"),
    (torch.nn.Conv2d, "__init__"),
    (torch.nn.MultiheadAttention, "__init__"),
    *(
        (cls, "_load_from_state_dict")
        for cls in (
            torch.nn.Linear,
            torch.nn.Conv2d,
            torch.nn.MultiheadAttention,
            torch.nn.LayerNorm,
            torch.nn.GroupNorm,
        )
    ),
    (torch.nn.init, "kaiming_uniform_"),
    (torch.nn.init, "_no_grad_normal_"),
    (torch.nn.init, "_no_grad_uniform_"),
)
_ABSENT = object()


class _Teardown:
    """Runs the cleanup when monkeypatch undoes its ``armed`` attribute (monkeypatch has no hook)."""

    def __init__(self, cleanup: Any) -> None:
        self._cleanup = cleanup
        self._armed = False

    @property
    def armed(self) -> bool:
        return self._armed

    @armed.setter
    def armed(self, value: bool) -> None:
        if self._armed and not value:
            self._cleanup()
        self._armed = value


def real_webui_root() -> Path | None:
    """The real A1111 checkout of the webui tier (``SD_WEBUI_ROOT``), or None."""
    root = os.environ.get("SD_WEBUI_ROOT")
    return Path(root) if root and (Path(root) / "modules" / "sd_models.py").is_file() else None


def bootstrap_real_webui(root: Path) -> None:
    """Import and initialise the real host in this process (once), with this extension installed."""
    if _real_host_loaded():
        return
    from webui_tier import start_real_webui

    start_real_webui(root)


def _real_host_loaded() -> bool:
    module = sys.modules.get("modules")
    if module is None:
        return False
    locations = list(getattr(module, "__path__", []))
    return bool(locations) and not any(Path(p).resolve() == FAKE_WEBUI / "modules" for p in locations)


def install_fake_webui(
    monkeypatch: Any,
    version: str,
    tmp_path: Path,
    *,
    forge: bool = False,
    cmd_args: Sequence[str] | None = None,
    extensions: Iterable[str | os.PathLike[str]] = (),
) -> FakeWebui:
    """Install the stand-in host imitating A1111 ``version`` for the current test and start it.

    ``cmd_args`` replaces :data:`DEFAULT_CMD_ARGS` (``--data-dir`` is always added);
    ``extensions`` are extension folders linked into ``<data-dir>/extensions`` before the
    scripts are loaded; ``forge=True`` also makes an (empty) ``modules_forge`` package importable.
    """
    root = real_webui_root()
    if root is not None:
        bootstrap_real_webui(root)
    if _real_host_loaded():
        return FakeWebui.for_real_host(tmp_path)
    if version not in SUPPORTED_VERSIONS and not (version.startswith(("1.9.", "1.10.")) and version.count(".") == 2):
        raise ValueError(f"the stand-in imitates A1111 {', '.join(SUPPORTED_VERSIONS)}; not {version!r}")

    data_dir = tmp_path / "webui-data"
    (data_dir / "models" / "Stable-diffusion").mkdir(parents=True, exist_ok=True)
    (data_dir / "models" / "VAE").mkdir(parents=True, exist_ok=True)
    (data_dir / "extensions").mkdir(parents=True, exist_ok=True)
    for extension in extensions:
        source = Path(extension).resolve()
        (data_dir / "extensions" / source.name).symlink_to(source, target_is_directory=True)

    locations = {"modules": FAKE_WEBUI, "launch": FAKE_WEBUI}
    if importlib.util.find_spec("gradio") is None:
        locations["gradio"] = FAKE_WEBUI
    if "sgm" not in sys.modules and importlib.util.find_spec("sgm") is None:
        locations["sgm"] = FAKE_WEBUI
    if forge:
        forge_dir = tmp_path / "forge"
        (forge_dir / "modules_forge").mkdir(parents=True, exist_ok=True)
        (forge_dir / "modules_forge" / "__init__.py").write_text('"""Stand-in: only its presence matters."""\n')
        locations["modules_forge"] = forge_dir
    names = tuple(locations)

    imported_before = set(sys.modules)
    torch_attributes = [(owner, name, vars(owner).get(name, _ABSENT)) for owner, name in _TORCH_ATTRIBUTES]
    torch_threads = torch.get_num_threads()

    def cleanup() -> None:
        torch.set_num_threads(torch_threads)
        for name in [n for n in sys.modules if n not in imported_before and n.split(".")[0] in names]:
            del sys.modules[name]
        for owner, name, value in torch_attributes:
            if value is _ABSENT:
                if name in vars(owner):
                    delattr(owner, name)
            else:
                setattr(owner, name, value)

    teardown = _Teardown(cleanup)
    monkeypatch.setattr(teardown, "armed", True)  # registered first, so undone last
    monkeypatch.setattr(sys, "meta_path", [_StandInFinder(locations), *sys.meta_path])
    importlib.invalidate_caches()
    # Test-scale tensors are tiny: one thread is several times faster than a contended pool.
    torch.set_num_threads(1)

    standin = importlib.import_module("modules._standin")
    standin.VERSION = version
    standin.ARGV = ["--data-dir", str(data_dir), *(DEFAULT_CMD_ARGS if cmd_args is None else cmd_args)]

    importlib.import_module("modules.initialize").initialize()
    return FakeWebui(version=version, data_dir=data_dir, real=False)


# -- driving the host ------------------------------------------------------------------------------


class FakeApp:
    """Records the routes an extension adds in ``on_app_started`` (FastAPI's registration calls)."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Any] = {}

    def add_api_route(self, path: str, endpoint: Any, methods: Sequence[str] = ("GET",), **kwargs: Any) -> None:
        for method in methods:
            self.routes[(method.upper(), path)] = endpoint

    def api_route(self, path: str, methods: Sequence[str] = ("GET",), **kwargs: Any) -> Any:
        def register(endpoint: Any) -> Any:
            self.add_api_route(path, endpoint, methods=methods)
            return endpoint

        return register

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.api_route(path, methods=("GET",))

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.api_route(path, methods=("POST",))


@functools.lru_cache(maxsize=1)
def _stock_shapes() -> dict[str, torch.Size]:
    """Name and shape of every tensor of the test-scale SDXL (the model is built once per session)."""
    from modules import _sdxl_test_scale

    config = yaml.safe_load(SDXL_TEST_CONFIG.read_text(encoding="utf-8"))["model"]
    model = _sdxl_test_scale.instantiate_from_config(config)  # (on meta it would be slower: that imports sympy)
    return {key: value.shape for key, value in model.state_dict().items()}


@functools.lru_cache(maxsize=4)
def _stock_tensors(seed: int) -> dict[str, torch.Tensor]:
    """Every tensor of the test-scale SDXL with seeded, non-zero values."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, shape in _stock_shapes().items():
        noise = torch.randn(shape, generator=generator)
        if len(shape) >= 2:  # weights: fan-in scaled, so activations stay O(1) through the UNet
            tensors[key] = noise * noise[0].numel() ** -0.5
        elif "norm" in key or "ln_" in key:
            tensors[key] = 1.0 + 0.1 * noise if key.endswith("weight") else 0.1 * noise
        else:
            tensors[key] = 0.02 * noise
    return tensors


class FakeWebui:
    """A started host (stand-in or real) and the helpers tests drive it with.

    Facts: ``version``, ``at_least("1.7.0")``, ``real``, ``data_dir``, ``checkpoints_dir``,
    ``vae_dir``, ``sd_model`` (the host's lazy ``shared.sd_model``), ``module("sd_models")``,
    ``pip_commands``.  Checkpoints: ``stock_sdxl_state_dict(seed)`` (test scale),
    ``write_checkpoint(name, state_dict)``, ``write_vae``, ``refresh()``, ``checkpoint_info(name)``,
    ``select_checkpoint(name)`` (as the UI/API: errors reported, returns False) and
    ``load_checkpoint(name)`` (``reload_model_weights``: errors propagate).  Host events:
    ``txt2img(**p_fields)``, ``build_settings_ui()``, ``app_started()``, ``paste_infotext(text)``,
    ``reload_scripts()``.
    """

    def __init__(self, *, version: str, data_dir: Path, real: bool) -> None:
        self.version = version
        self.data_dir = data_dir
        self.real = real

    @classmethod
    def for_real_host(cls, tmp_path: Path) -> FakeWebui:
        from modules import launch_utils, paths_internal

        return cls(version=launch_utils.git_tag().lstrip("v"), data_dir=Path(paths_internal.data_path), real=True)

    # -- facts

    @property
    def version_info(self) -> tuple[int, ...]:
        return tuple(int(part) for part in self.version.split("-")[0].split(".")[:3])

    def at_least(self, version: str) -> bool:
        return self.version_info >= tuple(int(part) for part in version.split("."))

    @property
    def checkpoints_dir(self) -> Path:
        from modules import sd_models

        return Path(sd_models.model_path)

    @property
    def vae_dir(self) -> Path:
        from modules import sd_vae

        return Path(sd_vae.vae_path)

    @property
    def sd_model(self) -> Any:
        """``shared.sd_model``: loads the selected checkpoint on first access, like the host."""
        from modules import shared

        return shared.sd_model

    @property
    def pip_commands(self) -> list[str]:
        """What ``launch.run_pip`` was asked to install (the stand-in installs nothing)."""
        from modules import launch_utils

        return list(launch_utils._pip_commands)

    @staticmethod
    def module(name: str) -> ModuleType:
        """``modules.<name>`` of the installed host."""
        return importlib.import_module(f"modules.{name}")

    # -- checkpoints

    def stock_sdxl_state_dict(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """A stock SDXL checkpoint with seeded values: on the stand-in the whole test-scale model; on the real
        host the UNet at 64 channels (the text encoders, full size, are added as zeros by ``write_checkpoint``;
        no VAE)."""
        if self.real:
            from webui_checks import random_unet, webui_scale

            return {UNET_PREFIX + key: value for key, value in random_unet(webui_scale("sdxl"), seed).items()}
        return {key: value.clone() for key, value in _stock_tensors(seed).items()}

    def write_checkpoint(
        self,
        name: str,
        state_dict: dict[str, torch.Tensor],
        metadata: dict[str, str] | None = None,
        *,
        folder: Path | None = None,
    ) -> Path:
        """Save ``state_dict`` as ``<name>.safetensors`` among the checkpoints and refresh the list."""
        path = (folder or self.checkpoints_dir) / f"{name}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.real:  # the real host's full-size text encoders (its config at 64 channels: see ``stock_host``)
            from webui_checks import write_with_full_size_text_encoders

            write_with_full_size_text_encoders(path, state_dict, metadata)
        else:
            tensors = {k: v.contiguous() for k, v in state_dict.items()}
            safetensors.torch.save_file(tensors, str(path), metadata=metadata)
        self.refresh()
        return path

    def write_vae(self, name: str, state_dict: dict[str, torch.Tensor]) -> Path:
        """Save a VAE (``first_stage_model.`` prefix stripped) into models/VAE and refresh the list."""
        prefix = "first_stage_model."
        tensors = {k[len(prefix) :] if k.startswith(prefix) else k: v.contiguous() for k, v in state_dict.items()}
        path = self.vae_dir / f"{name}.safetensors"
        safetensors.torch.save_file(tensors, str(path))
        self.refresh()
        return path

    def refresh(self) -> None:
        """The refresh buttons: re-list checkpoints and VAEs."""
        from modules import sd_models, sd_vae

        sd_models.list_models()
        sd_vae.refresh_vae_list()

    def checkpoint_info(self, name: str) -> Any:
        from modules import sd_models

        info = sd_models.get_closet_checkpoint_match(name)
        if info is None:
            raise KeyError(f"no listed checkpoint matches {name!r}")
        return info

    def select_checkpoint(self, name: str) -> bool:
        """Pick a checkpoint the way the UI/API does (``opts.set`` → onchange → reload_model_weights).

        Returns what ``opts.set`` returns: False when the load failed (the host reports the error
        and reverts the option; it does not raise).
        """
        from modules import shared

        return shared.opts.set("sd_model_checkpoint", self.checkpoint_info(name).title)

    def load_checkpoint(self, name: str) -> Any:
        """``sd_models.reload_model_weights(info=...)`` for a listed checkpoint; errors propagate."""
        from modules import sd_models

        return sd_models.reload_model_weights(info=self.checkpoint_info(name))

    # -- generation, UI, API

    def txt2img(self, prompt: str = "a photo of a cat", **kwargs: Any) -> Any:
        """Generate with ``processing.process_images`` and the always-on scripts, at test size."""
        from modules import processing, scripts, shared

        if self.real:
            shared.opts.set("live_previews_enable", False)  # the real host would download vaeapprox-sdxl.pt
        settings = dict(prompt=prompt, negative_prompt="", seed=1, steps=2, cfg_scale=5.0, width=64, height=64)
        settings.update(sampler_name="Euler", do_not_save_samples=True)
        settings.update(kwargs)
        p = processing.StableDiffusionProcessingTxt2Img(**settings)
        runner = scripts.scripts_txt2img
        p.scripts = runner
        p.script_args = [0] + [getattr(control, "value", None) for control in runner.inputs[1:]]
        shared.state.begin(job="txt2img")
        try:
            return processing.process_images(p)
        finally:
            shared.state.end()

    def build_settings_ui(self) -> Any:
        """Build the Settings page the way ``ui.create_ui`` does (runs ``on_ui_settings``)."""
        import gradio as gr
        from modules import ui_settings

        loadsave = None  # the stand-in's settings page keeps no ui-config.json
        if self.real:
            from modules import scripts, ui_loadsave

            loadsave = ui_loadsave.UiLoadsave(str(self.data_dir / "ui-config-settings-page.json"))
            if scripts.scripts_postproc.scripts is None:  # the Extras tab would have done this (not with --nowebui)
                scripts.scripts_postproc.initialize_scripts(scripts.postprocessing_scripts_data)
        settings = ui_settings.UiSettings()
        if hasattr(settings, "register_settings"):  # v1.9+: ui.create_ui registers first
            settings.register_settings()
        settings.create_ui(loadsave=loadsave, dummy_component=gr.Textbox(visible=False))
        return settings

    def app_started(self) -> FakeApp:
        """Fire ``on_app_started`` as webui.py does after the server starts (demo is None with --nowebui)."""
        from modules import script_callbacks, shared

        app = FakeApp()
        demo = None if shared.cmd_opts.nowebui else object()
        script_callbacks.app_started_callback(demo, app)
        return app

    def paste_infotext(self, text: str) -> dict[str, Any]:
        """What the paste button does before filling the UI: parse, then ``on_infotext_pasted``."""
        from modules import script_callbacks

        module = self.module("infotext_utils" if self.at_least("1.8.0") else "generation_parameters_copypaste")
        params = module.parse_generation_parameters(text)
        script_callbacks.infotext_pasted_callback(text, params)
        return params

    def reload_scripts(self) -> None:
        """ "Reload UI": unload callbacks, then import every extension script again."""
        from modules import initialize, script_callbacks

        script_callbacks.script_unloaded_callback()
        initialize.initialize_rest(reload_script_modules=True)
