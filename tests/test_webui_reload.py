"""Webui tier: Reload UI in process, another extension's wrapper above ours, and disabling the extension."""

from __future__ import annotations

from pathlib import Path

import pytest
from webui_checks import another_extensions_wrapper, assert_computes, live_unet, webui_scale, write_reduced_checkpoint

pytestmark = pytest.mark.webui


def reload_ui() -> None:
    """What webui.py does on "Reload UI": the unload callbacks, then every enabled extension's scripts again (and
    what building the Extras tab does: the postprocessing scripts, which the settings page lists)."""
    from modules import initialize, script_callbacks, scripts

    script_callbacks.script_unloaded_callback()
    initialize.initialize_rest(reload_script_modules=True)
    if scripts.scripts_postproc.scripts is None:
        scripts.scripts_postproc.initialize_scripts(scripts.postprocessing_scripts_data)


def functions_defined_in(folder: Path) -> list[str]:
    """Host functions (``modules.*``, module and class level) whose code lives under ``folder``, but for our undone
    dispatchers, which only call the host's original (the API imported some names while we were installed)."""
    import sys

    from extensions_ssd1b.host import patching

    found = []
    for name, module in list(sys.modules.items()):
        if name != "modules" and not name.startswith("modules."):
            continue
        members = list(vars(module).items())
        members += [
            (f"{attribute}.{member}", value)
            for attribute, cls in list(vars(module).items())
            if isinstance(cls, type) and cls.__module__ == name
            for member, value in vars(cls).items()
        ]
        for attribute, value in members:
            code = getattr(value, "__code__", None)
            if code is None or not Path(code.co_filename).resolve().is_relative_to(folder.resolve()):
                continue
            if not patching.passes_through(value):
                found.append(f"{name}.{attribute}")
    return found


@pytest.mark.parametrize("with_wraps", [True, False], ids=["functools.wraps", "plain"])
def test_another_extensions_wrapper_above_ours_survives_reload_ui(real_webui, with_wraps: bool):
    from modules import sd_models

    try:
        with another_extensions_wrapper(sd_models, "load_model_weights", with_wraps) as calls:
            top = sd_models.load_model_weights
            reload_ui()
            assert sd_models.load_model_weights is top
            name = f"reload-vega-{with_wraps}"
            path, weights = write_reduced_checkpoint(real_webui.checkpoints_dir, name, "segmind-vega", seed=5)
            real_webui.refresh()
            sd_models.load_model(sd_models.checkpoint_aliases[path.name])
            assert calls == ["other"]
            assert_computes(live_unet(), webui_scale("segmind-vega"), weights)  # built and loaded by us, under theirs
    finally:
        reload_ui()


def test_disabling_the_extension_and_reloading_leaves_the_host_as_shipped(real_webui):
    from modules import shared

    package = real_webui.extension_dir / "extensions_ssd1b"
    assert len(functions_defined_in(package)) >= 8  # load path, VAE and NaN safety
    disabled = list(shared.opts.disabled_extensions)
    shared.opts.disabled_extensions = [*disabled, real_webui.extension_dir.name]
    try:
        reload_ui()
        assert functions_defined_in(package) == []
        assert not [key for key in shared.opts.data_labels if key.startswith("ssd1b_")]
    finally:
        shared.opts.disabled_extensions = disabled
        reload_ui()
    assert len(functions_defined_in(package)) >= 8
    assert "ssd1b_vae" in shared.opts.data_labels
