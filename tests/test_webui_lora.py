"""Webui tier: LoRA files through the real built-in Lora extension on distilled UNets (#12).

An SDXL LoRA on SSD-1B applies to the transformer blocks SSD-1B has and the infotext (so the API's info) says how
many applied; a native dotted PEFT LoRA lands on the modules it names with the deltas diffusers' convention gives
(no alpha: scale 1); a full-width SDXL LoRA on a full-size SSD-1B adds to each module it applies to what the
Lora extension's formula says; the same LoRA follows a switch to KOALA-700M; files we cannot use are one line and the
generation goes on; the files are never written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from webui_checks import listed_name, live_unet, txt2img_image, webui_scale, write_reduced_pipeline

from extensions_ssd1b.arch.families import FAMILIES_BY_KEY
from extensions_ssd1b.arch.layout import ldm_to_diffusers_names, unet_tensor_shapes
from extensions_ssd1b.tools.samples import write_sample

pytestmark = pytest.mark.webui
RANK = 4


def load_fresh(real_webui, path: Path) -> None:
    from modules import sd_models

    real_webui.refresh()
    sd_models.load_model(sd_models.checkpoint_aliases[listed_name(real_webui, path)])


def attention_lora(
    family_key: str, seed: int, full_width: bool = False
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """LDM module → (down, up) for q/k/v/out of every attention of ``family_key`` (webui test width, or full)."""
    generator = torch.Generator().manual_seed(seed)
    layout = FAMILIES_BY_KEY[family_key].layout if full_width else webui_scale(family_key)
    lora = {}
    for key, shape in unet_tensor_shapes(layout).items():
        if ".attn" in key and key.endswith(".weight"):
            down = torch.randn(RANK, shape[1], generator=generator) * 0.5
            up = torch.randn(shape[0], RANK, generator=generator) * 0.5
            lora[key.removesuffix(".weight")] = (down, up)
    return lora


def save(folder: Path, name: str, tensors: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    save_file(tensors, str(path))
    return path


def kohya(lora) -> dict[str, torch.Tensor]:
    out = {}
    for module, (down, up) in lora.items():
        base = "lora_unet_" + module.replace(".", "_")
        out |= {f"{base}.lora_down.weight": down, f"{base}.lora_up.weight": up, f"{base}.alpha": torch.tensor(2.0)}
    return out


def peft(lora, family_key: str) -> dict[str, torch.Tensor]:
    names = ldm_to_diffusers_names(webui_scale(family_key))
    out = {}
    for module, (down, up) in lora.items():
        name = names[module + ".weight"].removesuffix(".weight")
        out |= {f"unet.{name}.lora_A.weight": down, f"unet.{name}.lora_B.weight": up}
    return out


@pytest.fixture(scope="module")
def lora_dir(real_webui) -> Path:
    from modules import shared

    return Path(shared.cmd_opts.lora_dir)


@pytest.fixture(scope="module")
def models(real_webui) -> dict[str, Path]:
    folder = real_webui.checkpoints_dir
    koala = write_reduced_pipeline(folder, "lora-koala-700m", "koala-700m", seed=5)[0]
    ssd1b = write_reduced_pipeline(folder, "lora-ssd-1b", "ssd-1b", seed=6, components_from=koala.parent.parent)[0]
    return {"ssd-1b": ssd1b, "koala-700m": koala}


def transformer_blocks(family_key: str) -> int:
    return webui_scale(family_key).transformer_count


def test_an_sdxl_lora_on_ssd1b_and_koala_says_what_applied(real_webui, models, lora_dir, capsys):
    sdxl_lora = save(lora_dir, "sdxl-attention", kohya(attention_lora("sdxl", seed=1)))
    before = sdxl_lora.read_bytes()
    load_fresh(real_webui, models["ssd-1b"])
    plain, _ = txt2img_image(real_webui)
    with_lora, info = txt2img_image(real_webui, "a lighthouse <lora:sdxl-attention:1>")
    assert not torch.equal(plain, with_lora), "the LoRA changes the image"
    applied, total = 8 * transformer_blocks("ssd-1b"), 8 * transformer_blocks("sdxl")
    expected = f"sdxl-attention {applied}/{total} applied, {total - applied} for blocks this model does not have"
    assert json.loads(info)["extra_generation_params"]["SSD-1B LoRA"] == expected  # what the API's info says
    assert capsys.readouterr().out.count(f"LoRA: {expected}") == 1  # once per generation

    # The same LoRA after a switch to another layout: matched again, against the live KOALA modules.
    import networks
    from modules import shared

    load_fresh(real_webui, models["koala-700m"])
    _, info = txt2img_image(real_webui, "a lighthouse <lora:sdxl-attention:1>")
    applied = 8 * transformer_blocks("koala-700m")
    expected = f"sdxl-attention {applied}/{total} applied, {total - applied} for blocks this model does not have"
    assert json.loads(info)["extra_generation_params"]["SSD-1B LoRA"] == expected
    net = networks.loaded_networks[0]
    assert len(net.modules) == applied
    layer_names = shared.sd_model.network_layer_mapping
    assert all(layer_names[key] is module.sd_module for key, module in net.modules.items())
    assert all(any(module.sd_module is m for m in live_unet().modules()) for module in net.modules.values())
    assert sdxl_lora.read_bytes() == before


def test_a_dotted_peft_lora_lands_on_the_modules_it_names(real_webui, models, lora_dir):
    import networks

    load_fresh(real_webui, models["ssd-1b"])
    lora = attention_lora("ssd-1b", seed=2)
    save(lora_dir, "native-peft", peft(lora, "ssd-1b"))
    modules = dict(live_unet().named_modules())
    before = {name: modules[name].weight.detach().clone() for name in lora}
    networks.list_available_networks()
    try:
        networks.load_networks(["native-peft"], [1.0], [1.0], [None])
        assert len(networks.loaded_networks[0].modules) == len(lora)
        unet = live_unet()
        with torch.no_grad():
            unet(torch.zeros(1, 4, 8, 8), torch.tensor([10.0]), torch.zeros(1, 77, 2048), torch.zeros(1, 2816))
        for name, (down, up) in lora.items():  # PEFT keeps alpha outside the file: scale 1, as diffusers loads it
            torch.testing.assert_close(modules[name].weight.detach(), before[name] + up @ down, rtol=1e-4, atol=1e-4)
    finally:
        networks.load_networks([], [], [], [])
        with torch.no_grad():
            live_unet()(torch.zeros(1, 4, 8, 8), torch.tensor([10.0]), torch.zeros(1, 77, 2048), torch.zeros(1, 2816))
    assert all(torch.equal(modules[name].weight.detach(), before[name]) for name in lora)


def test_files_we_cannot_use_are_one_line_and_the_generation_goes_on(real_webui, models, lora_dir, capsys):
    load_fresh(real_webui, models["ssd-1b"])
    good = kohya(attention_lora("sdxl", seed=3))
    truncated = lora_dir / "truncated.safetensors"
    save(lora_dir, "whole", good)
    truncated.write_bytes((lora_dir / "whole.safetensors").read_bytes()[:5000])
    save(
        lora_dir,
        "matches-nothing",
        {
            "lora_unet_not_a_block_proj.lora_down.weight": torch.zeros(4, 64),
            "lora_unet_not_a_block_proj.lora_up.weight": torch.zeros(64, 4),
        },
    )
    unsupported = {"lora_unet_input_blocks_4_1_proj_in.boft_blocks": torch.zeros(2, 4, 4)}  # BOFT: no host has it
    save(lora_dir, "lycoris-boft", unsupported)
    files = {
        name: (lora_dir / f"{name}.safetensors").read_bytes()
        for name in ("truncated", "matches-nothing", "lycoris-boft")
    }
    capsys.readouterr()
    for name in files:
        _, info = txt2img_image(real_webui, f"a lighthouse <lora:{name}:1>")
        out = capsys.readouterr().out
        lines = [line for line in out.splitlines() if name in line and "LoRA" in line]
        assert len(lines) == 1, out
        assert lines[0].endswith(json.loads(info)["extra_generation_params"]["SSD-1B LoRA"])
        if name != "matches-nothing":
            assert f"{name}.safetensors" in lines[0] and "not loaded" in lines[0]
        else:
            assert "0/1 applied" in lines[0] and "matches-nothing.safetensors" in lines[0]
    assert {name: (lora_dir / f"{name}.safetensors").read_bytes() for name in files} == files


def test_a_full_width_sdxl_lora_on_full_size_ssd1b_through_the_api(real_webui, lora_dir):
    """The published SSD-1B shape with a full-width SDXL LoRA (kohya names, alpha 2, rank 4) via <lora:…:1>."""
    path = real_webui.checkpoints_dir / "ssd-1b-full.safetensors"
    if not path.exists():  # test_webui_load's full-size test writes the same sample
        write_sample(path, "ssd-1b", sparse=False, dtype="F16")
    lora = attention_lora("sdxl", seed=4, full_width=True)
    save(lora_dir, "sdxl-full-width", kohya(lora))
    load_fresh(real_webui, path)
    modules = dict(live_unet().named_modules())
    present = {name for name in lora if name in modules}  # same level, position and index: what SSD-1B has
    before = {name: modules[name].weight.detach().clone() for name in present}
    plain, _ = txt2img_image(real_webui)
    with_lora, info = txt2img_image(real_webui, "a lighthouse <lora:sdxl-full-width:1>")
    assert not torch.equal(plain, with_lora), "the LoRA changes the image"
    ssd1b, sdxl = (FAMILIES_BY_KEY[key].layout.transformer_count for key in ("ssd-1b", "sdxl"))
    assert len(present) == 8 * ssd1b and len(lora) == 8 * sdxl
    missing = 8 * (sdxl - ssd1b)
    expected = f"sdxl-full-width {8 * ssd1b}/{8 * sdxl} applied, {missing} for blocks this model does not have"
    assert json.loads(info)["extra_generation_params"]["SSD-1B LoRA"] == expected
    for name in present:  # the extension merged the deltas into the weights: up @ down × alpha / rank
        down, up = lora[name]
        torch.testing.assert_close(modules[name].weight.detach(), before[name] + up @ down * 0.5, rtol=1e-4, atol=1e-4)
