"""Stand-ins for the AUTOMATIC1111 host (tier-1 tests): ``modules``, ``launch``, ``gradio``, ``sgm``.

Use :func:`install_fake_webui` (or the ``fake_webui`` fixture in tests/conftest.py); see
install.py for the API and configs/sd_xl_base.yaml for the test scale.
"""

from .install import (
    DEFAULT_CMD_ARGS,
    SDXL_TEST_CONFIG,
    SSD1B_REMOVED_UNET_PREFIXES,
    SUPPORTED_VERSIONS,
    TEST_SCALE,
    UNET_PREFIX,
    FakeApp,
    FakeWebui,
    TestScale,
    install_fake_webui,
    ssd1b_shaped,
    without_vae,
)

__all__ = [
    "DEFAULT_CMD_ARGS",
    "SDXL_TEST_CONFIG",
    "SSD1B_REMOVED_UNET_PREFIXES",
    "SUPPORTED_VERSIONS",
    "TEST_SCALE",
    "UNET_PREFIX",
    "FakeApp",
    "FakeWebui",
    "TestScale",
    "install_fake_webui",
    "ssd1b_shaped",
    "without_vae",
]
