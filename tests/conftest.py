"""Shared test plumbing: the two tiers and the host stand-ins.

Tier 1 runs everywhere against stand-ins under ``tests/fakewebui`` (real files with the real
names and signatures).  Tier 2 (``@pytest.mark.webui``) runs only when ``SD_WEBUI_ROOT`` points
to a real AUTOMATIC1111 checkout, and is reported as skipped otherwise.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FAKE_WEBUI = Path(__file__).resolve().parent / "fakewebui"


def webui_root() -> Path | None:
    root = os.environ.get("SD_WEBUI_ROOT")
    return Path(root) if root and (Path(root) / "modules" / "sd_models.py").is_file() else None


@pytest.fixture(scope="session")
def real_webui():
    """The real A1111 of the webui tier, started once per process (``SD_WEBUI_ROOT``)."""
    from webui_tier import start_real_webui

    return start_real_webui(webui_root())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if webui_root() is not None:
        return
    skip = pytest.mark.skip(reason="needs a real A1111 checkout: set SD_WEBUI_ROOT")
    for item in items:
        if "webui" in item.keywords:
            item.add_marker(skip)


def _forget(prefix: str) -> dict[str, object]:
    removed = {}
    for name in list(sys.modules):
        if name == prefix or name.startswith(prefix + "."):
            removed[name] = sys.modules.pop(name)
    return removed


@pytest.fixture
def sgm_openaimodel(monkeypatch: pytest.MonkeyPatch):
    """sgm's ``openaimodel`` module: the real one when importable (webui tier), else the stand-in."""
    root = webui_root()
    if root is not None:
        monkeypatch.syspath_prepend(str(root / "repositories" / "generative-models"))
    elif importlib.util.find_spec("sgm") is None:
        monkeypatch.syspath_prepend(str(FAKE_WEBUI))
    stand_in = root is None and importlib.util.find_spec("sgm").origin.startswith(str(FAKE_WEBUI))
    yield importlib.import_module("sgm.modules.diffusionmodules.openaimodel")
    if stand_in:
        _forget("sgm")


# -- the stand-in webui (tests/fakewebui/install.py) ------------------------------------------------


@pytest.fixture(params=["1.6.0", "1.10.1"])
def fake_webui(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A started A1111 host: the stand-in imitating the release in the parameter, or (webui tier) the real one.

    Other releases: ``@pytest.mark.parametrize("fake_webui", ["1.7.0"], indirect=True)``.  In the webui
    tier, parameters other than the real host's release are skipped.
    """
    from fakewebui import install_fake_webui

    fake = install_fake_webui(monkeypatch, request.param, tmp_path)
    if fake.real and fake.version != request.param:
        pytest.skip(f"the real webui here is {fake.version}, not {request.param}")
    return fake


@pytest.fixture
def fake_webui_factory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """``make(version, *, forge=False, cmd_args=None, extensions=())`` → a started host, for one-off options."""
    from fakewebui import install_fake_webui

    def make(version: str, **options):
        return install_fake_webui(monkeypatch, version, tmp_path, **options)

    return make
