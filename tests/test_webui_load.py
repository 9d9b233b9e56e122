"""Webui tier: distilled checkpoints in a real A1111 (v1.6.0 … v1.10.1), in-process, on the CPU.

Run with the webui's own Python, e.g.::

    SD_WEBUI_ROOT=/path/to/stable-diffusion-webui-1.10.1 /path/to/webui-venv/bin/python -m pytest -m webui

Switching uses reduced-width UNets (64 channels; the text encoders are the host's full-size ones,
stored as zeros in a sparse file) so that six loads fit in minutes; the full-size SSD-1B test loads
a 4.5 GB checkpoint with random weights and runs a txt2img through the API.
"""

from __future__ import annotations

import pytest
import torch
from published import UNET_PARAMETERS
from webui_checks import (
    assert_computes,
    listed_name,
    live_unet,
    txt2img_image,
    webui_scale,
    write_reduced_checkpoint,
    write_reduced_pipeline,
    write_stock_yaml_beside,
)

from extensions_ssd1b.arch.families import FAMILIES_BY_KEY
from extensions_ssd1b.arch.layout import layout_from_sgm_params
from extensions_ssd1b.tools.samples import write_sample

pytestmark = pytest.mark.webui


def test_stock_sdxl_configs_describe_the_table_layouts(real_webui):
    import yaml
    from modules import sd_models_config

    for path, key in ((sd_models_config.config_sdxl, "sdxl"), (sd_models_config.config_sdxl_refiner, "sdxl-refiner")):
        with open(path, encoding="utf-8") as handle:
            params = yaml.safe_load(handle)["model"]["params"]["network_config"]["params"]
        assert layout_from_sgm_params(params) == FAMILIES_BY_KEY[key].layout


def test_switching_between_sdxl_and_distilled_models_never_keeps_stale_weights(real_webui):
    from modules import sd_models
    from sgm.modules.diffusionmodules.openaimodel import UNetModel

    from extensions_ssd1b.arch.unet_builder import is_ssd1b_unet

    files = {}
    for seed, key in enumerate(("sdxl", "ssd-1b", "segmind-vega", "koala-700m")):
        path, weights = write_reduced_checkpoint(real_webui.checkpoints_dir, f"switch-{key}", key, seed)
        if key == "sdxl":
            write_stock_yaml_beside(path, webui_scale(key))
        files[key] = (path, weights)
    real_webui.refresh()
    for key in ("sdxl", "ssd-1b", "segmind-vega", "koala-700m", "sdxl", "ssd-1b"):
        path, weights = files[key]
        sd_models.reload_model_weights(info=sd_models.checkpoint_aliases[path.name])
        unet = live_unet()
        assert isinstance(unet, UNetModel)
        assert is_ssd1b_unet(unet) == (key != "sdxl"), "SDXL is the host's own; the others are ours"
        assert_computes(unet, webui_scale(key), weights)


def test_full_size_ssd1b_loads_at_its_true_shape_and_generates_an_image(real_webui):
    from modules import sd_models
    from sgm.modules.diffusionmodules.openaimodel import UNetModel

    path = write_sample(real_webui.checkpoints_dir / "ssd-1b-full.safetensors", "ssd-1b", sparse=False, dtype="F16")
    real_webui.refresh()
    sd_models.reload_model_weights(info=sd_models.checkpoint_aliases[path.name])
    unet = live_unet()
    assert isinstance(unet, UNetModel)
    assert sum(p.numel() for p in unet.parameters()) == UNET_PARAMETERS["ssd-1b"]

    _, info = txt2img_image(real_webui)
    assert "SSD-1B arch: ssd-1b" in info


def test_a_diffusers_folder_in_the_checkpoint_list_loads_in_place(real_webui):
    """An SSD-1B-shaped diffusers folder (64-channel UNet, full-size text encoders and VAE, random
    values) copied under models/Stable-diffusion: picking its UNet file loads the whole folder."""
    from modules import sd_models, shared
    from safetensors.torch import load_file

    from extensions_ssd1b.arch.unet_builder import is_ssd1b_unet

    unet_file, weights = write_reduced_pipeline(real_webui.checkpoints_dir, "ssd-1b-diffusers", "ssd-1b", seed=0)
    root = unet_file.parent.parent
    real_webui.refresh()
    sd_models.reload_model_weights(info=sd_models.checkpoint_aliases[listed_name(real_webui, unet_file)])

    unet = live_unet()
    assert is_ssd1b_unet(unet)
    assert_computes(unet, webui_scale("ssd-1b"), weights)
    # OpenCLIP: diffusers' separate q/k/v joined into in_proj, its projection transposed.
    encoder = load_file(root / "text_encoder_2" / "model.safetensors")
    embedder = shared.sd_model.conditioner.embedders[1]
    open_clip = getattr(embedder, "wrapped", embedder).model  # the host's hijack wraps the embedder
    qkv = [encoder[f"text_model.encoder.layers.5.self_attn.{x}_proj.weight"] for x in "qkv"]
    assert torch.equal(open_clip.transformer.resblocks[5].attn.in_proj_weight.float().cpu(), torch.cat(qkv).float())
    assert torch.equal(open_clip.text_projection.float().cpu(), encoder["text_projection.weight"].float().t())
    vae = load_file(root / "vae" / "diffusion_pytorch_model.safetensors")
    decoder_in = shared.sd_model.first_stage_model.decoder.conv_in.weight
    assert torch.equal(decoder_in.float().cpu(), vae["decoder.conv_in.weight"].float())

    _, info = txt2img_image(real_webui)
    assert "SSD-1B arch: custom" in info  # 64 channels: SSD-1B's blocks, no table row's widths
