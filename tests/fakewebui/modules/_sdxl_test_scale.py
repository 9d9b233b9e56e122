"""The SDXL model object of the stand-in, at test scale (targets of configs/sd_xl_base.yaml).

Real SDXL is sgm's ``DiffusionEngine``: ``.model.diffusion_model`` (the UNet, built from the
config's ``network_config`` by an importlib lookup of its ``target``), ``.conditioner`` (CLIP-L,
OpenCLIP-bigG and three size embedders), ``.first_stage_model`` (the VAE) and ``.denoiser``.
These classes keep that structure and the state-dict key names the host and extensions look at,
with narrow widths so a CPU builds and runs one in well under a second.  Linear/Conv2d layers are
real ones, so the host's meta-device construction and zero-filling apply to them unchanged.
"""

from __future__ import annotations

import contextlib
import importlib
import math

import torch
from torch import nn


def get_obj_from_str(string):
    module, cls = string.rsplit(".", 1)
    return getattr(importlib.import_module(module, package=None), cls)


def instantiate_from_config(config):
    """sgm.util.instantiate_from_config: import ``target`` and call it with ``params``."""
    if "target" not in config:
        raise KeyError("Expected key `target` to instantiate.")
    return get_obj_from_str(config["target"])(**config.get("params", dict()))


def timestep_embedding(timesteps, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def tokenize(texts, vocab_size, max_length):
    """Deterministic toy tokenizer: one token per byte (BOS 0, EOS/pad 1)."""
    rows = []
    for text in texts:
        ids = [0] + [2 + byte % (vocab_size - 2) for byte in text.encode()][: max_length - 2] + [1]
        rows.append(ids + [1] * (max_length - len(ids)))
    return torch.tensor(rows, dtype=torch.long)


# -- denoiser (only what sd_models_xl.extend_sdxl inspects) ----------------------------------------


class EpsScaling:
    pass


class VScaling:
    pass


class DiscreteDenoiser(nn.Module):
    def __init__(self, num_idx=1000, scaling_config=None, **_):
        super().__init__()
        self.num_idx = num_idx
        self.scaling = instantiate_from_config(scaling_config) if scaling_config else EpsScaling()


# -- conditioner -----------------------------------------------------------------------------------


class _CLIPTextModel(nn.Module):
    """``transformer.text_model.*`` of transformers' CLIPTextModel, one narrow layer deep."""

    def __init__(self, width, vocab_size, max_length):
        super().__init__()
        text_model = nn.Module()
        text_model.embeddings = nn.Module()
        text_model.embeddings.token_embedding = nn.Embedding(vocab_size, width)
        text_model.embeddings.position_embedding = nn.Embedding(max_length, width)
        text_model.encoder = nn.Module()
        text_model.encoder.layers = nn.ModuleList([nn.Module()])
        text_model.encoder.layers[0].mlp = nn.Module()
        text_model.encoder.layers[0].mlp.fc1 = nn.Linear(width, width)
        text_model.final_layer_norm = nn.LayerNorm(width)
        self.text_model = text_model

    def forward(self, tokens):
        m = self.text_model
        x = m.embeddings.token_embedding(tokens) + m.embeddings.position_embedding.weight[: tokens.shape[1]]
        return x + m.encoder.layers[0].mlp.fc1(x)  # layer "hidden": the last hidden state, no final norm


class FrozenCLIPEmbedder(nn.Module):
    """CLIP-L for SDXL: keys ``conditioner.embedders.0.transformer.text_model.*``."""

    def __init__(self, width=768, vocab_size=49408, max_length=77, layer="hidden", layer_idx=11, **_):
        super().__init__()
        self.max_length = max_length
        self.vocab_size = vocab_size
        self.transformer = _CLIPTextModel(width, vocab_size, max_length)

    def forward(self, text):
        return self.transformer(tokenize(text, self.vocab_size, self.max_length))


class _OpenCLIPTextModel(nn.Module):
    def __init__(self, width, vocab_size, max_length):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(max_length, width))
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList([nn.Module()])
        self.transformer.resblocks[0].mlp = nn.Module()
        self.transformer.resblocks[0].mlp.c_fc = nn.Linear(width, width)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, width))
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width ** -0.5)


class FrozenOpenCLIPEmbedder2(nn.Module):
    """OpenCLIP-bigG for SDXL: keys ``conditioner.embedders.1.model.*`` (``ln_final`` marks SDXL)."""

    def __init__(self, width=1280, vocab_size=49408, max_length=77, arch="ViT-bigG-14", version="laion2b_s39b_b160k", freeze=True, layer="penultimate", always_return_pooled=True, legacy=False, **_):
        super().__init__()
        self.max_length = max_length
        self.vocab_size = vocab_size
        self.model = _OpenCLIPTextModel(width, vocab_size, max_length)

    def forward(self, text):
        tokens = tokenize(text, self.vocab_size, self.max_length)
        m = self.model
        x = m.token_embedding(tokens) + m.positional_embedding[: tokens.shape[1]]
        x = x + m.transformer.resblocks[0].mlp.c_fc(x)
        eos = tokens.eq(1).int().argmax(dim=-1)
        pooled = m.ln_final(x)[torch.arange(x.shape[0]), eos] @ m.text_projection
        return x, pooled


class ConcatTimestepEmbedderND(nn.Module):
    """Embeds each number of a (B, N) tensor with ``outdim`` sinusoids: (B, N * outdim)."""

    def __init__(self, outdim):
        super().__init__()
        self.outdim = outdim

    def forward(self, x):
        b, dims = x.shape
        emb = timestep_embedding(x.reshape(-1), dim=self.outdim)
        return emb.reshape(b, dims * self.outdim)


class GeneralConditioner(nn.Module):
    OUTPUT_DIM2KEYS = {2: "vector", 3: "crossattn"}
    KEY2CATDIM = {"vector": 1, "crossattn": 2}

    def __init__(self, emb_models):
        super().__init__()
        embedders = []
        for embconfig in emb_models:
            embedder = instantiate_from_config(embconfig)
            embedder.is_trainable = embconfig.get("is_trainable", False)
            embedder.ucg_rate = embconfig.get("ucg_rate", 0.0)
            embedder.input_key = embconfig["input_key"]
            embedders.append(embedder)
        self.embedders = nn.ModuleList(embedders)

    def forward(self, batch, force_zero_embeddings=None):
        output = {}
        force_zero_embeddings = force_zero_embeddings or []
        for embedder in self.embedders:
            with torch.no_grad():
                emb_out = embedder(batch[embedder.input_key])
            if not isinstance(emb_out, (list, tuple)):
                emb_out = [emb_out]
            for emb in emb_out:
                out_key = self.OUTPUT_DIM2KEYS[emb.dim()]
                if embedder.input_key in force_zero_embeddings:
                    emb = torch.zeros_like(emb)
                if out_key in output:
                    output[out_key] = torch.cat((output[out_key], emb), self.KEY2CATDIM[out_key])
                else:
                    output[out_key] = emb
        return output


# -- first stage (VAE) -----------------------------------------------------------------------------


def _conv(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class Encoder(nn.Module):
    """``encoder.conv_in`` → ``down.{i}.downsample.conv`` (stride 2) → ``norm_out`` → ``conv_out``."""

    def __init__(self, *, ch, ch_mult, in_channels, z_channels, double_z=True, **_):
        super().__init__()
        self.conv_in = _conv(in_channels, ch)
        self.down = nn.ModuleList()
        for _level in range(len(ch_mult) - 1):
            block = nn.Module()
            block.downsample = nn.Module()
            block.downsample.conv = _conv(ch, ch, stride=2)
            self.down.append(block)
        self.norm_out = nn.GroupNorm(num_groups=4, num_channels=ch, eps=1e-6, affine=True)
        self.conv_out = _conv(ch, 2 * z_channels if double_z else z_channels)

    def forward(self, x):
        h = self.conv_in(x)
        for block in self.down:
            h = nn.functional.silu(block.downsample.conv(h))
        return self.conv_out(nn.functional.silu(self.norm_out(h)))


class ResnetBlock(nn.Module):
    """``conv1`` and ``conv2`` with a skip (the real block also has norms): zero weights pass ``x`` through."""

    def __init__(self, ch):
        super().__init__()
        self.conv1 = _conv(ch, ch)
        self.conv2 = _conv(ch, ch)

    def forward(self, x):
        return x + self.conv2(nn.functional.silu(self.conv1(nn.functional.silu(x))))


class Decoder(nn.Module):
    """``decoder.conv_in`` → ``mid.block_1`` → per level ``up.{i}.block.{0..num_res_blocks}`` and
    ``up.{i}.upsample.conv`` (after 2x nearest) → ``norm_out`` → ``conv_out``.

    The real decoder's key names where tools look for them (``mid.block_1.conv1`` tells an LDM VAE
    file, ``up.0.block.2.conv2`` is in the VAE fingerprint), at one width.
    """

    def __init__(self, *, ch, ch_mult, out_ch, z_channels, num_res_blocks=2, **_):
        super().__init__()
        self.conv_in = _conv(z_channels, ch)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(ch)
        self.up = nn.ModuleList()
        for _level in range(len(ch_mult) - 1):
            block = nn.Module()
            block.block = nn.ModuleList(ResnetBlock(ch) for _ in range(num_res_blocks + 1))
            block.upsample = nn.Module()
            block.upsample.conv = _conv(ch, ch)
            self.up.append(block)
        self.norm_out = nn.GroupNorm(num_groups=4, num_channels=ch, eps=1e-6, affine=True)
        self.conv_out = _conv(ch, out_ch)

    def forward(self, z):
        h = self.mid.block_1(self.conv_in(z))
        for level in self.up:
            for block in level.block:
                h = block(h)
            h = nn.functional.silu(level.upsample.conv(nn.functional.interpolate(h, scale_factor=2.0, mode="nearest")))
        return self.conv_out(nn.functional.silu(self.norm_out(h)))


class AutoencoderKLInferenceWrapper(nn.Module):
    def __init__(self, embed_dim, ddconfig, monitor=None, lossconfig=None, **_):
        super().__init__()
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        z_channels = ddconfig["z_channels"]
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)

    @property
    def dtype(self):
        return self.post_quant_conv.weight.dtype

    def encode(self, x):
        # the real wrapper returns a sample of the posterior; the stand-in returns its mean (deterministic)
        mean, _logvar = torch.chunk(self.quant_conv(self.encoder(x)), 2, dim=1)
        return mean

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))


# -- the model -------------------------------------------------------------------------------------


class OpenAIWrapper(nn.Module):
    def __init__(self, diffusion_model, compile_model=False):
        super().__init__()
        self.diffusion_model = diffusion_model

    def forward(self, x, t, c, **kwargs):
        x = torch.cat((x, c.get("concat", torch.Tensor([]).type_as(x))), dim=1)
        return self.diffusion_model(x, timesteps=t, context=c.get("crossattn", None), y=c.get("vector", None), **kwargs)


class DiffusionEngine(nn.Module):
    def __init__(self, network_config, denoiser_config, first_stage_config, conditioner_config=None, sampler_config=None, optimizer_config=None, scheduler_config=None, loss_fn_config=None, network_wrapper=None, ckpt_path=None, use_ema=False, ema_decay_rate=0.9999, scale_factor=1.0, disable_first_stage_autocast=False, input_key="jpg", log_keys=None, no_cond_log=False, compile_model=False):
        super().__init__()
        self.log_keys = log_keys
        self.input_key = input_key
        model = instantiate_from_config(network_config)
        self.model = OpenAIWrapper(model, compile_model=compile_model)
        self.denoiser = instantiate_from_config(denoiser_config)
        self.sampler = None
        self.conditioner = instantiate_from_config(conditioner_config)
        first_stage = instantiate_from_config(first_stage_config).eval()
        for param in first_stage.parameters():
            param.requires_grad = False
        self.first_stage_model = first_stage
        self.use_ema = use_ema
        self.scale_factor = scale_factor
        self.disable_first_stage_autocast = disable_first_stage_autocast
        self.no_cond_log = no_cond_log

    @contextlib.contextmanager
    def ema_scope(self, context=None):
        yield None

    @torch.no_grad()
    def decode_first_stage(self, z):
        z = 1.0 / self.scale_factor * z
        return self.first_stage_model.decode(z)

    @torch.no_grad()
    def encode_first_stage(self, x):
        z = self.first_stage_model.encode(x)
        return self.scale_factor * z

    def forward(self, x, batch):
        raise NotImplementedError("training is not part of the stand-in")
