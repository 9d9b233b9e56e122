"""Webui tier: the host's own features find their modules in the UNets we build.

``--lowvram`` / ``--medvram`` hook sgm's ``input_blocks``, ``middle_block``, ``output_blocks`` and
``time_embed`` (a KOALA UNet has an empty middle block); the attention optimisation replaces
``CrossAttention.forward`` on sgm's class; the built-in Lora extension maps every Linear/Conv of the
model by its module path.  All run here on the real host, on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from webui_checks import (
    assert_computes,
    listed_name,
    live_unet,
    txt2img_image,
    webui_scale,
    write_reduced_checkpoint,
    write_reduced_pipeline,
)

pytestmark = pytest.mark.webui



def load_fresh(real_webui, path: Path) -> None:
    """``load_model`` (a fresh build, as on a first load or an architecture switch) of a listed file."""
    from modules import sd_models

    real_webui.refresh()
    sd_models.load_model(sd_models.checkpoint_aliases[listed_name(real_webui, path)])


@pytest.fixture(scope="module")
def pipelines(real_webui) -> dict[str, tuple[Path, dict[str, torch.Tensor]]]:
    """KOALA-700M (no middle block) and SSD-1B as 64-channel diffusers folders sharing random
    full-size text encoders and VAE (zeros there would make the host's prompt emphasis divide by 0)."""
    folder = real_webui.checkpoints_dir
    koala = write_reduced_pipeline(folder, "hooks-koala-700m", "koala-700m", seed=1)
    ssd1b = write_reduced_pipeline(folder, "hooks-ssd-1b", "ssd-1b", seed=2, components_from=koala[0].parent.parent)
    return {"koala-700m": koala, "ssd-1b": ssd1b}


@pytest.mark.parametrize("flag", ["lowvram", "medvram"])
def test_lowvram_and_medvram_run_distilled_unets(real_webui, pipelines, monkeypatch, flag):
    from modules import shared

    monkeypatch.setattr(shared.cmd_opts, flag, True)
    try:
        for key, (path, weights) in pipelines.items():
            load_fresh(real_webui, path)
            assert shared.sd_model.lowvram, "the host set the model up for low VRAM"
            unet = live_unet()
            hooked = [unet.time_embed, unet.middle_block, *unet.input_blocks, *unet.output_blocks]
            if flag == "lowvram":  # medvram hooks the whole diffusion wrapper instead
                assert all(module._forward_pre_hooks for module in hooked)
            assert_computes(unet, webui_scale(key), weights)
            txt2img_image(real_webui)
    finally:
        monkeypatch.undo()
        load_fresh(real_webui, path)  # leave a model without the hooks for the tests after this one
    assert not shared.sd_model.lowvram


def test_the_hosts_attention_optimisation_runs_in_distilled_unets(real_webui):
    import sgm.modules.attention
    from modules import sd_hijack, sd_hijack_optimizations

    path, weights = write_reduced_checkpoint(real_webui.checkpoints_dir, "attention-vega", "segmind-vega", seed=4)
    load_fresh(real_webui, path)
    layout = webui_scale("segmind-vega")  # no transformer in its middle block
    attention = [m for m in live_unet().modules() if isinstance(m, sgm.modules.attention.CrossAttention)]
    transformer_blocks = sum(map(sum, (*layout.input_depths, *layout.output_depths)))
    assert len(attention) == 2 * transformer_blocks  # attn1 and attn2 in each
    assert sd_hijack.model_hijack.optimization_method, "the host chose an attention optimisation"
    # The host swaps CrossAttention.forward on sgm's class: every attention layer of ours has it.
    assert {type(m).forward.__module__ for m in attention} == {sd_hijack_optimizations.__name__}
    assert_computes(live_unet(), layout, weights)


def write_lora(folder: Path, name: str, targets: dict[str, torch.nn.Module], rank: int = 4) -> dict[str, torch.Tensor]:
    """A kohya-style LoRA for these UNet modules (``diffusion_model.`` paths); returns each module's delta."""
    from safetensors.torch import save_file

    tensors, deltas = {}, {}
    generator = torch.Generator().manual_seed(7)
    for path, module in targets.items():
        out_features, in_features = module.weight.shape
        down = torch.randn(rank, in_features, generator=generator) * 0.1
        up = torch.randn(out_features, rank, generator=generator) * 0.1
        key = "lora_unet_" + path.removeprefix("diffusion_model.").replace(".", "_")
        tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(2.0)}
        deltas[path] = up @ down * (2.0 / rank)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / f"{name}.safetensors"))
    return deltas


def test_the_builtin_lora_extension_patches_distilled_unet_modules(real_webui):
    import networks  # the built-in Lora extension (its folder is on sys.path once the webui has loaded scripts)
    from modules import shared

    path, weights = write_reduced_checkpoint(real_webui.checkpoints_dir, "lora-base-ssd-1b", "ssd-1b", seed=3)
    load_fresh(real_webui, path)
    unet = live_unet()
    modules = dict(shared.sd_model.model.named_modules())
    # Layers SSD-1B kept where SDXL is deeper: the last of 4 (SDXL: 10) transformer blocks on both
    # sides, and a feed-forward of a level-1 output block.
    targets = {
        name: modules[name]
        for name in (
            "diffusion_model.input_blocks.7.1.transformer_blocks.3.attn1.to_q",
            "diffusion_model.output_blocks.0.1.transformer_blocks.3.attn2.to_k",
            "diffusion_model.output_blocks.4.1.transformer_blocks.0.ff.net.2",
        )
    }
    before = {name: module.weight.detach().clone() for name, module in targets.items()}
    deltas = write_lora(Path(shared.cmd_opts.lora_dir), "distilled-test-lora", targets)
    networks.list_available_networks()
    try:
        networks.load_networks(["distilled-test-lora"], [1.0], [1.0], [None])
        assert len(networks.loaded_networks) == 1
        matched = networks.loaded_networks[0].modules
        assert len(matched) == len(targets), f"matched {sorted(matched)}"
        with torch.no_grad():  # as in sampling
            output = unet(*_tiny_inputs(unet))  # the first forward applies the network to the weights
        assert torch.isfinite(output).all()
        for name, module in targets.items():
            torch.testing.assert_close(module.weight.detach(), before[name] + deltas[name], rtol=1e-5, atol=1e-5)
    finally:
        networks.load_networks([], [], [], [])
        with torch.no_grad():
            unet(*_tiny_inputs(unet))  # restores the backed-up weights
    for name, module in targets.items():
        assert torch.equal(module.weight.detach(), before[name])
    assert_computes(unet, webui_scale("ssd-1b"), weights)


def _tiny_inputs(unet: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, unet.in_channels, 8, 8, generator=generator)
    context = torch.randn(1, 77, 2048, generator=generator)
    y = torch.randn(1, 2816, generator=generator)
    return x, torch.tensor([500.0]), context, y
