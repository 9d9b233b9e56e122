"""Shared by the sd-webui-controlnet webui-tier tests: its extension in the real webui, control models written in
their real key layouts, units, a txt2img through the API, and the check every unit case makes."""

from __future__ import annotations

import base64
import io
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from webui_checks import live_unet, pixels_and_info, post_txt2img

from extensions_ssd1b.arch.families import FAMILIES_BY_KEY
from extensions_ssd1b.arch.unet_builder import is_ssd1b_unet
from extensions_ssd1b.control import mapping
from extensions_ssd1b.tools.samples import write_sample

CONTROLNET, T2I, IP_ADAPTER = "ssd1b-test-controlnet-sdxl-small", "ssd1b-test-t2i-sdxl", "ip-adapter_ssd1b-test_sdxl"


def random_tensors(
    shapes: dict[str, tuple[int, ...]], seed: int, loud: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """Small random values; tensors named with one of ``loud`` get large ones (zero convs: a visible effect)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in sorted(shapes.items()):
        scale = 0.5 if any(part in name for part in loud) else 0.02
        tensors[name] = (torch.randn(shape, generator=generator) * scale).half()
    return tensors


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def meta_shapes(build: Callable[[], torch.nn.Module]) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of the module ``build`` makes, built without memory."""
    with torch.device("meta"):
        module = build()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def ip_adapter_layer_shapes() -> dict[str, tuple[int, ...]]:
    """``ip_adapter.{2i+1}.to_k_ip/to_v_ip`` for SDXL's 70 cross-attentions, each at its layer's width."""
    widths = {"input": {4: 640, 5: 640, 7: 1280, 8: 1280}, "middle": {0: 1280}}
    widths["output"] = {b: 1280 if b < 3 else 640 for b in range(6)}
    shapes = {}
    for number, layer in enumerate(mapping.sdxl_attention_layers()):
        for kv in ("k", "v"):
            shapes[f"ip_adapter.{2 * number + 1}.to_{kv}_ip.weight"] = (widths[layer.block_type][layer.block_id], 2048)
    assert len(mapping.sdxl_attention_layers()) == 70 and FAMILIES_BY_KEY["sdxl"].layout.transformer_count == 70
    return shapes


def write_control_models(folder: Path) -> None:
    """An SDXL ControlNet (small), an SDXL T2I-Adapter and an SDXL IP-Adapter."""
    from scripts.adapter import Adapter
    from scripts.cldm import ControlNet
    from scripts.controlnet_model_guess import controlnet_sdxl_small_config

    shapes = meta_shapes(lambda: ControlNet(**{**controlnet_sdxl_small_config, "hint_channels": 3}))
    tensors = random_tensors(shapes, 1, loud=("zero_convs", "middle_block_out"))
    write_tensors(folder / f"{CONTROLNET}.safetensors", tensors)
    shapes = meta_shapes(
        lambda: Adapter(cin=768, channels=[320, 640, 1280, 1280], nums_rb=2, ksize=1, sk=True, use_conv=False)
    )
    write_tensors(folder / f"{T2I}.safetensors", random_tensors(shapes, 2))  # small: its features add onto the UNet's
    # IP-Adapter SDXL: 4 tokens from a 1280-wide CLIP-H image embedding
    shapes = {"image_proj.proj.weight": (4 * 2048, 1280), "image_proj.proj.bias": (4 * 2048,)}
    shapes |= {"image_proj.norm.weight": (2048,), "image_proj.norm.bias": (2048,)}
    tensors = random_tensors(shapes | ip_adapter_layer_shapes(), 3, loud=("to_v_ip",))
    tensors["image_proj.norm.weight"] = torch.ones(2048).half()
    write_tensors(folder / f"{IP_ADAPTER}.safetensors", tensors)


def controlnet_ready(real_webui) -> object:
    """sd-webui-controlnet's ``global_state`` with our control models listed (skips the test where it is absent)."""
    hook = sys.modules.get("scripts.hook")
    if hook is None or not hasattr(hook, "UnetHook"):
        pytest.skip("sd-webui-controlnet is not installed in this webui: set SSD1B_EXTRA_EXTENSIONS to an export")
    from scripts import global_state

    write_control_models(Path(global_state.cn_models_dir))
    global_state.update_cn_models()
    return global_state


def png(seed: int) -> str:
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(64, 64, 3, generator=generator) * 255).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def torch_base64(value: object) -> str:
    """What ``ipadapter_input`` carries: a ``torch.save``d preprocessor output, base64."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return base64.b64encode(buffer.getvalue()).decode()


def image_unit(model: str, seed: int = 0, module: str = "none") -> dict:
    """A unit with a ready 64² control image."""
    return {
        "enabled": True,
        "module": module,
        "model": model,
        "weight": 1.0,
        "image": png(seed),
        "resize_mode": "Just Resize",
        "processor_res": 64,
        "pixel_perfect": False,
    }


def unit(model: str, seed: int = 0) -> dict:
    if model == IP_ADAPTER:  # a CLIP-H image embedding, as the preprocessor would give
        embedding = {"image_embeds": torch.randn(1, 1280, generator=torch.Generator().manual_seed(4))}
        return {"enabled": True, "module": "none", "model": model, "ipadapter_input": [torch_base64(embedding)]}
    return image_unit(model, seed)


def txt2img(real_webui, units: list[dict]):
    if not units:
        return post_txt2img(real_webui)
    return post_txt2img(real_webui, alwayson_scripts={"controlnet": {"args": units}})


def load_distilled(real_webui, key: str) -> Path:
    """A full-size fp16 checkpoint of family ``key`` written and loaded; returns its file."""
    from modules import sd_models

    path = real_webui.checkpoints_dir / f"cn-{key}.safetensors"
    write_sample(path, key, sparse=False, dtype="F16", seed=11)
    real_webui.refresh()
    sd_models.reload_model_weights(info=sd_models.checkpoint_aliases[path.name])
    assert is_ssd1b_unet(live_unet())
    return path


def check_units(
    real_webui,
    family_key: str,
    units: list[dict],
    refused: bool,
    infotext: tuple[str, ...] = (),
    refusal_names: tuple[str, ...] = (),
) -> None:
    """Refused: HTTP 500 naming unit 0, the family and ``refusal_names`` (e.g. the unit's kind and model).  Else: the
    units change the image, the same request repeats it exactly, and ``infotext`` keys are reported.  Either way the
    next plain generation is as the one before."""
    plain, _ = pixels_and_info(txt2img(real_webui, []))
    response = txt2img(real_webui, units)
    if refused:
        assert response.status_code == 500, response.text[-2000:]
        for name in ("ControlNet unit 0", FAMILIES_BY_KEY[family_key].name, *refusal_names):
            assert name in response.text, response.text[-2000:]
    else:
        pixels, info = pixels_and_info(response)
        assert (pixels - plain).abs().max() > 0, "the unit did not change the image"
        again, _ = pixels_and_info(txt2img(real_webui, units))
        assert torch.equal(again, pixels), "the same units and seed again: the same image"
        for key in infotext:
            assert f"{key}: " in info
    after, _ = pixels_and_info(txt2img(real_webui, []))  # nothing stays hooked: the next plain generation is as before
    assert torch.equal(after, plain)
