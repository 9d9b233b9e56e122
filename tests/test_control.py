"""SDXL control models on distilled UNets: the site mapping against shapes and diffusers, and the numbers.

diffusers is the reference: a ControlNet's residuals fed to our UNet the way sd-webui-controlnet's hook adds them
equal diffusers' ``down_block_additional_residuals``; IP-Adapter weights applied by sd-webui-controlnet's own code
(``SSD1B_CONTROLNET_EXT`` = an exported sd-webui-controlnet, never part of this repository) through our layer map
equal diffusers' ``_load_ip_adapter_weights`` on the same UNet, given the weights of the SDXL layers of the same name.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from diffusers_reference import example_inputs, random_state_dict, reduced, reference_unet, run_sgm
from test_unet_builder import build_on_meta, forward_walking_the_blocks, loaded

from extensions_ssd1b.arch.families import FAMILIES_BY_KEY, family_name
from extensions_ssd1b.arch.layout import Middle, UNetLayout, ldm_to_diffusers_names
from extensions_ssd1b.control import mapping
from extensions_ssd1b.core.errors import ControlUnitRefused
from extensions_ssd1b.host import controlnet, patching

DISTILLED = ("ssd-1b", "segmind-vega", "koala-700m", "koala-1b")
SDXL_SHAPED = ("ssd-1b", "segmind-vega")
_SDXL = FAMILIES_BY_KEY["sdxl"].layout
CUSTOM = {  # consistent layouts in no table row
    "custom-no-middle": dataclasses.replace(FAMILIES_BY_KEY["ssd-1b"].layout, middle=Middle.NONE),
    "custom-shallow": dataclasses.replace(  # SDXL's blocks, fewer transformers
        _SDXL, input_depths=((0, 0), (1, 1), (5, 5)), output_depths=((5, 5, 5), (1, 1, 1), (0, 0, 0)), middle_depth=5
    ),
    "custom-three-res": UNetLayout(  # 12 input blocks: more than the hook's residual list can reach
        ((0, 1, 0), (2, 0, 2), (3, 3, 1)), ((1, 2, 3, 4), (0, 1, 0, 1), (0, 0, 0, 0)), Middle.FULL, 3
    ),
}
LAYOUTS = {key: FAMILIES_BY_KEY[key].layout for key in DISTILLED} | CUSTOM
MAPPED = (*DISTILLED, "custom-no-middle", "custom-shallow")  # every SDXL ControlNet residual slot has a reachable block
SAME_BLOCKS = (*SDXL_SHAPED, "custom-shallow")  # SDXL's block order: residuals need no rearranging
TOLERANCE = 1e-4


def controlnet_ext() -> Path:
    root = os.environ.get("SSD1B_CONTROLNET_EXT")
    if not root or not (Path(root) / "scripts" / "ipadapter" / "plugable_ipadapter.py").is_file():
        pytest.skip("SSD1B_CONTROLNET_EXT does not point to an exported sd-webui-controlnet (scripts/ipadapter/)")
    return Path(root)


def block_output_shapes(unet, inputs) -> list[torch.Size]:
    """The output shape of every input block, then of the middle, from a real forward pass."""
    shapes: list[torch.Size] = []
    blocks = [*unet.input_blocks, unet.middle_block]
    handles = [b.register_forward_hook(lambda _m, _i, out: shapes.append(out.shape)) for b in blocks]
    run_sgm(unet, inputs)
    for handle in handles:
        handle.remove()
    return shapes


@pytest.mark.parametrize("key", MAPPED)
def test_each_residual_goes_to_a_block_of_the_same_shape(key, sgm_openaimodel):
    sdxl, layout = reduced(FAMILIES_BY_KEY["sdxl"].layout), reduced(LAYOUTS[key])
    sdxl_shapes = block_output_shapes(
        loaded(build_on_meta(sgm_openaimodel, sdxl), random_state_dict(sdxl, 1)),
        example_inputs(sdxl, sgm_openaimodel.timestep_embedding),
    )
    unet = loaded(build_on_meta(sgm_openaimodel, layout), random_state_dict(layout, 1))
    shapes = block_output_shapes(unet, example_inputs(layout, sgm_openaimodel.timestep_embedding))
    rmap = mapping.residual_map(layout)
    has_middle = len(unet.middle_block) > 0

    assert len(rmap.sources) == len(unet.input_blocks) + 1
    received = [s for s in rmap.sources if s is not None]
    assert sorted(received + list(rmap.skipped)) == list(range(10))
    for block, slot in enumerate(rmap.sources[:-1]):
        if slot is not None:
            assert shapes[block] == sdxl_shapes[slot], (block, slot)
    if rmap.sources[-1] is not None:
        assert has_middle and shapes[-1] == sdxl_shapes[-1]
    assert rmap.identity == (key in SAME_BLOCKS)


def diffusers_cross_attention_names(layout) -> list[str]:
    from diffusers import UNet2DConditionModel
    from diffusers_reference import diffusers_config

    with torch.device("meta"):
        model = UNet2DConditionModel(**diffusers_config(layout))
    return [name.removesuffix(".processor") for name in model.attn_processors if name.endswith("attn2.processor")]


def diffusers_name(layout, layer: mapping.AttnLayer) -> str:
    block = {"input": "input_blocks.", "output": "output_blocks.", "middle": "middle_block."}[layer.block_type]
    block += f"{layer.block_id}.1." if layer.block_type != "middle" else "1."
    key = f"{block}transformer_blocks.{layer.index}.attn2.to_q.weight"
    return ldm_to_diffusers_names(layout)[key].removesuffix(".to_q.weight")


def test_sdxl_ip_adapter_layers_are_numbered_in_diffusers_order():
    sdxl = reduced(FAMILIES_BY_KEY["sdxl"].layout)
    ours = [diffusers_name(sdxl, layer) for layer in mapping.sdxl_attention_layers()]
    assert ours == diffusers_cross_attention_names(sdxl)
    assert len(ours) == 70


@pytest.mark.parametrize("key", MAPPED)
def test_each_model_layer_takes_the_sdxl_layer_of_the_same_name(key):
    sdxl, layout = reduced(FAMILIES_BY_KEY["sdxl"].layout), reduced(LAYOUTS[key])
    theirs = set(diffusers_cross_attention_names(layout))
    expected = [name if name in theirs else None for name in diffusers_cross_attention_names(sdxl)]
    amap = mapping.attention_map(LAYOUTS[key])
    got = [diffusers_name(layout, t) if t else None for t in amap.targets]
    assert got == expected
    assert amap.applied == len(theirs)  # every layer of the model gets weights


def test_sdxl_ids_equal_sd_webui_controlnet_transformer_ids():
    root = controlnet_ext()
    enums = import_controlnet(root, "scripts.enums")
    ids = itertools.chain(*enums.StableDiffusionVersion.SDXL.transformer_ids)
    theirs = [mapping.AttnLayer(t.block_type.value, t.block_id, t.block_index) for t in ids]
    assert theirs == list(mapping.sdxl_attention_layers())


# -- ControlNet residuals: numbers ----------------------------------------------------------------------------------


def sd_webui_controlnet_order(layout, outs: list[torch.Tensor]) -> list[torch.Tensor]:
    """What our patched control model hands the hook: SDXL's 10 outputs in hook order for this layout."""
    zero = outs[0].new_zeros(outs[0].shape[0], 1, 1, 1)
    return mapping.hook_order(mapping.residual_map(layout), outs, lambda: zero)


def diffusers_output(layout, weights, inputs, **residuals) -> torch.Tensor:
    """diffusers' UNet with ``weights`` on ``inputs``, given the ControlNet/T2I residuals as keyword arguments."""
    added = {"text_embeds": inputs.text_embeds, "time_ids": inputs.time_ids}
    with torch.no_grad():
        unet = reference_unet(layout, weights)
        return unet(
            inputs.x, inputs.timesteps, encoder_hidden_states=inputs.context, added_cond_kwargs=added, **residuals
        ).sample


@pytest.mark.parametrize("units", [1, 2])
@pytest.mark.parametrize("key", MAPPED)
def test_control_residuals_equal_diffusers(key, units, sgm_openaimodel):
    pytest.importorskip("diffusers")
    sdxl, layout = reduced(FAMILIES_BY_KEY["sdxl"].layout), reduced(LAYOUTS[key])
    sdxl_unet = loaded(build_on_meta(sgm_openaimodel, sdxl), random_state_dict(sdxl, 1))
    sdxl_shapes = block_output_shapes(sdxl_unet, example_inputs(sdxl, sgm_openaimodel.timestep_embedding))
    weights = random_state_dict(layout, seed=5)
    unet = loaded(build_on_meta(sgm_openaimodel, layout), weights)
    inputs = example_inputs(layout, sgm_openaimodel.timestep_embedding)
    generator = torch.Generator().manual_seed(units)
    # each unit: an SDXL ControlNet's 10 residuals; sd-webui-controlnet sums the units' lists entry by entry
    per_unit = [[torch.randn(s, generator=generator) for s in sdxl_shapes] for _ in range(units)]
    in_hook_order = [
        sum(parts) for parts in zip(*(sd_webui_controlnet_order(layout, u) for u in per_unit), strict=True)
    ]
    summed = [sum(parts) for parts in zip(*per_unit, strict=True)]
    with torch.no_grad():
        ours = forward_walking_the_blocks(
            sgm_openaimodel, unet, inputs.x, inputs.timesteps, inputs.context, inputs.y, list(in_hook_order)
        )
        plain = run_sgm(unet, inputs)
    # diffusers: the residuals of the SDXL blocks with the same diffusers position (down_blocks.L resnets/downsamplers)
    sources = mapping.residual_map(layout).sources
    down = tuple(summed[slot] for slot in sources[:-1])
    mid = summed[9] if sources[-1] is not None else torch.zeros_like(down[-1])
    theirs = diffusers_output(
        layout, weights, inputs, down_block_additional_residuals=down, mid_block_additional_residual=mid
    )
    assert (ours - plain).abs().max() > 0.1  # the residuals do change the output
    assert (ours - theirs).abs().max().item() <= TOLERANCE
    if key in SAME_BLOCKS:  # SDXL's block order: the hook gets the ControlNet's list untouched
        assert all(a is b for a, b in zip(sd_webui_controlnet_order(layout, per_unit[0]), per_unit[0], strict=True))


T2I_CASES = {"t2i": ("T2I",), "t2i+t2i": ("T2I", "T2I"), "controlnet+t2i": ("ControlNet", "T2I")}


@pytest.mark.parametrize("units", list(T2I_CASES))
@pytest.mark.parametrize("key", SDXL_SHAPED)
def test_t2i_adapter_features_equal_diffusers(key, units, sgm_openaimodel):
    """T2I features added where sd-webui-controlnet's hook adds them (after input blocks 3, 5, 8 and the middle, the
    sum over units) equal diffusers' ``down_intrablock_additional_residuals``, alone and beside a ControlNet unit."""
    pytest.importorskip("diffusers")
    sdxl, layout = reduced(FAMILIES_BY_KEY["sdxl"].layout), reduced(FAMILIES_BY_KEY[key].layout)
    sdxl_unet = loaded(build_on_meta(sgm_openaimodel, sdxl), random_state_dict(sdxl, 1))
    sdxl_shapes = block_output_shapes(sdxl_unet, example_inputs(sdxl, sgm_openaimodel.timestep_embedding))
    weights = random_state_dict(layout, seed=6)
    unet = loaded(build_on_meta(sgm_openaimodel, layout), weights)
    inputs = example_inputs(layout, sgm_openaimodel.timestep_embedding)
    generator = torch.Generator().manual_seed(len(units))
    kinds = T2I_CASES[units]
    # an SDXL T2I-Adapter's four features have the shapes of SDXL input blocks 3, 5, 8 and of the middle
    features = [[torch.randn(sdxl_shapes[i], generator=generator) for i in (3, 5, 8, 9)] for k in kinds if k == "T2I"]
    residuals = [torch.randn(s, generator=generator) for s in sdxl_shapes] if "ControlNet" in kinds else None
    adapter = [sum(parts) for parts in zip(*features, strict=True)]
    with torch.no_grad():
        ours = forward_walking_the_blocks(
            sgm_openaimodel,
            unet,
            inputs.x,
            inputs.timesteps,
            inputs.context,
            inputs.y,
            control=sd_webui_controlnet_order(layout, residuals) if residuals else None,
            adapter=list(adapter),
        )
        plain = run_sgm(unet, inputs)
    controlnet_args = {}
    if residuals:
        controlnet_args = {
            "down_block_additional_residuals": tuple(residuals[:9]),
            "mid_block_additional_residual": residuals[9],
        }
    theirs = diffusers_output(
        layout, weights, inputs, down_intrablock_additional_residuals=[f.clone() for f in adapter], **controlnet_args
    )
    assert mapping.refusal(FAMILIES_BY_KEY[key].layout, mapping.T2I_ADAPTER) is None  # the glue lets it through
    assert (ours - plain).abs().max() > 0.1  # the features do change the output
    assert (ours - theirs).abs().max().item() <= TOLERANCE


# -- IP-Adapter: sd-webui-controlnet's own code through our map, against diffusers -----------------------------------


def import_controlnet(root: Path, name: str) -> types.ModuleType:
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(name)


class _StubIpAdapter(torch.nn.Module):
    """What PlugableIPAdapter reads of an IPAdapterModel: per-layer ``to_kvs`` and a ready image embedding."""

    def __init__(self, kvs: dict[str, torch.Tensor], tokens: torch.Tensor) -> None:
        super().__init__()
        self.ip_layers = types.SimpleNamespace(to_kvs=torch.nn.ModuleDict())
        for name, weight in kvs.items():
            linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            linear.weight.data = weight
            self.ip_layers.to_kvs[name] = linear
        self.tokens = tokens
        self.is_sdxl, self.is_pulid = True, False

    def get_image_emb(self, _output):
        from scripts.ipadapter.ipadapter_model import ImageEmbed

        return ImageEmbed(self.tokens, torch.zeros_like(self.tokens))


def sdxl_ip_weights(layout, seed: int) -> dict[str, torch.Tensor]:
    """``{2i+1}_to_k_ip`` / ``_to_v_ip`` for SDXL's 70 layers at the reduced widths."""
    generator = torch.Generator().manual_seed(seed)
    sdxl = reduced(FAMILIES_BY_KEY["sdxl"].layout)
    shapes = {name: shape for name, shape in _attn2_widths(sdxl).items()}
    weights = {}
    for i, name in enumerate(diffusers_cross_attention_names(sdxl)):
        for kv in ("k", "v"):
            weights[f"{2 * i + 1}_to_{kv}_ip"] = (
                torch.randn(shapes[name], layout.context_dim, generator=generator) * 0.2
            )
    return weights


def _attn2_widths(layout) -> dict[str, int]:
    names = ldm_to_diffusers_names(layout)
    from extensions_ssd1b.arch.layout import unet_tensor_shapes

    return {
        names[k].removesuffix(".to_q.weight"): shape[0]
        for k, shape in unet_tensor_shapes(layout).items()
        if k.endswith("attn2.to_q.weight")
    }


@pytest.mark.parametrize("key", DISTILLED)
def test_ip_adapter_equals_diffusers(key, sgm_openaimodel):
    root = controlnet_ext()
    pytest.importorskip("diffusers")
    plugable = import_controlnet(root, "scripts.ipadapter.plugable_ipadapter")
    layout = reduced(FAMILIES_BY_KEY[key].layout)
    weights = random_state_dict(layout, seed=7)
    unet = loaded(build_on_meta(sgm_openaimodel, layout), weights)
    inputs = example_inputs(layout, sgm_openaimodel.timestep_embedding)
    plain = run_sgm(unet, inputs)
    kvs = sdxl_ip_weights(layout, seed=8)

    # diffusers: image projection (4 tokens) and, for its own cross-attentions in its order, the SDXL layer's weights
    embed_dim = 16
    generator = torch.Generator().manual_seed(9)
    image_proj = {
        "proj.weight": torch.randn(4 * layout.context_dim, embed_dim, generator=generator) * 0.3,
        "proj.bias": torch.randn(4 * layout.context_dim, generator=generator) * 0.1,
        "norm.weight": torch.ones(layout.context_dim),
        "norm.bias": torch.zeros(layout.context_dim),
    }
    sdxl_names = diffusers_cross_attention_names(reduced(FAMILIES_BY_KEY["sdxl"].layout))
    ip_adapter = {}
    for j, name in enumerate(diffusers_cross_attention_names(layout)):
        i = sdxl_names.index(name)
        for kv in ("k", "v"):
            ip_adapter[f"{2 * j + 1}.to_{kv}_ip.weight"] = kvs[f"{2 * i + 1}_to_{kv}_ip"]
    theirs_unet = reference_unet(layout, weights)
    theirs_unet._load_ip_adapter_weights([{"image_proj": image_proj, "ip_adapter": ip_adapter}])
    image_embeds = torch.randn(1, 1, embed_dim, generator=generator)
    with torch.no_grad():
        tokens = theirs_unet.encoder_hid_proj.image_projection_layers[0](image_embeds)  # (1, 1, 4, ctx)
    tokens = tokens.reshape(1, 4, layout.context_dim)
    added = {
        "text_embeds": inputs.text_embeds,
        "time_ids": inputs.time_ids,
        "image_embeds": [image_embeds.expand(inputs.x.shape[0], -1, -1)],
    }
    with torch.no_grad():
        theirs = theirs_unet(
            inputs.x, inputs.timesteps, encoder_hidden_states=inputs.context, added_cond_kwargs=added
        ).sample

    # ours: sd-webui-controlnet's PlugableIPAdapter hooking our UNet through our layer map
    patching.patch(plugable, "set_model_attn2_replace", controlnet._set_model_attn2_replace)
    try:
        adapter = plugable.PlugableIPAdapter(_StubIpAdapter(kvs, tokens))
        adapter.hook(
            model=unet,
            preprocessor_outputs=None,
            weight=1.0,
            start=0.0,
            end=1.0,
            latent_width=inputs.x.shape[3],
            latent_height=inputs.x.shape[2],
            effective_region_mask=None,
        )
        unet.cond_mark = torch.ones(inputs.x.shape[0], 1, 1, 1)  # what the ControlNet hook sets: all conditional
        ours = run_sgm(unet, inputs)
        counts = list(controlnet._ip_counts)
    finally:
        plugable.clear_all_ip_adapter()
        patching.unpatch(plugable, "set_model_attn2_replace")
        controlnet._ip_counts.clear()
    n_layers = len(diffusers_cross_attention_names(layout))
    assert counts == [(n_layers, 70 - n_layers)]
    assert (theirs - plain).abs().max() > 0.05  # the adapter changes the output
    assert (ours - theirs).abs().max().item() <= TOLERANCE
    assert (run_sgm(unet, inputs) - plain).abs().max().item() == 0  # cleared: nothing stays patched


# -- the host glue's decisions, with stand-in objects -------------------------------------------------------------


class _Type:
    def __init__(self, name: str) -> None:
        self.name = name


@pytest.mark.parametrize(
    ("key", "kind", "refused"),
    [
        ("ssd-1b", "ControlNet", False),
        ("segmind-vega", "T2I_Adapter", False),
        ("ssd-1b", "IPAdapter", False),
        ("koala-700m", "IPAdapter", False),
        ("koala-700m", "ControlNet", False),
        ("koala-1b", "ControlNetUnion", False),
        ("koala-1b", "T2I_Adapter", True),
        ("koala-700m", "AttentionInjection", True),
        ("ssd-1b", "ControlLoRA", True),
        ("segmind-vega", "Controlllite", True),
        ("koala-1b", "AttentionInjection", True),
        ("koala-1b", "ControlLoRA", True),
        ("koala-1b", "Controlllite", True),
        ("koala-1b", "IPAdapter", False),
        ("custom-no-middle", "ControlNet", False),
        ("custom-shallow", "T2I_Adapter", False),
        ("custom-shallow", "Controlllite", True),
        ("custom-three-res", "ControlNet", True),
        ("custom-three-res", "IPAdapter", False),
    ],
)
def test_a_unit_that_cannot_map_stops_the_generation_before_sampling(key, kind, refused, sgm_openaimodel):
    unet = build_on_meta(sgm_openaimodel, LAYOUTS[key])  # full size, on the meta device
    hooked = []
    process = types.SimpleNamespace(extra_generation_params={})
    params = [types.SimpleNamespace(control_model_type=_Type(kind))]
    hook_self = types.SimpleNamespace(model=None, control_params=None)
    controlnet._unet_hook(lambda *a, **k: hooked.append(a), hook_self, unet, object(), params, process)
    if refused:
        assert not hooked
        with pytest.raises(ControlUnitRefused) as raised:
            controlnet.raise_refusal(process)
        assert "ControlNet unit 0" in str(raised.value) and family_name(LAYOUTS[key]) in str(raised.value)
        controlnet.raise_refusal(process)  # once: the next generation is not refused by this one
    else:
        assert len(hooked) == 1
        controlnet.raise_refusal(process)


@pytest.mark.parametrize("key", ["sdxl", "ssd-1b", "segmind-vega", "koala-700m"])
def test_v1_1_436_ip_adapter_entry_point_patches_only_existing_layers(key, sgm_openaimodel):
    """v1.1.436 calls ``set_model_patch_replace(model, fn, flag, block_id, index)`` for SDXL's 70 layers in order."""
    unet = build_on_meta(sgm_openaimodel, FAMILIES_BY_KEY[key].layout)
    patched = []

    def original(model, function, flag, block_id, index):  # what v1.1.436 does, minus the forward swap
        blocks = {"input": model.input_blocks, "output": model.output_blocks, "middle": [model.middle_block]}[flag]
        patched.append((function, blocks[block_id][1].transformer_blocks[index].attn2))

    for number, layer in enumerate(mapping.sdxl_attention_layers()):
        controlnet._set_model_patch_replace(original, unet, number, layer.block_type, layer.block_id, layer.index)
    controlnet._ip_counts.clear()
    attn2 = [m.attn2 for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    assert len({id(module) for _number, module in patched}) == len(patched) == len(attn2)  # each layer once
    if key == "sdxl":
        assert [number for number, _m in patched] == list(range(70))  # untouched: SDXL passes straight through


def test_nothing_is_patched_without_sd_webui_controlnet(monkeypatch):
    for name in (
        "scripts.hook",
        "scripts.cldm",
        "scripts.ipadapter.plugable_ipadapter",
        "scripts.controlmodel_ipadapter",
    ):
        monkeypatch.delitem(sys.modules, name, raising=False)
    before = patching.installed()
    assert controlnet.install_controlnet_glue() is False
    assert patching.installed() == before


def test_a_unet_we_did_not_build_passes_straight_through():
    stock = torch.nn.Module()  # the host's SDXL UNet: no layout of ours
    hooked = []
    process = types.SimpleNamespace(extra_generation_params={})
    params = [types.SimpleNamespace(control_model_type=_Type("Controlllite"))]
    controlnet._unet_hook(lambda *a, **k: hooked.append(a), object(), stock, object(), params, process)
    assert len(hooked) == 1 and process.extra_generation_params == {}
    controlnet.raise_refusal(process)
    outs = [torch.ones(1)] * 10
    assert controlnet._control_model_forward(lambda _self: outs, object()) is outs  # no remap after SDXL
