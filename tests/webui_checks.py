"""Checks shared by the webui-tier tests (a real A1111 in this process): reduced checkpoints with
real UNet values, the live UNet against diffusers, a txt2img through the API."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import io
import math
from collections.abc import Iterator
from pathlib import Path

import torch

from extensions_ssd1b.arch.components import SDXL_CLIP_G, SDXL_CLIP_L
from extensions_ssd1b.arch.detect import LDM_UNET_PREFIX, Form
from extensions_ssd1b.arch.families import FAMILIES_BY_KEY
from extensions_ssd1b.arch.layout import UNetLayout, ldm_to_diffusers_names
from extensions_ssd1b.io.header import read_header
from extensions_ssd1b.io.write import TensorSpec
from extensions_ssd1b.tools.samples import sample_shapes, write_diffusers_pipeline, write_safetensors


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
    unet = random_unet(webui_scale(family_key), seed)
    path = folder / f"{name}.safetensors"
    write_with_full_size_text_encoders(path, {LDM_UNET_PREFIX + key: value for key, value in unet.items()})
    return path, unet


def write_with_full_size_text_encoders(
    path: Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """``state_dict`` plus the host's full-size CLIP-L and OpenCLIP-bigG in a sparse file: zeros (holes) but for
    the position embeddings, ones, so that the prompt embedding has a non-zero mean (the host's emphasis step divides
    by it: all-zero encoders give NaN conditioning)."""
    state_dict = {
        "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight": torch.ones(77, 768),
        "conditioner.embedders.1.model.positional_embedding": torch.ones(77, 1280),
        **state_dict,
    }
    shapes = {
        key: shape
        for key, shape in sample_shapes("sdxl", clip_l=SDXL_CLIP_L, clip_g=SDXL_CLIP_G, with_vae=False).items()
        if not key.startswith(LDM_UNET_PREFIX)
    }
    shapes.update({key: tuple(value.shape) for key, value in state_dict.items()})
    write_safetensors(path, [TensorSpec(key, "F32", shape) for key, shape in shapes.items()], metadata=metadata)
    header = read_header(path)
    with open(path, "r+b") as handle:
        for key, tensor in state_dict.items():
            handle.seek(header.data_start + header.tensors[key].begin)
            handle.write(tensor.float().contiguous().numpy().tobytes())


def write_reduced_stock_yaml(path: Path, layout: UNetLayout) -> Path:
    """The host's own sd_xl_base.yaml with the UNet at the reduced width of ``layout``."""
    import yaml
    from modules import sd_models_config

    with open(sd_models_config.config_sdxl, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    config["model"]["params"]["network_config"]["params"]["model_channels"] = layout.model_channels
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def write_stock_yaml_beside(checkpoint: Path, layout: UNetLayout) -> None:
    """The reduced stock config as ``<checkpoint>.yaml``, which the host uses for that file (a host feature)."""
    write_reduced_stock_yaml(checkpoint.with_suffix(".yaml"), layout)


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


def post_txt2img(real_webui, prompt: str = "a lighthouse", **extra: object):
    """A 64² two-step txt2img through the API (``extra``: more fields of the request body); the response."""
    from modules import shared
    from starlette.testclient import TestClient

    shared.opts.set("live_previews_enable", False)  # previews would download vaeapprox-sdxl.pt
    body = {"prompt": prompt, "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 1, **extra}
    return TestClient(real_webui.app()).post("/sdapi/v1/txt2img", json=body)


def pixels_and_info(response) -> tuple[torch.Tensor, str]:
    """The first image of a successful API response, as RGB pixels, and its infotext."""
    from PIL import Image

    assert response.status_code == 200, response.text[-2000:]
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    return torch.tensor(list(image.convert("RGB").getdata()), dtype=torch.float32), response.json()["info"]


def txt2img_image(real_webui, prompt: str = "a lighthouse") -> tuple[torch.Tensor, str]:
    """A 64² two-step txt2img through the API: the pixels (checked finite, not uniform) and the infotext."""
    pixels, info = pixels_and_info(post_txt2img(real_webui, prompt))
    assert pixels.shape == (64 * 64, 3)
    assert math.isfinite(pixels.sum().item())
    assert pixels.std().item() > 0, "a uniform image is the empty-VAE bug, not a decode"
    return pixels, info


def write_reduced_pipeline(
    folder: Path, name: str, family_key: str, seed: int, *, components_from: Path | None = None
) -> tuple[Path, dict[str, torch.Tensor]]:
    """A diffusers folder with the family's blocks at 64 channels and full-size text encoders and VAE,
    all random fp16 values (``components_from``: link another such folder's text encoders and VAE).
    Returns its UNet file (what the webui lists) and the UNet's weights in LDM names, as fp32."""
    from safetensors.torch import load_file

    layout = webui_scale(family_key)
    root = folder / name
    unet_file = root / "unet" / "diffusion_pytorch_model.safetensors"
    if components_from is None:
        write_diffusers_pipeline(root, family_key, layout=layout, sparse=False, seed=seed)
    else:
        unet_file.parent.mkdir(parents=True)
        for part in ("text_encoder", "text_encoder_2", "vae"):
            (root / part).symlink_to(components_from / part, target_is_directory=True)
        shapes = sample_shapes(family_key, Form.DIFFUSERS_UNET.value, layout=layout)
        write_safetensors(unet_file, [TensorSpec(k, "F16", s) for k, s in shapes.items()], sparse=False, seed=seed)
    stored = load_file(unet_file)
    return unet_file, {ldm: stored[name].float() for ldm, name in ldm_to_diffusers_names(layout).items()}


def listed_name(real_webui, path: Path) -> str:
    """The webui's name for a file under its checkpoint folder (subfolders included)."""
    return str(path.relative_to(real_webui.checkpoints_dir))


@contextlib.contextmanager
def another_extensions_wrapper(module: object, name: str, with_wraps: bool) -> Iterator[list[str]]:
    """Put a wrapper of another extension on top of ``module.name`` (with or without ``functools.wraps``, as
    extensions do either), yield the list its calls are recorded in, and put the function below back on exit."""
    below, calls = getattr(module, name), []

    def other_extension(*args, **kwargs):
        calls.append("other")
        return below(*args, **kwargs)

    setattr(module, name, functools.wraps(below)(other_extension) if with_wraps else other_extension)
    try:
        yield calls
    finally:
        setattr(module, name, below)
