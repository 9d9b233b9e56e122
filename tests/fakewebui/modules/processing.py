"""Image generation, as in A1111's modules/processing.py, cut down to txt2img.

What is kept is the order of the steps an extension can observe: ``Script.before_process`` →
override settings / model reload → ``Script.process`` → conditioning → sampling (a small Euler
sampler; per step ``on_cfg_denoiser``/``on_cfg_denoised`` and, up to v1.9, the NaN check after
``on_cfg_denoised``) → ``Script.post_sample`` (v1.8+) → NaN check of the samples (v1.10) →
``decode_latent_batch`` with the automatic fp32/bf16 VAE retry → infotext → images → postprocess.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import modules.sd_hijack
import modules.sd_models as sd_models
import modules.sd_vae as sd_vae
import modules.shared as shared
import numpy as np
import torch
from modules import (
    _standin,
    devices,
    errors,
    extra_networks,
    images,
    script_callbacks,
    scripts,
    sd_unet,
)
from modules.sd_hijack import model_hijack
from modules.sd_samplers_common import approximation_indexes, decode_first_stage, images_tensor_to_samples  # noqa: F401
from modules.shared import cmd_opts, opts, state  # noqa: F401
from PIL import Image

if _standin.at_least("1.8.0"):
    from modules import infotext_utils
else:
    from modules import generation_parameters_copypaste

    infotext_utils = generation_parameters_copypaste

# some of those options should not be changed at all because they would break the model, so I removed them from options.
opt_C = 4
opt_f = 8


@dataclass(repr=False)
class StableDiffusionProcessing:
    sd_model: object = None
    outpath_samples: str = None
    outpath_grids: str = None
    prompt: str = ""
    prompt_for_display: str = None
    negative_prompt: str = ""
    styles: list[str] = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    seed_enable_extras: bool = True
    sampler_name: str = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool = None
    tiling: bool = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    extra_generation_params: dict[str, Any] = None
    overlay_images: list = None
    eta: float = None
    do_not_reload_embeddings: bool = False
    denoising_strength: float = None if _standin.at_least("1.7.0") else 0
    override_settings: dict[str, Any] = None
    override_settings_restore_afterwards: bool = True
    sampler_index: int = None
    refiner_checkpoint: str = None
    refiner_switch_at: float = None
    disable_extra_networks: bool = False

    scripts_value: scripts.ScriptRunner = field(default=None, init=False)
    script_args_value: list = field(default=None, init=False)

    comments: dict = None
    is_using_inpainting_conditioning: bool = field(default=False, init=False)

    c: Any = field(default=None, init=False)
    uc: Any = field(default=None, init=False)

    all_prompts: list = field(default=None, init=False)
    all_negative_prompts: list = field(default=None, init=False)
    all_seeds: list = field(default=None, init=False)
    all_subseeds: list = field(default=None, init=False)
    iteration: int = field(default=0, init=False)
    main_prompt: str = field(default=None, init=False)
    main_negative_prompt: str = field(default=None, init=False)

    prompts: list = field(default=None, init=False)
    negative_prompts: list = field(default=None, init=False)
    seeds: list = field(default=None, init=False)
    subseeds: list = field(default=None, init=False)

    user: str = field(default=None, init=False)

    sd_model_name: str = field(default=None, init=False)
    sd_model_hash: str = field(default=None, init=False)
    sd_vae_name: str = field(default=None, init=False)
    sd_vae_hash: str = field(default=None, init=False)

    def __post_init__(self):
        self.comments = {}
        if self.styles is None:
            self.styles = []
        self.extra_generation_params = self.extra_generation_params or {}
        self.override_settings = self.override_settings or {}
        self.script_args = self.script_args or {}
        self.refiner_checkpoint_info = None

    @property
    def sd_model(self):  # noqa: F811 - the real class also shadows its dataclass field with this property
        return shared.sd_model

    @sd_model.setter
    def sd_model(self, value):
        pass

    @property
    def scripts(self):
        return self.scripts_value

    @scripts.setter
    def scripts(self, value):
        self.scripts_value = value

    @property
    def script_args(self):
        return self.script_args_value

    @script_args.setter
    def script_args(self, value):
        self.script_args_value = value

    def comment(self, text):
        self.comments[text] = 1

    def get_token_merging_ratio(self, for_hr=False):
        return 0

    def setup_prompts(self):
        if isinstance(self.prompt, list):
            self.all_prompts = self.prompt
        else:
            self.all_prompts = self.batch_size * self.n_iter * [self.prompt]

        if isinstance(self.negative_prompt, list):
            self.all_negative_prompts = self.negative_prompt
        else:
            self.all_negative_prompts = [self.negative_prompt] * len(self.all_prompts)

        self.main_prompt = self.all_prompts[0]
        self.main_negative_prompt = self.all_negative_prompts[0]

    def setup_conds(self):
        self.c = self.sd_model.get_learned_conditioning(_Conditioning(self.prompts, width=self.width, height=self.height))
        self.uc = self.sd_model.get_learned_conditioning(_Conditioning(self.negative_prompts, width=self.width, height=self.height, is_negative_prompt=True))

    def save_samples(self) -> bool:
        return self.outpath_samples is not None and not self.do_not_save_samples


class _Conditioning(list):
    """prompt_parser.SdConditioning: a list of prompts that knows the picture size"""

    def __init__(self, prompts, width, height, is_negative_prompt=False):
        super().__init__(prompts)
        self.width = width
        self.height = height
        self.is_negative_prompt = is_negative_prompt


class Processed:
    def __init__(self, p: StableDiffusionProcessing, images_list, seed=-1, info="", subseed=None, all_prompts=None, all_negative_prompts=None, all_seeds=None, all_subseeds=None, index_of_first_image=0, infotexts=None, comments=""):
        self.images = images_list
        self.prompt = p.prompt
        self.negative_prompt = p.negative_prompt
        self.seed = seed
        self.subseed = subseed
        self.info = info
        self.comments = "".join(f"{comment}\n" for comment in p.comments)
        self.width = p.width
        self.height = p.height
        self.steps = p.steps
        self.batch_size = p.batch_size
        self.sd_model_name = p.sd_model_name
        self.sd_model_hash = p.sd_model_hash
        self.extra_generation_params = p.extra_generation_params
        self.index_of_first_image = index_of_first_image
        self.all_prompts = all_prompts or p.all_prompts or [self.prompt]
        self.all_negative_prompts = all_negative_prompts or p.all_negative_prompts or [self.negative_prompt]
        self.all_seeds = all_seeds or p.all_seeds or [self.seed]
        self.all_subseeds = all_subseeds or p.all_subseeds or [self.subseed]
        self.infotexts = infotexts or [info]

    def infotext(self, p: StableDiffusionProcessing, index):
        return create_infotext(p, self.all_prompts, self.all_seeds, self.all_subseeds, comments=[], position_in_batch=index % self.batch_size, iteration=index // self.batch_size)


class DecodedSamples(list):
    already_decoded = True


def decode_latent_batch(model, batch, target_device=None, check_for_nans=False):
    samples = DecodedSamples()

    if check_for_nans and _standin.at_least("1.10.0"):
        devices.test_for_nans(batch, "unet")

    for i in range(batch.shape[0]):
        sample = decode_first_stage(model, batch[i:i + 1])[0]

        if check_for_nans:
            try:
                devices.test_for_nans(sample, "vae")
            except devices.NansException as e:
                if _standin.at_least("1.8.0") and shared.opts.auto_vae_precision_bfloat16:
                    autofix_dtype = torch.bfloat16
                    autofix_dtype_text = "bfloat16"
                elif shared.opts.auto_vae_precision:
                    autofix_dtype = torch.float32
                    autofix_dtype_text = "32-bit float"
                else:
                    raise e

                if devices.dtype_vae == autofix_dtype:
                    raise e

                errors.print_error_explanation(
                    "A tensor with all NaNs was produced in VAE.\n"
                    f"Web UI will now convert VAE into {autofix_dtype_text} and retry.\n"
                )

                devices.dtype_vae = autofix_dtype
                model.first_stage_model.to(devices.dtype_vae)
                batch = batch.to(devices.dtype_vae)

                sample = decode_first_stage(model, batch[i:i + 1])[0]

        if target_device is not None:
            sample = sample.to(target_device)

        samples.append(sample)

    return samples


def get_fixed_seed(seed):
    if seed == '' or seed is None:
        seed = -1
    elif isinstance(seed, str):
        try:
            seed = int(seed)
        except Exception:
            seed = -1

    if seed == -1:
        return int(random.randrange(4294967294))

    return seed


def fix_seed(p):
    p.seed = get_fixed_seed(p.seed)
    p.subseed = get_fixed_seed(p.subseed)


def program_version():
    from modules import launch_utils
    return launch_utils.git_tag()


def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0, use_main_prompt=False, index=None, all_negative_prompts=None):
    if use_main_prompt:
        index = 0
    elif index is None:
        index = position_in_batch + iteration * p.batch_size

    if all_negative_prompts is None:
        all_negative_prompts = p.all_negative_prompts

    clip_skip = getattr(p, 'clip_skip', opts.CLIP_stop_at_last_layers)

    if _standin.at_least("1.7.0"):
        vae_hash_shown, vae_name_shown = opts.add_vae_hash_to_info, opts.add_vae_name_to_info
    else:  # v1.6 shows the VAE fields under the model options
        vae_hash_shown, vae_name_shown = opts.add_model_hash_to_info, opts.add_model_name_to_info

    generation_params = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "CFG scale": p.cfg_scale,
        "Seed": p.all_seeds[0] if use_main_prompt else all_seeds[index],
        "Size": f"{p.width}x{p.height}",
        "Model hash": p.sd_model_hash if opts.add_model_hash_to_info else None,
        "Model": p.sd_model_name if opts.add_model_name_to_info else None,
        "VAE hash": p.sd_vae_hash if vae_hash_shown else None,
        "VAE": p.sd_vae_name if vae_name_shown else None,
        "Denoising strength": p.extra_generation_params.get("Denoising strength") if _standin.at_least("1.8.0") else getattr(p, 'denoising_strength', None),
        "Clip skip": None if clip_skip <= 1 else clip_skip,
        "RNG": opts.randn_source if opts.randn_source != "GPU" else None,
        "Tiling": "True" if p.tiling else None,
        **p.extra_generation_params,
        "Version": program_version() if opts.add_version_to_infotext else None,
        "User": p.user if opts.add_user_name_to_info else None,
    }

    if _standin.at_least("1.9.0"):  # per-image lists and late-bound callables
        for key, value in generation_params.items():
            try:
                if isinstance(value, list):
                    generation_params[key] = value[index]
                elif callable(value):
                    generation_params[key] = value(**locals())
            except Exception:
                errors.report(f'Error creating infotext for key "{key}"', exc_info=True)
                generation_params[key] = None

    generation_params_text = ", ".join([k if k == v else f'{k}: {infotext_utils.quote(v)}' for k, v in generation_params.items() if v is not None])

    prompt_text = p.main_prompt if use_main_prompt else all_prompts[index]
    negative_prompt = p.main_negative_prompt if use_main_prompt else all_negative_prompts[index]
    negative_prompt_text = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""

    return f"{prompt_text}{negative_prompt_text}\n{generation_params_text}".strip()


def process_images(p: StableDiffusionProcessing) -> Processed:
    if p.scripts is not None:
        p.scripts.before_process(p)

    if _standin.at_least("1.7.0"):
        stored_opts = {k: opts.data[k] if k in opts.data else opts.get_default(k) for k in p.override_settings.keys() if k in opts.data}
    else:  # v1.6: KeyError for an overridden option that is not in opts.data (e.g. one added by add_option)
        stored_opts = {k: opts.data[k] for k in p.override_settings.keys()}

    try:
        # if no checkpoint override or the override checkpoint can't be found, remove override entry and load opts checkpoint
        if sd_models.checkpoint_aliases.get(p.override_settings.get('sd_model_checkpoint')) is None:
            p.override_settings.pop('sd_model_checkpoint', None)
            sd_models.reload_model_weights()

        for k, v in p.override_settings.items():
            opts.set(k, v, is_api=True, run_callbacks=False)

            if k == 'sd_model_checkpoint':
                sd_models.reload_model_weights()

            if k == 'sd_vae':
                sd_vae.reload_vae_weights()

        sd_models.apply_token_merging(p.sd_model, p.get_token_merging_ratio())

        res = process_images_inner(p)

    finally:
        sd_models.apply_token_merging(p.sd_model, 0)

        # restore opts to original state
        if p.override_settings_restore_afterwards:
            for k, v in stored_opts.items():
                setattr(opts, k, v)

                if k == 'sd_vae':
                    sd_vae.reload_vae_weights()

    return res


def process_images_inner(p: StableDiffusionProcessing) -> Processed:
    """this is the main loop that both txt2img and img2img use; it calls func_init once inside all the scopes and func_sample once per batch"""

    devices.torch_gc()

    seed = get_fixed_seed(p.seed)
    subseed = get_fixed_seed(p.subseed)

    if p.tiling is None:
        p.tiling = opts.tiling

    p.sd_model_name = shared.sd_model.sd_checkpoint_info.name_for_extra
    p.sd_model_hash = shared.sd_model.sd_model_hash
    p.sd_vae_name = sd_vae.get_loaded_vae_name()
    p.sd_vae_hash = sd_vae.get_loaded_vae_hash()

    modules.sd_hijack.model_hijack.apply_circular(p.tiling)
    modules.sd_hijack.model_hijack.clear_comments()

    p.setup_prompts()

    p.all_seeds = [int(seed) + (x if p.subseed_strength == 0 else 0) for x in range(len(p.all_prompts))]
    p.all_subseeds = [int(subseed) + x for x in range(len(p.all_prompts))]

    if p.scripts is not None:
        p.scripts.process(p)

    infotexts = []
    output_images = []
    with torch.no_grad(), p.sd_model.ema_scope():
        sd_unet.apply_unet()

        for n in range(p.n_iter):
            p.iteration = n

            sd_models.reload_model_weights()  # model can be changed for example by refiner

            p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.negative_prompts = p.all_negative_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.seeds = p.all_seeds[n * p.batch_size:(n + 1) * p.batch_size]
            p.subseeds = p.all_subseeds[n * p.batch_size:(n + 1) * p.batch_size]

            if not p.disable_extra_networks:
                extra_networks.activate(p, {})

            p.setup_conds()

            p.extra_generation_params.update(model_hijack.extra_generation_params)

            for comment in model_hijack.comments:
                p.comment(comment)

            with devices.without_autocast() if devices.unet_needs_upcast else devices.autocast():
                samples_ddim = p.sample(conditioning=p.c, unconditional_conditioning=p.uc, seeds=p.seeds, subseeds=p.subseeds, subseed_strength=p.subseed_strength, prompts=p.prompts)

            if p.scripts is not None and _standin.at_least("1.8.0"):
                ps = scripts.PostSampleArgs(samples_ddim)
                p.scripts.post_sample(p, ps)
                samples_ddim = ps.samples

            if _standin.at_least("1.10.0"):
                devices.test_for_nans(samples_ddim, "unet")

            if opts.sd_vae_decode_method != 'Full':
                p.extra_generation_params['VAE Decoder'] = opts.sd_vae_decode_method
            x_samples_ddim = decode_latent_batch(p.sd_model, samples_ddim, target_device=devices.cpu, check_for_nans=True)

            x_samples_ddim = torch.stack(x_samples_ddim).float()
            x_samples_ddim = torch.clamp((x_samples_ddim + 1.0) / 2.0, min=0.0, max=1.0)

            del samples_ddim

            state.nextjob()

            def infotext(index=0, use_main_prompt=False):
                return create_infotext(p, p.prompts, p.seeds, p.subseeds, use_main_prompt=use_main_prompt, index=index, all_negative_prompts=p.negative_prompts)

            for i, x_sample in enumerate(x_samples_ddim):
                p.batch_index = i

                x_sample = 255. * np.moveaxis(x_sample.cpu().numpy(), 0, 2)
                x_sample = x_sample.astype(np.uint8)

                image = Image.fromarray(x_sample)

                if p.scripts is not None:
                    pp = scripts.PostprocessImageArgs(image)
                    p.scripts.postprocess_image(p, pp)
                    image = pp.image

                text = infotext(i)
                infotexts.append(text)
                image.info["parameters"] = text
                output_images.append(image)

                if p.save_samples():
                    images.save_image(image, p.outpath_samples, "", p.seeds[i], p.prompts[i], "png", info=text, p=p)

    res = Processed(
        p,
        images_list=output_images,
        seed=p.all_seeds[0],
        info=infotexts[0] if infotexts else "",
        subseed=p.all_subseeds[0],
        index_of_first_image=0,
        infotexts=infotexts,
    )

    if p.scripts is not None:
        p.scripts.postprocess(p, res)

    return res


def _sigmas(sd_model, steps):
    """Timesteps and k-diffusion sigmas of an evenly spaced schedule over the model's 1000 steps."""
    alphas_cumprod = sd_model.alphas_cumprod.float()
    all_sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
    timesteps = torch.linspace(len(all_sigmas) - 1, 0, steps).round().long()
    return timesteps, torch.cat([all_sigmas[timesteps], torch.zeros(1)])


def _cat_conds(c, uc):
    return {key: torch.cat([c[key], uc[key]]) for key in c}


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    denoising_strength: float = 0.75
    hr_scale: float = 2.0
    hr_upscaler: str = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str = None
    hr_sampler_name: str = None
    hr_prompt: str = ''
    hr_negative_prompt: str = ''

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        """Euler with classifier-free guidance, shaped like the host's CFGDenoiser (callbacks, NaN checks)."""
        model = self.sd_model
        generator = torch.Generator().manual_seed(int(seeds[0]))
        x = torch.randn((len(seeds), opt_C, self.height // opt_f, self.width // opt_f), generator=generator).to(devices.device)

        if self.scripts is not None and _standin.at_least("1.10.0"):
            self.scripts.process_before_every_sampling(p=self, x=x, noise=x, c=conditioning, uc=unconditional_conditioning)

        timesteps, sigmas = _sigmas(model, self.steps)
        x = x * sigmas[0]
        cond_in = _cat_conds(conditioning, unconditional_conditioning)
        inner_model = model

        for step, t in enumerate(timesteps):
            sigma = sigmas[step]
            params = script_callbacks.CFGDenoiserParams(x, None, sigma, step, self.steps, conditioning['crossattn'], unconditional_conditioning['crossattn'])
            script_callbacks.cfg_denoiser_callback(params)
            x = params.x

            x_in = torch.cat([x, x]) / (sigma ** 2 + 1) ** 0.5
            t_in = torch.full((x_in.shape[0],), int(t), dtype=torch.long)
            eps = model.apply_model(x_in.to(devices.dtype_unet), t_in, cond_in).float()
            x_out = torch.cat([x, x]) - eps * sigma  # denoised prediction for cond and uncond

            denoised_params = script_callbacks.CFGDenoisedParams(x_out, step, self.steps, inner_model)
            script_callbacks.cfg_denoised_callback(denoised_params)

            if not _standin.at_least("1.10.0"):
                devices.test_for_nans(x_out, "unet")

            cond_out, uncond_out = x_out.chunk(2)
            denoised = uncond_out + (cond_out - uncond_out) * self.cfg_scale

            x = x + (x - denoised) / sigma * (sigmas[step + 1] - sigma)

        return x
