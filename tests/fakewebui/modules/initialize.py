"""Startup, as in A1111's modules/initialize.py, minus everything that is not part of the stand-in.

The model is not loaded here: the real host starts a thread that touches ``shared.sd_model``; the
stand-in leaves that first access (and so the first load) to the test.
"""

from modules import timer


def initialize():
    from modules import shared_init
    shared_init.initialize()

    from modules import initialize_util
    initialize_util.configure_opts_onchange()

    from modules import sd_models
    sd_models.setup_model()
    timer.startup_timer.record("setup SD model")

    initialize_rest(reload_script_modules=False)


def initialize_rest(*, reload_script_modules=False):
    """Called both from initialize() and when reloading the webui."""
    from modules import sd_models
    sd_models.list_models()
    timer.startup_timer.record("list SD models")

    from modules import scripts
    scripts.load_scripts()
    for runner in (scripts.scripts_txt2img, scripts.scripts_img2img):
        runner.initialize_scripts(is_img2img=runner is scripts.scripts_img2img)
        runner.setup_ui()  # real: when the UI (or, with --nowebui, the API) is created

    from modules import sd_vae
    sd_vae.refresh_vae_list()
    timer.startup_timer.record("refresh VAE")

    from modules import sd_unet
    sd_unet.list_unets()
    timer.startup_timer.record("scripts list_unets")
