"""The UNet we build for a layout is the UNet diffusers and stock sgm build for the same model.

References used, none of them our own code: diffusers' ``UNet2DConditionModel`` and its LDM
converter, sgm's ``UNetModel`` with the stock SDXL configs, and the published parameter counts.
Numerics run at reduced width on CPU; shapes and counts run at full width on the meta device.
"""

from __future__ import annotations

import pytest
import torch
from diffusers_reference import (
    SDXL_BASE_UNET_PARAMS,
    SDXL_REFINER_UNET_PARAMS,
    diffusers_config,
    example_inputs,
    random_state_dict,
    reduced,
    reduced_stock_params,
    reference_unet,
    run_diffusers,
    run_sgm,
)
from published import UNET_PARAMETERS

from extensions_ssd1b.arch.detect import Form, detect
from extensions_ssd1b.arch.families import FAMILIES, FAMILIES_BY_KEY
from extensions_ssd1b.arch.layout import ldm_to_diffusers_names, unet_tensor_shapes
from extensions_ssd1b.arch.unet_builder import build_unet, is_ssd1b_unet

FAMILY_KEYS = [family.key for family in FAMILIES]

TOLERANCE = 1e-4  # fp32; both sides run the same ops, so real differences are far larger


def state_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def loaded(unet: torch.nn.Module, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    unet.load_state_dict(weights, strict=True, assign=True)
    return unet.eval()


def build_on_meta(openaimodel, layout):
    with torch.device("meta"):
        return build_unet(openaimodel, layout)


@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers")


@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_same_output_as_diffusers(key, sgm_openaimodel, diffusers):
    layout = reduced(FAMILIES_BY_KEY[key].layout)
    weights = random_state_dict(layout, seed=FAMILY_KEYS.index(key))
    ours = loaded(build_on_meta(sgm_openaimodel, layout), weights)
    theirs = reference_unet(layout, weights)
    inputs = example_inputs(layout, sgm_openaimodel.timestep_embedding)

    out, expected = run_sgm(ours, inputs), run_diffusers(theirs, inputs)

    assert out.shape == inputs.x.shape
    assert expected.std() > 0.1  # a real signal, not a zeroed output that trivially agrees
    assert (out - expected).abs().max().item() <= TOLERANCE


SDXL_T2I_AFTER = (3, 5, 8)  # sd-webui-controlnet's hook.py: ``t2i_injection = [3, 5, 8] if is_sdxl``


def forward_walking_the_blocks(openaimodel, unet, x, timesteps, context, y, control=None, adapter=None):
    """UNetModel.forward re-implemented from its attributes, as ControlNet's hook (sd-webui-controlnet)
    does to add its residuals: time and label embedding, each input block, the middle block, each
    output block with its skip connection, then ``out``.  ``control``: one residual per input block and
    one for the middle, popped from the end; ``adapter``: T2I features, popped from the front, added after
    input blocks 3, 5 and 8 (before their skip is kept) and, the last, after the middle."""
    emb = unet.time_embed(openaimodel.timestep_embedding(timesteps, unet.model_channels, repeat_only=False))
    emb = emb + unet.label_emb(y)
    h, skips = x, []
    for i, block in enumerate(unet.input_blocks):
        h = block(h, emb, context)
        if adapter and i in SDXL_T2I_AFTER:
            h = h + adapter.pop(0)
        skips.append(h)
    h = unet.middle_block(h, emb, context)
    if control is not None:
        h = h + control.pop()
    if adapter:
        h = h + adapter.pop(0)
    for block in unet.output_blocks:
        skip = skips.pop()
        h = block(torch.cat([h, skip + control.pop() if control else skip], dim=1), emb, context)
    return unet.out(h)


@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_an_extension_walking_the_blocks_computes_the_same_as_forward(key, sgm_openaimodel):
    layout = reduced(FAMILIES_BY_KEY[key].layout)
    unet = loaded(build_on_meta(sgm_openaimodel, layout), random_state_dict(layout, seed=11))
    inputs = example_inputs(layout, sgm_openaimodel.timestep_embedding)
    with torch.no_grad():
        walked = forward_walking_the_blocks(sgm_openaimodel, unet, inputs.x, inputs.timesteps, inputs.context, inputs.y)
        # ControlNet-style residuals (one per input block, one for the middle) have the blocks' shapes.
        shapes = []
        hook = [b.register_forward_hook(lambda m, i, o: shapes.append(o.shape)) for b in unet.input_blocks]
        run_sgm(unet, inputs)
        for handle in hook:
            handle.remove()
        control = [torch.zeros(shape) for shape in shapes] + [torch.zeros(shapes[-1])]
        with_zero_control = forward_walking_the_blocks(
            sgm_openaimodel, unet, inputs.x, inputs.timesteps, inputs.context, inputs.y, control
        )
    expected = run_sgm(unet, inputs)
    assert not control, "one residual per input block and one for the middle, all consumed"
    torch.testing.assert_close(walked, expected, rtol=0, atol=0)
    torch.testing.assert_close(with_zero_control, expected, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_full_width_tensors_and_published_size(key, sgm_openaimodel):
    layout = FAMILIES_BY_KEY[key].layout
    unet = build_on_meta(sgm_openaimodel, layout)

    assert state_shapes(unet) == unet_tensor_shapes(layout)
    assert sum(p.numel() for p in unet.parameters()) == UNET_PARAMETERS[key]


def test_built_unet_is_the_stock_class_with_the_stock_forward(sgm_openaimodel):
    layout = reduced(FAMILIES_BY_KEY["ssd-1b"].layout)
    unet = build_on_meta(sgm_openaimodel, layout)

    assert isinstance(unet, sgm_openaimodel.UNetModel)
    # Host patches replace UNetModel.forward on the class; a subclass override would dodge them.
    assert type(unet).forward is sgm_openaimodel.UNetModel.forward
    assert "forward" not in vars(type(unet))
    assert is_ssd1b_unet(unet) and unet.ssd1b_layout == layout
    # Attributes host code reads off a stock UNetModel.
    with torch.device("meta"):
        stock = sgm_openaimodel.UNetModel(**reduced_stock_params(SDXL_BASE_UNET_PARAMS))
    missing = {name for name in vars(stock) if not name.startswith("_") and not hasattr(unet, name)}
    assert not missing


@pytest.mark.parametrize(
    ("key", "params"), [("sdxl", SDXL_BASE_UNET_PARAMS), ("sdxl-refiner", SDXL_REFINER_UNET_PARAMS)]
)
def test_stock_sgm_config_builds_the_same_unet(key, params, sgm_openaimodel):
    layout = FAMILIES_BY_KEY[key].layout
    with torch.device("meta"):
        stock = sgm_openaimodel.UNetModel(**params)
    assert state_shapes(stock) == state_shapes(build_on_meta(sgm_openaimodel, layout))

    # Same weights, same output: the stock constructor and ours wire the blocks identically.
    small = reduced(layout)
    weights = random_state_dict(small, seed=7)
    with torch.device("meta"):
        stock = sgm_openaimodel.UNetModel(**reduced_stock_params(params))
    stock = loaded(stock, weights)
    ours = loaded(build_on_meta(sgm_openaimodel, small), weights)
    inputs = example_inputs(small, sgm_openaimodel.timestep_embedding)
    assert torch.equal(run_sgm(ours, inputs), run_sgm(stock, inputs))


@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_key_map_agrees_with_diffusers_converter(key, diffusers):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    layout = FAMILIES_BY_KEY[key].layout
    config = diffusers_config(layout)
    assert isinstance(config["layers_per_block"], int)  # the converter indexes blocks with it
    # Values are the LDM names themselves, so the converter's output is its key map.
    checkpoint = {f"model.diffusion_model.{name}": name for name in unet_tensor_shapes(layout)}

    converted = convert_ldm_unet_checkpoint(checkpoint, config)

    assert converted == {theirs: ours for ours, theirs in ldm_to_diffusers_names(layout).items()}


@pytest.mark.parametrize("key", FAMILY_KEYS)
def test_detect_reads_back_a_real_diffusers_unet(key, diffusers):
    layout = FAMILIES_BY_KEY[key].layout
    with torch.device("meta"):
        model = diffusers.UNet2DConditionModel(**diffusers_config(layout))
    shapes = state_shapes(model)

    detection = detect(shapes)  # also fails on any tensor the layout does not predict

    assert detection.form is Form.DIFFUSERS_UNET
    assert detection.layout == layout
    assert detection.family is FAMILIES_BY_KEY[key]
    assert set(shapes) == set(ldm_to_diffusers_names(layout).values())
