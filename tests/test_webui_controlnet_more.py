"""Webui tier: the other sd-webui-controlnet unit types on full-size distilled UNets, through the API.

reference-only / reference_adain (no model file), a Control-LoRA, a ControlLLLite and an IP-Adapter plus (Resampler
image projection), the last three written here with random values in their real key layouts.  Each unit either runs
(changes the image, repeats exactly) or is refused before sampling with one line naming the unit and the model; the
next plain generation is as the one before either way.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from controlnet_tier import (
    check_units,
    image_unit,
    ip_adapter_layer_shapes,
    meta_shapes,
    random_tensors,
    torch_base64,
    write_tensors,
)

from extensions_ssd1b.host.controlnet import INFOTEXT_IP_ADAPTER

pytestmark = [pytest.mark.webui, pytest.mark.controlnet_extension]

CONTROL_LORA, LLLITE = "ssd1b-test-control-lora-sdxl", "ssd1b-test-controllllite-sdxl"
IP_ADAPTER_PLUS = "ip-adapter-plus_ssd1b-test_sdxl"
DISTILLED = ("ssd-1b", "segmind-vega", "koala-700m")
LORA_RANK = 2
FULL_WEIGHTS = ("input_hint_block.", "zero_convs.", "middle_block_out.")  # trained in full; the rest is LoRA on SDXL


def control_lora_tensors() -> dict[str, torch.Tensor]:
    """SAI's Control-LoRA layout: the marker key ``lora_controlnet``; an SDXL ControlNet (full config) whose hint
    block, zero convs, norms and biases are stored, and whose other linear/conv weights are ``up``/``down`` pairs
    added onto the base UNet's weight of the same name (``controlnet_lora.py``: ``LinearWithLoRA``)."""
    from scripts.cldm import ControlNet
    from scripts.controlnet_model_guess import controlnet_sdxl_config

    with torch.device("meta"):
        network = ControlNet(**{**controlnet_sdxl_config, "hint_channels": 3})
    shapes: dict[str, tuple[int, ...]] = {}
    for name, module in network.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        out_features, in_features, *kernel = module.weight.shape
        if name.startswith(FULL_WEIGHTS):
            shapes[f"{name}.weight"] = tuple(module.weight.shape)
        else:
            ones = (1,) * len(kernel)
            shapes[f"{name}.up"] = (out_features, LORA_RANK, *ones)
            shapes[f"{name}.down"] = (LORA_RANK, in_features, *kernel)
        if module.bias is not None:
            shapes[f"{name}.bias"] = tuple(module.bias.shape)
    for name, module in network.named_modules():
        if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and module.weight is not None:
            shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = tuple(module.weight.shape)
    tensors = random_tensors(shapes, 5, loud=("zero_convs", "middle_block_out"))
    tensors["lora_controlnet"] = torch.zeros(0).half()
    return tensors


# kohya's ControlNet-LLLite for SDXL: modules on attn1 q/k/v and attn2 q of the input and middle transformers
LLLITE_TARGETS = ("attn1_to_q", "attn1_to_k", "attn1_to_v", "attn2_to_q")


def lllite_tensors() -> dict[str, torch.Tensor]:
    """``lllite_unet_<block>_1_transformer_blocks_<i>_<attn>_to_<proj>.{conditioning1,down,mid,up}.N.*``."""
    cond_dim, mlp_dim = 32, 16
    shapes: dict[str, tuple[int, ...]] = {}
    blocks = [(f"input_blocks_{b}", 640, 2, 2) for b in (4, 5)] + [(f"input_blocks_{b}", 1280, 10, 3) for b in (7, 8)]
    for block, width, depth, cond_depth in [*blocks, ("middle_block", 1280, 10, 3)]:
        for index in range(depth):
            for target in LLLITE_TARGETS:
                name = f"lllite_unet_{block}_1_transformer_blocks_{index}_{target}"
                convs = {0: (cond_dim // 2, 3, 4, 4)}
                if cond_depth == 2:
                    convs[2] = (cond_dim, cond_dim // 2, 4, 4)
                else:
                    convs[2] = (cond_dim // 2, cond_dim // 2, 4, 4)
                    convs[4] = (cond_dim, cond_dim // 2, 2, 2)
                for n, shape in convs.items():
                    shapes[f"{name}.conditioning1.{n}.weight"], shapes[f"{name}.conditioning1.{n}.bias"] = (
                        shape,
                        shape[:1],
                    )
                for part, shape in {
                    "down": (mlp_dim, width),
                    "mid": (mlp_dim, mlp_dim + cond_dim),
                    "up": (width, mlp_dim),
                }.items():
                    shapes[f"{name}.{part}.0.weight"], shapes[f"{name}.{part}.0.bias"] = shape, shape[:1]
    return random_tensors(shapes, 6, loud=("up.0",))


def ip_adapter_plus_tensors() -> dict[str, torch.Tensor]:
    """IP-Adapter plus SDXL: a Resampler (``image_proj.latents`` 1×16×1280, ``proj_in``, ``layers.N`` …) over CLIP-H
    hidden states, then the same 70 per-layer ``to_k_ip/to_v_ip`` as the base SDXL IP-Adapter."""
    from scripts.ipadapter.image_proj_models import Resampler

    shapes = meta_shapes(
        lambda: Resampler(
            dim=1280, depth=4, dim_head=64, heads=20, num_queries=16, embedding_dim=1280, output_dim=2048, ff_mult=4
        )
    )
    tensors = random_tensors(
        {f"image_proj.{k}": v for k, v in shapes.items()} | ip_adapter_layer_shapes(), 7, loud=("to_v_ip",)
    )
    for key in ("image_proj.norm_out.weight", "image_proj.latents"):
        tensors[key] = torch.ones_like(tensors[key])
    return tensors


@pytest.fixture(scope="module", autouse=True)
def more_models(controlnet_ext):
    folder = Path(controlnet_ext.cn_models_dir)
    write_tensors(folder / f"{CONTROL_LORA}.safetensors", control_lora_tensors())
    write_tensors(folder / f"{LLLITE}.safetensors", lllite_tensors())
    write_tensors(folder / f"{IP_ADAPTER_PLUS}.safetensors", ip_adapter_plus_tensors())
    controlnet_ext.update_cn_models()


def plus_unit() -> dict:
    """CLIP-H hidden states (what the plus preprocessor gives; the Resampler reads the second to last)."""
    hidden = torch.randn(1, 257, 1280, generator=torch.Generator().manual_seed(8))
    embedding = {"hidden_states": [hidden, hidden]}
    return {"enabled": True, "module": "none", "model": IP_ADAPTER_PLUS, "ipadapter_input": [torch_base64(embedding)]}


UNITS = {  # name -> (the unit, refused on these families, infotext keys where it runs, what a refusal names)
    "reference_only": (lambda: image_unit("None", 0, module="reference_only"), ("koala-700m",), (), ("reference",)),
    "reference_adain": (lambda: image_unit("None", 0, module="reference_adain"), ("koala-700m",), (), ("reference",)),
    "control_lora": (lambda: image_unit(CONTROL_LORA, 0), DISTILLED, (), ("Control-LoRA", CONTROL_LORA)),
    "controllllite": (lambda: image_unit(LLLITE, 0), DISTILLED, (), ("ControlLLLite", LLLITE)),
    "ip_adapter_plus": (plus_unit, (), (INFOTEXT_IP_ADAPTER,), ()),
}


@pytest.mark.parametrize("name", list(UNITS))
def test_more_unit_types_on_a_distilled_unet(real_webui, distilled, name):
    make, refused_on, infotext, refusal_names = UNITS[name]
    refused = distilled in refused_on
    check_units(real_webui, distilled, [make()], refused, infotext=infotext, refusal_names=refusal_names)


FULL_CONTROLNET = "ssd1b-test-controlnet-sdxl-full"


def _memory_kib(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process (the webui runs in it), in KiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


@pytest.mark.parametrize("distilled", ["ssd-1b"], indirect=True)
def test_a_full_size_sdxl_controlnet_on_ssd1b(real_webui, distilled, controlnet_ext, capsys):
    """The full SDXL ControlNet (10-deep transformers at level 2 and the middle), ~1.25 B parameters, written as
    random fp16 values piece by piece; it runs on SSD-1B, and the process's peak memory is printed."""
    from modules import scripts
    from scripts.cldm import ControlNet
    from scripts.controlnet_model_guess import controlnet_sdxl_config

    from extensions_ssd1b.io.write import TensorSpec
    from extensions_ssd1b.tools.samples import write_safetensors

    shapes = meta_shapes(lambda: ControlNet(**{**controlnet_sdxl_config, "hint_channels": 3}))
    assert "input_blocks.8.1.transformer_blocks.9.norm3.weight" in shapes  # what makes it "full" to the guesser
    path = Path(controlnet_ext.cn_models_dir) / f"{FULL_CONTROLNET}.safetensors"
    write_safetensors(path, [TensorSpec(k, "F16", s) for k, s in shapes.items()], sparse=False, seed=9)
    controlnet_ext.update_cn_models()
    rss_before = _memory_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (the peak) to the current RSS
    try:
        check_units(real_webui, distilled, [image_unit(FULL_CONTROLNET, 0)], refused=False)
        peak = _memory_kib("VmHWM")
    finally:
        for script in scripts.scripts_txt2img.alwayson_scripts:  # its model cache holds ~5 GB of fp32 weights
            if hasattr(type(script), "clear_control_model_cache"):
                type(script).clear_control_model_cache()
        path.unlink()
    parameters = sum(math.prod(s) for s in shapes.values())
    with capsys.disabled():
        print(
            f"\nfull SDXL ControlNet ({parameters / 1e9:.2f} B parameters) on SSD-1B: RSS before"
            f" {rss_before / 2**20:.1f} GiB, peak during the generation {peak / 2**20:.1f} GiB"
        )
