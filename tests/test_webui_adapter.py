"""The host adapter against the stand-in A1111 (v1.6.0, v1.7.0, v1.10.1): the load path of issue 3."""

from __future__ import annotations

import dataclasses
import importlib
import logging
from pathlib import Path

import pytest
import torch
from diffusers_reference import example_inputs, random_state_dict, reference_unet, run_diffusers, run_sgm
from fakewebui import TEST_SCALE, UNET_PREFIX, install_fake_webui
from fakewebui.install import real_webui_root
from webui_checks import another_extensions_wrapper

from extensions_ssd1b.arch.families import FAMILIES_BY_KEY
from extensions_ssd1b.arch.layout import UNetLayout, ldm_to_diffusers_names
from extensions_ssd1b.arch.unet_builder import is_ssd1b_unet
from extensions_ssd1b.diffusers.pipeline import load_state_dict, plan_pipeline
from extensions_ssd1b.tools.samples import reduced_layout, write_diffusers_pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(real_webui_root() is not None, reason="test-scale checkpoints fit only the stand-in")

VERSIONS = ["1.6.0", "1.7.0", "1.10.1"]


def standin_scale(family_key: str) -> UNetLayout:
    """The family's blocks at the stand-in's SDXL widths (its text encoders and ADM fit these)."""
    return dataclasses.replace(
        FAMILIES_BY_KEY[family_key].layout,
        model_channels=TEST_SCALE.model_channels,
        context_dim=TEST_SCALE.context_dim,
        adm_in_channels=TEST_SCALE.adm_in_channels,
        num_head_channels=TEST_SCALE.num_head_channels,
    )


@pytest.fixture(params=VERSIONS)
def host(request, monkeypatch, tmp_path):
    return install_fake_webui(monkeypatch, request.param, tmp_path, extensions=[REPO_ROOT])


def write_family(host, name: str, family_key: str, seed: int, *, diffusers_names: bool = False):
    """A test-scale single file: the stand-in's text encoders and VAE with the family's UNet."""
    layout = standin_scale(family_key)
    unet = random_state_dict(layout, seed)
    state_dict = {k: v for k, v in host.stock_sdxl_state_dict(seed).items() if not k.startswith(UNET_PREFIX)}
    names = ldm_to_diffusers_names(layout) if diffusers_names else {k: k for k in unet}
    state_dict.update({UNET_PREFIX + names[k]: v for k, v in unet.items()})
    host.write_checkpoint(name, state_dict)
    return layout, unet


def assert_live_unet_computes(host, layout: UNetLayout, weights: dict[str, torch.Tensor]) -> None:
    from sgm.modules.diffusionmodules.openaimodel import timestep_embedding

    inputs = example_inputs(layout, timestep_embedding, seed=5)
    ours = run_sgm(host.sd_model.model.diffusion_model.float(), inputs)
    reference = run_diffusers(reference_unet(layout, weights), inputs)
    assert (ours - reference).abs().max().item() <= 1e-4


def test_switching_builds_each_architecture_afresh_with_its_own_weights(host):
    files = {
        key: write_family(host, key, key, seed)
        for seed, key in enumerate(["sdxl", "ssd-1b", "segmind-vega", "koala-700m"])
    }
    for key in ["sdxl", "ssd-1b", "segmind-vega", "koala-700m", "sdxl", "ssd-1b"]:
        host.load_checkpoint(key)
        unet = host.sd_model.model.diffusion_model
        layout, weights = files[key]
        # SDXL at the host's own widths stays the host's; every distilled layout is ours
        assert is_ssd1b_unet(unet) == (key != "sdxl")
        assert_live_unet_computes(host, layout, weights)


def test_a_second_checkpoint_of_the_same_family_replaces_every_weight(host):
    write_family(host, "first", "segmind-vega", 1)
    layout, weights = write_family(host, "second", "segmind-vega", 2)
    host.load_checkpoint("first")
    host.load_checkpoint("second")
    assert_live_unet_computes(host, layout, weights)


def test_a_diffusers_named_unet_in_a_single_file_is_renamed_on_load(host):
    layout, weights = write_family(host, "diffusers-koala", "koala-1b", 3, diffusers_names=True)
    host.load_checkpoint("diffusers-koala")
    assert is_ssd1b_unet(host.sd_model.model.diffusion_model)
    assert_live_unet_computes(host, layout, weights)


def test_the_hosts_ssd1b_pruning_never_touches_our_unet(monkeypatch, tmp_path):
    host = install_fake_webui(monkeypatch, "1.10.1", tmp_path, extensions=[REPO_ROOT])
    write_family(host, "a", "ssd-1b", 1)
    layout, weights = write_family(host, "b", "ssd-1b", 2)
    host.load_checkpoint("a")
    host.load_checkpoint("b")  # stock 1.10 raises AttributeError inside convert_sdxl_to_ssd here
    assert host.sd_model.is_ssd  # the host's flag may stay; it is harmless
    assert_live_unet_computes(host, layout, weights)


def _unet_removed(state_dict: dict, fragment: str) -> dict:
    return {k: v for k, v in state_dict.items() if fragment not in k}


def test_an_inconsistent_checkpoint_is_refused_and_the_previous_model_stays(host):
    layout, weights = write_family(host, "good", "segmind-vega", 1)
    write_family(host, "broken", "ssd-1b", 2)
    from safetensors.torch import load_file

    broken = load_file(str(host.checkpoints_dir / "broken.safetensors"))
    host.write_checkpoint("broken", _unet_removed(broken, "input_blocks.7.1.transformer_blocks.1.attn2"))
    host.load_checkpoint("good")
    before = host.sd_model
    with pytest.raises(Exception, match=r"broken\.safetensors.*input_blocks\.7\.1\.transformer_blocks\.1"):
        host.load_checkpoint("broken")
    assert host.sd_model is before
    assert_live_unet_computes(host, layout, weights)
    assert host.select_checkpoint("broken") is False  # the UI path reports it and reverts the option


def test_a_lora_picked_as_a_checkpoint_is_refused_by_name(host):
    host.write_checkpoint("my-lora", {"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(4, 64)})
    with pytest.raises(Exception, match=r"my-lora\.safetensors: cannot be loaded as a checkpoint: .*LoRA"):
        host.load_checkpoint("my-lora")


def test_a_unet_only_file_is_refused_with_the_convert_hint(host):
    layout = standin_scale("koala-700m")
    host.write_checkpoint("bare", {UNET_PREFIX[:0] + k: v for k, v in random_state_dict(layout, 0).items()})
    with pytest.raises(Exception, match=r"bare\.safetensors: .*without SDXL's text encoders.*extensions_ssd1b convert"):
        host.load_checkpoint("bare")


def test_a_diffusers_folder_in_the_checkpoint_list_is_read_as_one_checkpoint(host):
    from modules import sd_models

    from extensions_ssd1b.host import load
    from extensions_ssd1b.host import vae as host_vae
    from extensions_ssd1b.vae import nan as vae_nan

    layout = reduced_layout("segmind-vega")
    root = host.checkpoints_dir / "vega-diffusers"
    write_diffusers_pipeline(root, "segmind-vega", layout=layout, sparse=False)
    host.refresh()
    info = host.checkpoint_info("vega-diffusers/unet/diffusion_pytorch_model.safetensors")

    detection = load.preflight(info.filename)  # accepted: the folder has everything A1111 needs
    assert detection is not None and detection.layout == layout
    assert detection.components.present() == ["UNet", "CLIP-L", "OpenCLIP-bigG", "VAE"]
    state_dict = sd_models.read_state_dict(info.filename)  # what get_checkpoint_state_dict reads
    expected = load_state_dict(plan_pipeline(info.filename))
    assert state_dict.keys() == expected.keys()
    assert all(torch.equal(state_dict[k], expected[k]) for k in expected)
    vae = root / "vae" / "diffusion_pytorch_model.safetensors"
    assert host_vae.checkpoint_vae_fingerprint(info.filename) == vae_nan.file_fingerprint(vae) is not None
    inspect = host.app_started().routes[("GET", "/ssd1b/v1/inspect")]
    assert inspect(info.title)["form"] == "diffusers-folder"

    with pytest.raises(Exception, match=r"is the text_encoder_2 of the diffusers folder .*-diffusers; pick its unet/"):
        host.load_checkpoint("vega-diffusers/text_encoder_2/model.safetensors")
    with pytest.raises(Exception, match=r"is the vae of the diffusers folder"):
        host.load_checkpoint("vega-diffusers/vae/diffusion_pytorch_model.safetensors")


def test_a_diffusers_folder_missing_its_vae_is_refused_before_unloading(host):
    layout, weights = write_family(host, "good", "koala-700m", 1)
    host.load_checkpoint("good")
    before = host.sd_model
    root = write_diffusers_pipeline(host.checkpoints_dir / "no-vae", "ssd-1b", layout=reduced_layout("ssd-1b"))
    for file in (root / "vae").iterdir():
        file.unlink()
    host.refresh()
    with pytest.raises(Exception, match=r"no-vae/unet/diffusion_pytorch_model\.safetensors: the diffusers .*/vae:"):
        host.load_checkpoint("no-vae/unet/diffusion_pytorch_model.safetensors")
    assert host.sd_model is before
    assert_live_unet_computes(host, layout, weights)


def test_infotext_names_the_family_and_the_route_inspects_only_listed_files(host):
    write_family(host, "vega", "segmind-vega", 1)
    host.load_checkpoint("vega")
    processed = host.txt2img()
    assert "SSD-1B arch: custom" in processed.infotexts[0]  # test widths match no table row
    inspect = host.app_started().routes[("GET", "/ssd1b/v1/inspect")]
    info = host.checkpoint_info("vega")
    assert inspect(info.title)["middle"] == "res"
    with pytest.raises(Exception, match="not a checkpoint the webui lists"):
        inspect("/etc/passwd")


def test_reloading_scripts_does_not_wrap_twice(host):
    from modules import sd_models

    from extensions_ssd1b.host import patching

    host_original = sd_models.load_model_weights.__wrapped__
    assert patching.is_ours(sd_models.load_model_weights) and not patching.is_ours(host_original)
    host.reload_scripts()
    assert patching.is_ours(sd_models.load_model_weights)
    assert sd_models.load_model_weights.__wrapped__ is host_original  # one layer, over the host's own function


@pytest.mark.parametrize("with_wraps", [True, False], ids=["functools.wraps", "plain"])
def test_another_extensions_wrapper_above_ours_survives_reload_ui(host, with_wraps: bool):
    from modules import sd_models

    with another_extensions_wrapper(sd_models, "load_model_weights", with_wraps) as calls:
        top = sd_models.load_model_weights
        host.reload_scripts()

        assert sd_models.load_model_weights is top
        layout, weights = write_family(host, "koala", "koala-700m", 2)
        host.load_checkpoint("koala")
        assert calls == ["other"]
        assert is_ssd1b_unet(host.sd_model.model.diffusion_model)  # our load path still runs under theirs
        assert_live_unet_computes(host, layout, weights)


def host_functions() -> dict[tuple[str, ...], object]:
    """Every function and class attribute of the host's ``modules`` package, by where it lives."""
    import sys

    found: dict[tuple[str, ...], object] = {}
    for name, module in list(sys.modules.items()):
        if name != "modules" and not name.startswith("modules."):
            continue
        for attribute, value in list(vars(module).items()):
            if callable(value):
                found[(name, attribute)] = value
            if isinstance(value, type) and value.__module__ == name:
                for member, member_value in vars(value).items():
                    found[(name, attribute, member)] = member_value
    return found


@pytest.mark.parametrize("version", VERSIONS)
def test_disabling_the_extension_restores_every_host_function_and_removes_the_settings(monkeypatch, tmp_path, version):
    fake = install_fake_webui(monkeypatch, version, tmp_path)
    from modules import shared

    stock = host_functions()
    extension_link = fake.data_dir / "extensions" / REPO_ROOT.name
    extension_link.symlink_to(REPO_ROOT, target_is_directory=True)
    fake.reload_scripts()
    patched = [key for key, value in host_functions().items() if key in stock and stock[key] is not value]
    assert len(patched) >= 8 and "ssd1b_vae" in shared.opts.data_labels

    extension_link.unlink()  # what unticking it in the Extensions tab does, then Reload UI
    fake.reload_scripts()

    after = host_functions()
    assert [key for key in stock if after.get(key) is not stock[key]] == []
    assert not [key for key in shared.opts.data_labels if key.startswith("ssd1b_")]


def test_forge_is_left_alone(monkeypatch, tmp_path, capsys):
    install_fake_webui(monkeypatch, "1.10.1", tmp_path, forge=True, extensions=[REPO_ROOT])
    from modules import sd_models

    from extensions_ssd1b.host import patching

    assert not patching.is_ours(sd_models.load_model_weights)
    assert capsys.readouterr().out.count("Forge detected") == 1


def test_configs_generated_by_earlier_versions_still_build():
    """Their YAML target is extensions_ssd1b.webui.build_distilled_unet; new ones name host.config's."""
    from extensions_ssd1b.host import config

    def target(path: str) -> object:  # what sgm's instantiate_from_config does with a target
        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module), name)

    assert target("extensions_ssd1b.webui.build_distilled_unet") is config.build_distilled_unet
    assert target(config.BUILD_TARGET) is config.build_distilled_unet


def test_console_lines_carry_the_prefix(capsys):
    """Our logging records reach stdout even where nobody configured logging (A1111 without --loglevel)."""
    from extensions_ssd1b.host.console import install_console

    install_console()
    install_console()  # scripts are re-imported on Reload UI: still one handler
    log = logging.getLogger("extensions_ssd1b.host.load")
    log.info("a line for the console")
    log.debug("not for the console")
    assert capsys.readouterr().out == "[SSD-1B] a line for the console\n"


def test_the_old_model_is_gone_before_a_file_of_another_architecture_is_read(host, monkeypatch):
    """An architecture switch builds a new model anyway: the old one must not sit in RAM beside the new file."""
    from modules import sd_models

    write_family(host, "sdxl", "sdxl", 0)
    write_family(host, "vega", "segmind-vega", 1)
    write_family(host, "vega-2", "segmind-vega", 2)
    host.load_checkpoint("sdxl")
    read, models_at_read = sd_models.read_state_dict, []

    def recording_read(*args, **kwargs):
        models_at_read.append(sd_models.model_data.sd_model)
        return read(*args, **kwargs)

    monkeypatch.setattr(sd_models, "read_state_dict", recording_read)
    host.load_checkpoint("vega")  # SDXL → Vega: released first
    vega = host.sd_model
    host.load_checkpoint("vega-2")  # same layout: the host may reuse the model, so it stays
    assert models_at_read == [None, vega]
