"""LoRA files on every family land where diffusers' own LoRA loading puts them (numerics at reduced width).

Reference: diffusers' ``UNet2DConditionModel`` built from the same layout and weights, with the LoRA loaded by
``load_lora_adapter`` (PEFT).  Ours: the UNet the extension builds, each delta merged into the module named by our
plan, the way the host's Lora extension merges it.  Every key format on every family, and an SDXL LoRA on each
distilled family, where only the modules with the same level, position and transformer index exist.  Counts are
checked against the modules diffusers gave a LoRA layer.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers_reference import example_inputs, random_state_dict, reduced, reference_unet, run_diffusers, run_sgm

from extensions_ssd1b.arch.families import FAMILIES_BY_KEY
from extensions_ssd1b.arch.layout import UNetLayout, ldm_to_diffusers_names, unet_tensor_shapes
from extensions_ssd1b.arch.unet_builder import build_unet
from extensions_ssd1b.core.errors import CheckpointError
from extensions_ssd1b.lora.mapping import HOST_UNET_PREFIX, Fate, plan_for, plan_lora

FAMILIES = ["sdxl", "ssd-1b", "segmind-vega", "koala-700m", "koala-1b"]
DISTILLED = FAMILIES[1:]
FORMATS = ["kohya-ldm", "kohya-diffusers", "peft", "diffusers-lora-down"]
RANK, ALPHA = 4, 2.0
TOLERANCE = 1e-4


def lora_targets(layout: UNetLayout) -> dict[str, tuple[int, ...]]:
    """LDM module → weight shape: every Linear/Conv a LoRA trainer targets (attention, feed-forward,
    projections, ResBlock convs and time projections, down- and upsampler convs)."""
    wanted = ("transformer_blocks", "proj_", "in_layers.2", "out_layers.3", "emb_layers.1", ".op", ".conv")
    return {
        key.removesuffix(".weight"): shape
        for key, shape in unet_tensor_shapes(layout).items()
        if key.endswith(".weight") and len(shape) >= 2 and any(w in key for w in wanted)
    }


def make_lora(layout: UNetLayout, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """LDM module → (down, up) with the shapes a conv or linear LoRA of rank 4 has."""
    generator = torch.Generator().manual_seed(seed)
    lora = {}
    for module, shape in lora_targets(layout).items():
        kernel = shape[2:]
        down = torch.randn(RANK, shape[1], *kernel, generator=generator) * 0.2 / math.sqrt(shape[1])
        up = torch.randn(shape[0], RANK, *(1,) * len(kernel), generator=generator) * 0.5
        lora[module] = (down, up)
    return lora


def write_format(lora, layout: UNetLayout, fmt: str) -> tuple[dict[str, torch.Tensor], float]:
    """The LoRA as tensors named in ``fmt``, and the scale (alpha / rank) the format implies."""
    names = {k.removesuffix(".weight"): v.removesuffix(".weight") for k, v in ldm_to_diffusers_names(layout).items()}
    out: dict[str, torch.Tensor] = {}
    for module, (down, up) in lora.items():
        if fmt == "kohya-ldm":
            base = "lora_unet_" + module.replace(".", "_")
        elif fmt == "kohya-diffusers":
            base = "lora_unet_" + names[module].replace(".", "_")
        elif fmt == "peft":
            out |= {f"unet.{names[module]}.lora_A.weight": down, f"unet.{names[module]}.lora_B.weight": up}
            continue
        else:
            out |= {f"unet.{names[module]}.lora.down.weight": down, f"unet.{names[module]}.lora.up.weight": up}
            continue
        out |= {f"{base}.lora_down.weight": down, f"{base}.lora_up.weight": up, f"{base}.alpha": torch.tensor(ALPHA)}
    return out, (ALPHA / RANK if fmt.startswith("kohya") else 1.0)


def diffusers_with_lora(layout, weights, lora, source: UNetLayout, scale: float):
    """diffusers' UNet with the LoRA loaded by diffusers (PEFT format, alpha folded into lora_B as kohya's is)."""
    pytest.importorskip("peft")
    names = {k.removesuffix(".weight"): v.removesuffix(".weight") for k, v in ldm_to_diffusers_names(source).items()}
    model = reference_unet(layout, weights)
    state = {}
    for module, (down, up) in lora.items():
        state |= {f"{names[module]}.lora_A.weight": down, f"{names[module]}.lora_B.weight": up * scale}
    model.load_lora_adapter(state, prefix=None, adapter_name="test")
    with_lora = {name for name, m in model.named_modules() if hasattr(m, "lora_A") and "test" in m.lora_A}
    return model, with_lora


def ours_with_lora(sgm, layout, weights, tensors: dict[str, torch.Tensor]):
    """Our UNet with each module the plan names merged as the host's Lora extension merges it."""
    with torch.device("meta"):
        unet = build_unet(sgm, layout)
    unet.load_state_dict({k: v.clone() for k, v in weights.items()}, strict=True, assign=True)  # merged in place
    unet.eval()
    plan = plan_for({k: tuple(v.shape) for k, v in tensors.items()}, layout)
    by_host_name = {HOST_UNET_PREFIX + name.replace(".", "_"): m for name, m in unet.named_modules()}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for name, host in plan.renames.items():
        module, _, part = host.partition(".")
        parts.setdefault(module, {})[part] = tensors[name]
    with torch.no_grad():
        for module, w in parts.items():
            target = by_host_name[module]
            down, up = w["lora_down.weight"], w["lora_up.weight"]
            scale = w["alpha"].item() / down.shape[0] if "alpha" in w else 1.0
            delta = (up.flatten(1) @ down.flatten(1)).reshape(target.weight.shape)
            target.weight += delta * scale
    return unet, plan


def shape_mismatches(lora, source: UNetLayout, layout: UNetLayout) -> set[str]:
    """Source modules whose block exists in ``layout`` with another shape (KOALA's skip widths), from the layouts."""
    src = {k.removesuffix(".weight"): v.removesuffix(".weight") for k, v in ldm_to_diffusers_names(source).items()}
    target_shapes = unet_tensor_shapes(layout)
    target = {v.removesuffix(".weight"): target_shapes[k] for k, v in ldm_to_diffusers_names(layout).items()}
    source_shapes = unet_tensor_shapes(source)
    return {m for m in lora if src[m] in target and target[src[m]] != source_shapes[m + ".weight"]}


def compare_every_format(sgm, key: str, source_key: str, seed: int) -> dict[str, object]:
    layout = reduced(FAMILIES_BY_KEY[key].layout)
    source = reduced(FAMILIES_BY_KEY[source_key].layout)
    weights = random_state_dict(layout, seed=seed)
    lora = make_lora(source, seed=seed + 100)
    wrong_width = shape_mismatches(lora, source, layout)  # diffusers refuses these: leave them out of its copy
    inputs = example_inputs(layout, sgm.timestep_embedding)
    plans = {}
    for scale in (ALPHA / RANK, 1.0):
        reference = {m: ab for m, ab in lora.items() if m not in wrong_width}
        theirs, with_lora = diffusers_with_lora(layout, weights, reference, source, scale)
        expected = run_diffusers(theirs, inputs)
        theirs.disable_adapters()
        assert (expected - run_diffusers(theirs, inputs)).abs().max().item() > 1e-2, "the LoRA changes the output"
        for fmt in FORMATS:
            tensors, fmt_scale = write_format(lora, source, fmt)
            if fmt_scale != scale:
                continue
            ours, plan = ours_with_lora(sgm, layout, weights, tensors)
            assert (run_sgm(ours, inputs) - expected).abs().max().item() <= TOLERANCE, fmt
            # Counts: diffusers gave a LoRA layer to exactly the modules we count as applied; the rest are
            # blocks (or transformer blocks) this layout lacks, or blocks of another width.
            assert plan.count(Fate.APPLIED) == len(with_lora) > 0
            assert plan.count(Fate.UNMATCHED) == len(wrong_width)
            assert plan.count(Fate.MISSING) == len(lora) - len(with_lora) - len(wrong_width)
            assert plan.total == len(lora)
            plans[fmt] = plan
    assert set(plans) == set(FORMATS)
    return plans


@pytest.mark.parametrize("key", FAMILIES)
def test_a_lora_trained_on_the_family_matches_diffusers_in_every_format(sgm_openaimodel, key):
    for plan in compare_every_format(sgm_openaimodel, key, key, seed=FAMILIES.index(key)).values():
        assert plan.count(Fate.APPLIED) == plan.total  # including SDXL's up_blocks.0 upsampler


@pytest.mark.parametrize("key", DISTILLED)
def test_an_sdxl_lora_applies_index_for_index_on_distilled_families(sgm_openaimodel, key):
    plans = compare_every_format(sgm_openaimodel, key, "sdxl", seed=10 + DISTILLED.index(key))
    assert all(plan.count(Fate.MISSING) > 0 for plan in plans.values())
    assert plans["kohya-ldm"].source == "SDXL"


def transformer_blocks(layout: UNetLayout) -> int:
    return layout.transformer_count


@pytest.mark.parametrize("key", DISTILLED)
def test_an_sdxl_attention_lora_counts_transformer_blocks_from_the_layouts(key):
    """An SDXL LoRA on q/k/v/out of every attention: 8 modules per transformer block; the distilled model has
    the blocks its layout says, at full width (no tensors: the plan reads names and shapes)."""
    sdxl, layout = FAMILIES_BY_KEY["sdxl"].layout, FAMILIES_BY_KEY[key].layout
    shapes = {}
    for key_, shape in unet_tensor_shapes(sdxl).items():
        if ".attn" in key_ and key_.endswith(".weight"):
            base = "lora_unet_" + key_.removesuffix(".weight").replace(".", "_")
            shapes |= {f"{base}.lora_down.weight": (RANK, shape[1]), f"{base}.lora_up.weight": (shape[0], RANK)}
    plan = plan_for(shapes, layout)
    assert plan.total == 8 * sdxl.transformer_count == 560
    assert plan.count(Fate.APPLIED) == 8 * layout.transformer_count
    assert plan.count(Fate.MISSING) == 8 * (sdxl.transformer_count - layout.transformer_count)
    expected = {"ssd-1b": 34, "segmind-vega": 15, "koala-700m": 21, "koala-1b": 30}[key]  # docs/architectures.md
    assert layout.transformer_count == expected
    missing = 8 * (70 - expected)
    assert plan.summary("x") == f"x {8 * expected}/560 applied, {missing} for blocks this model does not have"


def test_keys_that_match_nothing_and_wrong_widths_are_unmatched():
    layout = FAMILIES_BY_KEY["ssd-1b"].layout
    shapes = {
        "lora_unet_foo_bar.lora_down.weight": (4, 320),
        "lora_unet_foo_bar.lora_up.weight": (320, 4),
        # an SD1.5-width module at an existing name: wrong shape, not applied
        "lora_unet_input_blocks_4_1_proj_in.lora_down.weight": (4, 320),
        "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": (320, 4),
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 768),
    }
    plan = plan_for(shapes, layout)
    assert (plan.total, plan.count(Fate.UNMATCHED), plan.count(Fate.APPLIED)) == (2, 2, 0)
    assert "lora_unet_foo_bar.lora_down.weight" not in plan.renames  # the host is not handed what we refused
    assert plan.renames["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"].startswith("lora_te1_")


def test_koala_lora_in_its_own_numbering_is_read_in_it():
    """KOALA's output block 2 is level 1's first block: a native KOALA LoRA must stay there (SDXL's numbering
    would put output_blocks.2 on level 2)."""
    layout = FAMILIES_BY_KEY["koala-700m"].layout
    shape = unet_tensor_shapes(layout)["output_blocks.2.1.proj_in.weight"]
    base = "lora_unet_output_blocks_2_1_proj_in"
    plan = plan_for({f"{base}.lora_down.weight": (4, shape[1]), f"{base}.lora_up.weight": (shape[0], 4)}, layout)
    assert plan.source == "own"
    assert plan.renames[f"{base}.lora_down.weight"] == "diffusion_model_output_blocks_2_1_proj_in.lora_down.weight"


def test_plan_is_made_once_per_file_version_and_bad_files_name_themselves(tmp_path):
    from safetensors.torch import save_file

    layout = FAMILIES_BY_KEY["ssd-1b"].layout
    path = tmp_path / "x.safetensors"
    save_file({"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(4, 640)}, str(path))
    before = path.read_bytes()
    assert plan_lora(path, layout) is plan_lora(path, layout)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(before[: len(before) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.safetensors"):
        plan_lora(truncated, layout)
    assert path.read_bytes() == before
