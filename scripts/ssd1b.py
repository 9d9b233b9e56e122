"""A1111 entry point: wiring only. The logic lives in extensions_ssd1b (host-free layers + the host/ adapter)."""

from modules import script_callbacks

from extensions_ssd1b.host import extension, ui

if extension.install():
    Ssd1bScript = ui.make_script_class()
    Ssd1bSafetyScript = ui.make_safety_script_class()
    script_callbacks.on_app_started(lambda _demo, app: ui.add_api_routes(app))
