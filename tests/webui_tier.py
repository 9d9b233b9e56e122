"""Start a real AUTOMATIC1111 checkout in this process, with this extension installed, for the webui tier.

Used only when ``SD_WEBUI_ROOT`` points to a real checkout (run pytest with that webui's Python); conftest
starts it before collection, so that every ``extensions_ssd1b`` import of the session is the installed copy.
Nothing in the checkout is modified: the extension is installed as a user installs it (a git clone in
``<data-dir>/extensions``, its ``install.py`` run by the launcher's own function) into a temporary ``--data-dir``,
and checkpoints live in a temporary ``--ckpt-dir``.  The flags are the ones that keep A1111 offline and
on the CPU; the CLIP-L tokenizer comes from the Hugging Face cache in ``HF_HOME`` (``SD_WEBUI_HF_HOME``
or ``../shared/data/hf-home-clip-l`` beside this repository).  One webui per process.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
OFFLINE_CPU_FLAGS = (
    "--skip-prepare-environment",
    "--skip-install",
    "--skip-torch-cuda-test",
    "--skip-version-check",
    "--use-cpu",
    "all",
    "--no-half",
    "--no-half-vae",
    "--precision",
    "full",
    "--api",
    "--nowebui",
    "--no-download-sd-model",
    "--do-not-download-clip",
)


@dataclass
class RealWebui:
    root: Path
    data_dir: Path
    checkpoints_dir: Path
    version: str
    extension_dir: Path | None
    installer_output: str

    def refresh(self) -> None:
        from modules import sd_models, sd_vae

        sd_models.list_models()
        sd_vae.refresh_vae_list()

    def app(self) -> Any:
        """The webui's FastAPI app with its API and our routes, as ``webui.api_only()`` builds it."""
        from fastapi import FastAPI
        from modules import initialize_util, script_callbacks
        from modules.api.api import Api
        from modules.call_queue import queue_lock

        app = FastAPI()
        initialize_util.setup_middleware(app)
        Api(app, queue_lock)
        script_callbacks.before_ui_callback()
        script_callbacks.app_started_callback(None, app)
        return app


_started: RealWebui | None = None
EXTENSION_NAME = "sd-webui-ssd1b"


def clone_extension(extensions: Path) -> Path:
    """``git clone`` of this repository into ``extensions/`` (how users install it), plus any uncommitted
    change of the working tree, so a developer's run tests what is on disk; CI's fresh clone has none."""
    target = extensions / EXTENSION_NAME
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO_ROOT), str(target)], check=True)
    listed = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
        elif (target / name).exists():  # deleted in the working tree
            (target / name).unlink()
    return target


def forget_loaded_model() -> None:
    """Drop the loaded model, so that the next load builds afresh (v1.10's ``unload_model_weights`` only moves it
    to the CPU; v1.6's also drops it)."""
    import gc

    from modules import sd_hijack, sd_models

    data = sd_models.model_data
    if data.sd_model is not None:
        sd_hijack.model_hijack.undo_hijack(data.sd_model)
    data.sd_model = None
    if hasattr(data, "loaded_sd_models"):  # v1.7+
        data.loaded_sd_models.clear()
    gc.collect()


def _hf_home() -> str:
    return os.environ.get("SD_WEBUI_HF_HOME", str(REPO_ROOT.parent / "shared" / "data" / "hf-home-clip-l"))


EXTRA_EXTENSIONS = "SSD1B_EXTRA_EXTENSIONS"  # opt-in: other extensions' folders (os.pathsep-separated) to install


def add_extra_extensions(extensions: Path) -> list[Path]:
    """Copy each folder named in ``$SSD1B_EXTRA_EXTENSIONS`` (e.g. an exported sd-webui-controlnet) into
    ``extensions/`` under its own name; the tests that need one skip when it did not load."""
    copied = []
    for folder in filter(None, os.environ.get(EXTRA_EXTENSIONS, "").split(os.pathsep)):
        source = Path(folder)
        if not source.is_dir():
            raise FileNotFoundError(f"{EXTRA_EXTENSIONS}: {source} is not a folder")
        copied.append(Path(shutil.copytree(source, extensions / source.name, symlinks=True)))
    return copied


def start_real_webui(root: Path, *, with_extension: bool = True) -> RealWebui:
    """Initialise the webui at ``root`` once per process; later calls return the same host."""
    global _started
    if _started is not None:
        return _started
    work = Path(tempfile.mkdtemp(prefix="ssd1b-webui-tier-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # full-size checkpoints: gigabytes each run
    data_dir, checkpoints = work / "data", work / "checkpoints"
    (data_dir / "extensions").mkdir(parents=True)
    checkpoints.mkdir()
    extension_dir = clone_extension(data_dir / "extensions") if with_extension else None
    add_extra_extensions(data_dir / "extensions")
    for key, value in {
        "HF_HOME": _hf_home(),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "IGNORE_CMD_ARGS_ERRORS": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }.items():
        os.environ.setdefault(key, value)
    # The webui parses sys.argv when its modules are first imported.
    sys.argv = [
        str(root / "launch.py"),
        *OFFLINE_CPU_FLAGS,
        "--data-dir",
        str(data_dir),
        "--ckpt-dir",
        str(checkpoints),
    ]
    os.chdir(root)
    sys.path.insert(0, str(root))
    if extension_dir is not None:
        sys.path.insert(0, str(extension_dir))  # the tests, too, import the installed copy

    from modules import initialize, launch_utils, timer

    installer_output = ""
    if extension_dir is not None:  # what launch.py does for every enabled extension, unless --skip-install
        from contextlib import redirect_stdout
        from io import StringIO

        with redirect_stdout(StringIO()) as printed:
            launch_utils.run_extension_installer(str(extension_dir))
        installer_output = printed.getvalue()

    timer.startup_timer.record("launcher")
    initialize.imports()
    if hasattr(initialize, "check_versions"):
        initialize.check_versions()
    sigint = signal.getsignal(signal.SIGINT)
    before = set(threading.enumerate())
    initialize.initialize()
    signal.signal(signal.SIGINT, sigint)  # initialize() installs a handler that hard-exits
    # v1.6.0 always starts a model-load thread; with an empty checkpoint folder it fails at once.
    for thread in set(threading.enumerate()) - before:
        if not thread.daemon:
            thread.join(120)
    version = launch_utils.git_tag().lstrip("v")
    _started = RealWebui(root, data_dir, checkpoints, version, extension_dir, installer_output)
    return _started
