"""SDXL glue, as in A1111's modules/sd_models_xl.py: patches the engine class and extends a model."""

import torch
from modules import _sdxl_test_scale, _standin, devices, shared

_DiffusionEngine = _sdxl_test_scale.DiffusionEngine  # real: sgm.models.diffusion.DiffusionEngine


def get_learned_conditioning(self, batch):
    for embedder in self.conditioner.embedders:
        embedder.ucg_rate = 0.0

    width = getattr(batch, 'width', 1024) or 1024
    height = getattr(batch, 'height', 1024) or 1024
    is_negative_prompt = getattr(batch, 'is_negative_prompt', False)
    aesthetic_score = shared.opts.sdxl_refiner_low_aesthetic_score if is_negative_prompt else shared.opts.sdxl_refiner_high_aesthetic_score

    devices_args = dict(device=devices.device, dtype=devices.dtype)

    sdxl_conds = {
        "txt": batch,
        "original_size_as_tuple": torch.tensor([height, width], **devices_args).repeat(len(batch), 1),
        "crop_coords_top_left": torch.tensor([shared.opts.sdxl_crop_top, shared.opts.sdxl_crop_left], **devices_args).repeat(len(batch), 1),
        "target_size_as_tuple": torch.tensor([height, width], **devices_args).repeat(len(batch), 1),
        "aesthetic_score": torch.tensor([aesthetic_score], **devices_args).repeat(len(batch), 1),
    }

    force_zero_negative_prompt = is_negative_prompt and all(x == '' for x in batch)
    c = self.conditioner(sdxl_conds, force_zero_embeddings=['txt'] if force_zero_negative_prompt else [])

    return c


def apply_model(self, x, t, cond):
    if getattr(self, "is_sdxl_inpaint", False):  # v1.10 only sets the flag
        x = torch.cat([x] + cond['c_concat'], dim=1)

    return self.model(x, t, cond)


def get_first_stage_encoding(self, x):  # SDXL's encode_first_stage does everything so get_first_stage_encoding is just there for compatibility
    return x


_DiffusionEngine.get_learned_conditioning = get_learned_conditioning
_DiffusionEngine.apply_model = apply_model
_DiffusionEngine.get_first_stage_encoding = get_first_stage_encoding


def _legacy_ddpm_alphas_cumprod(linear_start=0.00085, linear_end=0.0120, num_timesteps=1000):
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, num_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def extend_sdxl(model):
    """this adds a bunch of parameters to make SDXL model look a bit more like SD1.5 to the rest of the codebase."""

    dtype = next(model.model.diffusion_model.parameters()).dtype
    model.model.diffusion_model.dtype = dtype
    model.model.conditioning_key = 'crossattn'
    model.cond_stage_key = 'txt'
    # model.cond_stage_model will be set in sd_hijack

    model.parameterization = "v" if isinstance(model.denoiser.scaling, _sdxl_test_scale.VScaling) else "eps"

    alphas_dtype = torch.float32 if _standin.at_least("1.8.0") else dtype
    model.alphas_cumprod = torch.asarray(_legacy_ddpm_alphas_cumprod(), device=devices.device, dtype=alphas_dtype)

    model.conditioner.wrapped = torch.nn.Module()
