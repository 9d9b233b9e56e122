"""The extension's life in the host: install everything at script import, undo everything when scripts unload.

A1111 calls ``on_script_unloaded`` callbacks on Reload UI (then imports the enabled extensions' scripts again) and
when an extension was disabled (then not again): undoing every patch and the settings section there is what makes
"disable" disable us and Reload UI start from the host's own functions.
"""

from __future__ import annotations

from . import controlnet, load, lora, patching, safety, sampling, ui


def install() -> bool:
    """Patch the load path, VAE and NaN safety, add the settings; False (nothing done) on Forge."""
    from modules import script_callbacks

    if not load.install_load_path():
        return False
    ui.install_settings()
    safety.install_vae_safety()
    sampling.install_nan_safe_sampling()
    lora.install_lora()
    controlnet.install_controlnet_glue()  # when sd-webui-controlnet loaded first; else before the first generation
    script_callbacks.on_script_unloaded(uninstall)
    return True


def uninstall() -> None:
    """Put back every host function we replaced and remove our settings section (saved values are kept)."""
    patching.unpatch_all()
    ui.uninstall_settings()
