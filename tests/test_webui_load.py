"""Webui tier: distilled checkpoints in a real A1111 (v1.6.0 … v1.10.1), in-process, on the CPU.

Run with the webui's own Python, e.g.::

    SD_WEBUI_ROOT=/path/to/stable-diffusion-webui-1.10.1 /path/to/webui-venv/bin/python -m pytest -m webui

Switching uses reduced-width UNets (64 channels; the text encoders are the host's full-size ones,
stored as zeros in a sparse file) so that six loads fit in minutes; the full-size SSD-1B test loads
a 4.5 GB checkpoint with random weights and runs a txt2img through the API.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import math
import os
from pathlib import Path

import pytest
import torch

from extensions_ssd1b.components import SDXL_CLIP_G, SDXL_CLIP_L
from extensions_ssd1b.detect import LDM_UNET_PREFIX
from extensions_ssd1b.families import FAMILIES_BY_KEY
from extensions_ssd1b.layout import UNetLayout, layout_from_sgm_params
from extensions_ssd1b.safetensors_header import read_header
from extensions_ssd1b.samples import (
    TensorSpec,
    sample_shapes,
    write_diffusers_pipeline,
    write_safetensors,
    write_sample,
)

pytestmark = pytest.mark.webui

SSD1B_PARAMETERS = 1_331_334_404  # the published size of SSD-1B's UNet


@pytest.fixture(scope="module")
def webui():
    from webui_tier import start_real_webui

    return start_real_webui(Path(os.environ["SD_WEBUI_ROOT"]))


def webui_scale(family_key: str) -> UNetLayout:
    """The family's block structure at 64 channels; context and ADM widths stay the host's."""
    return dataclasses.replace(FAMILIES_BY_KEY[family_key].layout, model_channels=64)


def random_unet(layout: UNetLayout, seed: int) -> dict[str, torch.Tensor]:
    from diffusers_reference import random_state_dict

    return random_state_dict(layout, seed)


def write_reduced_checkpoint(
    folder: Path, name: str, family_key: str, seed: int
) -> tuple[Path, dict[str, torch.Tensor]]:
    """Reduced UNet with real values; full-size text encoders as a hole (zeros); no VAE."""
    layout = webui_scale(family_key)
    shapes = sample_shapes(family_key, layout=layout, clip_l=SDXL_CLIP_L, clip_g=SDXL_CLIP_G, with_vae=False)
    specs = [TensorSpec(key, "F32", shape) for key, shape in shapes.items()]
    path = write_safetensors(folder / f"{name}.safetensors", specs, sparse=True)
    unet = random_unet(layout, seed)
    header = read_header(path)
    with open(path, "r+b") as handle:
        for key, tensor in unet.items():
            info = header.tensors[LDM_UNET_PREFIX + key]
            handle.seek(header.data_start + info.begin)
            handle.write(tensor.contiguous().numpy().tobytes())
    return path, unet


def write_stock_yaml_beside(checkpoint: Path, layout: UNetLayout) -> None:
    """The host's own sd_xl_base.yaml at the reduced width, as ``<checkpoint>.yaml`` (a host feature)."""
    import yaml
    from modules import sd_models_config

    with open(sd_models_config.config_sdxl, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    config["model"]["params"]["network_config"]["params"]["model_channels"] = layout.model_channels
    checkpoint.with_suffix(".yaml").write_text(yaml.safe_dump(config), encoding="utf-8")


def live_unet():
    from modules import shared

    return shared.sd_model.model.diffusion_model


def assert_computes(unet: torch.nn.Module, layout: UNetLayout, weights: dict[str, torch.Tensor]) -> None:
    from diffusers_reference import example_inputs, reference_unet, run_diffusers, run_sgm
    from sgm.modules.diffusionmodules.openaimodel import timestep_embedding

    inputs = example_inputs(layout, timestep_embedding, seed=3)
    ours = run_sgm(unet.float(), inputs)
    reference = run_diffusers(reference_unet(layout, weights), inputs)
    assert (ours - reference).abs().max().item() <= 1e-4


def test_stock_sdxl_configs_describe_the_table_layouts(webui):
    import yaml
    from modules import sd_models_config

    for path, key in ((sd_models_config.config_sdxl, "sdxl"), (sd_models_config.config_sdxl_refiner, "sdxl-refiner")):
        with open(path, encoding="utf-8") as handle:
            params = yaml.safe_load(handle)["model"]["params"]["network_config"]["params"]
        assert layout_from_sgm_params(params) == FAMILIES_BY_KEY[key].layout


def test_switching_between_sdxl_and_distilled_models_never_keeps_stale_weights(webui):
    from modules import sd_models
    from sgm.modules.diffusionmodules.openaimodel import UNetModel

    from extensions_ssd1b.unet_builder import is_ssd1b_unet

    files = {}
    for seed, key in enumerate(("sdxl", "ssd-1b", "segmind-vega", "koala-700m")):
        path, weights = write_reduced_checkpoint(webui.checkpoints_dir, f"switch-{key}", key, seed)
        if key == "sdxl":
            write_stock_yaml_beside(path, webui_scale(key))
        files[key] = (path, weights)
    webui.refresh()
    for key in ("sdxl", "ssd-1b", "segmind-vega", "koala-700m", "sdxl", "ssd-1b"):
        path, weights = files[key]
        sd_models.reload_model_weights(info=sd_models.checkpoint_aliases[path.name])
        unet = live_unet()
        assert isinstance(unet, UNetModel)
        assert is_ssd1b_unet(unet) == (key != "sdxl"), "SDXL is the host's own; the others are ours"
        assert_computes(unet, webui_scale(key), weights)


def txt2img_image(webui) -> tuple[torch.Tensor, str]:
    """A 64² two-step txt2img through the API: the pixels (checked finite, not uniform) and the infotext."""
    from modules import shared
    from PIL import Image
    from starlette.testclient import TestClient

    shared.opts.set("live_previews_enable", False)  # previews would download vaeapprox-sdxl.pt
    client = TestClient(webui.app())
    response = client.post(
        "/sdapi/v1/txt2img",
        json={"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 1},
    )
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    pixels = torch.tensor(list(image.convert("RGB").getdata()), dtype=torch.float32)
    assert image.size == (64, 64)
    assert math.isfinite(pixels.sum().item())
    assert pixels.std().item() > 0, "a uniform image is the empty-VAE bug, not a decode"
    return pixels, response.json()["info"]


def test_full_size_ssd1b_loads_at_its_true_shape_and_generates_an_image(webui):
    from modules import sd_models
    from sgm.modules.diffusionmodules.openaimodel import UNetModel

    path = write_sample(webui.checkpoints_dir / "ssd-1b-full.safetensors", "ssd-1b", sparse=False, dtype="F16")
    webui.refresh()
    sd_models.reload_model_weights(info=sd_models.checkpoint_aliases[path.name])
    unet = live_unet()
    assert isinstance(unet, UNetModel)
    assert sum(p.numel() for p in unet.parameters()) == SSD1B_PARAMETERS

    _, info = txt2img_image(webui)
    assert "SSD-1B arch: ssd-1b" in info


def test_a_diffusers_folder_in_the_checkpoint_list_loads_in_place(webui):
    """An SSD-1B-shaped diffusers folder (64-channel UNet, full-size text encoders and VAE, random
    values) copied under models/Stable-diffusion: picking its UNet file loads the whole folder."""
    from modules import sd_models, shared
    from safetensors.torch import load_file

    from extensions_ssd1b.layout import ldm_to_diffusers_names
    from extensions_ssd1b.unet_builder import is_ssd1b_unet

    layout = webui_scale("ssd-1b")
    root = write_diffusers_pipeline(webui.checkpoints_dir / "ssd-1b-diffusers", "ssd-1b", layout=layout, sparse=False)
    webui.refresh()
    unet_file = root / "unet" / "diffusion_pytorch_model.safetensors"
    sd_models.reload_model_weights(info=sd_models.checkpoint_aliases[str(unet_file.relative_to(webui.checkpoints_dir))])

    unet = live_unet()
    assert is_ssd1b_unet(unet)
    stored = load_file(unet_file)
    weights = {ldm: stored[diffusers].float() for ldm, diffusers in ldm_to_diffusers_names(layout).items()}
    assert_computes(unet, layout, weights)
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

    _, info = txt2img_image(webui)
    assert "SSD-1B arch: custom" in info  # 64 channels: SSD-1B's blocks, no table row's widths
