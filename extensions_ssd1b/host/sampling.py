"""NaN-safe sampling: the UNet watched at every step on the device, and an image with NaN/Inf sampled again.

``StableDiffusionProcessing{Txt2Img,Img2Img}.sample`` is wrapped: a model without a usable VAE is
refused before sampling, and a NaN is redone with the same noise, first with attention in fp32, then
with the UNet in fp32 (:func:`~extensions_ssd1b.vae.nan.sample_with_recovery` decides).  The watch
is fed from ``on_cfg_denoised``: one device-side reduction per step, read once after sampling.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

from ..core import settings
from ..vae import nan
from . import checkpoints, controlnet, safety, vae
from .patching import patch

_watch: nan.StepWatch | None = None


def _observe_step(params: Any) -> None:
    """on_cfg_denoised: one reduction on the device, no sync (read once after sampling)."""
    if _watch is not None:
        _watch.observe(params.x, params.sampling_step)


@contextlib.contextmanager
def temporary_option(opts: Any, name: str, value: Any) -> Iterator[None]:
    """``opts.<name>`` reads ``value`` inside the block, without touching ``opts.data``.

    The host's ``Options.__getattr__`` answers only names the instance lacks, so an instance
    attribute shadows the setting; ``opts.data`` (what "Apply settings" or any other ``opts.save``
    writes to config.json, maybe from another thread meanwhile) never holds the override.
    """
    object.__setattr__(opts, name, value)
    try:
        yield
    finally:
        object.__delattr__(opts, name)


@contextlib.contextmanager
def _unet_remedy(model: Any, remedy: nan.UnetRemedy) -> Iterator[None]:
    from modules import devices, shared

    if remedy is nan.UnetRemedy.UPCAST_ATTENTION:
        with temporary_option(shared.opts, "upcast_attn", True):  # the attention code reads it on every call
            yield
        return
    saved_dtype = devices.dtype_unet
    devices.dtype_unet = nan.DTYPES[settings.Precision.FP32]  # the host casts inputs and timesteps to it
    try:
        # One block in fp32 at a time: a second, fp32 copy of the whole UNet would not fit where this is needed.
        with nan.blockwise_forward_precision(model.model.diffusion_model, settings.Precision.FP32):
            yield
    finally:
        devices.dtype_unet = saved_dtype


def noise_rewinder(p: Any) -> Callable[[], None]:
    """Puts back a fresh copy of the batch's noise generator (p.rng, v1.6+), so a redo gets the same noise."""
    rng = getattr(p, "rng", None)
    fields = ("shape", "seeds", "subseeds", "subseed_strength", "seed_resize_from_h", "seed_resize_from_w")
    if rng is None or not all(hasattr(rng, name) for name in fields):
        return lambda: None
    arguments = {name: getattr(rng, name) for name in fields}
    shape, seeds = arguments.pop("shape"), arguments.pop("seeds")

    def rewind() -> None:
        p.rng = type(rng)(shape, seeds, **arguments)

    return rewind


def _sample(original: Callable[..., Any], p: Any, *args: Any, **kwargs: Any) -> Any:
    """``p.sample``: refuse before sampling when there is no VAE; redo a UNet NaN with the same noise."""
    global _watch
    from modules import devices, shared

    controlnet.raise_refusal(p)  # a refused ControlNet unit stops here, before the first step
    model = shared.sd_model
    values = vae.read_settings()
    if vae.scope_detection(checkpoints.model_file(model), values) is None:
        return original(p, *args, **kwargs)
    safety.in_scope_vae(model, shared.opts.sd_vae_decode_method == "Full")  # a refusal stops here, before sampling
    policy = values.nan_unet
    if policy is settings.NanPolicy.OFF:
        return original(p, *args, **kwargs)
    unet = model.model.diffusion_model
    init_latent = getattr(p, "init_latent", None)
    state = shared.state
    _watch = nan.StepWatch()
    try:
        samples, recovery = nan.sample_with_recovery(
            lambda: original(p, *args, **kwargs),
            watch=_watch,
            policy=policy,
            remedy=functools.partial(_unet_remedy, model),
            rewind=noise_rewinder(p),
            unet_precision=nan.precision_of(next(unet.parameters()).dtype),
            attention_upcast=bool(getattr(shared.opts, "upcast_attn", False)),
            nan_errors=(devices.NansException,),
            input_nonfinite=lambda: init_latent is not None and not nan.all_finite(init_latent),
            stopped=lambda: bool(state.interrupted or state.skipped or getattr(state, "stopping_generation", False)),
        )
    finally:
        _watch = None
    if recovery is not None:
        safety.tell(recovery.message)
        safety.record([recovery.note])
    return samples


# -- installing ------------------------------------------------------------------------------------


def _patched_sample_classes() -> list[type]:
    from modules import processing

    names = ("StableDiffusionProcessingTxt2Img", "StableDiffusionProcessingImg2Img")
    classes = [getattr(processing, name, None) for name in names]
    return [cls for cls in classes if cls is not None and "sample" in vars(cls)]


def install_nan_safe_sampling() -> None:
    """Wrap the host's sampling and watch every step (scripts/ wires it; idempotent)."""
    global _watch
    from modules import script_callbacks

    _watch = None  # a new host (tests) or a reload starts afresh
    for cls in _patched_sample_classes():
        patch(cls, "sample", _sample)
    script_callbacks.on_cfg_denoised(_observe_step)
