"""Stand-in for ``sgm.modules.diffusionmodules.util``: the layer factories the UNet is built from.

Same names and the same math as sgm 45c443b3, so state-dict keys and outputs match.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.utils.checkpoint


def checkpoint(func, inputs, params, flag):
    """Run ``func(*inputs)``; with ``flag`` and autograd on, recompute activations in backward.

    sgm has its own autograd Function for this; torch's checkpoint gives the same values, and in
    inference (no grad) both simply call ``func``.
    """
    if flag and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(func, *inputs, use_reentrant=False)
    return func(*inputs)


def timestep_embedding(timesteps, dim, max_period=10000, repeat_only=False):
    """Sinusoidal embedding ``[cos(t·f), sin(t·f)]`` with f = max_period^(-i/half), as in sgm."""
    if repeat_only:
        return timesteps[:, None].repeat(1, dim)
    half = dim // 2
    # Same operation order as sgm (scale, then divide) so fp32 rounding is identical.
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    freqs = freqs.to(device=timesteps.device)
    angles = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:  # odd widths get a zero column, like sgm
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def zero_module(module):
    """Zero every parameter of ``module`` in place and return it."""
    for parameter in module.parameters():
        parameter.detach().zero_()
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 and cast back (sgm's fp16-safe normalisation).

    The real one calls ``super().forward(x.float())`` and relies on CUDA's autocast, which runs
    ``group_norm`` in fp32 with the weights cast too; the CPU's autocast does not, so the stand-in
    casts the weights itself (a no-op for an fp32 model).
    """

    def forward(self, x):
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return nn.functional.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


def normalization(channels):
    return GroupNorm32(32, channels)


def _by_dims(kinds, dims):
    if dims not in kinds:
        raise ValueError(f"unsupported dimensions: {dims}")
    return kinds[dims]


def conv_nd(dims, *args, **kwargs):
    return _by_dims({1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}, dims)(*args, **kwargs)


def avg_pool_nd(dims, *args, **kwargs):
    return _by_dims({1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}, dims)(*args, **kwargs)


def linear(*args, **kwargs):
    return nn.Linear(*args, **kwargs)
