"""this module defines internal paths used by program and is safe to import before dependencies are installed in launch.py"""

import argparse
import os
from pathlib import Path

from modules import _standin


def _normalized_filepath(filepath):
    return str(Path(filepath).absolute())


if _standin.at_least("1.8.0"):
    normalized_filepath = _normalized_filepath

if _standin.at_least("1.7.0"):
    cwd = os.getcwd()
modules_path = os.path.dirname(os.path.realpath(__file__))
script_path = os.path.dirname(modules_path)

sd_configs_path = os.path.join(script_path, "configs")
sd_default_config = os.path.join(sd_configs_path, "v1-inference.yaml")
sd_model_file = os.path.join(script_path, 'model.ckpt')
default_sd_model_file = sd_model_file

# Parse the --data-dir flag first so we can use it as a base for our other argument default values
parser_pre = argparse.ArgumentParser(add_help=False)
parser_pre.add_argument("--data-dir", type=str, default=os.path.dirname(modules_path), help="base path where all user data is stored", )
if _standin.at_least("1.10.0"):
    parser_pre.add_argument("--models-dir", type=str, default=None, help="base path where models are stored; overrides --data-dir", )
cmd_opts_pre = parser_pre.parse_known_args(_standin.ARGV)[0]

data_path = cmd_opts_pre.data_dir

models_path = getattr(cmd_opts_pre, "models_dir", None) or os.path.join(data_path, "models")
extensions_dir = os.path.join(data_path, "extensions")
extensions_builtin_dir = os.path.join(script_path, "extensions-builtin")
config_states_dir = os.path.join(script_path, "config_states")
if _standin.at_least("1.8.0"):
    default_output_dir = os.path.join(data_path, "outputs")
