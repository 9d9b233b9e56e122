"""Stand-in for ``sgm.modules.attention`` (sgm 45c443b3): the SDXL transformer blocks.

Class names, constructor signatures and submodule names are sgm's, so state-dict keys and
class-level patches (A1111 swaps ``CrossAttention.forward`` for its optimisations) line up.
Attention is ``scaled_dot_product_attention`` with its default scale, exactly what sgm calls.
xformers is treated as absent, so ``softmax-xformers`` falls back to ``softmax`` as sgm does
when it cannot import xformers.
"""

from __future__ import annotations

from inspect import isfunction

import torch
import torch.nn.functional as F
from torch import nn

from .diffusionmodules.util import checkpoint, zero_module

SDP_IS_AVAILABLE = True
XFORMERS_IS_AVAILABLE = False

__all__ = [
    "GEGLU",
    "BasicTransformerBlock",
    "CrossAttention",
    "FeedForward",
    "MemoryEfficientCrossAttention",
    "Normalize",
    "SpatialTransformer",
    "checkpoint",
    "default",
    "exists",
    "zero_module",
]


def exists(val):
    return val is not None


def default(val, d):
    if exists(val):
        return val
    return d() if isfunction(d) else d


class GEGLU(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim, dim_out=None, mult=4, glu=False, dropout=0.0):
        super().__init__()
        inner_dim = int(dim * mult)
        project_in = GEGLU(dim, inner_dim) if glu else nn.Sequential(nn.Linear(dim, inner_dim), nn.GELU())
        # Indices 0 / 2 are part of the checkpoint keys (ff.net.0.proj, ff.net.2).
        self.net = nn.Sequential(project_in, nn.Dropout(dropout), nn.Linear(inner_dim, default(dim_out, dim)))

    def forward(self, x):
        return self.net(x)


def Normalize(in_channels):
    return nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)


def _split_heads(t, heads):
    b, n, _ = t.shape
    return t.reshape(b, n, heads, -1).transpose(1, 2)  # b n (h d) -> b h n d


class CrossAttention(nn.Module):
    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.0, backend=None):
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = default(context_dim, query_dim)
        self.scale = dim_head**-0.5
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))
        self.backend = backend  # sgm picks an SDP kernel with it; every kernel computes the same thing

    def forward(self, x, context=None, mask=None, additional_tokens=None, n_times_crossframe_attn_in_self=0):
        if additional_tokens is not None:
            n_extra = additional_tokens.shape[1]
            x = torch.cat([additional_tokens, x], dim=1)
        q = self.to_q(x)
        context = default(context, x)
        k, v = self.to_k(context), self.to_v(context)
        if n_times_crossframe_attn_in_self:
            # every frame attends to the keys/values of the first frame of its group
            assert x.shape[0] % n_times_crossframe_attn_in_self == 0
            copies = x.shape[0] // n_times_crossframe_attn_in_self
            k = k[::n_times_crossframe_attn_in_self].repeat_interleave(copies, dim=0)
            v = v[::n_times_crossframe_attn_in_self].repeat_interleave(copies, dim=0)
        q, k, v = (_split_heads(t, self.heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # scale = dim_head ** -0.5
        b, h, n, d = out.shape
        out = out.transpose(1, 2).reshape(b, n, h * d)
        if additional_tokens is not None:
            out = out[:, n_extra:]
        return self.to_out(out)


class MemoryEfficientCrossAttention(CrossAttention):
    """sgm's xformers variant: same weights and result; here computed with SDPA."""

    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.0, **kwargs):
        super().__init__(query_dim, context_dim, heads, dim_head, dropout)
        self.dim_head = dim_head
        self.attention_op = None


class BasicTransformerBlock(nn.Module):
    ATTENTION_MODES = {  # noqa: RUF012 - a class attribute in sgm too
        "softmax": CrossAttention,
        "softmax-xformers": MemoryEfficientCrossAttention,
    }

    def __init__(
        self,
        dim,
        n_heads,
        d_head,
        dropout=0.0,
        context_dim=None,
        gated_ff=True,
        checkpoint=True,
        disable_self_attn=False,
        attn_mode="softmax",
        sdp_backend=None,
    ):
        super().__init__()
        assert attn_mode in self.ATTENTION_MODES
        if attn_mode != "softmax" and not XFORMERS_IS_AVAILABLE:
            attn_mode = "softmax"  # sgm's fallback without xformers
        attn_cls = self.ATTENTION_MODES[attn_mode]
        self.disable_self_attn = disable_self_attn
        self.attn1 = attn_cls(
            query_dim=dim,
            heads=n_heads,
            dim_head=d_head,
            dropout=dropout,
            context_dim=context_dim if disable_self_attn else None,
            backend=sdp_backend,
        )
        self.ff = FeedForward(dim, dropout=dropout, glu=gated_ff)
        self.attn2 = attn_cls(
            query_dim=dim, context_dim=context_dim, heads=n_heads, dim_head=d_head, dropout=dropout, backend=sdp_backend
        )
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.checkpoint = checkpoint

    def forward(self, x, context=None, additional_tokens=None, n_times_crossframe_attn_in_self=0):
        # sgm checkpoints only (x, context); the extra arguments are dropped on this path too.
        return checkpoint(self._forward, (x, context), self.parameters(), self.checkpoint)

    def _forward(self, x, context=None, additional_tokens=None, n_times_crossframe_attn_in_self=0):
        self_context = context if self.disable_self_attn else None
        crossframe = 0 if self.disable_self_attn else n_times_crossframe_attn_in_self
        x = (
            self.attn1(
                self.norm1(x),
                context=self_context,
                additional_tokens=additional_tokens,
                n_times_crossframe_attn_in_self=crossframe,
            )
            + x
        )
        x = self.attn2(self.norm2(x), context=context, additional_tokens=additional_tokens) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map: norm, proj_in, blocks, proj_out, residual."""

    def __init__(
        self,
        in_channels,
        n_heads,
        d_head,
        depth=1,
        dropout=0.0,
        context_dim=None,
        disable_self_attn=False,
        use_linear=False,
        attn_type="softmax",
        use_checkpoint=True,
        sdp_backend=None,
    ):
        super().__init__()
        if context_dim is None:
            context_dim = [None] * depth
        else:
            # sgm takes a list (or ListConfig) per block; anything else is one width for all blocks
            context_dim = list(context_dim) if isinstance(context_dim, list) else [context_dim]
            if len(context_dim) != depth:
                assert all(c == context_dim[0] for c in context_dim), "need homogenous context_dim"
                context_dim = depth * [context_dim[0]]
        self.in_channels = in_channels
        inner_dim = n_heads * d_head
        self.norm = Normalize(in_channels)
        if use_linear:
            self.proj_in = nn.Linear(in_channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1, stride=1, padding=0)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner_dim,
                n_heads,
                d_head,
                dropout=dropout,
                context_dim=context_dim[d],
                disable_self_attn=disable_self_attn,
                attn_mode=attn_type,
                checkpoint=use_checkpoint,
                sdp_backend=sdp_backend,
            )
            for d in range(depth)
        )
        if use_linear:
            self.proj_out = zero_module(nn.Linear(inner_dim, in_channels))
        else:
            self.proj_out = zero_module(nn.Conv2d(inner_dim, in_channels, kernel_size=1, stride=1, padding=0))
        self.use_linear = use_linear

    def forward(self, x, context=None):
        contexts = context if isinstance(context, list) else [context]
        b, _, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, -1).contiguous()  # b c h w -> b (h w) c
        if self.use_linear:
            x = self.proj_in(x)
        for i, block in enumerate(self.transformer_blocks):
            x = block(x, context=contexts[i if len(contexts) > 1 else 0])
        if self.use_linear:
            x = self.proj_out(x)
        x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()  # b (h w) c -> b c h w
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in
