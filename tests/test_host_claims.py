"""What the host itself does, in the parts the extension depends on: one test, two hosts.

In the host-free tier each test runs on the stand-in imitating the release in its parameter; in the webui tier the
same test runs in the real A1111 (parameters of the other release are not collected there).  If the stand-in drifts
from the real host, the webui tier fails here.  The load tests take this extension's load path out first
(``stock_host``): they state what A1111 does without it.  On the real host the checkpoints are the stock SDXL at 64
channels, with the host's own ``sd_xl_base.yaml`` at that width beside them and full-size text encoders (zeros).
"""

from __future__ import annotations

import pytest
import torch
from fakewebui import SSD1B_REMOVED_UNET_PREFIXES, UNET_PREFIX, ssd1b_shaped, without_vae

pytestmark = pytest.mark.host
ON_1_6 = pytest.mark.parametrize("fake_webui", ["1.6.0"], indirect=True)
ON_1_10 = pytest.mark.parametrize("fake_webui", ["1.10.1"], indirect=True)


@pytest.fixture(autouse=True)
def host_left_as_found(fake_webui):
    """Options and callbacks a test adds are removed again (the real host lives for the whole session)."""
    from modules import script_callbacks, shared

    labels, callbacks = set(shared.opts.data_labels), {k: list(v) for k, v in script_callbacks.callback_map.items()}
    yield
    for key in set(shared.opts.data_labels) - labels:
        del shared.opts.data_labels[key]
        shared.opts.data.pop(key, None)
    for key, registered in callbacks.items():
        script_callbacks.callback_map[key][:] = registered


def unet_tensor(model: torch.nn.Module, key: str) -> torch.Tensor:
    return model.model.diffusion_model.state_dict()[key]


# -- settings and infotext -------------------------------------------------------------------------


def test_option_info_category_id_is_a_type_error_before_1_7(fake_webui) -> None:
    from modules import shared

    if fake_webui.at_least("1.7.0"):
        assert shared.OptionInfo(1, "x", category_id="sd").category_id == "sd"
    else:
        with pytest.raises(TypeError):
            shared.OptionInfo(1, "x", category_id="sd")


def test_three_part_section_breaks_the_settings_ui_only_on_1_6(fake_webui) -> None:
    from modules import script_callbacks, shared

    def add_settings() -> None:  # the usual extension pattern, with a v1.7-style 3-part section
        section = ("ssd1b_probe", "SSD-1B probe", "sd")
        options = {"ssd1b_probe_flag": shared.OptionInfo(False, "Flag")}
        for key, info in shared.options_section(section, options).items():
            shared.opts.add_option(key, info)

    script_callbacks.on_ui_settings(add_settings)
    assert "ssd1b_probe_flag" not in shared.opts.data_labels  # on_ui_settings runs only when the UI is built
    if not fake_webui.at_least("1.7.0"):
        with pytest.raises(ValueError, match="too many values to unpack"):
            fake_webui.build_settings_ui()
    else:
        ui = fake_webui.build_settings_ui()
        assert shared.opts.data_labels["ssd1b_probe_flag"].category_id == "sd"
        component = ui.component_dict["ssd1b_probe_flag"]
        label = component.kwargs["label"] if hasattr(component, "kwargs") else component.label  # stand-in | gradio
        assert label == "Flag"


def test_infotext_paste_goes_through_the_callbacks(fake_webui) -> None:
    from modules import script_callbacks, shared

    shared.opts.add_option("ssd1b_probe_arch", shared.OptionInfo("auto", "Arch", infotext="SSD-1B probe"))
    script_callbacks.on_infotext_pasted(lambda text, params: params.update(seen=True))

    params = fake_webui.paste_infotext("a cat\nSteps: 20, Sampler: Euler, SSD-1B probe: koala-700m, Size: 64x64")

    assert params["Size-1"] == "64" and params["seen"]
    if fake_webui.at_least("1.7.0"):
        assert params["SSD-1B probe"] == "koala-700m"
    else:  # v1.6's infotext keys are [\w ]+: a "-" cuts the key
        assert "SSD-1B probe" not in params and params["1B probe"] == "koala-700m"
    module = fake_webui.module("infotext_utils" if fake_webui.at_least("1.8.0") else "generation_parameters_copypaste")
    assert module.create_override_settings_dict(["SSD-1B probe: koala-700m"]) == {"ssd1b_probe_arch": "koala-700m"}


# -- NaN checks ------------------------------------------------------------------------------------


def test_nan_check_condition_differs_between_releases(fake_webui) -> None:
    from modules import devices

    first_only = torch.zeros(2, 4, 8, 8)
    first_only[0, 0, 0, 0] = float("nan")
    all_but_first = torch.full((2, 4, 8, 8), float("nan"))
    all_but_first[0, 0, 0, 0] = 0.0

    with pytest.raises(devices.NansException, match="in Unet"):
        devices.test_for_nans(torch.full((1, 4, 8, 8), float("nan")), "unet")
    if fake_webui.at_least("1.10.0"):  # first element only
        with pytest.raises(devices.NansException, match="A tensor with NaNs was produced in VAE"):
            devices.test_for_nans(first_only, "vae")
        devices.test_for_nans(all_but_first, "vae")
    else:  # every element
        devices.test_for_nans(first_only, "vae")
        devices.test_for_nans(all_but_first, "vae")


def test_vae_nan_retries_in_higher_precision(fake_webui, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from modules import devices, processing, shared

    class HalfBrokenVae:
        dtype = torch.float16

        def to(self, dtype):
            self.dtype = dtype
            return self

    class Model:
        first_stage_model = HalfBrokenVae()

        def decode_first_stage(self, x):
            value = float("nan") if self.first_stage_model.dtype == torch.float16 else 0.0
            return torch.full((x.shape[0], 3, 16, 16), value)

    monkeypatch.setattr(devices, "dtype_vae", torch.float16)
    monkeypatch.setitem(shared.opts.data, "auto_vae_precision", True)
    monkeypatch.setitem(shared.opts.data, "auto_vae_precision_bfloat16", True)  # only v1.8+ knows this option
    monkeypatch.setattr(shared.cmd_opts, "disable_nan_check", False)
    samples = processing.decode_latent_batch(Model(), torch.zeros(1, 4, 2, 2, dtype=torch.float16), check_for_nans=True)

    assert not samples[0].isnan().any()
    assert devices.dtype_vae == (torch.bfloat16 if fake_webui.at_least("1.8.0") else torch.float32)
    assert "Web UI will now convert VAE into" in capsys.readouterr().err


# -- the load pipeline, without this extension -----------------------------------------------------


def test_ssd_shaped_file_is_zero_filled_on_1_6_and_pruned_from_1_7(fake_webui, stock_host) -> None:
    fake = fake_webui
    fake.write_checkpoint("claim-ssd", ssd1b_shaped(fake.stock_sdxl_state_dict()))
    model = fake.load_checkpoint("claim-ssd")

    unet = model.model.diffusion_model
    if fake.at_least("1.7.0"):
        assert model.is_ssd
        assert len(unet.middle_block) == 1
        assert [len(unet.input_blocks[i][1].transformer_blocks) for i in (7, 8)] == [4, 4]
        assert [len(unet.output_blocks[i][1].transformer_blocks) for i in range(6)] == [4, 4, 10, 2, 1, 1]
        if fake.at_least("1.10.0"):
            from modules import sd_models

            assert model.model_type is sd_models.ModelType.SSD
    else:
        assert not getattr(model, "is_ssd", False)
        assert len(unet.middle_block) == 3 and len(unet.input_blocks[7][1].transformer_blocks) == 10
        tensors = unet.state_dict()
        missing = {key: value for key, value in tensors.items() if key.startswith(SSD1B_REMOVED_UNET_PREFIXES)}
        linear_or_conv = [value for value in missing.values() if value.dim() >= 2]
        assert len(linear_or_conv) > 100 and not any(value.any() for value in linear_or_conv)


@ON_1_10
def test_second_ssd_file_crashes_convert_sdxl_to_ssd_on_1_10(fake_webui, stock_host, capsys) -> None:
    fake = fake_webui
    fake.write_checkpoint("claim-ssd-a", ssd1b_shaped(fake.stock_sdxl_state_dict(seed=0)))
    fake.write_checkpoint("claim-ssd-b", ssd1b_shaped(fake.stock_sdxl_state_dict(seed=1)))
    fake.load_checkpoint("claim-ssd-a")

    with pytest.raises(AttributeError, match="has no attribute '1'") as raised:
        fake.load_checkpoint("claim-ssd-b")  # same config → the pruned model is reused and pruned again
    assert any(frame.name == "convert_sdxl_to_ssd" for frame in raised.traceback)
    assert isinstance(raised.value.__context__, AttributeError)  # the "restoring previous" load failed too
    assert "Failed to load checkpoint, restoring previous" in capsys.readouterr().out

    # The failure left no model to reuse, so the next attempt builds afresh and succeeds.
    assert fake.load_checkpoint("claim-ssd-b").is_ssd
    assert "Creating model from config" in capsys.readouterr().out


@ON_1_6
def test_reused_model_on_1_6_keeps_weights_the_new_file_lacks(fake_webui, stock_host) -> None:
    fake = fake_webui
    sdxl = fake.stock_sdxl_state_dict(seed=0)
    ssd = ssd1b_shaped(fake.stock_sdxl_state_dict(seed=1))
    fake.write_checkpoint("claim-sdxl", sdxl)
    fake.write_checkpoint("claim-ssd", ssd)
    fake.load_checkpoint("claim-sdxl")
    model = fake.load_checkpoint("claim-ssd")  # same config (sd_xl_base.yaml): weights loaded into the SDXL model

    assert torch.equal(unet_tensor(model, "input_blocks.0.0.weight"), ssd[UNET_PREFIX + "input_blocks.0.0.weight"])
    key = "middle_block.1.transformer_blocks.0.attn1.to_q.weight"
    assert torch.equal(unet_tensor(model, key), sdxl[UNET_PREFIX + key])  # SDXL's middle transformer still computes


@ON_1_10
def test_ssd_then_sdxl_on_1_10_stays_pruned_while_flagged_sdxl(fake_webui, stock_host) -> None:
    fake = fake_webui
    fake.write_checkpoint("claim-ssd", ssd1b_shaped(fake.stock_sdxl_state_dict(seed=1)))
    fake.write_checkpoint("claim-sdxl", fake.stock_sdxl_state_dict(seed=0))
    fake.load_checkpoint("claim-ssd")
    model = fake.load_checkpoint("claim-sdxl")

    assert model.is_sdxl and not model.is_ssd
    assert len(model.model.diffusion_model.middle_block) == 1  # SDXL's middle transformer silently dropped


def test_checkpoint_without_vae_decodes_to_flat_grey(fake_webui, stock_host) -> None:
    fake = fake_webui
    fake.write_checkpoint("claim-no-vae", without_vae(fake.stock_sdxl_state_dict()))
    assert fake.select_checkpoint("claim-no-vae")

    image = fake.txt2img().images[0]
    assert image.getextrema() == ((127, 127), (127, 127), (127, 127))
