"""The checkpoint badge's labels: real route payloads → javascript/ssd1b_badge.js under node.

Each payload comes from ``webui.inspect_listed_checkpoint`` reading a header-only safetensors
file, so the test covers the route's JSON and the JS formatting together without a browser.
Skipped (with the reason) when ``node`` is not installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest
from badge_shapes import TEXT_ENCODERS, VAE

from extensions_ssd1b.arch.detect import LDM_UNET_PREFIX, OTHER_MODEL_KINDS
from extensions_ssd1b.arch.families import FAMILIES_BY_KEY
from extensions_ssd1b.arch.layout import Middle, UNetLayout, unet_tensor_shapes
from extensions_ssd1b.core.errors import NotSdxlFamily
from extensions_ssd1b.host import ui as webui
from extensions_ssd1b.io.write import TensorSpec
from extensions_ssd1b.tools.samples import write_safetensors

BADGE_JS = Path(__file__).resolve().parents[1] / "javascript" / "ssd1b_badge.js"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed: the badge JS cannot run without it")

# Reads a JSON list of [function, argument] pairs on stdin and prints the results as JSON.
RUNNER = """
const badge = require(process.argv[1]);
const calls = JSON.parse(require('fs').readFileSync(0, 'utf8'));
process.stdout.write(JSON.stringify(calls.map(([name, arg]) => {
    const value = badge[name];
    return typeof value === 'function' ? value(arg) : value;
})));
"""

SD15_UNET = {
    "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
}
LORA = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320, 1, 1)}
# SSD-1B with its deepest output stacks cut to 2 transformers: consistent, but in no table row.
CUSTOM_LAYOUT = UNetLayout(((0, 0), (2, 2), (4, 4)), ((2, 2, 2), (2, 1, 1), (0, 0, 0)), Middle.RES_ONLY)


def write_header_only(path: Path, shapes: Mapping[str, tuple[int, ...]]) -> Path:
    """A sparse F16 checkpoint: the real header, a hole for the data (detection reads the header)."""
    return write_safetensors(path, [TensorSpec(name, "F16", tuple(shape)) for name, shape in shapes.items()])


def unet(layout: UNetLayout, prefix: str = LDM_UNET_PREFIX) -> dict[str, tuple[int, ...]]:
    return {prefix + key: shape for key, shape in unet_tensor_shapes(layout).items()}


def family_unet(key: str) -> dict[str, tuple[int, ...]]:
    return unet(FAMILIES_BY_KEY[key].layout)


def run_js(calls: list[tuple[str, object]]) -> list[object]:
    result = subprocess.run(
        [NODE, "-e", RUNNER, str(BADGE_JS)],
        input=json.dumps(calls),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def inspect(tmp_path, monkeypatch):
    """Route payload for a checkpoint made of ``shapes``, as the webui would serve it."""
    files: dict[str, Path] = {}
    monkeypatch.setattr(webui, "listed_checkpoint_path", lambda title: str(files[title]) if title in files else None)

    def payload(shapes: Mapping[str, tuple[int, ...]], name: str = "model.safetensors") -> dict[str, object]:
        files[name] = write_header_only(tmp_path / name, shapes)
        return json.loads(json.dumps(webui.inspect_listed_checkpoint(name)))  # exactly what FastAPI sends

    return payload


def badge(payload: Mapping[str, object]) -> dict[str, str] | None:
    return run_js([("badgeFor", payload)])[0]


LABELS = [
    ("ssd-1b", {**TEXT_ENCODERS}, "SSD-1B · 1.3B UNet · no VAE"),
    ("ssd-1b", {**TEXT_ENCODERS, **VAE}, "SSD-1B · 1.3B UNet"),
    ("segmind-vega", {**TEXT_ENCODERS, **VAE}, "Segmind-Vega · 745M UNet"),
    ("segmind-vega", {**TEXT_ENCODERS}, "Segmind-Vega · 745M UNet · no VAE"),
    ("koala-700m", {**TEXT_ENCODERS}, "KOALA-700M · 783M UNet · no VAE"),
    ("koala-1b", {**TEXT_ENCODERS, **VAE}, "KOALA-1B · 1.2B UNet"),
]


@pytest.mark.parametrize(("key", "extra", "label"), LABELS, ids=[f"{k}-{label}" for k, _, label in LABELS])
def test_distilled_single_file_label(inspect, key, extra, label):
    spec = badge(inspect({**family_unet(key), **extra}))
    assert spec["text"] == label
    assert spec["level"] == "info"
    assert ("no VAE" in spec["text"]) == ("SD VAE" in spec["tooltip"])


def test_custom_distilled_label(inspect):
    payload = inspect({**unet(CUSTOM_LAYOUT), **TEXT_ENCODERS})
    assert payload["family_key"] == "custom"
    spec = badge(payload)
    assert spec["text"] == "custom distilled SDXL · 914M UNet · no VAE"
    assert spec["level"] == "info"
    assert f"{payload['unet_parameters']:,} parameters" in spec["tooltip"]


def test_tooltip_lists_what_the_file_holds(inspect):
    spec = badge(inspect({**family_unet("ssd-1b"), **TEXT_ENCODERS}))
    assert spec["tooltip"].splitlines() == [
        "SSD-1B: distilled SDXL UNet, 1,331,334,404 parameters, middle block: ResBlock only",
        "In the file: UNet, CLIP-L, OpenCLIP-bigG",
        "No VAE in the file: choose an SDXL VAE in Settings → VAE → SD VAE.",
    ]


def test_a_diffusers_folders_unet_file_is_labelled_as_the_model_it_loads(tmp_path, monkeypatch):
    from extensions_ssd1b.tools.samples import write_diffusers_pipeline

    root = write_diffusers_pipeline(tmp_path / "vega", "segmind-vega")
    title = "vega/unet/diffusion_pytorch_model.safetensors"
    monkeypatch.setattr(webui, "listed_checkpoint_path", lambda name: str(tmp_path / name) if name == title else None)
    payload = json.loads(json.dumps(webui.inspect_listed_checkpoint(title)))
    assert payload["form"] == "diffusers-folder"
    spec = badge(payload)
    assert spec["text"] == "Segmind-Vega · 745M UNet" and spec["level"] == "info"
    assert "In its diffusers folder: UNet, CLIP-L, OpenCLIP-bigG, VAE" in spec["tooltip"].splitlines()
    (root / "model_index.json").unlink(missing_ok=True)
    for part in ("text_encoder", "text_encoder_2", "vae"):
        shutil.rmtree(root / part)  # the UNet file alone: A1111 cannot load it
    assert badge(json.loads(json.dumps(webui.inspect_listed_checkpoint(title))))["text"] == "⚠ Segmind-Vega · UNet only"


@pytest.mark.parametrize("key", ["sdxl", "sdxl-refiner"])
def test_no_badge_for_stock_sdxl(inspect, key):
    extra = TEXT_ENCODERS if key == "sdxl" else {"conditioner.embedders.0.model.token_embedding.weight": (49408, 1280)}
    payload = inspect({**family_unet(key), **extra, **VAE})
    assert payload["ok"] is True and payload["distilled"] is False
    assert badge(payload) is None


def test_no_badge_for_models_the_host_loads_itself(inspect):
    payload = inspect(SD15_UNET)
    assert payload["ok"] is False  # the route calls it an error; for the badge it is the host's business
    assert badge(payload) is None


def test_unet_only_files_warn_that_a1111_cannot_load_them(inspect):
    for shapes in (family_unet("ssd-1b"), unet(FAMILIES_BY_KEY["ssd-1b"].layout, prefix="")):
        spec = badge(inspect(shapes))
        assert spec["text"] == "⚠ SSD-1B · UNet only"
        assert spec["level"] == "warning"
        assert "python -m extensions_ssd1b convert" in spec["tooltip"]


def test_errors_warn_with_the_message_as_tooltip(inspect):
    lora = inspect(LORA)
    broken_shapes = family_unet("koala-1b")
    del broken_shapes[next(k for k in broken_shapes if ".transformer_blocks.3." in k)]
    broken = inspect({**broken_shapes, **TEXT_ENCODERS}, name="broken.safetensors")
    for payload in (lora, broken):
        assert payload["ok"] is False
        assert badge(payload) == {"text": "⚠ not loadable", "tooltip": payload["error"], "level": "warning"}
    assert "LoRA" in lora["error"]


def test_error_payload_without_message_still_warns():
    assert badge({"ok": False}) == {"text": "⚠ not loadable", "tooltip": "unknown error", "level": "warning"}


@pytest.mark.parametrize("payload", [None, {}, {"ok": True}, "oops", {"ok": True, "distilled": False}])
def test_odd_payloads_show_nothing(payload):
    assert badge(payload) is None


def test_parameter_formatting():
    values = [1_331_334_404, 745_225_604, 999_999_999, 12_345, 0, -1, None]
    assert run_js([("formatParameters", v) for v in values]) == ["1.3B", "745M", "1000M", "12345", "", "", ""]


def test_only_safetensors_titles_are_inspected():
    titles = {
        "ssd-1b.safetensors [5fd5a3b6c0]": True,
        "sub/dir/KOALA.SAFETENSORS": True,
        "sd15.ckpt [cc6cb27103]": False,
        "model.safetensors.bak": False,
        "": False,
    }
    assert run_js([("isSafetensorsTitle", t) for t in titles]) == list(titles.values())


def test_host_kinds_match_the_python_side():
    """The JS recognises the host's models by the route's error text; keep both sides in step."""
    js_kinds, prefix = run_js([("HOST_KINDS", None), ("NOT_SDXL_PREFIX", None)])
    assert set(js_kinds) == set(OTHER_MODEL_KINDS)
    assert str(NotSdxlFamily(js_kinds[0], "detail")).startswith(prefix + js_kinds[0])
    assert run_js([("isHostModelError", str(NotSdxlFamily(kind, "x"))) for kind in OTHER_MODEL_KINDS]) == [True] * 3
    assert run_js([("isHostModelError", str(NotSdxlFamily("a VAE", "put it in models/VAE")))]) == [False]
