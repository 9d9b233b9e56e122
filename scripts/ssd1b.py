"""A1111 entry point: wiring only. The logic lives in extensions_ssd1b (host-free core + webui adapter)."""

from modules import script_callbacks

from extensions_ssd1b import webui

if webui.install_load_path():
    Ssd1bScript = webui.make_script_class()
    webui.install_vae_and_nan_safety()
    Ssd1bSafetyScript = webui.make_safety_script_class()
    script_callbacks.on_app_started(lambda _demo, app: webui.add_api_routes(app))
