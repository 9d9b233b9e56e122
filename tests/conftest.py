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


def pytest_configure(config: pytest.Config) -> None:
    # The real webui starts before the test modules are imported: they then import the extension from its
    # installed clone, the copy the webui loaded, never a second one from this checkout.
    root = webui_root()
    if root is not None:
        from webui_tier import start_real_webui

        start_real_webui(root)


@pytest.fixture(scope="session")
def real_webui():
    """The real A1111 of the webui tier, started once per process (``SD_WEBUI_ROOT``)."""
    from webui_tier import start_real_webui

    return start_real_webui(webui_root())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if webui_root() is not None:
        _deselect_other_releases(config, items)
        return
    skip = pytest.mark.skip(reason="needs a real A1111 checkout: set SD_WEBUI_ROOT")
    for item in items:
        if "webui" in item.keywords:
            item.add_marker(skip)


def _deselect_other_releases(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In the webui tier a test parametrised with a release other than the real host's is not collected (rather
    than skipped), so that any skip in that tier is a real one."""
    from webui_tier import start_real_webui

    version = start_real_webui(webui_root()).version
    keep, drop = [], []
    for item in items:
        params = getattr(item, "callspec", None).params if hasattr(item, "callspec") else {}
        wanted = params.get("fake_webui")
        (drop if wanted is not None and wanted != version else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def stock_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The host without this extension's load path, for tests of what the host itself does: a no-op on the
    stand-in (those tests install none).  In the webui tier our load path is taken out and put back, and the
    host's SDXL config is its own ``sd_xl_base.yaml`` at 64 channels (the real host's test scale), so that
    every SDXL-keyed file resolves to one config, as with full-size files."""
    if webui_root() is None:
        yield
        return
    from modules import sd_models_config
    from webui_checks import webui_scale, write_reduced_stock_yaml
    from webui_tier import forget_loaded_model

    from extensions_ssd1b.host import extension

    reduced = write_reduced_stock_yaml(tmp_path / "sd_xl_base_64.yaml", webui_scale("sdxl"))
    forget_loaded_model()
    extension.uninstall()
    monkeypatch.setattr(sd_models_config, "config_sdxl", str(reduced))
    try:
        yield
    finally:
        forget_loaded_model()
        extension.install()


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


# sd-webui-controlnet tier (tests/controlnet_tier.py, imported here only once a test asks: the webui must be up first)
@pytest.fixture(scope="module")
def controlnet_ext(real_webui):
    from controlnet_tier import controlnet_ready

    return controlnet_ready(real_webui)


@pytest.fixture(scope="module", params=["ssd-1b", "segmind-vega", "koala-700m"])
def distilled(request, real_webui, controlnet_ext):
    """Each distilled family in turn, full size, loaded in the real webui (module scope: loaded once per module)."""
    from controlnet_tier import load_distilled

    path = load_distilled(real_webui, request.param)
    yield request.param
    path.unlink()
