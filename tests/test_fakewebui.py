"""The stand-in webui behaves like the real A1111 host in the parts the extension depends on.

Each claim here is one the real host was seen to make (the host notes, a1111-host.md §1, §10) or its
source states; if the stand-in drifts from it, the extension's tier-1 tests would prove nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from fakewebui import (
    TEST_SCALE,
    UNET_PREFIX,
    install_fake_webui,
)
from fakewebui.install import real_webui_root

pytestmark = pytest.mark.skipif(real_webui_root() is not None, reason="checks the stand-in, not the real host")


def unet_tensor(model: torch.nn.Module, key: str) -> torch.Tensor:
    return model.model.diffusion_model.state_dict()[key]


# -- installing and forgetting ---------------------------------------------------------------------


def test_install_is_undone_after_the_test(tmp_path: Path) -> None:
    meta_path = list(sys.meta_path)
    linear_attributes = dict(vars(torch.nn.Linear))
    with pytest.MonkeyPatch.context() as monkeypatch:
        fake = install_fake_webui(monkeypatch, "1.6.0", tmp_path, forge=True)
        import launch
        from modules import sd_disable_initialization, shared

        assert launch.git_tag() == "v1.6.0"
        assert shared.cmd_opts.data_dir == str(fake.data_dir)
        assert importlib.util.find_spec("modules_forge") is not None
        with sd_disable_initialization.LoadStateDictOnMeta({}, device="cpu"):
            torch.nn.Linear(1, 1).load_state_dict({}, strict=False)
        assert vars(torch.nn.Linear) != linear_attributes  # the host leaves class patches behind...

    assert not [name for name in sys.modules if name.split(".")[0] in ("modules", "launch", "modules_forge")]
    assert importlib.util.find_spec("modules_forge") is None
    assert sys.meta_path == meta_path
    assert dict(vars(torch.nn.Linear)) == linear_attributes  # ...which the install puts back


# -- which names exist in which release ------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.6.0", "1.7.0", "1.8.0", "1.9.4", "1.10.1"])
def test_release_differences(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, version: str) -> None:
    fake = install_fake_webui(monkeypatch, version, tmp_path)
    from modules import options, processing, script_callbacks, scripts, sd_hijack, sd_models

    v17, v18, v19, v110 = (fake.at_least(v) for v in ("1.7.0", "1.8.0", "1.9.0", "1.10.0"))
    assert hasattr(sd_hijack.model_hijack, "convert_sdxl_to_ssd") == v17
    assert hasattr(options, "categories") == v17
    assert ("forced_reload" in inspect.signature(sd_models.reload_model_weights).parameters) == v18
    assert hasattr(scripts.Script, "post_sample") == v18
    assert ("name" in inspect.signature(script_callbacks.on_model_loaded).parameters) == v19
    assert hasattr(sd_models, "set_model_type") == v110
    assert hasattr(scripts.Script, "process_before_every_sampling") == v110
    assert ("state_dict" in inspect.signature(sd_models.instantiate_from_config).parameters) == v110

    if v18:
        import modules.generation_parameters_copypaste as old_name
        import modules.infotext_utils

        assert old_name is modules.infotext_utils  # the old name is an alias
        assert processing.infotext_utils is modules.infotext_utils
    else:
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module("modules.infotext_utils")


# -- the load pipeline -----------------------------------------------------------------------------


def test_shape_mismatch_fails_the_load_and_leaves_no_model(fake_webui_factory, capsys) -> None:
    fake = fake_webui_factory("1.6.0")
    broken = fake.stock_sdxl_state_dict()
    broken[UNET_PREFIX + "input_blocks.1.0.in_layers.2.weight"] = torch.zeros(7, 7, 3, 3)
    fake.write_checkpoint("broken", broken)
    from modules import sd_models, shared

    assert not fake.select_checkpoint("broken")  # the settings report the error and revert the option
    assert shared.opts.sd_model_checkpoint is None
    assert "size mismatch" in capsys.readouterr().err

    assert shared.sd_model is None  # the lazy property tried again, and failed again
    assert "Stable diffusion model failed to load" in capsys.readouterr().err
    assert not sd_models.model_data.was_loaded_at_least_once  # so every later access retries


def test_config_lookup_happens_at_call_time_and_targets_are_imported(fake_webui_factory, tmp_path: Path) -> None:
    fake = fake_webui_factory("1.10.1")
    from modules import sd_models_config

    factory = tmp_path / "unet_factory.py"
    factory.write_text(
        textwrap.dedent(
            """
            from sgm.modules.diffusionmodules.openaimodel import UNetModel

            calls = []

            def build(**params):
                calls.append(params)
                return UNetModel(**params)
            """
        )
    )
    config = tmp_path / "custom.yaml"
    stock = Path(sd_models_config.config_sdxl).read_text()
    config.write_text(stock.replace("sgm.modules.diffusionmodules.openaimodel.UNetModel", "unet_factory.build"))
    sys.path.insert(0, str(tmp_path))
    try:
        original = sd_models_config.find_checkpoint_config
        sd_models_config.find_checkpoint_config = lambda state_dict, info: str(config)
        fake.write_checkpoint("sdxl", fake.stock_sdxl_state_dict())
        model = fake.load_checkpoint("sdxl")
    finally:
        sd_models_config.find_checkpoint_config = original
        sys.path.remove(str(tmp_path))
        unet_factory = sys.modules.pop("unet_factory")

    assert model.used_config == str(config)
    assert len(unet_factory.calls) == 1
    assert unet_factory.calls[0]["use_checkpoint"] is False  # v1.10's repair_config turns checkpointing off


# -- generation: hook order and NaN checks --------------------------------------------------------

RECORDING_SCRIPT = """
import hook_log
from modules import script_callbacks, scripts

script_callbacks.on_model_loaded(lambda sd_model: hook_log.events.append("model_loaded"))
script_callbacks.on_cfg_denoised(lambda params: hook_log.events.append("cfg_denoised"))


class Recorder(scripts.Script):
    def title(self):
        return "Recorder"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def before_process(self, p, *args):
        hook_log.events.append("before_process")

    def process(self, p, *args):
        hook_log.events.append("process")
        p.extra_generation_params["Recorder"] = "on"

    def process_before_every_sampling(self, p, *args, **kwargs):
        hook_log.events.append("process_before_every_sampling")

    def post_sample(self, p, ps, *args):
        hook_log.events.append("post_sample")

    def postprocess(self, p, processed, *args):
        hook_log.events.append("postprocess")
"""


def test_stock_sdxl_loads_and_generates_calling_hooks_in_the_hosts_order(
    fake_webui, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = fake_webui
    extension = tmp_path / "recorder-ext"
    (extension / "scripts").mkdir(parents=True)
    (extension / "scripts" / "recorder.py").write_text(RECORDING_SCRIPT)
    hook_log = types.ModuleType("hook_log")
    hook_log.events = []
    monkeypatch.setitem(sys.modules, "hook_log", hook_log)
    (fake.data_dir / "extensions" / extension.name).symlink_to(extension)
    fake.reload_scripts()
    from modules import _sdxl_test_scale, sd_models_config, shared

    def record(name):
        return lambda model, state_dict: hook_log.events.append(name)

    engine = _sdxl_test_scale.DiffusionEngine

    monkeypatch.setattr(engine, "before_load_weights", record("before_load_weights"), raising=False)
    monkeypatch.setattr(engine, "after_load_weights", record("after_load_weights"), raising=False)
    state_dict = fake.stock_sdxl_state_dict()
    fake.write_checkpoint("sdxl", state_dict)

    result = fake.txt2img(steps=2)  # the first access to shared.sd_model loads the checkpoint

    expected = ["before_process"]
    expected += ["before_load_weights", "after_load_weights"] if fake.at_least("1.10.0") else []
    expected += ["model_loaded", "process"]
    expected += ["process_before_every_sampling"] if fake.at_least("1.10.0") else []
    expected += ["cfg_denoised", "cfg_denoised"]
    expected += ["post_sample"] if fake.at_least("1.8.0") else []
    expected += ["postprocess"]
    assert hook_log.events == expected

    model = shared.sd_model
    assert model.is_sdxl and model.used_config == sd_models_config.config_sdxl
    for key in ("input_blocks.0.0.weight", "middle_block.1.transformer_blocks.0.attn1.to_q.weight", "out.2.bias"):
        assert torch.equal(unet_tensor(model, key), state_dict[UNET_PREFIX + key])
    low, high = result.images[0].convert("L").getextrema()
    assert high - low > 50  # a real picture, not a flat grey one
    for field in (f"Model hash: {model.sd_model_hash}", f"Version: v{fake.version}", "Recorder: on"):
        assert field in result.info


# -- smaller surfaces ------------------------------------------------------------------------------


def test_overriding_an_added_option_is_a_key_error_on_1_6(fake_webui) -> None:
    from modules import processing, shared

    shared.opts.add_option("ssd1b_flag", shared.OptionInfo(False, "Flag"))  # v1.6: not in opts.data
    p = processing.StableDiffusionProcessingTxt2Img(prompt="x", override_settings={"ssd1b_flag": True})

    # v1.7+ gets past the settings and fails for want of a checkpoint instead
    with pytest.raises(FileNotFoundError if fake_webui.at_least("1.7.0") else KeyError):
        processing.process_images(p)


def test_extension_preload_adds_flags_before_parsing(fake_webui_factory, tmp_path: Path) -> None:
    extension = tmp_path / "flag-ext"
    extension.mkdir()
    (extension / "preload.py").write_text("def preload(parser):\n    parser.add_argument('--ssd1b-probe', type=int)\n")
    fake_webui_factory("1.6.0", cmd_args=["--ssd1b-probe", "3"], extensions=[extension])
    from modules import shared

    assert shared.cmd_opts.ssd1b_probe == 3


@pytest.mark.parametrize(("cmd_args", "recorded"), [([], ["install something"]), (["--skip-install"], [])])
def test_launch_module_serves_install_py(fake_webui_factory, cmd_args: list[str], recorded: list[str]) -> None:
    fake = fake_webui_factory("1.10.1", cmd_args=cmd_args)
    import launch

    assert launch.is_installed("torch") and not launch.is_installed("surely_not_a_package_name")
    launch.run_pip("install something", "something")
    assert fake.pip_commands == recorded


def test_app_started_hands_over_an_app(fake_webui_factory) -> None:
    fake = fake_webui_factory("1.10.1", cmd_args=["--nowebui", "--api"])
    from modules import script_callbacks

    seen = []
    script_callbacks.on_app_started(lambda demo, app: seen.append(demo) or app.add_api_route("/x", print))

    app = fake.app_started()
    assert seen == [None] and ("GET", "/x") in app.routes


def test_test_scale_constants_describe_the_built_model(fake_webui_factory) -> None:
    fake = fake_webui_factory("1.10.1")
    shapes = {key: tuple(value.shape) for key, value in fake.stock_sdxl_state_dict().items()}
    s = TEST_SCALE

    assert s.context_dim == s.clip_l_width + s.openclip_width
    assert s.adm_in_channels == s.openclip_width + 3 * 2 * s.size_embed_dim
    assert shapes[UNET_PREFIX + "input_blocks.0.0.weight"] == (s.model_channels, 4, 3, 3)
    assert shapes[UNET_PREFIX + "label_emb.0.0.weight"] == (4 * s.model_channels, s.adm_in_channels)
    top = s.model_channels * s.channel_mult[-1]
    assert shapes[UNET_PREFIX + "input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight"] == (top, s.context_dim)
    assert shapes["conditioner.embedders.1.model.ln_final.weight"] == (s.openclip_width,)
    assert shapes["first_stage_model.decoder.conv_out.weight"] == (3, s.vae_channels, 3, 3)
