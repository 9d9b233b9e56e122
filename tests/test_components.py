"""The generated non-UNet layouts, checked against the real libraries and the published counts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from extensions_ssd1b.arch.components import (
    CLIP_G_BASE_PREFIX,
    SDXL_CLIP_G,
    SDXL_CLIP_L,
    SDXL_VAE,
    ClipTextSpec,
    ComponentLayout,
    OpenClipTextSpec,
    VaeSpec,
    clip_text_spec_from,
    clip_text_tensors,
    component_problems,
    find_components,
    open_clip_diffusers_tensors,
    open_clip_sources,
    open_clip_spec_from,
    open_clip_spec_from_diffusers,
    open_clip_tensors,
    single_file_component_shapes,
    text_encoder_fit,
    vae_diffusers_names,
    vae_diffusers_tensors,
    vae_spec_from,
    vae_tensors,
)
from extensions_ssd1b.arch.detect import CLIP_L_PREFIX, VAE_PREFIX, has_vae
from extensions_ssd1b.arch.families import FAMILIES_BY_KEY
from extensions_ssd1b.tools.samples import fitting_components, reduced_layout

CLIP_L_CONFIG = Path(
    "/work/shared/data/hf-home-clip-l/hub/models--openai--clip-vit-large-patch14/snapshots/"
    "cb9476615c6804b25218821d881ac95be159fe72/config.json"
)


def parameters(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes.values())


def test_published_counts() -> None:
    """architectures.md §2.1 / vae-nan.md §5: the component sizes that make up a 6.94 GB SDXL file."""
    assert parameters(clip_text_tensors(SDXL_CLIP_L)) == 123_060_480
    assert parameters(open_clip_tensors(SDXL_CLIP_G)) == 694_659_841
    vae = vae_tensors(SDXL_VAE)
    assert parameters(vae) == 83_653_863
    assert len(vae) == 248
    assert sum(k.startswith("encoder.") for k in vae) == 106 and sum(k.startswith("decoder.") for k in vae) == 138


def test_single_file_components_are_what_detect_finds() -> None:
    shapes = single_file_component_shapes()
    assert has_vae(shapes)
    found, problems = find_components(shapes)
    assert not problems
    assert [(c.name, c.spec) for c in found] == [
        ("CLIP-L", SDXL_CLIP_L),
        ("OpenCLIP-bigG", SDXL_CLIP_G),
        ("VAE", SDXL_VAE),
    ]
    assert all(not component_problems(shapes, c) for c in found)


# -- VAE against diffusers' AutoencoderKL and its LDM→diffusers converter --------------------------


def _autoencoder(spec: VaeSpec, groups: int = 32) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        return AutoencoderKL(
            in_channels=spec.in_channels,
            out_channels=spec.out_channels,
            down_block_types=["DownEncoderBlock2D"] * len(spec.channel_mult),
            up_block_types=["UpDecoderBlock2D"] * len(spec.channel_mult),
            block_out_channels=[spec.channels * m for m in spec.channel_mult],
            layers_per_block=spec.res_blocks,
            latent_channels=spec.z_channels,
            norm_num_groups=groups,
        )


@pytest.mark.parametrize("spec", [SDXL_VAE, VaeSpec(channels=8, channel_mult=(1, 2, 2), res_blocks=1)])
def test_vae_layout_matches_diffusers_autoencoder(spec: VaeSpec) -> None:
    model = _autoencoder(spec, groups=min(32, spec.channels))
    reference = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert vae_diffusers_tensors(spec) == reference


def test_vae_ldm_names_map_like_diffusers_converter() -> None:
    """Tensors with distinct values, named by our LDM layout, go where diffusers' own converter puts them."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    spec = VaeSpec(channels=8)
    ldm = vae_tensors(spec)
    checkpoint = {VAE_PREFIX + k: torch.full(s, float(i)) for i, (k, s) in enumerate(ldm.items())}
    levels = len(spec.channel_mult)
    converted = convert_ldm_vae_checkpoint(
        checkpoint, {"down_block_types": [0] * levels, "up_block_types": [0] * levels}
    )
    names = vae_diffusers_names(spec)
    assert set(converted) == set(names.values())
    for i, (ldm_name, shape) in enumerate(ldm.items()):
        tensor = converted[names[ldm_name]]
        assert tensor.numel() == math.prod(shape) and bool((tensor == i).all()), ldm_name
    assert {k: tuple(v.shape) for k, v in converted.items()} == vae_diffusers_tensors(spec)


# -- OpenCLIP-bigG against diffusers' open_clip → transformers converter --------------------------


@pytest.mark.parametrize("spec", [SDXL_CLIP_G, OpenClipTextSpec(16, 3, 32, 50, 8, 12)])
def test_open_clip_names_match_diffusers_converter(spec: OpenClipTextSpec) -> None:
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    checkpoint = {CLIP_G_BASE_PREFIX + k: torch.empty(s, device="meta") for k, s in open_clip_tensors(spec).items()}
    converted = convert_open_clip_checkpoint(None, checkpoint, CLIP_G_BASE_PREFIX)
    assert {k: tuple(v.shape) for k, v in converted.items()} == open_clip_diffusers_tensors(spec)


def test_open_clip_sources_invert_diffusers_converter() -> None:
    """q/k/v concatenation and the transposed projection, value by value, against diffusers' split."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    spec = OpenClipTextSpec(16, 2, 32, 50, 8, 12)
    generator = torch.Generator().manual_seed(0)
    ours = {k: torch.randn(s, generator=generator) for k, s in open_clip_tensors(spec).items()}
    diffusers = convert_open_clip_checkpoint(
        None, {CLIP_G_BASE_PREFIX + k: v for k, v in ours.items()}, CLIP_G_BASE_PREFIX
    )
    sources = open_clip_sources(spec)
    assert set(sources) == set(ours) - {"logit_scale"}  # diffusers has no logit_scale
    for name, source in sources.items():
        rebuilt = torch.cat([diffusers[n] for n in source.names])
        if source.transpose:
            rebuilt = rebuilt.T
        assert torch.equal(rebuilt, ours[name]), name


# -- CLIP-L / bigG against transformers (when installed) -------------------------------------------


def _normalise(names: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    # transformers 5 dropped the "text_model." level from CLIPTextModel; checkpoints keep it.
    return {k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}": v for k, v in names.items()}


def test_clip_l_matches_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    if not CLIP_L_CONFIG.is_file():
        pytest.skip("the CLIP-L config from ../shared/data is not here")
    config = transformers.CLIPTextConfig(**json.loads(CLIP_L_CONFIG.read_text())["text_config"])
    with torch.device("meta"):
        model = transformers.CLIPTextModel(config)
    reference = _normalise({k: tuple(v.shape) for k, v in model.state_dict().items()})
    reference.pop("text_model.embeddings.position_ids", None)  # a buffer, persistent only in old releases
    assert reference == clip_text_tensors(SDXL_CLIP_L)
    assert sum(p.numel() for p in model.parameters()) == parameters(clip_text_tensors(SDXL_CLIP_L))


def test_open_clip_diffusers_side_matches_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPTextConfig(
        hidden_size=1280, num_hidden_layers=32, num_attention_heads=20, intermediate_size=5120, projection_dim=1280
    )
    with torch.device("meta"):
        model = transformers.CLIPTextModelWithProjection(config)
    reference = _normalise({k: tuple(v.shape) for k, v in model.state_dict().items()})
    reference.pop("text_model.embeddings.position_ids", None)
    assert reference == open_clip_diffusers_tensors(SDXL_CLIP_G)


def test_diffusers_strips_our_clip_l_prefix() -> None:
    from diffusers.loaders.single_file_utils import LDM_CLIP_PREFIX_TO_REMOVE

    assert CLIP_L_PREFIX in LDM_CLIP_PREFIX_TO_REMOVE


# -- specs read back from shapes ------------------------------------------------------------------


@pytest.mark.parametrize("spec", [SDXL_CLIP_L, ClipTextSpec(24, 3, 40, 10, 5)])
def test_clip_spec_round_trip(spec: ClipTextSpec) -> None:
    assert clip_text_spec_from(clip_text_tensors(spec)) == spec


@pytest.mark.parametrize("spec", [SDXL_CLIP_G, OpenClipTextSpec(24, 3, 40, 10, 5, 7)])
def test_open_clip_spec_round_trip(spec: OpenClipTextSpec) -> None:
    assert open_clip_spec_from(open_clip_tensors(spec)) == spec
    assert open_clip_spec_from_diffusers(open_clip_diffusers_tensors(spec)) == spec


@pytest.mark.parametrize("spec", [SDXL_VAE, VaeSpec(8, (1, 2), 1, 3, 1, 2)])
def test_vae_spec_round_trip(spec: VaeSpec) -> None:
    assert vae_spec_from(vae_tensors(spec)) == spec
    assert vae_spec_from(vae_diffusers_tensors(spec), diffusers=True) == spec


def test_component_problems_name_what_is_wrong() -> None:
    shapes = single_file_component_shapes(vae=None)
    del shapes[CLIP_L_PREFIX + "text_model.encoder.layers.3.mlp.fc1.bias"]
    shapes[CLIP_L_PREFIX + "text_model.encoder.layers.4.mlp.fc1.weight"] = (1, 1)
    shapes[CLIP_G_BASE_PREFIX + "transformer.resblocks.40.ln_1.weight"] = (1280,)
    del shapes[CLIP_G_BASE_PREFIX + "logit_scale"]  # optional: not a problem
    found, _ = find_components(shapes)
    problems = [p for c in found for p in component_problems(shapes, c)]
    text = "\n".join(problems)
    assert "CLIP-L: missing tensors: text_model.encoder.layers.3" in text
    assert "text_model.encoder.layers.4.mlp.fc1.weight has shape (1, 1)" in text
    assert "OpenCLIP-bigG: missing tensors: transformer.resblocks.32 (12 tensors)" in text  # 41 layers read
    assert "logit_scale" not in text
    component = ComponentLayout("VAE", VAE_PREFIX, SDXL_VAE, vae_tensors(SDXL_VAE))
    assert component_problems({}, component) and "missing" in component_problems({}, component)[0]


@pytest.mark.parametrize("family", ["sdxl", "sdxl-refiner", "ssd-1b", "koala-700m"])
def test_text_encoders_fit_their_unet(family: str) -> None:
    refiner = family == "sdxl-refiner"
    for layout in (FAMILIES_BY_KEY[family].layout, reduced_layout(family)):
        clip_l, clip_g, vae = fitting_components(layout, refiner)
        shapes = single_file_component_shapes(clip_l, clip_g, vae, refiner=refiner)
        assert text_encoder_fit(shapes, layout) == []
    base = single_file_component_shapes()  # CLIP-L 768 + bigG 1280 = 2048, pooled 1280
    problems = text_encoder_fit(base, FAMILIES_BY_KEY["sdxl-refiner"].layout)
    assert any("2048 wide tokens" in p and "1280" in p for p in problems)
    assert any("label_emb takes 2560" in p for p in problems)
