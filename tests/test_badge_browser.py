"""The checkpoint badge in a real AUTOMATIC1111 web UI, driven by headless Chromium (Playwright).

Tier 2: needs ``SD_WEBUI_ROOT`` (an A1111 checkout, v1.6.0-v1.10.1), a Python that can run it
(``SD_WEBUI_PYTHON``, default ``$SD_WEBUI_ROOT/venv/bin/python``), the ``playwright`` package in
the Python running pytest, and a Chromium (``BADGE_CHROMIUM``, default ``chromium`` on PATH;
Playwright's own download is not needed).  For example::

    SD_WEBUI_ROOT=/work/webui/v1.10.1 SD_WEBUI_PYTHON=/work/webui/venv-1.10.1/bin/python \\
        /tmp/pw-venv/bin/python -m pytest tests/test_badge_browser.py

The web UI runs from a temporary data dir (this repository symlinked as its extension) over a
folder of header-only checkpoints, so the checkout is not modified.  A second, test-only
extension there stops every model load: the checkpoints are sparse zeros and the badge needs
only the inspect route.  ``BADGE_SCREENSHOTS=<dir>`` saves light and dark screenshots.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from badge_shapes import TEXT_ENCODERS, VAE

from extensions_ssd1b.arch.families import FAMILIES_BY_KEY
from extensions_ssd1b.arch.layout import unet_tensor_shapes
from extensions_ssd1b.io.write import TensorSpec
from extensions_ssd1b.tools.samples import write_safetensors

pytestmark = pytest.mark.webui

REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 300
BADGE = "#ssd1b_arch_badge"
DROPDOWN = "#setting_sd_model_checkpoint"

SD15 = {
    "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
}

# Loaded from the data dir as an extension of its own; only the test installs it.
NO_LOAD_SCRIPT = '''"""Test-only: never load a model (the badge test's checkpoints are sparse zeros)."""
from modules import sd_models, shared

shared.opts.data_labels["sd_model_checkpoint"].onchange = None  # selecting only sets the option
sd_models.load_model = lambda *args, **kwargs: None  # the start-up load of v1.6 (no --skip-load-model-at-start)
'''


def unet(key: str, prefix: str = "model.diffusion_model.") -> dict[str, tuple[int, ...]]:
    return {prefix + name: shape for name, shape in unet_tensor_shapes(FAMILIES_BY_KEY[key].layout).items()}


def write_header_only(path: Path, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """A sparse F16 checkpoint (detection reads the header), swapped in atomically for the running server."""
    temporary = path.with_suffix(".tmp")
    write_safetensors(temporary, [TensorSpec(name, "F16", tuple(shape)) for name, shape in shapes.items()])
    os.replace(temporary, path)


def checkpoints(folder: Path) -> None:
    broken = {**unet("koala-1b"), **TEXT_ENCODERS}
    del broken[next(key for key in broken if ".transformer_blocks.3." in key)]
    files = {
        "ssd-1b": {**unet("ssd-1b"), **TEXT_ENCODERS},
        "segmind-vega": {**unet("segmind-vega"), **TEXT_ENCODERS, **VAE},
        "koala-700m": {**unet("koala-700m"), **TEXT_ENCODERS},
        "sdxl-base": {**unet("sdxl"), **TEXT_ENCODERS, **VAE},
        "sd15": SD15,
        "ssd-1b-unet-only": unet("ssd-1b", prefix=""),
        "koala-1b-broken": broken,
        "swap": {**unet("ssd-1b"), **TEXT_ENCODERS},  # rewritten by the refresh test
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, shapes in files.items():
        write_header_only(folder / f"{name}.safetensors", shapes)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def webui_python(root: Path) -> str:
    python = os.environ.get("SD_WEBUI_PYTHON") or str(root / "venv" / "bin" / "python")
    if not Path(python).is_file():
        pytest.skip(f"no Python for the web UI: set SD_WEBUI_PYTHON (tried {python})")
    return python


def chromium_path() -> str | None:
    return os.environ.get("BADGE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    root = Path(os.environ["SD_WEBUI_ROOT"])
    python = webui_python(root)
    work = tmp_path_factory.mktemp("badge-webui")
    data, models = work / "data", work / "checkpoints"
    checkpoints(models)
    (data / "extensions").mkdir(parents=True)
    (data / "extensions" / "sd-webui-ssd1b").symlink_to(REPO_ROOT, target_is_directory=True)
    no_load = data / "extensions" / "zz-badge-test-no-load" / "scripts"
    no_load.mkdir(parents=True)
    (no_load / "no_load.py").write_text(NO_LOAD_SCRIPT)
    settings = {"sd_model_checkpoint": "ssd-1b.safetensors", "quicksettings_list": ["sd_model_checkpoint", "sd_vae"]}
    (data / "config.json").write_text(json.dumps(settings))

    port = free_port()
    args = [python, "launch.py", "--skip-prepare-environment", "--skip-install", "--skip-torch-cuda-test"]
    args += ["--data-dir", str(data), "--ckpt-dir", str(models), "--port", str(port), "--no-download-sd-model"]
    args += ["--use-cpu", "all", "--no-half"]
    if "--skip-load-model-at-start" in (root / "modules" / "cmd_args.py").read_text():
        args.append("--skip-load-model-at-start")  # v1.7+; older versions rely on the no-load script
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    log_path = work / "webui.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            args, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"the web UI exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(base + "ssd1b/v1/inspect?checkpoint=ssd-1b.safetensors", timeout=5):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"the web UI did not serve the inspect route in {STARTUP_TIMEOUT_S}s:\n"
                        f"{log_path.read_text()[-4000:]}"
                    )
                time.sleep(2)
        yield {"base": base, "models": models, "log": log_path}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="install playwright to run the browser test")
    executable = chromium_path()
    with sync_api.sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        except sync_api.Error as error:
            pytest.skip(f"cannot start Chromium ({executable or 'Playwright default'}): {error}")
        yield launched
        launched.close()


class Page:
    """One web UI tab, with the inspect requests and console output it produced."""

    def __init__(self, browser, base: str, theme: str = "light") -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 720})
        self.requests: list[str] = []
        self.console: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url) if "/ssd1b/v1/inspect" in r.url else None)
        self.page.on("console", lambda m: self.console.append((m.type, m.text)))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(f"{base}?__theme={theme}")
        self.page.wait_for_selector("#txt2img_prompt", timeout=60_000)

    def badge(self) -> dict[str, object]:
        return self.page.evaluate(
            """sel => { const b = gradioApp().querySelector(sel);
                return b ? {shown: !b.hidden, text: b.textContent, title: b.title,
                            warning: b.classList.contains('ssd1b-badge-warning')} : null; }""",
            BADGE,
        )

    def wait_badge(self, text: str | None, timeout_ms: float = 20_000) -> dict[str, object]:
        """Wait until the badge shows ``text`` (None: until it is hidden)."""
        condition = """([sel, text]) => { const b = gradioApp().querySelector(sel);
            return b && (text === null ? b.hidden : !b.hidden && b.textContent === text); }"""
        try:
            self.page.wait_for_function(condition, arg=[BADGE, text], timeout=timeout_ms)
        except Exception as error:  # playwright's TimeoutError: say what the page showed instead
            dropdown = self.page.input_value(f"{DROPDOWN} input")
            raise AssertionError(
                f"badge never showed {text!r}; it shows {self.badge()} for {dropdown!r}; "
                f"inspect requests: {self.requests}; console: {self.console[-8:]}"
            ) from error
        return self.badge()

    def select(self, title: str) -> None:
        self.page.click(f"{DROPDOWN} input")
        self.page.click(f"{DROPDOWN} li[data-value='{title}']")

    def row_geometry(self) -> list[dict[str, float]]:
        return self.page.evaluate(
            """() => ['#quicksettings', '#setting_sd_model_checkpoint', '#setting_sd_model_checkpoint input',
                      '#refresh_sd_model_checkpoint', '#setting_sd_vae']
                .map(sel => gradioApp().querySelector(sel).getBoundingClientRect().toJSON())"""
        )

    def requested(self, title: str) -> int:
        return sum(url.endswith("checkpoint=" + urllib.request.quote(title, safe="")) for url in self.requests)


def open_tab(browser, server, theme: str = "light") -> Page:
    """A fresh tab on SSD-1B (the option persists server-side, so earlier tests may have changed it)."""
    tab = Page(browser, server["base"], theme)
    if tab.page.input_value(f"{DROPDOWN} input") != "ssd-1b.safetensors":
        tab.select("ssd-1b.safetensors")
    tab.wait_badge("SSD-1B · 1.3B UNet · no VAE")
    tab.requests.clear()
    return tab


@pytest.fixture
def page(browser, server):
    tab = open_tab(browser, server)
    yield tab
    assert not tab.errors, tab.errors
    tab.page.close()


def test_badge_shows_the_selected_family(page):
    badge = page.badge()
    assert not badge["warning"]
    assert "1,331,334,404 parameters" in badge["title"]
    assert "SD VAE" in badge["title"]

    page.select("segmind-vega.safetensors")
    assert not page.wait_badge("Segmind-Vega · 745M UNet")["warning"]
    page.select("koala-700m.safetensors")
    page.wait_badge("KOALA-700M · 783M UNet · no VAE")


@pytest.mark.parametrize("title", ["sdxl-base.safetensors", "sd15.safetensors"])
def test_no_badge_for_models_the_host_loads_itself(page, title):
    page.select(title)
    page.wait_badge(None)


# Resolves once the app has gone ``ms`` without the DOM mutations A1111's UI callbacks watch.
QUIET = """ms => new Promise(resolve => {
    let timer = setTimeout(done, ms);
    const observer = new MutationObserver(() => { clearTimeout(timer); timer = setTimeout(done, ms); });
    function done() { observer.disconnect(); resolve(); }
    observer.observe(gradioApp(), {childList: true, subtree: true});
})"""


def test_value_set_as_a_property_is_picked_up(page):
    """Gradio sets the input's value as a property (e.g. the saved option after page load, or a
    failed load reverted): no DOM mutation, so no A1111 UI-update callback; the badge must follow."""
    page.page.evaluate(QUIET, 1000)  # else a late burst of the page load could do the job
    page.page.evaluate(
        "sel => { gradioApp().querySelector(sel).value = 'segmind-vega.safetensors'; }", f"{DROPDOWN} input"
    )
    page.wait_badge("Segmind-Vega · 745M UNet", timeout_ms=2_000)


def test_refused_files_get_a_warning_with_the_reason(page):
    page.select("koala-1b-broken.safetensors")
    badge = page.wait_badge("⚠ not loadable")
    assert badge["warning"]
    assert "missing UNet tensors" in badge["title"]

    page.select("ssd-1b-unet-only.safetensors")
    badge = page.wait_badge("⚠ SSD-1B · UNet only")
    assert badge["warning"]
    assert "extensions_ssd1b convert" in badge["title"]


def test_badge_never_moves_the_dropdown_row(page):
    with_badge = page.row_geometry()
    page.select("sdxl-base.safetensors")
    page.wait_badge(None)
    assert page.row_geometry() == with_badge
    page.select("koala-1b-broken.safetensors")
    page.wait_badge("⚠ not loadable")
    assert page.row_geometry() == with_badge


def test_requests_are_cached_per_title_and_not_sent_while_typing(page):
    page.select("segmind-vega.safetensors")
    page.wait_badge("Segmind-Vega · 745M UNet")
    page.select("ssd-1b.safetensors")
    page.wait_badge("SSD-1B · 1.3B UNet · no VAE")
    page.select("segmind-vega.safetensors")
    page.wait_badge("Segmind-Vega · 745M UNet")
    assert page.requested("ssd-1b.safetensors") == 0  # fetched before the test, when the tab opened
    assert page.requested("segmind-vega.safetensors") == 1

    page.page.click(f"{DROPDOWN} input")
    page.page.keyboard.type("koala", delay=50)
    page.page.wait_for_timeout(1000)
    assert all("checkpoint=k" not in url for url in page.requests), page.requests
    page.page.keyboard.press("Escape")


def test_refresh_button_rereads_a_changed_file(page, server):
    # The badge already says SSD-1B (for ssd-1b): wait for swap's own answer before changing the file.
    with page.page.expect_request_finished(lambda request: "checkpoint=swap" in request.url):
        page.select("swap.safetensors")
    page.wait_badge("SSD-1B · 1.3B UNet · no VAE")
    write_header_only(server["models"] / "swap.safetensors", {**unet("koala-700m"), **TEXT_ENCODERS})
    page.page.click("#refresh_sd_model_checkpoint")
    page.wait_badge("KOALA-700M · 783M UNet · no VAE")
    assert page.requested("swap.safetensors") >= 2, page.requests  # more when one raced the re-listing


def test_network_failures_are_silent(page):
    page.page.route("**/ssd1b/v1/inspect*", lambda route: route.abort())
    page.select("koala-700m.safetensors")
    page.wait_badge(None)
    page.page.wait_for_timeout(500)  # let the rejected fetch settle
    assert any(kind == "debug" and "[SSD-1B]" in text for kind, text in page.console), page.console
    assert not [text for kind, text in page.console if kind == "error" and "ssd1b" in text.lower()]
    page.page.unroute("**/ssd1b/v1/inspect*")


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_badge_is_readable_in_both_themes(browser, server, theme):
    tab = open_tab(browser, server, theme)
    try:
        colours = tab.page.evaluate(
            """sel => { const s = getComputedStyle(gradioApp().querySelector(sel));
                return {dark: document.body.classList.contains('dark'),
                        color: s.color, background: s.backgroundColor}; }""",
            BADGE,
        )
        assert colours["dark"] is (theme == "dark")
        assert contrast(colours["color"], colours["background"]) >= 4.5, colours
        if directory := os.environ.get("BADGE_SCREENSHOTS"):
            Path(directory).mkdir(parents=True, exist_ok=True)
            tab.page.screenshot(
                path=str(Path(directory) / f"badge-{theme}.png"), clip={"x": 0, "y": 0, "width": 820, "height": 92}
            )
    finally:
        tab.page.close()


def contrast(foreground: str, background: str) -> float:
    """WCAG contrast ratio of two ``rgb(...)``/``rgba(...)`` colours (alpha ignored)."""

    def luminance(colour: str) -> float:
        channels = [float(c) / 255 for c in colour[colour.index("(") + 1 : colour.index(")")].split(",")[:3]]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (high + 0.05) / (low + 0.05)


if __name__ == "__main__":  # pragma: no cover - convenience: python tests/test_badge_browser.py
    sys.exit(pytest.main([__file__, "-v"]))
