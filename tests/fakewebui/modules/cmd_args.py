"""The command-line flags an extension reads, with the real names, defaults and versions."""

import argparse
import os

from modules import _standin
from modules.paths_internal import _normalized_filepath, data_path, models_path, script_path, sd_model_file

# From v1.8 most path flags are made absolute; before that they were plain strings.
_path_type = _normalized_filepath if _standin.at_least("1.8.0") else str

parser = argparse.ArgumentParser()

parser.add_argument("-f", action='store_true', help=argparse.SUPPRESS)
parser.add_argument("--update-all-extensions", action='store_true')
parser.add_argument("--skip-python-version-check", action='store_true')
parser.add_argument("--skip-torch-cuda-test", action='store_true')
parser.add_argument("--reinstall-torch", action='store_true')
parser.add_argument("--skip-version-check", action='store_true')
parser.add_argument("--skip-prepare-environment", action='store_true', help="launch.py argument: skip all environment preparation")
parser.add_argument("--skip-install", action='store_true', help="launch.py argument: skip installation of packages")
parser.add_argument("--dump-sysinfo", action='store_true')
parser.add_argument("--loglevel", type=str, default=None)
parser.add_argument("--do-not-download-clip", action='store_true', help="do not download CLIP model even if it's not included in the checkpoint")
parser.add_argument("--data-dir", type=_path_type, default=os.path.dirname(os.path.dirname(os.path.realpath(__file__))), help="base path where all user data is stored")
if _standin.at_least("1.10.0"):
    parser.add_argument("--models-dir", type=_normalized_filepath, default=None, help="base path where models are stored; overrides --data-dir")
parser.add_argument("--config", type=_path_type, default=os.path.join(script_path, "configs/v1-inference.yaml"))
parser.add_argument("--ckpt", type=_path_type, default=sd_model_file, help="path to checkpoint of stable diffusion model; if specified, this checkpoint will be added to the list of checkpoints and loaded",)
parser.add_argument("--ckpt-dir", type=_path_type, default=None, help="Path to directory with stable diffusion checkpoints")
parser.add_argument("--vae-dir", type=_path_type, default=None, help="Path to directory with VAE files")
parser.add_argument("--no-half", action='store_true', help="do not switch the model to 16-bit floats")
parser.add_argument("--no-half-vae", action='store_true', help="do not switch the VAE model to 16-bit floats")
parser.add_argument("--no-progressbar-hiding", action='store_true')
parser.add_argument("--embeddings-dir", type=_path_type, default=os.path.join(data_path, 'embeddings'))
parser.add_argument("--hypernetwork-dir", type=_path_type, default=os.path.join(models_path, 'hypernetworks'))
parser.add_argument("--medvram", action='store_true', help="enable stable diffusion model optimizations for sacrificing a little speed for low VRM usage")
parser.add_argument("--medvram-sdxl", action='store_true', help="enable --medvram optimization just for SDXL models")
parser.add_argument("--lowvram", action='store_true', help="enable stable diffusion model optimizations for sacrificing a lot of speed for very low VRM usage")
parser.add_argument("--lowram", action='store_true', help="load stable diffusion checkpoint weights to VRAM instead of RAM")
parser.add_argument("--precision", type=str, help="evaluate at this precision", choices=["full", "half", "autocast"] if _standin.at_least("1.10.0") else ["full", "autocast"], default="autocast")
parser.add_argument("--upcast-sampling", action='store_true', help="upcast sampling. No effect with --no-half.")
parser.add_argument("--xformers", action='store_true', help="enable xformers for cross attention layers")
parser.add_argument("--disable-nan-check", action='store_true', help="do not check if produced images/latent spaces have nans; useful for running without a checkpoint in CI")
parser.add_argument("--use-cpu", nargs='+', help="use CPU as torch device for specified modules", default=[], type=str.lower)
if _standin.at_least("1.7.0"):
    parser.add_argument("--use-ipex", action="store_true")
parser.add_argument("--disable-model-loading-ram-optimization", action='store_true', help="disable an optimization that reduces RAM use when loading a model")
parser.add_argument("--opt-channelslast", action='store_true', help="change memory type for stable diffusion to channels last")
parser.add_argument("--vae-path", type=_path_type, help='Checkpoint to use as VAE; setting this argument disables all settings related to VAE', default=None)
parser.add_argument("--hide-ui-dir-config", action='store_true', help="hide directory configuration from webui", default=False)
parser.add_argument("--freeze-settings", action='store_true', help="disable editing settings", default=False)
if _standin.at_least("1.8.0"):
    parser.add_argument("--freeze-settings-in-sections", type=str, default=None)
    parser.add_argument("--freeze-specific-settings", type=str, default=None)
parser.add_argument("--ui-settings-file", type=str, help="filename to use for ui settings", default=os.path.join(data_path, 'config.json'))
parser.add_argument("--api", action='store_true', help="use api=True to launch the API together with the webui (use --nowebui instead for only the API)")
parser.add_argument("--api-auth", type=str, default=None)
parser.add_argument("--api-server-stop", action='store_true')
parser.add_argument("--nowebui", action='store_true', help="use api=True to launch the API instead of the webui")
parser.add_argument("--port", type=int, default=None)
parser.add_argument("--test-server", action='store_true')
parser.add_argument("--no-hashing", action='store_true', help="disable sha256 hashing of checkpoints to help loading performance", default=False)
parser.add_argument("--no-download-sd-model", action='store_true', help="don't download SD1.5 model even if no model is found in --ckpt-dir", default=False)
parser.add_argument("--disable-all-extensions", action='store_true', default=False)
parser.add_argument("--disable-extra-extensions", action='store_true', default=False)
if _standin.at_least("1.7.0"):
    parser.add_argument("--skip-load-model-at-start", action='store_true', help="if load a model at web start, only take effect when --nowebui")
if _standin.at_least("1.9.0"):
    parser.add_argument("--no-prompt-history", action='store_true')
