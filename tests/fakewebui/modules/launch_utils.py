"""What launch.py re-exports and an extension's install.py uses; nothing is ever installed."""

import importlib.metadata
import importlib.util
import os
import sys

from modules import _standin
from modules.paths_internal import script_path
from modules.shared_cmd_options import cmd_opts as args  # the real module parses its own copy of the flags

python = sys.executable
git = os.environ.get('GIT', "git")
index_url = os.environ.get('INDEX_URL', "")
dir_repos = "repositories"

_pip_commands = []
"""Every run_pip command the stand-in was asked to run (nothing is installed)."""


def commit_hash():
    return "<none>"


def git_tag():
    return f"v{_standin.VERSION}"


def is_installed(package):
    if _standin.at_least("1.7.0"):  # v1.7 first looks for an installed distribution
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            pass
        else:
            return dist is not None

    try:
        spec = importlib.util.find_spec(package)
    except ModuleNotFoundError:
        return False

    return spec is not None


def repo_dir(name):
    return os.path.join(script_path, dir_repos, name)


def run_pip(command, desc=None, live=False):
    if args.skip_install:
        return

    _pip_commands.append(command)
    return ""
