"""Webui tier: sd-webui-controlnet beside us, on full-size distilled UNets, through ``POST /sdapi/v1/txt2img``.

The extension is an exported copy named in ``$SSD1B_EXTRA_EXTENSIONS`` (never part of this repository); without it
these tests skip.  Its control models are written here with random values in their real key layouts: an SDXL
ControlNet (small), an SDXL T2I-Adapter and an SDXL IP-Adapter (image projection + per-layer ``to_k_ip/to_v_ip``);
the IP-Adapter gets a ready image embedding (``ipadapter_input``) and the others a ready control image with the
preprocessor "none", so that nothing is downloaded.
"""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

import pytest
import torch
from webui_checks import live_unet

from extensions_ssd1b.arch.families import FAMILIES_BY_KEY
from extensions_ssd1b.arch.unet_builder import is_ssd1b_unet
from extensions_ssd1b.control import mapping
from extensions_ssd1b.host.controlnet import INFOTEXT_IP_ADAPTER, INFOTEXT_RESIDUALS
from extensions_ssd1b.tools.samples import write_sample

pytestmark = [pytest.mark.webui, pytest.mark.controlnet_extension]

CONTROLNET, T2I, IP_ADAPTER = "ssd1b-test-controlnet-sdxl-small", "ssd1b-test-t2i-sdxl", "ip-adapter_ssd1b-test_sdxl"


def _random(shapes: dict[str, tuple[int, ...]], seed: int, loud: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Small random values; tensors named with one of ``loud`` get large ones (zero convs: a visible effect)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in sorted(shapes.items()):
        scale = 0.5 if any(part in name for part in loud) else 0.02
        tensors[name] = (torch.randn(shape, generator=generator) * scale).half()
    return tensors


def _write(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def write_control_models(folder: Path) -> None:
    from scripts.adapter import Adapter
    from scripts.cldm import ControlNet
    from scripts.controlnet_model_guess import controlnet_sdxl_small_config

    with torch.device("meta"):
        controlnet = ControlNet(**{**controlnet_sdxl_small_config, "hint_channels": 3})
        adapter = Adapter(cin=768, channels=[320, 640, 1280, 1280], nums_rb=2, ksize=1, sk=True, use_conv=False)
    shapes = {k: tuple(v.shape) for k, v in controlnet.state_dict().items()}
    _write(folder / f"{CONTROLNET}.safetensors", _random(shapes, 1, loud=("zero_convs", "middle_block_out")))
    shapes = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    _write(folder / f"{T2I}.safetensors", _random(shapes, 2))  # small: its features add straight onto the UNet's
    # IP-Adapter SDXL: 4 tokens from a 1280-wide CLIP-H image embedding; k/v for SDXL's 70 cross-attentions
    sdxl = FAMILIES_BY_KEY["sdxl"].layout
    widths = {"input": {4: 640, 5: 640, 7: 1280, 8: 1280}, "middle": {0: 1280}}
    widths["output"] = {b: 1280 if b < 3 else 640 for b in range(6)}
    shapes = {"image_proj.proj.weight": (4 * 2048, 1280), "image_proj.proj.bias": (4 * 2048,)}
    shapes |= {"image_proj.norm.weight": (2048,), "image_proj.norm.bias": (2048,)}
    for number, layer in enumerate(mapping.sdxl_attention_layers()):
        for kv in ("k", "v"):
            shapes[f"ip_adapter.{2 * number + 1}.to_{kv}_ip.weight"] = (widths[layer.block_type][layer.block_id], 2048)
    assert len(mapping.sdxl_attention_layers()) == 70 and sdxl.transformer_count == 70
    tensors = _random(shapes, 3, loud=("to_v_ip",))
    tensors["image_proj.norm.weight"] = torch.ones(2048).half()
    _write(folder / f"{IP_ADAPTER}.safetensors", tensors)


@pytest.fixture(scope="module")
def controlnet_ext(real_webui):
    hook = sys.modules.get("scripts.hook")
    if hook is None or not hasattr(hook, "UnetHook"):
        pytest.skip("sd-webui-controlnet is not installed in this webui: set SSD1B_EXTRA_EXTENSIONS to an export")
    from scripts import global_state

    write_control_models(Path(global_state.cn_models_dir))
    global_state.update_cn_models()
    return global_state


def _png(seed: int) -> str:
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(64, 64, 3, generator=generator) * 255).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _embedding() -> str:
    buffer = io.BytesIO()
    torch.save({"image_embeds": torch.randn(1, 1280, generator=torch.Generator().manual_seed(4))}, buffer)
    return base64.b64encode(buffer.getvalue()).decode()


def unit(model: str, seed: int = 0) -> dict:
    if model == IP_ADAPTER:
        return {"enabled": True, "module": "none", "model": model, "weight": 1.0, "ipadapter_input": [_embedding()]}
    return {
        "enabled": True,
        "module": "none",
        "model": model,
        "weight": 1.0,
        "image": _png(seed),
        "resize_mode": "Just Resize",
        "processor_res": 64,
        "pixel_perfect": False,
    }


def txt2img(real_webui, units: list[dict]):
    from modules import shared
    from starlette.testclient import TestClient

    shared.opts.set("live_previews_enable", False)
    body = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler", "seed": 1}
    if units:
        body["alwayson_scripts"] = {"controlnet": {"args": units}}
    return TestClient(real_webui.app()).post("/sdapi/v1/txt2img", json=body)


def pixels_and_info(response) -> tuple[torch.Tensor, str]:
    from PIL import Image

    assert response.status_code == 200, response.text[-2000:]
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    return torch.tensor(list(image.convert("RGB").getdata()), dtype=torch.float32), response.json()["info"]


@pytest.fixture(scope="module", params=["ssd-1b", "segmind-vega", "koala-700m"])
def distilled(request, real_webui, controlnet_ext):
    from modules import sd_models

    key = request.param
    path = real_webui.checkpoints_dir / f"cn-{key}.safetensors"
    write_sample(path, key, sparse=False, dtype="F16", seed=11)
    real_webui.refresh()
    sd_models.reload_model_weights(info=sd_models.checkpoint_aliases[path.name])
    assert is_ssd1b_unet(live_unet())
    yield key
    path.unlink()


CASES = {  # unit models -> refused on these families (the rest must run and change the image)
    (CONTROLNET,): (),
    (T2I,): ("koala-700m",),
    (IP_ADAPTER,): (),
    (CONTROLNET, IP_ADAPTER): (),
}


@pytest.mark.parametrize("models", list(CASES), ids=["+".join(m) for m in CASES])
def test_controlnet_units_on_a_distilled_unet(real_webui, distilled, models):
    plain, _ = pixels_and_info(txt2img(real_webui, []))
    response = txt2img(real_webui, [unit(m, seed=n) for n, m in enumerate(models)])
    if distilled in CASES[models]:
        assert response.status_code == 500
        assert "ControlNet unit 0" in response.text and FAMILIES_BY_KEY[distilled].name in response.text
    else:
        pixels, info = pixels_and_info(response)
        assert (pixels - plain).abs().max() > 0, "the unit did not change the image"
        again, _ = pixels_and_info(txt2img(real_webui, [unit(m, seed=n) for n, m in enumerate(models)]))
        assert torch.equal(again, pixels), "the same units and seed again: the same image"
        if IP_ADAPTER in models:
            assert f"{INFOTEXT_IP_ADAPTER}: " in info
        if CONTROLNET in models and not mapping.residual_map(FAMILIES_BY_KEY[distilled].layout).identity:
            assert f"{INFOTEXT_RESIDUALS}: " in info
    after, _ = pixels_and_info(txt2img(real_webui, []))  # nothing stays hooked: the next plain generation is as before
    assert torch.equal(after, plain)


def test_img2img_with_two_controlnet_units_on_ssd1b(real_webui, controlnet_ext):
    from modules import sd_models, shared
    from starlette.testclient import TestClient

    path = real_webui.checkpoints_dir / "cn-img2img-ssd-1b.safetensors"
    write_sample(path, "ssd-1b", sparse=False, dtype="F16", seed=12)
    real_webui.refresh()
    sd_models.reload_model_weights(info=sd_models.checkpoint_aliases[path.name])
    shared.opts.set("live_previews_enable", False)
    client = TestClient(real_webui.app())
    body = {
        "prompt": "a lighthouse",
        "steps": 2,
        "width": 64,
        "height": 64,
        "sampler_name": "Euler",
        "seed": 1,
        "init_images": [_png(7)],
        "denoising_strength": 0.8,
    }
    plain, _ = pixels_and_info(client.post("/sdapi/v1/img2img", json=body))
    units = [unit(CONTROLNET, seed=0), unit(T2I, seed=1)]
    pixels, _ = pixels_and_info(
        client.post("/sdapi/v1/img2img", json={**body, "alwayson_scripts": {"controlnet": {"args": units}}})
    )
    assert (pixels - plain).abs().max() > 0, "the units did not change the image"
    path.unlink()
