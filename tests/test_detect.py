"""Detection round trips: layout → generated keys and shapes → detect → the same layout."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from published import UNET_PARAMETERS, UNET_TENSORS

from extensions_ssd1b.arch import detect as detect_module
from extensions_ssd1b.arch.detect import LDM_UNET_PREFIX, Form, detect
from extensions_ssd1b.arch.families import CUSTOM_DISTILLED, FAMILIES, FAMILIES_BY_KEY, match_family
from extensions_ssd1b.arch.layout import (
    Middle,
    UNetLayout,
    layout_from_dict,
    layout_to_dict,
    ldm_to_diffusers_names,
    parameter_count,
    unet_tensor_shapes,
)
from extensions_ssd1b.core.errors import LayoutError, NotSdxlFamily
from extensions_ssd1b.tools.samples import sample_shapes


def single_file(layout: UNetLayout) -> dict[str, tuple[int, ...]]:
    return {LDM_UNET_PREFIX + key: shape for key, shape in unet_tensor_shapes(layout).items()}


def diffusers_form(layout: UNetLayout) -> dict[str, tuple[int, ...]]:
    names = ldm_to_diffusers_names(layout)
    return {names[key]: shape for key, shape in unet_tensor_shapes(layout).items()}


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.key)
def test_every_table_row_round_trips_in_every_form(family):
    for form, shapes in (
        (Form.SINGLE_FILE, single_file(family.layout)),
        (Form.LDM_UNET, dict(unet_tensor_shapes(family.layout))),
        (Form.DIFFUSERS_UNET, diffusers_form(family.layout)),
    ):
        detection = detect(shapes)
        assert detection.form is form
        assert detection.layout == family.layout
        assert detection.family is family


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.key)
def test_the_known_family_shortcut_finds_what_counting_finds(family, monkeypatch):
    files = [sample_shapes(family.key, form.value) for form in Form]  # single files with text encoders and VAE
    for shapes, form in zip(files, Form, strict=True):
        prefix = detect_module._locate_unet(shapes)[1]
        assert detect_module._known_family(shapes, form, prefix) is family
        assert detect_module._known_family({**shapes, prefix + "extra.weight": (1,)}, form, prefix) is None
    shortcut = [detect(shapes) for shapes in files]
    monkeypatch.setattr(detect_module, "_known_family", lambda *_: None)
    assert [detect(shapes) for shapes in files] == shortcut


def test_shapes_as_lists_are_counted_to_the_same_result():
    shapes = _ssd1b()
    assert detect({k: list(v) for k, v in shapes.items()}) == detect(shapes)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.key)
def test_generated_layouts_have_the_published_sizes(family):
    params, tensors = UNET_PARAMETERS[family.key], UNET_TENSORS[family.key]
    assert parameter_count(family.layout) == params
    assert len(unet_tensor_shapes(family.layout)) == tensors


def test_table_rows_are_unique_and_each_matches_only_itself():
    layouts = [family.layout for family in FAMILIES]
    assert len(set(layouts)) == len(layouts)
    for family in FAMILIES:
        assert [f for f in FAMILIES if f.layout == family.layout] == [family]
        assert match_family(family.layout) is family


def test_only_sdxl_and_refiner_are_passed_to_the_host():
    assert {f.key for f in FAMILIES if not f.distilled} == {"sdxl", "sdxl-refiner"}


MADE_UP = [
    # SSD-1B with Vega's middle removed: consistent, in no table row
    dataclasses.replace(FAMILIES_BY_KEY["ssd-1b"].layout, middle=Middle.NONE),
    # three res blocks per level, uneven depths, full middle of depth 3
    UNetLayout(((0, 1, 0), (2, 0, 2), (3, 3, 1)), ((1, 2, 3, 4), (0, 1, 0, 1), (0, 0, 0, 0)), Middle.FULL, 3),
    # a KOALA-style inpainting variant (9 input channels)
    dataclasses.replace(FAMILIES_BY_KEY["koala-700m"].layout, in_channels=9),
]


@pytest.mark.parametrize("layout", MADE_UP)
def test_made_up_consistent_layouts_are_built_as_custom(layout):
    for shapes in (single_file(layout), diffusers_form(layout)):
        detection = detect(shapes)
        assert detection.layout == layout
        assert detection.family is None
        assert detection.family_name == CUSTOM_DISTILLED
        assert detection.distilled


@st.composite
def layouts(draw: st.DrawFn) -> UNetLayout:
    levels = draw(st.integers(2, 4))
    res = [draw(st.integers(1, 3)) for _ in range(levels)]
    depth = st.integers(0, 3)
    inputs = tuple(tuple(draw(depth) for _ in range(n)) for n in res)
    outputs = tuple(tuple(draw(depth) for _ in range(res[level] + 1)) for level in reversed(range(levels)))
    middle = draw(st.sampled_from(list(Middle)))
    return UNetLayout(
        inputs,
        outputs,
        middle,
        draw(st.integers(1, 4)) if middle is Middle.FULL else 0,
        model_channels=draw(st.sampled_from([64, 128, 320])),
        channel_mult=tuple(draw(st.integers(1, 4)) for _ in range(levels)),
        context_dim=draw(st.sampled_from([768, 1280, 2048])),
        adm_in_channels=draw(st.sampled_from([256, 2560, 2816])),
        in_channels=draw(st.sampled_from([4, 9])),
    )


@settings(max_examples=60, deadline=None)
@given(layouts())
def test_any_consistent_layout_round_trips(layout):
    assert detect(single_file(layout)).layout == layout
    assert detect(diffusers_form(layout)).layout == layout
    assert layout_from_dict(layout_to_dict(layout)) == layout


def _ssd1b() -> dict[str, tuple[int, ...]]:
    return single_file(FAMILIES_BY_KEY["ssd-1b"].layout)


def _drop(shapes: dict, *fragments: str) -> dict:
    return {k: v for k, v in shapes.items() if not any(f in k for f in fragments)}


P = LDM_UNET_PREFIX
INCONSISTENT = {
    "gap in block numbering": (
        lambda: {
            (k.replace("input_blocks.2.", "input_blocks.9.") if "input_blocks.2." in k else k): v
            for k, v in _drop(_ssd1b(), "input_blocks.9.").items()
        },
        "input_blocks numbering has a gap",
    ),
    "transformer without its residual block": (
        lambda: _drop(_ssd1b(), "input_blocks.4.0."),
        "input_blocks.4: a transformer without its residual block",
    ),
    "depth differs between the keys of one block": (
        lambda: _drop(_ssd1b(), "input_blocks.7.1.transformer_blocks.3.ff."),
        "missing UNet tensors: input_blocks.7.1.transformer_blocks.3",
    ),
    "shape off the channel plan": (
        lambda: {**_ssd1b(), P + "input_blocks.5.0.in_layers.2.weight": (640, 320, 3, 3)},
        "input_blocks.5.0.in_layers.2.weight has shape (640, 320, 3, 3)",
    ),
    "middle block with only a transformer": (
        lambda: {
            **_ssd1b(),
            **{
                P + "middle_block.1." + k.split("input_blocks.7.1.")[1]: v
                for k, v in unet_tensor_shapes(FAMILIES_BY_KEY["ssd-1b"].layout).items()
                if k.startswith("input_blocks.7.1.")
            },
        },
        "middle block holds middle_block.0, middle_block.1",
    ),
    "output side shorter than the input side": (
        lambda: _drop(_ssd1b(), "output_blocks.8."),
        "8 output blocks, but the input side needs 9",
    ),
    "missing upsample": (
        lambda: _drop(_ssd1b(), "output_blocks.5.2.conv"),
        "missing UNet tensors: output_blocks.5.2",
    ),
    "a stray extra tensor (merged LoRA leftovers)": (
        lambda: {**_ssd1b(), P + "input_blocks.4.1.transformer_blocks.0.attn1.to_q.lora_up.weight": (640, 8)},
        "unexpected UNet tensors: input_blocks.4.1.transformer_blocks.0",
    ),
}


@pytest.mark.parametrize("case", list(INCONSISTENT), ids=list(INCONSISTENT))
def test_inconsistent_layouts_are_refused_naming_what_is_wrong(case):
    make, message = INCONSISTENT[case]
    with pytest.raises(LayoutError) as caught:
        detect(make())
    assert message in str(caught.value)


def test_dropping_the_last_transformer_block_is_a_different_consistent_layout():
    layout = FAMILIES_BY_KEY["koala-700m"].layout
    detection = detect(_drop(diffusers_form(layout), "up_blocks.1.attentions.1.transformer_blocks.1."))
    assert detection.family is None
    assert detection.layout.output_depths[1] == (2, 1)


def test_diffusers_keys_with_a_missing_block_name_it_in_diffusers_terms():
    shapes = _drop(
        diffusers_form(FAMILIES_BY_KEY["koala-700m"].layout), "up_blocks.1.attentions.1.transformer_blocks.0."
    )
    with pytest.raises(LayoutError, match=r"up_blocks\.1\.attentions\.1\.transformer_blocks\.0"):
        detect(shapes)


def test_sd15_is_not_sdxl_family():
    sd15 = {
        P + "input_blocks.0.0.weight": (320, 4, 3, 3),
        P + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
    }
    with pytest.raises(NotSdxlFamily, match=r"SD 1\.x"):
        detect(sd15)


def test_components_are_read_from_prefixes():
    shapes = single_file(FAMILIES_BY_KEY["segmind-vega"].layout)
    assert detect(shapes).components.present() == ["UNet"]
    shapes["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"] = (768,)
    shapes["conditioner.embedders.1.model.ln_final.weight"] = (1280,)
    for key in ("decoder.conv_in.weight", "post_quant_conv.weight", "decoder.conv_out.weight"):
        shapes["first_stage_model." + key] = (4,)
    assert detect(shapes).components.present() == ["UNet", "CLIP-L", "OpenCLIP-bigG", "VAE"]
