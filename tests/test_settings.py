"""Settings as data: what the host adapter turns into OptionInfo entries, and reading them back."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from extensions_ssd1b.core import infotext
from extensions_ssd1b.core.settings import (
    CATEGORY_ID,
    INFOTEXT_TO_SETTING,
    KEY_PREFIX,
    NAN_DECODE,
    SECTION_ID,
    SECTION_LABEL,
    SETTINGS,
    SETTINGS_BY_KEY,
    VAE,
    VAE_AUTOMATIC,
    VAE_PRECISION,
    VAE_TAESD_XL,
    NanPolicy,
    Precision,
    Scope,
    Values,
    read_values,
    settings_from_infotext,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_complete_and_consistent() -> None:
    assert (SECTION_ID, SECTION_LABEL, CATEGORY_ID) == ("ssd1b", "SSD-1B", "sd")
    assert len(SETTINGS_BY_KEY) == len(SETTINGS)
    assert len({s.label for s in SETTINGS}) == len(SETTINGS)
    for setting in SETTINGS:
        assert setting.key.startswith(KEY_PREFIX) and setting.key.isidentifier()
        assert setting.default in setting.choices
        assert len(set(setting.choices)) == len(setting.choices)
        assert 20 < len(setting.info) < 300 and "\n" not in setting.info
        assert setting.kind in ("dropdown", "radio")


def test_the_required_settings_exist_with_their_choices() -> None:
    assert VAE.choices == (VAE_AUTOMATIC, VAE_TAESD_XL) and VAE.lists_webui_vaes
    assert VAE_PRECISION.choices == tuple(p.value for p in Precision) == ("Auto", "fp16", "bf16", "fp32")
    policies = [s for s in SETTINGS if s.choices == tuple(p.value for p in NanPolicy)]
    assert {s.key for s in policies} == {"ssd1b_nan_vae_decode", "ssd1b_nan_vae_encode", "ssd1b_nan_unet"}
    assert SETTINGS_BY_KEY["ssd1b_scope"].choices == tuple(s.value for s in Scope)


def test_vae_choices_append_the_webui_vaes_once() -> None:
    names = ["sdxl.vae.safetensors", "Automatic", "sdxl_vae.safetensors"]
    assert VAE.choices_with(names) == ["Automatic", "TAESD-XL", "sdxl.vae.safetensors", "sdxl_vae.safetensors"]
    assert NAN_DECODE.choices_with(names) == list(NAN_DECODE.choices)


def test_read_values_types_and_defaults(caplog: pytest.LogCaptureFixture) -> None:
    assert read_values(lambda _key: None) == Values()
    stored = {
        "ssd1b_scope": "Every SDXL-family model",
        "ssd1b_vae": "sdxl.vae.safetensors",
        "ssd1b_vae_precision": "bf16",
        "ssd1b_nan_vae_decode": "Warn",
        "ssd1b_nan_vae_encode": "Off",
        "ssd1b_nan_unet": "Recover",
    }
    values = read_values(stored.get)
    assert values == Values(Scope.SDXL_FAMILY, "sdxl.vae.safetensors", Precision.BF16, NanPolicy.WARN, NanPolicy.OFF)
    with caplog.at_level(logging.WARNING):
        broken = read_values({"ssd1b_vae_precision": "fp8", "ssd1b_vae": "  ", "ssd1b_nan_unet": 3}.get)
    assert broken == Values()
    assert "ssd1b_vae_precision" in caplog.text and "'fp8'" in caplog.text


@pytest.mark.parametrize(
    ("scope", "sdxl_family", "distilled", "applies"),
    [
        (Scope.DISTILLED, True, True, True),
        (Scope.DISTILLED, True, False, False),
        (Scope.SDXL_FAMILY, True, False, True),
        (Scope.SDXL_FAMILY, False, False, False),  # SD 1.5 is never touched
    ],
)
def test_scope(scope: Scope, sdxl_family: bool, distilled: bool, applies: bool) -> None:
    assert Values(scope=scope).applies_to(sdxl_family=sdxl_family, distilled=distilled) is applies


def test_infotext_keys_map_to_settings_for_paste() -> None:
    assert INFOTEXT_TO_SETTING == {infotext.KEY_VAE: "ssd1b_vae", infotext.KEY_VAE_PRECISION: "ssd1b_vae_precision"}
    assert set(INFOTEXT_TO_SETTING) <= set(infotext.ALL_KEYS)
    line = "Steps: 20, SSD-1B VAE: checkpoint, SSD-1B VAE precision: bf16, SSD-1B NaN recovery: decode fp16->bf16"
    expected = {"ssd1b_vae": "Automatic", "ssd1b_vae_precision": "bf16"}
    assert settings_from_infotext(infotext.host_parse(line)) == expected
    assert settings_from_infotext(infotext.host_parse(line, v16=True)) == expected  # "1B VAE" on v1.6
    named = infotext.host_render({infotext.KEY_VAE: "my, vae.safetensors", infotext.KEY_VAE_PRECISION: "fp9"})
    assert settings_from_infotext(infotext.host_parse(named)) == {"ssd1b_vae": "my, vae.safetensors"}


def test_package_imports_without_the_host() -> None:
    """extensions_ssd1b must not pull in the webui, gradio or sgm; the settings not even torch."""
    code = (
        "import sys, extensions_ssd1b.core.settings, extensions_ssd1b.core.infotext; print('torch' in sys.modules); "
        "import extensions_ssd1b.vae.nan, extensions_ssd1b.vae.choice; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('modules', 'gradio', 'sgm')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "[]"]
