"""Devices and dtypes, as in A1111's modules/devices.py (CPU only).

Release difference kept: ``test_for_nans`` raises when *all* elements are NaN up to v1.9, and
when the *first* element is NaN from v1.10.0 (whose message also drops the word "all").
"""

import contextlib

import torch
from modules import _standin, shared

_FIRST_ELEMENT_NAN_CHECK = _standin.at_least("1.10.0")


def has_mps() -> bool:
    return False


def get_cuda_device_string():
    return "cuda"


def get_optimal_device_name():
    if torch.cuda.is_available():
        return get_cuda_device_string()

    return "cpu"


def get_optimal_device():
    return torch.device(get_optimal_device_name())


def get_device_for(task):
    if task in shared.cmd_opts.use_cpu or "all" in shared.cmd_opts.use_cpu:
        return cpu

    return get_optimal_device()


def torch_gc():
    pass


cpu: torch.device = torch.device("cpu")
device: torch.device = None
dtype: torch.dtype = torch.float16
dtype_vae: torch.dtype = torch.float16
dtype_unet: torch.dtype = torch.float16
if _standin.at_least("1.8.0"):
    dtype_inference: torch.dtype = torch.float16
unet_needs_upcast = False
if _standin.at_least("1.8.0"):
    fp8 = False


def cond_cast_unet(input):
    return input.to(dtype_unet) if unet_needs_upcast else input


def cond_cast_float(input):
    return input.float() if unet_needs_upcast else input


def autocast(disable=False):
    if disable:
        return contextlib.nullcontext()

    if dtype == torch.float32 or shared.cmd_opts.precision == "full":
        return contextlib.nullcontext()

    # The real one returns torch.autocast("cuda"): fp16 matmuls and convs with fp32 inputs or weights
    # wherever they meet.  The stand-in runs the same mixed precision on the CPU, so a half-precision
    # host (no --no-half) generates there as it would on a GPU.
    return torch.autocast("cpu", dtype=torch.float16)


def without_autocast(disable=False):
    # the real one checks CUDA's autocast only; the stand-in's autocast is the CPU's
    return torch.autocast("cpu", enabled=False) if torch.is_autocast_enabled("cpu") and not disable else contextlib.nullcontext()


class NansException(Exception):
    pass


def test_for_nans(x, where):
    if shared.cmd_opts.disable_nan_check:
        return

    if _FIRST_ELEMENT_NAN_CHECK:
        if not torch.isnan(x[(0, ) * len(x.shape)]):
            return
        all_word = ""
    else:
        if not torch.all(torch.isnan(x)).item():
            return
        all_word = "all "

    if where == "unet":
        message = f"A tensor with {all_word}NaNs was produced in Unet."

        if not shared.cmd_opts.no_half:
            message += " This could be either because there's not enough precision to represent the picture, or because your video card does not support half type. Try setting the \"Upcast cross attention layer to float32\" option in Settings > Stable Diffusion or using the --no-half commandline argument to fix this."

    elif where == "vae":
        message = f"A tensor with {all_word}NaNs was produced in VAE."

        if not shared.cmd_opts.no_half and not shared.cmd_opts.no_half_vae:
            message += " This could be because there's not enough precision to represent the picture. Try adding --no-half-vae commandline argument to fix this."
    else:
        message = f"A tensor with {all_word}NaNs was produced."

    message += " Use --disable-nan-check commandline argument to disable this check."

    raise NansException(message)
