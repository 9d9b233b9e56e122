"""Write sample checkpoints of every family and form, for tests, benchmarks and demonstrations.

A *sparse* sample has the full, real header of a checkpoint and a data section that is a hole
(``os.truncate``): a 4.5 GB SSD-1B single file costs a few hundred KB of disk and is written in
milliseconds, and everything that reads only headers sees a real checkpoint.  A *non-sparse* sample
holds real random values (finite, none all-zero), usually for a reduced-width layout such as
:func:`reduced_layout` returns, so that verification and conversion have real bytes to move.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from ..arch.components import (
    ADM_SCALAR_WIDTH,
    ADM_SCALARS_BASE,
    ADM_SCALARS_REFINER,
    SDXL_CLIP_G,
    SDXL_CLIP_L,
    SDXL_VAE,
    VAE_LEGACY_ATTENTION_NAMES,
    ClipTextSpec,
    OpenClipTextSpec,
    VaeSpec,
    clip_text_tensors,
    open_clip_diffusers_tensors,
    single_file_component_shapes,
    vae_diffusers_tensors,
)
from ..arch.detect import LDM_UNET_PREFIX, Form
from ..arch.families import FAMILIES_BY_KEY
from ..arch.layout import Shape, UNetLayout, ldm_to_diffusers_names, unet_tensor_shapes
from ..io.write import TensorSpec, write_text
from ..io.write import write_safetensors as write_file

FORMS = tuple(form.value for form in Form)
SMALL_VAE = VaeSpec(channels=8)
_POOL_VALUES = 1 << 21  # random values drawn once per file (finite in fp16, never all zero)


def is_refiner(family_key: str, layout: UNetLayout | None = None) -> bool:
    """The refiner's conditioning: OpenCLIP alone (tokens as wide as the pooled text) plus 5 scalars."""
    if family_key == "sdxl-refiner":
        return True
    return layout is not None and layout.adm_in_channels - ADM_SCALARS_REFINER * ADM_SCALAR_WIDTH == layout.context_dim


def reduced_layout(
    family_key: str, model_channels: int = 64, channel_mult: tuple[int, ...] | None = None, text_width: int = 16
) -> UNetLayout:
    """The family's block structure (every depth, the middle) at a small width, with matching text widths.

    Widths stay multiples of 64 (the head width detection assumes); the deepest levels share a width
    unless ``channel_mult`` says otherwise, which keeps a reduced SDXL near 17 M parameters.
    Detection reports the result as a custom layout: a family is its structure *and* its widths.
    """
    layout = FAMILIES_BY_KEY[family_key].layout
    refiner = is_refiner(family_key)
    scalars = ADM_SCALARS_REFINER if refiner else ADM_SCALARS_BASE
    return replace(
        layout,
        model_channels=model_channels,
        channel_mult=channel_mult or (1,) + (2,) * (layout.levels - 1),
        context_dim=text_width if refiner else 2 * text_width,
        adm_in_channels=text_width + scalars * ADM_SCALAR_WIDTH,
    )


def fitting_components(
    layout: UNetLayout, refiner: bool = False
) -> tuple[ClipTextSpec | None, OpenClipTextSpec, VaeSpec]:
    """Text encoders whose widths fit ``layout`` (SDXL's own for SDXL's widths) and a VAE."""
    scalars = ADM_SCALARS_REFINER if refiner else ADM_SCALARS_BASE
    projection = layout.adm_in_channels - scalars * ADM_SCALAR_WIDTH
    if projection == SDXL_CLIP_G.projection and layout.context_dim == (1280 if refiner else 2048):
        return (None if refiner else SDXL_CLIP_L), SDXL_CLIP_G, SDXL_VAE
    if projection < 1:
        raise ValueError(f"adm_in_channels {layout.adm_in_channels} leaves no room for pooled text")
    g_width = layout.context_dim if refiner else layout.context_dim - layout.context_dim // 2
    clip_l = None if refiner else ClipTextSpec(layout.context_dim // 2, 2, layout.context_dim, 64, 8)
    clip_g = OpenClipTextSpec(g_width, 2, 2 * g_width, 64, 8, projection)
    return clip_l, clip_g, SMALL_VAE


# -- writing --------------------------------------------------------------------------------------


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Sequence[TensorSpec],
    *,
    sparse: bool = True,
    seed: int = 0,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a safetensors file with these tensors: a hole (``sparse``) or random finite values."""
    if sparse:
        return write_file(path, tensors, metadata=metadata)

    def random_values(handle: IO[bytes]) -> None:
        import numpy as np  # only real-data samples need it; inspect's sparse sample does not

        from ..io.cast import cast
        from ..io.dtypes import CASTABLE

        rng = np.random.default_rng(seed)
        # One pool of random values, read from a random place for each tensor: distinct contents per
        # tensor (so a mix-up shows) at about the speed of a copy.  Values are scaled by each tensor's
        # fan-in, as a trained network's are, so that a full-width UNet run on them stays finite.
        pool = rng.standard_normal(_POOL_VALUES, dtype=np.float32) * np.float32(0.05) + np.float32(0.01)
        for tensor in tensors:
            if tensor.dtype not in CASTABLE:  # integer buffers (e.g. position ids): zeros will do
                handle.write(bytes(tensor.nbytes))
                continue
            position = int(rng.integers(0, _POOL_VALUES))
            remaining = math.prod(tensor.shape)
            while remaining:
                piece = pool[position : position + remaining]
                handle.write(bytes(cast(_fan_in_scaled(piece, tensor).tobytes(), "F32", tensor.dtype)[0]))
                remaining -= len(piece)
                position = 0

    return write_file(path, tensors, random_values, metadata=metadata)


def _fan_in_scaled(values: Any, tensor: TensorSpec) -> Any:
    """Pool values (std 0.05) rescaled: weights to std 1/sqrt(fan-in), norm scales around 1."""
    if len(tensor.shape) > 1:
        return values * (20.0 / math.sqrt(math.prod(tensor.shape[1:])))
    if tensor.name.endswith("weight"):
        return 1.0 + 2.0 * values
    return 2.0 * values


def _specs(shapes: Iterable[tuple[str, Shape]], dtype: str) -> list[TensorSpec]:
    return [TensorSpec(name, dtype, tuple(shape)) for name, shape in shapes]


def sample_shapes(
    family_key: str,
    form: str = "single-file",
    *,
    with_vae: bool = True,
    text_encoders: bool = True,
    layout: UNetLayout | None = None,
    clip_l: ClipTextSpec | None = None,
    clip_g: OpenClipTextSpec | None = None,
    vae: VaeSpec | None = None,
) -> dict[str, Shape]:
    """Every tensor name and shape of a sample (see :func:`write_sample`)."""
    if layout is None:
        if family_key not in FAMILIES_BY_KEY:
            raise ValueError(f"unknown family {family_key!r}; a custom sample needs a layout")
        layout = FAMILIES_BY_KEY[family_key].layout
    if problems := layout.problems():
        raise ValueError("; ".join(problems))
    unet = unet_tensor_shapes(layout)
    if form == Form.DIFFUSERS_UNET.value:
        names = ldm_to_diffusers_names(layout)
        return {names[k]: v for k, v in unet.items()}
    if form == Form.LDM_UNET.value:
        return unet
    if form != Form.SINGLE_FILE.value:
        raise ValueError(f"unknown form {form!r}; choose one of {', '.join(FORMS)}")
    refiner = is_refiner(family_key, layout)
    fit_l, fit_g, fit_vae = fitting_components(layout, refiner)
    shapes = {LDM_UNET_PREFIX + k: v for k, v in unet.items()}
    shapes.update(
        single_file_component_shapes(
            clip_l=(clip_l or fit_l) if text_encoders and not refiner else None,
            clip_g=(clip_g or fit_g) if text_encoders else None,
            vae=(vae or fit_vae) if with_vae else None,
            refiner=refiner,
        )
    )
    return shapes


def write_sample(
    path: str | os.PathLike[str],
    family_key: str,
    form: str = "single-file",
    *,
    with_vae: bool = True,
    text_encoders: bool = True,
    sparse: bool = True,
    dtype: str = "F16",
    layout: UNetLayout | None = None,
    clip_l: ClipTextSpec | None = None,
    clip_g: OpenClipTextSpec | None = None,
    vae: VaeSpec | None = None,
    seed: int = 0,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a sample checkpoint of ``family_key`` ("custom" needs ``layout``) in ``form``.

    ``single-file`` is an A1111/SGM checkpoint (UNet, and unless switched off both text encoders
    and the VAE, at widths that fit ``layout``); ``ldm-unet`` and ``diffusers-unet`` are a bare UNet.
    """
    shapes = sample_shapes(
        family_key,
        form,
        with_vae=with_vae,
        text_encoders=text_encoders,
        layout=layout,
        clip_l=clip_l,
        clip_g=clip_g,
        vae=vae,
    )
    name = FAMILIES_BY_KEY[family_key].name if family_key in FAMILIES_BY_KEY else "custom"
    meta = {"modelspec.title": f"{name} sample", "ssd1b.sample": "sparse" if sparse else "random"}
    meta.update(metadata or {})
    return write_safetensors(path, _specs(shapes.items(), dtype), sparse=sparse, seed=seed, metadata=meta)


def write_diffusers_pipeline(
    root: str | os.PathLike[str],
    family_key: str,
    *,
    layout: UNetLayout | None = None,
    sparse: bool = True,
    dtype: str = "F16",
    variant: str | None = None,
    unet_shards: int = 1,
    legacy_vae_names: bool = False,
    seed: int = 0,
) -> Path:
    """A diffusers SDXL-family folder: ``unet/``, ``text_encoder/`` (not for the refiner),
    ``text_encoder_2/``, ``vae/`` and ``model_index.json``, at widths that fit ``layout``."""
    root = Path(root)
    full_layout = layout or FAMILIES_BY_KEY[family_key].layout
    refiner = is_refiner(family_key, full_layout)
    unet = sample_shapes(family_key, Form.DIFFUSERS_UNET.value, layout=layout)
    clip_l, clip_g, vae = fitting_components(full_layout, refiner)
    suffix = f".{variant}" if variant else ""
    parts: dict[str, tuple[str, dict[str, Shape]]] = {
        "unet": ("diffusion_pytorch_model", unet),
        "text_encoder_2": ("model", open_clip_diffusers_tensors(clip_g)),
        "vae": ("diffusion_pytorch_model", _vae_shapes(vae, legacy_vae_names)),
    }
    if clip_l is not None:
        parts["text_encoder"] = ("model", clip_text_tensors(clip_l))
    for index, (folder, (stem, shapes)) in enumerate(sorted(parts.items())):
        (root / folder).mkdir(parents=True, exist_ok=True)
        specs = _specs(shapes.items(), dtype)
        shards = unet_shards if folder == "unet" else 1
        if shards == 1:
            write_safetensors(root / folder / f"{stem}{suffix}.safetensors", specs, sparse=sparse, seed=seed + index)
            continue
        weight_map = {}
        for shard in range(shards):
            name = f"{stem}{suffix}-{shard + 1:05d}-of-{shards:05d}.safetensors"
            part = specs[shard::shards]
            write_safetensors(root / folder / name, part, sparse=sparse, seed=seed + 100 * index + shard)
            weight_map.update({spec.name: name for spec in part})
        index_file = root / folder / f"{stem}.safetensors.index{suffix}.json"
        write_text(index_file, json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    model_index = {
        "_class_name": "StableDiffusionXLImg2ImgPipeline" if refiner else "StableDiffusionXLPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    }
    if clip_l is not None:
        model_index["text_encoder"] = ["transformers", "CLIPTextModel"]
    write_text(root / "model_index.json", json.dumps(model_index, indent=1))
    return root


def _vae_shapes(vae: VaeSpec, legacy: bool) -> dict[str, Shape]:
    shapes = vae_diffusers_tensors(vae)
    if not legacy:
        return shapes
    renamed = {}
    for name, shape in shapes.items():
        for new, old in VAE_LEGACY_ATTENTION_NAMES.items():
            name = name.replace(f".attentions.0.{new}", f".attentions.0.{old}")
        renamed[name] = shape
    return renamed
