"""A1111 entry point: wiring only. The logic lives in extensions_ssd1b (host-free layers + the host/ adapter)."""

from modules import script_callbacks

from extensions_ssd1b.host import load, safety, sampling, ui

if load.install_load_path():
    Ssd1bScript = ui.make_script_class()
    ui.install_settings()
    safety.install_vae_safety()
    sampling.install_nan_safe_sampling()
    Ssd1bSafetyScript = ui.make_safety_script_class()
    script_callbacks.on_app_started(lambda _demo, app: ui.add_api_routes(app))
